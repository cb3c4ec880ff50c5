//! The datapath thread: owns the [`Bridge`], every network's [`Gateway`]
//! and every TAP file descriptor, and moves frames between them.
//!
//! One thread, one `mio` poll, no locks: the control plane talks to it
//! through a channel and a waker. Each wake-up reads a bounded batch of
//! frames per port into one buffer allocated at start, asks the bridge what
//! to do with each, and writes them out; counters are kept locally and read
//! by the control plane through [`Command::Stats`].

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::{self, IoSlice, IoSliceMut};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mio::net::UdpSocket;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};
use nix::sys::socket::{sendmsg, MsgFlags, SockaddrStorage};
use overlay::vxlan::{self, Vni};
use quinn_udp::{RecvMeta, Transmit, UdpSockRef, UdpSocketState};
use switch::bridge::{Action, Bridge, BridgeConfig, DropReason, PortSecurity};
use switch::gateway::{Gateway, GatewayConfig};
use switch::nat::{Nat, NatConfig, NatStats};
use switch::neighbor::Neighbors;
use switch::offload::{self, Gro, Offer, VnetHdr};
use switch::tap::Tap;
use switch::{MacAddr, NetworkId, PortId};

use super::quic::{QuicHandle, QuicRx};

#[path = "nat_io.rs"]
mod nat_io;

pub use nat_io::{bind_published, Published, PublishedProto, PublishedSocket};
use nat_io::{NatIo, NAT_SOCK};

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
/// Frames a worker may have in flight to the first worker's gateways.
const HANDOFF_BUFS: usize = 32;
/// Most datapath workers (TAP queues per port).
pub const MAX_WORKERS: usize = 8;
/// Receive and send buffer asked for the tunnel socket.
const TUNNEL_SOCKET_BUF: usize = 4 << 20;

const WAKER: Token = Token(usize::MAX);
const TUNNEL: Token = Token(usize::MAX - 1);
/// QUIC datagrams waiting (encrypted overlays; see [`super::quic`]).
const QUIC: Token = Token(usize::MAX - 2);
const UPSTREAM_V4: usize = 1 << 40;
const UPSTREAM_V6: usize = 1 << 41;

/// What the control plane asks of the datapath.
pub enum Command {
    /// Adds a bridge domain and, for networks with a gateway, its gateway
    /// port.
    AddNetwork {
        network: NetworkId,
        gateway: Option<(PortId, GatewayConfig)>,
        /// The network's NAT (published ports, egress), next to its gateway.
        nat: Option<NatConfig>,
        reply: mpsc::Sender<Result<(), String>>,
    },
    /// Starts forwarding the published ports of endpoint `owner` (host
    /// sockets already bound) through `network`'s NAT.
    Publish {
        network: NetworkId,
        owner: PortId,
        published: Vec<Published>,
        reply: mpsc::Sender<Result<(), String>>,
    },
    /// Closes the published ports of endpoint `owner`.
    Unpublish {
        network: NetworkId,
        owner: PortId,
        reply: mpsc::Sender<()>,
    },
    /// Removes a network (its ports must be gone already).
    RemoveNetwork {
        network: NetworkId,
        reply: mpsc::Sender<()>,
    },
    /// Attaches a TAP as a port of a network.
    AddPort {
        port: PortId,
        network: NetworkId,
        /// This worker's queue of the TAP.
        tap: Tap,
        /// Read frames from it. False for a descriptor shared with another
        /// worker (a single-queue TAP): this worker only writes to it.
        read: bool,
        security: PortSecurity,
        reply: mpsc::Sender<Result<(), String>>,
    },
    /// On workers other than the first: frames for this gateway port are
    /// handed to the first worker, which owns the gateway and its NAT.
    AddHandoff {
        port: PortId,
        network: NetworkId,
        mac: MacAddr,
        reply: mpsc::Sender<Result<(), String>>,
    },
    /// Detaches a port and hands its TAP back (to be deleted or kept).
    RemovePort {
        port: PortId,
        reply: mpsc::Sender<Option<Tap>>,
    },
    /// Sets (or clears) the VNI of an overlay network.
    SetVni {
        network: NetworkId,
        vni: Option<Vni>,
    },
    /// Adds a tunnel port: the VTEP `remote` (another host, or a foreign
    /// VXLAN VTEP) as a port of `network`.
    AddVtep {
        port: PortId,
        network: NetworkId,
        remote: SocketAddr,
        /// A vswitch member rather than a static (kernel) VTEP.
        member: bool,
        /// An encrypted network's: frames go through QUIC, never UDP.
        quic: bool,
        reply: mpsc::Sender<Result<(), String>>,
    },
    /// Pins a remote endpoint's MAC to its VTEP port and answers ARP/ND for
    /// its addresses locally.
    AddRemote {
        network: NetworkId,
        port: PortId,
        mac: MacAddr,
        ips: Vec<IpAddr>,
    },
    /// Forgets a remote endpoint.
    RemoveRemote {
        network: NetworkId,
        mac: MacAddr,
        ips: Vec<IpAddr>,
    },
    /// Reads the counters.
    Stats { reply: mpsc::Sender<DatapathStats> },
    /// Ends the thread; TAPs are closed (persistent ones stay in their
    /// namespaces).
    Shutdown,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = match self {
            Command::AddNetwork { .. } => "AddNetwork",
            Command::RemoveNetwork { .. } => "RemoveNetwork",
            Command::Publish { .. } => "Publish",
            Command::Unpublish { .. } => "Unpublish",
            Command::AddPort { .. } => "AddPort",
            Command::RemovePort { .. } => "RemovePort",
            Command::SetVni { .. } => "SetVni",
            Command::AddVtep { .. } => "AddVtep",
            Command::AddHandoff { .. } => "AddHandoff",
            Command::AddRemote { .. } => "AddRemote",
            Command::RemoveRemote { .. } => "RemoveRemote",
            Command::Stats { .. } => "Stats",
            Command::Shutdown => "Shutdown",
        };
        f.write_str(name)
    }
}

/// Counters of one port.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PortCounters {
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
    pub tx_drops: u64,
    pub drops: u64,
}

/// Tunnel counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TunnelCounters {
    pub rx_packets: u64,
    pub tx_packets: u64,
    /// Not a VXLAN packet.
    pub malformed: u64,
    /// A VNI no overlay network here has.
    pub unknown_vni: u64,
    /// From an address that is not a member with endpoints on that
    /// network, nor an admitted VTEP.
    pub non_member: u64,
    /// Sends that failed.
    pub send_errors: u64,
    /// Plain VXLAN for an encrypted network: dropped.
    pub clear_on_encrypted: u64,
    /// A QUIC datagram for a network that is not encrypted: dropped.
    pub quic_on_plain: u64,
    /// QUIC datagrams from a member that is not a VTEP of that network,
    /// or for a VNI no network here has, or malformed.
    pub quic_rejected: u64,
}

impl TunnelCounters {
    /// Adds another worker's counters.
    fn add(&mut self, o: &TunnelCounters) {
        self.rx_packets += o.rx_packets;
        self.tx_packets += o.tx_packets;
        self.malformed += o.malformed;
        self.unknown_vni += o.unknown_vni;
        self.non_member += o.non_member;
        self.send_errors += o.send_errors;
        self.clear_on_encrypted += o.clear_on_encrypted;
        self.quic_on_plain += o.quic_on_plain;
        self.quic_rejected += o.quic_rejected;
    }
}

/// Everything [`Command::Stats`] returns.
#[derive(Debug, Clone, Default)]
pub struct DatapathStats {
    pub ports: HashMap<PortId, PortCounters>,
    pub drops: BTreeMap<String, u64>,
    pub tunnel: TunnelCounters,
    /// ARP/ND requests answered locally.
    pub suppressed: u64,
    /// NAT counters of each network.
    pub nat: HashMap<NetworkId, NatStats>,
    /// Frames each worker read from its TAP queues.
    pub worker_rx_packets: Vec<u64>,
}

/// One datapath thread's command queue.
#[derive(Debug)]
struct Worker {
    tx: mpsc::Sender<Command>,
    waker: Arc<Waker>,
    thread: Option<JoinHandle<()>>,
}

impl Worker {
    fn send(&self, cmd: Command) -> Result<(), String> {
        self.tx
            .send(cmd)
            .map_err(|_| "the datapath thread has stopped".to_string())?;
        self.waker
            .wake()
            .map_err(|e| format!("waking the datapath: {e}"))
    }

    fn ask<T>(&self, make: impl FnOnce(mpsc::Sender<T>) -> Command) -> Result<T, String> {
        let (reply, rx) = mpsc::channel();
        self.send(make(reply))?;
        rx.recv_timeout(Duration::from_secs(10))
            .map_err(|_| "the datapath did not answer".to_string())
    }
}

/// The control plane's end of the datapath workers.
///
/// Every worker is a thread with its own poller, its own copy of the
/// switching tables (kept equal by sending each the same commands), and
/// its own queue of every TAP (`IFF_MULTI_QUEUE`): the kernel spreads a
/// container's flows over the queues, so each worker switches the flows of
/// its queue, TAP to TAP and TAP to tunnel, without sharing anything on
/// the way. The first worker also owns what has state of its own: the
/// gateways and NATs (the others hand frames for them over through a
/// bounded queue of preallocated buffers), the tunnel's receive side and
/// the QUIC receive queue.
#[derive(Debug)]
pub struct DatapathHandle {
    workers: Vec<Worker>,
}

