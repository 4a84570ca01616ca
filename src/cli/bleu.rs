//! `roundtrip bleu HYPS REFS...`

use std::io::Write;
use std::path::PathBuf;

use crate::metrics::bleu::files::{AlignedCorpus, BleuReport, SentenceScores};
use crate::metrics::bleu::Smoothing;
use crate::text::Tokenize;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Hypotheses, one per line (`-`: standard input).
    hyps: PathBuf,
    /// Reference streams, each line-aligned with HYPS; an empty line means no reference from that
    /// stream. One of HYPS and REFS may be `-` (standard input; `./-` is a file named `-`).
    #[arg(required = true)]
    refs: Vec<PathBuf>,
    /// Smoothing of zero n-gram precisions: none, method1 or method3 (nltk's methods).
    #[arg(long, default_value = "none")]
    smooth: Smoothing,
    /// caption: the captioners' normalisation (lowercase, no punctuation, words of 2+ letters);
    /// whitespace: split on whitespace only.
    #[arg(long, default_value = "caption")]
    tokenize: Tokenize,
    /// Print one JSON object instead of a table (with --sentences: one per line).
    #[arg(long)]
    json: bool,
    /// Instead of the corpus scores, one line of scores per sentence (nltk's sentence_bleu):
    /// tab-separated `line bleu1 bleu2 bleu3 bleu4 hyp_len ref_len` under a header line, or with
    /// --json one object per line.
    #[arg(long)]
    sentences: bool,
}

pub fn execute(a: Args, out: &mut dyn Write) -> anyhow::Result<()> {
    let corpus = AlignedCorpus::load(&a.hyps, &a.refs, a.tokenize)?;
    if a.sentences {
        if !a.json {
            writeln!(out, "{}", SentenceScores::TSV_HEADER)?;
        }
        for (i, stats) in corpus.sentence_stats().iter().enumerate() {
            let s = SentenceScores::new(i + 1, stats, a.smooth);
            if a.json {
                serde_json::to_writer(&mut *out, &s)?;
                writeln!(out)?;
            } else {
                writeln!(out, "{}", s.tsv())?;
            }
        }
        return Ok(());
    }
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
