//! End-to-end tests of containers' lives on real namespaces: `vswitch ps`
//! (running, exited with the exit code), `vswitch logs [-f]` of what `run
//! -d` started (bounded), a foreground `run` that stays as exited, `rm`,
//! `container prune`, `network prune`, and a daemon restarted while
//! containers exit.

mod common;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

/// `vswitch ps -a --format json`'s entry for `name`, if it is listed.
fn ps_entry(h: &Host, all: bool, name: &str) -> Option<Value> {
    let mut args = vec!["ps", "--format", "json"];
    if all {
        args.push("-a");
    }
    let v = h.vs_json(&args);
    v.as_array()
        .expect("ps --format json is an array")
        .iter()
        .find(|c| c["Name"] == name)
        .cloned()
}

/// Waits until `name` is listed as exited and its endpoints are released
/// (right after); returns its entry.
fn wait_exited(h: &Host, name: &str, within: Duration) -> Value {
    let mut last = None;
    wait_for(&format!("{name} to exit"), within, || {
        last = ps_entry(h, true, name);
        last.as_ref()
            .is_some_and(|e| e["State"] == "exited" && e["Addresses"] == serde_json::json!([]))
            && !netns_exists(name)
    });
    last.expect("listed")
}

fn netns_exists(name: &str) -> bool {
    std::path::Path::new("/run/netns").join(name).exists()
}

/// The container's log directory in the host's state directory.
fn log_dir(h: &Host, id: &str) -> PathBuf {
    h.dir.join("state/containers").join(id)
}

#[test]
fn run_d_shows_running_then_exited_with_its_code_and_logs_follow_until_it_exits() {
    require_root!();
    let mut h = Host::start(&[]);
    let net = h.network("n", &["--subnet", "10.237.1.0/24"]);
    let name = unique("job");
    h.containers.push(name.clone());
    let marker = format!("marker-{name}");
    let script = format!("echo {marker}-out; sleep 3; echo {marker}-err >&2; exit 3");
    let id = h
        .vs_ok(&run_detached(
            &name,
            &net,
            &["--ip", "10.237.1.50", "-p", "80"],
            &["sh", "-c", &script],
        ))
        .trim()
        .to_string();
    assert_eq!(id.len(), 64, "run -d prints the id: {id}");

    // Running: listed by `ps`, with its network, address, port and host.
    let e = ps_entry(&h, false, &name).expect("ps lists the running container");
    assert_eq!(e["Id"], id.as_str());
    assert_eq!(e["State"], "running");
    assert_eq!(e["ExitCode"], Value::Null);
    assert_eq!(e["Networks"], serde_json::json!([net]));
    assert_eq!(e["Addresses"], serde_json::json!(["10.237.1.50"]));
    assert!(
        e["Ports"][0]
            .as_str()
            .is_some_and(|p| p.starts_with("0.0.0.0:") && p.ends_with("->80/tcp")),
        "{e}"
    );
    assert!(e["Status"].as_str().unwrap().starts_with("Up"), "{e}");
    assert_eq!(e["Host"], h.ns.name.as_str());
    assert_eq!(e["Command"][0], "sh");
    let table = h.vs_ok(&["ps"]);
    let header = table.lines().next().unwrap();
    for col in [
        "CONTAINER ID",
        "NAME",
        "NETWORKS",
        "ADDRESSES",
        "PORTS",
        "STATUS",
        "HOST",
    ] {
        assert!(header.contains(col), "{table}");
    }
    let row = table
        .lines()
        .find(|l| l.contains(&name))
        .unwrap_or_else(|| panic!("{table}"));
    assert!(
        row.starts_with(&id[..12]) && row.contains("10.237.1.50"),
        "{table}"
    );

    // `logs -f` while it runs: what it wrote so far, then the rest, and it
    // ends by itself when the command exits.
    let started = Instant::now();
    let follow = Command::new(bin("vswitch"))
        .arg("--host")
        .arg(format!("unix://{}", h.socket.display()))
        .args(["logs", "-f", &name])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let took = started.elapsed();
    assert!(follow.status.success(), "{}", stderr(&follow));
    let out = stdout(&follow);
    assert_eq!(
        out,
        format!("{marker}-out\n{marker}-err\n"),
        "logs -f: {out:?}"
    );
    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_secs(15),
        "logs -f took {took:?}: it must last until the command exits, and no longer"
    );

    // Exited, with its code; not listed without -a.
    let e = wait_exited(&h, &name, Duration::from_secs(5));
    assert_eq!(e["ExitCode"], 3, "{e}");
    assert!(
        e["Status"].as_str().unwrap().starts_with("Exited (3) "),
        "{e}"
    );
    assert!(e["FinishedAt"].is_string(), "{e}");
    assert!(ps_entry(&h, false, &name).is_none());
    let table = h.vs_ok(&["ps", "-a"]);
    assert!(
        table
            .lines()
            .any(|l| l.contains(&name) && l.contains("Exited (3)")),
        "{table}"
    );
    // Its endpoint went, as Docker releases a stopped container's: the
    // address and the namespace are free, the network's name stays.
    assert_eq!(e["Addresses"], serde_json::json!([]));
    assert_eq!(e["Networks"], serde_json::json!([net]));
    assert!(!netns_exists(&name), "the namespace of an exited container");
    assert!(!has_container(&h, &net, &name));
    let again = h.run("b", &net, &["--ip", "10.237.1.50"]);
    assert_eq!(h.ip_of(&again, &net), "10.237.1.50");

    // The log is still there, and `logs -f` of an exited container ends.
    assert_eq!(
        h.vs_ok(&["logs", &name]),
        format!("{marker}-out\n{marker}-err\n")
    );
    assert_eq!(
        h.vs_ok(&["logs", "-f", &name]),
        format!("{marker}-out\n{marker}-err\n")
    );
    let inspect = h.vs_json(&["inspect", &name]);
    assert_eq!(inspect[0]["State"]["Status"], "exited");
    assert_eq!(inspect[0]["State"]["ExitCode"], 3);

    // rm removes the exited container and its log.
    assert!(log_dir(&h, &id).exists());
    h.vs_ok(&["rm", &name]);
    assert!(ps_entry(&h, true, &name).is_none());
    assert!(!log_dir(&h, &id).exists());
}

