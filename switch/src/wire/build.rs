//! Frames the switch writes whole: ARP, UDP and neighbour discovery.
//!
//! Each `emit_*` function writes one frame into the caller's buffer and
//! returns its length, or [`WireError::Truncated`] when the buffer is too
//! short; this is the form for the per-packet path (a suppressed ARP or
//! neighbour solicitation is answered straight into the transmit buffer).
//! The `build_*` functions wrap them for tests, benchmarks and the control
//! plane, returning a fresh `Vec`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddrV4, SocketAddrV6};

use super::ip::{emit_icmpv6_raw, emit_udp, udp_frame_len, IpRepr, ECHO_HEADER_LEN};
use super::{
    ipv6_multicast_mac, solicited_node, ArpOperation, ArpRepr, EtherType, EthernetRepr, Ndp,
    NdpKind, WireError,
};
use crate::MacAddr;

/// Bytes of an Ethernet frame carrying an Ethernet/IPv4 ARP packet.
pub const ARP_FRAME_LEN: usize = 14 + ArpRepr::LEN;

/// Writes an Ethernet frame carrying `repr`, sent to `eth_dst`, into `out`.
pub fn emit_arp(eth_dst: MacAddr, repr: &ArpRepr, out: &mut [u8]) -> Result<usize, WireError> {
    let eth = EthernetRepr {
        src: repr.sender_mac,
        dst: eth_dst,
        ethertype: EtherType::Arp,
    };
    let frame = out.get_mut(..ARP_FRAME_LEN).ok_or(WireError::Truncated)?;
    let (head, body) = frame.split_at_mut(eth.buffer_len());
    eth.emit(head)?;
    repr.emit(body)?;
    Ok(ARP_FRAME_LEN)
}

/// Writes a broadcast ARP request from `sender_mac`/`sender_ip` asking for
/// `target_ip`. A `sender_ip` of 0.0.0.0 makes an ARP probe.
pub fn emit_arp_request(
    sender_mac: MacAddr,
    sender_ip: Ipv4Addr,
    target_ip: Ipv4Addr,
    out: &mut [u8],
) -> Result<usize, WireError> {
    let repr = ArpRepr {
        operation: ArpOperation::Request,
        sender_mac,
        sender_ip,
        target_mac: MacAddr::default(),
        target_ip,
    };
    emit_arp(MacAddr::BROADCAST, &repr, out)
}

/// Writes a unicast ARP reply telling `target_mac`/`target_ip` that
/// `sender_ip` is at `sender_mac`.
pub fn emit_arp_reply(
    sender_mac: MacAddr,
    sender_ip: Ipv4Addr,
    target_mac: MacAddr,
    target_ip: Ipv4Addr,
    out: &mut [u8],
) -> Result<usize, WireError> {
    let repr = ArpRepr {
        operation: ArpOperation::Reply,
        sender_mac,
        sender_ip,
        target_mac,
        target_ip,
    };
    emit_arp(target_mac, &repr, out)
}

/// Writes an Ethernet + IPv4 + UDP frame (TTL 64, checksums filled in).
pub fn emit_ipv4_udp(
    src_mac: MacAddr,
    dst_mac: MacAddr,
    src: SocketAddrV4,
    dst: SocketAddrV4,
    payload: &[u8],
    out: &mut [u8],
) -> Result<usize, WireError> {
    let ip = IpRepr::new(src_mac, dst_mac, (*src.ip()).into(), (*dst.ip()).into());
    emit_udp(&ip, src.port(), dst.port(), payload, out)
}

/// Writes an Ethernet + IPv6 + UDP frame (hop limit 64, checksum filled in).
pub fn emit_ipv6_udp(
    src_mac: MacAddr,
    dst_mac: MacAddr,
    src: SocketAddrV6,
    dst: SocketAddrV6,
    payload: &[u8],
    out: &mut [u8],
) -> Result<usize, WireError> {
    let ip = IpRepr::new(src_mac, dst_mac, (*src.ip()).into(), (*dst.ip()).into());
    emit_udp(&ip, src.port(), dst.port(), payload, out)
}

/// The addresses of a frame carrying an IPv6 packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv6Endpoints {
    /// Ethernet source.
    pub src_mac: MacAddr,
    /// Ethernet destination.
    pub dst_mac: MacAddr,
    /// IPv6 source.
    pub src_ip: Ipv6Addr,
    /// IPv6 destination.
    pub dst_ip: Ipv6Addr,
}

