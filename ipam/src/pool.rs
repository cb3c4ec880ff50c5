//! Default address pools: where a network's subnet comes from when the user
//! gives none.
//!
//! A pool is a prefix cut into subnets of one size, as Docker's
//! `--default-address-pool base=172.17.0.0/16,size=16` does. The defaults are
//! Docker's: `172.17.0.0/16` ... `172.31.0.0/16` as /16s, then
//! `192.168.0.0/16` as /20s, and for IPv6 the ULA prefix `fd00::/8` as /64s.
//!
//! A chosen subnet overlaps no subnet in use and no prefix the caller asks to
//! avoid (the host's routes). IPv4 takes the first free candidate in pool
//! order, so the first network gets `172.17.0.0/16` as with Docker. IPv6
//! starts its search at a candidate derived from a seed (the network's name)
//! and wraps around, so a name maps to the same ULA /64 on every host unless
//! that one is taken, and different names spread over the 2^56 candidates.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::addr::{from_u128, net_bounds, to_u128, Family};
use crate::subnet::check_prefix;
use crate::{Error, Result};

/// A prefix cut into subnets of one prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "PoolRepr", into = "PoolRepr")]
pub struct AddressPool {
    base: IpNet,
    size: u8,
}

impl AddressPool {
    /// The pool `base` cut into `/size` subnets. `size` must be at least
    /// `base`'s prefix length and leave room for a container (at most /30 for
    /// IPv4, /126 for IPv6).
    pub fn new(base: IpNet, size: u8) -> Result<Self> {
        check_prefix(base)?;
        let bits = Family::of_net(&base).bits();
        if size < base.prefix_len() || size > bits - 2 {
            return Err(Error::InvalidPool { base, size });
        }
        Ok(AddressPool { base, size })
    }

    /// The pool's prefix.
    pub fn base(&self) -> IpNet {
        self.base
    }

    /// The prefix length of the subnets cut from it.
    pub fn size(&self) -> u8 {
        self.size
    }

    /// The pool's family.
    pub fn family(&self) -> Family {
        Family::of_net(&self.base)
    }

    /// How many subnets the pool holds (at most 2^126, so it always fits).
    pub fn len(&self) -> u128 {
        1u128 << (self.size - self.base.prefix_len())
    }

    /// Never true: a pool holds at least one subnet.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The `index`-th subnet of the pool, if there is one.
    pub fn nth(&self, index: u128) -> Option<IpNet> {
        (index < self.len()).then(|| self.subnet_at(index))
    }

    /// Host bits of each subnet.
    fn shift(&self) -> u32 {
        u32::from(self.family().bits() - self.size)
    }

    fn subnet_at(&self, index: u128) -> IpNet {
        let start = to_u128(self.base.network()) + shl(index, self.shift());
        prefix(from_u128(self.family(), start), self.size)
    }

    /// The first subnet with index in `from..to` that overlaps nothing in
    /// `taken`. Jumps past each conflicting prefix, so it takes at most
    /// `taken.len() + 1` steps however large the pool is.
    fn first_free(&self, from: u128, to: u128, taken: &[IpNet]) -> Option<IpNet> {
        let base = to_u128(self.base.network());
        let shift = self.shift();
        let family = self.family();
        let mut index = from;
        while index < to {
            let lo = base + shl(index, shift);
            let hi = lo + (shl(1, shift).wrapping_sub(1));
            let conflict_end = taken
                .iter()
                .filter(|t| Family::of_net(t) == family)
                .map(net_bounds)
                .filter(|&(a, b)| a <= hi && lo <= b)
                .map(|(_, b)| b)
                .max();
            match conflict_end {
                None => return Some(self.subnet_at(index)),
                // `end >= lo >= base`, and a shift of at least 2 keeps `+ 1` in range.
                Some(end) => index = shr(end - base, shift) + 1,
            }
        }
        None
    }
}

/// Serialized form of [`AddressPool`], validated on the way in.
#[derive(Serialize, Deserialize)]
struct PoolRepr {
    #[serde(rename = "Base")]
    base: IpNet,
    #[serde(rename = "Size")]
    size: u8,
}

impl TryFrom<PoolRepr> for AddressPool {
    type Error = Error;

    fn try_from(r: PoolRepr) -> Result<Self> {
        AddressPool::new(r.base, r.size)
    }
}

