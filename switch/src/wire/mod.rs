//! Thin views over Ethernet frames and the parts of ARP, IPv4, IPv6, TCP,
//! UDP, ICMP and ICMPv6 that the switch, the gateway and the NAT read and
//! write.
//!
//! The Ethernet header is read in place by [`EthernetFrame`], a view over any
//! `T: AsRef<[u8]>` in the style of smoltcp's `wire` module. The layers above
//! it are parsed and written with `etherparse`, but only inside this module
//! (this file, `ip.rs` and `build.rs`): the rest of the crate sees our own
//! small types ([`ArpRepr`], [`Ipv6Summary`], [`Ndp`], [`IpFrame`],
//! [`IpRepr`]), so an `etherparse` API change touches this module only.
//!
//! # Panics
//!
//! Once [`EthernetFrame::new_checked`] has returned `Ok`, no accessor of the
//! view panics, whatever the bytes are. [`EthernetFrame::new_unchecked`] makes
//! no such promise: its accessors panic on a buffer shorter than
//! [`EthernetFrame::HEADER_LEN`]. The parse functions ([`ArpRepr::parse`],
//! [`ipv4_source`], [`Ipv6Summary::parse`], ...) never panic; they return a
//! [`WireError`] for any input they cannot read.
//!
//! # Building frames
//!
//! Frames are emitted into the caller's buffer: [`IpRepr`] with
//! [`emit_udp`] and [`emit_echo_reply`] for the gateway's and the NAT's
//! answers, `emit_arp_reply`, `emit_neighbor_advert` and the other
//! `emit_*` functions for whole ARP, UDP and neighbour discovery frames.
//! Each returns the frame's length or [`WireError::Truncated`]. The
//! `build_*` functions wrap them in a fresh `Vec` for tests, benchmarks and
//! the control plane, never for the per-packet path.

use std::net::{Ipv4Addr, Ipv6Addr};

use etherparse::{
    ArpHardwareId, ArpOperation as EpArpOperation, ArpPacketSlice, Icmpv6Slice, IpNumber,
    Ipv4HeaderSlice, Ipv6ExtensionSlice, Ipv6HeaderSlice, Ipv6Slice,
};

use crate::MacAddr;

mod build;
mod echo;
mod ip;

pub use build::{
    build_arp, build_arp_reply, build_arp_request, build_icmpv6, build_ipv4_udp, build_ipv6_udp,
    build_neighbor_advert, build_neighbor_solicit, build_probe, build_router_advert, emit_arp,
    emit_arp_reply, emit_arp_request, emit_icmpv6, emit_ipv4_udp, emit_ipv6_udp,
    emit_neighbor_advert, emit_neighbor_solicit, emit_router_advert, Ipv6Endpoints, Probe,
    ARP_FRAME_LEN,
};
pub use echo::{echo_request_v4, echo_request_v6, read_icmpv4, read_icmpv6, ProbeReply};
pub use ip::{
    echo_frame_len, emit_echo_reply, emit_udp, emit_udp_headers, ip_destination, udp_frame_len,
    Echo, Icmpv4View, Icmpv6View, IpFrame, IpHeader, IpProtocol, IpRepr, Ipv4View, Ipv6View,
    TcpView, TransportHeader, UdpView, ECHO_HEADER_LEN, UDP_HEADER_LEN,
};

/// Why bytes could not be read as the expected packet. Small and `Copy`, as
/// it is returned on the per-packet path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// The buffer ends before the header (or a length field) says it should.
    #[error("packet is truncated")]
    Truncated,
    /// A header field has a value the protocol does not allow.
    #[error("packet has a malformed header")]
    Malformed,
    /// A valid packet of a kind this code does not handle (for example ARP
    /// for something other than Ethernet and IPv4).
    #[error("packet kind is not supported")]
    Unsupported,
    /// A fragmented neighbour discovery message: RFC 6980 forbids them, and
    /// their contents cannot be checked.
    #[error("neighbour discovery message is fragmented")]
    FragmentedNdp,
}

/// An Ethernet protocol number. Conversion from the wire never fails:
/// values without a name become [`EtherType::Unknown`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EtherType {
    /// 0x0800
    Ipv4,
    /// 0x0806
    Arp,
    /// 0x86dd
    Ipv6,
    /// 0x8100, an IEEE 802.1Q VLAN tag.
    Vlan,
    /// 0x88a8, an IEEE 802.1ad (QinQ) service tag.
    ServiceVlan,
    /// Any other value.
    Unknown(u16),
}

impl From<u16> for EtherType {
    fn from(value: u16) -> Self {
        match value {
            0x0800 => EtherType::Ipv4,
            0x0806 => EtherType::Arp,
            0x86dd => EtherType::Ipv6,
            0x8100 => EtherType::Vlan,
            0x88a8 => EtherType::ServiceVlan,
            other => EtherType::Unknown(other),
        }
    }
}

