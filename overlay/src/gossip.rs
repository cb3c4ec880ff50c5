//! Gossip: SWIM membership (foca) and the dissemination of the cluster
//! [`Directory`], encrypted with the cluster key. Sans-IO.
//!
//! [`Gossip`] takes datagrams and `now` and hands back datagrams to send,
//! the next instant it wants to be woken at, and events for the daemon,
//! in the manner of quinn-proto's `Connection`:
//!
//! ```text
//! loop {
//!     socket.recv_from -> gossip.handle_datagram(from, bytes, now)
//!     timer fired      -> gossip.handle_timeout(now)
//!     while let Some((to, n)) = gossip.poll_transmit(&mut buf) { socket.send_to(&buf[..n], to) }
//!     while let Some(event) = gossip.poll_event() { ... }
//!     arm the timer at gossip.poll_timeout()
//! }
//! ```
//!
//! # Datagrams
//!
//! Every datagram is sealed with the [`ClusterKey`] (see [`crate::key`]);
//! what fails to open is dropped and counted in
//! [`GossipStats::auth_failures`], so a host without the key can neither
//! join nor inject anything. Inside, one tag byte says what follows:
//! a foca packet (postcard), a digest chunk or a records chunk of the
//! directory's anti-entropy exchange, or a chunk of a member list.
//!
//! # Anti-entropy
//!
//! Every `sync_interval` a host sends a random live member its directory
//! digest; the peer answers with the records the host lacks and its own
//! digest (push-pull). On joining, when a member comes back from being
//! down, and every few rounds (fewer as the cluster grows) the exchange
//! also carries the whole membership view, as memberlist's push-pull does,
//! so a member that missed some SWIM updates catches up.
//!
//! # Identities
//!
//! A member's foca identity is its [`MemberMeta`] plus the daemon's boot
//! generation and a renewal counter. foca identifies members by gossip
//! address; when a newer identity with the same address appears (the host
//! restarted, or was declared down and renewed itself), it supersedes the
//! old one. A newer identity with the same *name* at another address also
//! supersedes the old one: this module declares the old one down.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::net::SocketAddr;
use std::num::{NonZeroU32, NonZeroUsize};
use std::ops::Deref;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use foca::{
    BroadcastHandler, Foca, Identity, Member, OwnedNotification, PostcardCodec, Runtime, State,
    Timer,
};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::directory::{
    self, Delta, DeltaKey, Directory, DirectoryEvent, DirectoryStats, NetVersion, NetworkSpec,
    PublishedEndpoint,
};
use crate::key::{ClusterKey, NonceSequence, SEAL_OVERHEAD};
use crate::OverlayError;

/// The largest encoded [`MemberMeta`]: foca puts two identities in every
/// packet header.
pub const MAX_META_LEN: usize = 192;

/// Datagrams waiting in [`Gossip::poll_transmit`] at most; older ones are
/// dropped (and counted) if the daemon does not drain them.
pub const MAX_OUTBOX: usize = 16_384;

const TAG_FOCA: u8 = 0;
const TAG_DIGEST: u8 = 1;
const TAG_RECORDS: u8 = 2;
const TAG_MEMBERS: u8 = 3;
/// A datagram of the daemon's own (e.g. cluster IPAM), sealed like the rest.
const TAG_APP: u8 = 4;

/// Spare datagram buffers kept for reuse at most.
const POOL_MAX: usize = 64;

/// First and largest interval between repeated join announcements.
const JOIN_RETRY_MIN: Duration = Duration::from_secs(1);
const JOIN_RETRY_MAX: Duration = Duration::from_secs(10);
/// Down members announced to, besides the seeds, when this host is alone.
const REJOIN_CANDIDATES: usize = 8;

/// Timers fired by one [`Gossip::handle_timeout`] call at most.
const MAX_TIMERS_PER_CALL: usize = 4096;

/// What a member says about itself.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct MemberMeta {
    /// Node name, unique in the cluster (`--node-name`).
    pub name: String,
    /// Where its gossip socket listens (the advertised address).
    pub gossip_addr: SocketAddr,
    /// Where its tunnel endpoint (VXLAN over UDP) listens.
    pub tunnel_addr: SocketAddr,
    /// Small opaque values for the daemon (a QUIC certificate fingerprint,
    /// a version); the whole meta must encode to [`MAX_META_LEN`] bytes.
    pub tags: BTreeMap<String, String>,
}

/// A member's foca identity.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub(crate) struct NodeId {
    meta: MemberMeta,
    /// The daemon's boot generation: grows at every restart.
    boot: u64,
    /// Renewals within one boot (after being declared down).
    bump: u32,
}

impl NodeId {
    fn rank(&self) -> (u64, u32, &str, SocketAddr) {
        (self.boot, self.bump, &self.meta.name, self.meta.tunnel_addr)
    }

    /// A stand-in for the unknown member at `addr`, to announce to: foca
    /// accepts an announce addressed to any identity with its address.
    fn placeholder(addr: SocketAddr) -> NodeId {
        NodeId {
            meta: MemberMeta {
                name: String::new(),
                gossip_addr: addr,
                tunnel_addr: addr,
                tags: BTreeMap::new(),
            },
            boot: 0,
            bump: 0,
        }
    }
}

impl Identity for NodeId {
    type Addr = SocketAddr;

    fn renew(&self) -> Option<Self> {
        Some(NodeId {
            meta: self.meta.clone(),
            boot: self.boot,
            bump: self.bump.checked_add(1)?,
        })
    }

    fn addr(&self) -> SocketAddr {
        self.meta.gossip_addr
    }

    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        self.rank() > adversary.rank()
    }
}

/// Whether `meta` encodes to at most [`MAX_META_LEN`] bytes.
fn meta_fits(meta: &MemberMeta) -> bool {
    let mut buf = [0u8; MAX_META_LEN];
    postcard::to_slice(meta, &mut buf).is_ok()
}

/// foca's postcard codec, refusing identities whose meta is larger than
/// [`MAX_META_LEN`], so what a peer sends cannot make our own packets
/// overflow a datagram.
#[derive(Debug, Clone, Copy, Default)]
struct BoundedCodec;

/// Why a foca packet or member could not be decoded.
#[derive(Debug, thiserror::Error)]
enum CodecError {
    /// Not valid postcard for the expected type.
    #[error("malformed gossip message")]
    Postcard(#[source] postcard::Error),
    /// An identity with oversized metadata.
    #[error("member metadata too large")]
    TooLarge,
}

fn check_id(id: &NodeId) -> Result<(), CodecError> {
    if meta_fits(&id.meta) {
        Ok(())
    } else {
        Err(CodecError::TooLarge)
    }
}

impl foca::Codec<NodeId> for BoundedCodec {
    type Error = CodecError;

    fn encode_header(
        &mut self,
        header: &foca::Header<NodeId>,
        buf: impl bytes::BufMut,
    ) -> Result<(), CodecError> {
        PostcardCodec
            .encode_header(header, buf)
            .map_err(CodecError::Postcard)
    }

    fn decode_header(&mut self, buf: impl bytes::Buf) -> Result<foca::Header<NodeId>, CodecError> {
        let header: foca::Header<NodeId> = PostcardCodec
            .decode_header(buf)
            .map_err(CodecError::Postcard)?;
        check_id(&header.src)?;
        check_id(&header.dst)?;
        match &header.message {
            foca::Message::PingReq { target, .. } | foca::Message::IndirectAck { target, .. } => {
                check_id(target)?
            }
            foca::Message::IndirectPing { origin, .. }
            | foca::Message::ForwardedAck { origin, .. } => check_id(origin)?,
            _ => {}
        }
        Ok(header)
    }

    fn encode_member(
        &mut self,
        member: &Member<NodeId>,
        buf: impl bytes::BufMut,
    ) -> Result<(), CodecError> {
        PostcardCodec
            .encode_member(member, buf)
            .map_err(CodecError::Postcard)
    }

    fn decode_member(&mut self, buf: impl bytes::Buf) -> Result<Member<NodeId>, CodecError> {
        let member: Member<NodeId> = PostcardCodec
            .decode_member(buf)
            .map_err(CodecError::Postcard)?;
        check_id(member.id())?;
        Ok(member)
    }
}

/// Liveness of a member as this host sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum MemberState {
    /// Answering probes.
    Alive,
    /// Failed a probe; will be declared down unless it refutes.
    Suspect,
    /// Declared down, or left.
    Down,
}

impl MemberState {
    fn is_up(self) -> bool {
        self != MemberState::Down
    }
}

impl fmt::Display for MemberState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            MemberState::Alive => "alive",
            MemberState::Suspect => "suspect",
            MemberState::Down => "dead",
        })
    }
}

impl From<State> for MemberState {
    fn from(s: State) -> Self {
        match s {
            State::Alive => MemberState::Alive,
            State::Suspect => MemberState::Suspect,
            State::Down => MemberState::Down,
        }
    }
}

/// One row of `vswitch members`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberInfo {
    /// What the member says about itself.
    pub meta: MemberMeta,
    /// Its daemon's boot generation.
    pub boot: u64,
    /// Its state.
    pub state: MemberState,
    /// Whether this is the local host.
    pub local: bool,
}

