//! Line-aligned BLEU input as sacrebleu's command line takes it: one hypothesis file and one or
//! more reference streams, line i of each stream being a reference for hypothesis i. An empty
//! reference line means "no reference from this stream" for that sentence. The path `-` is
//! standard input (for one of the files at most).

use std::io::Read;
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

/// The path that means standard input.
pub const STDIN: &str = "-";

/// How errors name standard input.
const STDIN_NAME: &str = "<stdin>";

/// The name of `path` in errors: itself, or `<stdin>` for `-`.
fn name(path: &Path) -> &Path {
    if path == Path::new(STDIN) {
        Path::new(STDIN_NAME)
    } else {
        path
    }
}

/// The lines of `path`, or of `stdin` for `-`.
fn read_lines(path: &Path, stdin: &mut dyn Read) -> anyhow::Result<Vec<String>> {
    let bytes = if path == Path::new(STDIN) {
        let mut b = Vec::new();
        stdin
            .read_to_end(&mut b)
            .map_err(|e| InputError::new(format!("cannot read standard input: {e}")))?;
        b
    } else {
        read_input_file(path)?
    };
    Ok(utf8_lines(name(path), &bytes)?)
}

impl AlignedCorpus {
    /// Reads and tokenises line-aligned files (`-`: standard input); errors name the file and
    /// line.
    pub fn load(hyps: &Path, refs: &[PathBuf], tokenize: Tokenize) -> anyhow::Result<Self> {
        Self::load_from(hyps, refs, tokenize, &mut std::io::stdin().lock())
    }

