//! The ownership table: who owns which range of a network's addresses.
//!
//! The table is a ring of *tokens*, as in Weave Net's IPAM ring: each token
//! is an address with an owner, a version and the last address of its range.
//! A token's range runs from it up to the address before the next token of
//! the same subnet, and never past its own last address; an address past it
//! and before the next known token has an owner this host has not heard of
//! yet.
//!
//! The rules that make it conflict-free without a coordinator:
//!
//! - **Tokens are never removed**, and ranges never grow. The first address
//!   of each subnet is always a token. Merging two tables is the union of
//!   their tokens, keeping the higher version of each.
//! - **Single writer.** Only a token range's owner changes it: it splits it
//!   by adding tokens inside it ([`OwnershipTable::donate`]), or hands the
//!   token over; every change bumps the token's version. So, for a token, a
//!   higher version is a later state, and equal versions with different
//!   contents cannot happen by construction; if one is seen anyway (only
//!   after a reclaim of a host that was alive, see below) it is counted and
//!   resolved the same way on every host (the lower owner name wins), so
//!   tables still converge.
//! - **Entries describe themselves.** The owner writes the exact last address
//!   of the range into each entry it changes. So a host that learns it owns
//!   a token knows where the range ends without knowing any other token, and
//!   its view of its own ranges is exact, however stale its view of the
//!   other hosts' ranges is.
//!
//! The one exception to single writer is [`OwnershipTable::reclaim`]: a dead
//! host cannot hand its ranges over, so the other hosts do it for it. See the
//! [module documentation](crate::cluster) for why that needs a quarantine.

use std::borrow::Borrow;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;
use std::ops::Bound;
use std::str::FromStr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::addr::{from_u128, to_u128, AddrRange};
use crate::cluster::error::ClusterError;

/// A host's name in the cluster (`vswitchd --node-name`).
///
/// 1 to [`HostName::MAX_LEN`] bytes, without control characters; ordered as
/// strings are, which is the order reclaim and the initial split use.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct HostName(String);

impl HostName {
    /// The longest accepted name, in bytes (a DNS name's limit).
    pub const MAX_LEN: usize = 253;

    /// A host name; refuses an empty or too long name, or one with control
    /// characters.
    pub fn new(name: impl Into<String>) -> Result<Self, ClusterError> {
        let name = name.into();
        if name.is_empty() || name.len() > Self::MAX_LEN || name.chars().any(char::is_control) {
            return Err(ClusterError::InvalidHostName { name });
        }
        Ok(HostName(name))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for HostName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for HostName {
    type Err = ClusterError;

    fn from_str(s: &str) -> Result<Self, ClusterError> {
        HostName::new(s)
    }
}

impl Borrow<str> for HostName {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for HostName {
    type Error = ClusterError;

    fn try_from(name: String) -> Result<Self, ClusterError> {
        HostName::new(name)
    }
}

impl From<HostName> for String {
    fn from(name: HostName) -> Self {
        name.0
    }
}

/// One token of the table, as stored and sent: the range `start..=end`
/// belongs to `owner` (less any later tokens inside it); `version` orders
/// the changes to the token.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Entry {
    /// The first address of the range (the token).
    pub start: IpAddr,
    /// The last address of the range when this version was written.
    pub end: IpAddr,
    /// The host that owns the range.
    pub owner: HostName,
    /// Bumped each time the token changes.
    pub version: u64,
}

/// One range of the table, for display and for the daemon (`inspect`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RangeInfo {
    /// The addresses.
    pub range: AddrRange,
    /// The host that owns them.
    pub owner: HostName,
    /// The token's version.
    pub version: u64,
}

/// What a merge changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MergeOutcome {
    /// Tokens added or changed.
    pub changed: usize,
    /// Tokens seen with the same version but other contents (should never
    /// happen; see the module documentation).
    pub conflicts: usize,
    /// Entries outside the network's subnets, or ending before they start,
    /// ignored.
    pub rejected: usize,
}

