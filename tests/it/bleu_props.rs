//! Property tests of corpus BLEU on random corpora.

use proptest::prelude::*;
use roundtrip::metrics::bleu::{corpus_bleu, sentence_bleu, Smoothing};

const WORDS: &[&str] = &["a", "the", "dog", "cat", "runs", "on", "grass", "red"];

fn sentence(min: usize) -> impl Strategy<Value = Vec<String>> {
    prop::collection::vec(prop::sample::select(WORDS).prop_map(String::from), min..10)
}

fn corpus() -> impl Strategy<Value = (Vec<Vec<String>>, Vec<Vec<Vec<String>>>)> {
    prop::collection::vec(
        (sentence(0), prop::collection::vec(sentence(1), 1..4)),
        1..8,
    )
    .prop_map(|pairs| pairs.into_iter().unzip())
}

fn smoothing() -> impl Strategy<Value = Smoothing> {
    prop::sample::select(Smoothing::ALL.to_vec())
}

proptest! {
    #[test]
    fn scores_lie_in_unit_interval((hyps, refs) in corpus(), s in smoothing()) {
        for b in corpus_bleu(&hyps, &refs, s) {
            prop_assert!((0.0..=1.0).contains(&b), "{b}");
        }
    }

    #[test]
    fn a_hypothesis_equal_to_a_reference_scores_one(r in sentence(4), others in prop::collection::vec(sentence(1), 0..3), s in smoothing()) {
        let mut refs = others;
        refs.push(r.clone());
        for b in sentence_bleu(&r, &refs, s) {
            prop_assert!((b - 1.0).abs() < 1e-12, "{b}");
        }
    }

    #[test]
    fn permuting_sentences_keeps_corpus_bleu((hyps, refs) in corpus(), seed in any::<u64>(), s in smoothing()) {
        let mut order: Vec<usize> = (0..hyps.len()).collect();
        // A seeded Fisher-Yates shuffle driven by proptest's value.
        let mut x = seed | 1;
        for i in (1..order.len()).rev() {
            x ^= x << 13; x ^= x >> 7; x ^= x << 17;
            order.swap(i, (x % (i as u64 + 1)) as usize);
        }
        let h2: Vec<_> = order.iter().map(|&i| hyps[i].clone()).collect();
        let r2: Vec<_> = order.iter().map(|&i| refs[i].clone()).collect();
        prop_assert_eq!(corpus_bleu(&hyps, &refs, s), corpus_bleu(&h2, &r2, s));
    }
}
