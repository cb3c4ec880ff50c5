//! The gateway's test helpers: its configuration, a zone, DNS queries in
//! UDP frames from a container, and the checks of the answers.

pub(super) use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
pub(super) use std::time::{Duration, Instant};

pub(super) use etherparse::{
    ArpEthIpv4Packet, ArpHardwareId, ArpOperation, Icmpv4Header, Icmpv4Type, Icmpv6Type, LinkSlice,
    NetSlice, PacketBuilder, SlicedPacket, TransportSlice,
};
pub(super) use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
pub(super) use hickory_proto::rr::{Name, RData, RecordType};
pub(super) use rstest::rstest;
pub(super) use smoltcp::iface::{Config as IfaceConfig, Interface, SocketSet};
pub(super) use smoltcp::wire::{EthernetAddress, HardwareAddress, IpAddress, IpCidr};

pub(super) use super::*;
pub(super) use crate::dns::{DnsEntry, Zone};
pub(super) use crate::stack::smol_instant;
pub(super) use crate::stack::test_wire::Wire;
pub(super) use crate::MacAddr;

pub(super) const GW_MAC: MacAddr = MacAddr([0x02, 0x42, 0x0a, 0, 0, 1]);
pub(super) const C_MAC: [u8; 6] = [0x02, 0x42, 0x0a, 0, 0, 2];
pub(super) const GW4: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
pub(super) const C4: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
pub(super) const GW6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1);
pub(super) const C6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2);
pub(super) const TIMEOUT: Duration = Duration::from_secs(2);

pub(super) fn up(n: u8) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, n)), 53)
}

pub(super) fn entry(name: &str, aliases: &[&str], addrs: &[&str]) -> DnsEntry {
    DnsEntry {
        name: name.into(),
        aliases: aliases.iter().map(|s| s.to_string()).collect(),
        addrs: addrs.iter().map(|a| a.parse().unwrap()).collect(),
    }
}

pub(super) fn zone() -> Zone {
    Zone::new([
        entry("client", &[], &["10.0.0.2", "fd00::2"]),
        entry("web", &["frontend"], &["10.0.0.5", "fd00::5"]),
        entry("w1", &["pool"], &["10.0.0.11"]),
        entry("w2", &["pool"], &["10.0.0.12"]),
        entry("w3", &["pool"], &["10.0.0.13"]),
    ])
}

pub(super) fn config(upstreams: Vec<SocketAddr>) -> GatewayConfig {
    GatewayConfig {
        mac: GW_MAC,
        ipv4: Some((GW4, 24)),
        ipv6: Some((GW6, 64)),
        mtu: 1500,
        zone: zone().into_shared(),
        upstreams,
        upstream_timeout: TIMEOUT,
        random_seed: 42,
    }
}

pub(super) fn gateway(upstreams: Vec<SocketAddr>, now: Instant) -> Gateway {
    Gateway::new(config(upstreams), now).unwrap()
}

pub(super) fn drain(gw: &mut Gateway, now: Instant) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut buf = [0u8; 2048];
    while let Some(n) = gw.poll_transmit(now, &mut buf) {
        out.push(buf[..n].to_vec());
    }
    out
}

/// Hands `frame` to the gateway and returns its one reply.
pub(super) fn one_reply(gw: &mut Gateway, frame: &[u8], now: Instant) -> Vec<u8> {
    gw.handle_frame(frame, now);
    let mut frames = drain(gw, now);
    assert_eq!(frames.len(), 1);
    frames.remove(0)
}

pub(super) fn dns_query(id: u16, name: &str, qtype: RecordType) -> Vec<u8> {
    let mut msg = Message::new(id, MessageType::Query, OpCode::Query);
    msg.metadata.recursion_desired = true;
    msg.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
    msg.to_vec().unwrap()
}

pub(super) fn udp_frame(v6: bool, sport: u16, payload: &[u8]) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(C_MAC, GW_MAC.0);
    let b = if v6 {
        b.ipv6(C6.octets(), GW6.octets(), 64).udp(sport, 53)
    } else {
        b.ipv4(C4.octets(), GW4.octets(), 64).udp(sport, 53)
    };
    let mut f = Vec::new();
    b.write(&mut f, payload).unwrap();
    f
}

/// The DNS payload of a UDP frame from the gateway to the client, after
/// checking addresses, ports and checksums.
pub(super) fn udp_answer(frame: &[u8], v6: bool, sport: u16) -> Message {
    let pkt = SlicedPacket::from_ethernet(frame).unwrap();
    let Some(LinkSlice::Ethernet2(eth)) = &pkt.link else {
        panic!("no ethernet")
    };
    assert_eq!(eth.source(), GW_MAC.0);
    assert_eq!(eth.destination(), C_MAC);
    let Some(TransportSlice::Udp(udp)) = &pkt.transport else {
        panic!("not udp")
    };
    assert_eq!(udp.source_port(), 53);
    assert_eq!(udp.destination_port(), sport);
    match &pkt.net {
        Some(NetSlice::Ipv4(ip)) => {
            assert!(!v6);
            let h = ip.header();
            assert_eq!(h.source_addr(), GW4);
            assert_eq!(h.destination_addr(), C4);
            assert_eq!(h.to_header().calc_header_checksum(), h.header_checksum());
            let c = udp
                .to_header()
                .calc_checksum_ipv4_raw(h.source(), h.destination(), udp.payload())
                .unwrap();
            assert_eq!(c, udp.checksum());
        }
        Some(NetSlice::Ipv6(ip)) => {
            assert!(v6);
            let h = ip.header();
            assert_eq!(h.source_addr(), GW6);
            assert_eq!(h.destination_addr(), C6);
            let c = udp
                .to_header()
                .calc_checksum_ipv6_raw(h.source(), h.destination(), udp.payload())
                .unwrap();
            assert_eq!(c, udp.checksum());
        }
        _ => panic!("not ip"),
    }
    Message::from_vec(udp.payload()).unwrap()
}

pub(super) fn ask(gw: &mut Gateway, v6: bool, id: u16, name: &str, qtype: RecordType) -> Message {
    let now = gw.epoch;
    gw.handle_frame(&udp_frame(v6, 40000, &dns_query(id, name, qtype)), now);
    let frames = drain(gw, now);
    assert_eq!(frames.len(), 1, "one answer frame");
    udp_answer(&frames[0], v6, 40000)
}

pub(super) fn answer_addrs(msg: &Message) -> Vec<String> {
    msg.answers
        .iter()
        .map(|r| match &r.data {
            RData::A(a) => a.0.to_string(),
            RData::AAAA(a) => a.0.to_string(),
            RData::PTR(p) => p.0.to_ascii(),
            other => format!("{other:?}"),
        })
        .collect()
}
