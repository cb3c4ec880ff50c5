//! End-to-end tests of the control plane's discipline, on real namespaces,
//! with steps of a request failed, slowed down or panicked through
//! `vswitchd --test-failpoints` (fail-rs):
//! - a connect that fails at any step leaves nothing behind: no TAP in the
//!   container's namespace, no endpoint, no container record, its address
//!   and host port free again;
//! - a connect that waits on netlink does not hold back gossip: another
//!   host's endpoint reaches this host's tables meanwhile;
//! - a request that panics undoes its steps and stops the daemon, which a
//!   restart brings back with its stored state.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;

/// The interfaces of a namespace, but loopback.
fn links(ns: &str) -> Vec<String> {
    stdout(&ns_exec(ns, &["ip", "-o", "link", "show"]))
        .lines()
        .filter_map(|l| l.split(':').nth(1))
        .map(|n| n.trim().split('@').next().unwrap_or("").to_string())
        .filter(|n| n != "lo")
        .collect()
}

/// Connects with a published port and the network's first address.
fn connect(h: &Host, net: &str, container: &str, ns: &str) -> std::process::Output {
    let netns = format!("/run/netns/{ns}");
    h.vs(&[
        "network",
        "connect",
        "--ip",
        "10.233.0.2",
        "-p",
        "18080:80",
        "--netns",
        &netns,
        net,
        container,
    ])
}

/// What is left of a connect that failed: nothing.
fn assert_nothing_left(h: &Host, net: &str, container: &str, ns: &str) {
    assert_eq!(links(ns), Vec::<String>::new(), "a TAP was left in {ns}");
    let inspect = h.vs_json(&["network", "inspect", net]);
    assert_eq!(
        inspect[0]["Containers"].as_object().map(|c| c.len()),
        Some(0),
        "{inspect}"
    );
    let out = h.vs(&["inspect", container]);
    assert!(
        !out.status.success(),
        "the container record was left: {}",
        stdout(&out)
    );
    let stats = h.vs_json(&["stats", "--json"]);
    assert_eq!(
        stats["Ports"].as_array().map(|p| p.len()),
        Some(0),
        "{stats}"
    );
}

/// Connects again (the fail point fired once) with the same static
/// address and host port, which succeeds only if both were given back.
fn assert_connects_again(h: &Host, net: &str, container: &str, ns: &str) {
    let out = connect(h, net, container, ns);
    assert!(
        out.status.success(),
        "second connect failed: {}\n{}",
        stderr(&out),
        tail(&h.log(), 30)
    );
    assert_eq!(h.ip_of(container, net), "10.233.0.2");
    assert_eq!(links(ns), vec!["eth0".to_string()]);
    let port = h.vs_ok(&["port", container]);
    assert!(port.contains("18080"), "{port}");
    h.vs_ok(&["network", "disconnect", net, container]);
    assert_eq!(links(ns), Vec::<String>::new());
}

#[rstest::rstest]
#[case::addresses("addresses")]
#[case::netlink("netlink")]
#[case::tap("tap")]
#[case::datapath("datapath")]
#[case::store("store")]
#[case::endpoint("endpoint")]
#[case::published("published")]
fn a_connect_that_fails_at_any_step_leaves_nothing(#[case] step: &str) {
    require_root!();
    let fp = format!("connect::{step}=1*return");
    let h = Host::start(&["--test-failpoints", &fp]);
    let net = h.network("n", &["--subnet", "10.233.0.0/24"]);
    let ns = Netns::new("c");
    let container = unique("ct");
    let out = connect(&h, &net, &container, &ns.name);
    assert!(!out.status.success(), "the fail point did not fire");
    let err = stderr(&out);
    assert!(
        err.contains(&format!("fail point connect::{step}")),
        "{err}"
    );
    assert_nothing_left(&h, &net, &container, &ns.name);
    assert_connects_again(&h, &net, &container, &ns.name);
    // And nothing of the failed attempt survives a restart either.
    let mut h = h;
    h.restart_with(&[]);
    let inspect = h.vs_json(&["network", "inspect", &net]);
    assert_eq!(
        inspect[0]["Containers"].as_object().map(|c| c.len()),
        Some(0),
        "{inspect}"
    );
}

