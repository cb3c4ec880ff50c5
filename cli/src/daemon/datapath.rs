//! The datapath thread: owns the [`Bridge`], every network's [`Gateway`]
//! and every TAP file descriptor, and moves frames between them.
//!
//! One thread, one `mio` poll, no locks: the control plane talks to it
//! through a channel and a waker. Each wake-up reads a bounded batch of
//! frames per port into one buffer allocated at start, asks the bridge what
//! to do with each, and writes them out; counters are kept locally and read
//! by the control plane through [`Command::Stats`].

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mio::net::UdpSocket;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};
use switch::bridge::{Action, Bridge, BridgeConfig, PortSecurity};
use switch::gateway::{Gateway, GatewayConfig};
use switch::tap::Tap;
use switch::{NetworkId, PortId};

/// Frames read from one port per wake-up before the others get a turn.
const BATCH: usize = 64;
/// Largest frame: a TAP without offloads hands us at most MTU + 14, but
/// allow jumbo MTUs and, later, 64 KiB super-frames.
const FRAME_BUF: usize = 65_536 + 64;

const WAKER: Token = Token(usize::MAX);
const UPSTREAM_V4: usize = 1 << 40;
const UPSTREAM_V6: usize = 1 << 41;

/// What the control plane asks of the datapath.
pub enum Command {
    /// Adds a bridge domain and, for networks with a gateway, its gateway
    /// port.
    AddNetwork {
        network: NetworkId,
        gateway: Option<(PortId, GatewayConfig)>,
        reply: mpsc::Sender<Result<(), String>>,
    },
    /// Removes a network (its ports must be gone already).
    RemoveNetwork {
        network: NetworkId,
        reply: mpsc::Sender<()>,
    },
    /// Attaches a TAP as a port of a network.
    AddPort {
        port: PortId,
        network: NetworkId,
        tap: Tap,
        security: PortSecurity,
        reply: mpsc::Sender<Result<(), String>>,
    },
    /// Detaches a port and hands its TAP back (to be deleted or kept).
    RemovePort {
        port: PortId,
        reply: mpsc::Sender<Option<Tap>>,
    },
    /// Reads the counters.
    Stats { reply: mpsc::Sender<DatapathStats> },
    /// Ends the thread; TAPs are closed (persistent ones stay in their
    /// namespaces).
    Shutdown,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = match self {
            Command::AddNetwork { .. } => "AddNetwork",
            Command::RemoveNetwork { .. } => "RemoveNetwork",
            Command::AddPort { .. } => "AddPort",
            Command::RemovePort { .. } => "RemovePort",
            Command::Stats { .. } => "Stats",
            Command::Shutdown => "Shutdown",
        };
        f.write_str(name)
    }
}

/// Counters of one port.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PortCounters {
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
    pub tx_drops: u64,
    pub drops: u64,
}

/// Everything [`Command::Stats`] returns.
#[derive(Debug, Clone, Default)]
pub struct DatapathStats {
    pub ports: HashMap<PortId, PortCounters>,
    pub drops: BTreeMap<String, u64>,
}

/// The control plane's end.
#[derive(Debug)]
pub struct DatapathHandle {
    tx: mpsc::Sender<Command>,
    waker: Arc<Waker>,
    thread: Option<JoinHandle<()>>,
}

