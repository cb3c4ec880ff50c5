//! `vswitch port`: a container's published ports, as `docker container port`.

use std::net::IpAddr;

use anyhow::{bail, Result};
use clap::Args;

use crate::api;
use crate::client::Client;

#[derive(Debug, Args)]
pub struct PortArgs {
    pub container: String,
    /// Only this port: PORT or PORT/PROTO.
    pub port: Option<String>,
}

pub(super) async fn run(client: &Client, a: PortArgs) -> Result<()> {
    let PortArgs { container, port } = a;
    let c: api::ContainerInspect = client.get(&format!("/v1/containers/{container}")).await?;
    let lines = port_lines(&c, port.as_deref());
    if lines.is_empty() && port.is_some() {
        bail!(
            "no public port `{}` published for container `{container}`",
            port.unwrap_or_default()
        );
    }
    for l in lines {
        println!("{l}");
    }
    Ok(())
}

/// `docker container port` lines: `80/tcp -> 0.0.0.0:8080`.
fn port_lines(c: &api::ContainerInspect, only: Option<&str>) -> Vec<String> {
    let mut lines = Vec::new();
    for (key, bindings) in &c.ports {
        let matches = match only {
            None => true,
            Some(o) if o.contains('/') => o == key,
            Some(o) => key.split('/').next() == Some(o),
        };
        if !matches {
            continue;
        }
        for b in bindings {
            let host = match b.host_ip.parse::<IpAddr>() {
                Ok(IpAddr::V6(ip)) => format!("[{ip}]:{}", b.host_port),
                _ => format!("{}:{}", b.host_ip, b.host_port),
            };
            lines.push(if only.is_some() {
                host
            } else {
                format!("{key} -> {host}")
            });
        }
    }
    lines
}
