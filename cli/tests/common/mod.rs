//! Harness for end-to-end tests on real namespaces.
//!
//! A "host" is a network namespace running its own vswitchd (own state
//! directory and socket); containers are namespaces made by `vswitch run`.
//! Every name carries the test's process id and a counter, so tests run in
//! parallel; every guard cleans up in `Drop`, so a failing test leaves
//! nothing behind. Traffic goes only to addresses inside these namespaces.
#![allow(dead_code)]
pub mod capture;
pub mod docker;
pub mod podman;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// True when the test can build namespaces; otherwise it says it skipped.
pub fn root_or_skip(test: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    eprintln!("SKIPPED {test}: needs root (network namespaces and TAP devices)");
    false
}

/// Returns from the calling test, saying it skipped, unless it runs as
/// root; the message names the test by its function.
macro_rules! require_root {
    () => {{
        fn here() {}
        let test = $crate::common::enclosing_fn(std::any::type_name_of_val(&here));
        if !$crate::common::root_or_skip(test) {
            return;
        }
    }};
}
#[allow(unused_imports)]
pub(crate) use require_root;

/// The name of the function that holds the item whose type name is `path`
/// (`crate::test_name::here` gives `test_name`).
pub fn enclosing_fn(path: &str) -> &str {
    let holder = path.rsplit_once("::").map_or(path, |(holder, _)| holder);
    holder.rsplit("::").next().unwrap_or(holder)
}

/// A short unique name: `PREFIX` + pid + counter (fits a 15-byte ifname).
pub fn unique(prefix: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}{:x}{n:x}", std::process::id() & 0xfffff)
}

/// Runs a command, returning its output (never panics on failure).
pub fn cmd(argv: &[&str]) -> Output {
    Command::new(argv[0])
        .args(&argv[1..])
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {argv:?}: {e}"))
}

/// Runs a command and panics with its stderr unless it succeeds.
pub fn ok(argv: &[&str]) -> String {
    let out = cmd(argv);
    assert!(
        out.status.success(),
        "{argv:?} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `ip netns exec NS argv...`
pub fn ns_exec(ns: &str, argv: &[&str]) -> Output {
    let mut full = vec!["ip", "netns", "exec", ns];
    full.extend_from_slice(argv);
    cmd(&full)
}

/// A network namespace made by the test.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(prefix: &str) -> Netns {
        let name = unique(prefix);
        ok(&["ip", "netns", "add", &name]);
        ok(&["ip", "-n", &name, "link", "set", "lo", "up"]);
        Netns { name }
    }

    pub fn exec(&self, argv: &[&str]) -> Output {
        ns_exec(&self.name, argv)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = cmd(&["ip", "netns", "del", &self.name]);
    }
}

/// A veth pair between two namespaces, with addresses.
pub fn veth(a: &Netns, a_addr: &str, b: &Netns, b_addr: &str) {
    let (ia, ib) = (unique("va"), unique("vb"));
    ok(&[
        "ip", "link", "add", &ia, "netns", &a.name, "type", "veth", "peer", "name", &ib, "netns",
        &b.name,
    ]);
    ok(&["ip", "-n", &a.name, "addr", "add", a_addr, "dev", &ia]);
    ok(&["ip", "-n", &b.name, "addr", "add", b_addr, "dev", &ib]);
    ok(&["ip", "-n", &a.name, "link", "set", &ia, "up"]);
    ok(&["ip", "-n", &b.name, "link", "set", &ib, "up"]);
}

/// The client side of a running vswitchd: what every kind of test host
/// (root or rootless) answers the same way.
pub trait Vswitch {
    /// `vswitch args...` against this daemon.
    fn vs(&self, args: &[&str]) -> Output;

    /// The daemon's log so far.
    fn log(&self) -> String;

    /// Like [`Vswitch::vs`], panicking with stderr and the daemon log on
    /// failure.
    fn vs_ok(&self, args: &[&str]) -> String {
        let out = self.vs(args);
        assert!(
            out.status.success(),
            "vswitch {args:?} failed: {}\nstdout: {}\nstderr: {}\ndaemon log (tail):\n{}",
            out.status,
            stdout(&out),
            stderr(&out),
            tail(&self.log(), 40)
        );
        stdout(&out)
    }

    fn vs_json(&self, args: &[&str]) -> serde_json::Value {
        serde_json::from_str(&self.vs_ok(args)).expect("JSON output")
    }

