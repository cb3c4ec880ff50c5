//! The control API shared by `vswitch` and `vswitchd`: versioned JSON over
//! HTTP/1.1 on a Unix socket.
//!
//! Every request the daemon accepts is decoded by [`Request::decode`], a pure
//! function of method, path and body, so that the decoding of untrusted API
//! input is one place to test and fuzz. Field names are explicit (`serde`
//! renames) and follow Docker's where Docker has one.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// The path prefix of this API version.
pub const PREFIX: &str = "/v1";

/// Largest request body the daemon reads.
pub const MAX_BODY: usize = 64 * 1024;

/// A network driver, as `docker network create --driver`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Driver {
    /// A local bridge domain with a gateway, DNS and IPAM.
    #[default]
    Bridge,
    /// A cluster-wide network (issue 3); refused until overlays exist.
    Overlay,
    /// The host's own network namespace.
    Host,
    /// Loopback only.
    None,
}

impl Driver {
    /// The name users type.
    pub fn as_str(self) -> &'static str {
        match self {
            Driver::Bridge => "bridge",
            Driver::Overlay => "overlay",
            Driver::Host => "host",
            Driver::None => "none",
        }
    }
}

impl std::str::FromStr for Driver {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "bridge" => Ok(Driver::Bridge),
            "overlay" => Ok(Driver::Overlay),
            "host" => Ok(Driver::Host),
            "none" => Ok(Driver::None),
            other => Err(format!(
                "unknown driver `{other}`; use bridge, overlay, host or none"
            )),
        }
    }
}

/// One `--subnet` with its optional `--gateway` and `--ip-range`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct SubnetSpec {
    #[serde(rename = "Subnet", default, skip_serializing_if = "Option::is_none")]
    pub subnet: Option<IpNet>,
    #[serde(rename = "Gateway", default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<IpAddr>,
    #[serde(rename = "IPRange", default, skip_serializing_if = "Option::is_none")]
    pub ip_range: Option<IpNet>,
}

/// `vswitch network create`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct NetworkCreate {
    #[serde(rename = "Name")]
    pub name: String,
    #[serde(rename = "Driver", default)]
    pub driver: Driver,
    #[serde(rename = "Subnets", default)]
    pub subnets: Vec<SubnetSpec>,
    #[serde(rename = "EnableIPv6", default)]
    pub ipv6: bool,
    #[serde(rename = "Internal", default)]
    pub internal: bool,
    #[serde(rename = "MTU", default)]
    pub mtu: Option<u32>,
    #[serde(rename = "Options", default)]
    pub options: BTreeMap<String, String>,
    #[serde(rename = "Labels", default)]
    pub labels: BTreeMap<String, String>,
}

/// `vswitch network connect`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Connect {
    #[serde(rename = "Container")]
    pub container: String,
    /// Path of the container's network namespace (`/run/netns/NAME`,
    /// `/proc/PID/ns/net`). Optional when the container is already known.
    #[serde(rename = "NetNs", default)]
    pub netns: Option<PathBuf>,
    #[serde(rename = "IPv4Address", default)]
    pub ip: Option<Ipv4Addr>,
    #[serde(rename = "IPv6Address", default)]
    pub ip6: Option<Ipv6Addr>,
    #[serde(rename = "MacAddress", default)]
    pub mac: Option<String>,
    #[serde(rename = "Aliases", default)]
    pub aliases: Vec<String>,
    /// Published ports (`-p`), one entry per port (ranges expanded).
    #[serde(rename = "Ports", default)]
    pub ports: Vec<PortMapping>,
    /// The container's labels (`--label`), which policies select by; set
    /// when the container is new here, kept otherwise.
    #[serde(rename = "Labels", default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

/// Most published ports one `-p` list may expand to.
pub const MAX_PORT_MAPPINGS: usize = 1024;

/// The protocol of a published port.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, Default,
)]
#[serde(rename_all = "lowercase")]
pub enum PortProto {
    #[default]
    Tcp,
    Udp,
}

impl PortProto {
    pub fn as_str(self) -> &'static str {
        match self {
            PortProto::Tcp => "tcp",
            PortProto::Udp => "udp",
        }
    }
}

/// One published port: host address and port to the container's port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortMapping {
    /// The host address to listen on; none: every address, IPv4 and IPv6.
    #[serde(rename = "HostIp", default)]
    pub host_ip: Option<IpAddr>,
    #[serde(rename = "HostPort")]
    pub host_port: u16,
    #[serde(rename = "ContainerPort")]
    pub container_port: u16,
    #[serde(rename = "Protocol", default)]
    pub proto: PortProto,
}

impl PortMapping {
    /// The host addresses it listens on, as `docker port` shows them.
    pub fn host_ips(&self) -> Vec<IpAddr> {
        match self.host_ip {
            Some(ip) => vec![ip],
            None => vec![Ipv4Addr::UNSPECIFIED.into(), Ipv6Addr::UNSPECIFIED.into()],
        }
    }
}

/// A port or a range `A-B` of a `-p` spec.
fn port_range(what: &str, s: &str, spec: &str) -> Result<(u16, u16), String> {
    let one = |p: &str| -> Result<u16, String> {
        match p.parse::<u16>() {
            Ok(0) | Err(_) => Err(format!("-p {spec}: `{p}` is not a {what} port (1-65535)")),
            Ok(n) => Ok(n),
        }
    };
    match s.split_once('-') {
        Some((a, b)) => {
            let (a, b) = (one(a)?, one(b)?);
            if a > b {
                return Err(format!(
                    "-p {spec}: the {what} port range {a}-{b} is backwards"
                ));
            }
            Ok((a, b))
        }
        None => {
            let p = one(s)?;
            Ok((p, p))
        }
    }
}

/// Parses a `-p [HOSTIP:]HOSTPORT:PORT[/tcp|/udp]` spec (ports may be
/// ranges of equal length, `8000-8010:80-90`; an IPv6 host address goes in
/// brackets, `[::1]:8080:80`) into one mapping per port.
pub fn parse_port_spec(spec: &str) -> Result<Vec<PortMapping>, String> {
    let usage = "use [HOSTIP:]HOSTPORT:PORT[/tcp|/udp], e.g. 8080:80 or 127.0.0.1:5353:53/udp";
    let (rest, proto) = match spec.rsplit_once('/') {
        Some((r, "tcp")) => (r, PortProto::Tcp),
        Some((r, "udp")) => (r, PortProto::Udp),
        Some((_, p)) => return Err(format!("-p {spec}: unknown protocol `{p}`; use tcp or udp")),
        None => (spec, PortProto::Tcp),
    };
    // `PORT` alone: a free host port is picked, as Docker does.
    if !rest.contains(':') && !rest.starts_with('[') {
        let (c0, c1) = port_range("container", rest, spec)?;
        if usize::from(c1 - c0) >= MAX_PORT_MAPPINGS {
            return Err(format!(
                "-p {spec}: at most {MAX_PORT_MAPPINGS} ports may be published at once"
            ));
        }
        return Ok((c0..=c1)
            .map(|c| PortMapping {
                host_ip: None,
                host_port: 0,
                container_port: c,
                proto,
            })
            .collect());
    }
    let (host_ip, ports) = if let Some(r) = rest.strip_prefix('[') {
        let (ip, r) = r
            .split_once("]:")
            .ok_or_else(|| format!("-p {spec}: {usage}"))?;
        let ip: Ipv6Addr = ip
            .parse()
            .map_err(|_| format!("-p {spec}: `{ip}` is not an IPv6 address"))?;
        (Some(IpAddr::V6(ip)), r)
    } else {
        match rest.matches(':').count() {
            1 => (None, rest),
            2 => {
                let (ip, r) = rest.split_once(':').expect("counted");
                let ip: Ipv4Addr = ip
                    .parse()
                    .map_err(|_| format!("-p {spec}: `{ip}` is not an IPv4 address (IPv6 goes in brackets: [::1]:8080:80)"))?;
                (Some(IpAddr::V4(ip)), r)
            }
            _ => return Err(format!("-p {spec}: {usage}")),
        }
    };
    let (host, container) = ports
        .split_once(':')
        .ok_or_else(|| format!("-p {spec}: {usage}"))?;
    if container.contains(':') {
        return Err(format!("-p {spec}: {usage}"));
    }
    let (c0, c1) = port_range("container", container, spec)?;
    // `IP::PORT`: a free host port on that address.
    let (h0, h1) = if host.is_empty() {
        (0, c1 - c0)
    } else {
        port_range("host", host, spec)?
    };
    if h1 - h0 != c1 - c0 {
        return Err(format!(
            "-p {spec}: the host range has {} ports and the container range {}; make them the same length",
            h1 - h0 + 1,
            c1 - c0 + 1
        ));
    }
    if usize::from(h1 - h0) >= MAX_PORT_MAPPINGS {
        return Err(format!(
            "-p {spec}: at most {MAX_PORT_MAPPINGS} ports may be published at once"
        ));
    }
    Ok((0..=h1 - h0)
        .map(|i| PortMapping {
            host_ip,
            host_port: if host.is_empty() { 0 } else { h0 + i },
            container_port: c0 + i,
            proto,
        })
        .collect())
}

/// A host address and port a container port is published on, as Docker's
/// `NetworkSettings.Ports` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortBinding {
    #[serde(rename = "HostIp")]
    pub host_ip: String,
    #[serde(rename = "HostPort")]
    pub host_port: String,
}

/// `vswitch network disconnect`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Disconnect {
    #[serde(rename = "Container")]
    pub container: String,
}

