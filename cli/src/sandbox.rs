//! Sandboxes for `vswitch run`: named network namespaces, made and entered
//! exactly the way `ip netns add` and `ip netns exec` do, so both tools work
//! on the same namespaces.
//!
//! A sandbox `NAME` is a network namespace bind-mounted on
//! `/run/netns/NAME`, plus an optional directory `/etc/netns/NAME` whose
//! files replace their `/etc` namesakes for commands run inside (this is
//! how a container gets its own `resolv.conf`).
//!
//! Rootless, the same layout lives under the rootless daemon's runtime
//! directory ([`crate::rootless::Layout`]): `netns/NAME` and `etc/NAME`, used
//! by a process that joined the daemon's user and mount namespaces
//! ([`crate::rootless::join`]) after [`use_dirs`] said so.

use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::net::IpAddr;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};

use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags};
use nix::sched::CloneFlags;

/// Where named network namespaces are mounted (iproute2's `NETNS_RUN_DIR`).
pub const NETNS_RUN_DIR: &str = "/run/netns";
/// Where per-namespace `/etc` overrides live (iproute2's `NETNS_ETC_DIR`).
pub const NETNS_ETC_DIR: &str = "/etc/netns";

/// Serialises the shared-mount setup of /run/netns within this process, so
/// two threads never stack two bind mounts on it.
static RUN_DIR_SETUP: Mutex<()> = Mutex::new(());

/// The directories of this process's sandboxes, fixed at the first use.
static DIRS: OnceLock<SandboxDirs> = OnceLock::new();

/// Where sandboxes live: iproute2's directories as root
/// ([`SandboxDirs::iproute2`]), a rootless daemon's runtime directory
/// otherwise ([`crate::rootless::Layout::sandbox_dirs`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxDirs {
    /// Where namespaces are mounted (`/run/netns`).
    pub netns: PathBuf,
    /// Where per-namespace `/etc` overrides live (`/etc/netns`).
    pub etc: PathBuf,
}

impl SandboxDirs {
    /// `/run/netns` and `/etc/netns`, shared with `ip netns`.
    pub fn iproute2() -> SandboxDirs {
        SandboxDirs {
            netns: PathBuf::from(NETNS_RUN_DIR),
            etc: PathBuf::from(NETNS_ETC_DIR),
        }
    }
}

/// Use `dirs` for every sandbox of this process (a rootless daemon, or
/// `vswitch run` against one). Once per process, before the first sandbox
/// is made or named; [`SandboxError::DirsFixed`] if other directories are
/// already in use.
pub fn use_dirs(dirs: SandboxDirs) -> Result<(), SandboxError> {
    let current = DIRS.get_or_init(|| dirs.clone());
    if *current == dirs {
        Ok(())
    } else {
        Err(SandboxError::DirsFixed {
            current: current.netns.clone(),
        })
    }
}

/// The directories in use ([`SandboxDirs::iproute2`] unless [`use_dirs`]
/// said otherwise first).
pub fn dirs() -> &'static SandboxDirs {
    DIRS.get_or_init(SandboxDirs::iproute2)
}

/// What went wrong with a sandbox.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// The name cannot be a file name under /run/netns.
    #[error("`{name}` is not a valid network namespace name: use 1 to 255 characters without `/`")]
    InvalidName {
        /// The name that was given.
        name: String,
    },
    /// `create_netns` found the namespace already there.
    #[error(
        "network namespace {name} already exists; pick another name or remove it with `ip netns delete {name}`"
    )]
    AlreadyExists {
        /// The namespace name.
        name: String,
    },
    /// The namespace does not exist.
    #[error("network namespace {name} does not exist; create it with `ip netns add {name}`")]
    NotFound {
        /// The namespace name.
        name: String,
    },
    /// `command_in_netns` was given no program.
    #[error("no command given to run in network namespace {name}")]
    EmptyCommand {
        /// The namespace name.
        name: String,
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
    /// A namespace or mount system call failed.
    #[error(
        "cannot {what}: {source}; this needs root (CAP_SYS_ADMIN), or a rootless vswitchd's namespaces"
    )]
    Sys {
        /// What was being done, in words.
        what: String,
        /// The errno.
        #[source]
        source: Errno,
    },
    /// [`use_dirs`] came after other directories were already in use.
    #[error("sandboxes of this process already live under {}; they cannot move", current.display())]
    DirsFixed {
        /// The namespace directory in use.
        current: PathBuf,
    },
    /// Configuring the namespace's interfaces failed.
    #[error(transparent)]
    Netns(#[from] crate::netns::NetnsError),
    /// Deleting a namespace left something behind; every step was tried.
    #[error("network namespace {name} was not fully deleted: {}", join(failures))]
    DeleteIncomplete {
        /// The namespace name.
        name: String,
        /// Every step that failed.
        failures: Vec<SandboxError>,
    },
}

