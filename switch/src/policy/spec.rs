//! Policies as users give them: `vswitch policy allow`, `policy egress`,
//! and Kubernetes NetworkPolicies (`policy apply -f`), with the checks that
//! refuse a malformed one whole, with a sentence.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// Rules one policy may hold at most (peers, ports, rules of a
/// NetworkPolicy, each).
pub const MAX_ITEMS: usize = 256;
/// Longest policy, network, container or label text.
pub const MAX_NAME: usize = 253;

/// A named policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Policy {
    /// Unique among the policies; `policy rm` takes it.
    pub name: String,
    /// What it allows or denies.
    pub rule: Rule,
}

/// What a policy says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", rename_all_fields = "PascalCase")]
pub enum Rule {
    /// `policy allow`: connections from `from` to `to` (on `ports`, or on
    /// every port and protocol when empty) pass, routed by the gateways
    /// when the two are on different networks; their replies pass too.
    Allow {
        /// Who may open the connections.
        from: Peer,
        /// Who may be reached.
        to: Peer,
        /// The ports reached; empty: everything.
        ports: Vec<PortRange>,
    },
    /// `policy egress`: what leaves a network through its NAT.
    Egress {
        /// The network.
        network: String,
        /// Allow or deny.
        action: EgressAction,
        /// Destinations.
        cidr: IpNet,
        /// Destination ports; empty: every port and protocol.
        ports: Vec<PortRange>,
    },
    /// A Kubernetes `networking.k8s.io/v1` NetworkPolicy.
    Kubernetes(NetworkPolicy),
}

/// Allow or deny.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EgressAction {
    /// Let it out.
    Allow,
    /// Drop it.
    Deny,
}

/// One side of an allow rule: a network, and in it everyone, one container
/// or the containers with labels.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Peer {
    /// Network name.
    pub network: String,
    /// Who in it.
    pub select: Select,
}

/// Who in a network a [`Peer`] names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub enum Select {
    /// Every container of the network.
    All,
    /// The container of that name.
    Container(String),
    /// The containers carrying all of these labels.
    Labels(BTreeMap<String, String>),
}

/// An IP protocol a port belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
    /// SCTP.
    Sctp,
}

impl Proto {
    /// The IP protocol number.
    pub const fn number(self) -> u8 {
        match self {
            Proto::Tcp => 6,
            Proto::Udp => 17,
            Proto::Sctp => 132,
        }
    }

    /// The name `--port 80/tcp` uses.
    pub const fn as_str(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
            Proto::Sctp => "sctp",
        }
    }
}

/// Destination ports `first..=last` of one protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct PortRange {
    /// The protocol.
    pub proto: Proto,
    /// First port.
    pub first: u16,
    /// Last port (`first` for one port).
    pub last: u16,
}

impl PortRange {
    /// Parses `N`, `N-M`, `N/udp`, `N-M/tcp` (TCP unless said, as
    /// `docker run -p` and Kubernetes take it).
    pub fn parse(text: &str) -> Result<PortRange, PolicyError> {
        let bad = || PolicyError::Port(text.to_string());
        let (ports, proto) = match text.split_once('/') {
            Some((p, "tcp")) => (p, Proto::Tcp),
            Some((p, "udp")) => (p, Proto::Udp),
            Some((p, "sctp")) => (p, Proto::Sctp),
            Some(_) => return Err(bad()),
            None => (text, Proto::Tcp),
        };
        let (first, last) = match ports.split_once('-') {
            Some((a, b)) => (a, b),
            None => (ports, ports),
        };
        let first: u16 = first.parse().map_err(|_| bad())?;
        let last: u16 = last.parse().map_err(|_| bad())?;
        let range = PortRange { proto, first, last };
        range.check().map(|()| range)
    }

    fn check(&self) -> Result<(), PolicyError> {
        if self.first == 0 || self.last < self.first {
            return Err(PolicyError::Port(self.to_string()));
        }
        Ok(())
    }

    /// Whether a packet of protocol `proto` to port `port` is in it.
    pub fn contains(&self, proto: u8, port: u16) -> bool {
        self.proto.number() == proto && (self.first..=self.last).contains(&port)
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.first == self.last {
            write!(f, "{}/{}", self.first, self.proto.as_str())
        } else {
            write!(f, "{}-{}/{}", self.first, self.last, self.proto.as_str())
        }
    }
}

