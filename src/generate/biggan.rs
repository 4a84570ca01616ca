//! big-sleep's generator: BigGAN-deep's per-block latents (z rows and class logits) optimised
//! with Adam so that CLIP finds random cutouts of the image similar to the phrase, with
//! big-sleep's latent and class regularisers and an exponential moving average of the latents
//! for the saved image (reference section 3).

use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;

use candle_core::{DType, Device, Result, Tensor, Var, D};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};
use serde::{Deserialize, Serialize};

pub use super::cutouts::Resize;
use super::cutouts::{big_sleep_cutouts, cutout_batch, deep_daze_cutouts};
use super::{
    encode_and_backward, l2_normalize, Generator, GeneratorKind, Guidance, ImageEncoder, StepRecord,
};
use crate::error::InputError;
use crate::models::biggan::{BigGan, Config as BigGanConfig};
use crate::models::clip::ClipConfig;
use crate::train::Adam;

/// Settings of a BigGAN run; big-sleep's GPU defaults beside each field.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BigGanSettings {
    /// Optimiser steps (big-sleep: 1050 iterations x 20 epochs).
    pub steps: usize,
    /// Cutouts per step (big-sleep: 128, sized for a GPU; 8 keeps a CPU step in seconds).
    pub cutouts: usize,
    /// Adam learning rate on the latents (big-sleep: 0.07).
    pub lr: f64,
    /// Keep only the K strongest classes per latent with a differentiable top-k (big-sleep:
    /// `--max-classes`, off: every class through a sigmoid).
    pub max_classes: Option<usize>,
    /// Softmax temperature of the differentiable top-k (big-sleep: 2).
    pub class_temperature: f64,
    /// Decay of the latents' moving average used for the saved image (big-sleep's CLI: 0.5).
    pub ema_decay: f64,
    /// Cutout resize (big-sleep: nearest).
    pub resize: Resize,
    /// Penalty phrases: their similarity is pushed down (big-sleep: `text_min`).
    pub avoid: Vec<String>,
    /// Cutout sides as fractions of the image, drawn uniformly in [lower, upper) as deep-daze
    /// draws them, instead of big-sleep's N(0.8, 0.3) clamped to [0.5, 0.95]: for a CLIP trained
    /// on near-whole crops, where a position in the image carries meaning (the shapes world).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cutout_sides: Option<(f64, f64)>,
    /// Weight of big-sleep's class regulariser, which pushes every class weight but a latent's
    /// largest to zero (big-sleep: 1); a lower weight lets a latent keep two classes, as a
    /// two-shape phrase needs.
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub class_weight: f64,
    /// Start each latent's class logits nearer the classes whose names the guiding CLIP finds
    /// closest to the phrase: big-sleep's draw plus this weight times the z-score (over the
    /// classes) of the cosine similarity between the phrase and each class name (0: big-sleep's
    /// draw alone). Needs a model whose config.json names its classes (`class_names`).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub class_prior: f64,
}

fn is_zero(x: &f64) -> bool {
    *x == 0.0
}

fn one() -> f64 {
    1.0
}

fn is_one(x: &f64) -> bool {
    *x == 1.0
}

impl Default for BigGanSettings {
    fn default() -> Self {
        Self {
            steps: 100,
            cutouts: 8,
            lr: 0.07,
            max_classes: None,
            class_temperature: 2.0,
            ema_decay: 0.5,
            resize: Resize::Nearest,
            avoid: Vec::new(),
            cutout_sides: None,
            class_weight: 1.0,
            class_prior: 0.0,
        }
    }
}

impl BigGanSettings {
    /// Rejects settings that cannot run, naming the option and what was expected.
    pub fn validate(&self, num_classes: Option<usize>) -> std::result::Result<(), InputError> {
        let fail = |m: String| Err(InputError::new(m));
        if self.cutouts == 0 {
            return fail("--cutouts must be at least 1".into());
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return fail(format!("--lr {} must be a positive number", self.lr));
        }
        if !(self.class_temperature.is_finite() && self.class_temperature > 0.0) {
            return fail(format!(
                "--class-temperature {} must be a positive number",
                self.class_temperature
            ));
        }
        if !(0.0..1.0).contains(&self.ema_decay) {
            return fail(format!("--ema-decay {} must lie in [0, 1)", self.ema_decay));
        }
        if let Some(k) = self.max_classes {
            let n = num_classes.unwrap_or(usize::MAX);
            if k == 0 || k > n {
                return fail(format!(
                    "--max-classes {k} must lie in 1..={}",
                    num_classes.map_or("the number of classes".into(), |n| n.to_string())
                ));
            }
        }
        if let Some((lo, hi)) = self.cutout_sides {
            if !(lo > 0.0 && lo < hi && hi <= 1.0) {
                return fail(format!(
                    "--cutout-sides {lo},{hi}: expected LOWER,UPPER with 0 < LOWER < UPPER <= 1"
                ));
            }
        }
        if !(self.class_prior.is_finite() && self.class_prior >= 0.0) {
            return fail(format!(
                "--class-prior {} must be a number >= 0",
                self.class_prior
            ));
        }
        if !(self.class_weight.is_finite() && self.class_weight >= 0.0) {
            return fail(format!(
                "--class-weight {} must be a number >= 0",
                self.class_weight
            ));
        }
        if let Some(p) = self.avoid.iter().find(|p| p.trim().is_empty()) {
            return fail(format!("--avoid {p:?} is empty: expected a phrase"));
        }
        self.check_memory(None)
    }

