//! Docker on vswitch, end to end: a real dockerd (Debian's docker.io) in
//! the test's namespace uses vswitchd's remote network driver and IPAM
//! driver (`vswitchd --docker-plugin`). Containers are busybox from an
//! imported image; nothing is pulled, and traffic stays in namespaces the
//! test made.

mod common;

use std::time::Duration;

use common::capture::{contains, secret_ping, Capture, SECRET};
use common::docker::DockerHost;
use common::*;

/// A "Docker host": dockerd and vswitchd in one network namespace, vswitchd
/// in dockerd's mount namespace (where the sandboxes' namespaces are
/// mounted and `/run/docker/plugins` is the test's own). dockerd is
/// dropped first, so its containers leave while the plugin still answers.
struct DockerOnVswitch {
    docker: DockerHost,
    host: Host,
}

/// A web server that answers `/cgi-bin/ip` with the client's address.
const WEB: &[&str] = &[
    "sh",
    "-c",
    "mkdir -p /w/cgi-bin && printf '#!/bin/sh\\necho Content-Type: text/plain\\necho\\necho $REMOTE_ADDR\\n' > /w/cgi-bin/ip && chmod +x /w/cgi-bin/ip && echo hello-from-vswitch > /w/index.html && exec httpd -f -p 80 -h /w",
];

impl DockerOnVswitch {
    fn start(dockerd_flags: &[&str]) -> DockerOnVswitch {
        let ns = Netns::new("vdk");
        let docker = DockerHost::start(&ns.name, None, dockerd_flags);
        let api = docker.host();
        let host = Host::start_in_mount_ns(
            ns,
            Some(docker.mount_ns_path()),
            &["--docker-plugin", "--docker-host", &api],
        );
        DockerOnVswitch { docker, host }
    }