    /// `vswitch network create FLAGS... NAME` with a unique name made from
    /// `prefix`; returns the name.
    fn network(&self, prefix: &str, flags: &[&str]) -> String {
        let name = unique(prefix);
        let mut args = vec!["network", "create"];
        args.extend_from_slice(flags);
        args.push(&name);
        self.vs_ok(&args);
        name
    }

    /// The IPv4 address of a container on a network.
    fn ip_of(&self, container: &str, network: &str) -> String {
        let v = self.vs_json(&["inspect", container]);
        v[0]["Networks"][network]["IPAddress"]
            .as_str()
            .unwrap_or_else(|| panic!("{container} has no IPv4 on {network}: {v}"))
            .to_string()
    }
}

/// Spawns `command` with stdout and stderr appended to the file `log`;
/// `what` names it if it cannot start.
pub fn spawn_logged(command: &mut Command, log: &Path, what: &str) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    command
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("starting {what}: {e:?}"))
}

/// Waits up to 20 s for a daemon (`what`) to accept connections on
/// `socket`, panicking with its log (the file `log`) if it exits first or
/// does not start in time. The caller holds the daemon, so a panic here
/// still stops it.
pub fn wait_started(daemon: &mut Child, socket: &Path, what: &str, log: &Path) {
    let log = || std::fs::read_to_string(log).unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if std::os::unix::net::UnixStream::connect(socket).is_ok() {
            return;
        }
        if let Some(status) = daemon.try_wait().unwrap() {
            panic!("{what} exited at start ({status}):\n{}", log());
        }
        assert!(
            Instant::now() < deadline,
            "{what} did not start:\n{}",
            log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A vswitchd in a namespace of its own.
pub struct Host {
    pub ns: Netns,
    pub dir: PathBuf,
    pub socket: PathBuf,
    daemon: Option<Child>,
    extra_args: Vec<String>,
    /// A mount namespace to run vswitchd in (a dockerd's, whose sandbox
    /// namespaces are mounted only there).
    mount_ns: Option<PathBuf>,
    /// Containers made through [`Host::run`], removed on drop.
    pub containers: Vec<String>,
}

pub fn bin(name: &str) -> PathBuf {
    match name {
        "vswitch" => PathBuf::from(env!("CARGO_BIN_EXE_vswitch")),
        "vswitchd" => PathBuf::from(env!("CARGO_BIN_EXE_vswitchd")),
        "vswitch-cni" => PathBuf::from(env!("CARGO_BIN_EXE_vswitch-cni")),
        _ => unreachable!(),
    }
}

impl Host {
    /// Starts a daemon; `extra` are more vswitchd flags (e.g. `--dns`).
    pub fn start(extra: &[&str]) -> Host {
        let ns = Netns::new("vsh");
        Host::start_in(ns, extra)
    }

    pub fn start_in(ns: Netns, extra: &[&str]) -> Host {
        Host::start_in_mount_ns(ns, None, extra)
    }

    /// [`Host::start_in`], with vswitchd in the mount namespace `mount_ns`
    /// (e.g. `/proc/PID/ns/mnt` of a dockerd).
    pub fn start_in_mount_ns(ns: Netns, mount_ns: Option<PathBuf>, extra: &[&str]) -> Host {
        let dir = std::env::temp_dir().join(format!("vstest-{}", ns.name));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut h = Host {
            socket: dir.join("vswitchd.sock"),
            dir,
            ns,
            daemon: None,
            extra_args: extra.iter().map(|s| s.to_string()).collect(),
            mount_ns,
            containers: Vec::new(),
        };
        h.spawn_daemon();
        h
    }

    fn spawn_daemon(&mut self) {
        let mut args: Vec<String> = vec![
            "netns".into(),
            "exec".into(),
            self.ns.name.clone(),
            bin("vswitchd").display().to_string(),
            "--state-dir".into(),
            self.dir.join("state").display().to_string(),
            "--socket".into(),
            self.socket.display().to_string(),
            "--node-name".into(),
            self.ns.name.clone(),
            "--log-level".into(),
            "debug".into(),
        ];
        if !self.extra_args.iter().any(|a| a == "--dns") {
            // Never the real host's resolvers: the namespace's own loopback.
            args.extend(["--dns".into(), "127.0.0.1".into()]);
        }
        args.extend(self.extra_args.iter().cloned());
        let mut command = match &self.mount_ns {
            None => Command::new("ip"),
            Some(mnt) => {
                // `ip netns exec` would make a mount namespace of its own.
                let mut c = Command::new("nsenter");
                c.arg(format!("--mount={}", mnt.display()))
                    .arg(format!("--net=/run/netns/{}", self.ns.name));
                args.drain(..3);
                c
            }
        };
        command.args(&args).stdin(Stdio::null());
        let log = self.dir.join("vswitchd.log");
        let daemon = self
            .daemon
            .insert(spawn_logged(&mut command, &log, "vswitchd"));
        wait_started(daemon, &self.socket, "vswitchd", &log);
    }

    pub fn pid(&self) -> u32 {
        self.daemon.as_ref().expect("daemon running").id()
    }

    /// SIGKILL, as a crash would.
    pub fn kill9(&mut self) {
        if let Some(mut d) = self.daemon.take() {
            let _ = d.kill();
            let _ = d.wait();
        }
    }

    /// SIGTERM and wait; returns the exit status.
    pub fn stop(&mut self) -> Option<std::process::ExitStatus> {
        let mut d = self.daemon.take()?;
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(d.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(s) = d.try_wait().unwrap() {
                return Some(s);
            }
            if Instant::now() > deadline {
                let _ = d.kill();
                return d.wait().ok();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn restart(&mut self) {
        self.kill9();
        self.spawn_daemon();
    }

    /// Starts the daemon again (after it stopped or was killed) with
    /// other extra flags.
    pub fn restart_with(&mut self, extra: &[&str]) {
        self.kill9();
        self.extra_args = extra.iter().map(|s| s.to_string()).collect();
        self.spawn_daemon();
    }

    /// Waits up to `within` for the daemon to exit by itself.
    pub fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Some(s) = self.daemon.as_mut()?.try_wait().unwrap() {
                self.daemon = None;
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// `vswitch run -d --name NAME --network NET extra... -- sleep 600`;
    /// returns the container name (also its namespace's name).
    pub fn run(&mut self, prefix: &str, network: &str, extra: &[&str]) -> String {
        let name = unique(prefix);
        self.containers.push(name.clone());
        self.vs_ok(&run_detached(&name, network, extra, &["sleep", "600"]));
        name
    }
}

/// The arguments of `vswitch run --rm --name NAME --network NET -- CMD...`
/// (in the foreground, removed when CMD ends).
pub fn run_rm<'a>(name: &'a str, network: &'a str, cmd: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["run", "--rm", "--name", name, "--network", network, "--"];
    args.extend_from_slice(cmd);
    args
}

/// The arguments of `vswitch run -d --name NAME --network NET EXTRA... --
/// CMD...`.
pub fn run_detached<'a>(
    name: &'a str,
    network: &'a str,
    extra: &[&'a str],
    cmd: &[&'a str],
) -> Vec<&'a str> {
    let mut args = vec!["run", "-d", "--name", name, "--network", network];
    args.extend_from_slice(extra);
    args.push("--");
    args.extend_from_slice(cmd);
    args
}

impl Vswitch for Host {
    /// `vswitch --host unix://SOCKET args...`
    fn vs(&self, args: &[&str]) -> Output {
        Command::new(bin("vswitch"))
            .arg("--host")
            .arg(format!("unix://{}", self.socket.display()))
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("running vswitch")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("vswitchd.log")).unwrap_or_default()
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        if self.daemon.is_some() {
            for c in &self.containers {
                let _ = self.vs(&["rm", c]);
            }
        }
        self.kill9();
        // Whatever `vswitch rm` could not remove (or a dead daemon left).
        for c in std::mem::take(&mut self.containers) {
            if Path::new("/run/netns").join(&c).exists() {
                // Its process too (`vswitch rm` stops it; a stopped daemon
                // could not), or it outlives the test.
                for pid in stdout(&cmd(&["ip", "netns", "pids", &c])).split_whitespace() {
                    if let Ok(pid) = pid.parse::<i32>() {
                        let _ = nix::sys::signal::kill(
                            nix::unistd::Pid::from_raw(pid),
                            nix::sys::signal::Signal::SIGKILL,
                        );
                    }
                }
                let _ = cmd(&["ip", "netns", "del", &c]);
            }
            let _ = std::fs::remove_dir_all(Path::new("/etc/netns").join(&c));
        }
        if std::thread::panicking() {
            eprintln!(
                "--- vswitchd log ({}) ---\n{}",
                self.ns.name,
                tail(&self.log(), 80)
            );
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Pings until one answer comes or `within` passes; returns the time taken.
pub fn ping_until(ns: &str, target: &str, within: Duration) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < within {
        let o = ns_exec(ns, &["ping", "-c", "1", "-W", "1", target]);
        if o.status.success() {
            return Some(start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

/// The underlay: a namespace with a Linux bridge; hosts plug in with veths.
pub struct Underlay {
    pub ns: Netns,
    pub bridge: String,
}

impl Underlay {
    pub fn new() -> Underlay {
        let ns = Netns::new("vsul");
        let bridge = "br0".to_string();
        ok(&[
            "ip", "-n", &ns.name, "link", "add", &bridge, "type", "bridge",
        ]);
        ok(&["ip", "-n", &ns.name, "link", "set", &bridge, "up"]);
        Underlay { ns, bridge }
    }

    /// A namespace plugged into the underlay with `addr` (CIDR).
    pub fn plug(&self, prefix: &str, addr: &str) -> Netns {
        let ns = Netns::new(prefix);
        let (a, b) = (unique("ua"), unique("ub"));
        ok(&[
            "ip",
            "link",
            "add",
            &a,
            "netns",
            &ns.name,
            "type",
            "veth",
            "peer",
            "name",
            &b,
            "netns",
            &self.ns.name,
        ]);
        ok(&["ip", "-n", &ns.name, "addr", "add", addr, "dev", &a]);
        ok(&["ip", "-n", &ns.name, "link", "set", &a, "up"]);
        ok(&[
            "ip",
            "-n",
            &self.ns.name,
            "link",
            "set",
            &b,
            "master",
            &self.bridge,
        ]);
        ok(&["ip", "-n", &self.ns.name, "link", "set", &b, "up"]);
        ns
    }

    /// Cuts (or restores) a host's link into the underlay bridge.
    pub fn set_link(&self, host_ns: &str, up: bool) {
        let dev = underlay_veth(host_ns);
        ok(&[
            "ip",
            "-n",
            host_ns,
            "link",
            "set",
            &dev,
            if up { "up" } else { "down" },
        ]);
    }
}

/// The name of the veth that plugs namespace `ns` into the underlay.
pub fn underlay_veth(ns: &str) -> String {
    let links = stdout(&cmd(&[
        "ip", "-n", ns, "-o", "link", "show", "type", "veth",
    ]));
    links
        .split(':')
        .nth(1)
        .map(|s| s.trim().split('@').next().unwrap().to_string())
        .expect("the namespace has a veth")
}

/// A foreign VTEP in `ns` (plugged into the underlay at `local`): a kernel
/// vxlan device `vx0` with VNI `vni`, MTU 1450, no learning, every unknown
/// destination sent to `remote`, and `addr` (CIDR) on it.
pub fn kernel_vtep(ns: &str, vni: u32, local: &str, remote: &str, addr: &str) {
    let vni = vni.to_string();
    #[rustfmt::skip]
    ok(&[
        "ip", "-n", ns, "link", "add", "vx0", "mtu", "1450", "type", "vxlan", "id", &vni,
        "local", local, "dstport", "4789", "nolearning",
    ]);
    #[rustfmt::skip]
    ok(&[
        "bridge", "-n", ns, "fdb", "append", "00:00:00:00:00:00", "dev", "vx0", "dst", remote,
    ]);
    ok(&["ip", "-n", ns, "addr", "add", addr, "dev", "vx0"]);
    ok(&["ip", "-n", ns, "link", "set", "vx0", "up"]);
}

pub fn wait_for(what: &str, within: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while start.elapsed() < within {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("timed out after {within:?} waiting for {what}");
}

pub fn alive_members(h: &impl Vswitch) -> usize {
    let out = h.vs(&["members", "--format", "json"]);
    if !out.status.success() {
        return 0;
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    v.as_array()
        .map(|a| a.iter().filter(|m| m["State"] == "alive").count())
        .unwrap_or(0)
}

pub fn resolves(ns: &str, server: &str, name: &str) -> Option<String> {
    let o = ns_exec(
        ns,
        &[
            "dig",
            &format!("@{server}"),
            "+short",
            "+time=1",
            "+tries=1",
            name,
        ],
    );
    // Only addresses count: dig prints its own errors on stdout too.
    stdout(&o)
        .lines()
        .map(str::trim)
        .find(|l| l.parse::<std::net::IpAddr>().is_ok())
        .map(str::to_string)
}

/// A background program in a namespace (run as root), killed on drop.
pub struct Bg(Child);

impl Bg {
    pub fn spawn<S: AsRef<std::ffi::OsStr>>(ns: &str, argv: &[S]) -> Bg {
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

/// The command of a TCP server answering every connection with the peer's
/// address.
pub fn peer_echo_tcp_argv(port: u16) -> Vec<String> {
    vec![
        "socat".into(),
        format!("TCP-LISTEN:{port},fork,reuseaddr"),
        "SYSTEM:echo peer=$SOCAT_PEERADDR".into(),
    ]
}

/// A TCP server in `ns` that answers every connection with the peer's
/// address.
pub fn peer_echo_tcp(ns: &str, port: u16) -> Bg {
    Bg::spawn(ns, &peer_echo_tcp_argv(port))
}

/// A UDP server in `ns` that answers every datagram with the peer's
/// address.
pub fn peer_echo_udp(ns: &str, port: u16) -> Bg {
    Bg::spawn(
        ns,
        &[
            "socat",
            &format!("UDP-RECVFROM:{port},fork"),
            "SYSTEM:echo peer=$SOCAT_PEERADDR",
        ],
    )
}

/// Runs `run` until it succeeds with non-empty output or `within` passes;
/// returns success and the last output (with its stderr on failure).
pub fn until_ok_with(within: Duration, mut run: impl FnMut() -> Output) -> (bool, String) {
    let start = Instant::now();
    loop {
        let o = run();
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

/// Runs `argv` in `ns` (as root) until it succeeds with non-empty output
/// or `within` passes; returns success and the last output.
pub fn until_ok(ns: &str, argv: &[&str], within: Duration) -> (bool, String) {
    until_ok_with(within, || ns_exec(ns, argv))
}

/// A file of the test (a cluster key, say), removed on drop.
pub struct TempFile(pub PathBuf);

impl TempFile {
    /// `contents` in a file of the temporary directory named after `tag`
    /// and the test's process.
    pub fn new(tag: &str, contents: &str) -> TempFile {
        let p = std::env::temp_dir().join(format!("{tag}-{}", std::process::id()));
        std::fs::write(&p, contents).unwrap();
        TempFile(p)
    }

    pub fn path(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The vswitchd flags of a cluster member at `ip` (gossip on port 7946)
/// with the cluster key in the file `key`.
pub fn cluster_args(key: &str, ip: &str) -> Vec<String> {
    [
        "--cluster-key-file",
        key,
        "--advertise-addr",
        ip,
        "--bind",
        &format!("{ip}:7946"),
    ]
    .map(str::to_string)
    .to_vec()
}

impl Host {
    /// A cluster member: a namespace named from `prefix` plugged into
    /// `ul` at `ip`/24, its daemon with the cluster key in `key` and
    /// `extra` flags.
    pub fn in_cluster(ul: &Underlay, prefix: &str, ip: &str, key: &Path, extra: &[&str]) -> Host {
        let ns = ul.plug(prefix, &format!("{ip}/24"));
        let mut args = cluster_args(key.to_str().unwrap(), ip);
        args.extend(extra.iter().map(|s| s.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Host::start_in(ns, &args)
    }
}

/// Two cluster members on `ul` at `ip1` and `ip2`, the second joined
/// through the first, once each sees both alive.
pub fn cluster_pair(ul: &Underlay, key: &Path, ip1: &str, ip2: &str) -> (Host, Host) {
    let h1 = Host::in_cluster(ul, "vsh", ip1, key, &[]);
    let h2 = Host::in_cluster(ul, "vsh", ip2, key, &[]);
    h2.vs_ok(&["join-cluster", ip1]);
    for h in [&h1, &h2] {
        wait_for("2 alive members", Duration::from_secs(15), || {
            alive_members(h) == 2
        });
    }
    (h1, h2)
}

/// An overlay made on `h1` with `subnet`, once `h2` has it too.
pub fn shared_overlay(h1: &Host, h2: &Host, subnet: &str) -> String {
    let net = h1.network("ov", &["--driver", "overlay", "--subnet", subnet]);
    wait_for("the overlay on h2", Duration::from_secs(10), || {
        h2.vs(&["network", "inspect", &net]).status.success()
    });
    net
}

/// Whether `h`'s view of `net` lists a container named `name` (on this
/// host or another).
pub fn has_container(h: &impl Vswitch, net: &str, name: &str) -> bool {
    h.vs_json(&["network", "inspect", net])[0]["Containers"]
        .as_object()
        .is_some_and(|c| c.values().any(|v| v["Name"] == name))
}

// Processes of the real daemons the tests run (dockerd, podman): shared by
// their harnesses.

/// The parent of `pid` (from `/proc/PID/stat`).
pub fn ppid(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "PID (COMM) STATE PPID ...", COMM may hold spaces and parentheses.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// Whether `pid` exists and is not a zombie (this machine's init reaps
/// orphans late).
pub fn alive(pid: i32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let state = stat
        .rfind(')')
        .and_then(|i| stat[i + 1..].split_whitespace().next());
    state != Some("Z")
}

/// Removes a cgroup directory and the ones below it (a few tries while
/// their last processes exit).
pub fn remove_cgroup(dir: &Path) {
    if let Ok(children) = std::fs::read_dir(dir) {
        for c in children.flatten() {
            if c.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroup(&c.path());
            }
        }
    }
    for _ in 0..50 {
        if std::fs::remove_dir(dir).is_ok() || !dir.exists() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs `command` with `input` on its stdin, killing it after `within`;
/// the output says so in its stderr. Output that a process it left
/// behind still writes is not waited for beyond the deadline.
pub fn output_within(
    mut command: Command,
    input: Option<&'static [u8]>,
    within: Duration,
) -> Output {
    command
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
    if let Some(bytes) = input {
        let mut stdin = child.stdin.take().unwrap();
        std::thread::spawn(move || {
            let _ = stdin.write_all(bytes);
        });
    }
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let reader = |mut r: Box<dyn Read + Send>| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let (into, done) = (buf.clone(), done_tx.clone());
        std::thread::spawn(move || {
            let mut chunk = [0u8; 8192];
            while let Ok(n @ 1..) = r.read(&mut chunk) {
                into.lock().unwrap().extend_from_slice(&chunk[..n]);
            }
            let _ = done.send(());
        });
        buf
    };
    let out = reader(Box::new(child.stdout.take().unwrap()));
    let err = reader(Box::new(child.stderr.take().unwrap()));
    let deadline = Instant::now() + within;
    let mut timed_out = false;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            timed_out = true;
            let _ = child.kill();
            break child.wait().unwrap();
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    // Both pipes at their end, or a few seconds more (should a process
    // the command left behind hold them).
    let grace = Instant::now() + Duration::from_secs(5);
    for _ in 0..2 {
        let left = grace.saturating_duration_since(Instant::now());
        if done_rx.recv_timeout(left).is_err() {
            break;
        }
    }
    let stdout = out.lock().unwrap().clone();
    let mut stderr = err.lock().unwrap().clone();
    if timed_out {
        stderr.extend_from_slice(format!("\n(killed after {within:?})").as_bytes());
    }
    Output {
        status,
        stdout,
        stderr,
    }
}

/// A TCP connection from `ns` to `ip:port` that gets the server's line
/// (the echo servers of [`peer_echo_tcp`] answer with the peer's
/// address), within 2 s: (connected and answered, what was read).
pub fn tcp_exchange(ns: &str, ip: &str, port: u16) -> (bool, String) {
    let o = ns_exec(
        ns,
        &tcp_exchange_argv(ip, port)
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
    let out = stdout(&o);
    (o.status.success() && !out.trim().is_empty(), out)
}

/// [`tcp_exchange`] retried for up to 10 s (a container's first ARP for
/// its gateway, or for a remote endpoint, may take a moment).
pub fn tcp_exchange_within(ns: &str, ip: &str, port: u16) -> (bool, String) {
    let argv = tcp_exchange_argv(ip, port);
    until_ok_with(Duration::from_secs(10), || {
        ns_exec(ns, &argv.iter().map(String::as_str).collect::<Vec<_>>())
    })
}

fn tcp_exchange_argv(ip: &str, port: u16) -> Vec<String> {
    vec![
        "socat".into(),
        "-T2".into(),
        "-".into(),
        format!("TCP:{ip}:{port},connect-timeout=2"),
    ]
}
