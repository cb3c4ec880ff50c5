//! Real probes from inside a network namespace, for `vswitch doctor`: an
//! ICMP echo (optionally a full-sized one with DF set), a DNS query, a TCP
//! connect, a UDP datagram, and the sockets listening there.
//!
//! Each runs on a short-lived thread that entered the namespace
//! ([`netns::in_netns`]), so what it sends leaves through the container's
//! own interface and routes, and crosses the switch as the container's
//! traffic does: port security, the MAC table, the gateway, the tunnel.
//! Every wait is bounded by the caller's timeout. Packets are built and
//! read by `switch` (`wire::echo_request_v4`, `wire::read_icmpv4`,
//! `dns::build_query`, `dns::read_answer`); a raw socket receives every
//! ICMP message of the namespace, so replies are matched to the probe by
//! identifier and sequence, and anything else is ignored.

use std::io::{self, ErrorKind};
use std::net::{IpAddr, SocketAddr, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::socket::SockaddrStorage;
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use switch::dns::{self, Answer};
use switch::wire::{self, Echo, ProbeReply};

use crate::netns::{self, NetnsError};

/// IPv4 header without options, and ICMP's echo header.
const IPV4_HEADER: usize = 20;
const IPV6_HEADER: usize = 40;
const ICMP_ECHO_HEADER: usize = 8;

/// What an echo probe found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PingOutcome {
    /// The destination answered, after this long.
    Reply(Duration),
    /// A link on the way is smaller than the probe: its MTU.
    TooBig(u32),
    /// An ICMP destination-unreachable came back (its code).
    Unreachable(u8),
    /// The hop limit ran out.
    TimeExceeded,
    /// No answer within the timeout.
    Timeout,
    /// The kernel refused to send it (`EMSGSIZE`: larger than the
    /// interface's MTU with DF set; `ENETUNREACH`: no route).
    SendError(String),
}

/// Sends one echo request of `size` bytes of IP packet (header included;
/// at least the headers) to `dst` from inside `netns`, with DF set when
/// `dont_fragment`, and waits up to `timeout` for what comes back.
pub fn ping(
    netns: &Path,
    dst: IpAddr,
    size: usize,
    dont_fragment: bool,
    timeout: Duration,
) -> Result<PingOutcome, NetnsError> {
    in_netns(netns, move || ping_here(dst, size, dont_fragment, timeout))
}

fn ping_here(
    dst: IpAddr,
    size: usize,
    dont_fragment: bool,
    timeout: Duration,
) -> io::Result<PingOutcome> {
    let v6 = dst.is_ipv6();
    let (domain, proto, header) = if v6 {
        (Domain::IPV6, Protocol::ICMPV6, IPV6_HEADER)
    } else {
        (Domain::IPV4, Protocol::ICMPV4, IPV4_HEADER)
    };
    let socket = Socket::new(domain, Type::RAW, Some(proto))?;
    if dont_fragment {
        sys::set_dont_fragment(&socket, v6)?;
    }
    let echo = Echo {
        ident: probe_ident(),
        seq: 1,
    };
    let payload = size.saturating_sub(header + ICMP_ECHO_HEADER);
    let message = if v6 {
        wire::echo_request_v6(echo, payload)
    } else {
        wire::echo_request_v4(echo, payload)
    };
    let start = Instant::now();
    if let Err(e) = socket.send_to(&message, &SockAddr::from(SocketAddr::new(dst, 0))) {
        return Ok(PingOutcome::SendError(send_error(&e)));
    }
    let mut buf = vec![0u8; 65536];
    loop {
        let Some(left) = timeout.checked_sub(start.elapsed()) else {
            return Ok(PingOutcome::Timeout);
        };
        socket.set_read_timeout(Some(left.max(Duration::from_millis(1))))?;
        let (n, from) =
            match nix::sys::socket::recvfrom::<SockaddrStorage>(socket.as_raw_fd(), &mut buf) {
                Ok(r) => r,
                Err(Errno::EAGAIN | Errno::ETIMEDOUT) => return Ok(PingOutcome::Timeout),
                Err(Errno::EINTR) => continue,
                Err(e) => return Ok(PingOutcome::SendError(send_error(&e.into()))),
            };
        let bytes = &buf[..n];
        let reply = if v6 {
            let src = from
                .as_ref()
                .and_then(|a| a.as_sockaddr_in6())
                .map(|a| IpAddr::V6(a.ip()));
            wire::read_icmpv6(bytes).map(|r| (src, r))
        } else {
            wire::read_icmpv4(bytes).map(|(src, r)| (Some(IpAddr::V4(src)), r))
        };
        let Some((src, reply)) = reply else { continue };
        if reply.echo() != echo {
            continue;
        }
        return Ok(match reply {
            ProbeReply::Reply(_) if src == Some(dst) => PingOutcome::Reply(start.elapsed()),
            ProbeReply::Reply(_) => continue,
            ProbeReply::TooBig { mtu, .. } => PingOutcome::TooBig(mtu),
            ProbeReply::Unreachable { code, .. } => PingOutcome::Unreachable(code),
            ProbeReply::TimeExceeded(_) => PingOutcome::TimeExceeded,
        });
    }
}

