//! Endpoints: `network connect` and `disconnect`.

use super::*;

impl Controller {
    pub(super) fn connect(&mut self, network: &str, req: api::Connect) -> Result<(), ApiError> {
        let net = self.network(network)?;
        match net.record.driver {
            Driver::Bridge | Driver::Overlay => {}
            Driver::Host | Driver::None => {
                return Err(ApiError::bad(format!(
                    "network `{network}` uses the {} driver, which has no endpoints to connect; use `vswitch run --network {network}`",
                    net.record.driver.as_str()
                )))
            }
        }
        if net.endpoints.contains_key(&req.container) {
            return Err(ApiError::conflict(format!(
                "container `{}` is already connected to network `{network}`",
                req.container
            )));
        }
        // The container: known, or introduced by this connect with --netns.
        let mut created_container = false;
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
                self.create_container(api::ContainerCreate {
                    name: req.container.clone(),
                    netns: Some(p.clone()),
                    owns_netns: false,
                    pid: None,
                })?;
                created_container = true;
            }
        }
        let result = self.connect_endpoint(network, &req);
        if result.is_err() && created_container {
            self.forget_container_if_unused(&req.container);
        }
        result
    }

    pub(super) fn connect_endpoint(
        &mut self,
        network: &str,
        req: &api::Connect,
    ) -> Result<(), ApiError> {
        let container = self.containers[&req.container].clone();
        let netns = container.netns.clone().expect("checked by connect");
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
        let (subnet4, subnet6, gw4, gw6, is_internal) = (
            net.subnet4(),
            net.subnet6(),
            net.gateway4(),
            net.gateway6(),
            net.record.internal,
        );

        // Addresses first: they are the easiest to give back.
        let is_overlay = net.record.driver == Driver::Overlay;
        let mut allocated: Vec<IpAddr> = Vec::new();
        let ipv4 = match subnet4 {
            Some(n) => {
                let a = self.allocate_addr(
                    network,
                    is_overlay,
                    ipam::Family::V4,
                    req.ip.map(IpAddr::V4),
                )?;
                allocated.push(a);
                match a {
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
                let a = self.allocate_addr(
                    network,
                    is_overlay,
                    ipam::Family::V6,
                    req.ip6.map(IpAddr::V6),
                );
                match a {
                    Ok(a) => {
                        allocated.push(a);
                        match a {
                            IpAddr::V6(a) => {
                                Some(Ipv6Net::new(a, n.prefix_len()).expect("prefix from a subnet"))
                            }
                            IpAddr::V4(_) => None,
                        }
                    }
                    Err(e) => {
                        self.release_addrs(network, is_overlay, &allocated);
                        return Err(e);
                    }
                }
            }
            None => None,
        };
        let mac = mac.unwrap_or_else(|| match ipv4 {
            Some(a) => {
                let o = a.addr().octets();
                MacAddr([0x02, 0x42, o[0], o[1], o[2], o[3]])
            }
            None => MacAddr::local_from_seed(format!("{}/{network}", container.id).as_bytes()),
        });
        let ifname = match netns::next_ifname(&netns) {
            Ok(n) => n,
            Err(e) => {
                self.release_addrs(network, is_overlay, &allocated);
                return Err(ApiError::bad(e.to_string()));
            }
        };
        let default_route = first && !is_internal;
        let rec = EndpointRecord {
            container: req.container.clone(),
            network: network.to_string(),
            id: random_id(),
            ifname,
            mac: mac.0,
            ipv4,
            ipv6,
            gateway4: if default_route { gw4 } else { None },
            gateway6: if default_route { gw6 } else { None },
            aliases: req.aliases.clone(),
        };
        let net = &self.networks[network];
        let tap = match netns::attach_tap_queues(
            &netns,
            &iface_config(net, &rec),
            self.datapath.queues(),
        ) {
            Ok(t) => t,
            Err(e) => {
                self.release_addrs(network, is_overlay, &allocated);
                let _ = netns::remove_tap(&netns, &rec.ifname);
                return Err(ApiError::bad(e.to_string()));
            }
        };
        let id = net.id.expect("bridge networks have a datapath");
        let port = self.alloc_port();
        if let Err(e) = self.datapath.add_port(port, id, tap, security(&rec)) {
            self.release_addrs(network, is_overlay, &allocated);
            let _ = netns::remove_tap(&netns, &rec.ifname);
            return Err(e.into());
        }
        if let Err(e) = self.store.put_endpoint(&rec) {
            self.teardown_port(port, &netns, &rec.ifname);
            self.release_addrs(network, is_overlay, &allocated);
            return Err(internal(e));
        }
        tracing::info!(container = %rec.container, network, ifname = %rec.ifname,
            ipv4 = ?rec.ipv4, ipv6 = ?rec.ipv6, "endpoint connected");
        let net = self.networks.get_mut(network).expect("exists");
        let overlay = net.record.driver == Driver::Overlay;
        net.endpoints.insert(
            rec.container.clone(),
            Endpoint {
                record: rec,
                port,
                ports: mappings.clone(),
            },
        );
        net.publish_zone();
        if overlay {
            self.publish_local_endpoint(network, &req.container);
        }
        let published = self
            .save_ports(&req.container, network, &mappings)
            .and_then(|()| self.start_forwarding(network, &req.container, bound));
        if let Err(e) = published {
            if let Err(undo) = self.disconnect(network, &req.container) {
                tracing::warn!(error = %undo, "undoing a failed connect");
            }
            return Err(e);
        }
        Ok(())
    }

    /// An address for an endpoint: from this host's IPAM, or for overlays
    /// from the ranges this host owns in the cluster.
    pub(super) fn allocate_addr(
        &mut self,
        network: &str,
        overlay: bool,
        family: ipam::Family,
        wanted: Option<IpAddr>,
    ) -> Result<IpAddr, ApiError> {
        if overlay {
            return self.overlay_allocate(network, family, wanted);
        }
        match wanted {
            Some(ip) => self.ipam.allocate_static(network, ip),
            None => self.ipam.allocate(network, family),
        }
        .map_err(ipam_err)
    }

    pub(super) fn release_addrs(&mut self, network: &str, overlay: bool, addrs: &[IpAddr]) {
        for a in addrs {
            if overlay {
                self.overlay_release(network, *a);
            } else if let Err(e) = self.ipam.release(network, *a) {
                tracing::warn!(%a, error = %e, "releasing address");
            }
        }
    }

    /// Detaches a port from the datapath and deletes its TAP.
    pub(super) fn teardown_port(&mut self, port: PortId, netns: &Path, ifname: &str) {
        match self.datapath.remove_port(port) {
            Ok(Some(tap)) => {
                let _ = tap.set_persist(false);
                drop(tap);
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "detaching port"),
        }
        if let Err(e) = netns::remove_tap(netns, ifname) {
            tracing::warn!(ifname, error = %e, "removing TAP");
        }
    }

    pub(super) fn disconnect(&mut self, network: &str, container: &str) -> Result<(), ApiError> {
        let net = self.network(network)?;
        if !net.endpoints.contains_key(container) {
            return Err(ApiError::not_found(format!(
                "container `{container}` is not connected to network `{network}`"
            )));
        }
        self.store
            .delete_endpoint(container, network)
            .map_err(internal)?;
        let net = self.networks.get_mut(network).expect("exists");
        let ep = net.endpoints.remove(container).expect("checked");
        net.publish_zone();
        if net.record.driver == Driver::Overlay {
            self.withdraw_local_endpoint(&ep.record.id);
        }
        self.unpublish(network, container, ep.port);
        let netns = self.containers.get(container).and_then(|c| c.netns.clone());
        if let Some(netns) = netns {
            self.teardown_port(ep.port, &netns, &ep.record.ifname);
        } else {
            let _ = self.datapath.remove_port(ep.port);
        }
        let is_overlay = self
            .networks
            .get(network)
            .is_some_and(|n| n.record.driver == Driver::Overlay);
        let addrs: Vec<IpAddr> = ep
            .record
            .ipv4
            .map(|n| IpAddr::V4(n.addr()))
            .into_iter()
            .chain(ep.record.ipv6.map(|n| IpAddr::V6(n.addr())))
            .collect();
        self.release_addrs(network, is_overlay, &addrs);
        tracing::info!(container, network, "endpoint disconnected");
        self.forget_container_if_unused(container);
        Ok(())
    }

    /// A container introduced by `network connect` goes when its last
    /// endpoint does; one made by `vswitch run` stays until `vswitch rm`.
    pub(super) fn forget_container_if_unused(&mut self, name: &str) {
        let used = self
            .networks
            .values()
            .any(|n| n.endpoints.contains_key(name));
        let Some(c) = self.containers.get(name) else {
            return;
        };
        if !used && !c.owns_netns && c.pid.is_none() {
            let _ = self.store.delete_container(name);
            self.containers.remove(name);
        }
    }
}
