//! The tunnel's receive side: the UDP sockets (recvmmsg batches, UDP GRO)
//! and the QUIC datagrams, each decided by the overlay's tunnel rules.
//!
//! Each worker has a socket of its own on the tunnel port, the sockets of a
//! `SO_REUSEPORT` group; a classic BPF program ([`steering_program`])
//! picks the socket of each datagram by a hash of its inner flow, so the
//! receive side of different flows runs on different workers, and a
//! flow's frames stay in order on one.

use super::egress::flush_gro;
use super::*;

/// Binds the tunnel port: `count` sockets (one per worker) on `addr` in one
/// `SO_REUSEPORT` group, each datagram steered to one of them by its inner
/// flow ([`steering_program`]). A port some other socket already holds is
/// an error, as it was with one socket: a plain bind is tried first (a
/// group of another program's would otherwise be joined silently).
pub fn bind_tunnel(addr: SocketAddr, count: usize) -> io::Result<Vec<std::net::UdpSocket>> {
    use socket2::{Domain, Protocol, Socket, Type};
    let count = count.clamp(1, MAX_WORKERS);
    if addr.port() != 0 {
        drop(std::net::UdpSocket::bind(addr)?);
    }
    let mut socks: Vec<std::net::UdpSocket> = Vec::with_capacity(count);
    let mut at = addr;
    for _ in 0..count {
        let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
        s.set_reuse_port(true)?;
        s.bind(&at.into())?;
        let s: std::net::UdpSocket = s.into();
        // An ephemeral port: the others join the one the first got.
        at = s.local_addr()?;
        socks.push(s);
    }
    if count > 1 {
        let program = steering_program(count as u32);
        let fprog = libc::sock_fprog {
            len: program.len() as u16,
            filter: program.as_ptr().cast_mut(),
        };
        nix::sys::socket::setsockopt(
            &socks[0],
            nix::sys::socket::sockopt::AttachReusePortCbpf,
            &fprog,
        )
        .map_err(io::Error::from)?;
    }
    Ok(socks)
}

