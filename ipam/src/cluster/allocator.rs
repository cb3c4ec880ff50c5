//! One host's allocator for one cluster-wide network: its subnets'
//! allocations, the ownership table, and the request/donate protocol.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use crate::addr::{from_u128, net_bounds, to_u128, AddrRange, Family};
use crate::cluster::error::ClusterError;
use crate::cluster::message::{Advert, Decline, DecodeError, Message, Request, Update};
use crate::cluster::table::{HostName, OwnershipTable};
use crate::subnet::{Subnet, SubnetConfig};
use crate::Error;

/// Timers and policy of a [`ClusterAllocator`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClusterConfig {
    /// How long a host must have been dead before
    /// [`ClusterAllocator::reclaim`] hands its ranges over. Longer than any
    /// partition the cluster should ride out (see the module documentation).
    pub quarantine: Duration,
    /// How long to wait for an answer to a request for space before asking
    /// the next host.
    pub request_timeout: Duration,
    /// How many requests to send (to different hosts when there are) before
    /// giving up with [`Event::RequestFailed`].
    pub request_attempts: u32,
    /// The least time between two adverts of this host's free space.
    pub advert_interval: Duration,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            quarantine: Duration::from_secs(300),
            request_timeout: Duration::from_secs(2),
            request_attempts: 3,
            advert_interval: Duration::from_secs(1),
        }
    }
}

/// Where a [`Transmit`] goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    /// Every other host (by gossip dissemination).
    All,
    /// One host.
    Host(HostName),
}

/// A message for the transport to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    /// Its destination.
    pub to: Destination,
    /// The message ([`Message::encode`] gives its bytes).
    pub message: Message,
}

/// Something the daemon should know about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// This host gained addresses of `family`: retry the connects that got
    /// [`ClusterError::AwaitingSpace`].
    SpaceArrived {
        /// The family gained.
        family: Family,
    },
    /// No host gave space of `family`: fail the connects waiting for it with
    /// `error`.
    RequestFailed {
        /// The family asked for.
        family: Family,
        /// Why, as a sentence.
        error: ClusterError,
    },
    /// Another host now owns ranges this host owned: the cluster declared
    /// this host dead and reclaimed them (a partition longer than the
    /// quarantine, or a manual reclaim). Addresses in `in_use` are allocated
    /// here and may be handed out again by the new owner: the daemon should
    /// warn, and reconnect those endpoints.
    OwnershipLost {
        /// The ranges lost.
        ranges: Vec<AddrRange>,
        /// Local allocations inside them.
        in_use: Vec<IpAddr>,
    },
}

/// What a reclaim did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reclaimed {
    /// The host that now owns the dead host's ranges.
    pub heir: HostName,
    /// The ranges handed over (empty when the dead host owned nothing).
    pub ranges: Vec<AddrRange>,
}

/// Counters, for `vswitch stats` and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Updates merged.
    pub updates_received: u64,
    /// Tokens added or changed by merges.
    pub entries_changed: u64,
    /// Tokens seen at an equal version with another owner (never, unless a
    /// live host was reclaimed).
    pub conflicts: u64,
    /// Tokens received outside the network's subnets.
    pub rejected_entries: u64,
    /// Messages that did not decode.
    pub decode_errors: u64,
    /// Requests for space sent.
    pub requests_sent: u64,
    /// Requests for space answered with a range.
    pub donations: u64,
    /// Requests for space answered with a decline.
    pub declines_sent: u64,
    /// Declines received for a pending request.
    pub declines_received: u64,
    /// Requests seen again (answered again, without giving more).
    pub duplicate_requests: u64,
    /// Requests or declines for another host, or from this one.
    pub misdirected: u64,
    /// Times another host took ranges this host owned.
    pub ownership_lost: u64,
    /// Reclaims of a dead host's ranges done here.
    pub reclaims: u64,
}

/// A request for space in flight.
#[derive(Debug, Clone)]
struct Pending {
    asked: HostName,
    seq: u64,
    deadline: Instant,
    round: Round,
}

/// The requests sent since an allocation first found no space.
#[derive(Debug, Clone, Default)]
struct Round {
    attempts: u32,
    /// Hosts asked (timed out or declined).
    tried: BTreeSet<HostName>,
    /// Hosts that declined: not asked again in this round.
    declined: BTreeSet<HostName>,
}

/// One host's address allocator for one cluster-wide network.
///
/// It allocates only inside the ranges this host owns, asks other hosts for
/// a range when it runs out, gives ranges to hosts that ask, and merges what
/// other hosts say. Sans-IO, like quinn-proto: feed it messages with
/// [`handle_message`](Self::handle_message), drive its timers with
/// [`poll_timeout`](Self::poll_timeout) and
/// [`handle_timeout`](Self::handle_timeout), and send what
/// [`poll_transmit`](Self::poll_transmit) returns. Persist
/// [`state`](Self::state) after each call that changed ownership, before
/// sending its transmits: a host that forgets a range it gave away would
/// hand out its addresses again after a restart.
#[derive(Debug, Clone)]
pub struct ClusterAllocator {
    me: HostName,
    network: String,
    config: ClusterConfig,
    table: OwnershipTable,
    subnets: Vec<Subnet>,
    adverts: BTreeMap<HostName, Advert>,
    /// The free counts last advertised, `None` to force a new advert.
    published: Option<(u128, u128)>,
    advert_due: Option<Instant>,
    last_advert: Option<Instant>,
    pending: BTreeMap<Family, Pending>,
    /// Per requester and family: the last request seq answered, and whether
    /// it got space.
    served: BTreeMap<(HostName, Family), (u64, bool)>,
    outbox: VecDeque<Transmit>,
    events: VecDeque<Event>,
    stats: Stats,
}