/// Writes an Ethernet + IPv6 + ICMPv6 frame with hop limit 255 (as
/// neighbour discovery requires): the 4 bytes after the checksum and the
/// `body` after them are given raw; the checksum is filled in.
pub fn emit_icmpv6(
    addrs: Ipv6Endpoints,
    icmp_type: u8,
    code: u8,
    bytes5to8: [u8; 4],
    body: &[u8],
    out: &mut [u8],
) -> Result<usize, WireError> {
    let ip = IpRepr {
        hop_limit: 255,
        ..IpRepr::new(
            addrs.src_mac,
            addrs.dst_mac,
            IpAddr::V6(addrs.src_ip),
            IpAddr::V6(addrs.dst_ip),
        )
    };
    emit_icmpv6_raw(&ip, icmp_type, code, bytes5to8, body, out)
}

fn lladdr_option(kind: u8, mac: MacAddr) -> [u8; 8] {
    let m = mac.0;
    [kind, 1, m[0], m[1], m[2], m[3], m[4], m[5]]
}

/// A target address and an optional link-layer address option: the body
/// of a solicitation or advertisement.
fn target_body(target: Ipv6Addr, option: Option<[u8; 8]>) -> ([u8; 24], usize) {
    let mut body = [0u8; 24];
    body[..16].copy_from_slice(&target.octets());
    match option {
        Some(o) => {
            body[16..].copy_from_slice(&o);
            (body, 24)
        }
        None => (body, 16),
    }
}

/// Writes a neighbour solicitation from `src_mac`/`src_ip` for `target`,
/// sent to the target's solicited-node group. With `src_ip` unspecified
/// (`::`) it is a duplicate address detection probe and carries no source
/// link-layer address option (RFC 4861 4.3).
pub fn emit_neighbor_solicit(
    src_mac: MacAddr,
    src_ip: Ipv6Addr,
    target: Ipv6Addr,
    out: &mut [u8],
) -> Result<usize, WireError> {
    let group = solicited_node(&target);
    let option = (!src_ip.is_unspecified()).then(|| lladdr_option(Ndp::OPT_SOURCE_LLADDR, src_mac));
    let (body, len) = target_body(target, option);
    let addrs = Ipv6Endpoints {
        src_mac,
        dst_mac: ipv6_multicast_mac(&group),
        src_ip,
        dst_ip: group,
    };
    let kind = NdpKind::NeighborSolicit.icmp_type();
    emit_icmpv6(addrs, kind, 0, [0; 4], &body[..len], out)
}

/// Writes a solicited, override neighbour advertisement for `target`, with
/// a target link-layer address option of `target_lladdr` if given.
pub fn emit_neighbor_advert(
    addrs: Ipv6Endpoints,
    target: Ipv6Addr,
    target_lladdr: Option<MacAddr>,
    out: &mut [u8],
) -> Result<usize, WireError> {
    let option = target_lladdr.map(|mac| lladdr_option(Ndp::OPT_TARGET_LLADDR, mac));
    let (body, len) = target_body(target, option);
    // Flags: Solicited (0x40) and Override (0x20).
    let kind = NdpKind::NeighborAdvert.icmp_type();
    emit_icmpv6(addrs, kind, 0, [0x60, 0, 0, 0], &body[..len], out)
}

/// Writes a router advertisement from `src_mac`/`src_ip` to all nodes, with
/// a source link-layer address option and a router lifetime of 1800 s.
pub fn emit_router_advert(
    src_mac: MacAddr,
    src_ip: Ipv6Addr,
    out: &mut [u8],
) -> Result<usize, WireError> {
    let all_nodes = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
    let mut body = [0u8; 16]; // reachable time, retransmit timer, option
    body[8..].copy_from_slice(&lladdr_option(Ndp::OPT_SOURCE_LLADDR, src_mac));
    let lifetime = 1800u16.to_be_bytes();
    let addrs = Ipv6Endpoints {
        src_mac,
        dst_mac: ipv6_multicast_mac(&all_nodes),
        src_ip,
        dst_ip: all_nodes,
    };
    let kind = NdpKind::RouterAdvert.icmp_type();
    emit_icmpv6(
        addrs,
        kind,
        0,
        [64, 0, lifetime[0], lifetime[1]],
        &body,
        out,
    )
}

/// Ethernet, IPv6 and ICMPv6 headers in front of an ICMPv6 body.
const ICMPV6_HEADERS_LEN: usize = 14 + 40 + ECHO_HEADER_LEN;

/// A fresh `Vec` of up to `len` bytes that `emit` fills.
fn build(len: usize, emit: impl FnOnce(&mut [u8]) -> Result<usize, WireError>) -> Vec<u8> {
    let mut frame = vec![0u8; len];
    // Every caller sizes `len` for its frame; emitting fails only for
    // payloads the length fields cannot describe (64 KiB).
    let n = emit(&mut frame).expect("frame fits its length fields");
    frame.truncate(n);
    frame
}

