//! `roundtrip train`: fits the merge-model decoder on cached encoder features of a dataset's
//! training split, with teacher forcing, Adam, host-seeded dropout and early stopping on the dev
//! loss; or, with `--train-encoder`, trains a reduced VGG16- or Xception-shaped encoder from
//! scratch jointly with the decoder (Adam over both, the same loss, seeded light augmentation,
//! batches of images with all their captions). After every epoch the whole state (parameters,
//! Adam moments, BatchNorm running statistics, epoch, best dev loss) goes into
//! `checkpoint.safetensors` by an atomic rename, so a killed run resumes with `--resume` from its
//! last finished epoch to exactly the model an uninterrupted run gives, and no file is ever
//! half-written.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use super::adam::Adam;
use super::augment::{input_chw, Augmentation};
use super::encoder::{encoder_geometry, load_encoder, trainable_encoder, EncoderKind};
use super::features::{CacheStats, FeatureCache};
use super::model::{
    read_config, CaptionerConfig, EncoderSpec, TrainSettings, FORMAT, TRAINED_ENCODER_DIR,
    TRAINED_ENCODER_REFERENCE,
};
use super::vocab::Vocab;
use crate::dataset::Dataset;
use crate::fsutil::{sweep_temp_files, sync_dir, write_atomic, write_json, write_safetensors};
use crate::hub::{Locator, ModelSource};
use crate::input_err;
use crate::lock::DirLock;
use crate::models::lstm_decoder::{Config as DecoderConfig, LstmDecoder};
use crate::models::trainable::TrainableEncoder;

pub struct TrainRequest {
    pub encoder: EncoderKind,
    /// Frozen encoder weights reference (None: the encoder's preset). Not with
    /// `settings.train_encoder`.
    pub weights: Option<String>,
    /// With `settings.train_encoder`: the encoder geometry, a name, file or folder (see
    /// [`encoder_geometry`]; None: `shapes`).
    pub encoder_config: Option<String>,
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
    /// Optimiser steps of the epoch (its seconds include the dev loss).
    pub steps: usize,
}

pub struct TrainSummary {
    pub epochs_run: usize,
    pub best_dev_loss: f32,
    /// Feature extraction of a frozen encoder (None when the encoder was trained).
    pub features: Option<CacheStats>,
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
        .ok_or_else(|| input_err!("{CHECKPOINT} has no `{k}`"))?
        .to_vec1::<f64>()?
        .first()
        .copied()
        .unwrap_or(0.0))
}

/// The decoder and its optimiser, shared by both kinds of training.
struct Core {
    decoder: LstmDecoder,
    /// The decoder's parameters (names as in model.safetensors).
    params: Vec<(String, Var)>,
    adam: Adam,
}

impl Core {
    /// Writes the decoder's parameters to `out/model.safetensors`.
    fn save_decoder(&self, out: &Path) -> anyhow::Result<()> {
        let weights: HashMap<String, Tensor> = self
            .params
            .iter()
            .map(|(k, v)| (k.clone(), v.as_tensor().detach()))
            .collect();
        write_safetensors(&out.join("model.safetensors"), &weights)
    }
}

/// What the epoch loop trains.
trait Job {
    /// One epoch over the training split, drawing shuffling, augmentation and dropout from `rng`:
    /// the mean loss per caption and the number of optimiser steps.
    fn epoch(&mut self, rng: &mut ChaCha8Rng) -> anyhow::Result<(f32, usize)>;
    fn dev_loss(&self) -> anyhow::Result<f32>;
    /// Writes the current model as the best one into `out`.
    fn save_best(&self, out: &Path, epoch: usize) -> anyhow::Result<()>;
    /// Everything an exact resume needs (parameters, Adam moments, buffers).
    fn state(&self) -> anyhow::Result<HashMap<String, Tensor>>;
    fn restore(&mut self, state: &HashMap<String, Tensor>) -> anyhow::Result<()>;
}

/// The decoder on cached features of a frozen encoder; batches of (image, caption) pairs.
struct FrozenJob {
    core: Core,
    train_feats: Tensor,
    dev_feats: Tensor,
    train_data: Vec<(usize, Vec<u32>)>,
    dev_data: Vec<(usize, Vec<u32>)>,
    batch_size: usize,
    device: Device,
}

