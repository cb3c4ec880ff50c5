//! A deterministic simulation of many [`Gossip`] members: a simulated clock
//! and a simulated network with seeded loss and delay (so also
//! reordering), partitions, and members that can be killed or restarted.
//! No sockets, no OS time: the same seed gives the same run.
//!
//! Datagrams really are sealed and opened, so the simulation exercises the
//! whole path a daemon would.
//!
//! ```text
//! let mut sim = Sim::new(SimConfig::default(), Instant::now());
//! let a = sim.add_member(meta_a, key.clone(), GossipConfig::lan(3, 1), 1)?;
//! let b = sim.add_member(meta_b, key, GossipConfig::lan(3, 1), 2)?;
//! sim.with_member(b, |g, now| g.join(addr_of_a, now));
//! sim.run_for(Duration::from_secs(5));
//! ```

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::fmt;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use crate::gossip::{Gossip, GossipConfig, GossipEvent, MemberMeta};
use crate::key::ClusterKey;
use crate::OverlayError;

/// Network conditions.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Probability that a datagram is lost, in [0, 1].
    pub loss: f64,
    /// Shortest one-way delay.
    pub min_delay: Duration,
    /// Longest one-way delay (uniform between the two: reordering).
    pub max_delay: Duration,
    /// Seed of the network's randomness.
    pub seed: u64,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            loss: 0.01,
            min_delay: Duration::from_micros(200),
            max_delay: Duration::from_millis(5),
            seed: 1,
        }
    }
}

/// Counters of the simulated network.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SimStats {
    /// Datagrams members sent.
    pub sent: u64,
    /// Datagrams delivered.
    pub delivered: u64,
    /// Datagrams lost at random.
    pub lost: u64,
    /// Datagrams dropped by a partition or a dead receiver.
    pub blocked: u64,
    /// Bytes delivered.
    pub bytes: u64,
}

/// Called with (member index, time, event) for every event of every member.
pub type Observer = Box<dyn FnMut(usize, Instant, &GossipEvent)>;

#[derive(Debug)]
struct Node {
    gossip: Gossip,
    running: bool,
    scheduled: Option<Instant>,
    group: u32,
}

#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Packet {
    at: Instant,
    seq: u64,
    to: usize,
    from: SocketAddr,
    data: Vec<u8>,
}

/// The simulated cluster.
pub struct Sim {
    config: SimConfig,
    start: Instant,
    now: Instant,
    nodes: Vec<Node>,
    by_addr: HashMap<SocketAddr, usize>,
    in_flight: BinaryHeap<Reverse<Packet>>,
    wakeups: BinaryHeap<Reverse<(Instant, usize)>>,
    rng: StdRng,
    seq: u64,
    buf: Vec<u8>,
    observer: Option<Observer>,
    stats: SimStats,
}

