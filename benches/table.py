#!/usr/bin/env python3
"""One command for the performance table (README, "Performance"): every workload of
reference.md section 8 and issue 8 (W1, W1b, W2, W3, W4, W5), each run alone in its own process
for roundtrip (criterion, `cargo bench`) and for its reference (PyTorch / timm / nltk scripts),
in the same invocation, printing seconds, the ratio roundtrip / reference and each process's peak
resident memory (GNU time's %M; for roundtrip it includes the model set-up of that workload only).

    python3 benches/table.py [w1 w1b w2 w3 w4 w5] [--no-reference]

A reference whose Python packages (torch, transformers, timm, pytorch-pretrained-biggan, nltk)
or script are missing is reported as such and the row keeps roundtrip's figures. Run it on a quiet
machine; compare ratios from one run, never absolute times across machines or runs.

On a GPU build, `ROUNDTRIP_DEVICE=cuda python3 benches/table.py` runs the Rust benches and the
W2 / W3 / W4 reference scripts on the GPU (peak memory is then host memory only); the shared W1
reference (`torch_step.py`) runs on the CPU only and is skipped. Not yet run on a GPU.
"""
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGET = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
SHARED_W1 = ROOT.parent / "shared" / "bench" / "torch_step.py"

# name: (description, bench, criterion filter, criterion id, reference argv, reference regex,
#        reference line index for multi-line outputs)
WORKLOADS = {
    "w1": ("SIREN 8x256, 224 px, 8 cutouts, ViT-B/32: one guidance step", "guidance", "w1",
           "w1/siren8x256_224px_8cutouts_vitb32_step",
           [str(SHARED_W1), "4"], r"layers=8 .*median step ([0-9.]+) s", None),
    "w1b": ("SIREN 16x256, 224 px, 4 cutouts, ViT-B/32: one guidance step", "guidance", "w1b",
            "w1b/siren16x256_224px_4cutouts_vitb32_step",
            [str(SHARED_W1), "4"], r"layers=16 .*median step ([0-9.]+) s", None),
    "w2": ("BigGAN-deep 128, 8 cutouts, ViT-B/32: one guidance step", "guidance", "w2",
           "w2/biggan_deep128_8cutouts_vitb32_step",
           [str(ROOT / "benches" / "biggan_torch.py"), "3"], r"median step ([0-9.]+) s", None),
    "w3": ("VGG16 features, batch 8, 224 px", "encoders", "vgg16",
           "encoders/vgg16_224px_batch8_fc2",
           [str(ROOT / "benches" / "encoders_torch.py"), "vgg16"], r"vgg16 .*median ([0-9.]+) s/batch", None),
    "w4": ("Xception features, batch 8, 299 px", "encoders", "xception",
           "encoders/xception_299px_batch8_avgpool",
           [str(ROOT / "benches" / "encoders_torch.py"), "xception"], r"xception .*median ([0-9.]+) s/batch", None),
    "w5": ("corpus BLEU, 100k lines x 5 references", "bleu", "w5",
           "w5/corpus_bleu_100k_x5",
           [str(ROOT / "benches" / "bleu_nltk.py")], r"W5 .*: ([0-9.]+) s;", None),
}


def timed(argv, cwd=ROOT):
    """Runs argv under GNU time; returns (stdout+stderr text, peak RSS in MiB, return code)."""
    with tempfile.NamedTemporaryFile("r", suffix=".time") as f:
        p = subprocess.run(["/usr/bin/time", "-f", "%M", "-o", f.name, *argv], cwd=cwd,
                           capture_output=True, text=True)
        try:
            rss = int(f.read().strip().splitlines()[-1]) / 1024
        except (ValueError, IndexError):
            rss = float("nan")
    return p.stdout + p.stderr, rss, p.returncode


def roundtrip(name):
    _, bench, filt, cid, *_ = WORKLOADS[name]
    out, rss, rc = timed(["cargo", "bench", "--bench", bench, "--", filt])
    if rc != 0:
        sys.exit(f"cargo bench --bench {bench} -- {filt} failed:\n{out[-3000:]}")
    est = TARGET / "criterion" / cid / "new" / "estimates.json"
    median_ns = json.loads(est.read_text())["median"]["point_estimate"]
    return median_ns / 1e9, rss


def reference(name):
    *_, argv, pattern, _ = WORKLOADS[name]
    if not Path(argv[0]).is_file():
        return None, None, f"{argv[0]} not found"
    if os.environ.get("ROUNDTRIP_DEVICE", "cpu") != "cpu" and argv[0] == str(SHARED_W1):
        return None, None, "torch_step.py runs on the CPU only"
    out, rss, rc = timed([sys.executable, *argv])
    m = re.search(pattern, out)
    if rc != 0 or not m:
        last = out.strip().splitlines()[-1] if out.strip() else f"exit {rc}"
        return None, None, f"reference failed: {last[:120]}"
    return float(m.group(1)), rss, ""


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    names = args or list(WORKLOADS)
    unknown = [n for n in names if n not in WORKLOADS]
    if unknown:
        sys.exit(f"unknown workloads {unknown}: expected some of {list(WORKLOADS)}")
    with_ref = "--no-reference" not in sys.argv
    rows = []
    for n in names:
        print(f"[{n}] roundtrip ...", file=sys.stderr, flush=True)
        rt, rt_rss = roundtrip(n)
        ref, ref_rss, why = (None, None, "skipped")
        if with_ref:
            print(f"[{n}] reference ...", file=sys.stderr, flush=True)
            ref, ref_rss, why = reference(n)
        rows.append((n, rt, rt_rss, ref, ref_rss, why))
    print("| workload | roundtrip s | reference s | roundtrip / reference | roundtrip peak MiB | reference peak MiB |")
    print("| --- | --- | --- | --- | --- | --- |")
    for n, rt, rt_rss, ref, ref_rss, why in rows:
        desc = WORKLOADS[n][0]
        if ref is None:
            print(f"| {n[0].upper() + n[1:]}: {desc} | {rt:.3f} | {why} | | {rt_rss:.0f} | |")
        else:
            print(f"| {n[0].upper() + n[1:]}: {desc} | {rt:.3f} | {ref:.3f} | {rt / ref:.2f} | {rt_rss:.0f} | {ref_rss:.0f} |")


if __name__ == "__main__":
    main()
