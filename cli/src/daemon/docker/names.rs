//! Docker's own API (`--docker-host`), asked after a `Join` for the name
//! and aliases of the container the endpoint belongs to: the plugin
//! protocol carries neither, and vswitch's DNS (on other hosts of an
//! overlay, and for names Docker's resolver forwards) and `vswitch network
//! inspect` need them. Asked from a task of its own, after Join has
//! returned: during Join, dockerd holds the container's lock, and an
//! inspect of it would wait for the Join it is part of.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use serde_json::Value;

use crate::daemon::controller::ControlPlane;

/// Largest answer read from dockerd.
const MAX_ANSWER: usize = 4 << 20;
/// How long an endpoint's container is looked for (it shows in Docker's
/// network once its sandbox is up).
const LOOK_FOR: Duration = Duration::from_secs(30);

/// Docker's API on a Unix socket.
#[derive(Debug, Clone)]
pub struct DockerApi {
    socket: PathBuf,
}

impl DockerApi {
    pub fn new(socket: PathBuf) -> DockerApi {
        DockerApi { socket }
    }

    async fn get(&self, path: &str) -> Result<Value, String> {
        let stream = tokio::net::UnixStream::connect(&self.socket)
            .await
            .map_err(|e| format!("{}: {e}", self.socket.display()))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let req = hyper::Request::get(path)
            .header("host", "docker")
            .body(Empty::<Bytes>::new())
            .map_err(|e| e.to_string())?;
        let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
        let status = resp.status();
        let body = Limited::new(resp.into_body(), MAX_ANSWER)
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        if !status.is_success() {
            return Err(format!("{path}: {status}"));
        }
        serde_json::from_slice(&body).map_err(|e| format!("{path}: {e}"))
    }

    /// The name, aliases and labels of the container of `endpoint` on
    /// Docker's network `network`, once Docker shows it.
    pub async fn endpoint_names(
        &self,
        network: &str,
        endpoint: &str,
    ) -> Result<Option<DockerNames>, String> {
        let net = self.get(&format!("/networks/{network}")).await?;
        let net_name = net["Name"].as_str().unwrap_or_default().to_string();
        let Some((id, entry)) = net["Containers"]
            .as_object()
            .and_then(|m| m.iter().find(|(_, v)| v["EndpointID"] == endpoint))
        else {
            return Ok(None);
        };
        let Some(name) = entry["Name"].as_str() else {
            return Ok(None);
        };
        let container = self.get(&format!("/containers/{id}/json")).await?;
        let aliases = container["NetworkSettings"]["Networks"][net_name.as_str()]["Aliases"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default();
        let labels = container["Config"]["Labels"]
            .as_object()
            .map(|m| {
                m.iter()
                    .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                    .collect()
            })
            .unwrap_or_default();
        Ok(Some(DockerNames {
            name: name.trim_start_matches('/').to_string(),
            aliases,
            labels,
        }))
    }
}

/// What Docker says of a joined endpoint's container.
#[derive(Debug, Clone, Default)]
pub struct DockerNames {
    /// Its name (without Docker's leading `/`).
    pub name: String,
    /// Its aliases on the network.
    pub aliases: Vec<String>,
    /// Its labels (`docker run --label`), which policies select by.
    pub labels: std::collections::BTreeMap<String, String>,
}

/// Looks up the endpoint's container in Docker and gives its name and
/// aliases to the controller; bounded in time, and a failure only logged
/// (the endpoint works under its sandbox's name).
pub async fn name_endpoint(
    api: DockerApi,
    ctrl: Arc<ControlPlane>,
    network: String,
    endpoint: String,
) {
    let deadline = tokio::time::Instant::now() + LOOK_FOR;
    let mut last_error = None;
    let found = loop {
        match api.endpoint_names(&network, &endpoint).await {
            Ok(Some(names)) => break Some(names),
            Ok(None) => {}
            Err(e) => last_error = Some(e),
        }
        if tokio::time::Instant::now() >= deadline {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let Some(names) = found else {
        tracing::warn!(endpoint = %&endpoint[..12.min(endpoint.len())], error = ?last_error,
            "Docker did not tell the endpoint's container name; it keeps its sandbox's");
        return;
    };
    let result = tokio::task::spawn_blocking(move || ctrl.docker_named(&endpoint, names)).await;
    if let Ok(Err(e)) = result {
        tracing::warn!(error = %e, "naming a Docker endpoint");
    }
}
