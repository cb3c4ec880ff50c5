//! `vswitch-cni`, the CNI plugin: a runtime (Podman, containerd,
//! Kubernetes, Nomad) runs it with the `CNI_*` environment and a network
//! configuration on stdin; it asks the local vswitchd over its API
//! (`/v1/cni/*`) and prints the result or error the spec asks for.
//!
//! The attachment itself is vswitchd's (`daemon/controller/cni.rs`): the
//! plugin holds no state, so a DEL after a plugin upgrade, a restart or a
//! crash finds everything where vswitchd keeps it.

pub mod spec;

use serde_json::Value;

use crate::api;
use crate::client::Client;
use spec::{code, CniError, Command, Invocation};

/// What a run prints on stdout and exits with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub stdout: String,
    pub exit: i32,
    /// A line for stderr (the runtime logs it), if any.
    pub log: Option<String>,
}

impl Outcome {
    fn ok(v: Option<Value>) -> Outcome {
        Outcome {
            stdout: v.map(|v| v.to_string()).unwrap_or_default(),
            exit: 0,
            log: None,
        }
    }

    fn error(e: CniError) -> Outcome {
        Outcome {
            stdout: serde_json::to_string(&e).unwrap_or_default(),
            exit: 1,
            log: Some(format!("vswitch-cni: {e}")),
        }
    }
}

/// One invocation, end to end.
pub async fn run(env: &dyn Fn(&str) -> Option<String>, stdin: &[u8]) -> Outcome {
    let inv = match Invocation::parse(env, stdin) {
        Ok(inv) => inv,
        Err(e) => return Outcome::error(e),
    };
    let version = inv.version.clone();
    match handle(&inv).await {
        Ok(o) => o,
        Err(e) => Outcome::error(e.in_version(&version)),
    }
}

/// The daemon's answer to a request: its status and body, or no answer.
enum Answer {
    Unreachable(String),
    Status(u16, Vec<u8>),
}

async fn ask(client: &Client, method: &str, path: &str, body: Vec<u8>) -> Answer {
    match client.raw(method, path, body).await {
        Ok((status, bytes)) => Answer::Status(status, bytes),
        Err(e) => Answer::Unreachable(format!("{e:#}")),
    }
}

/// `POST /v1/cni/VERB` with `body` as JSON.
async fn post(client: &Client, verb: &str, body: &impl serde::Serialize) -> Answer {
    let body = serde_json::to_vec(body).expect("API types serialize");
    ask(client, "POST", &format!("/v1/cni/{verb}"), body).await
}

/// The daemon's error message from its body.
fn message(bytes: &[u8]) -> String {
    serde_json::from_slice::<api::ErrorBody>(bytes)
        .map(|e| e.message)
        .unwrap_or_else(|_| String::from_utf8_lossy(bytes).into_owned())
}

fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, CniError> {
    serde_json::from_slice(bytes).map_err(|e| {
        CniError::new(code::IO, "vswitchd's answer cannot be read").details(e.to_string())
    })
}

fn refused(status: u16, bytes: &[u8]) -> CniError {
    let c = match status {
        400 | 404 => code::INVALID_CONFIG,
        409 => code::REFUSED,
        503 => code::TRY_AGAIN,
        _ => code::IO,
    };
    CniError::new(c, message(bytes))
}

fn unreachable(why: String) -> CniError {
    CniError::new(code::TRY_AGAIN, "vswitchd cannot be reached").details(why)
}

