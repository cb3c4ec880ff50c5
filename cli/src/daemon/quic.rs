//! QUIC tunnels for encrypted overlays.
//!
//! One QUIC endpoint per daemon, on its own UDP port (`--quic-port`), runs
//! in a thread of its own with a single-threaded tokio runtime (quinn needs
//! one). Every encrypted network shares one connection per pair of hosts;
//! each overlay frame travels as one DATAGRAM frame (RFC 9221) holding the
//! same 8-byte VXLAN header and Ethernet frame as the UDP tunnel, so the
//! datapath switches both the same way.
//!
//! - **Trust**: a peer is accepted, in either direction, only if the
//!   certificate it presents has the fingerprint a live member publishes
//!   in gossip ([`overlay::identity`]); the controller keeps the peer list
//!   ([`QuicHandle::set_peers`]) and with it the trust set.
//! - **On demand**: [`QuicHandle::send`] never blocks; without a
//!   connection the datagram is dropped (counted) and a dial starts.
//!   When both hosts dial at once, the connection started by the host with
//!   the lower tunnel address is kept on both sides; between two
//!   connections that are equally preferred the newer wins (a restarted
//!   peer).
//! - **Liveness**: keep-alives every second, a connection idle for
//!   [`IDLE_TIMEOUT`] is gone, and the stateless reset key is derived from
//!   the host's private key, so a restarted host resets its peers' stale
//!   connections at their next packet instead of letting them time out.
//! - **MTU**: path MTU discovery is off and the UDP payload size is fixed
//!   from the underlay's MTU, so the largest datagram is known before any
//!   connection exists ([`max_datagram`], [`overlay_mtu`]).
//! - **Receive**: datagrams go to the datapath in bounded batches through a
//!   bounded channel, announced on a pipe the datapath's poll watches
//!   ([`QuicHandle::register`]; a second `mio::Waker` on one poll is not
//!   allowed), tagged with the sending member's tunnel address, which is
//!   what the datapath's VTEP lookup uses.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use arc_swap::{ArcSwap, ArcSwapOption};
use bytes::{BufMut, Bytes, BytesMut};
use futures::FutureExt;
use overlay::identity::{self, Fingerprint, Identity, TrustSet};
use overlay::vxlan::{self, Vni};
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{ConnectionError, VarInt};
use tokio::sync::mpsc;

/// Default UDP port of the QUIC endpoint.
pub const DEFAULT_PORT: u16 = 4790;
/// The gossip tag that carries a member's QUIC port.
pub const PORT_TAG: &str = "quic";
/// Where the host's certificate and key are kept, in the state directory.
pub const IDENTITY_FILE: &str = "quic-identity.pem";

/// Length of the connection IDs this endpoint issues (and so, between two
/// vswitch hosts, of the destination CID in every packet); a test checks
/// quinn's own datagram budget against [`max_datagram`].
const CID_LEN: usize = 8;
/// A 1-RTT packet's own bytes: flags, destination CID, the longest packet
/// number, the AEAD tag. quinn budgets datagrams with the longest packet
/// number, so this is exact, not an estimate.
pub const PACKET_OVERHEAD: usize = 1 + CID_LEN + 4 + 16;
/// A DATAGRAM frame's type byte and length varint, as quinn budgets them.
pub const DATAGRAM_FRAME_OVERHEAD: usize = 1 + 8;
/// The smallest UDP payload QUIC allows.
pub const MIN_UDP_PAYLOAD: u16 = 1200;

/// Keep-alive interval of every connection.
pub const KEEP_ALIVE: Duration = Duration::from_secs(1);
/// A connection without any packet from the peer for this long is gone.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(5);
/// Least time between two dials to the same peer.
const REDIAL_AFTER: Duration = Duration::from_millis(200);
/// Datagrams handed to the datapath per batch, and batches queued at most.
const RX_BATCH: usize = 64;
const RX_QUEUE: usize = 1024;
/// Batches the datapath takes per wake-up before others get a turn.
const RX_DRAIN: usize = 16;
/// Socket buffers asked for the endpoint's UDP socket.
const SOCKET_BUF: usize = 4 << 20;
/// Datagrams queued in a connection at most, in bytes.
const SEND_QUEUE: usize = 4 << 20;

/// Application close codes.
const CLOSE_DUPLICATE: u32 = 1;
const CLOSE_NOT_A_MEMBER: u32 = 2;
const CLOSE_SHUTDOWN: u32 = 3;

/// The UDP payload a datagram of the underlay can carry.
pub fn udp_payload(underlay_mtu: u32, ipv6: bool) -> u32 {
    underlay_mtu.saturating_sub(if ipv6 { 48 } else { 28 })
}

/// The largest QUIC datagram (VXLAN header and frame) for a UDP payload
/// size; `None` below QUIC's minimum.
pub fn max_datagram(udp_payload: u32) -> Option<usize> {
    (udp_payload >= u32::from(MIN_UDP_PAYLOAD))
        .then(|| udp_payload as usize - PACKET_OVERHEAD - DATAGRAM_FRAME_OVERHEAD)
}

/// The MTU of an encrypted overlay over an underlay of `underlay_mtu`:
/// the largest datagram less the VXLAN header and the Ethernet header.
pub fn overlay_mtu(underlay_mtu: u32, ipv6: bool) -> Option<u32> {
    max_datagram(udp_payload(underlay_mtu, ipv6)).map(|d| (d - vxlan::HEADER_LEN - 14) as u32)
}

/// Another host, as the controller learns it from gossip.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuicPeer {
    pub name: String,
    /// Its VXLAN tunnel address: how the datapath names it.
    pub tunnel: SocketAddr,
    /// Its QUIC endpoint.
    pub quic: SocketAddr,
    /// The fingerprint it publishes.
    pub fingerprint: Fingerprint,
}

/// Counters for `vswitch stats`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QuicStats {
    pub datagrams_in: u64,
    pub datagrams_out: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// Dropped for want of a connection (one is being dialled).
    pub drops_no_connection: u64,
    /// Frames larger than the largest datagram: dropped, never sent in
    /// the clear.
    pub drops_too_large: u64,
    /// quinn refused the datagram (the connection was closing).
    pub drops_send_error: u64,
    /// Received while the datapath's queue was full.
    pub drops_rx_queue: u64,
    /// Handshakes completed.
    pub handshakes: u64,
    /// Handshakes this host refused: the peer's certificate is not a live
    /// member's.
    pub handshakes_refused: u64,
    /// Handshakes that failed otherwise (refused by the peer, timed out).
    pub handshakes_failed: u64,
    /// Connections open now.
    pub connections: u64,
    /// Of the connections open now (quinn's own counts): QUIC packets
    /// declared lost, congestion events, DATAGRAM frames received (more
    /// than `datagrams_in` when quinn's receive buffer overflowed).
    pub lost_packets: u64,
    pub congestion_events: u64,
    pub datagram_frames_in: u64,
}

