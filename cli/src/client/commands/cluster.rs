//! `vswitch join-cluster`, `leave-cluster` and `members`.

use anyhow::Result;
use clap::Args;

use super::output::{print_json, Col, Format, Table};
use crate::api;
use crate::client::Client;

#[derive(Debug, Args)]
pub struct JoinArgs {
    #[arg(required = true, value_name = "PEER_ADDR")]
    pub peers: Vec<String>,
}

#[derive(Debug, Args)]
pub struct MembersArgs {
    #[arg(long, value_enum, default_value = "table")]
    pub format: Format,
}

pub(super) async fn join(client: &Client, a: JoinArgs) -> Result<()> {
    let _: Vec<String> = client
        .call(
            "POST",
            "/v1/cluster/join",
            Some(&api::Join { peers: a.peers }),
        )
        .await?;
    Ok(())
}

pub(super) async fn leave(client: &Client) -> Result<()> {
    let _: String = client
        .call("POST", "/v1/cluster/leave", None::<&()>)
        .await?;
    Ok(())
}

pub(super) async fn members(client: &Client, a: MembersArgs) -> Result<()> {
    let list: Vec<api::Member> = client.get("/v1/cluster/members").await?;
    if a.format == Format::Json {
        return print_json(&list);
    }
    const MEMBERS: Table = Table {
        cols: &[Col::Left(20), Col::Left(24), Col::Left(8), Col::Rest],
        sep: " ",
    };
    MEMBERS.print(&[&"NAME", &"ADDRESS", &"STATE", &"NETWORKS"]);
    for m in &list {
        let name = if m.local {
            format!("{} *", m.name)
        } else {
            m.name.clone()
        };
        MEMBERS.print(&[&name, &m.address, &m.state, &m.networks.join(",")]);
    }
    Ok(())
}
