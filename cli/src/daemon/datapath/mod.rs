//! The datapath: worker threads that own the [`Bridge`], every network's
//! [`Gateway`] and NAT, the tunnel sockets and every TAP file descriptor,
//! and move frames between them.
//!
//! Each worker is one thread with one `mio` poll and no locks: the control
//! plane talks to it through a channel and a waker ([`handle`]), and each
//! worker keeps its own copy of the tables. Each wake-up reads a bounded
//! batch of frames per port into buffers allocated at start, asks the
//! sans-IO cores what to do with each (the bridge for switching, the
//! overlay's tunnel rules for VXLAN and QUIC datagrams), and writes them
//! out; counters are kept locally and read through [`Command::Stats`].
//!
//! The seams, one file each:
//! - [`handle`]: [`DatapathHandle`], the control plane's end (one RPC per
//!   [`Command`], answered by every worker), with [`DatapathError`].
//! - `worker`: a worker's loop (poll, turn, timers) and its table upkeep.
//! - `ingress`: TAP reads and the switching of one frame.
//! - `tunnel`: the UDP tunnel socket (recvmmsg + GRO) and QUIC datagrams in.
//! - `egress`: delivering a switched frame to a TAP, a gateway, another
//!   worker or a VTEP (GSO for UDP, one DATAGRAM per segment for QUIC).
//! - `gateways`: servicing the gateways, their NATs and upstream DNS.
//! - `handoff`: frames (and accepted connections) from one worker to
//!   another: to the first one's gateways, to the NAT shard that owns a
//!   TCP connection.
//! - `nat_io`: the NAT's host sockets (published ports, egress flows).
//! - `tokens`: what each poll token stands for.
//! - `trace`: `vswitch trace`, a synthetic frame through the cores' query
//!   forms, changing nothing.
use std::collections::{HashMap, VecDeque};
use std::io::{self, IoSlice, IoSliceMut};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mio::net::UdpSocket;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Waker};
use nix::sys::socket::{sendmsg, MsgFlags, SockaddrStorage};
use overlay::tunnel::{Decap, Encap, Origin, Transport, TunnelRules};
pub use overlay::tunnel::{Vtep, VtepKind};
use overlay::Vni;
use quinn_udp::{RecvMeta, Transmit, UdpSockRef, UdpSocketState};
use switch::bridge::{Action, Bridge, BridgeConfig, DropCounters, DropReason, PortSecurity};
use switch::fdb::FastMap;
use switch::gateway::{Gateway, GatewayConfig};
use switch::nat::{Nat, NatConfig, NatStats, Shard};
use switch::neighbor::Neighbors;
use switch::offload::{self, gso, Checksums, Gro, Offer, VnetHdr};
use switch::tap::Tap;
use switch::{MacAddr, NetworkId, PortId};

use super::quic::{DatagramArena, QuicHandle, QuicRx};

mod capture;
mod command;
mod egress;
mod error;
mod gateways;
mod handle;
mod handoff;
mod ingress;
mod nat_io;
mod policy;
mod stats;
#[cfg(test)]
#[allow(unsafe_code)]
mod tests;
mod tokens;
mod trace;
mod tunnel;
mod worker;

pub use capture::{CaptureTap, Captured, Direction};
pub use command::Command;
pub use error::DatapathError;
pub use handle::DatapathHandle;
use handoff::{Handoff, HandoffRx};
pub use policy::PolicyCounters;
use policy::{Gate, PolicyState};
pub use stats::{DatapathStats, PortCounters, TunnelCounters};
use tokens::*;
pub use trace::{Hop, Neighbor, PolicyHop, TraceProbe, TraceResult};
pub use tunnel::bind_tunnel;
use tunnel::Tunnel;

use nat_io::NatIo;
pub use nat_io::{bind_published, Published, PublishedProto, PublishedSocket};

/// Frames read from one port per wake-up before the others get a turn.
const BATCH: usize = 64;
/// How long a worker keeps polling after its last event before it sleeps
/// in the kernel, unless told otherwise (`vswitchd --busy-poll`).
pub const DEFAULT_BUSY_POLL: Duration = Duration::from_micros(50);
/// `[virtio_net_hdr | frame]` as a TAP with offloads hands it over: a
/// super-frame of up to 64 KiB of IP plus its Ethernet header.
const FRAME_BUF: usize = VnetHdr::LEN + 65_536 + 64;
/// The segments of one super-frame, each with room for a VXLAN header in
/// front: 64 KiB of payload plus up to 138 bytes of headers per segment
/// at the smallest segment size the datapath meets (an MSS of 500).
const SEG_BUF: usize = 256 << 10;
/// Largest UDP payload of one GSO send (IPv4: 65,535 - 20 - 8).
const MAX_GSO_PAYLOAD: usize = 65_507;
/// Receive buffers of the tunnel: each takes one datagram, or a run of
/// them coalesced by UDP GRO (at most 64 KiB).
const TUNNEL_RX_BUFS: usize = 8;
const TUNNEL_RX_BUF: usize = 65_536;

