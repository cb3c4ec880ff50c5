//! End-to-end tests of port publishing and egress NAT on real namespaces:
//! a vswitchd in a "host" namespace, a "client" namespace and a "world"
//! namespace joined to it by veths, real servers (socat) in containers and
//! in the world. Traffic stays inside the namespaces the tests make.

mod common;

use std::time::{Duration, Instant};

use common::*;

#[test]
fn egress_reaches_the_world_and_internal_does_not() {
    require_root!();
    let mut h = Host::start(&[]);
    let world = Netns::new("vsw");
    veth(&h.ns, "198.51.100.1/24", &world, "198.51.100.2/24");
    // Ping sockets for the daemon (per-namespace sysctl).
    let _ =
        h.ns.exec(&["sysctl", "-qw", "net.ipv4.ping_group_range=0 2147483647"]);
    let _tcp = peer_echo_tcp(&world.name, 8080);
    let _udp = peer_echo_udp(&world.name, 9999);

    let net = h.network("n", &["--subnet", "10.232.0.0/24"]);
    let c = h.run("c", &net, &[]);

    // TCP: the world sees the daemon's address.
    let (ok, out) = until_ok(
        &c,
        &[
            "socat",
            "-T3",
            "-",
            "TCP:198.51.100.2:8080,connect-timeout=3",
        ],
        Duration::from_secs(10),
    );
    assert!(ok, "egress TCP failed: {out}\n{}", tail(&h.log(), 30));
    assert!(out.contains("peer=198.51.100.1"), "{out}");

    // UDP.
    let (ok, out) = until_ok(
        &c,
        &["sh", "-c", "echo hi | socat -T2 - UDP:198.51.100.2:9999"],
        Duration::from_secs(10),
    );
    assert!(ok, "egress UDP failed: {out}");
    assert!(out.contains("peer=198.51.100.1"), "{out}");

    // ICMP echo through ping sockets.
    let o = ns_exec(&c, &["ping", "-c", "2", "-W", "2", "198.51.100.2"]);
    assert!(o.status.success(), "egress ping: {}", stdout(&o));

    // A refused connect is refused in the container too (RST, not a hang).
    let start = Instant::now();
    let o = ns_exec(
        &c,
        &["socat", "-T3", "-", "TCP:198.51.100.2:1,connect-timeout=5"],
    );
    assert!(!o.status.success());
    assert!(
        start.elapsed() < Duration::from_secs(4),
        "{:?}",
        start.elapsed()
    );

    // An internal network has no egress (and no default route to try).
    let inet = h.network("i", &["--internal", "--subnet", "10.233.0.0/24"]);
    let ic = h.run("ic", &inet, &[]);
    let _ = ns_exec(
        &ic,
        &["ip", "route", "replace", "default", "via", "10.233.0.1"],
    );
    let o = ns_exec(
        &ic,
        &[
            "socat",
            "-T2",
            "-",
            "TCP:198.51.100.2:8080,connect-timeout=2",
        ],
    );
    assert!(
        !o.status.success() || !stdout(&o).contains("peer="),
        "internal network reached the world: {}",
        stdout(&o)
    );
    // The NAT counted what it did, per network.
    let stats = h.vs_json(&["stats", "--json"]);
    let nat = &stats["Nat"];
    let egress: u64 = nat
        .as_object()
        .expect("Nat counters")
        .values()
        .map(|c| c["TcpEgress"].as_u64().unwrap_or(0))
        .sum();
    assert!(egress >= 1, "{stats}");
    assert!(
        nat[&inet]["EgressDenied"].as_u64().unwrap_or(0) >= 1,
        "{stats}"
    );
}

