//! `vswitch doctor`: the troubleshooting checklist, run for real.
//!
//! Each step looks at the daemon's own tables and then tries the thing
//! itself from inside the container's namespace ([`crate::probe`]): its
//! interface as the kernel has it, an echo to its gateway, a DNS query to
//! the network's resolver, an echo and a full-sized DF echo to the target,
//! a connection to the target's port (or, for `host:PORT`, to the
//! published port from the host). What the switch dropped on the ports
//! involved while the checks ran is read from the datapath's counters at
//! the start and at the end, by reason. Each step says what it saw and,
//! when it failed, what would fix it.
//!
//! The controller's lock is held to read the tables and counters, never
//! while a probe waits.

use std::collections::{BTreeSet, HashMap};
use std::time::Instant;

use overlay::tunnel::TunnelStats;
use switch::bridge::DropCounters;

use super::plane::ControlPlane;
use super::*;
use crate::api::{
    CheckStatus, DoctorCheck, DoctorReport, DoctorRequest, PortMapping, PortProto, DOCTOR_HOST,
};
use crate::daemon::state::ProcessState;
use crate::netns::IfaceState;
use crate::probe::{self, DnsOutcome, PingOutcome, PortOutcome};

/// How long an echo waits for its reply.
const PING_TIMEOUT: Duration = Duration::from_secs(1);
/// Echoes sent to a target before it is called unreachable (the first may
/// wait for ARP, or for a QUIC handshake on an encrypted overlay).
const REACH_TRIES: u32 = 3;
/// How long a DNS query waits (names that are not containers' go to the
/// host's upstream resolvers, which get 2 s each).
const DNS_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a TCP connect waits.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a UDP probe waits for an answer or a port unreachable.
const UDP_WAIT: Duration = Duration::from_secs(1);
/// How long a connection to a published port is held to see whether the
/// forwarder closes it for want of a listener in the container.
const HOLD: Duration = Duration::from_millis(300);

/// One endpoint of the container checked.
#[derive(Debug, Clone)]
struct Ep {
    network: String,
    id: NetworkId,
    overlay: bool,
    internal: bool,
    mtu: u32,
    /// Why the network's MTU is what it is.
    mtu_why: String,
    ifname: String,
    mac: MacAddr,
    ipv4: Option<Ipv4Net>,
    ipv6: Option<Ipv6Net>,
    gateway: Option<IpAddr>,
    port: PortId,
    ports: Vec<PortMapping>,
}

impl Ep {
    fn addrs(&self) -> Vec<IpNet> {
        self.ipv4
            .map(IpNet::V4)
            .into_iter()
            .chain(self.ipv6.map(IpNet::V6))
            .collect()
    }

    fn holds(&self, ip: IpAddr) -> bool {
        self.addrs().iter().any(|n| n.trunc().contains(&ip))
    }
}

/// Where the target was found.
#[derive(Debug, Clone)]
struct Place {
    network: String,
    /// Its address there (IPv4 first).
    addr: Option<IpAddr>,
    /// The host it is on: `None` for this one.
    host: Option<String>,
}

/// What the target is, as the tables know it.
#[derive(Debug, Clone, Default)]
struct Peer {
    to: String,
    /// A container (or alias) by this name or address, and where it is.
    places: Vec<Place>,
    /// The container it names, when one does.
    who: Option<String>,
    /// Its namespace and ports, when it is on this host.
    netns: Option<PathBuf>,
    /// Its ports here, with what to call them.
    ports: Vec<(PortId, String)>,
    /// An address in one of the container's subnets that nothing has.
    unknown_inside: Option<String>,
    /// The gateway's own address.
    gateway_of: Option<String>,
}

/// What the unlocked phase needs.
#[derive(Debug)]
struct Plan {
    container: String,
    netns: Option<PathBuf>,
    endpoints: Vec<Ep>,
    peer: Option<Peer>,
    /// Cluster members by name: their state.
    members: BTreeMap<String, String>,
    /// Every port watched for drops, with what to call it.
    watched: Vec<(PortId, String)>,
    /// The container's networks, whose NAT is watched.
    nets: Vec<(NetworkId, String)>,
    before: Counters,
}

/// The datapath's drop counters of the watched ports, and the tunnel's.
#[derive(Debug, Clone, Default)]
struct Counters {
    ports: HashMap<PortId, (DropCounters, u64)>,
    tunnel: TunnelStats,
    /// The NAT's refusals on each network watched, as [`NAT_DROPS`].
    nat: HashMap<NetworkId, [u64; NAT_DROPS.len()]>,
}

/// The NAT counters of frames it refused or lost, under the names
/// `vswitch stats` gives them.
const NAT_DROPS: [&str; 4] = [
    "EgressDenied",
    "FramesBadAddress",
    "FramesDropped",
    "TcpConnectFailed",
];

fn nat_drops(st: &switch::nat::NatStats) -> [u64; NAT_DROPS.len()] {
    [
        st.egress_denied,
        st.frames_bad_address,
        st.frames_dropped,
        st.tcp_connect_failed,
    ]
}

/// The report being written.
struct Checks(Vec<DoctorCheck>);

impl Checks {
    fn push(&mut self, check: &str, status: CheckStatus, evidence: String, fix: Option<String>) {
        self.0.push(DoctorCheck {
            check: check.into(),
            status,
            evidence,
            fix,
        });
    }

    fn ok(&mut self, check: &str, evidence: impl Into<String>) {
        self.push(check, CheckStatus::Ok, evidence.into(), None);
    }

    fn fail(&mut self, check: &str, evidence: impl Into<String>, fix: impl Into<String>) {
        self.push(check, CheckStatus::Fail, evidence.into(), Some(fix.into()));
    }

