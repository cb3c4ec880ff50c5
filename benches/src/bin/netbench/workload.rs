//! Workloads that run between any scenario's endpoints A and B, and the
//! parsers for what the tools print. Every workload is bounded in time and
//! sends traffic only from A's namespace to B's address.

use std::time::Duration;

use serde::Serialize;
use serde_json::{json, Value};

use crate::exec::{in_ns, wait_bound, wait_listening, Proto, Shell};
use crate::pps::{self, FloodReport, PacketRate, SinkReport};
use crate::rate;
use crate::scenario::Endpoints;
use crate::Error;

/// iperf3's port; the publish group publishes it too.
pub const IPERF_PORT: u16 = 5201;
/// The connection-rate echo server's port; the publish group publishes it.
pub const ECHO_PORT: u16 = 5202;
const SOCKPERF_PORT: u16 = 11111;
/// redis-server's port in B (redis workload).
const REDIS_PORT: u16 = 6379;
/// redis-benchmark's clients at once and requests per test.
const REDIS_CLIENTS: u32 = 50;
const REDIS_REQUESTS_PER_SECOND_OF_RUN: u32 = 20_000;
/// The 64-byte packet-rate receiver's UDP port.
pub const PPS_PORT: u16 = 5203;
const PING_COUNT: u32 = 200;
const PING_INTERVAL: &str = "0.01";
/// Time a server gets to listen.
const SERVER_START: Duration = Duration::from_secs(10);

/// Which way a figure is better.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Better {
    Higher,
    Lower,
}

/// One row of the result table.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Metric {
    /// Stable key, used in JSON.
    pub key: &'static str,
    /// What a person reads in the table.
    pub label: &'static str,
    pub unit: &'static str,
    pub better: Better,
    /// Decimals shown in the table.
    #[serde(skip)]
    pub decimals: usize,
}

/// Every row, in table order.
pub const METRICS: &[Metric] = &[
    Metric {
        key: "tcp_1_gbps",
        label: "TCP throughput, 1 stream (iperf3)",
        unit: "Gbit/s",
        better: Better::Higher,
        decimals: 2,
    },
    Metric {
        key: "tcp_lo_gbps",
        label: "TCP throughput, 1 stream, client on the host's loopback (iperf3)",
        unit: "Gbit/s",
        better: Better::Higher,
        decimals: 2,
    },
    Metric {
        key: "tcp_2_gbps",
        label: "TCP throughput, 2 streams (iperf3 -P 2)",
        unit: "Gbit/s",
        better: Better::Higher,
        decimals: 2,
    },
    Metric {
        key: "tcp_rr_avg_us",
        label: "TCP request/response RTT avg (sockperf)",
        unit: "µs",
        better: Better::Lower,
        decimals: 1,
    },
    Metric {
        key: "tcp_rr_p99_us",
        label: "TCP request/response RTT p99 (sockperf)",
        unit: "µs",
        better: Better::Lower,
        decimals: 1,
    },
    Metric {
        key: "udp64_kpps",
        label: "UDP packet rate, 64-byte frames (received)",
        unit: "kpps",
        better: Better::Higher,
        decimals: 0,
    },
    Metric {
        key: "icmp_avg_us",
        label: "ICMP echo RTT avg (ping, 200 × 10 ms)",
        unit: "µs",
        better: Better::Lower,
        decimals: 1,
    },
    Metric {
        key: "icmp_p99_us",
        label: "ICMP echo RTT p99 (ping, 200 × 10 ms)",
        unit: "µs",
        better: Better::Lower,
        decimals: 1,
    },
    Metric {
        key: "tcp_conn_per_s",
        label: "TCP connections/s (connect, 1-byte echo, close; 4 at once)",
        unit: "conn/s",
        better: Better::Higher,
        decimals: 0,
    },
    Metric {
        key: "tcp_down_gbps",
        label: "TCP download, 1 stream (iperf3 -R)",
        unit: "Gbit/s",
        better: Better::Higher,
        decimals: 2,
    },
    Metric {
        key: "redis_set_rps",
        label: "redis SET requests/s (redis-benchmark, 50 clients)",
        unit: "req/s",
        better: Better::Higher,
        decimals: 0,
    },
    Metric {
        key: "redis_get_rps",
        label: "redis GET requests/s (redis-benchmark, 50 clients)",
        unit: "req/s",
        better: Better::Higher,
        decimals: 0,
    },
    Metric {
        key: "tcp_up_gbps",
        label: "TCP upload, 1 stream (iperf3)",
        unit: "Gbit/s",
        better: Better::Higher,
        decimals: 2,
    },
];