impl ClusterAllocator {
    /// The allocator of host `me` for a network created with `configs`
    /// (its subnets) whose ranges start split among `members` (see
    /// [`OwnershipTable::new`]; every host must pass the same list).
    pub fn new(
        me: HostName,
        network: impl Into<String>,
        configs: &[SubnetConfig],
        members: &[HostName],
        config: ClusterConfig,
    ) -> Result<Self, ClusterError> {
        let network = network.into();
        let subnets = build_subnets(&network, configs)?;
        let nets: Vec<_> = subnets.iter().map(Subnet::subnet).collect();
        let table = OwnershipTable::new(&network, &nets, members)?;
        Ok(Self::with_table(
            me,
            network,
            subnets,
            table,
            BTreeMap::new(),
            config,
        ))
    }

    /// The allocator rebuilt from a stored [`state`](Self::state); then
    /// [`restore_address`](Self::restore_address) marks the endpoints'
    /// addresses. Its first advert is due at `now`.
    pub fn restore(
        me: HostName,
        network: impl Into<String>,
        configs: &[SubnetConfig],
        state: &Update,
        config: ClusterConfig,
        now: Instant,
    ) -> Result<Self, ClusterError> {
        let network = network.into();
        let subnets = build_subnets(&network, configs)?;
        let nets: Vec<_> = subnets.iter().map(Subnet::subnet).collect();
        let table = OwnershipTable::from_entries(&network, &nets, &state.entries)?;
        let adverts = state.adverts.iter().cloned().collect();
        let mut restored = Self::with_table(me, network, subnets, table, adverts, config);
        restored.advert_due = Some(now);
        Ok(restored)
    }

    fn with_table(
        me: HostName,
        network: String,
        subnets: Vec<Subnet>,
        table: OwnershipTable,
        adverts: BTreeMap<HostName, Advert>,
        config: ClusterConfig,
    ) -> Self {
        ClusterAllocator {
            me,
            network,
            config,
            table,
            subnets,
            adverts,
            published: None,
            advert_due: None,
            last_advert: None,
            pending: BTreeMap::new(),
            served: BTreeMap::new(),
            outbox: VecDeque::new(),
            events: VecDeque::new(),
            stats: Stats::default(),
        }
    }

    /// This host.
    pub fn me(&self) -> &HostName {
        &self.me
    }

    /// The network's name.
    pub fn network(&self) -> &str {
        &self.network
    }

    /// The timers and policy.
    pub fn config(&self) -> &ClusterConfig {
        &self.config
    }

    /// The ownership table as this host sees it.
    pub fn table(&self) -> &OwnershipTable {
        &self.table
    }

    /// The network's subnets with this host's allocations.
    pub fn subnets(&self) -> &[Subnet] {
        &self.subnets
    }

    /// The counters.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// The free-space adverts known, by host.
    pub fn adverts(&self) -> &BTreeMap<HostName, Advert> {
        &self.adverts
    }

    /// The ranges this host owns, lowest first.
    pub fn owned(&self) -> Vec<AddrRange> {
        self.table.owned_by(self.me.as_str())
    }

    /// The addresses allocated on this host, lowest first.
    pub fn allocations(&self) -> Vec<IpAddr> {
        let mut all: Vec<IpAddr> = self.subnets.iter().flat_map(Subnet::allocations).collect();
        all.sort_unstable();
        all
    }

    /// Whether `ip` is allocated on this host.
    pub fn is_allocated(&self, ip: IpAddr) -> bool {
        self.subnets.iter().any(|s| s.is_allocated(ip))
    }

    /// How many dynamic addresses of `family` this host could still hand out.
    pub fn free(&self, family: Family) -> u128 {
        let owned = self.table.token_ranges_of(self.me.as_str());
        self.subnets
            .iter()
            .filter(|s| s.family() == family)
            .map(|s| {
                owned
                    .iter()
                    .filter_map(|r| clip_dynamic(s, r))
                    .map(|(lo, hi)| free_in(s, lo, hi))
                    .fold(0u128, u128::saturating_add)
            })
            .fold(0, u128::saturating_add)
    }

    /// The whole state: every token and every advert. Store it (see
    /// [`restore`](Self::restore)), and send it now and then to a random
    /// member for anti-entropy.
    pub fn state(&self) -> Update {
        Update {
            entries: self.table.entries(),
            adverts: self.adverts.iter().map(|(h, a)| (h.clone(), *a)).collect(),
        }
    }

    /// The whole state in updates of at most `max_entries` entries (at
    /// least 1), for transports with a size limit; the first carries the
    /// adverts. Entries describe themselves, so any subset is safe to send.
    pub fn state_chunks(&self, max_entries: usize) -> Vec<Update> {
        let mut chunks: Vec<Update> = self
            .table
            .entries()
            .chunks(max_entries.max(1))
            .map(|c| Update {
                entries: c.to_vec(),
                adverts: Vec::new(),
            })
            .collect();
        if let Some(first) = chunks.first_mut() {
            first.adverts = self.adverts.iter().map(|(h, a)| (h.clone(), *a)).collect();
        }
        chunks
    }

