#!/usr/bin/env python3
"""PyTorch baseline for `cargo bench --bench encoders`: image-feature throughput of the two frozen
captioner encoders, full-size geometry, random weights, batch 8, CPU, 2 threads.

    VGG16     timm `vgg16.tv_in1k` at 224x224 -> pre_logits (fc2 after ReLU), 4096-d
    Xception  timm `legacy_xception.tf_in1k` at 299x299 -> global average pool, 2048-d

Both are built with `pretrained=False` (nothing is downloaded), put in eval mode and run under
`torch.inference_mode()` on a fixed random batch; the same work as the Rust bench. Prints the
median seconds per batch over REPS timed runs (after one warm-up run) and images/s.

Run (from the repository root, on a quiet machine, in the same session as the Rust bench):

    pip install torch timm        # made with torch 2.15.0, timm 1.0.31
    python3 benches/encoders_torch.py
"""

from __future__ import annotations

import os
import statistics
import time

import timm
import torch

BATCH = 8
REPS = 5
THREADS = 2
DEV = torch.device(os.environ.get("ROUNDTRIP_DEVICE", "cpu"))  # as the Rust bench


def features(name: str, model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    f = model.forward_head(model.forward_features(x), pre_logits=True)
    if DEV.type == "cuda":
        torch.cuda.synchronize()
    assert f.shape == (x.shape[0], 4096 if name == "vgg16" else 2048), f.shape
    return f


def bench(name: str, variant: str, size: int) -> None:
    torch.manual_seed(0)
    model = timm.create_model(variant, pretrained=False).eval().to(DEV)
    x = torch.randn(BATCH, 3, size, size).to(DEV)
    with torch.inference_mode():
        features(name, model, x)  # warm-up (oneDNN primitive creation, allocations)
        times = []
        for _ in range(REPS):
            t0 = time.perf_counter()
            features(name, model, x)
            times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    print(
        f"{name:<9} {size}px batch {BATCH}: median {med:.3f} s/batch "
        f"(min {min(times):.3f}, max {max(times):.3f}, {REPS} runs)  {BATCH / med:.2f} images/s"
    )


def main() -> None:
    import sys

    only = sys.argv[1:]  # e.g. `vgg16` or `xception`: one model alone (benches/table.py)
    torch.set_num_threads(THREADS)
    print(f"torch {torch.__version__}, timm {timm.__version__}, threads {torch.get_num_threads()}")
    if not only or "vgg16" in only:
        bench("vgg16", "vgg16.tv_in1k", 224)
    if not only or "xception" in only:
        bench("xception", "legacy_xception.tf_in1k", 299)


if __name__ == "__main__":
    main()