/// What the daemon is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GossipEvent {
    /// A member is up: new, back, refuted a suspicion, or changed its meta
    /// (tunnel address, tags). An upsert.
    MemberUp(MemberMeta),
    /// A member failed a probe and may be declared down soon.
    MemberSuspect(String),
    /// A member is down or left. Its endpoints are removed (the
    /// [`DirectoryEvent::EndpointRemoved`] events follow).
    MemberDown(String),
    /// This host is now known to at least one member: joined (or rejoined).
    Joined,
    /// No other member is alive any more.
    Alone,
    /// The directory changed.
    Directory(DirectoryEvent),
    /// A datagram of the daemon's own from a member ([`Gossip::send_app`]).
    App {
        /// The sender's gossip address.
        from: SocketAddr,
        /// What it sent.
        payload: Vec<u8>,
    },
}

/// Counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GossipStats {
    /// Datagrams handed to [`Gossip::handle_datagram`].
    pub datagrams_in: u64,
    /// Datagrams returned by [`Gossip::poll_transmit`].
    pub datagrams_out: u64,
    /// Bytes in.
    pub bytes_in: u64,
    /// Bytes out.
    pub bytes_out: u64,
    /// Datagrams that failed authentication (wrong key, tampered, junk).
    pub auth_failures: u64,
    /// Authenticated datagrams that could not be decoded.
    pub decode_failures: u64,
    /// Authenticated, decoded packets foca refused (from ourselves, for
    /// another identity, protocol violations).
    pub protocol_errors: u64,
    /// Datagrams dropped on the way out (outbox full, buffer too small).
    pub send_drops: u64,
    /// Anti-entropy digests sent.
    pub syncs_started: u64,
    /// Directory records received through anti-entropy.
    pub sync_records_in: u64,
    /// Members seen with this host's name at another address.
    pub name_conflicts: u64,
    /// Times a member became suspect (failed a probe), each announced by a
    /// [`GossipEvent::MemberSuspect`].
    pub suspicions: u64,
    /// Times a member was declared down or left, each announced by a
    /// [`GossipEvent::MemberDown`].
    pub members_down: u64,
    /// Directory counters.
    pub directory: DirectoryStats,
}

/// Settings.
#[derive(Debug, Clone)]
pub struct GossipConfig {
    /// foca's SWIM settings (probe period, suspicion time, fan-out...).
    /// Its `max_packet_size` is replaced to fit [`GossipConfig::max_datagram`].
    pub swim: foca::Config,
    /// The daemon's boot generation. It MUST grow at every start of the
    /// daemon (a persisted counter, or the Unix time in milliseconds), so
    /// that a restarted host supersedes its former self.
    pub boot_generation: u64,
    /// The largest datagram sent (underlay MTU minus IP and UDP headers).
    pub max_datagram: usize,
    /// How often a random member is sent a digest.
    pub sync_interval: Duration,
    /// Bytes of records sent at most in answer to one digest.
    pub sync_max_bytes: usize,
    /// How often foca's member states are read to notice suspicion.
    pub scan_interval: Duration,
    /// How long tombstones are kept.
    pub tombstone_ttl: Duration,
    /// How long the records of a host that is down are kept (hidden).
    pub forget_down_after: Duration,
}

impl GossipConfig {
    /// For a LAN of about `expected_members` hosts: foca's `new_lan` (probe
    /// every second, suspicion of 4 s up to 10 members and growing with
    /// log10 of the size), announcing to down members every 10 s so a
    /// healed partition merges quickly, anti-entropy every 5 s.
    pub fn lan(expected_members: u32, boot_generation: u64) -> GossipConfig {
        let size = NonZeroU32::new(expected_members.max(1)).unwrap_or(NonZeroU32::MIN);
        let mut swim = foca::Config::new_lan(size);
        swim.periodic_announce_to_down_members = Some(foca::PeriodicParams {
            frequency: Duration::from_secs(10),
            num_members: NonZeroUsize::new(2).unwrap_or(NonZeroUsize::MIN),
        });
        swim.remove_down_after = Some(Duration::from_secs(3600));
        GossipConfig {
            swim,
            boot_generation,
            max_datagram: 1400,
            sync_interval: Duration::from_secs(5),
            sync_max_bytes: 256 * 1024,
            scan_interval: Duration::from_millis(500),
            tombstone_ttl: Duration::from_secs(600),
            forget_down_after: Duration::from_secs(3600),
        }
    }

    /// For a WAN: foca's `new_wan` (probe every 5 s, longer suspicion),
    /// anti-entropy every 30 s.
    pub fn wan(expected_members: u32, boot_generation: u64) -> GossipConfig {
        let size = NonZeroU32::new(expected_members.max(1)).unwrap_or(NonZeroU32::MIN);
        GossipConfig {
            swim: foca::Config::new_wan(size),
            sync_interval: Duration::from_secs(30),
            ..GossipConfig::lan(expected_members, boot_generation)
        }
    }

    fn plaintext_budget(&self) -> usize {
        self.max_datagram.saturating_sub(SEAL_OVERHEAD)
    }
}

/// How the broadcast handler should treat items that foca hands it without
/// a sender (those given to `Foca::add_broadcast`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AddMode {
    /// Changes this host made.
    Local,
    /// Changes learned through anti-entropy, relayed to the cluster.
    Relay,
}

#[derive(Debug)]
struct Shared {
    dir: Directory,
    mode: AddMode,
}

fn lock(shared: &Mutex<Shared>) -> MutexGuard<'_, Shared> {
    shared.lock().unwrap_or_else(PoisonError::into_inner)
}

/// foca's custom-broadcast handler: decodes [`Delta`]s and merges them into
/// the directory; new ones are disseminated further.
///
/// foca owns its handler and offers no way back to it, so the directory is
/// shared with [`Gossip`] behind a mutex that is never contended (both are
/// used from the one thread that drives `Gossip`).
#[derive(Debug)]
struct DirectoryHandler {
    shared: Arc<Mutex<Shared>>,
}

/// A broadcast item that is not a valid [`Delta`].
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("undecodable directory broadcast")]
struct BadBroadcast;

impl BroadcastHandler<NodeId> for DirectoryHandler {
    type Key = DeltaKey;
    type Error = BadBroadcast;

    fn receive_item(
        &mut self,
        data: &[u8],
        sender: Option<&NodeId>,
    ) -> Result<Option<DeltaKey>, BadBroadcast> {
        let delta: Delta = postcard::from_bytes(data).map_err(|_| BadBroadcast)?;
        let key = delta.key();
        let mut shared = lock(&self.shared);
        let local = sender.is_none() && shared.mode == AddMode::Local;
        match shared.dir.apply(delta, local) {
            directory::Applied::New => Ok(Some(key)),
            directory::Applied::Stale | directory::Applied::Rejected => Ok(None),
        }
    }
}

/// A borrowed view of the directory; see [`Gossip::directory`].
#[derive(Debug)]
pub struct DirectoryRef<'a>(MutexGuard<'a, Shared>);

impl Deref for DirectoryRef<'_> {
    type Target = Directory;

    fn deref(&self) -> &Directory {
        &self.0.dir
    }
}

#[derive(Debug)]
enum TimerEvent {
    Foca(Timer<NodeId>),
}

/// foca's [`Runtime`], turned inside out: it only records.
struct Io<'a> {
    now: Instant,
    timers: &'a mut BTreeMap<(Instant, u64), TimerEvent>,
    timer_seq: &'a mut u64,
    outbox: &'a mut VecDeque<(SocketAddr, Vec<u8>)>,
    notes: &'a mut Vec<OwnedNotification<NodeId>>,
    pool: &'a mut Vec<Vec<u8>>,
    drops: &'a mut u64,
}

impl Runtime<NodeId> for Io<'_> {
    fn notify(&mut self, notification: foca::Notification<'_, NodeId>) {
        self.notes.push(notification.to_owned());
    }

    fn send_to(&mut self, to: NodeId, data: &[u8]) {
        let mut buf = self.pool.pop().unwrap_or_default();
        buf.clear();
        buf.push(TAG_FOCA);
        buf.extend_from_slice(data);
        push_bounded(self.outbox, self.pool, self.drops, to.addr(), buf);
    }

    fn submit_after(&mut self, event: Timer<NodeId>, after: Duration) {
        *self.timer_seq += 1;
        self.timers
            .insert((self.now + after, *self.timer_seq), TimerEvent::Foca(event));
    }
}

fn push_bounded(
    outbox: &mut VecDeque<(SocketAddr, Vec<u8>)>,
    pool: &mut Vec<Vec<u8>>,
    drops: &mut u64,
    to: SocketAddr,
    buf: Vec<u8>,
) {
    if outbox.len() >= MAX_OUTBOX {
        if let Some((_, old)) = outbox.pop_front() {
            pool.push(old);
        }
        *drops += 1;
    }
    outbox.push_back((to, buf));
}

/// Per gossip address: the identity there and its foca state.
#[derive(Debug, Clone)]
struct Peer {
    id: NodeId,
    state: MemberState,
}

/// Per name: what the daemon was last told.
#[derive(Debug, Clone, Default)]
struct NameEntry {
    addrs: Vec<SocketAddr>,
    told: Option<(NodeId, MemberState)>,
}

