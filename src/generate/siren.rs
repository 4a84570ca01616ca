//! deep-daze's generator: a SIREN rendered to an image and optimised with Adam so that CLIP finds
//! random cutouts of the image similar to the phrase.

use std::time::Instant;

use candle_core::{backprop::GradStore, Device, Result, Tensor, Var};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use super::{
    cutout_batch, deep_daze_loss, encode_and_backward, l2_normalize, sample_cutouts, ImageEncoder,
    StepRecord,
};
use crate::error::InputError;
use crate::models::siren::{coord_grid, Config as SirenConfig, Siren};

/// Settings of a SIREN run. The defaults are sized for a 2-core CPU (a phrase in minutes);
/// deep-daze's GPU defaults are given beside each field.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct Settings {
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
}

impl Default for Settings {
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
        }
    }
}

impl Settings {
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
        if !(0.0..=1.0).contains(&self.averaging_weight) {
            return fail(format!(
                "--averaging-weight {} must lie in [0, 1]",
                self.averaging_weight
            ));
        }
        Ok(())
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

/// A SIREN being optimised towards one phrase.
pub struct SirenRun<'a> {
    settings: Settings,
    encoder: &'a dyn ImageEncoder,
    text: Tensor,
    net: Siren,
    opt: AdamW,
    rng: ChaCha8Rng,
    coords: Tensor,
    step: usize,
}

impl<'a> SirenRun<'a> {
    /// `text` is the phrase's raw embedding [1, D]; `seed` drives the initialisation and cutouts.
    pub fn new(
        settings: &Settings,
        encoder: &'a dyn ImageEncoder,
        text: &Tensor,
        seed: u64,
        device: &Device,
    ) -> Result<Self> {
        let (varmap, net) = Siren::init(&settings.siren(), seed, device)?;
        let opt = AdamW::new(
            varmap.all_vars(),
            ParamsAdamW {
                lr: settings.lr,
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-8,
                weight_decay: 0.0,
            },
        )?;
        // The cutouts draw from their own stream of the same seed.
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        rng.set_stream(1);
        Ok(Self {
            settings: settings.clone(),
            encoder,
            text: l2_normalize(&text.detach())?,
            net,
            opt,
            rng,
            coords: coord_grid(settings.size, settings.size, device)?,
            step: 0,
        })
    }

    /// One optimiser step (with gradient accumulation); returns its record.
    ///
    /// candle's autograd runs only from the loss back to the image (cutouts, resize, CLIP); the
    /// SIREN's backward is hand-written ([`SirenTape`]), which is where most of the work is.
    pub fn step(&mut self) -> Result<StepRecord> {
        let t0 = Instant::now();
        let s = &self.settings;
        let accum = s.grad_accum;
        let params = self.net.parameters();
        let mut total: Option<(GradStore, Vec<Tensor>)> = None;
        let (mut loss_sum, mut sim_sum) = (0f32, 0f32);
        for _ in 0..accum {
            let (image, tape) = self.net.render_taped(&self.coords, s.size, s.size)?;
            let image = Var::from_tensor(&image)?;
            let cuts = sample_cutouts(&mut self.rng, s.cutouts, s.size, s.lower, s.upper);
            let batch = cutout_batch(image.as_tensor(), &cuts, self.encoder.input_size())?;
            let (loss, sim, store) = encode_and_backward(self.encoder, &batch, |emb| {
                let (loss, sim) = deep_daze_loss(&self.text, emb, s.averaging_weight)?;
                Ok(((loss / accum as f64)?, sim))
            })?;
            loss_sum += loss.to_scalar::<f32>()?;
            sim_sum += sim.to_scalar::<f32>()? / accum as f32;
            let grad_image = store
                .get(image.as_tensor())
                .ok_or_else(|| candle_core::Error::Msg("no gradient reached the image".into()))?;
            let grads = tape.backward(&self.net, grad_image)?;
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
    pub fn image(&self) -> Result<Tensor> {
        Ok(self
            .net
            .render(&self.coords, self.settings.size, self.settings.size)?
            .detach())
    }
}
