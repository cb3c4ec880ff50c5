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

    /// One VXLAN datagram at `start..start + len` of receive buffer `buf`:
    /// the tunnel rules admit it (and count it) or not.
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
        let datagram = &t.rx[buf][start..start + len];
        let Decap::Deliver {
            port,
            frame,
            coalesce,
            ..
        } = self.rules.decapsulate(Transport::Udp, from, datagram, now)
        else {
            return;
        };
        // A static VTEP (a kernel VXLAN device) may leave the inner
        // checksum partial, as Linux does for a packet bound for a device
        // with checksum offload (a veth): it goes on marked so, and the
        // container's kernel, the NAT or the segmenter completes or trusts
        // it as it does a TAP's. Members (vswitchd) send complete sums.
        let hdr = match coalesce {
            false => offload::partial_checksum(frame).unwrap_or(VnetHdr::NONE),
            true => VnetHdr::NONE,
        };
        // The inner frame is the datagram's tail.
        let (at, n) = (start + len - frame.len(), frame.len());
        self.count_vtep_rx(port, n);
        let src = Src::Tunnel { buf, coalesce };
        self.switch_frame(port, src, at, n, &hdr, now);
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
    /// frame, as on the UDP tunnel, which the tunnel rules accept only for
    /// encrypted networks.
    pub(super) fn quic_datagram(&mut self, peer: SocketAddr, datagram: &[u8], now: Instant) {
        let Decap::Deliver {
            port,
            frame,
            coalesce,
            ..
        } = self.rules.decapsulate(Transport::Quic, peer, datagram, now)
        else {
            return;
        };
        let (at, n) = (datagram.len() - frame.len(), frame.len());
        self.count_vtep_rx(port, n);
        let src = Src::Quic { datagram, coalesce };
        self.switch_frame(port, src, at, n, &VnetHdr::NONE, now);
    }

    fn count_vtep_rx(&mut self, port: PortId, bytes: usize) {
        if let Some(Slot::Vtep(v)) = self.ports.get_mut(&port) {
            v.counters.rx_packets += 1;
            v.counters.rx_bytes += bytes as u64;
        }
    }
}
