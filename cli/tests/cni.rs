//! The CNI plugin, run as a runtime runs it: `vswitch-cni` with the
//! `CNI_*` environment and a configuration on stdin, against a real
//! vswitchd, on namespaces the test made (`ip netns add`, as CNI runtimes
//! do). Chaining uses Debian's reference plugins (containernetworking-
//! plugins) from `/usr/lib/cni`. Traffic stays in these namespaces.

mod common;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

/// Where Debian's containernetworking-plugins puts the reference plugins.
const REFERENCE_PLUGINS: &str = "/usr/lib/cni";

/// What a plugin printed and how it exited.
#[derive(Debug)]
struct Ran {
    code: i32,
    out: Value,
    stderr: String,
}

/// Runs a CNI plugin binary as a runtime does.
fn run_plugin(plugin: &Path, command: &str, env: &[(&str, &str)], conf: &Value) -> Ran {
    let mut child = Command::new(plugin)
        .env_clear()
        .env("CNI_COMMAND", command)
        .env("CNI_PATH", REFERENCE_PLUGINS)
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running the plugin");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(conf.to_string().as_bytes())
        .unwrap();
    let o = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&o.stdout).to_string();
    Ran {
        code: o.status.code().unwrap_or(-1),
        out: if text.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("plugin printed no JSON ({e}): {text}"))
        },
        stderr: String::from_utf8_lossy(&o.stderr).to_string(),
    }
}

fn cni(command: &str, env: &[(&str, &str)], conf: &Value) -> Ran {
    run_plugin(&bin("vswitch-cni"), command, env, conf)
}

/// The configuration of a vswitch network, as a conflist's plugin gets it.
fn conf(host: &Host, network: &str, version: &str) -> Value {
    json!({
        "cniVersion": version,
        "name": network,
        "type": "vswitch-cni",
        "socket": host.socket,
        "capabilities": {"portMappings": true, "ips": true, "mac": true},
    })
}

/// A sandbox namespace as a runtime makes it, and the attachment's env.
struct Sandbox {
    ns: Netns,
    id: String,
    path: String,
}

impl Sandbox {
    fn new(prefix: &str) -> Sandbox {
        let ns = Netns::new(prefix);
        let path = format!("/run/netns/{}", ns.name);
        Sandbox {
            id: format!("{}{}", "c0ffee", ns.name),
            ns,
            path,
        }
    }

    fn env<'a>(&'a self, ifname: &'a str, args: &'a str) -> Vec<(&'a str, &'a str)> {
        vec![
            ("CNI_CONTAINERID", self.id.as_str()),
            ("CNI_NETNS", self.path.as_str()),
            ("CNI_IFNAME", ifname),
            ("CNI_ARGS", args),
        ]
    }

    fn links(&self) -> String {
        stdout(&self.ns.exec(&["ip", "-o", "link"]))
    }
}

fn ok_result(r: &Ran) -> &Value {
    assert_eq!(r.code, 0, "plugin failed: {} {}", r.out, r.stderr);
    &r.out
}

fn address_of(result: &Value) -> String {
    result["ips"][0]["address"]
        .as_str()
        .and_then(|a| a.split('/').next())
        .unwrap_or_else(|| panic!("no address in {result}"))
        .to_string()
}

