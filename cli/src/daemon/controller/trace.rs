//! `vswitch trace`: where a frame from a container would go, and why,
//! without sending it.
//!
//! The control plane does what the container's own kernel does first: it
//! resolves a name through the embedded DNS zones of the container's
//! networks (the records the gateways answer from), reads the container's
//! interface (its MAC, addresses and routes as netlink has them now, so a
//! container that changed its MAC or address is traced with what it really
//! sends) and picks the route, the source address and the next hop. The
//! datapath then runs the synthetic frame through its own decisions
//! (`datapath/trace.rs`: `Bridge::decide`, `Nat::classify`,
//! `TunnelRules::encap`), and this module names what they found: ports
//! become containers, gateways and hosts. For a frame the NAT lets out, the
//! host's own route to the destination is asked the way the NAT's host
//! socket would be (a UDP socket connected, which sends nothing).

// A trace's early verdicts return through `Err`; it runs once per request,
// so their size does not matter.
#![allow(clippy::result_large_err)]

use std::net::UdpSocket;

use overlay::tunnel::Encap;
use switch::bridge::{Action, Decision, Lookup};
use switch::nat::{NatDecision, NatProto};
use switch::wire::Probe;

use super::plane::ControlPlane;
use super::*;
use crate::api::{TraceAction, TraceProto, TraceReport, TraceRequest, TraceStep, TraceVerdict};
use crate::daemon::datapath::{Hop, Neighbor, TraceProbe};

/// Source port of traced TCP and UDP probes (any would do: nothing is
/// sent).
const PROBE_PORT: u16 = 40000;

/// One endpoint of the traced container.
#[derive(Debug, Clone)]
pub(super) struct Attached {
    network: String,
    port: PortId,
    ifname: String,
    /// Its MAC and addresses: the endpoint's record, then the interface's
    /// own once read.
    mac: MacAddr,
    addrs: Vec<IpNet>,
    routes: Vec<(IpNet, Option<IpAddr>)>,
    up: bool,
}

impl ControlPlane {
    /// `POST /v1/trace`. The interfaces are read without the lock.
    pub(super) fn trace(&self, req: TraceRequest) -> Result<TraceReport, ApiError> {
        let (netns, mut attached) = self.lock()?.trace_plan(&req.from)?;
        let mut read = Vec::new();
        if let Some(ns) = &netns {
            for a in &mut attached {
                match netns::iface_state(ns, &a.ifname) {
                    Ok(Some(live)) => {
                        if let Some(mac) = live.mac {
                            a.mac = mac;
                        }
                        a.addrs = live.addrs;
                        a.routes = live.routes;
                        a.up = live.up;
                        read.push(a.ifname.clone());
                    }
                    Ok(None) => {
                        a.up = false;
                        a.addrs.clear();
                        a.routes.clear();
                    }
                    Err(e) => {
                        return Err(ApiError::internal(format!(
                            "reading {}'s interface {}: {e}",
                            req.from, a.ifname
                        )))
                    }
                }
            }
        }
        self.lock()?.trace_run(&req, &attached, netns.is_some())
    }
}

impl Controller {
    /// The container's namespace and its endpoints on switched networks.
    fn trace_plan(&self, name: &str) -> Result<(Option<PathBuf>, Vec<Attached>), ApiError> {
        let container = self.containers.get(name).ok_or_else(|| {
            ApiError::not_found(format!(
                "no container `{name}`; `vswitch ps` lists the containers"
            ))
        })?;
        let attached: Vec<Attached> = self
            .networks
            .values()
            .filter(|n| n.id.is_some())
            .filter_map(|n| {
                let e = n.endpoints.get(name)?;
                let mut addrs = Vec::new();
                let mut routes = Vec::new();
                if let Some(v4) = e.record.ipv4 {
                    addrs.push(IpNet::V4(v4));
                    routes.push((IpNet::V4(v4.trunc()), None));
                    if let (Some(gw), false) = (e.record.gateway4, n.record.internal) {
                        routes.push((IpNet::V4(Ipv4Net::default()), Some(IpAddr::V4(gw))));
                    }
                }
                if let Some(v6) = e.record.ipv6 {
                    addrs.push(IpNet::V6(v6));
                    routes.push((IpNet::V6(v6.trunc()), None));
                    if let (Some(gw), false) = (e.record.gateway6, n.record.internal) {
                        routes.push((IpNet::V6(Ipv6Net::default()), Some(IpAddr::V6(gw))));
                    }
                }
                Some(Attached {
                    network: n.record.name.clone(),
                    port: e.port,
                    ifname: e.record.ifname.clone(),
                    mac: MacAddr(e.record.mac),
                    addrs,
                    routes,
                    up: true,
                })
            })
            .collect();
        if attached.is_empty() {
            return Err(ApiError::bad(format!(
                "container `{name}` has no endpoint on a switched network here (it may be on `host` or `none`, or exited); `vswitch network connect NETWORK {name}` attaches it"
            )));
        }
        Ok((container.netns.clone(), attached))
    }

