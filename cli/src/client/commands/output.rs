//! What the subcommands print: `--format`, JSON, tables and short ids.

use std::fmt::{Display, Write as _};
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

/// How a table column is laid out.
#[derive(Debug, Clone, Copy)]
pub(super) enum Col {
    /// Padded to this width, text on the left.
    Left(usize),
    /// Padded to this width, text on the right.
    Right(usize),
    /// Not padded (the last column).
    Rest,
}

/// A fixed-width table: the header and the rows share one layout, so they
/// cannot drift apart.
#[derive(Debug, Clone, Copy)]
pub(super) struct Table {
    pub cols: &'static [Col],
    /// Between two columns.
    pub sep: &'static str,
}

impl Table {
    /// One line of the table, one cell a column.
    pub fn line(&self, cells: &[&dyn Display]) -> String {
        debug_assert_eq!(cells.len(), self.cols.len(), "one cell a column");
        let mut out = String::new();
        for (i, (col, cell)) in self.cols.iter().zip(cells).enumerate() {
            if i > 0 {
                out.push_str(self.sep);
            }
            // Writing to a String cannot fail.
            let _ = match *col {
                Col::Left(w) => write!(out, "{cell:<w$}"),
                Col::Right(w) => write!(out, "{cell:>w$}"),
                Col::Rest => write!(out, "{cell}"),
            };
        }
        out
    }

    /// Prints [`Table::line`] on stdout.
    pub fn print(&self, cells: &[&dyn Display]) {
        println!("{}", self.line(cells));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_pad_as_format_strings_do() {
        let t = Table {
            cols: &[Col::Left(6), Col::Right(4), Col::Rest],
            sep: " ",
        };
        assert_eq!(
            t.line(&[&"ab", &12, &"rest"]),
            format!("{:<6} {:>4} {}", "ab", 12, "rest")
        );
        assert_eq!(
            t.line(&[&"longer-than-6", &123456, &""]),
            "longer-than-6 123456 "
        );
        let packed = Table {
            cols: &[Col::Left(3), Col::Rest],
            sep: "",
        };
        assert_eq!(packed.line(&[&"a", &"b"]), "a  b");
    }
}
