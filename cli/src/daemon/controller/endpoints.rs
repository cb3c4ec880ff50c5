//! Endpoints: `network connect` and `disconnect`.
//!
//! A connect runs in three phases so that the controller's lock is never
//! held while netlink works in the container's namespace:
//! 1. locked: checks, the container's record, host ports bound, addresses
//!    from the network's driver, the endpoint's record decided;
//! 2. unlocked: the interface name picked and the TAP made in the
//!    namespace;
//! 3. locked: the port attached to the datapath, the record stored, the
//!    endpoint in the network's table, DNS and (overlays) the cluster
//!    directory, published ports forwarding.
//!
//! Every step pushes its inverse on a [`Rollback`]; a failure at any step
//! undoes all the earlier ones, so a refused connect leaves nothing. The
//! steps are named fail points (`connect::addresses`, `connect::netlink`,
//! `connect::tap`, `connect::datapath`, `connect::store`,
//! `connect::endpoint`, `connect::published`), which tests set through
//! `vswitchd --test-failpoints` to fail, slow down or panic a step.

use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};

use super::drivers::Want;
use super::ports::Bound;
use super::rollback::{Rollback, Undo};
use super::*;
use ipam::Family::{V4, V6};

/// A fail point: in tests, the step `name` fails here.
macro_rules! step {
    ($name:literal) => {
        fail::fail_point!($name, |_| Err(ApiError::internal(concat!(
            "fail point ",
            $name
        ))))
    };
}

/// Where an endpoint's TAP is made and who configures it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Placement {
    /// In the container's namespace, configured by vswitch (addresses,
    /// routes, up), named `ifname` (CNI's ADD: the runtime's name, which
    /// must be free) or else the first free `ethN` (`vswitch run`,
    /// `network connect`).
    Configure { ifname: Option<String> },
    /// In vswitchd's own namespace, named `ifname`, with only its MAC and
    /// MTU set, for a container runtime to move into the sandbox and
    /// configure (Docker's `Join`).
    Runtime { ifname: String },
}

/// What phase 1 of a connect decided.
struct Plan {
    network: String,
    driver: Driver,
    netns: PathBuf,
    /// The endpoint's record; its interface name is picked in phase 2.
    record: EndpointRecord,
    /// The interface as netlink makes it (name filled in phase 2).
    iface: IfaceConfig,
    queues: usize,
    bound: Vec<Bound>,
    mappings: Vec<api::PortMapping>,
}

/// A TAP detached from the datapath, still to be deleted (by netlink,
/// without the lock).
#[derive(Debug)]
pub(super) struct Detached {
    tap: Option<switch::tap::Tap>,
    netns: Option<PathBuf>,
    ifname: String,
}

impl Detached {
    /// Deletes the TAP: not persistent any more, closed, and removed from
    /// its namespace.
    pub(super) fn delete(self) {
        if let Some(tap) = self.tap {
            let _ = tap.set_persist(false);
        }
        if let Some(netns) = &self.netns {
            super::rollback::remove_tap(netns, &self.ifname);
        }
    }
}

impl ControlPlane {
    /// `network connect`.
    pub(super) fn connect(&self, network: &str, req: api::Connect) -> Result<(), ApiError> {
        self.connect_placed(network, req, Placement::Configure { ifname: None })
    }

    /// A connect whose TAP is placed as `placement` says.
    pub(super) fn connect_placed(
        &self,
        network: &str,
        req: api::Connect,
        placement: Placement,
    ) -> Result<(), ApiError> {
        let mut rollback = Rollback::default();
        match catch_unwind(AssertUnwindSafe(|| {
            self.connect_steps(network, &req, &placement, &mut rollback)
        })) {
            Ok(Ok(())) => {
                rollback.commit();
                Ok(())
            }
            Ok(Err(e)) => {
                rollback.run(self);
                Err(e)
            }
            Err(panic) => {
                // Undo what was set up, then let the request fail as a bug.
                rollback.run(self);
                resume_unwind(panic)
            }
        }
    }

