//! Host sockets of the userspace NAT: what [`Nat`] asks for through
//! [`NatEvent`]s and [`Datagram`]s, done with non-blocking `mio` sockets
//! registered in the datapath's poll.
//!
//! Each worker's [`NatIo`] serves its shard of every network's [`Nat`].
//! Each host socket gets a token `NAT_SOCK | index`; the datapath hands
//! readiness for those tokens to [`NatIo::ready`] with the socket's
//! network's `Nat`. Work per call is
//! bounded (reads per socket per wake-up, accepts per listener); a socket
//! that stopped at the bound goes on a retry list the datapath services
//! on its next turn without sleeping.
//!
//! Published ports: the controller binds the host sockets itself (so a port
//! in use is refused before anything else is set up) with
//! [`bind_published`] and passes them to the datapath, which registers them
//! here with [`NatIo::add_published`].

use std::collections::{HashMap, VecDeque};
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr};
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream, UdpSocket};
use mio::{Interest, Registry, Token};
use socket2::{Domain, Protocol, SockRef, Socket, Type};
use switch::nat::{ConnId, Datagram, FlowId, ListenerId, Nat, NatEvent, UdpVia};
use switch::{MacAddr, NetworkId, PortId};

/// Token bit of NAT host sockets; the low bits are the socket's index.
pub const NAT_SOCK: usize = 1 << 42;
/// Reads (or accepts) per socket per wake-up before others get a turn.
const READS_PER_TURN: usize = 16;
/// Datagrams sent per network per turn; more wait for the next turn.
const DATAGRAMS_PER_TURN: usize = 256;
/// Host sockets the NAT may hold at once, all networks together (beyond:
/// connects are refused, flows get no socket). The NAT's own tables bound
/// this already; this guards the file-descriptor budget.
const MAX_SOCKETS: usize = 16 * 1024;

/// The protocol of a published port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublishedProto {
    Tcp,
    Udp,
}

/// A bound host socket of a published port.
#[derive(Debug)]
pub enum PublishedSocket {
    Tcp(std::net::TcpListener),
    Udp(std::net::UdpSocket),
}

impl PublishedSocket {
    /// The host port it is bound to.
    pub fn local_port(&self) -> io::Result<u16> {
        Ok(match self {
            PublishedSocket::Tcp(l) => l.local_addr()?.port(),
            PublishedSocket::Udp(u) => u.local_addr()?.port(),
        })
    }
}

/// A published port handed to the datapath: where the host socket forwards
/// to.
#[derive(Debug)]
pub struct Published {
    pub socket: PublishedSocket,
    /// The container's address and port.
    pub container: SocketAddr,
    pub container_mac: MacAddr,
}

/// Binds the host side of a published port: `host_ip` (none: every
/// address, IPv4 and IPv6 on one dual-stack socket, or IPv4 alone where the
/// host has no IPv6) and `port`. Fails with `AddrInUse` when taken.
pub fn bind_published(
    host_ip: Option<IpAddr>,
    port: u16,
    proto: PublishedProto,
) -> io::Result<PublishedSocket> {
    let addr = match host_ip {
        Some(ip) => SocketAddr::new(ip, port),
        None => SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), port),
    };
    match bind_one(addr, host_ip.is_none(), proto) {
        // No IPv6 on this host: every IPv4 address then.
        Err(e) if host_ip.is_none() && e.kind() != io::ErrorKind::AddrInUse => bind_one(
            SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), port),
            false,
            proto,
        ),
        r => r,
    }
}

fn bind_one(addr: SocketAddr, dual: bool, proto: PublishedProto) -> io::Result<PublishedSocket> {
    let ty = match proto {
        PublishedProto::Tcp => Type::STREAM,
        PublishedProto::Udp => Type::DGRAM,
    };
    let sock = Socket::new(Domain::for_address(addr), ty, None)?;
    if dual {
        sock.set_only_v6(false)?;
    }
    if proto == PublishedProto::Tcp {
        sock.set_reuse_address(true)?;
        // Accepted connections inherit it: one syscall fewer each.
        sock.set_tcp_nodelay(true)?;
    }
    sock.set_nonblocking(true)?;
    sock.bind(&addr.into())?;
    Ok(match proto {
        PublishedProto::Tcp => {
            sock.listen(1024)?;
            PublishedSocket::Tcp(sock.into())
        }
        PublishedProto::Udp => PublishedSocket::Udp(sock.into()),
    })
}

