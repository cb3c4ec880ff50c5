//! Where the CPU time goes during a workload: per-thread time of watched
//! processes (the daemon) from `/proc/PID/task/TID/stat`, and the whole
//! machine's user/system/softirq split from `/proc/stat`. Every figure is
//! in percent of one core (100 = one core busy), as `top -H` shows threads.

use std::collections::BTreeMap;
use std::time::Instant;

use serde::Serialize;

/// A process whose threads are sampled, e.g. `("vswitchd", pid)`.
#[derive(Clone, Debug, Serialize)]
pub struct Watched {
    pub label: String,
    pub pid: u32,
}

/// Cumulative CPU ticks of one thread.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ThreadTicks {
    pub tid: u32,
    pub comm: String,
    pub ticks: u64,
}

/// utime + stime and the name from a `/proc/.../stat` line. The name is in
/// parentheses and may itself hold spaces or parentheses, so split at the
/// last `)`.
pub fn parse_task_stat(line: &str) -> Option<(String, u64)> {
    let open = line.find('(')?;
    let close = line.rfind(')')?;
    let comm = line.get(open + 1..close)?.to_string();
    // After ") ": field 3 (state) is index 0, so utime (14) is 11, stime 12.
    let rest: Vec<&str> = line.get(close + 1..)?.split_whitespace().collect();
    let utime: u64 = rest.get(11)?.parse().ok()?;
    let stime: u64 = rest.get(12)?.parse().ok()?;
    Some((comm, utime + stime))
}

/// Every thread of `pid` now (empty if it is gone).
pub fn threads(pid: u32) -> Vec<ThreadTicks> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    let mut v: Vec<ThreadTicks> = dir
        .filter_map(Result::ok)
        .filter_map(|e| {
            let tid: u32 = e.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
            let (comm, ticks) = parse_task_stat(&stat)?;
            Some(ThreadTicks { tid, comm, ticks })
        })
        .collect();
    v.sort_by_key(|t| t.tid);
    v
}

/// The machine's cumulative ticks from the `cpu ` line of `/proc/stat`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SystemTicks {
    pub user: u64,
    pub system: u64,
    pub idle: u64,
    pub irq: u64,
    pub softirq: u64,
    pub other: u64,
}

pub fn parse_proc_stat(text: &str) -> Option<SystemTicks> {
    let line = text.lines().find(|l| l.starts_with("cpu "))?;
    let f: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|x| x.parse().ok())
        .collect::<Option<_>>()?;
    // user nice system idle iowait irq softirq steal [guest guest_nice]
    let at = |i: usize| f.get(i).copied().unwrap_or(0);
    Some(SystemTicks {
        user: at(0) + at(1),
        system: at(2),
        idle: at(3) + at(4),
        irq: at(5),
        softirq: at(6),
        other: at(7),
    })
}

fn system_ticks() -> SystemTicks {
    std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|s| parse_proc_stat(&s))
        .unwrap_or_default()
}

/// One thread's share over a workload (threads of a name are summed).
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct ThreadShare {
    pub process: String,
    pub thread: String,
    pub threads: usize,
    pub cpu_percent: f64,
}

