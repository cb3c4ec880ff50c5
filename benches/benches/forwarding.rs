//! Forwarding decisions per second of the switching core
//! (`switch::bridge::Bridge::process`) on 64-byte frames (60 bytes as a TAP
//! device hands them over, plus the 4-byte FCS on the wire) with a warm
//! forwarding database.
//!
//! Each iteration decides a batch of [`BATCH`] frames; throughput is reported
//! in frames (`Throughput::Elements`), so criterion prints decisions/s.
//!
//! Run: `cargo bench -p vswitch-benches --bench forwarding`.

use std::hint::black_box;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV4, SocketAddrV6};
use std::time::Instant;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use switch::bridge::{Action, Bridge, BridgeConfig, PortSecurity};
use switch::wire::{build_arp_request, build_ipv4_udp, build_ipv6_udp};
use switch::{MacAddr, NetworkId, PortId};

/// Frames decided per iteration.
const BATCH: usize = 1024;
/// Ports in the benchmark network.
const PORTS: u32 = 32;
/// UDP payload that makes a 60-byte IPv4 frame (14 + 20 + 8 + 18).
const PAYLOAD_V4: usize = 18;

const NET: NetworkId = NetworkId(1);

fn port_mac(port: u32) -> MacAddr {
    let b = port.to_be_bytes();
    MacAddr([0x02, 0x42, b[0], b[1], b[2], b[3]])
}

fn port_ipv4(port: u32) -> Ipv4Addr {
    Ipv4Addr::from(0x0a00_0000 + port)
}

fn port_ipv6(port: u32) -> Ipv6Addr {
    Ipv6Addr::from(0xfd00_u128 << 112 | u128::from(port))
}

/// One network of `PORTS` ports, secured or trusted, each port's station
/// already learned.
fn warm_bridge(secured: bool) -> (Bridge, Instant) {
    let now = Instant::now();
    let mut bridge = Bridge::new(BridgeConfig::default());
    bridge.add_network(NET).expect("fresh bridge");
    for p in 0..PORTS {
        let security = secured.then(|| PortSecurity {
            mac: port_mac(p),
            ipv4: vec![port_ipv4(p)],
            ipv6: vec![port_ipv6(p)],
        });
        bridge
            .add_port(PortId(p), NET, security)
            .expect("fresh port");
    }
    for p in 0..PORTS {
        let arp = build_arp_request(port_mac(p), port_ipv4(p), port_ipv4((p + 1) % PORTS));
        assert!(matches!(
            bridge.process(PortId(p), &arp, now),
            Action::Flood { .. }
        ));
    }
    (bridge, now)
}

/// `BATCH` IPv4/UDP frames between the ports' stations, each to a station
/// on another port.
fn unicast_v4_frames() -> Batch {
    (0..BATCH as u32)
        .map(|i| {
            let src = i % PORTS;
            let dst = (src + 1 + i / PORTS % (PORTS - 1)) % PORTS;
            let frame = build_ipv4_udp(
                port_mac(src),
                port_mac(dst),
                SocketAddrV4::new(port_ipv4(src), 40000),
                SocketAddrV4::new(port_ipv4(dst), 5201),
                &[0; PAYLOAD_V4],
            );
            assert_eq!(frame.len(), 60);
            (PortId(src), frame)
        })
        .collect()
}

fn unicast_v6_frames() -> Batch {
    (0..BATCH as u32)
        .map(|i| {
            let src = i % PORTS;
            let dst = (src + 1 + i / PORTS % (PORTS - 1)) % PORTS;
            // IPv6 headers are 40 bytes, so the smallest UDP frame is 62.
            let frame = build_ipv6_udp(
                port_mac(src),
                port_mac(dst),
                SocketAddrV6::new(port_ipv6(src), 40000, 0, 0),
                SocketAddrV6::new(port_ipv6(dst), 5201, 0, 0),
                &[],
            );
            (PortId(src), frame)
        })
        .collect()
}

fn broadcast_arp_frames() -> Batch {
    (0..BATCH as u32)
        .map(|i| {
            let src = i % PORTS;
            let frame = build_arp_request(port_mac(src), port_ipv4(src), port_ipv4(src + 1));
            (PortId(src), frame)
        })
        .collect()
}