fn join(errors: &[SandboxError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> SandboxError {
    let what = what.into();
    move |source| SandboxError::Io { what, source }
}

fn sys_err(what: impl Into<String>) -> impl FnOnce(Errno) -> SandboxError {
    let what = what.into();
    move |source| SandboxError::Sys { what, source }
}

/// `/run/netns/NAME` (rootless: `RUNTIME/netns/NAME`).
pub fn netns_path(name: &str) -> PathBuf {
    dirs().netns.join(name)
}

/// `/etc/netns/NAME` (rootless: `RUNTIME/etc/NAME`).
fn etc_dir(name: &str) -> PathBuf {
    dirs().etc.join(name)
}

fn validate_name(name: &str) -> Result<(), SandboxError> {
    let ok = !name.is_empty()
        && name.len() <= 255
        && name != "."
        && name != ".."
        && !name.contains('/')
        && !name.contains('\0');
    if ok {
        Ok(())
    } else {
        Err(SandboxError::InvalidName {
            name: name.to_string(),
        })
    }
}

/// Create a named network namespace at `/run/netns/NAME` exactly as
/// `ip netns add NAME` does: make `/run/netns` a shared mount point (bind-
/// mounting it on itself first if it is not a mount point), create the file,
/// and bind-mount a fresh namespace (made with `unshare(CLONE_NEWNET)` on a
/// short-lived thread) onto it. [`SandboxError::AlreadyExists`] if the file
/// exists. Nothing is left behind on failure.
pub fn create_netns(name: &str) -> Result<PathBuf, SandboxError> {
    validate_name(name)?;
    make_run_dir_shared()?;

    let path = netns_path(name);
    match OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o000)
        .open(&path)
    {
        Ok(file) => drop(file),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            return Err(SandboxError::AlreadyExists {
                name: name.to_string(),
            })
        }
        Err(e) => return Err(io_err(format!("create {}", path.display()))(e)),
    }

    let target = path.clone();
    let mounted = std::thread::Builder::new()
        .name("vswitch-netns-add".into())
        .spawn(move || -> Result<(), SandboxError> {
            nix::sched::unshare(CloneFlags::CLONE_NEWNET)
                .map_err(sys_err("create a network namespace (unshare CLONE_NEWNET)"))?;
            nix::mount::mount(
                Some("/proc/thread-self/ns/net"),
                &target,
                Some("none"),
                MsFlags::MS_BIND,
                None::<&str>,
            )
            .map_err(sys_err(format!(
                "bind-mount the new namespace on {}",
                target.display()
            )))
        })
        .map_err(io_err("start a thread to create the namespace"))
        .and_then(|t| match t.join() {
            Ok(r) => r,
            Err(panic) => std::panic::resume_unwind(panic),
        });
    if let Err(err) = mounted {
        if let Err(e) = fs::remove_file(&path) {
            tracing::warn!(path = %path.display(), error = %e, "cannot remove the namespace file after a failed create");
        }
        return Err(err);
    }
    tracing::debug!(netns = name, "network namespace created");
    Ok(path)
}

/// Make /run/netns a shared mount point, as iproute2's `netns_add` does, so
/// namespace mounts made later propagate to every mount namespace that was
/// cloned from this one (and `ip netns` sees them), and unmounts reach the
/// copies that commands run in. (Rootless, the pause process did this
/// already; the call just confirms it.)
fn make_run_dir_shared() -> Result<(), SandboxError> {
    let _guard = RUN_DIR_SETUP.lock().unwrap_or_else(|p| p.into_inner());
    let dir = dirs().netns.as_path();
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(dir)
        .map_err(io_err(format!("create {}", dir.display())))?;
    let mut bound = false;
    loop {
        match nix::mount::mount(
            None::<&str>,
            dir,
            Some("none"),
            MsFlags::MS_SHARED | MsFlags::MS_REC,
            None::<&str>,
        ) {
            Ok(()) => return Ok(()),
            // EINVAL: not a mount point yet. Bind it onto itself, once.
            Err(Errno::EINVAL) if !bound => {
                nix::mount::mount(
                    Some(dir),
                    dir,
                    Some("none"),
                    MsFlags::MS_BIND | MsFlags::MS_REC,
                    None::<&str>,
                )
                .map_err(sys_err(format!("bind-mount {} on itself", dir.display())))?;
                bound = true;
            }
            Err(e) => return Err(sys_err(format!("make {} a shared mount", dir.display()))(e)),
        }
    }
}

