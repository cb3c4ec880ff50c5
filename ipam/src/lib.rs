//! IP address management for vswitch networks: subnets, gateways, IP ranges,
//! default pools, allocation and release.
//!
//! The contract:
//!
//! - **Sans-IO.** Pure data structures: no sockets, no files, no clock, no
//!   randomness. The same calls give the same answers, so the daemon, tests
//!   and a future cluster layer can drive it deterministically.
//! - **Never twice.** While an address is allocated in a network it is not
//!   handed out again, dynamically or statically. The network address, the
//!   IPv4 broadcast address and the gateway are never handed out. Dynamic
//!   addresses come only from the IP range (the whole subnet without one);
//!   static ones from anywhere in the subnet.
//! - **Next-fit.** Dynamic allocation resumes after the last address it
//!   handed out and wraps around, as Docker's does, so a just-released
//!   address is not reused at once (see [`Subnet`]).
//! - **Bounded memory.** State grows with allocations, never with the size of
//!   a subnet: an IPv6 /64 costs what an IPv4 /30 does.
//! - **No overlap.** No two networks' subnets overlap. Automatic subnets come
//!   from [`DefaultPools`] (Docker's) and also avoid prefixes the caller names
//!   (the host's routes).
//! - **Restorable.** The daemon stores each network's [`SubnetConfig`]s (they
//!   are serde types) and its endpoints' addresses; at start it calls
//!   [`Ipam::restore_network`] and [`Ipam::restore_address`].
//! - **Errors a person can act on.** Each [`Error`] reads as a sentence that
//!   names the network, the subnet and the flag to change.
//! - **Ready for ownership.** [`Subnet::allocate_within`] and
//!   [`Ipam::allocate_within`] restrict allocation to given address ranges,
//!   so a cluster layer can make each host allocate only from ranges it owns;
//!   [`cluster`] is that layer: ranges owned per host, moved between hosts by
//!   messages, for overlay networks shared by several hosts.
//!
//! ```
//! use ipam::{Family, Ipam, SubnetRequest};
//!
//! let mut ipam: Ipam = Ipam::new();
//! let web = ipam.add_network("web".to_owned(), &[SubnetRequest::fixed("10.1.0.0/30".parse()?)], &[])?;
//! assert_eq!(web[0].gateway, "10.1.0.1".parse::<std::net::IpAddr>()?);
//! let ip = ipam.allocate("web", Family::V4)?;
//! assert_eq!(ip.to_string(), "10.1.0.2");
//! let err = ipam.allocate("web", Family::V4).unwrap_err();
//! assert_eq!(
//!     err.to_string(),
//!     "network `web` has no free address in 10.1.0.0/30; widen --subnet or --ip-range, or free an endpoint"
//! );
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![deny(unsafe_code)]

mod addr;
pub mod cluster;
mod error;
mod ipam;
mod pool;
mod subnet;
#[cfg(test)]
mod testing;

pub use crate::addr::{AddrRange, Family};
pub use crate::error::Error;
pub use crate::ipam::{Ipam, SubnetRequest};
pub use crate::pool::{AddressPool, DefaultPools};
pub use crate::subnet::{Reserved, Subnet, SubnetConfig};

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
