//! ICMP and ICMPv6 echo probes as a raw socket sends and receives them:
//! `vswitch doctor` pings a container's gateway and its peers from inside
//! the container's namespace, so the probe crosses the same interface,
//! port security and tunnel as the container's own traffic.
//!
//! A raw ICMP socket receives every ICMP message of its namespace, from
//! anyone: [`read_icmpv4`] and [`read_icmpv6`] say which probe a message
//! answers (an echo reply, or an error quoting the probe) and never panic,
//! whatever the bytes.

use etherparse::{
    icmpv4, icmpv6, IcmpEchoHeader, Icmpv4Header, Icmpv4Slice, Icmpv4Type, Icmpv6Header,
    Icmpv6Slice, Icmpv6Type, IpNumber, Ipv4HeaderSlice, Ipv4Slice, Ipv6HeaderSlice,
};

use super::Echo;

/// An echo request's ICMP message (header and `payload_len` bytes of a
/// counting pattern) for a raw `IPPROTO_ICMP` socket, checksum included.
pub fn echo_request_v4(echo: Echo, payload_len: usize) -> Vec<u8> {
    let payload = pattern(payload_len);
    let header = Icmpv4Header::with_checksum(Icmpv4Type::EchoRequest(echo.into()), &payload);
    let mut out = header.to_bytes().to_vec();
    out.extend_from_slice(&payload);
    out
}

/// An echo request's ICMPv6 message for a raw `IPPROTO_ICMPV6` socket,
/// whose checksum (over a pseudo-header of addresses the kernel picks) the
/// kernel fills in.
pub fn echo_request_v6(echo: Echo, payload_len: usize) -> Vec<u8> {
    let payload = pattern(payload_len);
    let header = Icmpv6Header::new(Icmpv6Type::EchoRequest(echo.into()));
    let mut out = header.to_bytes().to_vec();
    out.extend_from_slice(&payload);
    out
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| i as u8).collect()
}

/// What an ICMP message says about a probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeReply {
    /// An echo reply.
    Reply(Echo),
    /// The probe was too big for a link on the way (IPv4 "fragmentation
    /// needed", ICMPv6 "packet too big"), which carries that link's MTU.
    TooBig { echo: Echo, mtu: u32 },
    /// The destination is unreachable (no route, no host, administratively
    /// prohibited...): the ICMP code.
    Unreachable { echo: Echo, code: u8 },
    /// Its hop limit ran out on the way.
    TimeExceeded(Echo),
}

impl ProbeReply {
    /// The probe this message answers.
    pub fn echo(&self) -> Echo {
        match *self {
            ProbeReply::Reply(e) | ProbeReply::TimeExceeded(e) => e,
            ProbeReply::TooBig { echo, .. } | ProbeReply::Unreachable { echo, .. } => echo,
        }
    }
}

/// Reads what a raw `IPPROTO_ICMP` socket received (the IPv4 header, then
/// the ICMP message): the source and what it says about which echo
/// request, or `None` for anything else.
pub fn read_icmpv4(packet: &[u8]) -> Option<(std::net::Ipv4Addr, ProbeReply)> {
    let ip = Ipv4Slice::from_slice(packet).ok()?;
    if ip.payload().ip_number != IpNumber::ICMP || ip.is_payload_fragmented() {
        return None;
    }
    let src = ip.header().source_addr();
    let icmp = Icmpv4Slice::from_slice(ip.payload().payload).ok()?;
    let reply = match icmp.icmp_type() {
        Icmpv4Type::EchoReply(h) => ProbeReply::Reply(h.into()),
        Icmpv4Type::DestinationUnreachable(d) => {
            let echo = quoted_v4(icmp.payload())?;
            match d {
                icmpv4::DestUnreachableHeader::FragmentationNeeded { next_hop_mtu } => {
                    ProbeReply::TooBig {
                        echo,
                        mtu: u32::from(next_hop_mtu),
                    }
                }
                other => ProbeReply::Unreachable {
                    echo,
                    code: other.code_u8(),
                },
            }
        }
        Icmpv4Type::TimeExceeded(_) => ProbeReply::TimeExceeded(quoted_v4(icmp.payload())?),
        _ => return None,
    };
    Some((src, reply))
}

