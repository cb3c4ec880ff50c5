//! `vswitchd`: wiring of the control API, the durable state, the controller
//! and the datapath thread.

pub mod anomaly;
pub mod controller;
pub mod datapath;
pub mod docker;
pub mod events;
pub mod gossip;
pub mod metrics;
pub mod pcapng;
pub mod procwatch;
pub mod quic;
pub mod server;
pub mod state;

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Parser;
use tokio::net::UnixListener;

use crate::api::Info;
use crate::{rootless, sandbox};

/// An error the API returns: an HTTP status and a sentence a person can act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: u16,
    pub message: String,
}

impl ApiError {
    pub fn new(status: u16, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
        }
    }
    /// 400: the request cannot be done as asked.
    pub fn bad(message: impl Into<String>) -> ApiError {
        ApiError::new(400, message)
    }
    /// 404: no such network or container.
    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(404, message)
    }
    /// 409: conflicts with what exists.
    pub fn conflict(message: impl Into<String>) -> ApiError {
        ApiError::new(409, message)
    }
    /// 500: the daemon failed.
    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(500, message)
    }
}

impl From<datapath::DatapathError> for ApiError {
    /// The datapath failing a request is the daemon's failure: 500.
    fn from(e: datapath::DatapathError) -> ApiError {
        ApiError::internal(e.to_string())
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// `vswitchd` command line.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "vswitchd",
    version,
    about = "The vswitch daemon: a userspace virtual switch for containers"
)]
pub struct DaemonArgs {
    /// Where networks, endpoints and allocations are kept.
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// The control API socket.
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// This host's name in the cluster (default: the hostname).
    #[arg(long, value_name = "NAME")]
    pub node_name: Option<String>,
    /// Gossip listen address.
    #[arg(long, value_name = "ADDR:PORT", default_value = "0.0.0.0:7946")]
    pub bind: SocketAddr,
    /// Address other hosts reach this one at.
    #[arg(long, value_name = "IP")]
    pub advertise_addr: Option<IpAddr>,
    /// UDP port of the VXLAN tunnel.
    #[arg(long, value_name = "PORT", default_value_t = 4789)]
    pub tunnel_port: u16,
    /// UDP port of the QUIC endpoint that carries encrypted overlays
    /// (`--opt encrypted`).
    #[arg(long, value_name = "PORT", default_value_t = quic::DEFAULT_PORT)]
    pub quic_port: u16,
    /// Tests only: present a QUIC certificate other than the published one.
    #[arg(long, hide = true)]
    pub test_quic_impostor: bool,
    /// Tests only: fail points to set, `NAME=ACTIONS;...` in fail-rs's
    /// syntax (e.g. `connect::store=return;connect::netlink=sleep(3000)`),
    /// to fail, slow down or panic a step of a request.
    #[arg(long, hide = true, value_name = "SPEC")]
    pub test_failpoints: Option<String>,
    /// Serve Docker's plugin protocol: the remote network driver and IPAM
    /// driver `vswitch` (`docker network create -d vswitch --ipam-driver
    /// vswitch`).
    #[arg(long)]
    pub docker_plugin: bool,
    /// Where the Docker plugin listens (Docker finds plugins in
    /// /run/docker/plugins).
    #[arg(long, value_name = "PATH", requires = "docker_plugin", default_value = docker::DEFAULT_SOCKET)]
    pub docker_plugin_socket: PathBuf,
    /// Docker's API, asked for the names and aliases of the containers
    /// that join (the plugin protocol carries neither).
    #[arg(
        long,
        value_name = "unix://PATH",
        env = "DOCKER_HOST",
        default_value = "unix:///var/run/docker.sock"
    )]
    pub docker_host: String,
    /// File holding the cluster key.
    #[arg(long, value_name = "FILE")]
    pub cluster_key_file: Option<PathBuf>,
    /// Seconds a dead host's overlay address ranges wait before another host
    /// takes them over (`vswitch ipam reclaim HOST` does it at once).
    #[arg(long, value_name = "SECS", default_value_t = 300)]
    pub ipam_quarantine: u64,
    /// Run as an ordinary user: containers' namespaces live in a user
    /// namespace held by a pause process; state under
    /// $XDG_RUNTIME_DIR/vswitch. Needs /dev/net/tun at mode 0666.
    #[arg(long)]
    pub rootless: bool,
    /// Datapath worker threads, each with its own queue of every TAP
    /// (default: one per CPU, at most 8).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=8))]
    pub workers: Option<u16>,
    /// Microseconds a datapath worker (and the QUIC thread of encrypted
    /// overlays) keeps polling after its last event before it sleeps: an
    /// answer that comes within that time is switched without a thread
    /// wake-up (lower latency, more CPU). 0 turns it off.
    #[arg(long, value_name = "USECS", default_value_t = 50, value_parser = clap::value_parser!(u64).range(0..=10_000))]
    pub busy_poll: u64,
    /// Upstream DNS servers for names that are not containers' (default: the
    /// nameservers of /etc/resolv.conf). Repeatable; IP or IP:PORT.
    #[arg(long = "dns", value_name = "IP[:PORT]")]
    pub dns: Vec<String>,
    /// Serve Prometheus / OpenMetrics text on http://ADDR:PORT/metrics
    /// (off by default), e.g. 127.0.0.1:9469.
    #[arg(long, value_name = "ADDR:PORT", value_parser = metrics::parse_addr)]
    pub metrics_addr: Option<SocketAddr>,
    /// trace, debug, info, warn or error (or a tracing filter).
    #[arg(long, value_name = "LEVEL", default_value = "info")]
    pub log_level: String,
    /// Log as JSON lines.
    #[arg(long)]
    pub log_json: bool,
}