impl fmt::Debug for Sim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sim")
            .field("elapsed", &self.elapsed())
            .field("members", &self.nodes.len())
            .field("in_flight", &self.in_flight.len())
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl Sim {
    /// An empty network whose clock starts at `start`.
    pub fn new(config: SimConfig, start: Instant) -> Sim {
        Sim {
            rng: StdRng::seed_from_u64(config.seed),
            config,
            start,
            now: start,
            nodes: Vec::new(),
            by_addr: HashMap::new(),
            in_flight: BinaryHeap::new(),
            wakeups: BinaryHeap::new(),
            seq: 0,
            buf: vec![0; 65_536],
            observer: None,
            stats: SimStats::default(),
        }
    }

    /// Calls `observer` for every event of every member from now on.
    pub fn set_observer(&mut self, observer: impl FnMut(usize, Instant, &GossipEvent) + 'static) {
        self.observer = Some(Box::new(observer));
    }

    /// The simulated time.
    pub fn now(&self) -> Instant {
        self.now
    }

    /// Simulated time since the start.
    pub fn elapsed(&self) -> Duration {
        self.now - self.start
    }

    /// Network counters.
    pub fn stats(&self) -> SimStats {
        self.stats
    }

    /// Number of members (dead ones included).
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether there are no members.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Adds a running member; returns its index.
    pub fn add_member(
        &mut self,
        meta: MemberMeta,
        key: ClusterKey,
        config: GossipConfig,
        seed: u64,
    ) -> Result<usize, OverlayError> {
        let addr = meta.gossip_addr;
        let gossip = Gossip::new(meta, key, config, seed, self.now)?;
        let i = self.nodes.len();
        self.nodes.push(Node {
            gossip,
            running: true,
            scheduled: None,
            group: 0,
        });
        self.by_addr.insert(addr, i);
        self.flush(i);
        Ok(i)
    }

    /// A member's gossip endpoint, to read.
    pub fn member(&self, i: usize) -> &Gossip {
        &self.nodes[i].gossip
    }

    /// Whether member `i` runs.
    pub fn is_running(&self, i: usize) -> bool {
        self.nodes[i].running
    }

    /// Acts on member `i` at the current time, then sends what it wants to
    /// send and reschedules it.
    pub fn with_member<R>(&mut self, i: usize, f: impl FnOnce(&mut Gossip, Instant) -> R) -> R {
        let now = self.now;
        let r = f(&mut self.nodes[i].gossip, now);
        self.flush(i);
        r
    }

    /// Stops member `i` at once, as SIGKILL would: it sends nothing more
    /// and what is sent to it is lost.
    pub fn kill(&mut self, i: usize) {
        self.nodes[i].running = false;
        self.nodes[i].scheduled = None;
    }

    /// Replaces member `i` by a fresh process (same address, typically a
    /// higher boot generation), running.
    pub fn restart(
        &mut self,
        i: usize,
        meta: MemberMeta,
        key: ClusterKey,
        config: GossipConfig,
        seed: u64,
    ) -> Result<(), OverlayError> {
        let gossip = Gossip::new(meta, key, config, seed, self.now)?;
        self.by_addr.insert(gossip.local_meta().gossip_addr, i);
        self.nodes[i].gossip = gossip;
        self.nodes[i].running = true;
        self.nodes[i].scheduled = None;
        self.flush(i);
        Ok(())
    }

    /// Puts member `i` in partition group `group`: datagrams between
    /// different groups are dropped. All start in group 0.
    pub fn set_group(&mut self, i: usize, group: u32) {
        self.nodes[i].group = group;
    }

    /// Puts every member back in group 0.
    pub fn heal(&mut self) {
        for n in &mut self.nodes {
            n.group = 0;
        }
    }

    /// Sends what member `i` wants to send, hands its events to the
    /// observer and schedules its next wake-up.
    fn flush(&mut self, i: usize) {
        if !self.nodes[i].running {
            return;
        }
        let from = self.nodes[i].gossip.local_meta().gossip_addr;
        while let Some((to, n)) = self.nodes[i].gossip.poll_transmit(&mut self.buf) {
            self.stats.sent += 1;
            let Some(&dst) = self.by_addr.get(&to) else {
                self.stats.blocked += 1;
                continue;
            };
            if self.config.loss > 0.0 && self.rng.random_bool(self.config.loss.min(1.0)) {
                self.stats.lost += 1;
                continue;
            }
            let span = self.config.max_delay.saturating_sub(self.config.min_delay);
            let delay = self.config.min_delay + span.mul_f64(self.rng.random::<f64>());
            self.seq += 1;
            self.in_flight.push(Reverse(Packet {
                at: self.now + delay,
                seq: self.seq,
                to: dst,
                from,
                data: self.buf[..n].to_vec(),
            }));
        }
        while let Some(event) = self.nodes[i].gossip.poll_event() {
            if let Some(observer) = &mut self.observer {
                observer(i, self.now, &event);
            }
        }
        if let Some(at) = self.nodes[i].gossip.poll_timeout() {
            let at = at.max(self.now);
            if self.nodes[i].scheduled != Some(at) {
                self.nodes[i].scheduled = Some(at);
                self.wakeups.push(Reverse((at, i)));
            }
        }
    }

    /// Runs the next thing that happens (a delivery or a wake-up); false
    /// when nothing is left to happen.
    pub fn step(&mut self) -> bool {
        let next_packet = self.in_flight.peek().map(|Reverse(p)| p.at);
        let next_wake = self.wakeups.peek().map(|Reverse((at, _))| *at);
        match (next_packet, next_wake) {
            (None, None) => false,
            (Some(p), w) if w.is_none_or(|w| p <= w) => {
                let Some(Reverse(packet)) = self.in_flight.pop() else {
                    return false;
                };
                self.now = self.now.max(p);
                let to = packet.to;
                let sender_group = self.by_addr.get(&packet.from).map(|&s| self.nodes[s].group);
                let node_group = self.nodes[to].group;
                if !self.nodes[to].running || sender_group.is_some_and(|g| g != node_group) {
                    self.stats.blocked += 1;
                    return true;
                }
                self.stats.delivered += 1;
                self.stats.bytes += packet.data.len() as u64;
                let now = self.now;
                self.nodes[to]
                    .gossip
                    .handle_datagram(packet.from, &packet.data, now);
                self.flush(to);
                true
            }
            (_, Some(w)) => {
                let Some(Reverse((at, i))) = self.wakeups.pop() else {
                    return false;
                };
                self.now = self.now.max(w);
                if self.nodes[i].running && self.nodes[i].scheduled == Some(at) {
                    self.nodes[i].scheduled = None;
                    let now = self.now;
                    self.nodes[i].gossip.handle_timeout(now);
                    self.flush(i);
                }
                true
            }
            (Some(_), None) => unreachable!("covered by the first arm"),
        }
    }

    /// Runs until simulated time `deadline`.
    pub fn run_until(&mut self, deadline: Instant) {
        while self.next_time().is_some_and(|t| t <= deadline) {
            self.step();
        }
        self.now = self.now.max(deadline);
    }

    /// Runs for `d` of simulated time.
    pub fn run_for(&mut self, d: Duration) {
        let deadline = self.now + d;
        self.run_until(deadline);
    }

    /// Runs until `done` holds (checked after every step) or `limit` of
    /// simulated time has passed; returns the time it took, if it held.
    pub fn run_until_true(
        &mut self,
        limit: Duration,
        mut done: impl FnMut(&Sim) -> bool,
    ) -> Option<Duration> {
        let start = self.now;
        let deadline = start + limit;
        loop {
            if done(self) {
                return Some(self.now - start);
            }
            match self.next_time() {
                Some(t) if t <= deadline => {
                    self.step();
                }
                _ => {
                    self.now = self.now.max(deadline);
                    return done(self).then(|| self.now - start);
                }
            }
        }
    }

    fn next_time(&self) -> Option<Instant> {
        let p = self.in_flight.peek().map(|Reverse(p)| p.at);
        let w = self.wakeups.peek().map(|Reverse((at, _))| *at);
        match (p, w) {
            (Some(p), Some(w)) => Some(p.min(w)),
            (p, w) => p.or(w),
        }
    }
}

