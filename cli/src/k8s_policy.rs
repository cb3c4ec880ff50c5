//! `vswitch policy apply -f`: a Kubernetes `networking.k8s.io/v1`
//! NetworkPolicy file read into [`Policy`]s.
//!
//! A thin translator, as the Docker and CNI front doors are: serde structs
//! with the API's own field names, mapped onto the model of
//! [`switch::policy`] and checked whole by [`Policy::check`]. The file is
//! YAML or JSON (JSON when it starts with `{`, as kubectl decides): one
//! object, several `---`-separated documents (or concatenated JSON
//! objects), or a `List` / `NetworkPolicyList` with `items`, as
//! `kubectl get networkpolicy -o yaml` writes it. Empty documents are
//! skipped and not counted.
//!
//! The namespace is the vswitch network the policy applies to; pods are
//! that network's containers, selected by their labels. Fields vswitch does
//! not read (status, annotations, managedFields...) are ignored; a field it
//! reads with the wrong type is refused with its path. The input is
//! bounded: [`MAX_TEXT`] bytes, [`MAX_DOCUMENTS`] policies, and YAML
//! budgets on depth, nodes, anchors and alias replays (no billion laughs).

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap};
use std::fmt;

use ipnet::IpNet;
use serde::de::{self, DeserializeOwned, Deserializer, Unexpected, Visitor};
use serde::Deserialize;
use serde_json::Value;
use switch::policy::{
    K8sPeer, K8sRule, LabelExpr, LabelOp, LabelSelector, NetworkPolicy, Policy, PolicyError,
    PortRange, Proto, Rule,
};

/// Longest file read, in bytes (1 MiB).
pub const MAX_TEXT: usize = 1 << 20;
/// Most NetworkPolicies (documents and list items together) one file holds.
pub const MAX_DOCUMENTS: usize = 256;
/// Deepest nesting of YAML collections; a NetworkPolicy in a List needs 12.
const MAX_DEPTH: usize = 32;
/// Most YAML anchors, aliases and merge keys a file may use.
const MAX_ANCHORS: usize = 1024;
/// Most YAML nodes (mappings, sequences, scalars) a file may hold, alias
/// replays included.
const MAX_NODES: usize = 100_000;

/// Longest text of the file an error quotes.
const CLIP: usize = 64;

const API_VERSION: &str = "networking.k8s.io/v1";

/// Where in the file a policy is: its document, its place in a List, and
/// its name once known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Where {
    /// The document, from 1.
    pub document: usize,
    /// Its index in the document's `items`, for a List.
    pub item: Option<usize>,
    /// `metadata.name`, when it has one.
    pub name: Option<String>,
}

impl fmt::Display for Where {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "document {}", self.document)?;
        if let Some(i) = self.item {
            write!(f, ", items[{i}]")?;
        }
        if let Some(name) = &self.name {
            write!(f, " (NetworkPolicy {name:?})")?;
        }
        Ok(())
    }
}