    /// Allocates a dynamic address of `family` inside the ranges this host
    /// owns. When it owns none free, it asks the host that advertises the
    /// most free space for a range and returns
    /// [`ClusterError::AwaitingSpace`]: retry on [`Event::SpaceArrived`];
    /// [`ClusterError::NoFreeAddress`] when no host is known to have any.
    pub fn allocate(&mut self, family: Family, now: Instant) -> Result<IpAddr, ClusterError> {
        let owned = self.owned();
        let mut any = false;
        for s in self.subnets.iter_mut().filter(|s| s.family() == family) {
            any = true;
            match s.allocate_within(&owned) {
                Ok(ip) => {
                    self.schedule_advert(now);
                    return Ok(ip);
                }
                Err(Error::ExhaustedOwned { .. }) => {}
                Err(e) => return Err(e.in_network(&self.network).into()),
            }
        }
        if !any {
            return Err(Error::NoSubnetForFamily {
                network: self.network.clone(),
                family,
            }
            .into());
        }
        self.need_space(family, now)
    }

    /// Allocates `ip` (`--ip`), only if this host owns the range holding
    /// it; otherwise [`ClusterError::NotOwner`] names the host that does.
    pub fn allocate_static(&mut self, ip: IpAddr, now: Instant) -> Result<IpAddr, ClusterError> {
        let owner = match self.table.owner_of(ip) {
            Some(owner) => owner,
            None => return Err(self.outside(ip).into()),
        };
        if *owner != self.me {
            return Err(ClusterError::NotOwner {
                ip,
                network: self.network.clone(),
                owner: owner.clone(),
            });
        }
        let network = self.network.clone();
        let subnet = self.subnet_mut(ip)?;
        let got = subnet
            .allocate_static(ip)
            .map_err(|e| e.in_network(&network))?;
        self.schedule_advert(now);
        Ok(got)
    }

    /// Returns `ip` to this host's free space.
    pub fn release(&mut self, ip: IpAddr, now: Instant) -> Result<(), ClusterError> {
        let network = self.network.clone();
        let subnet = self.subnet_mut(ip)?;
        subnet.release(ip).map_err(|e| e.in_network(&network))?;
        self.schedule_advert(now);
        Ok(())
    }

    /// Marks an endpoint's address allocated while rebuilding state at
    /// daemon start (see [`Subnet::restore`]).
    pub fn restore_address(&mut self, ip: IpAddr) -> Result<(), ClusterError> {
        let network = self.network.clone();
        let subnet = self.subnet_mut(ip)?;
        subnet.restore(ip).map_err(|e| e.in_network(&network))?;
        self.published = None;
        Ok(())
    }

    /// Decodes and handles a message from the transport. A message that
    /// does not decode is counted and changes nothing.
    pub fn handle_bytes(&mut self, bytes: &[u8], now: Instant) -> Result<(), DecodeError> {
        match Message::decode(bytes) {
            Ok(msg) => {
                self.handle_message(msg, now);
                Ok(())
            }
            Err(e) => {
                self.stats.decode_errors += 1;
                Err(e)
            }
        }
    }

    /// Handles a message from another host.
    pub fn handle_message(&mut self, msg: Message, now: Instant) {
        match msg {
            Message::Update(u) => self.merge(&u, now),
            Message::Request(r) => self.serve(r, now),
            Message::Decline(d) => {
                if d.to != self.me {
                    self.stats.misdirected += 1;
                    return;
                }
                let matches = self
                    .pending
                    .get(&d.family)
                    .is_some_and(|p| p.asked == d.from && p.seq == d.seq);
                if matches {
                    self.stats.declines_received += 1;
                    if let Some(p) = self.pending.get_mut(&d.family) {
                        p.round.declined.insert(d.from);
                    }
                    self.retry_or_fail(d.family, now);
                }
            }
        }
    }

    /// Merges another host's entries and adverts (a delta, or its whole
    /// state for anti-entropy).
    pub fn merge(&mut self, update: &Update, now: Instant) {
        self.stats.updates_received += 1;
        let before = self.owned();
        let out = self.table.merge(&update.entries);
        self.stats.entries_changed += out.changed as u64;
        self.stats.conflicts += out.conflicts as u64;
        self.stats.rejected_entries += out.rejected as u64;
        for (host, advert) in &update.adverts {
            if *host == self.me {
                // Our own advert, as others last saw it: after a restart from
                // older state it may be newer than ours; continue after it.
                let mine = self.adverts.get(&self.me).map_or(0, |a| a.seq);
                if advert.seq > mine {
                    self.adverts.insert(host.clone(), *advert);
                    self.published = None;
                    self.schedule_advert(now);
                }
                continue;
            }
            match self.adverts.get(host) {
                Some(known) if known.seq >= advert.seq => {}
                _ => {
                    self.adverts.insert(host.clone(), *advert);
                }
            }
        }
        if out.changed > 0 {
            self.ownership_changed(&before, now);
        }
    }

