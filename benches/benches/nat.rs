//! The userspace NAT core: what a published port or an egress connection
//! costs the daemon, with no sockets (a smoltcp stack plays the container,
//! wired back to back with `switch::nat::Nat` in memory).
//!
//! - `tcp/host_to_container_1MiB`: 1 MiB through a published-port
//!   connection, `Nat::tcp_write` to the container's socket; the container's
//!   stack runs in the loop, so this is NAT plus a smoltcp peer.
//! - `tcp/container_to_host_1MiB`: 1 MiB the other way, read with
//!   `Nat::tcp_peek` + `Nat::tcp_consume` (how the daemon relays).
//! - `tcp/connect_close`: one published-port connection opened, one byte
//!   each way, closed by both sides (connections/s).
//! - `udp/egress_datagram`: a 64-byte datagram from the container on an
//!   existing flow, `handle_frame` to `poll_datagram`.
//! - `udp/reply_datagram`: a 64-byte reply, `udp_reply` to `poll_transmit`.
//!
//! Run: `cargo bench -p vswitch-benches --bench nat`.

use std::collections::VecDeque;
use std::hint::black_box;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::phy::{self, Device, DeviceCapabilities, Medium};
use smoltcp::socket::tcp;
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpAddress, IpCidr};
use switch::dns::Zone;
use switch::gateway::{Gateway, GatewayConfig};
use switch::nat::{ConnId, Nat, NatConfig, NatEvent, NatLimits};
use switch::offload::{self, VnetHdr};
use switch::MacAddr;

const GW_MAC: MacAddr = MacAddr([0x02, 0x42, 0x0a, 0, 0, 1]);
const C_MAC: MacAddr = MacAddr([0x02, 0x42, 0x0a, 0, 0, 2]);
const GW4: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
const C4: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
const MTU: usize = 1500;
const MIB: usize = 1 << 20;
const BUFFER: usize = 256 * 1024;

#[derive(Default)]
struct Wire {
    rx: VecDeque<Vec<u8>>,
    tx: VecDeque<Vec<u8>>,
    free: Vec<Vec<u8>>,
}

struct WireRx(Vec<u8>);
impl phy::RxToken for WireRx {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}
struct WireTx<'a>(&'a mut VecDeque<Vec<u8>>, Vec<u8>);
impl phy::TxToken for WireTx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut buf = self.1;
        buf.clear();
        buf.resize(len, 0);
        let r = f(&mut buf);
        self.0.push_back(buf);
        r
    }
}
impl Device for Wire {
    type RxToken<'a> = WireRx;
    type TxToken<'a> = WireTx<'a>;
    fn receive(
        &mut self,
        _: smoltcp::time::Instant,
    ) -> Option<(Self::RxToken<'_>, Self::TxToken<'_>)> {
        let f = self.rx.pop_front()?;
        let buf = self.free.pop().unwrap_or_default();
        Some((WireRx(f), WireTx(&mut self.tx, buf)))
    }
    fn transmit(&mut self, _: smoltcp::time::Instant) -> Option<Self::TxToken<'_>> {
        let buf = self.free.pop().unwrap_or_default();
        Some(WireTx(&mut self.tx, buf))
    }
    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = MTU + 14;
        caps
    }
}

/// A network with one smoltcp container, the gateway (which answers its
/// ARP) and the NAT, frames classified as the datapath does.
struct Net {
    nat: Nat,
    gw: Gateway,
    iface: Interface,
    wire: Wire,
    sockets: SocketSet<'static>,
    epoch: Instant,
    now: Instant,
    buf: Vec<u8>,
    segs: Vec<u8>,
}

