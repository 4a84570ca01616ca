//! BLIP captioning throughput at BLIP-base geometry (ViT-B/16 at 384 px, the BERT-base decoder,
//! the published config.json's values) with seeded random weights (the same work as the real
//! checkpoint): a batch of images from the processor's pixels to the generated ids, greedy, a
//! fixed length of 20 ids (transformers' default max_length; the random model never picks [SEP],
//! checked). Compare with `python3 benches/blip_torch.py` (transformers) run in the same session
//! with the same thread count.
//!
//! Run: `RAYON_NUM_THREADS=1 cargo bench --bench blip` (batch 8; `BLIP_BENCH_BATCH=2` for 2).

use std::hint::black_box;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use roundtrip::models::blip::{generate, Blip, Config, Generation};
use roundtrip::weights::seeded_random_weights;

/// The values of Salesforce/blip-image-captioning-base's config.json that matter.
const BASE: &str = r#"{"model_type": "blip",
  "text_config": {"vocab_size": 30524, "hidden_size": 768, "intermediate_size": 3072,
    "num_attention_heads": 12, "num_hidden_layers": 12, "max_position_embeddings": 512,
    "bos_token_id": 30522, "sep_token_id": 102, "pad_token_id": 0},
  "vision_config": {"hidden_size": 768, "intermediate_size": 3072, "num_attention_heads": 12,
    "num_hidden_layers": 12, "image_size": 384, "patch_size": 16}}"#;

const MAX_LENGTH: usize = 20;

fn batch_size() -> usize {
    std::env::var("BLIP_BENCH_BATCH")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(8)
}

/// A fixed batch of normalised pixels in [-1.8, 2.1] (host-seeded).
fn pixels(b: usize, size: usize, dev: &Device) -> Tensor {
    let n = b * 3 * size * size;
    let v: Vec<f32> = (0..n)
        .map(|i| ((i as u64).wrapping_mul(2654435761) % 3901) as f32 / 1000.0 - 1.8)
        .collect();
    Tensor::from_vec(v, (b, 3, size, size), dev).unwrap()
}

fn bench(c: &mut Criterion) {
    // As `roundtrip` itself runs (src/main.rs).
    roundtrip::tune_allocator();
    let dev = roundtrip::device::from_env().unwrap();
    let cfg = Config::from_json(BASE).unwrap();
    let w = seeded_random_weights(|vb| Blip::new(vb, &cfg), 0, 0.02, &dev).unwrap();
    let blip = Blip::new(VarBuilder::from_tensors(w, DType::F32, &dev), &cfg).unwrap();
    let b = batch_size();
    let x = pixels(b, cfg.vision_config.image_size, &dev);
    let g = Generation {
        prompt: vec![cfg.text_config.bos_token_id],
        max_length: MAX_LENGTH,
        num_beams: 1,
    };
    let caption = || {
        let embeds = blip.vision(&x).unwrap().last_hidden_state;
        let ids = generate(&blip, &embeds, &g).unwrap();
        dev.synchronize().unwrap(); // a GPU runs asynchronously
        ids
    };
    // Warm-up outside the measurement, and the fixed length checked.
    let ids = caption();
    assert!(
        ids.iter().all(|s| s.len() == MAX_LENGTH),
        "the random model stopped early: {ids:?}"
    );
    let mut group = c.benchmark_group("blip");
    group.sample_size(10);
    group.throughput(Throughput::Elements(b as u64));
    group.bench_function(
        format!("base_384px_batch{b}_greedy{MAX_LENGTH}"),
        |bencher| bencher.iter(|| black_box(caption())),
    );
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
