//! All networks' subnets, keyed by network.

use std::borrow::Borrow;
use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::addr::{overlaps, AddrRange, Family};
use crate::pool::DefaultPools;
use crate::subnet::{Subnet, SubnetConfig};
use crate::{Error, Result};

/// What `network create` asks for, per subnet: `--subnet`, `--gateway`,
/// `--ip-range`, or an automatic subnet of one family.
///
/// Without `subnet`, one is chosen from the default pools; `family` then says
/// which (IPv4 when `None`), and `gateway` and `ip_range` must be `None`.
/// With `subnet`, `family` may be left `None`; if given it must match.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SubnetRequest {
    /// The subnet, or `None` to choose one.
    #[serde(rename = "Subnet", default, skip_serializing_if = "Option::is_none")]
    pub subnet: Option<IpNet>,
    /// The IP range dynamic addresses come from.
    #[serde(rename = "IPRange", default, skip_serializing_if = "Option::is_none")]
    pub ip_range: Option<IpNet>,
    /// The gateway; the first host address when `None`.
    #[serde(rename = "Gateway", default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<IpAddr>,
    /// The family of an automatic subnet.
    #[serde(rename = "Family", default, skip_serializing_if = "Option::is_none")]
    pub family: Option<Family>,
}

impl SubnetRequest {
    /// An automatic subnet of `family` (what `--ipv6` without an IPv6
    /// `--subnet` asks for).
    pub fn auto(family: Family) -> Self {
        SubnetRequest {
            family: Some(family),
            ..SubnetRequest::default()
        }
    }

    /// The given subnet, with the default gateway and no IP range.
    pub fn fixed(subnet: IpNet) -> Self {
        SubnetRequest {
            subnet: Some(subnet),
            ..SubnetRequest::default()
        }
    }

    /// The same request with a gateway.
    pub fn with_gateway(mut self, gateway: IpAddr) -> Self {
        self.gateway = Some(gateway);
        self
    }

    /// The same request with an IP range.
    pub fn with_ip_range(mut self, ip_range: IpNet) -> Self {
        self.ip_range = Some(ip_range);
        self
    }
}

/// The address management of every network on this host.
///
/// `K` names a network (its name or id); its `Display` form is what error
/// messages show and seeds the network's automatic IPv6 subnet.
#[derive(Debug, Clone)]
pub struct Ipam<K = String> {
    pools: DefaultPools,
    networks: BTreeMap<K, Vec<Subnet>>,
}

impl<K: Ord + fmt::Display> Default for Ipam<K> {
    fn default() -> Self {
        Ipam::new()
    }
}

impl<K: Ord + fmt::Display> Ipam<K> {
    /// No networks; automatic subnets from Docker's default pools.
    pub fn new() -> Self {
        Ipam::with_pools(DefaultPools::docker())
    }

    /// No networks; automatic subnets from `pools`.
    pub fn with_pools(pools: DefaultPools) -> Self {
        Ipam {
            pools,
            networks: BTreeMap::new(),
        }
    }

    /// The pools automatic subnets come from.
    pub fn pools(&self) -> &DefaultPools {
        &self.pools
    }

    /// Adds a network with the subnets `requests` ask for, and returns their
    /// configurations in request order (to store, and to show in `inspect`).
    ///
    /// No requests means one automatic IPv4 subnet, as `docker network create
    /// NAME` does. Explicit subnets are checked first; automatic ones are then
    /// chosen so they overlap no network, no other subnet of this request and
    /// no prefix in `avoid` (the host's connected routes; do not pass a default
    /// route, which overlaps everything). Explicit subnets are not checked
    /// against `avoid`: a user who names a subnet gets it. Nothing changes
    /// when an error is returned.
    pub fn add_network(
        &mut self,
        key: K,
        requests: &[SubnetRequest],
        avoid: &[IpNet],
    ) -> Result<Vec<SubnetConfig>> {
        let name = key.to_string();
        if self.networks.contains_key(&key) {
            return Err(Error::NetworkExists { network: name });
        }
        let default = [SubnetRequest::auto(Family::V4)];
        let requests = if requests.is_empty() {
            &default[..]
        } else {
            requests
        };

        let mut built: Vec<Option<Subnet>> = vec![None; requests.len()];
        for (slot, request) in built.iter_mut().zip(requests) {
            let Some(subnet) = request.subnet else {
                if request.gateway.is_some() || request.ip_range.is_some() {
                    return Err(Error::NeedsSubnet);
                }
                continue;
            };
            if let Some(family) = request.family {
                if family != Family::of_net(&subnet) {
                    return Err(Error::FamilyMismatch { subnet, family });
                }
            }
            *slot = Some(Subnet::new(subnet, request.gateway, request.ip_range)?);
        }
        let explicit: Vec<IpNet> = built.iter().flatten().map(Subnet::subnet).collect();
        for (i, &subnet) in explicit.iter().enumerate() {
            self.check_overlap(&name, subnet, &explicit[..i])?;
        }

        let mut taken: Vec<IpNet> = self
            .networks
            .values()
            .flatten()
            .map(Subnet::subnet)
            .chain(explicit)
            .chain(avoid.iter().copied())
            .collect();
        for (slot, request) in built.iter_mut().zip(requests) {
            if slot.is_some() {
                continue;
            }
            let family = request.family.unwrap_or(Family::V4);
            let chosen = self
                .pools
                .choose(family, &name, &taken)
                .ok_or(Error::PoolsExhausted { family })?;
            *slot = Some(Subnet::new(chosen, None, None)?);
            taken.push(chosen);
        }

        let subnets: Vec<Subnet> = built.into_iter().flatten().collect();
        let configs = subnets.iter().map(|s| s.config().clone()).collect();
        self.networks.insert(key, subnets);
        Ok(configs)
    }