impl Job for FrozenJob {
    fn epoch(&mut self, rng: &mut ChaCha8Rng) -> anyhow::Result<(f32, usize)> {
        let mut order: Vec<usize> = (0..self.train_data.len()).collect();
        order.shuffle(rng);
        let (mut total, mut n, mut steps) = (0f32, 0usize, 0usize);
        for chunk in order.chunks(self.batch_size) {
            let items: Vec<&(usize, Vec<u32>)> =
                chunk.iter().map(|&i| &self.train_data[i]).collect();
            let (rows, inp, tgt) = batch(&items, &self.device)?;
            let feats = self.train_feats.index_select(&rows, 0)?;
            let logits = self.core.decoder.forward(&feats, &inp, Some(rng))?;
            let loss = self.core.decoder.loss(&logits, &tgt)?;
            self.core.adam.step(&loss.backward()?)?;
            total += loss.to_scalar::<f32>()? * chunk.len() as f32;
            n += chunk.len();
            steps += 1;
        }
        Ok((total / n.max(1) as f32, steps))
    }

    fn dev_loss(&self) -> anyhow::Result<f32> {
        Ok(mean_loss(
            &self.core.decoder,
            &self.dev_feats,
            &self.dev_data,
            self.batch_size,
            &self.device,
        )?)
    }

    fn save_best(&self, out: &Path, _epoch: usize) -> anyhow::Result<()> {
        self.core.save_decoder(out)
    }

    fn state(&self) -> anyhow::Result<HashMap<String, Tensor>> {
        Ok(self.core.adam.state()?)
    }

    fn restore(&mut self, state: &HashMap<String, Tensor>) -> anyhow::Result<()> {
        Ok(self.core.adam.restore(state)?)
    }
}

/// Prefix of the encoder's parameters among the optimiser's, and of its buffers, in
/// `checkpoint.safetensors`.
const ENCODER_PREFIX: &str = "encoder.";
const BUFFER_PREFIX: &str = "buffer.encoder.";

/// Encoder and decoder end to end; batches of images, each with all its captions.
struct EndToEndJob {
    core: Core,
    encoder: Box<dyn TrainableEncoder>,
    /// Training and dev images as RGB bytes at the encoder's input size.
    train_images: Vec<Vec<u8>>,
    dev_images: Vec<Vec<u8>>,
    /// Token ids of each training image's captions.
    train_captions: Vec<Vec<Vec<u32>>>,
    dev_data: Vec<(usize, Vec<u32>)>,
    augmentation: Option<Augmentation>,
    captions_per_image: Option<usize>,
    batch_size: usize,
    device: Device,
}

/// `n` items in consecutive batches of at most `bs`, as equal as possible (no batch of one image
/// for BatchNorm's statistics unless `n` is 1).
fn balanced_chunks(n: usize, bs: usize) -> Vec<std::ops::Range<usize>> {
    let batches = n.div_ceil(bs.max(1)).max(1);
    let (base, extra) = (n / batches, n % batches);
    let mut out = Vec::with_capacity(batches);
    let mut start = 0;
    for i in 0..batches {
        let len = base + usize::from(i < extra);
        out.push(start..start + len);
        start += len;
    }
    out
}

impl EndToEndJob {
    /// The encoder input [B, 3, S, S] of images `idx`, augmented from `rng` when given.
    fn inputs(
        &self,
        images: &[Vec<u8>],
        idx: &[usize],
        mut rng: Option<&mut ChaCha8Rng>,
    ) -> candle_core::Result<Tensor> {
        let s = self.encoder.input_size();
        let n = 3 * s * s;
        let mut data = vec![0f32; idx.len() * n];
        let norm = |v: f32, c: usize| self.encoder.normalise(v, c);
        for (out, &i) in data.chunks_exact_mut(n).zip(idx) {
            let aug = match (&self.augmentation, rng.as_deref_mut()) {
                (Some(a), Some(r)) => Some((a, r)),
                _ => None,
            };
            input_chw(&images[i], s, aug, &norm, out);
        }
        Tensor::from_vec(data, (idx.len(), 3, s, s), &self.device)
    }

