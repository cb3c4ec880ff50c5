//! Fuzzes `switch::gateway::Gateway` with arbitrary frames, upstream
//! datagrams and an advancing clock, and checks after every step:
//!
//! - every frame the gateway emits comes from its own MAC and fits the MTU;
//! - every upstream datagram goes to a configured upstream and is a query;
//! - after `handle_timeout(now)` and draining, `poll_timeout` is not in the
//!   past (the daemon never spins);
//! - nothing panics.
//!
//! Input: a sequence of records, each a tag byte (low 3 bits: operation)
//! and its operands:
//!
//! | op | operation | then |
//! | --- | --- | --- |
//! | 0 | raw frame | length (u16 LE), that many bytes |
//! | 1 | UDP query frame to port 53 (IPv4 or IPv6 by tag bit 3) | length (u16 LE), DNS payload |
//! | 2 | datagram from an upstream (tag bit 3 selects which) | length (u16 LE), bytes |
//! | 3 | answer the last upstream query (QR set, then patched) | offset, xor |
//! | 4 | advance the clock and `handle_timeout` | u16 LE, in 10 ms units |
//! | 5 | ICMP echo request (IPv4 or IPv6 by tag bit 3) | length (u8), payload |
//! | 6 | TCP SYN to port 53 | source port (u16 LE) |
//! | 7 | replace the upstream list (tag bits 3..4: how many) | |
#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use switch::dns::{DnsEntry, Zone};
use switch::gateway::{Gateway, GatewayConfig};
use switch::MacAddr;

const GW_MAC: [u8; 6] = [0x02, 0x42, 0x0a, 0, 0, 1];
const C_MAC: [u8; 6] = [0x02, 0x42, 0x0a, 0, 0, 2];
const GW4: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
const C4: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
const GW6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1);
const C6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2);
const MTU: usize = 1500;

fn upstreams(n: usize) -> Vec<SocketAddr> {
    (1..=n as u8)
        .map(|i| SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, i)), 53))
        .collect()
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

/// An Ethernet frame from the client to the gateway with a valid IP header
/// and transport checksum around `l4` (whose checksum field is at
/// `csum_at`).
fn ip_frame(v6: bool, proto: u8, mut l4: Vec<u8>, csum_at: usize) -> Vec<u8> {
    let mut f = Vec::with_capacity(70 + l4.len());
    f.extend_from_slice(&GW_MAC);
    f.extend_from_slice(&C_MAC);
    let len = l4.len() as u16;
    if v6 {
        f.extend_from_slice(&[0x86, 0xdd]);
        let mut pseudo = Vec::with_capacity(40);
        pseudo.extend_from_slice(&C6.octets());
        pseudo.extend_from_slice(&GW6.octets());
        pseudo.extend_from_slice(&u32::from(len).to_be_bytes());
        pseudo.extend_from_slice(&[0, 0, 0, proto]);
        let c = checksum(&[&pseudo, &l4]);
        l4[csum_at..csum_at + 2].copy_from_slice(&c.to_be_bytes());
        f.extend_from_slice(&[0x60, 0, 0, 0]);
        f.extend_from_slice(&len.to_be_bytes());
        f.extend_from_slice(&[proto, 64]);
        f.extend_from_slice(&C6.octets());
        f.extend_from_slice(&GW6.octets());
    } else {
        f.extend_from_slice(&[0x08, 0x00]);
        let mut ip = [0u8; 20];
        ip[0] = 0x45;
        ip[2..4].copy_from_slice(&(20 + len).to_be_bytes());
        ip[8] = 64;
        ip[9] = proto;
        ip[12..16].copy_from_slice(&C4.octets());
        ip[16..20].copy_from_slice(&GW4.octets());
        let c = checksum(&[&ip]);
        ip[10..12].copy_from_slice(&c.to_be_bytes());
        let mut pseudo = Vec::with_capacity(12);
        pseudo.extend_from_slice(&C4.octets());
        pseudo.extend_from_slice(&GW4.octets());
        pseudo.extend_from_slice(&[0, proto]);
        pseudo.extend_from_slice(&len.to_be_bytes());
        let c = if proto == 1 {
            checksum(&[&l4])
        } else {
            checksum(&[&pseudo, &l4])
        };
        l4[csum_at..csum_at + 2].copy_from_slice(&c.to_be_bytes());
        f.extend_from_slice(&ip);
    }
    f.extend_from_slice(&l4);
    f
}

fn udp_frame(v6: bool, payload: &[u8]) -> Vec<u8> {
    let mut l4 = Vec::with_capacity(8 + payload.len());
    l4.extend_from_slice(&40000u16.to_be_bytes());
    l4.extend_from_slice(&53u16.to_be_bytes());
    l4.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    l4.extend_from_slice(&[0, 0]);
    l4.extend_from_slice(payload);
    ip_frame(v6, 17, l4, 6)
}

fn echo_frame(v6: bool, payload: &[u8]) -> Vec<u8> {
    let mut l4 = vec![if v6 { 128 } else { 8 }, 0, 0, 0, 0, 7, 0, 1];
    l4.extend_from_slice(payload);
    ip_frame(v6, if v6 { 58 } else { 1 }, l4, 2)
}

