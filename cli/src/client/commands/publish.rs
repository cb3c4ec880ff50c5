//! The `-p`/`--publish` flag of `run` and `network connect`.

use anyhow::{bail, Result};

use crate::api;

/// Every `-p` spec, expanded.
pub(super) fn port_mappings(specs: &[String]) -> Result<Vec<api::PortMapping>> {
    let mut out = Vec::new();
    for s in specs {
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
