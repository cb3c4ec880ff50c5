//! The control API server: HTTP/1.1 on a Unix socket, one task per
//! connection, requests decoded by [`Request::decode`] and executed by the
//! [`ControlPlane`] on a blocking thread (it does netlink and namespace
//! work, with the controller's lock taken only for the steps that do not
//! wait).

use std::convert::Infallible;
use std::sync::Arc;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::UnixListener;
use tokio::sync::watch;

use super::controller::ControlPlane;
use super::ApiError;
use crate::api::{ErrorBody, Info, Request, INFO_PATH, MAX_BODY};

/// How long a request waiting for another host is retried.
const RETRY_FOR: std::time::Duration = std::time::Duration::from_secs(10);

fn json_response(status: u16, body: Vec<u8>) -> Response<Full<Bytes>> {
    Response::builder()
        .status(StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .expect("static response parts are valid")
}

fn error_response(e: &ApiError) -> Response<Full<Bytes>> {
    let body = serde_json::to_vec(&ErrorBody {
        message: e.message.clone(),
    })
    .unwrap_or_default();
    json_response(e.status, body)
}

async fn handle(
    ctrl: Arc<ControlPlane>,
    info: Arc<Info>,
    req: hyper::Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let method = req.method().as_str().to_owned();
    let path = req.uri().path().to_owned();
    // How this process runs: the server's to answer, not the controller's.
    if method == "GET" && path == INFO_PATH {
        return Ok(json_response(
            200,
            serde_json::to_vec(&*info).unwrap_or_default(),
        ));
    }
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            count_bad(&ctrl);
            return Ok(error_response(&ApiError::new(
                413,
                format!("request body too large or cut short (at most {MAX_BODY} bytes)"),
            )));
        }
    };
    let request = match Request::decode(&method, &path, &body) {
        Ok(r) => r,
        Err(e) => {
            count_bad(&ctrl);
            tracing::debug!(%method, %path, error = %e, "refused API request");
            return Ok(error_response(&ApiError::new(e.status(), e.to_string())));
        }
    };
    let result = {
        let ctrl = ctrl.clone();
        run_retrying(move || ctrl.handle(request.clone())).await
    };
    Ok(match result {
        Ok(value) => json_response(200, serde_json::to_vec(&value).unwrap_or_default()),
        Err(e) => {
            if e.status >= 500 {
                tracing::warn!(%method, %path, error = %e.message, "API request failed");
            }
            error_response(&e)
        }
    })
}

fn count_bad(ctrl: &Arc<ControlPlane>) {
    ctrl.count_bad_request();
}

/// Serves until `shutdown` turns true; `GET /v1/info` answers `info`.
pub async fn serve(
    listener: UnixListener,
    ctrl: Arc<ControlPlane>,
    info: Info,
    shutdown: watch::Receiver<bool>,
) {
    let info = Arc::new(info);
    serve_unix(listener, "control", shutdown, move |req| {
        handle(ctrl.clone(), info.clone(), req)
    })
    .await
}

/// Runs a request on a blocking thread; a 503 ("waiting for another
/// host": address space for an overlay) is retried for a while, with the
/// controller unlocked in between so the answer can arrive.
pub(super) async fn run_retrying<F>(f: F) -> Result<serde_json::Value, ApiError>
where
    F: Fn() -> Result<serde_json::Value, ApiError> + Send + Sync + 'static,
{
    let f = Arc::new(f);
    let deadline = tokio::time::Instant::now() + RETRY_FOR;
    loop {
        let f = f.clone();
        let result = tokio::task::spawn_blocking(move || f())
            .await
            .unwrap_or_else(|e| Err(ApiError::internal(format!("request handler failed: {e}"))));
        match result {
            Err(e) if e.status == 503 && tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            other => return other,
        }
    }
}

/// Accepts HTTP/1.1 connections on `listener` (the `what` socket), one task
/// each, answered by `handler`, until `shutdown` turns true.
pub(super) async fn serve_unix<H, Fut>(
    listener: UnixListener,
    what: &'static str,
    mut shutdown: watch::Receiver<bool>,
    handler: H,
) where
    H: Fn(hyper::Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<Response<Full<Bytes>>, Infallible>> + Send + 'static,
{
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((s, _)) => s,
                    Err(e) => {
                        tracing::warn!(error = %e, socket = what, "accept");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let handler = handler.clone();
                tokio::spawn(async move {
                    let conn = http1::Builder::new()
                        .timer(hyper_util::rt::TokioTimer::new())
                        .header_read_timeout(std::time::Duration::from_secs(10))
                        .serve_connection(TokioIo::new(stream), service_fn(handler));
                    if let Err(e) = conn.await {
                        tracing::debug!(error = %e, socket = what, "connection");
                    }
                });
            }
            _ = shutdown.changed() => break,
        }
    }
}