impl DatapathHandle {
    /// Starts `workers` datapath threads (at least one, at most
    /// [`MAX_WORKERS`]).
    /// `tunnel`: the bound UDP socket of the VXLAN tunnel, for overlays;
    /// `quic`: the QUIC endpoint of encrypted overlays.
    pub fn start(
        config: BridgeConfig,
        tunnel: Option<std::net::UdpSocket>,
        quic: Option<QuicHandle>,
        workers: usize,
        busy_poll: Duration,
    ) -> io::Result<DatapathHandle> {
        let count = workers.clamp(1, MAX_WORKERS);
        let polls = (0..count)
            .map(|_| Poll::new())
            .collect::<io::Result<Vec<_>>>()?;
        let wakers = polls
            .iter()
            .map(|p| Waker::new(p.registry(), WAKER).map(Arc::new))
            .collect::<io::Result<Vec<_>>>()?;
        if let Some(sock) = &tunnel {
            sock.set_nonblocking(true)?;
            // Bursts of a TCP window arrive faster than one wake-up
            // drains them: the default 208 KiB overflowed (17 % of
            // datagrams lost in netbench). The kernel caps these at
            // net.core.{r,w}mem_max.
            use nix::sys::socket::{setsockopt, sockopt};
            let _ = setsockopt(sock, sockopt::RcvBuf, &TUNNEL_SOCKET_BUF);
            let _ = setsockopt(sock, sockopt::SndBuf, &TUNNEL_SOCKET_BUF);
        }
        // Every other worker's way to the first one's gateways.
        let (handoffs, handed): (Vec<_>, Vec<_>) =
            (1..count).map(|_| handoff_pair(wakers[0].clone())).unzip();
        let mut handoffs = handoffs.into_iter();
        let mut handed = Some(handed);
        let mut list = Vec::with_capacity(count);
        for (k, (poll, waker)) in polls.into_iter().zip(wakers).enumerate() {
            // The first worker reads the tunnel; the others send on a
            // descriptor of the same socket.
            let tunnel = match &tunnel {
                Some(sock) if k == 0 => {
                    let mut sock = UdpSocket::from_std(sock.try_clone()?);
                    poll.registry()
                        .register(&mut sock, TUNNEL, Interest::READABLE)?;
                    Some(Tunnel::new(sock)?)
                }
                Some(sock) => Some(Tunnel::new(UdpSocket::from_std(sock.try_clone()?))?),
                None => None,
            };
            let quic_rx = match &quic {
                Some(q) if k == 0 => Some(q.register(poll.registry(), QUIC)?),
                _ => None,
            };
            let (tx, rx) = mpsc::channel();
            let mut dp = Datapath::new(poll, rx, config, tunnel);
            dp.quic = quic.clone();
            dp.quic_rx = quic_rx;
            dp.busy_poll = busy_poll;
            if k == 0 {
                dp.handed = handed.take().unwrap_or_default();
            } else {
                dp.handoff = handoffs.next();
            }
            let thread = std::thread::Builder::new()
                .name(format!("vswitch-dp{k}"))
                .spawn(move || {
                    if let Err(e) = dp.run() {
                        tracing::error!(error = %e, "datapath stopped");
                    }
                })?;
            list.push(Worker {
                tx,
                waker,
                thread: Some(thread),
            });
        }
        Ok(DatapathHandle { workers: list })
    }

    /// How many workers, and so how many queues each TAP should have.
    pub fn queues(&self) -> usize {
        self.workers.len()
    }

    fn first(&self) -> &Worker {
        &self.workers[0]
    }

    /// Sends every worker its command and waits for all the answers.
    fn ask_all<T>(
        &self,
        mut make: impl FnMut(usize, mpsc::Sender<T>) -> Command,
    ) -> Result<Vec<T>, String> {
        let mut answers = Vec::with_capacity(self.workers.len());
        for (k, w) in self.workers.iter().enumerate() {
            let (reply, rx) = mpsc::channel();
            w.send(make(k, reply))?;
            answers.push(rx);
        }
        answers
            .into_iter()
            .map(|rx| {
                rx.recv_timeout(Duration::from_secs(10))
                    .map_err(|_| "the datapath did not answer".to_string())
            })
            .collect()
    }

    /// The first error of answers that are results.
    fn all_ok(answers: Vec<Result<(), String>>) -> Result<(), String> {
        answers.into_iter().collect()
    }

    fn send_all(&self, mut make: impl FnMut() -> Command) -> Result<(), String> {
        for w in &self.workers {
            w.send(make())?;
        }
        Ok(())
    }

    pub fn add_network(
        &self,
        network: NetworkId,
        gateway: Option<(PortId, GatewayConfig)>,
        nat: Option<NatConfig>,
    ) -> Result<(), String> {
        let handoff = gateway.as_ref().map(|(port, c)| (*port, c.mac));
        let mut gateway = gateway;
        let mut nat = nat;
        Self::all_ok(self.ask_all(|k, reply| Command::AddNetwork {
            network,
            gateway: if k == 0 { gateway.take() } else { None },
            nat: if k == 0 { nat.take() } else { None },
            reply,
        })?)?;
        if let Some((port, mac)) = handoff {
            for w in &self.workers[1..] {
                w.ask(|reply| Command::AddHandoff {
                    port,
                    network,
                    mac,
                    reply,
                })??;
            }
        }
        Ok(())
    }

    pub fn publish(
        &self,
        network: NetworkId,
        owner: PortId,
        published: Vec<Published>,
    ) -> Result<(), String> {
        self.first().ask(|reply| Command::Publish {
            network,
            owner,
            published,
            reply,
        })?
    }

    pub fn unpublish(&self, network: NetworkId, owner: PortId) -> Result<(), String> {
        self.first().ask(|reply| Command::Unpublish {
            network,
            owner,
            reply,
        })
    }

    pub fn remove_network(&self, network: NetworkId) -> Result<(), String> {
        self.ask_all(|_, reply| Command::RemoveNetwork { network, reply })
            .map(|_| ())
    }

    /// Attaches a TAP given as its queues (the first is kept when the port
    /// is removed). Each worker takes one queue; with fewer queues than
    /// workers (a TAP made single-queue by an older version), the others
    /// share the first queue's descriptor to write only.
    pub fn add_port(
        &self,
        port: PortId,
        network: NetworkId,
        queues: Vec<Tap>,
        security: PortSecurity,
    ) -> Result<(), String> {
        let workers = self.workers.len();
        let mut queues = queues.into_iter();
        let first = queues
            .next()
            .ok_or_else(|| "a port needs at least one TAP queue".to_string())?;
        // Workers without a queue of their own (a TAP left single-queue by
        // an older version) write through a copy of the first descriptor
        // and leave the reading to the first worker.
        let mut shared = Vec::new();
        for _ in 1 + queues.len()..workers {
            let t = first
                .try_clone()
                .map_err(|e| format!("sharing a TAP queue: {e}"))?;
            shared.push((t, false));
        }
        let taps: Vec<(Tap, bool)> = std::iter::once((first, true))
            .chain(queues.map(|t| (t, true)))
            .take(workers)
            .chain(shared)
            .collect();
        let mut taps = taps.into_iter();
        let answers = self.ask_all(|_, reply| {
            let (tap, read) = taps.next().expect("one per worker");
            Command::AddPort {
                port,
                network,
                tap,
                read,
                security: security.clone(),
                reply,
            }
        })?;
        if let Err(e) = Self::all_ok(answers) {
            let _ = self.remove_port(port);
            return Err(e);
        }
        Ok(())
    }

    /// Detaches a port from every worker; returns the first queue (the
    /// others are closed).
    pub fn remove_port(&self, port: PortId) -> Result<Option<Tap>, String> {
        let mut taps = self.ask_all(|_, reply| Command::RemovePort { port, reply })?;
        Ok(taps.swap_remove(0))
    }

    pub fn set_vni(&self, network: NetworkId, vni: Option<Vni>) -> Result<(), String> {
        self.send_all(|| Command::SetVni { network, vni })
    }

    /// A tunnel port toward a static VTEP (`vswitch network vtep add`,
    /// typically a kernel vxlan device).
    pub fn add_vtep(
        &self,
        port: PortId,
        network: NetworkId,
        remote: SocketAddr,
    ) -> Result<(), String> {
        Self::all_ok(self.ask_all(|_, reply| Command::AddVtep {
            port,
            network,
            remote,
            member: false,
            quic: false,
            reply,
        })?)
    }

    /// A tunnel port toward another vswitch host of the cluster; `quic`
    /// for an encrypted network (`remote` is then the member's tunnel
    /// address, by which the QUIC endpoint knows it).
    pub fn add_member_vtep(
        &self,
        port: PortId,
        network: NetworkId,
        remote: SocketAddr,
        quic: bool,
    ) -> Result<(), String> {
        Self::all_ok(self.ask_all(|_, reply| Command::AddVtep {
            port,
            network,
            remote,
            member: true,
            quic,
            reply,
        })?)
    }

    pub fn add_remote(
        &self,
        network: NetworkId,
        port: PortId,
        mac: MacAddr,
        ips: Vec<IpAddr>,
    ) -> Result<(), String> {
        self.send_all(|| Command::AddRemote {
            network,
            port,
            mac,
            ips: ips.clone(),
        })
    }

    pub fn remove_remote(
        &self,
        network: NetworkId,
        mac: MacAddr,
        ips: Vec<IpAddr>,
    ) -> Result<(), String> {
        self.send_all(|| Command::RemoveRemote {
            network,
            mac,
            ips: ips.clone(),
        })
    }

