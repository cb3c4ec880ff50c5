//! `--driver overlay`: a network every host of the cluster has (Scope
//! `global`), one VNI in the cluster directory, addresses from the
//! cluster-wide IPAM, endpoints published through gossip. The cluster side
//! is in [`crate::daemon::controller`]'s `overlay_nets` and `overlay_ipam`.

use std::net::IpAddr;

use super::{NetworkDriver, Want};
use crate::daemon::controller::{api, ApiError, Controller, Network};

/// The overlay driver.
#[derive(Debug)]
pub(super) struct Overlay;

impl NetworkDriver for Overlay {
    fn scope(&self) -> &'static str {
        "global"
    }

    fn switches(&self) -> bool {
        true
    }

    /// The MTU and the cluster are checked by `create`, which knows the
    /// underlay.
    fn validate(&self, _c: &Controller, _req: &api::NetworkCreate) -> Result<(), ApiError> {
        Ok(())
    }

    fn create(&self, c: &mut Controller, req: api::NetworkCreate) -> Result<(), ApiError> {
        c.create_overlay(req)
    }

    fn remove(&self, c: &mut Controller, name: &str) -> Result<(), ApiError> {
        c.remove_overlay(name)
    }

    fn allocate(&self, c: &mut Controller, network: &str, want: Want) -> Result<IpAddr, ApiError> {
        c.overlay_allocate(network, want)
    }

    fn release(&self, c: &mut Controller, network: &str, addr: IpAddr) {
        c.overlay_release(network, addr);
    }

    fn endpoint_connected(&self, c: &mut Controller, network: &str, container: &str) {
        c.publish_local_endpoint(network, container);
    }

    fn endpoint_disconnected(&self, c: &mut Controller, endpoint_id: &str) {
        c.withdraw_local_endpoint(endpoint_id);
    }

    fn inspect(&self, c: &Controller, n: &Network, out: &mut api::NetworkInspect) {
        out.peers = Some(c.overlay_peers(n));
        out.vteps = Some(n.static_vteps.keys().map(|a| a.to_string()).collect());
    }
}
