//! Real namespaces, real TAP devices, real `ping`: the OS side of vswitch.
//!
//! Root only (each test prints a notice and passes when not root). Every
//! namespace is named with the process id and removed by a Drop guard, even
//! when a test fails; TAP devices live inside those namespaces and vanish
//! with them. Traffic stays between namespaces the tests made, through a
//! small userspace wire that copies frames between two TAPs.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ipnet::IpNet;
use switch::tap::Tap;
use switch::MacAddr;
use vswitch_cli::netns::{self, IfaceConfig, NetnsError};
use vswitch_cli::sandbox::{self, SandboxError};

fn is_root() -> bool {
    nix::unistd::Uid::effective().is_root()
}

macro_rules! require_root {
    () => {
        if !is_root() {
            eprintln!("skipping: this test needs root (network namespaces and TAP devices)");
            return;
        }
    };
}

/// A namespace made with `sandbox::create_netns`, deleted on drop.
struct Ns {
    name: String,
    path: PathBuf,
}

impl Ns {
    fn new(tag: &str) -> Ns {
        let name = format!("vswt-{}-{tag}", std::process::id());
        let path = sandbox::create_netns(&name).expect("create_netns");
        Ns { name, path }
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        if let Err(e) = sandbox::delete_netns(&self.name) {
            eprintln!("cleanup of {}: {e}", self.name);
        }
    }
}

/// Copies frames both ways between two TAPs on a thread, for at most
/// `WIRE_LIMIT`, until stopped.
struct Wire {
    stop: Arc<AtomicBool>,
    frames: Arc<AtomicU64>,
    thread: Option<JoinHandle<(Tap, Tap)>>,
}

const WIRE_LIMIT: Duration = Duration::from_secs(30);