    /// Every worker's counters, added up.
    pub fn stats(&self) -> Result<DatapathStats, String> {
        let all = self.ask_all(|_, reply| Command::Stats { reply })?;
        let mut all = all.into_iter();
        let mut total = all.next().unwrap_or_default();
        for s in all {
            total.worker_rx_packets.extend(s.worker_rx_packets);
            for (port, c) in s.ports {
                let t = total.ports.entry(port).or_default();
                t.rx_packets += c.rx_packets;
                t.rx_bytes += c.rx_bytes;
                t.tx_packets += c.tx_packets;
                t.tx_bytes += c.tx_bytes;
                t.tx_drops += c.tx_drops;
                t.drops += c.drops;
            }
            for (reason, n) in s.drops {
                *total.drops.entry(reason).or_default() += n;
            }
            total.tunnel.add(&s.tunnel);
            total.suppressed += s.suppressed;
        }
        Ok(total)
    }

    /// Stops the threads and waits for them.
    pub fn shutdown(&mut self) {
        for w in &self.workers {
            let _ = w.send(Command::Shutdown);
        }
        for w in &mut self.workers {
            if let Some(t) = w.thread.take() {
                let _ = t.join();
            }
        }
    }
}

impl Drop for DatapathHandle {
    fn drop(&mut self) {
        self.shutdown();
    }
}

struct TapPort {
    tap: Tap,
    /// Registered for reading (see [`Command::AddPort`]).
    read: bool,
    counters: PortCounters,
    /// In `ready` already.
    queued: bool,
}

struct GatewayPort {
    gateway: Gateway,
    nat: Option<Nat>,
    upstream4: Option<UdpSocket>,
    upstream6: Option<UdpSocket>,
    counters: PortCounters,
}

struct VtepPort {
    remote: SocketAddr,
    /// `remote` as the kernel takes it, converted once.
    remote_sockaddr: SockaddrStorage,
    network: NetworkId,
    /// A vswitch member: its datagrams carry UDP checksums, so the inner
    /// TCP segments it sends are coalesced without checking theirs. A
    /// static VTEP (a kernel vxlan device, whose UDP checksum may be
    /// zero) gets its frames delivered one by one, as sent.
    coalesce: bool,
    /// An encrypted network's: frames go through QUIC only, and plain
    /// VXLAN from this member is dropped.
    quic: bool,
    counters: PortCounters,
}

/// The VXLAN tunnel socket with its GSO/GRO state (quinn-udp) and its
/// receive buffers, allocated once.
struct Tunnel {
    sock: UdpSocket,
    state: UdpSocketState,
    rx: Vec<Box<[u8]>>,
    meta: Vec<RecvMeta>,
}

impl Tunnel {
    fn new(sock: UdpSocket) -> io::Result<Tunnel> {
        // Turns UDP GRO on where the kernel has it.
        let state = UdpSocketState::new(UdpSockRef::from(&sock))?;
        let count = TUNNEL_RX_BUFS.min(quinn_udp::BATCH_SIZE);
        Ok(Tunnel {
            sock,
            state,
            rx: (0..count)
                .map(|_| vec![0u8; TUNNEL_RX_BUF].into_boxed_slice())
                .collect(),
            meta: vec![RecvMeta::default(); count],
        })
    }
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
    /// A gateway owned by the first worker (see [`Handoff`]).
    Handoff(PortCounters),
}

/// A frame handed from a worker to the first one: `[virtio_net_hdr |
/// frame]` in a buffer of the sender's pool, bound for `port`.
struct Handed {
    port: PortId,
    buf: Box<[u8]>,
    len: usize,
}

/// A worker's way to the first worker, for frames bound for gateways:
/// a bounded queue, a pool of buffers allocated once (the first worker
/// sends them back), and the first worker's waker.
struct Handoff {
    tx: mpsc::SyncSender<Handed>,
    free: mpsc::Receiver<Box<[u8]>>,
    waker: Arc<Waker>,
    /// Frames were queued since the first worker was last woken: it is
    /// woken once per turn, not once per frame.
    queued: std::cell::Cell<bool>,
}

/// The first worker's end of one other worker's [`Handoff`].
struct HandoffRx {
    rx: mpsc::Receiver<Handed>,
    free: mpsc::SyncSender<Box<[u8]>>,
}

fn handoff_pair(waker: Arc<Waker>) -> (Handoff, HandoffRx) {
    let (tx, rx) = mpsc::sync_channel(HANDOFF_BUFS);
    let (free_tx, free_rx) = mpsc::sync_channel(HANDOFF_BUFS);
    for _ in 0..HANDOFF_BUFS {
        let _ = free_tx.try_send(vec![0u8; FRAME_BUF].into_boxed_slice());
    }
    (
        Handoff {
            tx,
            free: free_rx,
            waker,
            queued: std::cell::Cell::new(false),
        },
        HandoffRx { rx, free: free_tx },
    )
}

impl Handoff {
    /// Copies `[hdr | frame]` into a free buffer and queues it for the
    /// first worker. False when no buffer is free (the first worker is
    /// behind): the frame is dropped.
    fn hand(&self, port: PortId, hdr: &VnetHdr, frame: &[u8]) -> bool {
        let Ok(mut buf) = self.free.try_recv() else {
            return false;
        };
        let len = VnetHdr::LEN + frame.len();
        if len > buf.len() {
            return false;
        }
        hdr.write(&mut buf[..VnetHdr::LEN]);
        buf[VnetHdr::LEN..len].copy_from_slice(frame);
        // The queue holds as many entries as there are buffers: never full.
        if self.tx.try_send(Handed { port, buf, len }).is_err() {
            return false;
        }
        self.queued.set(true);
        true
    }

    /// Wakes the first worker if frames were queued since the last call.
    fn flush(&self) {
        if self.queued.replace(false) {
            let _ = self.waker.wake();
        }
    }
}

/// Which buffer a frame being switched sits in.
#[derive(Clone, Copy)]
enum Src<'a> {
    /// A frame outside the datapath's buffers (a QUIC datagram).
    Slice(&'a [u8]),
    Buf,
    Out,
    /// The tunnel's receive buffer of that index.
    Tunnel(usize),
}

struct Datapath {
    poll: Poll,
    rx: mpsc::Receiver<Command>,
    bridge: Bridge,
    ports: HashMap<PortId, Slot>,
    /// Gateway port of each network.
    gateways: HashMap<NetworkId, PortId>,
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
    gro: GroRun,
    tunnel: Option<Tunnel>,
    /// The QUIC endpoint and its receive queue (encrypted overlays).
    quic: Option<QuicHandle>,
    quic_rx: Option<QuicRx>,
    vni_of: HashMap<NetworkId, Vni>,
    network_of_vni: HashMap<Vni, NetworkId>,
    /// (network, remote IP) -> VTEP port.
    vteps: HashMap<(NetworkId, IpAddr), PortId>,
    neighbors: Neighbors,
    tunnel_counters: TunnelCounters,
    suppressed: u64,
    /// Host sockets of every network's NAT.
    nat_io: NatIo,
    /// NAT sockets that reported readiness this turn (token indexes).
    nat_ready: Vec<usize>,
    /// Workers other than the first: the way to the gateways.
    handoff: Option<Handoff>,
    /// The first worker: frames the others hand over.
    handed: Vec<HandoffRx>,
    /// Frames read from TAP queues.
    tap_rx: u64,
    /// The tunnel's last batch ended before its queue did.
    tunnel_more: bool,
    /// How long to keep polling after an event.
    busy_poll: Duration,
    running: bool,
}

fn upstream_token(network: NetworkId, v6: bool) -> Token {
    Token(if v6 { UPSTREAM_V6 } else { UPSTREAM_V4 } | network.0 as usize)
}

fn bind_upstream(registry: &mio::Registry, network: NetworkId, v6: bool) -> io::Result<UdpSocket> {
    let addr: SocketAddr = if v6 {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    };
    let mut sock = UdpSocket::bind(addr)?;
    registry.register(&mut sock, upstream_token(network, v6), Interest::READABLE)?;
    Ok(sock)
}

impl Datapath {
    fn new(
        poll: Poll,
        rx: mpsc::Receiver<Command>,
        config: BridgeConfig,
        tunnel: Option<Tunnel>,
    ) -> Datapath {
        Datapath {
            poll,
            rx,
            bridge: Bridge::new(config),
            ports: HashMap::new(),
            gateways: HashMap::new(),
            ready: VecDeque::new(),
            dirty: Vec::new(),
            buf: vec![0u8; FRAME_BUF].into_boxed_slice(),
            out: vec![0u8; FRAME_BUF].into_boxed_slice(),
            reply: vec![0u8; NEIGHBOR_REPLY_BUF].into_boxed_slice(),
            seg: vec![0u8; SEG_BUF].into_boxed_slice(),
            gro: GroRun {
                gro: Gro::new(false),
                port: None,
            },
            tunnel,
            quic: None,
            quic_rx: None,
            vni_of: HashMap::new(),
            network_of_vni: HashMap::new(),
            vteps: HashMap::new(),
            neighbors: Neighbors::new(),
            tunnel_counters: TunnelCounters::default(),
            suppressed: 0,
            nat_io: NatIo::new(),
            nat_ready: Vec::new(),
            handoff: None,
            handed: Vec::new(),
            tap_rx: 0,
            tunnel_more: false,
            busy_poll: DEFAULT_BUSY_POLL,
            running: true,
        }
    }

    fn run(&mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(256);
        // Until then the thread polls without sleeping: the answer to a
        // frame just forwarded usually comes within tens of microseconds,
        // and waking a sleeping thread costs about as much again.
        let mut spin_until = Instant::now();
        while self.running {
            self.turn(&mut events, &mut spin_until)?;
        }
        Ok(())
    }

