//! `vswitchd --metrics-addr ADDR:PORT`: Prometheus and OpenMetrics text on
//! `GET /metrics`, with the `prometheus-client` crate.
//!
//! Nothing here is on the per-packet path. The datapath already keeps its
//! counters per worker and hands them over on [`Command::Stats`], as for
//! `vswitch stats`; a scrape asks for them (and for gossip's, QUIC's and
//! the NATs') through the controller, once, and encodes what it got
//! ([`ControllerCollector`], a `prometheus-client` [`Collector`]). The
//! only counters kept for metrics alone are the API requests', one atomic
//! increment per request in the API server ([`ApiMetrics`]).
//!
//! Label values come from bounded sets: network, container and interface
//! names of the endpoints present, member host names, worker indices, and
//! fixed lists of reasons, states, endpoints, methods and status classes.
//!
//! [`Command::Stats`]: super::datapath::Command::Stats

use std::convert::Infallible;
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Response, StatusCode};
use hyper_util::rt::TokioIo;
use overlay::tunnel::{TunnelDrop, TunnelStats};
use overlay::{GossipStats, MemberState};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};
use switch::bridge::{DropCounters, DropReason};
use switch::fdb::FdbStats;
use switch::nat::NatStats;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

use super::controller::ControlPlane;
use super::datapath::{PolicyCounters, PortCounters, TunnelCounters};
use super::quic::QuicStats;

/// The OpenMetrics content type, for a scraper that asks for it.
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// The Prometheus text format (0.0.4), for everyone else.
pub const PROMETHEUS_TEXT: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;
/// Connections served at once; more wait in the kernel's backlog.
const MAX_CONNECTIONS: usize = 16;
/// How long a client gets to send its request's head.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest request head read (a scraper's is a few hundred bytes).
const MAX_HEAD: usize = 8 * 1024;
/// How long a connection may stay open, however it is used.
const CONNECTION_LIFETIME: Duration = Duration::from_secs(60);

/// Parses `--metrics-addr`, with a sentence when it is not ADDR:PORT.
pub fn parse_addr(s: &str) -> Result<SocketAddr, String> {
    s.parse::<SocketAddr>().map_err(|_| {
        format!(
            "`{s}` is not ADDR:PORT; give an IP address and a port, e.g. 127.0.0.1:9469 or [::1]:9469"
        )
    })
}

// ---- API requests --------------------------------------------------------

/// Labels of one API request counter.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ApiLabels {
    endpoint: &'static str,
    method: &'static str,
    status_class: &'static str,
}

/// The API requests, counted by the API server: by endpoint (one of
/// [`crate::api::Request::endpoint`]'s, `info`, or `invalid` for a
/// request refused before it was decoded), method and status class.
#[derive(Debug, Clone, Default)]
pub struct ApiMetrics {
    requests: Family<ApiLabels, Counter>,
}

impl ApiMetrics {
    /// Counts one answered request.
    pub fn count(&self, endpoint: &'static str, method: &Method, status: u16) {
        self.requests
            .get_or_create(&ApiLabels {
                endpoint,
                method: method_label(method),
                status_class: status_class(status),
            })
            .inc();
    }
}

/// A method as a label: the standard ones, everything else `other`.
fn method_label(m: &Method) -> &'static str {
    match *m {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::PATCH => "PATCH",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

fn status_class(status: u16) -> &'static str {
    match status / 100 {
        1 => "1xx",
        2 => "2xx",
        3 => "3xx",
        4 => "4xx",
        _ => "5xx",
    }
}

// ---- what a scrape reads -------------------------------------------------

/// One endpoint's port.
#[derive(Debug, Clone, Default)]
pub struct PortSample {
    pub network: String,
    pub container: String,
    pub interface: String,
    pub counters: PortCounters,
    pub drops: DropCounters,
}

/// One network.
#[derive(Debug, Clone, Default)]
pub struct NetworkSample {
    pub name: String,
    pub driver: &'static str,
    /// Endpoints on this host.
    pub endpoints: u64,
    /// Overlays: endpoints on other hosts.
    pub remote_endpoints: u64,
    /// Learned MAC entries, one per datapath worker (empty for networks
    /// that switch nothing).
    pub mac_entries: Vec<u64>,
    /// The NAT's counters, for networks with a gateway.
    pub nat: Option<NatStats>,
}

/// One member, as this host's gossip sees it.
#[derive(Debug, Clone)]
pub struct MemberSample {
    pub host: String,
    pub state: MemberState,
}

