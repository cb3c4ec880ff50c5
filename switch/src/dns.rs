//! The embedded DNS responder, with Docker's semantics.
//!
//! Sans-IO: [`Responder::handle_query`] takes the bytes of one DNS message
//! and a [`Zone`] and either writes an answer into the caller's buffer, or
//! says the query must be forwarded to the upstream resolvers, or that it must
//! be dropped. It never opens a socket or reads the clock. Messages are parsed
//! and emitted with hickory-proto.
//!
//! What it answers, the way Docker's embedded resolver does:
//!
//! - A container's name and each of its aliases resolve to its addresses on
//!   this network: A records for IPv4, AAAA for IPv6. Names are matched
//!   case-insensitively, as given (`web.` and `web` are the same name); no
//!   search domain is invented, so `web.example.` is not `web`.
//! - A name the zone knows, asked for a type it has no records of (AAAA for an
//!   IPv4-only container, MX, ...): NOERROR with no answers, never NXDOMAIN.
//! - Several containers sharing an alias: all their addresses, rotated
//!   round-robin per query so the first answer changes from query to query.
//! - PTR for a container's address (`in-addr.arpa.` and `ip6.arpa.` nibble
//!   names) answers the container's name; PTR for any other address is
//!   forwarded.
//! - Every other name: [`Outcome::Forward`].
//! - Malformed messages: FORMERR when the header could be parsed, otherwise
//!   dropped ([`Outcome::Ignore`]); responses are never answered (no loops);
//!   opcodes other than QUERY get NOTIMP; EDNS versions other than 0 get
//!   BADVERS.
//! - Answers set RA, set AA for local names, copy RD and CD, echo the
//!   question, and carry an OPT record when the query had one. Over UDP an
//!   answer larger than 512 bytes (or the client's EDNS payload size, capped
//!   by what one frame can carry) is truncated and has TC set.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use arc_swap::ArcSwap;

use hickory_proto::op::{
    emit_message_parts, Edns, Header, Message, MessageType, Metadata, OpCode, Query, ResponseCode,
};
use hickory_proto::rr::rdata::{A, AAAA, PTR};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder, BinEncoder};

/// TTL of the records the responder answers itself, as Docker's (seconds).
pub const TTL: u32 = 600;

/// The smallest UDP payload every DNS client accepts (RFC 1035).
pub const MIN_UDP_PAYLOAD: u16 = 512;

/// The UDP payload size this responder advertises in its OPT records when
/// the transport allows it (the DNS flag day 2020 value).
pub const ADVERTISED_UDP_PAYLOAD: u16 = 1232;

/// Length of the fixed DNS header.
pub const HEADER_LEN: usize = 12;

/// Longest presentation form of a name: 255 wire bytes make at most 253
/// characters between the dots.
const MAX_KEY_LEN: usize = 255;

/// Round-robin counters kept before the table is reset (bounded memory even
/// when the zone changes often).
const MAX_ROTATION_ENTRIES: usize = 4096;

/// One container endpoint on this network, as the control plane knows it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DnsEntry {
    /// The container's name (`web`); it answers PTR queries.
    pub name: String,
    /// The network-scoped aliases (`--alias`); several entries may share one.
    pub aliases: Vec<String>,
    /// The endpoint's addresses on this network.
    pub addrs: Vec<IpAddr>,
}

/// The addresses one name resolves to, in insertion order, without duplicates.
#[derive(Debug, Clone, Default)]
struct NameRecords {
    v4: Vec<Ipv4Addr>,
    v6: Vec<Ipv6Addr>,
}

/// The records of one network: an immutable snapshot built from the
/// network's endpoints, published to the gateway through `ArcSwap` and
/// replaced whole when an endpoint joins or leaves.
#[derive(Debug, Clone, Default)]
pub struct Zone {
    /// Lower-case name without the trailing dot -> its addresses.
    names: HashMap<Box<[u8]>, NameRecords>,
    /// Container address -> the container's name, fully qualified.
    ptr: HashMap<IpAddr, Name>,
}

/// A network's zone as the control plane publishes it and every gateway of
/// the network reads it: replaced whole with `store`, read without a lock.
pub type SharedZone = Arc<ArcSwap<Zone>>;

impl Zone {
    /// Wraps the zone for publishing ([`SharedZone`]).
    pub fn into_shared(self) -> SharedZone {
        Arc::new(ArcSwap::from_pointee(self))
    }

    /// Builds the zone of a network from its endpoints. Names and aliases are
    /// case-insensitive; an empty name is skipped. When two endpoints claim
    /// the same address, the first one answers its PTR.
    pub fn new(entries: impl IntoIterator<Item = DnsEntry>) -> Zone {
        let mut zone = Zone::default();
        for entry in entries {
            for name in std::iter::once(&entry.name).chain(entry.aliases.iter()) {
                let Some(key) = key_from_str(name) else {
                    continue;
                };
                let records = zone.names.entry(key).or_default();
                for addr in &entry.addrs {
                    match addr {
                        IpAddr::V4(a) if !records.v4.contains(a) => records.v4.push(*a),
                        IpAddr::V6(a) if !records.v6.contains(a) => records.v6.push(*a),
                        _ => {}
                    }
                }
            }
            if let Some(fqdn) = fqdn_from_str(&entry.name) {
                for addr in &entry.addrs {
                    zone.ptr.entry(*addr).or_insert_with(|| fqdn.clone());
                }
            }
        }
        zone
    }

