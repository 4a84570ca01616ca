//! `roundtrip compare RUN_DIR... [--json] [--html FILE]`

use std::io::Write;
use std::path::PathBuf;

use crate::fsutil::write_atomic;
use crate::run::compare::{compare, html, text};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Run folders (written by `roundtrip run` or `roundtrip merge`), in the order of the columns
    /// (#1, #2, ...).
    #[arg(required = true, value_name = "RUN_DIR")]
    runs: Vec<PathBuf>,
    /// Print one JSON object (schema_version, runs, differences, corpus) instead of the tables.
    #[arg(long)]
    json: bool,
    /// Also write the comparison as a small self-contained HTML page to FILE [default: none].
    #[arg(long, value_name = "FILE")]
    html: Option<PathBuf>,
}

pub fn execute(a: Args, out: &mut dyn Write) -> anyhow::Result<()> {
    let c = compare(&a.runs)?;
    if let Some(path) = &a.html {
        write_atomic(path, html(&c).as_bytes())
            .map_err(|e| crate::input_err!("cannot write {}: {e:#}", path.display()))?;
    }
    if a.json {
        serde_json::to_writer_pretty(&mut *out, &c)?;
        writeln!(out)?;
    } else {
        write!(out, "{}", text(&c))?;
    }
    Ok(())
}