/// `POST /v1/cni/add`: vswitch-cni's ADD, a runtime's namespace attached
/// to a network as the interface the runtime names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct CniAdd {
    /// The attachment: the runtime's container id and the interface.
    #[serde(flatten)]
    pub key: CniKey,
    /// The namespace the runtime made (`CNI_NETNS`).
    #[serde(rename = "NetNs")]
    pub netns: PathBuf,
    /// The container's name, as DNS answers it (`K8S_POD_NAME`); the
    /// container id's first 12 characters without one.
    #[serde(rename = "Name", default)]
    pub name: Option<String>,
    #[serde(rename = "IPv4Address", default)]
    pub ip: Option<Ipv4Addr>,
    #[serde(rename = "IPv6Address", default)]
    pub ip6: Option<Ipv6Addr>,
    #[serde(rename = "MacAddress", default)]
    pub mac: Option<String>,
    #[serde(rename = "Aliases", default)]
    pub aliases: Vec<String>,
    #[serde(rename = "Ports", default)]
    pub ports: Vec<PortMapping>,
}

/// One CNI attachment: (container id, interface) on a network.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, Default)]
pub struct CniKey {
    #[serde(rename = "ContainerID")]
    pub container_id: String,
    #[serde(rename = "IfName")]
    pub ifname: String,
    #[serde(rename = "Network")]
    pub network: String,
}

/// What vswitchd made for a CNI attachment: what ADD's result says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct CniAttachment {
    #[serde(flatten)]
    pub key: CniKey,
    /// The vswitch container it belongs to.
    #[serde(rename = "Container")]
    pub container: String,
    #[serde(rename = "NetNs")]
    pub netns: PathBuf,
    #[serde(rename = "MacAddress")]
    pub mac: String,
    #[serde(rename = "MTU")]
    pub mtu: u32,
    #[serde(rename = "IPv4", default)]
    pub ipv4: Option<ipnet::Ipv4Net>,
    #[serde(rename = "IPv6", default)]
    pub ipv6: Option<ipnet::Ipv6Net>,
    /// The network's gateways (the next hop of the subnet's traffic).
    #[serde(rename = "Gateway4", default)]
    pub gateway4: Option<Ipv4Addr>,
    #[serde(rename = "Gateway6", default)]
    pub gateway6: Option<Ipv6Addr>,
    /// Whether the interface carries the default routes (the container's
    /// first network, unless internal).
    #[serde(rename = "DefaultRoute", default)]
    pub default_route: bool,
    /// Where the container's resolver should send names: the gateway.
    #[serde(rename = "Nameservers", default)]
    pub nameservers: Vec<IpAddr>,
    /// The ports as published (a host port 0 became the one picked).
    #[serde(rename = "Ports", default)]
    pub ports: Vec<PortMapping>,
}

/// `POST /v1/cni/check`'s answer: the attachment and what its interface
/// has now in the namespace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CniCheck {
    #[serde(rename = "Attachment")]
    pub attachment: CniAttachment,
    #[serde(rename = "Live")]
    pub live: LiveInterface,
}

/// An interface as the kernel has it now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct LiveInterface {
    #[serde(rename = "MacAddress")]
    pub mac: String,
    #[serde(rename = "MTU")]
    pub mtu: u32,
    #[serde(rename = "Up")]
    pub up: bool,
    #[serde(rename = "Addresses")]
    pub addrs: Vec<IpNet>,
    /// Routes of the main table through it: destination, next hop.
    #[serde(rename = "Routes")]
    pub routes: Vec<(IpNet, Option<IpAddr>)>,
}

/// `POST /v1/cni/gc`: every attachment of `network` not in `valid` goes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct CniGc {
    #[serde(rename = "Network")]
    pub network: String,
    /// (container id, interface) pairs the runtime still uses.
    #[serde(rename = "Valid", default)]
    pub valid: Vec<(String, String)>,
}

/// Registers a sandbox made by `vswitch run` (its namespace and process).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ContainerCreate {
    #[serde(rename = "Name")]
    pub name: String,
    #[serde(rename = "NetNs", default)]
    pub netns: Option<PathBuf>,
    /// True when the daemon should delete the namespace on `vswitch rm`.
    #[serde(rename = "OwnsNetNs", default)]
    pub owns_netns: bool,
    #[serde(rename = "Pid", default)]
    pub pid: Option<u32>,
    /// The command `vswitch run` is about to start: the container then
    /// has a process whose state (created, running, exited with its code)
    /// the daemon keeps.
    #[serde(rename = "Cmd", default, skip_serializing_if = "Vec::is_empty")]
    pub cmd: Vec<String>,
    /// `run -d`: the daemon makes a log directory for the command's output
    /// (`LogPath` in the answer).
    #[serde(rename = "Detached", default)]
    pub detached: bool,
    /// `--label K=V`: what policies select the container by.
    #[serde(rename = "Labels", default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

/// Sets the process of a container once `vswitch run` started it: `Pid`
/// is the command's, `SupervisorPid` the process that waits for it and
/// reports its exit (`vswitch run` itself in the foreground, its
/// supervisor with `-d`). `Pid` null says the process is gone without a
/// known exit code.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ContainerUpdate {
    #[serde(rename = "Pid", default)]
    pub pid: Option<u32>,
    #[serde(rename = "SupervisorPid", default)]
    pub supervisor_pid: Option<u32>,
}

/// `POST /v1/captures`: capture the frames crossing a container's ports
/// (or every port of a network), answered as a pcapng stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaptureRequest {
    /// A container's name, or a network's.
    #[serde(rename = "Target")]
    pub target: String,
    /// Only this interface of the container (`eth0`, ...).
    #[serde(rename = "Interface", default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<String>,
    /// Stop after this many frames.
    #[serde(rename = "Count", default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
    /// A tcpdump-style filter (see `switch::capture`); empty takes all.
    #[serde(rename = "Filter", default)]
    pub filter: String,
    /// Bytes kept of each frame (tcpdump's `-s`), 1 to 262144.
    #[serde(rename = "Snaplen", default = "default_snaplen")]
    pub snaplen: u32,
}

/// tcpdump's default snap length.
pub const DEFAULT_SNAPLEN: u32 = 262_144;

fn default_snaplen() -> u32 {
    DEFAULT_SNAPLEN
}

/// `POST /v1/containers/NAME/exited`: the command of a `vswitch run` ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContainerExited {
    /// The container's id, so that a late report never marks a newer
    /// container of the same name.
    #[serde(rename = "Id")]
    pub id: String,
    /// The exit status, or 128 + the signal that ended it, as a shell
    /// (and Docker) reports it: 0 to 255.
    #[serde(rename = "ExitCode")]
    pub exit_code: i32,
}

/// `vswitch container prune`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ContainersPruned {
    /// Names of the removed containers.
    #[serde(rename = "ContainersDeleted")]
    pub deleted: Vec<String>,
}

/// `vswitch network prune`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct NetworksPruned {
    /// Names of the removed networks.
    #[serde(rename = "NetworksDeleted")]
    pub deleted: Vec<String>,
}

/// `vswitch join-cluster`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Join {
    /// `IP` or `IP:PORT` (port 7946 by default).
    #[serde(rename = "Peers")]
    pub peers: Vec<String>,
}

/// A row of `vswitch members`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    #[serde(rename = "Name")]
    pub name: String,
    /// The gossip address.
    #[serde(rename = "Address")]
    pub address: String,
    /// The tunnel endpoint.
    #[serde(rename = "TunnelAddress")]
    pub tunnel: String,
    /// alive, suspect or dead.
    #[serde(rename = "State")]
    pub state: String,
    /// Overlay networks it has endpoints on.
    #[serde(rename = "Networks")]
    pub networks: Vec<String>,
    /// True for the host answering.
    #[serde(rename = "Local")]
    pub local: bool,
}

/// `vswitch ipam reclaim`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Reclaim {
    #[serde(rename = "Host")]
    pub host: String,
}

/// `vswitch network vtep add|rm`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Vtep {
    /// `IP` or `IP:PORT` (port 4789 by default).
    #[serde(rename = "Address")]
    pub address: String,
}

/// A row of `vswitch network ls`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkSummary {
    #[serde(rename = "ID")]
    pub id: String,
    #[serde(rename = "Name")]
    pub name: String,
    #[serde(rename = "Driver")]
    pub driver: Driver,
    #[serde(rename = "Scope")]
    pub scope: String,
}

/// `IPAM` in `network inspect`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpamInspect {
    #[serde(rename = "Driver")]
    pub driver: String,
    #[serde(rename = "Config")]
    pub config: Vec<SubnetSpec>,
}

/// One entry of `Containers` in `network inspect`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkContainer {
    #[serde(rename = "Name")]
    pub name: String,
    #[serde(rename = "EndpointID")]
    pub endpoint_id: String,
    #[serde(rename = "MacAddress")]
    pub mac: String,
    /// `10.0.0.2/24`, or empty.
    #[serde(rename = "IPv4Address")]
    pub ipv4: String,
    #[serde(rename = "IPv6Address")]
    pub ipv6: String,
    #[serde(rename = "Host")]
    pub host: String,
}

/// `vswitch network inspect`, with Docker's field names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkInspect {
    #[serde(rename = "Name")]
    pub name: String,
    #[serde(rename = "Id")]
    pub id: String,
    /// RFC 3339.
    #[serde(rename = "Created")]
    pub created: String,
    #[serde(rename = "Scope")]
    pub scope: String,
    #[serde(rename = "Driver")]
    pub driver: Driver,
    #[serde(rename = "EnableIPv6")]
    pub ipv6: bool,
    #[serde(rename = "Internal")]
    pub internal: bool,
    #[serde(rename = "IPAM")]
    pub ipam: IpamInspect,
    #[serde(rename = "Options")]
    pub options: BTreeMap<String, String>,
    #[serde(rename = "Labels")]
    pub labels: BTreeMap<String, String>,
    /// Keyed by container (sandbox) id.
    #[serde(rename = "Containers")]
    pub containers: BTreeMap<String, NetworkContainer>,
    #[serde(rename = "MTU")]
    pub mtu: u32,
    /// Overlays: the VXLAN network identifier.
    #[serde(rename = "VNI", skip_serializing_if = "Option::is_none", default)]
    pub vni: Option<u32>,
    /// Overlays: the hosts with endpoints on the network.
    #[serde(rename = "Peers", skip_serializing_if = "Option::is_none", default)]
    pub peers: Option<Vec<Peer>>,
    /// Overlays: foreign VTEPs admitted with `vswitch network vtep add`.
    #[serde(rename = "VTEPs", skip_serializing_if = "Option::is_none", default)]
    pub vteps: Option<Vec<String>>,
    /// The policies naming the network (`vswitch policy inspect NAME`).
    #[serde(rename = "Policies", skip_serializing_if = "Vec::is_empty", default)]
    pub policies: Vec<String>,
}

