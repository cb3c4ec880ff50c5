//! `vswitchd`: the daemon.

use clap::Parser;
use vswitch_cli::daemon::{run, DaemonArgs};

fn main() {
    let args = DaemonArgs::parse();
    if let Err(e) = run(args) {
        eprintln!("vswitchd: {e:#}");
        std::process::exit(1);
    }
}
