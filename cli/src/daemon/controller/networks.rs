//! Networks: create (through the network's driver), install into the
//! datapath, inspect, list, remove.

use super::overlay_nets::static_vtep;
use super::*;

impl Controller {
    pub(super) fn network_list(&self) -> Vec<api::NetworkSummary> {
        self.networks
            .values()
            .map(|n| api::NetworkSummary {
                id: n.record.id.clone(),
                name: n.record.name.clone(),
                driver: n.record.driver,
                scope: n.scope().into(),
            })
            .collect()
    }

    pub(super) fn network(&self, name: &str) -> Result<&Network, ApiError> {
        self.networks.get(name).ok_or_else(|| {
            ApiError::not_found(format!(
                "network `{name}` not found; `vswitch network ls` lists the networks"
            ))
        })
    }

    pub(super) fn network_inspect(&self, name: &str) -> Result<api::NetworkInspect, ApiError> {
        let n = self.network(name)?;
        let containers = n
            .endpoints
            .values()
            .map(|e| {
                let id = self
                    .containers
                    .get(&e.record.container)
                    .map(|c| c.id.clone())
                    .unwrap_or_default();
                (
                    id,
                    api::NetworkContainer {
                        name: e.record.container.clone(),
                        endpoint_id: e.record.id.clone(),
                        mac: MacAddr(e.record.mac).to_string(),
                        ipv4: e.record.ipv4.map(|a| a.to_string()).unwrap_or_default(),
                        ipv6: e.record.ipv6.map(|a| a.to_string()).unwrap_or_default(),
                        host: self.config.node_name.clone(),
                    },
                )
            })
            .chain(n.remotes.iter().map(|((host, key), r)| {
                let prefix4 = n.subnet4().map(|s| s.prefix_len()).unwrap_or(32);
                let prefix6 = n.subnet6().map(|s| s.prefix_len()).unwrap_or(128);
                (
                    format!("ep-{key}"),
                    api::NetworkContainer {
                        name: r.container.clone(),
                        endpoint_id: key.clone(),
                        mac: MacAddr(r.mac).to_string(),
                        ipv4: r.ipv4.map(|a| format!("{a}/{prefix4}")).unwrap_or_default(),
                        ipv6: r.ipv6.map(|a| format!("{a}/{prefix6}")).unwrap_or_default(),
                        host: host.clone(),
                    },
                )
            }))
            .collect();
        let mut out = api::NetworkInspect {
            name: n.record.name.clone(),
            id: n.record.id.clone(),
            created: n.record.created.clone(),
            scope: n.scope().into(),
            driver: n.record.driver,
            ipv6: n.record.ipv6,
            internal: n.record.internal,
            ipam: api::IpamInspect {
                driver: "default".into(),
                config: n.record.subnets.clone(),
            },
            options: n.record.options.clone(),
            labels: n.record.labels.clone(),
            containers,
            mtu: n.record.mtu,
            vni: n.record.vni,
            peers: None,
            vteps: None,
            policies: self.policies_of_network(&n.record.name),
        };
        drivers::of(n.record.driver).inspect(self, n, &mut out);
        Ok(out)
    }

    pub(super) fn create_network(&mut self, req: api::NetworkCreate) -> Result<(), ApiError> {
        if self.networks.contains_key(&req.name) {
            return Err(ApiError::conflict(format!(
                "network `{}` already exists; pick another name or remove it with `vswitch network rm {}`",
                req.name, req.name
            )));
        }
        for key in req.options.keys() {
            if !matches!(key.as_str(), "vni" | "encrypted" | "transport" | "isolate") {
                return Err(ApiError::bad(format!(
                    "unknown network option `{key}`; known options: isolate=true (containers reach each other only where a policy allows), vni=N (overlays, to meet a kernel VTEP), encrypted and transport=udp|quic (overlays)"
                )));
            }
        }
        // Malformed values are refused whatever the driver.
        is_encrypted(&req.options)?;
        super::policies::is_isolated(&req.options)?;
        let driver = drivers::of(req.driver);
        driver.validate(self, &req)?;
        driver.create(self, req)
    }

