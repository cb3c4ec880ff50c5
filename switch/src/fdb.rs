//! The forwarding database: which port each MAC address was last seen on,
//! per network.
//!
//! Sans-IO: every call that depends on time takes `now`; nothing reads the
//! clock. Learned entries age out `aging` after they were last seen (lookups
//! ignore an expired entry at once; [`Fdb::handle_timeout`] reclaims them),
//! static entries never age.
//!
//! The table is bounded twice, so that no single port can fill it: at most
//! `max_per_network` learned entries in a network and `max_per_port` learned
//! entries behind a port. When a bound is reached, new addresses are not
//! learned (frames to them are flooded, and the miss is counted), while
//! known addresses keep refreshing. Static entries are configured by the
//! control plane, do not count against these bounds, and are never displaced
//! by learning.
//!
//! Lookups are one probe of a hash table keyed by (network, MAC) with a
//! per-process randomly keyed hasher ([`FastMap`]); no call on the
//! per-packet path allocates.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::{MacAddr, NetworkId, PortId};

/// A `HashMap` with foldhash's fast hasher, keyed per map from a
/// per-process random seed: a few cycles for a (network, MAC) key against
/// the tens SipHash takes. An attacker who picks MAC addresses cannot
/// predict which collide, and the tables it serves are bounded anyway.
/// Every table on the per-packet path uses it.
pub type FastMap<K, V> = HashMap<K, V, FastHashBuilder>;

/// The hasher builder of [`FastMap`].
pub type FastHashBuilder = foldhash::fast::RandomState;

/// Settings of an [`Fdb`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FdbConfig {
    /// How long a learned entry lives after the last frame from its MAC.
    pub aging: Duration,
    /// Most learned entries in one network.
    pub max_per_network: usize,
    /// Most learned entries behind one port.
    pub max_per_port: usize,
}

impl Default for FdbConfig {
    /// 300 s aging (as IEEE 802.1D and Linux bridges), 8192 entries per
    /// network, 64 per port.
    fn default() -> Self {
        FdbConfig {
            aging: Duration::from_secs(300),
            max_per_network: 8192,
            max_per_port: 64,
        }
    }
}

/// What [`Fdb::learn`] did with a source address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Learned {
    /// A new entry was made.
    New,
    /// The entry already pointed at this port; its age was reset.
    Refreshed,
    /// The address moved here from another port (a station move).
    Moved {
        /// Where it was before.
        from: PortId,
    },
    /// A bound was reached: the address was not learned (and if it was
    /// known on another port, that stale entry was removed).
    TableFull,
    /// The address is static on another port and was not learned here.
    StaticConflict,
    /// The address is multicast or zero, never a station's source.
    InvalidSource,
}

/// One entry, as the control plane sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FdbEntryView {
    /// The network (bridge domain).
    pub network: NetworkId,
    /// The station's address.
    pub mac: MacAddr,
    /// The port it is behind.
    pub port: PortId,
    /// When a frame from it was last seen; `None` for a static entry
    /// (configured by the control plane, never aging).
    pub last_seen: Option<Instant>,
}

/// Counters of an [`Fdb`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FdbStats {
    /// Addresses not learned because a bound was reached.
    pub not_learned: u64,
    /// Station moves.
    pub moves: u64,
    /// Frames from a static address on another port than its own.
    pub static_conflicts: u64,
    /// Entries removed by aging.
    pub aged_out: u64,
}