    /// One wake-up: waits for events (or not, while busy or spinning),
    /// then services every source that has work.
    fn turn(&mut self, events: &mut Events, spin_until: &mut Instant) -> io::Result<()> {
        let now = Instant::now();
        let busy = !self.ready.is_empty()
            || !self.dirty.is_empty()
            || self.nat_io.has_retry()
            || self.tunnel_more;
        let timeout = if busy || now < *spin_until {
            Duration::ZERO
        } else {
            self.next_deadline(now)
                .map(|d| d.saturating_duration_since(now))
                .unwrap_or(Duration::from_secs(1))
                .min(Duration::from_secs(1))
        };
        match self.poll.poll(events, Some(timeout)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(()),
            Err(e) => return Err(e),
        }
        let now = Instant::now();
        if !events.is_empty() {
            *spin_until = now + self.busy_poll;
        }
        // The tunnel is read once per turn: on its event, or because the
        // last turn's batch ended before its queue did (edge-triggered: no
        // new event comes for datagrams already queued).
        let mut tunnel_ready = std::mem::take(&mut self.tunnel_more);
        for ev in events.iter() {
            let t = ev.token();
            if t == WAKER {
                continue;
            } else if t == TUNNEL {
                tunnel_ready = true;
            } else if t == QUIC {
                self.read_quic(now);
            } else if t.0 & NAT_SOCK != 0 {
                self.nat_ready.push(t.0 & (NAT_SOCK - 1));
            } else if t.0 & (UPSTREAM_V4 | UPSTREAM_V6) != 0 {
                let network = NetworkId((t.0 & 0xffff_ffff) as u32);
                self.read_upstream(network, t.0 & UPSTREAM_V6 != 0, now);
            } else {
                let port = PortId(t.0 as u32);
                self.mark_ready(port);
            }
        }
        if tunnel_ready {
            self.read_tunnel(now);
        }
        self.drain_commands();
        self.drain_handed(now);
        self.service_nat_sockets(now);
        self.service_ready(now);
        self.service_gateways(now);
        self.bridge.handle_timeout(now);
        if let Some(h) = &self.handoff {
            h.flush();
        }
        Ok(())
    }

    fn next_deadline(&mut self, now: Instant) -> Option<Instant> {
        let mut next = self.bridge.poll_timeout();
        for slot in self.ports.values_mut() {
            if let Slot::Gateway(g) = slot {
                if let Some(t) = g.gateway.poll_timeout(now) {
                    next = Some(next.map_or(t, |n| n.min(t)));
                }
                if let Some(t) = g.nat.as_mut().and_then(|n| n.poll_timeout(now)) {
                    next = Some(next.map_or(t, |n| n.min(t)));
                }
            }
        }
        next
    }

    /// Delivers the frames other workers handed over (at most one pool's
    /// worth each, which is all they can have in flight) and gives their
    /// buffers back.
    fn drain_handed(&mut self, now: Instant) {
        for i in 0..self.handed.len() {
            for _ in 0..HANDOFF_BUFS {
                let Ok(h) = self.handed[i].rx.try_recv() else {
                    break;
                };
                if let Ok(hdr) = VnetHdr::parse(&h.buf[..h.len]) {
                    self.deliver_handed(h.port, &hdr, &h.buf[VnetHdr::LEN..h.len], now);
                }
                let _ = self.handed[i].free.try_send(h.buf);
            }
        }
    }

    /// Delivers a frame another worker switched to `to` (a gateway here).
    fn deliver_handed(&mut self, to: PortId, hdr: &VnetHdr, frame: &[u8], now: Instant) {
        let Datapath {
            ports,
            dirty,
            seg,
            gro,
            tunnel,
            quic,
            tunnel_counters,
            vni_of,
            handoff,
            ..
        } = self;
        Egress {
            ports,
            dirty,
            seg,
            gro,
            tunnel: tunnel.as_ref(),
            quic: quic.as_ref(),
            tunnel_counters,
            vni_of,
            handoff: handoff.as_ref(),
            from: Ingress::Local,
            coalesce: false,
            now,
        }
        .deliver(to, hdr, frame);
    }

    fn drain_commands(&mut self) {
        while let Ok(cmd) = self.rx.try_recv() {
            self.handle_command(cmd);
        }
    }

    fn handle_command(&mut self, cmd: Command) {
        match cmd {
            Command::AddNetwork {
                network,
                gateway,
                nat,
                reply,
            } => {
                let r = self.add_network(network, gateway, nat);
                let _ = reply.send(r);
            }
            Command::Publish {
                network,
                owner,
                published,
                reply,
            } => {
                let r = if self.nat_mut(network).is_some() {
                    self.nat_io
                        .add_published(self.poll.registry(), network, owner, published)
                        .map_err(|e| format!("registering published ports: {e}"))
                } else {
                    Err("the network has no NAT to publish ports through".to_string())
                };
                let _ = reply.send(r);
            }
            Command::Unpublish {
                network,
                owner,
                reply,
            } => {
                let registry = self.poll.registry();
                let nat = self
                    .gateways
                    .get(&network)
                    .and_then(|p| self.ports.get_mut(p))
                    .and_then(|s| match s {
                        Slot::Gateway(g) => g.nat.as_mut(),
                        _ => None,
                    });
                self.nat_io.remove_published(registry, owner, nat);
                let _ = reply.send(());
            }
            Command::RemoveNetwork { network, reply } => {
                self.nat_io.remove_network(self.poll.registry(), network);
                for port in self.bridge.remove_network(network) {
                    self.remove_port(port);
                }
                self.neighbors.remove_network(network);
                if let Some(vni) = self.vni_of.remove(&network) {
                    self.network_of_vni.remove(&vni);
                }
                if let Some(gw) = self.gateways.remove(&network) {
                    self.remove_port(gw);
                }
                let _ = reply.send(());
            }
            Command::AddPort {
                port,
                network,
                tap,
                read,
                security,
                reply,
            } => {
                let r = self.add_port(port, network, tap, read, security);
                let _ = reply.send(r);
            }
            Command::AddHandoff {
                port,
                network,
                mac,
                reply,
            } => {
                let r = self
                    .bridge
                    .add_port(port, network, None)
                    .and_then(|()| self.bridge.set_static_mac(network, mac, port))
                    .map_err(|e| e.to_string());
                if r.is_ok() {
                    self.ports
                        .insert(port, Slot::Handoff(PortCounters::default()));
                }
                let _ = reply.send(r);
            }
            Command::RemovePort { port, reply } => {
                self.bridge.remove_port(port);
                let tap = match self.remove_port(port) {
                    Some(Slot::Tap(t)) => Some(t.tap),
                    _ => None,
                };
                let _ = reply.send(tap);
            }
            Command::SetVni { network, vni } => {
                if let Some(old) = self.vni_of.remove(&network) {
                    self.network_of_vni.remove(&old);
                }
                if let Some(vni) = vni {
                    self.vni_of.insert(network, vni);
                    self.network_of_vni.insert(vni, network);
                }
            }
            Command::AddVtep {
                port,
                network,
                remote,
                member,
                quic,
                reply,
            } => {
                let r = self
                    .bridge
                    .add_port(port, network, None)
                    .map_err(|e| e.to_string());
                if r.is_ok() {
                    self.vteps.insert((network, remote.ip()), port);
                    self.ports.insert(
                        port,
                        Slot::Vtep(VtepPort {
                            remote,
                            remote_sockaddr: SockaddrStorage::from(remote),
                            network,
                            coalesce: member,
                            quic,
                            counters: PortCounters::default(),
                        }),
                    );
                }
                let _ = reply.send(r);
            }
            Command::AddRemote {
                network,
                port,
                mac,
                ips,
            } => {
                if let Err(e) = self.bridge.set_static_mac(network, mac, port) {
                    tracing::debug!(%mac, error = %e, "remote MAC not pinned");
                }
                for ip in ips {
                    self.neighbors.insert(network, ip, mac);
                }
            }
            Command::RemoveRemote { network, mac, ips } => {
                self.bridge.remove_mac(network, mac);
                for ip in ips {
                    if self.neighbors.get(network, ip) == Some(mac) {
                        self.neighbors.remove(network, ip);
                    }
                }
            }
            Command::Stats { reply } => {
                let _ = reply.send(self.stats());
            }
            Command::Shutdown => self.running = false,
        }
    }

    fn add_network(
        &mut self,
        network: NetworkId,
        gateway: Option<(PortId, GatewayConfig)>,
        nat: Option<NatConfig>,
    ) -> Result<(), String> {
        self.bridge
            .add_network(network)
            .map_err(|e| e.to_string())?;
        if let Some((port, config)) = gateway {
            let needs_v4 = config.upstreams.iter().any(|u| u.is_ipv4());
            let needs_v6 = config.upstreams.iter().any(|u| u.is_ipv6());
            let mac = config.mac;
            let registry = self.poll.registry();
            let upstream4 = if needs_v4 {
                Some(bind_upstream(registry, network, false).map_err(|e| e.to_string())?)
            } else {
                None
            };
            let upstream6 = if needs_v6 {
                match bind_upstream(registry, network, true) {
                    Ok(s) => Some(s),
                    Err(e) => {
                        tracing::warn!(error = %e, "no IPv6 socket for upstream DNS");
                        None
                    }
                }
            } else {
                None
            };
            let gateway = Gateway::new(config, Instant::now()).map_err(|e| e.to_string())?;
            let nat = match nat {
                Some(c) => Some(Nat::new(c, Instant::now()).map_err(|e| e.to_string())?),
                None => None,
            };
            self.bridge
                .add_port(port, network, None)
                .map_err(|e| e.to_string())?;
            self.bridge
                .set_static_mac(network, mac, port)
                .map_err(|e| e.to_string())?;
            self.ports.insert(
                port,
                Slot::Gateway(Box::new(GatewayPort {
                    gateway,
                    nat,
                    upstream4,
                    upstream6,
                    counters: PortCounters::default(),
                })),
            );
            self.gateways.insert(network, port);
        }
        Ok(())
    }

