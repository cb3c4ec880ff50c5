//! `vswitch stats`: the datapath's, the tunnel's, gossip's and the NATs'
//! counters under the API's names.

use super::*;

impl Controller {
    pub(super) fn stats(&self) -> Result<api::Stats, ApiError> {
        let dp = self.datapath.stats().map_err(ApiError::from)?;
        let mut ports = Vec::new();
        for n in self.networks.values() {
            for e in n.endpoints.values() {
                let c = dp.ports.get(&e.port).copied().unwrap_or_default();
                ports.push(api::PortStats {
                    network: n.record.name.clone(),
                    container: e.record.container.clone(),
                    interface: e.record.ifname.clone(),
                    rx_packets: c.rx_packets,
                    rx_bytes: c.rx_bytes,
                    tx_packets: c.tx_packets,
                    tx_bytes: c.tx_bytes,
                    drops: c.drops,
                    tx_drops: c.tx_drops,
                });
            }
        }
        let (t, rx) = (dp.tunnel, dp.tunnel_rx);
        let quic_stats = self
            .quic
            .as_ref()
            .map(|q| q.handle().stats())
            .unwrap_or_default();
        // What was sent, then what the tunnel rules received and dropped,
        // under the rules' own names for the reasons.
        let tunnel = [
            ("RxPackets", rx.received(overlay::tunnel::Transport::Udp)),
            ("TxPackets", t.tx_packets),
            ("SendErrors", t.send_errors),
            ("TxPartialCsum", t.tx_partial_csum),
            ("RxPartialCsum", t.rx_partial_csum),
        ]
        .into_iter()
        .chain(
            overlay::tunnel::TunnelDrop::ALL
                .into_iter()
                .filter(|r| r.on_receive())
                .map(|r| (r.as_str(), rx.dropped(r))),
        )
        .map(|(k, v)| (k.to_string(), v))
        .chain(
            quic_stats
                .named()
                .into_iter()
                .map(|(k, v)| (format!("Quic{k}"), v)),
        )
        .collect();
        let gossip = match &self.gossip {
            Some(c) => {
                let g = c.with(|g, _| g.stats());
                [
                    ("DatagramsIn", g.datagrams_in),
                    ("DatagramsOut", g.datagrams_out),
                    ("AuthFailures", g.auth_failures),
                    ("DecodeFailures", g.decode_failures),
                    ("ProtocolErrors", g.protocol_errors),
                    ("PoliciesRefused", self.policies.refused),
                ]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect()
            }
            None => BTreeMap::new(),
        };
        Ok(api::Stats {
            ports,
            drops: dp
                .drops
                .iter()
                .map(|(reason, n)| (reason.as_str().to_string(), n))
                .collect(),
            captures: self.captures_running(),
            policy_denied: dp.policy.denied.clone(),
            policy: [
                ("Flows", dp.policy.flows),
                ("FlowsOpened", dp.policy.flow_stats.opened),
                ("FlowsExpired", dp.policy.flow_stats.expired),
                ("FlowsRevoked", dp.policy.flow_stats.revoked),
                ("FlowsRefusedFull", dp.policy.flow_stats.full),
                ("Routed", dp.policy.routed),
                ("RoutedTtlExpired", dp.policy.ttl_expired),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
            bad_requests: self.bad_requests,
            suppressed: dp.suppressed,
            worker_rx_packets: dp.worker_rx_packets.clone(),
            worker_nat_connections: dp.worker_nat_connections.clone(),
            tunnel,
            gossip,
            nat: self
                .networks
                .values()
                .filter_map(|n| {
                    let st = dp.nat.get(&n.id?)?;
                    let counters = [
                        ("TcpInbound", st.tcp_inbound),
                        ("TcpEgress", st.tcp_egress),
                        ("TcpActive", st.tcp_active),
                        ("TcpRefused", st.tcp_refused),
                        ("TcpConnectFailed", st.tcp_connect_failed),
                        ("UdpFlows", st.udp_flows),
                        ("UdpActive", st.udp_active),
                        ("UdpRefused", st.udp_refused),
                        ("IcmpFlows", st.icmp_flows),
                        ("EgressDenied", st.egress_denied),
                        ("FramesMalformed", st.frames_malformed),
                        ("FramesBadChecksum", st.frames_bad_checksum),
                        ("FramesUnsupported", st.frames_unsupported),
                        ("FramesBadAddress", st.frames_bad_address),
                        ("FramesDropped", st.frames_dropped),
                    ]
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v))
                    .collect();
                    Some((n.record.name.clone(), counters))
                })
                .collect(),
        })
    }
}

