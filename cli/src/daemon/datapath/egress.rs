//! Delivering a switched frame: to a TAP (with its virtio_net_hdr, or
//! coalesced into a super-frame), to a NAT (TCP super-frames whole), to a
//! gateway (segmented to MTU frames first), to the first worker (handoff),
//! or to a VTEP.

use super::gateways::feed_gateway;
use super::*;

/// Writes `[hdr | frame]` to a TAP with one syscall.
pub(super) fn write_tap(tap: &Tap, hdr: &VnetHdr, frame: &[u8]) -> io::Result<usize> {
    let mut h = [0u8; VnetHdr::LEN];
    hdr.write(&mut h);
    tap.write_vectored(&[IoSlice::new(&h), IoSlice::new(frame)])
}

/// Writes the super-frame being built, if any, to its TAP.
pub(super) fn flush_gro(ports: &mut FastMap<PortId, Slot>, run: &mut GroRun) {
    let Some(port) = run.port.take() else {
        return;
    };
    if run.gro.has_pending() {
        if let Some(Slot::Tap(t)) = ports.get_mut(&port) {
            let frame = run.gro.pending();
            match t.tap.write(frame) {
                Ok(_) => {
                    if let Some(c) = &t.capture {
                        c.offer(port, Direction::Out, &frame[VnetHdr::LEN..]);
                    }
                    t.counters.tx_packets += 1;
                    t.counters.tx_bytes += (frame.len() - VnetHdr::LEN) as u64;
                }
                Err(_) => t.counters.tx_drops += 1,
            }
        }
    }
    run.gro.reset();
}

/// What delivering a frame needs.
pub(super) struct Egress<'a> {
    pub(super) ports: &'a mut FastMap<PortId, Slot>,
    pub(super) dirty: &'a mut Vec<PortId>,
    pub(super) seg: &'a mut [u8],
    pub(super) gro: &'a mut GroRun,
    pub(super) tunnel: Option<&'a Tunnel>,
    pub(super) quic: Option<&'a QuicHandle>,
    /// Where QUIC datagrams are copied to ([`DatagramArena`]).
    pub(super) arena: &'a mut DatagramArena,
    pub(super) tunnel_counters: &'a mut TunnelCounters,
    pub(super) rules: &'a TunnelRules<NetworkId, PortId>,
    /// The ways to the other workers ([`Datapath::peers`]).
    pub(super) peers: &'a [Option<Handoff>],
    /// This worker's index.
    pub(super) index: usize,
    pub(super) from: Origin,
    /// The frame came from a member's tunnel port: TCP segments may be
    /// coalesced.
    pub(super) coalesce: bool,
    pub(super) now: Instant,
}