impl From<EtherType> for u16 {
    fn from(value: EtherType) -> Self {
        match value {
            EtherType::Ipv4 => 0x0800,
            EtherType::Arp => 0x0806,
            EtherType::Ipv6 => 0x86dd,
            EtherType::Vlan => 0x8100,
            EtherType::ServiceVlan => 0x88a8,
            EtherType::Unknown(other) => other,
        }
    }
}

mod field {
    use std::ops::{Range, RangeFrom};

    pub(super) const DST: Range<usize> = 0..6;
    pub(super) const SRC: Range<usize> = 6..12;
    pub(super) const ETHERTYPE: Range<usize> = 12..14;
    pub(super) const PAYLOAD: RangeFrom<usize> = 14..;
}

/// A view over an Ethernet II frame (without the FCS, as TAP devices hand
/// them over).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EthernetFrame<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> EthernetFrame<T> {
    /// Length of the Ethernet II header: two addresses and the ethertype.
    pub const HEADER_LEN: usize = field::PAYLOAD.start;

    /// Wraps `buffer` without checking it. Accessors panic if it is shorter
    /// than [`Self::HEADER_LEN`]; prefer [`Self::new_checked`].
    pub fn new_unchecked(buffer: T) -> Self {
        EthernetFrame { buffer }
    }

    /// Wraps `buffer` after checking it holds a whole Ethernet header. After
    /// this returns `Ok`, no accessor panics.
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        let frame = Self::new_unchecked(buffer);
        frame.check_len()?;
        Ok(frame)
    }

    /// `Ok` if the buffer is long enough for every accessor.
    pub fn check_len(&self) -> Result<(), WireError> {
        if self.buffer.as_ref().len() < Self::HEADER_LEN {
            Err(WireError::Truncated)
        } else {
            Ok(())
        }
    }

    /// Gives the buffer back.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// The destination MAC address.
    #[inline]
    pub fn dst(&self) -> MacAddr {
        mac_at(&self.buffer.as_ref()[field::DST])
    }

    /// The source MAC address.
    #[inline]
    pub fn src(&self) -> MacAddr {
        mac_at(&self.buffer.as_ref()[field::SRC])
    }

    /// The protocol of the payload.
    #[inline]
    pub fn ethertype(&self) -> EtherType {
        let b = &self.buffer.as_ref()[field::ETHERTYPE];
        EtherType::from(u16::from_be_bytes([b[0], b[1]]))
    }

    /// Everything after the Ethernet header.
    #[inline]
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[field::PAYLOAD]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> EthernetFrame<T> {
    /// Sets the destination MAC address.
    pub fn set_dst(&mut self, mac: MacAddr) {
        self.buffer.as_mut()[field::DST].copy_from_slice(&mac.0);
    }

    /// Sets the source MAC address.
    pub fn set_src(&mut self, mac: MacAddr) {
        self.buffer.as_mut()[field::SRC].copy_from_slice(&mac.0);
    }

    /// Sets the ethertype.
    pub fn set_ethertype(&mut self, ethertype: EtherType) {
        self.buffer.as_mut()[field::ETHERTYPE].copy_from_slice(&u16::from(ethertype).to_be_bytes());
    }

    /// Everything after the Ethernet header, writable.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[field::PAYLOAD]
    }
}

#[inline]
fn mac_at(bytes: &[u8]) -> MacAddr {
    let mut m = [0u8; 6];
    m.copy_from_slice(&bytes[..6]);
    MacAddr(m)
}

/// The fields of an Ethernet header, for building frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EthernetRepr {
    /// Source MAC address.
    pub src: MacAddr,
    /// Destination MAC address.
    pub dst: MacAddr,
    /// Protocol of the payload.
    pub ethertype: EtherType,
}

impl EthernetRepr {
    /// Reads the header of a checked frame.
    pub fn parse<T: AsRef<[u8]>>(frame: &EthernetFrame<T>) -> Self {
        EthernetRepr {
            src: frame.src(),
            dst: frame.dst(),
            ethertype: frame.ethertype(),
        }
    }

    /// Bytes [`Self::emit`] writes.
    pub const fn buffer_len(&self) -> usize {
        EthernetFrame::<&[u8]>::HEADER_LEN
    }

    /// Writes the header at the start of `buffer`.
    pub fn emit(&self, buffer: &mut [u8]) -> Result<(), WireError> {
        if buffer.len() < self.buffer_len() {
            return Err(WireError::Truncated);
        }
        let mut frame = EthernetFrame::new_unchecked(buffer);
        frame.set_dst(self.dst);
        frame.set_src(self.src);
        frame.set_ethertype(self.ethertype);
        Ok(())
    }
}

/// An ARP operation code. Conversion from the wire never fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ArpOperation {
    /// 1
    Request,
    /// 2
    Reply,
    /// Any other value.
    Unknown(u16),
}

