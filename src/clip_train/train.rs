//! `roundtrip train-clip`: a small CLIP trained from scratch, contrastively, on a captioned
//! dataset in a Flickr8k layout, with the same model code as the published CLIP
//! ([`crate::models::clip`]), written as a model folder in transformers' layout.
//!
//! The epoch loop is the shared training driver ([`crate::train::driver`]), as for the captioner:
//! host-seeded ChaCha8 streams (stream 0 initialises the weights, stream `e` draws epoch `e`'s
//! shuffling, captions and crops), every file written by an atomic rename, the model with the
//! best dev loss kept in `model.safetensors`, the last epoch's whole state (weights, Adam
//! moments, counters) in `checkpoint.safetensors` so that `--resume` continues to exactly the
//! model an uninterrupted run gives.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::stderr::Bar;
use candle_core::{Device, Tensor, Var};
use rand::seq::SliceRandom;
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::data::{random_crop, Crop, Degrade, Images};
use super::eval::embed_gallery;
use super::init::{init_clip, Trainable};
use super::loss::{contrastive_loss, contrastive_loss_with_negatives, MAX_LOGIT_SCALE};
pub use super::settings::{check_clip_memory, hf_config_json, ClipTrainSettings};
use super::tokenizer::{self, WordTokenizer};
use crate::dataset::Dataset;
use crate::fsutil::{write_atomic, write_json, write_safetensors};
use crate::input_err;
use crate::metrics::retrieval::{retrieval, Retrieval};
use crate::models::clip::ClipTokenizer;
use crate::train::{
    checkpoint, Adam, BestCounter, Driver, Finished, ModelDir, Plan, Trainer, CHECKPOINT,
};

/// What `training.json` declares itself to be.
pub const TRAINING_FORMAT: &str = "roundtrip-clip-training";

pub struct TrainClipRequest {
    pub dataset: PathBuf,
    pub out: PathBuf,
    pub settings: ClipTrainSettings,
    /// Folder of negative images (`settings.negatives` of them per step).
    pub negatives: Option<PathBuf>,
    pub resume: bool,
    pub quiet: bool,
    /// Recorded in training.json.
    pub command_line: Vec<String>,
    pub device: Device,
}

/// One line of `train_log.jsonl`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClipEpochLog {
    pub epoch: usize,
    pub steps: usize,
    pub train_loss: f64,
    pub dev_loss: f64,
    /// Retrieval over the dev images with their first captions.
    pub dev: Retrieval,
    /// exp(logit_scale) at the end of the epoch.
    pub temperature_inverse: f64,
    /// Learning rate of the epoch's last step.
    pub lr: f64,
    pub best: bool,
    pub seconds: f64,
    pub seconds_per_step: f64,
}

pub struct ClipTrainSummary {
    pub epochs_run: usize,
    pub best_epoch: usize,
    pub best_dev_loss: f64,
    pub best_dev: Option<Retrieval>,
    pub parameters: usize,
    pub vocab_size: usize,
    pub seconds_per_step: f64,
    pub problems: usize,
}

/// Learning rate of step `step` (1-based) of `total`: linear warmup over `warmup` steps, then
/// cosine decay towards 0.
pub fn lr_at(base: f64, step: usize, total: usize, warmup: usize) -> f64 {
    if step <= warmup {
        return base * step as f64 / warmup as f64;
    }
    let p = (step - 1 - warmup) as f64 / (total - warmup).max(1) as f64;
    base * 0.5 * (1.0 + (std::f64::consts::PI * p).cos())
}

/// Batches of an epoch: chunks of `bs` from the shuffled order, a lone leftover item dropped
/// (a contrastive batch of one has nothing to contrast).
fn batches_per_epoch(n: usize, bs: usize) -> usize {
    n / bs + usize::from(n % bs >= 2)
}

/// [B, L] ids padded with the end token to the longest row.
fn pad_ids(rows: &[&Vec<u32>], pad: u32, device: &Device) -> candle_core::Result<Tensor> {
    let len = rows.iter().map(|r| r.len()).max().unwrap_or(1);
    let mut flat = Vec::with_capacity(rows.len() * len);
    for r in rows {
        flat.extend_from_slice(r);
        flat.extend(std::iter::repeat_n(pad, len - r.len()));
    }
    Tensor::from_vec(flat, (rows.len(), len), device)
}