    /// [`Self::validate`]'s memory bound with the models known (their config.json files, read
    /// before the weights): refuses settings whose [`Self::memory_estimate`] exceeds the
    /// machine's memory, naming them, the estimate and the memory.
    pub fn validate_memory(
        &self,
        clip: &ClipConfig,
        biggan: &BigGanConfig,
    ) -> std::result::Result<(), InputError> {
        self.check_memory(Some((clip, biggan)))
    }

    fn check_memory(
        &self,
        models: Option<(&ClipConfig, &BigGanConfig)>,
    ) -> std::result::Result<(), InputError> {
        let (bytes, setting) = self.memory_estimate(models);
        crate::resources::check_memory(&setting, bytes)
    }

    /// Estimated peak working memory of big-sleep guidance, in bytes, and the settings to name
    /// when it is too much (those of its largest term). Without the models (`None`: `run`'s
    /// validation) only the cutouts at the smallest image and encoder input
    /// ([`super::memory::cutout_floor`]) and the step records count: a lower bound. With them:
    /// the process and both models' weights ([`super::memory::clip_weights`],
    /// [`generator_memory`]), and the largest of: a weights file while its model loads, or a
    /// guidance step (BigGAN's activations, and per cutout its crop at 0.95 x the image size,
    /// [`super::memory::cutout_crop`], and the encoder's [`super::memory::clip_cutout`]).
    ///
    /// Calibration (README's Performance table, W2: BigGAN-deep 128, 8 cutouts, ViT-B/32): 2695
    /// MiB estimated against a measured peak of 2684 MiB (tests/it/biggan_generate.rs).
    pub fn memory_estimate(&self, models: Option<(&ClipConfig, &BigGanConfig)>) -> (f64, String) {
        use super::memory::{
            clip_cutout, clip_load, clip_weights, cutout_crop, cutout_floor, MIN_ENCODER_INPUT,
            PROCESS, STEP,
        };
        let per_cutout = match models {
            Some((clip, g)) => {
                cutout_crop(0.95 * g.image_size() as f64) + clip_cutout(&clip.vision)
            }
            None => cutout_floor(MIN_ENCODER_INPUT),
        };
        let cutouts = self.cutouts as f64 * per_cutout;
        let steps = self.steps as f64 * STEP;
        let named = if cutouts >= steps {
            format!("--cutouts {}", self.cutouts)
        } else {
            format!("--steps {}", self.steps)
        };
        let total = match models {
            Some((clip, g)) => {
                let (weights, activations) = generator_memory(g);
                let step = activations + cutouts + steps;
                PROCESS + clip_weights(clip) + weights + step.max(clip_load(clip)).max(weights)
            }
            None => cutouts + steps,
        };
        (total, named)
    }
}

/// How many tensors of its stages' sizes BigGAN's forward and candle's backward hold at the
/// peak (each batch norm's four broadcast ops, the ReLUs, the convolutions' unfolded inputs, the
/// skip path and their gradients, at each block's input and output resolution). Calibrated on
/// W2: with BigGAN-deep 128's 200 MiB of weights, CLIP's 765 and 8 cutouts' 96, its measured
/// peak of 2684 MiB leaves about 1500 MiB of activations, 15 x the 96.5 MiB of its stages.
pub const BIGGAN_ACTIVATION_FACTOR: f64 = 15.0;

/// BigGAN-deep's memory in guidance, bytes: its weights (convolutions, the conditional batch
/// norms' linear maps and statistics, gen_z, the class embedding, the attention block; their
/// file holds as much while it loads), and the activations its forward keeps for the backward to
/// the latents: per block [`BIGGAN_ACTIVATION_FACTOR`] x (r_in^2 (in + mid) + r_out^2 (2 mid +
/// out + in / 2)) floats (mid = in / 4), and the attention's [r^2, r^2 / 4] map (3 copies) with
/// its projections.
pub fn generator_memory(cfg: &BigGanConfig) -> (f64, f64) {
    let ch = cfg.channel_width as f64;
    let cond = 2.0 * cfg.z_dim as f64;
    let stats = cfg.n_stats as f64;
    let batch_norm = |c: f64| 2.0 * cond * c + 2.0 * stats * c;
    let mut weights = cond * 16.0 * 16.0 * ch
        + cfg.z_dim as f64 * cfg.num_classes as f64
        + batch_norm(ch)
        + 9.0 * ch * ch;
    let mut activations = 16.0 * 16.0 * ch;
    let mut r = 4.0f64;
    for (i, l) in cfg.layers.iter().enumerate() {
        let (cin, cout) = (l.in_mult as f64 * ch, l.out_mult as f64 * ch);
        if i == cfg.attention_layer_position {
            weights += 2.0 * cin * cin / 8.0 + cin * cin;
            activations += 3.0 * r.powi(4) / 4.0 + 2.75 * r * r * cin;
        }
        let mid = cin / 4.0;
        let r_out = if l.upsample { 2.0 * r } else { r };
        weights += cin * mid + 18.0 * mid * mid + mid * cout + batch_norm(cin + 3.0 * mid);
        activations += BIGGAN_ACTIVATION_FACTOR
            * (r * r * (cin + mid) + r_out * r_out * (2.0 * mid + cout + cin / 2.0));
        r = r_out;
    }
    activations += BIGGAN_ACTIVATION_FACTOR * r * r * (2.0 * ch + 3.0);
    let f32 = super::memory::F32;
    (f32 * weights, f32 * activations)
}