    fn skip(&mut self, check: &str, evidence: impl Into<String>) {
        self.push(check, CheckStatus::Skip, evidence.into(), None);
    }
}

impl ControlPlane {
    /// `POST /v1/doctor`.
    pub(super) fn doctor(&self, req: DoctorRequest) -> Result<DoctorReport, ApiError> {
        let mut checks = Checks(Vec::new());
        let plan = {
            let ctrl = self.lock()?;
            ctrl.doctor_daemon(&mut checks);
            match &req.container {
                Some(name) => ctrl.doctor_plan(name, &req, &mut checks),
                None => None,
            }
        };
        if let Some(plan) = plan {
            doctor_probe(&plan, &req, &mut checks);
            let after = self.lock()?.doctor_counters(&plan.watched, &plan.nets);
            drops(&plan, after, &mut checks);
        }
        let ok = !checks.0.iter().any(|c| c.status == CheckStatus::Fail);
        Ok(DoctorReport {
            container: req.container,
            target: req.target,
            port: req.port,
            proto: req.proto,
            checks: checks.0,
            ok,
        })
    }
}

impl Controller {
    /// The daemon, its datapath and its cluster.
    fn doctor_daemon(&self, checks: &mut Checks) {
        let running = self
            .containers
            .values()
            .filter(|c| {
                !matches!(
                    c.process.as_ref().map(|p| &p.state),
                    Some(ProcessState::Exited { .. })
                )
            })
            .count();
        checks.ok(
            "daemon",
            format!(
                "vswitchd {} (pid {}{}) answers on its socket; state in {}; {} networks, {} containers running",
                env!("CARGO_PKG_VERSION"),
                std::process::id(),
                if self.config.rootless { ", rootless" } else { "" },
                self.config.state_dir.display(),
                self.networks.len(),
                running
            ),
        );
        let start = Instant::now();
        match self.datapath.stats() {
            Ok(_) => checks.ok(
                "datapath",
                format!(
                    "{} worker(s) answered in {}",
                    self.config.workers,
                    millis(start.elapsed())
                ),
            ),
            Err(e) => checks.fail(
                "datapath",
                format!("the datapath workers did not answer: {e}"),
                "restart vswitchd: it restores every network and endpoint from its store",
            ),
        }
        if self.gossip.is_some() {
            match self.members() {
                Ok(members) => {
                    let down: Vec<String> = members
                        .iter()
                        .filter(|m| m.state != "alive")
                        .map(|m| format!("{} is {}", m.name, m.state))
                        .collect();
                    if down.is_empty() {
                        checks.ok(
                            "cluster",
                            format!(
                                "{} member(s) alive: {}",
                                members.len(),
                                joined(members.iter().map(|m| &m.name))
                            ),
                        );
                    } else {
                        checks.fail(
                            "cluster",
                            format!("{} (gossip has not heard from it)", down.join(", ")),
                            "start vswitchd on that host again, or let gossip (UDP, --bind) and the tunnel (UDP, --tunnel-port) through between the hosts; `vswitch ipam reclaim HOST` takes back the addresses of a host gone for good",
                        );
                    }
                }
                Err(e) => checks.fail("cluster", e.to_string(), "restart vswitchd"),
            }
        }
    }

    /// The container's checks that need only the tables; what the probes
    /// need. `None` when there is nothing to probe.
    fn doctor_plan(&self, name: &str, req: &DoctorRequest, checks: &mut Checks) -> Option<Plan> {
        let Some(c) = self.containers.get(name) else {
            checks.fail(
                "container",
                format!("there is no container `{name}` on this host"),
                "`vswitch ps -a` lists the containers; on a cluster, run doctor on the container's own host",
            );
            return None;
        };
        match c.process.as_ref().map(|p| &p.state) {
            Some(ProcessState::Exited { code, .. }) => {
                let code = code.map_or("an unknown code".to_string(), |c| format!("code {c}"));
                checks.fail(
                    "container",
                    format!("{name} exited with {code}; its endpoints were released"),
                    format!(
                        "`vswitch logs {name}` shows why; `vswitch rm {name}` and run it again"
                    ),
                );
                return None;
            }
            Some(ProcessState::Created) => {
                checks.fail(
                    "container",
                    format!("{name} is still being set up: its command has not started"),
                    "wait for `vswitch run` to start it, or `vswitch rm` it",
                );
                return None;
            }
            _ => {}
        }
        let endpoints = self.doctor_endpoints(name);
        if endpoints.is_empty() {
            checks.fail(
                "container",
                format!("{name} has no endpoint on a switched network (it is on `host` or `none`, or on none at all)"),
                format!("`vswitch network connect NETWORK {name}` attaches it"),
            );
            return None;
        }
        let on: Vec<String> = endpoints
            .iter()
            .map(|e| {
                let addrs: Vec<String> = e.addrs().iter().map(|a| a.addr().to_string()).collect();
                format!("{} ({} {})", e.network, e.ifname, addrs.join(" "))
            })
            .collect();
        let pid = match c.process.as_ref().map(|p| &p.state) {
            Some(ProcessState::Running { pid, .. }) => format!(", pid {}", pid.pid),
            _ => String::new(),
        };
        checks.ok(
            "container",
            format!("{name} is running{pid}, on {}", on.join(", ")),
        );

        let members: BTreeMap<String, String> = match self.members() {
            Ok(m) => m.into_iter().map(|m| (m.name, m.state)).collect(),
            Err(_) => BTreeMap::new(),
        };
        let peer = match &req.target {
            Some(t) if t != DOCTOR_HOST => Some(self.doctor_peer(&endpoints, t)),
            _ => None,
        };
        let mut watched: Vec<(PortId, String)> = endpoints
            .iter()
            .map(|e| (e.port, format!("{name} {}", e.ifname)))
            .collect();
        if let Some(p) = &peer {
            watched.extend(p.ports.iter().cloned());
        }
        watched.sort();
        watched.dedup_by_key(|w| w.0);
        let nets: Vec<(NetworkId, String)> = endpoints
            .iter()
            .map(|e| (e.id, e.network.clone()))
            .collect();
        let before = self.doctor_counters(&watched, &nets);
        Some(Plan {
            container: name.to_string(),
            netns: c.netns.clone(),
            endpoints,
            peer,
            members,
            watched,
            nets,
            before,
        })
    }

