//! Running programs with bounds: every child gets a time limit, its own
//! process group (so a terminal's Ctrl-C reaches netbench alone, which then
//! tears everything down in order), and output captured in files of the
//! run's work directory (a pipe could be held open by a grandchild).
//!
//! [`INTERRUPTED`] is set by the signal thread of [`install_signal_thread`];
//! interruptible waits notice it within [`POLL`] and kill their child.

use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::{killpg, SigSet, Signal};
use nix::unistd::Pid;
use std::os::unix::process::CommandExt;

use crate::Error;

/// Set once SIGINT, SIGTERM or SIGHUP arrives.
pub static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// How often waits look at their child and at [`INTERRUPTED`].
const POLL: Duration = Duration::from_millis(10);

/// Time a cleanup command gets (`ip netns del`, `vswitch rm`).
pub const CLEANUP_LIMIT: Duration = Duration::from_secs(30);

/// True once the user asked netbench to stop.
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::Relaxed)
}

/// Blocks SIGINT, SIGTERM and SIGHUP in this thread (and so in every thread
/// spawned after it) and starts a thread that waits for them and sets
/// [`INTERRUPTED`]. Call it first thing in `main`, before any other thread.
/// Children would inherit the mask through `fork` and `exec` (a daemon
/// that never sees SIGTERM, a server killed only after the grace period):
/// [`spawn_group`] unblocks the three in each child before `exec`.
pub fn install_signal_thread() -> Result<(), Error> {
    let mut set = SigSet::empty();
    set.add(Signal::SIGINT);
    set.add(Signal::SIGTERM);
    set.add(Signal::SIGHUP);
    set.thread_block().map_err(|e| Error::Io {
        context: "blocking SIGINT/SIGTERM".into(),
        source: e.into(),
    })?;
    std::thread::Builder::new()
        .name("netbench-signals".into())
        .spawn(move || loop {
            match set.wait() {
                Ok(sig) => {
                    if !INTERRUPTED.swap(true, Ordering::Relaxed) {
                        eprintln!("netbench: {sig} received; stopping and cleaning up");
                    } else {
                        eprintln!("netbench: {sig} again; still cleaning up (bounded)");
                    }
                }
                Err(_) => return,
            }
        })
        .map_err(|e| Error::Io {
            context: "starting the signal thread".into(),
            source: e,
        })?;
    Ok(())
}

/// Whether a wait gives up when the user interrupts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// A measurement or setup step: stop at once on Ctrl-C.
    Interruptible,
    /// A teardown step: always runs to its end (still time-bounded).
    Cleanup,
}

/// `ip netns exec NS argv...`
pub fn in_ns<S: AsRef<str>>(ns: &str, argv: &[S]) -> Vec<String> {
    let mut v: Vec<String> = vec!["ip".into(), "netns".into(), "exec".into(), ns.into()];
    v.extend(argv.iter().map(|s| s.as_ref().to_string()));
    v
}

/// Runs programs; keeps their output files in one directory.
#[derive(Clone, Debug)]
pub struct Shell {
    dir: Arc<Path>,
    seq: Arc<AtomicU64>,
}

