//! A real `dockerd` (Debian's docker.io 20.10) for one test "host": a
//! network namespace the test made.
//!
//! Each [`DockerHost`] has a directory of its own (data-root, exec-root,
//! socket, log) and runs in a private mount namespace, held open by an
//! "anchor" process (`unshare -m --propagation private ... sleep`), where
//! per-test directories are bind-mounted over the two paths dockerd and
//! containerd hard-code:
//!
//! - `/run/docker/plugins`, the only place dockerd looks for plugin
//!   sockets and spec files: a socket put in [`DockerHost::plugin_dir`]
//!   is seen by this dockerd and by no other;
//! - `/run/containerd`, where containerd's shims put their sockets
//!   (`/run/containerd/s/...`), so a killed shim leaves nothing behind.
//!
//! dockerd enters the mount namespace and the test's network namespace
//! with `nsenter` (not `ip netns exec`, which remounts `/sys` and hides
//! the cgroup mounts dockerd needs) and starts its own containerd under
//! its exec-root. Because the anchor outlives dockerd, a restarted dockerd
//! (`--live-restore`) finds the sandbox namespaces of running containers
//! again: dockerd bind-mounts each one at `EXEC_ROOT/netns/ID` (the
//! `SandboxKey` of `docker inspect`), which is a mount in this private
//! namespace only; seen from the test it is an empty file. Use
//! [`DockerHost::netns_of`] (the container's `/proc/PID/ns/net`) from the
//! outside, or [`DockerHost::command_in_ns`] to run a program (a network
//! plugin, say) in dockerd's own mount and network namespaces.
//!
//! Nothing leaves the machine: the namespace has no route out, containers
//! get `--dns 127.0.0.1` unless the test passes `--dns`, and images come
//! from [`BUSYBOX`], imported from the machine's static busybox; never
//! `docker pull`.
//!
//! Drop the `DockerHost` before the namespace and before a network plugin
//! it uses (declare it after them): its `Drop` removes every container
//! through dockerd, stops dockerd (SIGTERM, then SIGKILL), kills its
//! containerd, shims and containers, removes their cgroups and the
//! directory.
#![allow(dead_code)]

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use super::{
    alive, cmd, ok, output_within, ppid, remove_cgroup, spawn_logged, stderr, stdout, tail, unique,
};

/// The Docker client of the installed engine (`/usr/local/bin/docker` is
/// a newer client).
pub const DOCKER: &str = "/usr/bin/docker";
pub const DOCKERD: &str = "/usr/sbin/dockerd";
/// The busybox image every `DockerHost` has from its start.
pub const BUSYBOX: &str = "vswitch-busybox:test";
/// The statically linked busybox of Debian's `busybox-static`.
const BUSYBOX_BIN: &str = "/bin/busybox";

/// How long dockerd may take to answer `_ping` after it is started.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long dockerd may take to exit after SIGTERM before SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(20);
/// How long one `docker` client command may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);
/// How long `docker rm -f` of every container may take in `Drop`.
const CLEANUP_TIMEOUT: Duration = Duration::from_secs(30);

/// A dockerd of its own in a network namespace of the test.
#[derive(Debug)]
pub struct DockerHost {
    /// The unique name of this host (its directory, its cgroup parent).
    pub name: String,
    /// The network namespace dockerd runs in (`/run/netns/NAME`).
    pub netns: PathBuf,
    /// Everything of this dockerd: data-root, exec-root, socket, log.
    pub dir: PathBuf,
    /// dockerd's API socket.
    pub socket: PathBuf,
    plugin_dir: PathBuf,
    /// Holds the private mount namespace open across dockerd restarts.
    anchor: Option<Child>,
    /// `mnt:[INODE]` of that mount namespace.
    mount_ns: String,
    daemon: Option<Child>,
    extra_args: Vec<String>,
}

