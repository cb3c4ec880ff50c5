//! End-to-end tests of overlay networks: three "hosts" (namespaces, one
//! vswitchd each) on an underlay (veths into a bridge namespace), gossip
//! with a cluster key, VXLAN between them, a kernel vxlan device as a
//! foreign VTEP. Every address used is inside namespaces the test made.

mod common;

use std::time::{Duration, Instant};

use common::*;

fn cluster_host(ul: &Underlay, ip: &str, key: &TempFile) -> Host {
    Host::in_cluster(ul, "vsh", ip, &key.0, &[])
}

#[test]
fn three_hosts_overlay_ping_dns_failure_and_restart() {
    require_root!();
    let ul = Underlay::new();
    let key = TempFile::new("vskey-good", "correct horse battery staple");
    let mut h1 = cluster_host(&ul, "192.0.2.11", &key);
    let mut h2 = cluster_host(&ul, "192.0.2.12", &key);
    let mut h3 = cluster_host(&ul, "192.0.2.13", &key);
    h2.vs_ok(&["join-cluster", "192.0.2.11"]);
    h3.vs_ok(&["join-cluster", "192.0.2.11:7946"]);
    for h in [&h1, &h2, &h3] {
        wait_for("3 alive members", Duration::from_secs(15), || {
            alive_members(h) == 3
        });
    }

    // A network made on one host exists on all of them.
    let net = h1.network("ov", &["--driver", "overlay", "--subnet", "10.240.0.0/24"]);
    for h in [&h2, &h3] {
        wait_for("the overlay on every host", Duration::from_secs(10), || {
            h.vs(&["network", "inspect", &net]).status.success()
        });
    }
    let i2 = h2.vs_json(&["network", "inspect", &net]);
    assert_eq!(i2[0]["Scope"], "global");
    assert_eq!(i2[0]["Driver"], "overlay");
    assert!(i2[0]["VNI"].as_u64().is_some(), "{i2}");
    let i1 = h1.vs_json(&["network", "inspect", &net]);
    assert_eq!(i1[0]["VNI"], i2[0]["VNI"]);
    // MTU: underlay 1500 minus 50 for VXLAN over IPv4.
    assert_eq!(i2[0]["MTU"], 1450);

    let a = h1.run("a", &net, &[]);
    wait_for("a's endpoint on h2", Duration::from_secs(10), || {
        has_container(&h2, &net, &a)
    });
    let b = h2.run("b", &net, &["--alias", "bee"]);
    wait_for("b's endpoint on h3", Duration::from_secs(10), || {
        has_container(&h3, &net, &b)
    });
    let c = h3.run("c", &net, &[]);
    let link = stdout(&ns_exec(&a, &["ip", "-o", "link", "show", "eth0"]));
    assert!(link.contains("mtu 1450"), "{link}");
    let (ip_a, ip_b) = (h1.ip_of(&a, &net), h2.ip_of(&b, &net));
    let ip_c = h3.ip_of(&c, &net);
    assert!(ip_a != ip_b && ip_b != ip_c && ip_a != ip_c);

    // Names of containers on every host resolve on every host.
    wait_for("c resolvable on h1", Duration::from_secs(10), || {
        resolves(&a, "10.240.0.1", &c).as_deref() == Some(ip_c.as_str())
    });
    assert_eq!(
        resolves(&c, "10.240.0.1", "bee").as_deref(),
        Some(ip_b.as_str())
    );
    // Pings across hosts, by name.
    for (from, to) in [(&a, &b), (&b, &c), (&c, &a)] {
        let o = ns_exec(from, &["ping", "-c", "2", "-W", "2", to]);
        assert!(
            o.status.success(),
            "{from} -> {to}: {}{}",
            stdout(&o),
            stderr(&o)
        );
    }
    // Egress from an overlay container goes through its own host's NAT:
    // a server on the underlay (in h2's namespace) answers container a on h1.
    let server = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &h2.ns.name,
            "timeout",
            "20",
            "socat",
            "TCP-LISTEN:9999,reuseaddr",
            "SYSTEM:echo overlay-egress-ok",
        ])
        .spawn()
        .expect("socat");
    struct Reap(std::process::Child);
    impl Drop for Reap {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _server = Reap(server);
    let mut got = String::new();
    for _ in 0..20 {
        let o = ns_exec(
            &a,
            &["timeout", "5", "socat", "-u", "TCP:192.0.2.12:9999", "-"],
        );
        got = stdout(&o);
        if got.contains("overlay-egress-ok") {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        got.contains("overlay-egress-ok"),
        "egress from the overlay: {got:?}"
    );
    // ARP for remote endpoints was answered locally.
    let stats = h1.vs_json(&["stats", "--json"]);
    assert!(stats["Suppressed"].as_u64().unwrap() >= 1, "{stats}");
    assert!(
        stats["Tunnel"]["TxPackets"].as_u64().unwrap() >= 2,
        "{stats}"
    );

    // SIGKILL h3's daemon: its endpoint leaves the others' DNS and tables
    // within 10 s.
    h3.kill9();
    let killed = Instant::now();
    wait_for("c gone from h1's DNS", Duration::from_secs(30), || {
        resolves(&a, "10.240.0.1", &c).is_none()
    });
    wait_for("c gone from h2's inspect", Duration::from_secs(10), || {
        !has_container(&h2, &net, &c)
    });
    let detected = killed.elapsed();
    eprintln!("FIGURE failure detected and c removed everywhere in {detected:?}");
    assert!(detected < Duration::from_secs(10), "took {detected:?}");

    // Restart h3: it rejoins by itself and its container is reachable again.
    h3.restart();
    let restarted = Instant::now();
    wait_for(
        "c reachable from a after h3's restart",
        Duration::from_secs(20),
        || {
            ns_exec(&a, &["ping", "-c", "1", "-W", "1", &ip_c])
                .status
                .success()
        },
    );
    eprintln!(
        "c reachable again {:?} after the restart",
        restarted.elapsed()
    );
    wait_for("c resolvable again", Duration::from_secs(10), || {
        resolves(&a, "10.240.0.1", &c).as_deref() == Some(ip_c.as_str())
    });

    // Cut h2's underlay link and restore it: everything converges again.
    ul.set_link(&h2.ns.name, false);
    wait_for("b gone on h1 while cut", Duration::from_secs(20), || {
        resolves(&a, "10.240.0.1", &b).is_none()
    });
    ul.set_link(&h2.ns.name, true);
    wait_for(
        "b back on h1 after healing",
        Duration::from_secs(30),
        || resolves(&a, "10.240.0.1", &b).as_deref() == Some(ip_b.as_str()),
    );
    let o = ns_exec(&a, &["ping", "-c", "2", "-W", "2", &ip_b]);
    assert!(o.status.success(), "after healing: {}", stdout(&o));
}

#[test]
fn wrong_key_cannot_join_and_non_members_cannot_inject() {
    require_root!();
    let ul = Underlay::new();
    let good = TempFile::new("vskey-good2", "the right key for this cluster");
    let bad = TempFile::new("vskey-bad2", "some other key entirely wrong");
    let h1 = cluster_host(&ul, "192.0.2.21", &good);
    let intruder = cluster_host(&ul, "192.0.2.22", &bad);
    intruder.vs_ok(&["join-cluster", "192.0.2.21"]);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(alive_members(&h1), 1, "a host with the wrong key joined");
    assert_eq!(alive_members(&intruder), 1);
    let stats = h1.vs_json(&["stats", "--json"]);
    assert!(
        stats["Gossip"]["AuthFailures"].as_u64().unwrap() >= 1,
        "{stats}"
    );

    // A raw VXLAN packet from a non-member is dropped and counted.
    h1.network(
        "ov",
        &[
            "--driver",
            "overlay",
            "--opt",
            "vni=4242",
            "--subnet",
            "10.241.0.0/24",
        ],
    );
    let o = ns_exec(
        &intruder.ns.name,
        &["sh", "-c", "printf '\\010\\000\\000\\000\\000\\020\\222\\000ffffffffffffaaaaaaaaaaaa\\010\\006payload' | nc -u -w1 -q1 192.0.2.21 4789"],
    );
    let _ = o;
    wait_for("a non-member drop", Duration::from_secs(5), || {
        h1.vs_json(&["stats", "--json"])["Tunnel"]["NonMember"]
            .as_u64()
            .unwrap_or(0)
            >= 1
    });
}

#[test]
fn kernel_vxlan_device_is_a_working_peer() {
    require_root!();
    let ul = Underlay::new();
    let key = TempFile::new("vskey-k", "interop key for the kernel test");
    let mut h1 = cluster_host(&ul, "192.0.2.31", &key);
    let net = h1.network(
        "ov",
        &[
            "--driver",
            "overlay",
            "--opt",
            "vni=5001",
            "--subnet",
            "10.242.0.0/24",
        ],
    );
    let inspect = h1.vs_json(&["network", "inspect", &net]);
    assert_eq!(inspect[0]["VNI"], 5001);
    let a = h1.run("a", &net, &["--ip", "10.242.0.2"]);

    // The foreign VTEP: a kernel vxlan device with the same VNI, static FDB
    // toward h1, in a namespace of the test.
    let k = ul.plug("vsk", "192.0.2.40/24");
    kernel_vtep(&k.name, 5001, "192.0.2.40", "192.0.2.31", "10.242.0.50/24");

    // Not admitted yet: dropped as a non-member.
    assert!(!k
        .exec(&["ping", "-c", "1", "-W", "1", "10.242.0.2"])
        .status
        .success());
    h1.vs_ok(&["network", "vtep", "add", &net, "192.0.2.40"]);
    let ls = h1.vs_ok(&["network", "vtep", "ls", &net]);
    assert!(ls.contains("192.0.2.40:4789"), "{ls}");
    let o = k.exec(&["ping", "-c", "3", "-W", "2", "10.242.0.2"]);
    assert!(
        o.status.success(),
        "kernel vxlan -> vswitch: {}{}",
        stdout(&o),
        stderr(&o)
    );
    let o = ns_exec(&a, &["ping", "-c", "2", "-W", "2", "10.242.0.50"]);
    assert!(
        o.status.success(),
        "vswitch -> kernel vxlan: {}{}",
        stdout(&o),
        stderr(&o)
    );
    let inspect = h1.vs_json(&["network", "inspect", &net]);
    assert_eq!(inspect[0]["VTEPs"][0], "192.0.2.40:4789");
    // Restart: the admitted VTEP is durable.
    h1.restart();
    wait_for("kernel peer after restart", Duration::from_secs(10), || {
        k.exec(&["ping", "-c", "1", "-W", "1", "10.242.0.2"])
            .status
            .success()
    });
}

/// Makes `n` namespaces and connects each to `net` on `h`; returns the
/// addresses given (and the errors of the connects that failed).
fn connect_many(
    h: &Host,
    net: &str,
    prefix: &str,
    n: usize,
) -> (Vec<String>, Vec<String>, Vec<Netns>) {
    let mut ips = Vec::new();
    let mut errors = Vec::new();
    let mut namespaces = Vec::new();
    for _ in 0..n {
        let ns = Netns::new(prefix);
        let out = h.vs(&[
            "network",
            "connect",
            "--netns",
            &format!("/run/netns/{}", ns.name),
            net,
            &ns.name,
        ]);
        if out.status.success() {
            ips.push(h.ip_of(&ns.name, net));
        } else {
            errors.push(stderr(&out));
        }
        namespaces.push(ns);
    }
    (ips, errors, namespaces)
}

fn disconnect_all(h: &Host, net: &str, namespaces: &[Netns]) {
    for ns in namespaces {
        let _ = h.vs(&["network", "disconnect", net, &ns.name]);
    }
}

#[test]
fn cluster_ipam_never_hands_out_an_address_twice() {
    require_root!();
    let ul = Underlay::new();
    let key = TempFile::new("vskey-ipam", "cluster ipam test key, long enough");
    let hosts: Vec<Host> = ["192.0.2.51", "192.0.2.52", "192.0.2.53"]
        .iter()
        .map(|ip| cluster_host(&ul, ip, &key))
        .collect();
    hosts[1].vs_ok(&["join-cluster", "192.0.2.51"]);
    hosts[2].vs_ok(&["join-cluster", "192.0.2.51"]);
    for h in &hosts {
        wait_for("3 alive members", Duration::from_secs(15), || {
            alive_members(h) == 3
        });
    }
    let net = hosts[0].network("ov", &["--driver", "overlay", "--subnet", "10.243.0.0/24"]);
    for h in &hosts[1..] {
        wait_for("the overlay everywhere", Duration::from_secs(10), || {
            h.vs(&["network", "inspect", &net]).status.success()
        });
    }

    // 3 hosts connect 50 containers each, at the same time.
    let started = Instant::now();
    let results: Vec<(Vec<String>, Vec<String>, Vec<Netns>)> = std::thread::scope(|s| {
        let handles: Vec<_> = hosts
            .iter()
            .enumerate()
            .map(|(i, h)| {
                let net = net.clone();
                s.spawn(move || connect_many(h, &net, &format!("i{i}"), 50))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    eprintln!(
        "FIGURE 150 concurrent connects on 3 hosts took {:?}",
        started.elapsed()
    );
    let mut all: Vec<&String> = results.iter().flat_map(|r| &r.0).collect();
    let errors: Vec<&String> = results.iter().flat_map(|r| &r.1).collect();
    assert!(errors.is_empty(), "connects failed: {errors:?}");
    assert_eq!(all.len(), 150);
    all.sort();
    all.dedup();
    assert_eq!(all.len(), 150, "an address was handed out twice");
    for (h, r) in hosts.iter().zip(&results) {
        disconnect_all(h, &net, &r.2);
    }

    // The same across a partition: host 3 cut off while everyone connects.
    ul.set_link(&hosts[2].ns.name, false);
    let results: Vec<(Vec<String>, Vec<String>, Vec<Netns>)> = std::thread::scope(|s| {
        let handles: Vec<_> = hosts
            .iter()
            .enumerate()
            .map(|(i, h)| {
                let net = net.clone();
                // The cut-off host tries a few: without the network, only
                // the space it owns is usable.
                let n = if i == 2 { 3 } else { 20 };
                s.spawn(move || connect_many(h, &net, &format!("p{i}"), n))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    ul.set_link(&hosts[2].ns.name, true);
    let mut all: Vec<&String> = results.iter().flat_map(|r| &r.0).collect();
    let failed: usize = results.iter().map(|r| r.1.len()).sum();
    eprintln!(
        "FIGURE partition: {} connects succeeded, {failed} refused (host 3 cut off)",
        all.len()
    );
    for e in results.iter().flat_map(|r| &r.1) {
        assert!(
            e.contains("address") || e.contains("host"),
            "unclear error: {e}"
        );
    }
    let n = all.len();
    all.sort();
    all.dedup();
    assert_eq!(
        all.len(),
        n,
        "an address was handed out twice across the partition"
    );
    // After healing, a new connect anywhere still gets a fresh address.
    wait_for(
        "3 alive members after healing",
        Duration::from_secs(30),
        || alive_members(&hosts[0]) == 3,
    );
    let (more, errs, extra) = connect_many(&hosts[2], &net, "q", 1);
    assert!(errs.is_empty(), "{errs:?}");
    assert!(!all.contains(&&more[0]), "{} reused", more[0]);
    disconnect_all(&hosts[2], &net, &extra);
    for (h, r) in hosts.iter().zip(&results) {
        disconnect_all(h, &net, &r.2);
    }

    // A live host's ranges cannot be reclaimed; a dead one's can, by hand.
    let mut hosts = hosts;
    let h3_name = hosts[2].ns.name.clone();
    let o = hosts[0].vs(&["ipam", "reclaim", &h3_name]);
    assert!(
        !o.status.success() && stderr(&o).contains("alive"),
        "{}",
        stderr(&o)
    );
    hosts[2].kill9();
    wait_for("host 3 declared dead", Duration::from_secs(20), || {
        let v = hosts[0].vs_json(&["members", "--format", "json"]);
        v.as_array().is_some_and(|a| {
            a.iter()
                .any(|m| m["Name"] == h3_name.as_str() && m["State"] == "dead")
        })
    });
    let out = hosts[0].vs_ok(&["ipam", "reclaim", &h3_name]);
    assert!(
        out.contains(&format!("{net}: ranges now owned by")),
        "{out}"
    );
    // The survivors keep allocating without duplicates.
    let (ips, errs, rest) = connect_many(&hosts[1], &net, "z", 3);
    assert!(errs.is_empty(), "{errs:?}");
    assert_eq!(ips.len(), 3);
    disconnect_all(&hosts[1], &net, &rest);
}
