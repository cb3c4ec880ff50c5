//! Policies compiled against the endpoints they name: which endpoint an
//! address is, which endpoints each allowance covers, each network's
//! isolation and egress rules. Built by the control plane whenever a
//! policy, a network or an endpoint changes; read by every worker for the
//! first packet of each flow.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;

use super::spec::{
    in_block, EgressAction, K8sPeer, LabelSelector, Policy, PortRange, Rule, Select,
};
use crate::fdb::FastMap;
use crate::{MacAddr, NetworkId};

/// An index into [`PolicyTable::names`].
pub type NameId = u16;
/// An endpoint: its index in the endpoints the table was compiled from.
pub type EpId = usize;

/// The name denials between networks without an allowance count under.
pub const DEFAULT_DENY: NameId = 0;
/// The name denials inside an isolated network count under.
pub const ISOLATED: NameId = 1;
/// The label every network carries with its own name, as Kubernetes gives
/// every namespace (`namespaceSelector` can name one network).
pub const NETWORK_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// A network as the table needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkInput {
    /// Its id in the datapath.
    pub id: NetworkId,
    /// Its name (what policies say).
    pub name: String,
    /// Its labels (what namespace selectors match).
    pub labels: BTreeMap<String, String>,
    /// Its subnets.
    pub subnets: Vec<IpNet>,
    /// `--opt isolate=true`: its containers reach each other only where
    /// allowed.
    pub isolate: bool,
    /// Its gateway's MAC: the source of frames routed into it.
    pub gateway_mac: MacAddr,
}

/// An endpoint (this host's or another's) as the table needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointInput {
    /// Its network.
    pub network: NetworkId,
    /// Its container's name.
    pub container: String,
    /// Its container's labels.
    pub labels: BTreeMap<String, String>,
    /// Its MAC.
    pub mac: MacAddr,
    /// Its addresses.
    pub ips: Vec<IpAddr>,
}

/// What the table says of a network.
#[derive(Debug, Clone)]
pub struct NetEntry {
    /// Isolated (`--opt isolate=true`).
    pub isolate: bool,
    /// Frames between its containers are looked at: it is isolated or
    /// some of its containers are selected by a NetworkPolicy.
    pub checked: bool,
    /// Its gateway's MAC.
    pub gateway_mac: MacAddr,
    egress: Vec<EgressEntry>,
}

#[derive(Debug, Clone)]
struct EgressEntry {
    name: NameId,
    cidr: IpNet,
    ports: Vec<PortRange>,
    deny: bool,
}

/// What the table says of an endpoint.
#[derive(Debug, Clone)]
pub struct EpEntry {
    /// Its network.
    pub network: NetworkId,
    /// Its MAC: where frames routed to it go.
    pub mac: MacAddr,
    /// The first NetworkPolicy isolating it for ingress.
    ingress_iso: Option<NameId>,
    /// The first NetworkPolicy isolating it for egress.
    egress_iso: Option<NameId>,
}

/// A set of endpoints and addresses.
#[derive(Debug, Clone, Default)]
struct Set {
    /// Every endpoint.
    all: bool,
    /// Every endpoint of these networks.
    nets: Vec<NetworkId>,
    /// These endpoints (a bit per [`EpId`]).
    eps: Vec<u64>,
    /// Addresses in these blocks, but for their holes.
    cidrs: Vec<(IpNet, Vec<IpNet>)>,
}

impl Set {
    fn add_ep(&mut self, id: EpId) {
        let word = id / 64;
        if self.eps.len() <= word {
            self.eps.resize(word + 1, 0);
        }
        self.eps[word] |= 1 << (id % 64);
    }

    fn has_ep(&self, id: EpId) -> bool {
        self.eps
            .get(id / 64)
            .is_some_and(|w| w & (1 << (id % 64)) != 0)
    }

    fn everyone() -> Set {
        Set {
            all: true,
            cidrs: vec![
                ("0.0.0.0/0".parse().expect("a CIDR"), vec![]),
                ("::/0".parse().expect("a CIDR"), vec![]),
            ],
            ..Set::default()
        }
    }

