//! Capture filters: the part of tcpdump's filter language (pcap-filter(7))
//! that `vswitch capture --filter` takes, parsed once and matched against
//! each frame a capture sees, in the worker, before anything is copied.
//!
//! Sans-IO: [`Filter::parse`] takes the expression, [`Filter::matches`] an
//! Ethernet frame (up to two VLAN tags; a super-frame's headers are those
//! of its first segment). What is understood:
//!
//! - protocols: `ether`-less `ip`, `ip6`, `arp`, `tcp`, `udp`, `icmp`,
//!   `icmp6`, `vlan`;
//! - `[src|dst] host ADDR` (IPv4 or IPv6; for ARP, the sender and target
//!   protocol addresses), `[src|dst] net CIDR`, `[src|dst] port N`,
//!   `[src|dst] portrange N-M` (TCP or UDP, `tcp port N` and `udp port N`
//!   narrowing it), `ether [src|dst] host MAC`;
//! - `and`/`&&`, `or`/`||`, `not`/`!`, parentheses, with pcap-filter's
//!   precedence (`not` binds tightest, then `and` and `or` left to right
//!   with equal precedence, as in pcap-filter).
//!
//! Anything else is refused with the word that was not understood, so a
//! filter never silently matches more than it says.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Longest expression accepted, in bytes.
pub const MAX_EXPR_LEN: usize = 1024;
/// Most primitives and operators in one expression.
const MAX_NODES: usize = 256;
/// Deepest nesting of parentheses and `not`.
const MAX_DEPTH: usize = 32;

/// Why an expression was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FilterError {
    #[error("the filter is longer than {MAX_EXPR_LEN} bytes")]
    TooLong,
    #[error("the filter has more than {MAX_NODES} terms or nests deeper than {MAX_DEPTH}")]
    TooComplex,
    #[error("unexpected `{0}` in the filter")]
    Unexpected(String),
    #[error("the filter ends where {0} was expected")]
    Incomplete(&'static str),
    #[error("`{0}` is not {1}")]
    BadValue(String, &'static str),
}

/// Which end of a packet a primitive looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dir {
    Src,
    Dst,
    Either,
}

/// A protocol named in a filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Proto {
    Ip,
    Ip6,
    Arp,
    Tcp,
    Udp,
    Icmp,
    Icmp6,
    Vlan,
}

/// One parsed expression node.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Node {
    Proto(Proto),
    Host(Dir, IpAddr),
    Net(Dir, IpAddr, u8),
    /// Ports `lo..=hi`, on TCP and UDP or on one of them.
    Ports(Dir, u16, u16, Option<Proto>),
    Ether(Dir, [u8; 6]),
    Not(Box<Node>),
    And(Box<Node>, Box<Node>),
    Or(Box<Node>, Box<Node>),
}

/// A parsed capture filter; the empty expression matches everything.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Filter {
    root: Option<Node>,
    text: String,
}

impl fmt::Display for Filter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl Filter {
    /// Parses `expr`; empty (or only spaces) is the filter that takes all.
    pub fn parse(expr: &str) -> Result<Filter, FilterError> {
        if expr.len() > MAX_EXPR_LEN {
            return Err(FilterError::TooLong);
        }
        let tokens = tokenize(expr);
        if tokens.is_empty() {
            return Ok(Filter::default());
        }
        let mut p = Parser {
            tokens,
            at: 0,
            nodes: 0,
        };
        let root = p.expr(0)?;
        if let Some(t) = p.peek() {
            return Err(FilterError::Unexpected(t.to_string()));
        }
        Ok(Filter {
            root: Some(root),
            text: expr.trim().to_string(),
        })
    }

    /// Whether the filter takes every frame.
    pub fn is_empty(&self) -> bool {
        self.root.is_none()
    }

    /// Whether `frame` (an Ethernet frame) passes.
    pub fn matches(&self, frame: &[u8]) -> bool {
        match &self.root {
            None => true,
            Some(n) => eval(n, &Headers::parse(frame)),
        }
    }
}

fn tokenize(expr: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = expr;
    loop {
        rest = rest.trim_start();
        let Some(c) = rest.chars().next() else {
            return out;
        };
        let len = match c {
            '(' | ')' => 1,
            '!' => 1,
            '&' | '|' => {
                if rest[1..].starts_with(c) {
                    2
                } else {
                    1
                }
            }
            _ => rest
                .find(|c: char| c.is_whitespace() || "()!&|".contains(c))
                .unwrap_or(rest.len()),
        };
        out.push(&rest[..len]);
        rest = &rest[len..];
    }
}

