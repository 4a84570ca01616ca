//! CLIP-guided image generation: the first half of the round trip (phrase -> image).
//!
//! A generator owns trainable parameters that render an image; each step draws random square
//! cutouts of the image ([`cutouts`]), resizes them to the encoder's input, and pulls their
//! embeddings towards the phrase's. Every random draw comes from a seeded host RNG.
//!
//! [`generator`] is the registry ([`GeneratorKind`], the [`Generator`] and [`Guidance`] traits
//! and the one [`drive`] loop); [`siren`] and [`biggan`] implement it; [`clip`] is the guide;
//! [`command`] is `roundtrip generate`.

pub mod biggan;
pub mod clip;
pub mod command;
pub mod cutouts;
pub mod generator;
pub mod siren;

use candle_core::{backprop::GradStore, Result, Tensor, Var};
use serde::Serialize;

pub use crate::models::clip::l2_normalize;
use crate::models::clip::{ClipConfig, ClipVisionConfig};
pub use biggan::{BigGanGenerator, BigGanSettings, Resize};
pub use generator::{drive, Generated, Generator, GeneratorKind, Guidance};
pub use siren::{SirenGenerator, SirenSettings};

/// d loss / d images from d loss / d embeddings: an encoder's hand-written backward.
pub type EncoderBackward<'a> = Box<dyn FnOnce(&Tensor) -> Result<Tensor> + 'a>;

/// An image encoder that guides generation (CLIP's image tower).
/// `Sync`: `run` guides several images at once with one encoder.
pub trait ImageEncoder: Sync {
    /// Side of the square input the encoder takes.
    fn input_size(&self) -> usize;
    /// [N, 3, S, S] images in [0, 1] -> [N, D] raw embeddings, differentiable w.r.t. the images.
    fn encode_images(&self, images: &Tensor) -> Result<Tensor>;
    /// The embeddings (detached) and the encoder's hand-written backward, where it has one for
    /// these images on this device; `None` means "use autograd through [`Self::encode_images`]".
    fn encode_images_taped(
        &self,
        _images: &Tensor,
    ) -> Result<Option<(Tensor, EncoderBackward<'_>)>> {
        Ok(None)
    }
}

/// Encodes `batch`, computes `loss_of(embeddings)` = (loss, similarity) and back-propagates the
/// loss to everything `batch` was computed from. With an encoder's hand-written backward
/// ([`ImageEncoder::encode_images_taped`]) autograd runs on the two ends only: loss ->
/// embeddings, and batch -> its sources (through the surrogate `sum(batch * d loss / d batch)`,
/// whose gradient w.r.t. the sources is exactly the loss's through the encoder; terms of the loss
/// that do not depend on the embeddings keep their gradients).
pub fn encode_and_backward(
    encoder: &dyn ImageEncoder,
    batch: &Tensor,
    loss_of: impl FnOnce(&Tensor) -> Result<(Tensor, Tensor)>,
) -> Result<(Tensor, Tensor, GradStore)> {
    let Some((emb, back)) = encoder.encode_images_taped(batch)? else {
        let (loss, sim) = loss_of(&encoder.encode_images(batch)?)?;
        let store = loss.backward()?;
        return Ok((loss, sim, store));
    };
    let emb = Var::from_tensor(&emb)?;
    let (loss, sim) = loss_of(emb.as_tensor())?;
    let g_emb = loss
        .backward()?
        .get(emb.as_tensor())
        .cloned()
        .ok_or_else(|| candle_core::Error::Msg("no gradient reached the embeddings".into()))?;
    let g_batch = back(&g_emb)?;
    // The loss again for the terms that do not go through the encoder (regularisers of the
    // sources); its path through the embeddings ends at their detached copy.
    let store = (&loss + batch.mul(&g_batch)?.sum_all()?)?.backward()?;
    Ok((loss, sim, store))
}

/// deep-daze's loss for one batch of cutout embeddings `emb` [N, D] and the normalised phrase
/// embedding `text` [1, D]: w * (-100 cos(t, normalize(mean e))) + (1 - w) * (-100 mean cos(t, e_i)),
/// with w the averaging weight (0.3). Returns (loss, mean cosine similarity of the cutouts).
pub fn deep_daze_loss(
    text: &Tensor,
    emb: &Tensor,
    averaging_weight: f64,
) -> Result<(Tensor, Tensor)> {
    let e = l2_normalize(emb)?;
    let avg = l2_normalize(&e.mean_keepdim(0)?)?;
    let cos_avg = avg.matmul(&text.t()?)?.mean_all()?;
    let cos_each = e.matmul(&text.t()?)?.mean_all()?;
    let loss = ((cos_avg * (-100.0 * averaging_weight))?
        + (&cos_each * (-100.0 * (1.0 - averaging_weight)))?)?;
    Ok((loss, cos_each))
}

/// Working memory of CLIP guidance, in bytes, as f64 so that absurd settings cannot overflow.
///
/// A model of what guidance keeps alive at its peak: the models' weights, and either the weights
/// file being read (loading) or a guidance step (the encoder's backward with the generator's tape
/// still held), whichever is larger. Calibrated against peaks measured with
/// `examples/w1_profile.rs` (`/usr/bin/time -f %M`, ViT-B/32 with random weights) and README's
/// Performance table: see [`SirenSettings::memory_estimate`] and
/// [`BigGanSettings::memory_estimate`]. Settings whose estimate exceeds the machine's memory
/// are refused by [`crate::resources::check_memory`] before anything is allocated or written.
pub mod memory {
    use super::{ClipConfig, ClipVisionConfig};

    /// Bytes of an f32.
    pub const F32: f64 = 4.0;

