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