/// A published port's connection accepted by one worker for another
/// worker's NAT shard ([`Nat::inbound_tcp_shard`]), on its way there.
pub struct Accepted {
    /// The worker (shard) that takes it.
    pub owner: usize,
    pub network: NetworkId,
    stream: TcpStream,
    client: SocketAddr,
    container: SocketAddr,
    mac: MacAddr,
}

/// One host TCP connection of the NAT.
struct TcpHost {
    id: ConnId,
    stream: TcpStream,
    /// Egress: the connect has not finished.
    connecting: bool,
    /// The host sent FIN (and the NAT was told).
    host_eof: bool,
    /// The container has bytes the host socket could not take yet.
    to_host_blocked: bool,
}

enum Kind {
    Tcp(TcpHost),
    Udp {
        flow: FlowId,
        sock: UdpSocket,
    },
    Icmp {
        flow: FlowId,
        sock: UdpSocket,
    },
    TcpListener {
        sock: TcpListener,
        container: SocketAddr,
        mac: MacAddr,
    },
    UdpListener {
        id: ListenerId,
        sock: UdpSocket,
        container: SocketAddr,
        mac: MacAddr,
    },
}

struct HostSock {
    network: NetworkId,
    /// The endpoint port a published socket belongs to.
    owner: Option<PortId>,
    kind: Kind,
}

/// Counters of the NAT's host side.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NatIoCounters {
    pub tcp_connect_errors: u64,
    pub accept_errors: u64,
    pub inbound_refused: u64,
    pub send_errors: u64,
    /// Echo flows with no ping socket (the host allows none).
    pub icmp_unavailable: u64,
    pub socket_limit: u64,
}

/// Every host socket of every network's NAT.
#[derive(Default)]
pub struct NatIo {
    socks: HashMap<usize, HostSock>,
    next: usize,
    conns: HashMap<(NetworkId, ConnId), usize>,
    flows: HashMap<(NetworkId, FlowId), usize>,
    listeners: HashMap<ListenerId, usize>,
    next_listener: u64,
    /// Sockets that stopped at a bound with work left.
    retry: VecDeque<usize>,
    /// Connections accepted for other workers' NAT shards.
    elsewhere: Vec<Accepted>,
    pub counters: NatIoCounters,
}

fn token(idx: usize) -> Token {
    Token(NAT_SOCK | idx)
}

impl NatIo {
    pub fn new() -> NatIo {
        NatIo::default()
    }

    /// The network of the socket behind token index `idx`.
    pub fn network_of(&self, idx: usize) -> Option<NetworkId> {
        self.socks.get(&idx).map(|s| s.network)
    }

    /// Sockets with work left from an earlier turn.
    pub fn has_retry(&self) -> bool {
        !self.retry.is_empty()
    }

    /// Takes the retry list (each entry is then serviced like a readiness
    /// event).
    pub fn take_retry(&mut self) -> Vec<usize> {
        self.retry.drain(..).collect()
    }

    fn insert(
        &mut self,
        registry: &Registry,
        mut s: HostSock,
        interest: Interest,
    ) -> io::Result<usize> {
        if self.socks.len() >= MAX_SOCKETS {
            self.counters.socket_limit += 1;
            return Err(io::Error::other("too many NAT sockets"));
        }
        let idx = self.next;
        self.next = (self.next + 1) & (NAT_SOCK - 1);
        let t = token(idx);
        match &mut s.kind {
            Kind::Tcp(c) => registry.register(&mut c.stream, t, interest)?,
            Kind::Udp { sock, .. } | Kind::Icmp { sock, .. } => {
                registry.register(sock, t, interest)?
            }
            Kind::TcpListener { sock, .. } => registry.register(sock, t, interest)?,
            Kind::UdpListener { sock, .. } => registry.register(sock, t, interest)?,
        }
        self.socks.insert(idx, s);
        Ok(idx)
    }

