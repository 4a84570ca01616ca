//! `roundtrip train-gan`: the GAN's training loop on the shared driver ([`crate::train`]): hinge
//! loss, Adam with beta1 0 and beta2 0.999 (BigGAN's), separate learning rates, `d_steps` D steps
//! per G step, an EMA of the generator, DiffAugment on real and fake images. One epoch is one pass
//! over the shuffled training images in D batches (a leftover smaller than a batch is dropped).
//! Classes: the multi-hot vector of each image's first caption parsed by the shapes grammar
//! (images whose caption does not parse are left out and counted).
//!
//! No dev loss ranks GAN generators, so no epoch is "best": the model is the last epoch's EMA
//! generator, written when the training ends with its **standing statistics** (the EMA generator
//! run with batch statistics over `standing_samples` samples at each truncation k / (n_stats - 1),
//! averaged: the per-truncation rows the published checkpoints store). The log reports, per epoch,
//! how well D separates held-out real images from the live generator's (`dev_auc`: the share of
//! (real, fake) pairs D scores real above fake; 0.5 is chance).
//!
//! MODEL_DIR: `config.json` (pytorch-pretrained-BigGAN's keys plus `class_names`),
//! `model.safetensors` (the published tensor names), `training.json`, `train_log.jsonl`,
//! `checkpoint.safetensors` (G, D, EMA, both Adams' moments, every u / v and running statistic).
//! `--resume` needs the same settings but `--epochs` (which may extend or end a training) and the
//! standing statistics' `--n-stats` / `--standing-samples`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::stderr::Bar;
use candle_core::{Device, Tensor};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::diffaug::{augment, Draws};
use super::generator::BnStats;
use super::{normals, Discriminator, GanSettings, Generator, Mode};
use crate::dataset::Dataset;
use crate::fsutil::{write_json, write_safetensors};
use crate::input_err;
use crate::train::{
    checkpoint, Adam, BestCounter, Driver, Finished, ModelDir, Plan, Trainer, CHECKPOINT,
};

pub const TRAINING_FORMAT: &str = "roundtrip-gan-training";

pub struct TrainGanRequest {
    pub dataset: PathBuf,
    pub out: PathBuf,
    pub settings: GanSettings,
    pub resume: bool,
    pub quiet: bool,
    pub command_line: Vec<String>,
}

pub struct GanTrainSummary {
    pub epochs_run: usize,
    pub g_parameters: usize,
    pub d_parameters: usize,
    pub train_images: usize,
    pub unparsed: usize,
    pub seconds_per_step: f64,
    pub last_dev_auc: Option<f64>,
}

/// One line of `train_log.jsonl`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GanEpochLog {
    pub epoch: usize,
    pub d_steps: usize,
    pub g_steps: usize,
    pub d_loss: f64,
    pub g_loss: f64,
    /// Share of (held-out real, fake) pairs that D scores real above fake (0.5: chance).
    pub dev_auc: f64,
    pub dev_d_real: f64,
    pub dev_d_fake: f64,
    pub seconds: f64,
    /// Seconds per D step (G steps included).
    pub seconds_per_step: f64,
}

/// Images (CHW in [-1, 1]) with their class vectors.
pub struct Images {
    pub size: usize,
    pub pixels: Vec<Vec<f32>>,
    pub classes: Vec<Vec<f32>>,
}