    /// Makes a network of a local driver from a validated request and its
    /// resolved subnets: live, then durable.
    pub(super) fn create_local(
        &mut self,
        req: api::NetworkCreate,
        subnets: Vec<SubnetSpec>,
    ) -> Result<(), ApiError> {
        let record = NetworkRecord {
            name: req.name.clone(),
            id: random_id(),
            created: now_rfc3339(),
            driver: req.driver,
            ipv6: req.ipv6,
            internal: req.internal,
            mtu: req.mtu.unwrap_or(DEFAULT_MTU),
            subnets,
            options: req.options,
            labels: req.labels,
            vni: None,
            static_vteps: Vec::new(),
        };
        if let Err(e) = self.install_network(record.clone()) {
            let _ = self.ipam.remove_network(record.name.as_str());
            return Err(e);
        }
        if let Err(e) = self.store.put_network(&record) {
            self.uninstall_network(&record.name);
            return Err(internal(e));
        }
        tracing::info!(network = %record.name, driver = record.driver.as_str(), "network created");
        self.emit_network(self.network_event("create", &record.name, None));
        Ok(())
    }

    /// Resolves the requested subnets through IPAM.
    pub(super) fn allocate_subnets(
        &mut self,
        req: &api::NetworkCreate,
    ) -> Result<Vec<SubnetSpec>, ApiError> {
        let mut requests: Vec<ipam::SubnetRequest> = Vec::new();
        for s in &req.subnets {
            if let Some(net) = s.subnet {
                let mut r = ipam::SubnetRequest::fixed(net);
                if let Some(g) = s.gateway {
                    r = r.with_gateway(g);
                }
                if let Some(range) = s.ip_range {
                    r = r.with_ip_range(range);
                }
                requests.push(r);
            }
        }
        for s in &req.subnets {
            if s.subnet.is_none() && (s.gateway.is_some() || s.ip_range.is_some()) {
                return Err(ApiError::bad(
                    "--gateway and --ip-range need a --subnet to belong to",
                ));
            }
        }
        let has_v4 = requests
            .iter()
            .any(|r| matches!(r.subnet, Some(IpNet::V4(_))));
        let has_v6 = requests
            .iter()
            .any(|r| matches!(r.subnet, Some(IpNet::V6(_))));
        if has_v6 && !req.ipv6 {
            return Err(ApiError::bad(
                "an IPv6 --subnet needs --ipv6 to turn IPv6 on for the network",
            ));
        }
        if !has_v4 {
            requests.push(ipam::SubnetRequest::auto(ipam::Family::V4));
        }
        if req.ipv6 && !has_v6 {
            requests.push(ipam::SubnetRequest::auto(ipam::Family::V6));
        }
        // Connected and specific routes only: a default route covers
        // everything and would leave no candidate.
        let avoid: Vec<IpNet> = netns::host_routes()
            .unwrap_or_else(|e| {
                tracing::warn!(error = %e, "cannot read the host's routes");
                Vec::new()
            })
            .into_iter()
            .filter(|r| r.prefix_len() > 0)
            .collect();
        let configs = self
            .ipam
            .add_network(req.name.clone(), &requests, &avoid)
            .map_err(ipam_err)?;
        Ok(configs
            .into_iter()
            .map(|c| SubnetSpec {
                subnet: Some(c.subnet),
                gateway: Some(c.gateway),
                ip_range: c.ip_range,
            })
            .collect())
    }

    /// Makes a network live: IPAM (when restoring), bridge domain, gateway.
    pub(super) fn install_network(&mut self, record: NetworkRecord) -> Result<(), ApiError> {
        if drivers::of(record.driver).switches()
            && !self.ipam.contains_network(record.name.as_str())
        {
            self.ipam
                .restore_network(record.name.clone(), &record.subnet_configs())
                .map_err(ipam_err)?;
        }
        let gateway_mac = super::trace::gateway_mac(&record);
        let zone = Arc::new(ArcSwap::from_pointee(Zone::default()));
        let mut net = Network {
            record,
            id: None,
            zone,
            endpoints: BTreeMap::new(),
            remotes: BTreeMap::new(),
            vteps: BTreeMap::new(),
            static_vteps: BTreeMap::new(),
            alloc: None,
            extra_dns: Vec::new(),
        };
        if net.is_switched() {
            let id = NetworkId(self.next_network);
            self.next_network += 1;
            let gw_port = self.alloc_port();
            let upstreams = if net.record.internal {
                Vec::new()
            } else {
                self.config.upstreams.clone()
            };
            let prefix4 = net.subnet4().map(|n| n.prefix_len());
            let prefix6 = net.subnet6().map(|n| n.prefix_len());
            // Every switched network gets a NAT for published ports and
            // egress (no egress on internal ones). On an overlay each host
            // has its own: a container's egress and its published ports go
            // through the host it runs on, as with Docker's gwbridge.
            let nat = net.is_switched().then(|| NatConfig {
                gateway_mac,
                ipv4: net.gateway4().zip(prefix4),
                ipv6: net.gateway6().zip(prefix6),
                mtu: net.record.mtu as usize,
                egress: !net.record.internal,
                limits: NatLimits::default(),
                random_seed: random_u64(),
                shard: switch::nat::Shard::WHOLE,
            });
            let config = GatewayConfig {
                mac: gateway_mac,
                ipv4: net.gateway4().zip(prefix4),
                ipv6: net.gateway6().zip(prefix6),
                mtu: net.record.mtu as usize,
                zone: net.zone.clone(),
                upstreams,
                upstream_timeout: UPSTREAM_TIMEOUT,
                random_seed: random_u64(),
            };
            self.datapath
                .add_network(id, Some((gw_port, config)), nat)
                .map_err(ApiError::from)?;
            net.id = Some(id);
            if let Some(vni) = net.record.vni.and_then(overlay::Vni::new) {
                self.datapath
                    .set_vni(id, Some(vni))
                    .map_err(ApiError::from)?;
            }
            for addr in net.record.static_vteps.clone() {
                let port = self.alloc_port();
                self.datapath
                    .add_vtep(port, static_vtep(id, addr))
                    .map_err(ApiError::from)?;
                net.static_vteps.insert(addr, port);
            }
        }
        self.networks.insert(net.record.name.clone(), net);
        Ok(())
    }

