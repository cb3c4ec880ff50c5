//! Fuzzes `switch::offload`: arbitrary bytes as `[VnetHdr | frame]` through
//! `segment`, and the segments (then the raw frame) through `Gro`, with the
//! daemon's caller protocol. It checks:
//!
//! - nothing panics;
//! - `segment` of a frame that is not GSO gives the frame itself (its
//!   checksum completed if `NEEDS_CSUM`); of a GSO super-frame, segments
//!   that each have a right IPv4 header checksum and transport checksum (by
//!   a naive checksum here, independent of the one under test), lengths
//!   that add up, all but the last `stride - headroom` long, and payloads
//!   that concatenate to the super-frame's;
//! - every run `Gro` delivers is either one absorbed frame unchanged behind
//!   an empty header, or a super-frame whose completed checksum is right
//!   and which `segment` cuts back into the absorbed payloads, in order;
//! - with `verify`, no frame with a wrong TCP checksum is absorbed;
//! - a frame `partial_checksum` marks (headers only) completes, by the
//!   header it gives, into one whose transport checksum is right.
//!
//! Input: a control byte (bits 0..3: headroom; bit 4: a 4 KiB output
//! buffer instead of 256 KiB), then the 10-byte header and the frame.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switch::offload::{complete_checksum, partial_checksum, segment, Gro, Offer, VnetHdr};

fn naive_sum(data: &[u8], initial: u64) -> u16 {
    let mut sum = initial;
    for pair in data.chunks(2) {
        sum += u64::from(pair[0]) << 8 | u64::from(*pair.get(1).unwrap_or(&0));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// A naive reading of an Ethernet frame with IP and TCP/UDP.
struct Parsed {
    l3: usize,
    l4: usize,
    /// Where the payload starts.
    body: usize,
    end: usize,
    v6: bool,
    proto: u8,
}

fn parse(f: &[u8]) -> Option<Parsed> {
    let be = |at: usize| -> Option<usize> {
        Some(usize::from(u16::from_be_bytes([
            *f.get(at)?,
            *f.get(at + 1)?,
        ])))
    };
    let mut l3 = 14;
    let mut ethertype = be(12)?;
    while (ethertype == 0x8100 || ethertype == 0x88a8) && l3 < 22 {
        ethertype = be(l3 + 2)?;
        l3 += 4;
    }
    let (l4, end, v6, proto) = match ethertype {
        0x0800 => {
            let ihl = usize::from(*f.get(l3)? & 0x0f) * 4;
            (l3 + ihl, l3 + be(l3 + 2)?, false, *f.get(l3 + 9)?)
        }
        0x86dd => (l3 + 40, l3 + 40 + be(l3 + 4)?, true, *f.get(l3 + 6)?),
        _ => return None,
    };
    let th = match proto {
        6 => usize::from(*f.get(l4 + 12)? >> 4) * 4,
        17 => 8,
        _ => return None,
    };
    let body = l4 + th;
    (body <= end && end <= f.len()).then_some(Parsed {
        l3,
        l4,
        body,
        end,
        v6,
        proto,
    })
}

/// Whether the transport checksum of the packet is right.
fn transport_ok(f: &[u8], p: &Parsed) -> bool {
    let len = (p.end - p.l4) as u64;
    let mut pseudo = u64::from(p.proto) + (len >> 16) + (len & 0xffff);
    let addrs = if p.v6 {
        &f[p.l3 + 8..p.l3 + 40]
    } else {
        &f[p.l3 + 12..p.l3 + 20]
    };
    pseudo += u64::from(naive_sum(addrs, 0));
    naive_sum(&f[p.l4..p.end], pseudo) == 0xffff
}

/// A segment must be a whole, right packet: returns its payload.
fn check_valid<'a>(f: &'a [u8]) -> &'a [u8] {
    let p = parse(f).expect("a segment parses");
    assert_eq!(p.end, f.len(), "a segment is exactly its IP packet");
    if !p.v6 {
        assert_eq!(naive_sum(&f[p.l3..p.l4], 0), 0xffff, "IPv4 header checksum");
    }
    if p.proto == 17 {
        assert_eq!(
            usize::from(u16::from_be_bytes([f[p.l4 + 4], f[p.l4 + 5]])),
            p.end - p.l4,
            "UDP length"
        );
    }
    assert!(transport_ok(f, &p), "transport checksum");
    &f[p.body..p.end]
}

