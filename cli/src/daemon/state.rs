//! Durable state in the state directory, all of it in one redb database
//! (`state.redb`): networks, containers, endpoints (whose addresses are the
//! IPAM allocations), the overlays' cluster IPAM state, each endpoint's
//! published ports and the cluster peers to rejoin after a restart.
//!
//! Records are `postcard` (a stable, specified wire format) behind a
//! one-byte format version, so a later release can read what this one wrote.
//! Every change is one redb transaction. Container records are format 3
//! since they keep their labels, format 2 since they keep the state of
//! `vswitch run`'s process ([`ProcessState`]); format 1 and 2 records are
//! read and rewritten as 3 at their next change. Policies are a table of
//! their own, written whole per request; format 2 since they keep the
//! cluster directory's version of a cluster-wide one (format 1 is read).
//!
//! Releases up to 89781ca kept published ports in JSON files of their own
//! (`published/CONTAINER@NETWORK.json`) and the cluster peers in
//! `cluster-peers.json`. [`Store::open`] imports such files in one
//! transaction and removes them only after it committed, so a daemon that
//! dies in between imports the same files again at its next start. A file
//! that cannot be read is reported and left where it is.

use std::collections::BTreeMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};

use ipnet::{Ipv4Net, Ipv6Net};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{de::DeserializeOwned, Deserialize, Serialize};

use crate::api::{Driver, PortMapping, PortProto, SubnetSpec};

/// A subnet as stored: every field present (postcard is not
/// self-describing, so nothing may be skipped).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct StoredSubnet {
    subnet: Option<ipnet::IpNet>,
    gateway: Option<std::net::IpAddr>,
    ip_range: Option<ipnet::IpNet>,
}

mod subnets_format {
    use super::{StoredSubnet, SubnetSpec};
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(v: &[SubnetSpec], s: S) -> Result<S::Ok, S::Error> {
        v.iter()
            .map(|x| StoredSubnet {
                subnet: x.subnet,
                gateway: x.gateway,
                ip_range: x.ip_range,
            })
            .collect::<Vec<_>>()
            .serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<SubnetSpec>, D::Error> {
        Ok(Vec::<StoredSubnet>::deserialize(d)?
            .into_iter()
            .map(|x| SubnetSpec {
                subnet: x.subnet,
                gateway: x.gateway,
                ip_range: x.ip_range,
            })
            .collect())
    }
}

/// A `network create` request as stored: its subnets as [`StoredSubnet`]s.
mod request_format {
    use std::collections::BTreeMap;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use crate::api::{Driver, NetworkCreate, SubnetSpec};

    #[derive(Serialize, Deserialize)]
    struct Stored {
        name: String,
        driver: Driver,
        #[serde(with = "super::subnets_format")]
        subnets: Vec<SubnetSpec>,
        ipv6: bool,
        internal: bool,
        mtu: Option<u32>,
        options: BTreeMap<String, String>,
        labels: BTreeMap<String, String>,
    }

    pub fn serialize<S: Serializer>(v: &NetworkCreate, s: S) -> Result<S::Ok, S::Error> {
        Stored {
            name: v.name.clone(),
            driver: v.driver,
            subnets: v.subnets.clone(),
            ipv6: v.ipv6,
            internal: v.internal,
            mtu: v.mtu,
            options: v.options.clone(),
            labels: v.labels.clone(),
        }
        .serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<NetworkCreate, D::Error> {
        let v = Stored::deserialize(d)?;
        Ok(NetworkCreate {
            name: v.name,
            driver: v.driver,
            subnets: v.subnets,
            ipv6: v.ipv6,
            internal: v.internal,
            mtu: v.mtu,
            options: v.options,
            labels: v.labels,
        })
    }
}

/// A published port as stored: every field present, and a protocol of
/// our own whose variant order is the stored format (postcard writes the
/// index), so a change to the API type cannot change what is on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct StoredPort {
    host_ip: Option<IpAddr>,
    host_port: u16,
    container_port: u16,
    proto: StoredProto,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
enum StoredProto {
    Tcp,
    Udp,
}

impl From<&PortMapping> for StoredPort {
    fn from(p: &PortMapping) -> StoredPort {
        StoredPort {
            host_ip: p.host_ip,
            host_port: p.host_port,
            container_port: p.container_port,
            proto: match p.proto {
                PortProto::Tcp => StoredProto::Tcp,
                PortProto::Udp => StoredProto::Udp,
            },
        }
    }
}

impl From<StoredPort> for PortMapping {
    fn from(p: StoredPort) -> PortMapping {
        PortMapping {
            host_ip: p.host_ip,
            host_port: p.host_port,
            container_port: p.container_port,
            proto: match p.proto {
                StoredProto::Tcp => PortProto::Tcp,
                StoredProto::Udp => PortProto::Udp,
            },
        }
    }
}

const NETWORKS: TableDefinition<&str, &[u8]> = TableDefinition::new("networks");
const CONTAINERS: TableDefinition<&str, &[u8]> = TableDefinition::new("containers");
const ENDPOINTS: TableDefinition<&str, &[u8]> = TableDefinition::new("endpoints");
/// Cluster IPAM ownership state of overlay networks (encoded
/// `ipam::cluster::Message::Update`), by network name.
const IPAM: TableDefinition<&str, &[u8]> = TableDefinition::new("ipam");
/// Published ports (`Vec<StoredPort>`), keyed like endpoints; an endpoint
/// without published ports has no record.
const PORTS: TableDefinition<&str, &[u8]> = TableDefinition::new("ports");
/// The cluster peers `join-cluster` was given, as `IP:PORT` keys; the key is
/// the whole record.
const PEERS: TableDefinition<&str, ()> = TableDefinition::new("peers");

/// What the Docker plugin keeps of Docker's networks, endpoints and IPAM
/// pools ([`DockerRecord`]), keyed `pool/ID`, `net/ID` and `ep/ID`.
const DOCKER: TableDefinition<&str, &[u8]> = TableDefinition::new("docker");

/// CNI attachments ([`CniRecord`]), keyed `CONTAINER_ID/IFNAME`.
const CNI: TableDefinition<&str, &[u8]> = TableDefinition::new("cni");
/// Policies (`vswitch policy`), by name.
const POLICIES: TableDefinition<&str, &[u8]> = TableDefinition::new("policies");

/// The files of releases up to 89781ca that [`Store::open`] imports.
const LEGACY_PORTS_DIR: &str = "published";
const LEGACY_PEERS_FILE: &str = "cluster-peers.json";

/// Format version of every record.
const FORMAT: u8 = 1;

/// Errors of the state store.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The database could not be opened or written.
    #[error("state database {path}: {source}")]
    Db {
        path: PathBuf,
        #[source]
        source: Box<redb::Error>,
    },
    /// A record could not be decoded (written by an unknown version, or damaged).
    #[error("state record `{key}` in {table} cannot be read ({reason}); move the state directory aside to start afresh")]
    Corrupt {
        table: &'static str,
        key: String,
        reason: String,
    },
}

/// A network as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkRecord {
    pub name: String,
    pub id: String,
    pub created: String,
    pub driver: Driver,
    pub ipv6: bool,
    pub internal: bool,
    pub mtu: u32,
    /// Fully resolved: subnet, gateway and range are all known.
    #[serde(with = "subnets_format")]
    pub subnets: Vec<SubnetSpec>,
    pub options: BTreeMap<String, String>,
    pub labels: BTreeMap<String, String>,
    /// Overlays: the VXLAN network identifier.
    pub vni: Option<u32>,
    /// Overlays: foreign VTEPs admitted by hand.
    pub static_vteps: Vec<std::net::SocketAddr>,
}

