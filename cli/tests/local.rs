//! End-to-end tests of local (single-host) networks on real namespaces,
//! with real clients: ping, dig, dnsmasq as an upstream resolver.

mod common;

use std::io::{Read, Write};
use std::time::Duration;

use common::*;

#[test]
fn containers_ping_each_other_by_name_v4_and_v6() {
    require_root!();
    let mut h = Host::start(&[]);
    let net = dual_stack(&h, "10.231.0.0/24", "fd00:231::/64");
    let a = h.run("a", &net, &[]);
    let b = h.run("b", &net, &["--alias", "bee"]);
    let out = ns_exec(&a, &["ping", "-c", "2", "-W", "2", &b]);
    assert!(
        out.status.success(),
        "ping by name failed: {}{}",
        stdout(&out),
        stderr(&out)
    );
    let out = ns_exec(&a, &["ping", "-6", "-c", "2", "-W", "2", "bee"]);
    assert!(
        out.status.success(),
        "ping -6 by alias failed: {}{}",
        stdout(&out),
        stderr(&out)
    );
    // The gateway answers ARP and ICMP itself.
    let out = ns_exec(&b, &["ping", "-c", "1", "-W", "2", "10.231.0.1"]);
    assert!(
        out.status.success(),
        "gateway ping failed: {}",
        stdout(&out)
    );
    let out = ns_exec(&b, &["ping", "-6", "-c", "1", "-W", "2", "fd00:231::1"]);
    assert!(
        out.status.success(),
        "gateway ping6 failed: {}",
        stdout(&out)
    );
    // The container's interface has what IPAM gave it.
    let ip = h.ip_of(&a, &net);
    let link = stdout(&ns_exec(&a, &["ip", "-o", "addr", "show", "dev", "eth0"]));
    assert!(link.contains(&format!("{ip}/24")), "{link}");
    let route = stdout(&ns_exec(&a, &["ip", "route", "show", "default"]));
    assert!(route.contains("via 10.231.0.1"), "{route}");
    // Counters moved.
    let stats = h.vs_json(&["stats", "--json"]);
    let rx: u64 = stats["Ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["RxPackets"].as_u64().unwrap())
        .sum();
    assert!(rx >= 4, "{stats}");
}

#[test]
fn dig_answers_a_aaaa_ptr_and_round_robin() {
    require_root!();
    let mut h = Host::start(&[]);
    let net = dual_stack(&h, "10.232.0.0/24", "fd00:232::/64");
    let a = h.run("a", &net, &["--ip", "10.232.0.10", "--ip6", "fd00:232::10"]);
    let mut svc = Vec::new();
    for _ in 0..3 {
        svc.push(h.run("s", &net, &["--alias", "svc"]));
    }
    let short = |args: &[&str]| {
        let mut argv = vec!["+short", "+time=2", "+tries=1"];
        argv.extend_from_slice(args);
        let o = dig(&a, "10.232.0.1", &argv);
        assert!(
            o.status.success(),
            "dig {args:?}: {}{}",
            stdout(&o),
            stderr(&o)
        );
        stdout(&o)
    };
    assert_eq!(short(&[&a]).trim(), "10.232.0.10");
    assert_eq!(short(&["AAAA", &a]).trim(), "fd00:232::10");
    assert_eq!(short(&["-x", "10.232.0.10"]).trim(), format!("{a}."));
    assert_eq!(short(&["-x", "fd00:232::10"]).trim(), format!("{a}."));
    // Names are case-insensitive.
    assert_eq!(short(&[&a.to_uppercase()]).trim(), "10.232.0.10");
    // Over TCP too.
    assert_eq!(short(&["+tcp", &a]).trim(), "10.232.0.10");
    // Three containers share `svc`: all three answer, first one rotates.
    let mut firsts = std::collections::BTreeSet::new();
    for _ in 0..6 {
        let out = short(&["svc"]);
        let ips: Vec<&str> = out.lines().collect();
        assert_eq!(ips.len(), 3, "{out}");
        firsts.insert(ips[0].to_string());
    }
    assert!(
        firsts.len() >= 2,
        "no round-robin: first answers {firsts:?}"
    );
    // An unknown name on an isolated daemon: upstream is the namespace's
    // own loopback where nothing listens, so SERVFAIL.
    let o = dig(
        &a,
        "10.232.0.1",
        &["+time=6", "+tries=1", "nosuchname.invalid"],
    );
    assert!(stdout(&o).contains("SERVFAIL"), "{}", stdout(&o));
}

#[test]
fn networks_are_isolated_and_a_container_on_both_reaches_both() {
    require_root!();
    let mut h = Host::start(&[]);
    let n1 = h.network("n", &["--subnet", "10.233.1.0/24"]);
    let n2 = h.network("n", &["--subnet", "10.233.2.0/24"]);
    let a = h.run("a", &n1, &[]);
    let b = h.run("b", &n2, &[]);
    let c = h.run("c", &n1, &[]);
    h.vs_ok(&["network", "connect", &n2, &c]);
    let (ip_a, ip_b) = (h.ip_of(&a, &n1), h.ip_of(&b, &n2));
    // c has eth0 on n1 and eth1 on n2 and reaches both.
    let links = stdout(&ns_exec(&c, &["ip", "-o", "link"]));
    assert!(links.contains("eth0") && links.contains("eth1"), "{links}");
    assert!(ns_exec(&c, &["ping", "-c", "1", "-W", "2", &ip_a])
        .status
        .success());
    assert!(ns_exec(&c, &["ping", "-c", "1", "-W", "2", &ip_b])
        .status
        .success());
    // a has no route to n2; give it one through its own interface and make
    // it try at layer 2: nothing crosses.
    let _ = ns_exec(&a, &["ip", "route", "add", "10.233.2.0/24", "dev", "eth0"]);
    assert!(!ns_exec(&a, &["ping", "-c", "2", "-W", "1", &ip_b])
        .status
        .success());
    // Names from the other network do not resolve.
    let o = dig(&a, "10.233.1.1", &["+short", "+time=6", "+tries=1", &b]);
    assert!(!stdout(&o).contains(&ip_b), "{}", stdout(&o));
    // Disconnect frees the interface; the address can be taken again.
    let ip_c2 = h.ip_of(&c, &n2);
    h.vs_ok(&["network", "disconnect", &n2, &c]);
    let links = stdout(&ns_exec(&c, &["ip", "-o", "link"]));
    assert!(!links.contains("eth1"), "{links}");
    let d = h.run("d", &n2, &["--ip", &ip_c2]);
    assert_eq!(h.ip_of(&d, &n2), ip_c2);
}

#[test]
fn unknown_names_are_forwarded_upstream_and_internal_networks_do_not() {
    require_root!();
    // An upstream resolver (dnsmasq) in a namespace of the test, reached
    // from the daemon's namespace over a veth.
    let upstream = Netns::new("vsu");
    let host_ns = Netns::new("vsh");
    veth(&upstream, "192.0.2.53/24", &host_ns, "192.0.2.2/24");
    let pidfile = std::env::temp_dir().join(format!("{}.pid", upstream.name));
    let dnsmasq = cmd(&[
        "ip",
        "netns",
        "exec",
        &upstream.name,
        "dnsmasq",
        "--no-resolv",
        "--no-hosts",
        "--listen-address=192.0.2.53",
        "--bind-interfaces",
        "--address=/example.test/198.51.100.7",
        &format!("--pid-file={}", pidfile.display()),
    ]);
    assert!(dnsmasq.status.success(), "dnsmasq: {}", stderr(&dnsmasq));
    struct KillOnDrop(std::path::PathBuf);
    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            if let Ok(pid) = std::fs::read_to_string(&self.0) {
                let _ = cmd(&["kill", pid.trim()]);
            }
            let _ = std::fs::remove_file(&self.0);
        }
    }
    let _kill = KillOnDrop(pidfile);
    let mut h = Host::start_in(host_ns, &["--dns", "192.0.2.53"]);
    let open = h.network("n", &["--subnet", "10.234.1.0/24"]);
    let internal = h.network("n", &["--internal", "--subnet", "10.234.2.0/24"]);
    let a = h.run("a", &open, &[]);
    let b = h.run("b", &internal, &[]);
    let o = dig(
        &a,
        "10.234.1.1",
        &["+short", "+time=3", "+tries=1", "www.example.test"],
    );
    assert_answer(&o, "198.51.100.7");
    // Over TCP from the container; the gateway forwards it too.
    let o = dig(
        &a,
        "10.234.1.1",
        &["+tcp", "+short", "+time=3", "+tries=1", "www.example.test"],
    );
    assert_answer(&o, "198.51.100.7");
    // The internal network does not forward.
    let o = dig(
        &b,
        "10.234.2.1",
        &["+time=3", "+tries=1", "www.example.test"],
    );
    assert!(!stdout(&o).contains("198.51.100.7"), "{}", stdout(&o));
    assert!(
        stdout(&o).contains("SERVFAIL") || stdout(&o).contains("REFUSED"),
        "{}",
        stdout(&o)
    );
    // And an internal network gives no default route.
    let route = stdout(&ns_exec(&b, &["ip", "route", "show", "default"]));
    assert!(route.trim().is_empty(), "{route}");
}

