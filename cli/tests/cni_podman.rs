//! A real runtime drives vswitch-cni: Debian's Podman 4.3 with its CNI
//! backend (`common::podman`), its containers on a vswitch network through
//! a conflist whose one plugin is `vswitch-cni`. Images are imported from
//! busybox-static, never pulled; traffic stays in namespaces the test made.

mod common;

use std::time::Duration;

use common::podman::PodmanHost;
use common::*;
use serde_json::json;

/// A web server that answers `/cgi-bin/ip` with the client's address.
const WEB: &[&str] = &[
    "sh",
    "-c",
    "mkdir -p /w/cgi-bin && printf '#!/bin/sh\\necho Content-Type: text/plain\\necho\\necho $REMOTE_ADDR\\n' > /w/cgi-bin/ip && chmod +x /w/cgi-bin/ip && echo hello-from-vswitch > /w/index.html && exec httpd -f -p 80 -h /w",
];

/// vswitchd, and a Podman whose conflist `NET` puts containers on the
/// vswitch network `NET`. Podman is dropped first, so its containers' DELs
/// reach vswitchd.
struct PodmanOnVswitch {
    podman: PodmanHost,
    host: Host,
    net: String,
}

impl PodmanOnVswitch {
    /// vswitchd's namespace has no route out, so no name query leaves it
    /// even if Podman fell back to the machine's resolvers.
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
                "plugins": [{
                    "type": "vswitch-cni",
                    "network": net,
                    "socket": host.socket,
                    "capabilities": {"portMappings": true, "aliases": true},
                }],
            })
            .to_string(),
        );
        PodmanOnVswitch { podman, host, net }
    }

    fn containers(&self) -> serde_json::Value {
        self.host.vs_json(&["network", "inspect", &self.net])[0]["Containers"].clone()
    }
}

/// Two containers talk by name and alias through vswitch's DNS, which
/// the CNI result names as the nameserver; vswitch knows them by Podman's
/// names; `podman rm` leaves nothing.
#[test]
fn podman_containers_talk_by_name_and_alias() {
    require_root!();
    let p = PodmanOnVswitch::start("10.225.0.0/24");
    let web = p
        .podman
        .run("web", &["--network", &p.net, "--network-alias", "www"], WEB);
    let resolv = p.podman.exec_ok(&web, &["cat", "/etc/resolv.conf"]);
    let client = p
        .podman
        .run("cl", &["--network", &p.net], &["sleep", "600"]);
    let inspect = p.containers();
    let names: Vec<&str> = inspect
        .as_object()
        .unwrap()
        .values()
        .filter_map(|c| c["Name"].as_str())
        .collect();
    assert!(
        names.contains(&web.as_str()) && names.contains(&client.as_str()),
        "{inspect}"
    );
    let web_ip = p.host.ip_of(&web, &p.net);
    assert!(web_ip.starts_with("10.225.0."), "{web_ip}");
    assert_eq!(p.podman.ip_of(&web, &p.net), web_ip);

    // Podman writes the CNI result's nameserver, the gateway, into
    // resolv.conf (before the machine's own): names resolve with no --dns.
    assert!(resolv.contains("nameserver 10.225.0.1"), "{resolv}");
    let (ok, out) = until_ok_with(Duration::from_secs(20), || {
        p.podman.exec(
            &client,
            &[
                "sh",
                "-c",
                &format!("timeout 3 wget -qO- http://{web}/ && timeout 3 wget -qO- http://www/"),
            ],
        )
    });
    assert!(
        ok && out.matches("hello-from-vswitch").count() == 2,
        "{out}\nresolv.conf of web: {resolv}"
    );

    p.podman.podman_ok(&["rm", "-f", &web, &client]);
    wait_for(
        "the containers gone from vswitch",
        Duration::from_secs(15),
        || p.containers() == json!({}),
    );
    assert!(!p.host.vs(&["inspect", &web]).status.success());
    // Its address is free: a container asking for it gets it.
    let again = p.podman.run(
        "web2",
        &["--network", &format!("{}:ip={web_ip}", p.net)],
        &["sleep", "600"],
    );
    assert_eq!(p.host.ip_of(&again, &p.net), web_ip);
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
        &["curl", "-s", "--max-time", "3", url],
        Duration::from_secs(20),
    );
    assert!(ok, "{out}");
    assert!(out.contains("192.0.2.52"), "the container saw {out}");
    let ports = p.host.vs_ok(&["port", &web]);
    assert!(ports.contains("18081"), "{ports}");

    p.podman.podman_ok(&["rm", "-f", &web]);
    wait_for(
        "the container gone from vswitch",
        Duration::from_secs(15),
        || p.containers() == json!({}),
    );
    let o = client.exec(&["curl", "-s", "--max-time", "2", url]);
    assert!(!o.status.success(), "still published: {}", stdout(&o));
}
