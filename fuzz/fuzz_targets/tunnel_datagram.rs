//! Fuzzes `overlay::TunnelRules` (the tunnel's forwarding rules) with a
//! small table of networks and VTEPs built from the first bytes, then
//! arbitrary datagrams over UDP and QUIC from a few senders, changes to the
//! table, and frames to send. Every decision is checked against a plain
//! model of the rules (linear searches over a list), and:
//!
//! - nothing panics;
//! - a delivered frame is `&datagram[8..]` itself (not a copy) of a
//!   datagram whose VNI maps to the network it is delivered to, from a VTEP
//!   of that network at the sender's (canonical) IP, over its transport;
//!   that VTEP's `last_rx` is now;
//! - every datagram is counted once, as delivered or under its reason, and
//!   egress decisions are not counted;
//! - what `encapsulate` writes is the network's VXLAN header and the frame,
//!   which `vxlan::decapsulate` reads back; a short buffer is an error.
//!
//! Input: 10 bytes of table, then records, each starting with an op byte
//! whose low 2 bits select the operation:
//!
//! | bytes | meaning |
//! | --- | --- |
//! | 0..4 | network `n`'s VNI: bit 7 set, VNI `byte & 0x7f` |
//! | 4..10 | VTEP port `i`: bit 7 set, network bits 0..2, static bit 2, QUIC bit 3, sender bits 4..7 |
//!
//! | op & 3 | operation | then |
//! | --- | --- | --- |
//! | 0 / 1 | a datagram over UDP / QUIC from sender `(op >> 2) & 7` | length byte, bytes |
//! | 2 | a table change, `(op >> 2) & 3`: set VNI of network `(op >> 4) & 3`, remove VTEP, remove network `(op >> 4) & 3`, add VTEP | a byte (VNI, port, -, port), then for add a VTEP byte |
//! | 3 | a frame from origin `(op >> 2) % 3` to port `(op >> 4) & 7` | length byte, bytes |
#![no_main]

use std::net::{IpAddr, SocketAddr};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use overlay::tunnel::canonical_ip;
use overlay::vxlan::{self, Vni, HEADER_LEN};
use overlay::{
    Decap, Encap, EncapError, Origin, Transport, TunnelDrop, TunnelRules, Vtep, VtepKind,
};

const NETWORKS: u8 = 4;
const PORTS: u8 = 8;

/// Senders: some share an IP address in another spelling (IPv4-mapped) or
/// with another UDP port; `::10.0.0.1` (IPv4-compatible) does not.
const SENDERS: [&str; 8] = [
    "10.0.0.1:4789",
    "[::ffff:10.0.0.1]:5000",
    "10.0.0.2:4789",
    "[::ffff:10.0.0.2]:4789",
    "[fd00::3]:4789",
    "[fd00::4]:4789",
    "10.0.0.5:4789",
    "[::10.0.0.1]:4789",
];

fn senders() -> &'static [SocketAddr; 8] {
    static S: OnceLock<[SocketAddr; 8]> = OnceLock::new();
    S.get_or_init(|| SENDERS.map(|s| s.parse().unwrap()))
}

fn vtep_of(byte: u8) -> Vtep<u8> {
    Vtep {
        network: byte & 3,
        remote: senders()[usize::from((byte >> 4) & 7)],
        kind: if byte & 4 != 0 {
            VtepKind::Static
        } else {
            VtepKind::Member
        },
        transport: if byte & 8 != 0 {
            Transport::Quic
        } else {
            Transport::Udp
        },
    }
}

/// The rules, spelled out the slow way.
#[derive(Default)]
struct Model {
    vnis: [Option<Vni>; NETWORKS as usize],
    vteps: Vec<(u8, Vtep<u8>)>,
}

impl Model {
    fn set_vni(&mut self, network: u8, vni: Option<Vni>) {
        self.vnis[usize::from(network)] = None;
        if let Some(vni) = vni {
            for v in &mut self.vnis {
                if *v == Some(vni) {
                    *v = None;
                }
            }
        }
        self.vnis[usize::from(network)] = vni;
    }

    fn network_of(&self, vni: Vni) -> Option<u8> {
        (0..NETWORKS).find(|n| self.vnis[usize::from(*n)] == Some(vni))
    }

    fn at(&self, network: u8, ip: IpAddr) -> Option<(u8, Vtep<u8>)> {
        let ip = canonical_ip(ip);
        self.vteps
            .iter()
            .find(|(_, v)| v.network == network && canonical_ip(v.remote.ip()) == ip)
            .copied()
    }

    fn add_vtep(&mut self, port: u8, vtep: Vtep<u8>) -> bool {
        if self.vteps.iter().any(|(p, _)| *p == port)
            || self.at(vtep.network, vtep.remote.ip()).is_some()
        {
            return false;
        }
        self.vteps.push((port, vtep));
        true
    }