impl FdbStats {
    /// Adds another table's counters (one table per datapath worker).
    pub fn add(&mut self, o: &FdbStats) {
        self.not_learned += o.not_learned;
        self.moves += o.moves;
        self.static_conflicts += o.static_conflicts;
        self.aged_out += o.aged_out;
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Key {
    mac: u64,
    network: u32,
}

impl Key {
    #[inline]
    fn new(network: NetworkId, mac: MacAddr) -> Self {
        let m = mac.0;
        Key {
            mac: u64::from_le_bytes([m[0], m[1], m[2], m[3], m[4], m[5], 0, 0]),
            network: network.0,
        }
    }

    fn mac(&self) -> MacAddr {
        let b = self.mac.to_le_bytes();
        MacAddr([b[0], b[1], b[2], b[3], b[4], b[5]])
    }
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    port: PortId,
    /// `None` for a static entry.
    last_seen: Option<Instant>,
}

impl Entry {
    #[inline]
    fn is_static(&self) -> bool {
        self.last_seen.is_none()
    }

    /// True if learned and not seen for `aging` by `now`.
    #[inline]
    fn expired(&self, aging: Duration, now: Instant) -> bool {
        self.last_seen
            .is_some_and(|t| now.saturating_duration_since(t) >= aging)
    }
}

/// The forwarding database of every network of a bridge.
#[derive(Debug, Clone)]
pub struct Fdb {
    config: FdbConfig,
    table: FastMap<Key, Entry>,
    /// Learned (not static) entries per network and per port. Keys with a
    /// zero count are removed, so these stay as small as the table.
    per_network: FastMap<NetworkId, usize>,
    per_port: FastMap<PortId, usize>,
    /// No learned entry expires before this; `None` when there are none.
    next_scan: Option<Instant>,
    stats: FdbStats,
}

/// The shortest interval between two aging scans: expiry is exact for
/// lookups, and reclaiming memory a second late costs nothing.
const SCAN_RESOLUTION: Duration = Duration::from_secs(1);

impl Fdb {
    /// An empty table.
    pub fn new(config: FdbConfig) -> Self {
        Fdb {
            config,
            table: FastMap::default(),
            per_network: FastMap::default(),
            per_port: FastMap::default(),
            next_scan: None,
            stats: FdbStats::default(),
        }
    }

    /// The settings.
    pub fn config(&self) -> &FdbConfig {
        &self.config
    }

    /// Counters.
    pub fn stats(&self) -> &FdbStats {
        &self.stats
    }

    /// Entries, learned and static, including expired ones not yet reclaimed.
    pub fn len(&self) -> usize {
        self.table.len()
    }

    /// True if there are no entries.
    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    /// Learned entries in `network`.
    pub fn learned_in_network(&self, network: NetworkId) -> usize {
        self.per_network.get(&network).copied().unwrap_or(0)
    }

    /// Learned entries behind `port`.
    pub fn learned_on_port(&self, port: PortId) -> usize {
        self.per_port.get(&port).copied().unwrap_or(0)
    }

    /// Records that a frame from `mac` arrived on `port` of `network`.
    #[inline]
    pub fn learn(
        &mut self,
        network: NetworkId,
        mac: MacAddr,
        port: PortId,
        now: Instant,
    ) -> Learned {
        if mac.is_multicast() || mac.is_zero() {
            return Learned::InvalidSource;
        }
        let key = Key::new(network, mac);
        let aging = self.config.aging;
        if let Some(entry) = self.table.get_mut(&key) {
            if entry.port == port {
                if let Some(t) = &mut entry.last_seen {
                    *t = now;
                }
                return Learned::Refreshed;
            }
            if entry.is_static() {
                self.stats.static_conflicts += 1;
                return Learned::StaticConflict;
            }
            let from = entry.port;
            if count(&self.per_port, port) >= self.config.max_per_port {
                // The old entry is stale either way: better to flood to the
                // station than to send its frames to where it was.
                self.table.remove(&key);
                decrement(&mut self.per_port, from);
                decrement(&mut self.per_network, network);
                self.stats.not_learned += 1;
                return Learned::TableFull;
            }
            let was_expired = entry.expired(aging, now);
            entry.port = port;
            entry.last_seen = Some(now);
            decrement(&mut self.per_port, from);
            *self.per_port.entry(port).or_insert(0) += 1;
            if was_expired {
                // Not a move: the station was gone, and came back elsewhere.
                return Learned::New;
            }
            self.stats.moves += 1;
            return Learned::Moved { from };
        }
        if count(&self.per_network, network) >= self.config.max_per_network
            || count(&self.per_port, port) >= self.config.max_per_port
        {
            self.stats.not_learned += 1;
            return Learned::TableFull;
        }
        self.table.insert(
            key,
            Entry {
                port,
                last_seen: Some(now),
            },
        );
        *self.per_network.entry(network).or_insert(0) += 1;
        *self.per_port.entry(port).or_insert(0) += 1;
        let expiry = now + aging;
        self.next_scan = Some(self.next_scan.map_or(expiry, |t| t.min(expiry)));
        Learned::New
    }

    /// The port `mac` is behind in `network`, if known and not expired.
    #[inline]
    pub fn lookup(&self, network: NetworkId, mac: MacAddr, now: Instant) -> Option<PortId> {
        self.lookup_entry(network, mac, now).map(|(port, _)| port)
    }

    /// [`Fdb::lookup`], with whether the entry is static (pinned by the
    /// control plane) rather than learned.
    #[inline]
    pub fn lookup_entry(
        &self,
        network: NetworkId,
        mac: MacAddr,
        now: Instant,
    ) -> Option<(PortId, bool)> {
        let entry = self.table.get(&Key::new(network, mac))?;
        if entry.expired(self.config.aging, now) {
            None
        } else {
            Some((entry.port, entry.is_static()))
        }
    }

    /// The entry for `mac` in `network`, expired or not.
    pub fn get(&self, network: NetworkId, mac: MacAddr) -> Option<FdbEntryView> {
        let key = Key::new(network, mac);
        self.table.get(&key).map(|e| view(key, e))
    }

    /// Pins `mac` in `network` to `port`: it never ages and learning never
    /// moves it. Replaces any entry for the address.
    pub fn set_static(&mut self, network: NetworkId, mac: MacAddr, port: PortId) {
        let key = Key::new(network, mac);
        let entry = Entry {
            port,
            last_seen: None,
        };
        if let Some(old) = self.table.insert(key, entry) {
            if !old.is_static() {
                decrement(&mut self.per_port, old.port);
                decrement(&mut self.per_network, network);
            }
        }
    }

    /// Removes the entry for `mac` in `network`, learned or static.
    pub fn remove(&mut self, network: NetworkId, mac: MacAddr) -> Option<FdbEntryView> {
        let key = Key::new(network, mac);
        let entry = self.table.remove(&key)?;
        if !entry.is_static() {
            decrement(&mut self.per_port, entry.port);
            decrement(&mut self.per_network, network);
        }
        Some(view(key, &entry))
    }

    /// Removes every entry behind `port`, static ones included. Returns how
    /// many were removed.
    pub fn remove_port(&mut self, port: PortId) -> usize {
        let before = self.table.len();
        let per_network = &mut self.per_network;
        self.table.retain(|key, entry| {
            if entry.port != port {
                return true;
            }
            if !entry.is_static() {
                decrement(per_network, NetworkId(key.network));
            }
            false
        });
        self.per_port.remove(&port);
        before - self.table.len()
    }

    /// Removes every entry of `network`. Returns how many were removed.
    pub fn remove_network(&mut self, network: NetworkId) -> usize {
        let before = self.table.len();
        let per_port = &mut self.per_port;
        self.table.retain(|key, entry| {
            if key.network != network.0 {
                return true;
            }
            if !entry.is_static() {
                decrement(per_port, entry.port);
            }
            false
        });
        self.per_network.remove(&network);
        before - self.table.len()
    }

    /// Reclaims expired entries if one may have expired by `now`. Returns
    /// how many were removed.
    pub fn handle_timeout(&mut self, now: Instant) -> usize {
        match self.next_scan {
            Some(t) if t <= now => {}
            _ => return 0,
        }
        let aging = self.config.aging;
        let before = self.table.len();
        let mut earliest: Option<Instant> = None;
        let per_port = &mut self.per_port;
        let per_network = &mut self.per_network;
        self.table.retain(|key, entry| {
            let Some(last_seen) = entry.last_seen else {
                return true;
            };
            if now.saturating_duration_since(last_seen) >= aging {
                decrement(per_port, entry.port);
                decrement(per_network, NetworkId(key.network));
                return false;
            }
            let expiry = last_seen + aging;
            earliest = Some(earliest.map_or(expiry, |t| t.min(expiry)));
            true
        });
        let removed = before - self.table.len();
        self.stats.aged_out += removed as u64;
        self.next_scan = earliest.map(|t| t.max(now + SCAN_RESOLUTION.min(aging)));
        removed
    }

    /// When [`Self::handle_timeout`] next has work, if ever.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.next_scan
    }

    /// The entries of `network`, learned and static, expired ones included
    /// until reclaimed. Order is unspecified.
    pub fn entries(&self, network: NetworkId) -> impl Iterator<Item = FdbEntryView> + '_ {
        self.table
            .iter()
            .filter(move |(key, _)| key.network == network.0)
            .map(|(key, entry)| view(*key, entry))
    }
}