#[test]
fn a_connect_waiting_on_netlink_does_not_hold_back_gossip() {
    require_root!();
    let ul = Underlay::new();
    let key = TempFile::new("vskey-cp", "control plane test key");
    // Host 1's first connect waits 6 s before its netlink work.
    let h1 = Host::in_cluster(
        &ul,
        "vsh",
        "192.0.2.11",
        &key.0,
        &["--test-failpoints", "connect::netlink=1*sleep(6000)"],
    );
    let mut h2 = Host::in_cluster(&ul, "vsh", "192.0.2.12", &key.0, &[]);
    h2.vs_ok(&["join-cluster", "192.0.2.11"]);
    for h in [&h1, &h2] {
        wait_for("2 alive members", Duration::from_secs(15), || {
            alive_members(h) == 2
        });
    }
    let net = h2.network("ov", &["--driver", "overlay", "--subnet", "10.241.0.0/24"]);
    wait_for("the overlay on host 1", Duration::from_secs(10), || {
        h1.vs(&["network", "inspect", &net]).status.success()
    });

    // The slow connect on host 1, in the background.
    let a = unique("a");
    let done = Arc::new(AtomicBool::new(false));
    let slow = {
        let (socket, a, net, done) = (h1.socket.clone(), a.clone(), net.clone(), done.clone());
        std::thread::spawn(move || {
            let out = std::process::Command::new(bin("vswitch"))
                .arg("--host")
                .arg(format!("unix://{}", socket.display()))
                .args([
                    "run",
                    "-d",
                    "--name",
                    &a,
                    "--network",
                    &net,
                    "--",
                    "sleep",
                    "600",
                ])
                .output()
                .unwrap();
            done.store(true, Ordering::SeqCst);
            out
        })
    };
    let started = Instant::now();
    std::thread::sleep(Duration::from_millis(500));
    // Meanwhile host 2 connects a container: gossip brings it to host 1,
    // whose controller applies it while the connect is still waiting.
    let b = h2.run("b", &net, &[]);
    let mut seen = None;
    while started.elapsed() < Duration::from_secs(20) {
        let t = Instant::now();
        let inspect = h1.vs_json(&["network", "inspect", &net]);
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "network inspect on host 1 took {:?}: the slow connect holds the controller",
            t.elapsed()
        );
        let has_b = inspect[0]["Containers"]
            .as_object()
            .is_some_and(|c| c.values().any(|v| v["Name"] == b.as_str()));
        if has_b {
            seen = Some((started.elapsed(), done.load(Ordering::SeqCst)));
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let (after, connect_done) = seen.expect("host 2's container never reached host 1");
    println!("host 2's endpoint applied on host 1 {after:?} into host 1's 6 s connect");
    assert!(
        !connect_done,
        "host 1's connect finished before the gossip event was applied ({after:?}); the test proves nothing"
    );
    let members = h1.vs_json(&["members", "--format", "json"]);
    assert_eq!(members.as_array().map(|m| m.len()), Some(2), "{members}");
    let out = slow.join().unwrap();
    assert!(
        out.status.success(),
        "the slow connect failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(started.elapsed() >= Duration::from_secs(6));
    let _ = h1.vs(&["rm", &a]);
}

#[test]
fn a_panicking_request_undoes_its_steps_and_stops_the_daemon() {
    require_root!();
    let mut h = Host::start(&["--test-failpoints", "connect::store=1*panic(test panic)"]);
    let net = h.network("n", &["--subnet", "10.233.0.0/24"]);
    let ns = Netns::new("c");
    let container = unique("ct");
    let out = connect(&h, &net, &container, &ns.name);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("bug") && err.contains("test panic"), "{err}");
    // Undone before the daemon went: no TAP in the namespace.
    assert_eq!(links(&ns.name), Vec::<String>::new());
    let status = h
        .wait_exit(Duration::from_secs(15))
        .expect("vswitchd went on after a request panicked");
    assert!(!status.success(), "vswitchd exited with {status}");
    assert!(
        h.log().contains("stopped after an internal error"),
        "{}",
        tail(&h.log(), 20)
    );
    // A restart restores the stored state, in which the connect never was.
    h.restart_with(&[]);
    assert_nothing_left(&h, &net, &container, &ns.name);
    assert_connects_again(&h, &net, &container, &ns.name);
}
