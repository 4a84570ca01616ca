#!/usr/bin/env python3
"""W2's PyTorch baseline: one big-sleep guidance step (BigGAN-deep 128 with random weights,
8 cutouts resized nearest to 224, CLIP ViT-B/32 geometry with random weights, big-sleep's
latent, class and similarity losses, Adam lr 0.07 on the latents). Needs torch, transformers and
pytorch-pretrained-biggan. Usage: python3 benches/biggan_torch.py [steps] (median seconds/step);
ROUNDTRIP_DEVICE=cuda runs it on the GPU, as the Rust bench.
Run it in the same session as `cargo bench --bench guidance -- w2` and compare the ratio."""
import os, sys, time, torch, torch.nn.functional as F
from transformers import CLIPConfig, CLIPModel
from pytorch_pretrained_biggan import BigGAN, BigGANConfig

torch.manual_seed(0)
dev = torch.device(os.environ.get("ROUNDTRIP_DEVICE", "cpu"))
steps = int(sys.argv[1]) if len(sys.argv) > 1 else 5
clip = CLIPModel(CLIPConfig()).eval().to(dev)
for p in clip.parameters():
    p.requires_grad_(False)
cfg = BigGANConfig()  # the defaults are BigGAN-deep 128's geometry
g = BigGAN(cfg).eval().to(dev)
for p in g.parameters():
    p.requires_grad_(False)
for name, b in g.named_buffers():
    if name.endswith("running_vars"):
        b.copy_(b.abs() + 1)
mean = torch.tensor([0.48145466, 0.4578275, 0.40821073], device=dev).view(1, 3, 1, 1)
std = torch.tensor([0.26862954, 0.26130258, 0.27577711], device=dev).view(1, 3, 1, 1)
L = len(cfg.layers) + 1
z = torch.randn(L, 128, device=dev, requires_grad=True)
cls = (torch.randn(L, 1000, device=dev) * 0.3 - 3.9).requires_grad_(True)
opt = torch.optim.Adam([z, cls], lr=0.07)
text = torch.randn(1, 512, device=dev)
W, cutouts, times = 128, 8, []
for i in range(steps + 1):
    t0 = time.perf_counter()
    classes = torch.sigmoid(cls)
    img = (g(z, classes, 1) + 1) / 2
    pieces = []
    for _ in range(cutouts):
        size = int(W * torch.zeros(1).normal_(mean=0.8, std=0.3).clip(0.5, 0.95))
        ox, oy = int(torch.randint(0, W - size + 1, ())), int(torch.randint(0, W - size + 1, ()))
        pieces.append(F.interpolate(img[:, :, ox:ox + size, oy:oy + size], (224, 224), mode="nearest"))
    emb = clip.get_image_features(pixel_values=(torch.cat(pieces) - mean) / std)
    emb = emb.pooler_output if hasattr(emb, "pooler_output") else emb
    lat = (1 - z.std(dim=1)).abs().mean() + z.mean(dim=1).abs().mean() + 4 * torch.clamp(z.pow(2).mean(), min=1)
    for row in z:
        d = row - row.mean()
        zs = d / d.pow(2).mean().sqrt()
        lat = lat + (zs.pow(4).mean() - 3).abs() / L + zs.pow(3).mean().abs() / L
    cls_loss = ((50 * torch.topk(classes, largest=False, dim=1, k=999)[0]) ** 2).mean()
    sim = -100 * torch.cosine_similarity(text, emb, dim=-1).mean()
    loss = lat + cls_loss + sim
    opt.zero_grad()
    loss.backward()
    opt.step()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    if i > 0:
        times.append(time.perf_counter() - t0)
times.sort()
print(f"torch {torch.__version__} threads={torch.get_num_threads()} biggan-deep-128 cutouts={cutouts}: median step {times[len(times)//2]:.3f} s")