/// The classic BPF program of the tunnel's `SO_REUSEPORT` group: which of
/// `count` sockets a datagram goes to. It runs on the UDP payload (the
/// kernel pulls the UDP header first): the VXLAN header (8 bytes), then the
/// inner Ethernet frame. For inner IPv4 and IPv6 it hashes the addresses
/// (the last 32 bits of each, for IPv6) and the 32 bits after the IP header
/// (the ports of TCP and UDP, without extension headers for IPv6), XORed
/// so that both directions of a flow pick the same socket, mixed by a
/// multiplication; anything else, and a datagram too short for a load (the
/// program then ends with 0), goes to the first socket.
pub(super) fn steering_program(count: u32) -> Vec<libc::sock_filter> {
    use libc::{
        BPF_ABS, BPF_ALU, BPF_AND, BPF_B, BPF_H, BPF_IND, BPF_JEQ, BPF_JMP, BPF_K, BPF_LD, BPF_LDX,
        BPF_MEM, BPF_MOD, BPF_MSH, BPF_MUL, BPF_RET, BPF_RSH, BPF_ST, BPF_W, BPF_X, BPF_XOR,
    };
    let op = |code: u32, k: u32| libc::sock_filter {
        code: code as u16,
        jt: 0,
        jf: 0,
        k,
    };
    let jeq = |k: u32, jt: u8, jf: u8| libc::sock_filter {
        code: (BPF_JMP | BPF_JEQ | BPF_K) as u16,
        jt,
        jf,
        k,
    };
    // Offsets in the UDP payload: VXLAN 8, inner Ethernet 14.
    const ETHERTYPE: u32 = 8 + 12;
    const L3: u32 = 8 + 14;
    // A ^= M[0], with M[0] the running hash.
    let fold = |v: &mut Vec<libc::sock_filter>| {
        v.push(op(BPF_LDX | BPF_MEM, 0));
        v.push(op(BPF_ALU | BPF_XOR | BPF_X, 0));
        v.push(op(BPF_ST, 0));
    };
    // The two ports in A folded into the same value both ways round:
    // A = (A >> 16) ^ (A & 0xffff).
    let ports = |v: &mut Vec<libc::sock_filter>| {
        v.push(op(BPF_ST, 1));
        v.push(op(BPF_ALU | BPF_RSH | BPF_K, 16));
        v.push(op(BPF_LDX | BPF_MEM, 1));
        v.push(op(BPF_ALU | BPF_XOR | BPF_X, 0));
        v.push(op(BPF_ALU | BPF_AND | BPF_K, 0xffff));
    };
    let mut v4 = vec![
        op(BPF_LD | BPF_W | BPF_ABS, L3 + 12), // source address
        op(BPF_ST, 0),
        op(BPF_LD | BPF_W | BPF_ABS, L3 + 16), // destination address
    ];
    fold(&mut v4);
    v4.push(op(BPF_LDX | BPF_B | BPF_MSH, L3)); // X = IHL * 4
    v4.push(op(BPF_LD | BPF_W | BPF_IND, L3)); // the ports
    ports(&mut v4);
    fold(&mut v4);
    let mut v6 = vec![
        op(BPF_LD | BPF_W | BPF_ABS, L3 + 8 + 12), // source, last word
        op(BPF_ST, 0),
        op(BPF_LD | BPF_W | BPF_ABS, L3 + 24 + 12), // destination, last word
    ];
    fold(&mut v6);
    v6.push(op(BPF_LD | BPF_W | BPF_ABS, L3 + 40)); // the ports
    ports(&mut v6);
    fold(&mut v6);
    let mix = [
        op(BPF_ALU | BPF_MUL | BPF_K, 0x9e37_79b1),
        op(BPF_ALU | BPF_RSH | BPF_K, 16),
        op(BPF_ALU | BPF_MOD | BPF_K, count.max(1)),
        op(BPF_RET | libc::BPF_A, 0),
    ];
    // ldh ethertype; jeq v4 -> V4; jeq v6 -> V6; ret 0; V4...; ja MIX; V6...; MIX
    let mut p = vec![op(BPF_LD | BPF_H | BPF_ABS, ETHERTYPE)];
    p.push(jeq(0x0800, 1, 0));
    p.push(jeq(0x86dd, 1 + v4.len() as u8 + 1, 0));
    p.push(op(BPF_RET | BPF_K, 0));
    // V4 starts right after `ret 0`: the first jeq jumps over two.
    p[1].jt = 2;
    p.extend(v4);
    p.push(op(BPF_JMP | libc::BPF_JA, v6.len() as u32));
    p.extend(v6);
    p.extend(mix);
    p
}

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
        // The inner checksum may be partial: a static VTEP (a kernel VXLAN
        // device) leaves it so, as Linux does for a packet bound for a
        // device with checksum offload (a veth), and so does a member that
        // was told this host takes it (`Vtep::partial_csum`). It goes on
        // marked so, and the container's kernel, the NAT or the segmenter
        // completes or trusts it as it does a TAP's; a run of coalesced
        // segments rewrites it.
        let hdr = offload::partial_checksum(frame).unwrap_or(VnetHdr::NONE);
        self.tunnel_counters.rx_partial_csum += u64::from(hdr.needs_csum());
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
        // A member leaves inner checksums partial (QUIC authenticates
        // every byte already), as on the UDP tunnel.
        let hdr = offload::partial_checksum(frame).unwrap_or(VnetHdr::NONE);
        self.tunnel_counters.rx_partial_csum += u64::from(hdr.needs_csum());
        let src = Src::Slice {
            frame: datagram,
            coalesce,
            tries: 0,
        };
        self.switch_frame(port, src, at, n, &hdr, now);
    }

    fn count_vtep_rx(&mut self, port: PortId, bytes: usize) {
        if let Some(Slot::Vtep(v)) = self.ports.get_mut(&port) {
            v.counters.rx_packets += 1;
            v.counters.rx_bytes += bytes as u64;
        }
    }
}

#[cfg(test)]
mod steering_tests {
    use super::*;
    use std::collections::{BTreeSet, HashMap};

    /// A VXLAN datagram carrying a TCP segment from `src` to `dst`.
    fn datagram(src: SocketAddr, dst: SocketAddr, seq: u8) -> Vec<u8> {
        let mut d = overlay::vxlan::header(Vni::new(42).unwrap()).to_vec();
        d.extend_from_slice(&[2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1]);
        let transport = |d: &mut Vec<u8>| {
            d.extend_from_slice(&src.port().to_be_bytes());
            d.extend_from_slice(&dst.port().to_be_bytes());
            d.extend_from_slice(&[0, 0, 0, seq, 0, 0, 0, 0, 0x50, 0x10, 0xff, 0xff, 0, 0, 0, 0]);
        };
        match (src.ip(), dst.ip()) {
            (IpAddr::V4(s), IpAddr::V4(t)) => {
                d.extend_from_slice(&[0x08, 0x00, 0x45, 0, 0, 40, 0, 0, 0x40, 0, 64, 6, 0, 0]);
                d.extend_from_slice(&s.octets());
                d.extend_from_slice(&t.octets());
            }
            (IpAddr::V6(s), IpAddr::V6(t)) => {
                d.extend_from_slice(&[0x86, 0xdd, 0x60, 0, 0, 0, 0, 20, 6, 64]);
                d.extend_from_slice(&s.octets());
                d.extend_from_slice(&t.octets());
            }
            _ => unreachable!(),
        }
        transport(&mut d);
        d
    }

