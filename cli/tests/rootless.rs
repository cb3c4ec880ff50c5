//! End-to-end tests of rootless mode: `vswitchd --rootless` and `vswitch`
//! run as an ordinary user that each test creates (and removes), in a
//! "host" namespace of the test; containers are namespaces inside the
//! daemon's user namespace. Peers are real programs (ping, getent, dig,
//! socat) in containers, in a "client" namespace and in a "world" namespace
//! joined to the host by veths. Traffic stays inside namespaces the tests
//! make.
//!
//! The tests run as root only to set the stage: create the user, the
//! namespaces and veths, `chmod 0666 /dev/net/tun` (the mode distributions
//! ship it with; some machines have 0600, and it is left at 0666) and
//! `net.ipv4.ping_group_range` in the host namespace (per namespace).

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// How long a test waits for something that should happen at once.
const PATIENCE: Duration = Duration::from_secs(15);

/// The TUN device at mode 0666, as distributions ship it. Idempotent, safe
/// in parallel, and left that way: rootless vswitchd needs it.
fn tun_usable_by_everyone() {
    let tun = Path::new("/dev/net/tun");
    let mode = std::fs::metadata(tun)
        .expect("/dev/net/tun")
        .permissions()
        .mode();
    if mode & 0o666 != 0o666 {
        std::fs::set_permissions(tun, std::fs::Permissions::from_mode(0o666))
            .expect("chmod 0666 /dev/net/tun");
    }
}

/// An ordinary user made for one test, with a private directory. Dropping
/// it kills every process the user still runs (they all come from the
/// test: the user is new), removes the user and the directory.
struct TestUser {
    name: String,
    uid: u32,
    gid: u32,
    dir: PathBuf,
    /// vswitchd and vswitch where the user may run them.
    bin: PathBuf,
}

impl TestUser {
    fn new() -> TestUser {
        let name = unique("vswrl");
        // useradd takes a lock on /etc/passwd; parallel tests may collide.
        let mut last = None;
        for _ in 0..50 {
            let o = cmd(&[
                "useradd",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                "--user-group",
                &name,
            ]);
            if o.status.success() {
                last = None;
                break;
            }
            last = Some(stderr(&o));
            std::thread::sleep(Duration::from_millis(100));
        }
        assert!(last.is_none(), "useradd {name}: {last:?}");
        let id =
            |flag: &str| -> u32 { ok(&["id", flag, &name]).trim().parse().expect("numeric id") };
        let dir = std::env::temp_dir().join(format!("vsrl-{name}"));
        let mut user = TestUser {
            uid: id("-u"),
            gid: id("-g"),
            name,
            bin: dir.join("bin"),
            dir,
        };
        let _ = std::fs::remove_dir_all(&user.dir);
        user.mkdir(&user.dir.clone());
        user.bin = user.binaries();
        user
    }

    /// A directory owned by the user, mode 0700.
    fn mkdir(&self, dir: &Path) {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        nix::unistd::chown(
            dir,
            Some(nix::unistd::Uid::from_raw(self.uid)),
            Some(nix::unistd::Gid::from_raw(self.gid)),
        )
        .unwrap();
    }

    /// Where the user can run the binaries from: where cargo built them if
    /// the user may read that directory, a copy in the user's directory if
    /// not (a checkout under /root, say).
    fn binaries(&self) -> PathBuf {
        let built = bin("vswitchd");
        let built_dir = built.parent().unwrap().to_path_buf();
        let o = self
            .command(None, &["test", "-x", built.to_str().unwrap()])
            .output()
            .unwrap();
        if o.status.success() {
            return built_dir;
        }
        let copy = self.dir.join("bin");
        std::fs::create_dir_all(&copy).unwrap();
        for b in ["vswitchd", "vswitch"] {
            std::fs::copy(bin(b), copy.join(b)).unwrap();
        }
        std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755)).unwrap();
        copy
    }

    fn bin(&self, name: &str) -> String {
        self.bin.join(name).display().to_string()
    }

    /// `argv` as the user (uid, gid, no supplementary groups), in network
    /// namespace `ns` if given; the caller adds the environment.
    fn command(&self, ns: Option<&str>, argv: &[&str]) -> Command {
        let mut c = match ns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, "setpriv"]);
                c
            }
            None => Command::new("setpriv"),
        };
        c.arg(format!("--reuid={}", self.uid))
            .arg(format!("--regid={}", self.gid))
            .arg("--clear-groups")
            .arg("--")
            .args(argv)
            .env("HOME", &self.dir)
            .env_remove("XDG_DATA_HOME")
            .env_remove("XDG_RUNTIME_DIR")
            .env_remove("VSWITCH_HOST")
            .stdin(Stdio::null());
        c
    }

    /// Pids of every live process of the user (zombies are left to their
    /// parent: they hold nothing and cannot be killed).
    fn processes(&self) -> Vec<i32> {
        let mut pids = Vec::new();
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return pids;
        };
        for e in entries.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
                continue;
            };
            let Ok(status) = std::fs::read_to_string(e.path().join("status")) else {
                continue;
            };
            let real_uid = status
                .lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse::<u32>().ok());
            let zombie = status
                .lines()
                .find_map(|l| l.strip_prefix("State:"))
                .is_some_and(|v| v.trim_start().starts_with('Z'));
            if real_uid == Some(self.uid) && !zombie {
                pids.push(pid);
            }
        }
        pids
    }
}

