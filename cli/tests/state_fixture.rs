//! Today's daemon on a state directory that the daemon of main 89781ca
//! wrote (`tests/fixtures/state-main-89781ca`, see its README): every
//! network, endpoint, published port and cluster peer is still there, the
//! published ports and peers now in `state.redb`, and the JSON files of
//! that release are gone.
//!
//! The fixture's containers live in `/run/netns/vsfix89781c1` and
//! `vsfix89781c2` (an endpoint whose namespace is gone is released at
//! restore), so the test makes those two namespaces, under a lock that keeps
//! two runs of it apart, and removes them when it ends. Traffic stays inside
//! the namespaces it makes: the cluster peers of the fixture are UDP sockets
//! in a namespace behind a veth.

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

const FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/state-main-89781ca"
);
/// The containers' namespaces, as the fixture stored them.
const CONTAINER_NS: [&str; 2] = ["vsfix89781c1", "vsfix89781c2"];
/// The addresses the fixture's daemon had and joined.
const HOST_ADDR: &str = "192.0.2.201";
const PEERS: [&str; 2] = ["192.0.2.202:7946", "192.0.2.202:7950"];
const KEY: &str = "vswitch state fixture key (main 89781ca)\n";

/// What `vswitch port fixc1` printed on the fixture's state with the
/// binaries of 89781ca.
const PORTS_OF_FIXC1: &str = "\
443/tcp -> [::1]:8443
53/udp -> 127.0.0.1:5353
80/tcp -> 0.0.0.0:8080
80/tcp -> [::]:8080
80/tcp -> 0.0.0.0:33891
80/tcp -> [::]:33891
90/udp -> 0.0.0.0:9090
90/udp -> [::]:9090
";

/// The fixture's container namespaces, made for the test and removed on
/// drop. The lock keeps another run of this test from using the same
/// names meanwhile; a namespace left by a run that was killed is removed.
struct ContainerNamespaces {
    _lock: std::fs::File,
}

impl ContainerNamespaces {
    fn new() -> ContainerNamespaces {
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(std::env::temp_dir().join("vswitch-state-fixture.lock"))
            .expect("opening the lock file");
        lock.lock().expect("taking the lock");
        let guard = ContainerNamespaces { _lock: lock };
        for ns in CONTAINER_NS {
            if Path::new("/run/netns").join(ns).exists() {
                let _ = cmd(&["ip", "netns", "del", ns]);
            }
            ok(&["ip", "netns", "add", ns]);
            ok(&["ip", "-n", ns, "link", "set", "lo", "up"]);
        }
        guard
    }
}

impl Drop for ContainerNamespaces {
    fn drop(&mut self) {
        for ns in CONTAINER_NS {
            let _ = cmd(&["ip", "netns", "del", ns]);
        }
    }
}

/// A copy of the fixture and the daemon running on it; killed and removed
/// on drop.
struct Daemon {
    ns: String,
    dir: PathBuf,
    child: Option<Child>,
}

impl Daemon {
    fn new(ns: &Netns) -> Daemon {
        let dir = std::env::temp_dir().join(format!("vsfix-{}", ns.name));
        let _ = std::fs::remove_dir_all(&dir);
        copy_dir(Path::new(FIXTURE), &dir.join("state"));
        std::fs::set_permissions(
            dir.join("state/quic-identity.pem"),
            std::fs::Permissions::from_mode(0o600),
        )
        .unwrap();
        std::fs::write(dir.join("cluster.key"), KEY).unwrap();
        Daemon {
            ns: ns.name.clone(),
            dir,
            child: None,
        }
    }

    fn state(&self) -> PathBuf {
        self.dir.join("state")
    }

