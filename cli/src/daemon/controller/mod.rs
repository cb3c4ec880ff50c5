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

use super::datapath::{self, DatapathHandle};
use super::gossip::GossipThread;
use super::quic::{self, QuicTransport};
use super::state::{ContainerRecord, EndpointRecord, NetworkRecord, Store};
use super::ApiError;
use crate::api::{self, Driver, SubnetSpec};
use crate::netns::{self, IfaceConfig};
use crate::sandbox;

mod capture;
mod cni;
mod containers;
mod docker;
mod doctor;
mod drivers;
mod endpoints;
mod events;
mod ids;
mod networks;
mod overlay_ipam;
mod overlay_nets;
mod plane;
mod policies;
mod ports;
mod restore;
mod rollback;
mod stats;
mod trace;

use ids::{now_rfc3339, random_id, random_u64};
pub use plane::ControlPlane;

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
pub(super) struct Endpoint {
    record: EndpointRecord,
    port: PortId,
    /// Published ports (`-p`).
    ports: Vec<api::PortMapping>,
}

#[derive(Debug)]
pub(super) struct Network {
    record: NetworkRecord,
    /// The bridge domain, for networks that switch frames.
    id: Option<NetworkId>,
    zone: Arc<ArcSwap<Zone>>,
    /// Keyed by container name.
    endpoints: BTreeMap<String, Endpoint>,
    /// Overlays: endpoints on other hosts, keyed by (host, key).
    remotes: BTreeMap<(String, String), overlay::PublishedEndpoint>,
    /// Overlays: the tunnel port to each host with endpoints here, and
    /// where it points.
    vteps: BTreeMap<String, (PortId, overlay_nets::MemberTunnel)>,
    /// Overlays: tunnel ports of admitted foreign VTEPs.
    static_vteps: BTreeMap<SocketAddr, PortId>,
    /// Overlays: the cluster-wide allocator (this host's owned ranges).
    alloc: Option<ipam::cluster::ClusterAllocator>,
    /// Containers of other networks a policy lets this one reach: their
    /// names resolve here too.
    extra_dns: Vec<DnsEntry>,
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

    /// Whether one of the network's endpoints here has the address `ip`.
    fn uses(&self, ip: IpAddr) -> bool {
        self.endpoints.values().any(|e| {
            e.record.ipv4.map(|x| IpAddr::V4(x.addr())) == Some(ip)
                || e.record.ipv6.map(|x| IpAddr::V6(x.addr())) == Some(ip)
        })
    }

    fn is_switched(&self) -> bool {
        drivers::of(self.record.driver).switches()
    }

    fn scope(&self) -> &'static str {
        drivers::of(self.record.driver).scope()
    }

    /// Publishes this network's DNS records (local and, for overlays,
    /// remote endpoints) to the gateway.
    fn publish_zone(&self) {
        let local = self.endpoints.values().map(|e| local_dns_entry(&e.record));
        let remote = self.remotes.values().map(remote_dns_entry);
        let extra = self.extra_dns.iter().cloned();
        self.zone.store(Arc::new(Zone::new(
            local.chain(remote).chain(extra).collect::<Vec<_>>(),
        )));
    }
}

/// The DNS entry of an endpoint here.
fn local_dns_entry(rec: &EndpointRecord) -> DnsEntry {
    DnsEntry {
        name: rec.container.clone(),
        aliases: rec.aliases.clone(),
        addrs: rec.addrs(),
    }
}

/// The DNS entry of an endpoint on another host.
fn remote_dns_entry(r: &overlay::PublishedEndpoint) -> DnsEntry {
    DnsEntry {
        name: r.container.clone(),
        aliases: r.aliases.clone(),
        addrs: overlay_nets::ips_of(r),
    }
}

