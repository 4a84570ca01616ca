//! Piecewise timing of one W1 guidance step (see benches/guidance.rs), to see where the time goes:
//! SIREN forward, cutouts + resize, CLIP forward, CLIP + resize backward (to the image), SIREN
//! backward (from the image gradient), Adam. Splitting the backward at the image costs nothing
//! extra: the image gradient is what the SIREN's backward starts from anyway.
//! Run: `cargo run --release --example w1_profile -- taped|autograd [steps] [size layers hidden
//! cutouts]` (`autograd`: the SIREN through candle's autograd, as before the fused kernels).

use std::time::Instant;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{AdamW, Optimizer, ParamsAdamW, VarBuilder};
use rand::SeedableRng;
use roundtrip::generate::cutouts::{cutout_batch, deep_daze_cutouts, Resize};
use roundtrip::generate::SirenSettings as Settings;
use roundtrip::generate::{deep_daze_loss, l2_normalize, ImageEncoder};
use roundtrip::models::clip::{ClipConfig, ClipModel};
use roundtrip::models::siren::{coord_grid, Siren};
use roundtrip::weights::seeded_random_weights;

fn main() -> anyhow::Result<()> {
    roundtrip::tune_allocator();
    let taped = std::env::args().nth(1).as_deref() != Some("autograd");
    let args: Vec<usize> = std::env::args()
        .skip(2)
        .map(|a| a.parse())
        .collect::<Result<_, _>>()?;
    let steps = args.first().copied().unwrap_or(3);
    let mut s = Settings {
        size: 224,
        layers: 8,
        hidden: 256,
        cutouts: 8,
        ..Settings::default()
    };
    if args.len() == 5 {
        (s.size, s.layers, s.hidden, s.cutouts) = (args[1], args[2], args[3], args[4]);
    }
    let dev = Device::Cpu;
    let cfg = ClipConfig::vit_b32();
    let weights = seeded_random_weights(|vb| ClipModel::new(vb, &cfg), 0, 0.02, &dev)?;
    let clip = ClipModel::new(VarBuilder::from_tensors(weights, DType::F32, &dev), &cfg)?;
    let text = l2_normalize(&Tensor::ones((1, cfg.projection_dim), DType::F32, &dev)?)?;
    let (varmap, net) = Siren::init(&s.siren(), 0, &dev)?;
    let mut opt = AdamW::new(
        varmap.all_vars(),
        ParamsAdamW {
            lr: s.lr,
            weight_decay: 0.0,
            ..Default::default()
        },
    )?;
    let coords = coord_grid(s.size, s.size, &dev)?;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let names = [
        "siren fwd",
        "cutouts+resize",
        "clip fwd+loss",
        "clip bwd",
        "resize bwd",
        "siren bwd",
        "adam",
        "total",
    ];
    let mut sums = vec![0f64; names.len()];
    for step in 0..=steps {
        let mut t = [0f64; 8];
        let t0 = Instant::now();
        let mut lap = Instant::now();
        let mut mark = |i: usize, t: &mut [f64; 8]| {
            t[i] = lap.elapsed().as_secs_f64();
            lap = Instant::now();
        };
        let (image, tape) = if taped {
            let (i, t) = net.render_taped(&coords, s.size, s.size)?;
            (i, Some(t))
        } else {
            (net.render(&coords, s.size, s.size)?, None)
        };
        mark(0, &mut t);
        let leaf = Var::from_tensor(&image.detach())?;
        let cuts = deep_daze_cutouts(&mut rng, s.cutouts, s.size, s.lower, s.upper);
        let batch = cutout_batch(leaf.as_tensor(), &cuts, clip.input_size(), Resize::Bilinear)?;
        mark(1, &mut t);
        let (g, gimg) = match clip.encode_images_taped(&batch)? {
            Some((emb, back)) => {
                let ev = Var::from_tensor(&emb)?;
                let (loss, _) = deep_daze_loss(&text, ev.as_tensor(), s.averaging_weight)?;
                let _ = loss.to_scalar::<f32>()?;
                mark(2, &mut t);
                let g_emb = loss.backward()?.get(ev.as_tensor()).cloned();
                let g_batch = back(&g_emb.ok_or_else(|| anyhow::anyhow!("no emb gradient"))?)?;
                mark(3, &mut t);
                let g = batch.mul(&g_batch)?.sum_all()?.backward()?;
                let gimg = g
                    .get(leaf.as_tensor())
                    .ok_or_else(|| anyhow::anyhow!("no image gradient"))?
                    .clone();
                mark(4, &mut t);
                (g, gimg)
            }
            None => {
                let emb = clip.encode_images(&batch)?;
                let (loss, _) = deep_daze_loss(&text, &emb, s.averaging_weight)?;
                let _ = loss.to_scalar::<f32>()?;
                mark(2, &mut t);
                let g = loss.backward()?;
                let gimg = g
                    .get(leaf.as_tensor())
                    .ok_or_else(|| anyhow::anyhow!("no image gradient"))?
                    .clone();
                mark(3, &mut t);
                (g, gimg)
            }
        };
        let grads = match tape {
            Some(tape) => {
                let mut store = g;
                for (p, g) in net.parameters().iter().zip(tape.backward(&net, &gimg)?) {
                    store.insert(p, g);
                }
                store
            }
            None => (image * gimg)?.sum_all()?.backward()?,
        };
        mark(5, &mut t);
        opt.step(&grads)?;
        mark(6, &mut t);
        t[7] = t0.elapsed().as_secs_f64();
        if step > 0 {
            for (a, b) in sums.iter_mut().zip(t) {
                *a += b;
            }
        }
        eprintln!(
            "step {step}: {}",
            names
                .iter()
                .zip(t)
                .map(|(n, v)| format!("{n} {v:.3}"))
                .collect::<Vec<_>>()
                .join(" | ")
        );
    }
    println!(
        "{} mean of {steps} (size {} layers {} hidden {} cutouts {}):",
        if taped { "taped" } else { "autograd" },
        s.size,
        s.layers,
        s.hidden,
        s.cutouts
    );
    for (n, v) in names.iter().zip(&sums) {
        println!("  {n:16} {:.3} s", v / steps as f64);
    }
    Ok(())
}
