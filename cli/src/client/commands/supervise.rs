//! `vswitch run -d`'s supervisor: `vswitch __supervise` (hidden), which
//! `run -d` starts as a child of its own (the same binary, through
//! `/proc/self/exe`) and leaves behind when it exits.
//!
//! The supervisor leaves the terminal's session, starts the command in
//! the sandbox (in a process group of its own, stdin from /dev/null,
//! stdout and stderr into one pipe), registers both pids with vswitchd,
//! tells `run -d` on its stdout (`ok`, or why not), and then copies the
//! command's output into the container's log ([`RotatingLog`], bounded)
//! until the command exits. Then whatever else of the command's process
//! group still runs is killed (as in a Docker container, the container's
//! processes end with its main one), the exit code is written to the log
//! directory (for a daemon that is not running now) and reported
//! (`POST /v1/containers/NAME/exited`).

use std::io::{BufRead, Read, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;

use super::run::exit_code;
use crate::api;
use crate::client::Client;
use crate::container_log::{self, RotatingLog};
use crate::sandbox;

/// The name of the hidden subcommand.
pub const SUBCOMMAND: &str = "__supervise";
/// How long `run -d` waits for the supervisor to say the command started.
const START_WITHIN: Duration = Duration::from_secs(30);
/// How long the output of an exited command is still copied (processes
/// outside its group may hold the pipe open).
const DRAIN_WITHIN: Duration = Duration::from_secs(2);

#[derive(Debug, Args)]
pub struct SuperviseArgs {
    #[arg(long)]
    pub name: String,
    #[arg(long)]
    pub id: String,
    #[arg(long, value_name = "DIR")]
    pub log_dir: PathBuf,
    /// A rootless daemon's runtime directory (its sandboxes' layout); the
    /// supervisor is in its namespaces already.
    #[arg(long, value_name = "DIR")]
    pub runtime_dir: Option<PathBuf>,
    /// Run in the host's network namespace (`--network host`).
    #[arg(long)]
    pub host_network: bool,
    #[arg(last = true, required = true)]
    pub cmd: Vec<String>,
}

/// `run -d`: starts the supervisor and waits until it says the command
/// runs (and is registered), or why it does not.
pub(super) async fn start(
    client: &Client,
    name: &str,
    id: &str,
    log_dir: &Path,
    runtime_dir: Option<&Path>,
    host_network: bool,
    cmd: &[String],
) -> Result<()> {
    let mut c = Command::new("/proc/self/exe");
    c.arg0("vswitch")
        .arg("--host")
        .arg(format!("unix://{}", client.socket().display()))
        .arg(SUBCOMMAND)
        .arg("--name")
        .arg(name)
        .arg("--id")
        .arg(id)
        .arg("--log-dir")
        .arg(log_dir);
    if let Some(dir) = runtime_dir {
        c.arg("--runtime-dir").arg(dir);
    }
    if host_network {
        c.arg("--host-network");
    }
    c.arg("--")
        .args(cmd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut child = c
        .spawn()
        .context("starting the supervisor of the container")?;
    let out = child.stdout.take().context("the supervisor's stdout")?;
    let line = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        let _ = std::io::BufReader::new(out).read_line(&mut line);
        line
    });
    let line = match tokio::time::timeout(START_WITHIN, line).await {
        Ok(l) => l?,
        Err(_) => {
            let _ = child.kill();
            bail!("the container's supervisor did not start the command within {START_WITHIN:?}");
        }
    };
    match line.trim_end() {
        "ok" => Ok(()),
        "" => {
            let status = child.wait().ok();
            bail!("the container's supervisor ended before starting the command ({status:?})")
        }
        why => {
            let _ = child.wait();
            bail!("{why}")
        }
    }
}

