//! `roundtrip train`: fits the merge-model decoder on cached encoder features of a dataset's
//! training split, with teacher forcing, Adam, host-seeded dropout and early stopping on the dev
//! loss. After every epoch the whole state (parameters, Adam moments, epoch, best dev loss) goes
//! into `checkpoint.safetensors` by an atomic rename, so a killed run resumes with `--resume`
//! from its last finished epoch and no file is ever half-written.

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use super::adam::Adam;
use super::encoder::{load_encoder, EncoderKind};
use super::features::{CacheStats, FeatureCache};
use super::model::{read_config, CaptionerConfig, EncoderSpec, TrainSettings, FORMAT};
use super::vocab::Vocab;
use crate::dataset::Dataset;
use crate::fsutil::{write_atomic, write_json};
use crate::hub::{Locator, ModelSource};
use crate::input_err;
use crate::models::lstm_decoder::{Config as DecoderConfig, LstmDecoder};

pub struct TrainRequest {
    pub encoder: EncoderKind,
    /// Encoder weights reference (default: the encoder's preset).
    pub weights: String,
    pub dataset: PathBuf,
    pub out: PathBuf,
    pub settings: TrainSettings,
    pub resume: bool,
    pub cache_dir: PathBuf,
    pub quiet: bool,
    pub device: Device,
}

/// One line of `train_log.jsonl`.
#[derive(Debug, Serialize)]
pub struct EpochLog {
    pub epoch: usize,
    pub train_loss: f32,
    pub dev_loss: f32,
    pub best: bool,
    pub seconds: f64,
}

pub struct TrainSummary {
    pub epochs_run: usize,
    pub best_dev_loss: f32,
    pub features: CacheStats,
    pub problems: usize,
}

fn validate(s: &TrainSettings) -> anyhow::Result<()> {
    if s.epochs == 0 || s.batch_size == 0 || s.embed == 0 || s.hidden == 0 {
        return Err(input_err!(
            "--epochs, --batch-size, --embed and --hidden must be at least 1"
        ));
    }
    if !(s.lr.is_finite() && s.lr > 0.0) {
        return Err(input_err!("--lr {} must be a positive number", s.lr));
    }
    if !(0.0..1.0).contains(&s.dropout) {
        return Err(input_err!("--dropout {} must lie in [0, 1)", s.dropout));
    }
    Ok(())
}

/// PyTorch's default initialisation, drawn on the host from `seed`: Linear and LSTM weights and
/// biases U(-1/sqrt(fan), 1/sqrt(fan)), embeddings N(0, 1).
fn init_decoder(cfg: &DecoderConfig, seed: u64, device: &Device) -> candle_core::Result<VarMap> {
    let varmap = VarMap::new();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let normal =
        rand_distr::Normal::new(0f32, 1.0).map_err(|e| candle_core::Error::Msg(e.to_string()))?;
    let shapes = [
        (
            "image_dense.weight",
            vec![cfg.hidden, cfg.feature_dim],
            cfg.feature_dim,
        ),
        ("image_dense.bias", vec![cfg.hidden], cfg.feature_dim),
        ("embedding.weight", vec![cfg.vocab_size, cfg.embed], 0),
        (
            "lstm.weight_ih_l0",
            vec![4 * cfg.hidden, cfg.embed],
            cfg.hidden,
        ),
        (
            "lstm.weight_hh_l0",
            vec![4 * cfg.hidden, cfg.hidden],
            cfg.hidden,
        ),
        ("lstm.bias_ih_l0", vec![4 * cfg.hidden], cfg.hidden),
        ("lstm.bias_hh_l0", vec![4 * cfg.hidden], cfg.hidden),
        (
            "decoder_dense.weight",
            vec![cfg.hidden, cfg.hidden],
            cfg.hidden,
        ),
        ("decoder_dense.bias", vec![cfg.hidden], cfg.hidden),
        (
            "output.weight",
            vec![cfg.vocab_size, cfg.hidden],
            cfg.hidden,
        ),
        ("output.bias", vec![cfg.vocab_size], cfg.hidden),
    ];
    {
        let mut data = varmap
            .data()
            .lock()
            .map_err(|_| candle_core::Error::Msg("poisoned var map".into()))?;
        for (name, shape, fan) in shapes {
            let n: usize = shape.iter().product();
            let v: Vec<f32> = if fan == 0 {
                (0..n)
                    .map(|_| rand_distr::Distribution::sample(&normal, &mut rng))
                    .collect()
            } else {
                let b = 1.0 / (fan as f32).sqrt();
                (0..n).map(|_| rng.random_range(-b..b)).collect()
            };
            data.insert(
                name.to_owned(),
                Var::from_tensor(&Tensor::from_vec(v, shape, device)?)?,
            );
        }
    }
    Ok(varmap)
}

