//! `roundtrip score HYPS REFS... [--metrics ...]`

use std::io::Write;
use std::path::PathBuf;

use crate::metrics::bleu::files::AlignedCorpus;
use crate::metrics::scores::{score, Metric};
use crate::text::Tokenize;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Hypotheses, one per line (`-`: standard input).
    hyps: PathBuf,
    /// Reference streams, each line-aligned with HYPS; an empty line means no reference from that
    /// stream. One of HYPS and REFS may be `-` (standard input; `./-` is a file named `-`).
    #[arg(required = true)]
    refs: Vec<PathBuf>,
    /// The metrics, comma-separated: bleu (nltk's BLEU-1..4, unsmoothed), coco-bleu
    /// (pycocoevalcap's BLEU-1..4), cider-d (CIDEr-D), rouge-l (ROUGE-L); the others are left
    /// out (null in JSON).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "bleu,coco-bleu,cider-d,rouge-l"
    )]
    metrics: Vec<Metric>,
    /// caption: the captioners' normalisation (lowercase, no punctuation, words of 2+ letters);
    /// whitespace: split on whitespace only (for text tokenised beforehand, e.g. by the PTB
    /// tokenizer of the COCO tools).
    #[arg(long, default_value = "caption")]
    tokenize: Tokenize,
    #[command(flatten)]
    json: super::JsonArg,
    /// Instead of the corpus scores, one line per sentence: tab-separated `line` and the
    /// metrics' keys under a header line (4 decimals), or with --json one object per line. A
    /// sentence's CIDEr-D uses the whole corpus' document frequencies.
    #[arg(long)]
    sentences: bool,
}

pub fn execute(a: Args, out: &mut dyn Write) -> anyhow::Result<()> {
    let corpus = AlignedCorpus::load(&a.hyps, &a.refs, a.tokenize)?;
    let scores = score(&corpus.hypotheses, &corpus.references, &a.metrics);
    if a.sentences {
        for (i, s) in scores.sentences.iter().enumerate() {
            let mut fields = vec![("line", serde_json::Value::from(i + 1))];
            fields.extend(s.fields());
            if a.json.json {
                let map: serde_json::Map<String, serde_json::Value> =
                    fields.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
                serde_json::to_writer(&mut *out, &map)?;
                writeln!(out)?;
                continue;
            }
            let shown: Vec<_> = fields.into_iter().filter(|(_, v)| !v.is_null()).collect();
            if i == 0 {
                let head: Vec<&str> = shown.iter().map(|(k, _)| *k).collect();
                writeln!(out, "{}", head.join("\t"))?;
            }
            let cells: Vec<String> = shown
                .iter()
                .map(|(_, v)| match v.as_f64() {
                    Some(x) if v.is_f64() => format!("{x:.4}"),
                    _ => v.to_string(),
                })
                .collect();
            writeln!(out, "{}", cells.join("\t"))?;
        }
        return Ok(());
    }
    let mut fields = vec![
        (
            "hyps",
            serde_json::Value::from(a.hyps.display().to_string()),
        ),
        ("sentences", corpus.hypotheses.len().into()),
        ("reference_streams", a.refs.len().into()),
        ("tokenize", a.tokenize.name().into()),
    ];
    fields.extend(scores.corpus.fields());
    a.json.print(out, &fields)
}
