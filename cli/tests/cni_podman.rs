//! A real runtime drives vswitch-cni: Debian's Podman 4.3 with its CNI
//! backend (`common::podman`), its containers on a vswitch network through
//! a conflist whose one plugin is `vswitch-cni`. Images are imported from
//! busybox-static, never pulled; traffic stays in namespaces the test made.
//!
//! What Podman 4.3 does with the plugin's result, as these tests find it:
//! the result's `dns.nameservers` (vswitch's gateway) goes into the
//! container's `/etc/resolv.conf`, first, followed by the machine's own
//! resolvers, unless containers.conf names `dns_servers` (then only
//! those), so the tests use `PodmanHost::start_with_network_dns` and no
//! `--dns`. `podman stop` runs DEL (and `podman start` ADD again, with a
//! new namespace), as does the cleanup process conmon runs when a
//! container exits by itself.

mod common;

use std::path::Path;
use std::time::Duration;

use common::podman::{PodmanHost, CNI_CACHE};
use common::*;
use serde_json::{json, Value};

/// A web server: `/` is `hello-from-vswitch`, `/cgi-bin/ip` the client's
/// address.
const WEB: &[&str] = &[
    "sh",
    "-c",
    "mkdir -p /w/cgi-bin && printf '#!/bin/sh\\necho Content-Type: text/plain\\necho\\necho $REMOTE_ADDR\\n' > /w/cgi-bin/ip && chmod +x /w/cgi-bin/ip && echo hello-from-vswitch > /w/index.html && exec httpd -f -p 80 -h /w",
];

/// How long an attachment may take to come or go.
const SETTLE: Duration = Duration::from_secs(20);

/// vswitchd, and a Podman whose conflist `NET` puts containers on the
/// vswitch network `NET`. Podman is dropped first (fields drop in order),
/// so its containers' DELs reach vswitchd.
struct PodmanOnVswitch {
    podman: PodmanHost,
    host: Host,
    net: String,
}

impl PodmanOnVswitch {
    /// vswitchd's namespace has no route out, so no name query leaves it
    /// even when a container's resolver falls back to the machine's
    /// resolvers (after the gateway in its resolv.conf).
    fn start(subnet: &str) -> PodmanOnVswitch {
        let host = Host::start(&[]);
        let net = host.network("pcn", &["--subnet", subnet]);
        let plugin = bin("vswitch-cni");
        let podman =
            PodmanHost::start_with_network_dns(&[plugin.parent().expect("the plugin's directory")]);
        podman.write_conflist(
            &net,
            &json!({
                "cniVersion": "1.0.0",
                "name": net,
                // Debian's tuning after it: Podman runs the chain, tuning
                // gets vswitch-cni's result as prevResult.
                "plugins": [{
                    "type": "vswitch-cni",
                    "network": net,
                    "socket": host.socket,
                    "capabilities": {"portMappings": true, "aliases": true},
                }, {
                    "type": "tuning",
                    "sysctl": {"net.ipv4.conf.eth0.arp_notify": "1"},
                }],
            })
            .to_string(),
        );
        PodmanOnVswitch { podman, host, net }
    }

    /// vswitch's containers on the network, by endpoint.
    fn containers(&self) -> Value {
        self.host.vs_json(&["network", "inspect", &self.net])[0]["Containers"].clone()
    }

    /// The address vswitch lists for the container named `name`, if any.
    fn listed(&self, name: &str) -> Option<String> {
        let all = self.containers();
        let c = all.as_object()?.values().find(|c| c["Name"] == name)?;
        let cidr = c["IPv4Address"].as_str()?;
        Some(cidr.split('/').next()?.to_string())
    }

    /// Waits until vswitch has no container on the network.
    fn wait_empty(&self, what: &str) {
        wait_for(what, SETTLE, || self.containers() == json!({}));
    }

    /// Removes containers at once (their processes ignore SIGTERM).
    fn rm(&self, containers: &[&str]) {
        let mut args = vec!["rm", "-f", "-t", "0"];
        args.extend_from_slice(containers);
        self.podman.podman_ok(&args);
    }
}

