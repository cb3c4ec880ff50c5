//! `vswitch demo`: a self-contained tour on real namespaces.
//!
//! It starts a private vswitchd inside a network namespace of its own (so
//! nothing it does can reach beyond this machine), makes a network, runs
//! two containers, pings one from the other by name, resolves names through
//! the embedded DNS, shows `inspect`, `ps`, a `trace`, a `doctor`, a `capture` of a
//! ping, a policy that lets one network reach a container of another, and
//! `stats`, then removes everything, also when a step fails.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::sandbox;

struct Demo {
    exe: PathBuf,
    host_ns: String,
    dir: PathBuf,
    socket: PathBuf,
    daemon: Option<Child>,
    containers: Vec<String>,
    networks: Vec<String>,
}

impl Demo {
    fn vswitch(&self, args: &[&str]) -> Result<String> {
        println!("$ vswitch {}", args.join(" "));
        let out = Command::new(&self.exe)
            .arg("--host")
            .arg(format!("unix://{}", self.socket.display()))
            .args(args)
            .stderr(Stdio::inherit())
            .output()
            .context("running vswitch")?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        print!("{text}");
        if !out.status.success() {
            bail!("`vswitch {}` failed", args.join(" "));
        }
        Ok(text)
    }

    /// `vswitch run -d --name NAME --network NET [FLAGS...] -- sleep 600`;
    /// the container is removed on drop.
    fn run_sleeper(&mut self, name: &str, net: &str, flags: &[&str]) -> Result<()> {
        let mut args = vec!["run", "-d", "--name", name, "--network", net];
        args.extend_from_slice(flags);
        args.extend_from_slice(&["--", "sleep", "600"]);
        self.vswitch(&args)?;
        self.containers.push(name.to_string());
        Ok(())
    }

