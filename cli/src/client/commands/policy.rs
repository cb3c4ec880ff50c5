//! `vswitch policy`: what may cross between networks and containers.

use std::io::Read;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand, ValueEnum};
use ipnet::IpNet;
use switch::policy::{EgressAction, Peer, Policy, PortRange, Rule};

use super::inspect::print_each;
use super::output::{print_json, Col, Format, Table};
use crate::api::{PolicyCreate, PolicyInspect};
use crate::client::Client;

#[derive(Debug, Subcommand)]
pub enum PolicyCmd {
    /// Let connections from one side reach the other (their replies pass
    /// too; nothing else does): across networks, routed by the gateways,
    /// or inside an isolated network.
    Allow(AllowArgs),
    /// Allow or deny what leaves a network through its NAT, by destination
    /// (the longest prefix wins; default allow).
    Egress(EgressArgs),
    /// Apply Kubernetes NetworkPolicies (networking.k8s.io/v1, YAML or
    /// JSON; the namespace is the vswitch network), all or none.
    Apply {
        /// The file, or - for standard input.
        #[arg(short = 'f', long = "filename", value_name = "FILE")]
        file: PathBuf,
    },
    /// List the policies.
    #[command(alias = "list")]
    Ls {
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
    },
    /// Show policies in detail (JSON).
    Inspect {
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Remove policies.
    Rm {
        #[arg(required = true)]
        names: Vec<String>,
    },
}

#[derive(Debug, Args)]
#[command(after_help = "\
Sides are NET (every container of the network), NET/CONTAINER, or \
NET/label=KEY=VALUE[,KEY=VALUE...] (containers carrying those labels, from \
`vswitch run --label`). Ports are N, N-M, N/udp or N-M/tcp (TCP unless \
said); without --port every port and protocol passes.

Example: vswitch policy allow --from front --to back/db --port 6379")]
pub struct AllowArgs {
    /// Who may open connections.
    #[arg(long, value_name = "NET[/CONTAINER|label=K=V]")]
    pub from: String,
    /// Who may be reached.
    #[arg(long, value_name = "NET[/CONTAINER|label=K=V]")]
    pub to: String,
    /// The ports reached; repeatable.
    #[arg(long = "port", value_name = "N[-M][/tcp|/udp]")]
    pub ports: Vec<String>,
    /// The policy's name (default: its two sides, as front-to-back-db).
    #[arg(long)]
    pub name: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Action {
    Allow,
    Deny,
}

#[derive(Debug, Args)]
pub struct EgressArgs {
    /// The network.
    pub network: String,
    pub action: Action,
    /// Destinations.
    pub cidr: IpNet,
    /// Destination ports; repeatable (without: every port and protocol).
    #[arg(long = "port", value_name = "N[-M][/tcp|/udp]")]
    pub ports: Vec<String>,
    /// The policy's name (default: NET-egress-ACTION-CIDR[-PORTS]).
    #[arg(long)]
    pub name: Option<String>,
}

fn ports(list: &[String]) -> Result<Vec<PortRange>> {
    list.iter()
        .map(|p| PortRange::parse(p).map_err(anyhow::Error::msg))
        .collect()
}

/// The policies `allow` and `egress` make, as the daemon takes them.
fn allow_policy(a: AllowArgs) -> Result<Policy> {
    let from = Peer::parse(&a.from).with_context(|| format!("--from {}", a.from))?;
    let to = Peer::parse(&a.to).with_context(|| format!("--to {}", a.to))?;
    let name = a.name.unwrap_or_else(|| Policy::allow_name(&from, &to));
    let policy = Policy {
        name,
        rule: Rule::Allow {
            from,
            to,
            ports: ports(&a.ports)?,
        },
    };
    policy.check()?;
    Ok(policy)
}

fn egress_policy(a: EgressArgs) -> Result<Policy> {
    let action = match a.action {
        Action::Allow => EgressAction::Allow,
        Action::Deny => EgressAction::Deny,
    };
    let ports = ports(&a.ports)?;
    let name = a
        .name
        .unwrap_or_else(|| Policy::egress_name(&a.network, action, &a.cidr, &ports));
    let policy = Policy {
        name,
        rule: Rule::Egress {
            network: a.network,
            action,
            cidr: a.cidr,
            ports,
        },
    };
    policy.check()?;
    Ok(policy)
}

async fn create(client: &Client, policies: Vec<Policy>, replace: bool) -> Result<()> {
    let made: Vec<PolicyInspect> = client
        .call(
            "POST",
            "/v1/policies",
            Some(&PolicyCreate { policies, replace }),
        )
        .await?;
    for p in made {
        println!("{}", p.name);
    }
    Ok(())
}

fn read_file(path: &PathBuf) -> Result<String> {
    // Refused past what the reader takes.
    let mut text = String::new();
    let limit = crate::k8s_policy::MAX_TEXT as u64;
    if path.as_os_str() == "-" {
        std::io::stdin()
            .take(limit + 1)
            .read_to_string(&mut text)
            .context("reading standard input")?;
    } else {
        std::fs::File::open(path)
            .and_then(|f| f.take(limit + 1).read_to_string(&mut text))
            .with_context(|| format!("reading {}", path.display()))?;
    }
    if text.len() as u64 > limit {
        bail!("{} is larger than 1 MiB", path.display());
    }
    Ok(text)
}

pub(super) async fn run(client: &Client, cmd: PolicyCmd) -> Result<()> {
    match cmd {
        PolicyCmd::Allow(a) => create(client, vec![allow_policy(a)?], false).await,
        PolicyCmd::Egress(a) => create(client, vec![egress_policy(a)?], false).await,
        PolicyCmd::Apply { file } => {
            let text = read_file(&file)?;
            let policies = crate::k8s_policy::parse(&text)
                .map_err(anyhow::Error::msg)
                .with_context(|| format!("{}", file.display()))?;
            // Kubernetes names are unique in a namespace; vswitch's in the
            // host: NETWORK.NAME, as `kubectl -n NETWORK` would say it.
            let policies: Vec<Policy> = policies
                .into_iter()
                .map(|mut p| {
                    if let Rule::Kubernetes(np) = &p.rule {
                        p.name = format!("{}.{}", np.network, p.name);
                    }
                    p
                })
                .collect();
            if policies.is_empty() {
                bail!("{} holds no NetworkPolicy", file.display());
            }
            create(client, policies, true).await
        }
        PolicyCmd::Ls { format } => {
            let list: Vec<PolicyInspect> = client.get("/v1/policies").await?;
            if format == Format::Json {
                return print_json(&list);
            }
            const POLICIES: Table = Table {
                cols: &[
                    Col::Left(28),
                    Col::Left(14),
                    Col::Left(7),
                    Col::Right(8),
                    Col::Rest,
                ],
                sep: "  ",
            };
            POLICIES.print(&[&"NAME", &"KIND", &"SCOPE", &"DENIED", &"RULE"]);
            for p in &list {
                let waiting = if p.active {
                    ""
                } else {
                    "  (waits for its network)"
                };
                POLICIES.print(&[
                    &p.name,
                    &p.kind,
                    &p.scope,
                    &p.denied,
                    &format!("{}{waiting}", p.summary),
                ]);
            }
            Ok(())
        }
        PolicyCmd::Inspect { names } => {
            print_each::<PolicyInspect>(client, "/v1/policies", names).await
        }
        PolicyCmd::Rm { names } => {
            let mut errors = Vec::new();
            for n in names {
                match client.delete(&format!("/v1/policies/{n}")).await {
                    Ok(name) => println!("{name}"),
                    Err(e) => errors.push(format!("{e:#}")),
                }
            }
            if !errors.is_empty() {
                bail!("{}", errors.join("\n"));
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allow_names_itself_after_its_sides_and_refuses_bad_ports() {
        let p = allow_policy(AllowArgs {
            from: "front".into(),
            to: "back/db".into(),
            ports: vec!["6379".into()],
            name: None,
        })
        .unwrap();
        assert_eq!(p.name, "front-to-back-db");
        let bad = allow_policy(AllowArgs {
            from: "front".into(),
            to: "back/db".into(),
            ports: vec!["99999".into()],
            name: None,
        });
        assert!(bad.unwrap_err().to_string().contains("99999"));
        assert!(allow_policy(AllowArgs {
            from: "front/".into(),
            to: "back".into(),
            ports: vec![],
            name: None,
        })
        .is_err());
    }

    #[test]
    fn egress_refuses_host_bits() {
        let e = egress_policy(EgressArgs {
            network: "web".into(),
            action: Action::Deny,
            cidr: "10.0.0.1/8".parse().unwrap(),
            ports: vec![],
            name: None,
        });
        assert!(e.unwrap_err().to_string().contains("10.0.0.0/8"));
    }
}
