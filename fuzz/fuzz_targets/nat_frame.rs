//! Fuzzes `switch::nat::Nat` with arbitrary frames from the container side,
//! valid TCP segments and UDP datagrams (so the fuzzer gets past the
//! checksums into smoltcp and the flow table), answers to the NAT's own
//! segments (so connections reach ESTABLISHED and carry data), host-side
//! calls and an advancing clock. After every step it checks:
//!
//! - every frame the NAT emits comes from the gateway MAC, goes to a
//!   container MAC, fits the MTU, and has correct IPv4, TCP and UDP
//!   checksums;
//! - no event names a connection after its `TcpClosed`, and `TcpClosed`
//!   comes once per connection;
//! - the tables stay within their limits;
//! - after `handle_timeout(now)` and draining, `poll_timeout` is not in the
//!   past (the daemon never spins);
//! - `frame_shard` names one of the shards for any bytes, and a segment's
//!   tuple's shard for every segment built (the datapath's worker choice);
//! - nothing panics.
//!
//! Input: a sequence of records, each a tag byte (low 3 bits: operation,
//! bit 3: IPv6, bits 4..7: a selector) and its operands:
//!
//! | op | operation | then |
//! | --- | --- | --- |
//! | 0 | raw frame | length (u16 LE), that many bytes |
//! | 1 | TCP segment to a destination (selector) | sport, seq, ack (LE), flags, length (u8), payload |
//! | 2 | UDP datagram (selector bit 3: ICMP echo request) to a destination | sport (u16 LE), length (u8), payload |
//! | 3 | answer the NAT's last TCP segment | flags, length (u8), payload |
//! | 4 | advance the clock and `handle_timeout` | u16 LE, in 10 ms units |
//! | 5 | host TCP call on a known connection (selector: which call) | index, length (u8) |
//! | 6 | host call: UDP or ICMP reply on a flow, or a published-port datagram | index, length (u8), payload |
//! | 7 | `inbound_tcp` from a client (selector: which client) | port (u16 LE) |
#![no_main]

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use switch::nat::{ConnId, FlowId, ListenerId, Nat, NatConfig, NatEvent, NatLimits};
use switch::offload::{self, VnetHdr};
use switch::MacAddr;

const GW_MAC: [u8; 6] = [0x02, 0x42, 0x0a, 0, 0, 1];
const C_MAC: [u8; 6] = [0x02, 0x42, 0x0a, 0, 0, 2];
const GW4: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
const C4: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
const GW6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1);
const C6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2);
const MTU: usize = 1500;

fn limits() -> NatLimits {
    NatLimits {
        max_tcp: 8,
        max_tcp_connecting: 4,
        max_udp_flows: 8,
        tcp_buffer: 2048,
        tcp_idle: Duration::from_secs(60),
        tcp_connect_timeout: Duration::from_secs(10),
        udp_idle: Duration::from_secs(5),
    }
}

/// A destination for the container's traffic: outside, or a NAT port on
/// the gateway address.
fn destination(v6: bool, selector: u8) -> IpAddr {
    match (v6, selector % 4) {
        (false, 0) => GW4.into(),
        (false, s) => Ipv4Addr::new(198, 51, 100, s).into(),
        (true, 0) => GW6.into(),
        (true, s) => Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, u16::from(s)).into(),
    }
}