fn default_state_dir() -> PathBuf {
    if nix::unistd::geteuid().is_root() {
        PathBuf::from("/var/lib/vswitch")
    } else {
        let base = std::env::var_os("XDG_DATA_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".local/share")))
            .unwrap_or_else(|| PathBuf::from("/tmp"));
        base.join("vswitch")
    }
}

/// Parses `IP` or `IP:PORT` (port 53 by default).
pub fn parse_dns_server(s: &str) -> Result<SocketAddr> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, 53));
    }
    s.parse::<SocketAddr>()
        .with_context(|| format!("--dns `{s}` is neither an IP address nor IP:PORT"))
}

/// The nameservers of a resolv.conf.
pub fn resolv_conf_servers(text: &str) -> Vec<SocketAddr> {
    text.lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            (w.next() == Some("nameserver"))
                .then(|| w.next())
                .flatten()
                .and_then(|ip| ip.split('%').next()?.parse::<IpAddr>().ok())
                .map(|ip| SocketAddr::new(ip, 53))
        })
        .collect()
}

fn init_logging(args: &DaemonArgs) {
    let filter = tracing_subscriber::EnvFilter::try_new(&args.log_level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    if args.log_json {
        let _ = builder.json().try_init();
    } else {
        let _ = builder.try_init();
    }
}

/// Binds the control socket, refusing to steal one a live daemon answers on.
fn bind_socket(path: &Path) -> Result<UnixListener> {
    bind_unix(
        path,
        "the control socket",
        "another vswitchd already answers there; stop it or pass --socket",
    )
}

/// Binds a Unix socket (`what`) at `path`: its directory made, a stale
/// socket replaced, one that answers refused with `taken`.
fn bind_unix(path: &Path, what: &str, taken: &str) -> Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating the directory of {what} {}", dir.display()))?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            bail!("{what} {}: {taken}", path.display());
        }
        std::fs::remove_file(path)
            .with_context(|| format!("removing the stale {what} {}", path.display()))?;
    }
    UnixListener::bind(path).with_context(|| format!("binding {what} {}", path.display()))
}

/// Rootless: find or start the pause process and join its user and mount
/// namespaces (see [`crate::rootless`]); sandboxes then live under the
/// runtime directory. Must run before any thread exists.
fn enter_rootless() -> Result<Info> {
    if nix::unistd::geteuid().is_root() {
        tracing::warn!("--rootless given while running as root");
    }
    let layout = rootless::Layout::from_env();
    let pause = rootless::enter(&layout).context("rootless mode")?;
    sandbox::use_dirs(layout.sandbox_dirs()).context("rootless mode")?;
    tracing::info!(
        pause = pause.pid,
        started = pause.started,
        runtime_dir = %layout.runtime_dir().display(),
        "rootless: in the user and mount namespaces of the pause process"
    );
    Ok(Info {
        rootless: true,
        pause_pid: Some(pause.pid),
        runtime_dir: Some(layout.runtime_dir().to_path_buf()),
    })
}

