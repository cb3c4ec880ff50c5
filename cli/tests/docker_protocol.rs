//! Docker's plugin protocol against a real vswitchd, without Docker: every
//! call, in Docker's order and out of it, with malformed bodies and
//! unknown ids, sent by curl over the plugin socket. Each refused call
//! must get the error key Docker reads for its API and leave nothing made.

mod common;

use common::*;
use serde_json::{json, Value};

const NET: &str = "1111111111111111111111111111111111111111111111111111111111111111";
const EP: &str = "2222222222222222222222222222222222222222222222222222222222222222";
const EP2: &str = "3333333333333333333333333333333333333333333333333333333333333333";

struct Plugin {
    host: Host,
    socket: String,
}

impl Plugin {
    fn start() -> Plugin {
        Plugin::start_with(&[])
    }

    fn start_with(extra: &[&str]) -> Plugin {
        let ns = Netns::new("vdp");
        let socket = std::env::temp_dir()
            .join(format!("vstest-{}-plugin.sock", ns.name))
            .display()
            .to_string();
        let mut args = vec!["--docker-plugin", "--docker-plugin-socket", &socket];
        args.extend_from_slice(extra);
        let host = Host::start_in(ns, &args);
        Plugin { host, socket }
    }

    /// POSTs `body` to `/CALL`; returns the HTTP status and the JSON answer.
    fn call(&self, call: &str, body: &str) -> (u16, Value) {
        let out = cmd(&[
            "curl",
            "-s",
            "--max-time",
            "20",
            "--unix-socket",
            &self.socket,
            "-X",
            "POST",
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            body,
            "-w",
            "\n%{http_code}",
            &format!("http://docker/{call}"),
        ]);
        let text = stdout(&out);
        let (json_text, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
        let value = serde_json::from_str(json_text).unwrap_or_else(|e| {
            panic!(
                "{call}: not JSON ({e}): {text}\n{}",
                tail(&self.host.log(), 30)
            )
        });
        (code.trim().parse().unwrap_or(0), value)
    }

    /// A call that must succeed.
    fn ok(&self, call: &str, body: &Value) -> Value {
        let (code, v) = self.call(call, &body.to_string());
        let key = if call.starts_with("IpamDriver.") {
            "Error"
        } else {
            "Err"
        };
        assert!(
            code == 200 && v.get(key).is_none(),
            "{call} {body} failed: {code} {v}\n{}",
            tail(&self.host.log(), 30)
        );
        v
    }

    /// A call that must be refused with Docker's error key for its API.
    fn refused(&self, call: &str, body: &str) -> String {
        let (code, v) = self.call(call, body);
        let key = if call.starts_with("IpamDriver.") {
            "Error"
        } else {
            "Err"
        };
        let msg = v[key]
            .as_str()
            .unwrap_or_else(|| panic!("{call} {body}: no `{key}` in {code} {v}"));
        assert!(!msg.is_empty(), "{call}: empty error");
        msg.to_string()
    }
}

impl Drop for Plugin {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.socket);
    }
}

#[test]
fn handshake_and_capabilities() {
    require_root!();
    let p = Plugin::start();
    let v = p.ok("Plugin.Activate", &json!(null));
    assert_eq!(v["Implements"], json!(["NetworkDriver", "IpamDriver"]));
    let v = p.ok("NetworkDriver.GetCapabilities", &json!({}));
    assert_eq!(v["Scope"], "local");
    assert_eq!(v["ConnectivityScope"], "global");
    let v = p.ok("IpamDriver.GetCapabilities", &json!({}));
    assert_eq!(v["RequiresMACAddress"], false);
    let v = p.ok("IpamDriver.GetDefaultAddressSpaces", &json!({}));
    assert!(v["LocalDefaultAddressSpace"].is_string());
    assert_eq!(
        p.ok(
            "NetworkDriver.DiscoverNew",
            &json!({"DiscoveryType": 1, "DiscoveryData": {}})
        ),
        json!({})
    );
    assert_eq!(
        p.ok(
            "NetworkDriver.DiscoverDelete",
            &json!({"DiscoveryType": 1, "DiscoveryData": {}})
        ),
        json!({})
    );
    assert_eq!(
        p.ok("NetworkDriver.AllocateNetwork", &json!({"NetworkID": NET})),
        json!({"Options": {}})
    );
    assert_eq!(
        p.ok("NetworkDriver.FreeNetwork", &json!({"NetworkID": NET})),
        json!({})
    );
    // Not a call of this plugin: 404, which Docker reads as "not implemented".
    let (code, v) = p.call("VolumeDriver.Mount", "{}");
    assert_eq!(code, 404, "{v}");
    assert!(v["Err"].is_string());
}