fn checksum(parts: &[&[u8]]) -> u16 {
    let mut sum: u32 = 0;
    for part in parts {
        let mut chunks = part.chunks_exact(2);
        for w in &mut chunks {
            sum += u32::from(u16::from_be_bytes([w[0], w[1]]));
        }
        if let [b] = chunks.remainder() {
            sum += u32::from(*b) << 8;
        }
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An Ethernet frame from the container (`src`) to `dst` with valid IP
/// header and transport checksum around `l4` (checksum field at `csum_at`).
fn ip_frame(src: IpAddr, dst: IpAddr, proto: u8, mut l4: Vec<u8>, csum_at: usize) -> Vec<u8> {
    let mut f = Vec::with_capacity(70 + l4.len());
    f.extend_from_slice(&GW_MAC);
    f.extend_from_slice(&C_MAC);
    let len = l4.len() as u16;
    match (src, dst) {
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            f.extend_from_slice(&[0x86, 0xdd]);
            let mut pseudo = Vec::with_capacity(40);
            pseudo.extend_from_slice(&s.octets());
            pseudo.extend_from_slice(&d.octets());
            pseudo.extend_from_slice(&u32::from(len).to_be_bytes());
            pseudo.extend_from_slice(&[0, 0, 0, proto]);
            let c = checksum(&[&pseudo, &l4]);
            l4[csum_at..csum_at + 2].copy_from_slice(&c.to_be_bytes());
            f.extend_from_slice(&[0x60, 0, 0, 0]);
            f.extend_from_slice(&len.to_be_bytes());
            f.extend_from_slice(&[proto, 64]);
            f.extend_from_slice(&s.octets());
            f.extend_from_slice(&d.octets());
        }
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            f.extend_from_slice(&[0x08, 0x00]);
            let mut ip = [0u8; 20];
            ip[0] = 0x45;
            ip[2..4].copy_from_slice(&(20 + len).to_be_bytes());
            ip[8] = 64;
            ip[9] = proto;
            ip[12..16].copy_from_slice(&s.octets());
            ip[16..20].copy_from_slice(&d.octets());
            let c = checksum(&[&ip]);
            ip[10..12].copy_from_slice(&c.to_be_bytes());
            let mut pseudo = Vec::with_capacity(12);
            pseudo.extend_from_slice(&s.octets());
            pseudo.extend_from_slice(&d.octets());
            pseudo.extend_from_slice(&[0, proto]);
            pseudo.extend_from_slice(&len.to_be_bytes());
            // ICMPv4 has no pseudo-header.
            let c = if proto == 1 {
                checksum(&[&l4])
            } else {
                checksum(&[&pseudo, &l4])
            };
            l4[csum_at..csum_at + 2].copy_from_slice(&c.to_be_bytes());
            f.extend_from_slice(&ip);
        }
        _ => unreachable!("one family per frame"),
    }
    f.extend_from_slice(&l4);
    f
}

struct Segment {
    src: SocketAddr,
    dst: SocketAddr,
    seq: u32,
    ack: u32,
    flags: u8,
}

fn tcp_frame(seg: &Segment, payload: &[u8]) -> Vec<u8> {
    let mut l4 = Vec::with_capacity(20 + payload.len());
    l4.extend_from_slice(&seg.src.port().to_be_bytes());
    l4.extend_from_slice(&seg.dst.port().to_be_bytes());
    l4.extend_from_slice(&seg.seq.to_be_bytes());
    l4.extend_from_slice(&seg.ack.to_be_bytes());
    l4.extend_from_slice(&[0x50, seg.flags, 0x20, 0x00, 0, 0, 0, 0]);
    l4.extend_from_slice(payload);
    ip_frame(seg.src.ip(), seg.dst.ip(), 6, l4, 16)
}

fn udp_frame(src: SocketAddr, dst: SocketAddr, payload: &[u8]) -> Vec<u8> {
    let mut l4 = Vec::with_capacity(8 + payload.len());
    l4.extend_from_slice(&src.port().to_be_bytes());
    l4.extend_from_slice(&dst.port().to_be_bytes());
    l4.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    l4.extend_from_slice(&[0, 0]);
    l4.extend_from_slice(payload);
    ip_frame(src.ip(), dst.ip(), 17, l4, 6)
}

/// An echo request with identifier `src.port()`.
fn echo_frame(src: SocketAddr, dst: IpAddr, payload: &[u8]) -> Vec<u8> {
    let (kind, proto) = if src.is_ipv4() { (8, 1) } else { (128, 58) };
    let mut l4 = vec![kind, 0, 0, 0];
    l4.extend_from_slice(&src.port().to_be_bytes());
    l4.extend_from_slice(&[0, 1]);
    l4.extend_from_slice(payload);
    ip_frame(src.ip(), dst, proto, l4, 2)
}

