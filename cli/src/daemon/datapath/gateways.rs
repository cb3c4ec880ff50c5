//! Servicing the gateway ports: timers, the frames the gateways (the
//! first worker's) and this worker's NAT shards emit, the NATs' host
//! sockets and upstream DNS.

use super::*;

impl Datapath {
    /// Lets gateways run: answers they produced go into the bridge, queries
    /// for upstream resolvers go out of their sockets.
    pub(super) fn service_gateways(&mut self, now: Instant) {
        // Timers: a gateway whose deadline passed gets its turn too.
        for (port, slot) in self.ports.iter_mut() {
            if let Slot::Gateway(g) = slot {
                if let Some(gw) = g.gateway.as_mut() {
                    if gw.poll_timeout(now).is_some_and(|t| t <= now) {
                        gw.handle_timeout(now);
                        if !self.dirty.contains(port) {
                            self.dirty.push(*port);
                        }
                    }
                }
                if let Some(nat) = g.nat.as_mut() {
                    if nat.poll_timeout(now).is_some_and(|t| t <= now) {
                        nat.handle_timeout(now);
                        if !self.dirty.contains(port) {
                            self.dirty.push(*port);
                        }
                    }
                }
            }
        }
        let todo = std::mem::take(&mut self.dirty);
        for port in todo {
            // Bounded: a gateway emits at most this many frames per wake-up;
            // if it has more it stays dirty for the next round.
            let mut emitted = 0;
            while emitted < 4 * BATCH {
                let n = match self.ports.get_mut(&port) {
                    Some(Slot::Gateway(g)) => {
                        match g
                            .gateway
                            .as_mut()
                            .and_then(|gw| gw.poll_transmit(now, &mut self.out))
                        {
                            Some(n) => {
                                g.counters.rx_packets += 1;
                                g.counters.rx_bytes += n as u64;
                                n
                            }
                            None => break,
                        }
                    }
                    _ => break,
                };
                emitted += 1;
                self.switch_frame(port, Src::Out, 0, n, &VnetHdr::NONE, now);
            }
            // The NAT's frames, then what it asks of host sockets (events
            // before datagrams: a flow's socket exists before its first
            // datagram), bounded likewise.
            let mut nat_emitted = 0;
            while nat_emitted < 4 * BATCH {
                let (n, hdr) = match self.ports.get_mut(&port) {
                    Some(Slot::Gateway(g)) => match g.nat.as_mut() {
                        Some(nat) => match nat.poll_transmit(now, &mut self.out) {
                            Some((n, hdr)) => {
                                g.counters.rx_packets += 1;
                                g.counters.rx_bytes += n as u64;
                                (n, hdr)
                            }
                            None => break,
                        },
                        None => break,
                    },
                    _ => break,
                };
                nat_emitted += 1;
                // TCP with a partial checksum, possibly a GSO super-frame.
                self.switch_frame(port, Src::Out, 0, n, &hdr, now);
            }
            let mut nat_more = false;
            if let Some(Slot::Gateway(g)) = self.ports.get_mut(&port) {
                if let Some(nat) = g.nat.as_mut() {
                    let network = self.bridge.network_of(port);
                    if let Some(network) = network {
                        let registry = self.poll.registry();
                        let mut handled = 0;
                        while let Some(ev) = nat.poll_event() {
                            self.nat_io.handle_event(registry, network, nat, ev, now);
                            handled += 1;
                            if handled >= 16 * BATCH {
                                break;
                            }
                        }
                        // What the events did to the NAT (bytes taken from a
                        // connection open its window, bytes given to one go
                        // out) left frames that the loop above has already
                        // passed: another round sends them. Without it a
                        // window update waits for the container's next
                        // zero-window probe, 200 ms on.
                        nat_more = handled > 0;
                        nat_more |= self.nat_io.send_datagrams(network, nat, &mut self.out);
                    }
                }
            }
            if (emitted == 4 * BATCH || nat_emitted == 4 * BATCH || nat_more)
                && !self.dirty.contains(&port)
            {
                self.dirty.push(port);
            }
            if let Some(Slot::Gateway(g)) = self.ports.get_mut(&port) {
                let GatewayPort {
                    gateway: Some(gateway),
                    upstream4,
                    upstream6,
                    ..
                } = &mut **g
                else {
                    continue;
                };
                while let Some((to, n)) = gateway.poll_upstream(&mut self.out) {
                    let sock = if to.is_ipv6() {
                        upstream6.as_ref()
                    } else {
                        upstream4.as_ref()
                    };
                    match sock.map(|s| s.send_to(&self.out[..n], to)) {
                        Some(Ok(_)) => {}
                        Some(Err(e)) => tracing::debug!(%to, error = %e, "upstream DNS send"),
                        None => tracing::debug!(%to, "no socket for upstream DNS"),
                    }
                }
            }
        }
    }

