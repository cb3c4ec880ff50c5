//! The vswitch switching core.
//!
//! Everything in this crate except [`tap`] is sans-IO in the way quinn-proto
//! and smoltcp are: functions take bytes and `now: Instant` and return what
//! should happen. Nothing here reads the clock, opens a socket or spawns a
//! task. The daemon (`cli` crate) owns the file descriptors and drives these
//! cores.
//!
//! - [`wire`]: thin views over Ethernet/ARP/IP frames (etherparse behind them).
//! - [`fdb`]: the forwarding database: MAC learning, aging, bounded tables.
//! - [`bridge`]: bridge domains (one per network), the forwarding decision,
//!   flooding, isolation and port security.
//! - [`gateway`]: the per-network gateway (ARP, NDP, ICMP echo, DNS on port 53
//!   over UDP and TCP) on a smoltcp interface.
//! - [`dns`]: the embedded DNS responder (hickory-proto messages).
//! - [`neighbor`]: ARP/ND answered locally for known remote endpoints.
//! - [`offload`]: super-frame offloads: `virtio_net_hdr`, software GSO
//!   toward the tunnel, GRO toward TAPs, the Internet checksum.
//! - [`tap`]: TAP device IO (the one module with `unsafe`, in `tap::sys`).
#![deny(unsafe_code)]

pub mod bridge;
pub mod dns;
pub mod fdb;
pub mod gateway;
pub mod nat;
pub mod neighbor;
pub mod offload;
mod stack;
pub mod tap;
mod types;
pub mod wire;

pub use types::{MacAddr, NetworkId, PortId};
