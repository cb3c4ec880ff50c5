//! Super-frame offloads for TAP devices with `IFF_VNET_HDR`, sans-IO.
//!
//! A TAP device opened with `IFF_VNET_HDR` and `TUNSETOFFLOAD` hands the
//! daemon Ethernet frames of up to 64 KiB, each preceded by a
//! `struct virtio_net_hdr` ([`VnetHdr`]) that says whether the transport
//! checksum is still to be filled in (`NEEDS_CSUM`) and whether the frame is
//! a TCP or UDP super-frame to be cut into `gso_size` pieces (GSO). Between
//! local ports such frames pass unchanged. Toward the tunnel they are cut
//! here:
//!
//! - [`segment`] is software GSO of one Ethernet super-frame (TCPv4, TCPv6,
//!   UDP_L4), writing plain, fully checksummed Ethernet frames into the
//!   caller's buffer at a fixed stride with free headroom before each (for
//!   the VXLAN header), so that the whole run goes out in one `UDP_SEGMENT`
//!   send.
//! - [`complete_checksum`] fills in the checksum a `NEEDS_CSUM` frame left
//!   partial, for a frame that leaves without offloads.
//! - [`Gro`] does the reverse for frames received from the tunnel: it
//!   coalesces consecutive TCP segments of one flow into one super-frame with
//!   a [`VnetHdr`] to write to a TAP.
//! - [`checksum`] is the Internet checksum (RFC 1071) every one of these runs
//!   over every byte: 64-bit words, two accumulators, no per-byte work.
//!
//! Nothing here allocates per frame: [`segment`] writes into the caller's
//! buffer and [`Gro`] owns one buffer, allocated in [`Gro::new`].
//!
//! # Panics
//!
//! No function or method of this module panics, whatever the bytes are
//! (the one exception: [`VnetHdr::write`] into a buffer shorter than
//! [`VnetHdr::LEN`]): every length and offset read from a header is checked
//! against the buffer first, and anything that does not add up is an
//! [`OffloadError`] (or, for [`Gro::offer`], [`Offer::Rejected`]).

/// Bits of [`VnetHdr::flags`].
pub mod flags {
    /// `VIRTIO_NET_HDR_F_NEEDS_CSUM`: the transport checksum at
    /// `csum_start + csum_offset` holds only the pseudo-header sum; the sum
    /// over `csum_start..` is still to be added in.
    pub const NEEDS_CSUM: u8 = 1;
    /// `VIRTIO_NET_HDR_F_DATA_VALID`: the checksum was already verified.
    pub const DATA_VALID: u8 = 2;
}

/// Values of [`VnetHdr::gso_type`].
pub mod gso {
    /// `VIRTIO_NET_HDR_GSO_NONE`: not a super-frame.
    pub const NONE: u8 = 0;
    /// `VIRTIO_NET_HDR_GSO_TCPV4`: TCP over IPv4, cut at `gso_size` (TSO).
    pub const TCPV4: u8 = 1;
    /// `VIRTIO_NET_HDR_GSO_UDP`: UDP fragmentation offload (UFO). Refused by
    /// [`segment`](super::segment): it needs IP fragmentation.
    pub const UDP: u8 = 3;
    /// `VIRTIO_NET_HDR_GSO_TCPV6`: TCP over IPv6, cut at `gso_size` (TSO).
    pub const TCPV6: u8 = 4;
    /// `VIRTIO_NET_HDR_GSO_UDP_L4`: UDP cut into datagrams of `gso_size`
    /// payload bytes each (USO).
    pub const UDP_L4: u8 = 5;
    /// `VIRTIO_NET_HDR_GSO_ECN`: the sender uses ECN (the TCP CWR flag may
    /// be set, and goes on the first segment only).
    pub const ECN: u8 = 0x80;
}

/// Why a super-frame could not be segmented or its checksum completed.
/// Small and `Copy`: it is returned on the per-packet path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OffloadError {
    /// The buffer ends before a header (or a length field in one) says it
    /// should.
    #[error("frame is truncated")]
    Truncated,
    /// A header field has a value the protocol does not allow (an IP
    /// version, header length or total length that does not add up).
    #[error("frame has a malformed header")]
    Malformed,
    /// The virtio-net header does not fit the frame: `hdr_len` longer than
    /// the frame, or `csum_start`/`csum_offset` not where the transport
    /// checksum is.
    #[error("virtio-net header does not match the frame")]
    Inconsistent,
    /// A GSO super-frame with `gso_size` 0.
    #[error("GSO super-frame has gso_size 0")]
    ZeroGsoSize,
    /// A `gso_type` other than TCPV4, TCPV6 and UDP_L4 (with or without the
    /// ECN bit). UFO (GSO_UDP) is refused too: it needs IP fragmentation.
    #[error("GSO type {0:#04x} is not supported")]
    UnknownGsoType(u8),
    /// The frame is not what its `gso_type` says: not IP, the other IP
    /// version, or not TCP (UDP) for a TCP (UDP) type.
    #[error("frame's protocol does not match its GSO type")]
    ProtocolMismatch,
    /// An IPv6 super-frame with extension headers: refused, not walked.
    #[error("IPv6 super-frame has extension headers")]
    Ipv6Extension,
    /// An IPv4 super-frame that is itself a fragment.
    #[error("IPv4 super-frame is a fragment")]
    Fragment,
    /// The output buffer cannot hold every segment.
    #[error("output buffer too small: {needed} bytes needed")]
    OutTooSmall {
        /// How many bytes of output the segments need.
        needed: usize,
    },
}

/// `struct virtio_net_hdr` as a TAP device with `IFF_VNET_HDR` reads and
/// writes it: 10 bytes, little-endian (the TAP default on little-endian
/// hosts), without `num_buffers`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VnetHdr {
    /// [`flags`] bits.
    pub flags: u8,
    /// One of [`gso`], possibly with [`gso::ECN`].
    pub gso_type: u8,
    /// A hint of how long the headers are (Linux writes the length of the
    /// linear part, which may include payload).
    pub hdr_len: u16,
    /// Payload bytes per segment of a GSO super-frame.
    pub gso_size: u16,
    /// Where the checksummed range starts (the transport header).
    pub csum_start: u16,
    /// Where the checksum field is, from `csum_start`.
    pub csum_offset: u16,
}

impl VnetHdr {
    /// Bytes on the wire.
    pub const LEN: usize = 10;
    /// A plain frame with a complete checksum.
    pub const NONE: VnetHdr = VnetHdr {
        flags: 0,
        gso_type: gso::NONE,
        hdr_len: 0,
        gso_size: 0,
        csum_start: 0,
        csum_offset: 0,
    };

    /// Reads the header from the first [`VnetHdr::LEN`] bytes of `bytes`.
    pub fn parse(bytes: &[u8]) -> Result<VnetHdr, OffloadError> {
        let b: &[u8; VnetHdr::LEN] = bytes
            .get(..VnetHdr::LEN)
            .and_then(|b| b.try_into().ok())
            .ok_or(OffloadError::Truncated)?;
        let le = |at: usize| u16::from_le_bytes([b[at], b[at + 1]]);
        Ok(VnetHdr {
            flags: b[0],
            gso_type: b[1],
            hdr_len: le(2),
            gso_size: le(4),
            csum_start: le(6),
            csum_offset: le(8),
        })
    }

    /// Writes the header to the first [`VnetHdr::LEN`] bytes of `out`.
    ///
    /// # Panics
    ///
    /// If `out` is shorter than [`VnetHdr::LEN`].
    pub fn write(&self, out: &mut [u8]) {
        let out = &mut out[..VnetHdr::LEN];
        out[0] = self.flags;
        out[1] = self.gso_type;
        out[2..4].copy_from_slice(&self.hdr_len.to_le_bytes());
        out[4..6].copy_from_slice(&self.gso_size.to_le_bytes());
        out[6..8].copy_from_slice(&self.csum_start.to_le_bytes());
        out[8..10].copy_from_slice(&self.csum_offset.to_le_bytes());
    }

    /// Whether the frame is a super-frame to be segmented.
    pub fn is_gso(&self) -> bool {
        self.gso_type & !gso::ECN != gso::NONE
    }

    /// Whether the transport checksum is still partial.
    pub fn needs_csum(&self) -> bool {
        self.flags & flags::NEEDS_CSUM != 0
    }
}

// ---------------------------------------------------------------------------
// The Internet checksum.

/// The one's-complement sum (RFC 1071) of `data` read as big-endian 16-bit
/// words (an odd last byte padded with a zero), plus `initial` (a partial
/// sum, for example [`pseudo_header_v4`]), folded to 16 bits and not
/// complemented.
#[inline]
pub fn ones_sum(data: &[u8], initial: u32) -> u16 {
    // Summing native-endian words gives the byte-swapped big-endian sum
    // (RFC 1071, section 2(B)); it is swapped back once, at the end.
    let native = fold64(sum_native(data));
    let sum = u16::from_be_bytes(native.to_ne_bytes());
    fold64(u64::from(sum) + u64::from(initial))
}

/// The Internet checksum of `data` with `initial` (a pseudo-header sum)
/// folded in: the value to write in a checksum field that was zero while
/// summing. Over a whole packet whose checksum is right, it is 0.
#[inline]
pub fn checksum(data: &[u8], initial: u32) -> u16 {
    !ones_sum(data, initial)
}

/// The unfolded sum of the TCP/UDP pseudo-header over IPv4: addresses,
/// protocol and transport length.
#[inline]
pub fn pseudo_header_v4(src: [u8; 4], dst: [u8; 4], proto: u8, len: u16) -> u32 {
    let w = |b: [u8; 4]| {
        u32::from(u16::from_be_bytes([b[0], b[1]])) + u32::from(u16::from_be_bytes([b[2], b[3]]))
    };
    w(src) + w(dst) + u32::from(proto) + u32::from(len)
}

/// The unfolded sum of the TCP/UDP pseudo-header over IPv6 (RFC 8200,
/// section 8.1): addresses, upper-layer length and next header.
#[inline]
pub fn pseudo_header_v6(src: [u8; 16], dst: [u8; 16], proto: u8, len: u32) -> u32 {
    let mut sum = u32::from(proto) + (len >> 16) + (len & 0xffff);
    for pair in src.chunks_exact(2).chain(dst.chunks_exact(2)) {
        sum += u32::from(u16::from_be_bytes([pair[0], pair[1]]));
    }
    sum
}

