//! The harness that runs a real Podman with its CNI backend
//! (`common/podman.rs`): it runs the busybox image with state of its own
//! and leaves nothing behind, two containers on a CNI bridge network of
//! Debian's reference plugins reach each other with no firewall rule or
//! route added, and a spy plugin records what podman hands a CNI plugin
//! (the environment and configuration `vswitch-cni` will get). Root only;
//! traffic stays on a bridge the test made.

mod common;

use std::collections::HashMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::podman::{self, PodmanHost, DEBIAN_CNI_PLUGINS, IMAGE};
use common::*;
use serde_json::{json, Value};

#[test]
fn podman_runs_busybox_with_state_of_its_own_and_cleans_up() {
    require_root!();
    let shared = shared_state();
    let t = Instant::now();
    let h = PodmanHost::start(&[]);
    eprintln!("podman set up and image imported in {:?}", t.elapsed());

    let images = h.podman_ok(&["images", "--format", "{{.Repository}}:{{.Tag}}"]);
    assert!(images.lines().any(|l| l == IMAGE), "images: {images}");

    let t = Instant::now();
    let out = h.podman_ok(&["run", "--rm", "--network", "none", IMAGE, "echo", "hi"]);
    eprintln!("podman run --rm echo took {:?}", t.elapsed());
    assert_eq!(out.trim(), "hi");

    // Without --network a container has a namespace of its own with only
    // a loopback (netns = "none"), and no resolver but its own.
    let c = h.run("pmc", &[], &["sleep", "600"]);
    let (pid, conmon, id) = (h.pid_of(&c), h.conmon_pid_of(&c), h.id_of(&c));
    let inode = |p: &str| std::fs::metadata(p).unwrap().ino();
    assert_ne!(inode(&h.netns_of(&c)), inode("/proc/self/ns/net"));
    let links = h.exec_in_netns_of(&c, &["ip", "-o", "link"]);
    let links = stdout(&links);
    assert_eq!(links.lines().count(), 1, "{links}");
    assert!(links.contains("lo:"), "{links}");
    assert_eq!(h.exec_ok(&c, &["echo", "inside"]).trim(), "inside");

    // Its cgroups, conmon's and runc's state are the host's own.
    let parent = h.cgroup_parent();
    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    assert!(
        cgroups.contains(&format!("{parent}/libpod-{id}")),
        "{cgroups}"
    );
    let cgroups = std::fs::read_to_string(format!("/proc/{conmon}/cgroup")).unwrap();
    assert!(cgroups.contains(&format!("{parent}/conmon")), "{cgroups}");
    assert!(h.dir.join("runc").join(&id).exists());
    assert!(!Path::new("/run/runc").join(&id).exists());
    assert!(h.dir.join("libpod/locks").is_dir(), "no file locks");

    // A second host sees none of it.
    let other = PodmanHost::start(&[]);
    assert_eq!(other.podman_ok(&["ps", "-aq"]).trim(), "");
    assert!(!other.podman(&["container", "exists", &c]).status.success());
    drop(other);

    let (dir, cgroup) = (h.dir.clone(), parent);
    let t = Instant::now();
    drop(h);
    eprintln!("cleanup took {:?}", t.elapsed());
    for (what, pid) in [("container", pid), ("conmon", conmon)] {
        assert!(!common::alive(pid as i32), "{what} ({pid}) still runs");
    }
    assert!(!dir.exists(), "{} is still there", dir.display());
    assert!(
        !Path::new("/sys/fs/cgroup/pids")
            .join(cgroup.trim_start_matches('/'))
            .exists(),
        "cgroup {cgroup} is still there"
    );
    assert_eq!(shared_state(), shared, "podman touched the machine's state");
}