impl Net {
    fn new() -> Net {
        let epoch = Instant::now();
        let limits = NatLimits {
            tcp_buffer: BUFFER,
            ..NatLimits::default()
        };
        let nat = Nat::new(
            NatConfig {
                gateway_mac: GW_MAC,
                ipv4: Some((GW4, 24)),
                ipv6: None,
                mtu: MTU,
                egress: true,
                limits,
                random_seed: 1,
                shard: switch::nat::Shard::WHOLE,
            },
            epoch,
        )
        .unwrap();
        let gw = Gateway::new(
            GatewayConfig {
                mac: GW_MAC,
                ipv4: Some((GW4, 24)),
                ipv6: None,
                mtu: MTU,
                zone: Zone::new([]).into_shared(),
                upstreams: Vec::new(),
                upstream_timeout: Duration::from_secs(2),
                random_seed: 3,
            },
            epoch,
        )
        .unwrap();
        let mut wire = Wire::default();
        let mut cfg = Config::new(HardwareAddress::Ethernet(EthernetAddress(C_MAC.0)));
        cfg.random_seed = 2;
        let mut iface = Interface::new(cfg, &mut wire, smoltcp::time::Instant::ZERO);
        iface.update_ip_addrs(|a| {
            a.push(IpCidr::new(IpAddress::Ipv4(C4), 24)).unwrap();
        });
        iface.routes_mut().add_default_ipv4_route(GW4).unwrap();
        // The gateway asks for the container: it learns the gateway's MAC.
        wire.rx
            .push_back(switch::wire::build_arp_request(GW_MAC, GW4, C4));
        let mut net = Net {
            nat,
            gw,
            iface,
            wire,
            sockets: SocketSet::new(Vec::new()),
            epoch,
            now: epoch,
            buf: vec![0; 65536],
            segs: vec![0; 2 * 65536],
        };
        net.pump();
        net.wire.tx.clear();
        net
    }

    fn smol_now(&self) -> smoltcp::time::Instant {
        smoltcp::time::Instant::from_micros((self.now - self.epoch).as_micros() as i64)
    }

    /// Moves frames both ways until the link is quiet; a little simulated
    /// time passes when it is, so delayed ACKs go out.
    fn pump(&mut self) {
        for _ in 0..1_000_000 {
            let mut moved = false;
            let t = self.smol_now();
            self.iface.poll(t, &mut self.wire, &mut self.sockets);
            while let Some(f) = self.wire.tx.pop_front() {
                moved = true;
                if self.nat.is_for_nat(&f) {
                    self.nat.handle_frame(&VnetHdr::NONE, &f, self.now);
                } else {
                    self.gw.handle_frame(&f, self.now);
                }
                self.wire.free.push(f);
            }
            while let Some(n) = self.gw.poll_transmit(self.now, &mut self.buf) {
                moved = true;
                self.wire.rx.push_back(self.buf[..n].to_vec());
            }
            while let Some((n, hdr)) = self.nat.poll_transmit(self.now, &mut self.buf) {
                moved = true;
                // As the container's kernel does with a TAP write.
                let segs = offload::segment(&hdr, &self.buf[..n], 0, &mut self.segs)
                    .expect("a consistent offload header");
                for i in 0..segs.count {
                    let mut f = self.wire.free.pop().unwrap_or_default();
                    f.clear();
                    f.extend_from_slice(segs.frame(&self.segs, 0, i).expect("a segment"));
                    self.wire.rx.push_back(f);
                }
            }
            if !moved {
                return;
            }
        }
        panic!("never quiet");
    }

    fn tick(&mut self) {
        self.now += Duration::from_millis(20);
        self.nat.handle_timeout(self.now);
        self.gw.handle_timeout(self.now);
        self.pump();
    }

    fn listener(&mut self) -> SocketHandle {
        let mut s = tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0; BUFFER]),
            tcp::SocketBuffer::new(vec![0; BUFFER]),
        );
        s.set_ack_delay(None);
        s.listen(80).unwrap();
        self.sockets.add(s)
    }

    fn tcp(&mut self, h: SocketHandle) -> &mut tcp::Socket<'static> {
        self.sockets.get_mut::<tcp::Socket>(h)
    }

    /// A published-port connection to the container's port 80.
    fn connect(&mut self, client_port: u16) -> (SocketHandle, ConnId) {
        let h = self.listener();
        let id = self
            .nat
            .inbound_tcp(
                SocketAddr::from(([203, 0, 113, 7], client_port)),
                SocketAddr::from((C4, 80)),
                C_MAC,
                self.now,
            )
            .unwrap();
        self.pump();
        assert_eq!(self.tcp(h).state(), tcp::State::Established);
        (h, id)
    }

    fn drain_events(&mut self) {
        while let Some(e) = self.nat.poll_event() {
            black_box(e);
        }
    }
}

