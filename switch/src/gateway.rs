//! The per-network gateway: ARP, NDP, ICMP echo and DNS on port 53.
//!
//! Each network has one [`Gateway`]: a port on the network's bridge with its
//! own MAC and the network's gateway addresses. The daemon hands it every
//! frame the bridge forwards or floods to the gateway port
//! ([`Gateway::handle_frame`]) and injects every frame it emits
//! ([`Gateway::poll_transmit`]) into the bridge as if received on that port.
//! Queries for names outside the network go out as UDP datagrams the daemon
//! sends from a socket of this gateway ([`Gateway::poll_upstream`]), and
//! their replies come back through [`Gateway::handle_upstream`].
//!
//! Sans-IO like quinn-proto: every method takes `now`; nothing here reads
//! the clock, opens a socket or spawns a task. After each `handle_*` call the
//! daemon drains `poll_transmit` and `poll_upstream`, then sleeps until
//! `poll_timeout` and calls `handle_timeout`.
//!
//! How it is built:
//!
//! - A smoltcp [`Interface`] over an in-memory device answers ARP requests and
//!   IPv6 neighbour solicitations for the gateway addresses (the gateway also
//!   holds the EUI-64 link-local address so it can answer solicitations sent
//!   from link-local sources), resets stray TCP, and runs a small pool of
//!   listening TCP sockets on port 53 (RFC 1035 two-byte length framing,
//!   several concurrent clients, pipelined queries, idle connections closed
//!   after [`TCP_IDLE_TIMEOUT`]; a spare listener is always kept while fewer
//!   than [`MAX_TCP_CONNECTIONS`] sockets exist).
//! - UDP DNS queries and ICMP echo requests addressed to the gateway take a
//!   direct path: the reply is written straight into a transmit buffer and
//!   sent to the request's source MAC. This needs no neighbour-cache entry
//!   (smoltcp drops a reply whose neighbour it first has to resolve, and its
//!   cache holds 8 entries), copies nothing but the answer, and keeps the
//!   per-query cost to a parse, a lookup and an emit.
//! - DNS answers come from [`Responder`] over the network's [`Zone`](crate::dns::Zone), loaded
//!   from an `ArcSwap` per query so the control plane replaces it without a
//!   lock. Other names are forwarded to the upstream resolvers: the
//!   gateway picks a fresh random transaction id, sends the query to the
//!   first upstream, moves on to the next one after `upstream_timeout` (or
//!   at once when one answers SERVFAIL or REFUSED), restores the client's id
//!   in the reply and returns it over the client's transport. A reply from an
//!   address the query was not sent to, with an unknown id, or for another
//!   question is dropped and counted. When every upstream timed out the
//!   client gets SERVFAIL. A network without upstreams (`--internal`)
//!   answers REFUSED at once: the query is refused by policy, not failed,
//!   and stub resolvers move on to their next server either way.
//!
//! Everything is bounded: [`MAX_PENDING_UPSTREAM`] forwarded queries (beyond:
//! SERVFAIL), [`MAX_TCP_CONNECTIONS`] TCP sockets, [`TX_QUEUE_FRAMES`] frames
//! waiting for `poll_transmit` (beyond: dropped and counted). Malformed
//! frames and garbage DNS are dropped and counted, never a panic.
//!
//! Limits: upstream queries go over UDP only; a truncated upstream reply is
//! relayed as is (with TC set), also to a TCP client. IP fragments addressed
//! to the gateway are dropped.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use smoltcp::iface::{Interface, SocketHandle, SocketSet};
use smoltcp::phy::{DeviceCapabilities, Medium};
use smoltcp::socket::tcp;
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpAddress, IpCidr};

use crate::dns::{self, ErrorReply, Outcome, Responder, SharedZone, Transport};
use crate::stack::{
    check_interface, new_interface, poll_at, smol_instant, QueueDevice, Rng, TxQueue, Whole,
};
use crate::wire::{self, Echo, IpFrame, IpHeader, IpRepr, TransportHeader, UDP_HEADER_LEN};
use crate::MacAddr;

/// The DNS port, UDP and TCP.
pub const DNS_PORT: u16 = 53;
/// Forwarded queries waiting for an upstream reply, per gateway. Beyond:
/// SERVFAIL at once.
pub const MAX_PENDING_UPSTREAM: usize = 1024;
/// TCP sockets on port 53 (connections plus listeners), per gateway.
pub const MAX_TCP_CONNECTIONS: usize = 16;
/// A TCP connection with no query in this long is closed.
pub const TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// Frames waiting for [`Gateway::poll_transmit`]. Beyond: dropped.
pub const TX_QUEUE_FRAMES: usize = 256;
/// Forwarded queries longer than this get SERVFAIL (a real query is far
/// smaller; this bounds the memory of the pending table).
pub const MAX_FORWARDED_QUERY: usize = 4096;

/// Bounds of [`GatewayConfig::upstream_timeout`].
const MIN_UPSTREAM_TIMEOUT: Duration = Duration::from_millis(1);
const MAX_UPSTREAM_TIMEOUT: Duration = Duration::from_secs(3600);
/// Listening sockets made up front, so two clients connecting at once are
/// both accepted before the pool grows.
const INITIAL_TCP_LISTENERS: usize = 2;
/// After closing an idle connection, abort it if the peer has not finished
/// the close in this long.
const TCP_CLOSE_GRACE: Duration = Duration::from_secs(5);
/// Queries of one TCP connection in flight upstream before the gateway stops
/// reading from it.
const MAX_TCP_IN_FLIGHT: usize = 16;
/// Answer bytes queued for one TCP connection before the gateway stops
/// reading from it.
const MAX_TCP_TX_BACKLOG: usize = 64 * 1024;
/// Receive and send buffers of each TCP socket.
const TCP_SOCKET_BUFFER: usize = 8 * 1024;
/// A DNS message over TCP: two length bytes and up to 65535 bytes.
const MAX_TCP_MESSAGE: usize = 2 + u16::MAX as usize;
/// Ethernet II header.
const ETH_LEN: usize = 14;
/// IPv4 header without options, as the gateway writes it.
const IPV4_HEADER_LEN: usize = 20;
/// IPv6 fixed header.
const IPV6_HEADER_LEN: usize = 40;
/// Hop limit / TTL of the frames the gateway writes itself.
const HOP_LIMIT: u8 = 64;
/// Tries at finding an unused upstream transaction id.
const ID_TRIES: usize = 16;

/// How a network's gateway is set up.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// The gateway port's MAC: unicast.
    pub mac: MacAddr,
    /// The IPv4 gateway address and the subnet's prefix length.
    pub ipv4: Option<(Ipv4Addr, u8)>,
    /// The IPv6 gateway address and the subnet's prefix length.
    pub ipv6: Option<(Ipv6Addr, u8)>,
    /// The network's MTU (IP packet size), 576..=65535; 1280 at least with
    /// IPv6.
    pub mtu: usize,
    /// DNS records, replaced atomically by the control plane.
    pub zone: SharedZone,
    /// Upstream resolvers, tried in order. Empty: nothing is forwarded and
    /// names outside the zone get REFUSED (internal networks).
    pub upstreams: Vec<SocketAddr>,
    /// How long one upstream has to answer before the next one is asked;
    /// e.g. 2 s. Clamped to 1 ms..=1 h.
    pub upstream_timeout: Duration,
    /// Seeds the upstream transaction ids and smoltcp's TCP initial sequence
    /// numbers: pass a fresh random value (DNS spoofing resistance rests on
    /// it).
    pub random_seed: u64,
}

/// Why a gateway cannot be built from a [`GatewayConfig`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum GatewayError {
    /// The gateway MAC is zero, broadcast or multicast.
    #[error("the gateway MAC {0} is not a unicast address; use a locally administered one like 02:42:ac:11:00:01")]
    MacNotUnicast(MacAddr),
    /// The MTU is outside what the gateway supports.
    #[error("MTU {0} is out of range: use 576..=65535, and at least 1280 with IPv6")]
    Mtu(usize),
    /// A gateway address is not a unicast address.
    #[error("the gateway address {0} is not a unicast address")]
    NotUnicast(IpAddr),
    /// A prefix length longer than the address.
    #[error("prefix length /{0} is longer than the address")]
    PrefixLen(u8),
}

/// What the gateway did, for `vswitch stats`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GatewayStats {
    /// Frames delivered to [`Gateway::handle_frame`].
    pub frames_in: u64,
    /// Frames handed out by [`Gateway::poll_transmit`].
    pub frames_out: u64,
    /// Frames that do not parse as Ethernet (and IP where they claim to be).
    pub frames_malformed: u64,
    /// Frames to the gateway with a bad IPv4, UDP or ICMP checksum.
    pub frames_bad_checksum: u64,
    /// Frames dropped because the transmit queue was full, or too large for
    /// the caller's buffer.
    pub frames_dropped: u64,
    /// ICMP and ICMPv6 echo replies sent.
    pub echo_replies: u64,
    /// DNS queries received over UDP.
    pub dns_udp_queries: u64,
    /// DNS queries received over TCP.
    pub dns_tcp_queries: u64,
    /// Queries answered from the zone.
    pub dns_answered: u64,
    /// Queries forwarded upstream.
    pub dns_forwarded: u64,
    /// Upstream replies relayed to their client.
    pub dns_upstream_answered: u64,
    /// SERVFAIL sent: no upstream answered, or too many queries pending.
    pub dns_failed: u64,
    /// REFUSED sent: an internal network asked for an outside name.
    pub dns_refused: u64,
    /// Malformed queries: FORMERR, NOTIMP or BADVERS answered, or dropped.
    pub dns_malformed: u64,
    /// Queries failed because [`MAX_PENDING_UPSTREAM`] were pending.
    pub dns_pending_overflow: u64,
    /// Upstream datagrams dropped: unknown id, unexpected sender, another
    /// question, or not a response.
    pub upstream_dropped: u64,
    /// Queries re-sent to the next upstream after a timeout or a failure.
    pub upstream_retries: u64,
    /// TCP connections accepted on port 53.
    pub tcp_connections: u64,
}

