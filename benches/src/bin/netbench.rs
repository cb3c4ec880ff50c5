//! `netbench`: the end-to-end network benchmark and the project's
//! scoreboard. In one run it measures the same workloads (iperf3 TCP
//! throughput with one and two streams, sockperf TCP request/response
//! latency, the 64-byte packet rate, ping RTT) between two endpoints A and B
//! on every selected scenario, in groups of references against vswitch:
//! `local`, a Linux bridge (Docker's bridge driver) and Open vSwitch's
//! userspace datapath (with and without its userspace TSO) against two
//! containers on a vswitch bridge network; `overlay`, kernel `vxlan`
//! devices bridged to containers (Docker's overlay driver) and OVS's
//! userspace VXLAN against two vswitchd hosts carrying an overlay network
//! (plain, and with `--opt encrypted`); `publish` and `egress` against
//! userspace forwarders. It prints a table per group with each figure and
//! vswitch's ratio to each reference, every group's ratios side by side,
//! the issue's targets met or not, and can write everything as JSON.
//!
//! Runs as root. Traffic goes only between namespaces it creates; nothing is
//! routed out of them. Everything it makes carries the pid in its name and
//! is removed at the end, on failure, and on Ctrl-C (a signal thread sets a
//! flag; waits notice it, kill their child, and teardown runs).
//!
//! ```text
//! netbench [--duration SECS] [--only GROUP|SCENARIO,...] [--json PATH]
//!          [--vswitchd PATH] [--vswitch PATH]
//! ```

// This file is the crate root, so its modules sit in `netbench/` by path.
#[path = "netbench/capture.rs"]
mod capture;
#[path = "netbench/cpu.rs"]
mod cpu;
#[path = "netbench/docker.rs"]
mod docker;
#[path = "netbench/exec.rs"]
mod exec;
#[path = "netbench/overlay.rs"]
mod overlay;
#[path = "netbench/ovs.rs"]
mod ovs;
#[path = "netbench/policy.rs"]
mod policy;
#[path = "netbench/pps.rs"]
mod pps;
#[path = "netbench/publish.rs"]
mod publish;
#[path = "netbench/rate.rs"]
mod rate;
#[path = "netbench/report.rs"]
mod report;
#[path = "netbench/rootless.rs"]
mod rootless;
#[path = "netbench/scenario.rs"]
mod scenario;
#[path = "netbench/workload.rs"]
mod workload;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use serde_json::json;

use crate::cpu::CpuSampler;
use crate::exec::{in_ns, interrupted, on_path, Mode, Shell};
use crate::report::{MachineInfo, ScenarioResult, WorkloadResult};
use crate::scenario::{Endpoints, Env, Scenario};
use crate::workload::Workload;

/// Everything that can go wrong in netbench.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A program could not be started (not installed, not executable).
    #[error("cannot start `{argv}`: {source}")]
    Spawn {
        argv: String,
        #[source]
        source: std::io::Error,
    },
    /// A program exited with a failure status.
    #[error("`{argv}` failed ({status}): {stderr}")]
    Failed {
        argv: String,
        status: std::process::ExitStatus,
        stderr: String,
    },
    /// A program ran past its time limit and was killed.
    #[error("`{argv}` did not finish within {limit:?} and was killed")]
    Timeout { argv: String, limit: Duration },
    /// The user pressed Ctrl-C (or sent SIGTERM/SIGHUP).
    #[error("interrupted")]
    Interrupted,
    /// A tool printed something netbench could not read.
    #[error("cannot read {tool}'s output: {what}")]
    Parse { tool: &'static str, what: String },
    /// A file or OS operation failed.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// A precondition or setup step failed; the message says what to do.
    #[error("{0}")]
    Setup(String),
    /// A scenario cannot run on this machine (a peer program is missing);
    /// it is skipped with this note, which is not a failure.
    #[error("{0}")]
    Unavailable(String),
}