    fn doctor_endpoints(&self, name: &str) -> Vec<Ep> {
        let underlay = self
            .config
            .cluster
            .as_ref()
            .map(|cs| (overlay_nets::underlay_mtu(cs.advertise), cs.advertise));
        self.networks
            .values()
            .filter(|n| n.id.is_some())
            .filter_map(|n| {
                let e = n.endpoints.get(name)?;
                let overlay = n.record.driver == Driver::Overlay;
                let mtu_why = match (overlay, underlay) {
                    (true, Some((u, ip))) => format!(
                        "{}'s MTU of {}: the underlay's {u} at {ip} less {} bytes of encapsulation",
                        n.record.name,
                        n.record.mtu,
                        u.saturating_sub(n.record.mtu)
                    ),
                    _ => format!("{}'s MTU of {}", n.record.name, n.record.mtu),
                };
                Some(Ep {
                    network: n.record.name.clone(),
                    id: n.id?,
                    overlay,
                    internal: n.record.internal,
                    mtu: n.record.mtu,
                    mtu_why,
                    ifname: e.record.ifname.clone(),
                    mac: MacAddr(e.record.mac),
                    ipv4: e.record.ipv4,
                    ipv6: e.record.ipv6,
                    gateway: n
                        .gateway4()
                        .map(IpAddr::V4)
                        .or(n.gateway6().map(IpAddr::V6)),
                    port: e.port,
                    ports: e.ports.clone(),
                })
            })
            .collect()
    }

    /// Finds the target in every network's tables.
    fn doctor_peer(&self, endpoints: &[Ep], to: &str) -> Peer {
        let mut peer = Peer {
            to: to.to_string(),
            ..Peer::default()
        };
        let ip = to.parse::<IpAddr>().ok();
        for n in self.networks.values().filter(|n| n.id.is_some()) {
            for e in n.endpoints.values() {
                let addrs = e.record.addrs();
                let named = match ip {
                    Some(ip) => addrs.contains(&ip),
                    None => e.record.container == to || e.record.aliases.iter().any(|a| a == to),
                };
                if named {
                    peer.who.get_or_insert_with(|| e.record.container.clone());
                    peer.places.push(Place {
                        network: n.record.name.clone(),
                        addr: ip.or(addrs.first().copied()),
                        host: None,
                    });
                    peer.ports.push((
                        e.port,
                        format!("{} {}", e.record.container, e.record.ifname),
                    ));
                    if peer.netns.is_none() {
                        peer.netns = self
                            .containers
                            .get(&e.record.container)
                            .and_then(|c| c.netns.clone());
                    }
                }
            }
            for ((host, _), r) in &n.remotes {
                let addrs = super::overlay_nets::ips_of(r);
                let named = match ip {
                    Some(ip) => addrs.contains(&ip),
                    None => r.container == to || r.aliases.iter().any(|a| a == to),
                };
                if named {
                    peer.who.get_or_insert_with(|| r.container.clone());
                    peer.places.push(Place {
                        network: n.record.name.clone(),
                        addr: ip.or(addrs.first().copied()),
                        host: Some(host.clone()),
                    });
                }
            }
            if let Some(ip) = ip {
                if n.gateway4().map(IpAddr::V4) == Some(ip)
                    || n.gateway6().map(IpAddr::V6) == Some(ip)
                {
                    peer.gateway_of = Some(n.record.name.clone());
                }
            }
        }
        if let (Some(ip), true, None) = (ip, peer.places.is_empty(), &peer.gateway_of) {
            if let Some(e) = endpoints.iter().find(|e| e.holds(ip)) {
                peer.unknown_inside = Some(e.network.clone());
            }
        }
        peer
    }

    /// The drop counters of `watched` and of the tunnel now.
    fn doctor_counters(
        &self,
        watched: &[(PortId, String)],
        nets: &[(NetworkId, String)],
    ) -> Counters {
        let Ok(dp) = self.datapath.stats() else {
            return Counters::default();
        };
        Counters {
            ports: watched
                .iter()
                .map(|(p, _)| {
                    let drops = dp.port_drops.get(p).copied().unwrap_or_default();
                    let tx = dp.ports.get(p).map_or(0, |c| c.tx_drops);
                    (*p, (drops, tx))
                })
                .collect(),
            tunnel: dp.tunnel_rx,
            nat: nets
                .iter()
                .filter_map(|(id, _)| Some((*id, nat_drops(dp.nat.get(id)?))))
                .collect(),
        }
    }
}

