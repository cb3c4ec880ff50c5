//! `vswitch doctor`: the troubleshooting checklist, each step ok or FAIL
//! with what was seen and what would fix it.

use anyhow::{bail, Result};
use clap::Args;

use super::output::{print_json, Format};
use crate::api::{CheckStatus, DoctorCheck, DoctorReport, DoctorRequest};
use crate::client::Client;

#[derive(Debug, Args)]
#[command(after_help = "\
Without arguments, checks the daemon, its datapath and the cluster's \
members. With CONTAINER, also its interfaces as the kernel has them (up, \
MAC, addresses, route, MTU), an echo to each network's gateway and its own \
name through the embedded DNS. With TARGET (a container, an alias, a DNS \
name or an IP address): that both share a network (else the `network \
connect` that would fix it), TARGET's name through the embedded DNS, the \
host it runs on alive in the membership, an echo to it and a full-sized one \
with DF set, and with :PORT a TCP connection (or a UDP datagram) to it and \
what listens there. `host:PORT` checks CONTAINER's published port instead: \
published, listened on in the container, and reached from the host. Last, \
what the switch and the tunnel dropped while the checks ran, by reason.

The probes are real packets sent from inside the container's namespace.

Exit status: 0 when every check passed, 1 when one failed (or on an error).")]
pub struct DoctorArgs {
    /// The container whose connectivity is checked.
    pub container: Option<String>,
    /// What it should reach: NAME|IP[:PORT[/tcp|/udp]], [IPv6]:PORT, or
    /// host:PORT for its published port.
    #[arg(value_name = "TARGET[:PORT[/PROTO]]")]
    pub target: Option<String>,
    #[arg(long, value_enum, default_value = "table")]
    pub format: Format,
}

/// Returns the exit code: 0 when every check passed.
pub(super) async fn run(client: &Client, a: DoctorArgs) -> Result<i32> {
    let req = match DoctorRequest::parse(a.container.as_deref(), a.target.as_deref()) {
        Ok(r) => r,
        Err(e) => bail!("{e}"),
    };
    let report: DoctorReport = match client.call("POST", "/v1/doctor", Some(&req)).await {
        Ok(r) => r,
        // The first check of all: the daemon answers.
        Err(e) if e.to_string().starts_with("cannot reach vswitchd") => DoctorReport {
            container: req.container,
            target: req.target,
            port: req.port,
            proto: req.proto,
            checks: vec![DoctorCheck {
                check: "daemon".into(),
                status: CheckStatus::Fail,
                evidence: e.to_string(),
                fix: Some("start vswitchd (`systemctl start vswitchd`, or `vswitchd` as the user that runs the containers), or point --host/VSWITCH_HOST at its socket".into()),
            }],
            ok: false,
        },
        Err(e) => return Err(e),
    };
    match a.format {
        Format::Json => print_json(&report)?,
        Format::Table => print!("{}", render(&report)),
    }
    Ok(if report.ok { 0 } else { 1 })
}

/// One line per check, its fix under a failure, then the summary.
fn render(r: &DoctorReport) -> String {
    let width = r.checks.iter().map(|c| c.check.len()).max().unwrap_or(0);
    let mut out = String::new();
    for c in &r.checks {
        let mark = match c.status {
            CheckStatus::Ok => "ok  ",
            CheckStatus::Fail => "FAIL",
            CheckStatus::Skip => "skip",
        };
        out += &format!("{mark} {:<width$}  {}\n", c.check, c.evidence);
        if let Some(fix) = &c.fix {
            out += &format!("     {:<width$}  fix: {fix}\n", "");
        }
    }
    let failed = r
        .checks
        .iter()
        .filter(|c| c.status == CheckStatus::Fail)
        .count();
    out += &if failed == 0 {
        "Every check passed.\n".to_string()
    } else {
        format!("{failed} check(s) failed.\n")
    };
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_each_check_with_its_fix() {
        let r = DoctorReport {
            container: Some("a".into()),
            target: Some("b".into()),
            port: None,
            proto: None,
            checks: vec![
                DoctorCheck {
                    check: "daemon".into(),
                    status: CheckStatus::Ok,
                    evidence: "up".into(),
                    fix: None,
                },
                DoctorCheck {
                    check: "network".into(),
                    status: CheckStatus::Fail,
                    evidence: "a is on x; b is on y".into(),
                    fix: Some("`vswitch network connect y a`".into()),
                },
            ],
            ok: false,
        };
        assert_eq!(
            render(&r),
            "ok   daemon   up\nFAIL network  a is on x; b is on y\n              fix: `vswitch network connect y a`\n1 check(s) failed.\n"
        );
    }
}
