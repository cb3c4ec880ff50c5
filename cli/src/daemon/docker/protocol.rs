//! Docker's plugin protocol, version 1 ("legacy" plugins): what dockerd
//! POSTs to `/run/docker/plugins/vswitch.sock` for a remote network driver
//! and a remote IPAM driver, decoded by [`Call::decode`], a pure function
//! of path and body, so that the decoding of these untrusted bytes is one
//! place to test and fuzz.
//!
//! The shapes follow moby's `libnetwork/docs/remote.md`, `docs/ipam.md` and
//! `drivers/remote/api/api.go`. Docker is lenient about what it sends (an
//! empty body for calls without arguments, `null` for absent maps, a
//! gateway as `A.B.C.D/NN` or as a plain address), and so is the decoder;
//! it is strict about what it keeps: every id, address and path is checked
//! here, so the controller sees only well-formed calls.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;

use ipnet::IpNet;
use serde::Deserialize;
use serde_json::Value;

use crate::api::{PortMapping, PortProto, MAX_PORT_MAPPINGS};

/// What `Plugin.Activate` says the plugin implements.
pub const IMPLEMENTS: [&str; 2] = ["NetworkDriver", "IpamDriver"];

/// The address space names the IPAM driver answers with.
pub const LOCAL_SPACE: &str = "vswitch-local";
/// The global address space (overlays).
pub const GLOBAL_SPACE: &str = "vswitch-global";

/// `-o` options of `docker network create` arrive under this key.
pub const GENERIC: &str = "com.docker.network.generic";
const ENABLE_IPV6: &str = "com.docker.network.enable_ipv6";
const INTERNAL: &str = "com.docker.network.internal";
/// The published ports of an endpoint.
pub const PORTMAP: &str = "com.docker.network.portmap";
const REQUEST_ADDRESS_TYPE: &str = "RequestAddressType";
const GATEWAY_ADDRESS: &str = "com.docker.network.gateway";

/// Which of the plugin's APIs a path belongs to: each has its own error key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    /// `Plugin.*`.
    Plugin,
    /// `NetworkDriver.*`: errors under `Err`.
    Network,
    /// `IpamDriver.*`: errors under `Error`.
    Ipam,
}

impl Api {
    /// The API of `path` (`/NetworkDriver.Join`), if it is one of ours.
    pub fn of(path: &str) -> Option<Api> {
        let name = path.strip_prefix('/')?;
        if name.starts_with("Plugin.") {
            Some(Api::Plugin)
        } else if name.starts_with("NetworkDriver.") {
            Some(Api::Network)
        } else if name.starts_with("IpamDriver.") {
            Some(Api::Ipam)
        } else {
            None
        }
    }

    /// The key Docker reads an error from.
    pub fn error_key(self) -> &'static str {
        match self {
            Api::Plugin | Api::Network => "Err",
            Api::Ipam => "Error",
        }
    }
}

/// Why a call was refused before it reached the controller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// A path that is no call of this plugin: HTTP 404, which Docker reads
    /// as "not implemented".
    #[error("vswitch's Docker plugin has no call {0}")]
    NotFound(String),
    /// The body is not what the call takes.
    #[error("{call}: {reason}")]
    BadBody { call: &'static str, reason: String },
}

/// One decoded call.
#[derive(Debug, Clone, PartialEq)]
pub enum Call {
    Activate,
    NetworkCapabilities,
    CreateNetwork(CreateNetwork),
    DeleteNetwork {
        network: String,
    },
    /// Swarm managers only: vswitch needs no allocation, so it answers
    /// with no options.
    AllocateNetwork {
        network: String,
    },
    FreeNetwork {
        network: String,
    },
    CreateEndpoint(CreateEndpoint),
    EndpointOperInfo(EndpointRef),
    DeleteEndpoint(EndpointRef),
    Join(Join),
    Leave(EndpointRef),
    ProgramExternalConnectivity(External),
    RevokeExternalConnectivity(EndpointRef),
    /// Node discovery: vswitch's hosts find each other by gossip.
    DiscoverNew,
    DiscoverDelete,
    IpamCapabilities,
    DefaultAddressSpaces,
    RequestPool(RequestPool),
    ReleasePool {
        pool: String,
    },
    RequestAddress(RequestAddress),
    ReleaseAddress {
        pool: String,
        address: IpAddr,
    },
}

/// One of the `IPv4Data` / `IPv6Data` entries of `CreateNetwork`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpamData {
    pub pool: IpNet,
    /// The gateway address (Docker sends it in CIDR form; the prefix is
    /// dropped).
    pub gateway: Option<IpAddr>,
    pub aux: BTreeMap<String, IpAddr>,
}

