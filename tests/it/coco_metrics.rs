//! roundtrip's CIDEr-D, ROUGE-L and COCO BLEU against pycocoevalcap 1.2's scorers on random
//! corpora (fixtures from tests/fixtures/make_coco_metrics_fixtures.py): every corpus and
//! per-sentence value to 1e-9.

use roundtrip::metrics::scores::{score, Metric};
use roundtrip::text::whitespace;
use serde::Deserialize;

#[derive(Deserialize)]
struct Values {
    coco_bleu: [f64; 4],
    cider_d: f64,
    rouge_l: f64,
}

#[derive(Deserialize)]
struct Case {
    hyps: Vec<String>,
    refs: Vec<Vec<String>>,
    corpus: Values,
    sentences: Vec<Values>,
}

#[derive(Deserialize)]
struct Fixture {
    pycocoevalcap: String,
    cases: Vec<Case>,
}

const TOLERANCE: f64 = 1e-9;

/// The largest difference seen per metric, and the number of values compared.
#[derive(Default)]
struct Agreement {
    bleu: f64,
    cider: f64,
    rouge: f64,
    values: usize,
}

impl Agreement {
    fn check(
        &mut self,
        got: &roundtrip::metrics::scores::CaptionScores,
        want: &Values,
        what: &str,
    ) {
        let close = |g: f64, w: f64, name: &str| {
            assert!(
                (g - w).abs() <= TOLERANCE,
                "{what} {name}: roundtrip {g} vs pycocoevalcap {w}"
            );
            (g - w).abs()
        };
        for (n, (g, w)) in got
            .coco_bleu
            .unwrap()
            .iter()
            .zip(want.coco_bleu)
            .enumerate()
        {
            let d = close(*g, w, &format!("BLEU-{}", n + 1));
            self.bleu = self.bleu.max(d);
        }
        self.cider = self
            .cider
            .max(close(got.cider_d.unwrap(), want.cider_d, "CIDEr-D"));
        self.rouge = self
            .rouge
            .max(close(got.rouge_l.unwrap(), want.rouge_l, "ROUGE-L"));
        self.values += 6;
    }
}

#[test]
fn agrees_with_pycocoevalcap_on_random_corpora() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/coco_metrics.json");
    let fx: Fixture = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    assert!(
        fx.cases.len() >= 40,
        "fixture from pycocoevalcap {} is too small",
        fx.pycocoevalcap
    );
    let mut agreement = Agreement::default();
    let (mut sentences, mut nonzero_cider, mut one_token, mut empty) = (0, 0, 0, 0);
    for (i, case) in fx.cases.iter().enumerate() {
        let hyps: Vec<Vec<String>> = case.hyps.iter().map(|h| whitespace(h)).collect();
        let refs: Vec<Vec<Vec<String>>> = case
            .refs
            .iter()
            .map(|rs| rs.iter().map(|r| whitespace(r)).collect())
            .collect();
        let got = score(
            &hyps,
            &refs,
            &[Metric::CocoBleu, Metric::CiderD, Metric::RougeL],
        );
        agreement.check(&got.corpus, &case.corpus, &format!("case {i} corpus"));
        assert_eq!(got.sentences.len(), case.sentences.len());
        for (j, (g, w)) in got.sentences.iter().zip(&case.sentences).enumerate() {
            agreement.check(g, w, &format!("case {i} sentence {j}"));
        }
        sentences += hyps.len();
        nonzero_cider += case.sentences.iter().filter(|s| s.cider_d > 0.1).count();
        one_token += hyps.iter().filter(|h| h.len() == 1).count();
        empty += hyps.iter().filter(|h| h.is_empty()).count();
    }
    // The fixture must exercise real matches and the edge cases, not only zeros.
    assert!(
        nonzero_cider >= 50,
        "{nonzero_cider} sentences with CIDEr-D > 0.1"
    );
    assert!(
        one_token >= 5 && empty >= 1,
        "{one_token} one-token, {empty} empty"
    );
    eprintln!(
        "pycocoevalcap {}: {} cases, {sentences} sentences, {} values; max |diff| BLEU {:.1e}, \
         CIDEr-D {:.1e}, ROUGE-L {:.1e}",
        fx.pycocoevalcap,
        fx.cases.len(),
        agreement.values,
        agreement.bleu,
        agreement.cider,
        agreement.rouge
    );
}
