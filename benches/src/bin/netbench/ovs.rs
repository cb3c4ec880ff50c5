//! Open vSwitch's userspace datapath (`datapath_type=netdev`) as a peer:
//! the switch users compare a userspace switch with.
//!
//! Every instance is the benchmark's own: an `ovsdb-server` with a fresh
//! database and an `ovs-vswitchd`, both started inside a "host" namespace
//! made here, with every file (database, sockets, logs, the bridges'
//! OpenFlow sockets) in a private directory of the run's work directory
//! (`OVS_RUNDIR`, `OVS_DBDIR`, `OVS_LOGDIR` and `OVS_SYSCONFDIR` point
//! there), never the system's service. Both run in their own process group
//! and are stopped at teardown, on failure and on Ctrl-C; `ovs-vswitchd`
//! goes first, so the TAP devices it holds disappear with it before the
//! namespaces they were moved into are deleted.
//!
//! - [`OvsBridge`] (`local` group): a bridge `br0` with two ports of
//!   `type=tap`; each TAP is moved into container A's or B's namespace.
//!   With `tso`, `other_config:userspace-tso-enable=true` is set before
//!   `ovs-vswitchd` starts (it reads it once), so the TAPs carry
//!   `IFF_VNET_HDR` and offer TSO and checksum offload to the containers.
//! - [`OvsVxlan`] (`overlay` group): per host, `br-int` with a `vxlan` port
//!   (VNI 4248, UDP 4789, `remote_ip` the other host) and the container's
//!   TAP, and `br-phy` holding the underlay veth, with the host's underlay
//!   address on `br-phy` itself: OVS's userspace tunnelling, which routes
//!   and resolves the outer header itself (`ovs/route/add`, `tnl/arp/set`).
//!   Userspace TSO stays off there: OVS 3.1 drops offloaded packets bound
//!   for a tunnel ("Tunneling packets with HW offload flags is not
//!   supported").

use std::net::Ipv4Addr;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::cpu::Watched;
use crate::exec::{in_ns, interrupted, on_path, Background, Shell};
use crate::overlay::{Underlay, HOST_IPS, OVERLAY_MTU, VNI, VXLAN_PORT};
use crate::scenario::{
    report_cleanup, Deployment, Endpoints, Env, Netns, Scenario, A_IP, B_IP, MTU, PREFIX_LEN, STEP,
};
use crate::Error;

/// The database schema Debian's `openvswitch-common` installs.
const SCHEMA: &str = "/usr/share/openvswitch/vswitch.ovsschema";
/// Bound on each daemon opening its socket.
const START: Duration = Duration::from_secs(20);
/// What `ovs-vsctl` waits at most for `ovs-vswitchd` to apply a change.
const VSCTL_TIMEOUT: &str = "--timeout=20";
/// The line `ovs-vswitchd` logs when it has userspace TSO on.
const TSO_ENABLED: &str = "Userspace TCP Segmentation Offloading support enabled";
/// The kernel vxlan baseline's container addresses, reused.
const OVERLAY_A_IP: Ipv4Addr = Ipv4Addr::new(10, 248, 0, 2);
const OVERLAY_B_IP: Ipv4Addr = Ipv4Addr::new(10, 248, 0, 3);
const OVERLAY_PREFIX_LEN: u8 = 24;

/// Fails with [`Error::Unavailable`] (a skip) when Open vSwitch is not
/// installed.
fn check_installed() -> Result<(), Error> {
    for prog in [
        "ovsdb-tool",
        "ovsdb-server",
        "ovs-vswitchd",
        "ovs-vsctl",
        "ovs-appctl",
    ] {
        if !on_path(prog) {
            return Err(Error::Unavailable(format!(
                "`{prog}` is not installed (Debian: apt install openvswitch-switch)"
            )));
        }
    }
    if !Path::new(SCHEMA).is_file() {
        return Err(Error::Unavailable(format!(
            "{SCHEMA} is missing (Debian: apt install openvswitch-common)"
        )));
    }
    Ok(())
}

