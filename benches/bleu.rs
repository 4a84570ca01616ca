//! W5: corpus BLEU of 100,000 hypothesis lines against 5 reference streams (one core).
//!
//! The corpus is generated from a seeded splitmix64 stream; `benches/bleu_nltk.py` generates the
//! identical corpus and times nltk's `corpus_bleu` on it (and prints the same scores).
//! Run: `cargo bench --bench bleu` and `python3 benches/bleu_nltk.py`.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use roundtrip::metrics::bleu::{corpus_stats, Smoothing};

const LINES: usize = 100_000;
const STREAMS: usize = 5;
const SEED: u64 = 5;

struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A word index skewed towards small values, so that common words repeat as in captions.
    fn word(&mut self) -> String {
        let (a, b) = (self.next() % 1000, self.next() % 1000);
        format!("w{}", a * b / 1000)
    }

    /// `base` with each token replaced by a random word with probability 0.3.
    fn mutate(&mut self, base: &[String]) -> Vec<String> {
        base.iter()
            .map(|t| {
                if self.next() % 10 < 3 {
                    self.word()
                } else {
                    t.clone()
                }
            })
            .collect()
    }
}

/// Hypotheses and references; identical to `bleu_nltk.py`'s `corpus()`.
fn corpus() -> (Vec<Vec<String>>, Vec<Vec<Vec<String>>>) {
    let mut rng = SplitMix64(SEED);
    let mut hyps = Vec::with_capacity(LINES);
    let mut refs = Vec::with_capacity(LINES);
    for _ in 0..LINES {
        let len = 8 + (rng.next() % 9) as usize;
        let base: Vec<String> = (0..len).map(|_| rng.word()).collect();
        hyps.push(rng.mutate(&base));
        refs.push((0..STREAMS).map(|_| rng.mutate(&base)).collect());
    }
    (hyps, refs)
}

fn bench(c: &mut Criterion) {
    // As `roundtrip` itself runs (src/main.rs).
    roundtrip::tune_allocator();
    let (hyps, refs) = corpus();
    let stats = corpus_stats(&hyps, &refs);
    eprintln!("W5 corpus BLEU-1..4: {:?}", stats.scores(Smoothing::None));
    let mut g = c.benchmark_group("w5");
    g.sample_size(10);
    g.bench_function("corpus_bleu_100k_x5", |b| {
        b.iter(|| {
            black_box(corpus_stats(black_box(&hyps), black_box(&refs))).scores(Smoothing::None)
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
