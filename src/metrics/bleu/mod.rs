//! Corpus BLEU-1..4 with exactly the semantics of nltk's `corpus_bleu`.
//!
//! Per order n, each hypothesis n-gram count is clipped at its largest count in any single
//! reference, and the denominator is max(1, hypothesis n-grams). Numerators, denominators,
//! hypothesis lengths and closest reference lengths (ties to the shorter) are summed over the
//! corpus before the brevity penalty and the geometric mean are taken. Where nltk's unsmoothed
//! score underflows to ~1e-78 (a zero higher-order precision) this returns exactly 0.0.
//!
//! `coco` is BLEU in the flavour of pycocoevalcap (the COCO caption server's scorer), from the
//! same counts.

pub mod coco;
pub mod files;

use std::fmt;

use rustc_hash::FxHashMap;
use serde::Serialize;

/// Highest n-gram order computed.
pub const MAX_ORDER: usize = 4;

/// How zero n-gram precisions are treated (nltk's `SmoothingFunction` methods).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Smoothing {
    /// No smoothing: any zero precision makes the score 0.
    #[default]
    None,
    /// A zero numerator becomes epsilon = 0.1 (over the order's denominator).
    Method1,
    /// The k-th zero order gets 1 / (2^k * denominator): NIST geometric smoothing, sacrebleu's `exp`.
    Method3,
}

impl Smoothing {
    pub const ALL: [Smoothing; 3] = [Smoothing::None, Smoothing::Method1, Smoothing::Method3];

    pub fn name(self) -> &'static str {
        match self {
            Smoothing::None => "none",
            Smoothing::Method1 => "method1",
            Smoothing::Method3 => "method3",
        }
    }
}

impl fmt::Display for Smoothing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Smoothing {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Smoothing::ALL
            .into_iter()
            .find(|m| m.name() == s)
            .ok_or_else(|| format!("unknown smoothing `{s}`: expected none, method1 or method3"))
    }
}

/// Sufficient statistics of corpus BLEU: sums over sentences, mergeable across shards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct BleuStats {
    /// Clipped n-gram matches per order (index 0 = unigrams).
    pub matched: [u64; MAX_ORDER],
    /// Hypothesis n-grams per order, each sentence contributing at least 1.
    pub total: [u64; MAX_ORDER],
    pub hyp_len: u64,
    pub ref_len: u64,
}

impl BleuStats {
    /// Adds another set of statistics (e.g. from another shard of the corpus).
    pub fn merge(&mut self, other: &BleuStats) {
        for n in 0..MAX_ORDER {
            self.matched[n] += other.matched[n];
            self.total[n] += other.total[n];
        }
        self.hyp_len += other.hyp_len;
        self.ref_len += other.ref_len;
    }

    /// The statistics of the sentences added since `earlier` (an earlier state of the same sums).
    pub fn minus(&self, earlier: &BleuStats) -> BleuStats {
        BleuStats {
            matched: std::array::from_fn(|n| self.matched[n].saturating_sub(earlier.matched[n])),
            total: std::array::from_fn(|n| self.total[n].saturating_sub(earlier.total[n])),
            hyp_len: self.hyp_len.saturating_sub(earlier.hyp_len),
            ref_len: self.ref_len.saturating_sub(earlier.ref_len),
        }
    }

    /// nltk's brevity penalty: 1 if the hypotheses are longer, 0 if empty, else exp(1 - r/h).
    pub fn brevity_penalty(&self) -> f64 {
        if self.hyp_len > self.ref_len {
            1.0
        } else if self.hyp_len == 0 {
            0.0
        } else {
            (1.0 - self.ref_len as f64 / self.hyp_len as f64).exp()
        }
    }

    /// Cumulative BLEU-`order` (uniform weights over orders 1..=order).
    pub fn bleu(&self, order: usize, smoothing: Smoothing) -> f64 {
        assert!((1..=MAX_ORDER).contains(&order), "BLEU order must be 1..=4");
        // nltk returns 0 when there is no unigram match at all, whatever the smoothing.
        if self.matched[0] == 0 {
            return 0.0;
        }
        let weight = 1.0 / order as f64;
        let mut zeros_seen = 0;
        let mut log_sum = 0.0;
        for n in 0..order {
            let (num, den) = (self.matched[n] as f64, self.total[n] as f64);
            let p = if self.matched[n] > 0 {
                num / den
            } else {
                match smoothing {
                    // nltk substitutes the smallest float and returns ~1e-78 or less: that is 0.
                    Smoothing::None => return 0.0,
                    Smoothing::Method1 => 0.1 / den,
                    Smoothing::Method3 => {
                        zeros_seen += 1;
                        1.0 / (2f64.powi(zeros_seen) * den)
                    }
                }
            };
            log_sum += weight * p.ln();
        }
        self.brevity_penalty() * log_sum.exp()
    }

