//! The Container Network Interface as a plugin sees it: the `CNI_*`
//! environment and the network configuration on stdin in, a result or an
//! error on stdout out (spec 1.1.0; configurations of 0.3.0, 0.3.1, 0.4.0
//! and 1.0.0 are accepted and answered in their own version's format).
//!
//! Pure: [`Invocation::parse`] reads nothing but its arguments, so it is
//! what the fuzz target drives; `cni::run` does the talking to vswitchd.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// The versions this plugin speaks, oldest first.
pub const SUPPORTED_VERSIONS: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];
/// The newest of them.
pub const LATEST: &str = "1.1.0";
/// Largest configuration read from stdin.
pub const MAX_CONFIG: usize = 1 << 20;

/// The spec's well-known error codes.
pub mod code {
    /// Incompatible CNI version.
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    /// Unsupported field in the network configuration.
    pub const UNSUPPORTED_FIELD: u32 = 2;
    /// Container unknown or does not exist.
    pub const UNKNOWN_CONTAINER: u32 = 3;
    /// Invalid necessary environment variables.
    pub const INVALID_ENV: u32 = 4;
    /// I/O failure.
    pub const IO: u32 = 5;
    /// Failed to decode content.
    pub const DECODE: u32 = 6;
    /// Invalid network config.
    pub const INVALID_CONFIG: u32 = 7;
    /// Try again later.
    pub const TRY_AGAIN: u32 = 11;
    /// STATUS: the plugin cannot serve ADDs.
    pub const NOT_AVAILABLE: u32 = 50;
    /// Plugin-specific (100+): CHECK found the attachment differs.
    pub const CHECK_FAILED: u32 = 100;
    /// Plugin-specific: vswitchd refused the request.
    pub const REFUSED: u32 = 101;
}

/// A CNI error, as the spec writes it on stdout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CniError {
    #[serde(rename = "cniVersion")]
    pub cni_version: String,
    pub code: u32,
    pub msg: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub details: String,
}

impl CniError {
    pub fn new(code: u32, msg: impl Into<String>) -> CniError {
        CniError {
            cni_version: LATEST.to_string(),
            code,
            msg: msg.into(),
            details: String::new(),
        }
    }

    pub fn details(mut self, details: impl Into<String>) -> CniError {
        self.details = details.into();
        self
    }

    /// The same error answered in the configuration's version.
    pub fn in_version(mut self, version: &str) -> CniError {
        if SUPPORTED_VERSIONS.contains(&version) {
            self.cni_version = version.to_string();
        }
        self
    }
}

impl std::fmt::Display for CniError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (code {})", self.msg, self.code)?;
        if !self.details.is_empty() {
            write!(f, ": {}", self.details)?;
        }
        Ok(())
    }
}

/// `CNI_COMMAND`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Status,
    Gc,
    Version,
}

impl Command {
    fn parse(s: &str) -> Option<Command> {
        Some(match s {
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            "CHECK" => Command::Check,
            "STATUS" => Command::Status,
            "GC" => Command::Gc,
            "VERSION" => Command::Version,
            _ => return None,
        })
    }
}

/// A published port of `runtimeConfig.portMappings`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PortMapping {
    pub host_port: u16,
    pub container_port: u16,
    #[serde(default)]
    pub protocol: Option<String>,
    #[serde(rename = "hostIP", default)]
    pub host_ip: Option<String>,
}

/// The network configuration on stdin, the fields this plugin reads.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetConf {
    #[serde(default)]
    pub cni_version: Option<String>,
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
    /// The vswitch network; `name` without it.
    #[serde(default)]
    pub network: Option<String>,
    /// vswitchd's API socket.
    #[serde(default)]
    pub socket: Option<PathBuf>,
    #[serde(default)]
    pub capabilities: BTreeMap<String, bool>,
    #[serde(default)]
    pub runtime_config: RuntimeConfig,
    /// `args.cni.ips`, `args.cni.mac` (the spec's convention for args in
    /// the configuration).
    #[serde(default)]
    pub args: Option<Value>,
    #[serde(default)]
    pub prev_result: Option<Value>,
    /// GC: the attachments still in use.
    #[serde(rename = "cni.dev/valid-attachments", default)]
    pub valid_attachments: Option<Vec<ValidAttachment>>,
}

