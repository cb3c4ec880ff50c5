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
//! - Bytes move with [`Nat::tcp_write`] (host to container; takes what fits,
//!   then [`NatEvent::TcpWritable`] says when to retry) and [`Nat::tcp_read`]
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

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::ops::RangeInclusive;
use std::sync::atomic::{AtomicU32, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::task::{Wake, Waker};
use std::time::{Duration, Instant};

use smoltcp::iface::{Interface, SocketHandle, SocketSet};
use smoltcp::phy::{DeviceCapabilities, Medium};
use smoltcp::socket::tcp;
use smoltcp::wire::{HardwareAddress, IpAddress, IpCidr, IpEndpoint, IpListenEndpoint};

use crate::gateway::GatewayError;
use crate::stack::{
    check_interface, new_interface, poll_at, smol_instant, Framing, QueueDevice, Rng, TxQueue,
};
use crate::wire::{
    self, Echo, EtherType, EthernetRepr, IpFrame, IpHeader, IpProtocol, IpRepr, TcpView,
    TransportHeader, UdpView,
};
use crate::MacAddr;

/// Ports the NAT takes on the gateway address when a client cannot appear
/// with its own address. [`is_for_nat`] sends frames to the gateway address
/// on these ports to the NAT; the gateway itself only serves port 53.
pub const NAT_PORTS: RangeInclusive<u16> = 49152..=65535;
/// Frames waiting for [`Nat::poll_transmit`]. Beyond: smoltcp waits, other
/// frames are dropped (counted).
pub const TX_QUEUE_FRAMES: usize = 1024;
/// Datagrams waiting for [`Nat::poll_datagram`]. Beyond: dropped (counted).
pub const DATAGRAM_QUEUE: usize = 1024;
/// Payload bytes waiting for [`Nat::poll_datagram`]. Beyond: dropped
/// (counted).
pub const DATAGRAM_QUEUE_BYTES: usize = 4 << 20;

/// Ethernet II header.
const ETH_LEN: usize = 14;
/// Hop limit / TTL of the frames the NAT writes itself.
const HOP_LIMIT: u8 = 64;
/// A container that sends nothing for this long while data waits for its
/// acknowledgement loses the connection. Three times smoltcp's longest
/// zero-window probe interval (60 s), so a container that merely stops
/// reading keeps its connection, as with a kernel peer.
const TCP_PEER_TIMEOUT: Duration = Duration::from_secs(180);
/// Longest timeout accepted in [`NatLimits`] (keeps `Instant` arithmetic
/// far from overflow).
const MAX_TIMEOUT: Duration = Duration::from_secs(30 * 24 * 3600);
/// Bounds of [`NatLimits::tcp_buffer`].
const TCP_BUFFER_RANGE: RangeInclusive<usize> = 1024..=(16 << 20);
/// Rounds of poll-then-service after one call (a service round may close a
/// socket, whose FIN the next poll sends).
const SERVICE_ROUNDS: usize = 4;

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
    /// Receive and send buffer of each TCP socket, bytes (1 KiB..=16 MiB).
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
            tcp_buffer: 64 * 1024,
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

#[derive(Debug)]
enum Phase {
    /// Egress: the container's SYN (the whole IP packet) waits for the host
    /// connect.
    Connecting { syn: Vec<u8> },
    /// A smoltcp socket carries the connection.
    Open(SocketHandle),
}

#[derive(Debug)]
struct TcpConn {
    tuple: Tuple,
    /// The peer is a gateway address with a port this connection holds.
    owns_port: bool,
    phase: Phase,
    created: Instant,
    last_active: Instant,
    timer_at: Option<Instant>,
    /// Saw ESTABLISHED or a later state.
    established: bool,
    /// The container sent FIN.
    remote_fin: bool,
    /// The host side closed and `close()` was called.
    local_fin: bool,
    /// The daemon reported the host side closed.
    host_closed: bool,
    /// Reset by us (idle, host abort): never graceful.
    aborted: bool,
    read_notified: bool,
    want_write: bool,
    fin_notified: bool,
    /// Registered with the socket: puts the connection on the woken list.
    waker: Option<Waker>,
}

impl TcpConn {
    fn new(tuple: Tuple, owns_port: bool, phase: Phase, now: Instant) -> TcpConn {
        TcpConn {
            tuple,
            owns_port,
            phase,
            created: now,
            last_active: now,
            timer_at: None,
            established: false,
            remote_fin: false,
            local_fin: false,
            host_closed: false,
            aborted: false,
            read_notified: false,
            want_write: false,
            fin_notified: false,
            waker: None,
        }
    }

    /// When the connection's own timer fires: the connect timeout while the
    /// host connects or the handshake with the container is unfinished,
    /// idleness after.
    fn deadline(&self, limits: &NatLimits) -> Option<Instant> {
        match self.phase {
            Phase::Connecting { .. } => self.created.checked_add(limits.tcp_connect_timeout),
            Phase::Open(_) if !self.established => {
                self.last_active.checked_add(limits.tcp_connect_timeout)
            }
            Phase::Open(_) => self.last_active.checked_add(limits.tcp_idle),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FlowKind {
    /// A container's datagrams to the outside, through the flow's own host
    /// socket.
    Egress,
    /// A published port's client, through the listener socket.
    Inbound {
        listener: ListenerId,
        client: SocketAddr,
    },
    /// A container's echo requests, through the flow's ping socket. The
    /// tuple's container port is the echo identifier, the peer port 0.
    Echo,
}

#[derive(Debug)]
struct UdpFlow {
    tuple: Tuple,
    container_mac: MacAddr,
    kind: FlowKind,
    owns_port: bool,
    last_active: Instant,
    timer_at: Option<Instant>,
}

/// Which connections a service round looks at.
#[derive(Debug, Clone, Copy)]
enum Service {
    /// Those whose socket woke, and this one.
    Woken(Option<ConnId>),
    /// All of them (timers).
    All,
}

/// Connections whose smoltcp socket woke since they were last serviced.
#[derive(Debug, Default)]
struct Woken(Mutex<Vec<ConnId>>);

impl Woken {
    fn list(&self) -> std::sync::MutexGuard<'_, Vec<ConnId>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn drain_into(&self, out: &mut Vec<ConnId>) {
        out.append(&mut self.list());
    }

    fn is_empty(&self) -> bool {
        self.list().is_empty()
    }
}

/// A connection's waker. smoltcp wakes it on every state change, when
/// bytes arrive and when acknowledged bytes free send space: the only
/// moments the connection may have something to tell the daemon, so only
/// woken connections are serviced after a poll (a poll visits every socket;
/// servicing every connection too would double that cost).
#[derive(Debug)]
struct ConnWaker {
    id: ConnId,
    woken: Arc<Woken>,
}

impl Wake for ConnWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.list().push(self.id);
    }
}

/// A timer of the NAT's own (smoltcp keeps its own).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    Tcp(ConnId),
    Udp(FlowId),
}

/// A MAC the NAT sends smoltcp's packets to, held while connections to the
/// address exist.
#[derive(Debug, Clone, Copy)]
struct Neighbor {
    mac: MacAddr,
    refs: u32,
}

/// Datagrams waiting for `poll_datagram`.
#[derive(Debug, Default)]
struct DatagramQueue {
    queue: VecDeque<(UdpVia, SocketAddr, Vec<u8>)>,
    free: Vec<Vec<u8>>,
    bytes: usize,
}

impl DatagramQueue {
    /// Queues a copy of `payload`; false (nothing queued) when full.
    fn push(&mut self, via: UdpVia, dst: SocketAddr, payload: &[u8]) -> bool {
        if self.queue.len() >= DATAGRAM_QUEUE || self.bytes + payload.len() > DATAGRAM_QUEUE_BYTES {
            return false;
        }
        let mut buf = self.free.pop().unwrap_or_default();
        buf.clear();
        buf.extend_from_slice(payload);
        self.bytes += payload.len();
        self.queue.push_back((via, dst, buf));
        true
    }
}

/// The NAT's [`Framing`]: smoltcp writes IP packets; the NAT puts the
/// Ethernet header in front, to the MAC of the packet's destination.
struct NatLink<'a> {
    neighbors: &'a HashMap<IpAddr, Neighbor>,
    /// The sender of the packet being received, for replies to it (a RST to
    /// a container the NAT holds no connection with).
    rx_src: Option<(IpAddr, MacAddr)>,
    mac: MacAddr,
    no_neighbor: &'a mut u64,
}

impl Framing for NatLink<'_> {
    const HEADROOM: usize = ETH_LEN;

    fn finish(&mut self, buf: &mut [u8]) -> bool {
        let dst = wire::ip_destination(&buf[ETH_LEN..]);
        let mac = dst.and_then(|ip| {
            self.neighbors.get(&ip).map(|n| n.mac).or_else(|| {
                self.rx_src
                    .filter(|(src, _)| *src == ip)
                    .map(|(_, mac)| mac)
            })
        });
        match (dst, mac) {
            (Some(ip), Some(mac)) => {
                let eth = EthernetRepr {
                    src: self.mac,
                    dst: mac,
                    ethertype: if ip.is_ipv4() {
                        EtherType::Ipv4
                    } else {
                        EtherType::Ipv6
                    },
                };
                // The headroom holds the header.
                eth.emit(buf).is_ok()
            }
            _ => {
                *self.no_neighbor += 1;
                false
            }
        }
    }
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
}

/// The NAT of one network. See the module documentation.
pub struct Nat {
    mac: MacAddr,
    ipv4: Option<(Ipv4Addr, u8)>,
    ipv6: Option<(Ipv6Addr, u8)>,
    mtu: usize,
    egress: bool,
    limits: NatLimits,
    epoch: Instant,
    caps: DeviceCapabilities,
    iface: Interface,
    sockets: SocketSet<'static>,
    conns: HashMap<ConnId, TcpConn>,
    tuples: HashMap<Tuple, ConnId>,
    connecting: usize,
    neighbors: HashMap<IpAddr, Neighbor>,
    flows: HashMap<FlowId, UdpFlow>,
    flow_tuples: HashMap<Tuple, FlowId>,
    echo_tuples: HashMap<Tuple, FlowId>,
    inbound_flows: HashMap<(ListenerId, SocketAddr, SocketAddr), FlowId>,
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
    stats: NatStats,
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
        let limits = config.limits;
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
        caps.max_transmission_unit = config.mtu;

