//! W1: one SIREN guidance step (deep-daze's loss, Adam) at 224 px with SIREN 8 x 256, 8 cutouts
//! and CLIP ViT-B/32 geometry with seeded random weights; W1b the same with SIREN 16 x 256 and 4
//! cutouts. Compare with `python3 ../shared/bench/torch_step.py` run in the same session (its
//! lines are W1 and W1b).
//! W2: one big-sleep guidance step with BigGAN-deep 128 geometry (random weights), 8 cutouts and
//! CLIP ViT-B/32; compare with `python3 benches/biggan_torch.py` in the same session.
//! Run: `cargo bench --bench guidance [-- w1|w1b|w2]`; a filter also skips the other workloads'
//! model set-up, so that `benches/table.py` can measure each one's peak memory alone.

use std::hint::black_box;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use criterion::{criterion_group, criterion_main, Criterion};
use roundtrip::generate::biggan::BigGanGuidance;
use roundtrip::generate::siren::SirenGuidance;
use roundtrip::generate::{BigGanSettings, Guidance, SirenSettings as Settings};
use roundtrip::models::biggan::{BigGan, Config as BigGanConfig};
use roundtrip::models::clip::{ClipConfig, ClipModel};
use roundtrip::weights::seeded_random_weights;

/// Whether the command line's filter (if any) selects the group `name`.
fn wanted(name: &str) -> bool {
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    filters.is_empty()
        || filters
            .iter()
            .any(|f| f == name || name.starts_with(&format!("{f}/")))
}

fn clip(dev: &Device) -> ClipModel {
    let cfg = ClipConfig::vit_b32();
    let weights = seeded_random_weights(|vb| ClipModel::new(vb, &cfg), 0, 0.02, dev).unwrap();
    ClipModel::new(VarBuilder::from_tensors(weights, DType::F32, dev), &cfg).unwrap()
}

fn siren(c: &mut Criterion, group: &str, layers: usize, cutouts: usize) {
    if !wanted(group) {
        return;
    }
    let dev = roundtrip::device::from_env().unwrap();
    let clip = clip(&dev);
    let text = Tensor::ones((1, 512), DType::F32, &dev).unwrap();
    let settings = Settings {
        size: 224,
        layers,
        hidden: 256,
        cutouts,
        ..Settings::default()
    };
    let mut run = SirenGuidance::new(&settings, &clip, &text, 0, &dev).unwrap();
    run.step().unwrap(); // warm-up outside the measurement
    let mut g = c.benchmark_group(group);
    g.sample_size(10);
    g.bench_function(
        format!("siren{layers}x256_224px_{cutouts}cutouts_vitb32_step"),
        |b| b.iter(|| black_box(run.step().unwrap())),
    );
    g.finish();
}

fn bench(c: &mut Criterion) {
    roundtrip::tune_allocator();
    siren(c, "w1", 8, 8);
    siren(c, "w1b", 16, 4);
    if !wanted("w2") {
        return;
    }
    // W2: BigGAN-deep 128 with random weights (running variances made positive).
    let dev = roundtrip::device::from_env().unwrap();
    let clip = clip(&dev);
    let text = Tensor::ones((1, 512), DType::F32, &dev).unwrap();
    let gcfg = BigGanConfig::deep_128();
    let mut gw = seeded_random_weights(|vb| BigGan::new(vb, &gcfg), 1, 0.02, &dev).unwrap();
    for (name, t) in gw.iter_mut() {
        if name.ends_with("running_vars") {
            *t = (t.abs().unwrap() + 1.0).unwrap();
        }
    }
    let biggan = BigGan::new(VarBuilder::from_tensors(gw, DType::F32, &dev), &gcfg).unwrap();
    let bsettings = BigGanSettings::default();
    let mut brun =
        BigGanGuidance::new(&bsettings, &biggan, &clip, &text, &[], 0, None, &dev).unwrap();
    brun.step().unwrap();
    let mut g = c.benchmark_group("w2");
    g.sample_size(10);
    g.bench_function("biggan_deep128_8cutouts_vitb32_step", |b| {
        b.iter(|| black_box(brun.step().unwrap()))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
