//! deep-daze's generator: a SIREN rendered to an image and optimised with Adam so that CLIP finds
//! random cutouts of the image similar to the phrase.

use std::time::Instant;

use candle_core::{backprop::GradStore, Device, Result, Tensor, Var};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use super::cutouts::{cutout_batch, deep_daze_cutouts, rotate_batch, Resize};
use super::{
    deep_daze_loss, encode_and_backward, l2_normalize, Generator, GeneratorKind, Guidance,
    ImageEncoder, StepRecord,
};
use crate::error::InputError;
use crate::models::clip::ClipConfig;
use crate::models::siren::{coord_grid, Config as SirenConfig, Siren};
use crate::train::adam::{named_vars, Adam};

/// Settings of a SIREN run. The defaults are sized for a 2-core CPU (a phrase in minutes);
/// deep-daze's GPU defaults are given beside each field.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct SirenSettings {
    /// Image side in pixels (deep-daze: 512).
    pub size: usize,
    /// Sine layers (deep-daze: 16).
    pub layers: usize,
    /// Width of the sine layers (deep-daze: 256).
    pub hidden: usize,
    /// SIREN frequency w0 of every layer (deep-daze: 30).
    pub w0: f64,
    /// Cutouts per forward pass (deep-daze `batch_size`: 4).
    pub cutouts: usize,
    /// Cutout side bounds as fractions of the image side (deep-daze: 0.1, 1.0).
    pub lower: f64,
    pub upper: f64,
    /// Adam learning rate (deep-daze: 1e-5 over 21,000 iterations; 1e-4 is SIREN's own image-fitting rate, for few steps).
    pub lr: f64,
    /// Optimiser steps (deep-daze: 1050 iterations x 20 epochs).
    pub steps: usize,
    /// Forward/backward passes accumulated per step (deep-daze: 4).
    pub grad_accum: usize,
    /// Weight of the averaged-embedding term of the loss (deep-daze: 0.3).
    pub averaging_weight: f64,
    /// Weight of a total-variation penalty on the image (mean squared difference of neighbouring
    /// pixels), against the high-frequency patterns that fool CLIP (deep-daze: none; 0: off).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub tv_weight: f64,
    /// Standard deviation of Gaussian noise added to each cutout before CLIP sees it, so the image
    /// cannot rely on pixel-exact adversarial detail (deep-daze: none; 0: off).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub cutout_noise: f64,
    /// Largest angle, in degrees, of a random rotation of each cutout about its centre (the
    /// affine jitter of the CLIP-guidance literature; deep-daze: none; 0: off).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub cutout_rotation: f64,
}

/// Settings added after the first records were written are left out of records while off, so
/// records and keys of earlier runs stay the same.
fn is_zero(x: &f64) -> bool {
    *x == 0.0
}

impl Default for SirenSettings {
    fn default() -> Self {
        Self {
            size: 128,
            layers: 8,
            hidden: 256,
            w0: 30.0,
            cutouts: 8,
            lower: 0.1,
            upper: 1.0,
            lr: 1e-4,
            steps: 200,
            grad_accum: 1,
            averaging_weight: 0.3,
            tv_weight: 0.0,
            cutout_noise: 0.0,
            cutout_rotation: 0.0,
        }
    }
}

impl SirenSettings {
    /// Rejects settings that cannot run, naming the option and what was expected.
    pub fn validate(&self) -> std::result::Result<(), InputError> {
        let fail = |m: String| Err(InputError::new(m));
        if self.steps == 0 {
            return fail("--steps must be at least 1".into());
        }
        if self.cutouts == 0 {
            return fail("--cutouts must be at least 1".into());
        }
        if self.size < 8 {
            return fail(format!(
                "--size {} is too small: expected at least 8 pixels",
                self.size
            ));
        }
        if self.layers == 0 || self.hidden == 0 {
            return fail("--layers and --hidden must be at least 1".into());
        }
        if self.grad_accum == 0 {
            return fail("--grad-accum must be at least 1".into());
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return fail(format!("--lr {} must be a positive number", self.lr));
        }
        if !(self.w0.is_finite() && self.w0 > 0.0) {
            return fail(format!("--w0 {} must be a positive number", self.w0));
        }
        if !(0.0 < self.lower && self.lower <= self.upper && self.upper <= 1.0) {
            return fail(format!(
                "cutout bounds --lower {} --upper {} must satisfy 0 < lower <= upper <= 1",
                self.lower, self.upper
            ));
        }
        if !(self.tv_weight.is_finite() && self.tv_weight >= 0.0) {
            return fail(format!(
                "--tv-weight {} must be a number of at least 0",
                self.tv_weight
            ));
        }
        if !(0.0..=1.0).contains(&self.cutout_noise) {
            return fail(format!(
                "--cutout-noise {} must lie in [0, 1] (a standard deviation in pixel units)",
                self.cutout_noise
            ));
        }
        if !(0.0..=45.0).contains(&self.cutout_rotation) {
            return fail(format!(
                "--cutout-rotation {} must lie in [0, 45] (degrees)",
                self.cutout_rotation
            ));
        }
        if !(0.0..=1.0).contains(&self.averaging_weight) {
            return fail(format!(
                "--averaging-weight {} must lie in [0, 1]",
                self.averaging_weight
            ));
        }
        self.check_memory(None)
    }