impl QuicStats {
    /// As `vswitch stats` shows them.
    pub fn named(&self) -> [(&'static str, u64); 15] {
        [
            ("DatagramsIn", self.datagrams_in),
            ("DatagramsOut", self.datagrams_out),
            ("BytesIn", self.bytes_in),
            ("BytesOut", self.bytes_out),
            ("DropsNoConnection", self.drops_no_connection),
            ("DropsTooLarge", self.drops_too_large),
            ("DropsSendError", self.drops_send_error),
            ("DropsRxQueue", self.drops_rx_queue),
            ("Handshakes", self.handshakes),
            ("HandshakesRefused", self.handshakes_refused),
            ("HandshakesFailed", self.handshakes_failed),
            ("Connections", self.connections),
            ("LostPackets", self.lost_packets),
            ("CongestionEvents", self.congestion_events),
            ("DatagramFramesIn", self.datagram_frames_in),
        ]
    }
}

#[derive(Debug, Default)]
struct Counters {
    datagrams_in: AtomicU64,
    datagrams_out: AtomicU64,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    drops_no_connection: AtomicU64,
    drops_too_large: AtomicU64,
    drops_send_error: AtomicU64,
    drops_rx_queue: AtomicU64,
    handshakes: AtomicU64,
    handshakes_refused: AtomicU64,
    handshakes_failed: AtomicU64,
    connections: AtomicU64,
}

fn bump(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

/// The peers, by tunnel address and by fingerprint.
#[derive(Debug, Default)]
struct PeerTable {
    by_tunnel: HashMap<SocketAddr, QuicPeer>,
    by_fingerprint: HashMap<Fingerprint, SocketAddr>,
}

/// Datagrams received, each with the tunnel address of the member that
/// sent it.
pub type RxBatch = Vec<(SocketAddr, Bytes)>;

/// What the QUIC thread is asked to do.
#[derive(Debug)]
enum Cmd {
    Dial(SocketAddr),
    PeersChanged,
    Shutdown,
    /// Stops as a crash would: nothing is closed, nothing more is sent.
    #[cfg(test)]
    Crash,
}

/// State shared by the handle's users and the QUIC thread.
#[derive(Debug)]
struct Shared {
    /// This host's tunnel address (for the tie-break).
    local_tunnel: SocketAddr,
    max_datagram: usize,
    trust: TrustSet,
    peers: ArcSwap<PeerTable>,
    /// The one connection to each peer, by tunnel address (written by the
    /// QUIC thread only).
    conns: ArcSwap<HashMap<SocketAddr, quinn::Connection>>,
    cmds: mpsc::Sender<Cmd>,
    rx_tx: std_mpsc::SyncSender<RxBatch>,
    rx: Mutex<Option<std_mpsc::Receiver<RxBatch>>>,
    /// The write end of the datapath's wake-up pipe.
    waker: ArcSwapOption<mio::unix::pipe::Sender>,
    /// A wake-up is on its way to the datapath.
    wake_pending: AtomicBool,
    /// How long the QUIC thread stays awake after a datagram.
    busy_poll: Duration,
    /// A datagram came or went since the spinner last looked.
    activity: AtomicBool,
    /// The spinner is keeping the QUIC thread awake.
    spinning: AtomicBool,
    /// Starts the spinner.
    spin: tokio::sync::Notify,
    counters: Counters,
}

impl Shared {
    /// A datagram came or went: the QUIC thread stays awake a while
    /// ([`keep_awake`]). Per datagram only loads, unless something changed;
    /// the spinner is started (a lock inside `Notify`) once per burst.
    fn active(&self) {
        if self.busy_poll.is_zero() {
            return;
        }
        if !self.activity.load(Ordering::Relaxed) {
            self.activity.store(true, Ordering::Release);
        }
        if !self.spinning.load(Ordering::Acquire) && !self.spinning.swap(true, Ordering::AcqRel) {
            self.spin.notify_one();
        }
    }

    fn wake_datapath(&self) {
        if !self.wake_pending.swap(true, Ordering::AcqRel) {
            if let Some(w) = self.waker.load().as_ref() {
                // At most one byte is ever in the pipe (the flag), so this
                // never blocks; a full pipe would mean a wake-up is due.
                let _ = io::Write::write(&mut &**w, &[1]);
            }
        }
    }
}

/// Where a datapath worker puts the QUIC datagrams it sends: one buffer,
/// each datagram (or each super-frame's run of segments) copied in once and
/// handed to quinn as a `Bytes` slice of it. quinn drops a datagram once
/// it is in a packet; when every slice of the buffer is gone, `reserve`
/// takes the same memory back in place, so in a steady flow nothing is
/// allocated per datagram. While quinn still holds some, a new buffer is
/// made (one per [`DatagramArena::CHUNK`] bytes), and the old one goes
/// with its last slice.
#[derive(Debug, Default)]
pub struct DatagramArena {
    buf: BytesMut,
}

impl DatagramArena {
    /// Bytes per buffer: about 700 datagrams of 1,500 bytes.
    pub const CHUNK: usize = 1 << 20;

    /// `parts` one after another, as one `Bytes`.
    pub fn take(&mut self, parts: &[&[u8]]) -> Bytes {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        if self.buf.capacity() < len {
            self.buf.reserve(Self::CHUNK.max(len));
        }
        for p in parts {
            self.buf.put_slice(p);
        }
        self.buf.split().freeze()
    }
}

/// The datapath's and the controller's end: cheap to clone, never blocks.
#[derive(Debug, Clone)]
pub struct QuicHandle {
    shared: Arc<Shared>,
}

impl QuicHandle {
    /// Sends one datagram (a VXLAN header and frame) to the member whose
    /// tunnel address is `peer`. False when it was dropped: too large, no
    /// connection yet (a dial starts), or the connection is closing.
    pub fn send(&self, peer: SocketAddr, datagram: &[u8]) -> bool {
        self.send_parts(peer, &[datagram])
    }

    /// [`QuicHandle::send`] of a VXLAN header for `vni` followed by `frame`.
    pub fn send_vxlan(&self, peer: SocketAddr, vni: Vni, frame: &[u8]) -> bool {
        self.send_parts(peer, &[&vxlan::header(vni), frame])
    }

    /// [`QuicHandle::send`] of a datagram gathered from `parts`.
    pub fn send_parts(&self, peer: SocketAddr, parts: &[&[u8]]) -> bool {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        let mut buf = BytesMut::with_capacity(len);
        for p in parts {
            buf.put_slice(p);
        }
        self.send_bytes(peer, buf.freeze())
    }

    /// [`QuicHandle::send`] of a datagram already in a `Bytes` (a slice of
    /// a buffer shared by several datagrams, say): nothing is copied.
    pub fn send_bytes(&self, peer: SocketAddr, datagram: Bytes) -> bool {
        let s = &self.shared;
        let len = datagram.len();
        if len > s.max_datagram {
            bump(&s.counters.drops_too_large, 1);
            return false;
        }
        let conns = s.conns.load();
        let Some(conn) = conns.get(&peer) else {
            bump(&s.counters.drops_no_connection, 1);
            // Full means dials are queued already.
            let _ = s.cmds.try_send(Cmd::Dial(peer));
            return false;
        };
        s.active();
        match conn.send_datagram(datagram) {
            Ok(()) => {
                bump(&s.counters.datagrams_out, 1);
                bump(&s.counters.bytes_out, len as u64);
                true
            }
            Err(e) => {
                tracing::trace!(%peer, error = %e, "QUIC datagram not sent");
                bump(&s.counters.drops_send_error, 1);
                false
            }
        }
    }

    /// The largest datagram [`QuicHandle::send`] takes.
    pub fn max_datagram(&self) -> usize {
        self.shared.max_datagram
    }

    /// Sets the members this host talks to (live members other than
    /// itself, with their published fingerprints): the trust set follows,
    /// and connections to hosts no longer listed are closed.
    pub fn set_peers(&self, peers: impl IntoIterator<Item = QuicPeer>) {
        let mut table = PeerTable::default();
        for p in peers {
            table.by_fingerprint.insert(p.fingerprint, p.tunnel);
            table.by_tunnel.insert(p.tunnel, p);
        }
        let unchanged = {
            let old = self.shared.peers.load();
            old.by_tunnel == table.by_tunnel
        };
        if unchanged {
            return;
        }
        self.shared
            .trust
            .replace(table.by_fingerprint.keys().copied());
        self.shared.peers.store(Arc::new(table));
        // Must not be lost: waits for room if dials fill the queue.
        let cmds = self.shared.cmds.clone();
        if cmds.try_send(Cmd::PeersChanged).is_err() {
            std::thread::spawn(move || {
                let _ = cmds.blocking_send(Cmd::PeersChanged);
            });
        }
    }

    /// The peers set last.
    pub fn peers(&self) -> Vec<QuicPeer> {
        self.shared
            .peers
            .load()
            .by_tunnel
            .values()
            .cloned()
            .collect()
    }

    /// Registers the datapath's poll: received datagrams are announced by
    /// a readable event with `token`, after which the datapath calls
    /// [`QuicRx::drain`]. Once only: the receiving end is handed over.
    pub fn register(&self, registry: &mio::Registry, token: mio::Token) -> io::Result<QuicRx> {
        let rx = self
            .shared
            .rx
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .ok_or_else(|| io::Error::other("the QUIC receive queue is taken already"))?;
        let (sender, mut wake) = mio::unix::pipe::new()?;
        registry.register(&mut wake, token, mio::Interest::READABLE)?;
        self.shared.waker.store(Some(Arc::new(sender)));
        // Whatever arrived before registration is announced now.
        self.shared.wake_pending.store(false, Ordering::Release);
        self.shared.wake_datapath();
        Ok(QuicRx {
            shared: self.shared.clone(),
            rx,
            wake,
        })
    }

    pub fn stats(&self) -> QuicStats {
        let c = &self.shared.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let (mut lost_packets, mut congestion_events, mut datagram_frames_in) = (0, 0, 0);
        for conn in self.shared.conns.load().values() {
            let s = conn.stats();
            lost_packets += s.path.lost_packets;
            congestion_events += s.path.congestion_events;
            datagram_frames_in += s.frame_rx.datagram;
        }
        QuicStats {
            lost_packets,
            congestion_events,
            datagram_frames_in,
            datagrams_in: get(&c.datagrams_in),
            datagrams_out: get(&c.datagrams_out),
            bytes_in: get(&c.bytes_in),
            bytes_out: get(&c.bytes_out),
            drops_no_connection: get(&c.drops_no_connection),
            drops_too_large: get(&c.drops_too_large),
            drops_send_error: get(&c.drops_send_error),
            drops_rx_queue: get(&c.drops_rx_queue),
            handshakes: get(&c.handshakes),
            handshakes_refused: get(&c.handshakes_refused),
            handshakes_failed: get(&c.handshakes_failed),
            connections: get(&c.connections),
        }
    }

    /// Whether a connection to `peer` (a tunnel address) is up.
    pub fn is_connected(&self, peer: SocketAddr) -> bool {
        self.shared.conns.load().contains_key(&peer)
    }
}

/// The datapath's receiving end.
#[derive(Debug)]
pub struct QuicRx {
    shared: Arc<Shared>,
    rx: std_mpsc::Receiver<RxBatch>,
    /// The read end of the wake-up pipe (edge-triggered: emptied at every
    /// drain).
    wake: mio::unix::pipe::Receiver,
}

impl QuicRx {
    /// Calls `f(peer tunnel address, datagram)` for what has arrived, at
    /// most a bounded number of batches; if more is left the waker fires
    /// again, so the datapath comes back after its other work.
    pub fn drain(&mut self, mut f: impl FnMut(SocketAddr, &[u8])) {
        let mut sink = [0u8; 16];
        while matches!(io::Read::read(&mut &self.wake, &mut sink), Ok(n) if n > 0) {}
        // Cleared after the pipe and before the queue: a batch sent from
        // now on wakes the datapath again.
        self.shared.wake_pending.store(false, Ordering::Release);
        for _ in 0..RX_DRAIN {
            match self.rx.try_recv() {
                Ok(batch) => {
                    for (peer, d) in &batch {
                        f(*peer, d);
                    }
                }
                Err(_) => return,
            }
        }
        self.shared.wake_datapath();
    }
}

/// Random connection IDs of [`CID_LEN`] bytes. Unlike quinn's default
/// (hashed with a key drawn at every start), any CID of the right length
/// passes validation, so a restarted host answers its peers' packets on
/// connections it no longer has with a stateless reset (keyed by the
/// host's identity, so the peers recognise it) instead of ignoring them.
struct RandomCids;

impl quinn::ConnectionIdGenerator for RandomCids {
    fn generate_cid(&mut self) -> quinn::ConnectionId {
        let mut b = [0u8; CID_LEN];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b)
            .expect("the system RNG works");
        quinn::ConnectionId::new(&b)
    }

    fn cid_len(&self) -> usize {
        CID_LEN
    }

    fn cid_lifetime(&self) -> Option<Duration> {
        None
    }
}

/// The QUIC endpoint and its thread.
#[derive(Debug)]
pub struct QuicTransport {
    handle: QuicHandle,
    local_addr: SocketAddr,
    thread: Option<JoinHandle<()>>,
}

/// How the endpoint is set up.
#[derive(Debug, Clone)]
pub struct QuicConfig {
    /// The identity presented in handshakes.
    pub identity: Identity,
    /// This host's tunnel address.
    pub local_tunnel: SocketAddr,
    /// The UDP payload size of the underlay (see [`udp_payload`]).
    pub udp_payload: u32,
    /// How long the QUIC thread keeps running after its last datagram, in
    /// or out, before it sleeps (the datapath's `--busy-poll`): a reply
    /// within that time is sent or received without a thread wake-up. Zero
    /// turns it off.
    pub busy_poll: Duration,
}

fn transport_config(udp_payload: u16) -> Result<quinn::TransportConfig, String> {
    let mut t = quinn::TransportConfig::default();
    t.max_concurrent_bidi_streams(VarInt::from_u32(0))
        .max_concurrent_uni_streams(VarInt::from_u32(0))
        .keep_alive_interval(Some(KEEP_ALIVE))
        .max_idle_timeout(Some(
            IDLE_TIMEOUT
                .try_into()
                .map_err(|e| format!("idle timeout: {e}"))?,
        ))
        // A fixed packet size: the overlay's MTU is known before any
        // connection exists, and never changes under a running network.
        .initial_mtu(udp_payload)
        .min_mtu(udp_payload)
        .mtu_discovery_config(None)
        .datagram_receive_buffer_size(Some(SOCKET_BUF))
        // quinn drops the oldest queued datagrams beyond this. One datapath
        // batch of TCP super-frames is up to 64 x 64 KiB: with 1 MiB, 2 %
        // of datagrams were dropped here under iperf3 (20-35 k TCP
        // retransmissions in 8 s); with 4 MiB, none.
        .datagram_send_buffer_size(SEND_QUEUE);
    Ok(t)
}

impl QuicTransport {
    /// Starts the endpoint on `socket` (bound already).
    pub fn start(config: QuicConfig, socket: std::net::UdpSocket) -> anyhow::Result<QuicTransport> {
        let payload = u16::try_from(config.udp_payload)
            .ok()
            .filter(|p| *p >= MIN_UDP_PAYLOAD)
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "the underlay carries UDP payloads of {} bytes; QUIC needs at least {MIN_UDP_PAYLOAD} (an underlay MTU of at least 1228 over IPv4, 1248 over IPv6)",
                    config.udp_payload
                )
            })?;
        let max_datagram = max_datagram(u32::from(payload)).expect("checked above");
        {
            use nix::sys::socket::{setsockopt, sockopt};
            let _ = setsockopt(&socket, sockopt::RcvBuf, &SOCKET_BUF);
            let _ = setsockopt(&socket, sockopt::SndBuf, &SOCKET_BUF);
        }
        socket.set_nonblocking(true)?;
        let local_addr = socket.local_addr()?;

        let trust = TrustSet::new();
        let transport = Arc::new(transport_config(payload).map_err(anyhow::Error::msg)?);
        let tls_server = config.identity.server_config(&trust)?;
        let tls_client = config.identity.client_config(&trust)?;
        let mut server =
            quinn::ServerConfig::with_crypto(Arc::new(QuicServerConfig::try_from(tls_server)?));
        server.transport_config(transport.clone());
        let mut client =
            quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(tls_client)?));
        client.transport_config(transport);
        let reset_key =
            ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &config.identity.reset_key_seed());
        let mut endpoint_config = quinn::EndpointConfig::new(Arc::new(reset_key));
        endpoint_config
            .max_udp_payload_size(payload)
            .map_err(|e| anyhow::anyhow!("QUIC UDP payload size {payload}: {e}"))?
            .cid_generator(|| Box::new(RandomCids));

        let (cmd_tx, cmd_rx) = mpsc::channel(256);
        let (rx_tx, rx_rx) = std_mpsc::sync_channel(RX_QUEUE);
        let shared = Arc::new(Shared {
            local_tunnel: config.local_tunnel,
            max_datagram,
            trust,
            peers: ArcSwap::from_pointee(PeerTable::default()),
            conns: ArcSwap::from_pointee(HashMap::new()),
            cmds: cmd_tx,
            rx_tx,
            rx: Mutex::new(Some(rx_rx)),
            waker: ArcSwapOption::empty(),
            wake_pending: AtomicBool::new(false),
            busy_poll: config.busy_poll,
            activity: AtomicBool::new(false),
            spinning: AtomicBool::new(false),
            spin: tokio::sync::Notify::new(),
            counters: Counters::default(),
        });
        let (ready_tx, ready_rx) = std_mpsc::channel();
        let thread = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("vswitch-quic".into())
                .spawn(move || {
                    let rt = match tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                    {
                        Ok(rt) => rt,
                        Err(e) => {
                            let _ = ready_tx.send(Err(format!("QUIC runtime: {e}")));
                            return;
                        }
                    };
                    rt.block_on(async move {
                        let endpoint = match quinn::Endpoint::new(
                            endpoint_config,
                            Some(server),
                            socket,
                            Arc::new(quinn::TokioRuntime),
                        ) {
                            Ok(e) => e,
                            Err(e) => {
                                let _ = ready_tx.send(Err(format!("QUIC endpoint: {e}")));
                                return;
                            }
                        };
                        let _ = ready_tx.send(Ok(()));
                        tokio::spawn(keep_awake(shared.clone()));
                        Driver::new(shared, endpoint, client).run(cmd_rx).await;
                    });
                })?
        };
        ready_rx
            .recv()
            .map_err(|_| anyhow::anyhow!("the QUIC thread died at start"))?
            .map_err(anyhow::Error::msg)?;
        tracing::info!(%local_addr, max_datagram, "QUIC endpoint ready");
        Ok(QuicTransport {
            handle: QuicHandle { shared },
            local_addr,
            thread: Some(thread),
        })
    }

    pub fn handle(&self) -> QuicHandle {
        self.handle.clone()
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Closes every connection (peers learn it at once) and stops the
    /// thread.
    pub fn shutdown(&mut self) {
        let Some(t) = self.thread.take() else {
            return;
        };
        let cmds = self.handle.shared.cmds.clone();
        // From a plain thread: the queue may be full of dials.
        let _ = cmds.blocking_send(Cmd::Shutdown);
        let _ = t.join();
    }
}

