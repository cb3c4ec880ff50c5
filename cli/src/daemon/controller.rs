//! The controller: the daemon's control plane. It owns the durable state,
//! IPAM and the network/endpoint tables, sets up TAPs in namespaces, and
//! tells the datapath thread what to switch.
//!
//! Every change is made in an order that can be undone: when a step fails,
//! the steps before it are rolled back, so a refused request leaves nothing
//! half set up.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde_json::Value;
use switch::bridge::{BridgeConfig, PortSecurity};
use switch::dns::{DnsEntry, Zone};
use switch::gateway::GatewayConfig;
use switch::nat::{NatConfig, NatLimits};
use switch::{MacAddr, NetworkId, PortId};

use super::cluster::Cluster;
use super::datapath::DatapathHandle;
use super::quic::{self, QuicTransport};
use super::state::{ContainerRecord, EndpointRecord, NetworkRecord, Store};
use super::ApiError;
use crate::api::{self, Driver, Request, SubnetSpec};
use crate::netns::{self, IfaceConfig};
use crate::sandbox;

mod cluster_ipam;
mod overlay_nets;
mod ports;

/// What the controller needs to know at start.
#[derive(Debug, Clone)]
pub struct ControllerConfig {
    pub state_dir: PathBuf,
    pub node_name: String,
    /// Upstream resolvers for names that are not containers'.
    pub upstreams: Vec<SocketAddr>,
    pub rootless: bool,
    /// Datapath worker threads (TAP queues per port).
    pub workers: usize,
    /// How long a datapath worker polls after its last event before it
    /// sleeps.
    pub busy_poll: Duration,
    /// Gossip and tunnels, when the daemon has a cluster key.
    pub cluster: Option<ClusterSettings>,
    /// How long a dead host's overlay address ranges wait before another
    /// host takes them over.
    pub ipam_quarantine: Duration,
}

/// How this host takes part in a cluster.
#[derive(Debug, Clone)]
pub struct ClusterSettings {
    /// Gossip listen address.
    pub bind: SocketAddr,
    /// The address other hosts reach this one at.
    pub advertise: IpAddr,
    /// UDP port of the VXLAN tunnel.
    pub tunnel_port: u16,
    /// UDP port of the QUIC endpoint (encrypted overlays).
    pub quic_port: u16,
    /// Test-only (`--test-quic-impostor`): present a freshly made
    /// certificate in QUIC handshakes while gossip still publishes the
    /// stored one's fingerprint, as a host would that is not who it claims
    /// to be; tests check that such a host exchanges no frame.
    pub quic_impostor: bool,
    pub key: overlay::ClusterKey,
}

/// Default MTU of bridge networks, as Docker's.
const DEFAULT_MTU: u32 = 1500;
/// How long an upstream resolver gets before the next one is asked.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug)]
struct Endpoint {
    record: EndpointRecord,
    port: PortId,
    /// Published ports (`-p`).
    ports: Vec<api::PortMapping>,
}

#[derive(Debug)]
struct Network {
    record: NetworkRecord,
    /// The bridge domain, for networks that switch frames.
    id: Option<NetworkId>,
    zone: Arc<ArcSwap<Zone>>,
    /// Keyed by container name.
    endpoints: BTreeMap<String, Endpoint>,
    /// Overlays: endpoints on other hosts, keyed by (host, key).
    remotes: BTreeMap<(String, String), overlay::EndpointRecord>,
    /// Overlays: the tunnel port to each host with endpoints here, and
    /// where it points.
    vteps: BTreeMap<String, (PortId, SocketAddr)>,
    /// Overlays: tunnel ports of admitted foreign VTEPs.
    static_vteps: BTreeMap<SocketAddr, PortId>,
    /// Overlays: the cluster-wide allocator (this host's owned ranges).
    alloc: Option<ipam::cluster::ClusterAllocator>,
}

impl Network {
    fn gateway4(&self) -> Option<Ipv4Addr> {
        self.record.subnets.iter().find_map(|s| match s.gateway {
            Some(IpAddr::V4(a)) => Some(a),
            _ => None,
        })
    }