    /// A Docker host that is a cluster member at `ip` on the underlay.
    fn in_cluster(
        ul: &Underlay,
        ip: &str,
        key: &TempFile,
        dockerd_flags: &[&str],
    ) -> DockerOnVswitch {
        let ns = ul.plug("vdo", &format!("{ip}/24"));
        let docker = DockerHost::start(&ns.name, None, dockerd_flags);
        let api = docker.host();
        let mut args = cluster_args(key.path(), ip);
        args.extend([
            "--docker-plugin".to_string(),
            "--docker-host".to_string(),
            api,
        ]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let host = Host::start_in_mount_ns(ns, Some(docker.mount_ns_path()), &args);
        DockerOnVswitch { docker, host }
    }

    /// `docker network create -d vswitch --ipam-driver vswitch
    /// -o vswitch.name=NAME FLAGS... NAME`; returns NAME.
    fn network(&self, prefix: &str, flags: &[&str]) -> String {
        let name = unique(prefix);
        self.network_named(&name, flags);
        name
    }

    /// [`DockerOnVswitch::network`] of a given name.
    fn network_named(&self, name: &str, flags: &[&str]) {
        let opt = format!("vswitch.name={name}");
        let mut args = vec![
            "network",
            "create",
            "-d",
            "vswitch",
            "--ipam-driver",
            "vswitch",
            "-o",
            &opt,
        ];
        args.extend_from_slice(flags);
        args.push(name);
        self.docker.docker_ok(&args);
    }

    /// `docker run --rm --network NET busybox sh -c SCRIPT`: its output.
    fn client(&self, network: &str, script: &str) -> std::process::Output {
        self.docker.docker_within(
            &[
                "run",
                "--rm",
                "--pull",
                "never",
                "--network",
                network,
                common::docker::BUSYBOX,
                "sh",
                "-c",
                script,
            ],
            Duration::from_secs(60),
        )
    }

    /// Waits until vswitch knows the Docker container by its name on
    /// `network` (Docker's API is asked after the endpoint joins).
    fn wait_named(&self, network: &str, name: &str) {
        wait_for(
            &format!("{name} named on {network}"),
            Duration::from_secs(30),
            || has_container(&self.host, network, name),
        );
    }
}

#[test]
fn containers_talk_by_name_and_alias_and_removal_leaves_nothing() {
    require_root!();
    let d = DockerOnVswitch::start(&[]);
    let net = d.network("dkw", &["--subnet", "10.210.0.0/24"]);
    let web = d.docker.run(
        "web",
        &[
            "--network",
            &net,
            "--network-alias",
            "www",
            "--label",
            "app=web",
        ],
        WEB,
    );
    d.wait_named(&net, &web);

    let out = d.client(
        &net,
        &format!("ping -c1 -W2 {web} && ping -c1 -W2 www && wget -qO- http://{web}/ && wget -qO- http://www/"),
    );
    let text = stdout(&out);
    assert!(
        out.status.success(),
        "{text}\n{}\n{}",
        stderr(&out),
        tail(&d.host.log(), 40)
    );
    assert_eq!(text.matches("hello-from-vswitch").count(), 2, "{text}");
    assert!(text.contains("10.210.0."), "{text}");

    // vswitch's own view: the container under its Docker name, with its
    // alias, and answered by vswitch's DNS on the gateway.
    // The interface as Docker named it in the sandbox.
    wait_for(
        "the TAP's name in the sandbox",
        Duration::from_secs(10),
        || d.host.vs_json(&["inspect", &web])[0]["Networks"][net.as_str()]["Interface"] == "eth0",
    );
    let inspect = d.host.vs_json(&["inspect", &web]);
    let ep = &inspect[0]["Networks"][net.as_str()];
    let ip = ep["IPAddress"].as_str().unwrap().to_string();
    assert!(ip.starts_with("10.210.0."), "{inspect}");
    // Docker's labels, which policies select by.
    assert_eq!(inspect[0]["Labels"]["app"], "web", "{inspect}");
    assert!(
        ep["Aliases"].as_array().unwrap().iter().any(|a| a == "www"),
        "{inspect}"
    );
    let out = d.client(
        &net,
        &format!("nslookup {web} 10.210.0.1; nslookup www 10.210.0.1"),
    );
    let text = stdout(&out);
    assert_eq!(
        text.matches(&ip).count(),
        2,
        "vswitch's DNS does not know Docker's names: {text}"
    );

    // `vswitch ps` lists Docker's container: running, by its Docker name,
    // with its address and this host, no command of vswitch's.
    let ps = d.host.vs_json(&["ps", "--format", "json"]);
    let row = ps
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["Name"] == web.as_str())
        .unwrap_or_else(|| panic!("ps lacks {web}: {ps}"));
    assert_eq!(row["State"], "running", "{row}");
    assert_eq!(row["Addresses"], serde_json::json!([ip]), "{row}");
    assert_eq!(row["Networks"], serde_json::json!([net]), "{row}");
    assert_eq!(row["Command"], serde_json::json!([]), "{row}");

    // `vswitch doctor` probes from inside Docker's sandbox: the interface
    // Docker moved in, the gateway's echo, the container's own name.
    let out = d.host.vs(&["doctor", &web]);
    let text = stdout(&out);
    assert!(out.status.success(), "{text}{}", stderr(&out));
    for check in ["ok   interface", "ok   gateway", "ok   dns"] {
        assert!(text.contains(check), "{text}");
    }

    // Gone: no endpoint, no TAP, no network, no address.
    d.docker.docker_ok(&["rm", "-f", &web]);
    d.docker.docker_ok(&["network", "rm", &net]);
    let list = d.host.vs_ok(&["network", "ls"]);
    assert!(!list.contains(&net), "{list}");
    assert!(!d.host.vs(&["inspect", &web]).status.success());
    assert!(!d.host.vs_ok(&["ps", "-a"]).contains(&web));
    let links = stdout(&d.host.ns.exec(&["ip", "-o", "link"]));
    assert!(!links.contains("vsd"), "a TAP is left: {links}");
    // The subnet is free again for a new network.
    let again = d.network("dkw", &["--subnet", "10.210.0.0/24"]);
    d.docker.docker_ok(&["network", "rm", &again]);
}