    fn trace_run(
        &self,
        req: &TraceRequest,
        attached: &[Attached],
        live: bool,
    ) -> Result<TraceReport, ApiError> {
        let mut t = Trace {
            steps: Vec::new(),
            report_to: req.to.clone(),
            error: None,
        };
        let verdict = self.trace_steps(req, attached, live, &mut t);
        if let Some(e) = t.error {
            return Err(e);
        }
        let (destination, verdict) = match verdict {
            Ok((dst, v)) => (Some(dst), v),
            Err(v) => (v.1, v.0),
        };
        Ok(TraceReport {
            from: req.from.clone(),
            to: t.report_to,
            destination,
            proto: req.proto,
            port: req.port,
            steps: t.steps,
            verdict,
        })
    }

    /// Every step; the verdict, with the destination once known.
    #[allow(clippy::type_complexity)]
    fn trace_steps(
        &self,
        req: &TraceRequest,
        attached: &[Attached],
        live: bool,
        t: &mut Trace,
    ) -> Result<(IpAddr, TraceVerdict), (TraceVerdict, Option<IpAddr>)> {
        // 1. The destination, resolved as the container's resolver would.
        let dst = match req.to.parse::<IpAddr>() {
            Ok(ip) => ip,
            Err(_) => self
                .trace_dns(&req.to, attached, t)
                .map_err(|v| (v, None))?,
        };
        let fail = |v: TraceVerdict| (v, Some(dst));
        // 2. The container's route.
        let source = if live {
            "its interfaces as the kernel has them"
        } else {
            "the endpoint records (its namespace is not vswitch's to read)"
        };
        let Some((a, route, gw)) = pick_route(attached, dst) else {
            let down: Vec<&str> = attached
                .iter()
                .filter(|a| !a.up)
                .map(|a| a.ifname.as_str())
                .collect();
            let why = if down.is_empty() {
                String::new()
            } else {
                format!(" ({} down)", down.join(", "))
            };
            t.fail(
                "route",
                format!("{} has no route to {dst} in {source}{why}", req.from),
            );
            return Err(fail(dropped("no_route")));
        };
        let next_hop = gw.unwrap_or(dst);
        let Some(src_ip) = source_address(a, next_hop) else {
            t.fail(
                "route",
                format!("{} has no address of {dst}'s family", a.ifname),
            );
            return Err(fail(dropped("no_route")));
        };
        let how = match gw {
            Some(g) => format!("via gateway {g}"),
            None => "on-link".to_string(),
        };
        t.ok(
            "route",
            format!(
                "{dst} is {how} through {} ({route}, network {}), from {src_ip} and MAC {}, read from {source}",
                a.ifname, a.network, a.mac
            ),
        );
        let net = &self.networks[&a.network];
        // 3. Isolation: whose address it is.
        self.trace_isolation(net, dst, &req.from, t);
        // 4. The datapath's decisions.
        let gateway_mac = net
            .record
            .subnets
            .iter()
            .any(|s| s.gateway == Some(next_hop))
            .then(|| gateway_mac(&net.record));
        let probe = match (req.proto, req.port) {
            (TraceProto::Tcp, Some(p)) => Probe::TcpSyn {
                src_port: PROBE_PORT,
                dst_port: p,
            },
            (TraceProto::Udp, Some(p)) => Probe::Udp {
                src_port: PROBE_PORT,
                dst_port: p,
            },
            _ => Probe::Echo { ident: 1, seq: 1 },
        };
        let result = self
            .datapath
            .trace(TraceProbe {
                port: a.port,
                src_mac: a.mac,
                src_ip,
                dst_ip: dst,
                next_hop,
                gateway_mac,
                probe,
            })
            .map_err(|e| {
                t.error = Some(ApiError::from(e));
                fail(dropped("internal"))
            })?;
        let names = self.port_names();
        // The neighbour request.
        let asked = format!("{} for {next_hop}", neighbor_word(next_hop));
        if let Some(d) = result.resolve {
            if let Action::Drop(reason) = d.action {
                t.fail(
                    "port-security",
                    format!(
                        "{asked} from MAC {} refused on {}: {} (the endpoint is {})",
                        a.mac,
                        a.ifname,
                        reason.as_str(),
                        self.endpoint_identity(a)
                    ),
                );
                return Err(fail(dropped(reason.as_str())));
            }
        }
        let dst_mac = match result.neighbor {
            Neighbor::Suppressed(mac) => {
                t.ok(
                    "neighbor",
                    format!(
                        "{asked} answered by the switch with {mac} ({})",
                        names.describe(net, names.port_of_mac(net, mac))
                    ),
                );
                mac
            }
            Neighbor::Gateway(mac) => {
                t.ok(
                    "neighbor",
                    format!(
                        "{asked} answered by the gateway of {} with {mac}",
                        a.network
                    ),
                );
                mac
            }
            Neighbor::Port(p, mac) => {
                t.ok(
                    "neighbor",
                    format!(
                        "{asked} answered by {} with {mac}",
                        names.describe(net, Some(p))
                    ),
                );
                mac
            }
            Neighbor::Unanswered => {
                t.fail(
                    "neighbor",
                    format!(
                        "{asked} goes unanswered: no endpoint of network {} has {next_hop}",
                        a.network
                    ),
                );
                return Err(fail(dropped("no_neighbor")));
            }
        };
        let Some(frame) = result.frame else {
            return Err(fail(dropped("internal")));
        };
        // The frame through the bridge.
        let what = match (req.proto, req.port) {
            (TraceProto::Icmp, _) => format!("ICMP echo {src_ip} -> {dst}"),
            (p, port) => format!(
                "{} {src_ip}:{PROBE_PORT} -> {dst}:{}",
                p.as_str().to_uppercase(),
                port.unwrap_or(0)
            ),
        };
        t.trace_bridge(&frame, &what, a, dst_mac, self, net, &names)
            .map_err(fail)?;
        // The policies, where they look at the frame.
        let mut hops = &result.hops;
        let mut hop_net = net;
        if let Some(p) = &result.policy {
            let routed = p
                .routed
                .and_then(|id| self.networks.values().find(|n| n.id == Some(id)));
            if let Some(denied) = &p.denied {
                let why = match (denied.as_str(), routed) {
                    ("default-deny", Some(to)) => format!(
                        "nothing crosses from {} to {} unless a policy allows it (`vswitch policy allow --from {} --to {}...`): default-deny",
                        net.record.name, to.record.name, net.record.name, to.record.name
                    ),
                    ("default-deny", None) => format!(
                        "{dst} is no endpoint a policy lets {} reach: default-deny",
                        net.record.name
                    ),
                    ("isolate", _) => format!(
                        "network {} is isolated (--opt isolate=true) and no policy allows this pair: isolate",
                        net.record.name
                    ),
                    (name, _) => format!("policy {name} denies it"),
                };
                t.fail("policy", why);
                return Ok((
                    dst,
                    TraceVerdict {
                        network: Some(net.record.name.clone()),
                        policy: Some(denied.clone()),
                        ..dropped("policy_denied")
                    },
                ));
            }
            match routed {
                Some(to) => {
                    t.ok(
                        "policy",
                        format!(
                            "a policy lets it cross: routed by the gateway of {} into {}",
                            net.record.name, to.record.name
                        ),
                    );
                    hops = &p.hops;
                    hop_net = to;
                }
                None => t.ok("policy", "a policy allows it".into()),
            }
        }
        // Where it goes.
        let mut verdicts = Vec::new();
        for (port, hop) in hops {
            verdicts.push(self.trace_hop(*port, hop, hop_net, dst, req, &names, t));
        }
        let verdict = match verdicts.len() {
            0 => dropped("internal"),
            1 => verdicts.remove(0),
            n => {
                let delivered: Vec<TraceVerdict> = verdicts
                    .iter()
                    .filter(|v| v.action != TraceAction::Dropped)
                    .cloned()
                    .collect();
                match delivered.first() {
                    Some(first) => TraceVerdict {
                        containers: delivered
                            .iter()
                            .flat_map(|v| v.containers.clone())
                            .collect(),
                        interfaces: delivered
                            .iter()
                            .flat_map(|v| v.interfaces.clone())
                            .collect(),
                        summary: format!(
                            "flooded to {n} ports: {}",
                            delivered
                                .iter()
                                .map(|v| v.summary.as_str())
                                .collect::<Vec<_>>()
                                .join("; ")
                        ),
                        ..first.clone()
                    },
                    None => verdicts.remove(0),
                }
            }
        };
        Ok((dst, verdict))
    }

