//! A real Podman (Debian's podman 4.3.1) with its CNI network backend,
//! for tests of a CNI plugin.
//!
//! Podman has no daemon: every [`PodmanHost::podman`] call is one
//! `podman` process, and what a "host" is comes from its flags,
//! environment and configuration, all in a directory of its own
//! ([`PodmanHost::dir`], `$TMPDIR/vstest-NAME`):
//!
//! - `--root`, `--runroot`, `--tmpdir` (libpod's state, its lock files
//!   with `lock_type = "file"` instead of the machine-wide
//!   `/dev/shm/libpod_lock`, exit files), `--storage-driver vfs`;
//! - `CONTAINERS_CONF` (read instead of `/usr/share/containers` and
//!   `/etc/containers/containers.conf`, and handed on by conmon to the
//!   `podman container cleanup` it runs when a container exits): the CNI
//!   backend, `cni_plugin_dirs` (the test's directories, then Debian's
//!   `/usr/lib/cni`), `network_config_dir` (also `--network-config-dir`;
//!   podman 4.3 has no `--cni-config-dir`), `netns = "none"` so that a
//!   container without `--network` gets no network at all (Podman's
//!   default network would be a bridge with the `portmap` and `firewall`
//!   plugins, that is iptables rules), `dns_servers = ["127.0.0.1"]`,
//!   cgroupfs, the events log, `pull_policy = "never"`, no host port
//!   reservation (conmon would listen on `-p` ports of the machine), and
//!   the OCI runtime `runc` as a wrapper script that keeps runc's state
//!   here (`runc --root`) instead of `/run/runc`. The cleanup process
//!   gets none of the other variables below, only this file and the
//!   global flags podman repeats for it;
//! - `CONTAINERS_STORAGE_CONF`, `CONTAINERS_REGISTRIES_CONF` (no registry
//!   at all: short names never resolve to one) and `TMPDIR`;
//! - CNI network configurations ([`PodmanHost::write_conflist`]) in
//!   [`PodmanHost::cni_config_dir`], never `/etc/cni/net.d`, and
//!   host-local IPAM state (`dataDir`) here, never
//!   `/var/lib/cni/networks`;
//! - cgroups under `/vstest-NAME` of every hierarchy: `podman run` and
//!   `podman create` get `--cgroup-parent` (conmon goes to
//!   `/vstest-NAME/conmon`), never Podman's shared `/libpod_parent`.
//!
//! Containers run Debian's `runc` (`crun` 1.8 refuses machines with
//! cgroup v1 and v2 controllers, even with cgroups disabled), with low
//! `nofile`/`nproc` limits (runc cannot set Podman's defaults, 1048576
//! and the hard limit, in a container here: EPERM).
//!
//! What stays shared with the machine, and why that is safe:
//!
//! - `/run/netns/netns-UUID`: podman pins each container's network
//!   namespace there (a unique name; podman unmounts and removes it at
//!   teardown, `Drop` removes any it left). It is the `CNI_NETNS` a
//!   plugin gets and [`PodmanHost::sandbox_key`], valid from the test
//!   too: podman runs in the test's mount namespace. Podman also makes
//!   `/run/netns` a shared mount, as `ip netns add` does.
//! - `/var/lib/cni/results/NET-CONTAINERID-IFNAME`: libcni's cache of each
//!   attachment's result (the `prevResult` of `DEL`), which podman 4.3
//!   cannot move; per container ID, removed at `DEL`, and by `Drop` for
//!   the containers of this host. The directory stays.
//! - The Linux bridges of `bridge` networks live in the machine's network
//!   namespace (podman runs there): [`PodmanHost::bridge_network`] names
//!   them uniquely (`vsb...`), without gateway address, masquerading or
//!   routes, and `Drop` deletes them. [`PodmanHost::write_conflist`]
//!   refuses configurations that would add firewall rules or routes or
//!   keep state outside the directory.
//! - Read only: `/etc/hosts` and `/etc/resolv.conf` (copied into
//!   containers, whose resolver is 127.0.0.1 anyway),
//!   `/etc/containers/policy.json`, `/usr/share/containers/seccomp.json`.
//! - `podman import` writes containers/image's blob-info cache, always in
//!   `/var/lib/containers/cache`: [`PodmanHost::import_busybox`] runs it
//!   in a throwaway mount namespace with a tmpfs there.
//!
//! Images come from Debian's static busybox ([`IMAGE`]), never from a
//! registry. Do not use `podman network create` (its conflists carry the
//! `portmap` and `firewall` plugins), `--network bridge`, pods (their
//! infra image), short image names or a bare `podman inspect NAME` of
//! what may not be a container (an image lookup by short name creates
//! `/var/cache/containers/short-name-aliases.conf.lock`, whatever
//! `short-name-mode` says): [`PodmanHost::inspect`] is
//! `podman container inspect`.
//!
//! Declare the `PodmanHost` after what its containers use (a plugin's
//! daemon, say), so that it is dropped first: its `Drop` removes every
//! container through podman (bounded), kills what is left of its conmons,
//! cleanup processes and containers, removes netns pins and CNI cache
//! entries podman left, unmounts whatever is mounted under its directory,
//! deletes its bridges and cgroups and then the directory, and says on
//! stderr what it could not do.
#![allow(dead_code)]