    /// Number of distinct names (container names and aliases).
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// True when no name resolves locally.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// The addresses `name` resolves to (IPv4 first), in zone order; empty
    /// when the zone does not know the name.
    pub fn addrs(&self, name: &str) -> Vec<IpAddr> {
        key_from_str(name)
            .and_then(|k| self.names.get(&k))
            .map(|r| {
                r.v4.iter()
                    .copied()
                    .map(IpAddr::V4)
                    .chain(r.v6.iter().copied().map(IpAddr::V6))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The container name a PTR query for `addr` answers (with the trailing
    /// dot), if a container on this network owns the address.
    pub fn name_of(&self, addr: IpAddr) -> Option<String> {
        self.ptr.get(&addr).map(|n| n.to_ascii())
    }

    fn lookup(&self, key: &[u8]) -> Option<&NameRecords> {
        self.names.get(key)
    }
}

/// `Web.` -> `web`; `None` for names that cannot be DNS names.
fn key_from_str(name: &str) -> Option<Box<[u8]>> {
    let trimmed = name.strip_suffix('.').unwrap_or(name);
    if trimmed.is_empty() || trimmed.len() > MAX_KEY_LEN {
        return None;
    }
    Some(trimmed.to_ascii_lowercase().into_bytes().into_boxed_slice())
}

/// `web` -> the name `web.`; `None` when it is not a valid DNS name.
fn fqdn_from_str(name: &str) -> Option<Name> {
    let trimmed = name.strip_suffix('.').unwrap_or(name);
    if trimmed.is_empty() {
        return None;
    }
    let mut n = Name::from_labels(trimmed.split('.').map(str::as_bytes)).ok()?;
    n.set_fqdn(true);
    Some(n)
}

/// Writes the lookup key of a query name (labels joined by dots, ASCII
/// lower-case) into `buf`; returns its length, or `None` for the root name or
/// a name too long for the buffer.
fn key_from_name(name: &Name, buf: &mut [u8; MAX_KEY_LEN]) -> Option<usize> {
    let mut len = 0;
    for (i, label) in name.iter().enumerate() {
        let need = label.len() + usize::from(i > 0);
        if len + need > buf.len() {
            return None;
        }
        if i > 0 {
            buf[len] = b'.';
            len += 1;
        }
        for b in label {
            buf[len] = b.to_ascii_lowercase();
            len += 1;
        }
    }
    (len > 0).then_some(len)
}

/// The channel a query arrived on: it bounds the size of the answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// UDP. `max_payload` is the largest UDP payload one frame carries back
    /// to the client (MTU minus IP and UDP headers); answers are also bounded
    /// by 512 bytes or the client's EDNS size.
    Udp {
        /// Largest UDP payload the path back to the client carries.
        max_payload: u16,
    },
    /// TCP with RFC 1035 length framing: answers up to 65535 bytes.
    Tcp,
}

/// What to do with a query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// An answer of this many bytes was written at the start of `out`.
    Answered(usize),
    /// The name is not local: forward the query unchanged to the upstream
    /// resolvers. `max_reply` is the largest reply the client accepts on its
    /// transport; a longer upstream reply must be sent truncated
    /// ([`truncate_reply`]).
    Forward {
        /// Largest reply the client accepts, in bytes.
        max_reply: usize,
    },
    /// Not a query this responder answers (too short to have a header, a
    /// response, or an answer that does not fit `out`): drop it.
    Ignore,
}

/// An error a gateway answers itself in place of an upstream's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorReply {
    /// SERVFAIL: no upstream answered in time, or too many queries pending.
    ServFail,
    /// REFUSED: the network is internal, nothing is forwarded.
    Refused,
}

/// Counts of what the responder did, for `vswitch stats`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ResponderStats {
    /// Queries answered from the zone (A, AAAA, PTR, NODATA).
    pub answered: u64,
    /// Queries handed back as [`Outcome::Forward`].
    pub forwarded: u64,
    /// FORMERR, NOTIMP and BADVERS answers.
    pub malformed: u64,
    /// Messages dropped without an answer.
    pub ignored: u64,
    /// Answers sent with TC set because they did not fit.
    pub truncated: u64,
}

/// The DNS responder of one gateway: answers from a [`Zone`], keeps the
/// round-robin state, reuses one encode buffer.
#[derive(Debug, Default)]
pub struct Responder {
    /// Per name: how many queries were answered, the rotation offset.
    rotation: HashMap<Box<[u8]>, u32>,
    /// Encode buffer, reused across queries.
    scratch: Vec<u8>,
    stats: ResponderStats,
}

