//! The allocator for one subnet.
//!
//! A [`Subnet`] hands out addresses of one prefix, IPv4 or IPv6. Its memory is
//! a `BTreeSet` of the allocated addresses, so a /64 costs no more than a /30:
//! nothing is sized by the number of addresses in the prefix.
//!
//! Never handed out: the network address, the IPv4 broadcast address and the
//! gateway. Dynamic addresses come from the IP range (the whole subnet when
//! there is none); static addresses may be anywhere in the subnet.
//!
//! Dynamic allocation is *next-fit*, as Docker's allocator does it: the search
//! starts just after the last dynamically allocated address and wraps around
//! to the start of the range, so an address that was just released is handed
//! out again only once the rest of the range has been used.

use std::collections::BTreeSet;
use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::addr::{from_u128, net_bounds, to_u128, AddrRange, Family};
use crate::{Error, Result};

/// The stored configuration of one subnet of a network: what the daemon
/// persists and what `network inspect` shows as `IPAM.Config[]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SubnetConfig {
    /// The subnet.
    #[serde(rename = "Subnet")]
    pub subnet: IpNet,
    /// Where dynamic addresses come from; the whole subnet when `None`.
    #[serde(rename = "IPRange", default, skip_serializing_if = "Option::is_none")]
    pub ip_range: Option<IpNet>,
    /// The gateway address (the daemon answers ARP, ICMP and DNS on it).
    #[serde(rename = "Gateway")]
    pub gateway: IpAddr,
}

/// An address of a subnet that is never handed out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reserved {
    /// The first address of the subnet (for IPv6, the subnet-router anycast address).
    NetworkAddress,
    /// The last address of an IPv4 subnet.
    Broadcast,
    /// The subnet's gateway.
    Gateway,
}

impl fmt::Display for Reserved {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Reserved::NetworkAddress => "network address",
            Reserved::Broadcast => "broadcast address",
            Reserved::Gateway => "gateway",
        })
    }
}

/// The address allocator of one subnet.
#[derive(Debug, Clone)]
pub struct Subnet {
    config: SubnetConfig,
    family: Family,
    /// First and last address of the subnet.
    first: u128,
    last: u128,
    /// First and last address of the dynamic range.
    dyn_first: u128,
    dyn_last: u128,
    gateway: u128,
    allocated: BTreeSet<u128>,
    /// The last dynamically allocated address: next-fit resumes after it.
    last_dynamic: Option<u128>,
}

impl Subnet {
    /// A subnet allocator with nothing allocated.
    ///
    /// `gateway` defaults to the first host address (`.1`). Refuses a prefix
    /// with host bits set, a subnet with no room for a container (IPv4 /31 and
    /// /32, IPv6 /127 and /128), a gateway outside the subnet or equal to its
    /// network or broadcast address, and an IP range outside the subnet or
    /// holding only reserved addresses.
    pub fn new(subnet: IpNet, gateway: Option<IpAddr>, ip_range: Option<IpNet>) -> Result<Self> {
        check_prefix(subnet)?;
        let family = Family::of_net(&subnet);
        if family.bits() - subnet.prefix_len() < 2 {
            return Err(Error::SubnetTooSmall { subnet });
        }
        let (first, last) = net_bounds(&subnet);
        let gateway = match gateway {
            None => first + 1,
            Some(gw) => {
                if !subnet.contains(&gw) {
                    return Err(Error::GatewayOutsideSubnet {
                        gateway: gw,
                        subnet,
                    });
                }
                let value = to_u128(gw);
                let what = if value == first {
                    Some(Reserved::NetworkAddress)
                } else if family == Family::V4 && value == last {
                    Some(Reserved::Broadcast)
                } else {
                    None
                };
                if let Some(what) = what {
                    return Err(Error::GatewayReserved {
                        gateway: gw,
                        subnet,
                        what,
                    });
                }
                value
            }
        };
        let (dyn_first, dyn_last) = match ip_range {
            None => (first, last),
            Some(range) => {
                check_prefix(range)?;
                if !subnet.contains(&range) {
                    return Err(Error::RangeOutsideSubnet {
                        ip_range: range,
                        subnet,
                    });
                }
                net_bounds(&range)
            }
        };
        let subnet_ = Subnet {
            config: SubnetConfig {
                subnet,
                ip_range,
                gateway: from_u128(family, gateway),
            },
            family,
            first,
            last,
            dyn_first,
            dyn_last,
            gateway,
            allocated: BTreeSet::new(),
            last_dynamic: None,
        };
        if let Some(range) = ip_range {
            // The range must hold one address that is not reserved. At most
            // three are reserved, so `last - first` (one less than the size,
            // and never overflowing) must exceed the count inside the range.
            let reserved_inside = [first, gateway, last]
                .into_iter()
                .enumerate()
                .filter(|&(i, v)| {
                    (i < 2 || family == Family::V4) && (dyn_first..=dyn_last).contains(&v)
                })
                .count() as u128;
            if dyn_last - dyn_first < reserved_inside {
                return Err(Error::RangeHasNoFreeAddress {
                    ip_range: range,
                    subnet,
                });
            }
        }
        Ok(subnet_)
    }