impl Shell {
    /// Output files go to `dir`, which must exist.
    pub fn new(dir: &Path) -> Shell {
        Shell {
            dir: Arc::from(dir),
            seq: Arc::new(AtomicU64::new(0)),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn out_file(&self, tag: &str) -> Result<(PathBuf, File), Error> {
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        let path = self.dir.join(format!("{n:04}-{tag}"));
        let f = File::create(&path).map_err(|e| Error::Io {
            context: format!("creating {}", path.display()),
            source: e,
        })?;
        Ok((path, f))
    }

    /// Runs `argv` to its end, or kills it after `limit` (or on Ctrl-C in
    /// [`Mode::Interruptible`]). A non-zero exit is not an error here.
    pub fn run<S: AsRef<OsStr>>(
        &self,
        argv: &[S],
        limit: Duration,
        mode: Mode,
    ) -> Result<Output, Error> {
        let shown = show(argv);
        if mode == Mode::Interruptible && interrupted() {
            return Err(Error::Interrupted);
        }
        let (out_path, out) = self.out_file("stdout")?;
        let (err_path, err) = self.out_file("stderr")?;
        let mut child = spawn_group(argv, &shown, out, err)?;
        let deadline = Instant::now() + limit;
        let status = loop {
            match child.try_wait() {
                Ok(Some(s)) => break s,
                Ok(None) => {}
                Err(e) => {
                    kill_group(&mut child);
                    return Err(Error::Io {
                        context: format!("waiting for `{shown}`"),
                        source: e,
                    });
                }
            }
            if mode == Mode::Interruptible && interrupted() {
                kill_group(&mut child);
                return Err(Error::Interrupted);
            }
            if Instant::now() >= deadline {
                kill_group(&mut child);
                return Err(Error::Timeout { argv: shown, limit });
            }
            std::thread::sleep(POLL);
        };
        let stdout = std::fs::read(&out_path).unwrap_or_default();
        let stderr = std::fs::read(&err_path).unwrap_or_default();
        let _ = std::fs::remove_file(&out_path);
        let _ = std::fs::remove_file(&err_path);
        Ok(Output {
            status,
            stdout,
            stderr,
        })
    }

    /// Like [`Shell::run`] in [`Mode::Interruptible`]; a non-zero exit is an
    /// error carrying stderr. Returns stdout.
    pub fn ok<S: AsRef<OsStr>>(&self, argv: &[S], limit: Duration) -> Result<String, Error> {
        let out = self.run(argv, limit, Mode::Interruptible)?;
        check(argv, out)
    }

    /// A teardown step: runs even after Ctrl-C; a non-zero exit is an error.
    pub fn cleanup<S: AsRef<OsStr>>(&self, argv: &[S]) -> Result<String, Error> {
        let out = self.run(argv, CLEANUP_LIMIT, Mode::Cleanup)?;
        check(argv, out)
    }

    /// Starts a long-running program (a server, the daemon) with its output
    /// in the log file `DIR/NAME.log`.
    pub fn spawn<S: AsRef<OsStr>>(&self, argv: &[S], name: &str) -> Result<Background, Error> {
        let shown = show(argv);
        let log = self.dir.join(format!("{name}.log"));
        let io_err = |e| Error::Io {
            context: format!("creating {}", log.display()),
            source: e,
        };
        let out = File::create(&log).map_err(io_err)?;
        let err = out.try_clone().map_err(io_err)?;
        let child = spawn_group(argv, &shown, out, err)?;
        Ok(Background {
            child: Some(child),
            argv: shown,
            log,
        })
    }
}

/// Starts `argv` (`shown` in errors) in a process group of its own, with
/// no stdin and its output in the files `out` and `err`, with SIGINT,
/// SIGTERM and SIGHUP unblocked (this process blocks them for its signal
/// thread, and a blocked mask survives `exec`).
#[allow(unsafe_code)]
fn spawn_group<S: AsRef<OsStr>>(
    argv: &[S],
    shown: &str,
    out: File,
    err: File,
) -> Result<Child, Error> {
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0);
    // SAFETY: between fork and exec the closure only calls
    // pthread_sigmask, which is async-signal-safe, on a set built on the
    // stack; it allocates nothing and takes no lock.
    unsafe {
        cmd.pre_exec(|| {
            let mut set = SigSet::empty();
            set.add(Signal::SIGINT);
            set.add(Signal::SIGTERM);
            set.add(Signal::SIGHUP);
            set.thread_unblock().map_err(io::Error::from)
        });
    }
    cmd.spawn().map_err(|e| Error::Spawn {
        argv: shown.to_string(),
        source: e,
    })
}

fn check<S: AsRef<OsStr>>(argv: &[S], out: Output) -> Result<String, Error> {
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(Error::Failed {
            argv: show(argv),
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

fn show<S: AsRef<OsStr>>(argv: &[S]) -> String {
    argv.iter()
        .map(|a| a.as_ref().to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ")
}

/// SIGKILL to the child's whole process group, then reap the child.
fn kill_group(child: &mut Child) {
    let _ = killpg(Pid::from_raw(child.id() as i32), Signal::SIGKILL);
    let _ = child.kill();
    let _ = child.wait();
}

/// A long-running child in its own process group; stopped on drop.
#[derive(Debug)]
pub struct Background {
    child: Option<Child>,
    argv: String,
    log: PathBuf,
}

impl Background {
    /// The child's pid (after `ip netns exec`, the program's own pid:
    /// `ip` execs it).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn argv(&self) -> &str {
        &self.argv
    }

    /// The exit status if the child has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// Waits up to `limit` for the child to exit by itself (returns early on
    /// Ctrl-C); its exit status, or None if it is still running.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(s) = self.exited() {
                return Some(s);
            }
            if interrupted() || Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(POLL);
        }
    }

    /// Everything it printed so far (stdout and stderr).
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The last `n` lines of its output.
    pub fn log_tail(&self, n: usize) -> String {
        let s = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// SIGTERM to its process group, `grace` to exit, then SIGKILL.
    /// Returns its exit status (None if it was already stopped).
    pub fn stop(&mut self, grace: Duration) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        if let Ok(Some(s)) = child.try_wait() {
            return Some(s);
        }
        let _ = killpg(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(s)) = child.try_wait() {
                return Some(s);
            }
            std::thread::sleep(POLL);
        }
        let _ = killpg(Pid::from_raw(child.id() as i32), Signal::SIGKILL);
        let _ = child.kill();
        child.wait().ok()
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(5));
    }
}

