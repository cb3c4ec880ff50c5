//! `vswitch events [--since T] [--until T] [-f] [--format json]`: what
//! vswitchd recorded (networks, endpoints, containers, published ports,
//! members, the daemon's start) and the anomalies it detected in its own
//! counters, one line an event, as `docker events` prints them.

use std::io::Write;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Result};
use clap::Args;

use super::Format;
use crate::api::{parse_unix_seconds, Event, EventLine, EventsQuery};
use crate::client::Client;

#[derive(Debug, Args)]
pub struct EventsArgs {
    /// Only events from this time on: RFC 3339 (`2026-12-07T21:30:00Z`,
    /// `2026-12-07T22:30:00+01:00`, `2026-12-07`; UTC without a zone),
    /// Unix seconds (`1796679000`), or a time ago (`10m`, `1h30m`).
    #[arg(long, value_name = "TIME")]
    pub since: Option<String>,
    /// Only events up to this time (the same forms); a follow ends there.
    #[arg(long, value_name = "TIME")]
    pub until: Option<String>,
    /// Keep printing events as they happen (without --since, only new
    /// ones, as `docker events`).
    #[arg(short = 'f', long)]
    pub follow: bool,
    /// `json`: one JSON object per line, as the API sends them.
    #[arg(long, value_enum, default_value = "table")]
    pub format: Format,
}

pub(super) async fn run(client: &Client, a: EventsArgs) -> Result<()> {
    let now = SystemTime::now();
    let since = a
        .since
        .as_deref()
        .map(|s| parse_time(s, now).map_err(|e| anyhow::anyhow!("--since {s}: {e}")))
        .transpose()?;
    let until = a
        .until
        .as_deref()
        .map(|s| parse_time(s, now).map_err(|e| anyhow::anyhow!("--until {s}: {e}")))
        .transpose()?;
    if let (Some(s), Some(u)) = (since, until) {
        if u < s {
            bail!("--until is before --since; nothing could match");
        }
    }
    let query = EventsQuery {
        since,
        until,
        follow: a.follow,
    };
    let json = a.format == Format::Json;
    let mut out = std::io::stdout().lock();
    let mut pending: Vec<u8> = Vec::new();
    let streamed = client
        .stream(&query.path(), |bytes| {
            pending.extend_from_slice(bytes);
            while let Some(end) = pending.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = pending.drain(..=end).collect();
                print_line(&mut out, &line[..end], json)?;
            }
            out.flush()?;
            Ok(())
        })
        .await;
    match streamed {
        // A reader that went away (`| head`) is not an error.
        Err(e)
            if e.downcast_ref::<std::io::Error>()
                .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe) =>
        {
            Ok(())
        }
        other => other,
    }
}

/// One line of the stream: an event, a notice of missed events, or an
/// empty line (the daemon's sign of life).
fn print_line(out: &mut impl Write, line: &[u8], json: bool) -> Result<()> {
    if line.iter().all(u8::is_ascii_whitespace) {
        return Ok(());
    }
    match serde_json::from_slice::<EventLine>(line) {
        Ok(EventLine::Event(_)) if json => {
            out.write_all(line)?;
            writeln!(out)?;
        }
        Ok(EventLine::Event(e)) => writeln!(out, "{}", human(&e))?,
        Ok(EventLine::Missed(m)) => eprintln!(
            "vswitch events: {} events went by before this reader took them (vswitchd keeps the last {})",
            m.missed,
            crate::daemon::events::CAPACITY
        ),
        Err(e) => bail!(
            "vswitchd sent an event this client does not understand ({e}): {}",
            String::from_utf8_lossy(line)
        ),
    }
    Ok(())
}

/// `TIME TYPE ACTION ACTOR (k=v, ...)`, as `docker events` prints.
pub fn human(e: &Event) -> String {
    let mut attrs: Vec<String> = [
        ("network", &e.network),
        ("container", &e.container),
        ("port", &e.port),
        ("host", &e.host),
    ]
    .into_iter()
    .filter_map(|(k, v)| {
        v.as_ref()
            .filter(|v| **v != e.actor)
            .map(|v| format!("{k}={v}"))
    })
    .collect();
    attrs.extend(e.attributes.iter().map(|(k, v)| format!("{k}={v}")));
    let mut s = format!("{} {} {} {}", e.time, e.kind.as_str(), e.action, e.actor);
    if !attrs.is_empty() {
        s.push_str(&format!(" ({})", attrs.join(", ")));
    }
    s
}

