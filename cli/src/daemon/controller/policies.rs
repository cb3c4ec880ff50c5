//! Policies (`vswitch policy`): kept in the store, compiled against the
//! networks and endpoints they name ([`switch::policy::PolicyTable`]) and
//! put in force on every worker whenever one of them changes; the names
//! of containers a policy lets a network reach are added to that network's
//! DNS.
//!
//! [`Controller::sync_policies`] runs after every request and every
//! cluster event: it gathers the table's inputs (networks, local and remote
//! endpoints, containers' labels, remote ones as their hosts published
//! them) and compiles only when they differ from the last ones, so a
//! request that changed nothing costs a comparison.
//!
//! # Cluster-wide policies
//!
//! A policy naming only overlay networks is cluster-wide: creating,
//! replacing or removing it here also publishes the change in the cluster
//! directory (postcard-encoded, [`overlay::Gossip::publish_policy`]), and
//! every host applies what the directory says
//! ([`Controller::apply_cluster_policy`]), decoded and checked again, since
//! any member may have sent it. Its record keeps the directory's version of
//! the change; after a restart the record is offered again at that version
//! ([`Controller::publish_cluster_policies`]), so what the cluster changed
//! meanwhile wins and comes back here through anti-entropy. A policy naming
//! a network of this host alone stays here.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use overlay::NetVersion;
use switch::dns::DnsEntry;
use switch::policy::{EndpointInput, NetworkInput, Policy, PolicyTable, Rule};
use switch::MacAddr;

use super::ids::now_rfc3339;
use super::{internal, Controller};
use crate::api::{self, Driver};
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
    /// Policies from the cluster refused: undecodable, malformed, naming a
    /// network of this host alone, or clashing with a policy of this host
    /// alone.
    pub(super) refused: u64,
    /// Pairs of overlays (by name, both ways round) between which the
    /// table in force routes something: a host with containers on one may
    /// send frames into the other, so it gets a tunnel port there.
    routes: BTreeSet<(String, String)>,
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

/// A policy as the cluster directory carries it.
fn encode(p: &Policy) -> Vec<u8> {
    // Serializing the policy's plain data into a Vec cannot fail.
    postcard::to_stdvec(p).unwrap_or_default()
}

