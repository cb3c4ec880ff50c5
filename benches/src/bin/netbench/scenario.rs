//! Scenarios: each sets up "two endpoints A and B with their namespaces and
//! B's address" and tears them down again. Workloads run between any
//! scenario's A and B, so adding a scenario (an overlay between two daemons,
//! a kernel vxlan, another switch) means adding one type here and one line
//! in [`all`].
//!
//! Every name carries the run's tag (derived from the pid); every guard
//! removes what it made, in `Drop` too, and teardown collects every failure
//! and keeps going. No route leaves the namespaces: the endpoints' only
//! interfaces are the ones made here.

use std::net::{IpAddr, Ipv4Addr};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::capture;
use crate::cpu::Watched;
use crate::docker;
use crate::exec::{in_ns, interrupted, Background, Shell};
use crate::overlay;
use crate::ovs;
use crate::policy;
use crate::publish;
use crate::rootless::{RunAs, User};
use crate::workload::Workload;
use crate::Error;

/// The subnet both local scenarios use; only inside their own namespaces.
pub const SUBNET: &str = "10.247.0.0/24";
pub const PREFIX_LEN: u8 = 24;
pub const A_IP: Ipv4Addr = Ipv4Addr::new(10, 247, 0, 2);
pub const B_IP: Ipv4Addr = Ipv4Addr::new(10, 247, 0, 3);
pub const MTU: u32 = 1500;
/// Time for one setup command (`ip`, `vswitch network create`, ...).
pub const STEP: Duration = Duration::from_secs(30);

/// What every scenario needs from the run.
#[derive(Debug, Clone)]
pub struct Env {
    pub sh: Shell,
    /// Unique per run: lowercase hex of the pid (names stay under 15 bytes).
    pub tag: String,
    pub vswitchd: PathBuf,
    pub vswitch: PathBuf,
    /// Seconds per workload (bounds how long sandboxes must live).
    pub duration: u32,
}

/// Two endpoints: A's namespace sends to B's address in B's namespace.
#[derive(Debug, Clone, Serialize)]
pub struct Endpoints {
    pub a_ns: String,
    pub b_ns: String,
    /// The address A sends to: B's own, or a forwarder's in front of B.
    pub b_ip: IpAddr,
    /// The address B's servers listen on: B's own address, or unspecified
    /// (every address) when A reaches B through a forwarder.
    pub server_ip: IpAddr,
    pub mtu: u32,
    /// Where B's forwarded ports are also open on `127.0.0.1` (the
    /// forwarder's host namespace, publish group): the loopback client's
    /// namespace. None elsewhere.
    pub loopback_ns: Option<String>,
    /// Processes whose threads' CPU time is worth reporting (the switch).
    pub watched: Vec<Watched>,
}

impl Endpoints {
    /// A sends to B's own address `b_ip`, where B's servers listen.
    pub fn direct(a_ns: String, b_ns: String, b_ip: Ipv4Addr, mtu: u32) -> Endpoints {
        Endpoints {
            a_ns,
            b_ns,
            b_ip: IpAddr::V4(b_ip),
            server_ip: IpAddr::V4(b_ip),
            mtu,
            loopback_ns: None,
            watched: Vec::new(),
        }
    }
}

/// Says what a teardown run from `Drop` could not remove (nobody else
/// would hear of it).
pub fn report_cleanup(errors: impl IntoIterator<Item = Error>) {
    for e in errors {
        eprintln!("netbench: cleanup: {e}");
    }
}

/// A set-up scenario; [`Deployment::teardown`] (or drop) removes it.
pub trait Deployment: std::fmt::Debug {
    fn endpoints(&self) -> &Endpoints;
    /// Removes everything; returns every failure (and keeps going).
    fn teardown(self: Box<Self>) -> Vec<Error>;
}