#[test]
fn a_network_and_an_endpoint_in_dockers_order() {
    require_root!();
    let p = Plugin::start();
    let name = unique("dpn");
    // As dockerd asks for `docker network create -d vswitch --ipam-driver
    // vswitch --subnet 10.201.0.0/24 -o vswitch.name=NAME`.
    let pool = p.ok(
        "IpamDriver.RequestPool",
        &json!({"AddressSpace": "vswitch-local", "Pool": "10.201.0.0/24", "SubPool": "", "Options": {}, "V6": false}),
    );
    let pool_id = pool["PoolID"].as_str().unwrap().to_string();
    assert_eq!(pool["Pool"], "10.201.0.0/24");
    let gw = p.ok(
        "IpamDriver.RequestAddress",
        &json!({"PoolID": pool_id, "Address": "", "Options": {"RequestAddressType": "com.docker.network.gateway"}}),
    );
    assert_eq!(gw["Address"], "10.201.0.1/24");
    // Before the network exists, a container address cannot be handed out.
    p.refused(
        "IpamDriver.RequestAddress",
        &json!({"PoolID": pool_id, "Address": ""}).to_string(),
    );
    p.ok(
        "NetworkDriver.CreateNetwork",
        &json!({"NetworkID": NET, "Options": {"com.docker.network.enable_ipv6": false,
            "com.docker.network.generic": {"vswitch.name": name}},
            "IPv4Data": [{"AddressSpace": "vswitch-local", "Gateway": "10.201.0.1/24", "Pool": "10.201.0.0/24"}], "IPv6Data": []}),
    );
    let inspect = p.host.vs_json(&["network", "inspect", &name]);
    assert_eq!(inspect[0]["IPAM"]["Config"][0]["Subnet"], "10.201.0.0/24");
    assert_eq!(inspect[0]["IPAM"]["Config"][0]["Gateway"], "10.201.0.1");
    // The same Docker network twice, and another on the same vswitch network.
    p.refused(
        "NetworkDriver.CreateNetwork",
        &json!({"NetworkID": NET, "Options": {}}).to_string(),
    );
    let msg = p.refused(
        "NetworkDriver.CreateNetwork",
        &json!({"NetworkID": "44", "Options": {"com.docker.network.generic": {"vswitch.name": name}},
            "IPv4Data": [{"Pool": "10.201.0.0/24", "Gateway": "10.201.0.1/24"}]})
        .to_string(),
    );
    assert!(msg.contains("already"), "{msg}");
    // vswitch's own CLI does not remove Docker's network from under it.
    let out = p.host.vs(&["network", "rm", &name]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("docker network rm"),
        "{}",
        stderr(&out)
    );

    let addr = p.ok(
        "IpamDriver.RequestAddress",
        &json!({"PoolID": pool_id, "Address": "", "Options": null}),
    );
    assert_eq!(addr["Address"], "10.201.0.2/24");
    // A static address that is taken is refused.
    p.refused(
        "IpamDriver.RequestAddress",
        &json!({"PoolID": pool_id, "Address": "10.201.0.2"}).to_string(),
    );
    let ep = p.ok(
        "NetworkDriver.CreateEndpoint",
        &json!({"NetworkID": NET, "EndpointID": EP, "Interface": {"Address": "10.201.0.2/24", "AddressIPv6": "", "MacAddress": ""}, "Options": {}}),
    );
    assert_eq!(ep["Interface"]["MacAddress"], "02:42:0a:c9:00:02");
    p.refused(
        "NetworkDriver.CreateEndpoint",
        &json!({"NetworkID": NET, "EndpointID": EP, "Interface": {"Address": "10.201.0.2/24"}})
            .to_string(),
    );
    let info = p.ok(
        "NetworkDriver.EndpointOperInfo",
        &json!({"NetworkID": NET, "EndpointID": EP}),
    );
    assert!(info["Value"].is_object(), "{info}");

    // Join into a namespace of the test's own, as Docker's sandbox.
    let sandbox = Netns::new("vdps");
    let key = format!("/run/netns/{}", sandbox.name);
    let join = p.ok(
        "NetworkDriver.Join",
        &json!({"NetworkID": NET, "EndpointID": EP, "SandboxKey": key, "Options": {}}),
    );
    assert_eq!(join["Gateway"], "10.201.0.1");
    assert_eq!(join["InterfaceName"]["DstPrefix"], "eth");
    let src = join["InterfaceName"]["SrcName"]
        .as_str()
        .unwrap()
        .to_string();
    // The TAP waits in vswitchd's namespace for Docker to move it.
    let links = stdout(&p.host.ns.exec(&["ip", "-o", "link", "show", &src]));
    assert!(links.contains("02:42:0a:c9:00:02"), "{links}");
    p.refused(
        "NetworkDriver.Join",
        &json!({"NetworkID": NET, "EndpointID": EP, "SandboxKey": key}).to_string(),
    );
    // Move it in as Docker does, and reach the gateway through it.
    ok(&[
        "ip",
        "-n",
        &p.host.ns.name,
        "link",
        "set",
        &src,
        "netns",
        &sandbox.name,
    ]);
    sandbox.exec(&["ip", "link", "set", &src, "name", "eth0"]);
    sandbox.exec(&["ip", "addr", "add", "10.201.0.2/24", "dev", "eth0"]);
    sandbox.exec(&["ip", "link", "set", "eth0", "up"]);
    let (reached, out) = until_ok(
        &sandbox.name,
        &["ping", "-c1", "-W1", "10.201.0.1"],
        std::time::Duration::from_secs(10),
    );
    assert!(reached, "gateway unreachable through the moved TAP: {out}");

    // Published ports, withdrawn again.
    let port = 20000 + (std::process::id() % 20000) as u16;
    p.ok(
        "NetworkDriver.ProgramExternalConnectivity",
        &json!({"NetworkID": NET, "EndpointID": EP, "Options": {"com.docker.network.portmap":
            [{"Proto": 6, "IP": "", "Port": 80, "HostIP": "127.0.0.1", "HostPort": port, "HostPortEnd": port}]}}),
    );
    let info = p.ok(
        "NetworkDriver.EndpointOperInfo",
        &json!({"NetworkID": NET, "EndpointID": EP}),
    );
    assert_eq!(
        info["Value"]["com.docker.network.portmap"][0]["HostPort"], port,
        "{info}"
    );
    let listening = stdout(&p.host.ns.exec(&["ss", "-ltn"]));
    assert!(
        listening.contains(&format!("127.0.0.1:{port}")),
        "{listening}"
    );
    p.ok(
        "NetworkDriver.RevokeExternalConnectivity",
        &json!({"NetworkID": NET, "EndpointID": EP}),
    );
    let listening = stdout(&p.host.ns.exec(&["ss", "-ltn"]));
    assert!(
        !listening.contains(&format!("127.0.0.1:{port}")),
        "{listening}"
    );

    // The network cannot go while it has an endpoint.
    p.refused(
        "NetworkDriver.DeleteNetwork",
        &json!({"NetworkID": NET}).to_string(),
    );
    // Leave (Docker moves the TAP back out first), delete, release.
    sandbox.exec(&["ip", "link", "set", "eth0", "down"]);
    sandbox.exec(&["ip", "link", "set", "eth0", "name", &src]);
    sandbox.exec(&["ip", "link", "set", &src, "netns", "1"]);
    p.ok(
        "NetworkDriver.Leave",
        &json!({"NetworkID": NET, "EndpointID": EP}),
    );
    p.ok(
        "NetworkDriver.DeleteEndpoint",
        &json!({"NetworkID": NET, "EndpointID": EP}),
    );
    p.ok(
        "NetworkDriver.DeleteEndpoint",
        &json!({"NetworkID": NET, "EndpointID": EP}),
    );
    p.ok(
        "IpamDriver.ReleaseAddress",
        &json!({"PoolID": pool_id, "Address": "10.201.0.2"}),
    );
    p.ok(
        "IpamDriver.ReleaseAddress",
        &json!({"PoolID": pool_id, "Address": "10.201.0.2"}),
    );
    let gone = cmd(&["ip", "link", "show", &src]);
    assert!(!gone.status.success(), "the TAP is left behind");
    // The address is free again: handed out anew.
    let again = p.ok(
        "IpamDriver.RequestAddress",
        &json!({"PoolID": pool_id, "Address": "10.201.0.2"}),
    );
    assert_eq!(again["Address"], "10.201.0.2/24");
    p.ok(
        "IpamDriver.ReleaseAddress",
        &json!({"PoolID": pool_id, "Address": "10.201.0.2"}),
    );
    p.ok("NetworkDriver.DeleteNetwork", &json!({"NetworkID": NET}));
    p.ok(
        "IpamDriver.ReleaseAddress",
        &json!({"PoolID": pool_id, "Address": "10.201.0.1"}),
    );
    p.ok("IpamDriver.ReleasePool", &json!({"PoolID": pool_id}));
    p.refused(
        "IpamDriver.ReleasePool",
        &json!({"PoolID": pool_id}).to_string(),
    );
    let out = p.host.vs(&["network", "inspect", &name]);
    assert!(!out.status.success(), "the vswitch network is left behind");
}

