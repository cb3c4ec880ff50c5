//! TCP through the NAT: connections terminated in the NAT's smoltcp
//! interface, egress (a container's SYN waits for the host connect) and
//! published ports (a socket connects to the container from the client's
//! address), and the bytes and closes between them and the daemon.

use crate::fdb::FastMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU32, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::task::{Wake, Waker};
use std::time::{Duration, Instant};

use smoltcp::iface::{SocketHandle, SocketSet};
use smoltcp::socket::tcp;
use smoltcp::wire::{IpAddress, IpEndpoint, IpListenEndpoint};

use super::{ConnId, Ingress, Nat, NatError, NatEvent, NatLimits, Proto, Timer, Tuple};
use crate::wire::TcpView;
use crate::MacAddr;

/// A container that sends nothing for this long while data waits for its
/// acknowledgement loses the connection. Three times smoltcp's longest
/// zero-window probe interval (60 s), so a container that merely stops
/// reading keeps its connection, as with a kernel peer.
const TCP_PEER_TIMEOUT: Duration = Duration::from_secs(180);

/// Rounds of poll-then-service after one call (a service round may close a
/// socket, whose FIN the next poll sends).
const SERVICE_ROUNDS: usize = 4;

/// Closed sockets kept for the next connections, with their buffers: a
/// socket's two buffers of [`NatLimits::tcp_buffer`] bytes cost more to
/// allocate and zero than a short connection takes to run (a 1 MiB pair
/// cut the connection rate of netbench's publish group threefold). Bounds
/// what idle connections leave resident to this many pairs.
const SOCKET_POOL: usize = 16;

/// Host bytes a published connection holds while its SYN to the
/// container is unanswered (smoltcp takes none before the handshake), so
/// the handshake's last ACK carries them. A client's first request
/// usually fits; more waits in the host socket, as before.
const EARLY_DATA: usize = 4096;

/// smoltcp's delayed ACK, restored on a socket taken from the pool.
const ACK_DELAY: smoltcp::time::Duration = smoltcp::time::Duration::from_millis(10);

#[derive(Debug)]
pub(super) enum Phase {
    /// Egress: the container's SYN (the whole IP packet) waits for the host
    /// connect.
    Connecting { syn: Vec<u8> },
    /// A smoltcp socket carries the connection.
    Open(SocketHandle),
}

#[derive(Debug)]
pub(super) struct TcpConn {
    pub(super) tuple: Tuple,
    /// The peer is a gateway address with a port this connection holds.
    pub(super) owns_port: bool,
    pub(super) phase: Phase,
    pub(super) created: Instant,
    pub(super) last_active: Instant,
    pub(super) timer_at: Option<Instant>,
    /// Saw ESTABLISHED or a later state.
    pub(super) established: bool,
    /// The container sent FIN.
    pub(super) remote_fin: bool,
    /// The host side closed and `close()` was called.
    pub(super) local_fin: bool,
    /// The daemon reported the host side closed.
    pub(super) host_closed: bool,
    /// Reset by us (idle, host abort): never graceful.
    pub(super) aborted: bool,
    pub(super) read_notified: bool,
    pub(super) want_write: bool,
    pub(super) fin_notified: bool,
    /// Registered with the socket: puts the connection on the woken list.
    pub(super) waker: Option<Waker>,
    /// Host bytes taken before the container answered the SYN, at most
    /// [`EARLY_DATA`]; they go into the socket once it is established.
    pub(super) early: Vec<u8>,
}

impl TcpConn {
    pub(super) fn new(tuple: Tuple, owns_port: bool, phase: Phase, now: Instant) -> TcpConn {
        TcpConn {
            tuple,
            owns_port,
            phase,
            created: now,
            last_active: now,
            timer_at: None,
            established: false,
            remote_fin: false,
            local_fin: false,
            host_closed: false,
            aborted: false,
            read_notified: false,
            want_write: false,
            early: Vec::new(),
            fin_notified: false,
            waker: None,
        }
    }

    /// When the connection's own timer fires: the connect timeout while the
    /// host connects or the handshake with the container is unfinished,
    /// idleness after.
    pub(super) fn deadline(&self, limits: &NatLimits) -> Option<Instant> {
        match self.phase {
            Phase::Connecting { .. } => self.created.checked_add(limits.tcp_connect_timeout),
            Phase::Open(_) if !self.established => {
                self.last_active.checked_add(limits.tcp_connect_timeout)
            }
            Phase::Open(_) => self.last_active.checked_add(limits.tcp_idle),
        }
    }
}

/// Which connections a service round looks at.
#[derive(Debug, Clone, Copy)]
pub(super) enum Service {
    /// Those whose socket woke, and this one.
    Woken(Option<ConnId>),
    /// All of them (timers).
    All,
}

/// Connections whose smoltcp socket woke since they were last serviced.
#[derive(Debug, Default)]
pub(super) struct Woken(Mutex<Vec<ConnId>>);

impl Woken {
    pub(super) fn list(&self) -> std::sync::MutexGuard<'_, Vec<ConnId>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(super) fn drain_into(&self, out: &mut Vec<ConnId>) {
        out.append(&mut self.list());
    }

    pub(super) fn is_empty(&self) -> bool {
        self.list().is_empty()
    }
}

/// A connection's waker. smoltcp wakes it on every state change, when
/// bytes arrive and when acknowledged bytes free send space: the only
/// moments the connection may have something to tell the daemon, so only
/// woken connections are serviced after a poll (a poll visits every socket;
/// servicing every connection too would double that cost).
#[derive(Debug)]
pub(super) struct ConnWaker {
    pub(super) id: ConnId,
    pub(super) woken: Arc<Woken>,
}

impl Wake for ConnWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.list().push(self.id);
    }
}

impl Nat {
    /// A published TCP port accepted `client` on the host; connect it to
    /// `container` (whose MAC is `container_mac`). The container sees
    /// `client` as its peer, or the gateway address when it could not reach
    /// the client's own address back through the gateway.
    pub fn inbound_tcp(
        &mut self,
        client: SocketAddr,
        container: SocketAddr,
        container_mac: MacAddr,
        now: Instant,
    ) -> Result<ConnId, NatError> {
        self.check_container(container, container_mac)?;
        if !self.tcp_room() {
            self.stats.tcp_refused += 1;
            return Err(NatError::TcpTableFull(self.conns.len()));
        }
        let (peer, owns_port) = self.inbound_peer(client, container, Proto::Tcp)?;
        let tuple = Tuple { container, peer };
        let mut socket = self.new_socket();
        if socket
            .connect(
                self.iface.context(),
                IpEndpoint::from(container),
                IpEndpoint::from(peer),
            )
            .is_err()
        {
            if owns_port {
                self.tcp_ports.remove(&(peer.ip(), peer.port()));
            }
            return Err(NatError::NotInNetwork(container));
        }
        let id = self.next_conn_id();
        let waker = self.waker(id);
        socket.register_recv_waker(&waker);
        socket.register_send_waker(&waker);
        let handle = self.sockets.add(socket);
        self.hold_neighbor(container.ip(), container_mac);
        let mut conn = TcpConn::new(tuple, owns_port, Phase::Open(handle), now);
        conn.waker = Some(waker);
        self.conns.insert(id, conn);
        self.tuples.insert(tuple, id);
        self.arm_tcp_timer(id);
        self.stats.tcp_inbound += 1;
        self.run(None, Service::Woken(Some(id)), now);
        Ok(id)
    }