    fn matches(&self, who: Who, eps: &[EpEntry]) -> bool {
        if let Some(id) = who.ep {
            if self.all
                || self.has_ep(id)
                || eps.get(id).is_some_and(|e| self.nets.contains(&e.network))
            {
                return true;
            }
        }
        self.cidrs.iter().any(|(c, ex)| in_block(c, ex, who.ip))
    }

    /// The networks whose endpoints it holds (some or all of them).
    fn networks(&self, eps: &[EpEntry]) -> BTreeSet<NetworkId> {
        let mut out: BTreeSet<NetworkId> = self.nets.iter().copied().collect();
        for (id, e) in eps.iter().enumerate() {
            if self.has_ep(id) {
                out.insert(e.network);
            }
        }
        out
    }
}

#[derive(Debug, Clone)]
struct Allowance {
    from: Set,
    to: Set,
    /// Empty: everything.
    ports: Vec<PortRange>,
    /// Counts for the destination's ingress isolation (a NetworkPolicy's
    /// ingress rule, or `policy allow`).
    ingress: bool,
    /// Counts for the source's egress isolation (a NetworkPolicy's egress
    /// rule, or `policy allow`).
    egress: bool,
}

/// One side of a packet: its address and the endpoint it is, if any.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Who {
    /// The endpoint, when the address is one.
    pub ep: Option<EpId>,
    /// The address.
    pub ip: IpAddr,
}

/// A policy's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// It passes.
    Allow,
    /// It is dropped, counted under that name.
    Deny(NameId),
}

/// The compiled policies (see the module's documentation).
#[derive(Debug, Clone)]
pub struct PolicyTable {
    generation: u64,
    names: Vec<String>,
    nets: FastMap<NetworkId, NetEntry>,
    /// Every subnet, longest prefix first.
    subnets: Vec<(IpNet, NetworkId)>,
    eps: Vec<EpEntry>,
    by_addr: FastMap<(NetworkId, IpAddr), EpId>,
    allows: Vec<Allowance>,
}

impl Default for PolicyTable {
    fn default() -> Self {
        PolicyTable::compile(0, &[], &[], &[])
    }
}

