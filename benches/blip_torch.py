#!/usr/bin/env python3
"""transformers baseline for `cargo bench --bench blip`: BLIP captioning at BLIP-base geometry
(ViT-B/16 at 384 px, the BERT-base decoder; the values of Salesforce/blip-image-captioning-base's
config.json), random weights (nothing is downloaded), CPU.

    BlipForConditionalGeneration.generate(pixel_values, max_length=20, num_beams=1)

on a fixed batch of pixels (the processor's output; preprocessing is not timed, as in the Rust
bench), greedy, a fixed length of 20 ids (checked: the random model never picks [SEP]). Prints the
median seconds per batch over REPS timed runs after one warm-up run, and images/s.

Run (from the repository root, on a quiet machine, in the same session as the Rust bench, with the
same thread count):

    pip install torch transformers      # made with torch 2.15.0, transformers 5.24.0
    python3 benches/blip_torch.py [--threads 1] [--batch 8] [--reps 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import transformers
from transformers import BlipConfig, BlipForConditionalGeneration

MAX_LENGTH = 20


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--reps", type=int, default=5)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    cfg = BlipConfig(
        text_config=dict(
            vocab_size=30524, hidden_size=768, intermediate_size=3072, num_attention_heads=12,
            num_hidden_layers=12, max_position_embeddings=512, bos_token_id=30522,
            sep_token_id=102, pad_token_id=0,
        ),
        vision_config=dict(
            hidden_size=768, intermediate_size=3072, num_attention_heads=12,
            num_hidden_layers=12, image_size=384, patch_size=16,
        ),
    )
    model = BlipForConditionalGeneration(cfg).eval()
    # BLIP's init draws the vision embeddings with std 1e-10; any values do the same work.
    pv = torch.randn(a.batch, 3, 384, 384)

    def caption() -> torch.Tensor:
        return model.generate(pixel_values=pv, max_length=MAX_LENGTH, num_beams=1)

    print(
        f"torch {torch.__version__}, transformers {transformers.__version__}, "
        f"threads {torch.get_num_threads()}, batch {a.batch}"
    )
    with torch.inference_mode():
        ids = caption()  # warm-up
        assert ids.shape == (a.batch, MAX_LENGTH) and not (ids[:, 1:] == 102).any(), ids
        times = []
        for _ in range(a.reps):
            t0 = time.perf_counter()
            caption()
            times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    print(
        f"blip-base 384px batch {a.batch} greedy {MAX_LENGTH}: median {med:.3f} s/batch "
        f"(min {min(times):.3f}, max {max(times):.3f}, {a.reps} runs)  {a.batch / med:.2f} images/s"
    )


if __name__ == "__main__":
    main()