impl Drop for QuicTransport {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// A connection as the QUIC thread keeps it.
#[derive(Debug)]
struct Conn {
    conn: quinn::Connection,
    /// Dialled by this host.
    outgoing: bool,
    since: Instant,
}

/// What connection tasks report to the driver.
#[derive(Debug)]
enum Event {
    Up {
        tunnel: SocketAddr,
        conn: quinn::Connection,
        outgoing: bool,
    },
    DialDone(SocketAddr),
    Down {
        tunnel: SocketAddr,
        id: usize,
    },
}

/// The QUIC thread's state: the endpoint, the connections, dials.
struct Driver {
    shared: Arc<Shared>,
    endpoint: quinn::Endpoint,
    client: quinn::ClientConfig,
    conns: HashMap<SocketAddr, Conn>,
    /// Dials in flight, and when the last one to each peer started.
    dialing: HashMap<SocketAddr, bool>,
    last_dial: HashMap<SocketAddr, Instant>,
    events_tx: mpsc::UnboundedSender<Event>,
    events: mpsc::UnboundedReceiver<Event>,
}

/// Whether an error means this host refused the peer's certificate.
fn refused_locally(e: &ConnectionError) -> bool {
    matches!(e, ConnectionError::TransportError(t) if (0x100..0x200).contains(&u64::from(t.code)))
}

impl Driver {
    fn new(shared: Arc<Shared>, endpoint: quinn::Endpoint, client: quinn::ClientConfig) -> Driver {
        let (events_tx, events) = mpsc::unbounded_channel();
        Driver {
            shared,
            endpoint,
            client,
            conns: HashMap::new(),
            dialing: HashMap::new(),
            last_dial: HashMap::new(),
            events_tx,
            events,
        }
    }