impl From<AddressPool> for PoolRepr {
    fn from(p: AddressPool) -> Self {
        PoolRepr {
            base: p.base,
            size: p.size,
        }
    }
}

/// The pools automatic subnets are chosen from, both families in one list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct DefaultPools(Vec<AddressPool>);

impl DefaultPools {
    /// Pools in the order they are tried (per family).
    pub fn new(pools: Vec<AddressPool>) -> Self {
        DefaultPools(pools)
    }

    /// Docker's defaults: `172.17.0.0/16` ... `172.31.0.0/16` as /16s,
    /// `192.168.0.0/16` as /20s, and `fd00::/8` as /64s.
    pub fn docker() -> Self {
        let mut pools: Vec<AddressPool> = (17..=31)
            .map(|second| {
                let base = prefix(IpAddr::V4(Ipv4Addr::new(172, second, 0, 0)), 16);
                AddressPool { base, size: 16 }
            })
            .collect();
        pools.push(AddressPool {
            base: prefix(IpAddr::V4(Ipv4Addr::new(192, 168, 0, 0)), 16),
            size: 20,
        });
        pools.push(AddressPool {
            base: prefix(IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 0)), 8),
            size: 64,
        });
        DefaultPools(pools)
    }

    /// The pools.
    pub fn pools(&self) -> &[AddressPool] {
        &self.0
    }

    /// A subnet of `family` from the pools that overlaps nothing in `taken`,
    /// or `None` when every candidate does. `seed` places the start of the
    /// IPv6 search (see the module doc); IPv4 ignores it.
    pub fn choose(&self, family: Family, seed: &str, taken: &[IpNet]) -> Option<IpNet> {
        self.0
            .iter()
            .filter(|p| p.family() == family)
            .find_map(|pool| match family {
                Family::V4 => pool.first_free(0, pool.len(), taken),
                Family::V6 => {
                    let start = u128::from(seed_hash(seed)) % pool.len();
                    pool.first_free(start, pool.len(), taken)
                        .or_else(|| pool.first_free(0, start, taken))
                }
            })
    }
}

impl Default for DefaultPools {
    fn default() -> Self {
        DefaultPools::docker()
    }
}