use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::common::docker::busybox_tar;
use crate::common::{alive, output_within, ppid, remove_cgroup, stderr, stdout, tail, unique};

pub const PODMAN: &str = "/usr/bin/podman";
pub const RUNC: &str = "/usr/bin/runc";
/// Debian's reference CNI plugins (`containernetworking-plugins`).
pub const DEBIAN_CNI_PLUGINS: &str = "/usr/lib/cni";
/// The busybox image every `PodmanHost` has from its start; fully
/// qualified, so that podman resolves no short name.
pub const IMAGE: &str = "localhost/vswitch-busybox:test";
/// Where libcni caches results (not configurable in podman 4.3).
pub const CNI_CACHE: &str = "/var/lib/cni/results";

/// How long one `podman` command may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);
/// How long `podman rm -f --all` may take in `Drop`.
const CLEANUP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long killed processes may take to go.
const KILL_TIMEOUT: Duration = Duration::from_secs(10);

/// A Podman of its own, in the test's (the machine's) namespaces.
#[derive(Debug)]
pub struct PodmanHost {
    /// The unique name of this host (its directory, its cgroup parent).
    pub name: String,
    /// Everything of this podman: storage, state, configuration.
    pub dir: PathBuf,
    cni_config_dir: PathBuf,
    /// Bridges of this host's networks, deleted in `Drop`.
    bridges: Mutex<Vec<String>>,
}

impl PodmanHost {
    /// A podman whose CNI plugins are looked up in `cni_plugin_dirs`
    /// (e.g. where the test put `vswitch-cni`), then in Debian's
    /// `/usr/lib/cni`; with [`IMAGE`] imported.
    pub fn start(cni_plugin_dirs: &[&Path]) -> PodmanHost {
        PodmanHost::start_with(cni_plugin_dirs, true)
    }

    /// [`PodmanHost::start`] without `dns_servers`, so containers get the
    /// nameservers of their networks' CNI results. Only for networks whose
    /// results name one (vswitch-cni's: the gateway), and in a test whose
    /// namespaces have no way out: Podman falls back to the machine's
    /// resolvers otherwise.
    pub fn start_with_network_dns(cni_plugin_dirs: &[&Path]) -> PodmanHost {
        PodmanHost::start_with(cni_plugin_dirs, false)
    }

