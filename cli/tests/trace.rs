//! End-to-end tests of `vswitch trace` on real namespaces: for each fault
//! the test makes (containers on different networks, a spoofing container,
//! an internal network, a destination outside the subnet, an overlay peer
//! on another host) trace's verdict must agree with what ping does.

mod common;

use std::time::Duration;

use common::*;

/// `vswitch trace ARGS --format json`: the exit code and the report.
fn trace(h: &impl Vswitch, args: &[&str]) -> (i32, serde_json::Value) {
    let mut argv = vec!["trace"];
    argv.extend_from_slice(args);
    argv.extend_from_slice(&["--format", "json"]);
    let out = h.vs(&argv);
    let report = serde_json::from_str(&stdout(&out)).unwrap_or_else(|e| {
        panic!(
            "trace {args:?}: not JSON ({e}): {}{}\n{}",
            stdout(&out),
            stderr(&out),
            tail(&h.log(), 40)
        )
    });
    (out.status.code().expect("exit code"), report)
}

/// Whether one ping from `ns` to `target` is answered.
fn pings(ns: &str, target: &str) -> bool {
    ns_exec(ns, &["ping", "-c", "1", "-W", "2", target])
        .status
        .success()
}

/// Traces `from` -> `to` (ICMP) and pings the same way; asserts they agree
/// and returns the report.
fn agree(h: &impl Vswitch, from: &str, to: &str) -> serde_json::Value {
    let (code, report) = trace(h, &["--from", from, "--to", to]);
    let delivered = code == 0;
    let dropped = report["Verdict"]["Action"] == "dropped";
    assert_eq!(delivered, !dropped, "exit code vs verdict: {report:#}");
    // A first ping may lose its echo to ARP on a fresh path: give it two.
    let pinged = pings(from, to) || pings(from, to);
    assert_eq!(
        delivered,
        pinged,
        "trace says {}, ping {}: {report:#}",
        report["Verdict"]["Summary"],
        if pinged { "works" } else { "fails" }
    );
    report
}

fn step<'a>(report: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    report["Steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["Step"] == name)
        .unwrap_or_else(|| panic!("no step {name}: {report:#}"))
}

