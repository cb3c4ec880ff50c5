//! The cluster directory: overlay networks, the endpoints every host
//! publishes and the cluster-wide policies, replicated by gossip without a
//! key-value store.
//!
//! # What is replicated, and how versions work
//!
//! - **Networks** are global. Each is keyed by name and versioned by a
//!   [`NetVersion`]: a Lamport clock and the name of the host that made the
//!   change, compared as a pair, so every host orders concurrent changes the
//!   same way. Removal is a tombstone with a version; it wins over every
//!   older version and loses to a newer re-creation.
//! - **Endpoints** belong to the host that created them (their *origin*).
//!   Only the origin changes them; every change takes the next number of the
//!   origin's sequence, under the origin's boot *generation* (which grows at
//!   every restart of its daemon). A change is applied only if its
//!   `(generation, seq)` is newer than what is held for that key, and
//!   removals are tombstones with a sequence number too, so a late,
//!   duplicated or reordered message never brings back an old endpoint.
//!   Records of an older generation are dropped as soon as a newer
//!   generation of the origin is seen: a restarted host republishes what it
//!   still has.
//! - **Policies** are global like networks: keyed by name, versioned by a
//!   [`NetVersion`], the last writer winning, removal a tombstone. Their
//!   content is opaque here (the daemon encodes and checks it); the
//!   directory only bounds its size and number.
//!
//! Changes travel as [`Delta`]s in foca's custom broadcasts (see
//! [`crate::gossip`]). A periodic anti-entropy exchange repairs what the
//! broadcasts missed: a host sends a random member a digest (per origin:
//! generation, highest sequence and a checksum of its live entries; for the
//! networks and for the policies: a checksum of all versions), and the peer
//! answers with the records the sender lacks and its own digest, so both
//! sides converge.
//!
//! # Visibility
//!
//! Endpoints of an origin that is not a live member are kept but hidden: a
//! host declared down disappears from [`Directory::endpoints`] at once (with
//! [`DirectoryEvent::EndpointRemoved`] events) and comes back when it is up
//! again. Hidden origins are forgotten after a while.
//!
//! # VNIs
//!
//! Each live network gets a VNI unique in the cluster, computed the same way
//! on every host from the set of live networks: networks are taken in order
//! of creation (`created` version, then name); each takes the VNI it asked
//! for ([`NetworkSpec::vni`]) if it is free, otherwise the first free value
//! of a pseudo-random sequence derived from its id. Since every host holds
//! the same set once gossip converges, every host computes the same VNIs
//! without coordination; the only case in which a network's VNI changes is
//! a collision between networks created on two sides of a partition, where
//! the later-created one moves ([`DirectoryEvent::NetworkUpsert`] says so).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::{Duration, Instant};

use ipnet::IpNet;
use rand::RngExt;
use serde::{Deserialize, Serialize};

use crate::vxlan::Vni;

/// The largest encoded [`Delta`]: small enough to ride in a gossip packet
/// next to foca's own header.
pub const MAX_DELTA_LEN: usize = 768;
/// Networks (live and tombstones) the directory holds at most.
pub const MAX_NETWORKS: usize = 4096;
/// Endpoint entries (live and tombstones) held per origin at most.
pub const MAX_ENDPOINTS_PER_ORIGIN: usize = 8192;
/// Origins (hosts) the directory holds at most.
pub const MAX_ORIGINS: usize = 4096;
/// Policies (live and tombstones) the directory holds at most.
pub const MAX_POLICIES: usize = 4096;

/// What a directory operation can refuse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DirectoryError {
    /// The record does not fit in one gossip datagram.
    #[error("{what} is {len} bytes encoded; at most {MAX_DELTA_LEN} fit in a gossip packet (fewer aliases or labels, shorter names)")]
    TooLarge {
        /// What was too large.
        what: &'static str,
        /// Its encoded length.
        len: usize,
    },
    /// A table is full.
    #[error("the cluster directory already holds {0} {1}; remove some first")]
    Full(usize, &'static str),
    /// The name of a network or policy is empty.
    #[error("a {0} needs a name")]
    NoName(&'static str),
}

/// The version of a network or a policy: a Lamport clock and the host that
/// made the change. Ordered by clock, then by origin name, so all hosts
/// agree.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct NetVersion {
    /// Lamport clock.
    pub clock: u64,
    /// The host that made the change.
    pub origin: String,
}

/// One IPAM block of a network, as `docker network inspect` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct IpamConfig {
    /// The subnet.
    pub subnet: IpNet,
    /// The part of the subnet addresses are given from, if narrower.
    pub ip_range: Option<IpNet>,
    /// The gateway address.
    pub gateway: Option<IpAddr>,
}

/// An overlay network, as its creator described it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkSpec {
    /// Name, unique in the cluster.
    pub name: String,
    /// Id (Docker-style 64 hex digits), unique for each creation.
    pub id: String,
    /// Subnets, ranges and gateways.
    pub ipam: Vec<IpamConfig>,
    /// Whether IPv6 is on.
    pub ipv6: bool,
    /// Whether the network has no egress.
    pub internal: bool,
    /// The MTU asked for with `--mtu`, if any.
    pub mtu: Option<u32>,
    /// A VNI asked for (for example to meet a kernel VTEP); granted unless
    /// an older network holds it.
    pub vni: Option<Vni>,
    /// `--opt` values.
    pub options: BTreeMap<String, String>,
    /// `--label` values.
    pub labels: BTreeMap<String, String>,
    /// Creation time as the creator's clock wrote it (RFC 3339).
    pub created: String,
}

/// An endpoint as its host publishes it in the directory: one container's
/// attachment to one network.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PublishedEndpoint {
    /// The id of the network ([`NetworkSpec::id`]).
    pub network: String,
    /// Container name.
    pub container: String,
    /// DNS aliases.
    pub aliases: Vec<String>,
    /// MAC address.
    pub mac: [u8; 6],
    /// IPv4 address.
    pub ipv4: Option<Ipv4Addr>,
    /// IPv6 address.
    pub ipv6: Option<Ipv6Addr>,
    /// The container's labels, which other hosts' policies select by.
    pub labels: BTreeMap<String, String>,
}

/// One replicated change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Delta {
    /// A network created, changed (`spec` is `Some`) or removed (`None`).
    Network {
        /// The network's name (the key).
        name: String,
        /// This change's version.
        version: NetVersion,
        /// The version of the creation this change belongs to.
        created: NetVersion,
        /// The spec, or `None` for a tombstone.
        spec: Option<NetworkSpec>,
    },
    /// An endpoint published (`record` is `Some`) or withdrawn (`None`).
    Endpoint {
        /// The host that owns it.
        origin: String,
        /// The origin's boot generation.
        generation: u64,
        /// The origin's sequence number for this change.
        seq: u64,
        /// The endpoint's key (its id), unique within the origin.
        key: String,
        /// The record, or `None` for a tombstone.
        record: Option<PublishedEndpoint>,
    },
    /// A cluster-wide policy created, changed (`policy` is `Some`) or
    /// removed (`None`).
    Policy {
        /// The policy's name (the key).
        name: String,
        /// This change's version.
        version: NetVersion,
        /// The policy as the daemon encodes it, or `None` for a tombstone.
        policy: Option<Vec<u8>>,
    },
}

impl Delta {
    /// postcard encoding.
    pub fn encode(&self) -> Vec<u8> {
        // Serializing these plain data types into a Vec cannot fail.
        postcard::to_stdvec(self).unwrap_or_default()
    }

    /// What identifies this change for foca's dissemination queue.
    pub(crate) fn key(&self) -> DeltaKey {
        match self {
            Delta::Network { name, version, .. } => DeltaKey::Network {
                name: name.clone(),
                version: version.clone(),
            },
            Delta::Endpoint {
                origin,
                generation,
                seq,
                key,
                ..
            } => DeltaKey::Endpoint {
                origin: origin.clone(),
                key: key.clone(),
                version: (*generation, *seq),
            },
            Delta::Policy { name, version, .. } => DeltaKey::Policy {
                name: name.clone(),
                version: version.clone(),
            },
        }
    }
}

/// The identity and version of a [`Delta`]: a newer change to the same
/// item supersedes an older one still waiting to be disseminated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum DeltaKey {
    Network {
        name: String,
        version: NetVersion,
    },
    Endpoint {
        origin: String,
        key: String,
        version: (u64, u64),
    },
    Policy {
        name: String,
        version: NetVersion,
    },
}

impl foca::Invalidates for DeltaKey {
    fn invalidates(&self, other: &Self) -> bool {
        match (self, other) {
            (
                DeltaKey::Network { name, version },
                DeltaKey::Network {
                    name: n2,
                    version: v2,
                },
            ) => name == n2 && version >= v2,
            (
                DeltaKey::Endpoint {
                    origin,
                    key,
                    version,
                },
                DeltaKey::Endpoint {
                    origin: o2,
                    key: k2,
                    version: v2,
                },
            ) => origin == o2 && key == k2 && version >= v2,
            (
                DeltaKey::Policy { name, version },
                DeltaKey::Policy {
                    name: n2,
                    version: v2,
                },
            ) => name == n2 && version >= v2,
            _ => false,
        }
    }
}

/// What changed, for the daemon to act on (MAC tables, DNS, tunnels).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DirectoryEvent {
    /// A network exists (new, changed, or given another VNI).
    NetworkUpsert {
        /// Its spec.
        spec: NetworkSpec,
        /// The VNI it uses.
        vni: Vni,
    },
    /// A network was removed.
    NetworkRemoved {
        /// Its name.
        name: String,
        /// Its id.
        id: String,
    },
    /// An endpoint is visible (new, changed, or its host is up again).
    EndpointUpsert {
        /// The host it lives on.
        host: String,
        /// Its key.
        key: String,
        /// The record.
        record: PublishedEndpoint,
    },
    /// An endpoint is gone (withdrawn, or its host is down).
    EndpointRemoved {
        /// The host it lived on.
        host: String,
        /// Its key.
        key: String,
        /// The record it had, so the daemon need not keep its own copy.
        record: PublishedEndpoint,
    },
    /// A policy has a new version (new, or changed).
    PolicyUpsert {
        /// Its name.
        name: String,
        /// The version.
        version: NetVersion,
        /// The policy as the daemon that made it encoded it: decode and
        /// check it before use, it may come from any member.
        bytes: Vec<u8>,
    },
    /// A policy was removed.
    PolicyRemoved {
        /// Its name.
        name: String,
    },
}