    fn remove_vtep(&mut self, port: u8) -> Option<Vtep<u8>> {
        let i = self.vteps.iter().position(|(p, _)| *p == port)?;
        Some(self.vteps.remove(i).1)
    }

    fn remove_network(&mut self, network: u8) {
        self.vnis[usize::from(network)] = None;
        self.vteps.retain(|(_, v)| v.network != network);
    }

    /// (network, port, coalesce) or why not.
    fn decap(
        &self,
        via: Transport,
        from: SocketAddr,
        datagram: &[u8],
    ) -> Result<(u8, u8, bool), TunnelDrop> {
        let quic = via == Transport::Quic;
        let reject = |udp| {
            if quic {
                TunnelDrop::QuicRejected
            } else {
                udp
            }
        };
        if datagram.len() < HEADER_LEN + vxlan::INNER_MIN_LEN || datagram[0] & vxlan::FLAG_VNI == 0
        {
            return Err(reject(TunnelDrop::Malformed));
        }
        let vni = Vni::from_low_bits(u32::from_be_bytes([
            0,
            datagram[4],
            datagram[5],
            datagram[6],
        ]));
        let network = self.network_of(vni).ok_or(reject(TunnelDrop::UnknownVni))?;
        let (port, vtep) = self
            .at(network, from.ip())
            .ok_or(reject(TunnelDrop::NonMember))?;
        match (via, vtep.transport) {
            (Transport::Udp, Transport::Quic) => Err(TunnelDrop::ClearOnEncrypted),
            (Transport::Quic, Transport::Udp) => Err(TunnelDrop::QuicOnPlain),
            _ => Ok((network, port, vtep.kind == VtepKind::Member)),
        }
    }

    fn encap(&self, origin: Origin, port: u8) -> Result<(Transport, SocketAddr, Vni), TunnelDrop> {
        let (_, vtep) = self
            .vteps
            .iter()
            .find(|(p, _)| *p == port)
            .ok_or(TunnelDrop::NotVtep)?;
        match origin {
            Origin::Local => {}
            Origin::Tunnel => return Err(TunnelDrop::SplitHorizon),
            Origin::Gateway => return Err(TunnelDrop::GatewayLocal),
        }
        let vni = self.vnis[usize::from(vtep.network)].ok_or(TunnelDrop::NoVni)?;
        Ok((vtep.transport, vtep.remote, vni))
    }
}

fn take<'a>(data: &mut &'a [u8], n: usize) -> &'a [u8] {
    let (head, rest) = data.split_at(n.min(data.len()));
    *data = rest;
    head
}

fn take_u8(data: &mut &[u8]) -> u8 {
    take(data, 1).first().copied().unwrap_or(0)
}

fn base() -> Instant {
    static T: OnceLock<Instant> = OnceLock::new();
    *T.get_or_init(Instant::now)
}

fn check_table(rules: &TunnelRules<u8, u8>, model: &Model) {
    for n in 0..NETWORKS {
        assert_eq!(rules.vni(n), model.vnis[usize::from(n)]);
        if let Some(vni) = model.vnis[usize::from(n)] {
            assert_eq!(rules.network_of(vni), Some(n));
        }
    }
    for p in 0..PORTS {
        let want = model.vteps.iter().find(|(q, _)| *q == p).map(|(_, v)| v);
        assert_eq!(rules.vtep(p), want);
        assert_eq!(rules.is_vtep(p), want.is_some());
    }
    assert_eq!(rules.vteps().count(), model.vteps.len());
}

