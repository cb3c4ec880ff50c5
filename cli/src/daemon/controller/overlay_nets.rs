//! Overlay networks: the controller's side of the cluster. Networks and
//! endpoints are published in the gossip directory; every host installs
//! what the directory holds (networks as local bridge domains with a VNI,
//! remote endpoints as static MACs behind one tunnel port per host, their
//! addresses in DNS and in the neighbour-suppression table).
//!
//! The directory is the source of truth: [`Controller::resync_overlay`]
//! computes what the datapath should hold for a network from it and applies
//! the difference, so any event (a member up or down, an endpoint published
//! or withdrawn, a network created elsewhere) is handled the same way.
//!
//! A host has a tunnel port on a network for each other host with
//! endpoints there, and for each host with endpoints on an overlay the
//! policies route into this one (or back): what such a host's gateway
//! routes arrives on this network's VNI, and only a tunnel port's host is
//! admitted. Broadcasts of the network reach those hosts too.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::mpsc;
use std::time::{SystemTime, UNIX_EPOCH};

use overlay::identity::CERT_TAG;
use overlay::tunnel::{Transport, Vtep, VtepKind};
use overlay::{Gossip, GossipConfig, GossipEvent, IpamConfig, MemberMeta, NetworkSpec, Vni};
use switch::{MacAddr, NetworkId};

use super::{
    internal, now_rfc3339, random_id, random_u64, ApiError, ClusterSettings, Controller,
    EndpointRecord, NetworkRecord,
};
use crate::api::{self, Driver, SubnetSpec};
use crate::daemon::gossip::GossipThread;
use crate::daemon::quic::{self, QuicPeer};

/// Default gossip port, for `join-cluster IP`.
pub const GOSSIP_PORT: u16 = 7946;

/// Starts gossip on `socket`; the member's tags publish the fingerprint of
/// its QUIC certificate and its QUIC port.
pub(super) fn start_cluster(
    cs: &ClusterSettings,
    node_name: &str,
    socket: std::net::UdpSocket,
    fingerprint: overlay::Fingerprint,
) -> anyhow::Result<(GossipThread, mpsc::Receiver<GossipEvent>)> {
    let meta = MemberMeta {
        name: node_name.to_string(),
        gossip_addr: SocketAddr::new(cs.advertise, cs.bind.port()),
        tunnel_addr: SocketAddr::new(cs.advertise, cs.tunnel_port),
        tags: [
            (CERT_TAG.to_string(), fingerprint.to_string()),
            (quic::PORT_TAG.to_string(), cs.quic_port.to_string()),
            (PARTIAL_CSUM_TAG.to_string(), PARTIAL_CSUM_YES.to_string()),
        ]
        .into(),
    };
    // Grows at every start, so a restarted host supersedes its former self.
    let boot = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(1);
    // foca's LAN settings for a handful of hosts: probe every second,
    // suspicion of 4 s before a member is declared down.
    let mut config = GossipConfig::lan(8, boot);
    config.max_datagram = underlay_mtu(cs.advertise).saturating_sub(48).max(512) as usize;
    let gossip = Gossip::new(
        meta,
        cs.key.clone(),
        config,
        random_u64(),
        std::time::Instant::now(),
    )?;
    let (tx, rx) = mpsc::channel();
    let thread = GossipThread::start(gossip, socket, tx)?;
    Ok((thread, rx))
}

/// The MTU of the interface that holds `ip` (1500 if it cannot be told).
pub(super) fn underlay_mtu(ip: IpAddr) -> u32 {
    let name = nix::ifaddrs::getifaddrs().ok().and_then(|addrs| {
        addrs
            .filter(|a| {
                let Some(sa) = a.address.as_ref() else {
                    return false;
                };
                let found: Option<IpAddr> = if let Some(v4) = sa.as_sockaddr_in() {
                    Some(IpAddr::V4(v4.ip()))
                } else {
                    sa.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip()))
                };
                found == Some(ip)
            })
            .map(|a| a.interface_name)
            .next()
    });
    name.and_then(|n| std::fs::read_to_string(format!("/sys/class/net/{n}/mtu")).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(1500)
}