impl Responder {
    /// A responder with no round-robin history.
    pub fn new() -> Responder {
        Responder::default()
    }

    /// What the responder did so far.
    pub fn stats(&self) -> ResponderStats {
        self.stats
    }

    /// Answers `query` from `zone` into `out`, or says it must be forwarded
    /// or dropped. Never panics, whatever the bytes.
    pub fn handle_query(
        &mut self,
        zone: &Zone,
        query: &[u8],
        transport: Transport,
        out: &mut [u8],
    ) -> Outcome {
        let outcome = self.handle_query_inner(zone, query, transport, out);
        match outcome {
            Outcome::Forward { .. } => self.stats.forwarded += 1,
            Outcome::Ignore => self.stats.ignored += 1,
            Outcome::Answered(_) => {}
        }
        outcome
    }

    fn handle_query_inner(
        &mut self,
        zone: &Zone,
        query: &[u8],
        transport: Transport,
        out: &mut [u8],
    ) -> Outcome {
        let mut decoder = BinDecoder::new(query);
        let Ok(header) = Header::read(&mut decoder) else {
            return Outcome::Ignore;
        };
        if header.metadata.message_type != MessageType::Query {
            return Outcome::Ignore;
        }
        let mut meta = Metadata::response_from_request(&header.metadata);
        meta.recursion_available = true;

        let msg = match Message::from_vec(query) {
            Ok(msg) => msg,
            Err(_) => {
                meta.response_code = ResponseCode::FormErr;
                self.stats.malformed += 1;
                let limit = reply_limit(None, transport);
                return self.emit(&meta, None, &[], None, limit, out);
            }
        };
        let limit = reply_limit(msg.edns.as_ref(), transport);
        let edns = msg.edns.as_ref().map(|_| response_edns(transport));

        if meta.op_code != OpCode::Query {
            meta.response_code = ResponseCode::NotImp;
            self.stats.malformed += 1;
            return self.emit(&meta, msg.queries.first(), &[], edns, limit, out);
        }
        if msg.queries.len() != 1 {
            meta.response_code = ResponseCode::FormErr;
            self.stats.malformed += 1;
            return self.emit(&meta, None, &[], edns, limit, out);
        }
        let question = &msg.queries[0];
        if msg.edns.as_ref().is_some_and(|e| e.version() != 0) {
            meta.response_code = ResponseCode::BADVERS;
            self.stats.malformed += 1;
            return self.emit(&meta, Some(question), &[], edns, limit, out);
        }
        if !matches!(question.query_class(), DNSClass::IN | DNSClass::ANY) {
            return Outcome::Forward { max_reply: limit };
        }

        let qname = question.name();
        let qtype = question.query_type();
        let mut answers: Vec<Record> = Vec::new();

        if qtype == RecordType::PTR {
            if let Some(owner) = arpa_address(qname).and_then(|a| zone.ptr.get(&a)) {
                answers.push(Record::from_rdata(
                    qname.clone(),
                    TTL,
                    RData::PTR(PTR(owner.clone())),
                ));
                meta.authoritative = true;
                self.stats.answered += 1;
                return self.emit(&meta, Some(question), &answers, edns, limit, out);
            }
        }

        let mut key_buf = [0u8; MAX_KEY_LEN];
        let Some(key_len) = key_from_name(qname, &mut key_buf) else {
            return Outcome::Forward { max_reply: limit };
        };
        let key = &key_buf[..key_len];
        let Some(records) = zone.lookup(key) else {
            return Outcome::Forward { max_reply: limit };
        };

        let want_v4 = matches!(qtype, RecordType::A | RecordType::ANY);
        let want_v6 = matches!(qtype, RecordType::AAAA | RecordType::ANY);
        let offset = if (want_v4 && records.v4.len() > 1) || (want_v6 && records.v6.len() > 1) {
            self.next_rotation(key)
        } else {
            0
        };
        if want_v4 {
            answers.extend(
                rotated(&records.v4, offset)
                    .map(|a| Record::from_rdata(qname.clone(), TTL, RData::A(A(*a)))),
            );
        }
        if want_v6 {
            answers.extend(
                rotated(&records.v6, offset)
                    .map(|a| Record::from_rdata(qname.clone(), TTL, RData::AAAA(AAAA(*a)))),
            );
        }
        meta.authoritative = true;
        self.stats.answered += 1;
        self.emit(&meta, Some(question), &answers, edns, limit, out)
    }

