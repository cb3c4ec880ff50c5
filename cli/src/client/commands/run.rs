//! `vswitch run`: a command in a new sandbox (a network namespace) on a network.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::process::Stdio;

use anyhow::{bail, Context, Result};
use clap::Args;

use super::network;
use super::publish::Publish;
use crate::api::{self, Driver};
use crate::client::Client;
use crate::sandbox;

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Run in the background and print the container's id.
    #[arg(short = 'd', long)]
    pub detach: bool,
    /// Remove the container when the command exits (foreground only).
    #[arg(long)]
    pub rm: bool,
    #[arg(long)]
    pub name: String,
    #[arg(long)]
    pub network: String,
    #[arg(long)]
    pub ip: Option<Ipv4Addr>,
    #[arg(long)]
    pub ip6: Option<Ipv6Addr>,
    #[arg(long = "alias", value_name = "NAME")]
    pub aliases: Vec<String>,
    #[command(flatten)]
    pub publish: Publish,
    /// The command and its arguments.
    #[arg(last = true, required = true)]
    pub cmd: Vec<String>,
}

/// With a rootless daemon, make this process part of its user and mount
/// namespaces, where its sandboxes live (and where this user may make,
/// configure and enter them). The client is still single-threaded here: its
/// runtime runs on this thread, and nothing so far started another.
async fn join_if_rootless(client: &Client) -> Result<()> {
    let info = client.info().await?;
    if !info.rootless {
        return Ok(());
    }
    let (Some(pid), Some(dir)) = (info.pause_pid, info.runtime_dir) else {
        bail!("the rootless vswitchd did not say where its namespaces are; upgrade vswitch to the daemon's version");
    };
    let layout = crate::rootless::Layout::new(dir);
    sandbox::use_dirs(layout.sandbox_dirs()).map_err(anyhow::Error::msg)?;
    crate::rootless::join(pid)
        .map_err(anyhow::Error::msg)
        .context("joining the rootless vswitchd's namespaces")
}

/// `vswitch run`: make the sandbox, connect it, run the command in it.
pub(super) async fn run(client: &Client, a: RunArgs) -> Result<i32> {
    api::validate_name("container", &a.name).map_err(anyhow::Error::msg)?;
    for alias in &a.aliases {
        api::validate_name("alias", alias).map_err(anyhow::Error::msg)?;
    }
    let ports = a.publish.mappings()?;
    if a.detach && a.rm {
        bail!("--rm and -d do not go together: a detached container stays until `vswitch rm`");
    }
    let net: api::NetworkInspect = client.get(&format!("/v1/networks/{}", a.network)).await?;
    let host_mode = net.driver == Driver::Host;
    if host_mode && (a.ip.is_some() || a.ip6.is_some() || !a.aliases.is_empty()) {
        bail!("--ip, --ip6 and --alias do not apply to the host network");
    }
    if !ports.is_empty() && !matches!(net.driver, Driver::Bridge) {
        bail!(
            "-p needs a bridge network; `{}` uses the {} driver",
            a.network,
            net.driver.as_str()
        );
    }
    // Refuse early, before making a namespace, if the name is taken.
    let (status, _) = client
        .raw("GET", &format!("/v1/containers/{}", a.name), Vec::new())
        .await?;
    if status == 200 {
        bail!(
            "container `{}` already exists; remove it with `vswitch rm {}` or pick another --name",
            a.name,
            a.name
        );
    }

    if !host_mode {
        join_if_rootless(client).await?;
    }
    let netns = if host_mode {
        None
    } else {
        Some(sandbox::create_netns(&a.name).map_err(anyhow::Error::msg)?)
    };
    let cleanup_ns = |name: &str| {
        if !host_mode {
            let _ = sandbox::delete_netns(name);
        }
    };
    let reg = api::ContainerCreate {
        name: a.name.clone(),
        netns: netns.clone(),
        owns_netns: netns.is_some(),
        pid: None,
    };
    if let Err(e) = client
        .call::<api::ContainerInspect>("POST", "/v1/containers", Some(&reg))
        .await
    {
        cleanup_ns(&a.name);
        return Err(e);
    }
    // From here on, `vswitch rm` undoes everything.
    let setup = async {
        match net.driver {
            Driver::Host => {}
            Driver::None => {
                sandbox::loopback_up(&a.name).map_err(anyhow::Error::msg)?;
            }
            Driver::Bridge | Driver::Overlay => {
                let req = api::Connect {
                    container: a.name.clone(),
                    netns: None,
                    ip: a.ip,
                    ip6: a.ip6,
                    mac: None,
                    aliases: a.aliases.clone(),
                    ports: ports.clone(),
                };
                network::connect(client, &a.network, &req).await?;
                let servers: Vec<IpAddr> =
                    net.ipam.config.iter().filter_map(|c| c.gateway).collect();
                sandbox::write_resolv_conf(&a.name, &servers).map_err(anyhow::Error::msg)?;
            }
        }
        let mut cmd = if host_mode {
            let mut c = std::process::Command::new(&a.cmd[0]);
            c.args(&a.cmd[1..]);
            c
        } else {
            sandbox::command_in_netns(&a.name, &a.cmd).map_err(anyhow::Error::msg)?
        };
        if a.detach {
            use std::os::unix::process::CommandExt;
            cmd.stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            cmd.process_group(0);
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("starting `{}`", a.cmd[0]))?;
        let _: api::ContainerInspect = client
            .call(
                "POST",
                &format!("/v1/containers/{}", a.name),
                Some(&api::ContainerUpdate {
                    pid: Some(child.id()),
                }),
            )
            .await?;
        anyhow::Ok(child)
    };
    let mut child = match setup.await {
        Ok(c) => c,
        Err(e) => {
            let _ = client
                .raw("DELETE", &format!("/v1/containers/{}", a.name), Vec::new())
                .await;
            cleanup_ns(&a.name);
            return Err(e);
        }
    };
    if a.detach {
        let c: api::ContainerInspect = client.get(&format!("/v1/containers/{}", a.name)).await?;
        println!("{}", c.id);
        return Ok(0);
    }
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await?
        .context("waiting for the command")?;
    // The process is gone: forget its pid so `rm` does not signal a reused one.
    let _ = client
        .raw(
            "POST",
            &format!("/v1/containers/{}", a.name),
            serde_json::to_vec(&api::ContainerUpdate { pid: None })?,
        )
        .await;
    if a.rm {
        let _ = client
            .raw("DELETE", &format!("/v1/containers/{}", a.name), Vec::new())
            .await;
    }
    use std::os::unix::process::ExitStatusExt;
    Ok(status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0)))
}