/// Parses `IP` or `IP:PORT`.
fn parse_addr(s: &str, default_port: u16, what: &str) -> Result<SocketAddr, ApiError> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, default_port));
    }
    s.parse::<SocketAddr>()
        .map_err(|_| ApiError::bad(format!("{what} `{s}` is neither an IP address nor IP:PORT")))
}

fn no_cluster() -> ApiError {
    ApiError::bad(
        "this vswitchd runs without a cluster; start it with --cluster-key-file FILE (and --advertise-addr IP) to use overlays",
    )
}

impl Controller {
    /// The names of the overlay networks known here.
    pub(super) fn overlay_names(&self) -> Vec<String> {
        self.networks
            .values()
            .filter(|n| n.record.driver == Driver::Overlay)
            .map(|n| n.record.name.clone())
            .collect()
    }

    /// After a restart: publish this host's endpoints and cluster-wide
    /// policies again and rejoin the peers it knew.
    pub(super) fn rejoin_cluster(&mut self) {
        if self.gossip.is_none() {
            return;
        }
        let overlays = self.overlay_names();
        for name in &overlays {
            let containers: Vec<String> = self.networks[name].endpoints.keys().cloned().collect();
            for c in containers {
                self.publish_local_endpoint(name, &c);
            }
        }
        self.publish_cluster_policies();
        let peers: Vec<String> = match self.store.peers() {
            Ok(p) => p.iter().map(SocketAddr::to_string).collect(),
            Err(e) => {
                tracing::warn!(error = %e, "reading the cluster peers to rejoin");
                Vec::new()
            }
        };
        if !peers.is_empty() {
            if let Err(e) = self.join_cluster(&peers) {
                tracing::warn!(error = %e, "rejoining the cluster");
            }
        }
    }

    pub(super) fn join_cluster(&mut self, peers: &[String]) -> Result<Vec<String>, ApiError> {
        let cluster = self.gossip.as_ref().ok_or_else(no_cluster)?;
        if peers.is_empty() {
            return Err(ApiError::bad("join-cluster needs at least one PEER_ADDR"));
        }
        let addrs = peers
            .iter()
            .map(|p| parse_addr(p, GOSSIP_PORT, "peer"))
            .collect::<Result<Vec<_>, _>>()?;
        cluster.with(|g, now| {
            for a in &addrs {
                g.join(*a, now);
            }
        });
        if let Err(e) = self.store.add_peers(&addrs) {
            tracing::warn!(error = %e, "remembering the cluster peers");
        }
        tracing::info!(?addrs, "joining the cluster");
        Ok(addrs.iter().map(|a| a.to_string()).collect())
    }

    pub(super) fn leave_cluster(&mut self) -> Result<String, ApiError> {
        let cluster = self.gossip.as_ref().ok_or_else(no_cluster)?;
        cluster.with(|g, now| g.leave(now));
        if let Err(e) = self.store.clear_peers() {
            tracing::warn!(error = %e, "forgetting the cluster peers");
        }
        // Encrypted tunnels close with the membership.
        if let Some(q) = &self.quic {
            q.handle().set_peers([]);
        }
        let overlays = self.overlay_names();
        for n in overlays {
            self.resync_overlay(&n);
        }
        Ok(self.config.node_name.clone())
    }

    pub(super) fn members(&self) -> Result<Vec<api::Member>, ApiError> {
        let cluster = self.gossip.as_ref().ok_or_else(no_cluster)?;
        let overlays: Vec<(String, String)> = self
            .networks
            .values()
            .filter(|n| n.record.driver == Driver::Overlay)
            .map(|n| (n.record.id.clone(), n.record.name.clone()))
            .collect();
        Ok(cluster.with(|g, _| {
            let hosts: BTreeMap<String, BTreeSet<&String>> = {
                let dir = g.directory();
                let mut m: BTreeMap<String, BTreeSet<&String>> = BTreeMap::new();
                for (id, name) in &overlays {
                    for h in dir.hosts_on(id) {
                        m.entry(h.to_string()).or_default().insert(name);
                    }
                }
                m
            };
            g.members()
                .into_iter()
                .map(|m| api::Member {
                    networks: hosts
                        .get(&m.meta.name)
                        .map(|s| s.iter().map(|n| n.to_string()).collect())
                        .unwrap_or_default(),
                    name: m.meta.name,
                    address: m.meta.gossip_addr.to_string(),
                    tunnel: m.meta.tunnel_addr.to_string(),
                    state: m.state.to_string(),
                    local: m.local,
                })
                .collect()
        }))
    }