    fn connect_steps(
        &self,
        network: &str,
        req: &api::Connect,
        placement: &Placement,
        rollback: &mut Rollback,
    ) -> Result<(), ApiError> {
        let mut plan = self
            .lock()?
            .plan_connect(network, req, placement, rollback)?;
        step!("connect::netlink");
        let tap = match placement {
            Placement::Configure { ifname } => {
                plan.record.ifname = match ifname {
                    Some(ifname) => {
                        if netns::link_exists(&plan.netns, ifname)
                            .map_err(|e| ApiError::bad(e.to_string()))?
                        {
                            return Err(ApiError::conflict(format!(
                                "{} has an interface {ifname} already",
                                plan.netns.display()
                            )));
                        }
                        ifname.clone()
                    }
                    None => {
                        netns::next_ifname(&plan.netns).map_err(|e| ApiError::bad(e.to_string()))?
                    }
                };
                plan.iface.name = plan.record.ifname.clone();
                rollback.push(Undo::Tap {
                    netns: plan.netns.clone(),
                    ifname: plan.record.ifname.clone(),
                });
                netns::attach_tap_queues(&plan.netns, &plan.iface, plan.queues)
                    .map_err(|e| ApiError::bad(e.to_string()))?
            }
            Placement::Runtime { ifname } => {
                plan.record.ifname = ifname.clone();
                plan.iface.name = ifname.clone();
                let tap = netns::make_tap_for_runtime(&plan.iface, plan.queues)
                    .map_err(|e| ApiError::bad(e.to_string()))?;
                // Not persistent once the descriptors close, wherever the
                // runtime has moved it by then.
                let handle = tap[0].try_clone().map_err(internal)?;
                rollback.push(Undo::RuntimeTap(handle));
                tap
            }
        };
        step!("connect::tap");
        self.lock()?.finish_connect(plan, tap, rollback)
    }

    /// `network disconnect`.
    pub(super) fn disconnect(&self, network: &str, container: &str) -> Result<(), ApiError> {
        let detached = self.lock()?.detach_endpoint(network, container)?;
        detached.delete();
        Ok(())
    }
}