#[test]
fn published_ports_show_real_clients_v4_v6_udp_hairpin_restart() {
    require_root!();
    let mut h = Host::start(&[]);
    let client = Netns::new("vsc");
    veth(&h.ns, "192.0.2.1/24", &client, "192.0.2.2/24");
    // IPv6 on the same link (no DAD wait).
    let (hv, cv) = (
        stdout(&h.ns.exec(&["sh", "-c", "ls /sys/class/net | grep '^va'"])),
        stdout(&client.exec(&["sh", "-c", "ls /sys/class/net | grep '^vb'"])),
    );
    ok(&[
        "ip",
        "-n",
        &h.ns.name,
        "addr",
        "add",
        "2001:db8:2::1/64",
        "dev",
        hv.trim(),
        "nodad",
    ]);
    ok(&[
        "ip",
        "-n",
        &client.name,
        "addr",
        "add",
        "2001:db8:2::2/64",
        "dev",
        cv.trim(),
        "nodad",
    ]);

    let net = h.network("n", &["--subnet", "10.234.0.0/24"]);
    let c = h.run("c", &net, &["-p", "8080:80", "-p", "5353:53/udp"]);
    let _tcp = peer_echo_tcp(&c, 80);
    let _udp = peer_echo_udp(&c, 53);

    let tcp = |ns: &str, target: &str| {
        until_ok(
            ns,
            &[
                "socat",
                "-T3",
                "-",
                &format!("TCP:{target},connect-timeout=3"),
            ],
            Duration::from_secs(10),
        )
    };
    // The container sees the client's own address.
    let (ok4, out) = tcp(&client.name, "192.0.2.1:8080");
    assert!(ok4, "published TCP failed: {out}\n{}", tail(&h.log(), 30));
    assert!(out.contains("peer=192.0.2.2"), "{out}");
    // From the daemon's loopback: the gateway.
    let (ok_lo, out) = tcp(&h.ns.name, "127.0.0.1:8080");
    assert!(ok_lo, "{out}");
    assert!(out.contains("peer=10.234.0.1"), "{out}");
    // An IPv6 client to the IPv4-only container: the gateway too.
    let (ok6, out) = tcp(&client.name, "[2001:db8:2::1]:8080");
    assert!(ok6, "IPv6 client failed: {out}");
    assert!(out.contains("peer=10.234.0.1"), "{out}");
    // UDP.
    let (oku, out) = until_ok(
        &client.name,
        &["sh", "-c", "echo hi | socat -T2 - UDP:192.0.2.1:5353"],
        Duration::from_secs(10),
    );
    assert!(oku, "published UDP failed: {out}");
    assert!(out.contains("peer=192.0.2.2"), "{out}");
    // Hairpin: the container and a neighbour through the host address.
    let n = h.run("nb", &net, &[]);
    for who in [&c, &n] {
        let (okh, out) = tcp(who, "192.0.2.1:8080");
        assert!(okh, "hairpin from {who} failed: {out}");
        assert!(out.contains("peer="), "{out}");
    }

    // `vswitch port` and `inspect`.
    let ports = h.vs_ok(&["port", &c]);
    assert!(ports.contains("80/tcp -> 0.0.0.0:8080"), "{ports}");
    assert!(ports.contains("53/udp -> 0.0.0.0:5353"), "{ports}");
    let v = h.vs_json(&["inspect", &c]);
    assert_eq!(v[0]["Ports"]["80/tcp"][0]["HostPort"], "8080", "{v}");

    // A rate figure for the report.
    let start = Instant::now();
    let mut done = 0;
    while start.elapsed() < Duration::from_secs(2) {
        let o = client.exec(&["socat", "-T3", "-u", "TCP:192.0.2.1:8080", "-"]);
        assert!(
            stdout(&o).contains("peer=192.0.2.2"),
            "connection {done} failed: {} {}\n{}",
            o.status,
            stderr(&o),
            tail(&h.log(), 20)
        );
        done += 1;
    }
    eprintln!(
        "published-port connections (socat per connection, sequential): {:.0}/s",
        done as f64 / start.elapsed().as_secs_f64()
    );

    // A port in use: a clear error and nothing left behind.
    let name = unique("dup");
    // Cleaned up by the harness if the daemon ever left it behind.
    h.containers.push(name.clone());
    let o = h.vs(&run_detached(
        &name,
        &net,
        &["-p", "8080:80"],
        &["sleep", "600"],
    ));
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(
        err.contains("port 8080/tcp is already in use on 0.0.0.0; pick another host port"),
        "{err}"
    );
    assert!(!h.vs(&["inspect", &name]).status.success());
    assert!(!std::path::Path::new("/run/netns").join(&name).exists());
    let inspect = h.vs_ok(&["network", "inspect", &net]);
    assert!(!inspect.contains(&name), "{inspect}");
    // A bad spec is refused before anything is made.
    let o = h.vs(&run_detached(&name, &net, &["-p", "8080:0"], &["true"]));
    assert!(stderr(&o).contains("-p 8080:0:"), "{}", stderr(&o));

    // Durable: a restarted daemon listens again.
    h.restart();
    let (okr, out) = tcp(&client.name, "192.0.2.1:8080");
    assert!(okr, "after restart: {out}\n{}", tail(&h.log(), 30));
    assert!(out.contains("peer=192.0.2.2"), "{out}");

    // Removed with the container: the port is free again.
    h.vs_ok(&["rm", &c]);
    h.containers.retain(|x| x != &c);
    let again = h.run("again", &net, &["-p", "8080:80"]);
    assert!(h.vs_ok(&["port", &again]).contains("0.0.0.0:8080"));
}

