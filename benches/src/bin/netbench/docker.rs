//! Docker scenarios: two containers of a real dockerd (Debian's docker.io)
//! on one network, Docker's own bridge driver against vswitch's Docker
//! plugin (`vswitchd --docker-plugin`), in the same run.
//!
//! dockerd runs in a namespace of its own (its "host") and in a private
//! mount namespace whose `/run/docker/plugins` and `/run/containerd` are
//! this run's, so it finds only this run's plugin and shares nothing with
//! another dockerd; `--iptables=false --bridge=none --storage-driver=vfs`.
//! The image is a busybox root file system imported with `docker import`
//! (never pulled). The containers' namespaces are attached under
//! `/run/netns` so the workloads run in them like in every other scenario.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::exec::{interrupted, on_path, Background, Shell};
use crate::scenario::{
    report_cleanup, Deployment, Endpoints, Env, Netns, Scenario, VswitchHost, A_IP, B_IP, MTU, STEP,
};
use crate::Error;

const DOCKERD: &str = "/usr/sbin/dockerd";
const DOCKER: &str = "/usr/bin/docker";
const BUSYBOX: &str = "/bin/busybox";
const IMAGE: &str = "netbench-busybox:local";
const SUBNET: &str = "10.247.0.0/24";

/// Two containers on a network of Docker's bridge driver (a Linux bridge
/// and veths, no iptables).
#[derive(Debug)]
pub struct DockerBridge;

/// Two containers on a vswitch network through the Docker plugin.
#[derive(Debug)]
pub struct DockerVswitch;

impl Scenario for DockerBridge {
    fn key(&self) -> &'static str {
        "docker-bridge"
    }
    fn title(&self) -> &'static str {
        "Docker bridge"
    }
    fn group(&self) -> &'static str {
        "docker"
    }
    fn is_baseline(&self) -> bool {
        true
    }
    fn description(&self) -> &'static str {
        "two busybox containers of a real dockerd on a network of Docker's bridge driver (Linux bridge, veths, MTU 1500, --iptables=false)"
    }
    fn setup(&self, env: &Env) -> Result<Box<dyn Deployment>, Error> {
        DockerDeployment::setup(env, false)
    }
}

impl Scenario for DockerVswitch {
    fn key(&self) -> &'static str {
        "docker-vswitch"
    }
    fn title(&self) -> &'static str {
        "vswitch plugin"
    }
    fn group(&self) -> &'static str {
        "docker"
    }
    fn is_baseline(&self) -> bool {
        false
    }
    fn description(&self) -> &'static str {
        "the same containers on a vswitch network through vswitchd --docker-plugin (docker network create -d vswitch --ipam-driver vswitch)"
    }
    fn setup(&self, env: &Env) -> Result<Box<dyn Deployment>, Error> {
        DockerDeployment::setup(env, true)
    }
}

/// dockerd with its mount namespace, and vswitchd when the plugin is used.
#[derive(Debug)]
struct DockerDeployment {
    ep: Endpoints,
    sh: Shell,
    dir: PathBuf,
    tag: String,
    socket: PathBuf,
    /// Holds the private mount namespace.
    anchor: Option<Background>,
    mount_ns: String,
    dockerd: Option<Background>,
    vswitch: Option<VswitchHost>,
    /// The containers, their namespaces attached under /run/netns.
    containers: Vec<String>,
    network: Option<String>,
    ns: Option<Netns>,
    torn_down: bool,
}

impl DockerDeployment {
    fn setup(env: &Env, plugin: bool) -> Result<Box<dyn Deployment>, Error> {
        for p in [DOCKERD, DOCKER, BUSYBOX] {
            if !Path::new(p).exists() {
                return Err(Error::Unavailable(format!(
                    "{p} is missing (apt-get install docker.io busybox-static)"
                )));
            }
        }
        if !on_path("unshare") || !on_path("nsenter") {
            return Err(Error::Unavailable(
                "unshare and nsenter (util-linux) are missing".into(),
            ));
        }
        if plugin {
            VswitchHost::check_binaries(env)?;
        }
        let which = if plugin { "dv" } else { "db" };
        let tag = format!("nb{}{which}", env.tag);
        let dir = env.sh.dir().join(format!("docker-{which}"));
        for d in ["plugins", "containerd", "rootfs/bin"] {
            std::fs::create_dir_all(dir.join(d)).map_err(|e| Error::Io {
                context: format!("creating {}", dir.join(d).display()),
                source: e,
            })?;
        }
        let ns = Netns::create(&env.sh, format!("{tag}h"))?;
        let mut d = DockerDeployment {
            ep: Endpoints::direct(format!("{tag}a"), format!("{tag}b"), B_IP, MTU),
            sh: env.sh.clone(),
            socket: dir.join("docker.sock"),
            dir,
            tag,
            anchor: None,
            mount_ns: String::new(),
            dockerd: None,
            vswitch: None,
            containers: Vec::new(),
            network: None,
            ns: Some(ns),
            torn_down: false,
        };
        // From here on, dropping `d` undoes whatever was done.
        d.start_dockerd()?;
        d.import_image()?;
        let net = d.tag.clone();
        if plugin {
            d.start_vswitchd(env)?;
            let opt = format!("vswitch.name={net}");
            d.docker(&[
                "network",
                "create",
                "-d",
                "vswitch",
                "--ipam-driver",
                "vswitch",
                "--subnet",
                SUBNET,
                "-o",
                &opt,
                &net,
            ])?;
        } else {
            d.docker(&[
                "network",
                "create",
                "-d",
                "bridge",
                "--subnet",
                SUBNET,
                "-o",
                &format!("com.docker.network.driver.mtu={MTU}"),
                &net,
            ])?;
        }
        d.network = Some(net.clone());
        let lifetime = (env.duration * 40 + 600).to_string();
        for (name, ip) in [(d.ep.a_ns.clone(), A_IP), (d.ep.b_ns.clone(), B_IP)] {
            d.docker(&[
                "run",
                "-d",
                "--name",
                &name,
                "--network",
                &net,
                "--ip",
                &ip.to_string(),
                IMAGE,
                "sleep",
                &lifetime,
            ])?;
            d.containers.push(name.clone());
            let pid = d.docker(&["inspect", "-f", "{{.State.Pid}}", &name])?;
            d.sh.ok(&["ip", "netns", "attach", &name, pid.trim()], STEP)?;
        }
        if let Some(w) = d.vswitch.as_ref().and_then(VswitchHost::watched) {
            d.ep.watched.push(w);
        }
        Ok(Box::new(d))
    }

