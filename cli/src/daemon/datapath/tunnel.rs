//! The tunnel's receive side: the UDP socket (recvmmsg batches, UDP GRO)
//! and the QUIC datagrams, each decided by the overlay's tunnel rules.

use super::egress::flush_gro;
use super::*;

/// The VXLAN tunnel socket with its GSO/GRO state (quinn-udp) and its
/// receive buffers, allocated once.
pub(super) struct Tunnel {
    pub(super) sock: UdpSocket,
    pub(super) state: UdpSocketState,
    pub(super) rx: Vec<Box<[u8]>>,
    pub(super) meta: Vec<RecvMeta>,
}

impl Tunnel {
    pub(super) fn new(sock: UdpSocket) -> io::Result<Tunnel> {
        // Turns UDP GRO on where the kernel has it.
        let state = UdpSocketState::new(UdpSockRef::from(&sock))?;
        let count = TUNNEL_RX_BUFS.min(quinn_udp::BATCH_SIZE);
        Ok(Tunnel {
            sock,
            state,
            rx: (0..count)
                .map(|_| vec![0u8; TUNNEL_RX_BUF].into_boxed_slice())
                .collect(),
            meta: vec![RecvMeta::default(); count],
        })
    }
}

impl Datapath {
    /// Reads batches of tunnel datagrams (recvmmsg; runs of same-sized
    /// datagrams arrive coalesced by UDP GRO) and switches their inner
    /// frames; consecutive TCP segments bound for one TAP leave as one
    /// super-frame.
    pub(super) fn read_tunnel(&mut self, now: Instant) {
        // Stays set if the batch ends before the queue does.
        self.tunnel_more = self.tunnel.is_some();
        for _ in 0..BATCH {
            let Some(t) = self.tunnel.as_mut() else {
                return;
            };
            let count = {
                let n = t.rx.len();
                let mut iovs: [IoSliceMut<'_>; TUNNEL_RX_BUFS] =
                    std::array::from_fn(|_| IoSliceMut::new(&mut []));
                for (iov, buf) in iovs.iter_mut().zip(t.rx.iter_mut()) {
                    *iov = IoSliceMut::new(&mut buf[..]);
                }
                match t
                    .state
                    .recv(UdpSockRef::from(&t.sock), &mut iovs[..n], &mut t.meta)
                {
                    Ok(count) => count,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        if e.kind() != io::ErrorKind::WouldBlock {
                            tracing::debug!(error = %e, "tunnel receive");
                        }
                        // Drained (or failing): the next datagram brings an event.
                        self.tunnel_more = false;
                        break;
                    }
                }
            };
            for i in 0..count {
                let meta = self.tunnel.as_ref().expect("checked above").meta[i];
                let stride = meta.stride.max(1);
                let mut at = 0;
                while at < meta.len {
                    let len = stride.min(meta.len - at);
                    self.tunnel_datagram(i, at, len, meta.addr, now);
                    at += len;
                }
            }
            flush_gro(&mut self.ports, &mut self.gro);
        }
    }

    /// One VXLAN datagram at `start..start + len` of receive buffer `buf`.
    pub(super) fn tunnel_datagram(
        &mut self,
        buf: usize,
        start: usize,
        len: usize,
        from: SocketAddr,
        now: Instant,
    ) {
        let Some(t) = self.tunnel.as_ref() else {
            return;
        };
        self.tunnel_counters.rx_packets += 1;
        let vni = match vxlan::decapsulate(&t.rx[buf][start..start + len]) {
            Ok((vni, _)) => vni,
            Err(_) => {
                self.tunnel_counters.malformed += 1;
                return;
            }
        };
        let Some(&network) = self.network_of_vni.get(&vni) else {
            self.tunnel_counters.unknown_vni += 1;
            return;
        };
        let Some(&port) = self.vteps.get(&(network, canonical_ip(from.ip()))) else {
            self.tunnel_counters.non_member += 1;
            return;
        };
        if let Some(Slot::Vtep(v)) = self.ports.get_mut(&port) {
            if v.quic {
                // An encrypted network takes nothing in the clear.
                self.tunnel_counters.clear_on_encrypted += 1;
                return;
            }
            v.counters.rx_packets += 1;
            v.counters.rx_bytes += (len - vxlan::HEADER_LEN) as u64;
        }
        self.switch_frame(
            port,
            Src::Tunnel(buf),
            start + vxlan::HEADER_LEN,
            len - vxlan::HEADER_LEN,
            &VnetHdr::NONE,
            now,
        );
    }

    /// Switches the frames of the QUIC datagrams that arrived (a bounded
    /// number; the QUIC side wakes the datapath again for the rest).
    pub(super) fn read_quic(&mut self, now: Instant) {
        let Some(mut rx) = self.quic_rx.take() else {
            return;
        };
        rx.drain(|peer, datagram| self.quic_datagram(peer, datagram, now));
        self.quic_rx = Some(rx);
        flush_gro(&mut self.ports, &mut self.gro);
    }

    /// One datagram from the member whose tunnel address is `peer` (the
    /// QUIC endpoint tells it by its certificate): a VXLAN header and a
    /// frame, as on the UDP tunnel, accepted only for encrypted networks.
    pub(super) fn quic_datagram(&mut self, peer: SocketAddr, datagram: &[u8], now: Instant) {
        let len = datagram.len();
        let vni = match vxlan::decapsulate(datagram) {
            Ok((vni, _)) => vni,
            Err(_) => {
                self.tunnel_counters.quic_rejected += 1;
                return;
            }
        };
        let port = self
            .network_of_vni
            .get(&vni)
            .and_then(|n| self.vteps.get(&(*n, canonical_ip(peer.ip()))));
        let Some(&port) = port else {
            self.tunnel_counters.quic_rejected += 1;
            return;
        };
        match self.ports.get_mut(&port) {
            Some(Slot::Vtep(v)) if v.quic => {
                v.counters.rx_packets += 1;
                v.counters.rx_bytes += (len - vxlan::HEADER_LEN) as u64;
            }
            _ => {
                self.tunnel_counters.quic_on_plain += 1;
                return;
            }
        }
        self.switch_frame(
            port,
            Src::Slice(datagram),
            vxlan::HEADER_LEN,
            len - vxlan::HEADER_LEN,
            &VnetHdr::NONE,
            now,
        );
    }
}

/// IPv4-mapped IPv6 addresses (from a dual-stack socket) as plain IPv4.
pub(super) fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    }
}
