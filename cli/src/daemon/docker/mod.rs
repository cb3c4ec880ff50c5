//! The Docker plugin endpoint (`vswitchd --docker-plugin`): Docker's plugin
//! protocol v1, HTTP POSTs with JSON bodies on a Unix socket, for the remote
//! network driver and IPAM driver `vswitch`. Calls are decoded by
//! [`protocol::Call::decode`] and answered by the controller
//! ([`ControlPlane::handle_docker`]) on a blocking thread, as API requests
//! are.
//!
//! Errors carry the key Docker reads for the API they belong to (`Err` for
//! `NetworkDriver.*`, `Error` for `IpamDriver.*`); a path that is no call of
//! this plugin is answered 404, which Docker reads as "not implemented".

pub mod names;
pub mod protocol;

use std::convert::Infallible;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};
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
use crate::api::MAX_BODY;
use protocol::{Api, Call, ProtocolError};

/// Where Docker looks for plugins.
pub const DEFAULT_SOCKET: &str = "/run/docker/plugins/vswitch.sock";

/// How long a call waiting for another host (overlay address space) is
/// retried.
const RETRY_FOR: std::time::Duration = std::time::Duration::from_secs(10);

/// Docker's plugin content type.
const CONTENT_TYPE: &str = "application/vnd.docker.plugins.v1.2+json";

fn respond(status: u16, body: serde_json::Value) -> Response<Full<Bytes>> {
    Response::builder()
        .status(StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .header("content-type", CONTENT_TYPE)
        .body(Full::new(Bytes::from(
            serde_json::to_vec(&body).unwrap_or_default(),
        )))
        .expect("static response parts are valid")
}

/// An error as Docker reads it: HTTP 200 with the API's error key for a
/// refused call (both of Docker's clients read the key of a 200 answer),
/// 400 or 404 for what is no call.
fn error(api: Api, status: u16, message: &str) -> Response<Full<Bytes>> {
    respond(status, serde_json::json!({ api.error_key(): message }))
}

async fn handle(
    ctrl: Arc<ControlPlane>,
    docker: Option<names::DockerApi>,
    req: hyper::Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path().to_owned();
    let api = Api::of(&path).unwrap_or(Api::Network);
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            ctrl.count_bad_request();
            return Ok(error(
                api,
                413,
                &format!("request body too large or cut short (at most {MAX_BODY} bytes)"),
            ));
        }
    };
    let call = match Call::decode(&path, &body) {
        Ok(c) => c,
        Err(e) => {
            ctrl.count_bad_request();
            tracing::debug!(%path, error = %e, "refused Docker plugin call");
            let status = match e {
                ProtocolError::NotFound(_) => 404,
                ProtocolError::BadBody { .. } => 400,
            };
            return Ok(error(api, status, &e.to_string()));
        }
    };
    tracing::debug!(%path, body = %String::from_utf8_lossy(&body), "Docker plugin call");
    let deadline = tokio::time::Instant::now() + RETRY_FOR;
    let result = loop {
        let ctrl2 = ctrl.clone();
        let c = call.clone();
        let result = tokio::task::spawn_blocking(move || ctrl2.handle_docker(c))
            .await
            .unwrap_or_else(|e| Err(ApiError::internal(format!("call handler failed: {e}"))));
        match result {
            Err(e) if e.status == 503 && tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            other => break other,
        }
    };
    Ok(match result {
        Ok(value) => {
            if let (Call::Join(j), Some(api)) = (&call, docker) {
                tokio::spawn(names::name_endpoint(
                    api,
                    ctrl.clone(),
                    j.network.clone(),
                    j.endpoint.clone(),
                ));
            }
            respond(200, value)
        }
        Err(e) => {
            tracing::warn!(%path, error = %e.message, "Docker plugin call refused");
            error(api, 200, &e.message)
        }
    })
}

/// Binds the plugin socket (its directory made, a stale socket replaced).
pub fn bind(path: &Path) -> Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating the plugin directory {}", dir.display()))?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            anyhow::bail!(
                "another process already answers on the Docker plugin socket {}; stop it or pass --docker-plugin-socket",
                path.display()
            );
        }
        std::fs::remove_file(path)
            .with_context(|| format!("removing the stale plugin socket {}", path.display()))?;
    }
    UnixListener::bind(path)
        .with_context(|| format!("binding the Docker plugin socket {}", path.display()))
}

/// Serves Docker until `shutdown` turns true; `docker` is Docker's own API,
/// asked for containers' names.
pub async fn serve(
    listener: UnixListener,
    ctrl: Arc<ControlPlane>,
    docker: Option<names::DockerApi>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((s, _)) => s,
                    Err(e) => {
                        tracing::warn!(error = %e, "Docker plugin socket accept");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let ctrl = ctrl.clone();
                let docker = docker.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| handle(ctrl.clone(), docker.clone(), req));
                    let conn = http1::Builder::new()
                        .timer(hyper_util::rt::TokioTimer::new())
                        .header_read_timeout(std::time::Duration::from_secs(10))
                        .serve_connection(TokioIo::new(stream), svc);
                    if let Err(e) = conn.await {
                        tracing::debug!(error = %e, "Docker plugin connection");
                    }
                });
            }
            _ = shutdown.changed() => break,
        }
    }
}