    /// Which of `socks` got each datagram, by the datagram's bytes, until
    /// `got` holds `want` of them (or 5 s pass).
    fn receive(socks: &[std::net::UdpSocket], got: &mut HashMap<Vec<u8>, usize>, want: usize) {
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut buf = [0u8; 2048];
        while got.len() < want && Instant::now() < deadline {
            for (i, s) in socks.iter().enumerate() {
                while let Ok(n) = s.recv(&mut buf) {
                    got.insert(buf[..n].to_vec(), i);
                }
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// The kernel runs the program: every datagram of a flow reaches one
    /// socket, the same for both directions of the flow; flows spread over
    /// the sockets; what is not IP goes to the first.
    #[test]
    fn the_kernel_steers_each_flow_to_one_socket() {
        let socks = bind_tunnel("127.0.0.1:0".parse().unwrap(), 2).unwrap();
        assert_eq!(socks.len(), 2);
        let port = socks[0].local_addr().unwrap().port();
        assert_eq!(socks[1].local_addr().unwrap().port(), port);
        for s in &socks {
            s.set_nonblocking(true).unwrap();
        }
        // Another socket of this user joining the group later gets nothing.
        let intruder = {
            use socket2::{Domain, Protocol, Socket, Type};
            let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).unwrap();
            s.set_reuse_port(true).unwrap();
            s.bind(&socks[0].local_addr().unwrap().into()).unwrap();
            s.set_nonblocking(true).unwrap();
            std::net::UdpSocket::from(s)
        };
        let sender = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let to = ("127.0.0.1", port);
        let mut flows: Vec<(SocketAddr, SocketAddr)> = Vec::new();
        for p in 0..32u16 {
            // Ports of one parity, as Linux's connect() picks them.
            let a: SocketAddr = format!("10.0.0.2:{}", 40000 + 2 * p).parse().unwrap();
            let b: SocketAddr = "10.0.0.3:5201".parse().unwrap();
            flows.push((a, b));
            let a6: SocketAddr = format!("[fd00::2]:{}", 40000 + 2 * p).parse().unwrap();
            flows.push((a6, "[fd00::3]:5201".parse().unwrap()));
        }
        let (mut sent, mut got) = (0, HashMap::new());
        for &(a, b) in &flows {
            for seq in 0..3 {
                sender.send_to(&datagram(a, b, seq), to).unwrap();
                sender.send_to(&datagram(b, a, seq), to).unwrap();
                sent += 2;
            }
            // Read as it goes: the sockets' buffers are small.
            receive(&socks, &mut got, sent);
        }
        let arp = {
            let mut d = overlay::vxlan::header(Vni::new(42).unwrap()).to_vec();
            d.extend_from_slice(&[0xff; 6]);
            d.extend_from_slice(&[2, 0, 0, 0, 0, 2, 0x08, 0x06]);
            d.extend_from_slice(&[0u8; 28]);
            d
        };
        sender.send_to(&arp, to).unwrap();
        receive(&socks, &mut got, sent + 1);
        assert_eq!(got.len(), sent + 1, "datagrams lost on loopback");
        assert_eq!(got[&arp], 0, "not IP: the first socket");
        let mut used = BTreeSet::new();
        for &(a, b) in &flows {
            let mut at = BTreeSet::new();
            for seq in 0..3 {
                at.insert(got[&datagram(a, b, seq)]);
                at.insert(got[&datagram(b, a, seq)]);
            }
            assert_eq!(at.len(), 1, "{a} <-> {b} went to sockets {at:?}");
            used.extend(at);
        }
        assert_eq!(used.len(), 2, "64 flows all on one socket");
        assert!(
            intruder.recv(&mut [0u8; 2048]).is_err(),
            "a stranger's socket got one"
        );
    }

    #[test]
    fn a_port_in_use_is_refused() {
        let holder = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = holder.local_addr().unwrap();
        assert!(bind_tunnel(addr, 2).is_err());
    }
}