/// The sans-IO gossip endpoint. See the [module documentation](self).
pub struct Gossip {
    foca: Foca<NodeId, BoundedCodec, StdRng, DirectoryHandler>,
    shared: Arc<Mutex<Shared>>,
    key: ClusterKey,
    nonces: NonceSequence,
    config: GossipConfig,
    rng: StdRng,
    local: NodeId,
    timers: BTreeMap<(Instant, u64), TimerEvent>,
    timer_seq: u64,
    outbox: VecDeque<(SocketAddr, Vec<u8>)>,
    pool: Vec<Vec<u8>>,
    notes: Vec<OwnedNotification<NodeId>>,
    events: VecDeque<GossipEvent>,
    peers: BTreeMap<SocketAddr, Peer>,
    names: BTreeMap<String, NameEntry>,
    eager_sync: BTreeSet<String>,
    scratch: Vec<u8>,
    stats: GossipStats,
    now: Instant,
    next_sync: Instant,
    next_scan: Instant,
    next_gc: Instant,
    left: bool,
    /// Whether foca reported being part of a cluster.
    connected: bool,
    /// Seed addresses being announced to until this host has joined, with
    /// the time of the next attempt and the current back-off.
    seeds: BTreeMap<SocketAddr, (Instant, Duration)>,
    /// Every address `join` was given.
    join_addrs: BTreeSet<SocketAddr>,
    sync_round: u64,
}

impl fmt::Debug for Gossip {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Gossip")
            .field("local", &self.local)
            .field("members", &self.peers.len())
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl Gossip {
    /// A gossip endpoint for this host. `seed` seeds every random choice
    /// and the nonce prefix: give it OS randomness in production, a fixed
    /// value in tests for determinism.
    pub fn new(
        meta: MemberMeta,
        key: ClusterKey,
        mut config: GossipConfig,
        seed: u64,
        now: Instant,
    ) -> Result<Gossip, OverlayError> {
        let meta_len = postcard::to_stdvec(&meta)
            .map(|v| v.len())
            .unwrap_or(usize::MAX);
        if meta_len > MAX_META_LEN {
            return Err(OverlayError::MetaTooLarge(meta_len));
        }
        if meta.name.is_empty() {
            return Err(OverlayError::NoName);
        }
        if config.max_datagram < 512 {
            return Err(OverlayError::DatagramTooSmall(config.max_datagram));
        }
        let packet = config.plaintext_budget() - 1;
        config.swim.max_packet_size = NonZeroUsize::new(packet).unwrap_or(NonZeroUsize::MIN);
        let local = NodeId {
            meta,
            boot: config.boot_generation,
            bump: 0,
        };
        let shared = Arc::new(Mutex::new(Shared {
            dir: Directory::new(&local.meta.name, config.boot_generation, now),
            mode: AddMode::Local,
        }));
        let mut instance = postcard::to_stdvec(&local).unwrap_or_default();
        instance.extend_from_slice(&config.boot_generation.to_le_bytes());
        let nonces = NonceSequence::new(seed, &instance);
        let mut rng = StdRng::seed_from_u64(seed);
        let foca_rng = StdRng::seed_from_u64(rng.random());
        let foca = Foca::with_custom_broadcast(
            local.clone(),
            config.swim.clone(),
            foca_rng,
            BoundedCodec,
            DirectoryHandler {
                shared: Arc::clone(&shared),
            },
        );
        let first_sync = now + jitter(&mut rng, config.sync_interval);
        Ok(Gossip {
            foca,
            shared,
            key,
            nonces,
            rng,
            local,
            timers: BTreeMap::new(),
            timer_seq: 0,
            outbox: VecDeque::new(),
            pool: Vec::new(),
            notes: Vec::new(),
            events: VecDeque::new(),
            peers: BTreeMap::new(),
            names: BTreeMap::new(),
            eager_sync: BTreeSet::new(),
            scratch: vec![0; config.max_datagram],
            stats: GossipStats::default(),
            now,
            next_sync: first_sync,
            next_scan: now + config.scan_interval,
            next_gc: now + Duration::from_secs(1),
            left: false,
            connected: false,
            seeds: BTreeMap::new(),
            join_addrs: BTreeSet::new(),
            sync_round: 0,
            config,
        })
    }

    /// This host's meta.
    pub fn local_meta(&self) -> &MemberMeta {
        &self.local.meta
    }

    fn advance(&mut self, now: Instant) {
        if now > self.now {
            self.now = now;
        }
        lock(&self.shared).dir.set_now(self.now);
    }

    /// Runs one foca call with a recording runtime, then reacts to what it
    /// reported. foca errors are counted.
    fn with_foca<R>(
        &mut self,
        f: impl FnOnce(
            &mut Foca<NodeId, BoundedCodec, StdRng, DirectoryHandler>,
            &mut Io<'_>,
        ) -> Result<R, foca::Error>,
    ) -> Option<R> {
        let mut io = Io {
            now: self.now,
            timers: &mut self.timers,
            timer_seq: &mut self.timer_seq,
            outbox: &mut self.outbox,
            notes: &mut self.notes,
            pool: &mut self.pool,
            drops: &mut self.stats.send_drops,
        };
        let result = f(&mut self.foca, &mut io);
        let out = match result {
            Ok(r) => Some(r),
            Err(
                foca::Error::Decode(_)
                | foca::Error::MalformedPacket
                | foca::Error::CustomBroadcast(_),
            ) => {
                self.stats.decode_failures += 1;
                None
            }
            Err(_) => {
                self.stats.protocol_errors += 1;
                None
            }
        };
        self.react();
        out
    }

    /// Announces this host to the member at `peer` (a seed address). The
    /// host is part of the cluster once [`GossipEvent::Joined`] comes; until
    /// then the announcement is repeated (every second, backing off to every
    /// 10 s), so a lost datagram or a seed that starts later does not matter.
    /// Whenever this host finds itself alone (every other member down: a
    /// partition), it announces to its seeds and to some of the members it
    /// knew in the same way, so the cluster merges again once the network
    /// heals.
    pub fn join(&mut self, peer: SocketAddr, now: Instant) {
        self.advance(now);
        if peer == self.local.meta.gossip_addr {
            return;
        }
        if self.left {
            self.left = false;
            if let Some(renewed) = self.foca.identity().renew() {
                self.local = renewed.clone();
                self.with_foca(|foca, io| foca.change_identity(renewed, io));
            }
        }
        self.join_addrs.insert(peer);
        if !self.connected {
            self.seeds
                .insert(peer, (self.now + JOIN_RETRY_MIN, JOIN_RETRY_MIN));
        }
        self.with_foca(|foca, io| foca.announce(NodeId::placeholder(peer), io));
    }

    /// Alone: announce to the seeds and a few former members until one
    /// answers.
    fn seek_cluster(&mut self) {
        let mut candidates: Vec<SocketAddr> = self
            .peers
            .keys()
            .copied()
            .filter(|a| !self.join_addrs.contains(a))
            .collect();
        // A random few, so that large clusters do not all pick the same.
        for i in 0..candidates.len().min(REJOIN_CANDIDATES) {
            let j = self.rng.random_range(i..candidates.len());
            candidates.swap(i, j);
        }
        candidates.truncate(REJOIN_CANDIDATES);
        let at = self.now + JOIN_RETRY_MIN;
        for addr in self.join_addrs.iter().copied().chain(candidates) {
            self.seeds.insert(addr, (at, JOIN_RETRY_MIN));
        }
    }

    fn retry_joins(&mut self) {
        let now = self.now;
        let due: Vec<SocketAddr> = self
            .seeds
            .iter()
            .filter(|(_, (at, _))| *at <= now)
            .map(|(a, _)| *a)
            .collect();
        for peer in due {
            if let Some((at, backoff)) = self.seeds.get_mut(&peer) {
                *backoff = (*backoff * 2).min(JOIN_RETRY_MAX);
                *at = now + *backoff;
            }
            self.with_foca(|foca, io| foca.announce(NodeId::placeholder(peer), io));
        }
    }

    /// Leaves the cluster: tells a few members, then stops taking part.
    /// Every other member is reported down locally. [`Gossip::join`] again
    /// to come back.
    pub fn leave(&mut self, now: Instant) {
        self.advance(now);
        if self.left {
            return;
        }
        self.with_foca(|foca, io| foca.leave_cluster(io));
        self.left = true;
        let up: Vec<String> = self
            .names
            .iter()
            .filter(|(_, e)| e.told.as_ref().is_some_and(|(_, s)| s.is_up()))
            .map(|(n, _)| n.clone())
            .collect();
        for name in up {
            if let Some(entry) = self.names.get_mut(&name) {
                if let Some((id, _)) = entry.told.take() {
                    entry.told = Some((id, MemberState::Down));
                }
            }
            self.stats.members_down += 1;
            self.events.push_back(GossipEvent::MemberDown(name.clone()));
            lock(&self.shared).dir.member_down(&name);
            self.drain_directory_events();
        }
    }

    /// Takes one received datagram. Anything that fails authentication or
    /// decoding is dropped and counted; this never panics.
    pub fn handle_datagram(&mut self, from: SocketAddr, data: &[u8], now: Instant) {
        self.advance(now);
        self.stats.datagrams_in += 1;
        self.stats.bytes_in += data.len() as u64;
        let mut scratch = std::mem::take(&mut self.scratch);
        if scratch.len() < data.len() {
            scratch.resize(data.len(), 0);
        }
        match self.key.open(data, &mut scratch) {
            Err(_) => self.stats.auth_failures += 1,
            Ok(0) => self.stats.decode_failures += 1,
            Ok(n) => self.handle_plaintext(from, &scratch[..n]),
        }
        self.scratch = scratch;
        if !self.left && self.seeds.values().any(|(at, _)| *at <= self.now) {
            self.retry_joins();
        }
    }

    fn handle_plaintext(&mut self, from: SocketAddr, plain: &[u8]) {
        let (tag, body) = (plain[0], &plain[1..]);
        match tag {
            TAG_FOCA => {
                if !self.left {
                    self.with_foca(|foca, io| foca.handle_data(body, io));
                }
            }
            TAG_DIGEST => match directory::parse_digest(body) {
                Some((head, sums)) => self.answer_digest(from, &head, &sums),
                None => self.stats.decode_failures += 1,
            },
            TAG_MEMBERS => {
                if !self.left {
                    self.handle_members(from, body);
                }
            }
            TAG_APP => {
                if !self.left {
                    self.events.push_back(GossipEvent::App {
                        from,
                        payload: body.to_vec(),
                    });
                }
            }
            TAG_RECORDS => {
                let (deltas, complete) = directory::parse_records(body);
                if !complete {
                    self.stats.decode_failures += 1;
                }
                self.stats.sync_records_in += deltas.len() as u64;
                self.relay(deltas);
            }
            _ => self.stats.decode_failures += 1,
        }
    }

    /// Applies deltas learned through anti-entropy; the new ones are
    /// disseminated to the cluster like fresh broadcasts.
    fn relay(&mut self, deltas: Vec<Delta>) {
        lock(&self.shared).mode = AddMode::Relay;
        for delta in deltas {
            let bytes = delta.encode();
            if bytes.len() > directory::MAX_DELTA_LEN {
                self.stats.decode_failures += 1;
                continue;
            }
            if self.left {
                lock(&self.shared).dir.apply(delta, false);
            } else {
                self.with_foca(|foca, _| foca.add_broadcast(&bytes));
            }
        }
        lock(&self.shared).mode = AddMode::Local;
        self.drain_directory_events();
    }

    fn answer_digest(
        &mut self,
        from: SocketAddr,
        head: &directory::DigestHead,
        sums: &[directory::OriginSummary],
    ) {
        let budget = self.config.plaintext_budget();
        let chunks = {
            let shared = lock(&self.shared);
            let mut chunks = shared.dir.answer_digest(
                head,
                sums,
                TAG_RECORDS,
                budget,
                self.config.sync_max_bytes,
                &mut self.rng,
            );
            // Push-pull: the first chunk of a digest that wants a reply
            // gets ours, so the sender learns what we have that it lacks.
            if head.reply && head.networks.is_some() {
                chunks.extend(shared.dir.digest_chunks(TAG_DIGEST, false, budget));
            }
            chunks
        };
        for chunk in chunks {
            push_bounded(
                &mut self.outbox,
                &mut self.pool,
                &mut self.stats.send_drops,
                from,
                chunk,
            );
        }
    }

    /// Starts an anti-entropy exchange with `to`: our directory digest and,
    /// with `members`, our whole membership view (push-pull, as memberlist
    /// does), which the peer answers with its own.
    fn send_digest(&mut self, to: SocketAddr, members: bool) {
        self.stats.syncs_started += 1;
        let mut chunks =
            lock(&self.shared)
                .dir
                .digest_chunks(TAG_DIGEST, true, self.config.plaintext_budget());
        if members {
            chunks.extend(self.member_chunks(true));
        }
        for chunk in chunks {
            push_bounded(
                &mut self.outbox,
                &mut self.pool,
                &mut self.stats.send_drops,
                to,
                chunk,
            );
        }
    }

    /// foca's full membership state (down members included), in chunks.
    /// The first chunk's second byte says whether a reply is wanted.
    fn member_chunks(&self, reply: bool) -> Vec<Vec<u8>> {
        let budget = self.config.plaintext_budget();
        let mut chunks = Vec::new();
        let mut current = vec![TAG_MEMBERS, u8::from(reply)];
        for member in self.foca.iter_membership_state() {
            let Ok(bytes) = postcard::to_stdvec(member) else {
                continue;
            };
            if current.len() + bytes.len() > budget && current.len() > 2 {
                chunks.push(std::mem::replace(&mut current, vec![TAG_MEMBERS, 0]));
            }
            current.extend_from_slice(&bytes);
        }
        if current.len() > 2 || chunks.is_empty() {
            chunks.push(current);
        }
        chunks
    }

    /// A membership chunk from a peer: merged into foca's view (and what is
    /// new disseminated); answered with ours if the peer asks.
    fn handle_members(&mut self, from: SocketAddr, body: &[u8]) {
        let Some((&reply, mut rest)) = body.split_first() else {
            self.stats.decode_failures += 1;
            return;
        };
        let mut members = Vec::new();
        while !rest.is_empty() {
            match postcard::take_from_bytes::<Member<NodeId>>(rest) {
                Ok((m, r)) if meta_fits(&m.id().meta) => {
                    members.push(m);
                    rest = r;
                }
                _ => {
                    self.stats.decode_failures += 1;
                    break;
                }
            }
        }
        if !members.is_empty() {
            self.with_foca(|foca, io| foca.apply_many(members.into_iter(), true, io));
        }
        if reply == 1 {
            for chunk in self.member_chunks(false) {
                push_bounded(
                    &mut self.outbox,
                    &mut self.pool,
                    &mut self.stats.send_drops,
                    from,
                    chunk,
                );
            }
        }
    }

    /// The next datagram to send, sealed into `out` (which should hold
    /// [`GossipConfig::max_datagram`] bytes): its destination and length.
    pub fn poll_transmit(&mut self, out: &mut [u8]) -> Option<(SocketAddr, usize)> {
        loop {
            let (to, plain) = self.outbox.pop_front()?;
            let sealed = self.key.seal(&mut self.nonces, &plain, out);
            if self.pool.len() < POOL_MAX {
                self.pool.push(plain);
            }
            match sealed {
                Ok(n) => {
                    self.stats.datagrams_out += 1;
                    self.stats.bytes_out += n as u64;
                    return Some((to, n));
                }
                Err(_) => self.stats.send_drops += 1,
            }
        }
    }

    /// When [`Gossip::handle_timeout`] should be called next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let foca = self.timers.keys().next().map(|(at, _)| *at);
        let mut own = self.next_sync.min(self.next_scan).min(self.next_gc);
        if let Some(at) = self.seeds.values().map(|(at, _)| *at).min() {
            own = own.min(at);
        }
        Some(foca.map_or(own, |t| t.min(own)))
    }

