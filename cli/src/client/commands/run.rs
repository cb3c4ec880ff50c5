//! `vswitch run`: a command in a new sandbox (a network namespace) on a network.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;

use super::network;
use super::publish::Publish;
use super::supervise;
use crate::api::{self, Driver};
use crate::client::Client;
use crate::sandbox;

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Run in the background and print the container's id; the output is
    /// kept for `vswitch logs` (at most 2 MiB, the newest).
    #[arg(short = 'd', long)]
    pub detach: bool,
    /// Remove the container when the command exits (foreground only);
    /// without it, the container stays as exited until `vswitch rm`.
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
    /// A label of the container, which policies select by; repeatable.
    #[arg(long = "label", value_name = "KEY=VALUE")]
    pub labels: Vec<String>,
    #[command(flatten)]
    pub publish: Publish,
    /// The command and its arguments.
    #[arg(last = true, required = true)]
    pub cmd: Vec<String>,
}

/// With a rootless daemon, make this process part of its user and mount
/// namespaces, where its sandboxes live (and where this user may make,
/// configure and enter them); returns the daemon's runtime directory then.
/// The client is still single-threaded here: its runtime runs on this
/// thread, and nothing so far started another.
async fn join_if_rootless(client: &Client) -> Result<Option<PathBuf>> {
    let info = client.info().await?;
    if !info.rootless {
        return Ok(None);
    }
    let (Some(pid), Some(dir)) = (info.pause_pid, info.runtime_dir) else {
        bail!("the rootless vswitchd did not say where its namespaces are; upgrade vswitch to the daemon's version");
    };
    let layout = crate::rootless::Layout::new(dir.clone());
    sandbox::use_dirs(layout.sandbox_dirs()).map_err(anyhow::Error::msg)?;
    crate::rootless::join(pid)
        .map_err(anyhow::Error::msg)
        .context("joining the rootless vswitchd's namespaces")?;
    Ok(Some(dir))
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
    let (status, body) = client
        .raw("GET", &format!("/v1/containers/{}", a.name), Vec::new())
        .await?;
    if status == 200 {
        let exited = serde_json::from_slice::<api::ContainerInspect>(&body)
            .is_ok_and(|c| c.state.status == api::ContainerStatus::Exited);
        bail!(
            "container `{}` already exists{}; remove it with `vswitch rm {}` or pick another --name",
            a.name,
            if exited { " (exited)" } else { "" },
            a.name
        );
    }

    let runtime_dir = if host_mode {
        None
    } else {
        join_if_rootless(client).await?
    };
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
        cmd: a.cmd.clone(),
        detached: a.detach,
        labels: super::network::key_values("--label", &a.labels, true)?,
    };
    let created = match client
        .call::<api::ContainerInspect>("POST", "/v1/containers", Some(&reg))
        .await
    {
        Ok(c) => c,
        Err(e) => {
            cleanup_ns(&a.name);
            return Err(e);
        }
    };
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
                    labels: Default::default(),
                };
                network::connect(client, &a.network, &req).await?;
                let servers: Vec<IpAddr> =
                    net.ipam.config.iter().filter_map(|c| c.gateway).collect();
                sandbox::write_resolv_conf(&a.name, &servers).map_err(anyhow::Error::msg)?;
            }
        }
        if a.detach {
            let log_dir = created
                .log_path
                .as_deref()
                .and_then(Path::parent)
                .context("vswitchd gave no log directory for the detached container; upgrade vswitchd to this client's version")?;
            supervise::start(
                client,
                &a.name,
                &created.id,
                log_dir,
                runtime_dir.as_deref(),
                host_mode,
                &a.cmd,
            )
            .await?;
            return anyhow::Ok(None);
        }
        let cmd = supervise::container_command(&a.name, &a.cmd, host_mode)?;
        let child = supervise::spawn_registered(client, &a.name, cmd).await?;
        anyhow::Ok(Some(child))
    };
    let child = match setup.await {
        Ok(c) => c,
        Err(e) => {
            let _ = client
                .raw("DELETE", &format!("/v1/containers/{}", a.name), Vec::new())
                .await;
            cleanup_ns(&a.name);
            return Err(e);
        }
    };
    let Some(child) = child else {
        println!("{}", created.id);
        return Ok(0);
    };
    let code = wait_foreground(child).await?;
    // The container stays, exited with its code (its endpoints and
    // namespace released), until `vswitch rm`; with --rm it goes now.
    let reported = client
        .raw(
            "POST",
            &format!("/v1/containers/{}/exited", a.name),
            serde_json::to_vec(&api::ContainerExited {
                id: created.id.clone(),
                exit_code: code,
            })?,
        )
        .await;
    if a.rm {
        let _ = client
            .raw("DELETE", &format!("/v1/containers/{}", a.name), Vec::new())
            .await;
    } else if !matches!(reported, Ok((200, _))) {
        eprintln!(
            "vswitch: could not tell vswitchd that `{}` exited; it finds out by itself",
            a.name
        );
    }
    Ok(code)
}

/// Waits for a foreground command. Ctrl-C and Ctrl-\ reach the command
/// from the terminal (it is in the terminal's process group) and do not
/// end this process, which must still report the exit; SIGTERM and
/// SIGHUP sent to `vswitch run` are passed on to the command.
async fn wait_foreground(mut child: std::process::Child) -> Result<i32> {
    use nix::sys::signal::{kill, Signal};
    use tokio::signal::unix::{signal, SignalKind};
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let mut int = signal(SignalKind::interrupt())?;
    let mut quit = signal(SignalKind::quit())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut hup = signal(SignalKind::hangup())?;
    let mut wait = tokio::task::spawn_blocking(move || child.wait());
    let status = loop {
        tokio::select! {
            status = &mut wait => break status?.context("waiting for the command")?,
            _ = int.recv() => {}
            _ = quit.recv() => {}
            _ = term.recv() => { let _ = kill(pid, Signal::SIGTERM); }
            _ = hup.recv() => { let _ = kill(pid, Signal::SIGHUP); }
        }
    };
    Ok(exit_code(status))
}

/// The exit status as a shell reports it: the code, or 128 + the signal.
pub(super) fn exit_code(status: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
}