impl Images {
    /// The images of `names` whose first caption parses (resized to `size` when needed); the
    /// names of those that do not.
    pub fn load(
        ds: &Dataset,
        names: &[String],
        size: usize,
    ) -> anyhow::Result<(Self, Vec<String>)> {
        let mut out = Self {
            size,
            pixels: Vec::new(),
            classes: Vec::new(),
        };
        let mut unparsed = Vec::new();
        for n in names {
            let first = ds.captions.get(n).and_then(|c| c.first());
            let Some(scene) = first.and_then(|c| crate::shapes::grammar::parse(c).ok()) else {
                unparsed.push(n.clone());
                continue;
            };
            let path = ds.image_path(n);
            let img = image::open(&path)
                .map_err(|e| input_err!("{}: not a readable image: {e}", path.display()))?
                .to_rgb8();
            let img = if img.width() as usize != size || img.height() as usize != size {
                image::imageops::resize(
                    &img,
                    size as u32,
                    size as u32,
                    image::imageops::FilterType::Triangle,
                )
            } else {
                img
            };
            let raw = img.as_raw();
            let mut chw = vec![0f32; 3 * size * size];
            for (p, px) in raw.chunks_exact(3).enumerate() {
                for c in 0..3 {
                    chw[c * size * size + p] = px[c] as f32 / 127.5 - 1.0;
                }
            }
            out.pixels.push(chw);
            out.classes.push(crate::shapes::classes::multi_hot(&scene));
        }
        Ok((out, unparsed))
    }

    pub fn len(&self) -> usize {
        self.pixels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pixels.is_empty()
    }

    /// Images [3, B, S, S] (CBHW) and classes [B, num_classes] of `idx`.
    pub fn batch(&self, idx: &[usize], device: &Device) -> candle_core::Result<(Tensor, Tensor)> {
        let (b, p) = (idx.len(), self.size * self.size);
        let mut x = vec![0f32; 3 * b * p];
        for (j, &i) in idx.iter().enumerate() {
            for c in 0..3 {
                x[(c * b + j) * p..(c * b + j + 1) * p]
                    .copy_from_slice(&self.pixels[i][c * p..(c + 1) * p]);
            }
        }
        let x = Tensor::from_vec(x, (3, b, self.size, self.size), device)?;
        Ok((x, self.class_batch(idx, device)?))
    }

    pub fn class_batch(&self, idx: &[usize], device: &Device) -> candle_core::Result<Tensor> {
        let nc = self.classes.first().map_or(0, Vec::len);
        let y: Vec<f32> = idx
            .iter()
            .flat_map(|&i| self.classes[i].iter().copied())
            .collect();
        Tensor::from_vec(y, (idx.len(), nc), device)
    }
}

const GAN_OUTPUTS: [&str; 4] = [
    "config.json",
    "training.json",
    "model.safetensors",
    "train_log.jsonl",
];

/// config.json: pytorch-pretrained-BigGAN's keys, plus the class names (the config's own).
pub fn config_json(cfg: &crate::models::biggan::Config) -> anyhow::Result<Value> {
    Ok(serde_json::to_value(cfg)?)
}