/// Gossip's side of a scrape.
#[derive(Debug, Clone, Default)]
pub struct GossipSample {
    pub stats: GossipStats,
    pub members: Vec<MemberSample>,
}

/// Every value one scrape encodes, read from the controller at once.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub ports: Vec<PortSample>,
    pub networks: Vec<NetworkSample>,
    /// Frames the switch dropped, by reason, over every port (gateways and
    /// tunnel ports too).
    pub drops: DropCounters,
    /// ARP and neighbour solicitations answered by the switch.
    pub suppressed: u64,
    pub fdb: FdbStats,
    /// Frames each worker read from TAP queues.
    pub worker_rx_packets: Vec<u64>,
    /// TCP connections each worker's NAT shards started.
    pub worker_nat_connections: Vec<u64>,
    pub tunnel: TunnelCounters,
    pub tunnel_rx: TunnelStats,
    /// With a cluster key.
    pub quic: Option<QuicStats>,
    /// With a cluster key.
    pub gossip: Option<GossipSample>,
    /// Containers by state (`created`, `running`, `exited`).
    pub containers: Vec<(&'static str, u64)>,
    /// Events recorded (`vswitch events`), by type.
    pub events: Vec<(&'static str, u64)>,
    /// Anomalies detected (their starts), by kind.
    pub anomalies: Vec<(&'static str, u64)>,
    /// Policies: denials by name, flows, frames routed between networks.
    pub policy: PolicyCounters,
    /// Policies held.
    pub policies: u64,
}

// ---- encoding ------------------------------------------------------------

type Labels = Vec<(&'static str, String)>;

/// Writes one metric family (skipped when it has no sample).
fn family(
    enc: &mut DescriptorEncoder,
    kind: MetricType,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    samples: Vec<(Labels, u64)>,
) -> fmt::Result {
    if samples.is_empty() {
        return Ok(());
    }
    let mut m = enc.encode_descriptor(name, help, unit, kind)?;
    for (labels, v) in &samples {
        let fam = m.encode_family(labels)?;
        match kind {
            MetricType::Counter => ConstCounter::new(*v).encode(fam)?,
            _ => ConstGauge::new(*v).encode(fam)?,
        }
    }
    Ok(())
}

fn counter(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: Vec<(Labels, u64)>,
) -> fmt::Result {
    family(enc, MetricType::Counter, name, help, None, samples)
}

fn bytes_counter(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: Vec<(Labels, u64)>,
) -> fmt::Result {
    family(
        enc,
        MetricType::Counter,
        name,
        help,
        Some(&Unit::Bytes),
        samples,
    )
}

fn gauge(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: Vec<(Labels, u64)>,
) -> fmt::Result {
    family(enc, MetricType::Gauge, name, help, None, samples)
}

fn one(v: u64) -> Vec<(Labels, u64)> {
    vec![(Vec::new(), v)]
}

/// One sample per value, labelled `key` with its name.
fn by<'a>(
    key: &'static str,
    values: impl IntoIterator<Item = (&'a str, u64)>,
) -> Vec<(Labels, u64)> {
    values
        .into_iter()
        .map(|(name, v)| (vec![(key, name.to_string())], v))
        .collect()
}

/// `PREFIX_{rx,tx}_datagrams_total` and `PREFIX_{rx,tx}_bytes_total`
/// for `what` (QUIC, gossip).
fn traffic(
    enc: &mut DescriptorEncoder,
    prefix: &str,
    what: &str,
    (datagrams_in, datagrams_out, bytes_in, bytes_out): (u64, u64, u64, u64),
) -> fmt::Result {
    counter(
        enc,
        &format!("{prefix}_rx_datagrams"),
        &format!("{what} datagrams received."),
        one(datagrams_in),
    )?;
    counter(
        enc,
        &format!("{prefix}_tx_datagrams"),
        &format!("{what} datagrams sent."),
        one(datagrams_out),
    )?;
    bytes_counter(
        enc,
        &format!("{prefix}_rx"),
        &format!("Bytes of {what} datagrams received."),
        one(bytes_in),
    )?;
    bytes_counter(
        enc,
        &format!("{prefix}_tx"),
        &format!("Bytes of {what} datagrams sent."),
        one(bytes_out),
    )
}

fn port_labels(p: &PortSample) -> Labels {
    vec![
        ("network", p.network.clone()),
        ("container", p.container.clone()),
        ("interface", p.interface.clone()),
    ]
}

fn by_network(s: &Snapshot, f: impl Fn(&NetworkSample) -> Option<u64>) -> Vec<(Labels, u64)> {
    s.networks
        .iter()
        .filter_map(|n| Some((vec![("network", n.name.clone())], f(n)?)))
        .collect()
}

fn per_worker(v: &[u64]) -> Vec<(Labels, u64)> {
    v.iter()
        .enumerate()
        .map(|(i, n)| (vec![("worker", i.to_string())], *n))
        .collect()
}

/// Encodes every metric of `s`.
pub fn encode_snapshot(s: &Snapshot, enc: &mut DescriptorEncoder) -> fmt::Result {
    encode_ports(s, enc)?;
    encode_switch(s, enc)?;
    encode_networks(s, enc)?;
    encode_tunnel(s, enc)?;
    if let Some(q) = &s.quic {
        encode_quic(q, enc)?;
    }
    if let Some(g) = &s.gossip {
        encode_gossip(g, enc)?;
    }
    gauge(
        enc,
        "vswitch_containers",
        "Containers by state.",
        s.containers
            .iter()
            .map(|(state, n)| (vec![("state", state.to_string())], *n))
            .collect(),
    )?;
    counter(
        enc,
        "vswitch_events",
        "Events recorded for vswitch events, by type.",
        s.events
            .iter()
            .map(|(t, n)| (vec![("type", t.to_string())], *n))
            .collect(),
    )?;
    counter(
        enc,
        "vswitch_anomalies",
        "Anomalies the daemon detected (each counted when it starts), by kind.",
        s.anomalies
            .iter()
            .map(|(k, n)| (vec![("kind", k.to_string())], *n))
            .collect(),
    )?;
    encode_policy(s, enc)
}

fn encode_policy(s: &Snapshot, enc: &mut DescriptorEncoder) -> fmt::Result {
    let p = &s.policy;
    gauge(
        enc,
        "vswitch_policies",
        "Policies held (vswitch policy ls).",
        one(s.policies),
    )?;
    counter(
        enc,
        "vswitch_policy_denied",
        "Frames (and new egress flows) policies denied, by policy name (default-deny between networks without an allowance, isolate inside an isolated network).",
        p.denied
            .iter()
            .map(|(name, n)| (vec![("policy", name.clone())], *n))
            .collect(),
    )?;
    gauge(
        enc,
        "vswitch_policy_flows",
        "Flows the policies admitted and the workers hold.",
        one(p.flows),
    )?;
    counter(
        enc,
        "vswitch_policy_flow_events",
        "Flows admitted (opened), aged out or closed (expired), cut by a newer policy table (revoked), refused for a full table (full).",
        [
            ("opened", p.flow_stats.opened),
            ("expired", p.flow_stats.expired),
            ("revoked", p.flow_stats.revoked),
            ("full", p.flow_stats.full),
        ]
        .into_iter()
        .map(|(e, n)| (vec![("event", e.to_string())], n))
        .collect(),
    )?;
    counter(
        enc,
        "vswitch_routed_frames",
        "Frames the gateways routed from one network into another.",
        one(p.routed),
    )?;
    counter(
        enc,
        "vswitch_routed_ttl_expired",
        "Frames not routed between networks because their TTL ran out.",
        one(p.ttl_expired),
    )
}

fn encode_ports(s: &Snapshot, enc: &mut DescriptorEncoder) -> fmt::Result {
    let each = |f: fn(&PortCounters) -> u64| -> Vec<(Labels, u64)> {
        s.ports
            .iter()
            .map(|p| (port_labels(p), f(&p.counters)))
            .collect()
    };
    counter(
        enc,
        "vswitch_port_rx_packets",
        "Frames the switch read from an endpoint's TAP (sent by the container).",
        each(|c| c.rx_packets),
    )?;
    bytes_counter(
        enc,
        "vswitch_port_rx",
        "Bytes of the frames the switch read from an endpoint's TAP.",
        each(|c| c.rx_bytes),
    )?;
    counter(
        enc,
        "vswitch_port_tx_packets",
        "Frames the switch wrote to an endpoint's TAP (received by the container).",
        each(|c| c.tx_packets),
    )?;
    bytes_counter(
        enc,
        "vswitch_port_tx",
        "Bytes of the frames the switch wrote to an endpoint's TAP.",
        each(|c| c.tx_bytes),
    )?;
    counter(
        enc,
        "vswitch_port_tx_drops",
        "Frames for an endpoint that could not be written to its TAP.",
        each(|c| c.tx_drops),
    )?;
    counter(
        enc,
        "vswitch_port_drops",
        "Frames from an endpoint the switch dropped, by reason.",
        s.ports
            .iter()
            .flat_map(|p| {
                p.drops.iter().map(move |(r, n)| {
                    let mut l = port_labels(p);
                    l.push(("reason", r.as_str().to_string()));
                    (l, n)
                })
            })
            .collect(),
    )
}

fn encode_switch(s: &Snapshot, enc: &mut DescriptorEncoder) -> fmt::Result {
    counter(
        enc,
        "vswitch_drops",
        "Frames the switch dropped, by reason, over every port (endpoints, gateways, tunnels).",
        DropReason::ALL
            .iter()
            .map(|r| (vec![("reason", r.as_str().to_string())], s.drops.get(*r)))
            .collect(),
    )?;
    counter(
        enc,
        "vswitch_neighbor_suppressed",
        "ARP requests and neighbour solicitations the switch answered itself.",
        one(s.suppressed),
    )?;
    counter(
        enc,
        "vswitch_mac_table_not_learned",
        "Source MAC addresses not learned because a MAC table bound was reached.",
        one(s.fdb.not_learned),
    )?;
    counter(
        enc,
        "vswitch_mac_table_moves",
        "Learned MAC addresses that moved to another port.",
        one(s.fdb.moves),
    )?;
    counter(
        enc,
        "vswitch_mac_table_static_conflicts",
        "Frames from a pinned MAC address on a port other than its own.",
        one(s.fdb.static_conflicts),
    )?;
    counter(
        enc,
        "vswitch_mac_table_aged_out",
        "Learned MAC entries removed by aging.",
        one(s.fdb.aged_out),
    )?;
    counter(
        enc,
        "vswitch_worker_rx_packets",
        "Frames each datapath worker read from its TAP queues.",
        per_worker(&s.worker_rx_packets),
    )?;
    counter(
        enc,
        "vswitch_worker_nat_connections",
        "TCP connections (published ports and egress) each worker's NAT shards started.",
        per_worker(&s.worker_nat_connections),
    )
}

fn encode_networks(s: &Snapshot, enc: &mut DescriptorEncoder) -> fmt::Result {
    gauge(
        enc,
        "vswitch_network_info",
        "Networks on this host, with their driver (always 1).",
        s.networks
            .iter()
            .map(|n| {
                (
                    vec![
                        ("network", n.name.clone()),
                        ("driver", n.driver.to_string()),
                    ],
                    1,
                )
            })
            .collect(),
    )?;
    gauge(
        enc,
        "vswitch_network_endpoints",
        "Endpoints of a network on this host.",
        by_network(s, |n| Some(n.endpoints)),
    )?;
    gauge(
        enc,
        "vswitch_network_remote_endpoints",
        "Endpoints of an overlay network on other hosts.",
        by_network(s, |n| (n.driver == "overlay").then_some(n.remote_endpoints)),
    )?;
    gauge(
        enc,
        "vswitch_mac_table_entries",
        "Learned MAC entries of a network in one datapath worker's table.",
        s.networks
            .iter()
            .flat_map(|n| {
                n.mac_entries.iter().enumerate().map(|(w, e)| {
                    (
                        vec![("network", n.name.clone()), ("worker", w.to_string())],
                        *e,
                    )
                })
            })
            .collect(),
    )?;
    encode_nat(s, enc)
}

fn encode_nat(s: &Snapshot, enc: &mut DescriptorEncoder) -> fmt::Result {
    let nat = |f: fn(&NatStats) -> u64| by_network(s, move |n| n.nat.as_ref().map(f));
    counter(
        enc,
        "vswitch_nat_tcp_connections",
        "TCP connections the NAT started, by direction (inbound: published ports).",
        s.networks
            .iter()
            .filter_map(|n| Some((n, n.nat.as_ref()?)))
            .flat_map(|(n, st)| {
                [("inbound", st.tcp_inbound), ("egress", st.tcp_egress)]
                    .into_iter()
                    .map(|(d, v)| {
                        (
                            vec![("network", n.name.clone()), ("direction", d.to_string())],
                            v,
                        )
                    })
            })
            .collect(),
    )?;
    gauge(
        enc,
        "vswitch_nat_tcp_active_connections",
        "TCP connections the NAT holds now.",
        nat(|n| n.tcp_active),
    )?;
    counter(
        enc,
        "vswitch_nat_tcp_refused",
        "TCP connections the NAT refused: its table was full.",
        nat(|n| n.tcp_refused),
    )?;
    counter(
        enc,
        "vswitch_nat_tcp_connect_failures",
        "Egress TCP connects the host reported failed.",
        nat(|n| n.tcp_connect_failed),
    )?;
    counter(
        enc,
        "vswitch_nat_tcp_timeouts",
        "NAT TCP connections reset for idleness or an unfinished connect.",
        nat(|n| n.tcp_timed_out),
    )?;
    counter(
        enc,
        "vswitch_nat_udp_flows",
        "UDP flows the NAT opened.",
        nat(|n| n.udp_flows),
    )?;
    gauge(
        enc,
        "vswitch_nat_udp_active_flows",
        "UDP flows the NAT holds now.",
        nat(|n| n.udp_active),
    )?;
    counter(
        enc,
        "vswitch_nat_udp_refused",
        "UDP datagrams the NAT dropped: its flow table was full.",
        nat(|n| n.udp_refused),
    )?;
    counter(
        enc,
        "vswitch_nat_icmp_flows",
        "ICMP echo flows the NAT opened.",
        nat(|n| n.icmp_flows),
    )?;
    gauge(
        enc,
        "vswitch_nat_icmp_active_flows",
        "ICMP echo flows the NAT holds now.",
        nat(|n| n.icmp_active),
    )?;
    counter(
        enc,
        "vswitch_nat_egress_denied",
        "Egress the NAT refused on an internal network.",
        nat(|n| n.egress_denied),
    )?;
    counter(
        enc,
        "vswitch_nat_frames_malformed",
        "Frames to the NAT that did not parse.",
        nat(|n| n.frames_malformed),
    )?;
    counter(
        enc,
        "vswitch_nat_frames_dropped",
        "Frames from the NAT dropped: transmit queue full or frame too large.",
        nat(|n| n.frames_dropped),
    )
}

fn encode_tunnel(s: &Snapshot, enc: &mut DescriptorEncoder) -> fmt::Result {
    counter(
        enc,
        "vswitch_tunnel_rx_packets",
        "Tunnel datagrams received, by transport.",
        overlay::tunnel::Transport::ALL
            .iter()
            .map(|t| {
                (
                    vec![("transport", t.as_str().to_ascii_lowercase())],
                    s.tunnel_rx.received(*t),
                )
            })
            .collect(),
    )?;
    counter(
        enc,
        "vswitch_tunnel_rx_delivered",
        "Tunnel datagrams whose frame was delivered to the switch.",
        one(s.tunnel_rx.delivered),
    )?;
    counter(
        enc,
        "vswitch_tunnel_rx_drops",
        "Tunnel datagrams dropped on receipt, by reason.",
        TunnelDrop::ALL
            .iter()
            .filter(|r| r.on_receive())
            .map(|r| {
                (
                    vec![("reason", snake_case(r.as_str()))],
                    s.tunnel_rx.dropped(*r),
                )
            })
            .collect(),
    )?;
    counter(
        enc,
        "vswitch_tunnel_tx_packets",
        "VXLAN datagrams sent over UDP.",
        one(s.tunnel.tx_packets),
    )?;
    counter(
        enc,
        "vswitch_tunnel_send_errors",
        "Tunnel sends that failed.",
        one(s.tunnel.send_errors),
    )?;
    counter(
        enc,
        "vswitch_tunnel_tx_partial_csum",
        "Tunnel datagrams sent to a member with their inner checksum left partial.",
        one(s.tunnel.tx_partial_csum),
    )?;
    counter(
        enc,
        "vswitch_tunnel_rx_partial_csum",
        "Tunnel frames received with a partial inner checksum, passed on marked NEEDS_CSUM.",
        one(s.tunnel.rx_partial_csum),
    )
}

fn encode_quic(q: &QuicStats, enc: &mut DescriptorEncoder) -> fmt::Result {
    traffic(
        enc,
        "vswitch_quic",
        "QUIC",
        (q.datagrams_in, q.datagrams_out, q.bytes_in, q.bytes_out),
    )?;
    counter(
        enc,
        "vswitch_quic_drops",
        "QUIC datagrams dropped, by reason.",
        by(
            "reason",
            [
                ("no_connection", q.drops_no_connection),
                ("too_large", q.drops_too_large),
                ("send_error", q.drops_send_error),
                ("rx_queue_full", q.drops_rx_queue),
            ],
        ),
    )?;
    counter(
        enc,
        "vswitch_quic_handshakes",
        "QUIC handshakes, by result (refused: the peer is not a live member).",
        by(
            "result",
            [
                ("ok", q.handshakes),
                ("refused", q.handshakes_refused),
                ("failed", q.handshakes_failed),
            ],
        ),
    )?;
    gauge(
        enc,
        "vswitch_quic_connections",
        "QUIC connections open now.",
        one(q.connections),
    )?;
    gauge(
        enc,
        "vswitch_quic_lost_packets",
        "QUIC packets declared lost on the connections open now.",
        one(q.lost_packets),
    )?;
    gauge(
        enc,
        "vswitch_quic_congestion_events",
        "Congestion events on the QUIC connections open now.",
        one(q.congestion_events),
    )
}

fn encode_gossip(g: &GossipSample, enc: &mut DescriptorEncoder) -> fmt::Result {
    let st = &g.stats;
    traffic(
        enc,
        "vswitch_gossip",
        "Gossip",
        (st.datagrams_in, st.datagrams_out, st.bytes_in, st.bytes_out),
    )?;
    counter(
        enc,
        "vswitch_gossip_rx_errors",
        "Gossip datagrams refused, by reason (auth: wrong key or tampered).",
        by(
            "reason",
            [
                ("auth", st.auth_failures),
                ("decode", st.decode_failures),
                ("protocol", st.protocol_errors),
            ],
        ),
    )?;
    counter(
        enc,
        "vswitch_gossip_send_drops",
        "Gossip datagrams dropped on the way out.",
        one(st.send_drops),
    )?;
    counter(
        enc,
        "vswitch_gossip_suspicions",
        "Times a member became suspect (failed a probe).",
        one(st.suspicions),
    )?;
    counter(
        enc,
        "vswitch_gossip_members_down",
        "Times a member was declared down or left.",
        one(st.members_down),
    )?;
    counter(
        enc,
        "vswitch_gossip_name_conflicts",
        "Members seen with this host's name at another address.",
        one(st.name_conflicts),
    )?;
    const STATES: [MemberState; 3] = [MemberState::Alive, MemberState::Suspect, MemberState::Down];
    gauge(
        enc,
        "vswitch_gossip_members",
        "Members this host knows of, itself included, by state.",
        STATES
            .iter()
            .map(|s| {
                (
                    vec![("state", s.to_string())],
                    g.members.iter().filter(|m| m.state == *s).count() as u64,
                )
            })
            .collect(),
    )?;
    gauge(
        enc,
        "vswitch_gossip_member_state",
        "1 for each member's state as this host sees it, 0 for the others.",
        g.members
            .iter()
            .flat_map(|m| {
                STATES.iter().map(move |s| {
                    (
                        vec![("host", m.host.clone()), ("state", s.to_string())],
                        u64::from(m.state == *s),
                    )
                })
            })
            .collect(),
    )
}

/// `NonMember` -> `non_member`.
fn snake_case(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 4);
    for (i, c) in s.chars().enumerate() {
        if c.is_ascii_uppercase() {
            if i > 0 {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

// ---- the collector and the server ----------------------------------------

/// Reads the controller's counters at each scrape.
#[derive(Debug)]
pub struct ControllerCollector {
    ctrl: Arc<ControlPlane>,
}

impl Collector for ControllerCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let snapshot = match self.ctrl.with(|c| c.metrics_snapshot()) {
            Some(Ok(s)) => s,
            Some(Err(e)) => {
                tracing::warn!(error = %e.message, "metrics: reading the counters");
                return Err(fmt::Error);
            }
            None => return Err(fmt::Error),
        };
        encode_snapshot(&snapshot, &mut encoder)
    }
}

/// The registry a scrape encodes: the API counters and the collector.
pub fn registry(ctrl: Arc<ControlPlane>, api: &ApiMetrics) -> Registry {
    let mut r = Registry::default();
    r.register(
        "vswitch_api_requests",
        "Control API requests answered, by endpoint (invalid: refused before decoding), method and status class.",
        api.requests.clone(),
    );
    r.register_collector(Box::new(ControllerCollector { ctrl }));
    r
}

/// Encodes `registry` as the client asked (`Accept`): OpenMetrics if it
/// names it, else the Prometheus text format. The content type and text.
pub fn encode(registry: &Registry, accept: &str) -> Result<(&'static str, String), fmt::Error> {
    let mut out = String::new();
    if accept.contains("application/openmetrics-text") {
        prometheus_client::encoding::text::encode(&mut out, registry)?;
        Ok((OPENMETRICS, out))
    } else {
        prometheus_client::encoding::prometheus_text::encode(&mut out, registry)?;
        Ok((PROMETHEUS_TEXT, out))
    }
}

fn text_response(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(Full::new(Bytes::from(body)))
        .expect("static response parts are valid")
}

async fn answer(
    registry: Arc<Registry>,
    req: hyper::Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    const PLAIN: &str = "text/plain; charset=utf-8";
    if req.uri().path() != "/metrics" {
        return Ok(text_response(
            StatusCode::NOT_FOUND,
            PLAIN,
            "not found: metrics are at /metrics\n".into(),
        ));
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = text_response(
            StatusCode::METHOD_NOT_ALLOWED,
            PLAIN,
            "only GET /metrics\n".into(),
        );
        r.headers_mut().insert(
            "allow",
            hyper::header::HeaderValue::from_static("GET, HEAD"),
        );
        return Ok(r);
    }
    let accept = req
        .headers()
        .get(hyper::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    // The controller's lock and the datapath's answer: off the runtime.
    let encoded = tokio::task::spawn_blocking(move || encode(&registry, &accept)).await;
    Ok(match encoded {
        Ok(Ok((content_type, body))) => text_response(StatusCode::OK, content_type, body),
        _ => text_response(
            StatusCode::SERVICE_UNAVAILABLE,
            PLAIN,
            "the daemon's counters could not be read; see vswitchd's log\n".into(),
        ),
    })
}

/// Binds `--metrics-addr`.
pub fn bind(addr: SocketAddr) -> anyhow::Result<std::net::TcpListener> {
    let l = std::net::TcpListener::bind(addr).map_err(|e| {
        anyhow::anyhow!(
            "binding --metrics-addr {addr}: {e}; pick a free port (above 1023 without root) on an address of this host"
        )
    })?;
    l.set_nonblocking(true)?;
    Ok(l)
}

/// Serves `/metrics` on `listener` until `shutdown` turns true: at most
/// [`MAX_CONNECTIONS`] at once, each with a bounded request head, a
/// deadline for it, and a bounded lifetime.
pub async fn serve(
    listener: std::net::TcpListener,
    registry: Registry,
    mut shutdown: watch::Receiver<bool>,
) {
    let listener = match TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "metrics listener");
            return;
        }
    };
    let registry = Arc::new(registry);
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            _ = shutdown.changed() => break,
        };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "metrics: accept");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => break,
        };
        let registry = registry.clone();
        tokio::spawn(async move {
            let conn = http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .max_buf_size(MAX_HEAD)
                .serve_connection(
                    TokioIo::new(stream),
                    service_fn(move |req| answer(registry.clone(), req)),
                );
            match tokio::time::timeout(CONNECTION_LIFETIME, conn).await {
                Ok(Err(e)) => tracing::debug!(error = %e, "metrics connection"),
                Err(_) => tracing::debug!("metrics connection closed: open too long"),
                Ok(Ok(())) => {}
            }
            drop(permit);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(s: &Snapshot, api: &ApiMetrics, accept: &str) -> String {
        #[derive(Debug)]
        struct Fixed(Snapshot);
        impl Collector for Fixed {
            fn encode(&self, mut e: DescriptorEncoder) -> fmt::Result {
                encode_snapshot(&self.0, &mut e)
            }
        }
        let mut r = Registry::default();
        r.register(
            "vswitch_api_requests",
            "API requests.",
            api.requests.clone(),
        );
        r.register_collector(Box::new(Fixed(s.clone())));
        encode(&r, accept).unwrap().1
    }

    fn sample() -> Snapshot {
        let mut drops = DropCounters::default();
        let mut b = switch::bridge::Bridge::new(Default::default());
        let (net, port) = (switch::NetworkId(1), switch::PortId(1));
        b.add_network(net).unwrap();
        b.add_port(port, net, None).unwrap();
        b.count_drop(port, DropReason::SpoofedMac);
        b.count_drop(port, DropReason::SpoofedMac);
        drops.add(b.drops());
        Snapshot {
            ports: vec![PortSample {
                network: "web".into(),
                container: "a\"b".into(),
                interface: "eth0".into(),
                counters: PortCounters {
                    rx_packets: 7,
                    rx_bytes: 700,
                    ..Default::default()
                },
                drops: b.port_drop_reasons(port),
            }],
            networks: vec![NetworkSample {
                name: "web".into(),
                driver: "bridge",
                endpoints: 1,
                remote_endpoints: 0,
                mac_entries: vec![2, 1],
                nat: Some(NatStats {
                    tcp_inbound: 3,
                    ..Default::default()
                }),
            }],
            drops,
            worker_rx_packets: vec![5, 6],
            gossip: Some(GossipSample {
                stats: GossipStats {
                    suspicions: 4,
                    ..Default::default()
                },
                members: vec![
                    MemberSample {
                        host: "h1".into(),
                        state: MemberState::Alive,
                    },
                    MemberSample {
                        host: "h2".into(),
                        state: MemberState::Suspect,
                    },
                ],
            }),
            containers: vec![("running", 1)],
            events: vec![("network", 2), ("anomaly", 1)],
            anomalies: vec![("rate-spike", 1)],
            ..Default::default()
        }
    }

    #[test]
    fn names_follow_prometheus_conventions() {
        let api = ApiMetrics::default();
        api.count("network_create", &Method::POST, 201);
        api.count("invalid", &Method::from_bytes(b"BREW").unwrap(), 404);
        let t = text(&sample(), &api, "*/*");
        for line in [
            "# TYPE vswitch_port_rx_packets_total counter",
            "vswitch_port_rx_packets_total{network=\"web\",container=\"a\\\"b\",interface=\"eth0\"} 7",
            "vswitch_port_rx_bytes_total{network=\"web\",container=\"a\\\"b\",interface=\"eth0\"} 700",
            "vswitch_port_drops_total{network=\"web\",container=\"a\\\"b\",interface=\"eth0\",reason=\"spoofed_mac\"} 2",
            "vswitch_port_drops_total{network=\"web\",container=\"a\\\"b\",interface=\"eth0\",reason=\"spoofed_ip\"} 0",
            "vswitch_drops_total{reason=\"spoofed_mac\"} 2",
            "vswitch_mac_table_entries{network=\"web\",worker=\"1\"} 1",
            "vswitch_nat_tcp_connections_total{network=\"web\",direction=\"inbound\"} 3",
            "vswitch_worker_rx_packets_total{worker=\"1\"} 6",
            "vswitch_events_total{type=\"network\"} 2",
            "vswitch_anomalies_total{kind=\"rate-spike\"} 1",
            "vswitch_tunnel_rx_drops_total{reason=\"non_member\"} 0",
            "vswitch_gossip_suspicions_total 4",
            "vswitch_gossip_members{state=\"suspect\"} 1",
            "vswitch_gossip_member_state{host=\"h2\",state=\"suspect\"} 1",
            "vswitch_gossip_member_state{host=\"h2\",state=\"alive\"} 0",
            "vswitch_containers{state=\"running\"} 1",
            "vswitch_api_requests_total{endpoint=\"network_create\",method=\"POST\",status_class=\"2xx\"} 1",
            "vswitch_api_requests_total{endpoint=\"invalid\",method=\"other\",status_class=\"4xx\"} 1",
        ] {
            assert!(t.lines().any(|l| l == line), "missing {line:?} in\n{t}");
        }
        // Without QUIC, no QUIC families; nothing is OpenMetrics-only.
        assert!(!t.contains("vswitch_quic_"));
        assert!(!t.contains("# EOF"));
        // Every family has its help and type, and counters end in _total.
        for l in t.lines().filter(|l| l.starts_with("# TYPE ")) {
            let w: Vec<&str> = l.split(' ').collect();
            assert!(t.contains(&format!("# HELP {} ", w[2])), "{l}");
            assert_eq!(w[3] == "counter", w[2].ends_with("_total"), "{l}");
        }
    }

    #[test]
    fn openmetrics_when_asked() {
        let t = text(
            &sample(),
            &ApiMetrics::default(),
            "application/openmetrics-text;version=1.0.0,text/plain;q=0.5",
        );
        assert!(t.ends_with("# EOF\n"), "{t}");
        assert!(t.contains("# TYPE vswitch_port_rx_packets counter"));
        assert!(t.contains("# UNIT vswitch_port_rx_bytes bytes"));
    }

    #[test]
    fn labels_are_bounded() {
        assert_eq!(method_label(&Method::from_bytes(b"XYZ").unwrap()), "other");
        assert_eq!(status_class(204), "2xx");
        assert_eq!(status_class(503), "5xx");
        assert_eq!(status_class(999), "5xx");
        assert_eq!(snake_case("ClearOnEncrypted"), "clear_on_encrypted");
    }

    #[test]
    fn bad_addresses_are_refused_with_a_sentence() {
        assert!(parse_addr("127.0.0.1:9469").is_ok());
        assert!(parse_addr("[::1]:9469").is_ok());
        let e = parse_addr("localhost").unwrap_err();
        assert!(e.contains("not ADDR:PORT"), "{e}");
        assert!(parse_addr("127.0.0.1").is_err());
    }
}