impl From<u16> for ArpOperation {
    fn from(value: u16) -> Self {
        match value {
            1 => ArpOperation::Request,
            2 => ArpOperation::Reply,
            other => ArpOperation::Unknown(other),
        }
    }
}

impl From<ArpOperation> for u16 {
    fn from(value: ArpOperation) -> Self {
        match value {
            ArpOperation::Request => 1,
            ArpOperation::Reply => 2,
            ArpOperation::Unknown(other) => other,
        }
    }
}

/// An ARP packet for IPv4 over Ethernet (the only kind the switch reads).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArpRepr {
    /// Request, reply or other.
    pub operation: ArpOperation,
    /// Sender hardware address.
    pub sender_mac: MacAddr,
    /// Sender protocol address (0.0.0.0 in an ARP probe, RFC 5227).
    pub sender_ip: Ipv4Addr,
    /// Target hardware address (zero in a request).
    pub target_mac: MacAddr,
    /// Target protocol address.
    pub target_ip: Ipv4Addr,
}

impl ArpRepr {
    /// Length of an Ethernet/IPv4 ARP packet.
    pub const LEN: usize = 28;

    /// Reads an ARP packet (an Ethernet payload). ARP for other hardware or
    /// protocol types is [`WireError::Unsupported`].
    pub fn parse(payload: &[u8]) -> Result<Self, WireError> {
        let arp = ArpPacketSlice::from_slice(payload).map_err(|_| WireError::Truncated)?;
        if arp.hw_addr_type() != ArpHardwareId::ETHERNET
            || arp.proto_addr_type() != etherparse::EtherType::IPV4
            || arp.hw_addr_size() != 6
            || arp.proto_addr_size() != 4
        {
            return Err(WireError::Unsupported);
        }
        Ok(ArpRepr {
            operation: ArpOperation::from(arp.operation().0),
            sender_mac: mac_at(arp.sender_hw_addr()),
            sender_ip: ipv4_at(arp.sender_protocol_addr()),
            target_mac: mac_at(arp.target_hw_addr()),
            target_ip: ipv4_at(arp.target_protocol_addr()),
        })
    }

    /// Bytes [`Self::emit`] writes.
    pub const fn buffer_len(&self) -> usize {
        Self::LEN
    }

    /// Writes the packet at the start of `buffer` (an Ethernet payload).
    pub fn emit(&self, buffer: &mut [u8]) -> Result<(), WireError> {
        let out = buffer.get_mut(..Self::LEN).ok_or(WireError::Truncated)?;
        let packet = etherparse::ArpEthIpv4Packet {
            operation: EpArpOperation(u16::from(self.operation)),
            sender_mac: self.sender_mac.0,
            sender_ipv4: self.sender_ip.octets(),
            target_mac: self.target_mac.0,
            target_ipv4: self.target_ip.octets(),
        };
        out.copy_from_slice(&packet.to_bytes());
        Ok(())
    }
}

fn ipv4_at(bytes: &[u8]) -> Ipv4Addr {
    Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3])
}

/// The source address of an IPv4 packet (an Ethernet payload), after
/// checking the header (version, header length, size).
pub fn ipv4_source(packet: &[u8]) -> Result<Ipv4Addr, WireError> {
    use etherparse::err::ipv4::HeaderSliceError;
    match Ipv4HeaderSlice::from_slice(packet) {
        Ok(header) => Ok(header.source_addr()),
        Err(HeaderSliceError::Len(_)) => Err(WireError::Truncated),
        Err(HeaderSliceError::Content(_)) => Err(WireError::Malformed),
    }
}

/// The source address of an IPv6 packet (an Ethernet payload), reading the
/// fixed header only.
pub fn ipv6_source(packet: &[u8]) -> Result<Ipv6Addr, WireError> {
    use etherparse::err::ipv6::HeaderSliceError;
    match Ipv6HeaderSlice::from_slice(packet) {
        Ok(header) => Ok(header.source_addr()),
        Err(HeaderSliceError::Len(_)) => Err(WireError::Truncated),
        Err(HeaderSliceError::Content(_)) => Err(WireError::Malformed),
    }
}

/// True for fe80::/10.
pub fn is_ipv6_link_local(ip: &Ipv6Addr) -> bool {
    ip.segments()[0] & 0xffc0 == 0xfe80
}

/// The kind of an ICMPv6 neighbour discovery message (RFC 4861).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NdpKind {
    /// Type 133.
    RouterSolicit,
    /// Type 134.
    RouterAdvert,
    /// Type 135.
    NeighborSolicit,
    /// Type 136.
    NeighborAdvert,
    /// Type 137.
    Redirect,
}

impl NdpKind {
    fn from_icmp_type(t: u8) -> Option<Self> {
        match t {
            133 => Some(NdpKind::RouterSolicit),
            134 => Some(NdpKind::RouterAdvert),
            135 => Some(NdpKind::NeighborSolicit),
            136 => Some(NdpKind::NeighborAdvert),
            137 => Some(NdpKind::Redirect),
            _ => None,
        }
    }