/// Why a change from the cluster directory cannot be a policy here.
fn decode(name: &str, bytes: &[u8]) -> Result<Policy, String> {
    let p: Policy = postcard::from_bytes(bytes).map_err(|e| format!("undecodable: {e}"))?;
    p.check().map_err(|e| e.to_string())?;
    if p.name != name {
        return Err(format!("it calls itself `{}`", p.name));
    }
    Ok(p)
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
            let cluster = self.is_cluster_wide(&p);
            match self.policies.records.get(&p.name) {
                Some(old) if old.policy == p => continue,
                Some(old) if old.cluster.is_some() != cluster => {
                    return Err(ApiError::conflict(format!(
                        "policy `{}` is {} and this one would be {}; remove it with `vswitch policy rm {}` first",
                        p.name,
                        scope_words(old.cluster.is_some()),
                        scope_words(cluster),
                        p.name
                    )))
                }
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
            if cluster {
                self.check_replicable(&p)?;
            }
            put.push((
                cluster,
                PolicyRecord {
                    policy: p,
                    created: now_rfc3339(),
                    cluster: None,
                },
            ));
        }
        // Every policy is checked: publish the cluster-wide ones (taking
        // the directory's version of each change), then store them all.
        let put: Vec<PolicyRecord> = put
            .into_iter()
            .map(|(cluster, mut r)| {
                if cluster {
                    r.cluster = self.publish_policy(&r.policy);
                }
                r
            })
            .collect();
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

    /// How many policies there are.
    pub(super) fn policy_count(&self) -> usize {
        self.policies.records.len()
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

    /// `DELETE /v1/policies/NAME`: here, and everywhere for a cluster-wide
    /// policy.
    pub(super) fn policy_remove(&mut self, name: &str) -> Result<(), ApiError> {
        let r = self
            .policies
            .records
            .get(name)
            .ok_or_else(|| no_policy(name))?;
        if r.cluster.is_some() {
            if let Some(c) = &self.gossip {
                c.with(|g, now| g.remove_policy(name, now));
            }
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
            scope: if r.cluster.is_some() {
                "global"
            } else {
                "local"
            }
            .into(),
            rule: r.policy.rule.clone(),
        }
    }

    /// Whether `p` is cluster-wide here: this host is in a cluster and
    /// every network `p` names is an overlay.
    fn is_cluster_wide(&self, p: &Policy) -> bool {
        self.gossip.is_some()
            && p.networks().into_iter().all(|n| {
                self.networks
                    .get(n)
                    .is_some_and(|n| n.record.driver == Driver::Overlay)
            })
    }

    /// Refuses, before anything is stored or sent, a cluster-wide policy
    /// the cluster directory cannot carry.
    fn check_replicable(&self, p: &Policy) -> Result<(), ApiError> {
        let Some(cluster) = &self.gossip else {
            return Ok(());
        };
        let bytes = encode(p);
        let checked = cluster.with(|g, _| g.directory().policy_check(&p.name, &bytes));
        match checked {
            Ok(()) => Ok(()),
            Err(overlay::DirectoryError::TooLarge { len, .. }) => Err(ApiError::bad(format!(
                "policy `{}` names only overlays, so every host of the cluster gets it, but it is {len} bytes encoded and at most {} fit in a gossip packet; split it into smaller policies (fewer ports, peers, labels or rules each)",
                p.name,
                overlay::directory::MAX_DELTA_LEN
            ))),
            Err(e) => Err(ApiError::conflict(format!(
                "policy `{}` cannot be given to the cluster: {e}",
                p.name
            ))),
        }
    }

    /// Publishes a cluster-wide policy (checked by
    /// [`Controller::check_replicable`]); the version of the change.
    fn publish_policy(&self, p: &Policy) -> Option<NetVersion> {
        let cluster = self.gossip.as_ref()?;
        let published = cluster.with(|g, now| {
            g.publish_policy(&p.name, encode(p), now)?;
            Ok::<_, overlay::OverlayError>(g.directory().policy(&p.name).map(|v| v.version.clone()))
        });
        match published {
            Ok(version) => version,
            Err(e) => {
                tracing::warn!(policy = %p.name, error = %e, "publishing the policy to the cluster");
                None
            }
        }
    }

    /// At start: every cluster-wide policy kept here is offered to the
    /// cluster again, at the version it had (what the cluster changed
    /// since wins and comes back through anti-entropy); one that names
    /// only overlays but was never published (kept from before this host
    /// had a cluster) is published now.
    pub(super) fn publish_cluster_policies(&mut self) {
        let Some(cluster) = &self.gossip else {
            return;
        };
        let mut published = Vec::new();
        for r in self.policies.records.values() {
            match &r.cluster {
                Some(version) => {
                    let offered = cluster.with(|g, now| {
                        g.republish_policy(
                            &r.policy.name,
                            version.clone(),
                            Some(encode(&r.policy)),
                            now,
                        )
                    });
                    if let Err(e) = offered {
                        tracing::warn!(policy = %r.policy.name, error = %e, "offering the policy to the cluster again");
                    }
                }
                None if self.is_cluster_wide(&r.policy) => {
                    if let Err(e) = self.check_replicable(&r.policy) {
                        tracing::warn!(policy = %r.policy.name, error = %e, "keeping the policy to this host");
                        continue;
                    }
                    if let Some(version) = self.publish_policy(&r.policy) {
                        published.push(PolicyRecord {
                            cluster: Some(version),
                            ..r.clone()
                        });
                    }
                }
                None => {}
            }
        }
        if published.is_empty() {
            return;
        }
        // Held either way: the directory has them now.
        if let Err(e) = self.store.put_policies(&published, &[]) {
            tracing::warn!(error = %e, "storing the policies given to the cluster");
        }
        for r in published {
            tracing::info!(policy = %r.policy.name, "policy given to the cluster");
            self.policies.records.insert(r.policy.name.clone(), r);
        }
    }

    /// A policy's newest version from the cluster directory: decoded,
    /// checked, stored and put in force, or refused (counted, logged)
    /// and never stored.
    pub(super) fn apply_cluster_policy(&mut self, name: &str, version: NetVersion, bytes: &[u8]) {
        let policy = match decode(name, bytes) {
            Ok(p) => p,
            Err(reason) => return self.refuse_cluster_policy(name, &version, &reason),
        };
        let local = policy.networks().into_iter().find(|n| {
            self.networks
                .get(*n)
                .is_some_and(|n| n.record.driver != Driver::Overlay)
        });
        if let Some(n) = local {
            let reason = format!("it names `{n}`, a network of this host alone");
            return self.refuse_cluster_policy(name, &version, &reason);
        }
        let created = match self.policies.records.get(name) {
            Some(r) if r.cluster.is_none() => {
                let reason = "a policy of this host alone has its name";
                return self.refuse_cluster_policy(name, &version, reason);
            }
            // This host's own change, or an older one.
            Some(r) if r.cluster.as_ref() >= Some(&version) => return,
            Some(r) => r.created.clone(),
            None => now_rfc3339(),
        };
        let changed = self
            .policies
            .records
            .get(name)
            .is_none_or(|r| r.policy != policy);
        let record = PolicyRecord {
            policy,
            created,
            cluster: Some(version),
        };
        if let Err(e) = self.store.put_policies(std::slice::from_ref(&record), &[]) {
            tracing::warn!(policy = %name, error = %e, "storing a policy from the cluster");
            return;
        }
        if changed {
            tracing::info!(policy = %name, origin = %record.cluster.as_ref().map_or("", |v| v.origin.as_str()), "policy from the cluster");
            self.policies.stale = true;
        }
        self.policies.records.insert(name.to_owned(), record);
    }

    fn refuse_cluster_policy(&mut self, name: &str, version: &NetVersion, reason: &str) {
        self.policies.refused += 1;
        tracing::warn!(policy = %name, origin = %version.origin, reason, "refusing a policy from the cluster");
    }

    /// A cluster-wide policy removed in the cluster directory.
    pub(super) fn remove_cluster_policy(&mut self, name: &str) {
        // Not ours to remove: absent, or a policy of this host alone.
        if self
            .policies
            .records
            .get(name)
            .is_none_or(|r| r.cluster.is_none())
        {
            return;
        }
        if let Err(e) = self.store.put_policies(&[], &[name]) {
            tracing::warn!(policy = %name, error = %e, "deleting a policy the cluster removed");
            return;
        }
        tracing::info!(policy = %name, "policy removed by the cluster");
        self.policies.records.remove(name);
        self.policies.stale = true;
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
        let routes = self.overlay_routes(&table);
        self.policies.table = table;
        self.policies.inputs = Some((networks, endpoints));
        self.policies.stale = false;
        if routes != self.policies.routes {
            self.policies.routes = routes;
            self.resync_all_overlays();
        }
    }

    /// The pairs of overlays between which `table` routes something, both
    /// ways round (replies are routed back).
    fn overlay_routes(&self, table: &PolicyTable) -> BTreeSet<(String, String)> {
        let overlay = |id: switch::NetworkId| {
            self.networks
                .values()
                .find(|n| n.id == Some(id) && n.record.driver == Driver::Overlay)
                .map(|n| n.record.name.clone())
        };
        let mut routes = BTreeSet::new();
        for (from, eps) in table.reachable() {
            let Some(from) = overlay(from) else { continue };
            let to: BTreeSet<switch::NetworkId> = eps
                .iter()
                .filter_map(|ep| Some(table.endpoint(*ep)?.network))
                .collect();
            for to in to.into_iter().filter_map(overlay) {
                routes.insert((to.clone(), from.clone()));
                routes.insert((from.clone(), to));
            }
        }
        routes
    }

    /// The overlays from which the policies route frames into overlay
    /// `network` (or back).
    pub(super) fn routed_with(&self, network: &str) -> Vec<String> {
        self.policies
            .routes
            .iter()
            .filter(|(a, _)| a == network)
            .map(|(_, b)| b.clone())
            .collect()
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
                let labels = self
                    .containers
                    .get(&e.record.container)
                    .map(|c| c.labels.clone())
                    .unwrap_or_default();
                let dns_entry = super::local_dns_entry(&e.record);
                endpoints.push(EndpointInput {
                    network: id,
                    container: e.record.container.clone(),
                    labels,
                    mac: MacAddr(e.record.mac),
                    ips: dns_entry.addrs.clone(),
                });
                dns.push(dns_entry);
            }
            for r in n.remotes.values() {
                let dns_entry = super::remote_dns_entry(r);
                endpoints.push(EndpointInput {
                    network: id,
                    container: r.container.clone(),
                    labels: r.labels.clone(),
                    mac: MacAddr(r.mac),
                    ips: dns_entry.addrs.clone(),
                });
                dns.push(dns_entry);
            }
        }
        (networks, endpoints, dns)
    }
}