/// The probes, without the lock.
fn doctor_probe(plan: &Plan, req: &DoctorRequest, checks: &mut Checks) {
    let name = plan.container.as_str();
    let Some(ns) = plan.netns.as_deref() else {
        checks.skip(
            "interface",
            format!("vswitch was never told {name}'s namespace, so doctor cannot probe from inside it; the checks below use vswitch's records"),
        );
        no_namespace(plan, req, checks);
        return;
    };
    let mut live: Vec<Option<IfaceState>> = Vec::new();
    for e in &plan.endpoints {
        let state = interface(name, ns, e, checks);
        mtu(name, e, state.as_ref(), checks);
        live.push(state);
    }
    for (e, state) in plan.endpoints.iter().zip(&live) {
        gateway(ns, e, state.as_ref(), checks);
    }
    match (&req.target, &plan.peer) {
        (None, _) => {
            // The resolver answers the container's own name.
            if let Some(e) = plan.endpoints.iter().find(|e| e.gateway.is_some()) {
                let want: Vec<IpAddr> = e.addrs().iter().map(|a| a.addr()).collect();
                dns(ns, e, name, &want, checks);
            }
        }
        (Some(t), _) if t == DOCTOR_HOST => published(plan, req, checks),
        (Some(_), Some(peer)) => target(plan, ns, peer, &live, req, checks),
        (Some(_), None) => {}
    }
}

/// `interface`: the endpoint's interface as the kernel has it now,
/// against the endpoint's record.
fn interface(name: &str, ns: &Path, e: &Ep, checks: &mut Checks) -> Option<IfaceState> {
    let check = "interface";
    let state = match netns::iface_state(ns, &e.ifname) {
        Ok(Some(s)) => s,
        Ok(None) => {
            checks.fail(
                check,
                format!(
                    "{} is gone from {name}'s namespace (network {})",
                    e.ifname, e.network
                ),
                format!(
                    "`vswitch network disconnect {} {name}` and connect it again",
                    e.network
                ),
            );
            return None;
        }
        Err(err) => {
            checks.fail(
                check,
                format!("reading {}: {err}", e.ifname),
                "restart vswitchd",
            );
            return None;
        }
    };
    let mut wrong = Vec::new();
    let mut fixes = Vec::new();
    if !state.up {
        wrong.push(format!("{} is down", e.ifname));
        fixes.push(format!("`ip link set {} up`", e.ifname));
    }
    if let Some(mac) = state.mac.filter(|m| *m != e.mac) {
        wrong.push(format!(
            "its MAC is {mac}, not the endpoint's {}: port security drops every frame it sends",
            e.mac
        ));
        fixes.push(format!("`ip link set {} address {}`", e.ifname, e.mac));
    }
    let want = e.addrs();
    for a in &want {
        if !state.addrs.contains(a) {
            wrong.push(format!("it lacks its address {a}"));
            fixes.push(format!("`ip addr add {a} dev {}`", e.ifname));
        }
    }
    for a in state.addrs.iter().filter(|a| !want.contains(a)) {
        wrong.push(format!(
            "it has {a}, which is not its endpoint's: port security drops what it sends from it"
        ));
        fixes.push(format!("`ip addr del {a} dev {}`", e.ifname));
    }
    let default_via = state
        .routes
        .iter()
        .filter(|(dst, _)| dst.prefix_len() == 0)
        .find_map(|(_, gw)| *gw);
    let addrs: Vec<String> = state.addrs.iter().map(|a| a.to_string()).collect();
    let seen = format!(
        "{} in {name}: {}, MAC {}, {}, MTU {}{}",
        e.ifname,
        if state.up { "up" } else { "down" },
        state.mac.map_or("none".into(), |m| m.to_string()),
        if addrs.is_empty() {
            "no address".into()
        } else {
            addrs.join(" ")
        },
        state.mtu,
        default_via.map_or(String::new(), |g| format!(", default via {g}")),
    );
    if wrong.is_empty() {
        checks.ok(check, seen);
    } else {
        checks.fail(
            check,
            format!("{seen}: {}", wrong.join("; ")),
            format!("in the container: {}", fixes.join(", ")),
        );
    }
    Some(state)
}

/// `mtu`: the interface's MTU against the network's.
fn mtu(name: &str, e: &Ep, state: Option<&IfaceState>, checks: &mut Checks) {
    let Some(s) = state else { return };
    if s.mtu > e.mtu {
        let fate = if e.overlay {
            "frames above it do not fit one tunnel datagram and are fragmented in the underlay or lost"
        } else {
            "frames above it are larger than the other containers take"
        };
        checks.fail(
            "mtu",
            format!(
                "{}'s MTU in {name} is {}, above {}: {fate}",
                e.ifname, s.mtu, e.mtu_why
            ),
            format!("in the container: `ip link set {} mtu {}`", e.ifname, e.mtu),
        );
    } else {
        checks.ok(
            "mtu",
            format!("{}'s MTU {} fits {}", e.ifname, s.mtu, e.mtu_why),
        );
    }
}

/// `gateway`: an echo to the network's gateway.
fn gateway(ns: &Path, e: &Ep, state: Option<&IfaceState>, checks: &mut Checks) {
    let Some(gw) = e.gateway else { return };
    if state.is_some_and(|s| !s.up) {
        checks.skip("gateway", format!("{} is down", e.ifname));
        return;
    }
    match probe::ping(ns, gw, 84, false, PING_TIMEOUT) {
        Ok(PingOutcome::Reply(t)) => checks.ok(
            "gateway",
            format!("{}'s gateway {gw} answered an echo in {}", e.network, millis(t)),
        ),
        Ok(other) => checks.fail(
            "gateway",
            format!("{}'s gateway {gw} did not answer an echo: {}", e.network, ping_words(&other)),
            "look at the interface and drops checks: the switch answers every gateway echo it is given",
        ),
        Err(err) => checks.fail("gateway", format!("probing {gw}: {err}"), "restart vswitchd"),
    }
}