/// What a synthetic frame from a container carries ([`build_probe`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    /// An ICMP or ICMPv6 echo request.
    Echo {
        /// Identifier.
        ident: u16,
        /// Sequence number.
        seq: u16,
    },
    /// A UDP datagram (empty).
    Udp {
        /// Source port.
        src_port: u16,
        /// Destination port.
        dst_port: u16,
    },
    /// A TCP SYN.
    TcpSyn {
        /// Source port.
        src_port: u16,
        /// Destination port.
        dst_port: u16,
    },
}

/// The frame a container sends first to reach `dst` with `probe` (an echo
/// request, a datagram, a SYN), from `src_mac`/`src` to `dst_mac`, with
/// every checksum filled in: the synthetic frame of `vswitch trace`.
/// [`WireError::Malformed`] when `src` and `dst` are of different families.
pub fn build_probe(
    src_mac: MacAddr,
    dst_mac: MacAddr,
    src: IpAddr,
    dst: IpAddr,
    probe: Probe,
) -> Result<Vec<u8>, WireError> {
    use etherparse::{IcmpEchoHeader, Icmpv4Type, Icmpv6Type, PacketBuilder};
    let eth = PacketBuilder::ethernet2(src_mac.0, dst_mac.0);
    let mut out = Vec::with_capacity(128);
    let payload: &[u8] = match probe {
        Probe::Echo { .. } => b"vswitch trace",
        _ => &[],
    };
    let (ip, v6) = match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => (eth.ipv4(s.octets(), d.octets(), 64), false),
        (IpAddr::V6(s), IpAddr::V6(d)) => (eth.ipv6(s.octets(), d.octets(), 64), true),
        _ => return Err(WireError::Malformed),
    };
    let written = match probe {
        Probe::Echo { ident, seq } => {
            let echo = IcmpEchoHeader { id: ident, seq };
            if v6 {
                ip.icmpv6(Icmpv6Type::EchoRequest(echo))
                    .write(&mut out, payload)
            } else {
                ip.icmpv4(Icmpv4Type::EchoRequest(echo))
                    .write(&mut out, payload)
            }
        }
        Probe::Udp { src_port, dst_port } => ip.udp(src_port, dst_port).write(&mut out, payload),
        Probe::TcpSyn { src_port, dst_port } => ip
            .tcp(src_port, dst_port, 1, 64240)
            .syn()
            .write(&mut out, payload),
    };
    written.map_err(|_| WireError::Malformed)?;
    Ok(out)
}

/// [`emit_arp`] into a fresh `Vec`.
pub fn build_arp(eth_dst: MacAddr, repr: &ArpRepr) -> Vec<u8> {
    build(ARP_FRAME_LEN, |out| emit_arp(eth_dst, repr, out))
}

/// [`emit_arp_request`] into a fresh `Vec`.
pub fn build_arp_request(sender_mac: MacAddr, sender_ip: Ipv4Addr, target_ip: Ipv4Addr) -> Vec<u8> {
    build(ARP_FRAME_LEN, |out| {
        emit_arp_request(sender_mac, sender_ip, target_ip, out)
    })
}

/// [`emit_arp_reply`] into a fresh `Vec`.
pub fn build_arp_reply(
    sender_mac: MacAddr,
    sender_ip: Ipv4Addr,
    target_mac: MacAddr,
    target_ip: Ipv4Addr,
) -> Vec<u8> {
    build(ARP_FRAME_LEN, |out| {
        emit_arp_reply(sender_mac, sender_ip, target_mac, target_ip, out)
    })
}

/// [`emit_ipv4_udp`] into a fresh `Vec`. Panics on a payload larger than
/// one IPv4 packet holds.
pub fn build_ipv4_udp(
    src_mac: MacAddr,
    dst_mac: MacAddr,
    src: SocketAddrV4,
    dst: SocketAddrV4,
    payload: &[u8],
) -> Vec<u8> {
    let ip = IpRepr::new(src_mac, dst_mac, (*src.ip()).into(), (*dst.ip()).into());
    build(udp_frame_len(&ip, payload.len()), |out| {
        emit_ipv4_udp(src_mac, dst_mac, src, dst, payload, out)
    })
}

/// [`emit_ipv6_udp`] into a fresh `Vec`. Panics on a payload larger than
/// one IPv6 packet holds.
pub fn build_ipv6_udp(
    src_mac: MacAddr,
    dst_mac: MacAddr,
    src: SocketAddrV6,
    dst: SocketAddrV6,
    payload: &[u8],
) -> Vec<u8> {
    let ip = IpRepr::new(src_mac, dst_mac, (*src.ip()).into(), (*dst.ip()).into());
    build(udp_frame_len(&ip, payload.len()), |out| {
        emit_ipv6_udp(src_mac, dst_mac, src, dst, payload, out)
    })
}