    fn socket(&self) -> PathBuf {
        self.dir.join("vswitchd.sock")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("vswitchd.log")).unwrap_or_default()
    }

    fn start(&mut self) {
        let _ = std::fs::remove_file(self.socket());
        let d = |p: PathBuf| p.display().to_string();
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", &self.ns])
            .arg(bin("vswitchd"))
            .args(["--state-dir", &d(self.state())])
            .args(["--socket", &d(self.socket())])
            .args(["--node-name", "fixhost"])
            .args(["--cluster-key-file", &d(self.dir.join("cluster.key"))])
            .args(["--advertise-addr", HOST_ADDR])
            .args(["--bind", &format!("{HOST_ADDR}:7946")])
            .args(["--dns", "127.0.0.1", "--log-level", "debug"])
            .stdin(Stdio::null());
        let (log, socket) = (self.dir.join("vswitchd.log"), self.socket());
        let child = self
            .child
            .insert(spawn_logged(&mut command, &log, "vswitchd"));
        wait_started(child, &socket, "vswitchd", &log);
        // The socket is bound before the state is read; the first answer
        // comes after.
        self.vs(&["network", "ls"]);
    }

    /// SIGTERM, as the fixture's daemon was stopped.
    fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        while child.try_wait().unwrap().is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.wait();
    }

    fn vs(&self, args: &[&str]) -> String {
        let out = Command::new(bin("vswitch"))
            .arg("--host")
            .arg(format!("unix://{}", self.socket().display()))
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("running vswitch");
        assert!(
            out.status.success(),
            "vswitch {args:?} failed: {}\nstderr: {}\ndaemon log (tail):\n{}",
            out.status,
            stderr(&out),
            tail(&self.log(), 40)
        );
        stdout(&out)
    }

    fn vs_json(&self, args: &[&str]) -> Value {
        serde_json::from_str(&self.vs(args)).expect("JSON output")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!("--- vswitchd log ---\n{}", tail(&self.log(), 80));
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Copies the fixture, without its README.
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name();
        if name == "README.md" {
            continue;
        }
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &to.join(&name));
        } else {
            std::fs::copy(entry.path(), to.join(&name)).unwrap();
        }
    }
}

/// A UDP socket bound to `addr` inside the namespace `ns`.
fn udp_in(ns: &str, addr: &str) -> UdpSocket {
    let path = format!("/run/netns/{ns}");
    let addr: SocketAddr = addr.parse().unwrap();
    std::thread::scope(|s| {
        s.spawn(|| {
            // This thread only: it ends once the socket is bound.
            let f = std::fs::File::open(&path).unwrap();
            nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            UdpSocket::bind(addr).unwrap()
        })
        .join()
        .unwrap()
    })
}

/// The cluster peers to rejoin are known: the daemon's gossip reaches
/// every one of them.
fn assert_rejoins_peers(d: &Daemon, peers: &[UdpSocket]) {
    let mut buf = [0u8; 2048];
    for (sock, addr) in peers.iter().zip(PEERS) {
        sock.set_read_timeout(Some(Duration::from_secs(15)))
            .unwrap();
        match sock.recv_from(&mut buf) {
            Ok((n, from)) => {
                assert!(n > 0);
                assert_eq!(from.ip().to_string(), HOST_ADDR, "gossip to {addr}");
            }
            Err(e) => panic!(
                "no gossip reached the peer {addr} ({e}): the cluster peers were lost\n{}",
                tail(&d.log(), 40)
            ),
        }
    }
}

/// Every published port of the fixture is bound again in the daemon's
/// namespace.
fn assert_ports_bound(d: &Daemon) {
    let tcp = stdout(&ns_exec(&d.ns, &["ss", "-Hltn"]));
    let udp = stdout(&ns_exec(&d.ns, &["ss", "-Hlun"]));
    for want in ["*:8080", "*:33891", "[::1]:8443"] {
        assert!(
            tcp.split_whitespace().any(|w| w == want),
            "no TCP listener on {want}:\n{tcp}"
        );
    }
    for want in ["127.0.0.1:5353", "*:9090"] {
        assert!(
            udp.split_whitespace().any(|w| w == want),
            "no UDP socket on {want}:\n{udp}"
        );
    }
}