/// A workload between A and B.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workload {
    /// iperf3 TCP from A to B with this many parallel streams.
    TcpStream { streams: u32 },
    /// sockperf TCP ping-pong from A to B.
    TcpRequestResponse,
    /// ping from A to B.
    IcmpEcho,
    /// Short TCP connections from A to B's [`ECHO_PORT`], [`rate::WORKERS`]
    /// at once (netbench's own client and server, see `rate.rs`).
    ConnectRate,
    /// iperf3 TCP from B to A, started by A (`iperf3 -c B -R`): A downloads.
    TcpDownload,
    /// iperf3 TCP from A to B with one stream, for the egress group: A
    /// (the container) uploads to B (the world).
    TcpUpload,
    /// iperf3 TCP, one stream, from a client in the forwarder's own
    /// namespace to `127.0.0.1` ([`Endpoints::loopback_ns`]): a published
    /// port reached on the host's loopback.
    TcpStreamLoopback,
    /// 64-byte frames (UDP, 18 bytes of payload) from A to B as fast as
    /// they go, `sendmmsg`/`recvmmsg` (netbench's own ends, see `pps.rs`).
    PacketRate,
    /// redis-benchmark SET and GET from A against a redis-server in B.
    Redis,
}

/// What one workload measured.
#[derive(Debug, Default, Serialize)]
pub struct Measured {
    /// (metric key, value) pairs.
    pub values: Vec<(&'static str, f64)>,
    /// Everything else the tool said that is worth keeping.
    pub detail: Value,
    /// Something a reader of the figures should know (e.g. loss).
    pub note: Option<String>,
}

impl Workload {
    /// Every workload there is (scenarios choose theirs).
    #[cfg(test)]
    pub fn every() -> Vec<Workload> {
        let mut v = Workload::all();
        v.extend([
            Workload::TcpStreamLoopback,
            Workload::ConnectRate,
            Workload::TcpDownload,
            Workload::TcpUpload,
            Workload::Redis,
        ]);
        v
    }

    /// The workloads between two containers (the local and overlay
    /// groups), in table order.
    pub fn all() -> Vec<Workload> {
        vec![
            Workload::TcpStream { streams: 1 },
            Workload::TcpStream { streams: 2 },
            Workload::TcpRequestResponse,
            Workload::PacketRate,
            Workload::IcmpEcho,
        ]
    }

    pub fn name(&self) -> String {
        match self {
            Workload::TcpStream { streams } => format!("iperf3 TCP -P {streams}"),
            Workload::TcpRequestResponse => "sockperf TCP ping-pong".into(),
            Workload::IcmpEcho => "ping".into(),
            Workload::ConnectRate => "TCP connect/echo/close".into(),
            Workload::TcpDownload => "iperf3 TCP -R".into(),
            Workload::TcpUpload => "iperf3 TCP upload".into(),
            Workload::TcpStreamLoopback => "iperf3 TCP -P 1 via loopback".into(),
            Workload::PacketRate => "UDP 64-byte flood".into(),
            Workload::Redis => "redis-benchmark SET/GET".into(),
        }
    }

    /// The program this workload needs on both ends.
    pub fn tool(&self) -> &'static str {
        match self {
            Workload::TcpStream { .. } => "iperf3",
            Workload::TcpRequestResponse => "sockperf",
            Workload::IcmpEcho => "ping",
            Workload::ConnectRate => "netbench",
            Workload::TcpDownload | Workload::TcpUpload | Workload::TcpStreamLoopback => "iperf3",
            Workload::PacketRate => "netbench",
            Workload::Redis => "redis-benchmark",
        }
    }