pub fn train_gan(req: &TrainGanRequest) -> anyhow::Result<GanTrainSummary> {
    let s = &req.settings;
    s.validate()?;
    let device = Device::Cpu;
    let out = &req.out;
    let training_path = out.join("training.json");
    // Checked before MODEL_DIR is touched: settings, dataset, images, captions.
    if !req.dataset.is_dir() {
        return Err(input_err!(
            "--dataset {}: no such folder (expected a dataset in a Flickr8k layout, as `roundtrip shapes dataset` writes)",
            req.dataset.display()
        ));
    }
    let ds = Dataset::load(&req.dataset)?;
    if !req.quiet {
        ds.warn_problems("training.json");
    }
    let (train, unparsed) = Images::load(&ds, &ds.train, s.image_size)?;
    let (dev, _) = Images::load(&ds, &ds.dev, s.image_size)?;
    if !unparsed.is_empty() && !req.quiet {
        crate::stderr::warning(format_args!(
            "{} training images left out: their first caption is not in the shapes grammar (first: {})",
            unparsed.len(),
            unparsed[0]
        ));
    }
    if train.len() < s.batch_size || dev.len() < 2 {
        return Err(input_err!(
            "{}: training needs at least --batch-size {} training images and 2 dev images whose \
             first captions parse (found {} and {})",
            req.dataset.display(),
            s.batch_size,
            train.len(),
            dev.len()
        ));
    }
    let cfg = s.g_config();
    let mut model_dir = ModelDir::open(out, "train-gan", "GAN", req.resume, &GAN_OUTPUTS, &[])?;
    let dataset_record = json!({
        "path": std::fs::canonicalize(&req.dataset).unwrap_or(req.dataset.clone()).display().to_string(),
        "train_images": train.len(),
        "dev_images": dev.len(),
        "unparsed_captions": unparsed.len(),
    });
    let resumed = if model_dir.resume {
        let old: Value = serde_json::from_slice(&crate::error::read_input_file(&training_path)?)
            .map_err(|e| input_err!("{} is not valid JSON: {e}", training_path.display()))?;
        // `--epochs` may change: a resume can extend a training, or stop it where it is (an
        // `--epochs` at or below the epochs done writes the model from the last checkpoint). So
        // may the standing statistics' settings, which only the written model depends on.
        let view = |settings: Option<&Value>, train_images: Option<&Value>| {
            let mut settings = settings.cloned().unwrap_or(Value::Null);
            if let Some(m) = settings.as_object_mut() {
                for free in ["epochs", "n_stats", "standing_samples"] {
                    m.remove(free);
                }
            }
            json!({"settings": settings, "train_images": train_images.cloned().unwrap_or(Value::Null)})
        };
        let before = view(old.get("settings"), old.pointer("/dataset/train_images"));
        let now = view(Some(&serde_json::to_value(s)?), Some(&json!(train.len())));
        if let Some(diff) = crate::diff::first_difference(&before, &now) {
            return Err(input_err!(
                "{}: --resume needs the same dataset and settings as the interrupted run \
                 (see its training.json); changed: {diff}",
                out.display()
            ));
        }
        Some(checkpoint::read(&out.join(CHECKPOINT), &device)?)
    } else {
        None
    };
    write_json(&out.join("config.json"), &config_json(&cfg)?)?;

    let steps = train.len() / s.batch_size;
    let mut trainer = GanTrainer {
        s,
        nets: GanNets::new(s, &device)?,
        train,
        dev,
        steps,
        device: device.clone(),
        step_seconds: (0.0, 0),
        last_auc: None,
    };
    let plan = Plan {
        seed: s.seed,
        epochs: s.epochs,
        patience: None,
        counter: BestCounter::BestEpoch,
        ticks_per_epoch: steps,
        bar_prefix: "steps",
        quiet: req.quiet,
        device: &device,
    };
    let driver = Driver::resume(&plan, &mut model_dir, resumed, &mut trainer)?;
    let mut record = json!({
        "format": TRAINING_FORMAT,
        "version": 1,
        "command_line": req.command_line,
        "seed": s.seed,
        "settings": s,
        "dataset": dataset_record,
        "g_parameters": trainer.nets.g.store.count(),
        "d_parameters": trainer.nets.d.store.count(),
        "threads": candle_core::utils::get_num_threads(),
        "steps_per_epoch": steps,
        "optimizer": {"kind": "Adam", "beta1": 0.0, "beta2": 0.999, "eps": 1e-6},
        "loss": "hinge",
        "finished": false,
    });
    write_json(&training_path, &record)?;
    let outcome = driver.run(&mut trainer)?;

    // The model: the EMA generator with its standing statistics.
    let rows = standing_stats(&mut trainer.nets.ema, &trainer.train, s)?;
    let tensors = trainer.nets.ema.inference_tensors(&rows)?;
    write_safetensors(&out.join("model.safetensors"), &tensors)?;
    let (sec, n) = trainer.step_seconds;
    let per_step = if n > 0 { sec / n as f64 } else { 0.0 };
    record["finished"] = json!(true);
    record["epochs_run"] = json!(outcome.epochs_run);
    record["g_steps"] = json!(trainer.nets.g_steps);
    record["seconds_per_step_this_run"] = json!(per_step);
    write_json(&training_path, &record)?;
    Ok(GanTrainSummary {
        epochs_run: outcome.epochs_run,
        g_parameters: trainer.nets.g.store.count(),
        d_parameters: trainer.nets.d.store.count(),
        train_images: trainer.train.len(),
        unparsed: unparsed.len(),
        seconds_per_step: per_step,
        last_dev_auc: trainer.last_auc,
    })
}