/// Who owns which range of one network's subnets.
///
/// A pure data structure: no clock, no IO; every host that applies the same
/// entries, in any order and any number of times, ends with the same table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnershipTable {
    /// The network's subnets as ranges, sorted, disjoint.
    pools: Vec<AddrRange>,
    tokens: BTreeMap<IpAddr, Owner>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Owner {
    host: HostName,
    version: u64,
    /// The last address of the range, as its writer knew it.
    end: IpAddr,
}

impl Owner {
    /// The order that settles two different contents at one version.
    fn tie_key(&self) -> (&HostName, IpAddr) {
        (&self.host, self.end)
    }
}

impl OwnershipTable {
    /// The table a network starts with: each subnet split into equal
    /// contiguous parts, one per member in name order (duplicates ignored),
    /// all at version 0. Every host computes the same table from the same
    /// subnets and members, so the member list must travel with the
    /// network's definition (a single member, the creating host, is the
    /// simplest choice: it then hands out ranges on request).
    pub fn new(
        network: &str,
        subnets: &[IpNet],
        members: &[HostName],
    ) -> Result<Self, ClusterError> {
        let pools = check_pools(network, subnets)?;
        let members: BTreeSet<&HostName> = members.iter().collect();
        if members.is_empty() {
            return Err(ClusterError::NoMembers {
                network: network.to_owned(),
            });
        }
        let members: Vec<&HostName> = members.into_iter().collect();
        let mut tokens = BTreeMap::new();
        for pool in &pools {
            let (first, last) = pool.bounds();
            let family = pool.family();
            // The size is `last - first + 1`; for a whole address space that
            // overflows, and one address less changes nothing here.
            let size = (last - first).saturating_add(1);
            let k = members.len() as u128;
            let (q, r) = (size / k, size % k);
            for (i, member) in members.iter().enumerate() {
                let i = i as u128;
                let start = first + q * i + i.min(r);
                let len = q + u128::from(i < r);
                if len == 0 {
                    continue;
                }
                let end = if i + 1 == k { last } else { start + len - 1 };
                tokens.insert(
                    from_u128(family, start),
                    Owner {
                        host: (*member).clone(),
                        version: 0,
                        end: from_u128(family, end),
                    },
                );
            }
        }
        Ok(OwnershipTable { pools, tokens })
    }

    /// A table rebuilt from stored entries (see [`OwnershipTable::entries`]).
    /// Refuses entries outside the subnets or ending before they start, a
    /// subnet without a token at its first address, and a token given twice.
    pub fn from_entries(
        network: &str,
        subnets: &[IpNet],
        entries: &[Entry],
    ) -> Result<Self, ClusterError> {
        let pools = check_pools(network, subnets)?;
        let invalid = |reason| ClusterError::InvalidState {
            network: network.to_owned(),
            reason,
        };
        let mut table = OwnershipTable {
            pools,
            tokens: BTreeMap::new(),
        };
        for e in entries {
            if !table.is_valid(e) {
                return Err(invalid("a range lies outside the network's subnets"));
            }
            if table.tokens.insert(e.start, Owner::from(e)).is_some() {
                return Err(invalid("a range is listed twice"));
            }
        }
        if table
            .pools
            .iter()
            .any(|p| !table.tokens.contains_key(&p.first()))
        {
            return Err(invalid("a subnet has no owner for its first address"));
        }
        Ok(table)
    }

    /// The network's subnets, as ranges, lowest first.
    pub fn pools(&self) -> &[AddrRange] {
        &self.pools
    }

    /// How many tokens the table holds.
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    /// Whether the table holds no token (never true for a built table).
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// Every token, lowest first: the whole state, to store or to send for
    /// anti-entropy.
    pub fn entries(&self) -> Vec<Entry> {
        self.tokens.iter().map(|(&t, o)| o.entry(t)).collect()
    }