    fn start_with(cni_plugin_dirs: &[&Path], loopback_dns: bool) -> PodmanHost {
        let name = unique("pm");
        let dir = std::env::temp_dir().join(format!("vstest-{name}"));
        assert!(
            !dir.starts_with("/var/lib"),
            "{} is under /var/lib, which import_busybox hides",
            dir.display()
        );
        let _ = std::fs::remove_dir_all(&dir);
        let h = PodmanHost {
            cni_config_dir: dir.join("net.d"),
            name,
            dir,
            bridges: Mutex::new(Vec::new()),
        };
        for d in [
            "root", "runroot", "libpod", "tmp", "net.d", "ipam", "runc", "bin",
        ] {
            std::fs::create_dir_all(h.dir.join(d)).unwrap();
        }
        h.write_config(cni_plugin_dirs, loopback_dns);
        h.import_busybox();
        h
    }

    /// The directory of this host's CNI network configurations (what
    /// `/etc/cni/net.d` is to the machine's podman).
    pub fn cni_config_dir(&self) -> &Path {
        &self.cni_config_dir
    }

    /// The cgroup every container and conmon of this host is under.
    pub fn cgroup_parent(&self) -> String {
        format!("/vstest-{}", self.name)
    }

    fn write_config(&self, cni_plugin_dirs: &[&Path], loopback_dns: bool) {
        let d = &self.dir;
        let mut plugin_dirs: Vec<PathBuf> =
            cni_plugin_dirs.iter().map(|p| p.to_path_buf()).collect();
        plugin_dirs.push(PathBuf::from(DEBIAN_CNI_PLUGINS));
        let runc = d.join("bin/runc");
        std::fs::write(
            &runc,
            format!(
                "#!/bin/sh\n# runc with its state in this test's directory.\nexec {RUNC} --root {} \"$@\"\n",
                sh_quote(&d.join("runc"))
            ),
        )
        .unwrap();
        std::fs::set_permissions(&runc, std::fs::Permissions::from_mode(0o755)).unwrap();
        let nofile = hard_limit("Max open files").min(4096);
        let nproc = hard_limit("Max processes").min(4096);
        let conf = format!(
            r#"# vswitch test podman {name}
[containers]
netns = "none"
{dns}
default_ulimits = ["nofile={nofile_soft}:{nofile}", "nproc={nproc}:{nproc}"]

[network]
network_backend = "cni"
cni_plugin_dirs = {plugin_dirs}
network_config_dir = {net_d}
default_network = "vstest-unused-default"
default_subnet = "10.255.254.0/24"

[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = {events}
lock_type = "file"
tmp_dir = {libpod}
volume_path = {volumes}
pull_policy = "never"
enable_port_reservation = false
runtime = "runc"

[engine.runtimes]
runc = [{runc}]
"#,
            name = self.name,
            dns = if loopback_dns {
                r#"dns_servers = ["127.0.0.1"]"#
            } else {
                "# dns_servers: the networks' own (their CNI results)"
            },
            nofile_soft = nofile.min(1024),
            plugin_dirs = toml_list(&plugin_dirs),
            net_d = toml_str(&self.cni_config_dir),
            events = toml_str(&d.join("events.log")),
            libpod = toml_str(&d.join("libpod")),
            volumes = toml_str(&d.join("root/volumes")),
            runc = toml_str(&runc),
        );
        std::fs::write(d.join("containers.conf"), conf).unwrap();
        let storage = format!(
            "[storage]\ndriver = \"vfs\"\ngraphroot = {}\nrunroot = {}\n",
            toml_str(&d.join("root")),
            toml_str(&d.join("runroot"))
        );
        std::fs::write(d.join("storage.conf"), storage).unwrap();
        std::fs::write(
            d.join("registries.conf"),
            "unqualified-search-registries = []\n",
        )
        .unwrap();
    }

    /// podman's global flags for this host.
    fn global_args(&self) -> Vec<OsString> {
        let d = &self.dir;
        let mut v: Vec<OsString> = Vec::new();
        for (flag, path) in [
            ("--root", d.join("root")),
            ("--runroot", d.join("runroot")),
            ("--tmpdir", d.join("libpod")),
            ("--network-config-dir", self.cni_config_dir.clone()),
        ] {
            v.push(flag.into());
            v.push(path.into());
        }
        v.extend(["--storage-driver".into(), "vfs".into()]);
        v
    }

    /// A `podman` command of this host with `args` (see
    /// [`PodmanHost::podman`]), for a test that wants to add environment
    /// (e.g. `CNI_ARGS`, which podman hands on to plugins) or run it
    /// itself.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(PODMAN);
        self.set_env(&mut c);
        c.args(self.global_args())
            .args(self.with_cgroup_parent(args));
        c
    }