/// ADD, CHECK, DEL (twice), GC, STATUS and VERSION, with two containers
/// that reach and resolve each other through what ADD made.
#[test]
fn add_check_del_gc_status_and_version_as_the_spec_writes_them() {
    require_root!();
    let host = Host::start(&[]);
    let net = host.network("cni", &["--subnet", "10.215.0.0/24"]);
    let c = conf(&host, &net, "1.1.0");

    let v = cni("VERSION", &[], &json!({"cniVersion": "1.0.0"}));
    assert_eq!(ok_result(&v)["cniVersion"], "1.0.0");
    let versions = v.out["supportedVersions"].as_array().unwrap().clone();
    for want in ["0.4.0", "1.0.0", "1.1.0"] {
        assert!(versions.contains(&json!(want)), "{versions:?}");
    }
    ok_result(&cni("STATUS", &[], &c));

    let web = Sandbox::new("cniw");
    let db = Sandbox::new("cnid");
    let add_web = cni(
        "ADD",
        &web.env(
            "eth0",
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web",
        ),
        &c,
    );
    let r_web = ok_result(&add_web).clone();
    assert_eq!(r_web["cniVersion"], "1.1.0");
    assert_eq!(r_web["interfaces"][0]["name"], "eth0");
    assert_eq!(r_web["interfaces"][0]["sandbox"], web.path.as_str());
    assert_eq!(r_web["interfaces"][0]["mtu"], 1500);
    assert_eq!(r_web["ips"][0]["gateway"], "10.215.0.1");
    assert_eq!(r_web["routes"][0]["dst"], "0.0.0.0/0");
    assert_eq!(r_web["dns"]["nameservers"][0], "10.215.0.1");
    let mac = r_web["interfaces"][0]["mac"].as_str().unwrap().to_string();
    assert!(web.links().contains(&mac), "{}", web.links());

    // Static address and MAC from CNI_ARGS; a 1.0.0 config gets a 1.0.0 result.
    let c10 = conf(&host, &net, "1.0.0");
    let add_db = cni(
        "ADD",
        &db.env(
            "net1",
            "IgnoreUnknown=1;K8S_POD_NAME=db;IP=10.215.0.77;MAC=02:00:00:00:00:77",
        ),
        &c10,
    );
    let r_db = ok_result(&add_db).clone();
    assert_eq!(r_db["cniVersion"], "1.0.0");
    assert_eq!(r_db["ips"][0]["address"], "10.215.0.77/24");
    assert_eq!(r_db["interfaces"][0]["mac"], "02:00:00:00:00:77");
    assert!(r_db["interfaces"][0].get("mtu").is_none(), "{r_db}");
    assert!(db.links().contains("net1"), "{}", db.links());

    // They reach and resolve each other; the names are the runtime's.
    let ip_web = address_of(&r_web);
    assert!(ping_until(&db.ns.name, &ip_web, Duration::from_secs(5)).is_some());
    assert_eq!(
        resolves(&db.ns.name, "10.215.0.1", "web").as_deref(),
        Some(ip_web.as_str())
    );
    assert_eq!(
        resolves(&web.ns.name, "10.215.0.1", "db").as_deref(),
        Some("10.215.0.77")
    );
    let inspect = host.vs_json(&["inspect", "web"]);
    assert_eq!(inspect[0]["Networks"][net.as_str()]["IPAddress"], ip_web);

    // The same ADD again answers what it made.
    let again = cni(
        "ADD",
        &web.env("eth0", "IgnoreUnknown=1;K8S_POD_NAME=web"),
        &c,
    );
    assert_eq!(ok_result(&again)["ips"], r_web["ips"]);

    // CHECK against prevResult: passes, then fails once the address goes.
    let mut with_prev = c.clone();
    with_prev["prevResult"] = r_web.clone();
    ok_result(&cni("CHECK", &web.env("eth0", ""), &with_prev));
    ok(&[
        "ip",
        "-n",
        &web.ns.name,
        "addr",
        "del",
        &format!("{ip_web}/24"),
        "dev",
        "eth0",
    ]);
    let bad = cni("CHECK", &web.env("eth0", ""), &with_prev);
    assert_eq!(bad.code, 1, "{bad:?}");
    assert_eq!(bad.out["code"], 100, "{}", bad.out);
    assert!(
        bad.out["details"].as_str().unwrap().contains(&ip_web),
        "{}",
        bad.out
    );
    let unknown = cni("CHECK", &web.env("eth9", ""), &with_prev);
    assert_eq!(unknown.out["code"], 3, "{}", unknown.out);

    // DEL, twice: the interface, the container and its address go.
    ok_result(&cni("DEL", &web.env("eth0", ""), &c));
    assert!(!web.links().contains("eth0"), "{}", web.links());
    assert!(!host.vs(&["inspect", "web"]).status.success());
    ok_result(&cni("DEL", &web.env("eth0", ""), &c));
    // DEL without a namespace (the runtime lost it) is fine too.
    ok_result(&cni(
        "DEL",
        &[("CNI_CONTAINERID", "nosuch"), ("CNI_IFNAME", "eth0")],
        &c,
    ));
    // The address is free again.
    let web2 = Sandbox::new("cniw");
    let r = cni(
        "ADD",
        &web2.env(
            "eth0",
            &format!("IgnoreUnknown=1;K8S_POD_NAME=web2;IP={ip_web}"),
        ),
        &c,
    );
    ok_result(&r);

    // GC: only db is valid; web2 goes.
    let mut gc = c.clone();
    gc["cni.dev/valid-attachments"] = json!([{"containerID": db.id, "ifname": "net1"}]);
    ok_result(&cni("GC", &[], &gc));
    assert!(!web2.links().contains("eth0"), "{}", web2.links());
    assert!(!host.vs(&["inspect", "web2"]).status.success());
    assert!(host.vs(&["inspect", "db"]).status.success());
    ok_result(&cni("DEL", &db.env("net1", ""), &c10));

    // A 0.4.0 configuration gets a 0.4.0 result (addresses with their
    // version, no MTU).
    let old = Sandbox::new("cnio");
    let r = cni("ADD", &old.env("eth0", ""), &conf(&host, &net, "0.4.0"));
    let r = ok_result(&r).clone();
    assert_eq!(r["cniVersion"], "0.4.0");
    assert_eq!(r["ips"][0]["version"], "4", "{r}");
    assert!(r["interfaces"][0].get("mtu").is_none(), "{r}");
    ok_result(&cni(
        "DEL",
        &old.env("eth0", ""),
        &conf(&host, &net, "0.4.0"),
    ));

    // STATUS of a network vswitchd does not have: not available (50).
    let missing = conf(&host, "nosuchnet", "1.1.0");
    let s = cni("STATUS", &[], &missing);
    assert_eq!(s.out["code"], 50, "{}", s.out);
}