    /// A subnet allocator from a stored configuration, with nothing allocated.
    /// Validates it as [`Subnet::new`] does.
    pub fn from_config(config: &SubnetConfig) -> Result<Self> {
        Subnet::new(config.subnet, Some(config.gateway), config.ip_range)
    }

    /// The configuration, to store or show.
    pub fn config(&self) -> &SubnetConfig {
        &self.config
    }

    /// The subnet.
    pub fn subnet(&self) -> IpNet {
        self.config.subnet
    }

    /// The gateway address.
    pub fn gateway(&self) -> IpAddr {
        self.config.gateway
    }

    /// The IP range, if one was given.
    pub fn ip_range(&self) -> Option<IpNet> {
        self.config.ip_range
    }

    /// The prefix dynamic addresses come from: the IP range, else the subnet.
    pub fn pool(&self) -> IpNet {
        self.config.ip_range.unwrap_or(self.config.subnet)
    }

    /// The subnet's family.
    pub fn family(&self) -> Family {
        self.family
    }

    /// Whether `ip` lies in the subnet (allocated or not).
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.config.subnet.contains(&ip)
    }

    /// Which reserved address `ip` is, if it is one.
    pub fn reserved(&self, ip: IpAddr) -> Option<Reserved> {
        if !self.contains(ip) {
            return None;
        }
        let value = to_u128(ip);
        if value == self.first {
            Some(Reserved::NetworkAddress)
        } else if value == self.gateway {
            Some(Reserved::Gateway)
        } else if self.family == Family::V4 && value == self.last {
            Some(Reserved::Broadcast)
        } else {
            None
        }
    }

    /// Whether `ip` is allocated (reserved addresses are not).
    pub fn is_allocated(&self, ip: IpAddr) -> bool {
        self.contains(ip) && self.allocated.contains(&to_u128(ip))
    }

    /// How many addresses are allocated.
    pub fn len(&self) -> usize {
        self.allocated.len()
    }

    /// Whether no address is allocated.
    pub fn is_empty(&self) -> bool {
        self.allocated.is_empty()
    }

    /// The allocated addresses, lowest first.
    pub fn allocations(&self) -> impl DoubleEndedIterator<Item = IpAddr> + ExactSizeIterator + '_ {
        let family = self.family;
        self.allocated.iter().map(move |&v| from_u128(family, v))
    }

    /// Allocates a free address from the dynamic range (next-fit).
    pub fn allocate(&mut self) -> Result<IpAddr> {
        match self.next_fit(&[(self.dyn_first, self.dyn_last)]) {
            Some(value) => Ok(self.take_dynamic(value)),
            None => Err(Error::Exhausted {
                network: None,
                pools: vec![self.pool()],
            }),
        }
    }

    /// Allocates a free address from the part of the dynamic range that lies
    /// in `allowed` (next-fit), for a host that owns only some ranges of a
    /// cluster-wide subnet. Ranges of the other family are ignored.
    pub fn allocate_within(&mut self, allowed: &[AddrRange]) -> Result<IpAddr> {
        let mut segments: Vec<(u128, u128)> = allowed
            .iter()
            .filter(|r| r.family() == self.family)
            .filter_map(|r| {
                let (lo, hi) = r.bounds();
                let (lo, hi) = (lo.max(self.dyn_first), hi.min(self.dyn_last));
                (lo <= hi).then_some((lo, hi))
            })
            .collect();
        segments.sort_unstable();
        let mut merged: Vec<(u128, u128)> = Vec::with_capacity(segments.len());
        for (lo, hi) in segments {
            match merged.last_mut() {
                Some(prev) if lo <= prev.1.saturating_add(1) => prev.1 = prev.1.max(hi),
                _ => merged.push((lo, hi)),
            }
        }
        match self.next_fit(&merged) {
            Some(value) => Ok(self.take_dynamic(value)),
            None => Err(Error::ExhaustedOwned {
                network: None,
                pools: vec![self.pool()],
            }),
        }
    }

    /// Allocates `ip`, which may be anywhere in the subnet (inside the IP
    /// range or not). Refuses an address outside the subnet, a reserved one,
    /// or one already allocated. Does not move the next-fit position.
    pub fn allocate_static(&mut self, ip: IpAddr) -> Result<IpAddr> {
        let value = self.check_static(ip)?;
        self.allocated.insert(value);
        Ok(ip)
    }

    /// Marks `ip` allocated while rebuilding state at daemon start: refuses
    /// what [`Subnet::allocate_static`] refuses, and moves the next-fit
    /// position past the highest restored address of the dynamic range, so
    /// allocation resumes after the addresses in use.
    pub fn restore(&mut self, ip: IpAddr) -> Result<()> {
        let value = self.check_static(ip)?;
        self.allocated.insert(value);
        if (self.dyn_first..=self.dyn_last).contains(&value) {
            self.last_dynamic = Some(self.last_dynamic.map_or(value, |last| last.max(value)));
        }
        Ok(())
    }

    /// Returns `ip` to the subnet. Refuses an address outside the subnet or
    /// not allocated (reserved addresses never are).
    pub fn release(&mut self, ip: IpAddr) -> Result<()> {
        if !self.contains(ip) || !self.allocated.remove(&to_u128(ip)) {
            return Err(Error::NotAllocated {
                ip,
                network: None,
                subnets: vec![self.subnet()],
            });
        }
        Ok(())
    }

    fn outside(&self, ip: IpAddr) -> Error {
        Error::AddressOutside {
            ip,
            network: None,
            subnets: vec![self.subnet()],
        }
    }

    fn check_static(&self, ip: IpAddr) -> Result<u128> {
        if !self.contains(ip) {
            return Err(self.outside(ip));
        }
        if let Some(what) = self.reserved(ip) {
            return Err(Error::AddressReserved {
                ip,
                what,
                network: None,
                subnets: vec![self.subnet()],
            });
        }
        let value = to_u128(ip);
        if self.allocated.contains(&value) {
            return Err(Error::AddressInUse {
                ip,
                network: None,
                subnets: vec![self.subnet()],
            });
        }
        Ok(value)
    }

    fn take_dynamic(&mut self, value: u128) -> IpAddr {
        self.allocated.insert(value);
        self.last_dynamic = Some(value);
        from_u128(self.family, value)
    }

    fn is_reserved_value(&self, value: u128) -> bool {
        value == self.first
            || value == self.gateway
            || (self.family == Family::V4 && value == self.last)
    }

    /// The first free address at or after the next-fit position in the
    /// sorted, disjoint `segments`, wrapping around to their start.
    fn next_fit(&self, segments: &[(u128, u128)]) -> Option<u128> {
        match self.last_dynamic.and_then(|last| last.checked_add(1)) {
            None => segments
                .iter()
                .find_map(|&(lo, hi)| self.first_free(lo, hi)),
            Some(start) => segments
                .iter()
                .filter(|&&(_, hi)| hi >= start)
                .find_map(|&(lo, hi)| self.first_free(lo.max(start), hi))
                .or_else(|| {
                    segments
                        .iter()
                        .filter(|&&(lo, _)| lo < start)
                        .find_map(|&(lo, hi)| self.first_free(lo, hi.min(start - 1)))
                }),
        }
    }

    /// The lowest address in `lo..=hi` that is neither reserved nor
    /// allocated. Walks the allocated set once, so its cost grows with the
    /// allocations in the way, not with the size of the range.
    fn first_free(&self, lo: u128, hi: u128) -> Option<u128> {
        let mut taken = self.allocated.range(lo..=hi).copied().peekable();
        let mut candidate = lo;
        loop {
            if candidate > hi {
                return None;
            }
            if self.is_reserved_value(candidate) {
                candidate = candidate.checked_add(1)?;
                continue;
            }
            while taken.next_if(|&v| v < candidate).is_some() {}
            if taken.next_if_eq(&candidate).is_none() {
                return Some(candidate);
            }
            candidate = candidate.checked_add(1)?;
        }
    }
}

/// Refuses a prefix with host bits set.
pub(crate) fn check_prefix(net: IpNet) -> Result<()> {
    let expected = net.trunc();
    if expected != net {
        return Err(Error::HostBitsSet {
            given: net,
            expected,
        });
    }
    Ok(())
}
