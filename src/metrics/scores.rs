//! Every caption metric of a tokenised corpus at once, for `roundtrip score`: nltk's BLEU-1..4
//! (`bleu1`..`bleu4`, unsmoothed, [`super::bleu`]), pycocoevalcap's BLEU-1..4
//! (`coco_bleu1`..`coco_bleu4`, [`super::bleu::coco`]), CIDEr-D (`cider_d`, [`super::cider`])
//! and ROUGE-L (`rouge_l`, [`super::rouge`]), for the corpus and for each sentence. A
//! sentence's CIDEr-D is computed with the document frequencies of the whole corpus, as
//! pycocoevalcap's per-image scores are.

use serde_json::Value;

use super::bleu::coco::CocoBleuAccumulator;
use super::bleu::{BleuAccumulator, BleuStats, Smoothing, MAX_ORDER};
use super::cider::cider_d;
use super::rouge::corpus_rouge_l;

/// A metric `roundtrip score --metrics` can compute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metric {
    /// nltk's BLEU-1..4, unsmoothed.
    Bleu,
    /// pycocoevalcap's BLEU-1..4.
    CocoBleu,
    CiderD,
    RougeL,
}

impl Metric {
    pub const ALL: [Metric; 4] = [
        Metric::Bleu,
        Metric::CocoBleu,
        Metric::CiderD,
        Metric::RougeL,
    ];

    /// The name `--metrics` takes.
    pub fn name(self) -> &'static str {
        match self {
            Metric::Bleu => "bleu",
            Metric::CocoBleu => "coco-bleu",
            Metric::CiderD => "cider-d",
            Metric::RougeL => "rouge-l",
        }
    }
}

impl std::str::FromStr for Metric {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Metric::ALL
            .into_iter()
            .find(|m| m.name() == s)
            .ok_or_else(|| {
                format!("unknown metric `{s}`: expected bleu, coco-bleu, cider-d or rouge-l")
            })
    }
}

/// The figures of a corpus or of one sentence; `None` for a metric not asked for.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CaptionScores {
    pub bleu: Option<[f64; MAX_ORDER]>,
    pub coco_bleu: Option<[f64; MAX_ORDER]>,
    pub cider_d: Option<f64>,
    pub rouge_l: Option<f64>,
}

impl CaptionScores {
    /// The output keys with their values, in order (`null` for a metric not asked for):
    /// `bleu1`..`bleu4`, `coco_bleu1`..`coco_bleu4`, `cider_d`, `rouge_l`.
    pub fn fields(&self) -> Vec<(&'static str, Value)> {
        const BLEU: [&str; MAX_ORDER] = ["bleu1", "bleu2", "bleu3", "bleu4"];
        const COCO: [&str; MAX_ORDER] = ["coco_bleu1", "coco_bleu2", "coco_bleu3", "coco_bleu4"];
        let num = |x: Option<f64>| x.map_or(Value::Null, Value::from);
        let mut out = Vec::with_capacity(2 * MAX_ORDER + 2);
        for (keys, values) in [(BLEU, self.bleu), (COCO, self.coco_bleu)] {
            for (n, k) in keys.into_iter().enumerate() {
                out.push((k, num(values.map(|v| v[n]))));
            }
        }
        out.push(("cider_d", num(self.cider_d)));
        out.push(("rouge_l", num(self.rouge_l)));
        out
    }
}

/// The figures of a corpus and of each of its sentences.
#[derive(Debug, Clone, PartialEq)]
pub struct Scores {
    pub corpus: CaptionScores,
    pub sentences: Vec<CaptionScores>,
}

/// Scores token-list hypotheses against their references (at least one each) with `metrics`.
pub fn score<T: AsRef<str>, R: AsRef<[T]>>(
    hypotheses: &[Vec<T>],
    references: &[Vec<R>],
    metrics: &[Metric],
) -> Scores {
    assert_eq!(
        hypotheses.len(),
        references.len(),
        "one reference set per hypothesis"
    );
    let n = hypotheses.len();
    let mut sentences = vec![CaptionScores::default(); n];
    let mut corpus = CaptionScores::default();
    let wants = |m| metrics.contains(&m);
    if wants(Metric::Bleu) {
        let mut acc = BleuAccumulator::new();
        let mut before = BleuStats::default();
        for ((h, r), s) in hypotheses.iter().zip(references).zip(&mut sentences) {
            acc.add(h, r);
            let after = acc.stats();
            s.bleu = Some(after.minus(&before).scores(Smoothing::None));
            before = after;
        }
        corpus.bleu = Some(acc.stats().scores(Smoothing::None));
    }
    if wants(Metric::CocoBleu) {
        let mut acc = CocoBleuAccumulator::new();
        for ((h, r), s) in hypotheses.iter().zip(references).zip(&mut sentences) {
            s.coco_bleu = Some(acc.add(h, r).scores());
        }
        corpus.coco_bleu = Some(acc.stats().scores());
    }
    if wants(Metric::CiderD) {
        let c = cider_d(hypotheses, references);
        for (s, x) in sentences.iter_mut().zip(c.sentences) {
            s.cider_d = Some(x);
        }
        corpus.cider_d = Some(c.corpus);
    }
    if wants(Metric::RougeL) {
        let (c, per) = corpus_rouge_l(hypotheses, references);
        for (s, x) in sentences.iter_mut().zip(per) {
            s.rouge_l = Some(x);
        }
        corpus.rouge_l = Some(c);
    }
    Scores { corpus, sentences }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::text::whitespace;

    #[test]
    fn metrics_parse_from_their_names() {
        for m in Metric::ALL {
            assert_eq!(m.name().parse::<Metric>(), Ok(m));
        }
        assert!("meteor".parse::<Metric>().unwrap_err().contains("meteor"));
    }

    #[test]
    fn only_the_metrics_asked_for_are_computed_and_keys_are_in_order() {
        let hyps = vec![whitespace("a dog runs"), whitespace("a cat")];
        let refs = vec![
            vec![whitespace("a dog runs fast")],
            vec![whitespace("the cat")],
        ];
        let s = score(&hyps, &refs, &[Metric::RougeL, Metric::Bleu]);
        assert!(s.corpus.bleu.is_some() && s.corpus.rouge_l.is_some());
        assert!(s.corpus.coco_bleu.is_none() && s.corpus.cider_d.is_none());
        let keys: Vec<&str> = s.corpus.fields().iter().map(|(k, _)| *k).collect();
        assert_eq!(
            keys,
            [
                "bleu1",
                "bleu2",
                "bleu3",
                "bleu4",
                "coco_bleu1",
                "coco_bleu2",
                "coco_bleu3",
                "coco_bleu4",
                "cider_d",
                "rouge_l"
            ]
        );
        assert_eq!(s.corpus.fields()[4].1, Value::Null);
        let all = score(&hyps, &refs, &Metric::ALL);
        assert_eq!(all.sentences.len(), 2);
        assert_eq!(all.corpus.rouge_l, s.corpus.rouge_l);
        // The sentences' nltk BLEU is each pair's sentence_bleu.
        assert_eq!(
            all.sentences[1].bleu.unwrap(),
            crate::metrics::bleu::sentence_bleu(&hyps[1], &refs[1], Smoothing::None)
        );
    }
}
