//! Userspace port publishing and egress NAT for one network, sans-IO.
//!
//! Each network with a gateway has one [`Nat`] next to its
//! [`Gateway`](crate::gateway::Gateway). The daemon hands it every frame that
//! reaches the gateway port and that [`is_for_nat`] claims (IP traffic to
//! any address but the gateway's own, plus replies to the ports the NAT
//! borrows on the gateway address), and injects every frame from
//! [`Nat::poll_transmit`] into the bridge as if sent by the gateway port.
//! What needs a host socket comes out as a [`NatEvent`] or a [`Datagram`];
//! what the host sockets produce goes back in through the `tcp_*`,
//! `udp_reply`, `inbound_*` and `egress_connected` methods.
//!
//! Sans-IO like quinn-proto: every method takes `now`; nothing here reads
//! the clock, opens a socket or spawns a task. After each call the daemon
//! drains [`Nat::poll_transmit`], [`Nat::poll_event`] and
//! [`Nat::poll_datagram`] (events first: a flow's
//! [`NatEvent::UdpFlowOpened`] comes before its first datagram), then sleeps
//! until [`Nat::poll_timeout`] and calls [`Nat::handle_timeout`].
//!
//! # TCP
//!
//! TCP is terminated in a smoltcp [`Interface`] on an IP-medium device (the
//! NAT writes the Ethernet header itself, so no neighbour cache limits how
//! many containers it talks to) with AnyIP on, so its sockets may use any
//! address as their own:
//!
//! - **Egress**: a SYN from a container to X:p is held back and
//!   [`NatEvent::EgressTcpConnect`] asks the daemon to connect a host socket
//!   to X:p. On [`Nat::egress_connected`]`(ok)` a socket listening on X:p is
//!   made and the held SYN is fed to smoltcp, which answers SYN-ACK: the
//!   container's peer is X itself (the tun2socks pattern, with the SYN-ACK
//!   delayed until the outside accepted). On failure, or after
//!   [`NatLimits::tcp_connect_timeout`], the SYN is fed with no socket to
//!   take it and smoltcp answers RST: the container sees "connection
//!   refused", as it would without the NAT.
//! - **Published ports**: [`Nat::inbound_tcp`] connects a socket to the
//!   container from the client's own address and port, so the container sees
//!   the real client. The container's replies go to the client through its
//!   default route, the gateway, and reach this socket. A client on loopback,
//!   of the other address family, or with an address the container would
//!   reach directly (its own subnet, link-local) appears as the gateway
//!   address instead, with a port from [`NAT_PORTS`].
//! - Bytes move with [`Nat::tcp_write`] or, with no copy between the host
//!   socket and smoltcp's buffer, [`Nat::tcp_write_with`] (host to
//!   container; takes what fits, then [`NatEvent::TcpWritable`] says when
//!   to retry) and [`Nat::tcp_read`]
//!   or [`Nat::tcp_peek`] + [`Nat::tcp_consume`] (container to host, after
//!   [`NatEvent::TcpReadable`]). Closes travel both ways: the container's FIN
//!   is [`NatEvent::TcpFin`], the host's is [`Nat::tcp_host_closed`], a host
//!   error is [`Nat::tcp_abort`]. Every [`ConnId`] ends with exactly one
//!   [`NatEvent::TcpClosed`], after which the daemon forgets it.
//!
//! # UDP
//!
//! UDP does not go through smoltcp (nor does ICMP: smoltcp with AnyIP would
//! answer pings for every address). A datagram from a container to X:p opens
//! a flow keyed by the container's address and port and X:p; the daemon
//! makes one host socket per flow ([`NatEvent::UdpFlowOpened`]), sends the
//! flow's datagrams ([`Nat::poll_datagram`]) and feeds what the socket
//! receives to [`Nat::udp_reply`], which writes the frame to the container
//! with the real peer as its source. Published UDP ports work the same way
//! from the other side: [`Nat::inbound_udp`] delivers a client's datagram
//! from the client's own address, and the container's answers come out as
//! datagrams to send from the listener socket to that client. Flows end
//! after [`NatLimits::udp_idle`] without traffic either way.
//!
//! # ICMP echo
//!
//! An echo request to X opens an echo flow keyed by the container's address,
//! the echo identifier and X ([`NatEvent::IcmpFlowOpened`]); the daemon sends
//! the flow's datagrams, each the whole echo request, from an unprivileged
//! ping socket, whose kernel sets its own identifier, and feeds the replies
//! to [`Nat::icmp_reply`], which restores the container's identifier. Echo
//! flows share the UDP flow table, its limit and its idle timeout.
//!
//! # Bounds
//!
//! TCP connections ([`NatLimits::max_tcp`], of which
//! [`NatLimits::max_tcp_connecting`] waiting for a host connect), UDP flows
//! ([`NatLimits::max_udp_flows`]), socket buffers, the frame queue
//! ([`TX_QUEUE_FRAMES`]) and the datagram queue ([`DATAGRAM_QUEUE`],
//! [`DATAGRAM_QUEUE_BYTES`]) are all bounded. A SYN beyond the limits gets
//! RST, a datagram beyond them is dropped, and both are counted in
//! [`NatStats`]. Malformed frames, bad checksums, fragments and protocols
//! other than TCP and UDP are dropped and counted, never a panic. On an
//! internal network (`egress: false`) nothing leaves: egress SYNs and
//! datagrams are dropped and counted, published ports still work.
//!
//! Limits: ICMP errors are neither relayed to containers nor taken from
//! them (a host socket's "port unreachable" shows up only as an error on
//! that socket); IP fragments are dropped; a datagram larger than the
//! network's MTU allows is dropped, not fragmented. The NAT keeps no
//! TIME-WAIT state (the bridge is a lossless local link; see
//! `service_conn`). smoltcp visits every socket on each poll, so the cost
//! of a frame grows with the number of open connections; the NAT itself
//! services only connections whose socket woke.
//!
//! # Layout
//!
//! - `mod.rs`: the public types, the limits, and the dispatch of frames,
//!   timers and the poll methods.
//! - `device`: smoltcp's side of the link (the framing of what it sends,
//!   the MACs it sends to).
//! - `tcp`: TCP connections, both directions.
//! - `flows`: UDP flows and the datagram queue.
//! - `icmp`: ICMP echo flows.
//! - `addresses`: which addresses the NAT serves, and the gateway-side
//!   ports it lends.

use std::collections::{BTreeSet, HashSet, VecDeque};

use crate::fdb::FastMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::ops::RangeInclusive;
use std::sync::Arc;
use std::time::{Duration, Instant};

use smoltcp::iface::{Interface, SocketSet};
use smoltcp::phy::{Checksum, DeviceCapabilities, Medium};
use smoltcp::wire::HardwareAddress;

use crate::gateway::GatewayError;
use crate::offload::{flags, gso, VnetHdr};
use crate::policy::table::Denials;
use crate::policy::{PolicyTable, Verdict};
use crate::stack::{add_addrs, check_interface, new_interface, poll_at, Rng, TxQueue};
use crate::wire::{IpFrame, IpHeader, IpProtocol, TransportHeader};
use crate::{MacAddr, NetworkId};

mod addresses;
mod device;
mod flows;
mod icmp;
mod tcp;
#[cfg(test)]
mod testing;

use device::Neighbor;
use flows::{DatagramQueue, UdpFlow};
use tcp::{Service, TcpConn, Woken};

/// Ports the NAT takes on the gateway address when a client cannot appear
/// with its own address. [`is_for_nat`] sends frames to the gateway address
/// on these ports to the NAT; the gateway itself only serves port 53.
pub const NAT_PORTS: RangeInclusive<u16> = 49152..=65535;

/// Frames waiting for [`Nat::poll_transmit`]. Beyond: smoltcp waits, other
/// frames are dropped (counted).
pub const TX_QUEUE_FRAMES: usize = 1024;

/// Bytes of frames waiting for [`Nat::poll_transmit`] (64 super-frames of
/// 64 KiB). Beyond: as beyond [`TX_QUEUE_FRAMES`].
pub const TX_QUEUE_BYTES: usize = 4 << 20;

/// The largest TCP super-frame the NAT takes or sends: a whole IP packet of
/// 64 KiB, as a TAP's TSO or GSO carries it.
pub const MAX_SUPER_PACKET: usize = 65_535;

/// Datagrams waiting for [`Nat::poll_datagram`]. Beyond: dropped (counted).
pub const DATAGRAM_QUEUE: usize = 1024;

/// Payload bytes waiting for [`Nat::poll_datagram`]. Beyond: dropped
/// (counted).
pub const DATAGRAM_QUEUE_BYTES: usize = 4 << 20;

/// Ethernet II header.
const ETH_LEN: usize = 14;

/// Hop limit / TTL of the frames the NAT writes itself.
const HOP_LIMIT: u8 = 64;