async fn handle(inv: &Invocation) -> Result<Outcome, CniError> {
    if inv.command == Command::Version {
        return Ok(Outcome::ok(Some(spec::version_result(&inv.version))));
    }
    let conf = inv.conf.as_ref().expect("parsed with a configuration");
    let socket = conf
        .socket
        .clone()
        .unwrap_or_else(crate::client::default_socket);
    let client = Client::new(socket);
    let network = inv.network().to_string();
    let key = || api::CniKey {
        container_id: inv.container_id.clone().unwrap_or_default(),
        ifname: inv.ifname.clone().unwrap_or_default(),
        network: network.clone(),
    };
    match inv.command {
        Command::Version => unreachable!("answered above"),
        Command::Add => {
            let ports = conf
                .runtime_config
                .port_mappings
                .iter()
                .map(port_mapping)
                .collect::<Result<Vec<_>, _>>()?;
            let add = api::CniAdd {
                key: key(),
                netns: inv.netns.clone().unwrap_or_default(),
                name: inv.wants.name.clone(),
                ip: inv.wants.ipv4,
                ip6: inv.wants.ipv6,
                mac: inv.wants.mac.clone(),
                aliases: inv.wants.aliases.clone(),
                ports,
            };
            match post(&client, "add", &add).await {
                Answer::Status(200, b) => {
                    let made: api::CniAttachment = decode(&b)?;
                    let ours = spec::add_result(&inv.version, &made);
                    let result = match &conf.prev_result {
                        Some(prev) => merge(prev.clone(), ours, &inv.version),
                        None => ours,
                    };
                    Ok(Outcome::ok(Some(result)))
                }
                Answer::Status(s, b) => Err(refused(s, &b)),
                Answer::Unreachable(why) => Err(unreachable(why)),
            }
        }
        Command::Del => match post(&client, "del", &key()).await {
            Answer::Status(200, _) | Answer::Status(404, _) => Ok(Outcome::ok(None)),
            Answer::Status(s, b) => Err(refused(s, &b)),
            // Nothing of it can be served any more, nor is anything held
            // by this plugin: DEL succeeds, as the spec asks.
            Answer::Unreachable(why) => Ok(Outcome {
                stdout: String::new(),
                exit: 0,
                log: Some(format!("vswitch-cni: DEL with vswitchd unreachable: {why}")),
            }),
        },
        Command::Check => {
            let prev = conf
                .prev_result
                .as_ref()
                .ok_or_else(|| CniError::new(code::INVALID_CONFIG, "CHECK needs prevResult"))?;
            match post(&client, "check", &key()).await {
                Answer::Status(200, b) => {
                    let check: api::CniCheck = decode(&b)?;
                    let netns = inv.netns.clone().unwrap_or_default();
                    let diff = spec::check_differences(
                        prev,
                        inv.ifname.as_deref().unwrap_or_default(),
                        &netns,
                        &check,
                    );
                    if diff.is_empty() {
                        Ok(Outcome::ok(None))
                    } else {
                        Err(CniError::new(
                            code::CHECK_FAILED,
                            "the attachment is not as ADD made it",
                        )
                        .details(diff.join("; ")))
                    }
                }
                Answer::Status(404, b) => Err(CniError::new(code::UNKNOWN_CONTAINER, message(&b))),
                Answer::Status(s, b) => Err(refused(s, &b)),
                Answer::Unreachable(why) => Err(unreachable(why)),
            }
        }
        Command::Status => {
            let path = format!("/v1/networks/{network}");
            match ask(&client, "GET", &path, Vec::new()).await {
                Answer::Status(200, _) => Ok(Outcome::ok(None)),
                Answer::Status(404, _) => Err(CniError::new(
                    code::NOT_AVAILABLE,
                    format!("vswitchd has no network `{network}`"),
                )),
                Answer::Status(s, b) => Err(CniError::new(
                    code::NOT_AVAILABLE,
                    format!("vswitchd answered {s}: {}", message(&b)),
                )),
                Answer::Unreachable(why) => Err(CniError::new(
                    code::NOT_AVAILABLE,
                    "vswitchd cannot be reached",
                )
                .details(why)),
            }
        }
        Command::Gc => {
            let valid = conf.valid_attachments.as_ref().ok_or_else(|| {
                CniError::new(code::INVALID_CONFIG, "GC needs cni.dev/valid-attachments")
            })?;
            let gc = api::CniGc {
                network: network.clone(),
                valid: valid
                    .iter()
                    .map(|a| (a.container_id.clone(), a.ifname.clone()))
                    .collect(),
            };
            match post(&client, "gc", &gc).await {
                Answer::Status(200, b) => {
                    let removed: Vec<api::CniKey> = decode(&b)?;
                    Ok(Outcome {
                        stdout: String::new(),
                        exit: 0,
                        log: (!removed.is_empty()).then(|| {
                            format!(
                                "vswitch-cni: GC removed {} attachment(s) of {network}",
                                removed.len()
                            )
                        }),
                    })
                }
                Answer::Status(s, b) => Err(refused(s, &b)),
                Answer::Unreachable(why) => Err(unreachable(why)),
            }
        }
    }
}

/// A `runtimeConfig.portMappings` entry as vswitch publishes it.
fn port_mapping(p: &spec::PortMapping) -> Result<api::PortMapping, CniError> {
    let proto = match p
        .protocol
        .as_deref()
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        None | Some("") | Some("tcp") => api::PortProto::Tcp,
        Some("udp") => api::PortProto::Udp,
        Some(other) => {
            return Err(CniError::new(
                code::UNSUPPORTED_FIELD,
                format!("portMappings: protocol `{other}` is not tcp or udp"),
            ))
        }
    };
    let host_ip = match p.host_ip.as_deref() {
        None | Some("") => None,
        Some(ip) => Some(ip.parse().map_err(|_| {
            CniError::new(
                code::INVALID_CONFIG,
                format!("portMappings: hostIP `{ip}` is not an address"),
            )
        })?),
    };
    if p.container_port == 0 {
        return Err(CniError::new(
            code::INVALID_CONFIG,
            "portMappings: containerPort 0",
        ));
    }
    Ok(api::PortMapping {
        host_ip,
        host_port: p.host_port,
        container_port: p.container_port,
        proto,
    })
}