/// One way to connect A and B.
pub trait Scenario: std::fmt::Debug {
    /// Stable key, e.g. `vswitch-bridge`.
    fn key(&self) -> &'static str;
    /// Column heading, e.g. `vswitch`.
    fn title(&self) -> &'static str;
    /// Scenarios of one group are compared; `--only GROUP` selects them.
    fn group(&self) -> &'static str;
    /// One of the group's references (the kernel, OVS, a userspace
    /// forwarder doing the same job); every other scenario of the group is
    /// compared with each of them.
    fn is_baseline(&self) -> bool;
    /// Scenarios of the group, beyond its baselines, that this one is
    /// compared with too (e.g. the encrypted overlay with the plain one).
    fn also_compared_to(&self) -> &'static [&'static str] {
        &[]
    }
    fn description(&self) -> &'static str;
    /// What runs between A and B, in table order.
    fn workloads(&self) -> Vec<Workload> {
        Workload::all()
    }
    fn setup(&self, env: &Env) -> Result<Box<dyn Deployment>, Error>;
}

/// Every scenario, baselines first in each group.
pub fn all() -> Vec<Box<dyn Scenario>> {
    vec![
        Box::new(KernelBridge),
        Box::new(ovs::OvsBridge { tso: true }),
        Box::new(ovs::OvsBridge { tso: false }),
        Box::new(VswitchBridge),
        Box::new(capture::VswitchCapture {
            mode: capture::Mode::Off,
        }),
        Box::new(capture::VswitchCapture {
            mode: capture::Mode::Headers,
        }),
        Box::new(capture::VswitchCapture {
            mode: capture::Mode::Whole,
        }),
        Box::new(policy::VswitchPolicy {
            mode: policy::Mode::SameNetwork,
        }),
        Box::new(policy::VswitchPolicy {
            mode: policy::Mode::Routed,
        }),
        Box::new(overlay::KernelVxlan),
        Box::new(ovs::OvsVxlan),
        Box::new(overlay::VswitchOverlay { encrypted: false }),
        Box::new(overlay::VswitchOverlay { encrypted: true }),
        Box::new(publish::SocatRelay),
        Box::new(publish::PastaPublish),
        Box::new(publish::VswitchPublish),
        Box::new(publish::PastaEgress),
        Box::new(publish::SlirpEgress),
        Box::new(publish::VswitchEgress),
        Box::new(publish::PastaPublishRootless),
        Box::new(publish::VswitchPublishRootless),
        Box::new(publish::PastaEgressRootless),
        Box::new(publish::VswitchEgressRootless),
        Box::new(docker::DockerBridge),
        Box::new(docker::DockerVswitch),
    ]
}

/// A network namespace made here; deleted on [`Netns::delete`] or drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
    sh: Shell,
    alive: bool,
}

impl Netns {
    pub fn create(sh: &Shell, name: String) -> Result<Netns, Error> {
        sh.ok(&["ip", "netns", "add", &name], STEP)?;
        let ns = Netns {
            name,
            sh: sh.clone(),
            alive: true,
        };
        sh.ok(&["ip", "-n", &ns.name, "link", "set", "lo", "up"], STEP)?;
        Ok(ns)
    }