    /// Hands every range of the dead host `dead` to the live host with the
    /// lowest name (this host counts as live), once `dead` has been dead for
    /// the quarantine: `declared_dead_at` is when membership declared it
    /// dead. Every host that runs this with the same table and the same live
    /// set computes the same result, so all of them may run it.
    pub fn reclaim(
        &mut self,
        dead: &HostName,
        live: &[HostName],
        declared_dead_at: Instant,
        now: Instant,
    ) -> Result<Reclaimed, ClusterError> {
        let waited = now.saturating_duration_since(declared_dead_at);
        if waited < self.config.quarantine {
            return Err(ClusterError::Quarantined {
                host: dead.clone(),
                waited,
                remaining: self.config.quarantine - waited,
            });
        }
        self.reclaim_now(dead, live, now)
    }

    /// As [`reclaim`](Self::reclaim), without the quarantine: the
    /// operator's `vswitch ipam reclaim HOST`, for a host known to be gone.
    pub fn reclaim_now(
        &mut self,
        dead: &HostName,
        live: &[HostName],
        now: Instant,
    ) -> Result<Reclaimed, ClusterError> {
        if *dead == self.me {
            return Err(ClusterError::ReclaimSelf {
                host: self.me.clone(),
            });
        }
        if live.contains(dead) {
            return Err(ClusterError::ReclaimLive { host: dead.clone() });
        }
        let heir = live
            .iter()
            .chain(std::iter::once(&self.me))
            .min()
            .expect("this host is live")
            .clone();
        let ranges = self.table.token_ranges_of(dead.as_str());
        let before = self.owned();
        let changed = self.table.reclaim(dead.as_str(), &heir);
        if !changed.is_empty() {
            self.stats.reclaims += 1;
            let update = self.update_for(changed, now);
            self.outbox.push_back(Transmit {
                to: Destination::All,
                message: Message::Update(update),
            });
            self.ownership_changed(&before, now);
        }
        Ok(Reclaimed { heir, ranges })
    }

