//! The overlay: VXLAN codec, tunnel rules, gossip membership and the
//! cluster directory.
//!
//! Everything here is sans-IO, in the way quinn-proto is: deterministic, no
//! networking, no OS time. Functions take bytes and `now: Instant` and
//! return what should happen (datagrams to send, when to be woken, events);
//! the daemon owns the sockets and the clock and drives these cores.
//! Randomness comes from a seed the caller gives.
//!
//! - [`vxlan`]: the RFC 7348 header, as views over byte buffers in the
//!   style of smoltcp's `wire` module, and decapsulation of UDP payloads.
//! - [`tunnel`]: [`TunnelRules`], the tunnel's forwarding rules: VNI to
//!   network, VTEP and member admission, encrypted or clear, split
//!   horizon; which datagrams come in and which frames go out, and with
//!   which header.
//! - [`key`]: the cluster key (from a key file) and the XChaCha20-Poly1305
//!   sealing of every gossip datagram.
//! - [`identity`]: each host's key pair and self-signed certificate for
//!   QUIC tunnels, and TLS verifiers that accept exactly the certificates
//!   whose fingerprints live members publish in gossip.
//! - [`gossip`]: [`Gossip`], SWIM membership through `foca`, carrying the
//!   directory's changes in foca's custom broadcasts, with a periodic
//!   anti-entropy exchange.
//! - [`directory`]: the replicated state: overlay networks (global, with a
//!   cluster-unique VNI each), the endpoints every host publishes (with
//!   their containers' labels) and the cluster-wide policies (opaque bytes
//!   by name), with versions and tombstones so that no late message brings
//!   back old state.
//! - [`sim`]: a deterministic simulated network (seeded loss and delay, a
//!   simulated clock) of many [`Gossip`] members, for tests and for
//!   measuring convergence.
#![deny(unsafe_code)]

pub mod directory;
pub mod gossip;
pub mod identity;
pub mod key;
pub mod sim;
pub mod tunnel;
pub mod vxlan;

pub use directory::{
    Directory, DirectoryError, DirectoryEvent, IpamConfig, NetVersion, NetworkSpec, PolicyView,
    PublishedEndpoint,
};
pub use gossip::{
    Gossip, GossipConfig, GossipEvent, GossipStats, MemberInfo, MemberMeta, MemberState,
};
pub use identity::{Fingerprint, Identity, TrustSet};
pub use key::ClusterKey;
pub use tunnel::{
    Decap, Encap, EncapError, Encapsulated, Origin, Transport, TunnelDrop, TunnelError,
    TunnelRules, TunnelStats, Vtep, VtepKind,
};
pub use vxlan::{Vni, VxlanPacket, VxlanRepr};

/// Errors of this crate's control-plane operations. (The per-packet parsers
/// return their own small `Copy` errors: [`vxlan::VxlanError`],
/// [`key::AuthError`], [`tunnel::EncapError`].)
#[derive(Debug, thiserror::Error)]
pub enum OverlayError {
    /// The cluster key file could not be used.
    #[error("cluster key: {0}")]
    Key(#[source] key::KeyError),
    /// A directory change was refused.
    #[error("cluster directory: {0}")]
    Directory(#[source] directory::DirectoryError),
    /// The member's metadata is too large to travel in gossip headers.
    #[error("member metadata is {0} bytes encoded; at most {max} fit (shorter node name or fewer tags)", max = gossip::MAX_META_LEN)]
    MetaTooLarge(usize),
    /// The member has no name.
    #[error("a cluster member needs a node name (--node-name)")]
    NoName,
    /// The host's QUIC identity could not be made or read.
    #[error("QUIC identity: {0}")]
    Identity(#[source] identity::IdentityError),
    /// A tunnel port was refused.
    #[error("tunnel: {0}")]
    Tunnel(#[source] tunnel::TunnelError),
    /// The datagram size is too small for gossip.
    #[error("gossip datagrams of {0} bytes are too small; use at least 512 (underlay MTU minus 28 for IPv4, 48 for IPv6)")]
    DatagramTooSmall(usize),
}

impl From<key::KeyError> for OverlayError {
    fn from(e: key::KeyError) -> Self {
        OverlayError::Key(e)
    }
}

impl From<identity::IdentityError> for OverlayError {
    fn from(e: identity::IdentityError) -> Self {
        OverlayError::Identity(e)
    }
}

impl From<tunnel::TunnelError> for OverlayError {
    fn from(e: tunnel::TunnelError) -> Self {
        OverlayError::Tunnel(e)
    }
}

impl From<directory::DirectoryError> for OverlayError {
    fn from(e: directory::DirectoryError) -> Self {
        OverlayError::Directory(e)
    }
}
