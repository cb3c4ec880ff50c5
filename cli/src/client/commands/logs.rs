//! `vswitch logs [-f] NAME`: what a `vswitch run -d` command wrote (stdout
//! and stderr, in order), as vswitchd keeps it.

use std::io::Write;

use anyhow::Result;
use clap::Args;

use crate::client::Client;

#[derive(Debug, Args)]
pub struct LogsArgs {
    /// Keep printing what the command writes, until it exits.
    #[arg(short = 'f', long)]
    pub follow: bool,
    pub name: String,
}

pub(super) async fn run(client: &Client, a: LogsArgs) -> Result<()> {
    let path = format!(
        "/v1/containers/{}/logs{}",
        a.name,
        if a.follow { "?follow=1" } else { "" }
    );
    let mut out = std::io::stdout().lock();
    let written = client
        .stream(&path, |bytes| {
            out.write_all(bytes)?;
            out.flush()?;
            Ok(())
        })
        .await;
    match written {
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
