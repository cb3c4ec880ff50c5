//! The `vswitch` client: finds the daemon's socket and speaks the control API.

pub mod commands;
pub mod demo;

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::net::UnixStream;

use crate::api::ErrorBody;

/// The default socket: `/run/vswitch/vswitchd.sock` as root,
/// `$XDG_RUNTIME_DIR/vswitch/vswitchd.sock` otherwise.
pub fn default_socket() -> PathBuf {
    if nix::unistd::geteuid().is_root() {
        return PathBuf::from("/run/vswitch/vswitchd.sock");
    }
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(dir) => Path::new(&dir).join("vswitch/vswitchd.sock"),
        None => PathBuf::from(format!(
            "/run/user/{}/vswitch/vswitchd.sock",
            nix::unistd::geteuid()
        )),
    }
}

/// Resolves `--host unix://PATH`, then `VSWITCH_HOST`, then the default.
pub fn resolve_socket(host: Option<&str>) -> Result<PathBuf> {
    let from_env = std::env::var("VSWITCH_HOST").ok();
    match host.map(str::to_owned).or(from_env) {
        Some(h) => match h.strip_prefix("unix://") {
            Some(p) if !p.is_empty() => Ok(PathBuf::from(p)),
            _ => bail!("--host must look like unix:///run/vswitch/vswitchd.sock, not `{h}`"),
        },
        None => Ok(default_socket()),
    }
}

/// A connection-per-request client of the control API.
#[derive(Debug, Clone)]
pub struct Client {
    socket: PathBuf,
}

impl Client {
    pub fn new(socket: PathBuf) -> Client {
        Client { socket }
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Sends one request; returns the status and body.
    pub async fn raw(&self, method: &str, path: &str, body: Vec<u8>) -> Result<(u16, Vec<u8>)> {
        let (resp, done) = self.send(method, path, body).await?;
        let status = resp.status().as_u16();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .context("reading control API response")?
            .to_bytes();
        done.finish().await;
        Ok((status, bytes.to_vec()))
    }

    /// `GET path`, its body handed to `sink` piece by piece as it
    /// arrives (`vswitch logs -f`); an error status is the daemon's
    /// message.
    pub async fn stream(&self, path: &str, sink: impl FnMut(&[u8]) -> Result<()>) -> Result<()> {
        self.stream_request("GET", path, Vec::new(), sink).await
    }

    /// [`Client::stream`] for any method, with a JSON `body`
    /// (`vswitch capture`).
    pub async fn stream_request(
        &self,
        method: &str,
        path: &str,
        body: Vec<u8>,
        mut sink: impl FnMut(&[u8]) -> Result<()>,
    ) -> Result<()> {
        let (resp, done) = self.send(method, path, body).await?;
        let status = resp.status().as_u16();
        let mut body = resp.into_body();
        if !(200..300).contains(&status) {
            let bytes = body
                .collect()
                .await
                .context("reading control API response")?
                .to_bytes();
            bail!("{}", error_message(&bytes));
        }
        while let Some(frame) = body.frame().await {
            let frame = frame.context("reading control API response")?;
            if let Some(data) = frame.data_ref() {
                sink(data)?;
            }
        }
        done.finish().await;
        Ok(())
    }

    /// Connects, sends one request and returns the response (its body
    /// still to read) with the connection, to be [`Connection::finish`]ed
    /// once the body is read.
    async fn send(
        &self,
        method: &str,
        path: &str,
        body: Vec<u8>,
    ) -> Result<(hyper::Response<hyper::body::Incoming>, Connection)> {
        let stream = UnixStream::connect(&self.socket).await.map_err(|e| {
            anyhow!(
                "cannot reach vswitchd at {}: {e}; is it running? (start it with `vswitchd`, or point --host/VSWITCH_HOST at its socket)",
                self.socket.display()
            )
        })?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .context("control API handshake")?;
        let conn = tokio::spawn(conn);
        let req = hyper::Request::builder()
            .method(method)
            .uri(format!("http://vswitchd{path}"))
            .header("host", "vswitchd")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))
            .context("building request")?;
        let resp = sender
            .send_request(req)
            .await
            .context("control API request")?;
        Ok((resp, Connection { sender, conn }))
    }

    /// How the daemon runs (`GET /v1/info`); a daemon that predates the
    /// route runs as root.
    pub async fn info(&self) -> Result<crate::api::Info> {
        let (status, bytes) = self.raw("GET", crate::api::INFO_PATH, Vec::new()).await?;
        match status {
            200 => serde_json::from_slice(&bytes).context(
                "vswitchd answered GET /v1/info with something this client does not understand",
            ),
            404 => Ok(crate::api::Info::default()),
            _ => bail!(
                "vswitchd answered GET /v1/info with status {status}: {}",
                String::from_utf8_lossy(&bytes)
            ),
        }
    }

    /// `GET path`, decoded as [`Client::call`] does.
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        self.call("GET", path, None::<&()>).await
    }

    /// `DELETE path` without a body; the daemon answers with the name it removed.
    pub async fn delete(&self, path: &str) -> Result<String> {
        self.call("DELETE", path, None::<&()>).await
    }

    /// Sends a request and decodes a JSON answer, turning an error status
    /// into the daemon's message.
    pub async fn call<T: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: Option<&impl Serialize>,
    ) -> Result<T> {
        let body = match body {
            Some(b) => serde_json::to_vec(b)?,
            None => Vec::new(),
        };
        let (status, bytes) = self.raw(method, path, body).await?;
        if !(200..300).contains(&status) {
            bail!("{}", error_message(&bytes));
        }
        serde_json::from_slice(&bytes).with_context(|| {
            format!(
                "vswitchd answered {method} {path} with something this client does not understand"
            )
        })
    }
}

/// The daemon's error message in an error answer's body (its JSON
/// `message`, or the body as text).
fn error_message(bytes: &[u8]) -> String {
    serde_json::from_slice::<ErrorBody>(bytes)
        .map(|e| e.message)
        .unwrap_or_else(|_| String::from_utf8_lossy(bytes).into_owned())
}

/// An HTTP/1.1 connection to the daemon with one request sent.
struct Connection {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    conn: tokio::task::JoinHandle<hyper::Result<()>>,
}

impl Connection {
    /// Closes the connection once the answer is read.
    async fn finish(self) {
        drop(self.sender);
        let _ = self.conn.await;
    }
}
