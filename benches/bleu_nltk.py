#!/usr/bin/env python3
"""nltk's corpus_bleu on W5, the same corpus as benches/bleu.rs (seeded splitmix64).

Usage: pip install nltk && python3 benches/bleu_nltk.py   (prints seconds and BLEU-1..4)
"""
import time

from nltk.translate.bleu_score import corpus_bleu

LINES, STREAMS, SEED = 100_000, 5, 5
MASK = (1 << 64) - 1


class SplitMix64:
    def __init__(self, seed):
        self.s = seed

    def next(self):
        self.s = (self.s + 0x9E3779B97F4A7C15) & MASK
        z = self.s
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
        return z ^ (z >> 31)

    def word(self):
        a, b = self.next() % 1000, self.next() % 1000
        return f"w{a * b // 1000}"

    def mutate(self, base):
        return [self.word() if self.next() % 10 < 3 else t for t in base]


def corpus():
    rng = SplitMix64(SEED)
    hyps, refs = [], []
    for _ in range(LINES):
        n = 8 + rng.next() % 9
        base = [rng.word() for _ in range(n)]
        hyps.append(rng.mutate(base))
        refs.append([rng.mutate(base) for _ in range(STREAMS)])
    return hyps, refs


def main():
    hyps, refs = corpus()
    weights = [(1.0,), (0.5, 0.5), (1 / 3, 1 / 3, 1 / 3), (0.25, 0.25, 0.25, 0.25)]
    t0 = time.perf_counter()
    scores = corpus_bleu(refs, hyps, weights=weights)
    dt = time.perf_counter() - t0
    print(f"nltk corpus_bleu W5 ({LINES} lines x {STREAMS} refs): {dt:.3f} s; BLEU-1..4 {scores}")


if __name__ == "__main__":
    main()
