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

use crate::cpu::Watched;
use crate::exec::{in_ns, interrupted, Background, Shell};
use crate::Error;

/// The subnet both local scenarios use; only inside their own namespaces.
const SUBNET: &str = "10.247.0.0/24";
const PREFIX_LEN: u8 = 24;
const A_IP: Ipv4Addr = Ipv4Addr::new(10, 247, 0, 2);
const B_IP: Ipv4Addr = Ipv4Addr::new(10, 247, 0, 3);
const MTU: u32 = 1500;
/// Time for one setup command (`ip`, `vswitch network create`, ...).
const STEP: Duration = Duration::from_secs(30);

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
    pub b_ip: IpAddr,
    pub mtu: u32,
    /// Processes whose threads' CPU time is worth reporting (the switch).
    pub watched: Vec<Watched>,
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
    /// The group's reference: the kernel doing the same job.
    fn is_baseline(&self) -> bool;
    fn description(&self) -> &'static str;
    fn setup(&self, env: &Env) -> Result<Box<dyn Deployment>, Error>;
}

/// Every scenario, baselines first in each group.
pub fn all() -> Vec<Box<dyn Scenario>> {
    vec![Box::new(KernelBridge), Box::new(VswitchBridge)]
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
        if let Err(e) = self.delete() {
            eprintln!("netbench: cleanup: {e}");
        }
    }
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
        let mtu = MTU.to_string();
        sh.ok(
            &[
                "ip", "-n", br, "link", "add", "br0", "mtu", &mtu, "type", "bridge",
            ],
            STEP,
        )?;
        sh.ok(&["ip", "-n", br, "link", "set", "br0", "up"], STEP)?;
        for (ns, ip, port) in [(&a, A_IP, "veth-a"), (&b, B_IP, "veth-b")] {
            // Made directly inside the namespaces: nothing appears in ours.
            sh.ok(
                &[
                    "ip",
                    "link",
                    "add",
                    "eth0",
                    "netns",
                    ns.name(),
                    "mtu",
                    &mtu,
                    "type",
                    "veth",
                    "peer",
                    "name",
                    port,
                    "netns",
                    br,
                    "mtu",
                    &mtu,
                ],
                STEP,
            )?;
            sh.ok(
                &["ip", "-n", br, "link", "set", port, "master", "br0", "up"],
                STEP,
            )?;
            sh.ok(
                &[
                    "ip",
                    "-n",
                    ns.name(),
                    "addr",
                    "add",
                    &format!("{ip}/{PREFIX_LEN}"),
                    "dev",
                    "eth0",
                ],
                STEP,
            )?;
            sh.ok(&["ip", "-n", ns.name(), "link", "set", "eth0", "up"], STEP)?;
        }
        let ep = Endpoints {
            a_ns: a.name().to_string(),
            b_ns: b.name().to_string(),
            b_ip: IpAddr::V4(B_IP),
            mtu: MTU,
            watched: Vec::new(),
        };
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
    sh: Shell,
    vswitch: PathBuf,
    socket: PathBuf,
    state_dir: PathBuf,
    network: Option<String>,
    /// Containers `vswitch run` was asked to make (their namespaces too).
    containers: Vec<String>,
    daemon: Option<Background>,
    host: Option<Netns>,
    torn_down: bool,
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
        for bin in [&env.vswitchd, &env.vswitch] {
            if !bin.is_file() {
                return Err(Error::Setup(format!(
                    "{} does not exist; build it with `cargo build --release -p vswitch-cli` or pass --vswitchd/--vswitch",
                    bin.display()
                )));
            }
        }
        let host = Netns::create(&env.sh, format!("nb{}vh", env.tag))?;
        let state_dir = env.sh.dir().join("vswitchd");
        std::fs::create_dir_all(&state_dir).map_err(|e| Error::Io {
            context: format!("creating {}", state_dir.display()),
            source: e,
        })?;
        let socket = state_dir.join("vswitchd.sock");
        let mut d = VswitchDeployment {
            ep: Endpoints {
                a_ns: format!("nb{}va", env.tag),
                b_ns: format!("nb{}vb", env.tag),
                b_ip: IpAddr::V4(B_IP),
                mtu: MTU,
                watched: Vec::new(),
            },
            sh: env.sh.clone(),
            vswitch: env.vswitch.clone(),
            socket,
            state_dir,
            network: None,
            containers: Vec::new(),
            daemon: None,
            host: Some(host),
            torn_down: false,
        };
        // From here on, dropping `d` undoes whatever was done.
        d.start_daemon(env)?;
        let net = format!("nb{}", env.tag);
        d.vs(&[
            "network",
            "create",
            "--subnet",
            SUBNET,
            "--mtu",
            &MTU.to_string(),
            &net,
        ])?;
        d.network = Some(net.clone());
        // Sandboxes must outlive every workload; bounded all the same.
        let sleep = (u64::from(env.duration) * 10 + 600).to_string();
        for (name, ip) in [(d.ep.a_ns.clone(), A_IP), (d.ep.b_ns.clone(), B_IP)] {
            d.containers.push(name.clone());
            d.vs(&[
                "run",
                "-d",
                "--name",
                &name,
                "--network",
                &net,
                "--ip",
                &ip.to_string(),
                "--",
                "sleep",
                &sleep,
            ])?;
        }
        Ok(Box::new(d))
    }
}

