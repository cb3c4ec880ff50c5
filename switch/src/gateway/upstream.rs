//! Names outside the network's zone, forwarded to the upstream resolvers:
//! a fresh transaction id per query, the next upstream after a timeout or
//! a failure, the client's id restored in the reply, SERVFAIL when every
//! upstream timed out and REFUSED on networks without upstreams.

use std::net::SocketAddr;
use std::time::Instant;

use super::{Gateway, ReplyPath, MAX_FORWARDED_QUERY, MAX_PENDING_UPSTREAM, UDP_HEADER_LEN};
use crate::dns::{self, ErrorReply, Transport};

/// Tries at finding an unused upstream transaction id.
const ID_TRIES: usize = 16;

/// The client a forwarded query answers to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Client {
    Udp { path: ReplyPath, port: u16 },
    Tcp { slot: usize, generation: u64 },
}

/// A query forwarded upstream, waiting for its reply.
#[derive(Debug)]
pub(super) struct Pending {
    pub(super) client: Client,
    pub(super) client_id: u16,
    /// The query as sent upstream (our transaction id).
    pub(super) query: Vec<u8>,
    /// Index into the upstreams of the one asked last.
    pub(super) attempt: usize,
    pub(super) deadline: Instant,
    pub(super) max_reply: usize,
}

impl Gateway {
    /// Copies the next datagram for an upstream resolver into `out`; returns
    /// where to send it and its length. The daemon sends it from a UDP
    /// socket of this gateway and feeds what that socket receives to
    /// [`Gateway::handle_upstream`].
    pub fn poll_upstream(&mut self, out: &mut [u8]) -> Option<(SocketAddr, usize)> {
        while let Some(id) = self.to_upstream.pop_front() {
            let Some(p) = self.pending.get(&id) else {
                continue;
            };
            let Some(&to) = self.upstreams.get(p.attempt) else {
                continue; // the list shrank; the deadline fails the query
            };
            let n = p.query.len();
            if n > out.len() {
                continue;
            }
            out[..n].copy_from_slice(&p.query);
            return Some((to, n));
        }
        None
    }

    /// Takes a datagram received on the upstream socket.
    pub fn handle_upstream(&mut self, from: SocketAddr, datagram: &[u8], now: Instant) {
        let Some(id) = dns::message_id(datagram).filter(|_| dns::is_response(datagram)) else {
            self.stats.upstream_dropped += 1;
            return;
        };
        let Some(p) = self.pending.get(&id) else {
            self.stats.upstream_dropped += 1;
            return;
        };
        let asked = &self.upstreams[..(p.attempt + 1).min(self.upstreams.len())];
        if !asked.contains(&from) || !dns::same_question(&p.query, datagram) {
            self.stats.upstream_dropped += 1;
            return;
        }
        let rcode = dns::response_code_low(datagram);
        let failed = matches!(rcode, Some(dns::RCODE_SERVFAIL | dns::RCODE_REFUSED));
        if failed && p.attempt + 1 < self.upstreams.len() {
            self.retry(id, now);
            return;
        }
        let Some(p) = self.remove_pending(id) else {
            return;
        };
        self.stats.dns_upstream_answered += 1;
        let mut reply = std::mem::take(&mut self.scratch);
        reply.clear();
        if datagram.len() <= p.max_reply {
            reply.extend_from_slice(datagram);
        } else {
            reply.resize(p.max_reply, 0);
            match dns::truncate_reply(datagram, p.max_reply, &mut reply) {
                Some(n) => reply.truncate(n),
                None => reply.clear(),
            }
        }
        if !reply.is_empty() {
            dns::set_message_id(&mut reply, p.client_id);
            self.deliver(p.client, &reply, now);
        }
        self.scratch = reply;
    }

    pub(super) fn forward(&mut self, query: &[u8], client: Client, max_reply: usize, now: Instant) {
        let Some(client_id) = dns::message_id(query) else {
            return;
        };
        if self.upstreams.is_empty() {
            self.fail(client, query, client_id, ErrorReply::Refused, now);
            return;
        }
        if self.pending.len() >= MAX_PENDING_UPSTREAM || query.len() > MAX_FORWARDED_QUERY {
            self.stats.dns_pending_overflow += 1;
            self.fail(client, query, client_id, ErrorReply::ServFail, now);
            return;
        }
        let Some(id) = self.fresh_id() else {
            self.stats.dns_pending_overflow += 1;
            self.fail(client, query, client_id, ErrorReply::ServFail, now);
            return;
        };
        let mut q = query.to_vec();
        dns::set_message_id(&mut q, id);
        let deadline = now + self.upstream_timeout;
        if let Client::Tcp { slot, generation } = client {
            if let Some(c) = self
                .tcp
                .get_mut(slot)
                .filter(|c| c.generation == generation)
            {
                c.in_flight += 1;
            }
        }
        self.pending.insert(
            id,
            Pending {
                client,
                client_id,
                query: q,
                attempt: 0,
                deadline,
                max_reply,
            },
        );
        self.deadlines.insert((deadline, id));
        self.to_upstream.push_back(id);
        self.stats.dns_forwarded += 1;
    }

