//! Neighbour suppression: ARP requests and IPv6 neighbour solicitations for
//! addresses the control plane already knows (endpoints on other hosts of an
//! overlay) are answered by the local switch, so they never flood across
//! the tunnel. Sans-IO: a table and a function from a request frame to a
//! reply frame, written straight into the caller's buffer.

use std::collections::HashMap;
use std::net::IpAddr;

use crate::wire::{
    self, ArpOperation, ArpRepr, EtherType, EthernetFrame, Ipv6Endpoints, Ipv6Summary, NdpKind,
};
use crate::{MacAddr, NetworkId};

/// Known (network, IP) -> MAC bindings.
#[derive(Debug, Default, Clone)]
pub struct Neighbors {
    table: HashMap<(NetworkId, IpAddr), MacAddr>,
}

impl Neighbors {
    pub fn new() -> Neighbors {
        Neighbors::default()
    }

    /// Binds `ip` to `mac` in `network`.
    pub fn insert(&mut self, network: NetworkId, ip: IpAddr, mac: MacAddr) {
        self.table.insert((network, ip), mac);
    }

    /// Forgets `ip` in `network`.
    pub fn remove(&mut self, network: NetworkId, ip: IpAddr) -> Option<MacAddr> {
        self.table.remove(&(network, ip))
    }

    /// Forgets every binding of `network`.
    pub fn remove_network(&mut self, network: NetworkId) {
        self.table.retain(|(n, _), _| *n != network);
    }

    /// The MAC bound to `ip` in `network`.
    pub fn get(&self, network: NetworkId, ip: IpAddr) -> Option<MacAddr> {
        self.table.get(&(network, ip)).copied()
    }

    pub fn len(&self) -> usize {
        self.table.len()
    }

    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    /// If `frame` is an ARP request or a neighbour solicitation for a known
    /// address of `network`, writes the reply into `out` and returns its
    /// length. Anything else (or a reply larger than `out`) is `None`.
    pub fn answer(&self, network: NetworkId, frame: &[u8], out: &mut [u8]) -> Option<usize> {
        if self.table.is_empty() {
            return None;
        }
        let eth = EthernetFrame::new_checked(frame).ok()?;
        match eth.ethertype() {
            EtherType::Arp => {
                let arp = ArpRepr::parse(eth.payload()).ok()?;
                if arp.operation != ArpOperation::Request || arp.sender_ip.is_unspecified() {
                    return None;
                }
                let mac = self.get(network, IpAddr::V4(arp.target_ip))?;
                wire::emit_arp_reply(mac, arp.target_ip, arp.sender_mac, arp.sender_ip, out).ok()
            }
            EtherType::Ipv6 => {
                let v6 = Ipv6Summary::parse(eth.payload()).ok()?;
                let ndp = v6.ndp?;
                if ndp.kind != NdpKind::NeighborSolicit || v6.src.is_unspecified() {
                    return None;
                }
                let target = ndp.target?;
                let mac = self.get(network, IpAddr::V6(target))?;
                let addrs = Ipv6Endpoints {
                    src_mac: mac,
                    dst_mac: eth.src(),
                    src_ip: target,
                    dst_ip: v6.src,
                };
                wire::emit_neighbor_advert(addrs, target, Some(mac), out).ok()
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    const NET: NetworkId = NetworkId(1);

    fn mac(b: u8) -> MacAddr {
        MacAddr([2, 0x42, 0, 0, 0, b])
    }

    #[test]
    fn answers_arp_for_known_addresses_only() {
        let mut n = Neighbors::new();
        let remote = Ipv4Addr::new(10, 0, 0, 9);
        n.insert(NET, remote.into(), mac(9));
        let req = wire::build_arp_request(mac(2), Ipv4Addr::new(10, 0, 0, 2), remote);
        let mut out = [0u8; 128];
        let len = n.answer(NET, &req, &mut out).expect("answered");
        let eth = EthernetFrame::new_checked(&out[..len]).unwrap();
        assert_eq!(eth.dst(), mac(2));
        assert_eq!(eth.src(), mac(9));
        let arp = ArpRepr::parse(eth.payload()).unwrap();
        assert_eq!(arp.operation, ArpOperation::Reply);
        assert_eq!(arp.sender_ip, remote);
        assert_eq!(arp.sender_mac, mac(9));
        assert_eq!(arp.target_ip, Ipv4Addr::new(10, 0, 0, 2));
        // Another network, an unknown address, a probe: not answered.
        assert!(n.answer(NetworkId(2), &req, &mut out).is_none());
        let other = wire::build_arp_request(
            mac(2),
            Ipv4Addr::new(10, 0, 0, 2),
            Ipv4Addr::new(10, 0, 0, 7),
        );
        assert!(n.answer(NET, &other, &mut out).is_none());
        let probe = wire::build_arp_request(mac(2), Ipv4Addr::UNSPECIFIED, remote);
        assert!(n.answer(NET, &probe, &mut out).is_none());
        // Too small a buffer: no answer rather than a panic.
        assert!(n.answer(NET, &req, &mut [0u8; 10]).is_none());
        n.remove(NET, remote.into());
        assert!(n.answer(NET, &req, &mut out).is_none());
    }

    #[test]
    fn answers_neighbour_solicitations() {
        let mut n = Neighbors::new();
        let remote: Ipv6Addr = "fd00::9".parse().unwrap();
        let me: Ipv6Addr = "fd00::2".parse().unwrap();
        n.insert(NET, remote.into(), mac(9));
        let ns = wire::build_neighbor_solicit(mac(2), me, remote);
        let mut out = [0u8; 256];
        let len = n.answer(NET, &ns, &mut out).expect("answered");
        let eth = EthernetFrame::new_checked(&out[..len]).unwrap();
        assert_eq!(eth.dst(), mac(2));
        let v6 = Ipv6Summary::parse(eth.payload()).unwrap();
        assert_eq!(v6.src, remote);
        assert_eq!(v6.dst, me);
        let ndp = v6.ndp.unwrap();
        assert_eq!(ndp.kind, NdpKind::NeighborAdvert);
        assert_eq!(ndp.target, Some(remote));
        assert_eq!(ndp.target_lladdr, Some(mac(9)));
        n.remove_network(NET);
        assert!(n.is_empty());
    }

    #[test]
    fn garbage_is_ignored() {
        let mut n = Neighbors::new();
        n.insert(NET, Ipv4Addr::new(10, 0, 0, 9).into(), mac(9));
        let mut out = [0u8; 256];
        for len in 0..80 {
            let junk: Vec<u8> = (0..len).map(|i| (i * 37 + 11) as u8).collect();
            let _ = n.answer(NET, &junk, &mut out);
        }
    }
}