impl PolicyTable {
    /// Compiles `policies` against `networks` and `endpoints`. Policies
    /// naming a network that is not there compile to nothing (they act
    /// once it is). `generation` tells flows admitted under an older table
    /// to be checked again.
    pub fn compile(
        generation: u64,
        policies: &[Policy],
        networks: &[NetworkInput],
        endpoints: &[EndpointInput],
    ) -> PolicyTable {
        let mut t = PolicyTable {
            generation,
            names: vec!["default-deny".into(), "isolate".into()],
            nets: FastMap::default(),
            subnets: Vec::new(),
            eps: Vec::with_capacity(endpoints.len()),
            by_addr: FastMap::default(),
            allows: Vec::new(),
        };
        let by_name: BTreeMap<&str, &NetworkInput> =
            networks.iter().map(|n| (n.name.as_str(), n)).collect();
        for n in networks {
            t.nets.insert(
                n.id,
                NetEntry {
                    isolate: n.isolate,
                    checked: n.isolate,
                    gateway_mac: n.gateway_mac,
                    egress: Vec::new(),
                },
            );
            for s in &n.subnets {
                t.subnets.push((*s, n.id));
            }
        }
        t.subnets
            .sort_by_key(|(s, _)| std::cmp::Reverse(s.prefix_len()));
        for (id, e) in endpoints.iter().enumerate() {
            t.eps.push(EpEntry {
                network: e.network,
                mac: e.mac,
                ingress_iso: None,
                egress_iso: None,
            });
            for ip in &e.ips {
                t.by_addr.insert((e.network, *ip), id);
            }
        }
        for p in policies {
            let name = t.names.len() as NameId;
            let mut named = false;
            match &p.rule {
                Rule::Allow { from, to, ports } => {
                    let (Some(fnet), Some(tnet)) = (
                        by_name.get(from.network.as_str()),
                        by_name.get(to.network.as_str()),
                    ) else {
                        continue;
                    };
                    let side = |net: &NetworkInput, select: &Select| {
                        let mut set = Set::default();
                        match select {
                            Select::All => set.nets.push(net.id),
                            Select::Container(c) => {
                                for (id, e) in endpoints.iter().enumerate() {
                                    if e.network == net.id && e.container == *c {
                                        set.add_ep(id);
                                    }
                                }
                            }
                            Select::Labels(l) => {
                                for (id, e) in endpoints.iter().enumerate() {
                                    if e.network == net.id
                                        && l.iter().all(|(k, v)| e.labels.get(k) == Some(v))
                                    {
                                        set.add_ep(id);
                                    }
                                }
                            }
                        }
                        set
                    };
                    t.allows.push(Allowance {
                        from: side(fnet, &from.select),
                        to: side(tnet, &to.select),
                        ports: ports.clone(),
                        ingress: true,
                        egress: true,
                    });
                    named = true;
                }
                Rule::Egress {
                    network,
                    action,
                    cidr,
                    ports,
                } => {
                    let Some(n) = by_name.get(network.as_str()) else {
                        continue;
                    };
                    if let Some(entry) = t.nets.get_mut(&n.id) {
                        entry.egress.push(EgressEntry {
                            name,
                            cidr: *cidr,
                            ports: ports.clone(),
                            deny: *action == EgressAction::Deny,
                        });
                        named = true;
                    }
                }
                Rule::Kubernetes(np) => {
                    let Some(home) = by_name.get(np.network.as_str()) else {
                        continue;
                    };
                    let mut selected = Set::default();
                    let mut any = false;
                    for (id, e) in endpoints.iter().enumerate() {
                        if e.network == home.id && np.pod_selector.matches(&e.labels) {
                            selected.add_ep(id);
                            any = true;
                        }
                    }
                    let peers = |list: &[K8sPeer]| {
                        if list.is_empty() {
                            return Set::everyone();
                        }
                        let mut set = Set::default();
                        for peer in list {
                            match peer {
                                K8sPeer::IpBlock { cidr, except } => {
                                    set.cidrs.push((*cidr, except.clone()))
                                }
                                K8sPeer::Pods {
                                    networks: nsel,
                                    pods,
                                } => {
                                    let in_nets = |net: NetworkId| match nsel {
                                        None => net == home.id,
                                        Some(sel) => networks
                                            .iter()
                                            .find(|n| n.id == net)
                                            .is_some_and(|n| network_matches(sel, n)),
                                    };
                                    for (id, e) in endpoints.iter().enumerate() {
                                        let pod_ok =
                                            pods.as_ref().is_none_or(|s| s.matches(&e.labels));
                                        if pod_ok && in_nets(e.network) {
                                            set.add_ep(id);
                                        }
                                    }
                                }
                            }
                        }
                        set
                    };
                    if let Some(rules) = &np.ingress {
                        for r in rules {
                            t.allows.push(Allowance {
                                from: peers(&r.peers),
                                to: selected.clone(),
                                ports: r.ports.clone(),
                                ingress: true,
                                egress: false,
                            });
                        }
                    }
                    if let Some(rules) = &np.egress {
                        for r in rules {
                            t.allows.push(Allowance {
                                from: selected.clone(),
                                to: peers(&r.peers),
                                ports: r.ports.clone(),
                                ingress: false,
                                egress: true,
                            });
                        }
                    }
                    if any {
                        for (id, ep) in t.eps.iter_mut().enumerate() {
                            if selected.has_ep(id) {
                                if np.ingress.is_some() {
                                    ep.ingress_iso.get_or_insert(name);
                                }
                                if np.egress.is_some() {
                                    ep.egress_iso.get_or_insert(name);
                                }
                            }
                        }
                        if let Some(n) = t.nets.get_mut(&home.id) {
                            n.checked = true;
                        }
                    }
                    named = true;
                }
            }
            if named {
                t.names.push(p.name.clone());
            }
        }
        t
    }

    /// Which compilation this is.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The name denials are counted under.
    pub fn name(&self, id: NameId) -> &str {
        self.names.get(usize::from(id)).map_or("", String::as_str)
    }

