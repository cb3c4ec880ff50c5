//! The NAT's test harness: one container (a smoltcp stack on an
//! in-memory wire), the network's gateway and its NAT, wired as the
//! datapath wires them, and frame builders for what a container sends.

pub(super) use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
pub(super) use std::time::{Duration, Instant};

pub(super) use etherparse::{Icmpv4Type, NetSlice, PacketBuilder, SlicedPacket, TransportSlice};
pub(super) use rstest::rstest;
pub(super) use smoltcp::iface::{Config as IfaceConfig, Interface, SocketHandle, SocketSet};
pub(super) use smoltcp::socket::{tcp, udp};
pub(super) use smoltcp::wire::{EthernetAddress, HardwareAddress, IpAddress, IpCidr, IpEndpoint};

pub(super) use super::addresses::canonical;
pub(super) use super::*;
pub(super) use crate::dns::Zone;
pub(super) use crate::gateway::{Gateway, GatewayConfig};
pub(super) use crate::offload::VnetHdr;
pub(super) use crate::stack::smol_instant;
pub(super) use crate::stack::test_wire::Wire;
pub(super) use crate::MacAddr;

pub(super) const GW_MAC: MacAddr = MacAddr([0x02, 0x42, 0x0a, 0, 0, 1]);
pub(super) const C_MAC: MacAddr = MacAddr([0x02, 0x42, 0x0a, 0, 0, 2]);
pub(super) const GW4: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
pub(super) const C4: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
pub(super) const GW6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1);
pub(super) const C6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2);
pub(super) const OUTSIDE4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 9);
pub(super) const MTU: usize = 1500;

pub(super) fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

pub(super) fn limits() -> NatLimits {
    NatLimits {
        max_tcp: 64,
        max_tcp_connecting: 16,
        max_udp_flows: 16,
        tcp_buffer: 16 * 1024,
        tcp_idle: Duration::from_secs(600),
        tcp_connect_timeout: Duration::from_secs(20),
        udp_idle: Duration::from_secs(30),
    }
}

pub(super) fn config(egress: bool, limits: NatLimits) -> NatConfig {
    NatConfig {
        gateway_mac: GW_MAC,
        ipv4: Some((GW4, 24)),
        ipv6: Some((GW6, 64)),
        mtu: MTU,
        egress,
        limits,
        random_seed: 7,
        shard: super::Shard::WHOLE,
    }
}

// ---- a container: a smoltcp stack on an in-memory wire ----

pub(super) struct Container {
    pub(super) iface: Interface,
    pub(super) wire: Wire,
    pub(super) sockets: SocketSet<'static>,
}

impl Container {
    pub(super) fn new(epoch: Instant) -> Container {
        let mut wire = Wire::default();
        let mut cfg = IfaceConfig::new(HardwareAddress::Ethernet(EthernetAddress(C_MAC.0)));
        cfg.random_seed = 99;
        let mut iface = Interface::new(cfg, &mut wire, smol_instant(epoch, epoch));
        iface.update_ip_addrs(|a| {
            a.push(IpCidr::new(IpAddress::Ipv4(C4), 24)).unwrap();
            a.push(IpCidr::new(IpAddress::Ipv6(C6), 64)).unwrap();
        });
        iface.routes_mut().add_default_ipv4_route(GW4).unwrap();
        iface.routes_mut().add_default_ipv6_route(GW6).unwrap();
        Container {
            iface,
            wire,
            sockets: SocketSet::new(Vec::new()),
        }
    }