fn tcp_benches(c: &mut Criterion) {
    let mut g = c.benchmark_group("tcp");
    g.throughput(Throughput::Bytes(MIB as u64));
    let data = vec![0x5au8; MIB];

    let mut net = Net::new();
    let (h, id) = net.connect(40000);
    let mut sink = vec![0u8; 64 * 1024];
    g.bench_function("host_to_container_1MiB", |b| {
        b.iter(|| {
            let (mut sent, mut got) = (0, 0);
            while got < MIB {
                sent += net.nat.tcp_write(id, &data[sent..], net.now);
                net.pump();
                while let Ok(n) = net.tcp(h).recv_slice(&mut sink) {
                    if n == 0 {
                        break;
                    }
                    got += n;
                }
                net.drain_events();
                if sent == MIB && got < MIB {
                    net.tick();
                }
            }
        })
    });

    g.bench_function("container_to_host_1MiB", |b| {
        b.iter(|| {
            let (mut sent, mut got) = (0, 0);
            while got < MIB {
                sent += net.tcp(h).send_slice(&data[sent..]).unwrap();
                net.pump();
                loop {
                    let n = net.nat.tcp_peek(id).len();
                    if n == 0 {
                        break;
                    }
                    black_box(net.nat.tcp_peek(id));
                    net.nat.tcp_consume(id, n, net.now);
                    got += n;
                }
                net.drain_events();
                if sent == MIB && got < MIB {
                    net.tick();
                }
            }
        })
    });
    g.finish();

    let mut g = c.benchmark_group("tcp");
    g.throughput(Throughput::Elements(1));
    let mut net = Net::new();
    let mut port = 1024u16;
    g.bench_function("connect_close", |b| {
        b.iter(|| {
            port = port.checked_add(1).unwrap_or(1024);
            let (h, id) = net.connect(port);
            net.nat.tcp_write(id, b"q", net.now);
            net.tcp(h).send_slice(b"a").unwrap();
            net.pump();
            let mut one = [0u8; 1];
            assert_eq!(net.nat.tcp_read(id, &mut one, net.now), 1);
            net.nat.tcp_host_closed(id, net.now);
            net.pump();
            net.tcp(h).close();
            net.pump();
            let mut closed = false;
            while let Some(e) = net.nat.poll_event() {
                closed |= matches!(e, NatEvent::TcpClosed { .. });
            }
            assert!(closed);
            net.sockets.remove(h);
        })
    });
    g.finish();
}

/// An Ethernet/IPv4/UDP frame from the container, checksums included.
fn udp_frame(payload: &[u8]) -> Vec<u8> {
    switch::wire::build_ipv4_udp(
        C_MAC,
        GW_MAC,
        std::net::SocketAddrV4::new(C4, 5353),
        std::net::SocketAddrV4::new(Ipv4Addr::new(198, 51, 100, 9), 53),
        payload,
    )
}

fn udp_benches(c: &mut Criterion) {
    let mut g = c.benchmark_group("udp");
    g.throughput(Throughput::Elements(1));
    let now = Instant::now();
    let mut net = Net::new();
    let frame = udp_frame(&[0x42; 64]);
    net.nat.handle_frame(&VnetHdr::NONE, &frame, now);
    let Some(NatEvent::UdpFlowOpened { flow, dst, .. }) = net.nat.poll_event() else {
        panic!("no flow");
    };
    let mut out = vec![0u8; 2048];
    g.bench_function("egress_datagram", |b| {
        b.iter(|| {
            net.nat.handle_frame(&VnetHdr::NONE, black_box(&frame), now);
            black_box(net.nat.poll_datagram(&mut out).unwrap());
        })
    });
    let payload = [0x24u8; 64];
    g.bench_function("reply_datagram", |b| {
        b.iter(|| {
            net.nat.udp_reply(flow, dst, black_box(&payload), now);
            black_box(net.nat.poll_transmit(now, &mut out).unwrap());
        })
    });
    g.finish();
}

criterion_group!(benches, tcp_benches, udp_benches);
criterion_main!(benches);