impl VswitchDeployment {
    fn start_daemon(&mut self, env: &Env) -> Result<(), Error> {
        let host = self
            .host
            .as_ref()
            .expect("host namespace made first")
            .name()
            .to_string();
        let mut argv = in_ns(&host, &[env.vswitchd.display().to_string()]);
        argv.extend(
            [
                "--state-dir",
                &self.state_dir.join("state").display().to_string(),
                "--socket",
                &self.socket.display().to_string(),
                "--node-name",
                &host,
                // Never the machine's resolvers: the namespace's own loopback.
                "--dns",
                "127.0.0.1",
                "--log-level",
                "warn",
            ]
            .map(String::from),
        );
        let daemon = self.daemon.insert(self.sh.spawn(&argv, "vswitchd")?);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if UnixStream::connect(&self.socket).is_ok() {
                break;
            }
            if let Some(status) = daemon.exited() {
                return Err(Error::Setup(format!(
                    "vswitchd exited at start ({status}):\n{}",
                    daemon.log_tail(20)
                )));
            }
            if interrupted() {
                return Err(Error::Interrupted);
            }
            if Instant::now() >= deadline {
                return Err(Error::Setup(format!(
                    "vswitchd did not open {} within 20 s:\n{}",
                    self.socket.display(),
                    daemon.log_tail(20)
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if let Some(pid) = daemon.pid() {
            self.ep.watched.push(Watched {
                label: "vswitchd".into(),
                pid,
            });
        }
        Ok(())
    }

    fn vs_argv(&self, args: &[&str]) -> Vec<String> {
        let mut v = vec![
            self.vswitch.display().to_string(),
            "--host".into(),
            format!("unix://{}", self.socket.display()),
        ];
        v.extend(args.iter().map(|s| s.to_string()));
        v
    }

    fn vs(&self, args: &[&str]) -> Result<String, Error> {
        self.sh
            .ok(&self.vs_argv(args), STEP)
            .map_err(|e| self.with_log(e))
    }

    fn with_log(&self, e: Error) -> Error {
        match (&e, &self.daemon) {
            (Error::Failed { .. }, Some(d)) => {
                Error::Setup(format!("{e}\nvswitchd log (tail):\n{}", d.log_tail(20)))
            }
            _ => e,
        }
    }

    fn teardown_all(&mut self) -> Vec<Error> {
        if std::mem::replace(&mut self.torn_down, true) {
            return Vec::new();
        }
        let mut errors = Vec::new();
        let daemon_alive = self.daemon.as_mut().is_some_and(|d| d.exited().is_none());
        if daemon_alive {
            for c in self.containers.iter().rev() {
                if let Err(e) = self.sh.cleanup(&self.vs_argv(&["rm", c])) {
                    errors.push(e);
                }
            }
            if let Some(net) = self.network.take() {
                if let Err(e) = self.sh.cleanup(&self.vs_argv(&["network", "rm", &net])) {
                    errors.push(e);
                }
            }
        }
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
        if let Some(mut host) = self.host.take() {
            if let Err(e) = host.delete() {
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

impl Deployment for VswitchDeployment {
    fn endpoints(&self) -> &Endpoints {
        &self.ep
    }

    fn teardown(mut self: Box<Self>) -> Vec<Error> {
        self.teardown_all()
    }
}

impl Drop for VswitchDeployment {
    fn drop(&mut self) {
        for e in self.teardown_all() {
            eprintln!("netbench: cleanup: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scenario_keys_are_unique_and_each_group_has_one_baseline_first() {
        let all = all();
        let mut keys: Vec<_> = all.iter().map(|s| s.key()).collect();
        keys.sort_unstable();
        keys.dedup();
        assert_eq!(keys.len(), all.len());
        let mut groups: Vec<&str> = all.iter().map(|s| s.group()).collect();
        groups.dedup();
        for g in groups {
            let members: Vec<_> = all.iter().filter(|s| s.group() == g).collect();
            assert!(members[0].is_baseline(), "{g}: baseline first");
            assert_eq!(members.iter().filter(|s| s.is_baseline()).count(), 1, "{g}");
        }
    }

    #[test]
    fn names_fit_an_interface_name() {
        // The longest tag: a 22-bit pid in hex (pid_max is at most 2^22).
        let tag = format!("{:x}", (1u32 << 22) - 1);
        for suffix in ["ka", "kb", "kbr", "vh", "va", "vb"] {
            assert!(format!("nb{tag}{suffix}").len() <= 15);
        }
    }
}