    /// Fires what is due at `now`: foca's timers, anti-entropy, the scan
    /// of member states and garbage collection.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.advance(now);
        for _ in 0..MAX_TIMERS_PER_CALL {
            let Some(entry) = self.timers.first_entry() else {
                break;
            };
            if entry.key().0 > now {
                break;
            }
            let TimerEvent::Foca(timer) = entry.remove();
            self.with_foca(|foca, io| foca.handle_timer(timer, io));
        }
        if now >= self.next_scan {
            self.next_scan = now + self.config.scan_interval;
            self.scan();
        }
        if now >= self.next_gc {
            self.next_gc = now + Duration::from_secs(1);
            let mut shared = lock(&self.shared);
            shared.dir.collect_garbage(
                now,
                self.config.tombstone_ttl,
                self.config.forget_down_after,
            );
        }
        if now >= self.next_sync {
            self.next_sync = now + jitter(&mut self.rng, self.config.sync_interval);
            if !self.left {
                if let Some(to) = self.random_up_member() {
                    // Membership push-pull every k-th round, k growing with
                    // log2 of the cluster size past 32 members (memberlist's
                    // push-pull scaling), so its cost per host stays flat.
                    self.sync_round += 1;
                    let n = self.names.len().max(1) as f64;
                    let k = (n.log2().ceil() - 5.0).max(1.0) as u64;
                    let members = self.sync_round.is_multiple_of(k);
                    self.send_digest(to, members);
                }
            }
        }
        if !self.left {
            self.retry_joins();
        }
        self.run_eager_syncs();
    }

    fn random_up_member(&mut self) -> Option<SocketAddr> {
        let up: Vec<SocketAddr> = self
            .names
            .values()
            .filter_map(|e| match &e.told {
                Some((id, state)) if state.is_up() => Some(id.meta.gossip_addr),
                _ => None,
            })
            .collect();
        if up.is_empty() {
            None
        } else {
            Some(up[self.rng.random_range(0..up.len())])
        }
    }

    fn run_eager_syncs(&mut self) {
        while let Some(name) = self.eager_sync.pop_first() {
            let addr = self
                .names
                .get(&name)
                .and_then(|e| e.told.as_ref())
                .filter(|(_, s)| s.is_up())
                .map(|(id, _)| id.meta.gossip_addr);
            if let Some(addr) = addr {
                self.send_digest(addr, true);
            }
        }
    }

    /// Sends the daemon's own `payload` to the member at `to`, sealed with
    /// the cluster key like every gossip datagram; it arrives there as
    /// [`GossipEvent::App`]. False (and counted as a send drop) when it
    /// does not fit one datagram.
    pub fn send_app(&mut self, to: SocketAddr, payload: &[u8]) -> bool {
        if payload.len() + 1 > self.config.plaintext_budget() {
            self.stats.send_drops += 1;
            return false;
        }
        let mut buf = self.pool.pop().unwrap_or_default();
        buf.clear();
        buf.push(TAG_APP);
        buf.extend_from_slice(payload);
        push_bounded(
            &mut self.outbox,
            &mut self.pool,
            &mut self.stats.send_drops,
            to,
            buf,
        );
        true
    }

    /// The next event for the daemon.
    pub fn poll_event(&mut self) -> Option<GossipEvent> {
        self.events.pop_front()
    }

    /// Every member this host knows of, itself included.
    pub fn members(&self) -> Vec<MemberInfo> {
        let mut out: Vec<MemberInfo> = self
            .names
            .iter()
            .filter(|(name, _)| **name != self.local.meta.name)
            .filter_map(|(_, e)| {
                let (id, state) = e.told.as_ref()?;
                Some(MemberInfo {
                    meta: id.meta.clone(),
                    boot: id.boot,
                    state: *state,
                    local: false,
                })
            })
            .collect();
        out.push(MemberInfo {
            meta: self.local.meta.clone(),
            boot: self.local.boot,
            state: if self.left {
                MemberState::Down
            } else {
                MemberState::Alive
            },
            local: true,
        });
        out.sort_by(|a, b| a.meta.name.cmp(&b.meta.name));
        out
    }

    /// One member by name.
    pub fn member(&self, name: &str) -> Option<MemberInfo> {
        self.members().into_iter().find(|m| m.meta.name == name)
    }

    /// Counters.
    pub fn stats(&self) -> GossipStats {
        self.stats
    }

    /// The cluster directory, read-only: change it through [`Gossip`]'s
    /// methods so that changes are disseminated. The borrow of `self` keeps
    /// it from being held across calls that change anything.
    pub fn directory(&self) -> DirectoryRef<'_> {
        DirectoryRef(lock(&self.shared))
    }

    // ---- directory changes -------------------------------------------

    fn broadcast(&mut self, delta: Delta) {
        let bytes = delta.encode();
        if self.left {
            lock(&self.shared).dir.apply(delta, true);
        } else {
            self.with_foca(|foca, _| foca.add_broadcast(&bytes));
            // Start spreading it now rather than at the next gossip tick.
            self.with_foca(|foca, io| foca.gossip(io));
        }
        self.drain_directory_events();
    }

    /// Creates or updates an overlay network everywhere.
    pub fn publish_network(&mut self, spec: NetworkSpec, now: Instant) -> Result<(), OverlayError> {
        self.advance(now);
        let delta = lock(&self.shared).dir.network_upsert(spec)?;
        self.broadcast(delta);
        Ok(())
    }

    /// Removes an overlay network everywhere; false if it does not exist.
    pub fn remove_network(&mut self, name: &str, now: Instant) -> bool {
        self.advance(now);
        let delta = lock(&self.shared).dir.network_remove(name);
        match delta {
            Some(delta) => {
                self.broadcast(delta);
                true
            }
            None => false,
        }
    }

    /// Creates or replaces a cluster-wide policy everywhere. `bytes` is
    /// the policy as the daemon encodes it; each member's daemon decodes
    /// and checks it ([`DirectoryEvent::PolicyUpsert`]).
    pub fn publish_policy(
        &mut self,
        name: &str,
        bytes: Vec<u8>,
        now: Instant,
    ) -> Result<(), OverlayError> {
        self.advance(now);
        let delta = lock(&self.shared).dir.policy_upsert(name, bytes)?;
        self.broadcast(delta);
        Ok(())
    }

    /// Removes a cluster-wide policy everywhere; false if it does not
    /// exist.
    pub fn remove_policy(&mut self, name: &str, now: Instant) -> bool {
        self.advance(now);
        let delta = lock(&self.shared).dir.policy_remove(name);
        match delta {
            Some(delta) => {
                self.broadcast(delta);
                true
            }
            None => false,
        }
    }

    /// Offers again a change to a policy made earlier at `version` (this
    /// host's daemon kept it across a restart): held and spread only if it
    /// is newer than what the cluster holds, which otherwise comes back
    /// here through anti-entropy.
    pub fn republish_policy(
        &mut self,
        name: &str,
        version: NetVersion,
        bytes: Option<Vec<u8>>,
        now: Instant,
    ) -> Result<(), OverlayError> {
        self.advance(now);
        let delta = lock(&self.shared)
            .dir
            .policy_restore(name, version, bytes)?;
        self.broadcast(delta);
        Ok(())
    }

    /// Publishes (or updates) one of this host's endpoints.
    pub fn publish_endpoint(
        &mut self,
        key: &str,
        record: PublishedEndpoint,
        now: Instant,
    ) -> Result<(), OverlayError> {
        self.advance(now);
        let delta = lock(&self.shared).dir.endpoint_upsert(key, record)?;
        self.broadcast(delta);
        Ok(())
    }

    /// Withdraws one of this host's endpoints; false if not published.
    pub fn remove_endpoint(&mut self, key: &str, now: Instant) -> bool {
        self.advance(now);
        let delta = lock(&self.shared).dir.endpoint_remove(key);
        match delta {
            Some(delta) => {
                self.broadcast(delta);
                true
            }
            None => false,
        }
    }

    // ---- membership bookkeeping --------------------------------------

    /// Moves the directory's events into ours (keeping their order with
    /// membership events) and refreshes its counters. Runs after every
    /// change, so [`Gossip::stats`] need not lock the directory.
    fn drain_directory_events(&mut self) {
        let mut shared = lock(&self.shared);
        while let Some(ev) = shared.dir.poll_event() {
            self.events.push_back(GossipEvent::Directory(ev));
        }
        self.stats.directory = shared.dir.stats();
    }

    /// Reacts to foca's notifications (and directory changes) after a call.
    fn react(&mut self) {
        self.drain_directory_events();
        // Superseding an identity is itself a foca call that notifies; the
        // loop is bounded because each round only declares older
        // identities down.
        for _ in 0..64 {
            if self.notes.is_empty() {
                break;
            }
            let notes = std::mem::take(&mut self.notes);
            let mut touched = BTreeSet::new();
            for note in notes {
                match note {
                    OwnedNotification::MemberUp(id) => {
                        touched.insert(id.meta.name.clone());
                        self.set_peer(id, MemberState::Alive);
                    }
                    OwnedNotification::MemberDown(id) => {
                        touched.insert(id.meta.name.clone());
                        self.set_peer(id, MemberState::Down);
                    }
                    OwnedNotification::Rename(old, new) => {
                        touched.insert(old.meta.name.clone());
                        touched.insert(new.meta.name.clone());
                        let state = self
                            .peers
                            .get(&old.addr())
                            .map_or(MemberState::Alive, |p| p.state);
                        self.set_peer(new, state);
                    }
                    OwnedNotification::Active => {
                        self.connected = true;
                        self.seeds.clear();
                        self.events.push_back(GossipEvent::Joined);
                        // After a leave, names were reported down while
                        // foca kept its view: report that view again.
                        touched.extend(self.names.keys().cloned());
                        // Pull the directory from someone right away.
                        if let Some(to) = self.random_up_member_any() {
                            self.send_digest(to, true);
                        }
                    }
                    OwnedNotification::Rejoin(id) => {
                        self.local = id;
                        if !self.connected {
                            // Renewed because a member we announced to
                            // knew us as down: announce the new identity
                            // right away rather than at the next retry.
                            let now = self.now;
                            for (at, backoff) in self.seeds.values_mut() {
                                *at = now;
                                *backoff = JOIN_RETRY_MIN;
                            }
                        }
                    }
                    OwnedNotification::Idle => {
                        self.connected = false;
                        self.events.push_back(GossipEvent::Alone);
                        self.seek_cluster();
                    }
                    OwnedNotification::Defunct => self.connected = false,
                }
            }
            for name in touched {
                self.refresh_name(&name);
            }
            self.drain_directory_events();
        }
    }

    /// Like `random_up_member`, but from foca's view (names may not be
    /// refreshed yet when foca reports `Active`).
    fn random_up_member_any(&mut self) -> Option<SocketAddr> {
        let up: Vec<SocketAddr> = self
            .peers
            .iter()
            .filter(|(_, p)| p.state.is_up())
            .map(|(a, _)| *a)
            .collect();
        if up.is_empty() {
            None
        } else {
            Some(up[self.rng.random_range(0..up.len())])
        }
    }

    fn set_peer(&mut self, id: NodeId, state: MemberState) {
        let addr = id.addr();
        if let Some(old) = self.peers.get(&addr) {
            if old.id.meta.name != id.meta.name {
                let old_name = old.id.meta.name.clone();
                if let Some(e) = self.names.get_mut(&old_name) {
                    e.addrs.retain(|a| *a != addr);
                }
            }
        }
        let entry = self.names.entry(id.meta.name.clone()).or_default();
        if !entry.addrs.contains(&addr) {
            entry.addrs.push(addr);
        }
        self.peers.insert(addr, Peer { id, state });
    }

    /// Recomputes what the daemon should believe about `name` and tells it
    /// what changed.
    fn refresh_name(&mut self, name: &str) {
        if self.left {
            return;
        }
        if name == self.local.meta.name {
            if self.names.get(name).is_some_and(|e| !e.addrs.is_empty()) {
                self.stats.name_conflicts += 1;
            }
            return;
        }
        let Some(entry) = self.names.get(name) else {
            return;
        };
        let best = entry
            .addrs
            .iter()
            .filter_map(|a| self.peers.get(a))
            .max_by(|a, b| a.id.rank().cmp(&b.id.rank()))
            .cloned();
        let stale: Vec<NodeId> = entry
            .addrs
            .iter()
            .filter_map(|a| self.peers.get(a))
            .filter(|p| p.state.is_up() && best.as_ref().is_some_and(|b| b.id.rank() > p.id.rank()))
            .map(|p| p.id.clone())
            .collect();
        let told = entry.told.clone();
        let now_state = best.map(|b| (b.id, b.state));
        if let Some(e) = self.names.get_mut(name) {
            e.told = now_state.clone();
        }
        match (told, now_state) {
            (before, Some((id, state))) if state.is_up() => {
                let was_up = before.as_ref().is_some_and(|(_, s)| s.is_up());
                let changed_id = before.as_ref().is_none_or(|(b, _)| *b != id);
                let was_down_before = before.as_ref().is_some_and(|(_, s)| !s.is_up());
                if !was_up
                    || changed_id
                    || (state == MemberState::Alive
                        && before
                            .as_ref()
                            .is_some_and(|(_, s)| *s == MemberState::Suspect))
                {
                    self.events
                        .push_back(GossipEvent::MemberUp(id.meta.clone()));
                }
                if state == MemberState::Suspect
                    && before
                        .as_ref()
                        .is_none_or(|(_, s)| *s != MemberState::Suspect)
                {
                    self.stats.suspicions += 1;
                    self.events
                        .push_back(GossipEvent::MemberSuspect(name.to_owned()));
                }
                if !was_up || changed_id {
                    lock(&self.shared).dir.member_alive(name, id.boot);
                }
                if was_down_before || (was_up && changed_id) {
                    // Back from a partition or a restart: reconcile now.
                    self.eager_sync.insert(name.to_owned());
                }
            }
            (Some((_, before)), _) if before.is_up() => {
                self.stats.members_down += 1;
                self.events
                    .push_back(GossipEvent::MemberDown(name.to_owned()));
                lock(&self.shared).dir.member_down(name);
            }
            _ => {}
        }
        self.drain_directory_events();
        if !stale.is_empty() && !self.left {
            self.with_foca(|foca, io| {
                foca.apply_many(stale.into_iter().map(Member::down), true, io)
            });
        }
    }

    /// Reads foca's member states: notices suspicion (foca does not notify
    /// it) and anything a notification missed.
    fn scan(&mut self) {
        let mut touched = BTreeSet::new();
        let mut seen = BTreeSet::new();
        // Clone only what differs: this runs often on large clusters.
        let mut changed: Vec<(NodeId, MemberState)> = Vec::new();
        for m in self.foca.iter_membership_state() {
            let state = MemberState::from(m.state());
            let addr = m.id().addr();
            seen.insert(addr);
            if self.peers.get(&addr).is_none_or(|p| {
                // Identities at one address differ in (boot, bump); a
                // change of anything else comes as a Rename notification.
                p.state != state
                    || p.id.boot != m.id().boot
                    || p.id.bump != m.id().bump
                    || p.id.meta.name != m.id().meta.name
            }) {
                changed.push((m.id().clone(), state));
            }
        }
        for (id, state) in changed {
            let addr = id.addr();
            {
                touched.insert(id.meta.name.clone());
                if let Some(p) = self.peers.get(&addr) {
                    touched.insert(p.id.meta.name.clone());
                }
                self.set_peer(id, state);
            }
        }
        // Members foca forgot (long down): forget them too.
        let gone: Vec<SocketAddr> = self
            .peers
            .keys()
            .filter(|a| !seen.contains(*a))
            .copied()
            .collect();
        for addr in gone {
            if let Some(p) = self.peers.remove(&addr) {
                if let Some(e) = self.names.get_mut(&p.id.meta.name) {
                    e.addrs.retain(|a| *a != addr);
                    if e.addrs.is_empty() && e.told.as_ref().is_none_or(|(_, s)| !s.is_up()) {
                        self.names.remove(&p.id.meta.name);
                    }
                }
            }
        }
        for name in touched {
            self.refresh_name(&name);
        }
    }
}