    fn set_env(&self, c: &mut Command) {
        let d = &self.dir;
        c.env("CONTAINERS_CONF", d.join("containers.conf"))
            .env("CONTAINERS_STORAGE_CONF", d.join("storage.conf"))
            .env("CONTAINERS_REGISTRIES_CONF", d.join("registries.conf"))
            .env("TMPDIR", d.join("tmp"))
            .env_remove("CONTAINER_HOST")
            .env_remove("CONTAINER_CONNECTION")
            .env_remove("CONTAINERS_REGISTRIES_CONF_DIR")
            .env_remove("CNI_ARGS")
            .env_remove("REGISTRY_AUTH_FILE");
    }

    /// `args` with `--cgroup-parent` after `run` or `create` (unless the
    /// test chose one).
    fn with_cgroup_parent(&self, args: &[&str]) -> Vec<String> {
        let mut v: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let at = match args {
            ["run" | "create", ..] => Some(1),
            ["container", "run" | "create", ..] => Some(2),
            _ => None,
        };
        let chosen = args
            .iter()
            .any(|a| *a == "--cgroup-parent" || a.starts_with("--cgroup-parent="));
        if let (Some(at), false) = (at, chosen) {
            v.insert(at, format!("--cgroup-parent={}", self.cgroup_parent()));
        }
        v
    }

    /// `podman <this host's flags> args...` (never panics; killed after
    /// two minutes). `run` and `create` get this host's `--cgroup-parent`.
    pub fn podman(&self, args: &[&str]) -> Output {
        self.podman_within(args, COMMAND_TIMEOUT)
    }

    /// Like [`PodmanHost::podman`], killed after `within`.
    pub fn podman_within(&self, args: &[&str], within: Duration) -> Output {
        output_within(self.command(args), None, within)
    }

    /// Like [`PodmanHost::podman`] with more environment variables, e.g.
    /// `CNI_ARGS`, which podman appends to the `CNI_ARGS` of its plugins.
    pub fn podman_env(&self, env: &[(&str, &str)], args: &[&str]) -> Output {
        let mut c = self.command(args);
        c.envs(env.iter().copied());
        output_within(c, None, COMMAND_TIMEOUT)
    }

    /// Like [`PodmanHost::podman`], returning stdout and panicking with
    /// stderr on failure.
    pub fn podman_ok(&self, args: &[&str]) -> String {
        let out = self.podman(args);
        check(args, &out);
        stdout(&out)
    }