    /// Names the network namespace of process `pid` (made by someone
    /// else: a rootless forwarder) `name` under `/run/netns`; deleting it
    /// only detaches the name.
    pub fn attach(sh: &Shell, name: String, pid: u32) -> Result<Netns, Error> {
        sh.ok(&["ip", "netns", "attach", &name, &pid.to_string()], STEP)?;
        Ok(Netns {
            name,
            sh: sh.clone(),
            alive: true,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn delete(&mut self) -> Result<(), Error> {
        if !std::mem::replace(&mut self.alive, false) {
            return Ok(());
        }
        self.sh
            .cleanup(&["ip", "netns", "del", &self.name])
            .map(|_| ())
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        report_cleanup(self.delete().err());
    }
}

/// A Linux bridge `br0` with `mtu` in `ns`, up.
pub fn add_bridge(sh: &Shell, ns: &str, mtu: u32) -> Result<(), Error> {
    let mtu = mtu.to_string();
    sh.ok(
        &[
            "ip", "-n", ns, "link", "add", "br0", "mtu", &mtu, "type", "bridge",
        ],
        STEP,
    )?;
    sh.ok(&["ip", "-n", ns, "link", "set", "br0", "up"], STEP)?;
    Ok(())
}

/// Makes `port` in `ns` a port of the bridge `br0` there, up.
pub fn bridge_port(sh: &Shell, ns: &str, port: &str) -> Result<(), Error> {
    sh.ok(
        &["ip", "-n", ns, "link", "set", port, "master", "br0", "up"],
        STEP,
    )
    .map(|_| ())
}

/// A veth pair made directly inside two namespaces, so nothing appears in
/// ours: `a_if` in `a_ns` and `b_if` in `b_ns`, both with `mtu`.
pub fn add_veth(
    sh: &Shell,
    (a_ns, a_if): (&str, &str),
    (b_ns, b_if): (&str, &str),
    mtu: u32,
) -> Result<(), Error> {
    let mtu = mtu.to_string();
    sh.ok(
        &[
            "ip", "link", "add", a_if, "netns", a_ns, "mtu", &mtu, "type", "veth", "peer", "name",
            b_if, "netns", b_ns, "mtu", &mtu,
        ],
        STEP,
    )
    .map(|_| ())
}

/// Gives `dev` in `ns` the address `cidr` (`ADDR/LEN`) and sets it up.
pub fn address_up(sh: &Shell, ns: &str, dev: &str, cidr: &str) -> Result<(), Error> {
    sh.ok(&["ip", "-n", ns, "addr", "add", cidr, "dev", dev], STEP)?;
    sh.ok(&["ip", "-n", ns, "link", "set", dev, "up"], STEP)?;
    Ok(())
}

/// Docker's bridge driver done by the kernel: A and B each have a veth
/// whose peer is a port of a Linux bridge in a third namespace.
#[derive(Debug)]
pub struct KernelBridge;

#[derive(Debug)]
struct KernelBridgeDeployment {
    ep: Endpoints,
    // Dropped (deleted) in this order: the endpoints, then the bridge.
    a: Netns,
    b: Netns,
    bridge: Netns,
}

impl Scenario for KernelBridge {
    fn key(&self) -> &'static str {
        "kernel-bridge"
    }
    fn title(&self) -> &'static str {
        "kernel bridge"
    }
    fn group(&self) -> &'static str {
        "local"
    }
    fn is_baseline(&self) -> bool {
        true
    }
    fn description(&self) -> &'static str {
        "two namespaces, each with a veth (MTU 1500, default offloads) to a Linux bridge in a third namespace, as Docker's bridge driver does"
    }

    fn setup(&self, env: &Env) -> Result<Box<dyn Deployment>, Error> {
        let sh = &env.sh;
        let a = Netns::create(sh, format!("nb{}ka", env.tag))?;
        let b = Netns::create(sh, format!("nb{}kb", env.tag))?;
        let bridge = Netns::create(sh, format!("nb{}kbr", env.tag))?;
        let br = bridge.name();
        add_bridge(sh, br, MTU)?;
        for (ns, ip, port) in [(&a, A_IP, "veth-a"), (&b, B_IP, "veth-b")] {
            add_veth(sh, (ns.name(), "eth0"), (br, port), MTU)?;
            bridge_port(sh, br, port)?;
            address_up(sh, ns.name(), "eth0", &format!("{ip}/{PREFIX_LEN}"))?;
        }
        let ep = Endpoints::direct(a.name().to_string(), b.name().to_string(), B_IP, MTU);
        Ok(Box::new(KernelBridgeDeployment { ep, a, b, bridge }))
    }
}

impl Deployment for KernelBridgeDeployment {
    fn endpoints(&self) -> &Endpoints {
        &self.ep
    }

    fn teardown(mut self: Box<Self>) -> Vec<Error> {
        [self.a.delete(), self.b.delete(), self.bridge.delete()]
            .into_iter()
            .filter_map(Result::err)
            .collect()
    }
}

/// Two containers on one vswitch bridge network: a release vswitchd in a
/// namespace of its own, containers made by `vswitch run -d`.
#[derive(Debug)]
pub struct VswitchBridge;

#[derive(Debug)]
struct VswitchDeployment {
    ep: Endpoints,
    host: VswitchHost,
}