/// Sets the fail points of `--test-failpoints`.
fn set_failpoints(spec: &str) -> Result<()> {
    for item in spec.split(';').filter(|s| !s.trim().is_empty()) {
        let (name, actions) = item
            .split_once('=')
            .with_context(|| format!("--test-failpoints: `{item}` is not NAME=ACTIONS"))?;
        fail::cfg(name.trim(), actions.trim())
            .map_err(|e| anyhow::anyhow!("--test-failpoints: `{item}`: {e}"))?;
        tracing::warn!(
            failpoint = name.trim(),
            actions = actions.trim(),
            "test fail point set"
        );
    }
    Ok(())
}

/// Runs the daemon until SIGTERM or SIGINT.
pub fn run(args: DaemonArgs) -> Result<()> {
    init_logging(&args);
    // Defaults that depend on the user, decided before a rootless daemon
    // becomes uid 0 of its user namespace.
    let state_dir = args.state_dir.clone().unwrap_or_else(default_state_dir);
    let socket = args
        .socket
        .clone()
        .unwrap_or_else(crate::client::default_socket);
    // Before any thread: joining a user namespace needs a single thread.
    let info = if args.rootless {
        enter_rootless()?
    } else {
        if !nix::unistd::geteuid().is_root() {
            tracing::warn!(
                "running as uid {} without --rootless: making TAP devices in containers' namespaces will fail; pass --rootless",
                nix::unistd::geteuid()
            );
        }
        Info::default()
    };
    std::fs::create_dir_all(&state_dir)
        .with_context(|| format!("creating the state directory {}", state_dir.display()))?;
    if let Some(spec) = &args.test_failpoints {
        set_failpoints(spec)?;
    }
    let upstreams = if args.dns.is_empty() {
        let text = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
        resolv_conf_servers(&text)
    } else {
        args.dns
            .iter()
            .map(|s| parse_dns_server(s))
            .collect::<Result<Vec<_>>>()?
    };
    let node_name = match &args.node_name {
        Some(n) => n.clone(),
        None => nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_else(|| "localhost".into()),
    };
    let cluster = match &args.cluster_key_file {
        Some(path) => {
            let bytes = std::fs::read(path)
                .with_context(|| format!("reading the cluster key file {}", path.display()))?;
            let key = overlay::ClusterKey::from_file_bytes(&bytes)
                .with_context(|| format!("cluster key file {}", path.display()))?;
            let advertise = match (args.advertise_addr, args.bind.ip()) {
                (Some(ip), _) => ip,
                (None, ip) if !ip.is_unspecified() => ip,
                _ => bail!(
                    "with --cluster-key-file, say which address other hosts reach this one at: --advertise-addr IP (or --bind IP:PORT)"
                ),
            };
            Some(controller::ClusterSettings {
                bind: args.bind,
                advertise,
                tunnel_port: args.tunnel_port,
                quic_port: args.quic_port,
                quic_impostor: args.test_quic_impostor,
                key,
            })
        }
        None => None,
    };
    let config = controller::ControllerConfig {
        state_dir: state_dir.clone(),
        node_name,
        upstreams,
        rootless: args.rootless,
        workers: args.workers.map(usize::from).unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(usize::from)
                .unwrap_or(1)
                .min(datapath::MAX_WORKERS)
        }),
        busy_poll: std::time::Duration::from_micros(args.busy_poll),
        cluster,
        ipam_quarantine: std::time::Duration::from_secs(args.ipam_quarantine),
    };

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let plugin_socket = args
        .docker_plugin
        .then(|| args.docker_plugin_socket.clone());
    let docker_api = match args.docker_host.strip_prefix("unix://") {
        Some(p) => docker::names::DockerApi::new(PathBuf::from(p)),
        None => bail!(
            "--docker-host {}: only unix://PATH is supported",
            args.docker_host
        ),
    };
    rt.block_on(async move {
        // Before the control socket, so a refused address leaves nothing.
        let metrics_listener = args.metrics_addr.map(metrics::bind).transpose()?;
        let listener = bind_socket(&socket)?;
        let plugin_listener = match &plugin_socket {
            Some(p) => Some(docker::bind(p)?),
            None => None,
        };
        let ctrl = tokio::task::spawn_blocking(move || controller::Controller::start(config))
            .await
            .context("controller start")??;
        let ctrl = controller::ControlPlane::new(ctrl);
        // `vswitch run` containers: marked exited if their processes ended
        // while no daemon watched, watched otherwise.
        {
            let ctrl = ctrl.clone();
            tokio::task::spawn_blocking(move || ctrl.watch_containers())
                .await
                .context("looking at the containers' processes")?;
        }
        // Gossip events are applied by a thread of their own, each under the
        // controller's lock for as long as it takes to apply (never while a
        // request waits on netlink: see `controller::plane`).
        if let Some(events) = ctrl.take_events() {
            let ctrl = ctrl.clone();
            std::thread::Builder::new()
                .name("vswitch-cluster-events".into())
                .spawn(move || loop {
                    // Events as they come; timers at least every 250 ms.
                    let applied = match events.recv_timeout(std::time::Duration::from_millis(250)) {
                        Ok(ev) => ctrl.with(|c| {
                            c.handle_cluster_event(ev);
                            c.sync_policies();
                        }),
                        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => ctrl.with(|c| c.tick()),
                        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
                    };
                    if applied.is_none() {
                        // The daemon is stopping after an internal error.
                        break;
                    }
                })?;
        }
        // The anomaly detector samples the counters once a second on a
        // thread of its own (see `controller::events`).
        let detecting = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        {
            let (ctrl, stop) = (ctrl.clone(), detecting.clone());
            std::thread::Builder::new()
                .name("vswitch-anomaly".into())
                .spawn(move || ctrl.watch_anomalies(ctrl.events().clone(), &stop))?;
        }
        tracing::info!(socket = %socket.display(), state_dir = %state_dir.display(), "vswitchd ready");
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let plugin = plugin_listener.map(|l| {
            tracing::info!(socket = %plugin_socket.as_deref().unwrap_or(Path::new("")).display(), "Docker plugin ready");
            tokio::spawn(docker::serve(l, ctrl.clone(), Some(docker_api), stop_rx.clone()))
        });
        let api_metrics = metrics::ApiMetrics::default();
        let metrics_server = metrics_listener.map(|l| {
            tracing::info!(addr = %args.metrics_addr.expect("bound"), "metrics on /metrics");
            tokio::spawn(metrics::serve(
                l,
                metrics::registry(ctrl.clone(), &api_metrics),
                stop_rx.clone(),
            ))
        });
        let server = tokio::spawn(server::serve(listener, ctrl.clone(), info, api_metrics, stop_rx));
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let failure = tokio::select! {
            _ = term.recv() => { tracing::info!("SIGTERM: shutting down"); None }
            _ = tokio::signal::ctrl_c() => { tracing::info!("SIGINT: shutting down"); None }
            why = ctrl.failed() => Some(why),
        };
        let _ = stop_tx.send(true);
        detecting.store(true, std::sync::atomic::Ordering::Relaxed);
        let _ = server.await;
        if let Some(m) = metrics_server {
            let _ = m.await;
        }
        if let Some(p) = plugin {
            let _ = p.await;
        }
        let _ = std::fs::remove_file(&socket);
        if let Some(p) = &plugin_socket {
            let _ = std::fs::remove_file(p);
        }
        tokio::task::spawn_blocking(move || ctrl.shutdown()).await?;
        if let Some(why) = failure {
            bail!("vswitchd stopped after an internal error ({why}); start it again to restore its state from the store");
        }
        tracing::info!("vswitchd stopped");
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_resolv_conf() {
        let t = "# c\nnameserver 10.0.0.53\nnameserver fe80::1%eth0\nsearch x\nnameserver bogus\n";
        let s = resolv_conf_servers(t);
        assert_eq!(
            s,
            vec![
                "10.0.0.53:53".parse().unwrap(),
                "[fe80::1]:53".parse().unwrap()
            ]
        );
    }

    #[test]
    fn dns_flag() {
        assert_eq!(
            parse_dns_server("1.2.3.4").unwrap(),
            "1.2.3.4:53".parse().unwrap()
        );
        assert_eq!(
            parse_dns_server("1.2.3.4:5353").unwrap(),
            "1.2.3.4:5353".parse().unwrap()
        );
        assert!(parse_dns_server("nope").is_err());
    }
}