    /// Re-adds a network with its stored configurations, exactly, at daemon
    /// start; then [`Ipam::restore_address`] marks its endpoints' addresses.
    /// Validates as [`Ipam::add_network`] does, so corrupt or conflicting
    /// state is reported rather than loaded. Nothing changes on error.
    pub fn restore_network(&mut self, key: K, configs: &[SubnetConfig]) -> Result<()> {
        let name = key.to_string();
        if self.networks.contains_key(&key) {
            return Err(Error::NetworkExists { network: name });
        }
        let subnets = configs
            .iter()
            .map(Subnet::from_config)
            .collect::<Result<Vec<_>>>()?;
        let nets: Vec<IpNet> = subnets.iter().map(Subnet::subnet).collect();
        for (i, &subnet) in nets.iter().enumerate() {
            self.check_overlap(&name, subnet, &nets[..i])?;
        }
        self.networks.insert(key, subnets);
        Ok(())
    }

    /// Marks an endpoint's address allocated while rebuilding state; see
    /// [`Subnet::restore`].
    pub fn restore_address<Q>(&mut self, key: &Q, ip: IpAddr) -> Result<()>
    where
        K: Borrow<Q>,
        Q: Ord + fmt::Display + ?Sized,
    {
        self.in_subnet_for(key, ip, outside, Subnet::restore)
    }

    /// Removes a network and all its allocations, returning its
    /// configurations. Whether endpoints are still attached is the caller's
    /// concern.
    pub fn remove_network<Q>(&mut self, key: &Q) -> Result<Vec<SubnetConfig>>
    where
        K: Borrow<Q>,
        Q: Ord + fmt::Display + ?Sized,
    {
        let subnets = self
            .networks
            .remove(key)
            .ok_or_else(|| no_such_network(key))?;
        Ok(subnets.into_iter().map(|s| s.config().clone()).collect())
    }

    /// Whether the network exists.
    pub fn contains_network<Q>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Ord + ?Sized,
    {
        self.networks.contains_key(key)
    }

    /// A network's subnets, in the order they were requested.
    pub fn subnets<Q>(&self, key: &Q) -> Option<&[Subnet]>
    where
        K: Borrow<Q>,
        Q: Ord + ?Sized,
    {
        self.networks.get(key).map(Vec::as_slice)
    }

