//! The hot path allocates nothing: two datapaths joined by a tunnel on
//! loopback move plain frames and super-frames between real TAPs (local
//! TAP to TAP, and TAP to tunnel to TAP with GSO and GRO) while a counting
//! allocator watches the thread that runs them.
use super::*;
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::net::UdpSocket as StdUdpSocket;
use std::process::Command as Cmd;
use switch::tap::TapOptions;

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    static ALLOCS: Cell<u64> = const { Cell::new(0) };
}

/// The system allocator, counting the calls made by a thread while its
/// `COUNTING` flag is set.
struct Counting;

fn note() {
    let _ = COUNTING.try_with(|c| {
        if c.get() {
            ALLOCS.with(|a| a.set(a.get() + 1));
        }
    });
}

// SAFETY: every method forwards to `System` with the caller's arguments
// unchanged, so `System`'s guarantees hold; `note` touches only const
// thread-locals of `Cell` type, which neither allocate nor have
// destructors.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note();
        // SAFETY: forwarded as received (see above).
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note();
        // SAFETY: forwarded as received (see above).
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note();
        // SAFETY: forwarded as received (see above).
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded as received (see above).
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

fn ip(args: &[&str]) {
    let o = Cmd::new("ip").args(args).output().expect("ip");
    assert!(
        o.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

fn tap(name: &str, mac: &str) -> (Tap, u32) {
    let opts = TapOptions {
        vnet_hdr: true,
        ..TapOptions::default()
    };
    let t = Tap::open(name, &opts).unwrap();
    let offloads = t.enable_offloads().unwrap();
    ip(&["link", "set", name, "address", mac]);
    ip(&["link", "set", name, "up"]);
    (t, offloads)
}

fn tunnel() -> (Tunnel, SocketAddr) {
    let sock = StdUdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_nonblocking(true).unwrap();
    let addr = sock.local_addr().unwrap();
    (Tunnel::new(UdpSocket::from_std(sock)).unwrap(), addr)
}

fn datapath(tunnel: Tunnel) -> (Datapath, mpsc::Sender<Command>) {
    let poll = Poll::new().unwrap();
    let (tx, rx) = mpsc::channel();
    let mut tunnel = tunnel;
    poll.registry()
        .register(&mut tunnel.sock, TUNNEL, Interest::READABLE)
        .unwrap();
    (
        Datapath::new(poll, rx, BridgeConfig::default(), Some(tunnel)),
        tx,
    )
}

fn security(mac: MacAddr, ip: Option<Ipv4Addr>) -> PortSecurity {
    PortSecurity {
        mac,
        ipv4: ip.into_iter().collect(),
        ipv6: Vec::new(),
    }
}

fn tx_of(dp: &Datapath, port: PortId) -> PortCounters {
    match dp.ports.get(&port) {
        Some(Slot::Tap(t)) => t.counters,
        _ => panic!("no TAP port {port:?}"),
    }
}

#[test]
fn the_hot_path_does_not_allocate() {
    if !is_root() {
        eprintln!("skipping: needs root for TAP devices in a private namespace");
        return;
    }
    std::thread::spawn(run_in_private_netns).join().unwrap();
}

fn run_in_private_netns() {
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
    ip(&["link", "set", "lo", "up"]);
    let (mac_a, mac_b, mac_c) = (
        MacAddr([2, 0, 0, 0, 0, 0x0a]),
        MacAddr([2, 0, 0, 0, 0, 0x0b]),
        MacAddr([2, 0, 0, 0, 0, 0x0c]),
    );
    let (tap_a, offloads) = tap("vsa", "02:00:00:00:00:0a");
    let (tap_b, _) = tap("vsb", "02:00:00:00:00:0b");
    let (tap_c, _) = tap("vsc", "02:00:00:00:00:0c");
    ip(&["addr", "add", "10.77.0.1/24", "dev", "vsa"]);
    for (peer, mac) in [
        ("10.77.0.2", "02:00:00:00:00:0b"),
        ("10.77.0.3", "02:00:00:00:00:0c"),
    ] {
        ip(&[
            "neigh",
            "replace",
            peer,
            "lladdr",
            mac,
            "dev",
            "vsa",
            "nud",
            "permanent",
        ]);
    }
    let net = NetworkId(1);
    let vni = Vni::new(4242).unwrap();
    let (t1, addr1) = tunnel();
    let (t2, addr2) = tunnel();
    let (mut dp1, _tx1) = datapath(t1);
    let (mut dp2, _tx2) = datapath(t2);
    // Host 1: a and b local, c behind the tunnel.
    dp1.add_network(net, None, None).unwrap();
    dp1.add_port(
        PortId(1),
        net,
        tap_a,
        true,
        security(mac_a, Some(Ipv4Addr::new(10, 77, 0, 1))),
    )
    .unwrap();
    dp1.add_port(PortId(2), net, tap_b, true, security(mac_b, None))
        .unwrap();
    let (reply, _r) = mpsc::channel();
    dp1.handle_command(Command::AddVtep {
        port: PortId(3),
        vtep: Vtep {
            network: net,
            remote: addr2,
            kind: VtepKind::Member,
            transport: Transport::Udp,
            partial_csum: true,
        },
        reply,
    });
    dp1.handle_command(Command::AddRemote {
        network: net,
        port: PortId(3),
        mac: mac_c,
        ips: Vec::new(),
    });
    dp1.handle_command(Command::SetVni {
        network: net,
        vni: Some(vni),
    });
    // Host 2: c local, host 1 behind the tunnel.
    dp2.add_network(net, None, None).unwrap();
    dp2.add_port(PortId(1), net, tap_c, true, security(mac_c, None))
        .unwrap();
    let (reply, _r) = mpsc::channel();
    dp2.handle_command(Command::AddVtep {
        port: PortId(2),
        vtep: Vtep {
            network: net,
            remote: addr1,
            kind: VtepKind::Member,
            transport: Transport::Udp,
            partial_csum: true,
        },
        reply,
    });
    dp2.handle_command(Command::SetVni {
        network: net,
        vni: Some(vni),
    });

    let plain = StdUdpSocket::bind("10.77.0.1:0").unwrap();
    // UDP GSO: one send of 12,000 bytes leaves as ten 1200-byte
    // datagrams, handed to the TAP as one super-frame where the kernel
    // has USO.
    let gso = StdUdpSocket::bind("10.77.0.1:0").unwrap();
    nix::sys::socket::setsockopt(&gso, nix::sys::socket::sockopt::UdpGsoSegment, &1200).unwrap();
    let small = [7u8; 1000];
    let big = vec![9u8; 12_000];
    let mut events1 = Events::with_capacity(256);
    let mut events2 = Events::with_capacity(256);
    let (mut spin1, mut spin2) = (Instant::now(), Instant::now());

    // Socket addresses, not strings: resolving a string allocates.
    let targets: [SocketAddr; 2] = [
        "10.77.0.2:9".parse().unwrap(),
        "10.77.0.3:9".parse().unwrap(),
    ];
    let mut round = |dp1: &mut Datapath, dp2: &mut Datapath| {
        for to in targets {
            plain.send_to(&small, to).unwrap();
            gso.send_to(&big, to).unwrap();
        }
        let (b0, c0) = (tx_of(dp1, PortId(2)), tx_of(dp2, PortId(1)));
        let deadline = Instant::now() + Duration::from_secs(5);
        // b gets both sends; c gets the small one and ten segments.
        while Instant::now() < deadline {
            dp1.turn(&mut events1, &mut spin1).unwrap();
            dp2.turn(&mut events2, &mut spin2).unwrap();
            let (b, c) = (tx_of(dp1, PortId(2)), tx_of(dp2, PortId(1)));
            if b.tx_bytes - b0.tx_bytes >= 13_000 && c.tx_bytes - c0.tx_bytes >= 13_000 {
                return;
            }
        }
        panic!("frames did not arrive");
    };
    // Warm-up: queues and tables reach their working size.
    for _ in 0..20 {
        round(&mut dp1, &mut dp2);
    }
    let (b0, c0) = (tx_of(&dp1, PortId(2)), tx_of(&dp2, PortId(1)));
    COUNTING.with(|c| c.set(true));
    for _ in 0..200 {
        round(&mut dp1, &mut dp2);
    }
    COUNTING.with(|c| c.set(false));
    let allocs = ALLOCS.with(Cell::get);
    let (b, c) = (tx_of(&dp1, PortId(2)), tx_of(&dp2, PortId(1)));
    eprintln!(
        "200 rounds: {allocs} allocations; b got {} frames / {} bytes, c {} frames, \
         tunnel {} datagrams; TAP offloads {offloads:#x}",
        b.tx_packets - b0.tx_packets,
        b.tx_bytes - b0.tx_bytes,
        c.tx_packets - c0.tx_packets,
        dp1.tunnel_counters.tx_packets,
    );
    assert_eq!(allocs, 0, "allocations on the hot path");
    assert!(b.tx_bytes - b0.tx_bytes >= 200 * 13_000);
    assert!(c.tx_bytes - c0.tx_bytes >= 200 * 13_000);
    assert!(
        dp1.tunnel_counters.tx_packets >= 220 * 11,
        "{:?}",
        dp1.tunnel_counters
    );
    if offloads & switch::tap::offload::USO4 != 0 {
        // The 12,000-byte sends crossed from a to b as super-frames.
        let frames = b.tx_packets - b0.tx_packets;
        assert!(frames <= 200 * 2 + 10, "{frames} frames written to b");
    }
}

/// Allocations `f` makes on this thread.
fn allocations(f: impl FnOnce()) -> u64 {
    let before = ALLOCS.with(Cell::get);
    COUNTING.with(|c| c.set(true));
    f();
    COUNTING.with(|c| c.set(false));
    ALLOCS.with(Cell::get) - before
}

/// The datagrams a worker hands to QUIC come from its arena: once quinn
/// has dropped what it was given the same memory serves again, nothing
/// allocated per datagram or per super-frame; while quinn holds datagrams,
/// one buffer per `DatagramArena::CHUNK` bytes (before, every datagram of
/// a plain frame and every super-frame was an allocation of its own).
#[test]
fn quic_datagrams_come_from_a_reused_buffer() {
    let mut arena = DatagramArena::default();
    let (header, frame) = ([8u8; 8], [0x5au8; 1442]);
    let first = arena.take(&[&header, &frame]);
    assert_eq!(first.len(), 1450);
    assert_eq!(
        (&first[..8], first[8], first[1449]),
        (&header[..], 0x5a, 0x5a)
    );
    drop(first);
    let sent = allocations(|| {
        for _ in 0..10_000 {
            let d = arena.take(&[&header, &frame]);
            assert_eq!(d.len(), 1450);
            drop(d);
            // A super-frame's run of segments, each datagram a slice.
            let run = arena.take(&[&[7u8; 45 * 1450]]);
            let segments: [bytes::Bytes; 2] = [run.slice(..1450), run.slice(1450..2900)];
            drop((run, segments));
        }
    });
    assert_eq!(sent, 0, "allocations with quinn keeping nothing");
    let mut held = Vec::with_capacity(3000);
    let while_held = allocations(|| {
        for _ in 0..3000 {
            held.push(arena.take(&[&header, &frame]));
        }
    });
    // A buffer and its shared header per chunk.
    let bytes = 3000 * 1450;
    assert!(
        while_held <= 2 * (bytes / DatagramArena::CHUNK + 1) as u64,
        "{while_held} allocations for {bytes} bytes held"
    );
    assert!(held.iter().all(|d| d.len() == 1450 && d[8] == 0x5a));
}
