//! CLIP-guided image generation: the first half of the round trip (phrase -> image).
//!
//! A generator owns trainable parameters that render an image; each step draws random square
//! cutouts of the image, resizes them to the encoder's input, and pulls their embeddings towards
//! the phrase's. Every random draw comes from a seeded host RNG.

pub mod biggan;
pub mod job;
pub mod siren;

use candle_core::{backprop::GradStore, Result, Tensor, Var};
use rand::Rng;
use serde::Serialize;

use crate::imageops::resize_bilinear;
pub use crate::models::clip::l2_normalize;

/// d loss / d images from d loss / d embeddings: an encoder's hand-written backward.
pub type EncoderBackward<'a> = Box<dyn FnOnce(&Tensor) -> Result<Tensor> + 'a>;

/// An image encoder that guides generation (CLIP's image tower).
pub trait ImageEncoder {
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

/// A square crop: side and top-left corner, in pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cutout {
    pub side: usize,
    pub y: usize,
    pub x: usize,
}

/// deep-daze's cutouts of a `width`-pixel image: side uniform in [lower * W, upper * W) (at least
/// 1 pixel, at most W), offsets uniform over every position where the crop fits.
pub fn sample_cutouts(
    rng: &mut impl Rng,
    n: usize,
    width: usize,
    lower: f64,
    upper: f64,
) -> Vec<Cutout> {
    let lo = ((lower * width as f64) as usize).clamp(1, width);
    let hi = ((upper * width as f64) as usize).clamp(lo + 1, width + 1);
    (0..n)
        .map(|_| {
            let side = rng.random_range(lo..hi);
            let y = rng.random_range(0..=width - side);
            let x = rng.random_range(0..=width - side);
            Cutout { side, y, x }
        })
        .collect()
}

/// Crops each cutout from `image` [3, H, W] and resizes it (bilinear) to `size`: [N, 3, size, size].
pub fn cutout_batch(image: &Tensor, cutouts: &[Cutout], size: usize) -> Result<Tensor> {
    let pieces = cutouts
        .iter()
        .map(|c| {
            let crop = image.narrow(1, c.y, c.side)?.narrow(2, c.x, c.side)?;
            resize_bilinear(&crop, size, size)
        })
        .collect::<Result<Vec<_>>>()?;
    Tensor::stack(&pieces, 0)
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

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn cutouts_fit_and_respect_bounds() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let cs = sample_cutouts(&mut rng, 500, 64, 0.1, 1.0);
        assert!(cs
            .iter()
            .all(|c| c.side >= 6 && c.side < 64 && c.y + c.side <= 64 && c.x + c.side <= 64));
        assert!(cs.iter().any(|c| c.side < 12) && cs.iter().any(|c| c.side > 56));
        let full = sample_cutouts(&mut rng, 20, 10, 1.0, 1.0);
        assert!(full.iter().all(|c| *c
            == Cutout {
                side: 10,
                y: 0,
                x: 0
            }));
    }
}