        let mut rng = Rng(config.random_seed);
        let tx = TxQueue::new(TX_QUEUE_FRAMES, 64);
        let neighbors = HashMap::new();
        let mut iface = new_interface(HardwareAddress::Ip, rng.next_u64(), &caps, now);
        iface.set_any_ip(true);
        iface.update_ip_addrs(|addrs| {
            if let Some((addr, prefix)) = config.ipv4 {
                let _ = addrs.push(IpCidr::new(IpAddress::Ipv4(addr), prefix));
            }
            if let Some((addr, prefix)) = config.ipv6 {
                let _ = addrs.push(IpCidr::new(IpAddress::Ipv6(addr), prefix));
            }
        });
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
            epoch: now,
            caps,
            iface,
            sockets: SocketSet::new(Vec::new()),
            conns: HashMap::new(),
            tuples: HashMap::new(),
            connecting: 0,
            woken: Arc::new(Woken::default()),
            neighbors,
            flows: HashMap::new(),
            flow_tuples: HashMap::new(),
            echo_tuples: HashMap::new(),
            inbound_flows: HashMap::new(),
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
            stats: NatStats::default(),
        })
    }

    /// [`is_for_nat`] with this network's gateway addresses.
    pub fn is_for_nat(&self, frame: &[u8]) -> bool {
        is_for_nat(frame, self.ipv4.map(|(a, _)| a), self.ipv6.map(|(a, _)| a))
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

    // ---- the container side ----

    /// Takes a frame the bridge delivered to the gateway port and
    /// [`is_for_nat`] claimed.
    pub fn handle_frame(&mut self, frame: &[u8], now: Instant) {
        self.stats.frames_in += 1;
        let Ok(pkt) = IpFrame::parse(frame) else {
            self.stats.frames_malformed += 1;
            return;
        };
        if pkt.dst_mac() != self.mac || pkt.has_link_extensions() {
            self.stats.frames_unsupported += 1;
            return;
        }
        let src_mac = pkt.src_mac();
        if src_mac.is_multicast() || src_mac.is_zero() {
            self.stats.frames_malformed += 1;
            return;
        }
        let (src, dst, packet_len, direct) = match pkt.ip() {
            Some(IpHeader::V4(ip)) => {
                if ip.is_fragment() {
                    self.stats.frames_unsupported += 1;
                    return;
                }
                if !ip.checksum_ok() {
                    self.stats.frames_bad_checksum += 1;
                    return;
                }
                let direct = ip.transport_follows();
                (
                    IpAddr::V4(ip.src()),
                    IpAddr::V4(ip.dst()),
                    ip.total_len(),
                    direct,
                )
            }
            Some(IpHeader::V6(ip)) => (
                IpAddr::V6(ip.src()),
                IpAddr::V6(ip.dst()),
                ip.total_len(),
                ip.transport_follows(),
            ),
            None => {
                self.stats.frames_unsupported += 1;
                return;
            }
        };
        let Some(packet) = frame.get(ETH_LEN..ETH_LEN + packet_len) else {
            self.stats.frames_malformed += 1;
            return;
        };
        if !self.has_family(src) {
            self.stats.frames_unsupported += 1;
            return;
        }
        if !self.is_container_addr(src) || !self.is_forwardable(dst) {
            self.stats.frames_bad_address += 1;
            return;
        }
        let ingress = Ingress {
            src_mac,
            src,
            dst,
            packet,
        };
        match pkt.transport() {
            // IPv6 extension headers: smoltcp reads only hop-by-hop; none of
            // our peers send them on TCP/UDP.
            Some(TransportHeader::Tcp(tcp)) if direct => self.tcp_segment(&ingress, &tcp, now),
            Some(TransportHeader::Udp(udp)) if direct => self.udp_datagram(&ingress, &udp, now),
            Some(TransportHeader::Icmpv4(icmp)) if direct => {
                let Some(echo) = icmp.echo_request() else {
                    self.stats.frames_unsupported += 1;
                    return;
                };
                if !icmp.checksum_ok() {
                    self.stats.frames_bad_checksum += 1;
                    return;
                }
                self.echo_request(&ingress, echo.ident, icmp.message(), now);
            }
            Some(TransportHeader::Icmpv6(icmp)) if direct => {
                let Some(echo) = icmp.echo_request() else {
                    self.stats.frames_unsupported += 1;
                    return;
                };
                let (IpAddr::V6(s), IpAddr::V6(d)) = (src, dst) else {
                    return;
                };
                if !icmp.checksum_ok(s, d) {
                    self.stats.frames_bad_checksum += 1;
                    return;
                }
                self.echo_request(&ingress, echo.ident, icmp.message(), now);
            }
            _ => self.stats.frames_unsupported += 1,
        }
    }

    /// Copies the next frame to inject into the bridge into `out`; returns
    /// its length. A frame longer than `out` is dropped (counted).
    pub fn poll_transmit(&mut self, now: Instant, out: &mut [u8]) -> Option<usize> {
        if self.tx.frames.is_empty() {
            // smoltcp may have had more to send than the queue took.
            self.run(None, Service::Woken(None), now);
        }
        let n = self.tx.pop_into(out)?;
        self.stats.frames_out += 1;
        Some(n)
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

    // ---- TCP, the host side ----

    /// A published TCP port accepted `client` on the host; connect it to
    /// `container` (whose MAC is `container_mac`). The container sees
    /// `client` as its peer, or the gateway address when it could not reach
    /// the client's own address back through the gateway.
    pub fn inbound_tcp(
        &mut self,
        client: SocketAddr,
        container: SocketAddr,
        container_mac: MacAddr,
        now: Instant,
    ) -> Result<ConnId, NatError> {
        self.check_container(container, container_mac)?;
        if !self.tcp_room() {
            self.stats.tcp_refused += 1;
            return Err(NatError::TcpTableFull(self.conns.len()));
        }
        let (peer, owns_port) = self.inbound_peer(client, container, Proto::Tcp)?;
        let tuple = Tuple { container, peer };
        let mut socket = self.new_socket();
        if socket
            .connect(
                self.iface.context(),
                IpEndpoint::from(container),
                IpEndpoint::from(peer),
            )
            .is_err()
        {
            if owns_port {
                self.tcp_ports.remove(&(peer.ip(), peer.port()));
            }
            return Err(NatError::NotInNetwork(container));
        }
        let id = self.next_conn_id();
        let waker = self.waker(id);
        socket.register_recv_waker(&waker);
        socket.register_send_waker(&waker);
        let handle = self.sockets.add(socket);
        self.hold_neighbor(container.ip(), container_mac);
        let mut conn = TcpConn::new(tuple, owns_port, Phase::Open(handle), now);
        conn.waker = Some(waker);
        self.conns.insert(id, conn);
        self.tuples.insert(tuple, id);
        self.arm_tcp_timer(id);
        self.stats.tcp_inbound += 1;
        self.run(None, Service::Woken(Some(id)), now);
        Ok(id)
    }

    /// The outcome of the host connect an [`NatEvent::EgressTcpConnect`]
    /// asked for. On success the container's connection completes; on
    /// failure it gets RST and [`NatEvent::TcpClosed`] follows.
    pub fn egress_connected(&mut self, id: ConnId, ok: bool, now: Instant) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        if !matches!(conn.phase, Phase::Connecting { .. }) {
            return;
        }
        if !ok {
            self.stats.tcp_connect_failed += 1;
            self.refuse_connecting(id, now);
            return;
        }
        let peer = conn.tuple.peer;
        let container = conn.tuple.container;
        let mut socket = self.new_socket();
        if socket
            .listen(IpListenEndpoint {
                addr: Some(IpAddress::from(peer.ip())),
                port: peer.port(),
            })
            .is_err()
        {
            self.refuse_connecting(id, now);
            return;
        }
        let waker = self.waker(id);
        socket.register_recv_waker(&waker);
        socket.register_send_waker(&waker);
        let handle = self.sockets.add(socket);
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        let Phase::Connecting { syn } = std::mem::replace(&mut conn.phase, Phase::Open(handle))
        else {
            return;
        };
        conn.waker = Some(waker);
        conn.last_active = now;
        self.connecting -= 1;
        let mac = self.neighbors.get(&container.ip()).map(|n| n.mac);
        self.run(
            Some((&syn, container.ip(), mac)),
            Service::Woken(Some(id)),
            now,
        );
        // smoltcp took the SYN unless it was no longer valid.
        if let Some(conn) = self.conns.get_mut(&id) {
            if let Phase::Open(h) = conn.phase {
                let s = self.sockets.get_mut::<tcp::Socket>(h);
                if s.state() == tcp::State::Listen {
                    s.abort();
                    conn.aborted = true;
                    self.run(None, Service::Woken(Some(id)), now);
                }
            }
        }
        self.arm_tcp_timer(id);
    }

    /// Queues bytes from the host for the container; returns how many were
    /// taken. Less than `data.len()`: keep the rest and retry after
    /// [`NatEvent::TcpWritable`].
    pub fn tcp_write(&mut self, id: ConnId, data: &[u8], now: Instant) -> usize {
        let Some(conn) = self.conns.get_mut(&id) else {
            return 0;
        };
        let Phase::Open(handle) = conn.phase else {
            conn.want_write = true;
            return 0;
        };
        if conn.host_closed || data.is_empty() {
            return 0;
        }
        let s = self.sockets.get_mut::<tcp::Socket>(handle);
        let n = if s.may_send() {
            s.send_slice(data).unwrap_or(0)
        } else {
            0
        };
        if n < data.len() {
            conn.want_write = true;
        }
        if n > 0 {
            conn.last_active = now;
            self.run(None, Service::Woken(Some(id)), now);
        }
        n
    }

    /// Copies bytes the container sent into `out`; returns how many (0:
    /// none now).
    pub fn tcp_read(&mut self, id: ConnId, out: &mut [u8], now: Instant) -> usize {
        let Some(s) = self.open_socket(id) else {
            return 0;
        };
        let n = s.recv_slice(out).unwrap_or(0);
        self.after_read(id, n, now);
        n
    }

    /// The bytes the container sent that [`Nat::tcp_read`] would return
    /// next, without taking them (possibly fewer than are queued). With
    /// [`Nat::tcp_consume`], lets the daemon write to the host socket
    /// straight from the NAT's buffer.
    pub fn tcp_peek(&mut self, id: ConnId) -> &[u8] {
        match self.open_socket(id) {
            Some(s) => s.peek(usize::MAX).unwrap_or(&[]),
            None => &[],
        }
    }

    /// Drops the first `n` bytes [`Nat::tcp_peek`] returned.
    pub fn tcp_consume(&mut self, id: ConnId, n: usize, now: Instant) {
        let Some(s) = self.open_socket(id) else {
            return;
        };
        let n = s.recv(|buf| {
            let n = n.min(buf.len());
            (n, n)
        });
        self.after_read(id, n.unwrap_or(0), now);
    }

    /// The host side finished sending: the container gets FIN once every
    /// queued byte is through.
    pub fn tcp_host_closed(&mut self, id: ConnId, now: Instant) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        if matches!(conn.phase, Phase::Connecting { .. }) {
            self.refuse_connecting(id, now);
            return;
        }
        conn.host_closed = true;
        self.run(None, Service::Woken(Some(id)), now);
    }

    /// The host socket failed or was reset: reset the container's side.
    pub fn tcp_abort(&mut self, id: ConnId, now: Instant) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        match conn.phase {
            Phase::Connecting { .. } => self.refuse_connecting(id, now),
            Phase::Open(handle) => {
                conn.aborted = true;
                self.sockets.get_mut::<tcp::Socket>(handle).abort();
                self.run(None, Service::Woken(Some(id)), now);
            }
        }
    }

    // ---- UDP, the host side ----

    /// A datagram the host socket of egress `flow` received from `from`
    /// (normally the flow's destination): written to the container with
    /// `from` as its source.
    pub fn udp_reply(&mut self, flow: FlowId, from: SocketAddr, payload: &[u8], now: Instant) {
        let from = canonical(from);
        let Some(f) = self.flows.get_mut(&flow) else {
            self.stats.udp_dropped += 1;
            return;
        };
        if f.kind != FlowKind::Egress
            || from.is_ipv4() != f.tuple.container.is_ipv4()
            || from.port() == 0
            || !is_unicast(from.ip())
        {
            self.stats.udp_dropped += 1;
            return;
        }
        f.last_active = now;
        let (to, mac) = (f.tuple.container, f.container_mac);
        self.write_udp(from, to, mac, payload);
    }

    /// A published UDP port's `listener` received `payload` from `client`;
    /// deliver it to `container` (whose MAC is `container_mac`) from the
    /// client's own address (or the gateway's, as for TCP). The container's
    /// replies come out of [`Nat::poll_datagram`] via the listener, to the
    /// client. Returns the flow, which lasts until idle.
    pub fn inbound_udp(
        &mut self,
        listener: ListenerId,
        client: SocketAddr,
        container: SocketAddr,
        container_mac: MacAddr,
        payload: &[u8],
        now: Instant,
    ) -> Result<FlowId, NatError> {
        self.check_container(container, container_mac)?;
        let key = (listener, canonical(client), container);
        let id = match self.inbound_flows.get(&key) {
            Some(&id) => id,
            None => {
                if self.flows.len() >= self.limits.max_udp_flows {
                    self.stats.udp_refused += 1;
                    return Err(NatError::UdpTableFull(self.flows.len()));
                }
                let (peer, owns_port) = self.inbound_peer(client, container, Proto::Udp)?;
                let tuple = Tuple { container, peer };
                let kind = FlowKind::Inbound {
                    listener,
                    client: key.1,
                };
                let id = self.add_flow(tuple, container_mac, kind, owns_port, now);
                self.inbound_flows.insert(key, id);
                id
            }
        };
        let header = if container.is_ipv4() { 20 } else { 40 } + 8;
        if payload.len() + header > self.mtu {
            self.stats.udp_dropped += 1;
            return Err(NatError::DatagramTooBig(payload.len()));
        }
        let Some(f) = self.flows.get_mut(&id) else {
            return Err(NatError::NotInNetwork(container));
        };
        f.last_active = now;
        f.container_mac = container_mac;
        let (from, to) = (f.tuple.peer, f.tuple.container);
        self.write_udp(from, to, container_mac, payload);
        Ok(id)
    }

    /// Forgets every flow of a published UDP port that is going away.
    pub fn close_listener(&mut self, listener: ListenerId) {
        let gone: Vec<FlowId> = self
            .flows
            .iter()
            .filter(
                |(_, f)| matches!(f.kind, FlowKind::Inbound { listener: l, .. } if l == listener),
            )
            .map(|(id, _)| *id)
            .collect();
        for id in gone {
            self.remove_flow(id);
        }
    }

    // ---- TCP, the container side ----

    fn tcp_segment(&mut self, ingress: &Ingress<'_>, tcp: &TcpView<'_, '_>, now: Instant) {
        let (sport, dport) = (tcp.src_port(), tcp.dst_port());
        if sport == 0 || dport == 0 {
            self.stats.frames_malformed += 1;
            return;
        }
        let tuple = Tuple {
            container: SocketAddr::new(ingress.src, sport),
            peer: SocketAddr::new(ingress.dst, dport),
        };
        let is_syn = tcp.syn() && !tcp.ack() && !tcp.rst() && !tcp.fin();
        if let Some(&id) = self.tuples.get(&tuple) {
            let Some(conn) = self.conns.get_mut(&id) else {
                return;
            };
            match &conn.phase {
                Phase::Connecting { .. } => {
                    // A retransmitted SYN waits with the first; a RST means
                    // the container gave up.
                    if tcp.rst() && self.tcp_checksum_ok(ingress, tcp) {
                        self.remove_conn(id);
                        self.events
                            .push_back(NatEvent::TcpClosed { id, reset: true });
                    }
                    return;
                }
                Phase::Open(_) => {
                    conn.last_active = now;
                    self.run(
                        Some((ingress.packet, ingress.src, Some(ingress.src_mac))),
                        Service::Woken(Some(id)),
                        now,
                    );
                    return;
                }
            }
        }
        if !self.egress {
            self.stats.egress_denied += 1;
            return;
        }
        if is_syn && !self.is_gateway(ingress.dst) {
            self.egress_syn(ingress, tcp, tuple, now);
        } else {
            // A stray segment: smoltcp answers RST.
            self.run(
                Some((ingress.packet, ingress.src, Some(ingress.src_mac))),
                Service::Woken(None),
                now,
            );
        }
    }

    fn egress_syn(
        &mut self,
        ingress: &Ingress<'_>,
        tcp: &TcpView<'_, '_>,
        tuple: Tuple,
        now: Instant,
    ) {
        if !self.tcp_checksum_ok(ingress, tcp) {
            self.stats.frames_bad_checksum += 1;
            return;
        }
        if self.connecting >= self.limits.max_tcp_connecting || !self.tcp_room() {
            self.stats.tcp_refused += 1;
            self.run(
                Some((ingress.packet, ingress.src, Some(ingress.src_mac))),
                Service::Woken(None),
                now,
            );
            return;
        }
        let id = self.next_conn_id();
        self.hold_neighbor(ingress.src, ingress.src_mac);
        let phase = Phase::Connecting {
            syn: ingress.packet.to_vec(),
        };
        self.conns
            .insert(id, TcpConn::new(tuple, false, phase, now));
        self.tuples.insert(tuple, id);
        self.connecting += 1;
        self.arm_tcp_timer(id);
        self.stats.tcp_egress += 1;
        self.events.push_back(NatEvent::EgressTcpConnect {
            id,
            src: tuple.container,
            dst: tuple.peer,
        });
    }

    fn tcp_checksum_ok(&self, ingress: &Ingress<'_>, tcp: &TcpView<'_, '_>) -> bool {
        tcp.checksum_ok(ingress.src, ingress.dst)
    }

    /// Answers a waiting egress SYN with RST (smoltcp does it, finding no
    /// socket for it) and ends the connection.
    fn refuse_connecting(&mut self, id: ConnId, now: Instant) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        let Phase::Connecting { syn } =
            std::mem::replace(&mut conn.phase, Phase::Connecting { syn: Vec::new() })
        else {
            return;
        };
        let container = conn.tuple.container.ip();
        let mac = self.neighbors.get(&container).map(|n| n.mac);
        self.remove_conn(id);
        self.events
            .push_back(NatEvent::TcpClosed { id, reset: true });
        if !syn.is_empty() {
            self.run(Some((&syn, container, mac)), Service::Woken(None), now);
        }
    }

    fn tcp_timer(&mut self, id: ConnId, now: Instant) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        conn.timer_at = None;
        match conn.deadline(&self.limits) {
            None => {}
            Some(at) if at > now => self.set_tcp_timer(id, at),
            Some(_) => {
                self.stats.tcp_timed_out += 1;
                match conn.phase {
                    Phase::Connecting { .. } => self.refuse_connecting(id, now),
                    Phase::Open(handle) => {
                        conn.aborted = true;
                        self.sockets.get_mut::<tcp::Socket>(handle).abort();
                        self.poll_needed = true;
                    }
                }
            }
        }
    }

    /// True when a connection may be added.
    fn tcp_room(&self) -> bool {
        self.conns.len() < self.limits.max_tcp
    }

    fn waker(&self, id: ConnId) -> Waker {
        Waker::from(Arc::new(ConnWaker {
            id,
            woken: Arc::clone(&self.woken),
        }))
    }

    fn new_socket(&self) -> tcp::Socket<'static> {
        let n = self.limits.tcp_buffer;
        let mut socket = tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0; n]),
            tcp::SocketBuffer::new(vec![0; n]),
        );
        // A relay does not know message boundaries: never hold bytes back.
        socket.set_nagle_enabled(false);
        socket.set_tsval_generator(Some(tsval));
        socket.set_timeout(Some(smoltcp::time::Duration::from_micros(
            TCP_PEER_TIMEOUT.as_micros() as u64,
        )));
        socket
    }

    /// The socket of a connection the daemon may still use.
    fn open_socket(&mut self, id: ConnId) -> Option<&mut tcp::Socket<'static>> {
        let conn = self.conns.get(&id)?;
        match conn.phase {
            Phase::Open(h) => Some(self.sockets.get_mut::<tcp::Socket>(h)),
            _ => None,
        }
    }

    fn after_read(&mut self, id: ConnId, n: usize, now: Instant) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        if let Phase::Open(h) = conn.phase {
            if self.sockets.get::<tcp::Socket>(h).recv_queue() == 0 {
                conn.read_notified = false;
            }
        }
        if n > 0 {
            conn.last_active = now;
        }
        // The window opened (smoltcp may announce it) and a drained buffer
        // may finish a close.
        self.run(None, Service::Woken(Some(id)), now);
    }

    /// Lets smoltcp take `packet` (an IP packet from `src`, whose MAC is
    /// known) and send what it has, then services the connections `service`
    /// names and those whose socket woke, until nothing changes.
    fn run(
        &mut self,
        packet: Option<(&[u8], IpAddr, Option<MacAddr>)>,
        service: Service,
        now: Instant,
    ) {
        let rx_src = packet.and_then(|(_, ip, mac)| mac.map(|m| (ip, m)));
        self.poll_iface(packet.map(|(p, _, _)| p), rx_src, now);
        let mut first = Some(service);
        for _ in 0..SERVICE_ROUNDS {
            self.poll_needed = false;
            let mut ids = std::mem::take(&mut self.scratch);
            ids.clear();
            match first.take() {
                Some(Service::All) => ids.extend(self.conns.keys().copied()),
                Some(Service::Woken(also)) => ids.extend(also),
                None => {}
            }
            self.woken.drain_into(&mut ids);
            for &id in &ids {
                self.service_conn(id);
            }
            self.scratch = ids;
            if self.poll_needed {
                self.poll_iface(None, None, now);
            } else if self.woken.is_empty() {
                break;
            }
        }
    }

    fn poll_iface(
        &mut self,
        packet: Option<&[u8]>,
        rx_src: Option<(IpAddr, MacAddr)>,
        now: Instant,
    ) {
        let mut device = QueueDevice {
            rx: packet,
            tx: &mut self.tx,
            framing: NatLink {
                neighbors: &self.neighbors,
                rx_src,
                mac: self.mac,
                no_neighbor: &mut self.stats.frames_no_neighbor,
            },
            caps: &self.caps,
        };
        advance_tsval(now);
        self.iface.poll(
            smol_instant(self.epoch, now),
            &mut device,
            &mut self.sockets,
        );
    }

    /// Turns a connection's socket state into events; closes and removes.
    fn service_conn(&mut self, id: ConnId) {
        use tcp::State;
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        let Phase::Open(handle) = conn.phase else {
            return;
        };
        let s = self.sockets.get_mut::<tcp::Socket>(handle);
        if let Some(w) = &conn.waker {
            // smoltcp drops a waker once it wakes it.
            s.register_recv_waker(w);
            s.register_send_waker(w);
        }
        let state = s.state();
        if matches!(
            state,
            State::Established
                | State::FinWait1
                | State::FinWait2
                | State::CloseWait
                | State::Closing
                | State::LastAck
                | State::TimeWait
        ) {
            conn.established = true;
        }
        if matches!(
            state,
            State::CloseWait | State::LastAck | State::Closing | State::TimeWait
        ) {
            conn.remote_fin = true;
        }
        // A host client that half-closes before the container answered
        // the SYN: the FIN waits for the handshake (closing a SYN-SENT
        // socket would abort it).
        if conn.host_closed && conn.established && !conn.local_fin {
            conn.local_fin = true;
            // The container's FIN then gets its ACK at once, so the socket
            // can go when it reaches TIME-WAIT (see below).
            s.set_ack_delay(None);
            s.close();
            self.poll_needed = true;
            return; // serviced again after the poll
        }
        if s.can_recv() && !conn.read_notified {
            conn.read_notified = true;
            self.events.push_back(NatEvent::TcpReadable(id));
        }
        if matches!(s.recv_slice(&mut []), Err(tcp::RecvError::Finished)) {
            conn.remote_fin = true;
            if !conn.fin_notified {
                conn.fin_notified = true;
                self.events.push_back(NatEvent::TcpFin(id));
            }
        }
        if conn.want_write
            && s.may_send()
            && s.send_capacity() - s.send_queue() >= s.send_capacity() / 2
        {
            conn.want_write = false;
            self.events.push_back(NatEvent::TcpWritable(id));
        }
        if !matches!(state, State::Closed | State::TimeWait) {
            return;
        }
        let graceful = !conn.aborted
            && conn.established
            && conn.remote_fin
            && (conn.local_fin || state == State::TimeWait);
        if graceful {
            if s.recv_queue() > 0 {
                return; // the daemon reads the rest first
            }
            if !conn.fin_notified {
                conn.fin_notified = true;
                self.events.push_back(NatEvent::TcpFin(id));
            }
        } else if state == State::Closed && s.remote_endpoint().is_some() {
            return; // the RST is not out yet
        }
        self.events.push_back(NatEvent::TcpClosed {
            id,
            reset: !graceful,
        });
        // No TIME-WAIT: the last ACK is out (no ACK delay after our FIN), the
        // bridge is the only link and loses frames only when queues
        // overflow; a retransmitted FIN would get RST, which closes the
        // container's side just the same. Keeping sockets for 2 MSL would
        // cap the connection rate at `max_tcp` per 10 s.
        self.remove_conn(id);
    }

    fn remove_conn(&mut self, id: ConnId) {
        let Some(conn) = self.conns.remove(&id) else {
            return;
        };
        match conn.phase {
            Phase::Open(h) => {
                self.sockets.remove(h);
            }
            Phase::Connecting { .. } => self.connecting -= 1,
        }
        if self.tuples.get(&conn.tuple) == Some(&id) {
            self.tuples.remove(&conn.tuple);
        }
        self.release_neighbor(conn.tuple.container.ip());
        if conn.owns_port {
            self.tcp_ports
                .remove(&(conn.tuple.peer.ip(), conn.tuple.peer.port()));
        }
        if let Some(at) = conn.timer_at {
            self.timers.remove(&(at, Timer::Tcp(id)));
        }
    }

    fn arm_tcp_timer(&mut self, id: ConnId) {
        let Some(conn) = self.conns.get(&id) else {
            return;
        };
        if let Some(at) = conn.deadline(&self.limits) {
            self.set_tcp_timer(id, at);
        }
    }

    fn set_tcp_timer(&mut self, id: ConnId, at: Instant) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        if let Some(old) = conn.timer_at.replace(at) {
            self.timers.remove(&(old, Timer::Tcp(id)));
        }
        self.timers.insert((at, Timer::Tcp(id)));
    }

    fn next_conn_id(&mut self) -> ConnId {
        let id = ConnId(self.next_id);
        self.next_id += 1;
        id
    }

    fn hold_neighbor(&mut self, ip: IpAddr, mac: MacAddr) {
        let n = self
            .neighbors
            .entry(ip)
            .or_insert(Neighbor { mac, refs: 0 });
        n.mac = mac;
        n.refs += 1;
    }

    fn release_neighbor(&mut self, ip: IpAddr) {
        if let Some(n) = self.neighbors.get_mut(&ip) {
            n.refs -= 1;
            if n.refs == 0 {
                self.neighbors.remove(&ip);
            }
        }
    }

    // ---- UDP, the container side ----

    fn udp_datagram(&mut self, ingress: &Ingress<'_>, udp: &UdpView<'_, '_>, now: Instant) {
        let (sport, dport) = (udp.src_port(), udp.dst_port());
        if sport == 0 || dport == 0 {
            self.stats.frames_malformed += 1;
            return;
        }
        if !udp.checksum_ok(ingress.src, ingress.dst) {
            self.stats.frames_bad_checksum += 1;
            return;
        }
        let tuple = Tuple {
            container: SocketAddr::new(ingress.src, sport),
            peer: SocketAddr::new(ingress.dst, dport),
        };
        let id = match self.flow_tuples.get(&tuple) {
            Some(&id) => id,
            None => {
                if self.is_gateway(ingress.dst) {
                    // A reply to a flow that is gone.
                    self.stats.udp_dropped += 1;
                    return;
                }
                if !self.egress {
                    self.stats.egress_denied += 1;
                    return;
                }
                if self.flows.len() >= self.limits.max_udp_flows {
                    self.stats.udp_refused += 1;
                    return;
                }
                let id = self.add_flow(tuple, ingress.src_mac, FlowKind::Egress, false, now);
                self.events.push_back(NatEvent::UdpFlowOpened {
                    flow: id,
                    src: tuple.container,
                    dst: tuple.peer,
                });
                id
            }
        };
        let Some(flow) = self.flows.get_mut(&id) else {
            return;
        };
        flow.last_active = now;
        flow.container_mac = ingress.src_mac;
        let (via, dst) = match flow.kind {
            FlowKind::Egress => (UdpVia::Flow(id), tuple.peer),
            FlowKind::Inbound { listener, client } => (UdpVia::Listener(listener), client),
            FlowKind::Echo => return,
        };
        if self.datagrams.push(via, dst, udp.payload()) {
            self.stats.udp_to_host += 1;
        } else {
            self.stats.udp_dropped += 1;
        }
    }

    fn add_flow(
        &mut self,
        tuple: Tuple,
        container_mac: MacAddr,
        kind: FlowKind,
        owns_port: bool,
        now: Instant,
    ) -> FlowId {
        let id = FlowId(self.next_id);
        self.next_id += 1;
        let at = now.checked_add(self.limits.udp_idle);
        self.flows.insert(
            id,
            UdpFlow {
                tuple,
                container_mac,
                kind,
                owns_port,
                last_active: now,
                timer_at: at,
            },
        );
        if kind == FlowKind::Echo {
            self.echo_tuples.insert(tuple, id);
            self.stats.icmp_flows += 1;
        } else {
            self.flow_tuples.insert(tuple, id);
            self.stats.udp_flows += 1;
        }
        if let Some(at) = at {
            self.timers.insert((at, Timer::Udp(id)));
        }
        id
    }

    fn udp_timer(&mut self, id: FlowId, now: Instant) {
        let Some(flow) = self.flows.get_mut(&id) else {
            return;
        };
        flow.timer_at = None;
        match flow.last_active.checked_add(self.limits.udp_idle) {
            Some(at) if at > now => {
                flow.timer_at = Some(at);
                self.timers.insert((at, Timer::Udp(id)));
            }
            _ => {
                self.stats.udp_expired += 1;
                self.remove_flow(id);
            }
        }
    }

    fn remove_flow(&mut self, id: FlowId) {
        let Some(flow) = self.flows.remove(&id) else {
            return;
        };
        let tuples = match flow.kind {
            FlowKind::Echo => &mut self.echo_tuples,
            _ => &mut self.flow_tuples,
        };
        if tuples.get(&flow.tuple) == Some(&id) {
            tuples.remove(&flow.tuple);
        }
        if flow.owns_port {
            self.udp_ports
                .remove(&(flow.tuple.peer.ip(), flow.tuple.peer.port()));
        }
        if let Some(at) = flow.timer_at {
            self.timers.remove(&(at, Timer::Udp(id)));
        }
        match flow.kind {
            FlowKind::Egress => self.events.push_back(NatEvent::UdpFlowClosed(id)),
            FlowKind::Echo => self.events.push_back(NatEvent::IcmpFlowClosed(id)),
            FlowKind::Inbound { listener, client } => {
                self.inbound_flows
                    .remove(&(listener, client, flow.tuple.container));
            }
        }
    }

    // ---- ICMP echo ----

    /// An echo request (`message`: the whole ICMP message) from a container.
    fn echo_request(&mut self, ingress: &Ingress<'_>, ident: u16, message: &[u8], now: Instant) {
        if self.is_gateway(ingress.dst) {
            self.stats.frames_unsupported += 1;
            return;
        }
        let tuple = Tuple {
            container: SocketAddr::new(ingress.src, ident),
            peer: SocketAddr::new(ingress.dst, 0),
        };
        let id = match self.echo_tuples.get(&tuple) {
            Some(&id) => id,
            None => {
                if !self.egress {
                    self.stats.egress_denied += 1;
                    return;
                }
                if self.flows.len() >= self.limits.max_udp_flows {
                    self.stats.icmp_dropped += 1;
                    return;
                }
                let id = self.add_flow(tuple, ingress.src_mac, FlowKind::Echo, false, now);
                self.events.push_back(NatEvent::IcmpFlowOpened {
                    flow: id,
                    src: ingress.src,
                    dst: ingress.dst,
                });
                id
            }
        };
        let Some(flow) = self.flows.get_mut(&id) else {
            return;
        };
        flow.last_active = now;
        flow.container_mac = ingress.src_mac;
        if self.datagrams.push(UdpVia::Flow(id), tuple.peer, message) {
            self.stats.icmp_to_host += 1;
        } else {
            self.stats.icmp_dropped += 1;
        }
    }

    /// An echo reply the ping socket of echo `flow` received from `from`
    /// (`message`: the whole ICMP message as the socket returns it; its
    /// identifier is the kernel's): written to the container with the
    /// container's own identifier and `from` as its source.
    pub fn icmp_reply(&mut self, flow: FlowId, from: IpAddr, message: &[u8], now: Instant) {
        let from = from.to_canonical();
        let Some(f) = self.flows.get_mut(&flow) else {
            self.stats.icmp_dropped += 1;
            return;
        };
        let reply_type = if from.is_ipv4() { 0 } else { 129 };
        if f.kind != FlowKind::Echo
            || from.is_ipv4() != f.tuple.container.is_ipv4()
            || !is_unicast(from)
            || message.len() < 8
            || message[0] != reply_type
            || message[1] != 0
        {
            self.stats.icmp_dropped += 1;
            return;
        }
        f.last_active = now;
        let echo = Echo {
            ident: f.tuple.container.port(),
            seq: u16::from_be_bytes([message[6], message[7]]),
        };
        let (to, mac) = (f.tuple.container.ip(), f.container_mac);
        let payload = &message[8..];
        let ip = IpRepr {
            hop_limit: HOP_LIMIT,
            ..IpRepr::new(self.mac, mac, from, to)
        };
        let sent = from.is_ipv4() == to.is_ipv4()
            && self.push_frame(wire::echo_frame_len(&ip, payload.len()), |buf| {
                wire::emit_echo_reply(&ip, echo, payload, buf).is_ok()
            });
        if sent {
            self.stats.icmp_to_container += 1;
        } else {
            self.stats.icmp_dropped += 1;
        }
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
        buf.resize(size, 0);
        if write(&mut buf) {
            self.tx.commit(buf);
            true
        } else {
            self.tx.recycle(buf);
            false
        }
    }

    /// Writes a UDP frame from `from` to the container at `to`.
    fn write_udp(&mut self, from: SocketAddr, to: SocketAddr, to_mac: MacAddr, payload: &[u8]) {
        if from.is_ipv4() != to.is_ipv4() {
            self.stats.udp_dropped += 1;
            return;
        }
        let ip = IpRepr {
            hop_limit: HOP_LIMIT,
            ..IpRepr::new(self.mac, to_mac, from.ip(), to.ip())
        };
        let size = wire::udp_frame_len(&ip, payload.len());
        if self.push_frame(size, |buf| {
            wire::emit_udp(&ip, from.port(), to.port(), payload, buf).is_ok()
        }) {
            self.stats.udp_to_container += 1;
        } else {
            self.stats.udp_dropped += 1;
        }
    }

    // ---- addresses ----

    fn has_family(&self, ip: IpAddr) -> bool {
        match ip {
            IpAddr::V4(_) => self.ipv4.is_some(),
            IpAddr::V6(_) => self.ipv6.is_some(),
        }
    }

    fn is_gateway(&self, ip: IpAddr) -> bool {
        match ip {
            IpAddr::V4(a) => self.ipv4.is_some_and(|(g, _)| g == a),
            IpAddr::V6(a) => self.ipv6.is_some_and(|(g, _)| g == a),
        }
    }

    /// In the network's subnet (the gateway and broadcast included).
    fn in_network(&self, ip: IpAddr) -> bool {
        match ip {
            IpAddr::V4(a) => self
                .ipv4
                .is_some_and(|(g, p)| prefix_match(&g.octets(), &a.octets(), p)),
            IpAddr::V6(a) => self
                .ipv6
                .is_some_and(|(g, p)| prefix_match(&g.octets(), &a.octets(), p)),
        }
    }

    /// An address a container of this network may send from.
    fn is_container_addr(&self, ip: IpAddr) -> bool {
        is_unicast(ip)
            && self.in_network(ip)
            && !self.is_gateway(ip)
            && !self.is_subnet_broadcast(ip)
    }

    fn is_subnet_broadcast(&self, ip: IpAddr) -> bool {
        match (ip, self.ipv4) {
            (IpAddr::V4(a), Some((_, p))) if p < 31 => {
                let host_mask = u32::MAX >> p;
                u32::from(a) & host_mask == host_mask
            }
            _ => false,
        }
    }

    /// A destination the NAT forwards to: beyond the network, or a port the
    /// NAT holds on the gateway address.
    fn is_forwardable(&self, ip: IpAddr) -> bool {
        if self.is_gateway(ip) {
            return true;
        }
        // IPv6 link-local addresses are scoped to a link: a container
        // reaches them directly or not at all. IPv4 ones (169.254.169.254,
        // a cloud host's metadata service) are routed like any other.
        let link_local = match ip {
            IpAddr::V4(_) => false,
            IpAddr::V6(a) => crate::wire::is_ipv6_link_local(&a),
        };
        is_unicast(ip) && !ip.is_loopback() && !link_local && !self.in_network(ip)
    }

    fn check_container(&self, container: SocketAddr, mac: MacAddr) -> Result<(), NatError> {
        if container.port() == 0
            || !self.is_container_addr(container.ip())
            || mac.is_multicast()
            || mac.is_zero()
        {
            return Err(NatError::NotInNetwork(container));
        }
        Ok(())
    }

    /// The peer a container sees for a published-port client: the client
    /// itself, or a gateway address and port when the container could not
    /// answer the client's address through the gateway.
    fn inbound_peer(
        &mut self,
        client: SocketAddr,
        container: SocketAddr,
        proto: Proto,
    ) -> Result<(SocketAddr, bool), NatError> {
        let client = canonical(client);
        let ip = client.ip();
        let reachable = client.port() != 0
            && ip.is_ipv4() == container.is_ipv4()
            && self.is_forwardable(ip)
            && !self.is_gateway(ip);
        let taken = match proto {
            Proto::Tcp => self.tuples.contains_key(&Tuple {
                container,
                peer: client,
            }),
            Proto::Udp => self.flow_tuples.contains_key(&Tuple {
                container,
                peer: client,
            }),
        };
        if reachable && !taken {
            return Ok((client, false));
        }
        let gateway: IpAddr = match container.ip() {
            IpAddr::V4(_) => self.ipv4.map(|(g, _)| g.into()),
            IpAddr::V6(_) => self.ipv6.map(|(g, _)| g.into()),
        }
        .ok_or(NatError::NotInNetwork(container))?;
        let port = self
            .free_port(gateway, proto)
            .ok_or(NatError::NoFreePort(gateway))?;
        Ok((SocketAddr::new(gateway, port), true))
    }

    /// Takes a free port on `ip` in [`NAT_PORTS`].
    fn free_port(&mut self, ip: IpAddr, proto: Proto) -> Option<u16> {
        let used = match proto {
            Proto::Tcp => &mut self.tcp_ports,
            Proto::Udp => &mut self.udp_ports,
        };
        let start = *NAT_PORTS.start();
        let span = u32::from(*NAT_PORTS.end() - start) + 1;
        if !NAT_PORTS.contains(&self.port_cursor) {
            self.port_cursor = start + (self.rng.next_u64() % u64::from(span)) as u16;
        }
        let from = u32::from(self.port_cursor - start);
        let port = (0..span)
            .map(|i| start + ((from + i) % span) as u16)
            .find(|p| !used.contains(&(ip, *p)))?;
        used.insert((ip, port));
        self.port_cursor = if port == *NAT_PORTS.end() {
            start
        } else {
            port + 1
        };
        Some(port)
    }
}