/// Where a reply to a client goes: the L2 and L3 of its request, swapped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ReplyPath {
    client_mac: MacAddr,
    client_ip: IpAddr,
    local_ip: IpAddr,
}

impl ReplyPath {
    fn headers_len(&self, l4: usize) -> usize {
        ETH_LEN + ip_header_len(self.client_ip) + l4
    }

    /// The Ethernet and IP headers of a reply from `mac` along the path.
    fn repr(&self, mac: MacAddr, ip_id: u16) -> IpRepr {
        IpRepr {
            src_mac: mac,
            dst_mac: self.client_mac,
            src: self.local_ip,
            dst: self.client_ip,
            hop_limit: HOP_LIMIT,
            ipv4_ident: ip_id,
            dont_fragment: false,
        }
    }
}

fn ip_header_len(ip: IpAddr) -> usize {
    match ip {
        IpAddr::V4(_) => IPV4_HEADER_LEN,
        IpAddr::V6(_) => IPV6_HEADER_LEN,
    }
}

/// The client a forwarded query answers to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Client {
    Udp { path: ReplyPath, port: u16 },
    Tcp { slot: usize, generation: u64 },
}

/// A query forwarded upstream, waiting for its reply.
#[derive(Debug)]
struct Pending {
    client: Client,
    client_id: u16,
    /// The query as sent upstream (our transaction id).
    query: Vec<u8>,
    /// Index into the upstreams of the one asked last.
    attempt: usize,
    deadline: Instant,
    max_reply: usize,
}

/// One TCP socket of the port-53 pool and the DNS stream state on it.
#[derive(Debug)]
struct TcpConn {
    handle: SocketHandle,
    /// Bumped each time the socket goes back to listening, so a late upstream
    /// reply never reaches the next client of the same socket.
    generation: u64,
    /// Bytes received, not yet a whole message.
    rx: Vec<u8>,
    /// Framed answers not yet accepted by the socket, from `tx_off`.
    tx: Vec<u8>,
    tx_off: usize,
    /// Queries forwarded upstream whose reply is still due.
    in_flight: usize,
    /// Connected (not listening) as of the last service.
    active: bool,
    last_activity: Instant,
    closing_since: Option<Instant>,
}

impl TcpConn {
    fn new(handle: SocketHandle, generation: u64, now: Instant) -> TcpConn {
        TcpConn {
            handle,
            generation,
            rx: Vec::new(),
            tx: Vec::new(),
            tx_off: 0,
            in_flight: 0,
            active: false,
            last_activity: now,
            closing_since: None,
        }
    }

    /// When the connection's own timer (idle close, close grace) fires.
    /// `None` while it waits on something with a timer of its own: an
    /// upstream reply, or smoltcp sending queued answers.
    fn deadline(&self) -> Option<Instant> {
        if !self.active {
            return None;
        }
        match self.closing_since {
            Some(t) => Some(t + TCP_CLOSE_GRACE),
            None if self.in_flight == 0 && self.tx.is_empty() => {
                Some(self.last_activity + TCP_IDLE_TIMEOUT)
            }
            None => None,
        }
    }
}

/// What the direct path did with a frame.
enum Direct {
    /// Answered or dropped (and counted) here.
    Done,
    /// Not for the direct path: smoltcp gets it.
    Pass,
}

