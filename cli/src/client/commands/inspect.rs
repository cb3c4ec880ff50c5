//! `vswitch inspect`: a container's endpoints, addresses and MACs, as JSON.

use anyhow::Result;
use clap::Args;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::output::print_json;
use crate::api;
use crate::client::Client;

#[derive(Debug, Args)]
pub struct InspectArgs {
    #[arg(required = true)]
    pub names: Vec<String>,
}

pub(super) async fn run(client: &Client, a: InspectArgs) -> Result<()> {
    print_each::<api::ContainerInspect>(client, "/v1/containers", a.names).await
}

/// `GET COLLECTION/NAME` for each name, printed as one JSON array (nothing
/// when one of them fails), as `docker inspect` does; `network inspect` too.
pub(super) async fn print_each<T: DeserializeOwned + Serialize>(
    client: &Client,
    collection: &str,
    names: Vec<String>,
) -> Result<()> {
    let mut all: Vec<T> = Vec::new();
    for n in names {
        all.push(client.get(&format!("{collection}/{n}")).await?);
    }
    print_json(&all)
}