/// big-sleep's differentiable top-k: k rounds of softmax(x / t), each keeping the largest
/// probability at its index and masking that index out of the next round; the k one-hot-weighted
/// rows are summed. [L, C] -> [L, C].
pub fn differentiable_topk(x: &Tensor, k: usize, temperature: f64) -> Result<Tensor> {
    let (l, c) = x.dims2()?;
    let mut x = x.clone();
    let mut out: Option<Tensor> = None;
    for round in 0..k {
        let p = candle_nn::ops::softmax(&(&x / temperature)?, D::Minus1)?;
        let idx = p.argmax_keepdim(D::Minus1)?; // [L, 1]
        let hit = Tensor::arange(0u32, c as u32, x.device())?
            .reshape((1, c))?
            .broadcast_as((l, c))?
            .eq(&idx.broadcast_as((l, c))?)?;
        let kept = (&p * hit.to_dtype(x.dtype())?)?;
        out = Some(match out {
            None => kept,
            Some(o) => (o + kept)?,
        });
        if round + 1 < k {
            let neg = Tensor::full(f32::NEG_INFINITY, (l, c), x.device())?.to_dtype(x.dtype())?;
            x = hit.where_cond(&neg, &x)?;
        }
    }
    out.ok_or_else(|| candle_core::Error::Msg("differentiable_topk needs k >= 1".into()))
}

/// big-sleep's latent regulariser on z [L, Z]: the sum of |1 - std(row)| mean, |mean(row)| mean,
/// 4 max(mean(z^2), 1) and the sum over rows of (|kurtosis| + |skew|) / L, with torch's unbiased
/// std for the first term and biased moments for skew and kurtosis.
pub fn latent_loss(z: &Tensor) -> Result<Tensor> {
    let (l, n) = z.dims2()?;
    let mean = z.mean_keepdim(1)?; // [L, 1]
    let diffs = z.broadcast_sub(&mean)?;
    let sq = diffs.sqr()?;
    let unbiased_std = (sq.sum_keepdim(1)? / (n as f64 - 1.0))?.sqrt()?;
    let std_term = (unbiased_std.affine(-1.0, 1.0)?).abs()?.mean_all()?;
    let mean_term = mean.abs()?.mean_all()?;
    let energy = z.sqr()?.mean_all()?;
    let energy_term = (energy.maximum(1.0)? * 4.0)?;
    let var = sq.mean_keepdim(1)?;
    let zs = diffs.broadcast_div(&var.sqrt()?)?;
    let zs2 = zs.sqr()?;
    let skew = (&zs2 * &zs)?.mean_keepdim(1)?;
    let kurt = (zs2.sqr()?.mean_keepdim(1)? - 3.0)?;
    let moments = ((kurt.abs()? + skew.abs()?)?.sum_all()? / l as f64)?;
    std_term + mean_term + energy_term + moments
}

/// big-sleep's class regulariser: ((50 * the C-1 smallest class weights of each row)^2).mean(),
/// i.e. every weight but each row's largest.
pub fn class_loss(classes: &Tensor) -> Result<Tensor> {
    let (l, c) = classes.dims2()?;
    let sq = (classes * 50.0)?.sqr()?;
    let top = classes.max_keepdim(D::Minus1)?;
    let top_sq = (top * 50.0)?.sqr()?;
    (sq.sum_all()? - top_sq.sum_all()?)? / (l * (c - 1).max(1)) as f64
}

/// The optimised latents: z [L, Z] and class logits [L, C].
#[derive(Debug, Clone)]
pub struct Latents {
    pub z: Tensor,
    pub class_logits: Tensor,
}

