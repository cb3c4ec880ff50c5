//! Start after a stop or a crash: every stored network, container and
//! endpoint made live again.

use super::*;

impl Controller {
    pub(super) fn restore(&mut self) -> anyhow::Result<()> {
        let snap = self.store.load()?;
        for c in snap.containers {
            self.containers.insert(c.name.clone(), c);
        }
        for rec in snap.networks {
            let name = rec.name.clone();
            if let Err(e) = self.install_network(rec) {
                tracing::error!(network = %name, error = %e, "cannot restore network");
            }
        }
        let overlays = self.overlay_names();
        for name in overlays {
            let me = self.config.node_name.clone();
            match self.make_allocator(&name, &me) {
                Ok(a) => self.networks.get_mut(&name).expect("listed").alloc = Some(a),
                Err(e) => {
                    tracing::error!(network = %name, error = %e, "cannot restore overlay IPAM")
                }
            }
        }
        self.load_docker()?;
        for ep in snap.endpoints {
            let key = ep.key();
            if let Err(e) = self.restore_endpoint(ep.clone()) {
                tracing::warn!(endpoint = %key, error = %e, "endpoint is gone; releasing it");
                let _ = self.store.delete_endpoint(&ep.container, &ep.network);
                self.forget_container_if_unused(&ep.container);
            }
        }
        self.settle_docker();
        self.load_cni()?;
        for n in self.networks.values() {
            n.publish_zone();
        }
        tracing::info!(
            networks = self.networks.len(),
            containers = self.containers.len(),
            "state restored"
        );
        Ok(())
    }

    pub(super) fn restore_endpoint(&mut self, rec: EndpointRecord) -> Result<(), ApiError> {
        let netns = self
            .containers
            .get(&rec.container)
            .and_then(|c| c.netns.clone())
            .ok_or_else(|| ApiError::internal("container has no namespace"))?;
        if !netns.exists() {
            return Err(ApiError::internal(format!(
                "namespace {} no longer exists",
                netns.display()
            )));
        }
        let net = self
            .networks
            .get(&rec.network)
            .ok_or_else(|| ApiError::internal("network is gone"))?;
        let id = net
            .id
            .ok_or_else(|| ApiError::internal("network has no datapath"))?;
        let queues = self.datapath.queues();
        let mut rec = rec;
        let tap = match netns::reopen_tap_queues(&netns, &rec.ifname, queues) {
            Ok(t) => t,
            Err(e) => match netns::link_by_mac(&netns, MacAddr(rec.mac)) {
                // A TAP a container runtime renamed when it moved it in
                // (Docker's ethN): found by its MAC.
                Ok(Some(name)) if name != rec.ifname => {
                    let t = netns::reopen_tap_queues(&netns, &name, queues)
                        .map_err(|e| ApiError::internal(e.to_string()))?;
                    rec.ifname = name;
                    if let Err(e) = self.store.put_endpoint(&rec) {
                        tracing::warn!(error = %e, "storing the interface's new name");
                    }
                    t
                }
                _ if self.docker.is_endpoint_tap(&rec.ifname) => {
                    // Docker configured it; vswitch cannot make it again.
                    return Err(ApiError::internal(e.to_string()));
                }
                _ => netns::attach_tap_queues(&netns, &iface_config(net, &rec), queues)
                    .map_err(|e| ApiError::internal(e.to_string()))?,
            },
        };
        if let Some(a) = rec.ipv4 {
            self.ipam
                .restore_address(rec.network.as_str(), IpAddr::V4(a.addr()))
                .map_err(ipam_err)?;
        }
        if let Some(a) = rec.ipv6 {
            self.ipam
                .restore_address(rec.network.as_str(), IpAddr::V6(a.addr()))
                .map_err(ipam_err)?;
        }
        if let Some(alloc) = self
            .networks
            .get_mut(&rec.network)
            .and_then(|n| n.alloc.as_mut())
        {
            for ip in rec.addrs() {
                if let Err(e) = alloc.restore_address(ip) {
                    tracing::warn!(%ip, error = %e, "overlay address no longer owned here");
                }
            }
        }
        let port = self.alloc_port();
        self.datapath
            .add_port(port, id, tap, security(&rec))
            .map_err(ApiError::from)?;
        let (container, network) = (rec.container.clone(), rec.network.clone());
        let ports = self.load_ports(&container, &network);
        let net = self.networks.get_mut(&rec.network).expect("checked above");
        net.endpoints.insert(
            rec.container.clone(),
            Endpoint {
                record: rec,
                port,
                ports: ports.clone(),
            },
        );
        // A port taken meanwhile is reported, not fatal: the endpoint
        // itself is back.
        match self.bind_ports(&network, &ports) {
            Ok(bound) => {
                if let Err(e) = self.start_forwarding(&network, &container, bound) {
                    tracing::error!(%container, %network, error = %e, "published ports not restored");
                }
            }
            Err(e) => {
                tracing::error!(%container, %network, error = %e, "published ports not restored")
            }
        }
        Ok(())
    }
}