/// `NetworkDriver.CreateNetwork`.
#[derive(Debug, Clone, PartialEq)]
pub struct CreateNetwork {
    pub network: String,
    /// The `-o` options.
    pub options: BTreeMap<String, String>,
    pub ipv6: bool,
    pub internal: bool,
    pub ipv4_data: Vec<IpamData>,
    pub ipv6_data: Vec<IpamData>,
}

/// A network and one of its endpoints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointRef {
    pub network: String,
    pub endpoint: String,
}

/// `NetworkDriver.CreateEndpoint`: the addresses Docker's IPAM gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreateEndpoint {
    pub network: String,
    pub endpoint: String,
    /// `A.B.C.D/NN`.
    pub ipv4: Option<IpNet>,
    pub ipv6: Option<IpNet>,
    /// As given by `--mac-address`, `aa:bb:cc:dd:ee:ff`.
    pub mac: Option<[u8; 6]>,
}

/// `NetworkDriver.Join`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Join {
    pub network: String,
    pub endpoint: String,
    /// The sandbox's network namespace (`/var/run/docker/netns/ID`).
    pub sandbox: PathBuf,
}

/// `NetworkDriver.ProgramExternalConnectivity`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct External {
    pub network: String,
    pub endpoint: String,
    /// `-p` of the container, one entry per port.
    pub ports: Vec<PortMapping>,
}

/// `IpamDriver.RequestPool`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestPool {
    pub space: String,
    /// `--subnet`, or none for a pool of the driver's choice.
    pub pool: Option<IpNet>,
    /// `--ip-range`.
    pub sub_pool: Option<IpNet>,
    /// `--ipam-opt`.
    pub options: BTreeMap<String, String>,
    pub v6: bool,
}

/// `IpamDriver.RequestAddress`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestAddress {
    pub pool: String,
    /// `--ip` / `--gateway`, or any.
    pub address: Option<IpAddr>,
    /// Docker asks for the network's gateway.
    pub gateway: bool,
}