    /// Every name, by [`NameId`].
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// What the table says of a network.
    pub fn network(&self, id: NetworkId) -> Option<&NetEntry> {
        self.nets.get(&id)
    }

    /// The endpoint `id`.
    pub fn endpoint(&self, id: EpId) -> Option<&EpEntry> {
        self.eps.get(id)
    }

    /// The endpoint holding `ip` on `network`.
    pub fn endpoint_at(&self, network: NetworkId, ip: IpAddr) -> Option<EpId> {
        self.by_addr.get(&(network, ip)).copied()
    }

    /// The network other than `from` whose subnet holds `ip` (longest
    /// prefix): where a frame to `ip` that reached `from`'s gateway is
    /// routed to.
    pub fn routed_network(&self, from: NetworkId, ip: IpAddr) -> Option<NetworkId> {
        if self
            .subnets
            .iter()
            .any(|(s, n)| *n == from && s.contains(&ip))
        {
            return None;
        }
        self.subnets
            .iter()
            .find(|(s, n)| *n != from && s.contains(&ip))
            .map(|(_, n)| *n)
    }

    /// The endpoint an address is, looked for on `network` first, then on
    /// the network whose subnet holds it (a routed packet's source).
    pub fn identify(&self, network: NetworkId, ip: IpAddr) -> Who {
        let ep = self.endpoint_at(network, ip).or_else(|| {
            self.subnets
                .iter()
                .find(|(s, _)| s.contains(&ip))
                .and_then(|(_, n)| self.endpoint_at(*n, ip))
        });
        Who { ep, ip }
    }

    fn allowed(&self, src: Who, dst: Who, proto: u8, dport: u16, need: Need) -> bool {
        self.allows.iter().any(|a| {
            let counts = match need {
                Need::Any => true,
                Need::Explicit => !a.from.all && !a.to.all,
                Need::Ingress => a.ingress,
                Need::Egress => a.egress,
            };
            counts
                && (a.ports.is_empty() || a.ports.iter().any(|p| p.contains(proto, dport)))
                && a.from.matches(src, &self.eps)
                && a.to.matches(dst, &self.eps)
        })
    }

    /// Whether a new flow from `src` to `dst` (on the same network, or
    /// routed to another) may open. Each of these needs an allowance that
    /// covers the flow:
    /// - between networks: one that names both sides (a rule for everyone,
    ///   a NetworkPolicy's `from: []`, does not open a network to others);
    /// - in an isolated network: any;
    /// - to an endpoint a NetworkPolicy selects for ingress: an ingress
    ///   rule's (or `policy allow`'s);
    /// - from one a NetworkPolicy selects for egress: an egress rule's (or
    ///   `policy allow`'s).
    ///
    /// A destination that is no endpoint (a broadcast, an address nobody
    /// holds) is treated as another network's.
    pub fn check(&self, src: Who, dst: Who, proto: u8, dport: u16) -> Verdict {
        let s = src.ep.and_then(|id| self.eps.get(id));
        let d = dst.ep.and_then(|id| self.eps.get(id));
        let same = matches!((s, d), (Some(s), Some(d)) if s.network == d.network);
        if same {
            let net = d.map(|d| d.network);
            let isolated = net
                .and_then(|n| self.nets.get(&n))
                .is_some_and(|n| n.isolate);
            if isolated && !self.allowed(src, dst, proto, dport, Need::Any) {
                return Verdict::Deny(ISOLATED);
            }
        } else if !self.allowed(src, dst, proto, dport, Need::Explicit) {
            let isolated = d.is_none()
                && s.and_then(|s| self.nets.get(&s.network))
                    .is_some_and(|n| n.isolate);
            return Verdict::Deny(if isolated { ISOLATED } else { DEFAULT_DENY });
        }
        if let Some(name) = d.and_then(|d| d.ingress_iso) {
            if !self.allowed(src, dst, proto, dport, Need::Ingress) {
                return Verdict::Deny(name);
            }
        }
        if let Some(name) = s.and_then(|s| s.egress_iso) {
            if !self.allowed(src, dst, proto, dport, Need::Egress) {
                return Verdict::Deny(name);
            }
        }
        Verdict::Allow
    }

