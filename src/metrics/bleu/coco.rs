//! BLEU-1..4 as the captioning community reports it: Papineni et al. 2002, "BLEU: a Method for
//! Automatic Evaluation of Machine Translation", in the flavour of pycocoevalcap 1.2's
//! `pycocoevalcap.bleu.Bleu` (`BleuScorer.compute_score(option='closest')`), the scorer of the
//! COCO caption server.
//!
//! What differs from nltk's `corpus_bleu` ([`super::BleuStats`]):
//! - a hypothesis shorter than n tokens adds 0 n-grams to the order-n denominator (nltk: at least
//!   1), so an empty or one-token hypothesis weighs nothing in the higher orders;
//! - each precision is `(matched + 1e-15) / (total + 1e-9)` (pycocoevalcap's `tiny` and `small`),
//!   so a zero precision gives a tiny positive score, not nltk's exact 0, and BLEU-n is the n-th
//!   root of the product of the first n precisions;
//! - the brevity penalty is `exp(1 - 1/ratio)` with `ratio = (hyp_len + 1e-15) / (ref_len + 1e-9)`,
//!   applied when `ratio < 1`.
//!
//! The rest is as nltk: clipping at the largest count in one reference, the reference length
//! closest to each hypothesis (ties to the shorter, pycocoevalcap's `closest`) summed over the
//! corpus. Per-sentence scores are pycocoevalcap's per-image `bleu_list`.

use serde::Serialize;

use super::{BleuAccumulator, BleuStats, MAX_ORDER};

/// pycocoevalcap's `tiny`: added to every numerator and to the hypothesis length.
const TINY: f64 = 1e-15;
/// pycocoevalcap's `small`: added to every denominator and to the reference length.
const SMALL: f64 = 1e-9;

/// Sufficient statistics of pycocoevalcap's BLEU (its `totalcomps`): sums over sentences.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct CocoBleuStats {
    /// Clipped n-gram matches per order (`correct`).
    pub correct: [u64; MAX_ORDER],
    /// Hypothesis n-grams per order, 0 for a hypothesis shorter than the order (`guess`).
    pub guess: [u64; MAX_ORDER],
    pub test_len: u64,
    /// Sum of each sentence's closest reference length (ties to the shorter).
    pub ref_len: u64,
}

impl CocoBleuStats {
    /// One sentence's statistics from its nltk statistics (the same counts but for the
    /// denominators of orders longer than the hypothesis, which nltk raises to 1).
    pub fn from_sentence(s: &BleuStats) -> Self {
        Self {
            correct: s.matched,
            guess: std::array::from_fn(|n| if s.hyp_len > n as u64 { s.total[n] } else { 0 }),
            test_len: s.hyp_len,
            ref_len: s.ref_len,
        }
    }

    /// Adds another set of statistics.
    pub fn merge(&mut self, other: &CocoBleuStats) {
        for n in 0..MAX_ORDER {
            self.correct[n] += other.correct[n];
            self.guess[n] += other.guess[n];
        }
        self.test_len += other.test_len;
        self.ref_len += other.ref_len;
    }

    /// BLEU-1..4 as `BleuScorer.compute_score` computes them, operation for operation.
    pub fn scores(&self) -> [f64; MAX_ORDER] {
        let mut out = [0.0; MAX_ORDER];
        let mut product = 1.0f64;
        for (k, b) in out.iter_mut().enumerate() {
            product *= (self.correct[k] as f64 + TINY) / (self.guess[k] as f64 + SMALL);
            *b = product.powf(1.0 / (k + 1) as f64);
        }
        let ratio = (self.test_len as f64 + TINY) / (self.ref_len as f64 + SMALL);
        if ratio < 1.0 {
            let penalty = (1.0 - 1.0 / ratio).exp();
            for b in &mut out {
                *b *= penalty;
            }
        }
        out
    }
}

/// Accumulates pycocoevalcap BLEU sentence by sentence, keeping each sentence's statistics.
#[derive(Default)]
pub struct CocoBleuAccumulator<'a> {
    inner: BleuAccumulator<'a>,
    before: BleuStats,
    total: CocoBleuStats,
}