#[test]
fn two_containers_on_a_cni_bridge_reach_each_other_and_nothing_leaves() {
    require_root!();
    let firewall = firewall_rules();
    let routes = ok(&["ip", "-4", "route", "show", "table", "all"]);
    let h = PodmanHost::start(&[]);
    let bridge = h.bridge_network("lan", "10.250.7.0/24");

    let a = h.run("pma", &["--network", "lan"], &["sleep", "600"]);
    let b = h.run("pmb", &["--network", "lan"], &["sleep", "600"]);
    let (ip_a, ip_b) = (h.ip_of(&a, "lan"), h.ip_of(&b, "lan"));
    for ip in [&ip_a, &ip_b] {
        assert!(ip.starts_with("10.250.7."), "address {ip}");
    }
    assert_ne!(ip_a, ip_b);
    let (ok_ping, out) = until_ok_with(Duration::from_secs(10), || {
        h.exec(&a, &["ping", "-c", "1", "-W", "2", &ip_b])
    });
    assert!(ok_ping, "{a} cannot ping {b} at {ip_b}: {out}");

    // The containers have their subnet and no way out; the machine's
    // bridge has no address; the resolver is the container's loopback.
    let inside = h.exec_ok(&a, &["ip", "-4", "route"]);
    assert_eq!(inside.lines().count(), 1, "{inside}");
    assert!(inside.starts_with("10.250.7.0/24 dev eth0"), "{inside}");
    let resolv = h.exec_ok(&a, &["cat", "/etc/resolv.conf"]);
    assert!(resolv.contains("nameserver 127.0.0.1"), "{resolv}");
    assert_eq!(
        resolv.matches("nameserver").count(),
        1,
        "another resolver: {resolv}"
    );
    let addrs = ok(&["ip", "-4", "-o", "addr", "show", "dev", &bridge]);
    assert_eq!(addrs.trim(), "", "the bridge has an address");
    // host-local's leases are in the host's directory.
    assert!(h.dir.join("ipam/lan").join(&ip_a).exists());

    assert_eq!(firewall_rules(), firewall, "podman changed firewall rules");
    assert_eq!(
        ok(&["ip", "-4", "route", "show", "table", "all"]),
        routes,
        "podman changed the machine's routes"
    );
    let ids = [h.id_of(&a), h.id_of(&b)];
    let pins = [h.sandbox_key(&a), h.sandbox_key(&b)];
    drop(h);
    assert!(
        !Path::new("/sys/class/net").join(&bridge).exists(),
        "bridge {bridge} is still there"
    );
    for pin in &pins {
        assert!(!Path::new(pin).exists(), "{pin} is still there");
    }
    let cache = cni_cache();
    for id in &ids {
        assert!(
            !cache.iter().any(|f| f.contains(id.as_str())),
            "CNI cache still holds {id}: {cache:?}"
        );
    }
    assert_eq!(firewall_rules(), firewall);
}

