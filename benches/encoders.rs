//! Issue 4 point 9: feature-extraction throughput of the two frozen captioner encoders at their
//! full geometry with seeded random weights, batch 8: VGG16 at 224 x 224 (fc2 + ReLU, 4096-d) and
//! Xception at 299 x 299 (global average pool, 2048-d). Compare with
//! `python3 benches/encoders_torch.py` (timm, 2 threads) run in the same session.
//! Run: `cargo bench --bench encoders`.

use std::hint::black_box;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use roundtrip::models::vgg16::{self, Vgg16};
use roundtrip::models::xception::{self, Xception};
use roundtrip::weights::seeded_random_weights;

const BATCH: usize = 8;

/// A fixed batch of "preprocessed" images in [-1, 1] (host-seeded, as candle's RNG cannot be).
fn batch(size: usize, dev: &Device) -> Tensor {
    let n = BATCH * 3 * size * size;
    let v: Vec<f32> = (0..n)
        .map(|i| ((i as u64).wrapping_mul(2654435761) % 2001) as f32 / 1000.0 - 1.0)
        .collect();
    Tensor::from_vec(v, (BATCH, 3, size, size), dev).unwrap()
}

/// Whether the command line's filter (if any) selects `name` (`encoders/<function>`): a filter
/// also skips the other encoder's set-up, so that `benches/table.py` measures each one's peak
/// memory alone.
fn wanted(name: &str) -> bool {
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    filters.is_empty() || filters.iter().any(|f| name.contains(f.as_str()))
}

fn bench(c: &mut Criterion) {
    // As `roundtrip` itself runs (src/main.rs).
    roundtrip::tune_allocator();
    let dev = roundtrip::device::from_env().unwrap();
    let mut g = c.benchmark_group("encoders");
    g.sample_size(10);
    g.throughput(Throughput::Elements(BATCH as u64));

    if wanted("encoders/vgg16_224px_batch8_fc2") {
        vgg(&mut g, &dev);
    }
    if wanted("encoders/xception_299px_batch8_avgpool") {
        xception(&mut g, &dev);
    }
    g.finish();
}

type Group<'a> = criterion::BenchmarkGroup<'a, criterion::measurement::WallTime>;

fn vgg(g: &mut Group, dev: &Device) {
    let dev = dev.clone();
    let cfg = vgg16::Config::vgg16();
    let w = seeded_random_weights(|vb| Vgg16::new(vb, &cfg), 0, 0.01, &dev).unwrap();
    let vgg = Vgg16::new(VarBuilder::from_tensors(w, DType::F32, &dev), &cfg).unwrap();
    let x = batch(cfg.image_size, &dev);
    black_box(vgg.forward(&x).unwrap()); // warm-up outside the measurement
    g.bench_function("vgg16_224px_batch8_fc2", |b| {
        b.iter(|| {
            let y = vgg.forward(&x).unwrap();
            dev.synchronize().unwrap(); // a GPU runs asynchronously
            black_box(y)
        })
    });
}

fn xception(g: &mut Group, dev: &Device) {
    let dev = dev.clone();
    let cfg = xception::Config::xception();
    let w = seeded_random_weights(|vb| Xception::new(vb, &cfg), 0, 0.02, &dev).unwrap();
    let xc = Xception::new(VarBuilder::from_tensors(w, DType::F32, &dev), &cfg).unwrap();
    let x = batch(cfg.image_size, &dev);
    black_box(xc.forward(&x).unwrap());
    g.bench_function("xception_299px_batch8_avgpool", |b| {
        b.iter(|| {
            let y = xc.forward(&x).unwrap();
            dev.synchronize().unwrap();
            black_box(y)
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
