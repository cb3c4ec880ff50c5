//! Results, the machine they came from, the table a person reads and the
//! JSON a script reads.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;
use serde_json::Value;

use crate::cpu::CpuReport;
use crate::scenario::Endpoints;
use crate::workload::{Better, Metric, METRICS};

/// One workload on one scenario.
#[derive(Debug, Default, Serialize)]
pub struct WorkloadResult {
    pub name: String,
    pub tool: String,
    pub values: BTreeMap<String, f64>,
    pub detail: Value,
    /// Why it did not run (a missing tool).
    pub skipped: Option<String>,
    /// What a reader of the figures should know (e.g. packet loss).
    pub note: Option<String>,
    pub error: Option<String>,
    pub cpu: Option<CpuReport>,
}

/// Every workload on one scenario.
#[derive(Debug, Default, Serialize)]
pub struct ScenarioResult {
    pub key: String,
    pub title: String,
    pub group: String,
    pub baseline: bool,
    /// Candidates of the group it is compared with besides the baselines.
    pub compared_to: Vec<String>,
    pub description: String,
    /// The metric keys its workloads fill (its table rows).
    pub metrics: Vec<String>,
    pub endpoints: Option<Endpoints>,
    /// Why it did not run at all (a peer program is missing); not a failure.
    pub skipped: Option<String>,
    pub setup_error: Option<String>,
    pub teardown_errors: Vec<String>,
    pub workloads: Vec<WorkloadResult>,
}

impl ScenarioResult {
    pub fn value(&self, key: &str) -> Option<f64> {
        self.workloads
            .iter()
            .find_map(|w| w.values.get(key).copied())
    }

    /// Whether anything failed (skips are not failures).
    pub fn failed(&self) -> bool {
        self.setup_error.is_some()
            || !self.teardown_errors.is_empty()
            || self.workloads.iter().any(|w| w.error.is_some())
    }
}

/// candidate ÷ baseline for one metric of one group.
#[derive(Debug, Serialize, PartialEq)]
pub struct Comparison {
    pub group: String,
    pub metric: &'static str,
    pub unit: &'static str,
    pub better: Better,
    pub baseline: String,
    pub baseline_value: f64,
    pub candidate: String,
    pub candidate_value: f64,
    /// candidate / baseline.
    pub ratio: f64,
}

/// Ratios of every non-baseline scenario to each of its references (the
/// group's baselines, and the scenarios it names in `compared_to`).
pub fn comparisons(results: &[ScenarioResult]) -> Vec<Comparison> {
    let mut out = Vec::new();
    for (cand, base) in pairs(results) {
        for m in METRICS {
            if let (Some(b), Some(c)) = (base.value(m.key), cand.value(m.key)) {
                if b > 0.0 {
                    out.push(Comparison {
                        group: base.group.clone(),
                        metric: m.key,
                        unit: m.unit,
                        better: m.better,
                        baseline: base.key.clone(),
                        baseline_value: b,
                        candidate: cand.key.clone(),
                        candidate_value: c,
                        ratio: c / b,
                    });
                }
            }
        }
    }
    out
}

/// How a ratio must compare with a bound for a target to be met.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Bound {
    AtLeast(f64),
    AtMost(f64),
    Above(f64),
}

impl Bound {
    pub fn met(self, ratio: f64) -> bool {
        match self {
            Bound::AtLeast(b) => ratio >= b,
            Bound::AtMost(b) => ratio <= b,
            Bound::Above(b) => ratio > b,
        }
    }

    fn text(self) -> String {
        match self {
            Bound::AtLeast(b) => format!("≥ {b}"),
            Bound::AtMost(b) => format!("≤ {b}"),
            Bound::Above(b) => format!("> {b}"),
        }
    }
}

/// A target of issue 5: `candidate / reference` on `metric` within `bound`.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Target {
    pub what: &'static str,
    pub candidate: &'static str,
    pub reference: &'static str,
    pub metric: &'static str,
    pub bound: Bound,
}