impl Peer {
    /// Parses `NET`, `NET/CONTAINER` or `NET/label=K=V[,K=V]...`.
    pub fn parse(text: &str) -> Result<Peer, PolicyError> {
        let bad = || PolicyError::Peer(text.to_string());
        let (network, select) = match text.split_once('/') {
            None => (text, Select::All),
            Some((net, who)) => match who.strip_prefix("label=") {
                Some(labels) => {
                    let mut map = BTreeMap::new();
                    for pair in labels.split(',') {
                        let (k, v) = pair.split_once('=').ok_or_else(bad)?;
                        map.insert(k.to_string(), v.to_string());
                    }
                    (net, Select::Labels(map))
                }
                None if who.is_empty() => return Err(bad()),
                None => (net, Select::Container(who.to_string())),
            },
        };
        let peer = Peer {
            network: network.to_string(),
            select,
        };
        peer.check().map(|()| peer)
    }

    fn check(&self) -> Result<(), PolicyError> {
        check_word("network", &self.network)?;
        match &self.select {
            Select::All => Ok(()),
            Select::Container(c) => check_word("container", c),
            Select::Labels(l) => check_labels(l),
        }
    }
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.network)?;
        match &self.select {
            Select::All => Ok(()),
            Select::Container(c) => write!(f, "/{c}"),
            Select::Labels(l) => {
                f.write_str("/label=")?;
                for (i, (k, v)) in l.iter().enumerate() {
                    if i > 0 {
                        f.write_str(",")?;
                    }
                    write!(f, "{k}={v}")?;
                }
                Ok(())
            }
        }
    }
}

/// A Kubernetes NetworkPolicy, mapped: the namespace is a vswitch network,
/// pods are its containers (their labels), namespace selectors select
/// networks by their labels.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct NetworkPolicy {
    /// `metadata.namespace`: the network whose containers it selects.
    pub network: String,
    /// `spec.podSelector`: the containers it isolates.
    pub pod_selector: LabelSelector,
    /// `Some` when `policyTypes` holds `Ingress`: who may connect to them.
    pub ingress: Option<Vec<K8sRule>>,
    /// `Some` when `policyTypes` holds `Egress`: what they may connect to.
    pub egress: Option<Vec<K8sRule>>,
}

/// One ingress or egress rule: its peers (empty: everyone) and ports
/// (empty: every port).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct K8sRule {
    /// `from` or `to`.
    pub peers: Vec<K8sPeer>,
    /// `ports`.
    pub ports: Vec<PortRange>,
}

/// A NetworkPolicy peer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", rename_all_fields = "PascalCase")]
pub enum K8sPeer {
    /// `podSelector` and/or `namespaceSelector`: containers with these
    /// labels (all when `None`) in the networks with those labels (the
    /// policy's own network when `None`).
    Pods {
        /// `namespaceSelector`.
        networks: Option<LabelSelector>,
        /// `podSelector`.
        pods: Option<LabelSelector>,
    },
    /// `ipBlock`: addresses in `cidr` but not in `except`.
    IpBlock {
        /// The block.
        cidr: IpNet,
        /// Holes in it.
        except: Vec<IpNet>,
    },
}

/// A Kubernetes label selector; the empty one selects everything.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct LabelSelector {
    /// `matchLabels`.
    pub match_labels: BTreeMap<String, String>,
    /// `matchExpressions`.
    pub match_expressions: Vec<LabelExpr>,
}

/// One `matchExpressions` entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct LabelExpr {
    /// The label's key.
    pub key: String,
    /// How it is compared.
    pub operator: LabelOp,
    /// The values `In` and `NotIn` compare with.
    pub values: Vec<String>,
}

/// A `matchExpressions` operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum LabelOp {
    /// The label is one of the values.
    In,
    /// The label is missing or none of the values.
    NotIn,
    /// The label is there.
    Exists,
    /// The label is missing.
    DoesNotExist,
}

