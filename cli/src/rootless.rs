//! Rootless mode: a user namespace and a mount namespace, held open by a
//! small long-lived *pause* process (as rootless Podman does), in which an
//! ordinary user's `vswitchd --rootless` and `vswitch run` make, configure
//! and enter container network namespaces.
//!
//! The user namespace maps uid 0 inside to the user's uid and gid 0 to the
//! user's gid, nothing else, with `setgroups` denied: a process may write
//! such a map for itself, so no setuid helper (`newuidmap`) is needed.
//! Inside it the user holds `CAP_NET_ADMIN` and `CAP_SYS_ADMIN` over every
//! namespace it owns: container network namespaces are made there, so the
//! daemon can create TAP devices in them (with `/dev/net/tun` at mode 0666,
//! as distributions ship it) and configure them through rtnetlink.
//!
//! The daemon never leaves the caller's *network* namespace: the sockets of
//! published ports, egress NAT, tunnels and gossip are the user's ordinary
//! sockets there, so published ports must be above 1023 and ICMP egress
//! needs `net.ipv4.ping_group_range` to include the user's gid.
//!
//! Everything lives under the runtime directory ([`Layout`],
//! `$XDG_RUNTIME_DIR/vswitch`):
//!
//! | path | what |
//! | --- | --- |
//! | `pause.pid` | the pause process |
//! | `pause.lock` | held while the pause process is looked up or started |
//! | `netns/NAME` | a container's network namespace, bind-mounted inside the pause process's mount namespace (outside it, an empty file) |
//! | `etc/NAME/` | files a container sees over `/etc` (its `resolv.conf`) |
//!
//! A daemon that is killed and started again finds the pause process through
//! `pause.pid` and joins the same namespaces ([`enter`]), so it finds its
//! TAP devices again; `vswitch run` joins them too ([`join`]) to make the
//! container's namespace and run the command in it. Joining a user namespace
//! needs a single-threaded process: both calls must come before any thread
//! is started.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::errno::Errno;
use nix::sched::CloneFlags;

use crate::sandbox::SandboxDirs;

/// The pause process's name (`/proc/PID/comm`), by which it is recognised.
pub const PAUSE_NAME: &str = "vswitch-pause";
/// The TUN/TAP clone device.
pub const TUN_DEVICE: &str = "/dev/net/tun";

/// How long a process waits for its exiting threads to be gone before it
/// gives up joining a user namespace.
const SINGLE_THREAD_WAIT: Duration = Duration::from_millis(500);

/// What went wrong in rootless mode.
#[derive(Debug, thiserror::Error)]
pub enum RootlessError {
    /// `/dev/net/tun` cannot be opened for reading and writing.
    #[error(
        "{TUN_DEVICE} is not usable by uid {uid} ({source}; mode {mode:o}); rootless vswitchd needs it at mode 0666, as distributions ship it: run `chmod 0666 {TUN_DEVICE}` as root"
    )]
    TunNotUsable {
        /// The caller's uid.
        uid: u32,
        /// The device's permission bits (0 when it is missing).
        mode: u32,
        /// Why `access(2)` refused.
        #[source]
        source: Errno,
    },
    /// The kernel refused to make a user namespace.
    #[error(
        "cannot create a user namespace: {source}; enable unprivileged user namespaces (sysctl user.max_user_namespaces above 0, and kernel.unprivileged_userns_clone=1 where that sysctl exists)"
    )]
    UserNamespaces {
        /// The errno of `unshare(2)`.
        #[source]
        source: Errno,
    },
    /// The process has threads, so it cannot join a user namespace.
    #[error(
        "cannot join the rootless namespaces from a process with {threads} threads; this must happen before any thread starts"
    )]
    Threaded {
        /// How many threads the process has.
        threads: usize,
    },
    /// The pause process named by the daemon or the pid file is not there.
    #[error(
        "process {pid} is not vswitchd's pause process ({reason}); restart `vswitchd --rootless`"
    )]
    NoPause {
        /// The pid that was given.
        pid: u32,
        /// What was found instead.
        reason: String,
    },
    /// The pause process failed while setting itself up.
    #[error("cannot start the rootless pause process: {message}")]
    PauseFailed {
        /// What it reported.
        message: String,
    },
    /// A file system operation failed.
    #[error("cannot {what}: {source}")]
    Io {
        /// What was being done, in words.
        what: String,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// A system call failed.
    #[error("cannot {what}: {source}")]
    Sys {
        /// What was being done, in words.
        what: String,
        /// The errno.
        #[source]
        source: Errno,
    },
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> RootlessError {
    let what = what.into();
    move |source| RootlessError::Io { what, source }
}

fn sys_err(what: impl Into<String>) -> impl FnOnce(Errno) -> RootlessError {
    let what = what.into();
    move |source| RootlessError::Sys { what, source }
}

/// Where a rootless daemon keeps its pause process and its sandboxes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    runtime_dir: PathBuf,
}