impl Egress<'_> {
    /// Delivers `frame` (with its offload header `hdr`) to port `to`.
    pub(super) fn deliver(&mut self, to: PortId, hdr: &VnetHdr, frame: &[u8]) {
        let offloaded = hdr.is_gso() || hdr.needs_csum();
        // A member's segment may come with its checksum partial: the run
        // rewrites it either way.
        if self.coalesce && !hdr.is_gso() && matches!(self.ports.get(&to), Some(Slot::Tap(_))) {
            if self.coalesce_into(to, frame) {
                return;
            }
        } else if self.gro.port == Some(to) {
            // Whatever reaches that TAP goes after the run being built.
            flush_gro(self.ports, self.gro);
        }
        match self.ports.get_mut(&to) {
            Some(Slot::Tap(t)) => match write_tap(&t.tap, hdr, frame) {
                Ok(_) => {
                    if let Some(c) = &t.capture {
                        c.offer(to, Direction::Out, frame);
                    }
                    t.counters.tx_packets += 1;
                    t.counters.tx_bytes += frame.len() as u64;
                }
                Err(_) => t.counters.tx_drops += 1,
            },
            Some(Slot::Gateway(g)) => {
                // Whose is it: the NAT shard that owns its connection, or
                // the first worker's gateway (and NAT shard for UDP, ICMP).
                let for_nat = g.nat.as_ref().is_some_and(|nat| nat.is_for_nat(frame));
                let owner = match &g.nat {
                    Some(nat) if for_nat => switch::nat::frame_shard(frame, nat.shard().count),
                    _ => 0,
                };
                if owner != self.index {
                    // Counted where it is delivered: the port's counters
                    // are the sum over the workers.
                    let handed = self
                        .peers
                        .get(owner)
                        .and_then(Option::as_ref)
                        .is_some_and(|h| h.hand(to, hdr, frame));
                    if !handed {
                        g.counters.tx_drops += 1;
                    }
                    return;
                }
                g.counters.tx_packets += 1;
                g.counters.tx_bytes += frame.len() as u64;
                let nat_takes_whole = for_nat
                    && (!hdr.is_gso()
                        || matches!(hdr.gso_type & !gso::ECN, gso::TCPV4 | gso::TCPV6));
                if nat_takes_whole {
                    // The NAT takes partial checksums and TCP super-frames
                    // (TSO) as they are.
                    if let Some(nat) = g.nat.as_mut() {
                        nat.handle_frame(hdr, frame, self.now);
                    }
                } else if offloaded {
                    // The gateway's smoltcp (and the NAT, for UDP
                    // super-frames) takes MTU-sized frames with full
                    // checksums.
                    match offload::segment(hdr, frame, 0, self.seg) {
                        Ok(segs) => {
                            for i in 0..segs.count {
                                if let Some(f) = segs.frame(self.seg, 0, i) {
                                    feed_gateway(g, f, self.now);
                                }
                            }
                        }
                        Err(e) => {
                            tracing::trace!(error = %e, "super-frame not segmented");
                            g.counters.tx_drops += 1;
                        }
                    }
                } else {
                    feed_gateway(g, frame, self.now);
                }
                if !self.dirty.contains(&to) {
                    self.dirty.push(to);
                }
            }
            Some(Slot::Vtep(v)) => {
                // The tunnel rules decide: split horizon (what came from a
                // tunnel never goes back into one, each host's gateway stays
                // local), the VNI's header, the transport.
                let (transport, remote, header, csum) = match self.rules.encap(self.from, to) {
                    Encap::Send {
                        transport,
                        remote,
                        header,
                        partial_csum,
                    } => {
                        // A plain frame goes partial only as the far end
                        // recognises it (not behind Ethernet padding, say).
                        let recognised = hdr.is_gso()
                            || !hdr.needs_csum()
                            || offload::partial_checksum(frame).is_some();
                        let csum = if partial_csum && recognised {
                            Checksums::Partial
                        } else {
                            Checksums::Complete
                        };
                        (transport, remote, header, csum)
                    }
                    Encap::Drop(_) => return,
                };
                // What has to be segmented (or summed) before it leaves,
                // and whether it leaves with its checksum partial.
                let cut = hdr.is_gso() || (hdr.needs_csum() && csum == Checksums::Complete);
                let partial = csum == Checksums::Partial && (hdr.is_gso() || hdr.needs_csum());
                if transport == Transport::Quic {
                    // Encrypted: through QUIC or not at all.
                    let sent = match self.quic {
                        Some(q) => send_quic(
                            q, self.arena, remote, &header, hdr, frame, cut, csum, self.seg,
                        ),
                        None => Err(0),
                    };
                    let (ok, dropped) = match sent {
                        Ok(n) => (n, 0),
                        Err(sent) => (sent, 1),
                    };
                    v.counters.tx_packets += ok;
                    if partial {
                        self.tunnel_counters.tx_partial_csum += ok;
                    }
                    if ok > 0 {
                        v.counters.tx_bytes += frame.len() as u64;
                    }
                    v.counters.tx_drops += dropped;
                    return;
                }
                let Some(tunnel) = self.tunnel else {
                    return;
                };
                let sent = if cut {
                    send_segmented(tunnel, remote, &header, hdr, frame, csum, self.seg)
                } else {
                    // Header and frame go out as one datagram from two
                    // buffers: the frame is not copied.
                    let iov = [IoSlice::new(&header), IoSlice::new(frame)];
                    sendmsg(
                        tunnel.sock.as_raw_fd(),
                        &iov,
                        &[],
                        MsgFlags::empty(),
                        Some(&v.remote_sockaddr),
                    )
                    .map(|_| 1)
                    .map_err(io::Error::from)
                };
                match sent {
                    Ok(datagrams) => {
                        v.counters.tx_packets += datagrams;
                        v.counters.tx_bytes += frame.len() as u64;
                        self.tunnel_counters.tx_packets += datagrams;
                        if partial {
                            self.tunnel_counters.tx_partial_csum += datagrams;
                        }
                    }
                    Err(_) => {
                        v.counters.tx_drops += 1;
                        self.tunnel_counters.send_errors += 1;
                    }
                }
            }
            None => {}
        }
    }

    /// Adds a plain frame from a member's tunnel to the super-frame being
    /// built for TAP `to`, flushing the run first when the frame cannot
    /// extend it. False: the frame is not coalescable and goes out as is.
    pub(super) fn coalesce_into(&mut self, to: PortId, frame: &[u8]) -> bool {
        if self.gro.port == Some(to) && matches!(self.gro.gro.offer(frame), Offer::Absorbed) {
            return true;
        }
        flush_gro(self.ports, self.gro);
        if matches!(self.gro.gro.offer(frame), Offer::Absorbed) {
            self.gro.port = Some(to);
            return true;
        }
        self.gro.gro.reset();
        false
    }
}