/// Room for an ARP or neighbour advertisement built by the switch.
const NEIGHBOR_REPLY_BUF: usize = 512;
/// Frames a worker may have in flight to each other worker.
const HANDOFF_BUFS: usize = 32;
/// Most datapath workers (TAP queues per port).
pub const MAX_WORKERS: usize = 8;
/// Receive and send buffer asked for the tunnel socket.
const TUNNEL_SOCKET_BUF: usize = 4 << 20;

struct TapPort {
    tap: Tap,
    /// Registered for reading (see [`Command::AddPort`]).
    read: bool,
    counters: PortCounters,
    /// In `ready` already.
    queued: bool,
    /// The capture watching this port, if one is ([`capture`]).
    capture: Option<Arc<CaptureTap>>,
}

/// A network's gateway port. The first worker holds the gateway itself
/// (ARP, ND, ICMP, DNS); every worker holds its shard of the network's NAT
/// ([`switch::nat::Shard`]): TCP connections are spread over the workers
/// by their tuple, everything else is the first worker's.
struct GatewayPort {
    /// None on the other workers: frames for the gateway are handed to the
    /// first one.
    gateway: Option<Gateway>,
    nat: Option<Nat>,
    upstream4: Option<UdpSocket>,
    upstream6: Option<UdpSocket>,
    counters: PortCounters,
}

/// A tunnel port. What it admits and where it sends are the tunnel rules'
/// ([`Datapath::rules`]); this is the socket address and the counters.
struct VtepPort {
    /// The VTEP's address as the kernel takes it, converted once.
    remote_sockaddr: SockaddrStorage,
    counters: PortCounters,
}

/// A super-frame being built from consecutive tunnel segments for one TAP.
struct GroRun {
    gro: Gro,
    port: Option<PortId>,
}

enum Slot {
    Tap(TapPort),
    Gateway(Box<GatewayPort>),
    Vtep(VtepPort),
}

/// Which buffer a frame being switched sits in; for a frame from a tunnel,
/// also whether the tunnel rules let its TCP segments be coalesced (a
/// member's).
#[derive(Clone, Copy)]
enum Src<'a> {
    /// The buffer TAP frames are read into.
    Buf,
    /// The buffer gateways and NATs emit into.
    Out,
    /// The tunnel's receive buffer of that index.
    Tunnel { buf: usize, coalesce: bool },
    /// Outside the datapath's buffers: a QUIC datagram, a frame another
    /// worker handed over to be switched here (`tries`: how many workers'
    /// flow tables it missed already, see `policy`).
    Slice {
        frame: &'a [u8],
        coalesce: bool,
        tries: u8,
    },
}

struct Datapath {
    poll: Poll,
    rx: mpsc::Receiver<Command>,
    bridge: Bridge,
    ports: FastMap<PortId, Slot>,
    /// Gateway port of each network.
    gateways: FastMap<NetworkId, PortId>,
    /// Ports with frames possibly left to read (edge-triggered polling).
    ready: VecDeque<PortId>,
    /// Gateways that were handed frames and may have output.
    dirty: Vec<PortId>,
    /// `[virtio_net_hdr | frame]` read from a TAP.
    buf: Box<[u8]>,
    /// Frames made by gateways and NATs.
    out: Box<[u8]>,
    /// Where ARP/ND answers for remote endpoints are built.
    reply: Box<[u8]>,
    /// Where super-frames are segmented.
    seg: Box<[u8]>,
    /// Where a frame routed into another network is rewritten.
    route_buf: Box<[u8]>,
    /// The policies, the flow table, their counters.
    policy: PolicyState,
    gro: GroRun,
    tunnel: Option<Tunnel>,
    /// The QUIC endpoint and its receive queue (encrypted overlays).
    quic: Option<QuicHandle>,
    quic_rx: Option<QuicRx>,
    /// The datagrams this worker sends through QUIC.
    arena: DatagramArena,
    /// The overlay's rules: VNIs, VTEPs, admission, split horizon.
    rules: TunnelRules<NetworkId, PortId>,
    neighbors: Neighbors,
    tunnel_counters: TunnelCounters,
    suppressed: u64,
    /// Host sockets of every network's NAT.
    nat_io: NatIo,
    /// NAT sockets that reported readiness this turn (token indexes).
    nat_ready: Vec<usize>,
    /// This worker's index, and so its shard of every NAT.
    index: usize,
    /// The way to each other worker (none at this worker's own index):
    /// frames for the first one's gateways, and for the NAT shard that
    /// owns a TCP connection.
    peers: Vec<Option<Handoff>>,
    /// What the other workers hand over.
    handed: Vec<HandoffRx>,
    /// Frames read from TAP queues.
    tap_rx: u64,
    /// The tunnel's last batch ended before its queue did.
    tunnel_more: bool,
    /// How long to keep polling after an event.
    busy_poll: Duration,
    running: bool,
}