/// A live network as the directory holds it.
#[derive(Debug, Clone, Copy)]
pub struct NetworkView<'a> {
    /// The spec.
    pub spec: &'a NetworkSpec,
    /// Its VNI in the cluster.
    pub vni: Vni,
    /// The version of its latest change.
    pub version: &'a NetVersion,
}

/// A live policy as the directory holds it.
#[derive(Debug, Clone, Copy)]
pub struct PolicyView<'a> {
    /// Its name.
    pub name: &'a str,
    /// The version of its latest change.
    pub version: &'a NetVersion,
    /// The policy, encoded.
    pub bytes: &'a [u8],
}

/// A visible endpoint.
#[derive(Debug, Clone, Copy)]
pub struct EndpointView<'a> {
    /// Its host.
    pub host: &'a str,
    /// Its key.
    pub key: &'a str,
    /// The record.
    pub record: &'a PublishedEndpoint,
}

/// Counters of applied and refused changes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DirectoryStats {
    /// Changes applied.
    pub applied: u64,
    /// Changes already known or older than what is held.
    pub stale: u64,
    /// Changes refused: a table full, records claiming to be ours, bad data.
    pub rejected: u64,
}

/// The outcome of applying one [`Delta`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// New information, now held.
    New,
    /// Known already, or older than what is held.
    Stale,
    /// Refused.
    Rejected,
}

#[derive(Debug, Clone)]
struct NetEntry {
    version: NetVersion,
    created: NetVersion,
    spec: Option<NetworkSpec>,
    removed_at: Option<Instant>,
}

#[derive(Debug, Clone)]
struct PolicyEntry {
    version: NetVersion,
    policy: Option<Vec<u8>>,
    removed_at: Option<Instant>,
}

#[derive(Debug, Clone)]
struct EpEntry {
    seq: u64,
    record: Option<PublishedEndpoint>,
    removed_at: Option<Instant>,
}

#[derive(Debug, Clone)]
struct Origin {
    generation: u64,
    max_seq: u64,
    /// Wrapping sum of `entry_hash` over live entries.
    checksum: u64,
    visible: bool,
    hidden_since: Option<Instant>,
    /// Highest sequence of a tombstone dropped by garbage collection:
    /// tombstones at or below it for absent keys are not taken back.
    tomb_floor: u64,
    entries: BTreeMap<String, EpEntry>,
}

impl Origin {
    fn new(generation: u64, visible: bool, now: Instant) -> Origin {
        Origin {
            generation,
            max_seq: 0,
            checksum: 0,
            visible,
            hidden_since: if visible { None } else { Some(now) },
            tomb_floor: 0,
            entries: BTreeMap::new(),
        }
    }

    fn summary(&self, name: &str) -> OriginSummary {
        OriginSummary {
            origin: name.to_owned(),
            generation: self.generation,
            max_seq: self.max_seq,
            checksum: self.checksum,
        }
    }
}

/// Per-origin part of a digest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct OriginSummary {
    pub origin: String,
    pub generation: u64,
    pub max_seq: u64,
    pub checksum: u64,
}

/// The part of a digest that sums up a last-writer-wins table (the
/// networks, the policies): how many entries, live or not, the highest
/// clock, and a checksum of every entry's name, version and liveness.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct TableSummary {
    pub count: u32,
    pub max_clock: u64,
    pub checksum: u64,
}

/// The head of one digest chunk; origin summaries follow it. The chunk
/// covers the origins in `first..=last` (`last: None` = to the end).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct DigestHead {
    pub from: String,
    pub reply: bool,
    pub first: String,
    pub last: Option<String>,
    pub networks: Option<TableSummary>,
    /// Like `networks`, for the policies; in the first chunk only.
    pub policies: Option<TableSummary>,
}

/// The replicated cluster state held by one host.
#[derive(Debug, Clone)]
pub struct Directory {
    local: String,
    generation: u64,
    clock: u64,
    seq: u64,
    now: Instant,
    networks: BTreeMap<String, NetEntry>,
    net_tomb_floor: Option<NetVersion>,
    vnis: BTreeMap<String, Vni>,
    policies: BTreeMap<String, PolicyEntry>,
    /// Like `net_tomb_floor`, for the policies.
    policy_tomb_floor: Option<NetVersion>,
    origins: BTreeMap<String, Origin>,
    events: VecDeque<DirectoryEvent>,
    stats: DirectoryStats,
}

impl Directory {
    /// An empty directory for host `local`, whose daemon started with boot
    /// generation `generation` (it must grow at every restart). The Lamport
    /// clock starts at `generation` too, so a restarted host's changes sort
    /// after its earlier ones.
    pub fn new(local: &str, generation: u64, now: Instant) -> Directory {
        let mut origins = BTreeMap::new();
        origins.insert(local.to_owned(), Origin::new(generation, true, now));
        Directory {
            local: local.to_owned(),
            generation,
            clock: generation,
            seq: 0,
            now,
            networks: BTreeMap::new(),
            net_tomb_floor: None,
            vnis: BTreeMap::new(),
            policies: BTreeMap::new(),
            policy_tomb_floor: None,
            origins,
            events: VecDeque::new(),
            stats: DirectoryStats::default(),
        }
    }

    /// This host's name.
    pub fn local_host(&self) -> &str {
        &self.local
    }

    /// Counters.
    pub fn stats(&self) -> DirectoryStats {
        self.stats
    }

    pub(crate) fn set_now(&mut self, now: Instant) {
        if now > self.now {
            self.now = now;
        }
    }

    /// The next change for the daemon, if any.
    pub fn poll_event(&mut self) -> Option<DirectoryEvent> {
        self.events.pop_front()
    }

    // ---- reads -------------------------------------------------------