    pub(super) fn overlay_peers(&self, n: &super::Network) -> Vec<api::Peer> {
        let mut peers: Vec<api::Peer> = n
            .vteps
            .iter()
            .map(|(host, (_, t))| api::Peer {
                name: host.clone(),
                ip: t.addr.ip().to_string(),
            })
            .collect();
        if let Some(c) = &self.config.cluster {
            peers.push(api::Peer {
                name: self.config.node_name.clone(),
                ip: c.advertise.to_string(),
            });
        }
        peers.sort_by(|a, b| a.name.cmp(&b.name));
        peers
    }

    /// `network create --driver overlay`.
    pub(super) fn create_overlay(&mut self, req: api::NetworkCreate) -> Result<(), ApiError> {
        let cs = self.config.cluster.clone().ok_or_else(no_cluster)?;
        let exists = self
            .gossip
            .as_ref()
            .ok_or_else(no_cluster)?
            .with(|g, _| g.directory().network(&req.name).is_some());
        if exists {
            return Err(ApiError::conflict(format!(
                "an overlay network `{}` already exists in the cluster",
                req.name
            )));
        }
        let underlay = underlay_mtu(cs.advertise);
        let (max_mtu, why) = if super::is_encrypted(&req.options)? {
            // What one QUIC datagram carries, less the VXLAN and Ethernet
            // headers: a larger frame could never be sent.
            let mtu = quic::overlay_mtu(underlay, cs.advertise.is_ipv6()).ok_or_else(|| {
                ApiError::bad(format!(
                    "this underlay's MTU of {underlay} is too small for QUIC (at least 1228 over IPv4, 1248 over IPv6); encrypted overlays cannot run here"
                ))
            })?;
            (
                mtu,
                format!(
                    "underlay MTU {underlay} minus {} bytes of IP, UDP, QUIC, VXLAN and Ethernet headers",
                    underlay - mtu
                ),
            )
        } else {
            let overhead = if cs.advertise.is_ipv4() {
                overlay::vxlan::OVERHEAD_V4
            } else {
                overlay::vxlan::OVERHEAD_V6
            };
            (
                underlay.saturating_sub(overhead),
                format!("underlay MTU minus {overhead} bytes of encapsulation"),
            )
        };
        let mtu = match req.mtu {
            Some(m) if m > max_mtu => {
                return Err(ApiError::bad(format!(
                    "--mtu {m} is too large for this underlay: at most {max_mtu} ({why}), or frames would fragment"
                )))
            }
            Some(m) => m,
            None => max_mtu,
        };
        let subnets = self.allocate_subnets(&req)?;
        let id = random_id();
        let spec = NetworkSpec {
            name: req.name.clone(),
            id: id.clone(),
            ipam: subnets
                .iter()
                .filter_map(|s| {
                    Some(IpamConfig {
                        subnet: s.subnet?,
                        ip_range: s.ip_range,
                        gateway: s.gateway,
                    })
                })
                .collect(),
            ipv6: req.ipv6,
            internal: req.internal,
            mtu: Some(mtu),
            vni: req
                .options
                .get("vni")
                .and_then(|v| v.parse().ok())
                .and_then(Vni::new),
            options: req.options.clone(),
            labels: req.labels.clone(),
            created: now_rfc3339(),
        };
        let published = self.gossip.as_ref().expect("checked").with(|g, now| {
            g.publish_network(spec.clone(), now)?;
            Ok::<_, overlay::OverlayError>(g.directory().network(&req.name).map(|v| v.vni))
        });
        let vni = match published {
            Ok(Some(vni)) => vni,
            Ok(None) | Err(_) => {
                let _ = self.ipam.remove_network(req.name.as_str());
                return Err(ApiError::internal(format!(
                    "the cluster directory refused network `{}`: {}",
                    req.name,
                    published.err().map(|e| e.to_string()).unwrap_or_default()
                )));
            }
        };
        self.install_overlay(&spec, vni)?;
        tracing::info!(network = %req.name, vni = vni.get(), "overlay network created");
        Ok(())
    }