/// One private Open vSwitch: `ovsdb-server` and `ovs-vswitchd` inside a
/// namespace, every file in `dir`. Stopped on [`Ovs::stop`] or drop.
#[derive(Debug)]
pub struct Ovs {
    sh: Shell,
    /// Names it in CPU samples and its logs.
    label: String,
    dir: PathBuf,
    ovsdb: Option<Background>,
    vswitchd: Option<Background>,
    stopped: bool,
}

impl Ovs {
    /// Creates a database, starts both daemons in `ns` and returns once
    /// `ovs-vswitchd` answers on its control socket (and, with `tso`, has
    /// logged that userspace TSO is on).
    pub fn start(env: &Env, ns: &str, label: &str, tso: bool) -> Result<Ovs, Error> {
        let dir = env.sh.dir().join(label);
        std::fs::create_dir_all(&dir).map_err(|e| Error::Io {
            context: format!("creating {}", dir.display()),
            source: e,
        })?;
        let mut ovs = Ovs {
            sh: env.sh.clone(),
            label: label.to_string(),
            dir,
            ovsdb: None,
            vswitchd: None,
            stopped: false,
        };
        // From here on, dropping `ovs` stops whatever was started.
        let db = ovs.path("conf.db");
        ovs.sh
            .ok(&ovs.with_env(&["ovsdb-tool", "create", &db, SCHEMA]), STEP)?;
        let argv = in_ns(
            ns,
            &ovs.with_env(&[
                "ovsdb-server",
                &db,
                &format!("--remote=punix:{}", ovs.path("db.sock")),
                &format!("--unixctl={}", ovs.path("ovsdb-server.ctl")),
                &format!("--log-file={}", ovs.path("ovsdb-server.log")),
                "-vconsole:warn",
            ]),
        );
        let server = ovs
            .ovsdb
            .insert(ovs.sh.spawn(&argv, &format!("{label}-ovsdb-server"))?);
        wait_socket(server, &ovs.dir.join("db.sock"))?;
        ovs.vsctl(&["--no-wait", "init"])?;
        if tso {
            ovs.vsctl(&[
                "--no-wait",
                "set",
                "Open_vSwitch",
                ".",
                "other_config:userspace-tso-enable=true",
            ])?;
        }
        let argv = in_ns(
            ns,
            &ovs.with_env(&[
                "ovs-vswitchd",
                &format!("unix:{}", ovs.path("db.sock")),
                &format!("--unixctl={}", ovs.path("ovs-vswitchd.ctl")),
                &format!("--log-file={}", ovs.path("ovs-vswitchd.log")),
                "-vconsole:warn",
            ]),
        );
        let vswitchd = ovs
            .vswitchd
            .insert(ovs.sh.spawn(&argv, &format!("{label}-ovs-vswitchd"))?);
        wait_socket(vswitchd, &ovs.dir.join("ovs-vswitchd.ctl"))?;
        if tso {
            let log = ovs.dir.join("ovs-vswitchd.log");
            crate::scenario::wait_until(
                &format!("{label} to enable userspace TSO"),
                START,
                || Ok(std::fs::read_to_string(&log).is_ok_and(|s| s.contains(TSO_ENABLED))),
            )?;
        }
        Ok(ovs)
    }

    fn path(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }

    /// `env OVS_*DIR=DIR argv...`: nothing of this instance goes to the
    /// system's directories.
    fn with_env(&self, argv: &[&str]) -> Vec<String> {
        let d = self.dir.display();
        let mut v: Vec<String> = vec!["env".into()];
        for var in ["OVS_RUNDIR", "OVS_DBDIR", "OVS_LOGDIR", "OVS_SYSCONFDIR"] {
            v.push(format!("{var}={d}"));
        }
        v.extend(argv.iter().map(|s| s.to_string()));
        v
    }

