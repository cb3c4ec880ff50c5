//! IP packets in Ethernet frames as the gateway and the NAT read and write
//! them: a parsed view down to the transport header ([`IpFrame`]), and the
//! emitters of the UDP and ICMP echo frames they answer with ([`IpRepr`],
//! [`emit_udp`], [`emit_echo_reply`]).
//!
//! The views never panic, whatever the bytes; the emitters return
//! [`WireError::Truncated`] when `out` is too short and
//! [`WireError::Malformed`] for addresses of two families or a payload too
//! long for the length fields.

use std::net::{IpAddr, Ipv6Addr};

use etherparse::{
    Ethernet2Header, IcmpEchoHeader, Icmpv4Header, Icmpv4Slice, Icmpv4Type, Icmpv6Header,
    Icmpv6Slice, Icmpv6Type, IpNumber, Ipv4Header, Ipv4Slice, Ipv6FlowLabel, Ipv6Header, Ipv6Slice,
    LinkSlice, NetSlice, SlicedPacket, TcpSlice, TransportSlice, UdpHeader, UdpSlice,
};

use super::{EtherType, WireError};
use crate::MacAddr;

/// Ethernet II header.
const ETH_LEN: usize = 14;

/// An IP protocol (next header) number. Conversion from the wire never
/// fails: values without a name become [`IpProtocol::Unknown`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IpProtocol {
    /// 1
    Icmp,
    /// 6
    Tcp,
    /// 17
    Udp,
    /// 58
    Icmpv6,
    /// Any other value.
    Unknown(u8),
}

impl From<u8> for IpProtocol {
    fn from(value: u8) -> Self {
        match value {
            1 => IpProtocol::Icmp,
            6 => IpProtocol::Tcp,
            17 => IpProtocol::Udp,
            58 => IpProtocol::Icmpv6,
            other => IpProtocol::Unknown(other),
        }
    }
}

impl From<IpProtocol> for u8 {
    fn from(value: IpProtocol) -> Self {
        match value {
            IpProtocol::Icmp => 1,
            IpProtocol::Tcp => 6,
            IpProtocol::Udp => 17,
            IpProtocol::Icmpv6 => 58,
            IpProtocol::Unknown(other) => other,
        }
    }
}

/// The destination address of an IP packet (no Ethernet header), reading
/// the version and the address only.
pub fn ip_destination(packet: &[u8]) -> Option<IpAddr> {
    match packet.first()? >> 4 {
        4 => {
            let d: [u8; 4] = packet.get(16..20)?.try_into().ok()?;
            Some(IpAddr::from(d))
        }
        6 => {
            let d: [u8; 16] = packet.get(24..40)?.try_into().ok()?;
            Some(IpAddr::from(d))
        }
        _ => None,
    }
}

/// An Ethernet frame sliced down to its transport header: Ethernet, then
/// IPv4, IPv6 or something else, then TCP, UDP, ICMP, ICMPv6 if the IP
/// layer could be read through.
#[derive(Debug, Clone)]
pub struct IpFrame<'a> {
    packet: SlicedPacket<'a>,
    src_mac: MacAddr,
    dst_mac: MacAddr,
}

impl<'a> IpFrame<'a> {
    /// Slices `frame`. Fails when a header the frame announces is
    /// truncated or malformed.
    pub fn parse(frame: &'a [u8]) -> Result<Self, WireError> {
        let packet = SlicedPacket::from_ethernet(frame).map_err(|e| match e {
            etherparse::err::packet::SliceError::Len(_) => WireError::Truncated,
            _ => WireError::Malformed,
        })?;
        let Some(LinkSlice::Ethernet2(eth)) = &packet.link else {
            return Err(WireError::Unsupported);
        };
        let (src_mac, dst_mac) = (MacAddr(eth.source()), MacAddr(eth.destination()));
        Ok(IpFrame {
            packet,
            src_mac,
            dst_mac,
        })
    }

    /// The Ethernet source.
    pub fn src_mac(&self) -> MacAddr {
        self.src_mac
    }

    /// The Ethernet destination.
    pub fn dst_mac(&self) -> MacAddr {
        self.dst_mac
    }