impl Drop for TestUser {
    fn drop(&mut self) {
        // Every process of this user was started by this test.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let pids = self.processes();
            if pids.is_empty() || Instant::now() > deadline {
                break;
            }
            for pid in pids {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        for _ in 0..50 {
            if cmd(&["userdel", &self.name]).status.success() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `vswitchd --rootless` run by a [`TestUser`] in a host namespace of its
/// own, with its own `XDG_RUNTIME_DIR` and `HOME` (so the defaults place the
/// socket, the runtime directory and the state). Containers made through
/// [`RootlessHost::run`] are removed on drop; the user's drop ends the rest
/// (the pause process, commands).
struct RootlessHost<'u> {
    user: &'u TestUser,
    ns: Netns,
    /// `XDG_RUNTIME_DIR` and `HOME` live here.
    dir: PathBuf,
    daemon: Option<Child>,
    extra: Vec<String>,
    containers: Vec<String>,
}

impl<'u> RootlessHost<'u> {
    fn start(user: &'u TestUser, ns: Netns, extra: &[&str]) -> RootlessHost<'u> {
        let dir = user.dir.join(&ns.name);
        user.mkdir(&dir);
        user.mkdir(&dir.join("xdg"));
        let mut h = RootlessHost {
            user,
            ns,
            dir,
            daemon: None,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            containers: Vec::new(),
        };
        h.spawn_daemon();
        h
    }

    fn runtime_dir(&self) -> PathBuf {
        self.dir.join("xdg/vswitch")
    }

    fn socket(&self) -> PathBuf {
        self.runtime_dir().join("vswitchd.sock")
    }

    /// A command as the user in the host namespace, with this host's
    /// environment.
    fn as_user(&self, argv: &[&str]) -> Command {
        let mut c = self.user.command(Some(&self.ns.name), argv);
        c.env("HOME", &self.dir)
            .env("XDG_RUNTIME_DIR", self.dir.join("xdg"));
        c
    }

    fn spawn_daemon(&mut self) {
        let vswitchd = self.user.bin("vswitchd");
        let mut argv = vec![
            vswitchd.as_str(),
            "--rootless",
            "--node-name",
            &self.ns.name,
            "--log-level",
            "debug",
            // Never the real host's resolvers.
            "--dns",
            "127.0.0.1",
        ];
        argv.extend(self.extra.iter().map(String::as_str));
        let (log, socket) = (self.dir.join("vswitchd.log"), self.socket());
        let mut command = self.as_user(&argv);
        let daemon = self
            .daemon
            .insert(spawn_logged(&mut command, &log, "vswitchd --rootless"));
        wait_started(daemon, &socket, "vswitchd --rootless", &log);
    }

    fn daemon_pid(&self) -> u32 {
        self.daemon.as_ref().expect("daemon running").id()
    }

    /// SIGKILL, as a crash would.
    fn kill9(&mut self) {
        if let Some(mut d) = self.daemon.take() {
            let _ = d.kill();
            let _ = d.wait();
        }
    }

    fn restart(&mut self) {
        self.kill9();
        self.spawn_daemon();
    }

    /// The pid in the pause process's pid file.
    fn pause_pid(&self) -> u32 {
        std::fs::read_to_string(self.runtime_dir().join("pause.pid"))
            .expect("pause.pid")
            .trim()
            .parse()
            .expect("a pid")
    }

    /// `vswitch run -d --name NAME --network NET extra... -- cmd...`.
    fn run_cmd<S: AsRef<str>>(
        &mut self,
        prefix: &str,
        network: &str,
        extra: &[&str],
        cmd: &[S],
    ) -> String {
        let name = unique(prefix);
        let cmd: Vec<&str> = cmd.iter().map(AsRef::as_ref).collect();
        self.containers.push(name.clone());
        self.vs_ok(&run_detached(&name, network, extra, &cmd));
        name
    }

    /// A container that sleeps.
    fn run(&mut self, prefix: &str, network: &str) -> String {
        self.run_cmd(prefix, network, &[], &["sleep", "600"])
    }

    fn pid_of(&self, container: &str) -> u32 {
        let v = self.vs_json(&["inspect", container]);
        v[0]["Pid"]
            .as_u64()
            .unwrap_or_else(|| panic!("{container} has no process: {v}")) as u32
    }

    /// `argv` inside a container, as the user: `nsenter` into the user,
    /// mount and network namespaces of the container's process (so the
    /// container's resolv.conf applies), keeping the user's credentials
    /// (uid 0 of the user namespace).
    fn exec_in(&self, container: &str, argv: &[&str]) -> Output {
        let pid = self.pid_of(container).to_string();
        let mut full = vec![
            "nsenter",
            "--preserve-credentials",
            "-t",
            &pid,
            "-U",
            "-m",
            "-n",
            "--",
        ];
        full.extend_from_slice(argv);
        self.user.command(None, &full).output().expect("nsenter")
    }

    /// Runs `argv` in the container until it succeeds with non-empty
    /// output or [`PATIENCE`] passes; returns success and the last output.
    fn until_ok_in(&self, container: &str, argv: &[&str]) -> (bool, String) {
        until_ok_with(PATIENCE, || self.exec_in(container, argv))
    }
}

impl Vswitch for RootlessHost<'_> {
    /// `vswitch args...` as the user, finding the daemon by the default
    /// socket of `$XDG_RUNTIME_DIR`.
    fn vs(&self, args: &[&str]) -> Output {
        let vswitch = self.user.bin("vswitch");
        let mut argv = vec![vswitch.as_str()];
        argv.extend_from_slice(args);
        self.as_user(&argv).output().expect("running vswitch")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("vswitchd.log")).unwrap_or_default()
    }
}

impl Drop for RootlessHost<'_> {
    fn drop(&mut self) {
        if self.daemon.is_some() {
            for c in &self.containers {
                let _ = self.vs(&["rm", c]);
            }
        }
        self.kill9();
        if std::thread::panicking() {
            eprintln!(
                "--- vswitchd --rootless log ({}) ---\n{}",
                self.ns.name,
                tail(&self.log(), 80)
            );
        }
    }
}

/// The inode of process `pid`'s namespace of kind `kind`: equal inodes, the
/// same namespace.
fn ns_inode(pid: u32, kind: &str) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(format!("/proc/{pid}/ns/{kind}"))
        .map(|m| m.ino())
        .unwrap_or_else(|e| panic!("/proc/{pid}/ns/{kind}: {e}"))
}