    fn gateway6(&self) -> Option<Ipv6Addr> {
        self.record.subnets.iter().find_map(|s| match s.gateway {
            Some(IpAddr::V6(a)) => Some(a),
            _ => None,
        })
    }

    fn subnet4(&self) -> Option<Ipv4Net> {
        self.record.subnets.iter().find_map(|s| match s.subnet {
            Some(IpNet::V4(n)) => Some(n),
            _ => None,
        })
    }

    fn subnet6(&self) -> Option<Ipv6Net> {
        self.record.subnets.iter().find_map(|s| match s.subnet {
            Some(IpNet::V6(n)) => Some(n),
            _ => None,
        })
    }

    fn is_switched(&self) -> bool {
        matches!(self.record.driver, Driver::Bridge | Driver::Overlay)
    }

    fn scope(&self) -> &'static str {
        match self.record.driver {
            Driver::Overlay => "global",
            _ => "local",
        }
    }

    /// Publishes this network's DNS records (local and, for overlays,
    /// remote endpoints) to the gateway.
    fn publish_zone(&self) {
        let local = self.endpoints.values().map(|e| DnsEntry {
            name: e.record.container.clone(),
            aliases: e.record.aliases.clone(),
            addrs: e
                .record
                .ipv4
                .map(|n| IpAddr::V4(n.addr()))
                .into_iter()
                .chain(e.record.ipv6.map(|n| IpAddr::V6(n.addr())))
                .collect(),
        });
        let remote = self.remotes.values().map(|r| DnsEntry {
            name: r.container.clone(),
            aliases: r.aliases.clone(),
            addrs: r
                .ipv4
                .map(IpAddr::V4)
                .into_iter()
                .chain(r.ipv6.map(IpAddr::V6))
                .collect(),
        });
        self.zone
            .store(Arc::new(Zone::new(local.chain(remote).collect::<Vec<_>>())));
    }
}

/// The control plane.
#[derive(Debug)]
pub struct Controller {
    config: ControllerConfig,
    store: Store,
    ipam: ipam::Ipam<String>,
    datapath: DatapathHandle,
    cluster: Option<Cluster>,
    /// The QUIC endpoint of encrypted overlays (with a cluster).
    quic: Option<QuicTransport>,
    /// Members declared dead, and since when (for IPAM reclaims).
    dead_since: BTreeMap<String, std::time::Instant>,
    /// Gossip events, until the daemon takes them to feed them back.
    events: Option<std::sync::mpsc::Receiver<overlay::GossipEvent>>,
    networks: BTreeMap<String, Network>,
    containers: BTreeMap<String, ContainerRecord>,
    next_port: u32,
    next_network: u32,
    bad_requests: u64,
}

fn random_u64() -> u64 {
    let id = random_id();
    u64::from_str_radix(&id[..16], 16).unwrap_or(0x5eed)
}