    /// [`AlignedCorpus::load`] with `stdin` standing for `-`.
    pub fn load_from(
        hyps: &Path,
        refs: &[PathBuf],
        tokenize: Tokenize,
        stdin: &mut dyn Read,
    ) -> anyhow::Result<Self> {
        if refs.is_empty() {
            return Err(InputError::new("no reference file given: expected at least one").into());
        }
        let dashes = std::iter::once(hyps)
            .chain(refs.iter().map(PathBuf::as_path))
            .filter(|p| *p == Path::new(STDIN))
            .count();
        if dashes > 1 {
            return Err(InputError::new(format!(
                "`-` (standard input) is given {dashes} times: it can stand for one file only \
                 (the hypotheses or one reference stream)"
            ))
            .into());
        }
        let hyp_lines = read_lines(hyps, stdin)?;
        if hyp_lines.is_empty() {
            return Err(InputError::new(format!(
                "{}: no hypotheses (the file is empty)",
                name(hyps).display()
            ))
            .into());
        }
        let mut references: Vec<Vec<Vec<String>>> = vec![Vec::new(); hyp_lines.len()];
        for path in refs {
            let lines = read_lines(path, stdin)?;
            if lines.len() != hyp_lines.len() {
                return Err(InputError::new(format!(
                    "{} has {} lines but {} has {}: reference streams must be line-aligned with the hypotheses",
                    name(path).display(),
                    lines.len(),
                    name(hyps).display(),
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
                name(hyps),
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

    /// Each sentence's own statistics (their sum is [`AlignedCorpus::stats`]); a sentence's
    /// scores are nltk's `sentence_bleu` of it.
    pub fn sentence_stats(&self) -> Vec<BleuStats> {
        let mut acc = BleuAccumulator::new();
        let mut before = BleuStats::default();
        let mut out = Vec::with_capacity(self.hypotheses.len());
        for (h, r) in self.hypotheses.iter().zip(&self.references) {
            acc.add(h, r);
            let after = acc.stats();
            out.push(after.minus(&before));
            before = after;
        }
        out
    }
}

/// One line of `roundtrip bleu --sentences --json`: a sentence's scores (nltk `sentence_bleu`).
#[derive(Debug, Serialize)]
pub struct SentenceScores {
    /// The sentence's line in the files (from 1).
    pub line: usize,
    pub bleu1: f64,
    pub bleu2: f64,
    pub bleu3: f64,
    pub bleu4: f64,
    pub hyp_len: u64,
    /// The length of its reference closest in length (ties to the shorter).
    pub ref_len: u64,
}

impl SentenceScores {
    pub fn new(line: usize, stats: &BleuStats, smooth: Smoothing) -> Self {
        let [bleu1, bleu2, bleu3, bleu4] = stats.scores(smooth);
        Self {
            line,
            bleu1,
            bleu2,
            bleu3,
            bleu4,
            hyp_len: stats.hyp_len,
            ref_len: stats.ref_len,
        }
    }

    /// The header of [`SentenceScores::tsv`] lines.
    pub const TSV_HEADER: &'static str = "line\tbleu1\tbleu2\tbleu3\tbleu4\thyp_len\tref_len";

    /// Its tab-separated line (scores to 4 decimals, as the corpus table).
    pub fn tsv(&self) -> String {
        format!(
            "{}\t{:.4}\t{:.4}\t{:.4}\t{:.4}\t{}\t{}",
            self.line, self.bleu1, self.bleu2, self.bleu3, self.bleu4, self.hyp_len, self.ref_len
        )
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

    #[test]
    fn a_dash_reads_standard_input_once() {
        let d = tempfile::tempdir().unwrap();
        let h = write(d.path(), "h", b"a dog runs\nthe cat sat\n");
        let r = write(d.path(), "r", b"a dog runs fast\nthe cat sat\n");
        let dash = PathBuf::from("-");
        let load = |hyps: &Path, refs: &[PathBuf], stdin: &[u8]| {
            AlignedCorpus::load_from(hyps, refs, Tokenize::Whitespace, &mut &stdin[..])
        };
        let files = load(&h, std::slice::from_ref(&r), b"").unwrap();
        let hyps_in = load(&dash, std::slice::from_ref(&r), &std::fs::read(&h).unwrap()).unwrap();
        let refs_in = load(&h, std::slice::from_ref(&dash), &std::fs::read(&r).unwrap()).unwrap();
        for c in [&hyps_in, &refs_in] {
            assert_eq!(c.hypotheses, files.hypotheses);
            assert_eq!(c.references, files.references);
        }
        let msg = |hyps: &Path, refs: &[PathBuf], stdin: &[u8]| {
            load(hyps, refs, stdin).err().unwrap().to_string()
        };
        let twice = msg(&dash, std::slice::from_ref(&dash), b"x\n");
        assert!(
            twice.contains("`-` (standard input) is given 2 times"),
            "{twice}"
        );
        assert!(msg(&dash, std::slice::from_ref(&r), b"ok\n\xff\n")
            .contains("<stdin>:2: invalid UTF-8"));
        assert!(msg(&dash, std::slice::from_ref(&r), b"").contains("<stdin>: no hypotheses"));
        assert!(msg(&h, std::slice::from_ref(&dash), b"one\n").contains("<stdin> has 1 lines"));
    }

    #[test]
    fn sentence_stats_are_each_sentences_bleu_and_sum_to_the_corpus() {
        let d = tempfile::tempdir().unwrap();
        let h = write(
            d.path(),
            "h",
            b"the cat sat on the mat\nthe the the the the the the\n\na man riding a horse\n",
        );
        let r1 = write(
            d.path(),
            "r1",
            b"the cat is on the mat\nthe cat is on the mat\na dog\na man is riding a horse on the beach\n",
        );
        let r2 = write(
            d.path(),
            "r2",
            b"\nthere is a cat on the mat\n\na person rides a horse\n",
        );
        let c = AlignedCorpus::load(&h, &[r1, r2], Tokenize::Whitespace).unwrap();
        let per = c.sentence_stats();
        assert_eq!(per.len(), 4);
        let mut sum = BleuStats::default();
        for (s, (hyp, refs)) in per.iter().zip(c.hypotheses.iter().zip(&c.references)) {
            sum.merge(s);
            for m in Smoothing::ALL {
                assert_eq!(s.scores(m), super::super::sentence_bleu(hyp, refs, m));
            }
        }
        assert_eq!(sum, c.stats());
        // nltk's sentence_bleu of the first pair (see the module tests of `bleu`).
        let first = SentenceScores::new(1, &per[0], Smoothing::None);
        assert_eq!(
            first.tsv(),
            "1\t0.8333\t0.7071\t0.5000\t0.0000\t6\t6",
            "{first:?}"
        );
        assert_eq!(
            SentenceScores::new(3, &per[2], Smoothing::Method1).tsv(),
            "3\t0.0000\t0.0000\t0.0000\t0.0000\t0\t2"
        );
    }
}
