//! What a policy looks at in a frame: addresses, protocol, ports, TCP
//! flags, and for ICMP errors the connection they quote. Reads only the
//! headers, never panics, allocates nothing.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

const ETH: usize = 14;

/// What kind of packet it is, as the flow table treats it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Opens or continues a flow of its own tuple.
    Flow,
    /// An ICMP error about the flow it quotes (the tuple is the quoted
    /// packet's, turned round to be this packet's direction).
    Related,
    /// Neighbour discovery and multicast listener messages: the link's own
    /// business, never a policy's.
    Link,
    /// A fragment after the first: no ports to look at.
    Fragment,
}

/// The fields of one IPv4 or IPv6 packet a policy decides on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowPacket {
    /// Source address.
    pub src: IpAddr,
    /// Destination address.
    pub dst: IpAddr,
    /// IP protocol number.
    pub proto: u8,
    /// Source port (ICMP echo request: its identifier; 0 otherwise).
    pub sport: u16,
    /// Destination port (ICMP echo reply: its identifier; 0 otherwise).
    pub dport: u16,
    /// TCP flags (0 for other protocols).
    pub tcp_flags: u8,
    /// How the flow table treats it.
    pub kind: Kind,
    /// Offset of the IP header's TTL or hop limit in the frame.
    pub ttl_at: usize,
}

/// TCP flag bits.
pub mod tcp {
    /// FIN.
    pub const FIN: u8 = 0x01;
    /// SYN.
    pub const SYN: u8 = 0x02;
    /// RST.
    pub const RST: u8 = 0x04;
    /// ACK.
    pub const ACK: u8 = 0x10;
}

const ICMP: u8 = 1;
const ICMPV6: u8 = 58;
const TCP: u8 = 6;
const UDP: u8 = 17;
const SCTP: u8 = 132;

/// The IP header of `ip` (at `at` in the frame): addresses, protocol, the
/// offset of the transport header, the TTL's offset and whether it is a
/// later fragment. `None` when it is too short or not IP.
fn ip_header(ip: &[u8], v6: bool) -> Option<(IpAddr, IpAddr, u8, usize, usize, bool)> {
    if !v6 {
        if ip.len() < 20 || ip[0] >> 4 != 4 {
            return None;
        }
        let ihl = usize::from(ip[0] & 0x0f) * 4;
        if ihl < 20 || ip.len() < ihl {
            return None;
        }
        let frag = u16::from_be_bytes([ip[6], ip[7]]) & 0x1fff != 0;
        let src = Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
        let dst = Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
        return Some((src.into(), dst.into(), ip[9], ihl, 8, frag));
    }
    if ip.len() < 40 || ip[0] >> 4 != 6 {
        return None;
    }
    let src: [u8; 16] = ip[8..24].try_into().ok()?;
    let dst: [u8; 16] = ip[24..40].try_into().ok()?;
    let (mut next, mut at, mut frag) = (ip[6], 40usize, false);
    // Extension headers, a few at most.
    for _ in 0..8 {
        match next {
            0 | 43 | 60 => {
                let h = ip.get(at..at + 2)?;
                next = h[0];
                at += (usize::from(h[1]) + 1) * 8;
            }
            44 => {
                let h = ip.get(at..at + 8)?;
                next = h[0];
                frag |= u16::from_be_bytes([h[2], h[3]]) >> 3 != 0;
                at += 8;
            }
            _ => break,
        }
    }
    if at > ip.len() {
        return None;
    }
    Some((
        Ipv6Addr::from(src).into(),
        Ipv6Addr::from(dst).into(),
        next,
        at,
        7,
        frag,
    ))
}

/// Ports of a transport header (ICMP echo: the identifier on the side of
/// its asker), TCP flags, and whether an ICMP message is an error or the
/// link's own.
fn transport(proto: u8, l4: &[u8]) -> Option<(u16, u16, u8, Kind)> {
    match proto {
        TCP => {
            let h = l4.get(..14)?;
            Some((
                u16::from_be_bytes([h[0], h[1]]),
                u16::from_be_bytes([h[2], h[3]]),
                h[13],
                Kind::Flow,
            ))
        }
        UDP | SCTP => {
            let h = l4.get(..4)?;
            Some((
                u16::from_be_bytes([h[0], h[1]]),
                u16::from_be_bytes([h[2], h[3]]),
                0,
                Kind::Flow,
            ))
        }
        ICMP | ICMPV6 => {
            let h = l4.get(..8)?;
            let ident = u16::from_be_bytes([h[4], h[5]]);
            let (request, reply) = if proto == ICMP { (8, 0) } else { (128, 129) };
            let kind = match (proto, h[0]) {
                (ICMP, 3 | 4 | 5 | 11 | 12) | (ICMPV6, 1..=4) => Kind::Related,
                (ICMPV6, 130..=137 | 143) => Kind::Link,
                _ => Kind::Flow,
            };
            let (sport, dport) = match h[0] {
                t if t == request => (ident, 0),
                t if t == reply => (0, ident),
                _ => (0, 0),
            };
            Some((sport, dport, 0, kind))
        }
        _ => Some((0, 0, 0, Kind::Flow)),
    }
}