struct Parser<'a> {
    tokens: Vec<&'a str>,
    at: usize,
    nodes: usize,
}

impl<'a> Parser<'a> {
    fn peek(&self) -> Option<&'a str> {
        self.tokens.get(self.at).copied()
    }

    fn next(&mut self, what: &'static str) -> Result<&'a str, FilterError> {
        let t = self.peek().ok_or(FilterError::Incomplete(what))?;
        self.at += 1;
        Ok(t)
    }

    fn count(&mut self, depth: usize) -> Result<(), FilterError> {
        self.nodes += 1;
        if self.nodes > MAX_NODES || depth > MAX_DEPTH {
            return Err(FilterError::TooComplex);
        }
        Ok(())
    }

    /// `and` and `or`, left to right, equal precedence (as pcap-filter).
    fn expr(&mut self, depth: usize) -> Result<Node, FilterError> {
        let mut left = self.unary(depth)?;
        loop {
            let op = match self.peek() {
                Some("and" | "&&") => true,
                Some("or" | "||") => false,
                _ => return Ok(left),
            };
            self.at += 1;
            self.count(depth)?;
            let right = self.unary(depth)?;
            left = if op {
                Node::And(Box::new(left), Box::new(right))
            } else {
                Node::Or(Box::new(left), Box::new(right))
            };
        }
    }

    fn unary(&mut self, depth: usize) -> Result<Node, FilterError> {
        self.count(depth)?;
        match self.peek() {
            Some("not" | "!") => {
                self.at += 1;
                Ok(Node::Not(Box::new(self.unary(depth + 1)?)))
            }
            Some("(") => {
                self.at += 1;
                let inner = self.expr(depth + 1)?;
                match self.next("`)`")? {
                    ")" => Ok(inner),
                    t => Err(FilterError::Unexpected(t.to_string())),
                }
            }
            _ => self.primitive(),
        }
    }

    fn primitive(&mut self) -> Result<Node, FilterError> {
        let t = self.next("a protocol, host, net or port")?;
        let proto = match t {
            "ip" => Some(Proto::Ip),
            "ip6" => Some(Proto::Ip6),
            "arp" => Some(Proto::Arp),
            "tcp" => Some(Proto::Tcp),
            "udp" => Some(Proto::Udp),
            "icmp" => Some(Proto::Icmp),
            "icmp6" => Some(Proto::Icmp6),
            "vlan" => Some(Proto::Vlan),
            _ => None,
        };
        if let Some(p) = proto {
            // `tcp port 80`, `udp src port 53`: the port narrowed to it.
            if matches!(p, Proto::Tcp | Proto::Udp)
                && matches!(self.peek(), Some("port" | "portrange" | "src" | "dst"))
            {
                let t = self.next("port")?;
                return self.qualified(t, Some(p));
            }
            return Ok(Node::Proto(p));
        }
        if t == "ether" {
            let mut t = self.next("`host`")?;
            let dir = match t {
                "src" => Dir::Src,
                "dst" => Dir::Dst,
                _ => Dir::Either,
            };
            if dir != Dir::Either {
                t = self.next("`host`")?;
            }
            if t != "host" {
                return Err(FilterError::Unexpected(t.to_string()));
            }
            let v = self.next("a MAC address")?;
            return Ok(Node::Ether(dir, parse_mac(v)?));
        }
        self.qualified(t, None)
    }

    /// `[src|dst] host|net|port|portrange VALUE`, from its first word.
    fn qualified(&mut self, first: &'a str, on: Option<Proto>) -> Result<Node, FilterError> {
        let (dir, kind) = match first {
            "src" | "dst" => {
                let dir = if first == "src" { Dir::Src } else { Dir::Dst };
                (dir, self.next("`host`, `net` or `port`")?)
            }
            _ => (Dir::Either, first),
        };
        let value = |p: &mut Self, what| p.next(what);
        match kind {
            "host" if on.is_none() => {
                let v = value(self, "an address")?;
                let ip = v
                    .parse()
                    .map_err(|_| FilterError::BadValue(v.to_string(), "an IP address"))?;
                Ok(Node::Host(dir, ip))
            }
            "net" if on.is_none() => {
                let v = value(self, "a CIDR")?;
                let (ip, len) = parse_cidr(v)?;
                Ok(Node::Net(dir, ip, len))
            }
            "port" => {
                let v = value(self, "a port")?;
                let p = parse_port(v)?;
                Ok(Node::Ports(dir, p, p, on))
            }
            "portrange" => {
                let v = value(self, "a port range")?;
                let (lo, hi) = v
                    .split_once('-')
                    .ok_or_else(|| FilterError::BadValue(v.to_string(), "a range N-M"))?;
                let (lo, hi) = (parse_port(lo)?, parse_port(hi)?);
                if lo > hi {
                    return Err(FilterError::BadValue(v.to_string(), "a range N-M"));
                }
                Ok(Node::Ports(dir, lo, hi, on))
            }
            t => Err(FilterError::Unexpected(t.to_string())),
        }
    }
}