impl LabelSelector {
    /// Whether `labels` satisfy it.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.match_labels
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
            && self.match_expressions.iter().all(|e| {
                let have = labels.get(&e.key);
                match e.operator {
                    LabelOp::In => have.is_some_and(|v| e.values.contains(v)),
                    LabelOp::NotIn => !have.is_some_and(|v| e.values.contains(v)),
                    LabelOp::Exists => have.is_some(),
                    LabelOp::DoesNotExist => have.is_none(),
                }
            })
    }

    fn check(&self) -> Result<(), PolicyError> {
        check_labels(&self.match_labels)?;
        if self.match_expressions.len() > MAX_ITEMS {
            return Err(PolicyError::TooMany("matchExpressions"));
        }
        for e in &self.match_expressions {
            check_word("label key", &e.key)?;
            let needs_values = matches!(e.operator, LabelOp::In | LabelOp::NotIn);
            if needs_values == e.values.is_empty() {
                return Err(PolicyError::Expression(e.key.clone()));
            }
            for v in &e.values {
                check_text("label value", v)?;
            }
        }
        Ok(())
    }
}

/// Why a policy is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// A bad name.
    #[error("{what} {name:?} is not a valid name: use 1 to 253 letters, digits, '.', '_' and '-', starting with a letter or digit")]
    Name {
        /// What the name is of.
        what: &'static str,
        /// The name.
        name: String,
    },
    /// A bad label or label value.
    #[error("{what} {text:?} is too long or holds control characters")]
    Text {
        /// What it is.
        what: &'static str,
        /// The text.
        text: String,
    },
    /// A bad port.
    #[error(
        "port {0:?} is not a port: use N, N-M, N/tcp, N/udp or N-M/udp with 1 <= N <= M <= 65535"
    )]
    Port(String),
    /// A bad peer.
    #[error("{0:?} is not NET, NET/CONTAINER or NET/label=K=V[,K=V...]")]
    Peer(String),
    /// A CIDR with host bits set.
    #[error("{0} has host bits set; did you mean {1}?")]
    HostBits(IpNet, IpNet),
    /// An `except` outside its block.
    #[error("ipBlock except {0} is not inside {1}")]
    Except(IpNet, IpNet),
    /// A `matchExpressions` entry whose values do not fit its operator.
    #[error(
        "matchExpressions for {0:?}: In and NotIn need values, Exists and DoesNotExist take none"
    )]
    Expression(String),
    /// Too many of something.
    #[error("a policy holds at most {MAX_ITEMS} {0}")]
    TooMany(&'static str),
    /// A NetworkPolicy without a type.
    #[error("NetworkPolicy {0:?} has neither Ingress nor Egress in policyTypes")]
    NoTypes(String),
}

fn check_word(what: &'static str, name: &str) -> Result<(), PolicyError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(PolicyError::Name {
            what,
            name: name.to_string(),
        })
    }
}

fn check_text(what: &'static str, text: &str) -> Result<(), PolicyError> {
    if text.len() > MAX_NAME || text.chars().any(char::is_control) {
        return Err(PolicyError::Text {
            what,
            text: text.to_string(),
        });
    }
    Ok(())
}

/// Checks a policy's name as [`Policy::check`] does.
pub fn check_name(name: &str) -> Result<(), PolicyError> {
    check_word("policy", name)
}

/// Checks labels as selectors and containers carry them: at most
/// [`MAX_ITEMS`], keys not empty, no control characters, at most
/// [`MAX_NAME`] bytes each.
pub fn check_labels(labels: &BTreeMap<String, String>) -> Result<(), PolicyError> {
    if labels.len() > MAX_ITEMS {
        return Err(PolicyError::TooMany("labels"));
    }
    for (k, v) in labels {
        check_text("label key", k)?;
        if k.is_empty() {
            return Err(PolicyError::Text {
                what: "label key",
                text: k.clone(),
            });
        }
        check_text("label value", v)?;
    }
    Ok(())
}

fn check_ports(ports: &[PortRange]) -> Result<(), PolicyError> {
    if ports.len() > MAX_ITEMS {
        return Err(PolicyError::TooMany("ports"));
    }
    ports.iter().try_for_each(PortRange::check)
}

fn check_cidr(cidr: &IpNet) -> Result<(), PolicyError> {
    if cidr.trunc() != *cidr {
        return Err(PolicyError::HostBits(*cidr, cidr.trunc()));
    }
    Ok(())
}