impl Controller {
    /// Phase 1 of a connect.
    fn plan_connect(
        &mut self,
        network: &str,
        req: &api::Connect,
        placement: &Placement,
        rollback: &mut Rollback,
    ) -> Result<Plan, ApiError> {
        let net = self.network(network)?;
        let kind = net.record.driver;
        if !drivers::of(kind).switches() {
            return Err(drivers::no_endpoints(kind, network));
        }
        if net.endpoints.contains_key(&req.container) {
            return Err(ApiError::conflict(format!(
                "container `{}` is already connected to network `{network}`",
                req.container
            )));
        }
        if let Some(other) = self.connecting.get(&req.container) {
            return Err(ApiError::conflict(format!(
                "container `{}` is being connected to network `{other}`; try again when that is done",
                req.container
            )));
        }
        if self.has_exited(&req.container) || self.removing.contains(&req.container) {
            return Err(ApiError::conflict(format!(
                "container `{}` has exited or is being removed; `vswitch rm {}` and run it again",
                req.container, req.container
            )));
        }
        // The container: known, or introduced by this connect with --netns.
        match (self.containers.get(&req.container), &req.netns) {
            (Some(c), Some(p)) if c.netns.as_deref() != Some(p.as_path()) => {
                return Err(ApiError::conflict(format!(
                    "container `{}` already lives in {}, not {}",
                    req.container,
                    c.netns.as_deref().map(|p| p.display().to_string()).unwrap_or_else(|| "the host namespace".into()),
                    p.display()
                )));
            }
            (Some(c), _) if c.netns.is_none() => {
                return Err(ApiError::bad(format!(
                    "container `{}` runs in the host's network namespace and cannot be connected",
                    req.container
                )));
            }
            (Some(_), _) => {}
            (None, None) => {
                return Err(ApiError::bad(format!(
                    "container `{}` is unknown; pass --netns PATH (e.g. /run/netns/{} or /proc/PID/ns/net)",
                    req.container, req.container
                )))
            }
            (None, Some(p)) => {
                let c = api::ContainerCreate {
                    name: req.container.clone(),
                    netns: Some(p.clone()),
                    owns_netns: false,
                    labels: req.labels.clone(),
                    ..Default::default()
                };
                match placement {
                    Placement::Configure { .. } => self.create_container(c)?,
                    // Docker makes the sandbox's namespace after Join.
                    Placement::Runtime { .. } => self.create_container_record(c)?,
                }
                rollback.push(Undo::Container(req.container.clone()));
            }
        }
        self.connecting
            .insert(req.container.clone(), network.to_string());
        rollback.push(Undo::Connecting(req.container.clone()));

        let container = self.containers[&req.container].clone();
        let netns = container.netns.clone().expect("checked above");
        let first = !self
            .networks
            .values()
            .any(|n| n.endpoints.contains_key(&req.container));
        let net = &self.networks[network];
        if req.ip6.is_some() && net.subnet6().is_none() {
            return Err(ApiError::bad(format!(
                "network `{network}` has no IPv6; create it with --ipv6 to use --ip6"
            )));
        }
        let mac = match &req.mac {
            Some(m) => {
                let mac: MacAddr = m
                    .parse()
                    .map_err(|e| ApiError::bad(format!("--mac {m}: {e}")))?;
                if mac.is_multicast() || mac.is_zero() {
                    return Err(ApiError::bad(format!(
                        "--mac {m} is not a unicast address; the first byte must be even"
                    )));
                }
                Some(mac)
            }
            None => None,
        };
        // Host ports first: a port in use refuses the connect before
        // anything is set up (the sockets close if a later step fails).
        let bound = self.bind_ports(network, &req.ports)?;
        // The ports as bound: a host port 0 became the one the kernel picked.
        let mappings: Vec<api::PortMapping> = bound.iter().map(|b| b.mapping()).collect();
        let net = &self.networks[network];
        let (subnet4, subnet6, gw4, gw6, internal) = (
            net.subnet4(),
            net.subnet6(),
            net.gateway4(),
            net.gateway6(),
            net.record.internal,
        );

        let ipv4 = match subnet4 {
            Some(n) => {
                match self.allocate_for(network, kind, Want::or_any(req.ip, V4), rollback)? {
                    IpAddr::V4(a) => {
                        Some(Ipv4Net::new(a, n.prefix_len()).expect("prefix from a subnet"))
                    }
                    IpAddr::V6(_) => None,
                }
            }
            None => None,
        };
        let ipv6 = match subnet6 {
            Some(n) => {
                match self.allocate_for(network, kind, Want::or_any(req.ip6, V6), rollback)? {
                    IpAddr::V6(a) => {
                        Some(Ipv6Net::new(a, n.prefix_len()).expect("prefix from a subnet"))
                    }
                    IpAddr::V4(_) => None,
                }
            }
            None => None,
        };
        step!("connect::addresses");
        let mac = mac.unwrap_or_else(|| match ipv4 {
            Some(a) => {
                let o = a.addr().octets();
                MacAddr([0x02, 0x42, o[0], o[1], o[2], o[3]])
            }
            None => MacAddr::local_from_seed(format!("{}/{network}", container.id).as_bytes()),
        });
        let default_route = first && !internal;
        let record = EndpointRecord {
            container: req.container.clone(),
            network: network.to_string(),
            id: random_id(),
            ifname: String::new(),
            mac: mac.0,
            ipv4,
            ipv6,
            gateway4: if default_route { gw4 } else { None },
            gateway6: if default_route { gw6 } else { None },
            aliases: req.aliases.clone(),
        };
        if kind == Driver::Overlay {
            self.check_publishable(network, &record)?;
        }
        let iface = iface_config(&self.networks[network], &record);
        Ok(Plan {
            network: network.to_string(),
            driver: kind,
            netns,
            record,
            iface,
            queues: self.datapath.queues(),
            bound,
            mappings,
        })
    }

    /// An address from the network's driver, given back if the connect
    /// fails later.
    fn allocate_for(
        &mut self,
        network: &str,
        kind: Driver,
        want: Want,
        rollback: &mut Rollback,
    ) -> Result<IpAddr, ApiError> {
        // An address Docker's IPAM request took for this endpoint is
        // already allocated, and stays so until Docker releases it.
        if let Want::Static(ip) = want {
            if self.docker.holds(network, ip) {
                return Ok(ip);
            }
        }
        let a = drivers::of(kind).allocate(self, network, want)?;
        rollback.push(Undo::Addresses {
            network: network.to_string(),
            driver: kind,
            addrs: vec![a],
        });
        Ok(a)
    }