fn scope_words(cluster: bool) -> &'static str {
    if cluster {
        "cluster-wide (it names only overlays)"
    } else {
        "this host's alone"
    }
}

fn no_policy(name: &str) -> ApiError {
    ApiError::not_found(format!(
        "policy `{name}` not found; `vswitch policy ls` lists them"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use switch::policy::{Peer, PortRange};

    fn allow(name: &str) -> Policy {
        Policy {
            name: name.into(),
            rule: Rule::Allow {
                from: Peer::parse("front").unwrap(),
                to: Peer::parse("back/label=app=db").unwrap(),
                ports: vec![PortRange::parse("6379").unwrap()],
            },
        }
    }

    /// What the cluster directory carries comes back as the policy; what
    /// a member could forge (junk, a policy that fails its checks, one
    /// under another name) is refused with a reason.
    #[test]
    fn what_the_cluster_sends_is_decoded_and_checked() {
        let p = allow("web-db");
        assert_eq!(decode("web-db", &encode(&p)), Ok(p.clone()));
        assert!(encode(&p).len() < overlay::directory::MAX_DELTA_LEN / 4);
        assert!(decode("web-db", b"\xff\xff\xff").is_err());
        assert!(decode("web-db", &encode(&p)[..10]).is_err());
        let other = decode("db-web", &encode(&p)).unwrap_err();
        assert!(other.contains("calls itself `web-db`"), "{other}");
        let mut bad = p.clone();
        if let Rule::Allow { ports, .. } = &mut bad.rule {
            ports[0].first = 0;
        }
        let why = decode("web-db", &encode(&bad)).unwrap_err();
        assert!(why.contains("not a port"), "{why}");
        let unnamed = decode("", &encode(&allow(""))).unwrap_err();
        assert!(unnamed.contains("not a valid name"), "{unnamed}");
    }
}