    /// Metric keys this workload fills.
    pub fn metric_keys(&self) -> &'static [&'static str] {
        match self {
            Workload::TcpStream { streams: 1 } => &["tcp_1_gbps"],
            Workload::TcpStream { .. } => &["tcp_2_gbps"],
            Workload::TcpRequestResponse => &["tcp_rr_avg_us", "tcp_rr_p99_us"],
            Workload::IcmpEcho => &["icmp_avg_us", "icmp_p99_us"],
            Workload::ConnectRate => &["tcp_conn_per_s"],
            Workload::TcpDownload => &["tcp_down_gbps"],
            Workload::TcpUpload => &["tcp_up_gbps"],
            Workload::TcpStreamLoopback => &["tcp_lo_gbps"],
            Workload::PacketRate => &["udp64_kpps"],
            Workload::Redis => &["redis_set_rps", "redis_get_rps"],
        }
    }

    /// Runs the workload for about `duration` and measures it.
    pub fn run(&self, sh: &Shell, ep: &Endpoints, duration: u32) -> Result<Measured, Error> {
        let b_ip = ep.b_ip.to_string();
        let limit = Duration::from_secs(u64::from(duration) + 30);
        match *self {
            Workload::TcpStream { .. }
            | Workload::TcpDownload
            | Workload::TcpUpload
            | Workload::TcpStreamLoopback => {
                let (streams, reverse) = match *self {
                    Workload::TcpStream { streams } => (streams, false),
                    Workload::TcpDownload => (1, true),
                    _ => (1, false),
                };
                // The client and the address it sends to: A and B's, or
                // the forwarder's namespace and its loopback.
                let (client_ns, b_ip) = match *self {
                    Workload::TcpStreamLoopback => (
                        ep.loopback_ns.as_deref().ok_or_else(|| {
                            Error::Setup(
                                "this scenario has no forwarder namespace to run a loopback client in"
                                    .into(),
                            )
                        })?,
                        std::net::Ipv4Addr::LOCALHOST.to_string(),
                    ),
                    _ => (ep.a_ns.as_str(), b_ip),
                };
                let port = IPERF_PORT.to_string();
                let mut argv = vec!["iperf3", "-s", "-1", "-p", &port];
                // Bound to B's address where it is B's own; listening on
                // every address where A reaches B through a forwarder.
                let server_ip = ep.server_ip.to_string();
                if !ep.server_ip.is_unspecified() {
                    argv.extend(["-B", &server_ip]);
                }
                let mut server = sh.spawn(
                    &in_ns(&ep.b_ns, &argv),
                    &format!("iperf3-server-{}", ep.b_ns),
                )?;
                wait_listening(&mut server, "iperf3", IPERF_PORT, SERVER_START)?;
                let (duration_s, streams_s) = (duration.to_string(), streams.to_string());
                let mut argv = vec![
                    "iperf3",
                    "-c",
                    &b_ip,
                    "-p",
                    &port,
                    "-t",
                    &duration_s,
                    "-P",
                    &streams_s,
                    "-J",
                ];
                if reverse {
                    argv.push("-R");
                }
                let out = sh.ok(&in_ns(client_ns, &argv), limit)?;
                let r = parse_iperf3(&out)?;
                let key = self.metric_keys()[0];
                Ok(Measured {
                    note: None,
                    values: vec![(key, r.received_bps / 1e9)],
                    detail: json!({
                        "received_bits_per_second": r.received_bps,
                        "sent_bits_per_second": r.sent_bps,
                        "retransmits": r.retransmits,
                        "interval_bits_per_second": r.interval_bps,
                        "streams": streams,
                        "reverse": reverse,
                        "client_ns": client_ns,
                        "to": b_ip,
                    }),
                })
            }
            Workload::ConnectRate => {
                let exe = own_exe()?;
                let (port, lifetime) = (ECHO_PORT.to_string(), (duration + 30).to_string());
                let mut server = sh.spawn(
                    &in_ns(
                        &ep.b_ns,
                        &[&exe, "--echo-server", &port, "--lifetime", &lifetime],
                    ),
                    &format!("echo-server-{}", ep.b_ns),
                )?;
                wait_listening(&mut server, "netbench", ECHO_PORT, SERVER_START)?;
                let target = std::net::SocketAddr::new(ep.b_ip, ECHO_PORT).to_string();
                let out = sh.ok(
                    &in_ns(
                        &ep.a_ns,
                        &[
                            &exe,
                            "--connect-rate",
                            &target,
                            "--duration",
                            &duration.to_string(),
                            "--workers",
                            &rate::WORKERS.to_string(),
                        ],
                    ),
                    limit,
                )?;
                let r = rate::parse_report(&out)?;
                let note = (r.failures > 0).then(|| {
                    format!(
                        "{} of {} connections failed",
                        r.failures,
                        r.failures + r.connections
                    )
                });
                Ok(Measured {
                    note,
                    values: vec![("tcp_conn_per_s", r.per_second())],
                    detail: json!(r),
                })
            }
            Workload::PacketRate => {
                let r = packet_rate(sh, ep, duration)?;
                let note = Some(format!(
                    "{:.0} kpps sent, {:.1}% lost{}",
                    r.sent_per_second() / 1e3,
                    r.loss_percent(),
                    if r.send_errors > 0 {
                        format!(", {} send calls refused (ENOBUFS)", r.send_errors)
                    } else {
                        String::new()
                    }
                ));
                Ok(Measured {
                    note,
                    values: vec![("udp64_kpps", r.received_per_second() / 1e3)],
                    detail: json!({
                        "sent": r.sent,
                        "received": r.received,
                        "send_seconds": r.send_seconds,
                        "send_errors": r.send_errors,
                        "receive_active_seconds": r.receive_active_seconds,
                        "sent_per_second": r.sent_per_second(),
                        "received_per_second": r.received_per_second(),
                        "loss_percent": r.loss_percent(),
                        "udp_payload_bytes": pps::PAYLOAD,
                        "batch": pps::BATCH,
                    }),
                })
            }
            Workload::TcpRequestResponse => {
                let mut server = sh.spawn(
                    &in_ns(
                        &ep.b_ns,
                        &[
                            "sockperf",
                            "server",
                            "--tcp",
                            "-i",
                            &b_ip,
                            "-p",
                            &SOCKPERF_PORT.to_string(),
                        ],
                    ),
                    &format!("sockperf-server-{}", ep.b_ns),
                )?;
                wait_listening(&mut server, "sockperf", SOCKPERF_PORT, SERVER_START)?;
                let out = sh.ok(
                    &in_ns(
                        &ep.a_ns,
                        &[
                            "sockperf",
                            "ping-pong",
                            "--tcp",
                            "--full-rtt",
                            "-i",
                            &b_ip,
                            "-p",
                            &SOCKPERF_PORT.to_string(),
                            "-t",
                            &duration.to_string(),
                        ],
                    ),
                    limit,
                )?;
                let r = parse_sockperf(&out)?;
                Ok(Measured {
                    note: None,
                    values: vec![("tcp_rr_avg_us", r.avg_us), ("tcp_rr_p99_us", r.p99_us)],
                    detail: json!({
                        "avg_rtt_us": r.avg_us,
                        "p50_rtt_us": r.p50_us,
                        "p99_rtt_us": r.p99_us,
                        "max_rtt_us": r.max_us,
                        "observations": r.observations,
                    }),
                })
            }
            Workload::Redis => {
                let port = REDIS_PORT.to_string();
                let mut server = sh.spawn(
                    &in_ns(
                        &ep.b_ns,
                        &[
                            "redis-server",
                            "--port",
                            &port,
                            "--bind",
                            &ep.server_ip.to_string(),
                            "--protected-mode",
                            "no",
                            "--save",
                            "",
                            "--appendonly",
                            "no",
                        ],
                    ),
                    &format!("redis-server-{}", ep.b_ns),
                )?;
                wait_listening(&mut server, "redis-server", REDIS_PORT, SERVER_START)?;
                let requests = (REDIS_REQUESTS_PER_SECOND_OF_RUN * duration).to_string();
                let out = sh.ok(
                    &in_ns(
                        &ep.a_ns,
                        &[
                            "redis-benchmark",
                            "-h",
                            &b_ip,
                            "-p",
                            &port,
                            "-c",
                            &REDIS_CLIENTS.to_string(),
                            "-n",
                            &requests,
                            "-t",
                            "set,get",
                            "--csv",
                        ],
                    ),
                    limit,
                )?;
                let r = parse_redis_benchmark(&out)?;
                Ok(Measured {
                    note: None,
                    values: vec![("redis_set_rps", r.0), ("redis_get_rps", r.1)],
                    detail: json!({
                        "set_rps": r.0,
                        "get_rps": r.1,
                        "clients": REDIS_CLIENTS,
                        "requests": requests,
                    }),
                })
            }
            Workload::IcmpEcho => {
                let out = sh.ok(
                    &in_ns(
                        &ep.a_ns,
                        &[
                            "ping",
                            "-n",
                            "-c",
                            &PING_COUNT.to_string(),
                            "-i",
                            PING_INTERVAL,
                            "-W",
                            "2",
                            &b_ip,
                        ],
                    ),
                    Duration::from_secs(60),
                )?;
                let r = parse_ping(&out)?;
                let note = (r.received < r.transmitted).then(|| {
                    format!(
                        "{} of {} echo requests were not answered",
                        r.transmitted - r.received,
                        r.transmitted
                    )
                });
                Ok(Measured {
                    note,
                    values: vec![("icmp_avg_us", r.avg_us), ("icmp_p99_us", r.p99_us)],
                    detail: json!({
                        "transmitted": r.transmitted,
                        "received": r.received,
                        "avg_rtt_us": r.avg_us,
                        "p99_rtt_us": r.p99_us,
                        "max_rtt_us": r.max_us,
                    }),
                })
            }
        }
    }
}