    fn remove(&mut self, registry: &Registry, idx: usize) -> Option<HostSock> {
        let mut s = self.socks.remove(&idx)?;
        let _ = match &mut s.kind {
            Kind::Tcp(c) => registry.deregister(&mut c.stream),
            Kind::Udp { sock, .. } | Kind::Icmp { sock, .. } => registry.deregister(sock),
            Kind::TcpListener { sock, .. } => registry.deregister(sock),
            Kind::UdpListener { sock, .. } => registry.deregister(sock),
        };
        Some(s)
    }

    /// Registers the published ports of endpoint `owner` on `network`.
    pub fn add_published(
        &mut self,
        registry: &Registry,
        network: NetworkId,
        owner: PortId,
        published: Vec<Published>,
    ) -> io::Result<()> {
        let mut added = Vec::new();
        for p in published {
            let kind = match p.socket {
                PublishedSocket::Tcp(l) => Kind::TcpListener {
                    sock: TcpListener::from_std(l),
                    container: p.container,
                    mac: p.container_mac,
                },
                PublishedSocket::Udp(u) => {
                    self.next_listener += 1;
                    Kind::UdpListener {
                        id: ListenerId(self.next_listener),
                        sock: UdpSocket::from_std(u),
                        container: p.container,
                        mac: p.container_mac,
                    }
                }
            };
            let s = HostSock {
                network,
                owner: Some(owner),
                kind,
            };
            match self.insert(registry, s, Interest::READABLE) {
                Ok(idx) => {
                    if let Some(HostSock {
                        kind: Kind::UdpListener { id, .. },
                        ..
                    }) = self.socks.get(&idx)
                    {
                        self.listeners.insert(*id, idx);
                    }
                    added.push(idx);
                }
                Err(e) => {
                    for idx in added {
                        self.remove(registry, idx);
                    }
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    /// Closes the published ports of endpoint `owner` (connections already
    /// accepted go on until they end).
    pub fn remove_published(&mut self, registry: &Registry, owner: PortId, nat: Option<&mut Nat>) {
        let gone: Vec<usize> = self
            .socks
            .iter()
            .filter(|(_, s)| s.owner == Some(owner))
            .map(|(i, _)| *i)
            .collect();
        let mut closed = Vec::new();
        for idx in gone {
            if let Some(HostSock {
                kind: Kind::UdpListener { id, .. },
                ..
            }) = self.remove(registry, idx)
            {
                self.listeners.remove(&id);
                closed.push(id);
            }
        }
        if let Some(nat) = nat {
            for id in closed {
                nat.close_listener(id);
            }
        }
    }

    /// Drops every socket of a network that is going away.
    pub fn remove_network(&mut self, registry: &Registry, network: NetworkId) {
        let gone: Vec<usize> = self
            .socks
            .iter()
            .filter(|(_, s)| s.network == network)
            .map(|(i, _)| *i)
            .collect();
        for idx in gone {
            if let Some(s) = self.remove(registry, idx) {
                match s.kind {
                    Kind::Tcp(c) => {
                        self.conns.remove(&(network, c.id));
                        let _ = SockRef::from(&c.stream).set_linger(Some(Duration::ZERO));
                    }
                    Kind::Udp { flow, .. } | Kind::Icmp { flow, .. } => {
                        self.flows.remove(&(network, flow));
                    }
                    Kind::UdpListener { id, .. } => {
                        self.listeners.remove(&id);
                    }
                    Kind::TcpListener { .. } => {}
                }
            }
        }
    }

    /// Does what one [`NatEvent`] of `network`'s NAT asks.
    pub fn handle_event(
        &mut self,
        registry: &Registry,
        network: NetworkId,
        nat: &mut Nat,
        ev: NatEvent,
        now: Instant,
    ) {
        match ev {
            NatEvent::EgressTcpConnect { id, dst, .. } => {
                let stream = match TcpStream::connect(dst) {
                    // The container's stack has coalesced already: a second
                    // Nagle here would hold back the tail of each write.
                    Ok(s) => {
                        let _ = s.set_nodelay(true);
                        s
                    }
                    Err(e) => {
                        tracing::debug!(%dst, error = %e, "egress connect");
                        self.counters.tcp_connect_errors += 1;
                        nat.egress_connected(id, false, now);
                        return;
                    }
                };
                if self.add_tcp(registry, network, id, stream, true).is_err() {
                    nat.egress_connected(id, false, now);
                }
            }
            NatEvent::TcpReadable(id) => {
                if let Some(&idx) = self.conns.get(&(network, id)) {
                    self.pump_to_host(idx, nat, now);
                }
            }
            NatEvent::TcpWritable(id) => {
                if let Some(&idx) = self.conns.get(&(network, id)) {
                    self.pump_from_host(idx, nat, now);
                }
            }
            NatEvent::TcpFin(id) => {
                if let Some(&idx) = self.conns.get(&(network, id)) {
                    if let Some(HostSock {
                        kind: Kind::Tcp(c), ..
                    }) = self.socks.get(&idx)
                    {
                        let _ = c.stream.shutdown(Shutdown::Write);
                    }
                }
            }
            NatEvent::TcpClosed { id, reset } => {
                if let Some(idx) = self.conns.remove(&(network, id)) {
                    // Closing the stream's only descriptor takes it out of
                    // the poll: no deregistering syscall per connection.
                    if let Some(HostSock {
                        kind: Kind::Tcp(c), ..
                    }) = self.socks.remove(&idx)
                    {
                        if reset {
                            let _ = SockRef::from(&c.stream).set_linger(Some(Duration::ZERO));
                        }
                    }
                }
            }
            NatEvent::UdpFlowOpened { flow, dst, .. } => {
                let sock = match udp_flow_socket(dst) {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::debug!(%dst, error = %e, "egress UDP socket");
                        return;
                    }
                };
                let s = HostSock {
                    network,
                    owner: None,
                    kind: Kind::Udp { flow, sock },
                };
                if let Ok(idx) = self.insert(registry, s, Interest::READABLE) {
                    self.flows.insert((network, flow), idx);
                }
            }
            NatEvent::IcmpFlowOpened { flow, dst, .. } => {
                let sock = match ping_socket(dst) {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::debug!(%dst, error = %e, "no ping socket; echo not relayed");
                        self.counters.icmp_unavailable += 1;
                        return;
                    }
                };
                let s = HostSock {
                    network,
                    owner: None,
                    kind: Kind::Icmp { flow, sock },
                };
                if let Ok(idx) = self.insert(registry, s, Interest::READABLE) {
                    self.flows.insert((network, flow), idx);
                }
            }
            NatEvent::UdpFlowClosed(flow) | NatEvent::IcmpFlowClosed(flow) => {
                if let Some(idx) = self.flows.remove(&(network, flow)) {
                    self.remove(registry, idx);
                }
            }
        }
    }

    /// Sends a bounded number of the NAT's datagrams; true when more wait.
    pub fn send_datagrams(&mut self, network: NetworkId, nat: &mut Nat, buf: &mut [u8]) -> bool {
        for _ in 0..DATAGRAMS_PER_TURN {
            let Some(Datagram { via, dst, len }) = nat.poll_datagram(buf) else {
                return false;
            };
            let payload = &buf[..len];
            let r = match via {
                UdpVia::Flow(flow) => {
                    match self
                        .flows
                        .get(&(network, flow))
                        .and_then(|i| self.socks.get(i))
                    {
                        Some(HostSock {
                            kind: Kind::Udp { sock, .. } | Kind::Icmp { sock, .. },
                            ..
                        }) => sock.send(payload),
                        // No socket for this flow (none could be made).
                        _ => continue,
                    }
                }
                UdpVia::Listener(id) => {
                    match self.listeners.get(&id).and_then(|i| self.socks.get(i)) {
                        Some(HostSock {
                            kind: Kind::UdpListener { sock, .. },
                            ..
                        }) => {
                            let to = match sock.local_addr() {
                                Ok(a) if a.is_ipv6() => match dst {
                                    SocketAddr::V4(v4) => SocketAddr::new(
                                        IpAddr::V6(v4.ip().to_ipv6_mapped()),
                                        v4.port(),
                                    ),
                                    v6 => v6,
                                },
                                _ => dst,
                            };
                            sock.send_to(payload, to)
                        }
                        _ => continue,
                    }
                }
            };
            if let Err(e) = r {
                tracing::trace!(%dst, error = %e, "NAT datagram send");
                self.counters.send_errors += 1;
            }
        }
        true
    }

    /// Services the socket behind token index `idx` (readiness or a retry).
    pub fn ready(
        &mut self,
        registry: &Registry,
        idx: usize,
        nat: &mut Nat,
        buf: &mut [u8],
        now: Instant,
    ) {
        let Some(s) = self.socks.get_mut(&idx) else {
            return;
        };
        let network = s.network;
        let mut more = false;
        match &mut s.kind {
            Kind::Tcp(c) => {
                if c.connecting {
                    let id = c.id;
                    let outcome = match c.stream.take_error() {
                        Ok(None) => match c.stream.peer_addr() {
                            Ok(_) => Some(true),
                            Err(e) if e.kind() == io::ErrorKind::NotConnected => None,
                            Err(_) => Some(false),
                        },
                        Ok(Some(_)) | Err(_) => Some(false),
                    };
                    match outcome {
                        None => return,
                        Some(true) => {
                            c.connecting = false;
                            nat.egress_connected(id, true, now);
                        }
                        Some(false) => {
                            self.counters.tcp_connect_errors += 1;
                            self.conns.remove(&(network, id));
                            self.remove(registry, idx);
                            nat.egress_connected(id, false, now);
                            return;
                        }
                    }
                }
                self.pump_to_host(idx, nat, now);
                self.pump_from_host(idx, nat, now);
                return;
            }
            Kind::Udp { flow, sock } => {
                let flow = *flow;
                for i in 0..READS_PER_TURN {
                    match sock.recv_from(buf) {
                        Ok((n, from)) => nat.udp_reply(flow, from, &buf[..n], now),
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        // An ICMP error from the far end; the flow stays.
                        Err(_) => {}
                    }
                    if i + 1 == READS_PER_TURN {
                        more = true;
                    }
                }
            }
            Kind::Icmp { flow, sock } => {
                let flow = *flow;
                for i in 0..READS_PER_TURN {
                    match sock.recv_from(buf) {
                        Ok((n, from)) => nat.icmp_reply(flow, from.ip(), &buf[..n], now),
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(_) => {}
                    }
                    if i + 1 == READS_PER_TURN {
                        more = true;
                    }
                }
            }
            Kind::TcpListener {
                sock,
                container,
                mac,
            } => {
                let (container, mac) = (*container, *mac);
                let mut accepted = Vec::new();
                more = true;
                for _ in 0..READS_PER_TURN {
                    match sock.accept() {
                        Ok((stream, client)) => accepted.push((stream, client)),
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                            more = false;
                            break;
                        }
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => {
                            tracing::debug!(error = %e, "accept on a published port");
                            self.counters.accept_errors += 1;
                            more = false;
                            break;
                        }
                    }
                }
                if more {
                    self.retry.push_back(idx);
                    more = false;
                }
                for (stream, client) in accepted {
                    let conn = Accepted {
                        owner: nat.inbound_tcp_shard(client, container),
                        network,
                        stream,
                        client,
                        container,
                        mac,
                    };
                    if conn.owner == nat.shard().index {
                        self.adopt(registry, nat, conn, now);
                    } else {
                        self.elsewhere.push(conn);
                    }
                }
            }
            Kind::UdpListener {
                id,
                sock,
                container,
                mac,
            } => {
                let (id, container, mac) = (*id, *container, *mac);
                for i in 0..READS_PER_TURN {
                    match sock.recv_from(buf) {
                        Ok((n, client)) => {
                            if nat
                                .inbound_udp(id, client, container, mac, &buf[..n], now)
                                .is_err()
                            {
                                self.counters.inbound_refused += 1;
                            }
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(_) => {}
                    }
                    if i + 1 == READS_PER_TURN {
                        more = true;
                    }
                }
            }
        }
        if more {
            self.retry.push_back(idx);
        }
    }

    /// Connections accepted for other workers' NAT shards since the last
    /// call (see [`Accepted`]).
    pub fn take_accepted_elsewhere(&mut self) -> Vec<Accepted> {
        std::mem::take(&mut self.elsewhere)
    }

    /// Refuses a published port's connection: the client sees a reset.
    pub fn refuse(&mut self, conn: Accepted) {
        self.counters.inbound_refused += 1;
        let _ = SockRef::from(&conn.stream).set_linger(Some(Duration::ZERO));
    }

    /// Registers the host side of NAT connection `id` (`connecting`: an
    /// egress connect in progress).
    fn add_tcp(
        &mut self,
        registry: &Registry,
        network: NetworkId,
        id: ConnId,
        stream: TcpStream,
        connecting: bool,
    ) -> io::Result<()> {
        let s = HostSock {
            network,
            owner: None,
            kind: Kind::Tcp(TcpHost {
                id,
                stream,
                connecting,
                host_eof: false,
                to_host_blocked: false,
            }),
        };
        let idx = self.insert(registry, s, Interest::READABLE | Interest::WRITABLE)?;
        self.conns.insert((network, id), idx);
        Ok(())
    }

    /// Takes a published port's accepted connection into this worker's
    /// shard `nat` of its network: the NAT connects to the container from
    /// the client's address, this keeps the host socket.
    pub fn adopt(&mut self, registry: &Registry, nat: &mut Nat, conn: Accepted, now: Instant) {
        match nat.inbound_tcp(conn.client, conn.container, conn.mac, now) {
            Ok(id) => {
                if self
                    .add_tcp(registry, conn.network, id, conn.stream, false)
                    .is_err()
                {
                    nat.tcp_abort(id, now);
                }
            }
            Err(e) => {
                tracing::debug!(client = %conn.client, error = %e, "published port refused");
                self.refuse(conn);
            }
        }
    }

    /// Container to host: writes what the NAT holds for the connection
    /// until it is empty or the host socket is full.
    fn pump_to_host(&mut self, idx: usize, nat: &mut Nat, now: Instant) {
        let Some(HostSock {
            kind: Kind::Tcp(c), ..
        }) = self.socks.get_mut(&idx)
        else {
            return;
        };
        if c.connecting {
            return;
        }
        c.to_host_blocked = false;
        for _ in 0..READS_PER_TURN {
            let data = nat.tcp_peek(c.id);
            if data.is_empty() {
                return;
            }
            match c.stream.write(data) {
                Ok(0) => return,
                Ok(n) => nat.tcp_consume(c.id, n, now),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    c.to_host_blocked = true;
                    return;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    nat.tcp_abort(c.id, now);
                    return;
                }
            }
        }
        self.retry.push_back(idx);
    }

    /// Host to container: reads the socket straight into the NAT's send
    /// buffer for the connection (no copy of ours in between) until the
    /// socket has no more, the buffer is full (then
    /// [`NatEvent::TcpWritable`] brings us back) or the bound per turn.
    fn pump_from_host(&mut self, idx: usize, nat: &mut Nat, now: Instant) {
        let Some(HostSock {
            kind: Kind::Tcp(c), ..
        }) = self.socks.get_mut(&idx)
        else {
            return;
        };
        if c.connecting || c.host_eof {
            return;
        }
        for _ in 0..READS_PER_TURN {
            let (mut eof, mut blocked, mut failed) = (false, false, false);
            let stream = &mut c.stream;
            let taken = nat.tcp_write_with(c.id, now, |room| loop {
                match stream.read(room) {
                    Ok(0) => {
                        eof = true;
                        return 0;
                    }
                    Ok(n) => return n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        blocked = true;
                        return 0;
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => {
                        failed = true;
                        return 0;
                    }
                }
            });
            if failed {
                nat.tcp_abort(c.id, now);
                return;
            }
            if eof {
                c.host_eof = true;
                nat.tcp_host_closed(c.id, now);
                return;
            }
            if blocked || taken == 0 {
                return;
            }
        }
        self.retry.push_back(idx);
    }
}

/// A UDP socket for one egress flow, connected to `dst`.
fn udp_flow_socket(dst: SocketAddr) -> io::Result<UdpSocket> {
    let any: SocketAddr = match dst {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let sock = UdpSocket::bind(any)?;
    sock.connect(dst)?;
    Ok(sock)
}

/// An unprivileged ICMP echo socket connected to `dst`; fails where the
/// host's `net.ipv4.ping_group_range` leaves this process out.
fn ping_socket(dst: IpAddr) -> io::Result<UdpSocket> {
    let (domain, proto) = match dst {
        IpAddr::V4(_) => (Domain::IPV4, Protocol::ICMPV4),
        IpAddr::V6(_) => (Domain::IPV6, Protocol::ICMPV6),
    };
    let sock = Socket::new(domain, Type::DGRAM, Some(proto))?;
    sock.set_nonblocking(true)?;
    sock.connect(&SocketAddr::new(dst, 0).into())?;
    Ok(UdpSocket::from_std(sock.into()))
}