    pub(super) fn nat_mut(&mut self, network: NetworkId) -> Option<&mut Nat> {
        nat_of(&self.gateways, &mut self.ports, network).map(|(_, nat)| nat)
    }

    /// Services the NAT host sockets that reported readiness, and those
    /// left with work from the last turn; their networks' gateways then
    /// have output.
    pub(super) fn service_nat_sockets(&mut self, now: Instant) {
        let mut todo = std::mem::take(&mut self.nat_ready);
        todo.extend(self.nat_io.take_retry());
        for idx in todo.drain(..) {
            let Some(network) = self.nat_io.network_of(idx) else {
                continue;
            };
            let Some((port, nat)) = nat_of(&self.gateways, &mut self.ports, network) else {
                continue;
            };
            self.nat_io
                .ready(self.poll.registry(), idx, nat, &mut self.buf, now);
            if !self.dirty.contains(&port) {
                self.dirty.push(port);
            }
        }
        // Keep the allocation for the next turn.
        self.nat_ready = todo;
        // Connections accepted for another worker's NAT shard go there.
        for conn in self.nat_io.take_accepted_elsewhere() {
            let sent = match self.peers.get(conn.owner).and_then(Option::as_ref) {
                Some(h) => h.hand_conn(conn),
                None => Err(conn),
            };
            if let Err(conn) = sent {
                tracing::debug!(
                    owner = conn.owner,
                    "published port: owner worker behind; refused"
                );
                self.nat_io.refuse(conn);
            }
        }
    }

    pub(super) fn read_upstream(&mut self, network: NetworkId, v6: bool, now: Instant) {
        let Some(&port) = self.gateways.get(&network) else {
            return;
        };
        let Some(Slot::Gateway(g)) = self.ports.get_mut(&port) else {
            return;
        };
        let sock = if v6 { &g.upstream6 } else { &g.upstream4 };
        let (Some(sock), Some(gateway)) = (sock, g.gateway.as_mut()) else {
            return;
        };
        for _ in 0..BATCH {
            match sock.recv_from(&mut self.buf) {
                Ok((n, from)) => gateway.handle_upstream(from, &self.buf[..n], now),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    tracing::debug!(error = %e, "upstream DNS receive");
                    break;
                }
            }
        }
        if !self.dirty.contains(&port) {
            self.dirty.push(port);
        }
    }
}

pub(super) fn bind_upstream(
    registry: &mio::Registry,
    network: NetworkId,
    v6: bool,
) -> io::Result<UdpSocket> {
    let addr: SocketAddr = if v6 {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    };
    let mut sock = UdpSocket::bind(addr)?;
    registry.register(&mut sock, upstream_token(network, v6), Interest::READABLE)?;
    Ok(sock)
}

/// The gateway port of `network` and this worker's shard of its NAT (the
/// fields apart, so that the caller may use the others meanwhile).
pub(super) fn nat_of<'a>(
    gateways: &FastMap<NetworkId, PortId>,
    ports: &'a mut FastMap<PortId, Slot>,
    network: NetworkId,
) -> Option<(PortId, &'a mut Nat)> {
    let port = *gateways.get(&network)?;
    match ports.get_mut(&port)? {
        Slot::Gateway(g) => Some((port, g.nat.as_mut()?)),
        _ => None,
    }
}

/// Hands a plain frame (full checksums, no GSO) to the network's NAT or
/// gateway (the first worker's: elsewhere only NAT frames get here).
pub(super) fn feed_gateway(g: &mut GatewayPort, frame: &[u8], now: Instant) {
    match g.nat.as_mut() {
        Some(nat) if nat.is_for_nat(frame) => nat.handle_frame(&VnetHdr::NONE, frame, now),
        _ => {
            if let Some(gw) = g.gateway.as_mut() {
                gw.handle_frame(frame, now);
            }
        }
    }
}