    /// The next message to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.outbox.pop_front()
    }

    /// The next event for the daemon.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When [`handle_timeout`](Self::handle_timeout) should next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.pending
            .values()
            .map(|p| p.deadline)
            .chain(self.advert_due)
            .min()
    }

    /// Runs the timers due at `now`: adverts of free space, and requests that
    /// went unanswered (asks the next host, or gives up).
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.advert_due.is_some_and(|due| due <= now) {
            self.advert_due = None;
            if self.publish_advert(now) {
                let advert = self.adverts[&self.me];
                self.outbox.push_back(Transmit {
                    to: Destination::All,
                    message: Message::Update(Update {
                        entries: Vec::new(),
                        adverts: vec![(self.me.clone(), advert)],
                    }),
                });
            }
        }
        let expired: Vec<Family> = self
            .pending
            .iter()
            .filter(|(_, p)| p.deadline <= now)
            .map(|(&f, _)| f)
            .collect();
        for family in expired {
            self.retry_or_fail(family, now);
        }
    }

    // ---- internals ----

    fn outside(&self, ip: IpAddr) -> Error {
        Error::AddressOutside {
            ip,
            network: Some(self.network.clone()),
            subnets: self.subnets.iter().map(Subnet::subnet).collect(),
        }
    }

    fn subnet_mut(&mut self, ip: IpAddr) -> Result<&mut Subnet, ClusterError> {
        let err = self.outside(ip);
        self.subnets
            .iter_mut()
            .find(|s| s.contains(ip))
            .ok_or(ClusterError::Ipam(err))
    }

    /// Out of space: ask a host (once per family at a time).
    fn need_space(&mut self, family: Family, now: Instant) -> Result<IpAddr, ClusterError> {
        if let Some(p) = self.pending.get(&family) {
            return Err(ClusterError::AwaitingSpace {
                network: self.network.clone(),
                family,
                asked: p.asked.clone(),
            });
        }
        match self.ask(family, now, Round::default()) {
            Some(asked) => Err(ClusterError::AwaitingSpace {
                network: self.network.clone(),
                family,
                asked,
            }),
            None => Err(self.no_free_address(family)),
        }
    }

    fn no_free_address(&self, family: Family) -> ClusterError {
        ClusterError::NoFreeAddress {
            network: self.network.clone(),
            family,
            pools: self
                .subnets
                .iter()
                .filter(|s| s.family() == family)
                .map(Subnet::subnet)
                .collect(),
        }
    }

    /// Sends a request to the best host not tried in this round (or, when
    /// all were, the best that did not decline), and records it as pending.
    fn ask(&mut self, family: Family, now: Instant, round: Round) -> Option<HostName> {
        let asked = self
            .choose_donor(family, &round.tried)
            .or_else(|| self.choose_donor(family, &round.declined))?;
        let seq = self.bump_seq();
        self.stats.requests_sent += 1;
        self.outbox.push_back(Transmit {
            to: Destination::Host(asked.clone()),
            message: Message::Request(Request {
                from: self.me.clone(),
                to: asked.clone(),
                family,
                seq,
            }),
        });
        self.pending.insert(
            family,
            Pending {
                asked: asked.clone(),
                seq,
                deadline: now + self.config.request_timeout,
                round: Round {
                    attempts: round.attempts + 1,
                    ..round
                },
            },
        );
        Some(asked)
    }

    /// The pending request of `family` failed (declined or timed out): ask
    /// the next host, or give up.
    fn retry_or_fail(&mut self, family: Family, now: Instant) {
        let Some(p) = self.pending.remove(&family) else {
            return;
        };
        let mut round = p.round;
        round.tried.insert(p.asked);
        let error = if round.attempts >= self.config.request_attempts {
            if round.declined.len() == round.tried.len() {
                self.no_free_address(family)
            } else {
                ClusterError::NoAnswer {
                    network: self.network.clone(),
                    family,
                    attempts: round.attempts,
                }
            }
        } else if self.ask(family, now, round).is_some() {
            return;
        } else {
            self.no_free_address(family)
        };
        self.events
            .push_back(Event::RequestFailed { family, error });
    }

    /// The host to ask for `family` space: among the other hosts that own
    /// dynamic addresses of `family`, not in `exclude` and not advertising
    /// zero free, the one advertising the most (a host not yet heard from
    /// counts with the size of its ranges); ties go to the lower name.
    fn choose_donor(&self, family: Family, exclude: &BTreeSet<HostName>) -> Option<HostName> {
        let mut best: Option<(u128, &HostName)> = None;
        for host in self.table.owners() {
            if *host == self.me || exclude.contains(host) {
                continue;
            }
            let size = self.dynamic_size_of(host, family);
            if size == 0 {
                continue;
            }
            let score = self.adverts.get(host).map_or(size, |a| a.free(family));
            if score == 0 {
                continue;
            }
            if best.is_none_or(|(s, _)| score > s) {
                best = Some((score, host));
            }
        }
        best.map(|(_, h)| h.clone())
    }

    /// How many dynamic addresses of `family` `host`'s ranges hold.
    fn dynamic_size_of(&self, host: &HostName, family: Family) -> u128 {
        let ranges = self.table.token_ranges_of(host.as_str());
        self.subnets
            .iter()
            .filter(|s| s.family() == family)
            .flat_map(|s| ranges.iter().filter_map(move |r| clip_dynamic(s, r)))
            .map(|(lo, hi)| (hi - lo).saturating_add(1))
            .fold(0, u128::saturating_add)
    }

    /// Answers a request: a range, or a decline; the same answer again for a
    /// duplicate.
    fn serve(&mut self, r: Request, now: Instant) {
        if r.to != self.me || r.from == self.me {
            self.stats.misdirected += 1;
            return;
        }
        let key = (r.from.clone(), r.family);
        if let Some(&(seq, donated)) = self.served.get(&key) {
            if r.seq <= seq {
                self.stats.duplicate_requests += 1;
                if donated {
                    let theirs: Vec<IpAddr> = self
                        .table
                        .entries()
                        .into_iter()
                        .filter(|e| e.owner == r.from)
                        .map(|e| e.start)
                        .collect();
                    let update = self.update_for(theirs, now);
                    self.send_to(&r.from, Message::Update(update));
                } else {
                    self.decline(&r);
                }
                return;
            }
        }
        let donated = match self.donation(r.family) {
            Some(block) => {
                let changed = self
                    .table
                    .donate(&self.me, block, &r.from)
                    .expect("a donation lies in one range this host owns");
                self.stats.donations += 1;
                let update = self.update_for(changed, now);
                self.send_to(&r.from, Message::Update(update.clone()));
                self.outbox.push_back(Transmit {
                    to: Destination::All,
                    message: Message::Update(update),
                });
                true
            }
            None => {
                self.decline(&r);
                false
            }
        };
        self.served.insert(key, (r.seq, donated));
    }

    fn decline(&mut self, r: &Request) {
        self.stats.declines_sent += 1;
        self.send_to(
            &r.from,
            Message::Decline(Decline {
                from: self.me.clone(),
                to: r.from.clone(),
                family: r.family,
                seq: r.seq,
            }),
        );
    }

    fn send_to(&mut self, host: &HostName, message: Message) {
        self.outbox.push_back(Transmit {
            to: Destination::Host(host.clone()),
            message,
        });
    }

    /// The block to give away for a request of `family`: the upper half of
    /// the largest run of free dynamic addresses inside one token range this
    /// host owns (at least one address), or `None` when it has none free.
    fn donation(&self, family: Family) -> Option<AddrRange> {
        let owned = self.table.token_ranges_of(self.me.as_str());
        // (usable addresses, -start, start, end, subnet index): the largest
        // run wins, the lowest one among equals.
        let mut best: Option<(u128, u128, u128, usize)> = None;
        for (si, s) in self.subnets.iter().enumerate() {
            if s.family() != family {
                continue;
            }
            for r in &owned {
                let Some((lo, hi)) = clip_dynamic(s, r) else {
                    continue;
                };
                for (a, b) in free_runs(s, lo, hi) {
                    let usable = usable_in(s, a, b);
                    if usable > 0
                        && best.is_none_or(|(u, ba, _, _)| usable > u || (usable == u && a < ba))
                    {
                        best = Some((usable, a, b, si));
                    }
                }
            }
        }
        let (usable, a, b, si) = best?;
        let s = &self.subnets[si];
        let want = (usable / 2).max(1);
        // Walk down from the top until the block holds `want` usable addresses.
        let mut m = b - (want - 1);
        while m > a && usable_in(s, m, b) < want {
            m -= 1;
        }
        AddrRange::new(from_u128(family, m), from_u128(family, b)).ok()
    }

    fn bump_seq(&mut self) -> u64 {
        let advert = self.adverts.entry(self.me.clone()).or_insert(Advert {
            seq: 0,
            free_v4: 0,
            free_v6: 0,
        });
        advert.seq = advert.seq.saturating_add(1);
        advert.seq
    }

    /// Brings this host's advert up to date; returns whether it changed.
    fn publish_advert(&mut self, now: Instant) -> bool {
        let free = (self.free(Family::V4), self.free(Family::V6));
        if self.published == Some(free) && self.adverts.contains_key(&self.me) {
            return false;
        }
        let seq = self.bump_seq();
        self.adverts.insert(
            self.me.clone(),
            Advert {
                seq,
                free_v4: free.0,
                free_v6: free.1,
            },
        );
        self.published = Some(free);
        self.last_advert = Some(now);
        true
    }

    /// Schedules an advert, no sooner than the advert interval after the last.
    fn schedule_advert(&mut self, now: Instant) {
        if self.advert_due.is_none() {
            let due = self
                .last_advert
                .map_or(now, |last| (last + self.config.advert_interval).max(now));
            self.advert_due = Some(due);
        }
    }

    /// A delta for `tokens` with this host's fresh advert.
    fn update_for(&mut self, tokens: Vec<IpAddr>, now: Instant) -> Update {
        self.publish_advert(now);
        Update {
            entries: self.table.delta(tokens),
            adverts: vec![(self.me.clone(), self.adverts[&self.me])],
        }
    }

    /// Reports what a merge or reclaim did to this host's ranges.
    fn ownership_changed(&mut self, before: &[AddrRange], now: Instant) {
        let after = self.owned();
        let lost = subtract(before, &after);
        let gained = subtract(&after, before);
        if lost.is_empty() && gained.is_empty() {
            return;
        }
        self.schedule_advert(now);
        if !lost.is_empty() {
            self.stats.ownership_lost += 1;
            let in_use = self
                .allocations()
                .into_iter()
                .filter(|&ip| lost.iter().any(|r| r.contains(ip)))
                .collect();
            self.events.push_back(Event::OwnershipLost {
                ranges: lost,
                in_use,
            });
        }
        for family in [Family::V4, Family::V6] {
            let dynamic = self
                .subnets
                .iter()
                .filter(|s| s.family() == family)
                .any(|s| gained.iter().any(|r| clip_dynamic(s, r).is_some()));
            if dynamic {
                self.pending.remove(&family);
                self.events.push_back(Event::SpaceArrived { family });
            }
        }
    }
}

