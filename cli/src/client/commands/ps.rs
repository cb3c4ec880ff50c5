//! `vswitch ps`, as `docker ps`: containers with their networks,
//! addresses, published ports, state and host; and `vswitch container
//! prune`.

use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use anyhow::Result;
use clap::Args;
use serde::Serialize;

use super::output::{print_json, short, Format};
use crate::api::{self, ContainerStatus};
use crate::client::Client;

#[derive(Debug, Args)]
pub struct PsArgs {
    /// Show every container; without it, only running ones.
    #[arg(short = 'a', long)]
    pub all: bool,
    /// Only the containers' ids.
    #[arg(short = 'q', long)]
    pub quiet: bool,
    #[arg(long, value_enum, default_value = "table")]
    pub format: Format,
}

/// One container in `vswitch ps --format json`. These field names are
/// part of the CLI's contract.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PsEntry {
    #[serde(rename = "Id")]
    pub id: String,
    #[serde(rename = "Name")]
    pub name: String,
    /// The networks it is on (once exited: was on).
    #[serde(rename = "Networks")]
    pub networks: Vec<String>,
    /// Its endpoints' addresses, IPv4 then IPv6 (none once exited).
    #[serde(rename = "Addresses")]
    pub addresses: Vec<IpAddr>,
    /// `HOSTIP:HOSTPORT->PORT/PROTO`, as `docker ps` shows them.
    #[serde(rename = "Ports")]
    pub ports: Vec<String>,
    /// `created`, `running` or `exited`.
    #[serde(rename = "State")]
    pub state: ContainerStatus,
    /// Once exited; null while running or when the code is unknown.
    #[serde(rename = "ExitCode")]
    pub exit_code: Option<i32>,
    /// `Up 5 seconds`, `Exited (3) 2 minutes ago`, as `docker ps`.
    #[serde(rename = "Status")]
    pub status: String,
    #[serde(rename = "Created")]
    pub created: Option<String>,
    #[serde(rename = "StartedAt")]
    pub started_at: Option<String>,
    #[serde(rename = "FinishedAt")]
    pub finished_at: Option<String>,
    /// The command of a `vswitch run` container (empty for Docker's, CNI's
    /// and `network connect`'s).
    #[serde(rename = "Command")]
    pub command: Vec<String>,
    #[serde(rename = "Host")]
    pub host: String,
}

impl PsEntry {
    pub fn of(c: &api::ContainerInspect, now: SystemTime) -> PsEntry {
        let eps = c.networks.values();
        let addresses = eps
            .clone()
            .filter_map(|e| e.ipv4.map(IpAddr::V4))
            .chain(eps.filter_map(|e| e.ipv6.map(IpAddr::V6)))
            .collect();
        let mut ports = Vec::new();
        for (key, bindings) in &c.ports {
            for b in bindings {
                let host = match b.host_ip.parse::<IpAddr>() {
                    Ok(IpAddr::V6(ip)) => format!("[{ip}]"),
                    _ => b.host_ip.clone(),
                };
                ports.push(format!("{host}:{}->{key}", b.host_port));
            }
        }
        PsEntry {
            id: c.id.clone(),
            name: c.name.clone(),
            networks: c.network_names.clone(),
            addresses,
            ports,
            state: c.state.status,
            exit_code: c.state.exit_code,
            status: status_line(&c.state, now),
            created: c.created.clone(),
            started_at: c.state.started_at.clone(),
            finished_at: c.state.finished_at.clone(),
            command: c.cmd.clone(),
            host: c.host.clone(),
        }
    }
}

pub(super) async fn run(client: &Client, a: PsArgs) -> Result<()> {
    let all: Vec<api::ContainerInspect> = client.get("/v1/containers").await?;
    let now = SystemTime::now();
    let rows: Vec<PsEntry> = all
        .iter()
        .filter(|c| a.all || c.state.status == ContainerStatus::Running)
        .map(|c| PsEntry::of(c, now))
        .collect();
    if a.quiet {
        for r in &rows {
            println!("{}", short(&r.id));
        }
        return Ok(());
    }
    match a.format {
        Format::Json => print_json(&rows),
        Format::Table => {
            print!("{}", table(&rows));
            Ok(())
        }
    }
}

