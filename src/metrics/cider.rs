//! CIDEr-D: Vedantam, Zitnick and Parikh 2015, "CIDEr: Consensus-based Image Description
//! Evaluation", as pycocoevalcap 1.2's `pycocoevalcap.cider.Cider` computes it (that class is
//! CIDEr-D, the variant of the COCO caption server), operation for operation.
//!
//! Per image, the hypothesis and each reference become TF-IDF vectors of their n-grams, n = 1..4:
//! the weight of an n-gram is its count times `ln(N) - ln(max(1, df))`, where N is the number of
//! images of the evaluated corpus and df the number of images among whose references the n-gram
//! occurs. So the document frequencies come from the corpus being scored: an image's score
//! depends on the other images', and a corpus of one image scores 0. For each order, the
//! similarity to a reference is the sum over the hypothesis' n-grams of
//! `min(w_hyp, w_ref) * w_ref` (the clipping of CIDEr-D) over the product of the two vectors'
//! norms, times a Gaussian penalty `e^(-delta^2 / (2 * 6^2))` on the length difference. The
//! image's score is the mean over the four orders, averaged over its references, times 10; the
//! corpus score is the mean over images.
//!
//! As in pycocoevalcap, the "length" of the penalty is the number of bigrams of a sentence
//! (`max(0, tokens - 1)`), so a one-token and an empty sentence have the same length. There is no
//! stemming and no tokenisation here: the token lists are scored as given (pycocoevalcap's
//! `PTBTokenizer` is not reproduced). nltk has no CIDEr.

use rustc_hash::FxHashMap;

/// Highest n-gram order.
pub const ORDERS: usize = 4;
/// Standard deviation of the Gaussian length penalty.
pub const SIGMA: f64 = 6.0;

/// CIDEr-D of a corpus and of each of its images (with the corpus' document frequencies).
#[derive(Debug, Clone, PartialEq)]
pub struct CiderScores {
    pub corpus: f64,
    pub sentences: Vec<f64>,
}

/// One sentence's distinct n-grams in order of first occurrence (orders 1..4 in turn, as
/// pycocoevalcap's `precook` inserts them), with their counts.
struct Grams {
    keys: Vec<u128>,
    order: Vec<u8>,
    count: Vec<u32>,
    /// Bigrams (pycocoevalcap's length).
    length: usize,
}

/// Token ids from 1, packed four to a key, so n-grams of different orders never share a key.
#[derive(Default)]
struct Interner<'a> {
    ids: FxHashMap<&'a str, u32>,
}

impl<'a> Interner<'a> {
    fn ids_into(&mut self, tokens: &'a [impl AsRef<str>], out: &mut Vec<u32>) {
        out.clear();
        for t in tokens {
            let next = self.ids.len() as u32 + 1;
            out.push(*self.ids.entry(t.as_ref()).or_insert(next));
        }
    }
}

fn grams(ids: &[u32], index: &mut FxHashMap<u128, usize>) -> Grams {
    index.clear();
    let mut g = Grams {
        keys: Vec::new(),
        order: Vec::new(),
        count: Vec::new(),
        length: ids.len().saturating_sub(1),
    };
    for k in 1..=ORDERS {
        for w in ids.windows(k) {
            let key = w.iter().fold(0u128, |key, &id| (key << 32) | id as u128);
            match index.get(&key) {
                Some(&i) => g.count[i] += 1,
                None => {
                    index.insert(key, g.keys.len());
                    g.keys.push(key);
                    g.order.push(k as u8);
                    g.count.push(1);
                }
            }
        }
    }
    g
}

/// A sentence's TF-IDF weights (aligned with its [`Grams`]) and the norm per order.
struct Weighted {
    weight: Vec<f64>,
    norm: [f64; ORDERS],
}

fn weigh(g: &Grams, df: &FxHashMap<u128, (u32, u32)>, log_images: f64) -> Weighted {
    let mut norm = [0.0; ORDERS];
    let weight = g
        .keys
        .iter()
        .zip(&g.order)
        .zip(&g.count)
        .map(|((key, &order), &count)| {
            let d = df.get(key).map_or(0, |&(count, _)| count).max(1) as f64;
            let w = count as f64 * (log_images - d.ln());
            norm[order as usize - 1] += w * w;
            w
        })
        .collect();
    Weighted {
        weight,
        norm: norm.map(f64::sqrt),
    }
}