/// Segments a super-frame into `seg`, each segment behind a copy of the
/// tunnel `header`: datagram `i` is `seg[i * stride..][..stride]`, the last
/// one `HEADER_LEN + last_len` bytes.
pub(super) fn segment_behind(
    header: &[u8],
    hdr: &VnetHdr,
    frame: &[u8],
    csum: Checksums,
    seg: &mut [u8],
) -> Result<offload::Segments, offload::OffloadError> {
    let segs = offload::segment_with(hdr, frame, header.len(), seg, csum)?;
    for i in 0..segs.count {
        seg[i * segs.stride..][..header.len()].copy_from_slice(header);
    }
    Ok(segs)
}

/// Sends a frame of an encrypted network as QUIC datagrams (with `cut`, a
/// super-frame segmented first, or a partial checksum completed, the
/// segments sent as slices of one shared buffer; else the frame as it is).
/// Ok: datagrams sent; Err: how many went before one was dropped (no
/// connection yet, too large; the QUIC side counts why).
#[allow(clippy::too_many_arguments)]
pub(super) fn send_quic(
    quic: &QuicHandle,
    arena: &mut DatagramArena,
    remote: SocketAddr,
    header: &[u8],
    hdr: &VnetHdr,
    frame: &[u8],
    cut: bool,
    csum: Checksums,
    seg: &mut [u8],
) -> Result<u64, u64> {
    if !cut {
        return if quic.send_bytes(remote, arena.take(&[header, frame])) {
            Ok(1)
        } else {
            Err(0)
        };
    }
    let segs = segment_behind(header, hdr, frame, csum, seg).map_err(|_| 0u64)?;
    // Copied once into the arena; every datagram is a slice of it.
    let all = arena.take(&[&seg[..segs.total_len(header.len())]]);
    let mut sent = 0;
    for i in 0..segs.count {
        let at = i * segs.stride;
        let end = (at + segs.stride).min(all.len());
        if !quic.send_bytes(remote, all.slice(at..end)) {
            return Err(sent);
        }
        sent += 1;
    }
    Ok(sent)
}

/// Segments a super-frame into MTU-sized frames, each behind a copy of the
/// VXLAN `header`, and sends them with UDP GSO (one `sendmsg` per run of
/// up to the kernel's segment limit). Returns the datagrams sent.
pub(super) fn send_segmented(
    tunnel: &Tunnel,
    remote: SocketAddr,
    header: &[u8],
    hdr: &VnetHdr,
    frame: &[u8],
    csum: Checksums,
    seg: &mut [u8],
) -> io::Result<u64> {
    let segs = segment_behind(header, hdr, frame, csum, seg)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    let total = segs.total_len(header.len());
    // One UDP GSO send is one UDP datagram before segmentation: at most
    // 65,507 bytes of payload over IPv4 (65,535 minus the IP and UDP
    // headers), whatever the kernel's segment limit; a 64 KiB super-frame
    // grows past that once every segment has its own headers.
    let per_send = tunnel
        .state
        .max_gso_segments()
        .min(MAX_GSO_PAYLOAD / segs.stride)
        .max(1);
    for start in (0..total).step_by(per_send * segs.stride) {
        let end = (start + per_send * segs.stride).min(total);
        let transmit = Transmit {
            destination: remote,
            ecn: None,
            contents: &seg[start..end],
            segment_size: (end - start > segs.stride).then_some(segs.stride),
            src_ip: None,
        };
        tunnel
            .state
            .try_send(UdpSockRef::from(&tunnel.sock), &transmit)?;
    }
    Ok(segs.count as u64)
}
