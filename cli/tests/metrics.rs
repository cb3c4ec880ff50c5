//! End-to-end tests of `vswitchd --metrics-addr`: `/metrics` fetched with
//! curl from the daemon's own namespace (its loopback), checked by
//! Prometheus's `promtool check metrics`, and its counters against the
//! traffic, drops and API requests the test made.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

/// Where each test's daemon serves metrics: the loopback of its own
/// namespace, so the same port never clashes between tests.
const METRICS: &str = "127.0.0.1:9469";

/// `curl` from inside `ns`: (status code, content type, body).
fn fetch(ns: &str, extra: &[&str], path: &str) -> (u16, String, String) {
    let url = format!("http://{METRICS}{path}");
    let mut argv = vec![
        "curl",
        "-sS",
        "-m",
        "10",
        "-o",
        "-",
        "-w",
        "\n%{http_code} %{content_type}",
    ];
    argv.extend_from_slice(extra);
    argv.push(&url);
    let out = ns_exec(ns, &argv);
    assert!(out.status.success(), "curl {url}: {}", stderr(&out));
    let text = stdout(&out);
    let (body, meta) = text.rsplit_once('\n').expect("curl's -w line");
    let (code, ctype) = meta.split_once(' ').unwrap_or((meta, ""));
    (
        code.parse().expect("status code"),
        ctype.to_string(),
        body.to_string(),
    )
}

/// `GET /metrics`, which must be 200 and pass `promtool check metrics`
/// without a single lint problem.
fn scrape(ns: &str) -> String {
    let (code, ctype, body) = fetch(ns, &[], "/metrics");
    assert_eq!(code, 200, "{body}");
    assert!(ctype.starts_with("text/plain; version=0.0.4"), "{ctype}");
    promtool_ok(&body);
    body
}

fn promtool_ok(body: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian's prometheus package)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics failed ({}):\n{}{}\n--- metrics:\n{body}",
        out.status,
        stdout(&out),
        stderr(&out)
    );
}

/// The value of the sample of `name` whose labels include `labels`
/// (`None` when there is none).
fn value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<u64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, v) = l.rsplit_once(' ')?;
            let (n, rest) = series.split_once('{').unwrap_or((series, ""));
            (n == name
                && labels
                    .iter()
                    .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\""))))
            .then(|| v.parse::<f64>().ok().map(|f| f as u64))
            .flatten()
        })
        .next()
}

fn must(text: &str, name: &str, labels: &[(&str, &str)]) -> u64 {
    value(text, name, labels).unwrap_or_else(|| panic!("no {name} {labels:?} in\n{text}"))
}

