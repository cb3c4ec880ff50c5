//! The tunnel's forwarding rules, sans-IO: which VXLAN datagrams are let in
//! and to which network and port their frames go, and which frames may
//! leave through which VTEP with which header.
//!
//! [`TunnelRules`] holds the VNI of each overlay network and the VTEPs (the
//! tunnel ports) of each network. It decides and counts; the daemon does
//! the IO:
//!
//! - [`TunnelRules::decapsulate`] takes a datagram that arrived over UDP or
//!   QUIC and returns [`Decap::Deliver`] (the inner frame, the network and
//!   the VTEP port to switch it from) or [`Decap::Drop`] with a
//!   [`TunnelDrop`] reason.
//! - [`TunnelRules::encap`] takes a frame the switch sent to a VTEP port
//!   and returns [`Encap::Send`] (the transport, the remote address and the
//!   8-byte VXLAN header to send in front of the frame) or [`Encap::Drop`].
//!
//! The rules:
//!
//! - A datagram's VNI names the network; the sender must be a VTEP of that
//!   network, known by its IP address alone (not its port: a kernel
//!   `vxlan` device sends from a hashed source port). An IPv4-mapped IPv6
//!   address, as a dual-stack socket reports IPv4 senders, is the IPv4
//!   address.
//! - An encrypted network's VTEPs speak QUIC only, a clear network's UDP
//!   only: neither takes the other's datagrams.
//! - Frames from a vswitch member may be coalesced (GRO) by the receiver;
//!   frames from a static, foreign VTEP are delivered as they came.
//! - Split horizon: only frames from local endpoints leave through a
//!   tunnel. What came from a tunnel never goes back into one, and each
//!   host's gateway stays local.
//!
//! # Contract
//!
//! Deterministic, no networking, no OS time: the caller passes `now` and
//! does every read and write. Results borrow the caller's buffer: a
//! delivered frame is a subslice of the datagram, never a copy. Neither
//! `decapsulate` nor `encap` allocates (hash-map lookups and plain `u64`
//! counters only), and no method panics on any input.
//!
//! Network and port ids are the caller's small `Copy` handles (the
//! daemon's `NetworkId` and `PortId`): this module knows nothing of TAPs
//! or of the switch.

use std::collections::HashMap;
use std::fmt::{self, Debug};
use std::hash::Hash;
use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use crate::vxlan::{self, Vni, HEADER_LEN};

/// How a datagram arrived, or must leave.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    /// Plain VXLAN over UDP (RFC 7348): clear networks and foreign VTEPs.
    Udp,
    /// The VXLAN header and frame in a QUIC DATAGRAM frame (RFC 9221),
    /// encrypted and mutually authenticated: encrypted networks.
    Quic,
}

impl Transport {
    /// Every transport, in counter order.
    pub const ALL: [Transport; 2] = [Transport::Udp, Transport::Quic];
    /// How many there are.
    pub const COUNT: usize = Self::ALL.len();

    /// A stable name, for stats and logs.
    pub const fn as_str(self) -> &'static str {
        match self {
            Transport::Udp => "Udp",
            Transport::Quic => "Quic",
        }
    }

    const fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who is behind a VTEP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum VtepKind {
    /// Another vswitch host of the cluster: its frames may be coalesced.
    Member,
    /// A foreign VTEP admitted by hand (`vswitch network vtep add`,
    /// typically a kernel `vxlan` device).
    Static,
}

/// A tunnel port: the far end of the tunnel for one network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Vtep<N> {
    /// The network the port belongs to.
    pub network: N,
    /// Where datagrams go; on receive only its IP address is matched. For
    /// QUIC, the member's tunnel address, by which the QUIC endpoint knows
    /// it.
    pub remote: SocketAddr,
    /// A cluster member or a static VTEP.
    pub kind: VtepKind,
    /// [`Transport::Quic`] for an encrypted network, else
    /// [`Transport::Udp`].
    pub transport: Transport,
    /// The far end takes inner frames whose TCP or UDP checksum holds only
    /// the pseudo-header sum (a member that says so in its gossip tags):
    /// super-frames bound there are segmented without summing their
    /// payload a second time, as Linux's vxlan leaves inner checksums to a
    /// device that offloads them. Never for a static VTEP.
    pub partial_csum: bool,
}

impl<N> Vtep<N> {
    /// Whether frames from this VTEP may be coalesced: a member's, yes.
    pub fn coalesce(&self) -> bool {
        self.kind == VtepKind::Member
    }
}

/// Where a frame switched to a VTEP came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Origin {
    /// A local endpoint (a TAP, or a handoff from another worker).
    Local,
    /// This host's gateway of the network (ARP, DNS, NAT answers).
    Gateway,
    /// A tunnel port.
    Tunnel,
}

/// Why the tunnel rules dropped a datagram or a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TunnelDrop {
    /// UDP: not a VXLAN packet (short, no `I` flag, or an inner frame
    /// shorter than an Ethernet header).
    Malformed,
    /// UDP: a VNI no overlay network here has.
    UnknownVni,
    /// UDP: from an address that is not a VTEP of that network (neither a
    /// member with endpoints on it nor an admitted VTEP).
    NonMember,
    /// UDP: plain VXLAN for an encrypted network.
    ClearOnEncrypted,
    /// QUIC: a datagram for a network that is not encrypted.
    QuicOnPlain,
    /// QUIC: malformed, for a VNI no network here has, or from a member
    /// that is not a VTEP of that network.
    QuicRejected,
    /// Egress: the frame came from a tunnel, and what came from a tunnel
    /// never goes back into one.
    SplitHorizon,
    /// Egress: the frame came from this host's gateway, and each host's
    /// gateway stays local.
    GatewayLocal,
    /// Egress: the VTEP's network has no VNI (yet).
    NoVni,
    /// Egress: the port is not a VTEP.
    NotVtep,
}

impl TunnelDrop {
    /// Every reason, in counter order.
    pub const ALL: [TunnelDrop; 10] = [
        TunnelDrop::Malformed,
        TunnelDrop::UnknownVni,
        TunnelDrop::NonMember,
        TunnelDrop::ClearOnEncrypted,
        TunnelDrop::QuicOnPlain,
        TunnelDrop::QuicRejected,
        TunnelDrop::SplitHorizon,
        TunnelDrop::GatewayLocal,
        TunnelDrop::NoVni,
        TunnelDrop::NotVtep,
    ];
    /// How many reasons there are.
    pub const COUNT: usize = Self::ALL.len();