#[test]
fn sigkill_and_restart_keeps_networks_endpoints_and_connectivity() {
    require_root!();
    let mut h = Host::start(&[]);
    let net = h.network("n", &["--subnet", "10.235.0.0/24"]);
    let a = h.run("a", &net, &[]);
    let b = h.run("b", &net, &[]);
    let ip_b = h.ip_of(&b, &net);
    assert!(ping_until(&a, &ip_b, Duration::from_secs(5)).is_some());
    let before = h.vs_json(&["network", "inspect", &net]);

    h.kill9();
    // While the daemon is down, nothing is switched.
    assert!(!ns_exec(&a, &["ping", "-c", "1", "-W", "1", &ip_b])
        .status
        .success());
    h.restart();
    let took = ping_until(&a, &ip_b, Duration::from_secs(5)).expect("no ping after restart");
    assert!(
        took < Duration::from_secs(2),
        "ping came back after {took:?}"
    );
    // Names too, and nothing was lost.
    assert!(ns_exec(&a, &["ping", "-c", "1", "-W", "2", &b])
        .status
        .success());
    let after = h.vs_json(&["network", "inspect", &net]);
    assert_eq!(before[0]["Containers"], after[0]["Containers"]);
    assert_eq!(before[0]["IPAM"], after[0]["IPAM"]);
    // Allocations survived: a new container does not get a taken address.
    let c = h.run("c", &net, &[]);
    let ip_c = h.ip_of(&c, &net);
    assert_ne!(ip_c, ip_b);
    assert_ne!(ip_c, h.ip_of(&a, &net));
    // SIGTERM is a clean stop.
    let status = h.stop().expect("daemon was running");
    assert!(status.success(), "{status}");
}