/// A time as `docker events --since` takes it, in nanoseconds since the
/// Unix epoch: Unix seconds, a duration before `now`, or RFC 3339.
pub fn parse_time(s: &str, now: SystemTime) -> Result<u64, String> {
    let s = s.trim();
    let nanos = |t: SystemTime| {
        t.duration_since(UNIX_EPOCH)
            .map_err(|_| "that is before 1970".to_string())
            .and_then(|d| u64::try_from(d.as_nanos()).map_err(|_| "that is past 2554".to_string()))
    };
    if s.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return parse_unix_seconds(s);
    }
    if let Ok(ago) = humantime::parse_duration(s) {
        let then = now
            .checked_sub(ago)
            .filter(|t| *t >= UNIX_EPOCH)
            .ok_or_else(|| "that is before 1970".to_string())?;
        return nanos(then);
    }
    // RFC 3339 with an offset: humantime reads UTC only.
    let (base, offset) = split_offset(s);
    let base = if base.len() == 10 {
        format!("{base}T00:00:00Z")
    } else {
        base.to_string()
    };
    let t = humantime::parse_rfc3339_weak(&base).map_err(|_| {
        "not a time; give RFC 3339 (2026-12-07T21:30:00Z), Unix seconds (1796679000) or a time ago (10m, 1h30m)".to_string()
    })?;
    let t = match offset {
        Some(off) if off >= 0 => t.checked_sub(Duration::from_secs(off.unsigned_abs())),
        Some(off) => t.checked_add(Duration::from_secs(off.unsigned_abs())),
        None => Some(t),
    }
    .ok_or_else(|| "out of range".to_string())?;
    nanos(t)
}

/// `2026-12-07T22:30:00+01:00` as (`2026-12-07T22:30:00`, Some(3600)).
fn split_offset(s: &str) -> (&str, Option<i64>) {
    if s.len() > 16 {
        let (base, tail) = s.split_at(s.len() - 6);
        let b = tail.as_bytes();
        if (b[0] == b'+' || b[0] == b'-') && b[3] == b':' {
            if let (Ok(h), Ok(m)) = (tail[1..3].parse::<i64>(), tail[4..6].parse::<i64>()) {
                if h < 24 && m < 60 && base.contains(['T', 't', ' ']) {
                    let secs = h * 3600 + m * 60;
                    return (base, Some(if b[0] == b'-' { -secs } else { secs }));
                }
            }
        }
    }
    (s, None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::EventType;
    use rstest::rstest;

    /// 2026-12-07T21:30:00Z.
    const T: u64 = 1_796_679_000;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[rstest]
    #[case("1796679000", T * 1_000_000_000)]
    #[case("1796679000.5", T * 1_000_000_000 + 500_000_000)]
    #[case("2026-12-07T21:30:00Z", T * 1_000_000_000)]
    #[case("2026-12-07T21:30:00.000001Z", T * 1_000_000_000 + 1_000)]
    #[case("2026-12-07 21:30:00", T * 1_000_000_000)]
    #[case("2026-12-07T22:30:00+01:00", T * 1_000_000_000)]
    #[case("2026-12-07T16:00:00-05:30", T * 1_000_000_000)]
    #[case("2026-12-07", (T - 21 * 3600 - 30 * 60) * 1_000_000_000)]
    #[case("10m", (T + 3600 - 600) * 1_000_000_000)]
    #[case("1h30m", (T + 3600 - 5400) * 1_000_000_000)]
    #[case("90s", (T + 3600 - 90) * 1_000_000_000)]
    fn reads_times_as_docker_does(#[case] s: &str, #[case] nanos: u64) {
        assert_eq!(parse_time(s, at(T + 3600)), Ok(nanos), "{s}");
    }

    #[rstest]
    #[case("yesterday")]
    #[case("10 parsecs")]
    #[case("2026-13-07T21:30:00Z")]
    #[case("1.2.3")]
    #[case("")]
    #[case("-5m")]
    #[case("100y")]
    fn refuses_what_is_no_time(#[case] s: &str) {
        assert!(parse_time(s, at(T)).is_err(), "{s}");
    }

    #[test]
    fn prints_a_line_per_event_as_docker() {
        let e = Event {
            seq: 1,
            time: "2026-12-07T21:30:00.123456Z".into(),
            time_nano: 0,
            kind: EventType::Network,
            action: "create".into(),
            actor: "web".into(),
            network: Some("web".into()),
            container: None,
            host: None,
            port: None,
            attributes: [
                ("driver".to_string(), "bridge".to_string()),
                ("subnet".to_string(), "10.1.0.0/24".to_string()),
            ]
            .into(),
        };
        assert_eq!(
            human(&e),
            "2026-12-07T21:30:00.123456Z network create web (driver=bridge, subnet=10.1.0.0/24)"
        );
        let p = Event {
            kind: EventType::Port,
            action: "publish".into(),
            actor: "c1".into(),
            container: Some("c1".into()),
            port: Some("80/tcp".into()),
            attributes: [("host".to_string(), "*:8080".to_string())].into(),
            ..e
        };
        assert_eq!(
            human(&p),
            "2026-12-07T21:30:00.123456Z port publish c1 (network=web, port=80/tcp, host=*:8080)"
        );
    }
}