    /// VLAN tags (or other link extensions) sit between the Ethernet header
    /// and the payload.
    pub fn has_link_extensions(&self) -> bool {
        !self.packet.link_exts.is_empty()
    }

    /// The IP header, if the frame carries IPv4 or IPv6.
    pub fn ip(&self) -> Option<IpHeader<'_, 'a>> {
        match &self.packet.net {
            Some(NetSlice::Ipv4(ip)) => Some(IpHeader::V4(Ipv4View(ip))),
            Some(NetSlice::Ipv6(ip)) => Some(IpHeader::V6(Ipv6View(ip))),
            _ => None,
        }
    }

    /// The transport header, if it could be read (not for fragments after
    /// the first, nor for protocols other than TCP, UDP, ICMP and ICMPv6).
    pub fn transport(&self) -> Option<TransportHeader<'_, 'a>> {
        match &self.packet.transport {
            Some(TransportSlice::Tcp(t)) => Some(TransportHeader::Tcp(TcpView(t))),
            Some(TransportSlice::Udp(u)) => Some(TransportHeader::Udp(UdpView(u))),
            Some(TransportSlice::Icmpv4(i)) => Some(TransportHeader::Icmpv4(Icmpv4View(i))),
            Some(TransportSlice::Icmpv6(i)) => Some(TransportHeader::Icmpv6(Icmpv6View(i))),
            _ => None,
        }
    }
}

/// The IP header of an [`IpFrame`].
#[derive(Debug, Clone, Copy)]
pub enum IpHeader<'s, 'a> {
    /// IPv4.
    V4(Ipv4View<'s, 'a>),
    /// IPv6.
    V6(Ipv6View<'s, 'a>),
}

impl IpHeader<'_, '_> {
    /// The source address.
    pub fn src(&self) -> IpAddr {
        match self {
            IpHeader::V4(ip) => ip.src().into(),
            IpHeader::V6(ip) => ip.src().into(),
        }
    }

    /// The destination address.
    pub fn dst(&self) -> IpAddr {
        match self {
            IpHeader::V4(ip) => ip.dst().into(),
            IpHeader::V6(ip) => ip.dst().into(),
        }
    }
}

/// An IPv4 header.
#[derive(Debug, Clone, Copy)]
pub struct Ipv4View<'s, 'a>(&'s Ipv4Slice<'a>);

impl Ipv4View<'_, '_> {
    /// The source address.
    pub fn src(&self) -> std::net::Ipv4Addr {
        self.0.header().source_addr()
    }

    /// The destination address.
    pub fn dst(&self) -> std::net::Ipv4Addr {
        self.0.header().destination_addr()
    }

    /// A fragment: more fragments follow, or this one is not the first.
    pub fn is_fragment(&self) -> bool {
        let h = self.0.header();
        h.more_fragments() || h.fragments_offset().value() != 0
    }

    /// The header checksum is right.
    pub fn checksum_ok(&self) -> bool {
        let h = self.0.header();
        h.to_header().calc_header_checksum() == h.header_checksum()
    }

    /// The packet's length as its header states it (without Ethernet
    /// padding).
    pub fn total_len(&self) -> usize {
        usize::from(self.0.header().total_len())
    }

    /// The transport header follows the IP header directly (no
    /// authentication header in between).
    pub fn transport_follows(&self) -> bool {
        self.0.payload().ip_number == self.0.header().protocol()
    }
}

/// An IPv6 header.
#[derive(Debug, Clone, Copy)]
pub struct Ipv6View<'s, 'a>(&'s Ipv6Slice<'a>);

impl Ipv6View<'_, '_> {
    /// The source address.
    pub fn src(&self) -> Ipv6Addr {
        self.0.header().source_addr()
    }

    /// The destination address.
    pub fn dst(&self) -> Ipv6Addr {
        self.0.header().destination_addr()
    }

    /// The packet's length as its header states it: the fixed header and
    /// the payload length (without Ethernet padding).
    pub fn total_len(&self) -> usize {
        Ipv6Header::LEN + usize::from(self.0.header().payload_length())
    }

