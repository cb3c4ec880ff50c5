use super::*;
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PortCounters {
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
    pub tx_drops: u64,
    pub drops: u64,
}

/// Tunnel counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TunnelCounters {
    pub rx_packets: u64,
    pub tx_packets: u64,
    /// Not a VXLAN packet.
    pub malformed: u64,
    /// A VNI no overlay network here has.
    pub unknown_vni: u64,
    /// From an address that is not a member with endpoints on that
    /// network, nor an admitted VTEP.
    pub non_member: u64,
    /// Sends that failed.
    pub send_errors: u64,
    /// Plain VXLAN for an encrypted network: dropped.
    pub clear_on_encrypted: u64,
    /// A QUIC datagram for a network that is not encrypted: dropped.
    pub quic_on_plain: u64,
    /// QUIC datagrams from a member that is not a VTEP of that network,
    /// or for a VNI no network here has, or malformed.
    pub quic_rejected: u64,
}

impl TunnelCounters {
    /// Adds another worker's counters.
    pub(super) fn add(&mut self, o: &TunnelCounters) {
        self.rx_packets += o.rx_packets;
        self.tx_packets += o.tx_packets;
        self.malformed += o.malformed;
        self.unknown_vni += o.unknown_vni;
        self.non_member += o.non_member;
        self.send_errors += o.send_errors;
        self.clear_on_encrypted += o.clear_on_encrypted;
        self.quic_on_plain += o.quic_on_plain;
        self.quic_rejected += o.quic_rejected;
    }
}

/// Everything [`Command::Stats`] returns.
#[derive(Debug, Clone, Default)]
pub struct DatapathStats {
    pub ports: HashMap<PortId, PortCounters>,
    /// Frames the switching core dropped, by its reasons.
    pub drops: DropCounters,
    pub tunnel: TunnelCounters,
    /// ARP/ND requests answered locally.
    pub suppressed: u64,
    /// NAT counters of each network.
    pub nat: HashMap<NetworkId, NatStats>,
    /// Frames each worker read from its TAP queues.
    pub worker_rx_packets: Vec<u64>,
}