fn view(key: Key, entry: &Entry) -> FdbEntryView {
    FdbEntryView {
        network: NetworkId(key.network),
        mac: key.mac(),
        port: entry.port,
        last_seen: entry.last_seen,
    }
}

#[inline]
fn count<K: std::hash::Hash + Eq>(map: &FastMap<K, usize>, key: K) -> usize {
    map.get(&key).copied().unwrap_or(0)
}

fn decrement<K: std::hash::Hash + Eq>(map: &mut FastMap<K, usize>, key: K) {
    if let Some(n) = map.get_mut(&key) {
        *n -= 1;
        if *n == 0 {
            map.remove(&key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rstest::rstest;
    use std::hash::{BuildHasher, Hasher};

    const NET: NetworkId = NetworkId(1);
    const NET2: NetworkId = NetworkId(2);
    const P1: PortId = PortId(1);
    const P2: PortId = PortId(2);
    const P3: PortId = PortId(3);

    fn mac(n: u32) -> MacAddr {
        let b = n.to_be_bytes();
        MacAddr([0x02, 0x00, b[0], b[1], b[2], b[3]])
    }

    fn config(max_per_network: usize, max_per_port: usize) -> FdbConfig {
        FdbConfig {
            aging: Duration::from_secs(10),
            max_per_network,
            max_per_port,
        }
    }

    /// Recounts the per-network and per-port tallies from the table.
    fn assert_counts_consistent(fdb: &Fdb) {
        let mut nets: HashMap<NetworkId, usize> = HashMap::new();
        let mut ports: HashMap<PortId, usize> = HashMap::new();
        for (key, entry) in &fdb.table {
            if !entry.is_static() {
                *nets.entry(NetworkId(key.network)).or_default() += 1;
                *ports.entry(entry.port).or_default() += 1;
            }
        }
        let tallied: HashMap<_, _> = fdb.per_network.iter().map(|(k, v)| (*k, *v)).collect();
        assert_eq!(tallied, nets);
        let tallied: HashMap<_, _> = fdb.per_port.iter().map(|(k, v)| (*k, *v)).collect();
        assert_eq!(tallied, ports);
    }

    #[test]
    fn learns_and_looks_up() {
        let t0 = Instant::now();
        let mut fdb = Fdb::new(FdbConfig::default());
        assert_eq!(fdb.lookup(NET, mac(1), t0), None);
        assert_eq!(fdb.learn(NET, mac(1), P1, t0), Learned::New);
        assert_eq!(fdb.lookup(NET, mac(1), t0), Some(P1));
        assert_eq!(fdb.learn(NET, mac(1), P1, t0), Learned::Refreshed);
        assert_eq!(fdb.lookup(NET2, mac(1), t0), None, "networks are separate");
        assert_eq!(fdb.len(), 1);
        assert_eq!(fdb.learned_in_network(NET), 1);
        assert_eq!(fdb.learned_on_port(P1), 1);
        let view = fdb.get(NET, mac(1)).unwrap();
        assert_eq!(view.mac, mac(1));
        assert_eq!(view.network, NET);
        assert_eq!(view.last_seen, Some(t0));
    }

    #[rstest]
    #[case::broadcast(MacAddr::BROADCAST)]
    #[case::multicast(MacAddr([0x01, 0x00, 0x5e, 0, 0, 1]))]
    #[case::zero(MacAddr([0; 6]))]
    fn never_learns_group_or_zero_sources(#[case] source: MacAddr) {
        let t0 = Instant::now();
        let mut fdb = Fdb::new(FdbConfig::default());
        assert_eq!(fdb.learn(NET, source, P1, t0), Learned::InvalidSource);
        assert!(fdb.is_empty());
    }

    #[test]
    fn entries_age_out_exactly_and_refresh_extends() {
        let t0 = Instant::now();
        let aging = Duration::from_secs(10);
        let mut fdb = Fdb::new(config(100, 100));
        fdb.learn(NET, mac(1), P1, t0);
        fdb.learn(NET, mac(2), P1, t0);
        assert_eq!(fdb.poll_timeout(), Some(t0 + aging));
        let almost = t0 + aging - Duration::from_nanos(1);
        assert_eq!(fdb.lookup(NET, mac(1), almost), Some(P1));
        // Refresh mac(2) just before it would expire.
        assert_eq!(fdb.learn(NET, mac(2), P1, almost), Learned::Refreshed);
        assert_eq!(
            fdb.lookup(NET, mac(1), t0 + aging),
            None,
            "expired on lookup"
        );
        assert_eq!(fdb.lookup(NET, mac(2), t0 + aging), Some(P1));
        // Nothing to do before the deadline.
        assert_eq!(fdb.handle_timeout(almost), 0);
        assert_eq!(fdb.handle_timeout(t0 + aging), 1);
        assert_eq!(fdb.len(), 1);
        assert_eq!(fdb.stats().aged_out, 1);
        let next = fdb.poll_timeout().unwrap();
        assert!(next > t0 + aging);
        assert!(next <= almost + aging);
        assert_eq!(fdb.handle_timeout(almost + aging), 1);
        assert!(fdb.is_empty());
        assert_eq!(fdb.poll_timeout(), None);
        assert_counts_consistent(&fdb);
    }

    #[test]
    fn static_entries_never_age_and_are_not_displaced() {
        let t0 = Instant::now();
        let mut fdb = Fdb::new(config(100, 100));
        fdb.set_static(NET, mac(1), P1);
        let much_later = t0 + Duration::from_secs(1_000_000);
        assert_eq!(fdb.lookup(NET, mac(1), much_later), Some(P1));
        assert_eq!(fdb.handle_timeout(much_later), 0);
        assert_eq!(fdb.learn(NET, mac(1), P2, t0), Learned::StaticConflict);
        assert_eq!(fdb.lookup(NET, mac(1), t0), Some(P1));
        assert_eq!(fdb.learn(NET, mac(1), P1, t0), Learned::Refreshed);
        assert_eq!(fdb.stats().static_conflicts, 1);
        assert_eq!(fdb.get(NET, mac(1)).unwrap().last_seen, None);
        // Statics do not count against learning bounds.
        assert_eq!(fdb.learned_in_network(NET), 0);
        assert_eq!(fdb.learned_on_port(P1), 0);
        assert_eq!(fdb.poll_timeout(), None);
    }

    #[test]
    fn static_replaces_learned_entry() {
        let t0 = Instant::now();
        let mut fdb = Fdb::new(config(100, 100));
        fdb.learn(NET, mac(1), P2, t0);
        fdb.set_static(NET, mac(1), P1);
        assert_eq!(fdb.lookup(NET, mac(1), t0), Some(P1));
        assert_eq!(fdb.learned_on_port(P2), 0);
        assert_counts_consistent(&fdb);
        assert_eq!(fdb.remove(NET, mac(1)).unwrap().port, P1);
        assert_eq!(fdb.remove(NET, mac(1)), None);
        assert!(fdb.is_empty());
    }

    /// (max per network, max per port, ports, MACs each port sends from,
    /// entries expected to be learned in total)
    #[rstest]
    #[case::under_both(10, 10, 2, 3, 6)]
    #[case::port_bound(100, 4, 3, 10, 12)]
    #[case::network_bound(5, 4, 3, 4, 5)]
    #[case::both_bounds(7, 3, 4, 5, 7)]
    #[case::zero_capacity(0, 10, 2, 2, 0)]
    fn table_bounds(
        #[case] max_per_network: usize,
        #[case] max_per_port: usize,
        #[case] ports: u32,
        #[case] macs_per_port: u32,
        #[case] expected: usize,
    ) {
        let t0 = Instant::now();
        let mut fdb = Fdb::new(config(max_per_network, max_per_port));
        for p in 0..ports {
            for m in 0..macs_per_port {
                fdb.learn(NET, mac(p * 1000 + m), PortId(p), t0);
            }
        }
        assert_eq!(fdb.learned_in_network(NET), expected);
        assert_eq!(fdb.len(), expected);
        let attempts = (ports * macs_per_port) as usize;
        assert_eq!(fdb.stats().not_learned as usize, attempts - expected);
        for p in 0..ports {
            assert!(fdb.learned_on_port(PortId(p)) <= max_per_port);
        }
        assert_counts_consistent(&fdb);
    }

    #[test]
    fn one_port_cannot_fill_the_network() {
        let t0 = Instant::now();
        let mut fdb = Fdb::new(config(8, 4));
        for m in 0..100 {
            fdb.learn(NET, mac(m), P1, t0);
        }
        assert_eq!(fdb.learned_on_port(P1), 4);
        assert_eq!(fdb.learn(NET, mac(1000), P2, t0), Learned::New);
        // Another network has its own budget.
        assert_eq!(fdb.learn(NET2, mac(0), P3, t0), Learned::New);
    }

    #[test]
    fn full_table_keeps_refreshing_known_entries() {
        let t0 = Instant::now();
        let aging = Duration::from_secs(10);
        let mut fdb = Fdb::new(config(2, 2));
        fdb.learn(NET, mac(1), P1, t0);
        fdb.learn(NET, mac(2), P1, t0);
        assert_eq!(fdb.learn(NET, mac(3), P1, t0), Learned::TableFull);
        let t1 = t0 + Duration::from_secs(9);
        assert_eq!(fdb.learn(NET, mac(1), P1, t1), Learned::Refreshed);
        assert_eq!(fdb.lookup(NET, mac(1), t0 + aging), Some(P1));
        assert_eq!(fdb.lookup(NET, mac(3), t1), None);
        // Once mac(2) ages out, there is room again.
        fdb.handle_timeout(t0 + aging);
        assert_eq!(fdb.learn(NET, mac(3), P1, t0 + aging), Learned::New);
    }

    #[test]
    fn station_move_updates_entry_and_counts() {
        let t0 = Instant::now();
        let mut fdb = Fdb::new(config(100, 100));
        fdb.learn(NET, mac(1), P1, t0);
        assert_eq!(fdb.learn(NET, mac(1), P2, t0), Learned::Moved { from: P1 });
        assert_eq!(fdb.lookup(NET, mac(1), t0), Some(P2));
        assert_eq!(fdb.learned_on_port(P1), 0);
        assert_eq!(fdb.learned_on_port(P2), 1);
        assert_eq!(fdb.stats().moves, 1);
        // Coming back after expiry elsewhere is a new entry, not a move.
        let later = t0 + Duration::from_secs(10);
        assert_eq!(fdb.learn(NET, mac(1), P3, later), Learned::New);
        assert_eq!(fdb.stats().moves, 1);
        assert_counts_consistent(&fdb);
    }

    #[test]
    fn move_to_full_port_forgets_the_stale_entry() {
        let t0 = Instant::now();
        let mut fdb = Fdb::new(config(100, 1));
        fdb.learn(NET, mac(1), P1, t0);
        fdb.learn(NET, mac(2), P2, t0);
        assert_eq!(fdb.learn(NET, mac(1), P2, t0), Learned::TableFull);
        assert_eq!(fdb.lookup(NET, mac(1), t0), None);
        assert_eq!(fdb.learned_on_port(P1), 0);
        assert_counts_consistent(&fdb);
    }

    #[test]
    fn remove_port_and_network_flush_everything() {
        let t0 = Instant::now();
        let mut fdb = Fdb::new(config(100, 100));
        fdb.learn(NET, mac(1), P1, t0);
        fdb.learn(NET, mac(2), P1, t0);
        fdb.set_static(NET, mac(3), P1);
        fdb.learn(NET, mac(4), P2, t0);
        fdb.learn(NET2, mac(5), P3, t0);
        assert_eq!(fdb.remove_port(P1), 3);
        assert_eq!(fdb.lookup(NET, mac(3), t0), None);
        assert_eq!(fdb.lookup(NET, mac(4), t0), Some(P2));
        assert_eq!(fdb.learned_on_port(P1), 0);
        assert_counts_consistent(&fdb);
        assert_eq!(fdb.remove_network(NET), 1);
        assert_eq!(fdb.learned_in_network(NET), 0);
        assert_eq!(fdb.lookup(NET2, mac(5), t0), Some(P3));
        assert_eq!(fdb.entries(NET2).count(), 1);
        assert_eq!(fdb.entries(NET).count(), 0);
        assert_counts_consistent(&fdb);
    }

    #[test]
    fn entries_lists_one_network() {
        let t0 = Instant::now();
        let mut fdb = Fdb::new(config(100, 100));
        fdb.learn(NET, mac(1), P1, t0);
        fdb.set_static(NET, mac(2), P2);
        fdb.learn(NET2, mac(1), P3, t0);
        let mut entries: Vec<_> = fdb.entries(NET).collect();
        entries.sort_by_key(|e| e.mac);
        assert_eq!(
            entries,
            vec![
                FdbEntryView {
                    network: NET,
                    mac: mac(1),
                    port: P1,
                    last_seen: Some(t0)
                },
                FdbEntryView {
                    network: NET,
                    mac: mac(2),
                    port: P2,
                    last_seen: None
                },
            ]
        );
    }

    #[test]
    fn hasher_is_keyed_and_spreads_keys() {
        let a = FastHashBuilder::default();
        let b = FastHashBuilder::default();
        let key = Key::new(NET, mac(1));
        assert_eq!(a.hash_one(key), a.hash_one(key));
        assert_ne!(a.hash_one(key), b.hash_one(key), "seeds differ");
        // Sequential MACs spread over buckets (hashbrown uses the low bits).
        let mut buckets = [0u32; 256];
        for n in 0..25_600 {
            buckets[(a.hash_one(Key::new(NET, mac(n))) & 0xff) as usize] += 1;
        }
        let max = *buckets.iter().max().unwrap();
        assert!(max < 200, "worst bucket {max} of an average 100");
        // Byte-slice input distinguishes lengths.
        let h = |bytes: &[u8]| {
            let mut hasher = a.build_hasher();
            hasher.write(bytes);
            hasher.finish()
        };
        assert_ne!(h(b"a"), h(b"a\0"));
    }

    #[derive(Debug, Clone)]
    enum Op {
        Learn { net: u32, mac: u32, port: u32 },
        Advance(u64),
        Timeout,
        RemovePort(u32),
        RemoveNetwork(u32),
        Static { net: u32, mac: u32, port: u32 },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            8 => (0..3u32, 0..40u32, 0..6u32).prop_map(|(net, mac, port)| Op::Learn { net, mac, port }),
            2 => (0..8_000u64).prop_map(Op::Advance),
            1 => Just(Op::Timeout),
            1 => (0..6u32).prop_map(Op::RemovePort),
            1 => (0..3u32).prop_map(Op::RemoveNetwork),
            1 => (0..3u32, 0..40u32, 0..6u32).prop_map(|(net, mac, port)| Op::Static { net, mac, port }),
        ]
    }

    proptest! {
        #[test]
        fn bounds_and_tallies_hold(ops in proptest::collection::vec(op(), 1..300)) {
            let cfg = FdbConfig { aging: Duration::from_secs(5), max_per_network: 12, max_per_port: 5 };
            let mut fdb = Fdb::new(cfg);
            let mut now = Instant::now();
            for op in ops {
                match op {
                    Op::Learn { net, mac: m, port } => {
                        let result = fdb.learn(NetworkId(net), mac(m), PortId(port), now);
                        let found = fdb.lookup(NetworkId(net), mac(m), now);
                        match result {
                            Learned::New | Learned::Refreshed | Learned::Moved { .. } => {
                                prop_assert_eq!(found, Some(PortId(port)));
                            }
                            Learned::StaticConflict => {
                                prop_assert!(found.is_some() && found != Some(PortId(port)));
                            }
                            Learned::TableFull => prop_assert_eq!(found, None),
                            Learned::InvalidSource => prop_assert!(false, "valid source refused"),
                        }
                    }
                    Op::Advance(ms) => now += Duration::from_millis(ms),
                    Op::Timeout => {
                        fdb.handle_timeout(now);
                        if let Some(next) = fdb.poll_timeout() {
                            prop_assert!(next > now);
                        }
                        // Reclaimed at most the scan resolution late.
                        let grace = now.checked_sub(SCAN_RESOLUTION).unwrap_or(now);
                        for (key, entry) in &fdb.table {
                            prop_assert!(!entry.expired(cfg.aging, grace), "{:?} survived", key);
                        }
                    }
                    Op::RemovePort(p) => {
                        fdb.remove_port(PortId(p));
                        prop_assert!(fdb.table.values().all(|e| e.port != PortId(p)));
                    }
                    Op::RemoveNetwork(n) => {
                        fdb.remove_network(NetworkId(n));
                        prop_assert_eq!(fdb.entries(NetworkId(n)).count(), 0);
                    }
                    Op::Static { net, mac: m, port } => {
                        fdb.set_static(NetworkId(net), mac(m), PortId(port));
                    }
                }
                for n in 0..3 {
                    prop_assert!(fdb.learned_in_network(NetworkId(n)) <= cfg.max_per_network);
                }
                for p in 0..6 {
                    prop_assert!(fdb.learned_on_port(PortId(p)) <= cfg.max_per_port);
                }
                // No learned entry lingers more than the scan resolution past
                // its expiry (unless it had expired already).
                if let Some(next) = fdb.poll_timeout() {
                    for e in fdb.table.values() {
                        if let Some(t) = e.last_seen {
                            let expiry = t + cfg.aging;
                            prop_assert!(expiry + SCAN_RESOLUTION >= next || expiry <= now);
                        }
                    }
                } else {
                    prop_assert!(fdb.table.values().all(|e| e.is_static()));
                }
                assert_counts_consistent(&fdb);
            }
        }
    }
}