    /// A stable PascalCase name, as the daemon's stats JSON spells it.
    pub const fn as_str(self) -> &'static str {
        match self {
            TunnelDrop::Malformed => "Malformed",
            TunnelDrop::UnknownVni => "UnknownVni",
            TunnelDrop::NonMember => "NonMember",
            TunnelDrop::ClearOnEncrypted => "ClearOnEncrypted",
            TunnelDrop::QuicOnPlain => "QuicOnPlain",
            TunnelDrop::QuicRejected => "QuicRejected",
            TunnelDrop::SplitHorizon => "SplitHorizon",
            TunnelDrop::GatewayLocal => "GatewayLocal",
            TunnelDrop::NoVni => "NoVni",
            TunnelDrop::NotVtep => "NotVtep",
        }
    }

    /// Whether [`TunnelRules::decapsulate`] gives this reason (the others
    /// are [`TunnelRules::encap`]'s, which counts nothing).
    pub const fn on_receive(self) -> bool {
        matches!(
            self,
            TunnelDrop::Malformed
                | TunnelDrop::UnknownVni
                | TunnelDrop::NonMember
                | TunnelDrop::ClearOnEncrypted
                | TunnelDrop::QuicOnPlain
                | TunnelDrop::QuicRejected
        )
    }

    /// The reason's index in [`TunnelDrop::ALL`] and [`TunnelStats::drops`].
    pub const fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for TunnelDrop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What to do with a datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decap<'a, N, P> {
    /// Switch `frame` into `network` as if it came in on VTEP port `port`.
    Deliver {
        /// The VTEP's network.
        network: N,
        /// The VTEP port.
        port: P,
        /// The inner Ethernet frame: `&datagram[vxlan::HEADER_LEN..]`.
        frame: &'a [u8],
        /// The sender is a member: TCP segments may be coalesced.
        coalesce: bool,
    },
    /// Drop it, counted under this reason.
    Drop(TunnelDrop),
}

/// What to do with a frame switched to a VTEP port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encap {
    /// Send `header` then the frame to `remote` over `transport` (for UDP,
    /// one datagram of two iovecs: the frame is not copied).
    Send {
        /// UDP or QUIC, as the VTEP's network requires.
        transport: Transport,
        /// The VTEP's address.
        remote: SocketAddr,
        /// The VXLAN header for the network's VNI.
        header: [u8; HEADER_LEN],
        /// Segments may leave their checksum partial ([`Vtep::partial_csum`]).
        partial_csum: bool,
    },
    /// Do not send it.
    Drop(TunnelDrop),
}

/// Where [`TunnelRules::encapsulate`] wrote a datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Encapsulated {
    /// UDP or QUIC.
    pub transport: Transport,
    /// The VTEP's address.
    pub remote: SocketAddr,
    /// Bytes written at the start of the output buffer: header and frame.
    pub len: usize,
}

/// Why [`TunnelRules::encapsulate`] wrote nothing. Small and `Copy`: it is
/// returned on the per-packet path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EncapError {
    /// The rules drop the frame.
    #[error("frame dropped by the tunnel rules: {0}")]
    Drop(TunnelDrop),
    /// The output buffer cannot hold the header and the frame.
    #[error("buffer of {have} bytes cannot hold a {need}-byte VXLAN datagram")]
    BufferTooSmall {
        /// Bytes the datagram takes.
        need: usize,
        /// Bytes the buffer has.
        have: usize,
    },
}

/// Errors of the tunnel rules' control operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TunnelError {
    /// The network already has a VTEP at that IP address: received
    /// datagrams could not tell the two apart.
    #[error(
        "cannot add VTEP {remote}: the network has a VTEP at {existing} already, and datagrams are told apart by IP address alone; remove {existing} first"
    )]
    DuplicateVtep {
        /// The VTEP being added.
        remote: SocketAddr,
        /// The VTEP the network already has at that IP address.
        existing: SocketAddr,
    },
    /// The port is already a VTEP.
    #[error("the port is already the tunnel port toward {existing}; remove it first")]
    PortInUse {
        /// The VTEP the port already is.
        existing: SocketAddr,
    },
}

/// What the rules counted. Plain numbers, cheap to copy and to add up
/// across workers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TunnelStats {
    /// Datagrams handed to [`TunnelRules::decapsulate`], by transport
    /// (in [`Transport::ALL`] order: UDP, QUIC).
    pub received: [u64; Transport::COUNT],
    /// Datagrams whose frame was delivered.
    pub delivered: u64,
    /// Datagrams dropped, by reason (indexed by [`TunnelDrop::index`]).
    /// Egress decisions are not counted here: [`TunnelRules::encap`]
    /// only reads (a frame flooded from a tunnel would count one
    /// [`TunnelDrop::SplitHorizon`] per VTEP), and the caller counts what
    /// it sends.
    pub drops: [u64; TunnelDrop::COUNT],
}

impl TunnelStats {
    /// Datagrams received over `transport`.
    pub fn received(&self, transport: Transport) -> u64 {
        self.received[transport.index()]
    }

    /// Datagrams dropped for `reason`.
    pub fn dropped(&self, reason: TunnelDrop) -> u64 {
        self.drops[reason.index()]
    }

    /// Every reason with its count.
    pub fn iter_drops(&self) -> impl Iterator<Item = (TunnelDrop, u64)> + '_ {
        TunnelDrop::ALL.iter().map(|r| (*r, self.dropped(*r)))
    }

    /// Adds another worker's counts.
    pub fn add(&mut self, other: &TunnelStats) {
        for (a, b) in self.received.iter_mut().zip(other.received) {
            *a += b;
        }
        self.delivered += other.delivered;
        for (a, b) in self.drops.iter_mut().zip(other.drops) {
            *a += b;
        }
    }
}

/// The rules' tables, looked up for every datagram: foldhash's fast
/// hasher, randomly keyed per map (SipHash, the standard default, cost
/// more than the rest of a decapsulation).
type Map<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// A VTEP and what it did last.
#[derive(Debug, Clone)]
struct Entry<N> {
    vtep: Vtep<N>,
    /// The last time a frame from it was delivered.
    last_rx: Option<Instant>,
}