#[test]
fn podman_tells_a_cni_plugin_the_container_its_ports_aliases_and_addresses() {
    require_root!();
    let spy = Spy::new();
    let h = PodmanHost::start(&[spy.dir()]);
    h.write_conflist(
        "spy",
        &json!({
            "cniVersion": "1.0.0",
            "name": "spy",
            "plugins": [{
                "type": "vswitch-spy",
                "capabilities": {"portMappings": true, "aliases": true, "ips": true, "mac": true},
                "vswitch": {"network": "web"},
            }],
        })
        .to_string(),
    );

    let c = h.run(
        "pms",
        &[
            "--network",
            "spy:ip=10.251.0.9,mac=02:00:00:00:00:09",
            "--network-alias",
            "foo",
            "-p",
            "8080:80",
        ],
        &["sleep", "600"],
    );
    let (id, pin, pid) = (h.id_of(&c), h.sandbox_key(&c), h.pid_of(&c));
    let calls = spy.calls();
    for call in &calls {
        eprintln!("{call}");
    }
    assert!(calls.iter().all(|c| c.command != "CHECK"), "podman checked");
    // Podman asks every plugin of every conflist it loads for its
    // versions, with placeholders.
    let version = calls
        .iter()
        .find(|c| c.command == "VERSION")
        .expect("a VERSION call");
    assert_eq!(version.stdin, json!({"cniVersion": "1.0.0"}));
    assert_eq!(version.env["CNI_NETNS"], "dummy");
    assert_eq!(version.env["CNI_PATH"], "dummy");

    let adds: Vec<&Call> = calls.iter().filter(|c| c.command == "ADD").collect();
    assert_eq!(adds.len(), 1, "{calls:#?}");
    let add = adds[0];
    assert_eq!(add.env["CNI_CONTAINERID"], id);
    assert_eq!(add.env["CNI_IFNAME"], "eth0");
    assert_eq!(add.env["CNI_NETNS"], pin);
    assert!(pin.starts_with("/run/netns/netns-"), "{pin}");
    let inode = |p: &str| std::fs::metadata(p).unwrap().ino();
    assert_eq!(inode(&pin), inode(&format!("/proc/{pid}/ns/net")));
    assert_eq!(
        add.env["CNI_PATH"],
        format!("{}:{DEBIAN_CNI_PLUGINS}", spy.dir().display())
    );
    assert_eq!(
        add.args(),
        [
            "IgnoreUnknown=1".to_string(),
            format!("K8S_POD_NAME={c}"),
            "MAC=02:00:00:00:00:09".into(),
            "IP=10.251.0.9".into(),
        ]
    );
    // The plugin's own configuration, as written, and what podman adds:
    // the capabilities it has values for, nothing for one static IP or
    // MAC (those are CNI_ARGS), no prevResult.
    assert_eq!(add.stdin["cniVersion"], "1.0.0");
    assert_eq!(add.stdin["name"], "spy");
    assert_eq!(add.stdin["type"], "vswitch-spy");
    assert_eq!(add.stdin["vswitch"], json!({"network": "web"}));
    assert!(add.stdin.get("prevResult").is_none());
    assert_eq!(
        add.stdin["runtimeConfig"],
        json!({
            "aliases": {"spy": ["foo", &id[..12]]},
            "portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}],
        })
    );
    // Podman takes the plugin's result as the container's address.
    assert_eq!(h.ip_of(&c, "spy"), "10.251.0.9");
    let mac = h.inspect(&c, "{{.NetworkSettings.Networks.spy.MacAddress}}");
    assert_eq!(mac, "02:00:00:00:00:05");
    // -p is only told to the plugin: nothing listens on the machine.
    let listen = ok(&["ss", "-Htlnp", "sport = :8080"]);
    assert!(!listen.contains("conmon"), "{listen}");

    // Two addresses go as the "ips" capability, and the CNI_ARGS of
    // podman's environment are passed on.
    let n2 = unique("pms");
    let out = h.podman_env(
        &[("CNI_ARGS", "VSWITCH_TEST=yes")],
        &[
            "run",
            "-d",
            "--name",
            &n2,
            "--network",
            "spy:ip=10.251.0.7,ip=10.251.0.8",
            IMAGE,
            "sleep",
            "600",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let calls = spy.calls();
    let add2 = calls
        .iter()
        .find(|c| c.command == "ADD" && c.env["CNI_ARGS"].contains(&n2))
        .expect("an ADD for the second container");
    eprintln!("{add2}");
    assert_eq!(
        add2.args(),
        [
            "IgnoreUnknown=1".to_string(),
            format!("K8S_POD_NAME={n2}"),
            "VSWITCH_TEST=yes".into(),
        ]
    );
    assert_eq!(
        add2.stdin["runtimeConfig"]["ips"],
        json!(["10.251.0.7", "10.251.0.8"])
    );

    // DEL: the same environment and configuration, with the cached
    // result of ADD as prevResult, while the namespace is still there.
    spy.clear();
    h.podman_ok(&["rm", "-f", "-t", "0", &c]);
    let calls = spy.calls();
    let dels: Vec<&Call> = calls.iter().filter(|c| c.command == "DEL").collect();
    assert_eq!(dels.len(), 1, "{calls:#?}");
    let del = dels[0];
    eprintln!("{del}");
    for key in [
        "CNI_CONTAINERID",
        "CNI_IFNAME",
        "CNI_NETNS",
        "CNI_PATH",
        "CNI_ARGS",
    ] {
        assert_eq!(del.env[key], add.env[key], "{key}");
    }
    assert!(del.netns_existed, "the namespace was gone at DEL");
    assert_eq!(del.stdin["runtimeConfig"], add.stdin["runtimeConfig"]);
    let prev = &del.stdin["prevResult"];
    assert_eq!(prev["cniVersion"], "1.0.0");
    assert_eq!(prev["ips"][0]["address"], "10.251.0.9/24");
    assert_eq!(prev["interfaces"][0]["sandbox"], json!(pin));
    assert_eq!(prev["interfaces"][0]["mac"], "02:00:00:00:00:05");
}

#[test]
fn a_failing_test_leaves_nothing_behind_even_when_podman_lost_its_containers() {
    require_root!();
    let firewall = firewall_rules();
    let (tx, rx) = std::sync::mpsc::channel();
    let failed = std::thread::spawn(move || {
        let h = PodmanHost::start(&[]);
        let bridge = h.bridge_network("lan", "10.250.8.0/24");
        let c = h.run("pmp", &["--network", "lan"], &["sleep", "600"]);
        let pin = h.sandbox_key(&c);
        let pids = [h.pid_of(&c), h.conmon_pid_of(&c)];
        tx.send((
            h.dir.clone(),
            h.cgroup_parent(),
            bridge,
            h.id_of(&c),
            pin,
            pids,
        ))
        .unwrap();
        // Podman forgets the container: Drop has to find its remains.
        std::fs::remove_file(h.dir.join("root/libpod/bolt_state.db")).unwrap();
        assert_eq!(h.podman_ok(&["ps", "-aq"]).trim(), "");
        panic!("the test fails with a container running");
    })
    .join();
    assert!(failed.is_err(), "the test did not fail");
    let (dir, cgroup, bridge, id, pin, pids) = rx.recv().unwrap();
    for pid in pids {
        assert!(!common::alive(pid as i32), "{pid} still runs");
    }
    assert!(!Path::new(&pin).exists(), "{pin} is still there");
    assert!(
        !Path::new("/sys/class/net").join(&bridge).exists(),
        "bridge {bridge} is still there"
    );
    assert!(!dir.exists(), "{} is still there", dir.display());
    assert!(
        !Path::new("/sys/fs/cgroup/pids")
            .join(cgroup.trim_start_matches('/'))
            .exists(),
        "cgroup {cgroup} is still there"
    );
    let cache = cni_cache();
    assert!(
        !cache.iter().any(|f| f.contains(&id)),
        "CNI cache still holds {id}: {cache:?}"
    );
    assert_eq!(firewall_rules(), firewall);
}

/// A CNI plugin `vswitch-spy` (a shell script) that records each call's
/// environment and stdin in its directory and answers as a CNI 1.0.0
/// plugin: for ADD one interface and the address asked for in
/// `CNI_ARGS` (`IP=`) or 10.251.0.5; nothing for DEL and CHECK.
struct Spy {
    dir: PathBuf,
}

const SPY: &str = r#"#!/bin/sh
# vswitch-spy: records what the runtime hands a CNI plugin.
calls=$(dirname "$0")/calls
f="$calls/$(date +%s%N)-$$-$CNI_COMMAND"
cat /proc/$$/environ > "$f.env"
cat > "$f.json"
if [ "$(stat -f -c %T "$CNI_NETNS" 2>/dev/null)" = nsfs ]; then touch "$f.netns"; fi
case "$CNI_COMMAND" in
VERSION)
  echo '{"cniVersion":"1.0.0","supportedVersions":["0.4.0","1.0.0"]}' ;;
ADD)
  ip=$(echo "$CNI_ARGS" | tr ';' '\n' | sed -n 's/^IP=//p')
  printf '{"cniVersion":"1.0.0","interfaces":[{"name":"%s","mac":"02:00:00:00:00:05","sandbox":"%s"}],"ips":[{"address":"%s/24","gateway":"10.251.0.1","interface":0}],"dns":{}}\n' \
    "$CNI_IFNAME" "$CNI_NETNS" "${ip:-10.251.0.5}" ;;
