//! Policies in the datapath: which frames the policy table is asked about,
//! the flow table that asks it once per flow, and the routing of allowed
//! frames from one network's gateway into another network.
//!
//! A frame is judged when the bridge sends it
//! - to a gateway, for an address in another network's subnet (routed),
//! - to a TAP or a tunnel port of a network whose frames are looked at
//!   (isolated, or with containers a NetworkPolicy selects),
//! - from a tunnel to a TAP with a source in another network (a frame
//!   another host routed: judged again here, as the receiving host).
//!
//! Frames the gateways and NATs emit, ARP, and neighbour discovery are
//! never judged. Each worker keeps the flows it admitted. A flow's frames
//! mostly stay on one worker (the kernel sends a flow's replies back on
//! the TAP queue its frames were written to), but not always: a frame the
//! policies would deny is first handed to the next worker, whose table
//! may hold its flow, and dropped (and counted) only once every worker's
//! table missed it. Frames a policy allows never leave their worker.

use std::collections::BTreeMap;

use switch::policy::packet::Kind;
use switch::policy::{
    Denials, FlowPacket, FlowStats, FlowVerdict, Flows, PolicyTable, Verdict, Who, DEFAULT_DENY,
};

use super::*;

/// A worker's policy state.
#[derive(Debug, Default)]
pub(super) struct PolicyState {
    pub(super) table: Arc<PolicyTable>,
    pub(super) flows: Flows,
    pub(super) denials: Denials,
    /// Frames routed from one network into another.
    pub(super) routed: u64,
    /// Routed frames dropped for their TTL or hop limit.
    pub(super) ttl_expired: u64,
}

/// What the policies make of a switched frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Gate {
    /// As the bridge decided.
    Pass,
    /// Dropped (counted).
    Drop,
    /// Not admitted by this worker's flow table: hand it to worker `to`,
    /// the `tries`th whose table is asked.
    Hand { to: usize, tries: u8 },
    /// Routed into `network`, to the endpoint whose MAC is `mac`, from
    /// that network's gateway `gateway_mac`.
    Route {
        network: NetworkId,
        mac: MacAddr,
        gateway_mac: MacAddr,
    },
}

/// A frame the policies look at.
#[derive(Debug, Clone, Copy)]
pub(super) struct Subject {
    pub(super) pkt: FlowPacket,
    /// Where it goes: its own network, or the one it is routed into.
    pub(super) dst_net: NetworkId,
    pub(super) src: Who,
    pub(super) dst: Who,
}

/// The policy counters of a worker, for `vswitch stats`.
#[derive(Debug, Clone, Default)]
pub struct PolicyCounters {
    /// Denied frames (and NAT egress flows), by policy name.
    pub denied: BTreeMap<String, u64>,
    /// Flows held now.
    pub flows: u64,
    /// The flow tables' counters.
    pub flow_stats: FlowStats,
    /// Frames routed between networks.
    pub routed: u64,
    /// Routed frames dropped for their TTL.
    pub ttl_expired: u64,
}

impl PolicyCounters {
    pub(super) fn add(&mut self, o: &PolicyCounters) {
        for (name, c) in &o.denied {
            *self.denied.entry(name.clone()).or_default() += c;
        }
        self.flows += o.flows;
        self.flow_stats.opened += o.flow_stats.opened;
        self.flow_stats.expired += o.flow_stats.expired;
        self.flow_stats.revoked += o.flow_stats.revoked;
        self.flow_stats.full += o.flow_stats.full;
        self.routed += o.routed;
        self.ttl_expired += o.ttl_expired;
    }
}