fn parse_port(v: &str) -> Result<u16, FilterError> {
    v.parse()
        .map_err(|_| FilterError::BadValue(v.to_string(), "a port number"))
}

fn parse_cidr(v: &str) -> Result<(IpAddr, u8), FilterError> {
    let bad = || FilterError::BadValue(v.to_string(), "a CIDR");
    let (ip, len) = v.split_once('/').ok_or_else(bad)?;
    let ip: IpAddr = ip.parse().map_err(|_| bad())?;
    let len: u8 = len.parse().map_err(|_| bad())?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    if len > max {
        return Err(bad());
    }
    Ok((ip, len))
}

fn parse_mac(v: &str) -> Result<[u8; 6], FilterError> {
    let bad = || FilterError::BadValue(v.to_string(), "a MAC address");
    let mut mac = [0u8; 6];
    let mut parts = v.split(':');
    for b in &mut mac {
        let p = parts.next().ok_or_else(bad)?;
        if p.is_empty() || p.len() > 2 {
            return Err(bad());
        }
        *b = u8::from_str_radix(p, 16).map_err(|_| bad())?;
    }
    if parts.next().is_some() {
        return Err(bad());
    }
    Ok(mac)
}

/// What a frame's headers say, as far as filters look.
#[derive(Debug, Default)]
struct Headers {
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    vlan: bool,
    /// IPv4 or IPv6 (or ARP's protocol addresses), source and destination.
    addrs: Option<(IpAddr, IpAddr)>,
    /// 4, 6, or 0 for ARP / none.
    ip: u8,
    arp: bool,
    /// The IP protocol (IPv6: the first next header).
    proto: Option<u8>,
    /// TCP or UDP ports (first fragment only).
    ports: Option<(u16, u16)>,
}

const TCP: u8 = 6;
const UDP: u8 = 17;
const ICMP: u8 = 1;
const ICMP6: u8 = 58;

impl Headers {
    fn parse(f: &[u8]) -> Headers {
        let mut h = Headers::default();
        if f.len() < 14 {
            return h;
        }
        h.dst_mac.copy_from_slice(&f[0..6]);
        h.src_mac.copy_from_slice(&f[6..12]);
        let mut at = 12;
        let mut ethertype = u16::from_be_bytes([f[12], f[13]]);
        for _ in 0..2 {
            if matches!(ethertype, 0x8100 | 0x88a8) && f.len() >= at + 6 {
                h.vlan = true;
                at += 4;
                ethertype = u16::from_be_bytes([f[at], f[at + 1]]);
            }
        }
        let l3 = at + 2;
        let p = &f[l3.min(f.len())..];
        match ethertype {
            0x0800 if p.len() >= 20 && p[0] >> 4 == 4 => {
                h.ip = 4;
                let ihl = usize::from(p[0] & 0x0f) * 4;
                let src = Ipv4Addr::new(p[12], p[13], p[14], p[15]);
                let dst = Ipv4Addr::new(p[16], p[17], p[18], p[19]);
                h.addrs = Some((src.into(), dst.into()));
                h.proto = Some(p[9]);
                let first = u16::from_be_bytes([p[6], p[7]]) & 0x1fff == 0;
                if first && ihl >= 20 {
                    h.ports = ports(p, ihl, p[9]);
                }
            }
            0x86dd if p.len() >= 40 && p[0] >> 4 == 6 => {
                h.ip = 6;
                let a = |o: usize| {
                    let mut b = [0u8; 16];
                    b.copy_from_slice(&p[o..o + 16]);
                    IpAddr::V6(Ipv6Addr::from(b))
                };
                h.addrs = Some((a(8), a(24)));
                h.proto = Some(p[6]);
                h.ports = ports(p, 40, p[6]);
            }
            0x0806 if p.len() >= 28 && p[4] == 6 && p[5] == 4 => {
                h.arp = true;
                let spa = Ipv4Addr::new(p[14], p[15], p[16], p[17]);
                let tpa = Ipv4Addr::new(p[24], p[25], p[26], p[27]);
                h.addrs = Some((spa.into(), tpa.into()));
            }
            0x0806 => h.arp = true,
            _ => {}
        }
        h
    }
}

