//! Policies (`vswitch policy`): kept in the store, compiled against the
//! networks and endpoints they name ([`switch::policy::PolicyTable`]) and
//! put in force on every worker whenever one of them changes; the names
//! of containers a policy lets a network reach are added to that network's
//! DNS.
//!
//! [`Controller::sync_policies`] runs after every request and every
//! cluster event: it gathers the table's inputs (networks, local and remote
//! endpoints, containers' labels) and compiles only when they differ from
//! the last ones, so a request that changed nothing costs a comparison.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use switch::dns::DnsEntry;
use switch::policy::{EndpointInput, NetworkInput, Policy, PolicyTable, Rule};
use switch::MacAddr;

use super::ids::now_rfc3339;
use super::{internal, Controller};
use crate::api;
use crate::daemon::state::PolicyRecord;
use crate::daemon::ApiError;

/// The policies and the table in force.
#[derive(Debug, Default)]
pub(super) struct Policies {
    records: BTreeMap<String, PolicyRecord>,
    generation: u64,
    /// What the table in force was compiled from.
    inputs: Option<(Vec<NetworkInput>, Vec<EndpointInput>)>,
    /// The policies changed since: compile even if the inputs did not.
    stale: bool,
    table: Arc<PolicyTable>,
}

impl Policies {
    /// The policies as the store keeps them.
    pub(super) fn load(records: Vec<PolicyRecord>) -> Policies {
        Policies {
            records: records
                .into_iter()
                .map(|r| (r.policy.name.clone(), r))
                .collect(),
            stale: true,
            ..Policies::default()
        }
    }
}

/// Whether `--opt isolate` asks for an isolated network (`isolate`,
/// `isolate=true`; `isolate=false` or absent: not).
pub(crate) fn is_isolated(options: &BTreeMap<String, String>) -> Result<bool, ApiError> {
    match options.get("isolate").map(|v| v.to_ascii_lowercase()) {
        None => Ok(false),
        Some(v) if matches!(v.as_str(), "" | "true" | "1" | "yes") => Ok(true),
        Some(v) if matches!(v.as_str(), "false" | "0" | "no") => Ok(false),
        Some(v) => Err(ApiError::bad(format!(
            "--opt isolate={v}: say --opt isolate=true (containers reach each other only where a policy allows) or isolate=false"
        ))),
    }
}

fn kind(rule: &Rule) -> &'static str {
    match rule {
        Rule::Allow { .. } => "allow",
        Rule::Egress { .. } => "egress",
        Rule::Kubernetes(_) => "NetworkPolicy",
    }
}

/// A policy in a line, as the CLI would write it.
fn summary(p: &Policy) -> String {
    let ports = |ports: &[switch::policy::PortRange]| {
        ports
            .iter()
            .map(|p| format!(" --port {p}"))
            .collect::<String>()
    };
    match &p.rule {
        Rule::Allow {
            from,
            to,
            ports: pp,
        } => {
            format!("allow --from {from} --to {to}{}", ports(pp))
        }
        Rule::Egress {
            network,
            action,
            cidr,
            ports: pp,
        } => {
            let action = match action {
                switch::policy::EgressAction::Allow => "allow",
                switch::policy::EgressAction::Deny => "deny",
            };
            format!("egress {network} {action} {cidr}{}", ports(pp))
        }
        Rule::Kubernetes(np) => {
            let types: Vec<&str> = [
                np.ingress.as_ref().map(|_| "Ingress"),
                np.egress.as_ref().map(|_| "Egress"),
            ]
            .into_iter()
            .flatten()
            .collect();
            let rules = np
                .ingress
                .iter()
                .chain(&np.egress)
                .map(Vec::len)
                .sum::<usize>();
            format!(
                "NetworkPolicy in {}: {} ({} rules)",
                np.network,
                types.join("+"),
                rules
            )
        }
    }
}