    /// Live networks, by name.
    pub fn networks(&self) -> impl Iterator<Item = NetworkView<'_>> {
        self.networks
            .iter()
            .filter_map(|(name, e)| self.view(name, e))
    }

    /// A live network by name.
    pub fn network(&self, name: &str) -> Option<NetworkView<'_>> {
        self.networks.get(name).and_then(|e| self.view(name, e))
    }

    /// The live network that uses `vni`.
    pub fn network_by_vni(&self, vni: Vni) -> Option<NetworkView<'_>> {
        let (name, _) = self.vnis.iter().find(|(_, v)| **v == vni)?;
        self.network(name)
    }

    fn view<'a>(&'a self, name: &str, e: &'a NetEntry) -> Option<NetworkView<'a>> {
        Some(NetworkView {
            spec: e.spec.as_ref()?,
            vni: *self.vnis.get(name)?,
            version: &e.version,
        })
    }

    /// Visible endpoints: this host's and those of live members.
    pub fn endpoints(&self) -> impl Iterator<Item = EndpointView<'_>> {
        self.origins
            .iter()
            .filter(|(_, o)| o.visible)
            .flat_map(|(host, o)| {
                o.entries.iter().filter_map(move |(key, e)| {
                    Some(EndpointView {
                        host,
                        key,
                        record: e.record.as_ref()?,
                    })
                })
            })
    }

    /// Visible endpoints on the network with id `network_id`.
    pub fn endpoints_on<'a>(
        &'a self,
        network_id: &'a str,
    ) -> impl Iterator<Item = EndpointView<'a>> + 'a {
        self.endpoints()
            .filter(move |e| e.record.network == network_id)
    }

    /// Hosts with at least one visible endpoint on the network: where its
    /// broadcasts go (head-end replication). This host is included when it
    /// has endpoints there.
    pub fn hosts_on(&self, network_id: &str) -> BTreeSet<&str> {
        self.endpoints()
            .filter(|e| e.record.network == network_id)
            .map(|e| e.host)
            .collect()
    }

    /// A visible endpoint by host and key.
    pub fn endpoint(&self, host: &str, key: &str) -> Option<&PublishedEndpoint> {
        let o = self.origins.get(host).filter(|o| o.visible)?;
        o.entries.get(key)?.record.as_ref()
    }

    /// Whether the host's endpoints are visible.
    pub fn is_visible(&self, host: &str) -> bool {
        self.origins.get(host).is_some_and(|o| o.visible)
    }

    /// Live policies, by name.
    pub fn policies(&self) -> impl Iterator<Item = PolicyView<'_>> {
        self.policies
            .iter()
            .filter_map(|(name, e)| policy_view(name, e))
    }

    /// A live policy by name.
    pub fn policy(&self, name: &str) -> Option<PolicyView<'_>> {
        self.policies
            .get_key_value(name)
            .and_then(|(name, e)| policy_view(name, e))
    }

    // ---- local changes -----------------------------------------------

    /// The change that creates or updates network `spec` (not yet applied:
    /// apply it with [`Directory::apply`], or through gossip).
    pub fn network_upsert(&mut self, spec: NetworkSpec) -> Result<Delta, DirectoryError> {
        if spec.name.is_empty() {
            return Err(DirectoryError::NoName("network"));
        }
        let version = self.tick();
        let created = match self.networks.get(&spec.name) {
            Some(NetEntry {
                created,
                spec: Some(old),
                ..
            }) if old.id == spec.id => created.clone(),
            _ => {
                if !self.networks.contains_key(&spec.name) && self.networks.len() >= MAX_NETWORKS {
                    return Err(DirectoryError::Full(MAX_NETWORKS, "networks"));
                }
                version.clone()
            }
        };
        let delta = Delta::Network {
            name: spec.name.clone(),
            version,
            created,
            spec: Some(spec),
        };
        check_len(&delta, "the network spec")?;
        Ok(delta)
    }

    /// The change that removes network `name`, if it is live.
    pub fn network_remove(&mut self, name: &str) -> Option<Delta> {
        let created = self.networks.get(name)?.created.clone();
        self.networks.get(name)?.spec.as_ref()?;
        Some(Delta::Network {
            name: name.to_owned(),
            version: self.tick(),
            created,
            spec: None,
        })
    }

    /// Whether policy `name` encoded as `bytes` could be published: it has
    /// a name, the table has room for it, and its change fits in a gossip
    /// packet. Changes nothing.
    pub fn policy_check(&self, name: &str, bytes: &[u8]) -> Result<(), DirectoryError> {
        if name.is_empty() {
            return Err(DirectoryError::NoName("policy"));
        }
        if !self.policies.contains_key(name) && self.policies.len() >= MAX_POLICIES {
            return Err(DirectoryError::Full(MAX_POLICIES, "policies"));
        }
        // The largest version this host could give it.
        let delta = Delta::Policy {
            name: name.to_owned(),
            version: NetVersion {
                clock: u64::MAX,
                origin: self.local.clone(),
            },
            policy: Some(bytes.to_vec()),
        };
        check_len(&delta, "the policy")
    }

    /// The change that creates or replaces policy `name`, encoded as
    /// `bytes` (not yet applied: apply it with [`Directory::apply`], or
    /// through gossip).
    pub fn policy_upsert(&mut self, name: &str, bytes: Vec<u8>) -> Result<Delta, DirectoryError> {
        self.policy_check(name, &bytes)?;
        Ok(Delta::Policy {
            name: name.to_owned(),
            version: self.tick(),
            policy: Some(bytes),
        })
    }

    /// The change that removes policy `name`, if it is live.
    pub fn policy_remove(&mut self, name: &str) -> Option<Delta> {
        self.policies.get(name)?.policy.as_ref()?;
        Some(Delta::Policy {
            name: name.to_owned(),
            version: self.tick(),
            policy: None,
        })
    }

    /// A change to policy `name` made earlier at `version` (by this host or
    /// another), as the daemon kept it: offered again after a restart, it
    /// wins or loses against what the cluster holds by its version.
    pub fn policy_restore(
        &mut self,
        name: &str,
        version: NetVersion,
        policy: Option<Vec<u8>>,
    ) -> Result<Delta, DirectoryError> {
        if name.is_empty() {
            return Err(DirectoryError::NoName("policy"));
        }
        let delta = Delta::Policy {
            name: name.to_owned(),
            version,
            policy,
        };
        check_len(&delta, "the policy")?;
        Ok(delta)
    }

    /// The change that publishes this host's endpoint `key`.
    pub fn endpoint_upsert(
        &mut self,
        key: &str,
        record: PublishedEndpoint,
    ) -> Result<Delta, DirectoryError> {
        self.endpoint_room(key)?;
        let delta = Delta::Endpoint {
            origin: self.local.clone(),
            generation: self.generation,
            seq: self.seq + 1,
            key: key.to_owned(),
            record: Some(record),
        };
        check_len(&delta, "the endpoint record")?;
        self.seq += 1;
        Ok(delta)
    }

    /// Whether this host's endpoint `key` could be published as `record`:
    /// the table has room for it and its change fits in a gossip packet.
    /// Changes nothing.
    pub fn endpoint_check(
        &self,
        key: &str,
        record: &PublishedEndpoint,
    ) -> Result<(), DirectoryError> {
        self.endpoint_room(key)?;
        let delta = Delta::Endpoint {
            origin: self.local.clone(),
            generation: u64::MAX,
            seq: u64::MAX,
            key: key.to_owned(),
            record: Some(record.clone()),
        };
        check_len(&delta, "the endpoint record")
    }

    fn endpoint_room(&self, key: &str) -> Result<(), DirectoryError> {
        let local = &self.origins[&self.local];
        if !local.entries.contains_key(key) && local.entries.len() >= MAX_ENDPOINTS_PER_ORIGIN {
            return Err(DirectoryError::Full(MAX_ENDPOINTS_PER_ORIGIN, "endpoints"));
        }
        Ok(())
    }

    /// The change that withdraws this host's endpoint `key`, if published.
    pub fn endpoint_remove(&mut self, key: &str) -> Option<Delta> {
        self.origins[&self.local]
            .entries
            .get(key)?
            .record
            .as_ref()?;
        self.seq += 1;
        Some(Delta::Endpoint {
            origin: self.local.clone(),
            generation: self.generation,
            seq: self.seq,
            key: key.to_owned(),
            record: None,
        })
    }

    fn tick(&mut self) -> NetVersion {
        self.clock += 1;
        NetVersion {
            clock: self.clock,
            origin: self.local.clone(),
        }
    }

    // ---- merging -----------------------------------------------------

    /// Applies a change. `local` is true for changes this host made itself;
    /// changes to this host's endpoints from anyone else are refused.
    pub fn apply(&mut self, delta: Delta, local: bool) -> Applied {
        let result = match delta {
            Delta::Network {
                name,
                version,
                created,
                spec,
            } => self.apply_network(name, version, created, spec),
            Delta::Endpoint {
                origin,
                generation,
                seq,
                key,
                record,
            } => {
                if (origin == self.local) != local {
                    Applied::Rejected
                } else {
                    self.apply_endpoint(origin, generation, seq, key, record)
                }
            }
            Delta::Policy { .. } if encoded_len(&delta) > MAX_DELTA_LEN => Applied::Rejected,
            Delta::Policy {
                name,
                version,
                policy,
            } => self.apply_policy(name, version, policy),
        };
        match result {
            Applied::New => self.stats.applied += 1,
            Applied::Stale => self.stats.stale += 1,
            Applied::Rejected => self.stats.rejected += 1,
        }
        result
    }

    /// Whether `delta` is what is held now.
    #[cfg(test)]
    pub(crate) fn is_current(&self, delta: &Delta) -> bool {
        match delta {
            Delta::Network { name, version, .. } => self
                .networks
                .get(name)
                .is_some_and(|e| &e.version == version),
            Delta::Endpoint {
                origin,
                generation,
                seq,
                key,
                ..
            } => self.origins.get(origin).is_some_and(|o| {
                o.generation == *generation && o.entries.get(key).is_some_and(|e| e.seq == *seq)
            }),
            Delta::Policy { name, version, .. } => self
                .policies
                .get(name)
                .is_some_and(|e| &e.version == version),
        }
    }

    fn apply_policy(
        &mut self,
        name: String,
        version: NetVersion,
        policy: Option<Vec<u8>>,
    ) -> Applied {
        // Nothing the daemon could have published: no name, or no bytes.
        if name.is_empty() || policy.as_ref().is_some_and(Vec::is_empty) {
            return Applied::Rejected;
        }
        self.clock = self.clock.max(version.clock);
        let old = self.policies.get(&name);
        match old {
            Some(old) if old.version >= version => return Applied::Stale,
            None if policy.is_none() && self.policy_tomb_floor.as_ref() >= Some(&version) => {
                return Applied::Stale;
            }
            None if self.policies.len() >= MAX_POLICIES => return Applied::Rejected,
            _ => {}
        }
        let was_live = old.is_some_and(|o| o.policy.is_some());
        let event = match &policy {
            Some(bytes) => Some(DirectoryEvent::PolicyUpsert {
                name: name.clone(),
                version: version.clone(),
                bytes: bytes.clone(),
            }),
            None if was_live => Some(DirectoryEvent::PolicyRemoved { name: name.clone() }),
            None => None,
        };
        let removed_at = policy.is_none().then_some(self.now);
        self.policies.insert(
            name,
            PolicyEntry {
                version,
                policy,
                removed_at,
            },
        );
        self.events.extend(event);
        Applied::New
    }

    fn apply_network(
        &mut self,
        name: String,
        version: NetVersion,
        created: NetVersion,
        spec: Option<NetworkSpec>,
    ) -> Applied {
        if spec.as_ref().is_some_and(|s| s.name != name) || created > version {
            return Applied::Rejected;
        }
        self.clock = self.clock.max(version.clock);
        let old = self.networks.get(&name);
        match old {
            Some(old) if old.version >= version => return Applied::Stale,
            None if spec.is_none() && self.net_tomb_floor.as_ref() >= Some(&version) => {
                return Applied::Stale;
            }
            None if self.networks.len() >= MAX_NETWORKS => return Applied::Rejected,
            _ => {}
        }
        let old_spec = old.and_then(|o| o.spec.clone());
        let removed_at = spec.is_none().then_some(self.now);
        let live = spec.clone();
        self.networks.insert(
            name.clone(),
            NetEntry {
                version,
                created,
                spec,
                removed_at,
            },
        );
        let old_vnis = self.reassign_vnis();
        // Events: the changed network first, then any other network whose
        // VNI moved because of it.
        match (&old_spec, live) {
            (_, Some(spec)) => {
                let vni = self.vnis[&name];
                if old_spec.as_ref() != Some(&spec) || old_vnis.get(&name) != Some(&vni) {
                    self.events
                        .push_back(DirectoryEvent::NetworkUpsert { spec, vni });
                }
            }
            (Some(old), None) => self.events.push_back(DirectoryEvent::NetworkRemoved {
                name: name.clone(),
                id: old.id.clone(),
            }),
            (None, None) => {}
        }
        let moved: Vec<(NetworkSpec, Vni)> = self
            .vnis
            .iter()
            .filter(|(n, v)| **n != name && old_vnis.get(*n).is_some_and(|old| old != *v))
            .filter_map(|(n, v)| Some((self.networks.get(n)?.spec.clone()?, *v)))
            .collect();
        for (spec, vni) in moved {
            self.events
                .push_back(DirectoryEvent::NetworkUpsert { spec, vni });
        }
        Applied::New
    }

    /// Recomputes every live network's VNI; returns the previous map.
    fn reassign_vnis(&mut self) -> BTreeMap<String, Vni> {
        let mut live: Vec<(&NetVersion, &String, &NetworkSpec)> = self
            .networks
            .iter()
            .filter_map(|(n, e)| Some((&e.created, n, e.spec.as_ref()?)))
            .collect();
        live.sort_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
        let mut used = HashSet::new();
        let mut vnis = BTreeMap::new();
        for (_, name, spec) in live {
            let vni = spec.vni.filter(|v| !used.contains(v)).unwrap_or_else(|| {
                // At most MAX_NETWORKS VNIs are used out of 2^24, so a free
                // candidate comes up within a few tries.
                (0u32..)
                    .map(|i| vni_candidate(&spec.id, i))
                    .find(|v| !used.contains(v))
                    .unwrap_or(Vni::from_low_bits(1))
            });
            used.insert(vni);
            vnis.insert(name.clone(), vni);
        }
        std::mem::replace(&mut self.vnis, vnis)
    }

    fn apply_endpoint(
        &mut self,
        origin: String,
        generation: u64,
        seq: u64,
        key: String,
        record: Option<PublishedEndpoint>,
    ) -> Applied {
        let now = self.now;
        if !self.origins.contains_key(&origin) {
            if self.origins.len() >= MAX_ORIGINS {
                return Applied::Rejected;
            }
            self.origins
                .insert(origin.clone(), Origin::new(generation, false, now));
        }
        let Some(o) = self.origins.get_mut(&origin) else {
            return Applied::Rejected;
        };
        if generation < o.generation {
            return Applied::Stale;
        }
        if generation > o.generation {
            purge(&mut self.events, &origin, o);
            o.generation = generation;
        }
        let old = o.entries.get(&key);
        match old {
            Some(old) if old.seq >= seq => return Applied::Stale,
            None if record.is_none() && seq <= o.tomb_floor => return Applied::Stale,
            None if o.entries.len() >= MAX_ENDPOINTS_PER_ORIGIN => return Applied::Rejected,
            _ => {}
        }
        let old_record = old.and_then(|e| e.record.clone());
        if let Some(old) = old {
            if old.record.is_some() {
                o.checksum = o.checksum.wrapping_sub(entry_hash(&key, old.seq));
            }
        }
        if record.is_some() {
            o.checksum = o.checksum.wrapping_add(entry_hash(&key, seq));
        }
        o.max_seq = o.max_seq.max(seq);
        o.entries.insert(
            key.clone(),
            EpEntry {
                seq,
                record: record.clone(),
                removed_at: record.is_none().then_some(now),
            },
        );
        if o.visible {
            match (old_record, record) {
                (old, Some(record)) if old.as_ref() != Some(&record) => {
                    self.events.push_back(DirectoryEvent::EndpointUpsert {
                        host: origin,
                        key,
                        record,
                    })
                }
                (Some(record), None) => self.events.push_back(DirectoryEvent::EndpointRemoved {
                    host: origin,
                    key,
                    record,
                }),
                _ => {}
            }
        }
        Applied::New
    }

    // ---- membership --------------------------------------------------

    /// Host `host` is a live member whose daemon runs boot generation
    /// `generation`: its endpoints become visible, and records of an older
    /// generation are dropped.
    pub fn member_alive(&mut self, host: &str, generation: u64) {
        if host == self.local {
            return;
        }
        let now = self.now;
        if !self.origins.contains_key(host) {
            if self.origins.len() >= MAX_ORIGINS {
                self.stats.rejected += 1;
                return;
            }
            self.origins
                .insert(host.to_owned(), Origin::new(generation, false, now));
        }
        let Some(o) = self.origins.get_mut(host) else {
            return;
        };
        if generation > o.generation {
            purge(&mut self.events, host, o);
            o.generation = generation;
        }
        if !o.visible {
            o.visible = true;
            o.hidden_since = None;
            for (key, e) in &o.entries {
                if let Some(record) = &e.record {
                    self.events.push_back(DirectoryEvent::EndpointUpsert {
                        host: host.to_owned(),
                        key: key.clone(),
                        record: record.clone(),
                    });
                }
            }
        }
    }

    /// Host `host` is down or has left: its endpoints are hidden at once.
    pub fn member_down(&mut self, host: &str) {
        if host == self.local {
            return;
        }
        let now = self.now;
        let Some(o) = self.origins.get_mut(host) else {
            return;
        };
        if o.visible {
            o.visible = false;
            o.hidden_since = Some(now);
            for (key, e) in &o.entries {
                if let Some(record) = &e.record {
                    self.events.push_back(DirectoryEvent::EndpointRemoved {
                        host: host.to_owned(),
                        key: key.clone(),
                        record: record.clone(),
                    });
                }
            }
        }
    }

    /// Garbage collection: drops tombstones older than `tombstone_ttl` and
    /// forgets origins hidden for longer than `forget_after`.
    pub fn collect_garbage(
        &mut self,
        now: Instant,
        tombstone_ttl: Duration,
        forget_after: Duration,
    ) {
        self.set_now(now);
        let expired = |at: Option<Instant>| {
            at.is_some_and(|t| now.saturating_duration_since(t) >= tombstone_ttl)
        };
        let mut floor = self.net_tomb_floor.take();
        self.networks.retain(|_, e| {
            if expired(e.removed_at) {
                if floor.as_ref() < Some(&e.version) {
                    floor = Some(e.version.clone());
                }
                false
            } else {
                true
            }
        });
        self.net_tomb_floor = floor;
        let mut floor = self.policy_tomb_floor.take();
        self.policies.retain(|_, e| {
            if expired(e.removed_at) {
                if floor.as_ref() < Some(&e.version) {
                    floor = Some(e.version.clone());
                }
                false
            } else {
                true
            }
        });
        self.policy_tomb_floor = floor;
        let local = self.local.clone();
        self.origins.retain(|name, o| {
            let forgotten = o
                .hidden_since
                .is_some_and(|t| now.saturating_duration_since(t) >= forget_after);
            *name == local || !forgotten
        });
        for o in self.origins.values_mut() {
            let mut floor = o.tomb_floor;
            o.entries.retain(|_, e| {
                if expired(e.removed_at) {
                    floor = floor.max(e.seq);
                    false
                } else {
                    true
                }
            });
            o.tomb_floor = floor;
        }
    }

    // ---- anti-entropy ------------------------------------------------

    fn net_summary(&self) -> TableSummary {
        table_summary(
            self.networks
                .iter()
                .map(|(name, e)| (name, &e.version, e.spec.is_some())),
        )
    }

    fn policy_summary(&self) -> TableSummary {
        table_summary(
            self.policies
                .iter()
                .map(|(name, e)| (name, &e.version, e.policy.is_some())),
        )
    }

    /// This directory's digest, cut into chunks of at most `budget` bytes
    /// (each starting with `tag`).
    pub(crate) fn digest_chunks(&self, tag: u8, reply: bool, budget: usize) -> Vec<Vec<u8>> {
        let mut chunks = Vec::new();
        let mut head = DigestHead {
            from: self.local.clone(),
            reply,
            first: String::new(),
            last: None,
            networks: Some(self.net_summary()),
            policies: Some(self.policy_summary()),
        };
        let mut items: Vec<Vec<u8>> = Vec::new();
        let mut size = 1 + encoded_len(&head) + 64;
        for (name, o) in &self.origins {
            let item = postcard::to_stdvec(&o.summary(name)).unwrap_or_default();
            if size + item.len() > budget && !items.is_empty() {
                head.last = Some(name.clone());
                chunks.push(frame_chunk(tag, &head, &items));
                // The next chunk starts right after the last origin covered.
                head.first = name.clone();
                head.last = None;
                head.networks = None;
                head.policies = None;
                items.clear();
                size = 1 + encoded_len(&head) + 64;
            }
            size += item.len();
            items.push(item);
        }
        chunks.push(frame_chunk(tag, &head, &items));
        // Ranges are half-open in practice: `last` of one chunk is the
        // `first` of the next and is covered by the next only.
        chunks
    }

    /// The records the sender of a digest chunk lacks, as chunks of at most
    /// `budget` bytes (each starting with `tag`), `max_bytes` in all. When
    /// there is more to send than `max_bytes`, a random part is sent, so
    /// repeated rounds make progress.
    pub(crate) fn answer_digest(
        &self,
        head: &DigestHead,
        theirs: &[OriginSummary],
        tag: u8,
        budget: usize,
        max_bytes: usize,
        rng: &mut impl RngExt,
    ) -> Vec<Vec<u8>> {
        let mut out = ChunkWriter::new(tag, budget, max_bytes);
        if let Some(net) = &head.networks {
            if *net != self.net_summary() {
                let skip = if self.networks.is_empty() {
                    0
                } else {
                    rng.random_range(0..self.networks.len())
                };
                let n = self.networks.len();
                for (name, e) in self.networks.iter().cycle().skip(skip).take(n) {
                    let delta = Delta::Network {
                        name: name.clone(),
                        version: e.version.clone(),
                        created: e.created.clone(),
                        spec: e.spec.clone(),
                    };
                    if !out.push(&delta) {
                        break;
                    }
                }
            }
        }
        if let Some(policies) = &head.policies {
            if *policies != self.policy_summary() {
                let n = self.policies.len();
                let skip = if n == 0 { 0 } else { rng.random_range(0..n) };
                for (name, e) in self.policies.iter().cycle().skip(skip).take(n) {
                    let delta = Delta::Policy {
                        name: name.clone(),
                        version: e.version.clone(),
                        policy: e.policy.clone(),
                    };
                    if !out.push(&delta) {
                        break;
                    }
                }
            }
        }
        let theirs: HashMap<&str, &OriginSummary> =
            theirs.iter().map(|s| (s.origin.as_str(), s)).collect();
        let in_range: Vec<(&String, &Origin)> = self
            .origins
            .iter()
            .filter(|(name, _)| {
                name.as_str() >= head.first.as_str()
                    && head.last.as_ref().is_none_or(|last| *name < last)
            })
            .collect();
        let start = if in_range.is_empty() {
            0
        } else {
            rng.random_range(0..in_range.len())
        };
        for (name, o) in in_range.iter().cycle().skip(start).take(in_range.len()) {
            let from_seq = match theirs.get(name.as_str()) {
                None => Some(0),
                Some(t) if t.generation < o.generation => Some(0),
                Some(t) if t.generation > o.generation => None,
                Some(t) if o.max_seq > t.max_seq => Some(t.max_seq),
                Some(t) if o.max_seq == t.max_seq && o.checksum != t.checksum => Some(0),
                Some(_) => None,
            };
            let Some(from_seq) = from_seq else { continue };
            let mut entries: Vec<(&String, &EpEntry)> =
                o.entries.iter().filter(|(_, e)| e.seq > from_seq).collect();
            if from_seq == 0 && !entries.is_empty() {
                // A full resend (gap repair) starts at a random place so a
                // cut-short answer does not always send the same part.
                let r = rng.random_range(0..entries.len());
                entries.rotate_left(r);
            } else {
                // Oldest first, so the peer's highest sequence climbs even
                // when the answer is cut short.
                entries.sort_by_key(|(_, e)| e.seq);
            }
            for (key, e) in entries {
                let delta = Delta::Endpoint {
                    origin: (*name).clone(),
                    generation: o.generation,
                    seq: e.seq,
                    key: key.clone(),
                    record: e.record.clone(),
                };
                if !out.push(&delta) {
                    return out.finish();
                }
            }
        }
        out.finish()
    }

    /// A canonical dump of everything held (visible or not, tombstones
    /// included, times left out): equal dumps mean equal replicated state.
    pub fn canonical_state(&self) -> Vec<u8> {
        type EntryDump<'a> = (&'a String, u64, &'a Option<PublishedEndpoint>);
        type OriginDump<'a> = (&'a String, u64, u64, u64, Vec<EntryDump<'a>>);
        #[derive(Serialize)]
        struct Dump<'a> {
            networks: Vec<(
                &'a String,
                &'a NetVersion,
                &'a NetVersion,
                &'a Option<NetworkSpec>,
            )>,
            vnis: BTreeMap<&'a String, Vni>,
            policies: Vec<(&'a String, &'a NetVersion, &'a Option<Vec<u8>>)>,
            origins: Vec<OriginDump<'a>>,
        }
        let dump = Dump {
            networks: self
                .networks
                .iter()
                .map(|(n, e)| (n, &e.version, &e.created, &e.spec))
                .collect(),
            vnis: self.vnis.iter().map(|(n, v)| (n, *v)).collect(),
            policies: self
                .policies
                .iter()
                .map(|(n, e)| (n, &e.version, &e.policy))
                .collect(),
            origins: self
                .origins
                .iter()
                .filter(|(_, o)| !o.entries.is_empty())
                .map(|(n, o)| {
                    (
                        n,
                        o.generation,
                        o.max_seq,
                        o.checksum,
                        o.entries
                            .iter()
                            .map(|(k, e)| (k, e.seq, &e.record))
                            .collect(),
                    )
                })
                .collect(),
        };
        postcard::to_stdvec(&dump).unwrap_or_default()
    }
}

