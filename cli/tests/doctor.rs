//! End-to-end tests of `vswitch doctor` on real namespaces: a healthy
//! setup passes every check (exit 0); each fault the test makes
//! (containers on different networks, a port nothing listens on, an
//! unpublished port, a spoofing container, an interface MTU above an
//! overlay's, a killed peer host) fails the check that names it, with its
//! evidence and fix, and doctor exits 1.

mod common;

use std::time::Duration;

use common::*;

/// `vswitch doctor ARGS --format json`: the exit code and the report.
fn doctor(h: &impl Vswitch, args: &[&str]) -> (i32, serde_json::Value) {
    let mut argv = vec!["doctor"];
    argv.extend_from_slice(args);
    argv.extend_from_slice(&["--format", "json"]);
    let out = h.vs(&argv);
    let report: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap_or_else(|e| {
        panic!(
            "doctor {args:?}: not JSON ({e}): {}{}\n{}",
            stdout(&out),
            stderr(&out),
            tail(&h.log(), 40)
        )
    });
    let code = out.status.code().expect("exit code");
    assert_eq!(
        code == 0,
        report["Ok"] == true,
        "exit code vs Ok: {report:#}"
    );
    (code, report)
}

/// The checks named `name`, in order.
fn checks<'a>(report: &'a serde_json::Value, name: &str) -> Vec<&'a serde_json::Value> {
    report["Checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["Check"] == name)
        .collect()
}