    /// The transport header follows the fixed header directly: no
    /// extension headers, not a fragment.
    pub fn transport_follows(&self) -> bool {
        self.0.payload().ip_number == self.0.header().next_header()
            && !self.0.is_payload_fragmented()
    }
}

/// The transport header of an [`IpFrame`].
#[derive(Debug, Clone, Copy)]
pub enum TransportHeader<'s, 'a> {
    /// TCP.
    Tcp(TcpView<'s, 'a>),
    /// UDP.
    Udp(UdpView<'s, 'a>),
    /// ICMP (IPv4).
    Icmpv4(Icmpv4View<'s, 'a>),
    /// ICMPv6.
    Icmpv6(Icmpv6View<'s, 'a>),
}

/// A TCP segment.
#[derive(Debug, Clone, Copy)]
pub struct TcpView<'s, 'a>(&'s TcpSlice<'a>);

impl TcpView<'_, '_> {
    /// The source port.
    pub fn src_port(&self) -> u16 {
        self.0.source_port()
    }

    /// The destination port.
    pub fn dst_port(&self) -> u16 {
        self.0.destination_port()
    }

    /// SYN is set.
    pub fn syn(&self) -> bool {
        self.0.syn()
    }

    /// ACK is set.
    pub fn ack(&self) -> bool {
        self.0.ack()
    }

    /// RST is set.
    pub fn rst(&self) -> bool {
        self.0.rst()
    }

    /// FIN is set.
    pub fn fin(&self) -> bool {
        self.0.fin()
    }

    /// The checksum is right for a segment from `src` to `dst` (false for
    /// addresses of two families).
    pub fn checksum_ok(&self, src: IpAddr, dst: IpAddr) -> bool {
        let want = match (src, dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                self.0.calc_checksum_ipv4(s.octets(), d.octets()).ok()
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                self.0.calc_checksum_ipv6(s.octets(), d.octets()).ok()
            }
            _ => None,
        };
        want == Some(self.0.checksum())
    }
}

/// A UDP datagram.
#[derive(Debug, Clone, Copy)]
pub struct UdpView<'s, 'a>(&'s UdpSlice<'a>);

impl<'a> UdpView<'_, 'a> {
    /// The source port.
    pub fn src_port(&self) -> u16 {
        self.0.source_port()
    }

    /// The destination port.
    pub fn dst_port(&self) -> u16 {
        self.0.destination_port()
    }

    /// The payload.
    pub fn payload(&self) -> &'a [u8] {
        self.0.payload()
    }

    /// The checksum is right for a datagram from `src` to `dst`, or absent
    /// (zero) over IPv4; false for addresses of two families.
    pub fn checksum_ok(&self, src: IpAddr, dst: IpAddr) -> bool {
        let header = self.0.to_header();
        let want = match (src, dst) {
            (IpAddr::V4(_), IpAddr::V4(_)) if header.checksum == 0 => Some(0),
            (IpAddr::V4(s), IpAddr::V4(d)) => header
                .calc_checksum_ipv4_raw(s.octets(), d.octets(), self.payload())
                .ok(),
            (IpAddr::V6(s), IpAddr::V6(d)) => header
                .calc_checksum_ipv6_raw(s.octets(), d.octets(), self.payload())
                .ok(),
            _ => None,
        };
        want == Some(header.checksum)
    }
}

/// The identifier and sequence number of an ICMP or ICMPv6 echo message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Echo {
    /// Identifier.
    pub ident: u16,
    /// Sequence number.
    pub seq: u16,
}

impl From<IcmpEchoHeader> for Echo {
    fn from(h: IcmpEchoHeader) -> Self {
        Echo {
            ident: h.id,
            seq: h.seq,
        }
    }
}

impl From<Echo> for IcmpEchoHeader {
    fn from(e: Echo) -> Self {
        IcmpEchoHeader {
            id: e.ident,
            seq: e.seq,
        }
    }
}

/// An ICMP (IPv4) message.
#[derive(Debug, Clone, Copy)]
pub struct Icmpv4View<'s, 'a>(&'s Icmpv4Slice<'a>);