/// Checks a frame from the NAT; returns the TCP segment in it, if any, as
/// the container would answer it (addresses swapped).
fn check_frame(frame: &[u8]) -> Option<(Segment, usize)> {
    assert!(frame.len() <= MTU + 14, "frame of {} bytes", frame.len());
    assert_eq!(&frame[6..12], &GW_MAC, "frame not from the gateway MAC");
    assert_eq!(&frame[..6], &C_MAC, "frame not to the container");
    let ip = &frame[14..];
    let (src, dst, proto, l4): (IpAddr, IpAddr, u8, &[u8]) =
        match u16::from_be_bytes([frame[12], frame[13]]) {
            0x0800 => {
                assert_eq!(checksum(&[&ip[..20]]), 0, "IPv4 header checksum");
                let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
                let s: [u8; 4] = ip[12..16].try_into().unwrap();
                let d: [u8; 4] = ip[16..20].try_into().unwrap();
                (s.into(), d.into(), ip[9], &ip[20..total])
            }
            0x86dd => {
                let len = usize::from(u16::from_be_bytes([ip[4], ip[5]]));
                let s: [u8; 16] = ip[8..24].try_into().unwrap();
                let d: [u8; 16] = ip[24..40].try_into().unwrap();
                (s.into(), d.into(), ip[6], &ip[40..40 + len])
            }
            other => panic!("ethertype {other:#x}"),
        };
    let len = l4.len() as u32;
    let pseudo: Vec<u8> = match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => [
            &s.octets()[..],
            &d.octets(),
            &[0, proto],
            &(len as u16).to_be_bytes(),
        ]
        .concat(),
        (IpAddr::V6(s), IpAddr::V6(d)) => [
            &s.octets()[..],
            &d.octets(),
            &len.to_be_bytes(),
            &[0, 0, 0, proto],
        ]
        .concat(),
        _ => panic!("mixed families"),
    };
    let sum = if proto == 1 {
        checksum(&[l4])
    } else {
        checksum(&[&pseudo, l4])
    };
    assert_eq!(sum, 0, "transport checksum (proto {proto})");
    if proto != 6 {
        return None;
    }
    let port = |at: usize| u16::from_be_bytes([l4[at], l4[at + 1]]);
    let word = |at: usize| u32::from_be_bytes([l4[at], l4[at + 1], l4[at + 2], l4[at + 3]]);
    let header = usize::from(l4[12] >> 4) * 4;
    let flags = l4[13];
    let payload = l4.len() - header;
    let consumed = payload as u32 + u32::from(flags & 0x03 != 0); // SYN or FIN
    let seg = Segment {
        src: SocketAddr::new(dst, port(2)),
        dst: SocketAddr::new(src, port(0)),
        seq: word(8),
        ack: word(4).wrapping_add(consumed),
        flags,
    };
    Some((seg, payload))
}

struct Input<'a>(&'a [u8]);

impl<'a> Input<'a> {
    fn byte(&mut self) -> u8 {
        let Some((&b, rest)) = self.0.split_first() else {
            return 0;
        };
        self.0 = rest;
        b
    }
    fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.byte(), self.byte()])
    }
    fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.byte(), self.byte(), self.byte(), self.byte()])
    }
    fn bytes(&mut self, n: usize) -> &'a [u8] {
        let n = n.min(self.0.len());
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        head
    }
}

struct Harness {
    nat: Nat,
    now: Instant,
    conns: Vec<ConnId>,
    closed: HashSet<ConnId>,
    flows: Vec<FlowId>,
    last_segment: Option<Segment>,
    buf: Vec<u8>,
    segs: Vec<u8>,
}

impl Harness {
    fn drain(&mut self) {
        for _ in 0..10_000 {
            let Some((n, hdr)) = self.nat.poll_transmit(self.now, &mut self.buf) else {
                break;
            };
            // As the container's kernel: cut a super-frame at the MSS and
            // complete a partial checksum; the header must be consistent.
            let segs = offload::segment(&hdr, &self.buf[..n], 0, &mut self.segs)
                .expect("the NAT's offload header is consistent");
            for i in 0..segs.count {
                let f = segs.frame(&self.segs, 0, i).expect("a segment");
                if let Some((seg, _)) = check_frame(f) {
                    self.last_segment = Some(seg);
                }
            }
        }
        while let Some(e) = self.nat.poll_event() {
            let id = match e {
                NatEvent::EgressTcpConnect { id, .. } => {
                    assert!(!self.conns.contains(&id), "connection announced twice");
                    self.conns.push(id);
                    Some(id)
                }
                NatEvent::TcpReadable(id) | NatEvent::TcpWritable(id) | NatEvent::TcpFin(id) => {
                    Some(id)
                }
                NatEvent::TcpClosed { id, .. } => {
                    assert!(self.closed.insert(id), "TcpClosed twice for {id:?}");
                    None
                }
                NatEvent::UdpFlowOpened { flow, .. } => {
                    self.flows.push(flow);
                    None
                }
                NatEvent::IcmpFlowOpened { flow, .. } => {
                    self.flows.push(flow);
                    None
                }
                NatEvent::UdpFlowClosed(_) | NatEvent::IcmpFlowClosed(_) => None,
            };
            if let Some(id) = id {
                assert!(!self.closed.contains(&id), "event {e:?} after TcpClosed");
            }
        }
        while let Some(d) = self.nat.poll_datagram(&mut self.buf) {
            assert!(d.len <= self.buf.len());
        }
        let s = self.nat.stats();
        assert!(s.tcp_active <= limits().max_tcp as u64, "{s:?}");
        assert!(
            s.udp_active + s.icmp_active <= limits().max_udp_flows as u64,
            "{s:?}"
        );
    }