fn syn_frame(port: u16) -> Vec<u8> {
    let mut l4 = Vec::with_capacity(20);
    l4.extend_from_slice(&port.to_be_bytes());
    l4.extend_from_slice(&53u16.to_be_bytes());
    l4.extend_from_slice(&1u32.to_be_bytes());
    l4.extend_from_slice(&0u32.to_be_bytes());
    l4.extend_from_slice(&[0x50, 0x02, 0xff, 0xff, 0, 0, 0, 0]);
    ip_frame(false, 6, l4, 16)
}

struct Input<'a>(&'a [u8]);

impl<'a> Input<'a> {
    fn byte(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }
    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_le_bytes([self.byte()?, self.byte()?]))
    }
    fn bytes(&mut self, n: usize) -> &'a [u8] {
        let n = n.min(self.0.len());
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        head
    }
}

struct Harness {
    gw: Gateway,
    now: Instant,
    upstreams: Vec<SocketAddr>,
    last_upstream: Option<(SocketAddr, Vec<u8>)>,
    buf: Vec<u8>,
}

impl Harness {
    fn drain(&mut self) {
        for _ in 0..10_000 {
            let Some(n) = self.gw.poll_transmit(self.now, &mut self.buf) else {
                break;
            };
            assert!(n <= MTU + 14, "frame of {n} bytes");
            assert_eq!(&self.buf[6..12], &GW_MAC, "frame not from the gateway");
        }
        for _ in 0..10_000 {
            let Some((to, n)) = self.gw.poll_upstream(&mut self.buf) else {
                break;
            };
            assert!(self.upstreams.contains(&to) || upstreams(3).contains(&to));
            assert!(
                n >= 12 && self.buf[2] & 0x80 == 0,
                "upstream datagram not a query"
            );
            self.last_upstream = Some((to, self.buf[..n].to_vec()));
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let start = Instant::now();
    let zone = Zone::new([
        DnsEntry {
            name: "web".into(),
            aliases: vec!["pool".into()],
            addrs: vec!["10.0.0.5".parse().unwrap(), "fd00::5".parse().unwrap()],
        },
        DnsEntry {
            name: "db".into(),
            aliases: vec!["pool".into()],
            addrs: vec!["10.0.0.6".parse().unwrap()],
        },
    ]);
    let config = GatewayConfig {
        mac: MacAddr(GW_MAC),
        ipv4: Some((GW4, 24)),
        ipv6: Some((GW6, 64)),
        mtu: MTU,
        zone: zone.into_shared(),
        upstreams: upstreams(2),
        upstream_timeout: Duration::from_secs(2),
        random_seed: 1,
    };
    let mut h = Harness {
        gw: Gateway::new(config, start).expect("valid config"),
        now: start,
        upstreams: upstreams(2),
        last_upstream: None,
        buf: vec![0u8; 65536],
    };
    let mut input = Input(data);
    for _ in 0..256 {
        let Some(tag) = input.byte() else { break };
        let v6 = tag & 0x08 != 0;
        match tag & 7 {
            0 => {
                let n = usize::from(input.u16().unwrap_or(0));
                let frame = input.bytes(n);
                h.gw.handle_frame(frame, h.now);
            }
            1 => {
                let n = usize::from(input.u16().unwrap_or(0));
                let frame = udp_frame(v6, input.bytes(n.min(1400)));
                h.gw.handle_frame(&frame, h.now);
            }
            2 => {
                let n = usize::from(input.u16().unwrap_or(0));
                let from = upstreams(3)[usize::from(tag >> 3) % 3];
                h.gw.handle_upstream(from, input.bytes(n), h.now);
            }
            3 => {
                let (Some(at), Some(xor)) = (input.byte(), input.byte()) else {
                    break;
                };
                if let Some((from, mut reply)) = h.last_upstream.clone() {
                    reply[2] |= 0x80;
                    let i = usize::from(at) % reply.len();
                    if i != 2 {
                        reply[i] ^= xor;
                    }
                    h.gw.handle_upstream(from, &reply, h.now);
                }
            }
            4 => {
                let step = input.u16().unwrap_or(0);
                h.now += Duration::from_millis(10 * u64::from(step));
                h.gw.handle_timeout(h.now);
                h.drain();
                if let Some(t) = h.gw.poll_timeout(h.now) {
                    assert!(t > h.now, "timer in the past after handle_timeout");
                }
            }
            5 => {
                let n = usize::from(input.byte().unwrap_or(0));
                let frame = echo_frame(v6, input.bytes(n));
                h.gw.handle_frame(&frame, h.now);
            }
            6 => {
                let port = input.u16().unwrap_or(1).max(1);
                h.gw.handle_frame(&syn_frame(port), h.now);
            }
            _ => {
                h.upstreams = upstreams(usize::from((tag >> 3) & 3));
                h.gw.set_upstreams(h.upstreams.clone());
            }
        }
        h.drain();
    }
    let _ = h.gw.stats();
});