impl NetworkRecord {
    /// The subnets as IPAM takes them (every stored subnet is resolved).
    pub fn subnet_configs(&self) -> Vec<ipam::SubnetConfig> {
        self.subnets
            .iter()
            .filter_map(|s| {
                Some(ipam::SubnetConfig {
                    subnet: s.subnet?,
                    gateway: s.gateway?,
                    ip_range: s.ip_range,
                })
            })
            .collect()
    }
}

/// A sandbox: a network namespace and, for `vswitch run`, its process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerRecord {
    pub name: String,
    pub id: String,
    pub netns: Option<PathBuf>,
    pub owns_netns: bool,
    /// When the daemon first knew it, in milliseconds since the Unix
    /// epoch; unknown for records of format 1.
    pub created_ms: Option<u64>,
    /// `vswitch run`'s command and what became of it; none for the
    /// containers of `network connect`, Docker and CNI.
    pub process: Option<Process>,
    /// `--label` values, which policies select by; none for records of
    /// formats 1 and 2.
    pub labels: BTreeMap<String, String>,
}

/// The command of a `vswitch run` container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Process {
    pub cmd: Vec<String>,
    /// `run -d`: its output goes to the container's log.
    pub detached: bool,
    pub state: ProcessState,
}

/// Where a `vswitch run` command is in its life.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ProcessState {
    /// Registered, not started yet (`vswitch run` is setting it up).
    Created,
    Running {
        /// The command.
        pid: ProcRef,
        /// What waits for it and reports its exit (the foreground `vswitch
        /// run`, or `run -d`'s supervisor); unknown for records of
        /// format 1.
        supervisor: Option<ProcRef>,
        started_ms: u64,
    },
    Exited {
        /// Unknown when neither a report nor the exit file said it.
        code: Option<i32>,
        started_ms: Option<u64>,
        finished_ms: u64,
        /// The networks it was on when it exited (its endpoints are
        /// released then).
        networks: Vec<String>,
    },
}

/// A process, told apart from a later one with the same pid by its start
/// time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcRef {
    pub pid: u32,
    /// Field 22 of `/proc/PID/stat` (clock ticks after boot); 0 when
    /// unknown.
    pub start: u64,
}

/// A container as format 1 stored it (releases before `vswitch ps`): a
/// `pid` only while `run -d`'s process was thought to run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct ContainerRecordV1 {
    name: String,
    id: String,
    netns: Option<PathBuf>,
    owns_netns: bool,
    pid: Option<u32>,
}

impl From<ContainerRecordV1> for ContainerRecord {
    fn from(v: ContainerRecordV1) -> ContainerRecord {
        ContainerRecord {
            name: v.name,
            id: v.id,
            netns: v.netns,
            owns_netns: v.owns_netns,
            created_ms: None,
            labels: BTreeMap::new(),
            // A pid is a `run -d` process of that release: running for
            // as long as that pid lives.
            process: v.pid.map(|pid| Process {
                cmd: Vec::new(),
                detached: true,
                state: ProcessState::Running {
                    pid: ProcRef { pid, start: 0 },
                    supervisor: None,
                    started_ms: 0,
                },
            }),
        }
    }
}

/// A container as format 2 stored it (releases before policies): no
/// labels.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct ContainerRecordV2 {
    name: String,
    id: String,
    netns: Option<PathBuf>,
    owns_netns: bool,
    created_ms: Option<u64>,
    process: Option<Process>,
}

impl From<ContainerRecordV2> for ContainerRecord {
    fn from(v: ContainerRecordV2) -> ContainerRecord {
        ContainerRecord {
            name: v.name,
            id: v.id,
            netns: v.netns,
            owns_netns: v.owns_netns,
            created_ms: v.created_ms,
            process: v.process,
            labels: BTreeMap::new(),
        }
    }
}

/// The format of container records: 3 since they keep their labels; 2
/// ([`ContainerRecordV2`], with their process) and 1
/// ([`ContainerRecordV1`]) are still read.
const CONTAINER_FORMAT: u8 = 3;
const CONTAINER_FORMAT_V2: u8 = 2;

fn encode_container(c: &ContainerRecord) -> Vec<u8> {
    let mut out = encode(c);
    out[0] = CONTAINER_FORMAT;
    out
}

fn decode_container(key: &str, bytes: &[u8]) -> Result<ContainerRecord, StateError> {
    match bytes.split_first() {
        Some((&CONTAINER_FORMAT, rest)) => {
            postcard::from_bytes(rest).map_err(|e| StateError::Corrupt {
                table: "containers",
                key: key.to_owned(),
                reason: e.to_string(),
            })
        }
        Some((&CONTAINER_FORMAT_V2, rest)) => postcard::from_bytes::<ContainerRecordV2>(rest)
            .map(ContainerRecord::from)
            .map_err(|e| StateError::Corrupt {
                table: "containers",
                key: key.to_owned(),
                reason: e.to_string(),
            }),
        _ => decode::<ContainerRecordV1>("containers", key, bytes).map(ContainerRecord::from),
    }
}

/// A policy, and when it was added.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyRecord {
    pub policy: switch::policy::Policy,
    /// RFC 3339.
    pub created: String,
    /// For a cluster-wide policy (one naming only overlays), the version
    /// of the cluster directory's change it is, offered again at that
    /// version after a restart; `None` for a policy of this host alone.
    pub cluster: Option<overlay::NetVersion>,
}

