//! The anomaly detector behind `vswitch events`' `anomaly` events: a
//! sans-IO core. It is handed a [`Sample`] of counters the daemon keeps
//! anyway (each port's packets and bytes, its drops by reason, each
//! network's learned MACs against their bound, the member state changes
//! gossip reported) with the `now` it was taken at, and returns the
//! anomalies that start or end at that sample. It reads no clock and
//! does no IO, so tests drive it with made-up samples and times.
//!
//! - `rate-spike`: a port's packet or byte rate (both directions) at
//!   least `spike_factor` times its baseline, an exponentially weighted
//!   moving average with time constant `baseline`, and above an absolute
//!   floor (so a quiet port starting light traffic is no spike), once the
//!   port has been watched for `warmup`. It ends when both rates are
//!   back under half the floor or half the factor over the baseline.
//! - `drop-burst`: a port's drops of one reason at `drop_min_rate` a
//!   second or more and `drop_factor` times their own baseline; ends
//!   under half that rate.
//! - `mac-table-full`: a network's MAC table at `table_high` of its
//!   bound or more; ends under `table_low`.
//! - `member-flapping`: `flap_changes` state changes of one member
//!   within `flap_window`; ends once at most one change is left in the
//!   window.
//!
//! Each anomaly is reported once when it starts and once when it ends
//! (also when its port, network or member goes away meanwhile). The
//! state kept is a few numbers per port, per (port, reason) that ever
//! dropped, per network and per recently changing member: what is not in
//! a sample any more is forgotten, so the cost follows the daemon's
//! tables, not time.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::{Duration, Instant};

/// A switch port, by the names users know it by.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortKey {
    pub network: String,
    pub container: String,
    pub interface: String,
}

/// A port's counters since it was attached (they only grow), as the
/// datapath keeps them; the detector reads packets and bytes.
pub use super::datapath::PortCounters;

/// One port in a [`Sample`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortSample {
    pub key: PortKey,
    pub counters: PortCounters,
    /// Frames from it the switch dropped, by reason (`spoofed_mac`...),
    /// since it was attached.
    pub drops: Vec<(&'static str, u64)>,
}

/// One network's MAC table in a [`Sample`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableSample {
    pub network: String,
    /// Learned MACs (the fullest worker's copy).
    pub entries: u64,
    /// The most the table holds.
    pub bound: u64,
}

/// A member's state changed (as gossip reported it) since the last sample.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberChange {
    pub host: String,
    /// `alive`, `suspect` or `dead`.
    pub state: String,
}

/// What the detector is shown once a second or so.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sample {
    pub ports: Vec<PortSample>,
    pub tables: Vec<TableSample>,
    pub member_changes: Vec<MemberChange>,
}

/// The kinds of anomaly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AnomalyKind {
    RateSpike,
    DropBurst,
    MacTableFull,
    MemberFlapping,
}

impl AnomalyKind {
    pub const ALL: [AnomalyKind; 4] = [
        AnomalyKind::RateSpike,
        AnomalyKind::DropBurst,
        AnomalyKind::MacTableFull,
        AnomalyKind::MemberFlapping,
    ];

