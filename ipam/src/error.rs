//! The crate's error type: every variant reads as a sentence a person can act on.

use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;

use crate::addr::Family;
use crate::subnet::Reserved;

/// Everything that can go wrong in IP address management.
///
/// Errors raised by a lone [`Subnet`](crate::Subnet) carry `network: None`;
/// [`Ipam`](crate::Ipam) fills in the network's name, so the daemon can print
/// the message as it is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A subnet, IP range or address pool was written with host bits set
    /// (`10.1.0.5/24` instead of `10.1.0.0/24`).
    #[error("{given} is not a network prefix (host bits are set); write it as {expected}")]
    HostBitsSet {
        /// The prefix as given.
        given: IpNet,
        /// The same prefix with the host bits cleared.
        expected: IpNet,
    },

    /// The subnet has no room for a container once the network address, the
    /// IPv4 broadcast address and the gateway are set aside.
    #[error(
        "subnet {subnet} is too small to hold a container; use a prefix of {} or shorter",
        shortest_usable(.subnet)
    )]
    SubnetTooSmall {
        /// The subnet asked for.
        subnet: IpNet,
    },

    /// The gateway is not inside its subnet (or is of the other IP family).
    #[error("gateway {gateway} is outside subnet {subnet}; pick a --gateway inside it")]
    GatewayOutsideSubnet {
        /// The gateway asked for.
        gateway: IpAddr,
        /// The subnet it should be in.
        subnet: IpNet,
    },

    /// The gateway is the network or broadcast address of its subnet.
    #[error("gateway {gateway} is the {what} of subnet {subnet}; pick another --gateway")]
    GatewayReserved {
        /// The gateway asked for.
        gateway: IpAddr,
        /// Its subnet.
        subnet: IpNet,
        /// Which reserved address it is.
        what: Reserved,
    },

    /// The IP range is not inside its subnet (or is of the other IP family).
    #[error("ip range {ip_range} is not inside subnet {subnet}; pick an --ip-range inside it")]
    RangeOutsideSubnet {
        /// The range asked for.
        ip_range: IpNet,
        /// The subnet it should be in.
        subnet: IpNet,
    },

    /// Every address of the IP range is reserved, so nothing could ever be
    /// handed out from it.
    #[error(
        "ip range {ip_range} holds only reserved addresses of subnet {subnet} \
         (network, broadcast, gateway); widen --ip-range"
    )]
    RangeHasNoFreeAddress {
        /// The range asked for.
        ip_range: IpNet,
        /// Its subnet.
        subnet: IpNet,
    },

    /// A request named a gateway or an IP range but left the subnet to be chosen.
    #[error("--gateway and --ip-range need a --subnet to go with them; add --subnet")]
    NeedsSubnet,

    /// A request asked for one family but gave a subnet of the other.
    #[error("subnet {subnet} is not an {family} subnet, but an {family} subnet was asked for; drop one of the two")]
    FamilyMismatch {
        /// The subnet given.
        subnet: IpNet,
        /// The family asked for.
        family: Family,
    },

    /// The subnet overlaps a subnet of another network (or another subnet of
    /// the same request).
    #[error("subnet {subnet} overlaps network `{network}` ({other}); pick a --subnet that overlaps no other network")]
    Overlap {
        /// The subnet asked for.
        subnet: IpNet,
        /// The network that already holds `other`.
        network: String,
        /// The subnet it overlaps.
        other: IpNet,
    },

    /// No subnet of the default pools is free of existing networks and of the
    /// prefixes the caller asked to avoid.
    #[error(
        "no {family} subnet is left in the default address pools that overlaps neither an existing \
         network nor a host route; pass --subnet, or remove a network"
    )]
    PoolsExhausted {
        /// The family asked for.
        family: Family,
    },

    /// An address pool cannot be split into subnets of the given size.
    #[error(
        "address pool {base} cannot be split into /{size} subnets; the size must be between /{} \
         and {}",
        .base.prefix_len(),
        shortest_usable(.base)
    )]
    InvalidPool {
        /// The pool's prefix.
        base: IpNet,
        /// The prefix length of the subnets cut from it.
        size: u8,
    },

    /// An address range whose ends are of different families or out of order.
    #[error("address range {first}-{last} is empty or mixes IPv4 and IPv6; give the lower address first, both of one family")]
    InvalidRange {
        /// First address given.
        first: IpAddr,
        /// Last address given.
        last: IpAddr,
    },

    /// A network of that name already has address management state.
    #[error("network `{network}` already exists; remove it first or pick another name")]
    NetworkExists {
        /// The network.
        network: String,
    },

    /// No network of that name is known.
    #[error("network `{network}` does not exist; create it first")]
    NoSuchNetwork {
        /// The network.
        network: String,
    },

    /// The network has no subnet of the family asked for.
    #[error("network `{network}` has no {family} subnet; create it with an {family} --subnet{}", ipv6_hint(*.family))]
    NoSubnetForFamily {
        /// The network.
        network: String,
        /// The family asked for.
        family: Family,
    },

    /// Every dynamic address is taken.
    #[error("{} has no free address in {}; widen --subnet or --ip-range, or free an endpoint", owner(.network), Nets(.pools))]
    Exhausted {
        /// The network, when known.
        network: Option<String>,
        /// The prefixes dynamic addresses come from (IP ranges, or whole subnets).
        pools: Vec<IpNet>,
    },

    /// Every address this host may hand out (see
    /// [`Subnet::allocate_within`](crate::Subnet::allocate_within)) is taken.
    #[error("{} has no free address in the parts of {} this host owns; free an endpoint or have this host take over more of the range", owner(.network), Nets(.pools))]
    ExhaustedOwned {
        /// The network, when known.
        network: Option<String>,
        /// The prefixes dynamic addresses come from.
        pools: Vec<IpNet>,
    },

    /// A static address is not inside any subnet.
    #[error("address {ip} is outside {}; pick an --ip inside it", place(.network, .subnets))]
    AddressOutside {
        /// The address asked for.
        ip: IpAddr,
        /// The network, when known.
        network: Option<String>,
        /// The subnets it is not in.
        subnets: Vec<IpNet>,
    },

    /// A static address is the network, broadcast or gateway address.
    #[error("address {ip} is the {what} of {} and is never handed out; pick another --ip", place(.network, .subnets))]
    AddressReserved {
        /// The address asked for.
        ip: IpAddr,
        /// Which reserved address it is.
        what: Reserved,
        /// The network, when known.
        network: Option<String>,
        /// The subnet it is reserved in.
        subnets: Vec<IpNet>,
    },

    /// A static address is already allocated.
    #[error("address {ip} is already in use in {}; pick another --ip or disconnect the endpoint that holds it", place(.network, .subnets))]
    AddressInUse {
        /// The address asked for.
        ip: IpAddr,
        /// The network, when known.
        network: Option<String>,
        /// The subnet it is allocated in.
        subnets: Vec<IpNet>,
    },

    /// The address to release was not allocated.
    #[error("address {ip} is not allocated in {}; there is nothing to release", place(.network, .subnets))]
    NotAllocated {
        /// The address given.
        ip: IpAddr,
        /// The network, when known.
        network: Option<String>,
        /// The subnets searched.
        subnets: Vec<IpNet>,
    },
}