/// One entry of `cni.dev/valid-attachments`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ValidAttachment {
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
}

/// `runtimeConfig`: what the runtime fills in for the capabilities.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RuntimeConfig {
    #[serde(default)]
    pub port_mappings: Vec<PortMapping>,
    /// `ips`: addresses, with or without a prefix length.
    #[serde(default)]
    pub ips: Vec<String>,
    #[serde(default)]
    pub mac: Option<String>,
    /// Podman's `aliases` capability: network name to names.
    #[serde(default)]
    pub aliases: BTreeMap<String, Vec<String>>,
}

/// One invocation: the command, its environment, the configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Invocation {
    pub command: Command,
    /// The configuration's version (VERSION answers in it).
    pub version: String,
    pub conf: Option<NetConf>,
    pub container_id: Option<String>,
    pub netns: Option<PathBuf>,
    pub ifname: Option<String>,
    /// What `CNI_ARGS` and the configuration ask for.
    pub wants: Wants,
}

/// The container's name and static settings, from `CNI_ARGS`,
/// `runtimeConfig` and `args.cni`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Wants {
    pub name: Option<String>,
    pub ipv4: Option<Ipv4Addr>,
    pub ipv6: Option<Ipv6Addr>,
    pub mac: Option<String>,
    pub aliases: Vec<String>,
}

/// `CNI_ARGS` keys this plugin knows; others need `IgnoreUnknown=1`.
const KNOWN_ARGS: &[&str] = &[
    "IgnoreUnknown",
    "K8S_POD_NAME",
    "K8S_POD_NAMESPACE",
    "K8S_POD_INFRA_CONTAINER_ID",
    "K8S_POD_UID",
    "IP",
    "MAC",
];

fn version_known(v: &str) -> bool {
    SUPPORTED_VERSIONS.contains(&v)
}

/// `a` is at least `b` (both supported versions).
pub fn at_least(a: &str, b: &str) -> bool {
    let pos = |v: &str| SUPPORTED_VERSIONS.iter().position(|s| *s == v);
    pos(a) >= pos(b)
}

