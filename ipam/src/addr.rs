//! Address families, inclusive address ranges, and the integer arithmetic the
//! allocators do on addresses.
//!
//! Inside the crate an address is a `u128` (an IPv4 address is its `u32`
//! value widened) next to its [`Family`]; that keeps one code path for both
//! families and never sizes anything by the number of addresses in a prefix.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// An IP address family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Family {
    /// IPv4.
    #[serde(rename = "ipv4")]
    V4,
    /// IPv6.
    #[serde(rename = "ipv6")]
    V6,
}

impl Family {
    /// The family of an address.
    pub fn of(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }

    /// The family of a prefix.
    pub fn of_net(net: &IpNet) -> Self {
        match net {
            IpNet::V4(_) => Family::V4,
            IpNet::V6(_) => Family::V6,
        }
    }

    /// Address length in bits: 32 or 128.
    pub const fn bits(self) -> u8 {
        match self {
            Family::V4 => 32,
            Family::V6 => 128,
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        })
    }
}

/// An inclusive range of addresses of one family, `first..=last`.
///
/// Ranges restrict where [`Subnet::allocate_within`](crate::Subnet::allocate_within)
/// may pick an address (the ranges a host owns in a cluster). Any prefix
/// converts into the range it covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "RangeRepr", into = "RangeRepr")]
pub struct AddrRange {
    first: IpAddr,
    last: IpAddr,
}

impl AddrRange {
    /// The range `first..=last`; both of one family, `first <= last`.
    pub fn new(first: IpAddr, last: IpAddr) -> Result<Self> {
        if Family::of(first) != Family::of(last) || to_u128(first) > to_u128(last) {
            return Err(Error::InvalidRange { first, last });
        }
        Ok(AddrRange { first, last })
    }

    /// The lowest address in the range.
    pub fn first(&self) -> IpAddr {
        self.first
    }

    /// The highest address in the range.
    pub fn last(&self) -> IpAddr {
        self.last
    }

    /// The range's family.
    pub fn family(&self) -> Family {
        Family::of(self.first)
    }

    /// Whether `ip` lies in the range.
    pub fn contains(&self, ip: IpAddr) -> bool {
        Family::of(ip) == self.family() && {
            let v = to_u128(ip);
            to_u128(self.first) <= v && v <= to_u128(self.last)
        }
    }

    /// The range as integers.
    pub(crate) fn bounds(&self) -> (u128, u128) {
        (to_u128(self.first), to_u128(self.last))
    }
}

impl From<IpNet> for AddrRange {
    fn from(net: IpNet) -> Self {
        AddrRange {
            first: net.network(),
            last: net.broadcast(),
        }
    }
}

impl fmt::Display for AddrRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.first, self.last)
    }
}

/// Serialized form of [`AddrRange`], validated on the way in.
#[derive(Serialize, Deserialize)]
struct RangeRepr {
    #[serde(rename = "First")]
    first: IpAddr,
    #[serde(rename = "Last")]
    last: IpAddr,
}

impl TryFrom<RangeRepr> for AddrRange {
    type Error = Error;

    fn try_from(r: RangeRepr) -> Result<Self> {
        AddrRange::new(r.first, r.last)
    }
}

impl From<AddrRange> for RangeRepr {
    fn from(r: AddrRange) -> Self {
        RangeRepr {
            first: r.first,
            last: r.last,
        }
    }
}

/// An address as an integer.
pub(crate) fn to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

/// The address of `family` whose integer value is `value`.
///
/// For IPv4 only the low 32 bits are meaningful; callers pass values taken
/// from IPv4 prefixes, which always fit.
pub(crate) fn from_u128(family: Family, value: u128) -> IpAddr {
    match family {
        Family::V4 => {
            debug_assert!(value <= u128::from(u32::MAX), "IPv4 value out of range");
            // Truncation is intended: the value came from an IPv4 prefix.
            IpAddr::V4(Ipv4Addr::from(value as u32))
        }
        Family::V6 => IpAddr::V6(Ipv6Addr::from(value)),
    }
}

/// First and last address of a prefix, as integers.
pub(crate) fn net_bounds(net: &IpNet) -> (u128, u128) {
    (to_u128(net.network()), to_u128(net.broadcast()))
}

/// Whether two prefixes share an address. Prefixes of different families never do.
pub(crate) fn overlaps(a: &IpNet, b: &IpNet) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{ip, net};
    use rstest::rstest;

    #[rstest]
    #[case("10.0.0.0/8", "10.1.0.0/16", true)]
    #[case("10.1.0.0/16", "10.0.0.0/8", true)]
    #[case("10.0.0.0/24", "10.0.1.0/24", false)]
    #[case("10.0.0.0/24", "10.0.0.0/24", true)]
    #[case("10.0.0.0/8", "fd00::/8", false)]
    #[case("::/0", "0.0.0.0/0", false)]
    #[case("fd00::/64", "fd00::8/126", true)]
    fn overlap_table(#[case] a: &str, #[case] b: &str, #[case] expected: bool) {
        assert_eq!(overlaps(&net(a), &net(b)), expected);
    }

    #[rstest]
    #[case("0.0.0.0")]
    #[case("255.255.255.255")]
    #[case("10.1.2.3")]
    #[case("::")]
    #[case("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff")]
    #[case("fd12:3456::1")]
    fn integer_round_trip(#[case] s: &str) {
        let a = ip(s);
        assert_eq!(from_u128(Family::of(a), to_u128(a)), a);
    }

    #[rstest]
    #[case("10.0.0.1", "10.0.0.0")]
    #[case("10.0.0.1", "fd00::1")]
    #[case("fd00::2", "fd00::1")]
    fn invalid_ranges(#[case] first: &str, #[case] last: &str) {
        let err = AddrRange::new(ip(first), ip(last)).unwrap_err();
        assert_eq!(
            err,
            Error::InvalidRange {
                first: ip(first),
                last: ip(last)
            }
        );
    }

    #[test]
    fn range_contains_and_from_prefix() {
        let r = AddrRange::from(net("10.0.0.0/30"));
        assert_eq!((r.first(), r.last()), (ip("10.0.0.0"), ip("10.0.0.3")));
        assert!(r.contains(ip("10.0.0.3")));
        assert!(!r.contains(ip("10.0.0.4")));
        assert!(!r.contains(ip("::a00:1")));
        let one = AddrRange::new(ip("fd00::5"), ip("fd00::5")).unwrap();
        assert!(one.contains(ip("fd00::5")));
        assert_eq!(one.to_string(), "fd00::5-fd00::5");
    }

    #[test]
    fn range_serde_validates() {
        let r = AddrRange::new(ip("10.0.0.4"), ip("10.0.0.9")).unwrap();
        let json = serde_json::to_string(&r).unwrap();
        assert_eq!(json, r#"{"First":"10.0.0.4","Last":"10.0.0.9"}"#);
        assert_eq!(serde_json::from_str::<AddrRange>(&json).unwrap(), r);
        let bad = r#"{"First":"10.0.0.9","Last":"10.0.0.4"}"#;
        assert!(serde_json::from_str::<AddrRange>(bad).is_err());
    }

    #[test]
    fn family_names() {
        assert_eq!(Family::V4.to_string(), "IPv4");
        assert_eq!(serde_json::to_string(&Family::V6).unwrap(), r#""ipv6""#);
        assert_eq!(Family::of_net(&net("fd00::/8")), Family::V6);
        assert_eq!(Family::V4.bits(), 32);
    }
}