/// Longest timeout accepted in [`NatLimits`] (keeps `Instant` arithmetic
/// far from overflow).
const MAX_TIMEOUT: Duration = Duration::from_secs(30 * 24 * 3600);

/// Bounds of [`NatLimits::tcp_buffer`].
const TCP_BUFFER_RANGE: RangeInclusive<usize> = 1024..=(16 << 20);

/// How much the NAT of one network may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NatLimits {
    /// TCP connections, egress and inbound, in any state. Beyond: the
    /// container's SYN gets RST, [`Nat::inbound_tcp`] fails.
    pub max_tcp: usize,
    /// Egress connections waiting for [`Nat::egress_connected`] (bounds the
    /// host connects a SYN flood can start). Beyond: RST.
    pub max_tcp_connecting: usize,
    /// UDP flows, egress and inbound, and ICMP echo flows. Beyond: the
    /// datagram is dropped.
    pub max_udp_flows: usize,
    /// Receive and send buffer of each TCP socket, bytes (1 KiB..=16 MiB):
    /// the window each connection offers the container, and what it holds
    /// for it.
    pub tcp_buffer: usize,
    /// A TCP connection with no traffic for this long is reset both ways.
    pub tcp_idle: Duration,
    /// How long an egress SYN waits for [`Nat::egress_connected`] before the
    /// container gets RST, and how long a handshake with the container may
    /// take (after which the connection is reset both ways).
    pub tcp_connect_timeout: Duration,
    /// A UDP or ICMP echo flow with no datagram either way for this long is
    /// closed.
    pub udp_idle: Duration,
}

impl Default for NatLimits {
    fn default() -> Self {
        NatLimits {
            max_tcp: 4096,
            max_tcp_connecting: 256,
            max_udp_flows: 4096,
            // A window of 64 KiB holds one super-frame: a stream stalls on
            // every round trip. 1 MiB kept a stream to or from the host at
            // 6-8 Gbit/s on the netbench machine (256 KiB: 4-5). smoltcp
            // allocates both buffers up front, but their pages become
            // resident only as bytes pass through them.
            tcp_buffer: 1 << 20,
            tcp_idle: Duration::from_secs(2 * 3600),
            tcp_connect_timeout: Duration::from_secs(30),
            udp_idle: Duration::from_secs(30),
        }
    }
}

/// How a network's NAT is set up.
#[derive(Debug, Clone)]
pub struct NatConfig {
    /// The gateway port's MAC (the source of every frame the NAT emits).
    pub gateway_mac: MacAddr,
    /// The IPv4 gateway address and the subnet's prefix length.
    pub ipv4: Option<(Ipv4Addr, u8)>,
    /// The IPv6 gateway address and the subnet's prefix length.
    pub ipv6: Option<(Ipv6Addr, u8)>,
    /// The network's MTU (IP packet size), 576..=65535; 1280 at least with
    /// IPv6.
    pub mtu: usize,
    /// False on `--internal` networks: nothing leaves, published ports
    /// still work.
    pub egress: bool,
    /// Table and buffer bounds.
    pub limits: NatLimits,
    /// Seeds smoltcp's initial sequence numbers and the NAT's port choice:
    /// pass a fresh random value.
    pub random_seed: u64,
    /// Which part of the network's TCP connections this NAT serves
    /// ([`Shard::WHOLE`]: all of them).
    pub shard: Shard,
}

/// One of `count` NATs that share a network's TCP connections, one per
/// datapath worker, so that the L4 work of many connections runs on every
/// core. A connection belongs to the shard [`tcp_shard`] names for its
/// tuple as the container sees it, a pure function every worker computes
/// alike: frames from containers go to the owner by [`frame_shard`], a
/// published port's accepted connection by [`Nat::inbound_tcp_shard`], and
/// a gateway-side port a shard lends is one whose tuple hashes back to
/// that shard. UDP flows and ICMP echo stay with shard 0, as does
/// everything that is not plain TCP. The limits in [`NatLimits`] are the
/// network's: each shard holds its share of the TCP ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    /// This shard, `0..count`.
    pub index: usize,
    /// How many shards the network has, 1..=64.
    pub count: usize,
}

impl Shard {
    /// The only shard: every connection.
    pub const WHOLE: Shard = Shard { index: 0, count: 1 };
    /// Most shards a network may have.
    pub const MAX: usize = 64;
}

/// The shard, of `count`, that owns the TCP connection between a
/// container's `container` address and port and the `peer` it sees.
/// IPv4-mapped addresses count as IPv4.
pub fn tcp_shard(container: SocketAddr, peer: SocketAddr, count: usize) -> usize {
    use std::hash::{Hash, Hasher};
    if count <= 1 {
        return 0;
    }
    // `DefaultHasher::new` hashes alike in every thread of a process.
    let mut h = std::collections::hash_map::DefaultHasher::new();
    addresses::canonical(container).hash(&mut h);
    addresses::canonical(peer).hash(&mut h);
    (h.finish() % count as u64) as usize
}

/// The shard, of `count`, that must take `frame` from a container (one
/// [`is_for_nat`] claimed): a TCP segment's connection owner by
/// [`tcp_shard`]; shard 0 for everything else, malformed frames included
/// (it counts them). Reads only the headers; never panics.
pub fn frame_shard(frame: &[u8], count: usize) -> usize {
    if count <= 1 {
        return 0;
    }
    let Ok(pkt) = IpFrame::parse(frame) else {
        return 0;
    };
    let (src, dst) = match pkt.ip() {
        Some(IpHeader::V4(ip)) if !ip.is_fragment() && ip.transport_follows() => {
            (IpAddr::V4(ip.src()), IpAddr::V4(ip.dst()))
        }
        Some(IpHeader::V6(ip)) if ip.transport_follows() => {
            (IpAddr::V6(ip.src()), IpAddr::V6(ip.dst()))
        }
        _ => return 0,
    };
    match pkt.transport() {
        Some(TransportHeader::Tcp(tcp)) => tcp_shard(
            SocketAddr::new(src, tcp.src_port()),
            SocketAddr::new(dst, tcp.dst_port()),
            count,
        ),
        _ => 0,
    }
}

/// Why a NAT cannot be built, or a connection or flow cannot be made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NatError {
    /// The gateway MAC is zero, broadcast or multicast.
    #[error("the gateway MAC {0} is not a unicast address; use a locally administered one like 02:42:ac:11:00:01")]
    MacNotUnicast(MacAddr),
    /// The MTU is outside what the NAT supports.
    #[error("MTU {0} is out of range: use 576..=65535, and at least 1280 with IPv6")]
    Mtu(usize),
    /// A gateway address is not a unicast address.
    #[error("the gateway address {0} is not a unicast address")]
    NotUnicast(IpAddr),
    /// A prefix length longer than the address.
    #[error("prefix length /{0} is longer than the address")]
    PrefixLen(u8),
    /// A limit is zero or out of range.
    #[error("NAT limit `{0}` is out of range")]
    Limit(&'static str),
    /// The container address is not in this network (or its family is not
    /// enabled on it), or a port is zero.
    #[error("{0} is not a container endpoint of this network")]
    NotInNetwork(SocketAddr),
    /// [`NatLimits::max_tcp`] connections exist.
    #[error("the network's NAT already holds {0} TCP connections")]
    TcpTableFull(usize),
    /// [`NatLimits::max_udp_flows`] flows exist.
    #[error("the network's NAT already holds {0} UDP flows")]
    UdpTableFull(usize),
    /// Every port in [`NAT_PORTS`] on this gateway address is taken.
    #[error("no free port on the gateway address {0}")]
    NoFreePort(IpAddr),
    /// A datagram does not fit the network's MTU.
    #[error("a {0}-byte datagram does not fit the network's MTU")]
    DatagramTooBig(usize),
}

/// A TCP connection through the NAT. Never reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub u64);

/// A UDP flow through the NAT. Never reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FlowId(pub u64);

/// A published UDP port's host socket, named by the daemon.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ListenerId(pub u64);