fn run_batch(bridge: &mut Bridge, frames: &[(PortId, Vec<u8>)], now: Instant) {
    for (port, frame) in frames {
        black_box(bridge.process(*port, black_box(frame), now));
    }
}

fn check(bridge: &mut Bridge, frames: &[(PortId, Vec<u8>)], now: Instant, flood: bool) {
    for (port, frame) in frames {
        let action = bridge.process(*port, frame, now);
        match action {
            Action::Forward(_) if !flood => {}
            Action::Flood { .. } if flood => {}
            other => panic!("benchmark frame decided {other:?}"),
        }
    }
}

/// Frames with their ingress ports.
type Batch = Vec<(PortId, Vec<u8>)>;

/// One scenario on a network of `PORTS` ports.
struct Case {
    name: &'static str,
    secured: bool,
    frames: Batch,
    expect_flood: bool,
}

fn forwarding(c: &mut Criterion) {
    let mut group = c.benchmark_group("forwarding");
    group.throughput(Throughput::Elements(BATCH as u64));

    let cases = [
        Case {
            name: "unicast_known_trusted",
            secured: false,
            frames: unicast_v4_frames(),
            expect_flood: false,
        },
        Case {
            name: "unicast_known_secured_ipv4",
            secured: true,
            frames: unicast_v4_frames(),
            expect_flood: false,
        },
        Case {
            name: "unicast_known_secured_ipv6",
            secured: true,
            frames: unicast_v6_frames(),
            expect_flood: false,
        },
        Case {
            name: "broadcast_arp_trusted",
            secured: false,
            frames: broadcast_arp_frames(),
            expect_flood: true,
        },
        Case {
            name: "broadcast_arp_secured",
            secured: true,
            frames: broadcast_arp_frames(),
            expect_flood: true,
        },
    ];
    for case in cases {
        let Case {
            name,
            secured,
            frames,
            expect_flood,
        } = case;
        let (mut bridge, now) = warm_bridge(secured);
        check(&mut bridge, &frames, now, expect_flood);
        group.bench_function(name, |b| {
            b.iter(|| run_batch(&mut bridge, &frames, now));
        });
        assert_eq!(bridge.drops().total(), 0, "{name}: frames were dropped");
    }

    // A full network: 8192 stations behind 128 trusted ports, frames to
    // pseudo-random stations, so lookups miss the CPU caches as in a big
    // deployment.
    let now = Instant::now();
    let mut bridge = Bridge::new(BridgeConfig::default());
    bridge.add_network(NET).expect("fresh bridge");
    let ports = 128u32;
    let per_port = 64u32;
    let station = |n: u32| port_mac(0x0100_0000 + n);
    for p in 0..ports {
        bridge.add_port(PortId(p), NET, None).expect("fresh port");
        for s in 0..per_port {
            let frame = build_arp_request(
                station(p * per_port + s),
                Ipv4Addr::UNSPECIFIED,
                port_ipv4(0),
            );
            bridge.process(PortId(p), &frame, now);
        }
    }
    assert_eq!(bridge.fdb_entries(NET).count(), (ports * per_port) as usize);
    let mut x = 0x2545_f491u32;
    let frames: Batch = (0..BATCH)
        .map(|_| {
            // xorshift32: deterministic pseudo-random pairs.
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            let src = x % (ports * per_port);
            let dst = (src + per_port * (1 + x % (ports - 1))) % (ports * per_port);
            let frame = build_ipv4_udp(
                station(src),
                station(dst),
                SocketAddrV4::new(port_ipv4(1), 40000),
                SocketAddrV4::new(port_ipv4(2), 5201),
                &[0; PAYLOAD_V4],
            );
            (PortId(src / per_port), frame)
        })
        .collect();
    check(&mut bridge, &frames, now, false);
    group.bench_function("unicast_known_8192_stations", |b| {
        b.iter(|| run_batch(&mut bridge, &frames, now));
    });
    group.finish();
}

criterion_group!(benches, forwarding);
criterion_main!(benches);