/// The machine's split over a workload, in percent of one core each
/// (they add up to about 100 × nproc).
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct SystemShare {
    pub user: f64,
    pub system: f64,
    pub softirq: f64,
    pub irq: f64,
    pub idle: f64,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct CpuReport {
    pub seconds: f64,
    pub system: SystemShare,
    /// Busiest first.
    pub threads: Vec<ThreadShare>,
}

/// Samples taken at the start of a workload.
#[derive(Debug)]
pub struct CpuSampler {
    start: Instant,
    system: SystemTicks,
    watched: Vec<(Watched, Vec<ThreadTicks>)>,
    ticks_per_second: f64,
}

impl CpuSampler {
    pub fn start(watched: &[Watched]) -> CpuSampler {
        let ticks_per_second = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
            .ok()
            .flatten()
            .filter(|t| *t > 0)
            .unwrap_or(100) as f64;
        CpuSampler {
            start: Instant::now(),
            system: system_ticks(),
            watched: watched
                .iter()
                .map(|w| (w.clone(), threads(w.pid)))
                .collect(),
            ticks_per_second,
        }
    }

    pub fn finish(self) -> CpuReport {
        let seconds = self.start.elapsed().as_secs_f64();
        let scale = 100.0 / (seconds * self.ticks_per_second).max(f64::MIN_POSITIVE);
        let now = system_ticks();
        let pct = |a: u64, b: u64| a.saturating_sub(b) as f64 * scale;
        let system = SystemShare {
            user: pct(now.user, self.system.user),
            system: pct(now.system, self.system.system),
            softirq: pct(now.softirq, self.system.softirq),
            irq: pct(now.irq, self.system.irq),
            idle: pct(now.idle, self.system.idle),
        };
        let mut shares = Vec::new();
        for (w, before) in self.watched {
            let deltas = thread_deltas(&before, &threads(w.pid));
            let mut by_name: BTreeMap<String, (usize, u64)> = BTreeMap::new();
            for (comm, delta) in deltas {
                let e = by_name.entry(comm).or_default();
                e.0 += 1;
                e.1 += delta;
            }
            shares.extend(by_name.into_iter().map(|(thread, (n, ticks))| ThreadShare {
                process: w.label.clone(),
                thread,
                threads: n,
                cpu_percent: ticks as f64 * scale,
            }));
        }
        shares.sort_by(|a, b| b.cpu_percent.total_cmp(&a.cpu_percent));
        CpuReport {
            seconds,
            system,
            threads: shares,
        }
    }
}

/// (name, ticks used since `before`) for every thread alive now; a thread
/// born during the workload counts from zero.
pub fn thread_deltas(before: &[ThreadTicks], after: &[ThreadTicks]) -> Vec<(String, u64)> {
    after
        .iter()
        .map(|t| {
            let start = before
                .iter()
                .find(|b| b.tid == t.tid)
                .map_or(0, |b| b.ticks);
            (t.comm.clone(), t.ticks.saturating_sub(start))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_stat_with_spaces_and_parens_in_the_name() {
        let line = "1234 (vswitch (data) path) R 1 1234 1234 0 -1 4194560 100 0 0 0 250 40 0 0 20 0 3 0 500 1000 10";
        assert_eq!(
            parse_task_stat(line),
            Some(("vswitch (data) path".to_string(), 290))
        );
        assert_eq!(parse_task_stat("1234 (x) R 1"), None);
    }

    #[test]
    fn our_own_threads_are_visible() {
        let me = threads(std::process::id());
        assert!(!me.is_empty());
        assert!(me.iter().any(|t| t.tid == std::process::id()));
    }

    #[test]
    fn proc_stat_cpu_line() {
        let text = "cpu  100 5 50 1000 10 1 7 2 0 0\ncpu0 50 2 25 500 5 0 3 1 0 0\nintr 1\n";
        assert_eq!(
            parse_proc_stat(text),
            Some(SystemTicks {
                user: 105,
                system: 50,
                idle: 1010,
                irq: 1,
                softirq: 7,
                other: 2,
            })
        );
        assert_eq!(parse_proc_stat("intr 1\n"), None);
    }

    #[test]
    fn deltas_count_new_threads_from_zero() {
        let t = |tid, comm: &str, ticks| ThreadTicks {
            tid,
            comm: comm.into(),
            ticks,
        };
        let before = [t(1, "main", 10), t(2, "dp", 100)];
        let after = [t(1, "main", 12), t(2, "dp", 600), t(3, "new", 5)];
        assert_eq!(
            thread_deltas(&before, &after),
            vec![("main".into(), 2), ("dp".into(), 500), ("new".into(), 5)]
        );
    }

    /// This thread's own CPU ticks, as the kernel counts them.
    fn own_ticks() -> u64 {
        let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap();
        parse_task_stat(&stat).unwrap().1
    }

    #[test]
    fn a_thread_that_burns_cpu_is_reported_with_at_least_that_time() {
        use std::sync::mpsc;
        let me = Watched {
            label: "self".into(),
            pid: std::process::id(),
        };
        let sampler = CpuSampler::start(std::slice::from_ref(&me));
        let (burnt_tx, burnt_rx) = mpsc::channel();
        let (done_tx, done_rx) = mpsc::channel::<()>();
        // Burns 30 ticks of its own CPU time (however busy the machine
        // is), then stays alive until the sample is taken.
        let spin = std::thread::Builder::new()
            .name("nb-spin".into())
            .spawn(move || {
                let start = own_ticks();
                let give_up = Instant::now() + std::time::Duration::from_secs(60);
                let mut x = 0u64;
                while own_ticks() < start + 30 && Instant::now() < give_up {
                    for _ in 0..100_000 {
                        x = std::hint::black_box(x.wrapping_add(1));
                    }
                }
                burnt_tx.send(own_ticks() - start).unwrap();
                let _ = done_rx.recv();
            })
            .unwrap();
        let burnt = burnt_rx.recv().unwrap();
        let report = sampler.finish();
        done_tx.send(()).unwrap();
        spin.join().unwrap();
        assert!(burnt >= 30, "the machine gave the thread no time");
        let tps = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
            .unwrap()
            .unwrap() as f64;
        let share = report
            .threads
            .iter()
            .find(|t| t.thread == "nb-spin")
            .expect("spinning thread sampled");
        let reported_ticks = share.cpu_percent / 100.0 * report.seconds * tps;
        assert!(
            (reported_ticks - burnt as f64).abs() < 1.5,
            "reported {reported_ticks:.1} ticks, burnt {burnt}: {report:?}"
        );
        // One thread never uses more than one core.
        assert!(
            share.cpu_percent <= 100.0 + 100.0 / (report.seconds * tps),
            "{report:?}"
        );
        // The idle test thread is listed too, at (near) zero.
        assert!(report.threads.len() >= 2, "{report:?}");
    }
}
