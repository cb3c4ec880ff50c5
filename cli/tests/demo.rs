//! The README's main command, `vswitch demo`, on real namespaces: the tour
//! (network, containers, pings by name and alias, DNS, inspect, ps, trace, doctor,
//! a capture of a ping, stats) works and leaves nothing behind.

mod common;

use std::process::Command;

use common::*;

#[test]
fn the_demo_tours_and_cleans_up() {
    require_root!();
    let out = Command::new(bin("vswitch"))
        .args(["demo", "--vswitchd"])
        .arg(bin("vswitchd"))
        .output()
        .expect("running vswitch demo");
    let (text, err) = (stdout(&out), stderr(&out));
    assert!(out.status.success(), "demo failed: {err}\n{text}");
    for want in [
        "the tour worked.",
        "Verdict: delivered to db-",
        "Every check passed.",
        "2 frames captured, 0 dropped",
        "web-to-cache",
        "done: no namespace, device or file of the demo is left",
    ] {
        assert!(
            text.contains(want) || err.contains(want),
            "no `{want}` in the demo's output:\n{text}\n{err}"
        );
    }
}