impl Error {
    /// Names the network in errors raised by a lone subnet.
    pub(crate) fn in_network(mut self, name: &str) -> Self {
        match &mut self {
            Error::Exhausted { network, .. }
            | Error::ExhaustedOwned { network, .. }
            | Error::AddressOutside { network, .. }
            | Error::AddressReserved { network, .. }
            | Error::AddressInUse { network, .. }
            | Error::NotAllocated { network, .. } => *network = Some(name.to_owned()),
            _ => {}
        }
        self
    }
}

/// `network `web`` or, for a lone subnet, `the subnet`.
fn owner(network: &Option<String>) -> String {
    match network {
        Some(name) => format!("network `{name}`"),
        None => "the subnet".to_owned(),
    }
}

/// `network `web` (10.1.0.0/24)` or, for a lone subnet, `subnet 10.1.0.0/24`.
fn place(network: &Option<String>, subnets: &[IpNet]) -> String {
    match network {
        Some(name) => format!("network `{name}` ({})", Nets(subnets)),
        None => format!("subnet {}", Nets(subnets)),
    }
}

fn shortest_usable(net: &IpNet) -> &'static str {
    match net {
        IpNet::V4(_) => "/30",
        IpNet::V6(_) => "/126",
    }
}

fn ipv6_hint(family: Family) -> &'static str {
    match family {
        Family::V4 => "",
        Family::V6 => " or --ipv6",
    }
}

/// A comma-separated list of prefixes.
pub(crate) struct Nets<'a>(pub(crate) &'a [IpNet]);

impl fmt::Display for Nets<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("no subnet");
        }
        for (i, net) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{net}")?;
        }
        Ok(())
    }
}