    /// [`Self::validate`]'s memory bound with the CLIP that will guide (its config.json, read
    /// before the weights): refuses settings whose [`Self::memory_estimate`] exceeds the
    /// machine's memory, naming them, the estimate and the memory.
    pub fn validate_memory(&self, clip: &ClipConfig) -> std::result::Result<(), InputError> {
        self.check_memory(Some(clip))
    }

    fn check_memory(&self, clip: Option<&ClipConfig>) -> std::result::Result<(), InputError> {
        let (bytes, setting) = self.memory_estimate(clip);
        crate::resources::check_memory(&setting, bytes)
    }

    /// Estimated peak working memory of guidance with these settings, in bytes, and the settings
    /// to name when it is too much (those of its largest term). With `clip` `None` (not known
    /// yet) the CLIP's weights are left out and each cutout counts at the smallest encoder input
    /// ([`super::memory::cutout_floor`]): a lower bound.
    ///
    /// With N = size^2 pixels, L layers of width H and C cutouts, in f32 (4 bytes):
    /// - the SIREN's tape: each sine layer's input and sine derivative [N, H], the last layer's
    ///   input, and the backward's running gradient and input gradient: (2L + 3) N H floats;
    ///   other per-pixel tensors (coordinates, image, clamp mask, gradients): 24 N floats;
    /// - its parameters 3H + (L - 1)(H^2 + H) + 3H + 3, with their gradients and Adam's two
    ///   moments (and the accumulated gradients with --grad-accum > 1): 5 (6) copies;
    /// - per cutout: its crop ([`super::memory::cutout_crop`] at upper x size) and the
    ///   encoder's activations ([`super::memory::clip_cutout`]);
    /// - the step records; the process ([`super::memory::PROCESS`]) and CLIP's weights
    ///   ([`super::memory::clip_weights`]), with the larger of the above and CLIP's weights
    ///   file while it loads ([`super::memory::clip_load`]).
    ///
    /// Calibration, ViT-B/32 at 224 px (peaks of `examples/w1_profile.rs` in a dev build, and
    /// README's W1 / W1b from release builds): 8x256 with 8 cutouts 1927 MiB estimated, 1958
    /// measured (README: 1907); 16x256 with 4 cutouts 2660 MiB, 2713 (README: 2659); 8x256 with
    /// 1 and 16 cutouts 1837 and 2030 MiB, 1851 and 2026 measured (tests below). Smaller steps
    /// matched as well, 8x256 at 112 px 1222 MiB against 1256 and 4x128 at 224 px 1265 against
    /// 1268, but there the estimate is CLIP's load (1470 MiB: its weights file is read whole),
    /// which `w1_profile`, drawing random weights, does not do.
    pub fn memory_estimate(&self, clip: Option<&ClipConfig>) -> (f64, String) {
        use super::memory::{
            clip_cutout, clip_load, clip_weights, cutout_crop, cutout_floor, F32, PROCESS, STEP,
        };
        let size = self.size as f64;
        let n = size * size;
        let (l, h) = (self.layers as f64, self.hidden as f64);
        let tape = F32 * n * (h * (2.0 * l + 3.0) + 24.0);
        let params = 3.0 * h + (l - 1.0).max(0.0) * (h * h + h) + 3.0 * h + 3.0;
        let copies = if self.grad_accum > 1 { 6.0 } else { 5.0 };
        let crop = (self.upper * size).min(size);
        let per_cutout = match clip {
            Some(c) => cutout_crop(crop) + clip_cutout(&c.vision),
            None => cutout_floor(crop),
        };
        let terms = [
            (
                tape,
                format!(
                    "--size {} with --layers {} and --hidden {}",
                    self.size, self.layers, self.hidden
                ),
            ),
            (
                F32 * params * copies,
                format!("--hidden {} with --layers {}", self.hidden, self.layers),
            ),
            (
                self.cutouts as f64 * per_cutout,
                format!("--cutouts {} at --size {}", self.cutouts, self.size),
            ),
            (self.steps as f64 * STEP, format!("--steps {}", self.steps)),
        ];
        let guidance: f64 = terms.iter().map(|t| t.0).sum();
        let total = PROCESS
            + match clip {
                Some(c) => clip_weights(c) + guidance.max(clip_load(c)),
                None => guidance,
            };
        let named = terms
            .into_iter()
            .max_by(|a, b| a.0.total_cmp(&b.0))
            .map(|t| t.1)
            .unwrap_or_default();
        (total, named)
    }

