//! ICMP echo through the NAT: a container's echo requests open echo flows
//! (in the UDP flow table) that the daemon serves from unprivileged ping
//! sockets; the replies get the container's own identifier back.

use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use super::addresses::is_unicast;
use super::flows::FlowKind;
use super::{FlowId, Ingress, Nat, NatEvent, Tuple, UdpVia, HOP_LIMIT};
use crate::wire::{self, Echo, IpRepr};

impl Nat {
    /// An echo request (`message`: the whole ICMP message) from a container.
    pub(super) fn echo_request(
        &mut self,
        ingress: &Ingress<'_>,
        ident: u16,
        message: &[u8],
        now: Instant,
    ) {
        if self.is_gateway(ingress.dst) {
            self.stats.frames_unsupported += 1;
            return;
        }
        let tuple = Tuple {
            container: SocketAddr::new(ingress.src, ident),
            peer: SocketAddr::new(ingress.dst, 0),
        };
        let id = match self.echo_tuples.get(&tuple) {
            Some(&id) => id,
            None => {
                if !self.egress_allows(ingress.src, ingress.dst, 1, 0) {
                    return;
                }
                if self.flows.len() >= self.limits.max_udp_flows {
                    self.stats.icmp_dropped += 1;
                    return;
                }
                let id = self.add_flow(tuple, ingress.src_mac, FlowKind::Echo, false, now);
                self.events.push_back(NatEvent::IcmpFlowOpened {
                    flow: id,
                    src: ingress.src,
                    dst: ingress.dst,
                });
                id
            }
        };
        if self.touch_flow(id, ingress.src_mac, now).is_none() {
            return;
        }
        if self.datagrams.push(UdpVia::Flow(id), tuple.peer, message) {
            self.stats.icmp_to_host += 1;
        } else {
            self.stats.icmp_dropped += 1;
        }
    }

