//! The harness that runs a real dockerd in a test's network namespace
//! (`common::docker`): it starts, runs the busybox image, keeps dockerds
//! of different tests apart, survives a restart, and leaves nothing
//! behind. Root only; no traffic leaves the machine (`--network none`).

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use common::docker::{DockerHost, BUSYBOX};
use common::*;

#[test]
fn dockerd_runs_busybox_in_the_tests_namespace_and_cleans_up() {
    require_root!();
    let ns = Netns::new("dkn");
    let t = Instant::now();
    let d = DockerHost::start(&ns.name, None, &[]);
    eprintln!("dockerd started and image imported in {:?}", t.elapsed());

    let t = Instant::now();
    let out = echo(&d, "hi");
    eprintln!("docker run --rm echo took {:?}", t.elapsed());
    assert_eq!(out.trim(), "hi");

    // dockerd lives in the test's namespace.
    let inode = |p: String| {
        let m = std::fs::metadata(&p).unwrap_or_else(|e| panic!("{p}: {e}"));
        (m.dev(), m.ino())
    };
    assert_eq!(
        inode(format!("/proc/{}/ns/net", d.pid())),
        inode(format!("/run/netns/{}", ns.name)),
        "dockerd is not in {}",
        ns.name
    );

    // Its /run/docker/plugins is the test's directory.
    std::fs::write(d.plugin_dir().join("marker.spec"), "unix:///nowhere.sock").unwrap();
    let ls = d
        .command_in_ns("ls")
        .arg("/run/docker/plugins")
        .output()
        .unwrap();
    assert_eq!(stdout(&ls).trim(), "marker.spec", "{}", stderr(&ls));

    // A running container: its sandbox is mounted in dockerd's mount
    // namespace only; from the test it is reached through its process.
    let c = d.run("dkc", &["--network", "none"], &["sleep", "600"]);
    let key = d.sandbox_key(&c);
    assert!(
        Path::new(&key).starts_with(d.dir.join("exec/netns")),
        "sandbox key {key}"
    );
    let links = d.exec_in_netns_of(&c, &["ip", "-o", "link"]);
    assert!(stdout(&links).contains("lo:"), "{links:?}");
    let inside = d
        .command_in_ns("nsenter")
        .args([
            format!("--net={key}"),
            "ip".into(),
            "-o".into(),
            "link".into(),
        ])
        .output()
        .unwrap();
    assert!(stdout(&inside).contains("lo:"), "{inside:?}");

    // Drop removes the container, stops dockerd and its containerd, and
    // leaves neither processes nor files nor cgroups behind.
    let dockerd = d.pid() as i32;
    let containerd = d.containerd_pid().expect("containerd runs");
    let container = d.pid_of(&c) as i32;
    let (dir, cgroup) = (d.dir.clone(), format!("vstest-{}", d.name));
    let t = Instant::now();
    drop(d);
    eprintln!("cleanup took {:?}", t.elapsed());
    for (what, pid) in [
        ("dockerd", dockerd),
        ("containerd", containerd),
        ("container", container),
    ] {
        let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        assert!(
            state.is_empty() || state.contains(") Z "),
            "{what} ({pid}) still runs: {state}"
        );
    }
    assert!(!dir.exists(), "{} is still there", dir.display());
    assert!(
        !Path::new("/sys/fs/cgroup/pids").join(&cgroup).exists(),
        "cgroup {cgroup} is still there"
    );
}

#[test]
fn two_dockerds_side_by_side_each_with_its_own_plugins_and_containerd() {
    require_root!();
    let (n1, n2) = (Netns::new("dka"), Netns::new("dkb"));
    let t = Instant::now();
    let (d1, d2) = std::thread::scope(|s| {
        let a = s.spawn(|| DockerHost::start(&n1.name, None, &[]));
        let b = s.spawn(|| DockerHost::start(&n2.name, None, &[]));
        (a.join().unwrap(), b.join().unwrap())
    });
    eprintln!("two dockerds started in parallel in {:?}", t.elapsed());

    let t = Instant::now();
    std::thread::scope(|s| {
        for (d, word) in [(&d1, "one"), (&d2, "two")] {
            s.spawn(move || {
                let out = echo(d, word);
                assert_eq!(out.trim(), word);
            });
        }
    });
    eprintln!("two concurrent docker runs took {:?}", t.elapsed());

    let id = |d: &DockerHost| d.docker_ok(&["info", "-f", "{{.ID}}"]).trim().to_string();
    assert_ne!(id(&d1), id(&d2), "the two engines share an identity");
    assert_ne!(d1.containerd_pid(), d2.containerd_pid());
    assert!(d1.containerd_pid().is_some());

    // A container of one is not in the other.
    let c = d1.run("dkc", &["--network", "none"], &["sleep", "600"]);
    assert!(d1.docker_ok(&["ps", "-q"]).trim().len() >= 12);
    assert_eq!(d2.docker_ok(&["ps", "-aq"]).trim(), "");
    assert!(!d2.docker(&["inspect", &c]).status.success());

    // Each finds the plugins of its own directory only.
    let calls = fake_network_plugin(&d1.plugin_dir().join("fake.sock"));
    let net = unique("dkn");
    d1.docker_ok(&["network", "create", "--driver", "fake", &net]);
    assert!(
        calls
            .lock()
            .unwrap()
            .iter()
            .any(|c| c == "/NetworkDriver.CreateNetwork"),
        "the plugin was not asked: {calls:?}"
    );
    // The other one does not see it (asking it for the driver would take
    // dockerd's 15 s wait for a plugin to appear).
    let ls = |d: &DockerHost| {
        let out = d
            .command_in_ns("ls")
            .arg("/run/docker/plugins")
            .output()
            .unwrap();
        stdout(&out).trim().to_string()
    };
    assert_eq!(ls(&d1), "fake.sock");
    assert_eq!(ls(&d2), "");
    d1.docker_ok(&["network", "rm", &net]);
}