fn own_exe() -> Result<String, Error> {
    std::env::current_exe()
        .map(|p| p.display().to_string())
        .map_err(|e| Error::Io {
            context: "finding netbench's own executable".into(),
            source: e,
        })
}

/// The packet-rate workload: the sink in B, then the flood from A, then the
/// sink's count once it has seen the flood end.
fn packet_rate(sh: &Shell, ep: &Endpoints, duration: u32) -> Result<PacketRate, Error> {
    let exe = own_exe()?;
    // A tag per run, so datagrams of another run never count.
    let tag = std::process::id()
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
    let (port, tag_s) = (PPS_PORT.to_string(), tag.to_string());
    let lifetime = (duration + 30).to_string();
    let mut sink = sh.spawn(
        &in_ns(
            &ep.b_ns,
            &[
                &exe,
                "--udp-sink",
                &port,
                "--lifetime",
                &lifetime,
                "--tag",
                &tag_s,
            ],
        ),
        &format!("udp-sink-{}", ep.b_ns),
    )?;
    wait_bound(&mut sink, "netbench", Proto::Udp, PPS_PORT, SERVER_START)?;
    let target = std::net::SocketAddr::new(ep.b_ip, PPS_PORT).to_string();
    let out = sh.ok(
        &in_ns(
            &ep.a_ns,
            &[
                &exe,
                "--udp-flood",
                &target,
                "--duration",
                &duration.to_string(),
                "--tag",
                &tag_s,
            ],
        ),
        Duration::from_secs(u64::from(duration) + 30),
    )?;
    let flood: FloodReport = pps::parse_last_json("netbench --udp-flood", &out)?;
    // The sink ends IDLE_END after the last datagram.
    let within = pps::IDLE_END + Duration::from_secs(10);
    match sink.wait_exit(within) {
        Some(s) if s.success() => {}
        Some(s) => {
            return Err(Error::Setup(format!(
                "`{}` failed ({s}): {}",
                sink.argv(),
                sink.log_tail(10)
            )))
        }
        None => {
            return Err(Error::Timeout {
                argv: sink.argv().to_string(),
                limit: within,
            })
        }
    }
    let report: SinkReport = pps::parse_last_json("netbench --udp-sink", &sink.log_text())?;
    Ok(PacketRate::new(flood, report))
}