    fn trace_dns(
        &self,
        name: &str,
        attached: &[Attached],
        t: &mut Trace,
    ) -> Result<IpAddr, TraceVerdict> {
        let mut looked = Vec::new();
        for a in attached {
            let zone = self.networks[&a.network].zone.load();
            let addrs = zone.addrs(name);
            // IPv4 first, as the zone lists them and as ping takes them.
            if let Some(ip) = addrs.first() {
                t.ok(
                    "dns",
                    format!(
                        "{name} resolves to {} in network {}'s embedded DNS",
                        addrs
                            .iter()
                            .map(ToString::to_string)
                            .collect::<Vec<_>>()
                            .join(", "),
                        a.network
                    ),
                );
                t.report_to = name.to_string();
                return Ok(*ip);
            }
            looked.push(a.network.as_str());
        }
        let elsewhere: Vec<&str> = self
            .networks
            .values()
            .filter(|n| !looked.contains(&n.record.name.as_str()))
            .filter(|n| !n.zone.load().addrs(name).is_empty())
            .map(|n| n.record.name.as_str())
            .collect();
        let hint = if elsewhere.is_empty() {
            String::new()
        } else {
            format!(
                "; it is a name on {}, which the container is not on (names from other networks do not resolve)",
                elsewhere.join(", ")
            )
        };
        t.fail(
            "dns",
            format!(
                "{name} is not a name in the embedded DNS of {}{hint}",
                looked.join(", ")
            ),
        );
        Err(dropped("no_such_name"))
    }

