//! Cluster-wide IPAM for overlay networks: each host allocates only from
//! address ranges it owns ([`ipam::cluster::ClusterAllocator`]); ownership
//! moves between hosts through messages carried by the gossip transport
//! (sealed with the cluster key like every gossip datagram).
//!
//! The allocator's state is stored before anything it produced is sent, so
//! a restarted host never hands out addresses it gave away.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use ipam::cluster::{
    ClusterAllocator, ClusterConfig, ClusterError, Destination, Event, HostName, Message,
};
use serde::{Deserialize, Serialize};

use super::{ApiError, Controller};
use crate::api::Driver;

/// First byte of an application datagram carrying IPAM messages.
pub(super) const APP_IPAM: u8 = b'I';

/// An IPAM message for one network.
#[derive(Debug, Serialize, Deserialize)]
struct Envelope {
    /// The network's id (the same on every host).
    network: String,
    /// [`Message::encode`].
    message: Vec<u8>,
}

fn host(name: &str) -> Result<HostName, ApiError> {
    HostName::new(name).map_err(|e| ApiError::bad(e.to_string()))
}

fn cluster_err(e: ClusterError) -> ApiError {
    match e {
        // Space was asked for: the API server retries the request.
        ClusterError::AwaitingSpace { .. } => ApiError::new(503, e.to_string()),
        other => ApiError::bad(other.to_string()),
    }
}

impl Controller {
    /// The allocator of an overlay network: from the stored state, or new
    /// with every range owned by the network's creator.
    pub(super) fn make_allocator(
        &self,
        name: &str,
        creator: &str,
    ) -> Result<ClusterAllocator, ApiError> {
        let net = self.network(name)?;
        let configs = net.record.subnet_configs();
        let me = host(&self.config.node_name)?;
        let config = ClusterConfig {
            quarantine: self.config.ipam_quarantine,
            ..ClusterConfig::default()
        };
        let stored = self
            .store
            .get_ipam(name)
            .map_err(|e| ApiError::internal(e.to_string()))?;
        let alloc = match stored.as_deref().map(Message::decode) {
            Some(Ok(Message::Update(state))) => ClusterAllocator::restore(
                me,
                &net.record.id,
                &configs,
                &state,
                config,
                Instant::now(),
            ),
            _ => ClusterAllocator::new(me, &net.record.id, &configs, &[host(creator)?], config),
        };
        alloc.map_err(cluster_err)
    }

    /// An address on an overlay network: dynamic, or `wanted` if this host
    /// owns it.
    pub(super) fn overlay_allocate(
        &mut self,
        network: &str,
        want: super::drivers::Want,
    ) -> Result<IpAddr, ApiError> {
        use super::drivers::Want;
        let now = Instant::now();
        let net = self
            .networks
            .get_mut(network)
            .ok_or_else(|| ApiError::not_found(network))?;
        let alloc = net
            .alloc
            .as_mut()
            .ok_or_else(|| ApiError::internal("overlay network without an allocator"))?;
        let r = match want {
            Want::Static(ip) => alloc.allocate_static(ip, now),
            Want::Any(family) => alloc.allocate(family, now),
        };
        self.flush_allocator(network);
        r.map_err(cluster_err)
    }

    pub(super) fn overlay_release(&mut self, network: &str, ip: IpAddr) {
        if let Some(alloc) = self
            .networks
            .get_mut(network)
            .and_then(|n| n.alloc.as_mut())
        {
            if let Err(e) = alloc.release(ip, Instant::now()) {
                tracing::warn!(%ip, error = %e, "releasing overlay address");
            }
        }
        self.flush_allocator(network);
    }

    /// Stores the allocator's state, then sends what it produced.
    pub(super) fn flush_allocator(&mut self, network: &str) {
        let Some(net) = self.networks.get_mut(network) else {
            return;
        };
        let id = net.record.id.clone();
        let Some(alloc) = net.alloc.as_mut() else {
            return;
        };
        let mut out = Vec::new();
        while let Some(t) = alloc.poll_transmit() {
            out.push(t);
        }
        while let Some(ev) = alloc.poll_event() {
            match ev {
                Event::SpaceArrived { family } => {
                    tracing::info!(network, ?family, "address space arrived")
                }
                Event::RequestFailed { family, error } => {
                    tracing::warn!(network, ?family, %error, "no host gave address space")
                }
                Event::OwnershipLost { ranges, in_use } => tracing::warn!(
                    network, ?ranges, ?in_use,
                    "another host took over address ranges of this one (a partition longer than the quarantine, or a manual reclaim); endpoints using them should be reconnected"
                ),
            }
        }
        let state = Message::Update(alloc.state()).encode();
        if let Err(e) = self.store.put_ipam(network, &state) {
            // Not stored: do not tell anyone what we cannot remember.
            tracing::error!(network, error = %e, "storing IPAM state; not sending");
            return;
        }
        let out = out.into_iter().map(|t| (t.to, t.message)).collect();
        self.send_ipam(&id, out);
    }