#[test]
fn the_log_keeps_at_most_two_mebibytes_the_newest() {
    require_root!();
    let mut h = Host::start(&[]);
    let net = h.network("n", &["--subnet", "10.237.2.0/24"]);
    let name = unique("big");
    h.containers.push(name.clone());
    // 2.7 MB of numbered lines, more than the bound (two files of 1 MiB).
    let id = h
        .vs_ok(&run_detached(&name, &net, &[], &["seq", "1", "400000"]))
        .trim()
        .to_string();
    let e = wait_exited(&h, &name, Duration::from_secs(30));
    assert_eq!(e["ExitCode"], 0, "{e}");
    let dir = log_dir(&h, &id);
    for f in ["output.log", "output.log.1"] {
        let len = std::fs::metadata(dir.join(f)).unwrap().len();
        assert!(len <= 1024 * 1024, "{f}: {len} bytes");
    }
    let out = h.vs(&["logs", &name]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.len() <= 2 * 1024 * 1024, "{} bytes", text.len());
    assert!(text.len() > 1024 * 1024, "{} bytes", text.len());
    // The newest lines, each once, in order, up to the last one; only the
    // first may be cut.
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(*lines.last().unwrap(), "400000");
    let nums: Vec<u64> = lines[1..].iter().map(|l| l.parse().unwrap()).collect();
    assert!(nums[0] > 1, "the oldest lines were dropped");
    assert!(
        nums.windows(2).all(|w| w[1] == w[0] + 1),
        "lines missing or repeated"
    );
}

