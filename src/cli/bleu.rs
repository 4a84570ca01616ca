//! `roundtrip bleu HYPS REFS...`

use std::io::Write;
use std::path::PathBuf;

use crate::metrics::bleu::files::{AlignedCorpus, BleuReport};
use crate::metrics::bleu::Smoothing;
use crate::text::Tokenize;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Hypotheses, one per line.
    hyps: PathBuf,
    /// Reference streams, each line-aligned with HYPS; an empty line means no reference from that stream.
    #[arg(required = true)]
    refs: Vec<PathBuf>,
    /// Smoothing of zero n-gram precisions: none, method1 or method3 (nltk's methods).
    #[arg(long, default_value = "none")]
    smooth: Smoothing,
    /// caption: the captioners' normalisation (lowercase, no punctuation, words of 2+ letters);
    /// whitespace: split on whitespace only.
    #[arg(long, default_value = "caption")]
    tokenize: Tokenize,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

pub fn execute(a: Args, out: &mut dyn Write) -> anyhow::Result<()> {
    let corpus = AlignedCorpus::load(&a.hyps, &a.refs, a.tokenize)?;
    let report = BleuReport::new(
        &corpus.stats(),
        a.smooth,
        a.tokenize,
        corpus.hypotheses.len(),
        a.refs.len(),
    );
    if a.json {
        serde_json::to_writer(&mut *out, &report)?;
        writeln!(out)?;
    } else {
        write!(out, "{}", report.table())?;
    }
    Ok(())
}