/// Group index per row: rows with identical token ids share one.
fn groups(rows: &[&Vec<u32>]) -> Vec<usize> {
    let mut seen: HashMap<&Vec<u32>, usize> = HashMap::new();
    rows.iter()
        .map(|r| {
            let n = seen.len();
            *seen.entry(r).or_insert(n)
        })
        .collect()
}

/// Dev loss (contrastive, in chunks of the batch size, weighted by chunk) and retrieval of
/// dev images with their first captions.
struct DevSet {
    images: Images,
    captions: Vec<String>,
}

impl DevSet {
    fn evaluate(
        &self,
        t: &Trainable,
        tok: &ClipTokenizer,
        bs: usize,
        device: &Device,
    ) -> anyhow::Result<(f64, Retrieval)> {
        let idx: Vec<usize> = (0..self.captions.len()).collect();
        let (img, txt) = embed_gallery(
            &t.model,
            tok,
            &self.images,
            &idx,
            &self.captions,
            bs,
            device,
        )?;
        let scale = t.logit_scale()?.as_tensor().detach();
        let (mut total, mut n) = (0f64, 0usize);
        let mut start = 0;
        while start < idx.len() {
            let len = bs.min(idx.len() - start);
            let caps = &self.captions[start..start + len];
            let mut ids: HashMap<&String, usize> = HashMap::new();
            let g: Vec<usize> = caps
                .iter()
                .map(|c| {
                    let k = ids.len();
                    *ids.entry(c).or_insert(k)
                })
                .collect();
            let loss = contrastive_loss(
                &img.narrow(0, start, len)?,
                &txt.narrow(0, start, len)?,
                &scale,
                Some(&g),
            )?
            .to_scalar::<f32>()? as f64;
            total += loss * len as f64;
            n += len;
            start += len;
        }
        Ok((
            total / n.max(1) as f64,
            retrieval(&img, &txt, &self.captions)?,
        ))
    }
}

fn dataset_record(ds: &Dataset, path: &Path) -> Value {
    json!({
        "path": std::fs::canonicalize(path).unwrap_or(path.to_path_buf()).display().to_string(),
        "layout": ds.layout,
        "train_images": ds.train.len(),
        "dev_images": ds.dev.len(),
        "test_images": ds.test.len(),
        "problems": ds.problems.len(),
        "problem_kinds": ds.problem_counts(),
    })
}

/// Files of a model folder that an earlier attempt may have left, removed when a training
/// starts over (config.json and tokenizer.json are rewritten).
const CLIP_OUTPUTS: [&str; 5] = [
    "config.json",
    "tokenizer.json",
    "training.json",
    "model.safetensors",
    "train_log.jsonl",
];

/// What `--resume` must find unchanged in training.json.
fn resume_view(
    settings: &Value,
    tokenizer: &Value,
    train_images: &Value,
    negatives: &Value,
) -> Value {
    json!({
        "settings": settings,
        "tokenizer": tokenizer,
        "dataset": {"train_images": train_images},
        "negatives": negatives,
    })
}

/// The negatives folder's images (`*.png`, sorted by name) and its record for training.json:
/// path, count and a content fingerprint (the digest of every file's name and SHA-256), which
/// `--resume` checks.
fn load_negatives(dir: &Path) -> anyhow::Result<(Images, Value)> {
    let entries = std::fs::read_dir(dir)
        .map_err(|e| input_err!("--negatives {}: cannot read the folder: {e}", dir.display()))?;
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| input_err!("--negatives {}: {e}", dir.display()))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.to_ascii_lowercase().ends_with(".png") && entry.path().is_file() {
            names.push(name);
        }
    }
    names.sort();
    if names.is_empty() {
        return Err(input_err!(
            "--negatives {}: no .png images in the folder",
            dir.display()
        ));
    }
    let digests = names
        .iter()
        .map(|n| crate::fingerprint::file_sha256(&dir.join(n)))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let content = crate::fingerprint::combine(
        names
            .iter()
            .zip(&digests)
            .map(|(n, d)| (n.as_str(), d.as_str())),
    );
    let images = Images::load(dir, &names)?;
    let record = json!({
        "path": std::fs::canonicalize(dir).unwrap_or(dir.to_path_buf()).display().to_string(),
        "images": names.len(),
        "content": content,
    });
    Ok((images, record))
}