    fn add_port(
        &mut self,
        port: PortId,
        network: NetworkId,
        tap: Tap,
        read: bool,
        security: PortSecurity,
    ) -> Result<(), String> {
        if !tap.vnet_hdr() {
            return Err(format!(
                "TAP {} has no virtio_net_hdr (IFF_VNET_HDR); the datapath needs one",
                tap.name()
            ));
        }
        let mac = security.mac;
        self.bridge
            .add_port(port, network, Some(security))
            .map_err(|e| e.to_string())?;
        if let Err(e) = self.bridge.set_static_mac(network, mac, port) {
            self.bridge.remove_port(port);
            return Err(e.to_string());
        }
        let fd = tap.as_raw_fd();
        if read {
            if let Err(e) = self.poll.registry().register(
                &mut SourceFd(&fd),
                Token(port.0 as usize),
                Interest::READABLE,
            ) {
                self.bridge.remove_port(port);
                return Err(format!("registering TAP {}: {e}", tap.name()));
            }
        }
        self.ports.insert(
            port,
            Slot::Tap(TapPort {
                tap,
                read,
                counters: PortCounters::default(),
                queued: false,
            }),
        );
        // Frames may have queued before registration.
        self.mark_ready(port);
        Ok(())
    }

    fn remove_port(&mut self, port: PortId) -> Option<Slot> {
        let mut slot = self.ports.remove(&port)?;
        match &mut slot {
            Slot::Tap(t) => {
                if t.read {
                    let fd = t.tap.as_raw_fd();
                    let _ = self.poll.registry().deregister(&mut SourceFd(&fd));
                }
            }
            Slot::Handoff(_) => {}
            Slot::Gateway(g) => {
                for s in [&mut g.upstream4, &mut g.upstream6].into_iter().flatten() {
                    let _ = self.poll.registry().deregister(s);
                }
            }
            Slot::Vtep(v) => {
                self.vteps.remove(&(v.network, v.remote.ip()));
            }
        }
        self.ready.retain(|p| *p != port);
        self.dirty.retain(|p| *p != port);
        Some(slot)
    }

    fn stats(&self) -> DatapathStats {
        let mut ports = HashMap::new();
        for (id, slot) in &self.ports {
            let mut c = match slot {
                Slot::Tap(t) => t.counters,
                Slot::Gateway(g) => g.counters,
                Slot::Vtep(v) => v.counters,
                Slot::Handoff(c) => *c,
            };
            c.drops = self.bridge.port_drops(*id);
            ports.insert(*id, c);
        }
        DatapathStats {
            ports,
            drops: self
                .bridge
                .drops()
                .iter()
                .map(|(r, n)| (r.as_str().to_string(), n))
                .collect(),
            tunnel: self.tunnel_counters,
            suppressed: self.suppressed,
            nat: self
                .gateways
                .iter()
                .filter_map(|(n, p)| match self.ports.get(p) {
                    Some(Slot::Gateway(g)) => Some((*n, g.nat.as_ref()?.stats())),
                    _ => None,
                })
                .collect(),
            worker_rx_packets: vec![self.tap_rx],
        }
    }

    /// Reads a bounded batch from each ready port.
    fn service_ready(&mut self, now: Instant) {
        let rounds = self.ready.len();
        for _ in 0..rounds {
            let Some(port) = self.ready.pop_front() else {
                break;
            };
            if let Some(Slot::Tap(t)) = self.ports.get_mut(&port) {
                t.queued = false;
            }
            // Counted here, flushed to the port once per batch.
            let (mut frames, mut bytes) = (0u64, 0u64);
            while frames < BATCH as u64 {
                let n = match self.ports.get(&port) {
                    Some(Slot::Tap(t)) => match t.tap.read(&mut self.buf) {
                        Ok(n) => n,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(e) => {
                            tracing::debug!(port = port.0, error = %e, "TAP read failed");
                            break;
                        }
                    },
                    _ => break,
                };
                frames += 1;
                bytes += n as u64;
                let hdr = match VnetHdr::parse(&self.buf[..n]) {
                    Ok(h) if n >= VnetHdr::LEN + 14 => h,
                    _ => {
                        self.bridge.count_drop(port, DropReason::Malformed);
                        continue;
                    }
                };
                self.switch_frame(port, Src::Buf, VnetHdr::LEN, n - VnetHdr::LEN, &hdr, now);
            }
            self.tap_rx += frames;
            if let Some(Slot::Tap(t)) = self.ports.get_mut(&port) {
                t.counters.rx_packets += frames;
                t.counters.rx_bytes += bytes;
                // The batch ended before the queue did: another turn, after
                // the other ports had theirs.
                if frames == BATCH as u64 {
                    self.mark_ready(port);
                }
            }
        }
    }

    /// Queues `port` for reading, once.
    fn mark_ready(&mut self, port: PortId) {
        if let Some(Slot::Tap(t)) = self.ports.get_mut(&port) {
            if !t.queued {
                t.queued = true;
                self.ready.push_back(port);
            }
        }
    }

    /// Decides and delivers the frame at `start..start + len` of the `src`
    /// buffer, which arrived on `ingress`.
    fn switch_frame(
        &mut self,
        ingress: PortId,
        src: Src<'_>,
        start: usize,
        len: usize,
        hdr: &VnetHdr,
        now: Instant,
    ) {
        let Datapath {
            bridge,
            ports,
            dirty,
            buf,
            out,
            reply,
            seg,
            gro,
            tunnel,
            quic,
            neighbors,
            tunnel_counters,
            suppressed,
            vni_of,
            handoff,
            ..
        } = self;
        let frame = match src {
            Src::Slice(s) => &s[start..start + len],
            Src::Buf => &buf[start..start + len],
            Src::Out => &out[start..start + len],
            Src::Tunnel(i) => match &*tunnel {
                Some(t) => &t.rx[i][start..start + len],
                None => return,
            },
        };
        let (from, coalesce) = match ports.get(&ingress) {
            Some(Slot::Tap(_)) => (Ingress::Local, false),
            Some(Slot::Gateway(_)) => (Ingress::Gateway, false),
            Some(Slot::Vtep(v)) => (Ingress::Tunnel, v.coalesce),
            // A handoff port never sends: its frames arrive at the first worker.
            Some(Slot::Handoff(_)) | None => return,
        };
        // ARP/ND for remote endpoints: answered here, never flooded.
        if from == Ingress::Local && !neighbors.is_empty() {
            if let Some(network) = bridge.network_of(ingress) {
                if let Some(n) = neighbors.answer(network, frame, reply) {
                    if let Some(Slot::Tap(t)) = ports.get_mut(&ingress) {
                        if write_tap(&t.tap, &VnetHdr::NONE, &reply[..n]).is_ok() {
                            t.counters.tx_packets += 1;
                            t.counters.tx_bytes += n as u64;
                            *suppressed += 1;
                            let _ = bridge.process(ingress, frame, now); // learn
                            return;
                        }
                    }
                }
            }
        }
        let mut out_ctx = Egress {
            ports,
            dirty,
            seg,
            gro,
            tunnel: tunnel.as_ref(),
            quic: quic.as_ref(),
            tunnel_counters,
            vni_of,
            handoff: handoff.as_ref(),
            from,
            coalesce,
            now,
        };
        match bridge.process(ingress, frame, now) {
            Action::Forward(p) => out_ctx.deliver(p, hdr, frame),
            Action::Flood { network, except } => {
                for &p in bridge.ports(network) {
                    if p != except {
                        out_ctx.deliver(p, hdr, frame);
                    }
                }
            }
            Action::Drop(reason) => {
                tracing::trace!(port = ingress.0, reason = reason.as_str(), "drop");
            }
        }
    }

    /// Reads batches of tunnel datagrams (recvmmsg; runs of same-sized
    /// datagrams arrive coalesced by UDP GRO) and switches their inner
    /// frames; consecutive TCP segments bound for one TAP leave as one
    /// super-frame.
    fn read_tunnel(&mut self, now: Instant) {
        // Stays set if the batch ends before the queue does.
        self.tunnel_more = self.tunnel.is_some();
        for _ in 0..BATCH {
            let Some(t) = self.tunnel.as_mut() else {
                return;
            };
            let count = {
                let n = t.rx.len();
                let mut iovs: [IoSliceMut<'_>; TUNNEL_RX_BUFS] =
                    std::array::from_fn(|_| IoSliceMut::new(&mut []));
                for (iov, buf) in iovs.iter_mut().zip(t.rx.iter_mut()) {
                    *iov = IoSliceMut::new(&mut buf[..]);
                }
                match t
                    .state
                    .recv(UdpSockRef::from(&t.sock), &mut iovs[..n], &mut t.meta)
                {
                    Ok(count) => count,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        if e.kind() != io::ErrorKind::WouldBlock {
                            tracing::debug!(error = %e, "tunnel receive");
                        }
                        // Drained (or failing): the next datagram brings an event.
                        self.tunnel_more = false;
                        break;
                    }
                }
            };
            for i in 0..count {
                let meta = self.tunnel.as_ref().expect("checked above").meta[i];
                let stride = meta.stride.max(1);
                let mut at = 0;
                while at < meta.len {
                    let len = stride.min(meta.len - at);
                    self.tunnel_datagram(i, at, len, meta.addr, now);
                    at += len;
                }
            }
            flush_gro(&mut self.ports, &mut self.gro);
        }
    }