impl<'a> Icmpv4View<'_, 'a> {
    /// The echo header, if the message is an echo request.
    pub fn echo_request(&self) -> Option<Echo> {
        match self.0.icmp_type() {
            Icmpv4Type::EchoRequest(echo) => Some(echo.into()),
            _ => None,
        }
    }

    /// The checksum is right.
    pub fn checksum_ok(&self) -> bool {
        Icmpv4Header::with_checksum(self.0.icmp_type(), self.0.payload()).checksum
            == self.0.checksum()
    }

    /// What follows the 8-byte header (an echo message's data).
    pub fn payload(&self) -> &'a [u8] {
        self.0.payload()
    }

    /// The whole message, header included.
    pub fn message(&self) -> &'a [u8] {
        self.0.slice()
    }
}

/// An ICMPv6 message.
#[derive(Debug, Clone, Copy)]
pub struct Icmpv6View<'s, 'a>(&'s Icmpv6Slice<'a>);

impl<'a> Icmpv6View<'_, 'a> {
    /// The echo header, if the message is an echo request.
    pub fn echo_request(&self) -> Option<Echo> {
        match self.0.icmp_type() {
            Icmpv6Type::EchoRequest(echo) => Some(echo.into()),
            _ => None,
        }
    }

    /// The checksum is right for a message from `src` to `dst`.
    pub fn checksum_ok(&self, src: Ipv6Addr, dst: Ipv6Addr) -> bool {
        self.0.is_checksum_valid(src.octets(), dst.octets())
    }

    /// What follows the 8-byte header (an echo message's data).
    pub fn payload(&self) -> &'a [u8] {
        self.0.payload()
    }

    /// The whole message, header included.
    pub fn message(&self) -> &'a [u8] {
        self.0.slice()
    }
}

/// The Ethernet and IP headers of a frame to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpRepr {
    /// Ethernet source.
    pub src_mac: MacAddr,
    /// Ethernet destination.
    pub dst_mac: MacAddr,
    /// IP source; of the same family as `dst`.
    pub src: IpAddr,
    /// IP destination.
    pub dst: IpAddr,
    /// TTL or hop limit.
    pub hop_limit: u8,
    /// The IPv4 identification (unused with IPv6).
    pub ipv4_ident: u16,
    /// The IPv4 don't-fragment flag (unused with IPv6).
    pub dont_fragment: bool,
}

impl IpRepr {
    /// The Ethernet and IP headers, IPv4 with TTL 64, identification 0 and
    /// don't-fragment set (what etherparse's builder writes).
    pub fn new(src_mac: MacAddr, dst_mac: MacAddr, src: IpAddr, dst: IpAddr) -> Self {
        IpRepr {
            src_mac,
            dst_mac,
            src,
            dst,
            hop_limit: 64,
            ipv4_ident: 0,
            dont_fragment: true,
        }
    }

    /// Bytes of the Ethernet and IP headers [`Self::emit`] writes.
    pub fn header_len(&self) -> usize {
        ETH_LEN
            + match self.dst {
                IpAddr::V4(_) => Ipv4Header::MIN_LEN,
                IpAddr::V6(_) => Ipv6Header::LEN,
            }
    }

    /// Writes the Ethernet and IP headers at the start of `out`, for an IP
    /// payload of `payload_len` bytes of `protocol`.
    pub fn emit(
        &self,
        protocol: IpProtocol,
        payload_len: usize,
        out: &mut [u8],
    ) -> Result<(), WireError> {
        let header_len = self.header_len();
        let out = out.get_mut(..header_len).ok_or(WireError::Truncated)?;
        let len = u16::try_from(payload_len).map_err(|_| WireError::Malformed)?;
        let proto = IpNumber(protocol.into());
        let ethertype = match self.dst {
            IpAddr::V4(_) => EtherType::Ipv4,
            IpAddr::V6(_) => EtherType::Ipv6,
        };
        let eth = Ethernet2Header {
            source: self.src_mac.0,
            destination: self.dst_mac.0,
            ether_type: etherparse::EtherType(ethertype.into()),
        };
        out[..ETH_LEN].copy_from_slice(&eth.to_bytes());
        match (self.src, self.dst) {
            (IpAddr::V4(src), IpAddr::V4(dst)) => {
                let mut ip =
                    Ipv4Header::new(len, self.hop_limit, proto, src.octets(), dst.octets())
                        .map_err(|_| WireError::Malformed)?;
                ip.identification = self.ipv4_ident;
                ip.dont_fragment = self.dont_fragment;
                ip.header_checksum = ip.calc_header_checksum();
                out[ETH_LEN..].copy_from_slice(&ip.to_bytes());
            }
            (IpAddr::V6(src), IpAddr::V6(dst)) => {
                let ip = Ipv6Header {
                    traffic_class: 0,
                    flow_label: Ipv6FlowLabel::ZERO,
                    payload_length: len,
                    next_header: proto,
                    hop_limit: self.hop_limit,
                    source: src.octets(),
                    destination: dst.octets(),
                };
                out[ETH_LEN..].copy_from_slice(&ip.to_bytes());
            }
            _ => return Err(WireError::Malformed),
        }
        Ok(())
    }
}