    /// The process besides its tensors: code, thread pools, tokenizer, the allocator's slack
    /// (calibrated: the measured peaks less the modelled tensors, 110-160 MiB).
    pub const PROCESS: f64 = 128.0 * 1024.0 * 1024.0;

    /// Bytes a guidance step adds to the outputs kept until the end: its [`super::StepRecord`] and
    /// its line of the JSON record.
    pub const STEP: f64 = 160.0;

    /// What the image tower keeps per cutout at the peak, in units of the tensors its tape saves
    /// per layer (input, q/k/v projection, residual after attention: 5 x tokens x width; fc1's
    /// output: tokens x intermediate). Measured with ViT-B/32 at 224 px: 1, 8 and 16 cutouts of
    /// a 224 px 8x256 SIREN peak at 1851, 1958 and 2026 MiB, about 12 MiB a cutout, of which
    /// the saved tensors are 15.8 MiB: part of them is freed before the SIREN's backward, which
    /// is then the peak.
    pub const CLIP_CUTOUT_FACTOR: f64 = 0.6;

    /// The smallest encoder input assumed where the CLIP is not known yet (the tiny test CLIP's).
    pub const MIN_ENCODER_INPUT: f64 = 32.0;

    /// Parameters of both towers and the projections (what its weights file holds).
    pub fn clip_parameters(cfg: &ClipConfig) -> f64 {
        let v = &cfg.vision;
        let (d, i, l) = (
            v.hidden_size as f64,
            v.intermediate_size as f64,
            v.num_hidden_layers as f64,
        );
        let p = v.patch_size as f64;
        let vision = v.num_channels as f64 * p * p * d
            + v.num_positions() as f64 * d
            + l * (4.0 * d * d + 2.0 * d * i + 9.0 * d + i);
        let t = &cfg.text;
        let (dt, it, lt) = (
            t.hidden_size as f64,
            t.intermediate_size as f64,
            t.num_hidden_layers as f64,
        );
        let text = (t.vocab_size + t.max_position_embeddings) as f64 * dt
            + lt * (4.0 * dt * dt + 2.0 * dt * it + 9.0 * dt + it);
        vision + text + (d + dt) * cfg.projection_dim as f64
    }

    /// CLIP's weights in memory: its parameters, plus the taped image tower's copies (the stacked
    /// q/k/v projection and fc2's transposed weight) in every layer. ViT-B/32: 765 MiB.
    pub fn clip_weights(cfg: &ClipConfig) -> f64 {
        let v = &cfg.vision;
        let (d, i) = (v.hidden_size as f64, v.intermediate_size as f64);
        let copies = v.num_hidden_layers as f64 * (3.0 * d * d + d * i);
        F32 * (clip_parameters(cfg) + copies)
    }

    /// While CLIP loads, its weights file is in memory besides the weights built from it.
    pub fn clip_load(cfg: &ClipConfig) -> f64 {
        F32 * clip_parameters(cfg)
    }

    /// Per cutout, in the encoder: the cutout at its input size, its gradient and the loss's
    /// surrogate product (4 images), and what the image tower keeps of its activations
    /// ([`CLIP_CUTOUT_FACTOR`]). ViT-B/32: 11.8 MiB.
    pub fn clip_cutout(v: &ClipVisionConfig) -> f64 {
        let s = v.image_size as f64;
        let tokens = v.num_positions() as f64;
        let (d, i) = (v.hidden_size as f64, v.intermediate_size as f64);
        let saved = v.num_hidden_layers as f64 * tokens * (5.0 * d + i);
        F32 * (4.0 * v.num_channels as f64 * s * s + CLIP_CUTOUT_FACTOR * saved)
    }

    /// Per cutout, outside the encoder: its record and its crop (3 channels), at most `side`
    /// pixels square. Measured: 64 cutouts of a 512 px image (sides 0.1-1.0 of it) add 70 MiB,
    /// 1.1 MiB each; the largest crop, counted here, is 3 MiB.
    pub fn cutout_crop(side: f64) -> f64 {
        24.0 + F32 * 3.0 * side * side
    }

    /// Per cutout where the CLIP is not known yet (`run`'s validation): [`cutout_crop`], and the
    /// cutout at the smallest encoder input ([`MIN_ENCODER_INPUT`]) with its gradient.
    pub fn cutout_floor(side: f64) -> f64 {
        cutout_crop(side) + F32 * 2.0 * 3.0 * MIN_ENCODER_INPUT * MIN_ENCODER_INPUT
    }
}

/// Reads the config.json of a CLIP reference (preset, hub id or folder) without loading its
/// weights, for the memory bound; `None` where it cannot be read (loading the model will say why).
pub fn clip_config(locator: &crate::hub::Locator, spec: &str) -> Option<ClipConfig> {
    let model = locator
        .open(&crate::hub::ModelRef::parse(spec).ok()?)
        .ok()?;
    let text = std::fs::read_to_string(model.file("config.json").ok()?).ok()?;
    ClipConfig::from_json(&text).ok()
}

/// Reads the config.json of a BigGAN reference without loading its weights, for the memory
/// bound; `None` where it cannot be read (loading the model will say why).
pub fn biggan_config(
    locator: &crate::hub::Locator,
    spec: &str,
) -> Option<crate::models::biggan::Config> {
    let model = locator
        .open(&crate::hub::ModelRef::parse(spec).ok()?)
        .ok()?;
    let text = std::fs::read_to_string(model.file("config.json").ok()?).ok()?;
    crate::models::biggan::Config::from_json(&text).ok()
}

/// One guidance step as recorded in outputs.
#[derive(Debug, Clone, Serialize)]
pub struct StepRecord {
    pub step: usize,
    pub loss: f32,
    /// Mean cosine similarity between the phrase and the step's cutouts.
    pub similarity: f32,
    pub seconds: f64,
}
