//! roundtrip's BLEU against nltk's on random corpora (fixtures from tests/fixtures/make_bleu_fixtures.py).

use roundtrip::metrics::bleu::{corpus_bleu, sentence_bleu, Smoothing};
use roundtrip::text::whitespace;
use serde::Deserialize;
use std::collections::HashMap;

#[derive(Deserialize)]
struct Case {
    hyps: Vec<String>,
    refs: Vec<Vec<String>>,
    corpus: HashMap<String, [f64; 4]>,
    sentence: Vec<HashMap<String, [f64; 4]>>,
}

#[derive(Deserialize)]
struct Fixture {
    nltk: String,
    cases: Vec<Case>,
}

fn check(got: [f64; 4], want: [f64; 4], what: &str) {
    for (n, (g, w)) in got.iter().zip(want).enumerate() {
        // nltk's unsmoothed underflow (~1e-78 or less) is exactly 0 here.
        let want = if w < 1e-70 { 0.0 } else { w };
        assert!(
            (g - want).abs() <= 1e-12,
            "{what} BLEU-{}: roundtrip {g} vs nltk {w}",
            n + 1
        );
    }
}

#[test]
fn agrees_with_nltk_on_random_corpora() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/bleu_nltk.json");
    let fx: Fixture = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    assert!(
        fx.cases.len() >= 50,
        "fixture from nltk {} is too small",
        fx.nltk
    );
    let mut nonzero_b4 = 0;
    for (i, case) in fx.cases.iter().enumerate() {
        let hyps: Vec<Vec<String>> = case.hyps.iter().map(|h| whitespace(h)).collect();
        let refs: Vec<Vec<Vec<String>>> = case
            .refs
            .iter()
            .map(|rs| rs.iter().map(|r| whitespace(r)).collect())
            .collect();
        for s in Smoothing::ALL {
            let want = case.corpus[s.name()];
            check(
                corpus_bleu(&hyps, &refs, s),
                want,
                &format!("case {i} corpus {s}"),
            );
            if s == Smoothing::None && want[3] > 1e-70 {
                nonzero_b4 += 1;
            }
            for (j, (h, r)) in hyps.iter().zip(&refs).enumerate() {
                check(
                    sentence_bleu(h, r, s),
                    case.sentence[j][s.name()],
                    &format!("case {i} sentence {j} {s}"),
                );
            }
        }
    }
    // The fixture must exercise real 4-gram matches, not only zeros.
    assert!(
        nonzero_b4 >= 5,
        "only {nonzero_b4} cases with a non-zero unsmoothed BLEU-4"
    );
}