    pub fn siren(&self) -> SirenConfig {
        SirenConfig {
            layers: self.layers,
            hidden: self.hidden,
            w0: self.w0,
            w0_initial: self.w0,
        }
    }
}

/// deep-daze's generator: a SIREN of these settings guided by `encoder`.
pub struct SirenGenerator<'a> {
    pub encoder: &'a dyn ImageEncoder,
    pub settings: SirenSettings,
    pub device: Device,
}

impl Generator for SirenGenerator<'_> {
    fn kind(&self) -> GeneratorKind {
        GeneratorKind::Siren
    }

    fn steps(&self) -> usize {
        self.settings.steps
    }

    fn encoder(&self) -> &dyn ImageEncoder {
        self.encoder
    }

    fn start(&self, text: &Tensor, seed: u64) -> anyhow::Result<Box<dyn Guidance + '_>> {
        let g = SirenGuidance::new(&self.settings, self.encoder, text, seed, &self.device)?;
        Ok(Box::new(g))
    }
}

/// Squared total variation of an image [C, H, W]: the mean squared difference between
/// horizontally and between vertically neighbouring pixels, summed.
pub fn total_variation(image: &Tensor) -> Result<Tensor> {
    let (_, h, w) = image.dims3()?;
    let dx = (image.narrow(2, 1, w - 1)? - image.narrow(2, 0, w - 1)?)?;
    let dy = (image.narrow(1, 1, h - 1)? - image.narrow(1, 0, h - 1)?)?;
    dx.sqr()?.mean_all()? + dy.sqr()?.mean_all()?
}

/// Gaussian noise N(0, std^2) of `like`'s shape, drawn on the host from `rng` (candle's own
/// random numbers cannot be seeded).
fn gaussian_like(like: &Tensor, std: f64, rng: &mut ChaCha8Rng) -> Result<Tensor> {
    use rand_distr::Distribution;
    let normal = rand_distr::Normal::new(0f32, std as f32)
        .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
    let v: Vec<f32> = (0..like.elem_count()).map(|_| normal.sample(rng)).collect();
    Tensor::from_vec(v, like.shape(), like.device())
}

/// A SIREN being optimised towards one phrase.
pub struct SirenGuidance<'a> {
    settings: SirenSettings,
    encoder: &'a dyn ImageEncoder,
    text: Tensor,
    net: Siren,
    opt: Adam,
    rng: ChaCha8Rng,
    /// The cutout noise's own stream, so that turning noise on leaves the cutouts where they were.
    noise_rng: ChaCha8Rng,
    /// The rotations' own stream, likewise.
    rotation_rng: ChaCha8Rng,
    coords: Tensor,
    step: usize,
}

