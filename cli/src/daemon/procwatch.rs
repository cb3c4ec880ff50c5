//! Whether a process lives, and waiting for it to end, for processes this
//! daemon did not start (`vswitch run`'s commands and supervisors).
//!
//! A process is named by its pid and its start time ([`ProcRef`]), so a
//! pid the kernel gave to another process since is never taken for it.
//! Waiting uses a pidfd (`pidfd_open(2)`, Linux 5.3), which turns readable
//! when the process exits, whoever its parent is; where the kernel has no
//! pidfd, the process is looked at every half second instead.

use std::time::Duration;

use super::state::ProcRef;

/// The start time of `pid` (field 22 of `/proc/PID/stat`), or `None` when
/// there is no such process or it is a zombie waiting for its parent.
pub fn start_time(pid: u32) -> Option<u64> {
    stat(pid).and_then(|(zombie, start)| (!zombie).then_some(start))
}

/// Whether `pid` is a zombie, and its start time.
fn stat(pid: u32) -> Option<(bool, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The fields after the command name, which is in parentheses and may
    // hold anything: field 3 (the state) first.
    let (_, rest) = stat.rsplit_once(')')?;
    let mut fields = rest.split_whitespace();
    let state = fields.next()?;
    let start = fields.nth(18)?.parse().ok()?;
    Some((state == "Z" || state == "X", start))
}

/// A reference to the process `pid` as it is now, also when it has just
/// exited and its parent has not yet reaped it (a command that ends at
/// once is still registered by the process that waits for it).
pub fn current(pid: u32) -> Option<ProcRef> {
    stat(pid).map(|(_, start)| ProcRef { pid, start })
}

/// Whether `p` still runs (with start time 0, any process with its pid).
pub fn alive(p: ProcRef) -> bool {
    start_time(p.pid).is_some_and(|t| p.start == 0 || t == p.start)
}

/// Returns once `p` has ended.
pub async fn exited(p: ProcRef) {
    match sys::pidfd_open(p.pid) {
        Ok(fd) => {
            // Opened, then checked: the descriptor is of the process that
            // had this start time, or the process has gone already.
            if !alive(p) {
                return;
            }
            match sys::readable_on_exit(fd) {
                Ok(afd) => {
                    let _ = afd.readable().await;
                }
                Err(e) => {
                    tracing::debug!(pid = p.pid, error = %e, "pidfd not pollable; polling /proc");
                    poll(p).await;
                }
            }
        }
        Err(nix::errno::Errno::ESRCH) => {}
        Err(e) => {
            tracing::debug!(pid = p.pid, error = %e, "no pidfd; polling /proc");
            poll(p).await;
        }
    }
}

async fn poll(p: ProcRef) {
    while alive(p) {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[allow(unsafe_code)]
mod sys {
    use std::os::fd::{FromRawFd, OwnedFd};

    use nix::errno::Errno;
    use tokio::io::unix::AsyncFd;
    use tokio::io::Interest;

    /// The pidfd registered with the runtime's reactor, for its
    /// readability (the process's exit).
    pub(super) fn readable_on_exit(fd: OwnedFd) -> std::io::Result<AsyncFd<OwnedFd>> {
        // SAFETY: an `OwnedFd` is a valid open descriptor, returns the
        // same number from every `as_raw_fd`, and stays open until the
        // `AsyncFd` that owns it is dropped.
        unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }
            .map_err(std::io::Error::from)
    }

    /// `pidfd_open(pid, 0)`: a descriptor that turns readable when the
    /// process exits (nix has no wrapper).
    pub(super) fn pidfd_open(pid: u32) -> Result<OwnedFd, Errno> {
        let pid = libc::pid_t::try_from(pid).map_err(|_| Errno::EINVAL)?;
        // SAFETY: pidfd_open takes a pid and flags by value and touches no
        // memory of ours; it returns a new descriptor or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        if fd < 0 {
            return Err(Errno::last());
        }
        let fd = i32::try_from(fd).map_err(|_| Errno::EBADF)?;
        // SAFETY: `fd` was just returned by the kernel and is owned by no
        // one else.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_alive_and_another_start_time_is_not() {
        let me = current(std::process::id()).expect("this process");
        assert!(me.start > 0);
        assert!(alive(me));
        assert!(alive(ProcRef { start: 0, ..me }));
        assert!(!alive(ProcRef {
            start: me.start + 1,
            ..me
        }));
        assert!(start_time(u32::MAX).is_none());
    }

    #[test]
    fn waits_for_a_child_to_end() {
        let mut child = std::process::Command::new("sleep")
            .arg("0.3")
            .spawn()
            .unwrap();
        let p = current(child.id()).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let t = std::time::Instant::now();
        rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(10), exited(p))
                .await
                .expect("the pidfd turned readable");
        });
        assert!(
            t.elapsed() >= Duration::from_millis(200),
            "{:?}",
            t.elapsed()
        );
        // A zombie (not reaped yet) counts as ended, and is still known.
        assert!(!alive(p));
        assert_eq!(current(child.id()), Some(p));
        child.wait().unwrap();
    }
}
