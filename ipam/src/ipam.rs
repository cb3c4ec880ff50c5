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
        let subnet = Self::subnet_for(&mut self.networks, key, ip, outside)?;
        subnet
            .restore(ip)
            .map_err(|e| e.in_network(&key.to_string()))
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
            .ok_or_else(|| Error::NoSuchNetwork {
                network: key.to_string(),
            })?;
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
        let subnet = Self::subnet_for(&mut self.networks, key, ip, outside)?;
        subnet
            .allocate_static(ip)
            .map_err(|e| e.in_network(&key.to_string()))
    }

    /// Returns `ip` to the network.
    pub fn release<Q>(&mut self, key: &Q, ip: IpAddr) -> Result<()>
    where
        K: Borrow<Q>,
        Q: Ord + fmt::Display + ?Sized,
    {
        let subnet = Self::subnet_for(&mut self.networks, key, ip, not_allocated)?;
        subnet
            .release(ip)
            .map_err(|e| e.in_network(&key.to_string()))
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
        let subnets = self
            .networks
            .get_mut(key)
            .ok_or_else(|| Error::NoSuchNetwork {
                network: key.to_string(),
            })?;
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
        let subnets = networks.get_mut(key).ok_or_else(|| Error::NoSuchNetwork {
            network: key.to_string(),
        })?;
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

fn not_allocated(ip: IpAddr, network: Option<String>, subnets: Vec<IpNet>) -> Error {
    Error::NotAllocated {
        ip,
        network,
        subnets,
    }
}