/// What the daemon must do with host sockets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NatEvent {
    /// A container connects to `dst`: connect a host TCP socket to it and
    /// report the outcome with [`Nat::egress_connected`].
    EgressTcpConnect {
        /// The connection.
        id: ConnId,
        /// The container's address and port.
        src: SocketAddr,
        /// Where the container connects to.
        dst: SocketAddr,
    },
    /// Bytes from the container wait for [`Nat::tcp_read`]. Sent again only
    /// after a read emptied the buffer.
    TcpReadable(ConnId),
    /// [`Nat::tcp_write`] took less than offered earlier and has room again.
    TcpWritable(ConnId),
    /// The container finished sending and every byte was read: shut down the
    /// host socket's write side.
    TcpFin(ConnId),
    /// The connection is gone; close the host socket (abortively when
    /// `reset`) and forget the id. The last event of every [`ConnId`].
    TcpClosed {
        /// The connection.
        id: ConnId,
        /// Reset, timed out or refused, rather than closed by both sides.
        reset: bool,
    },
    /// A container sends UDP to `dst`: make a host UDP socket for the flow
    /// (connected to `dst`) and feed what it receives to [`Nat::udp_reply`].
    UdpFlowOpened {
        /// The flow.
        flow: FlowId,
        /// The container's address and port.
        src: SocketAddr,
        /// Where the container sends to.
        dst: SocketAddr,
    },
    /// An egress flow expired: close its host socket.
    UdpFlowClosed(FlowId),
    /// A container pings `dst`: make a host ICMP echo ("ping") socket for
    /// the flow, connected to `dst`, send the flow's datagrams from it (each
    /// a whole echo request: the kernel sets identifier and checksum) and
    /// feed the echo replies it receives to [`Nat::icmp_reply`]. Where the
    /// host allows no ping sockets, ignore it: the container sees no reply.
    IcmpFlowOpened {
        /// The flow.
        flow: FlowId,
        /// The container's address.
        src: IpAddr,
        /// The address pinged.
        dst: IpAddr,
    },
    /// An echo flow expired: close its ping socket.
    IcmpFlowClosed(FlowId),
}

/// Which host socket a [`Datagram`] leaves from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UdpVia {
    /// The egress flow's own socket.
    Flow(FlowId),
    /// A published port's listener socket (a reply to a client).
    Listener(ListenerId),
}

/// A datagram for the daemon to send; its payload is in the caller's buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Datagram {
    /// The socket to send from.
    pub via: UdpVia,
    /// Where to send it.
    pub dst: SocketAddr,
    /// Payload length.
    pub len: usize,
}

/// What the NAT did, for `vswitch stats`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NatStats {
    /// Frames delivered to [`Nat::handle_frame`].
    pub frames_in: u64,
    /// Frames handed out by [`Nat::poll_transmit`].
    pub frames_out: u64,
    /// Frames that do not parse as Ethernet and IP, or have bad ports.
    pub frames_malformed: u64,
    /// Frames with a bad IPv4, TCP or UDP checksum.
    pub frames_bad_checksum: u64,
    /// Frames the NAT does not handle: not to the gateway MAC, fragments,
    /// other protocols, or an address family the network does not have.
    pub frames_unsupported: u64,
    /// Frames from an address outside the network, or to an address the
    /// NAT does not forward to (the network itself, multicast, loopback...).
    pub frames_bad_address: u64,
    /// Frames dropped because the transmit queue was full, or too large for
    /// the caller's buffer.
    pub frames_dropped: u64,
    /// Frames from smoltcp to an address with no known MAC.
    pub frames_no_neighbor: u64,
    /// Egress SYNs and datagrams dropped on an internal network.
    pub egress_denied: u64,
    /// Egress TCP connections started (SYNs that asked for a host connect).
    pub tcp_egress: u64,
    /// Published-port TCP connections started.
    pub tcp_inbound: u64,
    /// SYNs answered with RST and inbound connections refused: table full.
    pub tcp_refused: u64,
    /// Egress connects the host reported failed.
    pub tcp_connect_failed: u64,
    /// Connections reset for idleness or a connect that never finished.
    pub tcp_timed_out: u64,
    /// Connections now held (a gauge).
    pub tcp_active: u64,
    /// UDP flows opened, egress and inbound.
    pub udp_flows: u64,
    /// Datagrams dropped because the flow table was full.
    pub udp_refused: u64,
    /// Flows closed for idleness.
    pub udp_expired: u64,
    /// Flows now held (a gauge).
    pub udp_active: u64,
    /// Datagrams from containers handed to the daemon.
    pub udp_to_host: u64,
    /// Datagrams written to containers.
    pub udp_to_container: u64,
    /// Datagrams dropped: queue full, too big, unknown flow or wrong family.
    pub udp_dropped: u64,
    /// ICMP echo flows opened.
    pub icmp_flows: u64,
    /// ICMP echo flows now held (a gauge).
    pub icmp_active: u64,
    /// Echo requests from containers handed to the daemon.
    pub icmp_to_host: u64,
    /// Echo replies written to containers.
    pub icmp_to_container: u64,
    /// Echo messages dropped: table or queue full, bad reply, unknown flow.
    pub icmp_dropped: u64,
}

impl NatStats {
    /// Adds another shard's counters (gauges add up too: each shard holds
    /// its own connections and flows).
    pub fn add(&mut self, other: &NatStats) {
        self.frames_in += other.frames_in;
        self.frames_out += other.frames_out;
        self.frames_malformed += other.frames_malformed;
        self.frames_bad_checksum += other.frames_bad_checksum;
        self.frames_unsupported += other.frames_unsupported;
        self.frames_bad_address += other.frames_bad_address;
        self.frames_dropped += other.frames_dropped;
        self.frames_no_neighbor += other.frames_no_neighbor;
        self.egress_denied += other.egress_denied;
        self.tcp_egress += other.tcp_egress;
        self.tcp_inbound += other.tcp_inbound;
        self.tcp_refused += other.tcp_refused;
        self.tcp_connect_failed += other.tcp_connect_failed;
        self.tcp_timed_out += other.tcp_timed_out;
        self.tcp_active += other.tcp_active;
        self.udp_flows += other.udp_flows;
        self.udp_refused += other.udp_refused;
        self.udp_expired += other.udp_expired;
        self.udp_active += other.udp_active;
        self.udp_to_host += other.udp_to_host;
        self.udp_to_container += other.udp_to_container;
        self.udp_dropped += other.udp_dropped;
        self.icmp_flows += other.icmp_flows;
        self.icmp_active += other.icmp_active;
        self.icmp_to_host += other.icmp_to_host;
        self.icmp_to_container += other.icmp_to_container;
        self.icmp_dropped += other.icmp_dropped;
    }
}

/// True when the daemon should hand `frame` (received on the gateway port)
/// to the network's [`Nat`] rather than its gateway: unicast IPv4 or IPv6
/// to any address but the gateway's, or TCP/UDP to the gateway address on a
/// port in [`NAT_PORTS`] (replies to connections the NAT made from it). ARP,
/// NDP, multicast, link-local and everything else for the gateway is the
/// gateway's. Reads only the fixed headers; never panics.
pub fn is_for_nat(
    frame: &[u8],
    gateway_ipv4: Option<Ipv4Addr>,
    gateway_ipv6: Option<Ipv6Addr>,
) -> bool {
    if frame.len() < ETH_LEN || frame[0] & 1 != 0 {
        return false;
    }
    let ip = &frame[ETH_LEN..];
    match u16::from_be_bytes([frame[12], frame[13]]) {
        0x0800 => {
            if ip.len() < 20 || ip[0] >> 4 != 4 {
                return false;
            }
            let dst = Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
            if dst == crate::gateway::DNS_SERVICE_V4 {
                // The gateway's resolver, never the outside world's.
                return false;
            }
            if Some(dst) == gateway_ipv4 {
                let ihl = usize::from(ip[0] & 0x0f) * 4;
                let fragment = u16::from_be_bytes([ip[6], ip[7]]) & 0x1fff != 0;
                return !fragment && to_nat_port(ip[9], ip.get(ihl..));
            }
            !(dst.is_unspecified() || dst.is_broadcast() || dst.is_multicast() || dst.is_loopback())
        }
        0x86dd => {
            if ip.len() < 40 || ip[0] >> 4 != 6 {
                return false;
            }
            let mut d = [0u8; 16];
            d.copy_from_slice(&ip[24..40]);
            let dst = Ipv6Addr::from(d);
            if Some(dst) == gateway_ipv6 {
                return to_nat_port(ip[6], ip.get(40..));
            }
            !(dst.is_unspecified()
                || dst.is_multicast()
                || dst.is_loopback()
                || crate::wire::is_ipv6_link_local(&dst))
        }
        _ => false,
    }
}

/// TCP or UDP (`proto`) with a destination port in [`NAT_PORTS`].
fn to_nat_port(proto: u8, l4: Option<&[u8]>) -> bool {
    let is_tcp_udp = matches!(IpProtocol::from(proto), IpProtocol::Tcp | IpProtocol::Udp);
    match l4 {
        Some([_, _, hi, lo, ..]) if is_tcp_udp => {
            NAT_PORTS.contains(&u16::from_be_bytes([*hi, *lo]))
        }
        _ => false,
    }
}

/// A connection or flow as the container sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Tuple {
    /// The container's address and port.
    container: SocketAddr,
    /// The other end as the container sees it.
    peer: SocketAddr,
}

/// A timer of the NAT's own (smoltcp keeps its own).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    Tcp(ConnId),
    Udp(FlowId),
}