/// A transport whose sockets `/proc/PID/net/*` lists.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    /// Listening TCP sockets (state `0A`).
    Tcp,
    /// Bound, unconnected UDP sockets (state `07`).
    Udp,
}

impl Proto {
    fn tables(self) -> [&'static str; 2] {
        match self {
            Proto::Tcp => ["tcp", "tcp6"],
            Proto::Udp => ["udp", "udp6"],
        }
    }

    fn state(self) -> &'static str {
        match self {
            Proto::Tcp => "0A",
            Proto::Udp => "07",
        }
    }
}

/// The TCP ports a process's network namespace listens on, from
/// `/proc/PID/net/tcp` and `tcp6` (which show the namespace the process is
/// in now).
pub fn listening_ports(pid: u32) -> Vec<u16> {
    bound_ports(pid, Proto::Tcp)
}

/// The ports of `proto` sockets waiting for peers (listening TCP, bound
/// UDP) in a process's network namespace.
pub fn bound_ports(pid: u32, proto: Proto) -> Vec<u16> {
    let mut ports = Vec::new();
    for file in proto.tables() {
        if let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/net/{file}")) {
            ports.extend(parse_ports(&s, proto.state()));
        }
    }
    ports
}

/// Local ports of the sockets in `state` (hex, as the table prints it) of
/// a `/proc/net/{tcp,udp}` table.
fn parse_ports(table: &str, state: &str) -> Vec<u16> {
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let mut f = line.split_whitespace();
            let local = f.nth(1)?;
            if f.nth(1)? != state {
                return None;
            }
            let (_, port) = local.rsplit_once(':')?;
            u16::from_str_radix(port, 16).ok()
        })
        .collect()
}

/// Waits until `server` (started through `ip netns exec`) runs `comm` and
/// listens on TCP `port`, bounded by `limit`.
pub fn wait_listening(
    server: &mut Background,
    comm: &str,
    port: u16,
    limit: Duration,
) -> Result<(), Error> {
    wait_bound(server, comm, Proto::Tcp, port, limit)
}

/// Waits until `server` (started through `ip netns exec`) runs `comm` and
/// has a `proto` socket waiting on `port`, bounded by `limit`.
pub fn wait_bound(
    server: &mut Background,
    comm: &str,
    proto: Proto,
    port: u16,
    limit: Duration,
) -> Result<(), Error> {
    let pid = server
        .pid()
        .ok_or_else(|| Error::Setup("server not running".into()))?;
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = server.exited() {
            return Err(Error::Setup(format!(
                "`{}` exited at start ({status}): {}",
                server.argv(),
                server.log_tail(10)
            )));
        }
        let running = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if running.trim() == comm && bound_ports(pid, proto).contains(&port) {
            return Ok(());
        }
        if interrupted() {
            return Err(Error::Interrupted);
        }
        if Instant::now() >= deadline {
            return Err(Error::Setup(format!(
                "`{}` did not open {proto:?} port {port} within {limit:?}: {}",
                server.argv(),
                server.log_tail(10)
            )));
        }
        std::thread::sleep(POLL);
    }
}