/// Measure vswitch against the kernel doing the same job.
#[derive(Debug, Parser)]
#[command(name = "netbench", version, about)]
struct Args {
    /// Seconds per throughput and latency run (iperf3 -t, sockperf -t).
    #[arg(long, value_name = "SECS", default_value_t = 5,
          value_parser = clap::value_parser!(u32).range(1..=300))]
    duration: u32,
    /// Run only these scenario groups or scenarios (comma-separated), e.g.
    /// `local`, `vswitch-bridge`.
    #[arg(long, value_name = "GROUP", value_delimiter = ',')]
    only: Vec<String>,
    /// Also write every figure and the machine's description as JSON here.
    #[arg(long, value_name = "PATH")]
    json: Option<PathBuf>,
    /// The vswitchd binary (default: next to this executable).
    #[arg(long, value_name = "PATH")]
    vswitchd: Option<PathBuf>,
    /// The vswitch client binary (default: next to this executable).
    #[arg(long, value_name = "PATH")]
    vswitch: Option<PathBuf>,
    /// Internal (the connection-rate workload's server): answer one byte
    /// per connection on this TCP port for `--lifetime` seconds, then exit.
    #[arg(
        long,
        value_name = "PORT",
        hide = true,
        conflicts_with = "connect_rate"
    )]
    echo_server: Option<u16>,
    /// Internal: the echo server's lifetime in seconds.
    #[arg(long, value_name = "SECS", hide = true, default_value_t = 60)]
    lifetime: u64,
    /// Internal (the connection-rate workload's client): connect, echo one
    /// byte and close against ADDR for `--duration` seconds; print JSON.
    #[arg(long, value_name = "ADDR", hide = true)]
    connect_rate: Option<std::net::SocketAddr>,
    /// Internal: connections the client keeps open at once.
    #[arg(long, value_name = "N", hide = true, default_value_t = rate::WORKERS,
          value_parser = clap::value_parser!(u32).range(1..=64))]
    workers: u32,
    /// Internal (the packet-rate workload's receiver): count this run's
    /// datagrams on this UDP port until a second after the last one (or
    /// `--lifetime`); print JSON.
    #[arg(
        long,
        value_name = "PORT",
        hide = true,
        conflicts_with_all = ["connect_rate", "echo_server", "udp_flood"]
    )]
    udp_sink: Option<u16>,
    /// Internal (the packet-rate workload's sender): 64-byte frames to ADDR
    /// for `--duration` seconds; print JSON.
    #[arg(
        long,
        value_name = "ADDR",
        hide = true,
        conflicts_with_all = ["connect_rate", "echo_server"]
    )]
    udp_flood: Option<std::net::SocketAddr>,
    /// Internal: the packet-rate run's tag (both ends the same).
    #[arg(long, value_name = "N", hide = true, default_value_t = 0)]
    tag: u32,
}

fn main() -> ExitCode {
    let args = Args::parse();
    // The connection-rate workload's two ends: no signal thread, so the
    // SIGTERM that stops them ends them at once.
    if let Some(port) = args.echo_server {
        return match rate::echo_server(port, Duration::from_secs(args.lifetime)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("netbench --echo-server: {e}");
                ExitCode::FAILURE
            }
        };
    }
    if let Some(port) = args.udp_sink {
        return report_json(
            "--udp-sink",
            pps::sink(port, Duration::from_secs(args.lifetime), args.tag),
        );
    }
    if let Some(addr) = args.udp_flood {
        return report_json(
            "--udp-flood",
            pps::flood(addr, Duration::from_secs(args.duration.into()), args.tag),
        );
    }
    if let Some(addr) = args.connect_rate {
        let r = rate::connect_rate(
            addr,
            Duration::from_secs(args.duration.into()),
            args.workers,
        );
        println!("{}", json!(r));
        return ExitCode::SUCCESS;
    }
    // Before any other thread exists, so every thread inherits the mask.
    if let Err(e) = exec::install_signal_thread() {
        eprintln!("netbench: {e}");
        return ExitCode::FAILURE;
    }
    match run(&args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(Error::Interrupted) => {
            eprintln!("netbench: interrupted; everything it made is removed");
            ExitCode::from(130)
        }
        Err(e) => {
            eprintln!("netbench: {e}");
            ExitCode::FAILURE
        }
    }
}

/// A hidden mode's end: its report as one JSON line, or the error.
fn report_json<T: serde::Serialize>(mode: &str, r: Result<T, Error>) -> ExitCode {
    match r {
        Ok(r) => {
            println!("{}", json!(r));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("netbench {mode}: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The run's work directory (logs, vswitchd state); removed on drop.
#[derive(Debug)]
struct WorkDir(PathBuf);

impl Drop for WorkDir {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.0) {
            eprintln!("netbench: cleanup: removing {}: {e}", self.0.display());
        }
    }
}

fn sibling(name: &str) -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join(name)))
        .unwrap_or_else(|| PathBuf::from(name))
}