    async fn run(mut self, mut cmds: mpsc::Receiver<Cmd>) {
        loop {
            tokio::select! {
                incoming = self.endpoint.accept() => match incoming {
                    Some(incoming) => self.accept(incoming),
                    None => break,
                },
                cmd = cmds.recv() => match cmd {
                    Some(Cmd::Dial(peer)) => self.dial(peer),
                    Some(Cmd::PeersChanged) => self.peers_changed(),
                    Some(Cmd::Shutdown) | None => break,
                    #[cfg(test)]
                    Some(Cmd::Crash) => {
                        // The runtime is dropped next, with every task and
                        // the socket, before any close could go out.
                        self.shared.conns.store(Arc::new(HashMap::new()));
                        return;
                    }
                },
                Some(ev) = self.events.recv() => self.handle_event(ev),
            }
        }
        self.endpoint
            .close(VarInt::from_u32(CLOSE_SHUTDOWN), b"shutting down");
        self.conns.clear();
        self.publish();
        // Lets the CONNECTION_CLOSE frames go out, briefly.
        let _ = tokio::time::timeout(Duration::from_millis(500), self.endpoint.wait_idle()).await;
    }

    fn accept(&mut self, incoming: quinn::Incoming) {
        let shared = self.shared.clone();
        let events = self.events_tx.clone();
        tokio::spawn(async move {
            let remote = incoming.remote_address();
            let conn = match incoming.await {
                Ok(c) => c,
                Err(e) => {
                    count_failed_handshake(&shared, &e);
                    tracing::debug!(%remote, error = %e, "incoming QUIC handshake failed");
                    return;
                }
            };
            match peer_of(&shared, &conn) {
                Some(tunnel) => {
                    bump(&shared.counters.handshakes, 1);
                    let _ = events.send(Event::Up {
                        tunnel,
                        conn,
                        outgoing: false,
                    });
                }
                None => {
                    // Trusted at the handshake, gone from the members since.
                    conn.close(VarInt::from_u32(CLOSE_NOT_A_MEMBER), b"not a member");
                }
            }
        });
    }