/// The echo request an ICMP error quotes (its IPv4 header and the first 8
/// bytes of its ICMP message).
fn quoted_v4(quote: &[u8]) -> Option<Echo> {
    let ip = Ipv4HeaderSlice::from_slice(quote).ok()?;
    if ip.protocol() != IpNumber::ICMP {
        return None;
    }
    quoted_echo(quote.get(ip.slice().len()..)?, icmpv4::TYPE_ECHO_REQUEST)
}

/// Reads what a raw `IPPROTO_ICMPV6` socket received (the ICMPv6 message,
/// without the IPv6 header): what it says about which echo request, or
/// `None` for anything else (neighbour discovery, router advertisements).
pub fn read_icmpv6(message: &[u8]) -> Option<ProbeReply> {
    let icmp = Icmpv6Slice::from_slice(message).ok()?;
    Some(match icmp.icmp_type() {
        Icmpv6Type::EchoReply(h) => ProbeReply::Reply(h.into()),
        Icmpv6Type::PacketTooBig { mtu } => ProbeReply::TooBig {
            echo: quoted_v6(icmp.payload())?,
            mtu,
        },
        Icmpv6Type::DestinationUnreachable(code) => ProbeReply::Unreachable {
            echo: quoted_v6(icmp.payload())?,
            code: code.code_u8(),
        },
        Icmpv6Type::TimeExceeded(_) => ProbeReply::TimeExceeded(quoted_v6(icmp.payload())?),
        _ => return None,
    })
}

/// The echo request an ICMPv6 error quotes (as much of the packet as fits,
/// from its IPv6 header; extension headers are not followed).
fn quoted_v6(quote: &[u8]) -> Option<Echo> {
    let ip = Ipv6HeaderSlice::from_slice(quote).ok()?;
    if ip.next_header() != IpNumber::IPV6_ICMP {
        return None;
    }
    quoted_echo(quote.get(ip.slice().len()..)?, icmpv6::TYPE_ECHO_REQUEST)
}