#[test]
fn foreground_run_stays_exited_until_rm_and_prune_removes_the_right_things() {
    require_root!();
    let mut h = Host::start(&[]);
    let used = h.network("u", &["--subnet", "10.237.3.0/24"]);
    let unused = h.network("x", &["--subnet", "10.237.4.0/24"]);
    let of_exited = h.network("e", &["--subnet", "10.237.5.0/24"]);

    // A foreground run without --rm: its exit code, then listed exited.
    let fg = unique("fg");
    h.containers.push(fg.clone());
    let run_fg = |code: &str| {
        let script = format!("exit {code}");
        h.vs(&[
            "run",
            "--name",
            &fg,
            "--network",
            &of_exited,
            "--",
            "sh",
            "-c",
            &script,
        ])
    };
    let out = run_fg("5");
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    let e = wait_exited(&h, &fg, Duration::from_secs(5));
    assert_eq!((&e["State"], &e["ExitCode"]), (&"exited".into(), &5.into()));
    assert!(!netns_exists(&fg));
    // Its name is taken until `vswitch rm`, as with Docker.
    let out = run_fg("0");
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains(&format!("vswitch rm {fg}")),
        "{}",
        stderr(&out)
    );
    // Its output went to the terminal: `logs` says so.
    let out = h.vs(&["logs", &fg]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("foreground"), "{}", stderr(&out));
    h.vs_ok(&["rm", &fg]);
    assert_eq!(run_fg("0").status.code(), Some(0));

    // Two more exited (one with --rm leaves nothing), one running, and a
    // container `network connect` made: prune takes the exited ones only.
    let quick = unique("q");
    h.containers.push(quick.clone());
    h.vs_ok(&run_detached(&quick, &used, &[], &["true"]));
    let gone = unique("r");
    h.vs_ok(&run_rm(&gone, &used, &["true"]));
    assert!(ps_entry(&h, true, &gone).is_none(), "--rm leaves nothing");
    let running = h.run("s", &used, &[]);
    let ns = Netns::new("vsc");
    let attached = unique("att");
    h.vs_ok(&[
        "network",
        "connect",
        "--netns",
        &format!("/run/netns/{}", ns.name),
        &used,
        &attached,
    ]);
    // A container without a `run` process: running while its endpoint is.
    let e = ps_entry(&h, false, &attached).expect("ps lists connected containers");
    assert_eq!(e["State"], "running");
    assert_eq!(e["Command"], serde_json::json!([]));
    assert_eq!(e["Addresses"].as_array().unwrap().len(), 1, "{e}");
    wait_exited(&h, &quick, Duration::from_secs(10));

    // Network prune: only the network nothing uses or names; an exited
    // container still names its network, as in Docker.
    let out = h.vs_ok(&["network", "prune"]);
    assert_eq!(out, format!("Deleted Networks:\n{unused}\n"));
    let ls = h.vs_json(&["network", "ls", "--format", "json"]);
    let names: Vec<&str> = ls
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["Name"].as_str().unwrap())
        .collect();
    for n in [&used, &of_exited, "host", "none"] {
        assert!(names.contains(&n), "{n} kept: {names:?}");
    }

    let out = h.vs_ok(&["container", "prune"]);
    let mut pruned: Vec<&str> = out.lines().skip(1).collect();
    pruned.sort();
    let mut want = vec![fg.as_str(), quick.as_str()];
    want.sort();
    assert_eq!(out.lines().next(), Some("Deleted Containers:"), "{out}");
    assert_eq!(pruned, want);
    let left: Vec<String> = h
        .vs_json(&["ps", "-a", "--format", "json"])
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["Name"].as_str().unwrap().to_string())
        .collect();
    let mut left = left;
    left.sort();
    let mut want = vec![running.clone(), attached.clone()];
    want.sort();
    assert_eq!(left, want);
    assert_eq!(
        h.vs_ok(&["container", "prune"]),
        "",
        "nothing left to prune"
    );
    // Now nothing names `of_exited`.
    assert_eq!(
        h.vs_ok(&["network", "prune"]),
        format!("Deleted Networks:\n{of_exited}\n")
    );

    // Unknown names: a sentence and a non-zero exit.
    for args in [
        vec!["rm", "nosuchcontainer"],
        vec!["logs", "nosuchcontainer"],
        vec!["logs", "-f", "nosuchcontainer"],
    ] {
        let out = h.vs(&args);
        assert!(!out.status.success(), "{args:?}");
        assert!(
            stderr(&out).contains("not found"),
            "{args:?}: {}",
            stderr(&out)
        );
    }
    // `rm` of several goes on past an unknown one; `-f` is accepted.
    let out = h.vs(&["rm", "-f", "nosuchcontainer", &running]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(stdout(&out), format!("{running}\n"));
    h.vs_ok(&["network", "disconnect", &used, &attached]);
    assert!(ps_entry(&h, true, &attached).is_none());
}

