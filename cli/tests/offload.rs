//! Checksums and super-frames on every path: real TCP transfers between
//! containers on a local network and across an overlay, with the
//! containers' offloads (checksum, TSO, GSO) on and off on either side.
//! A transfer only completes with the right bytes if every segment the
//! receiving kernel accepted had a correct checksum: a wrong one is
//! dropped and retransmitted forever, and the transfer times out.

mod common;

use std::time::{Duration, Instant};

use common::*;

/// Bytes sent per transfer.
const TRANSFER: usize = 8 << 20;

/// A file of pseudo-random bytes (xorshift, so no /dev/urandom read is
/// needed and every run sends the same data) and its SHA-256.
fn payload(tag: &str) -> (std::path::PathBuf, String) {
    let path = std::env::temp_dir().join(format!("vsoff-{tag}-{}", std::process::id()));
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut data = Vec::with_capacity(TRANSFER);
    while data.len() < TRANSFER {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        data.extend_from_slice(&x.to_le_bytes());
    }
    std::fs::write(&path, &data).unwrap();
    let sum = ok(&["sha256sum", path.to_str().unwrap()]);
    (path, sum.split_whitespace().next().unwrap().to_string())
}

/// Turns checksum offload (and the segmentation offloads that depend on
/// it) on or off on device `dev` in namespace `ns`.
fn set_dev_offloads(ns: &str, dev: &str, on: bool) {
    let v = if on { "on" } else { "off" };
    // `tx` is checksum offload; TSO and GSO depend on it.
    let o = ns_exec(
        ns,
        &["ethtool", "-K", dev, "tx", v, "tso", v, "gso", v, "sg", v],
    );
    assert!(o.status.success(), "ethtool -K {dev}: {}", stderr(&o));
}

/// Turns the sending and receiving offloads of a container's eth0 on or off.
fn set_offloads(ns: &str, on: bool) {
    let v = if on { "on" } else { "off" };
    set_dev_offloads(ns, "eth0", on);
    let k = stdout(&ns_exec(ns, &["ethtool", "-k", "eth0"]));
    let tso = k
        .lines()
        .find(|l| l.starts_with("tcp-segmentation-offload:"))
        .unwrap_or_default();
    assert!(tso.contains(v), "{ns}: {tso}");
}