/// Drops every record of an origin (its host restarted with a newer
/// generation), telling the daemon about the visible ones.
fn purge(events: &mut VecDeque<DirectoryEvent>, host: &str, o: &mut Origin) {
    for (key, e) in std::mem::take(&mut o.entries) {
        if let (true, Some(record)) = (o.visible, e.record) {
            events.push_back(DirectoryEvent::EndpointRemoved {
                host: host.to_owned(),
                key,
                record,
            });
        }
    }
    o.max_seq = 0;
    o.checksum = 0;
    o.tomb_floor = 0;
}

fn check_len(delta: &Delta, what: &'static str) -> Result<(), DirectoryError> {
    let len = encoded_len(delta);
    if len > MAX_DELTA_LEN {
        Err(DirectoryError::TooLarge { what, len })
    } else {
        Ok(())
    }
}

fn encoded_len<T: Serialize>(value: &T) -> usize {
    postcard::to_stdvec(value)
        .map(|v| v.len())
        .unwrap_or(usize::MAX)
}

fn hash64(parts: &[&[u8]]) -> u64 {
    let mut h = blake3::Hasher::new();
    for p in parts {
        h.update(&(p.len() as u64).to_le_bytes());
        h.update(p);
    }
    let b = h.finalize();
    let b = b.as_bytes();
    u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])
}