impl Latents {
    /// big-sleep's initialisation: z ~ N(0, 1), class logits ~ N(-3.9, 0.3), drawn on the host
    /// from stream 0 of `seed` (z first, row-major, then the logits).
    pub fn init(l: usize, z_dim: usize, classes: usize, seed: u64, dev: &Device) -> Result<Self> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let zn = Normal::new(0f32, 1.0).expect("valid normal");
        let cn = Normal::new(-3.9f32, 0.3).expect("valid normal");
        let z: Vec<f32> = (0..l * z_dim).map(|_| zn.sample(&mut rng)).collect();
        let c: Vec<f32> = (0..l * classes).map(|_| cn.sample(&mut rng)).collect();
        Ok(Self {
            z: Tensor::from_vec(z, (l, z_dim), dev)?,
            class_logits: Tensor::from_vec(c, (l, classes), dev)?,
        })
    }

    /// The class logits plus `weight` times the z-score over the classes of the cosine
    /// similarity between the phrase's embedding `text` [1, D] and each class name's `names`
    /// [C, D] (every latent row alike).
    pub fn with_class_prior(self, names: &Tensor, text: &Tensor, weight: f64) -> Result<Self> {
        let sims = l2_normalize(names)?
            .matmul(&l2_normalize(text)?.t()?)?
            .flatten_all()?;
        let mean = sims.mean_all()?;
        let centred = sims.broadcast_sub(&mean)?;
        let std = centred.sqr()?.mean_all()?.sqrt()?;
        let z = centred.broadcast_div(&(std + 1e-6)?)?;
        let class_logits = self
            .class_logits
            .broadcast_add(&(z * weight)?.unsqueeze(0)?)?;
        Ok(Self {
            z: self.z,
            class_logits,
        })
    }

    /// Reads tensors `z` [L, Z] and `class_logits` [L, C] from a safetensors file, checking the
    /// shapes against the generator's; errors name the file and what was expected.
    pub fn load(
        path: &Path,
        l: usize,
        z_dim: usize,
        classes: usize,
        dev: &Device,
    ) -> anyhow::Result<Self> {
        let bad = |m: String| InputError::new(format!("{}: {m}", path.display()));
        let tensors = candle_core::safetensors::load(path, dev)
            .map_err(|e| bad(format!("not a readable safetensors file ({e})")))?;
        let get = |name: &str, shape: (usize, usize)| -> anyhow::Result<Tensor> {
            let t = tensors
                .get(name)
                .ok_or_else(|| bad(format!("has no tensor `{name}` (expected {shape:?})")))?;
            if t.dims() != [shape.0, shape.1] {
                return Err(bad(format!(
                    "tensor `{name}` has shape {:?}, expected {shape:?} for this generator",
                    t.dims()
                ))
                .into());
            }
            let t = t.to_dtype(DType::F32)?;
            if t.flatten_all()?
                .to_vec1::<f32>()?
                .iter()
                .any(|v| !v.is_finite())
            {
                return Err(bad(format!("tensor `{name}` holds non-finite values")).into());
            }
            Ok(t)
        };
        Ok(Self {
            z: get("z", (l, z_dim))?,
            class_logits: get("class_logits", (l, classes))?,
        })
    }
}

/// What a run leaves behind besides the image: final and moving-average latents.
#[derive(Debug, Clone)]
pub struct LatentsOut {
    pub last: Latents,
    pub ema: Latents,
}

impl LatentsOut {
    /// Writes `z`, `class_logits` (the moving average: the saved image's latents, what
    /// `--init-latents` reads) and `last_z`, `last_class_logits` (the optimiser's latents).
    pub fn save(&self, path: &Path) -> anyhow::Result<()> {
        let map: HashMap<String, Tensor> = HashMap::from([
            ("z".to_string(), self.ema.z.clone()),
            ("class_logits".to_string(), self.ema.class_logits.clone()),
            ("last_z".to_string(), self.last.z.clone()),
            (
                "last_class_logits".to_string(),
                self.last.class_logits.clone(),
            ),
        ]);
        crate::fsutil::write_safetensors(path, &map)
    }
}

/// big-sleep's EMA with bias correction: biased <- d biased + (1 - d) x, accum <- d accum,
/// average = biased / (1 - accum); updated once at initialisation and after every step.
struct Ema {
    decay: f64,
    accum: f64,
    biased: Option<Latents>,
}

impl Ema {
    fn update(&mut self, x: &Latents) -> Result<()> {
        let d = self.decay;
        self.accum *= d;
        let next = |b: Option<&Tensor>, v: &Tensor| -> Result<Tensor> {
            let v = (v.detach() * (1.0 - d))?;
            match b {
                Some(b) => (b * d)? + v,
                None => Ok(v),
            }
        };
        self.biased = Some(Latents {
            z: next(self.biased.as_ref().map(|b| &b.z), &x.z)?,
            class_logits: next(
                self.biased.as_ref().map(|b| &b.class_logits),
                &x.class_logits,
            )?,
        });
        Ok(())
    }

    fn average(&self) -> Result<Latents> {
        let b = self
            .biased
            .as_ref()
            .ok_or_else(|| candle_core::Error::Msg("EMA read before its first update".into()))?;
        let k = 1.0 / (1.0 - self.accum);
        Ok(Latents {
            z: (&b.z * k)?,
            class_logits: (&b.class_logits * k)?,
        })
    }
}

/// big-sleep's generator: BigGAN `model`'s latents guided by `encoder`.
pub struct BigGanGenerator<'a> {
    pub model: &'a BigGan,
    pub encoder: &'a dyn ImageEncoder,
    pub settings: BigGanSettings,
    /// Raw embeddings of the penalty phrases.
    pub avoid: Vec<Tensor>,
    /// Latents to start from instead of drawing them (`generate --init-latents`).
    pub init: Option<Latents>,
    /// Raw CLIP text embeddings of the model's class names [C, D], for `class_prior`.
    pub class_texts: Option<Tensor>,
    pub device: Device,
}