    /// Bytes of fixed body after the 8-byte ICMPv6 header, before options.
    fn body_len(self) -> usize {
        match self {
            NdpKind::RouterSolicit => 0,
            NdpKind::RouterAdvert => 8,
            NdpKind::NeighborSolicit | NdpKind::NeighborAdvert => 16,
            NdpKind::Redirect => 32,
        }
    }

    /// The ICMPv6 type number.
    pub fn icmp_type(self) -> u8 {
        match self {
            NdpKind::RouterSolicit => 133,
            NdpKind::RouterAdvert => 134,
            NdpKind::NeighborSolicit => 135,
            NdpKind::NeighborAdvert => 136,
            NdpKind::Redirect => 137,
        }
    }
}

/// What the switch reads from a neighbour discovery message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ndp {
    /// The message type.
    pub kind: NdpKind,
    /// The target address of a solicitation, advertisement or redirect.
    pub target: Option<Ipv6Addr>,
    /// The source link-layer address option, if present.
    pub source_lladdr: Option<MacAddr>,
    /// The target link-layer address option, if present.
    pub target_lladdr: Option<MacAddr>,
}

impl Ndp {
    pub(crate) const OPT_SOURCE_LLADDR: u8 = 1;
    pub(crate) const OPT_TARGET_LLADDR: u8 = 2;

    /// Reads an ICMPv6 message that is a neighbour discovery message: `Ok(None)`
    /// for other ICMPv6 types. Link-layer address options must be Ethernet
    /// sized and, if repeated, agree; otherwise [`WireError::Malformed`].
    pub fn parse(icmpv6: &[u8]) -> Result<Option<Self>, WireError> {
        let icmp = Icmpv6Slice::from_slice(icmpv6).map_err(|_| WireError::Truncated)?;
        let Some(kind) = NdpKind::from_icmp_type(icmp.type_u8()) else {
            return Ok(None);
        };
        let body = icmp.payload();
        if body.len() < kind.body_len() {
            return Err(WireError::Truncated);
        }
        let target = match kind {
            NdpKind::NeighborSolicit | NdpKind::NeighborAdvert | NdpKind::Redirect => {
                Some(ipv6_at(&body[..16]))
            }
            NdpKind::RouterSolicit | NdpKind::RouterAdvert => None,
        };
        let mut ndp = Ndp {
            kind,
            target,
            source_lladdr: None,
            target_lladdr: None,
        };
        let mut options = &body[kind.body_len()..];
        while !options.is_empty() {
            if options.len() < 2 {
                return Err(WireError::Truncated);
            }
            let len = usize::from(options[1]) * 8;
            if len == 0 {
                // RFC 4861 4.6: a zero length option is invalid.
                return Err(WireError::Malformed);
            }
            let option = options.get(..len).ok_or(WireError::Truncated)?;
            let slot = match option[0] {
                Self::OPT_SOURCE_LLADDR => Some(&mut ndp.source_lladdr),
                Self::OPT_TARGET_LLADDR => Some(&mut ndp.target_lladdr),
                _ => None,
            };
            if let Some(slot) = slot {
                if len != 8 {
                    return Err(WireError::Malformed);
                }
                let mac = mac_at(&option[2..8]);
                match slot {
                    Some(previous) if *previous != mac => return Err(WireError::Malformed),
                    _ => *slot = Some(mac),
                }
            }
            options = &options[len..];
        }
        Ok(Some(ndp))
    }
}

fn ipv6_at(bytes: &[u8]) -> Ipv6Addr {
    let mut b = [0u8; 16];
    b.copy_from_slice(&bytes[..16]);
    Ipv6Addr::from(b)
}

/// What port security and the gateway read from an IPv6 packet: addresses,
/// and the neighbour discovery message it carries, if any (found after any
/// extension headers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv6Summary {
    /// Source address.
    pub src: Ipv6Addr,
    /// Destination address.
    pub dst: Ipv6Addr,
    /// The neighbour discovery message, if the packet is one.
    pub ndp: Option<Ndp>,
}

impl Ipv6Summary {
    /// Reads an IPv6 packet (an Ethernet payload), walking its extension
    /// headers. A fragment whose first part holds a neighbour discovery
    /// message is [`WireError::FragmentedNdp`]; later fragments carry no
    /// ICMPv6 header and are reported with `ndp: None`.
    pub fn parse(packet: &[u8]) -> Result<Self, WireError> {
        use etherparse::err::ipv6::SliceError;
        let ip = Ipv6Slice::from_slice(packet).map_err(|e| match e {
            SliceError::Len(_) => WireError::Truncated,
            SliceError::Header(_) | SliceError::Exts(_) => WireError::Malformed,
        })?;
        let header = ip.header();
        let payload = ip.payload();
        let mut ndp = None;
        if payload.ip_number == IpNumber::IPV6_ICMP {
            if payload.fragmented {
                if first_fragment(&ip)
                    && payload
                        .payload
                        .first()
                        .is_some_and(|t| NdpKind::from_icmp_type(*t).is_some())
                {
                    return Err(WireError::FragmentedNdp);
                }
            } else {
                ndp = Ndp::parse(payload.payload)?;
            }
        }
        Ok(Ipv6Summary {
            src: header.source_addr(),
            dst: header.destination_addr(),
            ndp,
        })
    }
}