/// Chooses the scenarios `--only` names; every name must match something.
fn select(all: Vec<Box<dyn Scenario>>, only: &[String]) -> Result<Vec<Box<dyn Scenario>>, Error> {
    if only.is_empty() {
        return Ok(all);
    }
    for name in only {
        if !all.iter().any(|s| s.group() == name || s.key() == name) {
            let mut known: Vec<&str> = Vec::new();
            for n in all
                .iter()
                .map(|s| s.group())
                .chain(all.iter().map(|s| s.key()))
            {
                if !known.contains(&n) {
                    known.push(n);
                }
            }
            return Err(Error::Setup(format!(
                "--only {name}: no such scenario or group; choose from {}",
                known.join(", ")
            )));
        }
    }
    Ok(all
        .into_iter()
        .filter(|s| only.iter().any(|n| n == s.group() || n == s.key()))
        .collect())
}

/// The first line a tool prints about its version.
fn version_line(sh: &Shell, argv: &[&str]) -> String {
    match sh.run(argv, Duration::from_secs(10), Mode::Interruptible) {
        Ok(out) => {
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            text.lines()
                .map(str::trim)
                .find(|l| !l.is_empty())
                .unwrap_or("")
                .to_string()
        }
        Err(e) => format!("unknown ({e})"),
    }
}