    /// One VXLAN datagram at `start..start + len` of receive buffer `buf`.
    fn tunnel_datagram(
        &mut self,
        buf: usize,
        start: usize,
        len: usize,
        from: SocketAddr,
        now: Instant,
    ) {
        let Some(t) = self.tunnel.as_ref() else {
            return;
        };
        self.tunnel_counters.rx_packets += 1;
        let vni = match vxlan::decapsulate(&t.rx[buf][start..start + len]) {
            Ok((vni, _)) => vni,
            Err(_) => {
                self.tunnel_counters.malformed += 1;
                return;
            }
        };
        let Some(&network) = self.network_of_vni.get(&vni) else {
            self.tunnel_counters.unknown_vni += 1;
            return;
        };
        let Some(&port) = self.vteps.get(&(network, canonical_ip(from.ip()))) else {
            self.tunnel_counters.non_member += 1;
            return;
        };
        if let Some(Slot::Vtep(v)) = self.ports.get_mut(&port) {
            if v.quic {
                // An encrypted network takes nothing in the clear.
                self.tunnel_counters.clear_on_encrypted += 1;
                return;
            }
            v.counters.rx_packets += 1;
            v.counters.rx_bytes += (len - vxlan::HEADER_LEN) as u64;
        }
        self.switch_frame(
            port,
            Src::Tunnel(buf),
            start + vxlan::HEADER_LEN,
            len - vxlan::HEADER_LEN,
            &VnetHdr::NONE,
            now,
        );
    }

    /// Switches the frames of the QUIC datagrams that arrived (a bounded
    /// number; the QUIC side wakes the datapath again for the rest).
    fn read_quic(&mut self, now: Instant) {
        let Some(mut rx) = self.quic_rx.take() else {
            return;
        };
        rx.drain(|peer, datagram| self.quic_datagram(peer, datagram, now));
        self.quic_rx = Some(rx);
        flush_gro(&mut self.ports, &mut self.gro);
    }

    /// One datagram from the member whose tunnel address is `peer` (the
    /// QUIC endpoint tells it by its certificate): a VXLAN header and a
    /// frame, as on the UDP tunnel, accepted only for encrypted networks.
    fn quic_datagram(&mut self, peer: SocketAddr, datagram: &[u8], now: Instant) {
        let len = datagram.len();
        let vni = match vxlan::decapsulate(datagram) {
            Ok((vni, _)) => vni,
            Err(_) => {
                self.tunnel_counters.quic_rejected += 1;
                return;
            }
        };
        let port = self
            .network_of_vni
            .get(&vni)
            .and_then(|n| self.vteps.get(&(*n, canonical_ip(peer.ip()))));
        let Some(&port) = port else {
            self.tunnel_counters.quic_rejected += 1;
            return;
        };
        match self.ports.get_mut(&port) {
            Some(Slot::Vtep(v)) if v.quic => {
                v.counters.rx_packets += 1;
                v.counters.rx_bytes += (len - vxlan::HEADER_LEN) as u64;
            }
            _ => {
                self.tunnel_counters.quic_on_plain += 1;
                return;
            }
        }
        self.switch_frame(
            port,
            Src::Slice(datagram),
            vxlan::HEADER_LEN,
            len - vxlan::HEADER_LEN,
            &VnetHdr::NONE,
            now,
        );
    }

    /// Lets gateways run: answers they produced go into the bridge, queries
    /// for upstream resolvers go out of their sockets.
    fn service_gateways(&mut self, now: Instant) {
        // Timers: a gateway whose deadline passed gets its turn too.
        for (port, slot) in self.ports.iter_mut() {
            if let Slot::Gateway(g) = slot {
                if g.gateway.poll_timeout(now).is_some_and(|t| t <= now) {
                    g.gateway.handle_timeout(now);
                    if !self.dirty.contains(port) {
                        self.dirty.push(*port);
                    }
                }
                if let Some(nat) = g.nat.as_mut() {
                    if nat.poll_timeout(now).is_some_and(|t| t <= now) {
                        nat.handle_timeout(now);
                        if !self.dirty.contains(port) {
                            self.dirty.push(*port);
                        }
                    }
                }
            }
        }
        let todo = std::mem::take(&mut self.dirty);
        for port in todo {
            // Bounded: a gateway emits at most this many frames per wake-up;
            // if it has more it stays dirty for the next round.
            let mut emitted = 0;
            while emitted < 4 * BATCH {
                let n = match self.ports.get_mut(&port) {
                    Some(Slot::Gateway(g)) => match g.gateway.poll_transmit(now, &mut self.out) {
                        Some(n) => {
                            g.counters.rx_packets += 1;
                            g.counters.rx_bytes += n as u64;
                            n
                        }
                        None => break,
                    },
                    _ => break,
                };
                emitted += 1;
                self.switch_frame(port, Src::Out, 0, n, &VnetHdr::NONE, now);
            }
            // The NAT's frames, then what it asks of host sockets (events
            // before datagrams: a flow's socket exists before its first
            // datagram), bounded likewise.
            let mut nat_emitted = 0;
            while nat_emitted < 4 * BATCH {
                let n = match self.ports.get_mut(&port) {
                    Some(Slot::Gateway(g)) => match g.nat.as_mut() {
                        Some(nat) => match nat.poll_transmit(now, &mut self.out) {
                            Some(n) => {
                                g.counters.rx_packets += 1;
                                g.counters.rx_bytes += n as u64;
                                n
                            }
                            None => break,
                        },
                        None => break,
                    },
                    _ => break,
                };
                nat_emitted += 1;
                self.switch_frame(port, Src::Out, 0, n, &VnetHdr::NONE, now);
            }
            let mut nat_more = false;
            if let Some(Slot::Gateway(g)) = self.ports.get_mut(&port) {
                if let Some(nat) = g.nat.as_mut() {
                    let network = self.bridge.network_of(port);
                    if let Some(network) = network {
                        let registry = self.poll.registry();
                        let mut handled = 0;
                        while let Some(ev) = nat.poll_event() {
                            self.nat_io.handle_event(registry, network, nat, ev, now);
                            handled += 1;
                            if handled >= 16 * BATCH {
                                nat_more = true;
                                break;
                            }
                        }
                        nat_more |= self.nat_io.send_datagrams(network, nat, &mut self.out);
                    }
                }
            }
            if (emitted == 4 * BATCH || nat_emitted == 4 * BATCH || nat_more)
                && !self.dirty.contains(&port)
            {
                self.dirty.push(port);
            }
            if let Some(Slot::Gateway(g)) = self.ports.get_mut(&port) {
                while let Some((to, n)) = g.gateway.poll_upstream(&mut self.out) {
                    let sock = if to.is_ipv6() {
                        g.upstream6.as_ref()
                    } else {
                        g.upstream4.as_ref()
                    };
                    match sock.map(|s| s.send_to(&self.out[..n], to)) {
                        Some(Ok(_)) => {}
                        Some(Err(e)) => tracing::debug!(%to, error = %e, "upstream DNS send"),
                        None => tracing::debug!(%to, "no socket for upstream DNS"),
                    }
                }
            }
        }
    }

    fn nat_mut(&mut self, network: NetworkId) -> Option<&mut Nat> {
        let port = self.gateways.get(&network)?;
        match self.ports.get_mut(port)? {
            Slot::Gateway(g) => g.nat.as_mut(),
            _ => None,
        }
    }

    /// Services the NAT host sockets that reported readiness, and those
    /// left with work from the last turn; their networks' gateways then
    /// have output.
    fn service_nat_sockets(&mut self, now: Instant) {
        let mut todo = std::mem::take(&mut self.nat_ready);
        todo.extend(self.nat_io.take_retry());
        for idx in todo.drain(..) {
            let Some(network) = self.nat_io.network_of(idx) else {
                continue;
            };
            let Some(&port) = self.gateways.get(&network) else {
                continue;
            };
            let Some(Slot::Gateway(g)) = self.ports.get_mut(&port) else {
                continue;
            };
            let Some(nat) = g.nat.as_mut() else {
                continue;
            };
            self.nat_io
                .ready(self.poll.registry(), idx, nat, &mut self.buf, now);
            if !self.dirty.contains(&port) {
                self.dirty.push(port);
            }
        }
        // Keep the allocation for the next turn.
        self.nat_ready = todo;
    }

    fn read_upstream(&mut self, network: NetworkId, v6: bool, now: Instant) {
        let Some(&port) = self.gateways.get(&network) else {
            return;
        };
        let Some(Slot::Gateway(g)) = self.ports.get_mut(&port) else {
            return;
        };
        let sock = if v6 { &g.upstream6 } else { &g.upstream4 };
        let Some(sock) = sock else { return };
        for _ in 0..BATCH {
            match sock.recv_from(&mut self.buf) {
                Ok((n, from)) => g.gateway.handle_upstream(from, &self.buf[..n], now),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    tracing::debug!(error = %e, "upstream DNS receive");
                    break;
                }
            }
        }
        if !self.dirty.contains(&port) {
            self.dirty.push(port);
        }
    }
}

/// IPv4-mapped IPv6 addresses (from a dual-stack socket) as plain IPv4.
fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    }
}

/// Where the frame being switched came from.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Ingress {
    Local,
    Gateway,
    Tunnel,
}

/// Writes `[hdr | frame]` to a TAP with one syscall.
fn write_tap(tap: &Tap, hdr: &VnetHdr, frame: &[u8]) -> io::Result<usize> {
    let mut h = [0u8; VnetHdr::LEN];
    hdr.write(&mut h);
    tap.write_vectored(&[IoSlice::new(&h), IoSlice::new(frame)])
}

/// Writes the super-frame being built, if any, to its TAP.
fn flush_gro(ports: &mut HashMap<PortId, Slot>, run: &mut GroRun) {
    let Some(port) = run.port.take() else {
        return;
    };
    if run.gro.has_pending() {
        if let Some(Slot::Tap(t)) = ports.get_mut(&port) {
            let frame = run.gro.pending();
            match t.tap.write(frame) {
                Ok(_) => {
                    t.counters.tx_packets += 1;
                    t.counters.tx_bytes += (frame.len() - VnetHdr::LEN) as u64;
                }
                Err(_) => t.counters.tx_drops += 1,
            }
        }
    }
    run.gro.reset();
}