    /// Whose address `dst` is: an endpoint of this network, or of another
    /// one the container is not on.
    fn trace_isolation(&self, net: &Network, dst: IpAddr, from: &str, t: &mut Trace) {
        let owner = |n: &Network| {
            n.endpoints
                .values()
                .find(|e| {
                    e.record.ipv4.map(|x| IpAddr::V4(x.addr())) == Some(dst)
                        || e.record.ipv6.map(|x| IpAddr::V6(x.addr())) == Some(dst)
                })
                .map(|e| format!("container {}", e.record.container))
                .or_else(|| {
                    n.remotes
                        .iter()
                        .find(|(_, r)| {
                            r.ipv4.map(IpAddr::V4) == Some(dst)
                                || r.ipv6.map(IpAddr::V6) == Some(dst)
                        })
                        .map(|((host, _), r)| format!("container {} on host {host}", r.container))
                })
        };
        if let Some(c) = owner(net) {
            t.ok(
                "isolation",
                format!(
                    "{dst} is the address of {c} on network {}, which {from} is on",
                    net.record.name
                ),
            );
            return;
        }
        let other = self.networks.values().find(|n| {
            n.record.name != net.record.name
                && n.id.is_some()
                && (owner(n).is_some()
                    || n.record
                        .subnets
                        .iter()
                        .any(|s| s.subnet.is_some_and(|p| p.contains(&dst))))
        });
        if let Some(n) = other {
            let whose = owner(n)
                .map(|c| format!("{c}'s address"))
                .unwrap_or_else(|| "an address".into());
            t.ok(
                "isolation",
                format!(
                    "{dst} is {whose} on network {}, which {from} is not on: networks are isolated, no frame crosses from {} to {} unless a policy allows it; `vswitch network connect {} {from}` would join them",
                    n.record.name, net.record.name, n.record.name, n.record.name
                ),
            );
        }
    }

