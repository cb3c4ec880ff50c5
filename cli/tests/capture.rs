//! `vswitch capture` on real namespaces: what it writes is read by the real
//! `tcpdump -r` and holds the test's ping with the payload the test chose;
//! a network's capture sees a frame at both ends and names each; a reader
//! that stops reading costs frames (counted) and not the datapath; a
//! capture ends when its client goes.

mod common;

use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use pcap_file::pcapng::blocks::interface_statistics::InterfaceStatisticsOption;
use pcap_file::pcapng::{Block, PcapNgParser};

/// `vswitch capture ARGS...` against `h`'s daemon, in the background.
fn capture(h: &Host, args: &[&str], stdout: Stdio) -> Child {
    Command::new(bin("vswitch"))
        .arg("--host")
        .arg(format!("unix://{}", h.socket.display()))
        .arg("capture")
        .args(args)
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(Stdio::piped())
        .spawn()
        .expect("running vswitch capture")
}

/// Captures running, from `vswitch stats`.
fn captures(h: &Host) -> u64 {
    h.vs_json(&["stats", "--json"])["Captures"]
        .as_u64()
        .unwrap()
}

/// Waits until `n` captures run.
fn wait_captures(h: &Host, n: u64) {
    let start = Instant::now();
    while captures(h) != n {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{} captures running, not {n}",
            captures(h)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits for `child` to exit by itself.
fn wait_exit(child: &mut Child, within: Duration) -> std::process::Output {
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > within {
            let _ = child.kill();
            panic!("vswitch capture did not finish");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut out = Vec::new();
    if let Some(mut s) = child.stdout.take() {
        s.read_to_end(&mut out).unwrap();
    }
    let mut err = Vec::new();
    child.stderr.take().unwrap().read_to_end(&mut err).unwrap();
    std::process::Output {
        status: child.wait().unwrap(),
        stdout: out,
        stderr: err,
    }
}

#[test]
fn tcpdump_reads_the_capture_and_finds_the_ping() {
    require_root!();
    let mut h = Host::start(&[]);
    let net = h.network("cap", &["--subnet", "10.233.0.0/24"]);
    let a = h.run("a", &net, &[]);
    let b = h.run("b", &net, &[]);
    let b_ip = h.ip_of(&b, &net);
    assert!(ping_until(&a, &b_ip, Duration::from_secs(10)).is_some());
    let file = TempFile(std::env::temp_dir().join(format!("vscap-{a}.pcapng")));
    let path = file.0.display().to_string();
    let mut c = capture(
        &h,
        &[&a, "-c", "4", "--filter", "icmp", "-w", &path],
        Stdio::null(),
    );
    wait_captures(&h, 1);
    // ARP first (not taken by the filter), then two echoes with a payload
    // of our own.
    ns_exec(&a, &["ip", "neigh", "flush", "all"]);
    let ping = ns_exec(
        &a,
        &["ping", "-c", "2", "-i", "0.2", "-p", "c0ffee42", &b_ip],
    );
    assert!(ping.status.success(), "{}", stderr(&ping));
    let out = wait_exit(&mut c, Duration::from_secs(10));
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("4 frames captured, 0 dropped"),
        "{}",
        stderr(&out)
    );
    let dump = ok(&["tcpdump", "-nn", "-x", "-r", &path]);
    eprintln!("{dump}");
    let lines: Vec<&str> = dump.lines().filter(|l| !l.starts_with('\t')).collect();
    assert_eq!(lines.len(), 4, "{dump}");
    assert_eq!(
        lines
            .iter()
            .filter(|l| l.contains("ICMP echo request"))
            .count(),
        2
    );
    assert_eq!(
        lines
            .iter()
            .filter(|l| l.contains("ICMP echo reply"))
            .count(),
        2
    );
    assert!(!dump.contains("ARP"));
    // The payload, as tcpdump prints it in hex.
    assert!(dump.contains("c0ff ee42 c0ff ee42"), "{dump}");
    // The capture ended with its client.
    wait_captures(&h, 0);
}

#[test]
fn a_network_capture_sees_a_frame_at_both_ends() {
    require_root!();
    let mut h = Host::start(&[]);
    let net = h.network("capn", &["--subnet", "10.234.0.0/24"]);
    let a = h.run("a", &net, &[]);
    let b = h.run("b", &net, &[]);
    let (a_ip, b_ip) = (h.ip_of(&a, &net), h.ip_of(&b, &net));
    assert!(ping_until(&a, &b_ip, Duration::from_secs(10)).is_some());
    let filter = format!("icmp and src host {a_ip}");
    let mut c = capture(&h, &[&net, "-c", "2", "--filter", &filter], Stdio::piped());
    wait_captures(&h, 1);
    let ping = ns_exec(&a, &["ping", "-c", "1", &b_ip]);
    assert!(ping.status.success());
    let out = wait_exit(&mut c, Duration::from_secs(10));
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    eprintln!("{text}");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    // Read from a's TAP, then written to b's.
    assert!(lines[0].contains(&format!("{a}/eth0 In ")), "{text}");
    assert!(lines[1].contains(&format!("{b}/eth0 Out")), "{text}");
    for l in lines {
        assert!(
            l.contains(&format!("IP {a_ip} > {b_ip}: ICMP type 8")),
            "{l}"
        );
    }
}

/// The frames-dropped figure of the last statistics block in `bytes` (a
/// pcapng stream, perhaps cut short).
fn dropped_in(bytes: &[u8]) -> Option<u64> {
    let (mut rest, mut p) = PcapNgParser::new(bytes).ok()?;
    let mut dropped = None;
    while let Ok((r, block)) = p.next_block(rest) {
        rest = r;
        if let Block::InterfaceStatistics(s) = block {
            for o in &s.options {
                if let InterfaceStatisticsOption::IsbOsDrop(d) = o {
                    dropped = Some(*d);
                }
            }
        }
    }
    dropped
}

/// iperf3 from `client` to `server_ip` for 2 s; Gbit/s received.
fn iperf3(client: &str, server_ns: &str, server_ip: &str, port: u16) -> f64 {
    let port = port.to_string();
    let mut server = Command::new("ip")
        .args([
            "netns", "exec", server_ns, "iperf3", "-s", "-1", "-p", &port,
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    // iperf3 -J exits 0 even when it could not connect: the JSON says.
    let v = loop {
        let o = ns_exec(
            client,
            &[
                "timeout", "20", "iperf3", "-c", server_ip, "-p", &port, "-t", "2", "-J",
            ],
        );
        let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap_or_default();
        if v["error"].is_null() && o.status.success() {
            break v;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "iperf3: {v} {}",
            stderr(&o)
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let _ = server.kill();
    let _ = server.wait();
    v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .unwrap_or_else(|| panic!("iperf3 said {v}"))
        / 1e9
}

#[test]
fn a_stalled_reader_costs_frames_not_the_datapath() {
    require_root!();
    let mut h = Host::start(&[]);
    let net = h.network("caps", &["--subnet", "10.235.0.0/24"]);
    let a = h.run("a", &net, &[]);
    let b = h.run("b", &net, &[]);
    let b_ip = h.ip_of(&b, &net);
    assert!(ping_until(&a, &b_ip, Duration::from_secs(10)).is_some());
    let free = iperf3(&a, &b, &b_ip, 5611);
    // Nobody reads the capture's stdout: the pipe fills, then the
    // daemon's queue for it.
    let mut c = capture(&h, &[&a, "-w", "-"], Stdio::piped());
    wait_captures(&h, 1);
    let stalled = iperf3(&a, &b, &b_ip, 5612);
    eprintln!("iperf3 {free:.2} Gbit/s without a capture, {stalled:.2} with a stalled one");
    // Not a benchmark (netbench is): the datapath did not wait for the
    // reader, which would have held iperf3 near zero.
    assert!(stalled > free * 0.3, "{stalled} against {free} Gbit/s");
    // Reading again: what follows the backlog says how many were lost.
    let mut pipe = c.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut got = Vec::new();
        let mut buf = vec![0u8; 1 << 20];
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(8) {
            match pipe.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
            if dropped_in(&got).is_some_and(|d| d > 0) {
                break;
            }
        }
        got
    });
    let got = reader.join().unwrap();
    let dropped = dropped_in(&got);
    eprintln!(
        "{} bytes read after the stall; dropped {dropped:?}",
        got.len()
    );
    assert!(dropped.is_some_and(|d| d > 0), "no drops reported");
    let _ = c.kill();
    let _ = c.wait();
    // The capture ended with its client; the datapath goes on.
    wait_captures(&h, 0);
    assert!(ping_until(&a, &b_ip, Duration::from_secs(5)).is_some());
}

#[test]
fn bad_captures_are_refused() {
    require_root!();
    let mut h = Host::start(&[]);
    let net = h.network("capb", &["--subnet", "10.236.0.0/24"]);
    let a = h.run("a", &net, &[]);
    for (args, says) in [
        (
            vec!["capture", "nosuch"],
            "no container or network `nosuch`",
        ),
        (vec!["capture", &a, "-i", "eth9"], "has no interface `eth9`"),
        (
            vec!["capture", &a, "--filter", "tcp port"],
            "a port was expected",
        ),
        (
            vec!["capture", &a, "--filter", "port 99999"],
            "not a port number",
        ),
        (vec!["capture", &net, "-i", "eth0"], "is a network"),
        (vec!["capture", &a, "-c", "0"], "0 is not in 1.."),
    ] {
        let o = h.vs(&args);
        assert!(!o.status.success(), "{args:?} succeeded");
        assert!(stderr(&o).contains(says), "{args:?}: {}", stderr(&o));
    }
    // One capture per interface at a time.
    let mut first = capture(&h, &[&a], Stdio::null());
    wait_captures(&h, 1);
    let o = h.vs(&["capture", &a]);
    assert!(stderr(&o).contains("already running"), "{}", stderr(&o));
    // SIGTERM (or Ctrl-C) ends it as tcpdump's: counted, exit 0.
    ok(&["kill", "-TERM", &first.id().to_string()]);
    let out = wait_exit(&mut first, Duration::from_secs(5));
    assert!(out.status.success(), "{:?}: {}", out.status, stderr(&out));
    assert!(stderr(&out).contains("frames captured"), "{}", stderr(&out));
    wait_captures(&h, 0);
}