#[test]
fn a_port_without_a_host_port_gets_a_free_one() {
    require_root!();
    let mut h = Host::start(&[]);
    let net = h.network("n", &["--subnet", "10.238.0.0/24"]);
    // Docker's `-p 80`: the kernel picks the host port.
    let c = h.run("r", &net, &["-p", "80"]);
    let _server = peer_echo_tcp(&c, 80);
    let ports = h.vs_ok(&["port", &c]);
    let host_port: u16 = ports
        .lines()
        .find_map(|l| l.strip_prefix("80/tcp -> 0.0.0.0:"))
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or_else(|| panic!("no 80/tcp mapping: {ports}"));
    assert_ne!(host_port, 0);
    let target = format!("TCP:127.0.0.1:{host_port}");
    let (ok, out) = until_ok(
        &h.ns.name,
        &["socat", "-u", "-T2", &target, "-"],
        Duration::from_secs(5),
    );
    assert!(ok && out.contains("peer="), "{out}");
}

/// 256 MiB each way through egress and through published ports arrive
/// intact (SHA-256) and in time, with the container's offloads on (TSO
/// super-frames into the NAT, GSO super-frames out of it) and off (MTU
/// frames with full checksums): the NAT must tell the container its window
/// opened once the host socket drained, and stream both directions whole.
#[rstest::rstest]
#[case::offloads_on(true)]
#[case::offloads_off(false)]
fn bulk_transfers_arrive_intact_both_ways(#[case] offloads: bool) {
    require_root!();
    const SIZE: u64 = 256 << 20;
    let h = Host::start(&[]);
    let world = Netns::new("vsu");
    veth(&h.ns, "198.51.100.1/24", &world, "198.51.100.2/24");
    let client = Netns::new("vsk");
    veth(&h.ns, "192.0.2.1/24", &client, "192.0.2.2/24");
    let net = h.network("u", &["--subnet", "10.233.0.0/24"]);
    let mut h = h;
    let c = h.run("c", &net, &["-p", "8080:80", "-p", "8081:81"]);
    if !offloads {
        let o = ns_exec(
            &c,
            &[
                "ethtool", "-K", "eth0", "tx", "off", "tso", "off", "gso", "off",
            ],
        );
        assert!(o.status.success(), "ethtool: {}", stderr(&o));
    }
    let dir = std::env::temp_dir().join(format!("vsbulk-{}-{}", std::process::id(), offloads));
    std::fs::create_dir_all(&dir).unwrap();
    let src = dir.join("src");
    ok(&[
        "sh",
        "-c",
        &format!("head -c {SIZE} /dev/urandom > {}", src.display()),
    ]);
    let sum = |p: &std::path::Path| {
        stdout(&cmd(&["sha256sum", p.to_str().unwrap()]))
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_string()
    };
    let want = sum(&src);
    let src = src.display().to_string();
    // (what, the listening side's namespace and `socat -u` addresses, the
    // connecting side's, the file written): `socat -u` copies from its
    // first address to its second.
    let dst = |n: &str| dir.join(n).display().to_string();
    let transfers = [
        (
            "egress upload",
            world.name.clone(),
            format!("TCP-LISTEN:8091,reuseaddr CREATE:{}", dst("up")),
            c.clone(),
            format!("OPEN:{src} TCP:198.51.100.2:8091,connect-timeout=3"),
            dst("up"),
        ),
        (
            "egress download",
            world.name.clone(),
            format!("OPEN:{src} TCP-LISTEN:8092,reuseaddr"),
            c.clone(),
            format!(
                "TCP:198.51.100.2:8092,connect-timeout=3 CREATE:{}",
                dst("down")
            ),
            dst("down"),
        ),
        (
            "published port, client to container",
            c.clone(),
            format!("TCP-LISTEN:80,reuseaddr CREATE:{}", dst("in")),
            client.name.clone(),
            format!("OPEN:{src} TCP:192.0.2.1:8080,connect-timeout=3"),
            dst("in"),
        ),
        (
            "published port, container to client",
            c.clone(),
            format!("OPEN:{src} TCP-LISTEN:81,reuseaddr"),
            client.name.clone(),
            format!("TCP:192.0.2.1:8081,connect-timeout=3 CREATE:{}", dst("out")),
            dst("out"),
        ),
    ];
    for (what, listen_ns, listen, connect_ns, connect, file) in &transfers {
        let mut argv = vec!["timeout", "120", "socat", "-u"];
        argv.extend(listen.split(' '));
        let _listener = Bg::spawn(listen_ns, &argv);
        std::thread::sleep(Duration::from_millis(300));
        let start = Instant::now();
        let mut argv = vec!["timeout", "120", "socat", "-u"];
        argv.extend(connect.split(' '));
        let o = ns_exec(connect_ns, &argv);
        assert!(
            o.status.success(),
            "{what} failed after {:?}: {}\n{}",
            start.elapsed(),
            stderr(&o),
            tail(&h.log(), 20)
        );
        let path = std::path::Path::new(file);
        let size = || std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        let deadline = Instant::now() + Duration::from_secs(30);
        while size() != SIZE && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        assert_eq!(size(), SIZE, "{what}: not all bytes arrived");
        assert_eq!(sum(path), want, "{what}: the bytes differ");
        eprintln!(
            "{what}: 256 MiB in {:?} (offloads {offloads})",
            start.elapsed()
        );
        let _ = std::fs::remove_file(path);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn tcp_connections_spread_over_the_workers() {
    require_root!();
    const EACH: usize = 16;
    let h = Host::start(&["--workers", "2"]);
    let world = Netns::new("vsq");
    veth(&h.ns, "198.51.100.1/24", &world, "198.51.100.2/24");
    let client = Netns::new("vsj");
    veth(&h.ns, "192.0.2.1/24", &client, "192.0.2.2/24");
    let _world_echo = peer_echo_tcp(&world.name, 8080);
    let net = h.network("q", &["--subnet", "10.234.0.0/24"]);
    let mut h = h;
    let c = h.run("c", &net, &["-p", "8080:80"]);
    let _container_echo = peer_echo_tcp(&c, 80);
    // Each connection answers with the peer it saw: the real client, and
    // the daemon's address for egress, whichever worker served it.
    let runs = [
        (
            c.clone(),
            "TCP:198.51.100.2:8080,connect-timeout=3",
            "peer=198.51.100.1",
        ),
        (
            client.name.clone(),
            "TCP:192.0.2.1:8080,connect-timeout=3",
            "peer=192.0.2.2",
        ),
    ];
    for (ns, to, want) in &runs {
        for i in 0..EACH {
            let (ok, out) = until_ok(ns, &["socat", "-T3", "-", to], Duration::from_secs(10));
            assert!(
                ok && out.contains(want),
                "{to} #{i}: {out}\n{}",
                tail(&h.log(), 30)
            );
        }
    }
    // A loopback client appears as the gateway, with a port the accepting
    // worker lends.
    let (ok, out) = until_ok(
        &h.ns.name,
        &["socat", "-T3", "-", "TCP:127.0.0.1:8080,connect-timeout=3"],
        Duration::from_secs(10),
    );
    assert!(ok && out.contains("peer=10.234.0.1"), "{out}");
    let stats = h.vs_json(&["stats", "--json"]);
    let per_worker: Vec<u64> = stats["WorkerNatConnections"]
        .as_array()
        .expect("WorkerNatConnections")
        .iter()
        .map(|v| v.as_u64().unwrap_or(0))
        .collect();
    assert_eq!(per_worker.len(), 2, "{stats}");
    // Each connection went to one worker by its tuple: both took a share
    // (fewer than 4 of 32 random tuples on one worker: odds below 1e-6).
    assert!(per_worker.iter().all(|n| *n >= 4), "{per_worker:?}");
    assert!(
        per_worker.iter().sum::<u64>() > 2 * EACH as u64,
        "{per_worker:?}"
    );
    let nat = &stats["Nat"][&net];
    assert!(
        nat["TcpInbound"].as_u64().unwrap_or(0) > EACH as u64,
        "{stats}"
    );
    assert!(
        nat["TcpEgress"].as_u64().unwrap_or(0) >= EACH as u64,
        "{stats}"
    );
}