impl Layout {
    /// A layout rooted at `runtime_dir`.
    pub fn new(runtime_dir: PathBuf) -> Layout {
        Layout { runtime_dir }
    }

    /// `$XDG_RUNTIME_DIR/vswitch`, or `/run/user/UID/vswitch` without it.
    pub fn from_env() -> Layout {
        Layout::new(runtime_dir_for(
            std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from),
            nix::unistd::geteuid().as_raw(),
        ))
    }

    /// The runtime directory itself.
    pub fn runtime_dir(&self) -> &Path {
        &self.runtime_dir
    }

    /// Where container network namespaces are mounted.
    pub fn netns_dir(&self) -> PathBuf {
        self.runtime_dir.join("netns")
    }

    /// Where per-container `/etc` files live.
    pub fn etc_dir(&self) -> PathBuf {
        self.runtime_dir.join("etc")
    }

    /// The pause process's pid file.
    pub fn pid_file(&self) -> PathBuf {
        self.runtime_dir.join("pause.pid")
    }

    fn lock_file(&self) -> PathBuf {
        self.runtime_dir.join("pause.lock")
    }

    /// The sandbox directories of this layout, for [`crate::sandbox::use_dirs`].
    pub fn sandbox_dirs(&self) -> SandboxDirs {
        SandboxDirs {
            netns: self.netns_dir(),
            etc: self.etc_dir(),
        }
    }
}

fn runtime_dir_for(xdg_runtime_dir: Option<PathBuf>, uid: u32) -> PathBuf {
    match xdg_runtime_dir {
        Some(dir) if dir.is_absolute() => dir.join("vswitch"),
        _ => PathBuf::from(format!("/run/user/{uid}/vswitch")),
    }
}

/// The namespaces a rootless daemon runs in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PauseProcess {
    /// The pause process holding the user and mount namespaces.
    pub pid: u32,
    /// Whether this call started it (false: an earlier daemon had).
    pub started: bool,
}

/// For `vswitchd --rootless`, before any thread exists: check that
/// `/dev/net/tun` is usable, find the pause process of `layout` (or start
/// one: a new user namespace and mount namespace), and join its namespaces.
/// The working directory is kept, so relative paths still resolve.
pub fn enter(layout: &Layout) -> Result<PauseProcess, RootlessError> {
    check_tun()?;
    wait_single_threaded()?;
    for (dir, mode) in [
        (layout.runtime_dir().to_path_buf(), 0o700),
        (layout.netns_dir(), 0o700),
        (layout.etc_dir(), 0o755),
    ] {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(mode)
            .create(&dir)
            .map_err(io_err(format!("create {}", dir.display())))?;
    }
    // One daemon at a time looks for or starts the pause process.
    let lock_path = layout.lock_file();
    let lock = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(io_err(format!("open {}", lock_path.display())))?;
    lock.lock()
        .map_err(io_err(format!("lock {}", lock_path.display())))?;

    let pause = match running_pause(layout) {
        Some(pid) => PauseProcess {
            pid,
            started: false,
        },
        None => {
            let pid = sys::spawn_pause(&layout.netns_dir())?;
            if let Err(e) = write_pid_file(&layout.pid_file(), pid) {
                // Nobody could find it again: do not leave it behind.
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
                return Err(e);
            }
            PauseProcess { pid, started: true }
        }
    };
    join(pause.pid)?;
    drop(lock);
    Ok(pause)
}