    pub(super) fn tcp_socket(&mut self) -> SocketHandle {
        let mut s = tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0; 8192]),
            tcp::SocketBuffer::new(vec![0; 8192]),
        );
        s.set_ack_delay(None);
        self.sockets.add(s)
    }

    pub(super) fn listen(&mut self, port: u16) -> SocketHandle {
        let h = self.tcp_socket();
        self.tcp(h).listen(port).unwrap();
        h
    }

    pub(super) fn connect(&mut self, to: SocketAddr, local_port: u16) -> SocketHandle {
        let h = self.tcp_socket();
        let s = self.sockets.get_mut::<tcp::Socket>(h);
        s.connect(self.iface.context(), IpEndpoint::from(to), local_port)
            .unwrap();
        h
    }

    pub(super) fn tcp(&mut self, h: SocketHandle) -> &mut tcp::Socket<'static> {
        self.sockets.get_mut::<tcp::Socket>(h)
    }

    pub(super) fn udp_socket(&mut self, port: u16) -> SocketHandle {
        let mut s = udp::Socket::new(
            udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 16], vec![0; 16384]),
            udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 16], vec![0; 16384]),
        );
        s.bind(port).unwrap();
        self.sockets.add(s)
    }

    pub(super) fn udp(&mut self, h: SocketHandle) -> &mut udp::Socket<'static> {
        self.sockets.get_mut::<udp::Socket>(h)
    }

    /// Sends `payload` from the container's UDP socket `h` to `to`.
    pub(super) fn udp_send(&mut self, h: SocketHandle, to: SocketAddr, payload: &[u8]) {
        self.udp(h)
            .send_slice(payload, IpEndpoint::from(to))
            .unwrap();
    }

    /// Everything the container's TCP socket received so far.
    pub(super) fn recv_all(&mut self, h: SocketHandle) -> Vec<u8> {
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = self.tcp(h).recv_slice(&mut buf) {
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
        }
        out
    }
}

/// A network: one container, the gateway (ARP, NDP) and the NAT, wired
/// as the datapath wires them.
pub(super) struct Net {
    pub(super) nat: Nat,
    pub(super) gw: Gateway,
    pub(super) c: Container,
    pub(super) epoch: Instant,
    pub(super) now: Instant,
    pub(super) events: Vec<NatEvent>,
    pub(super) datagrams: Vec<(Datagram, Vec<u8>)>,
    /// Coalesce the container's TCP segments into super-frames, as a TAP
    /// with TSO hands them to the daemon.
    pub(super) tso: Option<crate::offload::Gro>,
    /// The largest frame the NAT sent (before segmentation).
    pub(super) largest_out: usize,
    /// Super-frames handed to the NAT.
    pub(super) super_in: usize,
    /// Every segment the NAT sent to the container, when set.
    pub(super) recorded: Option<Vec<Vec<u8>>>,
}

impl Net {
    pub(super) fn new(egress: bool, limits: NatLimits) -> Net {
        let epoch = Instant::now();
        let nat = Nat::new(config(egress, limits), epoch).unwrap();
        let gw = Gateway::new(
            GatewayConfig {
                mac: GW_MAC,
                ipv4: Some((GW4, 24)),
                ipv6: Some((GW6, 64)),
                mtu: MTU,
                zone: Zone::new([]).into_shared(),
                upstreams: Vec::new(),
                upstream_timeout: Duration::from_secs(2),
                random_seed: 3,
            },
            epoch,
        )
        .unwrap();
        let mut net = Net {
            nat,
            gw,
            c: Container::new(epoch),
            epoch,
            now: epoch,
            events: Vec::new(),
            datagrams: Vec::new(),
            tso: None,
            largest_out: 0,
            super_in: 0,
            recorded: None,
        };
        // The gateway asks for the container: the container learns the
        // gateway's MAC, as after any first exchange.
        net.c
            .wire
            .rx
            .push_back(crate::wire::build_arp_request(GW_MAC, GW4, C4));
        net.c
            .wire
            .rx
            .push_back(crate::wire::build_neighbor_solicit(GW_MAC, GW6, C6));
        net.pump();
        net
    }