    fn dial(&mut self, tunnel: SocketAddr) {
        if self.conns.contains_key(&tunnel) || self.dialing.get(&tunnel) == Some(&true) {
            return;
        }
        let now = Instant::now();
        if self
            .last_dial
            .get(&tunnel)
            .is_some_and(|t| now.duration_since(*t) < REDIAL_AFTER)
        {
            return;
        }
        let Some(peer) = self.shared.peers.load().by_tunnel.get(&tunnel).cloned() else {
            return;
        };
        let connecting =
            match self
                .endpoint
                .connect_with(self.client.clone(), peer.quic, identity::SERVER_NAME)
            {
                Ok(c) => c,
                Err(e) => {
                    tracing::debug!(peer = %peer.name, error = %e, "QUIC dial");
                    return;
                }
            };
        self.dialing.insert(tunnel, true);
        self.last_dial.insert(tunnel, now);
        let shared = self.shared.clone();
        let events = self.events_tx.clone();
        tracing::debug!(peer = %peer.name, addr = %peer.quic, "dialling");
        tokio::spawn(async move {
            match connecting.await {
                Ok(conn) => {
                    // The member dialled, not merely some member.
                    if peer_of(&shared, &conn) == Some(tunnel)
                        && conn_fingerprint(&conn) == Some(peer.fingerprint)
                    {
                        bump(&shared.counters.handshakes, 1);
                        let _ = events.send(Event::Up {
                            tunnel,
                            conn,
                            outgoing: true,
                        });
                    } else {
                        bump(&shared.counters.handshakes_refused, 1);
                        conn.close(VarInt::from_u32(CLOSE_NOT_A_MEMBER), b"unexpected peer");
                    }
                }
                Err(e) => {
                    count_failed_handshake(&shared, &e);
                    tracing::debug!(peer = %peer.name, error = %e, "QUIC dial failed");
                }
            }
            let _ = events.send(Event::DialDone(tunnel));
        });
    }

    /// Whether a connection is the preferred one of a pair: started by the
    /// host with the lower tunnel address.
    fn preferred(&self, tunnel: SocketAddr, outgoing: bool) -> bool {
        let local_lower = self.shared.local_tunnel < tunnel;
        outgoing == local_lower
    }