    /// `ovs-vsctl ARGS...` against this instance's database.
    pub fn vsctl(&self, args: &[&str]) -> Result<String, Error> {
        let db = format!("--db=unix:{}", self.path("db.sock"));
        let mut argv = vec!["ovs-vsctl", &db, VSCTL_TIMEOUT];
        argv.extend_from_slice(args);
        self.sh
            .ok(&self.with_env(&argv), STEP)
            .map_err(|e| self.with_log(e))
    }

    /// `ovs-appctl ARGS...` against this instance's `ovs-vswitchd`.
    pub fn appctl(&self, args: &[&str]) -> Result<String, Error> {
        let target = format!("--target={}", self.path("ovs-vswitchd.ctl"));
        let mut argv = vec!["ovs-appctl", &target];
        argv.extend_from_slice(args);
        self.sh
            .ok(&self.with_env(&argv), STEP)
            .map_err(|e| self.with_log(e))
    }

    fn with_log(&self, e: Error) -> Error {
        match (&e, &self.vswitchd) {
            (Error::Failed { .. }, Some(d)) => Error::Setup(format!(
                "{e}\n{} log (tail):\n{}",
                self.label,
                d.log_tail(20)
            )),
            _ => e,
        }
    }

    /// `ovs-vswitchd`, for CPU sampling.
    pub fn watched(&self) -> Option<Watched> {
        Some(Watched {
            label: self.label.clone(),
            pid: self.vswitchd.as_ref()?.pid()?,
        })
    }

    /// Stops `ovs-vswitchd`, then `ovsdb-server`, and removes the
    /// directory. A second call does nothing.
    pub fn stop(&mut self) -> Vec<Error> {
        if std::mem::replace(&mut self.stopped, true) {
            return Vec::new();
        }
        for d in [self.vswitchd.take(), self.ovsdb.take()]
            .iter_mut()
            .flatten()
        {
            d.stop(Duration::from_secs(10));
        }
        match std::fs::remove_dir_all(&self.dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => vec![Error::Io {
                context: format!("removing {}", self.dir.display()),
                source: e,
            }],
            _ => Vec::new(),
        }
    }
}

impl Drop for Ovs {
    fn drop(&mut self) {
        report_cleanup(self.stop());
    }
}