    /// BLEU-1..4 at once.
    pub fn scores(&self, smoothing: Smoothing) -> [f64; MAX_ORDER] {
        std::array::from_fn(|i| self.bleu(i + 1, smoothing))
    }
}

/// Maps tokens to dense ids (from 1) so that n-grams become fixed-width integer keys.
#[derive(Default)]
struct Interner<'a> {
    ids: FxHashMap<&'a str, u32>,
}

impl<'a> Interner<'a> {
    fn intern_into(&mut self, tokens: &'a [impl AsRef<str>], out: &mut Vec<u32>) {
        out.clear();
        for t in tokens {
            let next = self.ids.len() as u32 + 1;
            out.push(*self.ids.entry(t.as_ref()).or_insert(next));
        }
    }
}

/// The distinct n-grams (orders 1..=4) of one hypothesis, in a small open-addressing table.
///
/// Keys pack token ids (never 0) into 32-bit slots, so n-grams of different orders never
/// collide. Reference n-grams are looked up here: no sorting, one probe per n-gram, and a
/// reference n-gram is only tried when its (n-1)-gram prefix was found.
#[derive(Default)]
struct HypGrams {
    /// (key, index into the per-n-gram arrays); `u32::MAX` marks an empty slot.
    table: Vec<(u128, u32)>,
    mask: usize,
    used: Vec<usize>,
    /// Per distinct n-gram: its order, hypothesis count, and largest count in one reference.
    order: Vec<u8>,
    count: Vec<u32>,
    max_ref: Vec<u32>,
    /// Per distinct n-gram: count in the reference being scanned.
    ref_count: Vec<u32>,
}

const EMPTY: u32 = u32::MAX;

fn slot_hash(key: u128) -> u64 {
    let folded = (key as u64) ^ ((key >> 64) as u64).rotate_left(29);
    folded.wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

impl HypGrams {
    fn reset(&mut self, hyp_len: usize) {
        let want = (hyp_len * MAX_ORDER * 2).next_power_of_two().max(16);
        if self.table.len() < want {
            self.table = vec![(0, EMPTY); want];
            self.used.clear();
        }
        for &i in &self.used {
            self.table[i].1 = EMPTY;
        }
        self.used.clear();
        self.mask = self.table.len() - 1;
        self.order.clear();
        self.count.clear();
        self.max_ref.clear();
    }

    fn probe(&self, key: u128) -> usize {
        let shift = 64 - self.mask.count_ones();
        let mut i = (slot_hash(key) >> shift) as usize & self.mask;
        loop {
            let (k, idx) = self.table[i];
            if idx == EMPTY || k == key {
                return i;
            }
            i = (i + 1) & self.mask;
        }
    }

    fn insert(&mut self, key: u128, order: usize) {
        let i = self.probe(key);
        let idx = self.table[i].1;
        if idx == EMPTY {
            self.table[i] = (key, self.order.len() as u32);
            self.used.push(i);
            self.order.push(order as u8);
            self.count.push(1);
            self.max_ref.push(0);
        } else {
            self.count[idx as usize] += 1;
        }
    }

    fn find(&self, key: u128) -> Option<usize> {
        let idx = self.table[self.probe(key)].1;
        (idx != EMPTY).then_some(idx as usize)
    }

    /// Counts one reference's n-grams that occur in the hypothesis and keeps the per-n-gram maximum.
    fn scan_reference(&mut self, reference: &[u32]) {
        self.ref_count.clear();
        self.ref_count.resize(self.order.len(), 0);
        for start in 0..reference.len() {
            let mut key = 0u128;
            for &id in &reference[start..reference.len().min(start + MAX_ORDER)] {
                key = (key << 32) | id as u128;
                match self.find(key) {
                    Some(d) => self.ref_count[d] += 1,
                    None => break,
                }
            }
        }
        for (m, &c) in self.max_ref.iter_mut().zip(&self.ref_count) {
            *m = (*m).max(c);
        }
    }
}

/// Reusable buffers for counting one sentence's n-grams without allocating.
#[derive(Default)]
struct Scratch {
    hyp: Vec<u32>,
    refs: Vec<Vec<u32>>,
    grams: HypGrams,
}

impl Scratch {
    /// Adds one sentence (already interned into `self.hyp` / `self.refs[..n_refs]`).
    fn add_sentence(&mut self, n_refs: usize, stats: &mut BleuStats) {
        let hyp_len = self.hyp.len();
        let g = &mut self.grams;
        g.reset(hyp_len);
        for start in 0..hyp_len {
            let mut key = 0u128;
            for (n, &id) in self.hyp[start..hyp_len.min(start + MAX_ORDER)]
                .iter()
                .enumerate()
            {
                key = (key << 32) | id as u128;
                g.insert(key, n + 1);
            }
        }
        for r in &self.refs[..n_refs] {
            g.scan_reference(r);
        }
        for ((&order, &count), &max_ref) in g.order.iter().zip(&g.count).zip(&g.max_ref) {
            stats.matched[order as usize - 1] += count.min(max_ref) as u64;
        }
        for n in 1..=MAX_ORDER {
            stats.total[n - 1] += ((hyp_len + 1).saturating_sub(n) as u64).max(1);
        }
        stats.hyp_len += hyp_len as u64;
        // Closest reference length, ties to the shorter one (nltk's closest_ref_length).
        let closest = self.refs[..n_refs]
            .iter()
            .map(|r| r.len())
            .min_by_key(|&r| (r.abs_diff(hyp_len), r))
            .unwrap_or(0);
        stats.ref_len += closest as u64;
    }
}

/// Accumulates corpus BLEU statistics sentence by sentence.
#[derive(Default)]
pub struct BleuAccumulator<'a> {
    interner: Interner<'a>,
    scratch: Scratch,
    stats: BleuStats,
}