    fn handle_event(&mut self, ev: Event) {
        match ev {
            Event::DialDone(tunnel) => {
                self.dialing.remove(&tunnel);
            }
            Event::Up {
                tunnel,
                conn,
                outgoing,
            } => {
                if !self.shared.peers.load().by_tunnel.contains_key(&tunnel) {
                    conn.close(VarInt::from_u32(CLOSE_NOT_A_MEMBER), b"not a member");
                    return;
                }
                let new_preferred = self.preferred(tunnel, outgoing);
                if let Some(old) = self.conns.get(&tunnel) {
                    let old_preferred = self.preferred(tunnel, old.outgoing);
                    // Both hosts decide the same way: the preferred one,
                    // else the newer (a restarted peer's).
                    if old_preferred && !new_preferred {
                        tracing::debug!(%tunnel, "duplicate QUIC connection closed");
                        conn.close(VarInt::from_u32(CLOSE_DUPLICATE), b"duplicate");
                        return;
                    }
                    let old = self.conns.remove(&tunnel).expect("present");
                    tracing::debug!(%tunnel, age = ?old.since.elapsed(), "QUIC connection replaced");
                    old.conn
                        .close(VarInt::from_u32(CLOSE_DUPLICATE), b"duplicate");
                }
                tracing::info!(%tunnel, remote = %conn.remote_address(), outgoing, "QUIC connection up");
                self.spawn_reader(tunnel, conn.clone());
                self.conns.insert(
                    tunnel,
                    Conn {
                        conn,
                        outgoing,
                        since: Instant::now(),
                    },
                );
                self.publish();
            }
            Event::Down { tunnel, id } => {
                if self
                    .conns
                    .get(&tunnel)
                    .is_some_and(|c| c.conn.stable_id() == id)
                {
                    self.conns.remove(&tunnel);
                    tracing::info!(%tunnel, "QUIC connection down");
                    self.publish();
                }
            }
        }
    }

    /// Closes connections to hosts that are no longer members, or whose
    /// published certificate changed.
    fn peers_changed(&mut self) {
        let peers = self.shared.peers.load();
        let gone: Vec<SocketAddr> = self
            .conns
            .iter()
            .filter(|(tunnel, c)| {
                peers
                    .by_tunnel
                    .get(*tunnel)
                    .is_none_or(|p| conn_fingerprint(&c.conn) != Some(p.fingerprint))
            })
            .map(|(t, _)| *t)
            .collect();
        for tunnel in gone {
            let c = self.conns.remove(&tunnel).expect("listed");
            tracing::info!(%tunnel, "closing the QUIC connection to a host that left");
            c.conn
                .close(VarInt::from_u32(CLOSE_NOT_A_MEMBER), b"not a member");
        }
        self.last_dial
            .retain(|t, _| peers.by_tunnel.contains_key(t));
        self.publish();
    }

    /// Publishes the connection table to the senders.
    fn publish(&self) {
        let table: HashMap<SocketAddr, quinn::Connection> = self
            .conns
            .iter()
            .map(|(t, c)| (*t, c.conn.clone()))
            .collect();
        self.shared
            .counters
            .connections
            .store(table.len() as u64, Ordering::Relaxed);
        self.shared.conns.store(Arc::new(table));
    }

