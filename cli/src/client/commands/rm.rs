//! `vswitch rm`: stop what `run` started, disconnect it, free its
//! addresses; an exited container's record and log go too.

use anyhow::Result;
use clap::Args;

use crate::client::Client;

#[derive(Debug, Args)]
pub struct RmArgs {
    /// Accepted for Docker users: a running container is stopped (SIGTERM,
    /// SIGKILL after 5 s) with or without it.
    #[arg(short = 'f', long)]
    pub force: bool,
    #[arg(required = true)]
    pub names: Vec<String>,
}

/// Removes each container, going on past failures; exit code 1 if any failed.
pub(super) async fn run(client: &Client, a: RmArgs) -> Result<i32> {
    let mut failed = false;
    for n in a.names {
        match client.delete(&format!("/v1/containers/{n}")).await {
            Ok(name) => println!("{name}"),
            Err(e) => {
                eprintln!("Error: {e:#}");
                failed = true;
            }
        }
    }
    Ok(i32::from(failed))
}