pub fn train_clip(req: &TrainClipRequest) -> anyhow::Result<ClipTrainSummary> {
    let s = &req.settings;
    s.validate()?;
    let out = &req.out;
    let training_path = out.join("training.json");

    // Everything is checked before MODEL_DIR is created or touched: settings, dataset (every
    // image decoded), tokenizer and memory.
    let ds = Dataset::load(&req.dataset)?;
    if !req.quiet {
        ds.warn_problems("training.json");
    }
    if ds.train.len() < 2 || ds.dev.is_empty() {
        return Err(input_err!(
            "{}: training needs at least 2 training images and 1 dev image (found {} and {})",
            req.dataset.display(),
            ds.train.len(),
            ds.dev.len()
        ));
    }
    let word_tok = tokenizer::build(
        ds.train
            .iter()
            .flat_map(|n| ds.captions[n].iter().map(String::as_str)),
    )?;
    match (&req.negatives, s.negatives) {
        (Some(_), 0) => return Err(input_err!("--negatives-per-batch must be at least 1")),
        (None, k) if k > 0 => {
            return Err(input_err!(
                "{k} negatives per batch need a folder of negative images (--negatives DIR)"
            ))
        }
        _ => {}
    }
    check_clip_memory(s, word_tok.vocab_size)?;
    let steps_per_epoch = batches_per_epoch(ds.train.len(), s.batch_size);
    let total_steps = steps_per_epoch.checked_mul(s.epochs).ok_or_else(|| {
        input_err!(
            "--epochs {} is too many: {steps_per_epoch} steps per epoch overflow the step counter",
            s.epochs
        )
    })?;
    let cfg = s.clip_config(&word_tok);
    let dataset = dataset_record(&ds, &req.dataset);
    let tokenizer_record = json!({
        "kind": "word-level",
        "vocab_size": word_tok.vocab_size,
        "words": word_tok.words.len(),
        "unk_id": word_tok.unk_id,
        "bos_id": word_tok.bos_id,
        "eos_id": word_tok.eos_id,
    });
    let train_images = Images::load(&ds.images_dir, &ds.train)?;
    let dev = DevSet {
        images: Images::load(&ds.images_dir, &ds.dev)?,
        captions: ds.dev.iter().map(|n| ds.captions[n][0].clone()).collect(),
    };
    let (negatives, negatives_record) = match &req.negatives {
        Some(dir) => {
            let (images, record) = load_negatives(dir)?;
            (Some(images), record)
        }
        None => (None, Value::Null),
    };

    // MODEL_DIR: created, locked for the whole training, swept; resumed or started (over).
    let mut model_dir = ModelDir::open(out, "train-clip", "model", req.resume, &CLIP_OUTPUTS, &[])?;
    let resume = model_dir.resume;
    let resumed_state = if resume {
        let old: Value = serde_json::from_slice(&crate::error::read_input_file(&training_path)?)
            .map_err(|e| input_err!("{} is not valid JSON: {e}", training_path.display()))?;
        let null = Value::Null;
        let before = resume_view(
            old.get("settings").unwrap_or(&null),
            old.get("tokenizer").unwrap_or(&null),
            old.pointer("/dataset/train_images").unwrap_or(&null),
            old.pointer("/negatives/content").unwrap_or(&null),
        );
        let now = resume_view(
            &serde_json::to_value(s)?,
            &tokenizer_record,
            dataset.get("train_images").unwrap_or(&null),
            negatives_record.get("content").unwrap_or(&null),
        );
        if let Some(diff) = crate::diff::first_difference(&before, &now) {
            return Err(input_err!(
                "{}: --resume needs the same dataset and settings as the interrupted run \
                 (see its training.json); changed: {diff}",
                out.display()
            ));
        }
        Some(checkpoint::read(&out.join(CHECKPOINT), &req.device)?)
    } else {
        None
    };
    let tok_path = out.join("tokenizer.json");
    write_atomic(&tok_path, word_tok.json.as_bytes())?;
    write_json(&out.join("config.json"), &hf_config_json(&cfg))?;
    let tok = ClipTokenizer::from_file(&tok_path, &cfg.text)?;

    // Token ids of every caption of every training image, and of the dev gallery.
    let mut truncated = 0usize;
    let splitter = tokenizer_for_count(&word_tok)?;
    let mut train_ids: Vec<Vec<Vec<u32>>> = Vec::with_capacity(ds.train.len());
    for n in &ds.train {
        let mut per = Vec::new();
        for c in &ds.captions[n] {
            let ids = tok.encode(c)?;
            if tokenizer::words(&splitter, c)?.len() + 2 > s.context {
                truncated += 1;
            }
            per.push(ids);
        }
        train_ids.push(per);
    }
    if truncated > 0 && !req.quiet {
        crate::stderr::warning(format_args!(
            "{truncated} training captions are longer than --context {} tokens and were truncated",
            s.context
        ));
    }

    let trainable = init_clip(&cfg, s.seed, &req.device)?;
    let adam = Adam::new(trainable.params.clone(), s.lr)?
        .with_beta2_eps(0.98, 1e-6)
        .with_weight_decay(s.weight_decay, |name, p| {
            p.rank() >= 2 && !name.ends_with("class_embedding")
        });
    let logit_scale = trainable.logit_scale()?.clone();
    let warmup = ((total_steps as f64 * s.warmup).ceil() as usize).min(total_steps);
    let mut trainer = ClipTrainer {
        s,
        trainable,
        adam,
        logit_scale,
        train_images,
        train_ids,
        negatives,
        dev,
        tok,
        pad: word_tok.eos_id,
        steps_per_epoch,
        total_steps,
        warmup,
        out,
        device: &req.device,
        step_seconds: (0.0, 0),
    };
    let plan = Plan {
        seed: s.seed,
        epochs: s.epochs,
        patience: None,
        counter: BestCounter::BestEpoch,
        ticks_per_epoch: steps_per_epoch,
        bar_prefix: "steps",
        quiet: req.quiet,
        device: &req.device,
    };
    // The checkpoint restored before training.json is rewritten.
    let driver = Driver::resume(&plan, &mut model_dir, resumed_state, &mut trainer)?;

    let mut record = json!({
        "format": TRAINING_FORMAT,
        "version": 1,
        "command_line": req.command_line,
        "seed": s.seed,
        "settings": s,
        "dataset": dataset,
        "negatives": negatives_record,
        "tokenizer": tokenizer_record,
        "parameters": trainer.trainable.parameter_count(),
        "threads": candle_core::utils::get_num_threads(),
        "steps_per_epoch": steps_per_epoch,
        "warmup_steps": warmup,
        "truncated_captions": truncated,
        "optimizer": {"kind": "AdamW", "beta1": 0.9, "beta2": 0.98, "eps": 1e-6,
                      "schedule": "linear warmup, cosine decay"},
        "finished": false,
    });
    write_json(&training_path, &record)?;

    let outcome = driver.run(&mut trainer)?;
    let log: Vec<ClipEpochLog> = outcome
        .log
        .iter()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let best_dev = log
        .iter()
        .find(|l| l.epoch == outcome.best_epoch)
        .map(|l| l.dev.clone());
    let (step_seconds, step_count) = trainer.step_seconds;
    let per_step = if step_count > 0 {
        step_seconds / step_count as f64
    } else {
        0.0
    };
    record["finished"] = json!(true);
    record["epochs_run"] = json!(outcome.epochs_run);
    record["best_epoch"] = json!(outcome.best_epoch);
    record["best_dev_loss"] = json!(outcome.best_dev_loss);
    record["dev_at_best"] = serde_json::to_value(&best_dev)?;
    record["final_temperature_inverse"] = json!(trainer.temperature_inverse()?);
    record["seconds_per_step_this_run"] = json!(per_step);
    record["seconds_total"] = json!(log.iter().map(|l| l.seconds).sum::<f64>());
    write_json(&training_path, &record)?;
    Ok(ClipTrainSummary {
        epochs_run: outcome.epochs_run,
        best_epoch: outcome.best_epoch,
        best_dev_loss: outcome.best_dev_loss,
        best_dev,
        parameters: trainer.trainable.parameter_count(),
        vocab_size: word_tok.vocab_size,
        seconds_per_step: per_step,
        problems: ds.problems.len(),
    })
}