impl Scenario for VswitchBridge {
    fn key(&self) -> &'static str {
        "vswitch-bridge"
    }
    fn title(&self) -> &'static str {
        "vswitch"
    }
    fn group(&self) -> &'static str {
        "local"
    }
    fn is_baseline(&self) -> bool {
        false
    }
    fn description(&self) -> &'static str {
        "two containers (`vswitch run`) on one vswitch bridge network (MTU 1500, TAP endpoints), vswitchd in a namespace of its own"
    }

    fn setup(&self, env: &Env) -> Result<Box<dyn Deployment>, Error> {
        VswitchHost::check_binaries(env)?;
        let ns = Netns::create(&env.sh, format!("nb{}vh", env.tag))?;
        // From here on, dropping `host` undoes whatever was done.
        let mut host = VswitchHost::start(env, ns, "vswitchd", &[])?;
        let net = format!("nb{}", env.tag);
        host.create_network(&net, &["--subnet", SUBNET, "--mtu", &MTU.to_string()])?;
        let (a, b) = (format!("nb{}va", env.tag), format!("nb{}vb", env.tag));
        for (name, ip) in [(&a, A_IP), (&b, B_IP)] {
            host.run_container(name, &net, &["--ip", &ip.to_string()], env.duration)?;
        }
        let mut ep = Endpoints::direct(a, b, B_IP, MTU);
        ep.watched.extend(host.watched());
        Ok(Box::new(VswitchDeployment { ep, host }))
    }
}

impl Deployment for VswitchDeployment {
    fn endpoints(&self) -> &Endpoints {
        &self.ep
    }

    fn teardown(mut self: Box<Self>) -> Vec<Error> {
        self.host.teardown()
    }
}

/// One vswitchd in a namespace of its own (its "host"), driven by the
/// `vswitch` client over the daemon's own socket. It remembers the networks
/// it created and the containers it ran and removes them all, with the
/// namespace and the state directory, on [`VswitchHost::teardown`] or drop.
#[derive(Debug)]
pub struct VswitchHost {
    sh: Shell,
    vswitchd: PathBuf,
    vswitch: PathBuf,
    /// `vswitchd --rootless` and `vswitch` run as this user (rootless
    /// scenarios); containers' namespaces are then attached under
    /// `/run/netns` by their process for the workloads.
    run_as: Option<RunAs>,
    /// Names it in CPU samples; also its log's and state directory's name.
    label: String,
    socket: PathBuf,
    state_dir: PathBuf,
    /// A mount namespace to run the daemon in (a dockerd's), and the
    /// network namespace it runs in when the host does not own one.
    mount_ns: Option<(String, String)>,
    /// Networks `network create` made here (removed before the daemon stops).
    networks: Vec<String>,
    /// Containers `vswitch run` was asked to make (their namespaces too).
    containers: Vec<String>,
    containers_removed: bool,
    daemon: Option<Background>,
    ns: Option<Netns>,
    torn_down: bool,
}

impl VswitchHost {
    /// Fails with advice when the binaries under test are missing.
    pub fn check_binaries(env: &Env) -> Result<(), Error> {
        for bin in [&env.vswitchd, &env.vswitch] {
            if !bin.is_file() {
                return Err(Error::Setup(format!(
                    "{} does not exist; build it with `cargo build --release -p vswitch-cli` or pass --vswitchd/--vswitch",
                    bin.display()
                )));
            }
        }
        Ok(())
    }

    /// Starts vswitchd inside `ns` (the host owns the namespace from now on)
    /// with `extra` flags after the usual ones; returns once its control
    /// socket accepts connections.
    pub fn start(env: &Env, ns: Netns, label: &str, extra: &[&str]) -> Result<VswitchHost, Error> {
        VswitchHost::launch(env, label, Some(ns), None, None, extra)
    }

    /// Starts `vswitchd --rootless` as `user` inside `ns` (the host owns
    /// the namespace from now on), its state, socket and runtime directory
    /// in the user's home, the binaries copied there.
    pub fn start_rootless(
        env: &Env,
        ns: Netns,
        label: &str,
        user: &User,
    ) -> Result<VswitchHost, Error> {
        VswitchHost::launch(env, label, Some(ns), None, Some(user), &[])
    }