impl Invocation {
    /// Reads an invocation from the environment (`env("CNI_COMMAND")`...)
    /// and stdin. Never panics, whatever the bytes.
    pub fn parse(
        env: &dyn Fn(&str) -> Option<String>,
        stdin: &[u8],
    ) -> Result<Invocation, CniError> {
        let command = env("CNI_COMMAND").ok_or_else(|| {
            CniError::new(code::INVALID_ENV, "CNI_COMMAND is not set").details(
                "vswitch-cni is a CNI plugin: a container runtime runs it with CNI_COMMAND=ADD|DEL|CHECK|STATUS|GC|VERSION and the network configuration on stdin",
            )
        })?;
        let command = Command::parse(&command).ok_or_else(|| {
            CniError::new(
                code::INVALID_ENV,
                format!("unknown CNI_COMMAND `{}`", command.escape_debug()),
            )
        })?;
        if stdin.len() > MAX_CONFIG {
            return Err(CniError::new(
                code::DECODE,
                format!("the configuration is over {MAX_CONFIG} bytes"),
            ));
        }
        if command == Command::Version {
            // Only cniVersion matters; an empty stdin is an old runtime.
            let v: Value = serde_json::from_slice(stdin).unwrap_or(Value::Null);
            let version = v
                .get("cniVersion")
                .and_then(Value::as_str)
                .filter(|v| version_known(v))
                .unwrap_or(LATEST)
                .to_string();
            return Ok(Invocation {
                command,
                version,
                conf: None,
                container_id: None,
                netns: None,
                ifname: None,
                wants: Wants::default(),
            });
        }
        let conf: NetConf = serde_json::from_slice(stdin).map_err(|e| {
            CniError::new(code::DECODE, "cannot decode the network configuration")
                .details(e.to_string())
        })?;
        let version = conf.cni_version.clone().unwrap_or_else(|| "0.1.0".into());
        if !version_known(&version) {
            return Err(CniError::new(
                code::INCOMPATIBLE_VERSION,
                format!(
                    "cniVersion {} is not supported; vswitch-cni speaks {}",
                    version.escape_debug(),
                    SUPPORTED_VERSIONS.join(", ")
                ),
            ));
        }
        let need = match command {
            Command::Check => Some("0.4.0"),
            Command::Status | Command::Gc => Some("1.1.0"),
            _ => None,
        };
        if let Some(need) = need {
            if !at_least(&version, need) {
                return Err(CniError::new(
                    code::INCOMPATIBLE_VERSION,
                    format!("{command:?} needs cniVersion {need} or later, not {version}"),
                )
                .in_version(&version));
            }
        }
        let network = conf.network.clone().unwrap_or_else(|| conf.name.clone());
        crate::api::validate_name("network", &network)
            .map_err(|e| CniError::new(code::INVALID_CONFIG, e).in_version(&version))?;
        let fail = |c: u32, m: String| CniError::new(c, m).in_version(&version);
        let mut inv = Invocation {
            command,
            version: version.clone(),
            conf: None,
            container_id: env("CNI_CONTAINERID").filter(|s| !s.is_empty()),
            netns: env("CNI_NETNS")
                .filter(|s| !s.is_empty())
                .map(PathBuf::from),
            ifname: env("CNI_IFNAME").filter(|s| !s.is_empty()),
            wants: Wants::default(),
        };
        let per_container = matches!(command, Command::Add | Command::Del | Command::Check);
        if per_container {
            let Some(id) = &inv.container_id else {
                return Err(fail(code::INVALID_ENV, "CNI_CONTAINERID is not set".into()));
            };
            let Some(ifname) = &inv.ifname else {
                return Err(fail(code::INVALID_ENV, "CNI_IFNAME is not set".into()));
            };
            let key = crate::api::CniKey {
                container_id: id.clone(),
                ifname: ifname.clone(),
                network: network.clone(),
            };
            crate::api::validate_cni_key(&key).map_err(|e| fail(code::INVALID_ENV, e))?;
            if command != Command::Del && inv.netns.is_none() {
                return Err(fail(code::INVALID_ENV, "CNI_NETNS is not set".into()));
            }
        }
        if command == Command::Add {
            inv.wants =
                wants(&conf, &network, env("CNI_ARGS").as_deref()).map_err(|(c, m)| fail(c, m))?;
        }
        inv.conf = Some(conf);
        Ok(inv)
    }

    /// The vswitch network.
    pub fn network(&self) -> &str {
        let conf = self
            .conf
            .as_ref()
            .expect("every command but VERSION has one");
        conf.network.as_deref().unwrap_or(&conf.name)
    }
}