    /// Writes SERVFAIL or REFUSED for `query` into `out` (the question
    /// echoed, RD copied, RA set). `None` when `query` has no parseable
    /// header, is a response, or the reply does not fit `out`.
    pub fn reply_error(
        &mut self,
        query: &[u8],
        error: ErrorReply,
        transport: Transport,
        out: &mut [u8],
    ) -> Option<usize> {
        let mut decoder = BinDecoder::new(query);
        let header = Header::read(&mut decoder).ok()?;
        if header.metadata.message_type != MessageType::Query {
            return None;
        }
        let mut meta = Metadata::response_from_request(&header.metadata);
        meta.recursion_available = true;
        meta.response_code = match error {
            ErrorReply::ServFail => ResponseCode::ServFail,
            ErrorReply::Refused => ResponseCode::Refused,
        };
        let (question, edns) = match Message::from_vec(query) {
            Ok(msg) => (
                msg.queries.into_iter().next(),
                msg.edns.map(|_| response_edns(transport)),
            ),
            Err(_) => (None, None),
        };
        let limit = reply_limit(None, transport);
        match self.emit(&meta, question.as_ref(), &[], edns, limit, out) {
            Outcome::Answered(n) => Some(n),
            _ => None,
        }
    }

    /// The rotation offset for `key`, advancing its counter.
    fn next_rotation(&mut self, key: &[u8]) -> usize {
        if let Some(counter) = self.rotation.get_mut(key) {
            let offset = *counter;
            *counter = counter.wrapping_add(1);
            return offset as usize;
        }
        if self.rotation.len() >= MAX_ROTATION_ENTRIES {
            self.rotation.clear();
        }
        self.rotation.insert(key.into(), 1);
        0
    }

    /// Emits a response into `out`, truncating to `limit` bytes (TC set when
    /// records were left out).
    fn emit(
        &mut self,
        meta: &Metadata,
        question: Option<&Query>,
        answers: &[Record],
        edns: Option<Edns>,
        limit: usize,
        out: &mut [u8],
    ) -> Outcome {
        let limit = limit.min(out.len()).min(usize::from(u16::MAX));
        self.scratch.clear();
        let header = {
            let mut encoder = BinEncoder::new(&mut self.scratch);
            encoder.set_max_size(limit as u16);
            emit_message_parts(
                meta,
                &mut question.into_iter(),
                &mut answers.iter(),
                &mut std::iter::empty::<&Record>(),
                &mut std::iter::empty::<&Record>(),
                edns.as_ref(),
                None,
                &mut encoder,
            )
        };
        let Ok(header) = header else {
            self.stats.ignored += 1;
            return Outcome::Ignore;
        };
        let n = self.scratch.len();
        if n > out.len() {
            self.stats.ignored += 1;
            return Outcome::Ignore;
        }
        if header.metadata.truncation {
            self.stats.truncated += 1;
        }
        out[..n].copy_from_slice(&self.scratch);
        Outcome::Answered(n)
    }
}

/// `addrs` starting at `offset` (mod its length), wrapping around.
fn rotated<T>(addrs: &[T], offset: usize) -> impl Iterator<Item = &T> {
    let start = if addrs.is_empty() {
        0
    } else {
        offset % addrs.len()
    };
    addrs[start..].iter().chain(addrs[..start].iter())
}

/// The largest reply the client takes on `transport`.
fn reply_limit(edns: Option<&Edns>, transport: Transport) -> usize {
    match transport {
        Transport::Tcp => usize::from(u16::MAX),
        Transport::Udp { max_payload } => {
            let client = edns.map_or(MIN_UDP_PAYLOAD, |e| e.max_payload().max(MIN_UDP_PAYLOAD));
            usize::from(client.min(max_payload))
        }
    }
}

/// The OPT record of our responses.
fn response_edns(transport: Transport) -> Edns {
    let mut edns = Edns::new();
    let payload = match transport {
        Transport::Tcp => ADVERTISED_UDP_PAYLOAD,
        Transport::Udp { max_payload } => ADVERTISED_UDP_PAYLOAD.min(max_payload),
    };
    edns.set_max_payload(payload.max(MIN_UDP_PAYLOAD));
    edns.set_version(0);
    edns
}

/// The address a full `in-addr.arpa.` or `ip6.arpa.` name stands for.
fn arpa_address(name: &Name) -> Option<IpAddr> {
    let mut fqdn = name.clone();
    fqdn.set_fqdn(true);
    let net = fqdn.parse_arpa_name().ok()?;
    let full = match net.addr() {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    };
    (net.prefix_len() == full).then(|| net.addr())
}

/// The transaction id of a DNS message.
pub fn message_id(msg: &[u8]) -> Option<u16> {
    Some(u16::from_be_bytes([*msg.first()?, *msg.get(1)?]))
}

/// Overwrites the transaction id of a DNS message (no-op when shorter than
/// two bytes).
pub fn set_message_id(msg: &mut [u8], id: u16) {
    if let Some(b) = msg.get_mut(..2) {
        b.copy_from_slice(&id.to_be_bytes());
    }
}

/// True when `msg` has its QR bit set (a response).
pub fn is_response(msg: &[u8]) -> bool {
    msg.len() >= HEADER_LEN && msg[2] & 0x80 != 0
}

/// The 4-bit RCODE of a message's header.
pub fn response_code_low(msg: &[u8]) -> Option<u8> {
    (msg.len() >= HEADER_LEN).then(|| msg[3] & 0x0f)
}