/// Bad configurations and unknown networks: the spec's error codes, and
/// nothing left behind in the namespace or the daemon.
#[test]
fn bad_requests_get_the_specs_codes_and_leave_nothing() {
    require_root!();
    let host = Host::start(&[]);
    let net = host.network("cnib", &["--subnet", "10.216.0.0/24"]);
    let sb = Sandbox::new("cnix");
    let env = sb.env("eth0", "");
    let code_of = |r: &Ran| r.out["code"].as_u64().unwrap_or_else(|| panic!("{r:?}"));

    let unknown = cni("ADD", &env, &conf(&host, "nosuchnet", "1.0.0"));
    assert_eq!(unknown.code, 1);
    assert_eq!(code_of(&unknown), 7, "{:?}", unknown);
    assert!(
        unknown.out["msg"].as_str().unwrap().contains("nosuchnet"),
        "{}",
        unknown.out
    );
    let mut c = conf(&host, &net, "9.0.0");
    assert_eq!(code_of(&cni("ADD", &env, &c)), 1);
    c["cniVersion"] = json!("1.0.0");
    assert_eq!(code_of(&cni("ADD", &env, &json!("not an object"))), 6);
    assert_eq!(
        code_of(&cni("ADD", &sb.env("eth0", "FOO=bar"), &c)),
        4,
        "unknown CNI_ARGS without IgnoreUnknown"
    );
    let mut no_netns = env.clone();
    no_netns.retain(|(k, _)| *k != "CNI_NETNS");
    assert_eq!(code_of(&cni("ADD", &no_netns, &c)), 4);
    // An address outside the subnet, and a MAC that is not unicast.
    let r = cni("ADD", &sb.env("eth0", "IP=192.168.77.2"), &c);
    assert_ne!(r.code, 0, "{r:?}");
    let r = cni("ADD", &sb.env("eth0", "MAC=01:00:00:00:00:01"), &c);
    assert_ne!(r.code, 0, "{r:?}");
    // An interface name the namespace has already.
    ok(&[
        "ip",
        "-n",
        &sb.ns.name,
        "link",
        "add",
        "eth0",
        "type",
        "veth",
        "peer",
        "name",
        "eth0p",
    ]);
    let r = cni("ADD", &env, &c);
    assert_ne!(r.code, 0, "{r:?}");
    ok(&["ip", "-n", &sb.ns.name, "link", "del", "eth0"]);

    // Nothing of those is left: no interface but lo, no container, no
    // address held (the refused ADD had been given the first address).
    assert_eq!(sb.links().lines().count(), 1, "{}", sb.links());
    let inspect = host.vs_json(&["network", "inspect", &net]);
    assert_eq!(inspect[0]["Containers"], json!({}), "{inspect}");
    let r = cni("ADD", &sb.env("eth0", "IP=10.216.0.2"), &c);
    assert_eq!(address_of(ok_result(&r)), "10.216.0.2");
}