/// Why a NetworkPolicy file is refused (whole: nothing of it is applied).
#[derive(Debug, thiserror::Error)]
pub enum K8sPolicyError {
    /// The file is over [`MAX_TEXT`].
    #[error("the policy file has {0} bytes; vswitch reads at most {MAX_TEXT} (1 MiB): split it")]
    TooLarge(usize),
    /// More than [`MAX_DOCUMENTS`] policies.
    #[error("the policy file holds more than {MAX_DOCUMENTS} NetworkPolicies; vswitch applies at most {MAX_DOCUMENTS} at once: split it")]
    TooMany,
    /// Not YAML.
    #[error("the policy file is not YAML: {0}")]
    Yaml(#[source] serde_saphyr::Error),
    /// YAML past the budgets.
    #[error("the policy file goes past what vswitch reads of YAML (at most {MAX_DEPTH} levels deep, {MAX_NODES} nodes, {MAX_ANCHORS} anchors and aliases): {0}")]
    YamlLimit(#[source] serde_saphyr::Error),
    /// Starts with `{` but is not JSON.
    #[error("the policy file starts with '{{', so it is read as JSON, and it is not JSON: {0}")]
    Json(#[source] serde_json::Error),
    /// A document (or list item) that is not a mapping.
    #[error("{0} is not an object (a mapping with apiVersion, kind, metadata and spec)")]
    NotAnObject(Where),
    /// Not a NetworkPolicy, List or NetworkPolicyList.
    #[error("{at}: kind {kind} is not NetworkPolicy; vswitch reads networking.k8s.io/v1 NetworkPolicy objects, alone or in a List")]
    Kind {
        /// The document.
        at: Where,
        /// The kind, quoted, or "(missing)".
        kind: String,
    },
    /// A NetworkPolicy of another API version.
    #[error("{at}: apiVersion {api_version} is not networking.k8s.io/v1, the one NetworkPolicy version vswitch reads")]
    ApiVersion {
        /// The document.
        at: Where,
        /// The version, quoted, or "(missing)".
        api_version: String,
    },
    /// A List inside a List.
    #[error("{0} is a List inside a List; put the NetworkPolicies in the outer List's items")]
    NestedList(Where),
    /// A field of the wrong type or shape.
    #[error("{at}: {path} is malformed: {source}")]
    Malformed {
        /// The policy.
        at: Where,
        /// The field, as `spec.ingress[0].ports`.
        path: String,
        /// What serde found wrong.
        #[source]
        source: serde_json::Error,
    },
    /// A required field is missing.
    #[error("{at}: {field} is missing; {hint}")]
    Missing {
        /// The policy.
        at: Where,
        /// The field.
        field: &'static str,
        /// What to put there.
        hint: &'static str,
    },
    /// A named port (`port: http`).
    #[error("{at}: {path} {name:?} is a named port; vswitch needs a number")]
    NamedPort {
        /// The policy.
        at: Where,
        /// The field.
        path: String,
        /// The name.
        name: String,
    },
    /// A port number out of range.
    #[error("{at}: {path} {value} is not a port; use 1 to 65535")]
    Port {
        /// The policy.
        at: Where,
        /// The field.
        path: String,
        /// The number as written.
        value: String,
    },
    /// `endPort` without `port`.
    #[error("{at}: {path}.endPort needs {path}.port, the first port of the range")]
    EndPortAlone {
        /// The policy.
        at: Where,
        /// The port entry.
        path: String,
    },
    /// `endPort` below `port`.
    #[error(
        "{at}: {path}.endPort {end} is below port {port}; endPort is the last port of the range"
    )]
    EndPortBelow {
        /// The policy.
        at: Where,
        /// The port entry.
        path: String,
        /// `port`.
        port: u16,
        /// `endPort`.
        end: u16,
    },
    /// A protocol other than TCP, UDP and SCTP.
    #[error("{at}: {path} {value:?} is not TCP, UDP or SCTP")]
    Protocol {
        /// The policy.
        at: Where,
        /// The field.
        path: String,
        /// The protocol.
        value: String,
    },
    /// An unknown `matchExpressions` operator.
    #[error("{at}: {path} {value:?} is not In, NotIn, Exists or DoesNotExist")]
    Operator {
        /// The policy.
        at: Where,
        /// The field.
        path: String,
        /// The operator.
        value: String,
    },
    /// An unknown policy type.
    #[error("{at}: {path} {value:?} is not Ingress or Egress")]
    PolicyType {
        /// The policy.
        at: Where,
        /// The field.
        path: String,
        /// The type.
        value: String,
    },
    /// A CIDR that does not parse.
    #[error("{at}: {path} {value:?} is not a CIDR such as 10.0.0.0/8 or fd00::/64")]
    Cidr {
        /// The policy.
        at: Where,
        /// The field.
        path: String,
        /// The text.
        value: String,
    },
    /// A peer with `ipBlock` and a selector.
    #[error("{at}: {path} has ipBlock together with podSelector or namespaceSelector; a peer is one or the other, so make them two peers")]
    IpBlockWithSelector {
        /// The policy.
        at: Where,
        /// The peer.
        path: String,
    },
    /// A peer with nothing in it.
    #[error("{at}: {path} names no peer; give it podSelector, namespaceSelector or ipBlock (or leave the list out to allow everyone)")]
    EmptyPeer {
        /// The policy.
        at: Where,
        /// The peer.
        path: String,
    },
    /// Refused by [`Policy::check`].
    #[error("{at}: {source}")]
    Invalid {
        /// The policy.
        at: Where,
        /// What the check refused.
        #[source]
        source: PolicyError,
    },
    /// The same name twice in a namespace.
    #[error("{at}: namespace {namespace:?} already has this NetworkPolicy in {first}; the file is applied as one set, so give each policy of a namespace its own name")]
    Duplicate {
        /// The second one.
        at: Where,
        /// The first one.
        first: Where,
        /// Their namespace.
        namespace: String,
    },
}

/// Reads every NetworkPolicy of `text` (see the module doc), or refuses
/// the file whole with the first error. A file with no document gives no
/// policy.
pub fn parse(text: &str) -> Result<Vec<Policy>, K8sPolicyError> {
    if text.len() > MAX_TEXT {
        return Err(K8sPolicyError::TooLarge(text.len()));
    }
    let mut objects = Vec::new();
    for (i, doc) in documents(text)?.into_iter().enumerate() {
        let at = Where {
            document: i + 1,
            item: None,
            name: None,
        };
        match kind(&at, &doc)? {
            Kind::Policy => objects.push((at, doc)),
            Kind::List { typed } => {
                let mut doc = doc;
                let items = match doc.get_mut("items").map(Value::take) {
                    None | Some(Value::Null) => Vec::new(),
                    Some(items) => malformed(&at, "items", Vec::<Value>::deserialize(items))?,
                };
                for (j, item) in items.into_iter().enumerate() {
                    let at = Where {
                        item: Some(j),
                        ..at.clone()
                    };
                    match item_kind(&at, &item, typed)? {
                        Kind::Policy => objects.push((at, item)),
                        Kind::List { .. } => return Err(K8sPolicyError::NestedList(at)),
                    }
                    if objects.len() > MAX_DOCUMENTS {
                        return Err(K8sPolicyError::TooMany);
                    }
                }
            }
        }
        if objects.len() > MAX_DOCUMENTS {
            return Err(K8sPolicyError::TooMany);
        }
    }
    let mut seen: HashMap<(String, String), Where> = HashMap::new();
    let mut policies = Vec::with_capacity(objects.len());
    for (at, object) in objects {
        let (at, namespace, policy) = network_policy(at, object)?;
        match seen.entry((namespace, policy.name.clone())) {
            Entry::Occupied(first) => {
                return Err(K8sPolicyError::Duplicate {
                    at,
                    first: first.get().clone(),
                    namespace: first.key().0.clone(),
                })
            }
            Entry::Vacant(v) => {
                v.insert(at);
            }
        }
        policies.push(policy);
    }
    Ok(policies)
}

/// The documents of the file, parsed within the budgets: JSON when it
/// starts with `{`, as kubectl decides, YAML otherwise.
fn documents(text: &str) -> Result<Vec<Value>, K8sPolicyError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    if text.trim_start().starts_with('{') {
        json_documents(text)
    } else {
        yaml_documents(text)
    }
}

/// Concatenated JSON values, as kubectl reads them. serde_json's own
/// recursion limit bounds their depth.
fn json_documents(text: &str) -> Result<Vec<Value>, K8sPolicyError> {
    let mut docs = Vec::new();
    for doc in serde_json::Deserializer::from_str(text).into_iter::<Value>() {
        if docs.len() == MAX_DOCUMENTS {
            return Err(K8sPolicyError::TooMany);
        }
        docs.push(doc.map_err(K8sPolicyError::Json)?);
    }
    Ok(docs)
}

fn yaml_documents(text: &str) -> Result<Vec<Value>, K8sPolicyError> {
    use serde_saphyr::budget::BudgetBreach;
    use serde_saphyr::Error;

    let options = serde_saphyr::options! {
        budget: serde_saphyr::budget! {
            max_documents: MAX_DOCUMENTS,
            max_depth: MAX_DEPTH,
            max_anchors: MAX_ANCHORS,
            max_aliases: MAX_ANCHORS,
            max_merge_keys: MAX_ANCHORS,
            max_nodes: MAX_NODES,
            max_events: 2 * MAX_NODES + 4 * MAX_DOCUMENTS,
            max_total_scalar_bytes: 2 * MAX_TEXT,
            max_recorded_anchor_events: MAX_NODES,
            max_recorded_anchor_bytes: MAX_TEXT,
        },
        alias_limits: serde_saphyr::alias_limits! {
            max_total_replayed_events: MAX_NODES,
            max_replay_stack_depth: 16,
        },
        duplicate_keys: serde_saphyr::DuplicateKeyPolicy::Error,
        with_snippet: false,
    };
    serde_saphyr::from_multiple_with_options::<Value>(text, options).map_err(|e| {
        // The breach itself, under the alias and snippet it may be told with.
        let mut cause = &e;
        while let Error::AliasError { error, .. } | Error::WithSnippet { error, .. } = cause {
            cause = error;
        }
        match cause {
            Error::Budget {
                breach: BudgetBreach::Documents { .. },
                ..
            } => K8sPolicyError::TooMany,
            Error::Budget { .. }
            | Error::AliasReplayLimitExceeded { .. }
            | Error::AliasExpansionLimitExceeded { .. }
            | Error::AliasReplayStackDepthExceeded { .. } => K8sPolicyError::YamlLimit(e),
            _ => K8sPolicyError::Yaml(e),
        }
    })
}