/// Sum of `data` as native-endian 64-bit words (the tail zero-padded),
/// with the carries kept in the high half of two 128-bit accumulators.
#[inline]
fn sum_native(data: &[u8]) -> u64 {
    let (mut a0, mut a1) = (0u128, 0u128);
    let mut chunks = data.chunks_exact(16);
    for c in &mut chunks {
        let (lo, hi) = c.split_at(8);
        a0 += u128::from(u64::from_ne_bytes(lo.try_into().unwrap_or([0; 8])));
        a1 += u128::from(u64::from_ne_bytes(hi.try_into().unwrap_or([0; 8])));
    }
    // The tail (under 16 bytes) in fixed-size pieces: no call to memcpy.
    let mut rest = chunks.remainder();
    if let Some((word, after)) = rest.split_first_chunk::<8>() {
        a0 += u128::from(u64::from_ne_bytes(*word));
        rest = after;
    }
    let mut tail = [0u8; 8];
    let mut at = 0;
    if let Some((word, _)) = rest.split_first_chunk::<4>() {
        tail[..4].copy_from_slice(word);
        at = 4;
    }
    if let Some((pair, _)) = rest[at..].split_first_chunk::<2>() {
        tail[at..at + 2].copy_from_slice(pair);
        at += 2;
    }
    if let Some(&byte) = rest.get(at) {
        tail[at] = byte;
    }
    a1 += u128::from(u64::from_ne_bytes(tail));
    // No overflow: each accumulator gains under 2^64 per 16 bytes.
    let s = a0 + a1;
    let (low, high) = (s as u64, (s >> 64) as u64);
    let (r, c) = low.overflowing_add(high);
    r + u64::from(c)
}

/// Folds a sum of 16-bit words with end-around carries.
#[inline]
fn fold64(sum: u64) -> u16 {
    let (s, c) = (sum as u32).overflowing_add((sum >> 32) as u32);
    let s = s.wrapping_add(u32::from(c));
    let s = (s & 0xffff) + (s >> 16);
    let s = (s & 0xffff) + (s >> 16);
    s as u16
}

// ---------------------------------------------------------------------------
// Header offsets.

const ETH_LEN: usize = 14;
const TCP: u8 = 6;
const UDP: u8 = 17;
const TCP_CSUM: usize = 16;
const UDP_CSUM: usize = 6;
const TCP_FIN: u8 = 0x01;
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_PSH: u8 = 0x08;
const TCP_URG: u8 = 0x20;
const TCP_CWR: u8 = 0x80;
/// The largest IP packet (IPv4 total length; IPv6 header plus payload).
const MAX_IP: usize = 65535;

#[inline]
fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

#[inline]
fn put16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_be_bytes());
}

/// Where the layers of an Ethernet frame carrying IP start. All offsets are
/// from the start of the frame and were checked against its length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Layers {
    /// The IP header.
    l3: usize,
    /// The transport header.
    l4: usize,
    /// End of the IP packet (any bytes after it are Ethernet padding).
    end: usize,
    v6: bool,
    /// IPv4 protocol or IPv6 next header.
    proto: u8,
}

/// Reads the Ethernet header (up to two VLAN tags) and the IP header.
fn parse_layers(frame: &[u8]) -> Result<Layers, OffloadError> {
    if frame.len() < ETH_LEN {
        return Err(OffloadError::Truncated);
    }
    let mut ethertype = be16(frame, 12);
    let mut l3 = ETH_LEN;
    for _ in 0..2 {
        if ethertype != 0x8100 && ethertype != 0x88a8 {
            break;
        }
        if frame.len() < l3 + 4 {
            return Err(OffloadError::Truncated);
        }
        ethertype = be16(frame, l3 + 2);
        l3 += 4;
    }
    match ethertype {
        0x0800 => {
            let ip = frame.get(l3..l3 + 20).ok_or(OffloadError::Truncated)?;
            if ip[0] >> 4 != 4 {
                return Err(OffloadError::Malformed);
            }
            let ihl = usize::from(ip[0] & 0x0f) * 4;
            let total = usize::from(be16(ip, 2));
            if ihl < 20 || total < ihl {
                return Err(OffloadError::Malformed);
            }
            if frame.len() < l3 + total {
                return Err(OffloadError::Truncated);
            }
            if be16(ip, 6) & 0x3fff != 0 {
                return Err(OffloadError::Fragment);
            }
            Ok(Layers {
                l3,
                l4: l3 + ihl,
                end: l3 + total,
                v6: false,
                proto: ip[9],
            })
        }
        0x86dd => {
            let ip = frame.get(l3..l3 + 40).ok_or(OffloadError::Truncated)?;
            if ip[0] >> 4 != 6 {
                return Err(OffloadError::Malformed);
            }
            let end = l3 + 40 + usize::from(be16(ip, 4));
            if frame.len() < end {
                return Err(OffloadError::Truncated);
            }
            let proto = ip[6];
            if is_ipv6_extension(proto) {
                return Err(OffloadError::Ipv6Extension);
            }
            Ok(Layers {
                l3,
                l4: l3 + 40,
                end,
                v6: true,
                proto,
            })
        }
        _ => Err(OffloadError::ProtocolMismatch),
    }
}

/// IPv6 extension header numbers (RFC 7045 and the IANA registry).
fn is_ipv6_extension(next: u8) -> bool {
    matches!(
        next,
        0 | 43 | 44 | 50 | 51 | 60 | 135 | 139 | 140 | 253 | 254
    )
}

/// Length of the TCP (UDP) header at `l.l4`, checked to lie inside the IP
/// packet.
fn transport_header_len(frame: &[u8], l: &Layers) -> Result<usize, OffloadError> {
    let len = match l.proto {
        TCP => {
            if l.end < l.l4 + 20 {
                return Err(OffloadError::Malformed);
            }
            usize::from(frame[l.l4 + 12] >> 4) * 4
        }
        UDP => 8,
        _ => return Err(OffloadError::ProtocolMismatch),
    };
    if len < 8 || l.end < l.l4 + len || (l.proto == TCP && len < 20) {
        return Err(OffloadError::Malformed);
    }
    Ok(len)
}

/// The pseudo-header sum of the packet at `l`, for a transport length.
fn pseudo_header(frame: &[u8], l: &Layers, len: usize) -> u32 {
    if l.v6 {
        let mut src = [0u8; 16];
        let mut dst = [0u8; 16];
        src.copy_from_slice(&frame[l.l3 + 8..l.l3 + 24]);
        dst.copy_from_slice(&frame[l.l3 + 24..l.l3 + 40]);
        pseudo_header_v6(src, dst, l.proto, len as u32)
    } else {
        let mut src = [0u8; 4];
        let mut dst = [0u8; 4];
        src.copy_from_slice(&frame[l.l3 + 12..l.l3 + 16]);
        dst.copy_from_slice(&frame[l.l3 + 16..l.l3 + 20]);
        pseudo_header_v4(src, dst, l.proto, len as u16)
    }
}

// ---------------------------------------------------------------------------
// Checksum completion and segmentation.

/// Fills in the checksum a `NEEDS_CSUM` frame left partial, in place, as
/// Linux's `skb_checksum_help` does: the sum over `csum_start..` (the field
/// holds the pseudo-header sum) is complemented into the field at
/// `csum_start + csum_offset`, a UDP checksum of 0 written as 0xffff (TCP's
/// stays 0, as the segmenter writes it). A no-op for a frame without
/// `NEEDS_CSUM`.
pub fn complete_checksum(hdr: &VnetHdr, frame: &mut [u8]) -> Result<(), OffloadError> {
    if !hdr.needs_csum() {
        return Ok(());
    }
    let start = usize::from(hdr.csum_start);
    let field = start + usize::from(hdr.csum_offset);
    if field + 2 > frame.len() {
        return Err(OffloadError::Inconsistent);
    }
    let sum = checksum(&frame[start..], 0);
    // UDP's 0 means "no checksum": a sum of 0 goes as 0xffff there, as
    // the segmenter writes it; TCP keeps 0.
    let udp = usize::from(hdr.csum_offset) == UDP_CSUM;
    put16(frame, field, if sum == 0 && udp { 0xffff } else { sum });
    Ok(())
}

/// The `NEEDS_CSUM` header of a plain frame (no offload header came with
/// it) whose TCP or UDP checksum field holds only the pseudo-header sum, as
/// Linux leaves a `CHECKSUM_PARTIAL` packet: a kernel VXLAN device whose
/// underlay is a veth with checksum offload on encapsulates such packets
/// without completing them. `None` for any other frame: one whose checksum
/// field holds something else (complete or wrong, for the receiver to
/// check), a UDP datagram without a checksum, a fragment, a frame with
/// Ethernet padding after the IP packet (a partial sum is completed over
/// everything from `csum_start` to the frame's end), anything that is not
/// TCP or UDP over IP.
///
/// Only the headers are read. A complete checksum that happens to equal the
/// pseudo-header sum (one frame in 65,536) is marked too, and completing it
/// gives the same value again, so nothing right is made wrong.
pub fn partial_checksum(frame: &[u8]) -> Option<VnetHdr> {
    let l = parse_layers(frame).ok()?;
    let header = transport_header_len(frame, &l).ok()?;
    if l.end != frame.len() {
        return None;
    }
    let offset = if l.proto == TCP { TCP_CSUM } else { UDP_CSUM };
    let field = be16(frame, l.l4 + offset);
    if l.proto == UDP && field == 0 {
        return None;
    }
    let pseudo = fold64(u64::from(pseudo_header(frame, &l, l.end - l.l4)));
    if field != pseudo {
        return None;
    }
    Some(VnetHdr {
        flags: flags::NEEDS_CSUM,
        gso_type: gso::NONE,
        hdr_len: u16::try_from(l.l4 + header).ok()?,
        gso_size: 0,
        csum_start: u16::try_from(l.l4).ok()?,
        csum_offset: offset as u16,
    })
}

/// Where [`segment`] put its output: segment `i` starts at
/// `out[i * stride + headroom]` and is `stride - headroom` bytes long,
/// except the last, which is `last_len` bytes. With `count` 1, `stride` is
/// `headroom + last_len`.
///
/// A run of segments is therefore one buffer for a `UDP_SEGMENT` send with
/// segment size `stride`, once the caller has written its `headroom` bytes
/// (a VXLAN header) before each.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segments {
    /// How many segments.
    pub count: usize,
    /// Bytes from the start of one segment's headroom to the next's.
    pub stride: usize,
    /// Length of the last segment's frame (without headroom).
    pub last_len: usize,
}

impl Segments {
    /// The frame of segment `i` in `out` (the buffer given to
    /// [`segment`]), without its headroom; `None` past the last.
    pub fn frame<'a>(&self, out: &'a [u8], headroom: usize, i: usize) -> Option<&'a [u8]> {
        if i >= self.count {
            return None;
        }
        let len = if i + 1 == self.count {
            self.last_len
        } else {
            self.stride.checked_sub(headroom)?
        };
        let start = i.checked_mul(self.stride)?.checked_add(headroom)?;
        out.get(start..)?.get(..len)
    }

    /// Bytes of `out` the segments span, every headroom included: the
    /// length of the `UDP_SEGMENT` send.
    pub fn total_len(&self, headroom: usize) -> usize {
        self.count.saturating_sub(1) * self.stride + headroom + self.last_len
    }
}

