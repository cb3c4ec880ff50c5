//! DNS over TCP on port 53: a small pool of listening smoltcp sockets,
//! RFC 1035 two-byte length framing, pipelined queries, bounded backlogs,
//! idle connections closed after [`TCP_IDLE_TIMEOUT`].

use std::time::{Duration, Instant};

use smoltcp::iface::SocketHandle;
use smoltcp::socket::tcp;

use super::upstream::Client;
use super::{Gateway, DNS_PORT, MAX_TCP_CONNECTIONS, TCP_IDLE_TIMEOUT};
use crate::dns::{Outcome, Transport};

/// After closing an idle connection, abort it if the peer has not finished
/// the close in this long.
const TCP_CLOSE_GRACE: Duration = Duration::from_secs(5);
/// Queries of one TCP connection in flight upstream before the gateway stops
/// reading from it.
const MAX_TCP_IN_FLIGHT: usize = 16;
/// Answer bytes queued for one TCP connection before the gateway stops
/// reading from it.
const MAX_TCP_TX_BACKLOG: usize = 64 * 1024;
/// Receive and send buffers of each TCP socket.
const TCP_SOCKET_BUFFER: usize = 8 * 1024;
/// A DNS message over TCP: two length bytes and up to 65535 bytes.
const MAX_TCP_MESSAGE: usize = 2 + u16::MAX as usize;

/// One TCP socket of the port-53 pool and the DNS stream state on it.
#[derive(Debug)]
pub(super) struct TcpConn {
    pub(super) handle: SocketHandle,
    /// Bumped each time the socket goes back to listening, so a late upstream
    /// reply never reaches the next client of the same socket.
    pub(super) generation: u64,
    /// Bytes received, not yet a whole message.
    pub(super) rx: Vec<u8>,
    /// Framed answers not yet accepted by the socket, from `tx_off`.
    pub(super) tx: Vec<u8>,
    pub(super) tx_off: usize,
    /// Queries forwarded upstream whose reply is still due.
    pub(super) in_flight: usize,
    /// Connected (not listening) as of the last service.
    pub(super) active: bool,
    pub(super) last_activity: Instant,
    pub(super) closing_since: Option<Instant>,
}

impl TcpConn {
    pub(super) fn new(handle: SocketHandle, generation: u64, now: Instant) -> TcpConn {
        TcpConn {
            handle,
            generation,
            rx: Vec::new(),
            tx: Vec::new(),
            tx_off: 0,
            in_flight: 0,
            active: false,
            last_activity: now,
            closing_since: None,
        }
    }

    /// When the connection's own timer (idle close, close grace) fires.
    /// `None` while it waits on something with a timer of its own: an
    /// upstream reply, or smoltcp sending queued answers.
    pub(super) fn deadline(&self) -> Option<Instant> {
        if !self.active {
            return None;
        }
        match self.closing_since {
            Some(t) => Some(t + TCP_CLOSE_GRACE),
            None if self.in_flight == 0 && self.tx.is_empty() => {
                Some(self.last_activity + TCP_IDLE_TIMEOUT)
            }
            None => None,
        }
    }
}