/// One host of an overlay network in `network inspect`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Peer {
    #[serde(rename = "Name")]
    pub name: String,
    #[serde(rename = "IP")]
    pub ip: String,
}

/// One endpoint of a container, in `vswitch inspect`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointInspect {
    #[serde(rename = "Network")]
    pub network: String,
    #[serde(rename = "EndpointID")]
    pub endpoint_id: String,
    #[serde(rename = "Interface")]
    pub interface: String,
    #[serde(rename = "MacAddress")]
    pub mac: String,
    #[serde(rename = "IPAddress", skip_serializing_if = "Option::is_none")]
    pub ipv4: Option<Ipv4Addr>,
    #[serde(rename = "IPPrefixLen", skip_serializing_if = "Option::is_none")]
    pub ipv4_prefix: Option<u8>,
    #[serde(rename = "GlobalIPv6Address", skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<Ipv6Addr>,
    #[serde(
        rename = "GlobalIPv6PrefixLen",
        skip_serializing_if = "Option::is_none"
    )]
    pub ipv6_prefix: Option<u8>,
    #[serde(rename = "Gateway", skip_serializing_if = "Option::is_none")]
    pub gateway: Option<Ipv4Addr>,
    #[serde(rename = "IPv6Gateway", skip_serializing_if = "Option::is_none")]
    pub gateway6: Option<Ipv6Addr>,
    #[serde(rename = "Aliases")]
    pub aliases: Vec<String>,
}

/// `vswitch inspect CONTAINER`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerInspect {
    #[serde(rename = "Name")]
    pub name: String,
    #[serde(rename = "Id")]
    pub id: String,
    #[serde(rename = "NetNs", skip_serializing_if = "Option::is_none")]
    pub netns: Option<PathBuf>,
    #[serde(rename = "Pid", skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    #[serde(rename = "Host")]
    pub host: String,
    #[serde(rename = "Networks")]
    pub networks: BTreeMap<String, EndpointInspect>,
    /// Published ports, keyed `PORT/PROTO` as Docker's.
    #[serde(rename = "Ports", default)]
    pub ports: BTreeMap<String, Vec<PortBinding>>,
    /// When the daemon first knew the container (RFC 3339); absent for
    /// containers stored by releases that did not record it.
    #[serde(rename = "Created", default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    #[serde(rename = "State", default)]
    pub state: ContainerState,
    /// The command of a `vswitch run` container.
    #[serde(rename = "Cmd", default, skip_serializing_if = "Vec::is_empty")]
    pub cmd: Vec<String>,
    /// Its labels (`--label`).
    #[serde(rename = "Labels", default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// The networks it is on, or, once exited, was on (its endpoints are
    /// released when it exits).
    #[serde(rename = "NetworkNames", default)]
    pub network_names: Vec<String>,
    /// `run -d`: where the command's output is kept.
    #[serde(rename = "LogPath", default, skip_serializing_if = "Option::is_none")]
    pub log_path: Option<PathBuf>,
}

/// What state a container is in, in Docker's `State` field names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ContainerState {
    #[serde(rename = "Status")]
    pub status: ContainerStatus,
    #[serde(rename = "Running")]
    pub running: bool,
    /// The command's exit code once it exited; absent when the daemon
    /// could not learn it (its supervisor was killed too).
    #[serde(rename = "ExitCode", default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    #[serde(rename = "StartedAt", default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    #[serde(
        rename = "FinishedAt",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub finished_at: Option<String>,
}

/// `created` (registered, nothing started yet, or a runtime's container
/// without endpoints), `running`, `exited`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ContainerStatus {
    #[default]
    Created,
    Running,
    Exited,
}

impl ContainerStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ContainerStatus::Created => "created",
            ContainerStatus::Running => "running",
            ContainerStatus::Exited => "exited",
        }
    }
}

/// One port's counters in `vswitch stats`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct PortStats {
    #[serde(rename = "Network")]
    pub network: String,
    /// The container, or `(gateway)`.
    #[serde(rename = "Container")]
    pub container: String,
    #[serde(rename = "Interface")]
    pub interface: String,
    #[serde(rename = "RxPackets")]
    pub rx_packets: u64,
    #[serde(rename = "RxBytes")]
    pub rx_bytes: u64,
    #[serde(rename = "TxPackets")]
    pub tx_packets: u64,
    #[serde(rename = "TxBytes")]
    pub tx_bytes: u64,
    /// Frames from this port refused by the switch (port security, malformed...).
    #[serde(rename = "Drops")]
    pub drops: u64,
    /// Frames to this port lost because the device queue was full.
    #[serde(rename = "TxDrops")]
    pub tx_drops: u64,
}

/// `vswitch stats`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Stats {
    #[serde(rename = "Ports")]
    pub ports: Vec<PortStats>,
    /// Switch drops by reason.
    #[serde(rename = "Drops")]
    pub drops: BTreeMap<String, u64>,
    /// Control API requests refused as malformed.
    #[serde(rename = "BadRequests")]
    pub bad_requests: u64,
    /// ARP requests and neighbour solicitations answered locally.
    #[serde(rename = "Suppressed")]
    pub suppressed: u64,
    /// Frames each datapath worker read from its TAP queues (one entry per
    /// worker): how the kernel spreads flows over the queues.
    #[serde(rename = "WorkerRxPackets", default)]
    pub worker_rx_packets: Vec<u64>,
    /// TCP connections through published ports and egress each worker's
    /// NAT shards took (one entry per worker): how the L4 work spreads.
    #[serde(rename = "WorkerNatConnections", default)]
    pub worker_nat_connections: Vec<u64>,
    /// The VXLAN tunnel.
    #[serde(rename = "Tunnel")]
    pub tunnel: BTreeMap<String, u64>,
    /// Gossip (present with a cluster).
    #[serde(rename = "Gossip", skip_serializing_if = "BTreeMap::is_empty", default)]
    pub gossip: BTreeMap<String, u64>,
    /// Published ports and egress, by network.
    #[serde(rename = "Nat", skip_serializing_if = "BTreeMap::is_empty", default)]
    pub nat: BTreeMap<String, BTreeMap<String, u64>>,
    /// `vswitch capture`s running.
    #[serde(rename = "Captures", default)]
    pub captures: usize,
    /// Policies: frames (and NAT egress flows) denied, by policy name.
    #[serde(rename = "PolicyDenied", default)]
    pub policy_denied: BTreeMap<String, u64>,
    /// Policies: flows held, opened, expired, revoked, refused for a
    /// full table; frames routed between networks.
    #[serde(rename = "Policy", default)]
    pub policy: BTreeMap<String, u64>,
}

/// `POST /v1/policies`: policies to add, all or none. `Replace` (as
/// `policy apply` sends) replaces same-named policies; without it a name
/// already taken by a different policy is refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyCreate {
    #[serde(rename = "Policies")]
    pub policies: Vec<switch::policy::Policy>,
    #[serde(rename = "Replace", default)]
    pub replace: bool,
}

/// Most policies one request may carry.
pub const MAX_POLICIES_PER_REQUEST: usize = 256;

/// A policy as `policy ls` and `policy inspect` show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyInspect {
    #[serde(rename = "Name")]
    pub name: String,
    /// `allow`, `egress` or `NetworkPolicy`.
    #[serde(rename = "Kind")]
    pub kind: String,
    /// The networks it names.
    #[serde(rename = "Networks")]
    pub networks: Vec<String>,
    /// The rule in a line, as the CLI would say it.
    #[serde(rename = "Summary")]
    pub summary: String,
    /// When it was added (RFC 3339).
    #[serde(rename = "Created")]
    pub created: String,
    /// Frames and egress flows it denied on this host since the daemon
    /// started.
    #[serde(rename = "Denied")]
    pub denied: u64,
    /// Whether every network it names exists here (a policy for a network
    /// that is not there waits for it).
    #[serde(rename = "Active")]
    pub active: bool,
    /// `global` for a policy every host of the cluster holds (it names
    /// only overlays), `local` for one of this host alone.
    #[serde(rename = "Scope", default)]
    pub scope: String,
    /// The rule itself.
    #[serde(rename = "Rule")]
    pub rule: switch::policy::Rule,
}

/// The transport of a `vswitch trace` probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum TraceProto {
    /// An echo request, as `ping` sends.
    #[default]
    Icmp,
    /// A SYN, as a TCP connect sends.
    Tcp,
    /// A datagram.
    Udp,
}

impl TraceProto {
    /// The name users type.
    pub fn as_str(self) -> &'static str {
        match self {
            TraceProto::Icmp => "icmp",
            TraceProto::Tcp => "tcp",
            TraceProto::Udp => "udp",
        }
    }
}

/// `POST /v1/trace`: which frame `vswitch trace` follows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct TraceRequest {
    /// The container it leaves from.
    #[serde(rename = "From")]
    pub from: String,
    /// An IP address, or a name the container resolves through the
    /// embedded DNS.
    #[serde(rename = "To")]
    pub to: String,
    #[serde(rename = "Proto", default)]
    pub proto: TraceProto,
    /// The destination port (TCP and UDP only).
    #[serde(rename = "Port", default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
}