/// Per truncation k / (n_stats - 1), the EMA generator's BatchNorm statistics averaged over
/// `standing_samples` samples (z truncated normal at that truncation, classes of random training
/// images), as BigGAN's "standing statistics"; seeded by the training's seed (stream n_stats+).
pub fn standing_stats(
    g: &mut Generator,
    images: &Images,
    s: &GanSettings,
) -> anyhow::Result<Vec<Vec<BnStats>>> {
    let device = g.store.device.clone();
    let mut rows = Vec::with_capacity(s.n_stats);
    for k in 0..s.n_stats {
        let t = k as f64 / (s.n_stats - 1) as f64;
        let mut rng = ChaCha8Rng::seed_from_u64(s.seed ^ 0x5747_414e_4449_4e47);
        rng.set_stream(k as u64);
        let mut sum: Option<Vec<BnStats>> = None;
        let mut batches = 0usize;
        let mut left = s.standing_samples;
        while left > 0 {
            let b = s.batch_size.min(left).max(2);
            left = left.saturating_sub(b);
            let z = crate::models::biggan::truncated_noise(rng.random(), b, s.z_dim, t);
            let z = Tensor::from_vec(z, (b, s.z_dim), &device)?;
            let idx: Vec<usize> = (0..b).map(|_| rng.random_range(0..images.len())).collect();
            let y = images.class_batch(&idx, &device)?;
            let mut stats = Some(Vec::new());
            g.forward(&z, &y, Mode::Frozen, &mut stats)?;
            let stats = stats.unwrap_or_default();
            match &mut sum {
                None => sum = Some(stats),
                Some(acc) => {
                    for ((am, av), (m, v)) in acc.iter_mut().zip(stats) {
                        am.iter_mut().zip(m).for_each(|(a, x)| *a += x);
                        av.iter_mut().zip(v).for_each(|(a, x)| *a += x);
                    }
                }
            }
            batches += 1;
        }
        let mut row = sum.unwrap_or_default();
        for (m, v) in &mut row {
            m.iter_mut().for_each(|x| *x /= batches as f64);
            v.iter_mut().for_each(|x| *x /= batches as f64);
        }
        rows.push(row);
    }
    Ok(rows)
}

/// The networks and optimisers of a GAN training with its two kinds of step, on given inputs:
/// the trainer draws them from its seeded stream, `benches/gan.rs` from its own. G, D, the EMA
/// of G, both Adams (beta1 0, beta2 0.999, eps 1e-6) and the count of G steps (the EMA's warm-up).
pub struct GanNets {
    pub g: Generator,
    pub d: Discriminator,
    pub ema: Generator,
    pub adam_g: Adam,
    pub adam_d: Adam,
    pub g_steps: usize,
    ema_decay: f64,
}

impl GanNets {
    /// G and D initialised from stream 0 of `s.seed` (the EMA starts as G).
    pub fn new(s: &GanSettings, device: &Device) -> candle_core::Result<Self> {
        let mut init = ChaCha8Rng::seed_from_u64(s.seed);
        init.set_stream(0);
        let g_rng = ChaCha8Rng::from_rng(&mut init);
        let d_rng = ChaCha8Rng::from_rng(&mut init);
        let g = Generator::new(&s.g_config(), g_rng.clone(), device)?;
        let ema = Generator::new(&s.g_config(), g_rng, device)?;
        ema.set_params(&g.param_values()?, "")?;
        let d = Discriminator::new(&s.d_config(), d_rng, device)?;
        let adam_g = Adam::new(g.store.params.clone(), s.lr_g)?.with_betas_eps(0.0, 0.999, 1e-6);
        let adam_d = Adam::new(d.store.params.clone(), s.lr_d)?.with_betas_eps(0.0, 0.999, 1e-6);
        Ok(Self {
            g,
            d,
            ema,
            adam_g,
            adam_d,
            g_steps: 0,
            ema_decay: s.ema_decay,
        })
    }