esac
"#;

impl Spy {
    fn new() -> Spy {
        let dir = std::env::temp_dir().join(format!("vstest-{}", unique("spy")));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("calls")).unwrap();
        let plugin = dir.join("vswitch-spy");
        std::fs::write(&plugin, SPY).unwrap();
        std::fs::set_permissions(&plugin, std::fs::Permissions::from_mode(0o755)).unwrap();
        Spy { dir }
    }

    fn dir(&self) -> &Path {
        &self.dir
    }

    /// The calls so far, oldest first.
    fn calls(&self) -> Vec<Call> {
        let calls = self.dir.join("calls");
        let mut names: Vec<String> = std::fs::read_dir(&calls)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter_map(|n| n.strip_suffix(".json").map(str::to_string))
            .collect();
        names.sort();
        names
            .into_iter()
            .map(|n| {
                let environ = std::fs::read(calls.join(format!("{n}.env"))).unwrap();
                let env: HashMap<String, String> = environ
                    .split(|&b| b == 0)
                    .filter_map(|kv| {
                        let kv = String::from_utf8_lossy(kv);
                        let (k, v) = kv.split_once('=')?;
                        Some((k.to_string(), v.to_string()))
                    })
                    .collect();
                let stdin = std::fs::read_to_string(calls.join(format!("{n}.json"))).unwrap();
                Call {
                    command: env.get("CNI_COMMAND").cloned().unwrap_or_default(),
                    stdin: serde_json::from_str(&stdin)
                        .unwrap_or_else(|e| panic!("stdin of {n} is not JSON ({e}): {stdin}")),
                    netns_existed: calls.join(format!("{n}.netns")).exists(),
                    env,
                }
            })
            .collect()
    }

    fn clear(&self) {
        let calls = self.dir.join("calls");
        for e in std::fs::read_dir(&calls).unwrap().flatten() {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

impl Drop for Spy {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One call of the spy plugin.
#[derive(Debug)]
struct Call {
    command: String,
    env: HashMap<String, String>,
    stdin: Value,
    /// Whether `CNI_NETNS` was a mounted network namespace during the call.
    netns_existed: bool,
}

impl Call {
    /// `CNI_ARGS`, split.
    fn args(&self) -> Vec<String> {
        self.env["CNI_ARGS"]
            .split(';')
            .filter(|a| !a.is_empty())
            .map(str::to_string)
            .collect()
    }
}

impl std::fmt::Display for Call {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut cni: Vec<_> = self
            .env
            .iter()
            .filter(|(k, _)| k.starts_with("CNI_"))
            .collect();
        cni.sort();
        writeln!(f, "--- {} ---", self.command)?;
        for (k, v) in cni {
            writeln!(f, "{k}={v}")?;
        }
        write!(f, "stdin: {}", self.stdin)
    }
}

/// What of the machine's container state podman must not touch: whether
/// each of these exists, and what `/etc/cni/net.d` holds.
fn shared_state() -> Vec<String> {
    let mut v: Vec<String> = [
        "/var/lib/containers",
        "/var/cache/containers",
        "/run/containers",
        "/run/libpod",
        "/run/crun",
        "/dev/shm/libpod_lock",
        "/var/lib/cni/networks",
        "/sys/fs/cgroup/pids/libpod_parent",
        "/sys/fs/cgroup/libpod_parent",
    ]
    .iter()
    .map(|p| format!("{p}: {}", Path::new(p).exists()))
    .collect();
    if let Ok(d) = std::fs::read_dir("/etc/cni/net.d") {
        let mut files: Vec<String> = d
            .flatten()
            .map(|e| format!("/etc/cni/net.d/{}", e.file_name().to_string_lossy()))
            .collect();
        files.sort();
        v.extend(files);
    }
    v
}

/// The machine's iptables, ip6tables and nftables rules (what of those
/// tools is installed).
fn firewall_rules() -> String {
    let mut all = String::new();
    for argv in [
        &["iptables-save"][..],
        &["ip6tables-save"],
        &["nft", "list", "ruleset"],
    ] {
        if let Ok(out) = std::process::Command::new(argv[0])
            .args(&argv[1..])
            .output()
        {
            // iptables-save stamps its output with the time, and chains
            // with their packet counters.
            let text: String = stdout(&out)
                .lines()
                .filter(|l| !l.starts_with('#'))
                .map(|l| format!("{}\n", l.split(" [").next().unwrap_or(l)))
                .collect();
            all.push_str(&format!("== {}\n{text}", argv.join(" ")));
        }
    }
    all
}

/// The names of libcni's cached results (`/var/lib/cni/results`).
fn cni_cache() -> Vec<String> {
    std::fs::read_dir(podman::CNI_CACHE)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}