impl TraceRequest {
    /// Checks what the daemon cannot check later: a container name, a
    /// target that is an IP address or a DNS name, a port only with TCP or
    /// UDP (and then required), never 0.
    pub fn validate(&self) -> Result<(), String> {
        validate_name("container", &self.from)?;
        if self.to.parse::<IpAddr>().is_err() {
            validate_dns_name(&self.to)?;
        }
        match (self.proto, self.port) {
            (TraceProto::Icmp, Some(_)) => {
                Err("--port needs --proto tcp or udp (ICMP has no ports)".into())
            }
            (TraceProto::Tcp | TraceProto::Udp, None) => Err(format!(
                "--proto {} needs --port N (1 to 65535)",
                self.proto.as_str()
            )),
            (_, Some(0)) => Err("--port must be 1 to 65535".into()),
            _ => Ok(()),
        }
    }
}

/// `POST /v1/doctor`: what `vswitch doctor` checks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct DoctorRequest {
    /// The container whose connectivity is checked (none: the daemon and
    /// the cluster only).
    #[serde(rename = "Container", default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    /// What it should reach: a container's name, an alias or any DNS name
    /// the container resolves, an IP address, or `host` (the container's
    /// published port, reached from the host).
    #[serde(rename = "Target", default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    #[serde(rename = "Port", default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// `tcp` (the default with a port) or `udp`.
    #[serde(rename = "Proto", default, skip_serializing_if = "Option::is_none")]
    pub proto: Option<PortProto>,
}

/// The target `vswitch doctor` takes to mean the host itself.
pub const DOCTOR_HOST: &str = "host";

impl DoctorRequest {
    /// Parses the command line's `[CONTAINER [TARGET[:PORT[/PROTO]]]]`
    /// (an IPv6 target with a port in brackets: `[fd00::3]:80`).
    pub fn parse(container: Option<&str>, target: Option<&str>) -> Result<DoctorRequest, String> {
        let mut req = DoctorRequest {
            container: container.map(str::to_owned),
            ..DoctorRequest::default()
        };
        if let Some(t) = target {
            let (rest, proto) = match t.rsplit_once('/') {
                Some((rest, p)) => (
                    rest,
                    Some(match p {
                        "tcp" => PortProto::Tcp,
                        "udp" => PortProto::Udp,
                        _ => {
                            return Err(format!(
                                "`{t}`: the protocol after / must be tcp or udp, not `{p}`"
                            ))
                        }
                    }),
                ),
                None => (t, None),
            };
            let (host, port) = if let Some(inner) = rest.strip_prefix('[') {
                let (addr, after) = inner
                    .split_once(']')
                    .ok_or_else(|| format!("`{t}`: an IPv6 address in brackets needs its `]`"))?;
                match after.strip_prefix(':') {
                    Some(p) => (addr, Some(p)),
                    None if after.is_empty() => (addr, None),
                    None => return Err(format!("`{t}`: after `[{addr}]` comes `:PORT`")),
                }
            } else if rest.parse::<Ipv6Addr>().is_ok() {
                (rest, None)
            } else {
                match rest.rsplit_once(':') {
                    Some((h, p)) => (h, Some(p)),
                    None => (rest, None),
                }
            };
            req.target = Some(host.to_string());
            req.port = match port {
                Some(p) => match p.parse::<u16>() {
                    Ok(n) if n > 0 => Some(n),
                    _ => return Err(format!("`{t}`: `{p}` is not a port (1-65535)")),
                },
                None => None,
            };
            req.proto = proto;
        }
        req.validate()?;
        Ok(req)
    }

    /// Checks what the daemon cannot check later: names, a target only
    /// with a container, a protocol only with a port, `host` only with one.
    pub fn validate(&self) -> Result<(), String> {
        if let Some(c) = &self.container {
            validate_name("container", c)?;
        }
        match &self.target {
            Some(_) if self.container.is_none() => {
                return Err("a target needs the container it is reached from".into())
            }
            Some(t) if t == DOCTOR_HOST && self.port.is_none() => {
                return Err("`host` needs the published port: host:PORT[/tcp|/udp]".into())
            }
            Some(t) if t.parse::<IpAddr>().is_err() => validate_dns_name(t)?,
            Some(_) => {}
            None if self.port.is_some() || self.proto.is_some() => {
                return Err("a port needs a target: TARGET:PORT[/tcp|/udp]".into())
            }
            None => {}
        }
        match (self.port, self.proto) {
            (Some(0), _) => Err("the port must be 1 to 65535".into()),
            (None, Some(_)) => Err("a protocol needs a port: TARGET:PORT/PROTO".into()),
            _ => Ok(()),
        }
    }
}

/// What became of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckStatus {
    Ok,
    Fail,
    /// Not run, and why is in the evidence (the container's namespace is
    /// not vswitch's to enter, a step before failed...).
    Skip,
}

/// One step of `vswitch doctor`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DoctorCheck {
    /// What was checked: `daemon`, `datapath`, `cluster`, `container`,
    /// `interface`, `gateway`, `dns`, `network`, `host`, `reach`, `mtu`,
    /// `published`, `port`, `drops`.
    #[serde(rename = "Check")]
    pub check: String,
    #[serde(rename = "Status")]
    pub status: CheckStatus,
    /// What was seen, in a sentence.
    #[serde(rename = "Evidence")]
    pub evidence: String,
    /// What would fix it, in a sentence (failures only).
    #[serde(rename = "Fix", default, skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

/// `POST /v1/doctor`: every check, in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DoctorReport {
    #[serde(rename = "Container", default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    #[serde(rename = "Target", default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    #[serde(rename = "Port", default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    #[serde(rename = "Proto", default, skip_serializing_if = "Option::is_none")]
    pub proto: Option<PortProto>,
    #[serde(rename = "Checks")]
    pub checks: Vec<DoctorCheck>,
    /// True when no check failed.
    #[serde(rename = "Ok")]
    pub ok: bool,
}

/// A DNS name as the embedded resolver takes one: 1 to 253 bytes of
/// dot-separated labels of letters, digits, `-` and `_`, each 1 to 63
/// bytes; one trailing dot allowed.
pub fn validate_dns_name(name: &str) -> Result<(), String> {
    let bare = name.strip_suffix('.').unwrap_or(name);
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    if bare.is_empty() || bare.len() > 253 || !bare.split('.').all(label_ok) {
        return Err(format!(
            "`{}` is neither an IP address nor a DNS name",
            name.chars().take(64).collect::<String>().escape_debug()
        ));
    }
    Ok(())
}

/// One step of a trace: what was looked at, and what it found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceStep {
    /// What decided: `dns`, `route`, `neighbor`, `port-security`, `fdb`,
    /// `isolation`, `gateway`, `nat`, `host-route`, `tunnel`.
    #[serde(rename = "Step")]
    pub step: String,
    /// False when this step is where the frame is dropped.
    #[serde(rename = "Ok")]
    pub ok: bool,
    /// What was looked at and the result, in a sentence.
    #[serde(rename = "Detail")]
    pub detail: String,
}

/// Where a traced frame ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TraceAction {
    /// Written to a container's TAP on this host (or to the gateway, for
    /// its own address).
    Delivered,
    /// Sent into the tunnel to another host.
    Forwarded,
    /// Routed by the gateway's NAT to the outside.
    Routed,
    /// Dropped.
    Dropped,
}

/// The end of a trace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceVerdict {
    #[serde(rename = "Action")]
    pub action: TraceAction,
    /// Dropped: the reason, under the name `vswitch stats` counts it.
    #[serde(rename = "Reason", default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Delivered: the containers (more than one when flooded).
    #[serde(rename = "Containers", default, skip_serializing_if = "Vec::is_empty")]
    pub containers: Vec<String>,
    /// Delivered: their interfaces, in the same order.
    #[serde(rename = "Interfaces", default, skip_serializing_if = "Vec::is_empty")]
    pub interfaces: Vec<String>,
    /// The network the frame was switched in.
    #[serde(rename = "Network", default, skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
    /// Forwarded: the host (member name, or a foreign VTEP's address).
    #[serde(rename = "Host", default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Forwarded: its tunnel address.
    #[serde(rename = "Remote", default, skip_serializing_if = "Option::is_none")]
    pub remote: Option<String>,
    /// Forwarded: the VNI.
    #[serde(rename = "VNI", default, skip_serializing_if = "Option::is_none")]
    pub vni: Option<u32>,
    /// Forwarded: `UDP` or `QUIC`.
    #[serde(rename = "Transport", default, skip_serializing_if = "Option::is_none")]
    pub transport: Option<String>,
    /// Routed: the host address the NAT sends from.
    #[serde(rename = "NatSource", default, skip_serializing_if = "Option::is_none")]
    pub nat_source: Option<IpAddr>,
    /// Dropped by a policy: its name (`default-deny` between networks
    /// without an allowance, `isolate` inside an isolated network).
    #[serde(rename = "Policy", default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    /// The verdict in a sentence, as `vswitch trace` prints it.
    #[serde(rename = "Summary")]
    pub summary: String,
}

impl TraceVerdict {
    /// A verdict of `action` with nothing else said yet.
    pub fn new(action: TraceAction) -> TraceVerdict {
        TraceVerdict {
            action,
            reason: None,
            policy: None,
            containers: Vec::new(),
            interfaces: Vec::new(),
            network: None,
            host: None,
            remote: None,
            vni: None,
            transport: None,
            nat_source: None,
            summary: String::new(),
        }
    }
}

/// `POST /v1/trace`: each step and the verdict.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceReport {
    #[serde(rename = "From")]
    pub from: String,
    #[serde(rename = "To")]
    pub to: String,
    /// The destination address (`To`, or what it resolved to).
    #[serde(
        rename = "Destination",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub destination: Option<IpAddr>,
    #[serde(rename = "Proto")]
    pub proto: TraceProto,
    #[serde(rename = "Port", default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    #[serde(rename = "Steps")]
    pub steps: Vec<TraceStep>,
    #[serde(rename = "Verdict")]
    pub verdict: TraceVerdict,
}

