//! Durable state in the state directory: networks, containers and endpoints
//! (whose addresses are the IPAM allocations), in a redb database.
//!
//! Records are `postcard` (a stable, specified wire format) behind a
//! one-byte format version, so a later release can read what this one wrote.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use ipnet::{Ipv4Net, Ipv6Net};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{de::DeserializeOwned, Deserialize, Serialize};

use crate::api::{Driver, SubnetSpec};

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

const NETWORKS: TableDefinition<&str, &[u8]> = TableDefinition::new("networks");
const CONTAINERS: TableDefinition<&str, &[u8]> = TableDefinition::new("containers");
const ENDPOINTS: TableDefinition<&str, &[u8]> = TableDefinition::new("endpoints");
/// Cluster IPAM ownership state of overlay networks (encoded
/// `ipam::cluster::Message::Update`), by network name.
const IPAM: TableDefinition<&str, &[u8]> = TableDefinition::new("ipam");

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

/// A sandbox: a network namespace and, for `vswitch run -d`, its process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerRecord {
    pub name: String,
    pub id: String,
    pub netns: Option<PathBuf>,
    pub owns_netns: bool,
    pub pid: Option<u32>,
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
}

/// The key of an endpoint: `container/network`.
pub fn endpoint_key(container: &str, network: &str) -> String {
    format!("{container}/{network}")
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
            Ok(())
        })?;
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
        self.put(CONTAINERS, &c.name, &encode(c))
    }

    pub fn delete_container(&self, name: &str) -> Result<(), StateError> {
        self.delete(CONTAINERS, name)
    }

    pub fn put_endpoint(&self, e: &EndpointRecord) -> Result<(), StateError> {
        self.put(ENDPOINTS, &e.key(), &encode(e))
    }

    pub fn delete_endpoint(&self, container: &str, network: &str) -> Result<(), StateError> {
        self.delete(ENDPOINTS, &endpoint_key(container, network))
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
        let txn = self.db.begin_read().map_err(|e| self.db_err(e))?;
        let t = txn.open_table(IPAM).map_err(|e| self.db_err(e))?;
        let v = t.get(network).map_err(|e| self.db_err(e))?;
        Ok(v.map(|v| v.value().to_vec()))
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

    /// Reads everything.
    pub fn load(&self) -> Result<Snapshot, StateError> {
        let txn = self.db.begin_read().map_err(|e| self.db_err(e))?;
        Ok(Snapshot {
            networks: self.load_table(&txn, NETWORKS, "networks")?,
            containers: self.load_table(&txn, CONTAINERS, "containers")?,
            endpoints: self.load_table(&txn, ENDPOINTS, "endpoints")?,
        })
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

    #[test]
    fn refuses_unknown_format() {
        let err = decode::<ContainerRecord>("containers", "x", &[9, 1, 2]).unwrap_err();
        assert!(err.to_string().contains("unknown format version 9"));
        assert!(decode::<ContainerRecord>("containers", "x", &[]).is_err());
        assert!(decode::<ContainerRecord>("containers", "x", &[FORMAT, 0xff]).is_err());
    }
}
