//! BLIP-base captioning (benches/blip.rs's workload) split into its parts, for profiling: the
//! image tower, the cross-attention keys and values of every decoder layer, and the decoding
//! steps, each timed; `cargo run --release --example blip_profile -- [batch] [repeats] [decode]`
//! (`decode`: the decoder alone, on random image embeddings, for profiling it).
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use roundtrip::models::blip::{generate, Blip, Config, Generation};
use roundtrip::weights::seeded_random_weights;

const BASE: &str = r#"{"model_type": "blip",
  "text_config": {"num_attention_heads": 12},
  "vision_config": {}}"#;

fn main() -> anyhow::Result<()> {
    roundtrip::tune_allocator();
    let mut args = std::env::args().skip(1);
    let b: usize = args.next().map(|s| s.parse()).transpose()?.unwrap_or(8);
    let repeats: usize = args.next().map(|s| s.parse()).transpose()?.unwrap_or(2);
    let decode_only = args.next().as_deref() == Some("decode");
    let dev = Device::Cpu;
    let cfg = Config::from_json(BASE)?;
    let w = seeded_random_weights(|vb| Blip::new(vb, &cfg), 0, 0.02, &dev)?;
    let blip = Blip::new(VarBuilder::from_tensors(w, DType::F32, &dev), &cfg)?;
    let x = Tensor::rand(-1.5f32, 1.5f32, (b, 3, 384, 384), &dev)?;
    let g = Generation {
        prompt: vec![cfg.text_config.bos_token_id],
        max_length: 20,
        num_beams: 1,
    };
    if decode_only {
        let embeds = Tensor::randn(0f32, 1f32, (b, 577, 768), &dev)?;
        for r in 0..repeats {
            let t0 = Instant::now();
            let ids = generate(&blip, &embeds, &g)?;
            println!(
                "[{r}] batch {b}: generate (cross k/v + {} steps) {:.2} s",
                ids[0].len() - 1,
                t0.elapsed().as_secs_f64()
            );
        }
        return Ok(());
    }
    for r in 0..repeats {
        let t0 = Instant::now();
        let embeds = blip.vision(&x)?.last_hidden_state;
        let t_vision = t0.elapsed().as_secs_f64();
        let t1 = Instant::now();
        let _cache = blip.cache(&embeds, 1)?;
        let t_cross = t1.elapsed().as_secs_f64();
        let t2 = Instant::now();
        let ids = generate(&blip, &embeds, &g)?;
        let t_gen = t2.elapsed().as_secs_f64();
        println!(
            "[{r}] batch {b}: vision {t_vision:.2} s, cross k/v {t_cross:.2} s, generate (cross k/v + {} steps) {t_gen:.2} s",
            ids[0].len() - 1
        );
    }
    Ok(())
}
