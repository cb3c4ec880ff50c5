//! smoltcp's side of the NAT's link: an IP-medium interface on the shared
//! [`QueueDevice`], whose packets the NAT frames itself, to the MACs of
//! the containers it holds connections with, behind the offload header a
//! TAP takes: TCP with a partial checksum, and smoltcp's super-frames as
//! GSO at the container's MSS.

use crate::fdb::FastMap;
use std::net::IpAddr;
use std::time::Instant;

use smoltcp::phy::PacketMeta;

use super::tcp::advance_tsval;
use super::{Nat, ETH_LEN};
use crate::offload::{self, flags, gso, VnetHdr};
use crate::stack::{smol_instant, Framing, QueueDevice};
use crate::wire::{self, EtherType, EthernetRepr};
use crate::MacAddr;

/// A MAC the NAT sends smoltcp's packets to, held while connections to the
/// address exist.
#[derive(Debug, Clone, Copy)]
pub(super) struct Neighbor {
    pub(super) mac: MacAddr,
    pub(super) refs: u32,
}

/// The NAT's [`Framing`]: smoltcp writes IP packets; the NAT puts the
/// Ethernet header in front, to the MAC of the packet's destination.
pub(super) struct NatLink<'a> {
    pub(super) neighbors: &'a FastMap<IpAddr, Neighbor>,
    /// The sender of the packet being received, for replies to it (a RST to
    /// a container the NAT holds no connection with).
    pub(super) rx_src: Option<(IpAddr, MacAddr)>,
    pub(super) mac: MacAddr,
    /// The network's MTU.
    pub(super) mtu: usize,
    pub(super) no_neighbor: &'a mut u64,
}

/// Where the TCP checksum field is, from the TCP header.
const TCP_CSUM: usize = 16;

/// The offload header of an IP packet smoltcp wrote (TCP checksums left to
/// the device, see `Nat::new`): for TCP, the pseudo-header sum goes into the
/// checksum field and the header says `NEEDS_CSUM` there, and a payload
/// longer than the segment size smoltcp asked for in `meta` makes it a GSO
/// super-frame. Anything else smoltcp checksummed itself.
///
/// smoltcp 0.14 passes `meta` for IPv4 only; an IPv6 packet larger than
/// the network's `mtu` is cut at the most that fits in it, the MSS of a
/// container on the network.
fn offload_header(packet: &mut [u8], meta: PacketMeta, mtu: usize) -> VnetHdr {
    let Some((l4, v6)) = tcp_offset(packet) else {
        return VnetHdr::NONE;
    };
    let Some(&offset_byte) = packet.get(l4 + 12) else {
        return VnetHdr::NONE;
    };
    let tcp_len = packet.len() - l4;
    let headers = l4 + usize::from(offset_byte >> 4) * 4;
    if headers > packet.len() || tcp_len < 20 {
        return VnetHdr::NONE;
    }
    let pseudo = if v6 {
        let (mut s, mut d) = ([0u8; 16], [0u8; 16]);
        s.copy_from_slice(&packet[8..24]);
        d.copy_from_slice(&packet[24..40]);
        offload::pseudo_header_v6(s, d, 6, tcp_len as u32)
    } else {
        let s = [packet[12], packet[13], packet[14], packet[15]];
        let d = [packet[16], packet[17], packet[18], packet[19]];
        offload::pseudo_header_v4(s, d, 6, tcp_len as u16)
    };
    let partial = offload::ones_sum(&[], pseudo);
    packet[l4 + TCP_CSUM..l4 + TCP_CSUM + 2].copy_from_slice(&partial.to_be_bytes());
    let mut hdr = VnetHdr {
        flags: flags::NEEDS_CSUM,
        gso_type: gso::NONE,
        hdr_len: (ETH_LEN + headers) as u16,
        gso_size: 0,
        csum_start: (ETH_LEN + l4) as u16,
        csum_offset: TCP_CSUM as u16,
    };
    let mss = match meta.segmentation_offload_size {
        Some(mss) => Some(usize::from(mss.get())),
        None if v6 && packet.len() > mtu => mtu.checked_sub(headers),
        None => None,
    };
    if let Some(mss) = mss.filter(|&m| m > 0 && packet.len() - headers > m) {
        hdr.gso_type = if v6 { gso::TCPV6 } else { gso::TCPV4 };
        hdr.gso_size = mss as u16;
    }
    hdr
}

/// Where the TCP header of `packet` starts, and whether it is IPv6; `None`
/// for anything but TCP right after the IP header.
fn tcp_offset(packet: &[u8]) -> Option<(usize, bool)> {
    match packet.first()? >> 4 {
        4 => {
            let ihl = usize::from(packet[0] & 0x0f) * 4;
            (packet.len() >= ihl && ihl >= 20 && packet[9] == 6).then_some((ihl, false))
        }
        6 => (packet.len() >= 40 && packet[6] == 6).then_some((40, true)),
        _ => None,
    }
}

