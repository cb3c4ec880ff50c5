//! The switching core: bridge domains (one per network), their ports, the
//! forwarding decision, isolation and port security.
//!
//! Sans-IO, as quinn-proto and smoltcp are: [`Bridge::process`] takes a frame
//! and `now` and returns an [`Action`]; the daemon's IO loop does the reading
//! and writing, and for [`Action::Flood`] sends the frame to every port of
//! [`Bridge::ports`] but the ingress one. Nothing here reads the clock.
//!
//! Invariants, whatever bytes arrive:
//! - a frame never leaves its network: [`Action::Forward`] names a port of
//!   the ingress port's network, and [`Action::Flood`] names that network;
//! - a frame is never sent back to its ingress port;
//! - every [`Action::Drop`] is counted by reason and, for known ports, per
//!   port.
//!
//! Port security applies to ports attached with `Some(PortSecurity)` (a
//! container's endpoint): the source MAC must be the port's; ARP must speak
//! for the port's own MAC and IPv4 addresses (0.0.0.0 for RFC 5227 probes);
//! IPv4 must come from one of its addresses; IPv6 from one of its addresses,
//! a link-local address or `::` (duplicate address detection); neighbour
//! advertisements may only claim its own or link-local addresses, link-layer
//! address options must be its MAC, and router advertisements and redirects
//! are dropped (the network's gateway is the only router). Every other
//! ethertype, VLAN tags included, is dropped. Ports attached with `None`
//! (the gateway, tunnels) are trusted.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::{Duration, Instant};

use crate::fdb::{FastMap, Fdb, FdbConfig, FdbStats};
use crate::wire::{self, ArpOperation, ArpRepr, EtherType, EthernetFrame, Ipv6Summary, NdpKind};
use crate::{MacAddr, NetworkId, PortId};

pub use crate::fdb::FdbEntryView;

/// Settings of a [`Bridge`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BridgeConfig {
    /// How long a learned MAC lives after its last frame.
    pub aging: Duration,
    /// Most learned MACs in one network.
    pub fdb_max_per_network: usize,
    /// Most learned MACs behind one port.
    pub fdb_max_per_port: usize,
}

impl Default for BridgeConfig {
    /// 300 s, 8192 MACs per network, 64 per port.
    fn default() -> Self {
        let fdb = FdbConfig::default();
        BridgeConfig {
            aging: fdb.aging,
            fdb_max_per_network: fdb.max_per_network,
            fdb_max_per_port: fdb.max_per_port,
        }
    }
}

/// The addresses a secured port may send from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortSecurity {
    /// The endpoint's MAC address.
    pub mac: MacAddr,
    /// Its IPv4 addresses.
    pub ipv4: Vec<Ipv4Addr>,
    /// Its IPv6 addresses (link-local ones are always allowed).
    pub ipv6: Vec<Ipv6Addr>,
}

/// What to do with a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Send it to this port only.
    Forward(PortId),
    /// Send it to every port of `network` except `except` (the ingress).
    Flood {
        /// The ingress port's network.
        network: NetworkId,
        /// The ingress port.
        except: PortId,
    },
    /// Discard it.
    Drop(DropReason),
}

/// What the forwarding-database lookup of a frame found ([`Decision`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    /// The frame was dropped before the lookup.
    NotReached,
    /// A group address (broadcast, multicast): flooded, no lookup.
    Group,
    /// The destination MAC is behind `port`; `pinned` when it is a static
    /// entry (an endpoint's, the gateway's, a remote endpoint's).
    Hit {
        /// Where the MAC is.
        port: PortId,
        /// A static entry, not a learned one.
        pinned: bool,
    },
    /// Unknown unicast: flooded.
    Miss,
}

/// [`Bridge::decide`]: what the bridge would do with a frame, and what it
/// looked at on the way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// The ingress port's network (none: the port is not attached).
    pub network: Option<NetworkId>,
    /// The ingress port is secured: its frames were checked against its
    /// addresses (and passed, unless `action` drops them for it).
    pub secured: bool,
    /// The lookup of the destination MAC.
    pub lookup: Lookup,
    /// What [`Bridge::process`] returns for the frame.
    pub action: Action,
}

/// Why a frame was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// Too short for an Ethernet header, or a header that must be read for
    /// port security is malformed.
    Malformed,
    /// The ingress port is not attached.
    UnknownPort,
    /// The source MAC is multicast or zero.
    InvalidSource,
    /// A secured port sent with a MAC (source, ARP sender or neighbour
    /// discovery option) that is not its own.
    SpoofedMac,
    /// A secured port sent with, or claimed, an IP address not its own.
    SpoofedIp,
    /// A secured port sent a router advertisement or redirect.
    RogueRouter,
    /// A secured port sent an ethertype other than ARP, IPv4 and IPv6.
    EtherType,
    /// The destination is behind the ingress port.
    SameSegment,
    /// The destination is an IEEE 802.1D reserved group (01:80:c2:00:00:0x:
    /// STP, pause, LACP, LLDP...), which bridges never forward.
    ReservedGroup,
}

impl DropReason {
    /// Every reason, in counter order.
    pub const ALL: [DropReason; 9] = [
        DropReason::Malformed,
        DropReason::UnknownPort,
        DropReason::InvalidSource,
        DropReason::SpoofedMac,
        DropReason::SpoofedIp,
        DropReason::RogueRouter,
        DropReason::EtherType,
        DropReason::SameSegment,
        DropReason::ReservedGroup,
    ];

    /// A stable snake_case name, for stats and logs.
    pub const fn as_str(self) -> &'static str {
        match self {
            DropReason::Malformed => "malformed",
            DropReason::UnknownPort => "unknown_port",
            DropReason::InvalidSource => "invalid_source",
            DropReason::SpoofedMac => "spoofed_mac",
            DropReason::SpoofedIp => "spoofed_ip",
            DropReason::RogueRouter => "rogue_router",
            DropReason::EtherType => "ethertype",
            DropReason::SameSegment => "same_segment",
            DropReason::ReservedGroup => "reserved_group",
        }
    }

    const fn index(self) -> usize {
        self as usize
    }
}

impl std::fmt::Display for DropReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Dropped frames, by reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DropCounters {
    counts: [u64; DropReason::ALL.len()],
}

impl DropCounters {
    /// Frames dropped for `reason`.
    pub fn get(&self, reason: DropReason) -> u64 {
        self.counts[reason.index()]
    }

    /// Every reason with its count.
    pub fn iter(&self) -> impl Iterator<Item = (DropReason, u64)> + '_ {
        DropReason::ALL.iter().map(|r| (*r, self.get(*r)))
    }

    /// All dropped frames.
    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// Adds another bridge's counts (another worker's copy of the tables).
    pub fn add(&mut self, other: &DropCounters) {
        for (a, b) in self.counts.iter_mut().zip(other.counts) {
            *a += b;
        }
    }

    #[inline]
    fn bump(&mut self, reason: DropReason) {
        self.counts[reason.index()] += 1;
    }
}

