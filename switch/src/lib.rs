//! The vswitch switching core.
//!
//! Everything in this crate except [`tap`] is sans-IO in the way quinn-proto
//! and smoltcp are: functions take bytes and `now: Instant` and return what
//! should happen. Nothing here reads the clock, opens a socket or spawns a
//! task. The daemon (`cli` crate) owns the file descriptors and drives these
//! cores.
//!
//! - [`wire`]: thin views over Ethernet, ARP, IP, TCP, UDP, ICMP and NDP
//!   frames and the emitters of the frames the switch writes (etherparse
//!   behind them, nowhere else).
//! - [`fdb`]: the forwarding database: MAC learning, aging, bounded tables.
//! - [`bridge`]: bridge domains (one per network), the forwarding decision,
//!   flooding, isolation and port security.
//! - [`neighbor`]: ARP/ND answered locally for known remote endpoints.
//! - [`gateway`]: the per-network gateway (ARP, NDP, ICMP echo, DNS on port 53
//!   over UDP and TCP, forwarding to upstream resolvers) on a smoltcp
//!   interface.
//! - [`nat`]: the per-network userspace NAT next to the gateway: published
//!   ports and egress TCP, UDP and ICMP echo through host sockets.
//! - [`dns`]: the embedded DNS responder (hickory-proto messages).
//! - [`offload`]: super-frame offloads: `virtio_net_hdr`, software GSO
//!   toward the tunnel, GRO toward TAPs, the Internet checksum.
//! - [`policy`]: policies between networks and containers: the rules users
//!   give, compiled into a table of endpoints and allowances, and the
//!   per-worker flow table that makes a check per flow, not per packet.
//! - [`tap`]: TAP device IO (the one module with `unsafe`, in `tap::sys`).
//! - `stack` (private): what the gateway and the NAT share to run smoltcp:
//!   the link checks, the in-memory device and its transmit queue, the clock.
//! - [`MacAddr`], [`NetworkId`], [`PortId`]: the small handle types.
#![deny(unsafe_code)]

pub mod bridge;
pub mod capture;
pub mod dns;
pub mod fdb;
pub mod gateway;
pub mod nat;
pub mod neighbor;
pub mod offload;
pub mod policy;
mod stack;
pub mod tap;
mod types;
pub mod wire;

pub use types::{MacAddr, NetworkId, PortId};