impl Wire {
    fn new(a: Tap, b: Tap) -> Wire {
        let stop = Arc::new(AtomicBool::new(false));
        let frames = Arc::new(AtomicU64::new(0));
        let (stop2, frames2) = (stop.clone(), frames.clone());
        let thread = std::thread::spawn(move || {
            let deadline = Instant::now() + WIRE_LIMIT;
            let mut buf = vec![0u8; 65536];
            while !stop2.load(Ordering::Relaxed) && Instant::now() < deadline {
                let mut moved = false;
                for (from, to) in [(&a, &b), (&b, &a)] {
                    // A bounded batch per side per round.
                    for _ in 0..64 {
                        match from.read(&mut buf) {
                            Ok(n) => {
                                moved = true;
                                if to.write(&buf[..n]).is_ok() {
                                    frames2.fetch_add(1, Ordering::Relaxed);
                                }
                            }
                            Err(_) => break,
                        }
                    }
                }
                if !moved {
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
            (a, b)
        });
        Wire {
            stop,
            frames,
            thread: Some(thread),
        }
    }

    fn frames(&self) -> u64 {
        self.frames.load(Ordering::Relaxed)
    }

    /// Stop copying and hand the TAPs back.
    fn into_taps(mut self) -> (Tap, Tap) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().expect("wire thread")
    }
}

impl Drop for Wire {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A /24 and a /64 for this test process: the namespaces are private, but
/// keep addresses distinct per process anyway.
fn v4(host: u8) -> Ipv4Addr {
    let pid = std::process::id();
    Ipv4Addr::new(10, 213, (pid % 251) as u8, host)
}

fn v6(host: u16) -> Ipv6Addr {
    let pid = std::process::id();
    Ipv6Addr::new(0xfd00, 0x7673, 0x7774, (pid % 65521) as u16, 0, 0, 0, host)
}

fn iface(name: &str, host: u8) -> IfaceConfig {
    IfaceConfig {
        name: name.to_string(),
        mac: MacAddr([0x02, 0x42, 0x0a, 0xd5, 0x00, host]),
        mtu: 1400,
        addrs: vec![
            IpNet::new(IpAddr::V4(v4(host)), 24).unwrap(),
            IpNet::new(IpAddr::V6(v6(u16::from(host))), 64).unwrap(),
        ],
        gateway4: Some(v4(1)),
        gateway6: Some(v6(1)),
    }
}

fn run_in(ns: &Ns, argv: &[&str]) -> Output {
    let argv: Vec<String> = argv.iter().map(|s| s.to_string()).collect();
    sandbox::command_in_netns(&ns.name, &argv)
        .expect("command_in_netns")
        .output()
        .expect("spawn in namespace")
}

fn stdout_in(ns: &Ns, argv: &[&str]) -> String {
    let out = run_in(ns, argv);
    assert!(
        out.status.success(),
        "{argv:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn ping(ns: &Ns, dst: IpAddr, count: u32) -> bool {
    let count = count.to_string();
    let dst = dst.to_string();
    run_in(ns, &["ping", "-c", &count, "-W", "1", "-i", "0.2", &dst])
        .status
        .success()
}

/// `ip -n NS ARGS...` from the host, as a person would check.
fn ip(ns: &Ns, args: &[&str]) -> Output {
    Command::new("ip")
        .arg("-n")
        .arg(&ns.name)
        .args(args)
        .output()
        .expect("run ip")
}

fn ip_stdout(ns: &Ns, args: &[&str]) -> String {
    let out = ip(ns, args);
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn link_exists(ns: &Ns, name: &str) -> bool {
    ip_stdout(ns, &["-o", "link", "show"]).lines().any(|l| {
        l.split(':')
            .nth(1)
            .map(|n| n.trim().split('@').next() == Some(name))
            == Some(true)
    })
}

#[test]
fn taps_in_two_namespaces_carry_ping_and_survive_a_reopen() {
    require_root!();
    let a = Ns::new("a");
    let b = Ns::new("b");
    let cfg_a = iface("eth0", 2);
    let cfg_b = iface("eth0", 3);
    let tap_a = netns::attach_tap(&a.path, &cfg_a).unwrap();
    let tap_b = netns::attach_tap(&b.path, &cfg_b).unwrap();
    assert_eq!(tap_a.name(), "eth0");

    // The configuration, seen from inside (a fresh /sys for the namespace)
    // and from outside (`ip -n`).
    assert_eq!(
        stdout_in(&a, &["cat", "/sys/class/net/eth0/address"]).trim(),
        cfg_a.mac.to_string()
    );
    assert_eq!(
        stdout_in(&a, &["cat", "/sys/class/net/eth0/mtu"]).trim(),
        "1400"
    );
    assert_eq!(
        stdout_in(&a, &["cat", "/proc/sys/net/ipv6/conf/eth0/accept_dad"]).trim(),
        "0"
    );
    let addrs = ip_stdout(&a, &["-o", "addr", "show", "dev", "eth0"]);
    assert!(addrs.contains(&format!("{}/24", v4(2))), "{addrs}");
    assert!(addrs.contains(&format!("{}/64", v6(2))), "{addrs}");
    assert!(!addrs.contains("tentative"), "DAD should be off: {addrs}");
    let routes4 = ip_stdout(&a, &["-4", "route", "show", "default"]);
    assert!(
        routes4.contains(&format!("default via {} dev eth0", v4(1))),
        "{routes4}"
    );
    let routes6 = ip_stdout(&a, &["-6", "route", "show", "default"]);
    assert!(
        routes6.contains(&format!("default via {} dev eth0", v6(1))),
        "{routes6}"
    );
    assert!(
        ip_stdout(&a, &["link", "show", "lo"]).contains("UP"),
        "lo must be up"
    );

    // Nothing connects the two TAPs yet: no answer.
    assert!(
        !ping(&a, IpAddr::V4(v4(3)), 1),
        "ping must fail without the wire"
    );

    // With frames copied between the TAPs: IPv4 and IPv6 work at once.
    let wire = Wire::new(tap_a, tap_b);
    assert!(
        ping(&a, IpAddr::V4(v4(3)), 2),
        "IPv4 ping a -> b through the TAPs"
    );
    assert!(
        ping(&b, IpAddr::V6(v6(2)), 2),
        "IPv6 ping b -> a through the TAPs"
    );
    assert!(wire.frames() >= 8, "frames crossed: {}", wire.frames());
    let (tap_a, tap_b) = wire.into_taps();

    // The next free name after eth0.
    assert_eq!(netns::next_ifname(&a.path).unwrap(), "eth1");

    // Persistence: close b's descriptor, the device stays; reopen it and
    // traffic flows again with the configuration it kept.
    drop(tap_b);
    assert!(
        link_exists(&b, "eth0"),
        "a persistent TAP outlives its descriptor"
    );
    let tap_b = when_released(|| netns::reopen_tap(&b.path, "eth0"));
    let wire = Wire::new(tap_a, tap_b);
    assert!(ping(&a, IpAddr::V4(v4(3)), 2), "ping after reopen");
    let (tap_a, tap_b) = wire.into_taps();

    // While a descriptor holds it, nobody else can take the TAP.
    let busy = netns::reopen_tap(&b.path, "eth0").unwrap_err();
    assert!(matches!(busy, NetnsError::TapBusy { .. }), "{busy}");

    // remove_tap deletes the device, and a second remove is fine.
    drop(tap_b);
    netns::remove_tap(&b.path, "eth0").unwrap();
    assert!(
        !link_exists(&b, "eth0"),
        "{}",
        ip_stdout(&b, &["-o", "link"])
    );
    netns::remove_tap(&b.path, "eth0").unwrap();
    let gone = netns::reopen_tap(&b.path, "eth0").unwrap_err();
    assert!(matches!(gone, NetnsError::NoSuchTap { .. }), "{gone}");
    assert!(gone.to_string().contains("no interface eth0"), "{gone}");

    // Removing while the daemon still holds the descriptor works too.
    netns::remove_tap(&a.path, "eth0").unwrap();
    assert!(!link_exists(&a, "eth0"));
    drop(tap_a);
}

/// Attaches (`f`) a TAP right after its last descriptor was dropped. A
/// process forked at that moment by a test running in parallel holds a copy
/// of every descriptor until it execs (close-on-exec acts only then), and
/// the kernel keeps the TAP attached meanwhile: retry for a bounded time.
fn when_released(f: impl Fn() -> Result<Tap, NetnsError>) -> Tap {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        match f() {
            Err(NetnsError::TapBusy { .. }) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            other => return other.unwrap(),
        }
    }
}

#[test]
fn attach_again_reapplies_the_configuration() {
    require_root!();
    let ns = Ns::new("re");
    let first = iface("eth0", 2);
    let tap = netns::attach_tap(&ns.path, &first).unwrap();

    // Another endpoint name is free; a held TAP cannot be attached twice.
    assert_eq!(netns::next_ifname(&ns.path).unwrap(), "eth1");
    let busy = netns::attach_tap(&ns.path, &first).unwrap_err();
    assert!(matches!(busy, NetnsError::TapBusy { .. }), "{busy}");
    drop(tap);

    // Daemon restart with a changed endpoint: new MAC, MTU and IPv4 address,
    // no gateways. The old address and default routes must go.
    let mut second = iface("eth0", 7);
    second.addrs.retain(|a| a.addr().is_ipv4());
    second.mtu = 1500;
    second.gateway4 = None;
    second.gateway6 = None;
    let tap = when_released(|| netns::attach_tap(&ns.path, &second));
    let addrs = ip_stdout(&ns, &["-o", "addr", "show", "dev", "eth0"]);
    assert!(addrs.contains(&format!("{}/24", v4(7))), "{addrs}");
    assert!(
        !addrs.contains(&format!("inet {}/", v4(2))),
        "stale IPv4 address kept: {addrs}"
    );
    assert!(
        !addrs.contains(&format!("inet6 {}/", v6(2))),
        "stale IPv6 address kept: {addrs}"
    );
    assert!(
        addrs.contains("fe80::"),
        "the link-local address stays: {addrs}"
    );
    assert_eq!(
        ip_stdout(&ns, &["-4", "route", "show", "default"]).trim(),
        ""
    );
    assert_eq!(
        ip_stdout(&ns, &["-6", "route", "show", "default"]).trim(),
        ""
    );
    let link = ip_stdout(&ns, &["link", "show", "eth0"]);
    assert!(link.contains("mtu 1500"), "{link}");
    assert!(link.contains(&second.mac.to_string()), "{link}");

    // Same configuration again: a no-op that succeeds, address listed once.
    drop(tap);
    let tap = when_released(|| netns::attach_tap(&ns.path, &second));
    let addrs = ip_stdout(&ns, &["-o", "-4", "addr", "show", "dev", "eth0"]);
    assert_eq!(addrs.lines().count(), 1, "{addrs}");

    // A second endpoint in the same namespace takes the default route.
    let mut eth1 = iface("eth1", 9);
    eth1.addrs = vec!["10.214.1.9/24".parse().unwrap()];
    eth1.gateway4 = Some(Ipv4Addr::new(10, 214, 1, 1));
    eth1.gateway6 = None;
    let tap1 = netns::attach_tap(&ns.path, &eth1).unwrap();
    let default4 = ip_stdout(&ns, &["-4", "route", "show", "default"]);
    assert!(default4.contains("via 10.214.1.1 dev eth1"), "{default4}");
    assert_eq!(netns::next_ifname(&ns.path).unwrap(), "eth2");

    // host_routes, run inside the namespace, sees both subnets and no default.
    let routes = netns::in_netns(&ns.path, netns::host_routes).unwrap();
    let want4: IpNet = IpNet::new(IpAddr::V4(v4(0)), 24).unwrap();
    assert!(routes.contains(&want4), "{routes:?}");
    assert!(
        routes.contains(&"10.214.1.0/24".parse().unwrap()),
        "{routes:?}"
    );
    assert!(routes.iter().all(|r| r.prefix_len() > 0), "{routes:?}");
    drop((tap, tap1));
}

#[test]
fn bad_configuration_leaves_no_device_behind() {
    require_root!();
    let ns = Ns::new("bad");
    // A gateway outside every subnet of the interface is unreachable.
    let mut cfg = iface("eth0", 2);
    cfg.gateway4 = Some(Ipv4Addr::new(192, 0, 2, 1));
    let err = netns::attach_tap(&ns.path, &cfg).unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, NetnsError::Netlink { .. }), "{text}");
    assert!(
        text.contains("default route via 192.0.2.1 on eth0"),
        "{text}"
    );
    assert!(
        !link_exists(&ns, "eth0"),
        "half-configured TAP must be removed"
    );