enum Kind {
    Policy,
    /// A `List` (items carry their own apiVersion and kind) or a
    /// `NetworkPolicyList` (`typed`: items may leave them out).
    List {
        typed: bool,
    },
}

/// Text from the file as an error quotes it: at most [`CLIP`] characters.
fn clip(text: &str) -> String {
    match text.char_indices().nth(CLIP) {
        Some((end, _)) => format!("{}...", &text[..end]),
        None => text.to_string(),
    }
}

fn quoted(v: Option<&Value>) -> String {
    match v {
        None | Some(Value::Null) => "(missing)".to_string(),
        Some(Value::String(s)) => format!("{:?}", clip(s)),
        Some(other) => clip(&other.to_string()),
    }
}

/// What a document is, with its apiVersion checked.
fn kind(at: &Where, doc: &Value) -> Result<Kind, K8sPolicyError> {
    let Value::Object(object) = doc else {
        return Err(K8sPolicyError::NotAnObject(at.clone()));
    };
    let kind = object.get("kind");
    let found = match kind.and_then(Value::as_str) {
        Some("NetworkPolicy") => Kind::Policy,
        Some("List") => Kind::List { typed: false },
        Some("NetworkPolicyList") => Kind::List { typed: true },
        _ => {
            return Err(K8sPolicyError::Kind {
                at: at.clone(),
                kind: quoted(kind),
            })
        }
    };
    // `List` is the core group's (`v1`); kubectl writes it and nothing
    // else reads its version, so any is taken.
    if !matches!(found, Kind::List { typed: false }) {
        check_api_version(at, object.get("apiVersion"), false)?;
    }
    Ok(found)
}

/// What a List item is: items of a NetworkPolicyList may leave out their
/// apiVersion and kind, as the API server's list answers do.
fn item_kind(at: &Where, item: &Value, typed: bool) -> Result<Kind, K8sPolicyError> {
    let Value::Object(object) = item else {
        return Err(K8sPolicyError::NotAnObject(at.clone()));
    };
    if typed && object.get("kind").is_none() {
        check_api_version(at, object.get("apiVersion"), true)?;
        return Ok(Kind::Policy);
    }
    kind(at, item)
}

fn check_api_version(
    at: &Where,
    version: Option<&Value>,
    may_miss: bool,
) -> Result<(), K8sPolicyError> {
    match version {
        Some(Value::String(v)) if v == API_VERSION => Ok(()),
        None if may_miss => Ok(()),
        other => Err(K8sPolicyError::ApiVersion {
            at: at.clone(),
            api_version: quoted(other),
        }),
    }
}

/// Deserializes `value`'s typed form, naming the field serde refuses.
fn deserialize_at<T: DeserializeOwned>(at: &Where, value: Value) -> Result<T, K8sPolicyError> {
    serde_path_to_error::deserialize(value).map_err(|e| K8sPolicyError::Malformed {
        at: at.clone(),
        path: e.path().to_string(),
        source: e.into_inner(),
    })
}

fn malformed<T>(
    at: &Where,
    path: &str,
    result: Result<T, serde_json::Error>,
) -> Result<T, K8sPolicyError> {
    result.map_err(|source| K8sPolicyError::Malformed {
        at: at.clone(),
        path: path.to_string(),
        source,
    })
}

/// One NetworkPolicy object, mapped and checked, with its namespace; its
/// [`Where`] now has its name.
fn network_policy(mut at: Where, object: Value) -> Result<(Where, String, Policy), K8sPolicyError> {
    at.name = object
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .map(clip);
    let object: Object = deserialize_at(&at, object)?;
    let metadata = object.metadata.unwrap_or_default();
    let Some(name) = metadata.name else {
        return Err(K8sPolicyError::Missing {
            at,
            field: "metadata.name",
            hint: "every NetworkPolicy needs a name",
        });
    };
    let Some(network) = metadata.namespace else {
        return Err(K8sPolicyError::Missing {
            at,
            field: "metadata.namespace",
            hint: "vswitch applies a NetworkPolicy to the network its namespace names, so set it to the network's name",
        });
    };
    let spec = object.spec.unwrap_or_default();
    let Some(pod_selector) = &spec.pod_selector else {
        return Err(K8sPolicyError::Missing {
            at,
            field: "spec.podSelector",
            hint: "use podSelector: {} to select every container of the network",
        });
    };
    let pod_selector = selector(&at, "spec.podSelector", pod_selector)?;

    // Without policyTypes the API server sets Ingress, and Egress when
    // there are egress rules.
    let (mut ingress_on, mut egress_on) = (false, false);
    match spec.policy_types.as_deref() {
        None | Some([]) => {
            ingress_on = true;
            egress_on = spec.egress.as_ref().is_some_and(|e| !e.is_empty());
        }
        Some(types) => {
            for (i, t) in types.iter().enumerate() {
                match t.as_str() {
                    "Ingress" => ingress_on = true,
                    "Egress" => egress_on = true,
                    _ => {
                        return Err(K8sPolicyError::PolicyType {
                            at,
                            path: format!("spec.policyTypes[{i}]"),
                            value: clip(t),
                        })
                    }
                }
            }
        }
    }
    // Rules of a type the policy does not have are checked all the same,
    // as the API server does, and then left out.
    let ingress = spec
        .ingress
        .unwrap_or_default()
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let path = format!("spec.ingress[{i}]");
            rule(&at, &path, "from", r.from.as_deref(), r.ports.as_deref())
        })
        .collect::<Result<Vec<_>, _>>()?;
    let egress = spec
        .egress
        .unwrap_or_default()
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let path = format!("spec.egress[{i}]");
            rule(&at, &path, "to", r.to.as_deref(), r.ports.as_deref())
        })
        .collect::<Result<Vec<_>, _>>()?;

    let policy = Policy {
        name,
        rule: Rule::Kubernetes(NetworkPolicy {
            network: network.clone(),
            pod_selector,
            ingress: ingress_on.then_some(ingress),
            egress: egress_on.then_some(egress),
        }),
    };
    if let Err(source) = policy.check() {
        return Err(K8sPolicyError::Invalid { at, source });
    }
    Ok((at, network, policy))
}