/// An identifier for one probe: the thread's id mixed with the clock, so
/// probes running at once (two `vswitch doctor`s) tell their replies apart.
fn probe_ident() -> u16 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .subsec_nanos();
    (nix::unistd::gettid().as_raw() as u32 ^ t ^ (t >> 16)) as u16
}

fn send_error(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(libc::EMSGSIZE) => "larger than the interface's MTU (EMSGSIZE)".into(),
        Some(libc::ENETUNREACH) => "no route to the destination (ENETUNREACH)".into(),
        Some(libc::EHOSTUNREACH) => {
            "the destination's address did not resolve (EHOSTUNREACH)".into()
        }
        _ => e.to_string(),
    }
}

/// What a DNS probe found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DnsOutcome {
    /// The resolver answered with these addresses (none: no record of
    /// the type asked), after this long.
    Answer(Vec<IpAddr>, Duration),
    /// It answered with an error (`NXDomain`...).
    Error(String),
    /// Nothing came back within the timeout.
    Timeout,
    /// The query could not be sent, or the resolver's port is closed.
    SendError(String),
}

/// Asks `server:53` over UDP for `name`'s A (AAAA with `v6`) records from
/// inside `netns`.
pub fn dns_lookup(
    netns: &Path,
    server: IpAddr,
    name: &str,
    v6: bool,
    timeout: Duration,
) -> Result<DnsOutcome, NetnsError> {
    let name = name.to_string();
    in_netns(netns, move || {
        let id = probe_ident();
        let Some(query) = dns::build_query(id, &name, v6) else {
            return Ok(DnsOutcome::SendError(format!("`{name}` is not a DNS name")));
        };
        let bind: SocketAddr = if server.is_ipv6() {
            "[::]:0".parse().expect("address")
        } else {
            "0.0.0.0:0".parse().expect("address")
        };
        let socket = UdpSocket::bind(bind)?;
        socket.connect(SocketAddr::new(server, 53))?;
        let start = Instant::now();
        if let Err(e) = socket.send(&query) {
            return Ok(DnsOutcome::SendError(send_error(&e)));
        }
        let mut buf = [0u8; 4096];
        loop {
            let Some(left) = timeout.checked_sub(start.elapsed()) else {
                return Ok(DnsOutcome::Timeout);
            };
            socket.set_read_timeout(Some(left.max(Duration::from_millis(1))))?;
            match socket.recv(&mut buf) {
                Ok(n) => match dns::read_answer(&buf[..n], id, &name) {
                    Some(Answer::Addrs(a)) => return Ok(DnsOutcome::Answer(a, start.elapsed())),
                    Some(Answer::Error(e)) => return Ok(DnsOutcome::Error(e)),
                    None => continue,
                },
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    return Ok(DnsOutcome::Timeout)
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == ErrorKind::ConnectionRefused => {
                    return Ok(DnsOutcome::SendError(
                        "nothing answers on port 53 (ICMP port unreachable)".into(),
                    ))
                }
                Err(e) => return Ok(DnsOutcome::SendError(send_error(&e))),
            }
        }
    })
}

