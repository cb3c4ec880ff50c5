//! The super-frame offload core (`switch::offload`): what the tunnel path
//! costs per byte.
//!
//! - `segment/tcpv4_64k_mss1448`: software TSO of one TCPv4 super-frame of
//!   44 × 1448 payload bytes (with timestamps, as Linux sends it: 63 712
//!   payload bytes, 63 778-byte frame) into 44 checksummed frames with
//!   8 bytes of headroom each (the VXLAN header), as the daemon does before
//!   one `UDP_SEGMENT` send.
//! - `gro/tcpv4_44_segments`: those 44 frames coalesced back into one
//!   super-frame (`Gro::offer` each, checksums verified and not).
//! - `checksum/64k`: the Internet checksum over 64 KiB.
//! - `complete_checksum/tcpv4_64k`: filling in the partial checksum of the
//!   super-frame (the path of a frame that leaves a TAP without offloads).
//!
//! Throughput is in bytes of frame (criterion prints GiB/s).
//!
//! Run: `cargo bench -p vswitch-benches --bench offload`.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use switch::offload::{
    checksum, complete_checksum, flags, gso, pseudo_header_v4, segment, Gro, Offer, VnetHdr,
};

const MSS: usize = 1448;
const SEGMENTS: usize = 44;
const HEADROOM: usize = 8;
/// Ethernet, IPv4, TCP with the timestamp option.
const HEADERS: usize = 14 + 20 + 32;

/// A TCPv4 super-frame as Linux hands it to a TAP: `NEEDS_CSUM`, the TCP
/// checksum field holding the pseudo-header sum.
fn super_frame() -> (VnetHdr, Vec<u8>) {
    let payload = SEGMENTS * MSS;
    let mut f = Vec::with_capacity(HEADERS + payload);
    f.extend_from_slice(&[
        0x02, 0x42, 0x0a, 0, 0, 3, 0x02, 0x42, 0x0a, 0, 0, 2, 0x08, 0x00,
    ]);
    let total = (20 + 32 + payload) as u16;
    let mut ip = [0u8; 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&total.to_be_bytes());
    ip[4..6].copy_from_slice(&0x1234u16.to_be_bytes());
    ip[6] = 0x40;
    ip[8] = 64;
    ip[9] = 6;
    ip[12..16].copy_from_slice(&[10, 0, 0, 2]);
    ip[16..20].copy_from_slice(&[10, 0, 0, 3]);
    let c = checksum(&ip, 0);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    f.extend_from_slice(&ip);
    let pseudo = pseudo_header_v4([10, 0, 0, 2], [10, 0, 0, 3], 6, total - 20);
    let partial = !checksum(&[], pseudo);
    let mut tcp = [0u8; 32];
    tcp[0..2].copy_from_slice(&40000u16.to_be_bytes());
    tcp[2..4].copy_from_slice(&5201u16.to_be_bytes());
    tcp[4..8].copy_from_slice(&0x1000_0000u32.to_be_bytes());
    tcp[8..12].copy_from_slice(&0x2000_0000u32.to_be_bytes());
    tcp[12] = 8 << 4;
    tcp[13] = 0x18;
    tcp[14..16].copy_from_slice(&0x01f5u16.to_be_bytes());
    tcp[16..18].copy_from_slice(&partial.to_be_bytes());
    tcp[20..32].copy_from_slice(&[1, 1, 8, 10, 0, 1, 0, 0, 0, 2, 0, 0]);
    f.extend_from_slice(&tcp);
    f.extend((0..payload).map(|i| (i * 31 + i / 7) as u8));
    let hdr = VnetHdr {
        flags: flags::NEEDS_CSUM,
        gso_type: gso::TCPV4,
        hdr_len: HEADERS as u16,
        gso_size: MSS as u16,
        csum_start: 34,
        csum_offset: 16,
    };
    (hdr, f)
}

fn offload(c: &mut Criterion) {
    let (hdr, frame) = super_frame();
    let mut out = vec![0u8; SEGMENTS * (HEADROOM + HEADERS + MSS)];

    let mut group = c.benchmark_group("segment");
    group.throughput(Throughput::Bytes(frame.len() as u64));
    group.bench_function("tcpv4_64k_mss1448", |b| {
        b.iter(|| {
            let s = segment(&hdr, black_box(&frame), HEADROOM, &mut out).expect("segments");
            assert_eq!(s.count, SEGMENTS);
            black_box(&out);
        })
    });
    group.finish();

    let s = segment(&hdr, &frame, HEADROOM, &mut out).expect("segments");
    let segments: Vec<Vec<u8>> = (0..s.count)
        .map(|i| s.frame(&out, HEADROOM, i).expect("segment").to_vec())
        .collect();
    let bytes: usize = segments.iter().map(Vec::len).sum();
    let mut group = c.benchmark_group("gro");
    group.throughput(Throughput::Bytes(bytes as u64));
    for (name, verify) in [
        ("tcpv4_44_segments", false),
        ("tcpv4_44_segments_verify", true),
    ] {
        let mut gro = Gro::new(verify);
        group.bench_function(name, |b| {
            b.iter(|| {
                for f in &segments {
                    assert_eq!(gro.offer(black_box(f)), Offer::Absorbed);
                }
                black_box(gro.pending());
                gro.reset();
            })
        });
    }
    group.finish();

    let data = vec![0x5au8; 64 * 1024];
    let mut group = c.benchmark_group("checksum");
    group.throughput(Throughput::Bytes(data.len() as u64));
    group.bench_function("64k", |b| b.iter(|| checksum(black_box(&data), 0)));
    group.finish();

    let mut scratch = frame.clone();
    let mut group = c.benchmark_group("complete_checksum");
    group.throughput(Throughput::Bytes(frame.len() as u64));
    group.bench_function("tcpv4_64k", |b| {
        b.iter(|| {
            complete_checksum(&hdr, black_box(&mut scratch)).expect("completes");
            // Put the partial sum back for the next round.
            scratch[50..52].copy_from_slice(&frame[50..52]);
        })
    });
    group.finish();
}

criterion_group!(benches, offload);
criterion_main!(benches);
