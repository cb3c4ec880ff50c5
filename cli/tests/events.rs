//! `vswitch events` on real namespaces: the lifecycle of a network and a
//! `run -d` container with a published port, in order, filtered by
//! `--since` and `--until`, followed with `-f`; and the anomalies the
//! daemon detects itself, against real faults the test makes: a traffic
//! spike after a quiet baseline (iperf3, 3 s), a burst of drops of one
//! reason (a container that changed its MAC), a member going dead in a
//! two-host overlay (killed).

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

/// `vswitch events ARGS... --format json`, each line parsed.
fn events(h: &Host, args: &[&str]) -> Vec<Value> {
    let mut all = vec!["events", "--format", "json"];
    all.extend_from_slice(args);
    h.vs_ok(&all)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// `vswitch events -f --format json` in the background: its lines as
/// they come, on a channel; killed on drop.
struct Follower {
    child: Child,
    lines: Receiver<Value>,
}

impl Follower {
    fn start(h: &Host, args: &[&str]) -> Follower {
        let mut child = Command::new(bin("vswitch"))
            .arg("--host")
            .arg(format!("unix://{}", h.socket.display()))
            .args(["events", "-f", "--format", "json"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("running vswitch events -f");
        let out = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    if tx.send(v).is_err() {
                        break;
                    }
                }
            }
        });
        Follower { child, lines }
    }

    /// The first event `want` takes within `within`, with when it came.
    fn wait(&self, within: Duration, want: impl Fn(&Value) -> bool) -> Option<(Value, Instant)> {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(v) if want(&v) => return Some((v, Instant::now())),
                Ok(_) => {}
                Err(_) => return None,
            }
        }
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn is(e: &Value, kind: &str, action: &str, actor: &str) -> bool {
    e["Type"] == kind && e["Action"] == action && e["Actor"] == actor
}

/// The events about `names`, as (type, action, actor).
fn about<'a>(evs: &'a [Value], names: &[&str]) -> Vec<(&'a str, &'a str, &'a str)> {
    evs.iter()
        .filter(|e| names.iter().any(|n| e["Actor"] == *n))
        .map(|e| {
            (
                e["Type"].as_str().unwrap(),
                e["Action"].as_str().unwrap(),
                e["Actor"].as_str().unwrap(),
            )
        })
        .collect()
}

/// Nanoseconds of an event as `--since` takes Unix seconds.
fn secs_of(e: &Value) -> String {
    let n = e["TimeNano"].as_u64().unwrap();
    format!("{}.{:09}", n / 1_000_000_000, n % 1_000_000_000)
}