fn entry_hash(key: &str, seq: u64) -> u64 {
    hash64(&[key.as_bytes(), &seq.to_le_bytes()])
}

/// The summary of a last-writer-wins table from its entries' names,
/// versions and liveness.
fn table_summary<'a>(
    entries: impl ExactSizeIterator<Item = (&'a String, &'a NetVersion, bool)>,
) -> TableSummary {
    let count = u32::try_from(entries.len()).unwrap_or(u32::MAX);
    let mut checksum = 0u64;
    let mut max_clock = 0;
    for (name, version, live) in entries {
        checksum = checksum.wrapping_add(net_hash(name, version, live));
        max_clock = max_clock.max(version.clock);
    }
    TableSummary {
        count,
        max_clock,
        checksum,
    }
}

fn policy_view<'a>(name: &'a str, e: &'a PolicyEntry) -> Option<PolicyView<'a>> {
    Some(PolicyView {
        name,
        version: &e.version,
        bytes: e.policy.as_deref()?,
    })
}

fn net_hash(name: &str, version: &NetVersion, live: bool) -> u64 {
    hash64(&[
        name.as_bytes(),
        &version.clock.to_le_bytes(),
        version.origin.as_bytes(),
        &[u8::from(live)],
    ])
}

/// The `i`-th VNI candidate for network id `id`: pseudo-random, never 0.
fn vni_candidate(id: &str, i: u32) -> Vni {
    let h = hash64(&[b"vswitch-vni", id.as_bytes(), &i.to_le_bytes()]);
    let v = (h as u32) & Vni::MAX;
    Vni::from_low_bits(if v == 0 { 1 } else { v })
}

fn frame_chunk(tag: u8, head: &DigestHead, items: &[Vec<u8>]) -> Vec<u8> {
    let mut out = vec![tag];
    out.extend_from_slice(&postcard::to_stdvec(head).unwrap_or_default());
    for item in items {
        out.extend_from_slice(item);
    }
    out
}

/// Parses a digest chunk (without its tag byte).
pub(crate) fn parse_digest(mut bytes: &[u8]) -> Option<(DigestHead, Vec<OriginSummary>)> {
    let (head, rest) = postcard::take_from_bytes::<DigestHead>(bytes).ok()?;
    bytes = rest;
    let mut items = Vec::new();
    while !bytes.is_empty() {
        let (item, rest) = postcard::take_from_bytes::<OriginSummary>(bytes).ok()?;
        items.push(item);
        bytes = rest;
    }
    Some((head, items))
}

/// Parses a records chunk (without its tag byte). Stops at the first
/// undecodable delta; returns what was read and whether all was.
pub(crate) fn parse_records(mut bytes: &[u8]) -> (Vec<Delta>, bool) {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        match postcard::take_from_bytes::<Delta>(bytes) {
            Ok((d, rest)) => {
                out.push(d);
                bytes = rest;
            }
            Err(_) => return (out, false),
        }
    }
    (out, true)
}

/// Packs deltas into chunks of at most `budget` bytes.
struct ChunkWriter {
    tag: u8,
    budget: usize,
    remaining: usize,
    current: Vec<u8>,
    chunks: Vec<Vec<u8>>,
}

impl ChunkWriter {
    fn new(tag: u8, budget: usize, max_bytes: usize) -> Self {
        ChunkWriter {
            tag,
            budget,
            remaining: max_bytes,
            current: vec![tag],
            chunks: Vec::new(),
        }
    }

    /// Adds a delta; false once the total allowance is used up.
    fn push(&mut self, delta: &Delta) -> bool {
        let bytes = delta.encode();
        if bytes.len() + 1 > self.budget {
            // Cannot happen for deltas made by `Directory`; skip it.
            return true;
        }
        if bytes.len() > self.remaining {
            return false;
        }
        if self.current.len() + bytes.len() > self.budget {
            let full = std::mem::replace(&mut self.current, vec![self.tag]);
            self.chunks.push(full);
        }
        self.current.extend_from_slice(&bytes);
        self.remaining -= bytes.len();
        true
    }

