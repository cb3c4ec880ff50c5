//! Cluster-wide address ownership without a key-value store.
//!
//! Several hosts share an overlay network's subnets. They talk only through
//! gossip, and no two live endpoints may ever get the same address, even
//! when hosts allocate at the same moment or on two sides of a partition.
//! The design is Weave Net's IPAM ring:
//!
//! - The subnets' addresses are divided into ranges, each owned by one host
//!   ([`OwnershipTable`]). **A host allocates only inside ranges it owns**
//!   ([`ClusterAllocator::allocate`] uses
//!   [`Subnet::allocate_within`](crate::Subnet::allocate_within)), so two hosts
//!   never pick the same address, whatever the timing, with no round trip.
//! - A static `--ip` is granted only by the owner of its range; elsewhere
//!   [`ClusterError::NotOwner`] names the host to run the connect on.
//! - **Ownership moves only by its owner's hand.** A host that runs out sends
//!   a [`Request`] to the host that advertises the most free space (each host
//!   gossips an [`Advert`] of its free counts). The owner splits off the upper
//!   half of its largest free run and names the requester its owner; a host
//!   with nothing to give answers with a [`Decline`]. Unanswered requests are
//!   sent to the next host after [`ClusterConfig::request_timeout`].
//! - Changes travel as deltas ([`Update`]) and whole states (anti-entropy);
//!   merging is a union of tokens keeping the higher version of each, so
//!   loss, duplication and reordering only delay convergence. Because only
//!   the owner writes a range, two different entries with one version cannot
//!   arise; if one is seen anyway it is counted ([`Stats::conflicts`]) and
//!   resolved the same way everywhere.
//! - A host's view of **its own** ranges is always exact (each entry carries
//!   the exact last address of its range, written by the owner), so it never
//!   allocates outside what it owns, even while its view of other hosts'
//!   ranges is stale.
//!
//! ## Dead hosts, and the partition caveat
//!
//! A dead host cannot hand its ranges over, so the survivors take them:
//! [`ClusterAllocator::reclaim`] gives every range of the dead host to the
//! live host with the lowest name, deterministically, once the host has been
//! dead for [`ClusterConfig::quarantine`]; [`ClusterAllocator::reclaim_now`]
//! does it at once for the operator's `vswitch ipam reclaim HOST`.
//!
//! This is the one place where the guarantee depends on the operator and the
//! timers, exactly as in Weave (`weave rmpeer`): failure detection cannot
//! tell a dead host from one behind a partition. If a host that was declared
//! dead is in fact alive on the other side of a partition that lasts longer
//! than the quarantine (or is reclaimed by hand), both it and the heir may
//! hand out the same addresses. When the partition heals, the old owner sees
//! its ranges at a higher version, gives them up, and reports the addresses
//! it had allocated there ([`Event::OwnershipLost`]) so the daemon can warn
//! and reconnect those endpoints. A reclaim done from a stale view (a range
//! the dead host gave away just before dying, whose news has not arrived
//! yet) is the other risk; anti-entropy during the quarantine removes it. So:
//! set the quarantine well above the longest partition you expect and the
//! anti-entropy interval, and run the manual reclaim only for a host you
//! know is gone. Without a reclaim, no partition, loss or reordering can
//! make two hosts own one address: the side of a partition without free
//! space fails its allocations with [`ClusterError::NoAnswer`] or
//! [`ClusterError::NoFreeAddress`] instead.
//!
//! ## Limits
//!
//! - Tokens are never removed, so the table grows by up to three entries per
//!   donation (as Weave's ring does); donations halve free runs, so a
//!   network sees few of them.
//! - Ownership covers whole subnets, but donations carve only the dynamic
//!   part (`--ip-range`): static addresses outside it stay with the host
//!   that owns them.
//! - The transport must authenticate senders (gossip does, with the cluster
//!   key): a message is checked for sense, not for origin.
//!
//! ## Driving it
//!
//! Sans-IO, as quinn-proto: no clock, no sockets. The daemon passes `now`,
//! feeds received bytes to [`ClusterAllocator::handle_bytes`], sends what
//! [`ClusterAllocator::poll_transmit`] returns, calls
//! [`ClusterAllocator::handle_timeout`] at [`ClusterAllocator::poll_timeout`],
//! sends [`ClusterAllocator::state`] (or [`ClusterAllocator::state_chunks`])
//! to a random member now and then, and persists the state before sending
//! transmits ([`ClusterAllocator::restore`] rebuilds from it). Requests and
//! declines go to one host ([`Destination::Host`]); updates to all. Connects that got [`ClusterError::AwaitingSpace`] are retried
//! on [`Event::SpaceArrived`] and failed on [`Event::RequestFailed`] or the
//! daemon's own timeout.
//!
//! ```
//! use std::time::Instant;
//! use ipam::cluster::{ClusterAllocator, ClusterConfig, ClusterError, HostName, Message};
//! use ipam::{Family, Subnet};
//!
//! let now = Instant::now();
//! let config = Subnet::new("10.9.0.0/24".parse()?, None, None)?.config().clone();
//! let (a, b) = (HostName::new("a")?, HostName::new("b")?);
//! // Every host builds the same initial table: here `a`, the creator, owns all.
//! let mut host_a = ClusterAllocator::new(a.clone(), "ov", &[config.clone()], &[a.clone()], ClusterConfig::default())?;
//! let mut host_b = ClusterAllocator::new(b.clone(), "ov", &[config], &[a.clone()], ClusterConfig::default())?;
//!
//! assert_eq!(host_a.allocate(Family::V4, now)?.to_string(), "10.9.0.2");
//! // `b` owns nothing yet: it asks `a` for a range.
//! let err = host_b.allocate(Family::V4, now).unwrap_err();
//! assert!(matches!(err, ClusterError::AwaitingSpace { .. }));
//! let static_err = host_b.allocate_static("10.9.0.7".parse()?, now).unwrap_err();
//! assert_eq!(static_err.to_string(), "address 10.9.0.7 of network `ov` belongs to host `a`; run the connect on `a`, or let vswitch pick an address");
//! // Carry the messages both ways (through bytes, as the transport would).
//! while let Some(t) = host_b.poll_transmit() { host_a.handle_bytes(&t.message.encode(), now)?; }
//! while let Some(t) = host_a.poll_transmit() { host_b.handle_bytes(&t.message.encode(), now)?; }
//! let ip = host_b.allocate(Family::V4, now)?;
//! assert!(!host_a.is_allocated(ip));
//! assert_eq!(host_b.table().owner_of(ip), Some(&b));
//! # let _ = Message::decode(&[]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod allocator;
mod error;
mod message;
mod table;

pub use self::allocator::{
    ClusterAllocator, ClusterConfig, Destination, Event, Reclaimed, Stats, Transmit,
};
pub use self::error::ClusterError;
pub use self::message::{
    Advert, Decline, DecodeError, Message, Request, Update, MAX_ADVERTS, MAX_ENTRIES,
};
pub use self::table::{Entry, HostName, MergeOutcome, OwnershipTable, RangeInfo};