    /// What happens at one port the frame is switched to.
    #[allow(clippy::too_many_arguments)]
    fn trace_hop(
        &self,
        port: PortId,
        hop: &Hop,
        net: &Network,
        dst: IpAddr,
        req: &TraceRequest,
        names: &PortNames,
        t: &mut Trace,
    ) -> TraceVerdict {
        let network = Some(net.record.name.clone());
        match hop {
            Hop::Tap => {
                let (container, ifname) = names
                    .endpoint(port)
                    .unwrap_or(("(unknown)".into(), "?".into()));
                TraceVerdict {
                    summary: format!(
                        "delivered to {container} (port {ifname} on network {})",
                        net.record.name
                    ),
                    containers: vec![container],
                    interfaces: vec![ifname],
                    network,
                    ..TraceVerdict::new(TraceAction::Delivered)
                }
            }
            Hop::Gateway(None) | Hop::Gateway(Some(NatDecision::NotForNat)) => {
                t.ok(
                    "gateway",
                    format!(
                        "for the gateway of {} itself (it answers ARP, ICMP echo and DNS on port 53)",
                        net.record.name
                    ),
                );
                TraceVerdict {
                    summary: format!("delivered to the gateway of network {}", net.record.name),
                    network,
                    ..TraceVerdict::new(TraceAction::Delivered)
                }
            }
            Hop::Gateway(Some(NatDecision::Reply)) => {
                t.ok(
                    "nat",
                    "to a port the NAT lent on the gateway address: a reply to a published port's client".into(),
                );
                TraceVerdict {
                    summary: format!("delivered to the NAT of network {}", net.record.name),
                    network,
                    ..TraceVerdict::new(TraceAction::Delivered)
                }
            }
            Hop::Gateway(Some(NatDecision::Refused(r))) => {
                let why = match r {
                    switch::nat::NatRefusal::EgressDenied => format!(
                        "network {} is --internal: nothing leaves it",
                        net.record.name
                    ),
                    switch::nat::NatRefusal::BadAddress => format!(
                        "{dst} is not an address the NAT forwards to (inside the network, loopback or link-local)"
                    ),
                    _ => "the NAT refuses the frame".into(),
                };
                t.fail("nat", format!("{why}: {}", r.as_str()));
                TraceVerdict {
                    network,
                    ..dropped(r.as_str())
                }
            }
            Hop::Gateway(Some(NatDecision::Denied(policy))) => {
                t.fail(
                    "policy",
                    format!(
                        "egress policy {policy} of network {} keeps it in; `vswitch policy ls` lists the rules",
                        net.record.name
                    ),
                );
                TraceVerdict {
                    network,
                    policy: Some(policy.clone()),
                    ..dropped("policy_denied")
                }
            }
            Hop::Gateway(Some(NatDecision::Egress { proto, src, dst })) => {
                let kind = match proto {
                    NatProto::Tcp => "TCP connection",
                    NatProto::Udp => "UDP flow",
                    NatProto::IcmpEcho => "ICMP echo flow",
                };
                t.ok(
                    "nat",
                    format!(
                        "the NAT of {} takes it: a new {kind} from {} to {} through a host socket",
                        net.record.name,
                        src.ip(),
                        dst.ip()
                    ),
                );
                match host_source(dst.ip(), req.port.unwrap_or(9)) {
                    Ok(ip) => {
                        t.ok(
                            "host-route",
                            format!("the host routes {} from {ip}", dst.ip()),
                        );
                        TraceVerdict {
                            summary: format!(
                                "routed by the gateway to the outside (NAT source {ip})"
                            ),
                            nat_source: Some(ip),
                            network,
                            ..TraceVerdict::new(TraceAction::Routed)
                        }
                    }
                    Err(e) => {
                        t.fail(
                            "host-route",
                            format!("the host has no route to {}: {e}", dst.ip()),
                        );
                        TraceVerdict {
                            network,
                            ..dropped("no_route")
                        }
                    }
                }
            }
            Hop::Tunnel(
                Encap::Send {
                    transport, remote, ..
                },
                vni,
            ) => {
                let host = names.host(port).unwrap_or_else(|| remote.to_string());
                let transport = transport.as_str().to_uppercase();
                let vni = vni.map(|v| v.get());
                t.ok(
                    "tunnel",
                    format!(
                        "encapsulated for host {host} at {remote}: VNI {}, {transport}",
                        vni.map_or("?".into(), |v| v.to_string())
                    ),
                );
                TraceVerdict {
                    summary: format!(
                        "forwarded via tunnel to host {host} (VNI {}, {transport})",
                        vni.map_or("?".into(), |v| v.to_string())
                    ),
                    host: Some(host),
                    remote: Some(remote.to_string()),
                    vni,
                    transport: Some(transport),
                    network,
                    ..TraceVerdict::new(TraceAction::Forwarded)
                }
            }
            Hop::Tunnel(Encap::Drop(reason), _) => {
                t.fail(
                    "tunnel",
                    format!("the tunnel rules refuse it: {}", reason.as_str()),
                );
                TraceVerdict {
                    network,
                    ..dropped(reason.as_str())
                }
            }
            Hop::Gone => dropped("unknown_port"),
        }
    }

