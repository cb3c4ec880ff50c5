//! The 64-byte packet-rate workload's two ends, run as hidden modes of the
//! netbench binary (`netbench --udp-sink PORT` in B, `netbench --udp-flood
//! ADDR` in A), like the connection-rate pair in `rate.rs`.
//!
//! The sender writes UDP datagrams of [`PAYLOAD`] bytes (14 Ethernet + 20
//! IPv4 + 8 UDP + 18 = 60 bytes on the wire, 64 with the frame check
//! sequence: the smallest Ethernet frame) in `sendmmsg` batches of
//! [`BATCH`] as fast as the path takes them, for a fixed time and at most
//! [`MAX_PACKETS`]. The receiver reads them in `recvmmsg` batches and counts
//! those that carry this run's tag; it stops once it has seen the sender's
//! packets and then none for [`IDLE_END`], or at the end of its lifetime.
//! The figure is what arrived per second of sending; the loss is what was
//! sent and did not arrive (in the switch, or in B's socket buffer).

use std::io::{IoSlice, IoSliceMut};
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use nix::sys::socket::{
    recvmmsg, sendmmsg, setsockopt, sockopt, MsgFlags, MultiHeaders, SockaddrIn,
};
use serde::{Deserialize, Serialize};

use crate::Error;

/// UDP payload bytes: with UDP, IPv4 and Ethernet headers and the FCS, a
/// 64-byte frame.
pub const PAYLOAD: usize = 18;
/// Datagrams per `sendmmsg` / `recvmmsg` call.
pub const BATCH: usize = 64;
/// An upper bound on what one run sends, whatever the duration.
pub const MAX_PACKETS: u64 = 2_000_000_000;
/// The receiver ends this long after the last datagram it saw.
pub const IDLE_END: Duration = Duration::from_secs(1);
/// Socket buffers asked for on both ends (`SO_*BUFFORCE` as root).
const SOCKET_BUFFER: usize = 8 << 20;
/// How often a blocked receive looks at the clock.
const RECV_TICK: Duration = Duration::from_millis(100);
/// First bytes of every datagram: "nbpk".
const MAGIC: [u8; 4] = *b"nbpk";

/// What the sender prints (one JSON line) at the end.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct FloodReport {
    /// Datagrams the kernel accepted from `sendmmsg`.
    pub sent: u64,
    /// Calls that failed (e.g. `ENOBUFS` from a full queue); their
    /// datagrams are not counted as sent.
    pub send_errors: u64,
    /// Wall time of the sending loop.
    pub seconds: f64,
}

/// What the receiver prints (one JSON line) at the end.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SinkReport {
    /// Datagrams of this run received.
    pub received: u64,
    /// Datagrams that were not this run's (wrong size or tag); not counted.
    pub foreign: u64,
    /// Seconds between the first and the last datagram of this run.
    pub active_seconds: f64,
}

/// Both ends' reports together: the workload's result.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct PacketRate {
    pub sent: u64,
    pub received: u64,
    pub send_seconds: f64,
    pub send_errors: u64,
    pub receive_active_seconds: f64,
}

impl PacketRate {
    pub fn new(flood: FloodReport, sink: SinkReport) -> PacketRate {
        PacketRate {
            sent: flood.sent,
            received: sink.received,
            send_seconds: flood.seconds,
            send_errors: flood.send_errors,
            receive_active_seconds: sink.active_seconds,
        }
    }

    /// Datagrams that arrived per second of sending.
    pub fn received_per_second(&self) -> f64 {
        per_second(self.received, self.send_seconds)
    }

    /// Datagrams the sender got out per second.
    pub fn sent_per_second(&self) -> f64 {
        per_second(self.sent, self.send_seconds)
    }

    /// The share of sent datagrams that did not arrive, in percent.
    pub fn loss_percent(&self) -> f64 {
        if self.sent == 0 {
            return 0.0;
        }
        100.0 * self.sent.saturating_sub(self.received) as f64 / self.sent as f64
    }
}

fn per_second(n: u64, seconds: f64) -> f64 {
    if seconds > 0.0 {
        n as f64 / seconds
    } else {
        0.0
    }
}

fn io_err(context: String) -> impl FnOnce(std::io::Error) -> Error {
    move |source| Error::Io { context, source }
}

fn errno(context: &str) -> impl FnOnce(nix::errno::Errno) -> Error + '_ {
    move |e| Error::Io {
        context: context.to_string(),
        source: e.into(),
    }
}