impl Controller {
    /// `POST /v1/policies`: checks every policy against the networks, then
    /// stores and puts them in force together, or none of them.
    pub(super) fn policy_create(
        &mut self,
        req: api::PolicyCreate,
    ) -> Result<Vec<api::PolicyInspect>, ApiError> {
        let mut put = Vec::new();
        let names: Vec<String> = req.policies.iter().map(|p| p.name.clone()).collect();
        for p in req.policies {
            p.check().map_err(|e| ApiError::bad(e.to_string()))?;
            for net in p.networks() {
                let n = self.network(net)?;
                if n.id.is_none() {
                    return Err(ApiError::bad(format!(
                        "network `{net}` does not switch frames (driver {}); policies apply to bridge and overlay networks",
                        n.record.driver.as_str()
                    )));
                }
            }
            match self.policies.records.get(&p.name) {
                Some(old) if old.policy == p => continue,
                Some(_) if !req.replace => {
                    return Err(ApiError::conflict(format!(
                        "policy `{}` already exists with another rule; remove it with `vswitch policy rm {}` or pick another --name",
                        p.name, p.name
                    )))
                }
                Some(old) if std::mem::discriminant(&old.policy.rule) != std::mem::discriminant(&p.rule) => {
                    return Err(ApiError::conflict(format!(
                        "policy `{}` exists and is not a NetworkPolicy; `vswitch policy rm {}` first",
                        p.name, p.name
                    )))
                }
                _ => {}
            }
            put.push(PolicyRecord {
                policy: p,
                created: now_rfc3339(),
            });
        }
        if !put.is_empty() {
            self.store.put_policies(&put, &[]).map_err(internal)?;
            for r in put {
                self.policies.records.insert(r.policy.name.clone(), r);
            }
            self.policies.stale = true;
            self.sync_policies();
        }
        names.iter().map(|n| self.policy_inspect(n)).collect()
    }

    /// `GET /v1/policies`.
    pub(super) fn policy_list(&self) -> Result<Vec<api::PolicyInspect>, ApiError> {
        let denied = self.policy_denials();
        Ok(self
            .policies
            .records
            .values()
            .map(|r| self.policy_view(r, &denied))
            .collect())
    }

    /// `GET /v1/policies/NAME`.
    pub(super) fn policy_inspect(&self, name: &str) -> Result<api::PolicyInspect, ApiError> {
        let r = self
            .policies
            .records
            .get(name)
            .ok_or_else(|| no_policy(name))?;
        Ok(self.policy_view(r, &self.policy_denials()))
    }

    /// `DELETE /v1/policies/NAME`.
    pub(super) fn policy_remove(&mut self, name: &str) -> Result<(), ApiError> {
        if !self.policies.records.contains_key(name) {
            return Err(no_policy(name));
        }
        self.store.put_policies(&[], &[name]).map_err(internal)?;
        self.policies.records.remove(name);
        self.policies.stale = true;
        self.sync_policies();
        Ok(())
    }

    /// Denials by policy name, every worker's, from the datapath.
    fn policy_denials(&self) -> BTreeMap<String, u64> {
        self.datapath
            .stats()
            .map(|s| s.policy.denied)
            .unwrap_or_default()
    }

    fn policy_view(&self, r: &PolicyRecord, denied: &BTreeMap<String, u64>) -> api::PolicyInspect {
        let networks: Vec<String> = r.policy.networks().into_iter().map(String::from).collect();
        api::PolicyInspect {
            name: r.policy.name.clone(),
            kind: kind(&r.policy.rule).into(),
            active: networks.iter().all(|n| self.networks.contains_key(n)),
            networks,
            summary: summary(&r.policy),
            created: r.created.clone(),
            denied: denied.get(&r.policy.name).copied().unwrap_or(0),
            rule: r.policy.rule.clone(),
        }
    }

    /// The names of the policies naming network `name`, for `network
    /// inspect`.
    pub(super) fn policies_of_network(&self, name: &str) -> Vec<String> {
        self.policies
            .records
            .values()
            .filter(|r| r.policy.networks().contains(&name))
            .map(|r| r.policy.name.clone())
            .collect()
    }

