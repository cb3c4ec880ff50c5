//! TAP reads in bounded batches, and the switching of one frame: ARP/ND
//! for remote endpoints answered on the spot, the bridge's decision, the
//! delivery; frames handed over by the other workers.

use super::egress::{write_tap, Egress};
use super::*;

impl Datapath {
    /// Reads a bounded batch from each ready port.
    pub(super) fn service_ready(&mut self, now: Instant) {
        let rounds = self.ready.len();
        for _ in 0..rounds {
            let Some(port) = self.ready.pop_front() else {
                break;
            };
            if let Some(Slot::Tap(t)) = self.ports.get_mut(&port) {
                t.queued = false;
            }
            // Counted here, flushed to the port once per batch.
            let (mut frames, mut bytes) = (0u64, 0u64);
            while frames < BATCH as u64 {
                let n = match self.ports.get(&port) {
                    Some(Slot::Tap(t)) => match t.tap.read(&mut self.buf) {
                        Ok(n) => {
                            if let Some(c) = &t.capture {
                                if n > VnetHdr::LEN {
                                    c.offer(port, Direction::In, &self.buf[VnetHdr::LEN..n]);
                                }
                            }
                            n
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(e) => {
                            tracing::debug!(port = port.0, error = %e, "TAP read failed");
                            break;
                        }
                    },
                    _ => break,
                };
                frames += 1;
                bytes += n as u64;
                let hdr = match VnetHdr::parse(&self.buf[..n]) {
                    Ok(h) if n >= VnetHdr::LEN + 14 => h,
                    _ => {
                        self.bridge.count_drop(port, DropReason::Malformed);
                        continue;
                    }
                };
                self.switch_frame(port, Src::Buf, VnetHdr::LEN, n - VnetHdr::LEN, &hdr, now);
            }
            self.tap_rx += frames;
            if let Some(Slot::Tap(t)) = self.ports.get_mut(&port) {
                t.counters.rx_packets += frames;
                t.counters.rx_bytes += bytes;
                // The batch ended before the queue did: another turn, after
                // the other ports had theirs.
                if frames == BATCH as u64 {
                    self.mark_ready(port);
                }
            }
        }
    }

    /// Queues `port` for reading, once.
    pub(super) fn mark_ready(&mut self, port: PortId) {
        if let Some(Slot::Tap(t)) = self.ports.get_mut(&port) {
            if !t.queued {
                t.queued = true;
                self.ready.push_back(port);
            }
        }
    }

    /// Decides and delivers the frame at `start..start + len` of the `src`
    /// buffer, which arrived on `ingress`.
    pub(super) fn switch_frame(
        &mut self,
        ingress: PortId,
        src: Src<'_>,
        start: usize,
        len: usize,
        hdr: &VnetHdr,
        now: Instant,
    ) {
        let Datapath {
            bridge,
            ports,
            gateways,
            dirty,
            buf,
            out,
            reply,
            seg,
            route_buf,
            policy,
            gro,
            tunnel,
            quic,
            arena,
            neighbors,
            tunnel_counters,
            suppressed,
            rules,
            peers,
            index,
            ..
        } = self;
        let (frame, coalesce, tries) = match src {
            Src::Buf => (&buf[start..start + len], false, 0),
            Src::Out => (&out[start..start + len], false, 0),
            Src::Tunnel { buf, coalesce } => match &*tunnel {
                Some(t) => (&t.rx[buf][start..start + len], coalesce, 0),
                None => return,
            },
            Src::Slice {
                frame,
                coalesce,
                tries,
            } => (&frame[start..start + len], coalesce, tries),
        };
        let from = match ports.get(&ingress) {
            Some(Slot::Tap(_)) => Origin::Local,
            Some(Slot::Gateway(_)) => Origin::Gateway,
            Some(Slot::Vtep(_)) => Origin::Tunnel,
            None => return,
        };
        // ARP/ND for remote endpoints: answered here, never flooded.
        if from == Origin::Local && !neighbors.is_empty() {
            if let Some(network) = bridge.network_of(ingress) {
                if let Some(n) = neighbors.answer(network, frame, reply) {
                    if let Some(Slot::Tap(t)) = ports.get_mut(&ingress) {
                        if write_tap(&t.tap, &VnetHdr::NONE, &reply[..n]).is_ok() {
                            if let Some(c) = &t.capture {
                                c.offer(ingress, Direction::Out, &reply[..n]);
                            }
                            t.counters.tx_packets += 1;
                            t.counters.tx_bytes += n as u64;
                            *suppressed += 1;
                            let _ = bridge.process(ingress, frame, now); // learn
                            return;
                        }
                    }
                }
            }
        }
        let action = bridge.process(ingress, frame, now);
        let gate = match bridge.network_of(ingress) {
            Some(network) => policy.gate(
                ports,
                network,
                from,
                &action,
                frame,
                *index,
                peers.len().max(1),
                tries,
                now,
            ),
            None => Gate::Pass,
        };
        let mut out_ctx = Egress {
            ports,
            dirty,
            seg,
            gro,
            tunnel: tunnel.as_ref(),
            quic: quic.as_ref(),
            arena,
            tunnel_counters,
            rules,
            peers,
            index: *index,
            from,
            coalesce,
            now,
        };
        let (action, frame) = match gate {
            Gate::Pass => (action, frame),
            Gate::Drop => return,
            Gate::Hand { to, tries } => {
                // Another worker's flow table may hold its flow; dropped
                // if that worker is behind.
                if let Some(h) = peers.get(to).and_then(Option::as_ref) {
                    let _ = h.hand_ingress(ingress, tries, hdr, frame);
                }
                return;
            }
            Gate::Route {
                network,
                mac,
                gateway_mac,
            } => {
                // Into the other network from its gateway, as a router
                // would: new MACs, one hop less.
                let Some(&gateway) = gateways.get(&network) else {
                    return;
                };
                let routed: &mut [u8] = match src {
                    // The TAP's read buffer holds this frame alone until
                    // the next read: rewritten where it is.
                    Src::Buf => &mut buf[start..start + len],
                    // The others are shared (the tunnel's receive
                    // buffers, another worker's handoff): copied first.
                    _ => {
                        let r = &mut route_buf[..len];
                        r.copy_from_slice(frame);
                        r
                    }
                };
                if !policy::route_in_place(routed, mac, gateway_mac) {
                    policy.ttl_expired += 1;
                    return;
                }
                policy.routed += 1;
                // Routed frames go out as the container's own would,
                // through the tunnel too.
                out_ctx.from = Origin::Local;
                out_ctx.coalesce = false;
                (bridge.process(gateway, routed, now), &*routed)
            }
        };
        match action {
            Action::Forward(p) => out_ctx.deliver(p, hdr, frame),
            Action::Flood { network, except } => {
                for &p in bridge.ports(network) {
                    if p != except {
                        out_ctx.deliver(p, hdr, frame);
                    }
                }
            }
            Action::Drop(reason) => {
                tracing::trace!(port = ingress.0, reason = reason.as_str(), "drop");
            }
        }
    }
}