/// Errors of the bridge's control operations.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BridgeError {
    /// `add_network` for a network that already exists.
    #[error("network {0:?} already exists on the bridge")]
    NetworkExists(NetworkId),
    /// The network is not on the bridge.
    #[error("network {0:?} does not exist on the bridge")]
    NoSuchNetwork(NetworkId),
    /// `add_port` for a port id already attached.
    #[error("port {0:?} is already attached")]
    PortExists(PortId),
    /// The port is not attached.
    #[error("port {0:?} is not attached")]
    NoSuchPort(PortId),
    /// The port is attached to another network than the one named.
    #[error("port {port:?} is attached to network {actual:?}, not {network:?}")]
    PortNotInNetwork {
        /// The port.
        port: PortId,
        /// The network named in the call.
        network: NetworkId,
        /// The network it is on.
        actual: NetworkId,
    },
    /// A station address that is multicast or zero.
    #[error("{0} is not a unicast MAC address")]
    InvalidMac(MacAddr),
}

#[derive(Debug, Clone)]
struct Port {
    network: NetworkId,
    security: Option<PortSecurity>,
    drops: DropCounters,
}

#[derive(Debug, Clone, Default)]
struct Network {
    ports: Vec<PortId>,
}

/// Bridge domains, their ports and the forwarding database.
#[derive(Debug, Clone)]
pub struct Bridge {
    networks: FastMap<NetworkId, Network>,
    ports: FastMap<PortId, Port>,
    fdb: Fdb,
    drops: DropCounters,
}

impl Bridge {
    /// A bridge without networks.
    pub fn new(config: BridgeConfig) -> Self {
        Bridge {
            networks: FastMap::default(),
            ports: FastMap::default(),
            fdb: Fdb::new(FdbConfig {
                aging: config.aging,
                max_per_network: config.fdb_max_per_network,
                max_per_port: config.fdb_max_per_port,
            }),
            drops: DropCounters::default(),
        }
    }

    /// Adds a bridge domain.
    pub fn add_network(&mut self, network: NetworkId) -> Result<(), BridgeError> {
        if self.networks.contains_key(&network) {
            return Err(BridgeError::NetworkExists(network));
        }
        self.networks.insert(network, Network::default());
        Ok(())
    }

    /// Removes a bridge domain with its ports and MAC entries. Returns the
    /// ports that were detached (empty if the network did not exist).
    pub fn remove_network(&mut self, network: NetworkId) -> Vec<PortId> {
        let Some(net) = self.networks.remove(&network) else {
            return Vec::new();
        };
        for port in &net.ports {
            self.ports.remove(port);
        }
        self.fdb.remove_network(network);
        net.ports
    }

    /// True if the network exists.
    pub fn has_network(&self, network: NetworkId) -> bool {
        self.networks.contains_key(&network)
    }

    /// Attaches `port` to `network`; with `Some(security)` its frames are
    /// checked against the given addresses.
    pub fn add_port(
        &mut self,
        port: PortId,
        network: NetworkId,
        security: Option<PortSecurity>,
    ) -> Result<(), BridgeError> {
        if self.ports.contains_key(&port) {
            return Err(BridgeError::PortExists(port));
        }
        if let Some(sec) = &security {
            check_station_mac(sec.mac)?;
        }
        let net = self
            .networks
            .get_mut(&network)
            .ok_or(BridgeError::NoSuchNetwork(network))?;
        net.ports.push(port);
        self.ports.insert(
            port,
            Port {
                network,
                security,
                drops: DropCounters::default(),
            },
        );
        Ok(())
    }

    /// Replaces the port security of an attached port (for example when an
    /// endpoint gains an address).
    pub fn set_port_security(
        &mut self,
        port: PortId,
        security: Option<PortSecurity>,
    ) -> Result<(), BridgeError> {
        if let Some(sec) = &security {
            check_station_mac(sec.mac)?;
        }
        let p = self
            .ports
            .get_mut(&port)
            .ok_or(BridgeError::NoSuchPort(port))?;
        p.security = security;
        Ok(())
    }

    /// Detaches `port` and forgets every MAC behind it. False if it was not
    /// attached.
    pub fn remove_port(&mut self, port: PortId) -> bool {
        let Some(p) = self.ports.remove(&port) else {
            return false;
        };
        if let Some(net) = self.networks.get_mut(&p.network) {
            net.ports.retain(|q| *q != port);
        }
        self.fdb.remove_port(port);
        true
    }

    /// Pins `mac` to `port` in `network` (for example the gateway's MAC): it
    /// never ages and no other port can take it over by sending from it.
    pub fn set_static_mac(
        &mut self,
        network: NetworkId,
        mac: MacAddr,
        port: PortId,
    ) -> Result<(), BridgeError> {
        check_station_mac(mac)?;
        if !self.networks.contains_key(&network) {
            return Err(BridgeError::NoSuchNetwork(network));
        }
        let p = self.ports.get(&port).ok_or(BridgeError::NoSuchPort(port))?;
        if p.network != network {
            return Err(BridgeError::PortNotInNetwork {
                port,
                network,
                actual: p.network,
            });
        }
        self.fdb.set_static(network, mac, port);
        Ok(())
    }

    /// Unpins (or forgets) `mac` in `network`; true if it was known.
    pub fn remove_mac(&mut self, network: NetworkId, mac: MacAddr) -> bool {
        self.fdb.remove(network, mac).is_some()
    }

    /// Decides what to do with `frame`, which arrived on `ingress` at `now`,
    /// and learns its source address.
    pub fn process(&mut self, ingress: PortId, frame: &[u8], now: Instant) -> Action {
        let Some(port) = self.ports.get(&ingress) else {
            self.drops.bump(DropReason::UnknownPort);
            return Action::Drop(DropReason::UnknownPort);
        };
        let network = port.network;
        let admitted = admit(port, frame).and_then(|(src, dst)| {
            self.fdb.learn(network, src, ingress, now);
            forward(&self.fdb, network, ingress, dst, now).1
        });
        match admitted {
            Ok(action) => action,
            Err(reason) => {
                self.drops.bump(reason);
                if let Some(p) = self.ports.get_mut(&ingress) {
                    p.drops.bump(reason);
                }
                Action::Drop(reason)
            }
        }
    }

    /// What [`Bridge::process`] would decide for `frame` on `ingress` at
    /// `now`, with what it looked at, changing nothing: no MAC is learned,
    /// no counter moves. The same checks and the same lookup as `process`
    /// (one code path, so `vswitch trace` cannot drift from the datapath);
    /// the one difference is that `process` learns the source before it
    /// looks the destination up, which matters only for a frame addressed
    /// to its own source MAC.
    pub fn decide(&self, ingress: PortId, frame: &[u8], now: Instant) -> Decision {
        let Some(port) = self.ports.get(&ingress) else {
            return Decision {
                network: None,
                secured: false,
                lookup: Lookup::NotReached,
                action: Action::Drop(DropReason::UnknownPort),
            };
        };
        let network = port.network;
        let secured = port.security.is_some();
        let (lookup, action) = match admit(port, frame) {
            Ok((_, dst)) => match forward(&self.fdb, network, ingress, dst, now) {
                (lookup, Ok(action)) => (lookup, action),
                (lookup, Err(reason)) => (lookup, Action::Drop(reason)),
            },
            Err(reason) => (Lookup::NotReached, Action::Drop(reason)),
        };
        Decision {
            network: Some(network),
            secured,
            lookup,
            action,
        }
    }