/// The identifier and sequence of a quoted echo request's first 8 bytes.
fn quoted_echo(icmp: &[u8], request_type: u8) -> Option<Echo> {
    let h = icmp.get(..8)?;
    if h[0] != request_type {
        return None;
    }
    Some(
        IcmpEchoHeader {
            id: u16::from_be_bytes([h[4], h[5]]),
            seq: u16::from_be_bytes([h[6], h[7]]),
        }
        .into(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::{Ipv4Header, Ipv6Header};
    use std::net::{Ipv4Addr, Ipv6Addr};

    const PROBE: Echo = Echo {
        ident: 0x4242,
        seq: 7,
    };

    fn ipv4(src: [u8; 4], dst: [u8; 4], icmp: &[u8]) -> Vec<u8> {
        let h = Ipv4Header::new(icmp.len() as u16, 64, IpNumber::ICMP, src, dst).unwrap();
        let mut out = h.to_bytes().to_vec();
        out.extend_from_slice(icmp);
        out
    }

    fn icmpv4(t: Icmpv4Type, payload: &[u8]) -> Vec<u8> {
        let mut out = Icmpv4Header::with_checksum(t, payload).to_bytes().to_vec();
        out.extend_from_slice(payload);
        out
    }

    #[test]
    fn an_echo_reply_answers_its_request() {
        let req = echo_request_v4(PROBE, 56);
        assert_eq!(req.len(), 64);
        let parsed = Icmpv4Slice::from_slice(&req).unwrap();
        assert_eq!(
            parsed.icmp_type(),
            Icmpv4Type::EchoRequest(IcmpEchoHeader { id: 0x4242, seq: 7 })
        );
        // The checksum is right: a receiver computing it again agrees.
        let again = Icmpv4Header::with_checksum(parsed.icmp_type(), parsed.payload());
        assert_eq!(again.checksum, parsed.checksum());

        let reply = icmpv4(Icmpv4Type::EchoReply(PROBE.into()), parsed.payload());
        let packet = ipv4([10, 0, 0, 1], [10, 0, 0, 2], &reply);
        assert_eq!(
            read_icmpv4(&packet),
            Some((Ipv4Addr::new(10, 0, 0, 1), ProbeReply::Reply(PROBE)))
        );
    }

    #[test]
    fn errors_are_matched_to_the_probe_they_quote() {
        let req = echo_request_v4(PROBE, 1400);
        let quoted = ipv4([10, 0, 0, 2], [10, 0, 1, 9], &req);
        let quote = &quoted[..20 + 8];
        let too_big = icmpv4(
            Icmpv4Type::DestinationUnreachable(
                icmpv4::DestUnreachableHeader::FragmentationNeeded { next_hop_mtu: 1450 },
            ),
            quote,
        );
        assert_eq!(
            read_icmpv4(&ipv4([10, 0, 0, 1], [10, 0, 0, 2], &too_big)).map(|r| r.1),
            Some(ProbeReply::TooBig {
                echo: PROBE,
                mtu: 1450
            })
        );
        let unreachable = icmpv4(
            Icmpv4Type::DestinationUnreachable(icmpv4::DestUnreachableHeader::Host),
            quote,
        );
        assert_eq!(
            read_icmpv4(&ipv4([10, 0, 0, 1], [10, 0, 0, 2], &unreachable)).map(|r| r.1),
            Some(ProbeReply::Unreachable {
                echo: PROBE,
                code: 1
            })
        );
        // An error quoting something else is not about a probe.
        let mut other = quote.to_vec();
        other[20] = 0; // an echo reply, not a request
        let stray = icmpv4(
            Icmpv4Type::DestinationUnreachable(icmpv4::DestUnreachableHeader::Host),
            &other,
        );
        assert_eq!(
            read_icmpv4(&ipv4([10, 0, 0, 1], [10, 0, 0, 2], &stray)),
            None
        );
        // Requests (someone pinging the container) are not replies.
        assert_eq!(read_icmpv4(&ipv4([10, 0, 0, 1], [10, 0, 0, 2], &req)), None);
    }

    #[test]
    fn icmpv6_replies_and_errors() {
        let req = echo_request_v6(PROBE, 8);
        let parsed = Icmpv6Slice::from_slice(&req).unwrap();
        assert_eq!(
            parsed.icmp_type(),
            Icmpv6Type::EchoRequest(IcmpEchoHeader { id: 0x4242, seq: 7 })
        );
        let reply = Icmpv6Header::new(Icmpv6Type::EchoReply(PROBE.into()));
        assert_eq!(
            read_icmpv6(&reply.to_bytes()),
            Some(ProbeReply::Reply(PROBE))
        );
        let src = "fd00::2".parse::<Ipv6Addr>().unwrap().octets();
        let dst = "fd00::9".parse::<Ipv6Addr>().unwrap().octets();
        let h = Ipv6Header {
            payload_length: req.len() as u16,
            next_header: IpNumber::IPV6_ICMP,
            hop_limit: 64,
            source: src,
            destination: dst,
            ..Ipv6Header::default()
        };
        let mut quote = h.to_bytes().to_vec();
        quote.extend_from_slice(&req);
        let mut too_big = Icmpv6Header::new(Icmpv6Type::PacketTooBig { mtu: 1280 })
            .to_bytes()
            .to_vec();
        too_big.extend_from_slice(&quote);
        assert_eq!(
            read_icmpv6(&too_big),
            Some(ProbeReply::TooBig {
                echo: PROBE,
                mtu: 1280
            })
        );
    }

    #[test]
    fn garbage_is_not_a_reply() {
        for len in 0..64 {
            let bytes: Vec<u8> = (0..len).map(|i| (i * 37 + 11) as u8).collect();
            let _ = read_icmpv4(&bytes);
            let _ = read_icmpv6(&bytes);
        }
        assert_eq!(read_icmpv6(&[]), None);
    }
}
