//! smoltcp's side of the NAT's link: an IP-medium interface on the shared
//! [`QueueDevice`], whose packets the NAT frames itself, to the MACs of
//! the containers it holds connections with.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Instant;

use super::tcp::advance_tsval;
use super::{Nat, ETH_LEN};
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
    pub(super) neighbors: &'a HashMap<IpAddr, Neighbor>,
    /// The sender of the packet being received, for replies to it (a RST to
    /// a container the NAT holds no connection with).
    pub(super) rx_src: Option<(IpAddr, MacAddr)>,
    pub(super) mac: MacAddr,
    pub(super) no_neighbor: &'a mut u64,
}

impl Framing for NatLink<'_> {
    const HEADROOM: usize = ETH_LEN;

    fn finish(&mut self, buf: &mut [u8]) -> bool {
        let dst = wire::ip_destination(&buf[ETH_LEN..]);
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
                // The headroom holds the header.
                eth.emit(buf).is_ok()
            }
            _ => {
                *self.no_neighbor += 1;
                false
            }
        }
    }
}

impl Nat {
    pub(super) fn poll_iface(
        &mut self,
        packet: Option<&[u8]>,
        rx_src: Option<(IpAddr, MacAddr)>,
        now: Instant,
    ) {
        let mut device = QueueDevice {
            rx: packet,
            tx: &mut self.tx,
            framing: NatLink {
                neighbors: &self.neighbors,
                rx_src,
                mac: self.mac,
                no_neighbor: &mut self.stats.frames_no_neighbor,
            },
            caps: &self.caps,
        };
        advance_tsval(now);
        self.iface.poll(
            smol_instant(self.epoch, now),
            &mut device,
            &mut self.sockets,
        );
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

    /// An IPv4 packet to `dst` behind room for the Ethernet header.
    fn frame_to(dst: [u8; 4]) -> Vec<u8> {
        let mut f = vec![0u8; ETH_LEN + 20];
        f[ETH_LEN] = 0x45;
        f[ETH_LEN + 16..ETH_LEN + 20].copy_from_slice(&dst);
        f
    }

    #[test]
    fn frames_go_to_held_neighbours_or_the_sender_else_are_counted() {
        let mut neighbors = HashMap::new();
        neighbors.insert(IpAddr::from([10, 0, 0, 2]), Neighbor { mac: C, refs: 1 });
        let mut no_neighbor = 0;
        let mut link = NatLink {
            neighbors: &neighbors,
            rx_src: Some((IpAddr::from([10, 0, 0, 3]), MacAddr([2, 0, 0, 0, 0, 3]))),
            mac: GW,
            no_neighbor: &mut no_neighbor,
        };
        let mut f = frame_to([10, 0, 0, 2]);
        assert!(link.finish(&mut f));
        assert_eq!(&f[..6], &C.0);
        assert_eq!(&f[6..12], &GW.0);
        assert_eq!(&f[12..14], &[0x08, 0x00]);
        let mut f = frame_to([10, 0, 0, 3]);
        assert!(link.finish(&mut f));
        assert_eq!(&f[..6], &[2, 0, 0, 0, 0, 3]);
        assert!(!link.finish(&mut frame_to([10, 0, 0, 9])));
        assert_eq!(no_neighbor, 1);
    }
}