fn random_id() -> String {
    let mut b = [0u8; 32];
    if std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b))
        .is_err()
    {
        // Fall back on time and pid: ids need to be unique, not secret.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        b[..16].copy_from_slice(&t.to_le_bytes());
        b[16..20].copy_from_slice(&std::process::id().to_le_bytes());
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// RFC 3339 in UTC, without a date library.
fn now_rfc3339() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs() as i64;
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn to_value<T: serde::Serialize>(v: T) -> Result<Value, ApiError> {
    serde_json::to_value(v).map_err(|e| ApiError::internal(e.to_string()))
}

fn ipam_err(e: ipam::Error) -> ApiError {
    ApiError::bad(e.to_string())
}

impl Controller {
    /// Opens the state, restores networks and endpoints, starts the datapath.
    pub fn start(config: ControllerConfig) -> anyhow::Result<Controller> {
        let store = Store::open(&config.state_dir)?;
        let (tunnel, gossip_socket) = match &config.cluster {
            Some(cs) => {
                let tunnel_bind = SocketAddr::new(cs.bind.ip(), cs.tunnel_port);
                let tunnel = std::net::UdpSocket::bind(tunnel_bind).map_err(|e| {
                    anyhow::anyhow!(
                        "binding the tunnel port {tunnel_bind}: {e}; pick another --tunnel-port"
                    )
                })?;
                let gossip = std::net::UdpSocket::bind(cs.bind).map_err(|e| {
                    anyhow::anyhow!(
                        "binding the gossip address {}: {e}; pick another --bind",
                        cs.bind
                    )
                })?;
                (Some(tunnel), Some(gossip))
            }
            None => (None, None),
        };
        let (quic, published) = match &config.cluster {
            Some(cs) => {
                let (t, fingerprint) = start_quic(cs, &config.state_dir, &config.node_name)?;
                (Some(t), Some(fingerprint))
            }
            None => (None, None),
        };
        let datapath = DatapathHandle::start(
            BridgeConfig::default(),
            tunnel,
            quic.as_ref().map(QuicTransport::handle),
            config.workers,
            config.busy_poll,
        )?;
        let (cluster, events) = match (&config.cluster, gossip_socket, published) {
            (Some(cs), Some(sock), Some(fingerprint)) => {
                let (c, rx) =
                    overlay_nets::start_cluster(cs, &config.node_name, sock, fingerprint)?;
                (Some(c), Some(rx))
            }
            _ => (None, None),
        };
        let mut c = Controller {
            config,
            store,
            ipam: ipam::Ipam::new(),
            datapath,
            cluster,
            quic,
            dead_since: BTreeMap::new(),
            events,
            networks: BTreeMap::new(),
            containers: BTreeMap::new(),
            next_port: 1,
            next_network: 1,
            bad_requests: 0,
        };
        c.restore()?;
        c.rejoin_cluster();
        for (name, driver) in [("host", Driver::Host), ("none", Driver::None)] {
            if !c.networks.contains_key(name) {
                c.create_network(api::NetworkCreate {
                    name: name.into(),
                    driver,
                    ..Default::default()
                })
                .map_err(|e| anyhow::anyhow!("creating the predefined network `{name}`: {e}"))?;
            }
        }
        Ok(c)
    }

    /// Counts a request refused before decoding.
    pub fn count_bad_request(&mut self) {
        self.bad_requests += 1;
    }

    /// Stops the datapath. TAPs stay in their namespaces (they are
    /// persistent), so a restarted daemon finds them again.
    pub fn shutdown(&mut self) {
        if let Some(mut c) = self.cluster.take() {
            c.shutdown();
        }
        if let Some(mut q) = self.quic.take() {
            q.shutdown();
        }
        self.datapath.shutdown();
    }

    /// The gossip events, for the daemon to feed back through
    /// [`Controller::handle_cluster_event`].
    pub fn take_events(&mut self) -> Option<std::sync::mpsc::Receiver<overlay::GossipEvent>> {
        self.events.take()
    }

    fn restore(&mut self) -> anyhow::Result<()> {
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
        for ep in snap.endpoints {
            let key = ep.key();
            if let Err(e) = self.restore_endpoint(ep.clone()) {
                tracing::warn!(endpoint = %key, error = %e, "endpoint is gone; releasing it");
                let _ = self.store.delete_endpoint(&ep.container, &ep.network);
                self.forget_container_if_unused(&ep.container);
            }
        }
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

    fn restore_endpoint(&mut self, rec: EndpointRecord) -> Result<(), ApiError> {
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
        let tap = match netns::reopen_tap_queues(&netns, &rec.ifname, queues) {
            Ok(t) => t,
            Err(_) => netns::attach_tap_queues(&netns, &iface_config(net, &rec), queues)
                .map_err(|e| ApiError::internal(e.to_string()))?,
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
            for ip in rec
                .ipv4
                .map(|a| IpAddr::V4(a.addr()))
                .into_iter()
                .chain(rec.ipv6.map(|a| IpAddr::V6(a.addr())))
            {
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

    fn alloc_port(&mut self) -> PortId {
        let p = PortId(self.next_port);
        self.next_port += 1;
        p
    }

    /// Executes one API request.
    pub fn handle(&mut self, req: Request) -> Result<Value, ApiError> {
        match req {
            Request::Ping => to_value("OK"),
            Request::NetworkList => to_value(self.network_list()),
            Request::NetworkCreate(c) => {
                let name = c.name.clone();
                self.create_network(c)?;
                to_value(self.network_inspect(&name)?)
            }
            Request::NetworkInspect(name) => to_value(self.network_inspect(&name)?),
            Request::NetworkRemove(name) => {
                self.remove_network(&name)?;
                to_value(name)
            }
            Request::NetworkConnect(net, c) => {
                let container = c.container.clone();
                self.connect(&net, c)?;
                to_value(self.container_inspect(&container)?)
            }
            Request::NetworkDisconnect(net, d) => {
                self.disconnect(&net, &d.container)?;
                to_value(d.container)
            }
            Request::ContainerList => {
                let names: Vec<_> = self.containers.keys().cloned().collect();
                let list: Result<Vec<_>, _> =
                    names.iter().map(|n| self.container_inspect(n)).collect();
                to_value(list?)
            }
            Request::ContainerCreate(c) => {
                self.create_container(c.clone())?;
                to_value(self.container_inspect(&c.name)?)
            }
            Request::ContainerUpdate(name, u) => {
                let c = self
                    .containers
                    .get_mut(&name)
                    .ok_or_else(|| no_container(&name))?;
                c.pid = u.pid;
                let c = c.clone();
                self.store.put_container(&c).map_err(internal)?;
                to_value(self.container_inspect(&name)?)
            }
            Request::ContainerInspect(name) => to_value(self.container_inspect(&name)?),
            Request::ContainerRemove(name) => {
                self.remove_container(&name)?;
                to_value(name)
            }
            Request::Stats => to_value(self.stats()?),
            Request::ClusterJoin(j) => to_value(self.join_cluster(&j.peers)?),
            Request::ClusterLeave => to_value(self.leave_cluster()?),
            Request::ClusterMembers => to_value(self.members()?),
            Request::VtepList(n) => to_value(self.vtep_list(&n)?),
            Request::VtepAdd(n, v) => to_value(self.vtep_add(&n, &v.address)?),
            Request::VtepRemove(n, v) => to_value(self.vtep_remove(&n, &v.address)?),
            Request::IpamReclaim(r) => to_value(self.ipam_reclaim(&r.host)?),
        }
    }

    fn network_list(&self) -> Vec<api::NetworkSummary> {
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

    fn network(&self, name: &str) -> Result<&Network, ApiError> {
        self.networks.get(name).ok_or_else(|| {
            ApiError::not_found(format!(
                "network `{name}` not found; `vswitch network ls` lists the networks"
            ))
        })
    }

    fn network_inspect(&self, name: &str) -> Result<api::NetworkInspect, ApiError> {
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
        Ok(api::NetworkInspect {
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
            peers: (n.record.driver == Driver::Overlay).then(|| self.overlay_peers(n)),
            vteps: (n.record.driver == Driver::Overlay)
                .then(|| n.static_vteps.keys().map(|a| a.to_string()).collect()),
        })
    }

    fn create_network(&mut self, req: api::NetworkCreate) -> Result<(), ApiError> {
        if self.networks.contains_key(&req.name) {
            return Err(ApiError::conflict(format!(
                "network `{}` already exists; pick another name or remove it with `vswitch network rm {}`",
                req.name, req.name
            )));
        }
        for key in req.options.keys() {
            if !matches!(key.as_str(), "vni" | "encrypted" | "transport") {
                return Err(ApiError::bad(format!(
                    "unknown network option `{key}`; known options: vni=N (overlays, to meet a kernel VTEP), encrypted and transport=udp|quic (overlays)"
                )));
            }
        }
        let encrypted = is_encrypted(&req.options)?;
        if encrypted && req.driver != Driver::Overlay {
            return Err(ApiError::bad(format!(
                "--opt encrypted is for overlay networks, whose frames cross the underlay; the {} driver keeps frames on this host",
                req.driver.as_str()
            )));
        }
        match req.driver {
            Driver::Overlay => return self.create_overlay(req),
            Driver::Host | Driver::None => {
                if !req.subnets.is_empty() || req.ipv6 {
                    return Err(ApiError::bad(format!(
                        "the {} driver has no addresses; drop --subnet/--ipv6 or use --driver bridge",
                        req.driver.as_str()
                    )));
                }
            }
            Driver::Bridge => {}
        }
        if let Some(mtu) = req.mtu {
            if !(576..=65_535).contains(&mtu) {
                return Err(ApiError::bad(format!(
                    "--mtu {mtu} is out of range; use 576 to 65535"
                )));
            }
        }
        let subnets = if req.driver == Driver::Bridge {
            self.allocate_subnets(&req)?
        } else {
            Vec::new()
        };
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
        Ok(())
    }

    /// Resolves the requested subnets through IPAM.
    fn allocate_subnets(&mut self, req: &api::NetworkCreate) -> Result<Vec<SubnetSpec>, ApiError> {
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
    fn install_network(&mut self, record: NetworkRecord) -> Result<(), ApiError> {
        if matches!(record.driver, Driver::Bridge | Driver::Overlay)
            && !self.ipam.contains_network(record.name.as_str())
        {
            let configs: Vec<ipam::SubnetConfig> = record
                .subnets
                .iter()
                .filter_map(|s| {
                    Some(ipam::SubnetConfig {
                        subnet: s.subnet?,
                        gateway: s.gateway?,
                        ip_range: s.ip_range,
                    })
                })
                .collect();
            self.ipam
                .restore_network(record.name.clone(), &configs)
                .map_err(ipam_err)?;
        }
        let gateway_mac = MacAddr::local_from_seed(format!("gateway/{}", record.id).as_bytes());
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
                    .add_vtep(port, id, addr)
                    .map_err(ApiError::from)?;
                net.static_vteps.insert(addr, port);
            }
        }
        self.networks.insert(net.record.name.clone(), net);
        Ok(())
    }

    fn uninstall_network(&mut self, name: &str) {
        if let Some(n) = self.networks.remove(name) {
            if let Some(id) = n.id {
                if let Err(e) = self.datapath.remove_network(id) {
                    tracing::warn!(network = %name, error = %e, "removing bridge domain");
                }
            }
        }
        let _ = self.ipam.remove_network(name);
    }

    fn remove_network(&mut self, name: &str) -> Result<(), ApiError> {
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
        if n.record.driver == Driver::Overlay {
            return self.remove_overlay(name);
        }
        self.store.delete_network(name).map_err(internal)?;
        self.uninstall_network(name);
        tracing::info!(network = %name, "network removed");
        Ok(())
    }

    fn create_container(&mut self, c: api::ContainerCreate) -> Result<(), ApiError> {
        if self.containers.contains_key(&c.name) {
            return Err(ApiError::conflict(format!(
                "container `{}` already exists; remove it with `vswitch rm {}` or pick another --name",
                c.name, c.name
            )));
        }
        if let Some(p) = &c.netns {
            check_netns(p)?;
        }
        let rec = ContainerRecord {
            name: c.name.clone(),
            id: random_id(),
            netns: c.netns,
            owns_netns: c.owns_netns,
            pid: c.pid,
        };
        self.store.put_container(&rec).map_err(internal)?;
        self.containers.insert(rec.name.clone(), rec);
        Ok(())
    }

    fn connect(&mut self, network: &str, req: api::Connect) -> Result<(), ApiError> {
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

    fn connect_endpoint(&mut self, network: &str, req: &api::Connect) -> Result<(), ApiError> {
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
    fn allocate_addr(
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

    fn release_addrs(&mut self, network: &str, overlay: bool, addrs: &[IpAddr]) {
        for a in addrs {
            if overlay {
                self.overlay_release(network, *a);
            } else if let Err(e) = self.ipam.release(network, *a) {
                tracing::warn!(%a, error = %e, "releasing address");
            }
        }
    }

    /// Detaches a port from the datapath and deletes its TAP.
    fn teardown_port(&mut self, port: PortId, netns: &Path, ifname: &str) {
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

    fn disconnect(&mut self, network: &str, container: &str) -> Result<(), ApiError> {
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
    fn forget_container_if_unused(&mut self, name: &str) {
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

    fn remove_container(&mut self, name: &str) -> Result<(), ApiError> {
        let c = self
            .containers
            .get(name)
            .cloned()
            .ok_or_else(|| no_container(name))?;
        let mut errors = Vec::new();
        if let Some(pid) = c.pid {
            stop_process(pid);
        }
        let nets: Vec<String> = self
            .networks
            .iter()
            .filter(|(_, n)| n.endpoints.contains_key(name))
            .map(|(k, _)| k.clone())
            .collect();
        for n in nets {
            if let Err(e) = self.disconnect(&n, name) {
                errors.push(format!("disconnecting from `{n}`: {e}"));
            }
        }
        if c.owns_netns {
            if let Some(p) = &c.netns {
                let ns_name = p.file_name().and_then(|s| s.to_str()).unwrap_or(name);
                if let Err(e) = sandbox::delete_netns(ns_name) {
                    errors.push(format!("deleting namespace {}: {e}", p.display()));
                }
            }
        }
        if let Err(e) = self.store.delete_container(name) {
            errors.push(e.to_string());
        }
        self.containers.remove(name);
        if errors.is_empty() {
            Ok(())
        } else {
            Err(ApiError::internal(format!(
                "container `{name}` removed with errors: {}",
                errors.join("; ")
            )))
        }
    }

    fn container_inspect(&self, name: &str) -> Result<api::ContainerInspect, ApiError> {
        let c = self
            .containers
            .get(name)
            .ok_or_else(|| no_container(name))?;
        let networks = self
            .networks
            .values()
            .filter_map(|n| {
                let e = n.endpoints.get(name)?;
                Some((
                    n.record.name.clone(),
                    api::EndpointInspect {
                        network: n.record.name.clone(),
                        endpoint_id: e.record.id.clone(),
                        interface: e.record.ifname.clone(),
                        mac: MacAddr(e.record.mac).to_string(),
                        ipv4: e.record.ipv4.map(|a| a.addr()),
                        ipv4_prefix: e.record.ipv4.map(|a| a.prefix_len()),
                        ipv6: e.record.ipv6.map(|a| a.addr()),
                        ipv6_prefix: e.record.ipv6.map(|a| a.prefix_len()),
                        gateway: n.gateway4(),
                        gateway6: n.gateway6(),
                        aliases: e.record.aliases.clone(),
                    },
                ))
            })
            .collect();
        Ok(api::ContainerInspect {
            name: c.name.clone(),
            id: c.id.clone(),
            netns: c.netns.clone(),
            pid: c.pid,
            host: self.config.node_name.clone(),
            networks,
            ports: self.port_bindings(name),
        })
    }

    fn stats(&self) -> Result<api::Stats, ApiError> {
        let dp = self.datapath.stats().map_err(ApiError::from)?;
        let mut ports = Vec::new();
        for n in self.networks.values() {
            for e in n.endpoints.values() {
                let c = dp.ports.get(&e.port).copied().unwrap_or_default();
                ports.push(api::PortStats {
                    network: n.record.name.clone(),
                    container: e.record.container.clone(),
                    interface: e.record.ifname.clone(),
                    rx_packets: c.rx_packets,
                    rx_bytes: c.rx_bytes,
                    tx_packets: c.tx_packets,
                    tx_bytes: c.tx_bytes,
                    drops: c.drops,
                    tx_drops: c.tx_drops,
                });
            }
        }
        let t = dp.tunnel;
        let quic_stats = self
            .quic
            .as_ref()
            .map(|q| q.handle().stats())
            .unwrap_or_default();
        let tunnel = [
            ("RxPackets", t.rx_packets),
            ("TxPackets", t.tx_packets),
            ("Malformed", t.malformed),
            ("UnknownVni", t.unknown_vni),
            ("NonMember", t.non_member),
            ("SendErrors", t.send_errors),
            ("ClearOnEncrypted", t.clear_on_encrypted),
            ("QuicOnPlain", t.quic_on_plain),
            ("QuicRejected", t.quic_rejected),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .chain(
            quic_stats
                .named()
                .into_iter()
                .map(|(k, v)| (format!("Quic{k}"), v)),
        )
        .collect();
        let gossip = match &self.cluster {
            Some(c) => {
                let g = c.with(|g, _| g.stats());
                [
                    ("DatagramsIn", g.datagrams_in),
                    ("DatagramsOut", g.datagrams_out),
                    ("AuthFailures", g.auth_failures),
                    ("DecodeFailures", g.decode_failures),
                    ("ProtocolErrors", g.protocol_errors),
                ]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect()
            }
            None => BTreeMap::new(),
        };
        Ok(api::Stats {
            ports,
            drops: dp
                .drops
                .iter()
                .map(|(reason, n)| (reason.as_str().to_string(), n))
                .collect(),
            bad_requests: self.bad_requests,
            suppressed: dp.suppressed,
            worker_rx_packets: dp.worker_rx_packets.clone(),
            tunnel,
            gossip,
            nat: self
                .networks
                .values()
                .filter_map(|n| {
                    let st = dp.nat.get(&n.id?)?;
                    let counters = [
                        ("TcpInbound", st.tcp_inbound),
                        ("TcpEgress", st.tcp_egress),
                        ("TcpActive", st.tcp_active),
                        ("TcpRefused", st.tcp_refused),
                        ("TcpConnectFailed", st.tcp_connect_failed),
                        ("UdpFlows", st.udp_flows),
                        ("UdpActive", st.udp_active),
                        ("UdpRefused", st.udp_refused),
                        ("IcmpFlows", st.icmp_flows),
                        ("EgressDenied", st.egress_denied),
                        ("FramesMalformed", st.frames_malformed),
                        ("FramesDropped", st.frames_dropped),
                    ]
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v))
                    .collect();
                    Some((n.record.name.clone(), counters))
                })
                .collect(),
        })
    }
}

/// Whether a network's options ask for an encrypted overlay:
/// `encrypted` (or `encrypted=true`) or `transport=quic`.
pub(crate) fn is_encrypted(options: &BTreeMap<String, String>) -> Result<bool, ApiError> {
    let flag = match options.get("encrypted").map(|v| v.to_ascii_lowercase()) {
        None => None,
        Some(v) if matches!(v.as_str(), "" | "true" | "1" | "yes") => Some(true),
        Some(v) if matches!(v.as_str(), "false" | "0" | "no") => Some(false),
        Some(v) => {
            return Err(ApiError::bad(format!(
                "--opt encrypted={v}: say --opt encrypted (or encrypted=true|false)"
            )))
        }
    };
    let transport = match options.get("transport").map(|v| v.to_ascii_lowercase()) {
        None => None,
        Some(v) if v == "quic" => Some(true),
        Some(v) if v == "udp" => Some(false),
        Some(v) => {
            return Err(ApiError::bad(format!(
                "--opt transport={v}: the transports are udp (VXLAN, in the clear) and quic (encrypted)"
            )))
        }
    };
    match (flag, transport) {
        (Some(a), Some(b)) if a != b => Err(ApiError::bad(
            "--opt encrypted and --opt transport=udp contradict each other; encrypted overlays travel over QUIC",
        )),
        (a, b) => Ok(a.or(b).unwrap_or(false)),
    }
}

/// Starts the QUIC endpoint with the host's stored identity; returns it and
/// the fingerprint to publish in gossip.
fn start_quic(
    cs: &ClusterSettings,
    state_dir: &Path,
    node_name: &str,
) -> anyhow::Result<(QuicTransport, overlay::Fingerprint)> {
    let bind = SocketAddr::new(cs.bind.ip(), cs.quic_port);
    let socket = std::net::UdpSocket::bind(bind).map_err(|e| {
        anyhow::anyhow!("binding the QUIC port {bind}: {e}; pick another --quic-port")
    })?;
    let identity = quic::load_or_create_identity(state_dir, node_name)?;
    let published = identity.fingerprint();
    let presented = if cs.quic_impostor {
        tracing::warn!(
            "--test-quic-impostor: presenting a certificate that is not the published one"
        );
        overlay::Identity::generate(node_name)?
    } else {
        identity
    };
    let underlay = overlay_nets::underlay_mtu(cs.advertise);
    let transport = QuicTransport::start(
        quic::QuicConfig {
            identity: presented,
            local_tunnel: SocketAddr::new(cs.advertise, cs.tunnel_port),
            udp_payload: quic::udp_payload(underlay, cs.advertise.is_ipv6()),
        },
        socket,
    )?;
    tracing::info!(fingerprint = %published, "QUIC identity");
    Ok((transport, published))
}

fn iface_config(net: &Network, rec: &EndpointRecord) -> IfaceConfig {
    IfaceConfig {
        name: rec.ifname.clone(),
        mac: MacAddr(rec.mac),
        mtu: net.record.mtu,
        addrs: rec
            .ipv4
            .map(IpNet::V4)
            .into_iter()
            .chain(rec.ipv6.map(IpNet::V6))
            .collect(),
        gateway4: rec.gateway4,
        gateway6: rec.gateway6,
    }
}

fn security(rec: &EndpointRecord) -> PortSecurity {
    PortSecurity {
        mac: MacAddr(rec.mac),
        ipv4: rec.ipv4.map(|a| a.addr()).into_iter().collect(),
        ipv6: rec.ipv6.map(|a| a.addr()).into_iter().collect(),
    }
}

fn check_netns(p: &Path) -> Result<(), ApiError> {
    if !p.exists() {
        return Err(ApiError::bad(format!(
            "network namespace {} does not exist; create it with `ip netns add NAME` or pass /proc/PID/ns/net of a running container",
            p.display()
        )));
    }
    Ok(())
}

fn no_container(name: &str) -> ApiError {
    ApiError::not_found(format!(
        "container `{name}` not found; `vswitch network inspect NETWORK` lists connected containers"
    ))
}

fn internal(e: impl std::fmt::Display) -> ApiError {
    ApiError::internal(e.to_string())
}

/// SIGTERM, then SIGKILL after a grace period, as `docker stop` does.
fn stop_process(pid: u32) {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    let pid = Pid::from_raw(pid as i32);
    if kill(pid, Signal::SIGTERM).is_err() {
        return;
    }
    for _ in 0..50 {
        std::thread::sleep(Duration::from_millis(100));
        if !is_running(pid) {
            return;
        }
    }
    let _ = kill(pid, Signal::SIGKILL);
}

/// True while `pid` exists and is not a zombie waiting for its parent (a
/// zombie still answers `kill(pid, 0)`).
fn is_running(pid: nix::unistd::Pid) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command name, which is in parentheses.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_shape() {
        let s = now_rfc3339();
        assert_eq!(s.len(), 20, "{s}");
        assert!(s.starts_with("20"), "{s}");
        assert!(s.ends_with('Z'));
    }

    #[rstest::rstest]
    #[case::none(&[], Ok(false))]
    #[case::flag(&[("encrypted", "true")], Ok(true))]
    #[case::flag_empty(&[("encrypted", "")], Ok(true))]
    #[case::flag_off(&[("encrypted", "false")], Ok(false))]
    #[case::quic(&[("transport", "quic")], Ok(true))]
    #[case::udp(&[("transport", "UDP")], Ok(false))]
    #[case::both(&[("encrypted", "true"), ("transport", "quic")], Ok(true))]
    #[case::contradiction(&[("encrypted", "true"), ("transport", "udp")], Err(()))]
    #[case::bad_flag(&[("encrypted", "maybe")], Err(()))]
    #[case::bad_transport(&[("transport", "tcp")], Err(()))]
    fn encrypted_option(#[case] opts: &[(&str, &str)], #[case] want: Result<bool, ()>) {
        let opts: BTreeMap<String, String> = opts
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert_eq!(is_encrypted(&opts).map_err(|_| ()), want);
    }

    #[test]
    fn ids_are_unique_hex() {
        let a = random_id();
        assert_eq!(a.len(), 64);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, random_id());
    }
}