    /// Sends IPAM messages of the network with id `network_id` to other
    /// members, sealed by gossip.
    fn send_ipam(&self, network_id: &str, messages: Vec<(Destination, Message)>) {
        let Some(cluster) = &self.gossip else {
            return;
        };
        if messages.is_empty() {
            return;
        }
        cluster.with(|g, _| {
            let live: Vec<(String, SocketAddr)> = g
                .members()
                .into_iter()
                .filter(|m| !m.local && m.state != overlay::MemberState::Down)
                .map(|m| (m.meta.name, m.meta.gossip_addr))
                .collect();
            for (to, message) in messages {
                let env = Envelope {
                    network: network_id.to_string(),
                    message: message.encode(),
                };
                let mut payload = vec![APP_IPAM];
                payload.extend(postcard::to_stdvec(&env).unwrap_or_default());
                for (name, addr) in &live {
                    let wanted = match &to {
                        Destination::All => true,
                        Destination::Host(h) => h.as_str() == name,
                    };
                    if wanted {
                        g.send_app(*addr, &payload);
                    }
                }
            }
        });
    }

    /// An IPAM datagram from another member.
    pub(super) fn handle_ipam_app(&mut self, from: SocketAddr, payload: &[u8]) {
        let Ok(env) = postcard::from_bytes::<Envelope>(payload) else {
            tracing::debug!(%from, "undecodable IPAM message");
            return;
        };
        let Some(name) = self
            .networks
            .values()
            .find(|n| n.record.id == env.network && n.alloc.is_some())
            .map(|n| n.record.name.clone())
        else {
            return;
        };
        let net = self.networks.get_mut(&name).expect("found");
        let alloc = net.alloc.as_mut().expect("checked");
        if let Err(e) = alloc.handle_bytes(&env.message, Instant::now()) {
            tracing::debug!(%from, error = %e, "bad IPAM message");
        }
        self.flush_allocator(&name);
    }

    /// Sends this host's ownership view to everyone (after a member came up,
    /// so a returning host converges).
    pub(super) fn advertise_ipam(&self) {
        for net in self.networks.values() {
            if let Some(alloc) = &net.alloc {
                let chunks = alloc
                    .state_chunks(32)
                    .into_iter()
                    .map(|c| (Destination::All, Message::Update(c)))
                    .collect();
                self.send_ipam(&net.record.id, chunks);
            }
        }
    }

    /// Timers: request retries, adverts, reclaims after the quarantine.
    pub fn tick(&mut self) {
        let now = Instant::now();
        let names: Vec<String> = self
            .networks
            .values()
            .filter(|n| n.alloc.is_some())
            .map(|n| n.record.name.clone())
            .collect();
        let live = self.live_hosts();
        let dead: Vec<(String, Instant)> = self
            .dead_since
            .iter()
            .map(|(h, t)| (h.clone(), *t))
            .collect();
        for name in names {
            let Some(alloc) = self.networks.get_mut(&name).and_then(|n| n.alloc.as_mut()) else {
                continue;
            };
            if alloc.poll_timeout().is_some_and(|t| t <= now) {
                alloc.handle_timeout(now);
            }
            for (h, since) in &dead {
                let Ok(dead_host) = HostName::new(h.clone()) else {
                    continue;
                };
                if alloc.table().owned_by(h).is_empty() {
                    continue;
                }
                match alloc.reclaim(&dead_host, &live, *since, now) {
                    Ok(r) => {
                        tracing::info!(network = %name, host = %h, heir = %r.heir, "reclaimed a dead host's address ranges")
                    }
                    Err(ClusterError::Quarantined { .. }) => {}
                    Err(e) => tracing::debug!(network = %name, host = %h, error = %e, "reclaim"),
                }
            }
            self.flush_allocator(&name);
        }
    }

    fn live_hosts(&self) -> Vec<HostName> {
        let Some(cluster) = &self.gossip else {
            return Vec::new();
        };
        cluster.with(|g, _| {
            g.members()
                .into_iter()
                .filter(|m| m.state != overlay::MemberState::Down)
                .filter_map(|m| HostName::new(m.meta.name).ok())
                .collect()
        })
    }

    /// `vswitch ipam reclaim HOST`: take a dead host's ranges now.
    pub(super) fn ipam_reclaim(
        &mut self,
        dead: &str,
    ) -> Result<BTreeMap<String, String>, ApiError> {
        let dead_host = host(dead)?;
        let live = self.live_hosts();
        if live.contains(&dead_host) {
            return Err(ApiError::conflict(format!(
                "host `{dead}` is alive in the cluster; only a dead host's ranges can be reclaimed"
            )));
        }
        let names: Vec<String> = self
            .networks
            .values()
            .filter(|n| n.record.driver == Driver::Overlay && n.alloc.is_some())
            .map(|n| n.record.name.clone())
            .collect();
        let mut out = BTreeMap::new();
        let now = Instant::now();
        for name in names {
            let alloc = self
                .networks
                .get_mut(&name)
                .and_then(|n| n.alloc.as_mut())
                .expect("listed");
            match alloc.reclaim_now(&dead_host, &live, now) {
                Ok(r) => {
                    out.insert(name.clone(), r.heir.to_string());
                }
                Err(e) => return Err(cluster_err(e)),
            }
            self.flush_allocator(&name);
        }
        tracing::info!(
            host = dead,
            networks = out.len(),
            "address ranges reclaimed by hand"
        );
        Ok(out)
    }
}