/// RCODE of SERVFAIL.
pub const RCODE_SERVFAIL: u8 = 2;
/// RCODE of REFUSED.
pub const RCODE_REFUSED: u8 = 5;

/// True when `reply` asks the same single question as `query` (name compared
/// case-insensitively, type and class exactly): a cheap check against
/// spoofed or misrouted upstream replies.
pub fn same_question(query: &[u8], reply: &[u8]) -> bool {
    fn question(msg: &[u8]) -> Option<Query> {
        let mut decoder = BinDecoder::new(msg);
        let header = Header::read(&mut decoder).ok()?;
        if header.counts.queries != 1 {
            return None;
        }
        Query::read(&mut decoder).ok()
    }
    match (question(query), question(reply)) {
        (Some(q), Some(r)) => {
            q.query_type() == r.query_type()
                && q.query_class() == r.query_class()
                && q.name().eq_ignore_root(r.name())
        }
        _ => false,
    }
}

/// Writes a truncated form of `reply` (header with TC set, the question and
/// the OPT record, no records) into `out`, for an upstream reply longer than
/// the client accepts. `None` when `reply` does not parse or does not fit.
pub fn truncate_reply(reply: &[u8], limit: usize, out: &mut [u8]) -> Option<usize> {
    let msg = Message::from_vec(reply).ok()?;
    let truncated = msg.truncate();
    let mut buf = Vec::with_capacity(HEADER_LEN + 300);
    {
        let mut encoder = BinEncoder::new(&mut buf);
        encoder.set_max_size(limit.min(usize::from(u16::MAX)) as u16);
        hickory_proto::serialize::binary::BinEncodable::emit(&truncated, &mut encoder).ok()?;
    }
    let dst = out.get_mut(..buf.len())?;
    dst.copy_from_slice(&buf);
    Some(buf.len())
}

/// A query for `name`'s A (or, with `v6`, AAAA) records with transaction
/// id `id`, recursion desired, as a stub resolver sends it (`vswitch
/// doctor` asks a network's resolver from inside a container). `None` when
/// `name` is not a valid domain name.
pub fn build_query(id: u16, name: &str, v6: bool) -> Option<Vec<u8>> {
    let name = Name::from_ascii(name).ok()?;
    let qtype = if v6 { RecordType::AAAA } else { RecordType::A };
    let mut msg = Message::new(id, MessageType::Query, OpCode::Query);
    msg.metadata.recursion_desired = true;
    msg.add_query(Query::query(name, qtype));
    msg.to_vec().ok()
}

/// What a resolver answered a [`build_query`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// The addresses it answered with (none: the name has no records of
    /// that type).
    Addrs(Vec<IpAddr>),
    /// It answered with an error: the response code's name
    /// (`NXDomain`, `ServFail`, `Refused`...).
    Error(String),
}

/// Reads `reply` as the answer to the query [`build_query`] made with
/// `id` for `name`: `None` when it is not one (not a response, another id
/// or question, or not DNS at all), so a stray or forged datagram is
/// ignored rather than taken for the answer.
pub fn read_answer(reply: &[u8], id: u16, name: &str) -> Option<Answer> {
    let msg = Message::from_vec(reply).ok()?;
    if msg.metadata.message_type != MessageType::Response || msg.metadata.id != id {
        return None;
    }
    let asked = Name::from_ascii(name).ok()?;
    let [q] = msg.queries.as_slice() else {
        return None;
    };
    if !q.name().eq_ignore_root(&asked) {
        return None;
    }
    if msg.metadata.response_code != ResponseCode::NoError {
        return Some(Answer::Error(format!("{:?}", msg.metadata.response_code)));
    }
    Some(Answer::Addrs(answer_addrs(&msg)))
}