    /// Moves frames until the link is quiet.
    pub(super) fn pump(&mut self) {
        let mut buf = vec![0u8; 65536];
        for _ in 0..100_000 {
            let mut moved = false;
            let t = smol_instant(self.epoch, self.now);
            self.c.iface.poll(t, &mut self.c.wire, &mut self.c.sockets);
            while let Some(f) = self.c.wire.tx.pop_front() {
                moved = true;
                self.sent_by_container(&f);
            }
            self.flush_tso();
            while let Some(n) = self.gw.poll_transmit(self.now, &mut buf) {
                moved = true;
                self.c.wire.rx.push_back(buf[..n].to_vec());
            }
            while let Some((n, hdr)) = self.nat.poll_transmit(self.now, &mut buf) {
                moved = true;
                self.largest_out = self.largest_out.max(n);
                // What the container's kernel does with a TAP write: cut a
                // super-frame at its MSS, complete a partial checksum.
                let mut segs = vec![0u8; 2 * 65536];
                let s = crate::offload::segment(&hdr, &buf[..n], 0, &mut segs)
                    .expect("the NAT's offload header is consistent");
                for i in 0..s.count {
                    let f = s.frame(&segs, 0, i).unwrap();
                    check_frame(f);
                    assert!(f.len() <= MTU + 14, "a segment above the MTU");
                    if let Some(r) = self.recorded.as_mut() {
                        r.push(f.to_vec());
                    }
                    self.c.wire.rx.push_back(f.to_vec());
                }
            }
            while let Some(e) = self.nat.poll_event() {
                self.events.push(e);
            }
            while let Some(d) = self.nat.poll_datagram(&mut buf) {
                self.datagrams.push((d, buf[..d.len].to_vec()));
            }
            if !moved {
                return;
            }
        }
        panic!("the link never went quiet");
    }

    /// A frame the container sent, to the NAT or gateway as the datapath
    /// hands it, through the TSO coalescer if on.
    fn sent_by_container(&mut self, f: &[u8]) {
        use crate::offload::Offer;
        if let Some(gro) = self.tso.as_mut() {
            if gro.offer(f) == Offer::Absorbed {
                return;
            }
            self.flush_tso();
            let gro = self.tso.as_mut().unwrap();
            if gro.offer(f) == Offer::Absorbed {
                return;
            }
        }
        self.deliver(&VnetHdr::NONE, f);
    }

    fn flush_tso(&mut self) {
        let Some(gro) = self.tso.as_mut() else {
            return;
        };
        if gro.has_pending() {
            let run = gro.pending().to_vec();
            gro.reset();
            let hdr = VnetHdr::parse(&run).unwrap();
            self.deliver(&hdr, &run[VnetHdr::LEN..]);
        }
    }

    fn deliver(&mut self, hdr: &VnetHdr, f: &[u8]) {
        self.super_in += usize::from(hdr.is_gso());
        if self.nat.is_for_nat(f) {
            self.nat.handle_frame(hdr, f, self.now);
        } else {
            let mut segs = vec![0u8; 2 * 65536];
            let s = crate::offload::segment(hdr, f, 0, &mut segs).unwrap();
            for i in 0..s.count {
                self.gw
                    .handle_frame(s.frame(&segs, 0, i).unwrap(), self.now);
            }
        }
    }

    /// Pumps and lets a little time pass (delayed ACKs, small timers).
    pub(super) fn settle(&mut self) {
        for _ in 0..5 {
            self.pump();
            self.tick(Duration::from_millis(20));
        }
        self.pump();
    }

    pub(super) fn tick(&mut self, d: Duration) {
        self.now += d;
        self.nat.handle_timeout(self.now);
        self.gw.handle_timeout(self.now);
    }

    /// Lets `d` pass in one-second steps, pumping after each.
    pub(super) fn advance(&mut self, d: Duration) {
        let end = self.now + d;
        while self.now < end {
            let step = (end - self.now).min(Duration::from_secs(1));
            self.tick(step);
            self.pump();
        }
    }

    pub(super) fn take_events(&mut self) -> Vec<NatEvent> {
        while let Some(e) = self.nat.poll_event() {
            self.events.push(e);
        }
        std::mem::take(&mut self.events)
    }

    pub(super) fn take_datagrams(&mut self) -> Vec<(Datagram, Vec<u8>)> {
        std::mem::take(&mut self.datagrams)
    }

    /// Reads everything the NAT holds from the container on `id`.
    pub(super) fn host_read(&mut self, id: ConnId) -> Vec<u8> {
        let mut out = Vec::new();
        let mut buf = [0u8; 3000];
        loop {
            let n = self.nat.tcp_read(id, &mut buf, self.now);
            if n == 0 {
                return out;
            }
            out.extend_from_slice(&buf[..n]);
        }
    }

