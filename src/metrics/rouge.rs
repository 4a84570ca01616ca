//! ROUGE-L: Lin 2004, "ROUGE: A Package for Automatic Evaluation of Summaries", as pycocoevalcap
//! 1.2's `pycocoevalcap.rouge.Rouge` computes it for captions.
//!
//! For each reference, the longest common subsequence (LCS) of hypothesis and reference gives a
//! precision `lcs / hyp_len` and a recall `lcs / ref_len`. Over the references, pycocoevalcap
//! takes the largest precision and, separately, the largest recall (they may come from two
//! different references), and scores `(1 + b^2) P R / (R + b^2 P)` with b = 1.2, or 0 where either
//! is 0. The corpus score is the mean over sentences. As pycocoevalcap splits on single spaces,
//! an empty sentence is one empty token: an empty hypothesis against an empty reference scores 1.
//! nltk has no ROUGE.

/// The weight of recall against precision (pycocoevalcap's `beta`).
pub const BETA: f64 = 1.2;

/// Length of the longest common subsequence of two token lists.
fn lcs<T: AsRef<str>, U: AsRef<str>>(a: &[T], b: &[U]) -> usize {
    // One row of the dynamic programme, over the shorter list.
    let mut row = vec![0usize; b.len() + 1];
    for x in a {
        let mut diagonal = 0;
        for (j, y) in b.iter().enumerate() {
            let up = row[j + 1];
            row[j + 1] = if x.as_ref() == y.as_ref() {
                diagonal + 1
            } else {
                up.max(row[j])
            };
            diagonal = up;
        }
    }
    row[b.len()]
}

/// LCS length and the two lengths as pycocoevalcap sees them (`split(" ")`: an empty sentence
/// is one empty token).
fn lcs_as_split<T: AsRef<str>, U: AsRef<str>>(hyp: &[T], reference: &[U]) -> (usize, usize, usize) {
    match (hyp.is_empty(), reference.is_empty()) {
        (true, true) => (1, 1, 1),
        (true, false) => (0, 1, reference.len()),
        (false, true) => (0, hyp.len(), 1),
        (false, false) => {
            let l = if hyp.len() < reference.len() {
                lcs(reference, hyp)
            } else {
                lcs(hyp, reference)
            };
            (l, hyp.len(), reference.len())
        }
    }
}

/// ROUGE-L of one hypothesis against its references (at least one).
pub fn rouge_l<T: AsRef<str>, R: AsRef<[T]>>(hypothesis: &[T], references: &[R]) -> f64 {
    assert!(!references.is_empty(), "ROUGE-L needs a reference");
    let (mut prec_max, mut rec_max) = (0.0f64, 0.0f64);
    for r in references {
        let (l, h, n) = lcs_as_split(hypothesis, r.as_ref());
        prec_max = prec_max.max(l as f64 / h as f64);
        rec_max = rec_max.max(l as f64 / n as f64);
    }
    if prec_max != 0.0 && rec_max != 0.0 {
        let b2 = BETA * BETA;
        ((1.0 + b2) * prec_max * rec_max) / (rec_max + b2 * prec_max)
    } else {
        0.0
    }
}

/// ROUGE-L of a corpus (the mean over sentences) and of each sentence.
pub fn corpus_rouge_l<T: AsRef<str>, R: AsRef<[T]>>(
    hypotheses: &[Vec<T>],
    references: &[Vec<R>],
) -> (f64, Vec<f64>) {
    assert_eq!(
        hypotheses.len(),
        references.len(),
        "one reference set per hypothesis"
    );
    let sentences: Vec<f64> = hypotheses
        .iter()
        .zip(references)
        .map(|(h, r)| rouge_l(h, r))
        .collect();
    let corpus = if sentences.is_empty() {
        0.0
    } else {
        sentences.iter().sum::<f64>() / sentences.len() as f64
    };
    (corpus, sentences)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::text::whitespace;

    fn score(hyp: &str, refs: &[&str]) -> f64 {
        let r: Vec<Vec<String>> = refs.iter().map(|r| whitespace(r)).collect();
        rouge_l(&whitespace(hyp), &r)
    }

    fn close(a: f64, b: f64) {
        assert!((a - b).abs() <= 1e-12, "{a} != {b}");
    }

    #[test]
    fn lcs_is_the_longest_common_subsequence() {
        let l = |a: &str, b: &str| lcs(&whitespace(a), &whitespace(b));
        assert_eq!(l("a b c d e", "a c e"), 3);
        assert_eq!(l("a b c", "c b a"), 1);
        assert_eq!(l("a b a b", "b a b a"), 3);
        assert_eq!(l("x", "y"), 0);
    }

    #[test]
    fn f_measure_with_beta_1_2() {
        // LCS "the cat on mat" = 4 of 6 hypothesis and 5 reference tokens.
        let p = 4.0 / 6.0;
        let r = 4.0 / 5.0;
        let want = (1.0 + 1.44) * p * r / (r + 1.44 * p);
        close(score("the cat sat on the mat", &["the cat on a mat"]), want);
        close(score("a b c", &["a b c"]), 1.0);
        close(score("a b c", &["x y"]), 0.0);
    }

    #[test]
    fn precision_and_recall_are_maximised_separately() {
        // Reference 1 gives P = 1 (R = 1/2), reference 2 gives R = 1 (P = 1/2): F of (1, 1) = 1.
        close(score("a b", &["a b c d", "a"]), 1.0);
    }

    #[test]
    fn empty_sentences_are_one_empty_token() {
        close(score("", &[""]), 1.0);
        close(score("", &["a b"]), 0.0);
        close(score("a", &[""]), 0.0);
    }
}
