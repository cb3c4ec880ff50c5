//! The controller's side of `vswitch events`: the events its steps
//! record (see `daemon/events.rs` for the log) and the samples the
//! anomaly thread feeds the detector (`daemon/anomaly.rs`) with.

use super::*;
use crate::api::EventType;
use crate::daemon::anomaly::{self, Anomaly, Detector, DetectorConfig, Subject};
use crate::daemon::events::{EventLog, NewEvent};

/// How often the anomaly thread samples the counters.
const SAMPLE_EVERY: Duration = Duration::from_secs(1);
/// Events the anomaly thread reads from the log at a time (member changes).
const READ_PIECE: usize = 256;

/// The event log, and the state of each member last announced (gossip
/// repeats `MemberUp` when a member's metadata changes; that is no event).
#[derive(Debug, Default)]
pub(super) struct Recorder {
    log: EventLog,
    members: BTreeMap<String, &'static str>,
}

impl Controller {
    /// The log every event goes to.
    pub fn event_log(&self) -> EventLog {
        self.recorder.log.clone()
    }

    fn emit(&self, e: NewEvent) {
        self.recorder.log.emit(e);
    }

    /// This daemon started.
    pub(super) fn emit_daemon_start(&self) {
        self.emit(
            NewEvent::new(EventType::Daemon, "start", &self.config.node_name)
                .host(&self.config.node_name)
                .attr("version", env!("CARGO_PKG_VERSION"))
                .attr("workers", self.config.workers)
                .attr("cluster", self.gossip.is_some()),
        );
    }

    /// `network create` or `remove` of the network `name` (while its
    /// record is still here); `origin`: the host that made or removed it,
    /// when not this one.
    pub(super) fn network_event(&self, action: &str, name: &str, origin: Option<&str>) -> NewEvent {
        let mut e = NewEvent::new(EventType::Network, action, name).network(name);
        if let Some(n) = self.networks.get(name) {
            let r = &n.record;
            let list = |f: &dyn Fn(&SubnetSpec) -> Option<String>| {
                r.subnets.iter().filter_map(f).collect::<Vec<_>>().join(",")
            };
            let subnets = list(&|s| s.subnet.map(|x| x.to_string()));
            let gateways = list(&|s| s.gateway.map(|x| x.to_string()));
            e = e.attr("driver", r.driver.as_str());
            if action == "create" {
                e = e
                    .attr_opt("subnet", (!subnets.is_empty()).then_some(subnets))
                    .attr_opt("gateway", (!gateways.is_empty()).then_some(gateways))
                    .attr_opt("vni", r.vni)
                    .attr_opt("internal", r.internal.then_some(true));
            }
        }
        e.attr_opt("origin", origin)
    }

    pub(super) fn emit_network(&self, e: NewEvent) {
        self.emit(e);
    }

    /// `endpoint connect` or `disconnect` of `rec`.
    pub(super) fn emit_endpoint(&self, action: &str, rec: &EndpointRecord) {
        self.emit(
            NewEvent::new(EventType::Endpoint, action, &rec.container)
                .network(&rec.network)
                .container(&rec.container)
                .port(&rec.ifname)
                .attr("mac", MacAddr(rec.mac))
                .attr_opt("ipv4", rec.ipv4)
                .attr_opt("ipv6", rec.ipv6),
        );
    }

    /// `port publish` or `unpublish`, one event per port.
    pub(super) fn emit_ports(
        &self,
        action: &str,
        network: &str,
        container: &str,
        ports: &[api::PortMapping],
    ) {
        for p in ports {
            let host = match p.host_ip {
                Some(ip) => SocketAddr::new(ip, p.host_port).to_string(),
                None => format!("*:{}", p.host_port),
            };
            self.emit(
                NewEvent::new(EventType::Port, action, container)
                    .network(network)
                    .container(container)
                    .port(format!("{}/{}", p.container_port, p.proto.as_str()))
                    .attr("host", host),
            );
        }
    }

    /// `container create`, `start`, `exit`, `remove`.
    pub(super) fn emit_container(&self, action: &str, name: &str, attrs: &[(&str, String)]) {
        let mut e = NewEvent::new(EventType::Container, action, name).container(name);
        for (k, v) in attrs {
            e = e.attr(k, v);
        }
        self.emit(e);
    }

    /// `container exit` with its code (`unknown` when neither a report
    /// nor the exit file said it), and `by=rm` when `vswitch rm` stopped it.
    pub(super) fn emit_exit(&self, name: &str, code: Option<i32>, by_rm: bool) {
        let code = code.map_or_else(|| "unknown".to_string(), |c| c.to_string());
        let mut attrs = vec![("exitCode", code)];
        if by_rm {
            attrs.push(("by", "rm".to_string()));
        }
        self.emit_container("exit", name, &attrs);
    }