    pub(super) fn uninstall_network(&mut self, name: &str) {
        if let Some(n) = self.networks.remove(name) {
            if let Some(id) = n.id {
                if let Err(e) = self.datapath.remove_network(id) {
                    tracing::warn!(network = %name, error = %e, "removing bridge domain");
                }
            }
        }
        let _ = self.ipam.remove_network(name);
    }

    pub(super) fn remove_network(&mut self, name: &str) -> Result<(), ApiError> {
        let n = self.network(name)?;
        if matches!(name, "host" | "none") {
            return Err(ApiError::bad(format!(
                "`{name}` is a predefined network and cannot be removed"
            )));
        }
        if !n.endpoints.is_empty() {
            let names: Vec<&str> = n.endpoints.keys().map(String::as_str).collect();
            return Err(ApiError::conflict(format!(
                "network `{name}` has active endpoints ({}); disconnect them first with `vswitch network disconnect {name} CONTAINER`",
                names.join(", ")
            )));
        }
        if self.connecting.values().any(|n| n == name) {
            return Err(ApiError::conflict(format!(
                "a container is being connected to network `{name}`; try again when that is done"
            )));
        }
        drivers::of(n.record.driver).remove(self, name)
    }

    /// `vswitch network prune`, as `docker network prune`: removes every
    /// network no container uses: no endpoint here, on an overlay none on
    /// another host either, no connect in flight, not named by an exited
    /// container (which was on it), not predefined and not a Docker
    /// network's (`docker network rm` removes those). Returns the names
    /// removed; a network that cannot be removed is logged and left.
    pub(super) fn prune_networks(&mut self) -> api::NetworksPruned {
        let named: std::collections::BTreeSet<&str> = self
            .containers
            .values()
            .filter_map(|c| match &c.process.as_ref()?.state {
                super::super::state::ProcessState::Exited { networks, .. } => Some(networks),
                _ => None,
            })
            .flatten()
            .map(String::as_str)
            .collect();
        let unused: Vec<String> = self
            .networks
            .iter()
            .filter(|(name, n)| {
                !matches!(name.as_str(), "host" | "none")
                    && n.endpoints.is_empty()
                    && n.remotes.is_empty()
                    && !self.connecting.values().any(|c| c == *name)
                    && !named.contains(name.as_str())
                    && self.docker.network_on(name).is_none()
            })
            .map(|(name, _)| name.clone())
            .collect();
        let mut deleted = Vec::new();
        for name in unused {
            match self.remove_network(&name) {
                Ok(()) => deleted.push(name),
                Err(e) => tracing::warn!(network = %name, error = %e, "prune: not removed"),
            }
        }
        api::NetworksPruned { deleted }
    }

    /// Removes a network of a local driver.
    pub(super) fn remove_local(&mut self, name: &str) -> Result<(), ApiError> {
        self.store.delete_network(name).map_err(internal)?;
        let event = self.network_event("remove", name, None);
        self.uninstall_network(name);
        tracing::info!(network = %name, "network removed");
        self.emit_network(event);
        Ok(())
    }
}
