//! CLIP-guided image generation: the first half of the round trip (phrase -> image).
//!
//! A generator owns trainable parameters that render an image; each step draws random square
//! cutouts of the image, resizes them to the encoder's input, and pulls their embeddings towards
//! the phrase's. Every random draw comes from a seeded host RNG.

pub mod biggan;
pub mod job;
pub mod siren;

use candle_core::{Result, Tensor};
use rand::Rng;
use serde::Serialize;

use crate::imageops::resize_bilinear;
pub use crate::models::clip::l2_normalize;

/// An image encoder that guides generation (CLIP's image tower).
pub trait ImageEncoder {
    /// Side of the square input the encoder takes.
    fn input_size(&self) -> usize;
    /// [N, 3, S, S] images in [0, 1] -> [N, D] raw embeddings, differentiable w.r.t. the images.
    fn encode_images(&self, images: &Tensor) -> Result<Tensor>;
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
