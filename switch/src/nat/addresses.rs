//! The addresses the NAT serves: who may send from where, what it forwards
//! to, and the ports it lends on the gateway address when a client cannot
//! appear with its own.

use std::net::{IpAddr, SocketAddr};

use super::{tcp_shard, Nat, NatError, Proto, Tuple, NAT_PORTS};
use crate::MacAddr;

impl Nat {
    pub(super) fn has_family(&self, ip: IpAddr) -> bool {
        match ip {
            IpAddr::V4(_) => self.ipv4.is_some(),
            IpAddr::V6(_) => self.ipv6.is_some(),
        }
    }

    pub(super) fn is_gateway(&self, ip: IpAddr) -> bool {
        match ip {
            IpAddr::V4(a) => self.ipv4.is_some_and(|(g, _)| g == a),
            IpAddr::V6(a) => self.ipv6.is_some_and(|(g, _)| g == a),
        }
    }

    /// In the network's subnet (the gateway and broadcast included).
    pub(super) fn in_network(&self, ip: IpAddr) -> bool {
        match ip {
            IpAddr::V4(a) => self
                .ipv4
                .is_some_and(|(g, p)| prefix_match(&g.octets(), &a.octets(), p)),
            IpAddr::V6(a) => self
                .ipv6
                .is_some_and(|(g, p)| prefix_match(&g.octets(), &a.octets(), p)),
        }
    }

    /// An address a container of this network may send from.
    pub(super) fn is_container_addr(&self, ip: IpAddr) -> bool {
        is_unicast(ip)
            && self.in_network(ip)
            && !self.is_gateway(ip)
            && !self.is_subnet_broadcast(ip)
    }

    pub(super) fn is_subnet_broadcast(&self, ip: IpAddr) -> bool {
        match (ip, self.ipv4) {
            (IpAddr::V4(a), Some((_, p))) if p < 31 => {
                let host_mask = u32::MAX >> p;
                u32::from(a) & host_mask == host_mask
            }
            _ => false,
        }
    }

    /// A destination the NAT forwards to: beyond the network, or a port the
    /// NAT holds on the gateway address.
    pub(super) fn is_forwardable(&self, ip: IpAddr) -> bool {
        if self.is_gateway(ip) {
            return true;
        }
        // IPv6 link-local addresses are scoped to a link: a container
        // reaches them directly or not at all. IPv4 ones (169.254.169.254,
        // a cloud host's metadata service) are routed like any other.
        let link_local = match ip {
            IpAddr::V4(_) => false,
            IpAddr::V6(a) => crate::wire::is_ipv6_link_local(&a),
        };
        is_unicast(ip) && !ip.is_loopback() && !link_local && !self.in_network(ip)
    }

    pub(super) fn check_container(
        &self,
        container: SocketAddr,
        mac: MacAddr,
    ) -> Result<(), NatError> {
        if container.port() == 0
            || !self.is_container_addr(container.ip())
            || mac.is_multicast()
            || mac.is_zero()
        {
            return Err(NatError::NotInNetwork(container));
        }
        Ok(())
    }

    /// A published-port client (canonical) the container can answer
    /// through the gateway, and so sees with its own address.
    pub(super) fn appears_as_itself(&self, client: SocketAddr, container: SocketAddr) -> bool {
        let ip = client.ip();
        client.port() != 0
            && ip.is_ipv4() == container.is_ipv4()
            && self.is_forwardable(ip)
            && !self.is_gateway(ip)
    }

    /// The peer a container sees for a published-port client: the client
    /// itself, or a gateway address and port when the container could not
    /// answer the client's address through the gateway.
    pub(super) fn inbound_peer(
        &mut self,
        client: SocketAddr,
        container: SocketAddr,
        proto: Proto,
    ) -> Result<(SocketAddr, bool), NatError> {
        let client = canonical(client);
        let reachable = self.appears_as_itself(client, container);
        let taken = match proto {
            Proto::Tcp => self.tuples.contains_key(&Tuple {
                container,
                peer: client,
            }),
            Proto::Udp => self.flow_tuples.contains_key(&Tuple {
                container,
                peer: client,
            }),
        };
        if reachable && !taken {
            return Ok((client, false));
        }
        let gateway: IpAddr = match container.ip() {
            IpAddr::V4(_) => self.ipv4.map(|(g, _)| g.into()),
            IpAddr::V6(_) => self.ipv6.map(|(g, _)| g.into()),
        }
        .ok_or(NatError::NotInNetwork(container))?;
        let port = self
            .free_port(gateway, proto, container)
            .ok_or(NatError::NoFreePort(gateway))?;
        Ok((SocketAddr::new(gateway, port), true))
    }