#[test]
fn metrics_count_pings_drops_and_api_requests() {
    require_root!();
    let mut h = Host::start(&["--metrics-addr", METRICS]);
    let ns = h.ns.name.clone();
    let net = h.network("m", &["--subnet", "10.236.0.0/24"]);
    let a = h.run("a", &net, &[]);
    let b = h.run("b", &net, &[]);
    let before = scrape(&ns);
    let count = |text: &str, name: &str, c: &str| {
        must(text, name, &[("network", net.as_str()), ("container", c)])
    };

    // Pings: every frame each way passes both ports.
    const PINGS: u64 = 5;
    let ip_b = h.ip_of(&b, &net);
    let o = ns_exec(&a, &["ping", "-c", "5", "-i", "0.2", "-W", "2", &ip_b]);
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    let after = scrape(&ns);
    for (c, name) in [
        (&a, "vswitch_port_rx_packets_total"),
        (&a, "vswitch_port_tx_packets_total"),
        (&b, "vswitch_port_rx_packets_total"),
        (&b, "vswitch_port_tx_packets_total"),
    ] {
        let (x, y) = (count(&before, name, c), count(&after, name, c));
        assert!(y >= x + PINGS, "{name} of {c}: {x} -> {y}\n{after}");
    }
    // 84-byte IPv4 echoes in 98-byte frames.
    let (x, y) = (
        count(&before, "vswitch_port_rx_bytes_total", &a),
        count(&after, "vswitch_port_rx_bytes_total", &a),
    );
    assert!(y >= x + PINGS * 98, "rx bytes of {a}: {x} -> {y}");
    assert_eq!(
        must(&after, "vswitch_network_endpoints", &[("network", &net)]),
        2
    );
    assert!(must(&after, "vswitch_mac_table_entries", &[("network", &net)]) <= 2);
    assert_eq!(
        must(&after, "vswitch_containers", &[("state", "running")]),
        2,
        "{after}"
    );

    // A real drop: a claims an address that is not its own (its ARP
    // requests carry it), and port security drops them.
    let spoofed = [
        ("network", net.as_str()),
        ("container", a.as_str()),
        ("reason", "spoofed_ip"),
    ];
    assert_eq!(must(&after, "vswitch_port_drops_total", &spoofed), 0);
    let _ = ns_exec(&a, &["ip", "addr", "add", "10.236.0.99/24", "dev", "eth0"]);
    let o = ns_exec(
        &a,
        &["ping", "-c", "2", "-W", "1", "-I", "10.236.0.99", &ip_b],
    );
    assert!(!o.status.success(), "a spoofed ping got through");
    let dropped = scrape(&ns);
    assert!(
        must(&dropped, "vswitch_port_drops_total", &spoofed) >= 1,
        "{dropped}"
    );
    assert!(must(&dropped, "vswitch_drops_total", &[("reason", "spoofed_ip")]) >= 1);
    assert_eq!(
        must(
            &dropped,
            "vswitch_port_drops_total",
            &[("container", b.as_str()), ("reason", "spoofed_ip")]
        ),
        0
    );

    // API requests: exactly the test's, by endpoint and status class.
    let requests = |text: &str, endpoint: &str, method: &str, class: &str| {
        value(
            text,
            "vswitch_api_requests_total",
            &[
                ("endpoint", endpoint),
                ("method", method),
                ("status_class", class),
            ],
        )
        .unwrap_or(0)
    };
    assert!(requests(&dropped, "network_create", "POST", "2xx") >= 1);
    let listed = requests(&dropped, "network_list", "GET", "2xx");
    let missing = requests(&dropped, "network_inspect", "GET", "4xx");
    for _ in 0..3 {
        h.vs_ok(&["network", "ls"]);
    }
    assert!(!h.vs(&["network", "inspect", "nosuchnet"]).status.success());
    let now = scrape(&ns);
    assert_eq!(requests(&now, "network_list", "GET", "2xx"), listed + 3);
    assert_eq!(requests(&now, "network_inspect", "GET", "4xx"), missing + 1);

    // What a Prometheus server asks for, it gets: OpenMetrics.
    let (code, ctype, body) = fetch(
        &ns,
        &[
            "-H",
            "Accept: application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5",
        ],
        "/metrics",
    );
    assert_eq!(code, 200);
    assert!(ctype.starts_with("application/openmetrics-text"), "{ctype}");
    assert!(body.ends_with("# EOF\n"), "{body}");
    // Other paths and methods are refused.
    assert_eq!(fetch(&ns, &[], "/").0, 404);
    assert_eq!(fetch(&ns, &["-X", "POST"], "/metrics").0, 405);
}

#[test]
fn a_bad_metrics_address_is_refused_with_a_sentence() {
    let out = cmd(&[
        bin("vswitchd").to_str().unwrap(),
        "--metrics-addr",
        "localhost",
    ]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("`localhost` is not ADDR:PORT"), "{err}");
    // An address this machine does not have (TEST-NET-1): refused at
    // start, before anything listens.
    let dir = std::env::temp_dir().join(unique("vsmetrics"));
    let (state, socket) = (dir.join("state"), dir.join("vswitchd.sock"));
    let out = cmd(&[
        bin("vswitchd").to_str().unwrap(),
        "--state-dir",
        state.to_str().unwrap(),
        "--socket",
        socket.to_str().unwrap(),
        "--metrics-addr",
        "192.0.2.250:9469",
    ]);
    let _ = std::fs::remove_dir_all(&dir);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("binding --metrics-addr 192.0.2.250:9469") && err.contains("pick a free port"),
        "{err}"
    );
    assert!(!socket.exists());
}