/// A policy as format 1 stored it (before cluster-wide policies).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct PolicyRecordV1 {
    policy: switch::policy::Policy,
    created: String,
}

/// The format of policy records: 2 since they keep their cluster version;
/// 1 ([`PolicyRecordV1`]) is read as a policy of this host alone.
const POLICY_FORMAT: u8 = 2;

fn encode_policy(p: &PolicyRecord) -> Vec<u8> {
    let mut out = encode(p);
    out[0] = POLICY_FORMAT;
    out
}

fn decode_policy(key: &str, bytes: &[u8]) -> Result<PolicyRecord, StateError> {
    match bytes.split_first() {
        Some((&POLICY_FORMAT, rest)) => {
            postcard::from_bytes(rest).map_err(|e| StateError::Corrupt {
                table: "policies",
                key: key.to_owned(),
                reason: e.to_string(),
            })
        }
        _ => decode::<PolicyRecordV1>("policies", key, bytes).map(|v| PolicyRecord {
            policy: v.policy,
            created: v.created,
            cluster: None,
        }),
    }
}

/// One container's attachment to one network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointRecord {
    pub container: String,
    pub network: String,
    pub id: String,
    pub ifname: String,
    pub mac: [u8; 6],
    pub ipv4: Option<Ipv4Net>,
    pub ipv6: Option<Ipv6Net>,
    pub gateway4: Option<Ipv4Addr>,
    pub gateway6: Option<Ipv6Addr>,
    pub aliases: Vec<String>,
}

impl EndpointRecord {
    /// The key in the endpoints table.
    pub fn key(&self) -> String {
        endpoint_key(&self.container, &self.network)
    }

    /// Its addresses, IPv4 first.
    pub fn addrs(&self) -> Vec<IpAddr> {
        self.ipv4
            .map(|a| IpAddr::V4(a.addr()))
            .into_iter()
            .chain(self.ipv6.map(|a| IpAddr::V6(a.addr())))
            .collect()
    }
}

/// The key of an endpoint: `container/network`.
pub fn endpoint_key(container: &str, network: &str) -> String {
    format!("{container}/{network}")
}

/// An address pool Docker asked the IPAM driver for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DockerPool {
    pub id: String,
    pub subnet: ipnet::IpNet,
    pub ip_range: Option<ipnet::IpNet>,
    /// The gateway Docker was given.
    pub gateway: Option<IpAddr>,
    /// The vswitch network the pool's addresses are allocated in, once
    /// Docker's network is made.
    pub network: Option<String>,
    /// Addresses handed to Docker and not yet released, with the Docker
    /// endpoint that uses each, once known.
    pub held: Vec<(IpAddr, Option<String>)>,
    /// `--aux-address`es asked for before the network existed.
    pub pending: Vec<IpAddr>,
    /// How many times Docker requested the pool (it releases as often).
    pub refs: u32,
}

/// A Docker network on a vswitch network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DockerNetwork {
    /// Docker's network id.
    pub id: String,
    /// The vswitch network.
    pub name: String,
    /// What makes the vswitch network again if it went while Docker's
    /// stays (an overlay removed by the last host that used it): the
    /// request CreateNetwork made, or would have made.
    #[serde(with = "request_format")]
    pub spec: crate::api::NetworkCreate,
}

/// A Docker endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DockerEndpoint {
    /// Docker's endpoint id.
    pub id: String,
    /// Docker's network id.
    pub network: String,
    pub ipv4: Option<ipnet::IpNet>,
    pub ipv6: Option<ipnet::IpNet>,
    pub mac: [u8; 6],
    /// The TAP's name in vswitchd's namespace, before Docker moves it.
    pub ifname: String,
    /// The vswitch container it is joined as (none before Join and after
    /// Leave).
    pub container: Option<String>,
}

/// A CNI attachment: a runtime's (container id, interface) as a vswitch
/// endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CniRecord {
    pub key: crate::api::CniKey,
    /// The vswitch container.
    pub container: String,
}

impl CniRecord {
    /// The key in the cni table.
    pub fn table_key(&self) -> String {
        format!("{}/{}", self.key.container_id, self.key.ifname)
    }
}

/// One record of the Docker plugin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum DockerRecord {
    Pool(DockerPool),
    Network(DockerNetwork),
    Endpoint(DockerEndpoint),
}

impl DockerRecord {
    /// The key in the docker table.
    pub fn key(&self) -> String {
        match self {
            DockerRecord::Pool(p) => format!("pool/{}", p.id),
            DockerRecord::Network(n) => format!("net/{}", n.id),
            DockerRecord::Endpoint(e) => format!("ep/{}", e.id),
        }
    }
}

/// Everything loaded at start.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub networks: Vec<NetworkRecord>,
    pub containers: Vec<ContainerRecord>,
    pub endpoints: Vec<EndpointRecord>,
}

/// The state database.
#[derive(Debug)]
pub struct Store {
    db: Database,
    path: PathBuf,
}

fn encode_ports(ports: &[PortMapping]) -> Vec<u8> {
    encode(&ports.iter().map(StoredPort::from).collect::<Vec<_>>())
}

fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    let mut out = vec![FORMAT];
    // Serializing our own plain structs to a Vec cannot fail.
    out.extend(postcard::to_stdvec(v).expect("postcard encoding of a state record"));
    out
}

fn decode<T: DeserializeOwned>(
    table: &'static str,
    key: &str,
    bytes: &[u8],
) -> Result<T, StateError> {
    let corrupt = |reason: String| StateError::Corrupt {
        table,
        key: key.to_owned(),
        reason,
    };
    match bytes.split_first() {
        Some((&FORMAT, rest)) => postcard::from_bytes(rest).map_err(|e| corrupt(e.to_string())),
        Some((v, _)) => Err(corrupt(format!("unknown format version {v}"))),
        None => Err(corrupt("empty record".into())),
    }
}

impl Store {
    /// Opens (or creates) `DIR/state.redb`.
    pub fn open(dir: &Path) -> Result<Store, StateError> {
        let path = dir.join("state.redb");
        let db = Database::create(&path).map_err(|e| StateError::Db {
            path: path.clone(),
            source: Box::new(e.into()),
        })?;
        let store = Store { db, path };
        // Create the tables so that reads of a fresh database succeed.
        store.write(|txn| {
            txn.open_table(NETWORKS)?;
            txn.open_table(CONTAINERS)?;
            txn.open_table(ENDPOINTS)?;
            txn.open_table(IPAM)?;
            txn.open_table(PORTS)?;
            txn.open_table(PEERS)?;
            txn.open_table(DOCKER)?;
            txn.open_table(CNI)?;
            txn.open_table(POLICIES)?;
            Ok(())
        })?;
        store.import_legacy(dir)?;
        Ok(store)
    }