fuzz_target!(|data: &[u8]| {
    let mut data = data;
    let mut rules: TunnelRules<u8, u8> = TunnelRules::new();
    let mut model = Model::default();

    let table = take(&mut data, 10);
    for (n, &b) in table.iter().take(4).enumerate() {
        if b & 0x80 != 0 {
            let vni = Vni::new(u32::from(b & 0x7f));
            rules.set_vni(n as u8, vni);
            model.set_vni(n as u8, vni);
        }
    }
    for (port, &b) in table.iter().skip(4).enumerate() {
        if b & 0x80 != 0 {
            let v = vtep_of(b);
            assert_eq!(
                rules.add_vtep(port as u8, v).is_ok(),
                model.add_vtep(port as u8, v)
            );
        }
    }
    check_table(&rules, &model);

    let mut received = [0u64; Transport::COUNT];
    let mut step = 0u64;
    while !data.is_empty() {
        step += 1;
        let now = base() + Duration::from_millis(step);
        let op = take_u8(&mut data);
        match op & 3 {
            0 | 1 => {
                let via = Transport::ALL[usize::from(op & 1)];
                let from = senders()[usize::from((op >> 2) & 7)];
                let len = usize::from(take_u8(&mut data));
                let datagram = take(&mut data, len);
                let got = rules.decapsulate(via, from, datagram, now);
                received[usize::from(op & 1)] += 1;
                match (got, model.decap(via, from, datagram)) {
                    (
                        Decap::Deliver {
                            network,
                            port,
                            frame,
                            coalesce,
                        },
                        Ok(want),
                    ) => {
                        assert_eq!((network, port, coalesce), want);
                        assert_eq!(frame.as_ptr(), datagram[HEADER_LEN..].as_ptr());
                        assert_eq!(frame.len(), datagram.len() - HEADER_LEN);
                        let (vni, _) = vxlan::decapsulate(datagram).expect("delivered");
                        assert_eq!(rules.network_of(vni), Some(network));
                        let vtep = rules.vtep(port).expect("delivered from a VTEP");
                        assert_eq!(vtep.network, network);
                        assert_eq!(vtep.transport, via);
                        assert_eq!(canonical_ip(vtep.remote.ip()), canonical_ip(from.ip()));
                        assert_eq!(rules.last_rx(port), Some(now));
                    }
                    (Decap::Drop(reason), Err(want)) => assert_eq!(reason, want),
                    (got, want) => panic!("got {got:?}, model says {want:?}"),
                }
            }
            2 => {
                let arg = take_u8(&mut data);
                let network = (op >> 4) & 3;
                match (op >> 2) & 3 {
                    0 => {
                        let vni =
                            (arg & 0x80 != 0).then(|| Vni::from_low_bits(u32::from(arg & 0x7f)));
                        rules.set_vni(network, vni);
                        model.set_vni(network, vni);
                    }
                    1 => assert_eq!(
                        rules.remove_vtep(arg % PORTS),
                        model.remove_vtep(arg % PORTS)
                    ),
                    2 => {
                        rules.remove_network(network);
                        model.remove_network(network);
                    }
                    _ => {
                        let v = vtep_of(take_u8(&mut data));
                        let port = arg % PORTS;
                        assert_eq!(rules.add_vtep(port, v).is_ok(), model.add_vtep(port, v));
                    }
                }
                check_table(&rules, &model);
            }
            _ => {
                let origin =
                    [Origin::Local, Origin::Gateway, Origin::Tunnel][usize::from(op >> 2) % 3];
                let port = (op >> 4) & 7;
                let len = usize::from(take_u8(&mut data));
                let frame = take(&mut data, len);
                let want = model.encap(origin, port);
                match (rules.encap(origin, port), want) {
                    (
                        Encap::Send {
                            transport,
                            remote,
                            header,
                        },
                        Ok((t, r, vni)),
                    ) => {
                        assert_eq!((transport, remote), (t, r));
                        assert_eq!(header, vxlan::header(vni));
                    }
                    (Encap::Drop(reason), Err(w)) => assert_eq!(reason, w),
                    (got, want) => panic!("got {got:?}, model says {want:?}"),
                }
                // Into a buffer sized by the frame's first byte: sometimes
                // too small.
                let mut out = [0u8; 300];
                let size = (HEADER_LEN + frame.len() + 2)
                    .saturating_sub(usize::from(frame.first().copied().unwrap_or(0) % 4));
                let need = HEADER_LEN + frame.len();
                match (
                    rules.encapsulate(origin, port, frame, &mut out[..size]),
                    want,
                ) {
                    (Ok(e), Ok((t, r, vni))) => {
                        assert!(size >= need);
                        assert_eq!((e.transport, e.remote, e.len), (t, r, need));
                        assert_eq!(out[..HEADER_LEN], vxlan::header(vni));
                        assert_eq!(&out[HEADER_LEN..need], frame);
                        if frame.len() >= vxlan::INNER_MIN_LEN {
                            assert_eq!(vxlan::decapsulate(&out[..need]), Ok((vni, frame)));
                        }
                    }
                    (Err(EncapError::BufferTooSmall { need: n, have }), Ok(_)) => {
                        assert_eq!((n, have), (need, size));
                        assert!(size < need);
                    }
                    (Err(EncapError::Drop(reason)), Err(w)) => assert_eq!(reason, w),
                    (got, want) => panic!("got {got:?}, model says {want:?}"),
                }
            }
        }
        let s = rules.stats();
        assert_eq!(s.received, received);
        assert_eq!(
            s.delivered + s.drops.iter().sum::<u64>(),
            received.iter().sum::<u64>()
        );
        for r in [
            TunnelDrop::SplitHorizon,
            TunnelDrop::GatewayLocal,
            TunnelDrop::NoVni,
            TunnelDrop::NotVtep,
        ] {
            assert_eq!(s.dropped(r), 0, "egress is not counted");
        }
    }
});
