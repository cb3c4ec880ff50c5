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
        let allocator = Subnet {
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
        Ok(allocator)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{ip, net};
    use proptest::prelude::*;
    use rstest::rstest;
    use std::collections::BTreeSet;

    fn subnet(s: &str) -> Subnet {
        Subnet::new(net(s), None, None).unwrap()
    }

    fn exhausted(pool: &str) -> Error {
        Error::Exhausted {
            network: None,
            pools: vec![net(pool)],
        }
    }

    #[rstest]
    #[case::host_bits("10.1.0.5/24", None, None, Error::HostBitsSet { given: net("10.1.0.5/24"), expected: net("10.1.0.0/24") })]
    #[case::v4_31("10.1.0.0/31", None, None, Error::SubnetTooSmall { subnet: net("10.1.0.0/31") })]
    #[case::v4_32("10.1.0.7/32", None, None, Error::SubnetTooSmall { subnet: net("10.1.0.7/32") })]
    #[case::v6_127("fd00::/127", None, None, Error::SubnetTooSmall { subnet: net("fd00::/127") })]
    #[case::v6_128("fd00::1/128", None, None, Error::SubnetTooSmall { subnet: net("fd00::1/128") })]
    #[case::gateway_outside("10.1.0.0/24", Some("10.1.1.1"), None, Error::GatewayOutsideSubnet { gateway: ip("10.1.1.1"), subnet: net("10.1.0.0/24") })]
    #[case::gateway_other_family("10.1.0.0/24", Some("::a01:1"), None, Error::GatewayOutsideSubnet { gateway: ip("::a01:1"), subnet: net("10.1.0.0/24") })]
    #[case::gateway_network("10.1.0.0/24", Some("10.1.0.0"), None, Error::GatewayReserved { gateway: ip("10.1.0.0"), subnet: net("10.1.0.0/24"), what: Reserved::NetworkAddress })]
    #[case::gateway_broadcast("10.1.0.0/24", Some("10.1.0.255"), None, Error::GatewayReserved { gateway: ip("10.1.0.255"), subnet: net("10.1.0.0/24"), what: Reserved::Broadcast })]
    #[case::gateway_v6_network("fd00::/64", Some("fd00::"), None, Error::GatewayReserved { gateway: ip("fd00::"), subnet: net("fd00::/64"), what: Reserved::NetworkAddress })]
    #[case::range_outside("10.1.0.0/24", None, Some("10.2.0.0/25"), Error::RangeOutsideSubnet { ip_range: net("10.2.0.0/25"), subnet: net("10.1.0.0/24") })]
    #[case::range_wider("10.1.0.0/24", None, Some("10.1.0.0/23"), Error::RangeOutsideSubnet { ip_range: net("10.1.0.0/23"), subnet: net("10.1.0.0/24") })]
    #[case::range_other_family("10.1.0.0/24", None, Some("fd00::/120"), Error::RangeOutsideSubnet { ip_range: net("fd00::/120"), subnet: net("10.1.0.0/24") })]
    #[case::range_host_bits("10.1.0.0/24", None, Some("10.1.0.130/25"), Error::HostBitsSet { given: net("10.1.0.130/25"), expected: net("10.1.0.128/25") })]
    #[case::range_network_and_gateway("10.1.0.0/24", None, Some("10.1.0.0/31"), Error::RangeHasNoFreeAddress { ip_range: net("10.1.0.0/31"), subnet: net("10.1.0.0/24") })]
    #[case::range_gateway_only("10.1.0.0/24", None, Some("10.1.0.1/32"), Error::RangeHasNoFreeAddress { ip_range: net("10.1.0.1/32"), subnet: net("10.1.0.0/24") })]
    #[case::range_gateway_and_broadcast("10.1.0.0/24", Some("10.1.0.254"), Some("10.1.0.254/31"), Error::RangeHasNoFreeAddress { ip_range: net("10.1.0.254/31"), subnet: net("10.1.0.0/24") })]
    #[case::range_v6_network_and_gateway("fd00::/64", None, Some("fd00::/127"), Error::RangeHasNoFreeAddress { ip_range: net("fd00::/127"), subnet: net("fd00::/64") })]
    fn new_refuses(
        #[case] subnet: &str,
        #[case] gateway: Option<&str>,
        #[case] range: Option<&str>,
        #[case] expected: Error,
    ) {
        let err = Subnet::new(net(subnet), gateway.map(ip), range.map(net)).unwrap_err();
        assert_eq!(err, expected);
    }

    #[rstest]
    #[case::v4_30("10.1.0.0/30", None, None, "10.1.0.1", 1)]
    #[case::v4_29("10.1.0.0/29", None, None, "10.1.0.1", 5)]
    #[case::v4_gateway_last_host("10.1.0.0/29", Some("10.1.0.6"), None, "10.1.0.6", 5)]
    #[case::v6_126("fd00::/126", None, None, "fd00::1", 2)]
    #[case::v6_gateway_last("fd00::/126", Some("fd00::3"), None, "fd00::3", 2)]
    #[case::range_31_off_the_reserved("10.1.0.0/24", None, Some("10.1.0.2/31"), "10.1.0.1", 2)]
    #[case::range_32_free("10.1.0.0/24", None, Some("10.1.0.9/32"), "10.1.0.1", 1)]
    #[case::range_with_gateway("10.1.0.0/24", None, Some("10.1.0.0/30"), "10.1.0.1", 2)]
    #[case::range_whole_subnet("10.1.0.0/29", None, Some("10.1.0.0/29"), "10.1.0.1", 5)]
    #[case::v6_range_at_top("fd00::/64", None, Some("fd00::ffff:ffff:ffff:fffc/126"), "fd00::1", 4)]
    fn new_accepts_and_counts_dynamic_addresses(
        #[case] subnet: &str,
        #[case] gateway: Option<&str>,
        #[case] range: Option<&str>,
        #[case] expected_gateway: &str,
        #[case] dynamic: usize,
    ) {
        let mut s = Subnet::new(net(subnet), gateway.map(ip), range.map(net)).unwrap();
        assert_eq!(s.gateway(), ip(expected_gateway));
        let mut got = BTreeSet::new();
        for _ in 0..dynamic {
            let a = s.allocate().unwrap();
            assert!(got.insert(a), "{a} handed out twice");
            assert_eq!(s.reserved(a), None);
        }
        assert_eq!(s.allocate().unwrap_err(), exhausted(&s.pool().to_string()));
        assert_eq!(s.len(), dynamic);
    }

    #[test]
    fn next_fit_does_not_reuse_a_released_address_at_once() {
        let mut s = subnet("10.1.0.0/29");
        assert_eq!(s.allocate().unwrap(), ip("10.1.0.2"));
        assert_eq!(s.allocate().unwrap(), ip("10.1.0.3"));
        s.release(ip("10.1.0.2")).unwrap();
        assert_eq!(s.allocate().unwrap(), ip("10.1.0.4"));
        assert_eq!(s.allocate().unwrap(), ip("10.1.0.5"));
        assert_eq!(s.allocate().unwrap(), ip("10.1.0.6"));
        // End of the range: wrap around to the released address.
        assert_eq!(s.allocate().unwrap(), ip("10.1.0.2"));
        assert_eq!(s.allocate().unwrap_err(), exhausted("10.1.0.0/29"));
        s.release(ip("10.1.0.4")).unwrap();
        assert_eq!(s.allocate().unwrap(), ip("10.1.0.4"));
    }

    #[test]
    fn dynamic_allocation_skips_static_and_reserved_addresses() {
        let mut s = Subnet::new(net("10.1.0.0/28"), Some(ip("10.1.0.3")), None).unwrap();
        s.allocate_static(ip("10.1.0.2")).unwrap();
        s.allocate_static(ip("10.1.0.5")).unwrap();
        let got: Vec<IpAddr> = (0..3).map(|_| s.allocate().unwrap()).collect();
        assert_eq!(got, [ip("10.1.0.1"), ip("10.1.0.4"), ip("10.1.0.6")]);
        assert_eq!(
            s.allocations().collect::<Vec<_>>(),
            [
                ip("10.1.0.1"),
                ip("10.1.0.2"),
                ip("10.1.0.4"),
                ip("10.1.0.5"),
                ip("10.1.0.6")
            ]
        );
    }

    #[test]
    fn ip_range_bounds_dynamic_but_not_static_addresses() {
        let mut s = Subnet::new(net("10.1.0.0/24"), None, Some(net("10.1.0.128/30"))).unwrap();
        let got: Vec<IpAddr> = (0..4).map(|_| s.allocate().unwrap()).collect();
        assert_eq!(
            got,
            [
                ip("10.1.0.128"),
                ip("10.1.0.129"),
                ip("10.1.0.130"),
                ip("10.1.0.131")
            ]
        );
        assert_eq!(s.allocate().unwrap_err(), exhausted("10.1.0.128/30"));
        assert_eq!(s.allocate_static(ip("10.1.0.7")), Ok(ip("10.1.0.7")));
        assert_eq!(s.allocate_static(ip("10.1.0.254")), Ok(ip("10.1.0.254")));
        assert_eq!(s.allocate().unwrap_err(), exhausted("10.1.0.128/30"));
    }

    #[rstest]
    #[case::outside("10.1.1.2", Error::AddressOutside { ip: ip("10.1.1.2"), network: None, subnets: vec![net("10.1.0.0/24")] })]
    #[case::other_family("fd00::2", Error::AddressOutside { ip: ip("fd00::2"), network: None, subnets: vec![net("10.1.0.0/24")] })]
    #[case::network("10.1.0.0", Error::AddressReserved { ip: ip("10.1.0.0"), what: Reserved::NetworkAddress, network: None, subnets: vec![net("10.1.0.0/24")] })]
    #[case::gateway("10.1.0.1", Error::AddressReserved { ip: ip("10.1.0.1"), what: Reserved::Gateway, network: None, subnets: vec![net("10.1.0.0/24")] })]
    #[case::broadcast("10.1.0.255", Error::AddressReserved { ip: ip("10.1.0.255"), what: Reserved::Broadcast, network: None, subnets: vec![net("10.1.0.0/24")] })]
    #[case::taken("10.1.0.9", Error::AddressInUse { ip: ip("10.1.0.9"), network: None, subnets: vec![net("10.1.0.0/24")] })]
    fn allocate_static_refuses(#[case] addr: &str, #[case] expected: Error) {
        let mut s = subnet("10.1.0.0/24");
        s.allocate_static(ip("10.1.0.9")).unwrap();
        assert_eq!(s.allocate_static(ip(addr)).unwrap_err(), expected);
        assert_eq!(s.len(), 1);
    }

    #[rstest]
    #[case::never_allocated("10.1.0.7")]
    #[case::gateway("10.1.0.1")]
    #[case::network("10.1.0.0")]
    #[case::outside("10.9.0.1")]
    #[case::other_family("fd00::7")]
    fn release_refuses_what_is_not_allocated(#[case] addr: &str) {
        let mut s = subnet("10.1.0.0/24");
        s.allocate_static(ip("10.1.0.9")).unwrap();
        assert_eq!(
            s.release(ip(addr)).unwrap_err(),
            Error::NotAllocated {
                ip: ip(addr),
                network: None,
                subnets: vec![net("10.1.0.0/24")]
            }
        );
        assert!(s.is_allocated(ip("10.1.0.9")));
    }

    #[test]
    fn double_release_is_refused_and_static_reuse_after_release_works() {
        let mut s = subnet("10.1.0.0/30");
        let a = s.allocate().unwrap();
        s.release(a).unwrap();
        assert!(!s.is_allocated(a));
        assert!(matches!(s.release(a), Err(Error::NotAllocated { .. })));
        assert_eq!(s.allocate_static(a), Ok(a));
        assert!(s.is_allocated(a));
    }

    #[test]
    fn v6_slash_64_allocates_without_sizing_by_the_subnet() {
        let mut s = subnet("fd12:3456:789a:1::/64");
        assert_eq!(s.gateway(), ip("fd12:3456:789a:1::1"));
        assert_eq!(s.allocate().unwrap(), ip("fd12:3456:789a:1::2"));
        assert_eq!(s.allocate().unwrap(), ip("fd12:3456:789a:1::3"));
        let top = ip("fd12:3456:789a:1:ffff:ffff:ffff:ffff");
        assert_eq!(s.reserved(top), None, "IPv6 has no broadcast address");
        assert_eq!(s.allocate_static(top), Ok(top));
        assert_eq!(s.len(), 3);
    }

    #[test]
    fn wraps_at_the_top_of_the_ipv6_space() {
        // The last address is u128::MAX: the next-fit position cannot go past it.
        let mut s = subnet("ffff:ffff:ffff:ffff:ffff:ffff:ffff:fff0/124");
        let mut got = BTreeSet::new();
        for _ in 0..14 {
            assert!(got.insert(s.allocate().unwrap()));
        }
        assert!(got.contains(&ip("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff")));
        assert!(matches!(s.allocate(), Err(Error::Exhausted { .. })));
        s.release(ip("ffff:ffff:ffff:ffff:ffff:ffff:ffff:fff5"))
            .unwrap();
        assert_eq!(
            s.allocate().unwrap(),
            ip("ffff:ffff:ffff:ffff:ffff:ffff:ffff:fff5")
        );
    }

    #[test]
    fn restore_resumes_after_the_highest_restored_dynamic_address() {
        let mut s = Subnet::new(net("10.1.0.0/24"), None, Some(net("10.1.0.0/25"))).unwrap();
        s.restore(ip("10.1.0.9")).unwrap();
        s.restore(ip("10.1.0.4")).unwrap();
        // Outside the range: restored, but does not move the position.
        s.restore(ip("10.1.0.200")).unwrap();
        assert_eq!(s.allocate().unwrap(), ip("10.1.0.10"));
        assert_eq!(
            s.restore(ip("10.1.0.4")).unwrap_err(),
            Error::AddressInUse {
                ip: ip("10.1.0.4"),
                network: None,
                subnets: vec![net("10.1.0.0/24")]
            }
        );
        assert!(matches!(
            s.restore(ip("10.1.0.1")),
            Err(Error::AddressReserved {
                what: Reserved::Gateway,
                ..
            })
        ));
    }

    #[test]
    fn allocate_within_stays_inside_the_allowed_ranges() {
        let mut s = Subnet::new(net("10.1.0.0/24"), None, Some(net("10.1.0.0/25"))).unwrap();
        let allowed = [
            AddrRange::new(ip("10.1.0.100"), ip("10.1.0.101")).unwrap(),
            // Mostly outside the IP range: only .126 and .127 are usable.
            AddrRange::new(ip("10.1.0.126"), ip("10.1.0.140")).unwrap(),
            // Other family: ignored.
            AddrRange::from(net("fd00::/64")),
        ];
        let got: Vec<IpAddr> = (0..4)
            .map(|_| s.allocate_within(&allowed).unwrap())
            .collect();
        assert_eq!(
            got,
            [
                ip("10.1.0.100"),
                ip("10.1.0.101"),
                ip("10.1.0.126"),
                ip("10.1.0.127")
            ]
        );
        assert_eq!(
            s.allocate_within(&allowed).unwrap_err(),
            Error::ExhaustedOwned {
                network: None,
                pools: vec![net("10.1.0.0/25")]
            }
        );
        assert!(matches!(
            s.allocate_within(&[]),
            Err(Error::ExhaustedOwned { .. })
        ));
        // The unrestricted allocator continues after the last address handed out.
        assert_eq!(s.allocate().unwrap(), ip("10.1.0.2"));
    }

    #[test]
    fn allocate_within_merges_overlapping_ranges() {
        let mut s = subnet("10.1.0.0/24");
        let allowed = [
            AddrRange::new(ip("10.1.0.10"), ip("10.1.0.12")).unwrap(),
            AddrRange::new(ip("10.1.0.11"), ip("10.1.0.13")).unwrap(),
            AddrRange::new(ip("10.1.0.5"), ip("10.1.0.5")).unwrap(),
        ];
        let got: BTreeSet<IpAddr> = (0..5)
            .map(|_| s.allocate_within(&allowed).unwrap())
            .collect();
        assert_eq!(got.len(), 5);
        assert!(s.allocate_within(&allowed).is_err());
    }

    #[rstest]
    #[case::exhausted(exhausted("10.1.0.0/30"), "the subnet has no free address in 10.1.0.0/30; widen --subnet or --ip-range, or free an endpoint")]
    #[case::reserved(
        Error::AddressReserved { ip: ip("10.1.0.1"), what: Reserved::Gateway, network: None, subnets: vec![net("10.1.0.0/24")] },
        "address 10.1.0.1 is the gateway of subnet 10.1.0.0/24 and is never handed out; pick another --ip"
    )]
    #[case::too_small(Error::SubnetTooSmall { subnet: net("10.1.0.0/31") }, "subnet 10.1.0.0/31 is too small to hold a container; use a prefix of /30 or shorter")]
    #[case::too_small_v6(Error::SubnetTooSmall { subnet: net("fd00::/127") }, "subnet fd00::/127 is too small to hold a container; use a prefix of /126 or shorter")]
    #[case::host_bits(
        Error::HostBitsSet { given: net("10.1.0.5/24"), expected: net("10.1.0.0/24") },
        "10.1.0.5/24 is not a network prefix (host bits are set); write it as 10.1.0.0/24"
    )]
    #[case::gateway(
        Error::GatewayOutsideSubnet { gateway: ip("10.2.0.1"), subnet: net("10.1.0.0/24") },
        "gateway 10.2.0.1 is outside subnet 10.1.0.0/24; pick a --gateway inside it"
    )]
    fn messages(#[case] err: Error, #[case] expected: &str) {
        assert_eq!(err.to_string(), expected);
    }

    #[test]
    fn config_serde_uses_docker_names() {
        let s = Subnet::new(
            net("10.1.0.0/24"),
            Some(ip("10.1.0.254")),
            Some(net("10.1.0.0/25")),
        )
        .unwrap();
        let json = serde_json::to_string(s.config()).unwrap();
        assert_eq!(
            json,
            r#"{"Subnet":"10.1.0.0/24","IPRange":"10.1.0.0/25","Gateway":"10.1.0.254"}"#
        );
        let back: SubnetConfig = serde_json::from_str(&json).unwrap();
        assert_eq!(&back, s.config());
        let plain: SubnetConfig =
            serde_json::from_str(r#"{"Subnet":"fd00::/64","Gateway":"fd00::1"}"#).unwrap();
        assert_eq!(plain.ip_range, None);
        assert_eq!(
            Subnet::from_config(&plain).unwrap().gateway(),
            ip("fd00::1")
        );
    }

    #[derive(Debug, Clone)]
    enum Op {
        Allocate,
        /// An offset from the subnet's first address (may run past the subnet).
        Static(u32),
        /// Release the n-th allocated address (modulo their number), or, when
        /// none is allocated, an arbitrary offset.
        Release(u32),
        Within(u32, u32),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => Just(Op::Allocate),
            2 => any::<u32>().prop_map(Op::Static),
            3 => any::<u32>().prop_map(Op::Release),
            1 => (any::<u32>(), 0u32..8).prop_map(|(a, b)| Op::Within(a, b)),
        ]
    }

    /// A valid subnet with an optional gateway and IP range, IPv4 or IPv6.
    fn subnet_case() -> impl Strategy<Value = Subnet> {
        let v4 = (24u8..=30, any::<u32>(), any::<u32>(), any::<u32>(), 0u8..=2).prop_map(
            |(len, base, gw, range, range_extra)| {
                let sub = IpNet::new(IpAddr::from(std::net::Ipv4Addr::from(base)), len)
                    .unwrap()
                    .trunc();
                (sub, gw, range, range_extra)
            },
        );
        let v6 = (
            118u8..=126,
            any::<u128>(),
            any::<u32>(),
            any::<u32>(),
            0u8..=2,
        )
            .prop_map(|(len, base, gw, range, range_extra)| {
                let sub = IpNet::new(IpAddr::from(std::net::Ipv6Addr::from(base)), len)
                    .unwrap()
                    .trunc();
                (sub, gw, range, range_extra)
            });
        prop_oneof![v4, v6].prop_filter_map("no dynamic address", |(sub, gw, range, extra)| {
            let (first, last) = net_bounds(&sub);
            let size = last - first + 1;
            let family = Family::of_net(&sub);
            let gateway = (gw % 2 == 0).then(|| from_u128(family, first + u128::from(gw) % size));
            let ip_range = (extra > 0).then(|| {
                let len = sub.prefix_len() + extra;
                let at = from_u128(family, first + u128::from(range) % size);
                IpNet::new(at, len).unwrap().trunc()
            });
            Subnet::new(sub, gateway, ip_range).ok()
        })
    }

    /// The addresses dynamic allocation may hand out, computed from the
    /// public API (`reserved`, `pool`) rather than the allocator's internals.
    fn usable_dynamic(s: &Subnet) -> BTreeSet<IpAddr> {
        let (first, last) = net_bounds(&s.pool());
        (first..=last)
            .map(|v| from_u128(s.family(), v))
            .filter(|&a| s.reserved(a).is_none())
            .collect()
    }

    proptest! {
        #[test]
        fn random_operations_keep_the_invariants(
            mut s in subnet_case(),
            ops in proptest::collection::vec(op(), 1..120),
        ) {
            let family = s.family();
            let dynamic = usable_dynamic(&s);
            let mut model: BTreeSet<IpAddr> = BTreeSet::new();
            for op in ops {
                match op {
                    Op::Allocate => match s.allocate() {
                        Ok(a) => {
                            prop_assert!(dynamic.contains(&a), "{a} outside range or reserved");
                            prop_assert!(model.insert(a), "{a} handed out twice");
                        }
                        Err(e) => {
                            prop_assert!(matches!(e, Error::Exhausted { .. }), "{:?}", e);
                            prop_assert!(dynamic.is_subset(&model), "exhausted with a free address");
                        }
                    },
                    Op::Within(offset, len) => {
                        let lo = s.first + u128::from(offset) % (s.last - s.first + 1);
                        let hi = (lo + u128::from(len)).min(s.last);
                        let allowed = AddrRange::new(from_u128(family, lo), from_u128(family, hi)).unwrap();
                        match s.allocate_within(&[allowed]) {
                            Ok(a) => {
                                prop_assert!(dynamic.contains(&a) && allowed.contains(a));
                                prop_assert!(model.insert(a), "{a} handed out twice");
                            }
                            Err(e) => {
                                prop_assert!(matches!(e, Error::ExhaustedOwned { .. }), "{:?}", e);
                                prop_assert!(dynamic.iter().filter(|a| allowed.contains(**a)).all(|a| model.contains(a)));
                            }
                        }
                    }
                    Op::Static(offset) => {
                        let a = from_u128(family, s.first + u128::from(offset % 1024));
                        let expect_ok = s.contains(a) && s.reserved(a).is_none() && !model.contains(&a);
                        let got = s.allocate_static(a);
                        prop_assert_eq!(got.is_ok(), expect_ok, "static {} -> {:?}", a, got);
                        if expect_ok {
                            model.insert(a);
                        }
                    }
                    Op::Release(n) => {
                        let a = if model.is_empty() {
                            from_u128(family, s.first + u128::from(n % 1024))
                        } else {
                            *model.iter().nth(n as usize % model.len()).unwrap()
                        };
                        let was = model.remove(&a);
                        prop_assert_eq!(s.release(a).is_ok(), was);
                        prop_assert!(!s.is_allocated(a));
                        // A released address can be taken again at once, statically.
                        if was && s.reserved(a).is_none() {
                            let mut probe = s.clone();
                            prop_assert_eq!(probe.allocate_static(a), Ok(a));
                        }
                    }
                }
                prop_assert_eq!(s.allocations().collect::<BTreeSet<_>>(), model.clone());
            }
            // Release everything: every dynamic address comes back, once each.
            for a in model {
                s.release(a).unwrap();
            }
            let mut again = BTreeSet::new();
            while let Ok(a) = s.allocate() {
                prop_assert!(again.insert(a), "{a} handed out twice");
                prop_assert!(again.len() <= dynamic.len());
            }
            prop_assert_eq!(again, dynamic);
        }
    }
}
