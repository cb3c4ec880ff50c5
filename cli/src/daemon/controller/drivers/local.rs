//! `--driver host` (the host's own namespace) and `--driver none`
//! (loopback only): networks without addresses, frames or endpoints; a
//! container joins them through `vswitch run --network`.

use std::net::IpAddr;

use super::{check_mtu, refuse_encrypted, NetworkDriver, Want};
use crate::daemon::controller::{api, ApiError, Controller, Driver};

/// A driver whose networks switch nothing.
#[derive(Debug)]
pub(super) struct Unswitched(Driver);

pub(super) const HOST: Unswitched = Unswitched(Driver::Host);
pub(super) const NONE: Unswitched = Unswitched(Driver::None);

impl NetworkDriver for Unswitched {
    fn switches(&self) -> bool {
        false
    }

    fn validate(&self, _c: &Controller, req: &api::NetworkCreate) -> Result<(), ApiError> {
        refuse_encrypted(self.0, req)?;
        if !req.subnets.is_empty() || req.ipv6 {
            return Err(ApiError::bad(format!(
                "the {} driver has no addresses; drop --subnet/--ipv6 or use --driver bridge",
                self.0.as_str()
            )));
        }
        check_mtu(req)
    }

    fn create(&self, c: &mut Controller, req: api::NetworkCreate) -> Result<(), ApiError> {
        c.create_local(req, Vec::new())
    }

    fn remove(&self, c: &mut Controller, name: &str) -> Result<(), ApiError> {
        c.remove_local(name)
    }

    fn allocate(&self, _c: &mut Controller, network: &str, _: Want) -> Result<IpAddr, ApiError> {
        Err(no_endpoints(self.0, network))
    }

    fn release(&self, _c: &mut Controller, _network: &str, _addr: IpAddr) {}
}

/// What `network connect` to such a network answers.
pub(in crate::daemon::controller) fn no_endpoints(kind: Driver, network: &str) -> ApiError {
    ApiError::bad(format!(
        "network `{network}` uses the {} driver, which has no endpoints to connect; use `vswitch run --network {network}`",
        kind.as_str()
    ))
}