impl<'a> CocoBleuAccumulator<'a> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one hypothesis with its references (at least one) and returns its own statistics.
    pub fn add<T: AsRef<str> + 'a, R: AsRef<[T]>>(
        &mut self,
        hypothesis: &'a [T],
        references: &'a [R],
    ) -> CocoBleuStats {
        self.inner.add(hypothesis, references);
        let after = self.inner.stats();
        let sentence = CocoBleuStats::from_sentence(&after.minus(&self.before));
        self.before = after;
        self.total.merge(&sentence);
        sentence
    }

    pub fn stats(&self) -> CocoBleuStats {
        self.total
    }
}

/// pycocoevalcap's BLEU of a corpus: the corpus BLEU-1..4 and each sentence's.
pub fn coco_bleu<T: AsRef<str>, R: AsRef<[T]>>(
    hypotheses: &[Vec<T>],
    references: &[Vec<R>],
) -> ([f64; MAX_ORDER], Vec<[f64; MAX_ORDER]>) {
    assert_eq!(
        hypotheses.len(),
        references.len(),
        "one reference set per hypothesis"
    );
    let mut acc = CocoBleuAccumulator::new();
    let sentences = hypotheses
        .iter()
        .zip(references)
        .map(|(h, r)| acc.add(h, r).scores())
        .collect();
    (acc.stats().scores(), sentences)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::text::whitespace;

    fn toks(s: &str) -> Vec<String> {
        whitespace(s)
    }

    fn close(a: f64, b: f64) {
        assert!((a - b).abs() <= 1e-12, "{a} != {b}");
    }

    #[test]
    fn identical_hypothesis_scores_one_up_to_the_constants_and_a_brevity_penalty() {
        let (corpus, per) = coco_bleu(&[toks("a b c d e")], &[vec![toks("a b c d e")]]);
        // Even equal lengths are a ratio (5 + 1e-15) / (5 + 1e-9) below 1: a brevity penalty.
        let bp = (1.0 - (5.0 + SMALL) / (5.0 + TINY)).exp();
        assert!(bp < 1.0);
        for (k, b) in corpus.iter().enumerate() {
            // ((n + 1e-15) / (n + 1e-9)) per order.
            let mut p = 1.0f64;
            for j in 0..=k {
                let n = (5 - j) as f64;
                p *= (n + TINY) / (n + SMALL);
            }
            close(*b, p.powf(1.0 / (k + 1) as f64) * bp);
            close(per[0][k], *b);
        }
    }

    #[test]
    fn one_token_hypothesis_has_no_higher_order_denominators() {
        // "a" against "a b": 1 unigram matched of 1; no bigrams (nltk would count 1).
        let s = coco_bleu(&[toks("a")], &[vec![toks("a b")]]).0;
        let bp = (1.0 - (2.0 + SMALL) / (1.0 + TINY)).exp();
        close(s[0], (1.0 + TINY) / (1.0 + SMALL) * bp);
        // BLEU-2 = sqrt(p1 * (1e-15 / 1e-9)) * bp.
        close(
            s[1],
            ((1.0 + TINY) / (1.0 + SMALL) * (TINY / SMALL)).sqrt() * bp,
        );
    }

    #[test]
    fn corpus_sums_denominators_and_closest_lengths() {
        let hyps = [toks("the cat sat"), toks("a dog")];
        let refs = [
            vec![toks("the cat sat down"), toks("a cat")],
            vec![toks("a dog runs")],
        ];
        let mut acc = CocoBleuAccumulator::new();
        acc.add(&hyps[0], &refs[0]);
        acc.add(&hyps[1], &refs[1]);
        let s = acc.stats();
        assert_eq!(s.correct, [5, 3, 1, 0]);
        assert_eq!(s.guess, [5, 3, 1, 0]);
        // Closest to 3 tokens: 4 and 2 tie at 1, the shorter wins; 3 for the second.
        assert_eq!((s.test_len, s.ref_len), (5, 5));
    }
}