#[test]
fn network_connect_gives_a_second_interface() {
    require_root!();
    let d = DockerOnVswitch::start(&[]);
    let front = d.network("dkf", &["--subnet", "10.211.0.0/24"]);
    let back = d.network("dkb", &[]);
    let web = d.docker.run("web", &["--network", &front], WEB);
    d.docker
        .docker_ok(&["network", "connect", "--alias", "db", &back, &web]);
    let addrs = d.docker.docker_ok(&["exec", &web, "ip", "addr"]);
    assert!(addrs.contains("eth0") && addrs.contains("eth1"), "{addrs}");
    d.wait_named(&back, &web);
    let inspect = d.host.vs_json(&["inspect", &web]);
    assert!(
        inspect[0]["Networks"][front.as_str()].is_object(),
        "{inspect}"
    );
    assert!(
        inspect[0]["Networks"][back.as_str()].is_object(),
        "{inspect}"
    );

    let out = d.client(&back, "ping -c1 -W2 db && wget -qO- http://db/");
    assert!(
        stdout(&out).contains("hello-from-vswitch"),
        "{}\n{}",
        stdout(&out),
        stderr(&out)
    );
    // Networks are isolated: the back network's client cannot reach the
    // front address.
    let front_ip = d.host.ip_of(&web, &front);
    let out = d.client(&back, &format!("ping -c1 -W1 {front_ip}"));
    assert!(
        !out.status.success(),
        "front reached from back: {}",
        stdout(&out)
    );

    d.docker.docker_ok(&["network", "disconnect", &back, &web]);
    let addrs = d.docker.docker_ok(&["exec", &web, "ip", "addr"]);
    assert!(!addrs.contains("eth1"), "{addrs}");
    let inspect = d.host.vs_json(&["inspect", &web]);
    assert!(inspect[0]["Networks"][back.as_str()].is_null(), "{inspect}");
    // A static address and MAC are kept.
    let fixed = d.docker.run(
        "fixed",
        &[
            "--network",
            &front,
            "--ip",
            "10.211.0.99",
            "--mac-address",
            "02:00:00:aa:bb:cc",
        ],
        &["sleep", "600"],
    );
    let addrs = d.docker.docker_ok(&["exec", &fixed, "ip", "addr"]);
    assert!(
        addrs.contains("10.211.0.99/24") && addrs.contains("02:00:00:aa:bb:cc"),
        "{addrs}"
    );
    d.wait_named(&front, &fixed);
    let inspect = d.host.vs_json(&["inspect", &fixed]);
    let ep = &inspect[0]["Networks"][front.as_str()];
    assert_eq!(ep["IPAddress"], "10.211.0.99", "{inspect}");
    assert_eq!(ep["MacAddress"], "02:00:00:aa:bb:cc", "{inspect}");
    // The address is taken: a second container cannot have it.
    let out = d.docker.docker(&[
        "run",
        "--rm",
        "--pull",
        "never",
        "--network",
        &front,
        "--ip",
        "10.211.0.99",
        common::docker::BUSYBOX,
        "true",
    ]);
    assert!(
        !out.status.success(),
        "a taken address was handed out twice"
    );
}

#[test]
fn published_port_keeps_the_clients_address_and_goes_with_the_container() {
    require_root!();
    let d = DockerOnVswitch::start(&[]);
    let net = d.network("dkp", &[]);
    let client = Netns::new("vdkc");
    veth(&d.host.ns, "10.251.0.1/24", &client, "10.251.0.2/24");
    let web = d
        .docker
        .run("web", &["--network", &net, "-p", "8080:80"], WEB);
    let (ok_, out) = until_ok(
        &client.name,
        &[
            "curl",
            "-s",
            "--max-time",
            "2",
            "http://10.251.0.1:8080/cgi-bin/ip",
        ],
        Duration::from_secs(20),
    );
    assert!(
        ok_,
        "published port unreachable: {out}\n{}",
        tail(&d.host.log(), 40)
    );
    // busybox httpd listens on IPv6 and shows an IPv4 client mapped.
    assert!(
        matches!(out.trim(), "10.251.0.2" | "[::ffff:10.251.0.2]"),
        "the container saw another address: {out}"
    );
    // vswitch shows the published port of the Docker container.
    d.wait_named(&net, &web);
    let ports = d.host.vs_ok(&["port", &web]);
    assert!(
        ports.contains("80/tcp") && ports.contains("8080"),
        "{ports}"
    );

    d.docker.docker_ok(&["stop", "-t", "1", &web]);
    let out = client.exec(&["curl", "-s", "--max-time", "2", "http://10.251.0.1:8080/"]);
    assert!(
        !out.status.success(),
        "still published after stop: {}",
        stdout(&out)
    );
    let listening = stdout(&d.host.ns.exec(&["ss", "-ltn"]));
    assert!(!listening.contains(":8080"), "{listening}");
}