/// The tunnel's rules: VNIs, VTEPs, admission and split horizon. See the
/// module documentation.
#[derive(Debug, Clone)]
pub struct TunnelRules<N, P> {
    vni_of: Map<N, Vni>,
    network_of_vni: Map<Vni, N>,
    /// (network, canonical remote IP) -> VTEP port.
    by_ip: Map<(N, IpAddr), P>,
    vteps: Map<P, Entry<N>>,
    stats: TunnelStats,
}

impl<N, P> Default for TunnelRules<N, P>
where
    N: Copy + Eq + Hash + Debug,
    P: Copy + Eq + Hash + Debug,
{
    fn default() -> Self {
        Self::new()
    }
}

impl<N, P> TunnelRules<N, P>
where
    N: Copy + Eq + Hash + Debug,
    P: Copy + Eq + Hash + Debug,
{
    /// No networks, no VTEPs.
    pub fn new() -> Self {
        TunnelRules {
            vni_of: Map::default(),
            network_of_vni: Map::default(),
            by_ip: Map::default(),
            vteps: Map::default(),
            stats: TunnelStats::default(),
        }
    }

    // ---- control ------------------------------------------------------

    /// Sets (`Some`) or clears (`None`) the VNI of `network`. A VNI names
    /// one network at a time: setting one that another network holds
    /// takes it from that network.
    pub fn set_vni(&mut self, network: N, vni: Option<Vni>) {
        self.clear_vni(network);
        if let Some(vni) = vni {
            if let Some(previous) = self.network_of_vni.insert(vni, network) {
                self.vni_of.remove(&previous);
            }
            self.vni_of.insert(network, vni);
        }
    }

    /// `vni_of` and `network_of_vni` are inverses (`set_vni` keeps them
    /// so), so the network's VNI is its own to remove.
    fn clear_vni(&mut self, network: N) {
        if let Some(old) = self.vni_of.remove(&network) {
            self.network_of_vni.remove(&old);
        }
    }

    /// Forgets `network`: its VNI and every VTEP of it.
    pub fn remove_network(&mut self, network: N) {
        self.clear_vni(network);
        self.vteps.retain(|_, e| e.vtep.network != network);
        self.by_ip.retain(|(n, _), _| *n != network);
    }

    /// Makes `port` a VTEP. Refused if the port is one already, or if the
    /// network has a VTEP at the same IP address (whatever the UDP port:
    /// datagrams are matched by address).
    pub fn add_vtep(&mut self, port: P, vtep: Vtep<N>) -> Result<(), TunnelError> {
        if let Some(e) = self.vteps.get(&port) {
            return Err(TunnelError::PortInUse {
                existing: e.vtep.remote,
            });
        }
        let key = (vtep.network, canonical_ip(vtep.remote.ip()));
        if let Some(other) = self.by_ip.get(&key).and_then(|p| self.vteps.get(p)) {
            return Err(TunnelError::DuplicateVtep {
                remote: vtep.remote,
                existing: other.vtep.remote,
            });
        }
        self.by_ip.insert(key, port);
        self.vteps.insert(
            port,
            Entry {
                vtep,
                last_rx: None,
            },
        );
        Ok(())
    }

    /// Removes VTEP `port`; returns what it was.
    pub fn remove_vtep(&mut self, port: P) -> Option<Vtep<N>> {
        let entry = self.vteps.remove(&port)?;
        let key = (entry.vtep.network, canonical_ip(entry.vtep.remote.ip()));
        // `add_vtep` refuses duplicates, so the address is this port's.
        self.by_ip.remove(&key);
        Some(entry.vtep)
    }

    // ---- queries -------------------------------------------------------

    /// VTEP `port`, if it is one.
    pub fn vtep(&self, port: P) -> Option<&Vtep<N>> {
        self.vteps.get(&port).map(|e| &e.vtep)
    }

    /// Whether `port` is a VTEP.
    pub fn is_vtep(&self, port: P) -> bool {
        self.vteps.contains_key(&port)
    }

    /// Every VTEP, in no particular order.
    pub fn vteps(&self) -> impl Iterator<Item = (P, &Vtep<N>)> + '_ {
        self.vteps.iter().map(|(p, e)| (*p, &e.vtep))
    }

    /// The VTEP port of `network` at `ip` (IPv4-mapped IPv6 counts as
    /// IPv4): the port a datagram from `ip` would be admitted through.
    pub fn vtep_at(&self, network: N, ip: IpAddr) -> Option<P> {
        self.by_ip.get(&(network, canonical_ip(ip))).copied()
    }

    /// The VNI of `network`.
    pub fn vni(&self, network: N) -> Option<Vni> {
        self.vni_of.get(&network).copied()
    }

    /// The network whose VNI is `vni`.
    pub fn network_of(&self, vni: Vni) -> Option<N> {
        self.network_of_vni.get(&vni).copied()
    }

    /// When VTEP `port` last delivered a frame (`None`: never, or not a
    /// VTEP).
    pub fn last_rx(&self, port: P) -> Option<Instant> {
        self.vteps.get(&port).and_then(|e| e.last_rx)
    }

    /// What was counted so far.
    pub fn stats(&self) -> TunnelStats {
        self.stats
    }

    // ---- data path -----------------------------------------------------

    /// A datagram that arrived over `via` from `from` (the UDP source, or
    /// for QUIC the tunnel address of the authenticated member), at `now`.
    /// Counted in [`TunnelStats`].
    pub fn decapsulate<'a>(
        &mut self,
        via: Transport,
        from: SocketAddr,
        datagram: &'a [u8],
        now: Instant,
    ) -> Decap<'a, N, P> {
        self.stats.received[via.index()] += 1;
        let decision = self.admit(via, from, datagram, now);
        match decision {
            Decap::Deliver { .. } => self.stats.delivered += 1,
            Decap::Drop(reason) => self.stats.drops[reason.index()] += 1,
        }
        decision
    }

    /// The decision, and `last_rx` of the VTEP that delivers.
    fn admit<'a>(
        &mut self,
        via: Transport,
        from: SocketAddr,
        datagram: &'a [u8],
        now: Instant,
    ) -> Decap<'a, N, P> {
        // What each failure is called depends on the transport: over QUIC
        // every failure but a clear network is one count.
        let (malformed, unknown_vni, non_member) = match via {
            Transport::Udp => (
                TunnelDrop::Malformed,
                TunnelDrop::UnknownVni,
                TunnelDrop::NonMember,
            ),
            Transport::Quic => (
                TunnelDrop::QuicRejected,
                TunnelDrop::QuicRejected,
                TunnelDrop::QuicRejected,
            ),
        };
        let Ok((vni, frame)) = vxlan::decapsulate(datagram) else {
            return Decap::Drop(malformed);
        };
        let Some(&network) = self.network_of_vni.get(&vni) else {
            return Decap::Drop(unknown_vni);
        };
        let Some(&port) = self.by_ip.get(&(network, canonical_ip(from.ip()))) else {
            return Decap::Drop(non_member);
        };
        let Some(entry) = self.vteps.get_mut(&port) else {
            return Decap::Drop(non_member);
        };
        match (via, entry.vtep.transport) {
            // An encrypted network takes nothing in the clear.
            (Transport::Udp, Transport::Quic) => Decap::Drop(TunnelDrop::ClearOnEncrypted),
            (Transport::Quic, Transport::Udp) => Decap::Drop(TunnelDrop::QuicOnPlain),
            _ => {
                entry.last_rx = Some(now);
                Decap::Deliver {
                    network,
                    port,
                    frame,
                    coalesce: entry.vtep.coalesce(),
                }
            }
        }
    }

    /// What to do with a frame from `origin` that the switch sent to VTEP
    /// `port`: the header to put in front and where to send it. The caller
    /// does the IO (on UDP, `[header, frame]` as two iovecs, so the frame
    /// is not copied). Not counted: see [`TunnelStats::drops`].
    pub fn encap(&self, origin: Origin, port: P) -> Encap {
        let Some(entry) = self.vteps.get(&port) else {
            return Encap::Drop(TunnelDrop::NotVtep);
        };
        match origin {
            Origin::Local => {}
            Origin::Tunnel => return Encap::Drop(TunnelDrop::SplitHorizon),
            Origin::Gateway => return Encap::Drop(TunnelDrop::GatewayLocal),
        }
        let Some(&vni) = self.vni_of.get(&entry.vtep.network) else {
            return Encap::Drop(TunnelDrop::NoVni);
        };
        Encap::Send {
            transport: entry.vtep.transport,
            remote: entry.vtep.remote,
            header: vxlan::header(vni),
            partial_csum: entry.vtep.partial_csum && entry.vtep.kind == VtepKind::Member,
        }
    }

    /// [`TunnelRules::encap`], then the header and `frame` written to the
    /// start of `out`: for tests, fuzzing and paths that need the datagram
    /// in one buffer.
    pub fn encapsulate(
        &self,
        origin: Origin,
        port: P,
        frame: &[u8],
        out: &mut [u8],
    ) -> Result<Encapsulated, EncapError> {
        let (transport, remote, header) = match self.encap(origin, port) {
            Encap::Send {
                transport,
                remote,
                header,
                ..
            } => (transport, remote, header),
            Encap::Drop(reason) => return Err(EncapError::Drop(reason)),
        };
        let len = HEADER_LEN + frame.len();
        let have = out.len();
        let Some(out) = out.get_mut(..len) else {
            return Err(EncapError::BufferTooSmall { need: len, have });
        };
        out[..HEADER_LEN].copy_from_slice(&header);
        out[HEADER_LEN..].copy_from_slice(frame);
        Ok(Encapsulated {
            transport,
            remote,
            len,
        })
    }
}