/// The settings an ADD asks for.
fn wants(conf: &NetConf, network: &str, args: Option<&str>) -> Result<Wants, (u32, String)> {
    let mut w = Wants::default();
    let mut ips: Vec<String> = conf.runtime_config.ips.clone();
    let mut mac = conf.runtime_config.mac.clone();
    if let Some(cni) = conf.args.as_ref().and_then(|a| a.get("cni")) {
        if let Some(list) = cni.get("ips").and_then(Value::as_array) {
            ips.extend(list.iter().filter_map(Value::as_str).map(str::to_string));
        }
        if let Some(m) = cni.get("mac").and_then(Value::as_str) {
            mac.get_or_insert_with(|| m.to_string());
        }
    }
    if let Some(args) = args.filter(|a| !a.is_empty()) {
        let pairs: Vec<(&str, &str)> = args
            .split(';')
            .filter(|p| !p.is_empty())
            .map(|p| p.split_once('=').ok_or(p))
            .collect::<Result<_, _>>()
            .map_err(|p| {
                (
                    code::INVALID_ENV,
                    format!("CNI_ARGS: `{}` is not KEY=VALUE", p.escape_debug()),
                )
            })?;
        let ignore = pairs.iter().any(|(k, v)| {
            *k == "IgnoreUnknown" && matches!(v.to_ascii_lowercase().as_str(), "1" | "true")
        });
        for (k, v) in pairs {
            match k {
                "K8S_POD_NAME" if !v.is_empty() => w.name = Some(v.to_string()),
                "IP" => ips.extend(v.split(',').map(str::to_string)),
                "MAC" => mac = Some(v.to_string()),
                _ if KNOWN_ARGS.contains(&k) || ignore => {}
                _ => {
                    return Err((
                        code::INVALID_ENV,
                        format!(
                            "CNI_ARGS: unknown key `{}`; vswitch-cni knows {} (IgnoreUnknown=1 to pass others)",
                            k.escape_debug(),
                            KNOWN_ARGS.join(", ")
                        ),
                    ))
                }
            }
        }
    }
    for ip in ips {
        let ip = ip.trim();
        let addr: IpAddr = match ip.parse::<IpNet>() {
            Ok(n) => n.addr(),
            Err(_) => ip.parse().map_err(|_| {
                (
                    code::INVALID_CONFIG,
                    format!("`{}` is not an IP address", ip.escape_debug()),
                )
            })?,
        };
        let slot_taken = match addr {
            IpAddr::V4(a) => w.ipv4.replace(a).is_some_and(|old| old != a),
            IpAddr::V6(a) => w.ipv6.replace(a).is_some_and(|old| old != a),
        };
        if slot_taken {
            return Err((
                code::INVALID_CONFIG,
                "one address per family: vswitch gives an interface one IPv4 and one IPv6 address"
                    .into(),
            ));
        }
    }
    w.mac = mac;
    w.aliases = conf
        .runtime_config
        .aliases
        .get(network)
        .or_else(|| conf.runtime_config.aliases.get(&conf.name))
        .cloned()
        .unwrap_or_default();
    // The container's own name is not an alias of it.
    if let Some(n) = &w.name {
        w.aliases.retain(|a| a != n);
    }
    w.aliases.sort();
    w.aliases.dedup();
    Ok(w)
}

/// What an ADD made, in the spec's result format of `version`.
pub fn add_result(version: &str, a: &crate::api::CniAttachment) -> Value {
    let mut iface = json!({
        "name": a.key.ifname,
        "mac": a.mac,
        "sandbox": a.netns,
    });
    if at_least(version, "1.1.0") {
        iface["mtu"] = json!(a.mtu);
    }
    let with_version = !at_least(version, "1.0.0");
    let mut ips = Vec::new();
    let mut routes = Vec::new();
    let families = [
        (
            a.ipv4.map(IpNet::V4),
            a.gateway4.map(IpAddr::V4),
            "0.0.0.0/0",
            "4",
        ),
        (
            a.ipv6.map(IpNet::V6),
            a.gateway6.map(IpAddr::V6),
            "::/0",
            "6",
        ),
    ];
    for (addr, gateway, default, family) in families {
        let Some(addr) = addr else {
            continue;
        };
        let mut ip = json!({ "address": addr.to_string(), "interface": 0 });
        if let Some(g) = gateway {
            ip["gateway"] = json!(g.to_string());
            if a.default_route {
                routes.push(json!({ "dst": default, "gw": g.to_string() }));
            }
        }
        if with_version {
            ip["version"] = json!(family);
        }
        ips.push(ip);
    }
    let mut out = json!({
        "cniVersion": version,
        "interfaces": [iface],
        "ips": ips,
    });
    if !routes.is_empty() {
        out["routes"] = json!(routes);
    }
    if !a.nameservers.is_empty() {
        out["dns"] = json!({
            "nameservers": a.nameservers.iter().map(|n| n.to_string()).collect::<Vec<_>>()
        });
    }
    out
}