/// The gateway of one network. See the module documentation.
pub struct Gateway {
    mac: MacAddr,
    ipv4: Option<Ipv4Addr>,
    ipv6: Option<Ipv6Addr>,
    /// The EUI-64 link-local address, held when IPv6 is on.
    ipv6_link_local: Option<Ipv6Addr>,
    mtu: usize,
    zone: SharedZone,
    upstreams: Vec<SocketAddr>,
    upstream_timeout: Duration,
    epoch: Instant,
    caps: DeviceCapabilities,
    iface: Interface,
    sockets: SocketSet<'static>,
    tcp: Vec<TcpConn>,
    tx: TxQueue,
    responder: Responder,
    pending: HashMap<u16, Pending>,
    deadlines: BTreeSet<(Instant, u16)>,
    to_upstream: VecDeque<u16>,
    rng: Rng,
    ip_id: u16,
    /// Scratch for DNS messages (TCP framing included).
    scratch: Vec<u8>,
    stats: GatewayStats,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("mac", &self.mac)
            .field("ipv4", &self.ipv4)
            .field("ipv6", &self.ipv6)
            .field("mtu", &self.mtu)
            .field("upstreams", &self.upstreams)
            .field("pending", &self.pending.len())
            .field("tcp_sockets", &self.tcp.len())
            .field("tx_queued", &self.tx.frames.len())
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl Gateway {
    /// Builds the gateway of a network. `now` is the clock origin of its
    /// timers.
    pub fn new(config: GatewayConfig, now: Instant) -> Result<Gateway, GatewayError> {
        let mac = config.mac;
        check_interface(mac, config.mtu, config.ipv4, config.ipv6)?;

        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = config.mtu + ETH_LEN;

        let mut rng = Rng(config.random_seed);
        let tx = TxQueue::new(TX_QUEUE_FRAMES, TX_QUEUE_FRAMES);
        let hardware = HardwareAddress::Ethernet(EthernetAddress(mac.0));
        let mut iface = new_interface(hardware, rng.next_u64(), &caps, now);
        iface.update_ip_addrs(|addrs| {
            if let Some((addr, prefix)) = config.ipv4 {
                let _ = addrs.push(IpCidr::new(IpAddress::Ipv4(addr), prefix));
            }
            if let Some((addr, prefix)) = config.ipv6 {
                let _ = addrs.push(IpCidr::new(IpAddress::Ipv6(addr), prefix));
                let ll = link_local(mac);
                if ll != addr {
                    let _ = addrs.push(IpCidr::new(IpAddress::Ipv6(ll), 64));
                }
            }
        });

        let mut gateway = Gateway {
            mac,
            ipv4: config.ipv4.map(|(a, _)| a),
            ipv6: config.ipv6.map(|(a, _)| a),
            ipv6_link_local: config.ipv6.map(|_| link_local(mac)),
            mtu: config.mtu,
            zone: config.zone,
            upstreams: config.upstreams,
            upstream_timeout: config
                .upstream_timeout
                .clamp(MIN_UPSTREAM_TIMEOUT, MAX_UPSTREAM_TIMEOUT),
            epoch: now,
            caps,
            iface,
            sockets: SocketSet::new(Vec::new()),
            tcp: Vec::new(),
            tx,
            responder: Responder::new(),
            pending: HashMap::new(),
            deadlines: BTreeSet::new(),
            to_upstream: VecDeque::new(),
            rng,
            ip_id: 0,
            scratch: Vec::new(),
            stats: GatewayStats::default(),
        };
        gateway.ip_id = gateway.rng.next_u64() as u16;
        for _ in 0..INITIAL_TCP_LISTENERS {
            gateway.add_listener(now);
        }
        Ok(gateway)
    }

    /// The gateway port's MAC.
    pub fn mac(&self) -> MacAddr {
        self.mac
    }

    /// Replaces the upstream resolvers (the host's resolv.conf changed).
    /// Queries already forwarded finish against the old list's timeouts.
    pub fn set_upstreams(&mut self, upstreams: Vec<SocketAddr>) {
        self.upstreams = upstreams;
    }

    /// Counters so far.
    pub fn stats(&self) -> GatewayStats {
        let mut s = self.stats;
        s.frames_dropped += self.tx.dropped;
        s
    }

    /// Takes a frame the bridge delivered to the gateway port.
    pub fn handle_frame(&mut self, frame: &[u8], now: Instant) {
        self.stats.frames_in += 1;
        match self.direct(frame, now) {
            Direct::Done => {}
            Direct::Pass => {
                self.poll_iface(Some(frame), now);
                self.service_tcp(now);
                self.poll_iface(None, now);
            }
        }
    }

    /// Copies the next frame to inject into the bridge into `out`; returns
    /// its length. A frame longer than `out` is dropped (counted).
    pub fn poll_transmit(&mut self, now: Instant, out: &mut [u8]) -> Option<usize> {
        if self.tx.frames.is_empty() {
            // smoltcp may have had more to send than the queue took.
            self.poll_iface(None, now);
        }
        let n = self.tx.pop_into(out)?;
        self.stats.frames_out += 1;
        Some(n)
    }

    /// Copies the next datagram for an upstream resolver into `out`; returns
    /// where to send it and its length. The daemon sends it from a UDP
    /// socket of this gateway and feeds what that socket receives to
    /// [`Gateway::handle_upstream`].
    pub fn poll_upstream(&mut self, out: &mut [u8]) -> Option<(SocketAddr, usize)> {
        while let Some(id) = self.to_upstream.pop_front() {
            let Some(p) = self.pending.get(&id) else {
                continue;
            };
            let Some(&to) = self.upstreams.get(p.attempt) else {
                continue; // the list shrank; the deadline fails the query
            };
            let n = p.query.len();
            if n > out.len() {
                continue;
            }
            out[..n].copy_from_slice(&p.query);
            return Some((to, n));
        }
        None
    }

    /// Takes a datagram received on the upstream socket.
    pub fn handle_upstream(&mut self, from: SocketAddr, datagram: &[u8], now: Instant) {
        let Some(id) = dns::message_id(datagram).filter(|_| dns::is_response(datagram)) else {
            self.stats.upstream_dropped += 1;
            return;
        };
        let Some(p) = self.pending.get(&id) else {
            self.stats.upstream_dropped += 1;
            return;
        };
        let asked = &self.upstreams[..(p.attempt + 1).min(self.upstreams.len())];
        if !asked.contains(&from) || !dns::same_question(&p.query, datagram) {
            self.stats.upstream_dropped += 1;
            return;
        }
        let rcode = dns::response_code_low(datagram);
        let failed = matches!(rcode, Some(dns::RCODE_SERVFAIL | dns::RCODE_REFUSED));
        if failed && p.attempt + 1 < self.upstreams.len() {
            self.retry(id, now);
            return;
        }
        let Some(p) = self.remove_pending(id) else {
            return;
        };
        self.stats.dns_upstream_answered += 1;
        let mut reply = std::mem::take(&mut self.scratch);
        reply.clear();
        if datagram.len() <= p.max_reply {
            reply.extend_from_slice(datagram);
        } else {
            reply.resize(p.max_reply, 0);
            match dns::truncate_reply(datagram, p.max_reply, &mut reply) {
                Some(n) => reply.truncate(n),
                None => reply.clear(),
            }
        }
        if !reply.is_empty() {
            dns::set_message_id(&mut reply, p.client_id);
            self.deliver(p.client, &reply, now);
        }
        self.scratch = reply;
    }

    /// When [`Gateway::handle_timeout`] should run next, if anything waits
    /// on time. May be in the past: run it right away.
    pub fn poll_timeout(&mut self, now: Instant) -> Option<Instant> {
        let smol = poll_at(&mut self.iface, &self.sockets, self.epoch, now);
        let upstream = self.deadlines.first().map(|(t, _)| *t);
        let tcp = self.tcp.iter().filter_map(TcpConn::deadline).min();
        [smol, upstream, tcp].into_iter().flatten().min()
    }

    /// Runs the timers due at `now`: upstream retries and SERVFAILs, TCP
    /// retransmissions and idle closes.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(&(deadline, id)) = self.deadlines.first() {
            if deadline > now {
                break;
            }
            self.deadlines.pop_first();
            let Some(p) = self.pending.get(&id) else {
                continue;
            };
            if p.deadline != deadline {
                continue;
            }
            if p.attempt + 1 < self.upstreams.len() {
                self.retry(id, now);
            } else if let Some(p) = self.remove_pending(id) {
                self.fail(p.client, &p.query, p.client_id, ErrorReply::ServFail, now);
            }
        }
        self.poll_iface(None, now);
        self.service_tcp(now);
        self.poll_iface(None, now);
    }

    // ---- direct path: UDP DNS and ICMP echo ----

    fn direct(&mut self, frame: &[u8], now: Instant) -> Direct {
        let Ok(pkt) = IpFrame::parse(frame) else {
            self.stats.frames_malformed += 1;
            return Direct::Done;
        };
        let dst_mac = pkt.dst_mac();
        if (dst_mac != self.mac && !dst_mac.is_multicast()) || pkt.has_link_extensions() {
            return Direct::Pass;
        }
        let client_mac = pkt.src_mac();
        if client_mac.is_multicast() {
            return Direct::Pass;
        }
        match (pkt.ip(), pkt.transport()) {
            (Some(IpHeader::V4(ip)), Some(transport)) => {
                if Some(ip.dst()) != self.ipv4 {
                    return Direct::Pass;
                }
                let src = ip.src();
                let wanted = match transport {
                    TransportHeader::Udp(u) => u.dst_port() == DNS_PORT,
                    TransportHeader::Icmpv4(i) => i.echo_request().is_some(),
                    _ => false,
                };
                if !wanted {
                    return Direct::Pass;
                }
                if src.is_unspecified() || src.is_multicast() || src.is_broadcast() {
                    return Direct::Done;
                }
                if !ip.checksum_ok() {
                    self.stats.frames_bad_checksum += 1;
                    return Direct::Done;
                }
                let path = ReplyPath {
                    client_mac,
                    client_ip: src.into(),
                    local_ip: ip.dst().into(),
                };
                match transport {
                    TransportHeader::Udp(u) => {
                        if !u.checksum_ok(path.client_ip, path.local_ip) {
                            self.stats.frames_bad_checksum += 1;
                            return Direct::Done;
                        }
                        self.udp_query(path, u.src_port(), u.payload(), now);
                    }
                    TransportHeader::Icmpv4(i) => {
                        let Some(echo) = i.echo_request() else {
                            return Direct::Pass;
                        };
                        if !i.checksum_ok() {
                            self.stats.frames_bad_checksum += 1;
                            return Direct::Done;
                        }
                        self.echo_reply(path, echo, i.payload());
                    }
                    _ => return Direct::Pass,
                }
                Direct::Done
            }
            (Some(IpHeader::V6(ip)), Some(transport)) => {
                let dst = Some(ip.dst());
                if dst != self.ipv6 && dst != self.ipv6_link_local {
                    return Direct::Pass;
                }
                let src = ip.src();
                let wanted = match transport {
                    TransportHeader::Udp(u) => u.dst_port() == DNS_PORT,
                    TransportHeader::Icmpv6(i) => i.echo_request().is_some(),
                    _ => false,
                };
                if !wanted {
                    return Direct::Pass;
                }
                if src.is_unspecified() || src.is_multicast() {
                    return Direct::Done;
                }
                let path = ReplyPath {
                    client_mac,
                    client_ip: src.into(),
                    local_ip: ip.dst().into(),
                };
                match transport {
                    TransportHeader::Udp(u) => {
                        if !u.checksum_ok(path.client_ip, path.local_ip) {
                            self.stats.frames_bad_checksum += 1;
                            return Direct::Done;
                        }
                        self.udp_query(path, u.src_port(), u.payload(), now);
                    }
                    TransportHeader::Icmpv6(i) => {
                        let Some(echo) = i.echo_request() else {
                            return Direct::Pass;
                        };
                        if !i.checksum_ok(src, ip.dst()) {
                            self.stats.frames_bad_checksum += 1;
                            return Direct::Done;
                        }
                        self.echo_reply(path, echo, i.payload());
                    }
                    _ => return Direct::Pass,
                }
                Direct::Done
            }
            _ => Direct::Pass,
        }
    }

    fn udp_query(&mut self, path: ReplyPath, client_port: u16, query: &[u8], now: Instant) {
        self.stats.dns_udp_queries += 1;
        if client_port == 0 {
            self.stats.dns_malformed += 1;
            return;
        }
        let max_payload = self.max_udp_payload(path.client_ip);
        let Some(mut buf) = self.tx.alloc() else {
            return;
        };
        let hdr = path.headers_len(UDP_HEADER_LEN);
        buf.resize(hdr + max_payload, 0);
        let zone = self.zone.load();
        let before = self.responder.stats();
        let outcome = self.responder.handle_query(
            &zone,
            query,
            Transport::Udp {
                max_payload: max_payload as u16,
            },
            &mut buf[hdr..],
        );
        self.count_responder(before);
        match outcome {
            Outcome::Answered(n) => {
                buf.truncate(hdr + n);
                let id = self.next_ip_id();
                self.commit_udp(buf, path.repr(self.mac, id), client_port);
            }
            Outcome::Forward { max_reply } => {
                self.tx.recycle(buf);
                let client = Client::Udp {
                    path,
                    port: client_port,
                };
                self.forward(query, client, max_reply, now);
            }
            Outcome::Ignore => self.tx.recycle(buf),
        }
    }

    fn echo_reply(&mut self, path: ReplyPath, echo: Echo, payload: &[u8]) {
        let Some(mut buf) = self.tx.alloc() else {
            return;
        };
        let repr = path.repr(self.mac, self.next_ip_id());
        buf.resize(wire::echo_frame_len(&repr, payload.len()), 0);
        match wire::emit_echo_reply(&repr, echo, payload, &mut buf) {
            Ok(_) => {
                self.stats.echo_replies += 1;
                self.tx.commit(buf);
            }
            Err(_) => self.tx.recycle(buf),
        }
    }

    /// Queues a UDP frame from port 53 along `ip` whose payload is already
    /// in place in `buf`, after the headers.
    fn commit_udp(&mut self, mut buf: Vec<u8>, ip: IpRepr, client_port: u16) {
        match wire::emit_udp_headers(&ip, DNS_PORT, client_port, &mut buf) {
            Ok(()) => self.tx.commit(buf),
            Err(_) => self.tx.recycle(buf),
        }
    }

    fn max_udp_payload(&self, ip: IpAddr) -> usize {
        (self.mtu - ip_header_len(ip) - UDP_HEADER_LEN).min(usize::from(u16::MAX))
    }

    fn next_ip_id(&mut self) -> u16 {
        self.ip_id = self.ip_id.wrapping_add(1);
        self.ip_id
    }

    /// Adds what the responder counted since `before` to the gateway stats.
    fn count_responder(&mut self, before: dns::ResponderStats) {
        let after = self.responder.stats();
        self.stats.dns_answered += after.answered - before.answered;
        self.stats.dns_malformed +=
            (after.malformed - before.malformed) + (after.ignored - before.ignored);
    }

    // ---- forwarding ----

    fn forward(&mut self, query: &[u8], client: Client, max_reply: usize, now: Instant) {
        let Some(client_id) = dns::message_id(query) else {
            return;
        };
        if self.upstreams.is_empty() {
            self.fail(client, query, client_id, ErrorReply::Refused, now);
            return;
        }
        if self.pending.len() >= MAX_PENDING_UPSTREAM || query.len() > MAX_FORWARDED_QUERY {
            self.stats.dns_pending_overflow += 1;
            self.fail(client, query, client_id, ErrorReply::ServFail, now);
            return;
        }
        let Some(id) = self.fresh_id() else {
            self.stats.dns_pending_overflow += 1;
            self.fail(client, query, client_id, ErrorReply::ServFail, now);
            return;
        };
        let mut q = query.to_vec();
        dns::set_message_id(&mut q, id);
        let deadline = now + self.upstream_timeout;
        if let Client::Tcp { slot, generation } = client {
            if let Some(c) = self
                .tcp
                .get_mut(slot)
                .filter(|c| c.generation == generation)
            {
                c.in_flight += 1;
            }
        }
        self.pending.insert(
            id,
            Pending {
                client,
                client_id,
                query: q,
                attempt: 0,
                deadline,
                max_reply,
            },
        );
        self.deadlines.insert((deadline, id));
        self.to_upstream.push_back(id);
        self.stats.dns_forwarded += 1;
    }

    fn fresh_id(&mut self) -> Option<u16> {
        (0..ID_TRIES)
            .map(|_| self.rng.next_u64() as u16)
            .find(|id| !self.pending.contains_key(id))
    }

    /// Sends a pending query to the next upstream.
    fn retry(&mut self, id: u16, now: Instant) {
        let deadline = now + self.upstream_timeout;
        let Some(p) = self.pending.get_mut(&id) else {
            return;
        };
        self.deadlines.remove(&(p.deadline, id));
        p.attempt += 1;
        p.deadline = deadline;
        self.deadlines.insert((deadline, id));
        self.to_upstream.push_back(id);
        self.stats.upstream_retries += 1;
    }

    fn remove_pending(&mut self, id: u16) -> Option<Pending> {
        let p = self.pending.remove(&id)?;
        self.deadlines.remove(&(p.deadline, id));
        if let Client::Tcp { slot, generation } = p.client {
            if let Some(c) = self
                .tcp
                .get_mut(slot)
                .filter(|c| c.generation == generation)
            {
                c.in_flight = c.in_flight.saturating_sub(1);
            }
        }
        Some(p)
    }

    /// Answers `query` with SERVFAIL or REFUSED to `client`.
    fn fail(
        &mut self,
        client: Client,
        query: &[u8],
        client_id: u16,
        error: ErrorReply,
        now: Instant,
    ) {
        match error {
            ErrorReply::ServFail => self.stats.dns_failed += 1,
            ErrorReply::Refused => self.stats.dns_refused += 1,
        }
        let transport = match client {
            Client::Udp { path, .. } => Transport::Udp {
                max_payload: self.max_udp_payload(path.client_ip) as u16,
            },
            Client::Tcp { .. } => Transport::Tcp,
        };
        let mut buf = std::mem::take(&mut self.scratch);
        buf.clear();
        buf.resize(dns::MIN_UDP_PAYLOAD.into(), 0);
        if let Some(n) = self
            .responder
            .reply_error(query, error, transport, &mut buf)
        {
            buf.truncate(n);
            dns::set_message_id(&mut buf, client_id);
            self.deliver(client, &buf, now);
        }
        self.scratch = buf;
    }

    /// Sends a DNS message to a client over its transport.
    fn deliver(&mut self, client: Client, msg: &[u8], now: Instant) {
        match client {
            Client::Udp { path, port } => {
                if msg.len() > self.max_udp_payload(path.client_ip) {
                    return;
                }
                let Some(mut buf) = self.tx.alloc() else {
                    return;
                };
                let hdr = path.headers_len(UDP_HEADER_LEN);
                buf.resize(hdr, 0);
                buf.extend_from_slice(msg);
                let id = self.next_ip_id();
                self.commit_udp(buf, path.repr(self.mac, id), port);
            }
            Client::Tcp { slot, generation } => {
                let Some(conn) = self.tcp.get_mut(slot) else {
                    return;
                };
                if conn.generation != generation
                    || !conn.active
                    || msg.len() > usize::from(u16::MAX)
                {
                    return;
                }
                conn.tx.extend_from_slice(&(msg.len() as u16).to_be_bytes());
                conn.tx.extend_from_slice(msg);
                self.service_tcp(now);
                self.poll_iface(None, now);
            }
        }
    }

    // ---- smoltcp: ARP, NDP, TCP ----

    fn poll_iface(&mut self, frame: Option<&[u8]>, now: Instant) {
        let mut device = QueueDevice {
            rx: frame,
            tx: &mut self.tx,
            framing: Whole,
            caps: &self.caps,
        };
        self.iface.poll(
            smol_instant(self.epoch, now),
            &mut device,
            &mut self.sockets,
        );
    }

    fn add_listener(&mut self, now: Instant) {
        let mut socket = tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0; TCP_SOCKET_BUFFER]),
            tcp::SocketBuffer::new(vec![0; TCP_SOCKET_BUFFER]),
        );
        if socket.listen(DNS_PORT).is_err() {
            return;
        }
        let handle = self.sockets.add(socket);
        let generation = self.rng.next_u64();
        self.tcp.push(TcpConn::new(handle, generation, now));
    }

    /// Reads queries from, and writes answers to, every TCP connection;
    /// closes idle ones, re-arms closed ones, keeps a spare listener.
    fn service_tcp(&mut self, now: Instant) {
        for slot in 0..self.tcp.len() {
            self.service_conn(slot, now);
        }
        let listening = self
            .tcp
            .iter()
            .filter(|c| self.sockets.get::<tcp::Socket>(c.handle).is_listening())
            .count();
        if listening == 0 && self.tcp.len() < MAX_TCP_CONNECTIONS {
            self.add_listener(now);
        }
    }

    /// Services one connection until it makes no more progress (bounded:
    /// each round either consumes received bytes or stops).
    fn service_conn(&mut self, slot: usize, now: Instant) {
        for _ in 0..64 {
            if !self.service_conn_once(slot, now) {
                break;
            }
        }
    }

    /// One round of reading, answering and writing; true when it consumed
    /// received bytes and another round may find more.
    fn service_conn_once(&mut self, slot: usize, now: Instant) -> bool {
        let conn = &mut self.tcp[slot];
        let socket = self.sockets.get_mut::<tcp::Socket>(conn.handle);
        match socket.state() {
            tcp::State::Listen | tcp::State::SynReceived => return false,
            tcp::State::TimeWait => {
                // smoltcp times TIME-WAIT itself; nothing left to do here.
                conn.active = false;
                conn.closing_since = None;
                return false;
            }
            tcp::State::Closed => {
                if socket.listen(DNS_PORT).is_ok() {
                    let generation = conn.generation.wrapping_add(1);
                    *conn = TcpConn::new(conn.handle, generation, now);
                }
                return false;
            }
            _ => {}
        }
        if !conn.active {
            conn.active = true;
            conn.last_activity = now;
            self.stats.tcp_connections += 1;
        }

        // Read while there is room and the client is not too far ahead.
        let mut chunk = [0u8; 2048];
        let mut progress = false;
        while socket.can_recv()
            && conn.rx.len() < MAX_TCP_MESSAGE
            && conn.in_flight < MAX_TCP_IN_FLIGHT
            && conn.tx.len() - conn.tx_off < MAX_TCP_TX_BACKLOG
        {
            let room = (MAX_TCP_MESSAGE - conn.rx.len()).min(chunk.len());
            match socket.recv_slice(&mut chunk[..room]) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    conn.rx.extend_from_slice(&chunk[..n]);
                    conn.last_activity = now;
                    progress = true;
                }
            }
            if next_message_len(&conn.rx).is_some() {
                break;
            }
        }

        // Answer whole messages.
        let mut rx = std::mem::take(&mut self.tcp[slot].rx);
        let mut consumed = 0;
        while let Some(len) = next_message_len(&rx[consumed..]) {
            let conn = &self.tcp[slot];
            if conn.in_flight >= MAX_TCP_IN_FLIGHT
                || conn.tx.len() - conn.tx_off >= MAX_TCP_TX_BACKLOG
            {
                break;
            }
            let query = &rx[consumed + 2..consumed + 2 + len];
            self.tcp_query(slot, query, now);
            consumed += 2 + len;
        }
        rx.drain(..consumed);
        self.tcp[slot].rx = rx;

        // Write answers, close when done.
        let conn = &mut self.tcp[slot];
        let socket = self.sockets.get_mut::<tcp::Socket>(conn.handle);
        while conn.tx_off < conn.tx.len() && socket.can_send() {
            match socket.send_slice(&conn.tx[conn.tx_off..]) {
                Ok(0) | Err(_) => break,
                Ok(n) => conn.tx_off += n,
            }
        }
        if conn.tx_off == conn.tx.len() {
            conn.tx.clear();
            conn.tx_off = 0;
        }
        let idle = conn.tx.is_empty() && conn.in_flight == 0;
        match conn.closing_since {
            Some(t) if now >= t + TCP_CLOSE_GRACE => socket.abort(),
            Some(_) => {}
            None if idle && !socket.may_recv() => {
                // The client closed its side and has all its answers.
                socket.close();
                conn.closing_since = Some(now);
            }
            None if idle && now >= conn.last_activity + TCP_IDLE_TIMEOUT => {
                socket.close();
                conn.closing_since = Some(now);
            }
            None => {}
        }
        progress || consumed > 0
    }

    fn tcp_query(&mut self, slot: usize, query: &[u8], now: Instant) {
        self.stats.dns_tcp_queries += 1;
        let mut buf = std::mem::take(&mut self.scratch);
        if buf.len() < MAX_TCP_MESSAGE {
            buf.resize(MAX_TCP_MESSAGE, 0);
        }
        let zone = self.zone.load();
        let before = self.responder.stats();
        let outcome = self
            .responder
            .handle_query(&zone, query, Transport::Tcp, &mut buf[2..]);
        self.count_responder(before);
        match outcome {
            Outcome::Answered(n) => {
                buf[..2].copy_from_slice(&(n as u16).to_be_bytes());
                self.tcp[slot].tx.extend_from_slice(&buf[..2 + n]);
            }
            Outcome::Forward { max_reply } => {
                let generation = self.tcp[slot].generation;
                self.forward(query, Client::Tcp { slot, generation }, max_reply, now);
            }
            Outcome::Ignore => {}
        }
        self.scratch = buf;
    }
}