/// What `iperf3 -J` reports at the end of a client run.
#[derive(Debug, Clone, PartialEq)]
pub struct IperfResult {
    pub received_bps: f64,
    pub sent_bps: f64,
    pub retransmits: Option<u64>,
    /// Each interval's rate (`intervals[].sum.bits_per_second`, one a
    /// second by default): shows a stream that stalls rather than runs slow.
    pub interval_bps: Vec<f64>,
}

pub fn parse_iperf3(json_text: &str) -> Result<IperfResult, Error> {
    let v: Value = serde_json::from_str(json_text).map_err(|e| Error::Parse {
        tool: "iperf3",
        what: format!("not JSON: {e}"),
    })?;
    if let Some(err) = v.get("error").and_then(Value::as_str) {
        return Err(Error::Parse {
            tool: "iperf3",
            what: format!("iperf3 reported: {err}"),
        });
    }
    let bps = |section: &str| {
        v["end"][section]["bits_per_second"]
            .as_f64()
            .ok_or_else(|| Error::Parse {
                tool: "iperf3",
                what: format!("no end.{section}.bits_per_second"),
            })
    };
    Ok(IperfResult {
        received_bps: bps("sum_received")?,
        sent_bps: bps("sum_sent")?,
        retransmits: v["end"]["sum_sent"]["retransmits"].as_u64(),
        interval_bps: v["intervals"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|i| i["sum"]["bits_per_second"].as_f64())
                    .collect()
            })
            .unwrap_or_default(),
    })
}