    /// The entries for `tokens`, lowest first, without duplicates; unknown
    /// tokens are skipped.
    pub fn delta(&self, tokens: impl IntoIterator<Item = IpAddr>) -> Vec<Entry> {
        let picked: BTreeSet<IpAddr> = tokens.into_iter().collect();
        picked
            .into_iter()
            .filter_map(|t| self.tokens.get(&t).map(|o| o.entry(t)))
            .collect()
    }

    /// Every range whose owner this host knows, with its owner and version,
    /// lowest first.
    pub fn ranges(&self) -> Vec<RangeInfo> {
        self.tokens
            .iter()
            .filter_map(|(&t, o)| {
                self.range_of(t).map(|range| RangeInfo {
                    range,
                    owner: o.host.clone(),
                    version: o.version,
                })
            })
            .collect()
    }

    /// The host that owns `ip`; `None` outside the network's subnets, or
    /// when this host has not heard of the owner yet.
    pub fn owner_of(&self, ip: IpAddr) -> Option<&HostName> {
        let t = self.token_of(ip)?;
        let o = &self.tokens[&t];
        (to_u128(ip) <= to_u128(o.end)).then_some(&o.host)
    }

    /// The token at or before `ip` in `ip`'s subnet.
    fn token_of(&self, ip: IpAddr) -> Option<IpAddr> {
        let pool = self.pool_of(ip)?;
        self.tokens
            .range(pool.first()..=ip)
            .next_back()
            .map(|(&t, _)| t)
    }

    /// The ranges `host` owns, lowest first, adjacent ones joined.
    pub fn owned_by(&self, host: &str) -> Vec<AddrRange> {
        let mut out: Vec<AddrRange> = Vec::new();
        for r in self.token_ranges_of(host) {
            match out.last_mut() {
                Some(prev)
                    if prev.family() == r.family()
                        && prev.bounds().1.checked_add(1) == Some(r.bounds().0) =>
                {
                    *prev = AddrRange::new(prev.first(), r.last())
                        .expect("joined ranges are ordered and of one family");
                }
                _ => out.push(r),
            }
        }
        out
    }

    /// The token ranges `host` owns (not joined), lowest first.
    pub fn token_ranges_of(&self, host: &str) -> Vec<AddrRange> {
        self.tokens
            .iter()
            .filter(|(_, o)| o.host.as_str() == host)
            .filter_map(|(&t, _)| self.range_of(t))
            .collect()
    }

    /// Every host that owns at least one range.
    pub fn owners(&self) -> BTreeSet<&HostName> {
        self.tokens
            .iter()
            .filter(|(&t, _)| self.range_of(t).is_some())
            .map(|(_, o)| &o.host)
            .collect()
    }

    /// Merges entries from another host (a delta or a whole table): the union
    /// of tokens, the higher version of each. Idempotent, commutative and
    /// associative, so duplicated, lost-then-resent and reordered messages
    /// all end in the same table.
    pub fn merge(&mut self, entries: &[Entry]) -> MergeOutcome {
        let mut out = MergeOutcome::default();
        for e in entries {
            if !self.is_valid(e) {
                out.rejected += 1;
                continue;
            }
            let incoming = Owner::from(e);
            match self.tokens.get_mut(&e.start) {
                None => {
                    self.tokens.insert(e.start, incoming);
                    out.changed += 1;
                }
                Some(cur) if incoming.version > cur.version => {
                    *cur = incoming;
                    out.changed += 1;
                }
                Some(cur) if incoming.version == cur.version && incoming != *cur => {
                    out.conflicts += 1;
                    if incoming.tie_key() < cur.tie_key() {
                        *cur = incoming;
                        out.changed += 1;
                    }
                }
                Some(_) => {}
            }
        }
        out
    }