/// A convergence experiment: `members` hosts form a cluster through one
/// seed; then one host publishes an endpoint (how long until every member
/// knows it?) and is killed (how long until every member has declared it
/// down and removed its endpoint?).
#[derive(Debug, Clone)]
pub struct Scenario {
    /// Cluster size.
    pub members: usize,
    /// Network conditions (and the network's seed).
    pub net: SimConfig,
    /// Gossip settings of every member.
    pub config: GossipConfig,
    /// Simulated time allowed for each phase.
    pub limit: Duration,
}

/// Times taken by a fraction of the members (`None`: not reached within
/// the limit).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Spread {
    /// Half of the members.
    pub p50: Option<Duration>,
    /// 99 % of the members.
    pub p99: Option<Duration>,
    /// 99.99 % of the members (all of them below 10 000 members).
    pub p9999: Option<Duration>,
    /// Every member.
    pub all: Option<Duration>,
}

impl Spread {
    fn from_times(mut times: Vec<Duration>, expected: usize) -> Spread {
        times.sort();
        let at = |q: f64| {
            let rank = ((q * expected as f64).ceil() as usize).clamp(1, expected.max(1));
            times.get(rank - 1).copied()
        };
        Spread {
            p50: at(0.5),
            p99: at(0.99),
            p9999: at(0.9999),
            all: at(1.0),
        }
    }
}

