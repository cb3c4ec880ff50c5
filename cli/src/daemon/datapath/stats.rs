//! Counters a worker keeps locally and hands over on [`Command::Stats`];
//! the handle adds up every worker's.

use super::*;

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

impl PortCounters {
    /// Adds the same port's counters of another worker.
    pub(super) fn add(&mut self, o: &PortCounters) {
        self.rx_packets += o.rx_packets;
        self.rx_bytes += o.rx_bytes;
        self.tx_packets += o.tx_packets;
        self.tx_bytes += o.tx_bytes;
        self.tx_drops += o.tx_drops;
        self.drops += o.drops;
    }
}

/// What the datapath sent into the tunnel (what it received is counted by
/// the tunnel rules: [`overlay::tunnel::TunnelStats`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TunnelCounters {
    /// Datagrams sent over UDP.
    pub tx_packets: u64,
    /// Sends that failed.
    pub send_errors: u64,
    /// Datagrams (UDP or QUIC) sent to a member with their inner TCP or
    /// UDP checksum left partial ([`Checksums::Partial`]).
    pub tx_partial_csum: u64,
    /// Frames received from a tunnel (UDP or QUIC, member or static VTEP)
    /// whose inner checksum was partial, handed on marked `NEEDS_CSUM`.
    pub rx_partial_csum: u64,
}

impl TunnelCounters {
    /// Adds another worker's counters.
    pub(super) fn add(&mut self, o: &TunnelCounters) {
        self.tx_packets += o.tx_packets;
        self.send_errors += o.send_errors;
        self.tx_partial_csum += o.tx_partial_csum;
        self.rx_partial_csum += o.rx_partial_csum;
    }
}

/// Everything [`Command::Stats`] returns.
#[derive(Debug, Clone, Default)]
pub struct DatapathStats {
    pub ports: HashMap<PortId, PortCounters>,
    /// Frames the switching core dropped, by its reasons.
    pub drops: DropCounters,
    /// The same, for each port.
    pub port_drops: HashMap<PortId, DropCounters>,
    /// The forwarding databases' counters (every worker's added up).
    pub fdb: switch::fdb::FdbStats,
    /// Learned MAC entries of each network, one map per worker (each
    /// worker learns into its own copy of the table).
    pub mac_entries: Vec<HashMap<NetworkId, usize>>,
    pub tunnel: TunnelCounters,
    /// The tunnel rules' counts of received datagrams, by drop reason.
    pub tunnel_rx: overlay::tunnel::TunnelStats,
    /// ARP/ND requests answered locally.
    pub suppressed: u64,
    /// NAT counters of each network.
    pub nat: HashMap<NetworkId, NatStats>,
    /// Frames each worker read from its TAP queues.
    pub worker_rx_packets: Vec<u64>,
    /// TCP connections each worker's NAT shards started (published ports
    /// and egress, every network), one entry per worker.
    pub worker_nat_connections: Vec<u64>,
    /// Policies: denials by name, flows, frames routed between networks.
    pub policy: super::PolicyCounters,
}