impl Generator for BigGanGenerator<'_> {
    fn kind(&self) -> GeneratorKind {
        GeneratorKind::BigGan
    }

    fn steps(&self) -> usize {
        self.settings.steps
    }

    fn encoder(&self) -> &dyn ImageEncoder {
        self.encoder
    }

    fn start(&self, text: &Tensor, seed: u64) -> anyhow::Result<Box<dyn Guidance + '_>> {
        let init = match (&self.init, &self.class_texts) {
            (Some(x), _) => Some(x.clone()),
            // `class_texts` is only present when the prior is on.
            (None, Some(names)) => {
                let cfg = self.model.config();
                let l = self.model.num_latents();
                let drawn = Latents::init(l, cfg.z_dim, cfg.num_classes, seed, &self.device)?;
                Some(drawn.with_class_prior(names, text, self.settings.class_prior)?)
            }
            (None, _) => None,
        };
        let g = BigGanGuidance::new(
            &self.settings,
            self.model,
            self.encoder,
            text,
            &self.avoid,
            seed,
            init,
            &self.device,
        )?;
        Ok(Box::new(g))
    }
}

/// The raw CLIP text embeddings [C, D] of the model's class names when `settings.class_prior`
/// is on (`None` when off); an input error when the model's config.json names no classes.
pub fn class_name_embeddings(
    clip: &crate::models::clip::Clip,
    model: &BigGan,
    settings: &BigGanSettings,
    device: &Device,
) -> anyhow::Result<Option<Tensor>> {
    let Some(names) = prior_class_names(model.config(), settings.class_prior)? else {
        return Ok(None);
    };
    let rows = names
        .iter()
        .map(|n| crate::generate::clip::text_embedding(clip, n, device))
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(Some(Tensor::cat(&rows, 0)?))
}

/// The class names `--class-prior` compares the phrase with (`None` when the prior is off),
/// or an input error naming what the model's config.json lacks.
fn prior_class_names(
    cfg: &BigGanConfig,
    weight: f64,
) -> std::result::Result<Option<&[String]>, InputError> {
    if weight == 0.0 {
        return Ok(None);
    }
    let names = &cfg.class_names;
    if names.len() != cfg.num_classes {
        return Err(InputError::new(format!(
            "--class-prior {weight} needs the BigGAN's class names (`class_names` in its \
             config.json, one per class: {}); this model's config names {}",
            cfg.num_classes,
            names.len()
        )));
    }
    Ok(Some(names))
}

/// BigGAN latents being optimised towards one phrase.
pub struct BigGanGuidance<'a> {
    settings: BigGanSettings,
    model: &'a BigGan,
    encoder: &'a dyn ImageEncoder,
    text: Tensor,
    avoid: Vec<Tensor>,
    z: Var,
    class_logits: Var,
    opt: Adam,
    ema: Ema,
    rng: ChaCha8Rng,
    step: usize,
}

impl<'a> BigGanGuidance<'a> {
    /// `text` is the phrase's raw embedding [1, D], `avoid` those of the penalty phrases;
    /// `seed` drives the initialisation (stream 0) and the cutouts (stream 1). `init` replaces
    /// the drawn latents.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        settings: &BigGanSettings,
        model: &'a BigGan,
        encoder: &'a dyn ImageEncoder,
        text: &Tensor,
        avoid: &[Tensor],
        seed: u64,
        init: Option<Latents>,
        device: &Device,
    ) -> Result<Self> {
        let cfg = model.config();
        let l = model.num_latents();
        let start = match init {
            Some(x) => x,
            None => Latents::init(l, cfg.z_dim, cfg.num_classes, seed, device)?,
        };
        let z = Var::from_tensor(&start.z)?;
        let class_logits = Var::from_tensor(&start.class_logits)?;
        // Bit-identical to candle-nn's AdamW (beta 0.9, 0.999, eps 1e-8, decay 0), used before.
        let latents = vec![
            ("z".to_owned(), z.clone()),
            ("class_logits".to_owned(), class_logits.clone()),
        ];
        let opt = Adam::new(latents, settings.lr)?.with_weight_decay_everywhere(0.0);
        let mut ema = Ema {
            decay: settings.ema_decay,
            accum: 1.0,
            biased: None,
        };
        ema.update(&start)?;
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        rng.set_stream(1);
        Ok(Self {
            settings: settings.clone(),
            model,
            encoder,
            text: l2_normalize(&text.detach())?,
            avoid: avoid
                .iter()
                .map(|t| l2_normalize(&t.detach()))
                .collect::<Result<_>>()?,
            z,
            class_logits,
            opt,
            ema,
            rng,
            step: 0,
        })
    }

    /// Class weights from logits: sigmoid, or the differentiable top-k with `--max-classes`.
    pub fn classes(&self, logits: &Tensor) -> Result<Tensor> {
        match self.settings.max_classes {
            Some(k) => differentiable_topk(logits, k, self.settings.class_temperature),
            None => candle_nn::ops::sigmoid(logits),
        }
    }

    /// The generator's image for latents, [3, S, S] in [0, 1] (truncation 1, as big-sleep).
    pub fn render(&self, z: &Tensor, class_logits: &Tensor) -> Result<Tensor> {
        self.draw(z, &self.classes(class_logits)?)
    }

    /// The generator's image for z and class weights, [3, S, S] in [0, 1].
    fn draw(&self, z: &Tensor, classes: &Tensor) -> Result<Tensor> {
        let x = self.model.forward_per_block(z, classes, 1.0)?;
        (x.squeeze(0)? + 1.0)? / 2.0
    }
}