    /// Hands `range` to `to`. `range` must lie inside one token range that
    /// `me` owns. The token range is cut in up to three: what comes before
    /// `range` stays with `me`, `range` goes to `to`, what comes after stays
    /// with `me`; each changed token gets a new version and its exact last
    /// address. Returns the tokens added or changed, for
    /// [`OwnershipTable::delta`]; `None`, changing nothing, if the
    /// precondition does not hold.
    pub fn donate(
        &mut self,
        me: &HostName,
        range: AddrRange,
        to: &HostName,
    ) -> Option<Vec<IpAddr>> {
        let token = self.token_of(range.first())?;
        let held = self.range_of(token)?;
        if self.tokens[&token].host != *me
            || !held.contains(range.first())
            || !held.contains(range.last())
        {
            return None;
        }
        let family = range.family();
        let (first, last) = range.bounds();
        let mut changed = Vec::with_capacity(3);
        if first > to_u128(token) {
            self.write(token, me, from_u128(family, first - 1));
        }
        self.write(range.first(), to, range.last());
        changed.extend([token, range.first()]);
        if last < held.bounds().1 {
            let after = from_u128(family, last + 1);
            self.write(after, me, held.last());
            changed.push(after);
        }
        changed.dedup();
        Some(changed)
    }

    /// Hands every range of `dead` to `heir`, bumping each token's version.
    /// Every host that runs this with the same view and the same heir
    /// computes the same entries. Returns the tokens changed.
    pub fn reclaim(&mut self, dead: &str, heir: &HostName) -> Vec<IpAddr> {
        let mine: Vec<(IpAddr, IpAddr)> = self
            .tokens
            .iter()
            .filter(|(_, o)| o.host.as_str() == dead)
            .map(|(&t, o)| (t, self.range_of(t).map_or(o.end, |r| r.last())))
            .collect();
        for &(t, end) in &mine {
            self.write(t, heir, end);
        }
        mine.into_iter().map(|(t, _)| t).collect()
    }

    /// Sets token `t` to `host` up to `end`, with a version above any the
    /// token had.
    fn write(&mut self, t: IpAddr, host: &HostName, end: IpAddr) {
        let version = self
            .tokens
            .get(&t)
            .map_or(0, |o| o.version.saturating_add(1));
        self.tokens.insert(
            t,
            Owner {
                host: host.clone(),
                version,
                end,
            },
        );
    }

    fn is_valid(&self, e: &Entry) -> bool {
        self.pool_of(e.start)
            .is_some_and(|p| p.contains(e.end) && to_u128(e.start) <= to_u128(e.end))
    }

    /// The pool (subnet) holding `ip`.
    fn pool_of(&self, ip: IpAddr) -> Option<&AddrRange> {
        self.pools.iter().find(|p| p.contains(ip))
    }

    /// The addresses of token `t`'s range: up to the next token and no
    /// further than the token's last address.
    fn range_of(&self, t: IpAddr) -> Option<AddrRange> {
        let pool = self.pool_of(t)?;
        let o = self.tokens.get(&t)?;
        let next = self
            .tokens
            .range((Bound::Excluded(t), Bound::Included(pool.last())))
            .next()
            .map_or(to_u128(pool.last()), |(&n, _)| to_u128(n) - 1);
        let last = next.min(to_u128(o.end));
        AddrRange::new(t, from_u128(pool.family(), last)).ok()
    }
}

impl Owner {
    fn entry(&self, start: IpAddr) -> Entry {
        Entry {
            start,
            end: self.end,
            owner: self.host.clone(),
            version: self.version,
        }
    }
}

impl From<&Entry> for Owner {
    fn from(e: &Entry) -> Self {
        Owner {
            host: e.owner.clone(),
            version: e.version,
            end: e.end,
        }
    }
}