/// Waits until `daemon` accepts connections on the Unix socket `path`.
fn wait_socket(daemon: &mut Background, path: &Path) -> Result<(), Error> {
    let deadline = Instant::now() + START;
    loop {
        if UnixStream::connect(path).is_ok() {
            return Ok(());
        }
        if let Some(status) = daemon.exited() {
            return Err(Error::Setup(format!(
                "`{}` exited at start ({status}):\n{}",
                daemon.argv(),
                daemon.log_tail(20)
            )));
        }
        if interrupted() {
            return Err(Error::Interrupted);
        }
        if Instant::now() >= deadline {
            return Err(Error::Setup(format!(
                "`{}` did not open {} within {START:?}:\n{}",
                daemon.argv(),
                path.display(),
                daemon.log_tail(20)
            )));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Adds a `type=tap` port `port` to `bridge` (a TAP device `ovs-vswitchd`
/// makes in its own namespace) and moves the device into `container`,
/// with `ip`/`prefix` and `mtu`, up.
fn tap_port_into(
    sh: &Shell,
    ovs: &Ovs,
    (host, bridge, port): (&Netns, &str, &str),
    container: &Netns,
    (ip, prefix, mtu): (Ipv4Addr, u8, u32),
) -> Result<(), Error> {
    ovs.vsctl(&[
        "add-port",
        bridge,
        port,
        "--",
        "set",
        "Interface",
        port,
        "type=tap",
    ])?;
    let c = container.name();
    sh.ok(
        &["ip", "-n", host.name(), "link", "set", port, "netns", c],
        STEP,
    )?;
    sh.ok(
        &[
            "ip",
            "-n",
            c,
            "addr",
            "add",
            &format!("{ip}/{prefix}"),
            "dev",
            port,
        ],
        STEP,
    )?;
    sh.ok(
        &[
            "ip",
            "-n",
            c,
            "link",
            "set",
            port,
            "mtu",
            &mtu.to_string(),
            "up",
        ],
        STEP,
    )?;
    Ok(())
}

/// Open vSwitch's userspace datapath between two containers on one host.
#[derive(Debug)]
pub struct OvsBridge {
    /// `other_config:userspace-tso-enable=true`.
    pub tso: bool,
}

#[derive(Debug)]
struct OvsBridgeDeployment {
    ep: Endpoints,
    // Dropped in this order: OVS (its TAPs go with it), then namespaces.
    ovs: Ovs,
    a: Netns,
    b: Netns,
    host: Netns,
}

impl Scenario for OvsBridge {
    fn key(&self) -> &'static str {
        if self.tso {
            "ovs-netdev-tso"
        } else {
            "ovs-netdev"
        }
    }
    fn title(&self) -> &'static str {
        if self.tso {
            "OVS userspace, TSO"
        } else {
            "OVS userspace"
        }
    }
    fn group(&self) -> &'static str {
        "local"
    }
    fn is_baseline(&self) -> bool {
        true
    }
    fn description(&self) -> &'static str {
        if self.tso {
            "Open vSwitch 3.x userspace datapath (its own ovsdb-server and ovs-vswitchd in a namespace of their own, bridge with datapath_type=netdev), two type=tap ports moved into the containers (MTU 1500), other_config:userspace-tso-enable=true"
        } else {
            "Open vSwitch 3.x userspace datapath (its own ovsdb-server and ovs-vswitchd in a namespace of their own, bridge with datapath_type=netdev), two type=tap ports moved into the containers (MTU 1500), no offloads"
        }
    }

    fn setup(&self, env: &Env) -> Result<Box<dyn Deployment>, Error> {
        check_installed()?;
        let sh = &env.sh;
        let p = if self.tso { "t" } else { "s" };
        let host = Netns::create(sh, format!("nb{}{p}h", env.tag))?;
        let a = Netns::create(sh, format!("nb{}{p}a", env.tag))?;
        let b = Netns::create(sh, format!("nb{}{p}b", env.tag))?;
        let label = if self.tso { "ovs-tso" } else { "ovs" };
        let ovs = Ovs::start(env, host.name(), label, self.tso)?;
        ovs.vsctl(&[
            "add-br",
            "br0",
            "--",
            "set",
            "bridge",
            "br0",
            "datapath_type=netdev",
        ])?;
        for (c, port, ip) in [(&a, "tapa", A_IP), (&b, "tapb", B_IP)] {
            tap_port_into(sh, &ovs, (&host, "br0", port), c, (ip, PREFIX_LEN, MTU))?;
        }
        let mut ep = Endpoints::direct(a.name().to_string(), b.name().to_string(), B_IP, MTU);
        ep.watched.extend(ovs.watched());
        Ok(Box::new(OvsBridgeDeployment {
            ep,
            ovs,
            a,
            b,
            host,
        }))
    }
}

impl Deployment for OvsBridgeDeployment {
    fn endpoints(&self) -> &Endpoints {
        &self.ep
    }

    fn teardown(mut self: Box<Self>) -> Vec<Error> {
        let mut errors = self.ovs.stop();
        errors.extend(
            [self.a.delete(), self.b.delete(), self.host.delete()]
                .into_iter()
                .filter_map(Result::err),
        );
        errors
    }
}

/// Open vSwitch's userspace datapath with userspace VXLAN tunnelling
/// between two hosts.
#[derive(Debug)]
pub struct OvsVxlan;