fn rule(
    at: &Where,
    path: &str,
    side: &str,
    peers: Option<&[PeerObject]>,
    ports: Option<&[PortObject]>,
) -> Result<K8sRule, K8sPolicyError> {
    let peers = peers
        .unwrap_or_default()
        .iter()
        .enumerate()
        .map(|(i, p)| peer(at, &format!("{path}.{side}[{i}]"), p))
        .collect::<Result<_, _>>()?;
    let ports = ports
        .unwrap_or_default()
        .iter()
        .enumerate()
        .map(|(i, p)| port_range(at, &format!("{path}.ports[{i}]"), p))
        .collect::<Result<_, _>>()?;
    Ok(K8sRule { peers, ports })
}

fn peer(at: &Where, path: &str, p: &PeerObject) -> Result<K8sPeer, K8sPolicyError> {
    match (&p.ip_block, &p.namespace_selector, &p.pod_selector) {
        (Some(block), None, None) => {
            let block_cidr = cidr(at, &format!("{path}.ipBlock.cidr"), &block.cidr)?;
            let except = block
                .except
                .as_deref()
                .unwrap_or_default()
                .iter()
                .enumerate()
                .map(|(i, e)| cidr(at, &format!("{path}.ipBlock.except[{i}]"), e))
                .collect::<Result<_, _>>()?;
            Ok(K8sPeer::IpBlock {
                cidr: block_cidr,
                except,
            })
        }
        (Some(_), _, _) => Err(K8sPolicyError::IpBlockWithSelector {
            at: at.clone(),
            path: path.to_string(),
        }),
        (None, None, None) => Err(K8sPolicyError::EmptyPeer {
            at: at.clone(),
            path: path.to_string(),
        }),
        (None, networks, pods) => Ok(K8sPeer::Pods {
            networks: networks
                .as_ref()
                .map(|s| selector(at, &format!("{path}.namespaceSelector"), s))
                .transpose()?,
            pods: pods
                .as_ref()
                .map(|s| selector(at, &format!("{path}.podSelector"), s))
                .transpose()?,
        }),
    }
}

fn cidr(at: &Where, path: &str, text: &str) -> Result<IpNet, K8sPolicyError> {
    text.parse().map_err(|_| K8sPolicyError::Cidr {
        at: at.clone(),
        path: path.to_string(),
        value: clip(text),
    })
}

fn selector(
    at: &Where,
    path: &str,
    s: &LabelSelectorObject,
) -> Result<LabelSelector, K8sPolicyError> {
    let match_expressions = s
        .match_expressions
        .as_deref()
        .unwrap_or_default()
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let operator = match e.operator.as_str() {
                "In" => LabelOp::In,
                "NotIn" => LabelOp::NotIn,
                "Exists" => LabelOp::Exists,
                "DoesNotExist" => LabelOp::DoesNotExist,
                _ => {
                    return Err(K8sPolicyError::Operator {
                        at: at.clone(),
                        path: format!("{path}.matchExpressions[{i}].operator"),
                        value: clip(&e.operator),
                    })
                }
            };
            Ok(LabelExpr {
                key: e.key.clone(),
                operator,
                values: e.values.clone().unwrap_or_default(),
            })
        })
        .collect::<Result<_, _>>()?;
    Ok(LabelSelector {
        match_labels: s.match_labels.clone().unwrap_or_default(),
        match_expressions,
    })
}

/// A `ports[]` entry: TCP unless said; no `port` is every port.
fn port_range(at: &Where, path: &str, p: &PortObject) -> Result<PortRange, K8sPolicyError> {
    let proto = match p.protocol.as_deref() {
        None | Some("TCP") => Proto::Tcp,
        Some("UDP") => Proto::Udp,
        Some("SCTP") => Proto::Sctp,
        Some(other) => {
            return Err(K8sPolicyError::Protocol {
                at: at.clone(),
                path: format!("{path}.protocol"),
                value: clip(other),
            })
        }
    };
    let number = |field: &str, value: &PortValue| -> Result<u16, K8sPolicyError> {
        let text = match value {
            PortValue::Number(n) => n.to_string(),
            PortValue::Text(t) => t.clone(),
        };
        match text.parse::<u16>() {
            Ok(n) if n > 0 && !text.starts_with('+') => Ok(n),
            _ => Err(K8sPolicyError::Port {
                at: at.clone(),
                path: format!("{path}.{field}"),
                value: clip(&text),
            }),
        }
    };
    let first = match &p.port {
        None if p.end_port.is_some() => {
            return Err(K8sPolicyError::EndPortAlone {
                at: at.clone(),
                path: path.to_string(),
            })
        }
        None => {
            return Ok(PortRange {
                proto,
                first: 1,
                last: u16::MAX,
            })
        }
        // Kubernetes' port names hold a letter; its numbers none.
        Some(PortValue::Text(t)) if t.bytes().any(|b| b.is_ascii_alphabetic()) => {
            return Err(K8sPolicyError::NamedPort {
                at: at.clone(),
                path: format!("{path}.port"),
                name: clip(t),
            })
        }
        Some(port) => number("port", port)?,
    };
    let last = match &p.end_port {
        None => first,
        Some(end) => {
            let end = number("endPort", end)?;
            if end < first {
                return Err(K8sPolicyError::EndPortBelow {
                    at: at.clone(),
                    path: path.to_string(),
                    port: first,
                    end,
                });
            }
            end
        }
    };
    Ok(PortRange { proto, first, last })
}

// The API's types, with its field names; what vswitch does not read is
// left out and ignored.

#[derive(Debug, Deserialize)]
struct Object {
    metadata: Option<ObjectMeta>,
    spec: Option<NetworkPolicySpec>,
}