    pub(super) fn fresh_id(&mut self) -> Option<u16> {
        (0..ID_TRIES)
            .map(|_| self.rng.next_u64() as u16)
            .find(|id| !self.pending.contains_key(id))
    }

    /// Sends a pending query to the next upstream.
    pub(super) fn retry(&mut self, id: u16, now: Instant) {
        let deadline = now + self.upstream_timeout;
        let Some(p) = self.pending.get_mut(&id) else {
            return;
        };
        self.deadlines.remove(&(p.deadline, id));
        p.attempt += 1;
        p.deadline = deadline;
        self.deadlines.insert((deadline, id));
        self.to_upstream.push_back(id);
        self.stats.upstream_retries += 1;
    }

    pub(super) fn remove_pending(&mut self, id: u16) -> Option<Pending> {
        let p = self.pending.remove(&id)?;
        self.deadlines.remove(&(p.deadline, id));
        if let Client::Tcp { slot, generation } = p.client {
            if let Some(c) = self
                .tcp
                .get_mut(slot)
                .filter(|c| c.generation == generation)
            {
                c.in_flight = c.in_flight.saturating_sub(1);
            }
        }
        Some(p)
    }

    /// Answers `query` with SERVFAIL or REFUSED to `client`.
    pub(super) fn fail(
        &mut self,
        client: Client,
        query: &[u8],
        client_id: u16,
        error: ErrorReply,
        now: Instant,
    ) {
        match error {
            ErrorReply::ServFail => self.stats.dns_failed += 1,
            ErrorReply::Refused => self.stats.dns_refused += 1,
        }
        let transport = match client {
            Client::Udp { path, .. } => Transport::Udp {
                max_payload: self.max_udp_payload(path.client_ip) as u16,
            },
            Client::Tcp { .. } => Transport::Tcp,
        };
        let mut buf = std::mem::take(&mut self.scratch);
        buf.clear();
        buf.resize(dns::MIN_UDP_PAYLOAD.into(), 0);
        if let Some(n) = self
            .responder
            .reply_error(query, error, transport, &mut buf)
        {
            buf.truncate(n);
            dns::set_message_id(&mut buf, client_id);
            self.deliver(client, &buf, now);
        }
        self.scratch = buf;
    }