    fn db_err(&self, e: impl Into<redb::Error>) -> StateError {
        StateError::Db {
            path: self.path.clone(),
            source: Box::new(e.into()),
        }
    }

    fn write(
        &self,
        f: impl FnOnce(&redb::WriteTransaction) -> Result<(), redb::Error>,
    ) -> Result<(), StateError> {
        let txn = self.db.begin_write().map_err(|e| self.db_err(e))?;
        f(&txn).map_err(|e| self.db_err(e))?;
        txn.commit().map_err(|e| self.db_err(e))
    }

    fn put(
        &self,
        table: TableDefinition<&str, &[u8]>,
        key: &str,
        value: &[u8],
    ) -> Result<(), StateError> {
        self.write(|txn| {
            txn.open_table(table)?.insert(key, value)?;
            Ok(())
        })
    }

    /// The record at `key` of `table`, read by `f`, if there is one.
    fn get<R>(
        &self,
        table: TableDefinition<&str, &[u8]>,
        key: &str,
        f: impl FnOnce(&[u8]) -> Result<R, StateError>,
    ) -> Result<Option<R>, StateError> {
        let txn = self.db.begin_read().map_err(|e| self.db_err(e))?;
        let t = txn.open_table(table).map_err(|e| self.db_err(e))?;
        match t.get(key).map_err(|e| self.db_err(e))? {
            Some(v) => f(v.value()).map(Some),
            None => Ok(None),
        }
    }

    fn delete(&self, table: TableDefinition<&str, &[u8]>, key: &str) -> Result<(), StateError> {
        self.write(|txn| {
            txn.open_table(table)?.remove(key)?;
            Ok(())
        })
    }

    pub fn put_network(&self, n: &NetworkRecord) -> Result<(), StateError> {
        self.put(NETWORKS, &n.name, &encode(n))
    }

    pub fn delete_network(&self, name: &str) -> Result<(), StateError> {
        self.delete(NETWORKS, name)
    }

    pub fn put_container(&self, c: &ContainerRecord) -> Result<(), StateError> {
        self.put(CONTAINERS, &c.name, &encode_container(c))
    }

    pub fn delete_container(&self, name: &str) -> Result<(), StateError> {
        self.delete(CONTAINERS, name)
    }

    pub fn put_endpoint(&self, e: &EndpointRecord) -> Result<(), StateError> {
        self.put(ENDPOINTS, &e.key(), &encode(e))
    }

    /// Deletes an endpoint and its published ports.
    pub fn delete_endpoint(&self, container: &str, network: &str) -> Result<(), StateError> {
        let key = endpoint_key(container, network);
        self.write(|txn| {
            txn.open_table(ENDPOINTS)?.remove(key.as_str())?;
            txn.open_table(PORTS)?.remove(key.as_str())?;
            Ok(())
        })
    }

    /// Stores the published ports of an endpoint; none removes the record.
    pub fn put_ports(
        &self,
        container: &str,
        network: &str,
        ports: &[PortMapping],
    ) -> Result<(), StateError> {
        if ports.is_empty() {
            return self.delete_ports(container, network);
        }
        self.put(
            PORTS,
            &endpoint_key(container, network),
            &encode_ports(ports),
        )
    }

    /// The published ports of an endpoint (none when there is no record).
    pub fn load_ports(
        &self,
        container: &str,
        network: &str,
    ) -> Result<Vec<PortMapping>, StateError> {
        let key = endpoint_key(container, network);
        let stored = self.get(PORTS, &key, |v| decode::<Vec<StoredPort>>("ports", &key, v))?;
        Ok(stored
            .unwrap_or_default()
            .into_iter()
            .map(PortMapping::from)
            .collect())
    }

    pub fn delete_ports(&self, container: &str, network: &str) -> Result<(), StateError> {
        self.delete(PORTS, &endpoint_key(container, network))
    }

    /// Adds cluster peers to those remembered (one transaction for all).
    pub fn add_peers(&self, peers: &[SocketAddr]) -> Result<(), StateError> {
        self.write(|txn| {
            let mut t = txn.open_table(PEERS)?;
            for p in peers {
                t.insert(p.to_string().as_str(), ())?;
            }
            Ok(())
        })
    }

    /// The remembered cluster peers, in the order of their text.
    pub fn peers(&self) -> Result<Vec<SocketAddr>, StateError> {
        let txn = self.db.begin_read().map_err(|e| self.db_err(e))?;
        let t = txn.open_table(PEERS).map_err(|e| self.db_err(e))?;
        let mut out = Vec::new();
        for item in t.iter().map_err(|e| self.db_err(e))? {
            let (k, _) = item.map_err(|e| self.db_err(e))?;
            let addr = k.value().parse().map_err(|_| StateError::Corrupt {
                table: "peers",
                key: k.value().to_owned(),
                reason: "not an IP:PORT".into(),
            })?;
            out.push(addr);
        }
        Ok(out)
    }

    /// Forgets every cluster peer (`leave-cluster`).
    pub fn clear_peers(&self) -> Result<(), StateError> {
        self.write(|txn| {
            txn.open_table(PEERS)?.retain(|_, _| false)?;
            Ok(())
        })
    }

    /// Stores an overlay network's IPAM ownership state.
    pub fn put_ipam(&self, network: &str, state: &[u8]) -> Result<(), StateError> {
        self.put(IPAM, network, state)
    }

    pub fn delete_ipam(&self, network: &str) -> Result<(), StateError> {
        self.delete(IPAM, network)
    }

    /// An overlay network's stored IPAM ownership state.
    pub fn get_ipam(&self, network: &str) -> Result<Option<Vec<u8>>, StateError> {
        self.get(IPAM, network, |v| Ok(v.to_vec()))
    }

    fn load_table<T: DeserializeOwned>(
        &self,
        txn: &redb::ReadTransaction,
        table: TableDefinition<&str, &[u8]>,
        name: &'static str,
    ) -> Result<Vec<T>, StateError> {
        let t = txn.open_table(table).map_err(|e| self.db_err(e))?;
        let mut out = Vec::new();
        for item in t.iter().map_err(|e| self.db_err(e))? {
            let (k, v) = item.map_err(|e| self.db_err(e))?;
            out.push(decode(name, k.value(), v.value())?);
        }
        Ok(out)
    }

