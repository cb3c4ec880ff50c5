//! `vswitch inspect`: a container's endpoints, addresses and MACs, as JSON.

use anyhow::Result;
use clap::Args;

use super::output::print_json;
use crate::api;
use crate::client::Client;

#[derive(Debug, Args)]
pub struct InspectArgs {
    #[arg(required = true)]
    pub names: Vec<String>,
}

pub(super) async fn run(client: &Client, a: InspectArgs) -> Result<()> {
    let mut all = Vec::new();
    for n in a.names {
        let c: api::ContainerInspect = client
            .call("GET", &format!("/v1/containers/{n}"), None::<&()>)
            .await?;
        all.push(c);
    }
    print_json(&all)
}