/// What `sockperf ping-pong --full-rtt` reports, in µs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SockperfResult {
    pub avg_us: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub max_us: f64,
    pub observations: u64,
}

pub fn parse_sockperf(text: &str) -> Result<SockperfResult, Error> {
    let text = strip_ansi(text);
    let missing = |what: &str| Error::Parse {
        tool: "sockperf",
        what: format!("no {what} in its output"),
    };
    // The number right after `marker` on the first line where one is.
    let num_after = |marker: &str| -> Option<f64> {
        text.lines().find_map(|line| {
            let start = line.find(marker)? + marker.len();
            let rest = line[start..].trim_start();
            let end = rest
                .find(|c: char| !(c.is_ascii_digit() || c == '.'))
                .unwrap_or(rest.len());
            rest[..end].parse().ok()
        })
    };
    let avg_us = num_after("avg-rtt=").ok_or_else(|| missing("avg-rtt (was --full-rtt given?)"))?;
    Ok(SockperfResult {
        avg_us,
        p50_us: num_after("percentile 50.000 =").ok_or_else(|| missing("p50"))?,
        p99_us: num_after("percentile 99.000 =").ok_or_else(|| missing("p99"))?,
        max_us: num_after("<MAX> observation =").ok_or_else(|| missing("max"))?,
        observations: num_after("Total ")
            .map(|n| n as u64)
            .ok_or_else(|| missing("observation count"))?,
    })
}

/// Removes terminal colour sequences (`ESC [ ... letter`).
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' && chars.peek() == Some(&'[') {
            chars.next();
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// What `ping -n -c N` reports, in µs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PingResult {
    pub transmitted: u64,
    pub received: u64,
    pub avg_us: f64,
    pub p99_us: f64,
    pub max_us: f64,
}

pub fn parse_ping(text: &str) -> Result<PingResult, Error> {
    let bad = |what: &str| Error::Parse {
        tool: "ping",
        what: what.to_string(),
    };
    // "200 packets transmitted, 200 received, 0% packet loss, time 2189ms"
    let stats = text
        .lines()
        .find(|l| l.contains("packets transmitted"))
        .ok_or_else(|| bad("no `packets transmitted` line"))?;
    let mut fields = stats.split(',').map(str::trim);
    let first_num = |f: Option<&str>| -> Option<u64> { f?.split_whitespace().next()?.parse().ok() };
    let transmitted = first_num(fields.next()).ok_or_else(|| bad("transmitted count"))?;
    let received = first_num(fields.next()).ok_or_else(|| bad("received count"))?;
    // "rtt min/avg/max/mdev = 0.031/0.045/0.088/0.010 ms"
    let summary = text
        .lines()
        .find(|l| l.starts_with("rtt ") || l.starts_with("round-trip"))
        .ok_or_else(|| bad("no rtt summary (no replies?)"))?;
    // The values are the first word after `=`; `, pipe N` may follow.
    let values = summary
        .split('=')
        .nth(1)
        .and_then(|v| v.split_whitespace().next())
        .ok_or_else(|| bad(&format!("rtt summary without values: {summary}")))?;
    let parts: Vec<f64> = values
        .split('/')
        .map(|p| p.trim().parse::<f64>())
        .collect::<Result<_, _>>()
        .map_err(|_| bad(&format!("rtt summary values: {summary}")))?;
    if parts.len() < 3 {
        return Err(bad("rtt summary has fewer than 3 values"));
    }
    // Per-reply lines: "64 bytes from 10.0.0.3: icmp_seq=1 ttl=64 time=0.045 ms"
    let mut samples: Vec<f64> = text
        .lines()
        .filter_map(|l| {
            let t = l.split("time=").nth(1)?;
            t.split_whitespace().next()?.parse::<f64>().ok()
        })
        .map(|ms| ms * 1000.0)
        .collect();
    let p99_us = percentile(&mut samples, 99.0).ok_or_else(|| bad("no per-reply times"))?;
    Ok(PingResult {
        transmitted,
        received,
        avg_us: parts[1] * 1000.0,
        p99_us,
        max_us: parts[2] * 1000.0,
    })
}