    fn finish(mut self) -> Vec<Vec<u8>> {
        if self.current.len() > 1 {
            self.chunks.push(self.current);
        }
        self.chunks
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::SeedableRng;

    fn t0() -> Instant {
        Instant::now()
    }

    fn spec(name: &str, id: &str) -> NetworkSpec {
        NetworkSpec {
            name: name.into(),
            id: id.into(),
            ipam: vec![IpamConfig {
                subnet: "10.10.0.0/24".parse().unwrap(),
                ip_range: None,
                gateway: Some("10.10.0.1".parse().unwrap()),
            }],
            ipv6: false,
            internal: false,
            mtu: None,
            vni: None,
            options: BTreeMap::new(),
            labels: BTreeMap::new(),
            created: "2025-01-01T00:00:00Z".into(),
        }
    }

    fn record(net: &str, name: &str, last: u8) -> PublishedEndpoint {
        PublishedEndpoint {
            network: net.into(),
            container: name.into(),
            aliases: vec![format!("{name}-alias")],
            mac: [0x02, 0x42, 0, 0, 0, last],
            ipv4: Some(Ipv4Addr::new(10, 10, 0, last)),
            ipv6: None,
            labels: [("app".to_owned(), name.to_owned())].into(),
        }
    }

    fn pol(name: &str, clock: u64, origin: &str, bytes: Option<&[u8]>) -> Delta {
        Delta::Policy {
            name: name.into(),
            version: NetVersion {
                clock,
                origin: origin.into(),
            },
            policy: bytes.map(<[u8]>::to_vec),
        }
    }

    fn policy_bytes(d: &Directory, name: &str) -> Option<Vec<u8>> {
        d.policy(name).map(|p| p.bytes.to_vec())
    }

    fn ep(
        origin: &str,
        generation: u64,
        seq: u64,
        key: &str,
        rec: Option<PublishedEndpoint>,
    ) -> Delta {
        Delta::Endpoint {
            origin: origin.into(),
            generation,
            seq,
            key: key.into(),
            record: rec,
        }
    }

    fn events(d: &mut Directory) -> Vec<DirectoryEvent> {
        std::iter::from_fn(|| d.poll_event()).collect()
    }

    #[test]
    fn local_endpoint_lifecycle() {
        let mut d = Directory::new("a", 1, t0());
        let delta = d.endpoint_upsert("e1", record("n1", "web", 2)).unwrap();
        assert_eq!(d.apply(delta.clone(), true), Applied::New);
        assert_eq!(d.apply(delta, true), Applied::Stale);
        assert_eq!(d.endpoints().count(), 1);
        let rm = d.endpoint_remove("e1").unwrap();
        assert_eq!(d.apply(rm, true), Applied::New);
        assert_eq!(d.endpoints().count(), 0);
        assert!(d.endpoint_remove("e1").is_none());
        let ev = events(&mut d);
        assert!(matches!(ev[0], DirectoryEvent::EndpointUpsert { .. }));
        assert!(matches!(ev[1], DirectoryEvent::EndpointRemoved { .. }));
    }

    #[test]
    fn remote_records_for_our_origin_are_refused() {
        let mut d = Directory::new("a", 1, t0());
        let forged = ep("a", 9, 9, "e1", Some(record("n", "x", 1)));
        assert_eq!(d.apply(forged, false), Applied::Rejected);
        assert_eq!(d.endpoints().count(), 0);
        // And a remote host's records cannot be applied as local ones.
        let remote = ep("b", 1, 1, "e1", Some(record("n", "x", 1)));
        assert_eq!(d.apply(remote, true), Applied::Rejected);
    }

    #[test]
    fn hidden_until_alive_and_hidden_again_when_down() {
        let mut d = Directory::new("a", 1, t0());
        assert_eq!(
            d.apply(ep("b", 5, 1, "e1", Some(record("n", "x", 1))), false),
            Applied::New
        );
        assert_eq!(d.endpoints().count(), 0);
        assert!(events(&mut d).is_empty());
        d.member_alive("b", 5);
        assert_eq!(d.endpoints().count(), 1);
        assert_eq!(d.hosts_on("n").into_iter().collect::<Vec<_>>(), vec!["b"]);
        assert!(
            matches!(&events(&mut d)[..], [DirectoryEvent::EndpointUpsert { host, .. }] if host == "b")
        );
        d.member_down("b");
        assert_eq!(d.endpoints().count(), 0);
        assert!(
            matches!(&events(&mut d)[..], [DirectoryEvent::EndpointRemoved { host, .. }] if host == "b")
        );
        // Still held: back at once when up again.
        d.member_alive("b", 5);
        assert_eq!(d.endpoints().count(), 1);
    }

    #[test]
    fn newer_generation_drops_old_records() {
        let mut d = Directory::new("a", 1, t0());
        d.member_alive("b", 5);
        d.apply(ep("b", 5, 1, "e1", Some(record("n", "x", 1))), false);
        d.apply(ep("b", 5, 2, "e2", Some(record("n", "y", 2))), false);
        events(&mut d);
        // b restarted (generation 6) and republishes only e2.
        d.member_alive("b", 6);
        let ev = events(&mut d);
        assert_eq!(ev.len(), 2);
        assert!(ev
            .iter()
            .all(|e| matches!(e, DirectoryEvent::EndpointRemoved { .. })));
        assert_eq!(
            d.apply(ep("b", 6, 1, "e2", Some(record("n", "y", 2))), false),
            Applied::New
        );
        // Late messages of the old generation do nothing.
        assert_eq!(
            d.apply(ep("b", 5, 3, "e1", Some(record("n", "x", 1))), false),
            Applied::Stale
        );
        assert_eq!(d.endpoints().map(|e| e.key).collect::<Vec<_>>(), vec!["e2"]);
    }

    #[test]
    fn tombstone_beats_late_upsert() {
        let mut d = Directory::new("a", 1, t0());
        d.member_alive("b", 1);
        d.apply(ep("b", 1, 2, "e1", None), false);
        assert_eq!(
            d.apply(ep("b", 1, 1, "e1", Some(record("n", "x", 1))), false),
            Applied::Stale
        );
        assert_eq!(d.endpoints().count(), 0);
    }

    #[test]
    fn network_versions_and_tombstones() {
        let now = t0();
        let mut a = Directory::new("a", 0, now);
        let create = a.network_upsert(spec("web", "id1")).unwrap();
        assert_eq!(a.apply(create.clone(), true), Applied::New);
        let ev = events(&mut a);
        let DirectoryEvent::NetworkUpsert { vni, .. } = &ev[0] else {
            panic!("{ev:?}")
        };
        assert_ne!(vni.get(), 0);
        let rm = a.network_remove("web").unwrap();
        assert_eq!(a.apply(rm.clone(), true), Applied::New);
        assert!(a.network("web").is_none());
        assert!(
            matches!(&events(&mut a)[..], [DirectoryEvent::NetworkRemoved { name, id }] if name == "web" && id == "id1")
        );

        // Another host sees the removal before the creation.
        let mut b = Directory::new("b", 0, now);
        assert_eq!(b.apply(rm, false), Applied::New);
        assert_eq!(b.apply(create, false), Applied::Stale);
        assert!(b.network("web").is_none());
        assert!(events(&mut b).is_empty());

        // b re-creates it: its clock is past the tombstone, so it wins.
        let again = b.network_upsert(spec("web", "id2")).unwrap();
        assert_eq!(a.apply(again.clone(), false), Applied::New);
        assert_eq!(a.network("web").unwrap().spec.id, "id2");
    }

    #[test]
    fn concurrent_creations_resolve_by_version() {
        let now = t0();
        let mut a = Directory::new("a", 0, now);
        let mut b = Directory::new("b", 0, now);
        let da = a.network_upsert(spec("web", "ida")).unwrap();
        let db = b.network_upsert(spec("web", "idb")).unwrap();
        a.apply(da.clone(), true);
        b.apply(db.clone(), true);
        a.apply(db, false);
        b.apply(da, false);
        // Same clock: origin "b" > "a" wins on both.
        assert_eq!(a.network("web").unwrap().spec.id, "idb");
        assert_eq!(a.canonical_state(), b.canonical_state());
    }

    #[test]
    fn vni_requests_and_collisions() {
        let now = t0();
        let mut d = Directory::new("a", 0, now);
        let mut s1 = spec("one", "id1");
        s1.vni = Vni::new(100);
        let d1 = d.network_upsert(s1).unwrap();
        d.apply(d1, true);
        assert_eq!(d.network("one").unwrap().vni.get(), 100);
        // A later network asking for the same VNI gets another.
        let mut s2 = spec("two", "id2");
        s2.vni = Vni::new(100);
        let d2 = d.network_upsert(s2).unwrap();
        d.apply(d2, true);
        let v2 = d.network("two").unwrap().vni;
        assert_ne!(v2.get(), 100);
        assert_eq!(d.network_by_vni(v2).unwrap().spec.name, "two");
        // An older network (created earlier elsewhere) asking for 100 takes
        // it, and the younger ones move.
        let mut s0 = spec("zero", "id0");
        s0.vni = Vni::new(100);
        let v0 = NetVersion {
            clock: 0,
            origin: "c".into(),
        };
        events(&mut d);
        d.apply(
            Delta::Network {
                name: "zero".into(),
                version: v0.clone(),
                created: v0,
                spec: Some(s0),
            },
            false,
        );
        assert_eq!(d.network("zero").unwrap().vni.get(), 100);
        assert_ne!(d.network("one").unwrap().vni.get(), 100);
        let ev = events(&mut d);
        assert_eq!(ev.len(), 2, "{ev:?}");
        let vnis: HashSet<Vni> = d.networks().map(|n| n.vni).collect();
        assert_eq!(vnis.len(), 3);
    }

    #[test]
    fn oversized_records_are_refused() {
        let mut d = Directory::new("a", 0, t0());
        let mut r = record("n", "x", 1);
        r.aliases = (0..100).map(|i| format!("alias-number-{i}")).collect();
        assert!(matches!(
            d.endpoint_upsert("e", r),
            Err(DirectoryError::TooLarge { .. })
        ));
        // Labels count too.
        let mut r = record("n", "x", 1);
        r.labels = (0..40)
            .map(|i| (format!("label-key-{i}"), format!("value-{i}")))
            .collect();
        assert!(matches!(
            d.endpoint_upsert("e", r.clone()),
            Err(DirectoryError::TooLarge { .. })
        ));
        // Checking says so before anything is set up, and a refused
        // record takes no sequence number.
        let mut big = record("n", "x", 1);
        big.labels = r.labels;
        assert!(d.endpoint_check("e", &big).is_err());
        assert!(d.endpoint_check("e", &record("n", "x", 1)).is_ok());
        let ok = d.endpoint_upsert("e", record("n", "x", 1)).unwrap();
        assert!(matches!(ok, Delta::Endpoint { seq: 1, .. }));
    }

    #[test]
    fn remote_labels_are_published_with_the_endpoint() {
        let mut a = Directory::new("a", 1, t0());
        let mut b = Directory::new("b", 1, t0());
        b.member_alive("a", 1);
        let delta = a.endpoint_upsert("e1", record("n", "db", 3)).unwrap();
        assert_eq!(b.apply(delta, false), Applied::New);
        let labels = &b.endpoint("a", "e1").unwrap().labels;
        assert_eq!(labels.get("app").map(String::as_str), Some("db"));
    }

    #[test]
    fn policies_last_writer_wins() {
        let now = t0();
        let mut a = Directory::new("a", 0, now);
        let mut b = Directory::new("b", 0, now);
        let v1 = a.policy_upsert("web-db", b"one".to_vec()).unwrap();
        assert_eq!(a.apply(v1.clone(), true), Applied::New);
        assert_eq!(b.apply(v1.clone(), false), Applied::New);
        assert_eq!(b.apply(v1.clone(), false), Applied::Stale);
        assert_eq!(policy_bytes(&b, "web-db").as_deref(), Some(&b"one"[..]));
        // b replaces it: its clock has moved past a's change.
        let v2 = b.policy_upsert("web-db", b"two".to_vec()).unwrap();
        b.apply(v2.clone(), true);
        assert_eq!(a.apply(v2.clone(), false), Applied::New);
        assert_eq!(policy_bytes(&a, "web-db").as_deref(), Some(&b"two"[..]));
        // The older change arriving late does nothing.
        assert_eq!(a.apply(v1, false), Applied::Stale);
        assert_eq!(policy_bytes(&a, "web-db").as_deref(), Some(&b"two"[..]));
        let ev = events(&mut a);
        assert_eq!(ev.len(), 2, "{ev:?}");
        assert!(matches!(
            &ev[1],
            DirectoryEvent::PolicyUpsert { name, version, bytes }
                if name == "web-db" && version.origin == "b" && bytes == b"two"
        ));
        // Concurrent changes at the same clock: the larger origin wins on
        // both sides.
        let mut c = Directory::new("c", 0, now);
        let mut d = Directory::new("d", 0, now);
        let dc = c.policy_upsert("p", b"c".to_vec()).unwrap();
        let dd = d.policy_upsert("p", b"d".to_vec()).unwrap();
        c.apply(dc.clone(), true);
        d.apply(dd.clone(), true);
        c.apply(dd, false);
        d.apply(dc, false);
        assert_eq!(policy_bytes(&c, "p").as_deref(), Some(&b"d"[..]));
        assert_eq!(c.canonical_state(), d.canonical_state());
    }

    #[test]
    fn policy_removal_is_a_tombstone_until_collected() {
        let now = t0();
        let mut a = Directory::new("a", 0, now);
        let mut b = Directory::new("b", 0, now);
        let create = a.policy_upsert("p", b"allow".to_vec()).unwrap();
        a.apply(create.clone(), true);
        let rm = a.policy_remove("p").unwrap();
        a.apply(rm.clone(), true);
        assert!(a.policy("p").is_none());
        assert!(a.policy_remove("p").is_none());
        assert!(matches!(
            &events(&mut a)[..],
            [DirectoryEvent::PolicyUpsert { .. }, DirectoryEvent::PolicyRemoved { name }] if name == "p"
        ));
        // b hears of the removal first: the creation is older and stays out.
        assert_eq!(b.apply(rm.clone(), false), Applied::New);
        assert_eq!(b.apply(create.clone(), false), Applied::Stale);
        assert!(b.policy("p").is_none());
        // A tombstone of something never seen tells the daemon nothing.
        assert!(events(&mut b).is_empty());

        // Collected after the TTL; the old tombstone cannot come back...
        let ttl = Duration::from_secs(60);
        a.collect_garbage(now + ttl, ttl, Duration::from_secs(3600));
        assert!(!a.policies.contains_key("p"));
        assert_eq!(a.apply(rm, false), Applied::Stale);
        assert!(!a.policies.contains_key("p"));
        // ...and a re-creation after it wins.
        let again = b.policy_upsert("p", b"again".to_vec()).unwrap();
        assert_eq!(a.apply(again, false), Applied::New);
        assert_eq!(policy_bytes(&a, "p").as_deref(), Some(&b"again"[..]));
    }

    #[test]
    fn malformed_and_oversized_policies_are_refused_and_counted() {
        let mut d = Directory::new("a", 0, t0());
        assert_eq!(
            d.policy_upsert("", b"x".to_vec()),
            Err(DirectoryError::NoName("policy"))
        );
        assert!(matches!(
            d.policy_upsert("big", vec![7; MAX_DELTA_LEN]),
            Err(DirectoryError::TooLarge { .. })
        ));
        assert!(d.policy_check("fits", &[7; 600]).is_ok());
        // What a forged message could carry: no name, empty content, more
        // than a gossip packet holds.
        for forged in [
            pol("", 5, "b", Some(b"x")),
            pol("p", 5, "b", Some(b"")),
            pol("p", 5, "b", Some(&[1; MAX_DELTA_LEN])),
        ] {
            assert_eq!(d.apply(forged, false), Applied::Rejected);
        }
        assert_eq!(d.stats().rejected, 3);
        assert_eq!(d.policies().count(), 0);
        assert!(events(&mut d).is_empty());
        // Restoring a change checks the same.
        assert!(d
            .policy_restore(
                "p",
                NetVersion {
                    clock: 1,
                    origin: "a".into()
                },
                Some(vec![0; MAX_DELTA_LEN])
            )
            .is_err());
    }

    #[test]
    fn the_policy_table_is_bounded() {
        let mut d = Directory::new("a", 0, t0());
        for i in 0..MAX_POLICIES {
            let delta = pol(&format!("p{i}"), 1, "b", Some(b"x"));
            assert_eq!(d.apply(delta, false), Applied::New);
        }
        assert_eq!(
            d.policy_upsert("one-more", b"x".to_vec()),
            Err(DirectoryError::Full(MAX_POLICIES, "policies"))
        );
        assert_eq!(
            d.apply(pol("one-more", 9, "b", Some(b"x")), false),
            Applied::Rejected
        );
        // Replacing one that is held still works.
        assert!(d.policy_upsert("p1", b"y".to_vec()).is_ok());
        assert_eq!(d.apply(pol("p1", 9, "b", Some(b"y")), false), Applied::New);
    }

    #[test]
    fn a_late_host_gets_every_policy_and_tombstone_through_sync() {
        let now = t0();
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let mut a = Directory::new("a", 0, now);
        for i in 0..40 {
            let d = a
                .policy_upsert(&format!("p{i}"), format!("rule {i}").into_bytes())
                .unwrap();
            a.apply(d, true);
        }
        for i in 0..5 {
            let d = a.policy_remove(&format!("p{i}")).unwrap();
            a.apply(d, true);
        }
        let mut late = Directory::new("late", 0, now);
        // Its digest says it holds no policy: a answers with all of them
        // (in several chunks), tombstones included.
        sync(&mut late, &mut a, &mut rng);
        assert_eq!(late.policies().count(), 35);
        assert_eq!(late.canonical_state(), a.canonical_state());
        let ev = events(&mut late);
        assert_eq!(ev.len(), 35, "only live policies are announced");
        // A change only one side made is repaired the other way too.
        let d = late.policy_upsert("p7", b"changed".to_vec()).unwrap();
        late.apply(d, true);
        sync(&mut a, &mut late, &mut rng);
        assert_eq!(policy_bytes(&a, "p7").as_deref(), Some(&b"changed"[..]));
        assert_eq!(late.canonical_state(), a.canonical_state());
    }

    #[test]
    fn garbage_collection() {
        let now = t0();
        let mut d = Directory::new("a", 0, now);
        d.member_alive("b", 1);
        d.apply(ep("b", 1, 1, "e1", Some(record("n", "x", 1))), false);
        d.apply(ep("b", 1, 2, "e1", None), false);
        d.apply(ep("b", 1, 3, "e2", Some(record("n", "y", 2))), false);
        let ttl = Duration::from_secs(60);
        d.collect_garbage(now + ttl, ttl, Duration::from_secs(3600));
        assert!(!d.origins["b"].entries.contains_key("e1"));
        // The dropped tombstone still blocks an old tombstone coming back...
        assert_eq!(d.apply(ep("b", 1, 2, "e1", None), false), Applied::Stale);
        // ...and the origin is forgotten once hidden for long enough.
        d.member_down("b");
        d.collect_garbage(now + ttl * 100, ttl, Duration::from_secs(3600));
        assert!(!d.origins.contains_key("b"));
        assert!(d.origins.contains_key("a"));
    }

    /// Runs one full digest/answer exchange from `a` to `b` and back.
    fn sync(a: &mut Directory, b: &mut Directory, rng: &mut rand::rngs::StdRng) {
        for chunk in a.digest_chunks(1, true, 200) {
            let (head, sums) = parse_digest(&chunk[1..]).unwrap();
            for rec in b.answer_digest(&head, &sums, 2, 200, usize::MAX, rng) {
                assert!(rec.len() <= 200);
                let (deltas, ok) = parse_records(&rec[1..]);
                assert!(ok);
                for d in deltas {
                    a.apply(d, false);
                }
            }
        }
    }

    #[test]
    fn anti_entropy_repairs_gaps() {
        let now = t0();
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut a = Directory::new("a", 0, now);
        let mut b = Directory::new("b", 0, now);
        let mut c = Directory::new("c", 0, now);
        // c publishes 30 endpoints and 3 networks; a hears everything, b
        // only every third message (a gap, and a hole below its max).
        let mut deltas = Vec::new();
        for i in 0..30u8 {
            deltas.push(
                c.endpoint_upsert(&format!("e{i}"), record("n", &format!("c{i}"), i))
                    .unwrap(),
            );
        }
        for d in &deltas[..] {
            c.apply(d.clone(), true);
        }
        let rm = c.endpoint_remove("e3").unwrap();
        c.apply(rm.clone(), true);
        deltas.push(rm);
        for i in 0..3 {
            let d = c
                .network_upsert(spec(&format!("net{i}"), &format!("id{i}")))
                .unwrap();
            c.apply(d.clone(), true);
            deltas.push(d);
        }
        for (i, d) in deltas.iter().enumerate() {
            a.apply(d.clone(), false);
            if i % 3 == 0 || i == 30 {
                b.apply(d.clone(), false);
            }
        }
        assert_ne!(a.canonical_state(), b.canonical_state());
        for _ in 0..3 {
            sync(&mut b, &mut a, &mut rng);
            sync(&mut a, &mut b, &mut rng);
        }
        assert_eq!(a.canonical_state(), b.canonical_state());
        // c itself agrees too.
        sync(&mut c, &mut a, &mut rng);
        sync(&mut a, &mut c, &mut rng);
        assert_eq!(a.canonical_state(), c.canonical_state());
    }

    #[test]
    fn digest_chunks_cover_many_origins() {
        let now = t0();
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let mut a = Directory::new("a", 0, now);
        let mut b = Directory::new("b", 0, now);
        for h in 0..200u32 {
            let origin = format!("host-{h:04}");
            a.apply(ep(&origin, 1, 1, "e", Some(record("n", "x", 1))), false);
        }
        let chunks = a.digest_chunks(1, true, 300);
        assert!(chunks.len() > 5);
        assert!(chunks.iter().all(|c| c.len() <= 300));
        // b holds nothing; answering a's digest sends nothing, and b's
        // digest makes a send all 200 records.
        for chunk in &chunks {
            let (head, sums) = parse_digest(&chunk[1..]).unwrap();
            assert!(b
                .answer_digest(&head, &sums, 2, 300, usize::MAX, &mut rng)
                .is_empty());
        }
        sync(&mut b, &mut a, &mut rng);
        assert_eq!(a.canonical_state(), b.canonical_state());
    }

    #[test]
    fn answer_respects_byte_allowance() {
        let now = t0();
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let mut a = Directory::new("a", 0, now);
        let b = Directory::new("b", 0, now);
        for i in 0..100u8 {
            let d = a
                .endpoint_upsert(&format!("e{i}"), record("n", "x", i))
                .unwrap();
            a.apply(d, true);
        }
        let chunk = &b.digest_chunks(1, true, 1000)[0];
        let (head, sums) = parse_digest(&chunk[1..]).unwrap();
        let answer = a.answer_digest(&head, &sums, 2, 1000, 2000, &mut rng);
        let total: usize = answer.iter().map(|c| c.len() - 1).sum();
        assert!(total <= 2000 && total > 1000, "{total}");
    }

    // ---- properties --------------------------------------------------

    fn arb_origin() -> impl Strategy<Value = &'static str> + Clone {
        prop::sample::select(vec!["b", "c", "d"])
    }

