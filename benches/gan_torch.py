#!/usr/bin/env python3
"""PyTorch baseline for `cargo bench --bench gan` (issue 16 point 2): one training round of
`roundtrip train-gan` at the shipped geometry (64 px, batch 32, z 64, G width 16, D width 32 and
depth 1, 40 classes, DiffAugment on), CPU, 2 threads: d_steps = 2 discriminator steps, then one
generator step with the EMA update.

The networks are twins of the Rust training-mode models, with the same parameter counts (printed
and checked against the formula of the Rust stores: the counts `cargo bench --bench gan` prints):

    G  BigGAN-deep as pytorch-pretrained-BigGAN (src/gan/generator.rs, src/models/biggan/):
       shared class embedding (Linear 40 -> z, no bias), cond = cat(z, embedding), spectral-norm
       gen_z -> [B, 4, 4, 16 ch] -> NCHW, 8 GBlocks (bn-ReLU-conv 1x1, bn-ReLU-[nearest x2]-conv
       3x3, bn-ReLU-conv 3x3, bn-ReLU-conv 1x1, skip: first in/2 channels, upsampled), conditional
       BatchNorm with batch statistics (eps 1e-4, running statistics updated), gain 1 + scale(cond)
       and offset(cond) by spectral-norm linears, final BatchNorm-ReLU, conv_to_rgb 3x3, first 3
       channels, tanh;
    D  BigGAN-deep's discriminator with a projection head: the twin of
       tests/fixtures/make_gan_fixtures.py, parameterised by width, size and depth;

spectral norm everywhere by `torch.nn.utils.spectral_norm` (one power iteration per training
forward), hinge loss, Adam (betas (0, 0.999), eps 1e-6; lr 1e-4 for G, 4e-4 for D; PyTorch's
default implementation), an EMA of G's parameters (decay min(0.999, (1 + t) / (10 + t))) whose own
spectral-norm vectors then take one power iteration, and DiffAugment's policy
`color,translation,cutout` as its `DiffAugment_pytorch.py` computes it on the 2B images of a D step
(fake then real, one D forward) and the B images of a G step. As BigGAN-PyTorch, G's forward in a
D step runs under `torch.no_grad()` (the Rust step detaches G's output). Data: seeded random images
in [-1, 1], random multi-hot classes (one or two), as the Rust bench.

Prints the median seconds per round (wall clock, and the process's CPU time) over REPS rounds after
WARMUP rounds, on RAYON_NUM_THREADS threads (2 unless set: the variable that sets the Rust bench's).
Run (from the repository root, on a quiet machine, in the same session as the Rust bench):

    pip install torch             # made with torch 2.15.0, Python 3.11
    python3 benches/gan_torch.py  # [reps]
"""

from __future__ import annotations

import copy
import os
import statistics
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils import spectral_norm as SN
from torch.nn.utils.spectral_norm import SpectralNorm

# src/gan/settings.rs defaults.
IMAGE, BATCH, Z, G_CH, D_CH, D_DEPTH, D_STEPS, NC = 64, 32, 64, 16, 32, 1, 2, 40
LR_G, LR_D, EMA_DECAY, BN_EPS = 1e-4, 4e-4, 0.999, 1e-4
# As the Rust bench: RAYON_NUM_THREADS threads (2 unless set).
THREADS, WARMUP = int(os.environ.get("RAYON_NUM_THREADS", "2")), 2
REPS = int(sys.argv[1]) if len(sys.argv) > 1 else 5
POOL = 256