/// [`emit_icmpv6`] into a fresh `Vec`. Panics on a body larger than one
/// IPv6 packet holds.
pub fn build_icmpv6(
    addrs: Ipv6Endpoints,
    icmp_type: u8,
    code: u8,
    bytes5to8: [u8; 4],
    body: &[u8],
) -> Vec<u8> {
    build(ICMPV6_HEADERS_LEN + body.len(), |out| {
        emit_icmpv6(addrs, icmp_type, code, bytes5to8, body, out)
    })
}

/// [`emit_neighbor_solicit`] into a fresh `Vec`.
pub fn build_neighbor_solicit(src_mac: MacAddr, src_ip: Ipv6Addr, target: Ipv6Addr) -> Vec<u8> {
    build(ICMPV6_HEADERS_LEN + 24, |out| {
        emit_neighbor_solicit(src_mac, src_ip, target, out)
    })
}

/// [`emit_neighbor_advert`] into a fresh `Vec`.
pub fn build_neighbor_advert(
    addrs: Ipv6Endpoints,
    target: Ipv6Addr,
    target_lladdr: Option<MacAddr>,
) -> Vec<u8> {
    build(ICMPV6_HEADERS_LEN + 24, |out| {
        emit_neighbor_advert(addrs, target, target_lladdr, out)
    })
}

/// [`emit_router_advert`] into a fresh `Vec`.
pub fn build_router_advert(src_mac: MacAddr, src_ip: Ipv6Addr) -> Vec<u8> {
    build(ICMPV6_HEADERS_LEN + 16, |out| {
        emit_router_advert(src_mac, src_ip, out)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::PacketBuilder;

    const MAC_A: MacAddr = MacAddr([0x02, 0x42, 0xac, 0x11, 0x00, 0x02]);
    const MAC_B: MacAddr = MacAddr([0x02, 0x42, 0xac, 0x11, 0x00, 0x03]);

    fn ip6(s: &str) -> Ipv6Addr {
        s.parse().unwrap()
    }

    /// What etherparse's builder writes, the reference the emitters match
    /// byte for byte.
    fn reference_udp(v6: bool, payload: &[u8]) -> Vec<u8> {
        let b = PacketBuilder::ethernet2(MAC_A.0, MAC_B.0);
        let b = if v6 {
            b.ipv6(ip6("fd00::2").octets(), ip6("fd00::3").octets(), 64)
                .udp(4000, 53)
        } else {
            b.ipv4([172, 17, 0, 2], [172, 17, 0, 3], 64).udp(4000, 53)
        };
        let mut out = Vec::new();
        b.write(&mut out, payload).unwrap();
        out
    }

    #[test]
    fn udp_emitters_match_the_reference_builder() {
        for payload in [&b""[..], b"x", b"hello, world"] {
            let v4 = build_ipv4_udp(
                MAC_A,
                MAC_B,
                "172.17.0.2:4000".parse().unwrap(),
                "172.17.0.3:53".parse().unwrap(),
                payload,
            );
            assert_eq!(v4, reference_udp(false, payload));
            let v6 = build_ipv6_udp(
                MAC_A,
                MAC_B,
                "[fd00::2]:4000".parse().unwrap(),
                "[fd00::3]:53".parse().unwrap(),
                payload,
            );
            assert_eq!(v6, reference_udp(true, payload));
        }
    }

    #[test]
    fn icmpv6_emitter_matches_the_reference_builder() {
        let addrs = Ipv6Endpoints {
            src_mac: MAC_A,
            dst_mac: MAC_B,
            src_ip: ip6("fd00::2"),
            dst_ip: ip6("fd00::3"),
        };
        let mut want = Vec::new();
        PacketBuilder::ethernet2(MAC_A.0, MAC_B.0)
            .ipv6(addrs.src_ip.octets(), addrs.dst_ip.octets(), 255)
            .icmpv6_raw(136, 0, [0x60, 0, 0, 0])
            .write(&mut want, &[7; 24])
            .unwrap();
        assert_eq!(build_icmpv6(addrs, 136, 0, [0x60, 0, 0, 0], &[7; 24]), want);
    }

    #[test]
    fn emitters_refuse_short_buffers() {
        let mut out = [0u8; 41];
        assert_eq!(
            emit_arp_request(MAC_A, Ipv4Addr::LOCALHOST, Ipv4Addr::LOCALHOST, &mut out),
            Err(WireError::Truncated)
        );
        let mut out = [0u8; 85];
        assert_eq!(
            emit_neighbor_solicit(MAC_A, ip6("fd00::2"), ip6("fd00::3"), &mut out),
            Err(WireError::Truncated)
        );
        let mut out = [0u8; 86];
        assert_eq!(
            emit_neighbor_solicit(MAC_A, ip6("fd00::2"), ip6("fd00::3"), &mut out),
            Ok(86)
        );
        assert_eq!(
            &out[..86],
            &build_neighbor_solicit(MAC_A, ip6("fd00::2"), ip6("fd00::3"))[..]
        );
    }
}