/// What an event is about, as Docker's event `Type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventType {
    /// A network: create, remove.
    Network,
    /// A container's endpoint on a network: connect, disconnect.
    Endpoint,
    /// A container: create, start, exit, remove.
    Container,
    /// A published port: publish, unpublish.
    Port,
    /// A cluster member, as gossip sees it: alive, suspect, dead.
    Member,
    /// This vswitchd: start.
    Daemon,
    /// Something the daemon noticed in its own counters: rate-spike,
    /// drop-burst, mac-table-full, member-flapping, each with an `-end`.
    Anomaly,
}

impl EventType {
    /// Every type, in the order `/metrics` lists them.
    pub const ALL: [EventType; 7] = [
        EventType::Network,
        EventType::Endpoint,
        EventType::Container,
        EventType::Port,
        EventType::Member,
        EventType::Daemon,
        EventType::Anomaly,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Network => "network",
            EventType::Endpoint => "endpoint",
            EventType::Container => "container",
            EventType::Port => "port",
            EventType::Member => "member",
            EventType::Daemon => "daemon",
            EventType::Anomaly => "anomaly",
        }
    }

    /// Its index in [`EventType::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }
}

/// One event of `vswitch events` (`GET /v1/events`, a JSON object a line).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Event {
    /// Rises by one with every event the daemon records (from 1 at start).
    #[serde(rename = "Seq")]
    pub seq: u64,
    /// RFC 3339 in UTC, to the microsecond.
    #[serde(rename = "Time")]
    pub time: String,
    /// The same time in nanoseconds since the Unix epoch (Docker's `timeNano`).
    #[serde(rename = "TimeNano")]
    pub time_nano: u64,
    #[serde(rename = "Type")]
    pub kind: EventType,
    /// `create`, `connect`, `publish`, `dead`, `rate-spike`...
    #[serde(rename = "Action")]
    pub action: String,
    /// The name of what the event is about: the network of a network
    /// event, the container of an endpoint, container or port event, the
    /// host of a member or daemon event, the container (or network, or
    /// host) of an anomaly.
    #[serde(rename = "Actor")]
    pub actor: String,
    #[serde(rename = "Network", default, skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
    #[serde(rename = "Container", default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    #[serde(rename = "Host", default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// A published port (`80/tcp`) or a switch port (`eth0`).
    #[serde(rename = "Port", default, skip_serializing_if = "Option::is_none")]
    pub port: Option<String>,
    #[serde(
        rename = "Attributes",
        default,
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub attributes: BTreeMap<String, String>,
}

/// A line of the events stream saying that `Missed` events went by
/// before this reader took them (it fell behind the daemon's ring).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsMissed {
    #[serde(rename = "Missed")]
    pub missed: u64,
}

/// One line of `GET /v1/events`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum EventLine {
    Event(Box<Event>),
    Missed(EventsMissed),
}

/// `GET /v1/events[?since=T][&until=T][&follow=1]`: times in Unix
/// seconds (`1700000000` or `1700000000.25`), held here in nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EventsQuery {
    /// Only events at or after this time (without it: every event kept,
    /// or with `follow` only new ones).
    pub since: Option<u64>,
    /// Only events at or before this time; a follow ends there.
    pub until: Option<u64>,
    /// Go on with new events as they happen.
    pub follow: bool,
}

/// The path of `GET /v1/events`.
pub const EVENTS_PATH: &str = "/v1/events";

/// The latest time a query may name: the year 2554, where nanoseconds
/// since 1970 outgrow 64 bits.
const MAX_UNIX_SECS: u64 = u64::MAX / 1_000_000_000 - 1;

impl EventsQuery {
    /// The path and query string that ask for it.
    pub fn path(&self) -> String {
        let mut q = Vec::new();
        if let Some(t) = self.since {
            q.push(format!("since={}", unix_seconds(t)));
        }
        if let Some(t) = self.until {
            q.push(format!("until={}", unix_seconds(t)));
        }
        if self.follow {
            q.push("follow=1".to_string());
        }
        if q.is_empty() {
            EVENTS_PATH.to_string()
        } else {
            format!("{EVENTS_PATH}?{}", q.join("&"))
        }
    }

    fn decode(query: &str) -> Result<EventsQuery, DecodeError> {
        let mut out = EventsQuery::default();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let time = |v: &str| parse_unix_seconds(v).map_err(|reason| bad_query(pair, &reason));
            match (k, v) {
                ("since", v) => out.since = Some(time(v)?),
                ("until", v) => out.until = Some(time(v)?),
                ("follow", "" | "1" | "true") => out.follow = true,
                ("follow", "0" | "false") => out.follow = false,
                _ => {
                    return Err(bad_query(
                        pair,
                        "this endpoint takes since=SECONDS, until=SECONDS and follow=1",
                    ))
                }
            }
        }
        if let (Some(s), Some(u)) = (out.since, out.until) {
            if u < s {
                return Err(bad_query(query, "until is before since"));
            }
        }
        Ok(out)
    }
}

/// Nanoseconds since the Unix epoch as `SECONDS.NANOSECONDS`, the form
/// [`parse_unix_seconds`] reads.
pub fn unix_seconds(nanos: u64) -> String {
    format!("{}.{:09}", nanos / 1_000_000_000, nanos % 1_000_000_000)
}

/// Reads Unix seconds, `1700000000` or with up to 9 decimals
/// `1700000000.123456789`, as nanoseconds since the epoch.
pub fn parse_unix_seconds(s: &str) -> Result<u64, String> {
    let bad = || {
        format!(
            "`{}` is not Unix seconds (e.g. 1700000000 or 1700000000.25)",
            s.chars().take(32).collect::<String>().escape_debug()
        )
    };
    let (whole, frac) = s.split_once('.').unwrap_or((s, ""));
    let digits = |d: &str| d.bytes().all(|b| b.is_ascii_digit());
    if whole.is_empty()
        || whole.len() > 20
        || !digits(whole)
        || frac.len() > 9
        || !digits(frac)
        || (s.contains('.') && frac.is_empty())
    {
        return Err(bad());
    }
    let secs: u64 = whole.parse().map_err(|_| bad())?;
    if secs > MAX_UNIX_SECS {
        return Err(format!("{secs} is past the year 2554; give a time before"));
    }
    let frac_nanos: u64 = if frac.is_empty() {
        0
    } else {
        format!("{frac:0<9}").parse().map_err(|_| bad())?
    };
    Ok(secs * 1_000_000_000 + frac_nanos)
}

/// The body of every error response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    #[serde(rename = "message")]
    pub message: String,
}

/// `GET /v1/info`: how the daemon runs. `vswitch run` reads it to learn
/// whether it must join a rootless daemon's namespaces. Answered by the
/// server itself, not through [`Request`]: it describes the process, not
/// the state. A daemon without this route runs as root.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Info {
    /// `vswitchd --rootless`: sandboxes live in a user namespace.
    #[serde(rename = "Rootless", default)]
    pub rootless: bool,
    /// Rootless: the pause process holding the user and mount namespaces.
    #[serde(rename = "PausePid", default, skip_serializing_if = "Option::is_none")]
    pub pause_pid: Option<u32>,
    /// Rootless: the runtime directory (`netns/`, `etc/`, `pause.pid`).
    #[serde(
        rename = "RuntimeDir",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub runtime_dir: Option<PathBuf>,
}

/// The path of [`Info`].
pub const INFO_PATH: &str = "/v1/info";

/// A decoded API request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Ping,
    NetworkList,
    NetworkCreate(NetworkCreate),
    NetworkInspect(String),
    NetworkRemove(String),
    NetworkConnect(String, Connect),
    NetworkDisconnect(String, Disconnect),
    ContainerList,
    ContainerCreate(ContainerCreate),
    ContainerUpdate(String, ContainerUpdate),
    ContainerInspect(String),
    ContainerRemove(String),
    ContainerExited(String, ContainerExited),
    /// `GET /v1/containers/NAME/logs[?follow=1]`: answered by the server
    /// as a stream of the log's bytes.
    ContainerLogs {
        name: String,
        follow: bool,
    },
    ContainerPrune,
    NetworkPrune,
    /// `POST /v1/captures`: answered by the server as a pcapng stream.
    Capture(CaptureRequest),
    Stats,
    ClusterJoin(Join),
    ClusterLeave,
    ClusterMembers,
    VtepList(String),
    VtepAdd(String, Vtep),
    VtepRemove(String, Vtep),
    IpamReclaim(Reclaim),
    CniAdd(CniAdd),
    CniDel(CniKey),
    CniCheck(CniKey),
    CniGc(CniGc),
    Trace(TraceRequest),
    Doctor(DoctorRequest),
    /// `GET /v1/events`: answered by the server as a stream of events.
    Events(EventsQuery),
    PolicyCreate(PolicyCreate),
    PolicyList,
    PolicyInspect(String),
    PolicyRemove(String),
}

/// Why a request was refused before it reached the daemon's logic.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// No such endpoint.
    #[error("no API endpoint {method} {path}; this daemon speaks {PREFIX}")]
    NotFound { method: String, path: String },
    /// The body is not the JSON this endpoint takes.
    #[error("bad request body for {endpoint}: {reason}")]
    BadBody {
        endpoint: &'static str,
        reason: String,
    },
    /// A name in the path is not a valid name.
    #[error("{0}")]
    BadName(String),
    /// A query parameter this endpoint does not take, or a value it
    /// cannot read.
    #[error("bad query parameter `{param}`: {reason}")]
    BadQuery { param: String, reason: String },
}

impl DecodeError {
    /// The HTTP status this error maps to.
    pub fn status(&self) -> u16 {
        match self {
            DecodeError::NotFound { .. } => 404,
            DecodeError::BadBody { .. }
            | DecodeError::BadName(_)
            | DecodeError::BadQuery { .. } => 400,
        }
    }
}