impl PolicyState {
    /// Judges a frame the bridge decided `action` for, read from a port
    /// of `network` (reached from `from`), on worker `index` of `workers`,
    /// after `tries` other workers' tables missed it.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn gate(
        &mut self,
        ports: &FastMap<PortId, Slot>,
        network: NetworkId,
        from: Origin,
        action: &Action,
        frame: &[u8],
        index: usize,
        workers: usize,
        tries: u8,
        now: Instant,
    ) -> Gate {
        if from == Origin::Gateway {
            return Gate::Pass;
        }
        let table = &*self.table;
        let checked = table.network(network).is_some_and(|n| n.checked);
        let to = match action {
            Action::Forward(p) => *p,
            Action::Flood { .. } if checked => {
                // Nobody's in particular: judged on its own, no flow kept.
                let Some(pkt) = FlowPacket::parse(frame) else {
                    return Gate::Pass;
                };
                if pkt.kind == Kind::Link {
                    return Gate::Pass;
                }
                let src = table.identify(network, pkt.src);
                let dst = table.identify(network, pkt.dst);
                return match table.check(src, dst, pkt.proto, pkt.dport) {
                    Verdict::Allow => Gate::Pass,
                    Verdict::Deny(name) => {
                        self.denials.count(table, name);
                        Gate::Drop
                    }
                };
            }
            _ => return Gate::Pass,
        };
        let Some(Subject {
            pkt,
            dst_net,
            src,
            dst,
        }) = self.subject(ports, network, from, to, frame)
        else {
            return Gate::Pass;
        };
        let table = &*self.table;
        let target = match (dst_net != network, dst.ep.and_then(|e| table.endpoint(e))) {
            (false, _) => None,
            (true, Some(ep)) => Some((ep.mac, table.network(dst_net).map(|n| n.gateway_mac))),
            (true, None) => {
                // Another network's address nobody holds.
                self.denials.count(table, DEFAULT_DENY);
                return Gate::Drop;
            }
        };
        match self.flows.check(table, &pkt, src, dst, now) {
            FlowVerdict::Pass(_) => match target {
                None => Gate::Pass,
                Some((mac, Some(gateway_mac))) => Gate::Route {
                    network: dst_net,
                    mac,
                    gateway_mac,
                },
                Some((_, None)) => Gate::Drop,
            },
            FlowVerdict::Deny(_) if usize::from(tries) + 1 < workers => Gate::Hand {
                to: (index + 1) % workers,
                tries: tries + 1,
            },
            FlowVerdict::Deny(name) => {
                self.denials.count(table, name);
                Gate::Drop
            }
            FlowVerdict::Full => Gate::Drop,
        }
    }

    /// Whether the policies look at a frame the bridge sends from
    /// `network` (reached from `from`) to port `to`, and if so its tuple,
    /// the network it goes to (another one when routed) and its two sides.
    pub(super) fn subject(
        &self,
        ports: &FastMap<PortId, Slot>,
        network: NetworkId,
        from: Origin,
        to: PortId,
        frame: &[u8],
    ) -> Option<Subject> {
        if from == Origin::Gateway {
            return None;
        }
        let table = &*self.table;
        let (pkt, dst_net) = match ports.get(&to)? {
            Slot::Gateway(_) => {
                let pkt = FlowPacket::parse(frame)?;
                (pkt, table.routed_network(network, pkt.dst)?)
            }
            Slot::Tap(_) | Slot::Vtep(_) => {
                // Between two ports of one network: looked at when the
                // network is, or when another host routed it here.
                let checked = table.network(network).is_some_and(|n| n.checked);
                if !checked && from != Origin::Tunnel {
                    return None;
                }
                let pkt = FlowPacket::parse(frame)?;
                if !checked && table.routed_network(network, pkt.src).is_none() {
                    return None;
                }
                (pkt, network)
            }
        };
        if pkt.kind == Kind::Link {
            return None;
        }
        Some(Subject {
            pkt,
            dst_net,
            src: table.identify(network, pkt.src),
            dst: Who {
                ep: table.endpoint_at(dst_net, pkt.dst),
                ip: pkt.dst,
            },
        })
    }

    /// The counters, with the NATs' egress denials added by the caller.
    pub(super) fn counters(&self) -> PolicyCounters {
        PolicyCounters {
            denied: self.denials.totals(),
            flows: self.flows.len() as u64,
            flow_stats: self.flows.stats(),
            routed: self.routed,
            ttl_expired: self.ttl_expired,
        }
    }
}

/// Rewrites a frame routed into another network in place: from its
/// gateway `gateway_mac` to `mac`, its TTL or hop limit one less (and the
/// IPv4 header checksum made good for it). False when the TTL ran out.
pub(super) fn route_in_place(frame: &mut [u8], mac: MacAddr, gateway_mac: MacAddr) -> bool {
    if frame.len() < 14 + 20 {
        return false;
    }
    let v6 = u16::from_be_bytes([frame[12], frame[13]]) == 0x86dd;
    let ttl_at = if v6 { 14 + 7 } else { 14 + 8 };
    if (v6 && frame.len() < 14 + 40) || frame[ttl_at] <= 1 {
        return false;
    }
    frame[0..6].copy_from_slice(&mac.0);
    frame[6..12].copy_from_slice(&gateway_mac.0);
    let old = u16::from_be_bytes([frame[ttl_at], frame[ttl_at + 1]]);
    frame[ttl_at] -= 1;
    if !v6 {
        // RFC 1624: HC' = ~(~HC + ~m + m').
        let new = u16::from_be_bytes([frame[ttl_at], frame[ttl_at + 1]]);
        let hc = u16::from_be_bytes([frame[24], frame[25]]);
        let mut sum = u32::from(!hc) + u32::from(!old) + u32::from(new);
        while sum >> 16 != 0 {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        frame[24..26].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ipv4_checksum(h: &[u8]) -> u16 {
        let mut sum: u32 = 0;
        for (i, pair) in h.chunks(2).enumerate() {
            if i != 5 {
                sum += u32::from(u16::from_be_bytes([pair[0], pair[1]]));
            }
        }
        while sum >> 16 != 0 {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        !(sum as u16)
    }

    #[test]
    fn a_routed_frame_gets_new_macs_one_ttl_less_and_a_good_checksum() {
        for ttl in [64u8, 2, 255, 128] {
            let mut f = vec![0u8; 14];
            f[12] = 0x08;
            let mut ip = vec![
                0x45, 0, 0, 20, 0x12, 0x34, 0x40, 0, ttl, 6, 0, 0, 10, 0, 0, 2, 10, 1, 0, 3,
            ];
            let c = ipv4_checksum(&ip);
            ip[10..12].copy_from_slice(&c.to_be_bytes());
            f.extend_from_slice(&ip);
            let mac = MacAddr([2, 0, 0, 0, 0, 3]);
            let gw = MacAddr([2, 0, 0, 0, 0, 1]);
            assert!(route_in_place(&mut f, mac, gw));
            assert_eq!(&f[0..6], &mac.0);
            assert_eq!(&f[6..12], &gw.0);
            assert_eq!(f[22], ttl - 1);
            let stored = u16::from_be_bytes([f[24], f[25]]);
            assert_eq!(stored, ipv4_checksum(&f[14..34]), "ttl {ttl}");
        }
        let mut f = vec![0u8; 34];
        f[12] = 0x08;
        f[22] = 1;
        assert!(!route_in_place(&mut f, MacAddr([2; 6]), MacAddr([4; 6])));
    }
}