impl<'a> SirenGuidance<'a> {
    /// `text` is the phrase's raw embedding [1, D]; `seed` drives the initialisation and cutouts.
    pub fn new(
        settings: &SirenSettings,
        encoder: &'a dyn ImageEncoder,
        text: &Tensor,
        seed: u64,
        device: &Device,
    ) -> Result<Self> {
        let (varmap, net) = Siren::init(&settings.siren(), seed, device)?;
        // Bit-identical to candle-nn's AdamW (beta 0.9, 0.999, eps 1e-8, decay 0), used before.
        let opt = Adam::new(named_vars(&varmap)?, settings.lr)?.with_weight_decay_everywhere(0.0);
        // The cutouts draw from their own stream of the same seed.
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        rng.set_stream(1);
        let mut noise_rng = ChaCha8Rng::seed_from_u64(seed);
        noise_rng.set_stream(2);
        let mut rotation_rng = ChaCha8Rng::seed_from_u64(seed);
        rotation_rng.set_stream(3);
        Ok(Self {
            settings: settings.clone(),
            encoder,
            text: l2_normalize(&text.detach())?,
            net,
            opt,
            rng,
            noise_rng,
            rotation_rng,
            coords: coord_grid(settings.size, settings.size, device)?,
            step: 0,
        })
    }
}