/// The table `vswitch ps` prints: columns as wide as their widest cell,
/// three spaces apart, as `docker ps` lays them out.
pub fn table(rows: &[PsEntry]) -> String {
    let header = [
        "CONTAINER ID",
        "NAME",
        "NETWORKS",
        "ADDRESSES",
        "PORTS",
        "STATUS",
        "HOST",
    ]
    .map(String::from);
    let join = |v: &[String]| v.join(",");
    let cells: Vec<[String; 7]> = std::iter::once(header)
        .chain(rows.iter().map(|r| {
            [
                short(&r.id).to_string(),
                r.name.clone(),
                join(&r.networks),
                r.addresses
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(","),
                r.ports.join(", "),
                r.status.clone(),
                r.host.clone(),
            ]
        }))
        .collect();
    let mut widths = [0usize; 7];
    for row in &cells {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in &cells {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 < row.len() {
                line.push_str(&format!("{cell:<w$}   ", w = widths[i]));
            } else {
                line.push_str(cell);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// `Created`, `Up 5 seconds`, `Exited (3) 2 minutes ago`: `docker ps`'s
/// STATUS column.
pub fn status_line(s: &api::ContainerState, now: SystemTime) -> String {
    let since = |t: &Option<String>| {
        let t = humantime::parse_rfc3339_weak(t.as_deref()?).ok()?;
        Some(now.duration_since(t).unwrap_or_default())
    };
    match s.status {
        ContainerStatus::Created => "Created".into(),
        ContainerStatus::Running => match since(&s.started_at) {
            Some(d) => format!("Up {}", human_duration(d)),
            None => "Up".into(),
        },
        ContainerStatus::Exited => {
            let code = s
                .exit_code
                .map_or_else(|| "unknown".to_string(), |c| c.to_string());
            match since(&s.finished_at) {
                Some(d) => format!("Exited ({code}) {} ago", human_duration(d)),
                None => format!("Exited ({code})"),
            }
        }
    }
}

/// A duration as Docker words it (go-units' `HumanDuration`).
pub fn human_duration(d: Duration) -> String {
    let secs = d.as_secs();
    let mins = secs / 60;
    let hours = (d.as_secs_f64() / 3600.0).round() as u64;
    if secs < 1 {
        "Less than a second".into()
    } else if secs == 1 {
        "1 second".into()
    } else if secs < 60 {
        format!("{secs} seconds")
    } else if mins == 1 {
        "About a minute".into()
    } else if mins < 60 {
        format!("{mins} minutes")
    } else if hours == 1 {
        "About an hour".into()
    } else if hours < 48 {
        format!("{hours} hours")
    } else if hours < 24 * 7 * 2 {
        format!("{} days", hours / 24)
    } else if hours < 24 * 30 * 2 {
        format!("{} weeks", hours / 24 / 7)
    } else if hours < 24 * 365 * 2 {
        format!("{} months", hours / 24 / 30)
    } else {
        format!("{} years", hours / 24 / 365)
    }
}

/// `vswitch container prune`: removes every exited container and prints
/// their names.
pub(super) async fn prune(client: &Client) -> Result<()> {
    let pruned: api::ContainersPruned = client
        .call("POST", "/v1/containers/_prune", None::<&()>)
        .await?;
    if !pruned.deleted.is_empty() {
        println!("Deleted Containers:");
        for n in &pruned.deleted {
            println!("{n}");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    #[rstest]
    #[case(0, "Less than a second")]
    #[case(1, "1 second")]
    #[case(59, "59 seconds")]
    #[case(60, "About a minute")]
    #[case(119, "About a minute")]
    #[case(120, "2 minutes")]
    #[case(3599, "59 minutes")]
    #[case(3600, "About an hour")]
    #[case(5 * 3600, "5 hours")]
    #[case(3 * 86400, "3 days")]
    #[case(20 * 86400, "2 weeks")]
    #[case(90 * 86400, "3 months")]
    #[case(800 * 86400, "2 years")]
    fn durations_read_as_docker_words_them(#[case] secs: u64, #[case] want: &str) {
        assert_eq!(human_duration(Duration::from_secs(secs)), want);
    }

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + secs)
    }

    fn stamp(secs: u64) -> Option<String> {
        Some(humantime::format_rfc3339_millis(at(secs)).to_string())
    }

    #[test]
    fn status_lines() {
        let running = api::ContainerState {
            status: ContainerStatus::Running,
            running: true,
            started_at: stamp(0),
            ..Default::default()
        };
        assert_eq!(status_line(&running, at(5)), "Up 5 seconds");
        let exited = api::ContainerState {
            status: ContainerStatus::Exited,
            exit_code: Some(3),
            started_at: stamp(0),
            finished_at: stamp(10),
            ..Default::default()
        };
        assert_eq!(status_line(&exited, at(130)), "Exited (3) 2 minutes ago");
        let unknown = api::ContainerState {
            exit_code: None,
            ..exited.clone()
        };
        assert_eq!(
            status_line(&unknown, at(11)),
            "Exited (unknown) 1 second ago"
        );
        assert_eq!(
            status_line(&api::ContainerState::default(), at(0)),
            "Created"
        );
        // A clock that went back reads as now, never as a panic.
        assert_eq!(status_line(&running, at(0)), "Up Less than a second");
    }

    #[test]
    fn the_table_lines_up_and_ports_read_as_docker_ps() {
        let c: api::ContainerInspect = serde_json::from_value(serde_json::json!({
            "Name": "web", "Id": "0123456789abcdef0123", "Host": "h1",
            "Networks": {"front": {
                "Network": "front", "EndpointID": "e", "Interface": "eth0",
                "MacAddress": "02:42:0a:00:00:02", "IPAddress": "10.0.0.2",
                "IPPrefixLen": 24, "GlobalIPv6Address": "fd00::2",
                "GlobalIPv6PrefixLen": 64, "Aliases": []}},
            "Ports": {"80/tcp": [{"HostIp": "0.0.0.0", "HostPort": "8080"},
                                 {"HostIp": "::", "HostPort": "8080"}]},
            "NetworkNames": ["front"],
            "State": {"Status": "running", "Running": true}
        }))
        .unwrap();
        let e = PsEntry::of(&c, at(0));
        assert_eq!(e.ports, vec!["0.0.0.0:8080->80/tcp", "[::]:8080->80/tcp"]);
        assert_eq!(e.addresses.len(), 2);
        let t = table(&[e]);
        let lines: Vec<&str> = t.lines().collect();
        // Every column starts where its header does.
        let col = |l: &str, i: usize| l.find(["NAME", "web"][i]).unwrap();
        assert_eq!(col(lines[0], 0), col(lines[1], 1));
        assert_eq!(lines[0].find("STATUS"), lines[1].find("Up"));
        assert_eq!(
            lines[0],
            "CONTAINER ID   NAME   NETWORKS   ADDRESSES          PORTS                                     STATUS   HOST"
        );
        assert_eq!(
            lines[1],
            "0123456789ab   web    front      10.0.0.2,fd00::2   0.0.0.0:8080->80/tcp, [::]:8080->80/tcp   Up       h1"
        );
    }
}