    /// Makes an overlay network from the directory live here (idempotent).
    fn install_overlay(&mut self, spec: &NetworkSpec, vni: Vni) -> Result<(), ApiError> {
        if let Some(n) = self.networks.get_mut(&spec.name) {
            if n.record.id != spec.id {
                return Err(ApiError::conflict(format!(
                    "network `{}` from the cluster clashes with a local network of the same name",
                    spec.name
                )));
            }
            if n.record.vni != Some(vni.get()) {
                n.record.vni = Some(vni.get());
                if let Some(id) = n.id {
                    self.datapath
                        .set_vni(id, Some(vni))
                        .map_err(ApiError::from)?;
                }
                let rec = n.record.clone();
                self.store.put_network(&rec).map_err(internal)?;
            }
            self.resync_overlay(&spec.name);
            return Ok(());
        }
        let record = NetworkRecord {
            name: spec.name.clone(),
            id: spec.id.clone(),
            created: spec.created.clone(),
            driver: Driver::Overlay,
            ipv6: spec.ipv6,
            internal: spec.internal,
            mtu: spec.mtu.unwrap_or(1450),
            subnets: spec
                .ipam
                .iter()
                .map(|c| SubnetSpec {
                    subnet: Some(c.subnet),
                    gateway: c.gateway,
                    ip_range: c.ip_range,
                })
                .collect(),
            options: spec.options.clone(),
            labels: spec.labels.clone(),
            vni: Some(vni.get()),
            static_vteps: Vec::new(),
        };
        self.install_network(record.clone())?;
        let creator = self
            .gossip
            .as_ref()
            .and_then(|c| {
                c.with(|g, _| {
                    g.directory()
                        .network(&spec.name)
                        .map(|v| v.version.origin.clone())
                })
            })
            .unwrap_or_else(|| self.config.node_name.clone());
        match self.make_allocator(&spec.name, &creator) {
            Ok(a) => self.networks.get_mut(&spec.name).expect("installed").alloc = Some(a),
            Err(e) => {
                self.uninstall_network(&record.name);
                return Err(e);
            }
        }
        if let Err(e) = self.store.put_network(&record) {
            self.uninstall_network(&record.name);
            return Err(internal(e));
        }
        self.flush_allocator(&spec.name);
        self.resync_overlay(&spec.name);
        let origin = (creator != self.config.node_name).then_some(creator.as_str());
        self.emit_network(self.network_event("create", &spec.name, origin));
        Ok(())
    }

    pub(super) fn remove_overlay(&mut self, name: &str) -> Result<(), ApiError> {
        let n = &self.networks[name];
        if !n.remotes.is_empty() {
            let hosts: BTreeSet<&str> = n.remotes.keys().map(|(h, _)| h.as_str()).collect();
            return Err(ApiError::conflict(format!(
                "overlay network `{name}` has endpoints on {}; disconnect them there first",
                hosts.into_iter().collect::<Vec<_>>().join(", ")
            )));
        }
        if let Some(c) = &self.gossip {
            c.with(|g, now| g.remove_network(name, now));
        }
        self.store.delete_network(name).map_err(internal)?;
        let _ = self.store.delete_ipam(name);
        let event = self.network_event("remove", name, None);
        self.uninstall_network(name);
        tracing::info!(network = %name, "overlay network removed");
        self.emit_network(event);
        Ok(())
    }

    /// What this host publishes of its endpoint `ep` on overlay `network`.
    fn published_endpoint(
        &self,
        network: &NetworkRecord,
        ep: &EndpointRecord,
    ) -> overlay::PublishedEndpoint {
        overlay::PublishedEndpoint {
            network: network.id.clone(),
            container: ep.container.clone(),
            aliases: ep.aliases.clone(),
            mac: ep.mac,
            ipv4: ep.ipv4.map(|a| a.addr()),
            ipv6: ep.ipv6.map(|a| a.addr()),
            // Other hosts' policies select it by them.
            labels: self
                .containers
                .get(&ep.container)
                .map(|c| c.labels.clone())
                .unwrap_or_default(),
        }
    }