/// A stable 64-bit hash of the seed: FNV-1a, then the splitmix64 finaliser to
/// spread the low bits. Part of the contract (it decides which IPv6 subnet a
/// name gets), so it must never change; `std`'s hasher may change between
/// releases and is not used.
fn seed_hash(seed: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in seed.bytes() {
        h ^= u64::from(byte);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

fn prefix(addr: IpAddr, len: u8) -> IpNet {
    // Lengths come from validated pools, so they are always in range.
    IpNet::new_assert(addr, len)
}

fn shl(value: u128, shift: u32) -> u128 {
    value.checked_shl(shift).unwrap_or(0)
}

fn shr(value: u128, shift: u32) -> u128 {
    value.checked_shr(shift).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::net;
    use proptest::prelude::*;
    use rstest::rstest;

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|s| net(s)).collect()
    }

    #[test]
    fn docker_defaults() {
        let pools = DefaultPools::docker();
        assert_eq!(pools, DefaultPools::default());
        let v4: Vec<_> = pools
            .pools()
            .iter()
            .filter(|p| p.family() == Family::V4)
            .collect();
        assert_eq!(v4.len(), 16);
        assert_eq!((v4[0].base(), v4[0].size()), (net("172.17.0.0/16"), 16));
        assert_eq!((v4[14].base(), v4[14].size()), (net("172.31.0.0/16"), 16));
        assert_eq!((v4[15].base(), v4[15].size()), (net("192.168.0.0/16"), 20));
        assert_eq!(v4[15].len(), 16);
        let v6: Vec<_> = pools
            .pools()
            .iter()
            .filter(|p| p.family() == Family::V6)
            .collect();
        assert_eq!(v6.len(), 1);
        assert_eq!((v6[0].base(), v6[0].size()), (net("fd00::/8"), 64));
        assert_eq!(v6[0].len(), 1 << 56);
    }

    #[rstest]
    #[case::first(&[], Some("172.17.0.0/16"))]
    #[case::second(&["172.17.0.0/16"], Some("172.18.0.0/16"))]
    #[case::small_route_blocks_a_whole_candidate(&["172.17.5.0/24"], Some("172.18.0.0/16"))]
    #[case::wide_route(&["172.16.0.0/12"], Some("192.168.0.0/20"))]
    #[case::hole(&["172.16.0.0/13", "172.25.0.0/16", "172.26.0.0/15"], Some("172.24.0.0/16"))]
    #[case::into_192(&["172.16.0.0/12", "192.168.0.0/20", "192.168.17.0/24"], Some("192.168.32.0/20"))]
    #[case::all_gone(&["172.16.0.0/12", "192.168.0.0/16"], None)]
    #[case::default_route_blocks_all(&["0.0.0.0/0"], None)]
    #[case::v6_is_not_in_the_way(&["::/0"], Some("172.17.0.0/16"))]
    fn choose_v4(#[case] taken: &[&str], #[case] expected: Option<&str>) {
        let got = DefaultPools::docker().choose(Family::V4, "any", &nets(taken));
        assert_eq!(got, expected.map(net));
    }

    #[test]
    fn choose_v6_is_a_ula_64_derived_from_the_seed() {
        let pools = DefaultPools::docker();
        let web = pools.choose(Family::V6, "web", &[]).unwrap();
        // Pinned: the seed hash is part of the contract.
        assert_eq!(web, net("fd50:f03f:92a3:75f3::/64"));
        assert_eq!(pools.choose(Family::V6, "web", &[]), Some(web));
        let db = pools.choose(Family::V6, "db", &[]).unwrap();
        assert_ne!(web, db);
        for chosen in [web, db] {
            assert_eq!(chosen.prefix_len(), 64);
            assert!(net("fd00::/8").contains(&chosen));
        }
        // Taken: the next candidate.
        let next = pools.choose(Family::V6, "web", &[web]).unwrap();
        assert_eq!(next, net("fd50:f03f:92a3:75f4::/64"));
        // Routes covering the rest of the pool from there on: wrap to the start.
        let rest = nets(&["fd00::/64", "fd40::/10", "fd80::/9"]);
        assert!(rest[1].contains(&web));
        let wrapped = pools.choose(Family::V6, "web", &rest).unwrap();
        assert_eq!(wrapped, net("fd00:0:0:1::/64"));
        assert_eq!(pools.choose(Family::V6, "web", &[net("fd00::/8")]), None);
    }

    #[test]
    fn search_jumps_over_conflicts_in_huge_pools() {
        let pools = DefaultPools::new(vec![AddressPool::new(net("10.0.0.0/8"), 30).unwrap()]);
        let taken = nets(&["10.0.0.0/9", "10.128.0.0/10", "10.192.0.0/30"]);
        assert_eq!(
            pools.choose(Family::V4, "", &taken),
            Some(net("10.192.0.4/30"))
        );
        let v6 = DefaultPools::new(vec![AddressPool::new(net("::/0"), 126).unwrap()]);
        let all_but_last = nets(&["::/1", "8000::/2", "c000::/3", "e000::/4"]);
        let got = v6.choose(Family::V6, "seed", &all_but_last).unwrap();
        assert!(net("f000::/4").contains(&got));
        let whole = v6.choose(Family::V6, "seed", &nets(&["::/0"]));
        assert_eq!(whole, None);
    }

    #[rstest]
    #[case::host_bits("10.0.0.1/8", 16, Error::HostBitsSet { given: net("10.0.0.1/8"), expected: net("10.0.0.0/8") })]
    #[case::size_below_base("10.0.0.0/16", 8, Error::InvalidPool { base: net("10.0.0.0/16"), size: 8 })]
    #[case::v4_31("10.0.0.0/16", 31, Error::InvalidPool { base: net("10.0.0.0/16"), size: 31 })]
    #[case::v6_127("fd00::/8", 127, Error::InvalidPool { base: net("fd00::/8"), size: 127 })]
    fn pool_refuses(#[case] base: &str, #[case] size: u8, #[case] expected: Error) {
        assert_eq!(AddressPool::new(net(base), size).unwrap_err(), expected);
    }

    #[test]
    fn pool_message_and_serde() {
        let err = AddressPool::new(net("10.0.0.0/16"), 31).unwrap_err();
        assert_eq!(
            err.to_string(),
            "address pool 10.0.0.0/16 cannot be split into /31 subnets; the size must be between /16 and /30"
        );
        let pool = AddressPool::new(net("10.0.0.0/16"), 24).unwrap();
        let json = serde_json::to_string(&DefaultPools::new(vec![pool])).unwrap();
        assert_eq!(json, r#"[{"Base":"10.0.0.0/16","Size":24}]"#);
        let back: DefaultPools = serde_json::from_str(&json).unwrap();
        assert_eq!(back.pools(), [pool]);
        assert!(serde_json::from_str::<AddressPool>(r#"{"Base":"10.0.0.0/16","Size":8}"#).is_err());
        assert_eq!(pool.nth(0), Some(net("10.0.0.0/24")));
        assert_eq!(pool.nth(255), Some(net("10.0.255.0/24")));
        assert_eq!(pool.nth(256), None);
    }

    fn v4_prefix() -> impl Strategy<Value = IpNet> {
        // Mostly near the default pools, so they get in the way.
        let near = prop_oneof![Just(0xac10_0000u32), Just(0xc0a8_0000u32), any::<u32>()];
        (near, any::<u32>(), 8u8..=28).prop_map(|(base, jitter, len)| {
            let addr = std::net::Ipv4Addr::from(base ^ (jitter & 0x000f_ffff));
            IpNet::new(IpAddr::V4(addr), len).unwrap().trunc()
        })
    }

    fn v6_prefix() -> impl Strategy<Value = IpNet> {
        (any::<u128>(), 8u8..=64).prop_map(|(bits, len)| {
            let addr = Ipv6Addr::from((0xfdu128 << 120) | (bits >> 8));
            IpNet::new(IpAddr::V6(addr), len).unwrap().trunc()
        })
    }

    /// Whether the union of `taken` covers all of `target` (an independent
    /// oracle: merges intervals, no candidate search).
    fn covers(taken: &[IpNet], target: IpNet) -> bool {
        let (lo, hi) = net_bounds(&target);
        let mut spans: Vec<(u128, u128)> = taken
            .iter()
            .filter(|t| Family::of_net(t) == Family::of_net(&target))
            .map(net_bounds)
            .collect();
        spans.sort_unstable();
        let mut reached = lo; // everything below `reached` is covered
        for (a, b) in spans {
            if a > reached {
                break;
            }
            if b >= hi {
                return true;
            }
            reached = reached.max(b + 1);
        }
        false
    }

    proptest! {
        #[test]
        fn chosen_subnets_never_overlap_each_other_or_the_avoid_list(
            avoid in proptest::collection::vec(prop_oneof![v4_prefix(), v6_prefix()], 0..12),
            picks in proptest::collection::vec((any::<bool>(), "[a-z]{1,6}"), 1..40),
        ) {
            let pools = DefaultPools::docker();
            let mut taken = avoid.clone();
            let mut chosen: Vec<IpNet> = Vec::new();
            for (v6, seed) in picks {
                let family = if v6 { Family::V6 } else { Family::V4 };
                match pools.choose(family, &seed, &taken) {
                    Some(c) => {
                        prop_assert_eq!(Family::of_net(&c), family);
                        prop_assert!(pools.pools().iter().any(|p| p.base().contains(&c) && p.size() == c.prefix_len()));
                        for t in &taken {
                            prop_assert!(!crate::addr::overlaps(&c, t), "{} overlaps {}", c, t);
                        }
                        chosen.push(c);
                        taken.push(c);
                    }
                    None => {
                        // Only when truly exhausted: every candidate overlaps something.
                        if family == Family::V6 {
                            prop_assert!(covers(&taken, net("fd00::/8")), "fd00::/8 not covered");
                            continue;
                        }
                        for pool in pools.pools().iter().filter(|p| p.family() == Family::V4) {
                            for i in 0..pool.len() {
                                let cand = pool.nth(i).unwrap();
                                prop_assert!(taken.iter().any(|t| crate::addr::overlaps(&cand, t)), "{} was free", cand);
                            }
                        }
                    }
                }
            }
            for (i, a) in chosen.iter().enumerate() {
                for b in &chosen[..i] {
                    prop_assert!(!crate::addr::overlaps(a, b));
                }
            }
        }
    }
}