/// Length of a UDP header.
pub const UDP_HEADER_LEN: usize = UdpHeader::LEN;

/// Bytes of a UDP frame along `ip` with a payload of `payload_len`.
pub fn udp_frame_len(ip: &IpRepr, payload_len: usize) -> usize {
    ip.header_len() + UDP_HEADER_LEN + payload_len
}

/// Writes the Ethernet, IP and UDP headers of `frame`, whose payload is
/// already in place after them (from `ip.header_len() + UDP_HEADER_LEN` to
/// the end of `frame`), checksum included.
pub fn emit_udp_headers(
    ip: &IpRepr,
    src_port: u16,
    dst_port: u16,
    frame: &mut [u8],
) -> Result<(), WireError> {
    let hdr = ip.header_len() + UDP_HEADER_LEN;
    if frame.len() < hdr {
        return Err(WireError::Truncated);
    }
    let udp_len = frame.len() - ip.header_len();
    let length = u16::try_from(udp_len).map_err(|_| WireError::Malformed)?;
    let mut udp = UdpHeader {
        source_port: src_port,
        destination_port: dst_port,
        length,
        checksum: 0,
    };
    let payload = &frame[hdr..];
    udp.checksum = match (ip.src, ip.dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            udp.calc_checksum_ipv4_raw(s.octets(), d.octets(), payload)
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            udp.calc_checksum_ipv6_raw(s.octets(), d.octets(), payload)
        }
        _ => return Err(WireError::Malformed),
    }
    .map_err(|_| WireError::Malformed)?;
    ip.emit(IpProtocol::Udp, udp_len, frame)?;
    frame[hdr - UDP_HEADER_LEN..hdr].copy_from_slice(&udp.to_bytes());
    Ok(())
}

/// Writes a whole Ethernet + IP + UDP frame into `out`; returns its length.
pub fn emit_udp(
    ip: &IpRepr,
    src_port: u16,
    dst_port: u16,
    payload: &[u8],
    out: &mut [u8],
) -> Result<usize, WireError> {
    let len = udp_frame_len(ip, payload.len());
    let frame = out.get_mut(..len).ok_or(WireError::Truncated)?;
    frame[len - payload.len()..].copy_from_slice(payload);
    emit_udp_headers(ip, src_port, dst_port, frame)?;
    Ok(len)
}

/// Length of an ICMP or ICMPv6 echo header.
pub const ECHO_HEADER_LEN: usize = 8;

/// Bytes of an echo frame along `ip` carrying `payload_len` bytes of data.
pub fn echo_frame_len(ip: &IpRepr, payload_len: usize) -> usize {
    ip.header_len() + ECHO_HEADER_LEN + payload_len
}