/// An IPv4-mapped IPv6 address (from a dual-stack socket) as plain IPv4;
/// every other address as it is.
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use proptest::prelude::*;
    use rstest::rstest;

    use super::*;

    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    struct Net(u8);

    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    struct Port(u32);

    /// A clear overlay, VNI 100.
    const CLEAR: Net = Net(1);
    /// An encrypted overlay, VNI 200.
    const SECRET: Net = Net(2);
    /// An overlay without a VNI.
    const BARE: Net = Net(3);

    /// CLEAR's member at 192.0.2.1.
    const MEMBER: Port = Port(10);
    /// CLEAR's kernel VTEP at 192.0.2.2.
    const KERNEL: Port = Port(11);
    /// CLEAR's member at 2001:db8::3.
    const V6: Port = Port(12);
    /// SECRET's member at 192.0.2.1, over QUIC.
    const SEALED: Port = Port(20);
    /// BARE's member at 192.0.2.1.
    const UNNAMED: Port = Port(30);

    /// An Ethernet header and an ARP request's first bytes.
    const FRAME: [u8; 20] = [
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02, 0x42, 0x0a, 0x00, 0x00, 0x02, 0x08, 0x06, 0x00,
        0x01, 0x08, 0x00, 0x06, 0x04,
    ];

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn vni(v: u32) -> Vni {
        Vni::new(v).unwrap()
    }

    fn vtep(network: Net, remote: &str, kind: VtepKind, transport: Transport) -> Vtep<Net> {
        Vtep {
            network,
            remote: addr(remote),
            kind,
            transport,
            partial_csum: kind == VtepKind::Member,
        }
    }

    fn rules() -> TunnelRules<Net, Port> {
        use Transport::{Quic, Udp};
        use VtepKind::{Member, Static};
        let mut r = TunnelRules::new();
        r.set_vni(CLEAR, Some(vni(100)));
        r.set_vni(SECRET, Some(vni(200)));
        let vteps = [
            (MEMBER, vtep(CLEAR, "192.0.2.1:4789", Member, Udp)),
            (KERNEL, vtep(CLEAR, "192.0.2.2:4789", Static, Udp)),
            (V6, vtep(CLEAR, "[2001:db8::3]:4789", Member, Udp)),
            (SEALED, vtep(SECRET, "192.0.2.1:4789", Member, Quic)),
            (UNNAMED, vtep(BARE, "192.0.2.1:4789", Member, Udp)),
        ];
        for (port, v) in vteps {
            r.add_vtep(port, v).unwrap();
        }
        r
    }

    /// The VTEPs and VNIs, in order.
    type Table = (Vec<(u32, Vtep<Net>)>, Vec<(u8, Option<Vni>)>);

    fn table(r: &TunnelRules<Net, Port>) -> Table {
        let mut vteps: Vec<_> = r.vteps().map(|(p, v)| (p.0, *v)).collect();
        vteps.sort_by_key(|(p, _)| *p);
        let vnis = (0..5).map(|n| (n, r.vni(Net(n)))).collect();
        (vteps, vnis)
    }

    fn datagram(v: u32, frame: &[u8]) -> Vec<u8> {
        let mut d = vxlan::header(vni(v)).to_vec();
        d.extend_from_slice(frame);
        d
    }

    /// A header with flags `flags` for VNI 100, then `frame`.
    fn with_flags(flags: u8, frame: &[u8]) -> Vec<u8> {
        let mut d = datagram(100, frame);
        d[0] = flags;
        d
    }

    /// Every admission rule, one case each; the counters must show exactly
    /// that one datagram under exactly that outcome.
    #[rstest]
    #[case::udp_member(Transport::Udp, "192.0.2.1:4789", datagram(100, &FRAME), Ok((CLEAR, MEMBER, true)))]
    #[case::udp_any_source_port(Transport::Udp, "192.0.2.1:53211", datagram(100, &FRAME), Ok((CLEAR, MEMBER, true)))]
    #[case::udp_static_not_coalesced(Transport::Udp, "192.0.2.2:4789", datagram(100, &FRAME), Ok((CLEAR, KERNEL, false)))]
    #[case::udp_v4_mapped_sender(Transport::Udp, "[::ffff:192.0.2.1]:4789", datagram(100, &FRAME), Ok((CLEAR, MEMBER, true)))]
    #[case::udp_v6_sender(Transport::Udp, "[2001:db8::3]:4789", datagram(100, &FRAME), Ok((CLEAR, V6, true)))]
    #[case::udp_reserved_bits_ignored(Transport::Udp, "192.0.2.1:4789", with_flags(0xff, &FRAME), Ok((CLEAR, MEMBER, true)))]
    #[case::udp_ethernet_header_only(Transport::Udp, "192.0.2.1:4789", datagram(100, &FRAME[..14]), Ok((CLEAR, MEMBER, true)))]
    #[case::udp_empty(Transport::Udp, "192.0.2.1:4789", vec![], Err(TunnelDrop::Malformed))]
    #[case::udp_truncated(Transport::Udp, "192.0.2.1:4789", vec![0x08, 0, 0, 0, 0, 0, 100], Err(TunnelDrop::Malformed))]
    #[case::udp_no_i_flag(Transport::Udp, "192.0.2.1:4789", with_flags(0x00, &FRAME), Err(TunnelDrop::Malformed))]
    #[case::udp_inner_too_short(Transport::Udp, "192.0.2.1:4789", datagram(100, &FRAME[..13]), Err(TunnelDrop::Malformed))]
    #[case::udp_unknown_vni(Transport::Udp, "192.0.2.1:4789", datagram(101, &FRAME), Err(TunnelDrop::UnknownVni))]
    #[case::udp_non_member(Transport::Udp, "198.51.100.9:4789", datagram(100, &FRAME), Err(TunnelDrop::NonMember))]
    #[case::udp_vtep_of_another_network(Transport::Udp, "192.0.2.2:4789", datagram(200, &FRAME), Err(TunnelDrop::NonMember))]
    #[case::udp_v6_not_mapped(Transport::Udp, "[::192.0.2.1]:4789", datagram(100, &FRAME), Err(TunnelDrop::NonMember))]
    #[case::udp_clear_on_encrypted(Transport::Udp, "192.0.2.1:4789", datagram(200, &FRAME), Err(TunnelDrop::ClearOnEncrypted))]
    #[case::quic_member(Transport::Quic, "192.0.2.1:4789", datagram(200, &FRAME), Ok((SECRET, SEALED, true)))]
    #[case::quic_v4_mapped_member(Transport::Quic, "[::ffff:192.0.2.1]:4789", datagram(200, &FRAME), Ok((SECRET, SEALED, true)))]
    #[case::quic_malformed(Transport::Quic, "192.0.2.1:4789", datagram(200, &FRAME[..13]), Err(TunnelDrop::QuicRejected))]
    #[case::quic_no_i_flag(Transport::Quic, "192.0.2.1:4789", { let mut d = datagram(200, &FRAME); d[0] = 0; d }, Err(TunnelDrop::QuicRejected))]
    #[case::quic_unknown_vni(Transport::Quic, "192.0.2.1:4789", datagram(201, &FRAME), Err(TunnelDrop::QuicRejected))]
    #[case::quic_non_member(Transport::Quic, "198.51.100.9:4789", datagram(200, &FRAME), Err(TunnelDrop::QuicRejected))]
    #[case::quic_on_plain(Transport::Quic, "192.0.2.1:4789", datagram(100, &FRAME), Err(TunnelDrop::QuicOnPlain))]
    #[case::quic_on_plain_static(Transport::Quic, "192.0.2.2:4789", datagram(100, &FRAME), Err(TunnelDrop::QuicOnPlain))]
    fn decapsulates(
        #[case] via: Transport,
        #[case] from: &str,
        #[case] bytes: Vec<u8>,
        #[case] expected: Result<(Net, Port, bool), TunnelDrop>,
    ) {
        let mut r = rules();
        let now = Instant::now();
        let got = r.decapsulate(via, addr(from), &bytes, now);
        let stats = r.stats();
        assert_eq!(stats.received(via), 1);
        assert_eq!(stats.received.iter().sum::<u64>(), 1);
        match (got, expected) {
            (
                Decap::Deliver {
                    network,
                    port,
                    frame,
                    coalesce,
                },
                Ok(want),
            ) => {
                assert_eq!((network, port, coalesce), want);
                // The inner frame itself, borrowed from the datagram.
                assert_eq!(frame.as_ptr(), bytes[HEADER_LEN..].as_ptr());
                assert_eq!(frame.len(), bytes.len() - HEADER_LEN);
                assert_eq!(stats.delivered, 1);
                assert_eq!(stats.drops, [0; TunnelDrop::COUNT]);
                assert_eq!(r.last_rx(port), Some(now));
            }
            (Decap::Drop(reason), Err(want)) => {
                assert_eq!(reason, want);
                assert_eq!(stats.delivered, 0);
                for r in TunnelDrop::ALL {
                    assert_eq!(stats.dropped(r), u64::from(r == want), "{r}");
                }
            }
            (got, want) => panic!("got {got:?}, want {want:?}"),
        }
    }

    #[test]
    fn last_rx_moves_only_on_delivery() {
        let mut r = rules();
        let t0 = Instant::now();
        assert_eq!(r.last_rx(MEMBER), None);
        let good = datagram(100, &FRAME);
        r.decapsulate(Transport::Udp, addr("192.0.2.1:4789"), &good, t0);
        assert_eq!(r.last_rx(MEMBER), Some(t0));
        // Dropped datagrams from the same address leave it alone.
        let t1 = t0 + Duration::from_secs(5);
        r.decapsulate(Transport::Udp, addr("192.0.2.1:4789"), &good[..12], t1);
        r.decapsulate(Transport::Quic, addr("192.0.2.1:4789"), &good, t1);
        assert_eq!(r.last_rx(MEMBER), Some(t0));
        let t2 = t1 + Duration::from_secs(5);
        r.decapsulate(Transport::Udp, addr("192.0.2.1:9"), &good, t2);
        assert_eq!(r.last_rx(MEMBER), Some(t2));
        assert_eq!(r.last_rx(KERNEL), None);
        assert_eq!(r.last_rx(Port(99)), None);
    }

    #[test]
    fn set_vni_replaces_and_clears() {
        let mut r = rules();
        let from = addr("192.0.2.1:4789");
        r.set_vni(CLEAR, Some(vni(150)));
        assert_eq!(r.vni(CLEAR), Some(vni(150)));
        assert_eq!(r.network_of(vni(100)), None);
        let old = datagram(100, &FRAME);
        let now = Instant::now();
        assert_eq!(
            r.decapsulate(Transport::Udp, from, &old, now),
            Decap::Drop(TunnelDrop::UnknownVni)
        );
        let new = datagram(150, &FRAME);
        assert!(matches!(
            r.decapsulate(Transport::Udp, from, &new, now),
            Decap::Deliver { network: CLEAR, .. }
        ));
        assert!(matches!(
            r.encap(Origin::Local, MEMBER),
            Encap::Send { header, .. } if header == vxlan::header(vni(150))
        ));
        r.set_vni(CLEAR, None);
        assert_eq!(r.vni(CLEAR), None);
        assert_eq!(
            r.decapsulate(Transport::Udp, from, &new, now),
            Decap::Drop(TunnelDrop::UnknownVni)
        );
        assert_eq!(
            r.encap(Origin::Local, MEMBER),
            Encap::Drop(TunnelDrop::NoVni)
        );
    }

    #[test]
    fn a_vni_names_one_network() {
        let mut r = rules();
        // BARE takes CLEAR's VNI: CLEAR loses it both ways.
        r.set_vni(BARE, Some(vni(100)));
        assert_eq!(r.network_of(vni(100)), Some(BARE));
        assert_eq!(r.vni(CLEAR), None);
        assert_eq!(
            r.encap(Origin::Local, MEMBER),
            Encap::Drop(TunnelDrop::NoVni)
        );
        let d = datagram(100, &FRAME);
        assert!(matches!(
            r.decapsulate(Transport::Udp, addr("192.0.2.1:4789"), &d, Instant::now()),
            Decap::Deliver {
                network: BARE,
                port: UNNAMED,
                ..
            }
        ));
        // Forgetting CLEAR later does not take the VNI from BARE.
        r.remove_network(CLEAR);
        assert_eq!(r.network_of(vni(100)), Some(BARE));
    }

    #[test]
    fn remove_network_removes_its_vteps_and_vni() {
        let mut r = rules();
        r.remove_network(CLEAR);
        for port in [MEMBER, KERNEL, V6] {
            assert!(!r.is_vtep(port), "{port:?}");
            assert_eq!(r.vtep(port), None);
            assert_eq!(
                r.encap(Origin::Local, port),
                Encap::Drop(TunnelDrop::NotVtep)
            );
        }
        assert_eq!(r.vni(CLEAR), None);
        assert_eq!(r.network_of(vni(100)), None);
        assert_eq!(r.vtep_at(CLEAR, "192.0.2.1".parse().unwrap()), None);
        let d = datagram(100, &FRAME);
        assert_eq!(
            r.decapsulate(Transport::Udp, addr("192.0.2.2:4789"), &d, Instant::now()),
            Decap::Drop(TunnelDrop::UnknownVni)
        );
        // The other networks keep theirs, including the same address.
        assert_eq!(r.vteps().count(), 2);
        assert!(r.is_vtep(SEALED) && r.is_vtep(UNNAMED));
        assert_eq!(r.vni(SECRET), Some(vni(200)));
        // And the address can be admitted again.
        r.add_vtep(
            Port(40),
            vtep(CLEAR, "192.0.2.1:4789", VtepKind::Static, Transport::Udp),
        )
        .unwrap();
    }

    #[rstest]
    #[case::same_address(Port(50), "192.0.2.1:4789", Err(TunnelError::DuplicateVtep { remote: addr("192.0.2.1:4789"), existing: addr("192.0.2.1:4789") }))]
    #[case::same_ip_other_port(Port(50), "192.0.2.1:8472", Err(TunnelError::DuplicateVtep { remote: addr("192.0.2.1:8472"), existing: addr("192.0.2.1:4789") }))]
    #[case::same_ip_v4_mapped(Port(50), "[::ffff:192.0.2.1]:4789", Err(TunnelError::DuplicateVtep { remote: addr("[::ffff:192.0.2.1]:4789"), existing: addr("192.0.2.1:4789") }))]
    #[case::port_in_use(KERNEL, "192.0.2.9:4789", Err(TunnelError::PortInUse { existing: addr("192.0.2.2:4789") }))]
    #[case::new_address(Port(50), "192.0.2.9:4789", Ok(()))]
    fn add_vtep_refuses_duplicates(
        #[case] port: Port,
        #[case] remote: &str,
        #[case] expected: Result<(), TunnelError>,
    ) {
        let mut r = rules();
        let v = vtep(CLEAR, remote, VtepKind::Static, Transport::Udp);
        assert_eq!(r.add_vtep(port, v), expected);
        if expected.is_err() {
            // Nothing changed: the first VTEP still owns its address.
            assert_eq!(table(&r), table(&rules()));
            if let Err(e) = expected {
                let msg = e.to_string();
                assert!(msg.contains("remove"), "{msg}");
            }
        } else {
            assert_eq!(r.vtep(port), Some(&v));
            assert_eq!(r.vtep_at(CLEAR, v.remote.ip()), Some(port));
        }
    }

    #[test]
    fn duplicate_message_names_both() {
        let e = TunnelError::DuplicateVtep {
            remote: addr("192.0.2.1:8472"),
            existing: addr("192.0.2.1:4789"),
        };
        let msg = e.to_string();
        assert!(
            msg.contains("192.0.2.1:8472") && msg.contains("192.0.2.1:4789"),
            "{msg}"
        );
        let o: crate::OverlayError = e.into();
        assert!(std::error::Error::source(&o).is_some());
    }

    #[test]
    fn remove_vtep_stops_admission() {
        let mut r = rules();
        let d = datagram(100, &FRAME);
        let from = addr("192.0.2.2:4789");
        let now = Instant::now();
        assert_eq!(
            r.remove_vtep(KERNEL),
            Some(vtep(
                CLEAR,
                "192.0.2.2:4789",
                VtepKind::Static,
                Transport::Udp
            ))
        );
        assert!(!r.is_vtep(KERNEL));
        assert_eq!(r.remove_vtep(KERNEL), None);
        assert_eq!(
            r.decapsulate(Transport::Udp, from, &d, now),
            Decap::Drop(TunnelDrop::NonMember)
        );
        assert_eq!(
            r.encap(Origin::Local, KERNEL),
            Encap::Drop(TunnelDrop::NotVtep)
        );
        assert_eq!(r.vtep_at(CLEAR, from.ip()), None);
        // The port id, reused for another address, does not take datagrams
        // from the old one.
        r.add_vtep(
            KERNEL,
            vtep(CLEAR, "192.0.2.8:4789", VtepKind::Static, Transport::Udp),
        )
        .unwrap();
        assert_eq!(
            r.decapsulate(Transport::Udp, from, &d, now),
            Decap::Drop(TunnelDrop::NonMember)
        );
        r.remove_vtep(KERNEL).unwrap();
        // The others stay, and the address can come back as a member.
        assert!(r.is_vtep(MEMBER));
        r.add_vtep(
            Port(60),
            vtep(CLEAR, "192.0.2.2:4789", VtepKind::Member, Transport::Udp),
        )
        .unwrap();
        assert!(matches!(
            r.decapsulate(Transport::Udp, from, &d, now),
            Decap::Deliver {
                port: Port(60),
                coalesce: true,
                ..
            }
        ));
    }

    #[rstest]
    #[case::local_udp(Origin::Local, MEMBER, Ok((Transport::Udp, "192.0.2.1:4789", 100)))]
    #[case::local_static(Origin::Local, KERNEL, Ok((Transport::Udp, "192.0.2.2:4789", 100)))]
    #[case::local_v6(Origin::Local, V6, Ok((Transport::Udp, "[2001:db8::3]:4789", 100)))]
    #[case::local_quic(Origin::Local, SEALED, Ok((Transport::Quic, "192.0.2.1:4789", 200)))]
    #[case::split_horizon(Origin::Tunnel, MEMBER, Err(TunnelDrop::SplitHorizon))]
    #[case::split_horizon_quic(Origin::Tunnel, SEALED, Err(TunnelDrop::SplitHorizon))]
    #[case::gateway_local(Origin::Gateway, MEMBER, Err(TunnelDrop::GatewayLocal))]
    #[case::gateway_local_quic(Origin::Gateway, SEALED, Err(TunnelDrop::GatewayLocal))]
    #[case::no_vni(Origin::Local, UNNAMED, Err(TunnelDrop::NoVni))]
    #[case::split_horizon_before_no_vni(Origin::Tunnel, UNNAMED, Err(TunnelDrop::SplitHorizon))]
    #[case::not_vtep(Origin::Local, Port(99), Err(TunnelDrop::NotVtep))]
    fn encaps(
        #[case] origin: Origin,
        #[case] port: Port,
        #[case] expected: Result<(Transport, &str, u32), TunnelDrop>,
    ) {
        let r = rules();
        let want = match expected {
            Ok((transport, remote, v)) => Encap::Send {
                transport,
                remote: addr(remote),
                header: vxlan::header(vni(v)),
                partial_csum: r.vtep(port).unwrap().kind == VtepKind::Member,
            },
            Err(reason) => Encap::Drop(reason),
        };
        assert_eq!(r.encap(origin, port), want);
        // Egress is not counted.
        assert_eq!(r.stats(), TunnelStats::default());
    }

    /// Partial inner checksums go only to a member that takes them: a
    /// static VTEP (a kernel vxlan behind a physical NIC would forward
    /// them as they are) never gets them, whatever its entry says.
    #[test]
    fn partial_checksums_only_to_members_that_take_them() {
        let partial = |kind, said| {
            let mut r = TunnelRules::new();
            r.set_vni(CLEAR, Some(vni(7)));
            let mut v = vtep(CLEAR, "192.0.2.9:4789", kind, Transport::Udp);
            v.partial_csum = said;
            r.add_vtep(Port(70), v).unwrap();
            match r.encap(Origin::Local, Port(70)) {
                Encap::Send { partial_csum, .. } => partial_csum,
                Encap::Drop(d) => panic!("{d:?}"),
            }
        };
        assert!(partial(VtepKind::Member, true));
        assert!(!partial(VtepKind::Member, false));
        assert!(!partial(VtepKind::Static, true));
    }

    #[test]
    fn encapsulate_round_trips() {
        let r = rules();
        let mut out = [0xeeu8; 64];
        let e = r
            .encapsulate(Origin::Local, MEMBER, &FRAME, &mut out)
            .unwrap();
        assert_eq!(
            e,
            Encapsulated {
                transport: Transport::Udp,
                remote: addr("192.0.2.1:4789"),
                len: HEADER_LEN + FRAME.len(),
            }
        );
        let sent = &out[..e.len];
        assert_eq!(vxlan::decapsulate(sent), Ok((vni(100), &FRAME[..])));
        assert_eq!(&out[e.len..], &[0xee; 64 - 28][..]);

        // The receiving host, where this one (198.51.100.1) is a member.
        let mut peer = TunnelRules::new();
        peer.set_vni(Net(7), Some(vni(100)));
        peer.add_vtep(
            Port(1),
            vtep(
                Net(7),
                "198.51.100.1:4789",
                VtepKind::Member,
                Transport::Udp,
            ),
        )
        .unwrap();
        let got = peer.decapsulate(
            e.transport,
            addr("198.51.100.1:40000"),
            sent,
            Instant::now(),
        );
        assert_eq!(
            got,
            Decap::Deliver {
                network: Net(7),
                port: Port(1),
                frame: &FRAME[..],
                coalesce: true,
            }
        );
    }

    #[rstest]
    #[case::empty(0)]
    #[case::header_only(HEADER_LEN)]
    #[case::one_short(HEADER_LEN + FRAME.len() - 1)]
    fn encapsulate_into_too_small_a_buffer(#[case] len: usize) {
        let r = rules();
        let mut out = vec![0u8; len];
        assert_eq!(
            r.encapsulate(Origin::Local, MEMBER, &FRAME, &mut out),
            Err(EncapError::BufferTooSmall {
                need: HEADER_LEN + FRAME.len(),
                have: len,
            })
        );
        assert!(out.iter().all(|b| *b == 0), "nothing written");
        let mut exact = vec![0u8; HEADER_LEN + FRAME.len()];
        assert!(r
            .encapsulate(Origin::Local, MEMBER, &FRAME, &mut exact)
            .is_ok());
    }

    #[test]
    fn encapsulate_drops_what_encap_drops() {
        let r = rules();
        let mut out = [0u8; 64];
        assert_eq!(
            r.encapsulate(Origin::Tunnel, MEMBER, &FRAME, &mut out),
            Err(EncapError::Drop(TunnelDrop::SplitHorizon))
        );
        assert_eq!(out, [0u8; 64]);
    }

    #[test]
    fn drop_reasons_are_listed_once_in_order() {
        assert_eq!(TunnelDrop::COUNT, TunnelDrop::ALL.len());
        for (i, r) in TunnelDrop::ALL.iter().enumerate() {
            assert_eq!(r.index(), i);
            assert_eq!(r.to_string(), r.as_str());
        }
        let names: std::collections::HashSet<_> =
            TunnelDrop::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(names.len(), TunnelDrop::COUNT);
        // The daemon's stats JSON already uses these names.
        for name in [
            "Malformed",
            "UnknownVni",
            "NonMember",
            "ClearOnEncrypted",
            "QuicOnPlain",
            "QuicRejected",
        ] {
            assert!(names.contains(name), "{name}");
        }
        for (i, t) in Transport::ALL.iter().enumerate() {
            assert_eq!(t.index(), i);
        }
    }

    #[test]
    fn stats_add_up() {
        let mut r = rules();
        let now = Instant::now();
        let d = datagram(100, &FRAME);
        r.decapsulate(Transport::Udp, addr("192.0.2.1:4789"), &d, now);
        r.decapsulate(Transport::Udp, addr("192.0.2.9:4789"), &d, now);
        r.decapsulate(Transport::Quic, addr("192.0.2.1:4789"), &d, now);
        let s = r.stats();
        assert_eq!(s.received, [2, 1]);
        assert_eq!(s.delivered, 1);
        assert_eq!(s.dropped(TunnelDrop::NonMember), 1);
        assert_eq!(s.dropped(TunnelDrop::QuicOnPlain), 1);
        assert_eq!(s.iter_drops().map(|(_, n)| n).sum::<u64>(), 2);
        let mut total = s;
        total.add(&s);
        assert_eq!(total.received, [4, 2]);
        assert_eq!(total.delivered, 2);
        assert_eq!(total.dropped(TunnelDrop::NonMember), 2);
    }

    #[rstest]
    #[case("192.0.2.1", "192.0.2.1")]
    #[case("::ffff:192.0.2.1", "192.0.2.1")]
    #[case("::192.0.2.1", "::192.0.2.1")]
    #[case("2001:db8::1", "2001:db8::1")]
    fn canonical_ips(#[case] ip: &str, #[case] want: &str) {
        assert_eq!(
            canonical_ip(ip.parse().unwrap()),
            want.parse::<IpAddr>().unwrap()
        );
    }

    fn senders() -> [SocketAddr; 5] {
        [
            addr("192.0.2.1:4789"),
            addr("[::ffff:192.0.2.2]:4789"),
            addr("[2001:db8::3]:1"),
            addr("198.51.100.9:4789"),
            addr("[::ffff:192.0.2.1]:7"),
        ]
    }

    proptest! {
        #[test]
        fn decapsulate_never_panics_and_delivers_only_the_inner_frame(
            raw in any::<bool>(),
            flags in any::<u8>(),
            vni_pick in 0usize..4,
            any_vni in 0u32..=Vni::MAX,
            tail in proptest::collection::vec(any::<u8>(), 0..40),
            quic in any::<bool>(),
            sender in 0usize..5,
        ) {
            let mut r = rules();
            let bytes = if raw {
                tail
            } else {
                let v = [100, 200, 300, any_vni][vni_pick];
                let mut d = datagram(v, &tail);
                d[0] = flags;
                d
            };
            let via = if quic { Transport::Quic } else { Transport::Udp };
            let from = senders()[sender];
            match r.decapsulate(via, from, &bytes, Instant::now()) {
                Decap::Deliver { network, port, frame, coalesce } => {
                    prop_assert!(bytes.len() >= HEADER_LEN + vxlan::INNER_MIN_LEN);
                    prop_assert_eq!(frame.as_ptr(), bytes[HEADER_LEN..].as_ptr());
                    prop_assert_eq!(frame.len(), bytes.len() - HEADER_LEN);
                    prop_assert!(bytes[0] & vxlan::FLAG_VNI != 0);
                    let v = Vni::new(u32::from_be_bytes([0, bytes[4], bytes[5], bytes[6]])).unwrap();
                    prop_assert_eq!(r.network_of(v), Some(network));
                    let vtep = *r.vtep(port).unwrap();
                    prop_assert_eq!(vtep.network, network);
                    prop_assert_eq!(vtep.transport, via);
                    prop_assert_eq!(canonical_ip(vtep.remote.ip()), canonical_ip(from.ip()));
                    prop_assert_eq!(coalesce, vtep.kind == VtepKind::Member);
                }
                Decap::Drop(reason) => {
                    let egress = [TunnelDrop::SplitHorizon, TunnelDrop::GatewayLocal, TunnelDrop::NoVni, TunnelDrop::NotVtep];
                    prop_assert!(!egress.contains(&reason));
                }
            }
            let s = r.stats();
            prop_assert_eq!(s.received.iter().sum::<u64>(), 1);
            prop_assert_eq!(s.delivered + s.drops.iter().sum::<u64>(), 1);
        }
    }
}
