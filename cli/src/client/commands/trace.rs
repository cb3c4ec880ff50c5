//! `vswitch trace`: the decision path of a synthetic frame from a
//! container, step by step, as `ovs-appctl ofproto/trace` prints it; nothing
//! is sent.

use anyhow::{bail, Result};
use clap::{Args, ValueEnum};

use super::output::{print_json, Format};
use crate::api::{TraceAction, TraceProto, TraceReport, TraceRequest};
use crate::client::Client;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Proto {
    Icmp,
    Tcp,
    Udp,
}

#[derive(Debug, Args)]
#[command(after_help = "\
Each step prints what was looked at and what it found: the name in the \
embedded DNS, the container's route (read from its interface), the ARP or \
neighbour request, port security, the MAC table, isolation, the gateway and \
NAT, the tunnel (remote host, VNI, transport). The decisions are the \
datapath's own, run on a synthetic frame: nothing is sent, learned or \
counted.

Exit status: 0 when the frame would be delivered, forwarded through the \
tunnel or routed out by the gateway; 1 when it would be dropped, or on an \
error.")]
pub struct TraceArgs {
    /// The container the frame leaves from.
    #[arg(long, value_name = "CONTAINER")]
    pub from: String,
    /// Where it goes: an IP address, or a name resolved through the
    /// embedded DNS as the container would.
    #[arg(long, value_name = "IP|NAME")]
    pub to: String,
    /// The frame: an echo request (as ping), a TCP SYN or a UDP datagram.
    #[arg(long, value_enum, default_value = "icmp")]
    pub proto: Proto,
    /// The destination port (with --proto tcp or udp).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    pub port: Option<u16>,
    #[arg(long, value_enum, default_value = "table")]
    pub format: Format,
}

/// Returns the exit code: 0 delivered, forwarded or routed; 1 dropped.
pub(super) async fn run(client: &Client, a: TraceArgs) -> Result<i32> {
    let proto = match a.proto {
        Proto::Icmp => TraceProto::Icmp,
        Proto::Tcp => TraceProto::Tcp,
        Proto::Udp => TraceProto::Udp,
    };
    let req = TraceRequest {
        from: a.from,
        to: a.to,
        proto,
        port: a.port,
    };
    // The daemon checks the same; a sentence before a round trip.
    if let Err(e) = req.validate() {
        bail!("{e}");
    }
    let report: TraceReport = client.call("POST", "/v1/trace", Some(&req)).await?;
    match a.format {
        Format::Json => print_json(&report)?,
        Format::Table => print!("{}", render(&report)),
    }
    Ok(match report.verdict.action {
        TraceAction::Dropped => 1,
        _ => 0,
    })
}

/// One line per step, then the verdict.
fn render(r: &TraceReport) -> String {
    let mut out = String::new();
    let what = match (r.proto, r.port) {
        (TraceProto::Icmp, _) => "icmp".to_string(),
        (p, Some(port)) => format!("{}/{port}", p.as_str()),
        (p, None) => p.as_str().to_string(),
    };
    let to = match r.destination {
        Some(ip) if ip.to_string() != r.to => format!("{} ({ip})", r.to),
        _ => r.to.clone(),
    };
    out += &format!("Trace: {} -> {to}, {what}\n", r.from);
    let width = r.steps.iter().map(|s| s.step.len()).max().unwrap_or(0);
    for s in &r.steps {
        let mark = if s.ok { "ok  " } else { "FAIL" };
        out += &format!("  {mark} {:<width$}  {}\n", s.step, s.detail);
    }
    out += &format!("Verdict: {}\n", r.verdict.summary);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{TraceStep, TraceVerdict};

    #[test]
    fn renders_steps_then_the_verdict() {
        let r = TraceReport {
            from: "a".into(),
            to: "b".into(),
            destination: Some("10.0.0.3".parse().unwrap()),
            proto: TraceProto::Tcp,
            port: Some(80),
            steps: vec![
                TraceStep {
                    step: "dns".into(),
                    ok: true,
                    detail: "b resolves to 10.0.0.3".into(),
                },
                TraceStep {
                    step: "port-security".into(),
                    ok: false,
                    detail: "refused: spoofed_mac".into(),
                },
            ],
            verdict: TraceVerdict {
                reason: Some("spoofed_mac".into()),
                summary: "dropped: spoofed_mac".into(),
                ..TraceVerdict::new(TraceAction::Dropped)
            },
        };
        let text = render(&r);
        assert_eq!(
            text,
            "Trace: a -> b (10.0.0.3), tcp/80\n  ok   dns            b resolves to 10.0.0.3\n  FAIL port-security  refused: spoofed_mac\nVerdict: dropped: spoofed_mac\n"
        );
    }
}
