//! UDP through the NAT: flows keyed by the container's address and port
//! and the peer's, egress (one host socket per flow) and published ports
//! (through the listener's socket), and the queue of datagrams for the
//! daemon to send.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Instant;

use super::addresses::{canonical, is_unicast};
use super::{
    FlowId, Ingress, ListenerId, Nat, NatError, NatEvent, Proto, Timer, Tuple, UdpVia,
    DATAGRAM_QUEUE, DATAGRAM_QUEUE_BYTES, HOP_LIMIT,
};
use crate::wire::{self, IpRepr, UdpView};
use crate::MacAddr;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum FlowKind {
    /// A container's datagrams to the outside, through the flow's own host
    /// socket.
    Egress,
    /// A published port's client, through the listener socket.
    Inbound {
        listener: ListenerId,
        client: SocketAddr,
    },
    /// A container's echo requests, through the flow's ping socket. The
    /// tuple's container port is the echo identifier, the peer port 0.
    Echo,
}

#[derive(Debug)]
pub(super) struct UdpFlow {
    pub(super) tuple: Tuple,
    pub(super) container_mac: MacAddr,
    pub(super) kind: FlowKind,
    pub(super) owns_port: bool,
    pub(super) last_active: Instant,
    pub(super) timer_at: Option<Instant>,
}

/// Datagrams waiting for `poll_datagram`.
#[derive(Debug, Default)]
pub(super) struct DatagramQueue {
    pub(super) queue: VecDeque<(UdpVia, SocketAddr, Vec<u8>)>,
    pub(super) free: Vec<Vec<u8>>,
    pub(super) bytes: usize,
}

impl DatagramQueue {
    /// Queues a copy of `payload`; false (nothing queued) when full.
    pub(super) fn push(&mut self, via: UdpVia, dst: SocketAddr, payload: &[u8]) -> bool {
        if self.queue.len() >= DATAGRAM_QUEUE || self.bytes + payload.len() > DATAGRAM_QUEUE_BYTES {
            return false;
        }
        let mut buf = self.free.pop().unwrap_or_default();
        buf.clear();
        buf.extend_from_slice(payload);
        self.bytes += payload.len();
        self.queue.push_back((via, dst, buf));
        true
    }
}

impl Nat {
    /// A datagram the host socket of egress `flow` received from `from`
    /// (normally the flow's destination): written to the container with
    /// `from` as its source.
    pub fn udp_reply(&mut self, flow: FlowId, from: SocketAddr, payload: &[u8], now: Instant) {
        let from = canonical(from);
        let Some(f) = self.flows.get_mut(&flow) else {
            self.stats.udp_dropped += 1;
            return;
        };
        if f.kind != FlowKind::Egress
            || from.is_ipv4() != f.tuple.container.is_ipv4()
            || from.port() == 0
            || !is_unicast(from.ip())
        {
            self.stats.udp_dropped += 1;
            return;
        }
        f.last_active = now;
        let (to, mac) = (f.tuple.container, f.container_mac);
        self.write_udp(from, to, mac, payload);
    }

    /// A published UDP port's `listener` received `payload` from `client`;
    /// deliver it to `container` (whose MAC is `container_mac`) from the
    /// client's own address (or the gateway's, as for TCP). The container's
    /// replies come out of [`Nat::poll_datagram`] via the listener, to the
    /// client. Returns the flow, which lasts until idle.
    pub fn inbound_udp(
        &mut self,
        listener: ListenerId,
        client: SocketAddr,
        container: SocketAddr,
        container_mac: MacAddr,
        payload: &[u8],
        now: Instant,
    ) -> Result<FlowId, NatError> {
        self.check_container(container, container_mac)?;
        let key = (listener, canonical(client), container);
        let id = match self.inbound_flows.get(&key) {
            Some(&id) => id,
            None => {
                if self.flows.len() >= self.limits.max_udp_flows {
                    self.stats.udp_refused += 1;
                    return Err(NatError::UdpTableFull(self.flows.len()));
                }
                let (peer, owns_port) = self.inbound_peer(client, container, Proto::Udp)?;
                let tuple = Tuple { container, peer };
                let kind = FlowKind::Inbound {
                    listener,
                    client: key.1,
                };
                let id = self.add_flow(tuple, container_mac, kind, owns_port, now);
                self.inbound_flows.insert(key, id);
                id
            }
        };
        let header = if container.is_ipv4() { 20 } else { 40 } + 8;
        if payload.len() + header > self.mtu {
            self.stats.udp_dropped += 1;
            return Err(NatError::DatagramTooBig(payload.len()));
        }
        let Some(f) = self.touch_flow(id, container_mac, now) else {
            return Err(NatError::NotInNetwork(container));
        };
        let (from, to) = (f.tuple.peer, f.tuple.container);
        self.write_udp(from, to, container_mac, payload);
        Ok(id)
    }