    /// `podman import` of [`IMAGE`] from the static busybox (done by
    /// [`PodmanHost::start`]), in a mount namespace of its own where
    /// `/var/lib/containers` (or `/var/lib` while that does not exist)
    /// is an empty tmpfs, so that the blob-info cache stays off the
    /// machine.
    pub fn import_busybox(&self) {
        let args = ["import", "--change", r#"CMD ["/bin/sh"]"#, "-", IMAGE];
        let script = "set -e; \
                      if [ -d /var/lib/containers ]; then t=/var/lib/containers; else t=/var/lib; fi; \
                      mount -t tmpfs -o size=16m,mode=0755 vstest-podman \"$t\"; \
                      exec \"$@\"";
        let mut c = Command::new("unshare");
        self.set_env(&mut c);
        c.args([
            "-m",
            "--propagation",
            "private",
            "--",
            "sh",
            "-c",
            script,
            "sh",
        ])
        .arg(PODMAN)
        .args(self.global_args())
        .args(args);
        let out = output_within(c, Some(busybox_tar()), COMMAND_TIMEOUT);
        check(&args, &out);
    }

    /// `podman run -d --name NAME ARGS... IMAGE CMD...` with a unique name
    /// made from `prefix`; returns the name. `args` may name `--network`
    /// (without it the container has only a loopback).
    pub fn run(&self, prefix: &str, args: &[&str], command: &[&str]) -> String {
        let name = unique(prefix);
        let mut full = vec!["run", "-d", "--name", &name];
        full.extend_from_slice(args);
        full.push(IMAGE);
        full.extend_from_slice(command);
        self.podman_ok(&full);
        name
    }

    /// `podman exec CONTAINER argv...` (with the container's busybox).
    pub fn exec(&self, container: &str, argv: &[&str]) -> Output {
        let mut full = vec!["exec", container];
        full.extend_from_slice(argv);
        self.podman(&full)
    }

    /// Like [`PodmanHost::exec`], returning stdout and panicking on
    /// failure.
    pub fn exec_ok(&self, container: &str, argv: &[&str]) -> String {
        let mut full = vec!["exec", container];
        full.extend_from_slice(argv);
        self.podman_ok(&full)
    }

    /// `podman container inspect -f FORMAT CONTAINER`, trimmed.
    pub fn inspect(&self, container: &str, format: &str) -> String {
        self.podman_ok(&["container", "inspect", "-f", format, container])
            .trim()
            .to_string()
    }

    /// The full ID of a container.
    pub fn id_of(&self, container: &str) -> String {
        self.inspect(container, "{{.Id}}")
    }

    /// The process id of a running container's first process.
    pub fn pid_of(&self, container: &str) -> u32 {
        let pid = self.inspect(container, "{{.State.Pid}}");
        match pid.parse() {
            Ok(p) if p > 0 => p,
            _ => panic!("container {container} is not running (pid {pid:?})"),
        }
    }

    /// The process id of a running container's conmon.
    pub fn conmon_pid_of(&self, container: &str) -> u32 {
        let pid = self.inspect(container, "{{.State.ConmonPid}}");
        pid.parse()
            .unwrap_or_else(|_| panic!("container {container} has no conmon ({pid:?})"))
    }

    /// The network namespace of a running container: `/proc/PID/ns/net`,
    /// for `nsenter --net=`.
    pub fn netns_of(&self, container: &str) -> String {
        format!("/proc/{}/ns/net", self.pid_of(container))
    }

    /// Where podman pinned the container's network namespace
    /// (`/run/netns/netns-UUID`, the `CNI_NETNS` of its plugins; empty
    /// with `--network none`).
    pub fn sandbox_key(&self, container: &str) -> String {
        self.inspect(container, "{{.NetworkSettings.SandboxKey}}")
    }

    /// The IPv4 address podman reports for a container on `network` (from
    /// the CNI result).
    pub fn ip_of(&self, container: &str, network: &str) -> String {
        self.inspect(
            container,
            &format!("{{{{(index .NetworkSettings.Networks {network:?}).IPAddress}}}}"),
        )
    }

    /// `nsenter --net=<container's namespace> argv...` from the test (with
    /// the test's binaries, not the container's).
    pub fn exec_in_netns_of(&self, container: &str, argv: &[&str]) -> Output {
        let net = format!("--net={}", self.netns_of(container));
        let mut full = vec!["nsenter", &net, "--"];
        full.extend_from_slice(argv);
        crate::common::cmd(&full)
    }

    /// Writes `<cni_config_dir>/<name>.conflist`. Panics unless `json` is
    /// a configuration list that stays inside the test: no `portmap`,
    /// `firewall` or `dhcp` plugin, no masquerading, no gateway on the
    /// machine's side, no routes, host-local IPAM only with a `dataDir`
    /// in this host's directory. The bridges it names are deleted in
    /// `Drop`.
    pub fn write_conflist(&self, name: &str, json: &str) {
        let conf: serde_json::Value = serde_json::from_str(json)
            .unwrap_or_else(|e| panic!("conflist {name} is not JSON ({e}): {json}"));
        let plugins = conf["plugins"]
            .as_array()
            .unwrap_or_else(|| panic!("conflist {name} has no plugins: {json}"));
        for p in plugins {
            let ty = p["type"].as_str().unwrap_or("");
            assert!(
                !["portmap", "firewall", "dhcp", "sbr"].contains(&ty),
                "conflist {name}: the {ty} plugin changes the machine: {json}"
            );
            for key in ["ipMasq", "isGateway", "isDefaultGateway", "forceAddress"] {
                assert!(
                    p[key] != serde_json::Value::Bool(true),
                    "conflist {name}: {key} would give the machine an address or NAT: {json}"
                );
            }
            let ipam = &p["ipam"];
            if let Some(kind) = ipam["type"].as_str() {
                assert!(
                    ipam["routes"].as_array().is_none_or(|r| r.is_empty()),
                    "conflist {name}: no routes, please: {json}"
                );
                if kind == "host-local" {
                    let data = ipam["dataDir"].as_str().unwrap_or("");
                    assert!(
                        Path::new(data).starts_with(&self.dir),
                        "conflist {name}: host-local needs a dataDir in {}: {json}",
                        self.dir.display()
                    );
                }
            }
            if let Some(bridge) = p["bridge"].as_str() {
                if ty == "bridge" {
                    self.bridges.lock().unwrap().push(bridge.to_string());
                }
            }
        }
        std::fs::write(self.cni_config_dir.join(format!("{name}.conflist")), json).unwrap();
    }

    /// A `bridge` network `name` on `subnet` (a test range, e.g.
    /// `10.250.1.0/24`): a bridge of a unique name on the machine with no
    /// address, no masquerading and no routes, host-local IPAM with its
    /// state in this host's directory. Returns the bridge's name.
    pub fn bridge_network(&self, name: &str, subnet: &str) -> String {
        let bridge = unique("vsb");
        assert!(bridge.len() <= 15, "bridge name {bridge} too long");
        let conf = serde_json::json!({
            "cniVersion": "1.0.0",
            "name": name,
            "plugins": [{
                "type": "bridge",
                "bridge": bridge,
                "isGateway": false,
                "ipMasq": false,
                "hairpinMode": false,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{ "subnet": subnet }]],
                    "dataDir": self.dir.join("ipam"),
                },
            }],
        });
        self.write_conflist(name, &conf.to_string());
        bridge
    }

    /// The full IDs of every container of this host.
    fn container_ids(&self) -> Vec<String> {
        let out = self.podman_within(&["ps", "-aq", "--no-trunc"], CLEANUP_TIMEOUT);
        stdout(&out)
            .split_whitespace()
            .map(str::to_string)
            .collect()
    }

    /// Processes of this host: anything whose command line names its
    /// directory (conmon, `podman container cleanup`, the runc wrapper),
    /// whatever is in its cgroups, and everything below those.
    fn leftovers(&self) -> Vec<i32> {
        let me = std::process::id() as i32;
        // DIR/ (what its command lines name is inside it), so that
        // vstest-pm11 is not taken for vstest-pm1.
        let mut dir = self.dir.as_os_str().as_encoded_bytes().to_vec();
        dir.push(b'/');
        let mut parent_of = HashMap::new();
        let mut found: HashSet<i32> = self.cgroup_pids().into_iter().collect();
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return Vec::new();
        };
        for e in entries.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
                continue;
            };
            if let Some(ppid) = ppid(pid) {
                parent_of.insert(pid, ppid);
            }
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            if cmdline.windows(dir.len()).any(|w| w == dir.as_slice()) {
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
        found.into_iter().filter(|&p| alive(p)).collect()
    }

    /// The top cgroup directories of this host, one per hierarchy.
    fn cgroup_dirs(&self) -> Vec<PathBuf> {
        let parent = format!("vstest-{}", self.name);
        let root = Path::new("/sys/fs/cgroup");
        let mut dirs = vec![root.join(&parent)];
        if let Ok(hierarchies) = std::fs::read_dir(root) {
            for h in hierarchies.flatten() {
                if h.file_type().is_ok_and(|t| t.is_dir()) {
                    dirs.push(h.path().join(&parent));
                }
            }
        }
        dirs.into_iter().filter(|d| d.is_dir()).collect()
    }

    /// The processes in this host's cgroups.
    fn cgroup_pids(&self) -> Vec<i32> {
        fn walk(dir: &Path, pids: &mut Vec<i32>) {
            if let Ok(procs) = std::fs::read_to_string(dir.join("cgroup.procs")) {
                pids.extend(
                    procs
                        .split_whitespace()
                        .filter_map(|p| p.parse::<i32>().ok()),
                );
            }
            if let Ok(children) = std::fs::read_dir(dir) {
                for c in children.flatten() {
                    if c.file_type().is_ok_and(|t| t.is_dir()) {
                        walk(&c.path(), pids);
                    }
                }
            }
        }
        let mut pids = Vec::new();
        for d in self.cgroup_dirs() {
            walk(&d, &mut pids);
        }
        pids
    }

    /// Kills the leftover processes; says whether they all went.
    fn kill_leftovers(&self) -> Result<(), String> {
        let pids = self.leftovers();
        for &pid in &pids {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let deadline = Instant::now() + KILL_TIMEOUT;
        while pids.iter().any(|&p| alive(p)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let alive: Vec<i32> = pids.into_iter().filter(|&p| alive(p)).collect();
        if alive.is_empty() {
            Ok(())
        } else {
            Err(format!("processes {alive:?} survived SIGKILL"))
        }
    }

    /// Mount points under the host's directory (container shm, say),
    /// deepest first.
    fn mounts_under(&self) -> Vec<PathBuf> {
        let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mut v: Vec<PathBuf> = info
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .map(|m| PathBuf::from(unescape_mountinfo(m)))
            .filter(|m| m.starts_with(&self.dir))
            .collect();
        v.sort_by_key(|m| std::cmp::Reverse(m.as_os_str().len()));
        v.dedup();
        v
    }
}

impl Drop for PodmanHost {
    fn drop(&mut self) {
        let mut failures: Vec<String> = Vec::new();
        let panicking = std::thread::panicking();
        if panicking {
            let ps = self.podman_within(&["ps", "-a"], CLEANUP_TIMEOUT);
            eprintln!(
                "--- podman {} containers ---\n{}{}",
                self.name,
                stdout(&ps),
                stderr(&ps)
            );
        }
        let listed = self.container_ids();
        let mut pins: HashSet<PathBuf> = HashSet::new();
        for id in &listed {
            let key = self.podman_within(
                &[
                    "container",
                    "inspect",
                    "-f",
                    "{{.NetworkSettings.SandboxKey}}",
                    id,
                ],
                CLEANUP_TIMEOUT,
            );
            let key = stdout(&key).trim().to_string();
            if key.starts_with("/run/netns/") {
                pins.insert(PathBuf::from(key));
            }
        }
        if !listed.is_empty() {
            let out = self.podman_within(&["rm", "-f", "-t", "0", "--all"], CLEANUP_TIMEOUT);
            if !out.status.success() {
                failures.push(format!(
                    "podman rm -f --all: {}: {}",
                    out.status,
                    stderr(&out).trim()
                ));
            }
        }
        // Should podman have lost track of some: the containers its storage
        // and runc still know, the namespaces its processes are in.
        let mut ids: HashSet<String> = listed.into_iter().collect();
        for sub in ["runc", "root/vfs-containers"] {
            if let Ok(entries) = std::fs::read_dir(self.dir.join(sub)) {
                ids.extend(
                    entries
                        .flatten()
                        .map(|e| e.file_name().to_string_lossy().into_owned())
                        .filter(|n| n.len() == 64 && n.bytes().all(|b| b.is_ascii_hexdigit())),
                );
            }
        }
        pins.extend(netns_pins_of(&self.leftovers()));
        if let Err(e) = self.kill_leftovers() {
            failures.push(e);
        }
        // What podman would have torn down had it not failed.
        for pin in pins.iter().filter(|p| p.exists()) {
            let _ = nix::mount::umount2(pin, nix::mount::MntFlags::MNT_DETACH);
            if let Err(e) = std::fs::remove_file(pin) {
                failures.push(format!("removing {}: {e}", pin.display()));
            }
        }
        if let Ok(entries) = std::fs::read_dir(CNI_CACHE) {
            for e in entries.flatten() {
                let file = e.file_name().to_string_lossy().into_owned();
                if ids.iter().any(|id| file.contains(&format!("-{id}-"))) {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        for m in self.mounts_under() {
            if let Err(e) = nix::mount::umount2(&m, nix::mount::MntFlags::MNT_DETACH) {
                failures.push(format!("unmounting {}: {e}", m.display()));
            }
        }
        for bridge in self.bridges.lock().unwrap().iter() {
            if Path::new("/sys/class/net").join(bridge).exists() {
                let out = crate::common::cmd(&["ip", "link", "del", bridge]);
                if !out.status.success() {
                    failures.push(format!("ip link del {bridge}: {}", stderr(&out).trim()));
                }
            }
        }
        for cg in self.cgroup_dirs() {
            remove_cgroup(&cg);
            if cg.exists() {
                failures.push(format!("cgroup {} is still there", cg.display()));
            }
        }
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            failures.push(format!("removing {}: {e}", self.dir.display()));
        }
        if !failures.is_empty() {
            eprintln!(
                "podman {} left things behind:\n  {}",
                self.name,
                failures.join("\n  ")
            );
        }
    }
}

fn check(args: &[&str], out: &Output) {
    assert!(
        out.status.success(),
        "podman {args:?} failed: {}\nstdout: {}\nstderr: {}",
        out.status,
        tail(&stdout(out), 40),
        stderr(out)
    );
}

/// The hard limit of this process named `what` in `/proc/self/limits`.
fn hard_limit(what: &str) -> u64 {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    limits
        .lines()
        .find_map(|l| l.strip_prefix(what))
        .and_then(|rest| rest.split_whitespace().nth(1))
        .map_or(u64::MAX, |h| h.parse().unwrap_or(u64::MAX))
}

/// A TOML basic string (JSON's escapes are TOML's).
fn toml_str(p: &Path) -> String {
    serde_json::to_string(p.to_str().expect("UTF-8 path")).unwrap()
}

fn toml_list(paths: &[PathBuf]) -> String {
    let items: Vec<String> = paths.iter().map(|p| toml_str(p)).collect();
    format!("[{}]", items.join(", "))
}

/// `p` quoted for `sh`.
fn sh_quote(p: &Path) -> String {
    format!("'{}'", p.display().to_string().replace('\'', r"'\''"))
}

/// A mount point of `/proc/self/mountinfo` with its octal escapes
/// (`\040` for a space) undone.
fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 4 <= b.len() {
            let digits = std::str::from_utf8(&b[i + 1..i + 4]).unwrap_or("");
            if let Ok(n) = u8::from_str_radix(digits, 8) {
                out.push(n);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The pins in `/run/netns` of the network namespaces of `pids` (other
/// than the test's own).
fn netns_pins_of(pids: &[i32]) -> Vec<PathBuf> {
    use std::os::unix::fs::MetadataExt;
    let ino = |p: &Path| std::fs::metadata(p).ok().map(|m| (m.dev(), m.ino()));
    let own = ino(Path::new("/proc/self/ns/net"));
    let namespaces: HashSet<(u64, u64)> = pids
        .iter()
        .filter_map(|pid| ino(Path::new(&format!("/proc/{pid}/ns/net"))))
        .filter(|n| Some(*n) != own)
        .collect();
    if namespaces.is_empty() {
        return Vec::new();
    }
    let Ok(entries) = std::fs::read_dir("/run/netns") else {
        return Vec::new();
    };
    entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("netns-"))
        })
        .filter(|p| ino(p).is_some_and(|n| namespaces.contains(&n)))
        .collect()
}