    /// The outcome of the host connect an [`NatEvent::EgressTcpConnect`]
    /// asked for. On success the container's connection completes; on
    /// failure it gets RST and [`NatEvent::TcpClosed`] follows.
    pub fn egress_connected(&mut self, id: ConnId, ok: bool, now: Instant) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        if !matches!(conn.phase, Phase::Connecting { .. }) {
            return;
        }
        if !ok {
            self.stats.tcp_connect_failed += 1;
            self.refuse_connecting(id, now);
            return;
        }
        let peer = conn.tuple.peer;
        let container = conn.tuple.container;
        let mut socket = self.new_socket();
        if socket
            .listen(IpListenEndpoint {
                addr: Some(IpAddress::from(peer.ip())),
                port: peer.port(),
            })
            .is_err()
        {
            self.refuse_connecting(id, now);
            return;
        }
        let waker = self.waker(id);
        socket.register_recv_waker(&waker);
        socket.register_send_waker(&waker);
        let handle = self.sockets.add(socket);
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        let Phase::Connecting { syn } = std::mem::replace(&mut conn.phase, Phase::Open(handle))
        else {
            return;
        };
        conn.waker = Some(waker);
        conn.last_active = now;
        self.connecting -= 1;
        let mac = self.neighbors.get(&container.ip()).map(|n| n.mac);
        self.run(
            Some((&syn, container.ip(), mac)),
            Service::Woken(Some(id)),
            now,
        );
        // smoltcp took the SYN unless it was no longer valid.
        if let Some(conn) = self.conns.get_mut(&id) {
            if let Phase::Open(h) = conn.phase {
                let s = self.sockets.get_mut::<tcp::Socket>(h);
                if s.state() == tcp::State::Listen {
                    s.abort();
                    conn.aborted = true;
                    self.run(None, Service::Woken(Some(id)), now);
                }
            }
        }
        self.arm_tcp_timer(id);
    }

    /// Queues bytes from the host for the container; returns how many were
    /// taken. Less than `data.len()`: keep the rest and retry after
    /// [`NatEvent::TcpWritable`].
    pub fn tcp_write(&mut self, id: ConnId, data: &[u8], now: Instant) -> usize {
        if data.is_empty() {
            return 0;
        }
        let mut off = 0;
        self.tcp_write_with(id, now, |room| {
            let n = (data.len() - off).min(room.len());
            room[..n].copy_from_slice(&data[off..off + n]);
            off += n;
            n
        })
    }

    /// Host to container without a copy in between: `fill` writes the
    /// host's bytes straight into the connection's send buffer. It gets the
    /// buffer's free space (at most twice: the ring may wrap; never empty)
    /// and returns how many bytes it wrote there; fewer than offered means
    /// the source has no more now (why is the caller's to keep: end of
    /// stream, would block, an error). Returns the bytes taken. When there
    /// is no room left, [`NatEvent::TcpWritable`] follows once there is.
    pub fn tcp_write_with(
        &mut self,
        id: ConnId,
        now: Instant,
        mut fill: impl FnMut(&mut [u8]) -> usize,
    ) -> usize {
        let Some(conn) = self.conns.get_mut(&id) else {
            return 0;
        };
        let Phase::Open(handle) = conn.phase else {
            conn.want_write = true;
            return 0;
        };
        if conn.host_closed {
            return 0;
        }
        let s = self.sockets.get_mut::<tcp::Socket>(handle);
        if s.state() == tcp::State::SynSent {
            return Self::take_early(&mut self.early, id, conn, self.limits.tcp_buffer, fill);
        }
        let mut taken = 0;
        let mut full = !s.may_send();
        for _ in 0..2 {
            if full {
                break;
            }
            let r = s.send(|buf: &mut [u8]| {
                if buf.is_empty() {
                    return (0, None);
                }
                let n = fill(buf).min(buf.len());
                (n, Some((n, buf.len())))
            });
            match r {
                Ok(Some((n, room))) => {
                    taken += n;
                    if n < room {
                        break;
                    }
                }
                Ok(None) | Err(_) => full = true,
            }
        }
        if full {
            conn.want_write = true;
        }
        if taken > 0 {
            conn.last_active = now;
            self.run(None, Service::Woken(Some(id)), now);
        }
        taken
    }

    /// [`Nat::tcp_write_with`] while the container has not answered the
    /// SYN: up to [`EARLY_DATA`] bytes (never more than the socket's send
    /// buffer, which takes them whole later) wait in the connection.
    fn take_early(
        pending: &mut Vec<ConnId>,
        id: ConnId,
        conn: &mut TcpConn,
        tcp_buffer: usize,
        mut fill: impl FnMut(&mut [u8]) -> usize,
    ) -> usize {
        let held = conn.early.len();
        let room = EARLY_DATA.min(tcp_buffer).saturating_sub(held);
        if room == 0 {
            conn.want_write = true;
            return 0;
        }
        conn.early.resize(held + room, 0);
        let n = fill(&mut conn.early[held..]).min(room);
        conn.early.truncate(held + n);
        if n == room {
            // Perhaps more: asked for again once the socket takes bytes.
            conn.want_write = true;
        }
        if held == 0 && n > 0 {
            pending.push(id);
        }
        n
    }

    /// Moves the bytes of [`Nat::take_early`] into the sockets that left
    /// SYN-SENT; runs between smoltcp's ingress and egress, so they leave
    /// with the ACK of the container's SYN-ACK. A connection that failed
    /// drops them with itself.
    pub(super) fn flush_early(
        pending: &mut Vec<ConnId>,
        conns: &mut FastMap<ConnId, TcpConn>,
        sockets: &mut SocketSet<'static>,
    ) {
        pending.retain(|id| {
            let Some(conn) = conns.get_mut(id) else {
                return false;
            };
            let Phase::Open(handle) = conn.phase else {
                conn.early = Vec::new();
                return false;
            };
            let s = sockets.get_mut::<tcp::Socket>(handle);
            if s.state() == tcp::State::SynSent {
                return true;
            }
            if s.may_send() {
                // The send buffer is empty and at least as large.
                let _ = s.send_slice(&conn.early);
            }
            conn.early = Vec::new();
            false
        });
    }

    /// Copies bytes the container sent into `out`; returns how many (0:
    /// none now).
    pub fn tcp_read(&mut self, id: ConnId, out: &mut [u8], now: Instant) -> usize {
        let Some(s) = self.open_socket(id) else {
            return 0;
        };
        let n = s.recv_slice(out).unwrap_or(0);
        self.after_read(id, n, now);
        n
    }

    /// The bytes the container sent that [`Nat::tcp_read`] would return
    /// next, without taking them (possibly fewer than are queued). With
    /// [`Nat::tcp_consume`], lets the daemon write to the host socket
    /// straight from the NAT's buffer.
    pub fn tcp_peek(&mut self, id: ConnId) -> &[u8] {
        match self.open_socket(id) {
            Some(s) => s.peek(usize::MAX).unwrap_or(&[]),
            None => &[],
        }
    }

    /// Drops the first `n` bytes [`Nat::tcp_peek`] returned.
    pub fn tcp_consume(&mut self, id: ConnId, n: usize, now: Instant) {
        let Some(s) = self.open_socket(id) else {
            return;
        };
        let n = s.recv(|buf| {
            let n = n.min(buf.len());
            (n, n)
        });
        self.after_read(id, n.unwrap_or(0), now);
    }

    /// The host side finished sending: the container gets FIN once every
    /// queued byte is through.
    pub fn tcp_host_closed(&mut self, id: ConnId, now: Instant) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        if matches!(conn.phase, Phase::Connecting { .. }) {
            self.refuse_connecting(id, now);
            return;
        }
        conn.host_closed = true;
        self.run(None, Service::Woken(Some(id)), now);
    }

    /// The host socket failed or was reset: reset the container's side.
    pub fn tcp_abort(&mut self, id: ConnId, now: Instant) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        match conn.phase {
            Phase::Connecting { .. } => self.refuse_connecting(id, now),
            Phase::Open(handle) => {
                conn.aborted = true;
                self.sockets.get_mut::<tcp::Socket>(handle).abort();
                self.run(None, Service::Woken(Some(id)), now);
            }
        }
    }

    // ---- the container side ----

    pub(super) fn tcp_segment(
        &mut self,
        ingress: &Ingress<'_>,
        tcp: &TcpView<'_, '_>,
        now: Instant,
    ) {
        let Some(tuple) = self.container_tuple(ingress, tcp.src_port(), tcp.dst_port()) else {
            return;
        };
        let is_syn = tcp.syn() && !tcp.ack() && !tcp.rst() && !tcp.fin();
        if let Some(&id) = self.tuples.get(&tuple) {
            let Some(conn) = self.conns.get_mut(&id) else {
                return;
            };
            match &conn.phase {
                Phase::Connecting { .. } => {
                    // A retransmitted SYN waits with the first; a RST means
                    // the container gave up.
                    if tcp.rst() {
                        self.remove_conn(id);
                        self.events
                            .push_back(NatEvent::TcpClosed { id, reset: true });
                    }
                    return;
                }
                Phase::Open(_) => {
                    conn.last_active = now;
                    self.run(
                        Some((ingress.packet, ingress.src, Some(ingress.src_mac))),
                        Service::Woken(Some(id)),
                        now,
                    );
                    return;
                }
            }
        }
        if !self.egress_allows(ingress.src, ingress.dst, 6, tcp.dst_port()) {
            return;
        }
        if is_syn && !self.is_gateway(ingress.dst) {
            self.egress_syn(ingress, tuple, now);
        } else {
            // A stray segment: smoltcp answers RST.
            self.run(
                Some((ingress.packet, ingress.src, Some(ingress.src_mac))),
                Service::Woken(None),
                now,
            );
        }
    }

    pub(super) fn egress_syn(&mut self, ingress: &Ingress<'_>, tuple: Tuple, now: Instant) {
        if self.connecting >= self.limits.max_tcp_connecting || !self.tcp_room() {
            self.stats.tcp_refused += 1;
            self.run(
                Some((ingress.packet, ingress.src, Some(ingress.src_mac))),
                Service::Woken(None),
                now,
            );
            return;
        }
        let id = self.next_conn_id();
        self.hold_neighbor(ingress.src, ingress.src_mac);
        let phase = Phase::Connecting {
            syn: ingress.packet.to_vec(),
        };
        self.conns
            .insert(id, TcpConn::new(tuple, false, phase, now));
        self.tuples.insert(tuple, id);
        self.connecting += 1;
        self.arm_tcp_timer(id);
        self.stats.tcp_egress += 1;
        self.events.push_back(NatEvent::EgressTcpConnect {
            id,
            src: tuple.container,
            dst: tuple.peer,
        });
    }

    /// Answers a waiting egress SYN with RST (smoltcp does it, finding no
    /// socket for it) and ends the connection.
    pub(super) fn refuse_connecting(&mut self, id: ConnId, now: Instant) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        let Phase::Connecting { syn } =
            std::mem::replace(&mut conn.phase, Phase::Connecting { syn: Vec::new() })
        else {
            return;
        };
        let container = conn.tuple.container.ip();
        let mac = self.neighbors.get(&container).map(|n| n.mac);
        self.remove_conn(id);
        self.events
            .push_back(NatEvent::TcpClosed { id, reset: true });
        if !syn.is_empty() {
            self.run(Some((&syn, container, mac)), Service::Woken(None), now);
        }
    }

    pub(super) fn tcp_timer(&mut self, id: ConnId, now: Instant) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        conn.timer_at = None;
        match conn.deadline(&self.limits) {
            None => {}
            Some(at) if at > now => self.set_tcp_timer(id, at),
            Some(_) => {
                self.stats.tcp_timed_out += 1;
                match conn.phase {
                    Phase::Connecting { .. } => self.refuse_connecting(id, now),
                    Phase::Open(handle) => {
                        conn.aborted = true;
                        self.sockets.get_mut::<tcp::Socket>(handle).abort();
                        self.poll_needed = true;
                    }
                }
            }
        }
    }

    /// True when a connection may be added.
    pub(super) fn tcp_room(&self) -> bool {
        self.conns.len() < self.limits.max_tcp
    }

    pub(super) fn waker(&self, id: ConnId) -> Waker {
        Waker::from(Arc::new(ConnWaker {
            id,
            woken: Arc::clone(&self.woken),
        }))
    }

    /// A closed socket, from the pool or new, set up for a connection.
    pub(super) fn new_socket(&mut self) -> tcp::Socket<'static> {
        let n = self.limits.tcp_buffer;
        let mut socket = self.socket_pool.pop().unwrap_or_else(|| {
            tcp::Socket::new(
                tcp::SocketBuffer::new(vec![0; n]),
                tcp::SocketBuffer::new(vec![0; n]),
            )
        });
        // `listen` and `connect` reset the connection's state; what a
        // previous connection set is set again here.
        socket.set_ack_delay(Some(ACK_DELAY));
        // A relay does not know message boundaries: never hold bytes back.
        socket.set_nagle_enabled(false);
        socket.set_tsval_generator(Some(tsval));
        socket.set_timeout(Some(smoltcp::time::Duration::from_micros(
            TCP_PEER_TIMEOUT.as_micros() as u64,
        )));
        socket
    }

    /// The socket of a connection the daemon may still use.
    pub(super) fn open_socket(&mut self, id: ConnId) -> Option<&mut tcp::Socket<'static>> {
        let conn = self.conns.get(&id)?;
        match conn.phase {
            Phase::Open(h) => Some(self.sockets.get_mut::<tcp::Socket>(h)),
            _ => None,
        }
    }

    pub(super) fn after_read(&mut self, id: ConnId, n: usize, now: Instant) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        if let Phase::Open(h) = conn.phase {
            if self.sockets.get::<tcp::Socket>(h).recv_queue() == 0 {
                conn.read_notified = false;
            }
        }
        if n > 0 {
            conn.last_active = now;
        }
        // The window opened (smoltcp may announce it) and a drained buffer
        // may finish a close.
        self.run(None, Service::Woken(Some(id)), now);
    }

    /// Lets smoltcp take `packet` (an IP packet from `src`, whose MAC is
    /// known) and send what it has, then services the connections `service`
    /// names and those whose socket woke, until nothing changes.
    pub(super) fn run(
        &mut self,
        packet: Option<(&[u8], IpAddr, Option<MacAddr>)>,
        service: Service,
        now: Instant,
    ) {
        let rx_src = packet.and_then(|(_, ip, mac)| mac.map(|m| (ip, m)));
        self.poll_iface(packet.map(|(p, _, _)| p), rx_src, now);
        let mut first = Some(service);
        for _ in 0..SERVICE_ROUNDS {
            self.poll_needed = false;
            let mut ids = std::mem::take(&mut self.scratch);
            ids.clear();
            match first.take() {
                Some(Service::All) => ids.extend(self.conns.keys().copied()),
                Some(Service::Woken(also)) => ids.extend(also),
                None => {}
            }
            self.woken.drain_into(&mut ids);
            for &id in &ids {
                self.service_conn(id);
            }
            self.scratch = ids;
            if self.poll_needed {
                self.poll_iface(None, None, now);
            } else if self.woken.is_empty() {
                break;
            }
        }
    }

    /// Turns a connection's socket state into events; closes and removes.
    pub(super) fn service_conn(&mut self, id: ConnId) {
        use tcp::State;
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        let Phase::Open(handle) = conn.phase else {
            return;
        };
        let s = self.sockets.get_mut::<tcp::Socket>(handle);
        if let Some(w) = &conn.waker {
            // smoltcp drops a waker once it wakes it.
            s.register_recv_waker(w);
            s.register_send_waker(w);
        }
        let state = s.state();
        if matches!(
            state,
            State::Established
                | State::FinWait1
                | State::FinWait2
                | State::CloseWait
                | State::Closing
                | State::LastAck
                | State::TimeWait
        ) {
            conn.established = true;
        }
        if matches!(
            state,
            State::CloseWait | State::LastAck | State::Closing | State::TimeWait
        ) {
            conn.remote_fin = true;
        }
        // A host client that half-closes before the container answered
        // the SYN: the FIN waits for the handshake (closing a SYN-SENT
        // socket would abort it).
        if conn.host_closed && conn.established && !conn.local_fin {
            conn.local_fin = true;
            // The container's FIN then gets its ACK at once, so the socket
            // can go when it reaches TIME-WAIT (see below).
            s.set_ack_delay(None);
            s.close();
            self.poll_needed = true;
            return; // serviced again after the poll
        }
        if s.can_recv() && !conn.read_notified {
            conn.read_notified = true;
            self.events.push_back(NatEvent::TcpReadable(id));
        }
        if matches!(s.recv_slice(&mut []), Err(tcp::RecvError::Finished)) {
            conn.remote_fin = true;
            if !conn.fin_notified {
                conn.fin_notified = true;
                self.events.push_back(NatEvent::TcpFin(id));
            }
        }
        if conn.want_write
            && s.may_send()
            && s.send_capacity() - s.send_queue() >= s.send_capacity() / 2
        {
            conn.want_write = false;
            self.events.push_back(NatEvent::TcpWritable(id));
        }
        if !matches!(state, State::Closed | State::TimeWait) {
            return;
        }
        let graceful = !conn.aborted
            && conn.established
            && conn.remote_fin
            && (conn.local_fin || state == State::TimeWait);
        if graceful {
            if s.recv_queue() > 0 {
                return; // the daemon reads the rest first
            }
            if !conn.fin_notified {
                conn.fin_notified = true;
                self.events.push_back(NatEvent::TcpFin(id));
            }
        } else if state == State::Closed && s.remote_endpoint().is_some() {
            return; // the RST is not out yet
        }
        self.events.push_back(NatEvent::TcpClosed {
            id,
            reset: !graceful,
        });
        // No TIME-WAIT: the last ACK is out (no ACK delay after our FIN), the
        // bridge is the only link and loses frames only when queues
        // overflow; a retransmitted FIN would get RST, which closes the
        // container's side just the same. Keeping sockets for 2 MSL would
        // cap the connection rate at `max_tcp` per 10 s.
        self.remove_conn(id);
    }

    pub(super) fn remove_conn(&mut self, id: ConnId) {
        let Some(conn) = self.conns.remove(&id) else {
            return;
        };
        match conn.phase {
            Phase::Open(h) => {
                if let smoltcp::socket::Socket::Tcp(mut s) = self.sockets.remove(h) {
                    if self.socket_pool.len() < SOCKET_POOL {
                        // Out of the set nothing is sent: the abort only
                        // closes it for reuse.
                        s.abort();
                        self.socket_pool.push(s);
                    }
                }
            }
            Phase::Connecting { .. } => self.connecting -= 1,
        }
        if self.tuples.get(&conn.tuple) == Some(&id) {
            self.tuples.remove(&conn.tuple);
        }
        self.release_neighbor(conn.tuple.container.ip());
        if conn.owns_port {
            self.tcp_ports
                .remove(&(conn.tuple.peer.ip(), conn.tuple.peer.port()));
        }
        if let Some(at) = conn.timer_at {
            self.timers.remove(&(at, Timer::Tcp(id)));
        }
    }

    pub(super) fn arm_tcp_timer(&mut self, id: ConnId) {
        let Some(conn) = self.conns.get(&id) else {
            return;
        };
        if let Some(at) = conn.deadline(&self.limits) {
            self.set_tcp_timer(id, at);
        }
    }

    pub(super) fn set_tcp_timer(&mut self, id: ConnId, at: Instant) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        if let Some(old) = conn.timer_at.replace(at) {
            self.timers.remove(&(old, Timer::Tcp(id)));
        }
        self.timers.insert((at, Timer::Tcp(id)));
    }

    pub(super) fn next_conn_id(&mut self) -> ConnId {
        let id = ConnId(self.next_id);
        self.next_id += 1;
        id
    }
}

