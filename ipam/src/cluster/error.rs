//! Errors of cluster-wide address ownership: each reads as a sentence a
//! person can act on, and wraps the crate's [`Error`](crate::Error) for what a
//! local subnet refuses.

use std::net::IpAddr;
use std::time::Duration;

use ipnet::IpNet;

use crate::addr::Family;
use crate::cluster::table::HostName;
use crate::error::Nets;

/// Everything that can go wrong in cluster-wide address management.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ClusterError {
    /// What the local subnet allocator refused (address in use, reserved,
    /// outside the subnet, no subnet of that family, ...).
    #[error(transparent)]
    Ipam(#[from] crate::Error),

    /// A static address lies in a range another host owns.
    #[error(
        "address {ip} of network `{network}` belongs to host `{owner}`; run the connect on `{owner}`, \
         or let vswitch pick an address"
    )]
    NotOwner {
        /// The address asked for.
        ip: IpAddr,
        /// The network.
        network: String,
        /// The host that owns the range holding it.
        owner: HostName,
    },

    /// This host owns no free address of the family; it has asked another
    /// host for a range. The daemon retries when
    /// [`Event::SpaceArrived`](crate::cluster::Event::SpaceArrived) comes, or
    /// gives up after its own timeout.
    #[error(
        "network `{network}` has no free {family} address on this host yet; host `{asked}` was asked \
         for a range, retry in a moment"
    )]
    AwaitingSpace {
        /// The network.
        network: String,
        /// The family asked for.
        family: Family,
        /// The host asked for a range.
        asked: HostName,
    },

    /// No host of the cluster is known to have a free address of the family.
    #[error(
        "no host of the cluster has a free {family} address in network `{network}` ({}); widen \
         --subnet or --ip-range, or free an endpoint",
        Nets(.pools)
    )]
    NoFreeAddress {
        /// The network.
        network: String,
        /// The family asked for.
        family: Family,
        /// The network's subnets of that family.
        pools: Vec<IpNet>,
    },

    /// Every host asked for a range declined or did not answer.
    #[error(
        "no host answered with free {family} addresses of network `{network}` after {attempts} \
         requests; check `vswitch members` for unreachable hosts, or free an endpoint"
    )]
    NoAnswer {
        /// The network.
        network: String,
        /// The family asked for.
        family: Family,
        /// How many requests were sent.
        attempts: u32,
    },

    /// A dead host's quarantine has not yet passed.
    #[error(
        "host `{host}` was declared dead {}s ago; its address ranges are reclaimed once the \
         quarantine ends in {}s; run `vswitch ipam reclaim {host}` to take them now if you are sure \
         it is gone for good",
        .waited.as_secs(),
        .remaining.as_secs().max(1)
    )]
    Quarantined {
        /// The dead host.
        host: HostName,
        /// How long ago it was declared dead.
        waited: Duration,
        /// How long until the quarantine ends.
        remaining: Duration,
    },

    /// A host asked to reclaim a live host's ranges.
    #[error(
        "host `{host}` is alive; only a dead host's address ranges can be reclaimed (stop its \
         vswitchd first, or wait until `vswitch members` shows it dead)"
    )]
    ReclaimLive {
        /// The live host.
        host: HostName,
    },

    /// A host asked to reclaim its own ranges.
    #[error(
        "host `{host}` cannot reclaim its own address ranges; run the reclaim on another host"
    )]
    ReclaimSelf {
        /// This host.
        host: HostName,
    },

    /// A host name that cannot be used in the cluster.
    #[error(
        "host name `{}` must be 1 to {} bytes without control characters; pass another --node-name",
        .name.escape_debug(),
        HostName::MAX_LEN
    )]
    InvalidHostName {
        /// The name given.
        name: String,
    },

    /// The subnets of an ownership table do not fit together.
    #[error(
        "network `{network}` cannot be shared by the cluster: {reason}; recreate it with \
         non-overlapping --subnet values"
    )]
    InvalidSubnets {
        /// The network.
        network: String,
        /// What is wrong.
        reason: &'static str,
    },

    /// Stored or received ownership state does not describe the network.
    #[error(
        "the stored address ownership of network `{network}` is unusable ({reason}); remove the \
         network's state and let the cluster send it again"
    )]
    InvalidState {
        /// The network.
        network: String,
        /// What is wrong.
        reason: &'static str,
    },

    /// The ownership table has no host to give a range to.
    #[error("network `{network}` needs at least one host to own its addresses")]
    NoMembers {
        /// The network.
        network: String,
    },
}