/// The payload of every datagram of run `tag` (zero-padded).
fn datagram(tag: u32) -> [u8; PAYLOAD] {
    let mut d = [0u8; PAYLOAD];
    d[..4].copy_from_slice(&MAGIC);
    d[4..8].copy_from_slice(&tag.to_be_bytes());
    d
}

/// Whether `d` is a datagram of run `tag`.
fn is_ours(d: &[u8], tag: u32) -> bool {
    d.len() == PAYLOAD && d[..4] == MAGIC && d[4..8] == tag.to_be_bytes()
}

/// Sends to `to` for `duration` (and at most [`MAX_PACKETS`]).
pub fn flood(to: SocketAddr, duration: Duration, tag: u32) -> Result<FloodReport, Error> {
    let SocketAddr::V4(to) = to else {
        return Err(Error::Setup(format!("--udp-flood {to}: IPv4 only")));
    };
    let sock = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).map_err(io_err("binding".into()))?;
    // As root the forced size applies; otherwise the capped one is fine.
    if setsockopt(&sock, sockopt::SndBufForce, &SOCKET_BUFFER).is_err() {
        let _ = setsockopt(&sock, sockopt::SndBuf, &SOCKET_BUFFER);
    }
    sock.connect(to)
        .map_err(io_err(format!("connecting to {to}")))?;
    let mut headers = MultiHeaders::<SockaddrIn>::preallocate(BATCH, None);
    let payload = datagram(tag);
    let slices: Vec<[IoSlice<'_>; 1]> = (0..BATCH).map(|_| [IoSlice::new(&payload)]).collect();
    let addrs: [Option<SockaddrIn>; BATCH] = [None; BATCH];
    let (mut sent, mut send_errors) = (0u64, 0u64);
    let start = Instant::now();
    let deadline = start + duration;
    while Instant::now() < deadline && sent < MAX_PACKETS {
        match sendmmsg(
            sock.as_raw_fd(),
            &mut headers,
            &slices,
            addrs,
            [],
            MsgFlags::empty(),
        ) {
            Ok(results) => sent += results.count() as u64,
            Err(nix::errno::Errno::EINTR) => {}
            Err(nix::errno::Errno::ENOBUFS | nix::errno::Errno::EAGAIN) => send_errors += 1,
            // B unreachable for a moment (an ICMP error queued on the
            // socket): counted, and the run goes on.
            Err(nix::errno::Errno::ECONNREFUSED) => send_errors += 1,
            Err(e) => return Err(errno("sendmmsg")(e)),
        }
    }
    Ok(FloodReport {
        sent,
        send_errors,
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// Counts run `tag`'s datagrams on UDP `port` until [`IDLE_END`] after the
/// last one, or until `lifetime` ends.
pub fn sink(port: u16, lifetime: Duration, tag: u32) -> Result<SinkReport, Error> {
    let sock = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, port))
        .map_err(io_err(format!("binding UDP port {port}")))?;
    if setsockopt(&sock, sockopt::RcvBufForce, &SOCKET_BUFFER).is_err() {
        let _ = setsockopt(&sock, sockopt::RcvBuf, &SOCKET_BUFFER);
    }
    sock.set_read_timeout(Some(RECV_TICK))
        .map_err(io_err("setting the receive timeout".into()))?;
    let mut headers = MultiHeaders::<SockaddrIn>::preallocate(BATCH, None);
    // One byte more than a datagram of ours: a longer one is not ours.
    let mut bufs = [[0u8; PAYLOAD + 1]; BATCH];
    let mut lens = [0usize; BATCH];
    let (mut received, mut foreign) = (0u64, 0u64);
    let (mut first, mut last): (Option<Instant>, Option<Instant>) = (None, None);
    let end = Instant::now() + lifetime;
    loop {
        let now = Instant::now();
        if now >= end || last.is_some_and(|l| now.duration_since(l) >= IDLE_END) {
            break;
        }
        // The slices borrow `bufs` only for this call (nix ties their
        // lifetime to the headers'); a stack array, nothing allocated.
        let mut bufs_it = bufs.iter_mut();
        let mut slices: [[IoSliceMut<'_>; 1]; BATCH] = std::array::from_fn(|_| {
            [IoSliceMut::new(
                bufs_it.next().expect("BATCH buffers for BATCH slices"),
            )]
        });
        let n = match recvmmsg(
            sock.as_raw_fd(),
            &mut headers,
            slices.iter_mut(),
            MsgFlags::MSG_WAITFORONE,
            None,
        ) {
            Ok(results) => {
                let mut n = 0;
                for (len, m) in lens.iter_mut().zip(results) {
                    *len = m.bytes;
                    n += 1;
                }
                n
            }
            Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(errno("recvmmsg")(e)),
        };
        let ours = bufs
            .iter()
            .zip(&lens)
            .take(n)
            .filter(|(b, len)| is_ours(&b[..**len], tag))
            .count() as u64;
        foreign += n as u64 - ours;
        if ours > 0 {
            let now = Instant::now();
            received += ours;
            first.get_or_insert(now);
            last = Some(now);
        }
    }
    Ok(SinkReport {
        received,
        foreign,
        active_seconds: match (first, last) {
            (Some(f), Some(l)) => l.duration_since(f).as_secs_f64(),
            _ => 0.0,
        },
    })
}

/// Reads a report (the last JSON line) that one end printed.
pub fn parse_last_json<T: serde::de::DeserializeOwned>(
    tool: &'static str,
    text: &str,
) -> Result<T, Error> {
    let line = text
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with('{'))
        .ok_or_else(|| Error::Parse {
            tool,
            what: format!("no JSON report in {text:?}"),
        })?;
    serde_json::from_str(line).map_err(|e| Error::Parse {
        tool,
        what: format!("{e}: {line}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_datagram_is_a_64_byte_frame() {
        // Ethernet 14 + IPv4 20 + UDP 8 + payload + FCS 4.
        assert_eq!(14 + 20 + 8 + PAYLOAD + 4, 64);
        let d = datagram(7);
        assert!(is_ours(&d, 7));
        assert!(!is_ours(&d, 8), "another run's tag");
        assert!(!is_ours(&d[..PAYLOAD - 1], 7), "short");
        let mut long = d.to_vec();
        long.push(0);
        assert!(!is_ours(&long, 7), "long");
    }

    #[test]
    fn flood_and_sink_count_the_same_datagrams_on_loopback() {
        let tag = 0x5eed;
        // A free port: bind, read it, release it for the sink.
        let port = UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let sink = std::thread::spawn(move || sink(port, Duration::from_secs(20), tag));
        // The sink binds first; a foreign datagram must not count.
        std::thread::sleep(Duration::from_millis(200));
        let stray = UdpSocket::bind("127.0.0.1:0").unwrap();
        stray.send_to(b"not ours", ("127.0.0.1", port)).unwrap();
        let start = Instant::now();
        let f = flood(
            SocketAddr::from(([127, 0, 0, 1], port)),
            Duration::from_millis(300),
            tag,
        )
        .unwrap();
        let s = sink.join().unwrap().unwrap();
        assert!(start.elapsed() < Duration::from_secs(10), "bounded");
        assert!(f.sent > 100, "{f:?}");
        assert!(f.seconds >= 0.3 && f.seconds < 2.0, "{f:?}");
        assert!(s.received > 0 && s.received <= f.sent, "{s:?} {f:?}");
        assert_eq!(s.foreign, 1, "{s:?}");
        let r = PacketRate::new(f, s);
        assert!(r.received_per_second() > 0.0);
        assert!(r.received_per_second() <= r.sent_per_second());
        assert!((0.0..100.0).contains(&r.loss_percent()), "{r:?}");
        let parsed: FloodReport = parse_last_json(
            "flood",
            &format!("noise\n{}\n", serde_json::to_string(&f).unwrap()),
        )
        .unwrap();
        assert_eq!(parsed, f);
    }

    #[test]
    fn loss_and_rates_from_counts() {
        let r = PacketRate::new(
            FloodReport {
                sent: 1000,
                send_errors: 0,
                seconds: 2.0,
            },
            SinkReport {
                received: 750,
                foreign: 0,
                active_seconds: 2.0,
            },
        );
        assert_eq!(r.received_per_second(), 375.0);
        assert_eq!(r.sent_per_second(), 500.0);
        assert_eq!(r.loss_percent(), 25.0);
        let none = PacketRate::new(
            FloodReport {
                sent: 0,
                send_errors: 3,
                seconds: 0.0,
            },
            SinkReport {
                received: 0,
                foreign: 0,
                active_seconds: 0.0,
            },
        );
        assert_eq!(
            (none.received_per_second(), none.loss_percent()),
            (0.0, 0.0)
        );
    }

    #[test]
    fn a_sink_that_sees_nothing_ends_at_its_lifetime() {
        let start = Instant::now();
        let s = sink(0, Duration::from_millis(300), 1).unwrap();
        assert_eq!(s.received, 0);
        assert!(start.elapsed() < Duration::from_secs(3));
        assert!(parse_last_json::<SinkReport>("sink", "no json").is_err());
    }
}