    fn spawn_reader(&self, tunnel: SocketAddr, conn: quinn::Connection) {
        let shared = self.shared.clone();
        let events = self.events_tx.clone();
        tokio::spawn(async move {
            let id = conn.stable_id();
            let reason = loop {
                let first = match conn.read_datagram().await {
                    Ok(d) => d,
                    Err(e) => break e,
                };
                let mut batch: RxBatch = Vec::with_capacity(RX_BATCH);
                let mut bytes = first.len() as u64;
                batch.push((tunnel, first));
                // What else is here already, without waiting.
                let mut closed = None;
                while batch.len() < RX_BATCH {
                    match conn.read_datagram().now_or_never() {
                        Some(Ok(d)) => {
                            bytes += d.len() as u64;
                            batch.push((tunnel, d));
                        }
                        Some(Err(e)) => {
                            closed = Some(e);
                            break;
                        }
                        None => break,
                    }
                }
                let n = batch.len() as u64;
                shared.active();
                bump(&shared.counters.datagrams_in, n);
                bump(&shared.counters.bytes_in, bytes);
                match shared.rx_tx.try_send(batch) {
                    Ok(()) => shared.wake_datapath(),
                    Err(_) => bump(&shared.counters.drops_rx_queue, n),
                }
                if let Some(e) = closed {
                    break e;
                }
            };
            tracing::debug!(%tunnel, reason = %reason, "QUIC connection closed");
            let _ = events.send(Event::Down { tunnel, id });
        });
    }
}

/// Keeps the QUIC thread running for [`Shared::busy_poll`] after the last
/// datagram in or out, as the datapath's workers keep polling after their
/// last event: each `yield_now` lets the runtime poll its sockets (without
/// sleeping) and run what is ready, so the reply to a datagram just sent,
/// or the datapath's answer to one just received, is handled without the
/// thread wake-up (an interrupt between virtual CPUs on a VM) it would
/// otherwise cost. Sleeps on [`Shared::spin`] in between.
async fn keep_awake(shared: Arc<Shared>) {
    loop {
        shared.spin.notified().await;
        let mut until = Instant::now() + shared.busy_poll;
        loop {
            tokio::task::yield_now().await;
            // And the CPU, to whatever else is runnable (the datapath, the
            // containers): on a machine with fewer cores than busy threads
            // a spinner that never gives it up delays the very replies it
            // waits for, by whole scheduler slices.
            std::thread::yield_now();
            let now = Instant::now();
            if shared.activity.load(Ordering::Acquire) {
                shared.activity.store(false, Ordering::Release);
                until = now + shared.busy_poll;
            } else if now >= until {
                break;
            }
        }
        // A datagram after this sees the flag down and starts it again.
        shared.spinning.store(false, Ordering::Release);
    }
}

fn count_failed_handshake(shared: &Shared, e: &ConnectionError) {
    if refused_locally(e) {
        bump(&shared.counters.handshakes_refused, 1);
    } else {
        bump(&shared.counters.handshakes_failed, 1);
    }
}

/// The fingerprint of the certificate the peer presented.
fn conn_fingerprint(conn: &quinn::Connection) -> Option<Fingerprint> {
    let chain = conn
        .peer_identity()?
        .downcast::<Vec<rustls_pki::CertificateDer<'static>>>()
        .ok()?;
    identity::peer_fingerprint(&chain)
}

/// The tunnel address of the member that presented this connection's
/// certificate.
fn peer_of(shared: &Shared, conn: &quinn::Connection) -> Option<SocketAddr> {
    let fp = conn_fingerprint(conn)?;
    shared.peers.load().by_fingerprint.get(&fp).copied()
}

use quinn::rustls::pki_types as rustls_pki;

/// Reads the host's identity from the state directory, or makes one and
/// keeps it there (mode 0600), so it survives restarts.
pub fn load_or_create_identity(state_dir: &Path, node_name: &str) -> anyhow::Result<Identity> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let path = state_dir.join(IDENTITY_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let meta = std::fs::metadata(&path)?;
            if meta.permissions().mode() & 0o077 != 0 {
                tracing::warn!(path = %path.display(), "the QUIC identity was readable by others; making it 0600");
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
            }
            return Identity::from_pem(&text).map_err(|e| {
                anyhow::anyhow!(
                    "{}: {e}; remove it to make a new identity (peers learn the new fingerprint through gossip)",
                    path.display()
                )
            });
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(anyhow::anyhow!("reading {}: {e}", path.display())),
    }
    let identity = Identity::generate(node_name)?;
    // Written whole under another name, then renamed: never half a key.
    let tmp = state_dir.join(format!("{IDENTITY_FILE}.tmp"));
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| anyhow::anyhow!("creating {}: {e}", tmp.display()))?;
    f.write_all(identity.to_pem().as_bytes())?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, &path)?;
    tracing::info!(path = %path.display(), fingerprint = %identity.fingerprint(), "new QUIC identity");
    Ok(identity)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    #[rstest]
    #[case::v4_1500(1500, false, Some(1412))]
    #[case::v6_1500(1500, true, Some(1392))]
    #[case::jumbo(9000, false, Some(8912))]
    #[case::smallest_v4(1228, false, Some(1140))]
    #[case::too_small(1227, false, None)]
    fn overlay_mtu_from_the_underlay(
        #[case] underlay: u32,
        #[case] v6: bool,
        #[case] want: Option<u32>,
    ) {
        assert_eq!(overlay_mtu(underlay, v6), want);
    }

    /// A test host: a transport on loopback with a made-up tunnel address
    /// (only a name here: nothing is sent to it).
    struct TestHost {
        t: QuicTransport,
        tunnel: SocketAddr,
        identity: Identity,
    }

    fn host(tunnel: &str, identity: Option<Identity>, port: u16) -> TestHost {
        let identity = identity.unwrap_or_else(|| Identity::generate(tunnel).unwrap());
        let tunnel: SocketAddr = tunnel.parse().unwrap();
        let socket = std::net::UdpSocket::bind(("127.0.0.1", port)).unwrap();
        let t = QuicTransport::start(
            QuicConfig {
                identity: identity.clone(),
                local_tunnel: tunnel,
                udp_payload: udp_payload(1500, false),
                busy_poll: Duration::from_micros(50),
            },
            socket,
        )
        .unwrap();
        TestHost {
            t,
            tunnel,
            identity,
        }
    }

    impl TestHost {
        fn as_peer(&self) -> QuicPeer {
            QuicPeer {
                name: self.tunnel.to_string(),
                tunnel: self.tunnel,
                quic: self.t.local_addr(),
                fingerprint: self.identity.fingerprint(),
            }
        }
    }

    /// A datapath stand-in: a mio poll with the receive queue registered.
    struct Sink {
        poll: mio::Poll,
        rx: QuicRx,
    }

    impl Sink {
        fn new(h: &TestHost) -> Sink {
            let poll = mio::Poll::new().unwrap();
            let rx =
                h.t.handle()
                    .register(poll.registry(), mio::Token(7))
                    .unwrap();
            Sink { poll, rx }
        }

        /// Waits up to `within` for datagrams; returns what came.
        fn recv(&mut self, within: Duration) -> Vec<(SocketAddr, Vec<u8>)> {
            let mut events = mio::Events::with_capacity(8);
            let mut got = Vec::new();
            let deadline = Instant::now() + within;
            while got.is_empty() && Instant::now() < deadline {
                let _ = self.poll.poll(&mut events, Some(Duration::from_millis(50)));
                if events.iter().any(|e| e.token() == mio::Token(7)) {
                    self.rx.drain(|peer, d| got.push((peer, d.to_vec())));
                }
            }
            got
        }
    }

    /// Sends `payload` from `a` to `b` until `b` receives it or `within`
    /// passes; returns how long it took.
    fn deliver(
        a: &TestHost,
        b: &TestHost,
        sink: &mut Sink,
        payload: &[u8],
        within: Duration,
    ) -> Option<Duration> {
        let start = Instant::now();
        while start.elapsed() < within {
            if a.t.handle().send(b.tunnel, payload) {
                let got = sink.recv(Duration::from_millis(200));
                if got
                    .iter()
                    .any(|(from, d)| *from == a.tunnel && d == payload)
                {
                    return Some(start.elapsed());
                }
            } else {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        None
    }

    fn wait(what: &str, within: Duration, mut f: impl FnMut() -> bool) {
        let start = Instant::now();
        while start.elapsed() < within {
            if f() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("timed out waiting for {what}");
    }

    #[test]
    fn members_exchange_datagrams_tagged_with_the_sender() {
        let a = host("127.0.0.1:4789", None, 0);
        let b = host("127.0.0.2:4789", None, 0);
        a.t.handle().set_peers([b.as_peer()]);
        b.t.handle().set_peers([a.as_peer()]);
        let mut sink_b = Sink::new(&b);
        let mut sink_a = Sink::new(&a);
        // The first send finds no connection: dropped, and a dial starts.
        assert!(!a.t.handle().send(b.tunnel, b"first"));
        assert_eq!(a.t.handle().stats().drops_no_connection, 1);
        deliver(&a, &b, &mut sink_b, b"hello b", Duration::from_secs(5)).expect("a -> b");
        // The same connection serves the other direction.
        deliver(&b, &a, &mut sink_a, b"hello a", Duration::from_secs(5)).expect("b -> a");
        let (sa, sb) = (a.t.handle().stats(), b.t.handle().stats());
        assert_eq!((sa.connections, sb.connections), (1, 1));
        assert!(
            sa.datagrams_out >= 1 && sb.datagrams_in >= 1,
            "{sa:?} {sb:?}"
        );
        assert_eq!(sa.handshakes_refused + sb.handshakes_refused, 0);
        // quinn's own counts of the open connection.
        assert!(sb.datagram_frames_in >= 1, "{sb:?}");
        assert_eq!(
            sb.datagram_frames_in, sb.datagrams_in,
            "nothing lost in quinn"
        );

        // The largest datagram passes; one byte more is dropped, counted.
        let max = a.t.handle().max_datagram();
        assert_eq!(max, 1472 - PACKET_OVERHEAD - DATAGRAM_FRAME_OVERHEAD);
        let conn =
            a.t.handle()
                .shared
                .conns
                .load()
                .get(&b.tunnel)
                .cloned()
                .unwrap();
        assert_eq!(conn.max_datagram_size(), Some(max), "quinn agrees");
        let big = vec![0xab; max];
        deliver(&a, &b, &mut sink_b, &big, Duration::from_secs(5)).expect("max size");
        assert!(!a.t.handle().send(b.tunnel, &vec![0; max + 1]));
        assert_eq!(a.t.handle().stats().drops_too_large, 1);

        // VXLAN framing: the header the datapath parses.
        let frame = [0x5a; 60];
        assert!(a
            .t
            .handle()
            .send_vxlan(b.tunnel, Vni::new(77).unwrap(), &frame));
        let got = sink_b.recv(Duration::from_secs(5));
        let (_, d) = got.iter().find(|(_, d)| d.len() == 68).expect("the frame");
        let pkt = overlay::vxlan::VxlanPacket::new_checked(&d[..]).unwrap();
        assert_eq!(pkt.vni(), Vni::new(77).unwrap());
        assert_eq!(pkt.payload(), &frame[..]);
    }

    #[test]
    fn an_unknown_certificate_exchanges_nothing() {
        let a = host("127.0.0.1:4789", None, 0);
        let b = host("127.0.0.2:4789", None, 0);
        // The impostor claims b's tunnel address and b's published
        // fingerprint, but holds another certificate.
        let impostor = host("127.0.0.2:4789", None, 0);
        let mut published_b = b.as_peer();
        published_b.quic = impostor.t.local_addr();
        a.t.handle().set_peers([published_b]);
        impostor.t.handle().set_peers([a.as_peer()]);
        let mut sink_a = Sink::new(&a);
        let mut sink_i = Sink::new(&impostor);
        assert!(deliver(
            &impostor,
            &a,
            &mut sink_a,
            b"let me in",
            Duration::from_secs(2)
        )
        .is_none());
        assert!(deliver(&a, &impostor, &mut sink_i, b"to b?", Duration::from_secs(2)).is_none());
        let sa = a.t.handle().stats();
        assert!(
            sa.handshakes_refused >= 2,
            "both directions refused: {sa:?}"
        );
        assert_eq!(sa.handshakes, 0);
        assert_eq!(sa.datagrams_in, 0);
        assert_eq!(impostor.t.handle().stats().datagrams_in, 0);
    }

    #[test]
    fn a_host_that_leaves_is_disconnected_and_refused() {
        let a = host("127.0.0.1:4789", None, 0);
        let b = host("127.0.0.2:4789", None, 0);
        a.t.handle().set_peers([b.as_peer()]);
        b.t.handle().set_peers([a.as_peer()]);
        let mut sink_a = Sink::new(&a);
        deliver(&b, &a, &mut sink_a, b"up", Duration::from_secs(5)).expect("b -> a");
        a.t.handle().set_peers([]);
        wait(
            "the connection closed on both sides",
            Duration::from_secs(5),
            || a.t.handle().stats().connections == 0 && b.t.handle().stats().connections == 0,
        );
        assert!(deliver(&b, &a, &mut sink_a, b"still?", Duration::from_secs(2)).is_none());
        assert!(a.t.handle().stats().handshakes_refused >= 1);
    }

    #[test]
    fn simultaneous_dials_settle_on_one_connection() {
        let a = host("127.0.0.1:4789", None, 0);
        let b = host("127.0.0.2:4789", None, 0);
        a.t.handle().set_peers([b.as_peer()]);
        b.t.handle().set_peers([a.as_peer()]);
        let mut sink_a = Sink::new(&a);
        let mut sink_b = Sink::new(&b);
        // Both dial at once.
        a.t.handle().send(b.tunnel, b"x");
        b.t.handle().send(a.tunnel, b"y");
        deliver(&a, &b, &mut sink_b, b"a->b", Duration::from_secs(5)).expect("a -> b");
        deliver(&b, &a, &mut sink_a, b"b->a", Duration::from_secs(5)).expect("b -> a");
        wait("one connection each", Duration::from_secs(3), || {
            a.t.handle().stats().connections == 1 && b.t.handle().stats().connections == 1
        });
        // And it is the same connection: traffic keeps flowing both ways.
        std::thread::sleep(Duration::from_millis(300));
        deliver(&a, &b, &mut sink_b, b"again a->b", Duration::from_secs(2)).expect("a -> b");
        deliver(&b, &a, &mut sink_a, b"again b->a", Duration::from_secs(2)).expect("b -> a");
        assert_eq!(a.t.handle().stats().connections, 1);
    }

    #[rstest]
    #[case::restarted_host_is_the_lower_address("127.0.0.1:4789", "127.0.0.2:4789")]
    #[case::restarted_host_is_the_higher_address("127.0.0.2:4789", "127.0.0.1:4789")]
    fn a_restarted_peer_is_reached_again_quickly(#[case] restarted: &str, #[case] other: &str) {
        let a = host(other, None, 0);
        let b = host(restarted, None, 0);
        let (b_port, b_identity) = (b.t.local_addr().port(), b.identity.clone());
        a.t.handle().set_peers([b.as_peer()]);
        b.t.handle().set_peers([a.as_peer()]);
        let mut sink_b = Sink::new(&b);
        deliver(&a, &b, &mut sink_b, b"before", Duration::from_secs(5)).expect("a -> b");
        let mut b = b;
        crash(&mut b.t);
        let b2 = host(restarted, Some(b_identity), b_port);
        b2.t.handle().set_peers([a.as_peer()]);
        let mut sink_b2 = Sink::new(&b2);
        let start = Instant::now();
        let took = deliver(&a, &b2, &mut sink_b2, b"after", Duration::from_secs(10))
            .expect("a reaches the restarted b");
        eprintln!(
            "resumed after {took:?} ({:?} since the restart)",
            start.elapsed()
        );
        assert!(
            took < IDLE_TIMEOUT,
            "took {took:?}: the stale connection timed out instead of being reset"
        );
    }

    /// Stops a transport the way a crash does: its socket goes away and no
    /// CONNECTION_CLOSE is sent.
    fn crash(t: &mut QuicTransport) {
        let thread = t.thread.take().expect("running");
        t.handle
            .shared
            .cmds
            .blocking_send(Cmd::Crash)
            .expect("thread alive");
        let _ = thread.join();
    }
}