    /// The endpoint's own addresses, as port security holds them.
    fn endpoint_identity(&self, a: &Attached) -> String {
        let e = self.networks[&a.network]
            .endpoints
            .values()
            .find(|e| e.port == a.port);
        match e {
            Some(e) => {
                let mut s = format!("MAC {}", MacAddr(e.record.mac));
                if let Some(v4) = e.record.ipv4 {
                    s += &format!(", {}", v4.addr());
                }
                if let Some(v6) = e.record.ipv6 {
                    s += &format!(", {}", v6.addr());
                }
                s
            }
            None => "gone".into(),
        }
    }

    fn port_names(&self) -> PortNames {
        let mut names = PortNames::default();
        for n in self.networks.values() {
            for e in n.endpoints.values() {
                names.endpoints.insert(
                    e.port,
                    (e.record.container.clone(), e.record.ifname.clone()),
                );
            }
            for (host, (port, _)) in &n.vteps {
                names.hosts.insert(*port, host.clone());
            }
            for (addr, port) in &n.static_vteps {
                names.hosts.insert(*port, format!("VTEP {addr}"));
            }
        }
        names
    }
}

/// What the trace has found so far.
struct Trace {
    steps: Vec<TraceStep>,
    /// `To`, as the report gives it.
    report_to: String,
    /// The datapath did not answer: the request fails.
    error: Option<ApiError>,
}

impl Trace {
    fn ok(&mut self, step: &str, detail: String) {
        self.steps.push(TraceStep {
            step: step.into(),
            ok: true,
            detail,
        });
    }

    fn fail(&mut self, step: &str, detail: String) {
        self.steps.push(TraceStep {
            step: step.into(),
            ok: false,
            detail,
        });
    }

    /// The steps of the bridge's decision on the frame.
    #[allow(clippy::too_many_arguments)]
    fn trace_bridge(
        &mut self,
        d: &Decision,
        what: &str,
        a: &Attached,
        dst_mac: MacAddr,
        ctrl: &Controller,
        net: &Network,
        names: &PortNames,
    ) -> Result<(), TraceVerdict> {
        if let (Lookup::NotReached, Action::Drop(reason)) = (d.lookup, d.action) {
            self.fail(
                "port-security",
                format!(
                    "{what} from MAC {} refused on {}: {} (the endpoint is {})",
                    a.mac,
                    a.ifname,
                    reason.as_str(),
                    ctrl.endpoint_identity(a)
                ),
            );
            return Err(dropped(reason.as_str()));
        }
        if d.secured {
            self.ok(
                "port-security",
                format!("{what} from MAC {} matches {}'s endpoint", a.mac, a.ifname),
            );
        }
        let detail = match d.lookup {
            Lookup::Hit { port, pinned } => format!(
                "{dst_mac} in network {}'s MAC table: {} ({})",
                net.record.name,
                names.describe(net, Some(port)),
                if pinned { "pinned" } else { "learned" }
            ),
            Lookup::Miss => format!(
                "{dst_mac} is not in network {}'s MAC table: flooded to its other ports",
                net.record.name
            ),
            Lookup::Group => format!("{dst_mac} is a group address: flooded"),
            Lookup::NotReached => String::new(),
        };
        match d.action {
            Action::Drop(reason) => {
                self.fail("fdb", format!("{detail}: {}", reason.as_str()));
                Err(dropped(reason.as_str()))
            }
            _ => {
                self.ok("fdb", detail);
                Ok(())
            }
        }
    }
}