/// Writes an ICMP (IPv4) or ICMPv6 echo reply with `echo` and `payload`
/// along `ip` into `out`, checksum included; returns its length.
pub fn emit_echo_reply(
    ip: &IpRepr,
    echo: Echo,
    payload: &[u8],
    out: &mut [u8],
) -> Result<usize, WireError> {
    let len = echo_frame_len(ip, payload.len());
    let frame = out.get_mut(..len).ok_or(WireError::Truncated)?;
    let (protocol, header): (IpProtocol, [u8; ECHO_HEADER_LEN]) = match (ip.src, ip.dst) {
        (IpAddr::V4(_), IpAddr::V4(_)) => {
            let h = Icmpv4Header::with_checksum(Icmpv4Type::EchoReply(echo.into()), payload);
            let bytes = h.to_bytes();
            (
                IpProtocol::Icmp,
                bytes
                    .as_slice()
                    .try_into()
                    .map_err(|_| WireError::Malformed)?,
            )
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            let h = Icmpv6Header::with_checksum(
                Icmpv6Type::EchoReply(echo.into()),
                s.octets(),
                d.octets(),
                payload,
            )
            .map_err(|_| WireError::Malformed)?;
            let bytes = h.to_bytes();
            (
                IpProtocol::Icmpv6,
                bytes
                    .as_slice()
                    .try_into()
                    .map_err(|_| WireError::Malformed)?,
            )
        }
        _ => return Err(WireError::Malformed),
    };
    ip.emit(protocol, ECHO_HEADER_LEN + payload.len(), frame)?;
    let hdr = ip.header_len();
    frame[hdr..hdr + ECHO_HEADER_LEN].copy_from_slice(&header);
    frame[hdr + ECHO_HEADER_LEN..].copy_from_slice(payload);
    Ok(len)
}