#[derive(Debug)]
struct OvsVxlanDeployment {
    ep: Endpoints,
    // Dropped in this order: both OVS, containers, hosts, underlay.
    ovs: Vec<Ovs>,
    containers: Vec<Netns>,
    hosts: Vec<Netns>,
    underlay: Option<Underlay>,
}

impl Scenario for OvsVxlan {
    fn key(&self) -> &'static str {
        "ovs-netdev-vxlan"
    }
    fn title(&self) -> &'static str {
        "OVS userspace vxlan"
    }
    fn group(&self) -> &'static str {
        "overlay"
    }
    fn is_baseline(&self) -> bool {
        true
    }
    fn description(&self) -> &'static str {
        "the same underlay; per host a private Open vSwitch (userspace datapath): br-int with a vxlan port (VNI 4248, UDP 4789) and the container's type=tap port (MTU 1450), br-phy holding the underlay veth with the host's address (userspace tunnelling: ovs/route/add, tnl/arp/set); userspace TSO off (OVS 3.1 drops offloaded packets bound for a tunnel)"
    }

    fn setup(&self, env: &Env) -> Result<Box<dyn Deployment>, Error> {
        check_installed()?;
        let sh = &env.sh;
        let mut d = OvsVxlanDeployment {
            // The containers' names once they are made.
            ep: Endpoints::direct(String::new(), String::new(), OVERLAY_B_IP, OVERLAY_MTU),
            ovs: Vec::new(),
            containers: Vec::new(),
            hosts: Vec::new(),
            underlay: None,
        };
        // From here on, dropping `d` undoes whatever was done.
        let underlay = d
            .underlay
            .insert(Underlay::create(sh, format!("nb{}wu", env.tag))?);
        for i in 0..HOST_IPS.len() {
            let n = i + 1;
            let host = Netns::create(sh, format!("nb{}wh{n}", env.tag))?;
            // No address on the veth: OVS owns the port, the host's
            // address goes on br-phy.
            underlay.plug(sh, &host, &format!("p{n}"), None)?;
            d.hosts.push(host);
            d.containers.push(Netns::create(
                sh,
                format!("nb{}w{}", env.tag, ["a", "b"][i]),
            )?);
            let ovs = Ovs::start(env, d.hosts[i].name(), &format!("ovs-h{n}"), false)?;
            d.ovs.push(ovs);
        }
        for i in 0..2 {
            let (ovs, host, container) = (&d.ovs[i], &d.hosts[i], &d.containers[i]);
            let (local, remote) = (HOST_IPS[i], HOST_IPS[1 - i]);
            let h = host.name();
            ovs.vsctl(&[
                "add-br",
                "br-phy",
                "--",
                "set",
                "bridge",
                "br-phy",
                "datapath_type=netdev",
                "fail-mode=standalone",
                "--",
                "add-port",
                "br-phy",
                "ul0",
            ])?;
            sh.ok(
                &[
                    "ip",
                    "-n",
                    h,
                    "addr",
                    "add",
                    &format!("{local}/24"),
                    "dev",
                    "br-phy",
                ],
                STEP,
            )?;
            sh.ok(&["ip", "-n", h, "link", "set", "br-phy", "up"], STEP)?;
            ovs.vsctl(&[
                "add-br",
                "br-int",
                "--",
                "set",
                "bridge",
                "br-int",
                "datapath_type=netdev",
                "--",
                "add-port",
                "br-int",
                "vxlan0",
                "--",
                "set",
                "Interface",
                "vxlan0",
                "type=vxlan",
                &format!("options:remote_ip={remote}"),
                &format!("options:key={VNI}"),
                &format!("options:dst_port={VXLAN_PORT}"),
            ])?;
            let ip = [OVERLAY_A_IP, OVERLAY_B_IP][i];
            let port = ["tapa", "tapb"][i];
            tap_port_into(
                sh,
                ovs,
                (host, "br-int", port),
                container,
                (ip, OVERLAY_PREFIX_LEN, OVERLAY_MTU),
            )?;
            // The outer header's route, which OVS may also have learnt
            // from the namespace's table: adding it again is refused.
            let route = format!("{local}/24");
            if !ovs.appctl(&["ovs/route/show"])?.contains(&route) {
                ovs.appctl(&["ovs/route/add", &route, "br-phy"])?;
            }
        }
        // The other host's br-phy MAC for the outer Ethernet header.
        for i in 0..2 {
            let mac = link_mac(sh, d.hosts[1 - i].name(), "br-phy")?;
            d.ovs[i].appctl(&["tnl/arp/set", "br-phy", &HOST_IPS[1 - i].to_string(), &mac])?;
        }
        d.ep.a_ns = d.containers[0].name().to_string();
        d.ep.b_ns = d.containers[1].name().to_string();
        d.ep.watched = d.ovs.iter().filter_map(Ovs::watched).collect();
        Ok(Box::new(d))
    }
}

