//! Issue 6 point 4: seconds per training step of the trainable encoders (forward in training
//! mode, a loss, backward), batch 64 at 64 px, at the shipped `--train-encoder` geometries, and
//! for Xception each way of computing the depthwise convolutions. The whole step of
//! `roundtrip train --train-encoder` (decoder and Adam included) is logged per epoch in
//! `train_log.jsonl` (`seconds`, `steps`).
//!
//! Run: `cargo run --release --example train_encoder_step -- [STEPS] [BATCH] [which...]` where
//! which is any of `vgg16`, `xception-kernel`, `xception-shifted`, `xception-grouped` (default:
//! all of them), or `decoder-N-H` for the merge decoder alone on N captions of 14 tokens with
//! hidden width H.

use std::time::Instant;

use candle_core::{Device, Tensor};
use roundtrip::models::trainable::vgg16::TrainVgg16;
use roundtrip::models::trainable::xception::TrainXception;
use roundtrip::models::trainable::{Depthwise, TrainableEncoder};
use roundtrip::models::{vgg16, xception};

fn batch(b: usize, s: usize, seed: u64) -> Tensor {
    let n = b * 3 * s * s;
    let v: Vec<f32> = (0..n)
        .map(|i| ((i as u64 + seed).wrapping_mul(2654435761) % 2001) as f32 / 1000.0 - 1.0)
        .collect();
    Tensor::from_vec(v, (b, 3, s, s), &Device::Cpu).unwrap()
}

fn time(name: &str, enc: &dyn TrainableEncoder, steps: usize, b: usize) {
    let s = enc.input_size();
    let run = |i: usize| {
        let x = batch(b, s, i as u64);
        let t0 = Instant::now();
        let f = enc.forward_t(&x, true).unwrap();
        let t1 = Instant::now();
        let loss = f.sqr().unwrap().mean_all().unwrap();
        let g = loss.backward().unwrap();
        let t2 = Instant::now();
        assert!(g.get(enc.store().vars()[0].1.as_tensor()).is_some());
        (t1 - t0, t2 - t1)
    };
    run(0); // warm-up
    let (mut f, mut bw) = (0.0, 0.0);
    for i in 0..steps {
        let (a, c) = run(i + 1);
        f += a.as_secs_f64();
        bw += c.as_secs_f64();
    }
    let n = steps as f64;
    println!(
        "{name:<20} batch {b} at {s} px: forward {:.3} s + backward {:.3} s = {:.3} s/step ({} threads)",
        f / n,
        bw / n,
        (f + bw) / n,
        candle_core::utils::get_num_threads()
    );
}

fn time_decoder(n: usize, hidden: usize, steps: usize) {
    use candle_nn::{VarBuilder, VarMap};
    use rand::SeedableRng;
    let dev = Device::Cpu;
    let cfg = roundtrip::models::lstm_decoder::Config {
        vocab_size: 40,
        feature_dim: 256,
        embed: hidden,
        hidden,
        dropout: 0.5,
        max_length: 15,
    };
    let vm = VarMap::new();
    let vb = VarBuilder::from_varmap(&vm, candle_core::DType::F32, &dev);
    let dec = roundtrip::models::lstm_decoder::LstmDecoder::new(vb, &cfg).unwrap();
    let feats = candle_core::Var::from_tensor(
        &batch(n, 16, 0)
            .reshape((n, 3 * 256))
            .unwrap()
            .narrow(1, 0, 256)
            .unwrap(),
    )
    .unwrap();
    let ids: Vec<u32> = (0..n * 14).map(|i| (i % 39 + 1) as u32).collect();
    let words = Tensor::from_vec(ids, (n, 14), &dev).unwrap();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let mut total = 0.0;
    for i in 0..=steps {
        let t0 = Instant::now();
        let logits = dec
            .forward(feats.as_tensor(), &words, Some(&mut rng))
            .unwrap();
        let loss = dec.loss(&logits, &words).unwrap();
        loss.backward().unwrap();
        if i > 0 {
            total += t0.elapsed().as_secs_f64();
        }
    }
    println!(
        "decoder {n} captions x 14 tokens, hidden {hidden}: {:.3} s/step (forward + backward)",
        total / steps as f64
    );
}

fn main() {
    roundtrip::tune_allocator();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let steps: usize = args.first().and_then(|a| a.parse().ok()).unwrap_or(5);
    let b: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(64);
    let which: Vec<&str> = if args.len() > 2 {
        args[2..].iter().map(String::as_str).collect()
    } else {
        vec![
            "vgg16",
            "xception-kernel",
            "xception-shifted",
            "xception-grouped",
        ]
    };
    let dev = Device::Cpu;
    for w in which {
        if let Some(rest) = w.strip_prefix("decoder-") {
            // decoder-CAPTIONS-HIDDEN: the merge decoder's forward + backward on CAPTIONS
            // captions of 14 tokens, vocabulary 40, 256-d features.
            let mut it = rest.split('-').map(|v| v.parse::<usize>().unwrap());
            let (n, h) = (it.next().unwrap(), it.next().unwrap());
            time_decoder(n, h, steps);
            continue;
        }
        match w {
            "vgg16" => {
                let m = TrainVgg16::init(&vgg16::Config::vgg16_shapes(), 0, &dev).unwrap();
                time(w, &m, steps, b);
            }
            _ => {
                let how = match w {
                    "xception-kernel" => Depthwise::Kernel,
                    "xception-shifted" => Depthwise::Shifted,
                    "xception-grouped" => Depthwise::Grouped,
                    _ => panic!("unknown `{w}`"),
                };
                let m = TrainXception::init(&xception::Config::xception_shapes(), 0, &dev)
                    .unwrap()
                    .with_depthwise(how);
                time(w, &m, steps, b);
            }
        }
    }
}
