//! `vswitch network`: create, ls, inspect, rm, connect, disconnect and vtep.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use ipnet::IpNet;

use super::inspect::print_each;
use super::output::{print_json, short, Col, Format, Table};
use super::publish::Publish;
use crate::api::{self, Driver, SubnetSpec};
use crate::client::Client;

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
    /// Remove every network no container uses (no endpoint on any host,
    /// not named by an exited container); prints their names.
    Prune,
    /// Connect a container (a network namespace) to a network.
    Connect(ConnectArgs),
    /// Disconnect a container from a network.
    Disconnect { network: String, container: String },
    /// Admit, remove or list foreign VXLAN VTEPs (e.g. a kernel vxlan device) of an overlay.
    #[command(subcommand)]
    Vtep(VtepCmd),
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
    /// A label of the container, which policies select by (when the
    /// container is new); repeatable.
    #[arg(long = "label", value_name = "KEY=VALUE")]
    pub labels: Vec<String>,
    #[command(flatten)]
    pub publish: Publish,
    pub network: String,
    pub container: String,
}

pub(super) fn key_values(
    what: &str,
    items: &[String],
    need_value: bool,
) -> Result<BTreeMap<String, String>> {
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

pub(super) async fn run(client: &Client, cmd: NetworkCmd) -> Result<()> {
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
            let list: Vec<api::NetworkSummary> = client.get("/v1/networks").await?;
            if format == Format::Json {
                return print_json(&list);
            }
            if quiet {
                for n in &list {
                    println!("{}", short(&n.id));
                }
                return Ok(());
            }
            const NETWORKS: Table = Table {
                cols: &[Col::Left(14), Col::Left(24), Col::Left(10), Col::Rest],
                sep: "",
            };
            NETWORKS.print(&[&"NETWORK ID", &"NAME", &"DRIVER", &"SCOPE"]);
            for n in &list {
                NETWORKS.print(&[&short(&n.id), &n.name, &n.driver.as_str(), &n.scope]);
            }
        }
        NetworkCmd::Inspect { names } => {
            print_each::<api::NetworkInspect>(client, "/v1/networks", names).await?;
        }
        NetworkCmd::Rm { names } => {
            let mut errors = Vec::new();
            for n in names {
                match client.delete(&format!("/v1/networks/{n}")).await {
                    Ok(name) => println!("{name}"),
                    Err(e) => errors.push(format!("{e:#}")),
                }
            }
            if !errors.is_empty() {
                bail!("{}", errors.join("\n"));
            }
        }
        NetworkCmd::Prune => {
            let pruned: api::NetworksPruned = client
                .call("POST", "/v1/networks/_prune", None::<&()>)
                .await?;
            if !pruned.deleted.is_empty() {
                println!("Deleted Networks:");
                for n in &pruned.deleted {
                    println!("{n}");
                }
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
                ports: a.publish.mappings()?,
                labels: key_values("--label", &a.labels, true)?,
            };
            connect(client, &a.network, &req).await?;
        }
        NetworkCmd::Vtep(cmd) => match cmd {
            VtepCmd::Add { network, addr } => vtep(client, "POST", &network, addr).await?,
            VtepCmd::Rm { network, addr } => vtep(client, "DELETE", &network, addr).await?,
            VtepCmd::Ls { network } => {
                let list: Vec<String> =
                    client.get(&format!("/v1/networks/{network}/vteps")).await?;
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

/// `POST /v1/networks/NETWORK/connect`: `network connect`, and `run` on a
/// bridge or an overlay.
pub(super) async fn connect(client: &Client, network: &str, req: &api::Connect) -> Result<()> {
    let _: api::ContainerInspect = client
        .call(
            "POST",
            &format!("/v1/networks/{network}/connect"),
            Some(req),
        )
        .await?;
    Ok(())
}

/// Admits (`POST`) or removes (`DELETE`) a VTEP of `network`.
async fn vtep(client: &Client, method: &str, network: &str, addr: String) -> Result<()> {
    let _: String = client
        .call(
            method,
            &format!("/v1/networks/{network}/vteps"),
            Some(&api::Vtep { address: addr }),
        )
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::commands::{Cli, Command};
    use clap::Parser;

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