impl DatapathHandle {
    /// Starts the datapath thread.
    pub fn start(config: BridgeConfig) -> io::Result<DatapathHandle> {
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let (tx, rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("vswitch-datapath".into())
            .spawn(move || {
                let mut dp = Datapath::new(poll, rx, config);
                if let Err(e) = dp.run() {
                    tracing::error!(error = %e, "datapath stopped");
                }
            })?;
        Ok(DatapathHandle {
            tx,
            waker,
            thread: Some(thread),
        })
    }

    fn send(&self, cmd: Command) -> Result<(), String> {
        self.tx
            .send(cmd)
            .map_err(|_| "the datapath thread has stopped".to_string())?;
        self.waker
            .wake()
            .map_err(|e| format!("waking the datapath: {e}"))
    }

    fn ask<T>(&self, make: impl FnOnce(mpsc::Sender<T>) -> Command) -> Result<T, String> {
        let (reply, rx) = mpsc::channel();
        self.send(make(reply))?;
        rx.recv_timeout(Duration::from_secs(10))
            .map_err(|_| "the datapath did not answer".to_string())
    }

    pub fn add_network(
        &self,
        network: NetworkId,
        gateway: Option<(PortId, GatewayConfig)>,
    ) -> Result<(), String> {
        self.ask(|reply| Command::AddNetwork {
            network,
            gateway,
            reply,
        })?
    }

    pub fn remove_network(&self, network: NetworkId) -> Result<(), String> {
        self.ask(|reply| Command::RemoveNetwork { network, reply })
    }

    pub fn add_port(
        &self,
        port: PortId,
        network: NetworkId,
        tap: Tap,
        security: PortSecurity,
    ) -> Result<(), String> {
        self.ask(|reply| Command::AddPort {
            port,
            network,
            tap,
            security,
            reply,
        })?
    }

    pub fn remove_port(&self, port: PortId) -> Result<Option<Tap>, String> {
        self.ask(|reply| Command::RemovePort { port, reply })
    }

    pub fn stats(&self) -> Result<DatapathStats, String> {
        self.ask(|reply| Command::Stats { reply })
    }

    /// Stops the thread and waits for it.
    pub fn shutdown(&mut self) {
        let _ = self.send(Command::Shutdown);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for DatapathHandle {
    fn drop(&mut self) {
        self.shutdown();
    }
}

struct TapPort {
    tap: Tap,
    counters: PortCounters,
}

struct GatewayPort {
    gateway: Gateway,
    upstream4: Option<UdpSocket>,
    upstream6: Option<UdpSocket>,
    counters: PortCounters,
}

enum Slot {
    Tap(TapPort),
    Gateway(Box<GatewayPort>),
}

struct Datapath {
    poll: Poll,
    rx: mpsc::Receiver<Command>,
    bridge: Bridge,
    ports: HashMap<PortId, Slot>,
    /// Gateway port of each network.
    gateways: HashMap<NetworkId, PortId>,
    /// Ports with frames possibly left to read (edge-triggered polling).
    ready: VecDeque<PortId>,
    /// Gateways that were handed frames and may have output.
    dirty: Vec<PortId>,
    buf: Box<[u8]>,
    out: Box<[u8]>,
    running: bool,
}

fn upstream_token(network: NetworkId, v6: bool) -> Token {
    Token(if v6 { UPSTREAM_V6 } else { UPSTREAM_V4 } | network.0 as usize)
}

fn bind_upstream(registry: &mio::Registry, network: NetworkId, v6: bool) -> io::Result<UdpSocket> {
    let addr: SocketAddr = if v6 {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    };
    let mut sock = UdpSocket::bind(addr)?;
    registry.register(&mut sock, upstream_token(network, v6), Interest::READABLE)?;
    Ok(sock)
}

impl Datapath {
    fn new(poll: Poll, rx: mpsc::Receiver<Command>, config: BridgeConfig) -> Datapath {
        Datapath {
            poll,
            rx,
            bridge: Bridge::new(config),
            ports: HashMap::new(),
            gateways: HashMap::new(),
            ready: VecDeque::new(),
            dirty: Vec::new(),
            buf: vec![0u8; FRAME_BUF].into_boxed_slice(),
            out: vec![0u8; FRAME_BUF].into_boxed_slice(),
            running: true,
        }
    }

    fn run(&mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(256);
        while self.running {
            let now = Instant::now();
            let timeout = if self.ready.is_empty() && self.dirty.is_empty() {
                self.next_deadline(now)
                    .map(|d| d.saturating_duration_since(now))
                    .unwrap_or(Duration::from_secs(1))
                    .min(Duration::from_secs(1))
            } else {
                Duration::ZERO
            };
            match self.poll.poll(&mut events, Some(timeout)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            let now = Instant::now();
            for ev in events.iter() {
                let t = ev.token();
                if t == WAKER {
                    continue;
                } else if t.0 & (UPSTREAM_V4 | UPSTREAM_V6) != 0 {
                    let network = NetworkId((t.0 & 0xffff_ffff) as u32);
                    self.read_upstream(network, t.0 & UPSTREAM_V6 != 0, now);
                } else {
                    let port = PortId(t.0 as u32);
                    if !self.ready.contains(&port) {
                        self.ready.push_back(port);
                    }
                }
            }
            self.drain_commands();
            self.service_ready(now);
            self.service_gateways(now);
            self.bridge.handle_timeout(now);
        }
        Ok(())
    }

    fn next_deadline(&mut self, now: Instant) -> Option<Instant> {
        let mut next = self.bridge.poll_timeout();
        for slot in self.ports.values_mut() {
            if let Slot::Gateway(g) = slot {
                if let Some(t) = g.gateway.poll_timeout(now) {
                    next = Some(next.map_or(t, |n| n.min(t)));
                }
            }
        }
        next
    }

    fn drain_commands(&mut self) {
        while let Ok(cmd) = self.rx.try_recv() {
            self.handle_command(cmd);
        }
    }

    fn handle_command(&mut self, cmd: Command) {
        match cmd {
            Command::AddNetwork {
                network,
                gateway,
                reply,
            } => {
                let r = self.add_network(network, gateway);
                let _ = reply.send(r);
            }
            Command::RemoveNetwork { network, reply } => {
                for port in self.bridge.remove_network(network) {
                    self.remove_port(port);
                }
                if let Some(gw) = self.gateways.remove(&network) {
                    self.remove_port(gw);
                }
                let _ = reply.send(());
            }
            Command::AddPort {
                port,
                network,
                tap,
                security,
                reply,
            } => {
                let r = self.add_port(port, network, tap, security);
                let _ = reply.send(r);
            }
            Command::RemovePort { port, reply } => {
                self.bridge.remove_port(port);
                let tap = match self.remove_port(port) {
                    Some(Slot::Tap(t)) => Some(t.tap),
                    _ => None,
                };
                let _ = reply.send(tap);
            }
            Command::Stats { reply } => {
                let _ = reply.send(self.stats());
            }
            Command::Shutdown => self.running = false,
        }
    }

    fn add_network(
        &mut self,
        network: NetworkId,
        gateway: Option<(PortId, GatewayConfig)>,
    ) -> Result<(), String> {
        self.bridge
            .add_network(network)
            .map_err(|e| e.to_string())?;
        if let Some((port, config)) = gateway {
            let needs_v4 = config.upstreams.iter().any(|u| u.is_ipv4());
            let needs_v6 = config.upstreams.iter().any(|u| u.is_ipv6());
            let mac = config.mac;
            let registry = self.poll.registry();
            let upstream4 = if needs_v4 {
                Some(bind_upstream(registry, network, false).map_err(|e| e.to_string())?)
            } else {
                None
            };
            let upstream6 = if needs_v6 {
                match bind_upstream(registry, network, true) {
                    Ok(s) => Some(s),
                    Err(e) => {
                        tracing::warn!(error = %e, "no IPv6 socket for upstream DNS");
                        None
                    }
                }
            } else {
                None
            };
            let gateway = Gateway::new(config, Instant::now()).map_err(|e| e.to_string())?;
            self.bridge
                .add_port(port, network, None)
                .map_err(|e| e.to_string())?;
            self.bridge
                .set_static_mac(network, mac, port)
                .map_err(|e| e.to_string())?;
            self.ports.insert(
                port,
                Slot::Gateway(Box::new(GatewayPort {
                    gateway,
                    upstream4,
                    upstream6,
                    counters: PortCounters::default(),
                })),
            );
            self.gateways.insert(network, port);
        }
        Ok(())
    }

    fn add_port(
        &mut self,
        port: PortId,
        network: NetworkId,
        tap: Tap,
        security: PortSecurity,
    ) -> Result<(), String> {
        let mac = security.mac;
        self.bridge
            .add_port(port, network, Some(security))
            .map_err(|e| e.to_string())?;
        if let Err(e) = self.bridge.set_static_mac(network, mac, port) {
            self.bridge.remove_port(port);
            return Err(e.to_string());
        }
        let fd = tap.as_raw_fd();
        if let Err(e) = self.poll.registry().register(
            &mut SourceFd(&fd),
            Token(port.0 as usize),
            Interest::READABLE,
        ) {
            self.bridge.remove_port(port);
            return Err(format!("registering TAP {}: {e}", tap.name()));
        }
        self.ports.insert(
            port,
            Slot::Tap(TapPort {
                tap,
                counters: PortCounters::default(),
            }),
        );
        // Frames may have queued before registration.
        self.ready.push_back(port);
        Ok(())
    }

    fn remove_port(&mut self, port: PortId) -> Option<Slot> {
        let mut slot = self.ports.remove(&port)?;
        match &mut slot {
            Slot::Tap(t) => {
                let fd = t.tap.as_raw_fd();
                let _ = self.poll.registry().deregister(&mut SourceFd(&fd));
            }
            Slot::Gateway(g) => {
                for s in [&mut g.upstream4, &mut g.upstream6].into_iter().flatten() {
                    let _ = self.poll.registry().deregister(s);
                }
            }
        }
        self.ready.retain(|p| *p != port);
        self.dirty.retain(|p| *p != port);
        Some(slot)
    }

    fn stats(&self) -> DatapathStats {
        let mut ports = HashMap::new();
        for (id, slot) in &self.ports {
            let mut c = match slot {
                Slot::Tap(t) => t.counters,
                Slot::Gateway(g) => g.counters,
            };
            c.drops = self.bridge.port_drops(*id);
            ports.insert(*id, c);
        }
        DatapathStats {
            ports,
            drops: self
                .bridge
                .drops()
                .iter()
                .map(|(r, n)| (r.to_string(), n))
                .collect(),
        }
    }

    /// Reads a bounded batch from each ready port.
    fn service_ready(&mut self, now: Instant) {
        let rounds = self.ready.len();
        for _ in 0..rounds {
            let Some(port) = self.ready.pop_front() else {
                break;
            };
            let mut more = false;
            for _ in 0..BATCH {
                let n = match self.ports.get(&port) {
                    Some(Slot::Tap(t)) => match t.tap.read(&mut self.buf) {
                        Ok(n) => n,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(e) => {
                            tracing::debug!(port = port.0, error = %e, "TAP read failed");
                            break;
                        }
                    },
                    _ => break,
                };
                more = true;
                if let Some(Slot::Tap(t)) = self.ports.get_mut(&port) {
                    t.counters.rx_packets += 1;
                    t.counters.rx_bytes += n as u64;
                }
                self.switch_frame(port, n, now, false);
            }
            if more {
                // The batch may have ended before the queue did.
                self.ready.push_back(port);
            }
        }
    }

    /// Decides and delivers the frame in `self.buf[..len]` (or
    /// `self.out[..len]` when `from_out`) that arrived on `ingress`.
    fn switch_frame(&mut self, ingress: PortId, len: usize, now: Instant, from_out: bool) {
        let Datapath {
            bridge,
            ports,
            dirty,
            buf,
            out,
            ..
        } = self;
        let frame = if from_out { &out[..len] } else { &buf[..len] };
        match bridge.process(ingress, frame, now) {
            Action::Forward(p) => deliver(ports, dirty, p, frame, now),
            Action::Flood { network, except } => {
                for &p in bridge.ports(network) {
                    if p != except {
                        deliver(ports, dirty, p, frame, now);
                    }
                }
            }
            Action::Drop(reason) => {
                tracing::trace!(port = ingress.0, reason = reason.as_str(), "drop");
            }
        }
    }

    /// Lets gateways run: answers they produced go into the bridge, queries
    /// for upstream resolvers go out of their sockets.
    fn service_gateways(&mut self, now: Instant) {
        // Timers: a gateway whose deadline passed gets its turn too.
        for (port, slot) in self.ports.iter_mut() {
            if let Slot::Gateway(g) = slot {
                if g.gateway.poll_timeout(now).is_some_and(|t| t <= now) {
                    g.gateway.handle_timeout(now);
                    if !self.dirty.contains(port) {
                        self.dirty.push(*port);
                    }
                }
            }
        }
        let todo = std::mem::take(&mut self.dirty);
        for port in todo {
            // Bounded: a gateway emits at most this many frames per wake-up;
            // if it has more it stays dirty for the next round.
            let mut emitted = 0;
            while emitted < 4 * BATCH {
                let n = match self.ports.get_mut(&port) {
                    Some(Slot::Gateway(g)) => match g.gateway.poll_transmit(now, &mut self.out) {
                        Some(n) => {
                            g.counters.rx_packets += 1;
                            g.counters.rx_bytes += n as u64;
                            n
                        }
                        None => break,
                    },
                    _ => break,
                };
                emitted += 1;
                self.switch_frame(port, n, now, true);
            }
            if emitted == 4 * BATCH && !self.dirty.contains(&port) {
                self.dirty.push(port);
            }
            if let Some(Slot::Gateway(g)) = self.ports.get_mut(&port) {
                while let Some((to, n)) = g.gateway.poll_upstream(&mut self.out) {
                    let sock = if to.is_ipv6() {
                        g.upstream6.as_ref()
                    } else {
                        g.upstream4.as_ref()
                    };
                    match sock.map(|s| s.send_to(&self.out[..n], to)) {
                        Some(Ok(_)) => {}
                        Some(Err(e)) => tracing::debug!(%to, error = %e, "upstream DNS send"),
                        None => tracing::debug!(%to, "no socket for upstream DNS"),
                    }
                }
            }
        }
    }

    fn read_upstream(&mut self, network: NetworkId, v6: bool, now: Instant) {
        let Some(&port) = self.gateways.get(&network) else {
            return;
        };
        let Some(Slot::Gateway(g)) = self.ports.get_mut(&port) else {
            return;
        };
        let sock = if v6 { &g.upstream6 } else { &g.upstream4 };
        let Some(sock) = sock else { return };
        for _ in 0..BATCH {
            match sock.recv_from(&mut self.buf) {
                Ok((n, from)) => g.gateway.handle_upstream(from, &self.buf[..n], now),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    tracing::debug!(error = %e, "upstream DNS receive");
                    break;
                }
            }
        }
        if !self.dirty.contains(&port) {
            self.dirty.push(port);
        }
    }
}

fn deliver(
    ports: &mut HashMap<PortId, Slot>,
    dirty: &mut Vec<PortId>,
    to: PortId,
    frame: &[u8],
    now: Instant,
) {
    match ports.get_mut(&to) {
        Some(Slot::Tap(t)) => match t.tap.write(frame) {
            Ok(_) => {
                t.counters.tx_packets += 1;
                t.counters.tx_bytes += frame.len() as u64;
            }
            Err(_) => t.counters.tx_drops += 1,
        },
        Some(Slot::Gateway(g)) => {
            g.counters.tx_packets += 1;
            g.counters.tx_bytes += frame.len() as u64;
            g.gateway.handle_frame(frame, now);
            if !dirty.contains(&to) {
                dirty.push(to);
            }
        }
        None => {}
    }
}