/// Writes an ICMPv6 message of `icmp_type`/`code` along `ip` into `out`:
/// the 4 bytes after the checksum and the `body` after them are given raw;
/// the checksum is filled in. Returns the frame's length.
pub(crate) fn emit_icmpv6_raw(
    ip: &IpRepr,
    icmp_type: u8,
    code: u8,
    bytes5to8: [u8; 4],
    body: &[u8],
    out: &mut [u8],
) -> Result<usize, WireError> {
    let len = echo_frame_len(ip, body.len());
    let frame = out.get_mut(..len).ok_or(WireError::Truncated)?;
    let (IpAddr::V6(s), IpAddr::V6(d)) = (ip.src, ip.dst) else {
        return Err(WireError::Malformed);
    };
    let h = Icmpv6Header::with_checksum(
        Icmpv6Type::Unknown {
            type_u8: icmp_type,
            code_u8: code,
            bytes5to8,
        },
        s.octets(),
        d.octets(),
        body,
    )
    .map_err(|_| WireError::Malformed)?;
    ip.emit(IpProtocol::Icmpv6, ECHO_HEADER_LEN + body.len(), frame)?;
    let hdr = ip.header_len();
    frame[hdr..hdr + ECHO_HEADER_LEN].copy_from_slice(&h.to_bytes());
    frame[hdr + ECHO_HEADER_LEN..].copy_from_slice(body);
    Ok(len)
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::PacketBuilder;

    const A: MacAddr = MacAddr([0x02, 0x42, 0x0a, 0, 0, 2]);
    const B: MacAddr = MacAddr([0x02, 0x42, 0x0a, 0, 0, 1]);

    fn v4(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn echo_replies_match_the_reference_builder() {
        let echo = Echo { ident: 7, seq: 9 };
        let mut out = [0u8; 256];
        for (src, dst) in [("10.0.0.1", "10.0.0.2"), ("fd00::1", "fd00::2")] {
            let ip = IpRepr::new(B, A, v4(src), v4(dst));
            let n = emit_echo_reply(&ip, echo, b"ping", &mut out).unwrap();
            let eth = PacketBuilder::ethernet2(B.0, A.0);
            let mut want = Vec::new();
            match (ip.src, ip.dst) {
                (IpAddr::V4(s), IpAddr::V4(d)) => eth
                    .ipv4(s.octets(), d.octets(), 64)
                    .icmpv4(Icmpv4Type::EchoReply(echo.into()))
                    .write(&mut want, b"ping")
                    .unwrap(),
                (IpAddr::V6(s), IpAddr::V6(d)) => eth
                    .ipv6(s.octets(), d.octets(), 64)
                    .icmpv6(Icmpv6Type::EchoReply(echo.into()))
                    .write(&mut want, b"ping")
                    .unwrap(),
                _ => unreachable!(),
            }
            assert_eq!(&out[..n], &want[..]);
            assert_eq!(n, echo_frame_len(&ip, 4));
        }
    }

    #[test]
    fn ipv4_identification_and_fragment_flag_are_written() {
        let ip = IpRepr {
            ipv4_ident: 0x1234,
            dont_fragment: false,
            ..IpRepr::new(B, A, v4("10.0.0.1"), v4("10.0.0.2"))
        };
        let mut out = [0u8; 64];
        let n = emit_udp(&ip, 53, 4000, b"dns", &mut out).unwrap();
        assert_eq!(n, udp_frame_len(&ip, 3));
        assert_eq!(&out[18..20], &[0x12, 0x34]);
        assert_eq!(out[20] & 0x40, 0, "DF clear");
        let frame = IpFrame::parse(&out[..n]).unwrap();
        let Some(IpHeader::V4(h)) = frame.ip() else {
            panic!("not IPv4")
        };
        assert!(h.checksum_ok() && !h.is_fragment() && h.transport_follows());
        let Some(TransportHeader::Udp(u)) = frame.transport() else {
            panic!("not UDP")
        };
        assert_eq!(
            (u.src_port(), u.dst_port(), u.payload()),
            (53, 4000, &b"dns"[..])
        );
        assert!(u.checksum_ok(ip.src, ip.dst));
        assert!(!u.checksum_ok(ip.src, v4("10.0.0.3")));
    }

    #[test]
    fn emitters_refuse_short_buffers_and_mixed_families() {
        let ip = IpRepr::new(B, A, v4("10.0.0.1"), v4("10.0.0.2"));
        let mut out = [0u8; 43];
        assert_eq!(
            emit_udp(&ip, 1, 2, b"xy", &mut out),
            Err(WireError::Truncated)
        );
        let mixed = IpRepr::new(B, A, v4("10.0.0.1"), v4("fd00::2"));
        let mut out = [0u8; 128];
        assert_eq!(
            emit_udp(&mixed, 1, 2, b"xy", &mut out),
            Err(WireError::Malformed)
        );
    }

    #[test]
    fn tcp_view_reads_flags_ports_and_checksum() {
        let mut f = Vec::new();
        PacketBuilder::ethernet2(A.0, B.0)
            .ipv4([10, 0, 0, 2], [198, 51, 100, 9], 64)
            .tcp(40000, 80, 1, 1024)
            .syn()
            .write(&mut f, &[])
            .unwrap();
        let (src, dst) = (v4("10.0.0.2"), v4("198.51.100.9"));
        let frame = IpFrame::parse(&f).unwrap();
        assert_eq!((frame.src_mac(), frame.dst_mac()), (A, B));
        assert!(!frame.has_link_extensions());
        let Some(TransportHeader::Tcp(t)) = frame.transport() else {
            panic!("not TCP")
        };
        assert_eq!((t.src_port(), t.dst_port()), (40000, 80));
        assert!(t.syn() && !t.ack() && !t.rst() && !t.fin());
        assert!(t.checksum_ok(src, dst));
        assert!(!t.checksum_ok(src, v4("198.51.100.10")));
        assert_eq!(ip_destination(&f[ETH_LEN..]), Some(dst));
        assert_eq!(ip_destination(&[0x45]), None);
        assert_eq!(ip_destination(&[]), None);
    }

    #[test]
    fn zero_udp_checksum_means_none_over_ipv4_only() {
        let mut out = [0u8; 128];
        for (src, dst, ok) in [
            ("10.0.0.2", "10.0.0.1", true),
            ("fd00::2", "fd00::1", false),
        ] {
            let ip = IpRepr::new(A, B, v4(src), v4(dst));
            let n = emit_udp(&ip, 4000, 53, b"q", &mut out).unwrap();
            let at = ip.header_len() + 6;
            out[at..at + 2].copy_from_slice(&[0, 0]);
            let frame = IpFrame::parse(&out[..n]).unwrap();
            let Some(TransportHeader::Udp(u)) = frame.transport() else {
                panic!("not UDP")
            };
            assert_eq!(u.checksum_ok(ip.src, ip.dst), ok, "{src}");
        }
        assert_eq!(IpProtocol::from(17), IpProtocol::Udp);
        assert_eq!(u8::from(IpProtocol::Unknown(200)), 200);
    }
}