def g_layers(size: int) -> list[tuple[bool, int, int]]:
    """GanSettings::g_config's layers: (upsample, in_mult, out_mult)."""
    ups = (size // 4).bit_length() - 1
    n = 2 * ups
    halve = [False] * n
    left = 4
    for i in [i for i in reversed(range(n)) if i % 2 == 1] + [i for i in reversed(range(n)) if i % 2 == 0]:
        if left > 0:
            halve[i] = True
            left -= 1
    out, m = [], 16
    for i in range(n):
        o = m // 2 if halve[i] else m
        out.append((i % 2 == 1, m, o))
        m = o
    return out


class CondBN(nn.Module):
    """BatchNorm with the batch's statistics, gain 1 + scale(cond), offset(cond)."""

    def __init__(self, c: int, d: int):
        super().__init__()
        self.scale = SN(nn.Linear(d, c, bias=False))
        self.offset = SN(nn.Linear(d, c, bias=False))
        self.register_buffer("running_mean", torch.zeros(c))
        self.register_buffer("running_var", torch.ones(c))

    def forward(self, x, cond):
        x = F.batch_norm(x, self.running_mean, self.running_var, None, None, True, 0.1, BN_EPS)
        b, c = x.shape[:2]
        return x * (1 + self.scale(cond)).view(b, c, 1, 1) + self.offset(cond).view(b, c, 1, 1)


class GBlock(nn.Module):
    def __init__(self, cin: int, cout: int, d: int, up: bool):
        super().__init__()
        mid = cin // 4
        widths = [(cin, mid, 1), (mid, mid, 3), (mid, mid, 3), (mid, cout, 1)]
        self.bn = nn.ModuleList([CondBN(a, d) for a, _, _ in widths])
        self.conv = nn.ModuleList([SN(nn.Conv2d(a, b, k, padding=k // 2)) for a, b, k in widths])
        self.up = up
        self.skip = cin // 2 if cin != cout else None

    def forward(self, x0, cond):
        x = x0
        for i in range(4):
            x = F.relu(self.bn[i](x, cond))
            if i == 1 and self.up:
                x = F.interpolate(x, scale_factor=2, mode="nearest")
            x = self.conv[i](x)
        s = x0[:, : self.skip] if self.skip is not None else x0
        if self.up:
            s = F.interpolate(s, scale_factor=2, mode="nearest")
        return x + s


class G(nn.Module):
    def __init__(self):
        super().__init__()
        d = 2 * Z
        self.embeddings = nn.Linear(NC, Z, bias=False)
        self.gen_z = SN(nn.Linear(d, 16 * 16 * G_CH))
        self.layers = nn.ModuleList(
            [GBlock(i * G_CH, o * G_CH, d, up) for up, i, o in g_layers(IMAGE)]
        )
        self.bn = nn.BatchNorm2d(G_CH, eps=BN_EPS)
        self.conv_to_rgb = SN(nn.Conv2d(G_CH, G_CH, 3, padding=1))

    def forward(self, z, y):
        cond = torch.cat([z, self.embeddings(y)], 1)
        x = self.gen_z(cond).view(-1, 4, 4, 16 * G_CH).permute(0, 3, 1, 2).contiguous()
        for blk in self.layers:
            x = blk(x, cond)
        return torch.tanh(self.conv_to_rgb(F.relu(self.bn(x)))[:, :3])


# The discriminator: tests/fixtures/make_gan_fixtures.py's twin (its DBlock, imported) with the
# geometry as arguments.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures"))
from make_gan_fixtures import DBlock  # noqa: E402


class D(nn.Module):
    def __init__(self, ch=D_CH, size=IMAGE, depth=D_DEPTH, nc=NC):
        super().__init__()
        self.input_conv = SN(nn.Conv2d(3, ch, 3, padding=1))
        blocks = []
        stages = (size // 4).bit_length() - 1
        for k in range(stages):
            cin, cout = ch << k, ch << (k + 1)
            for d in range(depth):
                blocks.append(DBlock(cin if d == 0 else cout, cout, d == 0))
        self.blocks = nn.ModuleList(blocks)
        c = ch << stages
        self.linear = SN(nn.Linear(c, 1))
        self.embed = SN(nn.Embedding(nc, c))

    def forward(self, x, y):
        h = self.input_conv(x)
        for b in self.blocks:
            h = b(h)
        h = torch.sum(F.relu(h), [2, 3])
        self.embed(torch.zeros(1, dtype=torch.long))  # the embedding's power iteration
        return self.linear(h).squeeze(1) + torch.sum((y @ self.embed.weight) * h, 1)


def rust_counts() -> tuple[int, int]:
    """G's and D's parameter counts as the Rust stores hold them (src/gan/generator.rs,
    discriminator.rs), from the geometry alone."""
    d = 2 * Z
    g = Z * NC + d * 16 * 16 * G_CH + 16 * 16 * G_CH
    for _, i, o in g_layers(IMAGE):
        cin, cout = i * G_CH, o * G_CH
        mid = cin // 4
        for a, b, k in [(cin, mid, 1), (mid, mid, 3), (mid, mid, 3), (mid, cout, 1)]:
            g += 2 * d * a + a * b * k * k + b
    g += 2 * G_CH + G_CH * G_CH * 9 + G_CH
    dd = 3 * D_CH * 9 + D_CH
    stages = (IMAGE // 4).bit_length() - 1
    for k in range(stages):
        for j in range(D_DEPTH):
            cout = D_CH << (k + 1)
            cin = D_CH << k if j == 0 else cout
            hid = max(cout // 4, 1)
            dd += cin * hid + hid + 2 * (hid * hid * 9 + hid) + hid * cout + cout
            if cout > cin:
                dd += cin * (cout - cin) + cout - cin
    c = D_CH << stages
    dd += c + 1 + NC * c
    return g, dd


# DiffAugment_pytorch.py (Zhao et al. 2020), policy color,translation,cutout.
def diff_augment(x):
    b = x.size(0)
    x = x + (torch.rand(b, 1, 1, 1) - 0.5)
    m = x.mean(dim=1, keepdim=True)
    x = (x - m) * (torch.rand(b, 1, 1, 1) * 2) + m
    m = x.mean(dim=[1, 2, 3], keepdim=True)
    x = (x - m) * (torch.rand(b, 1, 1, 1) + 0.5) + m
    sx, sy = int(x.size(2) * 0.125 + 0.5), int(x.size(3) * 0.125 + 0.5)
    tx = torch.randint(-sx, sx + 1, size=[b, 1, 1])
    ty = torch.randint(-sy, sy + 1, size=[b, 1, 1])
    gb, gx, gy = torch.meshgrid(
        torch.arange(b), torch.arange(x.size(2)), torch.arange(x.size(3)), indexing="ij"
    )
    gx = torch.clamp(gx + tx + 1, 0, x.size(2) + 1)
    gy = torch.clamp(gy + ty + 1, 0, x.size(3) + 1)
    x_pad = F.pad(x, [1, 1, 1, 1, 0, 0, 0, 0])
    x = x_pad.permute(0, 2, 3, 1).contiguous()[gb, gx, gy].permute(0, 3, 1, 2)
    cs = int(x.size(2) * 0.5 + 0.5), int(x.size(3) * 0.5 + 0.5)
    ox = torch.randint(0, x.size(2) + (1 - cs[0] % 2), size=[b, 1, 1])
    oy = torch.randint(0, x.size(3) + (1 - cs[1] % 2), size=[b, 1, 1])
    gb, gx, gy = torch.meshgrid(
        torch.arange(b), torch.arange(cs[0]), torch.arange(cs[1]), indexing="ij"
    )
    gx = torch.clamp(gx + ox - cs[0] // 2, min=0, max=x.size(2) - 1)
    gy = torch.clamp(gy + oy - cs[1] // 2, min=0, max=x.size(3) - 1)
    mask = torch.ones(b, x.size(2), x.size(3), dtype=x.dtype)
    mask[gb, gx, gy] = 0
    return x * mask.unsqueeze(1)


def multi_hot(n: int) -> torch.Tensor:
    y = torch.zeros(n, NC)
    for i in range(n):
        for _ in range(int(torch.randint(1, 3, ()))):
            y[i, int(torch.randint(0, NC, ()))] = 1.0
    return y


class Round:
    def __init__(self):
        self.g, self.d = G().train(), D().train()
        self.ema = copy.deepcopy(self.g)
        for p in self.ema.parameters():
            p.requires_grad_(False)
        self.opt_g = torch.optim.Adam(self.g.parameters(), LR_G, betas=(0.0, 0.999), eps=1e-6)
        self.opt_d = torch.optim.Adam(self.d.parameters(), LR_D, betas=(0.0, 0.999), eps=1e-6)
        self.g_steps = 0
        self.images = torch.rand(POOL, 3, IMAGE, IMAGE) * 2 - 1
        self.classes = multi_hot(POOL)

    def pick(self):
        return torch.randint(0, POOL, (BATCH,))

    def d_step(self):
        idx = self.pick()
        real, yr = self.images[idx], self.classes[idx]
        z, yf = torch.randn(BATCH, Z), self.classes[self.pick()]
        with torch.no_grad():
            fake = self.g(z, yf)
        out = self.d(diff_augment(torch.cat([fake, real])), torch.cat([yf, yr]))
        of, orl = out[:BATCH], out[BATCH:]
        loss = F.relu(1 - orl).mean() + F.relu(1 + of).mean()
        self.opt_d.zero_grad(set_to_none=True)
        loss.backward()
        self.opt_d.step()
        return loss.item()

    def g_step(self):
        z, y = torch.randn(BATCH, Z), self.classes[self.pick()]
        loss = -self.d(diff_augment(self.g(z, y)), y).mean()
        self.opt_g.zero_grad(set_to_none=True)
        loss.backward()
        self.opt_g.step()
        self.g_steps += 1
        t = self.g_steps
        decay = min(EMA_DECAY, (1 + t) / (10 + t))
        with torch.no_grad():
            for e, p in zip(self.ema.parameters(), self.g.parameters()):
                e.mul_(decay).add_(p, alpha=1 - decay)
            # The EMA's own spectral-norm vectors follow its weights: one power iteration.
            for m in self.ema.modules():
                for hook in m._forward_pre_hooks.values():
                    if isinstance(hook, SpectralNorm):
                        hook.compute_weight(m, do_power_iteration=True)
        return loss.item()

    def __call__(self):
        for _ in range(D_STEPS):
            self.d_step()
        self.g_step()


def main() -> None:
    torch.set_num_threads(THREADS)
    torch.manual_seed(0)
    r = Round()
    counts = (
        sum(p.numel() for p in r.g.parameters()),
        sum(p.numel() for p in r.d.parameters()),
    )
    print(
        f"torch {torch.__version__}, threads {torch.get_num_threads()}: "
        f"G {counts[0]} parameters, D {counts[1]} parameters"
    )
    assert counts == rust_counts(), (counts, rust_counts())
    for _ in range(WARMUP):
        r()
    times, cpu = [], []
    for _ in range(REPS):
        t0, c0 = time.perf_counter(), time.process_time()
        r()
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    print(
        f"gan round ({IMAGE}px batch {BATCH}, {D_STEPS} D steps + 1 G step + EMA): median "
        f"{statistics.median(times):.3f} s/round (min {min(times):.3f}, max {max(times):.3f}, "
        f"{REPS} rounds after {WARMUP} warm-up); CPU time {statistics.median(cpu):.3f} s/round"
    )


if __name__ == "__main__":
    main()