// The wire forms, as lenient as Docker is.

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct WireCreateNetwork {
    #[serde(rename = "NetworkID")]
    network_id: String,
    #[serde(default)]
    options: Option<BTreeMap<String, Value>>,
    #[serde(rename = "IPv4Data", default)]
    ipv4_data: Option<Vec<WireIpamData>>,
    #[serde(rename = "IPv6Data", default)]
    ipv6_data: Option<Vec<WireIpamData>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct WireIpamData {
    #[serde(default)]
    pool: String,
    #[serde(default)]
    gateway: String,
    #[serde(default)]
    aux_addresses: Option<BTreeMap<String, String>>,
}

#[derive(Deserialize)]
struct WireNetwork {
    #[serde(rename = "NetworkID")]
    network_id: String,
}

#[derive(Deserialize)]
struct WireEndpoint {
    #[serde(rename = "NetworkID")]
    network_id: String,
    #[serde(rename = "EndpointID")]
    endpoint_id: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct WireCreateEndpoint {
    #[serde(rename = "NetworkID")]
    network_id: String,
    #[serde(rename = "EndpointID")]
    endpoint_id: String,
    #[serde(default)]
    interface: Option<WireInterface>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct WireInterface {
    #[serde(default)]
    address: String,
    #[serde(rename = "AddressIPv6", default)]
    address_ipv6: String,
    #[serde(default)]
    mac_address: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct WireJoin {
    #[serde(rename = "NetworkID")]
    network_id: String,
    #[serde(rename = "EndpointID")]
    endpoint_id: String,
    #[serde(default)]
    sandbox_key: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct WireExternal {
    #[serde(rename = "NetworkID")]
    network_id: String,
    #[serde(rename = "EndpointID")]
    endpoint_id: String,
    #[serde(default)]
    options: Option<BTreeMap<String, Value>>,
}

/// One entry of `com.docker.network.portmap` (libnetwork's `PortBinding`).
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct WirePortBinding {
    proto: u8,
    #[serde(default)]
    port: u16,
    #[serde(rename = "HostIP", default)]
    host_ip: String,
    #[serde(default)]
    host_port: u16,
    #[serde(default)]
    host_port_end: u16,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct WireRequestPool {
    #[serde(default)]
    address_space: String,
    #[serde(default)]
    pool: String,
    #[serde(default)]
    sub_pool: String,
    #[serde(default)]
    options: Option<BTreeMap<String, String>>,
    #[serde(rename = "V6", default)]
    v6: bool,
}

#[derive(Deserialize)]
struct WirePool {
    #[serde(rename = "PoolID")]
    pool_id: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct WireRequestAddress {
    #[serde(rename = "PoolID")]
    pool_id: String,
    #[serde(default)]
    address: String,
    #[serde(default)]
    options: Option<BTreeMap<String, String>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct WireReleaseAddress {
    #[serde(rename = "PoolID")]
    pool_id: String,
    address: String,
}

impl Call {
    /// Decodes the POST of `path` with `body`.
    pub fn decode(path: &str, body: &[u8]) -> Result<Call, ProtocolError> {
        let name = path
            .strip_prefix('/')
            .ok_or_else(|| ProtocolError::NotFound(path.escape_debug().to_string()))?;
        let call: &'static str = match KNOWN.iter().find(|k| **k == name) {
            Some(k) => k,
            None => return Err(ProtocolError::NotFound(path.escape_debug().to_string())),
        };
        let bad = |reason: String| ProtocolError::BadBody { call, reason };
        Ok(match call {
            "Plugin.Activate" => Call::Activate,
            "NetworkDriver.GetCapabilities" => Call::NetworkCapabilities,
            "NetworkDriver.DiscoverNew" => Call::DiscoverNew,
            "NetworkDriver.DiscoverDelete" => Call::DiscoverDelete,
            "IpamDriver.GetCapabilities" => Call::IpamCapabilities,
            "IpamDriver.GetDefaultAddressSpaces" => Call::DefaultAddressSpaces,
            "NetworkDriver.CreateNetwork" => {
                let w: WireCreateNetwork = json(call, body)?;
                let options = w.options.unwrap_or_default();
                let generic = match options.get(GENERIC) {
                    None | Some(Value::Null) => BTreeMap::new(),
                    Some(Value::Object(m)) => m
                        .iter()
                        .map(|(k, v)| Ok((k.clone(), option_value(k, v).map_err(bad)?)))
                        .collect::<Result<_, ProtocolError>>()?,
                    Some(_) => return Err(bad(format!("{GENERIC} is not an object"))),
                };
                Call::CreateNetwork(CreateNetwork {
                    network: id(call, "NetworkID", &w.network_id)?,
                    options: generic,
                    ipv6: flag(&options, ENABLE_IPV6).map_err(bad)?,
                    internal: flag(&options, INTERNAL).map_err(bad)?,
                    ipv4_data: ipam_data(call, w.ipv4_data, false)?,
                    ipv6_data: ipam_data(call, w.ipv6_data, true)?,
                })
            }
            "NetworkDriver.DeleteNetwork" => Call::DeleteNetwork {
                network: network_of(call, body)?,
            },
            "NetworkDriver.AllocateNetwork" => Call::AllocateNetwork {
                network: network_of(call, body)?,
            },
            "NetworkDriver.FreeNetwork" => Call::FreeNetwork {
                network: network_of(call, body)?,
            },
            "NetworkDriver.CreateEndpoint" => {
                let w: WireCreateEndpoint = json(call, body)?;
                let iface = w.interface.unwrap_or(WireInterface {
                    address: String::new(),
                    address_ipv6: String::new(),
                    mac_address: String::new(),
                });
                let ipv4 = opt_cidr(call, "Interface.Address", &iface.address)?;
                let ipv6 = opt_cidr(call, "Interface.AddressIPv6", &iface.address_ipv6)?;
                if ipv4.is_some_and(|a| !matches!(a, IpNet::V4(_))) {
                    return Err(bad("Interface.Address is not an IPv4 address".into()));
                }
                if ipv6.is_some_and(|a| !matches!(a, IpNet::V6(_))) {
                    return Err(bad("Interface.AddressIPv6 is not an IPv6 address".into()));
                }
                let mac = match iface.mac_address.as_str() {
                    "" => None,
                    m => Some(
                        m.parse::<switch::MacAddr>()
                            .map_err(|e| bad(format!("Interface.MacAddress `{m}`: {e}")))?
                            .0,
                    ),
                };
                Call::CreateEndpoint(CreateEndpoint {
                    network: id(call, "NetworkID", &w.network_id)?,
                    endpoint: id(call, "EndpointID", &w.endpoint_id)?,
                    ipv4,
                    ipv6,
                    mac,
                })
            }
            "NetworkDriver.EndpointOperInfo" => Call::EndpointOperInfo(endpoint_of(call, body)?),
            "NetworkDriver.DeleteEndpoint" => Call::DeleteEndpoint(endpoint_of(call, body)?),
            "NetworkDriver.Leave" => Call::Leave(endpoint_of(call, body)?),
            "NetworkDriver.RevokeExternalConnectivity" => {
                Call::RevokeExternalConnectivity(endpoint_of(call, body)?)
            }
            "NetworkDriver.Join" => {
                let w: WireJoin = json(call, body)?;
                let sandbox = PathBuf::from(&w.sandbox_key);
                if !sandbox.is_absolute()
                    || w.sandbox_key.len() > 4096
                    || w.sandbox_key.contains('\0')
                {
                    return Err(bad(format!(
                        "SandboxKey `{}` is not the absolute path of a network namespace",
                        w.sandbox_key.escape_debug()
                    )));
                }
                Call::Join(Join {
                    network: id(call, "NetworkID", &w.network_id)?,
                    endpoint: id(call, "EndpointID", &w.endpoint_id)?,
                    sandbox,
                })
            }
            "NetworkDriver.ProgramExternalConnectivity" => {
                let w: WireExternal = json(call, body)?;
                let ports = match w.options.as_ref().and_then(|o| o.get(PORTMAP)) {
                    None | Some(Value::Null) => Vec::new(),
                    Some(v) => port_map(v).map_err(bad)?,
                };
                Call::ProgramExternalConnectivity(External {
                    network: id(call, "NetworkID", &w.network_id)?,
                    endpoint: id(call, "EndpointID", &w.endpoint_id)?,
                    ports,
                })
            }
            "IpamDriver.RequestPool" => {
                let w: WireRequestPool = json(call, body)?;
                let pool = opt_cidr(call, "Pool", &w.pool)?.map(|p| p.trunc());
                let sub_pool = opt_cidr(call, "SubPool", &w.sub_pool)?.map(|p| p.trunc());
                match (pool, sub_pool) {
                    (None, Some(_)) => {
                        return Err(bad("a SubPool (--ip-range) needs a Pool (--subnet)".into()))
                    }
                    (Some(p), Some(s)) if !p.contains(&s) => {
                        return Err(bad(format!("--ip-range {s} is not inside --subnet {p}")))
                    }
                    _ => {}
                }
                if w.address_space.len() > 256 {
                    return Err(bad("AddressSpace is too long".into()));
                }
                Call::RequestPool(RequestPool {
                    space: w.address_space,
                    // Docker sets V6 for pools of the driver's choice; a
                    // given pool's family decides.
                    v6: pool.map_or(w.v6, |p| p.addr().is_ipv6()),
                    pool,
                    sub_pool,
                    options: w.options.unwrap_or_default(),
                })
            }
            "IpamDriver.ReleasePool" => {
                let w: WirePool = json(call, body)?;
                Call::ReleasePool {
                    pool: pool_id(call, &w.pool_id)?,
                }
            }
            "IpamDriver.RequestAddress" => {
                let w: WireRequestAddress = json(call, body)?;
                let address = match w.address.as_str() {
                    "" => None,
                    a => Some(ip_or_cidr(a).ok_or_else(|| {
                        bad(format!(
                            "Address `{}` is not an IP address",
                            a.escape_debug()
                        ))
                    })?),
                };
                let gateway = w
                    .options
                    .as_ref()
                    .and_then(|o| o.get(REQUEST_ADDRESS_TYPE))
                    .is_some_and(|t| t == GATEWAY_ADDRESS);
                Call::RequestAddress(RequestAddress {
                    pool: pool_id(call, &w.pool_id)?,
                    address,
                    gateway,
                })
            }
            "IpamDriver.ReleaseAddress" => {
                let w: WireReleaseAddress = json(call, body)?;
                let address = ip_or_cidr(&w.address).ok_or_else(|| {
                    bad(format!(
                        "Address `{}` is not an IP address",
                        w.address.escape_debug()
                    ))
                })?;
                Call::ReleaseAddress {
                    pool: pool_id(call, &w.pool_id)?,
                    address,
                }
            }
            _ => unreachable!("every KNOWN call is decoded above"),
        })
    }

    /// The API the call belongs to.
    pub fn api(&self) -> Api {
        match self {
            Call::Activate => Api::Plugin,
            Call::IpamCapabilities
            | Call::DefaultAddressSpaces
            | Call::RequestPool(_)
            | Call::ReleasePool { .. }
            | Call::RequestAddress(_)
            | Call::ReleaseAddress { .. } => Api::Ipam,
            _ => Api::Network,
        }
    }
}

/// Every call the plugin answers.
const KNOWN: [&str; 21] = [
    "Plugin.Activate",
    "NetworkDriver.GetCapabilities",
    "NetworkDriver.CreateNetwork",
    "NetworkDriver.DeleteNetwork",
    "NetworkDriver.AllocateNetwork",
    "NetworkDriver.FreeNetwork",
    "NetworkDriver.CreateEndpoint",
    "NetworkDriver.EndpointOperInfo",
    "NetworkDriver.DeleteEndpoint",
    "NetworkDriver.Join",
    "NetworkDriver.Leave",
    "NetworkDriver.ProgramExternalConnectivity",
    "NetworkDriver.RevokeExternalConnectivity",
    "NetworkDriver.DiscoverNew",
    "NetworkDriver.DiscoverDelete",
    "IpamDriver.GetCapabilities",
    "IpamDriver.GetDefaultAddressSpaces",
    "IpamDriver.RequestPool",
    "IpamDriver.ReleasePool",
    "IpamDriver.RequestAddress",
    "IpamDriver.ReleaseAddress",
];

fn json<T: for<'de> Deserialize<'de>>(call: &'static str, body: &[u8]) -> Result<T, ProtocolError> {
    serde_json::from_slice(body).map_err(|e| ProtocolError::BadBody {
        call,
        reason: format!("malformed JSON: {e}"),
    })
}

fn network_of(call: &'static str, body: &[u8]) -> Result<String, ProtocolError> {
    let w: WireNetwork = json(call, body)?;
    id(call, "NetworkID", &w.network_id)
}

fn endpoint_of(call: &'static str, body: &[u8]) -> Result<EndpointRef, ProtocolError> {
    let w: WireEndpoint = json(call, body)?;
    Ok(EndpointRef {
        network: id(call, "NetworkID", &w.network_id)?,
        endpoint: id(call, "EndpointID", &w.endpoint_id)?,
    })
}

/// A Docker id: 64 hex digits in practice; any 1 to 128 ASCII letters and
/// digits are taken.
fn id(call: &'static str, field: &str, s: &str) -> Result<String, ProtocolError> {
    if s.is_empty() || s.len() > 128 || !s.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(ProtocolError::BadBody {
            call,
            reason: format!("{field} `{}` is not a Docker id", s.escape_debug()),
        });
    }
    Ok(s.to_string())
}

/// A pool id as this driver hands them out: printable ASCII, short.
fn pool_id(call: &'static str, s: &str) -> Result<String, ProtocolError> {
    if s.is_empty() || s.len() > 128 || !s.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ProtocolError::BadBody {
            call,
            reason: format!(
                "PoolID `{}` is not one of vswitch's pools",
                s.escape_debug()
            ),
        });
    }
    Ok(s.to_string())
}

fn opt_cidr(call: &'static str, field: &str, s: &str) -> Result<Option<IpNet>, ProtocolError> {
    if s.is_empty() {
        return Ok(None);
    }
    s.parse::<IpNet>()
        .map(Some)
        .map_err(|_| ProtocolError::BadBody {
            call,
            reason: format!(
                "{field} `{}` is not an address in CIDR form",
                s.escape_debug()
            ),
        })
}

/// `A.B.C.D` or `A.B.C.D/NN` (Docker sends gateways both ways).
fn ip_or_cidr(s: &str) -> Option<IpAddr> {
    s.parse::<IpAddr>()
        .ok()
        .or_else(|| s.parse::<IpNet>().ok().map(|n| n.addr()))
}

fn ipam_data(
    call: &'static str,
    data: Option<Vec<WireIpamData>>,
    v6: bool,
) -> Result<Vec<IpamData>, ProtocolError> {
    let bad = |reason: String| ProtocolError::BadBody { call, reason };
    let field = if v6 { "IPv6Data" } else { "IPv4Data" };
    let data = data.unwrap_or_default();
    if data.len() > 16 {
        return Err(bad(format!("{field} has more than 16 pools")));
    }
    data.into_iter()
        .map(|d| {
            let pool = d
                .pool
                .parse::<IpNet>()
                .map_err(|_| {
                    bad(format!(
                        "{field}.Pool `{}` is not a subnet",
                        d.pool.escape_debug()
                    ))
                })?
                .trunc();
            if pool.addr().is_ipv6() != v6 {
                return Err(bad(format!("{field}.Pool {pool} is of the other family")));
            }
            let gateway = match d.gateway.as_str() {
                "" => None,
                g => Some(ip_or_cidr(g).ok_or_else(|| {
                    bad(format!(
                        "{field}.Gateway `{}` is not an address",
                        g.escape_debug()
                    ))
                })?),
            };
            if let Some(g) = gateway {
                if !pool.contains(&g) {
                    return Err(bad(format!("{field}.Gateway {g} is not in {pool}")));
                }
            }
            let aux = d
                .aux_addresses
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| {
                    let a = ip_or_cidr(&v).ok_or_else(|| {
                        bad(format!(
                            "{field}.AuxAddresses[{k}] `{}` is not an address",
                            v.escape_debug()
                        ))
                    })?;
                    Ok((k, a))
                })
                .collect::<Result<_, ProtocolError>>()?;
            Ok(IpamData { pool, gateway, aux })
        })
        .collect()
}

/// A `-o key=value`: Docker sends strings; anything else is written as JSON.
fn option_value(key: &str, v: &Value) -> Result<String, String> {
    if key.len() > 256 {
        return Err("an option name is longer than 256 bytes".into());
    }
    let s = match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    };
    if s.len() > 4096 {
        return Err(format!("option {key} is longer than 4096 bytes"));
    }
    Ok(s)
}

fn flag(options: &BTreeMap<String, Value>, key: &str) -> Result<bool, String> {
    match options.get(key) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(Value::String(s)) if s == "true" => Ok(true),
        Some(Value::String(s)) if s == "false" || s.is_empty() => Ok(false),
        Some(other) => Err(format!("{key} is `{other}`, not true or false")),
    }
}

/// `com.docker.network.portmap`: libnetwork's port bindings.
fn port_map(v: &Value) -> Result<Vec<PortMapping>, String> {
    let list: Vec<WirePortBinding> = serde_json::from_value(v.clone())
        .map_err(|e| format!("{PORTMAP} is not a list of port bindings: {e}"))?;
    if list.len() > MAX_PORT_MAPPINGS {
        return Err(format!(
            "at most {MAX_PORT_MAPPINGS} ports may be published"
        ));
    }
    list.into_iter()
        .map(|b| {
            let proto = match b.proto {
                6 => PortProto::Tcp,
                17 => PortProto::Udp,
                132 => return Err("SCTP ports cannot be published by vswitch".to_string()),
                p => return Err(format!("unknown protocol number {p} in {PORTMAP}")),
            };
            if b.port == 0 {
                return Err(format!("{PORTMAP} has a binding without a container port"));
            }
            if b.host_port_end != 0 && b.host_port_end < b.host_port {
                return Err(format!(
                    "the host port range {}-{} is backwards",
                    b.host_port, b.host_port_end
                ));
            }
            let host_ip = match b.host_ip.as_str() {
                "" => None,
                s => Some(
                    s.parse::<IpAddr>()
                        .map_err(|_| format!("HostIP `{}` is not an address", s.escape_debug()))?,
                ),
            };
            Ok(PortMapping {
                host_ip,
                host_port: b.host_port,
                container_port: b.port,
                proto,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const NET: &str = "4f1b0e0d63a3b6fa07f1bc7a46d0de41ea4d3d1e0f6cc7d1f28ec5b40e3a1b2c";
    const EP: &str = "9c2d3e0d63a3b6fa07f1bc7a46d0de41ea4d3d1e0f6cc7d1f28ec5b40e3a1b2d";

    fn decode(path: &str, body: &str) -> Result<Call, ProtocolError> {
        Call::decode(path, body.as_bytes())
    }

    #[test]
    fn calls_without_arguments_take_any_body() {
        for (path, want) in [
            ("/Plugin.Activate", Call::Activate),
            ("/NetworkDriver.GetCapabilities", Call::NetworkCapabilities),
            ("/IpamDriver.GetCapabilities", Call::IpamCapabilities),
            (
                "/IpamDriver.GetDefaultAddressSpaces",
                Call::DefaultAddressSpaces,
            ),
            ("/NetworkDriver.DiscoverNew", Call::DiscoverNew),
        ] {
            assert_eq!(decode(path, "").unwrap(), want);
            assert_eq!(decode(path, "null").unwrap(), want);
        }
    }

    #[test]
    fn unknown_calls_are_not_found() {
        for path in [
            "/VolumeDriver.Mount",
            "/NetworkDriver.join",
            "NetworkDriver.Join",
            "/",
            "",
        ] {
            assert!(
                matches!(decode(path, "{}"), Err(ProtocolError::NotFound(_))),
                "{path}"
            );
        }
    }

    #[test]
    fn create_network_as_docker_sends_it() {
        // What dockerd 20.10 sends for `docker network create -d vswitch
        // --ipam-driver vswitch --subnet 10.9.0.0/24 --ipv6 --internal
        // -o vswitch.name=web -o encrypted NAME`.
        let body = format!(
            r#"{{"NetworkID":"{NET}","Options":{{"com.docker.network.enable_ipv6":true,
            "com.docker.network.generic":{{"vswitch.name":"web","encrypted":""}},
            "com.docker.network.internal":true}},
            "IPv4Data":[{{"AddressSpace":"vswitch-local","Gateway":"10.9.0.1/24","Pool":"10.9.0.0/24"}}],
            "IPv6Data":[{{"AddressSpace":"vswitch-local","Gateway":"fd00:9::1/64","Pool":"fd00:9::/64","AuxAddresses":{{"a":"fd00:9::9"}}}}]}}"#
        );
        let Call::CreateNetwork(c) = decode("/NetworkDriver.CreateNetwork", &body).unwrap() else {
            panic!("not CreateNetwork")
        };
        assert_eq!(c.network, NET);
        assert!(c.ipv6 && c.internal);
        assert_eq!(c.options["vswitch.name"], "web");
        assert_eq!(c.options["encrypted"], "");
        assert_eq!(c.ipv4_data[0].pool, "10.9.0.0/24".parse::<IpNet>().unwrap());
        assert_eq!(c.ipv4_data[0].gateway, Some("10.9.0.1".parse().unwrap()));
        assert_eq!(
            c.ipv6_data[0].aux["a"],
            "fd00:9::9".parse::<IpAddr>().unwrap()
        );
    }

    #[rstest::rstest]
    #[case::not_json("{")]
    #[case::no_id(r#"{"Options":{}}"#)]
    #[case::bad_id(r#"{"NetworkID":"../../etc"}"#)]
    #[case::bad_pool(r#"{"NetworkID":"ab","IPv4Data":[{"Pool":"10.0.0.300/24"}]}"#)]
    #[case::v6_in_v4(r#"{"NetworkID":"ab","IPv4Data":[{"Pool":"fd00::/64"}]}"#)]
    #[case::gateway_outside(
        r#"{"NetworkID":"ab","IPv4Data":[{"Pool":"10.0.0.0/24","Gateway":"10.0.1.1/24"}]}"#
    )]
    #[case::generic_not_object(
        r#"{"NetworkID":"ab","Options":{"com.docker.network.generic":"x"}}"#
    )]
    #[case::ipv6_flag_not_bool(
        r#"{"NetworkID":"ab","Options":{"com.docker.network.enable_ipv6":3}}"#
    )]
    fn create_network_refuses(#[case] body: &str) {
        let e = decode("/NetworkDriver.CreateNetwork", body).unwrap_err();
        assert!(
            matches!(
                e,
                ProtocolError::BadBody {
                    call: "NetworkDriver.CreateNetwork",
                    ..
                }
            ),
            "{e}"
        );
    }

    #[test]
    fn create_endpoint_with_and_without_addresses() {
        let body = format!(
            r#"{{"NetworkID":"{NET}","EndpointID":"{EP}","Interface":{{"Address":"10.9.0.2/24","AddressIPv6":"","MacAddress":"02:42:0a:09:00:02"}},"Options":{{"com.docker.network.portmap":[]}}}}"#
        );
        let Call::CreateEndpoint(c) = decode("/NetworkDriver.CreateEndpoint", &body).unwrap()
        else {
            panic!()
        };
        assert_eq!(c.ipv4, Some("10.9.0.2/24".parse().unwrap()));
        assert_eq!(c.ipv6, None);
        assert_eq!(c.mac, Some([0x02, 0x42, 10, 9, 0, 2]));
        let body = format!(r#"{{"NetworkID":"{NET}","EndpointID":"{EP}","Interface":null}}"#);
        let Call::CreateEndpoint(c) = decode("/NetworkDriver.CreateEndpoint", &body).unwrap()
        else {
            panic!()
        };
        assert_eq!((c.ipv4, c.mac), (None, None));
        for bad in [
            r#"{"NetworkID":"ab","EndpointID":"cd","Interface":{"Address":"10.9.0.2"}}"#,
            r#"{"NetworkID":"ab","EndpointID":"cd","Interface":{"Address":"fd00::2/64"}}"#,
            r#"{"NetworkID":"ab","EndpointID":"cd","Interface":{"MacAddress":"zz"}}"#,
            r#"{"NetworkID":"ab"}"#,
        ] {
            assert!(
                decode("/NetworkDriver.CreateEndpoint", bad).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn join_needs_an_absolute_sandbox() {
        let ok = format!(
            r#"{{"NetworkID":"{NET}","EndpointID":"{EP}","SandboxKey":"/var/run/docker/netns/0123456789ab","Options":null}}"#
        );
        let Call::Join(j) = decode("/NetworkDriver.Join", &ok).unwrap() else {
            panic!()
        };
        assert_eq!(
            j.sandbox,
            PathBuf::from("/var/run/docker/netns/0123456789ab")
        );
        for key in ["", "relative/path"] {
            let b = format!(r#"{{"NetworkID":"{NET}","EndpointID":"{EP}","SandboxKey":"{key}"}}"#);
            assert!(decode("/NetworkDriver.Join", &b).is_err(), "{key}");
        }
    }

    #[test]
    fn port_map_of_program_external_connectivity() {
        let body = format!(
            r#"{{"NetworkID":"{NET}","EndpointID":"{EP}","Options":{{"com.docker.network.endpoint.exposedports":[{{"Proto":6,"Port":80}}],
            "com.docker.network.portmap":[{{"Proto":6,"IP":"","Port":80,"HostIP":"","HostPort":8080,"HostPortEnd":8080}},
            {{"Proto":17,"IP":"","Port":53,"HostIP":"127.0.0.1","HostPort":0,"HostPortEnd":0}}]}}}}"#
        );
        let Call::ProgramExternalConnectivity(x) =
            decode("/NetworkDriver.ProgramExternalConnectivity", &body).unwrap()
        else {
            panic!()
        };
        assert_eq!(
            x.ports,
            vec![
                PortMapping {
                    host_ip: None,
                    host_port: 8080,
                    container_port: 80,
                    proto: PortProto::Tcp
                },
                PortMapping {
                    host_ip: Some("127.0.0.1".parse().unwrap()),
                    host_port: 0,
                    container_port: 53,
                    proto: PortProto::Udp
                },
            ]
        );
        let sctp = format!(
            r#"{{"NetworkID":"{NET}","EndpointID":"{EP}","Options":{{"com.docker.network.portmap":[{{"Proto":132,"Port":80}}]}}}}"#
        );
        assert!(decode("/NetworkDriver.ProgramExternalConnectivity", &sctp).is_err());
    }

    #[test]
    fn ipam_calls() {
        let Call::RequestPool(p) = decode(
            "/IpamDriver.RequestPool",
            r#"{"AddressSpace":"vswitch-local","Pool":"10.9.0.0/16","SubPool":"10.9.1.0/24","Options":{},"V6":false}"#,
        )
        .unwrap() else {
            panic!()
        };
        assert_eq!(p.pool, Some("10.9.0.0/16".parse().unwrap()));
        assert_eq!(p.sub_pool, Some("10.9.1.0/24".parse().unwrap()));
        assert!(!p.v6);
        assert!(decode("/IpamDriver.RequestPool", r#"{"SubPool":"10.9.1.0/24"}"#).is_err());
        assert!(decode(
            "/IpamDriver.RequestPool",
            r#"{"Pool":"10.9.0.0/24","SubPool":"10.8.1.0/24"}"#
        )
        .is_err());
        let Call::RequestAddress(a) = decode(
            "/IpamDriver.RequestAddress",
            r#"{"PoolID":"vswitch/10.9.0.0/16","Address":"10.9.0.1","Options":{"RequestAddressType":"com.docker.network.gateway"}}"#,
        )
        .unwrap() else {
            panic!()
        };
        assert!(a.gateway);
        assert_eq!(a.address, Some("10.9.0.1".parse().unwrap()));
        assert!(decode(
            "/IpamDriver.RequestAddress",
            r#"{"PoolID":"","Address":""}"#
        )
        .is_err());
        assert!(decode(
            "/IpamDriver.ReleaseAddress",
            r#"{"PoolID":"p","Address":"x"}"#
        )
        .is_err());
        assert_eq!(
            decode(
                "/IpamDriver.ReleaseAddress",
                r#"{"PoolID":"p","Address":"10.9.0.5"}"#
            )
            .unwrap(),
            Call::ReleaseAddress {
                pool: "p".into(),
                address: "10.9.0.5".parse().unwrap()
            }
        );
    }

    #[test]
    fn error_keys() {
        assert_eq!(Api::of("/NetworkDriver.Join").unwrap().error_key(), "Err");
        assert_eq!(
            Api::of("/IpamDriver.RequestPool").unwrap().error_key(),
            "Error"
        );
        assert_eq!(Api::of("/VolumeDriver.Mount"), None);
    }
}