impl fmt::Display for Spread {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let show =
            |d: Option<Duration>| d.map_or("-".to_owned(), |d| format!("{:.2}s", d.as_secs_f64()));
        write!(
            f,
            "p50 {} p99 {} p99.99 {} all {}",
            show(self.p50),
            show(self.p99),
            show(self.p9999),
            show(self.all)
        )
    }
}

/// What a [`Scenario`] measured.
#[derive(Debug, Clone, Default)]
pub struct ScenarioReport {
    /// Cluster size.
    pub members: usize,
    /// Time until every member saw every other as up.
    pub formation: Option<Duration>,
    /// Time until members knew the new endpoint.
    pub endpoint_known: Spread,
    /// Time until members declared the killed host down.
    pub declared_down: Spread,
    /// Time until members removed the killed host's endpoint.
    pub endpoint_removed: Spread,
    /// Datagrams sent per member per second of simulated time, in steady
    /// state (while the endpoint spread).
    pub datagrams_per_member_s: f64,
    /// Bytes delivered per member per second, in steady state.
    pub bytes_per_member_s: f64,
    /// Network counters over the whole run.
    pub net: SimStats,
    /// Authentication failures summed over members (should be 0).
    pub auth_failures: u64,
}

#[derive(Debug, Default)]
struct Tracker {
    n: usize,
    up: Vec<Vec<bool>>,
    up_count: Vec<usize>,
    complete: usize,
    endpoint: Option<(String, String)>,
    known: Vec<Option<Instant>>,
    known_count: usize,
    down: Vec<Option<Instant>>,
    down_count: usize,
    removed: Vec<Option<Instant>>,
    removed_count: usize,
}

/// Name of member `i` in scenarios.
pub fn scenario_member_name(i: usize) -> String {
    format!("m{i:05}")
}

/// Meta of member `i` in scenarios: symbolic loopback addresses (never
/// used for real traffic).
pub fn scenario_member_meta(i: usize) -> MemberMeta {
    let ip = std::net::Ipv4Addr::from(0x7f01_0000u32 + i as u32);
    MemberMeta {
        name: scenario_member_name(i),
        gossip_addr: SocketAddr::new(ip.into(), 7946),
        tunnel_addr: SocketAddr::new(ip.into(), 4789),
        tags: std::collections::BTreeMap::new(),
    }
}

fn index_of(name: &str) -> Option<usize> {
    name.strip_prefix('m')?.parse().ok()
}

impl Tracker {
    fn tracks(&self, host: &str, key: &str) -> bool {
        self.endpoint
            .as_ref()
            .is_some_and(|(h, k)| h == host && k == key)
    }

    fn observe(&mut self, i: usize, t: Instant, e: &GossipEvent) {
        match e {
            GossipEvent::MemberUp(meta) => {
                if let Some(j) = index_of(&meta.name).filter(|&j| j < self.n) {
                    if !self.up[i][j] {
                        self.up[i][j] = true;
                        self.up_count[i] += 1;
                        if self.up_count[i] == self.n - 1 {
                            self.complete += 1;
                        }
                    }
                }
            }
            GossipEvent::MemberDown(name) => {
                if let Some(j) = index_of(name).filter(|&j| j < self.n) {
                    if self.up[i][j] {
                        self.up[i][j] = false;
                        if self.up_count[i] == self.n - 1 {
                            self.complete -= 1;
                        }
                        self.up_count[i] -= 1;
                    }
                }
                if self.endpoint.as_ref().is_some_and(|(h, _)| h == name) && self.down[i].is_none()
                {
                    self.down[i] = Some(t);
                    self.down_count += 1;
                }
            }
            GossipEvent::Directory(crate::directory::DirectoryEvent::EndpointUpsert {
                host,
                key,
                ..
            }) if self.tracks(host, key) && self.known[i].is_none() => {
                self.known[i] = Some(t);
                self.known_count += 1;
            }
            GossipEvent::Directory(crate::directory::DirectoryEvent::EndpointRemoved {
                host,
                key,
                ..
            }) if self.tracks(host, key) && self.removed[i].is_none() => {
                self.removed[i] = Some(t);
                self.removed_count += 1;
            }
            _ => {}
        }
    }
}