/// The TCP timestamp clock (RFC 7323), in milliseconds: advanced from the
/// `now` the daemon passes in (never read from the OS here), shared by every
/// NAT of the process so that it only goes forward.
static TSVAL_MS: AtomicU32 = AtomicU32::new(1);
/// The origin of [`TSVAL_MS`]: the `now` of the first NAT built.
static TSVAL_EPOCH: OnceLock<Instant> = OnceLock::new();

/// Moves the timestamp clock to `now`.
fn advance_tsval(now: Instant) {
    let epoch = *TSVAL_EPOCH.get_or_init(|| now);
    let ms = now.saturating_duration_since(epoch).as_millis() as u32;
    TSVAL_MS.fetch_max(ms.wrapping_add(1), AtomicOrdering::Relaxed);
}

/// smoltcp's timestamp generator. Timestamps on the NAT's own connections
/// let a container whose port is still in TIME-WAIT from an earlier
/// connection of the same addresses accept the new SYN at once (Linux
/// accepts a SYN with a newer timestamp), instead of answering with an ACK
/// that costs the connection a one-second SYN retransmission.
fn tsval() -> u32 {
    TSVAL_MS.load(AtomicOrdering::Relaxed)
}

/// IPv4-mapped IPv6 addresses as IPv4 (a dual-stack listener reports IPv4
/// clients that way).
fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

