//! Random square cutouts of a generated image, the views CLIP judges at each guidance step.
//!
//! Each generator reproduces its original's sampler ([`deep_daze_cutouts`] for SIREN,
//! [`big_sleep_cutouts`] for BigGAN), so that seeds draw the same crops as before; both are
//! cropped and resized to the encoder's input by [`cutout_batch`].

use candle_core::{Result, Tensor};
use rand::Rng;
use rand_distr::{Distribution, Normal};
use serde::{Deserialize, Serialize};

use crate::imageops::resize::{resize_bilinear, resize_nearest};

/// A square crop: side and top-left corner, in pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cutout {
    pub side: usize,
    pub y: usize,
    pub x: usize,
}

/// How cutouts are resized to the encoder's input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Resize {
    /// big-sleep's default (`F.interpolate(mode="nearest")`).
    #[default]
    Nearest,
    /// big-sleep's `--bilinear` (align_corners = false); deep-daze's only mode.
    Bilinear,
}

/// deep-daze's cutouts of a `width`-pixel image: side uniform in [lower * W, upper * W) (at least
/// 1 pixel, at most W), offsets uniform over every position where the crop fits.
pub fn deep_daze_cutouts(
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

/// big-sleep's cutouts: side int(W * clip(N(0.8, 0.3), 0.5, 0.95)), offsets uniform over every
/// position where the crop fits.
pub fn big_sleep_cutouts(rng: &mut impl Rng, n: usize, width: usize) -> Vec<Cutout> {
    let normal = Normal::new(0.8f64, 0.3).expect("valid normal");
    (0..n)
        .map(|_| {
            let f = normal.sample(rng).clamp(0.5, 0.95);
            let side = ((width as f64 * f) as usize).clamp(1, width);
            let y = rng.random_range(0..=width - side);
            let x = rng.random_range(0..=width - side);
            Cutout { side, y, x }
        })
        .collect()
}

/// Crops each cutout from `image` [3, H, W] and resizes it to `size`: [N, 3, size, size].
pub fn cutout_batch(
    image: &Tensor,
    cutouts: &[Cutout],
    size: usize,
    mode: Resize,
) -> Result<Tensor> {
    let pieces = cutouts
        .iter()
        .map(|c| {
            let crop = image.narrow(1, c.y, c.side)?.narrow(2, c.x, c.side)?;
            match mode {
                Resize::Nearest => resize_nearest(&crop, size, size),
                Resize::Bilinear => resize_bilinear(&crop, size, size),
            }
        })
        .collect::<Result<Vec<_>>>()?;
    Tensor::stack(&pieces, 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn deep_daze_cutouts_fit_and_respect_bounds() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let cs = deep_daze_cutouts(&mut rng, 500, 64, 0.1, 1.0);
        assert!(cs
            .iter()
            .all(|c| c.side >= 6 && c.side < 64 && c.y + c.side <= 64 && c.x + c.side <= 64));
        assert!(cs.iter().any(|c| c.side < 12) && cs.iter().any(|c| c.side > 56));
        let full = deep_daze_cutouts(&mut rng, 20, 10, 1.0, 1.0);
        assert!(full.iter().all(|c| *c
            == Cutout {
                side: 10,
                y: 0,
                x: 0
            }));
    }

    #[test]
    fn big_sleep_cutouts_follow_its_bounds() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        for c in big_sleep_cutouts(&mut rng, 500, 128) {
            assert!((64..=121).contains(&c.side), "{c:?}");
            assert!(c.y + c.side <= 128 && c.x + c.side <= 128);
        }
    }
}