    /// Counts a frame dropped on ingress at `port` before it reached
    /// [`Bridge::process`] (a TAP frame whose `virtio_net_hdr` is bad, say).
    pub fn count_drop(&mut self, port: PortId, reason: DropReason) {
        self.drops.bump(reason);
        if let Some(p) = self.ports.get_mut(&port) {
            p.drops.bump(reason);
        }
    }

    /// The ports of `network` (empty if it does not exist), for flooding.
    pub fn ports(&self, network: NetworkId) -> &[PortId] {
        self.networks
            .get(&network)
            .map(|n| n.ports.as_slice())
            .unwrap_or(&[])
    }

    /// The network `port` is attached to.
    pub fn network_of(&self, port: PortId) -> Option<NetworkId> {
        self.ports.get(&port).map(|p| p.network)
    }

    /// The port security of `port`, if it is attached and secured.
    pub fn port_security(&self, port: PortId) -> Option<&PortSecurity> {
        self.ports.get(&port).and_then(|p| p.security.as_ref())
    }

    /// Ages out MAC entries.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.fdb.handle_timeout(now);
    }

    /// When [`Self::handle_timeout`] next has work, if ever.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.fdb.poll_timeout()
    }

    /// Dropped frames by reason, over all ports.
    pub fn drops(&self) -> &DropCounters {
        &self.drops
    }

    /// Frames dropped on ingress at `port` (0 if it is not attached).
    pub fn port_drops(&self, port: PortId) -> u64 {
        self.ports.get(&port).map_or(0, |p| p.drops.total())
    }

    /// Frames dropped on ingress at `port`, by reason (all zero if it is
    /// not attached).
    pub fn port_drop_reasons(&self, port: PortId) -> DropCounters {
        self.ports.get(&port).map(|p| p.drops).unwrap_or_default()
    }

    /// Learned MAC entries in `network` (the entries its bound limits).
    pub fn fdb_learned_in_network(&self, network: NetworkId) -> usize {
        self.fdb.learned_in_network(network)
    }

    /// The bridge domains.
    pub fn networks(&self) -> impl Iterator<Item = NetworkId> + '_ {
        self.networks.keys().copied()
    }

    /// Counters of the forwarding database (misses when full, moves, aging).
    pub fn fdb_stats(&self) -> &FdbStats {
        self.fdb.stats()
    }

    /// The MAC entries of `network`, learned and static.
    pub fn fdb_entries(&self, network: NetworkId) -> impl Iterator<Item = FdbEntryView> + '_ {
        self.fdb.entries(network)
    }

    /// Where `mac` is in `network` at `now`, if known.
    pub fn lookup(&self, network: NetworkId, mac: MacAddr, now: Instant) -> Option<PortId> {
        self.fdb.lookup(network, mac, now)
    }
}

fn check_station_mac(mac: MacAddr) -> Result<(), BridgeError> {
    if mac.is_multicast() || mac.is_zero() {
        Err(BridgeError::InvalidMac(mac))
    } else {
        Ok(())
    }
}

/// True for 01:80:c2:00:00:00 to 01:80:c2:00:00:0f (IEEE 802.1D 7.12.6).
#[inline]
fn is_reserved_group(mac: MacAddr) -> bool {
    let m = mac.0;
    m[..5] == [0x01, 0x80, 0xc2, 0x00, 0x00] && m[5] & 0xf0 == 0
}

/// The checks a frame passes before it is learned and looked up: it
/// parses, its source is a station address, a secured port sends only
/// with its own addresses, its destination is not a reserved group.
/// Returns the source and destination MACs.
#[inline]
fn admit(port: &Port, frame: &[u8]) -> Result<(MacAddr, MacAddr), DropReason> {
    let eth = EthernetFrame::new_checked(frame).map_err(|_| DropReason::Malformed)?;
    let src = eth.src();
    if src.is_multicast() || src.is_zero() {
        return Err(DropReason::InvalidSource);
    }
    if let Some(security) = &port.security {
        check_security(security, &eth)?;
    }
    let dst = eth.dst();
    if dst.is_multicast() && is_reserved_group(dst) {
        return Err(DropReason::ReservedGroup);
    }
    Ok((src, dst))
}

/// Where a frame to `dst` from `ingress` goes in `network`: group
/// addresses and unknown unicast flood, a known MAC goes to its port (or
/// is dropped when that is the ingress).
#[inline]
fn forward(
    fdb: &Fdb,
    network: NetworkId,
    ingress: PortId,
    dst: MacAddr,
    now: Instant,
) -> (Lookup, Result<Action, DropReason>) {
    let flood = Action::Flood {
        network,
        except: ingress,
    };
    if dst.is_multicast() {
        return (Lookup::Group, Ok(flood));
    }
    match fdb.lookup_entry(network, dst, now) {
        Some((out, pinned)) => {
            let lookup = Lookup::Hit { port: out, pinned };
            if out == ingress {
                (lookup, Err(DropReason::SameSegment))
            } else {
                (lookup, Ok(Action::Forward(out)))
            }
        }
        None => (Lookup::Miss, Ok(flood)),
    }
}

fn check_security(sec: &PortSecurity, eth: &EthernetFrame<&[u8]>) -> Result<(), DropReason> {
    if eth.src() != sec.mac {
        return Err(DropReason::SpoofedMac);
    }
    match eth.ethertype() {
        EtherType::Ipv4 => {
            let src = wire::ipv4_source(eth.payload()).map_err(|_| DropReason::Malformed)?;
            if sec.ipv4.contains(&src) {
                Ok(())
            } else {
                Err(DropReason::SpoofedIp)
            }
        }
        EtherType::Arp => {
            let arp = ArpRepr::parse(eth.payload()).map_err(|_| DropReason::Malformed)?;
            if arp.sender_mac != sec.mac {
                return Err(DropReason::SpoofedMac);
            }
            let probe = arp.operation == ArpOperation::Request && arp.sender_ip.is_unspecified();
            if probe || sec.ipv4.contains(&arp.sender_ip) {
                Ok(())
            } else {
                Err(DropReason::SpoofedIp)
            }
        }
        EtherType::Ipv6 => {
            let ip = Ipv6Summary::parse(eth.payload()).map_err(|_| DropReason::Malformed)?;
            if !ipv6_allowed(sec, &ip.src) && !ip.src.is_unspecified() {
                return Err(DropReason::SpoofedIp);
            }
            let Some(ndp) = ip.ndp else {
                return Ok(());
            };
            match ndp.kind {
                NdpKind::RouterAdvert | NdpKind::Redirect => {
                    return Err(DropReason::RogueRouter);
                }
                NdpKind::NeighborAdvert => {
                    if !ndp.target.is_some_and(|t| ipv6_allowed(sec, &t)) {
                        return Err(DropReason::SpoofedIp);
                    }
                }
                NdpKind::RouterSolicit | NdpKind::NeighborSolicit => {}
            }
            let lladdr_ok = |mac: Option<MacAddr>| mac.is_none_or(|m| m == sec.mac);
            if lladdr_ok(ndp.source_lladdr) && lladdr_ok(ndp.target_lladdr) {
                Ok(())
            } else {
                Err(DropReason::SpoofedMac)
            }
        }
        EtherType::Vlan | EtherType::ServiceVlan | EtherType::Unknown(_) => {
            Err(DropReason::EtherType)
        }
    }
}

