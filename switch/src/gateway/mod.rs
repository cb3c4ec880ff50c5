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
//!
//! # Layout
//!
//! - `mod.rs`: the configuration, the counters, the direct path (UDP DNS
//!   and ICMP echo answered straight into a transmit buffer) and the
//!   smoltcp interface (ARP, NDP, stray TCP).
//! - `upstream`: queries forwarded to the upstream resolvers.
//! - `tcp`: DNS over TCP on port 53.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use smoltcp::iface::{Interface, SocketSet};
use smoltcp::phy::{DeviceCapabilities, Medium};
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpAddress, IpCidr};

use crate::dns::{self, ErrorReply, Outcome, Responder, SharedZone, Transport};
use crate::stack::{
    add_addrs, check_interface, new_interface, poll_at, smol_instant, QueueDevice, Rng, TxQueue,
    Whole,
};
use crate::wire::{self, Echo, IpFrame, IpHeader, IpRepr, TransportHeader, UDP_HEADER_LEN};
use crate::MacAddr;

mod tcp;
#[cfg(test)]
mod testing;
mod upstream;

use tcp::TcpConn;
use upstream::{Client, Pending};

/// Listening sockets made up front, so two clients connecting at once are
/// both accepted before the pool grows.
const INITIAL_TCP_LISTENERS: usize = 2;
/// The DNS port, UDP and TCP.
pub const DNS_PORT: u16 = 53;
/// The address every network's gateway also answers DNS on (UDP): one
/// resolver address for all networks, for a runtime that takes a single
/// upstream for every container (Docker's `"dns"` setting: its embedded
/// resolver forwards the names it does not know there, from inside the
/// container's namespace, so the query reaches the gateway of the
/// container's network by its default route). Link-local, so it is never
/// an address of the outside world; the NAT never forwards it.
pub const DNS_SERVICE_V4: Ipv4Addr = Ipv4Addr::new(169, 254, 53, 53);
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
/// Ethernet II header.
const ETH_LEN: usize = 14;
/// IPv4 header without options, as the gateway writes it.
const IPV4_HEADER_LEN: usize = 20;
/// IPv6 fixed header.
const IPV6_HEADER_LEN: usize = 40;
/// Hop limit / TTL of the frames the gateway writes itself.
const HOP_LIMIT: u8 = 64;

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

/// Whether the gateway answers `transport` itself, in a packet of IPv6
/// (`v6`) or IPv4: a DNS query over UDP, or an echo request of the
/// packet's own ICMP.
fn answers_itself(transport: &TransportHeader<'_, '_>, v6: bool) -> bool {
    match transport {
        TransportHeader::Udp(u) => u.dst_port() == DNS_PORT,
        TransportHeader::Icmpv4(i) if !v6 => i.echo_request().is_some(),
        TransportHeader::Icmpv6(i) if v6 => i.echo_request().is_some(),
        _ => false,
    }
}

/// Where a reply to a client goes: the L2 and L3 of its request, swapped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ReplyPath {
    client_mac: MacAddr,
    client_ip: IpAddr,
    local_ip: IpAddr,
}