    /// One D step on a real batch (images [3, B, S, S], classes [B, num_classes]) against G's
    /// images of noise `z` [B, z_dim] and classes `yf`, with DiffAugment's `aug` (drawn for the
    /// 2B images fake then real) if any; the hinge loss.
    pub fn d_step(
        &mut self,
        real: &Tensor,
        yr: &Tensor,
        z: &Tensor,
        yf: &Tensor,
        aug: Option<&Draws>,
    ) -> candle_core::Result<f64> {
        let b = z.dim(0)?;
        let fake = self.g.forward(z, yf, Mode::Train, &mut None)?.detach();
        let x = maybe_augment(&Tensor::cat(&[&fake, real], 1)?, aug)?;
        let y = Tensor::cat(&[yf, yr], 0)?;
        let out = self.d.forward(&x, &y, Mode::Train)?;
        let (of, or) = (out.narrow(0, 0, b)?, out.narrow(0, b, b)?);
        let loss = ((1.0 - or)?.relu()?.mean_all()? + (of + 1.0)?.relu()?.mean_all()?)?;
        self.adam_d.step(&loss.backward()?)?;
        Ok(loss.to_scalar::<f32>()? as f64)
    }

    /// One G step on noise `z` and classes `y` (DiffAugment's `aug` if any) and the EMA update;
    /// the generator's hinge loss.
    pub fn g_step(
        &mut self,
        z: &Tensor,
        y: &Tensor,
        aug: Option<&Draws>,
    ) -> candle_core::Result<f64> {
        let fake = self.g.forward(z, y, Mode::Train, &mut None)?;
        let x = maybe_augment(&fake, aug)?;
        let loss = self.d.forward(&x, y, Mode::Train)?.mean_all()?.neg()?;
        self.adam_g.step(&loss.backward()?)?;
        self.g_steps += 1;
        let t = self.g_steps as f64;
        let decay = self.ema_decay.min((1.0 + t) / (10.0 + t));
        for ((_, p), (_, e)) in self.g.store.params.iter().zip(&self.ema.store.params) {
            e.set(&((e.as_tensor() * decay)? + (p.as_tensor() * (1.0 - decay))?)?)?;
        }
        // The EMA's own spectral-norm vectors follow its weights.
        for sn in self.ema.sn_weights() {
            sn.power_iteration()?;
        }
        Ok(loss.to_scalar::<f32>()? as f64)
    }
}

fn maybe_augment(x: &Tensor, aug: Option<&Draws>) -> candle_core::Result<Tensor> {
    match aug {
        Some(d) => augment(x, d),
        None => Ok(x.clone()),
    }
}

struct GanTrainer<'a> {
    s: &'a GanSettings,
    nets: GanNets,
    train: Images,
    dev: Images,
    steps: usize,
    device: Device,
    step_seconds: (f64, usize),
    last_auc: Option<f64>,
}

pub struct Trained {
    d_loss: f64,
    g_loss: f64,
    d_steps: usize,
    g_steps: usize,
    seconds_per_step: f64,
}

pub struct Dev {
    auc: f64,
    real: f64,
    fake: f64,
}

