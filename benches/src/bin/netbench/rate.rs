//! The connections-per-second workload's two ends, run as hidden modes of
//! the netbench binary itself (`ip netns exec NS netbench --echo-server
//! PORT`, `ip netns exec NS netbench --connect-rate ADDR`), so neither end
//! forks a process per connection and the figure is the network path's,
//! not a helper's.
//!
//! One connection: connect, send one byte, read it back, read until the
//! server closes, close. The server closes first, so TIME-WAIT lands on the
//! server's side and the client does not run out of ephemeral ports.
//! Both ends are bounded in time.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::Error;

/// Time one connection may take at each step before it counts as failed.
const STEP_TIMEOUT: Duration = Duration::from_secs(2);
/// Accepting threads in the server; also the client's default concurrency.
pub const WORKERS: u32 = 4;

/// What the client prints (one JSON line) at the end.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RateReport {
    /// Connections that completed the whole exchange.
    pub connections: u64,
    /// Connections that failed at any step (refused, reset, timed out).
    pub failures: u64,
    /// Wall time of the run.
    pub seconds: f64,
    /// Connections open at once.
    pub workers: u32,
}

impl RateReport {
    pub fn per_second(&self) -> f64 {
        if self.seconds > 0.0 {
            self.connections as f64 / self.seconds
        } else {
            0.0
        }
    }
}

fn io_err(context: String) -> impl FnOnce(std::io::Error) -> Error {
    move |source| Error::Io { context, source }
}

/// Answers every connection's first byte and closes it, with [`WORKERS`]
/// threads accepting on one listener; the process exits after `lifetime`.
pub fn echo_server(port: u16, lifetime: Duration) -> Result<(), Error> {
    let addr = SocketAddr::from((Ipv4Addr::UNSPECIFIED, port));
    let listener = TcpListener::bind(addr).map_err(io_err(format!("listening on {addr}")))?;
    for i in 0..WORKERS {
        let l = listener
            .try_clone()
            .map_err(io_err("cloning the listener".into()))?;
        std::thread::Builder::new()
            .name(format!("echo-{i}"))
            .spawn(move || loop {
                if let Ok((s, _)) = l.accept() {
                    // A failed exchange is the client's to count.
                    let _ = answer(s);
                }
            })
            .map_err(io_err("starting an echo thread".into()))?;
    }
    std::thread::sleep(lifetime);
    Ok(())
}

fn answer(mut s: TcpStream) -> std::io::Result<()> {
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(STEP_TIMEOUT))?;
    let mut b = [0u8; 1];
    s.read_exact(&mut b)?;
    s.write_all(&b)
}

/// One connection's whole exchange.
fn exchange(addr: SocketAddr) -> std::io::Result<()> {
    let mut s = TcpStream::connect_timeout(&addr, STEP_TIMEOUT)?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(STEP_TIMEOUT))?;
    s.write_all(b"x")?;
    let mut b = [0u8; 1];
    s.read_exact(&mut b)?;
    if b != *b"x" {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "echo returned another byte",
        ));
    }
    // The server closes first: wait for its FIN.
    match s.read(&mut b)? {
        0 => Ok(()),
        _ => Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "echo sent more than one byte",
        )),
    }
}

/// Runs `workers` connection loops against `addr` for `duration`.
pub fn connect_rate(addr: SocketAddr, duration: Duration, workers: u32) -> RateReport {
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + duration;
    let threads: Vec<_> = (0..workers.max(1))
        .map(|_| {
            let (ok, failed) = (Arc::clone(&ok), Arc::clone(&failed));
            std::thread::spawn(move || {
                let (mut n_ok, mut n_failed) = (0u64, 0u64);
                while Instant::now() < deadline {
                    match exchange(addr) {
                        Ok(()) => n_ok += 1,
                        Err(_) => {
                            n_failed += 1;
                            // Do not spin on an endpoint that refuses at once.
                            std::thread::sleep(Duration::from_millis(1));
                        }
                    }
                }
                ok.fetch_add(n_ok, Ordering::Relaxed);
                failed.fetch_add(n_failed, Ordering::Relaxed);
            })
        })
        .collect();
    for t in threads {
        let _ = t.join();
    }
    RateReport {
        connections: ok.load(Ordering::Relaxed),
        failures: failed.load(Ordering::Relaxed),
        seconds: start.elapsed().as_secs_f64(),
        workers: workers.max(1),
    }
}

/// Reads the client's report from its stdout.
pub fn parse_report(text: &str) -> Result<RateReport, Error> {
    let line = text
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with('{'))
        .ok_or_else(|| Error::Parse {
            tool: "netbench --connect-rate",
            what: format!("no JSON report in {text:?}"),
        })?;
    serde_json::from_str(line).map_err(|e| Error::Parse {
        tool: "netbench --connect-rate",
        what: format!("{e}: {line}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_and_server_complete_connections_on_loopback() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            for s in listener.incoming().take(10_000) {
                let _ = answer(s.unwrap());
            }
        });
        let r = connect_rate(addr, Duration::from_millis(300), 1);
        assert!(r.connections > 10, "{r:?}");
        assert_eq!(r.failures, 0, "{r:?}");
        assert!(r.per_second() > 0.0);
        let parsed = parse_report(&serde_json::to_string(&r).unwrap()).unwrap();
        assert_eq!(parsed, r);
    }

    #[test]
    fn a_refusing_address_counts_failures_and_stays_bounded() {
        // Bind then drop: the port is closed, connects are refused.
        let addr = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let start = Instant::now();
        let r = connect_rate(addr, Duration::from_millis(200), 2);
        assert_eq!(r.connections, 0);
        assert!(r.failures > 0);
        assert!(start.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn a_report_without_json_is_an_error() {
        assert!(parse_report("connect: refused\n").is_err());
    }
}