/// Sends the payload from `from` to `to_ip:port` (a receiver in `to`) and
/// returns the SHA-256 the receiver computed over what it got.
fn transfer(from: &str, to: &str, to_ip: &str, port: u16, file: &std::path::Path) -> String {
    let out = std::env::temp_dir().join(format!("vsoff-rx-{to}-{port}"));
    let _cleanup = TempFile(out.clone());
    let listen = format!(
        "timeout 60 socat -u TCP-LISTEN:{port},reuseaddr - | sha256sum > {}",
        out.display()
    );
    let mut server = std::process::Command::new("ip")
        .args(["netns", "exec", to, "sh", "-c", &listen])
        .spawn()
        .unwrap();
    // Until the listener is up.
    let start = Instant::now();
    loop {
        let o = ns_exec(
            from,
            &[
                "timeout",
                "60",
                "socat",
                "-u",
                &format!("FILE:{}", file.display()),
                &format!("TCP:{to_ip}:{port},connect-timeout=1"),
            ],
        );
        if o.status.success() {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "sending to {to_ip}:{port}: {}",
            stderr(&o)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let status = server.wait().unwrap();
    assert!(status.success(), "receiver in {to}: {status}");
    let sum = std::fs::read_to_string(&out).unwrap();
    sum.split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

/// Bytes per frame written to `container`'s port, from `vswitch stats`.
fn tx_per_frame(h: &Host, container: &str) -> f64 {
    let stats = h.vs_json(&["stats", "--json"]);
    let port = stats["Ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["Container"] == container)
        .unwrap_or_else(|| panic!("no port of {container}: {stats}"))
        .clone();
    port["TxBytes"].as_u64().unwrap() as f64 / port["TxPackets"].as_u64().unwrap().max(1) as f64
}

/// UDP sends made in a host's namespace (`Udp: OutDatagrams`: a send with
/// UDP GSO counts once, however many datagrams it becomes).
fn udp_sends(h: &Host) -> u64 {
    let snmp = stdout(&ns_exec(&h.ns.name, &["cat", "/proc/net/snmp"]));
    let mut udp = snmp.lines().filter(|l| l.starts_with("Udp: "));
    let (names, values) = (udp.next().unwrap(), udp.next().unwrap());
    let at = names
        .split_whitespace()
        .position(|n| n == "OutDatagrams")
        .unwrap();
    values.split_whitespace().nth(at).unwrap().parse().unwrap()
}

/// VXLAN datagrams the host's daemon sent.
fn tunnel_tx(h: &Host) -> u64 {
    h.vs_json(&["stats", "--json"])["Tunnel"]["TxPackets"]
        .as_u64()
        .unwrap()
}

/// Every combination of offloads on the sender and the receiver.
const COMBOS: [(bool, bool); 4] = [(true, true), (false, true), (true, false), (false, false)];

#[test]
fn local_tcp_is_intact_with_offloads_on_and_off() {
    require_root!();
    let (file, want) = payload("local");
    let _f = TempFile(file.clone());
    let mut h = Host::start(&[]);
    let net = h.network("offl", &["--subnet", "10.231.0.0/24"]);
    let a = h.run("a", &net, &[]);
    let b = h.run("b", &net, &[]);
    let b_ip = h.ip_of(&b, &net);
    for (i, (a_on, b_on)) in COMBOS.into_iter().enumerate() {
        set_offloads(&a, a_on);
        set_offloads(&b, b_on);
        let got = transfer(&a, &b, &b_ip, 5400 + i as u16, &file);
        assert_eq!(got, want, "a offloads {a_on}, b offloads {b_on}");
        if i == 0 {
            // With the sender's TSO on, the switch passed super-frames on:
            // far more than one MTU per frame written to b.
            let per = tx_per_frame(&h, &b);
            eprintln!("local: {per:.0} bytes per frame written to b");
            assert!(per > 3000.0, "{per} bytes per frame written to b");
        }
    }
}

#[test]
fn overlay_tcp_is_intact_with_offloads_on_and_off() {
    overlay_is_intact(false);
}

/// The same across an encrypted overlay: every segment in its own QUIC
/// datagram, coalesced again on the far side.
#[test]
fn encrypted_overlay_tcp_is_intact_with_offloads_on_and_off() {
    overlay_is_intact(true);
}

/// The tunnel's count `name` (UDP and QUIC) from `vswitch stats`.
fn tunnel_count(h: &Host, name: &str) -> u64 {
    let stats = h.vs_json(&["stats", "--json"]);
    stats["Tunnel"][name]
        .as_u64()
        .unwrap_or_else(|| panic!("no Tunnel.{name}: {stats}"))
}

/// QUIC datagrams the host's daemon sent.
fn quic_tx(h: &Host) -> u64 {
    h.vs_json(&["stats", "--json"])["Tunnel"]["QuicDatagramsOut"]
        .as_u64()
        .unwrap()
}

fn overlay_is_intact(encrypted: bool) {
    require_root!();
    let tag = if encrypted { "enc" } else { "overlay" };
    let (file, want) = payload(tag);
    let _f = TempFile(file.clone());
    let ul = Underlay::new();
    let key = TempFile::new("vsoff-key", "offload test cluster key, long enough");
    let prefix = if encrypted { "vsoq" } else { "vsoh" };
    let plug = |ip: &str| Host::in_cluster(&ul, prefix, ip, &key.0, &[]);
    let mut h1 = plug("192.0.2.31");
    let mut h2 = plug("192.0.2.32");
    h2.vs_ok(&["join-cluster", "192.0.2.31"]);
    let mut flags = vec!["--driver", "overlay", "--subnet", "10.232.0.0/24"];
    if encrypted {
        flags.extend(["--opt", "encrypted"]);
    }
    let net = h1.network(if encrypted { "ovq" } else { "ovo" }, &flags);
    let start = Instant::now();
    while !h2.vs(&["network", "inspect", &net]).status.success() {
        assert!(start.elapsed() < Duration::from_secs(15), "overlay on h2");
        std::thread::sleep(Duration::from_millis(100));
    }
    let a = h1.run("a", &net, &[]);
    let b = h2.run("b", &net, &[]);
    let b_ip = h2.ip_of(&b, &net);
    assert!(
        ping_until(&a, &b_ip, Duration::from_secs(15)).is_some(),
        "a cannot reach b across the overlay"
    );
    for (i, (a_on, b_on)) in COMBOS.into_iter().enumerate() {
        set_offloads(&a, a_on);
        set_offloads(&b, b_on);
        let (sends0, datagrams0, quic0) = (udp_sends(&h1), tunnel_tx(&h1), quic_tx(&h1));
        let partial0 = (
            tunnel_count(&h1, "TxPartialCsum"),
            tunnel_count(&h2, "RxPartialCsum"),
        );
        let got = transfer(&a, &b, &b_ip, 5500 + i as u16, &file);
        assert_eq!(got, want, "a offloads {a_on}, b offloads {b_on}");
        // With the sender's offloads on, h1 left the segments' checksums
        // partial for h2 (a member that takes them), which h2 told and
        // handed on marked so: the bytes above arrived intact all the same.
        let partial = (
            tunnel_count(&h1, "TxPartialCsum") - partial0.0,
            tunnel_count(&h2, "RxPartialCsum") - partial0.1,
        );
        eprintln!("{tag}, a offloads {a_on}: partial checksums sent, received {partial:?}");
        if a_on {
            let segments = (TRANSFER / 1500 / 2) as u64;
            assert!(partial.0 > segments && partial.1 > segments, "{partial:?}");
        }
        if encrypted {
            // Inside QUIC only: no clear VXLAN datagram left h1.
            assert_eq!(
                tunnel_tx(&h1),
                datagrams0,
                "clear VXLAN on an encrypted network"
            );
            let quic = quic_tx(&h1) - quic0;
            assert!(quic as usize > TRANSFER / 1500, "{quic} QUIC datagrams");
        } else if i == 0 {
            // The sender's super-frames left with UDP GSO: many tunnel
            // datagrams per send (the kernel counts a GSO send once).
            let sends = udp_sends(&h1) - sends0;
            let datagrams = tunnel_tx(&h1) - datagrams0;
            eprintln!("overlay: {datagrams} tunnel datagrams in {sends} UDP sends");
            assert!(
                datagrams > 5 * sends,
                "{datagrams} datagrams, {sends} sends"
            );
        }
        if i == 0 {
            // Segments from the tunnel were coalesced back into
            // super-frames toward b.
            let per = tx_per_frame(&h2, &b);
            eprintln!("{tag}: {per:.0} bytes per frame written to b");
            assert!(per > 3000.0, "{per} bytes per frame written to b");
        }
    }
    drop(h1);
    drop(h2);
}

#[test]
fn multi_queue_taps_spread_flows_over_workers() {
    require_root!();
    let mut h = Host::start(&["--workers", "2"]);
    let net = h.network("mq", &["--subnet", "10.234.0.0/24"]);
    let a = h.run("a", &net, &[]);
    let b = h.run("b", &net, &[]);
    let b_ip = h.ip_of(&b, &net);
    // One queue per worker on each container's interface.
    for c in [&a, &b] {
        let q = stdout(&ns_exec(c, &["ls", "/sys/class/net/eth0/queues"]));
        let tx: Vec<&str> = q
            .split_whitespace()
            .filter(|q| q.starts_with("tx-"))
            .collect();
        assert_eq!(tx, ["tx-0", "tx-1"], "{c}: {q}");
    }
    iperf3_16_flows(&a, &b, &b_ip);
    let per_worker = worker_rx(&h);
    eprintln!("frames read per worker: {per_worker:?}");
    assert_eq!(per_worker.len(), 2, "{per_worker:?}");
    assert!(per_worker.iter().all(|&n| n > 100), "{per_worker:?}");
}

/// Two seconds of iperf3 with 16 flows from `client` to a server in
/// `server_ns` at `server_ip`: the kernel hashes each flow to a queue, so
/// with two workers both get some (all on one: 1 chance in 32,768).
fn iperf3_16_flows(client: &str, server_ns: &str, server_ip: &str) {
    let mut server = std::process::Command::new("ip")
        .args([
            "netns", "exec", server_ns, "timeout", "30", "iperf3", "-s", "-1",
        ])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    loop {
        let o = ns_exec(
            client,
            &[
                "timeout", "30", "iperf3", "-c", server_ip, "-P", "16", "-t", "2",
            ],
        );
        if o.status.success() {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "iperf3: {}",
            stderr(&o)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = server.wait();
}

/// Frames each worker of `h` read from its TAP queues.
fn worker_rx(h: &Host) -> Vec<u64> {
    let stats = h.vs_json(&["stats", "--json"]);
    stats["WorkerRxPackets"]
        .as_array()
        .unwrap_or_else(|| panic!("no WorkerRxPackets: {stats}"))
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect()
}

/// Across an overlay the tunnel's receive side is spread over the workers
/// too (one `SO_REUSEPORT` socket each, steered by the inner flow): each
/// worker writes the frames of its flows into the TAPs through its own
/// queue, which the kernel then remembers for the flow's replies, so both
/// workers on both hosts carry some of 16 flows. With the tunnel read by
/// the first worker only, every flow's replies came back through its
/// queue and the other worker read nothing.
#[test]
fn overlay_flows_spread_over_every_worker() {
    require_root!();
    let ul = Underlay::new();
    let key = TempFile::new("vsoff-wkey", "offload test workers cluster key");
    let plug = |ip: &str| Host::in_cluster(&ul, "vsow", ip, &key.0, &["--workers", "2"]);
    let mut h1 = plug("192.0.2.41");
    let mut h2 = plug("192.0.2.42");
    h2.vs_ok(&["join-cluster", "192.0.2.41"]);
    let net = h1.network("ovw", &["--driver", "overlay", "--subnet", "10.235.0.0/24"]);
    let start = Instant::now();
    while !h2.vs(&["network", "inspect", &net]).status.success() {
        assert!(start.elapsed() < Duration::from_secs(15), "overlay on h2");
        std::thread::sleep(Duration::from_millis(100));
    }
    let a = h1.run("a", &net, &[]);
    let b = h2.run("b", &net, &[]);
    let b_ip = h2.ip_of(&b, &net);
    assert!(
        ping_until(&a, &b_ip, Duration::from_secs(15)).is_some(),
        "a cannot reach b across the overlay"
    );
    let (before1, before2) = (worker_rx(&h1), worker_rx(&h2));
    iperf3_16_flows(&a, &b, &b_ip);
    for (h, before, who) in [
        (&h1, before1, "sender's host"),
        (&h2, before2, "receiver's host"),
    ] {
        let after = worker_rx(h);
        let read: Vec<u64> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
        eprintln!("{who}: frames read per worker {read:?}");
        assert_eq!(read.len(), 2);
        assert!(read.iter().all(|&n| n > 100), "{who}: {read:?}");
    }
}

/// A kernel VXLAN device on a veth is a static VTEP whose inner checksums
/// stay partial while the veth's checksum offload is on (Linux completes
/// them only where a device cannot): vswitch marks such frames `NEEDS_CSUM`
/// for the container's kernel instead of handing them on as they are, which
/// the container dropped for a bad checksum. Both directions, offloads on
/// and off, the bytes checked by SHA-256.
#[test]
fn kernel_vxlan_peer_tcp_is_intact_with_offloads_on_and_off() {
    require_root!();
    let (file, want) = payload("kvx");
    let _f = TempFile(file.clone());
    let ul = Underlay::new();
    let key = TempFile::new("vsoff-kkey", "offload test kernel peer key");
    let mut h1 = Host::in_cluster(&ul, "vsok", "192.0.2.51", &key.0, &[]);
    let net = h1.network(
        "ovk",
        &[
            "--driver",
            "overlay",
            "--opt",
            "vni=5077",
            "--subnet",
            "10.233.0.0/24",
        ],
    );
    let a = h1.run("a", &net, &["--ip", "10.233.0.2"]);
    let k = ul.plug("vsokk", "192.0.2.52/24");
    let veth = underlay_veth(&k.name);
    kernel_vtep(&k.name, 5077, "192.0.2.52", "192.0.2.51", "10.233.0.50/24");
    h1.vs_ok(&["network", "vtep", "add", &net, "192.0.2.52"]);
    assert!(
        ping_until(&k.name, "10.233.0.2", Duration::from_secs(10)).is_some(),
        "the kernel peer cannot reach a"
    );
    for (i, on) in [true, false].into_iter().enumerate() {
        set_dev_offloads(&k.name, &veth, on);
        set_dev_offloads(&k.name, "vx0", on);
        set_offloads(&a, on);
        let port = 5600 + 2 * i as u16;
        let got = transfer(&k.name, &a, "10.233.0.2", port, &file);
        assert_eq!(got, want, "kernel vxlan -> vswitch, offloads {on}");
        let got = transfer(&a, &k.name, "10.233.0.50", port + 1, &file);
        assert_eq!(got, want, "vswitch -> kernel vxlan, offloads {on}");
    }
    drop(h1);
}