/// Nearest-rank percentile (sorts `v`); None when empty.
pub fn percentile(v: &mut [f64], p: f64) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    Some(v[rank.clamp(1, v.len()) - 1])
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    const IPERF: &str = r#"{"start":{},"intervals":[{"sum":{"bits_per_second":2.0e10}},{"sum":{"bits_per_second":1.0e3}}],"end":{
        "sum_sent":{"bytes":1,"bits_per_second":2.5e10,"retransmits":7},
        "sum_received":{"bytes":1,"bits_per_second":2.4e10}}}"#;

    #[test]
    fn iperf3_json_gives_receiver_throughput_and_retransmits() {
        let r = parse_iperf3(IPERF).unwrap();
        assert_eq!(r.received_bps, 2.4e10);
        assert_eq!(r.sent_bps, 2.5e10);
        assert_eq!(r.retransmits, Some(7));
        assert_eq!(r.interval_bps, [2.0e10, 1.0e3]);
    }

    #[rstest]
    #[case::error_field(r#"{"start":{},"end":{},"error":"unable to connect to server"}"#)]
    #[case::no_end(r#"{"start":{}}"#)]
    #[case::not_json("iperf3: error")]
    fn iperf3_failures_are_errors(#[case] text: &str) {
        assert!(matches!(
            parse_iperf3(text),
            Err(Error::Parse { tool: "iperf3", .. })
        ));
    }

    const SOCKPERF: &str = "sockperf: [Total Run] RunTime=1.000 sec; Warm up time=400 msec; SentMessages=23511; ReceivedMessages=23510