    /// Refuses, before anything is set up, an endpoint of overlay
    /// `network` whose record the cluster directory could not carry.
    pub(super) fn check_publishable(
        &self,
        network: &str,
        ep: &EndpointRecord,
    ) -> Result<(), ApiError> {
        let (Some(cluster), Some(net)) = (&self.gossip, self.networks.get(network)) else {
            return Ok(());
        };
        let record = self.published_endpoint(&net.record, ep);
        let checked = cluster.with(|g, _| g.directory().endpoint_check(&ep.id, &record));
        match checked {
            Ok(()) => Ok(()),
            Err(overlay::DirectoryError::TooLarge { len, .. }) => Err(ApiError::bad(format!(
                "container `{}` on overlay `{network}` would be published as {len} bytes, and at most {} fit in a gossip packet; give it fewer or shorter labels and aliases",
                ep.container,
                overlay::directory::MAX_DELTA_LEN
            ))),
            Err(e) => Err(ApiError::conflict(format!(
                "container `{}` cannot be published on overlay `{network}`: {e}",
                ep.container
            ))),
        }
    }

    /// Publishes a local endpoint of an overlay network.
    pub(super) fn publish_local_endpoint(&mut self, network: &str, container: &str) {
        let (Some(cluster), Some(net)) = (&self.gossip, self.networks.get(network)) else {
            return;
        };
        let Some(ep) = net.endpoints.get(container) else {
            return;
        };
        let record = self.published_endpoint(&net.record, &ep.record);
        let key = ep.record.id.clone();
        if let Err(e) = cluster.with(|g, now| g.publish_endpoint(&key, record, now)) {
            tracing::warn!(container, network, error = %e, "publishing endpoint");
        }
    }

    pub(super) fn withdraw_local_endpoint(&mut self, key: &str) {
        if let Some(c) = &self.gossip {
            c.with(|g, now| g.remove_endpoint(key, now));
        }
    }

    /// Acts on a gossip event.
    pub fn handle_cluster_event(&mut self, ev: GossipEvent) {
        use overlay::DirectoryEvent as D;
        tracing::debug!(event = ?ev, "cluster event");
        match ev {
            GossipEvent::MemberUp(meta) => {
                tracing::info!(member = %meta.name, addr = %meta.gossip_addr, "member up");
                self.emit_member(&meta.name, "alive", Some(meta.gossip_addr.to_string()));
                self.dead_since.remove(&meta.name);
                self.sync_quic_peers();
                self.resync_all_overlays();
                self.advertise_ipam();
            }
            GossipEvent::MemberSuspect(name) => {
                tracing::info!(member = %name, "member suspect");
                self.emit_member(&name, "suspect", None);
            }
            GossipEvent::MemberDown(name) => {
                tracing::info!(member = %name, "member down");
                self.emit_member(&name, "dead", None);
                self.dead_since
                    .entry(name)
                    .or_insert_with(std::time::Instant::now);
                self.sync_quic_peers();
                self.resync_all_overlays();
            }
            GossipEvent::App { from, payload } => match payload.split_first() {
                Some((&super::overlay_ipam::APP_IPAM, rest)) => self.handle_ipam_app(from, rest),
                _ => tracing::debug!(%from, "unknown application datagram"),
            },
            GossipEvent::Joined => tracing::info!("joined the cluster"),
            GossipEvent::Alone => tracing::info!("no other member is alive"),
            GossipEvent::Directory(D::NetworkUpsert { spec, vni }) => {
                if let Err(e) = self.install_overlay(&spec, vni) {
                    tracing::warn!(network = %spec.name, error = %e, "cannot install overlay network");
                }
            }
            GossipEvent::Directory(D::NetworkRemoved { name, id }) => {
                let local = self.networks.get(&name).filter(|n| n.record.id == id);
                match local {
                    Some(n) if !n.endpoints.is_empty() => tracing::warn!(
                        network = %name,
                        "overlay network removed elsewhere while containers here use it; keeping it"
                    ),
                    Some(_) => {
                        let _ = self.store.delete_network(&name);
                        let _ = self.store.delete_ipam(&name);
                        let event = self.network_event("remove", &name, None);
                        self.uninstall_network(&name);
                        tracing::info!(network = %name, "overlay network removed by the cluster");
                        self.emit_network(event);
                    }
                    None => {}
                }
            }
            GossipEvent::Directory(D::EndpointUpsert { record, .. })
            | GossipEvent::Directory(D::EndpointRemoved { record, .. }) => {
                if let Some(name) = self.network_name_by_id(&record.network) {
                    self.resync_overlay(&name);
                    // Its host may route from this network into others.
                    for other in self.routed_with(&name) {
                        self.resync_overlay(&other);
                    }
                }
            }
            GossipEvent::Directory(D::PolicyUpsert {
                name,
                version,
                bytes,
            }) => self.apply_cluster_policy(&name, version, &bytes),
            GossipEvent::Directory(D::PolicyRemoved { name }) => self.remove_cluster_policy(&name),
        }
    }

