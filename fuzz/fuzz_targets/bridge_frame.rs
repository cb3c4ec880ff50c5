//! Fuzzes `switch::bridge::Bridge::process` with arbitrary frames on
//! arbitrary ports, an advancing clock, aging, port replugging and static
//! MACs, and checks the switch's invariants after every step:
//!
//! - a frame is never forwarded to a port of another network, nor to its
//!   ingress port; floods stay in the ingress port's network;
//! - only frames from unknown ports are dropped as `UnknownPort`;
//! - every drop is counted exactly once;
//! - a secured port's accepted frames carry its own source MAC;
//! - learned entries stay within the table bounds;
//! - after `handle_timeout(now)`, `poll_timeout()` is in the future.
//!
//! Input: a sequence of records, each starting with a tag byte whose low 3
//! bits select the operation and whose high 5 bits select the port:
//!
//! | op | operation | then |
//! | --- | --- | --- |
//! | 0, 1 | raw frame | length (u16 LE), that many bytes |
//! | 2, 3 | templated frame | kind, destination, patch count, (offset, xor) pairs |
//! | 4 | advance clock | u16 LE, in 10 ms units |
//! | 5 | `handle_timeout` | |
//! | 6 | remove and re-add the port | |
//! | 7 | static MAC on the port | MAC selector |
//!
//! Templated frames are valid frames from the port's own identity (ARP,
//! IPv4, IPv6, neighbour discovery), lightly mutated, so the fuzzer reaches
//! the port security checks behind the source MAC check.
#![no_main]

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV4, SocketAddrV6};
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use switch::bridge::{Action, Bridge, BridgeConfig, DropReason, PortSecurity};
use switch::wire::{
    build_arp_reply, build_arp_request, build_ipv4_udp, build_ipv6_udp, build_neighbor_advert,
    build_neighbor_solicit, build_router_advert, EthernetFrame, Ipv6Endpoints,
};
use switch::{MacAddr, NetworkId, PortId};

const NET_A: NetworkId = NetworkId(10);
const NET_B: NetworkId = NetworkId(20);
/// Port ids the input can name; 99 is never attached.
const PORT_IDS: [u32; 7] = [1, 2, 3, 4, 5, 6, 99];
const MAX_PER_NETWORK: usize = 8;
const MAX_PER_PORT: usize = 4;

fn mac(n: u8) -> MacAddr {
    MacAddr([0x02, 0, 0, 0, 0, n])
}

fn ipv4(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 0, 0, n)
}

fn ipv6(n: u8) -> Ipv6Addr {
    Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, u16::from(n))
}

/// Port `p`'s own identity: MAC, IPv4 and IPv6 address.
fn security(p: u32) -> PortSecurity {
    let n = p as u8;
    PortSecurity {
        mac: mac(n),
        ipv4: vec![ipv4(n)],
        ipv6: vec![ipv6(n)],
    }
}

/// Network A: ports 1, 2 secured, 3 trusted. Network B: 4 secured, 5, 6
/// trusted.
fn attachment(p: u32) -> (NetworkId, Option<PortSecurity>) {
    match p {
        1 | 2 => (NET_A, Some(security(p))),
        3 => (NET_A, None),
        4 => (NET_B, Some(security(p))),
        _ => (NET_B, None),
    }
}

fn new_bridge() -> Bridge {
    let mut bridge = Bridge::new(BridgeConfig {
        aging: Duration::from_secs(30),
        fdb_max_per_network: MAX_PER_NETWORK,
        fdb_max_per_port: MAX_PER_PORT,
    });
    bridge.add_network(NET_A).unwrap();
    bridge.add_network(NET_B).unwrap();
    for p in 1..=6 {
        let (network, security) = attachment(p);
        bridge.add_port(PortId(p), network, security).unwrap();
    }
    bridge
}

fn dst_mac(selector: u8) -> MacAddr {
    match selector % 4 {
        0 => MacAddr::BROADCAST,
        1 => mac(1 + (selector >> 2) % 6),
        2 => MacAddr([0x33, 0x33, 0, 0, 0, selector]),
        _ => MacAddr([0x02, 0, 0, 0, 1, selector]),
    }
}

/// A valid frame of `kind` from port `p`'s identity to `dst`.
fn template(p: u32, kind: u8, dst: MacAddr) -> Vec<u8> {
    let n = p as u8;
    let (src, v4, v6) = (mac(n), ipv4(n), ipv6(n));
    let v6_endpoints = Ipv6Endpoints {
        src_mac: src,
        dst_mac: dst,
        src_ip: v6,
        dst_ip: ipv6(n.wrapping_add(1)),
    };
    match kind % 8 {
        0 => build_ipv4_udp(
            src,
            dst,
            SocketAddrV4::new(v4, 1000),
            SocketAddrV4::new(ipv4(n.wrapping_add(1)), 53),
            &[0; 18],
        ),
        1 => build_arp_request(src, v4, ipv4(n.wrapping_add(1))),
        2 => build_arp_reply(src, v4, dst, ipv4(n.wrapping_add(1))),
        3 => build_ipv6_udp(
            src,
            dst,
            SocketAddrV6::new(v6, 1000, 0, 0),
            SocketAddrV6::new(ipv6(n.wrapping_add(1)), 53, 0, 0),
            &[0; 8],
        ),
        4 => build_neighbor_solicit(src, v6, ipv6(n.wrapping_add(1))),
        5 => build_neighbor_solicit(src, Ipv6Addr::UNSPECIFIED, v6),
        6 => build_neighbor_advert(v6_endpoints, v6, Some(src)),
        _ => build_router_advert(src, Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1)),
    }
}