#[test]
fn lifecycle_events_come_in_order_filtered_and_followed() {
    require_root!();
    let h = Host::start(&[]);
    let first = events(&h, &[]);
    assert!(
        first
            .iter()
            .any(|e| e["Type"] == "daemon" && e["Action"] == "start"),
        "{first:?}"
    );
    // Started before anything below happens: it must see it come.
    let follow = Follower::start(&h, &[]);
    std::thread::sleep(Duration::from_millis(300));

    let net = h.network("ev", &["--subnet", "10.237.0.0/24"]);
    let c = unique("evc");
    h.vs_ok(&run_detached(
        &c,
        &net,
        &["-p", "127.0.0.1:18080:80"],
        &["sleep", "2"],
    ));
    let (created, _) = follow
        .wait(Duration::from_secs(5), |e| is(e, "network", "create", &net))
        .expect("-f did not show the network created after it started");
    assert_eq!(created["Attributes"]["driver"], "bridge", "{created}");
    assert_eq!(
        created["Attributes"]["subnet"], "10.237.0.0/24",
        "{created}"
    );
    // The container's command ends by itself.
    follow
        .wait(Duration::from_secs(15), |e| is(e, "container", "exit", &c))
        .expect("no container exit event");
    h.vs_ok(&["rm", &c]);
    h.vs_ok(&["network", "rm", &net]);
    follow
        .wait(Duration::from_secs(5), |e| is(e, "network", "remove", &net))
        .expect("-f did not show the network removed");

    let all = events(&h, &[]);
    let seqs: Vec<u64> = all.iter().map(|e| e["Seq"].as_u64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    assert_eq!(
        about(&all, &[&net, &c]),
        vec![
            ("network", "create", net.as_str()),
            ("container", "create", c.as_str()),
            ("endpoint", "connect", c.as_str()),
            ("port", "publish", c.as_str()),
            ("container", "start", c.as_str()),
            ("container", "exit", c.as_str()),
            ("port", "unpublish", c.as_str()),
            ("endpoint", "disconnect", c.as_str()),
            ("container", "remove", c.as_str()),
            ("network", "remove", net.as_str()),
        ],
        "{all:#?}"
    );
    let find = |kind: &str, action: &str| {
        all.iter()
            .find(|e| e["Type"] == kind && e["Action"] == action && e["Container"] == c.as_str())
            .unwrap_or_else(|| panic!("no {kind} {action}"))
            .clone()
    };
    let publish = find("port", "publish");
    assert_eq!(publish["Port"], "80/tcp");
    assert_eq!(publish["Network"], net.as_str());
    assert_eq!(publish["Attributes"]["host"], "127.0.0.1:18080");
    let connect = find("endpoint", "connect");
    assert_eq!(connect["Network"], net.as_str());
    assert!(
        connect["Attributes"]["ipv4"]
            .as_str()
            .is_some_and(|a| a.starts_with("10.237.0.")),
        "{connect}"
    );
    let exit = find("container", "exit");
    assert_eq!(exit["Attributes"]["exitCode"], "0", "{exit}");

    // --since: Unix seconds, RFC 3339 and a time ago.
    for since in [secs_of(&exit), exit["Time"].as_str().unwrap().to_string()] {
        let later = events(&h, &["--since", &since]);
        assert_eq!(
            about(&later, &[&net, &c]).first(),
            Some(&("container", "exit", c.as_str())),
            "--since {since}: {later:#?}"
        );
        assert!(about(&later, &[&net, &c]).len() == 5, "{later:#?}");
    }
    assert_eq!(
        about(&events(&h, &["--since", "10m"]), &[&net, &c]).len(),
        10
    );
    // --until: up to the start, nothing after.
    let start = find("container", "start");
    let before = events(&h, &["--until", &secs_of(&start)]);
    assert_eq!(
        about(&before, &[&net, &c]).last(),
        Some(&("container", "start", c.as_str())),
        "{before:#?}"
    );
    let (s, u) = (secs_of(&connect), secs_of(&start));
    assert_eq!(
        about(&events(&h, &["--since", &s, "--until", &u]), &[&net, &c]).len(),
        3
    );

    // One line per event, as `docker events` prints them.
    let human = h.vs_ok(&["events", "--since", &secs_of(&created)]);
    let line = human
        .lines()
        .next()
        .unwrap_or_else(|| panic!("no lines: {human}"));
    assert!(
        line.ends_with(&format!(
            " network create {net} (driver=bridge, gateway=10.237.0.1, subnet=10.237.0.0/24)"
        )),
        "{human}"
    );
    assert!(
        human.contains(&format!(
            " port publish {c} (network={net}, port=80/tcp, host=127.0.0.1:18080)"
        )),
        "{human}"
    );

    // Bad times are refused by the CLI, and bad queries by the daemon,
    // which goes on answering.
    for bad in ["yesterday", "10parsecs", "2026-13-01T00:00:00Z"] {
        let o = h.vs(&["events", "--since", bad]);
        assert!(!o.status.success(), "--since {bad} was taken");
        let err = stderr(&o);
        assert!(
            err.contains(&format!("--since {bad}")) && err.contains("RFC 3339"),
            "{err}"
        );
    }
    let o = h.vs(&["events", "--since", "1h", "--until", "2h"]);
    assert!(
        stderr(&o).contains("--until is before --since"),
        "{}",
        stderr(&o)
    );
    for (query, says) in [
        ("since=10m", "Unix seconds"),
        ("follow=maybe", "follow=1"),
        ("tail=3", "since=SECONDS"),
        ("since=5&until=4", "until is before since"),
    ] {
        let o = cmd(&[
            "curl",
            "-sS",
            "-m",
            "5",
            "-w",
            "\n%{http_code}",
            "--unix-socket",
            h.socket.to_str().unwrap(),
            &format!("http://vswitchd/v1/events?{query}"),
        ]);
        let out = stdout(&o);
        assert!(out.ends_with("\n400"), "{query}: {out}");
        assert!(out.contains(says), "{query}: {out}");
    }
    h.vs_ok(&["network", "ls"]);
}

/// iperf3 -s in `server` until a listener is up.
fn iperf3_server(server: &str, port: u16) -> Bg {
    let s = Bg::spawn(server, &["iperf3", "-s", "-1", "-p", &port.to_string()]);
    wait_for("iperf3 listening", Duration::from_secs(5), || {
        stdout(&ns_exec(
            server,
            &["ss", "-Hltn", &format!("sport = :{port}")],
        ))
        .contains("LISTEN")
    });
    s
}

#[test]
fn a_traffic_spike_is_an_anomaly_event_within_5_seconds() {
    require_root!();
    let mut h = Host::start(&[]);
    let net = h.network("evs", &["--subnet", "10.238.0.0/24"]);
    let a = h.run("a", &net, &[]);
    let b = h.run("b", &net, &[]);
    let ip_b = h.ip_of(&b, &net);
    let _server = iperf3_server(&b, 5201);
    let follow = Follower::start(&h, &[]);
    // A quiet baseline: past the detector's warm-up (5 s), nothing but
    // what the containers' kernels send by themselves.
    std::thread::sleep(Duration::from_secs(8));
    let spike = |e: &Value| {
        e["Type"] == "anomaly"
            && e["Action"] == "rate-spike"
            && (e["Container"] == a.as_str() || e["Container"] == b.as_str())
    };
    assert!(
        follow.wait(Duration::from_millis(10), spike).is_none(),
        "a spike reported before any traffic"
    );
    // The burst: 3 s of TCP, bounded by iperf3 and by timeout.
    let burst = Instant::now();
    let client = {
        let (a, ip_b) = (a.clone(), ip_b.clone());
        std::thread::spawn(move || {
            ns_exec(
                &a,
                &[
                    "timeout", "10", "iperf3", "-c", &ip_b, "-p", "5201", "-t", "3",
                ],
            )
        })
    };
    let found = follow.wait(Duration::from_secs(5), spike);
    let o = client.join().unwrap();
    assert!(o.status.success(), "iperf3: {}{}", stdout(&o), stderr(&o));
    let (e, at) = found.unwrap_or_else(|| {
        panic!(
            "no rate-spike within 5 s of the burst; events: {:#?}",
            events(&h, &["--since", "1m"])
        )
    });
    assert!(at - burst < Duration::from_secs(5), "{:?}", at - burst);
    assert_eq!(e["Network"], net.as_str(), "{e}");
    assert_eq!(e["Port"], "eth0", "{e}");
    let rate: f64 = e["Attributes"]["bytes_per_second"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let baseline: f64 = e["Attributes"]["baseline_bytes_per_second"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(rate > 2e6 && rate > 8.0 * baseline, "{e}");
    // Reported once, and it ends once the burst is over.
    let container = e["Container"].as_str().unwrap().to_string();
    let (end, _) = follow
        .wait(Duration::from_secs(10), |x| {
            x["Type"] == "anomaly"
                && x["Action"] == "rate-spike-end"
                && x["Container"] == container.as_str()
        })
        .expect("the spike did not end");
    assert!(end["Seq"].as_u64() > e["Seq"].as_u64());
    let starts = events(&h, &[])
        .into_iter()
        .filter(|x| x["Action"] == "rate-spike" && x["Container"] == container.as_str())
        .count();
    assert_eq!(starts, 1);
    // The daemon logs it too, at warn.
    assert!(
        h.log()
            .lines()
            .any(|l| l.contains("WARN") && l.contains("rate-spike") && l.contains(&container)),
        "{}",
        tail(&h.log(), 20)
    );
}

#[test]
fn a_burst_of_spoofed_frames_is_a_drop_burst_event() {
    require_root!();
    let mut h = Host::start(&[]);
    let net = h.network("evd", &["--subnet", "10.239.0.0/24"]);
    let a = h.run("a", &net, &[]);
    let b = h.run("b", &net, &[]);
    let ip_b = h.ip_of(&b, &net);
    let mac_b = h.vs_json(&["inspect", &b])[0]["Networks"][&net]["MacAddress"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(ping_until(&a, &ip_b, Duration::from_secs(10)).is_some());
    let follow = Follower::start(&h, &[]);
    std::thread::sleep(Duration::from_secs(2));
    // a takes a MAC that is not its own, and keeps b's in its neighbour
    // table (a MAC change flushes it), so its pings go out from it.
    ok(&[
        "ip",
        "-n",
        &a,
        "link",
        "set",
        "eth0",
        "address",
        "02:00:00:00:ee:01",
    ]);
    ok(&[
        "ip",
        "-n",
        &a,
        "neigh",
        "replace",
        &ip_b,
        "lladdr",
        &mac_b,
        "dev",
        "eth0",
        "nud",
        "permanent",
    ]);
    let start = Instant::now();
    // A flood without answers sends 100 a second: 300 in 3 s at most.
    let o = ns_exec(&a, &["ping", "-f", "-c", "300", "-w", "3", &ip_b]);
    assert!(
        !o.status.success(),
        "spoofed pings were answered: {}",
        stdout(&o)
    );
    let (e, at) = follow
        .wait(Duration::from_secs(5), |e| {
            e["Type"] == "anomaly" && e["Action"] == "drop-burst" && e["Container"] == a.as_str()
        })
        .unwrap_or_else(|| {
            panic!(
                "no drop-burst; events: {:#?}\nstats: {}",
                events(&h, &["--since", "1m"]),
                h.vs_ok(&["stats", "--json"])
            )
        });
    assert!(at - start < Duration::from_secs(8));
    assert_eq!(e["Attributes"]["reason"], "spoofed_mac", "{e}");
    assert!(
        e["Attributes"]["drops_per_second"]
            .as_str()
            .unwrap()
            .parse::<f64>()
            .unwrap()
            >= 10.0,
        "{e}"
    );
    // b sent nothing wrong: no burst of its own.
    assert!(!events(&h, &[])
        .iter()
        .any(|x| x["Action"] == "drop-burst" && x["Container"] == b.as_str()));
}

#[test]
fn a_killed_member_goes_suspect_then_dead_in_the_events() {
    require_root!();
    let ul = Underlay::new();
    let key = TempFile::new("vskey-events", "correct horse battery staple");
    let h1 = Host::in_cluster(&ul, "vse", "192.0.2.51", &key.0, &[]);
    let mut h2 = Host::in_cluster(&ul, "vse", "192.0.2.52", &key.0, &[]);
    h2.vs_ok(&["join-cluster", "192.0.2.51"]);
    for h in [&h1, &h2] {
        wait_for("2 alive members", Duration::from_secs(15), || {
            alive_members(h) == 2
        });
    }
    let host2 = h2.ns.name.clone();
    let alive = events(&h1, &[]);
    let up = alive
        .iter()
        .find(|e| is(e, "member", "alive", &host2))
        .unwrap_or_else(|| panic!("no member alive event: {alive:#?}"));
    assert_eq!(up["Attributes"]["address"], "192.0.2.52:7946", "{up}");
    let follow = Follower::start(&h1, &[]);
    std::thread::sleep(Duration::from_millis(300));
    h2.kill9();
    follow
        .wait(Duration::from_secs(30), |e| is(e, "member", "dead", &host2))
        .expect("no member dead event within 30 s of the kill");
    let all = events(&h1, &[]);
    let of_h2: Vec<&str> = all
        .iter()
        .filter(|e| e["Type"] == "member" && e["Actor"] == host2.as_str())
        .map(|e| e["Action"].as_str().unwrap())
        .collect();
    assert_eq!(of_h2, ["alive", "suspect", "dead"], "{all:#?}");
}

#[test]
fn rm_of_a_running_container_is_its_exit_then_its_removal() {
    require_root!();
    let mut h = Host::start(&[]);
    let net = h.network("ev", &["--subnet", "10.237.9.0/24"]);
    let c = h.run("evr", &net, &[]);
    h.vs_ok(&["rm", &c]);
    h.containers.retain(|x| *x != c);
    let all = events(&h, &[]);
    let mine: Vec<&Value> = all
        .iter()
        .filter(|e| e["Actor"] == c.as_str() && e["Type"] == "container")
        .collect();
    let actions: Vec<&str> = mine.iter().map(|e| e["Action"].as_str().unwrap()).collect();
    assert_eq!(actions, ["create", "start", "exit", "remove"], "{all:#?}");
    let exit = mine[2];
    assert_eq!(exit["Attributes"]["by"], "rm", "{exit}");
    // `sleep` ends on SIGTERM: the supervisor wrote 128 + 15.
    assert_eq!(exit["Attributes"]["exitCode"], "143", "{exit}");
}