    fn arb_delta() -> impl Strategy<Value = Delta> {
        let origin = arb_origin();
        let key = prop::sample::select(vec!["e1", "e2", "e3"]);
        let ep =
            (origin, 1u64..3, 1u64..6, key, any::<Option<u8>>()).prop_map(|(o, g, s, k, r)| {
                Delta::Endpoint {
                    origin: o.into(),
                    generation: g,
                    seq: s,
                    key: k.into(),
                    // The content is a function of the version, as it is when
                    // an origin makes each change once.
                    record: r.map(|_| record("n", &format!("{o}{g}{s}{k}"), (g * 10 + s) as u8)),
                }
            });
        prop_oneof![ep, arb_lww_delta()]
    }

    /// Changes to the last-writer-wins tables: networks and policies.
    fn arb_lww_delta() -> impl Strategy<Value = Delta> {
        let policy = (
            prop::sample::select(vec!["p1", "p2", "p3"]),
            1u64..6,
            arb_origin(),
            any::<bool>(),
        )
            .prop_map(|(n, clock, o, live)| {
                // The content is a function of the version, as it is when
                // a host makes each change once.
                pol(
                    n,
                    clock,
                    o,
                    live.then(|| format!("{n}-{clock}-{o}").into_bytes())
                        .as_deref(),
                )
            });
        let net = (
            prop::sample::select(vec!["n1", "n2"]),
            1u64..6,
            arb_origin(),
            any::<bool>(),
            prop::option::of(0u32..4),
        )
            .prop_map(|(n, clock, o, live, vni)| {
                let version = NetVersion {
                    clock,
                    origin: o.into(),
                };
                let mut s = spec(n, &format!("{n}-{clock}-{o}"));
                s.vni = vni.and_then(Vni::new);
                Delta::Network {
                    name: n.into(),
                    created: version.clone(),
                    version,
                    spec: live.then_some(s),
                }
            });
        prop_oneof![net, policy]
    }

