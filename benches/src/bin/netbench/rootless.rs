//! The unprivileged side of the rootless scenarios: an ordinary user that
//! netbench creates for one scenario (and removes), as `cli/tests/rootless.rs`
//! does, and the command prefix that runs a program as that user, in a
//! namespace netbench made, as Podman runs pasta and as a user runs
//! `vswitchd --rootless`.
//!
//! netbench stays root to set the stage (the user, namespaces, veths,
//! `/dev/net/tun` at mode 0666, per-namespace sysctls) and to run the
//! workloads' own ends; only the forwarders run as the user.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::exec::{in_ns, Shell};
use crate::scenario::{report_cleanup, STEP};
use crate::Error;

/// `/dev/net/tun` at mode 0666, the mode distributions ship it with (some
/// machines have 0600): rootless vswitchd opens it as the user. Left so.
pub fn tun_usable_by_everyone() -> Result<(), Error> {
    let tun = Path::new("/dev/net/tun");
    let io = |e| Error::Io {
        context: format!("making {} usable by every user", tun.display()),
        source: e,
    };
    let mode = std::fs::metadata(tun).map_err(io)?.permissions().mode();
    if mode & 0o666 != 0o666 {
        std::fs::set_permissions(tun, std::fs::Permissions::from_mode(0o666)).map_err(io)?;
    }
    Ok(())
}

/// How to run a program as the user: credentials and environment.
#[derive(Clone, Debug)]
pub struct RunAs {
    pub uid: u32,
    pub gid: u32,
    /// The user's `HOME`, mode 0700, owned by the user; `XDG_RUNTIME_DIR`
    /// is `HOME/xdg`.
    pub home: PathBuf,
}

impl RunAs {
    /// `argv` as the user (no supplementary groups, a clean `HOME` and
    /// `XDG_RUNTIME_DIR`) in the network namespace `ns`.
    pub fn argv<S: AsRef<str>>(&self, ns: &str, argv: &[S]) -> Vec<String> {
        let mut v = vec![
            "setpriv".to_string(),
            format!("--reuid={}", self.uid),
            format!("--regid={}", self.gid),
            "--clear-groups".into(),
            "--".into(),
            "env".into(),
            "-u".into(),
            "VSWITCH_HOST".into(),
            format!("HOME={}", self.home.display()),
            format!("XDG_RUNTIME_DIR={}", self.xdg().display()),
        ];
        v.extend(argv.iter().map(|s| s.as_ref().to_string()));
        in_ns(ns, &v)
    }

    pub fn xdg(&self) -> PathBuf {
        self.home.join("xdg")
    }

    /// A directory owned by the user, mode 0700.
    pub fn mkdir(&self, dir: &Path) -> Result<(), Error> {
        let io = |e| Error::Io {
            context: format!("making {} for uid {}", dir.display(), self.uid),
            source: e,
        };
        std::fs::create_dir_all(dir).map_err(io)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(io)?;
        nix::unistd::chown(
            dir,
            Some(nix::unistd::Uid::from_raw(self.uid)),
            Some(nix::unistd::Gid::from_raw(self.gid)),
        )
        .map_err(|e| io(e.into()))
    }
}

/// An ordinary user made for one scenario. Removing it (or dropping it)
/// kills every process the user still runs (all netbench's: the user is
/// new), deletes the user and its home.
#[derive(Debug)]
pub struct User {
    sh: Shell,
    name: String,
    pub run_as: RunAs,
    alive: bool,
}

impl User {
    /// `useradd NAME` (no home made by useradd, no login shell) and a home
    /// under the system's temporary directory, which the user can reach.
    pub fn create(sh: &Shell, name: String) -> Result<User, Error> {
        sh.ok(
            &[
                "useradd",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                "--user-group",
                &name,
            ],
            STEP,
        )?;
        let mut user = User {
            sh: sh.clone(),
            run_as: RunAs {
                uid: 0,
                gid: 0,
                home: std::env::temp_dir().join(&name),
            },
            name,
            alive: true,
        };
        // From here on, dropping `user` removes it.
        let id = |flag: &str| -> Result<u32, Error> {
            let out = user.sh.ok(&["id", flag, &user.name], STEP)?;
            out.trim().parse().map_err(|_| Error::Parse {
                tool: "id",
                what: format!("`id {flag} {}` printed {out:?}", user.name),
            })
        };
        let (uid, gid) = (id("-u")?, id("-g")?);
        user.run_as.uid = uid;
        user.run_as.gid = gid;
        let home = user.run_as.home.clone();
        let _ = std::fs::remove_dir_all(&home);
        user.run_as.mkdir(&home)?;
        user.run_as.mkdir(&user.run_as.xdg())?;
        Ok(user)
    }