    /// Hands the live members (with their published certificate
    /// fingerprints) to the QUIC endpoint: its trust set, and the
    /// connections it keeps, follow membership.
    fn sync_quic_peers(&self) {
        let (Some(cluster), Some(q)) = (&self.gossip, &self.quic) else {
            return;
        };
        let peers: Vec<QuicPeer> = cluster.with(|g, _| {
            g.members()
                .into_iter()
                .filter(|m| !m.local && m.state != overlay::MemberState::Down)
                .filter_map(|m| {
                    let fingerprint = m.meta.tags.get(CERT_TAG)?.parse().ok()?;
                    let port = m
                        .meta
                        .tags
                        .get(quic::PORT_TAG)
                        .and_then(|p| p.parse().ok())
                        .unwrap_or(quic::DEFAULT_PORT);
                    Some(QuicPeer {
                        quic: SocketAddr::new(m.meta.tunnel_addr.ip(), port),
                        tunnel: m.meta.tunnel_addr,
                        name: m.meta.name,
                        fingerprint,
                    })
                })
                .collect()
        });
        tracing::debug!(peers = peers.len(), "QUIC peers");
        q.handle().set_peers(peers);
    }

    fn network_name_by_id(&self, id: &str) -> Option<String> {
        self.networks
            .values()
            .find(|n| n.record.id == id)
            .map(|n| n.record.name.clone())
    }

    pub(super) fn resync_all_overlays(&mut self) {
        let names = self.overlay_names();
        for n in names {
            self.resync_overlay(&n);
        }
    }

    /// Brings the datapath, DNS and IPAM of an overlay network in line with
    /// the directory.
    pub(super) fn resync_overlay(&mut self, name: &str) {
        let Some(cluster) = &self.gossip else {
            return;
        };
        let Some(net) = self.networks.get(name) else {
            return;
        };
        let Some(dp) = net.id else {
            return;
        };
        let id = net.record.id.clone();
        let encrypted = super::is_encrypted(&net.record.options).unwrap_or(true);
        let local = self.config.node_name.clone();
        // The overlays whose containers the policies route into this one.
        let routed: Vec<String> = self
            .routed_with(name)
            .iter()
            .filter_map(|n| Some(self.networks.get(n)?.record.id.clone()))
            .collect();
        // What should be: remote endpoints of live hosts, and where each
        // host's tunnel ends; hosts that route frames into this network
        // have a tunnel port on it too, or what they send is not admitted.
        let (want, routers, tunnels) = cluster.with(|g, _| {
            let dir = g.directory();
            let want: BTreeMap<(String, String), overlay::PublishedEndpoint> = dir
                .endpoints_on(&id)
                .filter(|e| e.host != local)
                .map(|e| ((e.host.to_string(), e.key.to_string()), e.record.clone()))
                .collect();
            let routers: BTreeSet<String> = routed
                .iter()
                .flat_map(|other| dir.endpoints_on(other).map(|e| e.host.to_string()))
                .filter(|h| *h != local)
                .collect();
            drop(dir);
            let tunnels: BTreeMap<String, MemberTunnel> = g
                .members()
                .into_iter()
                .filter(|m| !m.local && m.state != overlay::MemberState::Down)
                .map(|m| (m.meta.name.clone(), MemberTunnel::of(&m.meta)))
                .collect();
            (want, routers, tunnels)
        });
        tracing::debug!(
            network = name,
            endpoints = want.len(),
            hosts = tunnels.len(),
            "overlay resync"
        );
        let want: BTreeMap<_, _> = want
            .into_iter()
            .filter(|((host, _), _)| tunnels.contains_key(host))
            .collect();
        let want_hosts: BTreeMap<String, MemberTunnel> = want
            .keys()
            .map(|(h, _)| h)
            .chain(routers.iter().filter(|h| tunnels.contains_key(*h)))
            .map(|h| (h.clone(), tunnels[h]))
            .collect();

        let net = self.networks.get_mut(name).expect("checked");
        // Endpoints that went away (or changed).
        let gone: Vec<(String, String)> = net
            .remotes
            .iter()
            .filter(|(k, r)| want.get(*k) != Some(*r))
            .map(|(k, _)| k.clone())
            .collect();
        for k in gone {
            let r = net.remotes.remove(&k).expect("listed");
            let ips = ips_of(&r);
            let _ = self.datapath.remove_remote(dp, MacAddr(r.mac), ips);
        }
        // Tunnel ports to hosts that left, or moved.
        let stale: Vec<String> = net
            .vteps
            .iter()
            .filter(|(h, (_, t))| want_hosts.get(*h) != Some(t))
            .map(|(h, _)| h.clone())
            .collect();
        for h in stale {
            let (port, _) = net.vteps.remove(&h).expect("listed");
            let _ = self.datapath.remove_port(port);
        }
        // New tunnel ports.
        for (h, t) in &want_hosts {
            if !net.vteps.contains_key(h) {
                let port = switch::PortId(self.next_port);
                self.next_port += 1;
                match self.datapath.add_vtep(port, member_vtep(dp, *t, encrypted)) {
                    Ok(()) => {
                        net.vteps.insert(h.clone(), (port, *t));
                    }
                    Err(e) => tracing::warn!(host = %h, error = %e, "adding tunnel port"),
                }
            }
        }
        // New endpoints.
        for (k, r) in want {
            if net.remotes.contains_key(&k) {
                continue;
            }
            let Some(&(port, _)) = net.vteps.get(&k.0) else {
                continue;
            };
            let ips = ips_of(&r);
            let _ = self
                .datapath
                .add_remote(dp, port, MacAddr(r.mac), ips.clone());
            // Addresses in use elsewhere are not handed out here.
            for ip in ips {
                let _ = self.ipam.restore_address(name, ip);
            }
            net.remotes.insert(k, r);
        }
        net.publish_zone();
    }