impl Policy {
    /// Refuses the policy whole, with a sentence, if any part is malformed.
    pub fn check(&self) -> Result<(), PolicyError> {
        check_word("policy", &self.name)?;
        match &self.rule {
            Rule::Allow { from, to, ports } => {
                from.check()?;
                to.check()?;
                check_ports(ports)
            }
            Rule::Egress {
                network,
                cidr,
                ports,
                ..
            } => {
                check_word("network", network)?;
                check_cidr(cidr)?;
                check_ports(ports)
            }
            Rule::Kubernetes(np) => {
                check_word("network", &np.network)?;
                np.pod_selector.check()?;
                if np.ingress.is_none() && np.egress.is_none() {
                    return Err(PolicyError::NoTypes(self.name.clone()));
                }
                for rules in [&np.ingress, &np.egress].into_iter().flatten() {
                    if rules.len() > MAX_ITEMS {
                        return Err(PolicyError::TooMany("rules"));
                    }
                    for r in rules {
                        if r.peers.len() > MAX_ITEMS {
                            return Err(PolicyError::TooMany("peers"));
                        }
                        check_ports(&r.ports)?;
                        for p in &r.peers {
                            match p {
                                K8sPeer::Pods { networks, pods } => {
                                    for s in [networks, pods].into_iter().flatten() {
                                        s.check()?;
                                    }
                                }
                                K8sPeer::IpBlock { cidr, except } => {
                                    check_cidr(cidr)?;
                                    if except.len() > MAX_ITEMS {
                                        return Err(PolicyError::TooMany("except blocks"));
                                    }
                                    for e in except {
                                        check_cidr(e)?;
                                        if !cidr.contains(e) {
                                            return Err(PolicyError::Except(*e, *cidr));
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
                Ok(())
            }
        }
    }

    /// The networks the policy names.
    pub fn networks(&self) -> Vec<&str> {
        match &self.rule {
            Rule::Allow { from, to, .. } => {
                let mut v = vec![from.network.as_str()];
                if to.network != from.network {
                    v.push(to.network.as_str());
                }
                v
            }
            Rule::Egress { network, .. } => vec![network.as_str()],
            Rule::Kubernetes(np) => vec![np.network.as_str()],
        }
    }

    /// The name `policy allow` gives a rule without `--name`: its two
    /// sides, as `front-to-back-db`.
    pub fn allow_name(from: &Peer, to: &Peer) -> String {
        sanitize(&format!("{from}-to-{to}"))
    }

    /// The name `policy egress` gives its rule: `NET-egress-deny-10.0.0.0-8`,
    /// with its ports.
    pub fn egress_name(
        network: &str,
        action: EgressAction,
        cidr: &IpNet,
        ports: &[PortRange],
    ) -> String {
        let action = match action {
            EgressAction::Allow => "allow",
            EgressAction::Deny => "deny",
        };
        let mut name = format!("{network}-egress-{action}-{cidr}");
        for p in ports {
            name.push('-');
            name.push_str(&p.to_string());
        }
        sanitize(&name)
    }
}

/// A name of letters, digits, `.`, `_` and `-` from any text.
fn sanitize(text: &str) -> String {
    let mut out: String = text
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '-'
            }
        })
        .collect();
    out.truncate(MAX_NAME);
    if !out
        .as_bytes()
        .first()
        .is_some_and(u8::is_ascii_alphanumeric)
    {
        out.insert(0, 'p');
        out.truncate(MAX_NAME);
    }
    out
}

/// Whether `ip` is in `cidr` and in none of `except`.
pub(super) fn in_block(cidr: &IpNet, except: &[IpNet], ip: IpAddr) -> bool {
    cidr.contains(&ip) && !except.iter().any(|e| e.contains(&ip))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_parse_as_docker_and_kubernetes_write_them() {
        assert_eq!(
            PortRange::parse("6379").unwrap(),
            PortRange {
                proto: Proto::Tcp,
                first: 6379,
                last: 6379
            }
        );
        let r = PortRange::parse("5000-5010/udp").unwrap();
        assert_eq!((r.proto, r.first, r.last), (Proto::Udp, 5000, 5010));
        assert!(r.contains(17, 5005) && !r.contains(6, 5005) && !r.contains(17, 5011));
        for bad in ["0", "10-5", "80/icmp", "x", "70000", "1-", "/tcp", ""] {
            assert!(PortRange::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(r.to_string(), "5000-5010/udp");
    }

    #[test]
    fn peers_parse_and_print_back() {
        for text in ["front", "back/db", "back/label=app=db", "b/label=a=1,b=2"] {
            assert_eq!(Peer::parse(text).unwrap().to_string(), text);
        }
        for bad in ["", "/db", "back/", "back/label=app", "ba ck", "back/d b"] {
            assert!(Peer::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn selectors_match_as_kubernetes_does() {
        let labels: BTreeMap<String, String> =
            [("app".into(), "db".into()), ("tier".into(), "data".into())].into();
        let sel = |ml: &[(&str, &str)], ex: Vec<LabelExpr>| LabelSelector {
            match_labels: ml
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            match_expressions: ex,
        };
        let expr = |key: &str, operator, values: &[&str]| LabelExpr {
            key: key.into(),
            operator,
            values: values.iter().map(|v| v.to_string()).collect(),
        };
        assert!(sel(&[], vec![]).matches(&labels));
        assert!(sel(&[("app", "db")], vec![]).matches(&labels));
        assert!(!sel(&[("app", "web")], vec![]).matches(&labels));
        assert!(sel(&[], vec![expr("app", LabelOp::In, &["db", "x"])]).matches(&labels));
        assert!(!sel(&[], vec![expr("app", LabelOp::NotIn, &["db"])]).matches(&labels));
        assert!(sel(&[], vec![expr("role", LabelOp::NotIn, &["db"])]).matches(&labels));
        assert!(sel(&[], vec![expr("tier", LabelOp::Exists, &[])]).matches(&labels));
        assert!(!sel(&[], vec![expr("tier", LabelOp::DoesNotExist, &[])]).matches(&labels));
    }

    #[test]
    fn malformed_policies_are_refused_whole_with_a_sentence() {
        let allow = |name: &str, ports| Policy {
            name: name.into(),
            rule: Rule::Allow {
                from: Peer::parse("front").unwrap(),
                to: Peer::parse("back/db").unwrap(),
                ports,
            },
        };
        assert!(allow("front-db", vec![]).check().is_ok());
        assert!(allow("-x", vec![]).check().is_err());
        let bad_port = PortRange {
            proto: Proto::Tcp,
            first: 9,
            last: 1,
        };
        assert!(allow("ok", vec![bad_port]).check().is_err());
        let egress = Policy {
            name: "e".into(),
            rule: Rule::Egress {
                network: "web".into(),
                action: EgressAction::Deny,
                cidr: "10.0.0.5/8".parse().unwrap(),
                ports: vec![],
            },
        };
        let err = egress.check().unwrap_err().to_string();
        assert!(err.contains("did you mean 10.0.0.0/8"), "{err}");
        let np = |except: &str| Policy {
            name: "np".into(),
            rule: Rule::Kubernetes(NetworkPolicy {
                network: "web".into(),
                pod_selector: LabelSelector::default(),
                ingress: Some(vec![K8sRule {
                    peers: vec![K8sPeer::IpBlock {
                        cidr: "10.0.0.0/8".parse().unwrap(),
                        except: vec![except.parse().unwrap()],
                    }],
                    ports: vec![],
                }]),
                egress: None,
            }),
        };
        assert!(np("10.1.0.0/16").check().is_ok());
        assert!(np("192.168.0.0/16").check().is_err());
    }

    #[test]
    fn default_names_are_valid_names() {
        let from = Peer::parse("front").unwrap();
        let to = Peer::parse("back/label=app=db").unwrap();
        let name = Policy::allow_name(&from, &to);
        assert_eq!(name, "front-to-back-label-app-db");
        assert!(check_word("policy", &name).is_ok());
        let e = Policy::egress_name(
            "web",
            EgressAction::Deny,
            &"10.0.0.0/8".parse().unwrap(),
            &[PortRange::parse("443").unwrap()],
        );
        assert_eq!(e, "web-egress-deny-10.0.0.0-8-443-tcp");
    }
}