impl Framing for NatLink<'_> {
    /// The offload header, then the Ethernet header.
    const HEADROOM: usize = VnetHdr::LEN + ETH_LEN;

    fn finish(&mut self, buf: &mut [u8], meta: PacketMeta) -> bool {
        let (head, packet) = buf.split_at_mut(Self::HEADROOM);
        let dst = wire::ip_destination(packet);
        let mac = dst.and_then(|ip| {
            self.neighbors.get(&ip).map(|n| n.mac).or_else(|| {
                self.rx_src
                    .filter(|(src, _)| *src == ip)
                    .map(|(_, mac)| mac)
            })
        });
        match (dst, mac) {
            (Some(ip), Some(mac)) => {
                let eth = EthernetRepr {
                    src: self.mac,
                    dst: mac,
                    ethertype: if ip.is_ipv4() {
                        EtherType::Ipv4
                    } else {
                        EtherType::Ipv6
                    },
                };
                // The headroom holds both headers.
                offload_header(packet, meta, self.mtu).write(head);
                eth.emit(&mut head[VnetHdr::LEN..]).is_ok()
            }
            _ => {
                *self.no_neighbor += 1;
                false
            }
        }
    }
}

impl Nat {
    /// One smoltcp poll: `packet` (if any) in, then whatever the sockets
    /// have to send out. Bytes the host sent before the container answered
    /// a published connection's SYN go into its socket in between, so the
    /// handshake's last ACK carries them (one segment, as pasta does,
    /// instead of an ACK and the data after it).
    pub(super) fn poll_iface(
        &mut self,
        packet: Option<&[u8]>,
        rx_src: Option<(IpAddr, MacAddr)>,
        now: Instant,
    ) {
        use smoltcp::iface::{PollIngressSingleResult, PollResult};
        advance_tsval(now);
        let at = smol_instant(self.epoch, now);
        self.iface.poll_maintenance(at);
        let mut device = QueueDevice {
            rx: packet,
            tx: &mut self.tx,
            framing: NatLink {
                neighbors: &self.neighbors,
                rx_src,
                mac: self.mac,
                mtu: self.mtu,
                no_neighbor: &mut self.stats.frames_no_neighbor,
            },
            caps: &self.caps,
        };
        while self
            .iface
            .poll_ingress_single(at, &mut device, &mut self.sockets)
            != PollIngressSingleResult::None
        {}
        if !self.early.is_empty() {
            Self::flush_early(&mut self.early, &mut self.conns, &mut self.sockets);
        }
        while self.iface.poll_egress(at, &mut device, &mut self.sockets) != PollResult::None {}
    }

    pub(super) fn hold_neighbor(&mut self, ip: IpAddr, mac: MacAddr) {
        let n = self
            .neighbors
            .entry(ip)
            .or_insert(Neighbor { mac, refs: 0 });
        n.mac = mac;
        n.refs += 1;
    }

    pub(super) fn release_neighbor(&mut self, ip: IpAddr) {
        if let Some(n) = self.neighbors.get_mut(&ip) {
            n.refs -= 1;
            if n.refs == 0 {
                self.neighbors.remove(&ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GW: MacAddr = MacAddr([0x02, 0x42, 0x0a, 0, 0, 1]);
    const C: MacAddr = MacAddr([0x02, 0x42, 0x0a, 0, 0, 2]);

    const HEAD: usize = VnetHdr::LEN + ETH_LEN;

    /// An IPv4 packet to `dst` behind room for the offload and Ethernet
    /// headers.
    fn frame_to(dst: [u8; 4]) -> Vec<u8> {
        let mut f = vec![0u8; HEAD + 20];
        f[HEAD] = 0x45;
        f[HEAD + 16..HEAD + 20].copy_from_slice(&dst);
        f
    }

    #[test]
    fn frames_go_to_held_neighbours_or_the_sender_else_are_counted() {
        let mut neighbors = FastMap::default();
        neighbors.insert(IpAddr::from([10, 0, 0, 2]), Neighbor { mac: C, refs: 1 });
        let mut no_neighbor = 0;
        let mut link = NatLink {
            neighbors: &neighbors,
            rx_src: Some((IpAddr::from([10, 0, 0, 3]), MacAddr([2, 0, 0, 0, 0, 3]))),
            mac: GW,
            mtu: 1500,
            no_neighbor: &mut no_neighbor,
        };
        let mut f = frame_to([10, 0, 0, 2]);
        let meta = PacketMeta::default();
        assert!(link.finish(&mut f, meta));
        assert_eq!(VnetHdr::parse(&f).unwrap(), VnetHdr::NONE);
        let e = &f[VnetHdr::LEN..];
        assert_eq!(&e[..6], &C.0);
        assert_eq!(&e[6..12], &GW.0);
        assert_eq!(&e[12..14], &[0x08, 0x00]);
        let mut f = frame_to([10, 0, 0, 3]);
        assert!(link.finish(&mut f, meta));
        assert_eq!(&f[VnetHdr::LEN..VnetHdr::LEN + 6], &[2, 0, 0, 0, 0, 3]);
        assert!(!link.finish(&mut frame_to([10, 0, 0, 9]), meta));
        assert_eq!(no_neighbor, 1);
    }
}