/// Returns whether every setup, workload and teardown succeeded.
fn run(args: &Args) -> Result<bool, Error> {
    if !nix::unistd::geteuid().is_root() {
        return Err(Error::Setup(
            "netbench needs root (it makes network namespaces, veths and TAP devices); run it with sudo".into(),
        ));
    }
    let scenarios = select(scenario::all(), &args.only)?;
    for tool in ["ip", "iperf3", "ping"] {
        if !on_path(tool) {
            return Err(Error::Setup(format!(
                "`{tool}` is not installed; install it (Debian: iproute2, iperf3, iputils-ping)"
            )));
        }
    }
    let have_sockperf = on_path("sockperf");
    let pid = std::process::id();
    let dir = std::env::temp_dir().join(format!("netbench-{pid}"));
    std::fs::create_dir_all(&dir).map_err(|e| Error::Io {
        context: format!("creating {}", dir.display()),
        source: e,
    })?;
    let work = WorkDir(dir);
    let sh = Shell::new(&work.0);
    let env = Env {
        sh: sh.clone(),
        tag: format!("{pid:x}"),
        vswitchd: args.vswitchd.clone().unwrap_or_else(|| sibling("vswitchd")),
        vswitch: args.vswitch.clone().unwrap_or_else(|| sibling("vswitch")),
        duration: args.duration,
    };

    let mut tools = BTreeMap::new();
    tools.insert("iperf3".into(), version_line(&sh, &["iperf3", "--version"]));
    tools.insert("ping".into(), version_line(&sh, &["ping", "-V"]));
    tools.insert(
        "sockperf".into(),
        if have_sockperf {
            version_line(&sh, &["sockperf", "--version"])
        } else {
            "not installed".into()
        },
    );
    if env.vswitch.is_file() {
        tools.insert(
            "vswitch".into(),
            version_line(&sh, &[&env.vswitch.display().to_string(), "--version"]),
        );
    }
    // Which build ran: the binary and when it was built; the checkout's
    // commit now is only a hint (the binary may be older).
    if let Ok(modified) = std::fs::metadata(&env.vswitchd).and_then(|m| m.modified()) {
        tools.insert(
            "vswitchd_binary".into(),
            format!(
                "{} (built {})",
                env.vswitchd.display(),
                report::rfc3339_utc(modified)
            ),
        );
    }
    // Built from an export (no `.git`): say so rather than git's error.
    let commit = sh
        .ok(
            &[
                "git",
                "-C",
                env!("CARGO_MANIFEST_DIR"),
                "describe",
                "--always",
                "--dirty",
            ],
            Duration::from_secs(10),
        )
        .map(|out| out.trim().to_string())
        .unwrap_or_else(|_| {
            format!(
                "unknown ({} is not a git checkout)",
                env!("CARGO_MANIFEST_DIR")
            )
        });
    tools.insert("workspace_git_at_run".into(), commit);
    let machine = MachineInfo::collect(tools);

    let mut results = Vec::new();
    for s in &scenarios {
        if interrupted() {
            break;
        }
        results.push(run_scenario(s.as_ref(), &env, have_sockperf));
    }
    if interrupted() {
        return Err(Error::Interrupted);
    }

    let table = report::render(&results, args.duration);
    println!(
        "netbench: {} × {} ({} RAM), kernel {}, {}, load average at start {}\n",
        machine.nproc,
        machine.cpu_model,
        machine.memory_total,
        machine.kernel,
        machine.date,
        machine
            .loadavg
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    print!("{table}");
    if let Some(path) = &args.json {
        write_json(path, args, &machine, &results)?;
        eprintln!("netbench: wrote {}", path.display());
    }
    Ok(!results.iter().any(ScenarioResult::failed))
}

fn write_json(
    path: &Path,
    args: &Args,
    machine: &MachineInfo,
    results: &[ScenarioResult],
) -> Result<(), Error> {
    let doc = json!({
        "machine": machine,
        "config": {
            "duration_s": args.duration,
            "only": args.only,
            "ping": {"count": 200, "interval_s": 0.01},
        },
        "metrics": workload::METRICS,
        "scenarios": results,
        "comparisons": report::comparisons(results),
        "targets": report::targets(results),
    });
    let text = serde_json::to_string_pretty(&doc).map_err(|e| Error::Io {
        context: "encoding JSON".into(),
        source: e.into(),
    })?;
    std::fs::write(path, text + "\n").map_err(|e| Error::Io {
        context: format!("writing {}", path.display()),
        source: e,
    })
}

/// Sets up one scenario, runs every workload, tears down (always).
fn run_scenario(s: &dyn Scenario, env: &Env, have_sockperf: bool) -> ScenarioResult {
    let mut result = ScenarioResult {
        key: s.key().into(),
        title: s.title().into(),
        group: s.group().into(),
        baseline: s.is_baseline(),
        compared_to: s.also_compared_to().iter().map(|k| k.to_string()).collect(),
        description: s.description().into(),
        metrics: s
            .workloads()
            .iter()
            .flat_map(|w| w.metric_keys().iter().map(|k| k.to_string()))
            .collect(),
        ..Default::default()
    };
    eprintln!("netbench: [{}] setting up: {}", s.key(), s.description());
    let deployment = match s.setup(env) {
        Ok(d) => d,
        Err(Error::Unavailable(why)) => {
            eprintln!("netbench: [{}] skipped: {why}", s.key());
            result.skipped = Some(why);
            return result;
        }
        Err(e) => {
            eprintln!("netbench: [{}] setup failed: {e}", s.key());
            result.setup_error = Some(e.to_string());
            return result;
        }
    };
    let ep = deployment.endpoints().clone();
    result.endpoints = Some(ep.clone());
    match wait_reachable(&env.sh, &ep, Duration::from_secs(15)) {
        Ok(()) => {
            for w in s.workloads() {
                if interrupted() {
                    break;
                }
                result
                    .workloads
                    .push(run_workload(&w, env, &ep, have_sockperf));
                // Let the last run's connections close and queues drain.
                std::thread::sleep(Duration::from_millis(500));
            }
        }
        Err(e) => {
            eprintln!("netbench: [{}] {e}", s.key());
            result.setup_error = Some(e.to_string());
        }
    }
    eprintln!("netbench: [{}] tearing down", s.key());
    result.teardown_errors = deployment
        .teardown()
        .into_iter()
        .map(|e| {
            eprintln!("netbench: [{}] cleanup: {e}", s.key());
            e.to_string()
        })
        .collect();
    result
}

fn run_workload(w: &Workload, env: &Env, ep: &Endpoints, have_sockperf: bool) -> WorkloadResult {
    let mut r = WorkloadResult {
        name: w.name(),
        tool: w.tool().into(),
        ..Default::default()
    };
    if *w == Workload::TcpRequestResponse && !have_sockperf {
        r.skipped = Some("sockperf is not installed (Debian: apt install sockperf)".into());
        return r;
    }
    eprintln!("netbench:   {} {} -> {}", w.name(), ep.a_ns, ep.b_ip);
    let sampler = CpuSampler::start(&ep.watched);
    match w.run(&env.sh, ep, env.duration) {
        Ok(m) => {
            r.cpu = Some(sampler.finish());
            r.values = m
                .values
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect();
            r.detail = m.detail;
            r.note = m.note;
            eprintln!("netbench:   {:?}", r.values);
            let missing: Vec<&str> = w
                .metric_keys()
                .iter()
                .copied()
                .filter(|k| !r.values.get(*k).is_some_and(|v| v.is_finite()))
                .collect();
            if !missing.is_empty() {
                r.error = Some(format!("no usable figure for {}", missing.join(", ")));
            }
        }
        Err(e) => {
            eprintln!("netbench:   failed: {e}");
            r.error = Some(e.to_string());
        }
    }
    r
}

/// Pings B from A until it answers (ARP resolved, ports up), bounded.
fn wait_reachable(sh: &Shell, ep: &Endpoints, within: Duration) -> Result<(), Error> {
    let start = std::time::Instant::now();
    let b = ep.b_ip.to_string();
    while start.elapsed() < within {
        let out = sh.run(
            &in_ns(&ep.a_ns, &["ping", "-n", "-c", "1", "-W", "1", &b]),
            Duration::from_secs(5),
            Mode::Interruptible,
        )?;
        if out.status.success() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(Error::Setup(format!(
        "{} cannot reach {b} within {within:?}",
        ep.a_ns
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    #[rstest]
    #[case(&[], &["kernel-bridge", "ovs-netdev-tso", "ovs-netdev", "vswitch-bridge",
                  "vswitch-nocapture", "vswitch-capture-headers", "vswitch-capture-whole",
                  "vswitch-samenet", "vswitch-routed",
                  "kernel-vxlan", "ovs-netdev-vxlan", "vswitch-overlay", "vswitch-overlay-encrypted",
                  "socat-relay", "pasta-publish", "vswitch-publish",
                  "pasta-egress", "slirp4netns-egress", "vswitch-egress",
                  "pasta-publish-rootless", "vswitch-publish-rootless",
                  "pasta-egress-rootless", "vswitch-egress-rootless",
                  "docker-bridge", "docker-vswitch"])]
    #[case(&["publish-rootless", "egress-rootless"],
           &["pasta-publish-rootless", "vswitch-publish-rootless",
             "pasta-egress-rootless", "vswitch-egress-rootless"])]
    #[case(&["publish", "egress"], &["socat-relay", "pasta-publish", "vswitch-publish",
                                     "pasta-egress", "slirp4netns-egress", "vswitch-egress"])]
    #[case(&["local"], &["kernel-bridge", "ovs-netdev-tso", "ovs-netdev", "vswitch-bridge"])]
    #[case(&["overlay"], &["kernel-vxlan", "ovs-netdev-vxlan", "vswitch-overlay",
                           "vswitch-overlay-encrypted"])]
    #[case(&["vswitch-bridge"], &["vswitch-bridge"])]
    #[case(&["capture"], &["vswitch-nocapture", "vswitch-capture-headers", "vswitch-capture-whole"])]
    #[case(&["policy"], &["vswitch-samenet", "vswitch-routed"])]
    #[case(&["vswitch-overlay", "local"], &["kernel-bridge", "ovs-netdev-tso", "ovs-netdev",
                                            "vswitch-bridge", "vswitch-overlay"])]
    fn only_selects_groups_and_scenarios(#[case] only: &[&str], #[case] want: &[&str]) {
        let only: Vec<String> = only.iter().map(|s| s.to_string()).collect();
        let got: Vec<&str> = select(scenario::all(), &only)
            .unwrap()
            .iter()
            .map(|s| s.key())
            .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn only_rejects_unknown_names_with_the_choices() {
        let err = select(scenario::all(), &["overlay-quic".into()]).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("overlay-quic") && msg.contains("local") && msg.contains("overlay,"),
            "{msg}"
        );
    }

    #[test]
    fn arguments_parse() {
        let a = Args::try_parse_from(["netbench", "--duration", "2", "--only", "local"]).unwrap();
        assert_eq!(a.duration, 2);
        assert_eq!(a.only, ["local"]);
        assert!(Args::try_parse_from(["netbench", "--duration", "0"]).is_err());
    }
}
