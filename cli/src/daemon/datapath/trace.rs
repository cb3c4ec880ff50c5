//! `vswitch trace` in a worker: a synthetic frame run through this
//! worker's own tables by the same sans-IO calls the datapath makes, in the
//! order it makes them, through their query forms, so nothing is learned,
//! counted, opened or sent:
//! - the neighbour request (ARP or a neighbour solicitation) the container
//!   sends first: answered by the switch for a remote endpoint
//!   ([`Neighbors::answer`], as `ingress.rs` does before switching), or
//!   switched ([`Bridge::decide`]) and answered by whoever holds the
//!   address;
//! - the frame itself: [`Bridge::decide`] (port security, the FDB lookup);
//! - where it goes, as `egress.rs` decides there: a TAP; a gateway port,
//!   where [`Nat::classify`] says whether the NAT takes it and lets it out
//!   (the gateway itself otherwise); a VTEP, where [`TunnelRules::encap`]
//!   names the remote host, the VNI and the transport.
//!
//! The first worker answers: it holds the gateways; every worker's bridge,
//! neighbour table and tunnel rules are copies made by the same commands,
//! and the NAT's decision depends only on its configuration, the same in
//! every shard.

use super::*;
use switch::bridge::{Decision, Lookup};
use switch::nat::NatDecision;
use switch::wire::{self, Probe};

/// What the control plane asks the datapath to trace.
#[derive(Debug, Clone)]
pub struct TraceProbe {
    /// The container's endpoint: the frame's ingress port.
    pub port: PortId,
    /// The source MAC and IP the container sends with (its interface's,
    /// as the kernel has them now).
    pub src_mac: MacAddr,
    pub src_ip: IpAddr,
    /// The destination IP.
    pub dst_ip: IpAddr,
    /// Whose MAC the container asks for: `dst_ip` on-link, else the
    /// gateway of its route.
    pub next_hop: IpAddr,
    /// The next hop's MAC when it is the network's gateway (the gateway
    /// port answers for its own address).
    pub gateway_mac: Option<MacAddr>,
    /// The transport of the frame.
    pub probe: Probe,
}

/// Who answered the container's neighbour request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Neighbor {
    /// The switch itself, for an endpoint on another host (ARP/ND
    /// suppression).
    Suppressed(MacAddr),
    /// The network's gateway.
    Gateway(MacAddr),
    /// A local endpoint whose address it is.
    Port(PortId, MacAddr),
    /// Nobody holds the address on this network: the request goes
    /// unanswered.
    Unanswered,
}

/// What happens at one port the frame is switched to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hop {
    /// Written to this TAP.
    Tap,
    /// Handed to the gateway port: what the NAT decides (`NotForNat`: the
    /// gateway itself answers), or `None` on a network without a NAT.
    Gateway(Option<NatDecision>),
    /// A tunnel port: what the tunnel rules decide, with the network's VNI.
    Tunnel(Encap, Option<Vni>),
    /// The port went meanwhile.
    Gone,
}

/// The trace of one probe.
#[derive(Debug, Clone)]
pub struct TraceResult {
    /// The ingress port's network.
    pub network: Option<NetworkId>,
    /// The neighbour request's decision, unless the switch answered it
    /// before switching.
    pub resolve: Option<Decision>,
    /// Who answered it.
    pub neighbor: Neighbor,
    /// The frame's decision, once its destination MAC is known.
    pub frame: Option<Decision>,
    /// Each port the frame goes to, and what happens there.
    pub hops: Vec<(PortId, Hop)>,
    /// What the policies make of it, when they look at it (as they would
    /// judge the first packet of a flow).
    pub policy: Option<PolicyHop>,
}

/// The policies' verdict on a traced frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyHop {
    /// Routed by the gateway into this network.
    pub routed: Option<NetworkId>,
    /// Denied, under this policy name.
    pub denied: Option<String>,
    /// Routed and allowed: each port of the other network the routed
    /// frame goes to ([`TraceResult::hops`] is empty then).
    pub hops: Vec<(PortId, Hop)>,
}