    /// Eval-mode features of the dev images.
    fn dev_features(&self) -> candle_core::Result<Tensor> {
        let idx: Vec<usize> = (0..self.dev_images.len()).collect();
        let parts = idx
            .chunks(self.batch_size.max(1))
            .map(|c| {
                self.encoder
                    .forward_t(&self.inputs(&self.dev_images, c, None)?, false)
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        Tensor::cat(&parts, 0)
    }
}

impl Job for EndToEndJob {
    fn epoch(&mut self, rng: &mut ChaCha8Rng) -> anyhow::Result<(f32, usize)> {
        let mut order: Vec<usize> = (0..self.train_images.len()).collect();
        order.shuffle(rng);
        let (mut total, mut n, mut steps) = (0f32, 0usize, 0usize);
        for range in balanced_chunks(order.len(), self.batch_size) {
            let chunk = &order[range];
            let x = self.inputs(&self.train_images, chunk, Some(rng))?;
            let feats = self.encoder.forward_t(&x, true)?;
            let mut items: Vec<(usize, Vec<u32>)> = Vec::new();
            for (row, &i) in chunk.iter().enumerate() {
                let caps = &self.train_captions[i];
                match self.captions_per_image {
                    Some(k) if k < caps.len() => {
                        for j in rand::seq::index::sample(rng, caps.len(), k) {
                            items.push((row, caps[j].clone()));
                        }
                    }
                    _ => items.extend(caps.iter().map(|ids| (row, ids.clone()))),
                }
            }
            if items.is_empty() {
                continue;
            }
            let refs: Vec<&(usize, Vec<u32>)> = items.iter().collect();
            let (rows, inp, tgt) = batch(&refs, &self.device)?;
            let logits =
                self.core
                    .decoder
                    .forward(&feats.index_select(&rows, 0)?, &inp, Some(rng))?;
            let loss = self.core.decoder.loss(&logits, &tgt)?;
            self.core.adam.step(&loss.backward()?)?;
            total += loss.to_scalar::<f32>()? * items.len() as f32;
            n += items.len();
            steps += 1;
        }
        Ok((total / n.max(1) as f32, steps))
    }

    fn dev_loss(&self) -> anyhow::Result<f32> {
        Ok(mean_loss(
            &self.core.decoder,
            &self.dev_features()?,
            &self.dev_data,
            self.batch_size,
            &self.device,
        )?)
    }

    /// The encoder first, then the decoder: a run killed between the two renames has not
    /// written its checkpoint yet, so resuming redoes the epoch and both files again.
    fn save_best(&self, out: &Path, epoch: usize) -> anyhow::Result<()> {
        let about = format!(
            "Encoder trained end to end with the captioner in the parent folder by `roundtrip \
             train --train-encoder` (epoch {epoch}, the best dev loss). Tensor names are timm's; \
             `roundtrip` holds the geometry."
        );
        crate::models::trainable::save(
            self.encoder.as_ref(),
            &out.join(TRAINED_ENCODER_DIR),
            &about,
        )?;
        self.core.save_decoder(out)
    }

    fn state(&self) -> anyhow::Result<HashMap<String, Tensor>> {
        let mut state = self.core.adam.state()?;
        for (k, v) in self.encoder.store().buffers()? {
            state.insert(format!("{BUFFER_PREFIX}{k}"), v);
        }
        Ok(state)
    }

    fn restore(&mut self, state: &HashMap<String, Tensor>) -> anyhow::Result<()> {
        self.core.adam.restore(state)?;
        let buffers: HashMap<String, Tensor> = state
            .iter()
            .filter_map(|(k, v)| Some((k.strip_prefix(BUFFER_PREFIX)?.to_owned(), v.clone())))
            .collect();
        Ok(self.encoder.store().restore_buffers(&buffers)?)
    }
}

/// The images `names` as RGB bytes resized to `size` x `size` as the inference preprocessing
/// resizes them (PIL's nearest filter; unchanged when already that size).
fn load_images(ds: &Dataset, names: &[String], size: usize) -> anyhow::Result<Vec<Vec<u8>>> {
    names
        .iter()
        .map(|n| {
            let img = crate::imageops::open_rgb(&ds.image_path(n))?;
            Ok(crate::imageops::resize::pil_resize_nearest(&img, size, size).into_raw())
        })
        .collect()
}

/// Decodes every image of `paths` (in parallel), so that a corrupt file is refused (exit 2,
/// naming it) before any output is written; the first bad one in `paths` order is reported.
pub(crate) fn check_images(paths: &[PathBuf], quiet: bool) -> anyhow::Result<()> {
    use rayon::prelude::*;
    let bar = crate::stderr::bar(paths.len() as u64, "checking images", quiet);
    let results: Vec<anyhow::Result<()>> = paths
        .par_iter()
        .map(|p| {
            let r = crate::imageops::open_rgb(p).map(drop);
            bar.inc(1);
            r
        })
        .collect();
    bar.finish_and_clear();
    results.into_iter().collect()
}

/// The checkpoint of a model folder: its existence marks a training with a finished epoch.
pub(crate) const CHECKPOINT: &str = "checkpoint.safetensors";

/// Written into a model folder before anything else when a training starts from scratch, and
/// removed once its first checkpoint exists: a folder holding it has no finished epoch, so a
/// rerun starts over instead of refusing the half-started folder.
pub(crate) const STARTED_MARKER: &str = ".training-started";

/// A model folder created, locked for the whole training (released on drop) and swept of the
/// temporary files a killed run left, with what the training does in it.
pub(crate) struct ModelDir {
    path: PathBuf,
    /// Whether the training continues from the folder's checkpoint (else it starts from scratch).
    pub resume: bool,
    /// Whether the started marker is there (until the first checkpoint).
    marked: bool,
    _lock: DirLock,
}

impl ModelDir {
    /// Creates and locks `out` for `command`, sweeps its (and `subdirs`') temporary files, and
    /// decides: a folder with a checkpoint is resumed with `--resume` and refused without; one
    /// without a checkpoint is started over (one note on stderr when it held a half-started
    /// training or `--resume` was asked for; the `outputs` of the earlier attempt are removed),
    /// unless it holds a model (`model.safetensors`) that no interrupted start of ours wrote
    /// (a finished training whose checkpoint was left out), which is never overwritten. `what`
    /// names the kind of model in messages.
    pub(crate) fn open(
        out: &Path,
        command: &str,
        what: &str,
        resume: bool,
        outputs: &[&str],
        subdirs: &[&str],
    ) -> anyhow::Result<Self> {
        std::fs::create_dir_all(out)
            .map_err(|e| input_err!("cannot create output folder {}: {e}", out.display()))?;
        let lock = DirLock::acquire(out, command)?;
        sweep_temp_files(out);
        for d in subdirs {
            sweep_temp_files(&out.join(d));
        }
        let mut dir = Self {
            path: out.to_path_buf(),
            resume: false,
            marked: false,
            _lock: lock,
        };
        if out.join(CHECKPOINT).is_file() {
            if !resume {
                return Err(input_err!(
                    "{} already holds a {what}: pass --resume to continue its training, or choose another --out",
                    out.display()
                ));
            }
            // A marker left by a kill between the first checkpoint and the marker's removal.
            let _ = std::fs::remove_file(out.join(STARTED_MARKER));
            dir.resume = true;
            return Ok(dir);
        }
        let marker = out.join(STARTED_MARKER);
        let half_started = marker.exists();
        if !half_started && out.join("model.safetensors").exists() {
            return Err(input_err!(
                "{} holds a {what} (model.safetensors) but no {CHECKPOINT}: its training cannot be \
                 resumed, and it is not overwritten; choose another --out",
                out.display()
            ));
        }
        let leftovers = half_started || outputs.iter().any(|f| out.join(f).exists());
        if leftovers {
            crate::stderr::note(format_args!(
                "{} has no checkpoint yet (its training stopped before the first epoch \
                 finished): starting the training over",
                out.display()
            ));
        } else if resume {
            crate::stderr::note(format_args!(
                "{} has no checkpoint to resume from: starting the training from the beginning",
                out.display()
            ));
        }
        for f in outputs {
            let p = out.join(f);
            if p.is_file() {
                std::fs::remove_file(&p)
                    .with_context(|| format!("cannot remove {}", p.display()))?;
            }
        }
        write_atomic(
            &marker,
            format!(
                "roundtrip {command}: no epoch finished yet; a rerun starts over (removed with \
                 the first {CHECKPOINT})\n"
            )
            .as_bytes(),
        )?;
        dir.marked = true;
        Ok(dir)
    }

    /// Called after each checkpoint is written: the first one ends the half-started state.
    pub(crate) fn checkpoint_written(&mut self) -> anyhow::Result<()> {
        if self.marked {
            let marker = self.path.join(STARTED_MARKER);
            std::fs::remove_file(&marker)
                .with_context(|| format!("cannot remove {}", marker.display()))?;
            sync_dir(&self.path);
            self.marked = false;
        }
        Ok(())
    }
}

/// Bytes of one parameter during training: the value, its gradient and Adam's two moments.
const PARAMETER_BYTES: f64 = 16.0;

/// Bytes of bookkeeping per parameter tensor (its spec, variable, gradient and moments).
const TENSOR_OVERHEAD_BYTES: f64 = 1024.0;

/// The setting named by a memory refusal: the part of the estimate that dominates, with its
/// bytes.
fn dominant(parts: &[(String, f64)]) -> (String, f64) {
    let total: f64 = parts.iter().map(|(_, b)| b).sum();
    let name = parts
        .iter()
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .map(|(n, _)| n.clone())
        .unwrap_or_default();
    (name, total)
}

/// Floats of activations one image keeps for the backward in a trainable encoder of `geometry`
/// (each convolution's output before and after its activation, at its resolution; a lower
/// bound, so that only settings that cannot fit are refused), and its parameter and tensor
/// counts.
fn encoder_footprint(
    kind: EncoderKind,
    geometry: &serde_json::Value,
) -> anyhow::Result<(f64, (f64, f64))> {
    use crate::models::trainable::{vgg16 as tv, xception as tx};
    use crate::models::{vgg16, xception};
    // Parameters and tensors.
    let count = |specs: Vec<crate::models::trainable::Spec>| -> (f64, f64) {
        let params = specs
            .iter()
            .map(|s| s.shape.iter().map(|&d| d as f64).product::<f64>())
            .sum();
        (params, specs.len() as f64)
    };
    Ok(match kind {
        EncoderKind::Vgg16 => {
            let cfg: vgg16::Config = serde_json::from_value(geometry.clone())?;
            let mut side = cfg.image_size as f64;
            let mut floats = 3.0 * side * side;
            for stage in &cfg.stages {
                for &c in stage {
                    floats += 2.0 * c as f64 * side * side;
                }
                side /= 2.0;
            }
            floats += 4.0 * cfg.fc_dim as f64;
            (floats, count(tv::specs(&cfg)))
        }
        EncoderKind::Xception => {
            let cfg: xception::Config = serde_json::from_value(geometry.clone())?;
            let s = cfg.image_size as f64;
            let area = |d: f64| (s / d) * (s / d);
            let mut floats = 3.0 * s * s + 2.0 * (cfg.stem[0] + cfg.stem[1]) as f64 * area(2.0);
            let mut d = 2.0;
            for &c in &cfg.entry {
                // Two separable convolutions (depthwise and pointwise outputs, BatchNorm, ReLU).
                floats += 2.0 * 4.0 * c as f64 * area(d);
                d *= 2.0;
            }
            floats += cfg.middle_blocks as f64 * 3.0 * 4.0 * cfg.entry[2] as f64 * area(d);
            floats += 2.0 * 4.0 * cfg.exit as f64 * area(d);
            floats += 4.0 * (cfg.exit_convs[0] + cfg.exit_convs[1]) as f64 * area(2.0 * d);
            // The middle blocks are identical: counted from geometries of none and one, so
            // that an absurd `middle_blocks` is refused without listing its tensors.
            let with = |n: usize| {
                let mut c = cfg.clone();
                c.middle_blocks = n;
                count(tx::specs(&c))
            };
            let ((p0, t0), (p1, t1)) = (with(0), with(1));
            let n = cfg.middle_blocks as f64;
            (floats, (p0 + n * (p1 - p0), t0 + n * (t1 - t0)))
        }
    })
}

/// Refuses settings whose training step needs more memory than the machine has (exit 2,
/// naming the setting that dominates the estimate), before anything is allocated or written.
/// `captions_per_step` counts the captions of one batch; `encoder`: the per-image activation
/// floats and parameters of a trained encoder, with its input side.
fn check_training_memory(
    s: &TrainSettings,
    decoder: &DecoderConfig,
    captions_per_step: f64,
    encoder: Option<(f64, (f64, f64), usize)>,
    resident_bytes: f64,
    encoder_config: &str,
) -> anyhow::Result<()> {
    let (v, e, h, f, t) = (
        decoder.vocab_size as f64,
        decoder.embed as f64,
        decoder.hidden as f64,
        decoder.feature_dim as f64,
        decoder.max_length as f64,
    );
    let decoder_params = v * e + 4.0 * h * (e + h) + 8.0 * h + h * f + h * h + 2.0 * h + v * h + v;
    // Per caption and time step: embedding, LSTM gates and states, dense layers, logits with
    // their softmax and gradient.
    let per_caption = 4.0 * t * (e + 11.0 * h + 3.0 * v);
    let mut parts = vec![
        (
            format!("--embed {} and --hidden {}", s.embed, s.hidden),
            PARAMETER_BYTES * decoder_params,
        ),
        (
            format!("--batch-size {}", s.batch_size),
            captions_per_step * per_caption,
        ),
        ("the dataset".to_owned(), resident_bytes),
    ];
    if let Some((activations, (params, tensors), side)) = encoder {
        parts.push((
            format!("--encoder-config {encoder_config}"),
            PARAMETER_BYTES * params + TENSOR_OVERHEAD_BYTES * tensors,
        ));
        parts.push((
            format!(
                "--batch-size {} (images of {side} x {side} px)",
                s.batch_size
            ),
            4.0 * s.batch_size as f64 * activations,
        ));
    }
    let (setting, total) = dominant(&parts);
    crate::resources::check_memory(&setting, total)?;
    Ok(())
}

/// What `--resume` must find unchanged: the model's shape and vocabulary, the encoder, the seed
/// and what each epoch draws (`--epochs`, `--patience`, `--lr` and `--batch-size` may change).
fn resume_view(c: &CaptionerConfig) -> serde_json::Value {
    serde_json::json!({
        "encoder": {"kind": c.encoder.kind, "config": c.encoder.config},
        "decoder": c.decoder,
        "training": {
            "seed": c.training.seed,
            "train_encoder": c.training.train_encoder,
            "augmentation": c.training.augmentation,
            "captions_per_image": c.training.captions_per_image,
            "first_caption_only": c.training.first_caption_only,
        },
    })
}

/// Files of a captioner folder that an earlier attempt may have left, removed when a training
/// starts over (config.json and vocab.json are rewritten).
const CAPTIONER_OUTPUTS: [&str; 6] = [
    "config.json",
    "vocab.json",
    "model.safetensors",
    "train_log.jsonl",
    "encoder/model.safetensors",
    "encoder/config.json",
];

pub fn train(req: &TrainRequest) -> anyhow::Result<TrainSummary> {
    let s = &req.settings;
    validate(s)?;
    if s.train_encoder && req.weights.is_some() {
        return Err(input_err!(
            "--weights names a frozen encoder's weights; with --train-encoder the encoder starts \
             from random weights (choose its geometry with --encoder-config)"
        ));
    }
    if !s.train_encoder
        && (req.encoder_config.is_some()
            || s.augmentation.is_some()
            || s.captions_per_image.is_some())
    {
        return Err(input_err!(
            "--encoder-config, --captions-per-image and augmentation apply to --train-encoder only"
        ));
    }
    if s.captions_per_image == Some(0) {
        return Err(input_err!("--captions-per-image must be at least 1"));
    }
    let out = &req.out;
    let checkpoint = out.join(CHECKPOINT);

    // Everything is checked before MODEL_DIR is created or touched: settings, dataset (every
    // image it trains on decoded), encoder and memory.
    let mut ds = Dataset::load(&req.dataset)?;
    if !req.quiet {
        ds.warn_problems("config.json");
    }
    if s.first_caption_only {
        for caps in ds.captions.values_mut() {
            caps.truncate(1);
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
    let most_captions = ds
        .train
        .iter()
        .map(|n| ds.captions[n].len())
        .max()
        .unwrap_or(1);
    let images = (ds.train.len() + ds.dev.len()) as f64;
    let decoder_for = |feature_dim: usize| DecoderConfig {
        vocab_size: vocab.len(),
        feature_dim,
        embed: s.embed,
        hidden: s.hidden,
        dropout: s.dropout,
        max_length: vocab.max_length,
    };

    // The encoder: frozen (loaded) or trainable (initialised once its memory is known to fit).
    let locator = Locator::from_env();
    let encoder_config = req.encoder_config.as_deref().unwrap_or("shapes");
    let (frozen, trainable, encoder_spec) = if s.train_encoder {
        let geometry = encoder_geometry(req.encoder, encoder_config)?;
        let (activations, params) = encoder_footprint(req.encoder, &geometry)?;
        let side = geometry
            .get("image_size")
            .and_then(serde_json::Value::as_u64)
            .unwrap_or(0) as usize;
        let feature_dim = geometry
            .get("fc_dim")
            .or_else(|| geometry.pointer("/exit_convs/1"))
            .and_then(serde_json::Value::as_u64)
            .unwrap_or(0) as usize;
        let per_image = s
            .captions_per_image
            .unwrap_or(most_captions)
            .min(most_captions);
        check_training_memory(
            s,
            &decoder_for(feature_dim),
            s.batch_size as f64 * per_image as f64,
            Some((activations, params, side)),
            images * 3.0 * side as f64 * side as f64,
            encoder_config,
        )?;
        let enc = trainable_encoder(req.encoder, &geometry, None, s.seed, &req.device)?;
        let spec = EncoderSpec {
            kind: req.encoder,
            reference: TRAINED_ENCODER_REFERENCE.into(),
            record: serde_json::json!({
                "reference": TRAINED_ENCODER_REFERENCE,
                "source": "trained",
                "path": TRAINED_ENCODER_REFERENCE,
            }),
            config: Some(geometry),
        };
        (None, Some(enc), spec)
    } else {
        let weights = req
            .weights
            .clone()
            .unwrap_or_else(|| req.encoder.default_weights().to_owned());
        let encoder = load_encoder(req.encoder, &weights, &locator, &req.device)?;
        let feature_dim = encoder.encoder.feature_dim();
        check_training_memory(
            s,
            &decoder_for(feature_dim),
            s.batch_size as f64,
            None,
            images * feature_dim as f64 * 4.0,
            encoder_config,
        )?;
        let reference = match crate::hub::ModelRef::parse(&weights)?.source {
            ModelSource::Folder(p) => std::fs::canonicalize(&p).unwrap_or(p).display().to_string(),
            ModelSource::Hub { .. } => weights,
        };
        let spec = EncoderSpec {
            kind: req.encoder,
            reference,
            record: serde_json::to_value(&encoder.record)?,
            config: None,
        };
        (Some(encoder), None, spec)
    };
    let feature_dim = match (&frozen, &trainable) {
        (Some(e), _) => e.encoder.feature_dim(),
        (_, Some(t)) => t.feature_dim(),
        _ => unreachable!("one encoder"),
    };
    let decoder_cfg = decoder_for(feature_dim);
    // Every image the training reads, decoded: the trained encoder's are kept (resized), a
    // frozen encoder's are checked here and read again for their features.
    let loaded = match &trainable {
        Some(enc) => {
            let size = enc.input_size();
            Some((
                load_images(&ds, &ds.train, size)?,
                load_images(&ds, &ds.dev, size)?,
            ))
        }
        None => {
            let paths: Vec<PathBuf> = ds
                .train
                .iter()
                .chain(&ds.dev)
                .map(|n| ds.image_path(n))
                .collect();
            check_images(&paths, req.quiet)?;
            None
        }
    };
    let counts: HashMap<String, usize> = ds.problem_counts();
    let config = CaptionerConfig {
        format: FORMAT.into(),
        version: 1,
        architecture: "merge-lstm".into(),
        encoder: encoder_spec,
        decoder: decoder_cfg.clone(),
        training: s.clone(),
        dataset: serde_json::json!({
            "path": std::fs::canonicalize(&req.dataset).unwrap_or(req.dataset.clone()).display().to_string(),
            "layout": ds.layout,
            "train_images": ds.train.len(), "dev_images": ds.dev.len(), "test_images": ds.test.len(),
            "problems": ds.problems.len(), "problem_kinds": counts,
        }),
    };

    // MODEL_DIR: created, locked for the whole training, swept; resumed or started (over).
    let mut model_dir = ModelDir::open(
        out,
        "train",
        "captioner",
        req.resume,
        &CAPTIONER_OUTPUTS,
        &[TRAINED_ENCODER_DIR],
    )?;
    let resume = model_dir.resume;
    let resumed_state = if resume {
        let old = read_config(out)?;
        if let Some(diff) = crate::diff::first_difference(&resume_view(&old), &resume_view(&config))
        {
            return Err(input_err!(
                "{}: --resume needs the same encoder, dataset vocabulary and settings as the \
                 interrupted run; changed: {diff}",
                out.display()
            ));
        }
        Some(crate::fsutil::read_checkpoint(&checkpoint, &req.device)?)
    } else {
        None
    };
    write_json(&out.join("config.json"), &config)?;
    vocab.save(&out.join("vocab.json"))?;

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
    let dev_data = samples(&ds, &ds.dev, &vocab);
    let mut features = None;
    let mut job: Box<dyn Job> = match (frozen, trainable, loaded) {
        (Some(encoder), _, _) => {
            // Features of the train and dev images, computed once and cached.
            let cache = FeatureCache::new(&req.cache_dir, &encoder);
            let names: Vec<String> = ds.train.iter().chain(&ds.dev).cloned().collect();
            let paths: Vec<PathBuf> = names.iter().map(|n| ds.image_path(n)).collect();
            let bar = crate::stderr::bar(paths.len() as u64, "features", req.quiet);
            let (all_feats, stats) = cache.features(&encoder, &paths, 16, &req.device, &bar)?;
            bar.finish_and_clear();
            features = Some(stats);
            Box::new(FrozenJob {
                core: Core {
                    adam: Adam::new(params.clone(), s.lr)?,
                    decoder,
                    params,
                },
                train_feats: all_feats.narrow(0, 0, ds.train.len())?,
                dev_feats: all_feats.narrow(0, ds.train.len(), ds.dev.len())?,
                train_data: samples(&ds, &ds.train, &vocab),
                dev_data,
                batch_size: s.batch_size,
                device: req.device.clone(),
            })
        }
        (_, Some(encoder), Some((train_images, dev_images))) => {
            let mut all = params.clone();
            all.extend(
                encoder
                    .store()
                    .vars()
                    .iter()
                    .map(|(k, v)| (format!("{ENCODER_PREFIX}{k}"), v.clone())),
            );
            Box::new(EndToEndJob {
                core: Core {
                    adam: Adam::new(all, s.lr)?,
                    decoder,
                    params,
                },
                train_images,
                dev_images,
                train_captions: ds
                    .train
                    .iter()
                    .map(|n| ds.captions[n].iter().map(|c| vocab.encode(c)).collect())
                    .collect(),
                dev_data,
                augmentation: s.augmentation,
                captions_per_image: s.captions_per_image,
                batch_size: s.batch_size,
                device: req.device.clone(),
                encoder,
            })
        }
        _ => unreachable!("one encoder"),
    };

    let (mut start_epoch, mut best, mut since_best) = (1usize, f32::INFINITY, 0usize);
    let log_path = out.join("train_log.jsonl");
    let mut log_lines: Vec<String> = Vec::new();
    if let Some(state) = resumed_state {
        job.restore(&state)
            .map_err(|e| input_err!("{}: {e}", checkpoint.display()))?;
        start_epoch = (scalar(&state, "epoch")? as usize).saturating_add(1);
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
    let ep_bar = crate::stderr::bar(s.epochs as u64, "epochs", req.quiet);
    ep_bar.set_position(start_epoch as u64 - 1);
    let mut epochs_run = start_epoch - 1;
    for epoch in start_epoch..=s.epochs {
        if since_best >= s.patience {
            break;
        }
        let t0 = Instant::now();
        // Each epoch's shuffling, augmentation and dropout come from its own stream of the
        // seed, so a resumed run draws exactly what the uninterrupted one would have.
        let mut rng = ChaCha8Rng::seed_from_u64(s.seed);
        rng.set_stream(epoch as u64);
        let (train_loss, steps) = job.epoch(&mut rng)?;
        let dev_loss = job.dev_loss()?;
        let improved = dev_loss < best;
        if improved {
            best = dev_loss;
            since_best = 0;
            job.save_best(out, epoch)?;
        } else {
            since_best += 1;
        }
        let mut state = job.state()?;
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
            steps,
        };
        log_lines.push(serde_json::to_string(&line)?);
        write_atomic(&log_path, (log_lines.join("\n") + "\n").as_bytes())?;
        write_safetensors(&checkpoint, &state)?;
        model_dir.checkpoint_written()?;
        ep_bar.set_message(format!("loss {train_loss:.3} dev {dev_loss:.3}"));
        ep_bar.inc(1);
        crate::stderr::heartbeat(
            req.quiet,
            format_args!(
                "epoch {epoch}: loss {train_loss:.4} dev {dev_loss:.4} ({:.1} s, {steps} steps)",
                line.seconds
            ),
        );
        epochs_run = epoch;
    }
    ep_bar.finish_and_clear();
    Ok(TrainSummary {
        epochs_run,
        best_dev_loss: best,
        features,
        problems: ds.problems.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::balanced_chunks;

    #[test]
    fn balanced_chunks_cover_everything_evenly() {
        for (n, bs) in [(49, 16), (48, 16), (1, 16), (17, 16), (100, 7), (0, 4)] {
            let c = balanced_chunks(n, bs);
            assert_eq!(c.first().map_or(0, |r| r.start), 0);
            assert_eq!(c.last().map_or(0, |r| r.end), n);
            assert!(c.windows(2).all(|w| w[0].end == w[1].start));
            assert!(c.iter().all(|r| r.len() <= bs));
            let (lo, hi) = (
                c.iter().map(|r| r.len()).min().unwrap(),
                c.iter().map(|r| r.len()).max().unwrap(),
            );
            assert!(hi - lo <= 1, "{n} {bs}: {c:?}");
            assert_eq!(c.len(), n.div_ceil(bs).max(1));
        }
    }
}