/// vswitchd gone: DEL still succeeds, STATUS says 50, ADD asks to try
/// again later (11). After a restart the attachment is still known.
#[test]
fn del_succeeds_and_status_says_unavailable_while_vswitchd_is_down() {
    require_root!();
    let mut host = Host::start(&[]);
    let net = host.network("cnid", &["--subnet", "10.217.0.0/24"]);
    let c = conf(&host, &net, "1.1.0");
    let a = Sandbox::new("cnia");
    let b = Sandbox::new("cnib");
    let ra = ok_result(&cni("ADD", &a.env("eth0", "K8S_POD_NAME=a"), &c)).clone();
    ok_result(&cni("ADD", &b.env("eth0", "K8S_POD_NAME=b"), &c));

    host.kill9();
    let s = cni("STATUS", &[], &c);
    assert_eq!(s.out["code"], 50, "{}", s.out);
    let r = cni("ADD", &Sandbox::new("cnic").env("eth0", ""), &c);
    assert_eq!(r.out["code"], 11, "{}", r.out);
    ok_result(&cni("DEL", &b.env("eth0", ""), &c));

    host.restart();
    ok_result(&cni("STATUS", &[], &c));
    let mut with_prev = c.clone();
    with_prev["prevResult"] = ra.clone();
    ok_result(&cni("CHECK", &a.env("eth0", ""), &with_prev));
    assert!(ping_until(&a.ns.name, "10.217.0.1", Duration::from_secs(10)).is_some());
    ok_result(&cni("DEL", &a.env("eth0", ""), &c));
    assert!(!a.links().contains("eth0"));
}

/// A published port from `runtimeConfig.portMappings`: forwarded by
/// vswitch from the host's address, the client's address kept, gone
/// after DEL.
#[test]
fn port_mappings_are_published_and_withdrawn() {
    require_root!();
    let host = Host::start(&[]);
    let net = host.network("cnip", &["--subnet", "10.218.0.0/24"]);
    let client = Netns::new("cnicl");
    veth(&host.ns, "192.0.2.41/24", &client, "192.0.2.42/24");
    let mut c = conf(&host, &net, "1.0.0");
    c["runtimeConfig"] = json!({"portMappings": [
        {"hostPort": 18080, "containerPort": 8080, "protocol": "tcp"}
    ]});
    let sb = Sandbox::new("cnis");
    ok_result(&cni("ADD", &sb.env("eth0", "K8S_POD_NAME=srv"), &c));
    let _server = peer_echo_tcp(&sb.ns.name, 8080);
    let (ok, out) = until_ok(
        &client.name,
        &[
            "socat",
            "-T2",
            "-",
            "TCP:192.0.2.41:18080,connect-timeout=2",
        ],
        Duration::from_secs(10),
    );
    assert!(ok, "{out}");
    assert!(out.contains("peer=192.0.2.42"), "the container saw {out}");
    let ports = host.vs_ok(&["port", "srv"]);
    assert!(ports.contains("18080"), "{ports}");
    ok_result(&cni("DEL", &sb.env("eth0", ""), &c));
    let o = client.exec(&[
        "socat",
        "-T1",
        "-",
        "TCP:192.0.2.41:18080,connect-timeout=1",
    ]);
    assert!(
        !o.status.success() || stdout(&o).is_empty(),
        "still published"
    );
}