/// The TCP timestamp clock (RFC 7323), in milliseconds: advanced from the
/// `now` the daemon passes in (never read from the OS here), shared by every
/// NAT of the process so that it only goes forward.
static TSVAL_MS: AtomicU32 = AtomicU32::new(1);

/// The origin of [`TSVAL_MS`]: the `now` of the first NAT built.
static TSVAL_EPOCH: OnceLock<Instant> = OnceLock::new();

/// Moves the timestamp clock to `now`.
pub(super) fn advance_tsval(now: Instant) {
    let epoch = *TSVAL_EPOCH.get_or_init(|| now);
    let ms = now.saturating_duration_since(epoch).as_millis() as u32;
    TSVAL_MS.fetch_max(ms.wrapping_add(1), AtomicOrdering::Relaxed);
}

/// smoltcp's timestamp generator. Timestamps on the NAT's own connections
/// let a container whose port is still in TIME-WAIT from an earlier
/// connection of the same addresses accept the new SYN at once (Linux
/// accepts a SYN with a newer timestamp), instead of answering with an ACK
/// that costs the connection a one-second SYN retransmission.
fn tsval() -> u32 {
    TSVAL_MS.load(AtomicOrdering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::EARLY_DATA;

    #[rstest]
    #[case::ipv4_client("203.0.113.7:40000", "10.0.0.2:80", true)]
    #[case::ipv6_client("[2001:db8::7]:40000", "[fd00::2]:80", true)]
    #[case::mapped_ipv4_client("[::ffff:203.0.113.7]:40000", "10.0.0.2:80", true)]
    #[case::loopback("127.0.0.1:5555", "10.0.0.2:80", false)]
    #[case::ipv6_loopback("[::1]:5555", "[fd00::2]:80", false)]
    #[case::ipv6_client_ipv4_container("[2001:db8::7]:40000", "10.0.0.2:80", false)]
    #[case::ipv4_client_ipv6_container("203.0.113.7:40000", "[fd00::2]:80", false)]
    #[case::client_in_the_subnet("10.0.0.9:40000", "10.0.0.2:80", false)]
    fn inbound_tcp_peer_is_the_client_or_the_gateway(
        #[case] client: &str,
        #[case] container: &str,
        #[case] real: bool,
    ) {
        let mut net = Net::new(true, limits());
        let (h, id) = net.inbound(client, container);
        let (client, container) = (sa(client), sa(container));
        net.settle();
        assert_eq!(net.c.tcp(h).state(), tcp::State::Established);
        let peer = SocketAddr::from(net.c.tcp(h).remote_endpoint().unwrap());
        let local = SocketAddr::from(net.c.tcp(h).local_endpoint().unwrap());
        assert_eq!(local, container);
        if real {
            assert_eq!(peer, canonical(client));
        } else {
            assert_eq!(peer.ip(), gateway_of(container));
            assert!(NAT_PORTS.contains(&peer.port()), "{peer}");
        }
        // Bytes both ways prove the return path.
        assert_eq!(net.nat.tcp_write(id, b"hello", net.now), 5);
        net.settle();
        assert_eq!(net.c.recv_all(h), b"hello");
        net.c.tcp(h).send_slice(b"world").unwrap();
        net.settle();
        assert_eq!(net.take_events(), [NatEvent::TcpReadable(id)]);
        assert_eq!(net.host_read(id), b"world");
    }

    #[test]
    fn nat_syns_carry_tcp_timestamps() {
        let now = Instant::now();
        let mut nat = Nat::new(config(true, limits()), now).unwrap();
        nat.inbound_tcp(sa("203.0.113.7:40000"), sa("10.0.0.2:80"), C_MAC, now)
            .unwrap();
        let mut out = [0u8; 2048];
        let (n, _) = nat.poll_transmit(now, &mut out).expect("a SYN");
        let p = etherparse::SlicedPacket::from_ethernet(&out[..n]).unwrap();
        let Some(etherparse::TransportSlice::Tcp(tcp)) = p.transport else {
            panic!("not TCP")
        };
        assert!(tcp.syn() && !tcp.ack());
        let has_ts = tcp
            .options_iterator()
            .any(|o| matches!(o, Ok(etherparse::TcpOptionElement::Timestamp(_, _))));
        assert!(has_ts, "the NAT's SYN has no timestamp option");
    }

    #[test]
    fn inbound_tcp_host_half_close_before_handshake() {
        let mut net = Net::new(true, limits());
        let (h, id) = net.inbound("203.0.113.7:40000", "10.0.0.2:80");
        // The host client shut down writing at once (`socat - TCP:...`
        // with empty stdin), before the container's SYN-ACK came back.
        net.nat.tcp_host_closed(id, net.now);
        net.settle();
        // The connection is made all the same, then half-closed.
        assert_eq!(net.c.tcp(h).state(), tcp::State::CloseWait);
        net.c.tcp(h).send_slice(b"reply").unwrap();
        net.settle();
        let _ = net.take_events();
        assert_eq!(net.host_read(id), b"reply");
    }

    #[test]
    fn inbound_tcp_closes_both_ways() {
        let mut net = Net::new(true, limits());
        let (h, id) = net.inbound("203.0.113.7:40000", "10.0.0.2:80");
        net.settle();
        net.nat.tcp_write(id, b"last words", net.now);
        net.nat.tcp_host_closed(id, net.now);
        net.settle();
        // The container got every byte, then the FIN.
        assert_eq!(net.c.recv_all(h), b"last words");
        assert!(!net.c.tcp(h).may_recv());
        assert_eq!(net.c.tcp(h).state(), tcp::State::CloseWait);
        // Writing after the close takes nothing.
        assert_eq!(net.nat.tcp_write(id, b"more", net.now), 0);
        net.c.tcp(h).send_slice(b"bye").unwrap();
        net.c.tcp(h).close();
        net.settle();
        assert_eq!(
            net.take_events(),
            [NatEvent::TcpReadable(id)],
            "the FIN waits until the bytes are read"
        );
        assert_eq!(net.host_read(id), b"bye");
        assert_eq!(
            net.take_events(),
            [
                NatEvent::TcpFin(id),
                NatEvent::TcpClosed { id, reset: false }
            ]
        );
        // The container got the ACK of its FIN: it is closed, not waiting.
        assert_eq!(net.c.tcp(h).state(), tcp::State::Closed);
        // The NAT closed first but keeps no TIME-WAIT: everything is gone.
        assert_eq!(net.nat.stats().tcp_active, 0);
        assert!(net.nat.conns.is_empty() && net.nat.tuples.is_empty());
        assert!(net.nat.neighbors.is_empty() && net.nat.timers.is_empty());
        assert_eq!(net.nat.sockets.iter().count(), 0);
        net.advance(Duration::from_secs(11));
        assert!(net.take_events().is_empty());
    }

    #[test]
    fn closed_connections_free_their_slot_at_once() {
        let mut lim = limits();
        lim.max_tcp = 1;
        let mut net = Net::new(true, lim);
        let mut last = None;
        for round in 0..3u16 {
            let h = net.c.listen(80);
            let id = net
                .nat
                .inbound_tcp(sa("203.0.113.7:40000"), sa("10.0.0.2:80"), C_MAC, net.now)
                .unwrap_or_else(|e| panic!("round {round}: {e}"));
            net.settle();
            net.nat.tcp_host_closed(id, net.now);
            net.settle();
            net.c.tcp(h).close();
            net.settle();
            assert_eq!(
                net.take_events(),
                [
                    NatEvent::TcpFin(id),
                    NatEvent::TcpClosed { id, reset: false }
                ]
            );
            assert_eq!(net.nat.stats().tcp_active, 0, "round {round}");
            net.c.sockets.remove(h);
            last = Some(id);
        }
        // The closed connection's socket waits in the pool and serves the
        // next one.
        assert_eq!(net.nat.socket_pool.len(), 1);
        // A live connection is never evicted.
        let (h, id) = net.inbound("203.0.113.8:40000", "10.0.0.2:80");
        assert_ne!(Some(id), last);
        net.settle();
        assert!(net.nat.socket_pool.is_empty());
        assert_eq!(net.c.tcp(h).state(), tcp::State::Established);
        assert_eq!(net.nat.tcp_write(id, b"again", net.now), 5);
        net.settle();
        assert_eq!(net.c.recv_all(h), b"again");
        let r = net
            .nat
            .inbound_tcp(sa("203.0.113.9:40000"), sa("10.0.0.2:80"), C_MAC, net.now);
        assert_eq!(r, Err(NatError::TcpTableFull(1)));
    }

    /// (SYN, ACK, payload length) of each segment the NAT sent.
    fn segments(frames: &[Vec<u8>]) -> Vec<(bool, bool, usize)> {
        frames
            .iter()
            .map(|f| {
                let pkt = etherparse::SlicedPacket::from_ethernet(f).unwrap();
                let Some(etherparse::TransportSlice::Tcp(t)) = pkt.transport else {
                    panic!("not TCP");
                };
                (t.syn(), t.ack(), t.payload().len())
            })
            .collect()
    }

    #[test]
    fn bytes_before_the_handshake_ride_on_its_ack() {
        let mut net = Net::new(true, limits());
        net.recorded = Some(Vec::new());
        let (h, id) = net.inbound("203.0.113.7:40000", "10.0.0.2:80");
        // The client's request came with its connection, before the
        // container answered the SYN: the NAT holds it.
        assert_eq!(
            net.nat.tcp_write(id, b"GET / HTTP/1.0\r\n\r\n", net.now),
            18
        );
        net.settle();
        assert_eq!(net.c.recv_all(h), b"GET / HTTP/1.0\r\n\r\n");
        // SYN, then the ACK of the SYN-ACK carrying the request: no bare
        // ACK before it.
        let segs = segments(net.recorded.as_ref().unwrap());
        assert_eq!(segs[..2], [(true, false, 0), (false, true, 18)], "{segs:?}");
        assert!(net.take_events().is_empty(), "nothing more was asked for");
        assert!(net.nat.early.is_empty());
    }

    #[test]
    fn bytes_before_the_handshake_past_the_hold_wait_for_writable() {
        let mut net = Net::new(true, limits());
        let (h, id) = net.inbound("203.0.113.7:40000", "10.0.0.2:80");
        // A period prime to the hold's size: a lost or repeated block shows.
        let data: Vec<u8> = (0..3 * EARLY_DATA).map(|i| (i % 251) as u8).collect();
        let held = net.nat.tcp_write(id, &data, net.now);
        assert_eq!(held, EARLY_DATA);
        // Full: nothing more until the container answers.
        assert_eq!(net.nat.tcp_write(id, &data[held..], net.now), 0);
        net.settle();
        assert_eq!(net.take_events(), [NatEvent::TcpWritable(id)]);
        let rest = net.nat.tcp_write(id, &data[held..], net.now);
        assert_eq!(rest, data.len() - held);
        net.settle();
        // The container's receive buffer is smaller: read as it comes.
        let mut got = Vec::new();
        for _ in 0..10 {
            got.extend(net.c.recv_all(h));
            net.settle();
        }
        assert_eq!(got.len(), data.len());
        assert!(got == data, "every byte, in order");
    }

    #[test]
    fn bytes_held_for_a_refused_connection_go_with_it() {
        let mut net = Net::new(true, limits());
        // Nothing listens on port 81: the container answers with RST.
        let id = net
            .nat
            .inbound_tcp(sa("203.0.113.7:40000"), sa("10.0.0.2:81"), C_MAC, net.now)
            .unwrap();
        assert_eq!(net.nat.tcp_write(id, b"hello", net.now), 5);
        net.settle();
        assert_eq!(net.take_events(), [NatEvent::TcpClosed { id, reset: true }]);
        assert!(net.nat.early.is_empty() && net.nat.conns.is_empty());
    }

    #[test]
    fn container_closing_first_is_reported_then_host_closes() {
        let mut net = Net::new(true, limits());
        let (h, id) = net.inbound("127.0.0.1:41000", "10.0.0.2:80");
        net.settle();
        net.c.tcp(h).close();
        net.settle();
        assert_eq!(net.take_events(), [NatEvent::TcpFin(id)]);
        // The host can still send until it closes too.
        assert_eq!(net.nat.tcp_write(id, b"answer", net.now), 6);
        net.nat.tcp_host_closed(id, net.now);
        net.settle();
        assert_eq!(net.c.recv_all(h), b"answer");
        assert_eq!(
            net.take_events(),
            [NatEvent::TcpClosed { id, reset: false }]
        );
        // The container closed first and holds the TIME-WAIT; the NAT is done,
        // and its gateway port is free again.
        assert_eq!(net.nat.stats().tcp_active, 0);
        assert!(net.nat.tcp_ports.is_empty());
    }

    #[test]
    fn inbound_tcp_to_a_closed_port_is_reset() {
        let mut net = Net::new(true, limits());
        let id = net
            .nat
            .inbound_tcp(sa("203.0.113.7:40000"), sa("10.0.0.2:81"), C_MAC, net.now)
            .unwrap();
        net.settle();
        assert_eq!(net.take_events(), [NatEvent::TcpClosed { id, reset: true }]);
        assert_eq!(net.nat.stats().tcp_active, 0);
    }

    #[test]
    fn host_to_container_backpressure() {
        let mut net = Net::new(true, limits());
        let (h, id) = net.inbound("203.0.113.7:40000", "10.0.0.2:80");
        net.settle();
        let data = pattern(256 * 1024, 1);
        let mut sent = 0;
        // The container does not read: the NAT takes its buffer's worth plus
        // what the container's window holds, then no more.
        for _ in 0..50 {
            sent += net.nat.tcp_write(id, &data[sent..], net.now);
            net.settle();
        }
        let buffered = limits().tcp_buffer + 8192;
        assert!(sent <= buffered, "took {sent}");
        assert!(sent >= buffered / 2, "took only {sent}");
        assert_eq!(net.nat.tcp_write(id, &data[sent..], net.now), 0);
        net.take_events();
        // The container reads: the NAT says when to write again.
        let mut got = Vec::new();
        while got.len() < data.len() {
            got.extend(net.c.recv_all(h));
            net.settle();
            let events = net.take_events();
            if sent < data.len() {
                assert!(events.contains(&NatEvent::TcpWritable(id)), "{events:?}");
                sent += net.nat.tcp_write(id, &data[sent..], net.now);
            }
        }
        assert_eq!(got, data);
    }

    #[test]
    fn container_to_host_backpressure_with_peek_and_consume() {
        let mut net = Net::new(true, limits());
        let (h, id) = net.inbound("203.0.113.7:40000", "10.0.0.2:80");
        net.settle();
        let data = pattern(200 * 1024, 2);
        let mut sent = 0;
        for _ in 0..50 {
            sent += net.c.tcp(h).send_slice(&data[sent..]).unwrap();
            net.settle();
        }
        // The host does not read: the container can push no more than the
        // NAT's buffer and its own.
        assert!(sent <= limits().tcp_buffer + 8192, "sent {sent}");
        assert_eq!(net.take_events(), [NatEvent::TcpReadable(id)]);
        let mut got = Vec::new();
        while got.len() < data.len() {
            // A host socket that takes at most 1000 bytes at a time.
            loop {
                let chunk = net.nat.tcp_peek(id);
                let n = chunk.len().min(1000);
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&chunk[..n]);
                net.nat.tcp_consume(id, n, net.now);
            }
            if sent < data.len() {
                sent += net.c.tcp(h).send_slice(&data[sent..]).unwrap();
            }
            net.settle();
        }
        assert_eq!(got, data);
        // TcpReadable came again each time the buffer had been drained.
        assert!(net
            .take_events()
            .iter()
            .all(|e| *e == NatEvent::TcpReadable(id)));
    }

    #[test]
    fn inbound_tcp_to_a_silent_container_times_out() {
        let now = Instant::now();
        let mut nat = Nat::new(config(true, limits()), now).unwrap();
        let mac = MacAddr([0x02, 0x42, 0x0a, 0, 0, 3]);
        let id = nat
            .inbound_tcp(sa("203.0.113.7:40000"), sa("10.0.0.3:80"), mac, now)
            .unwrap();
        let mut buf = [0u8; 2048];
        let (n, _) = nat.poll_transmit(now, &mut buf).expect("a SYN");
        assert_eq!(&buf[..6], &mac.0);
        assert!(n > ETH_LEN + 20);
        let timeout = limits().tcp_connect_timeout;
        let mut t = now;
        while t < now + timeout {
            nat.handle_timeout(t);
            while nat.poll_transmit(t, &mut buf).is_some() {}
            assert_eq!(nat.poll_event(), None, "{t:?}");
            t += Duration::from_secs(1);
        }
        nat.handle_timeout(now + timeout);
        assert_eq!(
            nat.poll_event(),
            Some(NatEvent::TcpClosed { id, reset: true })
        );
        assert_eq!(nat.stats().tcp_timed_out, 1);
        assert!(nat.conns.is_empty() && nat.neighbors.is_empty());
    }

    #[test]
    fn host_abort_resets_the_container() {
        let mut net = Net::new(true, limits());
        let (h, id) = net.inbound("203.0.113.7:40000", "10.0.0.2:80");
        net.settle();
        net.nat.tcp_abort(id, net.now);
        net.settle();
        assert_eq!(net.c.tcp(h).state(), tcp::State::Closed);
        assert_eq!(net.take_events(), [NatEvent::TcpClosed { id, reset: true }]);
        assert_eq!(net.nat.stats().tcp_active, 0);
        // The id is gone: calls on it are ignored.
        assert_eq!(net.nat.tcp_write(id, b"x", net.now), 0);
        assert_eq!(net.nat.tcp_read(id, &mut [0u8; 4], net.now), 0);
        net.nat.tcp_host_closed(id, net.now);
        net.nat.egress_connected(id, true, net.now);
        assert!(net.nat.poll_event().is_none());
    }

    #[test]
    fn container_reset_is_reported() {
        let mut net = Net::new(true, limits());
        let (h, id) = net.inbound("203.0.113.7:40000", "10.0.0.2:80");
        net.settle();
        net.c.tcp(h).abort();
        net.settle();
        assert_eq!(net.take_events(), [NatEvent::TcpClosed { id, reset: true }]);
        assert_eq!(net.nat.stats().tcp_active, 0);
    }

    #[test]
    fn idle_tcp_connections_are_reset() {
        let mut lim = limits();
        lim.tcp_idle = Duration::from_secs(60);
        let mut net = Net::new(true, lim);
        let (h, id) = net.inbound("203.0.113.7:40000", "10.0.0.2:80");
        net.settle();
        net.advance(Duration::from_secs(30));
        // Traffic restarts the clock.
        net.nat.tcp_write(id, b"ping", net.now);
        net.advance(Duration::from_secs(45));
        assert_eq!(net.c.tcp(h).state(), tcp::State::Established);
        assert!(net.take_events().is_empty());
        net.advance(Duration::from_secs(20));
        assert_eq!(net.c.tcp(h).state(), tcp::State::Closed);
        assert_eq!(net.take_events(), [NatEvent::TcpClosed { id, reset: true }]);
        assert_eq!(net.nat.stats().tcp_timed_out, 1);
        assert_eq!(net.nat.poll_timeout(net.now), None);
    }

    #[test]
    fn egress_tcp_carries_bytes_both_ways() {
        let mut net = Net::new(true, limits());
        let to = SocketAddr::new(OUTSIDE4.into(), 80);
        let (h, id) = net.egress(to, 40001);
        // The container sees the real peer.
        assert_eq!(
            SocketAddr::from(net.c.tcp(h).remote_endpoint().unwrap()),
            to
        );
        let up = pattern(100_000, 3);
        let down = pattern(150_000, 4);
        let (mut sent_up, mut sent_down) = (0, 0);
        let (mut got_up, mut got_down) = (Vec::new(), Vec::new());
        for _ in 0..10_000 {
            if got_up.len() == up.len() && got_down.len() == down.len() {
                break;
            }
            sent_up += net.c.tcp(h).send_slice(&up[sent_up..]).unwrap();
            sent_down += net.nat.tcp_write(id, &down[sent_down..], net.now);
            net.settle();
            got_up.extend(net.host_read(id));
            got_down.extend(net.c.recv_all(h));
        }
        assert_eq!(got_up, up);
        assert_eq!(got_down, down);
        assert_eq!(net.nat.stats().tcp_egress, 1);
    }

    /// A container with TSO hands the NAT super-frames, and the NAT hands
    /// it GSO super-frames cut at its MSS by its kernel (here the harness,
    /// with the same `offload::segment` the tunnel uses): the bytes arrive
    /// whole both ways.
    #[rstest]
    #[case::ipv4("198.51.100.9:80")]
    #[case::ipv6("[2001:db8:1::9]:443")]
    fn super_frames_both_ways(#[case] to: &str) {
        let mut net = Net::new(true, limits());
        net.tso = Some(crate::offload::Gro::new(true));
        let (h, id) = net.egress(sa(to), 40003);
        let up = pattern(300_000, 5);
        let down = pattern(300_000, 6);
        let (mut sent_up, mut sent_down) = (0, 0);
        let (mut got_up, mut got_down) = (Vec::new(), Vec::new());
        for _ in 0..10_000 {
            if got_up.len() == up.len() && got_down.len() == down.len() {
                break;
            }
            sent_up += net.c.tcp(h).send_slice(&up[sent_up..]).unwrap();
            sent_down += net.nat.tcp_write(id, &down[sent_down..], net.now);
            net.pump();
            got_up.extend(net.host_read(id));
            got_down.extend(net.c.recv_all(h));
            net.tick(Duration::from_millis(1));
        }
        let first_diff = |a: &[u8], b: &[u8]| a.iter().zip(b).position(|(x, y)| x != y);
        assert!(
            got_up == up,
            "up: {} of {} bytes, first difference at {:?}, {:?}",
            got_up.len(),
            up.len(),
            first_diff(&got_up, &up),
            net.nat.stats()
        );
        assert!(
            got_down == down,
            "down: {} of {} bytes, first difference at {:?}",
            got_down.len(),
            down.len(),
            first_diff(&got_down, &down)
        );
        assert!(net.super_in > 0, "no super-frame reached the NAT");
        assert!(
            net.largest_out > MTU + ETH_LEN,
            "largest {}",
            net.largest_out
        );
        assert_eq!(net.nat.stats().frames_bad_checksum, 0);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(24))]

        /// Whatever the sizes of the writes and reads on either side, with
        /// or without the container's TSO, over IPv4 or IPv6, host bytes
        /// copied in or written in place, both streams
        /// arrive whole and in order, and the connection ends with both
        /// FINs and one graceful `TcpClosed`.
        #[test]
        fn streams_arrive_whole_whatever_the_chunking(
            v6 in proptest::bool::ANY,
            tso in proptest::bool::ANY,
            up_len in 0usize..120_000,
            down_len in 0usize..120_000,
            container_chunk in 1usize..70_000,
            host_chunk in 1usize..70_000,
            host_read in 1usize..70_000,
            zero_copy in proptest::bool::ANY,
        ) {
            let mut net = Net::new(true, limits());
            if tso {
                net.tso = Some(crate::offload::Gro::new(true));
            }
            let to = if v6 { sa("[2001:db8:1::9]:443") } else { sa("198.51.100.9:80") };
            let (h, id) = net.egress(to, 40004);
            let up = pattern(up_len, 7);
            let down = pattern(down_len, 8);
            let (mut sent_up, mut sent_down) = (0, 0);
            let (mut got_up, mut got_down) = (Vec::new(), Vec::new());
            let (mut up_closed, mut down_closed) = (false, false);
            let mut events = Vec::new();
            for _ in 0..20_000 {
                if sent_up < up.len() {
                    let end = (sent_up + container_chunk).min(up.len());
                    sent_up += net.c.tcp(h).send_slice(&up[sent_up..end]).unwrap();
                } else if !up_closed {
                    net.c.tcp(h).close();
                    up_closed = true;
                }
                if sent_down < down.len() {
                    let end = (sent_down + host_chunk).min(down.len());
                    let src = &down[sent_down..end];
                    sent_down += if zero_copy {
                        // Straight into the send buffer, as from a socket.
                        let mut off = 0;
                        net.nat.tcp_write_with(id, net.now, |buf| {
                            let n = (src.len() - off).min(buf.len());
                            buf[..n].copy_from_slice(&src[off..off + n]);
                            off += n;
                            n
                        })
                    } else {
                        net.nat.tcp_write(id, src, net.now)
                    };
                } else if !down_closed {
                    net.nat.tcp_host_closed(id, net.now);
                    down_closed = true;
                }
                net.pump();
                // A host socket that takes at most `host_read` bytes a call.
                loop {
                    let chunk = net.nat.tcp_peek(id);
                    let n = chunk.len().min(host_read);
                    if n == 0 {
                        break;
                    }
                    got_up.extend_from_slice(&chunk[..n]);
                    net.nat.tcp_consume(id, n, net.now);
                }
                got_down.extend(net.c.recv_all(h));
                events.extend(net.take_events());
                if events.contains(&NatEvent::TcpClosed { id, reset: false }) {
                    break;
                }
                net.tick(Duration::from_millis(1));
            }
            proptest::prop_assert!(got_up == up, "up: {} of {}", got_up.len(), up.len());
            proptest::prop_assert!(got_down == down, "down: {} of {}", got_down.len(), down.len());
            proptest::prop_assert!(events.contains(&NatEvent::TcpFin(id)), "{events:?}");
            proptest::prop_assert_eq!(
                events.iter().filter(|e| matches!(e, NatEvent::TcpClosed { .. })).count(),
                1,
                "{:?}",
                events
            );
            proptest::prop_assert!(
                events.contains(&NatEvent::TcpClosed { id, reset: false }),
                "{:?}",
                events
            );
            proptest::prop_assert_eq!(net.nat.stats().frames_bad_checksum, 0);
        }
    }

    #[test]
    fn egress_ipv6() {
        let mut net = Net::new(true, limits());
        let to = sa("[2001:db8:1::9]:443");
        let (h, id) = net.egress(to, 40002);
        net.c.tcp(h).send_slice(b"GET").unwrap();
        net.settle();
        assert_eq!(net.host_read(id), b"GET");
        assert_eq!(
            SocketAddr::from(net.c.tcp(h).local_endpoint().unwrap()),
            SocketAddr::new(C6.into(), 40002)
        );
    }

    #[test]
    fn failed_egress_connect_resets_the_container() {
        let mut net = Net::new(true, limits());
        let (h, id) = net.egress_pending(SocketAddr::new(OUTSIDE4.into(), 81), 40003);
        net.nat.egress_connected(id, false, net.now);
        net.settle();
        assert_eq!(net.c.tcp(h).state(), tcp::State::Closed);
        assert_eq!(net.take_events(), [NatEvent::TcpClosed { id, reset: true }]);
        let s = net.nat.stats();
        assert_eq!((s.tcp_connect_failed, s.tcp_active), (1, 0));
        assert!(net.nat.neighbors.is_empty());
    }

    #[test]
    fn egress_connect_that_never_finishes_times_out() {
        let mut net = Net::new(true, limits());
        let (h, id) = net.egress_pending(SocketAddr::new(OUTSIDE4.into(), 82), 40004);
        // The container's retransmitted SYNs wait with the first.
        net.advance(Duration::from_secs(15));
        assert_eq!(net.c.tcp(h).state(), tcp::State::SynSent);
        assert!(net.take_events().is_empty());
        net.advance(Duration::from_secs(6));
        assert_eq!(net.c.tcp(h).state(), tcp::State::Closed);
        assert_eq!(net.take_events(), [NatEvent::TcpClosed { id, reset: true }]);
        assert_eq!(net.nat.stats().tcp_timed_out, 1);
        // A late answer from the host changes nothing.
        net.nat.egress_connected(id, true, net.now);
        assert!(net.nat.poll_event().is_none());
        assert_eq!(net.nat.stats().tcp_active, 0);
    }

    #[test]
    fn container_giving_up_on_a_pending_connect_is_reported() {
        let mut net = Net::new(true, limits());
        let (h, id) = net.egress_pending(SocketAddr::new(OUTSIDE4.into(), 83), 40005);
        // smoltcp sends RST when a SYN-SENT socket is aborted? It does not:
        // build the RST the way a kernel sends it.
        net.c.tcp(h).abort();
        let mut f = Vec::new();
        PacketBuilder::ethernet2(C_MAC.0, GW_MAC.0)
            .ipv4(C4.octets(), OUTSIDE4.octets(), 64)
            .tcp(40005, 83, 0, 0)
            .rst()
            .write(&mut f, &[])
            .unwrap();
        net.nat.handle_frame(&VnetHdr::NONE, &f, net.now);
        assert_eq!(
            net.nat.poll_event(),
            Some(NatEvent::TcpClosed { id, reset: true })
        );
        assert_eq!(net.nat.stats().tcp_active, 0);
    }

    #[test]
    fn tcp_flood_is_refused_with_rst() {
        let mut lim = limits();
        lim.max_tcp = 4;
        let mut net = Net::new(true, lim);
        let mut handles = Vec::new();
        for i in 0..5 {
            handles.push(
                net.c
                    .connect(SocketAddr::new(OUTSIDE4.into(), 80 + i), 41000 + i),
            );
        }
        net.settle();
        let ids: Vec<ConnId> = net
            .take_events()
            .into_iter()
            .map(|e| match e {
                NatEvent::EgressTcpConnect { id, .. } => id,
                e => panic!("{e:?}"),
            })
            .collect();
        assert_eq!(ids.len(), 4);
        assert_eq!(net.c.tcp(handles[4]).state(), tcp::State::Closed);
        assert_eq!(net.nat.stats().tcp_refused, 1);
        for id in &ids {
            net.nat.egress_connected(*id, true, net.now);
        }
        net.settle();
        for h in &handles[..4] {
            assert_eq!(net.c.tcp(*h).state(), tcp::State::Established);
        }
        // Published ports share the table.
        let r = net
            .nat
            .inbound_tcp(sa("203.0.113.7:40000"), sa("10.0.0.2:80"), C_MAC, net.now);
        assert_eq!(r, Err(NatError::TcpTableFull(4)));
    }

    #[test]
    fn syn_flood_is_bounded() {
        let now = Instant::now();
        let mut nat = Nat::new(config(true, limits()), now).unwrap();
        let dst = SocketAddr::new(OUTSIDE4.into(), 80);
        for i in 0..5000u16 {
            nat.handle_frame(&VnetHdr::NONE, &syn_frame(1024 + i, dst), now);
        }
        let s = nat.stats();
        assert_eq!(s.tcp_egress, limits().max_tcp_connecting as u64);
        assert_eq!(s.tcp_refused, 5000 - s.tcp_egress);
        assert_eq!(nat.conns.len(), limits().max_tcp_connecting);
        // The RSTs beyond the queue are dropped, not kept.
        assert_eq!(nat.tx.frames.len(), TX_QUEUE_FRAMES);
        assert!(s.frames_dropped > 0);
        let mut events = 0;
        while nat.poll_event().is_some() {
            events += 1;
        }
        assert_eq!(events, limits().max_tcp_connecting);
        // Every waiting SYN times out: RSTs and TcpClosed, tables empty.
        let later = now + limits().tcp_connect_timeout;
        nat.handle_timeout(later);
        let mut closed = 0;
        while let Some(e) = nat.poll_event() {
            assert!(matches!(e, NatEvent::TcpClosed { reset: true, .. }));
            closed += 1;
        }
        assert_eq!(closed, limits().max_tcp_connecting);
        assert!(nat.conns.is_empty() && nat.tuples.is_empty() && nat.timers.is_empty());
        assert_eq!(nat.connecting, 0);
    }
}
