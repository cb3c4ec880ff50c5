//! `vswitch` subcommands, shaped like `docker network` and `docker run`.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::process::Stdio;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use ipnet::IpNet;

use super::Client;
use crate::api::{self, Driver, SubnetSpec};
use crate::sandbox;

/// The `vswitch` command line.
#[derive(Debug, Parser)]
#[command(
    name = "vswitch",
    version,
    about = "Drive vswitchd, the userspace virtual switch for containers"
)]
pub struct Cli {
    /// The daemon's socket, as unix://PATH (default: VSWITCH_HOST, then
    /// /run/vswitch/vswitchd.sock, or $XDG_RUNTIME_DIR/vswitch/vswitchd.sock rootless).
    #[arg(long, global = true, value_name = "unix://PATH")]
    pub host: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Manage networks.
    #[command(subcommand)]
    Network(NetworkCmd),
    /// Run a command in a new sandbox (a network namespace) on a network.
    Run(RunArgs),
    /// Stop what `run` started, disconnect it and free its addresses.
    Rm {
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// List a container's published ports, as `docker container port`.
    Port {
        container: String,
        /// Only this port: PORT or PORT/PROTO.
        port: Option<String>,
    },
    /// Show a container's endpoints, addresses and MACs.
    Inspect {
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Per-port packets, bytes and drops.
    Stats {
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[arg(long, value_enum)]
        format: Option<Format>,
    },
    /// Join the cluster through one or more members (IP or IP:PORT).
    JoinCluster {
        #[arg(required = true, value_name = "PEER_ADDR")]
        peers: Vec<String>,
    },
    /// Leave the cluster.
    LeaveCluster,
    /// Cluster IPAM.
    #[command(subcommand)]
    Ipam(IpamCmd),
    /// Cluster members: name, address, state, networks.
    Members {
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
    },
    /// A self-contained tour on real namespaces; cleans up after itself.
    Demo {
        /// The vswitchd binary to start (default: next to this one).
        #[arg(long, value_name = "PATH")]
        vswitchd: Option<PathBuf>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Table,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum NetworkCmd {
    /// Create a network.
    Create(CreateArgs),
    /// List networks.
    #[command(alias = "list")]
    Ls {
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
        /// Only names.
        #[arg(short, long)]
        quiet: bool,
    },
    /// Show networks in detail (JSON, Docker's field names).
    Inspect {
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Remove networks.
    #[command(alias = "remove")]
    Rm {
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Connect a container (a network namespace) to a network.
    Connect(ConnectArgs),
    /// Disconnect a container from a network.
    Disconnect { network: String, container: String },
    /// Admit, remove or list foreign VXLAN VTEPs (e.g. a kernel vxlan device) of an overlay.
    #[command(subcommand)]
    Vtep(VtepCmd),
}

#[derive(Debug, Subcommand)]
pub enum IpamCmd {
    /// Take back a dead host's overlay address ranges now, without waiting
    /// for the quarantine. Only for a host known to be gone for good.
    Reclaim {
        #[arg(value_name = "HOST")]
        node: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum VtepCmd {
    /// Admit a VTEP: it receives the network's broadcasts and its MACs are learned.
    Add { network: String, addr: String },
    /// Remove an admitted VTEP.
    Rm { network: String, addr: String },
    /// List admitted VTEPs.
    Ls { network: String },
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    #[arg(long, short = 'd', default_value = "bridge")]
    pub driver: Driver,
    /// Subnet in CIDR form; repeatable (one IPv4, one IPv6).
    #[arg(long, value_name = "CIDR")]
    pub subnet: Vec<IpNet>,
    /// Gateway of the subnet given at the same position.
    #[arg(long, value_name = "IP")]
    pub gateway: Vec<IpAddr>,
    /// Allocate dynamic addresses from this sub-range of the subnet at the same position.
    #[arg(long, value_name = "CIDR")]
    pub ip_range: Vec<IpNet>,
    /// Give the network IPv6 too.
    #[arg(long)]
    pub ipv6: bool,
    /// No route beyond the network, no DNS forwarding.
    #[arg(long)]
    pub internal: bool,
    #[arg(long)]
    pub mtu: Option<u32>,
    /// Driver options: encrypted, transport=quic.
    #[arg(long = "opt", short = 'o', value_name = "KEY[=VALUE]")]
    pub opts: Vec<String>,
    #[arg(long = "label", value_name = "KEY=VALUE")]
    pub labels: Vec<String>,
    pub name: String,
}

#[derive(Debug, Args)]
pub struct ConnectArgs {
    #[arg(long)]
    pub ip: Option<Ipv4Addr>,
    #[arg(long)]
    pub ip6: Option<Ipv6Addr>,
    #[arg(long)]
    pub mac: Option<String>,
    /// Another DNS name for the container on this network; repeatable.
    #[arg(long = "alias", value_name = "NAME")]
    pub aliases: Vec<String>,
    /// The container's network namespace (/run/netns/NAME or /proc/PID/ns/net).
    #[arg(long, value_name = "PATH")]
    pub netns: Option<PathBuf>,
    /// Publish a container port on the host; repeatable, ranges allowed;
    /// without HOSTPORT (`-p 80`, `-p IP::80`) a free host port is picked.
    #[arg(
        short = 'p',
        long = "publish",
        value_name = "[HOSTIP:]HOSTPORT:PORT[/tcp|/udp]"
    )]
    pub publish: Vec<String>,
    pub network: String,
    pub container: String,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Run in the background and print the container's id.
    #[arg(short = 'd', long)]
    pub detach: bool,
    /// Remove the container when the command exits (foreground only).
    #[arg(long)]
    pub rm: bool,
    #[arg(long)]
    pub name: String,
    #[arg(long)]
    pub network: String,
    #[arg(long)]
    pub ip: Option<Ipv4Addr>,
    #[arg(long)]
    pub ip6: Option<Ipv6Addr>,
    #[arg(long = "alias", value_name = "NAME")]
    pub aliases: Vec<String>,
    /// Publish a container port on the host; repeatable, ranges allowed;
    /// without HOSTPORT (`-p 80`, `-p IP::80`) a free host port is picked.
    #[arg(
        short = 'p',
        long = "publish",
        value_name = "[HOSTIP:]HOSTPORT:PORT[/tcp|/udp]"
    )]
    pub publish: Vec<String>,
    /// The command and its arguments.
    #[arg(last = true, required = true)]
    pub cmd: Vec<String>,
}

fn key_values(what: &str, items: &[String], need_value: bool) -> Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for item in items {
        let (k, v) = match item.split_once('=') {
            Some((k, v)) => (k, v),
            None if !need_value => (item.as_str(), "true"),
            None => bail!("{what} `{item}` must look like KEY=VALUE"),
        };
        if k.is_empty() {
            bail!("{what} `{item}` has an empty key");
        }
        out.insert(k.to_string(), v.to_string());
    }
    Ok(out)
}

/// Pairs `--gateway`/`--ip-range` with the `--subnet` of their family, as
/// Docker does.
fn subnet_specs(a: &CreateArgs) -> Result<Vec<SubnetSpec>> {
    let mut specs: Vec<SubnetSpec> = a
        .subnet
        .iter()
        .map(|s| SubnetSpec {
            subnet: Some(s.trunc()),
            gateway: None,
            ip_range: None,
        })
        .collect();
    for (i, s) in a.subnet.iter().enumerate() {
        if s.trunc() != *s {
            bail!(
                "--subnet {s} has host bits set; did you mean {}?",
                s.trunc()
            );
        }
        if a.subnet[..i].iter().any(|o| o.contains(s) || s.contains(o)) {
            bail!("--subnet {s} overlaps another --subnet of the same network");
        }
    }
    for g in &a.gateway {
        let spec = specs
            .iter_mut()
            .find(|sp| sp.subnet.is_some_and(|n| n.contains(g)))
            .with_context(|| format!("--gateway {g} is in none of the --subnet ranges"))?;
        if spec.gateway.replace(*g).is_some() {
            bail!(
                "two --gateway values for --subnet {}",
                spec.subnet.expect("set")
            );
        }
    }
    for r in &a.ip_range {
        let spec = specs
            .iter_mut()
            .find(|sp| sp.subnet.is_some_and(|n| n.contains(r)))
            .with_context(|| format!("--ip-range {r} is inside none of the --subnet ranges"))?;
        if spec.ip_range.replace(*r).is_some() {
            bail!(
                "two --ip-range values for --subnet {}",
                spec.subnet.expect("set")
            );
        }
    }
    Ok(specs)
}

/// Every `-p` spec, expanded.
fn port_mappings(specs: &[String]) -> Result<Vec<api::PortMapping>> {
    let mut out = Vec::new();
    for s in specs {
        out.extend(api::parse_port_spec(s).map_err(anyhow::Error::msg)?);
    }
    if out.len() > api::MAX_PORT_MAPPINGS {
        bail!(
            "{} ports asked for; at most {} may be published at once",
            out.len(),
            api::MAX_PORT_MAPPINGS
        );
    }
    Ok(out)
}

/// `docker container port` lines: `80/tcp -> 0.0.0.0:8080`.
fn port_lines(c: &api::ContainerInspect, only: Option<&str>) -> Vec<String> {
    let mut lines = Vec::new();
    for (key, bindings) in &c.ports {
        let matches = match only {
            None => true,
            Some(o) if o.contains('/') => o == key,
            Some(o) => key.split('/').next() == Some(o),
        };
        if !matches {
            continue;
        }
        for b in bindings {
            let host = match b.host_ip.parse::<IpAddr>() {
                Ok(IpAddr::V6(ip)) => format!("[{ip}]:{}", b.host_port),
                _ => format!("{}:{}", b.host_ip, b.host_port),
            };
            lines.push(if only.is_some() {
                host
            } else {
                format!("{key} -> {host}")
            });
        }
    }
    lines
}

fn print_json<T: serde::Serialize>(v: &T) -> Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, v)?;
    writeln!(out)?;
    Ok(())
}

fn short(id: &str) -> &str {
    &id[..id.len().min(12)]
}

/// Runs a parsed command line; returns the process exit code.
pub async fn run(cli: Cli) -> Result<i32> {
    if let Command::Demo { vswitchd } = cli.command {
        return super::demo::run(vswitchd).await.map(|()| 0);
    }
    let client = Client::new(super::resolve_socket(cli.host.as_deref())?);
    match cli.command {
        Command::Network(cmd) => network(&client, cmd).await.map(|()| 0),
        Command::Run(args) => run_container(&client, args).await,
        Command::Rm { names } => {
            let mut failed = false;
            for n in names {
                match client
                    .call::<String>("DELETE", &format!("/v1/containers/{n}"), None::<&()>)
                    .await
                {
                    Ok(name) => println!("{name}"),
                    Err(e) => {
                        eprintln!("Error: {e:#}");
                        failed = true;
                    }
                }
            }
            Ok(i32::from(failed))
        }
        Command::Port { container, port } => {
            let c: api::ContainerInspect = client
                .call("GET", &format!("/v1/containers/{container}"), None::<&()>)
                .await?;
            let lines = port_lines(&c, port.as_deref());
            if lines.is_empty() && port.is_some() {
                bail!(
                    "no public port `{}` published for container `{container}`",
                    port.unwrap_or_default()
                );
            }
            for l in lines {
                println!("{l}");
            }
            Ok(0)
        }
        Command::Inspect { names } => {
            let mut all = Vec::new();
            for n in names {
                let c: api::ContainerInspect = client
                    .call("GET", &format!("/v1/containers/{n}"), None::<&()>)
                    .await?;
                all.push(c);
            }
            print_json(&all).map(|()| 0)
        }
        Command::Stats { json, format } => {
            let s: api::Stats = client.call("GET", "/v1/stats", None::<&()>).await?;
            if json || format == Some(Format::Json) {
                print_json(&s)?;
            } else {
                println!(
                    "{:<16} {:<20} {:<8} {:>10} {:>12} {:>10} {:>12} {:>8}",
                    "NETWORK",
                    "CONTAINER",
                    "IFACE",
                    "RX PKTS",
                    "RX BYTES",
                    "TX PKTS",
                    "TX BYTES",
                    "DROPS"
                );
                for p in &s.ports {
                    println!(
                        "{:<16} {:<20} {:<8} {:>10} {:>12} {:>10} {:>12} {:>8}",
                        p.network,
                        p.container,
                        p.interface,
                        p.rx_packets,
                        p.rx_bytes,
                        p.tx_packets,
                        p.tx_bytes,
                        p.drops + p.tx_drops
                    );
                }
                for (net, c) in &s.nat {
                    let get = |k: &str| c.get(k).copied().unwrap_or(0);
                    println!(
                        "nat {net}: tcp inbound={} egress={} active={} refused={}; udp flows={} active={}; icmp flows={}; egress denied={}",
                        get("TcpInbound"),
                        get("TcpEgress"),
                        get("TcpActive"),
                        get("TcpRefused"),
                        get("UdpFlows"),
                        get("UdpActive"),
                        get("IcmpFlows"),
                        get("EgressDenied")
                    );
                }
                if s.drops.values().any(|v| *v > 0) {
                    let d: Vec<String> = s
                        .drops
                        .iter()
                        .filter(|(_, v)| **v > 0)
                        .map(|(k, v)| format!("{k}={v}"))
                        .collect();
                    println!("switch drops: {}", d.join(" "));
                }
            }
            Ok(0)
        }
        Command::JoinCluster { peers } => {
            let _: Vec<String> = client
                .call("POST", "/v1/cluster/join", Some(&api::Join { peers }))
                .await?;
            Ok(0)
        }
        Command::Ipam(IpamCmd::Reclaim { node }) => {
            let out: BTreeMap<String, String> = client
                .call(
                    "POST",
                    "/v1/ipam/reclaim",
                    Some(&api::Reclaim { host: node }),
                )
                .await?;
            for (net, heir) in out {
                println!("{net}: ranges now owned by {heir}");
            }
            Ok(0)
        }
        Command::LeaveCluster => {
            let _: String = client
                .call("POST", "/v1/cluster/leave", None::<&()>)
                .await?;
            Ok(0)
        }
        Command::Members { format } => {
            let list: Vec<api::Member> = client
                .call("GET", "/v1/cluster/members", None::<&()>)
                .await?;
            if format == Format::Json {
                print_json(&list)?;
            } else {
                println!("{:<20} {:<24} {:<8} NETWORKS", "NAME", "ADDRESS", "STATE");
                for m in &list {
                    let name = if m.local {
                        format!("{} *", m.name)
                    } else {
                        m.name.clone()
                    };
                    println!(
                        "{:<20} {:<24} {:<8} {}",
                        name,
                        m.address,
                        m.state,
                        m.networks.join(",")
                    );
                }
            }
            Ok(0)
        }
        Command::Demo { .. } => unreachable!("handled above"),
    }
}

async fn network(client: &Client, cmd: NetworkCmd) -> Result<()> {
    match cmd {
        NetworkCmd::Create(a) => {
            let req = api::NetworkCreate {
                name: a.name.clone(),
                driver: a.driver,
                subnets: subnet_specs(&a)?,
                ipv6: a.ipv6,
                internal: a.internal,
                mtu: a.mtu,
                options: key_values("--opt", &a.opts, false)?,
                labels: key_values("--label", &a.labels, true)?,
            };
            api::validate_name("network", &req.name).map_err(anyhow::Error::msg)?;
            let n: api::NetworkInspect = client.call("POST", "/v1/networks", Some(&req)).await?;
            println!("{}", n.id);
        }
        NetworkCmd::Ls { format, quiet } => {
            let list: Vec<api::NetworkSummary> =
                client.call("GET", "/v1/networks", None::<&()>).await?;
            if format == Format::Json {
                return print_json(&list);
            }
            if quiet {
                for n in &list {
                    println!("{}", short(&n.id));
                }
                return Ok(());
            }
            println!("{:<14}{:<24}{:<10}SCOPE", "NETWORK ID", "NAME", "DRIVER");
            for n in &list {
                println!(
                    "{:<14}{:<24}{:<10}{}",
                    short(&n.id),
                    n.name,
                    n.driver.as_str(),
                    n.scope
                );
            }
        }
        NetworkCmd::Inspect { names } => {
            let mut all = Vec::new();
            for n in names {
                let i: api::NetworkInspect = client
                    .call("GET", &format!("/v1/networks/{n}"), None::<&()>)
                    .await?;
                all.push(i);
            }
            print_json(&all)?;
        }
        NetworkCmd::Rm { names } => {
            let mut errors = Vec::new();
            for n in names {
                match client
                    .call::<String>("DELETE", &format!("/v1/networks/{n}"), None::<&()>)
                    .await
                {
                    Ok(name) => println!("{name}"),
                    Err(e) => errors.push(format!("{e:#}")),
                }
            }
            if !errors.is_empty() {
                bail!("{}", errors.join("\n"));
            }
        }
        NetworkCmd::Connect(a) => {
            let netns = match a.netns {
                Some(p) => Some(
                    std::path::absolute(&p).with_context(|| format!("--netns {}", p.display()))?,
                ),
                None => None,
            };
            let req = api::Connect {
                container: a.container,
                netns,
                ip: a.ip,
                ip6: a.ip6,
                mac: a.mac,
                aliases: a.aliases,
                ports: port_mappings(&a.publish)?,
            };
            let _: api::ContainerInspect = client
                .call(
                    "POST",
                    &format!("/v1/networks/{}/connect", a.network),
                    Some(&req),
                )
                .await?;
        }
        NetworkCmd::Vtep(cmd) => match cmd {
            VtepCmd::Add { network, addr } => {
                let _: String = client
                    .call(
                        "POST",
                        &format!("/v1/networks/{network}/vteps"),
                        Some(&api::Vtep { address: addr }),
                    )
                    .await?;
            }
            VtepCmd::Rm { network, addr } => {
                let _: String = client
                    .call(
                        "DELETE",
                        &format!("/v1/networks/{network}/vteps"),
                        Some(&api::Vtep { address: addr }),
                    )
                    .await?;
            }
            VtepCmd::Ls { network } => {
                let list: Vec<String> = client
                    .call("GET", &format!("/v1/networks/{network}/vteps"), None::<&()>)
                    .await?;
                for v in list {
                    println!("{v}");
                }
            }
        },
        NetworkCmd::Disconnect { network, container } => {
            let _: String = client
                .call(
                    "POST",
                    &format!("/v1/networks/{network}/disconnect"),
                    Some(&api::Disconnect { container }),
                )
                .await?;
        }
    }
    Ok(())
}

/// With a rootless daemon, make this process part of its user and mount
/// namespaces, where its sandboxes live (and where this user may make,
/// configure and enter them). The client is still single-threaded here: its
/// runtime runs on this thread, and nothing so far started another.
async fn join_if_rootless(client: &Client) -> Result<()> {
    let info = client.info().await?;
    if !info.rootless {
        return Ok(());
    }
    let (Some(pid), Some(dir)) = (info.pause_pid, info.runtime_dir) else {
        bail!("the rootless vswitchd did not say where its namespaces are; upgrade vswitch to the daemon's version");
    };
    let layout = crate::rootless::Layout::new(dir);
    sandbox::use_dirs(layout.sandbox_dirs()).map_err(|e| anyhow::anyhow!("{e}"))?;
    crate::rootless::join(pid)
        .map_err(|e| anyhow::anyhow!("{e}"))
        .context("joining the rootless vswitchd's namespaces")
}

/// `vswitch run`: make the sandbox, connect it, run the command in it.
async fn run_container(client: &Client, a: RunArgs) -> Result<i32> {
    api::validate_name("container", &a.name).map_err(anyhow::Error::msg)?;
    for alias in &a.aliases {
        api::validate_name("alias", alias).map_err(anyhow::Error::msg)?;
    }
    let ports = port_mappings(&a.publish)?;
    if a.detach && a.rm {
        bail!("--rm and -d do not go together: a detached container stays until `vswitch rm`");
    }
    let net: api::NetworkInspect = client
        .call("GET", &format!("/v1/networks/{}", a.network), None::<&()>)
        .await?;
    let host_mode = net.driver == Driver::Host;
    if host_mode && (a.ip.is_some() || a.ip6.is_some() || !a.aliases.is_empty()) {
        bail!("--ip, --ip6 and --alias do not apply to the host network");
    }
    if !ports.is_empty() && !matches!(net.driver, Driver::Bridge) {
        bail!(
            "-p needs a bridge network; `{}` uses the {} driver",
            a.network,
            net.driver.as_str()
        );
    }
    // Refuse early, before making a namespace, if the name is taken.
    let (status, _) = client
        .raw("GET", &format!("/v1/containers/{}", a.name), Vec::new())
        .await?;
    if status == 200 {
        bail!(
            "container `{}` already exists; remove it with `vswitch rm {}` or pick another --name",
            a.name,
            a.name
        );
    }

    if !host_mode {
        join_if_rootless(client).await?;
    }
    let netns = if host_mode {
        None
    } else {
        Some(sandbox::create_netns(&a.name).map_err(|e| anyhow::anyhow!("{e}"))?)
    };
    let cleanup_ns = |name: &str| {
        if !host_mode {
            let _ = sandbox::delete_netns(name);
        }
    };
    let reg = api::ContainerCreate {
        name: a.name.clone(),
        netns: netns.clone(),
        owns_netns: netns.is_some(),
        pid: None,
    };
    if let Err(e) = client
        .call::<api::ContainerInspect>("POST", "/v1/containers", Some(&reg))
        .await
    {
        cleanup_ns(&a.name);
        return Err(e);
    }
    // From here on, `vswitch rm` undoes everything.
    let setup = async {
        match net.driver {
            Driver::Host => {}
            Driver::None => {
                sandbox::loopback_up(&a.name).map_err(|e| anyhow::anyhow!("{e}"))?;
            }
            Driver::Bridge | Driver::Overlay => {
                let req = api::Connect {
                    container: a.name.clone(),
                    netns: None,
                    ip: a.ip,
                    ip6: a.ip6,
                    mac: None,
                    aliases: a.aliases.clone(),
                    ports: ports.clone(),
                };
                let _: api::ContainerInspect = client
                    .call(
                        "POST",
                        &format!("/v1/networks/{}/connect", a.network),
                        Some(&req),
                    )
                    .await?;
                let servers: Vec<IpAddr> =
                    net.ipam.config.iter().filter_map(|c| c.gateway).collect();
                sandbox::write_resolv_conf(&a.name, &servers)
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
            }
        }
        let mut cmd = if host_mode {
            let mut c = std::process::Command::new(&a.cmd[0]);
            c.args(&a.cmd[1..]);
            c
        } else {
            sandbox::command_in_netns(&a.name, &a.cmd).map_err(|e| anyhow::anyhow!("{e}"))?
        };
        if a.detach {
            use std::os::unix::process::CommandExt;
            cmd.stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            cmd.process_group(0);
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("starting `{}`", a.cmd[0]))?;
        let _: api::ContainerInspect = client
            .call(
                "POST",
                &format!("/v1/containers/{}", a.name),
                Some(&api::ContainerUpdate {
                    pid: Some(child.id()),
                }),
            )
            .await?;
        anyhow::Ok(child)
    };
    let mut child = match setup.await {
        Ok(c) => c,
        Err(e) => {
            let _ = client
                .raw("DELETE", &format!("/v1/containers/{}", a.name), Vec::new())
                .await;
            cleanup_ns(&a.name);
            return Err(e);
        }
    };
    if a.detach {
        let c: api::ContainerInspect = client
            .call("GET", &format!("/v1/containers/{}", a.name), None::<&()>)
            .await?;
        println!("{}", c.id);
        return Ok(0);
    }
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await?
        .context("waiting for the command")?;
    // The process is gone: forget its pid so `rm` does not signal a reused one.
    let _ = client
        .raw(
            "POST",
            &format!("/v1/containers/{}", a.name),
            serde_json::to_vec(&api::ContainerUpdate { pid: None })?,
        )
        .await;
    if a.rm {
        let _ = client
            .raw("DELETE", &format!("/v1/containers/{}", a.name), Vec::new())
            .await;
    }
    use std::os::unix::process::ExitStatusExt;
    Ok(status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    fn create(args: &[&str]) -> Result<Vec<SubnetSpec>> {
        let mut full = vec!["vswitch", "network", "create"];
        full.extend_from_slice(args);
        full.push("n");
        let cli = Cli::try_parse_from(full)?;
        let Command::Network(NetworkCmd::Create(a)) = cli.command else {
            panic!()
        };
        subnet_specs(&a)
    }

    #[test]
    fn pairs_gateways_with_subnets() {
        let s = create(&[
            "--subnet",
            "10.1.0.0/24",
            "--subnet",
            "fd00:1::/64",
            "--gateway",
            "fd00:1::1",
            "--gateway",
            "10.1.0.254",
            "--ip-range",
            "10.1.0.128/25",
            "--ipv6",
        ])
        .unwrap();
        assert_eq!(s[0].gateway, Some("10.1.0.254".parse().unwrap()));
        assert_eq!(s[0].ip_range, Some("10.1.0.128/25".parse().unwrap()));
        assert_eq!(s[1].gateway, Some("fd00:1::1".parse().unwrap()));
    }

    #[test]
    fn refuses_bad_create_flags() {
        assert!(create(&["--subnet", "10.1.0.1/24"]).is_err());
        assert!(create(&["--subnet", "10.1.0.0/24", "--gateway", "10.2.0.1"]).is_err());
        assert!(create(&["--subnet", "10.1.0.0/16", "--subnet", "10.1.2.0/24"]).is_err());
        assert!(create(&["--subnet", "nonsense"]).is_err());
        assert!(create(&["--driver", "weird"]).is_err());
    }

    #[test]
    fn labels_need_values() {
        assert!(key_values("--label", &["a".into()], true).is_err());
        assert_eq!(
            key_values("--opt", &["encrypted".into()], false).unwrap()["encrypted"],
            "true"
        );
    }
}