/// `interval` scaled by a random factor in [0.75, 1.25), so members do not
/// synchronize their rounds.
fn jitter(rng: &mut StdRng, interval: Duration) -> Duration {
    interval.mul_f64(rng.random_range(0.75..1.25))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{IpAddr, Ipv4Addr};

    fn meta(i: u8) -> MemberMeta {
        MemberMeta {
            name: format!("host{i}"),
            gossip_addr: SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 77, 0, i)), 7946),
            tunnel_addr: SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 77, 0, i)), 4789),
            tags: BTreeMap::new(),
        }
    }

    #[test]
    fn identity_conflicts_prefer_newer_boots() {
        let a = NodeId {
            meta: meta(1),
            boot: 5,
            bump: 0,
        };
        let renewed = a.renew().unwrap();
        assert!(renewed.win_addr_conflict(&a));
        assert!(!a.win_addr_conflict(&renewed));
        let restarted = NodeId {
            boot: 6,
            ..a.clone()
        };
        assert!(restarted.win_addr_conflict(&renewed));
        assert_eq!(a.addr(), meta(1).gossip_addr);
        // The stand-in for a seed shares its address only.
        assert_eq!(NodeId::placeholder(a.addr()).addr(), a.addr());
    }

    #[test]
    fn oversized_meta_is_refused() {
        let mut m = meta(1);
        m.tags.insert("cert".into(), "x".repeat(300));
        let err = Gossip::new(
            m,
            ClusterKey::from_material(b"k"),
            GossipConfig::lan(3, 1),
            1,
            Instant::now(),
        )
        .unwrap_err();
        assert!(matches!(err, OverlayError::MetaTooLarge(_)));
    }

    // ---- three members on a simulated network ----------------------------

    use crate::directory::{IpamConfig, NetworkSpec, PublishedEndpoint};
    use crate::sim::{Sim, SimConfig};
    use std::cell::RefCell;
    use std::rc::Rc;

    type Log = Rc<RefCell<Vec<(usize, Instant, GossipEvent)>>>;

    fn cluster_key() -> ClusterKey {
        ClusterKey::from_file_bytes(b"an example cluster passphrase").unwrap()
    }

    /// `n` members that all join member 0; returns once every member sees
    /// every other as alive.
    fn cluster(n: u8, loss: f64, seed: u64) -> (Sim, Log) {
        let start = Instant::now();
        let mut sim = Sim::new(
            SimConfig {
                loss,
                seed,
                ..SimConfig::default()
            },
            start,
        );
        let log: Log = Rc::default();
        let l = Rc::clone(&log);
        sim.set_observer(move |i, t, e| l.borrow_mut().push((i, t, e.clone())));
        for i in 0..n {
            sim.add_member(
                meta(i),
                cluster_key(),
                GossipConfig::lan(u32::from(n), 1),
                seed + u64::from(i),
            )
            .unwrap();
        }
        for i in 1..n {
            sim.with_member(usize::from(i), |g, now| g.join(meta(0).gossip_addr, now));
        }
        let took = sim.run_until_true(Duration::from_secs(30), |sim| {
            all_see_alive(sim, usize::from(n))
        });
        assert!(took.is_some(), "cluster of {n} did not form");
        (sim, log)
    }

    fn all_see_alive(sim: &Sim, n: usize) -> bool {
        (0..sim.len()).filter(|&i| sim.is_running(i)).all(|i| {
            sim.member(i)
                .members()
                .iter()
                .filter(|m| m.state == MemberState::Alive)
                .count()
                == n
        })
    }

    fn record(i: u8) -> PublishedEndpoint {
        PublishedEndpoint {
            network: "net-id".into(),
            container: format!("c{i}"),
            aliases: vec![format!("alias{i}")],
            mac: [0x02, 0x42, 0, 0, 0, i],
            ipv4: Some(Ipv4Addr::new(10, 9, 0, i)),
            ipv6: None,
            labels: [("role".to_owned(), format!("r{i}"))].into(),
        }
    }

    fn net_spec(name: &str) -> NetworkSpec {
        NetworkSpec {
            name: name.into(),
            id: format!("{name}-id"),
            ipam: vec![IpamConfig {
                subnet: "10.9.0.0/24".parse().unwrap(),
                ip_range: None,
                gateway: Some("10.9.0.1".parse().unwrap()),
            }],
            ipv6: false,
            internal: false,
            mtu: Some(1450),
            vni: None,
            options: BTreeMap::new(),
            labels: BTreeMap::new(),
            created: "2025-01-01T00:00:00Z".into(),
        }
    }

    fn knows(sim: &Sim, i: usize, host: &str, key: &str) -> bool {
        sim.member(i).directory().endpoint(host, key).is_some()
    }

    fn state_of(sim: &Sim, i: usize, name: &str) -> Option<MemberState> {
        sim.member(i).member(name).map(|m| m.state)
    }

    #[rstest::rstest]
    fn three_members_join(#[values(1, 2, 3, 4, 5)] seed: u64) {
        let (sim, log) = cluster(3, 0.0, seed);
        for i in 0..3 {
            let members = sim.member(i).members();
            assert_eq!(members.len(), 3);
            assert_eq!(members.iter().filter(|m| m.local).count(), 1);
            assert_eq!(members[2].meta, meta(2));
            assert_eq!(members[2].boot, 1);
        }
        let log = log.borrow();
        for i in 0..3 {
            let ups = log
                .iter()
                .filter(|(n, _, e)| *n == i && matches!(e, GossipEvent::MemberUp(_)))
                .count();
            assert!(ups >= 2, "member {i} saw {ups} MemberUp events");
        }
        assert!(log
            .iter()
            .any(|(n, _, e)| *n == 1 && *e == GossipEvent::Joined));
        assert!(sim.member(0).stats().auth_failures == 0);
    }

    #[rstest::rstest]
    fn endpoints_spread_and_vanish_when_their_host_dies(#[values(1, 2, 3, 4, 5)] seed: u64) {
        let (mut sim, log) = cluster(3, 0.02, seed);
        sim.with_member(2, |g, now| g.publish_endpoint("ep2", record(2), now))
            .unwrap();
        let took = sim
            .run_until_true(Duration::from_secs(5), |sim| {
                knows(sim, 0, "host2", "ep2") && knows(sim, 1, "host2", "ep2")
            })
            .expect("endpoint did not spread");
        assert!(took < Duration::from_secs(2), "{took:?}");
        assert!(log.borrow().iter().any(|(n, _, e)| *n == 0
            && matches!(e, GossipEvent::Directory(DirectoryEvent::EndpointUpsert { host, key, .. }) if host == "host2" && key == "ep2")));
        assert!(sim.member(0).stats().directory.applied >= 1);
        assert_eq!(
            sim.member(1)
                .directory()
                .hosts_on("net-id")
                .into_iter()
                .collect::<Vec<_>>(),
            vec!["host2"]
        );

        // SIGKILL host2: down everywhere, its endpoint gone, within 10 s.
        let killed_at = sim.now();
        sim.kill(2);
        let took = sim
            .run_until_true(Duration::from_secs(30), |sim| {
                (0..2).all(|i| {
                    state_of(sim, i, "host2") == Some(MemberState::Down)
                        && !knows(sim, i, "host2", "ep2")
                })
            })
            .expect("host2 never declared down");
        assert!(took < Duration::from_secs(10), "took {took:?}");
        let log = log.borrow();
        for i in 0..2 {
            let after: Vec<&GossipEvent> = log
                .iter()
                .filter(|(n, t, _)| *n == i && *t >= killed_at)
                .map(|(_, _, e)| e)
                .collect();
            let down = after
                .iter()
                .position(|e| **e == GossipEvent::MemberDown("host2".into()))
                .expect("MemberDown");
            let removed = after
                .iter()
                .position(|e| matches!(e, GossipEvent::Directory(DirectoryEvent::EndpointRemoved { host, .. }) if host == "host2"))
                .expect("EndpointRemoved");
            assert!(down < removed);
            // Counted: it was suspected before it was declared down.
            let stats = sim.member(i).stats();
            assert!(stats.suspicions >= 1, "host{i}: {stats:?}");
            assert!(stats.members_down >= 1, "host{i}: {stats:?}");
        }
    }

    #[rstest::rstest]
    fn networks_appear_everywhere_with_one_vni(#[values(1, 2, 3, 4, 5)] seed: u64) {
        let (mut sim, _log) = cluster(3, 0.02, seed);
        sim.with_member(0, |g, now| g.publish_network(net_spec("web"), now))
            .unwrap();
        sim.run_until_true(Duration::from_secs(5), |sim| {
            (0..3).all(|i| sim.member(i).directory().network("web").is_some())
        })
        .expect("network did not spread");
        let vnis: Vec<Vni> = (0..3)
            .map(|i| sim.member(i).directory().network("web").unwrap().vni)
            .collect();
        assert!(vnis.iter().all(|v| *v == vnis[0]));
        assert!(sim.with_member(1, |g, now| g.remove_network("web", now)));
        sim.run_until_true(Duration::from_secs(5), |sim| {
            (0..3).all(|i| sim.member(i).directory().network("web").is_none())
        })
        .expect("removal did not spread");
        assert!(!sim.with_member(1, |g, now| g.remove_network("web", now)));
    }

    use crate::vxlan::Vni;

    fn policy_of(sim: &Sim, i: usize, name: &str) -> Option<Vec<u8>> {
        sim.member(i)
            .directory()
            .policy(name)
            .map(|p| p.bytes.to_vec())
    }

    #[rstest::rstest]
    fn policies_spread_and_removals_win(#[values(1, 2, 3, 4, 5)] seed: u64) {
        let (mut sim, log) = cluster(3, 0.02, seed);
        sim.with_member(0, |g, now| g.publish_policy("web-db", b"v1".to_vec(), now))
            .unwrap();
        sim.run_until_true(Duration::from_secs(5), |sim| {
            (0..3).all(|i| policy_of(sim, i, "web-db").as_deref() == Some(b"v1"))
        })
        .expect("policy did not spread");
        assert!(log.borrow().iter().any(|(n, _, e)| *n == 2
            && matches!(e, GossipEvent::Directory(DirectoryEvent::PolicyUpsert { name, bytes, .. }) if name == "web-db" && bytes == b"v1")));
        // Replaced on one member, removed on another: the removal is the
        // last change everywhere.
        sim.with_member(1, |g, now| g.publish_policy("web-db", b"v2".to_vec(), now))
            .unwrap();
        sim.run_until_true(Duration::from_secs(5), |sim| {
            (0..3).all(|i| policy_of(sim, i, "web-db").as_deref() == Some(b"v2"))
        })
        .expect("replacement did not spread");
        assert!(sim.with_member(2, |g, now| g.remove_policy("web-db", now)));
        sim.run_until_true(Duration::from_secs(5), |sim| {
            (0..3).all(|i| policy_of(sim, i, "web-db").is_none())
        })
        .expect("removal did not spread");
        assert!(!sim.with_member(0, |g, now| g.remove_policy("web-db", now)));
        assert!(log.borrow().iter().any(|(n, _, e)| *n == 0
            && matches!(e, GossipEvent::Directory(DirectoryEvent::PolicyRemoved { name }) if name == "web-db")));
        // Too large for a gossip packet: refused before anything is sent.
        let big = sim.with_member(0, |g, now| g.publish_policy("big", vec![1; 2000], now));
        assert!(matches!(
            big,
            Err(OverlayError::Directory(
                directory::DirectoryError::TooLarge { .. }
            ))
        ));
    }

    /// A member that was down while policies changed gets them through
    /// anti-entropy when it is back; what it still had from before and
    /// offers again at its old version loses to the newer removal.
    #[rstest::rstest]
    fn a_host_back_from_down_converges_on_the_policies(#[values(1, 2, 3, 4, 5)] seed: u64) {
        let (mut sim, _log) = cluster(3, 0.01, seed);
        sim.with_member(0, |g, now| g.publish_policy("old", b"old".to_vec(), now))
            .unwrap();
        sim.run_until_true(Duration::from_secs(5), |sim| {
            policy_of(sim, 2, "old").is_some()
        })
        .expect("policy did not spread");
        let kept = sim
            .member(2)
            .directory()
            .policy("old")
            .map(|p| p.version.clone())
            .unwrap();
        sim.kill(2);
        sim.run_for(Duration::from_secs(1));
        assert!(sim.with_member(1, |g, now| g.remove_policy("old", now)));
        sim.with_member(0, |g, now| g.publish_policy("new", b"new".to_vec(), now))
            .unwrap();
        sim.run_for(Duration::from_secs(2));
        sim.restart(2, meta(2), cluster_key(), GossipConfig::lan(3, 2), 77)
            .unwrap();
        sim.with_member(2, |g, now| {
            g.republish_policy("old", kept, Some(b"old".to_vec()), now)
        })
        .unwrap();
        assert!(policy_of(&sim, 2, "old").is_some(), "held until it hears");
        sim.with_member(2, |g, now| g.join(meta(0).gossip_addr, now));
        let took = sim
            .run_until_true(Duration::from_secs(30), |sim| {
                (0..3).all(|i| {
                    policy_of(sim, i, "old").is_none()
                        && policy_of(sim, i, "new").as_deref() == Some(b"new")
                })
            })
            .expect("the restarted member did not converge");
        // One anti-entropy round or two (every 5 s).
        assert!(took < Duration::from_secs(20), "{took:?}");
        let states: Vec<Vec<u8>> = (0..3)
            .map(|i| sim.member(i).directory().canonical_state())
            .collect();
        assert!(states.iter().all(|s| *s == states[0]));
    }

    #[test]
    fn forged_policy_records_are_rejected_and_counted() {
        let now = Instant::now();
        let key = ClusterKey::from_material(b"k");
        let mut g = Gossip::new(meta(1), key.clone(), GossipConfig::lan(3, 1), 1, now).unwrap();
        let from = meta(2).gossip_addr;
        let mut nonces = NonceSequence::new(9, b"test");
        let version = NetVersion {
            clock: 9,
            origin: "host2".into(),
        };
        // Authentic (a member's key) but nothing a daemon publishes: no
        // name, empty content.
        for (name, bytes) in [("", b"x".to_vec()), ("p", Vec::new())] {
            let forged = Delta::Policy {
                name: name.into(),
                version: version.clone(),
                policy: Some(bytes),
            };
            let mut plain = vec![TAG_RECORDS];
            plain.extend(forged.encode());
            let mut buf = [0u8; 256];
            let n = key.seal(&mut nonces, &plain, &mut buf).unwrap();
            g.handle_datagram(from, &buf[..n], now);
        }
        // Cut short: a policy delta whose bytes end early.
        let mut plain = vec![TAG_RECORDS];
        let mut whole = Delta::Policy {
            name: "p".into(),
            version,
            policy: Some(b"rule".to_vec()),
        }
        .encode();
        whole.truncate(whole.len() - 2);
        plain.extend(whole);
        let mut buf = [0u8; 256];
        let n = key.seal(&mut nonces, &plain, &mut buf).unwrap();
        g.handle_datagram(from, &buf[..n], now);
        let s = g.stats();
        assert_eq!(s.directory.rejected, 2, "{s:?}");
        assert_eq!(s.decode_failures, 1, "{s:?}");
        assert_eq!(g.directory().policies().count(), 0);
        assert!(g.poll_event().is_none());
    }

    #[rstest::rstest]
    fn a_host_without_the_key_cannot_join_or_inject(#[values(1, 2, 3, 4, 5)] seed: u64) {
        let (mut sim, log) = cluster(3, 0.0, seed);
        let wrong = ClusterKey::from_file_bytes(b"not the cluster passphrase").unwrap();
        let outsider = sim
            .add_member(meta(9), wrong.clone(), GossipConfig::lan(4, 1), 99)
            .unwrap();
        sim.with_member(outsider, |g, now| g.join(meta(0).gossip_addr, now));
        // The outsider even publishes an endpoint and a network.
        sim.with_member(outsider, |g, now| {
            g.publish_endpoint("evil", record(9), now)
        })
        .unwrap();
        sim.with_member(outsider, |g, now| g.publish_network(net_spec("evil"), now))
            .unwrap();
        sim.run_for(Duration::from_secs(20));
        for i in 0..3 {
            assert!(sim.member(i).member("host9").is_none());
            assert!(sim.member(i).directory().network("evil").is_none());
            assert_eq!(sim.member(i).directory().endpoints().count(), 0);
        }
        assert!(sim.member(0).stats().auth_failures > 0);
        assert!(!log
            .borrow()
            .iter()
            .any(|(n, _, e)| *n == outsider && *e == GossipEvent::Joined));
        // Forged directory records under the wrong key: counted, ignored.
        let forged = Delta::Endpoint {
            origin: "host1".into(),
            generation: 1,
            seq: 99,
            key: "forged".into(),
            record: Some(record(7)),
        };
        let mut plain = vec![TAG_RECORDS];
        plain.extend(forged.encode());
        let mut nonces = NonceSequence::new(5, b"outsider");
        let mut buf = [0u8; 1500];
        let n = wrong.seal(&mut nonces, &plain, &mut buf).unwrap();
        let before = sim.member(0).stats().auth_failures;
        sim.with_member(0, |g, now| {
            g.handle_datagram(meta(9).gossip_addr, &buf[..n], now)
        });
        assert_eq!(sim.member(0).stats().auth_failures, before + 1);
        assert!(!knows(&sim, 0, "host1", "forged"));
    }

    #[rstest::rstest]
    fn leaving_is_seen_quickly(#[values(1, 2, 3, 4, 5)] seed: u64) {
        let (mut sim, log) = cluster(3, 0.0, seed);
        sim.with_member(1, |g, now| g.publish_endpoint("ep1", record(1), now))
            .unwrap();
        sim.run_for(Duration::from_secs(2));
        assert!(knows(&sim, 0, "host1", "ep1"));
        sim.with_member(1, |g, now| g.leave(now));
        let took = sim
            .run_until_true(Duration::from_secs(10), |sim| {
                [0, 2]
                    .iter()
                    .all(|&i| state_of(sim, i, "host1") == Some(MemberState::Down))
            })
            .expect("leave not seen");
        assert!(took < Duration::from_secs(1), "{took:?}");
        assert!(!knows(&sim, 0, "host1", "ep1"));
        assert!(log
            .borrow()
            .iter()
            .any(|(n, _, e)| *n == 1 && *e == GossipEvent::MemberDown("host0".into())));
        // And it can come back.
        sim.with_member(1, |g, now| g.join(meta(0).gossip_addr, now));
        sim.run_until_true(Duration::from_secs(10), |sim| all_see_alive(sim, 3))
            .expect("rejoin after leave");
        sim.run_until_true(Duration::from_secs(10), |sim| knows(sim, 0, "host1", "ep1"))
            .expect("endpoint back after rejoin");
    }

    #[rstest::rstest]
    fn a_restarted_host_supersedes_its_old_self(#[values(1, 2, 3, 4, 5)] seed: u64) {
        let (mut sim, log) = cluster(3, 0.01, seed);
        sim.with_member(2, |g, now| g.publish_endpoint("old", record(2), now))
            .unwrap();
        sim.run_until_true(Duration::from_secs(5), |sim| knows(sim, 0, "host2", "old"))
            .unwrap();
        // Crash and come back at once, same address, next boot generation,
        // with another endpoint.
        sim.kill(2);
        sim.run_for(Duration::from_millis(300));
        sim.restart(2, meta(2), cluster_key(), GossipConfig::lan(3, 2), 1234)
            .unwrap();
        sim.with_member(2, |g, now| g.join(meta(0).gossip_addr, now));
        sim.with_member(2, |g, now| g.publish_endpoint("new", record(3), now))
            .unwrap();
        sim.run_until_true(Duration::from_secs(20), |sim| {
            (0..2).all(|i| {
                knows(sim, i, "host2", "new")
                    && !knows(sim, i, "host2", "old")
                    && sim
                        .member(i)
                        .member("host2")
                        .is_some_and(|m| m.boot == 2 && m.state == MemberState::Alive)
            })
        })
        .expect("restart not reconciled");
        sim.run_for(Duration::from_secs(15));
        assert!(knows(&sim, 1, "host2", "new") && !knows(&sim, 1, "host2", "old"));
        assert!(log.borrow().iter().any(|(n, _, e)| *n == 0
            && matches!(e, GossipEvent::Directory(DirectoryEvent::EndpointRemoved { key, .. }) if key == "old")));
    }

    #[rstest::rstest]
    fn two_members_find_each_other_after_a_partition(#[values(1, 2, 3)] seed: u64) {
        let (mut sim, _log) = cluster(2, 0.01, seed);
        sim.with_member(1, |g, now| g.publish_endpoint("x", record(1), now))
            .unwrap();
        sim.run_for(Duration::from_secs(2));
        sim.set_group(1, 1);
        sim.run_until_true(Duration::from_secs(30), |sim| {
            state_of(sim, 0, "host1") == Some(MemberState::Down)
                && state_of(sim, 1, "host0") == Some(MemberState::Down)
        })
        .expect("partition not detected");
        sim.run_for(Duration::from_secs(60));
        sim.heal();
        let took = sim
            .run_until_true(Duration::from_secs(30), |sim| {
                all_see_alive(sim, 2) && knows(sim, 0, "host1", "x")
            })
            .expect("two members did not merge again");
        assert!(took <= Duration::from_secs(11), "{took:?}");
    }

    #[rstest::rstest]
    fn a_partition_heals_without_restart(#[values(1, 2, 3, 4, 5)] seed: u64) {
        let (mut sim, _log) = cluster(3, 0.01, seed);
        sim.with_member(2, |g, now| g.publish_endpoint("a", record(2), now))
            .unwrap();
        sim.run_for(Duration::from_secs(2));
        sim.set_group(2, 1);
        sim.run_until_true(Duration::from_secs(30), |sim| {
            state_of(sim, 0, "host2") == Some(MemberState::Down)
                && state_of(sim, 2, "host0") == Some(MemberState::Down)
        })
        .expect("partition not detected");
        assert!(!knows(&sim, 0, "host2", "a"));
        // Both sides change things while apart.
        sim.with_member(2, |g, now| g.remove_endpoint("a", now));
        sim.with_member(2, |g, now| g.publish_endpoint("b", record(4), now))
            .unwrap();
        sim.with_member(0, |g, now| g.publish_endpoint("c", record(5), now))
            .unwrap();
        sim.with_member(1, |g, now| g.publish_network(net_spec("during"), now))
            .unwrap();
        sim.run_for(Duration::from_secs(5));
        sim.heal();
        let took = sim
            .run_until_true(Duration::from_secs(60), |sim| {
                all_see_alive(sim, 3)
                    && (0..3).all(|i| {
                        let d = sim.member(i).directory();
                        d.endpoint("host2", "b").is_some()
                            && d.endpoint("host2", "a").is_none()
                            && d.endpoint("host0", "c").is_some()
                            && d.network("during").is_some()
                    })
            })
            .expect("partition did not heal");
        assert!(took < Duration::from_secs(30), "{took:?}");
        let states: Vec<Vec<u8>> = (0..3)
            .map(|i| sim.member(i).directory().canonical_state())
            .collect();
        assert!(states.iter().all(|s| *s == states[0]));
    }

    #[test]
    fn junk_is_counted_not_fatal() {
        let now = Instant::now();
        let key = ClusterKey::from_material(b"k");
        let mut g = Gossip::new(meta(1), key.clone(), GossipConfig::lan(3, 1), 1, now).unwrap();
        let from = meta(2).gossip_addr;
        g.handle_datagram(from, b"", now);
        g.handle_datagram(from, &[1u8; 100], now);
        assert_eq!(g.stats().auth_failures, 2);
        // Authenticated junk of every tag.
        let mut nonces = NonceSequence::new(9, b"test");
        for plain in [&[0u8, 1, 2, 3][..], &[1, 0xff, 0xff], &[2, 0xff], &[9], &[]] {
            let mut buf = [0u8; 128];
            let n = key.seal(&mut nonces, plain, &mut buf).unwrap();
            g.handle_datagram(from, &buf[..n], now);
        }
        let s = g.stats();
        assert_eq!(s.auth_failures, 2);
        assert_eq!(s.decode_failures + s.protocol_errors, 5, "{s:?}");
        assert!(g.poll_event().is_none());
    }
}