fn build_subnets(network: &str, configs: &[SubnetConfig]) -> Result<Vec<Subnet>, ClusterError> {
    configs
        .iter()
        .map(|c| Subnet::from_config(c).map_err(|e| e.in_network(network).into()))
        .collect()
}

/// `r` clipped to the subnet's dynamic range, as integers.
fn clip_dynamic(s: &Subnet, r: &AddrRange) -> Option<(u128, u128)> {
    if r.family() != s.family() {
        return None;
    }
    let (dlo, dhi) = net_bounds(&s.pool());
    let (lo, hi) = r.bounds();
    let (lo, hi) = (lo.max(dlo), hi.min(dhi));
    (lo <= hi).then_some((lo, hi))
}

/// The subnet's reserved addresses (network, gateway, IPv4 broadcast).
fn reserved(s: &Subnet) -> impl Iterator<Item = u128> {
    let net = s.subnet();
    let (first, last) = net_bounds(&net);
    let gateway = to_u128(s.gateway());
    let broadcast = (s.family() == Family::V4).then_some(last);
    [Some(first), Some(gateway), broadcast]
        .into_iter()
        .flatten()
}

/// Addresses in `lo..=hi` that are not reserved (allocated or not).
fn usable_in(s: &Subnet, lo: u128, hi: u128) -> u128 {
    let mut seen = BTreeSet::new();
    let reserved = reserved(s)
        .filter(|v| (lo..=hi).contains(v) && seen.insert(*v))
        .count() as u128;
    (hi - lo).saturating_add(1) - reserved
}

/// Free addresses in `lo..=hi`: neither reserved nor allocated.
fn free_in(s: &Subnet, lo: u128, hi: u128) -> u128 {
    let allocated = allocated_in(s, lo, hi).count() as u128;
    usable_in(s, lo, hi).saturating_sub(allocated)
}

fn allocated_in(s: &Subnet, lo: u128, hi: u128) -> impl Iterator<Item = u128> + '_ {
    s.allocations()
        .map(to_u128)
        .skip_while(move |&v| v < lo)
        .take_while(move |&v| v <= hi)
}

/// The maximal runs of unallocated addresses in `lo..=hi`.
fn free_runs(s: &Subnet, lo: u128, hi: u128) -> Vec<(u128, u128)> {
    let mut runs = Vec::new();
    let mut start = Some(lo);
    for v in allocated_in(s, lo, hi) {
        if let Some(a) = start {
            if a < v {
                runs.push((a, v - 1));
            }
        }
        start = v.checked_add(1).filter(|&n| n <= hi);
    }
    if let Some(a) = start {
        runs.push((a, hi));
    }
    runs
}

