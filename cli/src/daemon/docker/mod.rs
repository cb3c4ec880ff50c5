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
pub use names::DockerNames;
pub mod protocol;

use std::convert::Infallible;
use std::path::Path;
use std::sync::Arc;

use anyhow::Result;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::{Response, StatusCode};
use tokio::net::UnixListener;
use tokio::sync::watch;

use super::controller::ControlPlane;
use crate::api::MAX_BODY;
use protocol::{Api, Call, ProtocolError};

/// Where Docker looks for plugins.
pub const DEFAULT_SOCKET: &str = "/run/docker/plugins/vswitch.sock";

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
    let result = {
        let (ctrl, call) = (ctrl.clone(), call.clone());
        super::server::run_retrying(move || ctrl.handle_docker(call.clone())).await
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
    super::bind_unix(
        path,
        "the Docker plugin socket",
        "another process already answers there; stop it or pass --docker-plugin-socket",
    )
}

/// Serves Docker until `shutdown` turns true; `docker` is Docker's own API,
/// asked for containers' names.
pub async fn serve(
    listener: UnixListener,
    ctrl: Arc<ControlPlane>,
    docker: Option<names::DockerApi>,
    shutdown: watch::Receiver<bool>,
) {
    super::server::serve_unix(listener, "docker plugin", shutdown, move |req| {
        handle(ctrl.clone(), docker.clone(), req)
    })
    .await
}