/// A CLIP training as the driver sees it.
struct ClipTrainer<'a> {
    s: &'a ClipTrainSettings,
    trainable: Trainable,
    adam: Adam,
    logit_scale: Var,
    train_images: Images,
    /// Token ids of every caption of every training image.
    train_ids: Vec<Vec<Vec<u32>>>,
    /// Images that match no caption (`--negatives`).
    negatives: Option<Images>,
    dev: DevSet,
    tok: ClipTokenizer,
    /// The padding token (the end token).
    pad: u32,
    steps_per_epoch: usize,
    total_steps: usize,
    warmup: usize,
    out: &'a Path,
    device: &'a Device,
    /// Seconds of this run's optimiser steps, and their number.
    step_seconds: (f64, usize),
}

/// What an epoch's training reports.
struct ClipEpoch {
    steps: usize,
    train_loss: f64,
    seconds_per_step: f64,
}

impl ClipTrainer<'_> {
    /// exp(logit_scale): the inverse temperature.
    fn temperature_inverse(&self) -> anyhow::Result<f64> {
        Ok((self.logit_scale.as_tensor().to_scalar::<f32>()? as f64).exp())
    }
}

impl Trainer for ClipTrainer<'_> {
    type Trained = ClipEpoch;
    type Dev = Retrieval;
    type Log = ClipEpochLog;

    /// Shuffled batches of images, each with one of its captions drawn at random, a random
    /// crop and degradation; the learning rate follows the schedule step by step.
    fn train_epoch(
        &mut self,
        epoch: usize,
        rng: &mut ChaCha8Rng,
        bar: &Bar,
    ) -> anyhow::Result<ClipEpoch> {
        let s = self.s;
        let mut order: Vec<usize> = (0..self.train_ids.len()).collect();
        order.shuffle(rng);
        let (mut total, mut n, mut steps) = (0f64, 0usize, 0usize);
        let mut epoch_step_seconds = 0f64;
        for chunk in order.chunks(s.batch_size).filter(|c| c.len() >= 2) {
            let ts = Instant::now();
            let mut items: Vec<(usize, Crop, Degrade)> = Vec::with_capacity(chunk.len());
            let mut rows: Vec<&Vec<u32>> = Vec::with_capacity(chunk.len());
            for &i in chunk {
                let caps = &self.train_ids[i];
                rows.push(&caps[rng.random_range(0..caps.len())]);
                let img = &self.train_images.rgb[i];
                let (w, h) = (img.width() as usize, img.height() as usize);
                let crop = random_crop(w, h, s.crop_min, rng);
                items.push((i, crop, Degrade::draw(s.noise, s.blur, rng)));
            }
            let pixels = self
                .train_images
                .crops(&items, s.image_size, rng, self.device)?;
            // Negatives are drawn after the batch, so that trainings without them keep their
            // random streams; cropped and degraded as the batch, so that neither tells them apart.
            let negative_pixels = match &self.negatives {
                // train_clip checked that a folder comes with a count of at least 1.
                Some(pool) => {
                    let picks: Vec<(usize, Crop, Degrade)> = (0..s.negatives)
                        .map(|_| {
                            let i = rng.random_range(0..pool.rgb.len());
                            let (w, h) =
                                (pool.rgb[i].width() as usize, pool.rgb[i].height() as usize);
                            let crop = random_crop(w, h, s.crop_min, rng);
                            (i, crop, Degrade::draw(s.noise, s.blur, rng))
                        })
                        .collect();
                    Some(pool.crops(&picks, s.image_size, rng, self.device)?)
                }
                _ => None,
            };
            let ids = pad_ids(&rows, self.pad, self.device)?;
            let step = (epoch - 1) * self.steps_per_epoch + steps + 1;
            self.adam
                .set_lr(lr_at(s.lr, step, self.total_steps, self.warmup));
            let model = &self.trainable.model;
            // Crops and negatives through the image tower as one batch.
            let b = items.len();
            let (image, negative) = match &negative_pixels {
                Some(neg) => {
                    let all = model.image_features(&Tensor::cat(&[&pixels, neg], 0)?)?;
                    let m = all.dim(0)? - b;
                    (all.narrow(0, 0, b)?, Some(all.narrow(0, b, m)?))
                }
                None => (model.image_features(&pixels)?, None),
            };
            let loss = contrastive_loss_with_negatives(
                &image,
                &model.text_features(&ids)?,
                negative.as_ref(),
                self.logit_scale.as_tensor(),
                Some(&groups(&rows)),
            )?;
            self.adam.step(&loss.backward()?)?;
            self.logit_scale
                .set(&self.logit_scale.as_tensor().clamp(0.0, MAX_LOGIT_SCALE)?)?;
            let l = loss.to_scalar::<f32>()? as f64;
            total += l * chunk.len() as f64;
            n += chunk.len();
            steps += 1;
            epoch_step_seconds += ts.elapsed().as_secs_f64();
            self.step_seconds.0 += ts.elapsed().as_secs_f64();
            self.step_seconds.1 += 1;
            bar.set_message(format!("epoch {epoch} loss {l:.3}"));
            bar.inc(1);
        }
        Ok(ClipEpoch {
            steps,
            train_loss: total / n.max(1) as f64,
            seconds_per_step: epoch_step_seconds / steps.max(1) as f64,
        })
    }

    fn evaluate(&mut self) -> anyhow::Result<(f64, Retrieval)> {
        self.dev
            .evaluate(&self.trainable, &self.tok, self.s.batch_size, self.device)
    }

    fn save_best(&mut self, _epoch: usize) -> anyhow::Result<()> {
        write_safetensors(
            &self.out.join("model.safetensors"),
            &self.trainable.weights(),
        )
    }

    fn state_tensors(&self) -> anyhow::Result<HashMap<String, Tensor>> {
        Ok(self.adam.state()?)
    }

    fn load_state(&mut self, state: &HashMap<String, Tensor>) -> anyhow::Result<()> {
        Ok(self.adam.restore(state)?)
    }

    fn log_line(&self, done: Finished<ClipEpoch, Retrieval>) -> anyhow::Result<ClipEpochLog> {
        Ok(ClipEpochLog {
            epoch: done.epoch,
            steps: done.trained.steps,
            train_loss: done.trained.train_loss,
            dev_loss: done.dev_loss,
            dev: done.dev,
            temperature_inverse: self.temperature_inverse()?,
            lr: self.adam.lr(),
            best: done.best,
            seconds: done.seconds,
            seconds_per_step: done.trained.seconds_per_step,
        })
    }

    fn heartbeat(&self, l: &ClipEpochLog) -> String {
        format!(
            "epoch {}: loss {:.4} dev {:.4} dev top-1 i2t {:.3} t2i {:.3} ({:.2} s/step)",
            l.epoch,
            l.train_loss,
            l.dev_loss,
            l.dev.image_to_text_top1,
            l.dev.text_to_image_top1,
            l.seconds_per_step
        )
    }
}