/// Runs a [`Scenario`]. Deterministic for given settings.
pub fn run_scenario(s: &Scenario) -> ScenarioReport {
    use std::cell::RefCell;
    use std::rc::Rc;

    let n = s.members.max(2);
    let start = Instant::now();
    let mut sim = Sim::new(s.net.clone(), start);
    let tracker = Rc::new(RefCell::new(Tracker {
        n,
        up: vec![vec![false; n]; n],
        up_count: vec![0; n],
        known: vec![None; n],
        down: vec![None; n],
        removed: vec![None; n],
        ..Tracker::default()
    }));
    let t = Rc::clone(&tracker);
    sim.set_observer(move |i, at, e| t.borrow_mut().observe(i, at, e));
    let key = ClusterKey::from_material(b"simulation cluster key");
    for i in 0..n {
        let seed = s.net.seed.wrapping_mul(1_000_003).wrapping_add(i as u64);
        // The configuration and names are valid by construction.
        if sim
            .add_member(scenario_member_meta(i), key.clone(), s.config.clone(), seed)
            .is_err()
        {
            return ScenarioReport::default();
        }
    }
    let seed_addr = scenario_member_meta(0).gossip_addr;
    for i in 1..n {
        sim.with_member(i, |g, now| g.join(seed_addr, now));
    }
    let formation = sim.run_until_true(s.limit, |_| tracker.borrow().complete == n);
    // Let the join traffic settle before measuring.
    sim.run_for(Duration::from_secs(5));

    // (a) one member publishes an endpoint.
    let victim = n / 2;
    let host = scenario_member_name(victim);
    tracker.borrow_mut().endpoint = Some((host.clone(), "ep".to_owned()));
    let before = sim.stats();
    let t0 = sim.now();
    let record = crate::directory::PublishedEndpoint {
        network: "net".into(),
        container: "web".into(),
        aliases: vec!["www".into()],
        mac: [0x02, 0x42, 10, 0, 0, 2],
        ipv4: Some(std::net::Ipv4Addr::new(10, 0, 0, 2)),
        ipv6: None,
        labels: std::collections::BTreeMap::new(),
    };
    let _ = sim.with_member(victim, |g, now| g.publish_endpoint("ep", record, now));
    sim.run_until_true(s.limit, |_| tracker.borrow().known_count >= n);
    // Steady-state traffic over a fixed window after the endpoint.
    sim.run_until(t0 + Duration::from_secs(10));
    let window = (sim.now() - t0).as_secs_f64();
    let after = sim.stats();
    let datagrams_per_member_s = (after.sent - before.sent) as f64 / n as f64 / window;
    let bytes_per_member_s = (after.bytes - before.bytes) as f64 / n as f64 / window;

    // (b) kill it.
    let t1 = sim.now();
    sim.kill(victim);
    sim.run_until_true(s.limit, |_| {
        let t = tracker.borrow();
        t.down_count >= n - 1 && t.removed_count >= n - 1
    });

    let t = tracker.borrow();
    let others = |v: &Vec<Option<Instant>>, since: Instant| -> Vec<Duration> {
        v.iter()
            .enumerate()
            .filter(|(i, _)| *i != victim)
            .filter_map(|(_, at)| at.map(|at| at.saturating_duration_since(since)))
            .collect()
    };
    ScenarioReport {
        members: n,
        formation,
        endpoint_known: Spread::from_times(others(&t.known, t0), n - 1),
        declared_down: Spread::from_times(others(&t.down, t1), n - 1),
        endpoint_removed: Spread::from_times(others(&t.removed, t1), n - 1),
        datagrams_per_member_s,
        bytes_per_member_s,
        net: sim.stats(),
        auth_failures: (0..n).map(|i| sim.member(i).stats().auth_failures).sum(),
    }
}