sockperf: ========= Printing statistics for Server No: 0
sockperf: [Valid Duration] RunTime=0.552 sec; SentMessages=11814; ReceivedMessages=11814
sockperf: \u{1b}[2;35m====> avg-rtt=46.684 (std-dev=397.950)\u{1b}[0m
sockperf: # dropped messages = 0; # duplicated messages = 0; # out-of-order messages = 0
sockperf: Summary: Round trip is 46.684 usec
sockperf: \u{1b}[2;35mTotal 11814 observations\u{1b}[0m; each percentile contains 118.14 observations
sockperf: ---> <MAX> observation = 11889.754
sockperf: ---> percentile 99.999 = 11889.754
sockperf: ---> percentile 99.000 =   74.588
sockperf: ---> percentile 90.000 =   20.357
sockperf: ---> percentile 50.000 =   17.171
sockperf: ---> <MIN> observation =   16.630
";

    #[test]
    fn sockperf_output_gives_rtt_figures() {
        let r = parse_sockperf(SOCKPERF).unwrap();
        assert_eq!(
            r,
            SockperfResult {
                avg_us: 46.684,
                p50_us: 17.171,
                p99_us: 74.588,
                max_us: 11889.754,
                observations: 11814,
            }
        );
    }

    #[test]
    fn sockperf_without_full_rtt_is_rejected() {
        let half = SOCKPERF.replace("avg-rtt", "avg-lat");
        assert!(parse_sockperf(&half).is_err());
    }

    const PING: &str = "PING 10.247.0.3 (10.247.0.3) 56(84) bytes of data.
64 bytes from 10.247.0.3: icmp_seq=1 ttl=64 time=0.100 ms
64 bytes from 10.247.0.3: icmp_seq=2 ttl=64 time=0.050 ms
64 bytes from 10.247.0.3: icmp_seq=3 ttl=64 time=0.060 ms
64 bytes from 10.247.0.3: icmp_seq=4 ttl=64 time=1.20 ms

--- 10.247.0.3 ping statistics ---
5 packets transmitted, 4 received, 20% packet loss, time 41ms
rtt min/avg/max/mdev = 0.050/0.352/1.200/0.490 ms
";

    #[test]
    fn ping_output_gives_avg_p99_and_loss() {
        let r = parse_ping(PING).unwrap();
        assert_eq!(r.transmitted, 5);
        assert_eq!(r.received, 4);
        assert!((r.avg_us - 352.0).abs() < 1e-9);
        assert!((r.p99_us - 1200.0).abs() < 1e-9);
        assert!((r.max_us - 1200.0).abs() < 1e-9);
    }

    #[test]
    fn ping_summary_with_pipe_and_errors() {
        let text = PING
            .replace("20% packet loss", "+1 errors, 20% packet loss")
            .replace("0.490 ms", "0.490 ms, pipe 2");
        let r = parse_ping(&text).unwrap();
        assert_eq!((r.transmitted, r.received), (5, 4));
        assert!((r.avg_us - 352.0).abs() < 1e-9);
    }

    #[test]
    fn ping_without_replies_is_an_error() {
        let none = "PING 10.247.0.3 (10.247.0.3) 56(84) bytes of data.\n\n--- 10.247.0.3 ping statistics ---\n3 packets transmitted, 0 received, 100% packet loss, time 2030ms\n";
        assert!(parse_ping(none).is_err());
    }

    #[rstest]
    #[case(&[], 99.0, None)]
    #[case(&[5.0], 99.0, Some(5.0))]
    #[case(&[3.0, 1.0, 2.0, 4.0], 50.0, Some(2.0))]
    #[case(&[3.0, 1.0, 2.0, 4.0], 99.0, Some(4.0))]
    #[case(&[3.0, 1.0, 2.0, 4.0], 0.0, Some(1.0))]
    fn nearest_rank_percentile(#[case] v: &[f64], #[case] p: f64, #[case] want: Option<f64>) {
        assert_eq!(percentile(&mut v.to_vec(), p), want);
    }

    #[test]
    fn every_metric_a_workload_fills_is_a_table_row() {
        for w in Workload::every() {
            for key in w.metric_keys() {
                assert!(METRICS.iter().any(|m| m.key == *key), "{key}");
            }
        }
        assert_eq!(
            Workload::every()
                .iter()
                .map(|w| w.metric_keys().len())
                .sum::<usize>(),
            METRICS.len()
        );
    }
}

/// Requests per second of SET and GET from `redis-benchmark --csv`
/// (`"SET","33613.45",...` lines after a header).
fn parse_redis_benchmark(out: &str) -> Result<(f64, f64), Error> {
    let rps = |test: &str| {
        out.lines()
            .filter_map(|l| {
                let mut cols = l.split(',').map(|c| c.trim_matches('"'));
                (cols.next()? == test).then(|| cols.next()?.parse::<f64>().ok())?
            })
            .next()
            .ok_or_else(|| Error::Parse {
                tool: "redis-benchmark",
                what: format!("no {test} line in: {out}"),
            })
    };
    Ok((rps("SET")?, rps("GET")?))
}

#[cfg(test)]
mod redis_tests {
    use super::*;

    #[test]
    fn redis_benchmark_csv_is_read() {
        let out = "\"test\",\"rps\",\"avg_latency_ms\"\n\"SET\",\"33613.45\",\"0.408\"\n\"GET\",\"35587.19\",\"0.394\"\n";
        assert_eq!(parse_redis_benchmark(out).unwrap(), (33613.45, 35587.19));
        assert!(parse_redis_benchmark("\"SET\",\"1\"").is_err());
    }
}