fn first_fragment(ip: &Ipv6Slice<'_>) -> bool {
    ip.extensions().clone().into_iter().all(|ext| match ext {
        Ipv6ExtensionSlice::Fragment(f) => f.fragment_offset().value() == 0,
        _ => true,
    })
}

/// The target of an ICMPv6 neighbour advertisement carried by an IPv6
/// packet (an Ethernet payload), or `None` if the packet is not one.
pub fn neighbor_advert_target(packet: &[u8]) -> Result<Option<Ipv6Addr>, WireError> {
    let summary = Ipv6Summary::parse(packet)?;
    Ok(summary
        .ndp
        .filter(|n| n.kind == NdpKind::NeighborAdvert)
        .and_then(|n| n.target))
}

/// The Ethernet group address an IPv6 multicast address maps to (RFC 2464).
pub fn ipv6_multicast_mac(ip: &Ipv6Addr) -> MacAddr {
    let o = ip.octets();
    MacAddr([0x33, 0x33, o[12], o[13], o[14], o[15]])
}

/// The solicited-node multicast address of `ip` (ff02::1:ffXX:XXXX).
pub fn solicited_node(ip: &Ipv6Addr) -> Ipv6Addr {
    let o = ip.octets();
    Ipv6Addr::new(
        0xff02,
        0,
        0,
        0,
        0,
        1,
        0xff00 | u16::from(o[13]),
        u16::from_be_bytes([o[14], o[15]]),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rstest::rstest;
    use std::net::{SocketAddrV4, SocketAddrV6};

    const MAC_A: MacAddr = MacAddr([0x02, 0x42, 0xac, 0x11, 0x00, 0x02]);
    const MAC_B: MacAddr = MacAddr([0x02, 0x42, 0xac, 0x11, 0x00, 0x03]);
    const IP_A: Ipv4Addr = Ipv4Addr::new(172, 17, 0, 2);
    const IP_B: Ipv4Addr = Ipv4Addr::new(172, 17, 0, 3);

    fn ip6(s: &str) -> Ipv6Addr {
        s.parse().unwrap()
    }

    fn endpoints(src_ip: &str, dst_ip: &str) -> Ipv6Endpoints {
        Ipv6Endpoints {
            src_mac: MAC_A,
            dst_mac: MAC_B,
            src_ip: ip6(src_ip),
            dst_ip: ip6(dst_ip),
        }
    }

    #[rstest]
    #[case(0)]
    #[case(1)]
    #[case(13)]
    fn ethernet_rejects_short_buffers(#[case] len: usize) {
        let buf = vec![0u8; len];
        assert_eq!(
            EthernetFrame::new_checked(&buf[..]).unwrap_err(),
            WireError::Truncated
        );
    }

    #[test]
    fn ethernet_accessors_and_setters() {
        let mut buf = [0u8; 16];
        let mut frame = EthernetFrame::new_checked(&mut buf[..]).unwrap();
        frame.set_dst(MAC_B);
        frame.set_src(MAC_A);
        frame.set_ethertype(EtherType::Ipv6);
        frame.payload_mut().copy_from_slice(&[0xde, 0xad]);
        let frame = EthernetFrame::new_checked(&buf[..]).unwrap();
        assert_eq!(frame.dst(), MAC_B);
        assert_eq!(frame.src(), MAC_A);
        assert_eq!(frame.ethertype(), EtherType::Ipv6);
        assert_eq!(frame.payload(), &[0xde, 0xad]);
        assert_eq!(&buf[12..14], &[0x86, 0xdd]);

        let header_only = [0u8; 14];
        let frame = EthernetFrame::new_checked(&header_only[..]).unwrap();
        assert!(frame.payload().is_empty());
        assert_eq!(frame.ethertype(), EtherType::Unknown(0));
    }

    #[test]
    fn ethernet_repr_roundtrip() {
        let repr = EthernetRepr {
            src: MAC_A,
            dst: MacAddr::BROADCAST,
            ethertype: EtherType::Arp,
        };
        let mut buf = [0u8; 14];
        repr.emit(&mut buf).unwrap();
        let frame = EthernetFrame::new_checked(&buf[..]).unwrap();
        assert_eq!(EthernetRepr::parse(&frame), repr);
        assert_eq!(repr.emit(&mut buf[..13]), Err(WireError::Truncated));
    }

    #[rstest]
    #[case(0x0800, EtherType::Ipv4)]
    #[case(0x0806, EtherType::Arp)]
    #[case(0x86dd, EtherType::Ipv6)]
    #[case(0x8100, EtherType::Vlan)]
    #[case(0x88a8, EtherType::ServiceVlan)]
    #[case(0x88cc, EtherType::Unknown(0x88cc))]
    fn ethertype_numbers(#[case] value: u16, #[case] ethertype: EtherType) {
        assert_eq!(EtherType::from(value), ethertype);
        assert_eq!(u16::from(ethertype), value);
    }

    #[test]
    fn arp_request_and_reply_roundtrip() {
        let frame = build_arp_request(MAC_A, IP_A, IP_B);
        assert_eq!(frame.len(), 14 + ArpRepr::LEN);
        let eth = EthernetFrame::new_checked(&frame[..]).unwrap();
        assert_eq!(eth.dst(), MacAddr::BROADCAST);
        assert_eq!(eth.src(), MAC_A);
        assert_eq!(eth.ethertype(), EtherType::Arp);
        let arp = ArpRepr::parse(eth.payload()).unwrap();
        assert_eq!(
            arp,
            ArpRepr {
                operation: ArpOperation::Request,
                sender_mac: MAC_A,
                sender_ip: IP_A,
                target_mac: MacAddr::default(),
                target_ip: IP_B,
            }
        );

        let frame = build_arp_reply(MAC_B, IP_B, MAC_A, IP_A);
        let eth = EthernetFrame::new_checked(&frame[..]).unwrap();
        assert_eq!(eth.dst(), MAC_A);
        let arp = ArpRepr::parse(eth.payload()).unwrap();
        assert_eq!(arp.operation, ArpOperation::Reply);
        assert_eq!((arp.sender_mac, arp.sender_ip), (MAC_B, IP_B));
        assert_eq!((arp.target_mac, arp.target_ip), (MAC_A, IP_A));
    }

    #[test]
    fn arp_rejects_other_kinds_and_short_packets() {
        let frame = build_arp_request(MAC_A, IP_A, IP_B);
        let payload = &frame[14..];
        assert_eq!(ArpRepr::parse(&payload[..27]), Err(WireError::Truncated));
        assert_eq!(ArpRepr::parse(&[]), Err(WireError::Truncated));
        let mut other_hw = payload.to_vec();
        other_hw[1] = 6; // IEEE 802 hardware type
        assert_eq!(ArpRepr::parse(&other_hw), Err(WireError::Unsupported));
        let mut other_proto = payload.to_vec();
        other_proto[2..4].copy_from_slice(&[0x86, 0xdd]);
        assert_eq!(ArpRepr::parse(&other_proto), Err(WireError::Unsupported));
        let mut unknown_op = payload.to_vec();
        unknown_op[7] = 9;
        assert_eq!(
            ArpRepr::parse(&unknown_op).unwrap().operation,
            ArpOperation::Unknown(9)
        );
        let mut small = [0u8; 27];
        let repr = ArpRepr::parse(payload).unwrap();
        assert_eq!(repr.emit(&mut small), Err(WireError::Truncated));
    }

    #[test]
    fn ipv4_udp_builder_and_source() {
        let frame = build_ipv4_udp(
            MAC_A,
            MAC_B,
            SocketAddrV4::new(IP_A, 1000),
            SocketAddrV4::new(IP_B, 53),
            b"hello",
        );
        assert_eq!(frame.len(), 14 + 20 + 8 + 5);
        let eth = EthernetFrame::new_checked(&frame[..]).unwrap();
        assert_eq!(eth.ethertype(), EtherType::Ipv4);
        assert_eq!(ipv4_source(eth.payload()), Ok(IP_A));
        assert_eq!(ipv4_source(&eth.payload()[..19]), Err(WireError::Truncated));
        let mut wrong_version = eth.payload().to_vec();
        wrong_version[0] = 0x65;
        assert_eq!(ipv4_source(&wrong_version), Err(WireError::Malformed));
        let mut short_ihl = eth.payload().to_vec();
        short_ihl[0] = 0x44;
        assert_eq!(ipv4_source(&short_ihl), Err(WireError::Malformed));
    }

    #[test]
    fn ipv6_udp_builder_and_summary() {
        let src = ip6("fd00::2");
        let frame = build_ipv6_udp(
            MAC_A,
            MAC_B,
            SocketAddrV6::new(src, 1000, 0, 0),
            SocketAddrV6::new(ip6("fd00::3"), 53, 0, 0),
            b"x",
        );
        let eth = EthernetFrame::new_checked(&frame[..]).unwrap();
        assert_eq!(eth.ethertype(), EtherType::Ipv6);
        assert_eq!(ipv6_source(eth.payload()), Ok(src));
        let summary = Ipv6Summary::parse(eth.payload()).unwrap();
        assert_eq!(summary.src, src);
        assert_eq!(summary.dst, ip6("fd00::3"));
        assert_eq!(summary.ndp, None);
        assert_eq!(
            Ipv6Summary::parse(&eth.payload()[..39]),
            Err(WireError::Truncated)
        );
        let mut wrong_version = eth.payload().to_vec();
        wrong_version[0] = 0x45;
        assert_eq!(ipv6_source(&wrong_version), Err(WireError::Malformed));
    }

    #[test]
    fn neighbor_solicit_and_dad() {
        let target = ip6("fd00::3");
        let frame = build_neighbor_solicit(MAC_A, ip6("fd00::2"), target);
        let eth = EthernetFrame::new_checked(&frame[..]).unwrap();
        assert_eq!(eth.dst(), MacAddr([0x33, 0x33, 0xff, 0, 0, 3]));
        let summary = Ipv6Summary::parse(eth.payload()).unwrap();
        assert_eq!(summary.dst, ip6("ff02::1:ff00:3"));
        assert_eq!(
            summary.ndp,
            Some(Ndp {
                kind: NdpKind::NeighborSolicit,
                target: Some(target),
                source_lladdr: Some(MAC_A),
                target_lladdr: None,
            })
        );
        assert_eq!(neighbor_advert_target(eth.payload()), Ok(None));

        let dad = build_neighbor_solicit(MAC_A, Ipv6Addr::UNSPECIFIED, target);
        let ndp = Ipv6Summary::parse(&dad[14..]).unwrap().ndp.unwrap();
        assert_eq!(ndp.source_lladdr, None);
    }

    #[test]
    fn neighbor_advert_target_and_option() {
        let target = ip6("fd00::2");
        let frame = build_neighbor_advert(endpoints("fd00::2", "fd00::3"), target, Some(MAC_A));
        let payload = &frame[14..];
        assert_eq!(neighbor_advert_target(payload), Ok(Some(target)));
        let ndp = Ipv6Summary::parse(payload).unwrap().ndp.unwrap();
        assert_eq!(ndp.kind, NdpKind::NeighborAdvert);
        assert_eq!(ndp.target_lladdr, Some(MAC_A));
        assert_eq!(ndp.source_lladdr, None);
    }

    #[test]
    fn router_advert_is_recognised() {
        let frame = build_router_advert(MAC_A, ip6("fe80::1"));
        let ndp = Ipv6Summary::parse(&frame[14..]).unwrap().ndp.unwrap();
        assert_eq!(ndp.kind, NdpKind::RouterAdvert);
        assert_eq!(ndp.target, None);
        assert_eq!(ndp.source_lladdr, Some(MAC_A));
    }

    /// A neighbour advertisement frame with `options` as its raw options.
    fn advert_with_options(options: &[u8]) -> Vec<u8> {
        let mut body = ip6("fd00::2").octets().to_vec();
        body.extend_from_slice(options);
        build_icmpv6(
            endpoints("fd00::2", "fd00::3"),
            136,
            0,
            [0x60, 0, 0, 0],
            &body,
        )
    }

    #[rstest]
    #[case::zero_length_option(&[2, 0, 0, 0, 0, 0, 0, 0], Err(WireError::Malformed))]
    #[case::option_past_end(&[2, 2, 1, 2, 3, 4, 5, 6], Err(WireError::Truncated))]
    #[case::half_an_option_header(&[2], Err(WireError::Truncated))]
    #[case::long_lladdr(&[2, 2, 1, 2, 3, 4, 5, 6, 0, 0, 0, 0, 0, 0, 0, 0], Err(WireError::Malformed))]
    #[case::conflicting_lladdrs(
        &[2, 1, 2, 0, 0, 0, 0, 1, 2, 1, 2, 0, 0, 0, 0, 2],
        Err(WireError::Malformed)
    )]
    #[case::repeated_same_lladdr(
        &[2, 1, 2, 0, 0, 0, 0, 1, 2, 1, 2, 0, 0, 0, 0, 1],
        Ok(Some(MacAddr([2, 0, 0, 0, 0, 1])))
    )]
    #[case::unknown_option_skipped(
        &[14, 1, 0, 0, 0, 0, 0, 0, 2, 1, 2, 0, 0, 0, 0, 1],
        Ok(Some(MacAddr([2, 0, 0, 0, 0, 1])))
    )]
    #[case::no_options(&[], Ok(None))]
    fn ndp_options(#[case] options: &[u8], #[case] expected: Result<Option<MacAddr>, WireError>) {
        let frame = advert_with_options(options);
        let got = Ipv6Summary::parse(&frame[14..]).map(|s| s.ndp.unwrap().target_lladdr);
        assert_eq!(got, expected);
    }

    #[test]
    fn ndp_body_too_short() {
        let frame = build_icmpv6(endpoints("fd00::2", "fd00::3"), 136, 0, [0; 4], &[0; 15]);
        assert_eq!(Ipv6Summary::parse(&frame[14..]), Err(WireError::Truncated));
        let frame = build_icmpv6(endpoints("fd00::2", "fd00::3"), 128, 0, [0; 4], &[]);
        assert_eq!(Ipv6Summary::parse(&frame[14..]).unwrap().ndp, None);
    }

    /// Inserts an extension header after the fixed IPv6 header of `frame`.
    fn with_extension(frame: &[u8], next_header_value: u8, ext: &[u8]) -> Vec<u8> {
        let mut out = frame[..14 + 40].to_vec();
        out[14 + 6] = next_header_value;
        let len = u16::from_be_bytes([out[14 + 4], out[14 + 5]]) + ext.len() as u16;
        out[14 + 4..14 + 6].copy_from_slice(&len.to_be_bytes());
        out.extend_from_slice(ext);
        out.extend_from_slice(&frame[14 + 40..]);
        out
    }

    #[test]
    fn ndp_found_behind_extension_headers() {
        let target = ip6("fd00::9");
        let frame = build_neighbor_advert(endpoints("fd00::2", "fd00::3"), target, None);
        // Hop-by-hop options: next header ICMPv6, length 0, PadN of 4.
        let hbh = with_extension(&frame, 0, &[58, 0, 1, 4, 0, 0, 0, 0]);
        assert_eq!(neighbor_advert_target(&hbh[14..]), Ok(Some(target)));
        // Destination options header the same way.
        let dst_opts = with_extension(&frame, 60, &[58, 0, 1, 4, 0, 0, 0, 0]);
        assert_eq!(neighbor_advert_target(&dst_opts[14..]), Ok(Some(target)));
    }

    #[test]
    fn fragmented_ndp_is_refused_and_later_fragments_pass() {
        let frame = build_neighbor_advert(endpoints("fd00::2", "fd00::3"), ip6("fd00::9"), None);
        // Fragment header: next ICMPv6, offset 0 with more-fragments set.
        let first = with_extension(&frame, 44, &[58, 0, 0x00, 0x01, 0, 0, 0, 7]);
        assert_eq!(
            Ipv6Summary::parse(&first[14..]),
            Err(WireError::FragmentedNdp)
        );
        // Offset 8 bytes: the payload is the middle of a message, not a header.
        let later = with_extension(&frame, 44, &[58, 0, 0x00, 0x08, 0, 0, 0, 7]);
        assert_eq!(Ipv6Summary::parse(&later[14..]).unwrap().ndp, None);
        // A fragmented echo request is not neighbour discovery.
        let echo = build_icmpv6(endpoints("fd00::2", "fd00::3"), 128, 0, [0; 4], &[0; 16]);
        let echo = with_extension(&echo, 44, &[58, 0, 0x00, 0x01, 0, 0, 0, 7]);
        assert_eq!(Ipv6Summary::parse(&echo[14..]).unwrap().ndp, None);
    }

    #[test]
    fn multicast_mapping() {
        let ip = ip6("fd00::aabb:ccdd");
        assert_eq!(solicited_node(&ip), ip6("ff02::1:ffbb:ccdd"));
        assert_eq!(
            ipv6_multicast_mac(&solicited_node(&ip)),
            MacAddr([0x33, 0x33, 0xff, 0xbb, 0xcc, 0xdd])
        );
        assert!(is_ipv6_link_local(&ip6("fe80::1")));
        assert!(is_ipv6_link_local(&ip6("febf::1")));
        assert!(!is_ipv6_link_local(&ip6("fec0::1")));
        assert!(!is_ipv6_link_local(&ip6("fd00::1")));
    }

    proptest! {
        #[test]
        fn ethertype_conversion_is_lossless(value in any::<u16>()) {
            prop_assert_eq!(u16::from(EtherType::from(value)), value);
        }

        #[test]
        fn parsers_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            if let Ok(frame) = EthernetFrame::new_checked(&bytes[..]) {
                let _ = (frame.dst(), frame.src(), frame.ethertype(), frame.payload());
            }
            let _ = ArpRepr::parse(&bytes);
            let _ = ipv4_source(&bytes);
            let _ = ipv6_source(&bytes);
            let _ = Ipv6Summary::parse(&bytes);
            let _ = Ndp::parse(&bytes);
        }

        #[test]
        fn arp_emit_parse_roundtrip(
            op in any::<u16>(),
            smac in any::<[u8; 6]>(),
            sip in any::<u32>(),
            tmac in any::<[u8; 6]>(),
            tip in any::<u32>(),
        ) {
            let repr = ArpRepr {
                operation: ArpOperation::from(op),
                sender_mac: MacAddr(smac),
                sender_ip: Ipv4Addr::from(sip),
                target_mac: MacAddr(tmac),
                target_ip: Ipv4Addr::from(tip),
            };
            let mut buf = [0u8; ArpRepr::LEN];
            repr.emit(&mut buf).unwrap();
            prop_assert_eq!(ArpRepr::parse(&buf), Ok(repr));
        }

        #[test]
        fn ndp_parse_on_mutated_adverts_never_panics(
            options in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let frame = advert_with_options(&options);
            let _ = Ipv6Summary::parse(&frame[14..]);
        }
    }
}