/// Bring `lo` up inside the named namespace (`ip netns add` leaves it down),
/// for sandboxes that get no other interface.
pub fn loopback_up(name: &str) -> Result<(), SandboxError> {
    validate_name(name)?;
    let path = netns_path(name);
    crate::netns::loopback_up(&path).map_err(|e| match e {
        crate::netns::NetnsError::NamespaceNotFound { .. } => SandboxError::NotFound {
            name: name.to_string(),
        },
        other => SandboxError::Netns(other),
    })
}

/// Delete a named namespace as `ip netns delete` does: lazily unmount
/// `/run/netns/NAME`, remove the file, and remove `/etc/netns/NAME`. Every
/// step is tried even when one fails ([`SandboxError::DeleteIncomplete`]
/// lists them). [`SandboxError::NotFound`] if neither exists. The namespace
/// itself lives on while processes or open descriptors still use it.
pub fn delete_netns(name: &str) -> Result<(), SandboxError> {
    validate_name(name)?;
    let path = netns_path(name);
    let etc = etc_dir(name);
    let has_file = fs::symlink_metadata(&path).is_ok();
    let has_etc = fs::symlink_metadata(&etc).is_ok();
    if !has_file && !has_etc {
        return Err(SandboxError::NotFound {
            name: name.to_string(),
        });
    }
    let mut failures = Vec::new();
    if has_file {
        match nix::mount::umount2(&path, MntFlags::MNT_DETACH) {
            // EINVAL: not mounted (a file left by a crash); just remove it.
            Ok(()) | Err(Errno::EINVAL) | Err(Errno::ENOENT) => {}
            Err(e) => failures.push(sys_err(format!("unmount {}", path.display()))(e)),
        }
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => failures.push(io_err(format!("remove {}", path.display()))(e)),
        }
    }
    if has_etc {
        match fs::remove_dir_all(&etc) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => failures.push(io_err(format!("remove {}", etc.display()))(e)),
        }
    }
    if failures.is_empty() {
        tracing::debug!(netns = name, "network namespace deleted");
        Ok(())
    } else {
        Err(SandboxError::DeleteIncomplete {
            name: name.to_string(),
            failures,
        })
    }
}

/// The text of a resolv.conf pointing at `nameservers`.
fn resolv_conf_text(nameservers: &[IpAddr]) -> String {
    let mut text = String::from("# Generated by vswitch: the network's embedded DNS.\n");
    for ns in nameservers {
        text.push_str(&format!("nameserver {ns}\n"));
    }
    text.push_str("options ndots:0\n");
    text
}

/// Write `/etc/netns/NAME/resolv.conf` with `nameservers` (and
/// `options ndots:0`), creating the directory. Commands started by
/// [`command_in_netns`] (and `ip netns exec`) see it as `/etc/resolv.conf`.
/// The file is rewritten in place, so commands already running with it
/// bind-mounted see the new contents.
pub fn write_resolv_conf(name: &str, nameservers: &[IpAddr]) -> Result<(), SandboxError> {
    validate_name(name)?;
    let dir = etc_dir(name);
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(&dir)
        .map_err(io_err(format!("create {}", dir.display())))?;
    let path = dir.join("resolv.conf");
    fs::write(&path, resolv_conf_text(nameservers))
        .map_err(io_err(format!("write {}", path.display())))
}