    /// Stores a record of the Docker plugin.
    pub fn put_docker(&self, r: &DockerRecord) -> Result<(), StateError> {
        self.put(DOCKER, &r.key(), &encode(r))
    }

    /// Deletes a record of the Docker plugin by its key.
    pub fn delete_docker(&self, key: &str) -> Result<(), StateError> {
        self.delete(DOCKER, key)
    }

    /// Stores a CNI attachment.
    pub fn put_cni(&self, r: &CniRecord) -> Result<(), StateError> {
        self.put(CNI, &r.table_key(), &encode(r))
    }

    /// Deletes a CNI attachment.
    pub fn delete_cni(&self, r: &CniRecord) -> Result<(), StateError> {
        self.delete(CNI, &r.table_key())
    }

    /// Every policy.
    pub fn load_policies(&self) -> Result<Vec<PolicyRecord>, StateError> {
        let txn = self.db.begin_read().map_err(|e| self.db_err(e))?;
        let t = txn.open_table(POLICIES).map_err(|e| self.db_err(e))?;
        let mut out = Vec::new();
        for item in t.iter().map_err(|e| self.db_err(e))? {
            let (k, v) = item.map_err(|e| self.db_err(e))?;
            out.push(decode_policy(k.value(), v.value())?);
        }
        Ok(out)
    }

    /// Stores policies and deletes others, in one transaction: a set of
    /// policies is kept whole or not at all.
    pub fn put_policies(&self, put: &[PolicyRecord], delete: &[&str]) -> Result<(), StateError> {
        self.write(|txn| {
            let mut t = txn.open_table(POLICIES)?;
            for p in put {
                t.insert(p.policy.name.as_str(), encode_policy(p).as_slice())?;
            }
            for name in delete {
                t.remove(*name)?;
            }
            Ok(())
        })
    }

    /// Every CNI attachment.
    pub fn load_cni(&self) -> Result<Vec<CniRecord>, StateError> {
        let txn = self.db.begin_read().map_err(|e| self.db_err(e))?;
        self.load_table(&txn, CNI, "cni")
    }

    /// Every record of the Docker plugin.
    pub fn load_docker(&self) -> Result<Vec<DockerRecord>, StateError> {
        let txn = self.db.begin_read().map_err(|e| self.db_err(e))?;
        self.load_table(&txn, DOCKER, "docker")
    }

    /// Reads everything.
    pub fn load(&self) -> Result<Snapshot, StateError> {
        let txn = self.db.begin_read().map_err(|e| self.db_err(e))?;
        Ok(Snapshot {
            networks: self.load_table(&txn, NETWORKS, "networks")?,
            containers: {
                let t = txn.open_table(CONTAINERS).map_err(|e| self.db_err(e))?;
                let mut out = Vec::new();
                for item in t.iter().map_err(|e| self.db_err(e))? {
                    let (k, v) = item.map_err(|e| self.db_err(e))?;
                    out.push(decode_container(k.value(), v.value())?);
                }
                out
            },
            endpoints: self.load_table(&txn, ENDPOINTS, "endpoints")?,
        })
    }
}

/// What the files of releases up to 89781ca hold, read but not yet imported.
#[derive(Debug, Default)]
struct Legacy {
    /// Endpoint key, its published ports.
    ports: Vec<(String, Vec<PortMapping>)>,
    peers: Vec<SocketAddr>,
    /// The files read (or left unfinished by those releases), to remove
    /// once the import committed.
    done: Vec<PathBuf>,
}

impl Legacy {
    /// Reads `DIR/published/*.json` and `DIR/cluster-peers.json`. What
    /// cannot be read is logged and left in place.
    fn read(dir: &Path) -> Legacy {
        let mut legacy = Legacy::default();
        let ports_dir = dir.join(LEGACY_PORTS_DIR);
        match std::fs::read_dir(&ports_dir) {
            Ok(entries) => {
                for entry in entries.flatten() {
                    legacy.read_ports_file(&entry.path());
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(path = %ports_dir.display(), error = %e, "cannot read the published ports of an earlier release; left in place")
            }
        }
        let peers = dir.join(LEGACY_PEERS_FILE);
        match std::fs::read(&peers) {
            Ok(body) => match serde_json::from_slice::<Vec<String>>(&body) {
                Ok(list) => {
                    for p in list {
                        match p.parse() {
                            Ok(addr) => legacy.peers.push(addr),
                            Err(_) => {
                                tracing::warn!(path = %peers.display(), peer = %p, "not an IP:PORT; this cluster peer is dropped")
                            }
                        }
                    }
                    legacy.done.push(peers);
                }
                Err(e) => {
                    tracing::warn!(path = %peers.display(), error = %e, "damaged cluster peers file of an earlier release; not imported, left in place")
                }
            },
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(path = %peers.display(), error = %e, "cannot read the cluster peers of an earlier release; left in place")
            }
        }
        legacy
    }

    /// One `published/CONTAINER@NETWORK.json`.
    fn read_ports_file(&mut self, path: &Path) {
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            return;
        };
        // Written whole under this name, then renamed: a leftover is a
        // write that never finished, which those releases never read.
        if name.ends_with(".json.tmp") {
            self.done.push(path.to_owned());
            return;
        }
        let Some((container, network)) = name
            .strip_suffix(".json")
            .and_then(|stem| stem.split_once('@'))
        else {
            tracing::warn!(path = %path.display(), "not a published ports file; left in place");
            return;
        };
        let ports = std::fs::read(path)
            .map_err(|e| e.to_string())
            .and_then(|b| {
                serde_json::from_slice::<Vec<PortMapping>>(&b).map_err(|e| e.to_string())
            });
        match ports {
            Ok(ports) => {
                self.ports.push((endpoint_key(container, network), ports));
                self.done.push(path.to_owned());
            }
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "damaged published ports file of an earlier release; not imported, left in place")
            }
        }
    }
}

impl Store {
    /// Imports the files of releases up to 89781ca in one transaction,
    /// then removes them. Ports of an endpoint that is no longer stored
    /// (a disconnect those releases did not finish) are dropped.
    fn import_legacy(&self, dir: &Path) -> Result<(), StateError> {
        let legacy = Legacy::read(dir);
        if !legacy.done.is_empty() {
            self.import(&legacy)?;
        }
        // Gone when empty; a file left in place keeps it.
        let _ = std::fs::remove_dir(dir.join(LEGACY_PORTS_DIR));
        Ok(())
    }