    /// For each item, the change with the highest version (ties: the
    /// first by that version, since equal versions carry equal content in
    /// this model only if made once; deduplicate by version).
    fn dedup_by_version(deltas: &[Delta]) -> Vec<Delta> {
        let mut seen = HashSet::new();
        deltas
            .iter()
            .filter(|d| seen.insert(format!("{:?}", d.key())))
            .cloned()
            .collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn any_order_converges(
            deltas in prop::collection::vec(arb_delta(), 1..40),
            perm_seed in any::<u64>(),
            alive in any::<[bool; 3]>(),
        ) {
            use rand::seq::SliceRandom;
            let deltas = dedup_by_version(&deltas);
            let now = Instant::now();
            let mut one = Directory::new("a", 0, now);
            for d in &deltas {
                one.apply(d.clone(), false);
            }
            // Another host gets them shuffled, each up to three times.
            let mut rng = rand::rngs::StdRng::seed_from_u64(perm_seed);
            let mut shuffled: Vec<Delta> = deltas.iter().flat_map(|d| {
                let n = rng.random_range(1..=3);
                std::iter::repeat_n(d.clone(), n)
            }).collect();
            shuffled.shuffle(&mut rng);
            let mut two = Directory::new("z", 0, now);
            for (i, h) in ["b", "c", "d"].iter().enumerate() {
                if alive[i] { two.member_alive(h, 0); }
            }
            for d in &shuffled {
                two.apply(d.clone(), false);
            }
            prop_assert_eq!(one.canonical_state(), two.canonical_state());

            // Nothing older than what is held ever comes back.
            for d in &deltas {
                prop_assert_ne!(two.apply(d.clone(), false), Applied::New);
            }
            for d in &deltas {
                if !two.is_current(d) {
                    match d {
                        Delta::Endpoint { origin, key, record, .. } => {
                            if let (Some(r), Some(held)) = (record, two.origins.get(origin).and_then(|o| o.entries.get(key))) {
                                prop_assert_ne!(Some(r), held.record.as_ref());
                            }
                        }
                        Delta::Network { name, spec, .. } => {
                            if let Some(s) = spec {
                                prop_assert_ne!(two.network(name).map(|n| n.spec.id.clone()), Some(s.id.clone()));
                            }
                        }
                        Delta::Policy { name, policy, .. } => {
                            if let Some(p) = policy {
                                prop_assert_ne!(policy_bytes(&two, name), Some(p.clone()));
                            }
                        }
                    }
                }
            }

            // Visible endpoints are exactly the live ones of alive origins.
            let visible: BTreeSet<(String, String)> = two.endpoints().map(|e| (e.host.to_owned(), e.key.to_owned())).collect();
            for (host, o) in &two.origins {
                for (k, e) in &o.entries {
                    let shown = visible.contains(&(host.clone(), k.clone()));
                    prop_assert_eq!(shown, o.visible && e.record.is_some());
                }
            }
            // VNIs are unique.
            let vnis: Vec<Vni> = two.networks().map(|n| n.vni).collect();
            let unique: HashSet<Vni> = vnis.iter().copied().collect();
            prop_assert_eq!(vnis.len(), unique.len());
        }

        /// (Endpoints are left out: their tombstones are not summed up in
        /// a digest, so one only a single host holds stays there, which
        /// changes nothing visible.)
        #[test]
        fn anti_entropy_converges_from_any_split(
            deltas in prop::collection::vec(arb_lww_delta(), 1..40),
            split in any::<u64>(),
            seed in any::<u64>(),
        ) {
            let deltas = dedup_by_version(&deltas);
            let now = Instant::now();
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let mut a = Directory::new("a", 0, now);
            let mut z = Directory::new("z", 0, now);
            // Each host heard some of the changes, both some, or neither.
            for (i, d) in deltas.iter().enumerate() {
                match (split >> (2 * (i % 32))) & 3 {
                    0 => { a.apply(d.clone(), false); }
                    1 => { z.apply(d.clone(), false); }
                    2 => { a.apply(d.clone(), false); z.apply(d.clone(), false); }
                    _ => {}
                }
            }
            let mut whole = Directory::new("w", 0, now);
            for (i, d) in deltas.iter().enumerate() {
                if (split >> (2 * (i % 32))) & 3 != 3 {
                    whole.apply(d.clone(), false);
                }
            }
            sync(&mut a, &mut z, &mut rng);
            sync(&mut z, &mut a, &mut rng);
            prop_assert_eq!(a.canonical_state(), z.canonical_state());
            prop_assert_eq!(a.canonical_state(), whole.canonical_state());
        }

        #[test]
        fn events_replay_to_the_visible_state(
            deltas in prop::collection::vec(arb_delta(), 1..40),
            downs in prop::collection::vec((0usize..3, any::<bool>()), 0..6),
        ) {
            let now = Instant::now();
            let mut d = Directory::new("a", 0, now);
            let hosts = ["b", "c", "d"];
            for h in hosts { d.member_alive(h, 0); }
            let mut shown: BTreeMap<(String, String), PublishedEndpoint> = BTreeMap::new();
            let mut nets: BTreeMap<String, (String, Vni)> = BTreeMap::new();
            let mut policies: BTreeMap<String, (NetVersion, Vec<u8>)> = BTreeMap::new();
            let mut downs = downs.into_iter();
            for (i, delta) in deltas.into_iter().enumerate() {
                d.apply(delta, false);
                if i % 5 == 4 {
                    if let Some((h, up)) = downs.next() {
                        if up { d.member_alive(hosts[h], 0) } else { d.member_down(hosts[h]) }
                    }
                }
                while let Some(ev) = d.poll_event() {
                    match ev {
                        DirectoryEvent::EndpointUpsert { host, key, record } => { shown.insert((host, key), record); }
                        DirectoryEvent::EndpointRemoved { host, key, .. } => { prop_assert!(shown.remove(&(host, key)).is_some()); }
                        DirectoryEvent::NetworkUpsert { spec, vni } => { nets.insert(spec.name.clone(), (spec.id.clone(), vni)); }
                        DirectoryEvent::NetworkRemoved { name, .. } => { prop_assert!(nets.remove(&name).is_some()); }
                        DirectoryEvent::PolicyUpsert { name, version, bytes } => {
                            // Each event is a newer version than the last.
                            if let Some((old, _)) = policies.get(&name) {
                                prop_assert!(*old < version);
                            }
                            policies.insert(name, (version, bytes));
                        }
                        DirectoryEvent::PolicyRemoved { name } => { prop_assert!(policies.remove(&name).is_some()); }
                    }
                }
            }
            let actual: BTreeMap<(String, String), PublishedEndpoint> = d.endpoints().map(|e| ((e.host.to_owned(), e.key.to_owned()), e.record.clone())).collect();
            prop_assert_eq!(shown, actual);
            let actual_nets: BTreeMap<String, (String, Vni)> = d.networks().map(|n| (n.spec.name.clone(), (n.spec.id.clone(), n.vni))).collect();
            prop_assert_eq!(nets, actual_nets);
            let actual_policies: BTreeMap<String, (NetVersion, Vec<u8>)> = d.policies().map(|p| (p.name.to_owned(), (p.version.clone(), p.bytes.to_vec()))).collect();
            prop_assert_eq!(policies, actual_policies);
        }
    }
}