/// The control plane.
#[derive(Debug)]
pub struct Controller {
    config: ControllerConfig,
    store: Store,
    ipam: ipam::Ipam<String>,
    datapath: DatapathHandle,
    gossip: Option<GossipThread>,
    /// The QUIC endpoint of encrypted overlays (with a cluster).
    quic: Option<QuicTransport>,
    /// Members declared dead, and since when (for IPAM reclaims).
    dead_since: BTreeMap<String, std::time::Instant>,
    /// Gossip events, until the daemon takes them to feed them back.
    events: Option<std::sync::mpsc::Receiver<overlay::GossipEvent>>,
    networks: BTreeMap<String, Network>,
    containers: BTreeMap<String, ContainerRecord>,
    /// Connects in flight (container -> network), between their locked
    /// phases: the container cannot be removed or connected again, nor the
    /// network removed, meanwhile.
    connecting: BTreeMap<String, String>,
    /// Containers `vswitch rm` is removing (their process stopping, their
    /// endpoints going), between its locked phases.
    removing: std::collections::BTreeSet<String>,
    /// Docker's networks, endpoints and IPAM pools (the Docker plugin).
    docker: docker::DockerState,
    /// CNI attachments (vswitch-cni).
    cni: cni::CniTable,
    /// Running captures (`vswitch capture`): the TAP ports each watches.
    captures: BTreeMap<u64, Vec<PortId>>,
    next_capture: u64,
    /// `vswitch events`: the event log and what it last said of members.
    recorder: events::Recorder,
    /// `vswitch policy`: the policies and the table in force.
    policies: policies::Policies,
    /// The most MACs one network's table learns (the anomaly detector
    /// reports a table near it).
    mac_bound: usize,
    next_port: u32,
    next_network: u32,
    bad_requests: u64,
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
        let stored_policies = store.load_policies()?;
        let (tunnel, gossip_socket) = match &config.cluster {
            Some(cs) => {
                let tunnel_bind = SocketAddr::new(cs.bind.ip(), cs.tunnel_port);
                let tunnel = datapath::bind_tunnel(tunnel_bind, config.workers).map_err(|e| {
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
                (tunnel, Some(gossip))
            }
            None => (Vec::new(), None),
        };
        let (quic, published) = match &config.cluster {
            Some(cs) => {
                let (t, fingerprint) =
                    start_quic(cs, &config.state_dir, &config.node_name, config.busy_poll)?;
                (Some(t), Some(fingerprint))
            }
            None => (None, None),
        };
        let bridge = BridgeConfig::default();
        let datapath = DatapathHandle::start(
            bridge,
            tunnel,
            quic.as_ref().map(QuicTransport::handle),
            config.workers,
            config.busy_poll,
        )?;
        let (gossip, events) = match (&config.cluster, gossip_socket, published) {
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
            gossip,
            quic,
            dead_since: BTreeMap::new(),
            events,
            networks: BTreeMap::new(),
            containers: BTreeMap::new(),
            connecting: BTreeMap::new(),
            removing: Default::default(),
            docker: docker::DockerState::default(),
            cni: cni::CniTable::new(),
            captures: BTreeMap::new(),
            next_capture: 1,
            recorder: events::Recorder::default(),
            policies: policies::Policies::load(stored_policies),
            mac_bound: bridge.fdb_max_per_network,
            next_port: 1,
            next_network: 1,
            bad_requests: 0,
        };
        c.emit_daemon_start();
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
        c.sync_policies();
        Ok(c)
    }

    /// Counts a request refused before decoding.
    pub fn count_bad_request(&mut self) {
        self.bad_requests += 1;
    }

    /// Stops the datapath. TAPs stay in their namespaces (they are
    /// persistent), so a restarted daemon finds them again.
    pub fn shutdown(&mut self) {
        if let Some(mut c) = self.gossip.take() {
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

    fn alloc_port(&mut self) -> PortId {
        let p = PortId(self.next_port);
        self.next_port += 1;
        p
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
    busy_poll: Duration,
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
            busy_poll,
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