    fn import(&self, legacy: &Legacy) -> Result<(), StateError> {
        let (mut imported, mut dropped) = (0usize, 0usize);
        self.write(|txn| {
            let endpoints = txn.open_table(ENDPOINTS)?;
            let mut ports = txn.open_table(PORTS)?;
            for (key, list) in &legacy.ports {
                if endpoints.get(key.as_str())?.is_none() || list.is_empty() {
                    dropped += 1;
                    continue;
                }
                ports.insert(key.as_str(), encode_ports(list).as_slice())?;
                imported += 1;
            }
            let mut peers = txn.open_table(PEERS)?;
            for p in &legacy.peers {
                peers.insert(p.to_string().as_str(), ())?;
            }
            Ok(())
        })?;
        // Only now: until the commit, the files are the only copy.
        for f in &legacy.done {
            if let Err(e) = std::fs::remove_file(f) {
                if e.kind() != io::ErrorKind::NotFound {
                    tracing::warn!(path = %f.display(), error = %e, "imported, but cannot remove it");
                }
            }
        }
        tracing::info!(
            endpoints = imported,
            dropped,
            peers = legacy.peers.len(),
            "published ports and cluster peers of an earlier release imported into {}",
            self.path.display()
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmpdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("vswitch-state-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn docker_records_read_back_as_written() {
        let dir = tmpdir("docker");
        let records = vec![
            DockerRecord::Pool(DockerPool {
                id: "vswitch/10.2.0.0/24".into(),
                subnet: "10.2.0.0/24".parse().unwrap(),
                ip_range: Some("10.2.0.128/25".parse().unwrap()),
                gateway: Some("10.2.0.1".parse().unwrap()),
                network: Some("web".into()),
                held: vec![("10.2.0.130".parse().unwrap(), Some("ep1".into()))],
                pending: vec!["10.2.0.9".parse().unwrap()],
                refs: 2,
            }),
            DockerRecord::Network(DockerNetwork {
                id: "n1".into(),
                name: "web".into(),
                spec: crate::api::NetworkCreate {
                    name: "web".into(),
                    subnets: vec![SubnetSpec {
                        subnet: Some("10.2.0.0/24".parse().unwrap()),
                        gateway: None,
                        ip_range: None,
                    }],
                    mtu: Some(1400),
                    labels: [("com.docker.network.id".into(), "n1".into())].into(),
                    ..Default::default()
                },
            }),
            DockerRecord::Endpoint(DockerEndpoint {
                id: "ep1".into(),
                network: "n1".into(),
                ipv4: Some("10.2.0.130/24".parse().unwrap()),
                ipv6: None,
                mac: [2, 0x42, 10, 2, 0, 130],
                ifname: "vsdep1".into(),
                container: None,
            }),
        ];
        {
            let s = Store::open(&dir).unwrap();
            for r in &records {
                s.put_docker(r).unwrap();
            }
        }
        let mut back = Store::open(&dir).unwrap().load_docker().unwrap();
        back.sort_by_key(DockerRecord::key);
        let mut want = records;
        want.sort_by_key(DockerRecord::key);
        assert_eq!(back, want);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn survives_reopen() {
        let dir = tmpdir("reopen");
        let net = NetworkRecord {
            name: "web".into(),
            id: "abc".into(),
            created: "2026-01-01T00:00:00Z".into(),
            driver: Driver::Bridge,
            ipv6: true,
            internal: false,
            mtu: 1500,
            subnets: vec![SubnetSpec {
                subnet: Some("10.1.0.0/24".parse().unwrap()),
                gateway: Some("10.1.0.1".parse().unwrap()),
                ip_range: None,
            }],
            options: BTreeMap::new(),
            labels: [("a".to_string(), "b".to_string())].into(),
            vni: Some(42),
            static_vteps: vec!["192.0.2.9:4789".parse().unwrap()],
        };
        let ep = EndpointRecord {
            container: "c1".into(),
            network: "web".into(),
            id: "e1".into(),
            ifname: "eth0".into(),
            mac: [2, 0x42, 10, 1, 0, 2],
            ipv4: Some("10.1.0.2/24".parse().unwrap()),
            ipv6: None,
            gateway4: Some("10.1.0.1".parse().unwrap()),
            gateway6: None,
            aliases: vec!["db".into()],
        };
        {
            let s = Store::open(&dir).unwrap();
            s.put_network(&net).unwrap();
            s.put_endpoint(&ep).unwrap();
            s.put_endpoint(&EndpointRecord {
                container: "c2".into(),
                ..ep.clone()
            })
            .unwrap();
            s.delete_endpoint("c2", "web").unwrap();
        }
        let s = Store::open(&dir).unwrap();
        let snap = s.load().unwrap();
        assert_eq!(snap.networks, vec![net]);
        assert_eq!(snap.endpoints, vec![ep]);
        assert!(snap.containers.is_empty());
        std::fs::remove_dir_all(dir).unwrap();
    }

    fn endpoint(container: &str, network: &str) -> EndpointRecord {
        EndpointRecord {
            container: container.into(),
            network: network.into(),
            id: format!("{container}-{network}"),
            ifname: "eth0".into(),
            mac: [2, 0x42, 10, 1, 0, 2],
            ipv4: Some("10.1.0.2/24".parse().unwrap()),
            ipv6: None,
            gateway4: Some("10.1.0.1".parse().unwrap()),
            gateway6: None,
            aliases: Vec::new(),
        }
    }

    fn mappings() -> Vec<PortMapping> {
        vec![
            PortMapping {
                host_ip: None,
                host_port: 8080,
                container_port: 80,
                proto: PortProto::Tcp,
            },
            PortMapping {
                host_ip: Some("127.0.0.1".parse().unwrap()),
                host_port: 5353,
                container_port: 53,
                proto: PortProto::Udp,
            },
            PortMapping {
                host_ip: Some("::1".parse().unwrap()),
                host_port: 8443,
                container_port: 443,
                proto: PortProto::Tcp,
            },
        ]
    }

    #[test]
    fn ports_survive_reopen_and_go_with_their_endpoint() {
        let dir = tmpdir("ports");
        {
            let s = Store::open(&dir).unwrap();
            s.put_endpoint(&endpoint("c1", "web")).unwrap();
            s.put_endpoint(&endpoint("c2", "web")).unwrap();
            s.put_ports("c1", "web", &mappings()).unwrap();
            s.put_ports("c2", "web", &mappings()[..1]).unwrap();
        }
        let s = Store::open(&dir).unwrap();
        assert_eq!(s.load_ports("c1", "web").unwrap(), mappings());
        assert_eq!(s.load_ports("c2", "web").unwrap(), mappings()[..1]);
        assert!(s.load_ports("c1", "db").unwrap().is_empty());
        // None published: no record.
        s.put_ports("c2", "web", &[]).unwrap();
        assert!(s.load_ports("c2", "web").unwrap().is_empty());
        s.put_ports("c2", "web", &mappings()).unwrap();
        s.delete_ports("c2", "web").unwrap();
        assert!(s.load_ports("c2", "web").unwrap().is_empty());
        // Deleting the endpoint deletes its ports, in the same transaction.
        s.delete_endpoint("c1", "web").unwrap();
        assert!(s.load_ports("c1", "web").unwrap().is_empty());
        assert_eq!(s.load().unwrap().endpoints, vec![endpoint("c2", "web")]);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn ports_record_is_postcard_behind_the_format_byte() {
        // The stored bytes of one mapping, field by field: a change here
        // is a change of the format, which needs a new FORMAT.
        let bytes = encode_ports(&mappings()[1..2]);
        assert_eq!(
            bytes,
            [FORMAT, 1, 1, 0, 127, 0, 0, 1, 0xe9, 0x29, 53, 1],
            "format, 1 mapping, Some(V4(127.0.0.1)), 5353, 53, udp"
        );
        let back: Vec<StoredPort> = decode("ports", "k", &bytes).unwrap();
        assert_eq!(PortMapping::from(back[0]), mappings()[1]);
    }

    #[test]
    fn peers_are_a_set_until_cleared() {
        let dir = tmpdir("peers");
        let a: SocketAddr = "192.0.2.2:7946".parse().unwrap();
        let b: SocketAddr = "[2001:db8::2]:7950".parse().unwrap();
        {
            let s = Store::open(&dir).unwrap();
            assert!(s.peers().unwrap().is_empty());
            s.add_peers(&[a]).unwrap();
            s.add_peers(&[b, a]).unwrap();
        }
        let s = Store::open(&dir).unwrap();
        assert_eq!(s.peers().unwrap(), vec![a, b]);
        s.clear_peers().unwrap();
        assert!(s.peers().unwrap().is_empty());
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// A state directory as releases up to 89781ca left it: endpoints in
    /// redb, their ports and the cluster peers in JSON files.
    fn legacy_dir(tag: &str) -> PathBuf {
        let dir = tmpdir(tag);
        {
            let s = Store::open(&dir).unwrap();
            s.put_endpoint(&endpoint("c1", "web")).unwrap();
            s.put_endpoint(&endpoint("c1", "db")).unwrap();
            s.put_endpoint(&endpoint("c3", "web")).unwrap();
        }
        let published = dir.join("published");
        std::fs::create_dir_all(&published).unwrap();
        // As the old daemon wrote them (serde_json of Vec<PortMapping>).
        std::fs::write(
            published.join("c1@web.json"),
            r#"[{"HostIp":null,"HostPort":8080,"ContainerPort":80,"Protocol":"tcp"},{"HostIp":"127.0.0.1","HostPort":5353,"ContainerPort":53,"Protocol":"udp"},{"HostIp":"::1","HostPort":8443,"ContainerPort":443,"Protocol":"tcp"}]"#,
        )
        .unwrap();
        std::fs::write(
            published.join("c1@db.json"),
            r#"[{"HostIp":null,"HostPort":8080,"ContainerPort":80,"Protocol":"tcp"}]"#,
        )
        .unwrap();
        // Damaged: cut short.
        std::fs::write(published.join("c3@web.json"), r#"[{"HostIp":null,"Hos"#).unwrap();
        // An endpoint that is gone (a disconnect that did not finish).
        std::fs::write(
            published.join("gone@web.json"),
            r#"[{"HostIp":null,"HostPort":9,"ContainerPort":9,"Protocol":"udp"}]"#,
        )
        .unwrap();
        // A write that never finished.
        std::fs::write(published.join("c1@web.json.tmp"), "[").unwrap();
        std::fs::write(
            dir.join("cluster-peers.json"),
            r#"["192.0.2.2:7946","192.0.2.3:7950"]"#,
        )
        .unwrap();
        dir
    }

    #[test]
    fn open_imports_the_json_files_of_earlier_releases() {
        let dir = legacy_dir("import");
        // Written by the Store of those releases, which had no such tables.
        {
            let s = Store::open(&dir).unwrap();
            assert_eq!(s.load_ports("c1", "web").unwrap(), mappings());
            assert_eq!(s.load_ports("c1", "db").unwrap(), mappings()[..1]);
            // Damaged: skipped, left in place for a person to read.
            assert!(s.load_ports("c3", "web").unwrap().is_empty());
            assert!(s.load_ports("gone", "web").unwrap().is_empty());
            assert_eq!(
                s.peers().unwrap(),
                vec![
                    "192.0.2.2:7946".parse::<SocketAddr>().unwrap(),
                    "192.0.2.3:7950".parse().unwrap()
                ]
            );
        }
        let published = dir.join("published");
        let left: Vec<String> = std::fs::read_dir(&published)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(left, vec!["c3@web.json".to_string()]);
        assert!(!dir.join("cluster-peers.json").exists());
        // Without the damaged file, the directory goes too.
        std::fs::remove_file(published.join("c3@web.json")).unwrap();
        let s = Store::open(&dir).unwrap();
        assert!(!published.exists());
        assert_eq!(s.load_ports("c1", "web").unwrap(), mappings());
        assert_eq!(s.peers().unwrap().len(), 2);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn import_again_after_a_crash_before_the_files_were_removed() {
        let dir = legacy_dir("again");
        let copy = tmpdir("again-files");
        let published = dir.join("published");
        std::fs::create_dir_all(copy.join("published")).unwrap();
        for f in ["c1@web.json", "c1@db.json"] {
            std::fs::copy(published.join(f), copy.join("published").join(f)).unwrap();
        }
        std::fs::copy(
            dir.join("cluster-peers.json"),
            copy.join("cluster-peers.json"),
        )
        .unwrap();
        drop(Store::open(&dir).unwrap());
        // The files back, as if the daemon had died between the commit and
        // their removal.
        for f in ["c1@web.json", "c1@db.json"] {
            std::fs::copy(copy.join("published").join(f), published.join(f)).unwrap();
        }
        std::fs::copy(
            copy.join("cluster-peers.json"),
            dir.join("cluster-peers.json"),
        )
        .unwrap();
        let s = Store::open(&dir).unwrap();
        assert_eq!(s.load_ports("c1", "web").unwrap(), mappings());
        assert_eq!(s.load_ports("c1", "db").unwrap(), mappings()[..1]);
        assert_eq!(s.peers().unwrap().len(), 2);
        assert!(!dir.join("cluster-peers.json").exists());
        assert!(!published.join("c1@web.json").exists());
        std::fs::remove_dir_all(dir).unwrap();
        std::fs::remove_dir_all(copy).unwrap();
    }

    #[test]
    fn a_damaged_peers_file_is_left_and_not_fatal() {
        let dir = tmpdir("badpeers");
        std::fs::write(dir.join("cluster-peers.json"), "[\"192.0.2.2:79").unwrap();
        let s = Store::open(&dir).unwrap();
        assert!(s.peers().unwrap().is_empty());
        assert!(dir.join("cluster-peers.json").exists());
        drop(s);
        // Entries that are not IP:PORT are dropped, the others imported.
        std::fs::write(
            dir.join("cluster-peers.json"),
            r#"["192.0.2.2:7946","not an address"]"#,
        )
        .unwrap();
        let s = Store::open(&dir).unwrap();
        assert_eq!(
            s.peers().unwrap(),
            vec!["192.0.2.2:7946".parse::<SocketAddr>().unwrap()]
        );
        assert!(!dir.join("cluster-peers.json").exists());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn containers_keep_their_process_and_labels_and_formats_1_and_2_are_still_read() {
        let dir = tmpdir("containers");
        let exited = ContainerRecord {
            name: "job".into(),
            id: "ab".repeat(32),
            netns: None,
            owns_netns: false,
            created_ms: Some(1_700_000_000_000),
            labels: [("app".to_string(), "db".to_string())].into(),
            process: Some(Process {
                cmd: vec!["sh".into(), "-c".into(), "exit 3".into()],
                detached: true,
                state: ProcessState::Exited {
                    code: Some(3),
                    started_ms: Some(1_700_000_000_100),
                    finished_ms: 1_700_000_001_000,
                    networks: vec!["web".into()],
                },
            }),
        };
        let running = ContainerRecord {
            name: "web1".into(),
            process: Some(Process {
                cmd: vec!["sleep".into(), "600".into()],
                detached: false,
                state: ProcessState::Running {
                    pid: ProcRef { pid: 42, start: 7 },
                    supervisor: Some(ProcRef { pid: 41, start: 6 }),
                    started_ms: 5,
                },
            }),
            ..exited.clone()
        };
        {
            let s = Store::open(&dir).unwrap();
            s.put_container(&exited).unwrap();
            s.put_container(&running).unwrap();
            // What the release before `vswitch ps` wrote: format 1.
            let v1 = encode(&ContainerRecordV1 {
                name: "old".into(),
                id: "cd".repeat(32),
                netns: Some("/run/netns/old".into()),
                owns_netns: true,
                pid: Some(99),
            });
            assert_eq!(v1[0], 1);
            s.put(CONTAINERS, "old", &v1).unwrap();
            // What the release before policies wrote: format 2.
            let mut v2 = encode(&ContainerRecordV2 {
                name: "v2".into(),
                id: "ef".repeat(32),
                netns: None,
                owns_netns: false,
                created_ms: Some(3),
                process: None,
            });
            v2[0] = 2;
            s.put(CONTAINERS, "v2", &v2).unwrap();
        }
        let s = Store::open(&dir).unwrap();
        let mut got = s.load().unwrap().containers;
        got.sort_by(|a, b| a.name.cmp(&b.name));
        assert_eq!(got[0], exited);
        assert_eq!(
            got[1],
            ContainerRecord {
                name: "old".into(),
                id: "cd".repeat(32),
                netns: Some("/run/netns/old".into()),
                owns_netns: true,
                created_ms: None,
                labels: BTreeMap::new(),
                process: Some(Process {
                    cmd: Vec::new(),
                    detached: true,
                    state: ProcessState::Running {
                        pid: ProcRef { pid: 99, start: 0 },
                        supervisor: None,
                        started_ms: 0,
                    },
                }),
            }
        );
        assert_eq!(
            got[2],
            ContainerRecord {
                name: "v2".into(),
                id: "ef".repeat(32),
                netns: None,
                owns_netns: false,
                created_ms: Some(3),
                process: None,
                labels: BTreeMap::new(),
            }
        );
        assert_eq!(got[3], running);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn policies_are_kept_and_replaced_in_one_transaction() {
        let dir = tmpdir("policies");
        let allow = |name: &str| PolicyRecord {
            policy: switch::policy::Policy {
                name: name.into(),
                rule: switch::policy::Rule::Allow {
                    from: switch::policy::Peer::parse("front").unwrap(),
                    to: switch::policy::Peer::parse("back/label=app=db").unwrap(),
                    ports: vec![switch::policy::PortRange::parse("6379").unwrap()],
                },
            },
            created: "2026-12-08T00:00:00Z".into(),
            cluster: None,
        };
        let clustered = PolicyRecord {
            cluster: Some(overlay::NetVersion {
                clock: 1_765_000_000_123,
                origin: "h1".into(),
            }),
            ..allow("d")
        };
        {
            let s = Store::open(&dir).unwrap();
            s.put_policies(&[allow("a"), allow("b")], &[]).unwrap();
            s.put_policies(&[allow("c"), clustered.clone()], &["a"])
                .unwrap();
            // What the release before cluster-wide policies wrote: format 1.
            let old = PolicyRecordV1 {
                policy: allow("e").policy,
                created: allow("e").created,
            };
            s.write(|txn| {
                txn.open_table(POLICIES)?
                    .insert("e", encode(&old).as_slice())?;
                Ok(())
            })
            .unwrap();
        }
        let s = Store::open(&dir).unwrap();
        let got = s.load_policies().unwrap();
        assert_eq!(got, vec![allow("b"), allow("c"), clustered, allow("e")]);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn refuses_unknown_format() {
        let err = decode::<ContainerRecord>("containers", "x", &[9, 1, 2]).unwrap_err();
        assert!(err.to_string().contains("unknown format version 9"));
        assert!(decode::<ContainerRecord>("containers", "x", &[]).is_err());
        assert!(decode::<ContainerRecord>("containers", "x", &[FORMAT, 0xff]).is_err());
    }
}