    /// Takes a free port on `ip` in [`NAT_PORTS`] for a connection or
    /// flow to `container`; for TCP, one whose tuple this shard owns.
    pub(super) fn free_port(
        &mut self,
        ip: IpAddr,
        proto: Proto,
        container: SocketAddr,
    ) -> Option<u16> {
        let shard = self.shard;
        let used = match proto {
            Proto::Tcp => &mut self.tcp_ports,
            Proto::Udp => &mut self.udp_ports,
        };
        let ours = |p: u16| {
            proto == Proto::Udp
                || tcp_shard(container, SocketAddr::new(ip, p), shard.count) == shard.index
        };
        let start = *NAT_PORTS.start();
        let span = u32::from(*NAT_PORTS.end() - start) + 1;
        if !NAT_PORTS.contains(&self.port_cursor) {
            self.port_cursor = start + (self.rng.next_u64() % u64::from(span)) as u16;
        }
        let from = u32::from(self.port_cursor - start);
        let port = (0..span)
            .map(|i| start + ((from + i) % span) as u16)
            .find(|p| ours(*p) && !used.contains(&(ip, *p)))?;
        used.insert((ip, port));
        self.port_cursor = if port == *NAT_PORTS.end() {
            start
        } else {
            port + 1
        };
        Some(port)
    }
}

/// IPv4-mapped IPv6 addresses as IPv4 (a dual-stack listener reports IPv4
/// clients that way).
pub(super) fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

pub(super) fn is_unicast(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => !(a.is_unspecified() || a.is_multicast() || a.is_broadcast()),
        IpAddr::V6(a) => !(a.is_unspecified() || a.is_multicast()),
    }
}

/// The first `prefix` bits of `a` and `b` agree.
pub(super) fn prefix_match(a: &[u8], b: &[u8], prefix: u8) -> bool {
    let bits = usize::from(prefix).min(a.len() * 8);
    let (whole, rest) = (bits / 8, bits % 8);
    if a[..whole] != b[..whole] {
        return false;
    }
    if rest == 0 {
        return true;
    }
    let mask = 0xffu8 << (8 - rest);
    a[whole] & mask == b[whole] & mask
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;

    #[test]
    fn gateway_side_ports_are_not_reused_at_once() {
        // Loopback clients come from the gateway address: each connection
        // takes the next free port, so a port the container may still hold
        // in TIME-WAIT is not handed out again soon.
        let mut net = Net::new(true, limits());
        let mut last = None;
        for port in [80, 81, 82] {
            let h = net.c.listen(port);
            let id = net
                .nat
                .inbound_tcp(
                    sa("127.0.0.1:40000"),
                    SocketAddr::new("10.0.0.2".parse().unwrap(), port),
                    C_MAC,
                    net.now,
                )
                .unwrap();
            net.settle();
            let peer = SocketAddr::from(net.c.tcp(h).remote_endpoint().unwrap());
            assert!(NAT_PORTS.contains(&peer.port()), "{peer}");
            if let Some(prev) = last {
                assert_eq!(peer.port(), prev + 1, "ports must advance, not repeat");
            }
            last = Some(peer.port());
            // Close it before the next one: its port is free again, yet not
            // taken next.
            net.nat.tcp_abort(id, net.now);
            net.settle();
        }
    }

    #[test]
    fn egress_to_ipv4_link_local_is_allowed() {
        let mut net = Net::new(true, limits());
        let (h, id) = net.egress(sa("169.254.169.254:80"), 40020);
        net.c.tcp(h).send_slice(b"GET /latest").unwrap();
        net.settle();
        assert_eq!(net.host_read(id), b"GET /latest");
    }

    #[test]
    fn inbound_to_a_bad_container_address_fails() {
        let now = Instant::now();
        let mut nat = Nat::new(config(true, limits()), now).unwrap();
        for container in [
            "10.0.1.2:80",
            "10.0.0.1:80",
            "10.0.0.255:80",
            "10.0.0.2:0",
            "[fd01::2]:80",
        ] {
            let r = nat.inbound_tcp(sa("203.0.113.7:40000"), sa(container), C_MAC, now);
            assert_eq!(r, Err(NatError::NotInNetwork(sa(container))), "{container}");
        }
        let r = nat.inbound_tcp(
            sa("203.0.113.7:40000"),
            sa("10.0.0.2:80"),
            MacAddr([0xff; 6]),
            now,
        );
        assert!(r.is_err());
        assert!(nat.conns.is_empty());
    }
}