/// Join the user and mount namespaces of the pause process `pid` (the
/// daemon's [`enter`], and `vswitch run` with the pid the daemon reports).
/// The process must be single-threaded: call it before any thread starts.
/// The working directory is kept.
pub fn join(pid: u32) -> Result<(), RootlessError> {
    let comm =
        fs::read_to_string(format!("/proc/{pid}/comm")).map_err(|e| RootlessError::NoPause {
            pid,
            reason: format!("no such process: {e}"),
        })?;
    if comm.trim_end() != PAUSE_NAME {
        return Err(RootlessError::NoPause {
            pid,
            reason: format!("it is `{}`", comm.trim_end()),
        });
    }
    if same_namespace(pid, "user") && same_namespace(pid, "mnt") {
        return Ok(());
    }
    let open = |ns: &str| -> Result<OwnedFd, RootlessError> {
        let path = format!("/proc/{pid}/ns/{ns}");
        File::open(&path)
            .map(OwnedFd::from)
            .map_err(io_err(format!("open {path}")))
    };
    let user = open("user")?;
    let mnt = open("mnt")?;
    let cwd = std::env::current_dir().ok();
    wait_single_threaded()?;
    nix::sched::setns(user.as_fd(), CloneFlags::CLONE_NEWUSER).map_err(|e| match e {
        Errno::EINVAL => RootlessError::Threaded {
            threads: thread_count().unwrap_or(0),
        },
        e => sys_err(format!(
            "join the user namespace of pause process {pid} (it must belong to this user)"
        ))(e),
    })?;
    nix::sched::setns(mnt.as_fd(), CloneFlags::CLONE_NEWNS).map_err(sys_err(format!(
        "join the mount namespace of pause process {pid}"
    )))?;
    // setns(CLONE_NEWNS) moves the working directory to the root.
    if let Some(cwd) = cwd {
        if let Err(e) = std::env::set_current_dir(&cwd) {
            tracing::warn!(cwd = %cwd.display(), error = %e,
                "cannot return to the working directory after joining the rootless namespaces");
        }
    }
    tracing::debug!(pause = pid, "joined the rootless user and mount namespaces");
    Ok(())
}

/// [`RootlessError::TunNotUsable`] unless this user may open `/dev/net/tun`
/// for reading and writing.
pub fn check_tun() -> Result<(), RootlessError> {
    use nix::unistd::AccessFlags;
    nix::unistd::access(TUN_DEVICE, AccessFlags::R_OK | AccessFlags::W_OK).map_err(|source| {
        RootlessError::TunNotUsable {
            uid: nix::unistd::geteuid().as_raw(),
            mode: fs::metadata(TUN_DEVICE)
                .map(|m| m.mode() & 0o7777)
                .unwrap_or(0),
            source,
        }
    })
}

/// The pid in `layout`'s pid file, if that process is a live pause process
/// of this user whose user namespace is not the caller's own.
fn running_pause(layout: &Layout) -> Option<u32> {
    let text = fs::read_to_string(layout.pid_file()).ok()?;
    let pid: u32 = text.trim().parse().ok()?;
    let comm = fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
    let owner = fs::metadata(format!("/proc/{pid}")).ok()?.uid();
    let ours = comm.trim_end() == PAUSE_NAME
        && owner == nix::unistd::geteuid().as_raw()
        && !same_namespace(pid, "user");
    if !ours {
        tracing::info!(
            pid,
            "the pause pid file names no live pause process; starting a new one"
        );
    }
    ours.then_some(pid)
}