/// Caption token ids of every (image, caption) pair of a split; images index into `features`.
fn samples(ds: &Dataset, names: &[String], vocab: &Vocab) -> Vec<(usize, Vec<u32>)> {
    names
        .iter()
        .enumerate()
        .flat_map(|(i, n)| ds.captions[n].iter().map(move |c| (i, vocab.encode(c))))
        .collect()
}

/// A padded batch: image rows, inputs ids[..-1] and targets ids[1..], post-padded with 0.
fn batch(
    items: &[&(usize, Vec<u32>)],
    device: &Device,
) -> candle_core::Result<(Tensor, Tensor, Tensor)> {
    let t = items
        .iter()
        .map(|(_, ids)| ids.len() - 1)
        .max()
        .unwrap_or(1);
    let mut inp = Vec::with_capacity(items.len() * t);
    let mut tgt = Vec::with_capacity(items.len() * t);
    for (_, ids) in items {
        for k in 0..t {
            inp.push(if k + 1 < ids.len() { ids[k] } else { 0 });
            tgt.push(ids.get(k + 1).copied().unwrap_or(0));
        }
    }
    let rows: Vec<u32> = items.iter().map(|(i, _)| *i as u32).collect();
    Ok((
        Tensor::new(rows, device)?,
        Tensor::from_vec(inp, (items.len(), t), device)?,
        Tensor::from_vec(tgt, (items.len(), t), device)?,
    ))
}

fn mean_loss(
    dec: &LstmDecoder,
    feats: &Tensor,
    data: &[(usize, Vec<u32>)],
    bs: usize,
    device: &Device,
) -> candle_core::Result<f32> {
    let (mut total, mut n) = (0f32, 0usize);
    for chunk in data.chunks(bs) {
        let refs: Vec<&(usize, Vec<u32>)> = chunk.iter().collect();
        let (rows, inp, tgt) = batch(&refs, device)?;
        let logits = dec.forward(&feats.index_select(&rows, 0)?, &inp, None)?;
        total += dec.loss(&logits, &tgt)?.to_scalar::<f32>()? * chunk.len() as f32;
        n += chunk.len();
    }
    Ok(total / n.max(1) as f32)
}

fn scalar(state: &HashMap<String, Tensor>, k: &str) -> anyhow::Result<f64> {
    Ok(state
        .get(k)
        .with_context(|| format!("checkpoint has no `{k}`"))?
        .to_vec1::<f64>()?
        .first()
        .copied()
        .unwrap_or(0.0))
}