/// `vswitch __supervise`.
pub(super) async fn run(client: &Client, a: SuperviseArgs) -> Result<i32> {
    // Out of the terminal's session: its hangup must not end the container.
    let _ = nix::unistd::setsid();
    let mut handshake = std::io::stdout();
    let started = start_command(client, &a).await;
    let (child, output, log) = match started {
        Ok(s) => {
            let _ = writeln!(handshake, "ok");
            let _ = handshake.flush();
            s
        }
        Err(e) => {
            let _ = writeln!(handshake, "{e:#}");
            let _ = handshake.flush();
            return Ok(1);
        }
    };
    // Nothing more goes to `run -d`, which has gone.
    let code = supervise(child, output, log).await?;
    if let Err(e) = container_log::write_exit_code(&a.log_dir, code) {
        // The container was removed meanwhile (its directory went).
        tracing::debug!(error = %e, "writing the exit code");
    }
    let report = serde_json::to_vec(&api::ContainerExited {
        id: a.id.clone(),
        exit_code: code,
    })?;
    let path = format!("/v1/containers/{}/exited", a.name);
    // A daemon being restarted answers again soon; one that stays away
    // finds the exit code in the log directory when it starts.
    for _ in 0..5 {
        if client.raw("POST", &path, report.clone()).await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    Ok(0)
}

/// Starts the command with its output into a pipe, and registers it.
async fn start_command(
    client: &Client,
    a: &SuperviseArgs,
) -> Result<(Child, std::io::PipeReader, RotatingLog)> {
    if let Some(dir) = &a.runtime_dir {
        let layout = crate::rootless::Layout::new(dir.clone());
        sandbox::use_dirs(layout.sandbox_dirs()).map_err(anyhow::Error::msg)?;
    }
    let log = RotatingLog::open(&a.log_dir, container_log::MAX_FILE_BYTES)
        .with_context(|| format!("opening the log in {}", a.log_dir.display()))?;
    let (reader, writer) = std::io::pipe().context("making the output pipe")?;
    let mut cmd = container_command(&a.name, &a.cmd, a.host_network)?;
    cmd.stdin(Stdio::null())
        .stdout(writer.try_clone().context("the output pipe")?)
        .stderr(writer)
        .process_group(0);
    // The command holds the only write ends once it runs: the pipe ends
    // with it.
    let child = spawn_registered(client, &a.name, cmd).await?;
    Ok((child, reader, log))
}

/// The command of container `name`: in its network namespace, or in the
/// caller's with `host_network`.
pub(super) fn container_command(name: &str, cmd: &[String], host_network: bool) -> Result<Command> {
    if host_network {
        let mut c = Command::new(&cmd[0]);
        c.args(&cmd[1..]);
        Ok(c)
    } else {
        sandbox::command_in_netns(name, cmd).map_err(anyhow::Error::msg)
    }
}

/// Starts `cmd` (consumed, so the parent keeps none of its pipe ends) and
/// registers it with the daemon as container `name`'s command, this
/// process as its supervisor (its parent); killed if the daemon refuses.
pub(super) async fn spawn_registered(
    client: &Client,
    name: &str,
    mut cmd: Command,
) -> Result<Child> {
    let program = cmd.get_program().to_string_lossy().into_owned();
    let mut child = cmd
        .spawn()
        .with_context(|| format!("starting `{program}`"))?;
    drop(cmd);
    let registered = client
        .call::<api::ContainerInspect>(
            "POST",
            &format!("/v1/containers/{name}"),
            Some(&api::ContainerUpdate {
                pid: Some(child.id()),
                supervisor_pid: Some(std::process::id()),
            }),
        )
        .await;
    if let Err(e) = registered {
        let _ = child.kill();
        let _ = child.wait();
        return Err(e);
    }
    Ok(child)
}

/// Copies the output into the log until the command exits; returns its
/// exit code.
async fn supervise(
    mut child: Child,
    mut output: std::io::PipeReader,
    mut log: RotatingLog,
) -> Result<i32> {
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        let mut writing = true;
        loop {
            match output.read(&mut buf) {
                Ok(0) => break,
                // A log that cannot be written (the container was
                // removed) is still read, so the command never blocks.
                Ok(n) => writing = writing && log.write_all(&buf[..n]).is_ok(),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        let _ = done_tx.send(());
    });
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await?
        .context("waiting for the command")?;
    // The rest of its process group ends with it.
    let _ = nix::sys::signal::killpg(pid, nix::sys::signal::Signal::SIGKILL);
    let _ = tokio::task::spawn_blocking(move || done_rx.recv_timeout(DRAIN_WITHIN)).await;
    Ok(exit_code(status))
}