impl DockerHost {
    /// Starts dockerd in the network namespace `netns` (a name under
    /// `/run/netns` or a path) and imports [`BUSYBOX`].
    ///
    /// `plugin_dir` is what dockerd sees as `/run/docker/plugins` (a
    /// directory of the test's, e.g. where its plugin socket will be);
    /// `None` makes an empty one in the host's directory (see
    /// [`DockerHost::plugin_dir`]). `extra` are more dockerd flags (e.g.
    /// `--live-restore`, `--dns IP`), kept for restarts.
    pub fn start(netns: &str, plugin_dir: Option<&Path>, extra: &[&str]) -> DockerHost {
        let netns = netns_path(netns);
        assert!(
            netns.exists(),
            "network namespace {} does not exist",
            netns.display()
        );
        let name = unique("dk");
        let dir = std::env::temp_dir().join(format!("vstest-{name}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let plugin_dir = plugin_dir.map_or_else(|| dir.join("plugins"), Path::to_path_buf);
        std::fs::create_dir_all(&plugin_dir).unwrap();
        for d in ["containerd-run", "client"] {
            std::fs::create_dir_all(dir.join(d)).unwrap();
        }
        // What dockerd would otherwise write in /etc/docker (its identity
        // key) or read from there (daemon.json).
        let config = serde_json::json!({
            "deprecated-key-path": dir.join("key.json"),
        });
        std::fs::write(dir.join("daemon.json"), config.to_string()).unwrap();
        let mut h = DockerHost {
            socket: dir.join("docker.sock"),
            netns,
            name,
            dir,
            plugin_dir,
            anchor: None,
            mount_ns: String::new(),
            daemon: None,
            extra_args: extra.iter().map(|s| s.to_string()).collect(),
        };
        h.spawn_anchor();
        h.start_again();
        h.import_busybox();
        h
    }

    /// What this dockerd sees as `/run/docker/plugins`.
    pub fn plugin_dir(&self) -> &Path {
        &self.plugin_dir
    }

    /// `unix://SOCKET`, for `docker -H`.
    pub fn host(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    /// dockerd's log so far (and the anchor's errors).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join("dockerd.log")
    }

    /// The process id of dockerd.
    pub fn pid(&self) -> u32 {
        self.daemon.as_ref().expect("dockerd running").id()
    }

    /// The process id of dockerd's own containerd.
    pub fn containerd_pid(&self) -> Option<i32> {
        std::fs::read_to_string(self.dir.join("exec/containerd/containerd.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// dockerd's mount namespace (`/proc/PID/ns/mnt` of the anchor), for
    /// `nsenter --mount=`.
    pub fn mount_ns_path(&self) -> PathBuf {
        let anchor = self.anchor.as_ref().expect("anchor running");
        PathBuf::from(format!("/proc/{}/ns/mnt", anchor.id()))
    }

    /// A command running `program` in dockerd's mount namespace (where the
    /// `SandboxKey`s of its containers are mounted and `/run/docker/plugins`
    /// is [`DockerHost::plugin_dir`]) and its network namespace.
    pub fn command_in_ns(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--mount={}", self.mount_ns_path().display()))
            .arg(format!("--net={}", self.netns.display()))
            .arg("--")
            .arg(program)
            .stdin(Stdio::null());
        c
    }

    /// `docker -H unix://SOCKET args...` (never panics; gives up after
    /// two minutes).
    pub fn docker(&self, args: &[&str]) -> Output {
        self.docker_within(args, COMMAND_TIMEOUT)
    }

    /// `docker -H unix://SOCKET args...`, killed after `within`.
    pub fn docker_within(&self, args: &[&str], within: Duration) -> Output {
        output_within(self.client(args), None, within)
    }

    /// Like [`DockerHost::docker`], returning stdout and panicking with
    /// stderr and the tail of dockerd's log on failure.
    pub fn docker_ok(&self, args: &[&str]) -> String {
        let out = self.docker(args);
        self.check(args, &out);
        stdout(&out)
    }

    fn check(&self, args: &[&str], out: &Output) {
        assert!(
            out.status.success(),
            "docker {args:?} failed: {}\nstdout: {}\nstderr: {}\ndockerd log (tail):\n{}",
            out.status,
            stdout(out),
            stderr(out),
            tail(&self.log(), 40)
        );
    }

    fn client(&self, args: &[&str]) -> Command {
        let mut c = Command::new(DOCKER);
        c.env("DOCKER_CONFIG", self.dir.join("client"))
            .env_remove("DOCKER_HOST")
            .env_remove("DOCKER_CONTEXT")
            .env_remove("DOCKER_TLS_VERIFY")
            .env_remove("DOCKER_CERT_PATH")
            .arg("-H")
            .arg(self.host())
            .args(args);
        c
    }

    /// `docker run -d --pull never --name NAME ARGS... IMAGE CMD...` with a
    /// unique name made from `prefix`; returns the name. `args` may name
    /// `--network`; the image is [`BUSYBOX`].
    pub fn run(&self, prefix: &str, args: &[&str], command: &[&str]) -> String {
        let name = unique(prefix);
        let mut full = vec!["run", "-d", "--pull", "never", "--name", &name];
        full.extend_from_slice(args);
        full.push(BUSYBOX);
        full.extend_from_slice(command);
        self.docker_ok(&full);
        name
    }

    /// The process id of a running container's first process.
    pub fn pid_of(&self, container: &str) -> u32 {
        let pid = self.docker_ok(&["inspect", "-f", "{{.State.Pid}}", container]);
        match pid.trim().parse() {
            Ok(p) if p > 0 => p,
            _ => panic!("container {container} is not running (pid {pid:?})"),
        }
    }

    /// The network namespace of a running container as the test sees it:
    /// `/proc/PID/ns/net`, for `nsenter --net=`.
    pub fn netns_of(&self, container: &str) -> String {
        format!("/proc/{}/ns/net", self.pid_of(container))
    }

    /// `nsenter --net=<container's namespace> argv...` from the test (with
    /// the test's binaries, not the container's).
    pub fn exec_in_netns_of(&self, container: &str, argv: &[&str]) -> Output {
        let net = format!("--net={}", self.netns_of(container));
        let mut full = vec!["nsenter", &net, "--"];
        full.extend_from_slice(argv);
        cmd(&full)
    }

    /// The `SandboxKey` dockerd reports (a path valid only inside its
    /// mount namespace; see the module's documentation).
    pub fn sandbox_key(&self, container: &str) -> String {
        self.docker_ok(&[
            "inspect",
            "-f",
            "{{.NetworkSettings.SandboxKey}}",
            container,
        ])
        .trim()
        .to_string()
    }

    /// Whether dockerd is running (it may have exited by itself).
    pub fn is_running(&mut self) -> bool {
        match self.daemon.as_mut() {
            Some(d) => d.try_wait().unwrap().is_none(),
            None => false,
        }
    }

    /// SIGTERM to dockerd and wait (SIGKILL after 20 s); returns its exit
    /// status. Its data-root stays; with `--live-restore` its containers
    /// keep running.
    pub fn stop(&mut self) -> Option<ExitStatus> {
        let mut d = self.daemon.take()?;
        terminate(&mut d, STOP_TIMEOUT)
    }

    /// SIGKILL to dockerd, as a crash would (its containerd lives on).
    pub fn kill9(&mut self) {
        if let Some(mut d) = self.daemon.take() {
            let _ = d.kill();
            let _ = d.wait();
        }
    }

    /// Stops dockerd and starts it again with the same flags and
    /// data-root.
    pub fn restart(&mut self) {
        self.stop();
        self.start_again();
    }

    /// Stops dockerd and starts it again with other extra flags.
    pub fn restart_with(&mut self, extra: &[&str]) {
        self.stop();
        self.extra_args = extra.iter().map(|s| s.to_string()).collect();
        self.start_again();
    }

    /// Starts dockerd (after [`DockerHost::stop`] or
    /// [`DockerHost::kill9`]) with the same data-root, in the same mount
    /// namespace, and waits until it answers.
    pub fn start_again(&mut self) {
        assert!(self.daemon.is_none(), "dockerd is already running");
        // containerd dies with a killed dockerd, and this machine's init
        // reaps orphans late: dockerd would take the zombie for a running
        // containerd and time out waiting for its socket.
        if self.containerd_pid().is_some_and(|pid| !alive(pid)) {
            let _ = std::fs::remove_file(self.dir.join("exec/containerd/containerd.pid"));
        }
        let d = &self.dir;
        let mut args: Vec<String> = vec![
            format!("--mount={}", self.mount_ns_path().display()),
            format!("--net={}", self.netns.display()),
            "--".into(),
            DOCKERD.into(),
            format!("--config-file={}", d.join("daemon.json").display()),
            format!("--data-root={}", d.join("data").display()),
            format!("--exec-root={}", d.join("exec").display()),
            format!("--pidfile={}", d.join("dockerd.pid").display()),
            format!("--host={}", self.host()),
            // The test's cgroups, so that cleanup finds them.
            format!("--cgroup-parent=/vstest-{}", self.name),
            "--iptables=false".into(),
            "--ip6tables=false".into(),
            "--bridge=none".into(),
            "--storage-driver=vfs".into(),
        ];
        let has = |flag: &str| {
            self.extra_args
                .iter()
                .any(|a| a == flag || a.starts_with(&format!("{flag}=")))
        };
        if !has("--dns") {
            // Never the real host's resolvers: the container's loopback.
            args.push("--dns=127.0.0.1".into());
        }
        if !has("--shutdown-timeout") {
            // busybox as PID 1 ignores SIGTERM: do not wait 15 s for it.
            args.push("--shutdown-timeout=2".into());
        }
        args.extend(self.extra_args.iter().cloned());
        let mut command = Command::new("nsenter");
        command.args(&args).stdin(Stdio::null());
        let log = self.log_path();
        let start = Instant::now();
        let daemon = self
            .daemon
            .insert(spawn_logged(&mut command, &log, "dockerd"));
        loop {
            if ping(&self.socket) {
                break;
            }
            if let Some(status) = daemon.try_wait().unwrap() {
                self.daemon = None;
                panic!(
                    "dockerd exited at start ({status}):\n{}",
                    tail(&std::fs::read_to_string(&log).unwrap_or_default(), 40)
                );
            }
            assert!(
                start.elapsed() < START_TIMEOUT,
                "dockerd did not answer {} within {START_TIMEOUT:?}:\n{}",
                self.socket.display(),
                tail(&std::fs::read_to_string(&log).unwrap_or_default(), 40)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `docker import` of [`BUSYBOX`] (done by [`DockerHost::start`]).
    pub fn import_busybox(&self) {
        let args = ["import", "--change", r#"CMD ["/bin/sh"]"#, "-", BUSYBOX];
        let out = output_within(self.client(&args), Some(busybox_tar()), COMMAND_TIMEOUT);
        self.check(&args, &out);
    }

    /// The private mount namespace, its bind mounts, and a process that
    /// keeps it while dockerd restarts.
    fn spawn_anchor(&mut self) {
        // The mount points must exist; they are Docker's usual directories
        // and stay (empty) on the machine.
        for p in ["/run/docker/plugins", "/run/containerd"] {
            std::fs::create_dir_all(p).unwrap_or_else(|e| panic!("creating {p}: {e}"));
        }
        // The namespace starts as a copy of the test's mounts, with the
        // namespaces of other tests under /run/netns: a copy would keep
        // such a namespace (and its interfaces) alive after its test
        // deletes it, so the anchor detaches them first.
        let script = "umount -l /run/netns 2>/dev/null; \
                      mount --bind \"$1\" /run/docker/plugins && \
                      mount --bind \"$2\" /run/containerd && \
                      echo ready && exec sleep infinity";
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .unwrap();
        let mut anchor = Command::new("unshare")
            .args([
                "-m",
                "--propagation",
                "private",
                "--",
                "sh",
                "-c",
                script,
                "sh",
            ])
            .arg(&self.plugin_dir)
            .arg(self.dir.join("containerd-run"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("starting unshare: {e}"));
        let mut line = String::new();
        let _ = BufReader::new(anchor.stdout.take().unwrap()).read_line(&mut line);
        if line.trim() != "ready" {
            let _ = anchor.kill();
            let _ = anchor.wait();
            panic!("could not make dockerd's mount namespace:\n{}", self.log());
        }
        self.mount_ns = std::fs::read_link(format!("/proc/{}/ns/mnt", anchor.id()))
            .unwrap()
            .display()
            .to_string();
        self.anchor = Some(anchor);
    }

    /// Kills what dockerd left running in its mount namespace (containerd,
    /// shims) and everything below them (containers), and waits for them.
    fn kill_leftovers(&self) {
        if self.mount_ns.is_empty() {
            return;
        }
        let pids = leftovers(&self.mount_ns);
        for &pid in &pids {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while pids.iter().any(|&p| alive(p)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Removes the cgroups of this dockerd's containers.
    fn remove_cgroups(&self) {
        let Ok(hierarchies) = std::fs::read_dir("/sys/fs/cgroup") else {
            return;
        };
        let parent = format!("vstest-{}", self.name);
        for h in hierarchies.flatten() {
            if !h.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            let top = h.path().join(&parent);
            if top.is_dir() {
                remove_cgroup(&top);
            }
        }
    }
}

impl Drop for DockerHost {
    fn drop(&mut self) {
        if self.is_running() {
            let ids = self.docker_within(&["ps", "-aq"], CLEANUP_TIMEOUT);
            let ids = stdout(&ids);
            let ids: Vec<&str> = ids.split_whitespace().collect();
            if !ids.is_empty() {
                let mut args = vec!["rm", "-f"];
                args.extend_from_slice(&ids);
                let _ = self.docker_within(&args, CLEANUP_TIMEOUT);
            }
        }
        self.stop();
        self.kill_leftovers();
        if let Some(mut a) = self.anchor.take() {
            // With it the mount namespace goes, and every mount in it.
            let _ = a.kill();
            let _ = a.wait();
        }
        self.remove_cgroups();
        if std::thread::panicking() {
            eprintln!(
                "--- dockerd log ({} in {}) ---\n{}",
                self.name,
                self.netns.display(),
                tail(&self.log(), 80)
            );
        }
        // A plugin directory of the test's own is outside `dir` and stays.
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `/run/netns/NAME` for a name, the path itself for a path.
fn netns_path(netns: &str) -> PathBuf {
    if netns.contains('/') {
        PathBuf::from(netns)
    } else {
        Path::new("/run/netns").join(netns)
    }
}

/// SIGTERM, then SIGKILL after `within`; waits for the exit.
fn terminate(child: &mut Child, within: Duration) -> Option<ExitStatus> {
    if let Some(s) = child.try_wait().unwrap() {
        // Reaped already: its pid may be another process's by now.
        return Some(s);
    }
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let deadline = Instant::now() + within;
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return Some(s);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            return child.wait().ok();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether dockerd answers `GET /_ping` on `socket`.
fn ping(socket: &Path) -> bool {
    let Ok(mut s) = UnixStream::connect(socket) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let _ = s.set_write_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    answer.starts_with("HTTP/1.") && answer.contains(" 200 ") && answer.ends_with("OK")
}

/// A tar of a root file system with the static busybox, its applets as
/// symbolic links in /bin, and a root user; made once per test process.
pub fn busybox_tar() -> &'static [u8] {
    static TAR: OnceLock<Vec<u8>> = OnceLock::new();
    TAR.get_or_init(|| {
        let bin = std::fs::read(BUSYBOX_BIN)
            .unwrap_or_else(|e| panic!("{BUSYBOX_BIN}: {e} (apt-get install busybox-static)"));
        // A dynamically linked busybox names its loader near the start.
        assert!(
            !bin[..bin.len().min(4096)]
                .windows(8)
                .any(|w| w == b"ld-linux"),
            "{BUSYBOX_BIN} is not statically linked (apt-get install busybox-static)"
        );
        let root = std::env::temp_dir().join(format!("vstest-{}-rootfs", unique("bb")));
        let _ = std::fs::remove_dir_all(&root);
        for d in ["bin", "etc", "root", "tmp", "proc", "sys", "dev"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(root.join("tmp"), std::fs::Permissions::from_mode(0o1777))
            .unwrap();
        std::fs::copy(BUSYBOX_BIN, root.join("bin/busybox")).unwrap();
        for applet in ok(&[BUSYBOX_BIN, "--list"]).lines() {
            let applet = applet.trim();
            if applet.is_empty() || applet == "busybox" || applet.contains('/') {
                continue;
            }
            std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).unwrap();
        }
        std::fs::write(
            root.join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n",
        )
        .unwrap();
        std::fs::write(root.join("etc/group"), "root:x:0:\nnogroup:x:65534:\n").unwrap();
        let out = cmd(&["tar", "-C", root.to_str().unwrap(), "-cf", "-", "."]);
        let _ = std::fs::remove_dir_all(&root);
        assert!(out.status.success(), "tar failed: {}", stderr(&out));
        out.stdout
    })
}

/// The processes of dockerd's kind (dockerd, containerd, shims, runc) in
/// the mount namespace `mount_ns`, and every process below them.
fn leftovers(mount_ns: &str) -> Vec<i32> {
    let me = std::process::id() as i32;
    let mut parent_of = HashMap::new();
    let mut found = HashSet::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    for e in entries.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        if pid == me {
            continue;
        }
        if let Some(ppid) = ppid(pid) {
            parent_of.insert(pid, ppid);
        }
        let in_ns = std::fs::read_link(format!("/proc/{pid}/ns/mnt"))
            .is_ok_and(|l| l.as_os_str() == mount_ns);
        let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap_or_default();
        let exe = exe.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let ours = ["dockerd", "containerd", "runc", "docker-"]
            .iter()
            .any(|p| exe.starts_with(p));
        if in_ns && ours {
            found.insert(pid);
        }
    }
    loop {
        let more: Vec<i32> = parent_of
            .iter()
            .filter(|(pid, ppid)| found.contains(*ppid) && !found.contains(*pid))
            .map(|(pid, _)| *pid)
            .collect();
        if more.is_empty() {
            break;
        }
        found.extend(more);
    }
    found.remove(&me);
    found.into_iter().collect()
}