/// The link checks are the gateway's: the same faults, as NAT errors.
impl From<GatewayError> for NatError {
    fn from(e: GatewayError) -> NatError {
        match e {
            GatewayError::MacNotUnicast(m) => NatError::MacNotUnicast(m),
            GatewayError::Mtu(m) => NatError::Mtu(m),
            GatewayError::NotUnicast(a) => NatError::NotUnicast(a),
            GatewayError::PrefixLen(p) => NatError::PrefixLen(p),
        }
    }
}

/// Transport protocols, for the port tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Proto {
    Tcp,
    Udp,
}

/// A frame from a container, parsed and checked.
struct Ingress<'a> {
    src_mac: MacAddr,
    src: IpAddr,
    dst: IpAddr,
    /// The whole IP packet, without Ethernet padding.
    packet: &'a [u8],
    /// The transport checksum need not be checked (a local TAP's).
    csum_trusted: bool,
}

/// The NAT takes TCP super-frames whole; other GSO super-frames must be
/// segmented first.
fn offloads_ok(hdr: &VnetHdr) -> Result<(), NatRefusal> {
    let tcp_gso = matches!(hdr.gso_type & !gso::ECN, gso::TCPV4 | gso::TCPV6);
    if hdr.is_gso() && !tcp_gso {
        Err(NatRefusal::Unsupported)
    } else {
        Ok(())
    }
}

/// What a frame admitted by the NAT carries ([`Nat::classify`]).
#[derive(Debug, Clone, Copy)]
enum FlowKindOf {
    /// TCP, source and destination ports.
    Tcp(u16, u16),
    /// UDP, source and destination ports.
    Udp(u16, u16),
    /// An ICMP or ICMPv6 echo request with this identifier.
    Echo(u16),
}

/// The kind of flow an egress frame opens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NatProto {
    /// A TCP connection through a host socket.
    Tcp,
    /// A UDP flow through a host socket.
    Udp,
    /// ICMP echo through a host ping socket.
    IcmpEcho,
}

/// Why the NAT refuses a frame, by the counter [`Nat::handle_frame`]
/// bumps for it ([`NatStats`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NatRefusal {
    /// `frames_malformed`.
    Malformed,
    /// `frames_bad_checksum`.
    BadChecksum,
    /// `frames_unsupported`.
    Unsupported,
    /// `frames_bad_address`: from outside the network, or to an address
    /// the NAT does not forward to (the network itself, loopback...).
    BadAddress,
    /// `egress_denied`: nothing leaves an internal network.
    EgressDenied,
}

impl NatRefusal {
    /// The name `vswitch stats` shows the counter under.
    pub const fn as_str(self) -> &'static str {
        match self {
            NatRefusal::Malformed => "FramesMalformed",
            NatRefusal::BadChecksum => "FramesBadChecksum",
            NatRefusal::Unsupported => "FramesUnsupported",
            NatRefusal::BadAddress => "FramesBadAddress",
            NatRefusal::EgressDenied => "EgressDenied",
        }
    }
}

/// [`Nat::classify`]: what the NAT would do with a frame from a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NatDecision {
    /// [`is_for_nat`] does not claim it: it is the gateway's (ARP, NDP,
    /// ICMP to the gateway address, DNS).
    NotForNat,
    /// To a port the NAT lent on the gateway address: a reply to a
    /// published port's client.
    Reply,
    /// It leaves through a host socket: a new flow from `src` to `dst`
    /// (for ICMP echo, `src`'s port is the echo identifier and `dst`'s 0).
    Egress {
        /// TCP, UDP or ICMP echo.
        proto: NatProto,
        /// The container's address and port.
        src: SocketAddr,
        /// Where it goes.
        dst: SocketAddr,
    },
    /// Dropped, and counted under this reason.
    Refused(NatRefusal),
    /// A new flow an egress policy keeps in (counted as `EgressDenied` and
    /// under the policy's name).
    Denied(String),
}

impl Nat {
    /// The tuple of a TCP segment or UDP datagram from the container with
    /// these ports, or `None` (counted malformed) if either port is zero.
    fn container_tuple(&mut self, ingress: &Ingress<'_>, sport: u16, dport: u16) -> Option<Tuple> {
        if sport == 0 || dport == 0 {
            self.stats.frames_malformed += 1;
            return None;
        }
        Some(Tuple {
            container: SocketAddr::new(ingress.src, sport),
            peer: SocketAddr::new(ingress.dst, dport),
        })
    }
}

/// The NAT of one network. See the module documentation.
pub struct Nat {
    mac: MacAddr,
    ipv4: Option<(Ipv4Addr, u8)>,
    ipv6: Option<(Ipv6Addr, u8)>,
    mtu: usize,
    egress: bool,
    limits: NatLimits,
    shard: Shard,
    epoch: Instant,
    caps: DeviceCapabilities,
    iface: Interface,
    sockets: SocketSet<'static>,
    /// Closed TCP sockets for reuse (see `tcp::SOCKET_POOL`).
    socket_pool: Vec<smoltcp::socket::tcp::Socket<'static>>,
    conns: FastMap<ConnId, TcpConn>,
    tuples: FastMap<Tuple, ConnId>,
    connecting: usize,
    neighbors: FastMap<IpAddr, Neighbor>,
    flows: FastMap<FlowId, UdpFlow>,
    flow_tuples: FastMap<Tuple, FlowId>,
    echo_tuples: FastMap<Tuple, FlowId>,
    inbound_flows: FastMap<(ListenerId, SocketAddr, SocketAddr), FlowId>,
    tcp_ports: HashSet<(IpAddr, u16)>,
    udp_ports: HashSet<(IpAddr, u16)>,
    /// Where the search for a free gateway-side port starts: random at
    /// first, then just past the last port taken (RFC 6056's algorithm 5),
    /// so a port comes back only after the whole range was used, long after
    /// the container's TIME-WAIT for it ended.
    port_cursor: u16,
    timers: BTreeSet<(Instant, Timer)>,
    tx: TxQueue,
    datagrams: DatagramQueue,
    events: VecDeque<NatEvent>,
    rng: Rng,
    next_id: u64,
    /// Connections whose socket woke since they were last serviced.
    woken: Arc<Woken>,
    /// A socket was closed or aborted during a service round: poll again.
    poll_needed: bool,
    /// Scratch list of connection ids for service rounds.
    scratch: Vec<ConnId>,
    /// Published connections holding host bytes until the container
    /// answers their SYN (see [`Nat::tcp_write_with`]).
    early: Vec<ConnId>,
    stats: NatStats,
    /// The network's policies (egress rules, NetworkPolicies' egress), as
    /// the datapath last set them, with the network's id in them.
    policy: Option<(NetworkId, Arc<PolicyTable>)>,
    /// New flows the policies kept in, by policy.
    denials: Denials,
}