/// A host namespace with a rootless daemon, a client namespace
/// (192.0.2.2, host 192.0.2.1) and a world namespace (198.51.100.2, host
/// 198.51.100.1), ping sockets allowed for the user's group in the host.
struct Stage<'u> {
    host: RootlessHost<'u>,
    client: Netns,
    world: Netns,
}

fn stage(user: &TestUser) -> Stage<'_> {
    tun_usable_by_everyone();
    let ns = Netns::new("vsrh");
    let client = Netns::new("vsrc");
    let world = Netns::new("vsrw");
    veth(&ns, "192.0.2.1/24", &client, "192.0.2.2/24");
    veth(&ns, "198.51.100.1/24", &world, "198.51.100.2/24");
    // ICMP egress uses ping sockets: the user's group must be allowed.
    ok(&[
        "ip",
        "netns",
        "exec",
        &ns.name,
        "sysctl",
        "-qw",
        &format!("net.ipv4.ping_group_range={0} {0}", user.gid),
    ]);
    // Metrics on the host namespace's loopback, a port above 1023.
    let host = RootlessHost::start(user, ns, &["--metrics-addr", "127.0.0.1:9469"]);
    Stage {
        host,
        client,
        world,
    }
}

#[test]
fn rootless_containers_switch_resolve_publish_and_reach_the_world() {
    require_root!();
    let user = TestUser::new();
    let Stage {
        host: mut h,
        client,
        world,
    } = stage(&user);

    // The daemon runs as the user, in a user namespace of its own, and in
    // the host's network namespace.
    let daemon = h.daemon_pid();
    let status = std::fs::read_to_string(format!("/proc/{daemon}/status")).unwrap();
    assert!(
        status
            .lines()
            .any(|l| l.starts_with("Uid:")
                && l.split_whitespace().nth(1) == Some(&user.uid.to_string())),
        "{status}"
    );
    assert_ne!(
        ns_inode(daemon, "user"),
        ns_inode(std::process::id(), "user")
    );
    let pause = h.pause_pid();
    assert_eq!(ns_inode(daemon, "user"), ns_inode(pause, "user"));
    assert_eq!(ns_inode(daemon, "mnt"), ns_inode(pause, "mnt"));

    let net = h.network("rn", &["--subnet", "10.241.0.0/24"]);
    let a = h.run("a", &net);
    let b = h.run("b", &net);
    let b_ip = h.ip_of(&b, &net);

    // Each container is a network namespace owned by the daemon's user
    // namespace; its process runs there as uid 0, which is the user.
    let a_pid = h.pid_of(&a);
    assert_eq!(ns_inode(a_pid, "user"), ns_inode(pause, "user"));
    assert_ne!(ns_inode(a_pid, "net"), ns_inode(daemon, "net"));

    // Switching between containers.
    let o = h.exec_in(&a, &["ping", "-c", "2", "-W", "2", &b_ip]);
    assert!(o.status.success(), "a -> b: {}{}", stdout(&o), stderr(&o));
    // The user's daemon serves /metrics, with the ping counted at a's port.
    let m = stdout(&ns_exec(
        &h.ns.name,
        &["curl", "-sS", "-m", "10", "http://127.0.0.1:9469/metrics"],
    ));
    let rx = m
        .lines()
        .find(|l| {
            l.starts_with("vswitch_port_rx_packets_total{")
                && l.contains(&format!("container=\"{a}\""))
        })
        .and_then(|l| l.rsplit_once(' ')?.1.parse::<u64>().ok());
    assert!(rx.is_some_and(|n| n >= 2), "{m}");
    // Names, through the embedded DNS of the container's resolv.conf.
    let (ok_dns, out) = h.until_ok_in(&a, &["getent", "hosts", &b]);
    assert!(ok_dns, "a resolves b: {out}");
    assert!(out.contains(&b_ip), "{out}");
    let o = h.exec_in(&a, &["ping", "-c", "1", "-W", "2", &b]);
    assert!(o.status.success(), "ping b by name: {}", stderr(&o));

    // A foreground `vswitch run --rm` as the user: made, run, removed.
    let probe = unique("p");
    let out = h.vs_ok(&run_rm(&probe, &net, &["getent", "hosts", &a]));
    assert!(out.contains(&h.ip_of(&a, &net)), "{out}");
    assert!(!h.vs(&["inspect", &probe]).status.success());
    assert!(!h.runtime_dir().join("netns").join(&probe).exists());

    // A published port above 1023 reaches a server in a container, which
    // sees the real client's address.
    let srv = h.run_cmd("s", &net, &["-p", "8080:80"], &peer_echo_tcp_argv(80));
    let (ok_pub, out) = until_ok(
        &client.name,
        &["socat", "-T3", "-", "TCP:192.0.2.1:8080,connect-timeout=3"],
        PATIENCE,
    );
    assert!(ok_pub, "published port: {out}\n{}", tail(&h.log(), 30));
    assert!(out.contains("peer=192.0.2.2"), "{out}");
    let ports = h.vs_ok(&["port", &srv]);
    assert!(ports.contains("80/tcp -> 0.0.0.0:8080"), "{ports}");
    // `vswitch doctor` as the user: raw-socket probes from inside its
    // containers (namespaces its user namespace owns), and the published
    // port reached from the host.
    for args in [[a.as_str(), b.as_str()], [srv.as_str(), "host:8080"]] {
        let d = h.vs(&["doctor", args[0], args[1]]);
        assert!(
            d.status.success(),
            "doctor {args:?}: {}{}",
            stdout(&d),
            stderr(&d)
        );
        assert!(
            stdout(&d).ends_with("Every check passed.\n"),
            "{}",
            stdout(&d)
        );
    }

    // A privileged port is refused with the reason, and nothing is left.
    let bad = unique("bad");
    let o = h.vs(&run_detached(
        &bad,
        &net,
        &["-p", "80:80"],
        &["sleep", "600"],
    ));
    assert!(!o.status.success(), "-p 80:80 was accepted");
    let err = stderr(&o);
    assert!(
        err.contains("privileged port") && err.contains("above 1023"),
        "{err}"
    );
    assert!(!h.vs(&["inspect", &bad]).status.success());
    assert!(!h.runtime_dir().join("netns").join(&bad).exists());

    // Egress to the world through the daemon's ordinary sockets: TCP and
    // ICMP echo (ping sockets).
    let _world_srv = peer_echo_tcp(&world.name, 8080);
    let (ok_egress, out) = h.until_ok_in(
        &a,
        &[
            "socat",
            "-T3",
            "-",
            "TCP:198.51.100.2:8080,connect-timeout=3",
        ],
    );
    assert!(ok_egress, "egress TCP: {out}\n{}", tail(&h.log(), 30));
    assert!(out.contains("peer=198.51.100.1"), "{out}");
    let o = h.exec_in(&a, &["ping", "-c", "2", "-W", "2", "198.51.100.2"]);
    assert!(o.status.success(), "egress ping: {}", stdout(&o));

    // Policies as the user: a second network is reached only once a policy
    // allows it (routed by the gateways), and an egress rule keeps one
    // world address out.
    let other = h.network("ro", &["--subnet", "10.241.1.0/24"]);
    let c = h.run("c", &other);
    let c_ip = h.ip_of(&c, &other);
    let o = h.exec_in(&a, &["ping", "-c", "1", "-W", "1", &c_ip]);
    assert!(!o.status.success(), "crossed without a policy");
    h.vs_ok(&["policy", "allow", "--from", &net, "--to", &other]);
    let o = h.exec_in(&a, &["ping", "-c", "2", "-W", "2", &c_ip]);
    assert!(
        o.status.success(),
        "a -> c through the policy: {}",
        stdout(&o)
    );
    h.vs_ok(&["policy", "egress", &net, "deny", "198.51.100.2/32"]);
    let o = h.exec_in(
        &a,
        &[
            "socat",
            "-T2",
            "-",
            "TCP:198.51.100.2:8080,connect-timeout=2",
        ],
    );
    assert!(
        !o.status.success() || stdout(&o).trim().is_empty(),
        "egress denied, yet a reached the world: {}",
        stdout(&o)
    );

    // `vswitch rm` as the user ends the process and removes the namespace.
    h.vs_ok(&["rm", &b]);
    assert!(!h.runtime_dir().join("netns").join(&b).exists());
    h.containers.retain(|c| *c != b);

    // `run -d` as the user: `ps -a` shows its exit code, `logs` its
    // output, kept in the user's own state directory and owned by the user.
    let job = h.run_cmd(
        "j",
        &net,
        &[],
        &["sh", "-c", "echo rootless-marker; exit 3"],
    );
    let mut entry = serde_json::Value::Null;
    wait_for("the rootless job to exit", PATIENCE, || {
        let all = h.vs_json(&["ps", "-a", "--format", "json"]);
        entry = all
            .as_array()
            .and_then(|a| a.iter().find(|c| c["Name"] == job.as_str()).cloned())
            .unwrap_or_default();
        entry["State"] == "exited"
    });
    assert_eq!(entry["ExitCode"], 3, "{entry}");
    assert_eq!(h.vs_ok(&["logs", &job]), "rootless-marker\n");
    let log = h
        .dir
        .join(".local/share/vswitch/containers")
        .join(entry["Id"].as_str().unwrap())
        .join("output.log");
    use std::os::unix::fs::MetadataExt;
    assert_eq!(std::fs::metadata(&log).unwrap().uid(), user.uid);
    // Its namespace goes right after it exited.
    let ns = h.runtime_dir().join("netns").join(&job);
    wait_for("the exited job's namespace to go", PATIENCE, || {
        !ns.exists()
    });
}