impl GanTrainer<'_> {
    fn noise(&self, b: usize, rng: &mut ChaCha8Rng) -> candle_core::Result<Tensor> {
        Tensor::from_vec(
            normals(b * self.s.z_dim, rng),
            (b, self.s.z_dim),
            &self.device,
        )
    }

    fn fake_classes(&self, b: usize, rng: &mut ChaCha8Rng) -> candle_core::Result<Tensor> {
        let idx: Vec<usize> = (0..b)
            .map(|_| rng.random_range(0..self.train.len()))
            .collect();
        self.train.class_batch(&idx, &self.device)
    }

    /// DiffAugment's draws for `b` images, when it is on.
    fn draws(&self, b: usize, rng: &mut ChaCha8Rng) -> Option<Draws> {
        self.s.diffaug.draws(b, self.s.image_size, rng)
    }

    /// One D step on a real batch; the hinge loss.
    fn d_step(&mut self, idx: &[usize], rng: &mut ChaCha8Rng) -> anyhow::Result<f64> {
        let b = idx.len();
        let (real, yr) = self.train.batch(idx, &self.device)?;
        let z = self.noise(b, rng)?;
        let yf = self.fake_classes(b, rng)?;
        // (G's forward draws nothing: the augmentation's draws may come first.)
        let aug = self.draws(2 * b, rng);
        Ok(self.nets.d_step(&real, &yr, &z, &yf, aug.as_ref())?)
    }

    /// One G step and the EMA update; the generator's hinge loss.
    fn g_step(&mut self, rng: &mut ChaCha8Rng) -> anyhow::Result<f64> {
        let b = self.s.batch_size;
        let z = self.noise(b, rng)?;
        let y = self.fake_classes(b, rng)?;
        let aug = self.draws(b, rng);
        Ok(self.nets.g_step(&z, &y, aug.as_ref())?)
    }
}

