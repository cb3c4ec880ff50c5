//! The composition root of vswitch: the `vswitchd` daemon (wiring, control
//! API server, durable state, netns/TAP setup) and the `vswitch` client.
//!
//! The daemon owns every file descriptor; the cores in `switch` and `ipam`
//! only decide.

pub mod api;
pub mod client;
pub mod daemon;
pub mod netns;
pub mod rootless;
pub mod sandbox;