#[test]
fn rootless_daemon_killed_and_restarted_keeps_its_containers() {
    require_root!();
    let user = TestUser::new();
    let Stage {
        host: mut h,
        client,
        world: _world,
    } = stage(&user);
    let net = h.network("rn", &["--subnet", "10.242.0.0/24"]);
    let a = h.run("a", &net);
    let srv = h.run_cmd("s", &net, &["-p", "8081:80"], &peer_echo_tcp_argv(80));
    let srv_ip = h.ip_of(&srv, &net);
    let o = h.exec_in(&a, &["ping", "-c", "1", "-W", "2", &srv_ip]);
    assert!(o.status.success(), "before the crash: {}", stdout(&o));
    let pause = h.pause_pid();

    h.restart();

    // The same pause process: the same user namespace and sandboxes.
    assert_eq!(h.pause_pid(), pause);
    assert_eq!(ns_inode(h.daemon_pid(), "user"), ns_inode(pause, "user"));
    assert!(h.log().contains("started=false"), "{}", tail(&h.log(), 20));
    let start = Instant::now();
    let mut reached = false;
    while start.elapsed() < PATIENCE {
        if h.exec_in(&a, &["ping", "-c", "1", "-W", "1", &srv_ip])
            .status
            .success()
        {
            reached = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(reached, "after the restart\n{}", tail(&h.log(), 40));
    let (ok_pub, out) = until_ok(
        &client.name,
        &["socat", "-T3", "-", "TCP:192.0.2.1:8081,connect-timeout=3"],
        PATIENCE,
    );
    assert!(ok_pub, "published port after the restart: {out}");
    assert!(out.contains("peer=192.0.2.2"), "{out}");
    // And new containers still come.
    let c = h.run("c", &net);
    let (ok_dns, out) = h.until_ok_in(&c, &["getent", "hosts", &a]);
    assert!(ok_dns && out.contains(&h.ip_of(&a, &net)), "{out}");
}

#[test]
fn two_rootless_daemons_build_an_overlay() {
    require_root!();
    tun_usable_by_everyone();
    let user = TestUser::new();
    let key = user.dir.join("cluster.key");
    std::fs::write(&key, "rootless overlay test key").unwrap();
    nix::unistd::chown(
        &key,
        Some(nix::unistd::Uid::from_raw(user.uid)),
        Some(nix::unistd::Gid::from_raw(user.gid)),
    )
    .unwrap();
    let key = key.display().to_string();
    let ul = Underlay::new();
    // Two daemons of one user: each its own runtime directory, pause
    // process and user namespace.
    let host = |ip: &str| {
        let args = cluster_args(&key, ip);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        RootlessHost::start(&user, ul.plug("vsrh", &format!("{ip}/24")), &args)
    };
    let mut h1 = host("192.0.2.21");
    let mut h2 = host("192.0.2.22");
    assert_ne!(h1.pause_pid(), h2.pause_pid());
    h2.vs_ok(&["join-cluster", "192.0.2.21"]);
    for h in [&h1, &h2] {
        wait_for("2 alive members", PATIENCE, || alive_members(h) == 2);
    }
    let net = h1.network("ro", &["--driver", "overlay", "--subnet", "10.243.0.0/24"]);
    wait_for("the overlay on h2", PATIENCE, || {
        h2.vs(&["network", "inspect", &net]).status.success()
    });
    let a = h1.run("a", &net);
    let b = h2.run("b", &net);
    let b_ip = h2.ip_of(&b, &net);
    wait_for("b's endpoint on h1", PATIENCE, || {
        has_container(&h1, &net, &b)
    });
    let (reached, out) = {
        let start = Instant::now();
        loop {
            let o = h1.exec_in(&a, &["ping", "-c", "1", "-W", "1", &b_ip]);
            if o.status.success() || start.elapsed() > PATIENCE {
                break (o.status.success(), stdout(&o));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    assert!(
        reached,
        "a (h1) -> b (h2) over the overlay: {out}\nh1:\n{}\nh2:\n{}",
        tail(&h1.log(), 30),
        tail(&h2.log(), 30)
    );
    // Names across hosts.
    let (ok_dns, out) = h1.until_ok_in(&a, &["getent", "hosts", &b]);
    assert!(ok_dns && out.contains(&b_ip), "{out}");
}