#[test]
fn exits_while_the_daemon_is_down_or_without_a_supervisor_are_found() {
    require_root!();
    let mut h = Host::start(&[]);
    let net = h.network("n", &["--subnet", "10.237.6.0/24"]);
    let soon = unique("soon");
    h.containers.push(soon.clone());
    h.vs_ok(&run_detached(
        &soon,
        &net,
        &[],
        &["sh", "-c", "sleep 1; exit 6"],
    ));
    let long = h.run("long", &net, &[]);
    let orphan = h.run("orph", &net, &[]);

    h.kill9();
    // `soon` exits meanwhile; its supervisor cannot tell anyone.
    std::thread::sleep(Duration::from_secs(7));
    h.restart();
    let e = wait_exited(&h, &soon, Duration::from_secs(5));
    assert_eq!(e["ExitCode"], 6, "the exit code from the exit file: {e}");
    assert!(!netns_exists(&soon));
    for c in [&long, &orphan] {
        let e = ps_entry(&h, false, c).expect("still running after the restart");
        assert_eq!(e["State"], "running");
    }

    // A supervisor killed: the container runs while its command does, and
    // is exited, code unknown, when the command ends.
    let sup = supervisor_of(&orphan);
    kill9(sup);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(ps_entry(&h, false, &orphan).unwrap()["State"], "running");
    let pid = h.vs_json(&["inspect", &orphan])[0]["Pid"].as_i64().unwrap() as i32;
    kill9(pid);
    let e = wait_exited(&h, &orphan, Duration::from_secs(5));
    assert_eq!(e["ExitCode"], Value::Null, "{e}");
    assert!(
        e["Status"]
            .as_str()
            .unwrap()
            .starts_with("Exited (unknown)"),
        "{e}"
    );

    // `rm` stops a running one (and its supervisor, which reports 143).
    let sup = supervisor_of(&long);
    h.vs_ok(&["rm", &long]);
    assert!(!alive(sup), "the supervisor ended with its command");
    assert!(ps_entry(&h, true, &long).is_none());
}

/// The pid of `vswitch __supervise --name NAME`.
fn supervisor_of(name: &str) -> i32 {
    let pattern = format!("__supervise --name {name} ");
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains(&pattern) && alive(pid) {
            return pid;
        }
    }
    panic!("no supervisor of {name}");
}

fn kill9(pid: i32) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
}

/// `vswitch rm` signals the pids registered for a container, so the API
/// takes only the container's own command (in its network namespace) and
/// that command's parent: a process of the host, or a supervisor that is
/// not the parent, is refused and the container is left as it was.
#[test]
fn only_the_containers_own_processes_are_registered() {
    require_root!();
    let mut h = Host::start(&[]);
    let net = h.network("own", &["--subnet", "10.238.0.0/24"]);
    let c = h.run("own", &net, &[]);
    let pid = h.vs_json(&["inspect", &c])[0]["Pid"].as_u64().unwrap();
    let mut outsider = std::process::Command::new("sleep")
        .arg("30")
        .spawn()
        .unwrap();
    let post = |body: String| {
        ok(&[
            "curl",
            "-s",
            "--unix-socket",
            h.socket.to_str().unwrap(),
            "-X",
            "POST",
            "-d",
            &body,
            &format!("http://vswitchd/v1/containers/{c}"),
        ])
    };
    let foreign = post(format!("{{\"Pid\": {}}}", outsider.id()));
    assert!(
        foreign.contains("is not in the network namespace"),
        "{foreign}"
    );
    let stranger = post(format!(
        "{{\"Pid\": {pid}, \"SupervisorPid\": {}}}",
        outsider.id()
    ));
    assert!(stranger.contains("is not the parent"), "{stranger}");
    let _ = outsider.kill();
    let _ = outsider.wait();
    // Still running, with its own pid.
    let v = h.vs_json(&["inspect", &c]);
    assert_eq!(v[0]["Pid"].as_u64(), Some(pid), "{v}");
    assert!(ps_entry(&h, false, &c).is_some());
}