/// CIDEr-D of token-list hypotheses against their references (each image at least one), with
/// document frequencies over these references.
pub fn cider_d<T: AsRef<str>, R: AsRef<[T]>>(
    hypotheses: &[Vec<T>],
    references: &[Vec<R>],
) -> CiderScores {
    assert_eq!(
        hypotheses.len(),
        references.len(),
        "one reference set per hypothesis"
    );
    // Two passes over the references, so that no sentence's n-grams are kept: the document
    // frequencies (the images among whose references an n-gram occurs), then the scores.
    let mut interner = Interner::default();
    let mut index = FxHashMap::default();
    let mut ids = Vec::new();
    // Per n-gram: (document frequency, the last image counted + 1).
    let mut df: FxHashMap<u128, (u32, u32)> = FxHashMap::default();
    for (i, refs) in references.iter().enumerate() {
        let image = i as u32 + 1;
        for r in refs {
            interner.ids_into(r.as_ref(), &mut ids);
            for key in grams(&ids, &mut index).keys {
                let (count, last) = df.entry(key).or_default();
                if *last != image {
                    *count += 1;
                    *last = image;
                }
            }
        }
    }
    let log_images = (hypotheses.len() as f64).ln();
    let penalty_denominator = 2.0 * SIGMA * SIGMA;
    let mut ref_weight: FxHashMap<u128, f64> = FxHashMap::default();
    let sentences: Vec<f64> = hypotheses
        .iter()
        .zip(references)
        .map(|(h, refs)| {
            interner.ids_into(h, &mut ids);
            let hg = grams(&ids, &mut index);
            let hw = weigh(&hg, &df, log_images);
            let mut score = [0.0f64; ORDERS];
            for r in refs {
                interner.ids_into(r.as_ref(), &mut ids);
                let rg = grams(&ids, &mut index);
                let rw = weigh(&rg, &df, log_images);
                ref_weight.clear();
                ref_weight.extend(rg.keys.iter().copied().zip(rw.weight.iter().copied()));
                let delta = hg.length as f64 - rg.length as f64;
                let penalty = std::f64::consts::E.powf(-(delta * delta) / penalty_denominator);
                let mut val = [0.0f64; ORDERS];
                for ((key, &order), &w) in hg.keys.iter().zip(&hg.order).zip(&hw.weight) {
                    let r = ref_weight.get(key).copied().unwrap_or(0.0);
                    val[order as usize - 1] += w.min(r) * r;
                }
                for n in 0..ORDERS {
                    if hw.norm[n] != 0.0 && rw.norm[n] != 0.0 {
                        val[n] /= hw.norm[n] * rw.norm[n];
                    }
                    score[n] += val[n] * penalty;
                }
            }
            // numpy's mean of the four orders, then over the references, times 10.
            let mean = score.iter().sum::<f64>() / ORDERS as f64;
            mean / refs.len() as f64 * 10.0
        })
        .collect();
    let corpus = if sentences.is_empty() {
        0.0
    } else {
        sentences.iter().sum::<f64>() / sentences.len() as f64
    };
    CiderScores { corpus, sentences }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::text::whitespace;

    fn toks(s: &str) -> Vec<String> {
        whitespace(s)
    }

    fn corpus(pairs: &[(&str, &[&str])]) -> CiderScores {
        let hyps: Vec<Vec<String>> = pairs.iter().map(|(h, _)| toks(h)).collect();
        let refs: Vec<Vec<Vec<String>>> = pairs
            .iter()
            .map(|(_, rs)| rs.iter().map(|r| toks(r)).collect())
            .collect();
        cider_d(&hyps, &refs)
    }

    fn close(a: f64, b: f64) {
        assert!((a - b).abs() <= 1e-12, "{a} != {b}");
    }

    #[test]
    fn a_hypothesis_equal_to_its_only_reference_scores_ten() {
        // Two images with disjoint words: every n-gram has df 1, weight ln 2, cosine 1.
        let s = corpus(&[("a b c d", &["a b c d"]), ("e f g h", &["e f g h"])]);
        close(s.sentences[0], 10.0);
        close(s.sentences[1], 10.0);
        close(s.corpus, 10.0);
    }

    #[test]
    fn a_single_image_corpus_scores_zero() {
        // ln(1) - ln(1) = 0: every weight vanishes.
        let s = corpus(&[("a b c", &["a b c"])]);
        assert_eq!(s.sentences, [0.0]);
    }

    #[test]
    fn length_penalty_and_clipping_by_hand() {
        // Image 1: "a b" against "a b c"; image 2 shares no word. N = 2, each n-gram's df is 1,
        // so every weight is ln 2 =: w. Unigrams: hyp (a, b), ref (a, b, c): 2w^2 / (w sqrt2 *
        // w sqrt3) = 2/sqrt6. Bigrams: (a b) vs (a b, b c): w^2 / (w * w sqrt2) = 1/sqrt2.
        // Orders 3, 4: 0. Lengths 1 and 2 bigrams: delta -1, penalty e^(-1/72).
        let s = corpus(&[("a b", &["a b c"]), ("x y", &["z"])]);
        let want = (2.0 / 6f64.sqrt() + 1.0 / 2f64.sqrt()) / 4.0 * (-1.0f64 / 72.0).exp() * 10.0;
        close(s.sentences[0], want);
        // Clipping: "a a" against "a": the hypothesis weight 2w is clipped at w. Unigram sim
        // = w * w / (2w * w) = 0.5; bigram (a a) not in the reference; lengths 1 and 0.
        let s = corpus(&[("a a", &["a"]), ("x", &["z"])]);
        close(s.sentences[0], 0.5 / 4.0 * (-1.0f64 / 72.0).exp() * 10.0);
    }

    #[test]
    fn references_are_averaged() {
        // "a b" against itself (1 per order 1, 2) and against an unrelated reference (0).
        let s = corpus(&[("a b", &["a b", "q r"]), ("x y", &["z w"])]);
        let one = corpus(&[("a b", &["a b"]), ("x y", &["z w"])]);
        // The second reference changes nothing in df of a, b: half the single-reference score.
        close(s.sentences[0], one.sentences[0] / 2.0);
    }
}