/// Software GSO of one Ethernet super-frame: `hdr` and `frame` as read from
/// a TAP with `IFF_VNET_HDR`, the frame starting at the Ethernet header (up
/// to two VLAN tags allowed).
///
/// - TCPV4, TCPV6 (TSO): each segment carries the headers and `gso_size`
///   bytes of payload (the last what is left); its sequence number is
///   advanced, the IPv4 identification incremented per segment, the IPv4
///   total length or IPv6 payload length set, FIN and PSH kept on the last
///   segment only and CWR on the first only, the IPv4 header checksum and
///   the full TCP checksum computed.
/// - UDP_L4 (USO): every segment is its own UDP datagram with its own
///   length and checksum (and IPv4 identification).
/// - A frame that is not GSO yields one segment, its checksum completed if
///   `NEEDS_CSUM`. So does a GSO frame whose payload fits in `gso_size`.
///
/// Each segment is a plain, fully checksummed Ethernet frame, written to
/// `out` with `headroom` free bytes before it, as [`Segments`] describes.
/// IPv4 options are copied to every segment; IPv6 extension headers are
/// refused; bytes after the IP packet (Ethernet padding) are dropped.
pub fn segment(
    hdr: &VnetHdr,
    frame: &[u8],
    headroom: usize,
    out: &mut [u8],
) -> Result<Segments, OffloadError> {
    segment_with(hdr, frame, headroom, out, Checksums::Complete)
}

/// What [`segment_with`] writes in each segment's TCP or UDP checksum.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Checksums {
    /// The full checksum: every segment is a plain frame any receiver
    /// takes.
    Complete,
    /// Only the pseudo-header sum, as a `NEEDS_CSUM` frame holds it (and as
    /// Linux's vxlan leaves inner checksums for a device that offloads
    /// them), so the payload is not read a second time: for a receiver
    /// that coalesces the segments (and rewrites the field) or marks them
    /// `NEEDS_CSUM` ([`partial_checksum`] recognises every one) for the
    /// kernel that takes them, as another vswitchd does. A frame that is
    /// not GSO is copied as it is (complete, or partial if it came so).
    /// The IPv4 header checksum is computed either way.
    Partial,
}

/// [`segment`], with the transport checksums `csum` says.
pub fn segment_with(
    hdr: &VnetHdr,
    frame: &[u8],
    headroom: usize,
    out: &mut [u8],
    csum: Checksums,
) -> Result<Segments, OffloadError> {
    if !hdr.is_gso() {
        let needed = headroom.saturating_add(frame.len());
        let dst = out
            .get_mut(headroom..needed)
            .ok_or(OffloadError::OutTooSmall { needed })?;
        dst.copy_from_slice(frame);
        if csum == Checksums::Complete {
            complete_checksum(hdr, dst)?;
        }
        return Ok(Segments {
            count: 1,
            stride: needed,
            last_len: frame.len(),
        });
    }
    let kind = hdr.gso_type & !gso::ECN;
    let (want_v6, want_proto) = match kind {
        gso::TCPV4 => (Some(false), TCP),
        gso::TCPV6 => (Some(true), TCP),
        gso::UDP_L4 => (None, UDP),
        _ => return Err(OffloadError::UnknownGsoType(hdr.gso_type)),
    };
    if hdr.gso_size == 0 {
        return Err(OffloadError::ZeroGsoSize);
    }
    if usize::from(hdr.hdr_len) > frame.len() {
        return Err(OffloadError::Inconsistent);
    }
    let l = parse_layers(frame)?;
    if want_v6.is_some_and(|v6| v6 != l.v6) || l.proto != want_proto {
        return Err(OffloadError::ProtocolMismatch);
    }
    let th = transport_header_len(frame, &l)?;
    let csum_field = if want_proto == TCP {
        TCP_CSUM
    } else {
        UDP_CSUM
    };
    if hdr.needs_csum()
        && (usize::from(hdr.csum_start) != l.l4 || usize::from(hdr.csum_offset) != csum_field)
    {
        return Err(OffloadError::Inconsistent);
    }

    let headers = l.l4 + th;
    let payload = l.end - headers;
    let mss = usize::from(hdr.gso_size);
    let count = payload.div_ceil(mss).max(1);
    let last_payload = payload - (count - 1) * mss;
    let last_len = headers + last_payload;
    let stride = headroom.saturating_add(if count == 1 { last_len } else { headers + mss });
    let needed = (count - 1)
        .saturating_mul(stride)
        .saturating_add(headroom)
        .saturating_add(last_len);
    if out.len() < needed {
        return Err(OffloadError::OutTooSmall { needed });
    }

    let ip_id = if l.v6 { 0 } else { be16(frame, l.l3 + 4) };
    let seq = if want_proto == TCP {
        u32::from_be_bytes([
            frame[l.l4 + 4],
            frame[l.l4 + 5],
            frame[l.l4 + 6],
            frame[l.l4 + 7],
        ])
    } else {
        0
    };
    let pseudo = pseudo_header(frame, &l, 0);
    let head = &frame[..headers];
    let body = &frame[headers..l.end];
    for (i, (dst, chunk)) in out[headroom..needed]
        .chunks_mut(stride)
        .zip(body.chunks(mss).chain(std::iter::once(&[][..])))
        .take(count)
        .enumerate()
    {
        let len = headers + chunk.len();
        let dst = &mut dst[..len];
        dst[..headers].copy_from_slice(head);
        dst[headers..].copy_from_slice(chunk);
        let l4_len = th + chunk.len();
        if l.v6 {
            put16(dst, l.l3 + 4, l4_len as u16);
        } else {
            put16(dst, l.l3 + 2, (l.l4 - l.l3 + l4_len) as u16);
            put16(dst, l.l3 + 4, ip_id.wrapping_add(i as u16));
            put16(dst, l.l3 + 10, 0);
            let c = checksum(&dst[l.l3..l.l4], 0);
            put16(dst, l.l3 + 10, c);
        }
        let t = l.l4;
        if want_proto == TCP {
            let s = seq.wrapping_add((i * mss) as u32);
            dst[t + 4..t + 8].copy_from_slice(&s.to_be_bytes());
            if i + 1 != count {
                dst[t + 13] &= !(TCP_FIN | TCP_PSH);
            }
            if i != 0 {
                dst[t + 13] &= !TCP_CWR;
            }
        } else {
            put16(dst, t + 4, l4_len as u16);
        }
        // The length is added separately: the sum is the same, and `pseudo`
        // stays one value for every segment.
        let c = match csum {
            Checksums::Partial => fold64(u64::from(pseudo + l4_len as u32)),
            Checksums::Complete => {
                put16(dst, t + csum_field, 0);
                match checksum(&dst[t..], pseudo + l4_len as u32) {
                    0 if want_proto == UDP => 0xffff,
                    c => c,
                }
            }
        };
        put16(dst, t + csum_field, c);
    }
    Ok(Segments {
        count,
        stride,
        last_len,
    })
}

// ---------------------------------------------------------------------------
// Receive coalescing.

/// What [`Gro::offer`] did with a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Offer {
    /// The frame is now part of the pending run (or starts it).
    Absorbed,
    /// The frame cannot extend the pending run, or cannot be coalesced at
    /// all; the pending run is untouched.
    Rejected,
}

/// The pending run of a [`Gro`]: where its headers are and what the next
/// segment must look like. Offsets are from the start of the frame.
#[derive(Clone, Copy, Debug, Default)]
struct Run {
    l3: usize,
    l4: usize,
    /// End of the TCP header: where the payload starts.
    headers: usize,
    v6: bool,
    /// Payload bytes of the first segment; no later one may be larger.
    gso_size: usize,
    segments: usize,
    /// Payload bytes absorbed.
    payload: usize,
    next_seq: u32,
    /// The IPv4 identification the next segment must carry (unless DF).
    next_id: u16,
    /// The first segment's TCP flags.
    tcp_flags: u8,
    /// No segment can follow: the last was short or had PSH.
    closed: bool,
}

/// A parsed TCP segment that could be coalesced.
#[derive(Clone, Copy, Debug)]
struct TcpSegment {
    layers: Layers,
    headers: usize,
    seq: u32,
    flags: u8,
}

/// Generic receive offload for frames received from the tunnel: coalesces
/// consecutive TCP segments of one flow (plain Ethernet frames, up to two
/// VLAN tags) into one super-frame, `[VnetHdr | frame]`, to write to a TAP
/// with `IFF_VNET_HDR`, the way Linux's `tcp_gro_receive` does.
///
/// Caller protocol, per received frame: [`Gro::offer`] it; on
/// [`Offer::Rejected`], deliver [`Gro::pending`] (if [`Gro::has_pending`]),
/// [`Gro::reset`], and offer the frame again; if it is still rejected,
/// deliver it plain (with [`VnetHdr::NONE`]). At the end of a batch deliver
/// what is pending and reset.
#[derive(Debug)]
pub struct Gro {
    /// `[VnetHdr | frame]`; `len` bytes of it are the pending run.
    buf: Box<[u8]>,
    len: usize,
    verify: bool,
    run: Run,
}

impl Gro {
    /// The largest frame a run can grow to: an IP packet of 65535 bytes
    /// behind an Ethernet header with one VLAN tag.
    pub const MAX_FRAME: usize = MAX_IP + ETH_LEN + 4;

    /// A coalescer with its buffer of `VnetHdr::LEN + MAX_FRAME` bytes.
    ///
    /// With `verify`, each segment's TCP checksum is checked before it is
    /// absorbed (for senders whose outer UDP checksum may be zero, such as
    /// the kernel's vxlan); a bad one is rejected, so that it is delivered
    /// plain and the receiving kernel drops it. Without, the tunnel is
    /// trusted to have checked its own checksum. IPv4 header checksums are
    /// checked either way.
    pub fn new(verify: bool) -> Gro {
        Gro {
            buf: vec![0u8; VnetHdr::LEN + Gro::MAX_FRAME].into_boxed_slice(),
            len: 0,
            verify,
            run: Run::default(),
        }
    }

    /// Offers one received Ethernet frame. [`Offer::Absorbed`]: the frame
    /// is now part of (or starts) the pending run. [`Offer::Rejected`]: it
    /// cannot extend the pending run (other MACs, VLAN tags or flow, another
    /// IP or TCP header apart from lengths, identification, checksums, window
    /// and PSH, sequence not contiguous, more payload than the run's
    /// `gso_size`, CWR, a run of 64 KiB reached, an earlier segment short or
    /// with PSH), or is not coalescable at all (not TCP, no payload, SYN,
    /// FIN, RST or URG, an IPv4 fragment, ECN CE, IPv6 extension headers, a
    /// bad IPv4 header checksum, or with `verify` a bad TCP checksum). The
    /// pending run is untouched by a rejection.
    pub fn offer(&mut self, frame: &[u8]) -> Offer {
        let Some(seg) = self.coalescable(frame) else {
            return Offer::Rejected;
        };
        if self.len == 0 {
            self.start(frame, &seg);
            return Offer::Absorbed;
        }
        if !self.extends(frame, &seg) {
            return Offer::Rejected;
        }
        self.append(frame, &seg);
        Offer::Absorbed
    }

    /// Whether a run is pending.
    pub fn has_pending(&self) -> bool {
        self.len != 0
    }

    /// How many segments the pending run holds.
    pub fn pending_segments(&self) -> usize {
        if self.len == 0 {
            0
        } else {
            self.run.segments
        }
    }

