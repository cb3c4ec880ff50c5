//! The commands the control plane sends each worker, with their reply
//! channels.

use super::*;

/// What the control plane asks of the datapath.
pub enum Command {
    /// Adds a bridge domain and, for networks with a gateway, its gateway
    /// port.
    AddNetwork {
        network: NetworkId,
        gateway: Option<(PortId, GatewayConfig)>,
        /// The network's NAT (published ports, egress), next to its gateway.
        nat: Option<NatConfig>,
        reply: mpsc::Sender<Result<(), DatapathError>>,
    },
    /// Starts forwarding the published ports of endpoint `owner` (host
    /// sockets already bound) through `network`'s NAT.
    Publish {
        network: NetworkId,
        owner: PortId,
        published: Vec<Published>,
        reply: mpsc::Sender<Result<(), DatapathError>>,
    },
    /// Closes the published ports of endpoint `owner`.
    Unpublish {
        network: NetworkId,
        owner: PortId,
        reply: mpsc::Sender<()>,
    },
    /// Removes a network (its ports must be gone already).
    RemoveNetwork {
        network: NetworkId,
        reply: mpsc::Sender<()>,
    },
    /// Attaches a TAP as a port of a network.
    AddPort {
        port: PortId,
        network: NetworkId,
        /// This worker's queue of the TAP.
        tap: Tap,
        /// Read frames from it. False for a descriptor shared with another
        /// worker (a single-queue TAP): this worker only writes to it.
        read: bool,
        security: PortSecurity,
        reply: mpsc::Sender<Result<(), DatapathError>>,
    },
    /// On workers other than the first: the gateway port, whose gateway is
    /// the first worker's (frames for it are handed there), with this
    /// worker's shard of its NAT.
    AddHandoff {
        port: PortId,
        network: NetworkId,
        mac: MacAddr,
        nat: Option<NatConfig>,
        reply: mpsc::Sender<Result<(), DatapathError>>,
    },
    /// Detaches a port and hands its TAP back (to be deleted or kept).
    RemovePort {
        port: PortId,
        reply: mpsc::Sender<Option<Tap>>,
    },
    /// Starts (`Some`) or ends (`None`) a capture of TAP ports.
    SetCapture {
        ports: Vec<PortId>,
        capture: Option<Arc<CaptureTap>>,
    },
    /// Sets (or clears) the VNI of an overlay network.
    SetVni {
        network: NetworkId,
        vni: Option<Vni>,
    },
    /// Adds a tunnel port: the VTEP `remote` (another host, or a foreign
    /// VXLAN VTEP) as a port of `network`.
    AddVtep {
        port: PortId,
        /// Its network, address, kind (member or static) and transport
        /// (QUIC for an encrypted network, never UDP).
        vtep: Vtep<NetworkId>,
        reply: mpsc::Sender<Result<(), DatapathError>>,
    },
    /// Pins a remote endpoint's MAC to its VTEP port and answers ARP/ND for
    /// its addresses locally.
    AddRemote {
        network: NetworkId,
        port: PortId,
        mac: MacAddr,
        ips: Vec<IpAddr>,
    },
    /// Forgets a remote endpoint.
    RemoveRemote {
        network: NetworkId,
        mac: MacAddr,
        ips: Vec<IpAddr>,
    },
    /// Reads the counters.
    Stats { reply: mpsc::Sender<DatapathStats> },
    /// Puts a compiled policy table in force.
    SetPolicy {
        table: Arc<switch::policy::PolicyTable>,
    },
    /// Runs a synthetic frame through the decisions (`vswitch trace`),
    /// changing nothing and sending nothing.
    Trace {
        probe: TraceProbe,
        reply: mpsc::Sender<Result<TraceResult, DatapathError>>,
    },
    /// Ends the thread; TAPs are closed (persistent ones stay in their
    /// namespaces).
    Shutdown,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = match self {
            Command::AddNetwork { .. } => "AddNetwork",
            Command::RemoveNetwork { .. } => "RemoveNetwork",
            Command::Publish { .. } => "Publish",
            Command::Unpublish { .. } => "Unpublish",
            Command::AddPort { .. } => "AddPort",
            Command::RemovePort { .. } => "RemovePort",
            Command::SetCapture { .. } => "SetCapture",
            Command::SetVni { .. } => "SetVni",
            Command::AddVtep { .. } => "AddVtep",
            Command::AddHandoff { .. } => "AddHandoff",
            Command::AddRemote { .. } => "AddRemote",
            Command::RemoveRemote { .. } => "RemoveRemote",
            Command::Stats { .. } => "Stats",
            Command::SetPolicy { .. } => "SetPolicy",
            Command::Trace { .. } => "Trace",
            Command::Shutdown => "Shutdown",
        };
        f.write_str(name)
    }
}