    fn pick_conn(&self, index: u8) -> ConnId {
        match self.conns.len() {
            0 => ConnId(u64::from(index)),
            n => self.conns[usize::from(index) % n],
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let start = Instant::now();
    let config = NatConfig {
        gateway_mac: MacAddr(GW_MAC),
        ipv4: Some((GW4, 24)),
        ipv6: Some((GW6, 64)),
        mtu: MTU,
        egress: data.first().is_none_or(|b| b & 0x80 == 0),
        limits: limits(),
        random_seed: 1,
        shard: switch::nat::Shard::WHOLE,
    };
    let mut h = Harness {
        nat: Nat::new(config, start).expect("valid config"),
        now: start,
        conns: Vec::new(),
        closed: HashSet::new(),
        flows: Vec::new(),
        last_segment: None,
        buf: vec![0u8; 65536],
        segs: vec![0u8; 2 * 65536],
    };
    let mut input = Input(data);
    for _ in 0..256 {
        if input.0.is_empty() {
            break;
        }
        let tag = input.byte();
        let v6 = tag & 0x08 != 0;
        let selector = tag >> 4;
        let container: IpAddr = if v6 { C6.into() } else { C4.into() };
        match tag & 7 {
            0 => {
                // Any offload header a TAP could write, then any bytes.
                let hdr = VnetHdr::parse(input.bytes(VnetHdr::LEN)).unwrap_or(VnetHdr::NONE);
                let n = usize::from(input.u16());
                let frame = input.bytes(n);
                // Which worker's shard a frame goes to: any bytes, any
                // number of shards, always one of them.
                let shards = 1 + usize::from(selector);
                assert!(switch::nat::frame_shard(frame, shards) < shards);
                h.nat.handle_frame(&hdr, frame, h.now);
            }
            1 => {
                let seg = Segment {
                    src: SocketAddr::new(container, input.u16().max(1)),
                    dst: SocketAddr::new(destination(v6, selector), 49152 | input.u16()),
                    seq: input.u32(),
                    ack: input.u32(),
                    flags: input.byte(),
                };
                let n = usize::from(input.byte());
                let frame = tcp_frame(&seg, input.bytes(n));
                // Half of them as a TSO super-frame with a partial checksum.
                let hdr = if selector & 1 == 0 {
                    VnetHdr::NONE
                } else {
                    VnetHdr {
                        flags: offload::flags::NEEDS_CSUM,
                        gso_type: if v6 { offload::gso::TCPV6 } else { offload::gso::TCPV4 },
                        hdr_len: 0,
                        gso_size: input.u16(),
                        csum_start: if v6 { 54 } else { 34 },
                        csum_offset: 16,
                    }
                };
                // The frames of one connection all go to one shard, its
                // tuple's.
                let owner = switch::nat::tcp_shard(seg.src, seg.dst, 8);
                assert_eq!(switch::nat::frame_shard(&frame, 8), owner);
                h.nat.handle_frame(&hdr, &frame, h.now);
            }
            2 => {
                let src = SocketAddr::new(container, input.u16().max(1));
                let dst = SocketAddr::new(destination(v6, selector), 49152 | u16::from(selector));
                let n = usize::from(input.byte());
                let payload = input.bytes(n);
                let frame = if selector & 8 == 0 {
                    udp_frame(src, dst, payload)
                } else {
                    echo_frame(src, dst.ip(), payload)
                };
                h.nat.handle_frame(&VnetHdr::NONE, &frame, h.now);
            }
            3 => {
                let flags = input.byte();
                let n = usize::from(input.byte());
                let payload = input.bytes(n);
                if let Some(mut seg) = h.last_segment.take() {
                    seg.flags = flags;
                    h.nat.handle_frame(&VnetHdr::NONE, &tcp_frame(&seg, payload), h.now);
                }
            }
            4 => {
                let step = input.u16();
                h.now += Duration::from_millis(10 * u64::from(step));
                h.nat.handle_timeout(h.now);
                h.drain();
                if let Some(t) = h.nat.poll_timeout(h.now) {
                    assert!(t > h.now, "timer in the past after handle_timeout");
                }
            }
            5 => {
                let id = h.pick_conn(input.byte());
                let n = usize::from(input.byte());
                match selector % 7 {
                    0 => h.nat.egress_connected(id, true, h.now),
                    1 => h.nat.egress_connected(id, false, h.now),
                    2 => {
                        let data = vec![0x5a; n * 16];
                        let taken = if selector & 8 == 0 {
                            h.nat.tcp_write(id, &data, h.now)
                        } else {
                            // In place, as from a host socket: what `fill`
                            // is given is never empty, and what it says it
                            // wrote is what is taken.
                            let mut off = 0;
                            let taken = h.nat.tcp_write_with(id, h.now, |room| {
                                assert!(!room.is_empty());
                                let k = (data.len() - off).min(room.len());
                                room[..k].copy_from_slice(&data[off..off + k]);
                                off += k;
                                k
                            });
                            assert_eq!(taken, off);
                            taken
                        };
                        assert!(taken <= data.len());
                    }
                    3 => {
                        let mut out = vec![0u8; n * 16];
                        let got = h.nat.tcp_read(id, &mut out, h.now);
                        assert!(got <= out.len());
                    }
                    4 => {
                        let peeked = h.nat.tcp_peek(id).len();
                        h.nat.tcp_consume(id, n.min(peeked), h.now);
                    }
                    5 => h.nat.tcp_host_closed(id, h.now),
                    _ => h.nat.tcp_abort(id, h.now),
                }
            }
            6 => {
                let index = usize::from(input.byte());
                let n = usize::from(input.byte());
                let payload = input.bytes(n);
                let flow = match h.flows.len() {
                    0 => FlowId(index as u64),
                    len => h.flows[index % len],
                };
                let from = destination(v6, selector >> 2);
                if selector & 3 == 0 {
                    h.nat
                        .udp_reply(flow, SocketAddr::new(from, 53), payload, h.now);
                } else if selector & 3 == 2 {
                    h.nat.icmp_reply(flow, from, payload, h.now);
                } else {
                    let client = client(v6, selector >> 1, index as u16);
                    let _ = h.nat.inbound_udp(
                        ListenerId(u64::from(selector >> 2)),
                        client,
                        SocketAddr::new(container, 53),
                        MacAddr(C_MAC),
                        payload,
                        h.now,
                    );
                }
            }
            _ => {
                let port = input.u16();
                let client = client(v6, selector, port);
                if let Ok(id) = h.nat.inbound_tcp(
                    client,
                    SocketAddr::new(container, 80),
                    MacAddr(C_MAC),
                    h.now,
                ) {
                    assert!(!h.conns.contains(&id));
                    h.conns.push(id);
                }
            }
        }
        h.drain();
    }
    let _ = h.nat.stats();
});

/// A published-port client: real, loopback, or of the other family.
fn client(v6: bool, selector: u8, port: u16) -> SocketAddr {
    let ip: IpAddr = match (v6, selector % 4) {
        (_, 0) => Ipv4Addr::LOCALHOST.into(),
        (_, 1) => Ipv6Addr::LOCALHOST.into(),
        (false, _) => Ipv4Addr::new(203, 0, 113, selector).into(),
        (true, _) => Ipv6Addr::new(0x2001, 0xdb8, 0xff, 0, 0, 0, 0, u16::from(selector)).into(),
    };
    SocketAddr::new(ip, port)
}
