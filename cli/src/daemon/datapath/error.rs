//! What can go wrong between the control plane and the datapath workers.

use std::io;

use switch::bridge::BridgeError;
use switch::gateway::GatewayError;
use switch::nat::NatError;

/// An error of a datapath command.
#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    /// A worker thread has ended (its channel is closed).
    #[error("the datapath thread has stopped")]
    Stopped,
    /// A worker could not be woken to read its commands.
    #[error("waking the datapath: {0}")]
    Wake(#[source] io::Error),
    /// A worker did not answer in time.
    #[error("the datapath did not answer")]
    NoAnswer,
    /// The switching core refused a network, port or MAC.
    #[error(transparent)]
    Bridge(BridgeError),
    /// A network's gateway could not be made.
    #[error(transparent)]
    Gateway(GatewayError),
    /// A network's NAT could not be made.
    #[error(transparent)]
    Nat(NatError),
    /// The overlay's tunnel rules refused a VTEP.
    #[error(transparent)]
    Tunnel(overlay::tunnel::TunnelError),
    /// A socket for a gateway's upstream DNS could not be made.
    #[error(transparent)]
    Upstream(io::Error),
    /// A TAP without `IFF_VNET_HDR`.
    #[error("TAP {0} has no virtio_net_hdr (IFF_VNET_HDR); the datapath needs one")]
    NoVnetHdr(String),
    /// A TAP could not be registered with a worker's poller.
    #[error("registering TAP {tap}: {source}")]
    Register {
        tap: String,
        #[source]
        source: io::Error,
    },
    /// A port was given no TAP queue.
    #[error("a port needs at least one TAP queue")]
    NoQueue,
    /// A TAP queue could not be shared with a worker that has none.
    #[error("sharing a TAP queue: {0}")]
    ShareQueue(#[source] io::Error),
    /// Published ports on a network without a NAT.
    #[error("the network has no NAT to publish ports through")]
    NoNat,
    /// A trace whose probe cannot be made (a bug of the caller).
    #[error("cannot trace: {0}")]
    Trace(&'static str),
    /// Published ports' host sockets could not be registered.
    #[error("registering published ports: {0}")]
    Publish(#[source] io::Error),
}

impl From<BridgeError> for DatapathError {
    fn from(e: BridgeError) -> Self {
        DatapathError::Bridge(e)
    }
}

impl From<GatewayError> for DatapathError {
    fn from(e: GatewayError) -> Self {
        DatapathError::Gateway(e)
    }
}

impl From<NatError> for DatapathError {
    fn from(e: NatError) -> Self {
        DatapathError::Nat(e)
    }
}

impl From<overlay::tunnel::TunnelError> for DatapathError {
    fn from(e: overlay::tunnel::TunnelError) -> Self {
        DatapathError::Tunnel(e)
    }
}