    /// Forgets every flow of a published UDP port that is going away.
    pub fn close_listener(&mut self, listener: ListenerId) {
        let gone: Vec<FlowId> = self
            .flows
            .iter()
            .filter(
                |(_, f)| matches!(f.kind, FlowKind::Inbound { listener: l, .. } if l == listener),
            )
            .map(|(id, _)| *id)
            .collect();
        for id in gone {
            self.remove_flow(id);
        }
    }

    // ---- the container side ----

    pub(super) fn udp_datagram(
        &mut self,
        ingress: &Ingress<'_>,
        udp: &UdpView<'_, '_>,
        now: Instant,
    ) {
        let Some(tuple) = self.container_tuple(ingress, udp.src_port(), udp.dst_port()) else {
            return;
        };
        if !ingress.csum_trusted && !udp.checksum_ok(ingress.src, ingress.dst) {
            self.stats.frames_bad_checksum += 1;
            return;
        }
        let id = match self.flow_tuples.get(&tuple) {
            Some(&id) => id,
            None => {
                if self.is_gateway(ingress.dst) {
                    // A reply to a flow that is gone.
                    self.stats.udp_dropped += 1;
                    return;
                }
                if !self.egress_allows(ingress.src, ingress.dst, 17, udp.dst_port()) {
                    return;
                }
                if self.flows.len() >= self.limits.max_udp_flows {
                    self.stats.udp_refused += 1;
                    return;
                }
                let id = self.add_flow(tuple, ingress.src_mac, FlowKind::Egress, false, now);
                self.events.push_back(NatEvent::UdpFlowOpened {
                    flow: id,
                    src: tuple.container,
                    dst: tuple.peer,
                });
                id
            }
        };
        let Some(flow) = self.touch_flow(id, ingress.src_mac, now) else {
            return;
        };
        let (via, dst) = match flow.kind {
            FlowKind::Egress => (UdpVia::Flow(id), tuple.peer),
            FlowKind::Inbound { listener, client } => (UdpVia::Listener(listener), client),
            FlowKind::Echo => return,
        };
        if self.datagrams.push(via, dst, udp.payload()) {
            self.stats.udp_to_host += 1;
        } else {
            self.stats.udp_dropped += 1;
        }
    }

    /// Flow `id`, seen again with the container at `container_mac`: idle
    /// from `now` on.
    pub(super) fn touch_flow(
        &mut self,
        id: FlowId,
        container_mac: MacAddr,
        now: Instant,
    ) -> Option<&mut UdpFlow> {
        let flow = self.flows.get_mut(&id)?;
        flow.last_active = now;
        flow.container_mac = container_mac;
        Some(flow)
    }

    pub(super) fn add_flow(
        &mut self,
        tuple: Tuple,
        container_mac: MacAddr,
        kind: FlowKind,
        owns_port: bool,
        now: Instant,
    ) -> FlowId {
        let id = FlowId(self.next_id);
        self.next_id += 1;
        let at = now.checked_add(self.limits.udp_idle);
        self.flows.insert(
            id,
            UdpFlow {
                tuple,
                container_mac,
                kind,
                owns_port,
                last_active: now,
                timer_at: at,
            },
        );
        if kind == FlowKind::Echo {
            self.echo_tuples.insert(tuple, id);
            self.stats.icmp_flows += 1;
        } else {
            self.flow_tuples.insert(tuple, id);
            self.stats.udp_flows += 1;
        }
        if let Some(at) = at {
            self.timers.insert((at, Timer::Udp(id)));
        }
        id
    }

    pub(super) fn udp_timer(&mut self, id: FlowId, now: Instant) {
        let Some(flow) = self.flows.get_mut(&id) else {
            return;
        };
        flow.timer_at = None;
        match flow.last_active.checked_add(self.limits.udp_idle) {
            Some(at) if at > now => {
                flow.timer_at = Some(at);
                self.timers.insert((at, Timer::Udp(id)));
            }
            _ => {
                self.stats.udp_expired += 1;
                self.remove_flow(id);
            }
        }
    }

