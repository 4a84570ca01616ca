//! Line-aligned BLEU input as sacrebleu's command line takes it: one hypothesis file and one or
//! more reference streams, line i of each stream being a reference for hypothesis i. An empty
//! reference line means "no reference from this stream" for that sentence.

use std::path::{Path, PathBuf};

use serde::Serialize;

use super::{BleuAccumulator, BleuStats, Smoothing, MAX_ORDER};
use crate::error::{read_input_file, utf8_lines, InputError};
use crate::text::Tokenize;

/// Hypotheses and their references, tokenised.
pub struct AlignedCorpus {
    pub hypotheses: Vec<Vec<String>>,
    pub references: Vec<Vec<Vec<String>>>,
}

fn read_lines(path: &Path) -> anyhow::Result<Vec<String>> {
    let bytes = read_input_file(path)?;
    Ok(utf8_lines(path, &bytes)?)
}

impl AlignedCorpus {
    /// Reads and tokenises line-aligned files; errors name the file and line.
    pub fn load(hyps: &Path, refs: &[PathBuf], tokenize: Tokenize) -> anyhow::Result<Self> {
        if refs.is_empty() {
            return Err(InputError::new("no reference file given: expected at least one").into());
        }
        let hyp_lines = read_lines(hyps)?;
        if hyp_lines.is_empty() {
            return Err(InputError::new(format!(
                "{}: no hypotheses (the file is empty)",
                hyps.display()
            ))
            .into());
        }
        let mut references: Vec<Vec<Vec<String>>> = vec![Vec::new(); hyp_lines.len()];
        for path in refs {
            let lines = read_lines(path)?;
            if lines.len() != hyp_lines.len() {
                return Err(InputError::new(format!(
                    "{} has {} lines but {} has {}: reference streams must be line-aligned with the hypotheses",
                    path.display(),
                    lines.len(),
                    hyps.display(),
                    hyp_lines.len()
                ))
                .into());
            }
            for (slot, line) in references.iter_mut().zip(&lines) {
                if !line.trim().is_empty() {
                    slot.push(tokenize.apply(line));
                }
            }
        }
        if let Some(i) = references.iter().position(Vec::is_empty) {
            return Err(InputError::at_line(
                hyps,
                i + 1,
                format_args!(
                    "hypothesis has no reference: line {} is empty in every reference file",
                    i + 1
                ),
            )
            .into());
        }
        let hypotheses = hyp_lines.iter().map(|l| tokenize.apply(l)).collect();
        Ok(Self {
            hypotheses,
            references,
        })
    }

    pub fn stats(&self) -> BleuStats {
        let mut acc = BleuAccumulator::new();
        for (h, r) in self.hypotheses.iter().zip(&self.references) {
            acc.add(h, r);
        }
        acc.stats()
    }
}

#[derive(Debug, Serialize)]
pub struct Precision {
    pub order: usize,
    pub matched: u64,
    pub total: u64,
}

/// The `roundtrip bleu --json` object.
#[derive(Debug, Serialize)]
pub struct BleuReport {
    pub bleu1: f64,
    pub bleu2: f64,
    pub bleu3: f64,
    pub bleu4: f64,
    pub precisions: Vec<Precision>,
    pub hyp_len: u64,
    pub ref_len: u64,
    pub brevity_penalty: f64,
    pub smooth: Smoothing,
    pub tokenize: Tokenize,
    pub sentences: usize,
    pub reference_streams: usize,
}

impl BleuReport {
    pub fn new(
        stats: &BleuStats,
        smooth: Smoothing,
        tokenize: Tokenize,
        sentences: usize,
        streams: usize,
    ) -> Self {
        let [bleu1, bleu2, bleu3, bleu4] = stats.scores(smooth);
        Self {
            bleu1,
            bleu2,
            bleu3,
            bleu4,
            precisions: (0..MAX_ORDER)
                .map(|n| Precision {
                    order: n + 1,
                    matched: stats.matched[n],
                    total: stats.total[n],
                })
                .collect(),
            hyp_len: stats.hyp_len,
            ref_len: stats.ref_len,
            brevity_penalty: stats.brevity_penalty(),
            smooth,
            tokenize,
            sentences,
            reference_streams: streams,
        }
    }

    /// A short human-readable table.
    pub fn table(&self) -> String {
        let scores = [self.bleu1, self.bleu2, self.bleu3, self.bleu4];
        let mut s = String::new();
        for (p, b) in self.precisions.iter().zip(scores) {
            s += &format!(
                "BLEU-{}  {:.4}   p{} = {}/{}\n",
                p.order, b, p.order, p.matched, p.total
            );
        }
        s += &format!(
            "BP {:.4}  hyp_len {}  ref_len {}  sentences {}  references {}  smooth {}  tokenize {}\n",
            self.brevity_penalty,
            self.hyp_len,
            self.ref_len,
            self.sentences,
            self.reference_streams,
            self.smooth.name(),
            self.tokenize.name()
        );
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, body: &[u8]) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, body).unwrap();
        p
    }

    #[test]
    fn empty_reference_lines_mean_no_reference_from_that_stream() {
        let d = tempfile::tempdir().unwrap();
        let h = write(d.path(), "h", b"a dog runs\nthe cat sat\n");
        let r1 = write(d.path(), "r1", b"a dog runs\n\n");
        let r2 = write(d.path(), "r2", b"\nthe cat sat down\n");
        let c = AlignedCorpus::load(&h, &[r1, r2], Tokenize::Whitespace).unwrap();
        assert_eq!(c.references[0].len(), 1);
        assert_eq!(c.references[1], vec![vec!["the", "cat", "sat", "down"]]);
    }

    #[test]
    fn input_errors_name_file_and_line() {
        let d = tempfile::tempdir().unwrap();
        let h = write(d.path(), "h", b"one\ntwo\n");
        let short = write(d.path(), "short", b"one\n");
        let holes = write(d.path(), "holes", b"one\n\n");
        let bad = write(d.path(), "bad", b"one\n\xc3\x28\n");
        let msg = |refs: &[PathBuf]| {
            AlignedCorpus::load(&h, refs, Tokenize::Caption)
                .err()
                .unwrap()
                .to_string()
        };
        assert!(msg(std::slice::from_ref(&short)).contains("has 1 lines but"));
        assert!(msg(&[holes]).contains("h:2: hypothesis has no reference"));
        assert!(msg(&[bad]).contains("bad:2: invalid UTF-8"));
        assert!(msg(&[d.path().join("missing")]).contains("cannot read"));
    }
}