impl Trainer for GanTrainer<'_> {
    type Trained = Trained;
    type Dev = Dev;
    type Log = GanEpochLog;

    fn train_epoch(
        &mut self,
        _epoch: usize,
        rng: &mut ChaCha8Rng,
        bar: &Bar,
    ) -> anyhow::Result<Trained> {
        let bs = self.s.batch_size;
        let mut order: Vec<usize> = (0..self.train.len()).collect();
        order.shuffle(rng);
        let (mut dl, mut gl, mut gn) = (0f64, 0f64, 0usize);
        let t0 = Instant::now();
        for step in 0..self.steps {
            dl += self.d_step(&order[step * bs..(step + 1) * bs], rng)?;
            if (step + 1) % self.s.d_steps == 0 {
                gl += self.g_step(rng)?;
                gn += 1;
            }
            bar.inc(1);
        }
        let secs = t0.elapsed().as_secs_f64();
        self.step_seconds.0 += secs;
        self.step_seconds.1 += self.steps;
        Ok(Trained {
            d_loss: dl / self.steps.max(1) as f64,
            g_loss: gl / gn.max(1) as f64,
            d_steps: self.steps,
            g_steps: gn,
            seconds_per_step: secs / self.steps.max(1) as f64,
        })
    }

    fn evaluate(&mut self) -> anyhow::Result<(f64, Dev)> {
        let n = self.dev.len().min(256);
        let idx: Vec<usize> = (0..n).collect();
        let (real, y) = self.dev.batch(&idx, &self.device)?;
        let mut rng = ChaCha8Rng::seed_from_u64(self.s.seed);
        rng.set_stream(u64::MAX);
        let z = self.noise(n, &mut rng)?;
        // In training-sized chunks: a forward through the parameters keeps every intermediate
        // for a backward until its output is dropped, and 256 images at once held gigabytes
        // (which the allocator then kept for the rest of the training).
        let (mut sr, mut sf) = (Vec::with_capacity(n), Vec::with_capacity(n));
        let bs = self.s.batch_size;
        for start in (0..n).step_by(bs) {
            let len = bs.min(n - start);
            let (z, y) = (z.narrow(0, start, len)?, y.narrow(0, start, len)?);
            let real = real.narrow(1, start, len)?;
            let fake = self
                .nets
                .g
                .forward(&z, &y, Mode::Frozen, &mut None)?
                .detach();
            sr.extend(
                self.nets
                    .d
                    .forward(&real, &y, Mode::Frozen)?
                    .to_vec1::<f32>()?,
            );
            sf.extend(
                self.nets
                    .d
                    .forward(&fake, &y, Mode::Frozen)?
                    .to_vec1::<f32>()?,
            );
        }
        let mut wins = 0f64;
        for r in &sr {
            for f in &sf {
                wins += if r > f {
                    1.0
                } else if r == f {
                    0.5
                } else {
                    0.0
                };
            }
        }
        let auc = wins / (sr.len() * sf.len()).max(1) as f64;
        self.last_auc = Some(auc);
        let m = |v: &[f32]| v.iter().map(|&x| x as f64).sum::<f64>() / v.len().max(1) as f64;
        // NaN: never "best" (see the module's comment); the driver keeps no best model.
        Ok((
            f64::NAN,
            Dev {
                auc,
                real: m(&sr),
                fake: m(&sf),
            },
        ))
    }

    fn save_best(&mut self, _epoch: usize) -> anyhow::Result<()> {
        Ok(())
    }

    fn state_tensors(&self) -> anyhow::Result<HashMap<String, Tensor>> {
        let mut m = HashMap::new();
        for (pfx, adam) in [("g.", &self.nets.adam_g), ("d.", &self.nets.adam_d)] {
            for (k, v) in adam.state()? {
                m.insert(format!("{pfx}{k}"), v);
            }
        }
        m.extend(self.nets.g.buffers("gbuf."));
        m.extend(self.nets.d.buffers("dbuf."));
        m.extend(self.nets.ema.buffers("emabuf."));
        for (k, v) in self.nets.ema.param_values()? {
            m.insert(format!("ema.{k}"), v);
        }
        m.insert(
            "g_steps".into(),
            Tensor::new(&[self.nets.g_steps as f64], &self.device)?,
        );
        Ok(m)
    }

    fn load_state(&mut self, state: &HashMap<String, Tensor>) -> anyhow::Result<()> {
        for (pfx, adam) in [("g.", &mut self.nets.adam_g), ("d.", &mut self.nets.adam_d)] {
            let sub: HashMap<String, Tensor> = state
                .iter()
                .filter_map(|(k, v)| k.strip_prefix(pfx).map(|k| (k.to_string(), v.clone())))
                .collect();
            adam.restore(&sub)?;
        }
        self.nets.g.restore_buffers(state, "gbuf.")?;
        self.nets.d.restore_buffers(state, "dbuf.")?;
        self.nets.ema.restore_buffers(state, "emabuf.")?;
        self.nets.ema.set_params(state, "ema.")?;
        self.nets.g_steps = checkpoint::scalar(state, "g_steps", Path::new(CHECKPOINT))? as usize;
        Ok(())
    }

    fn log_line(&self, d: Finished<Trained, Dev>) -> anyhow::Result<GanEpochLog> {
        Ok(GanEpochLog {
            epoch: d.epoch,
            d_steps: d.trained.d_steps,
            g_steps: d.trained.g_steps,
            d_loss: d.trained.d_loss,
            g_loss: d.trained.g_loss,
            dev_auc: d.dev.auc,
            dev_d_real: d.dev.real,
            dev_d_fake: d.dev.fake,
            seconds: d.seconds,
            seconds_per_step: d.trained.seconds_per_step,
        })
    }

    fn heartbeat(&self, l: &GanEpochLog) -> String {
        format!(
            "epoch {}: D loss {:.4} G loss {:.4} dev AUC {:.3} ({:.3} s/step)",
            l.epoch, l.d_loss, l.g_loss, l.dev_auc, l.seconds_per_step
        )
    }
}
