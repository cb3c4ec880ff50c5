//! Published ports (`-p`): validation, the host sockets, and their durable
//! record.
//!
//! The host sockets are bound here, in the controller, before anything else
//! of a connect is set up, so that a port already in use refuses the
//! connect with nothing half done; the bound sockets then go to the
//! datapath, which forwards through the network's NAT. The mappings of an
//! endpoint are a record of the state database (its `ports` table, keyed
//! like the endpoint and deleted with it), and are bound again at restart.

use std::collections::{BTreeMap, HashSet};
use std::io;
use std::net::{IpAddr, SocketAddr};

use switch::MacAddr;

use super::{internal, ApiError, Controller};
use crate::api::{PortBinding, PortMapping, PortProto, MAX_PORT_MAPPINGS};
use crate::daemon::datapath::{bind_published, Published, PublishedProto};

/// A published port whose host socket is bound, not yet forwarding.
pub(super) struct Bound {
    mapping: PortMapping,
    socket: crate::daemon::datapath::PublishedSocket,
}

impl Bound {
    /// The mapping, with the host port actually bound.
    pub(super) fn mapping(&self) -> PortMapping {
        self.mapping
    }
}

impl Controller {
    /// Checks `ports` for `network` and binds their host sockets. Nothing
    /// stays bound on error.
    pub(super) fn bind_ports(
        &self,
        network: &str,
        ports: &[PortMapping],
    ) -> Result<Vec<Bound>, ApiError> {
        if ports.is_empty() {
            return Ok(Vec::new());
        }
        let net = self.network(network)?;
        if !super::drivers::of(net.record.driver).switches() {
            return Err(ApiError::bad(format!(
                "network `{network}` is an {} network; ports can be published on bridge and overlay networks only",
                net.record.driver.as_str()
            )));
        }
        if ports.len() > MAX_PORT_MAPPINGS {
            return Err(ApiError::bad(format!(
                "{} ports asked for; at most {MAX_PORT_MAPPINGS} may be published per endpoint",
                ports.len()
            )));
        }
        let mut seen = HashSet::new();
        for p in ports {
            if p.container_port == 0 {
                return Err(ApiError::bad(
                    "container port 0 cannot be published; give ports 1-65535",
                ));
            }
            // Host port 0: the kernel picks a free one (Docker's `-p 80`).
            if self.config.rootless && p.host_port != 0 && p.host_port < 1024 {
                return Err(ApiError::bad(format!(
                    "port {}/{} is a privileged port and rootless vswitchd cannot bind it; pick a host port above 1023",
                    p.host_port,
                    p.proto.as_str()
                )));
            }
            if p.host_port != 0 && !seen.insert((p.host_ip, p.host_port, p.proto)) {
                return Err(ApiError::bad(format!(
                    "host port {}/{} is given twice",
                    p.host_port,
                    p.proto.as_str()
                )));
            }
        }
        let mut bound = Vec::with_capacity(ports.len());
        for p in ports {
            let proto = match p.proto {
                PortProto::Tcp => PublishedProto::Tcp,
                PortProto::Udp => PublishedProto::Udp,
            };
            match bind_published(p.host_ip, p.host_port, proto) {
                Ok(socket) => {
                    let mut mapping = *p;
                    // Record the port the kernel picked, so a restart binds
                    // the same one again.
                    mapping.host_port = socket
                        .local_port()
                        .map_err(|e| ApiError::internal(format!("reading a bound port: {e}")))?;
                    bound.push(Bound { mapping, socket })
                }
                Err(e) => {
                    // `bound` drops here: every socket so far is closed.
                    let on = p
                        .host_ip
                        .map(|ip| ip.to_string())
                        .unwrap_or_else(|| "0.0.0.0".into());
                    return Err(match e.kind() {
                        io::ErrorKind::AddrInUse => ApiError::conflict(format!(
                            "port {}/{} is already in use on {on}; pick another host port",
                            p.host_port,
                            p.proto.as_str()
                        )),
                        io::ErrorKind::AddrNotAvailable => ApiError::bad(format!(
                            "{on} is not an address of this host; publish on one of its addresses or leave the address out"
                        )),
                        io::ErrorKind::PermissionDenied => ApiError::bad(format!(
                            "binding port {}/{} on {on} is not permitted; pick a host port above 1023",
                            p.host_port,
                            p.proto.as_str()
                        )),
                        _ => ApiError::internal(format!(
                            "binding port {}/{} on {on}: {e}",
                            p.host_port,
                            p.proto.as_str()
                        )),
                    });
                }
            }
        }
        Ok(bound)
    }