    /// Every network with its subnets, in key order.
    pub fn networks(&self) -> impl Iterator<Item = (&K, &[Subnet])> + '_ {
        self.networks.iter().map(|(k, v)| (k, v.as_slice()))
    }

    /// Allocates a dynamic address of `family`, from the network's first
    /// subnet of that family that has one free (next-fit within each subnet).
    pub fn allocate<Q>(&mut self, key: &Q, family: Family) -> Result<IpAddr>
    where
        K: Borrow<Q>,
        Q: Ord + fmt::Display + ?Sized,
    {
        self.allocate_with(key, family, Subnet::allocate)
    }

    /// As [`Ipam::allocate`], but only from addresses inside `allowed`: the
    /// ranges this host owns of a cluster-wide network.
    pub fn allocate_within<Q>(
        &mut self,
        key: &Q,
        family: Family,
        allowed: &[AddrRange],
    ) -> Result<IpAddr>
    where
        K: Borrow<Q>,
        Q: Ord + fmt::Display + ?Sized,
    {
        self.allocate_with(key, family, |s| s.allocate_within(allowed))
    }

    /// Allocates `ip` (`--ip`, `--ip6`) in whichever subnet of the network
    /// holds it; anywhere in the subnet, inside the IP range or not.
    pub fn allocate_static<Q>(&mut self, key: &Q, ip: IpAddr) -> Result<IpAddr>
    where
        K: Borrow<Q>,
        Q: Ord + fmt::Display + ?Sized,
    {
        self.in_subnet_for(key, ip, outside, Subnet::allocate_static)
    }

    /// Returns `ip` to the network.
    pub fn release<Q>(&mut self, key: &Q, ip: IpAddr) -> Result<()>
    where
        K: Borrow<Q>,
        Q: Ord + fmt::Display + ?Sized,
    {
        self.in_subnet_for(key, ip, not_allocated, Subnet::release)
    }

    /// Whether `ip` is allocated in the network (false for unknown networks).
    pub fn is_allocated<Q>(&self, key: &Q, ip: IpAddr) -> bool
    where
        K: Borrow<Q>,
        Q: Ord + ?Sized,
    {
        self.networks
            .get(key)
            .is_some_and(|subnets| subnets.iter().any(|s| s.is_allocated(ip)))
    }

    fn allocate_with<Q>(
        &mut self,
        key: &Q,
        family: Family,
        mut allocate: impl FnMut(&mut Subnet) -> Result<IpAddr>,
    ) -> Result<IpAddr>
    where
        K: Borrow<Q>,
        Q: Ord + fmt::Display + ?Sized,
    {
        let subnets = Self::network_mut(&mut self.networks, key)?;
        let mut full = Vec::new();
        let mut owned = false;
        for subnet in subnets.iter_mut().filter(|s| s.family() == family) {
            match allocate(subnet) {
                Ok(ip) => return Ok(ip),
                Err(Error::Exhausted { .. }) => full.push(subnet.pool()),
                Err(Error::ExhaustedOwned { .. }) => {
                    owned = true;
                    full.push(subnet.pool());
                }
                Err(e) => return Err(e.in_network(&key.to_string())),
            }
        }
        let network = key.to_string();
        Err(match (full.is_empty(), owned) {
            (true, _) => Error::NoSubnetForFamily { network, family },
            (false, false) => Error::Exhausted {
                network: Some(network),
                pools: full,
            },
            (false, true) => Error::ExhaustedOwned {
                network: Some(network),
                pools: full,
            },
        })
    }

    /// Runs `op` on the network's subnet holding `ip` (or fails as
    /// `outside` says), naming the network in what it refuses.
    fn in_subnet_for<Q, T>(
        &mut self,
        key: &Q,
        ip: IpAddr,
        outside: fn(IpAddr, Option<String>, Vec<IpNet>) -> Error,
        op: impl FnOnce(&mut Subnet, IpAddr) -> Result<T>,
    ) -> Result<T>
    where
        K: Borrow<Q>,
        Q: Ord + fmt::Display + ?Sized,
    {
        let subnet = Self::subnet_for(&mut self.networks, key, ip, outside)?;
        op(subnet, ip).map_err(|e| e.in_network(&key.to_string()))
    }

    /// The network's subnets, or [`Error::NoSuchNetwork`].
    fn network_mut<'a, Q>(
        networks: &'a mut BTreeMap<K, Vec<Subnet>>,
        key: &Q,
    ) -> Result<&'a mut Vec<Subnet>>
    where
        K: Borrow<Q>,
        Q: Ord + fmt::Display + ?Sized,
    {
        networks.get_mut(key).ok_or_else(|| no_such_network(key))
    }

    /// The network's subnet holding `ip`, or the error `outside` builds.
    fn subnet_for<'a, Q>(
        networks: &'a mut BTreeMap<K, Vec<Subnet>>,
        key: &Q,
        ip: IpAddr,
        outside: fn(IpAddr, Option<String>, Vec<IpNet>) -> Error,
    ) -> Result<&'a mut Subnet>
    where
        K: Borrow<Q>,
        Q: Ord + fmt::Display + ?Sized,
    {
        let subnets = Self::network_mut(networks, key)?;
        let all: Vec<IpNet> = subnets.iter().map(Subnet::subnet).collect();
        subnets
            .iter_mut()
            .find(|s| s.contains(ip))
            .ok_or_else(|| outside(ip, Some(key.to_string()), all))
    }

    /// Refuses `subnet` if it overlaps another network's subnet, or one of
    /// `pending` (earlier subnets of the same network, named `name`).
    fn check_overlap(&self, name: &str, subnet: IpNet, pending: &[IpNet]) -> Result<()> {
        let existing = self
            .networks
            .iter()
            .flat_map(|(k, subnets)| subnets.iter().map(move |s| (k.to_string(), s.subnet())));
        let own = pending.iter().map(|&other| (name.to_owned(), other));
        match existing
            .chain(own)
            .find(|(_, other)| overlaps(&subnet, other))
        {
            Some((network, other)) => Err(Error::Overlap {
                subnet,
                network,
                other,
            }),
            None => Ok(()),
        }
    }
}

