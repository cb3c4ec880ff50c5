//! Policies on the per-packet path: what a frame of an admitted flow costs
//! (its tuple read, its flow found and kept alive), and what the first
//! packet of a flow costs (the table's verdict over the allowances).
//!
//! - `packet/parse_tcp`: `FlowPacket::parse` of an Ethernet/IPv4/TCP
//!   frame.
//! - `flows/hit`: `Flows::check` for a packet of an admitted flow, in a
//!   table holding 10,001 flows.
//! - `table/new_flow_100_policies`: `PolicyTable::check` for a new flow
//!   among 100 allow rules and 1,000 endpoints (the last rule allows it).
//!
//! Run: `cargo bench -p vswitch-benches --bench policy`.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Instant;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use switch::policy::packet::Kind;
use switch::policy::{
    EndpointInput, FlowPacket, FlowVerdict, Flows, NetworkInput, Peer, Policy, PolicyTable,
    PortRange, Rule, Verdict,
};
use switch::{MacAddr, NetworkId};

const ENDPOINTS: u32 = 1000;
const POLICIES: u32 = 100;
const FLOWS: u16 = 10_000;

fn world() -> PolicyTable {
    let net = |id: u32| NetworkInput {
        id: NetworkId(id),
        name: format!("n{id}"),
        labels: BTreeMap::new(),
        subnets: vec![format!("10.{id}.0.0/16").parse().unwrap()],
        isolate: false,
        gateway_mac: MacAddr([2, 0, 0, 0, 0, id as u8]),
    };
    let endpoints: Vec<EndpointInput> = (0..ENDPOINTS)
        .map(|i| {
            let network = 1 + i % 2;
            EndpointInput {
                network: NetworkId(network),
                container: format!("c{i}"),
                labels: [("app".to_string(), format!("a{}", i % 50))].into(),
                mac: MacAddr([2, 1, 0, (i >> 8) as u8, i as u8, 0]),
                ips: vec![IpAddr::V4(Ipv4Addr::new(
                    10,
                    network as u8,
                    (i >> 8) as u8,
                    i as u8,
                ))],
            }
        })
        .collect();
    let policies: Vec<Policy> = (0..POLICIES)
        .map(|i| Policy {
            name: format!("p{i}"),
            rule: Rule::Allow {
                from: Peer::parse("n1").unwrap(),
                to: Peer::parse(&format!("n2/label=app=a{}", i % 50)).unwrap(),
                ports: vec![PortRange::parse(&format!("{}", 1000 + i)).unwrap()],
            },
        })
        .collect();
    PolicyTable::compile(1, &policies, &[net(1), net(2)], &endpoints)
}

fn tcp_frame() -> Vec<u8> {
    let mut f = vec![0u8; 14];
    f[12] = 0x08;
    f.extend_from_slice(&[
        0x45, 0, 0, 40, 0, 0, 0x40, 0, 64, 6, 0, 0, 10, 1, 0, 0, 10, 2, 0, 49,
    ]);
    let mut tcp = vec![0u8; 20];
    tcp[0..2].copy_from_slice(&40000u16.to_be_bytes());
    tcp[2..4].copy_from_slice(&1099u16.to_be_bytes());
    tcp[12] = 0x50;
    tcp[13] = 0x10;
    f.extend_from_slice(&tcp);
    f
}

fn bench(c: &mut Criterion) {
    let table = world();
    let frame = tcp_frame();
    let mut g = c.benchmark_group("policy");
    g.throughput(Throughput::Elements(1));
    g.bench_function("packet/parse_tcp", |b| {
        b.iter(|| FlowPacket::parse(black_box(&frame)))
    });

    let now = Instant::now();
    let mut flows = Flows::default();
    let pkt = FlowPacket::parse(&frame).unwrap();
    for port in 0..FLOWS {
        let p = FlowPacket {
            sport: 20_000 + port,
            ..pkt
        };
        let (s, d) = (
            table.identify(NetworkId(1), p.src),
            table.identify(NetworkId(2), p.dst),
        );
        flows.check(&table, &p, s, d, now);
    }
    let (s, d) = (
        table.identify(NetworkId(1), pkt.src),
        table.identify(NetworkId(2), pkt.dst),
    );
    assert_eq!(
        flows.check(&table, &pkt, s, d, now),
        FlowVerdict::Pass(true)
    );
    assert_eq!(
        flows.check(&table, &pkt, s, d, now),
        FlowVerdict::Pass(false)
    );
    assert_eq!(
        table.check(s, d, 6, 1099),
        Verdict::Allow,
        "the last rule allows it"
    );
    g.bench_function("flows/hit", |b| {
        b.iter(|| flows.check(&table, black_box(&pkt), s, d, now))
    });
    assert_eq!(pkt.kind, Kind::Flow);
    g.bench_function("table/new_flow_100_policies", |b| {
        b.iter(|| table.check(black_box(s), black_box(d), 6, black_box(1099)))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