/// The addresses of `a` not in `b` (both sorted, disjoint within a family).
fn subtract(a: &[AddrRange], b: &[AddrRange]) -> Vec<AddrRange> {
    let mut out = Vec::new();
    for r in a {
        let family = r.family();
        let (mut lo, hi) = r.bounds();
        let mut done = false;
        for c in b.iter().filter(|c| c.family() == family) {
            let (clo, chi) = c.bounds();
            if chi < lo || clo > hi {
                continue;
            }
            if clo > lo {
                out.push((family, lo, clo - 1));
            }
            match chi.checked_add(1) {
                Some(n) if n <= hi => lo = n,
                _ => {
                    done = true;
                    break;
                }
            }
        }
        if !done {
            out.push((family, lo, hi));
        }
    }
    out.into_iter()
        .map(|(f, lo, hi)| AddrRange::new(from_u128(f, lo), from_u128(f, hi)).expect("ordered"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::ip;
    use rstest::rstest;

    fn host(s: &str) -> HostName {
        HostName::new(s).unwrap()
    }

    fn configs(cidrs: &[&str]) -> Vec<SubnetConfig> {
        cidrs
            .iter()
            .map(|c| {
                Subnet::new(c.parse().unwrap(), None, None)
                    .unwrap()
                    .config()
                    .clone()
            })
            .collect()
    }

    fn node(me: &str, cidrs: &[&str], members: &[&str]) -> ClusterAllocator {
        let members: Vec<HostName> = members.iter().map(|m| host(m)).collect();
        ClusterAllocator::new(
            host(me),
            "ov",
            &configs(cidrs),
            &members,
            ClusterConfig::default(),
        )
        .unwrap()
    }

    /// Delivers every transmit of `from` to `to` (and drops those for others).
    fn pass(from: &mut ClusterAllocator, to: &mut ClusterAllocator, now: Instant) -> usize {
        let mut n = 0;
        while let Some(t) = from.poll_transmit() {
            let for_to = match &t.to {
                Destination::All => true,
                Destination::Host(h) => h == to.me(),
            };
            if for_to {
                to.handle_bytes(&t.message.encode(), now).unwrap();
                n += 1;
            }
        }
        n
    }

    #[test]
    fn no_subnet_of_the_family() {
        let mut a = node("a", &["10.0.0.0/24"], &["a"]);
        let err = a.allocate(Family::V6, Instant::now()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "network `ov` has no IPv6 subnet; create it with an IPv6 --subnet or --ipv6"
        );
    }

    #[test]
    fn request_donate_and_duplicate() {
        let now = Instant::now();
        let mut a = node("a", &["10.0.0.0/24"], &["a"]);
        let mut b = node("b", &["10.0.0.0/24"], &["a"]);
        let err = b.allocate(Family::V4, now).unwrap_err();
        assert_eq!(
            err.to_string(),
            "network `ov` has no free IPv4 address on this host yet; host `a` was asked for a \
             range, retry in a moment"
        );
        // A second failure does not send a second request.
        assert!(b.allocate(Family::V4, now).is_err());
        let request = b.poll_transmit().unwrap();
        assert!(b.poll_transmit().is_none());
        a.handle_message(request.message.clone(), now);
        // The same request again (a duplicate): answered, nothing more given.
        a.handle_message(request.message, now);
        assert_eq!(a.stats().donations, 1);
        assert_eq!(a.stats().duplicate_requests, 1);
        assert_eq!(pass(&mut a, &mut b, now), 3);
        assert_eq!(
            b.poll_event(),
            Some(Event::SpaceArrived { family: Family::V4 })
        );
        // Half of the 253 usable addresses, from the top.
        assert_eq!(
            b.owned(),
            [AddrRange::new(ip("10.0.0.129"), ip("10.0.0.255")).unwrap()]
        );
        assert_eq!(b.free(Family::V4), 126);
        assert_eq!(a.free(Family::V4), 127);
        assert_eq!(b.allocate(Family::V4, now).unwrap(), ip("10.0.0.129"));
        assert_eq!(a.table(), b.table());
    }

    #[test]
    fn declines_end_in_a_clear_error() {
        let now = Instant::now();
        // /29 split in two: `a` gets .0-.3 (2 usable), `b` .4-.7 (3 usable).
        let mut a = node("a", &["10.0.0.0/29"], &["a", "b"]);
        let mut b = node("b", &["10.0.0.0/29"], &["a", "b"]);
        for _ in 0..3 {
            b.allocate(Family::V4, now).unwrap();
        }
        b.handle_timeout(now);
        pass(&mut b, &mut a, now);
        for _ in 0..2 {
            a.allocate(Family::V4, now).unwrap();
        }
        // `b` advertised zero free: nobody to ask.
        let err = a.allocate(Family::V4, now).unwrap_err();
        assert_eq!(
            err.to_string(),
            "no host of the cluster has a free IPv4 address in network `ov` (10.0.0.0/29); widen \
             --subnet or --ip-range, or free an endpoint"
        );
        // Without that advert, `a` asks `b`, which declines.
        let mut a = node("a", &["10.0.0.0/29"], &["a", "b"]);
        for _ in 0..2 {
            a.allocate(Family::V4, now).unwrap();
        }
        assert!(matches!(
            a.allocate(Family::V4, now),
            Err(ClusterError::AwaitingSpace { .. })
        ));
        pass(&mut a, &mut b, now);
        assert_eq!(b.stats().declines_sent, 1);
        pass(&mut b, &mut a, now);
        match a.poll_event() {
            Some(Event::RequestFailed { family, error }) => {
                assert_eq!(family, Family::V4);
                assert!(
                    matches!(error, ClusterError::NoFreeAddress { .. }),
                    "{error}"
                );
            }
            other => panic!("{other:?}"),
        }
        assert!(a.poll_transmit().is_none(), "no more requests");
    }

    #[test]
    fn unanswered_requests_give_up_after_the_attempts() {
        let start = Instant::now();
        let mut b = node("b", &["10.0.0.0/24"], &["a"]);
        assert!(b.allocate(Family::V4, start).is_err());
        let mut now = start;
        let mut sent = 0;
        while let Some(t) = b.poll_timeout() {
            now = t;
            while b.poll_transmit().is_some() {
                sent += 1;
            }
            b.handle_timeout(now);
            if let Some(e) = b.poll_event() {
                assert_eq!(
                    e,
                    Event::RequestFailed {
                        family: Family::V4,
                        error: ClusterError::NoAnswer {
                            network: "ov".into(),
                            family: Family::V4,
                            attempts: 3
                        }
                    }
                );
                break;
            }
        }
        assert_eq!(sent, 3);
        assert_eq!(now - start, Duration::from_secs(6));
        assert_eq!(b.stats().requests_sent, 3);
    }

    #[test]
    fn adverts_are_rate_limited() {
        let start = Instant::now();
        let mut a = node("a", &["10.0.0.0/24"], &["a"]);
        a.allocate(Family::V4, start).unwrap();
        assert_eq!(a.poll_timeout(), Some(start));
        a.handle_timeout(start);
        assert!(matches!(
            a.poll_transmit().map(|t| t.message),
            Some(Message::Update(_))
        ));
        let later = start + Duration::from_millis(10);
        a.allocate(Family::V4, later).unwrap();
        assert_eq!(a.poll_timeout(), Some(start + Duration::from_secs(1)));
        a.handle_timeout(later);
        assert!(a.poll_transmit().is_none());
        a.handle_timeout(start + Duration::from_secs(1));
        let Some(Transmit {
            to: Destination::All,
            message: Message::Update(u),
        }) = a.poll_transmit()
        else {
            panic!("an advert")
        };
        assert_eq!(u.adverts[0].1.free_v4, 251);
    }

    #[test]
    fn state_restores_and_chunks() {
        let now = Instant::now();
        let mut a = node("a", &["10.0.0.0/24", "fd00::/64"], &["a", "b", "c"]);
        let ip = a.allocate(Family::V6, now).unwrap();
        a.handle_timeout(now);
        let state = a.state();
        let mut back = ClusterAllocator::restore(
            host("a"),
            "ov",
            &configs(&["10.0.0.0/24", "fd00::/64"]),
            &state,
            ClusterConfig::default(),
            now,
        )
        .unwrap();
        back.restore_address(ip).unwrap();
        assert_eq!(back.table(), a.table());
        assert_eq!(back.allocations(), [ip]);
        assert_eq!(back.free(Family::V6), a.free(Family::V6));
        // The restored host continues its advert sequence.
        back.handle_timeout(now);
        let seq = back.adverts()[&host("a")].seq;
        assert!(seq > state.adverts[0].1.seq, "{seq}");

        let chunks = a.state_chunks(2);
        assert_eq!(chunks.len(), 3);
        assert!(chunks.iter().all(|c| c.entries.len() <= 2));
        assert_eq!(chunks[0].adverts.len(), 1);
        let mut fresh = node("x", &["10.0.0.0/24", "fd00::/64"], &["x"]);
        for c in &chunks {
            fresh.merge(c, now);
        }
        assert_eq!(fresh.table(), a.table());
    }

    #[rstest]
    #[case::outside("10.9.0.0/24", "network")]
    #[case::overlap("10.0.0.128/25", "overlap")]
    fn restore_refuses_bad_state(#[case] extra: &str, #[case] word: &str) {
        let a = node("a", &["10.0.0.0/24"], &["a"]);
        let mut state = a.state();
        state.entries[0].start = ip("10.9.0.0");
        let err = ClusterAllocator::restore(
            host("a"),
            "ov",
            &configs(&["10.0.0.0/24", extra]),
            &state,
            ClusterConfig::default(),
            Instant::now(),
        )
        .unwrap_err();
        assert!(err.to_string().contains(word), "{err}");
    }

    #[test]
    fn static_needs_ownership_and_release_frees() {
        let now = Instant::now();
        let mut a = node("a", &["10.0.0.0/24"], &["a", "b"]);
        let err = a.allocate_static(ip("10.0.0.200"), now).unwrap_err();
        assert_eq!(
            err,
            ClusterError::NotOwner {
                ip: ip("10.0.0.200"),
                network: "ov".into(),
                owner: host("b")
            }
        );
        let got = a.allocate_static(ip("10.0.0.100"), now).unwrap();
        assert!(a.is_allocated(got));
        a.release(got, now).unwrap();
        assert!(!a.is_allocated(got));
        let again = a.release(got, now).unwrap_err();
        assert!(again.to_string().contains("not allocated"), "{again}");
    }

    #[test]
    fn misdirected_and_garbage_are_counted() {
        let now = Instant::now();
        let mut a = node("a", &["10.0.0.0/24"], &["a"]);
        a.handle_message(
            Message::Request(Request {
                from: host("b"),
                to: host("c"),
                family: Family::V4,
                seq: 1,
            }),
            now,
        );
        assert_eq!(a.stats().misdirected, 1);
        assert!(a.handle_bytes(&[0xff, 0xff], now).is_err());
        assert_eq!(a.stats().decode_errors, 1);
        assert!(a.poll_transmit().is_none());
    }
}