fn outside(ip: IpAddr, network: Option<String>, subnets: Vec<IpNet>) -> Error {
    Error::AddressOutside {
        ip,
        network,
        subnets,
    }
}

fn no_such_network<Q: fmt::Display + ?Sized>(key: &Q) -> Error {
    Error::NoSuchNetwork {
        network: key.to_string(),
    }
}

fn not_allocated(ip: IpAddr, network: Option<String>, subnets: Vec<IpNet>) -> Error {
    Error::NotAllocated {
        ip,
        network,
        subnets,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pool::AddressPool;
    use crate::subnet::Reserved;
    use crate::testing::{ip, net};
    use proptest::prelude::*;
    use rstest::rstest;
    use std::collections::BTreeSet;

    fn fixed(s: &str) -> SubnetRequest {
        SubnetRequest::fixed(net(s))
    }

    /// `db` on 10.1.0.0/16 and `web` on 10.2.0.0/24 + fd00:2::/64.
    fn two_networks() -> Ipam {
        let mut ipam = Ipam::new();
        ipam.add_network("db".into(), &[fixed("10.1.0.0/16")], &[])
            .unwrap();
        ipam.add_network(
            "web".into(),
            &[fixed("10.2.0.0/24"), fixed("fd00:2::/64")],
            &[],
        )
        .unwrap();
        ipam
    }

    #[rstest]
    #[case::overlaps_other_network(vec![fixed("10.1.0.0/24")], Error::Overlap { subnet: net("10.1.0.0/24"), network: "db".into(), other: net("10.1.0.0/16") })]
    #[case::contains_other_network(vec![fixed("10.0.0.0/8")], Error::Overlap { subnet: net("10.0.0.0/8"), network: "db".into(), other: net("10.1.0.0/16") })]
    #[case::overlaps_v6(vec![fixed("fd00:2::/48")], Error::Overlap { subnet: net("fd00:2::/48"), network: "web".into(), other: net("fd00:2::/64") })]
    #[case::overlaps_itself(vec![fixed("10.9.0.0/16"), fixed("10.9.1.0/24")], Error::Overlap { subnet: net("10.9.1.0/24"), network: "new".into(), other: net("10.9.0.0/16") })]
    #[case::slash_31(vec![fixed("10.9.0.0/31")], Error::SubnetTooSmall { subnet: net("10.9.0.0/31") })]
    #[case::slash_32(vec![fixed("10.9.0.0/32")], Error::SubnetTooSmall { subnet: net("10.9.0.0/32") })]
    #[case::gateway_outside(vec![fixed("10.9.0.0/24").with_gateway(ip("10.9.1.1"))], Error::GatewayOutsideSubnet { gateway: ip("10.9.1.1"), subnet: net("10.9.0.0/24") })]
    #[case::range_outside(vec![fixed("10.9.0.0/24").with_ip_range(net("10.9.1.0/25"))], Error::RangeOutsideSubnet { ip_range: net("10.9.1.0/25"), subnet: net("10.9.0.0/24") })]
    #[case::gateway_without_subnet(vec![SubnetRequest::auto(Family::V4).with_gateway(ip("10.9.0.1"))], Error::NeedsSubnet)]
    #[case::range_without_subnet(vec![SubnetRequest::default().with_ip_range(net("10.9.0.0/25"))], Error::NeedsSubnet)]
    #[case::family_mismatch(vec![SubnetRequest { family: Some(Family::V6), ..fixed("10.9.0.0/24") }], Error::FamilyMismatch { subnet: net("10.9.0.0/24"), family: Family::V6 })]
    fn add_network_refuses(#[case] requests: Vec<SubnetRequest>, #[case] expected: Error) {
        let mut ipam = two_networks();
        assert_eq!(
            ipam.add_network("new".into(), &requests, &[]).unwrap_err(),
            expected
        );
        assert!(
            !ipam.contains_network("new"),
            "a refused network must leave no state"
        );
        assert_eq!(ipam.networks().count(), 2);
    }

    #[rstest]
    #[case::overlap(
        Error::Overlap { subnet: net("10.1.0.0/24"), network: "db".into(), other: net("10.1.0.0/16") },
        "subnet 10.1.0.0/24 overlaps network `db` (10.1.0.0/16); pick a --subnet that overlaps no other network"
    )]
    #[case::exhausted(
        Error::Exhausted { network: Some("web".into()), pools: vec![net("10.1.0.0/30")] },
        "network `web` has no free address in 10.1.0.0/30; widen --subnet or --ip-range, or free an endpoint"
    )]
    #[case::exhausted_two(
        Error::Exhausted { network: Some("web".into()), pools: vec![net("10.1.0.0/30"), net("10.2.0.0/30")] },
        "network `web` has no free address in 10.1.0.0/30, 10.2.0.0/30; widen --subnet or --ip-range, or free an endpoint"
    )]
    #[case::in_use(
        Error::AddressInUse { ip: ip("10.2.0.9"), network: Some("web".into()), subnets: vec![net("10.2.0.0/24")] },
        "address 10.2.0.9 is already in use in network `web` (10.2.0.0/24); pick another --ip or disconnect the endpoint that holds it"
    )]
    #[case::outside(
        Error::AddressOutside { ip: ip("10.3.0.9"), network: Some("web".into()), subnets: vec![net("10.2.0.0/24"), net("fd00:2::/64")] },
        "address 10.3.0.9 is outside network `web` (10.2.0.0/24, fd00:2::/64); pick an --ip inside it"
    )]
    #[case::no_family(
        Error::NoSubnetForFamily { network: "db".into(), family: Family::V6 },
        "network `db` has no IPv6 subnet; create it with an IPv6 --subnet or --ipv6"
    )]
    #[case::no_family_v4(
        Error::NoSubnetForFamily { network: "db".into(), family: Family::V4 },
        "network `db` has no IPv4 subnet; create it with an IPv4 --subnet"
    )]
    #[case::pools(
        Error::PoolsExhausted { family: Family::V4 },
        "no IPv4 subnet is left in the default address pools that overlaps neither an existing network nor a host route; pass --subnet, or remove a network"
    )]
    #[case::exists(Error::NetworkExists { network: "db".into() }, "network `db` already exists; remove it first or pick another name")]
    #[case::missing(Error::NoSuchNetwork { network: "x".into() }, "network `x` does not exist; create it first")]
    #[case::not_allocated(
        Error::NotAllocated { ip: ip("10.2.0.7"), network: Some("web".into()), subnets: vec![net("10.2.0.0/24")] },
        "address 10.2.0.7 is not allocated in network `web` (10.2.0.0/24); there is nothing to release"
    )]
    #[case::needs_subnet(
        Error::NeedsSubnet,
        "--gateway and --ip-range need a --subnet to go with them; add --subnet"
    )]
    fn messages(#[case] err: Error, #[case] expected: &str) {
        assert_eq!(err.to_string(), expected);
    }

    #[test]
    fn network_exists_and_missing_network() {
        let mut ipam = two_networks();
        assert_eq!(
            ipam.add_network("db".into(), &[fixed("10.50.0.0/16")], &[]),
            Err(Error::NetworkExists {
                network: "db".into()
            })
        );
        let missing = Error::NoSuchNetwork {
            network: "nope".into(),
        };
        assert_eq!(ipam.allocate("nope", Family::V4), Err(missing.clone()));
        assert_eq!(
            ipam.allocate_static("nope", ip("10.1.0.5")),
            Err(missing.clone())
        );
        assert_eq!(ipam.release("nope", ip("10.1.0.5")), Err(missing.clone()));
        assert_eq!(ipam.remove_network("nope"), Err(missing));
        assert!(!ipam.is_allocated("nope", ip("10.1.0.5")));
    }

    #[test]
    fn automatic_subnets_follow_dockers_pools() {
        let mut ipam: Ipam = Ipam::new();
        let first = ipam.add_network("a".into(), &[], &[]).unwrap();
        assert_eq!(
            first,
            [SubnetConfig {
                subnet: net("172.17.0.0/16"),
                ip_range: None,
                gateway: ip("172.17.0.1")
            }]
        );
        // A host route in the way, and an explicit subnet in the same request.
        let second = ipam
            .add_network(
                "b".into(),
                &[SubnetRequest::auto(Family::V4), fixed("172.19.0.0/16")],
                &[net("172.18.5.0/24")],
            )
            .unwrap();
        assert_eq!(second[0].subnet, net("172.20.0.0/16"));
        assert_eq!(second[1].subnet, net("172.19.0.0/16"));
        // Dual stack: the IPv6 subnet is the seeded ULA /64.
        let third = ipam
            .add_network(
                "web".into(),
                &[
                    SubnetRequest::auto(Family::V4),
                    SubnetRequest::auto(Family::V6),
                ],
                &[],
            )
            .unwrap();
        assert_eq!(third[0].subnet, net("172.18.0.0/16"));
        assert_eq!(third[1].subnet, net("fd50:f03f:92a3:75f3::/64"));
        assert_eq!(third[1].gateway, ip("fd50:f03f:92a3:75f3::1"));
        assert_eq!(
            ipam.allocate("web", Family::V6),
            Ok(ip("fd50:f03f:92a3:75f3::2"))
        );
        assert_eq!(ipam.allocate("web", Family::V4), Ok(ip("172.18.0.2")));
    }

    #[test]
    fn pools_exhausted_leaves_no_state() {
        let pool = AddressPool::new(net("10.0.0.0/29"), 30).unwrap();
        let mut ipam: Ipam = Ipam::with_pools(DefaultPools::new(vec![pool]));
        assert_eq!(
            ipam.add_network("a".into(), &[], &[]).unwrap()[0].subnet,
            net("10.0.0.0/30")
        );
        assert_eq!(
            ipam.add_network("b".into(), &[], &[net("10.0.0.4/32")]),
            Err(Error::PoolsExhausted { family: Family::V4 })
        );
        assert_eq!(
            ipam.add_network("c".into(), &[SubnetRequest::auto(Family::V6)], &[]),
            Err(Error::PoolsExhausted { family: Family::V6 })
        );
        assert_eq!(ipam.networks().count(), 1);
        assert_eq!(
            ipam.add_network("b".into(), &[], &[]).unwrap()[0].subnet,
            net("10.0.0.4/30")
        );
    }

    #[test]
    fn allocation_across_subnets_and_families() {
        let mut ipam: Ipam = Ipam::new();
        ipam.add_network(
            "web".into(),
            &[fixed("10.1.0.0/30"), fixed("10.2.0.0/30")],
            &[],
        )
        .unwrap();
        assert_eq!(ipam.allocate("web", Family::V4), Ok(ip("10.1.0.2")));
        assert_eq!(ipam.allocate("web", Family::V4), Ok(ip("10.2.0.2")));
        assert_eq!(
            ipam.allocate("web", Family::V4),
            Err(Error::Exhausted {
                network: Some("web".into()),
                pools: vec![net("10.1.0.0/30"), net("10.2.0.0/30")]
            })
        );
        assert_eq!(
            ipam.allocate("web", Family::V6),
            Err(Error::NoSubnetForFamily {
                network: "web".into(),
                family: Family::V6
            })
        );
        ipam.release("web", ip("10.1.0.2")).unwrap();
        assert!(!ipam.is_allocated("web", ip("10.1.0.2")));
        assert_eq!(ipam.allocate("web", Family::V4), Ok(ip("10.1.0.2")));
        assert!(ipam.is_allocated("web", ip("10.1.0.2")));
    }

    #[test]
    fn static_addresses_name_the_network() {
        let mut ipam = two_networks();
        assert_eq!(
            ipam.allocate_static("web", ip("fd00:2::99")),
            Ok(ip("fd00:2::99"))
        );
        assert_eq!(
            ipam.allocate_static("web", ip("10.2.0.9")),
            Ok(ip("10.2.0.9"))
        );
        assert_eq!(
            ipam.allocate_static("web", ip("10.2.0.9")),
            Err(Error::AddressInUse {
                ip: ip("10.2.0.9"),
                network: Some("web".into()),
                subnets: vec![net("10.2.0.0/24")]
            })
        );
        assert_eq!(
            ipam.allocate_static("web", ip("10.2.0.1")),
            Err(Error::AddressReserved {
                ip: ip("10.2.0.1"),
                what: Reserved::Gateway,
                network: Some("web".into()),
                subnets: vec![net("10.2.0.0/24")]
            })
        );
        // The address of another network is outside this one.
        assert_eq!(
            ipam.allocate_static("web", ip("10.1.0.9")),
            Err(Error::AddressOutside {
                ip: ip("10.1.0.9"),
                network: Some("web".into()),
                subnets: vec![net("10.2.0.0/24"), net("fd00:2::/64")]
            })
        );
        // Networks are independent: the same host part is free in `db`.
        assert_eq!(
            ipam.allocate_static("db", ip("10.1.0.9")),
            Ok(ip("10.1.0.9"))
        );
        assert_eq!(
            ipam.release("web", ip("10.1.0.9")),
            Err(Error::NotAllocated {
                ip: ip("10.1.0.9"),
                network: Some("web".into()),
                subnets: vec![net("10.2.0.0/24"), net("fd00:2::/64")]
            })
        );
    }

    #[test]
    fn allocate_within_for_owned_ranges() {
        let mut ipam = two_networks();
        let owned = [AddrRange::new(ip("10.2.0.200"), ip("10.2.0.200")).unwrap()];
        assert_eq!(
            ipam.allocate_within("web", Family::V4, &owned),
            Ok(ip("10.2.0.200"))
        );
        assert_eq!(
            ipam.allocate_within("web", Family::V4, &owned),
            Err(Error::ExhaustedOwned {
                network: Some("web".into()),
                pools: vec![net("10.2.0.0/24")]
            })
        );
        assert_eq!(
            ipam.allocate_within("db", Family::V6, &owned),
            Err(Error::NoSubnetForFamily {
                network: "db".into(),
                family: Family::V6
            })
        );
    }

    #[test]
    fn removing_a_network_frees_its_subnets() {
        let mut ipam = two_networks();
        ipam.allocate("db", Family::V4).unwrap();
        let removed = ipam.remove_network("db").unwrap();
        assert_eq!(removed[0].subnet, net("10.1.0.0/16"));
        assert!(!ipam.contains_network("db"));
        ipam.add_network("db2".into(), &[fixed("10.1.0.0/24")], &[])
            .unwrap();
        assert_eq!(ipam.allocate("db2", Family::V4), Ok(ip("10.1.0.2")));
    }

    #[test]
    fn rebuild_state_at_daemon_start() {
        let mut before = two_networks();
        before
            .add_network(
                "app".into(),
                &[fixed("10.3.0.0/24")
                    .with_gateway(ip("10.3.0.254"))
                    .with_ip_range(net("10.3.0.0/25"))],
                &[],
            )
            .unwrap();
        let a1 = before.allocate("app", Family::V4).unwrap();
        let a2 = before.allocate("app", Family::V4).unwrap();
        let s1 = before.allocate_static("app", ip("10.3.0.200")).unwrap();
        let w6 = before.allocate("web", Family::V6).unwrap();

        // What the daemon stores: the configs (as JSON here) and endpoint addresses.
        let stored: Vec<(String, String)> = before
            .networks()
            .map(|(k, subnets)| {
                let configs: Vec<&SubnetConfig> = subnets.iter().map(Subnet::config).collect();
                (k.clone(), serde_json::to_string(&configs).unwrap())
            })
            .collect();
        let endpoints = [("app", a1), ("app", a2), ("app", s1), ("web", w6)];

        let mut after: Ipam = Ipam::new();
        for (key, json) in &stored {
            let configs: Vec<SubnetConfig> = serde_json::from_str(json).unwrap();
            after.restore_network(key.clone(), &configs).unwrap();
        }
        for (key, addr) in endpoints {
            after.restore_address(key, addr).unwrap();
        }
        for (key, subnets) in before.networks() {
            let restored = after.subnets(key.as_str()).unwrap();
            let a: Vec<_> = subnets
                .iter()
                .map(|s| (s.config().clone(), s.allocations().collect::<Vec<_>>()))
                .collect();
            let b: Vec<_> = restored
                .iter()
                .map(|s| (s.config().clone(), s.allocations().collect::<Vec<_>>()))
                .collect();
            assert_eq!(a, b);
        }
        // Allocation resumes where it left off, in both.
        assert_eq!(
            after.allocate("app", Family::V4),
            before.allocate("app", Family::V4)
        );
        assert_eq!(
            after.restore_address("app", a1),
            Err(Error::AddressInUse {
                ip: a1,
                network: Some("app".into()),
                subnets: vec![net("10.3.0.0/24")]
            })
        );
        assert!(matches!(
            after.restore_address("app", ip("10.4.0.1")),
            Err(Error::AddressOutside { .. })
        ));
    }

    #[test]
    fn restore_refuses_conflicting_state() {
        let mut ipam = two_networks();
        let clash = SubnetConfig {
            subnet: net("10.1.2.0/24"),
            ip_range: None,
            gateway: ip("10.1.2.1"),
        };
        assert_eq!(
            ipam.restore_network("other".into(), &[clash]),
            Err(Error::Overlap {
                subnet: net("10.1.2.0/24"),
                network: "db".into(),
                other: net("10.1.0.0/16")
            })
        );
        let bad_gateway = SubnetConfig {
            subnet: net("10.7.0.0/24"),
            ip_range: None,
            gateway: ip("10.7.0.255"),
        };
        assert!(matches!(
            ipam.restore_network("other".into(), &[bad_gateway]),
            Err(Error::GatewayReserved {
                what: Reserved::Broadcast,
                ..
            })
        ));
        assert_eq!(
            ipam.restore_network("db".into(), &[]),
            Err(Error::NetworkExists {
                network: "db".into()
            })
        );
        assert!(!ipam.contains_network("other"));
    }

    #[test]
    fn generic_keys() {
        let mut ipam: Ipam<u32> = Ipam::default();
        ipam.add_network(7, &[fixed("10.7.0.0/30")], &[]).unwrap();
        assert_eq!(ipam.allocate(&7, Family::V4), Ok(ip("10.7.0.2")));
        assert_eq!(
            ipam.allocate(&7, Family::V4).unwrap_err().to_string(),
            "network `7` has no free address in 10.7.0.0/30; widen --subnet or --ip-range, or free an endpoint"
        );
    }

    #[test]
    fn request_serde() {
        let req = fixed("10.9.0.0/24").with_gateway(ip("10.9.0.254"));
        let json = serde_json::to_string(&req).unwrap();
        assert_eq!(json, r#"{"Subnet":"10.9.0.0/24","Gateway":"10.9.0.254"}"#);
        assert_eq!(serde_json::from_str::<SubnetRequest>(&json).unwrap(), req);
        let auto: SubnetRequest = serde_json::from_str(r#"{"Family":"ipv6"}"#).unwrap();
        assert_eq!(auto, SubnetRequest::auto(Family::V6));
    }

    #[derive(Debug, Clone)]
    enum Op {
        Allocate(bool, Family),
        Static(bool, u16),
        Release(bool, u16),
    }

    fn op() -> impl Strategy<Value = Op> {
        let family = prop_oneof![Just(Family::V4), Just(Family::V6)];
        prop_oneof![
            (any::<bool>(), family).prop_map(|(n, f)| Op::Allocate(n, f)),
            (any::<bool>(), any::<u16>()).prop_map(|(n, o)| Op::Static(n, o)),
            (any::<bool>(), any::<u16>()).prop_map(|(n, o)| Op::Release(n, o)),
        ]
    }

    /// Address `offset` (mod 64) of one of the network's subnets.
    fn addr_in(ipam: &Ipam, key: &str, offset: u16) -> IpAddr {
        let subnets = ipam.subnets(key).unwrap();
        let s = &subnets[usize::from(offset) % subnets.len()];
        let base = crate::addr::to_u128(s.subnet().network());
        crate::addr::from_u128(s.family(), base + u128::from(offset % 64))
    }

    proptest! {
        #[test]
        fn networks_never_hand_out_an_address_twice(
            ops in proptest::collection::vec(op(), 1..150),
        ) {
            let mut ipam: Ipam = Ipam::new();
            ipam.add_network("a".into(), &[fixed("10.0.0.0/27").with_ip_range(net("10.0.0.8/29")), fixed("fd00:a::/122")], &[]).unwrap();
            ipam.add_network("b".into(), &[fixed("10.0.0.32/28"), fixed("10.0.0.48/29")], &[]).unwrap();
            let mut live: BTreeSet<(String, IpAddr)> = BTreeSet::new();
            for op in ops {
                match op {
                    Op::Allocate(n, family) => {
                        let key = if n { "a" } else { "b" };
                        if let Ok(a) = ipam.allocate(key, family) {
                            prop_assert!(live.insert((key.into(), a)), "{a} twice in {key}");
                            let s = ipam.subnets(key).unwrap().iter().find(|s| s.contains(a)).unwrap();
                            prop_assert!(s.pool().contains(&a));
                            prop_assert_eq!(s.reserved(a), None);
                        }
                    }
                    Op::Static(n, offset) => {
                        let key = if n { "a" } else { "b" };
                        let a = addr_in(&ipam, key, offset);
                        let ok = ipam.allocate_static(key, a).is_ok();
                        let subnets = ipam.subnets(key).unwrap();
                        let inside = subnets.iter().any(|s| s.contains(a));
                        let reserved = subnets.iter().any(|s| s.reserved(a).is_some());
                        let was = live.contains(&(key.to_string(), a));
                        prop_assert_eq!(ok, inside && !reserved && !was);
                        if ok {
                            live.insert((key.into(), a));
                        }
                    }
                    Op::Release(n, offset) => {
                        let key = if n { "a" } else { "b" };
                        let a = addr_in(&ipam, key, offset);
                        let was = live.remove(&(key.to_string(), a));
                        prop_assert_eq!(ipam.release(key, a).is_ok(), was);
                        if was {
                            prop_assert_eq!(ipam.allocate_static(key, a), Ok(a));
                            ipam.release(key, a).unwrap();
                        }
                    }
                }
            }
            let held: BTreeSet<(String, IpAddr)> = ipam
                .networks()
                .flat_map(|(k, subnets)| subnets.iter().flat_map(move |s| s.allocations().map(move |a| (k.clone(), a))))
                .collect();
            prop_assert_eq!(held, live);
        }
    }
}