impl Gateway {
    pub(super) fn add_listener(&mut self, now: Instant) {
        let mut socket = tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0; TCP_SOCKET_BUFFER]),
            tcp::SocketBuffer::new(vec![0; TCP_SOCKET_BUFFER]),
        );
        if socket.listen(DNS_PORT).is_err() {
            return;
        }
        let handle = self.sockets.add(socket);
        let generation = self.rng.next_u64();
        self.tcp.push(TcpConn::new(handle, generation, now));
    }

    /// Reads queries from, and writes answers to, every TCP connection;
    /// closes idle ones, re-arms closed ones, keeps a spare listener.
    pub(super) fn service_tcp(&mut self, now: Instant) {
        for slot in 0..self.tcp.len() {
            self.service_conn(slot, now);
        }
        let listening = self
            .tcp
            .iter()
            .filter(|c| self.sockets.get::<tcp::Socket>(c.handle).is_listening())
            .count();
        if listening == 0 && self.tcp.len() < MAX_TCP_CONNECTIONS {
            self.add_listener(now);
        }
    }

    /// Services one connection until it makes no more progress (bounded:
    /// each round either consumes received bytes or stops).
    pub(super) fn service_conn(&mut self, slot: usize, now: Instant) {
        for _ in 0..64 {
            if !self.service_conn_once(slot, now) {
                break;
            }
        }
    }

    /// One round of reading, answering and writing; true when it consumed
    /// received bytes and another round may find more.
    pub(super) fn service_conn_once(&mut self, slot: usize, now: Instant) -> bool {
        let conn = &mut self.tcp[slot];
        let socket = self.sockets.get_mut::<tcp::Socket>(conn.handle);
        match socket.state() {
            tcp::State::Listen | tcp::State::SynReceived => return false,
            tcp::State::TimeWait => {
                // smoltcp times TIME-WAIT itself; nothing left to do here.
                conn.active = false;
                conn.closing_since = None;
                return false;
            }
            tcp::State::Closed => {
                if socket.listen(DNS_PORT).is_ok() {
                    let generation = conn.generation.wrapping_add(1);
                    *conn = TcpConn::new(conn.handle, generation, now);
                }
                return false;
            }
            _ => {}
        }
        if !conn.active {
            conn.active = true;
            conn.last_activity = now;
            self.stats.tcp_connections += 1;
        }

        // Read while there is room and the client is not too far ahead.
        let mut chunk = [0u8; 2048];
        let mut progress = false;
        while socket.can_recv()
            && conn.rx.len() < MAX_TCP_MESSAGE
            && conn.in_flight < MAX_TCP_IN_FLIGHT
            && conn.tx.len() - conn.tx_off < MAX_TCP_TX_BACKLOG
        {
            let room = (MAX_TCP_MESSAGE - conn.rx.len()).min(chunk.len());
            match socket.recv_slice(&mut chunk[..room]) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    conn.rx.extend_from_slice(&chunk[..n]);
                    conn.last_activity = now;
                    progress = true;
                }
            }
            if next_message_len(&conn.rx).is_some() {
                break;
            }
        }

        // Answer whole messages.
        let mut rx = std::mem::take(&mut self.tcp[slot].rx);
        let mut consumed = 0;
        while let Some(len) = next_message_len(&rx[consumed..]) {
            let conn = &self.tcp[slot];
            if conn.in_flight >= MAX_TCP_IN_FLIGHT
                || conn.tx.len() - conn.tx_off >= MAX_TCP_TX_BACKLOG
            {
                break;
            }
            let query = &rx[consumed + 2..consumed + 2 + len];
            self.tcp_query(slot, query, now);
            consumed += 2 + len;
        }
        rx.drain(..consumed);
        self.tcp[slot].rx = rx;

        // Write answers, close when done.
        let conn = &mut self.tcp[slot];
        let socket = self.sockets.get_mut::<tcp::Socket>(conn.handle);
        while conn.tx_off < conn.tx.len() && socket.can_send() {
            match socket.send_slice(&conn.tx[conn.tx_off..]) {
                Ok(0) | Err(_) => break,
                Ok(n) => conn.tx_off += n,
            }
        }
        if conn.tx_off == conn.tx.len() {
            conn.tx.clear();
            conn.tx_off = 0;
        }
        let idle = conn.tx.is_empty() && conn.in_flight == 0;
        match conn.closing_since {
            Some(t) if now >= t + TCP_CLOSE_GRACE => socket.abort(),
            Some(_) => {}
            None if idle && !socket.may_recv() => {
                // The client closed its side and has all its answers.
                socket.close();
                conn.closing_since = Some(now);
            }
            None if idle && now >= conn.last_activity + TCP_IDLE_TIMEOUT => {
                socket.close();
                conn.closing_since = Some(now);
            }
            None => {}
        }
        progress || consumed > 0
    }

    pub(super) fn tcp_query(&mut self, slot: usize, query: &[u8], now: Instant) {
        self.stats.dns_tcp_queries += 1;
        let mut buf = std::mem::take(&mut self.scratch);
        if buf.len() < MAX_TCP_MESSAGE {
            buf.resize(MAX_TCP_MESSAGE, 0);
        }
        let zone = self.zone.load();
        let before = self.responder.stats();
        let outcome = self
            .responder
            .handle_query(&zone, query, Transport::Tcp, &mut buf[2..]);
        self.count_responder(before);
        match outcome {
            Outcome::Answered(n) => {
                buf[..2].copy_from_slice(&(n as u16).to_be_bytes());
                self.tcp[slot].tx.extend_from_slice(&buf[..2 + n]);
            }
            Outcome::Forward { max_reply } => {
                let generation = self.tcp[slot].generation;
                self.forward(query, Client::Tcp { slot, generation }, max_reply, now);
            }
            Outcome::Ignore => {}
        }
        self.scratch = buf;
    }
}