#[derive(Debug, Default, Deserialize)]
struct ObjectMeta {
    name: Option<String>,
    namespace: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct NetworkPolicySpec {
    pod_selector: Option<LabelSelectorObject>,
    policy_types: Option<Vec<String>>,
    ingress: Option<Vec<IngressRule>>,
    egress: Option<Vec<EgressRule>>,
}

#[derive(Debug, Deserialize)]
struct IngressRule {
    from: Option<Vec<PeerObject>>,
    ports: Option<Vec<PortObject>>,
}

#[derive(Debug, Deserialize)]
struct EgressRule {
    to: Option<Vec<PeerObject>>,
    ports: Option<Vec<PortObject>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PeerObject {
    pod_selector: Option<LabelSelectorObject>,
    namespace_selector: Option<LabelSelectorObject>,
    ip_block: Option<IpBlock>,
}

#[derive(Debug, Deserialize)]
struct IpBlock {
    cidr: String,
    except: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PortObject {
    protocol: Option<String>,
    port: Option<PortValue>,
    end_port: Option<PortValue>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct LabelSelectorObject {
    match_labels: Option<BTreeMap<String, String>>,
    match_expressions: Option<Vec<Requirement>>,
}

#[derive(Debug, Deserialize)]
struct Requirement {
    key: String,
    operator: String,
    values: Option<Vec<String>>,
}

/// A port as the API writes it: a number, or a name (IntOrString), or a
/// number written as a string.
#[derive(Debug)]
enum PortValue {
    Number(i64),
    Text(String),
}

impl<'de> Deserialize<'de> for PortValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct PortVisitor;
        impl Visitor<'_> for PortVisitor {
            type Value = PortValue;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a port number")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<PortValue, E> {
                Ok(PortValue::Number(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<PortValue, E> {
                i64::try_from(v)
                    .map(PortValue::Number)
                    .map_err(|_| E::invalid_value(Unexpected::Unsigned(v), &self))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<PortValue, E> {
                Ok(PortValue::Text(v.to_string()))
            }
        }
        d.deserialize_any(PortVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn select(pairs: &[(&str, &str)]) -> LabelSelector {
        LabelSelector {
            match_labels: labels(pairs),
            match_expressions: vec![],
        }
    }

    fn block(cidr: &str, except: &[&str]) -> K8sPeer {
        K8sPeer::IpBlock {
            cidr: cidr.parse().unwrap(),
            except: except.iter().map(|e| e.parse().unwrap()).collect(),
        }
    }

    fn tcp(first: u16, last: u16) -> PortRange {
        PortRange {
            proto: Proto::Tcp,
            first,
            last,
        }
    }

    fn kubernetes(name: &str, np: NetworkPolicy) -> Policy {
        Policy {
            name: name.into(),
            rule: Rule::Kubernetes(np),
        }
    }

    /// The one policy of `text`.
    fn one(text: &str) -> NetworkPolicy {
        let mut policies = parse(text).unwrap();
        assert_eq!(policies.len(), 1);
        match policies.remove(0).rule {
            Rule::Kubernetes(np) => np,
            other => panic!("not a NetworkPolicy: {other:?}"),
        }
    }

    fn refusal(text: &str) -> String {
        parse(text).unwrap_err().to_string()
    }

    // The documentation's example, as it is written there.
    const TEST_NETWORK_POLICY: &str = "\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: test-network-policy
  namespace: default
spec:
  podSelector:
    matchLabels:
      role: db
  policyTypes:
  - Ingress
  - Egress
  ingress:
  - from:
    - ipBlock:
        cidr: 172.17.0.0/16
        except:
        - 172.17.1.0/24
    - namespaceSelector:
        matchLabels:
          project: myproject
    - podSelector:
        matchLabels:
          role: frontend
    ports:
    - protocol: TCP
      port: 6379
  egress:
  - to:
    - ipBlock:
        cidr: 10.0.0.0/24
    ports:
    - protocol: TCP
      port: 5978
";

    #[test]
    fn the_documentation_example_maps_field_by_field() {
        let policies = parse(TEST_NETWORK_POLICY).unwrap();
        assert_eq!(
            policies,
            vec![kubernetes(
                "test-network-policy",
                NetworkPolicy {
                    network: "default".into(),
                    pod_selector: select(&[("role", "db")]),
                    ingress: Some(vec![K8sRule {
                        peers: vec![
                            block("172.17.0.0/16", &["172.17.1.0/24"]),
                            K8sPeer::Pods {
                                networks: Some(select(&[("project", "myproject")])),
                                pods: None,
                            },
                            K8sPeer::Pods {
                                networks: None,
                                pods: Some(select(&[("role", "frontend")])),
                            },
                        ],
                        ports: vec![tcp(6379, 6379)],
                    }]),
                    egress: Some(vec![K8sRule {
                        peers: vec![block("10.0.0.0/24", &[])],
                        ports: vec![tcp(5978, 5978)],
                    }]),
                },
            )]
        );
    }

    const DEFAULT_DENY_INGRESS: &str = "\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: default-deny-ingress
  namespace: web
spec:
  podSelector: {}
  policyTypes:
  - Ingress
";

    #[test]
    fn default_deny_ingress_isolates_every_container_for_ingress_only() {
        assert_eq!(
            one(DEFAULT_DENY_INGRESS),
            NetworkPolicy {
                network: "web".into(),
                pod_selector: LabelSelector::default(),
                ingress: Some(vec![]),
                egress: None,
            }
        );
    }

    #[test]
    fn allow_all_ingress_is_one_rule_for_everyone_on_every_port() {
        let np = one("\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: allow-all-ingress
  namespace: web
spec:
  podSelector: {}
  ingress:
  - {}
  policyTypes:
  - Ingress
");
        let everyone = K8sRule {
            peers: vec![],
            ports: vec![],
        };
        assert_eq!(np.ingress, Some(vec![everyone]));
        assert_eq!(np.egress, None);
    }

    #[test]
    fn default_deny_egress_isolates_for_egress_only() {
        let np = one("\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: default-deny-egress
  namespace: web
spec:
  podSelector: {}
  policyTypes:
  - Egress
");
        assert_eq!((np.ingress, np.egress), (None, Some(vec![])));
    }

    #[test]
    fn end_port_makes_a_range() {
        let np = one("\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: multi-port-egress
  namespace: default
spec:
  podSelector:
    matchLabels:
      role: db
  policyTypes:
    - Egress
  egress:
    - to:
        - ipBlock:
            cidr: 10.0.0.0/24
      ports:
        - protocol: TCP
          port: 32000
          endPort: 32768
");
        assert_eq!(
            np.egress,
            Some(vec![K8sRule {
                peers: vec![block("10.0.0.0/24", &[])],
                ports: vec![tcp(32000, 32768)],
            }])
        );
        assert_eq!(np.ingress, None);
    }

    #[rstest]
    // No policyTypes: Ingress always, Egress when there are egress rules.
    #[case("ingress: [{}]", true, false)]
    #[case("egress: [{}]", true, true)]
    #[case("egress: []", true, false)]
    #[case("policyTypes: []\n  egress: [{}]", true, true)]
    #[case("policyTypes: [Egress]\n  ingress: [{}]", false, true)]
    #[case("policyTypes: [Ingress, Egress]", true, true)]
    fn policy_types_default_as_the_api_server_sets_them(
        #[case] spec: &str,
        #[case] ingress: bool,
        #[case] egress: bool,
    ) {
        let np = one(&format!(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n\
             metadata: {{name: p, namespace: web}}\nspec:\n  podSelector: {{}}\n  {spec}\n"
        ));
        assert_eq!(
            (np.ingress.is_some(), np.egress.is_some()),
            (ingress, egress)
        );
    }

    #[test]
    fn selectors_ports_and_protocols_map_exactly() {
        let np = one("\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: db, namespace: back}
spec:
  podSelector:
    matchLabels: {app: db}
    matchExpressions:
    - {key: tier, operator: In, values: [data, cache]}
    - {key: canary, operator: DoesNotExist}
  ingress:
  - from:
    - namespaceSelector:
        matchLabels:
          kubernetes.io/metadata.name: front
      podSelector:
        matchExpressions:
        - {key: role, operator: NotIn, values: [batch]}
        - {key: team, operator: Exists}
    ports:
    - port: \"5432\"
    - protocol: UDP
      port: 53
    - protocol: SCTP
    - {}
");
        let expr = |key: &str, operator, values: &[&str]| LabelExpr {
            key: key.into(),
            operator,
            values: values.iter().map(|v| v.to_string()).collect(),
        };
        assert_eq!(
            np.pod_selector,
            LabelSelector {
                match_labels: labels(&[("app", "db")]),
                match_expressions: vec![
                    expr("tier", LabelOp::In, &["data", "cache"]),
                    expr("canary", LabelOp::DoesNotExist, &[]),
                ],
            }
        );
        let proto = |proto, first, last| PortRange { proto, first, last };
        assert_eq!(
            np.ingress,
            Some(vec![K8sRule {
                peers: vec![K8sPeer::Pods {
                    networks: Some(select(&[("kubernetes.io/metadata.name", "front")])),
                    pods: Some(LabelSelector {
                        match_labels: BTreeMap::new(),
                        match_expressions: vec![
                            expr("role", LabelOp::NotIn, &["batch"]),
                            expr("team", LabelOp::Exists, &[]),
                        ],
                    }),
                }],
                ports: vec![
                    tcp(5432, 5432),
                    proto(Proto::Udp, 53, 53),
                    proto(Proto::Sctp, 1, 65535),
                    tcp(1, 65535),
                ],
            }])
        );
    }

    #[test]
    fn documents_of_a_stream_come_in_order_and_empty_ones_are_skipped() {
        let text = format!(
            "---\n{TEST_NETWORK_POLICY}---\n---\n# nothing\n---\n{DEFAULT_DENY_INGRESS}...\n"
        );
        let names: Vec<_> = parse(&text).unwrap().into_iter().map(|p| p.name).collect();
        assert_eq!(names, ["test-network-policy", "default-deny-ingress"]);
        assert_eq!(parse("").unwrap(), vec![]);
        assert_eq!(parse("---\n# only a comment\n").unwrap(), vec![]);
    }

    // What `kubectl get networkpolicy -o yaml` writes: a List whose items
    // carry server fields vswitch does not read.
    #[test]
    fn a_list_is_read_item_by_item_and_server_fields_are_ignored() {
        let text = "\
apiVersion: v1
kind: List
metadata:
  resourceVersion: \"\"
items:
- apiVersion: networking.k8s.io/v1
  kind: NetworkPolicy
  metadata:
    annotations:
      kubectl.kubernetes.io/last-applied-configuration: |
        {\"apiVersion\":\"networking.k8s.io/v1\",\"kind\":\"NetworkPolicy\"}
    creationTimestamp: \"2024-05-01T10:00:00Z\"
    generation: 1
    managedFields:
    - apiVersion: networking.k8s.io/v1
      fieldsType: FieldsV1
      fieldsV1:
        f:spec:
          f:podSelector: {}
          f:policyTypes: {}
      manager: kubectl-client-side-apply
      operation: Update
    name: default-deny-ingress
    namespace: web
    uid: 8d4d1a2c-0000-4000-8000-000000000000
  spec:
    podSelector: {}
    policyTypes:
    - Ingress
  status: {}
- apiVersion: networking.k8s.io/v1
  kind: NetworkPolicy
  metadata: {name: default-deny-ingress, namespace: back}
  spec: {podSelector: {}}
";
        let policies = parse(text).unwrap();
        assert_eq!(
            policies,
            [parse(DEFAULT_DENY_INGRESS).unwrap(), {
                let mut p = parse(DEFAULT_DENY_INGRESS).unwrap();
                if let Rule::Kubernetes(np) = &mut p[0].rule {
                    np.network = "back".into();
                }
                p
            }]
            .concat()
        );
        let list = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicyList\nitems:\n\
                    - metadata: {name: a, namespace: web}\n  spec: {podSelector: {}}\n";
        assert_eq!(one(list).network, "web");
        assert_eq!(
            parse("apiVersion: v1\nkind: List\nitems: []\n").unwrap(),
            vec![]
        );
    }

    #[test]
    fn json_is_read_as_kubectl_writes_it() {
        let json = r#"{
    "apiVersion": "v1",
    "kind": "List",
    "items": [
        {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": {"name": "multi-port-egress", "namespace": "default"},
            "spec": {
                "podSelector": {"matchLabels": {"role": "db"}},
                "policyTypes": ["Egress"],
                "egress": [{
                    "to": [{"ipBlock": {"cidr": "10.0.0.0/24"}}],
                    "ports": [{"protocol": "TCP", "port": 32000, "endPort": 32768}]
                }]
            },
            "status": {}
        }
    ]
}"#;
        let np = one(json);
        assert_eq!(np.pod_selector, select(&[("role", "db")]));
        assert_eq!(np.egress.unwrap()[0].ports, [tcp(32000, 32768)]);
        // Concatenated objects are documents, as for kubectl.
        let two = r#"{"apiVersion":"networking.k8s.io/v1","kind":"NetworkPolicy",
            "metadata":{"name":"a","namespace":"web"},"spec":{"podSelector":{}}}
            {"apiVersion":"networking.k8s.io/v1","kind":"NetworkPolicy",
            "metadata":{"name":"b","namespace":"web"},"spec":{"podSelector":{}}}"#;
        assert_eq!(parse(two).unwrap().len(), 2);
        let err = refusal(r#"{"apiVersion": "networking.k8s.io/v1",}"#);
        assert!(err.starts_with("the policy file starts with '{', so it is read as JSON, and it is not JSON: trailing comma at line 1 column 39"), "{err}");
    }

    const HEAD: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n";

    #[rstest]
    #[case::wrong_api_version(
        "apiVersion: networking.k8s.io/v1beta1\nkind: NetworkPolicy\nmetadata: {name: p}\n",
        "document 1: apiVersion \"networking.k8s.io/v1beta1\" is not networking.k8s.io/v1"
    )]
    #[case::missing_api_version(
        "kind: NetworkPolicy\n",
        "document 1: apiVersion (missing) is not networking.k8s.io/v1"
    )]
    #[case::wrong_kind(
        "apiVersion: v1\nkind: Service\nmetadata: {name: s}\n",
        "document 1: kind \"Service\" is not NetworkPolicy"
    )]
    #[case::not_an_object("- kind: NetworkPolicy\n", "document 1 is not an object")]
    #[case::missing_name(
        "metadata: {namespace: web}\nspec: {podSelector: {}}\n",
        "document 1: metadata.name is missing"
    )]
    #[case::missing_pod_selector(
        "metadata: {name: p, namespace: web}\nspec: {}\n",
        "document 1 (NetworkPolicy \"p\"): spec.podSelector is missing; use podSelector: {}"
    )]
    #[case::ip_block_and_selector(
        "metadata: {name: p, namespace: web}\nspec:\n  podSelector: {}\n  ingress:\n  - from:\n    \
         - ipBlock: {cidr: 10.0.0.0/8}\n      podSelector: {}\n",
        "document 1 (NetworkPolicy \"p\"): spec.ingress[0].from[0] has ipBlock together with \
         podSelector or namespaceSelector"
    )]
    #[case::empty_peer(
        "metadata: {name: p, namespace: web}\nspec:\n  podSelector: {}\n  egress:\n  - to: [{}]\n",
        "spec.egress[0].to[0] names no peer"
    )]
    #[case::end_port_below_port(
        "metadata: {name: p, namespace: web}\nspec:\n  podSelector: {}\n  ingress:\n  - ports:\n    \
         - {port: 8080, endPort: 80}\n",
        "spec.ingress[0].ports[0].endPort 80 is below port 8080"
    )]
    #[case::end_port_alone(
        "metadata: {name: p, namespace: web}\nspec:\n  podSelector: {}\n  ingress:\n  - ports:\n    \
         - {endPort: 80}\n",
        "spec.ingress[0].ports[0].endPort needs spec.ingress[0].ports[0].port"
    )]
    #[case::port_out_of_range(
        "metadata: {name: p, namespace: web}\nspec:\n  podSelector: {}\n  ingress:\n  - ports:\n    \
         - {port: 70000}\n",
        "spec.ingress[0].ports[0].port 70000 is not a port; use 1 to 65535"
    )]
    #[case::port_zero(
        "metadata: {name: p, namespace: web}\nspec:\n  podSelector: {}\n  ingress:\n  - ports:\n    \
         - {port: \"0\"}\n",
        "spec.ingress[0].ports[0].port 0 is not a port"
    )]
    #[case::named_port_with_a_digit(
        "metadata: {name: p, namespace: web}\nspec:\n  podSelector: {}\n  ingress:\n  - ports:\n    \
         - {port: http2}\n",
        "spec.ingress[0].ports[0].port \"http2\" is a named port; vswitch needs a number"
    )]
    #[case::end_port_not_a_number(
        "metadata: {name: p, namespace: web}\nspec:\n  podSelector: {}\n  ingress:\n  - ports:\n    \
         - {port: 80, endPort: \"+90\"}\n",
        "spec.ingress[0].ports[0].endPort +90 is not a port"
    )]
    #[case::port_not_a_number(
        "metadata: {name: p, namespace: web}\nspec:\n  podSelector: {}\n  ingress:\n  - ports:\n    \
         - {port: [80]}\n",
        "spec.ingress[0].ports[0].port is malformed: invalid type: sequence, expected a port number"
    )]
    #[case::protocol(
        "metadata: {name: p, namespace: web}\nspec:\n  podSelector: {}\n  ingress:\n  - ports:\n    \
         - {protocol: tcp, port: 80}\n",
        "spec.ingress[0].ports[0].protocol \"tcp\" is not TCP, UDP or SCTP"
    )]
    #[case::host_bits(
        "metadata: {name: p, namespace: web}\nspec:\n  podSelector: {}\n  ingress:\n  - from:\n    \
         - ipBlock: {cidr: 172.17.0.1/16}\n",
        "document 1 (NetworkPolicy \"p\"): 172.17.0.1/16 has host bits set; did you mean 172.17.0.0/16?"
    )]
    #[case::not_a_cidr(
        "metadata: {name: p, namespace: web}\nspec:\n  podSelector: {}\n  ingress:\n  - from:\n    \
         - ipBlock: {cidr: 172.17.0.0, except: [x]}\n",
        "spec.ingress[0].from[0].ipBlock.cidr \"172.17.0.0\" is not a CIDR"
    )]
    #[case::except_outside(
        "metadata: {name: p, namespace: web}\nspec:\n  podSelector: {}\n  ingress:\n  - from:\n    \
         - ipBlock: {cidr: 10.0.0.0/8, except: [192.168.0.0/16]}\n",
        "ipBlock except 192.168.0.0/16 is not inside 10.0.0.0/8"
    )]
    #[case::operator(
        "metadata: {name: p, namespace: web}\nspec:\n  podSelector:\n    matchExpressions:\n    \
         - {key: a, operator: Equals, values: [b]}\n",
        "spec.podSelector.matchExpressions[0].operator \"Equals\" is not In, NotIn, Exists or \
         DoesNotExist"
    )]
    #[case::exists_with_values(
        "metadata: {name: p, namespace: web}\nspec:\n  podSelector:\n    matchExpressions:\n    \
         - {key: a, operator: Exists, values: [b]}\n",
        "matchExpressions for \"a\": In and NotIn need values"
    )]
    #[case::policy_type(
        "metadata: {name: p, namespace: web}\nspec:\n  podSelector: {}\n  policyTypes: [ingress]\n",
        "spec.policyTypes[0] \"ingress\" is not Ingress or Egress"
    )]
    #[case::wrong_type(
        "metadata: {name: p, namespace: web}\nspec:\n  podSelector: {}\n  ingress:\n  - ports: 80\n",
        "document 1 (NetworkPolicy \"p\"): spec.ingress[0].ports is malformed: invalid type"
    )]
    #[case::label_value_not_a_string(
        "metadata: {name: p, namespace: web}\nspec:\n  podSelector:\n    matchLabels: {a: [1]}\n",
        "spec.podSelector.matchLabels.a is malformed"
    )]
    #[case::missing_cidr(
        "metadata: {name: p, namespace: web}\nspec:\n  podSelector: {}\n  ingress:\n  - from:\n    \
         - ipBlock: {except: []}\n",
        "spec.ingress[0].from[0].ipBlock is malformed: missing field `cidr`"
    )]
    #[case::bad_network_name(
        "metadata: {name: p, namespace: \"my net\"}\nspec: {podSelector: {}}\n",
        "network \"my net\" is not a valid name"
    )]
    fn malformed_policies_are_refused_with_a_sentence_naming_the_field(
        #[case] body: &str,
        #[case] expected: &str,
    ) {
        let text = if body.contains("kind:") {
            body.to_string()
        } else {
            format!("{HEAD}{body}")
        };
        let err = refusal(&text);
        assert!(err.contains(expected), "{err}");
    }

    #[test]
    fn a_named_port_is_refused_in_its_document() {
        let text = format!(
            "{DEFAULT_DENY_INGRESS}---\n{HEAD}metadata: {{name: db, namespace: back}}\nspec:\n  \
             podSelector: {{}}\n  ingress:\n  - ports:\n    - port: 5432\n    - port: http\n"
        );
        assert_eq!(
            refusal(&text),
            "document 2 (NetworkPolicy \"db\"): spec.ingress[0].ports[1].port \"http\" is a \
             named port; vswitch needs a number"
        );
    }

    #[test]
    fn the_documentation_examples_without_a_namespace_are_refused() {
        let text = DEFAULT_DENY_INGRESS.replace("  namespace: web\n", "");
        let err = parse(&text).unwrap_err();
        assert!(
            matches!(
                &err,
                K8sPolicyError::Missing {
                    field: "metadata.namespace",
                    ..
                }
            ),
            "{err}"
        );
        assert_eq!(
            err.to_string(),
            "document 1 (NetworkPolicy \"default-deny-ingress\"): metadata.namespace is missing; \
             vswitch applies a NetworkPolicy to the network its namespace names, so set it to \
             the network's name"
        );
    }

    #[test]
    fn a_name_twice_in_a_namespace_is_refused_but_not_in_two() {
        let other_ns = DEFAULT_DENY_INGRESS.replace("namespace: web", "namespace: back");
        let text = format!("{DEFAULT_DENY_INGRESS}---\n{other_ns}");
        assert_eq!(parse(&text).unwrap().len(), 2);
        let text = format!("{DEFAULT_DENY_INGRESS}---\n{other_ns}---\n{DEFAULT_DENY_INGRESS}");
        assert_eq!(
            refusal(&text),
            "document 3 (NetworkPolicy \"default-deny-ingress\"): namespace \"web\" already has \
             this NetworkPolicy in document 1 (NetworkPolicy \"default-deny-ingress\"); the file \
             is applied as one set, so give each policy of a namespace its own name"
        );
    }

    #[test]
    fn lists_hold_policies_only() {
        let err = refusal("apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: List\n");
        assert_eq!(
            err,
            "document 1, items[0] is a List inside a List; put the NetworkPolicies in the \
             outer List's items"
        );
        let err = refusal("apiVersion: v1\nkind: List\nitems:\n- {kind: NetworkPolicy}\n");
        assert!(
            err.starts_with("document 1, items[0]: apiVersion (missing)"),
            "{err}"
        );
        let err = refusal("apiVersion: v1\nkind: List\nitems: {a: b}\n");
        assert!(err.starts_with("document 1: items is malformed"), "{err}");
    }

    #[test]
    fn the_input_is_bounded() {
        let big = format!("# {}\n", "x".repeat(MAX_TEXT));
        assert!(matches!(parse(&big), Err(K8sPolicyError::TooLarge(n)) if n == big.len()));

        let doc = |i: usize| {
            format!("{HEAD}metadata: {{name: p{i}, namespace: web}}\nspec: {{podSelector: {{}}}}\n")
        };
        let many = |n: usize| (0..n).map(doc).collect::<Vec<_>>().join("---\n");
        assert_eq!(parse(&many(MAX_DOCUMENTS)).unwrap().len(), MAX_DOCUMENTS);
        let err = parse(&many(MAX_DOCUMENTS + 1)).unwrap_err();
        assert!(matches!(err, K8sPolicyError::TooMany), "{err}");
        let items = (0..=MAX_DOCUMENTS)
            .map(|i| format!("- metadata: {{name: p{i}}}\n"))
            .collect::<String>();
        let list =
            format!("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicyList\nitems:\n{items}");
        let err = parse(&list).unwrap_err();
        assert!(matches!(err, K8sPolicyError::TooMany), "{err}");

        // Depth.
        let deep = format!("{HEAD}spec: {}{}\n", "[".repeat(200), "]".repeat(200));
        assert!(matches!(parse(&deep), Err(K8sPolicyError::YamlLimit(_))));
        let deep_json = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        assert!(parse(&format!("{{\"a\": {deep_json}}}")).is_err());
    }

    #[test]
    fn aliases_do_not_multiply_the_input() {
        // Billion laughs: each level ten aliases of the one before.
        let mut text = String::from("a0: &a0 [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n");
        for i in 1..10 {
            let prev = format!("*a{}", i - 1);
            text.push_str(&format!("a{i}: &a{i} [{}]\n", vec![prev; 10].join(",")));
        }
        text.push_str(HEAD);
        assert!(matches!(parse(&text), Err(K8sPolicyError::YamlLimit(_))));

        // One long scalar aliased many times.
        let mut text = format!("x: &x \"{}\"\ny: [", "a".repeat(MAX_TEXT / 2));
        text.push_str(&vec!["*x"; 100].join(","));
        text.push_str("]\n");
        assert!(matches!(parse(&text), Err(K8sPolicyError::YamlLimit(_))));

        // A few aliases, as people write them, are fine.
        let text = format!(
            "{HEAD}metadata: {{name: p, namespace: web}}\nspec:\n  podSelector: &db\n    \
             matchLabels: {{app: db}}\n  ingress:\n  - from:\n    - podSelector: *db\n"
        );
        let np = one(&text);
        assert_eq!(
            np.ingress.unwrap()[0].peers,
            [K8sPeer::Pods {
                networks: None,
                pods: Some(select(&[("app", "db")])),
            }]
        );
    }

    #[test]
    fn errors_quote_at_most_a_line_of_the_file() {
        let long = "x".repeat(10_000);
        let text = format!("{HEAD}metadata: {{name: {long}, namespace: web}}\nspec:\n  podSelector: {{}}\n  ingress:\n  - ports: [{{port: {long}}}]\n");
        let err = refusal(&text);
        let clipped = format!("{}...", &long[..CLIP]);
        assert_eq!(
            err,
            format!("document 1 (NetworkPolicy \"{clipped}\"): spec.ingress[0].ports[0].port \"{clipped}\" is a named port; vswitch needs a number")
        );
    }

    #[test]
    fn duplicate_keys_are_refused() {
        let text = format!(
            "{HEAD}metadata: {{name: a, name: b, namespace: web}}\nspec: {{podSelector: {{}}}}\n"
        );
        assert!(matches!(parse(&text), Err(K8sPolicyError::Yaml(_))));
    }
}