    /// Whether a new flow from `src` on `network` to `dst` outside (through
    /// the NAT) may open: the network's egress rules (the longest prefix
    /// wins, then a rule with ports over one without, then deny over
    /// allow; none: allow), then, for a source a NetworkPolicy selects for
    /// egress, an egress rule's ipBlock.
    pub fn check_egress(
        &self,
        network: NetworkId,
        src: IpAddr,
        dst: IpAddr,
        proto: u8,
        dport: u16,
    ) -> Verdict {
        if let Some(n) = self.nets.get(&network) {
            let best = n
                .egress
                .iter()
                .filter(|e| {
                    e.cidr.contains(&dst)
                        && (e.ports.is_empty() || e.ports.iter().any(|p| p.contains(proto, dport)))
                })
                .max_by_key(|e| (e.cidr.prefix_len(), !e.ports.is_empty(), e.deny));
            if let Some(e) = best.filter(|e| e.deny) {
                return Verdict::Deny(e.name);
            }
        }
        let who = Who {
            ep: self.endpoint_at(network, src),
            ip: src,
        };
        if let Some(name) = who.ep.and_then(|id| self.eps[id].egress_iso) {
            let out = Who { ep: None, ip: dst };
            if !self.allowed(who, out, proto, dport, Need::Egress) {
                return Verdict::Deny(name);
            }
        }
        Verdict::Allow
    }

    /// For each network, the endpoints of other networks its containers
    /// may reach through an allowance that names both sides: the names its
    /// DNS answers besides its own.
    pub fn reachable(&self) -> BTreeMap<NetworkId, BTreeSet<EpId>> {
        let mut out: BTreeMap<NetworkId, BTreeSet<EpId>> = BTreeMap::new();
        for a in self.allows.iter().filter(|a| !a.from.all && !a.to.all) {
            let from = a.from.networks(&self.eps);
            for (id, e) in self.eps.iter().enumerate() {
                if !(a.to.has_ep(id) || a.to.nets.contains(&e.network)) {
                    continue;
                }
                for n in from.iter().filter(|n| **n != e.network) {
                    out.entry(*n).or_default().insert(id);
                }
            }
        }
        out
    }
}

#[derive(Clone, Copy)]
enum Need {
    Any,
    Explicit,
    Ingress,
    Egress,
}

fn network_matches(sel: &LabelSelector, n: &NetworkInput) -> bool {
    let mut labels = n.labels.clone();
    labels.insert(NETWORK_NAME_LABEL.to_string(), n.name.clone());
    sel.matches(&labels)
}

/// Denials counted by policy: a counter per name of the table in force,
/// the counts of older tables kept by name, so a recompilation loses
/// nothing. Counting allocates only for the first denial under a new
/// table.
#[derive(Debug, Clone, Default)]
pub struct Denials {
    generation: Option<u64>,
    names: Vec<String>,
    counts: Vec<u64>,
    retired: BTreeMap<String, u64>,
}

impl Denials {
    /// Counts a denial by `name` of `table`.
    pub fn count(&mut self, table: &PolicyTable, name: NameId) {
        if self.generation != Some(table.generation()) {
            self.retire();
            self.generation = Some(table.generation());
            self.names = table.names().to_vec();
            self.counts = vec![0; self.names.len()];
        }
        if let Some(c) = self.counts.get_mut(usize::from(name)) {
            *c += 1;
        }
    }

    fn retire(&mut self) {
        for (name, c) in self.names.iter().zip(&self.counts) {
            if *c > 0 {
                *self.retired.entry(name.clone()).or_default() += c;
            }
        }
        self.counts.clear();
        self.names.clear();
    }

    /// Every count, by name.
    pub fn totals(&self) -> BTreeMap<String, u64> {
        let mut out = self.retired.clone();
        for (name, c) in self.names.iter().zip(&self.counts) {
            if *c > 0 {
                *out.entry(name.clone()).or_default() += c;
            }
        }
        out
    }

    /// Adds these counts to `into`.
    pub fn add_to(&self, into: &mut BTreeMap<String, u64>) {
        for (name, c) in self.totals() {
            *into.entry(name).or_default() += c;
        }
    }
}