impl Guidance for SirenGuidance<'_> {
    /// One optimiser step (with gradient accumulation); returns its record.
    ///
    /// candle's autograd runs only from the loss back to the image (cutouts, resize, CLIP); the
    /// SIREN's backward is hand-written ([`crate::models::siren::SirenTape`]), which is where
    /// most of the work is.
    fn step(&mut self) -> Result<StepRecord> {
        let t0 = Instant::now();
        let s = &self.settings;
        let accum = s.grad_accum;
        let params = self.net.parameters();
        let mut total: Option<(GradStore, Vec<Tensor>)> = None;
        let (mut loss_sum, mut sim_sum) = (0f32, 0f32);
        for _ in 0..accum {
            let (image, tape) = self.net.render_taped(&self.coords, s.size, s.size)?;
            let image = Var::from_tensor(&image)?;
            let cuts = deep_daze_cutouts(&mut self.rng, s.cutouts, s.size, s.lower, s.upper);
            let size = self.encoder.input_size();
            let mut batch = cutout_batch(image.as_tensor(), &cuts, size, Resize::Bilinear)?;
            if s.cutout_rotation > 0.0 {
                let r = s.cutout_rotation;
                let angles: Vec<f64> = (0..cuts.len())
                    .map(|_| self.rotation_rng.random_range(-r..=r))
                    .collect();
                batch = rotate_batch(&batch, &angles)?;
            }
            if s.cutout_noise > 0.0 {
                batch = (&batch + gaussian_like(&batch, s.cutout_noise, &mut self.noise_rng)?)?;
            }
            let (loss, sim, store) = encode_and_backward(self.encoder, &batch, |emb| {
                let (loss, sim) = deep_daze_loss(&self.text, emb, s.averaging_weight)?;
                Ok(((loss / accum as f64)?, sim))
            })?;
            loss_sum += loss.to_scalar::<f32>()?;
            sim_sum += sim.to_scalar::<f32>()? / accum as f32;
            let mut grad_image = store
                .get(image.as_tensor())
                .ok_or_else(|| candle_core::Error::Msg("no gradient reached the image".into()))?
                .clone();
            if s.tv_weight > 0.0 {
                let tv = (total_variation(image.as_tensor())? * (s.tv_weight / accum as f64))?;
                loss_sum += tv.to_scalar::<f32>()?;
                let tv_grads = tv.backward()?;
                if let Some(g) = tv_grads.get(image.as_tensor()) {
                    grad_image = (grad_image + g)?;
                }
            }
            let grads = tape.backward(&self.net, &grad_image)?;
            total = Some(match total {
                None => (store, grads),
                Some((store, acc)) => {
                    let acc = acc
                        .iter()
                        .zip(&grads)
                        .map(|(a, g)| a + g)
                        .collect::<Result<Vec<_>>>()?;
                    (store, acc)
                }
            });
        }
        if let Some((mut store, grads)) = total {
            for (p, g) in params.iter().zip(grads) {
                store.insert(p, g);
            }
            self.opt.step(&store)?;
        }
        self.step += 1;
        Ok(StepRecord {
            step: self.step,
            loss: loss_sum,
            similarity: sim_sum,
            seconds: t0.elapsed().as_secs_f64(),
        })
    }

    /// The current image, [3, size, size] in [0, 1], detached from the graph.
    fn image(&self) -> Result<Tensor> {
        Ok(self
            .net
            .render(&self.coords, self.settings.size, self.settings.size)?
            .detach())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn total_variation_is_the_mean_squared_neighbour_difference() {
        // One channel, 2 x 3: horizontal differences 1, 2 | 0, 0; vertical 3, 1, 4.
        let img = Tensor::new(&[[[0f32, 1.0, 3.0], [3.0, 2.0, 7.0]]], &Device::Cpu).unwrap();
        let want = (1.0 + 1.0 + 4.0 + 25.0) / 4.0 + (9.0 + 1.0 + 16.0) / 3.0;
        let got = total_variation(&img).unwrap().to_scalar::<f32>().unwrap();
        assert!((got as f64 - want).abs() < 1e-6 * want, "{got} vs {want}");
        let flat = Tensor::ones((3, 4, 4), candle_core::DType::F32, &Device::Cpu).unwrap();
        assert_eq!(
            total_variation(&flat).unwrap().to_scalar::<f32>().unwrap(),
            0.0
        );
    }

    const MIB: f64 = 1024.0 * 1024.0;

    fn w1(layers: usize, cutouts: usize) -> SirenSettings {
        SirenSettings {
            size: 224,
            layers,
            hidden: 256,
            cutouts,
            ..SirenSettings::default()
        }
    }

    /// README's Performance table: W1 (8x256, 224 px, 8 cutouts, ViT-B/32) peaks at 1907 MiB,
    /// W1b (16x256, 4 cutouts) at 2659 MiB.
    #[test]
    fn memory_estimate_matches_the_measured_peaks() {
        let clip = ClipConfig::vit_b32();
        // README's release peaks, then peaks of examples/w1_profile.rs in a dev build.
        for (s, measured) in [
            (w1(8, 8), 1907.0),
            (w1(16, 4), 2659.0),
            (w1(8, 1), 1851.0),
            (w1(8, 16), 2026.0),
        ] {
            let mib = s.memory_estimate(Some(&clip)).0 / MIB;
            assert!(
                (measured * 0.95..measured * 1.05).contains(&mib),
                "{}x{} {} cutouts: {mib:.0} MiB estimated, {measured} measured",
                s.layers,
                s.hidden,
                s.cutouts
            );
            // Without the CLIP: a lower bound.
            assert!(s.memory_estimate(None).0 < s.memory_estimate(Some(&clip)).0);
        }
        // The defaults and deep-daze's GPU settings are far from absurd.
        let d = SirenSettings::default().memory_estimate(Some(&clip)).0 / MIB;
        assert!(d < 1600.0, "{d}");
        let deep_daze = SirenSettings {
            size: 512,
            layers: 16,
            hidden: 256,
            cutouts: 4,
            ..SirenSettings::default()
        };
        let gib = deep_daze.memory_estimate(Some(&clip)).0 / (1024.0 * MIB);
        assert!((8.0..14.0).contains(&gib), "{gib}");
    }

    #[test]
    fn the_largest_term_names_its_settings_and_nothing_overflows() {
        let named = |s: SirenSettings| {
            let (bytes, name) = s.memory_estimate(None);
            assert!(bytes.is_finite() && bytes > 1e13, "{name}: {bytes}");
            name
        };
        let d = SirenSettings::default();
        assert_eq!(
            named(SirenSettings {
                size: 1_000_000,
                ..d.clone()
            }),
            "--size 1000000 with --layers 8 and --hidden 256"
        );
        assert_eq!(
            named(SirenSettings {
                hidden: 10_000_000_000,
                ..d.clone()
            }),
            "--hidden 10000000000 with --layers 8"
        );
        assert!(named(SirenSettings {
            layers: 1_000_000_000_000,
            ..d.clone()
        })
        .contains("--layers 1000000000000"));
        assert_eq!(
            named(SirenSettings {
                cutouts: 1_000_000_000_000,
                ..d.clone()
            }),
            "--cutouts 1000000000000 at --size 128"
        );
        assert_eq!(
            named(SirenSettings {
                steps: usize::MAX,
                ..d.clone()
            }),
            format!("--steps {}", usize::MAX)
        );
        let all = SirenSettings {
            size: usize::MAX,
            layers: usize::MAX,
            hidden: usize::MAX,
            cutouts: usize::MAX,
            steps: usize::MAX,
            ..d
        };
        assert!(all.memory_estimate(None).0.is_finite());
        assert!(all.validate().is_err());
    }
}
