//! Caption metrics of the round trip: BLEU and ROUGE-L of a caption against its phrase (both
//! normalised as the captioners' vocabulary is), corpus BLEU of captions against reference sets,
//! and caption diversity. `run`'s records and report and `eval` use these.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use super::bleu::{corpus_bleu, sentence_bleu, Smoothing};
use super::rouge::rouge_l;
use crate::text::normalize;

/// BLEU-1..4 unsmoothed and with method1 smoothing (nltk's `SmoothingFunction().method1`).
///
/// Written as `bleu1`..`bleu4` (unsmoothed) and `bleu1_method1`..`bleu4_method1`: the key names
/// of `bleu --json`, `eval --json` and report.csv, so one figure has one name everywhere. Reads
/// also the `{"unsmoothed": [..], "method1": [..]}` form of report schema 4 and records of run
/// schema 2.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(into = "BleuKeys", from = "BleuForms")]
pub struct BleuPair {
    pub unsmoothed: [f64; 4],
    pub method1: [f64; 4],
}

#[derive(Serialize, Deserialize)]
struct BleuKeys {
    bleu1: f64,
    bleu2: f64,
    bleu3: f64,
    bleu4: f64,
    bleu1_method1: f64,
    bleu2_method1: f64,
    bleu3_method1: f64,
    bleu4_method1: f64,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum BleuForms {
    Keys(BleuKeys),
    Arrays {
        unsmoothed: [f64; 4],
        method1: [f64; 4],
    },
}

impl From<BleuPair> for BleuKeys {
    fn from(b: BleuPair) -> Self {
        let ([bleu1, bleu2, bleu3, bleu4], [m1, m2, m3, m4]) = (b.unsmoothed, b.method1);
        Self {
            bleu1,
            bleu2,
            bleu3,
            bleu4,
            bleu1_method1: m1,
            bleu2_method1: m2,
            bleu3_method1: m3,
            bleu4_method1: m4,
        }
    }
}

impl From<BleuForms> for BleuPair {
    fn from(f: BleuForms) -> Self {
        match f {
            BleuForms::Keys(k) => Self {
                unsmoothed: [k.bleu1, k.bleu2, k.bleu3, k.bleu4],
                method1: [
                    k.bleu1_method1,
                    k.bleu2_method1,
                    k.bleu3_method1,
                    k.bleu4_method1,
                ],
            },
            BleuForms::Arrays {
                unsmoothed,
                method1,
            } => Self {
                unsmoothed,
                method1,
            },
        }
    }
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

/// ROUGE-L (pycocoevalcap's) of a caption, normalised as the captioners' vocabulary is, against
/// the phrase's normalised tokens (a record's `reference_tokens`).
pub fn caption_rouge_l(reference_tokens: &[String], caption: &str) -> f64 {
    rouge_l(&normalize(caption), std::slice::from_ref(&reference_tokens))
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
    fn bleu_keys_are_the_flat_names_and_the_old_form_still_reads() {
        let b = BleuPair {
            unsmoothed: [0.5, 0.25, 0.125, 0.0625],
            method1: [0.5, 0.3, 0.2, 0.1],
        };
        let v = serde_json::to_value(&b).unwrap();
        assert_eq!(v["bleu1"], 0.5);
        assert_eq!(v["bleu4"], 0.0625);
        assert_eq!(v["bleu2_method1"], 0.3);
        assert_eq!(v.as_object().unwrap().len(), 8);
        assert_eq!(serde_json::from_value::<BleuPair>(v).unwrap(), b);
        let old = serde_json::json!({"unsmoothed": b.unsmoothed, "method1": b.method1});
        assert_eq!(serde_json::from_value::<BleuPair>(old).unwrap(), b);
    }

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
