//! CLIP ViT-B/32 image tower forward + backward to the pixels on 8 images (W1's CLIP part), in a
//! loop, for profiling: `cargo run --release --example clip_step -- [steps]`.
use std::time::Instant;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarBuilder;
use roundtrip::generate::{deep_daze_loss, l2_normalize, ImageEncoder};
use roundtrip::models::clip::{ClipConfig, ClipModel};
use roundtrip::weights::seeded_random_weights;

fn main() -> anyhow::Result<()> {
    roundtrip::tune_allocator();
    let steps: usize = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(5);
    let taped = std::env::args().nth(2).as_deref() == Some("taped");
    let dev = Device::Cpu;
    let cfg = ClipConfig::vit_b32();
    let weights = seeded_random_weights(|vb| ClipModel::new(vb, &cfg), 0, 0.02, &dev)?;
    let clip = ClipModel::new(VarBuilder::from_tensors(weights, DType::F32, &dev), &cfg)?;
    let text = l2_normalize(&Tensor::ones((1, cfg.projection_dim), DType::F32, &dev)?)?;
    let x = Tensor::rand(0f32, 1f32, (8, 3, 224, 224), &dev)?;
    let (mut tf, mut tb) = (0.0, 0.0);
    for step in 0..=steps {
        let leaf = Var::from_tensor(&x)?;
        let t0 = Instant::now();
        let (f, b) = if taped {
            let (emb, back) = clip.encode_images_taped(leaf.as_tensor())?.expect("taped");
            let ev = Var::from_tensor(&emb)?;
            let (loss, _) = deep_daze_loss(&text, ev.as_tensor(), 0.3)?;
            let _ = loss.to_scalar::<f32>()?;
            let f = t0.elapsed().as_secs_f64();
            let g = loss.backward()?;
            let _ = back(g.get(ev.as_tensor()).expect("emb grad"))?;
            (f, t0.elapsed().as_secs_f64() - f)
        } else {
            let emb = clip.encode_images(leaf.as_tensor())?;
            let (loss, _) = deep_daze_loss(&text, &emb, 0.3)?;
            let _ = loss.to_scalar::<f32>()?;
            let f = t0.elapsed().as_secs_f64();
            let g = loss.backward()?;
            let _ = g.get(leaf.as_tensor()).expect("pixel gradient");
            (f, t0.elapsed().as_secs_f64() - f)
        };
        if step > 0 {
            tf += f;
            tb += b;
        }
    }
    println!(
        "clip fwd {:.3} s, bwd {:.3} s",
        tf / steps as f64,
        tb / steps as f64
    );
    Ok(())
}