#[test]
fn restarted_dockerd_keeps_its_image_and_live_restored_containers() {
    require_root!();
    let ns = Netns::new("dkr");
    let mut d = DockerHost::start(&ns.name, None, &["--live-restore"]);
    let c = d.run("dkc", &["--network", "none"], &["sleep", "600"]);
    let pid = d.pid_of(&c);
    let key = d.sandbox_key(&c);

    let t = Instant::now();
    d.stop().expect("dockerd was running");
    eprintln!("dockerd stopped in {:?}", t.elapsed());
    assert!(
        Path::new(&format!("/proc/{pid}")).exists(),
        "the container died with dockerd despite --live-restore"
    );
    let t = Instant::now();
    d.start_again();
    eprintln!("dockerd started again in {:?}", t.elapsed());

    assert!(!d.docker_ok(&["images", "-q", BUSYBOX]).trim().is_empty());
    assert_eq!(d.pid_of(&c), pid, "not the same container process");
    assert_eq!(d.sandbox_key(&c), key);
    let alive = d.docker_ok(&["exec", &c, "echo", "alive"]);
    assert_eq!(alive.trim(), "alive");
    let out = echo(&d, "hi");
    assert_eq!(out.trim(), "hi");

    // A plain restart (the same flags, the same data-root) too.
    d.restart();
    assert!(!d.docker_ok(&["images", "-q", BUSYBOX]).trim().is_empty());
    assert_eq!(d.pid_of(&c), pid);
}

/// `docker run --rm --network none BUSYBOX echo WORD`, with its output.
fn echo(d: &DockerHost, word: &str) -> String {
    d.docker_ok(&[
        "run",
        "--rm",
        "--pull",
        "never",
        "--network",
        "none",
        BUSYBOX,
        "echo",
        word,
    ])
}

/// A Docker network driver plugin that says yes to everything, listening
/// on `socket`; returns the paths it was asked for.
fn fake_network_plugin(socket: &Path) -> Arc<Mutex<Vec<String>>> {
    let listener = UnixListener::bind(socket).unwrap();
    let calls = Arc::new(Mutex::new(Vec::new()));
    let seen = calls.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { return };
            let seen = seen.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(conn.try_clone().unwrap());
                let mut conn = conn;
                loop {
                    let mut request = String::new();
                    if reader.read_line(&mut request).unwrap_or(0) == 0 {
                        return;
                    }
                    let path = request.split_whitespace().nth(1).unwrap_or("").to_string();
                    let mut length = 0;
                    loop {
                        let mut header = String::new();
                        if reader.read_line(&mut header).unwrap_or(0) == 0 {
                            return;
                        }
                        if header.trim().is_empty() {
                            break;
                        }
                        if let Some((k, v)) = header.split_once(':') {
                            if k.eq_ignore_ascii_case("content-length") {
                                length = v.trim().parse().unwrap_or(0);
                            }
                        }
                    }
                    let mut body = vec![0; length];
                    if reader.read_exact(&mut body).is_err() {
                        return;
                    }
                    let answer = match path.as_str() {
                        "/Plugin.Activate" => r#"{"Implements":["NetworkDriver"]}"#,
                        "/NetworkDriver.GetCapabilities" => r#"{"Scope":"local"}"#,
                        _ => "{}",
                    };
                    seen.lock().unwrap().push(path);
                    let response = format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: application/vnd.docker.plugins.v1.2+json\r\nContent-Length: {}\r\n\r\n{answer}",
                        answer.len()
                    );
                    if conn.write_all(response.as_bytes()).is_err() {
                        return;
                    }
                }
            });
        }
    });
    calls
}