    pub(super) fn remove_flow(&mut self, id: FlowId) {
        let Some(flow) = self.flows.remove(&id) else {
            return;
        };
        let tuples = match flow.kind {
            FlowKind::Echo => &mut self.echo_tuples,
            _ => &mut self.flow_tuples,
        };
        if tuples.get(&flow.tuple) == Some(&id) {
            tuples.remove(&flow.tuple);
        }
        if flow.owns_port {
            self.udp_ports
                .remove(&(flow.tuple.peer.ip(), flow.tuple.peer.port()));
        }
        if let Some(at) = flow.timer_at {
            self.timers.remove(&(at, Timer::Udp(id)));
        }
        match flow.kind {
            FlowKind::Egress => self.events.push_back(NatEvent::UdpFlowClosed(id)),
            FlowKind::Echo => self.events.push_back(NatEvent::IcmpFlowClosed(id)),
            FlowKind::Inbound { listener, client } => {
                self.inbound_flows
                    .remove(&(listener, client, flow.tuple.container));
            }
        }
    }

    /// Writes a UDP frame from `from` to the container at `to`.
    pub(super) fn write_udp(
        &mut self,
        from: SocketAddr,
        to: SocketAddr,
        to_mac: MacAddr,
        payload: &[u8],
    ) {
        if from.is_ipv4() != to.is_ipv4() {
            self.stats.udp_dropped += 1;
            return;
        }
        let ip = IpRepr {
            hop_limit: HOP_LIMIT,
            ..IpRepr::new(self.mac, to_mac, from.ip(), to.ip())
        };
        let size = wire::udp_frame_len(&ip, payload.len());
        if self.push_frame(size, |buf| {
            wire::emit_udp(&ip, from.port(), to.port(), payload, buf).is_ok()
        }) {
            self.stats.udp_to_container += 1;
        } else {
            self.stats.udp_dropped += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;

    #[test]
    fn egress_udp_out_and_back_then_idle_expiry() {
        let mut net = Net::new(true, limits());
        let dst = SocketAddr::new(OUTSIDE4.into(), 53);
        let (u, flow) = net.egress_udp(5353, dst, b"query");
        let got = net.take_datagrams();
        assert_eq!(
            got,
            [(
                Datagram {
                    via: UdpVia::Flow(flow),
                    dst,
                    len: 5
                },
                b"query".to_vec()
            )]
        );
        net.nat.udp_reply(flow, dst, b"answer", net.now);
        net.settle();
        let mut buf = [0u8; 64];
        let (n, meta) = net.c.udp(u).recv_slice(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"answer");
        assert_eq!(SocketAddr::from(meta.endpoint), dst);
        // A second datagram uses the same flow.
        net.c.udp_send(u, dst, b"again");
        net.settle();
        assert!(net.take_events().is_empty());
        assert_eq!(net.take_datagrams()[0].0.via, UdpVia::Flow(flow));
        // Idle: the flow closes.
        net.advance(Duration::from_secs(29));
        assert!(net.take_events().is_empty());
        net.advance(Duration::from_secs(2));
        assert_eq!(net.take_events(), [NatEvent::UdpFlowClosed(flow)]);
        let s = net.nat.stats();
        assert_eq!((s.udp_flows, s.udp_expired, s.udp_active), (1, 1, 0));
        assert_eq!((s.udp_to_host, s.udp_to_container), (2, 1));
        // A reply on the dead flow is dropped.
        net.nat.udp_reply(flow, dst, b"late", net.now);
        assert_eq!(net.nat.stats().udp_dropped, 1);
        assert_eq!(net.nat.poll_timeout(net.now), None);
    }

    #[test]
    fn udp_reply_from_another_family_is_dropped() {
        let mut net = Net::new(true, limits());
        let dst = SocketAddr::new(OUTSIDE4.into(), 53);
        let (u, flow) = net.egress_udp(5354, dst, b"q");
        net.nat
            .udp_reply(flow, sa("[2001:db8::1]:53"), b"a", net.now);
        // An IPv4-mapped source is the IPv4 peer.
        net.nat
            .udp_reply(flow, sa("[::ffff:198.51.100.9]:53"), b"b", net.now);
        net.settle();
        let mut buf = [0u8; 8];
        let (n, meta) = net.c.udp(u).recv_slice(&mut buf).unwrap();
        assert_eq!(
            (&buf[..n], SocketAddr::from(meta.endpoint)),
            (&b"b"[..], dst)
        );
        assert!(net.c.udp(u).recv_slice(&mut buf).is_err());
        assert_eq!(net.nat.stats().udp_dropped, 1);
    }

    #[rstest]
    #[case::real_client("203.0.113.7:40000", "10.0.0.2:53", true)]
    #[case::loopback_client("127.0.0.1:6000", "10.0.0.2:53", false)]
    #[case::ipv6_client("[2001:db8::7]:40000", "[fd00::2]:53", true)]
    #[case::ipv6_client_ipv4_container("[2001:db8::7]:40000", "10.0.0.2:53", false)]
    fn published_udp_port(#[case] client: &str, #[case] container: &str, #[case] real: bool) {
        let (client, container) = (sa(client), sa(container));
        let mut net = Net::new(true, limits());
        let u = net.c.udp_socket(53);
        let listener = ListenerId(7);
        let flow = net
            .nat
            .inbound_udp(listener, client, container, C_MAC, b"ping", net.now)
            .unwrap();
        net.settle();
        let mut buf = [0u8; 64];
        let (n, meta) = net.c.udp(u).recv_slice(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"ping");
        let seen = SocketAddr::from(meta.endpoint);
        if real {
            assert_eq!(seen, client);
        } else {
            assert_eq!(seen.ip(), gateway_of(container));
            assert!(NAT_PORTS.contains(&seen.port()));
        }
        net.c.udp(u).send_slice(b"pong", meta.endpoint).unwrap();
        net.settle();
        assert_eq!(
            net.take_datagrams(),
            [(
                Datagram {
                    via: UdpVia::Listener(listener),
                    dst: client,
                    len: 4
                },
                b"pong".to_vec()
            )]
        );
        // The same client again: the same flow. No events: the listener's
        // socket serves every client.
        let again = net
            .nat
            .inbound_udp(listener, client, container, C_MAC, b"ping2", net.now)
            .unwrap();
        assert_eq!(again, flow);
        assert!(net.take_events().is_empty());
        // The port goes away: its flows with it.
        net.nat.close_listener(listener);
        assert_eq!(net.nat.stats().udp_active, 0);
        net.c.udp(u).send_slice(b"late", meta.endpoint).unwrap();
        net.settle();
        if real {
            // To a real client's address, a datagram is just egress now.
            let events = net.take_events();
            let [NatEvent::UdpFlowOpened {
                flow: egress, dst, ..
            }] = events[..]
            else {
                panic!("{events:?}");
            };
            assert_eq!(dst, client);
            assert_eq!(net.take_datagrams()[0].0.via, UdpVia::Flow(egress));
        } else {
            // To the gateway's port: nothing holds it any more.
            assert!(net.take_events().is_empty());
            assert!(net.take_datagrams().is_empty());
            assert_eq!(net.nat.stats().udp_dropped, 1);
        }
    }

    #[test]
    fn published_udp_datagram_too_big_for_the_mtu() {
        let mut net = Net::new(true, limits());
        let r = net.nat.inbound_udp(
            ListenerId(1),
            sa("203.0.113.7:40000"),
            sa("10.0.0.2:53"),
            C_MAC,
            &[0u8; MTU],
            net.now,
        );
        assert_eq!(r, Err(NatError::DatagramTooBig(MTU)));
        // The largest that fits goes through.
        let r = net.nat.inbound_udp(
            ListenerId(1),
            sa("203.0.113.7:40000"),
            sa("10.0.0.2:53"),
            C_MAC,
            &[0u8; MTU - 28],
            net.now,
        );
        assert!(r.is_ok());
        let mut buf = [0u8; 2048];
        assert_eq!(
            net.nat.poll_transmit(net.now, &mut buf),
            Some((MTU + ETH_LEN, VnetHdr::NONE))
        );
    }

    #[test]
    fn udp_flood_is_bounded() {
        let now = Instant::now();
        let mut nat = Nat::new(config(true, limits()), now).unwrap();
        for i in 0..100u16 {
            nat.handle_frame(
                &VnetHdr::NONE,
                &udp_frame(2000 + i, sa("198.51.100.9:53"), b"x"),
                now,
            );
        }
        let s = nat.stats();
        assert_eq!(s.udp_active, limits().max_udp_flows as u64);
        assert_eq!(s.udp_refused, 100 - limits().max_udp_flows as u64);
        // The datagram queue is bounded too.
        let big = vec![0u8; 1400];
        for _ in 0..DATAGRAM_QUEUE + 10 {
            nat.handle_frame(
                &VnetHdr::NONE,
                &udp_frame(2000, sa("198.51.100.9:53"), &big),
                now,
            );
        }
        assert_eq!(nat.datagrams.queue.len(), DATAGRAM_QUEUE);
        assert!(nat.stats().udp_dropped >= 10);
    }
}
