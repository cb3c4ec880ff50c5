//! End-to-end tests of port publishing and egress NAT on real namespaces:
//! a vswitchd in a "host" namespace, a "client" namespace and a "world"
//! namespace joined to it by veths, real servers (socat) in containers and
//! in the world. Traffic stays inside the namespaces the tests make.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// A background program in a namespace, killed on drop.
struct Bg(Child);

impl Bg {
    fn spawn(ns: &str, argv: &[&str]) -> Bg {
        let child = Command::new("ip")
            .args(["netns", "exec", ns])
            .args(argv)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawning a server");
        Bg(child)
    }
}

impl Drop for Bg {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs `argv` in `ns` until it succeeds with non-empty output or `within`
/// passes; returns the last output.
fn until_ok(ns: &str, argv: &[&str], within: Duration) -> (bool, String) {
    let start = Instant::now();
    loop {
        let o = ns_exec(ns, argv);
        let out = stdout(&o);
        if o.status.success() && !out.trim().is_empty() {
            return (true, out);
        }
        if start.elapsed() > within {
            return (false, format!("{out}{}", stderr(&o)));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A TCP server that answers every connection with the peer's address.
fn peer_echo_tcp(ns: &str, port: u16) -> Bg {
    Bg::spawn(
        ns,
        &[
            "socat",
            &format!("TCP-LISTEN:{port},fork,reuseaddr"),
            "SYSTEM:echo peer=$SOCAT_PEERADDR",
        ],
    )
}

/// A UDP server that answers every datagram with the peer's address.
fn peer_echo_udp(ns: &str, port: u16) -> Bg {
    Bg::spawn(
        ns,
        &[
            "socat",
            &format!("UDP-RECVFROM:{port},fork"),
            "SYSTEM:echo peer=$SOCAT_PEERADDR",
        ],
    )
}

#[test]
fn egress_reaches_the_world_and_internal_does_not() {
    if !root_or_skip("egress_reaches_the_world_and_internal_does_not") {
        return;
    }
    let mut h = Host::start(&[]);
    let world = Netns::new("vsw");
    veth(&h.ns, "198.51.100.1/24", &world, "198.51.100.2/24");
    // Ping sockets for the daemon (per-namespace sysctl).
    let _ =
        h.ns.exec(&["sysctl", "-qw", "net.ipv4.ping_group_range=0 2147483647"]);
    let _tcp = peer_echo_tcp(&world.name, 8080);
    let _udp = peer_echo_udp(&world.name, 9999);

    let net = unique("n");
    h.vs_ok(&["network", "create", "--subnet", "10.232.0.0/24", &net]);
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
    let inet = unique("i");
    h.vs_ok(&[
        "network",
        "create",
        "--internal",
        "--subnet",
        "10.233.0.0/24",
        &inet,
    ]);
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
}