/// A result that adds ours to a previous plugin's: interfaces appended,
/// our addresses pointing at our interface's new index.
fn merge(mut prev: Value, ours: Value, version: &str) -> Value {
    let offset = prev
        .get("interfaces")
        .and_then(Value::as_array)
        .map_or(0, Vec::len);
    let append = |prev: &mut Value, field: &str, items: Vec<Value>| {
        if items.is_empty() {
            return;
        }
        match prev.get_mut(field).and_then(Value::as_array_mut) {
            Some(list) => list.extend(items),
            None => prev[field] = Value::Array(items),
        }
    };
    let list = |v: &Value, f: &str| {
        v.get(f)
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
    };
    append(&mut prev, "interfaces", list(&ours, "interfaces"));
    let ips: Vec<Value> = list(&ours, "ips")
        .into_iter()
        .map(|mut ip| {
            ip["interface"] = Value::from(offset);
            ip
        })
        .collect();
    append(&mut prev, "ips", ips);
    append(&mut prev, "routes", list(&ours, "routes"));
    if prev.get("dns").is_none() {
        if let Some(dns) = ours.get("dns") {
            prev["dns"] = dns.clone();
        }
    }
    prev["cniVersion"] = Value::from(version);
    prev
}

/// The plugin's `main`: the process environment and stdin.
pub fn main() -> ! {
    use std::io::{Read, Write};
    let mut stdin = Vec::new();
    let read = std::io::stdin()
        .take(spec::MAX_CONFIG as u64 + 1)
        .read_to_end(&mut stdin);
    let outcome = match read {
        Err(e) => Outcome::error(
            CniError::new(code::IO, "cannot read the configuration from stdin")
                .details(e.to_string()),
        ),
        Ok(_) => match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => {
                let env = |k: &str| std::env::var(k).ok();
                rt.block_on(run(&env, &stdin))
            }
            Err(e) => {
                Outcome::error(CniError::new(code::IO, "cannot start").details(e.to_string()))
            }
        },
    };
    if let Some(line) = &outcome.log {
        eprintln!("{line}");
    }
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(outcome.stdout.as_bytes());
    let _ = out.flush();
    std::process::exit(outcome.exit)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_previous_result_keeps_its_interfaces_and_ours_follow() {
        let prev = json!({"cniVersion":"1.0.0","interfaces":[{"name":"lo0"}],
            "ips":[{"address":"10.9.0.2/24","interface":0}]});
        let ours = json!({"cniVersion":"1.0.0","interfaces":[{"name":"eth0","sandbox":"/x"}],
            "ips":[{"address":"10.1.0.2/24","interface":0}],
            "dns":{"nameservers":["10.1.0.1"]}});
        let m = merge(prev, ours, "1.0.0");
        assert_eq!(m["interfaces"][1]["name"], "eth0");
        assert_eq!(m["ips"][1]["interface"], 1);
        assert_eq!(m["ips"][0]["interface"], 0);
        assert_eq!(m["dns"]["nameservers"][0], "10.1.0.1");
    }

    #[test]
    fn port_mappings_become_vswitch_ports() {
        let p = spec::PortMapping {
            host_port: 8080,
            container_port: 80,
            protocol: Some("UDP".into()),
            host_ip: Some("127.0.0.1".into()),
        };
        let m = port_mapping(&p).unwrap();
        assert_eq!(m.proto, api::PortProto::Udp);
        assert_eq!(m.host_ip, Some("127.0.0.1".parse().unwrap()));
        let bad = spec::PortMapping {
            protocol: Some("sctp".into()),
            ..p
        };
        assert_eq!(
            port_mapping(&bad).unwrap_err().code,
            code::UNSUPPORTED_FIELD
        );
    }

    #[tokio::test]
    async fn del_succeeds_and_status_fails_without_vswitchd() {
        let socket =
            std::env::temp_dir().join(format!("vswitch-cni-none-{}.sock", std::process::id()));
        let conf = format!(
            r#"{{"cniVersion":"1.1.0","name":"web","type":"vswitch-cni","socket":"{}"}}"#,
            socket.display()
        );
        let del = |k: &str| match k {
            "CNI_COMMAND" => Some("DEL".to_string()),
            "CNI_CONTAINERID" => Some("abc".to_string()),
            "CNI_IFNAME" => Some("eth0".to_string()),
            _ => None,
        };
        let o = run(&del, conf.as_bytes()).await;
        assert_eq!(o.exit, 0, "{o:?}");
        let status = |k: &str| (k == "CNI_COMMAND").then(|| "STATUS".to_string());
        let o = run(&status, conf.as_bytes()).await;
        assert_eq!(o.exit, 1);
        let e: Value = serde_json::from_str(&o.stdout).unwrap();
        assert_eq!(e["code"], 50, "{e}");
        assert_eq!(e["cniVersion"], "1.1.0");
    }
}