    /// An echo reply the ping socket of echo `flow` received from `from`
    /// (`message`: the whole ICMP message as the socket returns it; its
    /// identifier is the kernel's): written to the container with the
    /// container's own identifier and `from` as its source.
    pub fn icmp_reply(&mut self, flow: FlowId, from: IpAddr, message: &[u8], now: Instant) {
        let from = from.to_canonical();
        let Some(f) = self.flows.get_mut(&flow) else {
            self.stats.icmp_dropped += 1;
            return;
        };
        let reply_type = if from.is_ipv4() { 0 } else { 129 };
        if f.kind != FlowKind::Echo
            || from.is_ipv4() != f.tuple.container.is_ipv4()
            || !is_unicast(from)
            || message.len() < 8
            || message[0] != reply_type
            || message[1] != 0
        {
            self.stats.icmp_dropped += 1;
            return;
        }
        f.last_active = now;
        let echo = Echo {
            ident: f.tuple.container.port(),
            seq: u16::from_be_bytes([message[6], message[7]]),
        };
        let (to, mac) = (f.tuple.container.ip(), f.container_mac);
        let payload = &message[8..];
        let ip = IpRepr {
            hop_limit: HOP_LIMIT,
            ..IpRepr::new(self.mac, mac, from, to)
        };
        let sent = from.is_ipv4() == to.is_ipv4()
            && self.push_frame(wire::echo_frame_len(&ip, payload.len()), |buf| {
                wire::emit_echo_reply(&ip, echo, payload, buf).is_ok()
            });
        if sent {
            self.stats.icmp_to_container += 1;
        } else {
            self.stats.icmp_dropped += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;

    #[rstest]
    #[case::ipv4("198.51.100.9")]
    #[case::ipv6("2001:db8::9")]
    fn ping_goes_out_through_a_ping_socket_and_back(#[case] dst: &str) {
        let dst: IpAddr = dst.parse().unwrap();
        let mut net = Net::new(true, limits());
        let mut sock = smoltcp::socket::icmp::Socket::new(
            smoltcp::socket::icmp::PacketBuffer::new(
                vec![smoltcp::socket::icmp::PacketMetadata::EMPTY; 4],
                vec![0; 1024],
            ),
            smoltcp::socket::icmp::PacketBuffer::new(
                vec![smoltcp::socket::icmp::PacketMetadata::EMPTY; 4],
                vec![0; 1024],
            ),
        );
        sock.bind(smoltcp::socket::icmp::Endpoint::Ident(0x1234))
            .unwrap();
        let icmp = net.c.sockets.add(sock);
        net.c
            .wire
            .tx
            .push_back(echo_request_frame(dst, 0x1234, 1, b"ping!"));
        net.settle();
        let events = net.take_events();
        let [NatEvent::IcmpFlowOpened { flow, src, dst: d }] = events[..] else {
            panic!("{events:?}");
        };
        assert_eq!(d, dst);
        assert_eq!(
            src,
            if dst.is_ipv4() {
                IpAddr::from(C4)
            } else {
                IpAddr::from(C6)
            }
        );
        // The datagram is the whole echo request, for the ping socket.
        let got = net.take_datagrams();
        assert_eq!(got.len(), 1);
        let (dgram, msg) = &got[0];
        assert_eq!(
            (dgram.via, dgram.dst),
            (UdpVia::Flow(flow), SocketAddr::new(dst, 0))
        );
        assert_eq!(msg[0], if dst.is_ipv4() { 8 } else { 128 });
        assert_eq!(&msg[4..8], &[0x12, 0x34, 0, 1]);
        assert_eq!(&msg[8..], b"ping!");
        // The kernel's reply carries its own identifier and checksum.
        let mut reply = msg.clone();
        reply[0] = if dst.is_ipv4() { 0 } else { 129 };
        reply[2..6].copy_from_slice(&[0xde, 0xad, 0x99, 0x99]);
        net.nat.icmp_reply(flow, dst, &reply, net.now);
        // Not an echo reply: dropped.
        net.nat.icmp_reply(flow, dst, msg, net.now);
        net.settle();
        let s = net.c.sockets.get_mut::<smoltcp::socket::icmp::Socket>(icmp);
        let mut buf = [0u8; 64];
        let (n, from) = s
            .recv_slice(&mut buf)
            .expect("echo reply with a valid checksum");
        assert_eq!(IpAddr::from(from), dst);
        assert_eq!(
            &buf[4..8],
            &[0x12, 0x34, 0, 1],
            "the container's identifier"
        );
        assert_eq!(&buf[8..n], b"ping!");
        assert!(s.recv_slice(&mut buf).is_err());
        let st = net.nat.stats();
        assert_eq!((st.icmp_flows, st.icmp_active, st.udp_active), (1, 1, 0));
        assert_eq!(
            (st.icmp_to_host, st.icmp_to_container, st.icmp_dropped),
            (1, 1, 1)
        );
        // Idle: the flow closes.
        net.advance(Duration::from_secs(31));
        assert_eq!(net.take_events(), [NatEvent::IcmpFlowClosed(flow)]);
        assert_eq!(net.nat.stats().icmp_active, 0);
    }

    #[test]
    fn ping_is_dropped_on_internal_networks_and_to_the_gateway() {
        let mut net = Net::new(false, limits());
        net.c
            .wire
            .tx
            .push_back(echo_request_frame(OUTSIDE4.into(), 1, 1, b"x"));
        net.settle();
        assert!(net.take_events().is_empty() && net.take_datagrams().is_empty());
        assert_eq!(net.nat.stats().egress_denied, 1);
        // The gateway answers pings to itself (is_for_nat leaves them to it).
        let f = echo_request_frame(GW4.into(), 1, 1, b"x");
        assert!(!net.nat.is_for_nat(&f));
        net.c.wire.tx.push_back(f);
        net.settle();
        assert_eq!(net.gw.stats().echo_replies, 1);
    }
}