/// Length of the first whole length-prefixed message in `buf`.
fn next_message_len(buf: &[u8]) -> Option<usize> {
    let len = usize::from(u16::from_be_bytes([*buf.first()?, *buf.get(1)?]));
    (buf.len() >= 2 + len).then_some(len)
}

/// The EUI-64 link-local address of `mac`.
fn link_local(mac: MacAddr) -> Ipv6Addr {
    let m = mac.0;
    Ipv6Addr::from([
        0xfe,
        0x80,
        0,
        0,
        0,
        0,
        0,
        0,
        m[0] ^ 0x02,
        m[1],
        m[2],
        0xff,
        0xfe,
        m[3],
        m[4],
        m[5],
    ])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dns::{DnsEntry, Zone};
    use etherparse::{
        ArpEthIpv4Packet, ArpHardwareId, ArpOperation, Icmpv4Header, Icmpv4Type, Icmpv6Type,
        LinkSlice, NetSlice, PacketBuilder, SlicedPacket, TransportSlice,
    };
    use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
    use hickory_proto::rr::{Name, RData, RecordType};
    use rstest::rstest;
    use smoltcp::iface::Config as IfaceConfig;

    const GW_MAC: MacAddr = MacAddr([0x02, 0x42, 0x0a, 0, 0, 1]);
    const C_MAC: [u8; 6] = [0x02, 0x42, 0x0a, 0, 0, 2];
    const GW4: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
    const C4: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
    const GW6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1);
    const C6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2);
    const TIMEOUT: Duration = Duration::from_secs(2);

    fn up(n: u8) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, n)), 53)
    }

    fn entry(name: &str, aliases: &[&str], addrs: &[&str]) -> DnsEntry {
        DnsEntry {
            name: name.into(),
            aliases: aliases.iter().map(|s| s.to_string()).collect(),
            addrs: addrs.iter().map(|a| a.parse().unwrap()).collect(),
        }
    }

    fn zone() -> Zone {
        Zone::new([
            entry("client", &[], &["10.0.0.2", "fd00::2"]),
            entry("web", &["frontend"], &["10.0.0.5", "fd00::5"]),
            entry("w1", &["pool"], &["10.0.0.11"]),
            entry("w2", &["pool"], &["10.0.0.12"]),
            entry("w3", &["pool"], &["10.0.0.13"]),
        ])
    }

    fn config(upstreams: Vec<SocketAddr>) -> GatewayConfig {
        GatewayConfig {
            mac: GW_MAC,
            ipv4: Some((GW4, 24)),
            ipv6: Some((GW6, 64)),
            mtu: 1500,
            zone: zone().into_shared(),
            upstreams,
            upstream_timeout: TIMEOUT,
            random_seed: 42,
        }
    }

    fn gateway(upstreams: Vec<SocketAddr>, now: Instant) -> Gateway {
        Gateway::new(config(upstreams), now).unwrap()
    }

    fn drain(gw: &mut Gateway, now: Instant) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let mut buf = [0u8; 2048];
        while let Some(n) = gw.poll_transmit(now, &mut buf) {
            out.push(buf[..n].to_vec());
        }
        out
    }

    fn dns_query(id: u16, name: &str, qtype: RecordType) -> Vec<u8> {
        let mut msg = Message::new(id, MessageType::Query, OpCode::Query);
        msg.metadata.recursion_desired = true;
        msg.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
        msg.to_vec().unwrap()
    }

    fn udp_frame(v6: bool, sport: u16, payload: &[u8]) -> Vec<u8> {
        let b = PacketBuilder::ethernet2(C_MAC, GW_MAC.0);
        let b = if v6 {
            b.ipv6(C6.octets(), GW6.octets(), 64).udp(sport, 53)
        } else {
            b.ipv4(C4.octets(), GW4.octets(), 64).udp(sport, 53)
        };
        let mut f = Vec::new();
        b.write(&mut f, payload).unwrap();
        f
    }

    /// The DNS payload of a UDP frame from the gateway to the client, after
    /// checking addresses, ports and checksums.
    fn udp_answer(frame: &[u8], v6: bool, sport: u16) -> Message {
        let pkt = SlicedPacket::from_ethernet(frame).unwrap();
        let Some(LinkSlice::Ethernet2(eth)) = &pkt.link else {
            panic!("no ethernet")
        };
        assert_eq!(eth.source(), GW_MAC.0);
        assert_eq!(eth.destination(), C_MAC);
        let Some(TransportSlice::Udp(udp)) = &pkt.transport else {
            panic!("not udp")
        };
        assert_eq!(udp.source_port(), 53);
        assert_eq!(udp.destination_port(), sport);
        match &pkt.net {
            Some(NetSlice::Ipv4(ip)) => {
                assert!(!v6);
                let h = ip.header();
                assert_eq!(h.source_addr(), GW4);
                assert_eq!(h.destination_addr(), C4);
                assert_eq!(h.to_header().calc_header_checksum(), h.header_checksum());
                let c = udp
                    .to_header()
                    .calc_checksum_ipv4_raw(h.source(), h.destination(), udp.payload())
                    .unwrap();
                assert_eq!(c, udp.checksum());
            }
            Some(NetSlice::Ipv6(ip)) => {
                assert!(v6);
                let h = ip.header();
                assert_eq!(h.source_addr(), GW6);
                assert_eq!(h.destination_addr(), C6);
                let c = udp
                    .to_header()
                    .calc_checksum_ipv6_raw(h.source(), h.destination(), udp.payload())
                    .unwrap();
                assert_eq!(c, udp.checksum());
            }
            _ => panic!("not ip"),
        }
        Message::from_vec(udp.payload()).unwrap()
    }

    fn ask(gw: &mut Gateway, v6: bool, id: u16, name: &str, qtype: RecordType) -> Message {
        let now = gw.epoch;
        gw.handle_frame(&udp_frame(v6, 40000, &dns_query(id, name, qtype)), now);
        let frames = drain(gw, now);
        assert_eq!(frames.len(), 1, "one answer frame");
        udp_answer(&frames[0], v6, 40000)
    }

    fn answer_addrs(msg: &Message) -> Vec<String> {
        msg.answers
            .iter()
            .map(|r| match &r.data {
                RData::A(a) => a.0.to_string(),
                RData::AAAA(a) => a.0.to_string(),
                RData::PTR(p) => p.0.to_ascii(),
                other => format!("{other:?}"),
            })
            .collect()
    }

    #[test]
    fn rejects_bad_config() {
        let now = Instant::now();
        let mut c = config(vec![]);
        c.mac = MacAddr::BROADCAST;
        assert!(matches!(
            Gateway::new(c, now),
            Err(GatewayError::MacNotUnicast(_))
        ));
        let mut c = config(vec![]);
        c.mtu = 1000;
        assert_eq!(Gateway::new(c, now).unwrap_err(), GatewayError::Mtu(1000));
        let mut c = config(vec![]);
        c.ipv4 = Some((GW4, 33));
        assert_eq!(
            Gateway::new(c, now).unwrap_err(),
            GatewayError::PrefixLen(33)
        );
        let mut c = config(vec![]);
        c.ipv4 = Some((Ipv4Addr::BROADCAST, 24));
        assert!(Gateway::new(c, now).is_err());
    }

    #[test]
    fn arp_request_gets_reply() {
        let now = Instant::now();
        let mut gw = gateway(vec![], now);
        let arp = ArpEthIpv4Packet {
            operation: ArpOperation::REQUEST,
            sender_mac: C_MAC,
            sender_ipv4: C4.octets(),
            target_mac: [0; 6],
            target_ipv4: GW4.octets(),
        };
        let mut f = Vec::new();
        PacketBuilder::ethernet2(C_MAC, [0xff; 6])
            .arp(arp.to_arp_packet())
            .write(&mut f)
            .unwrap();
        gw.handle_frame(&f, now);
        let frames = drain(&mut gw, now);
        assert_eq!(frames.len(), 1);
        let pkt = SlicedPacket::from_ethernet(&frames[0]).unwrap();
        let Some(NetSlice::Arp(reply)) = &pkt.net else {
            panic!("not arp")
        };
        let reply = reply.to_packet().try_eth_ipv4().unwrap();
        assert_eq!(reply.operation, ArpOperation::REPLY);
        assert_eq!(reply.sender_mac, GW_MAC.0);
        assert_eq!(reply.sender_ipv4, GW4.octets());
        assert_eq!(reply.target_mac, C_MAC);
        assert_eq!(reply.target_ipv4, C4.octets());

        // ARP for someone else: silence.
        let mut other = arp;
        other.target_ipv4 = [10, 0, 0, 99];
        let mut f = Vec::new();
        PacketBuilder::ethernet2(C_MAC, [0xff; 6])
            .arp(other.to_arp_packet())
            .write(&mut f)
            .unwrap();
        gw.handle_frame(&f, now);
        assert!(drain(&mut gw, now).is_empty());
        let _ = ArpHardwareId::ETHERNET;
    }

    #[rstest]
    #[case(false)]
    #[case(true)]
    fn echo_request_gets_reply(#[case] v6: bool) {
        let now = Instant::now();
        let mut gw = gateway(vec![], now);
        let payload: Vec<u8> = (0..56u8).collect();
        let b = PacketBuilder::ethernet2(C_MAC, GW_MAC.0);
        let mut f = Vec::new();
        if v6 {
            b.ipv6(C6.octets(), GW6.octets(), 64)
                .icmpv6_echo_request(0x77, 3)
                .write(&mut f, &payload)
                .unwrap();
        } else {
            b.ipv4(C4.octets(), GW4.octets(), 64)
                .icmpv4_echo_request(0x77, 3)
                .write(&mut f, &payload)
                .unwrap();
        }
        gw.handle_frame(&f, now);
        let frames = drain(&mut gw, now);
        assert_eq!(frames.len(), 1);
        let pkt = SlicedPacket::from_ethernet(&frames[0]).unwrap();
        match (&pkt.net, &pkt.transport) {
            (Some(NetSlice::Ipv4(ip)), Some(TransportSlice::Icmpv4(icmp))) => {
                assert!(!v6);
                assert_eq!(ip.header().destination_addr(), C4);
                assert_eq!(ip.header().source_addr(), GW4);
                let Icmpv4Type::EchoReply(e) = icmp.icmp_type() else {
                    panic!("not a reply")
                };
                assert_eq!((e.id, e.seq), (0x77, 3));
                assert_eq!(icmp.payload(), &payload[..]);
                let want = Icmpv4Header::with_checksum(icmp.icmp_type(), icmp.payload());
                assert_eq!(want.checksum, icmp.checksum());
            }
            (Some(NetSlice::Ipv6(ip)), Some(TransportSlice::Icmpv6(icmp))) => {
                assert!(v6);
                let h = ip.header();
                assert_eq!(h.destination_addr(), C6);
                let Icmpv6Type::EchoReply(e) = icmp.icmp_type() else {
                    panic!("not a reply")
                };
                assert_eq!((e.id, e.seq), (0x77, 3));
                assert_eq!(icmp.payload(), &payload[..]);
                assert!(icmp.is_checksum_valid(h.source(), h.destination()));
            }
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(gw.stats().echo_replies, 1);

        // A corrupted checksum is dropped and counted.
        let mut bad = f.clone();
        let last = bad.len() - 1;
        bad[last] ^= 0xff;
        gw.handle_frame(&bad, now);
        assert!(drain(&mut gw, now).is_empty());
        assert_eq!(gw.stats().frames_bad_checksum, 1);
    }

    #[test]
    fn echo_to_the_link_local_address() {
        let now = Instant::now();
        let mut gw = gateway(vec![], now);
        let ll: Ipv6Addr = "fe80::42:aff:fe00:1".parse().unwrap();
        assert_eq!(link_local(GW_MAC), ll);
        let src: Ipv6Addr = "fe80::42:aff:fe00:2".parse().unwrap();
        let mut f = Vec::new();
        PacketBuilder::ethernet2(C_MAC, GW_MAC.0)
            .ipv6(src.octets(), ll.octets(), 64)
            .icmpv6_echo_request(1, 1)
            .write(&mut f, b"hello")
            .unwrap();
        gw.handle_frame(&f, now);
        let frames = drain(&mut gw, now);
        assert_eq!(frames.len(), 1);
        let pkt = SlicedPacket::from_ethernet(&frames[0]).unwrap();
        let Some(NetSlice::Ipv6(ip)) = &pkt.net else {
            panic!("not ipv6")
        };
        assert_eq!(ip.header().source_addr(), ll);
        assert_eq!(ip.header().destination_addr(), src);
    }

    /// A neighbour solicitation for `target` from `src` (link-layer option
    /// included), to the solicited-node group.
    fn neighbor_solicit(src: Ipv6Addr, target: Ipv6Addr) -> Vec<u8> {
        let t = target.octets();
        let group = Ipv6Addr::from([
            0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0xff, t[13], t[14], t[15],
        ]);
        let mut payload = t.to_vec();
        payload.extend_from_slice(&[1, 1]);
        payload.extend_from_slice(&C_MAC);
        let mut f = Vec::new();
        PacketBuilder::ethernet2(C_MAC, [0x33, 0x33, 0xff, t[13], t[14], t[15]])
            .ipv6(src.octets(), group.octets(), 255)
            .icmpv6_raw(135, 0, [0; 4])
            .write(&mut f, &payload)
            .unwrap();
        f
    }

    #[rstest]
    #[case(C6)]
    #[case("fe80::42:aff:fe00:2".parse().unwrap())]
    fn neighbor_solicitation_gets_advert(#[case] src: Ipv6Addr) {
        let now = Instant::now();
        let mut gw = gateway(vec![], now);
        gw.handle_frame(&neighbor_solicit(src, GW6), now);
        let frames = drain(&mut gw, now);
        assert_eq!(frames.len(), 1, "one advert");
        let pkt = SlicedPacket::from_ethernet(&frames[0]).unwrap();
        let (Some(NetSlice::Ipv6(ip)), Some(TransportSlice::Icmpv6(icmp))) =
            (&pkt.net, &pkt.transport)
        else {
            panic!("not icmpv6")
        };
        assert_eq!(ip.header().destination_addr(), src);
        assert_eq!(icmp.type_u8(), 136);
        assert!(icmp.is_checksum_valid(ip.header().source(), ip.header().destination()));
        // Target address, then the target link-layer address option.
        let body = icmp.payload();
        assert_eq!(&body[..16], &GW6.octets());
        assert_eq!(&body[16..18], &[2, 1]);
        assert_eq!(&body[18..24], &GW_MAC.0);
        // The solicited flag is set.
        assert_eq!(icmp.bytes5to8()[0] & 0x40, 0x40);
    }

    #[rstest]
    #[case(false, "web.", RecordType::A, &["10.0.0.5"])]
    #[case(true, "web.", RecordType::A, &["10.0.0.5"])]
    #[case(false, "FrontEnd", RecordType::AAAA, &["fd00::5"])]
    #[case(true, "web.", RecordType::AAAA, &["fd00::5"])]
    #[case(false, "5.0.0.10.in-addr.arpa.", RecordType::PTR, &["web."])]
    #[case(
        true,
        "5.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.d.f.ip6.arpa.",
        RecordType::PTR,
        &["web."]
    )]
    fn udp_queries_are_answered(
        #[case] v6: bool,
        #[case] name: &str,
        #[case] qtype: RecordType,
        #[case] want: &[&str],
    ) {
        let now = Instant::now();
        let mut gw = gateway(vec![up(1)], now);
        let msg = ask(&mut gw, v6, 0x4242, name, qtype);
        assert_eq!(msg.metadata.id, 0x4242);
        assert_eq!(msg.metadata.response_code, ResponseCode::NoError);
        assert!(msg.metadata.authoritative);
        assert_eq!(answer_addrs(&msg), want);
        assert_eq!(gw.stats().dns_answered, 1);
        assert_eq!(gw.stats().dns_udp_queries, 1);
        assert!(gw.poll_upstream(&mut [0u8; 512]).is_none());
    }

    #[test]
    fn round_robin_over_three_containers() {
        let now = Instant::now();
        let mut gw = gateway(vec![], now);
        let firsts: Vec<String> = (0..3)
            .map(|i| {
                let msg = ask(&mut gw, false, i, "pool.", RecordType::A);
                let mut got = answer_addrs(&msg);
                let first = got[0].clone();
                got.sort();
                assert_eq!(got, ["10.0.0.11", "10.0.0.12", "10.0.0.13"]);
                first
            })
            .collect();
        assert_ne!(firsts[0], firsts[1]);
        assert_ne!(firsts[1], firsts[2]);
        assert_ne!(firsts[0], firsts[2]);
    }

    #[test]
    fn zone_is_swapped_atomically() {
        let now = Instant::now();
        let cfg = config(vec![]);
        let zone = cfg.zone.clone();
        let mut gw = Gateway::new(cfg, now).unwrap();
        let msg = ask(&mut gw, false, 1, "db.", RecordType::A);
        assert_eq!(msg.metadata.response_code, ResponseCode::Refused);
        zone.store(std::sync::Arc::new(Zone::new([entry(
            "db",
            &[],
            &["10.0.0.9"],
        )])));
        let msg = ask(&mut gw, false, 2, "db.", RecordType::A);
        assert_eq!(answer_addrs(&msg), ["10.0.0.9"]);
    }

    #[test]
    fn unknown_names_are_forwarded_and_the_reply_relayed() {
        let now = Instant::now();
        let mut gw = gateway(vec![up(1), up(2)], now);
        let query = dns_query(0x1111, "example.com.", RecordType::A);
        gw.handle_frame(&udp_frame(false, 40001, &query), now);
        assert!(drain(&mut gw, now).is_empty());
        let mut out = [0u8; 512];
        let (to, n) = gw.poll_upstream(&mut out).unwrap();
        assert_eq!(to, up(1));
        let sent = out[..n].to_vec();
        assert_eq!(&sent[2..], &query[2..], "only the id changes");
        let upstream_id = dns::message_id(&sent).unwrap();
        assert!(gw.poll_upstream(&mut out).is_none());

        // The upstream's reply.
        let mut reply = Message::from_vec(&sent).unwrap();
        reply.metadata.message_type = MessageType::Response;
        reply.metadata.recursion_available = true;
        reply.add_answer(hickory_proto::rr::Record::from_rdata(
            Name::from_ascii("example.com.").unwrap(),
            300,
            RData::A(hickory_proto::rr::rdata::A(Ipv4Addr::new(93, 184, 215, 14))),
        ));
        let reply = reply.to_vec().unwrap();

        // From the wrong address, with a wrong id, for another question, or
        // not a response: dropped and counted.
        gw.handle_upstream(up(9), &reply, now);
        let mut wrong_id = reply.clone();
        dns::set_message_id(&mut wrong_id, upstream_id.wrapping_add(1));
        gw.handle_upstream(up(1), &wrong_id, now);
        let mut other = dns_query(upstream_id, "example.org.", RecordType::A);
        other[2] |= 0x80;
        gw.handle_upstream(up(1), &other, now);
        gw.handle_upstream(up(1), &sent, now);
        gw.handle_upstream(up(1), &[1, 2, 3], now);
        assert_eq!(gw.stats().upstream_dropped, 5);
        assert!(drain(&mut gw, now).is_empty());

        gw.handle_upstream(up(1), &reply, now);
        let frames = drain(&mut gw, now);
        assert_eq!(frames.len(), 1);
        let msg = udp_answer(&frames[0], false, 40001);
        assert_eq!(msg.metadata.id, 0x1111);
        assert_eq!(answer_addrs(&msg), ["93.184.215.14"]);
        let s = gw.stats();
        assert_eq!((s.dns_forwarded, s.dns_upstream_answered), (1, 1));
        // Nothing pending: no timer.
        assert_eq!(gw.poll_timeout(now), None);
        // A duplicate reply finds nothing pending.
        gw.handle_upstream(up(1), &reply, now);
        assert!(drain(&mut gw, now).is_empty());
        assert_eq!(gw.stats().upstream_dropped, 6);
    }

    #[test]
    fn upstream_timeouts_try_the_next_then_servfail() {
        let start = Instant::now();
        let mut gw = gateway(vec![up(1), up(2)], start);
        let query = dns_query(0x2222, "slow.example.", RecordType::AAAA);
        gw.handle_frame(&udp_frame(true, 40002, &query), start);
        let mut out = [0u8; 512];
        assert_eq!(gw.poll_upstream(&mut out).unwrap().0, up(1));
        assert_eq!(gw.poll_timeout(start), Some(start + TIMEOUT));

        // Not yet.
        gw.handle_timeout(start + TIMEOUT - Duration::from_millis(1));
        assert!(gw.poll_upstream(&mut out).is_none());

        let t1 = start + TIMEOUT;
        gw.handle_timeout(t1);
        let (to, n) = gw.poll_upstream(&mut out).unwrap();
        assert_eq!(to, up(2));
        assert_eq!(&out[2..n], &query[2..]);
        assert!(drain(&mut gw, t1).is_empty());
        assert_eq!(gw.poll_timeout(t1), Some(t1 + TIMEOUT));

        // A late reply from the first upstream is still taken... but here
        // nobody answers.
        let t2 = t1 + TIMEOUT;
        gw.handle_timeout(t2);
        let frames = drain(&mut gw, t2);
        assert_eq!(frames.len(), 1);
        let msg = udp_answer(&frames[0], true, 40002);
        assert_eq!(msg.metadata.id, 0x2222);
        assert_eq!(msg.metadata.response_code, ResponseCode::ServFail);
        assert_eq!(msg.queries[0].name().to_ascii(), "slow.example.");
        let s = gw.stats();
        assert_eq!((s.dns_failed, s.upstream_retries), (1, 1));
        assert!(gw.poll_upstream(&mut out).is_none());
    }

    #[test]
    fn servfail_from_one_upstream_asks_the_next() {
        let now = Instant::now();
        let mut gw = gateway(vec![up(1), up(2)], now);
        let query = dns_query(7, "flaky.example.", RecordType::A);
        gw.handle_frame(&udp_frame(false, 40003, &query), now);
        let mut out = [0u8; 512];
        let (_, n) = gw.poll_upstream(&mut out).unwrap();
        let mut fail = Message::from_vec(&out[..n]).unwrap();
        fail.metadata.message_type = MessageType::Response;
        fail.metadata.response_code = ResponseCode::ServFail;
        gw.handle_upstream(up(1), &fail.to_vec().unwrap(), now);
        assert!(drain(&mut gw, now).is_empty());
        let (to, _) = gw.poll_upstream(&mut out).unwrap();
        assert_eq!(to, up(2));
        // The second one's SERVFAIL is the last word.
        gw.handle_upstream(up(2), &fail.to_vec().unwrap(), now);
        let frames = drain(&mut gw, now);
        let msg = udp_answer(&frames[0], false, 40003);
        assert_eq!(msg.metadata.response_code, ResponseCode::ServFail);
        assert_eq!(msg.metadata.id, 7);
    }

    #[test]
    fn internal_network_refuses_and_never_forwards() {
        let now = Instant::now();
        let mut gw = gateway(vec![], now);
        let msg = ask(&mut gw, false, 9, "example.com.", RecordType::A);
        assert_eq!(msg.metadata.response_code, ResponseCode::Refused);
        assert_eq!(msg.metadata.id, 9);
        assert!(gw.poll_upstream(&mut [0u8; 512]).is_none());
        assert_eq!(gw.stats().dns_refused, 1);
        // Local names still resolve.
        let msg = ask(&mut gw, false, 10, "web.", RecordType::A);
        assert_eq!(answer_addrs(&msg), ["10.0.0.5"]);
    }

    #[test]
    fn pending_queries_are_bounded() {
        let now = Instant::now();
        let mut gw = gateway(vec![up(1)], now);
        for i in 0..MAX_PENDING_UPSTREAM as u16 {
            let q = dns_query(i, "a.example.", RecordType::A);
            gw.handle_frame(&udp_frame(false, 1000 + i, &q), now);
        }
        assert!(drain(&mut gw, now).is_empty());
        let q = dns_query(0xffff, "b.example.", RecordType::A);
        gw.handle_frame(&udp_frame(false, 999, &q), now);
        let frames = drain(&mut gw, now);
        assert_eq!(frames.len(), 1);
        let msg = udp_answer(&frames[0], false, 999);
        assert_eq!(msg.metadata.response_code, ResponseCode::ServFail);
        assert_eq!(gw.stats().dns_pending_overflow, 1);
        let mut out = [0u8; 512];
        let mut sent = 0;
        while gw.poll_upstream(&mut out).is_some() {
            sent += 1;
        }
        assert_eq!(sent, MAX_PENDING_UPSTREAM);
        // All time out at once: the transmit queue bounds what is queued.
        gw.handle_timeout(now + TIMEOUT);
        assert_eq!(drain(&mut gw, now + TIMEOUT).len(), TX_QUEUE_FRAMES);
        assert_eq!(gw.stats().dns_failed, MAX_PENDING_UPSTREAM as u64 + 1);
        assert!(gw.stats().frames_dropped > 0);
        assert_eq!(gw.poll_timeout(now + TIMEOUT), None);
    }

    #[test]
    fn oversized_upstream_reply_is_truncated_for_the_client() {
        let now = Instant::now();
        let mut gw = gateway(vec![up(1)], now);
        let query = dns_query(5, "big.example.", RecordType::A);
        gw.handle_frame(&udp_frame(false, 40004, &query), now);
        let mut out = [0u8; 512];
        let (_, n) = gw.poll_upstream(&mut out).unwrap();
        let mut reply = Message::from_vec(&out[..n]).unwrap();
        reply.metadata.message_type = MessageType::Response;
        for i in 0..60u8 {
            reply.add_answer(hickory_proto::rr::Record::from_rdata(
                Name::from_ascii("big.example.").unwrap(),
                300,
                RData::A(hickory_proto::rr::rdata::A(Ipv4Addr::new(10, 9, 0, i))),
            ));
        }
        let reply = reply.to_vec().unwrap();
        assert!(reply.len() > 512);
        gw.handle_upstream(up(1), &reply, now);
        let frames = drain(&mut gw, now);
        let msg = udp_answer(&frames[0], false, 40004);
        assert!(msg.metadata.truncation);
        assert_eq!(msg.metadata.id, 5);
        assert!(msg.answers.is_empty());
    }

    #[test]
    fn garbage_is_counted_not_answered() {
        let now = Instant::now();
        let mut gw = gateway(vec![up(1)], now);
        gw.handle_frame(&[], now);
        gw.handle_frame(&[0xff; 10], now);
        // An IPv4 header claiming more bytes than the frame has.
        let mut f = udp_frame(false, 40005, &dns_query(1, "web.", RecordType::A));
        f.truncate(30);
        gw.handle_frame(&f, now);
        assert_eq!(gw.stats().frames_malformed, 3);
        // Garbage DNS: too short to answer.
        gw.handle_frame(&udp_frame(false, 40005, &[1, 2, 3]), now);
        // A bad UDP checksum.
        let mut f = udp_frame(false, 40005, &dns_query(1, "web.", RecordType::A));
        let last = f.len() - 1;
        f[last] ^= 0x55;
        gw.handle_frame(&f, now);
        assert!(drain(&mut gw, now).is_empty());
        let s = gw.stats();
        assert_eq!(s.frames_bad_checksum, 1);
        assert_eq!(s.dns_malformed, 1);
        // A frame for another MAC is not ours.
        let mut f = udp_frame(false, 40005, &dns_query(1, "web.", RecordType::A));
        f[..6].copy_from_slice(&[0x02, 0, 0, 0, 0, 0x99]);
        gw.handle_frame(&f, now);
        assert!(drain(&mut gw, now).is_empty());
        assert!(gw.poll_upstream(&mut [0u8; 512]).is_none());
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_frames_never_panic(
            frames in proptest::collection::vec(
                proptest::collection::vec(proptest::num::u8::ANY, 0..200), 0..20),
            flips in proptest::collection::vec((0usize..120, proptest::num::u8::ANY), 0..8),
        ) {
            let now = Instant::now();
            let mut gw = gateway(vec![up(1)], now);
            let mut t = now;
            let mut buf = [0u8; 2048];
            for f in &frames {
                gw.handle_frame(f, t);
                t += Duration::from_millis(300);
                gw.handle_timeout(t);
                while gw.poll_transmit(t, &mut buf).is_some() {}
                gw.handle_upstream(up(1), f, t);
            }
            // Valid frames with a few bytes flipped.
            let mut f = udp_frame(false, 40006, &dns_query(1, "x.example.", RecordType::A));
            for (i, b) in &flips {
                let i = i % f.len();
                f[i] ^= b;
            }
            gw.handle_frame(&f, t);
            while gw.poll_transmit(t, &mut buf).is_some() {}
            while let Some((_, n)) = gw.poll_upstream(&mut buf) {
                let mut reply = buf[..n].to_vec();
                reply[2] |= 0x80;
                gw.handle_upstream(up(1), &reply, t);
            }
        }
    }

    // ---- DNS over TCP, against smoltcp clients wired back to back ----

    use crate::stack::test_wire::Wire;

    /// A container with a smoltcp stack and one TCP socket.
    struct Peer {
        iface: Interface,
        wire: Wire,
        sockets: SocketSet<'static>,
        tcp: SocketHandle,
    }

    impl Peer {
        fn new(host: u8, epoch: Instant) -> Peer {
            let mut wire = Wire::default();
            let mac = EthernetAddress([0x02, 0x42, 0x0a, 0, 0, host]);
            let mut cfg = IfaceConfig::new(HardwareAddress::Ethernet(mac));
            cfg.random_seed = u64::from(host);
            let mut iface = Interface::new(cfg, &mut wire, smol_instant(epoch, epoch));
            iface.update_ip_addrs(|a| {
                a.push(IpCidr::new(IpAddress::v4(10, 0, 0, host), 24))
                    .unwrap();
            });
            let mut sockets = SocketSet::new(Vec::new());
            let tcp = sockets.add(tcp::Socket::new(
                tcp::SocketBuffer::new(vec![0; 8192]),
                tcp::SocketBuffer::new(vec![0; 8192]),
            ));
            Peer {
                iface,
                wire,
                sockets,
                tcp,
            }
        }

        fn connect(&mut self, port: u16) {
            let s = self.sockets.get_mut::<tcp::Socket>(self.tcp);
            s.connect(self.iface.context(), (IpAddress::Ipv4(GW4), 53), port)
                .unwrap();
        }

        fn socket(&mut self) -> &mut tcp::Socket<'static> {
            self.sockets.get_mut::<tcp::Socket>(self.tcp)
        }

        fn send_query(&mut self, query: &[u8]) {
            let mut framed = (query.len() as u16).to_be_bytes().to_vec();
            framed.extend_from_slice(query);
            assert_eq!(self.socket().send_slice(&framed).unwrap(), framed.len());
        }

        /// Every whole length-prefixed message received so far.
        fn answers(&mut self, acc: &mut Vec<u8>) -> Vec<Message> {
            let mut buf = [0u8; 4096];
            while let Ok(n) = self.socket().recv_slice(&mut buf) {
                if n == 0 {
                    break;
                }
                acc.extend_from_slice(&buf[..n]);
            }
            let mut out = Vec::new();
            while let Some(len) = next_message_len(acc) {
                out.push(Message::from_vec(&acc[2..2 + len]).unwrap());
                acc.drain(..2 + len);
            }
            out
        }
    }

    /// Moves frames between the peers and the gateway until quiet (every
    /// frame from the gateway reaches every peer, as on a flooding bridge).
    fn pump(gw: &mut Gateway, peers: &mut [&mut Peer], epoch: Instant, now: Instant) {
        let mut buf = [0u8; 2048];
        for _ in 0..200 {
            let mut moved = false;
            for p in peers.iter_mut() {
                p.iface
                    .poll(smol_instant(epoch, now), &mut p.wire, &mut p.sockets);
                while let Some(f) = p.wire.tx.pop_front() {
                    gw.handle_frame(&f, now);
                    moved = true;
                }
            }
            while let Some(n) = gw.poll_transmit(now, &mut buf) {
                for p in peers.iter_mut() {
                    p.wire.rx.push_back(buf[..n].to_vec());
                }
                moved = true;
            }
            if !moved {
                return;
            }
        }
        panic!("the link never went quiet");
    }

    #[test]
    fn dns_over_tcp_answers_and_keeps_accepting() {
        let epoch = Instant::now();
        let mut gw = gateway(vec![up(1)], epoch);
        let mut now = epoch;
        for round in 0..3u16 {
            let mut peer = Peer::new(2, epoch);
            peer.connect(50000 + round);
            pump(&mut gw, &mut [&mut peer], epoch, now);
            assert_eq!(
                peer.socket().state(),
                tcp::State::Established,
                "round {round}"
            );
            // Two pipelined queries in one segment.
            peer.send_query(&dns_query(100 + round, "web.", RecordType::A));
            peer.send_query(&dns_query(200 + round, "pool.", RecordType::A));
            pump(&mut gw, &mut [&mut peer], epoch, now);
            let mut acc = Vec::new();
            let answers = peer.answers(&mut acc);
            assert_eq!(answers.len(), 2);
            assert_eq!(answers[0].metadata.id, 100 + round);
            assert_eq!(answer_addrs(&answers[0]), ["10.0.0.5"]);
            assert_eq!(answers[1].metadata.id, 200 + round);
            assert_eq!(answers[1].answers.len(), 3);
            // The client closes; the gateway finishes the close and listens
            // again.
            peer.socket().close();
            pump(&mut gw, &mut [&mut peer], epoch, now);
            now += Duration::from_secs(1);
            pump(&mut gw, &mut [&mut peer], epoch, now);
        }
        assert_eq!(gw.stats().tcp_connections, 3);
        assert_eq!(gw.stats().dns_tcp_queries, 6);
        assert!(gw.tcp.len() <= INITIAL_TCP_LISTENERS + 1);
    }

    #[test]
    fn two_tcp_clients_at_once_and_forwarding_over_tcp() {
        let epoch = Instant::now();
        let mut gw = gateway(vec![up(1)], epoch);
        let now = epoch;
        let mut a = Peer::new(2, epoch);
        let mut b = Peer::new(3, epoch);
        a.connect(50001);
        b.connect(50002);
        pump(&mut gw, &mut [&mut a, &mut b], epoch, now);
        assert_eq!(a.socket().state(), tcp::State::Established);
        assert_eq!(b.socket().state(), tcp::State::Established);

        a.send_query(&dns_query(1, "outside.example.", RecordType::A));
        b.send_query(&dns_query(2, "frontend.", RecordType::AAAA));
        pump(&mut gw, &mut [&mut a, &mut b], epoch, now);
        let (mut acc_a, mut acc_b) = (Vec::new(), Vec::new());
        let got_b = b.answers(&mut acc_b);
        assert_eq!(got_b.len(), 1);
        assert_eq!(got_b[0].metadata.id, 2);
        assert_eq!(answer_addrs(&got_b[0]), ["fd00::5"]);
        assert!(a.answers(&mut acc_a).is_empty(), "a waits for upstream");

        // Upstream answers a's query; a gets it over its connection.
        let mut out = [0u8; 512];
        let (to, n) = gw.poll_upstream(&mut out).unwrap();
        assert_eq!(to, up(1));
        let mut reply = Message::from_vec(&out[..n]).unwrap();
        reply.metadata.message_type = MessageType::Response;
        reply.add_answer(hickory_proto::rr::Record::from_rdata(
            Name::from_ascii("outside.example.").unwrap(),
            60,
            RData::A(hickory_proto::rr::rdata::A(Ipv4Addr::new(198, 51, 100, 7))),
        ));
        gw.handle_upstream(up(1), &reply.to_vec().unwrap(), now);
        pump(&mut gw, &mut [&mut a, &mut b], epoch, now);
        let got_a = a.answers(&mut acc_a);
        assert_eq!(got_a.len(), 1);
        assert_eq!(got_a[0].metadata.id, 1);
        assert_eq!(answer_addrs(&got_a[0]), ["198.51.100.7"]);

        // A third client while both are connected: the pool grows.
        let mut c = Peer::new(4, epoch);
        c.connect(50003);
        pump(&mut gw, &mut [&mut a, &mut b, &mut c], epoch, now);
        assert_eq!(c.socket().state(), tcp::State::Established);
        assert_eq!(gw.stats().tcp_connections, 3);
    }

    #[test]
    fn idle_tcp_connections_are_closed() {
        let epoch = Instant::now();
        let mut gw = gateway(vec![], epoch);
        let mut peer = Peer::new(2, epoch);
        peer.connect(50010);
        pump(&mut gw, &mut [&mut peer], epoch, epoch);
        assert_eq!(peer.socket().state(), tcp::State::Established);
        let deadline = gw.poll_timeout(epoch).unwrap();
        assert_eq!(deadline, epoch + TCP_IDLE_TIMEOUT);
        gw.handle_timeout(deadline);
        pump(&mut gw, &mut [&mut peer], epoch, deadline);
        // The gateway sent its FIN: the client can no longer receive.
        assert!(!peer.socket().may_recv());
        peer.socket().close();
        pump(&mut gw, &mut [&mut peer], epoch, deadline);
        let later = deadline + Duration::from_secs(1);
        gw.handle_timeout(later);
        pump(&mut gw, &mut [&mut peer], epoch, later);
        // No timer left that would spin the daemon.
        if let Some(t) = gw.poll_timeout(later) {
            assert!(t > later, "{t:?} <= {later:?}");
        }
    }
}