fn ports(p: &[u8], l4: usize, proto: u8) -> Option<(u16, u16)> {
    if !matches!(proto, TCP | UDP) || p.len() < l4 + 4 {
        return None;
    }
    Some((
        u16::from_be_bytes([p[l4], p[l4 + 1]]),
        u16::from_be_bytes([p[l4 + 2], p[l4 + 3]]),
    ))
}

fn either<T>(dir: Dir, (src, dst): (T, T), f: impl Fn(T) -> bool) -> bool {
    match dir {
        Dir::Src => f(src),
        Dir::Dst => f(dst),
        Dir::Either => f(src) || f(dst),
    }
}

fn in_net(ip: IpAddr, net: IpAddr, len: u8) -> bool {
    match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
            u32::from(a) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
            u128::from(a) & mask == u128::from(n) & mask
        }
        _ => false,
    }
}

fn eval(n: &Node, h: &Headers) -> bool {
    match n {
        Node::Proto(p) => match p {
            Proto::Ip => h.ip == 4,
            Proto::Ip6 => h.ip == 6,
            Proto::Arp => h.arp,
            Proto::Tcp => h.ip != 0 && h.proto == Some(TCP),
            Proto::Udp => h.ip != 0 && h.proto == Some(UDP),
            Proto::Icmp => h.ip == 4 && h.proto == Some(ICMP),
            Proto::Icmp6 => h.ip == 6 && h.proto == Some(ICMP6),
            Proto::Vlan => h.vlan,
        },
        Node::Host(dir, ip) => h.addrs.is_some_and(|a| either(*dir, a, |x| x == *ip)),
        Node::Net(dir, net, len) => h
            .addrs
            .is_some_and(|a| either(*dir, a, |x| in_net(x, *net, *len))),
        Node::Ports(dir, lo, hi, on) => {
            let proto_ok = match on {
                Some(Proto::Tcp) => h.proto == Some(TCP),
                Some(Proto::Udp) => h.proto == Some(UDP),
                _ => true,
            };
            proto_ok
                && h.ports
                    .is_some_and(|p| either(*dir, p, |x| (*lo..=*hi).contains(&x)))
        }
        Node::Ether(dir, mac) => either(*dir, (h.src_mac, h.dst_mac), |m| m == *mac),
        Node::Not(a) => !eval(a, h),
        Node::And(a, b) => eval(a, h) && eval(b, h),
        Node::Or(a, b) => eval(a, h) || eval(b, h),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    /// An Ethernet frame: IPv4 `proto` from 10.0.0.2:1234 to 10.0.0.3:80.
    fn v4(proto: u8) -> Vec<u8> {
        let mut f = vec![2, 0, 0, 0, 0, 3, 2, 0, 0, 0, 0, 2, 0x08, 0x00];
        f.extend_from_slice(&[0x45, 0, 0, 40, 0, 0, 0x40, 0, 64, proto, 0, 0]);
        f.extend_from_slice(&[10, 0, 0, 2, 10, 0, 0, 3]);
        f.extend_from_slice(&[0x04, 0xd2, 0, 80, 0, 0, 0, 0, 0x50, 0x10, 0, 0, 0, 0, 0, 0]);
        f
    }

    fn arp() -> Vec<u8> {
        let mut f = vec![0xff; 6];
        f.extend_from_slice(&[2, 0, 0, 0, 0, 2, 0x08, 0x06]);
        f.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1, 2, 0, 0, 0, 0, 2, 10, 0, 0, 2]);
        f.extend_from_slice(&[0, 0, 0, 0, 0, 0, 10, 0, 0, 3]);
        f
    }

    fn v6_udp() -> Vec<u8> {
        let mut f = vec![2, 0, 0, 0, 0, 3, 2, 0, 0, 0, 0, 2, 0x86, 0xdd];
        f.extend_from_slice(&[0x60, 0, 0, 0, 0, 8, UDP, 64]);
        f.extend_from_slice(&"fd00::2".parse::<Ipv6Addr>().unwrap().octets());
        f.extend_from_slice(&"fd00::3".parse::<Ipv6Addr>().unwrap().octets());
        f.extend_from_slice(&[0, 53, 0, 53, 0, 8, 0, 0]);
        f
    }

    #[rstest]
    #[case("", true, true, true)]
    #[case("tcp", true, false, false)]
    #[case("udp", false, false, true)]
    #[case("icmp", false, false, false)]
    #[case("arp", false, true, false)]
    #[case("ip", true, false, false)]
    #[case("ip6", false, false, true)]
    #[case("not arp", true, false, true)]
    #[case("! arp", true, false, true)]
    #[case("host 10.0.0.3", true, true, false)]
    #[case("src host 10.0.0.3", false, false, false)]
    #[case("dst host 10.0.0.3", true, true, false)]
    #[case("net 10.0.0.0/24", true, true, false)]
    #[case("net fd00::/64", false, false, true)]
    #[case("port 80", true, false, false)]
    #[case("src port 1234", true, false, false)]
    #[case("dst port 1234", false, false, false)]
    #[case("udp port 53", false, false, true)]
    #[case("tcp port 53", false, false, false)]
    #[case("portrange 50-90", true, false, true)]
    #[case("tcp and port 80", true, false, false)]
    #[case("tcp && port 81", false, false, false)]
    #[case("arp or udp", false, true, true)]
    #[case("arp||udp", false, true, true)]
    #[case("not (arp or udp)", true, false, false)]
    #[case("host 10.0.0.2 and not port 80", false, true, false)]
    #[case("ether src host 02:00:00:00:00:02", true, true, true)]
    #[case("ether dst host ff:ff:ff:ff:ff:ff", false, true, false)]
    #[case("ether host 2:0:0:0:0:3", true, false, true)]
    fn matches_as_tcpdump_does(
        #[case] expr: &str,
        #[case] tcp: bool,
        #[case] arp_: bool,
        #[case] udp6: bool,
    ) {
        let f = Filter::parse(expr).unwrap();
        assert_eq!(f.matches(&v4(TCP)), tcp, "{expr} on TCP");
        assert_eq!(f.matches(&arp()), arp_, "{expr} on ARP");
        assert_eq!(f.matches(&v6_udp()), udp6, "{expr} on UDP over IPv6");
    }

    #[test]
    fn and_or_are_left_to_right() {
        // pcap-filter: `a or b and c` is `(a or b) and c`.
        let f = Filter::parse("arp or tcp and port 81").unwrap();
        assert!(!f.matches(&arp()));
        assert!(!f.matches(&v4(TCP)));
    }

    #[test]
    fn icmp_is_not_tcp_and_fragments_have_no_ports() {
        assert!(Filter::parse("icmp").unwrap().matches(&v4(ICMP)));
        let mut frag = v4(TCP);
        frag[14 + 6] = 0x00;
        frag[14 + 7] = 0x10;
        assert!(!Filter::parse("port 80").unwrap().matches(&frag));
        assert!(Filter::parse("tcp").unwrap().matches(&frag));
    }

    #[rstest]
    #[case("tcpp", FilterError::Unexpected("tcpp".into()))]
    #[case("host", FilterError::Incomplete("an address"))]
    #[case("host 10.0.0.300", FilterError::BadValue("10.0.0.300".into(), "an IP address"))]
    #[case("port 70000", FilterError::BadValue("70000".into(), "a port number"))]
    #[case("portrange 9-3", FilterError::BadValue("9-3".into(), "a range N-M"))]
    #[case("net 10.0.0.0/33", FilterError::BadValue("10.0.0.0/33".into(), "a CIDR"))]
    #[case("ether host 1:2:3", FilterError::BadValue("1:2:3".into(), "a MAC address"))]
    #[case("(tcp", FilterError::Incomplete("`)`"))]
    #[case("tcp)", FilterError::Unexpected(")".into()))]
    #[case("tcp and", FilterError::Incomplete("a protocol, host, net or port"))]
    #[case("tcp udp", FilterError::Unexpected("udp".into()))]
    #[case("tcp host 10.0.0.1", FilterError::Unexpected("host".into()))]
    fn bad_expressions_are_refused(#[case] expr: &str, #[case] want: FilterError) {
        assert_eq!(Filter::parse(expr), Err(want));
    }

    #[test]
    fn sizes_are_bounded() {
        assert_eq!(
            Filter::parse(&"tcp or ".repeat(200)),
            Err(FilterError::TooLong)
        );
        assert_eq!(
            Filter::parse(&format!("{}tcp{}", "(".repeat(40), ")".repeat(40))),
            Err(FilterError::TooComplex)
        );
        assert_eq!(
            Filter::parse(&"!".repeat(100)),
            Err(FilterError::TooComplex)
        );
    }

    #[test]
    fn short_and_odd_frames_match_only_what_they_show() {
        let f = Filter::parse("tcp or arp or host 1.2.3.4 or port 1").unwrap();
        for len in 0..v4(TCP).len() {
            let cut = &v4(TCP)[..len];
            let _ = f.matches(cut);
        }
        assert!(!f.matches(&[]));
        assert!(Filter::parse("").unwrap().matches(&[]));
    }
}