/// Length of the first whole length-prefixed message in `buf`.
pub(super) fn next_message_len(buf: &[u8]) -> Option<usize> {
    let len = usize::from(u16::from_be_bytes([*buf.first()?, *buf.get(1)?]));
    (buf.len() >= 2 + len).then_some(len)
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::*;
    use smoltcp::socket::tcp;

    // ---- DNS over TCP, against smoltcp clients wired back to back ----

    /// A container with a smoltcp stack and one TCP socket.
    struct Peer {
        iface: Interface,
        wire: Wire,
        sockets: SocketSet<'static>,
        tcp: SocketHandle,
    }

    impl Peer {
        fn new(host: u8, epoch: Instant) -> Peer {
            let mut wire = Wire::default();
            let mac = EthernetAddress([0x02, 0x42, 0x0a, 0, 0, host]);
            let mut cfg = IfaceConfig::new(HardwareAddress::Ethernet(mac));
            cfg.random_seed = u64::from(host);
            let mut iface = Interface::new(cfg, &mut wire, smol_instant(epoch, epoch));
            iface.update_ip_addrs(|a| {
                a.push(IpCidr::new(IpAddress::v4(10, 0, 0, host), 24))
                    .unwrap();
            });
            let mut sockets = SocketSet::new(Vec::new());
            let tcp = sockets.add(tcp::Socket::new(
                tcp::SocketBuffer::new(vec![0; 8192]),
                tcp::SocketBuffer::new(vec![0; 8192]),
            ));
            Peer {
                iface,
                wire,
                sockets,
                tcp,
            }
        }

        fn connect(&mut self, port: u16) {
            let s = self.sockets.get_mut::<tcp::Socket>(self.tcp);
            s.connect(self.iface.context(), (IpAddress::Ipv4(GW4), 53), port)
                .unwrap();
        }

        fn socket(&mut self) -> &mut tcp::Socket<'static> {
            self.sockets.get_mut::<tcp::Socket>(self.tcp)
        }

        fn send_query(&mut self, query: &[u8]) {
            let mut framed = (query.len() as u16).to_be_bytes().to_vec();
            framed.extend_from_slice(query);
            assert_eq!(self.socket().send_slice(&framed).unwrap(), framed.len());
        }

        /// Every whole length-prefixed message received so far.
        fn answers(&mut self, acc: &mut Vec<u8>) -> Vec<Message> {
            let mut buf = [0u8; 4096];
            while let Ok(n) = self.socket().recv_slice(&mut buf) {
                if n == 0 {
                    break;
                }
                acc.extend_from_slice(&buf[..n]);
            }
            let mut out = Vec::new();
            while let Some(len) = next_message_len(acc) {
                out.push(Message::from_vec(&acc[2..2 + len]).unwrap());
                acc.drain(..2 + len);
            }
            out
        }
    }

    /// Moves frames between the peers and the gateway until quiet (every
    /// frame from the gateway reaches every peer, as on a flooding bridge).
    fn pump(gw: &mut Gateway, peers: &mut [&mut Peer], epoch: Instant, now: Instant) {
        let mut buf = [0u8; 2048];
        for _ in 0..200 {
            let mut moved = false;
            for p in peers.iter_mut() {
                p.iface
                    .poll(smol_instant(epoch, now), &mut p.wire, &mut p.sockets);
                while let Some(f) = p.wire.tx.pop_front() {
                    gw.handle_frame(&f, now);
                    moved = true;
                }
            }
            while let Some(n) = gw.poll_transmit(now, &mut buf) {
                for p in peers.iter_mut() {
                    p.wire.rx.push_back(buf[..n].to_vec());
                }
                moved = true;
            }
            if !moved {
                return;
            }
        }
        panic!("the link never went quiet");
    }

    #[test]
    fn dns_over_tcp_answers_and_keeps_accepting() {
        let epoch = Instant::now();
        let mut gw = gateway(vec![up(1)], epoch);
        let mut now = epoch;
        for round in 0..3u16 {
            let mut peer = Peer::new(2, epoch);
            peer.connect(50000 + round);
            pump(&mut gw, &mut [&mut peer], epoch, now);
            assert_eq!(
                peer.socket().state(),
                tcp::State::Established,
                "round {round}"
            );
            // Two pipelined queries in one segment.
            peer.send_query(&dns_query(100 + round, "web.", RecordType::A));
            peer.send_query(&dns_query(200 + round, "pool.", RecordType::A));
            pump(&mut gw, &mut [&mut peer], epoch, now);
            let mut acc = Vec::new();
            let answers = peer.answers(&mut acc);
            assert_eq!(answers.len(), 2);
            assert_eq!(answers[0].metadata.id, 100 + round);
            assert_eq!(answer_addrs(&answers[0]), ["10.0.0.5"]);
            assert_eq!(answers[1].metadata.id, 200 + round);
            assert_eq!(answers[1].answers.len(), 3);
            // The client closes; the gateway finishes the close and listens
            // again.
            peer.socket().close();
            pump(&mut gw, &mut [&mut peer], epoch, now);
            now += Duration::from_secs(1);
            pump(&mut gw, &mut [&mut peer], epoch, now);
        }
        assert_eq!(gw.stats().tcp_connections, 3);
        assert_eq!(gw.stats().dns_tcp_queries, 6);
        assert!(gw.tcp.len() <= INITIAL_TCP_LISTENERS + 1);
    }

    #[test]
    fn two_tcp_clients_at_once_and_forwarding_over_tcp() {
        let epoch = Instant::now();
        let mut gw = gateway(vec![up(1)], epoch);
        let now = epoch;
        let mut a = Peer::new(2, epoch);
        let mut b = Peer::new(3, epoch);
        a.connect(50001);
        b.connect(50002);
        pump(&mut gw, &mut [&mut a, &mut b], epoch, now);
        assert_eq!(a.socket().state(), tcp::State::Established);
        assert_eq!(b.socket().state(), tcp::State::Established);

        a.send_query(&dns_query(1, "outside.example.", RecordType::A));
        b.send_query(&dns_query(2, "frontend.", RecordType::AAAA));
        pump(&mut gw, &mut [&mut a, &mut b], epoch, now);
        let (mut acc_a, mut acc_b) = (Vec::new(), Vec::new());
        let got_b = b.answers(&mut acc_b);
        assert_eq!(got_b.len(), 1);
        assert_eq!(got_b[0].metadata.id, 2);
        assert_eq!(answer_addrs(&got_b[0]), ["fd00::5"]);
        assert!(a.answers(&mut acc_a).is_empty(), "a waits for upstream");

        // Upstream answers a's query; a gets it over its connection.
        let mut out = [0u8; 512];
        let (to, n) = gw.poll_upstream(&mut out).unwrap();
        assert_eq!(to, up(1));
        let mut reply = Message::from_vec(&out[..n]).unwrap();
        reply.metadata.message_type = MessageType::Response;
        reply.add_answer(hickory_proto::rr::Record::from_rdata(
            Name::from_ascii("outside.example.").unwrap(),
            60,
            RData::A(hickory_proto::rr::rdata::A(Ipv4Addr::new(198, 51, 100, 7))),
        ));
        gw.handle_upstream(up(1), &reply.to_vec().unwrap(), now);
        pump(&mut gw, &mut [&mut a, &mut b], epoch, now);
        let got_a = a.answers(&mut acc_a);
        assert_eq!(got_a.len(), 1);
        assert_eq!(got_a[0].metadata.id, 1);
        assert_eq!(answer_addrs(&got_a[0]), ["198.51.100.7"]);

        // A third client while both are connected: the pool grows.
        let mut c = Peer::new(4, epoch);
        c.connect(50003);
        pump(&mut gw, &mut [&mut a, &mut b, &mut c], epoch, now);
        assert_eq!(c.socket().state(), tcp::State::Established);
        assert_eq!(gw.stats().tcp_connections, 3);
    }

    #[test]
    fn idle_tcp_connections_are_closed() {
        let epoch = Instant::now();
        let mut gw = gateway(vec![], epoch);
        let mut peer = Peer::new(2, epoch);
        peer.connect(50010);
        pump(&mut gw, &mut [&mut peer], epoch, epoch);
        assert_eq!(peer.socket().state(), tcp::State::Established);
        let deadline = gw.poll_timeout(epoch).unwrap();
        assert_eq!(deadline, epoch + TCP_IDLE_TIMEOUT);
        gw.handle_timeout(deadline);
        pump(&mut gw, &mut [&mut peer], epoch, deadline);
        // The gateway sent its FIN: the client can no longer receive.
        assert!(!peer.socket().may_recv());
        peer.socket().close();
        pump(&mut gw, &mut [&mut peer], epoch, deadline);
        let later = deadline + Duration::from_secs(1);
        gw.handle_timeout(later);
        pump(&mut gw, &mut [&mut peer], epoch, later);
        // No timer left that would spin the daemon.
        if let Some(t) = gw.poll_timeout(later) {
            assert!(t > later, "{t:?} <= {later:?}");
        }
    }
}