#[test]
fn containers_stay_connected_across_restarts_of_vswitchd_and_dockerd() {
    require_root!();
    let mut d = DockerOnVswitch::start(&["--live-restore"]);
    let net = d.network("dkr", &[]);
    let web = d.docker.run("web", &["--network", &net], WEB);
    let peer = d
        .docker
        .run("peer", &["--network", &net], &["sleep", "600"]);
    d.wait_named(&net, &web);
    let fetch = |d: &DockerOnVswitch| {
        d.docker.docker_within(
            // (busybox 1.35's `wget -T` crashes: `timeout` bounds it.)
            &[
                "exec",
                &peer,
                "timeout",
                "3",
                "wget",
                "-qO-",
                &format!("http://{web}/"),
            ],
            Duration::from_secs(20),
        )
    };
    // (httpd starts after its shell has written the page.)
    wait_for(
        "traffic before the restarts",
        Duration::from_secs(20),
        || stdout(&fetch(&d)).contains("hello-from-vswitch"),
    );

    // vswitchd crashes and comes back: the TAPs Docker renamed are found
    // again and traffic flows.
    d.host.restart();
    let mut last = String::new();
    wait_for(
        "traffic after vswitchd restart",
        Duration::from_secs(20),
        || {
            let out = fetch(&d);
            last = format!("{}{}", stdout(&out), stderr(&out));
            last.contains("hello-from-vswitch")
        },
    );
    let inspect = d.host.vs_json(&["inspect", &web]);
    assert_eq!(
        inspect[0]["Networks"][net.as_str()]["Interface"],
        "eth0",
        "{inspect}"
    );

    // dockerd restarts with --live-restore: its containers keep running
    // and connected.
    d.docker.restart();
    wait_for(
        "traffic after dockerd restart",
        Duration::from_secs(30),
        || stdout(&fetch(&d)).contains("hello-from-vswitch"),
    );
    // And a new container still joins.
    let out = d.client(&net, &format!("timeout 3 wget -qO- http://{web}/"));
    assert!(
        stdout(&out).contains("hello-from-vswitch"),
        "{}",
        stderr(&out)
    );
}

/// Docker's `"dns"` setting for names its own resolver does not know:
/// every vswitch gateway answers on this address.
const VSWITCH_DNS: &str = "169.254.53.53";

#[test]
fn two_docker_hosts_share_an_overlay_and_talk_by_name() {
    require_root!();
    let ul = Underlay::new();
    let key = TempFile::new("vskey-docker", "docker hosts without swarm");
    let a = DockerOnVswitch::in_cluster(&ul, "192.0.2.21", &key, &["--dns", VSWITCH_DNS]);
    let b = DockerOnVswitch::in_cluster(&ul, "192.0.2.22", &key, &["--dns", VSWITCH_DNS]);
    b.host.vs_ok(&["join-cluster", "192.0.2.21"]);
    for h in [&a.host, &b.host] {
        wait_for("2 alive members", Duration::from_secs(20), || {
            alive_members(h) == 2
        });
    }
    // The same network created on each Docker host, by the same name.
    let name = unique("dko");
    let opt = format!("vswitch.name={name}");
    let create = [
        "network",
        "create",
        "-d",
        "vswitch",
        "--ipam-driver",
        "vswitch",
        "--subnet",
        "10.212.0.0/24",
        "-o",
        &opt,
        "-o",
        "vswitch.driver=overlay",
        &name,
    ];
    a.docker.docker_ok(&create);
    wait_for("the overlay on host b", Duration::from_secs(15), || {
        b.host.vs(&["network", "inspect", &name]).status.success()
    });
    b.docker.docker_ok(&create);

    let web = a
        .docker
        .run("web", &["--network", &name, "--network-alias", "www"], WEB);
    a.wait_named(&name, &web);
    wait_for("web seen from host b", Duration::from_secs(20), || {
        has_container(&b.host, &name, &web)
    });
    let inspect = b.host.vs_json(&["network", "inspect", &name]);
    assert_eq!(inspect[0]["Driver"], "overlay", "{inspect}");

    // From a container on host b: Docker's resolver does not know `web`
    // and forwards to vswitch's DNS, which knows every host's containers.
    let mut last = String::new();
    wait_for(
        "web by name and alias from host b",
        Duration::from_secs(30),
        || {
            let out = b.client(&name, &format!("timeout 3 wget -qO- http://{web}/ && timeout 3 wget -qO- http://www/ && ip addr"));
            last = format!("{}{}", stdout(&out), stderr(&out));
            last.matches("hello-from-vswitch").count() == 2
        },
    );
    // Addresses are unique across the hosts (the cluster IPAM).
    let web_ip = a.host.ip_of(&web, &name);
    assert!(last.contains("10.212.0."), "{last}");
    assert!(
        !last.contains(&format!("inet {web_ip}/")),
        "host b's client got web's address {web_ip}: {last}"
    );
}