impl Controller {
    /// What `/metrics` shows: the same counters as [`Self::stats`], read
    /// once per scrape, plus the tables' sizes and the members' states.
    pub fn metrics_snapshot(&self) -> Result<crate::daemon::metrics::Snapshot, ApiError> {
        use crate::daemon::metrics::{
            GossipSample, MemberSample, NetworkSample, PortSample, Snapshot,
        };
        let dp = self.datapath.stats().map_err(ApiError::from)?;
        let mut ports = Vec::new();
        let mut networks = Vec::new();
        for n in self.networks.values() {
            for e in n.endpoints.values() {
                ports.push(PortSample {
                    network: n.record.name.clone(),
                    container: e.record.container.clone(),
                    interface: e.record.ifname.clone(),
                    counters: dp.ports.get(&e.port).copied().unwrap_or_default(),
                    drops: dp.port_drops.get(&e.port).copied().unwrap_or_default(),
                });
            }
            networks.push(NetworkSample {
                name: n.record.name.clone(),
                driver: n.record.driver.as_str(),
                endpoints: n.endpoints.len() as u64,
                remote_endpoints: n.remotes.len() as u64,
                mac_entries: match n.id {
                    Some(id) => dp
                        .mac_entries
                        .iter()
                        .map(|w| w.get(&id).copied().unwrap_or(0) as u64)
                        .collect(),
                    None => Vec::new(),
                },
                nat: n.id.and_then(|id| dp.nat.get(&id).copied()),
            });
        }
        let gossip = self.gossip.as_ref().map(|c| {
            c.with(|g, _| GossipSample {
                stats: g.stats(),
                members: g
                    .members()
                    .into_iter()
                    .map(|m| MemberSample {
                        host: m.meta.name,
                        state: m.state,
                    })
                    .collect(),
            })
        });
        let mut containers: BTreeMap<&'static str, u64> = ["created", "running", "exited"]
            .into_iter()
            .map(|s| (s, 0))
            .collect();
        for name in self.containers.keys() {
            if let Ok(c) = self.container_inspect(name) {
                *containers.entry(c.state.status.as_str()).or_default() += 1;
            }
        }
        Ok(Snapshot {
            ports,
            networks,
            drops: dp.drops,
            suppressed: dp.suppressed,
            fdb: dp.fdb,
            worker_rx_packets: dp.worker_rx_packets,
            worker_nat_connections: dp.worker_nat_connections,
            tunnel: dp.tunnel,
            tunnel_rx: dp.tunnel_rx,
            quic: self.quic.as_ref().map(|q| q.handle().stats()),
            gossip,
            containers: containers.into_iter().collect(),
            events: {
                let counts = self.event_log().counts();
                api::EventType::ALL
                    .iter()
                    .map(|t| (t.as_str(), counts[t.index()]))
                    .collect()
            },
            anomalies: {
                let counts = self.event_log().anomaly_counts();
                crate::daemon::anomaly::AnomalyKind::ALL
                    .iter()
                    .map(|k| (k.as_str(), counts[k.index()]))
                    .collect()
            },
            policy: dp.policy,
            policies: self.policy_count() as u64,
        })
    }
}
