//! End-to-end tests of encrypted overlays (`--opt encrypted`): hosts are
//! namespaces with one vswitchd each on a veth/bridge underlay, as in
//! overlay.rs; frames of an encrypted network cross it in QUIC datagrams.
//! Every address used is inside namespaces the test made.

mod common;

use std::time::Duration;

use common::capture::*;
use common::*;

fn cluster_host(ul: &Underlay, ip: &str, key: &TempFile, extra: &[&str]) -> Host {
    Host::in_cluster(ul, "vse", ip, &key.0, extra)
}

/// [`has_container`], false while `h` does not know the network yet.
fn knows_container(h: &Host, net: &str, name: &str) -> bool {
    h.vs(&["network", "inspect", net]).status.success() && has_container(h, net, name)
}

fn tunnel_counter(h: &Host, key: &str) -> u64 {
    h.vs_json(&["stats", "--json"])["Tunnel"][key]
        .as_u64()
        .unwrap_or_else(|| panic!("no Tunnel counter {key}"))
}

/// Two hosts, a plain and an encrypted overlay side by side: ping and DNS
/// across hosts on the encrypted one; a payload seen on the underlay for
/// the plain one is not for the encrypted one; the MTU is QUIC's and a
/// ping of exactly that size with DF passes; plain VXLAN for the encrypted
/// VNI is dropped, even from a member.
#[test]
fn encrypted_overlay_carries_frames_only_inside_quic() {
    require_root!();
    let ul = Underlay::new();
    let key = TempFile::new("vsekey-enc", "an encrypted overlay test cluster key");
    let mut h1 = cluster_host(&ul, "192.0.2.101", &key, &[]);
    let mut h2 = cluster_host(&ul, "192.0.2.102", &key, &[]);
    h2.vs_ok(&["join-cluster", "192.0.2.101"]);
    // Both remember the other, so either rejoins by itself after a restart.
    h1.vs_ok(&["join-cluster", "192.0.2.102"]);
    for h in [&h1, &h2] {
        wait_for("2 alive members", Duration::from_secs(15), || {
            alive_members(h) == 2
        });
    }
    let plain = h1.network("pl", &["--driver", "overlay", "--subnet", "10.250.0.0/24"]);
    // Over IPv4 with a 1500-byte underlay: 1500 - 20 (IP) - 8 (UDP) - 29
    // (QUIC short header with an 8-byte CID, 4-byte packet number, AEAD
    // tag) - 9 (DATAGRAM frame) - 8 (VXLAN) - 14 (Ethernet).
    let enc = h1.network(
        "en",
        &[
            "--driver",
            "overlay",
            "--opt",
            "encrypted",
            "--opt",
            "vni=7001",
            "--subnet",
            "10.251.0.0/24",
        ],
    );
    let created = h1.vs_json(&["network", "inspect", &enc]);
    assert_eq!(created[0]["MTU"], 1412, "{created}");
    // Too large an --mtu is refused with the reason.
    let o = h1.vs(&[
        "network",
        "create",
        "--driver",
        "overlay",
        "--opt",
        "encrypted",
        "--mtu",
        "1450",
        &unique("en"),
    ]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("at most 1412"), "{}", stderr(&o));
    // No foreign VTEP on an encrypted network: it would get frames in the clear.
    let o = h1.vs(&["network", "vtep", "add", &enc, "192.0.2.250"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("encrypted"), "{}", stderr(&o));

    for net in [&plain, &enc] {
        wait_for("the overlays on h2", Duration::from_secs(10), || {
            h2.vs(&["network", "inspect", net]).status.success()
        });
    }
    let i2 = h2.vs_json(&["network", "inspect", &enc]);
    assert_eq!(i2[0]["Options"]["encrypted"], "true", "{i2}");
    assert_eq!(i2[0]["MTU"], 1412, "{i2}");

    let a = h1.run("a", &plain, &[]);
    let b = h2.run("b", &plain, &[]);
    let x = h1.run("x", &enc, &[]);
    let y = h2.run("y", &enc, &["--alias", "why"]);
    wait_for("y on h1", Duration::from_secs(10), || {
        knows_container(&h1, &enc, &y)
    });
    wait_for("b on h1", Duration::from_secs(10), || {
        knows_container(&h1, &plain, &b)
    });
    let link = stdout(&ns_exec(&x, &["ip", "-o", "link", "show", "eth0"]));
    assert!(link.contains("mtu 1412"), "{link}");
    let (ip_b, ip_x, ip_y) = (h2.ip_of(&b, &plain), h1.ip_of(&x, &enc), h2.ip_of(&y, &enc));

    // Names and pings across hosts on the encrypted network.
    wait_for("y resolvable from x", Duration::from_secs(10), || {
        resolves(&x, "10.251.0.1", &y).as_deref() == Some(ip_y.as_str())
    });
    assert_eq!(
        resolves(&x, "10.251.0.1", "why").as_deref(),
        Some(ip_y.as_str())
    );
    let o = ns_exec(&x, &["ping", "-c", "2", "-W", "2", &y]);
    assert!(o.status.success(), "x -> y: {}{}", stdout(&o), stderr(&o));
    let o = ns_exec(&y, &["ping", "-c", "2", "-W", "2", &x]);
    assert!(o.status.success(), "y -> x: {}{}", stdout(&o), stderr(&o));

    // The MTU is usable to the byte: DF set, 1412 bytes of IP.
    let o = ns_exec(
        &x,
        &[
            "ping", "-c", "2", "-W", "2", "-M", "do", "-s", "1384", &ip_y,
        ],
    );
    assert!(
        o.status.success(),
        "DF ping at the MTU: {}{}",
        stdout(&o),
        stderr(&o)
    );

    // A known payload on the underlay: visible for the plain overlay...
    let o = ns_exec(&a, &["ping", "-c", "1", "-W", "2", &ip_b]);
    assert!(o.status.success(), "a -> b: {}", stdout(&o));
    let cap = Capture::start(&ul, "plain");
    let o = secret_ping(&a, &ip_b);
    assert!(o.status.success(), "plain secret ping: {}", stdout(&o));
    let bytes = cap.finish();
    assert!(
        contains(&bytes, SECRET),
        "the plain overlay's payload should be visible on the underlay ({} bytes captured)",
        bytes.len()
    );
    // ... and not for the encrypted one, though its datagrams were there.
    let out_before = tunnel_counter(&h1, "QuicDatagramsOut");
    let cap = Capture::start(&ul, "enc");
    let o = secret_ping(&x, &ip_y);
    assert!(o.status.success(), "encrypted secret ping: {}", stdout(&o));
    let bytes = cap.finish();
    assert!(
        tunnel_counter(&h1, "QuicDatagramsOut") >= out_before + 3,
        "the pings went through QUIC"
    );
    assert!(
        bytes.len() > 3 * 250,
        "the capture saw the datagrams: {} bytes",
        bytes.len()
    );
    assert!(
        !contains(&bytes, SECRET),
        "the encrypted overlay's payload is visible on the underlay"
    );
    assert!(tunnel_counter(&h1, "QuicConnections") == 1);
    assert_eq!(tunnel_counter(&h1, "QuicHandshakesRefused"), 0);

    // Plain VXLAN for the encrypted network's VNI (7001 = 0x001b59), even
    // from a member's address, is dropped and counted.
    let before = tunnel_counter(&h1, "ClearOnEncrypted");
    let inject = "printf '\\010\\000\\000\\000\\000\\033\\131\\000ffffffffffffaaaaaaaaaaaa\\010\\006payload' | nc -u -w1 -q1 192.0.2.101 4789";
    for _ in 0..3 {
        let _ = h2.ns.exec(&["sh", "-c", inject]);
    }
    wait_for("a clear-on-encrypted drop", Duration::from_secs(5), || {
        tunnel_counter(&h1, "ClearOnEncrypted") > before
    });

    // SIGKILL and restart h2: encrypted traffic resumes within 5 s of the
    // daemon being back.
    h2.restart();
    let took = ping_until(&x, &ip_y, Duration::from_secs(20))
        .expect("x reaches y again after h2's restart");
    eprintln!("FIGURE encrypted ping resumed {took:?} after h2's restart");
    assert!(took < Duration::from_secs(5), "took {took:?}");
    // And the other way round: h1 (the lower address, whose connections
    // are the preferred ones) restarts; the plain overlay for comparison.
    h1.restart();
    let took = ping_until(&y, &ip_x, Duration::from_secs(20))
        .expect("y reaches x again after h1's restart");
    let plain_took = ping_until(&b, &h1.ip_of(&a, &plain), Duration::from_secs(20));
    eprintln!(
        "FIGURE encrypted ping resumed {took:?} after h1's restart (plain overlay then: {plain_took:?} more)"
    );
    assert!(took < Duration::from_secs(5), "took {took:?}");
}

/// A host that publishes one certificate and presents another, and a host
/// without the cluster key, exchange no frame with the cluster.
#[test]
fn impostor_and_keyless_hosts_exchange_nothing() {
    require_root!();
    let ul = Underlay::new();
    let key = TempFile::new("vsekey-imp", "the cluster key of the impostor test");
    let other = TempFile::new("vsekey-imp2", "some other key that is not the cluster's");
    let mut h1 = cluster_host(&ul, "192.0.2.111", &key, &[]);
    let mut imp = cluster_host(&ul, "192.0.2.112", &key, &["--test-quic-impostor"]);
    let mut keyless = cluster_host(&ul, "192.0.2.113", &other, &[]);
    imp.vs_ok(&["join-cluster", "192.0.2.111"]);
    keyless.vs_ok(&["join-cluster", "192.0.2.111"]);
    wait_for("the impostor is a member", Duration::from_secs(15), || {
        alive_members(&h1) == 2
    });
    let enc = h1.network(
        "en",
        &[
            "--driver",
            "overlay",
            "--opt",
            "transport=quic",
            "--opt",
            "vni=7002",
            "--subnet",
            "10.252.0.0/24",
        ],
    );
    wait_for(
        "the network on the impostor",
        Duration::from_secs(10),
        || imp.vs(&["network", "inspect", &enc]).status.success(),
    );
    let a = h1.run("a", &enc, &[]);
    let c = imp.run("c", &enc, &[]);
    wait_for("c on h1", Duration::from_secs(10), || {
        knows_container(&h1, &enc, &c)
    });
    wait_for("a on the impostor", Duration::from_secs(10), || {
        knows_container(&imp, &enc, &a)
    });
    let ip_a = h1.ip_of(&a, &enc);
    let ip_c = imp.ip_of(&c, &enc);
    for (from, to) in [(&a, &ip_c), (&c, &ip_a)] {
        let o = ns_exec(from, &["ping", "-c", "3", "-i", "0.3", "-W", "1", to]);
        assert!(!o.status.success(), "{from} reached {to}: {}", stdout(&o));
    }
    let refused = tunnel_counter(&h1, "QuicHandshakesRefused");
    assert!(refused >= 1, "h1 refused the impostor's certificate");
    assert_eq!(tunnel_counter(&h1, "QuicDatagramsIn"), 0);
    assert_eq!(tunnel_counter(&h1, "QuicConnections"), 0);
    assert_eq!(tunnel_counter(&imp, "QuicDatagramsIn"), 0);

    // The keyless host never became a member, so it has no network, and
    // what it injects by hand is dropped.
    assert_eq!(alive_members(&keyless), 1);
    assert!(!keyless.vs(&["network", "inspect", &enc]).status.success());
    let before = tunnel_counter(&h1, "NonMember");
    let inject = "printf '\\010\\000\\000\\000\\000\\033\\132\\000ffffffffffffaaaaaaaaaaaa\\010\\006payload' | nc -u -w1 -q1 192.0.2.111 4789";
    let _ = keyless.ns.exec(&["sh", "-c", inject]);
    wait_for("a non-member drop", Duration::from_secs(5), || {
        tunnel_counter(&h1, "NonMember") > before
    });
    assert_eq!(tunnel_counter(&h1, "QuicDatagramsIn"), 0);
    // The containers stay unreachable through all of it.
    let o = ns_exec(&a, &["ping", "-c", "1", "-W", "1", &ip_c]);
    assert!(!o.status.success());
    keyless.kill9();
    imp.kill9();
}