/// `dns`: the network's resolver asked for `who` from the container;
/// `want` are the addresses the tables have for it (empty: not a
/// container's name).
fn dns(ns: &Path, e: &Ep, who: &str, want: &[IpAddr], checks: &mut Checks) {
    let Some(server) = e.gateway else { return };
    let v6 = want.first().is_some_and(|a| a.is_ipv6()) && !want.iter().any(|a| a.is_ipv4());
    match probe::dns_lookup(ns, server, who, v6, DNS_TIMEOUT) {
        Ok(DnsOutcome::Answer(got, t)) => {
            let missing: Vec<String> = want
                .iter()
                .filter(|w| w.is_ipv6() == v6 && !got.contains(w))
                .map(|w| w.to_string())
                .collect();
            let got_s: Vec<String> = got.iter().map(|a| a.to_string()).collect();
            if got.is_empty() {
                checks.fail(
                    "dns",
                    format!("{server} (network {}) has no {} record for {who}", e.network, if v6 { "AAAA" } else { "A" }),
                    "a container's name resolves on the networks it is on: connect it to this one",
                );
            } else if missing.is_empty() {
                checks.ok(
                    "dns",
                    format!(
                        "{who} resolves to {} through {server} (network {}) in {}",
                        got_s.join(" "),
                        e.network,
                        millis(t)
                    ),
                );
            } else {
                checks.fail(
                    "dns",
                    format!(
                        "{server} answered {who} with {}, without {}",
                        got_s.join(" "),
                        missing.join(" ")
                    ),
                    "restart vswitchd: it publishes every network's records again",
                );
            }
        }
        Ok(DnsOutcome::Error(code)) => checks.fail(
            "dns",
            format!("{server} (network {}) answered {code} for {who}", e.network),
            if want.is_empty() {
                "names resolve only on the networks their container is on; check the name, or connect both containers to one network"
            } else {
                "restart vswitchd: it publishes every network's records again"
            },
        ),
        Ok(DnsOutcome::Timeout) => checks.fail(
            "dns",
            format!("{server} (network {}) did not answer a query for {who} within {} s", e.network, DNS_TIMEOUT.as_secs()),
            "names of containers are answered at once: look at the gateway and drops checks; other names wait on the host's upstream resolvers",
        ),
        Ok(DnsOutcome::SendError(why)) => checks.fail(
            "dns",
            format!("asking {server} for {who}: {why}"),
            "look at the interface check: the container needs its address and route",
        ),
        Err(err) => checks.fail("dns", format!("probing {server}: {err}"), "restart vswitchd"),
    }
}