/// Checks one delivered GRO run against the frames it absorbed.
fn check_run(run: &[u8], absorbed: &[Vec<u8>]) {
    let hdr = VnetHdr::parse(run).expect("a run starts with a header");
    let frame = &run[VnetHdr::LEN..];
    if !hdr.is_gso() {
        // One segment, as it came: plain, or marked partial if it was.
        assert_eq!(absorbed.len(), 1);
        let p = parse(&absorbed[0]).expect("absorbed frames parse");
        assert_eq!(frame, &absorbed[0][..p.end]);
        assert!(hdr == VnetHdr::NONE || partial_checksum(frame) == Some(hdr));
        return;
    }
    assert!(absorbed.len() >= 2);
    let mut full = frame.to_vec();
    complete_checksum(&hdr, &mut full).expect("the run's checksum completes");
    check_valid(&full);
    let mut out = vec![0u8; 256 * 1024];
    let s = segment(&hdr, frame, 0, &mut out).expect("the run segments");
    assert_eq!(s.count, absorbed.len());
    for (i, a) in absorbed.iter().enumerate() {
        let seg = s.frame(&out, 0, i).expect("segment in range");
        let p = parse(a).expect("absorbed frames parse");
        assert_eq!(check_valid(seg), &a[p.body..p.end], "payload {i}");
    }
}

/// Offers `frames` to a `Gro` with the daemon's caller protocol.
fn coalesce(frames: &[&[u8]], verify: bool) {
    let mut gro = Gro::new(verify);
    let mut absorbed: Vec<Vec<u8>> = Vec::new();
    for &f in frames {
        let mut offered = gro.offer(f);
        if offered == Offer::Rejected && gro.has_pending() {
            check_run(gro.pending(), &absorbed);
            gro.reset();
            absorbed.clear();
            offered = gro.offer(f);
        }
        if offered == Offer::Absorbed {
            let p = parse(f).expect("an absorbed frame parses");
            assert_eq!(p.proto, 6);
            if verify {
                assert!(transport_ok(f, &p), "absorbed a bad TCP checksum");
            }
            absorbed.push(f.to_vec());
            assert_eq!(gro.pending_segments(), absorbed.len());
        }
    }
    if gro.has_pending() {
        check_run(gro.pending(), &absorbed);
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&control, rest)) = data.split_first() else {
        return;
    };
    let headroom = usize::from(control & 0x0f);
    let mut out = vec![
        0u8;
        if control & 0x10 != 0 {
            4096
        } else {
            256 * 1024
        }
    ];
    let Ok(hdr) = VnetHdr::parse(rest) else {
        return;
    };
    let frame = &rest[VnetHdr::LEN..];
    let mut segments: Vec<&[u8]> = Vec::new();
    if let Ok(s) = segment(&hdr, frame, headroom, &mut out) {
        assert!(s.count >= 1);
        assert!(s.total_len(headroom) <= out.len());
        for i in 0..s.count {
            segments.push(s.frame(&out, headroom, i).expect("segment in range"));
        }
        assert!(s.frame(&out, headroom, s.count).is_none());
        if !hdr.is_gso() {
            assert_eq!(segments[0].len(), frame.len());
            if !hdr.needs_csum() {
                assert_eq!(segments[0], frame);
            }
        } else {
            let p = parse(frame).expect("a segmented super-frame parses");
            let mut payload = Vec::new();
            for (i, seg) in segments.iter().enumerate() {
                if i + 1 < s.count {
                    assert_eq!(seg.len(), s.stride - headroom);
                }
                payload.extend_from_slice(check_valid(seg));
            }
            assert_eq!(payload, &frame[p.body..p.end]);
        }
    }
    if let Some(h) = partial_checksum(frame) {
        assert!(h.needs_csum() && !h.is_gso());
        let mut full = frame.to_vec();
        complete_checksum(&h, &mut full).expect("a marked frame completes");
        let p = parse(&full).expect("a marked frame parses");
        assert_eq!(p.end, full.len(), "a marked frame has no padding");
        assert!(transport_ok(&full, &p), "completed checksum");
    }
    segments.push(frame);
    coalesce(&segments, true);
    coalesce(&segments, false);
});