impl<'a> BleuAccumulator<'a> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one hypothesis with its references (token lists). A sentence without references
    /// contributes its hypothesis length against a reference length of 0, as nltk cannot score it;
    /// callers should reject such input before it gets here.
    pub fn add<T: AsRef<str> + 'a, R: AsRef<[T]>>(
        &mut self,
        hypothesis: &'a [T],
        references: &'a [R],
    ) {
        let s = &mut self.scratch;
        self.interner.intern_into(hypothesis, &mut s.hyp);
        if s.refs.len() < references.len() {
            s.refs.resize_with(references.len(), Vec::new);
        }
        for (slot, r) in s.refs.iter_mut().zip(references) {
            self.interner.intern_into(r.as_ref(), slot);
        }
        s.add_sentence(references.len(), &mut self.stats);
    }

    pub fn stats(&self) -> BleuStats {
        self.stats
    }
}

/// Corpus BLEU statistics of token-list hypotheses against their references.
pub fn corpus_stats<T: AsRef<str>, R: AsRef<[T]>>(
    hypotheses: &[Vec<T>],
    references: &[Vec<R>],
) -> BleuStats {
    assert_eq!(
        hypotheses.len(),
        references.len(),
        "one reference set per hypothesis"
    );
    let mut acc = BleuAccumulator::new();
    for (h, r) in hypotheses.iter().zip(references) {
        acc.add(h, r);
    }
    acc.stats()
}

/// Cumulative corpus BLEU-1..4 (nltk `corpus_bleu`).
pub fn corpus_bleu<T: AsRef<str>, R: AsRef<[T]>>(
    hypotheses: &[Vec<T>],
    references: &[Vec<R>],
    smoothing: Smoothing,
) -> [f64; MAX_ORDER] {
    corpus_stats(hypotheses, references).scores(smoothing)
}