    /// Starts vswitchd in the network namespace `netns` (someone else's)
    /// and the mount namespace `mount_ns` (`/proc/PID/ns/mnt` of a
    /// dockerd's): the Docker plugin must see the sandboxes' namespaces
    /// where dockerd mounts them.
    pub fn start_in_mount_ns(
        env: &Env,
        netns: &str,
        mount_ns: &str,
        label: &str,
        extra: &[&str],
    ) -> Result<VswitchHost, Error> {
        let place = (mount_ns.to_string(), netns.to_string());
        VswitchHost::launch(env, label, None, Some(place), None, extra)
    }

    fn launch(
        env: &Env,
        label: &str,
        ns: Option<Netns>,
        mount_ns: Option<(String, String)>,
        user: Option<&User>,
        extra: &[&str],
    ) -> Result<VswitchHost, Error> {
        let (state_dir, vswitchd, vswitch) = match user {
            Some(u) => {
                let dir = u.run_as.home.join(label);
                u.run_as.mkdir(&dir)?;
                let bins = u.copy_binaries(&[&env.vswitchd, &env.vswitch])?;
                (dir, bins[0].clone(), bins[1].clone())
            }
            None => {
                let dir = env.sh.dir().join(label);
                std::fs::create_dir_all(&dir).map_err(|e| Error::Io {
                    context: format!("creating {}", dir.display()),
                    source: e,
                })?;
                (dir, env.vswitchd.clone(), env.vswitch.clone())
            }
        };
        let mut host = VswitchHost {
            sh: env.sh.clone(),
            vswitchd,
            vswitch,
            run_as: user.map(|u| u.run_as.clone()),
            label: label.to_string(),
            socket: state_dir.join("vswitchd.sock"),
            state_dir,
            mount_ns,
            networks: Vec::new(),
            containers: Vec::new(),
            containers_removed: false,
            daemon: None,
            ns,
            torn_down: false,
        };
        // From here on, dropping `host` undoes whatever was done.
        host.start_daemon(extra)?;
        Ok(host)
    }