fn ipv6_allowed(sec: &PortSecurity, ip: &Ipv6Addr) -> bool {
    wire::is_ipv6_link_local(ip) || sec.ipv6.contains(ip)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{
        build_arp, build_arp_reply, build_arp_request, build_icmpv6, build_ipv4_udp,
        build_ipv6_udp, build_neighbor_advert, build_neighbor_solicit, build_router_advert,
        Ipv6Endpoints,
    };
    use proptest::prelude::*;
    use rstest::rstest;
    use std::net::{SocketAddrV4, SocketAddrV6};

    const NET_A: NetworkId = NetworkId(10);
    const NET_B: NetworkId = NetworkId(20);
    const P1: PortId = PortId(1);
    const P2: PortId = PortId(2);
    const P3: PortId = PortId(3);
    const P4: PortId = PortId(4);
    const P5: PortId = PortId(5);
    const M1: MacAddr = MacAddr([0x02, 0, 0, 0, 0, 1]);
    const M2: MacAddr = MacAddr([0x02, 0, 0, 0, 0, 2]);
    const M3: MacAddr = MacAddr([0x02, 0, 0, 0, 0, 3]);
    const M4: MacAddr = MacAddr([0x02, 0, 0, 0, 0, 4]);
    const M9: MacAddr = MacAddr([0x02, 0, 0, 0, 0, 9]);
    const V4_1: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
    const V4_2: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
    const V4_OTHER: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 99);

    fn v6(s: &str) -> Ipv6Addr {
        s.parse().unwrap()
    }

    fn v6_1() -> Ipv6Addr {
        v6("fd00::1")
    }

    fn security(mac: MacAddr, ipv4: Ipv4Addr, ipv6: &str) -> PortSecurity {
        PortSecurity {
            mac,
            ipv4: vec![ipv4],
            ipv6: vec![v6(ipv6)],
        }
    }

    /// Network A: P1 and P2 secured (M1, M2), P3 trusted (a gateway).
    /// Network B: P4 and P5 trusted.
    fn bridge_with(config: BridgeConfig) -> Bridge {
        let mut bridge = Bridge::new(config);
        bridge.add_network(NET_A).unwrap();
        bridge.add_network(NET_B).unwrap();
        bridge
            .add_port(P1, NET_A, Some(security(M1, V4_1, "fd00::1")))
            .unwrap();
        bridge
            .add_port(P2, NET_A, Some(security(M2, V4_2, "fd00::2")))
            .unwrap();
        bridge.add_port(P3, NET_A, None).unwrap();
        bridge.add_port(P4, NET_B, None).unwrap();
        bridge.add_port(P5, NET_B, None).unwrap();
        bridge
    }

    fn bridge() -> Bridge {
        bridge_with(BridgeConfig::default())
    }

    /// A plain Ethernet frame with an unvalidated payload (for trusted ports).
    fn raw(src: MacAddr, dst: MacAddr) -> Vec<u8> {
        let mut f = vec![0u8; 60];
        f[..6].copy_from_slice(&dst.0);
        f[6..12].copy_from_slice(&src.0);
        f[12..14].copy_from_slice(&[0x88, 0xb5]); // local experimental
        f
    }

    fn udp4(src_mac: MacAddr, dst_mac: MacAddr, src: Ipv4Addr, dst: Ipv4Addr) -> Vec<u8> {
        build_ipv4_udp(
            src_mac,
            dst_mac,
            SocketAddrV4::new(src, 40000),
            SocketAddrV4::new(dst, 53),
            &[0; 18],
        )
    }

    fn udp6(src_mac: MacAddr, src: Ipv6Addr) -> Vec<u8> {
        build_ipv6_udp(
            src_mac,
            M2,
            SocketAddrV6::new(src, 40000, 0, 0),
            SocketAddrV6::new(v6("fd00::2"), 53, 0, 0),
            &[0; 8],
        )
    }

    fn with_src(mut frame: Vec<u8>, src: MacAddr) -> Vec<u8> {
        EthernetFrame::new_checked(&mut frame[..])
            .unwrap()
            .set_src(src);
        frame
    }

    fn advert(target: &str, tlla: Option<MacAddr>) -> Vec<u8> {
        build_neighbor_advert(
            Ipv6Endpoints {
                src_mac: M1,
                dst_mac: M2,
                src_ip: v6_1(),
                dst_ip: v6("fd00::2"),
            },
            v6(target),
            tlla,
        )
    }

    #[test]
    fn learns_then_forwards_unicast() {
        let now = Instant::now();
        let mut b = bridge();
        let a_to_gw = udp4(M1, M3, V4_1, V4_2);
        assert_eq!(
            b.process(P1, &a_to_gw, now),
            Action::Flood {
                network: NET_A,
                except: P1
            }
        );
        let gw_to_a = raw(M3, M1);
        assert_eq!(b.process(P3, &gw_to_a, now), Action::Forward(P1));
        assert_eq!(b.process(P1, &a_to_gw, now), Action::Forward(P3));
        assert_eq!(b.lookup(NET_A, M1, now), Some(P1));
        assert_eq!(b.drops().total(), 0);
    }

    #[rstest]
    #[case::broadcast(MacAddr::BROADCAST)]
    #[case::ipv4_multicast(MacAddr([0x01, 0x00, 0x5e, 0x00, 0x00, 0xfb]))]
    #[case::ipv6_multicast(MacAddr([0x33, 0x33, 0, 0, 0, 1]))]
    #[case::unknown_unicast(M9)]
    fn floods_within_the_ingress_network(#[case] dst: MacAddr) {
        let now = Instant::now();
        let mut b = bridge();
        // M9 known in network B must not matter to network A.
        b.process(P4, &raw(M9, M4), now);
        let action = b.process(P3, &raw(M3, dst), now);
        assert_eq!(
            action,
            Action::Flood {
                network: NET_A,
                except: P3
            }
        );
        assert_eq!(b.ports(NET_A), &[P1, P2, P3]);
        assert_eq!(b.ports(NET_B), &[P4, P5]);
    }

    #[test]
    fn networks_are_isolated() {
        let now = Instant::now();
        let mut b = bridge();
        // M4 lives on network B.
        assert!(matches!(
            b.process(P4, &raw(M4, M9), now),
            Action::Flood { network: NET_B, .. }
        ));
        // A frame to M4 from network A floods in A, never forwards to P4.
        assert_eq!(
            b.process(P3, &raw(M3, M4), now),
            Action::Flood {
                network: NET_A,
                except: P3
            }
        );
        // The same MAC may live in both networks at once, independently.
        b.process(P3, &raw(M4, M9), now);
        assert_eq!(b.process(P5, &raw(M9, M4), now), Action::Forward(P4));
        assert_eq!(
            b.process(P1, &udp4(M1, M4, V4_1, V4_2), now),
            Action::Forward(P3)
        );
        assert_eq!(b.fdb_entries(NET_B).count(), 2, "M4 and M9");
        assert_eq!(b.fdb_entries(NET_A).count(), 3, "M1, M3 and M4");
    }

    #[test]
    fn same_segment_is_dropped() {
        let now = Instant::now();
        let mut b = bridge();
        b.process(P4, &raw(M4, M9), now);
        b.process(P4, &raw(M3, M9), now);
        assert_eq!(
            b.process(P4, &raw(M4, M3), now),
            Action::Drop(DropReason::SameSegment)
        );
        assert_eq!(b.drops().get(DropReason::SameSegment), 1);
        assert_eq!(b.port_drops(P4), 1);
        assert_eq!(b.port_drop_reasons(P4).get(DropReason::SameSegment), 1);
        assert_eq!(b.fdb_learned_in_network(NET_B), 2, "M4 and M3");
    }

    #[rstest]
    #[case::multicast_source(MacAddr([0x01, 0, 0x5e, 0, 0, 1]), DropReason::InvalidSource)]
    #[case::broadcast_source(MacAddr::BROADCAST, DropReason::InvalidSource)]
    #[case::zero_source(MacAddr([0; 6]), DropReason::InvalidSource)]
    fn invalid_sources_are_dropped_and_not_learned(
        #[case] src: MacAddr,
        #[case] reason: DropReason,
    ) {
        let now = Instant::now();
        let mut b = bridge();
        assert_eq!(b.process(P4, &raw(src, M9), now), Action::Drop(reason));
        assert_eq!(b.fdb_entries(NET_B).count(), 0);
        assert_eq!(b.drops().get(reason), 1);
        assert_eq!(b.port_drops(P4), 1);
    }

    #[test]
    fn short_frames_and_unknown_ports_are_dropped() {
        let now = Instant::now();
        let mut b = bridge();
        assert_eq!(
            b.process(P4, &[0u8; 13], now),
            Action::Drop(DropReason::Malformed)
        );
        assert_eq!(b.process(P4, &[], now), Action::Drop(DropReason::Malformed));
        assert_eq!(
            b.process(PortId(99), &raw(M9, M4), now),
            Action::Drop(DropReason::UnknownPort)
        );
        assert_eq!(b.drops().get(DropReason::Malformed), 2);
        assert_eq!(b.drops().get(DropReason::UnknownPort), 1);
        assert_eq!(b.port_drops(P4), 2);
        // By reason at the port too; an unknown port has none.
        assert_eq!(b.port_drop_reasons(P4).get(DropReason::Malformed), 2);
        assert_eq!(b.port_drop_reasons(P4).total(), 2);
        assert_eq!(b.port_drop_reasons(PortId(99)).total(), 0);
        assert_eq!(b.port_drops(PortId(99)), 0);
        assert_eq!(b.drops().total(), 3);
    }

    #[rstest]
    #[case::stp(0x00)]
    #[case::pause(0x01)]
    #[case::lacp(0x02)]
    #[case::lldp(0x0e)]
    fn reserved_groups_are_not_forwarded(#[case] last: u8) {
        let now = Instant::now();
        let mut b = bridge();
        let dst = MacAddr([0x01, 0x80, 0xc2, 0, 0, last]);
        assert_eq!(
            b.process(P4, &raw(M4, dst), now),
            Action::Drop(DropReason::ReservedGroup)
        );
        // 01:80:c2:00:00:10 is outside the reserved block.
        let dst = MacAddr([0x01, 0x80, 0xc2, 0, 0, 0x10]);
        assert!(matches!(
            b.process(P4, &raw(M4, dst), now),
            Action::Flood { .. }
        ));
    }

    fn ipv4_own() -> Vec<u8> {
        udp4(M1, M2, V4_1, V4_2)
    }
    fn ipv4_spoofed_mac() -> Vec<u8> {
        udp4(M9, M2, V4_1, V4_2)
    }
    fn ipv4_spoofed_ip() -> Vec<u8> {
        udp4(M1, M2, V4_OTHER, V4_2)
    }
    fn ipv4_truncated() -> Vec<u8> {
        let mut f = ipv4_own();
        f.truncate(14 + 12);
        f
    }
    fn ipv4_bad_version() -> Vec<u8> {
        let mut f = ipv4_own();
        f[14] = 0x65;
        f
    }
    fn arp_request_own() -> Vec<u8> {
        build_arp_request(M1, V4_1, V4_2)
    }
    fn arp_probe() -> Vec<u8> {
        build_arp_request(M1, Ipv4Addr::UNSPECIFIED, V4_1)
    }
    fn arp_reply_own() -> Vec<u8> {
        build_arp_reply(M1, V4_1, M2, V4_2)
    }
    fn arp_reply_unspecified() -> Vec<u8> {
        build_arp_reply(M1, Ipv4Addr::UNSPECIFIED, M2, V4_2)
    }
    fn arp_claims_other_ip() -> Vec<u8> {
        build_arp_reply(M1, V4_2, M3, Ipv4Addr::new(10, 0, 0, 254))
    }
    fn arp_sender_mac_mismatch() -> Vec<u8> {
        with_src(build_arp_reply(M9, V4_1, M2, V4_2), M1)
    }
    fn arp_truncated() -> Vec<u8> {
        let mut f = arp_request_own();
        f.truncate(14 + 20);
        f
    }
    fn arp_not_ethernet() -> Vec<u8> {
        let mut f = arp_request_own();
        f[15] = 6;
        f
    }
    fn ipv6_own() -> Vec<u8> {
        udp6(M1, v6_1())
    }
    fn ipv6_link_local() -> Vec<u8> {
        udp6(M1, v6("fe80::1"))
    }
    fn ipv6_spoofed() -> Vec<u8> {
        udp6(M1, v6("fd00::2"))
    }
    fn ipv6_bad_header() -> Vec<u8> {
        let mut f = ipv6_own();
        f[14] = 0x45;
        f
    }
    fn dad_probe() -> Vec<u8> {
        build_neighbor_solicit(M1, Ipv6Addr::UNSPECIFIED, v6_1())
    }
    fn solicit_own() -> Vec<u8> {
        build_neighbor_solicit(M1, v6_1(), v6("fd00::2"))
    }
    fn solicit_foreign_lladdr() -> Vec<u8> {
        with_src(build_neighbor_solicit(M9, v6_1(), v6("fd00::2")), M1)
    }
    fn advert_own() -> Vec<u8> {
        advert("fd00::1", Some(M1))
    }
    fn advert_link_local() -> Vec<u8> {
        advert("fe80::1", None)
    }
    fn advert_spoofed_target() -> Vec<u8> {
        advert("fd00::2", Some(M1))
    }
    fn advert_foreign_lladdr() -> Vec<u8> {
        advert("fd00::1", Some(M9))
    }
    fn router_advert() -> Vec<u8> {
        build_router_advert(M1, v6("fe80::1"))
    }
    fn redirect() -> Vec<u8> {
        let addrs = Ipv6Endpoints {
            src_mac: M1,
            dst_mac: M2,
            src_ip: v6("fe80::1"),
            dst_ip: v6("fd00::2"),
        };
        build_icmpv6(addrs, 137, 0, [0; 4], &[0; 32])
    }
    fn echo6() -> Vec<u8> {
        let addrs = Ipv6Endpoints {
            src_mac: M1,
            dst_mac: M2,
            src_ip: v6_1(),
            dst_ip: v6("fd00::2"),
        };
        build_icmpv6(addrs, 128, 0, [0, 1, 0, 1], b"ping")
    }
    fn vlan_tagged() -> Vec<u8> {
        let mut f = ipv4_own();
        f.splice(12..12, [0x81, 0x00, 0x00, 0x05]);
        f
    }
    fn unknown_ethertype() -> Vec<u8> {
        raw(M1, M2)
    }

    #[rstest]
    #[case::ipv4_own(ipv4_own, None)]
    #[case::ipv4_spoofed_mac(ipv4_spoofed_mac, Some(DropReason::SpoofedMac))]
    #[case::ipv4_spoofed_ip(ipv4_spoofed_ip, Some(DropReason::SpoofedIp))]
    #[case::ipv4_truncated(ipv4_truncated, Some(DropReason::Malformed))]
    #[case::ipv4_bad_version(ipv4_bad_version, Some(DropReason::Malformed))]
    #[case::arp_request_own(arp_request_own, None)]
    #[case::arp_probe(arp_probe, None)]
    #[case::arp_reply_own(arp_reply_own, None)]
    #[case::arp_reply_unspecified(arp_reply_unspecified, Some(DropReason::SpoofedIp))]
    #[case::arp_claims_other_ip(arp_claims_other_ip, Some(DropReason::SpoofedIp))]
    #[case::arp_sender_mac_mismatch(arp_sender_mac_mismatch, Some(DropReason::SpoofedMac))]
    #[case::arp_truncated(arp_truncated, Some(DropReason::Malformed))]
    #[case::arp_not_ethernet(arp_not_ethernet, Some(DropReason::Malformed))]
    #[case::ipv6_own(ipv6_own, None)]
    #[case::ipv6_link_local(ipv6_link_local, None)]
    #[case::ipv6_spoofed(ipv6_spoofed, Some(DropReason::SpoofedIp))]
    #[case::ipv6_bad_header(ipv6_bad_header, Some(DropReason::Malformed))]
    #[case::dad_probe(dad_probe, None)]
    #[case::solicit_own(solicit_own, None)]
    #[case::solicit_foreign_lladdr(solicit_foreign_lladdr, Some(DropReason::SpoofedMac))]
    #[case::advert_own(advert_own, None)]
    #[case::advert_link_local(advert_link_local, None)]
    #[case::advert_spoofed_target(advert_spoofed_target, Some(DropReason::SpoofedIp))]
    #[case::advert_foreign_lladdr(advert_foreign_lladdr, Some(DropReason::SpoofedMac))]
    #[case::router_advert(router_advert, Some(DropReason::RogueRouter))]
    #[case::redirect(redirect, Some(DropReason::RogueRouter))]
    #[case::echo6(echo6, None)]
    #[case::vlan_tagged(vlan_tagged, Some(DropReason::EtherType))]
    #[case::unknown_ethertype(unknown_ethertype, Some(DropReason::EtherType))]
    fn port_security(#[case] make: fn() -> Vec<u8>, #[case] expected: Option<DropReason>) {
        let now = Instant::now();
        let frame = make();
        let mut b = bridge();
        let action = b.process(P1, &frame, now);
        match expected {
            None => {
                assert!(!matches!(action, Action::Drop(_)), "dropped: {action:?}");
                assert_eq!(b.lookup(NET_A, M1, now), Some(P1));
            }
            Some(reason) => {
                assert_eq!(action, Action::Drop(reason));
                assert_eq!(b.drops().get(reason), 1);
                assert_eq!(b.drops().total(), 1);
                assert_eq!(b.port_drops(P1), 1);
                assert_eq!(b.port_drops(P2), 0);
                assert_eq!(
                    b.fdb_entries(NET_A).count(),
                    0,
                    "a refused frame teaches nothing"
                );
            }
        }
        // The trusted port of the same network never applies these checks.
        let mut b = bridge();
        let action = b.process(P3, &frame, now);
        assert!(
            !matches!(action, Action::Drop(_)) || action == Action::Drop(DropReason::InvalidSource),
            "trusted port dropped {action:?}"
        );
    }

    #[test]
    fn security_updates_take_effect() {
        let now = Instant::now();
        let mut b = bridge();
        let frame = udp4(M1, M2, V4_OTHER, V4_2);
        assert_eq!(
            b.process(P1, &frame, now),
            Action::Drop(DropReason::SpoofedIp)
        );
        let mut sec = b.port_security(P1).unwrap().clone();
        sec.ipv4.push(V4_OTHER);
        b.set_port_security(P1, Some(sec)).unwrap();
        assert!(matches!(b.process(P1, &frame, now), Action::Flood { .. }));
        b.set_port_security(P1, None).unwrap();
        assert!(b.port_security(P1).is_none());
        assert_eq!(
            b.set_port_security(PortId(99), None),
            Err(BridgeError::NoSuchPort(PortId(99)))
        );
        let bad = PortSecurity {
            mac: MacAddr::BROADCAST,
            ipv4: vec![],
            ipv6: vec![],
        };
        assert_eq!(
            b.set_port_security(P1, Some(bad)),
            Err(BridgeError::InvalidMac(MacAddr::BROADCAST))
        );
    }

    #[test]
    fn aging_through_the_bridge_and_static_macs() {
        let t0 = Instant::now();
        let aging = Duration::from_secs(30);
        let mut b = bridge_with(BridgeConfig {
            aging,
            ..BridgeConfig::default()
        });
        b.set_static_mac(NET_A, M3, P3).unwrap();
        b.process(P1, &ipv4_own(), t0);
        assert_eq!(b.process(P3, &raw(M3, M1), t0), Action::Forward(P1));
        assert_eq!(b.poll_timeout(), Some(t0 + aging));
        let later = t0 + aging;
        assert_eq!(
            b.process(P3, &raw(M3, M1), later),
            Action::Flood {
                network: NET_A,
                except: P3
            }
        );
        b.handle_timeout(later);
        assert_eq!(
            b.fdb_entries(NET_A).count(),
            1,
            "only the static entry remains"
        );
        assert_eq!(b.poll_timeout(), None);
        // The static MAC still forwards long after.
        let much_later = t0 + Duration::from_secs(100_000);
        assert_eq!(
            b.process(P4, &raw(M4, M3), much_later),
            Action::Flood {
                network: NET_B,
                except: P4
            }
        );
        let to_gw = udp4(M1, M3, V4_1, V4_2);
        assert_eq!(b.process(P1, &to_gw, much_later), Action::Forward(P3));
    }

    #[test]
    fn static_mac_is_not_taken_over() {
        let now = Instant::now();
        let mut b = bridge();
        b.set_static_mac(NET_B, M9, P5).unwrap();
        // A trusted port sending from M9 does not move it.
        assert!(matches!(
            b.process(P4, &raw(M9, M4), now),
            Action::Flood { .. }
        ));
        assert_eq!(b.lookup(NET_B, M9, now), Some(P5));
        assert_eq!(b.fdb_stats().static_conflicts, 1);
        let entry = b.fdb_entries(NET_B).find(|e| e.mac == M9).unwrap();
        assert_eq!((entry.port, entry.last_seen), (P5, None));
    }

    #[rstest]
    #[case::no_network(NetworkId(99), M9, P1, BridgeError::NoSuchNetwork(NetworkId(99)))]
    #[case::no_port(NET_A, M9, PortId(99), BridgeError::NoSuchPort(PortId(99)))]
    #[case::other_network(NET_A, M9, P4, BridgeError::PortNotInNetwork { port: P4, network: NET_A, actual: NET_B })]
    #[case::multicast(
        NET_A,
        MacAddr::BROADCAST,
        P1,
        BridgeError::InvalidMac(MacAddr::BROADCAST)
    )]
    #[case::zero(NET_A, MacAddr([0; 6]), P1, BridgeError::InvalidMac(MacAddr([0; 6])))]
    fn set_static_mac_errors(
        #[case] network: NetworkId,
        #[case] mac: MacAddr,
        #[case] port: PortId,
        #[case] error: BridgeError,
    ) {
        let mut b = bridge();
        assert_eq!(b.set_static_mac(network, mac, port), Err(error));
    }

    #[test]
    fn control_errors() {
        let mut b = bridge();
        assert_eq!(b.add_network(NET_A), Err(BridgeError::NetworkExists(NET_A)));
        assert_eq!(
            b.add_port(P1, NET_B, None),
            Err(BridgeError::PortExists(P1))
        );
        assert_eq!(
            b.add_port(PortId(7), NetworkId(99), None),
            Err(BridgeError::NoSuchNetwork(NetworkId(99)))
        );
        let bad = PortSecurity {
            mac: MacAddr([0x01, 0, 0, 0, 0, 1]),
            ipv4: vec![],
            ipv6: vec![],
        };
        assert_eq!(
            b.add_port(PortId(7), NET_A, Some(bad)),
            Err(BridgeError::InvalidMac(MacAddr([0x01, 0, 0, 0, 0, 1])))
        );
        assert_eq!(b.ports(NET_A), &[P1, P2, P3], "failed adds leave no trace");
        assert!(b.has_network(NET_A));
        assert!(!b.has_network(NetworkId(99)));
        assert!(b.ports(NetworkId(99)).is_empty());
        let msg = BridgeError::PortNotInNetwork {
            port: P4,
            network: NET_A,
            actual: NET_B,
        }
        .to_string();
        assert!(
            msg.contains("PortId(4)") && msg.contains("NetworkId(20)"),
            "{msg}"
        );
    }

    #[test]
    fn table_limits_through_the_bridge() {
        let now = Instant::now();
        let mut b = bridge_with(BridgeConfig {
            fdb_max_per_network: 3,
            fdb_max_per_port: 2,
            ..BridgeConfig::default()
        });
        let macs: Vec<MacAddr> = (10..15).map(|n| MacAddr([0x02, 0, 0, 0, 1, n])).collect();
        for m in &macs {
            b.process(P4, &raw(*m, MacAddr::BROADCAST), now);
        }
        assert_eq!(b.fdb_entries(NET_B).count(), 2, "per-port bound");
        assert_eq!(b.fdb_stats().not_learned, 3);
        // Frames to an address that was not learned flood.
        assert_eq!(
            b.process(P5, &raw(M9, macs[4]), now),
            Action::Flood {
                network: NET_B,
                except: P5
            }
        );
        assert_eq!(b.process(P5, &raw(M9, macs[0]), now), Action::Forward(P4));
        // The network bound is 3: P5 got one in (M9), the next is refused.
        b.process(P5, &raw(M4, MacAddr::BROADCAST), now);
        assert_eq!(b.fdb_entries(NET_B).count(), 3, "per-network bound");
        // Known addresses still refresh and forward.
        assert_eq!(b.process(P4, &raw(macs[1], M9), now), Action::Forward(P5));
    }

    #[test]
    fn station_move() {
        let now = Instant::now();
        let mut b = bridge();
        b.process(P4, &raw(M9, MacAddr::BROADCAST), now);
        assert_eq!(b.process(P5, &raw(M4, M9), now), Action::Forward(P4));
        b.process(P5, &raw(M9, MacAddr::BROADCAST), now);
        assert_eq!(b.lookup(NET_B, M9, now), Some(P5));
        assert_eq!(b.process(P4, &raw(M4, M9), now), Action::Forward(P5));
        assert_eq!(
            b.process(P5, &raw(M2, M9), now),
            Action::Drop(DropReason::SameSegment)
        );
        assert_eq!(b.fdb_stats().moves, 2, "M9 then M4 moved");
    }

    #[test]
    fn remove_port_flushes_its_entries() {
        let now = Instant::now();
        let mut b = bridge();
        b.process(P4, &raw(M4, MacAddr::BROADCAST), now);
        b.process(P4, &raw(M9, MacAddr::BROADCAST), now);
        b.process(P5, &raw(M2, MacAddr::BROADCAST), now);
        b.process(P4, &[0; 3], now);
        assert!(b.remove_port(P4));
        assert!(!b.remove_port(P4));
        assert_eq!(b.ports(NET_B), &[P5]);
        assert_eq!(b.network_of(P4), None);
        assert_eq!(b.port_drops(P4), 0);
        assert_eq!(
            b.fdb_entries(NET_B).map(|e| e.mac).collect::<Vec<_>>(),
            vec![M2]
        );
        assert_eq!(
            b.process(P5, &raw(M2, M4), now),
            Action::Flood {
                network: NET_B,
                except: P5
            }
        );
        assert_eq!(
            b.process(P4, &raw(M4, M2), now),
            Action::Drop(DropReason::UnknownPort)
        );
        // The id can be reused, even in another network.
        b.add_port(P4, NET_A, None).unwrap();
        assert_eq!(b.network_of(P4), Some(NET_A));
    }

    #[test]
    fn remove_network_detaches_its_ports() {
        let now = Instant::now();
        let mut b = bridge();
        b.process(P4, &raw(M4, MacAddr::BROADCAST), now);
        b.process(P3, &raw(M3, MacAddr::BROADCAST), now);
        assert_eq!(b.remove_network(NET_B), vec![P4, P5]);
        assert!(b.remove_network(NET_B).is_empty());
        assert_eq!(b.network_of(P4), None);
        assert_eq!(b.fdb_entries(NET_B).count(), 0);
        assert_eq!(b.fdb_entries(NET_A).count(), 1);
        assert_eq!(
            b.process(P5, &raw(M9, M4), now),
            Action::Drop(DropReason::UnknownPort)
        );
        b.add_network(NET_B).unwrap();
        assert!(b.ports(NET_B).is_empty());
    }

    #[test]
    fn drop_reasons_have_distinct_names_and_counters() {
        let names: std::collections::HashSet<_> =
            DropReason::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(names.len(), DropReason::ALL.len());
        for (i, r) in DropReason::ALL.iter().enumerate() {
            assert_eq!(r.index(), i);
            assert_eq!(r.to_string(), r.as_str());
        }
        let mut c = DropCounters::default();
        c.bump(DropReason::EtherType);
        c.bump(DropReason::EtherType);
        c.bump(DropReason::SpoofedIp);
        assert_eq!(c.get(DropReason::EtherType), 2);
        assert_eq!(c.total(), 3);
        assert_eq!(c.iter().map(|(_, n)| n).sum::<u64>(), 3);
    }

    #[test]
    fn decide_explains_without_learning_or_counting() {
        let now = Instant::now();
        let mut b = bridge();
        b.set_static_mac(NET_A, M3, P3).unwrap();
        // A pinned MAC: found, forwarded, nothing learned about M1.
        let d = b.decide(P1, &udp4(M1, M3, V4_1, V4_2), now);
        assert_eq!(
            d,
            Decision {
                network: Some(NET_A),
                secured: true,
                lookup: Lookup::Hit {
                    port: P3,
                    pinned: true
                },
                action: Action::Forward(P3),
            }
        );
        assert_eq!(b.lookup(NET_A, M1, now), None);
        // Unknown unicast floods; a group address is not looked up.
        let d = b.decide(P1, &udp4(M1, M9, V4_1, V4_2), now);
        assert_eq!(d.lookup, Lookup::Miss);
        assert_eq!(
            d.action,
            Action::Flood {
                network: NET_A,
                except: P1
            }
        );
        let d = b.decide(P1, &build_arp_request(M1, V4_1, V4_2), now);
        assert_eq!(d.lookup, Lookup::Group);
        // A learned MAC is a hit, not pinned.
        b.process(P2, &udp4(M2, M3, V4_2, V4_1), now);
        let d = b.decide(P1, &udp4(M1, M2, V4_1, V4_2), now);
        assert_eq!(
            d.lookup,
            Lookup::Hit {
                port: P2,
                pinned: false
            }
        );
        // Spoofing: dropped before the lookup, for the reason `process`
        // counts, but not counted.
        let d = b.decide(P1, &udp4(M9, M3, V4_1, V4_2), now);
        assert_eq!(d.lookup, Lookup::NotReached);
        assert_eq!(d.action, Action::Drop(DropReason::SpoofedMac));
        let d = b.decide(P1, &udp4(M1, M3, V4_OTHER, V4_2), now);
        assert_eq!(d.action, Action::Drop(DropReason::SpoofedIp));
        let d = b.decide(PortId(99), &udp4(M1, M3, V4_1, V4_2), now);
        assert_eq!(d.network, None);
        assert_eq!(d.action, Action::Drop(DropReason::UnknownPort));
        assert_eq!(b.drops().total(), 0);
        assert_eq!(b.port_drops(P1), 0);
        // And `process` agrees.
        assert_eq!(
            b.process(P1, &udp4(M1, M3, V4_OTHER, V4_2), now),
            Action::Drop(DropReason::SpoofedIp)
        );
    }

    #[derive(Debug, Clone)]
    enum Step {
        Frame {
            port: u32,
            src: u8,
            dst: u8,
            kind: u8,
        },
        Raw {
            port: u32,
            bytes: Vec<u8>,
        },
        Advance(u16),
        Timeout,
        Replug(u32),
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            10 => (1..7u32, 0..8u8, 0..10u8, 0..4u8)
                .prop_map(|(port, src, dst, kind)| Step::Frame { port, src, dst, kind }),
            2 => (1..7u32, proptest::collection::vec(any::<u8>(), 0..80))
                .prop_map(|(port, bytes)| Step::Raw { port, bytes }),
            2 => any::<u16>().prop_map(Step::Advance),
            1 => Just(Step::Timeout),
            1 => (1..6u32).prop_map(Step::Replug),
        ]
    }

    /// MACs 1..=7 are stations (1 and 2 are P1's and P2's); 0 is zero; 8 is
    /// broadcast, 9 a multicast group.
    fn step_mac(n: u8) -> MacAddr {
        match n {
            8 => MacAddr::BROADCAST,
            9 => MacAddr([0x01, 0x00, 0x5e, 0, 0, 1]),
            n => MacAddr([0x02, 0, 0, 0, 0, n]),
        }
    }

    fn step_frame(src: MacAddr, dst: MacAddr, kind: u8) -> Vec<u8> {
        match kind {
            0 => raw(src, dst),
            1 => udp4(src, dst, V4_1, V4_2),
            2 => build_arp(
                dst,
                &ArpRepr {
                    operation: ArpOperation::Reply,
                    sender_mac: src,
                    sender_ip: V4_2,
                    target_mac: dst,
                    target_ip: V4_1,
                },
            ),
            _ => udp6(src, v6("fd00::2")),
        }
    }

    proptest! {
        #[test]
        fn frames_never_cross_networks_nor_return(steps in proptest::collection::vec(step(), 1..200)) {
            let mut b = bridge_with(BridgeConfig {
                aging: Duration::from_secs(20),
                fdb_max_per_network: 6,
                fdb_max_per_port: 3,
            });
            b.set_static_mac(NET_A, step_mac(3), P3).unwrap();
            let mut now = Instant::now();
            for step in steps {
                let (port, frame) = match step {
                    Step::Frame { port, src, dst, kind } => {
                        (PortId(port), step_frame(step_mac(src), step_mac(dst), kind))
                    }
                    Step::Raw { port, bytes } => (PortId(port), bytes),
                    Step::Advance(ms) => {
                        now += Duration::from_millis(u64::from(ms) * 10);
                        continue;
                    }
                    Step::Timeout => {
                        b.handle_timeout(now);
                        prop_assert!(b.poll_timeout().is_none_or(|t| t > now));
                        continue;
                    }
                    Step::Replug(p) => {
                        let network = b.network_of(PortId(p));
                        let security = b.port_security(PortId(p)).cloned();
                        prop_assert!(b.remove_port(PortId(p)));
                        prop_assert!(b.fdb_entries(NET_A).chain(b.fdb_entries(NET_B)).all(|e| e.port != PortId(p)));
                        b.add_port(PortId(p), network.unwrap(), security).unwrap();
                        continue;
                    }
                };
                let drops_before = b.drops().total();
                let network = b.network_of(port);
                // The query first: it must change nothing and agree with
                // what `process` then does.
                let table = |b: &Bridge| {
                    let mut t: Vec<_> = b.fdb_entries(NET_A).chain(b.fdb_entries(NET_B))
                        .map(|e| (e.network, e.mac, e.port, e.last_seen)).collect();
                    t.sort();
                    (t, *b.drops(), b.port_drops(port))
                };
                let before = table(&b);
                let decided = b.decide(port, &frame, now);
                prop_assert_eq!(table(&b), before);
                let to_itself = EthernetFrame::new_checked(&frame[..])
                    .is_ok_and(|e| e.src() == e.dst());
                let action = b.process(port, &frame, now);
                if !to_itself {
                    prop_assert_eq!(decided.action, action);
                }
                prop_assert_eq!(decided.network, network);
                match action {
                    Action::Forward(out) => {
                        prop_assert_ne!(out, port);
                        prop_assert_eq!(b.network_of(out), network);
                        prop_assert!(network.is_some());
                    }
                    Action::Flood { network: flooded, except } => {
                        prop_assert_eq!(Some(flooded), network);
                        prop_assert_eq!(except, port);
                    }
                    Action::Drop(reason) => {
                        prop_assert_eq!(b.drops().total(), drops_before + 1);
                        prop_assert_eq!(reason == DropReason::UnknownPort, network.is_none());
                    }
                }
                if let (Some(sec), false) = (b.port_security(port), matches!(action, Action::Drop(_))) {
                    prop_assert_eq!(EthernetFrame::new_checked(&frame[..]).unwrap().src(), sec.mac);
                }
            }
        }
    }
}