    /// Phase 3 of a connect.
    fn finish_connect(
        &mut self,
        plan: Plan,
        tap: Vec<switch::tap::Tap>,
        rollback: &mut Rollback,
    ) -> Result<(), ApiError> {
        let Plan {
            network,
            driver,
            record,
            bound,
            mappings,
            ..
        } = plan;
        let container = record.container.clone();
        // The network cannot have gone: removing it waits for connects.
        let id = self.networks[&network]
            .id
            .expect("networks with endpoints have a datapath");
        let port = self.alloc_port();
        self.datapath.add_port(port, id, tap, security(&record))?;
        rollback.push(Undo::Port(port));
        step!("connect::datapath");
        self.store.put_endpoint(&record).map_err(internal)?;
        rollback.push(Undo::Stored {
            container: container.clone(),
            network: network.clone(),
        });
        step!("connect::store");
        tracing::info!(%container, %network, ifname = %record.ifname,
            ipv4 = ?record.ipv4, ipv6 = ?record.ipv6, "endpoint connected");
        let net = self.networks.get_mut(&network).expect("exists");
        net.endpoints.insert(
            container.clone(),
            Endpoint {
                record,
                port,
                ports: mappings.clone(),
            },
        );
        net.publish_zone();
        drivers::of(driver).endpoint_connected(self, &network, &container);
        rollback.push(Undo::Endpoint {
            network: network.clone(),
            container: container.clone(),
            driver,
        });
        step!("connect::endpoint");
        rollback.push(Undo::Published {
            network: network.clone(),
            container: container.clone(),
            port,
        });
        self.save_ports(&container, &network, &mappings)?;
        self.start_forwarding(&network, &container, bound)?;
        step!("connect::published");
        self.connecting.remove(&container);
        self.emit_endpoint(
            "connect",
            &self.networks[&network].endpoints[&container].record,
        );
        self.emit_ports("publish", &network, &container, &mappings);
        Ok(())
    }

    /// Takes an endpoint out of the tables, the store, DNS, the cluster
    /// directory and the datapath, and gives its addresses back; the TAP is
    /// left for the caller to delete without the lock.
    pub(super) fn detach_endpoint(
        &mut self,
        network: &str,
        container: &str,
    ) -> Result<Detached, ApiError> {
        let net = self.network(network)?;
        if !net.endpoints.contains_key(container) {
            return Err(ApiError::not_found(format!(
                "container `{container}` is not connected to network `{network}`"
            )));
        }
        let kind = net.record.driver;
        let driver = drivers::of(kind);
        self.store
            .delete_endpoint(container, network)
            .map_err(internal)?;
        let net = self.networks.get_mut(network).expect("exists");
        let ep = net.endpoints.remove(container).expect("checked");
        net.publish_zone();
        driver.endpoint_disconnected(self, &ep.record.id);
        self.unpublish(network, container, ep.port);
        let tap = match self.datapath.remove_port(ep.port) {
            Ok(tap) => tap,
            Err(e) => {
                tracing::warn!(error = %e, "detaching port");
                None
            }
        };
        for a in ep
            .record
            .ipv4
            .map(|n| IpAddr::V4(n.addr()))
            .into_iter()
            .chain(ep.record.ipv6.map(|n| IpAddr::V6(n.addr())))
        {
            if !self.docker.holds(network, a) {
                driver.release(self, network, a);
            }
        }
        tracing::info!(container, network, "endpoint disconnected");
        self.emit_ports("unpublish", network, container, &ep.ports);
        self.emit_endpoint("disconnect", &ep.record);
        let netns = self.containers.get(container).and_then(|c| c.netns.clone());
        self.forget_container_if_unused(container);
        Ok(Detached {
            tap,
            netns,
            ifname: ep.record.ifname,
        })
    }

    /// A container introduced by `network connect` goes when its last
    /// endpoint does; one made by `vswitch run` stays until `vswitch rm`.
    pub(super) fn forget_container_if_unused(&mut self, name: &str) {
        let used = self
            .networks
            .values()
            .any(|n| n.endpoints.contains_key(name))
            || self.connecting.contains_key(name);
        let Some(c) = self.containers.get(name) else {
            return;
        };
        if !used && !c.owns_netns && c.process.is_none() {
            let _ = self.store.delete_container(name);
            self.containers.remove(name);
            self.emit_container("remove", name, &[]);
        }
    }
}