/// The MAC address of `dev` in `ns`.
fn link_mac(sh: &Shell, ns: &str, dev: &str) -> Result<String, Error> {
    let out = sh.ok(&["ip", "-n", ns, "-o", "link", "show", "dev", dev], STEP)?;
    parse_link_mac(&out).ok_or_else(|| Error::Parse {
        tool: "ip",
        what: format!("no link/ether in `ip -o link show dev {dev}`: {out}"),
    })
}

/// The address after `link/ether` in `ip -o link` output.
fn parse_link_mac(text: &str) -> Option<String> {
    let mut words = text.split_whitespace();
    words.find(|w| *w == "link/ether")?;
    let mac = words.next()?;
    (mac.len() == 17 && mac.split(':').all(|b| u8::from_str_radix(b, 16).is_ok()))
        .then(|| mac.to_string())
}

impl OvsVxlanDeployment {
    fn teardown_all(&mut self) -> Vec<Error> {
        let mut errors: Vec<Error> = self.ovs.iter_mut().flat_map(Ovs::stop).collect();
        self.ovs.clear();
        for ns in self.containers.iter_mut().chain(self.hosts.iter_mut()) {
            if let Err(e) = ns.delete() {
                errors.push(e);
            }
        }
        if let Some(mut u) = self.underlay.take() {
            errors.extend(u.delete().err());
        }
        errors
    }
}

impl Deployment for OvsVxlanDeployment {
    fn endpoints(&self) -> &Endpoints {
        &self.ep
    }

    fn teardown(mut self: Box<Self>) -> Vec<Error> {
        self.teardown_all()
    }
}

impl Drop for OvsVxlanDeployment {
    fn drop(&mut self) {
        report_cleanup(self.teardown_all());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_from_ip_link() {
        let line = "7: br-phy: <BROADCAST,MULTICAST,PROMISC,UP,LOWER_UP> mtu 1500 qdisc pfifo_fast state UNKNOWN mode DEFAULT group default qlen 1000\\    link/ether e6:b4:11:86:d2:44 brd ff:ff:ff:ff:ff:ff";
        assert_eq!(parse_link_mac(line).as_deref(), Some("e6:b4:11:86:d2:44"));
        assert_eq!(
            parse_link_mac("1: lo: <LOOPBACK> link/loopback 00:00:00:00:00:00"),
            None
        );
        assert_eq!(parse_link_mac("link/ether zz:00"), None);
    }

    #[test]
    fn scenarios_are_baselines_with_distinct_keys() {
        let s: [&dyn Scenario; 3] = [
            &OvsBridge { tso: false },
            &OvsBridge { tso: true },
            &OvsVxlan,
        ];
        assert!(s.iter().all(|s| s.is_baseline()));
        assert_ne!(s[0].key(), s[1].key());
        assert_eq!(s[2].group(), "overlay");
    }
}
