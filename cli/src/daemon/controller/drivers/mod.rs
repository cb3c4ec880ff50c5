//! The network drivers behind one seam, as netavark's `NetworkDriver`:
//! everything that differs between a bridge, an overlay, the host's
//! namespace and loopback-only lives in one impl each, and the controller
//! asks the network's driver instead of matching on its kind.
//!
//! A driver validates a create request, makes and removes its networks,
//! hands out and takes back its endpoints' addresses, and hears of
//! endpoints connected and disconnected. The uplink drivers (macvlan,
//! ipvlan) and the runtime front doors (the Docker plugin, CNI) come in
//! through the same calls.

use std::net::IpAddr;

use super::{api, ApiError, Controller, Driver, Network};

mod bridge;
mod local;

pub(super) use local::no_endpoints;
mod overlay;

/// The address an endpoint asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Want {
    /// Any free address of the family.
    Any(ipam::Family),
    /// This one (`--ip`, `--ip6`).
    Static(IpAddr),
}

impl Want {
    /// `wanted` if given, else any address of `family`.
    pub(super) fn or_any(wanted: Option<impl Into<IpAddr>>, family: ipam::Family) -> Want {
        wanted.map_or(Want::Any(family), |ip| Want::Static(ip.into()))
    }
}

/// What a network driver does; one value per [`Driver`].
pub(super) trait NetworkDriver: Sync {
    /// Docker's `Scope`: `local`, or `global` for networks every host of
    /// the cluster has.
    fn scope(&self) -> &'static str {
        "local"
    }

    /// Whether the driver's networks switch frames: a bridge domain in the
    /// datapath, a gateway, IPAM and endpoints to connect.
    fn switches(&self) -> bool;

    /// Checks what only this driver knows of a create request, before
    /// anything is made (the common checks have passed).
    fn validate(&self, c: &Controller, req: &api::NetworkCreate) -> Result<(), ApiError>;

    /// Makes the network live and durable; nothing is left on error.
    fn create(&self, c: &mut Controller, req: api::NetworkCreate) -> Result<(), ApiError>;

    /// Removes a network that has no endpoints here.
    fn remove(&self, c: &mut Controller, name: &str) -> Result<(), ApiError>;

    /// An address for a new endpoint.
    fn allocate(&self, c: &mut Controller, network: &str, want: Want) -> Result<IpAddr, ApiError>;

    /// Gives back an endpoint's address.
    fn release(&self, c: &mut Controller, network: &str, addr: IpAddr);

    /// An endpoint of `container` on `network` is connected and stored.
    fn endpoint_connected(&self, _c: &mut Controller, _network: &str, _container: &str) {}

    /// The endpoint `endpoint_id` is gone from this host.
    fn endpoint_disconnected(&self, _c: &mut Controller, _endpoint_id: &str) {}

    /// The driver's own fields of `network inspect`.
    fn inspect(&self, _c: &Controller, _n: &Network, _out: &mut api::NetworkInspect) {}
}

/// The driver of networks of `kind`.
pub(super) fn of(kind: Driver) -> &'static dyn NetworkDriver {
    match kind {
        Driver::Bridge => &bridge::Bridge,
        Driver::Overlay => &overlay::Overlay,
        Driver::Host => &local::HOST,
        Driver::None => &local::NONE,
    }
}

/// `--opt encrypted` on a driver whose frames never leave the host.
fn refuse_encrypted(kind: Driver, req: &api::NetworkCreate) -> Result<(), ApiError> {
    if super::is_encrypted(&req.options)? {
        return Err(ApiError::bad(format!(
            "--opt encrypted is for overlay networks, whose frames cross the underlay; the {} driver keeps frames on this host",
            kind.as_str()
        )));
    }
    Ok(())
}

/// The MTU range of local networks.
fn check_mtu(req: &api::NetworkCreate) -> Result<(), ApiError> {
    if let Some(mtu) = req.mtu {
        if !(576..=65_535).contains(&mtu) {
            return Err(ApiError::bad(format!(
                "--mtu {mtu} is out of range; use 576 to 65535"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[rstest::rstest]
    #[case(Driver::Bridge, "local", true)]
    #[case(Driver::Overlay, "global", true)]
    #[case(Driver::Host, "local", false)]
    #[case(Driver::None, "local", false)]
    fn each_kind_has_its_driver(#[case] kind: Driver, #[case] scope: &str, #[case] switches: bool) {
        let d = of(kind);
        assert_eq!(d.scope(), scope);
        assert_eq!(d.switches(), switches);
    }

    #[rstest::rstest]
    #[case(Driver::Bridge)]
    #[case(Driver::Host)]
    #[case(Driver::None)]
    fn local_drivers_refuse_encryption(#[case] kind: Driver) {
        let req = api::NetworkCreate {
            name: "n".into(),
            driver: kind,
            options: [("encrypted".to_string(), String::new())].into(),
            ..Default::default()
        };
        let e = refuse_encrypted(kind, &req).unwrap_err();
        assert_eq!(e.status, 400);
        assert!(e.message.contains("overlay networks"), "{}", e.message);
    }
}