fn is_unicast(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => !(a.is_unspecified() || a.is_multicast() || a.is_broadcast()),
        IpAddr::V6(a) => !(a.is_unspecified() || a.is_multicast()),
    }
}

/// The first `prefix` bits of `a` and `b` agree.
fn prefix_match(a: &[u8], b: &[u8], prefix: u8) -> bool {
    let bits = usize::from(prefix).min(a.len() * 8);
    let (whole, rest) = (bits / 8, bits % 8);
    if a[..whole] != b[..whole] {
        return false;
    }
    if rest == 0 {
        return true;
    }
    let mask = 0xffu8 << (8 - rest);
    a[whole] & mask == b[whole] & mask
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dns::Zone;
    use crate::gateway::{Gateway, GatewayConfig};
    use etherparse::{Icmpv4Type, NetSlice, PacketBuilder, SlicedPacket, TransportSlice};
    use rstest::rstest;
    use smoltcp::iface::Config as IfaceConfig;
    use smoltcp::socket::udp;
    use smoltcp::wire::EthernetAddress;

    const GW_MAC: MacAddr = MacAddr([0x02, 0x42, 0x0a, 0, 0, 1]);
    const C_MAC: MacAddr = MacAddr([0x02, 0x42, 0x0a, 0, 0, 2]);
    const GW4: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
    const C4: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
    const GW6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1);
    const C6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2);
    const OUTSIDE4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 9);
    const MTU: usize = 1500;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn limits() -> NatLimits {
        NatLimits {
            max_tcp: 64,
            max_tcp_connecting: 16,
            max_udp_flows: 16,
            tcp_buffer: 16 * 1024,
            tcp_idle: Duration::from_secs(600),
            tcp_connect_timeout: Duration::from_secs(20),
            udp_idle: Duration::from_secs(30),
        }
    }

    fn config(egress: bool, limits: NatLimits) -> NatConfig {
        NatConfig {
            gateway_mac: GW_MAC,
            ipv4: Some((GW4, 24)),
            ipv6: Some((GW6, 64)),
            mtu: MTU,
            egress,
            limits,
            random_seed: 7,
        }
    }

    // ---- a container: a smoltcp stack on an in-memory wire ----

    use crate::stack::test_wire::Wire;

    struct Container {
        iface: Interface,
        wire: Wire,
        sockets: SocketSet<'static>,
    }

    impl Container {
        fn new(epoch: Instant) -> Container {
            let mut wire = Wire::default();
            let mut cfg = IfaceConfig::new(HardwareAddress::Ethernet(EthernetAddress(C_MAC.0)));
            cfg.random_seed = 99;
            let mut iface = Interface::new(cfg, &mut wire, smol_instant(epoch, epoch));
            iface.update_ip_addrs(|a| {
                a.push(IpCidr::new(IpAddress::Ipv4(C4), 24)).unwrap();
                a.push(IpCidr::new(IpAddress::Ipv6(C6), 64)).unwrap();
            });
            iface.routes_mut().add_default_ipv4_route(GW4).unwrap();
            iface.routes_mut().add_default_ipv6_route(GW6).unwrap();
            Container {
                iface,
                wire,
                sockets: SocketSet::new(Vec::new()),
            }
        }

        fn tcp_socket(&mut self) -> SocketHandle {
            let mut s = tcp::Socket::new(
                tcp::SocketBuffer::new(vec![0; 8192]),
                tcp::SocketBuffer::new(vec![0; 8192]),
            );
            s.set_ack_delay(None);
            self.sockets.add(s)
        }

        fn listen(&mut self, port: u16) -> SocketHandle {
            let h = self.tcp_socket();
            self.tcp(h).listen(port).unwrap();
            h
        }

        fn connect(&mut self, to: SocketAddr, local_port: u16) -> SocketHandle {
            let h = self.tcp_socket();
            let s = self.sockets.get_mut::<tcp::Socket>(h);
            s.connect(self.iface.context(), IpEndpoint::from(to), local_port)
                .unwrap();
            h
        }

        fn tcp(&mut self, h: SocketHandle) -> &mut tcp::Socket<'static> {
            self.sockets.get_mut::<tcp::Socket>(h)
        }

        fn udp_socket(&mut self, port: u16) -> SocketHandle {
            let mut s = udp::Socket::new(
                udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 16], vec![0; 16384]),
                udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 16], vec![0; 16384]),
            );
            s.bind(port).unwrap();
            self.sockets.add(s)
        }

        fn udp(&mut self, h: SocketHandle) -> &mut udp::Socket<'static> {
            self.sockets.get_mut::<udp::Socket>(h)
        }

        /// Everything the container's TCP socket received so far.
        fn recv_all(&mut self, h: SocketHandle) -> Vec<u8> {
            let mut out = Vec::new();
            let mut buf = [0u8; 4096];
            while let Ok(n) = self.tcp(h).recv_slice(&mut buf) {
                if n == 0 {
                    break;
                }
                out.extend_from_slice(&buf[..n]);
            }
            out
        }
    }

    /// A network: one container, the gateway (ARP, NDP) and the NAT, wired
    /// as the datapath wires them.
    struct Net {
        nat: Nat,
        gw: Gateway,
        c: Container,
        epoch: Instant,
        now: Instant,
        events: Vec<NatEvent>,
        datagrams: Vec<(Datagram, Vec<u8>)>,
    }

    impl Net {
        fn new(egress: bool, limits: NatLimits) -> Net {
            let epoch = Instant::now();
            let nat = Nat::new(config(egress, limits), epoch).unwrap();
            let gw = Gateway::new(
                GatewayConfig {
                    mac: GW_MAC,
                    ipv4: Some((GW4, 24)),
                    ipv6: Some((GW6, 64)),
                    mtu: MTU,
                    zone: Zone::new([]).into_shared(),
                    upstreams: Vec::new(),
                    upstream_timeout: Duration::from_secs(2),
                    random_seed: 3,
                },
                epoch,
            )
            .unwrap();
            let mut net = Net {
                nat,
                gw,
                c: Container::new(epoch),
                epoch,
                now: epoch,
                events: Vec::new(),
                datagrams: Vec::new(),
            };
            // The gateway asks for the container: the container learns the
            // gateway's MAC, as after any first exchange.
            net.c
                .wire
                .rx
                .push_back(crate::wire::build_arp_request(GW_MAC, GW4, C4));
            net.c
                .wire
                .rx
                .push_back(crate::wire::build_neighbor_solicit(GW_MAC, GW6, C6));
            net.pump();
            net
        }

        /// Moves frames until the link is quiet.
        fn pump(&mut self) {
            let mut buf = vec![0u8; 65536];
            for _ in 0..100_000 {
                let mut moved = false;
                let t = smol_instant(self.epoch, self.now);
                self.c.iface.poll(t, &mut self.c.wire, &mut self.c.sockets);
                while let Some(f) = self.c.wire.tx.pop_front() {
                    moved = true;
                    if self.nat.is_for_nat(&f) {
                        self.nat.handle_frame(&f, self.now);
                    } else {
                        self.gw.handle_frame(&f, self.now);
                    }
                }
                while let Some(n) = self.gw.poll_transmit(self.now, &mut buf) {
                    moved = true;
                    self.c.wire.rx.push_back(buf[..n].to_vec());
                }
                while let Some(n) = self.nat.poll_transmit(self.now, &mut buf) {
                    moved = true;
                    check_frame(&buf[..n]);
                    self.c.wire.rx.push_back(buf[..n].to_vec());
                }
                while let Some(e) = self.nat.poll_event() {
                    self.events.push(e);
                }
                while let Some(d) = self.nat.poll_datagram(&mut buf) {
                    self.datagrams.push((d, buf[..d.len].to_vec()));
                }
                if !moved {
                    return;
                }
            }
            panic!("the link never went quiet");
        }

        /// Pumps and lets a little time pass (delayed ACKs, small timers).
        fn settle(&mut self) {
            for _ in 0..5 {
                self.pump();
                self.tick(Duration::from_millis(20));
            }
            self.pump();
        }

        fn tick(&mut self, d: Duration) {
            self.now += d;
            self.nat.handle_timeout(self.now);
            self.gw.handle_timeout(self.now);
        }

        /// Lets `d` pass in one-second steps, pumping after each.
        fn advance(&mut self, d: Duration) {
            let end = self.now + d;
            while self.now < end {
                let step = (end - self.now).min(Duration::from_secs(1));
                self.tick(step);
                self.pump();
            }
        }

        fn take_events(&mut self) -> Vec<NatEvent> {
            while let Some(e) = self.nat.poll_event() {
                self.events.push(e);
            }
            std::mem::take(&mut self.events)
        }

        fn take_datagrams(&mut self) -> Vec<(Datagram, Vec<u8>)> {
            std::mem::take(&mut self.datagrams)
        }

        /// Reads everything the NAT holds from the container on `id`.
        fn host_read(&mut self, id: ConnId) -> Vec<u8> {
            let mut out = Vec::new();
            let mut buf = [0u8; 3000];
            loop {
                let n = self.nat.tcp_read(id, &mut buf, self.now);
                if n == 0 {
                    return out;
                }
                out.extend_from_slice(&buf[..n]);
            }
        }

        /// An egress connection from the container to `to`, accepted by
        /// the host.
        fn egress(&mut self, to: SocketAddr, local_port: u16) -> (SocketHandle, ConnId) {
            let h = self.c.connect(to, local_port);
            self.settle();
            let events = self.take_events();
            let [NatEvent::EgressTcpConnect { id, src, dst }] = events[..] else {
                panic!("expected one connect, got {events:?}");
            };
            assert_eq!(dst, to);
            assert_eq!(src.port(), local_port);
            assert_eq!(self.c.tcp(h).state(), tcp::State::SynSent);
            self.nat.egress_connected(id, true, self.now);
            self.settle();
            assert_eq!(self.c.tcp(h).state(), tcp::State::Established);
            (h, id)
        }
    }

    /// Every frame from the NAT: from the gateway MAC to the container,
    /// within the MTU, with correct checksums.
    fn check_frame(frame: &[u8]) {
        assert_eq!(&frame[6..12], &GW_MAC.0, "source MAC");
        assert_eq!(&frame[..6], &C_MAC.0, "destination MAC");
        assert!(frame.len() <= MTU + ETH_LEN, "{} bytes", frame.len());
        let pkt = SlicedPacket::from_ethernet(frame).expect("parses");
        let (src, dst) = match &pkt.net {
            Some(NetSlice::Ipv4(ip)) => {
                let h = ip.header();
                assert_eq!(h.to_header().calc_header_checksum(), h.header_checksum());
                (
                    IpAddr::V4(h.source_addr()),
                    IpAddr::V4(h.destination_addr()),
                )
            }
            Some(NetSlice::Ipv6(ip)) => (
                IpAddr::V6(ip.header().source_addr()),
                IpAddr::V6(ip.header().destination_addr()),
            ),
            other => panic!("not IP: {other:?}"),
        };
        match (&pkt.transport, src, dst) {
            (Some(TransportSlice::Tcp(t)), IpAddr::V4(s), IpAddr::V4(d)) => {
                assert_eq!(
                    t.calc_checksum_ipv4(s.octets(), d.octets()).unwrap(),
                    t.checksum()
                );
            }
            (Some(TransportSlice::Tcp(t)), IpAddr::V6(s), IpAddr::V6(d)) => {
                assert_eq!(
                    t.calc_checksum_ipv6(s.octets(), d.octets()).unwrap(),
                    t.checksum()
                );
            }
            (Some(TransportSlice::Udp(u)), IpAddr::V4(s), IpAddr::V4(d)) => {
                let want =
                    u.to_header()
                        .calc_checksum_ipv4_raw(s.octets(), d.octets(), u.payload());
                assert_eq!(want.unwrap(), u.checksum());
            }
            (Some(TransportSlice::Udp(u)), IpAddr::V6(s), IpAddr::V6(d)) => {
                let want =
                    u.to_header()
                        .calc_checksum_ipv6_raw(s.octets(), d.octets(), u.payload());
                assert_eq!(want.unwrap(), u.checksum());
            }
            (Some(TransportSlice::Icmpv4(i)), IpAddr::V4(_), IpAddr::V4(_)) => {
                let want = etherparse::Icmpv4Header::with_checksum(i.icmp_type(), i.payload());
                assert_eq!(want.checksum, i.checksum());
            }
            (Some(TransportSlice::Icmpv6(i)), IpAddr::V6(s), IpAddr::V6(d)) => {
                assert!(i.is_checksum_valid(s.octets(), d.octets()));
            }
            other => panic!("not TCP, UDP or ICMP: {other:?}"),
        }
    }

    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    fn gateway_of(addr: SocketAddr) -> IpAddr {
        if addr.is_ipv4() {
            GW4.into()
        } else {
            GW6.into()
        }
    }

    // ---- published TCP ports ----

    #[rstest]
    #[case::ipv4_client("203.0.113.7:40000", "10.0.0.2:80", true)]
    #[case::ipv6_client("[2001:db8::7]:40000", "[fd00::2]:80", true)]
    #[case::mapped_ipv4_client("[::ffff:203.0.113.7]:40000", "10.0.0.2:80", true)]
    #[case::loopback("127.0.0.1:5555", "10.0.0.2:80", false)]
    #[case::ipv6_loopback("[::1]:5555", "[fd00::2]:80", false)]
    #[case::ipv6_client_ipv4_container("[2001:db8::7]:40000", "10.0.0.2:80", false)]
    #[case::ipv4_client_ipv6_container("203.0.113.7:40000", "[fd00::2]:80", false)]
    #[case::client_in_the_subnet("10.0.0.9:40000", "10.0.0.2:80", false)]
    fn inbound_tcp_peer_is_the_client_or_the_gateway(
        #[case] client: &str,
        #[case] container: &str,
        #[case] real: bool,
    ) {
        let (client, container) = (sa(client), sa(container));
        let mut net = Net::new(true, limits());
        let h = net.c.listen(container.port());
        let id = net
            .nat
            .inbound_tcp(client, container, C_MAC, net.now)
            .unwrap();
        net.settle();
        assert_eq!(net.c.tcp(h).state(), tcp::State::Established);
        let peer = SocketAddr::from(net.c.tcp(h).remote_endpoint().unwrap());
        let local = SocketAddr::from(net.c.tcp(h).local_endpoint().unwrap());
        assert_eq!(local, container);
        if real {
            assert_eq!(peer, canonical(client));
        } else {
            assert_eq!(peer.ip(), gateway_of(container));
            assert!(NAT_PORTS.contains(&peer.port()), "{peer}");
        }
        // Bytes both ways prove the return path.
        assert_eq!(net.nat.tcp_write(id, b"hello", net.now), 5);
        net.settle();
        assert_eq!(net.c.recv_all(h), b"hello");
        net.c.tcp(h).send_slice(b"world").unwrap();
        net.settle();
        assert_eq!(net.take_events(), [NatEvent::TcpReadable(id)]);
        assert_eq!(net.host_read(id), b"world");
    }

    #[test]
    fn gateway_side_ports_are_not_reused_at_once() {
        // Loopback clients come from the gateway address: each connection
        // takes the next free port, so a port the container may still hold
        // in TIME-WAIT is not handed out again soon.
        let mut net = Net::new(true, limits());
        let mut last = None;
        for port in [80, 81, 82] {
            let h = net.c.listen(port);
            let id = net
                .nat
                .inbound_tcp(
                    sa("127.0.0.1:40000"),
                    SocketAddr::new("10.0.0.2".parse().unwrap(), port),
                    C_MAC,
                    net.now,
                )
                .unwrap();
            net.settle();
            let peer = SocketAddr::from(net.c.tcp(h).remote_endpoint().unwrap());
            assert!(NAT_PORTS.contains(&peer.port()), "{peer}");
            if let Some(prev) = last {
                assert_eq!(peer.port(), prev + 1, "ports must advance, not repeat");
            }
            last = Some(peer.port());
            // Close it before the next one: its port is free again, yet not
            // taken next.
            net.nat.tcp_abort(id, net.now);
            net.settle();
        }
    }

    #[test]
    fn nat_syns_carry_tcp_timestamps() {
        let now = Instant::now();
        let mut nat = Nat::new(config(true, limits()), now).unwrap();
        nat.inbound_tcp(sa("203.0.113.7:40000"), sa("10.0.0.2:80"), C_MAC, now)
            .unwrap();
        let mut out = [0u8; 2048];
        let n = nat.poll_transmit(now, &mut out).expect("a SYN");
        let p = etherparse::SlicedPacket::from_ethernet(&out[..n]).unwrap();
        let Some(etherparse::TransportSlice::Tcp(tcp)) = p.transport else {
            panic!("not TCP")
        };
        assert!(tcp.syn() && !tcp.ack());
        let has_ts = tcp
            .options_iterator()
            .any(|o| matches!(o, Ok(etherparse::TcpOptionElement::Timestamp(_, _))));
        assert!(has_ts, "the NAT's SYN has no timestamp option");
    }

    #[test]
    fn inbound_tcp_host_half_close_before_handshake() {
        let mut net = Net::new(true, limits());
        let h = net.c.listen(80);
        let id = net
            .nat
            .inbound_tcp(sa("203.0.113.7:40000"), sa("10.0.0.2:80"), C_MAC, net.now)
            .unwrap();
        // The host client shut down writing at once (`socat - TCP:...`
        // with empty stdin), before the container's SYN-ACK came back.
        net.nat.tcp_host_closed(id, net.now);
        net.settle();
        // The connection is made all the same, then half-closed.
        assert_eq!(net.c.tcp(h).state(), tcp::State::CloseWait);
        net.c.tcp(h).send_slice(b"reply").unwrap();
        net.settle();
        let _ = net.take_events();
        assert_eq!(net.host_read(id), b"reply");
    }

    #[test]
    fn inbound_tcp_closes_both_ways() {
        let mut net = Net::new(true, limits());
        let h = net.c.listen(80);
        let id = net
            .nat
            .inbound_tcp(sa("203.0.113.7:40000"), sa("10.0.0.2:80"), C_MAC, net.now)
            .unwrap();
        net.settle();
        net.nat.tcp_write(id, b"last words", net.now);
        net.nat.tcp_host_closed(id, net.now);
        net.settle();
        // The container got every byte, then the FIN.
        assert_eq!(net.c.recv_all(h), b"last words");
        assert!(!net.c.tcp(h).may_recv());
        assert_eq!(net.c.tcp(h).state(), tcp::State::CloseWait);
        // Writing after the close takes nothing.
        assert_eq!(net.nat.tcp_write(id, b"more", net.now), 0);
        net.c.tcp(h).send_slice(b"bye").unwrap();
        net.c.tcp(h).close();
        net.settle();
        assert_eq!(
            net.take_events(),
            [NatEvent::TcpReadable(id)],
            "the FIN waits until the bytes are read"
        );
        assert_eq!(net.host_read(id), b"bye");
        assert_eq!(
            net.take_events(),
            [
                NatEvent::TcpFin(id),
                NatEvent::TcpClosed { id, reset: false }
            ]
        );
        // The container got the ACK of its FIN: it is closed, not waiting.
        assert_eq!(net.c.tcp(h).state(), tcp::State::Closed);
        // The NAT closed first but keeps no TIME-WAIT: everything is gone.
        assert_eq!(net.nat.stats().tcp_active, 0);
        assert!(net.nat.conns.is_empty() && net.nat.tuples.is_empty());
        assert!(net.nat.neighbors.is_empty() && net.nat.timers.is_empty());
        assert_eq!(net.nat.sockets.iter().count(), 0);
        net.advance(Duration::from_secs(11));
        assert!(net.take_events().is_empty());
    }

    #[test]
    fn closed_connections_free_their_slot_at_once() {
        let mut lim = limits();
        lim.max_tcp = 1;
        let mut net = Net::new(true, lim);
        let mut last = None;
        for round in 0..3u16 {
            let h = net.c.listen(80);
            let id = net
                .nat
                .inbound_tcp(sa("203.0.113.7:40000"), sa("10.0.0.2:80"), C_MAC, net.now)
                .unwrap_or_else(|e| panic!("round {round}: {e}"));
            net.settle();
            net.nat.tcp_host_closed(id, net.now);
            net.settle();
            net.c.tcp(h).close();
            net.settle();
            assert_eq!(
                net.take_events(),
                [
                    NatEvent::TcpFin(id),
                    NatEvent::TcpClosed { id, reset: false }
                ]
            );
            assert_eq!(net.nat.stats().tcp_active, 0, "round {round}");
            net.c.sockets.remove(h);
            last = Some(id);
        }
        // A live connection is never evicted.
        let h = net.c.listen(80);
        let id = net
            .nat
            .inbound_tcp(sa("203.0.113.8:40000"), sa("10.0.0.2:80"), C_MAC, net.now)
            .unwrap();
        assert_ne!(Some(id), last);
        net.settle();
        assert_eq!(net.c.tcp(h).state(), tcp::State::Established);
        let r = net
            .nat
            .inbound_tcp(sa("203.0.113.9:40000"), sa("10.0.0.2:80"), C_MAC, net.now);
        assert_eq!(r, Err(NatError::TcpTableFull(1)));
    }

    #[test]
    fn writes_before_the_handshake_wait_for_writable() {
        let mut net = Net::new(true, limits());
        let h = net.c.listen(80);
        let id = net
            .nat
            .inbound_tcp(sa("203.0.113.7:40000"), sa("10.0.0.2:80"), C_MAC, net.now)
            .unwrap();
        // Nothing is sent to the container yet: the write is refused.
        assert_eq!(net.nat.tcp_write(id, b"early", net.now), 0);
        net.settle();
        assert_eq!(net.take_events(), [NatEvent::TcpWritable(id)]);
        assert_eq!(net.nat.tcp_write(id, b"early", net.now), 5);
        net.settle();
        assert_eq!(net.c.recv_all(h), b"early");
    }

    #[test]
    fn container_closing_first_is_reported_then_host_closes() {
        let mut net = Net::new(true, limits());
        let h = net.c.listen(80);
        let id = net
            .nat
            .inbound_tcp(sa("127.0.0.1:41000"), sa("10.0.0.2:80"), C_MAC, net.now)
            .unwrap();
        net.settle();
        net.c.tcp(h).close();
        net.settle();
        assert_eq!(net.take_events(), [NatEvent::TcpFin(id)]);
        // The host can still send until it closes too.
        assert_eq!(net.nat.tcp_write(id, b"answer", net.now), 6);
        net.nat.tcp_host_closed(id, net.now);
        net.settle();
        assert_eq!(net.c.recv_all(h), b"answer");
        assert_eq!(
            net.take_events(),
            [NatEvent::TcpClosed { id, reset: false }]
        );
        // The container closed first and holds the TIME-WAIT; the NAT is done,
        // and its gateway port is free again.
        assert_eq!(net.nat.stats().tcp_active, 0);
        assert!(net.nat.tcp_ports.is_empty());
    }

    #[test]
    fn inbound_tcp_to_a_closed_port_is_reset() {
        let mut net = Net::new(true, limits());
        let id = net
            .nat
            .inbound_tcp(sa("203.0.113.7:40000"), sa("10.0.0.2:81"), C_MAC, net.now)
            .unwrap();
        net.settle();
        assert_eq!(net.take_events(), [NatEvent::TcpClosed { id, reset: true }]);
        assert_eq!(net.nat.stats().tcp_active, 0);
    }

    #[test]
    fn host_to_container_backpressure() {
        let mut net = Net::new(true, limits());
        let h = net.c.listen(80);
        let id = net
            .nat
            .inbound_tcp(sa("203.0.113.7:40000"), sa("10.0.0.2:80"), C_MAC, net.now)
            .unwrap();
        net.settle();
        let data = pattern(256 * 1024, 1);
        let mut sent = 0;
        // The container does not read: the NAT takes its buffer's worth plus
        // what the container's window holds, then no more.
        for _ in 0..50 {
            sent += net.nat.tcp_write(id, &data[sent..], net.now);
            net.settle();
        }
        let buffered = limits().tcp_buffer + 8192;
        assert!(sent <= buffered, "took {sent}");
        assert!(sent >= buffered / 2, "took only {sent}");
        assert_eq!(net.nat.tcp_write(id, &data[sent..], net.now), 0);
        net.take_events();
        // The container reads: the NAT says when to write again.
        let mut got = Vec::new();
        while got.len() < data.len() {
            got.extend(net.c.recv_all(h));
            net.settle();
            let events = net.take_events();
            if sent < data.len() {
                assert!(events.contains(&NatEvent::TcpWritable(id)), "{events:?}");
                sent += net.nat.tcp_write(id, &data[sent..], net.now);
            }
        }
        assert_eq!(got, data);
    }

    #[test]
    fn container_to_host_backpressure_with_peek_and_consume() {
        let mut net = Net::new(true, limits());
        let h = net.c.listen(80);
        let id = net
            .nat
            .inbound_tcp(sa("203.0.113.7:40000"), sa("10.0.0.2:80"), C_MAC, net.now)
            .unwrap();
        net.settle();
        let data = pattern(200 * 1024, 2);
        let mut sent = 0;
        for _ in 0..50 {
            sent += net.c.tcp(h).send_slice(&data[sent..]).unwrap();
            net.settle();
        }
        // The host does not read: the container can push no more than the
        // NAT's buffer and its own.
        assert!(sent <= limits().tcp_buffer + 8192, "sent {sent}");
        assert_eq!(net.take_events(), [NatEvent::TcpReadable(id)]);
        let mut got = Vec::new();
        while got.len() < data.len() {
            // A host socket that takes at most 1000 bytes at a time.
            loop {
                let chunk = net.nat.tcp_peek(id);
                let n = chunk.len().min(1000);
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&chunk[..n]);
                net.nat.tcp_consume(id, n, net.now);
            }
            if sent < data.len() {
                sent += net.c.tcp(h).send_slice(&data[sent..]).unwrap();
            }
            net.settle();
        }
        assert_eq!(got, data);
        // TcpReadable came again each time the buffer had been drained.
        assert!(net
            .take_events()
            .iter()
            .all(|e| *e == NatEvent::TcpReadable(id)));
    }

    #[test]
    fn inbound_tcp_to_a_silent_container_times_out() {
        let now = Instant::now();
        let mut nat = Nat::new(config(true, limits()), now).unwrap();
        let mac = MacAddr([0x02, 0x42, 0x0a, 0, 0, 3]);
        let id = nat
            .inbound_tcp(sa("203.0.113.7:40000"), sa("10.0.0.3:80"), mac, now)
            .unwrap();
        let mut buf = [0u8; 2048];
        let n = nat.poll_transmit(now, &mut buf).expect("a SYN");
        assert_eq!(&buf[..6], &mac.0);
        assert!(n > ETH_LEN + 20);
        let timeout = limits().tcp_connect_timeout;
        let mut t = now;
        while t < now + timeout {
            nat.handle_timeout(t);
            while nat.poll_transmit(t, &mut buf).is_some() {}
            assert_eq!(nat.poll_event(), None, "{t:?}");
            t += Duration::from_secs(1);
        }
        nat.handle_timeout(now + timeout);
        assert_eq!(
            nat.poll_event(),
            Some(NatEvent::TcpClosed { id, reset: true })
        );
        assert_eq!(nat.stats().tcp_timed_out, 1);
        assert!(nat.conns.is_empty() && nat.neighbors.is_empty());
    }

    #[test]
    fn egress_to_ipv4_link_local_is_allowed() {
        let mut net = Net::new(true, limits());
        let (h, id) = net.egress(sa("169.254.169.254:80"), 40020);
        net.c.tcp(h).send_slice(b"GET /latest").unwrap();
        net.settle();
        assert_eq!(net.host_read(id), b"GET /latest");
    }

    #[test]
    fn host_abort_resets_the_container() {
        let mut net = Net::new(true, limits());
        let h = net.c.listen(80);
        let id = net
            .nat
            .inbound_tcp(sa("203.0.113.7:40000"), sa("10.0.0.2:80"), C_MAC, net.now)
            .unwrap();
        net.settle();
        net.nat.tcp_abort(id, net.now);
        net.settle();
        assert_eq!(net.c.tcp(h).state(), tcp::State::Closed);
        assert_eq!(net.take_events(), [NatEvent::TcpClosed { id, reset: true }]);
        assert_eq!(net.nat.stats().tcp_active, 0);
        // The id is gone: calls on it are ignored.
        assert_eq!(net.nat.tcp_write(id, b"x", net.now), 0);
        assert_eq!(net.nat.tcp_read(id, &mut [0u8; 4], net.now), 0);
        net.nat.tcp_host_closed(id, net.now);
        net.nat.egress_connected(id, true, net.now);
        assert!(net.nat.poll_event().is_none());
    }

    #[test]
    fn container_reset_is_reported() {
        let mut net = Net::new(true, limits());
        let h = net.c.listen(80);
        let id = net
            .nat
            .inbound_tcp(sa("203.0.113.7:40000"), sa("10.0.0.2:80"), C_MAC, net.now)
            .unwrap();
        net.settle();
        net.c.tcp(h).abort();
        net.settle();
        assert_eq!(net.take_events(), [NatEvent::TcpClosed { id, reset: true }]);
        assert_eq!(net.nat.stats().tcp_active, 0);
    }

    #[test]
    fn idle_tcp_connections_are_reset() {
        let mut lim = limits();
        lim.tcp_idle = Duration::from_secs(60);
        let mut net = Net::new(true, lim);
        let h = net.c.listen(80);
        let id = net
            .nat
            .inbound_tcp(sa("203.0.113.7:40000"), sa("10.0.0.2:80"), C_MAC, net.now)
            .unwrap();
        net.settle();
        net.advance(Duration::from_secs(30));
        // Traffic restarts the clock.
        net.nat.tcp_write(id, b"ping", net.now);
        net.advance(Duration::from_secs(45));
        assert_eq!(net.c.tcp(h).state(), tcp::State::Established);
        assert!(net.take_events().is_empty());
        net.advance(Duration::from_secs(20));
        assert_eq!(net.c.tcp(h).state(), tcp::State::Closed);
        assert_eq!(net.take_events(), [NatEvent::TcpClosed { id, reset: true }]);
        assert_eq!(net.nat.stats().tcp_timed_out, 1);
        assert_eq!(net.nat.poll_timeout(net.now), None);
    }

    // ---- egress TCP ----

    #[test]
    fn egress_tcp_carries_bytes_both_ways() {
        let mut net = Net::new(true, limits());
        let to = SocketAddr::new(OUTSIDE4.into(), 80);
        let (h, id) = net.egress(to, 40001);
        // The container sees the real peer.
        assert_eq!(
            SocketAddr::from(net.c.tcp(h).remote_endpoint().unwrap()),
            to
        );
        let up = pattern(100_000, 3);
        let down = pattern(150_000, 4);
        let (mut sent_up, mut sent_down) = (0, 0);
        let (mut got_up, mut got_down) = (Vec::new(), Vec::new());
        for _ in 0..10_000 {
            if got_up.len() == up.len() && got_down.len() == down.len() {
                break;
            }
            sent_up += net.c.tcp(h).send_slice(&up[sent_up..]).unwrap();
            sent_down += net.nat.tcp_write(id, &down[sent_down..], net.now);
            net.settle();
            got_up.extend(net.host_read(id));
            got_down.extend(net.c.recv_all(h));
        }
        assert_eq!(got_up, up);
        assert_eq!(got_down, down);
        assert_eq!(net.nat.stats().tcp_egress, 1);
    }

    #[test]
    fn egress_ipv6() {
        let mut net = Net::new(true, limits());
        let to = sa("[2001:db8:1::9]:443");
        let (h, id) = net.egress(to, 40002);
        net.c.tcp(h).send_slice(b"GET").unwrap();
        net.settle();
        assert_eq!(net.host_read(id), b"GET");
        assert_eq!(
            SocketAddr::from(net.c.tcp(h).local_endpoint().unwrap()),
            SocketAddr::new(C6.into(), 40002)
        );
    }

    #[test]
    fn failed_egress_connect_resets_the_container() {
        let mut net = Net::new(true, limits());
        let h = net.c.connect(SocketAddr::new(OUTSIDE4.into(), 81), 40003);
        net.settle();
        let [NatEvent::EgressTcpConnect { id, .. }] = net.take_events()[..] else {
            panic!("no connect");
        };
        net.nat.egress_connected(id, false, net.now);
        net.settle();
        assert_eq!(net.c.tcp(h).state(), tcp::State::Closed);
        assert_eq!(net.take_events(), [NatEvent::TcpClosed { id, reset: true }]);
        let s = net.nat.stats();
        assert_eq!((s.tcp_connect_failed, s.tcp_active), (1, 0));
        assert!(net.nat.neighbors.is_empty());
    }

    #[test]
    fn egress_connect_that_never_finishes_times_out() {
        let mut net = Net::new(true, limits());
        let h = net.c.connect(SocketAddr::new(OUTSIDE4.into(), 82), 40004);
        net.settle();
        let [NatEvent::EgressTcpConnect { id, .. }] = net.take_events()[..] else {
            panic!("no connect");
        };
        // The container's retransmitted SYNs wait with the first.
        net.advance(Duration::from_secs(15));
        assert_eq!(net.c.tcp(h).state(), tcp::State::SynSent);
        assert!(net.take_events().is_empty());
        net.advance(Duration::from_secs(6));
        assert_eq!(net.c.tcp(h).state(), tcp::State::Closed);
        assert_eq!(net.take_events(), [NatEvent::TcpClosed { id, reset: true }]);
        assert_eq!(net.nat.stats().tcp_timed_out, 1);
        // A late answer from the host changes nothing.
        net.nat.egress_connected(id, true, net.now);
        assert!(net.nat.poll_event().is_none());
        assert_eq!(net.nat.stats().tcp_active, 0);
    }

    #[test]
    fn container_giving_up_on_a_pending_connect_is_reported() {
        let mut net = Net::new(true, limits());
        let h = net.c.connect(SocketAddr::new(OUTSIDE4.into(), 83), 40005);
        net.settle();
        let [NatEvent::EgressTcpConnect { id, .. }] = net.take_events()[..] else {
            panic!("no connect");
        };
        // smoltcp sends RST when a SYN-SENT socket is aborted? It does not:
        // build the RST the way a kernel sends it.
        net.c.tcp(h).abort();
        let mut f = Vec::new();
        PacketBuilder::ethernet2(C_MAC.0, GW_MAC.0)
            .ipv4(C4.octets(), OUTSIDE4.octets(), 64)
            .tcp(40005, 83, 0, 0)
            .rst()
            .write(&mut f, &[])
            .unwrap();
        net.nat.handle_frame(&f, net.now);
        assert_eq!(
            net.nat.poll_event(),
            Some(NatEvent::TcpClosed { id, reset: true })
        );
        assert_eq!(net.nat.stats().tcp_active, 0);
    }

    // ---- UDP ----

    #[test]
    fn egress_udp_out_and_back_then_idle_expiry() {
        let mut net = Net::new(true, limits());
        let u = net.c.udp_socket(5353);
        let dst = SocketAddr::new(OUTSIDE4.into(), 53);
        net.c
            .udp(u)
            .send_slice(b"query", IpEndpoint::from(dst))
            .unwrap();
        net.settle();
        let events = net.take_events();
        let [NatEvent::UdpFlowOpened { flow, src, dst: d }] = events[..] else {
            panic!("{events:?}");
        };
        assert_eq!((src, d), (sa("10.0.0.2:5353"), dst));
        let got = net.take_datagrams();
        assert_eq!(
            got,
            [(
                Datagram {
                    via: UdpVia::Flow(flow),
                    dst,
                    len: 5
                },
                b"query".to_vec()
            )]
        );
        net.nat.udp_reply(flow, dst, b"answer", net.now);
        net.settle();
        let mut buf = [0u8; 64];
        let (n, meta) = net.c.udp(u).recv_slice(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"answer");
        assert_eq!(SocketAddr::from(meta.endpoint), dst);
        // A second datagram uses the same flow.
        net.c
            .udp(u)
            .send_slice(b"again", IpEndpoint::from(dst))
            .unwrap();
        net.settle();
        assert!(net.take_events().is_empty());
        assert_eq!(net.take_datagrams()[0].0.via, UdpVia::Flow(flow));
        // Idle: the flow closes.
        net.advance(Duration::from_secs(29));
        assert!(net.take_events().is_empty());
        net.advance(Duration::from_secs(2));
        assert_eq!(net.take_events(), [NatEvent::UdpFlowClosed(flow)]);
        let s = net.nat.stats();
        assert_eq!((s.udp_flows, s.udp_expired, s.udp_active), (1, 1, 0));
        assert_eq!((s.udp_to_host, s.udp_to_container), (2, 1));
        // A reply on the dead flow is dropped.
        net.nat.udp_reply(flow, dst, b"late", net.now);
        assert_eq!(net.nat.stats().udp_dropped, 1);
        assert_eq!(net.nat.poll_timeout(net.now), None);
    }

    #[test]
    fn udp_reply_from_another_family_is_dropped() {
        let mut net = Net::new(true, limits());
        let u = net.c.udp_socket(5354);
        let dst = SocketAddr::new(OUTSIDE4.into(), 53);
        net.c
            .udp(u)
            .send_slice(b"q", IpEndpoint::from(dst))
            .unwrap();
        net.settle();
        let [NatEvent::UdpFlowOpened { flow, .. }] = net.take_events()[..] else {
            panic!("no flow");
        };
        net.nat
            .udp_reply(flow, sa("[2001:db8::1]:53"), b"a", net.now);
        // An IPv4-mapped source is the IPv4 peer.
        net.nat
            .udp_reply(flow, sa("[::ffff:198.51.100.9]:53"), b"b", net.now);
        net.settle();
        let mut buf = [0u8; 8];
        let (n, meta) = net.c.udp(u).recv_slice(&mut buf).unwrap();
        assert_eq!(
            (&buf[..n], SocketAddr::from(meta.endpoint)),
            (&b"b"[..], dst)
        );
        assert!(net.c.udp(u).recv_slice(&mut buf).is_err());
        assert_eq!(net.nat.stats().udp_dropped, 1);
    }

    #[rstest]
    #[case::real_client("203.0.113.7:40000", "10.0.0.2:53", true)]
    #[case::loopback_client("127.0.0.1:6000", "10.0.0.2:53", false)]
    #[case::ipv6_client("[2001:db8::7]:40000", "[fd00::2]:53", true)]
    #[case::ipv6_client_ipv4_container("[2001:db8::7]:40000", "10.0.0.2:53", false)]
    fn published_udp_port(#[case] client: &str, #[case] container: &str, #[case] real: bool) {
        let (client, container) = (sa(client), sa(container));
        let mut net = Net::new(true, limits());
        let u = net.c.udp_socket(53);
        let listener = ListenerId(7);
        let flow = net
            .nat
            .inbound_udp(listener, client, container, C_MAC, b"ping", net.now)
            .unwrap();
        net.settle();
        let mut buf = [0u8; 64];
        let (n, meta) = net.c.udp(u).recv_slice(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"ping");
        let seen = SocketAddr::from(meta.endpoint);
        if real {
            assert_eq!(seen, client);
        } else {
            assert_eq!(seen.ip(), gateway_of(container));
            assert!(NAT_PORTS.contains(&seen.port()));
        }
        net.c.udp(u).send_slice(b"pong", meta.endpoint).unwrap();
        net.settle();
        assert_eq!(
            net.take_datagrams(),
            [(
                Datagram {
                    via: UdpVia::Listener(listener),
                    dst: client,
                    len: 4
                },
                b"pong".to_vec()
            )]
        );
        // The same client again: the same flow. No events: the listener's
        // socket serves every client.
        let again = net
            .nat
            .inbound_udp(listener, client, container, C_MAC, b"ping2", net.now)
            .unwrap();
        assert_eq!(again, flow);
        assert!(net.take_events().is_empty());
        // The port goes away: its flows with it.
        net.nat.close_listener(listener);
        assert_eq!(net.nat.stats().udp_active, 0);
        net.c.udp(u).send_slice(b"late", meta.endpoint).unwrap();
        net.settle();
        if real {
            // To a real client's address, a datagram is just egress now.
            let events = net.take_events();
            let [NatEvent::UdpFlowOpened {
                flow: egress, dst, ..
            }] = events[..]
            else {
                panic!("{events:?}");
            };
            assert_eq!(dst, client);
            assert_eq!(net.take_datagrams()[0].0.via, UdpVia::Flow(egress));
        } else {
            // To the gateway's port: nothing holds it any more.
            assert!(net.take_events().is_empty());
            assert!(net.take_datagrams().is_empty());
            assert_eq!(net.nat.stats().udp_dropped, 1);
        }
    }

    #[test]
    fn published_udp_datagram_too_big_for_the_mtu() {
        let mut net = Net::new(true, limits());
        let r = net.nat.inbound_udp(
            ListenerId(1),
            sa("203.0.113.7:40000"),
            sa("10.0.0.2:53"),
            C_MAC,
            &[0u8; MTU],
            net.now,
        );
        assert_eq!(r, Err(NatError::DatagramTooBig(MTU)));
        // The largest that fits goes through.
        let r = net.nat.inbound_udp(
            ListenerId(1),
            sa("203.0.113.7:40000"),
            sa("10.0.0.2:53"),
            C_MAC,
            &[0u8; MTU - 28],
            net.now,
        );
        assert!(r.is_ok());
        let mut buf = [0u8; 2048];
        assert_eq!(
            net.nat.poll_transmit(net.now, &mut buf),
            Some(MTU + ETH_LEN)
        );
    }

    // ---- ICMP echo ----

    fn echo_request_frame(dst: IpAddr, ident: u16, seq: u16, payload: &[u8]) -> Vec<u8> {
        let echo = etherparse::IcmpEchoHeader { id: ident, seq };
        let mut f = Vec::new();
        let b = PacketBuilder::ethernet2(C_MAC.0, GW_MAC.0);
        match dst {
            IpAddr::V4(d) => b
                .ipv4(C4.octets(), d.octets(), 64)
                .icmpv4(Icmpv4Type::EchoRequest(echo))
                .write(&mut f, payload),
            IpAddr::V6(d) => b
                .ipv6(C6.octets(), d.octets(), 64)
                .icmpv6(etherparse::Icmpv6Type::EchoRequest(echo))
                .write(&mut f, payload),
        }
        .unwrap();
        f
    }

    #[rstest]
    #[case::ipv4("198.51.100.9")]
    #[case::ipv6("2001:db8::9")]
    fn ping_goes_out_through_a_ping_socket_and_back(#[case] dst: &str) {
        let dst: IpAddr = dst.parse().unwrap();
        let mut net = Net::new(true, limits());
        let mut sock = smoltcp::socket::icmp::Socket::new(
            smoltcp::socket::icmp::PacketBuffer::new(
                vec![smoltcp::socket::icmp::PacketMetadata::EMPTY; 4],
                vec![0; 1024],
            ),
            smoltcp::socket::icmp::PacketBuffer::new(
                vec![smoltcp::socket::icmp::PacketMetadata::EMPTY; 4],
                vec![0; 1024],
            ),
        );
        sock.bind(smoltcp::socket::icmp::Endpoint::Ident(0x1234))
            .unwrap();
        let icmp = net.c.sockets.add(sock);
        net.c
            .wire
            .tx
            .push_back(echo_request_frame(dst, 0x1234, 1, b"ping!"));
        net.settle();
        let events = net.take_events();
        let [NatEvent::IcmpFlowOpened { flow, src, dst: d }] = events[..] else {
            panic!("{events:?}");
        };
        assert_eq!(d, dst);
        assert_eq!(
            src,
            if dst.is_ipv4() {
                IpAddr::from(C4)
            } else {
                IpAddr::from(C6)
            }
        );
        // The datagram is the whole echo request, for the ping socket.
        let got = net.take_datagrams();
        assert_eq!(got.len(), 1);
        let (dgram, msg) = &got[0];
        assert_eq!(
            (dgram.via, dgram.dst),
            (UdpVia::Flow(flow), SocketAddr::new(dst, 0))
        );
        assert_eq!(msg[0], if dst.is_ipv4() { 8 } else { 128 });
        assert_eq!(&msg[4..8], &[0x12, 0x34, 0, 1]);
        assert_eq!(&msg[8..], b"ping!");
        // The kernel's reply carries its own identifier and checksum.
        let mut reply = msg.clone();
        reply[0] = if dst.is_ipv4() { 0 } else { 129 };
        reply[2..6].copy_from_slice(&[0xde, 0xad, 0x99, 0x99]);
        net.nat.icmp_reply(flow, dst, &reply, net.now);
        // Not an echo reply: dropped.
        net.nat.icmp_reply(flow, dst, msg, net.now);
        net.settle();
        let s = net.c.sockets.get_mut::<smoltcp::socket::icmp::Socket>(icmp);
        let mut buf = [0u8; 64];
        let (n, from) = s
            .recv_slice(&mut buf)
            .expect("echo reply with a valid checksum");
        assert_eq!(IpAddr::from(from), dst);
        assert_eq!(
            &buf[4..8],
            &[0x12, 0x34, 0, 1],
            "the container's identifier"
        );
        assert_eq!(&buf[8..n], b"ping!");
        assert!(s.recv_slice(&mut buf).is_err());
        let st = net.nat.stats();
        assert_eq!((st.icmp_flows, st.icmp_active, st.udp_active), (1, 1, 0));
        assert_eq!(
            (st.icmp_to_host, st.icmp_to_container, st.icmp_dropped),
            (1, 1, 1)
        );
        // Idle: the flow closes.
        net.advance(Duration::from_secs(31));
        assert_eq!(net.take_events(), [NatEvent::IcmpFlowClosed(flow)]);
        assert_eq!(net.nat.stats().icmp_active, 0);
    }

    #[test]
    fn ping_is_dropped_on_internal_networks_and_to_the_gateway() {
        let mut net = Net::new(false, limits());
        net.c
            .wire
            .tx
            .push_back(echo_request_frame(OUTSIDE4.into(), 1, 1, b"x"));
        net.settle();
        assert!(net.take_events().is_empty() && net.take_datagrams().is_empty());
        assert_eq!(net.nat.stats().egress_denied, 1);
        // The gateway answers pings to itself (is_for_nat leaves them to it).
        let f = echo_request_frame(GW4.into(), 1, 1, b"x");
        assert!(!net.nat.is_for_nat(&f));
        net.c.wire.tx.push_back(f);
        net.settle();
        assert_eq!(net.gw.stats().echo_replies, 1);
    }

    // ---- limits and internal networks ----

    #[test]
    fn tcp_flood_is_refused_with_rst() {
        let mut lim = limits();
        lim.max_tcp = 4;
        let mut net = Net::new(true, lim);
        let mut handles = Vec::new();
        for i in 0..5 {
            handles.push(
                net.c
                    .connect(SocketAddr::new(OUTSIDE4.into(), 80 + i), 41000 + i),
            );
        }
        net.settle();
        let ids: Vec<ConnId> = net
            .take_events()
            .into_iter()
            .map(|e| match e {
                NatEvent::EgressTcpConnect { id, .. } => id,
                e => panic!("{e:?}"),
            })
            .collect();
        assert_eq!(ids.len(), 4);
        assert_eq!(net.c.tcp(handles[4]).state(), tcp::State::Closed);
        assert_eq!(net.nat.stats().tcp_refused, 1);
        for id in &ids {
            net.nat.egress_connected(*id, true, net.now);
        }
        net.settle();
        for h in &handles[..4] {
            assert_eq!(net.c.tcp(*h).state(), tcp::State::Established);
        }
        // Published ports share the table.
        let r = net
            .nat
            .inbound_tcp(sa("203.0.113.7:40000"), sa("10.0.0.2:80"), C_MAC, net.now);
        assert_eq!(r, Err(NatError::TcpTableFull(4)));
    }

    fn syn_frame(sport: u16, dst: SocketAddr) -> Vec<u8> {
        let IpAddr::V4(d) = dst.ip() else {
            panic!("IPv4 only")
        };
        let mut f = Vec::new();
        PacketBuilder::ethernet2(C_MAC.0, GW_MAC.0)
            .ipv4(C4.octets(), d.octets(), 64)
            .tcp(sport, dst.port(), 1000, 65535)
            .syn()
            .write(&mut f, &[])
            .unwrap();
        f
    }

    fn udp_frame(sport: u16, dst: SocketAddr, payload: &[u8]) -> Vec<u8> {
        let mut f = Vec::new();
        let b = PacketBuilder::ethernet2(C_MAC.0, GW_MAC.0);
        match dst.ip() {
            IpAddr::V4(d) => b
                .ipv4(C4.octets(), d.octets(), 64)
                .udp(sport, dst.port())
                .write(&mut f, payload),
            IpAddr::V6(d) => b
                .ipv6(C6.octets(), d.octets(), 64)
                .udp(sport, dst.port())
                .write(&mut f, payload),
        }
        .unwrap();
        f
    }

    #[test]
    fn syn_flood_is_bounded() {
        let now = Instant::now();
        let mut nat = Nat::new(config(true, limits()), now).unwrap();
        let dst = SocketAddr::new(OUTSIDE4.into(), 80);
        for i in 0..5000u16 {
            nat.handle_frame(&syn_frame(1024 + i, dst), now);
        }
        let s = nat.stats();
        assert_eq!(s.tcp_egress, limits().max_tcp_connecting as u64);
        assert_eq!(s.tcp_refused, 5000 - s.tcp_egress);
        assert_eq!(nat.conns.len(), limits().max_tcp_connecting);
        // The RSTs beyond the queue are dropped, not kept.
        assert_eq!(nat.tx.frames.len(), TX_QUEUE_FRAMES);
        assert!(s.frames_dropped > 0);
        let mut events = 0;
        while nat.poll_event().is_some() {
            events += 1;
        }
        assert_eq!(events, limits().max_tcp_connecting);
        // Every waiting SYN times out: RSTs and TcpClosed, tables empty.
        let later = now + limits().tcp_connect_timeout;
        nat.handle_timeout(later);
        let mut closed = 0;
        while let Some(e) = nat.poll_event() {
            assert!(matches!(e, NatEvent::TcpClosed { reset: true, .. }));
            closed += 1;
        }
        assert_eq!(closed, limits().max_tcp_connecting);
        assert!(nat.conns.is_empty() && nat.tuples.is_empty() && nat.timers.is_empty());
        assert_eq!(nat.connecting, 0);
    }

    #[test]
    fn udp_flood_is_bounded() {
        let now = Instant::now();
        let mut nat = Nat::new(config(true, limits()), now).unwrap();
        for i in 0..100u16 {
            nat.handle_frame(&udp_frame(2000 + i, sa("198.51.100.9:53"), b"x"), now);
        }
        let s = nat.stats();
        assert_eq!(s.udp_active, limits().max_udp_flows as u64);
        assert_eq!(s.udp_refused, 100 - limits().max_udp_flows as u64);
        // The datagram queue is bounded too.
        let big = vec![0u8; 1400];
        for _ in 0..DATAGRAM_QUEUE + 10 {
            nat.handle_frame(&udp_frame(2000, sa("198.51.100.9:53"), &big), now);
        }
        assert_eq!(nat.datagrams.queue.len(), DATAGRAM_QUEUE);
        assert!(nat.stats().udp_dropped >= 10);
    }

    #[test]
    fn internal_network_drops_egress_but_publishes_ports() {
        let mut net = Net::new(false, limits());
        let h = net.c.connect(SocketAddr::new(OUTSIDE4.into(), 80), 40010);
        let u = net.c.udp_socket(5355);
        net.c
            .udp(u)
            .send_slice(b"q", IpEndpoint::from(sa("198.51.100.9:53")))
            .unwrap();
        net.settle();
        assert!(net.take_events().is_empty());
        assert!(net.take_datagrams().is_empty());
        assert_eq!(net.c.tcp(h).state(), tcp::State::SynSent);
        let s = net.nat.stats();
        assert!(s.egress_denied >= 2, "{s:?}");
        assert_eq!((s.tcp_egress, s.udp_flows), (0, 0));
        // Published ports work, loopback clients included.
        let l = net.c.listen(80);
        let id = net
            .nat
            .inbound_tcp(sa("127.0.0.1:7000"), sa("10.0.0.2:80"), C_MAC, net.now)
            .unwrap();
        net.settle();
        assert_eq!(net.c.tcp(l).state(), tcp::State::Established);
        net.c.tcp(l).send_slice(b"inside").unwrap();
        net.settle();
        assert_eq!(net.host_read(id), b"inside");
    }

    #[test]
    fn inbound_to_a_bad_container_address_fails() {
        let now = Instant::now();
        let mut nat = Nat::new(config(true, limits()), now).unwrap();
        for container in [
            "10.0.1.2:80",
            "10.0.0.1:80",
            "10.0.0.255:80",
            "10.0.0.2:0",
            "[fd01::2]:80",
        ] {
            let r = nat.inbound_tcp(sa("203.0.113.7:40000"), sa(container), C_MAC, now);
            assert_eq!(r, Err(NatError::NotInNetwork(sa(container))), "{container}");
        }
        let r = nat.inbound_tcp(
            sa("203.0.113.7:40000"),
            sa("10.0.0.2:80"),
            MacAddr([0xff; 6]),
            now,
        );
        assert!(r.is_err());
        assert!(nat.conns.is_empty());
    }

    // ---- classification, configuration, garbage ----

    fn frame_to(dst: IpAddr, proto: u8, dport: u16) -> Vec<u8> {
        let mut f = Vec::new();
        let b = PacketBuilder::ethernet2(C_MAC.0, GW_MAC.0);
        let r = match (dst, proto) {
            (IpAddr::V4(d), 6) => b
                .ipv4(C4.octets(), d.octets(), 64)
                .tcp(40000, dport, 1, 100)
                .syn()
                .write(&mut f, &[]),
            (IpAddr::V4(d), 17) => b
                .ipv4(C4.octets(), d.octets(), 64)
                .udp(40000, dport)
                .write(&mut f, &[]),
            (IpAddr::V4(d), _) => b
                .ipv4(C4.octets(), d.octets(), 64)
                .icmpv4(Icmpv4Type::EchoRequest(etherparse::IcmpEchoHeader {
                    id: 1,
                    seq: 1,
                }))
                .write(&mut f, &[]),
            (IpAddr::V6(d), 6) => b
                .ipv6(C6.octets(), d.octets(), 64)
                .tcp(40000, dport, 1, 100)
                .syn()
                .write(&mut f, &[]),
            (IpAddr::V6(d), _) => b
                .ipv6(C6.octets(), d.octets(), 64)
                .udp(40000, dport)
                .write(&mut f, &[]),
        };
        r.unwrap();
        f
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
        nat.handle_frame(&[], now);
        nat.handle_frame(&[0xff; 10], now);
        let mut f = syn_frame(1000, sa("198.51.100.9:80"));
        f.truncate(30);
        nat.handle_frame(&f, now);
        assert_eq!(nat.stats().frames_malformed, 3);
        // Bad TCP and UDP checksums.
        let mut f = syn_frame(1000, sa("198.51.100.9:80"));
        let n = f.len();
        f[n - 3] ^= 0x40; // the window field
        nat.handle_frame(&f, now);
        assert_eq!(nat.stats().frames_bad_checksum, 1);
        let mut f = udp_frame(1000, sa("198.51.100.9:53"), b"abc");
        let n = f.len();
        f[n - 1] ^= 1;
        nat.handle_frame(&f, now);
        assert_eq!(nat.stats().frames_bad_checksum, 2);
        // From outside the network, and to the network itself.
        let mut f = Vec::new();
        PacketBuilder::ethernet2(C_MAC.0, GW_MAC.0)
            .ipv4([10, 9, 9, 9], OUTSIDE4.octets(), 64)
            .udp(1000, 53)
            .write(&mut f, b"abc")
            .unwrap();
        nat.handle_frame(&f, now);
        nat.handle_frame(&udp_frame(1000, sa("10.0.0.3:53"), b"abc"), now);
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
        nat.handle_frame(&f, now);
        let mut f = udp_frame(1000, sa("198.51.100.9:53"), b"abc");
        f[5] = 0x99;
        nat.handle_frame(&f, now);
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
                nat.handle_frame(f, t);
                nat.handle_frame(&g, t);
            }
            for f in templates.iter_mut() {
                for (i, b) in &flips {
                    let i = i % f.len();
                    f[i] ^= b;
                }
                nat.handle_frame(f, t);
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
                while let Some(n) = nat.poll_transmit(t, &mut buf) {
                    proptest::prop_assert_eq!(&buf[6..12], &GW_MAC.0);
                    proptest::prop_assert!(n <= MTU + ETH_LEN);
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