/// A policy name from a path segment.
fn policy_segment(name: &str) -> Result<String, DecodeError> {
    switch::policy::spec::check_name(name)
        .map(|()| name.to_string())
        .map_err(|e| DecodeError::BadName(e.to_string()))
}

/// Checks a container's labels.
fn labels_ok(endpoint: &'static str, labels: &BTreeMap<String, String>) -> Result<(), DecodeError> {
    switch::policy::spec::check_labels(labels).map_err(|e| DecodeError::BadBody {
        endpoint,
        reason: format!("Labels: {e}"),
    })
}

/// Checks a network or container name: what Docker accepts,
/// `[a-zA-Z0-9][a-zA-Z0-9_.-]*`, at most 63 bytes (it is also a DNS label).
pub fn validate_name(kind: &str, name: &str) -> Result<(), String> {
    let ok_first = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric());
    let ok_rest = name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if name.is_empty() || name.len() > 63 || !ok_first || !ok_rest {
        return Err(format!(
            "invalid {kind} name `{}`: use 1 to 63 letters, digits, `_`, `.` or `-`, starting with a letter or digit",
            name.escape_debug()
        ));
    }
    Ok(())
}

/// Checks a CNI attachment's container id (what the spec allows:
/// alphanumerics, `_`, `.`, `-`, starting with an alphanumeric) and
/// interface name (what Linux allows, as [`crate::netns::validate_ifname`]
/// checks it).
pub fn validate_cni_key(k: &CniKey) -> Result<(), String> {
    let id = &k.container_id;
    let ok = id.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
        && id.len() <= 256;
    if !ok {
        return Err(format!(
            "invalid container id `{}`: use letters, digits, `_`, `.` or `-`, starting with a letter or digit",
            id.escape_debug()
        ));
    }
    crate::netns::validate_ifname(&k.ifname).map_err(|e| e.to_string())
}

fn body<T: for<'de> Deserialize<'de>>(
    endpoint: &'static str,
    body: &[u8],
) -> Result<T, DecodeError> {
    serde_json::from_slice(body).map_err(|e| DecodeError::BadBody {
        endpoint,
        reason: e.to_string(),
    })
}

fn bad_query(param: &str, reason: &str) -> DecodeError {
    DecodeError::BadQuery {
        param: param.chars().take(64).collect(),
        reason: reason.to_string(),
    }
}

fn name_segment(kind: &str, seg: &str) -> Result<String, DecodeError> {
    validate_name(kind, seg).map_err(DecodeError::BadName)?;
    Ok(seg.to_owned())
}