    /// Compiles the policies against the networks and endpoints as they
    /// are now, when either changed, and puts the table in force: on every
    /// worker, and in each network's DNS (the names a policy lets it
    /// reach).
    pub fn sync_policies(&mut self) {
        let (networks, endpoints, dns) = self.policy_inputs();
        let same = self
            .policies
            .inputs
            .as_ref()
            .is_some_and(|(n, e)| *n == networks && *e == endpoints);
        if same && !self.policies.stale {
            return;
        }
        self.policies.generation += 1;
        let policies: Vec<Policy> = self
            .policies
            .records
            .values()
            .map(|r| r.policy.clone())
            .collect();
        let table = Arc::new(PolicyTable::compile(
            self.policies.generation,
            &policies,
            &networks,
            &endpoints,
        ));
        if let Err(e) = self.datapath.set_policy(table.clone()) {
            tracing::warn!(error = %e, "the datapath did not take the policies");
        }
        // DNS: what each network reaches besides its own.
        let reach = table.reachable();
        for net in self.networks.values_mut() {
            let Some(id) = net.id else { continue };
            let extra: Vec<DnsEntry> = reach
                .get(&id)
                .into_iter()
                .flatten()
                .filter_map(|ep| dns.get(*ep).cloned())
                .collect();
            if extra != net.extra_dns {
                net.extra_dns = extra;
                net.publish_zone();
            }
        }
        self.policies.table = table;
        self.policies.inputs = Some((networks, endpoints));
        self.policies.stale = false;
    }

    /// The policy table's inputs: every switched network, every endpoint
    /// here and on other hosts, with the DNS entry of each endpoint (by
    /// its index).
    fn policy_inputs(&self) -> (Vec<NetworkInput>, Vec<EndpointInput>, Vec<DnsEntry>) {
        let mut networks = Vec::new();
        let mut endpoints = Vec::new();
        let mut dns = Vec::new();
        for n in self.networks.values() {
            let Some(id) = n.id else { continue };
            networks.push(NetworkInput {
                id,
                name: n.record.name.clone(),
                labels: n.record.labels.clone(),
                subnets: n.record.subnets.iter().filter_map(|s| s.subnet).collect(),
                isolate: is_isolated(&n.record.options).unwrap_or(false),
                gateway_mac: super::trace::gateway_mac(&n.record),
            });
            for e in n.endpoints.values() {
                let ips: Vec<IpAddr> = e
                    .record
                    .ipv4
                    .map(|a| IpAddr::V4(a.addr()))
                    .into_iter()
                    .chain(e.record.ipv6.map(|a| IpAddr::V6(a.addr())))
                    .collect();
                let labels = self
                    .containers
                    .get(&e.record.container)
                    .map(|c| c.labels.clone())
                    .unwrap_or_default();
                dns.push(DnsEntry {
                    name: e.record.container.clone(),
                    aliases: e.record.aliases.clone(),
                    addrs: ips.clone(),
                });
                endpoints.push(EndpointInput {
                    network: id,
                    container: e.record.container.clone(),
                    labels,
                    mac: MacAddr(e.record.mac),
                    ips,
                });
            }
            for r in n.remotes.values() {
                let ips: Vec<IpAddr> = r
                    .ipv4
                    .map(IpAddr::V4)
                    .into_iter()
                    .chain(r.ipv6.map(IpAddr::V6))
                    .collect();
                dns.push(DnsEntry {
                    name: r.container.clone(),
                    aliases: r.aliases.clone(),
                    addrs: ips.clone(),
                });
                endpoints.push(EndpointInput {
                    network: id,
                    container: r.container.clone(),
                    // As its host published them.
                    labels: r.labels.clone(),
                    mac: MacAddr(r.mac),
                    ips,
                });
            }
        }
        (networks, endpoints, dns)
    }
}

fn no_policy(name: &str) -> ApiError {
    ApiError::not_found(format!(
        "policy `{name}` not found; `vswitch policy ls` lists them"
    ))
}