/// The links of a namespace, by name.
fn links(ns: &Netns) -> String {
    let out = ok(&["ip", "-n", &ns.name, "-o", "link"]);
    let mut names: Vec<&str> = out
        .lines()
        .filter_map(|l| l.split(':').nth(1))
        .map(str::trim)
        .collect();
    names.sort();
    names.join(" ")
}

/// Whether libcni still caches a result for the container id.
fn cached(id: &str) -> bool {
    std::fs::read_dir(CNI_CACHE)
        .map(|d| {
            d.flatten()
                .any(|e| e.file_name().to_string_lossy().contains(id))
        })
        .unwrap_or(false)
}

/// Two containers talk by name and alias through vswitch's DNS, which
/// the CNI result names as the nameserver; vswitch knows them by Podman's
/// names, at the addresses Podman reports; `podman rm` takes them away.
#[test]
fn podman_containers_talk_by_name_and_alias() {
    require_root!();
    let p = PodmanOnVswitch::start("10.225.0.0/24");
    let web = p
        .podman
        .run("web", &["--network", &p.net, "--network-alias", "www"], WEB);
    let client = p
        .podman
        .run("cl", &["--network", &p.net], &["sleep", "600"]);
    let chained = p
        .podman
        .exec_ok(&web, &["cat", "/proc/sys/net/ipv4/conf/eth0/arp_notify"]);
    assert_eq!(chained.trim(), "1", "tuning did not run after vswitch-cni");
    for c in [&web, &client] {
        let ip = p.listed(c).unwrap_or_else(|| {
            panic!(
                "vswitch does not list {c} by Podman's name: {}",
                p.containers()
            )
        });
        assert!(
            ip.starts_with("10.225.0.") && ip != "10.225.0.1",
            "{c}: {ip}"
        );
        assert_eq!(p.podman.ip_of(c, &p.net), ip, "Podman's address of {c}");
        assert_eq!(p.host.ip_of(c, &p.net), ip);
    }
    // Podman gives the short id as an alias too.
    let short = &p.podman.id_of(&web)[..12];
    let aliases = p.host.vs_json(&["inspect", &web])[0]["Networks"][&p.net]["Aliases"].clone();
    assert_eq!(aliases, json!([short, "www"]), "aliases of {web}");

    // Podman writes the CNI result's nameserver, the gateway, first into
    // resolv.conf: names resolve with no --dns.
    let resolv = p.podman.exec_ok(&client, &["cat", "/etc/resolv.conf"]);
    let first = resolv.lines().find(|l| l.starts_with("nameserver"));
    assert_eq!(first, Some("nameserver 10.225.0.1"), "{resolv}");
    let fetch = |name: &str| {
        let url = format!("http://{name}/");
        let (ok, out) = until_ok_with(SETTLE, || {
            p.podman
                .exec(&client, &["timeout", "3", "wget", "-qO-", &url])
        });
        assert!(
            ok && out.contains("hello-from-vswitch"),
            "{url} from {client}: {out}\nresolv.conf: {resolv}"
        );
    };
    fetch(&web);
    fetch("www");
    fetch(short);

    p.rm(&[&web, &client]);
    p.wait_empty("the containers gone from vswitch");
    for c in [&web, &client] {
        assert!(!p.host.vs(&["inspect", c]).status.success(), "{c} is left");
    }
}