impl ReplyPath {
    fn new(client_mac: MacAddr, client_ip: impl Into<IpAddr>, local_ip: impl Into<IpAddr>) -> Self {
        ReplyPath {
            client_mac,
            client_ip: client_ip.into(),
            local_ip: local_ip.into(),
        }
    }

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
        let tx = TxQueue::new(TX_QUEUE_FRAMES, usize::MAX, TX_QUEUE_FRAMES);
        let hardware = HardwareAddress::Ethernet(EthernetAddress(mac.0));
        let mut iface = new_interface(hardware, rng.next_u64(), &caps, now);
        add_addrs(&mut iface, config.ipv4, config.ipv6);
        if let Some((addr, _)) = config.ipv6 {
            let ll = link_local(mac);
            if ll != addr {
                iface.update_ip_addrs(|addrs| {
                    let _ = addrs.push(IpCidr::new(IpAddress::Ipv6(ll), 64));
                });
            }
        }

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
        let (path, transport) = match (pkt.ip(), pkt.transport()) {
            (Some(IpHeader::V4(ip)), Some(transport)) => {
                // The gateway's own address, or DNS on the service address.
                let mine = Some(ip.dst()) == self.ipv4
                    || (ip.dst() == DNS_SERVICE_V4
                        && self.ipv4.is_some()
                        && matches!(&transport, TransportHeader::Udp(_)));
                if !mine || !answers_itself(&transport, false) {
                    return Direct::Pass;
                }
                let src = ip.src();
                if src.is_unspecified() || src.is_multicast() || src.is_broadcast() {
                    return Direct::Done;
                }
                if !ip.checksum_ok() {
                    return self.bad_checksum();
                }
                (ReplyPath::new(client_mac, src, ip.dst()), transport)
            }
            (Some(IpHeader::V6(ip)), Some(transport)) => {
                let dst = Some(ip.dst());
                if (dst != self.ipv6 && dst != self.ipv6_link_local)
                    || !answers_itself(&transport, true)
                {
                    return Direct::Pass;
                }
                let src = ip.src();
                if src.is_unspecified() || src.is_multicast() {
                    return Direct::Done;
                }
                (ReplyPath::new(client_mac, src, ip.dst()), transport)
            }
            _ => return Direct::Pass,
        };
        // `answers_itself` let through only what the packet's family carries.
        match transport {
            TransportHeader::Udp(u) => {
                if !u.checksum_ok(path.client_ip, path.local_ip) {
                    return self.bad_checksum();
                }
                self.udp_query(path, u.src_port(), u.payload(), now);
                Direct::Done
            }
            TransportHeader::Icmpv4(i) => match i.echo_request() {
                Some(echo) => self.echo_direct(path, echo, i.checksum_ok(), i.payload()),
                None => Direct::Pass,
            },
            TransportHeader::Icmpv6(i) => match (i.echo_request(), path.client_ip, path.local_ip) {
                (Some(echo), IpAddr::V6(src), IpAddr::V6(dst)) => {
                    self.echo_direct(path, echo, i.checksum_ok(src, dst), i.payload())
                }
                _ => Direct::Pass,
            },
            _ => Direct::Pass,
        }
    }

    /// An echo request to the gateway, either family: answered if its
    /// checksum holds.
    fn echo_direct(
        &mut self,
        path: ReplyPath,
        echo: Echo,
        checksum_ok: bool,
        payload: &[u8],
    ) -> Direct {
        if !checksum_ok {
            return self.bad_checksum();
        }
        self.echo_reply(path, echo, payload);
        Direct::Done
    }

    /// Counts a frame to the gateway with a wrong checksum, and drops it.
    fn bad_checksum(&mut self) -> Direct {
        self.stats.frames_bad_checksum += 1;
        Direct::Done
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
    use super::testing::*;

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
        let reply = one_reply(&mut gw, &f, now);
        let pkt = SlicedPacket::from_ethernet(&reply).unwrap();
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
        let reply = one_reply(&mut gw, &f, now);
        let pkt = SlicedPacket::from_ethernet(&reply).unwrap();
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
    fn dns_on_the_service_address() {
        let now = Instant::now();
        let mut gw = gateway(vec![], now);
        let mut f = Vec::new();
        PacketBuilder::ethernet2(C_MAC, GW_MAC.0)
            .ipv4(C4.octets(), DNS_SERVICE_V4.octets(), 64)
            .udp(40000, 53)
            .write(&mut f, &dns_query(7, "web.", RecordType::A))
            .unwrap();
        let reply = one_reply(&mut gw, &f, now);
        let pkt = SlicedPacket::from_ethernet(&reply).unwrap();
        let Some(NetSlice::Ipv4(ip)) = &pkt.net else {
            panic!("not ipv4")
        };
        // Answered from the address it was asked at.
        assert_eq!(ip.header().source_addr(), DNS_SERVICE_V4);
        assert_eq!(ip.header().destination_addr(), C4);
        let Some(TransportSlice::Udp(udp)) = &pkt.transport else {
            panic!("not udp")
        };
        let msg = Message::from_vec(udp.payload()).unwrap();
        assert_eq!(msg.answers.len(), 1, "{msg:?}");
        // Other traffic to that address is not the gateway's.
        let mut f = Vec::new();
        PacketBuilder::ethernet2(C_MAC, GW_MAC.0)
            .ipv4(C4.octets(), DNS_SERVICE_V4.octets(), 64)
            .udp(40000, 5353)
            .write(&mut f, b"x")
            .unwrap();
        gw.handle_frame(&f, now);
        assert!(drain(&mut gw, now).is_empty());
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
        let reply = one_reply(&mut gw, &f, now);
        let pkt = SlicedPacket::from_ethernet(&reply).unwrap();
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
}
