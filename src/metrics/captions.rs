//! Caption metrics of the round trip: BLEU of a caption against its phrase (both normalised as
//! the captioners' vocabulary is), corpus BLEU of captions against reference sets, and caption
//! diversity. `run`'s records and report and `eval` use these.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use super::bleu::{corpus_bleu, sentence_bleu, Smoothing};
use crate::text::normalize;

/// BLEU-1..4 unsmoothed and with method1 smoothing (nltk's `SmoothingFunction().method1`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BleuPair {
    pub unsmoothed: [f64; 4],
    pub method1: [f64; 4],
}

/// Sentence BLEU of a caption against the phrase, both normalised as the captioners'
/// vocabulary is ([`normalize`]).
pub fn caption_bleu(phrase: &str, caption: &str) -> BleuPair {
    let refs = [normalize(phrase)];
    let hyp = normalize(caption);
    BleuPair {
        unsmoothed: sentence_bleu(&hyp, &refs, Smoothing::None),
        method1: sentence_bleu(&hyp, &refs, Smoothing::Method1),
    }
}

/// Corpus BLEU of tokenised hypotheses against their reference sets, unsmoothed and method1.
pub fn corpus_bleu_pair(hyps: &[Vec<String>], refs: &[Vec<Vec<String>>]) -> BleuPair {
    BleuPair {
        unsmoothed: corpus_bleu(hyps, refs, Smoothing::None),
        method1: corpus_bleu(hyps, refs, Smoothing::Method1),
    }
}

/// Caption diversity: (distinct captions, the most common caption, its count), ties to the
/// alphabetically first; what a captioner that says one thing for every image scores low on.
pub fn diversity(captions: &[String]) -> (usize, String, usize) {
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for c in captions {
        *counts.entry(c.as_str()).or_default() += 1;
    }
    let (top, n) = counts
        .iter()
        .max_by(|a, b| a.1.cmp(b.1).then_with(|| b.0.cmp(a.0)))
        .map(|(c, n)| (c.to_string(), *n))
        .unwrap_or_default();
    (counts.len(), top, n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bleu_normalises_like_the_vocabulary() {
        let b = caption_bleu("A cat, eating a big mouse!", "cat eating big mouse");
        assert_eq!(b.unsmoothed, [1.0; 4]);
        let b = caption_bleu("a cat eating a mouse", "dog running");
        assert_eq!(b.unsmoothed, [0.0; 4]);
        assert!(b.method1.iter().all(|x| (0.0..0.1).contains(x)));
    }

    #[test]
    fn diversity_counts_and_breaks_ties_alphabetically() {
        let caps: Vec<String> = ["b", "a", "b", "a", "c"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(diversity(&caps), (3, "a".to_owned(), 2));
        assert_eq!(diversity(&[]), (0, String::new(), 0));
    }
}