/// True when `prog` is an executable file somewhere on `PATH`.
pub fn on_path(prog: &str) -> bool {
    std::env::var_os("PATH")
        .map(|paths| {
            std::env::split_paths(&paths).any(|d| {
                let p = d.join(prog);
                p.is_file()
                    && std::fs::metadata(&p)
                        .map(|m| {
                            std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o111 != 0
                        })
                        .unwrap_or(false)
            })
        })
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:1451 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0000000000000000 100 0 0 10 0
   1: 0300F70A:2B67 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2 1 0000000000000000 100 0 0 10 0
   2: 0300F70A:1451 0200F70A:C350 01 00000000:00000000 00:00000000 00000000     0        0 3 1 0000000000000000 100 0 0 10 0
";

    #[test]
    fn listening_ports_are_only_those_in_listen_state() {
        assert_eq!(parse_ports(TCP, Proto::Tcp.state()), vec![5201, 11111]);
        assert!(parse_ports("header only\n", "0A").is_empty());
    }

    const UDP: &str = "   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
  123: 00000000:1453 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 1 2 0000000000000000 0
  124: 0200F70A:9C40 0300F70A:1453 01 00000000:00000000 00:00000000 00000000     0        0 2 2 0000000000000000 0
";

    #[test]
    fn bound_udp_ports_are_the_unconnected_ones() {
        assert_eq!(parse_ports(UDP, Proto::Udp.state()), vec![5203]);
        assert!(parse_ports(UDP, Proto::Tcp.state()).is_empty());
    }

    #[test]
    fn our_own_udp_socket_is_seen_bound() {
        let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = s.local_addr().unwrap().port();
        assert!(bound_ports(std::process::id(), Proto::Udp).contains(&port));
    }

    #[test]
    fn in_ns_prefixes_ip_netns_exec() {
        assert_eq!(
            in_ns("x", &["ping", "-c", "1"]),
            ["ip", "netns", "exec", "x", "ping", "-c", "1"]
        );
    }

    #[test]
    fn run_captures_output_and_status() {
        let dir = std::env::temp_dir().join(format!("netbench-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let sh = Shell::new(&dir);
        let out = sh
            .run(
                &["sh", "-c", "echo out; echo err >&2; exit 3"],
                Duration::from_secs(10),
                Mode::Cleanup,
            )
            .unwrap();
        assert_eq!(out.status.code(), Some(3));
        assert_eq!(out.stdout, b"out\n");
        assert_eq!(out.stderr, b"err\n");
        match sh.ok(
            &["sh", "-c", "echo nope >&2; exit 1"],
            Duration::from_secs(10),
        ) {
            Err(Error::Failed { stderr, .. }) => assert_eq!(stderr, "nope"),
            other => panic!("{other:?}"),
        }
        let start = Instant::now();
        match sh.run(&["sleep", "30"], Duration::from_millis(200), Mode::Cleanup) {
            Err(Error::Timeout { .. }) => {}
            other => panic!("{other:?}"),
        }
        assert!(start.elapsed() < Duration::from_secs(5));
        // A background child's exit and everything it printed.
        let mut bg = sh
            .spawn(&["sh", "-c", "echo one; echo two >&2"], "bg")
            .unwrap();
        assert!(bg
            .wait_exit(Duration::from_secs(10))
            .is_some_and(|s| s.success()));
        assert_eq!(bg.log_text(), "one\ntwo\n");
        let mut slow = sh.spawn(&["sleep", "30"], "slow").unwrap();
        assert_eq!(slow.wait_exit(Duration::from_millis(100)), None);
        drop(slow);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