/// True when process `pid` is in the caller's namespace of kind `ns`.
fn same_namespace(pid: u32, ns: &str) -> bool {
    let inode = |p: String| fs::metadata(p).map(|m| (m.dev(), m.ino())).ok();
    match (
        inode(format!("/proc/{pid}/ns/{ns}")),
        inode(format!("/proc/self/ns/{ns}")),
    ) {
        (Some(a), Some(b)) => a == b,
        _ => false,
    }
}

/// Write the pid file atomically (a new file renamed over the old one).
fn write_pid_file(path: &Path, pid: u32) -> Result<(), RootlessError> {
    let tmp = path.with_extension("pid.tmp");
    fs::write(&tmp, format!("{pid}\n")).map_err(io_err(format!("write {}", tmp.display())))?;
    fs::rename(&tmp, path).map_err(io_err(format!(
        "rename {} to {}",
        tmp.display(),
        path.display()
    )))
}

fn thread_count() -> io::Result<usize> {
    Ok(fs::read_dir("/proc/self/task")?.count())
}

/// Wait (briefly) until the process has one thread: threads that were
/// joined may linger in the kernel for a moment after they returned.
fn wait_single_threaded() -> Result<(), RootlessError> {
    let start = std::time::Instant::now();
    loop {
        let threads = thread_count().map_err(io_err("count this process's threads"))?;
        if threads <= 1 {
            return Ok(());
        }
        if start.elapsed() > SINGLE_THREAD_WAIT {
            return Err(RootlessError::Threaded { threads });
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The pause process's own setup, run right after it is forked: a new user
/// and mount namespace, the id maps, the sandbox directory as a shared mount
/// (so a container's copy of the mount table sees namespaces unmounted), its
/// name. Returns a line for the parent: `ok PID` or the error.
fn pause_setup(uid: u32, gid: u32, netns_dir: &Path) -> Result<u32, RootlessError> {
    use nix::mount::MsFlags;
    nix::sched::unshare(CloneFlags::CLONE_NEWUSER | CloneFlags::CLONE_NEWNS)
        .map_err(|source| RootlessError::UserNamespaces { source })?;
    for (file, text) in [
        ("/proc/self/setgroups", "deny".to_string()),
        ("/proc/self/uid_map", format!("0 {uid} 1\n")),
        ("/proc/self/gid_map", format!("0 {gid} 1\n")),
    ] {
        fs::write(file, text).map_err(io_err(format!("write {file}")))?;
    }
    nix::mount::mount(
        Some(netns_dir),
        netns_dir,
        Some("none"),
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(sys_err(format!(
        "bind-mount {} on itself",
        netns_dir.display()
    )))?;
    nix::mount::mount(
        None::<&str>,
        netns_dir,
        Some("none"),
        MsFlags::MS_SHARED | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(sys_err(format!(
        "make {} a shared mount",
        netns_dir.display()
    )))?;
    nix::sys::prctl::set_name(c"vswitch-pause").map_err(sys_err("name the pause process"))?;
    nix::unistd::chdir("/").map_err(sys_err("change directory to /"))?;
    Ok(std::process::id())
}

/// What the parent reads from the pause process's status pipe.
fn parse_status(text: &str) -> Result<u32, RootlessError> {
    match text.trim_end().split_once(' ') {
        Some(("ok", pid)) => pid.parse().map_err(|_| RootlessError::PauseFailed {
            message: format!("it reported `{}`", text.trim_end()),
        }),
        Some(("err", message)) => Err(RootlessError::PauseFailed {
            message: message.to_string(),
        }),
        _ if text.is_empty() => Err(RootlessError::PauseFailed {
            message: "it exited before reporting".to_string(),
        }),
        _ => Err(RootlessError::PauseFailed {
            message: format!("it reported `{}`", text.trim_end()),
        }),
    }
}

/// Read the pause process's status line to the end of the pipe.
fn read_status(mut pipe: File) -> Result<u32, RootlessError> {
    let mut text = String::new();
    pipe.read_to_string(&mut text)
        .map_err(io_err("read the pause process's status"))?;
    parse_status(&text)
}

/// Report the setup's outcome on the status pipe.
fn write_status(pipe: &mut File, result: &Result<u32, RootlessError>) {
    let line = match result {
        Ok(pid) => format!("ok {pid}\n"),
        Err(e) => format!("err {e}\n"),
    };
    // Nobody to tell if the parent is gone.
    let _ = pipe.write_all(line.as_bytes());
}

#[allow(unsafe_code)]
mod sys {
    //! Forking the pause process.

    use std::fs::File;
    use std::os::fd::{AsRawFd, OwnedFd};
    use std::path::Path;

    use nix::fcntl::OFlag;
    use nix::unistd::ForkResult;

    use super::{read_status, sys_err, write_status, RootlessError};

    /// Start the pause process, detached (double fork, own session), and
    /// return its pid once it has made and mapped its namespaces. The pause
    /// process closes every descriptor it inherits (the caller's lock file
    /// among them).
    ///
    /// The caller must be single-threaded (it is: [`super::enter`] checked),
    /// so the forked children are whole copies of the process and may
    /// allocate freely.
    pub(super) fn spawn_pause(netns_dir: &Path) -> Result<u32, RootlessError> {
        let uid = nix::unistd::getuid().as_raw();
        let gid = nix::unistd::getgid().as_raw();
        let (read, write) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(sys_err("make a pipe"))?;
        // SAFETY: the caller is single-threaded (checked by `enter` just
        // before), so no lock or allocator state can be held by another
        // thread at the fork; the child runs ordinary Rust code and leaves
        // only through `_exit`, never returning into the caller's frames.
        match unsafe { nix::unistd::fork() }.map_err(sys_err("fork the pause process"))? {
            ForkResult::Child => {
                drop(read);
                intermediate(write, netns_dir, uid, gid)
            }
            ForkResult::Parent { child } => {
                drop(write);
                // The intermediate process exits at once.
                let _ = nix::sys::wait::waitpid(child, None);
                read_status(File::from(read))
            }
        }
    }

    /// The first child: a new session, then the pause process as its child,
    /// then exit, so the pause process is nobody's child but init's (or the
    /// nearest subreaper's) and survives the daemon.
    fn intermediate(status: OwnedFd, netns_dir: &Path, uid: u32, gid: u32) -> ! {
        let _ = nix::unistd::setsid();
        // SAFETY: this process is a single-threaded copy of a
        // single-threaded process (see `spawn_pause`).
        match unsafe { nix::unistd::fork() } {
            Ok(ForkResult::Child) => pause_main(status, netns_dir, uid, gid),
            Ok(ForkResult::Parent { .. }) => exit(0),
            Err(e) => {
                let mut pipe = File::from(status);
                write_status(&mut pipe, &Err(sys_err("fork the pause process")(e)));
                exit(1)
            }
        }
    }

    /// The pause process: set up, report, then sleep until killed, with no
    /// descriptor of the daemon's kept open and stdio on /dev/null.
    fn pause_main(status: OwnedFd, netns_dir: &Path, uid: u32, gid: u32) -> ! {
        let result = super::pause_setup(uid, gid, netns_dir);
        let mut pipe = File::from(status);
        write_status(&mut pipe, &result);
        if result.is_err() {
            exit(1);
        }
        drop(pipe);
        if let Ok(null) = File::options().read(true).write(true).open("/dev/null") {
            for fd in 0..=2 {
                // SAFETY: dup2 onto the standard descriptors, which no Rust
                // object owns; `null` is open for the whole call.
                unsafe { libc::dup2(null.as_raw_fd(), fd) };
            }
        }
        // SAFETY: closes every descriptor above stderr: the daemon's lock
        // file and whatever else it inherited. The objects owning them live
        // in the frames of `enter`, which this process never returns to (it
        // sleeps until killed), so none is used or closed again.
        unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) };
        loop {
            nix::unistd::pause();
        }
    }

    fn exit(code: i32) -> ! {
        // SAFETY: `_exit` ends the forked process at once, without running
        // the parent's atexit handlers or flushing its copied stdio buffers.
        unsafe { libc::_exit(code) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    #[rstest]
    #[case(Some("/run/user/1000"), 1000, "/run/user/1000/vswitch")]
    #[case(Some("/tmp/x"), 7, "/tmp/x/vswitch")]
    #[case(None, 1000, "/run/user/1000/vswitch")]
    #[case(Some("relative"), 42, "/run/user/42/vswitch")]
    fn runtime_dir_follows_xdg(
        #[case] xdg: Option<&str>,
        #[case] uid: u32,
        #[case] expected: &str,
    ) {
        assert_eq!(
            runtime_dir_for(xdg.map(PathBuf::from), uid),
            Path::new(expected)
        );
    }

    #[test]
    fn layout_paths() {
        let l = Layout::new(PathBuf::from("/run/user/1000/vswitch"));
        assert_eq!(l.netns_dir(), Path::new("/run/user/1000/vswitch/netns"));
        assert_eq!(l.etc_dir(), Path::new("/run/user/1000/vswitch/etc"));
        assert_eq!(l.pid_file(), Path::new("/run/user/1000/vswitch/pause.pid"));
        let d = l.sandbox_dirs();
        assert_eq!(d.netns, l.netns_dir());
        assert_eq!(d.etc, l.etc_dir());
    }

    #[rstest]
    #[case("ok 1234\n", Some(1234))]
    #[case("ok 1234", Some(1234))]
    #[case("ok x\n", None)]
    #[case("err cannot create a user namespace: EPERM\n", None)]
    #[case("", None)]
    #[case("garbage", None)]
    fn status_lines(#[case] text: &str, #[case] pid: Option<u32>) {
        assert_eq!(parse_status(text).ok(), pid);
    }

    #[test]
    fn failed_status_carries_the_reason() {
        let err = parse_status("err cannot write /proc/self/uid_map: EPERM\n").unwrap_err();
        assert!(
            err.to_string().contains("cannot write /proc/self/uid_map"),
            "{err}"
        );
        let err = parse_status("").unwrap_err();
        assert!(err.to_string().contains("exited before reporting"), "{err}");
    }

    #[test]
    fn joining_a_process_that_is_not_a_pause_process_is_refused() {
        // Our own pid: alive, but not named vswitch-pause.
        let err = join(std::process::id()).unwrap_err();
        assert!(matches!(err, RootlessError::NoPause { .. }), "{err}");
        assert!(err.to_string().contains("restart `vswitchd --rootless`"));
        // A pid that cannot exist (above pid_max's ceiling).
        let err = join(u32::MAX).unwrap_err();
        assert!(matches!(err, RootlessError::NoPause { .. }), "{err}");
    }

    #[test]
    fn a_stale_pid_file_names_no_pause_process() {
        let dir = std::env::temp_dir().join(format!("vswitch-rl-unit-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let layout = Layout::new(dir.clone());
        assert_eq!(running_pause(&layout), None);
        write_pid_file(&layout.pid_file(), std::process::id()).unwrap();
        assert_eq!(
            fs::read_to_string(layout.pid_file()).unwrap(),
            format!("{}\n", std::process::id())
        );
        // Alive, ours, but not a pause process.
        assert_eq!(running_pause(&layout), None);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn tun_error_names_the_fix() {
        let err = RootlessError::TunNotUsable {
            uid: 1000,
            mode: 0o600,
            source: Errno::EACCES,
        };
        let text = err.to_string();
        assert!(text.contains("mode 600"), "{text}");
        assert!(text.contains("chmod 0666 /dev/net/tun"), "{text}");
    }
}