#[test]
fn none_and_host_drivers() {
    require_root!();
    let h = Host::start(&[]);
    let name = unique("z");
    let out = h.vs(&run_rm(&name, "none", &["ip", "-o", "link"]));
    assert!(out.status.success(), "{}", stderr(&out));
    let links = stdout(&out);
    assert_eq!(links.lines().count(), 1, "{links}");
    assert!(links.contains("lo:") && links.contains("UP"), "{links}");
    // host: the command runs in the daemon client's namespace (here, the
    // test's own), with no sandbox.
    let name = unique("h");
    let out = h.vs(&run_rm(&name, "host", &["sh", "-c", "exit 7"]));
    assert_eq!(out.status.code(), Some(7), "{}", stderr(&out));
}

#[test]
fn bad_cli_input_and_bad_api_requests_get_clear_errors() {
    require_root!();
    let mut h = Host::start(&[]);
    let net = h.network("n", &["--subnet", "10.236.0.0/30"]);
    expect_err(
        &h,
        &["network", "create", "--subnet", "10.236.0.0/24", "dup"],
        "overlaps",
    );
    expect_err(&h, &["network", "create", &net], "already exists");
    expect_err(
        &h,
        &["network", "create", "--subnet", "banana", "x"],
        "banana",
    );
    expect_err(
        &h,
        &["network", "create", "--driver", "weird", "x"],
        "weird",
    );
    expect_err(&h, &["network", "inspect", "nosuchnet"], "not found");
    expect_err(&h, &["network", "rm", "none"], "predefined");
    expect_err(&h, &["network", "connect", &net, "ghost"], "--netns");
    expect_err(
        &h,
        &[
            "network",
            "connect",
            "--netns",
            "/run/netns/does-not-exist",
            &net,
            "ghost",
        ],
        "does not exist",
    );
    expect_err(&h, &["--host", "tcp://x", "network", "ls"], "unix://");
    // A /30 has room for one container: the second gets a sentence.
    let _a = h.run("a", &net, &[]);
    let name = unique("b");
    h.containers.push(name.clone());
    expect_err(
        &h,
        &run_detached(&name, &net, &[], &["sleep", "1"]),
        "no free address",
    );
    // The failed run left nothing behind.
    let ns = stdout(&cmd(&["ip", "netns", "list"]));
    assert!(
        !ns.lines()
            .any(|l| l.split_whitespace().next() == Some(name.as_str())),
        "{ns}"
    );
    expect_err(&h, &["network", "rm", &net], "active endpoints");

    // Raw API: malformed requests get 4xx with a JSON message, and the
    // daemon keeps serving.
    let raw = |req: &[u8]| -> String {
        let mut s = std::os::unix::net::UnixStream::connect(&h.socket).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(req).unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    };
    let r = raw(b"POST /v1/networks HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\nconnection: close\r\n\r\n{\"Na\x01");
    assert!(r.starts_with("HTTP/1.1 400"), "{r}");
    assert!(r.contains("\"message\""), "{r}");
    let r = raw(b"GET /v9/whatever HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
    assert!(r.starts_with("HTTP/1.1 404"), "{r}");
    let r = raw(b"\x00\x01garbage\r\n\r\n");
    assert!(!r.starts_with("HTTP/1.1 200"), "{r}");
    let stats = h.vs_json(&["stats", "--json"]);
    assert!(stats["BadRequests"].as_u64().unwrap() >= 2, "{stats}");
    h.vs_ok(&["network", "ls"]);
}

fn expect_err(h: &Host, args: &[&str], needle: &str) {
    let out = h.vs(args);
    assert!(!out.status.success(), "{args:?} should fail");
    let err = stderr(&out);
    assert!(
        err.contains(needle),
        "{args:?}: stderr {err:?} lacks {needle:?}"
    );
}

/// `dig @SERVER ARGS...` in namespace `ns`.
fn dig(ns: &str, server: &str, args: &[&str]) -> std::process::Output {
    let server = format!("@{server}");
    let mut argv = vec!["dig", &server];
    argv.extend_from_slice(args);
    ns_exec(ns, &argv)
}

/// The answer `dig +short` printed is exactly `want`.
fn assert_answer(o: &std::process::Output, want: &str) {
    assert_eq!(stdout(o).trim(), want, "{}{}", stdout(o), stderr(o));
}

/// A network with an IPv4 and an IPv6 subnet.
fn dual_stack(h: &Host, v4: &str, v6: &str) -> String {
    h.network("n", &["--ipv6", "--subnet", v4, "--subnet", v6])
}