/// What delivering a frame needs.
struct Egress<'a> {
    ports: &'a mut HashMap<PortId, Slot>,
    dirty: &'a mut Vec<PortId>,
    seg: &'a mut [u8],
    gro: &'a mut GroRun,
    tunnel: Option<&'a Tunnel>,
    quic: Option<&'a QuicHandle>,
    tunnel_counters: &'a mut TunnelCounters,
    vni_of: &'a HashMap<NetworkId, Vni>,
    handoff: Option<&'a Handoff>,
    from: Ingress,
    /// The frame came from a member's tunnel port: TCP segments may be
    /// coalesced.
    coalesce: bool,
    now: Instant,
}

impl Egress<'_> {
    /// Delivers `frame` (with its offload header `hdr`) to port `to`.
    fn deliver(&mut self, to: PortId, hdr: &VnetHdr, frame: &[u8]) {
        let offloaded = hdr.is_gso() || hdr.needs_csum();
        if self.coalesce && !offloaded && matches!(self.ports.get(&to), Some(Slot::Tap(_))) {
            if self.coalesce_into(to, frame) {
                return;
            }
        } else if self.gro.port == Some(to) {
            // Whatever reaches that TAP goes after the run being built.
            flush_gro(self.ports, self.gro);
        }
        match self.ports.get_mut(&to) {
            Some(Slot::Tap(t)) => match write_tap(&t.tap, hdr, frame) {
                Ok(_) => {
                    t.counters.tx_packets += 1;
                    t.counters.tx_bytes += frame.len() as u64;
                }
                Err(_) => t.counters.tx_drops += 1,
            },
            Some(Slot::Handoff(c)) => {
                // The first worker owns this gateway: the frame goes there.
                if self.handoff.is_some_and(|h| h.hand(to, hdr, frame)) {
                    c.tx_packets += 1;
                    c.tx_bytes += frame.len() as u64;
                } else {
                    c.tx_drops += 1;
                }
            }
            Some(Slot::Gateway(g)) => {
                g.counters.tx_packets += 1;
                g.counters.tx_bytes += frame.len() as u64;
                if offloaded {
                    // smoltcp takes MTU-sized frames with full checksums.
                    match offload::segment(hdr, frame, 0, self.seg) {
                        Ok(segs) => {
                            for i in 0..segs.count {
                                if let Some(f) = segs.frame(self.seg, 0, i) {
                                    feed_gateway(g, f, self.now);
                                }
                            }
                        }
                        Err(e) => {
                            tracing::trace!(error = %e, "super-frame not segmented");
                            g.counters.tx_drops += 1;
                        }
                    }
                } else {
                    feed_gateway(g, frame, self.now);
                }
                if !self.dirty.contains(&to) {
                    self.dirty.push(to);
                }
            }
            Some(Slot::Vtep(v)) => {
                // Split horizon: what came from a tunnel never goes back into
                // one, and each host's gateway stays local.
                if self.from != Ingress::Local {
                    return;
                }
                let Some(&vni) = self.vni_of.get(&v.network) else {
                    return;
                };
                let header = vxlan::header(vni);
                if v.quic {
                    // Encrypted: through QUIC or not at all.
                    let sent = match self.quic {
                        Some(q) => send_quic(q, v, &header, hdr, frame, self.seg),
                        None => Err(0),
                    };
                    let (ok, dropped) = match sent {
                        Ok(n) => (n, 0),
                        Err(sent) => (sent, 1),
                    };
                    v.counters.tx_packets += ok;
                    if ok > 0 {
                        v.counters.tx_bytes += frame.len() as u64;
                    }
                    v.counters.tx_drops += dropped;
                    return;
                }
                let Some(tunnel) = self.tunnel else {
                    return;
                };
                let sent = if offloaded {
                    send_segmented(tunnel, v, &header, hdr, frame, self.seg)
                } else {
                    // Header and frame go out as one datagram from two
                    // buffers: the frame is not copied.
                    let iov = [IoSlice::new(&header), IoSlice::new(frame)];
                    sendmsg(
                        tunnel.sock.as_raw_fd(),
                        &iov,
                        &[],
                        MsgFlags::empty(),
                        Some(&v.remote_sockaddr),
                    )
                    .map(|_| 1)
                    .map_err(io::Error::from)
                };
                match sent {
                    Ok(datagrams) => {
                        v.counters.tx_packets += datagrams;
                        v.counters.tx_bytes += frame.len() as u64;
                        self.tunnel_counters.tx_packets += datagrams;
                    }
                    Err(_) => {
                        v.counters.tx_drops += 1;
                        self.tunnel_counters.send_errors += 1;
                    }
                }
            }
            None => {}
        }
    }

    /// Adds a plain frame from a member's tunnel to the super-frame being
    /// built for TAP `to`, flushing the run first when the frame cannot
    /// extend it. False: the frame is not coalescable and goes out as is.
    fn coalesce_into(&mut self, to: PortId, frame: &[u8]) -> bool {
        if self.gro.port == Some(to) && matches!(self.gro.gro.offer(frame), Offer::Absorbed) {
            return true;
        }
        flush_gro(self.ports, self.gro);
        if matches!(self.gro.gro.offer(frame), Offer::Absorbed) {
            self.gro.port = Some(to);
            return true;
        }
        self.gro.gro.reset();
        false
    }
}

/// Hands a frame to the network's NAT or gateway.
fn feed_gateway(g: &mut GatewayPort, frame: &[u8], now: Instant) {
    match g.nat.as_mut() {
        Some(nat) if nat.is_for_nat(frame) => nat.handle_frame(frame, now),
        _ => g.gateway.handle_frame(frame, now),
    }
}

/// Segments a super-frame into `seg`, each segment behind a copy of the
/// VXLAN `header`: datagram `i` is `seg[i * stride..][..stride]`, the last
/// one `HEADER_LEN + last_len` bytes.
fn segment_behind(
    header: &[u8; vxlan::HEADER_LEN],
    hdr: &VnetHdr,
    frame: &[u8],
    seg: &mut [u8],
) -> Result<offload::Segments, offload::OffloadError> {
    let segs = offload::segment(hdr, frame, vxlan::HEADER_LEN, seg)?;
    for i in 0..segs.count {
        seg[i * segs.stride..][..vxlan::HEADER_LEN].copy_from_slice(header);
    }
    Ok(segs)
}

/// Sends a frame of an encrypted network as QUIC datagrams (a super-frame
/// segmented first, the segments sent as slices of one shared buffer).
/// Ok: datagrams sent; Err: how many went before one was dropped (no
/// connection yet, too large; the QUIC side counts why).
fn send_quic(
    quic: &QuicHandle,
    v: &VtepPort,
    header: &[u8; vxlan::HEADER_LEN],
    hdr: &VnetHdr,
    frame: &[u8],
    seg: &mut [u8],
) -> Result<u64, u64> {
    if !(hdr.is_gso() || hdr.needs_csum()) {
        return if quic.send_parts(v.remote, &[header, frame]) {
            Ok(1)
        } else {
            Err(0)
        };
    }
    let segs = segment_behind(header, hdr, frame, seg).map_err(|_| 0u64)?;
    // One allocation per super-frame; every datagram is a slice of it.
    let all = bytes::Bytes::copy_from_slice(&seg[..segs.total_len(vxlan::HEADER_LEN)]);
    let mut sent = 0;
    for i in 0..segs.count {
        let at = i * segs.stride;
        let end = (at + segs.stride).min(all.len());
        if !quic.send_bytes(v.remote, all.slice(at..end)) {
            return Err(sent);
        }
        sent += 1;
    }
    Ok(sent)
}

/// Segments a super-frame into MTU-sized frames, each behind a copy of the
/// VXLAN `header`, and sends them with UDP GSO (one `sendmsg` per run of
/// up to the kernel's segment limit). Returns the datagrams sent.
fn send_segmented(
    tunnel: &Tunnel,
    v: &VtepPort,
    header: &[u8; vxlan::HEADER_LEN],
    hdr: &VnetHdr,
    frame: &[u8],
    seg: &mut [u8],
) -> io::Result<u64> {
    let segs = segment_behind(header, hdr, frame, seg)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    let total = segs.total_len(vxlan::HEADER_LEN);
    // One UDP GSO send is one UDP datagram before segmentation: at most
    // 65,507 bytes of payload over IPv4 (65,535 minus the IP and UDP
    // headers), whatever the kernel's segment limit; a 64 KiB super-frame
    // grows past that once every segment has its own headers.
    let per_send = tunnel
        .state
        .max_gso_segments()
        .min(MAX_GSO_PAYLOAD / segs.stride)
        .max(1);
    for start in (0..total).step_by(per_send * segs.stride) {
        let end = (start + per_send * segs.stride).min(total);
        let transmit = Transmit {
            destination: v.remote,
            ecn: None,
            contents: &seg[start..end],
            segment_size: (end - start > segs.stride).then_some(segs.stride),
            src_ip: None,
        };
        tunnel
            .state
            .try_send(UdpSockRef::from(&tunnel.sock), &transmit)?;
    }
    Ok(segs.count as u64)
}

/// The hot path allocates nothing: two datapaths joined by a tunnel on
/// loopback move plain frames and super-frames between real TAPs (local
/// TAP to TAP, and TAP to tunnel to TAP with GSO and GRO) while a counting
/// allocator watches the thread that runs them.
#[cfg(test)]
#[allow(unsafe_code)]
mod alloc_tests {
    use super::*;
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::cell::Cell;
    use std::net::UdpSocket as StdUdpSocket;
    use std::process::Command as Cmd;
    use switch::tap::TapOptions;