/// The one failed check, which must be `name`; its evidence and fix.
fn only_failure(report: &serde_json::Value, name: &str) -> (String, String) {
    let failed: Vec<&serde_json::Value> = report["Checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["Status"] == "fail")
        .collect();
    assert_eq!(failed.len(), 1, "one failure, of {name}: {report:#}");
    assert_eq!(failed[0]["Check"], name, "{report:#}");
    (
        failed[0]["Evidence"].as_str().unwrap().to_string(),
        failed[0]["Fix"].as_str().unwrap_or_default().to_string(),
    )
}

/// Every check passed, and these ran.
fn healthy(report: &serde_json::Value, ran: &[&str]) {
    assert_eq!(report["Ok"], true, "{report:#}");
    for name in ran {
        let c = checks(report, name);
        assert!(!c.is_empty(), "no {name} check: {report:#}");
        assert!(c.iter().all(|c| c["Status"] == "ok"), "{report:#}");
    }
}

/// A TCP server in `ns` on `port` that echoes, so a connection stays open.
fn tcp_server(ns: &str, port: u16) -> Bg {
    let srv = Bg::spawn(
        ns,
        &[
            "socat".to_string(),
            format!("TCP-LISTEN:{port},fork,reuseaddr"),
            "EXEC:cat".into(),
        ],
    );
    wait_for("the server listening", Duration::from_secs(5), || {
        stdout(&ns_exec(ns, &["ss", "-Htln", &format!("sport = :{port}")])).contains("LISTEN")
    });
    srv
}

#[test]
fn doctor_passes_a_healthy_host_and_names_each_fault() {
    require_root!();
    let mut h = Host::start(&[]);
    let n1 = h.network("n", &["--subnet", "10.235.1.0/24"]);
    let n2 = h.network("n", &["--subnet", "10.235.2.0/24"]);
    let a = h.run("a", &n1, &[]);
    let b = h.run("b", &n1, &[]);
    let c = h.run("c", &n2, &["-p", "18080:80"]);
    let ip_b = h.ip_of(&b, &n1);

    // Healthy: the daemon, a container, a peer by name and by address.
    let (code, r) = doctor(&h, &[]);
    assert_eq!(code, 0, "{r:#}");
    healthy(&r, &["daemon", "datapath"]);
    let (code, r) = doctor(&h, &[&a]);
    assert_eq!(code, 0, "{r:#}");
    healthy(
        &r,
        &["container", "interface", "mtu", "gateway", "dns", "drops"],
    );
    let (code, r) = doctor(&h, &[&a, &b]);
    assert_eq!(code, 0, "{r:#}");
    healthy(&r, &["dns", "network", "reach", "mtu", "drops"]);
    assert!(
        checks(&r, "dns")[0]["Evidence"]
            .as_str()
            .unwrap()
            .contains(&format!("{b} resolves to {ip_b}")),
        "{r:#}"
    );
    assert!(
        checks(&r, "mtu").iter().any(|c| c["Evidence"]
            .as_str()
            .unwrap()
            .contains("1500-byte packet with DF")),
        "a full-sized DF probe ran: {r:#}"
    );
    let (code, r) = doctor(&h, &[&a, &ip_b]);
    assert_eq!(code, 0, "{r:#}");

    // A port something listens on, then one nothing does.
    let _srv = tcp_server(&b, 8080);
    let (code, r) = doctor(&h, &[&a, &format!("{b}:8080")]);
    assert_eq!(code, 0, "{r:#}");
    healthy(&r, &["port"]);
    let (code, r) = doctor(&h, &[&a, &format!("{b}:8081/tcp")]);
    assert_eq!(code, 1, "{r:#}");
    let (evidence, fix) = only_failure(&r, "port");
    assert!(
        evidence.contains("nothing listens on 8081/tcp"),
        "{evidence}"
    );
    assert!(
        evidence.contains("0.0.0.0:8080"),
        "what does listen: {evidence}"
    );
    assert!(fix.contains("8081/tcp"), "{fix}");
    let (code, r) = doctor(&h, &[&a, &format!("{b}:8081/udp")]);
    assert_eq!(code, 1, "{r:#}");
    assert!(
        only_failure(&r, "port").0.contains("port unreachable"),
        "{r:#}"
    );

    // Different networks: which each is on, and the connect that fixes it.
    let (code, r) = doctor(&h, &[&a, &c]);
    assert_eq!(code, 1, "{r:#}");
    let (evidence, fix) = only_failure(&r, "network");
    assert!(
        evidence.contains(&n1) && evidence.contains(&n2),
        "{evidence}"
    );
    assert_eq!(fix, format!("`vswitch network connect {n2} {a}`"));
    // ... and the fix works.
    h.vs_ok(&["network", "connect", &n2, &a]);
    let (code, r) = doctor(&h, &[&a, &c]);
    assert_eq!(code, 0, "after the fix: {r:#}");
    h.vs_ok(&["network", "disconnect", &n2, &a]);

    // The published port, from the host: nothing listens behind it yet.
    let (code, r) = doctor(&h, &[&c, "host:18080"]);
    assert_eq!(code, 1, "{r:#}");
    assert_eq!(checks(&r, "published")[0]["Status"], "ok", "{r:#}");
    let port = checks(&r, "port");
    assert_eq!(port[0]["Status"], "fail", "{r:#}");
    assert!(
        port[0]["Evidence"].as_str().unwrap().contains("80/tcp"),
        "{r:#}"
    );
    assert_eq!(checks(&r, "reach")[0]["Status"], "fail", "{r:#}");
    let _web = tcp_server(&c, 80);
    let (code, r) = doctor(&h, &[&c, "host:18080"]);
    assert_eq!(code, 0, "{r:#}");
    healthy(&r, &["published", "port", "reach"]);
    // A port it does not publish.
    let (code, r) = doctor(&h, &[&c, "host:18081"]);
    assert_eq!(code, 1, "{r:#}");
    let (evidence, _) = only_failure(&r, "published");
    assert!(
        evidence.contains("80/tcp -> 18080"),
        "what it does publish: {evidence}"
    );

    // A spoofing container: its MAC is not its endpoint's. The interface
    // check says so, and the drops the probes met are counted by reason.
    let s = h.run("s", &n1, &[]);
    let o = ns_exec(
        &s,
        &["ip", "link", "set", "eth0", "address", "02:00:00:00:99:02"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let (code, r) = doctor(&h, &[&s, &b]);
    assert_eq!(code, 1, "{r:#}");
    let iface = checks(&r, "interface");
    assert_eq!(iface[0]["Status"], "fail", "{r:#}");
    assert!(
        iface[0]["Evidence"]
            .as_str()
            .unwrap()
            .contains("02:00:00:00:99:02"),
        "{r:#}"
    );
    let drops = checks(&r, "drops");
    assert_eq!(drops[0]["Status"], "fail", "{r:#}");
    assert!(
        drops[0]["Evidence"]
            .as_str()
            .unwrap()
            .contains("spoofed_mac"),
        "{r:#}"
    );
    assert_eq!(checks(&r, "reach")[0]["Status"], "fail", "{r:#}");

    // An --internal network: nothing leaves it. A container that routes
    // out through the gateway anyway has its packets refused by the NAT,
    // and doctor counts them.
    let internal = h.network("n", &["--internal", "--subnet", "10.235.3.0/24"]);
    let i = h.run("i", &internal, &[]);
    let o = ns_exec(&i, &["ip", "route", "add", "default", "via", "10.235.3.1"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let (code, r) = doctor(&h, &[&i, "198.51.100.7"]);
    assert_eq!(code, 1, "{r:#}");
    let net = checks(&r, "network");
    assert_eq!(net[0]["Status"], "fail", "{r:#}");
    assert!(
        net[0]["Evidence"].as_str().unwrap().contains("--internal"),
        "{r:#}"
    );
    let drops = checks(&r, "drops");
    assert!(
        drops[0]["Evidence"]
            .as_str()
            .unwrap()
            .contains("EgressDenied"),
        "{r:#}"
    );

    // No such container; a daemon that does not answer.
    let (code, r) = doctor(&h, &["nosuch"]);
    assert_eq!(code, 1);
    assert!(only_failure(&r, "container")
        .0
        .contains("no container `nosuch`"));
    let out = cmd(&[
        bin("vswitch").to_str().unwrap(),
        "--host",
        "unix:///nonexistent/vswitchd.sock",
        "doctor",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stdout(&out).starts_with("FAIL daemon"), "{}", stdout(&out));

    // Text: a line per check, the fix under a failure.
    let out = h.vs(&["doctor", &a, &c]);
    assert_eq!(out.status.code(), Some(1));
    let text = stdout(&out);
    assert!(text.contains("FAIL network"), "{text}");
    assert!(
        text.contains(&format!("fix: `vswitch network connect {n2} {a}`")),
        "{text}"
    );
    assert!(text.ends_with("1 check(s) failed.\n"), "{text}");
}

#[test]
fn doctor_refuses_bad_input() {
    require_root!();
    let h = Host::start(&[]);
    for (args, says) in [
        (vec!["a", "b:0"], "not a port"),
        (vec!["a", "b:80/sctp"], "tcp or udp"),
        (vec!["a", "host"], "host:PORT"),
        (vec!["a", "not a name"], "neither an IP"),
        (vec!["a", "[fd00::1"], "`]`"),
        (vec!["-bad-"], "unexpected argument"),
    ] {
        let mut argv = vec!["doctor"];
        argv.extend_from_slice(&args);
        let out = h.vs(&argv);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(stderr(&out).contains(says), "{args:?}: {}", stderr(&out));
    }
    // The API checks the same.
    let out = cmd(&[
        "curl",
        "-s",
        "-w",
        "%{http_code}",
        "--unix-socket",
        h.socket.to_str().unwrap(),
        "-X",
        "POST",
        "-d",
        r#"{"Target":"b","Port":80}"#,
        "http://vswitchd/v1/doctor",
    ]);
    let body = stdout(&out);
    assert!(body.ends_with("400"), "{body}");
    assert!(body.contains("needs the container"), "{body}");
    // The daemon is fine.
    assert_eq!(doctor(&h, &[]).0, 0);
}

#[test]
fn doctor_finds_an_overlay_mtu_too_large_and_a_dead_host() {
    require_root!();
    let ul = Underlay::new();
    let key = TempFile::new("vskey-doctor", "doctor the overlay");
    let (mut h1, mut h2) = cluster_pair(&ul, &key.0, "192.0.2.51", "192.0.2.52");
    let net = shared_overlay(&h1, &h2, "10.235.64.0/24");
    let mtu = h1.vs_json(&["network", "inspect", &net])[0]["MTU"]
        .as_u64()
        .unwrap();
    assert!(
        mtu < 1500,
        "an overlay's MTU is below the underlay's: {mtu}"
    );
    let a = h1.run("a", &net, &[]);
    let b = h2.run("b", &net, &[]);
    wait_for("b known on h1", Duration::from_secs(10), || {
        has_container(&h1, &net, &b)
    });

    // Healthy: b's host alive, an echo and a full-sized DF echo through
    // the tunnel.
    let mut last = serde_json::Value::Null;
    let passed = (0..10).any(|_| {
        let (code, r) = doctor(&h1, &[&a, &b]);
        last = r;
        code == 0 || {
            std::thread::sleep(Duration::from_millis(500));
            false
        }
    });
    assert!(passed, "healthy overlay: {last:#}");
    healthy(&last, &["cluster", "network", "host", "reach", "mtu"]);
    assert!(
        checks(&last, "host")[0]["Evidence"]
            .as_str()
            .unwrap()
            .contains(&h2.ns.name),
        "{last:#}"
    );

    // a's interface MTU above the overlay's: frames above it do not fit.
    let o = ns_exec(&a, &["ip", "link", "set", "eth0", "mtu", "1500"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let (code, r) = doctor(&h1, &[&a, &b]);
    assert_eq!(code, 1, "{r:#}");
    let (evidence, fix) = only_failure(&r, "mtu");
    assert!(evidence.contains("1500"), "{evidence}");
    assert!(evidence.contains("underlay"), "{evidence}");
    assert_eq!(
        fix,
        format!("in the container: `ip link set eth0 mtu {mtu}`")
    );
    let o = ns_exec(&a, &["ip", "link", "set", "eth0", "mtu", &mtu.to_string()]);
    assert!(o.status.success(), "{}", stderr(&o));

    // b's host killed: gossip marks it, and doctor names it.
    h2.kill9();
    wait_for("h2 not alive on h1", Duration::from_secs(30), || {
        alive_members(&h1) == 1
    });
    let (code, r) = doctor(&h1, &[&a, &b]);
    assert_eq!(code, 1, "{r:#}");
    let cluster = checks(&r, "cluster");
    assert_eq!(cluster[0]["Status"], "fail", "{r:#}");
    assert!(
        cluster[0]["Evidence"]
            .as_str()
            .unwrap()
            .contains(&h2.ns.name),
        "{r:#}"
    );
    // Whether b is still in the directory (its host suspect) or gone
    // (dead), the step about b names its host.
    let named = r["Checks"].as_array().unwrap().iter().any(|c| {
        c["Status"] == "fail"
            && ["host", "network"].contains(&c["Check"].as_str().unwrap())
            && c["Evidence"].as_str().unwrap().contains(&h2.ns.name)
    });
    assert!(named, "{r:#}");
}