/// A `Command` that runs `argv` inside the namespace the way `ip netns exec`
/// does. In the child, between fork and exec: `setns` to the namespace,
/// `unshare(CLONE_NEWNS)`, make `/` recursively a slave mount, bind-mount
/// each file of `/etc/netns/NAME` over `/etc/<file>`, and mount a fresh
/// `/sys` that describes the new namespace. Everything the child needs (the
/// namespace descriptor, every path) is prepared here, before the fork; the
/// child only makes system calls.
///
/// The caller may still set the environment, working directory and stdio of
/// the returned command before spawning it.
pub fn command_in_netns(name: &str, argv: &[String]) -> Result<Command, SandboxError> {
    validate_name(name)?;
    let Some((program, args)) = argv.split_first() else {
        return Err(SandboxError::EmptyCommand {
            name: name.to_string(),
        });
    };
    let path = netns_path(name);
    let netns: OwnedFd = File::open(&path)
        .map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => SandboxError::NotFound {
                name: name.to_string(),
            },
            _ => io_err(format!("open {}", path.display()))(e),
        })?
        .into();

    let mut binds = Vec::new();
    let etc = etc_dir(name);
    match fs::read_dir(&etc) {
        Ok(entries) => {
            for entry in entries {
                let entry = entry.map_err(io_err(format!("read {}", etc.display())))?;
                let file = entry.file_name();
                let src = etc.join(&file);
                let dst = Path::new("/etc").join(&file);
                let warning = format!(
                    "vswitch: cannot bind {} over {}: ",
                    src.display(),
                    dst.display()
                );
                binds.push(sys::Bind {
                    src: cstring(src.as_os_str().as_bytes())?,
                    dst: cstring(dst.as_os_str().as_bytes())?,
                    warning: warning.into_bytes(),
                });
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err(format!("read {}", etc.display()))(e)),
    }

    let plan = sys::EnterPlan {
        netns,
        sysfs_source: cstring(name.as_bytes())?,
        binds,
    };
    let mut cmd = Command::new(program);
    cmd.args(args);
    sys::enter_before_exec(&mut cmd, plan);
    Ok(cmd)
}

fn cstring(bytes: &[u8]) -> Result<CString, SandboxError> {
    CString::new(bytes).map_err(|_| SandboxError::Io {
        what: format!("use the path {:?}", String::from_utf8_lossy(bytes)),
        source: io::Error::new(io::ErrorKind::InvalidInput, "it contains a NUL byte"),
    })
}

#[allow(unsafe_code)]
mod sys {
    //! The `pre_exec` hook of [`super::command_in_netns`].

    use std::ffi::CString;
    use std::io;
    use std::os::fd::{AsFd, OwnedFd};
    use std::os::unix::process::CommandExt;
    use std::process::Command;

    use nix::errno::Errno;
    use nix::mount::{MntFlags, MsFlags};
    use nix::sched::CloneFlags;
    use nix::sys::statvfs::FsFlags;

    /// One `/etc/netns/NAME/<file>` to bind over `/etc/<file>`.
    pub(super) struct Bind {
        pub(super) src: CString,
        pub(super) dst: CString,
        /// Printed (followed by the errno text) when the bind fails.
        pub(super) warning: Vec<u8>,
    }

    /// Everything the child needs, prepared before the fork.
    pub(super) struct EnterPlan {
        pub(super) netns: OwnedFd,
        pub(super) sysfs_source: CString,
        pub(super) binds: Vec<Bind>,
    }

    const SYS: &std::ffi::CStr = c"/sys";
    const ROOT: &std::ffi::CStr = c"/";
    const NONE: &std::ffi::CStr = c"none";
    const SYSFS: &std::ffi::CStr = c"sysfs";

    impl EnterPlan {
        /// Runs in the forked child: only system calls on prepared data
        /// (nix passes `&CStr` paths straight through, without copying), no
        /// allocation, no locks.
        fn enter(&self) -> io::Result<()> {
            nix::sched::setns(&self.netns, CloneFlags::CLONE_NEWNET)?;
            nix::sched::unshare(CloneFlags::CLONE_NEWNS)?;
            // Do not let our mounts propagate back to the host.
            nix::mount::mount(
                None::<&std::ffi::CStr>,
                ROOT,
                Some(NONE),
                MsFlags::MS_SLAVE | MsFlags::MS_REC,
                None::<&std::ffi::CStr>,
            )?;
            // A /sys that describes the new namespace. If the old one cannot
            // be unmounted we mount over it, read-only when it was read-only
            // (a read-write sysfs cannot shadow a read-only one).
            let mut flags = MsFlags::empty();
            if nix::mount::umount2(SYS, MntFlags::MNT_DETACH).is_err() {
                if let Ok(st) = nix::sys::statvfs::statvfs(SYS) {
                    if st.flags().contains(FsFlags::ST_RDONLY) {
                        flags = MsFlags::MS_RDONLY;
                    }
                }
            }
            nix::mount::mount(
                Some(self.sysfs_source.as_c_str()),
                SYS,
                Some(SYSFS),
                flags,
                None::<&std::ffi::CStr>,
            )?;
            for bind in &self.binds {
                if let Err(e) = nix::mount::mount(
                    Some(bind.src.as_c_str()),
                    bind.dst.as_c_str(),
                    Some(NONE),
                    MsFlags::MS_BIND,
                    None::<&std::ffi::CStr>,
                ) {
                    warn(&bind.warning, e);
                }
            }
            Ok(())
        }
    }