/// `podman run -p`: published by vswitch's forwarder in vswitchd's
/// namespace, the container sees the client's own address, and the port
/// goes with the container.
#[test]
fn podman_published_port_keeps_the_clients_address() {
    require_root!();
    let p = PodmanOnVswitch::start("10.226.0.0/24");
    let client = Netns::new("pcc");
    veth(&p.host.ns, "192.0.2.51/24", &client, "192.0.2.52/24");
    let web = p
        .podman
        .run("pub", &["--network", &p.net, "-p", "18081:80"], WEB);
    let url = "http://192.0.2.51:18081/cgi-bin/ip";
    let (ok, out) = until_ok(
        &client.name,
        &["timeout", "5", "curl", "-s", url],
        Duration::from_secs(20),
    );
    assert!(ok, "{out}");
    // httpd listens on [::], so it writes IPv4 peers as mapped addresses.
    let peer = out
        .trim()
        .trim_matches(['[', ']'])
        .trim_start_matches("::ffff:");
    assert_eq!(peer, "192.0.2.52", "the container saw {out}");
    let ports = p.host.vs_ok(&["port", &web]);
    assert!(ports.contains("18081"), "{ports}");
    // vswitchd listens, in its own namespace; Podman itself does not.
    let listening = |ns: &str| stdout(&ns_exec(ns, &["ss", "-Htln", "sport = :18081"]));
    assert!(!listening(&p.host.ns.name).trim().is_empty());

    p.rm(&[&web]);
    p.wait_empty("the container gone from vswitch");
    assert_eq!(listening(&p.host.ns.name).trim(), "", "still listening");
    // Nothing listens any more: refused (curl's 7), not a timeout.
    let o = client.exec(&["timeout", "5", "curl", "-s", url]);
    assert_eq!(o.status.code(), Some(7), "still published: {}", stdout(&o));
}

/// `podman stop` detaches the container (DEL) and `podman start` attaches
/// it again; `podman rm`, and a container that exits by itself, leave
/// nothing: no vswitch container, no interface, no cached result, and
/// every address they had can be taken again.
#[test]
fn podman_stop_and_rm_leave_nothing() {
    require_root!();
    let p = PodmanOnVswitch::start("10.228.0.0/24");
    let host_links = links(&p.host.ns);
    let c = p
        .podman
        .run("stp", &["--network", &p.net], &["sleep", "600"]);
    let id = p.podman.id_of(&c);
    let first = p.listed(&c).expect("listed after run");
    let pin = p.podman.sandbox_key(&c);
    assert!(cached(&id), "no cached result for {id}");

    p.podman.podman_ok(&["stop", "-t", "0", &c]);
    p.wait_empty("the stopped container gone from vswitch");
    assert!(!p.host.vs(&["inspect", &c]).status.success());
    assert!(!Path::new(&pin).exists(), "{pin} is still there");
    assert!(!cached(&id), "the result of {id} is still cached");

    p.podman.podman_ok(&["start", &c]);
    let second = p.listed(&c).expect("listed again after start");
    assert_eq!(p.podman.ip_of(&c, &p.net), second);
    let (ok, out) = until_ok_with(SETTLE, || {
        p.podman
            .exec(&c, &["ping", "-c", "1", "-W", "1", "10.228.0.1"])
    });
    assert!(
        ok,
        "the restarted container cannot reach its gateway: {out}"
    );
    p.podman.podman_ok(&["stop", "-t", "0", &c]);
    p.podman.podman_ok(&["rm", &c]);
    p.wait_empty("the removed container gone from vswitch");

    // A container whose process ends: conmon's cleanup process runs DEL.
    let done = p.podman.run(
        "end",
        &["--network", &p.net],
        &["sh", "-c", "while [ ! -e /go ]; do sleep 1; done"],
    );
    let third = p.listed(&done).expect("listed after run");
    p.podman.exec_ok(&done, &["touch", "/go"]);
    p.wait_empty("the exited container gone from vswitch");
    p.podman.podman_ok(&["rm", &done]);

    assert_eq!(
        links(&p.host.ns),
        host_links,
        "links left in vswitchd's namespace"
    );
    // Every address is free: containers asking for them get them.
    let mut again = Vec::new();
    for ip in [&first, &second, &third] {
        let n = p.podman.run(
            "agn",
            &["--network", &format!("{}:ip={ip}", p.net)],
            &["sleep", "600"],
        );
        assert_eq!(p.listed(&n).as_ref(), Some(ip), "{}", p.containers());
        again.push(n);
    }
    let again: Vec<&str> = again.iter().map(String::as_str).collect();
    p.rm(&again);
    p.wait_empty("the last containers gone from vswitch");
}