impl std::fmt::Debug for Nat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Nat")
            .field("mac", &self.mac)
            .field("ipv4", &self.ipv4)
            .field("ipv6", &self.ipv6)
            .field("mtu", &self.mtu)
            .field("egress", &self.egress)
            .field("limits", &self.limits)
            .field("tcp", &self.conns.len())
            .field("udp", &self.flows.len())
            .field("tx_queued", &self.tx.frames.len())
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl Nat {
    /// Builds the NAT of a network. `now` is the clock origin of its timers.
    pub fn new(config: NatConfig, now: Instant) -> Result<Nat, NatError> {
        let mac = config.gateway_mac;
        check_interface(mac, config.mtu, config.ipv4, config.ipv6)?;
        let shard = config.shard;
        if shard.count == 0 || shard.count > Shard::MAX || shard.index >= shard.count {
            return Err(NatError::Limit("shard"));
        }
        let mut limits = config.limits;
        // The TCP bounds are the network's: each shard holds its share.
        limits.max_tcp = limits.max_tcp.div_ceil(shard.count);
        limits.max_tcp_connecting = limits.max_tcp_connecting.div_ceil(shard.count);
        if !TCP_BUFFER_RANGE.contains(&limits.tcp_buffer) {
            return Err(NatError::Limit("tcp_buffer"));
        }
        for (name, d) in [
            ("tcp_idle", limits.tcp_idle),
            ("tcp_connect_timeout", limits.tcp_connect_timeout),
            ("udp_idle", limits.udp_idle),
        ] {
            if d.is_zero() || d > MAX_TIMEOUT {
                return Err(NatError::Limit(name));
            }
        }

        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ip;
        // smoltcp sends TCP super-frames of up to 64 KiB and says the
        // container's MSS; the NAT writes them with a GSO virtio_net_hdr and
        // a partial checksum (`device::NatLink`), which the container's
        // kernel cuts, and completes or trusts, as it does for any local
        // sender. The link's MTU is therefore the super-frame's: smoltcp
        // 0.14 drops an IPv6 packet above the MTU even when it asked for
        // segmentation, and the segment size still comes from the
        // container's MSS (which its own MTU bounds). TCP checksums from
        // containers are checked in `handle_frame` instead, where a TAP's
        // partial ones are known.
        caps.max_transmission_unit = MAX_SUPER_PACKET;
        caps.checksum.tcp = Checksum::None;
        caps.segmentation.tcpv4 = std::num::NonZeroUsize::new(MAX_SUPER_PACKET);
        caps.segmentation.tcpv6 = std::num::NonZeroUsize::new(MAX_SUPER_PACKET);

        // Shards of one network draw different sequence numbers and ports.
        let mut rng =
            Rng(config.random_seed ^ (shard.index as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let tx = TxQueue::new(TX_QUEUE_FRAMES, TX_QUEUE_BYTES, 64);
        let neighbors = FastMap::default();
        let mut iface = new_interface(HardwareAddress::Ip, rng.next_u64(), &caps, now);
        iface.set_any_ip(true);
        add_addrs(&mut iface, config.ipv4, config.ipv6);
        // Every destination is reachable: the bridge is the only link.
        if let Some((addr, _)) = config.ipv4 {
            let _ = iface.routes_mut().add_default_ipv4_route(addr);
        }
        if let Some((addr, _)) = config.ipv6 {
            let _ = iface.routes_mut().add_default_ipv6_route(addr);
        }

        Ok(Nat {
            mac,
            ipv4: config.ipv4,
            ipv6: config.ipv6,
            mtu: config.mtu,
            egress: config.egress,
            limits,
            shard,
            epoch: now,
            caps,
            iface,
            sockets: SocketSet::new(Vec::new()),
            socket_pool: Vec::new(),
            conns: FastMap::default(),
            tuples: FastMap::default(),
            connecting: 0,
            woken: Arc::new(Woken::default()),
            neighbors,
            flows: FastMap::default(),
            flow_tuples: FastMap::default(),
            echo_tuples: FastMap::default(),
            inbound_flows: FastMap::default(),
            tcp_ports: HashSet::new(),
            udp_ports: HashSet::new(),
            port_cursor: 0,
            timers: BTreeSet::new(),
            tx,
            datagrams: DatagramQueue::default(),
            events: VecDeque::new(),
            rng,
            next_id: 1,
            poll_needed: false,
            scratch: Vec::new(),
            early: Vec::new(),
            stats: NatStats::default(),
            policy: None,
            denials: Denials::default(),
        })
    }

    /// [`is_for_nat`] with this network's gateway addresses.
    pub fn is_for_nat(&self, frame: &[u8]) -> bool {
        is_for_nat(frame, self.ipv4.map(|(a, _)| a), self.ipv6.map(|(a, _)| a))
    }

    /// Which part of the network's connections this NAT serves.
    pub fn shard(&self) -> Shard {
        self.shard
    }

    /// The shard that must take a published port's TCP connection from
    /// `client` to `container` (accepted by this one): the owner of the
    /// tuple the container will see when the client appears as itself;
    /// this shard when it appears as a gateway address and port, since the
    /// port this shard lends is one whose tuple comes back to it.
    pub fn inbound_tcp_shard(&self, client: SocketAddr, container: SocketAddr) -> usize {
        let client = addresses::canonical(client);
        if self.appears_as_itself(client, container) {
            tcp_shard(container, client, self.shard.count)
        } else {
            self.shard.index
        }
    }

    /// Counters so far.
    pub fn stats(&self) -> NatStats {
        let mut s = self.stats;
        s.frames_dropped += self.tx.dropped;
        s.tcp_active = self.conns.len() as u64;
        s.icmp_active = self.echo_tuples.len() as u64;
        s.udp_active = (self.flows.len() - self.echo_tuples.len()) as u64;
        s
    }

    /// Takes a frame the bridge delivered to the gateway port and
    /// [`is_for_nat`] claimed, with the offload header it came with: a
    /// frame whose transport checksum a local TAP left partial
    /// (`NEEDS_CSUM`) or vouched for (`DATA_VALID`) is not checked again,
    /// and a TCP super-frame (TSO) is taken whole. Other GSO super-frames
    /// must be segmented first (counted unsupported).
    pub fn handle_frame(&mut self, hdr: &VnetHdr, frame: &[u8], now: Instant) {
        self.stats.frames_in += 1;
        if let Err(refusal) = offloads_ok(hdr) {
            self.count_refusal(refusal);
            return;
        }
        let Ok(pkt) = IpFrame::parse(frame) else {
            self.stats.frames_malformed += 1;
            return;
        };
        let checked = self.admit(hdr, frame, &pkt).and_then(|ingress| {
            let transport = pkt.transport();
            let kind = self.transport_kind(hdr, &ingress, transport.as_ref())?;
            Ok((ingress, transport, kind))
        });
        let (ingress, transport, kind) = match checked {
            Ok(c) => c,
            Err(refusal) => {
                self.count_refusal(refusal);
                return;
            }
        };
        match (transport, kind) {
            (Some(TransportHeader::Tcp(tcp)), _) => self.tcp_segment(&ingress, &tcp, now),
            (Some(TransportHeader::Udp(udp)), _) => self.udp_datagram(&ingress, &udp, now),
            (Some(TransportHeader::Icmpv4(icmp)), FlowKindOf::Echo(ident)) => {
                self.echo_request(&ingress, ident, icmp.message(), now)
            }
            (Some(TransportHeader::Icmpv6(icmp)), FlowKindOf::Echo(ident)) => {
                self.echo_request(&ingress, ident, icmp.message(), now)
            }
            _ => self.stats.frames_unsupported += 1,
        }
    }

    /// What [`Nat::handle_frame`] would do with `frame` from a container,
    /// changing nothing (no flow, no connection, no counter): the same
    /// checks in the same order, then whether it would leave. For `vswitch
    /// trace`. `frame` is taken as a TAP without offloads hands it over, so
    /// its checksums are checked.
    pub fn classify(&self, frame: &[u8]) -> NatDecision {
        if !self.is_for_nat(frame) {
            return NatDecision::NotForNat;
        }
        let hdr = VnetHdr::NONE;
        let Ok(pkt) = IpFrame::parse(frame) else {
            return NatDecision::Refused(NatRefusal::Malformed);
        };
        let checked = self.admit(&hdr, frame, &pkt).and_then(|ingress| {
            let transport = pkt.transport();
            let kind = self.transport_kind(&hdr, &ingress, transport.as_ref())?;
            Ok((ingress.src, ingress.dst, kind))
        });
        let (src, dst, kind) = match checked {
            Ok(c) => c,
            Err(refusal) => return NatDecision::Refused(refusal),
        };
        if self.is_gateway(dst) {
            // A reply to a connection the NAT made from a lent port.
            return NatDecision::Reply;
        }
        let (proto, sport, dport) = match kind {
            FlowKindOf::Tcp(s, d) => (NatProto::Tcp, s, d),
            FlowKindOf::Udp(s, d) => (NatProto::Udp, s, d),
            FlowKindOf::Echo(ident) => (NatProto::IcmpEcho, ident, 0),
        };
        let number = match proto {
            NatProto::Tcp => 6,
            NatProto::Udp => 17,
            NatProto::IcmpEcho => 1,
        };
        match self.egress_verdict(src, dst, number, dport) {
            Ok(()) => {}
            Err(None) => return NatDecision::Refused(NatRefusal::EgressDenied),
            Err(Some(name)) => return NatDecision::Denied(name),
        }
        NatDecision::Egress {
            proto,
            src: SocketAddr::new(src, sport),
            dst: SocketAddr::new(dst, dport),
        }
    }

    /// Whether a new flow from `src` to `dst` (protocol `proto`, port
    /// `dport`) may leave: never from an `--internal` network (`Err(None)`),
    /// else as the network's policies say (`Err(Some(policy))`).
    fn egress_verdict(
        &self,
        src: IpAddr,
        dst: IpAddr,
        proto: u8,
        dport: u16,
    ) -> Result<(), Option<String>> {
        if !self.egress {
            return Err(None);
        }
        match &self.policy {
            Some((network, table)) => match table.check_egress(*network, src, dst, proto, dport) {
                Verdict::Allow => Ok(()),
                Verdict::Deny(name) => Err(Some(table.name(name).to_string())),
            },
            None => Ok(()),
        }
    }

    /// [`Nat::egress_verdict`], counting a refusal: `egress_denied`, and
    /// by policy.
    pub(super) fn egress_allows(
        &mut self,
        src: IpAddr,
        dst: IpAddr,
        proto: u8,
        dport: u16,
    ) -> bool {
        if !self.egress {
            self.stats.egress_denied += 1;
            return false;
        }
        let Some((network, table)) = &self.policy else {
            return true;
        };
        match table.check_egress(*network, src, dst, proto, dport) {
            Verdict::Allow => true,
            Verdict::Deny(name) => {
                self.stats.egress_denied += 1;
                self.denials.count(table, name);
                false
            }
        }
    }

    /// Sets the policies new egress flows are judged by (flows already
    /// out stay).
    pub fn set_policy(&mut self, network: NetworkId, table: Arc<PolicyTable>) {
        self.policy = Some((network, table));
    }

    /// New flows the policies kept in, by policy name.
    pub fn denials(&self) -> &Denials {
        &self.denials
    }

    /// The checks of a frame from a container up to its transport header:
    /// offloads, addresses, the IPv4 checksum.
    fn admit<'f>(
        &self,
        hdr: &VnetHdr,
        frame: &'f [u8],
        pkt: &IpFrame<'_>,
    ) -> Result<Ingress<'f>, NatRefusal> {
        let csum_trusted = hdr.flags & (flags::NEEDS_CSUM | flags::DATA_VALID) != 0;
        if pkt.dst_mac() != self.mac || pkt.has_link_extensions() {
            return Err(NatRefusal::Unsupported);
        }
        let src_mac = pkt.src_mac();
        if src_mac.is_multicast() || src_mac.is_zero() {
            return Err(NatRefusal::Malformed);
        }
        let (src, dst, packet_len, direct) = match pkt.ip() {
            Some(IpHeader::V4(ip)) => {
                if ip.is_fragment() {
                    return Err(NatRefusal::Unsupported);
                }
                if !ip.checksum_ok() {
                    return Err(NatRefusal::BadChecksum);
                }
                (
                    IpAddr::V4(ip.src()),
                    IpAddr::V4(ip.dst()),
                    ip.total_len(),
                    ip.transport_follows(),
                )
            }
            Some(IpHeader::V6(ip)) => (
                IpAddr::V6(ip.src()),
                IpAddr::V6(ip.dst()),
                ip.total_len(),
                ip.transport_follows(),
            ),
            None => return Err(NatRefusal::Unsupported),
        };
        let Some(packet) = frame.get(ETH_LEN..ETH_LEN + packet_len) else {
            return Err(NatRefusal::Malformed);
        };
        if !self.has_family(src) {
            return Err(NatRefusal::Unsupported);
        }
        if !self.is_container_addr(src) || !self.is_forwardable(dst) {
            return Err(NatRefusal::BadAddress);
        }
        if !direct {
            // IPv6 extension headers: smoltcp reads only hop-by-hop; none
            // of our peers send them on TCP/UDP.
            return Err(NatRefusal::Unsupported);
        }
        Ok(Ingress {
            src_mac,
            src,
            dst,
            packet,
            csum_trusted,
        })
    }

    /// The checks of the transport header of an admitted frame: what the
    /// NAT handles (TCP, UDP, echo requests), checksums, GSO only for TCP.
    fn transport_kind(
        &self,
        hdr: &VnetHdr,
        ingress: &Ingress<'_>,
        transport: Option<&TransportHeader<'_, '_>>,
    ) -> Result<FlowKindOf, NatRefusal> {
        let (src, dst) = (ingress.src, ingress.dst);
        if hdr.is_gso() && !matches!(transport, Some(TransportHeader::Tcp(_))) {
            return Err(NatRefusal::Unsupported);
        }
        match transport {
            Some(TransportHeader::Tcp(tcp)) => {
                if !ingress.csum_trusted && !tcp.checksum_ok(src, dst) {
                    return Err(NatRefusal::BadChecksum);
                }
                Ok(FlowKindOf::Tcp(tcp.src_port(), tcp.dst_port()))
            }
            Some(TransportHeader::Udp(udp)) => Ok(FlowKindOf::Udp(udp.src_port(), udp.dst_port())),
            Some(TransportHeader::Icmpv4(icmp)) => {
                let echo = icmp.echo_request().ok_or(NatRefusal::Unsupported)?;
                if !ingress.csum_trusted && !icmp.checksum_ok() {
                    return Err(NatRefusal::BadChecksum);
                }
                Ok(FlowKindOf::Echo(echo.ident))
            }
            Some(TransportHeader::Icmpv6(icmp)) => {
                let echo = icmp.echo_request().ok_or(NatRefusal::Unsupported)?;
                let (IpAddr::V6(s), IpAddr::V6(d)) = (src, dst) else {
                    return Err(NatRefusal::Unsupported);
                };
                if !ingress.csum_trusted && !icmp.checksum_ok(s, d) {
                    return Err(NatRefusal::BadChecksum);
                }
                Ok(FlowKindOf::Echo(echo.ident))
            }
            None => Err(NatRefusal::Unsupported),
        }
    }

    fn count_refusal(&mut self, refusal: NatRefusal) {
        let counter = match refusal {
            NatRefusal::Malformed => &mut self.stats.frames_malformed,
            NatRefusal::BadChecksum => &mut self.stats.frames_bad_checksum,
            NatRefusal::Unsupported => &mut self.stats.frames_unsupported,
            NatRefusal::BadAddress => &mut self.stats.frames_bad_address,
            NatRefusal::EgressDenied => &mut self.stats.egress_denied,
        };
        *counter += 1;
    }

    /// Copies the next frame to inject into the bridge into `out`; returns
    /// its length and its offload header: a TCP frame has a partial checksum
    /// (`NEEDS_CSUM`) and may be a GSO super-frame of up to
    /// [`MAX_SUPER_PACKET`] to be cut at the container's MSS. A frame longer
    /// than `out` is dropped (counted).
    pub fn poll_transmit(&mut self, now: Instant, out: &mut [u8]) -> Option<(usize, VnetHdr)> {
        if self.tx.frames.is_empty() {
            // smoltcp may have had more to send than the queue took.
            self.run(None, Service::Woken(None), now);
        }
        loop {
            let buf = self.tx.pop()?;
            // Every queued buffer starts with its offload header.
            let hdr = VnetHdr::parse(&buf).unwrap_or(VnetHdr::NONE);
            let frame = buf.get(VnetHdr::LEN..).unwrap_or_default();
            let n = frame.len();
            let fits = n <= out.len();
            if fits {
                out[..n].copy_from_slice(frame);
            }
            self.tx.recycle(buf);
            if fits {
                self.stats.frames_out += 1;
                return Some((n, hdr));
            }
            self.tx.dropped += 1;
        }
    }

    /// The next thing the daemon must do with host sockets.
    pub fn poll_event(&mut self) -> Option<NatEvent> {
        self.events.pop_front()
    }

    /// Copies the next datagram for a host socket into `out`. A datagram
    /// longer than `out` is dropped (counted).
    pub fn poll_datagram(&mut self, out: &mut [u8]) -> Option<Datagram> {
        loop {
            let (via, dst, payload) = self.datagrams.queue.pop_front()?;
            self.datagrams.bytes -= payload.len();
            let len = payload.len();
            let fits = len <= out.len();
            if fits {
                out[..len].copy_from_slice(&payload);
            }
            if self.datagrams.free.len() < 64 {
                self.datagrams.free.push(payload);
            }
            if fits {
                return Some(Datagram { via, dst, len });
            }
            self.stats.udp_dropped += 1;
        }
    }

    /// When [`Nat::handle_timeout`] should run next, if anything waits on
    /// time. May be in the past: run it right away.
    pub fn poll_timeout(&mut self, now: Instant) -> Option<Instant> {
        let smol = poll_at(&mut self.iface, &self.sockets, self.epoch, now);
        let own = self.timers.first().map(|(t, _)| *t);
        [smol, own].into_iter().flatten().min()
    }

    /// Runs the timers due at `now`: TCP retransmissions, connect timeouts,
    /// idle connections and flows.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(&(at, timer)) = self.timers.first() {
            if at > now {
                break;
            }
            self.timers.pop_first();
            match timer {
                Timer::Tcp(id) => self.tcp_timer(id, now),
                Timer::Udp(flow) => self.udp_timer(flow, now),
            }
        }
        self.run(None, Service::All, now);
    }

    /// Queues a frame of `size` bytes that `write` emits into a buffer of
    /// that size; false when it exceeds the MTU, the queue is full or `write`
    /// fails.
    fn push_frame(&mut self, size: usize, write: impl FnOnce(&mut [u8]) -> bool) -> bool {
        if size > ETH_LEN + self.mtu {
            return false;
        }
        let Some(mut buf) = self.tx.alloc() else {
            return false;
        };
        buf.resize(VnetHdr::LEN + size, 0);
        VnetHdr::NONE.write(&mut buf);
        if write(&mut buf[VnetHdr::LEN..]) {
            self.tx.commit(buf);
            true
        } else {
            self.tx.recycle(buf);
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testing::*;

    fn shard_net(index: usize, count: usize) -> Net {
        let mut net = Net::new(true, limits());
        let shard = Shard { index, count };
        net.nat = Nat::new(
            NatConfig {
                shard,
                ..config(true, limits())
            },
            net.epoch,
        )
        .unwrap();
        net
    }

    #[test]
    fn frames_go_to_the_shard_of_their_connection() {
        let dst = sa("198.51.100.9:443");
        let mut per_shard = [0usize; 3];
        for sport in 40000..40300 {
            let f = syn_frame(sport, dst);
            let shard = frame_shard(&f, 3);
            assert_eq!(shard, tcp_shard(SocketAddr::new(C4.into(), sport), dst, 3));
            per_shard[shard] += 1;
        }
        // Connections spread over every shard, none starved.
        assert!(per_shard.iter().all(|n| *n >= 60), "{per_shard:?}");
        // An IPv4-mapped client is the same client.
        let mapped = SocketAddr::new(C4.to_ipv6_mapped().into(), 40000);
        let c = SocketAddr::new(C4.into(), 40000);
        assert_eq!(tcp_shard(mapped, dst, 7), tcp_shard(c, dst, 7));
        // Everything else stays with the first shard.
        assert_eq!(frame_shard(&udp_frame(40001, dst, b"x"), 3), 0);
        let echo = echo_request_frame(IpAddr::V4(OUTSIDE4), 7, 1, b"ping");
        assert_eq!(frame_shard(&echo, 3), 0);
        assert_eq!(frame_shard(&[0u8; 20], 3), 0);
        assert_eq!(frame_shard(&syn_frame(40002, dst), 1), 0);
    }

    #[test]
    fn a_shard_serves_its_connections_and_lends_ports_it_owns() {
        let mut net = shard_net(1, 2);
        assert_eq!(net.nat.shard(), Shard { index: 1, count: 2 });
        // A client that appears as itself belongs to its tuple's shard.
        let container = sa("10.0.0.2:80");
        let client = sa("192.0.2.7:5555");
        assert_eq!(
            net.nat.inbound_tcp_shard(client, container),
            tcp_shard(container, client, 2)
        );
        // Loopback clients appear as the gateway, with a port this shard
        // lends: one whose tuple hashes back here, so the container's
        // replies come to this shard.
        for i in 0..8 {
            let client = SocketAddr::new(Ipv4Addr::LOCALHOST.into(), 41000 + i);
            assert_eq!(net.nat.inbound_tcp_shard(client, container), 1);
            let (h, id) = net.inbound(&client.to_string(), "10.0.0.2:80");
            net.settle();
            let peer = SocketAddr::from(net.c.tcp(h).remote_endpoint().unwrap());
            assert_eq!(peer.ip(), IpAddr::V4(GW4));
            assert_eq!(tcp_shard(container, peer, 2), 1, "{peer}");
            net.nat.tcp_write(id, b"hello", net.now);
            net.settle();
            assert_eq!(net.c.recv_all(h), b"hello");
            net.nat.tcp_abort(id, net.now);
            net.settle();
            net.take_events();
        }
        // Egress whose tuple this shard owns works as with one shard.
        let to = sa("198.51.100.9:80");
        let port = (40000..)
            .find(|p| tcp_shard(SocketAddr::new(C4.into(), *p), to, 2) == 1)
            .unwrap();
        let (h, id) = net.egress(to, port);
        net.c.tcp(h).send_slice(b"up").unwrap();
        net.settle();
        assert_eq!(net.host_read(id), b"up");
    }

    #[test]
    fn each_shard_holds_its_share_of_the_tcp_limit() {
        let mut net = shard_net(0, 4);
        // limits(): 64 connections for the network, 16 per shard of four.
        let container = sa("10.0.0.2:80");
        let _h = net.c.listen(80);
        let mut ok = 0;
        for i in 0..20 {
            let client = SocketAddr::new(Ipv4Addr::LOCALHOST.into(), 42000 + i);
            if net
                .nat
                .inbound_tcp(client, container, C_MAC, net.now)
                .is_ok()
            {
                ok += 1;
            }
        }
        assert_eq!(ok, 16);
        assert_eq!(net.nat.stats().tcp_refused, 4);
    }

    #[rstest]
    #[case::no_shards(0, 0)]
    #[case::index_past_count(2, 2)]
    #[case::too_many(0, Shard::MAX + 1)]
    fn bad_shards_are_refused(#[case] index: usize, #[case] count: usize) {
        let cfg = NatConfig {
            shard: Shard { index, count },
            ..config(true, limits())
        };
        assert!(matches!(
            Nat::new(cfg, Instant::now()),
            Err(NatError::Limit("shard"))
        ));
    }

    #[rstest]
    #[case::open(true)]
    #[case::internal(false)]
    fn classify_says_what_handle_frame_does_and_changes_nothing(#[case] egress: bool) {
        let mut net = Net::new(egress, limits());
        let out = SocketAddr::new(OUTSIDE4.into(), 80);
        let frames = [
            (syn_frame(40020, out), NatProto::Tcp),
            (udp_frame(5356, sa("198.51.100.9:53"), b"q"), NatProto::Udp),
            (
                echo_request_frame(OUTSIDE4.into(), 7, 1, b"ping"),
                NatProto::IcmpEcho,
            ),
        ];
        for (frame, proto) in frames {
            let before = net.nat.stats();
            let decision = net.nat.classify(&frame);
            assert_eq!(net.nat.stats(), before, "classify counts nothing");
            assert!(net.nat.poll_event().is_none(), "classify opens nothing");
            if egress {
                let NatDecision::Egress { proto: p, dst, .. } = decision else {
                    panic!("{decision:?}")
                };
                assert_eq!(p, proto);
                assert_eq!(dst.ip(), IpAddr::V4(OUTSIDE4));
            } else {
                assert_eq!(decision, NatDecision::Refused(NatRefusal::EgressDenied));
            }
            // handle_frame does what classify said.
            net.nat.handle_frame(&VnetHdr::NONE, &frame, net.now);
            let after = net.nat.stats();
            if egress {
                assert!(net.nat.poll_event().is_some(), "{proto:?} opened a flow");
                assert_eq!(after.egress_denied, before.egress_denied);
            } else {
                assert_eq!(after.egress_denied, before.egress_denied + 1);
            }
        }
        // The gateway's own traffic is not the NAT's; a destination inside
        // the network is refused as a bad address; so is a bad checksum.
        let dns = udp_frame(5357, SocketAddr::new(GW4.into(), 53), b"q");
        assert_eq!(net.nat.classify(&dns), NatDecision::NotForNat);
        let inside = syn_frame(40021, sa("10.0.0.3:80"));
        assert_eq!(
            net.nat.classify(&inside),
            NatDecision::Refused(NatRefusal::BadAddress)
        );
        let mut bad = syn_frame(40022, out);
        let last = bad.len() - 1;
        bad[last] ^= 0xff;
        assert_eq!(
            net.nat.classify(&bad),
            NatDecision::Refused(NatRefusal::BadChecksum)
        );
        let before = net.nat.stats();
        net.nat.handle_frame(&VnetHdr::NONE, &bad, net.now);
        assert_eq!(
            net.nat.stats().frames_bad_checksum,
            before.frames_bad_checksum + 1
        );
    }

    #[test]
    fn internal_network_drops_egress_but_publishes_ports() {
        let mut net = Net::new(false, limits());
        let h = net.c.connect(SocketAddr::new(OUTSIDE4.into(), 80), 40010);
        let u = net.c.udp_socket(5355);
        net.c.udp_send(u, sa("198.51.100.9:53"), b"q");
        net.settle();
        assert!(net.take_events().is_empty());
        assert!(net.take_datagrams().is_empty());
        assert_eq!(net.c.tcp(h).state(), tcp::State::SynSent);
        let s = net.nat.stats();
        assert!(s.egress_denied >= 2, "{s:?}");
        assert_eq!((s.tcp_egress, s.udp_flows), (0, 0));
        // Published ports work, loopback clients included.
        let (l, id) = net.inbound("127.0.0.1:7000", "10.0.0.2:80");
        net.settle();
        assert_eq!(net.c.tcp(l).state(), tcp::State::Established);
        net.c.tcp(l).send_slice(b"inside").unwrap();
        net.settle();
        assert_eq!(net.host_read(id), b"inside");
    }

    #[rstest]
    #[case::tcp_outside("198.51.100.9", 6, 80, true)]
    #[case::udp_outside("198.51.100.9", 17, 53, true)]
    #[case::icmp_outside("198.51.100.9", 1, 0, true)]
    #[case::dns_to_gateway("10.0.0.1", 17, 53, false)]
    #[case::tcp_dns_to_gateway("10.0.0.1", 6, 53, false)]
    #[case::icmp_to_gateway("10.0.0.1", 1, 0, false)]
    #[case::nat_port_on_gateway("10.0.0.1", 6, 50000, true)]
    #[case::nat_udp_port_on_gateway("10.0.0.1", 17, 65535, true)]
    #[case::below_nat_ports("10.0.0.1", 6, 49151, false)]
    #[case::dns_service("169.254.53.53", 17, 53, false)]
    #[case::multicast("224.0.0.251", 17, 5353, false)]
    #[case::broadcast("255.255.255.255", 17, 67, false)]
    #[case::loopback("127.0.0.1", 6, 80, false)]
    #[case::v6_outside("2001:db8::9", 6, 443, true)]
    #[case::v6_dns_to_gateway("fd00::1", 17, 53, false)]
    #[case::v6_nat_port_on_gateway("fd00::1", 6, 60000, true)]
    #[case::v6_multicast("ff02::1", 17, 5353, false)]
    #[case::v6_link_local("fe80::1", 6, 80, false)]
    fn classifies_frames(
        #[case] dst: &str,
        #[case] proto: u8,
        #[case] port: u16,
        #[case] nat: bool,
    ) {
        let f = frame_to(dst.parse().unwrap(), proto, port);
        assert_eq!(is_for_nat(&f, Some(GW4), Some(GW6)), nat);
    }

    #[test]
    fn classifies_non_ip_and_short_frames() {
        let arp = crate::wire::build_arp_request(C_MAC, C4, GW4);
        assert!(!is_for_nat(&arp, Some(GW4), Some(GW6)));
        let mut f = frame_to(OUTSIDE4.into(), 6, 80);
        assert!(is_for_nat(&f, Some(GW4), None));
        f[0] = 0xff; // broadcast MAC
        assert!(!is_for_nat(&f, Some(GW4), None));
        for n in 0..34 {
            assert!(!is_for_nat(&f[..n], Some(GW4), None));
        }
        // A gateway address the network does not have is just an address.
        let f = frame_to(GW4.into(), 17, 53);
        assert!(is_for_nat(&f, None, None));
    }

    #[rstest]
    #[case::multicast_mac(|c: &mut NatConfig| c.gateway_mac = MacAddr([1, 0, 0, 0, 0, 1]), NatError::MacNotUnicast(MacAddr([1, 0, 0, 0, 0, 1])))]
    #[case::small_mtu(|c: &mut NatConfig| c.mtu = 1000, NatError::Mtu(1000))]
    #[case::huge_mtu(|c: &mut NatConfig| c.mtu = 70000, NatError::Mtu(70000))]
    #[case::prefix(|c: &mut NatConfig| c.ipv4 = Some((GW4, 33)), NatError::PrefixLen(33))]
    #[case::loopback(|c: &mut NatConfig| c.ipv4 = Some((Ipv4Addr::LOCALHOST, 8)), NatError::NotUnicast(Ipv4Addr::LOCALHOST.into()))]
    #[case::multicast6(|c: &mut NatConfig| c.ipv6 = Some(("ff02::1".parse().unwrap(), 64)), NatError::NotUnicast("ff02::1".parse().unwrap()))]
    #[case::buffer(|c: &mut NatConfig| c.limits.tcp_buffer = 10, NatError::Limit("tcp_buffer"))]
    #[case::udp_idle(|c: &mut NatConfig| c.limits.udp_idle = Duration::ZERO, NatError::Limit("udp_idle"))]
    #[case::tcp_idle(|c: &mut NatConfig| c.limits.tcp_idle = Duration::from_secs(u64::MAX), NatError::Limit("tcp_idle"))]
    fn bad_configs_are_refused(#[case] change: fn(&mut NatConfig), #[case] want: NatError) {
        let mut c = config(true, NatLimits::default());
        change(&mut c);
        assert_eq!(Nat::new(c, Instant::now()).unwrap_err(), want);
    }

    #[test]
    fn garbage_is_counted() {
        let now = Instant::now();
        let mut nat = Nat::new(config(true, limits()), now).unwrap();
        nat.handle_frame(&VnetHdr::NONE, &[], now);
        nat.handle_frame(&VnetHdr::NONE, &[0xff; 10], now);
        let mut f = syn_frame(1000, sa("198.51.100.9:80"));
        f.truncate(30);
        nat.handle_frame(&VnetHdr::NONE, &f, now);
        assert_eq!(nat.stats().frames_malformed, 3);
        // Bad TCP and UDP checksums.
        let mut f = syn_frame(1000, sa("198.51.100.9:80"));
        let n = f.len();
        f[n - 3] ^= 0x40; // the window field
        nat.handle_frame(&VnetHdr::NONE, &f, now);
        assert_eq!(nat.stats().frames_bad_checksum, 1);
        let mut f = udp_frame(1000, sa("198.51.100.9:53"), b"abc");
        let n = f.len();
        f[n - 1] ^= 1;
        nat.handle_frame(&VnetHdr::NONE, &f, now);
        assert_eq!(nat.stats().frames_bad_checksum, 2);
        // From outside the network, and to the network itself.
        let mut f = Vec::new();
        PacketBuilder::ethernet2(C_MAC.0, GW_MAC.0)
            .ipv4([10, 9, 9, 9], OUTSIDE4.octets(), 64)
            .udp(1000, 53)
            .write(&mut f, b"abc")
            .unwrap();
        nat.handle_frame(&VnetHdr::NONE, &f, now);
        nat.handle_frame(
            &VnetHdr::NONE,
            &udp_frame(1000, sa("10.0.0.3:53"), b"abc"),
            now,
        );
        assert_eq!(nat.stats().frames_bad_address, 2);
        // ICMP other than echo requests, and other MACs, are not handled.
        let mut f = Vec::new();
        PacketBuilder::ethernet2(C_MAC.0, GW_MAC.0)
            .ipv4(C4.octets(), OUTSIDE4.octets(), 64)
            .icmpv4(Icmpv4Type::EchoReply(etherparse::IcmpEchoHeader {
                id: 1,
                seq: 1,
            }))
            .write(&mut f, &[])
            .unwrap();
        nat.handle_frame(&VnetHdr::NONE, &f, now);
        let mut f = udp_frame(1000, sa("198.51.100.9:53"), b"abc");
        f[5] = 0x99;
        nat.handle_frame(&VnetHdr::NONE, &f, now);
        assert_eq!(nat.stats().frames_unsupported, 2);
        assert!(nat.poll_event().is_none());
        assert!(nat.poll_transmit(now, &mut [0u8; 2048]).is_none());
        assert_eq!(nat.stats().frames_in, 9);
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_frames_never_panic(
            frames in proptest::collection::vec(
                proptest::collection::vec(proptest::num::u8::ANY, 0..120), 0..20),
            flips in proptest::collection::vec((0usize..80, proptest::num::u8::ANY), 0..8),
            ops in proptest::collection::vec((0u8..6, proptest::num::u64::ANY), 0..12),
        ) {
            let now = Instant::now();
            let mut nat = Nat::new(config(true, limits()), now).unwrap();
            let mut t = now;
            let mut buf = [0u8; 2048];
            let mut templates = [
                syn_frame(1000, sa("198.51.100.9:80")),
                udp_frame(1001, sa("198.51.100.9:53"), b"abc"),
                udp_frame(1002, sa("[2001:db8::9]:53"), b"abc"),
                frame_to(GW4.into(), 6, 50000),
            ];
            for f in &frames {
                let mut g = templates[f.len() % templates.len()].clone();
                g.extend_from_slice(f);
                nat.handle_frame(&VnetHdr::NONE, f, t);
                nat.handle_frame(&VnetHdr::NONE, &g, t);
            }
            for f in templates.iter_mut() {
                for (i, b) in &flips {
                    let i = i % f.len();
                    f[i] ^= b;
                }
                nat.handle_frame(&VnetHdr::NONE, f, t);
            }
            for (op, x) in ops {
                let id = ConnId(x % 8);
                match op {
                    0 => nat.egress_connected(id, x & 1 == 0, t),
                    1 => { nat.tcp_write(id, &buf[..(x % 2048) as usize], t); }
                    2 => nat.udp_reply(FlowId(x % 8), sa("198.51.100.9:53"), b"r", t),
                    3 => { let _ = nat.inbound_tcp(sa("203.0.113.7:1"), sa("10.0.0.2:80"), C_MAC, t); }
                    4 => nat.tcp_abort(id, t),
                    _ => t += Duration::from_millis(x % 100_000),
                }
                nat.handle_timeout(t);
                while let Some((n, hdr)) = nat.poll_transmit(t, &mut buf) {
                    proptest::prop_assert_eq!(&buf[6..12], &GW_MAC.0);
                    proptest::prop_assert!(hdr.is_gso() || n <= MTU + ETH_LEN);
                }
                while nat.poll_event().is_some() {}
                while nat.poll_datagram(&mut buf).is_some() {}
                if let Some(next) = nat.poll_timeout(t) {
                    proptest::prop_assert!(next > t);
                }
            }
        }
    }
}