/// The checks of a target container, address or name.
fn target(
    plan: &Plan,
    ns: &Path,
    peer: &Peer,
    live: &[Option<IfaceState>],
    req: &DoctorRequest,
    checks: &mut Checks,
) {
    let name = plan.container.as_str();
    let mine: BTreeSet<&str> = plan.endpoints.iter().map(|e| e.network.as_str()).collect();
    let shared: Vec<&Place> = peer
        .places
        .iter()
        .filter(|p| mine.contains(p.network.as_str()))
        .collect();
    let ip = peer.to.parse::<IpAddr>().ok();
    // Which endpoint the probes leave by, and to which address.
    let (via, addr): (Option<&Ep>, Option<IpAddr>) = if let Some(p) = shared.first() {
        (
            plan.endpoints.iter().find(|e| e.network == p.network),
            p.addr,
        )
    } else if !peer.places.is_empty() {
        // On networks the container is not on.
        let theirs: BTreeSet<String> = peer
            .places
            .iter()
            .map(|p| match &p.host {
                Some(h) => format!("{} (on host {h})", p.network),
                None => p.network.clone(),
            })
            .collect();
        let who = peer.who.as_deref().unwrap_or(&peer.to);
        let first = &peer.places[0].network;
        checks.fail(
            "network",
            format!(
                "{name} is on {}; {who} is on {}: they share no network, and networks are isolated",
                joined(&mine),
                joined(theirs)
            ),
            format!("`vswitch network connect {first} {name}`"),
        );
        return;
    } else if let Some(net) = &peer.gateway_of {
        match plan.endpoints.iter().find(|e| &e.network == net) {
            Some(e) => (Some(e), ip),
            None => {
                checks.fail(
                    "network",
                    format!(
                        "{} is the gateway of {net}, which {name} is not on",
                        peer.to
                    ),
                    format!("`vswitch network connect {net} {name}`"),
                );
                return;
            }
        }
    } else if let Some(net) = &peer.unknown_inside {
        checks.fail(
            "network",
            format!(
                "no container has {} on {net} (here or, on an overlay, on any member alive)",
                peer.to
            ),
            "check the address: `vswitch network inspect` lists each network's containers",
        );
        return;
    } else {
        (None, ip)
    };
    let down_members: Vec<String> = plan
        .members
        .iter()
        .filter(|(_, s)| s.as_str() != "alive")
        .map(|(m, s)| format!("{m} ({s})"))
        .collect();

    // Names: what the resolver answers from the container.
    if ip.is_none() {
        let want: Vec<IpAddr> = shared.iter().filter_map(|p| p.addr).collect();
        let e = via.or(plan.endpoints.iter().find(|e| e.gateway.is_some()));
        if let Some(e) = e {
            dns(ns, e, &peer.to, &want, checks);
        }
        if peer.places.is_empty() {
            let also = if down_members.is_empty() {
                String::new()
            } else {
                format!(
                    "; members not alive, whose containers are gone from the directory: {}",
                    down_members.join(", ")
                )
            };
            checks.push(
                "network",
                if also.is_empty() { CheckStatus::Skip } else { CheckStatus::Fail },
                format!("{} is no container or alias on {name}'s networks{also}", peer.to),
                (!also.is_empty()).then(|| "start vswitchd on that host again, or let gossip and the tunnel through between the hosts".to_string()),
            );
        }
    }
    if let Some(p) = shared.first() {
        let where_ = match &p.host {
            Some(h) => format!("on host {h}"),
            None => "on this host".into(),
        };
        checks.ok(
            "network",
            format!(
                "{name} and {} share {}; {} is {where_}",
                peer.who.as_deref().unwrap_or(&peer.to),
                joined(shared.iter().map(|p| &p.network).collect::<BTreeSet<_>>()),
                peer.who.as_deref().unwrap_or(&peer.to),
            ),
        );
        if let Some(h) = &p.host {
            match plan.members.get(h).map(String::as_str) {
                Some("alive") => checks.ok("host", format!("{h} is alive in the cluster's membership")),
                Some(state) => checks.fail(
                    "host",
                    format!("{h}, where {} runs, is {state} in the cluster's membership", peer.who.as_deref().unwrap_or(&peer.to)),
                    format!("start vswitchd on {h} again, or let gossip (UDP, --bind) and the tunnel (UDP, --tunnel-port) through between the hosts"),
                ),
                None => checks.fail(
                    "host",
                    format!("{h} is not a member of the cluster any more"),
                    format!("start vswitchd on {h} and `vswitch join-cluster` it"),
                ),
            }
        }
    }
    // An address to probe: the target's, or the name's answer.
    let addr = match addr {
        Some(a) => a,
        None => match ip {
            Some(a) => a,
            None => {
                checks.skip(
                    "reach",
                    format!("{} did not resolve to an address here", peer.to),
                );
                return;
            }
        },
    };
    if via.is_none() && plan.endpoints.iter().all(|e| e.internal) {
        checks.fail(
            "network",
            format!(
                "{addr} is outside {name}'s networks, and they are all --internal: nothing leaves them"
            ),
            format!("connect {name} to a network that is not internal"),
        );
        // The probes still run: what they meet is evidence too.
    }
    // The interface the route takes is checked already; probe.
    let mut reached = false;
    let mut last = PingOutcome::Timeout;
    for _ in 0..REACH_TRIES {
        match probe::ping(ns, addr, 84, false, PING_TIMEOUT) {
            Ok(PingOutcome::Reply(t)) => {
                checks.ok(
                    "reach",
                    format!("{addr} answered an echo from {name} in {}", millis(t)),
                );
                reached = true;
                break;
            }
            Ok(o @ (PingOutcome::SendError(_) | PingOutcome::Unreachable(_))) => {
                last = o;
                break;
            }
            Ok(o) => last = o,
            Err(err) => {
                last = PingOutcome::SendError(err.to_string());
                break;
            }
        }
    }
    if !reached {
        let fix = match shared.first().and_then(|p| p.host.as_ref()) {
            Some(h) => format!("the tunnel to {h} carries nothing back: check that UDP reaches its tunnel port from here, and the drops below"),
            None if via.is_none() => "the gateway routes this address out through the host: check that the host reaches it".to_string(),
            None => "the drops below say whether the switch refused it; a firewall inside the target (iptables in its namespace) would drop it silently".to_string(),
        };
        checks.fail(
            "reach",
            format!(
                "{addr} did not answer {} echo(es) from {name}: {}",
                REACH_TRIES,
                ping_words(&last)
            ),
            fix,
        );
    }
    // A full-sized frame with DF, when small ones pass.
    if let (true, Some(e)) = (reached, via) {
        let idx = plan.endpoints.iter().position(|x| x.network == e.network);
        let iface_mtu = idx
            .and_then(|i| live.get(i))
            .and_then(|s| s.as_ref())
            .map(|s| s.mtu);
        let size = e.mtu as usize;
        match probe::ping(ns, addr, size, true, PING_TIMEOUT) {
            Ok(PingOutcome::Reply(t)) => checks.ok(
                "mtu",
                format!("a {size}-byte packet with DF set reached {addr} and came back in {}", millis(t)),
            ),
            Ok(other) => checks.fail(
                "mtu",
                format!(
                    "small echoes reach {addr}, a {size}-byte one with DF set did not: {}{}",
                    ping_words(&other),
                    iface_mtu.map_or(String::new(), |m| format!(" ({}'s MTU is {m})", e.ifname))
                ),
                if e.overlay {
                    "the underlay carries less than the overlay's MTU plus its encapsulation: create the overlay with a smaller --mtu, or raise the underlay's MTU"
                } else {
                    "a container on the path has a smaller MTU than the network's: set it to the network's"
                },
            ),
            Err(err) => checks.fail("mtu", format!("probing {addr}: {err}"), "restart vswitchd"),
        }
    }
    if let Some(port) = req.port {
        port_check(ns, peer, addr, port, req.proto.unwrap_or_default(), checks);
    }
}