pub fn train(req: &TrainRequest) -> anyhow::Result<TrainSummary> {
    let s = &req.settings;
    validate(s)?;
    let out = &req.out;
    let checkpoint = out.join("checkpoint.safetensors");
    if req.resume {
        if !checkpoint.is_file() {
            return Err(input_err!(
                "{} has no checkpoint.safetensors to resume from",
                out.display()
            ));
        }
    } else if out.join("config.json").exists() {
        return Err(input_err!(
            "{} already holds a captioner: pass --resume to continue its training, or choose another --out",
            out.display()
        ));
    }
    std::fs::create_dir_all(out)
        .map_err(|e| input_err!("cannot create output folder {}: {e}", out.display()))?;

    let ds = Dataset::load(&req.dataset)?;
    if !req.quiet {
        for p in ds.problems.iter().take(10) {
            eprintln!("warning: {p}");
        }
        if ds.problems.len() > 10 {
            eprintln!(
                "warning: ... {} more dataset problems (see config.json)",
                ds.problems.len() - 10
            );
        }
    }
    if ds.train.is_empty() || ds.dev.is_empty() {
        return Err(input_err!(
            "{}: the train and dev splits must not be empty",
            req.dataset.display()
        ));
    }
    let vocab = Vocab::build(
        ds.train
            .iter()
            .flat_map(|n| ds.captions[n].iter().map(String::as_str)),
    );

    let locator = Locator::from_env();
    let encoder = load_encoder(req.encoder, &req.weights, &locator, &req.device)?;
    let reference = match crate::hub::ModelRef::parse(&req.weights)?.source {
        ModelSource::Folder(p) => std::fs::canonicalize(&p).unwrap_or(p).display().to_string(),
        ModelSource::Hub { .. } => req.weights.clone(),
    };
    let decoder_cfg = DecoderConfig {
        vocab_size: vocab.len(),
        feature_dim: encoder.encoder.feature_dim(),
        embed: s.embed,
        hidden: s.hidden,
        dropout: s.dropout,
        max_length: vocab.max_length,
    };
    let counts: HashMap<String, usize> = ds.problem_counts();
    let config = CaptionerConfig {
        format: FORMAT.into(),
        version: 1,
        architecture: "merge-lstm".into(),
        encoder: EncoderSpec {
            kind: req.encoder,
            reference,
            record: serde_json::to_value(&encoder.record)?,
        },
        decoder: decoder_cfg.clone(),
        training: s.clone(),
        dataset: serde_json::json!({
            "path": std::fs::canonicalize(&req.dataset).unwrap_or(req.dataset.clone()).display().to_string(),
            "layout": ds.layout,
            "train_images": ds.train.len(), "dev_images": ds.dev.len(), "test_images": ds.test.len(),
            "problems": ds.problems.len(), "problem_kinds": counts,
        }),
    };
    if req.resume {
        let old = read_config(out)?;
        if old.decoder != config.decoder
            || old.encoder.kind != config.encoder.kind
            || old.training.seed != s.seed
        {
            return Err(input_err!(
                "{}: --resume needs the same encoder, dataset vocabulary and settings as the interrupted run",
                out.display()
            ));
        }
    }
    write_json(&out.join("config.json"), &config)?;
    vocab.save(&out.join("vocab.json"))?;

    // Features of the train and dev images, computed once and cached.
    let cache = FeatureCache::new(&req.cache_dir, &encoder);
    let names: Vec<String> = ds.train.iter().chain(&ds.dev).cloned().collect();
    let paths: Vec<PathBuf> = names.iter().map(|n| ds.image_path(n)).collect();
    let bar = crate::progress::bar(paths.len() as u64, "features", req.quiet);
    let (all_feats, stats) = cache.features(&encoder, &paths, 16, &req.device, &bar)?;
    bar.finish_and_clear();
    let train_feats = all_feats.narrow(0, 0, ds.train.len())?;
    let dev_feats = all_feats.narrow(0, ds.train.len(), ds.dev.len())?;
    let train_data = samples(&ds, &ds.train, &vocab);
    let dev_data = samples(&ds, &ds.dev, &vocab);

    let varmap = init_decoder(&decoder_cfg, s.seed, &req.device)?;
    let decoder = LstmDecoder::new(
        VarBuilder::from_varmap(&varmap, DType::F32, &req.device),
        &decoder_cfg,
    )?;
    let params: Vec<(String, Var)> = {
        let data = varmap
            .data()
            .lock()
            .map_err(|_| anyhow::anyhow!("poisoned var map"))?;
        data.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    };
    let mut adam = Adam::new(params.clone(), s.lr)?;
    let (mut start_epoch, mut best, mut since_best) = (1usize, f32::INFINITY, 0usize);
    let log_path = out.join("train_log.jsonl");
    let mut log_lines: Vec<String> = Vec::new();
    if req.resume {
        let state = candle_core::safetensors::load(&checkpoint, &req.device)
            .map_err(|e| input_err!("{} is not a valid checkpoint: {e}", checkpoint.display()))?;
        adam.restore(&state)?;
        start_epoch = scalar(&state, "epoch")? as usize + 1;
        best = scalar(&state, "best_dev_loss")? as f32;
        since_best = scalar(&state, "epochs_since_best")? as usize;
        // Keep the log lines of the epochs the checkpoint holds.
        if let Ok(text) = std::fs::read_to_string(&log_path) {
            log_lines = text
                .lines()
                .take(start_epoch - 1)
                .map(str::to_owned)
                .collect();
        }
    }
    let ep_bar = crate::progress::bar(s.epochs as u64, "epochs", req.quiet);
    ep_bar.set_position(start_epoch as u64 - 1);
    let mut epochs_run = start_epoch - 1;
    for epoch in start_epoch..=s.epochs {
        if since_best >= s.patience {
            break;
        }
        let t0 = Instant::now();
        // Each epoch's shuffling and dropout come from its own stream of the seed, so a resumed
        // run draws exactly what the uninterrupted one would have.
        let mut rng = ChaCha8Rng::seed_from_u64(s.seed);
        rng.set_stream(epoch as u64);
        let mut order: Vec<usize> = (0..train_data.len()).collect();
        order.shuffle(&mut rng);
        let (mut total, mut n) = (0f32, 0usize);
        for chunk in order.chunks(s.batch_size) {
            let items: Vec<&(usize, Vec<u32>)> = chunk.iter().map(|&i| &train_data[i]).collect();
            let (rows, inp, tgt) = batch(&items, &req.device)?;
            let logits =
                decoder.forward(&train_feats.index_select(&rows, 0)?, &inp, Some(&mut rng))?;
            let loss = decoder.loss(&logits, &tgt)?;
            adam.step(&loss.backward()?)?;
            total += loss.to_scalar::<f32>()? * chunk.len() as f32;
            n += chunk.len();
        }
        let train_loss = total / n.max(1) as f32;
        let dev_loss = mean_loss(&decoder, &dev_feats, &dev_data, s.batch_size, &req.device)?;
        let improved = dev_loss < best;
        if improved {
            best = dev_loss;
            since_best = 0;
            let weights: HashMap<String, Tensor> = params
                .iter()
                .map(|(k, v)| (k.clone(), v.as_tensor().detach()))
                .collect();
            let tmp = out.join(".model.safetensors.tmp");
            candle_core::safetensors::save(&weights, &tmp)?;
            std::fs::rename(&tmp, out.join("model.safetensors"))?;
        } else {
            since_best += 1;
        }
        let mut state = adam.state()?;
        for (k, v) in [
            ("epoch", epoch as f64),
            ("best_dev_loss", best as f64),
            ("epochs_since_best", since_best as f64),
        ] {
            state.insert(k.into(), Tensor::new(&[v], &req.device)?);
        }
        // The log line first, the checkpoint last: a kill between the two leaves one log line
        // too many, which a resume drops (it keeps the lines of the epochs the checkpoint holds).
        let line = EpochLog {
            epoch,
            train_loss,
            dev_loss,
            best: improved,
            seconds: t0.elapsed().as_secs_f64(),
        };
        log_lines.push(serde_json::to_string(&line)?);
        write_atomic(&log_path, (log_lines.join("\n") + "\n").as_bytes())?;
        let tmp = out.join(".checkpoint.safetensors.tmp");
        candle_core::safetensors::save(&state, &tmp)?;
        std::fs::rename(&tmp, &checkpoint)?;
        ep_bar.set_message(format!("loss {train_loss:.3} dev {dev_loss:.3}"));
        ep_bar.inc(1);
        if !req.quiet && !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
            let _ = writeln!(
                std::io::stderr(),
                "epoch {epoch}: loss {train_loss:.4} dev {dev_loss:.4}"
            );
        }
        epochs_run = epoch;
    }
    ep_bar.finish_and_clear();
    Ok(TrainSummary {
        epochs_run,
        best_dev_loss: best,
        features: stats,
        problems: ds.problems.len(),
    })
}