/// The subnets as sorted, disjoint ranges.
fn check_pools(network: &str, subnets: &[IpNet]) -> Result<Vec<AddrRange>, ClusterError> {
    let invalid = |reason| ClusterError::InvalidSubnets {
        network: network.to_owned(),
        reason,
    };
    if subnets.is_empty() {
        return Err(invalid("it has no subnet"));
    }
    let mut pools: Vec<AddrRange> = subnets
        .iter()
        .map(|&n| AddrRange::from(n.trunc()))
        .collect();
    pools.sort_by_key(|p| (p.family(), p.bounds().0));
    for w in pools.windows(2) {
        if w[0].family() == w[1].family() && w[0].bounds().1 >= w[1].bounds().0 {
            return Err(invalid("two of its subnets overlap"));
        }
    }
    Ok(pools)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::addr::Family;
    use crate::testing::{ip, net};
    use proptest::prelude::*;
    use rstest::rstest;

    fn host(s: &str) -> HostName {
        HostName::new(s).unwrap()
    }

    fn range(a: &str, b: &str) -> AddrRange {
        AddrRange::new(ip(a), ip(b)).unwrap()
    }

    fn table(members: &[&str]) -> OwnershipTable {
        let members: Vec<HostName> = members.iter().map(|m| host(m)).collect();
        OwnershipTable::new("ov", &[net("10.0.0.0/24"), net("fd00::/120")], &members).unwrap()
    }

    #[rstest]
    #[case::one(&["a"], &[("10.0.0.0", "10.0.0.255", "a")])]
    #[case::three_sorted(&["c", "a", "b"], &[("10.0.0.0", "10.0.0.85", "a"), ("10.0.0.86", "10.0.0.170", "b"), ("10.0.0.171", "10.0.0.255", "c")])]
    #[case::duplicates(&["b", "a", "b"], &[("10.0.0.0", "10.0.0.127", "a"), ("10.0.0.128", "10.0.0.255", "b")])]
    fn initial_split(#[case] members: &[&str], #[case] expected: &[(&str, &str, &str)]) {
        let t = table(members);
        let v4: Vec<(AddrRange, String)> = t
            .ranges()
            .into_iter()
            .filter(|r| r.range.family() == Family::V4)
            .map(|r| (r.range, r.owner.to_string()))
            .collect();
        let want: Vec<(AddrRange, String)> = expected
            .iter()
            .map(|&(a, b, o)| (range(a, b), o.to_owned()))
            .collect();
        assert_eq!(v4, want);
        assert!(t.ranges().iter().all(|r| r.version == 0));
    }

    #[test]
    fn more_members_than_addresses() {
        let members: Vec<HostName> = ["a", "b", "c", "d", "e"].iter().map(|m| host(m)).collect();
        let t = OwnershipTable::new("ov", &[net("10.0.0.0/30")], &members).unwrap();
        let owners: Vec<String> = t.ranges().iter().map(|r| r.owner.to_string()).collect();
        assert_eq!(owners, ["a", "b", "c", "d"]);
    }

    #[rstest]
    #[case::none(&[], "it has no subnet")]
    #[case::overlap(&["10.0.0.0/24", "10.0.0.128/25"], "two of its subnets overlap")]
    fn bad_subnets(#[case] subnets: &[&str], #[case] reason: &'static str) {
        let subnets: Vec<IpNet> = subnets.iter().map(|s| net(s)).collect();
        let err = OwnershipTable::new("ov", &subnets, &[host("a")]).unwrap_err();
        assert_eq!(
            err,
            ClusterError::InvalidSubnets {
                network: "ov".into(),
                reason
            }
        );
    }

    #[test]
    fn no_members() {
        let err = OwnershipTable::new("ov", &[net("10.0.0.0/24")], &[]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "network `ov` needs at least one host to own its addresses"
        );
    }

    #[rstest]
    #[case("")]
    #[case("a\nb")]
    fn bad_host_names(#[case] name: &str) {
        assert!(HostName::new(name).is_err());
        assert!(HostName::new("x".repeat(HostName::MAX_LEN + 1)).is_err());
        assert!(HostName::new("x".repeat(HostName::MAX_LEN)).is_ok());
    }

    #[test]
    fn donate_middle_cuts_in_three() {
        let mut t = table(&["a"]);
        let changed = t
            .donate(&host("a"), range("10.0.0.64", "10.0.0.127"), &host("b"))
            .unwrap();
        assert_eq!(changed, [ip("10.0.0.0"), ip("10.0.0.64"), ip("10.0.0.128")]);
        assert_eq!(t.owner_of(ip("10.0.0.63")).unwrap().as_str(), "a");
        assert_eq!(t.owner_of(ip("10.0.0.64")).unwrap().as_str(), "b");
        assert_eq!(t.owner_of(ip("10.0.0.127")).unwrap().as_str(), "b");
        assert_eq!(t.owner_of(ip("10.0.0.128")).unwrap().as_str(), "a");
        assert_eq!(
            t.owned_by("a"),
            [
                range("10.0.0.0", "10.0.0.63"),
                range("10.0.0.128", "10.0.0.255"),
                range("fd00::", "fd00::ff")
            ]
        );
        // Each changed entry states its exact end and a new version.
        let d = t.delta(changed);
        let ends: Vec<(IpAddr, u64)> = d.iter().map(|e| (e.end, e.version)).collect();
        assert_eq!(
            ends,
            [
                (ip("10.0.0.63"), 1),
                (ip("10.0.0.127"), 0),
                (ip("10.0.0.255"), 0)
            ]
        );
    }

    #[test]
    fn a_lone_entry_is_enough_to_know_ones_range() {
        // `c` hears of its token, but not of the token after it: the entry's
        // end keeps it from claiming more, and the rest is of unknown owner.
        let mut origin = table(&["a"]);
        origin
            .donate(&host("a"), range("10.0.0.128", "10.0.0.255"), &host("b"))
            .unwrap();
        let changed = origin
            .donate(&host("a"), range("10.0.0.64", "10.0.0.127"), &host("c"))
            .unwrap();
        let mut c = table(&["a"]);
        let only = origin.delta(changed.into_iter().filter(|&t| t == ip("10.0.0.64")));
        c.merge(&only);
        assert_eq!(c.owned_by("c"), [range("10.0.0.64", "10.0.0.127")]);
        assert_eq!(c.owner_of(ip("10.0.0.128")), None);
        assert_eq!(c.owner_of(ip("10.0.0.10")).unwrap().as_str(), "a");
    }

    #[test]
    fn donate_whole_token_bumps_version_and_joins_for_display() {
        let mut t = table(&["a", "b"]);
        let changed = t
            .donate(&host("a"), range("10.0.0.0", "10.0.0.127"), &host("b"))
            .unwrap();
        assert_eq!(changed, [ip("10.0.0.0")]);
        assert_eq!(t.owned_by("b")[0], range("10.0.0.0", "10.0.0.255"));
        assert_eq!(t.ranges()[0].version, 1);
    }

    #[rstest]
    #[case::not_mine("b", "10.0.0.1", "10.0.0.2")]
    #[case::across_tokens("a", "10.0.0.100", "10.0.0.200")]
    #[case::outside("a", "10.9.0.1", "10.9.0.2")]
    fn donate_refuses(#[case] me: &str, #[case] first: &str, #[case] last: &str) {
        let mut t = table(&["a", "b"]);
        let before = t.clone();
        assert!(t
            .donate(&host(me), range(first, last), &host("c"))
            .is_none());
        assert_eq!(t, before);
    }

    #[test]
    fn merge_rules() {
        let mut t = table(&["a"]);
        let e = |s: &str, o: &str, v| Entry {
            start: ip(s),
            end: ip("10.0.0.255"),
            owner: host(o),
            version: v,
        };
        // Equal version, other owner: conflict, lower name kept; a new token
        // taken; outside or backwards entries rejected.
        let backwards = Entry {
            end: ip("10.0.0.1"),
            ..e("10.0.0.9", "b", 9)
        };
        let out = t.merge(&[
            e("10.0.0.0", "z", 0),
            e("10.0.0.9", "b", 3),
            e("10.1.0.0", "b", 1),
            backwards,
        ]);
        assert_eq!(
            out,
            MergeOutcome {
                changed: 1,
                conflicts: 1,
                rejected: 2
            }
        );
        assert_eq!(t.owner_of(ip("10.0.0.0")).unwrap().as_str(), "a");
        assert_eq!(t.owner_of(ip("10.0.0.10")).unwrap().as_str(), "b");
        // Equal version, other owner: conflict; the lower name wins everywhere.
        let out = t.merge(&[e("10.0.0.9", "a", 3)]);
        assert_eq!(out.conflicts, 1);
        assert_eq!(t.owner_of(ip("10.0.0.9")).unwrap().as_str(), "a");
        let out = t.merge(&[e("10.0.0.9", "b", 3)]);
        assert_eq!((out.conflicts, out.changed), (1, 0));
        assert_eq!(t.owner_of(ip("10.0.0.9")).unwrap().as_str(), "a");
    }

    #[test]
    fn reclaim_bumps_versions() {
        let mut t = table(&["a", "b", "c"]);
        let changed = t.reclaim("b", &host("a"));
        assert_eq!(changed, [ip("10.0.0.86"), ip("fd00::56")]);
        assert!(t.owners().iter().all(|h| h.as_str() != "b"));
        assert_eq!(t.ranges()[1].version, 1);
        assert_eq!(t.owned_by("a")[0], range("10.0.0.0", "10.0.0.170"));
    }

    #[test]
    fn from_entries_validates() {
        let t = table(&["a", "b"]);
        let subnets = [net("10.0.0.0/24"), net("fd00::/120")];
        let back = OwnershipTable::from_entries("ov", &subnets, &t.entries()).unwrap();
        assert_eq!(back, t);
        let mut missing = t.entries();
        missing.remove(0);
        assert!(matches!(
            OwnershipTable::from_entries("ov", &subnets, &missing),
            Err(ClusterError::InvalidState { .. })
        ));
        let mut twice = t.entries();
        twice.push(twice[0].clone());
        assert!(OwnershipTable::from_entries("ov", &subnets, &twice).is_err());
    }

    /// A random history of donations by the current owners, replayed as
    /// deltas in a random order with duplicates: every replica converges to
    /// the origin's table, and the ranges always partition the subnet.
    fn history(ops: &[(u8, u8, u8, u8)]) -> (OwnershipTable, Vec<Vec<Entry>>) {
        let hosts = [host("a"), host("b"), host("c")];
        let mut t = OwnershipTable::new("ov", &[net("10.0.0.0/26")], &hosts[..1]).unwrap();
        let mut deltas = vec![t.entries()];
        for &(pick, lo, len, to) in ops {
            let ranges = t.ranges();
            let r = &ranges[usize::from(pick) % ranges.len()];
            let (first, last) = r.range.bounds();
            let size = last - first + 1;
            let lo = first + u128::from(lo) % size;
            let hi = (lo + u128::from(len)).min(last);
            let give =
                AddrRange::new(from_u128(Family::V4, lo), from_u128(Family::V4, hi)).unwrap();
            let to = &hosts[usize::from(to) % 3];
            let changed = t.donate(&r.owner.clone(), give, to).expect("owner donates");
            deltas.push(t.delta(changed));
        }
        (t, deltas)
    }

    proptest! {
        #[test]
        fn replicas_converge(
            ops in proptest::collection::vec(any::<(u8, u8, u8, u8)>(), 0..40),
            order in proptest::collection::vec(any::<u16>(), 0..120),
        ) {
            let (origin, deltas) = history(&ops);
            // Deliver deltas in a shuffled order with duplicates, then all of
            // them once more (anti-entropy).
            let mut replica = OwnershipTable::new("ov", &[net("10.0.0.0/26")], &[host("a")]).unwrap();
            for &i in &order {
                let out = replica.merge(&deltas[usize::from(i) % deltas.len()]);
                prop_assert_eq!(out.conflicts, 0);
            }
            for d in deltas.iter().rev() {
                replica.merge(d);
            }
            prop_assert_eq!(&replica, &origin);
            // The ranges cover the subnet exactly once.
            let mut next = 0u128;
            for r in origin.ranges() {
                let (a, b) = r.range.bounds();
                prop_assert_eq!(a, to_u128(ip("10.0.0.0")) + next);
                next = b - to_u128(ip("10.0.0.0")) + 1;
            }
            prop_assert_eq!(next, 64);
        }
    }
}
