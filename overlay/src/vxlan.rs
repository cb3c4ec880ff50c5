//! The VXLAN header of RFC 7348, in the style of smoltcp's `wire` module.
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |R|R|R|R|I|R|R|R|            Reserved                           |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                VXLAN Network Identifier (VNI) |   Reserved    |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! ```
//!
//! [`VxlanPacket`] is a view over any `T: AsRef<[u8]>`; [`VxlanRepr`] is the
//! parsed header. On receive the `I` flag must be set and every reserved bit
//! is ignored, as the RFC says; on transmit the reserved bits are zero.
//!
//! # Panics
//!
//! Once [`VxlanPacket::new_checked`] has returned `Ok`, no accessor of the
//! view panics, whatever the bytes are. [`VxlanPacket::new_unchecked`] makes
//! no such promise: its accessors panic on a buffer shorter than
//! [`HEADER_LEN`]. [`decapsulate`] and [`VxlanRepr::parse`] never panic.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Length of the VXLAN header.
pub const HEADER_LEN: usize = 8;

/// The IANA-assigned UDP port for VXLAN (RFC 7348 section 5).
pub const DEFAULT_PORT: u16 = 4789;

/// Bytes the encapsulation adds when the underlay is IPv4: outer IPv4 (20),
/// UDP (8), VXLAN (8) and the inner Ethernet header (14). An overlay
/// interface's MTU is the underlay's MTU minus this.
pub const OVERHEAD_V4: u32 = 50;

/// Bytes the encapsulation adds when the underlay is IPv6: outer IPv6 (40),
/// UDP (8), VXLAN (8) and the inner Ethernet header (14).
pub const OVERHEAD_V6: u32 = 70;

/// Length of an Ethernet header: the least an inner frame can be.
pub const INNER_MIN_LEN: usize = 14;

/// The `I` flag: the VNI field is valid.
pub const FLAG_VNI: u8 = 0x08;

mod field {
    use std::ops::{Range, RangeFrom};

    pub const FLAGS: usize = 0;
    pub const VNI: Range<usize> = 4..7;
    pub const PAYLOAD: RangeFrom<usize> = 8..;
}

/// A VXLAN Network Identifier: 24 bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "u32", into = "u32")]
pub struct Vni(u32);

impl Vni {
    /// The largest VNI, 2^24 - 1.
    pub const MAX: u32 = 0x00ff_ffff;

    /// A VNI, if `value` fits in 24 bits.
    pub const fn new(value: u32) -> Option<Vni> {
        if value <= Self::MAX {
            Some(Vni(value))
        } else {
            None
        }
    }

    /// The VNI made of the low 24 bits of `value`.
    pub const fn from_low_bits(value: u32) -> Vni {
        Vni(value & Self::MAX)
    }

    /// The number.
    pub const fn get(self) -> u32 {
        self.0
    }
}

impl TryFrom<u32> for Vni {
    type Error = VniOutOfRange;

    fn try_from(value: u32) -> Result<Self, Self::Error> {
        Vni::new(value).ok_or(VniOutOfRange(value))
    }
}

impl From<Vni> for u32 {
    fn from(vni: Vni) -> u32 {
        vni.0
    }
}

impl fmt::Display for Vni {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A number that does not fit in a VNI's 24 bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{0} is not a VNI: a VNI is at most 16777215 (24 bits)")]
pub struct VniOutOfRange(pub u32);

/// Why bytes are not a VXLAN packet. Small and `Copy`: it is returned on
/// the per-packet path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum VxlanError {
    /// Fewer than [`HEADER_LEN`] bytes.
    #[error("VXLAN packet is shorter than its 8-byte header")]
    Truncated,
    /// The `I` flag is clear, so the VNI is not valid (RFC 7348 section 5).
    #[error("VXLAN packet does not have the I (valid VNI) flag set")]
    NoVni,
    /// The inner frame is shorter than an Ethernet header.
    #[error("VXLAN payload is shorter than an Ethernet header")]
    InnerTooShort,
    /// The output buffer cannot hold the header and the frame.
    #[error("buffer too small for a VXLAN packet")]
    BufferTooSmall,
}

/// A read/write view over a VXLAN header and the frame that follows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxlanPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> VxlanPacket<T> {
    /// A view without any check; accessors panic if the buffer is shorter
    /// than [`HEADER_LEN`].
    pub const fn new_unchecked(buffer: T) -> Self {
        VxlanPacket { buffer }
    }

    /// A view over a buffer that holds at least a header whose `I` flag is
    /// set. No accessor panics afterwards.
    pub fn new_checked(buffer: T) -> Result<Self, VxlanError> {
        let packet = Self::new_unchecked(buffer);
        packet.check_len()?;
        if !packet.vni_flag() {
            return Err(VxlanError::NoVni);
        }
        Ok(packet)
    }

    /// `Ok` if the buffer holds a whole header.
    pub fn check_len(&self) -> Result<(), VxlanError> {
        if self.buffer.as_ref().len() < HEADER_LEN {
            Err(VxlanError::Truncated)
        } else {
            Ok(())
        }
    }

    /// The buffer back.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// The flags byte, reserved bits included.
    pub fn flags(&self) -> u8 {
        self.buffer.as_ref()[field::FLAGS]
    }

    /// Whether the `I` flag is set.
    pub fn vni_flag(&self) -> bool {
        self.flags() & FLAG_VNI != 0
    }

    /// The VNI field.
    pub fn vni(&self) -> Vni {
        let b = &self.buffer.as_ref()[field::VNI];
        Vni(u32::from_be_bytes([0, b[0], b[1], b[2]]))
    }

    /// The encapsulated Ethernet frame.
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[field::PAYLOAD]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> VxlanPacket<T> {
    /// Sets the flags byte.
    pub fn set_flags(&mut self, flags: u8) {
        self.buffer.as_mut()[field::FLAGS] = flags;
    }

    /// Sets the VNI field (and leaves the flags alone).
    pub fn set_vni(&mut self, vni: Vni) {
        let b = vni.0.to_be_bytes();
        self.buffer.as_mut()[field::VNI].copy_from_slice(&b[1..]);
    }

    /// Zeroes every reserved bit and byte, as a sender must.
    pub fn clear_reserved(&mut self) {
        let buf = self.buffer.as_mut();
        buf[field::FLAGS] &= FLAG_VNI;
        buf[1..4].fill(0);
        buf[7] = 0;
    }

    /// The encapsulated frame, writable.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[field::PAYLOAD]
    }
}

/// A parsed VXLAN header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct VxlanRepr {
    /// The network the frame belongs to.
    pub vni: Vni,
}

impl VxlanRepr {
    /// Reads a header. Reserved bits are ignored (RFC 7348 section 5).
    pub fn parse<T: AsRef<[u8]> + ?Sized>(packet: &VxlanPacket<&T>) -> Result<Self, VxlanError> {
        packet.check_len()?;
        if !packet.vni_flag() {
            return Err(VxlanError::NoVni);
        }
        Ok(VxlanRepr { vni: packet.vni() })
    }

    /// Bytes the header takes.
    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN
    }

    /// Writes the header: the `I` flag, the VNI, zeroes elsewhere. The
    /// payload is left alone. Panics if the buffer is shorter than
    /// [`HEADER_LEN`], as smoltcp's `emit` does.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut VxlanPacket<T>) {
        packet.set_flags(FLAG_VNI);
        packet.clear_reserved();
        packet.set_vni(self.vni);
    }
}

/// Reads one UDP payload as a VXLAN packet: the VNI and the inner Ethernet
/// frame, borrowed from `udp_payload` (nothing is copied).
pub fn decapsulate(udp_payload: &[u8]) -> Result<(Vni, &[u8]), VxlanError> {
    let packet = VxlanPacket::new_checked(udp_payload)?;
    let vni = packet.vni();
    let inner = &udp_payload[field::PAYLOAD];
    if inner.len() < INNER_MIN_LEN {
        return Err(VxlanError::InnerTooShort);
    }
    Ok((vni, inner))
}

/// The 8-byte VXLAN header for `vni` (the `I` flag, zeroes elsewhere).
pub fn header(vni: Vni) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    VxlanRepr { vni }.emit(&mut VxlanPacket::new_unchecked(&mut h[..]));
    h
}

/// Writes a VXLAN header for `vni` and then `frame` into `out`; returns the
/// length written. On the hot path, prefer reading the frame straight into
/// `out[HEADER_LEN..]` and emitting a [`VxlanRepr`] over the first bytes.
pub fn encapsulate(vni: Vni, frame: &[u8], out: &mut [u8]) -> Result<usize, VxlanError> {
    let len = HEADER_LEN + frame.len();
    let Some(out) = out.get_mut(..len) else {
        return Err(VxlanError::BufferTooSmall);
    };
    let mut packet = VxlanPacket::new_unchecked(out);
    VxlanRepr { vni }.emit(&mut packet);
    packet.payload_mut().copy_from_slice(frame);
    Ok(len)
}

/// The MTU of an overlay interface above an underlay of `underlay_mtu`:
/// small enough that encapsulated frames never fragment.
pub const fn overlay_mtu(underlay_mtu: u32, ipv6_underlay: bool) -> u32 {
    let overhead = if ipv6_underlay {
        OVERHEAD_V6
    } else {
        OVERHEAD_V4
    };
    underlay_mtu.saturating_sub(overhead)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_is_what_encapsulate_writes() {
        let vni = Vni::new(0x00ab_cdef).unwrap();
        let frame = [0x11u8; 60];
        let mut out = [0u8; 68];
        encapsulate(vni, &frame, &mut out).unwrap();
        assert_eq!(header(vni), out[..HEADER_LEN]);
        assert_eq!(decapsulate(&out).unwrap().0, vni);
    }
    use rstest::rstest;

    /// An Ethernet frame: broadcast destination, a source MAC, ARP.
    const INNER: [u8; 14] = [
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02, 0x42, 0xac, 0x11, 0x00, 0x02, 0x08, 0x06,
    ];

    fn with_inner(header: [u8; 8]) -> Vec<u8> {
        let mut v = header.to_vec();
        v.extend_from_slice(&INNER);
        v
    }

    // Header bytes as RFC 7348 section 5 lays them out and as Linux's
    // vxlan driver sends them (flags 0x08, VNI in bytes 4..7).
    #[rstest]
    #[case::vni_0([0x08, 0, 0, 0, 0, 0, 0, 0], Ok(0))]
    #[case::vni_42([0x08, 0, 0, 0, 0x00, 0x00, 0x2a, 0x00], Ok(42))]
    #[case::vni_4096([0x08, 0, 0, 0, 0x00, 0x10, 0x00, 0x00], Ok(4096))]
    #[case::vni_max([0x08, 0, 0, 0, 0xff, 0xff, 0xff, 0x00], Ok(Vni::MAX))]
    #[case::vni_0x123456([0x08, 0, 0, 0, 0x12, 0x34, 0x56, 0x00], Ok(0x12_3456))]
    #[case::reserved_bits_ignored([0xff, 0xff, 0xff, 0xff, 0x00, 0x00, 0x07, 0xff], Ok(7))]
    #[case::gbp_style_flags([0x88, 0x00, 0x00, 0x10, 0x00, 0x00, 0x01, 0x00], Ok(1))]
    #[case::no_i_flag([0x00, 0, 0, 0, 0x00, 0x00, 0x2a, 0x00], Err(VxlanError::NoVni))]
    #[case::other_flags_only([0xf7, 0, 0, 0, 0x00, 0x00, 0x2a, 0x00], Err(VxlanError::NoVni))]
    fn parses_header(#[case] header: [u8; 8], #[case] expected: Result<u32, VxlanError>) {
        let bytes = with_inner(header);
        let got = decapsulate(&bytes).map(|(vni, inner)| {
            assert_eq!(inner, INNER);
            vni.get()
        });
        assert_eq!(got, expected);
        let repr = VxlanRepr::parse(&VxlanPacket::new_unchecked(&bytes[..]));
        assert_eq!(repr.map(|r| r.vni.get()), expected);
    }

    #[rstest]
    #[case::empty(&[], VxlanError::Truncated)]
    #[case::seven(&[0x08, 0, 0, 0, 0, 0, 1], VxlanError::Truncated)]
    #[case::header_only(&[0x08, 0, 0, 0, 0, 0, 1, 0], VxlanError::InnerTooShort)]
    #[case::short_inner(&[0x08, 0, 0, 0, 0, 0, 1, 0, 1, 2, 3], VxlanError::InnerTooShort)]
    fn rejects_short(#[case] bytes: &[u8], #[case] expected: VxlanError) {
        assert_eq!(decapsulate(bytes), Err(expected));
    }

    #[test]
    fn new_checked_allows_header_only() {
        let packet = VxlanPacket::new_checked(&[0x08, 0, 0, 0, 0, 0, 9, 0][..]).unwrap();
        assert_eq!(packet.vni().get(), 9);
        assert!(packet.payload().is_empty());
    }

    #[rstest]
    #[case(0)]
    #[case(1)]
    #[case(256)]
    #[case(0x00ab_cdef)]
    #[case(Vni::MAX)]
    fn emit_then_parse(#[case] vni: u32) {
        let vni = Vni::new(vni).unwrap();
        // Start from garbage so emit must clear the reserved bits.
        let mut buf = [0xffu8; HEADER_LEN + INNER.len()];
        let repr = VxlanRepr { vni };
        assert_eq!(repr.buffer_len(), HEADER_LEN);
        let mut packet = VxlanPacket::new_unchecked(&mut buf[..]);
        repr.emit(&mut packet);
        packet.payload_mut().copy_from_slice(&INNER);
        let b = vni.get().to_be_bytes();
        assert_eq!(&buf[..8], &[0x08, 0, 0, 0, b[1], b[2], b[3], 0]);
        assert_eq!(decapsulate(&buf), Ok((vni, &INNER[..])));
    }

    #[test]
    fn encapsulate_writes_header_and_frame() {
        let mut out = [0u8; 64];
        let n = encapsulate(Vni::new(5000).unwrap(), &INNER, &mut out).unwrap();
        assert_eq!(n, 22);
        assert_eq!(&out[..8], &[0x08, 0, 0, 0, 0x00, 0x13, 0x88, 0]);
        assert_eq!(&out[8..22], &INNER);
        let mut small = [0u8; 21];
        assert_eq!(
            encapsulate(Vni::new(1).unwrap(), &INNER, &mut small),
            Err(VxlanError::BufferTooSmall)
        );
    }

    #[test]
    fn set_vni_keeps_flags_and_reserved() {
        let mut buf = [0x08u8, 1, 2, 3, 0, 0, 0, 4];
        let mut packet = VxlanPacket::new_unchecked(&mut buf[..]);
        packet.set_vni(Vni::new(0x010203).unwrap());
        assert_eq!(buf, [0x08, 1, 2, 3, 1, 2, 3, 4]);
    }

    #[rstest]
    #[case(0, true)]
    #[case(1, true)]
    #[case(Vni::MAX, true)]
    #[case(Vni::MAX + 1, false)]
    #[case(u32::MAX, false)]
    fn vni_range(#[case] value: u32, #[case] ok: bool) {
        assert_eq!(Vni::new(value).is_some(), ok);
        assert_eq!(Vni::try_from(value).is_ok(), ok);
        assert_eq!(Vni::from_low_bits(value).get(), value & Vni::MAX);
    }

    #[test]
    fn vni_serde_validates() {
        let bytes = postcard::to_stdvec(&Vni::new(77).unwrap()).unwrap();
        assert_eq!(postcard::from_bytes::<Vni>(&bytes).unwrap().get(), 77);
        let too_big = postcard::to_stdvec(&(Vni::MAX + 1)).unwrap();
        assert!(postcard::from_bytes::<Vni>(&too_big).is_err());
    }

    #[rstest]
    #[case(1500, false, 1450)]
    #[case(1500, true, 1430)]
    #[case(9000, false, 8950)]
    #[case(40, false, 0)]
    fn overlay_mtus(#[case] underlay: u32, #[case] v6: bool, #[case] expected: u32) {
        assert_eq!(overlay_mtu(underlay, v6), expected);
    }

    proptest::proptest! {
        #[test]
        fn decapsulate_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..64)) {
            if let Ok((vni, inner)) = decapsulate(&bytes) {
                proptest::prop_assert!(bytes[0] & FLAG_VNI != 0);
                proptest::prop_assert_eq!(inner.len() + HEADER_LEN, bytes.len());
                proptest::prop_assert!(vni.get() <= Vni::MAX);
            }
        }
    }
}