    /// A member's state as gossip reports it; recorded when it changed.
    pub(super) fn emit_member(&mut self, host: &str, state: &'static str, addr: Option<String>) {
        if self.recorder.members.get(host) == Some(&state) {
            return;
        }
        let before = self.recorder.members.insert(host.to_string(), state);
        self.emit(
            NewEvent::new(EventType::Member, state, host)
                .host(host)
                .attr_opt("address", addr)
                .attr_opt("was", before),
        );
    }

    /// What the anomaly detector looks at: every endpoint's counters and
    /// drops by reason (one `Command::Stats` round trip per worker, as
    /// `vswitch stats` makes) and each switched network's MAC table.
    pub(super) fn anomaly_sample(&self) -> Result<anomaly::Sample, ApiError> {
        let dp = self.datapath.stats().map_err(ApiError::from)?;
        let bound = self.mac_bound as u64;
        let mut sample = anomaly::Sample::default();
        for n in self.networks.values() {
            for e in n.endpoints.values() {
                let c = dp.ports.get(&e.port).copied().unwrap_or_default();
                let drops = dp.port_drops.get(&e.port).copied().unwrap_or_default();
                sample.ports.push(anomaly::PortSample {
                    key: anomaly::PortKey {
                        network: n.record.name.clone(),
                        container: e.record.container.clone(),
                        interface: e.record.ifname.clone(),
                    },
                    counters: c,
                    drops: drops.iter().map(|(r, n)| (r.as_str(), n)).collect(),
                });
            }
            if let Some(id) = n.id {
                sample.tables.push(anomaly::TableSample {
                    network: n.record.name.clone(),
                    entries: dp
                        .mac_entries
                        .iter()
                        .map(|w| w.get(&id).copied().unwrap_or(0) as u64)
                        .max()
                        .unwrap_or(0),
                    bound,
                });
            }
        }
        Ok(sample)
    }
}

impl ControlPlane {
    /// The anomaly thread: once a second, a sample under the lock (see
    /// [`Controller::anomaly_sample`]), the member changes recorded since
    /// the last one (from the log), the detector without the lock; each
    /// anomaly that starts or ends is recorded and logged at warn.
    /// Returns when the daemon stops.
    pub fn watch_anomalies(&self, log: EventLog, stop: &std::sync::atomic::AtomicBool) {
        let mut detector = Detector::new(DetectorConfig::default());
        let mut cursor = log.newest_cursor();
        let mut next = std::time::Instant::now();
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            next += SAMPLE_EVERY;
            let now = std::time::Instant::now();
            if next > now {
                std::thread::sleep(next - now);
            } else {
                // Behind (a long request held the lock): from now on.
                next = now;
            }
            let Some(sample) = self.with(|c| c.anomaly_sample()) else {
                return;
            };
            let mut sample = match sample {
                Ok(s) => s,
                Err(e) => {
                    tracing::debug!(error = %e.message, "no sample for the anomaly detector");
                    continue;
                }
            };
            loop {
                let batch = log.read(cursor, READ_PIECE);
                let Some(last) = batch.events.last() else {
                    break;
                };
                cursor = last.seq;
                sample.member_changes.extend(
                    batch
                        .events
                        .iter()
                        .filter(|e| e.kind == EventType::Member)
                        .map(|e| anomaly::MemberChange {
                            host: e.actor.clone(),
                            state: e.action.clone(),
                        }),
                );
            }
            for a in detector.observe(std::time::Instant::now(), &sample) {
                if a.start {
                    log.count_anomaly(a.kind);
                }
                log.emit(anomaly_event(&a));
            }
        }
    }
}

/// An anomaly as an event, and a line in the daemon's log: at warn when
/// it starts, at info when it ends.
fn anomaly_event(a: &Anomaly) -> NewEvent {
    let action = if a.start {
        a.kind.as_str().to_string()
    } else {
        format!("{}-end", a.kind.as_str())
    };
    let (mut e, subject) = match &a.subject {
        Subject::Port(k) | Subject::PortDrops(k, _) => (
            NewEvent::new(EventType::Anomaly, &action, &k.container)
                .network(&k.network)
                .container(&k.container)
                .port(&k.interface),
            format!(
                "network={} container={} interface={}",
                k.network, k.container, k.interface
            ),
        ),
        Subject::Network(n) => (
            NewEvent::new(EventType::Anomaly, &action, n).network(n),
            format!("network={n}"),
        ),
        Subject::Member(h) => (
            NewEvent::new(EventType::Anomaly, &action, h).host(h),
            format!("member={h}"),
        ),
    };
    let mut detail = Vec::new();
    for (k, v) in &a.detail {
        e = e.attr(k, v);
        detail.push(format!("{k}={v}"));
    }
    let detail = detail.join(" ");
    if a.start {
        tracing::warn!(anomaly = %action, %subject, %detail, "anomaly");
    } else {
        tracing::info!(anomaly = %action, %subject, %detail, "anomaly over");
    }
    e
}