impl Guidance for BigGanGuidance<'_> {
    /// One Adam step on the latents; returns its record (loss = the sum of the three terms,
    /// similarity = mean cosine of the cutouts with the phrase).
    fn step(&mut self) -> Result<StepRecord> {
        let t0 = Instant::now();
        let s = &self.settings;
        let z = self.z.as_tensor();
        let logits = self.class_logits.as_tensor();
        let classes = self.classes(logits)?;
        let image = self.draw(z, &classes)?;
        let width = image.dim(2)?;
        let cuts = match s.cutout_sides {
            Some((lo, hi)) => deep_daze_cutouts(&mut self.rng, s.cutouts, width, lo, hi),
            None => big_sleep_cutouts(&mut self.rng, s.cutouts, width),
        };
        let batch = cutout_batch(&image, &cuts, self.encoder.input_size(), s.resize)?;
        let (text, avoid) = (&self.text, &self.avoid);
        let (loss, cos, grads) = encode_and_backward(self.encoder, &batch, |raw| {
            let emb = l2_normalize(raw)?;
            let cos = emb.matmul(&text.t()?)?.mean_all()?;
            let mut sim_loss = (&cos * -100.0)?;
            for a in avoid {
                sim_loss = (sim_loss + (emb.matmul(&a.t()?)?.mean_all()? * 100.0)?)?;
            }
            let class_term = if s.class_weight == 1.0 {
                class_loss(&classes)?
            } else {
                (class_loss(&classes)? * s.class_weight)?
            };
            let loss = ((latent_loss(z)? + class_term)? + sim_loss)?;
            Ok((loss, cos))
        })?;
        let value = loss.to_scalar::<f32>()?;
        self.opt.step(&grads)?;
        self.ema.update(&Latents {
            z: self.z.as_tensor().clone(),
            class_logits: self.class_logits.as_tensor().clone(),
        })?;
        self.step += 1;
        Ok(StepRecord {
            step: self.step,
            loss: value,
            similarity: cos.to_scalar::<f32>()?,
            seconds: t0.elapsed().as_secs_f64(),
        })
    }

    /// The saved image: the generator's output for the moving-average latents, detached.
    fn image(&self) -> Result<Tensor> {
        let avg = self.ema.average()?;
        Ok(self.render(&avg.z, &avg.class_logits)?.detach())
    }

    /// The current and moving-average latents.
    fn latents(&self) -> Result<Option<LatentsOut>> {
        Ok(Some(LatentsOut {
            last: Latents {
                z: self.z.as_tensor().detach(),
                class_logits: self.class_logits.as_tensor().detach(),
            },
            ema: self.ema.average()?,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(v: &[f32], shape: (usize, usize)) -> Tensor {
        Tensor::from_vec(v.to_vec(), shape, &Device::Cpu).unwrap()
    }

    #[test]
    fn topk_keeps_the_k_largest_softmax_rounds() {
        // Row [2, 0, 1] at temperature 1: round 1 keeps softmax's weight of index 0, round 2
        // (index 0 masked) keeps the renormalised weight of index 2.
        let x = t(&[2.0, 0.0, 1.0], (1, 3));
        let y = differentiable_topk(&x, 2, 1.0)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let e = [2f32.exp(), 1.0, 1f32.exp()];
        let p0 = e[0] / (e[0] + e[1] + e[2]);
        let p2 = e[2] / (e[1] + e[2]);
        assert!(
            (y[0] - p0).abs() < 1e-6 && y[1] == 0.0 && (y[2] - p2).abs() < 1e-6,
            "{y:?}"
        );
        // Differentiable: the gradient reaches the logits.
        let v = Var::from_tensor(&x).unwrap();
        let g = differentiable_topk(v.as_tensor(), 2, 2.0)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let gv = g
            .get(v.as_tensor())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert!(gv.iter().any(|v| v.abs() > 1e-4), "{gv:?}");
    }

    #[test]
    fn class_loss_skips_each_rows_largest() {
        let c = t(&[0.1, 0.5, 0.2, 0.3, 0.0, 0.4], (2, 3));
        let got = class_loss(&c).unwrap().to_scalar::<f32>().unwrap();
        let want = [0.1f32, 0.2, 0.3, 0.0]
            .iter()
            .map(|v| (50.0 * v).powi(2))
            .sum::<f32>()
            / 4.0;
        assert!((got - want).abs() < 1e-3, "{got} vs {want}");
    }

    #[test]
    fn latent_loss_matches_a_hand_computation() {
        let v = [0.5f32, -1.0, 2.0, 0.25, 1.5, -0.75, 0.0, 1.0];
        let z = t(&v, (2, 4));
        let got = latent_loss(&z).unwrap().to_scalar::<f32>().unwrap() as f64;
        let mut want = 0.0f64;
        let mut energy = 0.0f64;
        for row in v.chunks(4) {
            let r: Vec<f64> = row.iter().map(|x| *x as f64).collect();
            let m = r.iter().sum::<f64>() / 4.0;
            let var_b = r.iter().map(|x| (x - m).powi(2)).sum::<f64>() / 4.0;
            let std_u = (var_b * 4.0 / 3.0).sqrt();
            want += (1.0 - std_u).abs() / 2.0 + m.abs() / 2.0;
            let zs: Vec<f64> = r.iter().map(|x| (x - m) / var_b.sqrt()).collect();
            let skew = zs.iter().map(|x| x.powi(3)).sum::<f64>() / 4.0;
            let kurt = zs.iter().map(|x| x.powi(4)).sum::<f64>() / 4.0 - 3.0;
            want += (kurt.abs() + skew.abs()) / 2.0;
            energy += r.iter().map(|x| x * x).sum::<f64>();
        }
        want += 4.0 * (energy / 8.0).max(1.0);
        assert!((got - want).abs() < 1e-4 * want.abs(), "{got} vs {want}");
    }

    #[test]
    fn ema_is_bias_corrected() {
        let d = Device::Cpu;
        let l = |v: f32| Latents {
            z: Tensor::new(&[[v]], &d).unwrap(),
            class_logits: Tensor::new(&[[v]], &d).unwrap(),
        };
        let mut e = Ema {
            decay: 0.5,
            accum: 1.0,
            biased: None,
        };
        e.update(&l(4.0)).unwrap();
        let a = e
            .average()
            .unwrap()
            .z
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()[0];
        assert!(
            (a - 4.0).abs() < 1e-6,
            "the first average is the start: {a}"
        );
        e.update(&l(1.0)).unwrap();
        // biased = 0.25 * 4 + 0.5 * 1 = 1.5; accum = 0.25; average = 1.5 / 0.75 = 2.
        let a = e
            .average()
            .unwrap()
            .z
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()[0];
        assert!((a - 2.0).abs() < 1e-6, "{a}");
    }

    /// big-sleep 0.9.1's own functions and formulas, run in PyTorch (float64) by
    /// tests/fixtures/make_bigsleep_fixtures.py: values and gradients agree.
    #[test]
    fn matches_big_sleep() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/bigsleep/reference.safetensors"
        );
        let r = candle_core::safetensors::load(path, &Device::Cpu).unwrap();
        let get = |k: &str| r[k].to_dtype(DType::F32).unwrap();
        let close = |name: &str, got: &Tensor, want: &Tensor| {
            let g = got.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let w = want.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            assert_eq!(g.len(), w.len(), "{name}");
            let scale = w.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
            for (i, (a, b)) in g.iter().zip(&w).enumerate() {
                assert!((a - b).abs() <= 1e-4 * scale, "{name}[{i}]: {a} vs {b}");
            }
        };
        let z = Var::from_tensor(&get("z")).unwrap();
        let loss = latent_loss(z.as_tensor()).unwrap();
        close("lat_loss", &loss, &get("lat_loss"));
        let g = loss.backward().unwrap();
        close(
            "lat_grad_z",
            g.get(z.as_tensor()).unwrap(),
            &get("lat_grad_z"),
        );

        let cls = Var::from_tensor(&get("cls")).unwrap();
        let loss = class_loss(&candle_nn::ops::sigmoid(cls.as_tensor()).unwrap()).unwrap();
        close("cls_loss_sigmoid", &loss, &get("cls_loss_sigmoid"));
        let g = loss.backward().unwrap();
        let want = get("cls_loss_sigmoid_grad");
        close(
            "cls_loss_sigmoid_grad",
            g.get(cls.as_tensor()).unwrap(),
            &want,
        );

        let top = differentiable_topk(cls.as_tensor(), 3, 2.0).unwrap();
        close("topk3", &top, &get("topk3"));
        let g = (&top * get("topk3_w"))
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        close(
            "topk3_grad",
            g.get(cls.as_tensor()).unwrap(),
            &get("topk3_grad"),
        );

        let inputs = get("ema_in");
        let mut e = Ema {
            decay: 0.5,
            accum: 1.0,
            biased: None,
        };
        for i in 0..3 {
            let row = inputs.get(i).unwrap().unsqueeze(0).unwrap();
            e.update(&Latents {
                z: row.clone(),
                class_logits: row,
            })
            .unwrap();
            let avg = e.average().unwrap().z;
            close("ema_avg", &avg, &get("ema_avg").get(i).unwrap());
        }
    }

    /// The prior adds W x the z-score of the phrase-name cosine similarities to every latent's
    /// logits: the closest name gains most, the shifts sum to zero, W = 0 changes nothing.
    #[test]
    fn class_prior_raises_the_closest_names_logits() {
        let dev = Device::Cpu;
        let drawn = Latents::init(2, 4, 3, 7, &dev).unwrap();
        let before = drawn.class_logits.to_vec2::<f32>().unwrap();
        // Names along x, y and between them; the phrase leans towards y.
        let names = t(&[1.0, 0.0, 0.0, 1.0, 1.0, 1.0], (3, 2));
        let text = t(&[0.2, 1.0], (1, 2));
        let logits = |weight: f64| {
            drawn
                .clone()
                .with_class_prior(&names, &text, weight)
                .unwrap()
                .class_logits
                .to_vec2::<f32>()
                .unwrap()
        };
        let after = logits(2.0);
        let cos = |a: [f32; 2]| {
            let (b0, b1) = (0.2f32, 1.0f32);
            (a[0] * b0 + a[1] * b1) / (a[0].hypot(a[1]) * b0.hypot(b1))
        };
        let sims = [cos([1.0, 0.0]), cos([0.0, 1.0]), cos([1.0, 1.0])];
        let mean = sims.iter().sum::<f32>() / 3.0;
        let std = (sims.iter().map(|s| (s - mean).powi(2)).sum::<f32>() / 3.0).sqrt();
        for (row_b, row_a) in before.iter().zip(&after) {
            for c in 0..3 {
                let want = 2.0 * (sims[c] - mean) / (std + 1e-6);
                assert!(
                    (row_a[c] - row_b[c] - want).abs() < 1e-4,
                    "{c}: {row_a:?} {row_b:?}"
                );
            }
            let shift: Vec<f32> = row_a.iter().zip(row_b).map(|(a, b)| a - b).collect();
            assert!(shift[1] > shift[2] && shift[2] > shift[0], "{shift:?}");
            assert!(shift.iter().sum::<f32>().abs() < 1e-4, "{shift:?}");
        }
        assert_eq!(logits(0.0), before);
    }

    /// The prior needs one name per class, and says so naming the flag and the count.
    #[test]
    fn class_prior_needs_the_models_class_names() {
        let mut cfg = BigGanConfig {
            num_classes: 3,
            ..BigGanConfig::default()
        };
        assert!(prior_class_names(&cfg, 0.0).unwrap().is_none());
        let e = prior_class_names(&cfg, 0.5).unwrap_err().to_string();
        assert!(
            e.contains("--class-prior 0.5") && e.contains("class_names"),
            "{e}"
        );
        assert!(
            e.contains("one per class: 3") && e.contains("names 0"),
            "{e}"
        );
        cfg.class_names = vec!["a".into(), "b".into(), "c".into()];
        assert_eq!(prior_class_names(&cfg, 0.5).unwrap().unwrap().len(), 3);
    }

    /// The shapes world's settings (cutout sides, class weight, class prior): refused out of
    /// range naming the flag, and absent from the serialized settings (results' keys) at
    /// big-sleep's values, so older results keep their keys.
    #[test]
    fn shapes_settings_validate_and_serialize_only_when_set() {
        let d = BigGanSettings::default();
        let v = serde_json::to_value(&d).unwrap();
        assert!(
            v.get("cutout_sides").is_none()
                && v.get("class_weight").is_none()
                && v.get("class_prior").is_none(),
            "{v}"
        );
        let back: BigGanSettings = serde_json::from_value(v).unwrap();
        assert_eq!(back, d);
        for (sides, weight, flag) in [
            (Some((0.9, 0.5)), 1.0, "--cutout-sides 0.9,0.5"),
            (Some((0.0, 1.0)), 1.0, "--cutout-sides 0,1"),
            (Some((0.5, 1.2)), 1.0, "--cutout-sides 0.5,1.2"),
            (None, -0.5, "--class-weight -0.5"),
            (None, f64::NAN, "--class-weight NaN"),
        ] {
            let s = BigGanSettings {
                cutout_sides: sides,
                class_weight: weight,
                ..d.clone()
            };
            let e = s.validate(Some(40)).unwrap_err().to_string();
            assert!(e.contains(flag), "{e}");
        }
        for bad in [-0.5, f64::INFINITY] {
            let s = BigGanSettings {
                class_prior: bad,
                ..d.clone()
            };
            let e = s.validate(Some(40)).unwrap_err().to_string();
            assert!(e.contains(&format!("--class-prior {bad}")), "{e}");
        }
        let prior = BigGanSettings {
            class_prior: 0.5,
            ..d.clone()
        };
        prior.validate(Some(40)).unwrap();
        assert_eq!(serde_json::to_value(&prior).unwrap()["class_prior"], 0.5);
        let s = BigGanSettings {
            cutout_sides: Some((0.9, 1.0)),
            class_weight: 0.1,
            ..d
        };
        s.validate(Some(40)).unwrap();
        let v = serde_json::to_value(&s).unwrap();
        assert_eq!(v["cutout_sides"], serde_json::json!([0.9, 1.0]));
        assert_eq!(v["class_weight"], serde_json::json!(0.1));
    }
}