/// Ports by what they are, for the report.
#[derive(Default)]
struct PortNames {
    endpoints: BTreeMap<PortId, (String, String)>,
    hosts: BTreeMap<PortId, String>,
}

impl PortNames {
    fn endpoint(&self, port: PortId) -> Option<(String, String)> {
        self.endpoints.get(&port).cloned()
    }

    fn host(&self, port: PortId) -> Option<String> {
        self.hosts.get(&port).cloned()
    }

    /// The port a MAC of `net` is known behind, among what the controller
    /// knows (endpoints here and elsewhere).
    fn port_of_mac(&self, net: &Network, mac: MacAddr) -> Option<PortId> {
        net.endpoints
            .values()
            .find(|e| MacAddr(e.record.mac) == mac)
            .map(|e| e.port)
            .or_else(|| {
                let ((host, _), _) = net.remotes.iter().find(|(_, r)| r.mac == mac.0)?;
                net.vteps.get(host).map(|(p, _)| *p)
            })
    }

    fn describe(&self, net: &Network, port: Option<PortId>) -> String {
        let Some(port) = port else {
            return "an endpoint on another host".into();
        };
        if let Some((c, i)) = self.endpoints.get(&port) {
            return format!("port {i} of container {c}");
        }
        if let Some(h) = self.hosts.get(&port) {
            return format!("the tunnel port to host {h}");
        }
        format!("the gateway port of network {}", net.record.name)
    }
}

/// Dropped for `reason`; why is said in the steps.
fn dropped(reason: &str) -> TraceVerdict {
    TraceVerdict {
        reason: Some(reason.to_string()),
        summary: format!("dropped: {reason}"),
        ..TraceVerdict::new(TraceAction::Dropped)
    }
}

fn neighbor_word(ip: IpAddr) -> &'static str {
    if ip.is_ipv4() {
        "ARP request"
    } else {
        "neighbour solicitation"
    }
}

/// The route the container's kernel takes to `dst`: the longest prefix
/// among the routes of its interfaces that are up (the main table, as
/// `ip route get` reads it for a single-table namespace).
fn pick_route(attached: &[Attached], dst: IpAddr) -> Option<(&Attached, IpNet, Option<IpAddr>)> {
    let mut best: Option<(&Attached, IpNet, Option<IpAddr>)> = None;
    for a in attached.iter().filter(|a| a.up) {
        for (prefix, gw) in &a.routes {
            if !prefix.contains(&dst) {
                continue;
            }
            if best
                .as_ref()
                .is_none_or(|(_, b, _)| prefix.prefix_len() > b.prefix_len())
            {
                best = Some((a, *prefix, *gw));
            }
        }
    }
    best
}

/// The source address the kernel picks on `a` for `next_hop`: one whose
/// subnet holds it, else the first of its family.
fn source_address(a: &Attached, next_hop: IpAddr) -> Option<IpAddr> {
    let same_family = || {
        a.addrs
            .iter()
            .filter(move |n| n.addr().is_ipv4() == next_hop.is_ipv4())
    };
    same_family()
        .find(|n| n.contains(&next_hop))
        .or_else(|| same_family().next())
        .map(|n| n.addr())
}

/// The network's gateway MAC, as `install_network` derives it.
pub(super) fn gateway_mac(record: &NetworkRecord) -> MacAddr {
    MacAddr::local_from_seed(format!("gateway/{}", record.id).as_bytes())
}

/// The host's source address toward `dst`, as the NAT's host socket would
/// get it: a UDP socket connected there (connecting sends nothing).
fn host_source(dst: IpAddr, port: u16) -> std::io::Result<IpAddr> {
    let bind: SocketAddr = match dst {
        IpAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        IpAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let sock = UdpSocket::bind(bind)?;
    sock.connect((dst, port))?;
    Ok(sock.local_addr()?.ip())
}