impl Datapath {
    pub(super) fn trace(&self, t: &TraceProbe, now: Instant) -> Result<TraceResult, DatapathError> {
        let network = self.bridge.network_of(t.port);
        let mut result = TraceResult {
            network,
            resolve: None,
            neighbor: Neighbor::Unanswered,
            frame: None,
            hops: Vec::new(),
            policy: None,
        };
        let Some(network) = network else {
            result.frame = Some(self.bridge.decide(t.port, &[], now));
            return Ok(result);
        };
        let request = match (t.src_ip, t.next_hop) {
            (IpAddr::V4(s), IpAddr::V4(h)) => wire::build_arp_request(t.src_mac, s, h),
            (IpAddr::V6(s), IpAddr::V6(h)) => wire::build_neighbor_solicit(t.src_mac, s, h),
            _ => return Err(DatapathError::Trace("source and next hop differ in family")),
        };
        let mut reply = [0u8; NEIGHBOR_REPLY_BUF];
        // As `switch_frame` does: the switch answers for remote endpoints
        // before the request is switched.
        let suppressed = self
            .neighbors
            .answer(network, &request, &mut reply)
            .and_then(|_| self.neighbors.get(network, t.next_hop));
        let dst_mac = if let Some(mac) = suppressed {
            result.neighbor = Neighbor::Suppressed(mac);
            mac
        } else {
            let decision = self.bridge.decide(t.port, &request, now);
            result.resolve = Some(decision);
            if matches!(decision.action, Action::Drop(_)) {
                return Ok(result);
            }
            match self.answerer(network, t) {
                Some((neighbor, mac)) => {
                    result.neighbor = neighbor;
                    mac
                }
                None => return Ok(result),
            }
        };
        let frame = wire::build_probe(t.src_mac, dst_mac, t.src_ip, t.dst_ip, t.probe)
            .map_err(|_| DatapathError::Trace("the probe frame cannot be built"))?;
        let decision = self.bridge.decide(t.port, &frame, now);
        result.frame = Some(decision);
        if let Action::Forward(p) = decision.action {
            if let Some(judged) = self.trace_policy(network, p, &frame, now) {
                let routed_allowed = judged.routed.is_some() && judged.denied.is_none();
                result.policy = Some(judged);
                if routed_allowed || result.policy.as_ref().is_some_and(|j| j.denied.is_some()) {
                    return Ok(result);
                }
            }
        }
        match decision.action {
            Action::Forward(p) => result.hops.push((p, self.hop(p, network, &frame))),
            Action::Flood { network, except } => {
                for &p in self.bridge.ports(network) {
                    if p != except {
                        result.hops.push((p, self.hop(p, network, &frame)));
                    }
                }
            }
            Action::Drop(_) => {}
        }
        debug_assert!(
            !matches!(decision.lookup, Lookup::NotReached) || result.hops.is_empty(),
            "a frame dropped before the lookup goes nowhere"
        );
        Ok(result)
    }

    /// The policies' verdict on `frame` sent by the bridge from `network`
    /// to port `to`, and for a frame routed into another network and
    /// allowed, where it goes there.
    fn trace_policy(
        &self,
        network: NetworkId,
        to: PortId,
        frame: &[u8],
        now: Instant,
    ) -> Option<PolicyHop> {
        let s = self
            .policy
            .subject(&self.ports, network, Origin::Local, to, frame)?;
        let table = &self.policy.table;
        let routed = (s.dst_net != network).then_some(s.dst_net);
        let mut out = PolicyHop {
            routed,
            denied: None,
            hops: Vec::new(),
        };
        let target = s.dst.ep.and_then(|e| table.endpoint(e));
        let verdict = match (routed, target) {
            (Some(_), None) => switch::policy::Verdict::Deny(switch::policy::DEFAULT_DENY),
            _ => table.check(s.src, s.dst, s.pkt.proto, s.pkt.dport),
        };
        if let switch::policy::Verdict::Deny(name) = verdict {
            out.denied = Some(table.name(name).to_string());
            return Some(out);
        }
        if let (Some(dnet), Some(ep)) = (routed, target) {
            let gateway_mac = table.network(dnet).map(|n| n.gateway_mac)?;
            let gateway = *self.gateways.get(&dnet)?;
            let mut routed_frame = frame.to_vec();
            if !super::policy::route_in_place(&mut routed_frame, ep.mac, gateway_mac) {
                out.denied = Some("ttl".into());
                return Some(out);
            }
            let decision = self.bridge.decide(gateway, &routed_frame, now);
            match decision.action {
                Action::Forward(p) => out.hops.push((p, self.hop(p, dnet, &routed_frame))),
                Action::Flood { network, except } => {
                    for &p in self.bridge.ports(network) {
                        if p != except {
                            out.hops.push((p, self.hop(p, network, &routed_frame)));
                        }
                    }
                }
                Action::Drop(_) => {}
            }
        }
        Some(out)
    }

    /// Who answers a neighbour request for `t.next_hop` that reached the
    /// ports of `network`: the gateway for its own address, or the
    /// endpoint whose address it is (its port security lists it).
    fn answerer(&self, network: NetworkId, t: &TraceProbe) -> Option<(Neighbor, MacAddr)> {
        if let Some(mac) = t.gateway_mac {
            return Some((Neighbor::Gateway(mac), mac));
        }
        self.bridge.ports(network).iter().find_map(|&p| {
            let sec = self.bridge.port_security(p)?;
            let holds = match t.next_hop {
                IpAddr::V4(a) => sec.ipv4.contains(&a),
                IpAddr::V6(a) => sec.ipv6.contains(&a),
            };
            (holds && p != t.port).then_some((Neighbor::Port(p, sec.mac), sec.mac))
        })
    }

    /// What `Egress::deliver` would do with `frame` at port `to`.
    fn hop(&self, to: PortId, network: NetworkId, frame: &[u8]) -> Hop {
        match self.ports.get(&to) {
            Some(Slot::Tap(_)) => Hop::Tap,
            Some(Slot::Gateway(g)) => Hop::Gateway(g.nat.as_ref().map(|n| n.classify(frame))),
            Some(Slot::Vtep(_)) => {
                Hop::Tunnel(self.rules.encap(Origin::Local, to), self.rules.vni(network))
            }
            None => Hop::Gone,
        }
    }
}