    /// The event's action when it starts; `-end` is added when it ends.
    pub fn as_str(self) -> &'static str {
        match self {
            AnomalyKind::RateSpike => "rate-spike",
            AnomalyKind::DropBurst => "drop-burst",
            AnomalyKind::MacTableFull => "mac-table-full",
            AnomalyKind::MemberFlapping => "member-flapping",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

/// What an anomaly is about.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Subject {
    Port(PortKey),
    /// A port's drops of one reason.
    PortDrops(PortKey, &'static str),
    Network(String),
    Member(String),
}

/// An anomaly starting or ending.
#[derive(Debug, Clone, PartialEq)]
pub struct Anomaly {
    pub kind: AnomalyKind,
    /// True when it starts, false when it ends.
    pub start: bool,
    pub subject: Subject,
    /// What was measured, as `(name, value)`.
    pub detail: Vec<(&'static str, String)>,
}

/// The detector's thresholds.
#[derive(Debug, Clone, PartialEq)]
pub struct DetectorConfig {
    /// Time constant of the rates' baselines (exponentially weighted).
    pub baseline: Duration,
    /// How long a port is watched before a spike on it is reported.
    pub warmup: Duration,
    /// Samples closer together than this are not used for rates.
    pub min_interval: Duration,
    /// A rate this many times its baseline (or more) is a spike...
    pub spike_factor: f64,
    /// ...when it is also at least this many packets a second...
    pub spike_min_packets: f64,
    /// ...or this many bytes a second.
    pub spike_min_bytes: f64,
    /// Drops of one reason a second that make a burst...
    pub drop_min_rate: f64,
    /// ...when this many times their baseline.
    pub drop_factor: f64,
    /// A MAC table this full (of its bound) is reported...
    pub table_high: f64,
    /// ...until it is under this.
    pub table_low: f64,
    /// State changes of one member within `flap_window` that make it
    /// flapping.
    pub flap_changes: usize,
    pub flap_window: Duration,
}

impl Default for DetectorConfig {
    /// Baselines over 30 s, 5 s of warm-up; spikes of 8 times the
    /// baseline and at least 2,000 packets or 2 MB a second; bursts of 10
    /// drops a second; tables at 90 % (until under 80 %); 4 member
    /// changes in a minute.
    fn default() -> Self {
        DetectorConfig {
            baseline: Duration::from_secs(30),
            warmup: Duration::from_secs(5),
            min_interval: Duration::from_millis(250),
            spike_factor: 8.0,
            spike_min_packets: 2_000.0,
            spike_min_bytes: 2_000_000.0,
            drop_min_rate: 10.0,
            drop_factor: 4.0,
            table_high: 0.9,
            table_low: 0.8,
            flap_changes: 4,
            flap_window: Duration::from_secs(60),
        }
    }
}

/// A rate and its baseline.
#[derive(Debug, Clone, Copy)]
struct Ewma {
    baseline: f64,
}

impl Ewma {
    /// Moves the baseline toward `rate` by the share `alpha`; returns
    /// the baseline before.
    fn update(&mut self, rate: f64, alpha: f64) -> f64 {
        let before = self.baseline;
        self.baseline += alpha * (rate - self.baseline);
        before
    }
}

#[derive(Debug)]
struct DropState {
    count: u64,
    rate: Ewma,
    active: bool,
}

#[derive(Debug)]
struct PortState {
    /// When it was first seen (or its counters last went back).
    since: Instant,
    /// The sample its counters are from.
    at: Instant,
    counters: PortCounters,
    /// None until a rate was measured.
    packets: Option<Ewma>,
    bytes: Option<Ewma>,
    spiking: bool,
    drops: BTreeMap<&'static str, DropState>,
}

#[derive(Debug, Default)]
struct MemberState {
    changes: VecDeque<Instant>,
    last: String,
    active: bool,
}

/// The detector; see the module's doc.
#[derive(Debug)]
pub struct Detector {
    config: DetectorConfig,
    ports: BTreeMap<PortKey, PortState>,
    /// Networks whose table is reported full.
    full: BTreeMap<String, ()>,
    members: BTreeMap<String, MemberState>,
}

/// Most changes kept per member: enough to count to the threshold.
const MAX_CHANGES: usize = 64;

impl Detector {
    pub fn new(config: DetectorConfig) -> Detector {
        Detector {
            config,
            ports: BTreeMap::new(),
            full: BTreeMap::new(),
            members: BTreeMap::new(),
        }
    }

    /// Takes a sample taken at `now`; returns the anomalies starting and
    /// ending with it.
    pub fn observe(&mut self, now: Instant, sample: &Sample) -> Vec<Anomaly> {
        let mut out = Vec::new();
        self.observe_ports(now, &sample.ports, &mut out);
        self.observe_tables(&sample.tables, &mut out);
        self.observe_members(now, &sample.member_changes, &mut out);
        out
    }

    /// Ports (and their drop reasons) tracked now: the detector's size.
    pub fn tracked(&self) -> usize {
        self.ports
            .values()
            .map(|p| 1 + p.drops.len())
            .sum::<usize>()
            + self.full.len()
            + self.members.len()
    }

    fn observe_ports(&mut self, now: Instant, ports: &[PortSample], out: &mut Vec<Anomaly>) {
        let c = &self.config;
        let mut seen = BTreeSet::new();
        for p in ports {
            seen.insert(&p.key);
            let st = self
                .ports
                .entry(p.key.clone())
                .or_insert_with(|| PortState {
                    since: now,
                    at: now,
                    counters: p.counters,
                    packets: None,
                    bytes: None,
                    spiking: false,
                    drops: BTreeMap::new(),
                });
            let went_back = p.counters.rx_packets < st.counters.rx_packets
                || p.counters.tx_packets < st.counters.tx_packets
                || p.counters.rx_bytes < st.counters.rx_bytes
                || p.counters.tx_bytes < st.counters.tx_bytes;
            if went_back {
                // Counters of a new attachment under the same names: a
                // new port, watched from now.
                if st.spiking {
                    out.push(end(
                        AnomalyKind::RateSpike,
                        Subject::Port(p.key.clone()),
                        "reset",
                    ));
                }
                for (reason, d) in &st.drops {
                    if d.active {
                        out.push(end(
                            AnomalyKind::DropBurst,
                            Subject::PortDrops(p.key.clone(), reason),
                            "reset",
                        ));
                    }
                }
                *st = PortState {
                    since: now,
                    at: now,
                    counters: p.counters,
                    packets: None,
                    bytes: None,
                    spiking: false,
                    drops: p
                        .drops
                        .iter()
                        .map(|&(r, n)| {
                            (
                                r,
                                DropState {
                                    count: n,
                                    rate: Ewma { baseline: 0.0 },
                                    active: false,
                                },
                            )
                        })
                        .collect(),
                };
                continue;
            }
            let dt = now.saturating_duration_since(st.at);
            if dt < c.min_interval {
                // The first sample of a port, or too close to the last.
                for &(reason, n) in &p.drops {
                    st.drops.entry(reason).or_insert(DropState {
                        count: n,
                        rate: Ewma { baseline: 0.0 },
                        active: false,
                    });
                }
                continue;
            }
            let secs = dt.as_secs_f64();
            let alpha = 1.0 - (-secs / c.baseline.as_secs_f64().max(1e-3)).exp();
            let (old, new) = (st.counters, p.counters);
            let rx_pps = (new.rx_packets - old.rx_packets) as f64 / secs;
            let tx_pps = (new.tx_packets - old.tx_packets) as f64 / secs;
            let rx_bps = (new.rx_bytes - old.rx_bytes) as f64 / secs;
            let tx_bps = (new.tx_bytes - old.tx_bytes) as f64 / secs;
            let (pps, bps) = (rx_pps + tx_pps, rx_bps + tx_bps);
            let warm = now.saturating_duration_since(st.since) >= c.warmup;
            match (&mut st.packets, &mut st.bytes) {
                (Some(pk), Some(by)) => {
                    let (bp, bb) = (pk.update(pps, alpha), by.update(bps, alpha));
                    let high = |r: f64, b: f64, floor: f64| r >= floor && r >= c.spike_factor * b;
                    let calm = |r: f64, b: f64, floor: f64| {
                        r < floor / 2.0 || r < c.spike_factor / 2.0 * b
                    };
                    let detail = || {
                        vec![
                            ("packets_per_second", format!("{pps:.0}")),
                            ("baseline_packets_per_second", format!("{bp:.0}")),
                            ("bytes_per_second", format!("{bps:.0}")),
                            ("baseline_bytes_per_second", format!("{bb:.0}")),
                            ("rx_packets_per_second", format!("{rx_pps:.0}")),
                            ("tx_packets_per_second", format!("{tx_pps:.0}")),
                        ]
                    };
                    if !st.spiking
                        && warm
                        && (high(pps, bp, c.spike_min_packets) || high(bps, bb, c.spike_min_bytes))
                    {
                        st.spiking = true;
                        out.push(Anomaly {
                            kind: AnomalyKind::RateSpike,
                            start: true,
                            subject: Subject::Port(p.key.clone()),
                            detail: detail(),
                        });
                    } else if st.spiking
                        && calm(pps, bp, c.spike_min_packets)
                        && calm(bps, bb, c.spike_min_bytes)
                    {
                        st.spiking = false;
                        out.push(Anomaly {
                            kind: AnomalyKind::RateSpike,
                            start: false,
                            subject: Subject::Port(p.key.clone()),
                            detail: detail(),
                        });
                    }
                }
                // The first rate measured is the baseline's start.
                _ => {
                    st.packets = Some(Ewma { baseline: pps });
                    st.bytes = Some(Ewma { baseline: bps });
                }
            }
            let mut reasons = BTreeSet::new();
            for &(reason, n) in &p.drops {
                reasons.insert(reason);
                let d = st.drops.entry(reason).or_insert(DropState {
                    // A reason first seen now counts from zero: the port
                    // had dropped none for it before.
                    count: 0,
                    rate: Ewma { baseline: 0.0 },
                    active: false,
                });
                let delta = n.saturating_sub(d.count);
                d.count = n;
                let rate = delta as f64 / secs;
                let before = d.rate.update(rate, alpha);
                let subject = || Subject::PortDrops(p.key.clone(), reason);
                let detail = || {
                    vec![
                        ("reason", reason.to_string()),
                        ("drops_per_second", format!("{rate:.0}")),
                        ("baseline_drops_per_second", format!("{before:.1}")),
                        ("dropped", delta.to_string()),
                    ]
                };
                if !d.active && rate >= c.drop_min_rate && rate >= c.drop_factor * before {
                    d.active = true;
                    out.push(Anomaly {
                        kind: AnomalyKind::DropBurst,
                        start: true,
                        subject: subject(),
                        detail: detail(),
                    });
                } else if d.active && rate < c.drop_min_rate / 2.0 {
                    d.active = false;
                    out.push(Anomaly {
                        kind: AnomalyKind::DropBurst,
                        start: false,
                        subject: subject(),
                        detail: detail(),
                    });
                }
            }
            // A reason no longer counted (never, for a live port) is let go.
            st.drops.retain(|r, d| {
                let keep = reasons.contains(r);
                if !keep && d.active {
                    out.push(end(
                        AnomalyKind::DropBurst,
                        Subject::PortDrops(p.key.clone(), r),
                        "gone",
                    ));
                }
                keep
            });
            st.counters = new;
            st.at = now;
        }
        // Ports that went: what was going on with them ends.
        self.ports.retain(|key, st| {
            if seen.contains(key) {
                return true;
            }
            if st.spiking {
                out.push(end(
                    AnomalyKind::RateSpike,
                    Subject::Port(key.clone()),
                    "gone",
                ));
            }
            for (reason, d) in &st.drops {
                if d.active {
                    out.push(end(
                        AnomalyKind::DropBurst,
                        Subject::PortDrops(key.clone(), reason),
                        "gone",
                    ));
                }
            }
            false
        });
    }

    fn observe_tables(&mut self, tables: &[TableSample], out: &mut Vec<Anomaly>) {
        let c = &self.config;
        let mut seen = BTreeSet::new();
        for t in tables {
            seen.insert(t.network.as_str());
            if t.bound == 0 {
                continue;
            }
            let share = t.entries as f64 / t.bound as f64;
            let detail = || {
                vec![
                    ("entries", t.entries.to_string()),
                    ("bound", t.bound.to_string()),
                    ("percent", format!("{:.0}", share * 100.0)),
                ]
            };
            let active = self.full.contains_key(&t.network);
            if !active && share >= c.table_high {
                self.full.insert(t.network.clone(), ());
                out.push(Anomaly {
                    kind: AnomalyKind::MacTableFull,
                    start: true,
                    subject: Subject::Network(t.network.clone()),
                    detail: detail(),
                });
            } else if active && share < c.table_low {
                self.full.remove(&t.network);
                out.push(Anomaly {
                    kind: AnomalyKind::MacTableFull,
                    start: false,
                    subject: Subject::Network(t.network.clone()),
                    detail: detail(),
                });
            }
        }
        self.full.retain(|n, _| {
            let keep = seen.contains(n.as_str());
            if !keep {
                out.push(end(
                    AnomalyKind::MacTableFull,
                    Subject::Network(n.clone()),
                    "gone",
                ));
            }
            keep
        });
    }

    fn observe_members(&mut self, now: Instant, changes: &[MemberChange], out: &mut Vec<Anomaly>) {
        let c = &self.config;
        for ch in changes {
            let m = self.members.entry(ch.host.clone()).or_default();
            if m.changes.len() == MAX_CHANGES {
                m.changes.pop_front();
            }
            m.changes.push_back(now);
            m.last.clone_from(&ch.state);
        }
        let window = c.flap_window;
        self.members.retain(|host, m| {
            while m
                .changes
                .front()
                .is_some_and(|t| now.saturating_duration_since(*t) > window)
            {
                m.changes.pop_front();
            }
            let detail = || {
                vec![
                    ("changes", m.changes.len().to_string()),
                    ("window_seconds", window.as_secs().to_string()),
                    ("state", m.last.clone()),
                ]
            };
            if !m.active && m.changes.len() >= c.flap_changes.max(1) {
                m.active = true;
                out.push(Anomaly {
                    kind: AnomalyKind::MemberFlapping,
                    start: true,
                    subject: Subject::Member(host.clone()),
                    detail: detail(),
                });
            } else if m.active && m.changes.len() <= 1 {
                m.active = false;
                out.push(Anomaly {
                    kind: AnomalyKind::MemberFlapping,
                    start: false,
                    subject: Subject::Member(host.clone()),
                    detail: detail(),
                });
            }
            m.active || !m.changes.is_empty()
        });
    }
}

/// The end of an anomaly whose subject went or was reset (`why`).
fn end(kind: AnomalyKind, subject: Subject, why: &str) -> Anomaly {
    Anomaly {
        kind,
        start: false,
        subject,
        detail: vec![("ended_by", why.to_string())],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key(c: &str) -> PortKey {
        PortKey {
            network: "web".into(),
            container: c.into(),
            interface: "eth0".into(),
        }
    }

    /// A port that has sent and received `packets` frames of 100 bytes.
    fn port(c: &str, packets: u64, drops: &[(&'static str, u64)]) -> PortSample {
        PortSample {
            key: key(c),
            counters: PortCounters {
                rx_packets: packets / 2,
                tx_packets: packets - packets / 2,
                rx_bytes: packets / 2 * 100,
                tx_bytes: (packets - packets / 2) * 100,
                ..PortCounters::default()
            },
            drops: drops.to_vec(),
        }
    }

    fn ports(p: Vec<PortSample>) -> Sample {
        Sample {
            ports: p,
            ..Default::default()
        }
    }

    /// Feeds one sample a second, each port's packet count rising by the
    /// rates given (packets a second, one list entry per second);
    /// returns (second, anomaly) pairs.
    fn drive(rates: &[u64]) -> Vec<(usize, Anomaly)> {
        let mut d = Detector::new(DetectorConfig::default());
        let t0 = Instant::now();
        let mut total = 0;
        let mut out = Vec::new();
        for (i, r) in std::iter::once(&0).chain(rates).enumerate() {
            total += r;
            let now = t0 + Duration::from_secs(i as u64);
            for a in d.observe(now, &ports(vec![port("a", total, &[])])) {
                out.push((i, a));
            }
        }
        out
    }

    #[test]
    fn a_spike_after_a_quiet_baseline_starts_once_and_ends_once() {
        // 10 quiet seconds (a few frames a second), 3 of 50,000 packets
        // a second, quiet again.
        let mut rates = vec![4; 10];
        rates.extend([50_000; 3]);
        rates.extend([4; 5]);
        let got = drive(&rates);
        assert_eq!(got.len(), 2, "{got:?}");
        let (at, a) = &got[0];
        assert_eq!((*at, a.kind, a.start), (11, AnomalyKind::RateSpike, true));
        assert_eq!(a.subject, Subject::Port(key("a")));
        let rate = a
            .detail
            .iter()
            .find(|(k, _)| *k == "packets_per_second")
            .unwrap();
        assert_eq!(rate.1, "50000");
        let (at, a) = &got[1];
        assert_eq!((*at, a.kind, a.start), (14, AnomalyKind::RateSpike, false));
    }

    #[test]
    fn no_spike_during_warm_up() {
        let mut rates = vec![0; 2];
        rates.extend([50_000; 2]);
        assert!(drive(&rates).is_empty());
    }

    #[test]
    fn light_traffic_on_an_idle_port_is_no_spike() {
        // From nothing to 1,000 packets (100 kB) a second: far over the
        // baseline, under both floors.
        let mut rates = vec![0; 10];
        rates.extend([1_000; 10]);
        assert!(drive(&rates).is_empty());
    }

    #[test]
    fn a_busy_port_doubling_is_no_spike() {
        let mut rates = vec![20_000; 40];
        rates.extend([40_000; 10]);
        assert!(drive(&rates).is_empty());
    }

    #[test]
    fn a_sustained_rise_ends_when_it_becomes_the_baseline() {
        let mut rates = vec![10; 10];
        rates.extend([100_000; 60]);
        let got = drive(&rates);
        assert_eq!(got.len(), 2, "{got:?}");
        assert!(got[0].1.start && !got[1].1.start);
        // Within a time constant or so, not at once.
        assert!((15..45).contains(&got[1].0), "{got:?}");
    }

    #[test]
    fn counters_going_back_are_a_new_port() {
        let mut d = Detector::new(DetectorConfig::default());
        let t0 = Instant::now();
        let s = |n| ports(vec![port("a", n, &[])]);
        for i in 0..10 {
            assert!(d
                .observe(t0 + Duration::from_secs(i), &s(1_000_000 + i))
                .is_empty());
        }
        // Reattached: counting from 0 again, then at once busy.
        assert!(d.observe(t0 + Duration::from_secs(10), &s(0)).is_empty());
        assert!(d
            .observe(t0 + Duration::from_secs(11), &s(90_000))
            .is_empty());
    }

    #[test]
    fn drop_bursts_are_per_reason() {
        let mut d = Detector::new(DetectorConfig::default());
        let t0 = Instant::now();
        let mut got = Vec::new();
        // `reserved_group` drops steadily at 20 a second from the start
        // (its baseline); `spoofed_mac` bursts at 100 a second for 3 s.
        for i in 0..20u64 {
            let spoofed = match i {
                0..=9 => 0,
                10..=12 => (i - 9) * 100,
                _ => 300,
            };
            let s = ports(vec![port(
                "a",
                i,
                &[("reserved_group", i * 20), ("spoofed_mac", spoofed)],
            )]);
            for a in d.observe(t0 + Duration::from_secs(i), &s) {
                got.push((i, a));
            }
        }
        let kinds: Vec<_> = got
            .iter()
            .map(|(i, a)| (*i, a.kind, a.start, a.subject.clone()))
            .collect();
        let sub = Subject::PortDrops(key("a"), "spoofed_mac");
        // The steady reason starts a burst once, at its first rate (its
        // baseline is zero then), and never ends; the burst is its own.
        assert_eq!(
            kinds,
            vec![
                (
                    1,
                    AnomalyKind::DropBurst,
                    true,
                    Subject::PortDrops(key("a"), "reserved_group")
                ),
                (10, AnomalyKind::DropBurst, true, sub.clone()),
                (13, AnomalyKind::DropBurst, false, sub),
            ]
        );
        let detail = &got[1].1.detail;
        assert!(
            detail.contains(&("drops_per_second", "100".into())),
            "{detail:?}"
        );
    }

    #[test]
    fn a_mac_table_near_its_bound_is_reported_with_hysteresis() {
        let mut d = Detector::new(DetectorConfig::default());
        let t0 = Instant::now();
        let table = |entries| Sample {
            tables: vec![TableSample {
                network: "web".into(),
                entries,
                bound: 8192,
            }],
            ..Default::default()
        };
        let mut got = Vec::new();
        for (i, n) in [100, 7000, 7373, 7500, 7000, 6600, 6500, 7400]
            .into_iter()
            .enumerate()
        {
            for a in d.observe(t0 + Duration::from_secs(i as u64), &table(n)) {
                got.push((i, a.start));
            }
        }
        // 7373 is 90 %; 7000 (85 %) is not yet the end, 6500 (79 %) is.
        assert_eq!(got, vec![(2, true), (6, false), (7, true)]);
        // The network goes: its anomaly ends.
        let gone = d.observe(t0 + Duration::from_secs(9), &Sample::default());
        assert_eq!(gone.len(), 1);
        assert!(!gone[0].start && gone[0].kind == AnomalyKind::MacTableFull);
        assert_eq!(d.tracked(), 0);
    }

    #[test]
    fn a_flapping_member_is_reported_once_until_it_settles() {
        let mut d = Detector::new(DetectorConfig::default());
        let t0 = Instant::now();
        let change = |state: &str| Sample {
            member_changes: vec![MemberChange {
                host: "h2".into(),
                state: state.into(),
            }],
            ..Default::default()
        };
        let mut got = Vec::new();
        let states = ["suspect", "alive", "suspect", "alive", "suspect", "alive"];
        for (i, s) in states.iter().enumerate() {
            for a in d.observe(t0 + Duration::from_secs(5 * i as u64), &change(s)) {
                got.push((5 * i as u64, a.start));
            }
        }
        // Then quiet: samples without changes.
        for t in (30..120).step_by(5) {
            for a in d.observe(t0 + Duration::from_secs(t), &Sample::default()) {
                got.push((t, a.start));
            }
        }
        // 4 changes by second 15; the 6th (second 25) leaves the window
        // (60 s) after second 85, leaving none.
        assert_eq!(got, vec![(15, true), (85, false)]);
        assert_eq!(d.tracked(), 0);
        // Two changes now and then are no flapping.
        for t in [200, 230] {
            assert!(d
                .observe(t0 + Duration::from_secs(t), &change("suspect"))
                .is_empty());
        }
    }

    #[test]
    fn a_port_that_goes_ends_what_it_had() {
        let mut rates = vec![0; 10];
        rates.extend([60_000; 2]);
        let mut d = Detector::new(DetectorConfig::default());
        let t0 = Instant::now();
        let mut total = 0;
        let mut starts = 0;
        for (i, r) in std::iter::once(&0).chain(&rates).enumerate() {
            total += r;
            starts += d
                .observe(
                    t0 + Duration::from_secs(i as u64),
                    &ports(vec![port("a", total, &[])]),
                )
                .len();
        }
        assert_eq!(starts, 1);
        let out = d.observe(t0 + Duration::from_secs(20), &Sample::default());
        assert_eq!(out.len(), 1);
        assert_eq!((out[0].kind, out[0].start), (AnomalyKind::RateSpike, false));
        assert_eq!(d.tracked(), 0);
    }

    /// One step of a random run: time passed, and per port (of three)
    /// whether it is present and how much its counters rose.
    #[derive(Debug, Clone)]
    struct Step {
        millis: u64,
        ports: Vec<Option<(u64, u64, u64)>>,
        tables: Vec<u64>,
        flaps: Vec<bool>,
    }

    fn step() -> impl Strategy<Value = Step> {
        (
            0u64..3_000,
            proptest::collection::vec(
                proptest::option::weighted(0.9, (0u64..200_000, 0u64..50_000_000, 0u64..300)),
                3,
            ),
            proptest::collection::vec(0u64..=8192, 2),
            proptest::collection::vec(any::<bool>(), 2),
        )
            .prop_map(|(millis, ports, tables, flaps)| Step {
                millis,
                ports,
                tables,
                flaps,
            })
    }

    proptest! {
        /// Whatever the counters do: every anomaly starts before it ends
        /// and never starts twice without an end between, and what is
        /// tracked never outgrows what the last sample showed.
        #[test]
        fn anomalies_pair_up_and_state_stays_bounded(steps in proptest::collection::vec(step(), 1..80)) {
            let mut d = Detector::new(DetectorConfig::default());
            let mut now = Instant::now();
            let mut totals = [(0u64, 0u64, 0u64); 3];
            let mut open: BTreeMap<(AnomalyKind, Subject), ()> = BTreeMap::new();
            for s in &steps {
                now += Duration::from_millis(s.millis);
                let mut sample = Sample::default();
                for (i, p) in s.ports.iter().enumerate() {
                    match p {
                        Some((pk, by, dr)) => {
                            let t = &mut totals[i];
                            *t = (t.0 + pk, t.1 + by, t.2 + dr);
                            sample.ports.push(PortSample {
                                key: key(&format!("c{i}")),
                                counters: PortCounters { rx_packets: t.0, tx_packets: t.0 / 3, rx_bytes: t.1, ..PortCounters::default() },
                                drops: vec![("spoofed_ip", t.2)],
                            });
                        }
                        // Gone, and back later counting from zero.
                        None => totals[i] = (0, 0, 0),
                    }
                }
                for (i, n) in s.tables.iter().enumerate() {
                    sample.tables.push(TableSample { network: format!("n{i}"), entries: *n, bound: 8192 });
                }
                for (i, f) in s.flaps.iter().enumerate() {
                    if *f {
                        sample.member_changes.push(MemberChange { host: format!("h{i}"), state: "suspect".into() });
                    }
                }
                for a in d.observe(now, &sample) {
                    let k = (a.kind, a.subject.clone());
                    if a.start {
                        prop_assert!(open.insert(k, ()).is_none(), "started twice: {:?}", a);
                    } else {
                        prop_assert!(open.remove(&k).is_some(), "ended unstarted: {:?}", a);
                    }
                }
                let present = sample.ports.len() * 2 + sample.tables.len() + 2;
                prop_assert!(d.tracked() <= present, "{} > {}", d.tracked(), present);
            }
        }

        /// Traffic under both floors is never a spike, whatever its shape.
        #[test]
        fn traffic_under_the_floors_is_never_a_spike(
            rates in proptest::collection::vec((0u64..1_999, 0u64..1_999_999), 1..60),
        ) {
            let mut d = Detector::new(DetectorConfig::default());
            let t0 = Instant::now();
            let (mut pk, mut by) = (0, 0);
            for (i, (p, b)) in rates.iter().enumerate() {
                pk += p;
                by += b;
                let s = ports(vec![PortSample {
                    key: key("a"),
                    counters: PortCounters { rx_packets: pk, rx_bytes: by, ..Default::default() },
                    drops: vec![],
                }]);
                let out = d.observe(t0 + Duration::from_secs(i as u64), &s);
                prop_assert!(out.is_empty(), "{:?}", out);
            }
        }
    }
}