    pub(super) fn vtep_list(&self, network: &str) -> Result<Vec<String>, ApiError> {
        let n = self.network(network)?;
        Ok(n.static_vteps.keys().map(|a| a.to_string()).collect())
    }

    pub(super) fn vtep_add(&mut self, network: &str, addr: &str) -> Result<String, ApiError> {
        let addr = parse_addr(addr, overlay::vxlan::DEFAULT_PORT, "VTEP")?;
        let n = self.network(network)?;
        if n.record.driver != Driver::Overlay {
            return Err(ApiError::bad(format!(
                "network `{network}` is not an overlay; VTEPs belong to overlay networks"
            )));
        }
        if super::is_encrypted(&n.record.options)? {
            return Err(ApiError::bad(format!(
                "network `{network}` is encrypted; a foreign VXLAN VTEP would receive its frames in the clear, so none is admitted"
            )));
        }
        if n.static_vteps.contains_key(&addr) {
            return Err(ApiError::conflict(format!(
                "VTEP {addr} is already admitted to `{network}`"
            )));
        }
        let dp = n.id.expect("overlays switch frames");
        let port = self.alloc_port();
        self.datapath
            .add_vtep(port, static_vtep(dp, addr))
            .map_err(ApiError::from)?;
        let n = self.networks.get_mut(network).expect("checked");
        n.static_vteps.insert(addr, port);
        n.record.static_vteps.push(addr);
        let rec = n.record.clone();
        self.store.put_network(&rec).map_err(internal)?;
        tracing::info!(network, %addr, "foreign VTEP admitted");
        Ok(addr.to_string())
    }

    pub(super) fn vtep_remove(&mut self, network: &str, addr: &str) -> Result<String, ApiError> {
        let addr = parse_addr(addr, overlay::vxlan::DEFAULT_PORT, "VTEP")?;
        let n = self
            .networks
            .get_mut(network)
            .ok_or_else(|| ApiError::not_found(format!("network `{network}` not found")))?;
        let port = n.static_vteps.remove(&addr).ok_or_else(|| {
            ApiError::not_found(format!("VTEP {addr} is not admitted to `{network}`"))
        })?;
        n.record.static_vteps.retain(|a| *a != addr);
        let rec = n.record.clone();
        let _ = self.datapath.remove_port(port);
        self.store.put_network(&rec).map_err(internal)?;
        Ok(addr.to_string())
    }
}

