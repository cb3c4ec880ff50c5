//! `--driver bridge`: a bridge domain on this host, with a gateway, DNS,
//! a NAT and this host's IPAM.

use std::net::IpAddr;

use super::{check_mtu, refuse_encrypted, NetworkDriver, Want};
use crate::daemon::controller::{api, ipam_err, ApiError, Controller, Driver};

/// The bridge driver.
#[derive(Debug)]
pub(super) struct Bridge;

impl NetworkDriver for Bridge {
    fn switches(&self) -> bool {
        true
    }

    fn validate(&self, _c: &Controller, req: &api::NetworkCreate) -> Result<(), ApiError> {
        refuse_encrypted(Driver::Bridge, req)?;
        check_mtu(req)
    }

    fn create(&self, c: &mut Controller, req: api::NetworkCreate) -> Result<(), ApiError> {
        let subnets = c.allocate_subnets(&req)?;
        c.create_local(req, subnets)
    }

    fn remove(&self, c: &mut Controller, name: &str) -> Result<(), ApiError> {
        c.remove_local(name)
    }

    fn allocate(&self, c: &mut Controller, network: &str, want: Want) -> Result<IpAddr, ApiError> {
        match want {
            Want::Static(ip) => c.ipam.allocate_static(network, ip),
            Want::Any(family) => c.ipam.allocate(network, family),
        }
        .map_err(ipam_err)
    }

    fn release(&self, c: &mut Controller, network: &str, addr: IpAddr) {
        if let Err(e) = c.ipam.release(network, addr) {
            tracing::warn!(%addr, error = %e, "releasing address");
        }
    }
}