    /// Sends a DNS message to a client over its transport.
    pub(super) fn deliver(&mut self, client: Client, msg: &[u8], now: Instant) {
        match client {
            Client::Udp { path, port } => {
                if msg.len() > self.max_udp_payload(path.client_ip) {
                    return;
                }
                let Some(mut buf) = self.tx.alloc() else {
                    return;
                };
                let hdr = path.headers_len(UDP_HEADER_LEN);
                buf.resize(hdr, 0);
                buf.extend_from_slice(msg);
                let id = self.next_ip_id();
                self.commit_udp(buf, path.repr(self.mac, id), port);
            }
            Client::Tcp { slot, generation } => {
                let Some(conn) = self.tcp.get_mut(slot) else {
                    return;
                };
                if conn.generation != generation
                    || !conn.active
                    || msg.len() > usize::from(u16::MAX)
                {
                    return;
                }
                conn.tx.extend_from_slice(&(msg.len() as u16).to_be_bytes());
                conn.tx.extend_from_slice(msg);
                self.service_tcp(now);
                self.poll_iface(None, now);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;

    #[test]
    fn unknown_names_are_forwarded_and_the_reply_relayed() {
        let now = Instant::now();
        let mut gw = gateway(vec![up(1), up(2)], now);
        let query = dns_query(0x1111, "example.com.", RecordType::A);
        gw.handle_frame(&udp_frame(false, 40001, &query), now);
        assert!(drain(&mut gw, now).is_empty());
        let mut out = [0u8; 512];
        let (to, n) = gw.poll_upstream(&mut out).unwrap();
        assert_eq!(to, up(1));
        let sent = out[..n].to_vec();
        assert_eq!(&sent[2..], &query[2..], "only the id changes");
        let upstream_id = dns::message_id(&sent).unwrap();
        assert!(gw.poll_upstream(&mut out).is_none());

        // The upstream's reply.
        let mut reply = Message::from_vec(&sent).unwrap();
        reply.metadata.message_type = MessageType::Response;
        reply.metadata.recursion_available = true;
        reply.add_answer(hickory_proto::rr::Record::from_rdata(
            Name::from_ascii("example.com.").unwrap(),
            300,
            RData::A(hickory_proto::rr::rdata::A(Ipv4Addr::new(93, 184, 215, 14))),
        ));
        let reply = reply.to_vec().unwrap();

        // From the wrong address, with a wrong id, for another question, or
        // not a response: dropped and counted.
        gw.handle_upstream(up(9), &reply, now);
        let mut wrong_id = reply.clone();
        dns::set_message_id(&mut wrong_id, upstream_id.wrapping_add(1));
        gw.handle_upstream(up(1), &wrong_id, now);
        let mut other = dns_query(upstream_id, "example.org.", RecordType::A);
        other[2] |= 0x80;
        gw.handle_upstream(up(1), &other, now);
        gw.handle_upstream(up(1), &sent, now);
        gw.handle_upstream(up(1), &[1, 2, 3], now);
        assert_eq!(gw.stats().upstream_dropped, 5);
        assert!(drain(&mut gw, now).is_empty());

        gw.handle_upstream(up(1), &reply, now);
        let frames = drain(&mut gw, now);
        assert_eq!(frames.len(), 1);
        let msg = udp_answer(&frames[0], false, 40001);
        assert_eq!(msg.metadata.id, 0x1111);
        assert_eq!(answer_addrs(&msg), ["93.184.215.14"]);
        let s = gw.stats();
        assert_eq!((s.dns_forwarded, s.dns_upstream_answered), (1, 1));
        // Nothing pending: no timer.
        assert_eq!(gw.poll_timeout(now), None);
        // A duplicate reply finds nothing pending.
        gw.handle_upstream(up(1), &reply, now);
        assert!(drain(&mut gw, now).is_empty());
        assert_eq!(gw.stats().upstream_dropped, 6);
    }

    #[test]
    fn upstream_timeouts_try_the_next_then_servfail() {
        let start = Instant::now();
        let mut gw = gateway(vec![up(1), up(2)], start);
        let query = dns_query(0x2222, "slow.example.", RecordType::AAAA);
        gw.handle_frame(&udp_frame(true, 40002, &query), start);
        let mut out = [0u8; 512];
        assert_eq!(gw.poll_upstream(&mut out).unwrap().0, up(1));
        assert_eq!(gw.poll_timeout(start), Some(start + TIMEOUT));

        // Not yet.
        gw.handle_timeout(start + TIMEOUT - Duration::from_millis(1));
        assert!(gw.poll_upstream(&mut out).is_none());

        let t1 = start + TIMEOUT;
        gw.handle_timeout(t1);
        let (to, n) = gw.poll_upstream(&mut out).unwrap();
        assert_eq!(to, up(2));
        assert_eq!(&out[2..n], &query[2..]);
        assert!(drain(&mut gw, t1).is_empty());
        assert_eq!(gw.poll_timeout(t1), Some(t1 + TIMEOUT));

        // A late reply from the first upstream is still taken... but here
        // nobody answers.
        let t2 = t1 + TIMEOUT;
        gw.handle_timeout(t2);
        let frames = drain(&mut gw, t2);
        assert_eq!(frames.len(), 1);
        let msg = udp_answer(&frames[0], true, 40002);
        assert_eq!(msg.metadata.id, 0x2222);
        assert_eq!(msg.metadata.response_code, ResponseCode::ServFail);
        assert_eq!(msg.queries[0].name().to_ascii(), "slow.example.");
        let s = gw.stats();
        assert_eq!((s.dns_failed, s.upstream_retries), (1, 1));
        assert!(gw.poll_upstream(&mut out).is_none());
    }

    #[test]
    fn servfail_from_one_upstream_asks_the_next() {
        let now = Instant::now();
        let mut gw = gateway(vec![up(1), up(2)], now);
        let query = dns_query(7, "flaky.example.", RecordType::A);
        gw.handle_frame(&udp_frame(false, 40003, &query), now);
        let mut out = [0u8; 512];
        let (_, n) = gw.poll_upstream(&mut out).unwrap();
        let mut fail = Message::from_vec(&out[..n]).unwrap();
        fail.metadata.message_type = MessageType::Response;
        fail.metadata.response_code = ResponseCode::ServFail;
        gw.handle_upstream(up(1), &fail.to_vec().unwrap(), now);
        assert!(drain(&mut gw, now).is_empty());
        let (to, _) = gw.poll_upstream(&mut out).unwrap();
        assert_eq!(to, up(2));
        // The second one's SERVFAIL is the last word.
        gw.handle_upstream(up(2), &fail.to_vec().unwrap(), now);
        let frames = drain(&mut gw, now);
        let msg = udp_answer(&frames[0], false, 40003);
        assert_eq!(msg.metadata.response_code, ResponseCode::ServFail);
        assert_eq!(msg.metadata.id, 7);
    }

    #[test]
    fn internal_network_refuses_and_never_forwards() {
        let now = Instant::now();
        let mut gw = gateway(vec![], now);
        let msg = ask(&mut gw, false, 9, "example.com.", RecordType::A);
        assert_eq!(msg.metadata.response_code, ResponseCode::Refused);
        assert_eq!(msg.metadata.id, 9);
        assert!(gw.poll_upstream(&mut [0u8; 512]).is_none());
        assert_eq!(gw.stats().dns_refused, 1);
        // Local names still resolve.
        let msg = ask(&mut gw, false, 10, "web.", RecordType::A);
        assert_eq!(answer_addrs(&msg), ["10.0.0.5"]);
    }

    #[test]
    fn pending_queries_are_bounded() {
        let now = Instant::now();
        let mut gw = gateway(vec![up(1)], now);
        for i in 0..MAX_PENDING_UPSTREAM as u16 {
            let q = dns_query(i, "a.example.", RecordType::A);
            gw.handle_frame(&udp_frame(false, 1000 + i, &q), now);
        }
        assert!(drain(&mut gw, now).is_empty());
        let q = dns_query(0xffff, "b.example.", RecordType::A);
        gw.handle_frame(&udp_frame(false, 999, &q), now);
        let frames = drain(&mut gw, now);
        assert_eq!(frames.len(), 1);
        let msg = udp_answer(&frames[0], false, 999);
        assert_eq!(msg.metadata.response_code, ResponseCode::ServFail);
        assert_eq!(gw.stats().dns_pending_overflow, 1);
        let mut out = [0u8; 512];
        let mut sent = 0;
        while gw.poll_upstream(&mut out).is_some() {
            sent += 1;
        }
        assert_eq!(sent, MAX_PENDING_UPSTREAM);
        // All time out at once: the transmit queue bounds what is queued.
        gw.handle_timeout(now + TIMEOUT);
        assert_eq!(drain(&mut gw, now + TIMEOUT).len(), TX_QUEUE_FRAMES);
        assert_eq!(gw.stats().dns_failed, MAX_PENDING_UPSTREAM as u64 + 1);
        assert!(gw.stats().frames_dropped > 0);
        assert_eq!(gw.poll_timeout(now + TIMEOUT), None);
    }

    #[test]
    fn oversized_upstream_reply_is_truncated_for_the_client() {
        let now = Instant::now();
        let mut gw = gateway(vec![up(1)], now);
        let query = dns_query(5, "big.example.", RecordType::A);
        gw.handle_frame(&udp_frame(false, 40004, &query), now);
        let mut out = [0u8; 512];
        let (_, n) = gw.poll_upstream(&mut out).unwrap();
        let mut reply = Message::from_vec(&out[..n]).unwrap();
        reply.metadata.message_type = MessageType::Response;
        for i in 0..60u8 {
            reply.add_answer(hickory_proto::rr::Record::from_rdata(
                Name::from_ascii("big.example.").unwrap(),
                300,
                RData::A(hickory_proto::rr::rdata::A(Ipv4Addr::new(10, 9, 0, i))),
            ));
        }
        let reply = reply.to_vec().unwrap();
        assert!(reply.len() > 512);
        gw.handle_upstream(up(1), &reply, now);
        let frames = drain(&mut gw, now);
        let msg = udp_answer(&frames[0], false, 40004);
        assert!(msg.metadata.truncation);
        assert_eq!(msg.metadata.id, 5);
        assert!(msg.answers.is_empty());
    }
}