#[test]
fn bad_and_out_of_order_calls_are_refused_and_leave_nothing() {
    require_root!();
    let p = Plugin::start();
    for (call, body) in [
        ("NetworkDriver.CreateNetwork", "{"),
        ("NetworkDriver.CreateNetwork", "[]"),
        ("NetworkDriver.CreateNetwork", r#"{"NetworkID":"../x"}"#),
        (
            "NetworkDriver.CreateEndpoint",
            r#"{"NetworkID":"ab","EndpointID":"cd","Interface":{"Address":"nope"}}"#,
        ),
        (
            "NetworkDriver.Join",
            r#"{"NetworkID":"ab","EndpointID":"cd","SandboxKey":"relative"}"#,
        ),
        (
            "NetworkDriver.ProgramExternalConnectivity",
            r#"{"NetworkID":"ab","EndpointID":"cd","Options":{"com.docker.network.portmap":"x"}}"#,
        ),
        ("IpamDriver.RequestPool", r#"{"Pool":"300.0.0.0/8"}"#),
        ("IpamDriver.RequestAddress", r#"{"Address":"10.0.0.1"}"#),
        (
            "IpamDriver.ReleaseAddress",
            r#"{"PoolID":"x","Address":"not-an-ip"}"#,
        ),
    ] {
        let (code, v) = p.call(call, body);
        assert_eq!(code, 400, "{call} {body}: {v}");
        let key = if call.starts_with("IpamDriver.") {
            "Error"
        } else {
            "Err"
        };
        assert!(v[key].is_string(), "{call}: {v}");
    }
    // Unknown networks, endpoints and pools.
    let msg = p.refused(
        "NetworkDriver.CreateEndpoint",
        &json!({"NetworkID": NET, "EndpointID": EP, "Interface": {"Address": "10.0.0.2/24"}})
            .to_string(),
    );
    assert!(msg.contains("unknown"), "{msg}");
    p.refused(
        "NetworkDriver.Join",
        &json!({"NetworkID": NET, "EndpointID": EP, "SandboxKey": "/run/netns/x"}).to_string(),
    );
    p.refused(
        "NetworkDriver.Leave",
        &json!({"NetworkID": NET, "EndpointID": EP}).to_string(),
    );
    p.refused(
        "NetworkDriver.EndpointOperInfo",
        &json!({"NetworkID": NET, "EndpointID": EP}).to_string(),
    );
    p.refused(
        "NetworkDriver.ProgramExternalConnectivity",
        &json!({"NetworkID": NET, "EndpointID": EP}).to_string(),
    );
    p.refused(
        "IpamDriver.RequestAddress",
        &json!({"PoolID": "vswitch/10.9.9.0/24", "Address": ""}).to_string(),
    );
    p.refused(
        "IpamDriver.ReleasePool",
        &json!({"PoolID": "vswitch/10.9.9.0/24"}).to_string(),
    );
    // Deleting what does not exist is not an error (Docker retries deletes).
    p.ok("NetworkDriver.DeleteNetwork", &json!({"NetworkID": NET}));
    p.ok(
        "NetworkDriver.DeleteEndpoint",
        &json!({"NetworkID": NET, "EndpointID": EP2}),
    );
    // Options vswitch does not know are refused before anything is made.
    let msg = p.refused(
        "NetworkDriver.CreateNetwork",
        &json!({"NetworkID": NET, "Options": {"com.docker.network.generic": {"vswitch.name": "x1", "color": "red"}},
            "IPv4Data": [{"Pool": "10.202.0.0/24", "Gateway": "10.202.0.1/24"}]})
        .to_string(),
    );
    assert!(msg.contains("color"), "{msg}");
    p.refused(
        "NetworkDriver.CreateNetwork",
        &json!({"NetworkID": NET, "Options": {"com.docker.network.generic": {"vswitch.driver": "macvlan"}}}).to_string(),
    );
    // An endpoint whose address is outside its network is refused whole.
    let name = unique("dpb");
    p.ok(
        "NetworkDriver.CreateNetwork",
        &json!({"NetworkID": NET, "Options": {"com.docker.network.generic": {"vswitch.name": name}},
            "IPv4Data": [{"Pool": "10.203.0.0/24", "Gateway": "10.203.0.1/24"}]}),
    );
    p.refused(
        "NetworkDriver.CreateEndpoint",
        &json!({"NetworkID": NET, "EndpointID": EP, "Interface": {"Address": "10.99.0.2/24"}})
            .to_string(),
    );
    // A Join whose sandbox never appears: the endpoint joins (Docker makes
    // the namespace after Join) and leaves cleanly.
    p.ok(
        "NetworkDriver.CreateEndpoint",
        &json!({"NetworkID": NET, "EndpointID": EP, "Interface": {"Address": "10.203.0.5/24", "MacAddress": "02:00:00:00:00:05"}}),
    );
    let join = p.ok(
        "NetworkDriver.Join",
        &json!({"NetworkID": NET, "EndpointID": EP, "SandboxKey": "/run/netns/never-made-by-this-test"}),
    );
    let src = join["InterfaceName"]["SrcName"]
        .as_str()
        .unwrap()
        .to_string();
    p.ok(
        "NetworkDriver.Leave",
        &json!({"NetworkID": NET, "EndpointID": EP}),
    );
    p.ok(
        "NetworkDriver.DeleteEndpoint",
        &json!({"NetworkID": NET, "EndpointID": EP}),
    );
    p.ok("NetworkDriver.DeleteNetwork", &json!({"NetworkID": NET}));
    assert!(!p
        .host
        .ns
        .exec(&["ip", "link", "show", &src])
        .status
        .success());
    let list = p.host.vs_ok(&["network", "ls"]);
    assert!(!list.contains(&name), "{list}");
    // The daemon counted what it refused and is still up.
    assert!(p.host.vs(&["network", "ls"]).status.success());
}

#[test]
fn a_join_that_fails_half_way_leaves_no_tap_and_can_be_undone() {
    require_root!();
    // The datapath step of the connect fails: everything before it (the
    // TAP made for Docker, the container record) is undone.
    let p = Plugin::start_with(&["--test-failpoints", "connect::datapath=return"]);
    let name = unique("dpf");
    p.ok(
        "NetworkDriver.CreateNetwork",
        &json!({"NetworkID": NET, "Options": {"com.docker.network.generic": {"vswitch.name": name}},
            "IPv4Data": [{"Pool": "10.204.0.0/24", "Gateway": "10.204.0.1/24"}]}),
    );
    p.ok(
        "NetworkDriver.CreateEndpoint",
        &json!({"NetworkID": NET, "EndpointID": EP, "Interface": {"Address": "10.204.0.7/24"}}),
    );
    let sandbox = Netns::new("vdpf");
    let msg = p.refused(
        "NetworkDriver.Join",
        &json!({"NetworkID": NET, "EndpointID": EP, "SandboxKey": format!("/run/netns/{}", sandbox.name)}).to_string(),
    );
    assert!(msg.contains("connect::datapath"), "{msg}");
    let links = stdout(&p.host.ns.exec(&["ip", "-o", "link"]));
    assert!(
        !links.contains("vsd"),
        "the TAP made for Docker is left: {links}"
    );
    let inspect = p.host.vs_json(&["network", "inspect", &name]);
    assert_eq!(inspect[0]["Containers"], json!({}), "{inspect}");
    // Docker then deletes the endpoint and the network: both go.
    p.ok(
        "NetworkDriver.Leave",
        &json!({"NetworkID": NET, "EndpointID": EP}),
    );
    p.ok(
        "NetworkDriver.DeleteEndpoint",
        &json!({"NetworkID": NET, "EndpointID": EP}),
    );
    p.ok("NetworkDriver.DeleteNetwork", &json!({"NetworkID": NET}));
    assert!(!p.host.vs(&["network", "inspect", &name]).status.success());
}