/// `port`: a connection (TCP) or a datagram (UDP) to the target's port,
/// and what the target has listening when it is on this host.
fn port_check(
    ns: &Path,
    peer: &Peer,
    addr: IpAddr,
    port: u16,
    proto: PortProto,
    checks: &mut Checks,
) {
    let who = peer.who.as_deref().unwrap_or(&peer.to);
    let dst = SocketAddr::new(addr, port);
    let p = format!("{port}/{}", proto.as_str());
    let udp = proto == PortProto::Udp;
    let listening = peer.netns.as_deref().map(|tns| probe::sockets(tns, udp));
    let open_elsewhere = |l: &Option<Result<Vec<SocketAddr>, _>>| -> String {
        match l {
            Some(Ok(all)) => format!("; {}", listens_on(who, proto, all)),
            _ => String::new(),
        }
    };
    let outcome = if udp {
        probe::udp_probe(ns, dst, UDP_WAIT)
    } else {
        probe::tcp_connect(ns, dst, CONNECT_TIMEOUT)
    };
    let fix = format!("start the service in {who} on {p}, listening on 0.0.0.0 (or {addr}), not on 127.0.0.1 only");
    match outcome {
        Ok(PortOutcome::Open(t)) => checks.ok(
            "port",
            if udp {
                format!("{dst} answered a UDP datagram in {}", millis(t))
            } else {
                format!("a TCP connection to {dst} was accepted in {}", millis(t))
            },
        ),
        Ok(PortOutcome::Refused) => checks.fail(
            "port",
            format!(
                "{dst} {}: nothing listens on {p} in {who}{}",
                if udp { "answered port unreachable" } else { "refused the connection (a reset came back)" },
                open_elsewhere(&listening)
            ),
            fix,
        ),
        Ok(PortOutcome::NoAnswer) => match &listening {
            Some(Ok(all)) if all.iter().any(|a| a.port() == port) => checks.ok(
                "port",
                format!("{who} has a socket bound to {p} (it did not answer an empty datagram, as many services do not)"),
            ),
            Some(Ok(_)) => checks.fail(
                "port",
                format!("no socket is bound to {p} in {who}{}", open_elsewhere(&listening)),
                fix,
            ),
            _ => checks.skip(
                "port",
                format!("{dst} sent neither an answer nor a port unreachable within {} s: something may listen without answering", UDP_WAIT.as_secs()),
            ),
        },
        Ok(PortOutcome::Timeout) => checks.fail(
            "port",
            format!("a connection to {dst} had no answer within {} s{}", CONNECT_TIMEOUT.as_secs(), open_elsewhere(&listening)),
            "something on the path drops it silently: see the drops check, and a firewall inside the target's namespace",
        ),
        Ok(PortOutcome::Error(e)) => checks.fail("port", format!("connecting to {dst}: {e}"), "see the reach check"),
        Err(err) => checks.fail("port", format!("probing {dst}: {err}"), "restart vswitchd"),
    }
}

