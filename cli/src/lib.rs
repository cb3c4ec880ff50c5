//! The composition root of vswitch: the `vswitchd` daemon (wiring, control
//! API server, durable state, netns/TAP setup), the `vswitch` client and
//! the `vswitch-cni` plugin.
//!
//! The daemon owns every file descriptor; the cores in `switch` and `ipam`
//! only decide.

pub mod api;
pub mod client;
pub mod cni;
pub mod container_log;
pub mod daemon;
pub mod k8s_policy;
pub mod netns;
pub mod probe;
pub mod rootless;
pub mod sandbox;
