//! The tunnel's forwarding rules (`overlay::tunnel::TunnelRules`): what
//! admitting a datagram and choosing a VTEP cost per packet, with 16
//! overlay networks of 32 VTEPs each (512 tunnel ports).
//!
//! - `decapsulate/udp_member`: a 1458-byte frame from a member, delivered.
//! - `decapsulate/udp_non_member`: the same datagram from an address that
//!   is no VTEP of that network, dropped.
//! - `decapsulate/udp_malformed`: a datagram without the `I` flag.
//! - `encap/local`: a local frame switched to a VTEP port: the header and
//!   the remote address.
//! - `encapsulate/local_1458`: the same, with header and frame written to
//!   one buffer.
//!
//! Run: `cargo bench -p vswitch-benches --bench tunnel`.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Instant;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use overlay::vxlan::{self, Vni};
use overlay::{Decap, Encap, Origin, Transport, TunnelRules, Vtep, VtepKind};

const NETWORKS: u32 = 16;
const VTEPS: u32 = 32;
const FRAME_LEN: usize = 1458;

fn host(network: u32, i: u32) -> SocketAddr {
    let ip = Ipv4Addr::new(10, 1 + network as u8, 0, 1 + i as u8);
    SocketAddr::new(IpAddr::V4(ip), vxlan::DEFAULT_PORT)
}

fn rules() -> TunnelRules<u32, u32> {
    let mut r = TunnelRules::new();
    for n in 0..NETWORKS {
        r.set_vni(n, Vni::new(1000 + n));
        for i in 0..VTEPS {
            let vtep = Vtep {
                network: n,
                remote: host(n, i),
                kind: VtepKind::Member,
                transport: Transport::Udp,
                partial_csum: true,
            };
            r.add_vtep(n * VTEPS + i, vtep).expect("distinct");
        }
    }
    r
}

fn tunnel(c: &mut Criterion) {
    let mut r = rules();
    let network = NETWORKS / 2;
    let mut datagram = vxlan::header(Vni::new(1000 + network).unwrap()).to_vec();
    datagram.extend((0..FRAME_LEN).map(|i| i as u8));
    let member = host(network, VTEPS / 2);
    let stranger = host(network + 1, VTEPS / 2);
    let mut malformed = datagram.clone();
    malformed[0] = 0;
    let now = Instant::now();

    let mut group = c.benchmark_group("decapsulate");
    group.throughput(Throughput::Elements(1));
    group.bench_function("udp_member", |b| {
        b.iter(|| {
            let d = r.decapsulate(Transport::Udp, black_box(member), black_box(&datagram), now);
            assert!(matches!(d, Decap::Deliver { .. }));
        })
    });
    group.bench_function("udp_non_member", |b| {
        b.iter(|| {
            let d = r.decapsulate(
                Transport::Udp,
                black_box(stranger),
                black_box(&datagram),
                now,
            );
            assert!(matches!(d, Decap::Drop(_)));
        })
    });
    group.bench_function("udp_malformed", |b| {
        b.iter(|| {
            let d = r.decapsulate(
                Transport::Udp,
                black_box(member),
                black_box(&malformed),
                now,
            );
            assert!(matches!(d, Decap::Drop(_)));
        })
    });
    group.finish();

    let port = network * VTEPS + VTEPS / 2;
    let mut group = c.benchmark_group("encap");
    group.throughput(Throughput::Elements(1));
    group.bench_function("local", |b| {
        b.iter(|| {
            let e = r.encap(black_box(Origin::Local), black_box(port));
            assert!(matches!(e, Encap::Send { .. }));
            black_box(e);
        })
    });
    group.finish();

    let frame = &datagram[vxlan::HEADER_LEN..];
    let mut out = vec![0u8; 2048];
    let mut group = c.benchmark_group("encapsulate");
    group.throughput(Throughput::Bytes(FRAME_LEN as u64));
    group.bench_function("local_1458", |b| {
        b.iter(|| {
            let e = r
                .encapsulate(Origin::Local, black_box(port), black_box(frame), &mut out)
                .expect("fits");
            black_box(&out[..e.len]);
        })
    });
    group.finish();
}

criterion_group!(benches, tunnel);
criterion_main!(benches);