fn assert_state_as_written(d: &Daemon) {
    let ls = d.vs_json(&["network", "ls", "--format", "json"]);
    let ids: Vec<(&str, &str)> = ls
        .as_array()
        .unwrap()
        .iter()
        .map(|n| (n["Name"].as_str().unwrap(), n["ID"].as_str().unwrap()))
        .collect();
    for want in [
        (
            "fixbr",
            "45e47a6b3747d055a7eee6fb5ce1fa2506a6c1eae5fbcb34a27f9bc242ad2e72",
        ),
        (
            "fixov",
            "d9c50f5f92c9ba1feb7306cf62b6126504435dd734f95f6c47af4d03321be183",
        ),
    ] {
        assert!(ids.contains(&want), "{want:?} not in {ls}");
    }

    let nets = d.vs_json(&["network", "inspect", "fixbr", "fixov"]);
    let (br, ov) = (&nets[0], &nets[1]);
    assert_eq!(br["Name"], "fixbr");
    assert_eq!(br["Created"], "2026-12-02T05:44:47Z");
    assert_eq!(br["Labels"], json!({"fixture": "main"}));
    assert_eq!(
        br["IPAM"]["Config"],
        json!([{"Subnet": "10.231.0.0/24", "Gateway": "10.231.0.1"}])
    );
    let members = |n: &Value| -> Vec<(String, String)> {
        let mut v: Vec<(String, String)> = n["Containers"]
            .as_object()
            .unwrap()
            .values()
            .map(|c| {
                (
                    c["Name"].as_str().unwrap().to_string(),
                    c["IPv4Address"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        v.sort();
        v
    };
    assert_eq!(
        members(br),
        [("fixc1", "10.231.0.10/24"), ("fixc2", "10.231.0.2/24")]
            .map(|(a, b)| (a.to_string(), b.to_string()))
    );
    assert_eq!(ov["Name"], "fixov");
    assert_eq!(ov["Scope"], "global");
    assert_eq!(ov["VNI"], 7267345);
    assert_eq!(ov["MTU"], 1450);
    assert_eq!(
        members(ov),
        [("fixc1".to_string(), "10.232.0.2/24".to_string())]
    );

    let c1 = &d.vs_json(&["inspect", "fixc1"])[0];
    assert_eq!(
        c1["Id"],
        "ca00e313e8d3ed8875fae1d8e89dd0ef716df415e37ffe61e336698a5de00c93"
    );
    assert_eq!(c1["NetNs"], "/run/netns/vsfix89781c1");
    let br1 = &c1["Networks"]["fixbr"];
    assert_eq!(
        br1["EndpointID"],
        "3eb96dcf08727f312b97cb4a88d6c73791f2684627fc7452089809078bc757c1"
    );
    assert_eq!(br1["MacAddress"], "02:42:0a:e7:00:0a");
    assert_eq!(br1["IPAddress"], "10.231.0.10");
    assert_eq!(br1["Aliases"], json!(["web"]));
    let ov1 = &c1["Networks"]["fixov"];
    assert_eq!(
        ov1["EndpointID"],
        "e49335b50d2ac5e52468a80a0b52e395510d1cb300a03285cbcf1d6d4a5b0811"
    );
    assert_eq!(ov1["IPAddress"], "10.232.0.2");
    assert_eq!(
        c1["Ports"],
        json!({
            "443/tcp": [{"HostIp": "::1", "HostPort": "8443"}],
            "53/udp": [{"HostIp": "127.0.0.1", "HostPort": "5353"}],
            "80/tcp": [
                {"HostIp": "0.0.0.0", "HostPort": "8080"},
                {"HostIp": "::", "HostPort": "8080"},
                {"HostIp": "0.0.0.0", "HostPort": "33891"},
                {"HostIp": "::", "HostPort": "33891"}
            ],
            "90/udp": [
                {"HostIp": "0.0.0.0", "HostPort": "9090"},
                {"HostIp": "::", "HostPort": "9090"}
            ]
        })
    );
    assert_eq!(d.vs(&["port", "fixc1"]), PORTS_OF_FIXC1);

    let c2 = &d.vs_json(&["inspect", "fixc2"])[0];
    assert_eq!(c2["Networks"]["fixbr"]["IPAddress"], "10.231.0.2");
    assert_eq!(c2["Ports"], json!({}));

    assert_ports_bound(d);
}

#[test]
fn state_of_main_89781ca_is_imported_whole() {
    require_root!();
    let _containers = ContainerNamespaces::new();
    let host = Netns::new("vsfd");
    let peer = Netns::new("vsfp");
    veth(&host, &format!("{HOST_ADDR}/24"), &peer, "192.0.2.202/24");
    let mut d = Daemon::new(&host);
    assert!(d.state().join("published/fixc1@fixbr.json").exists());
    assert!(d.state().join("cluster-peers.json").exists());

    let peers: Vec<UdpSocket> = PEERS.iter().map(|a| udp_in(&peer.name, a)).collect();
    d.start();
    assert!(
        !d.state().join("published").exists(),
        "published/ is still there after the import: {:?}",
        std::fs::read_dir(d.state().join("published"))
            .map(|r| r.map(|e| e.map(|e| e.file_name())).collect::<Vec<_>>())
    );
    assert!(
        !d.state().join("cluster-peers.json").exists(),
        "cluster-peers.json is still there after the import"
    );
    assert!(
        d.log().contains("imported"),
        "no import logged:\n{}",
        d.log()
    );
    assert_state_as_written(&d);
    assert_rejoins_peers(&d, &peers);
    drop(peers);

    // Again, from state.redb alone.
    d.stop();
    let peers: Vec<UdpSocket> = PEERS.iter().map(|a| udp_in(&peer.name, a)).collect();
    d.start();
    assert_state_as_written(&d);
    assert_rejoins_peers(&d, &peers);
    d.stop();
}