    // An interface of that name that is not a TAP.
    let err = netns::attach_tap(
        &ns.path,
        &IfaceConfig {
            name: "lo".into(),
            ..iface("lo", 2)
        },
    )
    .unwrap_err();
    assert!(matches!(err, NetnsError::NotATap { .. }), "{err}");
}

#[test]
fn sandbox_works_with_ip_netns_and_gets_its_own_resolv_conf() {
    require_root!();
    let ns = Ns::new("sb");
    assert_eq!(ns.path, sandbox::netns_path(&ns.name));

    // Creating it twice is an error that says what to do.
    let err = sandbox::create_netns(&ns.name).unwrap_err();
    assert!(matches!(err, SandboxError::AlreadyExists { .. }), "{err}");
    assert!(err.to_string().contains("ip netns delete"), "{err}");

    // iproute2 sees and enters it.
    let list = Command::new("ip").args(["netns", "list"]).output().unwrap();
    assert!(String::from_utf8_lossy(&list.stdout).contains(&ns.name));
    let exec = Command::new("ip")
        .args(["netns", "exec", &ns.name, "ip", "-o", "link"])
        .output()
        .unwrap();
    assert!(
        exec.status.success(),
        "{}",
        String::from_utf8_lossy(&exec.stderr)
    );
    let links = String::from_utf8(exec.stdout).unwrap();
    assert_eq!(
        links.lines().count(),
        1,
        "a fresh namespace has only lo: {links}"
    );

    // The command runs in the namespace: it sees only its lo, and the
    // namespace's own /sys.
    let links = stdout_in(&ns, &["ip", "-o", "link"]);
    assert_eq!(links.lines().count(), 1, "{links}");
    assert!(!links.contains("UP"), "lo starts down: {links}");
    assert!(!ping(&ns, IpAddr::V4(Ipv4Addr::LOCALHOST), 1));
    sandbox::loopback_up(&ns.name).unwrap();
    assert!(stdout_in(&ns, &["ip", "-o", "link"]).contains("UP"));
    assert!(
        ping(&ns, IpAddr::V4(Ipv4Addr::LOCALHOST), 1),
        "loopback answers once up"
    );
    let sys = stdout_in(&ns, &["ls", "/sys/class/net"]);
    assert_eq!(sys.split_whitespace().collect::<Vec<_>>(), ["lo"], "{sys}");

    // resolv.conf through /etc/netns/NAME.
    let servers = [IpAddr::V4(v4(1)), IpAddr::V6(v6(1))];
    sandbox::write_resolv_conf(&ns.name, &servers).unwrap();
    let resolv = stdout_in(&ns, &["cat", "/etc/resolv.conf"]);
    assert!(
        resolv.contains(&format!("nameserver {}\n", v4(1))),
        "{resolv}"
    );
    assert!(
        resolv.contains(&format!("nameserver {}\n", v6(1))),
        "{resolv}"
    );
    assert!(resolv.contains("options ndots:0"), "{resolv}");
    // The host's own file is untouched.
    let host = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    assert!(!host.contains(&v4(1).to_string()), "{host}");

    // Exit status and arguments pass through.
    let out = run_in(&ns, &["sh", "-c", "exit 7"]);
    assert_eq!(out.status.code(), Some(7));

    // Delete: the mount, the file and /etc/netns/NAME are gone.
    let name = ns.name.clone();
    let path = ns.path.clone();
    drop(ns);
    assert!(!path.exists(), "{} still exists", path.display());
    assert!(!Path::new("/etc/netns").join(&name).exists());
    let err = sandbox::delete_netns(&name).unwrap_err();
    assert!(matches!(err, SandboxError::NotFound { .. }), "{err}");
    let err = sandbox::command_in_netns(&name, &["true".to_string()]).unwrap_err();
    assert!(matches!(err, SandboxError::NotFound { .. }), "{err}");
    let err = sandbox::loopback_up(&name).unwrap_err();
    assert!(matches!(err, SandboxError::NotFound { .. }), "{err}");
}

#[test]
fn missing_namespace_errors_are_actionable() {
    require_root!();
    let path = sandbox::netns_path(&format!("vswt-{}-missing", std::process::id()));
    let err = netns::attach_tap(&path, &iface("eth0", 2)).unwrap_err();
    assert!(matches!(err, NetnsError::NamespaceNotFound { .. }), "{err}");
    assert!(err.to_string().contains("ip netns add"), "{err}");
    assert!(netns::next_ifname(&path).is_err());
    netns::remove_tap(&path, "eth0").unwrap();
}