    /// `vswitch capture FROM -c 2 --filter icmp` while FROM pings TO once.
    fn capture_ping(&self, from: &str, to: &str) -> Result<()> {
        println!("$ vswitch capture {from} -c 2 --filter icmp &");
        let mut capture = Command::new(&self.exe)
            .arg("--host")
            .arg(format!("unix://{}", self.socket.display()))
            .args(["capture", from, "-c", "2", "--filter", "icmp"])
            .spawn()
            .context("running vswitch capture")?;
        // Until the capture runs on the datapath.
        let started = std::time::Instant::now();
        loop {
            let out = Command::new(&self.exe)
                .arg("--host")
                .arg(format!("unix://{}", self.socket.display()))
                .args(["stats", "--json"])
                .output()
                .context("running vswitch stats")?;
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
            if v["Captures"].as_u64() == Some(1) {
                break;
            }
            if started.elapsed() > std::time::Duration::from_secs(10) {
                let _ = capture.kill();
                bail!("the capture did not start");
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let pinged = self.in_container(from, &["ping", "-4", "-c", "1", "-q", to])?;
        let started = std::time::Instant::now();
        while capture.try_wait()?.is_none() {
            if started.elapsed() > std::time::Duration::from_secs(10) {
                let _ = capture.kill();
                bail!("the capture did not see the ping");
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        if !pinged || !capture.wait()?.success() {
            bail!("ping from {from} to {to} under capture failed");
        }
        Ok(())
    }

    fn in_container(&self, name: &str, argv: &[&str]) -> Result<bool> {
        println!("$ ip netns exec {name} {}", argv.join(" "));
        let argv: Vec<String> = argv.iter().map(|s| s.to_string()).collect();
        let status = sandbox::command_in_netns(name, &argv)
            .map_err(anyhow::Error::msg)?
            .status()
            .with_context(|| format!("running {}", argv[0]))?;
        Ok(status.success())
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        println!("\n# cleaning up");
        for c in std::mem::take(&mut self.containers) {
            let _ = self.vswitch(&["rm", &c]);
        }
        for n in std::mem::take(&mut self.networks) {
            let _ = self.vswitch(&["network", "rm", &n]);
        }
        if let Some(mut d) = self.daemon.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(d.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let _ = d.wait();
        }
        let _ = sandbox::delete_netns(&self.host_ns);
        let _ = std::fs::remove_dir_all(&self.dir);
        println!("done: no namespace, device or file of the demo is left");
    }
}

fn wait_for_socket(path: &Path, daemon: &mut Child) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Ok(());
        }
        if let Some(status) = daemon.try_wait()? {
            bail!("vswitchd exited at start ({status})");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("vswitchd did not open {} within 10 s", path.display())
}

/// Runs the tour.
pub async fn run(vswitchd: Option<PathBuf>) -> Result<()> {
    tokio::task::spawn_blocking(move || tour(vswitchd)).await?
}

fn tour(vswitchd: Option<PathBuf>) -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!(
            "the demo makes network namespaces and TAP devices, which needs root; run it with sudo"
        );
    }
    let exe = std::env::current_exe().context("finding this program")?;
    let daemon_exe = vswitchd.unwrap_or_else(|| exe.with_file_name("vswitchd"));
    if !daemon_exe.exists() {
        bail!(
            "vswitchd not found at {}; build it (`cargo build --release`) or pass --vswitchd PATH",
            daemon_exe.display()
        );
    }
    let tag = std::process::id();
    let dir = std::env::temp_dir().join(format!("vswitch-demo-{tag}"));
    std::fs::create_dir_all(&dir)?;
    let mut demo = Demo {
        exe,
        host_ns: format!("vsdemo-host-{tag}"),
        socket: dir.join("vswitchd.sock"),
        dir,
        daemon: None,
        containers: Vec::new(),
        networks: Vec::new(),
    };
    println!(
        "# a private vswitchd in namespace {} (nothing leaves this machine)",
        demo.host_ns
    );
    sandbox::create_netns(&demo.host_ns).map_err(anyhow::Error::msg)?;
    sandbox::loopback_up(&demo.host_ns).map_err(anyhow::Error::msg)?;
    let argv: Vec<String> = vec![
        daemon_exe.display().to_string(),
        "--state-dir".into(),
        demo.dir.join("state").display().to_string(),
        "--socket".into(),
        demo.socket.display().to_string(),
        "--node-name".into(),
        "demo-host".into(),
        // Upstream DNS on the demo namespace's own loopback: nothing leaves.
        "--dns".into(),
        "127.0.0.1".into(),
        "--log-level".into(),
        "warn".into(),
    ];
    let mut daemon = sandbox::command_in_netns(&demo.host_ns, &argv)
        .map_err(anyhow::Error::msg)?
        .spawn()
        .context("starting vswitchd")?;
    let started = wait_for_socket(&demo.socket, &mut daemon);
    demo.daemon = Some(daemon);
    started?;

    let net = format!("demo{tag}");
    let (a, b) = (format!("web-{tag}"), format!("db-{tag}"));
    println!("\n# a network, with a subnet chosen by IPAM");
    demo.vswitch(&["network", "create", "--ipv6", &net])?;
    demo.networks.push(net.clone());
    demo.vswitch(&["network", "ls"])?;

    println!("\n# two containers: each is a network namespace with a TAP the daemon holds");
    demo.run_sleeper(&a, &net, &[])?;
    demo.run_sleeper(&b, &net, &["--alias", "database"])?;
    demo.vswitch(&["network", "inspect", &net])?;

    println!("\n# ping by name, through the userspace switch and the embedded DNS");
    if !demo.in_container(&a, &["ping", "-4", "-c", "3", "-i", "0.2", &b])? {
        bail!("ping from {a} to {b} failed");
    }
    if !demo.in_container(&a, &["ping", "-6", "-c", "2", "-i", "0.2", "database"])? {
        bail!("ping -6 from {a} to the alias `database` failed");
    }
    if which("dig") {
        demo.in_container(&a, &["dig", "+short", &b])?;
        demo.in_container(&a, &["dig", "+short", "AAAA", "database"])?;
    }
    println!("\n# the containers, as `docker ps` lists them");
    demo.vswitch(&["ps"])?;
    println!("\n# where a frame from {a} to {b} goes, asked of the switch's own decisions (nothing is sent)");
    demo.vswitch(&["trace", "--from", &a, "--to", &b])?;
    println!("\n# the troubleshooting checklist, run for real with probes from inside {a}");
    demo.vswitch(&["doctor", &a, &b])?;
    println!("\n# the frames of one ping, as the switch sees them at {a}'s port");
    demo.capture_ping(&a, &b)?;
    println!("\n# another network: nothing crosses to it unless a policy says so");
    let back = format!("demo{tag}b");
    let cache = format!("cache-{tag}");
    demo.vswitch(&["network", "create", &back])?;
    demo.networks.push(back.clone());
    demo.run_sleeper(&cache, &back, &["--label", "app=cache"])?;
    let inspect: serde_json::Value =
        serde_json::from_str(&demo.vswitch(&["inspect", &cache])?).unwrap_or_default();
    let Some(cache_ip) = inspect[0]["Networks"][&back]["IPAddress"].as_str() else {
        bail!("`vswitch inspect {cache}` shows no address on {back}");
    };
    let cache_ip = cache_ip.to_string();
    if demo.in_container(&a, &["ping", "-4", "-c", "1", "-W", "1", &cache_ip])? {
        bail!("{a} reached {cache} on another network without a policy");
    }
    demo.vswitch(&[
        "policy",
        "allow",
        "--from",
        &net,
        "--to",
        &format!("{back}/label=app=cache"),
        "--name",
        "web-to-cache",
    ])?;
    println!("\n# routed by the gateways now, and {cache}'s name resolves on {net}");
    if !demo.in_container(&a, &["ping", "-4", "-c", "2", "-i", "0.2", &cache])? {
        bail!("ping from {a} to {cache} through the policy failed");
    }
    let web: serde_json::Value =
        serde_json::from_str(&demo.vswitch(&["inspect", &a])?).unwrap_or_default();
    let Some(web_ip) = web[0]["Networks"][&net]["IPAddress"].as_str() else {
        bail!("`vswitch inspect {a}` shows no address on {net}");
    };
    if demo.in_container(&cache, &["ping", "-4", "-c", "1", "-W", "1", web_ip])? {
        bail!("{cache} reached {a}: the policy lets only {net} open connections");
    }
    demo.vswitch(&["policy", "ls"])?;
    println!("\n# per-port counters");
    demo.vswitch(&["stats"])?;
    println!("\nthe tour worked.");
    Ok(())
}

fn which(prog: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(prog).exists()))
}