    /// A published connection from `client` to a listener of the
    /// container on `container`, handed to the NAT but not yet pumped:
    /// the listener and the NAT's id.
    pub(super) fn inbound(&mut self, client: &str, container: &str) -> (SocketHandle, ConnId) {
        let container = sa(container);
        let h = self.c.listen(container.port());
        let id = self
            .nat
            .inbound_tcp(sa(client), container, C_MAC, self.now)
            .unwrap();
        (h, id)
    }

    /// An egress UDP flow: a socket of the container on `port` sent
    /// `payload` to `to`, and the NAT opened a flow for it.
    pub(super) fn egress_udp(
        &mut self,
        port: u16,
        to: SocketAddr,
        payload: &[u8],
    ) -> (SocketHandle, FlowId) {
        let u = self.c.udp_socket(port);
        self.c.udp_send(u, to, payload);
        self.settle();
        let events = self.take_events();
        let [NatEvent::UdpFlowOpened { flow, src, dst }] = events[..] else {
            panic!("expected one flow, got {events:?}");
        };
        assert_eq!((src, dst), (SocketAddr::new(C4.into(), port), to));
        (u, flow)
    }

    /// An egress connection from the container to `to` that the NAT
    /// reported and the host has not answered yet.
    pub(super) fn egress_pending(
        &mut self,
        to: SocketAddr,
        local_port: u16,
    ) -> (SocketHandle, ConnId) {
        let h = self.c.connect(to, local_port);
        self.settle();
        let events = self.take_events();
        let [NatEvent::EgressTcpConnect { id, src, dst }] = events[..] else {
            panic!("expected one connect, got {events:?}");
        };
        assert_eq!(dst, to);
        assert_eq!(src.port(), local_port);
        (h, id)
    }

    /// An egress connection from the container to `to`, accepted by
    /// the host.
    pub(super) fn egress(&mut self, to: SocketAddr, local_port: u16) -> (SocketHandle, ConnId) {
        let (h, id) = self.egress_pending(to, local_port);
        assert_eq!(self.c.tcp(h).state(), tcp::State::SynSent);
        self.nat.egress_connected(id, true, self.now);
        self.settle();
        assert_eq!(self.c.tcp(h).state(), tcp::State::Established);
        (h, id)
    }
}

/// Every frame from the NAT: from the gateway MAC to the container,
/// within the MTU, with correct checksums.
pub(super) fn check_frame(frame: &[u8]) {
    assert_eq!(&frame[6..12], &GW_MAC.0, "source MAC");
    assert_eq!(&frame[..6], &C_MAC.0, "destination MAC");
    assert!(frame.len() <= MTU + ETH_LEN, "{} bytes", frame.len());
    let pkt = SlicedPacket::from_ethernet(frame).expect("parses");
    let (src, dst) = match &pkt.net {
        Some(NetSlice::Ipv4(ip)) => {
            let h = ip.header();
            assert_eq!(h.to_header().calc_header_checksum(), h.header_checksum());
            (
                IpAddr::V4(h.source_addr()),
                IpAddr::V4(h.destination_addr()),
            )
        }
        Some(NetSlice::Ipv6(ip)) => (
            IpAddr::V6(ip.header().source_addr()),
            IpAddr::V6(ip.header().destination_addr()),
        ),
        other => panic!("not IP: {other:?}"),
    };
    match (&pkt.transport, src, dst) {
        (Some(TransportSlice::Tcp(t)), IpAddr::V4(s), IpAddr::V4(d)) => {
            assert_eq!(
                t.calc_checksum_ipv4(s.octets(), d.octets()).unwrap(),
                t.checksum()
            );
        }
        (Some(TransportSlice::Tcp(t)), IpAddr::V6(s), IpAddr::V6(d)) => {
            assert_eq!(
                t.calc_checksum_ipv6(s.octets(), d.octets()).unwrap(),
                t.checksum()
            );
        }
        (Some(TransportSlice::Udp(u)), IpAddr::V4(s), IpAddr::V4(d)) => {
            let want = u
                .to_header()
                .calc_checksum_ipv4_raw(s.octets(), d.octets(), u.payload());
            assert_eq!(want.unwrap(), u.checksum());
        }
        (Some(TransportSlice::Udp(u)), IpAddr::V6(s), IpAddr::V6(d)) => {
            let want = u
                .to_header()
                .calc_checksum_ipv6_raw(s.octets(), d.octets(), u.payload());
            assert_eq!(want.unwrap(), u.checksum());
        }
        (Some(TransportSlice::Icmpv4(i)), IpAddr::V4(_), IpAddr::V4(_)) => {
            let want = etherparse::Icmpv4Header::with_checksum(i.icmp_type(), i.payload());
            assert_eq!(want.checksum, i.checksum());
        }
        (Some(TransportSlice::Icmpv6(i)), IpAddr::V6(s), IpAddr::V6(d)) => {
            assert!(i.is_checksum_valid(s.octets(), d.octets()));
        }
        other => panic!("not TCP, UDP or ICMP: {other:?}"),
    }
}

