//! The embedded DNS: how fast a network's gateway answers a container.
//!
//! - `responder/a_1000`: `switch::dns::Responder::handle_query` alone, an A
//!   query for one of 1000 containers (each with an alias) answered into a
//!   reused buffer.
//! - `responder/rr_3`: an alias shared by three containers (round-robin
//!   rotation on every answer).
//! - `responder/forward_miss`: a name the zone does not know (the decision to
//!   forward).
//! - `gateway/udp_a_frame`: a whole Ethernet/IPv4/UDP query frame through
//!   `Gateway::handle_frame` to the answer frame out of `poll_transmit`.
//!
//! Throughput is in queries (`Throughput::Elements`), so criterion prints
//! queries/s.
//!
//! Run: `cargo bench -p vswitch-benches --bench dns`.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use switch::dns::{DnsEntry, Outcome, Responder, Transport, Zone};
use switch::gateway::{Gateway, GatewayConfig};
use switch::MacAddr;

/// Containers in the benchmark network.
const CONTAINERS: u32 = 1000;

const GW_MAC: [u8; 6] = [0x02, 0x42, 0x0a, 0x00, 0x00, 0x01];
const CLIENT_MAC: [u8; 6] = [0x02, 0x42, 0x0a, 0x00, 0x00, 0x02];
const GW_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);

/// A zone of `CONTAINERS` containers `c0`..`c999`, each with an alias
/// `svc-N`, plus three sharing the alias `pool`.
fn zone() -> Zone {
    let mut entries: Vec<DnsEntry> = (0..CONTAINERS)
        .map(|i| DnsEntry {
            name: format!("c{i}"),
            aliases: vec![format!("svc-{i}")],
            addrs: vec![
                IpAddr::V4(Ipv4Addr::from(0x0a00_1000 + i)),
                IpAddr::V6(Ipv6Addr::from(0xfd00_u128 << 112 | u128::from(i))),
            ],
        })
        .collect();
    for i in 0..3u32 {
        entries.push(DnsEntry {
            name: format!("w{i}"),
            aliases: vec!["pool".into()],
            addrs: vec![IpAddr::V4(Ipv4Addr::from(0x0a00_2000 + i))],
        });
    }
    Zone::new(entries)
}

/// A DNS query for `name` (dot-separated, no trailing dot), type A, RD set.
fn a_query(id: u16, name: &str) -> Vec<u8> {
    let mut q = Vec::with_capacity(64);
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    q
}

/// An Ethernet/IPv4/UDP frame from the client to the gateway's port 53
/// (UDP checksum 0: "none", valid over IPv4).
fn query_frame(payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(42 + payload.len());
    f.extend_from_slice(&GW_MAC);
    f.extend_from_slice(&CLIENT_MAC);
    f.extend_from_slice(&[0x08, 0x00]);
    let total = (20 + 8 + payload.len()) as u16;
    let mut ip = [0u8; 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&total.to_be_bytes());
    ip[8] = 64;
    ip[9] = 17;
    ip[12..16].copy_from_slice(&CLIENT_IP.octets());
    ip[16..20].copy_from_slice(&GW_IP.octets());
    let mut sum: u32 = ip
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    ip[10..12].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(&40000u16.to_be_bytes());
    f.extend_from_slice(&53u16.to_be_bytes());
    f.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.extend_from_slice(payload);
    f
}

fn bench_responder(c: &mut Criterion) {
    let zone = zone();
    let mut group = c.benchmark_group("responder");
    group.throughput(Throughput::Elements(1));
    let udp = Transport::Udp { max_payload: 1472 };
    let mut out = [0u8; 1500];

    for (label, name) in [
        ("a_1000", "c500"),
        ("rr_3", "pool"),
        ("forward_miss", "www.example.com"),
    ] {
        let query = a_query(0x1234, name);
        let mut responder = Responder::new();
        // Check once that the case does what its label says.
        match (label, responder.handle_query(&zone, &query, udp, &mut out)) {
            ("forward_miss", Outcome::Forward { .. }) => {}
            ("forward_miss", other) => panic!("{label}: {other:?}"),
            (_, Outcome::Answered(_)) => {}
            (_, other) => panic!("{label}: {other:?}"),
        }
        group.bench_function(label, |b| {
            b.iter(|| {
                black_box(responder.handle_query(
                    black_box(&zone),
                    black_box(&query),
                    udp,
                    &mut out,
                ))
            })
        });
    }
    group.finish();
}

fn bench_gateway(c: &mut Criterion) {
    let now = Instant::now();
    let config = GatewayConfig {
        mac: MacAddr(GW_MAC),
        ipv4: Some((GW_IP, 16)),
        ipv6: None,
        mtu: 1500,
        zone: zone().into_shared(),
        upstreams: vec![SocketAddr::from(([192, 0, 2, 53], 53))],
        upstream_timeout: Duration::from_secs(2),
        random_seed: 7,
    };
    let mut gateway = Gateway::new(config, now).expect("valid config");
    let frame = query_frame(&a_query(0x4321, "svc-500"));
    let mut out = [0u8; 1514];

    gateway.handle_frame(&frame, now);
    let n = gateway
        .poll_transmit(now, &mut out)
        .expect("an answer frame");
    assert!(n > frame.len(), "the answer carries a record");
    assert_eq!(gateway.stats().dns_answered, 1);

    let mut group = c.benchmark_group("gateway");
    group.throughput(Throughput::Elements(1));
    group.bench_function("udp_a_frame", |b| {
        b.iter(|| {
            gateway.handle_frame(black_box(&frame), now);
            black_box(gateway.poll_transmit(now, &mut out))
        })
    });
    group.finish();
}

criterion_group!(benches, bench_responder, bench_gateway);
criterion_main!(benches);
