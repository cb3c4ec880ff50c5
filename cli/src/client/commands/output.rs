//! What the subcommands print: `--format`, JSON and short ids.

use std::io::Write;

use anyhow::Result;
use clap::ValueEnum;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Table,
    Json,
}

/// Prints `v` as pretty JSON on stdout.
pub(super) fn print_json<T: serde::Serialize>(v: &T) -> Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, v)?;
    writeln!(out)?;
    Ok(())
}

/// The first 12 characters of an id, as `docker network ls` shows it.
pub(super) fn short(id: &str) -> &str {
    &id[..id.len().min(12)]
}