/// The scoreboard's targets (issue 5), checked on every run that measured
/// both sides.
pub const TARGETS: &[Target] = &[
    Target {
        what: "local, one TCP stream: at least 0.85× the kernel bridge",
        candidate: "vswitch-bridge",
        reference: "kernel-bridge",
        metric: "tcp_1_gbps",
        bound: Bound::AtLeast(0.85),
    },
    Target {
        what: "local, one TCP stream: ahead of OVS userspace with TSO",
        candidate: "vswitch-bridge",
        reference: "ovs-netdev-tso",
        metric: "tcp_1_gbps",
        bound: Bound::Above(1.0),
    },
    Target {
        what: "overlay, one TCP stream: at least 0.7× kernel VXLAN (goal 1.0×)",
        candidate: "vswitch-overlay",
        reference: "kernel-vxlan",
        metric: "tcp_1_gbps",
        bound: Bound::AtLeast(0.7),
    },
    Target {
        what: "capture (issue 15): a headers-only capture that keeps up costs under 10 % of one TCP stream",
        candidate: "vswitch-capture-headers",
        reference: "vswitch-nocapture",
        metric: "tcp_1_gbps",
        bound: Bound::AtLeast(0.9),
    },
    Target {
        what: "request/response round trip: at most 1.5× the kernel bridge's",
        candidate: "vswitch-bridge",
        reference: "kernel-bridge",
        metric: "tcp_rr_avg_us",
        bound: Bound::AtMost(1.5),
    },
];

/// One target and what this run measured for it.
#[derive(Debug, Serialize, PartialEq)]
pub struct TargetResult {
    pub target: &'static str,
    pub candidate: &'static str,
    pub reference: &'static str,
    pub metric: &'static str,
    pub bound: Bound,
    /// None when one side was not measured in this run.
    pub ratio: Option<f64>,
    pub met: Option<bool>,
}

/// Every target, with the ratio this run measured (if it did).
pub fn targets(results: &[ScenarioResult]) -> Vec<TargetResult> {
    let value = |key: &str, metric: &str| {
        results
            .iter()
            .find(|r| r.key == key)
            .and_then(|r| r.value(metric))
    };
    TARGETS
        .iter()
        .map(|t| {
            let ratio = match (value(t.candidate, t.metric), value(t.reference, t.metric)) {
                (Some(c), Some(b)) if b > 0.0 => Some(c / b),
                _ => None,
            };
            TargetResult {
                target: t.what,
                candidate: t.candidate,
                reference: t.reference,
                metric: t.metric,
                bound: t.bound,
                ratio,
                met: ratio.map(|r| t.bound.met(r)),
            }
        })
        .collect()
}

/// The targets as a table; None when the run measured none of them.
fn targets_table(results: &[ScenarioResult]) -> Option<String> {
    let rows: Vec<Vec<String>> = targets(results)
        .into_iter()
        .filter(|t| t.ratio.is_some())
        .map(|t| {
            let r = t.ratio.unwrap_or(f64::NAN);
            vec![
                t.target.to_string(),
                format!("{} / {}", t.candidate, t.reference),
                fmt_ratio(r),
                t.bound.text(),
                if t.met == Some(true) { "yes" } else { "no" }.into(),
            ]
        })
        .collect();
    if rows.is_empty() {
        return None;
    }
    let header = ["target", "ratio", "measured", "wanted", "met"].map(String::from);
    let mut out = String::from("### Targets\n\n");
    out.push_str(&markdown(
        &header,
        &[false, false, true, true, false],
        &rows,
    ));
    out.push('\n');
    Some(out)
}

/// The machine and the tools, for the record.
#[derive(Debug, Serialize)]
pub struct MachineInfo {
    pub date: String,
    pub hostname: String,
    pub nproc: usize,
    pub cpu_model: String,
    pub memory_total: String,
    pub kernel: String,
    pub kernel_version: String,
    /// `/proc/loadavg` when the run started: the machine may be shared.
    pub loadavg: String,
    pub tools: BTreeMap<String, String>,
}

fn read_trim(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// The value after `key:` on the first line of a `/proc` file that has it.
fn proc_field(text: &str, key: &str) -> String {
    text.lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            (k.trim() == key).then(|| v.trim().to_string())
        })
        .unwrap_or_default()
}

