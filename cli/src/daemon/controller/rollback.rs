//! The undo list of a multi-step change: each step that succeeded pushes
//! its inverse, and a failure at any later step runs them all, last first,
//! so a refused request leaves nothing half set up. Steps that wait on
//! netlink run without the controller's lock.

use std::net::IpAddr;
use std::path::PathBuf;

use switch::PortId;

use super::{drivers, ControlPlane, Controller, Driver};

/// The inverse of one step.
#[derive(Debug)]
pub(super) enum Undo {
    /// A container record made by this request.
    Container(String),
    /// The connect in flight for this container (see
    /// [`Controller::connecting`]).
    Connecting(String),
    /// Addresses handed out by the network's driver.
    Addresses {
        network: String,
        driver: Driver,
        addrs: Vec<IpAddr>,
    },
    /// A TAP made in a namespace.
    Tap { netns: PathBuf, ifname: String },
    /// A TAP made for a container runtime to move (a descriptor of it: the
    /// device goes when the last one closes, wherever it is by then).
    RuntimeTap(switch::tap::Tap),
    /// A port attached to the datapath.
    Port(PortId),
    /// An endpoint record in the store.
    Stored { container: String, network: String },
    /// An endpoint in the network's table, its DNS names and (overlays) the
    /// cluster directory.
    Endpoint {
        network: String,
        container: String,
        driver: Driver,
    },
    /// Published ports recorded and forwarding.
    Published {
        network: String,
        container: String,
        port: PortId,
    },
}

/// Undo steps, in the order their steps were done.
#[derive(Debug, Default)]
#[must_use = "run the rollback on failure, or commit it"]
pub(super) struct Rollback {
    steps: Vec<Undo>,
}

impl Rollback {
    pub(super) fn push(&mut self, undo: Undo) {
        self.steps.push(undo);
    }

    /// Every step went through: nothing to undo.
    pub(super) fn commit(mut self) {
        self.steps.clear();
    }

    /// Undoes every step, last first. Each failure is logged and the rest
    /// still run (netavark's teardown does the same).
    pub(super) fn run(mut self, plane: &ControlPlane) {
        while let Some(step) = self.steps.pop() {
            tracing::debug!(?step, "undoing");
            match step {
                Undo::Tap { netns, ifname } => remove_tap(&netns, &ifname),
                step => plane.lock_for_undo().undo(step),
            }
        }
    }
}

/// Deletes a TAP in its namespace (netlink); a failure is logged.
pub(super) fn remove_tap(netns: &std::path::Path, ifname: &str) {
    if let Err(e) = crate::netns::remove_tap(netns, ifname) {
        tracing::warn!(ifname, error = %e, "removing TAP");
    }
}

impl Controller {
    /// Undoes one step.
    fn undo(&mut self, step: Undo) {
        match step {
            Undo::Container(name) => self.forget_container_if_unused(&name),
            Undo::Connecting(name) => {
                self.connecting.remove(&name);
            }
            Undo::Addresses {
                network,
                driver,
                addrs,
            } => {
                for a in addrs {
                    drivers::of(driver).release(self, &network, a);
                }
            }
            // Rollback::run does this without the lock.
            Undo::Tap { netns, ifname } => remove_tap(&netns, &ifname),
            Undo::RuntimeTap(tap) => {
                let _ = tap.set_persist(false);
            }
            Undo::Port(port) => match self.datapath.remove_port(port) {
                Ok(Some(tap)) => {
                    // Not persistent any more: closing it deletes it.
                    let _ = tap.set_persist(false);
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e, "undo: detaching port"),
            },
            Undo::Stored { container, network } => {
                if let Err(e) = self.store.delete_endpoint(&container, &network) {
                    tracing::warn!(error = %e, "undo: deleting endpoint record");
                }
            }
            Undo::Endpoint {
                network,
                container,
                driver,
            } => {
                if let Some(net) = self.networks.get_mut(&network) {
                    if let Some(ep) = net.endpoints.remove(&container) {
                        net.publish_zone();
                        drivers::of(driver).endpoint_disconnected(self, &ep.record.id);
                    }
                }
            }
            Undo::Published {
                network,
                container,
                port,
            } => self.unpublish(&network, &container, port),
        }
    }
}