    thread_local! {
        static COUNTING: Cell<bool> = const { Cell::new(false) };
        static ALLOCS: Cell<u64> = const { Cell::new(0) };
    }

    /// The system allocator, counting the calls made by a thread while its
    /// `COUNTING` flag is set.
    struct Counting;

    fn note() {
        let _ = COUNTING.try_with(|c| {
            if c.get() {
                ALLOCS.with(|a| a.set(a.get() + 1));
            }
        });
    }

    // SAFETY: every method forwards to `System` with the caller's arguments
    // unchanged, so `System`'s guarantees hold; `note` touches only const
    // thread-locals of `Cell` type, which neither allocate nor have
    // destructors.
    unsafe impl GlobalAlloc for Counting {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            note();
            // SAFETY: forwarded as received (see above).
            unsafe { System.alloc(layout) }
        }
        unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
            note();
            // SAFETY: forwarded as received (see above).
            unsafe { System.alloc_zeroed(layout) }
        }
        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            note();
            // SAFETY: forwarded as received (see above).
            unsafe { System.realloc(ptr, layout, new_size) }
        }
        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            // SAFETY: forwarded as received (see above).
            unsafe { System.dealloc(ptr, layout) }
        }
    }

    #[global_allocator]
    static GLOBAL: Counting = Counting;

    fn is_root() -> bool {
        nix::unistd::geteuid().is_root()
    }

    fn ip(args: &[&str]) {
        let o = Cmd::new("ip").args(args).output().expect("ip");
        assert!(
            o.status.success(),
            "ip {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }

    fn tap(name: &str, mac: &str) -> (Tap, u32) {
        let opts = TapOptions {
            vnet_hdr: true,
            ..TapOptions::default()
        };
        let t = Tap::open(name, &opts).unwrap();
        let offloads = t.enable_offloads().unwrap();
        ip(&["link", "set", name, "address", mac]);
        ip(&["link", "set", name, "up"]);
        (t, offloads)
    }

    fn tunnel() -> (Tunnel, SocketAddr) {
        let sock = StdUdpSocket::bind("127.0.0.1:0").unwrap();
        sock.set_nonblocking(true).unwrap();
        let addr = sock.local_addr().unwrap();
        (Tunnel::new(UdpSocket::from_std(sock)).unwrap(), addr)
    }

    fn datapath(tunnel: Tunnel) -> (Datapath, mpsc::Sender<Command>) {
        let poll = Poll::new().unwrap();
        let (tx, rx) = mpsc::channel();
        let mut tunnel = tunnel;
        poll.registry()
            .register(&mut tunnel.sock, TUNNEL, Interest::READABLE)
            .unwrap();
        (
            Datapath::new(poll, rx, BridgeConfig::default(), Some(tunnel)),
            tx,
        )
    }

    fn security(mac: MacAddr, ip: Option<Ipv4Addr>) -> PortSecurity {
        PortSecurity {
            mac,
            ipv4: ip.into_iter().collect(),
            ipv6: Vec::new(),
        }
    }

    fn tx_of(dp: &Datapath, port: PortId) -> PortCounters {
        match dp.ports.get(&port) {
            Some(Slot::Tap(t)) => t.counters,
            _ => panic!("no TAP port {port:?}"),
        }
    }

    #[test]
    fn the_hot_path_does_not_allocate() {
        if !is_root() {
            eprintln!("skipping: needs root for TAP devices in a private namespace");
            return;
        }
        std::thread::spawn(run_in_private_netns).join().unwrap();
    }

    fn run_in_private_netns() {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        ip(&["link", "set", "lo", "up"]);
        let (mac_a, mac_b, mac_c) = (
            MacAddr([2, 0, 0, 0, 0, 0x0a]),
            MacAddr([2, 0, 0, 0, 0, 0x0b]),
            MacAddr([2, 0, 0, 0, 0, 0x0c]),
        );
        let (tap_a, offloads) = tap("vsa", "02:00:00:00:00:0a");
        let (tap_b, _) = tap("vsb", "02:00:00:00:00:0b");
        let (tap_c, _) = tap("vsc", "02:00:00:00:00:0c");
        ip(&["addr", "add", "10.77.0.1/24", "dev", "vsa"]);
        for (peer, mac) in [
            ("10.77.0.2", "02:00:00:00:00:0b"),
            ("10.77.0.3", "02:00:00:00:00:0c"),
        ] {
            ip(&[
                "neigh",
                "replace",
                peer,
                "lladdr",
                mac,
                "dev",
                "vsa",
                "nud",
                "permanent",
            ]);
        }
        let net = NetworkId(1);
        let vni = Vni::new(4242).unwrap();
        let (t1, addr1) = tunnel();
        let (t2, addr2) = tunnel();
        let (mut dp1, _tx1) = datapath(t1);
        let (mut dp2, _tx2) = datapath(t2);
        // Host 1: a and b local, c behind the tunnel.
        dp1.add_network(net, None, None).unwrap();
        dp1.add_port(
            PortId(1),
            net,
            tap_a,
            true,
            security(mac_a, Some(Ipv4Addr::new(10, 77, 0, 1))),
        )
        .unwrap();
        dp1.add_port(PortId(2), net, tap_b, true, security(mac_b, None))
            .unwrap();
        let (reply, _r) = mpsc::channel();
        dp1.handle_command(Command::AddVtep {
            port: PortId(3),
            network: net,
            remote: addr2,
            member: true,
            quic: false,
            reply,
        });
        dp1.handle_command(Command::AddRemote {
            network: net,
            port: PortId(3),
            mac: mac_c,
            ips: Vec::new(),
        });
        dp1.handle_command(Command::SetVni {
            network: net,
            vni: Some(vni),
        });
        // Host 2: c local, host 1 behind the tunnel.
        dp2.add_network(net, None, None).unwrap();
        dp2.add_port(PortId(1), net, tap_c, true, security(mac_c, None))
            .unwrap();
        let (reply, _r) = mpsc::channel();
        dp2.handle_command(Command::AddVtep {
            port: PortId(2),
            network: net,
            remote: addr1,
            member: true,
            quic: false,
            reply,
        });
        dp2.handle_command(Command::SetVni {
            network: net,
            vni: Some(vni),
        });

        let plain = StdUdpSocket::bind("10.77.0.1:0").unwrap();
        // UDP GSO: one send of 12,000 bytes leaves as ten 1200-byte
        // datagrams, handed to the TAP as one super-frame where the kernel
        // has USO.
        let gso = StdUdpSocket::bind("10.77.0.1:0").unwrap();
        nix::sys::socket::setsockopt(&gso, nix::sys::socket::sockopt::UdpGsoSegment, &1200)
            .unwrap();
        let small = [7u8; 1000];
        let big = vec![9u8; 12_000];
        let mut events1 = Events::with_capacity(256);
        let mut events2 = Events::with_capacity(256);
        let (mut spin1, mut spin2) = (Instant::now(), Instant::now());

        // Socket addresses, not strings: resolving a string allocates.
        let targets: [SocketAddr; 2] = [
            "10.77.0.2:9".parse().unwrap(),
            "10.77.0.3:9".parse().unwrap(),
        ];
        let mut round = |dp1: &mut Datapath, dp2: &mut Datapath| {
            for to in targets {
                plain.send_to(&small, to).unwrap();
                gso.send_to(&big, to).unwrap();
            }
            let (b0, c0) = (tx_of(dp1, PortId(2)), tx_of(dp2, PortId(1)));
            let deadline = Instant::now() + Duration::from_secs(5);
            // b gets both sends; c gets the small one and ten segments.
            while Instant::now() < deadline {
                dp1.turn(&mut events1, &mut spin1).unwrap();
                dp2.turn(&mut events2, &mut spin2).unwrap();
                let (b, c) = (tx_of(dp1, PortId(2)), tx_of(dp2, PortId(1)));
                if b.tx_bytes - b0.tx_bytes >= 13_000 && c.tx_bytes - c0.tx_bytes >= 13_000 {
                    return;
                }
            }
            panic!("frames did not arrive");
        };
        // Warm-up: queues and tables reach their working size.
        for _ in 0..20 {
            round(&mut dp1, &mut dp2);
        }
        let (b0, c0) = (tx_of(&dp1, PortId(2)), tx_of(&dp2, PortId(1)));
        COUNTING.with(|c| c.set(true));
        for _ in 0..200 {
            round(&mut dp1, &mut dp2);
        }
        COUNTING.with(|c| c.set(false));
        let allocs = ALLOCS.with(Cell::get);
        let (b, c) = (tx_of(&dp1, PortId(2)), tx_of(&dp2, PortId(1)));
        eprintln!(
            "200 rounds: {allocs} allocations; b got {} frames / {} bytes, c {} frames, \
             tunnel {} datagrams; TAP offloads {offloads:#x}",
            b.tx_packets - b0.tx_packets,
            b.tx_bytes - b0.tx_bytes,
            c.tx_packets - c0.tx_packets,
            dp1.tunnel_counters.tx_packets,
        );
        assert_eq!(allocs, 0, "allocations on the hot path");
        assert!(b.tx_bytes - b0.tx_bytes >= 200 * 13_000);
        assert!(c.tx_bytes - c0.tx_bytes >= 200 * 13_000);
        assert!(
            dp1.tunnel_counters.tx_packets >= 220 * 11,
            "{:?}",
            dp1.tunnel_counters
        );
        if offloads & switch::tap::offload::USO4 != 0 {
            // The 12,000-byte sends crossed from a to b as super-frames.
            let frames = b.tx_packets - b0.tx_packets;
            assert!(frames <= 200 * 2 + 10, "{frames} frames written to b");
        }
    }
}