/// What a TCP connect or a UDP datagram found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortOutcome {
    /// TCP: the connection was accepted, after this long. UDP: an answer
    /// came back.
    Open(Duration),
    /// TCP: a reset came back; UDP: ICMP port unreachable. The path works
    /// and nothing listens.
    Refused,
    /// UDP: no answer and no error within the timeout (something may
    /// listen and not answer a probe).
    NoAnswer,
    /// TCP: no answer at all within the timeout.
    Timeout,
    /// Another error (no route, host unreachable...).
    Error(String),
}

/// Connects to `dst` over TCP from inside `netns`, closing the connection
/// at once.
pub fn tcp_connect(
    netns: &Path,
    dst: SocketAddr,
    timeout: Duration,
) -> Result<PortOutcome, NetnsError> {
    in_netns(netns, move || {
        let start = Instant::now();
        Ok(match TcpStream::connect_timeout(&dst, timeout) {
            Ok(stream) => {
                let took = start.elapsed();
                drop(stream);
                PortOutcome::Open(took)
            }
            Err(e) => port_error(&e),
        })
    })
}

/// Connects to a published port from the daemon's namespace and holds the
/// connection for `hold`: a forwarder that accepts and then closes at once
/// found nothing accepting behind it.
pub fn tcp_connect_and_hold(dst: SocketAddr, timeout: Duration, hold: Duration) -> PortOutcome {
    let start = Instant::now();
    let mut stream = match TcpStream::connect_timeout(&dst, timeout) {
        Ok(s) => s,
        Err(e) => return port_error(&e),
    };
    let took = start.elapsed();
    if stream.set_read_timeout(Some(hold)).is_err() {
        return PortOutcome::Open(took);
    }
    let mut buf = [0u8; 512];
    match io::Read::read(&mut stream, &mut buf) {
        // Closed before a byte: the forwarder found nothing to connect to.
        Ok(0) => PortOutcome::Refused,
        Ok(_) => PortOutcome::Open(took),
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
            PortOutcome::Open(took)
        }
        Err(e) if e.kind() == ErrorKind::ConnectionReset => PortOutcome::Refused,
        Err(e) => PortOutcome::Error(e.to_string()),
    }
}

/// Sends an empty UDP datagram to `dst` from inside `netns` and waits for
/// an answer or an ICMP port unreachable.
pub fn udp_probe(
    netns: &Path,
    dst: SocketAddr,
    timeout: Duration,
) -> Result<PortOutcome, NetnsError> {
    in_netns(netns, move || {
        let bind: SocketAddr = if dst.is_ipv6() {
            "[::]:0".parse().expect("address")
        } else {
            "0.0.0.0:0".parse().expect("address")
        };
        let socket = UdpSocket::bind(bind)?;
        socket.connect(dst)?;
        let start = Instant::now();
        if let Err(e) = socket.send(&[]) {
            return Ok(port_error(&e));
        }
        socket.set_read_timeout(Some(timeout))?;
        let mut buf = [0u8; 1500];
        Ok(match socket.recv(&mut buf) {
            Ok(_) => PortOutcome::Open(start.elapsed()),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                PortOutcome::NoAnswer
            }
            Err(e) => port_error(&e),
        })
    })
}

fn port_error(e: &io::Error) -> PortOutcome {
    match e.kind() {
        ErrorKind::ConnectionRefused => PortOutcome::Refused,
        ErrorKind::TimedOut | ErrorKind::WouldBlock => PortOutcome::Timeout,
        _ => PortOutcome::Error(send_error(e)),
    }
}