impl FlowPacket {
    /// Reads an Ethernet frame carrying IPv4 or IPv6; `None` for anything
    /// else (ARP) or a truncated header.
    pub fn parse(frame: &[u8]) -> Option<FlowPacket> {
        let v6 = match u16::from_be_bytes([*frame.get(12)?, *frame.get(13)?]) {
            0x0800 => false,
            0x86dd => true,
            _ => return None,
        };
        let ip = frame.get(ETH..)?;
        let (src, dst, proto, l4_at, ttl_off, frag) = ip_header(ip, v6)?;
        let mut pkt = FlowPacket {
            src,
            dst,
            proto,
            sport: 0,
            dport: 0,
            tcp_flags: 0,
            kind: Kind::Fragment,
            ttl_at: ETH + ttl_off,
        };
        if frag {
            return Some(pkt);
        }
        let (sport, dport, flags, kind) = transport(proto, &ip[l4_at..])?;
        (pkt.sport, pkt.dport, pkt.tcp_flags, pkt.kind) = (sport, dport, flags, kind);
        if kind == Kind::Related {
            // The quoted packet went from this packet's destination to its
            // source: its tuple, turned round, is this one's.
            let quoted = ip.get(l4_at + 8..)?;
            let (qsrc, qdst, qproto, q_l4, _, _) = ip_header(quoted, v6)?;
            let ports = quoted
                .get(q_l4..q_l4 + 8)
                .and_then(|l4| transport(qproto, l4))
                .map_or((0, 0), |(s, d, _, _)| (s, d));
            pkt.src = qdst;
            pkt.dst = qsrc;
            pkt.proto = qproto;
            pkt.sport = ports.1;
            pkt.dport = ports.0;
        }
        Some(pkt)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eth(ethertype: u16, ip: &[u8]) -> Vec<u8> {
        let mut f = vec![0u8; 12];
        f.extend_from_slice(&ethertype.to_be_bytes());
        f.extend_from_slice(ip);
        f
    }

    fn ipv4(proto: u8, src: [u8; 4], dst: [u8; 4], l4: &[u8]) -> Vec<u8> {
        let mut ip = vec![0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, proto, 0, 0];
        ip.extend_from_slice(&src);
        ip.extend_from_slice(&dst);
        let len = (ip.len() + l4.len()) as u16;
        ip[2..4].copy_from_slice(&len.to_be_bytes());
        ip.extend_from_slice(l4);
        ip
    }

    fn tcp_hdr(sport: u16, dport: u16, flags: u8) -> Vec<u8> {
        let mut t = vec![0u8; 20];
        t[0..2].copy_from_slice(&sport.to_be_bytes());
        t[2..4].copy_from_slice(&dport.to_be_bytes());
        t[12] = 0x50;
        t[13] = flags;
        t
    }

    #[test]
    fn tcp_udp_and_echo_give_their_tuples() {
        let f = eth(
            0x0800,
            &ipv4(6, [10, 0, 0, 2], [10, 1, 0, 3], &tcp_hdr(40000, 6379, 2)),
        );
        let p = FlowPacket::parse(&f).unwrap();
        assert_eq!(p.src, IpAddr::from([10, 0, 0, 2]));
        assert_eq!(p.dst, IpAddr::from([10, 1, 0, 3]));
        assert_eq!(
            (p.proto, p.sport, p.dport, p.kind),
            (6, 40000, 6379, Kind::Flow)
        );
        assert_eq!(
            p.tcp_flags & (tcp::SYN | tcp::ACK),
            tcp::SYN,
            "a SYN without ACK"
        );
        assert_eq!(f[p.ttl_at], 64);
        let echo = ipv4(1, [10, 0, 0, 2], [10, 1, 0, 3], &[8, 0, 0, 0, 0, 77, 0, 1]);
        let p = FlowPacket::parse(&eth(0x0800, &echo)).unwrap();
        assert_eq!((p.proto, p.sport, p.dport), (1, 77, 0));
    }

    #[test]
    fn an_icmp_error_is_the_flow_it_quotes_turned_round() {
        // A port unreachable from 10.1.0.3 about 10.0.0.2:5000 -> 10.1.0.3:53.
        let quoted = ipv4(
            17,
            [10, 0, 0, 2],
            [10, 1, 0, 3],
            &[0x13, 0x88, 0, 53, 0, 8, 0, 0],
        );
        let mut icmp = vec![3, 3, 0, 0, 0, 0, 0, 0];
        icmp.extend_from_slice(&quoted);
        let f = eth(0x0800, &ipv4(1, [10, 1, 0, 3], [10, 0, 0, 2], &icmp));
        let p = FlowPacket::parse(&f).unwrap();
        assert_eq!(p.kind, Kind::Related);
        assert_eq!(p.src, IpAddr::from([10, 1, 0, 3]));
        assert_eq!((p.proto, p.sport, p.dport), (17, 53, 5000));
    }

    #[test]
    fn neighbour_discovery_is_the_links_and_arp_is_not_ip() {
        let mut ip = vec![0x60, 0, 0, 0, 0, 8, 58, 255];
        ip.extend_from_slice(&[0u8; 32]);
        ip.extend_from_slice(&[135, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(
            FlowPacket::parse(&eth(0x86dd, &ip)).unwrap().kind,
            Kind::Link
        );
        assert!(FlowPacket::parse(&eth(0x0806, &[0u8; 28])).is_none());
    }

    #[test]
    fn later_fragments_have_no_ports_and_truncation_is_refused() {
        let mut ip = ipv4(6, [10, 0, 0, 2], [10, 1, 0, 3], &[]);
        ip[6] = 0x00;
        ip[7] = 0x10;
        assert_eq!(
            FlowPacket::parse(&eth(0x0800, &ip)).unwrap().kind,
            Kind::Fragment
        );
        let f = eth(0x0800, &ipv4(6, [10, 0, 0, 2], [10, 1, 0, 3], &[0; 6]));
        assert!(FlowPacket::parse(&f).is_none());
        for n in 0..f.len() {
            let _ = FlowPacket::parse(&f[..n]);
        }
    }
}