/// Sentence BLEU-1..4: corpus BLEU of a single pair, as nltk's `sentence_bleu`.
pub fn sentence_bleu<T: AsRef<str>, R: AsRef<[T]>>(
    hypothesis: &[T],
    references: &[R],
    smoothing: Smoothing,
) -> [f64; MAX_ORDER] {
    let mut acc = BleuAccumulator::new();
    acc.add(hypothesis, references);
    acc.stats().scores(smoothing)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::text::whitespace;

    fn toks(s: &str) -> Vec<String> {
        whitespace(s)
    }

    fn sent(refs: &[&str], hyp: &str, smoothing: Smoothing) -> [f64; 4] {
        let r: Vec<Vec<String>> = refs.iter().map(|r| toks(r)).collect();
        sentence_bleu(&toks(hyp), &r, smoothing)
    }

    fn close(a: f64, b: f64) {
        assert!((a - b).abs() <= 1e-12, "{a} != {b}");
    }

    fn all_close(got: [f64; 4], want: [f64; 4]) {
        for (g, w) in got.iter().zip(want) {
            close(*g, w);
        }
    }

    #[test]
    #[allow(clippy::approx_constant)] // nltk's output, digit for digit
    fn v1_one_reference() {
        let refs = ["the cat is on the mat"];
        let hyp = "the cat sat on the mat";
        all_close(
            sent(&refs, hyp, Smoothing::None),
            [0.8333333333333334, 0.7071067811865476, 0.5, 0.0],
        );
        close(sent(&refs, hyp, Smoothing::Method1)[3], 0.25406637407730737);
        close(sent(&refs, hyp, Smoothing::Method3)[3], 0.37991784282579627);
    }

    #[test]
    fn v2_clipping() {
        let refs = ["the cat is on the mat", "there is a cat on the mat"];
        let hyp = "the the the the the the the";
        close(sent(&refs, hyp, Smoothing::None)[0], 0.2857142857142857);
        close(
            sent(&refs, hyp, Smoothing::Method1)[3],
            0.039281465090051315,
        );
        close(sent(&refs, hyp, Smoothing::Method3)[3], 0.07809849842300641);
    }

    #[test]
    fn v3_closest_reference() {
        let refs = [
            "a man is riding a horse on the beach",
            "a person rides a horse",
        ];
        let hyp = "a man riding a horse";
        all_close(
            sent(&refs, hyp, Smoothing::None),
            [1.0, 0.8660254037844387, 0.6299605249474366, 0.0],
        );
        close(sent(&refs, hyp, Smoothing::Method3)[3], 0.5);
    }

    #[test]
    fn v4_corpus() {
        let hyps: Vec<Vec<String>> = [
            "a dog runs through the grass",
            "a man is riding a bike",
            "two children play on the beach",
        ]
        .iter()
        .map(|h| toks(h))
        .collect();
        let refs: Vec<Vec<Vec<String>>> = [
            [
                "a brown dog is running through the grass",
                "a dog runs across a field",
                "the dog is running on the grass",
            ],
            [
                "a man rides a bicycle down the street",
                "a person is riding a bike",
                "a man on a bike",
            ],
            [
                "two kids are playing in the sand",
                "children playing at the beach",
                "two young children play in the sand near the ocean",
            ],
        ]
        .iter()
        .map(|rs| rs.iter().map(|r| toks(r)).collect())
        .collect();
        let stats = corpus_stats(&hyps, &refs);
        assert_eq!(stats.matched, [17, 10, 4, 1]);
        assert_eq!(stats.total, [18, 15, 12, 9]);
        assert_eq!((stats.hyp_len, stats.ref_len), (18, 17));
        all_close(
            stats.scores(Smoothing::None),
            [
                0.9444444444444444,
                0.7934920476158722,
                0.5942756934710404,
                0.39077821812841235,
            ],
        );
    }

    #[test]
    fn v5_no_match_is_zero_for_every_smoothing() {
        for s in Smoothing::ALL {
            all_close(sent(&["the cat is on the mat"], "a dog runs", s), [0.0; 4]);
        }
    }

    #[test]
    fn v6_short_hypothesis_method3() {
        close(
            sent(&["a dog runs"], "a dog", Smoothing::Method3)[3],
            0.36064528799877893,
        );
    }

    #[test]
    fn empty_hypothesis_scores_zero() {
        all_close(sent(&["a dog runs"], "", Smoothing::Method1), [0.0; 4]);
    }

    #[test]
    fn merged_stats_equal_whole_corpus() {
        let h1 = toks("a dog runs through the grass");
        let h2 = toks("a cat sleeps");
        let r1 = vec![toks("a dog is running through the grass")];
        let r2 = vec![toks("a cat is sleeping"), toks("the cat sleeps")];
        let whole = corpus_stats(&[h1.clone(), h2.clone()], &[r1.clone(), r2.clone()]);
        let mut merged = corpus_stats(&[h1], &[r1]);
        merged.merge(&corpus_stats(&[h2], &[r2]));
        assert_eq!(whole, merged);
    }

    #[test]
    fn smoothing_parses_from_its_name() {
        for s in Smoothing::ALL {
            assert_eq!(s.name().parse::<Smoothing>(), Ok(s));
        }
        assert!("method2"
            .parse::<Smoothing>()
            .unwrap_err()
            .contains("method2"));
    }
}