    /// Write a prepared warning and the errno's text to stderr, unbuffered.
    fn warn(prefix: &[u8], e: Errno) {
        let stderr = io::stderr();
        for part in [prefix, e.desc().as_bytes(), b"\n"] {
            // Nothing more to do if stderr is gone.
            let _ = nix::unistd::write(stderr.as_fd(), part);
        }
    }

    /// Install `plan` as the command's `pre_exec` hook.
    pub(super) fn enter_before_exec(cmd: &mut Command, plan: EnterPlan) {
        // SAFETY: the hook runs in the child between fork and exec, where only
        // async-signal-safe work is allowed. `EnterPlan::enter` makes only
        // system calls (setns, unshare, mount, umount2, statvfs, write)
        // through nix wrappers that pass the pre-built `CStr`s and the
        // descriptor opened before the fork straight to libc; it allocates
        // nothing, takes no lock, and `Errno` -> `io::Error` conversion is a
        // plain integer wrap. The plan is moved into the closure, so the
        // descriptor and strings outlive every spawn of the command.
        unsafe {
            cmd.pre_exec(move || plan.enter());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    #[rstest]
    #[case("web-1", true)]
    #[case("a.b_c", true)]
    #[case("", false)]
    #[case(".", false)]
    #[case("..", false)]
    #[case("a/b", false)]
    #[case("nul\0", false)]
    fn namespace_names(#[case] name: &str, #[case] ok: bool) {
        assert_eq!(validate_name(name).is_ok(), ok);
    }

    #[test]
    fn too_long_name_is_refused() {
        assert!(validate_name(&"x".repeat(256)).is_err());
        assert!(validate_name(&"x".repeat(255)).is_ok());
    }

    #[test]
    fn resolv_conf_lists_every_nameserver_then_ndots() {
        let text = resolv_conf_text(&["10.1.0.1".parse().unwrap(), "fd00::1".parse().unwrap()]);
        let lines: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(
            lines,
            [
                "nameserver 10.1.0.1",
                "nameserver fd00::1",
                "options ndots:0"
            ]
        );
    }

    #[test]
    fn paths_follow_iproute2() {
        assert_eq!(netns_path("web"), Path::new("/run/netns/web"));
        assert_eq!(etc_dir("web"), Path::new("/etc/netns/web"));
    }

    #[test]
    fn dirs_are_fixed_once_in_use() {
        // Unit tests never switch to rootless directories, so iproute2's are
        // in use; asking for them again is fine, moving is refused.
        assert_eq!(*dirs(), SandboxDirs::iproute2());
        use_dirs(SandboxDirs::iproute2()).unwrap();
        let err = use_dirs(SandboxDirs {
            netns: PathBuf::from("/run/user/1000/vswitch/netns"),
            etc: PathBuf::from("/run/user/1000/vswitch/etc"),
        })
        .unwrap_err();
        assert!(matches!(err, SandboxError::DirsFixed { .. }), "{err}");
        assert!(err.to_string().contains("/run/netns"), "{err}");
        assert_eq!(netns_path("web"), Path::new("/run/netns/web"));
    }

    #[test]
    fn empty_command_and_missing_namespace_are_errors() {
        let name = format!("vswitch-none-{}", std::process::id());
        let err = command_in_netns(&name, &[]).unwrap_err();
        assert!(matches!(err, SandboxError::EmptyCommand { .. }), "{err}");
        let err = command_in_netns(&name, &["true".to_string()]).unwrap_err();
        assert!(matches!(err, SandboxError::NotFound { .. }), "{err}");
        assert!(err.to_string().contains("ip netns add"), "{err}");
        let err = delete_netns(&name).unwrap_err();
        assert!(matches!(err, SandboxError::NotFound { .. }), "{err}");
    }
}