    fn docker(&self, args: &[&str]) -> Result<String, Error> {
        let mut argv = vec![
            DOCKER.to_string(),
            "-H".into(),
            format!("unix://{}", self.socket.display()),
        ];
        argv.extend(args.iter().map(|s| s.to_string()));
        self.sh.ok(&argv, Duration::from_secs(120))
    }

    fn ns_name(&self) -> String {
        self.ns
            .as_ref()
            .map(|n| n.name().to_string())
            .unwrap_or_default()
    }

    fn start_dockerd(&mut self) -> Result<(), Error> {
        for p in ["/run/docker/plugins", "/run/containerd"] {
            std::fs::create_dir_all(p).map_err(|e| Error::Io {
                context: format!("creating {p}"),
                source: e,
            })?;
        }
        // Detach other namespaces' /run/netns mounts from the copy, then
        // this run's plugin and containerd directories.
        let script = "umount -l /run/netns 2>/dev/null; mount --bind \"$1\" /run/docker/plugins && mount --bind \"$2\" /run/containerd && echo ready && exec sleep infinity";
        let anchor = self.sh.spawn(
            &[
                "unshare",
                "-m",
                "--propagation",
                "private",
                "--",
                "sh",
                "-c",
                script,
                "sh",
                &self.dir.join("plugins").display().to_string(),
                &self.dir.join("containerd").display().to_string(),
            ],
            &format!("{}-mounts", self.tag),
        )?;
        let anchor = self.anchor.insert(anchor);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !anchor.log_text().contains("ready") {
            if anchor.exited().is_some() || Instant::now() > deadline {
                return Err(Error::Setup(format!(
                    "could not make dockerd's mount namespace: {}",
                    anchor.log_tail(10)
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let pid = anchor.pid().unwrap_or(0);
        self.mount_ns = std::fs::read_link(format!("/proc/{pid}/ns/mnt"))
            .map(|l| l.display().to_string())
            .unwrap_or_default();
        let config = self.dir.join("daemon.json");
        std::fs::write(
            &config,
            serde_json::json!({ "deprecated-key-path": self.dir.join("key.json") }).to_string(),
        )
        .map_err(|e| Error::Io {
            context: format!("writing {}", config.display()),
            source: e,
        })?;
        let d = &self.dir;
        let argv: Vec<String> = vec![
            "nsenter".into(),
            format!("--mount=/proc/{pid}/ns/mnt"),
            format!("--net=/run/netns/{}", self.ns_name()),
            "--".into(),
            DOCKERD.into(),
            format!("--config-file={}", config.display()),
            format!("--data-root={}", d.join("data").display()),
            format!("--exec-root={}", d.join("exec").display()),
            format!("--pidfile={}", d.join("dockerd.pid").display()),
            format!("--host=unix://{}", self.socket.display()),
            format!("--cgroup-parent=/{}", self.tag),
            "--iptables=false".into(),
            "--ip6tables=false".into(),
            "--bridge=none".into(),
            "--storage-driver=vfs".into(),
            // Never the machine's resolvers.
            "--dns=127.0.0.1".into(),
            "--shutdown-timeout=2".into(),
        ];
        self.dockerd = Some(self.sh.spawn(&argv, &format!("{}-dockerd", self.tag))?);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if self
                .sh
                .ok(
                    &[
                        DOCKER,
                        "-H",
                        &format!("unix://{}", self.socket.display()),
                        "version",
                    ],
                    STEP,
                )
                .is_ok()
            {
                return Ok(());
            }
            let dockerd = self.dockerd.as_mut().expect("just started");
            if dockerd.exited().is_some() || Instant::now() > deadline {
                return Err(Error::Setup(format!(
                    "dockerd did not start:\n{}",
                    dockerd.log_tail(20)
                )));
            }
            if interrupted() {
                return Err(Error::Interrupted);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn import_image(&self) -> Result<(), Error> {
        let root = self.dir.join("rootfs");
        let bin = root.join("bin");
        std::fs::copy(BUSYBOX, bin.join("busybox")).map_err(|e| Error::Io {
            context: format!("copying {BUSYBOX}"),
            source: e,
        })?;
        for applet in ["sh", "sleep"] {
            let _ = std::os::unix::fs::symlink("busybox", bin.join(applet));
        }
        let tar = self.dir.join("rootfs.tar");
        self.sh.ok(
            &[
                "tar",
                "-C",
                &root.display().to_string(),
                "-cf",
                &tar.display().to_string(),
                ".",
            ],
            STEP,
        )?;
        self.docker(&["import", &tar.display().to_string(), IMAGE])
            .map(|_| ())
    }

    fn start_vswitchd(&mut self, env: &Env) -> Result<(), Error> {
        // vswitchd in dockerd's mount namespace (where the sandboxes are
        // mounted and /run/docker/plugins is this run's) and its network
        // namespace; the host takes no namespace of its own.
        let host = VswitchHost::start_in_mount_ns(
            env,
            &self.ns_name(),
            &format!(
                "/proc/{}/ns/mnt",
                self.anchor.as_ref().and_then(Background::pid).unwrap_or(0)
            ),
            "vswitchd-docker",
            &[
                "--docker-plugin",
                "--docker-host",
                &format!("unix://{}", self.socket.display()),
            ],
        )?;
        self.vswitch = Some(host);
        Ok(())
    }

    fn teardown_inner(&mut self) -> Vec<Error> {
        if std::mem::replace(&mut self.torn_down, true) {
            return Vec::new();
        }
        let mut errors = Vec::new();
        for c in std::mem::take(&mut self.containers) {
            let _ = self.sh.cleanup(&["ip", "netns", "del", &c]);
            let mut argv = vec![
                DOCKER.to_string(),
                "-H".into(),
                format!("unix://{}", self.socket.display()),
            ];
            argv.extend(["rm", "-f", &c].map(String::from));
            if let Err(e) = self.sh.cleanup(&argv) {
                errors.push(e);
            }
        }
        if let Some(net) = self.network.take() {
            let mut argv = vec![
                DOCKER.to_string(),
                "-H".into(),
                format!("unix://{}", self.socket.display()),
            ];
            argv.extend(["network", "rm", &net].map(String::from));
            if let Err(e) = self.sh.cleanup(&argv) {
                errors.push(e);
            }
        }
        if let Some(mut d) = self.dockerd.take() {
            d.stop(Duration::from_secs(20));
        }
        if let Some(mut v) = self.vswitch.take() {
            errors.extend(v.teardown());
        }
        kill_in_mount_ns(&self.mount_ns);
        if let Some(mut a) = self.anchor.take() {
            a.stop(Duration::from_secs(2));
        }
        remove_cgroups(&self.tag);
        if let Some(mut ns) = self.ns.take() {
            if let Err(e) = ns.delete() {
                errors.push(e);
            }
        }
        if let Err(e) = std::fs::remove_dir_all(self.dir.join("data")) {
            if e.kind() != std::io::ErrorKind::NotFound {
                errors.push(Error::Io {
                    context: "removing dockerd's data root".into(),
                    source: e,
                });
            }
        }
        errors
    }
}

impl Deployment for DockerDeployment {
    fn endpoints(&self) -> &Endpoints {
        &self.ep
    }

    fn teardown(mut self: Box<Self>) -> Vec<Error> {
        self.teardown_inner()
    }
}

impl Drop for DockerDeployment {
    fn drop(&mut self) {
        report_cleanup(self.teardown_inner());
    }
}

/// SIGKILLs what dockerd left in its mount namespace (containerd, shims,
/// containers) and waits a little for them to go.
fn kill_in_mount_ns(mount_ns: &str) {
    if mount_ns.is_empty() {
        return;
    }
    let me = std::process::id();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return;
    };
    let pids: Vec<i32> = entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&p| p as u32 != me)
        .filter(|p| {
            std::fs::read_link(format!("/proc/{p}/ns/mnt")).is_ok_and(|l| l.as_os_str() == mount_ns)
        })
        .collect();
    for &p in &pids {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(p),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline
        && pids
            .iter()
            .any(|p| Path::new(&format!("/proc/{p}")).exists())
    {
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Removes the run's cgroups (`--cgroup-parent`), deepest first.
fn remove_cgroups(parent: &str) {
    fn remove(dir: &Path) {
        if let Ok(entries) = std::fs::read_dir(dir) {
            for e in entries.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    remove(&e.path());
                }
            }
        }
        let _ = std::fs::remove_dir(dir);
    }
    let Ok(hierarchies) = std::fs::read_dir("/sys/fs/cgroup") else {
        return;
    };
    for h in hierarchies.flatten() {
        let top = h.path().join(parent);
        if top.is_dir() {
            remove(&top);
        }
    }
}