pub(super) fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

pub(super) fn gateway_of(addr: SocketAddr) -> IpAddr {
    if addr.is_ipv4() {
        GW4.into()
    } else {
        GW6.into()
    }
}

pub(super) fn echo_request_frame(dst: IpAddr, ident: u16, seq: u16, payload: &[u8]) -> Vec<u8> {
    let echo = etherparse::IcmpEchoHeader { id: ident, seq };
    let mut f = Vec::new();
    let b = PacketBuilder::ethernet2(C_MAC.0, GW_MAC.0);
    match dst {
        IpAddr::V4(d) => b
            .ipv4(C4.octets(), d.octets(), 64)
            .icmpv4(Icmpv4Type::EchoRequest(echo))
            .write(&mut f, payload),
        IpAddr::V6(d) => b
            .ipv6(C6.octets(), d.octets(), 64)
            .icmpv6(etherparse::Icmpv6Type::EchoRequest(echo))
            .write(&mut f, payload),
    }
    .unwrap();
    f
}

pub(super) fn syn_frame(sport: u16, dst: SocketAddr) -> Vec<u8> {
    let IpAddr::V4(d) = dst.ip() else {
        panic!("IPv4 only")
    };
    let mut f = Vec::new();
    PacketBuilder::ethernet2(C_MAC.0, GW_MAC.0)
        .ipv4(C4.octets(), d.octets(), 64)
        .tcp(sport, dst.port(), 1000, 65535)
        .syn()
        .write(&mut f, &[])
        .unwrap();
    f
}

pub(super) fn udp_frame(sport: u16, dst: SocketAddr, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::new();
    let b = PacketBuilder::ethernet2(C_MAC.0, GW_MAC.0);
    match dst.ip() {
        IpAddr::V4(d) => b
            .ipv4(C4.octets(), d.octets(), 64)
            .udp(sport, dst.port())
            .write(&mut f, payload),
        IpAddr::V6(d) => b
            .ipv6(C6.octets(), d.octets(), 64)
            .udp(sport, dst.port())
            .write(&mut f, payload),
    }
    .unwrap();
    f
}

pub(super) fn frame_to(dst: IpAddr, proto: u8, dport: u16) -> Vec<u8> {
    let mut f = Vec::new();
    let b = PacketBuilder::ethernet2(C_MAC.0, GW_MAC.0);
    let r = match (dst, proto) {
        (IpAddr::V4(d), 6) => b
            .ipv4(C4.octets(), d.octets(), 64)
            .tcp(40000, dport, 1, 100)
            .syn()
            .write(&mut f, &[]),
        (IpAddr::V4(d), 17) => b
            .ipv4(C4.octets(), d.octets(), 64)
            .udp(40000, dport)
            .write(&mut f, &[]),
        (IpAddr::V4(d), _) => b
            .ipv4(C4.octets(), d.octets(), 64)
            .icmpv4(Icmpv4Type::EchoRequest(etherparse::IcmpEchoHeader {
                id: 1,
                seq: 1,
            }))
            .write(&mut f, &[]),
        (IpAddr::V6(d), 6) => b
            .ipv6(C6.octets(), d.octets(), 64)
            .tcp(40000, dport, 1, 100)
            .syn()
            .write(&mut f, &[]),
        (IpAddr::V6(d), _) => b
            .ipv6(C6.octets(), d.octets(), 64)
            .udp(40000, dport)
            .write(&mut f, &[]),
    };
    r.unwrap();
    f
}