/// `host:PORT`: the port is published, something in the container
/// listens behind it, and a connection from the host gets through.
fn published(plan: &Plan, req: &DoctorRequest, checks: &mut Checks) {
    let name = plan.container.as_str();
    let (Some(port), proto) = (req.port, req.proto.unwrap_or_default()) else {
        return;
    };
    let p = format!("{port}/{}", proto.as_str());
    let all: Vec<(&Ep, &PortMapping)> = plan
        .endpoints
        .iter()
        .flat_map(|e| e.ports.iter().map(move |m| (e, m)))
        .filter(|(_, m)| m.proto == proto)
        .collect();
    let found = all
        .iter()
        .find(|(_, m)| m.host_port == port)
        .or_else(|| all.iter().find(|(_, m)| m.container_port == port));
    let Some((e, m)) = found.copied() else {
        let has: Vec<String> = all
            .iter()
            .map(|(_, m)| {
                format!(
                    "{}/{} -> {}",
                    m.container_port,
                    m.proto.as_str(),
                    m.host_port
                )
            })
            .collect();
        checks.fail(
            "published",
            format!(
                "{name} publishes no {p} on the host{}",
                if has.is_empty() { " (it publishes nothing)".to_string() } else { format!(" (it publishes {})", has.join(", ")) }
            ),
            format!("ports are published when a container is attached: `vswitch rm {name}`, then `vswitch run -p {port}:{port} ...` (or `network connect -p {port}:{port}`)"),
        );
        return;
    };
    let host_ip = m.host_ip.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    checks.ok(
        "published",
        format!(
            "{host_ip}:{}/{} forwards to {name}:{} on {}",
            m.host_port,
            proto.as_str(),
            m.container_port,
            e.network
        ),
    );
    let cport = format!("{}/{}", m.container_port, proto.as_str());
    let udp = proto == PortProto::Udp;
    let mut listens = None;
    if let Some(ns) = plan.netns.as_deref() {
        match probe::sockets(ns, udp) {
            Ok(all) => {
                let on: Vec<&SocketAddr> = all
                    .iter()
                    .filter(|a| a.port() == m.container_port)
                    .collect();
                let reachable = on.iter().any(|a| !a.ip().is_loopback());
                if reachable {
                    checks.ok("port", format!("{name} listens on {}", joined(&on)));
                } else {
                    let elsewhere = if on.is_empty() {
                        listens_on(name, proto, &all)
                    } else {
                        format!(
                            "{name} listens on {} only, which the gateway cannot reach",
                            joined(&on)
                        )
                    };
                    checks.fail(
                        "port",
                        format!("nothing in {name} takes {cport} from the network: {elsewhere}"),
                        format!("start the service in {name} on {cport}, listening on 0.0.0.0"),
                    );
                }
                listens = Some(reachable);
            }
            Err(err) => checks.fail(
                "port",
                format!("reading {name}'s sockets: {err}"),
                "restart vswitchd",
            ),
        }
    }
    if udp {
        checks.skip(
            "reach",
            "a UDP service need not answer a probe: doctor does not send one from the host",
        );
        return;
    }
    // From the host, as a client would: to loopback when the port is on
    // every address.
    let dst_ip = match host_ip {
        IpAddr::V4(a) if a.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(a) if a.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    let dst = SocketAddr::new(dst_ip, m.host_port);
    match probe::tcp_connect_and_hold(dst, CONNECT_TIMEOUT, HOLD) {
        PortOutcome::Open(t) => checks.ok(
            "reach",
            format!("a connection from the host to {dst} was accepted in {} and held", millis(t)),
        ),
        // Closed at once though the container listens: the service
        // itself closed it (it took the connection).
        PortOutcome::Refused if listens == Some(true) => checks.ok(
            "reach",
            format!("a connection from the host to {dst} got through, and the service in {name} closed it at once"),
        ),
        PortOutcome::Refused => checks.fail(
            "reach",
            format!(
                "a connection from the host to {dst} was {}",
                if listens == Some(false) { "closed: nothing in the container accepted it" } else { "refused or closed at once" }
            ),
            format!("start the service in {name} on {cport}"),
        ),
        PortOutcome::Timeout => checks.fail(
            "reach",
            format!("a connection from the host to {dst} had no answer within {} s", CONNECT_TIMEOUT.as_secs()),
            "vswitchd's listener does not answer: restart vswitchd",
        ),
        PortOutcome::Error(why) => checks.fail(
            "reach",
            format!("connecting from the host to {dst}: {why}"),
            "the daemon's namespace must reach that address (its loopback up)",
        ),
        // A TCP connect has no such outcome.
        PortOutcome::NoAnswer => {}
    }
}

/// Without the container's namespace: what the records say.
fn no_namespace(plan: &Plan, req: &DoctorRequest, checks: &mut Checks) {
    if let (Some(t), Some(peer)) = (&req.target, &plan.peer) {
        let mine: BTreeSet<&str> = plan.endpoints.iter().map(|e| e.network.as_str()).collect();
        let shared = peer
            .places
            .iter()
            .any(|p| mine.contains(p.network.as_str()));
        if !peer.places.is_empty() && !shared {
            checks.fail(
                "network",
                format!("{} and {t} share no network", plan.container),
                format!(
                    "`vswitch network connect {} {}`",
                    peer.places[0].network, plan.container
                ),
            );
        } else if shared {
            checks.ok(
                "network",
                format!("{} and {t} share a network", plan.container),
            );
        }
    }
}

/// `drops`: what the switch dropped on the watched ports, and what the
/// tunnel dropped, while the checks ran.
fn drops(plan: &Plan, after: Counters, checks: &mut Checks) {
    let mut seen = Vec::new();
    for (port, what) in &plan.watched {
        let (b, btx) = plan.before.ports.get(port).copied().unwrap_or_default();
        let (a, atx) = after.ports.get(port).copied().unwrap_or_default();
        for (reason, n) in a.iter() {
            let d = n.saturating_sub(b.get(reason));
            if d > 0 {
                seen.push((format!("{what}: {d} {reason}"), Some(reason)));
            }
        }
        if atx > btx {
            seen.push((
                format!("{what}: {} to it lost, its queue full", atx - btx),
                None,
            ));
        }
    }
    for (reason, n) in after.tunnel.iter_drops() {
        let d = n.saturating_sub(plan.before.tunnel.dropped(reason));
        if d > 0 {
            seen.push((format!("tunnel: {d} {}", reason.as_str()), None));
        }
    }
    for (id, net) in &plan.nets {
        let b = plan.before.nat.get(id).copied().unwrap_or_default();
        let a = after.nat.get(id).copied().unwrap_or_default();
        for (i, name) in NAT_DROPS.iter().enumerate() {
            let d = a[i].saturating_sub(b[i]);
            if d > 0 {
                seen.push((format!("{net}'s NAT: {d} {name}"), None));
            }
        }
    }
    if seen.is_empty() {
        checks.ok(
            "drops",
            format!(
                "none on {}, in the tunnel or at the networks' NAT while the checks ran",
                joined(plan.watched.iter().map(|(_, w)| w).collect::<BTreeSet<_>>())
            ),
        );
        return;
    }
    use switch::bridge::DropReason as R;
    let fix = match seen.iter().find_map(|(_, r)| *r) {
        Some(R::SpoofedMac) => "port security drops frames whose MAC is not the endpoint's: set the container's MAC back (see the interface check)",
        Some(R::SpoofedIp) => "port security drops packets from addresses that are not the endpoint's: remove the extra address (see the interface check)",
        Some(R::RogueRouter) => "port security drops router advertisements from containers: stop the router daemon in the container",
        Some(R::EtherType) => "containers may send only ARP, IPv4 and IPv6",
        _ if seen.iter().any(|(s, _)| s.ends_with(" EgressDenied")) => {
            "the network is --internal, so nothing leaves it: connect the container to one that is not"
        }
        _ => "`vswitch stats --json` counts every reason; `vswitch capture` shows the frames",
    };
    checks.fail(
        "drops",
        format!(
            "dropped while the checks ran: {}",
            seen.into_iter()
                .map(|(s, _)| s)
                .collect::<Vec<_>>()
                .join("; ")
        ),
        fix,
    );
}

/// `items` as a list, `a, b, c`.
fn joined<T: std::fmt::Display>(items: impl IntoIterator<Item = T>) -> String {
    items
        .into_iter()
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// What `who` listens on (its sockets of `proto`), in words.
fn listens_on(who: &str, proto: PortProto, all: &[SocketAddr]) -> String {
    if all.is_empty() {
        format!("nothing at all listens ({}) in {who}", proto.as_str())
    } else {
        format!("{who} listens on {}", joined(all))
    }
}

fn ping_words(o: &PingOutcome) -> String {
    match o {
        PingOutcome::Reply(t) => format!("answered in {}", millis(*t)),
        PingOutcome::TooBig(mtu) => format!("a link on the way takes at most {mtu} bytes"),
        PingOutcome::Unreachable(code) => format!("destination unreachable (ICMP code {code})"),
        PingOutcome::TimeExceeded => "its hop limit ran out on the way".into(),
        PingOutcome::Timeout => format!("no reply within {} s", PING_TIMEOUT.as_secs()),
        PingOutcome::SendError(why) => format!("not sent: {why}"),
    }
}

fn millis(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}