impl Request {
    /// The endpoint's name, for the API request counters of `/metrics`: one
    /// of a fixed set, whatever the request carries.
    pub fn endpoint(&self) -> &'static str {
        match self {
            Request::Ping => "ping",
            Request::NetworkList => "network_list",
            Request::NetworkCreate(_) => "network_create",
            Request::NetworkInspect(_) => "network_inspect",
            Request::NetworkRemove(_) => "network_remove",
            Request::NetworkConnect(..) => "network_connect",
            Request::NetworkDisconnect(..) => "network_disconnect",
            Request::ContainerList => "container_list",
            Request::ContainerCreate(_) => "container_create",
            Request::ContainerUpdate(..) => "container_update",
            Request::ContainerInspect(_) => "container_inspect",
            Request::ContainerRemove(_) => "container_remove",
            Request::ContainerExited(..) => "container_exited",
            Request::ContainerLogs { .. } => "container_logs",
            Request::ContainerPrune => "container_prune",
            Request::NetworkPrune => "network_prune",
            Request::Capture(_) => "capture",
            Request::Trace(_) => "trace",
            Request::Doctor(_) => "doctor",
            Request::Events(_) => "events",
            Request::Stats => "stats",
            Request::ClusterJoin(_) => "cluster_join",
            Request::ClusterLeave => "cluster_leave",
            Request::ClusterMembers => "cluster_members",
            Request::VtepList(_) => "vtep_list",
            Request::VtepAdd(..) => "vtep_add",
            Request::VtepRemove(..) => "vtep_remove",
            Request::IpamReclaim(_) => "ipam_reclaim",
            Request::CniAdd(_) => "cni_add",
            Request::CniDel(_) => "cni_del",
            Request::CniCheck(_) => "cni_check",
            Request::CniGc(_) => "cni_gc",
            Request::PolicyCreate(_) => "policy_create",
            Request::PolicyList => "policy_list",
            Request::PolicyInspect(_) => "policy_inspect",
            Request::PolicyRemove(_) => "policy_remove",
        }
    }

    /// Decodes a request from its method, path (the query string is read
    /// only by the logs and events endpoints, ignored elsewhere) and body. Never
    /// panics, whatever the bytes.
    pub fn decode(method: &str, path: &str, body_bytes: &[u8]) -> Result<Request, DecodeError> {
        let not_found = || DecodeError::NotFound {
            method: method.chars().take(16).collect(),
            path: path.chars().take(128).collect(),
        };
        let (path, query) = path.split_once('?').unwrap_or((path, ""));
        let rest = path.strip_prefix(PREFIX).ok_or_else(not_found)?;
        let segs: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
        let req = match (method, segs.as_slice()) {
            ("GET", ["_ping"]) => Request::Ping,
            ("GET", ["networks"]) => Request::NetworkList,
            ("POST", ["networks", "_prune"]) => Request::NetworkPrune,
            ("POST", ["containers", "_prune"]) => Request::ContainerPrune,
            ("POST", ["networks"]) => {
                let create: NetworkCreate = body("POST /v1/networks", body_bytes)?;
                validate_name("network", &create.name).map_err(DecodeError::BadName)?;
                Request::NetworkCreate(create)
            }
            ("GET", ["networks", name]) => Request::NetworkInspect(name_segment("network", name)?),
            ("DELETE", ["networks", name]) => {
                Request::NetworkRemove(name_segment("network", name)?)
            }
            ("POST", ["networks", name, "connect"]) => {
                let name = name_segment("network", name)?;
                let c: Connect = body("POST /v1/networks/NAME/connect", body_bytes)?;
                validate_name("container", &c.container).map_err(DecodeError::BadName)?;
                labels_ok("POST /v1/networks/NAME/connect", &c.labels)?;
                for a in &c.aliases {
                    validate_name("alias", a).map_err(DecodeError::BadName)?;
                }
                Request::NetworkConnect(name, c)
            }
            ("POST", ["networks", name, "disconnect"]) => {
                let name = name_segment("network", name)?;
                let d: Disconnect = body("POST /v1/networks/NAME/disconnect", body_bytes)?;
                validate_name("container", &d.container).map_err(DecodeError::BadName)?;
                Request::NetworkDisconnect(name, d)
            }
            ("GET", ["containers"]) => Request::ContainerList,
            ("POST", ["containers"]) => {
                let c: ContainerCreate = body("POST /v1/containers", body_bytes)?;
                validate_name("container", &c.name).map_err(DecodeError::BadName)?;
                labels_ok("POST /v1/containers", &c.labels)?;
                Request::ContainerCreate(c)
            }
            ("POST", ["containers", name]) => {
                let name = name_segment("container", name)?;
                Request::ContainerUpdate(name, body("POST /v1/containers/NAME", body_bytes)?)
            }
            ("GET", ["containers", name]) => {
                Request::ContainerInspect(name_segment("container", name)?)
            }
            ("DELETE", ["containers", name]) => {
                Request::ContainerRemove(name_segment("container", name)?)
            }
            ("POST", ["containers", name, "exited"]) => {
                let name = name_segment("container", name)?;
                let e: ContainerExited = body("POST /v1/containers/NAME/exited", body_bytes)?;
                let bad = |reason: String| DecodeError::BadBody {
                    endpoint: "POST /v1/containers/NAME/exited",
                    reason,
                };
                if !(0..=255).contains(&e.exit_code) {
                    return Err(bad(format!(
                        "ExitCode {} is not an exit status (0 to 255)",
                        e.exit_code
                    )));
                }
                if e.id.is_empty()
                    || e.id.len() > 64
                    || !e.id.bytes().all(|b| b.is_ascii_hexdigit())
                {
                    return Err(bad("Id must be the container's id (hex digits)".into()));
                }
                Request::ContainerExited(name, e)
            }
            ("GET", ["containers", name, "logs"]) => {
                let name = name_segment("container", name)?;
                let mut follow = false;
                for pair in query.split('&').filter(|p| !p.is_empty()) {
                    match pair.split_once('=').unwrap_or((pair, "")) {
                        ("follow", "" | "1" | "true") => follow = true,
                        ("follow", "0" | "false") => follow = false,
                        _ => return Err(bad_query(pair, "this endpoint takes follow=1")),
                    }
                }
                Request::ContainerLogs { name, follow }
            }
            ("POST", ["captures"]) => {
                let c: CaptureRequest = body("POST /v1/captures", body_bytes)?;
                let bad = |reason: String| DecodeError::BadBody {
                    endpoint: "POST /v1/captures",
                    reason,
                };
                validate_name("container or network", &c.target).map_err(DecodeError::BadName)?;
                if let Some(i) = &c.interface {
                    validate_name("interface", i).map_err(DecodeError::BadName)?;
                }
                if !(1..=DEFAULT_SNAPLEN).contains(&c.snaplen) {
                    return Err(bad(format!(
                        "Snaplen {} is not 1 to {DEFAULT_SNAPLEN}",
                        c.snaplen
                    )));
                }
                if c.count == Some(0) {
                    return Err(bad("Count must be at least 1".into()));
                }
                switch::capture::Filter::parse(&c.filter)
                    .map_err(|e| bad(format!("Filter: {e}")))?;
                Request::Capture(c)
            }
            ("GET", ["stats"]) => Request::Stats,
            ("GET", ["policies"]) => Request::PolicyList,
            ("POST", ["policies"]) => {
                let c: PolicyCreate = body("POST /v1/policies", body_bytes)?;
                let bad = |reason: String| DecodeError::BadBody {
                    endpoint: "POST /v1/policies",
                    reason,
                };
                if c.policies.is_empty() || c.policies.len() > MAX_POLICIES_PER_REQUEST {
                    return Err(bad(format!(
                        "Policies must hold 1 to {MAX_POLICIES_PER_REQUEST} policies"
                    )));
                }
                let mut names = std::collections::BTreeSet::new();
                for p in &c.policies {
                    p.check().map_err(|e| bad(e.to_string()))?;
                    if !names.insert(p.name.as_str()) {
                        return Err(bad(format!("policy {} is named twice", p.name)));
                    }
                }
                Request::PolicyCreate(c)
            }
            ("GET", ["policies", name]) => Request::PolicyInspect(policy_segment(name)?),
            ("DELETE", ["policies", name]) => Request::PolicyRemove(policy_segment(name)?),
            ("GET", ["events"]) => Request::Events(EventsQuery::decode(query)?),
            ("POST", ["cluster", "join"]) => {
                Request::ClusterJoin(body("POST /v1/cluster/join", body_bytes)?)
            }
            ("POST", ["cluster", "leave"]) => Request::ClusterLeave,
            ("GET", ["cluster", "members"]) => Request::ClusterMembers,
            ("POST", ["ipam", "reclaim"]) => {
                Request::IpamReclaim(body("POST /v1/ipam/reclaim", body_bytes)?)
            }
            ("GET", ["networks", name, "vteps"]) => {
                Request::VtepList(name_segment("network", name)?)
            }
            ("POST", ["networks", name, "vteps"]) => {
                let name = name_segment("network", name)?;
                Request::VtepAdd(name, body("POST /v1/networks/NAME/vteps", body_bytes)?)
            }
            ("DELETE", ["networks", name, "vteps"]) => {
                let name = name_segment("network", name)?;
                Request::VtepRemove(name, body("DELETE /v1/networks/NAME/vteps", body_bytes)?)
            }
            ("POST", ["trace"]) => {
                let t: TraceRequest = body("POST /v1/trace", body_bytes)?;
                t.validate().map_err(|reason| DecodeError::BadBody {
                    endpoint: "POST /v1/trace",
                    reason,
                })?;
                Request::Trace(t)
            }
            ("POST", ["doctor"]) => {
                let d: DoctorRequest = body("POST /v1/doctor", body_bytes)?;
                d.validate().map_err(|reason| DecodeError::BadBody {
                    endpoint: "POST /v1/doctor",
                    reason,
                })?;
                Request::Doctor(d)
            }
            ("POST", ["cni", verb]) => {
                let check = |k: &CniKey| -> Result<(), DecodeError> {
                    validate_name("network", &k.network).map_err(DecodeError::BadName)?;
                    validate_cni_key(k).map_err(DecodeError::BadName)
                };
                match *verb {
                    "add" => {
                        let a: CniAdd = body("POST /v1/cni/add", body_bytes)?;
                        check(&a.key)?;
                        if let Some(n) = &a.name {
                            validate_name("container", n).map_err(DecodeError::BadName)?;
                        }
                        for alias in &a.aliases {
                            validate_name("alias", alias).map_err(DecodeError::BadName)?;
                        }
                        Request::CniAdd(a)
                    }
                    "del" | "check" => {
                        let k: CniKey = body("POST /v1/cni/del", body_bytes)?;
                        check(&k)?;
                        if *verb == "del" {
                            Request::CniDel(k)
                        } else {
                            Request::CniCheck(k)
                        }
                    }
                    "gc" => {
                        let g: CniGc = body("POST /v1/cni/gc", body_bytes)?;
                        validate_name("network", &g.network).map_err(DecodeError::BadName)?;
                        Request::CniGc(g)
                    }
                    _ => return Err(not_found()),
                }
            }
            _ => return Err(not_found()),
        };
        Ok(req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    #[test]
    fn decodes_trace() {
        let r = Request::decode(
            "POST",
            "/v1/trace",
            br#"{"From":"a","To":"web.","Proto":"tcp","Port":80}"#,
        )
        .unwrap();
        let Request::Trace(t) = r else {
            panic!("wrong request {r:?}")
        };
        assert_eq!((t.from.as_str(), t.to.as_str()), ("a", "web."));
        assert_eq!((t.proto, t.port), (TraceProto::Tcp, Some(80)));
        let r = Request::decode("POST", "/v1/trace", br#"{"From":"a","To":"fd00::2"}"#).unwrap();
        assert!(matches!(
            r,
            Request::Trace(TraceRequest {
                proto: TraceProto::Icmp,
                port: None,
                ..
            })
        ));
    }

    #[rstest]
    #[case::nothing(None, None, None, None, None)]
    #[case::container(Some("a"), None, None, None, None)]
    #[case::name(Some("a"), Some("b"), Some("b"), None, None)]
    #[case::name_port(Some("a"), Some("b:80"), Some("b"), Some(80), None)]
    #[case::name_port_udp(Some("a"), Some("b:53/udp"), Some("b"), Some(53), Some(PortProto::Udp))]
    #[case::ipv4_port(
        Some("a"),
        Some("10.0.0.3:80/tcp"),
        Some("10.0.0.3"),
        Some(80),
        Some(PortProto::Tcp)
    )]
    #[case::ipv6(Some("a"), Some("fd00::3"), Some("fd00::3"), None, None)]
    #[case::ipv6_port(Some("a"), Some("[fd00::3]:443"), Some("fd00::3"), Some(443), None)]
    #[case::host(Some("a"), Some("host:8080"), Some("host"), Some(8080), None)]
    fn parses_doctor_targets(
        #[case] container: Option<&str>,
        #[case] target: Option<&str>,
        #[case] host: Option<&str>,
        #[case] port: Option<u16>,
        #[case] proto: Option<PortProto>,
    ) {
        let r = DoctorRequest::parse(container, target).unwrap();
        assert_eq!(r.container.as_deref(), container);
        assert_eq!(r.target.as_deref(), host);
        assert_eq!((r.port, r.proto), (port, proto));
        // What the client sends, the daemon decodes the same.
        let body = serde_json::to_vec(&r).unwrap();
        assert_eq!(
            Request::decode("POST", "/v1/doctor", &body).unwrap(),
            Request::Doctor(r)
        );
    }

    #[rstest]
    #[case::port_zero("b:0", "not a port")]
    #[case::port_too_big("b:65536", "not a port")]
    #[case::bad_proto("b:80/sctp", "tcp or udp")]
    #[case::host_without_port("host", "host:PORT")]
    #[case::unclosed("[fd00::3:80", "`]`")]
    #[case::after_bracket("[fd00::3]80", ":PORT")]
    #[case::not_a_name("b c", "neither an IP")]
    #[case::empty("", "neither an IP")]
    fn refuses_bad_doctor_targets(#[case] target: &str, #[case] says: &str) {
        let e = DoctorRequest::parse(Some("a"), Some(target)).unwrap_err();
        assert!(e.contains(says), "{target}: {e}");
    }

    #[rstest]
    #[case::target_without_container(r#"{"Target":"b"}"#)]
    #[case::port_without_target(r#"{"Container":"a","Port":80}"#)]
    #[case::proto_without_port(r#"{"Container":"a","Target":"b","Proto":"udp"}"#)]
    #[case::bad_container(r#"{"Container":"-a"}"#)]
    #[case::unknown_field(r#"{"Container":"a","Via":"x"}"#)]
    fn refuses_bad_doctor_requests(#[case] body: &str) {
        let e = Request::decode("POST", "/v1/doctor", body.as_bytes()).unwrap_err();
        assert_eq!(e.status(), 400, "{body}: {e}");
    }

    #[rstest]
    #[case::port_without_proto(r#"{"From":"a","To":"b","Port":80}"#)]
    #[case::tcp_without_port(r#"{"From":"a","To":"b","Proto":"tcp"}"#)]
    #[case::port_zero(r#"{"From":"a","To":"b","Proto":"udp","Port":0}"#)]
    #[case::port_too_big(r#"{"From":"a","To":"b","Proto":"udp","Port":70000}"#)]
    #[case::bad_proto(r#"{"From":"a","To":"b","Proto":"sctp","Port":1}"#)]
    #[case::bad_container(r#"{"From":"-a","To":"b"}"#)]
    #[case::bad_target(r#"{"From":"a","To":"b c"}"#)]
    #[case::empty_label(r#"{"From":"a","To":"b..c"}"#)]
    #[case::empty_target(r#"{"From":"a","To":""}"#)]
    #[case::unknown_field(r#"{"From":"a","To":"b","Via":"x"}"#)]
    #[case::not_json("{")]
    fn refuses_bad_traces(#[case] body: &str) {
        let e = Request::decode("POST", "/v1/trace", body.as_bytes()).unwrap_err();
        assert_eq!(e.status(), 400, "{e}");
    }

    #[rstest]
    #[case("/v1/events", None, None, false)]
    #[case("/v1/events?follow=1", None, None, true)]
    #[case(
        "/v1/events?since=1700000000",
        Some(1_700_000_000_000_000_000),
        None,
        false
    )]
    #[case(
        "/v1/events?since=1700000000.25&until=1700000001.000000001&follow",
        Some(1_700_000_000_250_000_000),
        Some(1_700_000_001_000_000_001),
        true
    )]
    #[case("/v1/events?since=0&follow=false", Some(0), None, false)]
    fn decodes_events(
        #[case] path: &str,
        #[case] since: Option<u64>,
        #[case] until: Option<u64>,
        #[case] follow: bool,
    ) {
        let want = EventsQuery {
            since,
            until,
            follow,
        };
        assert_eq!(
            Request::decode("GET", path, b"").unwrap(),
            Request::Events(want)
        );
        // What the client sends, the daemon reads back.
        assert_eq!(
            Request::decode("GET", &want.path(), b"").unwrap(),
            Request::Events(want)
        );
    }

    #[rstest]
    #[case::unknown("/v1/events?tail=5", "tail=5")]
    #[case::not_a_number("/v1/events?since=yesterday", "since=yesterday")]
    #[case::relative("/v1/events?since=10m", "since=10m")]
    #[case::negative("/v1/events?since=-5", "since=-5")]
    #[case::empty("/v1/events?since=", "since=")]
    #[case::dot("/v1/events?since=5.", "since=5.")]
    #[case::too_precise("/v1/events?since=1.0000000001", "since=1.0000000001")]
    #[case::too_late("/v1/events?until=99999999999999", "until=99999999999999")]
    #[case::overflow("/v1/events?since=99999999999999999999999", "since=")]
    #[case::follow("/v1/events?follow=maybe", "follow=maybe")]
    #[case::backwards("/v1/events?since=20&until=10", "until is before since")]
    fn refuses_bad_event_queries(#[case] path: &str, #[case] named: &str) {
        let e = Request::decode("GET", path, b"").unwrap_err();
        assert_eq!(e.status(), 400, "{e}");
        assert!(e.to_string().contains(named), "{e}");
    }

    #[test]
    fn event_lines_read_back() {
        let e = Event {
            seq: 7,
            time: "2026-12-07T21:30:00.123456Z".into(),
            time_nano: 1,
            kind: EventType::Port,
            action: "publish".into(),
            actor: "c1".into(),
            network: Some("web".into()),
            container: Some("c1".into()),
            host: None,
            port: Some("80/tcp".into()),
            attributes: [("host".to_string(), "0.0.0.0:8080".to_string())].into(),
        };
        for line in [
            EventLine::Event(Box::new(e)),
            EventLine::Missed(EventsMissed { missed: 3 }),
        ] {
            let text = serde_json::to_string(&line).unwrap();
            assert_eq!(
                serde_json::from_str::<EventLine>(&text).unwrap(),
                line,
                "{text}"
            );
        }
        assert_eq!(
            serde_json::to_string(&EventType::ALL.map(EventType::as_str)).unwrap(),
            serde_json::to_string(&EventType::ALL).unwrap()
        );
        for (i, t) in EventType::ALL.iter().enumerate() {
            assert_eq!(t.index(), i);
        }
    }

    #[test]
    fn decodes_create() {
        let r = Request::decode(
            "POST",
            "/v1/networks",
            br#"{"Name":"web","Subnets":[{"Subnet":"10.9.0.0/24"}],"Internal":true}"#,
        )
        .unwrap();
        let Request::NetworkCreate(c) = r else {
            panic!("wrong request {r:?}")
        };
        assert_eq!(c.name, "web");
        assert!(c.internal);
        assert_eq!(c.subnets[0].subnet, Some("10.9.0.0/24".parse().unwrap()));
    }

    #[rstest]
    #[case("GET", "/v2/networks", b"", 404)]
    #[case("PUT", "/v1/networks", b"", 404)]
    #[case("POST", "/v1/networks", b"{", 400)]
    #[case("POST", "/v1/networks", br#"{"Name":"-bad"}"#, 400)]
    #[case("POST", "/v1/networks", br#"{"Name":"ok","Bogus":1}"#, 400)]
    #[case("POST", "/v1/networks", br#"{"Name":"ok","Driver":"weird"}"#, 400)]
    #[case("POST", "/v1/networks/web/connect", br#"{"Container":"a b"}"#, 400)]
    #[case("GET", "/v1/networks/..", b"", 400)]
    fn refuses_bad_requests(
        #[case] method: &str,
        #[case] path: &str,
        #[case] body: &[u8],
        #[case] status: u16,
    ) {
        let err = Request::decode(method, path, body).unwrap_err();
        assert_eq!(err.status(), status, "{err}");
    }

    #[rstest]
    #[case("POST", "/v1/containers/c/exited", br#"{"Id":"ab","ExitCode":256}"#)]
    #[case("POST", "/v1/containers/c/exited", br#"{"Id":"ab","ExitCode":-1}"#)]
    #[case("POST", "/v1/containers/c/exited", br#"{"Id":"not hex","ExitCode":0}"#)]
    #[case("POST", "/v1/containers/c/exited", br#"{"Id":"","ExitCode":0}"#)]
    #[case("POST", "/v1/containers/c/exited", br#"{"ExitCode":0}"#)]
    #[case("POST", "/v1/containers/-c/exited", br#"{"Id":"ab","ExitCode":0}"#)]
    #[case("GET", "/v1/containers/c/logs?tail=5", b"")]
    #[case("GET", "/v1/containers/c/logs?follow=maybe", b"")]
    #[case("POST", "/v1/containers", br#"{"Name":"c","Cmd":"not a list"}"#)]
    fn refuses_bad_container_requests(
        #[case] method: &str,
        #[case] path: &str,
        #[case] body: &[u8],
    ) {
        let err = Request::decode(method, path, body).unwrap_err();
        assert_eq!(err.status(), 400, "{err}");
    }

    #[test]
    fn decodes_container_requests() {
        assert_eq!(
            Request::decode(
                "POST",
                "/v1/containers/job/exited",
                br#"{"Id":"0aF9","ExitCode":3}"#
            )
            .unwrap(),
            Request::ContainerExited(
                "job".into(),
                ContainerExited {
                    id: "0aF9".into(),
                    exit_code: 3
                }
            )
        );
        for (path, follow) in [
            ("/v1/containers/job/logs", false),
            ("/v1/containers/job/logs?follow=1", true),
            ("/v1/containers/job/logs?follow", true),
            ("/v1/containers/job/logs?follow=false", false),
        ] {
            assert_eq!(
                Request::decode("GET", path, b"").unwrap(),
                Request::ContainerLogs {
                    name: "job".into(),
                    follow
                },
                "{path}"
            );
        }
        // `_prune` is no container name, so never taken for one.
        assert_eq!(
            Request::decode("POST", "/v1/containers/_prune", b"").unwrap(),
            Request::ContainerPrune
        );
        assert_eq!(
            Request::decode("POST", "/v1/networks/_prune", b"").unwrap(),
            Request::NetworkPrune
        );
        // A container may be called `prune`.
        assert!(matches!(
            Request::decode("POST", "/v1/containers/prune", br#"{"Pid":1}"#).unwrap(),
            Request::ContainerUpdate(n, _) if n == "prune"
        ));
    }

    #[rstest]
    #[case("web", true)]
    #[case("web-1.prod_x", true)]
    #[case("", false)]
    #[case(".hidden", false)]
    #[case("a/b", false)]
    #[case("ümlaut", false)]
    fn names(#[case] name: &str, #[case] ok: bool) {
        assert_eq!(validate_name("network", name).is_ok(), ok);
    }

    #[test]
    fn name_too_long() {
        assert!(validate_name("network", &"a".repeat(64)).is_err());
        assert!(validate_name("network", &"a".repeat(63)).is_ok());
    }

    #[rstest]
    #[case("8080:80", None, 8080, 80, PortProto::Tcp, 1)]
    #[case("8080:80/udp", None, 8080, 80, PortProto::Udp, 1)]
    #[case(
        "127.0.0.1:5353:53/udp",
        Some("127.0.0.1"),
        5353,
        53,
        PortProto::Udp,
        1
    )]
    #[case("[::1]:8080:80/tcp", Some("::1"), 8080, 80, PortProto::Tcp, 1)]
    #[case("8000-8010:80-90", None, 8000, 80, PortProto::Tcp, 11)]
    #[case("80", None, 0, 80, PortProto::Tcp, 1)]
    #[case("53/udp", None, 0, 53, PortProto::Udp, 1)]
    #[case("80-82", None, 0, 80, PortProto::Tcp, 3)]
    #[case("127.0.0.1::80", Some("127.0.0.1"), 0, 80, PortProto::Tcp, 1)]
    fn parses_port_specs(
        #[case] spec: &str,
        #[case] ip: Option<&str>,
        #[case] host: u16,
        #[case] container: u16,
        #[case] proto: PortProto,
        #[case] count: usize,
    ) {
        let m = parse_port_spec(spec).unwrap();
        assert_eq!(m.len(), count);
        assert_eq!(m[0].host_ip, ip.map(|i| i.parse().unwrap()));
        assert_eq!((m[0].host_port, m[0].container_port), (host, container));
        assert_eq!(m[0].proto, proto);
        let last = m[count - 1];
        // Host port 0 (picked at bind time) stays 0 over a range.
        let host_step = if host == 0 { 0 } else { count as u16 - 1 };
        assert_eq!(
            (last.host_port - host, last.container_port - container),
            (host_step, count as u16 - 1)
        );
    }

    #[rstest]
    #[case("0:80")]
    #[case("8080:0")]
    #[case("8080:80/sctp")]
    #[case("8000-8010:80-85")]
    #[case("9-1:9-1")]
    #[case("::1:8080:80")]
    #[case("host:8080:80")]
    #[case("1:2:3:4")]
    #[case("8080:70000")]
    #[case("1-2000:1-2000")]
    fn refuses_bad_port_specs(#[case] spec: &str) {
        let e = parse_port_spec(spec).unwrap_err();
        assert!(e.starts_with(&format!("-p {spec}:")), "{e}");
    }

    #[test]
    fn connect_carries_ports() {
        let r = Request::decode(
            "POST",
            "/v1/networks/web/connect",
            br#"{"Container":"c","Ports":[{"HostPort":8080,"ContainerPort":80,"Protocol":"udp"}]}"#,
        )
        .unwrap();
        let Request::NetworkConnect(_, c) = r else {
            panic!("wrong request {r:?}")
        };
        assert_eq!(
            c.ports,
            vec![PortMapping {
                host_ip: None,
                host_port: 8080,
                container_port: 80,
                proto: PortProto::Udp
            }]
        );
    }
}