#[test]
fn trace_agrees_with_ping_on_one_host() {
    require_root!();
    let mut h = Host::start(&[]);
    // The world outside: a namespace behind the daemon's own.
    let world = Netns::new("vsw");
    veth(&h.ns, "198.51.100.1/24", &world, "198.51.100.2/24");
    let _ =
        h.ns.exec(&["sysctl", "-qw", "net.ipv4.ping_group_range=0 2147483647"]);

    let n1 = h.network("n", &["--subnet", "10.236.1.0/24"]);
    let n2 = h.network("n", &["--subnet", "10.236.2.0/24"]);
    let internal = h.network("n", &["--internal", "--subnet", "10.236.3.0/24"]);
    let a = h.run("a", &n1, &[]);
    let b = h.run("b", &n1, &[]);
    let c = h.run("c", &n2, &[]);
    let i = h.run("i", &internal, &[]);
    let (ip_b, ip_c) = (h.ip_of(&b, &n1), h.ip_of(&c, &n2));

    // Same network, by address and by name: delivered, and ping works.
    let r = agree(&h, &a, &ip_b);
    assert_eq!(r["Verdict"]["Action"], "delivered", "{r:#}");
    assert_eq!(r["Verdict"]["Containers"][0], b.as_str(), "{r:#}");
    assert_eq!(r["Verdict"]["Interfaces"][0], "eth0", "{r:#}");
    assert_eq!(r["Verdict"]["Network"], n1.as_str(), "{r:#}");
    assert_eq!(
        r["Verdict"]["Summary"],
        format!("delivered to {b} (port eth0 on network {n1})")
    );
    assert_eq!(step(&r, "fdb")["Ok"], true);
    let r = agree(&h, &a, &b);
    assert_eq!(r["Destination"], ip_b.as_str(), "{r:#}");
    assert_eq!(step(&r, "dns")["Ok"], true, "{r:#}");
    assert_eq!(r["Verdict"]["Containers"][0], b.as_str(), "{r:#}");
    // The gateway answers for itself.
    let r = agree(&h, &a, "10.236.1.1");
    assert_eq!(r["Verdict"]["Action"], "delivered", "{r:#}");

    // Different networks: by address the frame goes to the gateway, which
    // routes nothing there without a policy; by name it does not even
    // resolve.
    let r = agree(&h, &a, &ip_c);
    assert_eq!(r["Verdict"]["Action"], "dropped", "{r:#}");
    assert_eq!(r["Verdict"]["Reason"], "policy_denied", "{r:#}");
    assert_eq!(r["Verdict"]["Policy"], "default-deny", "{r:#}");
    assert_eq!(step(&r, "policy")["Ok"], false, "{r:#}");
    assert!(
        step(&r, "isolation")["Detail"]
            .as_str()
            .unwrap()
            .contains(&n2),
        "{r:#}"
    );
    let r = agree(&h, &a, &c);
    assert_eq!(r["Verdict"]["Reason"], "no_such_name", "{r:#}");
    assert_eq!(step(&r, "dns")["Ok"], false, "{r:#}");

    // Outside the subnet, on a network with egress: the gateway's NAT
    // routes it from the host's address.
    let r = agree(&h, &a, "198.51.100.2");
    assert_eq!(r["Verdict"]["Action"], "routed", "{r:#}");
    assert_eq!(r["Verdict"]["NatSource"], "198.51.100.1", "{r:#}");
    assert_eq!(
        r["Verdict"]["Summary"],
        "routed by the gateway to the outside (NAT source 198.51.100.1)"
    );
    // The same from an --internal network: no route at all.
    let r = agree(&h, &i, "198.51.100.2");
    assert_eq!(r["Verdict"]["Reason"], "no_route", "{r:#}");
    assert_eq!(step(&r, "route")["Ok"], false, "{r:#}");

    // A container that changed its MAC: port security drops it.
    let s1 = h.run("s", &n1, &[]);
    assert!(pings(&s1, &ip_b), "s1 pings before it spoofs");
    ns_exec(&s1, &["ip", "neigh", "flush", "all"]);
    let o = ns_exec(
        &s1,
        &["ip", "link", "set", "eth0", "address", "02:00:00:00:99:01"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let r = agree(&h, &s1, &ip_b);
    assert_eq!(r["Verdict"]["Reason"], "spoofed_mac", "{r:#}");
    assert_eq!(r["Verdict"]["Summary"], "dropped: spoofed_mac");
    assert_eq!(step(&r, "port-security")["Ok"], false, "{r:#}");
    // One that took another address: dropped too.
    let s2 = h.run("s", &n1, &[]);
    let ip_s2 = h.ip_of(&s2, &n1);
    for argv in [
        vec!["ip", "addr", "del", &format!("{ip_s2}/24"), "dev", "eth0"],
        vec!["ip", "addr", "add", "10.236.1.222/24", "dev", "eth0"],
    ] {
        let o = ns_exec(&s2, &argv);
        assert!(o.status.success(), "{argv:?}: {}", stderr(&o));
    }
    let r = agree(&h, &s2, &ip_b);
    assert_eq!(r["Verdict"]["Reason"], "spoofed_ip", "{r:#}");
    assert!(
        step(&r, "route")["Detail"]
            .as_str()
            .unwrap()
            .contains("10.236.1.222"),
        "traced with the address the container really has: {r:#}"
    );

    // Nothing was counted by tracing: the drops are the pings'.
    let (code, _) = trace(&h, &["--from", &s1, "--to", &ip_b]);
    assert_eq!(code, 1);
    let before = h.vs_json(&["stats", "--json"])["Drops"]["spoofed_mac"].clone();
    for _ in 0..3 {
        trace(&h, &["--from", &s1, "--to", &ip_b]);
    }
    let after = h.vs_json(&["stats", "--json"])["Drops"]["spoofed_mac"].clone();
    assert_eq!(before, after, "trace moved a counter");

    // Text output: one line per step, then the verdict.
    let out = h.vs(&["trace", "--from", &a, "--to", &b]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("  ok   dns"), "{text}");
    assert!(
        text.ends_with(&format!(
            "Verdict: delivered to {b} (port eth0 on network {n1})\n"
        )),
        "{text}"
    );
}

#[test]
fn trace_refuses_bad_input() {
    require_root!();
    let mut h = Host::start(&[]);
    let n = h.network("n", &["--subnet", "10.236.9.0/24"]);
    let a = h.run("a", &n, &[]);
    for (args, says) in [
        (
            vec!["--from", "nosuch", "--to", "10.236.9.1"],
            "no container",
        ),
        (
            vec!["--from", &a, "--to", "10.236.9.1", "--port", "80"],
            "--port needs",
        ),
        (
            vec!["--from", &a, "--to", "10.236.9.1", "--proto", "tcp"],
            "needs --port",
        ),
        (vec!["--from", &a, "--to", "not a name"], "neither an IP"),
        (
            vec![
                "--from",
                &a,
                "--to",
                "10.236.9.1",
                "--proto",
                "udp",
                "--port",
                "0",
            ],
            "0",
        ),
    ] {
        let mut argv = vec!["trace"];
        argv.extend_from_slice(&args);
        let out = h.vs(&argv);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(stderr(&out).contains(says), "{args:?}: {}", stderr(&out));
    }
    // The API checks the same.
    let out = cmd(&[
        "curl",
        "-s",
        "--unix-socket",
        h.socket.to_str().unwrap(),
        "-X",
        "POST",
        "-d",
        r#"{"From":"a","To":"x","Port":80}"#,
        "http://vswitchd/v1/trace",
    ]);
    assert!(stdout(&out).contains("--port needs"), "{}", stdout(&out));
    // The daemon is fine.
    assert_eq!(trace(&h, &["--from", &a, "--to", "10.236.9.1"]).0, 0);
}

#[test]
fn trace_follows_an_overlay_peer_into_the_tunnel() {
    require_root!();
    let ul = Underlay::new();
    let key = TempFile::new("vskey-trace", "trace the tunnel");
    let (mut h1, mut h2) = cluster_pair(&ul, &key.0, "192.0.2.41", "192.0.2.42");
    let net = shared_overlay(&h1, &h2, "10.236.64.0/24");
    let vni = h1.vs_json(&["network", "inspect", &net])[0]["VNI"]
        .as_u64()
        .unwrap();
    let a = h1.run("a", &net, &[]);
    let b = h2.run("b", &net, &[]);
    wait_for("b known on h1", Duration::from_secs(10), || {
        has_container(&h1, &net, &b)
    });
    let ip_b = h2.ip_of(&b, &net);
    wait_for("b resolvable on h1", Duration::from_secs(10), || {
        trace(&h1, &["--from", &a, "--to", &b]).1["Destination"] == ip_b.as_str()
    });
    for to in [ip_b.as_str(), b.as_str()] {
        let r = agree(&h1, &a, to);
        let v = &r["Verdict"];
        assert_eq!(v["Action"], "forwarded", "{r:#}");
        assert_eq!(v["Host"], h2.ns.name.as_str(), "{r:#}");
        assert_eq!(v["VNI"], vni, "{r:#}");
        assert_eq!(v["Transport"], "UDP", "{r:#}");
        assert_eq!(
            v["Summary"],
            format!(
                "forwarded via tunnel to host {} (VNI {vni}, UDP)",
                h2.ns.name
            )
        );
        // ARP for b was answered by the switch itself.
        assert!(
            step(&r, "neighbor")["Detail"]
                .as_str()
                .unwrap()
                .contains("answered by the switch"),
            "{r:#}"
        );
    }
    // Egress from the overlay goes through h1's own NAT, to the underlay.
    let _ = h1
        .ns
        .exec(&["sysctl", "-qw", "net.ipv4.ping_group_range=0 2147483647"]);
    let r = agree(&h1, &a, "192.0.2.42");
    assert_eq!(r["Verdict"]["NatSource"], "192.0.2.41", "{r:#}");
}