/// vswitch-cni first in a chain, Debian's `tuning` after it, as libcni
/// runs a conflist: each plugin gets the previous one's result as
/// prevResult, ADD in order, CHECK in order, DEL in reverse.
#[test]
fn chains_with_a_reference_plugin_after_it() {
    require_root!();
    let tuning = Path::new(REFERENCE_PLUGINS).join("tuning");
    if !tuning.exists() {
        panic!(
            "{} is missing: install containernetworking-plugins",
            tuning.display()
        );
    }
    let host = Host::start(&[]);
    let net = host.network("cnic", &["--subnet", "10.219.0.0/24"]);
    let sb = Sandbox::new("cnit");
    let env = sb.env("eth0", "IgnoreUnknown=1;K8S_POD_NAME=chained");
    let version = "1.0.0";
    let first = conf(&host, &net, version);
    let second = json!({
        "cniVersion": version,
        "name": net,
        "type": "tuning",
        "sysctl": {"net.ipv4.conf.eth0.arp_notify": "1"},
    });
    let r1 = ok_result(&cni("ADD", &env, &first)).clone();
    let mut second_add = second.clone();
    second_add["prevResult"] = r1.clone();
    let r2 = run_plugin(&tuning, "ADD", &env, &second_add);
    let r2 = ok_result(&r2).clone();
    // tuning passes our result on and did its work on our interface.
    assert_eq!(r2["interfaces"], r1["interfaces"], "{r2}");
    assert_eq!(r2["ips"], r1["ips"], "{r2}");
    let sysctl = stdout(
        &sb.ns
            .exec(&["cat", "/proc/sys/net/ipv4/conf/eth0/arp_notify"]),
    );
    assert_eq!(sysctl.trim(), "1");
    // CHECK of the chain, each with the final result.
    let mut c1 = first.clone();
    c1["prevResult"] = r2.clone();
    ok_result(&cni("CHECK", &env, &c1));
    let mut c2 = second.clone();
    c2["prevResult"] = r2.clone();
    ok_result(&run_plugin(&tuning, "CHECK", &env, &c2));
    // DEL in reverse order.
    ok_result(&run_plugin(&tuning, "DEL", &env, &c2));
    ok_result(&cni("DEL", &env, &c1));
    assert!(!sb.links().contains("eth0"), "{}", sb.links());
}

/// A CNI network naming a vswitch overlay: containers attached through
/// the plugin on two hosts reach and resolve each other, and their
/// addresses are unique across the hosts (the cluster IPAM).
#[test]
fn an_overlay_attaches_containers_on_every_host() {
    require_root!();
    let ul = Underlay::new();
    let key = TempFile::new("vskey-cni", "cni overlay test cluster");
    let h1 = Host::in_cluster(&ul, "vcn", "192.0.2.61", &key.0, &[]);
    let h2 = Host::in_cluster(&ul, "vcn", "192.0.2.62", &key.0, &[]);
    h2.vs_ok(&["join-cluster", "192.0.2.61"]);
    wait_for("2 alive members", Duration::from_secs(20), || {
        alive_members(&h1) == 2 && alive_members(&h2) == 2
    });
    let net = h1.network("cno", &["--driver", "overlay", "--subnet", "10.220.0.0/24"]);
    wait_for("the overlay on h2", Duration::from_secs(15), || {
        h2.vs(&["network", "inspect", &net]).status.success()
    });
    let mut sandboxes = Vec::new();
    let mut addresses = Vec::new();
    for (i, h) in [&h1, &h2, &h1, &h2, &h1, &h2].into_iter().enumerate() {
        let sb = Sandbox::new("cnov");
        let args = format!("IgnoreUnknown=1;K8S_POD_NAME=pod{i}");
        let r = cni("ADD", &sb.env("eth0", &args), &conf(h, &net, "1.0.0"));
        addresses.push(address_of(ok_result(&r)));
        sandboxes.push((sb, h));
    }
    let mut unique = addresses.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), addresses.len(), "{addresses:?}");
    // pod0 (h1) and pod1 (h2): across the tunnel, by address and name.
    let (a, _) = &sandboxes[0];
    assert!(
        ping_until(&a.ns.name, &addresses[1], Duration::from_secs(15)).is_some(),
        "pod0 to pod1 across hosts"
    );
    wait_for("pod1 resolvable on h1", Duration::from_secs(15), || {
        resolves(&a.ns.name, "10.220.0.1", "pod1").as_deref() == Some(addresses[1].as_str())
    });
    for (sb, h) in &sandboxes {
        ok_result(&cni("DEL", &sb.env("eth0", ""), &conf(h, &net, "1.0.0")));
    }
    for h in [&h1, &h2] {
        wait_for("no endpoints left", Duration::from_secs(15), || {
            h.vs_json(&["network", "inspect", &net])[0]["Containers"] == json!({})
        });
    }
}