    /// Hands bound sockets to the datapath for the endpoint of `container`
    /// on `network`.
    pub(super) fn start_forwarding(
        &self,
        network: &str,
        container: &str,
        bound: Vec<Bound>,
    ) -> Result<(), ApiError> {
        if bound.is_empty() {
            return Ok(());
        }
        let net = self.network(network)?;
        let ep = net
            .endpoints
            .get(container)
            .ok_or_else(|| ApiError::internal("endpoint vanished"))?;
        let id = net
            .id
            .ok_or_else(|| ApiError::internal("network has no datapath"))?;
        let addr: IpAddr = match (ep.record.ipv4, ep.record.ipv6) {
            (Some(a), _) => a.addr().into(),
            (None, Some(a)) => a.addr().into(),
            (None, None) => {
                return Err(ApiError::bad(format!(
                    "container `{container}` has no address on `{network}` to publish ports to"
                )))
            }
        };
        let mac = MacAddr(ep.record.mac);
        let published = bound
            .into_iter()
            .map(|b| Published {
                socket: b.socket,
                container: SocketAddr::new(addr, b.mapping.container_port),
                container_mac: mac,
            })
            .collect();
        self.datapath
            .publish(id, ep.port, published)
            .map_err(ApiError::from)
    }

    /// Makes `ports` the published ports of a connected endpoint (Docker's
    /// `ProgramExternalConnectivity`): those it had are withdrawn first.
    /// On error the endpoint publishes nothing.
    pub(super) fn replace_published(
        &mut self,
        network: &str,
        container: &str,
        ports: &[PortMapping],
    ) -> Result<(), ApiError> {
        self.unpublish_all(network, container)?;
        let bound = self.bind_ports(network, ports)?;
        let mappings: Vec<PortMapping> = bound.iter().map(|b| b.mapping()).collect();
        self.save_ports(container, network, &mappings)?;
        self.set_endpoint_ports(network, container, mappings.clone());
        if let Err(e) = self.start_forwarding(network, container, bound) {
            let _ = self.unpublish_all(network, container);
            return Err(e);
        }
        self.emit_ports("publish", network, container, &mappings);
        Ok(())
    }

    /// Withdraws every published port of a connected endpoint.
    pub(super) fn unpublish_all(&mut self, network: &str, container: &str) -> Result<(), ApiError> {
        let (port, had) = self
            .network(network)?
            .endpoints
            .get(container)
            .map(|e| (e.port, e.ports.clone()))
            .ok_or_else(|| {
                ApiError::not_found(format!(
                    "container `{container}` is not connected to network `{network}`"
                ))
            })?;
        self.unpublish(network, container, port);
        self.emit_ports("unpublish", network, container, &had);
        self.set_endpoint_ports(network, container, Vec::new());
        self.save_ports(container, network, &[])
    }

    fn set_endpoint_ports(&mut self, network: &str, container: &str, ports: Vec<PortMapping>) {
        if let Some(e) = self
            .networks
            .get_mut(network)
            .and_then(|n| n.endpoints.get_mut(container))
        {
            e.ports = ports;
        }
    }

    /// Stores the mappings of an endpoint (or removes the record when
    /// there are none).
    pub(super) fn save_ports(
        &self,
        container: &str,
        network: &str,
        ports: &[PortMapping],
    ) -> Result<(), ApiError> {
        self.store
            .put_ports(container, network, ports)
            .map_err(internal)
    }

    /// The stored mappings of an endpoint.
    pub(super) fn load_ports(&self, container: &str, network: &str) -> Vec<PortMapping> {
        self.store
            .load_ports(container, network)
            .unwrap_or_else(|e| {
                tracing::warn!(container, network, error = %e, "unreadable published ports");
                Vec::new()
            })
    }

    /// Stops forwarding an endpoint's published ports. Their record went
    /// with the endpoint's ([`Store::delete_endpoint`]).
    ///
    /// [`Store::delete_endpoint`]: crate::daemon::state::Store::delete_endpoint
    pub(super) fn unpublish(&self, network: &str, container: &str, port: switch::PortId) {
        if let Some(id) = self.networks.get(network).and_then(|n| n.id) {
            if let Err(e) = self.datapath.unpublish(id, port) {
                tracing::warn!(container, network, error = %e, "closing published ports");
            }
        }
    }

    /// Docker's `NetworkSettings.Ports` of a container.
    pub(super) fn port_bindings(&self, container: &str) -> BTreeMap<String, Vec<PortBinding>> {
        let mut out: BTreeMap<String, Vec<PortBinding>> = BTreeMap::new();
        for n in self.networks.values() {
            let Some(e) = n.endpoints.get(container) else {
                continue;
            };
            for p in &e.ports {
                let key = format!("{}/{}", p.container_port, p.proto.as_str());
                for ip in p.host_ips() {
                    out.entry(key.clone()).or_default().push(PortBinding {
                        host_ip: ip.to_string(),
                        host_port: p.host_port.to_string(),
                    });
                }
            }
        }
        out
    }
}