    fn start_daemon(&mut self, extra: &[&str]) -> Result<(), Error> {
        let (ns, mut argv) = match &self.mount_ns {
            Some((mnt, net)) => (
                net.clone(),
                vec![
                    "nsenter".to_string(),
                    format!("--mount={mnt}"),
                    format!("--net=/run/netns/{net}"),
                    "--".into(),
                    self.vswitchd.display().to_string(),
                ],
            ),
            None => {
                let ns = self.ns_name().to_string();
                let vswitchd = self.vswitchd.display().to_string();
                let argv = match &self.run_as {
                    Some(r) => r.argv(&ns, &[vswitchd.as_str(), "--rootless"]),
                    None => in_ns(&ns, &[vswitchd]),
                };
                (ns, argv)
            }
        };
        argv.extend(
            [
                "--state-dir",
                &self.state_dir.join("state").display().to_string(),
                "--socket",
                &self.socket.display().to_string(),
                "--node-name",
                &ns,
                // Never the machine's resolvers: the namespace's own loopback.
                "--dns",
                "127.0.0.1",
                "--log-level",
                "warn",
            ]
            .map(String::from),
        );
        argv.extend(extra.iter().map(|s| s.to_string()));
        let daemon = self.daemon.insert(self.sh.spawn(&argv, &self.label)?);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if UnixStream::connect(&self.socket).is_ok() {
                return Ok(());
            }
            if let Some(status) = daemon.exited() {
                return Err(Error::Setup(format!(
                    "{} exited at start ({status}):\n{}",
                    self.label,
                    daemon.log_tail(20)
                )));
            }
            if interrupted() {
                return Err(Error::Interrupted);
            }
            if Instant::now() >= deadline {
                return Err(Error::Setup(format!(
                    "{} did not open {} within 20 s:\n{}",
                    self.label,
                    self.socket.display(),
                    daemon.log_tail(20)
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The namespace the daemon runs in.
    pub fn ns_name(&self) -> &str {
        self.ns.as_ref().map_or("", Netns::name)
    }

    /// The daemon, for CPU sampling.
    pub fn watched(&self) -> Option<Watched> {
        let pid = self.daemon.as_ref()?.pid()?;
        Some(Watched {
            label: self.label.clone(),
            pid,
        })
    }

    /// `vswitch ARGS...` against this daemon, in the background (stopped
    /// with SIGTERM, its output in the log named `name`).
    pub fn spawn_vs(&self, args: &[&str], name: &str) -> Result<Background, Error> {
        self.sh.spawn(&self.vs_argv(args), name)
    }

    fn vs_argv(&self, args: &[&str]) -> Vec<String> {
        let mut v = vec![
            self.vswitch.display().to_string(),
            "--host".into(),
            format!("unix://{}", self.socket.display()),
        ];
        v.extend(args.iter().map(|s| s.to_string()));
        match &self.run_as {
            Some(r) => r.argv(self.ns_name(), &v),
            None => v,
        }
    }

    /// `vswitch ARGS...` against this daemon; a failure carries the
    /// daemon's log tail. Returns stdout.
    pub fn vs(&self, args: &[&str]) -> Result<String, Error> {
        self.sh
            .ok(&self.vs_argv(args), STEP)
            .map_err(|e| self.with_log(e))
    }

    /// [`VswitchHost::vs`] and its stdout as JSON.
    pub fn vs_json(&self, args: &[&str]) -> Result<serde_json::Value, Error> {
        let out = self.vs(args)?;
        serde_json::from_str(&out).map_err(|e| Error::Parse {
            tool: "vswitch",
            what: format!("`vswitch {}` did not print JSON: {e}", args.join(" ")),
        })
    }

    /// For polling: stdout when `vswitch ARGS...` succeeds, `None` when it
    /// exits non-zero (not there yet); an error only when it cannot run.
    pub fn try_vs(&self, args: &[&str]) -> Result<Option<String>, Error> {
        match self.sh.ok(&self.vs_argv(args), STEP) {
            Ok(out) => Ok(Some(out)),
            Err(Error::Failed { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn with_log(&self, e: Error) -> Error {
        match (&e, &self.daemon) {
            (Error::Failed { .. }, Some(d)) => Error::Setup(format!(
                "{e}\n{} log (tail):\n{}",
                self.label,
                d.log_tail(20)
            )),
            _ => e,
        }
    }

    /// `vswitch network create FLAGS... NAME`; removed again at teardown.
    pub fn create_network(&mut self, name: &str, flags: &[&str]) -> Result<(), Error> {
        let mut args = vec!["network", "create"];
        args.extend_from_slice(flags);
        args.push(name);
        self.vs(&args)?;
        self.networks.push(name.to_string());
        Ok(())
    }

    /// `vswitch run -d --name NAME --network NET EXTRA... -- sleep N`, with
    /// N long enough for every workload of a run of `duration` (bounded).
    pub fn run_container(
        &mut self,
        name: &str,
        network: &str,
        extra: &[&str],
        duration: u32,
    ) -> Result<(), Error> {
        let sleep = (u64::from(duration) * 10 + 600).to_string();
        let mut args = vec!["run", "-d", "--name", name, "--network", network];
        args.extend_from_slice(extra);
        args.extend_from_slice(&["--", "sleep", &sleep]);
        self.containers.push(name.to_string());
        self.vs(&args)?;
        if self.run_as.is_some() {
            // A rootless container's namespace is only in the daemon's
            // mount namespace: attach it by its process for the workloads
            // (teardown's `ip netns del` detaches it).
            let v = self.vs_json(&["inspect", name])?;
            let pid = v[0]["Pid"].as_u64().ok_or_else(|| Error::Parse {
                tool: "vswitch",
                what: format!("`vswitch inspect {name}` shows no Pid: {v}"),
            })?;
            self.sh
                .ok(&["ip", "netns", "attach", name, &pid.to_string()], STEP)?;
        }
        Ok(())
    }

    /// A container's IPv4 address on `network`, from `vswitch inspect`.
    pub fn ipv4_of(&self, container: &str, network: &str) -> Result<Ipv4Addr, Error> {
        let v = self.vs_json(&["inspect", container])?;
        endpoint_ipv4(&v, network).ok_or_else(|| Error::Parse {
            tool: "vswitch",
            what: format!("`vswitch inspect {container}` shows no IPv4 address on {network}: {v}"),
        })
    }

    fn daemon_alive(&mut self) -> bool {
        self.daemon.as_mut().is_some_and(|d| d.exited().is_none())
    }

    /// `vswitch rm` for every container it ran (once; needs the daemon).
    pub fn remove_containers(&mut self) -> Vec<Error> {
        if std::mem::replace(&mut self.containers_removed, true) || !self.daemon_alive() {
            return Vec::new();
        }
        self.containers
            .iter()
            .rev()
            .filter_map(|c| self.sh.cleanup(&self.vs_argv(&["rm", c])).err())
            .collect()
    }

    /// `vswitch network rm` for every network it created, retried for up
    /// to `within` while the daemon still refuses (an overlay's remote
    /// endpoints take a moment to leave this host's directory).
    pub fn remove_networks(&mut self, within: Duration) -> Vec<Error> {
        let mut errors = Vec::new();
        if !self.daemon_alive() {
            self.networks.clear();
            return errors;
        }
        let deadline = Instant::now() + within;
        for net in std::mem::take(&mut self.networks) {
            let argv = self.vs_argv(&["network", "rm", &net]);
            loop {
                match self.sh.cleanup(&argv) {
                    Ok(_) => break,
                    Err(Error::Failed { .. }) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(200));
                    }
                    Err(e) => {
                        errors.push(e);
                        break;
                    }
                }
            }
        }
        errors
    }

    /// Removes everything: containers, networks, the daemon, leftovers,
    /// the namespace, the state directory. Keeps going past failures and
    /// returns them all; a second call does nothing.
    pub fn teardown(&mut self) -> Vec<Error> {
        if std::mem::replace(&mut self.torn_down, true) {
            return Vec::new();
        }
        let mut errors = self.remove_containers();
        errors.extend(self.remove_networks(Duration::ZERO));
        if let Some(mut d) = self.daemon.take() {
            d.stop(Duration::from_secs(10));
        }
        // Whatever `vswitch rm` could not remove, or a dead daemon left.
        for c in std::mem::take(&mut self.containers) {
            if Path::new("/run/netns").join(&c).exists() {
                if let Err(e) = self.sh.cleanup(&["ip", "netns", "del", &c]) {
                    errors.push(e);
                }
            }
            let etc = Path::new("/etc/netns").join(&c);
            if etc.exists() {
                if let Err(e) = std::fs::remove_dir_all(&etc) {
                    errors.push(Error::Io {
                        context: format!("removing {}", etc.display()),
                        source: e,
                    });
                }
            }
        }
        if let Some(mut ns) = self.ns.take() {
            if let Err(e) = ns.delete() {
                errors.push(e);
            }
        }
        if let Err(e) = std::fs::remove_dir_all(&self.state_dir) {
            if e.kind() != std::io::ErrorKind::NotFound {
                errors.push(Error::Io {
                    context: format!("removing {}", self.state_dir.display()),
                    source: e,
                });
            }
        }
        errors
    }
}

impl Drop for VswitchHost {
    fn drop(&mut self) {
        report_cleanup(self.teardown());
    }
}

/// `Networks.NET.IPAddress` of one `vswitch inspect` entry (the client
/// prints an array, one entry per container asked for).
pub fn endpoint_ipv4(inspect: &serde_json::Value, network: &str) -> Option<Ipv4Addr> {
    let entry = inspect.get(0).unwrap_or(inspect);
    entry["Networks"][network]["IPAddress"]
        .as_str()?
        .parse()
        .ok()
}

/// Polls `ready` every 100 ms until it says yes, for at most `within`.
pub fn wait_until(
    what: &str,
    within: Duration,
    mut ready: impl FnMut() -> Result<bool, Error>,
) -> Result<(), Error> {
    let deadline = Instant::now() + within;
    loop {
        if ready()? {
            return Ok(());
        }
        if interrupted() {
            return Err(Error::Interrupted);
        }
        if Instant::now() >= deadline {
            return Err(Error::Setup(format!(
                "timed out after {within:?} waiting for {what}"
            )));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scenario_keys_are_unique_and_each_group_has_its_baselines_first() {
        let all = all();
        let mut keys: Vec<_> = all.iter().map(|s| s.key()).collect();
        keys.sort_unstable();
        keys.dedup();
        assert_eq!(keys.len(), all.len());
        let mut groups: Vec<&str> = all.iter().map(|s| s.group()).collect();
        groups.dedup();
        for g in groups {
            let members: Vec<_> = all.iter().filter(|s| s.group() == g).collect();
            let bases = members.iter().filter(|s| s.is_baseline()).count();
            assert!(bases >= 1, "{g}: a baseline");
            assert!(
                members[..bases].iter().all(|s| s.is_baseline()),
                "{g}: baselines first"
            );
            assert!(members.len() > bases, "{g}: a vswitch scenario");
            // Extra references are candidates of the same group.
            for s in &members {
                for r in s.also_compared_to() {
                    assert!(
                        members
                            .iter()
                            .any(|m| m.key() == *r && !m.is_baseline() && m.key() != s.key()),
                        "{}: {r}",
                        s.key()
                    );
                }
            }
        }
    }

    #[test]
    fn endpoint_ipv4_reads_vswitch_inspect() {
        let v: serde_json::Value = serde_json::from_str(
            r#"[{"Name":"b","Host":"h2","Networks":{"ov":{"IPAddress":"10.248.0.130","MacAddress":"02:00:00:00:00:01"},"other":{}}}]"#,
        )
        .unwrap();
        assert_eq!(
            endpoint_ipv4(&v, "ov"),
            Some(Ipv4Addr::new(10, 248, 0, 130))
        );
        assert_eq!(endpoint_ipv4(&v, "other"), None);
        assert_eq!(endpoint_ipv4(&v, "missing"), None);
    }

    #[test]
    fn wait_until_polls_until_ready_and_is_bounded() {
        let mut calls = 0;
        wait_until("the third call", Duration::from_secs(10), || {
            calls += 1;
            Ok(calls == 3)
        })
        .unwrap();
        assert_eq!(calls, 3);
        let start = Instant::now();
        let err = wait_until("never", Duration::from_millis(300), || Ok(false)).unwrap_err();
        assert!(err.to_string().contains("never"), "{err}");
        assert!(start.elapsed() < Duration::from_secs(5));
        let err = wait_until("a failing probe", Duration::from_secs(10), || {
            Err(Error::Setup("probe broke".into()))
        })
        .unwrap_err();
        assert_eq!(err.to_string(), "probe broke");
    }

    #[test]
    fn names_fit_an_interface_name() {
        // The longest tag: a 22-bit pid in hex (pid_max is at most 2^22).
        let tag = format!("{:x}", (1u32 << 22) - 1);
        let suffixes = [
            "ka", "kb", "kbr", "vh", "va", "vb", // local
            "psc", "psh", "psb", "ppc", "pph", "ppb", "pvc", "pvh", "pvb", "p", // publish
            "epw", "eph", "epb", "esw", "esh", "esb", "evw", "evh", "evb", "e", // egress
            "rpc", "rph", "rpb", "rvc", "rvh", "rvb", "r", // publish-rootless
            "rqw", "rqh", "rqb", "rww", "rwh", "rwb", "s", // egress-rootless
        ];
        let overlay = [
            "xu", "xh1", "xh2", "xa", "xb", "ou", "oh1", "oh2", "oa", "ob", "ov", "qu", "qh1",
            "qh2", "qa", "qb", "qv", "wu", "wh1", "wh2", "wa", "wb",
        ];
        let ovs = ["th", "ta", "tb", "sh", "sa", "sb"];
        for suffix in suffixes.iter().chain(&overlay).chain(&ovs) {
            assert!(format!("nb{tag}{suffix}").len() <= 15);
        }
    }
}