    /// The pending run as `[VnetHdr | frame]` for a TAP write (empty when
    /// nothing is pending). One segment: [`VnetHdr::NONE`] (or, if its
    /// checksum was partial, the header [`partial_checksum`] finds) and the
    /// frame as received (less any Ethernet padding). Several: `gso_type` TCPV4 or
    /// TCPV6 (with [`gso::ECN`] if the first segment had CWR), `gso_size`
    /// the first segment's payload, `hdr_len` the headers, `NEEDS_CSUM` with
    /// `csum_start` at the TCP header and `csum_offset` 16, the TCP checksum
    /// field holding the pseudo-header sum (not complemented) as Linux
    /// expects of `CHECKSUM_PARTIAL`, the IPv4 total length and header
    /// checksum or the IPv6 payload length set, the first segment's
    /// headers otherwise, with PSH if the last segment had it.
    pub fn pending(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    /// Drops the pending run.
    pub fn reset(&mut self) {
        self.len = 0;
        self.run = Run::default();
    }

    /// Parses `frame` as a TCP segment that could start or extend a run.
    fn coalescable(&self, frame: &[u8]) -> Option<TcpSegment> {
        let l = parse_layers(frame).ok()?;
        if l.proto != TCP || l.end > Gro::MAX_FRAME {
            return None;
        }
        let th = transport_header_len(frame, &l).ok()?;
        let headers = l.l4 + th;
        let flags = frame[l.l4 + 13];
        if headers == l.end || flags & (TCP_SYN | TCP_FIN | TCP_RST | TCP_URG) != 0 {
            return None;
        }
        let ecn = if l.v6 {
            frame[l.l3 + 1] >> 4
        } else {
            frame[l.l3 + 1]
        };
        if ecn & 3 == 3 {
            return None;
        }
        if !l.v6 && checksum(&frame[l.l3..l.l4], 0) != 0 {
            return None;
        }
        if self.verify {
            let pseudo = pseudo_header(frame, &l, l.end - l.l4);
            if checksum(&frame[l.l4..l.end], pseudo) != 0 {
                return None;
            }
        }
        let t = l.l4;
        Some(TcpSegment {
            layers: l,
            headers,
            seq: u32::from_be_bytes([frame[t + 4], frame[t + 5], frame[t + 6], frame[t + 7]]),
            flags,
        })
    }

    /// Starts a run with `seg`: the frame unchanged behind `VnetHdr::NONE`,
    /// or behind the `NEEDS_CSUM` header of a partial checksum
    /// ([`partial_checksum`]: a member may send one), so that a run left at
    /// one segment is still taken.
    fn start(&mut self, frame: &[u8], seg: &TcpSegment) {
        let l = seg.layers;
        partial_checksum(&frame[..l.end])
            .unwrap_or(VnetHdr::NONE)
            .write(&mut self.buf);
        self.buf[VnetHdr::LEN..VnetHdr::LEN + l.end].copy_from_slice(&frame[..l.end]);
        self.len = VnetHdr::LEN + l.end;
        let payload = l.end - seg.headers;
        self.run = Run {
            l3: l.l3,
            l4: l.l4,
            headers: seg.headers,
            v6: l.v6,
            gso_size: payload,
            segments: 1,
            payload,
            next_seq: seg.seq.wrapping_add(payload as u32),
            next_id: if l.v6 {
                0
            } else {
                be16(frame, l.l3 + 4).wrapping_add(1)
            },
            tcp_flags: seg.flags,
            closed: seg.flags & TCP_PSH != 0,
        };
    }

    /// Whether `seg` can be appended to the pending run.
    fn extends(&self, frame: &[u8], seg: &TcpSegment) -> bool {
        let run = &self.run;
        let l = seg.layers;
        let payload = l.end - seg.headers;
        if run.closed
            || l.l3 != run.l3
            || l.l4 != run.l4
            || seg.headers != run.headers
            || l.v6 != run.v6
            || seg.seq != run.next_seq
            || payload > run.gso_size
            || run.l4 - run.l3 + (run.headers - run.l4) + run.payload + payload > MAX_IP
            || self.len + payload > self.buf.len()
            || seg.flags & TCP_CWR != 0
            || (seg.flags ^ run.tcp_flags) & !(TCP_PSH | TCP_CWR) != 0
        {
            return false;
        }
        let first = &self.buf[VnetHdr::LEN..self.len];
        let same = |range: std::ops::Range<usize>| first[range.clone()] == frame[range];
        let (l3, t) = (l.l3, l.l4);
        let ip_same = if l.v6 {
            // Version, traffic class, flow label; next header, hop limit,
            // addresses. Not the payload length.
            same(l3..l3 + 4) && same(l3 + 6..l3 + 40)
        } else {
            // All but total length, identification and checksum; a segment
            // without DF must carry the next identification.
            let df = frame[l3 + 6] & 0x40 != 0;
            same(l3..l3 + 2)
                && same(l3 + 6..l3 + 10)
                && same(l3 + 12..t)
                && (df || be16(frame, l3 + 4) == run.next_id)
        };
        // Ethernet header and tags; ports; acknowledgment number and data
        // offset; options. Not the window, checksum or urgent pointer.
        ip_same && same(0..l3) && same(t..t + 4) && same(t + 8..t + 13) && same(t + 20..seg.headers)
    }

    /// Appends `seg`'s payload to the run and rewrites the run's headers.
    fn append(&mut self, frame: &[u8], seg: &TcpSegment) {
        let l = seg.layers;
        let payload = &frame[seg.headers..l.end];
        self.buf[self.len..self.len + payload.len()].copy_from_slice(payload);
        self.len += payload.len();
        let run = &mut self.run;
        run.segments += 1;
        run.payload += payload.len();
        run.next_seq = run.next_seq.wrapping_add(payload.len() as u32);
        run.next_id = run.next_id.wrapping_add(1);
        let psh = seg.flags & TCP_PSH != 0;
        run.closed = psh || payload.len() < run.gso_size;
        let run = *run;

        let gso_type = if run.v6 { gso::TCPV6 } else { gso::TCPV4 };
        let ecn = if run.tcp_flags & TCP_CWR != 0 {
            gso::ECN
        } else {
            0
        };
        VnetHdr {
            flags: flags::NEEDS_CSUM,
            gso_type: gso_type | ecn,
            hdr_len: run.headers as u16,
            gso_size: run.gso_size as u16,
            csum_start: run.l4 as u16,
            csum_offset: TCP_CSUM as u16,
        }
        .write(&mut self.buf);
        let f = &mut self.buf[VnetHdr::LEN..self.len];
        let l4_len = run.headers - run.l4 + run.payload;
        if run.v6 {
            put16(f, run.l3 + 4, l4_len as u16);
        } else {
            put16(f, run.l3 + 2, (run.l4 - run.l3 + l4_len) as u16);
            put16(f, run.l3 + 10, 0);
            let c = checksum(&f[run.l3..run.l4], 0);
            put16(f, run.l3 + 10, c);
        }
        if psh {
            f[run.l4 + 13] |= TCP_PSH;
        }
        let layers = Layers {
            l3: run.l3,
            l4: run.l4,
            end: f.len(),
            v6: run.v6,
            proto: TCP,
        };
        let pseudo = fold64(u64::from(pseudo_header(f, &layers, l4_len)));
        put16(f, run.l4 + TCP_CSUM, pseudo);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::{NetSlice, SlicedPacket, TransportSlice};
    use proptest::prelude::*;
    use rstest::rstest;

    // -- An independent, naive Internet checksum: one 16-bit word at a time.

    fn naive_sum(data: &[u8], initial: u32) -> u16 {
        let mut sum = u64::from(initial);
        let mut i = 0;
        while i < data.len() {
            let hi = u64::from(data[i]) << 8;
            let lo = data.get(i + 1).map_or(0, |b| u64::from(*b));
            sum += hi | lo;
            i += 2;
        }
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        sum as u16
    }

    fn naive_pseudo(ip: &[u8], v6: bool, proto: u8, len: usize) -> u32 {
        let mut p = Vec::new();
        if v6 {
            p.extend_from_slice(&ip[8..40]);
            p.extend_from_slice(&(len as u32).to_be_bytes());
            p.extend_from_slice(&[0, 0, 0, proto]);
        } else {
            p.extend_from_slice(&ip[12..20]);
            p.extend_from_slice(&[0, proto]);
            p.extend_from_slice(&(len as u16).to_be_bytes());
        }
        u32::from(naive_sum(&p, 0))
    }

    // -- Super-frames built the way Linux hands them to a TAP.

    const MAC_A: [u8; 6] = [0x02, 0x42, 0x0a, 0, 0, 2];
    const MAC_B: [u8; 6] = [0x02, 0x42, 0x0a, 0, 0, 3];

    #[derive(Clone, Debug)]
    struct Spec {
        v6: bool,
        vlan: bool,
        udp: bool,
        /// IPv4 options (a multiple of 4 bytes).
        ip_options: Vec<u8>,
        /// TCP options (a multiple of 4 bytes).
        tcp_options: Vec<u8>,
        /// TCP flags besides ACK.
        flags: u8,
        df: bool,
        ip_id: u16,
        seq: u32,
        mss: u16,
        payload: Vec<u8>,
    }

    impl Spec {
        fn tcp(v6: bool, payload_len: usize, mss: u16) -> Spec {
            Spec {
                v6,
                vlan: false,
                udp: false,
                ip_options: Vec::new(),
                tcp_options: vec![1, 1, 8, 10, 0, 0, 0, 7, 0, 0, 0, 9],
                flags: 0,
                df: true,
                ip_id: 0x1234,
                seq: 0xffff_f000,
                mss,
                payload: (0..payload_len).map(|i| (i * 7 + i / 251) as u8).collect(),
            }
        }

        fn udp(v6: bool, payload_len: usize, mss: u16) -> Spec {
            Spec {
                udp: true,
                tcp_options: Vec::new(),
                ..Spec::tcp(v6, payload_len, mss)
            }
        }

        fn l3(&self) -> usize {
            if self.vlan {
                18
            } else {
                14
            }
        }

        fn l4(&self) -> usize {
            self.l3()
                + if self.v6 {
                    40
                } else {
                    20 + self.ip_options.len()
                }
        }

        fn th(&self) -> usize {
            if self.udp {
                8
            } else {
                20 + self.tcp_options.len()
            }
        }

        fn headers(&self) -> usize {
            self.l4() + self.th()
        }

        /// The transport header and payload with checksum field `csum`.
        fn transport(&self, csum: u16) -> Vec<u8> {
            let mut t = Vec::new();
            t.extend_from_slice(&40000u16.to_be_bytes());
            t.extend_from_slice(&5201u16.to_be_bytes());
            if self.udp {
                t.extend_from_slice(&((8 + self.payload.len()) as u16).to_be_bytes());
                t.extend_from_slice(&csum.to_be_bytes());
            } else {
                t.extend_from_slice(&self.seq.to_be_bytes());
                t.extend_from_slice(&0x0bad_cafeu32.to_be_bytes());
                t.push((((20 + self.tcp_options.len()) / 4) << 4) as u8);
                t.push(0x10 | self.flags);
                t.extend_from_slice(&0xfff0u16.to_be_bytes());
                t.extend_from_slice(&csum.to_be_bytes());
                t.extend_from_slice(&[0, 0]);
                t.extend_from_slice(&self.tcp_options);
            }
            t.extend_from_slice(&self.payload);
            t
        }

        /// The frame with the transport checksum field `csum`.
        fn frame_with(&self, csum: u16) -> Vec<u8> {
            let proto = if self.udp { UDP } else { TCP };
            let transport = self.transport(csum);
            let mut f = Vec::new();
            f.extend_from_slice(&MAC_B);
            f.extend_from_slice(&MAC_A);
            if self.vlan {
                f.extend_from_slice(&[0x81, 0x00, 0x00, 0x64]);
            }
            if self.v6 {
                f.extend_from_slice(&[0x86, 0xdd, 0x60, 0x01, 0x23, 0x45]);
                f.extend_from_slice(&(transport.len() as u16).to_be_bytes());
                f.extend_from_slice(&[proto, 64]);
                f.extend_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
                f.extend_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
            } else {
                f.extend_from_slice(&[0x08, 0x00]);
                let ihl = 20 + self.ip_options.len();
                let mut ip = vec![0x40 | (ihl / 4) as u8, 0x02];
                ip.extend_from_slice(&((ihl + transport.len()) as u16).to_be_bytes());
                ip.extend_from_slice(&self.ip_id.to_be_bytes());
                ip.extend_from_slice(&[if self.df { 0x40 } else { 0 }, 0, 64, proto, 0, 0]);
                ip.extend_from_slice(&[10, 0, 0, 2, 10, 0, 0, 3]);
                ip.extend_from_slice(&self.ip_options);
                let c = !naive_sum(&ip, 0);
                ip[10..12].copy_from_slice(&c.to_be_bytes());
                f.extend_from_slice(&ip);
            }
            f.extend_from_slice(&transport);
            f
        }

        /// A plain frame with a complete, correct checksum.
        fn plain(&self) -> Vec<u8> {
            let f = self.frame_with(0);
            let (l3, l4) = (self.l3(), self.l4());
            let proto = if self.udp { UDP } else { TCP };
            let pseudo = naive_pseudo(&f[l3..], self.v6, proto, f.len() - l4);
            let c = !naive_sum(&f[l4..], pseudo);
            let c = if c == 0 && self.udp { 0xffff } else { c };
            self.frame_with(c)
        }

        /// The super-frame as Linux writes it to a TAP: `NEEDS_CSUM`, the
        /// checksum field holding the pseudo-header sum.
        fn super_frame(&self) -> (VnetHdr, Vec<u8>) {
            let proto = if self.udp { UDP } else { TCP };
            let probe = self.frame_with(0);
            let l4_len = probe.len() - self.l4();
            let pseudo = naive_pseudo(&probe[self.l3()..], self.v6, proto, l4_len);
            let frame = self.frame_with(naive_sum(&[], pseudo));
            let gso_type = match (self.udp, self.v6) {
                (true, _) => gso::UDP_L4,
                (false, false) => gso::TCPV4,
                (false, true) => gso::TCPV6,
            } | if self.flags & TCP_CWR != 0 {
                gso::ECN
            } else {
                0
            };
            let hdr = VnetHdr {
                flags: flags::NEEDS_CSUM,
                gso_type,
                hdr_len: self.headers() as u16,
                gso_size: self.mss,
                csum_start: self.l4() as u16,
                csum_offset: if self.udp { 6 } else { 16 },
            };
            (hdr, frame)
        }
    }

    /// What a segment holds, after checking it independently: etherparse
    /// parses it, its IPv4 header checksum and transport checksum are right
    /// by the naive sum and by etherparse's, lengths add up.
    #[derive(Debug)]
    struct Checked {
        payload: Vec<u8>,
        ip_id: Option<u16>,
        seq: u32,
        flags: u8,
        df: bool,
    }

    fn check_segment(frame: &[u8], spec: &Spec) -> Checked {
        let p = SlicedPacket::from_ethernet(frame).expect("etherparse reads the segment");
        assert_eq!(p.vlan().is_some(), spec.vlan);
        let (l3, l4) = (spec.l3(), spec.l4());
        let (ip_id, df, src4, dst4, src6, dst6) = match p.net.as_ref().expect("IP") {
            NetSlice::Ipv4(ip) => {
                assert!(!spec.v6);
                let h = ip.header();
                assert_eq!(usize::from(h.total_len()), frame.len() - l3);
                assert_eq!(naive_sum(h.slice(), 0), 0xffff, "IPv4 header checksum");
                assert_eq!(h.options(), &spec.ip_options[..]);
                (
                    Some(h.identification()),
                    h.dont_fragment(),
                    h.source(),
                    h.destination(),
                    [0; 16],
                    [0; 16],
                )
            }
            NetSlice::Ipv6(ip) => {
                assert!(spec.v6);
                let h = ip.header();
                assert_eq!(usize::from(h.payload_length()), frame.len() - l3 - 40);
                (None, false, [0; 4], [0; 4], h.source(), h.destination())
            }
            other => panic!("unexpected {other:?}"),
        };
        let proto = if spec.udp { UDP } else { TCP };
        let pseudo = naive_pseudo(&frame[l3..], spec.v6, proto, frame.len() - l4);
        assert_eq!(
            naive_sum(&frame[l4..], pseudo),
            0xffff,
            "transport checksum"
        );
        match p.transport.as_ref().expect("transport") {
            TransportSlice::Tcp(tcp) => {
                assert!(!spec.udp);
                let want = if spec.v6 {
                    tcp.calc_checksum_ipv6(src6, dst6)
                } else {
                    tcp.calc_checksum_ipv4(src4, dst4)
                };
                assert_eq!(tcp.checksum(), want.unwrap());
                assert_eq!(tcp.options(), &spec.tcp_options[..]);
                assert_eq!(tcp.acknowledgment_number(), 0x0bad_cafe);
                Checked {
                    payload: tcp.payload().to_vec(),
                    ip_id,
                    seq: tcp.sequence_number(),
                    flags: frame[l4 + 13],
                    df,
                }
            }
            TransportSlice::Udp(udp) => {
                assert!(spec.udp);
                assert_eq!(usize::from(udp.length()), frame.len() - l4);
                assert_ne!(udp.checksum(), 0);
                Checked {
                    payload: udp.payload().to_vec(),
                    ip_id,
                    seq: 0,
                    flags: 0,
                    df,
                }
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    /// Segments `spec`'s super-frame and checks every segment; returns them.
    fn segment_and_check(spec: &Spec, headroom: usize) -> Vec<Vec<u8>> {
        let (hdr, frame) = spec.super_frame();
        let mut out = vec![0xa5u8; 200_000];
        let s = segment(&hdr, &frame, headroom, &mut out).expect("segments");
        let mss = usize::from(spec.mss);
        let want = spec.payload.len().div_ceil(mss).max(1);
        assert_eq!(s.count, want);
        let mut payload = Vec::new();
        let mut frames = Vec::new();
        for i in 0..s.count {
            let f = s.frame(&out, headroom, i).expect("segment in range");
            // The headroom is left alone.
            assert!(out[i * s.stride..i * s.stride + headroom]
                .iter()
                .all(|&b| b == 0xa5));
            let c = check_segment(f, spec);
            let last = i + 1 == s.count;
            if !last {
                assert_eq!(c.payload.len(), mss);
                assert_eq!(f.len(), s.stride - headroom);
            } else {
                assert_eq!(f.len(), s.last_len);
            }
            assert_eq!(c.df, spec.df && !spec.v6);
            if !spec.v6 {
                assert_eq!(c.ip_id, Some(spec.ip_id.wrapping_add(i as u16)));
            }
            if !spec.udp {
                assert_eq!(c.seq, spec.seq.wrapping_add((i * mss) as u32));
                let keep_last = TCP_FIN | TCP_PSH;
                let want = 0x10
                    | (spec.flags & !(keep_last | TCP_CWR))
                    | if last { spec.flags & keep_last } else { 0 }
                    | if i == 0 { spec.flags & TCP_CWR } else { 0 };
                assert_eq!(c.flags, want, "flags of segment {i}");
            }
            payload.extend_from_slice(&c.payload);
            frames.push(f.to_vec());
        }
        assert_eq!(payload, spec.payload);
        assert_eq!(
            s.total_len(headroom),
            (s.count - 1) * s.stride + headroom + s.last_len
        );
        frames
    }

    fn tcp_spec() -> impl Strategy<Value = Spec> {
        (
            any::<bool>(),
            any::<bool>(),
            prop::collection::vec(any::<u8>(), 0..=10).prop_map(|o| vec![1u8; o.len() * 4]),
            prop::collection::vec(any::<[u8; 4]>(), 0..=10),
            prop::sample::select(vec![
                0u8,
                TCP_PSH,
                TCP_CWR,
                TCP_PSH | TCP_CWR,
                0x40,
                0x40 | TCP_PSH,
            ]),
            any::<bool>(),
            any::<u16>(),
            any::<u32>(),
            1u16..=1500,
            0usize..=48,
            any::<u64>(),
        )
            .prop_map(
                |(v6, vlan, ip_options, tcp_options, flags, df, ip_id, seq, mss, n, seed)| {
                    let tcp_options: Vec<u8> = tcp_options.concat();
                    let headers = 22 + 60 + 60;
                    let len = (usize::from(mss) * n)
                        .min(65535 - headers)
                        .saturating_sub((seed % 7) as usize);
                    Spec {
                        v6,
                        vlan,
                        udp: false,
                        ip_options: if v6 { Vec::new() } else { ip_options },
                        tcp_options,
                        flags,
                        df,
                        ip_id,
                        seq,
                        mss,
                        payload: (0..len)
                            .map(|i| (seed >> (i % 57)) as u8 ^ i as u8)
                            .collect(),
                    }
                },
            )
    }

    /// `spec` as one plain frame's worth (3,000 bytes of payload at most),
    /// TCP or, with `udp`, UDP.
    fn plain_sized(mut spec: Spec, udp: bool) -> Spec {
        spec.udp = udp;
        spec.payload.truncate(3000);
        if udp {
            spec.tcp_options.clear();
        }
        spec
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(96))]

        #[test]
        fn checksum_matches_naive(data in prop::collection::vec(any::<u8>(), 0..3000),
                                  start in 0usize..9, initial in any::<u32>()) {
            let data = &data[start.min(data.len())..];
            prop_assert_eq!(ones_sum(data, initial), naive_sum(data, initial));
            prop_assert_eq!(checksum(data, initial), !naive_sum(data, initial));
        }

        #[test]
        fn tso_segments_then_gro_restores(spec in tcp_spec(), headroom in 0usize..20) {
            let frames = segment_and_check(&spec, headroom);
            let (hdr, original) = spec.super_frame();
            let mut gro = Gro::new(true);
            for (i, f) in frames.iter().enumerate() {
                let offered = gro.offer(f);
                if spec.payload.is_empty() {
                    prop_assert_eq!(offered, Offer::Rejected, "a segment without payload");
                    return Ok(());
                }
                prop_assert_eq!(offered, Offer::Absorbed, "segment {} of {}", i, frames.len());
            }
            prop_assert_eq!(gro.pending_segments(), frames.len());
            let pending = gro.pending();
            let vnet = VnetHdr::parse(pending).unwrap();
            if frames.len() == 1 {
                // Plain, save the complete sum in 65,536 that equals the
                // pseudo-header sum (marked partial, completed to itself).
                prop_assert!(vnet == VnetHdr::NONE || partial_checksum(&frames[0]) == Some(vnet));
                prop_assert_eq!(&pending[VnetHdr::LEN..], &frames[0][..]);
            } else {
                // The run is the super-frame it was cut from, byte for byte.
                prop_assert_eq!(vnet, hdr);
                prop_assert_eq!(&pending[VnetHdr::LEN..], &original[..]);
                let mut f = pending[VnetHdr::LEN..].to_vec();
                complete_checksum(&vnet, &mut f).unwrap();
                let c = check_segment(&f, &spec);
                prop_assert_eq!(c.payload, spec.payload.clone());
                prop_assert_eq!(c.flags, 0x10 | spec.flags);
            }
            // Any segment offered again does not fit behind the run.
            prop_assert_eq!(gro.offer(&frames[0]), Offer::Rejected);
        }

        #[test]
        fn uso_segments(v6 in any::<bool>(), vlan in any::<bool>(), mss in 1u16..=1500,
                        n in 0usize..=30, df in any::<bool>(), seed in any::<u8>()) {
            let len = (usize::from(mss) * n).min(60_000).saturating_sub(usize::from(seed % 5));
            let mut spec = Spec::udp(v6, len, mss);
            spec.vlan = vlan;
            spec.df = df;
            segment_and_check(&spec, 8);
        }

        /// Segments left partial (for another vswitchd) differ from the
        /// complete ones in the checksum field only; the receiver tells
        /// each by its headers, and completing it gives the complete
        /// segment byte for byte.
        #[test]
        fn partial_segments_are_found_and_completed(spec in tcp_spec(), udp in any::<bool>(),
                                                     headroom in 0usize..20) {
            let mut spec = spec;
            if udp {
                spec.udp = true;
                spec.tcp_options.clear();
            }
            let (hdr, frame) = spec.super_frame();
            let (mut full, mut part) = (vec![0u8; 200_000], vec![0u8; 200_000]);
            let a = segment(&hdr, &frame, headroom, &mut full).unwrap();
            let b = segment_with(&hdr, &frame, headroom, &mut part, Checksums::Partial).unwrap();
            prop_assert_eq!(a, b);
            for i in 0..a.count {
                let want = a.frame(&full, headroom, i).unwrap();
                let mut got = b.frame(&part, headroom, i).unwrap().to_vec();
                let found = partial_checksum(&got);
                prop_assert!(found.is_some(), "segment {} of {} not found partial", i, a.count);
                complete_checksum(&found.unwrap(), &mut got).unwrap();
                prop_assert_eq!(&got[..], want);
            }
            // Coalesced again by a receiver that trusts its tunnel, they
            // give the super-frame back, or, one segment alone, a frame
            // marked partial whose completion is the complete segment.
            if spec.udp || spec.payload.is_empty() {
                return Ok(());
            }
            let mut gro = Gro::new(false);
            for i in 0..b.count {
                let f = b.frame(&part, headroom, i).unwrap();
                prop_assert_eq!(gro.offer(f), Offer::Absorbed, "segment {} of {}", i, b.count);
            }
            let pending = gro.pending();
            let vnet = VnetHdr::parse(pending).unwrap();
            prop_assert!(vnet.needs_csum());
            if b.count == 1 {
                let mut f = pending[VnetHdr::LEN..].to_vec();
                complete_checksum(&vnet, &mut f).unwrap();
                prop_assert_eq!(&f[..], a.frame(&full, headroom, 0).unwrap());
            } else {
                prop_assert_eq!(vnet, hdr);
                prop_assert_eq!(&pending[VnetHdr::LEN..], &frame[..]);
            }
        }

        #[test]
        fn complete_checksum_fills_partial(spec in tcp_spec(), udp in any::<bool>()) {
            let spec = plain_sized(spec, udp);
            let (mut hdr, mut frame) = spec.super_frame();
            hdr.gso_type = gso::NONE;
            complete_checksum(&hdr, &mut frame).unwrap();
            prop_assert_eq!(&frame, &spec.plain());
            check_segment(&frame, &spec);
        }

        /// A plain frame left partial (as a kernel VXLAN device on a veth
        /// with offloads sends it) is told by its headers alone, and the
        /// header found completes it into the frame with the right sum.
        #[test]
        fn partial_checksum_found_and_completed(spec in tcp_spec(), udp in any::<bool>()) {
            let spec = plain_sized(spec, udp);
            let (want, mut frame) = spec.super_frame();
            let hdr = partial_checksum(&frame).expect("a partial checksum is found");
            prop_assert_eq!(hdr.csum_start, want.csum_start);
            prop_assert_eq!(hdr.csum_offset, want.csum_offset);
            prop_assert!(hdr.needs_csum() && !hdr.is_gso());
            prop_assert_eq!(usize::from(hdr.hdr_len), spec.headers());
            complete_checksum(&hdr, &mut frame).unwrap();
            prop_assert_eq!(&frame, &spec.plain());
            // A complete checksum is left alone, save the one value in
            // 65,536 that equals the pseudo-header sum, which completing
            // gives again.
            if let Some(h) = partial_checksum(&frame) {
                let mut again = frame.clone();
                complete_checksum(&h, &mut again).unwrap();
                prop_assert_eq!(&again, &frame);
            }
        }

        #[test]
        fn partial_checksum_never_panics(frame in prop::collection::vec(any::<u8>(), 0..200)) {
            let _ = partial_checksum(&frame);
        }
    }

    #[test]
    fn partial_checksum_ignores_what_it_cannot_complete() {
        // Ethernet padding after the IP packet: completing over it would be
        // wrong.
        let spec = Spec::tcp(false, 0, 1448);
        let (_, mut frame) = spec.super_frame();
        assert!(partial_checksum(&frame).is_some());
        frame.extend_from_slice(&[0; 6]);
        assert_eq!(partial_checksum(&frame), None);
        // A wrong checksum is not "repaired": the receiver drops it.
        let (_, mut frame) = spec.super_frame();
        let at = spec.l4() + TCP_CSUM;
        frame[at] ^= 0x40;
        assert_eq!(partial_checksum(&frame), None);
        // UDP over IPv4 without a checksum.
        let spec = Spec::udp(false, 20, 1448);
        let mut frame = spec.plain();
        put16(&mut frame, spec.l4() + UDP_CSUM, 0);
        assert_eq!(partial_checksum(&frame), None);
        // Not TCP or UDP, and not IP.
        assert_eq!(partial_checksum(&[0u8; 60]), None);
    }

    #[test]
    fn checksum_every_short_length_and_offset() {
        let data: Vec<u8> = (0..80u8).map(|i| i.wrapping_mul(97) ^ 0xc3).collect();
        for start in 0..8 {
            for len in 0..=64 {
                let d = &data[start..start + len];
                assert_eq!(
                    ones_sum(d, 0x1_fffe),
                    naive_sum(d, 0x1_fffe),
                    "{start}+{len}"
                );
            }
        }
        // Carries out of 64 bits: all ones.
        let ones = vec![0xffu8; 4099];
        assert_eq!(ones_sum(&ones, u32::MAX), naive_sum(&ones, u32::MAX));
    }

    #[rstest]
    #[case::empty(&[], 0, 0xffff)]
    #[case::one(&[0x01], 0, 0xfeff)]
    #[case::rfc1071(&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7], 0, 0x220d)]
    #[case::initial(&[0xff, 0xff], 1, 0xfffe)]
    fn checksum_known_values(#[case] data: &[u8], #[case] initial: u32, #[case] want: u16) {
        assert_eq!(checksum(data, initial), want);
    }

    #[test]
    fn vnet_hdr_round_trip() {
        let h = VnetHdr {
            flags: flags::NEEDS_CSUM,
            gso_type: gso::TCPV4 | gso::ECN,
            hdr_len: 66,
            gso_size: 1448,
            csum_start: 34,
            csum_offset: 16,
        };
        let mut b = [0u8; 12];
        h.write(&mut b);
        assert_eq!(&b[..10], &[1, 0x81, 66, 0, 0xa8, 0x05, 34, 0, 16, 0]);
        assert_eq!(VnetHdr::parse(&b), Ok(h));
        assert!(h.is_gso() && h.needs_csum());
        assert!(!VnetHdr::NONE.is_gso() && !VnetHdr::NONE.needs_csum());
        assert_eq!(VnetHdr::parse(&b[..9]), Err(OffloadError::Truncated));
    }

    #[test]
    fn plain_frame_is_one_segment() {
        let spec = Spec::tcp(false, 100, 1448);
        let frame = spec.plain();
        let mut out = vec![0u8; 300];
        let s = segment(&VnetHdr::NONE, &frame, 8, &mut out).unwrap();
        assert_eq!(
            s,
            Segments {
                count: 1,
                stride: 8 + frame.len(),
                last_len: frame.len()
            }
        );
        assert_eq!(s.frame(&out, 8, 0), Some(&frame[..]));
        assert_eq!(s.frame(&out, 8, 1), None);
        // The same frame with its checksum left partial comes out complete.
        let (mut hdr, partial) = spec.super_frame();
        hdr.gso_type = gso::NONE;
        let s = segment(&hdr, &partial, 8, &mut out).unwrap();
        assert_eq!(s.frame(&out, 8, 0), Some(&frame[..]));
    }

    #[test]
    fn gso_frame_within_gso_size_is_one_segment() {
        let spec = Spec::tcp(true, 1000, 1448);
        let frames = segment_and_check(&spec, 8);
        assert_eq!(frames.len(), 1);
        assert_eq!(frames[0], spec.plain());
    }

    #[test]
    fn gso_frame_padding_is_dropped() {
        let spec = Spec::tcp(false, 3000, 1000);
        let (hdr, mut frame) = spec.super_frame();
        frame.extend_from_slice(&[0; 6]);
        let mut out = vec![0u8; 8000];
        let s = segment(&hdr, &frame, 0, &mut out).unwrap();
        assert_eq!(s.count, 3);
        check_segment(s.frame(&out, 0, 2).unwrap(), &spec);
    }

    /// One way to spoil a TCPv4 super-frame.
    #[derive(Clone, Copy, Debug)]
    enum Spoil {
        GsoSizeZero,
        Ufo,
        UnknownType,
        Tcpv6OnIpv4,
        UsoOnTcp,
        NotIp,
        NotTcp,
        HdrLenPastFrame,
        CsumStart,
        CsumOffset,
        IpVersion,
        IhlShort,
        TotalBelowIhl,
        TotalBelowTcp,
        DataOffsetShort,
        DataOffsetPastPacket,
        MoreFragments,
        FragmentOffset,
        TotalPastFrame,
    }

    /// A TCPv4 super-frame (IP header at 14, TCP at 34) spoilt by `spoil`.
    fn spoilt(spoil: Spoil) -> (VnetHdr, Vec<u8>) {
        let (mut h, mut f) = Spec::tcp(false, 4000, 1448).super_frame();
        match spoil {
            Spoil::GsoSizeZero => h.gso_size = 0,
            Spoil::Ufo => h.gso_type = gso::UDP,
            Spoil::UnknownType => h.gso_type = 2,
            Spoil::Tcpv6OnIpv4 => h.gso_type = gso::TCPV6,
            Spoil::UsoOnTcp => h.gso_type = gso::UDP_L4,
            Spoil::NotIp => f[12..14].copy_from_slice(&[0x08, 0x06]),
            Spoil::NotTcp => f[14 + 9] = 132,
            Spoil::HdrLenPastFrame => h.hdr_len = f.len() as u16 + 1,
            Spoil::CsumStart => h.csum_start += 4,
            Spoil::CsumOffset => h.csum_offset = 6,
            Spoil::IpVersion => f[14] = 0x55,
            Spoil::IhlShort => f[14] = 0x44,
            Spoil::TotalBelowIhl => f[16..18].copy_from_slice(&[0, 19]),
            Spoil::TotalBelowTcp => f[16..18].copy_from_slice(&[0, 30]),
            Spoil::DataOffsetShort => f[34 + 12] = 0x40,
            Spoil::DataOffsetPastPacket => {
                f.truncate(14 + 40);
                f[16..18].copy_from_slice(&[0, 40]);
                f[34 + 12] = 0xf0;
                h.hdr_len = 0;
            }
            Spoil::MoreFragments => f[20] = 0x20,
            Spoil::FragmentOffset => f[21] = 1,
            Spoil::TotalPastFrame => {
                f.pop();
            }
        }
        (h, f)
    }

    #[rstest]
    #[case(Spoil::GsoSizeZero, OffloadError::ZeroGsoSize)]
    #[case(Spoil::Ufo, OffloadError::UnknownGsoType(gso::UDP))]
    #[case(Spoil::UnknownType, OffloadError::UnknownGsoType(2))]
    #[case(Spoil::Tcpv6OnIpv4, OffloadError::ProtocolMismatch)]
    #[case(Spoil::UsoOnTcp, OffloadError::ProtocolMismatch)]
    #[case(Spoil::NotIp, OffloadError::ProtocolMismatch)]
    #[case(Spoil::NotTcp, OffloadError::ProtocolMismatch)]
    #[case(Spoil::HdrLenPastFrame, OffloadError::Inconsistent)]
    #[case(Spoil::CsumStart, OffloadError::Inconsistent)]
    #[case(Spoil::CsumOffset, OffloadError::Inconsistent)]
    #[case(Spoil::IpVersion, OffloadError::Malformed)]
    #[case(Spoil::IhlShort, OffloadError::Malformed)]
    #[case(Spoil::TotalBelowIhl, OffloadError::Malformed)]
    #[case(Spoil::TotalBelowTcp, OffloadError::Malformed)]
    #[case(Spoil::DataOffsetShort, OffloadError::Malformed)]
    #[case(Spoil::DataOffsetPastPacket, OffloadError::Malformed)]
    #[case(Spoil::MoreFragments, OffloadError::Fragment)]
    #[case(Spoil::FragmentOffset, OffloadError::Fragment)]
    #[case(Spoil::TotalPastFrame, OffloadError::Truncated)]
    fn segment_refuses(#[case] spoil: Spoil, #[case] want: OffloadError) {
        let (hdr, frame) = spoilt(spoil);
        let mut out = vec![0u8; 20_000];
        assert_eq!(segment(&hdr, &frame, 8, &mut out), Err(want));
    }

    #[test]
    fn segment_refuses_ipv6_extension_headers() {
        let (hdr, mut frame) = Spec::tcp(true, 4000, 1448).super_frame();
        frame[14 + 6] = 0; // hop-by-hop options
        let mut out = vec![0u8; 20_000];
        assert_eq!(
            segment(&hdr, &frame, 8, &mut out),
            Err(OffloadError::Ipv6Extension)
        );
        frame[14 + 6] = 59; // no next header: not TCP
        assert_eq!(
            segment(&hdr, &frame, 8, &mut out),
            Err(OffloadError::ProtocolMismatch)
        );
    }

    #[test]
    fn segment_refuses_small_output() {
        let spec = Spec::tcp(false, 4000, 1000);
        let (hdr, frame) = spec.super_frame();
        let headers = spec.headers();
        let needed = 3 * (8 + headers + 1000) + 8 + headers + 1000;
        let mut out = vec![0u8; needed];
        assert_eq!(segment(&hdr, &frame, 8, &mut out).map(|s| s.count), Ok(4));
        assert_eq!(
            segment(&hdr, &frame, 8, &mut out[..needed - 1]),
            Err(OffloadError::OutTooSmall { needed })
        );
        assert_eq!(
            segment(&VnetHdr::NONE, &frame, 8, &mut out[..frame.len() + 7]),
            Err(OffloadError::OutTooSmall {
                needed: frame.len() + 8
            })
        );
        // A gso_size of 1 needs a segment per payload byte.
        let hdr = VnetHdr { gso_size: 1, ..hdr };
        assert!(matches!(
            segment(&hdr, &frame, 8, &mut out),
            Err(OffloadError::OutTooSmall { .. })
        ));
    }

    #[test]
    fn complete_checksum_refuses_field_past_frame() {
        let hdr = VnetHdr {
            flags: flags::NEEDS_CSUM,
            csum_start: 50,
            csum_offset: 16,
            ..VnetHdr::NONE
        };
        let mut frame = vec![0u8; 67];
        assert_eq!(
            complete_checksum(&hdr, &mut frame),
            Err(OffloadError::Inconsistent)
        );
        let mut frame = vec![0u8; 68];
        assert_eq!(complete_checksum(&hdr, &mut frame), Ok(()));
        assert_eq!(&frame[66..68], &[0xff, 0xff]);
        // Without NEEDS_CSUM nothing is read or written.
        assert_eq!(complete_checksum(&VnetHdr::NONE, &mut []), Ok(()));
    }

    #[rstest]
    fn every_prefix_is_refused(
        #[values(false, true)] v6: bool,
        #[values(false, true)] vlan: bool,
        #[values(false, true)] udp: bool,
    ) {
        let mut spec = if udp {
            Spec::udp(v6, 700, 256)
        } else {
            Spec::tcp(v6, 700, 256)
        };
        spec.vlan = vlan;
        spec.ip_options = if v6 { Vec::new() } else { vec![1; 8] };
        let (hdr, frame) = spec.super_frame();
        let mut bytes = vec![0u8; VnetHdr::LEN];
        hdr.write(&mut bytes);
        bytes.extend_from_slice(&frame);
        let mut out = vec![0u8; 4000];
        for n in 0..bytes.len() {
            let result = VnetHdr::parse(&bytes[..n])
                .and_then(|h| segment(&h, &bytes[VnetHdr::LEN..n], 8, &mut out));
            assert!(result.is_err(), "prefix of {n} bytes: {result:?}");
        }
        let h = VnetHdr::parse(&bytes).unwrap();
        assert_eq!(
            segment(&h, &bytes[VnetHdr::LEN..], 8, &mut out).map(|s| s.count),
            Ok(3)
        );
    }

    // -- GRO refusals.

    /// Recomputes the IPv4 header checksum and the TCP/UDP checksum of a
    /// plain frame without VLAN tags, after an edit.
    fn refix(f: &mut [u8]) {
        let v6 = f[12] == 0x86;
        let l4 = if v6 {
            54
        } else {
            14 + usize::from(f[14] & 0x0f) * 4
        };
        let end = if v6 {
            54 + usize::from(be16(f, 18))
        } else {
            14 + usize::from(be16(f, 16))
        };
        if !v6 {
            f[24..26].copy_from_slice(&[0, 0]);
            let c = !naive_sum(&f[14..l4], 0);
            f[24..26].copy_from_slice(&c.to_be_bytes());
        }
        let proto = if v6 { f[20] } else { f[23] };
        let at = l4 + if proto == UDP { 6 } else { 16 };
        f[at..at + 2].copy_from_slice(&[0, 0]);
        let pseudo = naive_pseudo(&f[14..], v6, proto, end - l4);
        let c = !naive_sum(&f[l4..end], pseudo);
        f[at..at + 2].copy_from_slice(&c.to_be_bytes());
    }

    /// Sets the IP length fields of a frame without VLAN tags to match its
    /// length.
    fn fix_lengths(f: &mut [u8]) {
        let n = f.len();
        if f[12] == 0x86 {
            f[18..20].copy_from_slice(&((n - 54) as u16).to_be_bytes());
        } else {
            f[16..18].copy_from_slice(&((n - 14) as u16).to_be_bytes());
        }
    }

    fn add_seq(f: &mut [u8], l4: usize, n: u32) {
        let seq = u32::from_be_bytes(f[l4 + 4..l4 + 8].try_into().unwrap());
        f[l4 + 4..l4 + 8].copy_from_slice(&seq.wrapping_add(n).to_be_bytes());
    }

    /// One way a second segment can fail to extend a run.
    #[derive(Clone, Copy, Debug)]
    enum Unlike {
        DstMac,
        SrcPort,
        SeqGap,
        Syn,
        Fin,
        Rst,
        Urg,
        Cwr,
        Ece,
        Ack,
        DataOffset,
        Option,
        LargerThanGsoSize,
        Fragment,
        EcnCe,
        Ttl,
        Tos,
        IdNotNext,
        NoPayload,
        BadIpChecksum,
        BadTcpChecksum,
        FlowLabel,
        HopLimit,
        ExtensionHeader,
    }

    #[rstest]
    #[case(false, Unlike::DstMac)]
    #[case(false, Unlike::SrcPort)]
    #[case(false, Unlike::SeqGap)]
    #[case(false, Unlike::Syn)]
    #[case(false, Unlike::Fin)]
    #[case(false, Unlike::Rst)]
    #[case(false, Unlike::Urg)]
    #[case(false, Unlike::Cwr)]
    #[case(false, Unlike::Ece)]
    #[case(false, Unlike::Ack)]
    #[case(false, Unlike::DataOffset)]
    #[case(false, Unlike::Option)]
    #[case(false, Unlike::LargerThanGsoSize)]
    #[case(false, Unlike::Fragment)]
    #[case(false, Unlike::EcnCe)]
    #[case(false, Unlike::Ttl)]
    #[case(false, Unlike::Tos)]
    #[case(false, Unlike::IdNotNext)]
    #[case(false, Unlike::NoPayload)]
    #[case(false, Unlike::BadIpChecksum)]
    #[case(false, Unlike::BadTcpChecksum)]
    #[case(true, Unlike::DstMac)]
    #[case(true, Unlike::SeqGap)]
    #[case(true, Unlike::Option)]
    #[case(true, Unlike::LargerThanGsoSize)]
    #[case(true, Unlike::EcnCe)]
    #[case(true, Unlike::NoPayload)]
    #[case(true, Unlike::BadTcpChecksum)]
    #[case(true, Unlike::FlowLabel)]
    #[case(true, Unlike::HopLimit)]
    #[case(true, Unlike::ExtensionHeader)]
    fn gro_rejects(#[case] v6: bool, #[case] unlike: Unlike) {
        let mut spec = Spec::tcp(v6, 3000, 1000);
        spec.df = false;
        let frames = segment_and_check(&spec, 0);
        let mut gro = Gro::new(true);
        assert_eq!(gro.offer(&frames[0]), Offer::Absorbed);
        let before = gro.pending().to_vec();
        let (l3, l4) = (14, spec.l4());
        let mut f = frames[1].clone();
        let mut fix = true;
        match unlike {
            Unlike::DstMac => f[0] ^= 1,
            Unlike::SrcPort => f[l4] ^= 1,
            Unlike::SeqGap => add_seq(&mut f, l4, 1),
            Unlike::Syn => f[l4 + 13] |= TCP_SYN,
            Unlike::Fin => f[l4 + 13] |= TCP_FIN,
            Unlike::Rst => f[l4 + 13] |= TCP_RST,
            Unlike::Urg => f[l4 + 13] |= TCP_URG,
            Unlike::Cwr => f[l4 + 13] |= TCP_CWR,
            Unlike::Ece => f[l4 + 13] |= 0x40,
            Unlike::Ack => f[l4 + 11] ^= 1,
            Unlike::DataOffset => {
                // Four option bytes fewer, payload the same length.
                f.drain(l4 + 28..l4 + 32);
                f[l4 + 12] -= 0x10;
                fix_lengths(&mut f);
            }
            Unlike::Option => f[l4 + 24] ^= 1,
            Unlike::LargerThanGsoSize => {
                f.push(0x77);
                fix_lengths(&mut f);
            }
            Unlike::Fragment => f[l3 + 6] |= 0x20,
            Unlike::EcnCe => f[l3 + 1] |= if v6 { 0x30 } else { 0x03 },
            Unlike::Ttl => f[l3 + 8] -= 1,
            Unlike::Tos => f[l3 + 1] ^= 0x04,
            Unlike::IdNotNext => f[l3 + 5] ^= 0x10,
            Unlike::NoPayload => {
                f.truncate(spec.headers());
                fix_lengths(&mut f);
            }
            Unlike::BadIpChecksum => {
                refix(&mut f);
                f[l3 + 10] ^= 1;
                fix = false;
            }
            Unlike::BadTcpChecksum => {
                f[l4 + 16] ^= 1;
                fix = false;
            }
            Unlike::FlowLabel => f[l3 + 3] ^= 1,
            Unlike::HopLimit => f[l3 + 7] -= 1,
            Unlike::ExtensionHeader => f[l3 + 6] = 0,
        }
        if fix {
            refix(&mut f);
        }
        assert_eq!(gro.offer(&f), Offer::Rejected, "{unlike:?}");
        assert_eq!(gro.pending(), &before[..], "rejection left the run alone");
        assert_eq!(gro.pending_segments(), 1);
        // The unspoilt segment still extends the run.
        assert_eq!(gro.offer(&frames[1]), Offer::Absorbed);
        assert_eq!(gro.pending_segments(), 2);
    }

    #[test]
    fn gro_without_verify_takes_a_bad_tcp_checksum_and_ignores_id_with_df() {
        let spec = Spec::tcp(false, 3000, 1000);
        let frames = segment_and_check(&spec, 0);
        let mut second = frames[1].clone();
        second[34 + 16] ^= 1;
        second[14 + 5] ^= 0x10; // identification: DF is set, so it is free
        refix_ip_only(&mut second);
        let mut gro = Gro::new(true);
        assert_eq!(gro.offer(&frames[0]), Offer::Absorbed);
        assert_eq!(gro.offer(&second), Offer::Rejected);
        let mut gro = Gro::new(false);
        assert_eq!(gro.offer(&frames[0]), Offer::Absorbed);
        assert_eq!(gro.offer(&second), Offer::Absorbed);
        assert_eq!(gro.offer(&frames[2]), Offer::Absorbed);
        assert_eq!(gro.pending_segments(), 3);
    }

    fn refix_ip_only(f: &mut [u8]) {
        f[24..26].copy_from_slice(&[0, 0]);
        let c = !naive_sum(&f[14..34], 0);
        f[24..26].copy_from_slice(&c.to_be_bytes());
    }

    #[rstest]
    fn gro_closes_a_run_after_psh_or_a_short_segment(#[values(false, true)] psh: bool) {
        let spec = Spec::tcp(false, 3000, 1000);
        let frames = segment_and_check(&spec, 0);
        let l4 = spec.l4();
        let mut second = frames[1].clone();
        let mut third = frames[2].clone();
        if psh {
            second[l4 + 13] |= TCP_PSH;
        } else {
            second.truncate(second.len() - 500);
            fix_lengths(&mut second);
            add_seq(&mut third, l4, (-500i32) as u32);
        }
        refix(&mut second);
        refix(&mut third);
        let mut gro = Gro::new(true);
        assert_eq!(gro.offer(&frames[0]), Offer::Absorbed);
        assert_eq!(gro.offer(&second), Offer::Absorbed);
        assert_eq!(gro.offer(&third), Offer::Rejected);
        let pending = gro.pending();
        let mut f = pending[VnetHdr::LEN..].to_vec();
        assert_eq!(f[l4 + 13] & TCP_PSH != 0, psh);
        complete_checksum(&VnetHdr::parse(pending).unwrap(), &mut f).unwrap();
        let mut want = spec.clone();
        want.payload.truncate(if psh { 2000 } else { 1500 });
        want.flags = if psh { TCP_PSH } else { 0 };
        assert_eq!(f, want.plain());
        // A fresh run takes the third segment.
        gro.reset();
        assert!(!gro.has_pending());
        assert_eq!(gro.offer(&third), Offer::Absorbed);
        assert_eq!(gro.pending(), [&[0u8; VnetHdr::LEN][..], &third].concat());
    }

    #[test]
    fn gro_run_stops_at_64k() {
        let mut spec = Spec::tcp(false, 50 * 1300, 1300);
        spec.tcp_options.clear();
        let frames = segment_and_check(&spec, 0);
        let mut gro = Gro::new(false);
        for f in &frames {
            assert_eq!(gro.offer(f), Offer::Absorbed);
        }
        let mut next = spec.clone();
        next.seq = spec.seq.wrapping_add(50 * 1300);
        next.ip_id = spec.ip_id.wrapping_add(50);
        next.payload = vec![1; 1300];
        assert_eq!(gro.offer(&next.plain()), Offer::Rejected);
        assert_eq!(gro.pending().len(), VnetHdr::LEN + 14 + 20 + 20 + 50 * 1300);
        // 65 000 payload bytes and 40 of headers: 495 bytes more still fit.
        next.payload.truncate(495);
        assert_eq!(gro.offer(&next.plain()), Offer::Absorbed);
        assert_eq!(gro.pending().len(), VnetHdr::LEN + 14 + 65535);
    }

    /// With two VLAN tags a 64 KiB IP packet does not fit the buffer: the
    /// run stops where the buffer ends.
    #[test]
    fn gro_run_stops_at_the_buffer_with_two_vlan_tags() {
        let mut spec = Spec::tcp(false, 50 * 1300, 1300);
        spec.tcp_options.clear();
        spec.vlan = true;
        let qinq = |f: &[u8]| [&f[..12], &[0x88, 0xa8, 0, 7], &f[12..]].concat();
        let frames = segment_and_check(&spec, 0);
        let mut gro = Gro::new(false);
        for f in &frames {
            assert_eq!(gro.offer(&qinq(f)), Offer::Absorbed);
        }
        let mut next = spec.clone();
        next.seq = spec.seq.wrapping_add(50 * 1300);
        next.ip_id = spec.ip_id.wrapping_add(50);
        next.payload = vec![1; 495];
        assert_eq!(gro.offer(&qinq(&next.plain())), Offer::Rejected);
        next.payload.truncate(491);
        assert_eq!(gro.offer(&qinq(&next.plain())), Offer::Absorbed);
        assert_eq!(gro.pending().len(), VnetHdr::LEN + Gro::MAX_FRAME);
    }

    #[test]
    fn gro_strips_padding_and_rejects_what_is_not_tcp() {
        let spec = Spec::tcp(false, 2, 1000);
        let mut padded = spec.plain();
        let plain = padded.clone();
        padded.resize(plain.len().max(60) + 4, 0);
        let mut gro = Gro::new(true);
        assert_eq!(gro.offer(&padded), Offer::Absorbed);
        assert_eq!(&gro.pending()[VnetHdr::LEN..], &plain[..]);
        gro.reset();
        assert_eq!(
            gro.offer(&Spec::udp(false, 100, 1000).plain()),
            Offer::Rejected
        );
        assert_eq!(gro.offer(&plain[..plain.len() - 1]), Offer::Rejected);
        assert_eq!(gro.offer(&[]), Offer::Rejected);
        // Congestion Experienced is never coalesced, even to start a run.
        let mut ce = plain.clone();
        ce[15] |= 3;
        refix(&mut ce);
        assert_eq!(gro.offer(&ce), Offer::Rejected);
        let mut ce6 = Spec::tcp(true, 100, 1000).plain();
        ce6[15] |= 0x30;
        assert_eq!(gro.offer(&ce6), Offer::Rejected);
        ce6[15] &= !0x10; // ECT(0) is fine
        assert_eq!(gro.offer(&ce6), Offer::Absorbed);
        gro.reset();
        assert!(!gro.has_pending());
        assert_eq!(gro.pending(), &[] as &[u8]);
    }

    /// The caller protocol over two interleaved flows: every byte comes
    /// out once, in order per flow.
    #[test]
    fn gro_caller_protocol_interleaved_flows() {
        let a = Spec::tcp(false, 4000, 1000);
        let mut b = Spec::tcp(true, 4000, 1000);
        b.vlan = true;
        let fa = segment_and_check(&a, 0);
        let fb = segment_and_check(&b, 0);
        let arrivals = [
            &fa[0], &fa[1], &fb[0], &fb[1], &fb[2], &fa[2], &fa[3], &fb[3],
        ];
        let mut gro = Gro::new(true);
        let mut delivered: Vec<Vec<u8>> = Vec::new();
        for f in arrivals {
            if gro.offer(f) == Offer::Rejected {
                delivered.push(gro.pending().to_vec());
                gro.reset();
                assert_eq!(gro.offer(f), Offer::Absorbed);
            }
        }
        delivered.push(gro.pending().to_vec());
        let segments: Vec<u16> = delivered
            .iter()
            .map(|d| VnetHdr::parse(d).unwrap().gso_size)
            .collect();
        assert_eq!(segments, [1000, 1000, 1000, 0]);
        let lens: Vec<usize> = delivered.iter().map(|d| d.len()).collect();
        assert_eq!(
            lens,
            [
                VnetHdr::LEN + a.headers() + 2000,
                VnetHdr::LEN + b.headers() + 3000,
                VnetHdr::LEN + a.headers() + 2000,
                VnetHdr::LEN + b.headers() + 1000,
            ]
        );
        // A one-segment run is the frame behind an empty header.
        assert_eq!(delivered[3], [&[0u8; VnetHdr::LEN][..], &fb[3]].concat());
    }
}
