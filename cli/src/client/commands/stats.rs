//! `vswitch stats`: per-port packets, bytes and drops.

use anyhow::Result;
use clap::Args;

use super::output::{print_json, Col, Format, Table};
use crate::api;
use crate::client::Client;

#[derive(Debug, Args)]
pub struct StatsArgs {
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    #[arg(long, value_enum)]
    pub format: Option<Format>,
}

pub(super) async fn run(client: &Client, a: StatsArgs) -> Result<()> {
    let s: api::Stats = client.get("/v1/stats").await?;
    if a.json || a.format == Some(Format::Json) {
        return print_json(&s);
    }
    const PORTS: Table = Table {
        cols: &[
            Col::Left(16),
            Col::Left(20),
            Col::Left(8),
            Col::Right(10),
            Col::Right(12),
            Col::Right(10),
            Col::Right(12),
            Col::Right(8),
        ],
        sep: " ",
    };
    PORTS.print(&[
        &"NETWORK",
        &"CONTAINER",
        &"IFACE",
        &"RX PKTS",
        &"RX BYTES",
        &"TX PKTS",
        &"TX BYTES",
        &"DROPS",
    ]);
    for p in &s.ports {
        PORTS.print(&[
            &p.network,
            &p.container,
            &p.interface,
            &p.rx_packets,
            &p.rx_bytes,
            &p.tx_packets,
            &p.tx_bytes,
            &(p.drops + p.tx_drops),
        ]);
    }
    for (net, c) in &s.nat {
        let get = |k: &str| c.get(k).copied().unwrap_or(0);
        println!(
            "nat {net}: tcp inbound={} egress={} active={} refused={}; udp flows={} active={}; icmp flows={}; egress denied={}",
            get("TcpInbound"),
            get("TcpEgress"),
            get("TcpActive"),
            get("TcpRefused"),
            get("UdpFlows"),
            get("UdpActive"),
            get("IcmpFlows"),
            get("EgressDenied")
        );
    }
    if s.drops.values().any(|v| *v > 0) {
        let d: Vec<String> = s
            .drops
            .iter()
            .filter(|(_, v)| **v > 0)
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        println!("switch drops: {}", d.join(" "));
    }
    Ok(())
}