/// A Docker host and a plain vswitch host share an encrypted overlay that
/// `docker network create` made with `--gateway`, `--aux-address` and
/// Docker's MTU option: the vswitch host sees all of it, its container
/// reaches the Docker container by name, inside QUIC only, and cannot take
/// the aux address. `docker network rm` leaves the overlay to the host
/// that still uses it; when that host removes it, the Docker network makes
/// it again at its next container; the last `docker network rm` removes it
/// everywhere.
#[test]
fn an_encrypted_overlay_with_gateway_aux_address_and_mtu_lives_while_a_host_uses_it() {
    require_root!();
    let ul = Underlay::new();
    let key = TempFile::new("vskey-dke", "docker encrypted overlay");
    let a = DockerOnVswitch::in_cluster(&ul, "192.0.2.31", &key, &[]);
    let mut b = Host::in_cluster(&ul, "vdb", "192.0.2.32", &key.0, &[]);
    b.vs_ok(&["join-cluster", "192.0.2.31"]);
    wait_for("2 alive members", Duration::from_secs(20), || {
        alive_members(&a.host) == 2 && alive_members(&b) == 2
    });
    let flags = [
        "-o",
        "vswitch.driver=overlay",
        "-o",
        "encrypted",
        "-o",
        "com.docker.network.driver.mtu=1400",
        "--subnet",
        "10.214.0.0/24",
        "--gateway",
        "10.214.0.254",
        "--aux-address",
        "printer=10.214.0.10",
    ];
    let net = a.network("dke", &flags);
    wait_for("the overlay on host b", Duration::from_secs(15), || {
        b.vs(&["network", "inspect", &net]).status.success()
    });
    let check_network = |h: &dyn Vswitch| {
        let i = h.vs_json(&["network", "inspect", &net]);
        assert_eq!(i[0]["Driver"], "overlay", "{i}");
        // As Docker sends `-o encrypted`: present, empty (the daemon takes
        // it as on; the capture below shows it is).
        assert_eq!(i[0]["Options"]["encrypted"], "", "{i}");
        assert_eq!(i[0]["MTU"], 1400, "{i}");
        assert_eq!(i[0]["IPAM"]["Config"][0]["Gateway"], "10.214.0.254", "{i}");
    };
    check_network(&b);

    let web = a
        .docker
        .run("web", &["--network", &net, "--network-alias", "www"], WEB);
    a.wait_named(&net, &web);
    let link = a
        .docker
        .docker_ok(&["exec", &web, "ip", "link", "show", "eth0"]);
    assert!(link.contains("mtu 1400"), "{link}");
    let routes = a.docker.docker_ok(&["exec", &web, "ip", "route"]);
    assert!(routes.contains("default via 10.214.0.254"), "{routes}");
    let web_ip = a.host.ip_of(&web, &net);
    assert_ne!(web_ip, "10.214.0.10", "the aux address was handed out");

    // The aux address is taken cluster-wide.
    let taken = b.vs(&run_detached(
        &unique("aux"),
        &net,
        &["--ip", "10.214.0.10"],
        &["sleep", "60"],
    ));
    assert!(!taken.status.success(), "host b got the aux address");
    let cl = b.run("cl", &net, &[]);
    wait_for("web seen from host b", Duration::from_secs(20), || {
        has_container(&b, &net, &web) && has_container(&a.host, &net, &cl)
    });
    wait_for("www resolved from host b", Duration::from_secs(20), || {
        resolves(&cl, "10.214.0.254", "www").as_deref() == Some(web_ip.as_str())
    });
    let cap = Capture::start(&ul, "dke");
    let o = secret_ping(&cl, &web_ip);
    let bytes = cap.finish();
    assert!(
        o.status.success(),
        "ping across the encrypted overlay: {}",
        stderr(&o)
    );
    assert!(!bytes.is_empty());
    assert!(
        !contains(&bytes, SECRET),
        "the payload crossed the underlay in the clear"
    );

    // Host b still uses the overlay: Docker's network goes, the overlay stays.
    a.docker.docker_ok(&["rm", "-f", &web]);
    a.docker.docker_ok(&["network", "rm", &net]);
    check_network(&b);
    check_network(&a.host);
    assert!(ping_until(&cl, "10.214.0.254", Duration::from_secs(5)).is_some());

    // Made again on a, then removed by its last user, b: a's Docker
    // network makes it again for its next container.
    a.network_named(&net, &flags);
    b.vs_ok(&["rm", &cl]);
    b.vs_ok(&["network", "rm", &net]);
    wait_for(
        "the overlay gone from host a",
        Duration::from_secs(15),
        || !a.host.vs(&["network", "inspect", &net]).status.success(),
    );
    let web2 = a.docker.run("web2", &["--network", &net], WEB);
    a.wait_named(&net, &web2);
    check_network(&a.host);
    wait_for(
        "the overlay back on host b",
        Duration::from_secs(15),
        || b.vs(&["network", "inspect", &net]).status.success(),
    );
    check_network(&b);
    let cl2 = b.run("cl2", &net, &[]);
    let web2_ip = a.host.ip_of(&web2, &net);
    assert!(
        ping_until(&cl2, &web2_ip, Duration::from_secs(15)).is_some(),
        "host b to the Docker container on the overlay made again"
    );

    // The last Docker network removes it everywhere.
    b.vs_ok(&["rm", &cl2]);
    wait_for("cl2 gone from host a", Duration::from_secs(15), || {
        !has_container(&a.host, &net, &cl2)
    });
    a.docker.docker_ok(&["rm", "-f", &web2]);
    a.docker.docker_ok(&["network", "rm", &net]);
    wait_for(
        "the overlay gone from host b",
        Duration::from_secs(15),
        || !b.vs(&["network", "inspect", &net]).status.success(),
    );
    assert!(!a.host.vs(&["network", "inspect", &net]).status.success());
}

