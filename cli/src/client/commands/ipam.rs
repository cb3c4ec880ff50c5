//! `vswitch ipam`: cluster IPAM.

use std::collections::BTreeMap;

use anyhow::Result;
use clap::Subcommand;

use crate::api;
use crate::client::Client;

#[derive(Debug, Subcommand)]
pub enum IpamCmd {
    /// Take back a dead host's overlay address ranges now, without waiting
    /// for the quarantine. Only for a host known to be gone for good.
    Reclaim {
        #[arg(value_name = "HOST")]
        node: String,
    },
}

pub(super) async fn run(client: &Client, cmd: IpamCmd) -> Result<()> {
    match cmd {
        IpamCmd::Reclaim { node } => {
            let out: BTreeMap<String, String> = client
                .call(
                    "POST",
                    "/v1/ipam/reclaim",
                    Some(&api::Reclaim { host: node }),
                )
                .await?;
            for (net, heir) in out {
                println!("{net}: ranges now owned by {heir}");
            }
        }
    }
    Ok(())
}
