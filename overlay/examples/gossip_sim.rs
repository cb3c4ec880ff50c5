//! Convergence of gossip membership and dissemination on a simulated
//! network: 10, 100 and 1000 members (or the sizes given as arguments),
//! 1 % loss, 0.2-5 ms delay. Deterministic.
//!
//! ```text
//! cargo run --release -p vswitch-overlay --example gossip_sim [-- SIZE...]
//! ```
//!
//! For each size it prints the time until every member saw every other up
//! (formation), until members knew a newly published endpoint, and until
//! members declared a killed host down and removed its endpoint, at the
//! 50th, 99th and 99.99th percentile and for all members.
//!
//! The anchor is Serf's convergence model: with a 200 ms gossip interval
//! and a fan-out of 3 (the settings used here, foca's `new_lan`), 99.99 %
//! of 100 nodes are informed within about 2 s.

use std::time::{Duration, Instant};

use overlay::sim::{run_scenario, Scenario, SimConfig};
use overlay::GossipConfig;

fn main() {
    let sizes: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let sizes = if sizes.is_empty() {
        vec![10, 100, 1000]
    } else {
        sizes
    };
    println!(
        "loss 1 %, delay 0.2-5 ms, foca new_lan(N): probe 1 s, gossip every 200 ms to 3, suspicion 4 s x max(1, log10 N)"
    );
    for n in sizes {
        let mut config = GossipConfig::lan(n as u32, 1);
        if n >= 500 {
            // Lighter background work for large clusters: anti-entropy and
            // state scans less often.
            config.sync_interval = Duration::from_secs(30);
            config.scan_interval = Duration::from_secs(2);
        }
        let scenario = Scenario {
            members: n,
            net: SimConfig {
                loss: 0.01,
                min_delay: Duration::from_micros(200),
                max_delay: Duration::from_millis(5),
                seed: 42,
            },
            config,
            limit: Duration::from_secs(300),
        };
        let wall = Instant::now();
        let r = run_scenario(&scenario);
        println!(
            "N = {n} (simulated in {:.1}s of wall time)",
            wall.elapsed().as_secs_f64()
        );
        println!(
            "  formation (all see all up): {}",
            r.formation.map_or("not reached".to_owned(), |d| format!(
                "{:.2}s",
                d.as_secs_f64()
            ))
        );
        println!("  new endpoint known:         {}", r.endpoint_known);
        println!("  killed host declared down:  {}", r.declared_down);
        println!("  its endpoint removed:       {}", r.endpoint_removed);
        println!(
            "  steady traffic per member:  {:.1} datagrams/s, {:.0} B/s; lost {} of {} datagrams; auth failures {}",
            r.datagrams_per_member_s, r.bytes_per_member_s, r.net.lost, r.net.sent, r.auth_failures
        );
    }
}