/// VERSION's answer.
pub fn version_result(version: &str) -> Value {
    json!({ "cniVersion": version, "supportedVersions": SUPPORTED_VERSIONS })
}

/// CHECK: the differences between `prevResult`, what vswitch made and
/// what the interface has now; empty when they agree.
pub fn check_differences(
    prev: &Value,
    ifname: &str,
    netns: &std::path::Path,
    check: &crate::api::CniCheck,
) -> Vec<String> {
    let mut diff = Vec::new();
    let a = &check.attachment;
    let live = &check.live;
    let ifaces = prev
        .get("interfaces")
        .and_then(Value::as_array)
        .map_or(&[][..], Vec::as_slice);
    let index = ifaces.iter().position(|i| {
        i.get("name").and_then(Value::as_str) == Some(ifname)
            && i.get("sandbox").and_then(Value::as_str).is_some()
    });
    let Some(index) = index else {
        diff.push(format!("prevResult has no interface {ifname} in a sandbox"));
        return diff;
    };
    let iface = &ifaces[index];
    if iface.get("sandbox").and_then(Value::as_str) != netns.to_str() {
        diff.push(format!(
            "prevResult puts {ifname} in {}, not {}",
            iface["sandbox"],
            netns.display()
        ));
    }
    if let Some(mac) = iface.get("mac").and_then(Value::as_str) {
        if !mac.eq_ignore_ascii_case(&live.mac) {
            diff.push(format!(
                "{ifname} has MAC {}, prevResult says {mac}",
                live.mac
            ));
        }
    }
    if !a.mac.eq_ignore_ascii_case(&live.mac) {
        diff.push(format!(
            "{ifname} has MAC {}, vswitch gave it {}",
            live.mac, a.mac
        ));
    }
    if !live.up {
        diff.push(format!("{ifname} is down"));
    }
    if live.mtu != a.mtu {
        diff.push(format!(
            "{ifname} has MTU {}, the network's is {}",
            live.mtu, a.mtu
        ));
    }
    let ours: Vec<IpNet> = a
        .ipv4
        .map(IpNet::V4)
        .into_iter()
        .chain(a.ipv6.map(IpNet::V6))
        .collect();
    for ip in prev
        .get("ips")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let on_ours = ip.get("interface").and_then(Value::as_u64) == Some(index as u64);
        let Some(addr) = ip
            .get("address")
            .and_then(Value::as_str)
            .and_then(|s| s.parse::<IpNet>().ok())
        else {
            continue;
        };
        if !on_ours {
            continue;
        }
        if !live.addrs.contains(&addr) {
            diff.push(format!("{ifname} lacks the address {addr} of prevResult"));
        }
        if !ours.contains(&addr) {
            diff.push(format!("vswitch did not give {ifname} the address {addr}"));
        }
    }
    for want in &ours {
        if !live.addrs.contains(want) {
            diff.push(format!("{ifname} lacks its address {want}"));
        }
    }
    for r in prev
        .get("routes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let Some(dst) = r
            .get("dst")
            .and_then(Value::as_str)
            .and_then(|s| s.parse::<IpNet>().ok())
        else {
            continue;
        };
        let gw = r
            .get("gw")
            .and_then(Value::as_str)
            .and_then(|s| s.parse::<IpAddr>().ok());
        // A route of prevResult through our gateways is ours to check.
        let via_ours = match gw {
            Some(IpAddr::V4(g)) => Some(g) == a.gateway4,
            Some(IpAddr::V6(g)) => Some(g) == a.gateway6,
            None => false,
        };
        if via_ours && !live.routes.iter().any(|(d, g)| *d == dst && *g == gw) {
            diff.push(format!(
                "{ifname} lacks the route to {dst} via {}",
                gw.map(|g| g.to_string()).unwrap_or_default()
            ));
        }
    }
    diff
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: BTreeMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| m.get(k).cloned()
    }

    const CONF: &str = r#"{"cniVersion":"1.1.0","name":"web","type":"vswitch-cni"}"#;

    fn add_env() -> Vec<(&'static str, &'static str)> {
        vec![
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "abc123"),
            ("CNI_NETNS", "/run/netns/x"),
            ("CNI_IFNAME", "eth0"),
        ]
    }

    #[test]
    fn add_reads_env_and_config() {
        let mut env = add_env();
        env.push((
            "CNI_ARGS",
            "IgnoreUnknown=1;K8S_POD_NAME=db;K8S_POD_NAMESPACE=x;FOO=bar;IP=10.1.0.9/24",
        ));
        let conf = r#"{"cniVersion":"1.0.0","name":"w","type":"vswitch-cni","network":"web",
            "runtimeConfig":{"portMappings":[{"hostPort":8080,"containerPort":80,"protocol":"tcp"}],
            "mac":"02:00:00:00:00:09","aliases":{"w":["db","data"]}}}"#;
        let inv = Invocation::parse(&env_of(&env), conf.as_bytes()).unwrap();
        assert_eq!(inv.command, Command::Add);
        assert_eq!(inv.version, "1.0.0");
        assert_eq!(inv.network(), "web");
        assert_eq!(inv.wants.name.as_deref(), Some("db"));
        assert_eq!(inv.wants.ipv4, Some("10.1.0.9".parse().unwrap()));
        assert_eq!(inv.wants.mac.as_deref(), Some("02:00:00:00:00:09"));
        assert_eq!(inv.wants.aliases, vec!["data".to_string()]);
        let ports = &inv.conf.unwrap().runtime_config.port_mappings;
        assert_eq!(ports[0].host_port, 8080);
    }

    #[test]
    fn errors_carry_the_specs_codes() {
        let e = |env: &[(&str, &str)], conf: &str| {
            Invocation::parse(&env_of(env), conf.as_bytes())
                .unwrap_err()
                .code
        };
        assert_eq!(e(&[], CONF), code::INVALID_ENV);
        assert_eq!(e(&[("CNI_COMMAND", "FROB")], CONF), code::INVALID_ENV);
        assert_eq!(e(&add_env(), "{not json"), code::DECODE);
        assert_eq!(
            e(
                &add_env(),
                r#"{"cniVersion":"9.9.9","name":"w","type":"vswitch-cni"}"#
            ),
            code::INCOMPATIBLE_VERSION
        );
        assert_eq!(
            e(
                &add_env(),
                r#"{"cniVersion":"1.0.0","name":"bad name","type":"vswitch-cni"}"#
            ),
            code::INVALID_CONFIG
        );
        let mut no_ns = add_env();
        no_ns.retain(|(k, _)| *k != "CNI_NETNS");
        assert_eq!(e(&no_ns, CONF), code::INVALID_ENV);
        let mut unknown = add_env();
        unknown.push(("CNI_ARGS", "FOO=bar"));
        assert_eq!(e(&unknown, CONF), code::INVALID_ENV);
        let mut two = add_env();
        two.push(("CNI_ARGS", "IP=10.0.0.2,10.0.0.3"));
        assert_eq!(e(&two, CONF), code::INVALID_CONFIG);
        let gc = [("CNI_COMMAND", "GC")];
        assert_eq!(
            e(
                &gc,
                r#"{"cniVersion":"1.0.0","name":"w","type":"vswitch-cni"}"#
            ),
            code::INCOMPATIBLE_VERSION
        );
        let bad_if = [
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", "abc"),
            ("CNI_IFNAME", "a/b"),
        ];
        assert_eq!(e(&bad_if, CONF), code::INVALID_ENV);
    }

    #[test]
    fn del_needs_no_netns_and_version_needs_no_config() {
        let del = [
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", "abc"),
            ("CNI_IFNAME", "eth0"),
        ];
        assert!(Invocation::parse(&env_of(&del), CONF.as_bytes()).is_ok());
        let v = Invocation::parse(&env_of(&[("CNI_COMMAND", "VERSION")]), b"").unwrap();
        assert_eq!(v.version, LATEST);
        let v = Invocation::parse(
            &env_of(&[("CNI_COMMAND", "VERSION")]),
            br#"{"cniVersion":"0.4.0"}"#,
        )
        .unwrap();
        assert_eq!(version_result(&v.version)["cniVersion"], "0.4.0");
    }

    fn attachment() -> crate::api::CniAttachment {
        crate::api::CniAttachment {
            key: crate::api::CniKey {
                container_id: "abc".into(),
                ifname: "eth0".into(),
                network: "web".into(),
            },
            container: "db".into(),
            netns: "/run/netns/x".into(),
            mac: "02:42:0a:01:00:02".into(),
            mtu: 1500,
            ipv4: Some("10.1.0.2/24".parse().unwrap()),
            ipv6: Some("fd00::2/64".parse().unwrap()),
            gateway4: Some("10.1.0.1".parse().unwrap()),
            gateway6: Some("fd00::1".parse().unwrap()),
            default_route: true,
            nameservers: vec!["10.1.0.1".parse().unwrap()],
            ports: vec![],
        }
    }

    #[test]
    fn results_follow_the_configurations_version() {
        let a = attachment();
        let new = add_result("1.1.0", &a);
        assert_eq!(new["interfaces"][0]["mtu"], 1500);
        assert_eq!(new["ips"][0]["address"], "10.1.0.2/24");
        assert!(new["ips"][0].get("version").is_none());
        assert_eq!(new["routes"][0]["dst"], "0.0.0.0/0");
        assert_eq!(new["routes"][1]["gw"], "fd00::1");
        assert_eq!(new["dns"]["nameservers"][0], "10.1.0.1");
        let old = add_result("0.4.0", &a);
        assert_eq!(old["cniVersion"], "0.4.0");
        assert_eq!(old["ips"][1]["version"], "6");
        assert!(old["interfaces"][0].get("mtu").is_none());
        let mut second = a.clone();
        second.default_route = false;
        assert!(add_result("1.0.0", &second).get("routes").is_none());
    }

    #[test]
    fn check_finds_what_differs() {
        let a = attachment();
        let prev = add_result("1.0.0", &a);
        let mut check = crate::api::CniCheck {
            attachment: a.clone(),
            live: crate::api::LiveInterface {
                mac: "02:42:0A:01:00:02".into(),
                mtu: 1500,
                up: true,
                addrs: vec![
                    "10.1.0.2/24".parse().unwrap(),
                    "fd00::2/64".parse().unwrap(),
                ],
                routes: vec![
                    (
                        "0.0.0.0/0".parse().unwrap(),
                        Some("10.1.0.1".parse().unwrap()),
                    ),
                    ("::/0".parse().unwrap(), Some("fd00::1".parse().unwrap())),
                ],
            },
        };
        let ns = std::path::Path::new("/run/netns/x");
        assert_eq!(
            check_differences(&prev, "eth0", ns, &check),
            Vec::<String>::new()
        );
        check.live.addrs.remove(0);
        check.live.routes.remove(1);
        check.live.up = false;
        let d = check_differences(&prev, "eth0", ns, &check);
        assert!(
            d.iter()
                .any(|s| s.contains("lacks the address 10.1.0.2/24")),
            "{d:?}"
        );
        assert!(d.iter().any(|s| s.contains("route to ::/0")), "{d:?}");
        assert!(d.iter().any(|s| s.contains("down")), "{d:?}");
        assert!(!check_differences(&prev, "eth1", ns, &check).is_empty());
    }
}
