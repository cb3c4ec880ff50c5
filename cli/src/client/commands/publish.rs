//! The `-p`/`--publish` flag of `run` and `network connect`.

use anyhow::{bail, Result};
use clap::Args;

use crate::api;

// No doc comment here: on a flattened `Args` it would become the about text
// of the commands that flatten it.
#[derive(Debug, Args)]
pub struct Publish {
    /// Publish a container port on the host; repeatable, ranges allowed;
    /// without HOSTPORT (`-p 80`, `-p IP::80`) a free host port is picked.
    #[arg(
        short = 'p',
        long = "publish",
        value_name = "[HOSTIP:]HOSTPORT:PORT[/tcp|/udp]"
    )]
    pub publish: Vec<String>,
}

impl Publish {
    /// Every `-p` spec, expanded.
    pub fn mappings(&self) -> Result<Vec<api::PortMapping>> {
        let mut out = Vec::new();
        for s in &self.publish {
            out.extend(api::parse_port_spec(s).map_err(anyhow::Error::msg)?);
        }
        if out.len() > api::MAX_PORT_MAPPINGS {
            bail!(
                "{} ports asked for; at most {} may be published at once",
                out.len(),
                api::MAX_PORT_MAPPINGS
            );
        }
        Ok(out)
    }
}