/// Reads the input front to back; `None` once it runs out.
struct Input<'a>(&'a [u8]);

impl<'a> Input<'a> {
    fn byte(&mut self) -> Option<u8> {
        let (first, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(*first)
    }

    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_le_bytes([self.byte()?, self.byte()?]))
    }

    fn bytes(&mut self, len: usize) -> &'a [u8] {
        let (taken, rest) = self.0.split_at(len.min(self.0.len()));
        self.0 = rest;
        taken
    }
}

fn check_frame(bridge: &mut Bridge, port: PortId, frame: &[u8], now: Instant) {
    let network = bridge.network_of(port);
    let drops_before = bridge.drops().total();
    let port_drops_before = bridge.port_drops(port);
    let action = bridge.process(port, frame, now);
    match action {
        Action::Forward(out) => {
            assert_ne!(out, port, "forwarded to the ingress port");
            assert!(network.is_some(), "forwarded from an unknown port");
            assert_eq!(bridge.network_of(out), network, "forwarded across networks");
            assert!(bridge.ports(network.unwrap()).contains(&out));
        }
        Action::Flood {
            network: flooded,
            except,
        } => {
            assert_eq!(Some(flooded), network, "flooded into another network");
            assert_eq!(except, port);
        }
        Action::Drop(reason) => {
            assert_eq!(reason == DropReason::UnknownPort, network.is_none());
            assert_eq!(bridge.drops().total(), drops_before + 1);
            if network.is_some() {
                assert_eq!(bridge.port_drops(port), port_drops_before + 1);
            }
        }
    }
    if !matches!(action, Action::Drop(_)) {
        assert_eq!(bridge.drops().total(), drops_before);
        if let Some(sec) = bridge.port_security(port) {
            let src = EthernetFrame::new_checked(frame).unwrap().src();
            assert_eq!(src, sec.mac, "a secured port sent from another MAC");
        }
    }
}

fn check_bounds(bridge: &Bridge) {
    for network in [NET_A, NET_B] {
        let learned: Vec<_> = bridge
            .fdb_entries(network)
            .filter(|e| e.last_seen.is_some())
            .collect();
        assert!(learned.len() <= MAX_PER_NETWORK);
        for p in bridge.ports(network) {
            assert!(learned.iter().filter(|e| e.port == *p).count() <= MAX_PER_PORT);
        }
        for e in bridge.fdb_entries(network) {
            assert_eq!(
                bridge.network_of(e.port),
                Some(network),
                "entry for a foreign port"
            );
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let mut bridge = new_bridge();
    let mut now = Instant::now();
    let mut input = Input(data);
    // Bounded by the input: every record consumes at least one byte.
    while let Some(tag) = input.byte() {
        let p = PORT_IDS[usize::from(tag >> 3) % PORT_IDS.len()];
        let port = PortId(p);
        match tag & 0x07 {
            0 | 1 => {
                let Some(len) = input.u16() else { break };
                let frame = input.bytes(usize::from(len) % 2048);
                check_frame(&mut bridge, port, frame, now);
            }
            2 | 3 => {
                let (Some(kind), Some(dst), Some(patches)) =
                    (input.byte(), input.byte(), input.byte())
                else {
                    break;
                };
                let mut frame = template(p, kind, dst_mac(dst));
                for _ in 0..patches % 8 {
                    let (Some(offset), Some(value)) = (input.byte(), input.byte()) else {
                        break;
                    };
                    let i = usize::from(offset) % frame.len();
                    frame[i] ^= value;
                }
                check_frame(&mut bridge, port, &frame, now);
            }
            4 => {
                let Some(ticks) = input.u16() else { break };
                now += Duration::from_millis(u64::from(ticks) * 10);
            }
            5 => {
                bridge.handle_timeout(now);
                if let Some(next) = bridge.poll_timeout() {
                    assert!(next > now, "timer due right after handling it");
                }
            }
            6 => {
                if p == 99 {
                    assert!(!bridge.remove_port(port));
                    continue;
                }
                assert!(bridge.remove_port(port));
                for network in [NET_A, NET_B] {
                    assert!(bridge.fdb_entries(network).all(|e| e.port != port));
                    assert!(!bridge.ports(network).contains(&port));
                }
                let (network, security) = attachment(p);
                bridge.add_port(port, network, security).unwrap();
            }
            _ => {
                let Some(selector) = input.byte() else { break };
                let mac = dst_mac(selector);
                let result = match bridge.network_of(port) {
                    Some(network) => bridge.set_static_mac(network, mac, port),
                    None => continue,
                };
                assert_eq!(result.is_ok(), !mac.is_multicast());
            }
        }
        check_bounds(&bridge);
    }
});
