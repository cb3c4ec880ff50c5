//! What each poll token of a worker stands for: a TAP port (its
//! [`PortId`]), the waker, the tunnel, the QUIC queue, a network's upstream
//! DNS socket, or a NAT host socket ([`super::nat_io::NAT_SOCK`]).

use mio::Token;
use switch::{NetworkId, PortId};

pub(super) const WAKER: Token = Token(usize::MAX);
pub(super) const TUNNEL: Token = Token(usize::MAX - 1);
/// QUIC datagrams waiting (encrypted overlays; see [`super::quic`]).
pub(super) const QUIC: Token = Token(usize::MAX - 2);
pub(super) const UPSTREAM_V4: usize = 1 << 40;
pub(super) const UPSTREAM_V6: usize = 1 << 41;

/// The token of `network`'s upstream DNS socket (IPv4 or IPv6).
pub(super) fn upstream_token(network: NetworkId, v6: bool) -> Token {
    Token(if v6 { UPSTREAM_V6 } else { UPSTREAM_V4 } | network.0 as usize)
}

/// What a token stands for.
pub(super) enum Source {
    Waker,
    Tunnel,
    Quic,
    /// A NAT host socket, by its index.
    Nat(usize),
    /// A network's upstream DNS socket, IPv6 or not.
    Upstream(NetworkId, bool),
    Port(PortId),
}

impl Source {
    pub(super) fn of(t: Token) -> Source {
        if t == WAKER {
            Source::Waker
        } else if t == TUNNEL {
            Source::Tunnel
        } else if t == QUIC {
            Source::Quic
        } else if t.0 & super::nat_io::NAT_SOCK != 0 {
            Source::Nat(t.0 & (super::nat_io::NAT_SOCK - 1))
        } else if t.0 & (UPSTREAM_V4 | UPSTREAM_V6) != 0 {
            Source::Upstream(
                NetworkId((t.0 & 0xffff_ffff) as u32),
                t.0 & UPSTREAM_V6 != 0,
            )
        } else {
            Source::Port(PortId(t.0 as u32))
        }
    }
}

/// The token of a TAP port.
pub(super) fn port_token(port: PortId) -> Token {
    Token(port.0 as usize)
}