#[test]
fn overlay_metrics_show_members_tunnel_and_suspicion() {
    require_root!();
    let ul = Underlay::new();
    let key = TempFile::new("vskey-metrics", "correct horse battery staple");
    let mut h1 = Host::in_cluster(
        &ul,
        "vsm",
        "192.0.2.41",
        &key.0,
        &["--metrics-addr", METRICS],
    );
    let mut h2 = Host::in_cluster(&ul, "vsm", "192.0.2.42", &key.0, &[]);
    h2.vs_ok(&["join-cluster", "192.0.2.41"]);
    for h in [&h1, &h2] {
        wait_for("2 alive members", Duration::from_secs(15), || {
            alive_members(h) == 2
        });
    }
    let net = h1.network("mo", &["--driver", "overlay", "--subnet", "10.242.0.0/24"]);
    wait_for("the overlay on h2", Duration::from_secs(10), || {
        h2.vs(&["network", "inspect", &net]).status.success()
    });
    let a = h1.run("a", &net, &[]);
    let b = h2.run("b", &net, &[]);
    wait_for("b's endpoint on h1", Duration::from_secs(10), || {
        has_container(&h1, &net, &b)
    });
    let ns = h1.ns.name.clone();
    let before = scrape(&ns);
    let ip_b = h2.ip_of(&b, &net);
    let (ok, out) = until_ok(
        &a,
        &["ping", "-c", "1", "-W", "1", &ip_b],
        Duration::from_secs(10),
    );
    assert!(ok, "{out}");
    let o = ns_exec(&a, &["ping", "-c", "5", "-i", "0.2", "-W", "2", &ip_b]);
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    let after = scrape(&ns);

    let host2 = h2.ns.name.clone();
    assert_eq!(
        must(&after, "vswitch_gossip_members", &[("state", "alive")]),
        2
    );
    assert_eq!(
        must(
            &after,
            "vswitch_gossip_member_state",
            &[("host", &host2), ("state", "alive")]
        ),
        1
    );
    assert!(must(&after, "vswitch_gossip_rx_datagrams_total", &[]) > 0);
    assert_eq!(
        must(
            &after,
            "vswitch_gossip_rx_errors_total",
            &[("reason", "auth")]
        ),
        0
    );
    assert_eq!(
        must(
            &after,
            "vswitch_network_remote_endpoints",
            &[("network", &net)]
        ),
        1
    );
    for (name, labels) in [
        ("vswitch_tunnel_tx_packets_total", &[][..]),
        (
            "vswitch_tunnel_rx_packets_total",
            &[("transport", "udp")][..],
        ),
    ] {
        let (x, y) = (must(&before, name, labels), must(&after, name, labels));
        assert!(y >= x + 5, "{name}: {x} -> {y}\n{after}");
    }
    assert!(value(&after, "vswitch_quic_connections", &[]).is_some());

    // h2 dies: h1 suspects it, then declares it dead.
    let suspicions = must(&after, "vswitch_gossip_suspicions_total", &[]);
    h2.kill9();
    wait_for("h2 dead in h1's metrics", Duration::from_secs(30), || {
        let t = scrape(&ns);
        value(
            &t,
            "vswitch_gossip_member_state",
            &[("host", &host2), ("state", "dead")],
        ) == Some(1)
    });
    let t = scrape(&ns);
    assert!(
        must(&t, "vswitch_gossip_suspicions_total", &[]) > suspicions,
        "{t}"
    );
    assert!(must(&t, "vswitch_gossip_members_down_total", &[]) >= 1);
    assert_eq!(must(&t, "vswitch_gossip_members", &[("state", "dead")]), 1);
}

#[test]
fn policy_denials_are_counted_by_policy_and_routed_frames_counted() {
    require_root!();
    let h = Host::start(&["--metrics-addr", METRICS]);
    let ns = h.ns.name.clone();
    let front = h.network("f", &["--subnet", "10.236.1.0/24"]);
    let back = h.network("b", &["--subnet", "10.236.2.0/24"]);
    let mut h = h;
    let a = h.run("a", &front, &[]);
    let b = h.run("b", &back, &[]);
    let ip_b = h.ip_of(&b, &back);
    // Without a policy: denied, under default-deny.
    let o = ns_exec(&a, &["ping", "-c", "2", "-i", "0.2", "-W", "1", &ip_b]);
    assert!(!o.status.success(), "crossed without a policy");
    let denied = scrape(&ns);
    assert!(
        must(
            &denied,
            "vswitch_policy_denied_total",
            &[("policy", "default-deny")]
        ) >= 2
    );
    h.vs_ok(&[
        "policy", "allow", "--from", &front, "--to", &back, "--name", "f-b",
    ]);
    let o = ns_exec(&a, &["ping", "-c", "3", "-i", "0.2", "-W", "2", &ip_b]);
    assert!(o.status.success(), "{}", stdout(&o));
    let after = scrape(&ns);
    assert_eq!(must(&after, "vswitch_policies", &[]), 1);
    // Each echo and each reply routed once.
    assert!(
        must(&after, "vswitch_routed_frames_total", &[]) >= 6,
        "{after}"
    );
    assert!(
        must(
            &after,
            "vswitch_policy_flow_events_total",
            &[("event", "opened")]
        ) >= 1
    );
    assert!(must(&after, "vswitch_policy_flows", &[]) >= 1);
}