impl MachineInfo {
    /// `tools` maps a tool name to its version line.
    pub fn collect(tools: BTreeMap<String, String>) -> MachineInfo {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        MachineInfo {
            date: rfc3339_utc(SystemTime::now()),
            hostname: read_trim("/proc/sys/kernel/hostname"),
            nproc: std::thread::available_parallelism().map_or(1, |n| n.get()),
            cpu_model: proc_field(&cpuinfo, "model name"),
            memory_total: proc_field(&meminfo, "MemTotal"),
            kernel: read_trim("/proc/sys/kernel/osrelease"),
            kernel_version: read_trim("/proc/sys/kernel/version"),
            loadavg: read_trim("/proc/loadavg"),
            tools,
        }
    }
}

/// `YYYY-MM-DDTHH:MM:SSZ`.
pub fn rfc3339_utc(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian
/// (Howard Hinnant's `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// The rows of a table over `scenarios`: every metric one of them fills,
/// in [`METRICS`] order.
fn rows_of<'a>(
    scenarios: impl Iterator<Item = &'a ScenarioResult> + Clone,
) -> Vec<&'static Metric> {
    METRICS
        .iter()
        .filter(|m| {
            scenarios
                .clone()
                .any(|r| r.metrics.iter().any(|k| k == m.key))
        })
        .collect()
}

fn better_word(m: &Metric) -> String {
    match m.better {
        Better::Higher => "higher".into(),
        Better::Lower => "lower".into(),
    }
}

fn ratio_cell(m: &Metric, cand: &ScenarioResult, base: &ScenarioResult) -> String {
    match (base.value(m.key), cand.value(m.key)) {
        (Some(bv), Some(cv)) if bv > 0.0 => fmt_ratio(cv / bv),
        _ => "—".into(),
    }
}

fn fmt_value(m: &Metric, v: Option<f64>) -> String {
    v.map_or_else(|| "—".to_string(), |v| format!("{v:.*}", m.decimals))
}

fn fmt_ratio(r: f64) -> String {
    if r < 0.1 {
        format!("{r:.3}")
    } else {
        format!("{r:.2}")
    }
}

/// A Markdown table with padded columns; `right[i]` right-aligns column i.
fn markdown(header: &[String], right: &[bool], rows: &[Vec<String>]) -> String {
    let width = |i: usize| {
        rows.iter()
            .map(|r| r[i].chars().count())
            .chain([header[i].chars().count(), 3])
            .max()
            .unwrap_or(3)
    };
    let widths: Vec<usize> = (0..header.len()).map(width).collect();
    let line = |cells: &[String]| {
        let mut s = String::from("|");
        for (i, c) in cells.iter().enumerate() {
            let pad = widths[i] - c.chars().count();
            if right[i] {
                let _ = write!(s, " {}{c} |", " ".repeat(pad));
            } else {
                let _ = write!(s, " {c}{} |", " ".repeat(pad));
            }
        }
        s.push('\n');
        s
    };
    let mut out = line(header);
    out.push('|');
    for (i, w) in widths.iter().enumerate() {
        if right[i] {
            let _ = write!(out, " {}: |", "-".repeat(w - 1));
        } else {
            let _ = write!(out, " {} |", "-".repeat(*w));
        }
    }
    out.push('\n');
    for r in rows {
        out.push_str(&line(r));
    }
    out
}

/// Every group's candidate ÷ baseline ratios side by side, one column per
/// pair (e.g. `local: vswitch / kernel bridge`, `publish: vswitch / pasta`),
/// so what vswitch costs against each reference reads in one table. `None`
/// unless at least two pairs ran.
fn ratio_summary(results: &[ScenarioResult]) -> Option<String> {
    let pairs = pairs(results);
    if pairs.len() < 2 {
        return None;
    }
    let mut header: Vec<String> = vec!["workload".into(), "unit".into(), "better".into()];
    header.extend(
        pairs
            .iter()
            .map(|(c, b)| format!("{}: {} / {}", c.group, c.title, b.title)),
    );
    let mut right = vec![false, false, false];
    right.resize(header.len(), true);
    let rows: Vec<Vec<String>> = rows_of(pairs.iter().flat_map(|(c, b)| [*c, *b]))
        .into_iter()
        .map(|m| {
            let mut row = vec![m.label.to_string(), m.unit.to_string(), better_word(m)];
            row.extend(pairs.iter().map(|(c, b)| ratio_cell(m, c, b)));
            row
        })
        .collect();
    let mut out = String::from("### Scoreboard: ratios to each reference, every group\n\n");
    out.push_str(&markdown(&header, &right, &rows));
    out.push_str(
        "\nEach column is a group's vswitch scenario divided by one of its references (the \
         kernel, Open vSwitch's userspace datapath, a userspace forwarder, or for the encrypted \
         overlay the plain one); the figures are in the group's table above.\n\n",
    );
    Some(out)
}