/// A remote endpoint's addresses, IPv4 first.
pub(super) fn ips_of(r: &overlay::PublishedEndpoint) -> Vec<IpAddr> {
    r.ipv4
        .map(IpAddr::V4)
        .into_iter()
        .chain(r.ipv6.map(IpAddr::V6))
        .collect()
}

/// The gossip tag by which a member says it takes inner frames whose
/// checksum is partial ([`Vtep::partial_csum`]); one without it (an older
/// vswitchd) gets complete checksums.
pub(super) const PARTIAL_CSUM_TAG: &str = "inner-csum";
/// [`PARTIAL_CSUM_TAG`]'s value.
const PARTIAL_CSUM_YES: &str = "partial";

/// Where another host's tunnel ends, and what it takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct MemberTunnel {
    /// Its tunnel address.
    pub(super) addr: SocketAddr,
    /// It completes partial inner checksums ([`PARTIAL_CSUM_TAG`]).
    pub(super) partial_csum: bool,
}

impl MemberTunnel {
    fn of(meta: &overlay::MemberMeta) -> MemberTunnel {
        MemberTunnel {
            addr: meta.tunnel_addr,
            partial_csum: meta.tags.get(PARTIAL_CSUM_TAG).map(String::as_str)
                == Some(PARTIAL_CSUM_YES),
        }
    }
}

/// The tunnel port toward another host of the cluster, over QUIC for an
/// encrypted network.
fn member_vtep(network: NetworkId, t: MemberTunnel, encrypted: bool) -> Vtep<NetworkId> {
    Vtep {
        network,
        remote: t.addr,
        kind: VtepKind::Member,
        partial_csum: t.partial_csum,
        transport: if encrypted {
            Transport::Quic
        } else {
            Transport::Udp
        },
    }
}

/// The tunnel port toward a foreign VTEP admitted by hand (plain VXLAN).
pub(super) fn static_vtep(network: NetworkId, remote: SocketAddr) -> Vtep<NetworkId> {
    Vtep {
        network,
        remote,
        kind: VtepKind::Static,
        transport: Transport::Udp,
        partial_csum: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(tags: &[(&str, &str)]) -> overlay::MemberMeta {
        overlay::MemberMeta {
            name: "h2".into(),
            gossip_addr: "192.0.2.2:7946".parse().unwrap(),
            tunnel_addr: "192.0.2.2:4789".parse().unwrap(),
            tags: tags
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    /// Only a member that says it takes partial inner checksums gets them;
    /// one without the tag (an older vswitchd) or with another value gets
    /// complete ones, and its tunnel port is a member's either way.
    #[test]
    fn partial_checksums_follow_the_members_tag() {
        let yes = MemberTunnel::of(&meta(&[(PARTIAL_CSUM_TAG, PARTIAL_CSUM_YES)]));
        let absent = MemberTunnel::of(&meta(&[]));
        let other = MemberTunnel::of(&meta(&[(PARTIAL_CSUM_TAG, "complete")]));
        assert!(yes.partial_csum);
        assert!(!absent.partial_csum && !other.partial_csum);
        assert_eq!(yes.addr, absent.addr);
        let v = member_vtep(NetworkId(1), yes, true);
        assert!(v.partial_csum && v.kind == VtepKind::Member);
        assert_eq!(v.transport, Transport::Quic);
        assert!(!member_vtep(NetworkId(1), absent, false).partial_csum);
    }

    /// The tags this host publishes say it takes them, and fit in a
    /// member's meta with the rest.
    #[test]
    fn this_host_publishes_the_tag() {
        let m = meta(&[
            (CERT_TAG, &"ab".repeat(32)),
            (quic::PORT_TAG, "4790"),
            (PARTIAL_CSUM_TAG, PARTIAL_CSUM_YES),
        ]);
        assert!(MemberTunnel::of(&m).partial_csum);
        assert!(postcard::to_allocvec(&m).unwrap().len() <= overlay::gossip::MAX_META_LEN);
    }
}