/// The A and AAAA records of a message's answer section.
fn answer_addrs(msg: &Message) -> Vec<IpAddr> {
    msg.answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            RData::AAAA(a) => Some(IpAddr::V6(a.0)),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::Query;
    use rstest::rstest;

    const UDP: Transport = Transport::Udp { max_payload: 1472 };

    fn entry(name: &str, aliases: &[&str], addrs: &[&str]) -> DnsEntry {
        DnsEntry {
            name: name.into(),
            aliases: aliases.iter().map(|s| s.to_string()).collect(),
            addrs: addrs.iter().map(|a| a.parse().unwrap()).collect(),
        }
    }

    fn zone() -> Zone {
        Zone::new([
            entry("web", &["frontend"], &["10.0.0.2", "fd00::2"]),
            entry("db", &["store"], &["10.0.0.3"]),
            entry("w1", &["pool"], &["10.0.0.11"]),
            entry("w2", &["pool"], &["10.0.0.12"]),
            entry("w3", &["pool"], &["10.0.0.13"]),
        ])
    }

    fn query(name: &str, qtype: RecordType) -> Vec<u8> {
        let mut msg = Message::new(0x1234, MessageType::Query, OpCode::Query);
        msg.metadata.recursion_desired = true;
        msg.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
        msg.to_vec().unwrap()
    }

    fn answer(r: &mut Responder, z: &Zone, q: &[u8], t: Transport) -> Message {
        let mut out = [0u8; 65535];
        match r.handle_query(z, q, t, &mut out) {
            Outcome::Answered(n) => Message::from_vec(&out[..n]).unwrap(),
            other => panic!("expected an answer, got {other:?}"),
        }
    }

    #[test]
    fn a_built_query_is_answered_and_its_answer_read() {
        let mut r = Responder::new();
        let z = zone();
        let q = build_query(0x77, "web", false).unwrap();
        let mut out = [0u8; 1500];
        let Outcome::Answered(n) = r.handle_query(&z, &q, UDP, &mut out) else {
            panic!("not answered");
        };
        let reply = &out[..n];
        assert_eq!(
            read_answer(reply, 0x77, "web"),
            Some(Answer::Addrs(vec!["10.0.0.2".parse().unwrap()]))
        );
        // Another id or another name: not the answer to this query.
        assert_eq!(read_answer(reply, 0x78, "web"), None);
        assert_eq!(read_answer(reply, 0x77, "db"), None);
        // A query is not an answer; garbage is nothing.
        assert_eq!(read_answer(&q, 0x77, "web"), None);
        assert_eq!(read_answer(&[0x00, 0x77, 0x81], 0x77, "web"), None);

        let q6 = build_query(9, "web", true).unwrap();
        let Outcome::Answered(n) = r.handle_query(&z, &q6, UDP, &mut out) else {
            panic!("not answered");
        };
        assert_eq!(
            read_answer(&out[..n], 9, "web"),
            Some(Answer::Addrs(vec!["fd00::2".parse().unwrap()]))
        );
        assert!(build_query(1, "not a name..", false).is_none());
    }

    #[rstest]
    #[case("web.", RecordType::A, &["10.0.0.2"])]
    #[case("web", RecordType::A, &["10.0.0.2"])]
    #[case("WeB.", RecordType::A, &["10.0.0.2"])]
    #[case("frontend.", RecordType::A, &["10.0.0.2"])]
    #[case("web.", RecordType::AAAA, &["fd00::2"])]
    #[case("db.", RecordType::AAAA, &[])]
    #[case("store.", RecordType::MX, &[])]
    #[case("web.", RecordType::ANY, &["10.0.0.2", "fd00::2"])]
    fn local_names(#[case] name: &str, #[case] qtype: RecordType, #[case] want: &[&str]) {
        let mut r = Responder::new();
        let msg = answer(&mut r, &zone(), &query(name, qtype), UDP);
        assert_eq!(msg.metadata.id, 0x1234);
        assert_eq!(msg.metadata.message_type, MessageType::Response);
        assert_eq!(msg.metadata.response_code, ResponseCode::NoError);
        assert!(msg.metadata.authoritative);
        assert!(msg.metadata.recursion_available);
        assert!(msg.metadata.recursion_desired);
        assert_eq!(msg.queries.len(), 1);
        assert_eq!(msg.queries[0].query_type(), qtype);
        let want: Vec<IpAddr> = want.iter().map(|a| a.parse().unwrap()).collect();
        assert_eq!(answer_addrs(&msg), want);
        for rec in &msg.answers {
            assert_eq!(rec.ttl, TTL);
            assert!(rec.name.eq_ignore_root(&Name::from_ascii(name).unwrap()));
        }
    }

    #[rstest]
    #[case("google.com.")]
    #[case("web.example.")]
    #[case("web.localdomain.")]
    #[case("8.8.8.8.in-addr.arpa.")]
    #[case(".")]
    fn other_names_forward(#[case] name: &str) {
        let mut r = Responder::new();
        let mut out = [0u8; 512];
        let qtype = if name.ends_with("arpa.") {
            RecordType::PTR
        } else {
            RecordType::A
        };
        let outcome = r.handle_query(&zone(), &query(name, qtype), UDP, &mut out);
        assert_eq!(outcome, Outcome::Forward { max_reply: 512 });
        assert_eq!(r.stats().forwarded, 1);
    }

    #[rstest]
    #[case("2.0.0.10.in-addr.arpa.", "web.")]
    #[case("12.0.0.10.IN-ADDR.ARPA.", "w2.")]
    #[case(
        "2.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.d.f.ip6.arpa.",
        "web."
    )]
    fn ptr(#[case] name: &str, #[case] target: &str) {
        let mut r = Responder::new();
        let msg = answer(&mut r, &zone(), &query(name, RecordType::PTR), UDP);
        assert_eq!(msg.answers.len(), 1);
        match &msg.answers[0].data {
            RData::PTR(p) => assert_eq!(p.0.to_ascii(), target),
            other => panic!("not a PTR: {other:?}"),
        }
        assert!(msg.metadata.authoritative);
    }

    #[test]
    fn ptr_for_foreign_address_forwards() {
        let mut r = Responder::new();
        let mut out = [0u8; 512];
        let q = query("99.0.0.10.in-addr.arpa.", RecordType::PTR);
        assert!(matches!(
            r.handle_query(&zone(), &q, UDP, &mut out),
            Outcome::Forward { .. }
        ));
        // A partial reverse name is a zone, not an address.
        let q = query("0.10.in-addr.arpa.", RecordType::PTR);
        assert!(matches!(
            r.handle_query(&zone(), &q, UDP, &mut out),
            Outcome::Forward { .. }
        ));
    }

    #[test]
    fn round_robin_rotates_the_first_answer() {
        let mut r = Responder::new();
        let z = zone();
        let q = query("pool.", RecordType::A);
        let mut firsts = Vec::new();
        for _ in 0..6 {
            let msg = answer(&mut r, &z, &q, UDP);
            let got = answer_addrs(&msg);
            assert_eq!(got.len(), 3);
            let mut sorted = got.clone();
            sorted.sort();
            assert_eq!(
                sorted,
                ["10.0.0.11", "10.0.0.12", "10.0.0.13"]
                    .map(|a| a.parse::<IpAddr>().unwrap())
                    .to_vec()
            );
            firsts.push(got[0]);
        }
        assert_ne!(firsts[0], firsts[1]);
        assert_ne!(firsts[1], firsts[2]);
        assert_ne!(firsts[0], firsts[2]);
        assert_eq!(firsts[0], firsts[3]);
    }

    #[test]
    fn garbage_is_ignored_or_formerr() {
        let mut r = Responder::new();
        let mut out = [0u8; 512];
        assert_eq!(
            r.handle_query(&zone(), &[1, 2, 3], UDP, &mut out),
            Outcome::Ignore
        );
        // A header claiming one question, then nothing.
        let bad = [0xab, 0xcd, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0, 0x05, b'a'];
        let Outcome::Answered(n) = r.handle_query(&zone(), &bad, UDP, &mut out) else {
            panic!("expected FORMERR");
        };
        let msg = Message::from_vec(&out[..n]).unwrap();
        assert_eq!(msg.metadata.id, 0xabcd);
        assert_eq!(msg.metadata.response_code, ResponseCode::FormErr);
        // Responses are never answered.
        let mut resp = query("web.", RecordType::A);
        resp[2] |= 0x80;
        assert_eq!(
            r.handle_query(&zone(), &resp, UDP, &mut out),
            Outcome::Ignore
        );
        // Two questions.
        let mut msg = Message::new(7, MessageType::Query, OpCode::Query);
        msg.add_query(Query::query(
            Name::from_ascii("web.").unwrap(),
            RecordType::A,
        ));
        msg.add_query(Query::query(
            Name::from_ascii("db.").unwrap(),
            RecordType::A,
        ));
        let got = answer(&mut r, &zone(), &msg.to_vec().unwrap(), UDP);
        assert_eq!(got.metadata.response_code, ResponseCode::FormErr);
        assert_eq!(r.stats().malformed, 2);
    }

    #[test]
    fn other_opcodes_get_notimp() {
        let mut r = Responder::new();
        let mut msg = Message::new(9, MessageType::Query, OpCode::Status);
        msg.add_query(Query::query(
            Name::from_ascii("web.").unwrap(),
            RecordType::A,
        ));
        let got = answer(&mut r, &zone(), &msg.to_vec().unwrap(), UDP);
        assert_eq!(got.metadata.response_code, ResponseCode::NotImp);
        assert_eq!(got.metadata.op_code, OpCode::Status);
        assert_eq!(got.queries.len(), 1);
    }

    #[test]
    fn edns_is_echoed_and_bounds_the_answer() {
        let many: Vec<DnsEntry> = (0..100)
            .map(|i| entry(&format!("n{i}"), &["big"], &[&format!("10.1.0.{i}")]))
            .collect();
        let z = Zone::new(many);
        let mut r = Responder::new();
        // No EDNS: 512 bytes, truncated.
        let q = query("big.", RecordType::A);
        let mut out = [0u8; 4096];
        let Outcome::Answered(n) = r.handle_query(&z, &q, UDP, &mut out) else {
            panic!()
        };
        assert!(n <= 512);
        let msg = Message::from_vec(&out[..n]).unwrap();
        assert!(msg.metadata.truncation);
        assert!(!msg.answers.is_empty() && msg.answers.len() < 100);
        assert!(msg.edns.is_none());
        // EDNS 4096 but the frame carries 1472: the answer stops there.
        let mut m = Message::from_vec(&q).unwrap();
        let mut e = Edns::new();
        e.set_max_payload(4096);
        m.set_edns(e);
        let q = m.to_vec().unwrap();
        let Outcome::Answered(n) = r.handle_query(&z, &q, UDP, &mut out) else {
            panic!()
        };
        assert!(n > 512 && n <= 1472, "{n}");
        let msg = Message::from_vec(&out[..n]).unwrap();
        assert!(msg.metadata.truncation);
        assert!(msg.edns.is_some());
        // TCP: everything.
        let msg = answer(&mut r, &z, &q, Transport::Tcp);
        assert!(!msg.metadata.truncation);
        assert_eq!(msg.answers.len(), 100);
        assert!(r.stats().truncated >= 2);
    }

    #[test]
    fn edns_version_1_gets_badvers() {
        let mut m = Message::from_vec(&query("web.", RecordType::A)).unwrap();
        let mut e = Edns::new();
        e.set_version(1);
        m.set_edns(e);
        let mut r = Responder::new();
        let got = answer(&mut r, &zone(), &m.to_vec().unwrap(), UDP);
        // BADVERS and BADSIG share the code 16.
        assert_eq!(u16::from(got.metadata.response_code), 16);
        assert!(got.edns.is_some());
    }

    #[test]
    fn error_replies() {
        let mut r = Responder::new();
        let q = query("example.com.", RecordType::A);
        let mut out = [0u8; 512];
        for (e, code) in [
            (ErrorReply::ServFail, ResponseCode::ServFail),
            (ErrorReply::Refused, ResponseCode::Refused),
        ] {
            let n = r.reply_error(&q, e, UDP, &mut out).unwrap();
            let msg = Message::from_vec(&out[..n]).unwrap();
            assert_eq!(msg.metadata.response_code, code);
            assert_eq!(msg.metadata.id, 0x1234);
            assert_eq!(msg.queries[0].name().to_ascii(), "example.com.");
        }
        assert_eq!(
            r.reply_error(&[0; 4], ErrorReply::ServFail, UDP, &mut out),
            None
        );
    }

    #[test]
    fn helpers() {
        let mut q = query("Example.com.", RecordType::A);
        assert_eq!(message_id(&q), Some(0x1234));
        set_message_id(&mut q, 0xbeef);
        assert_eq!(message_id(&q), Some(0xbeef));
        assert!(!is_response(&q));
        let reply = query("example.COM.", RecordType::A);
        assert!(same_question(&q, &reply));
        assert!(!same_question(&q, &query("example.com.", RecordType::AAAA)));
        assert!(!same_question(&q, &query("example.org.", RecordType::A)));
        assert!(!same_question(&q, &[0; 12]));

        let z = Zone::new([entry("big", &[], &[])]);
        assert_eq!(z.len(), 1);
        let full = {
            let mut m = Message::from_vec(&query("x.", RecordType::A)).unwrap();
            m.metadata.message_type = MessageType::Response;
            for i in 0..60u8 {
                m.add_answer(Record::from_rdata(
                    Name::from_ascii("x.").unwrap(),
                    1,
                    RData::A(A(Ipv4Addr::new(10, 0, 0, i))),
                ));
            }
            m.to_vec().unwrap()
        };
        assert!(full.len() > 512);
        let mut out = [0u8; 512];
        let n = truncate_reply(&full, 512, &mut out).unwrap();
        let msg = Message::from_vec(&out[..n]).unwrap();
        assert!(msg.metadata.truncation);
        assert_eq!(msg.metadata.id, 0x1234);
        assert!(msg.answers.is_empty());
    }

    #[test]
    fn zone_accessors() {
        let z = zone();
        assert_eq!(
            z.addrs("POOL."),
            ["10.0.0.11", "10.0.0.12", "10.0.0.13"]
                .map(|a| a.parse::<IpAddr>().unwrap())
                .to_vec()
        );
        assert!(z.addrs("nope").is_empty());
        assert_eq!(
            z.name_of("10.0.0.3".parse().unwrap()).as_deref(),
            Some("db.")
        );
        assert_eq!(z.name_of("10.0.0.99".parse().unwrap()), None);
        assert!(Zone::default().is_empty());
        assert_eq!(z.len(), 8);
    }

    #[test]
    fn zone_swap_changes_answers() {
        let mut r = Responder::new();
        let q = query("web.", RecordType::A);
        let mut out = [0u8; 512];
        assert!(matches!(
            r.handle_query(&Zone::default(), &q, UDP, &mut out),
            Outcome::Forward { .. }
        ));
        let msg = answer(&mut r, &zone(), &q, UDP);
        assert_eq!(
            answer_addrs(&msg),
            vec!["10.0.0.2".parse::<IpAddr>().unwrap()]
        );
    }

    proptest::proptest! {
        #[test]
        fn never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..600)) {
            let mut r = Responder::new();
            let mut out = [0u8; 1024];
            let z = zone();
            if let Outcome::Answered(n) = r.handle_query(&z, &bytes, UDP, &mut out) {
                proptest::prop_assert!(n <= 512);
                proptest::prop_assert!(is_response(&out[..n]));
            }
            let _ = r.reply_error(&bytes, ErrorReply::ServFail, UDP, &mut out);
            let _ = truncate_reply(&bytes, 512, &mut out);
            let _ = same_question(&bytes, &bytes);
        }
    }
}