/// Every (candidate, reference) pair of one group, in run order: each
/// candidate with every baseline, then with the candidates it names.
fn pairs(results: &[ScenarioResult]) -> Vec<(&ScenarioResult, &ScenarioResult)> {
    let mut pairs = Vec::new();
    for cand in results.iter().filter(|r| !r.baseline) {
        for base in references(results, cand) {
            pairs.push((cand, base));
        }
    }
    pairs
}

/// What `cand` is compared with: its group's baselines, then the
/// candidates it names in `compared_to`, as far as they are in `results`.
fn references<'a>(results: &'a [ScenarioResult], cand: &ScenarioResult) -> Vec<&'a ScenarioResult> {
    let same_group = results.iter().filter(|r| r.group == cand.group);
    same_group
        .clone()
        .filter(|r| r.baseline)
        .chain(same_group.filter(|r| !r.baseline && cand.compared_to.contains(&r.key)))
        .collect()
}

/// The report a person reads: per group, one row per metric with every
/// scenario's figure and each candidate's ratio to the baseline; then, with
/// more than one group, every group's ratios side by side; then where the
/// CPU went; then any errors.
pub fn render(results: &[ScenarioResult], duration: u32) -> String {
    let mut out = String::new();
    let mut groups: Vec<&str> = Vec::new();
    for r in results {
        if !groups.contains(&r.group.as_str()) {
            groups.push(&r.group);
        }
    }
    for g in groups {
        let members: Vec<&ScenarioResult> = results.iter().filter(|r| r.group == g).collect();
        let cands: Vec<&ScenarioResult> = members.iter().filter(|r| !r.baseline).copied().collect();
        let group_pairs: Vec<(&ScenarioResult, &ScenarioResult)> = cands
            .iter()
            .flat_map(|c| references(results, c).into_iter().map(move |b| (*c, b)))
            .collect();
        let titles: Vec<&str> = members.iter().map(|r| r.title.as_str()).collect();
        let _ = writeln!(
            out,
            "### {g}: {} ({duration} s per throughput/latency run)\n",
            titles.join(" vs ")
        );
        let mut header: Vec<String> = vec!["workload".into(), "unit".into(), "better".into()];
        header.extend(members.iter().map(|r| r.title.clone()));
        header.extend(
            group_pairs
                .iter()
                .map(|(c, b)| format!("{} / {}", c.title, b.title)),
        );
        let mut right = vec![false, false, false];
        right.resize(header.len(), true);
        let mut rows = Vec::new();
        for m in rows_of(members.iter().copied()) {
            let mut row = vec![m.label.to_string(), m.unit.to_string(), better_word(m)];
            row.extend(members.iter().map(|r| fmt_value(m, r.value(m.key))));
            row.extend(group_pairs.iter().map(|(c, b)| ratio_cell(m, c, b)));
            rows.push(row);
        }
        out.push_str(&markdown(&header, &right, &rows));
        if !group_pairs.is_empty() {
            out.push_str(
                "\nRatio = candidate / reference. Rows where higher is better (Gbit/s, conn/s, kpps): \
                 below 1.00 the candidate is slower. Rows where lower is better (µs): above 1.00 it \
                 is slower.\n",
            );
        }
        out.push('\n');
    }

    if let Some(summary) = ratio_summary(results) {
        out.push_str(&summary);
    }
    if let Some(t) = targets_table(results) {
        out.push_str(&t);
    }

    // Where the CPU went.
    let mut rows = Vec::new();
    for r in results {
        for w in &r.workloads {
            let Some(cpu) = &w.cpu else { continue };
            let threads: Vec<String> = cpu
                .threads
                .iter()
                .filter(|t| t.cpu_percent >= 1.0)
                .take(4)
                .map(|t| {
                    let n = if t.threads > 1 {
                        format!(" ×{}", t.threads)
                    } else {
                        String::new()
                    };
                    format!("{} {}{n} {:.0}%", t.process, t.thread, t.cpu_percent)
                })
                .collect();
            rows.push(vec![
                r.title.clone(),
                w.name.clone(),
                format!("{:.0}", cpu.system.user),
                format!("{:.0}", cpu.system.system),
                format!("{:.0}", cpu.system.softirq + cpu.system.irq),
                format!("{:.0}", cpu.system.idle),
                if threads.is_empty() {
                    "—".into()
                } else {
                    threads.join(", ")
                },
            ]);
        }
    }
    if !rows.is_empty() {
        out.push_str(
            "### CPU during each workload (% of one core, 100 = one core busy; the machine total is 100 × nproc)\n\n",
        );
        let header: Vec<String> = [
            "scenario",
            "workload",
            "user",
            "system",
            "softirq+irq",
            "idle",
            "switch threads ≥ 1%",
        ]
        .map(String::from)
        .to_vec();
        let right = [false, false, true, true, true, true, false];
        out.push_str(&markdown(&header, &right, &rows));
        out.push('\n');
    }

    let mut notes = Vec::new();
    for r in results {
        if let Some(s) = &r.skipped {
            notes.push(format!("{}: skipped: {s}", r.title));
        }
        if let Some(e) = &r.setup_error {
            notes.push(format!("{}: setup failed: {e}", r.title));
        }
        for w in &r.workloads {
            if let Some(n) = &w.note {
                notes.push(format!("{} / {}: {n}", r.title, w.name));
            }
            if let Some(s) = &w.skipped {
                notes.push(format!("{} / {}: skipped: {s}", r.title, w.name));
            }
            if let Some(e) = &w.error {
                notes.push(format!("{} / {}: failed: {e}", r.title, w.name));
            }
        }
        for e in &r.teardown_errors {
            notes.push(format!("{}: cleanup: {e}", r.title));
        }
    }
    if !notes.is_empty() {
        out.push_str("Notes:\n");
        for n in notes {
            let _ = writeln!(out, "- {n}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;
    use std::time::Duration;

    #[rstest]
    #[case(0, "1970-01-01T00:00:00Z")]
    #[case(951_782_400, "2000-02-29T00:00:00Z")]
    #[case(1_709_210_096, "2024-02-29T12:34:56Z")]
    #[case(4_102_444_799, "2099-12-31T23:59:59Z")]
    fn dates_are_rfc3339_utc(#[case] secs: u64, #[case] want: &str) {
        assert_eq!(rfc3339_utc(UNIX_EPOCH + Duration::from_secs(secs)), want);
    }

    fn scenario(key: &str, baseline: bool, values: &[(&str, f64)]) -> ScenarioResult {
        ScenarioResult {
            key: key.into(),
            title: key.into(),
            group: "local".into(),
            baseline,
            metrics: [
                "tcp_1_gbps",
                "tcp_2_gbps",
                "tcp_rr_avg_us",
                "tcp_rr_p99_us",
                "icmp_avg_us",
                "icmp_p99_us",
            ]
            .map(String::from)
            .to_vec(),
            workloads: vec![WorkloadResult {
                name: "w".into(),
                values: values.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    #[test]
    fn ratios_are_candidate_over_baseline() {
        let results = [
            scenario(
                "kernel",
                true,
                &[("tcp_1_gbps", 20.0), ("icmp_avg_us", 40.0)],
            ),
            scenario("vs", false, &[("tcp_1_gbps", 2.0), ("icmp_avg_us", 100.0)]),
        ];
        let c = comparisons(&results);
        assert_eq!(c.len(), 2);
        assert_eq!((c[0].metric, c[0].ratio), ("tcp_1_gbps", 0.1));
        assert_eq!((c[1].metric, c[1].ratio), ("icmp_avg_us", 2.5));
        let table = render(&results, 5);
        let row = table
            .lines()
            .find(|l| l.contains("TCP throughput, 1 stream"))
            .unwrap();
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        assert_eq!(cells[4..7], ["20.00", "2.00", "0.10"], "{row}");
        let row = table
            .lines()
            .find(|l| l.contains("ICMP echo RTT avg"))
            .unwrap();
        assert!(row.trim_end().ends_with("2.50 |"), "{row}");
        // Missing figures are shown as such, not as zero.
        let row = table.lines().find(|l| l.contains("2 streams")).unwrap();
        assert_eq!(row.matches('—').count(), 3, "{row}");
    }

    #[test]
    fn every_groups_ratios_sit_in_one_table() {
        let in_group = |mut r: ScenarioResult, group: &str, title: &str| {
            r.group = group.into();
            r.title = title.into();
            r
        };
        let results = [
            in_group(
                scenario("kernel-bridge", true, &[("tcp_1_gbps", 20.0)]),
                "local",
                "kernel bridge",
            ),
            in_group(
                scenario("vswitch-bridge", false, &[("tcp_1_gbps", 5.0)]),
                "local",
                "vswitch",
            ),
            in_group(
                scenario(
                    "kernel-vxlan",
                    true,
                    &[("tcp_1_gbps", 8.0), ("icmp_avg_us", 50.0)],
                ),
                "overlay",
                "kernel vxlan",
            ),
            in_group(
                scenario(
                    "vswitch-overlay",
                    false,
                    &[("tcp_1_gbps", 2.0), ("icmp_avg_us", 150.0)],
                ),
                "overlay",
                "vswitch overlay",
            ),
        ];
        let table = render(&results, 5);
        assert!(
            table.contains("### overlay: kernel vxlan vs vswitch overlay"),
            "{table}"
        );
        let summary = table
            .split("### Scoreboard: ratios to each reference, every group")
            .nth(1)
            .expect("a summary table");
        let header = summary
            .lines()
            .find(|l| l.starts_with("| workload"))
            .unwrap();
        assert!(
            header.contains("local: vswitch / kernel bridge")
                && header.contains("overlay: vswitch overlay / kernel vxlan"),
            "{header}"
        );
        let row = summary
            .lines()
            .find(|l| l.contains("TCP throughput, 1 stream"))
            .unwrap();
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        assert_eq!(cells[4..6], ["0.25", "0.25"], "{row}");
        let row = summary
            .lines()
            .find(|l| l.contains("ICMP echo RTT avg"))
            .unwrap();
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        assert_eq!(cells[4..6], ["—", "3.00"], "{row}");
        // One group alone has no summary: its own table says it all.
        assert!(!render(&results[..2], 5).contains("every group"));
    }

    #[test]
    fn a_candidate_is_compared_with_the_candidates_it_names_too() {
        let in_overlay = |mut r: ScenarioResult, compared_to: &[&str]| {
            r.group = "overlay".into();
            r.compared_to = compared_to.iter().map(|s| s.to_string()).collect();
            r
        };
        let results = [
            in_overlay(scenario("kernel-vxlan", true, &[("tcp_1_gbps", 10.0)]), &[]),
            in_overlay(scenario("ovs", true, &[("tcp_1_gbps", 1.0)]), &[]),
            in_overlay(scenario("plain", false, &[("tcp_1_gbps", 5.0)]), &[]),
            in_overlay(
                scenario("encrypted", false, &[("tcp_1_gbps", 4.0)]),
                &["plain"],
            ),
        ];
        let got: Vec<(String, String, f64)> = comparisons(&results)
            .into_iter()
            .map(|c| (c.candidate, c.baseline, c.ratio))
            .collect();
        let want = [
            ("plain", "kernel-vxlan", 0.5),
            ("plain", "ovs", 5.0),
            ("encrypted", "kernel-vxlan", 0.4),
            ("encrypted", "ovs", 4.0),
            ("encrypted", "plain", 0.8),
        ];
        assert_eq!(got.len(), want.len(), "{got:?}");
        for ((c, b, r), (wc, wb, wr)) in got.iter().zip(want) {
            assert_eq!((c.as_str(), b.as_str()), (wc, wb));
            assert!((r - wr).abs() < 1e-12, "{c}/{b}: {r}");
        }
        let table = render(&results, 5);
        let header = table.lines().find(|l| l.starts_with("| workload")).unwrap();
        assert!(header.contains("encrypted / plain"), "{header}");
        assert!(!header.contains("plain / encrypted"), "{header}");
        // A failed (absent) reference leaves its column out, not the run.
        let got = comparisons(&results[..2]);
        assert!(got.is_empty());
    }

    #[rstest]
    #[case(Bound::AtLeast(0.85), 0.85, true)]
    #[case(Bound::AtLeast(0.85), 0.84, false)]
    #[case(Bound::AtMost(1.5), 1.5, true)]
    #[case(Bound::AtMost(1.5), 1.6, false)]
    #[case(Bound::Above(1.0), 1.0, false)]
    #[case(Bound::Above(1.0), 1.01, true)]
    fn bounds(#[case] b: Bound, #[case] ratio: f64, #[case] met: bool) {
        assert_eq!(b.met(ratio), met);
    }

    #[test]
    fn targets_are_checked_where_both_sides_ran() {
        let named = |key: &str, baseline: bool, v: &[(&str, f64)]| scenario(key, baseline, v);
        let results = [
            named(
                "kernel-bridge",
                true,
                &[("tcp_1_gbps", 10.0), ("tcp_rr_avg_us", 20.0)],
            ),
            named("ovs-netdev-tso", true, &[("tcp_1_gbps", 12.0)]),
            named(
                "vswitch-bridge",
                false,
                &[("tcp_1_gbps", 9.0), ("tcp_rr_avg_us", 40.0)],
            ),
        ];
        let t = targets(&results);
        assert_eq!(t.len(), TARGETS.len());
        let by_ref = |reference: &str, metric: &str| {
            t.iter()
                .find(|t| t.reference == reference && t.metric == metric)
                .unwrap()
        };
        assert_eq!(by_ref("kernel-bridge", "tcp_1_gbps").met, Some(true));
        assert_eq!(by_ref("ovs-netdev-tso", "tcp_1_gbps").met, Some(false));
        assert_eq!(by_ref("kernel-bridge", "tcp_rr_avg_us").ratio, Some(2.0));
        assert_eq!(by_ref("kernel-bridge", "tcp_rr_avg_us").met, Some(false));
        // The overlay did not run: no verdict.
        assert_eq!(by_ref("kernel-vxlan", "tcp_1_gbps").met, None);
        let table = render(&results, 5);
        let section = table.split("### Targets").nth(1).expect("targets table");
        assert_eq!(section.matches("| yes").count(), 1, "{section}");
        assert_eq!(section.matches("| no").count(), 2, "{section}");
        assert!(!section.contains("overlay, one TCP stream"), "{section}");
    }

    #[test]
    fn markdown_columns_line_up() {
        let t = markdown(
            &["a".into(), "bb".into()],
            &[false, true],
            &[vec!["long cell".into(), "1".into()]],
        );
        let widths: Vec<usize> = t.lines().map(|l| l.chars().count()).collect();
        assert!(widths.windows(2).all(|w| w[0] == w[1]), "{t}");
        assert!(t.lines().nth(1).unwrap().ends_with("--: |"), "{t}");
    }

    #[test]
    fn errors_and_skips_become_notes() {
        let mut r = scenario("vs", false, &[]);
        r.workloads[0].error = Some("boom".into());
        r.teardown_errors.push("left over".into());
        assert!(r.failed());
        let t = render(&[r], 5);
        assert!(t.contains("vs / w: failed: boom"), "{t}");
        assert!(t.contains("vs: cleanup: left over"), "{t}");
    }

    #[test]
    fn proc_fields() {
        let text = "processor\t: 0\nmodel name\t: Some CPU @ 2.0GHz\n";
        assert_eq!(proc_field(text, "model name"), "Some CPU @ 2.0GHz");
        assert_eq!(proc_field(text, "nope"), "");
    }
}