    /// Copies `bins` into the user's home (where the user may run them
    /// whatever the build directory's modes); returns the copies' paths.
    pub fn copy_binaries(&self, bins: &[&Path]) -> Result<Vec<PathBuf>, Error> {
        let dir = self.run_as.home.join("bin");
        self.run_as.mkdir(&dir)?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).map_err(|e| {
            Error::Io {
                context: format!("chmod {}", dir.display()),
                source: e,
            }
        })?;
        bins.iter()
            .map(|b| {
                let to = dir.join(b.file_name().unwrap_or_default());
                std::fs::copy(b, &to).map_err(|e| Error::Io {
                    context: format!("copying {} to {}", b.display(), to.display()),
                    source: e,
                })?;
                Ok(to)
            })
            .collect()
    }

    /// Pids of the user's live processes (zombies hold nothing).
    fn processes(&self) -> Vec<i32> {
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter_map(|e| {
                let pid = e.file_name().to_str()?.parse::<i32>().ok()?;
                let status = std::fs::read_to_string(e.path().join("status")).ok()?;
                let field = |name: &str| {
                    status
                        .lines()
                        .find_map(|l| l.strip_prefix(name))
                        .map(str::trim_start)
                };
                let uid = field("Uid:")?
                    .split_whitespace()
                    .next()?
                    .parse::<u32>()
                    .ok()?;
                let zombie = field("State:")?.starts_with('Z');
                (uid == self.run_as.uid && !zombie).then_some(pid)
            })
            .collect()
    }

    /// Kills the user's processes, deletes the user and its home; returns
    /// every failure. A second call does nothing.
    pub fn remove(&mut self) -> Vec<Error> {
        if !std::mem::replace(&mut self.alive, false) {
            return Vec::new();
        }
        let mut errors = Vec::new();
        if self.run_as.uid != 0 {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let pids = self.processes();
                if pids.is_empty() {
                    break;
                }
                if Instant::now() > deadline {
                    errors.push(Error::Setup(format!(
                        "processes {pids:?} of user {} survived SIGKILL",
                        self.name
                    )));
                    break;
                }
                for pid in pids {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        if let Err(e) = self.sh.cleanup(&["userdel", &self.name]) {
            errors.push(e);
        }
        if let Err(e) = std::fs::remove_dir_all(&self.run_as.home) {
            if e.kind() != std::io::ErrorKind::NotFound {
                errors.push(Error::Io {
                    context: format!("removing {}", self.run_as.home.display()),
                    source: e,
                });
            }
        }
        errors
    }
}

impl Drop for User {
    fn drop(&mut self) {
        report_cleanup(self.remove());
    }
}

/// The first child of `pid` whose network namespace is not `pid`'s own:
/// the namespace a forwarder made (pasta's spawned command).
pub fn child_in_other_netns(pid: u32) -> Option<u32> {
    let netns = |p: u32| std::fs::read_link(format!("/proc/{p}/ns/net")).ok();
    let own = netns(pid)?;
    let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).ok()?;
    children
        .split_whitespace()
        .filter_map(|c| c.parse::<u32>().ok())
        .find(|&c| netns(c).is_some_and(|n| n != own))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_run_as_the_user_in_the_namespace() {
        let r = RunAs {
            uid: 1234,
            gid: 1235,
            home: PathBuf::from("/tmp/nbx"),
        };
        let v = r.argv("nbxh", &["pasta", "-f"]);
        let s = v.join(" ");
        assert!(s.starts_with("ip netns exec nbxh setpriv"), "{s}");
        assert!(
            s.contains("--reuid=1234 --regid=1235 --clear-groups"),
            "{s}"
        );
        assert!(
            s.ends_with("HOME=/tmp/nbx XDG_RUNTIME_DIR=/tmp/nbx/xdg pasta -f"),
            "{s}"
        );
    }

    #[test]
    fn a_process_without_children_has_none_elsewhere() {
        assert_eq!(child_in_other_netns(std::process::id()), None);
    }
}