#[test]
fn ipv6_ranges_internal_networks_and_a_container_removed_while_vswitchd_was_down() {
    require_root!();
    let mut d = DockerOnVswitch::start(&[]);
    let net = d.network(
        "dk6",
        &[
            "--ipv6",
            "--internal",
            "--subnet",
            "10.213.0.0/24",
            "--ip-range",
            "10.213.0.128/25",
            "--subnet",
            "fd00:213::/64",
        ],
    );
    let inspect = d.host.vs_json(&["network", "inspect", &net]);
    assert_eq!(inspect[0]["Internal"], true, "{inspect}");
    assert_eq!(inspect[0]["EnableIPv6"], true, "{inspect}");
    assert_eq!(
        inspect[0]["IPAM"]["Config"][0]["IPRange"], "10.213.0.128/25",
        "{inspect}"
    );
    let c1 = d.docker.run("c1", &["--network", &net], &["sleep", "600"]);
    let c2 = d.docker.run("c2", &["--network", &net], &["sleep", "600"]);
    d.wait_named(&net, &c2);
    let ip1 = d.host.ip_of(&c1, &net);
    let last: u8 = ip1.rsplit('.').next().unwrap().parse().unwrap();
    assert!(
        ip1.starts_with("10.213.0.") && last >= 128,
        "{ip1} is outside --ip-range"
    );
    let v = d.host.vs_json(&["inspect", &c1]);
    let ip6 = v[0]["Networks"][net.as_str()]["GlobalIPv6Address"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(ip6.starts_with("fd00:213::"), "{v}");
    // Internal: no default route in the container, and both families
    // reach the neighbour.
    let routes = d.docker.docker_ok(&["exec", &c2, "ip", "route"]);
    assert!(!routes.contains("default"), "{routes}");
    d.docker
        .docker_ok(&["exec", &c2, "ping", "-c1", "-W2", &ip1]);
    d.docker
        .docker_ok(&["exec", &c2, "ping", "-6", "-c1", "-W2", &ip6]);

    // vswitchd is down while c2 goes: Docker's calls fail, and the next
    // start releases what c2 held.
    let ip2 = d.host.ip_of(&c2, &net);
    d.host.kill9();
    let out = d
        .docker
        .docker_within(&["rm", "-f", &c2], Duration::from_secs(120));
    assert!(out.status.success(), "{}", stderr(&out));
    d.host.restart();
    assert!(
        !d.host.vs(&["inspect", &c2]).status.success(),
        "c2 is still known"
    );
    let links = stdout(&d.host.ns.exec(&["ip", "-o", "link"]));
    assert!(!links.contains("vsd"), "a TAP is left: {links}");
    // Its address is free: a container asking for it gets it.
    let c3 = d
        .docker
        .run("c3", &["--network", &net, "--ip", &ip2], &["sleep", "600"]);
    d.wait_named(&net, &c3);
    assert_eq!(d.host.ip_of(&c3, &net), ip2);
}

#[test]
fn a_network_made_with_the_vswitch_cli_is_shared_with_docker() {
    require_root!();
    let d = DockerOnVswitch::start(&[]);
    let net = d.host.network("dks", &["--subnet", "10.214.0.0/24"]);
    // A sandbox of the test's own, by /proc path (vswitchd runs in
    // dockerd's mount namespace, which does not see the test's /run/netns).
    let mut holder = std::process::Command::new("unshare")
        .args(["--net", "sleep", "600"])
        .spawn()
        .unwrap();
    let netns = format!("/proc/{}/ns/net", holder.id());
    wait_for("the sandbox's namespace", Duration::from_secs(5), || {
        std::fs::read_link(&netns).ok() != std::fs::read_link("/proc/self/ns/net").ok()
    });
    let sandbox = unique("sbx");
    d.host
        .vs_ok(&["network", "connect", "--netns", &netns, &net, &sandbox]);
    let sandbox_ip = d.host.ip_of(&sandbox, &net);
    // Docker's network on it: the same subnet, found, not made again.
    let opt = format!("vswitch.name={net}");
    let wrong = d.docker.docker(&[
        "network",
        "create",
        "-d",
        "vswitch",
        "--ipam-driver",
        "vswitch",
        "--subnet",
        "10.215.0.0/24",
        "-o",
        &opt,
        "x",
    ]);
    assert!(
        !wrong.status.success(),
        "a Docker network with another subnet was accepted"
    );
    assert!(
        stderr(&wrong).contains("10.214.0.0/24"),
        "{}",
        stderr(&wrong)
    );
    d.docker.docker_ok(&[
        "network",
        "create",
        "-d",
        "vswitch",
        "--ipam-driver",
        "vswitch",
        "--ipam-opt",
        &opt,
        "-o",
        &opt,
        "shared",
    ]);
    let web = d.docker.run("web", &["--network", "shared"], WEB);
    d.wait_named(&net, &web);
    // The vswitch sandbox reaches the Docker container by name (vswitch's
    // DNS), and the container reaches the sandbox by address.
    // (Asked of the gateway by address: the sandbox has no resolv.conf of
    // its own, and the host's resolvers are never to be asked.)
    let mut last = String::new();
    wait_for(
        "the Docker container from the vswitch sandbox",
        Duration::from_secs(20),
        || {
            let out = cmd(&[
            "nsenter", &format!("--net={netns}"), "sh", "-c",
            &format!("ip=$(dig +short +time=1 +tries=1 @10.214.0.1 {web}) && [ -n \"$ip\" ] && curl -s --max-time 2 http://$ip/"),
        ]);
            last = stdout(&out);
            last.contains("hello-from-vswitch")
        },
    );
    d.docker
        .docker_ok(&["exec", &web, "ping", "-c1", "-W2", &sandbox_ip]);
    // Docker's network goes; the vswitch network stays, with its sandbox.
    d.docker.docker_ok(&["rm", "-f", &web]);
    d.docker.docker_ok(&["network", "rm", "shared"]);
    assert!(has_container(&d.host, &net, &sandbox));
    d.host.vs_ok(&["network", "disconnect", &net, &sandbox]);
    let _ = holder.kill();
    let _ = holder.wait();
}