/// Every listening TCP socket (or bound UDP socket) of `netns`.
pub fn sockets(netns: &Path, udp: bool) -> Result<Vec<SocketAddr>, NetnsError> {
    in_netns(netns, move || {
        let (names, state) = if udp {
            (["udp", "udp6"], UDP_UNCONNECTED)
        } else {
            (["tcp", "tcp6"], TCP_LISTEN)
        };
        let mut out = Vec::new();
        for name in names {
            // The thread's own view: it entered the namespace.
            let path = format!("/proc/thread-self/net/{name}");
            match std::fs::read_to_string(&path) {
                Ok(text) => out.extend(parse_sockets(&text, state)),
                // No IPv6 in this kernel.
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        out.sort();
        out.dedup();
        Ok(out)
    })
}

/// `TCP_LISTEN` in `/proc/net/tcp`'s `st` column.
const TCP_LISTEN: u8 = 0x0a;
/// `TCP_CLOSE`, which `/proc/net/udp` shows for a bound, unconnected socket.
const UDP_UNCONNECTED: u8 = 0x07;

/// The local addresses of `/proc/net/{tcp,udp}[6]`'s lines in `state`.
/// Addresses are hex words in the kernel's (here little-endian) byte
/// order; the port is big-endian hex.
fn parse_sockets(text: &str, state: u8) -> Vec<SocketAddr> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let mut cols = line.split_whitespace();
            let local = cols.nth(1)?;
            let st = u8::from_str_radix(cols.nth(1)?, 16).ok()?;
            if st != state {
                return None;
            }
            let (addr, port) = local.split_once(':')?;
            let port = u16::from_str_radix(port, 16).ok()?;
            let ip = match addr.len() {
                8 => IpAddr::V4(u32::from_str_radix(addr, 16).ok()?.to_le_bytes().into()),
                32 => {
                    let mut octets = [0u8; 16];
                    for (i, chunk) in octets.chunks_mut(4).enumerate() {
                        let word = u32::from_str_radix(addr.get(i * 8..i * 8 + 8)?, 16).ok()?;
                        chunk.copy_from_slice(&word.to_le_bytes());
                    }
                    IpAddr::V6(octets.into())
                }
                _ => return None,
            };
            Some(SocketAddr::new(ip, port))
        })
        .collect()
}

/// [`netns::in_netns`] for a probe whose IO errors are the namespace's.
fn in_netns<T: Send + 'static>(
    netns: &Path,
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> Result<T, NetnsError> {
    let what = format!("probing from {}", netns.display());
    netns::in_netns(netns, move || {
        f().map_err(|source| NetnsError::Probe { what, source })
    })
}

/// The one socket option socket2 does not have.
#[allow(unsafe_code)]
mod sys {
    use std::io;
    use std::os::fd::AsRawFd;

    /// Sets DF on what the socket sends and stops the kernel from
    /// fragmenting it (`IP_PMTUDISC_PROBE`: DF set, the path MTU cache
    /// ignored, so the probe measures the path now; `IPV6_DONTFRAG`).
    pub(super) fn set_dont_fragment(socket: &socket2::Socket, v6: bool) -> io::Result<()> {
        let (level, name, value) = if v6 {
            (libc::IPPROTO_IPV6, libc::IPV6_DONTFRAG, 1)
        } else {
            (
                libc::IPPROTO_IP,
                libc::IP_MTU_DISCOVER,
                libc::IP_PMTUDISC_PROBE,
            )
        };
        let value: libc::c_int = value;
        // SAFETY: a valid descriptor, and a pointer to a c_int with its
        // length, as setsockopt(2) takes for these options.
        let rc = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                level,
                name,
                (&value as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_proc_net_tables() {
        let tcp = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:0050 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0 100 0 0 10 0
   1: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2 1 0 100 0 0 10 0
   2: 0200000A:9C40 0300000A:0050 01 00000000:00000000 00:00000000 00000000     0        0 3 1 0 100 0 0 10 0
";
        assert_eq!(
            parse_sockets(tcp, TCP_LISTEN),
            vec![
                "0.0.0.0:80".parse::<SocketAddr>().unwrap(),
                "127.0.0.1:8080".parse().unwrap()
            ]
        );
        let tcp6 =
            "  sl  local_address                         remote_address                        st
   0: 00000000000000000000000000000000:0050 00000000000000000000000000000000:0000 0A 0
   1: 00000000000000000000000001000000:0035 00000000000000000000000000000000:0000 0A 0
";
        assert_eq!(
            parse_sockets(tcp6, TCP_LISTEN),
            vec![
                "[::]:80".parse::<SocketAddr>().unwrap(),
                "[::1]:53".parse().unwrap()
            ]
        );
        assert!(parse_sockets("garbage\n1: zz:zz 0A", TCP_LISTEN).is_empty());
    }
}