/// The word splitter of a built tokenizer (for counting words).
fn tokenizer_for_count(t: &WordTokenizer) -> anyhow::Result<tokenizers::Tokenizer> {
    t.json
        .parse::<tokenizers::Tokenizer>()
        .map_err(|e| anyhow::anyhow!("{e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_warms_up_then_decays() {
        assert_eq!(lr_at(1.0, 1, 100, 10), 0.1);
        assert_eq!(lr_at(1.0, 10, 100, 10), 1.0);
        assert_eq!(lr_at(1.0, 11, 100, 10), 1.0);
        let last = lr_at(1.0, 100, 100, 10);
        assert!(last > 0.0 && last < 0.001, "{last}");
        assert!(lr_at(1.0, 55, 100, 10) < lr_at(1.0, 40, 100, 10));
        // No warmup.
        assert_eq!(lr_at(2.0, 1, 5, 0), 2.0);
    }

    #[test]
    fn batches_drop_only_a_lone_leftover() {
        assert_eq!(batches_per_epoch(48, 16), 3);
        assert_eq!(batches_per_epoch(49, 16), 3);
        assert_eq!(batches_per_epoch(50, 16), 4);
        assert_eq!(batches_per_epoch(5, 16), 1);
    }

    #[test]
    fn identical_captions_share_a_group() {
        let (a, b, c) = (vec![1, 2], vec![1, 3], vec![1, 2]);
        assert_eq!(groups(&[&a, &b, &c, &b]), [0, 1, 0, 1]);
    }
}
