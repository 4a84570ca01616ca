//! DiffAugment (Zhao, Liu, Lin, Zhu and Han 2020, "Differentiable Augmentation for Data-Efficient
//! GAN Training"; policy `color,translation,cutout` of its `DiffAugment_pytorch.py`), applied to
//! real AND generated images before the discriminator: every operation is differentiable, so the
//! generator learns to draw un-augmented images that look real once augmented. Images are CBHW
//! in [-1, 1]; the random draws come from the host's seeded stream.

use candle_core::{Result, Tensor};
use rand::Rng;

/// Translation of up to this share of the side (the reference's 1/8).
const TRANSLATION: f64 = 0.125;
/// Side of the cutout square as a share of the image's (the reference's 1/2).
const CUTOUT: f64 = 0.5;

/// The draws of one batch's augmentation (so that a step can replay them).
#[derive(Debug, Clone)]
pub struct Draws {
    brightness: Vec<f32>,
    saturation: Vec<f32>,
    contrast: Vec<f32>,
    /// (dy, dx) per image.
    shift: Vec<(i64, i64)>,
    /// Top-left corner of the cutout per image (its centre minus half its side; may be < 0).
    cut: Vec<(i64, i64)>,
}

impl Draws {
    pub fn draw(batch: usize, size: usize, rng: &mut impl Rng) -> Self {
        let s = (size as f64 * TRANSLATION + 0.5) as i64;
        let cut = (size as f64 * CUTOUT + 0.5) as i64;
        let mut u = || rng.random::<f32>();
        let brightness = (0..batch).map(|_| u() - 0.5).collect();
        let saturation = (0..batch).map(|_| u() * 2.0).collect();
        let contrast = (0..batch).map(|_| u() + 0.5).collect();
        let shift = (0..batch)
            .map(|_| (rng.random_range(-s..=s), rng.random_range(-s..=s)))
            .collect();
        let span = size as i64 + (1 - cut % 2);
        let cut = (0..batch)
            .map(|_| {
                (
                    rng.random_range(0..span) - cut / 2,
                    rng.random_range(0..span) - cut / 2,
                )
            })
            .collect();
        Self {
            brightness,
            saturation,
            contrast,
            shift,
            cut,
        }
    }
}

/// x [3, B, H, W] -> augmented x (colour, translation, cutout).
pub fn augment(x: &Tensor, d: &Draws) -> Result<Tensor> {
    let (_, b, h, w) = x.dims4()?;
    let dev = x.device();
    let per = |v: &[f32]| Tensor::from_vec(v.to_vec(), (1, b, 1, 1), dev);
    // Colour: brightness, saturation, contrast.
    let x = x.broadcast_add(&per(&d.brightness)?)?;
    let mean = x.mean_keepdim(0)?;
    let x = x
        .broadcast_sub(&mean)?
        .broadcast_mul(&per(&d.saturation)?)?
        .broadcast_add(&mean)?;
    let mean = x.mean_keepdim(0)?.mean_keepdim(2)?.mean_keepdim(3)?;
    let x = x
        .broadcast_sub(&mean)?
        .broadcast_mul(&per(&d.contrast)?)?
        .broadcast_add(&mean)?;
    // Translation with zero padding: a window of the padded image per sample.
    let s = (h.max(w) as f64 * TRANSLATION + 0.5) as usize;
    let padded = x.pad_with_zeros(2, s, s)?.pad_with_zeros(3, s, s)?;
    let mut parts = Vec::with_capacity(b);
    for (i, &(dy, dx)) in d.shift.iter().enumerate() {
        let y0 = (s as i64 - dy) as usize;
        let x0 = (s as i64 - dx) as usize;
        parts.push(padded.narrow(1, i, 1)?.narrow(2, y0, h)?.narrow(3, x0, w)?);
    }
    let x = Tensor::cat(&parts, 1)?;
    // Cutout: a zeroed square per sample.
    let cut = (h.min(w) as f64 * CUTOUT + 0.5) as i64;
    let mut mask = vec![1f32; b * h * w];
    for (i, &(cy, cx)) in d.cut.iter().enumerate() {
        for y in cy.max(0)..(cy + cut).min(h as i64) {
            for xx in cx.max(0)..(cx + cut).min(w as i64) {
                mask[(i * h + y as usize) * w + xx as usize] = 0.0;
            }
        }
    }
    x.broadcast_mul(&Tensor::from_vec(mask, (1, b, h, w), dev)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};
    use rand::SeedableRng;

    #[test]
    fn augmentation_is_differentiable_and_cuts_a_square() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let d = Draws::draw(2, 8, &mut rng);
        let x = Var::from_vec(vec![0.5f32; 3 * 2 * 8 * 8], 3 * 2 * 8 * 8, &Device::Cpu).unwrap();
        let xr = x.as_tensor().reshape((3, 2, 8, 8)).unwrap();
        let y = augment(&xr, &d).unwrap();
        let y0: Vec<f32> = y.flatten_all().unwrap().to_vec1().unwrap();
        // A 4 x 4 cutout (clipped at the border) and the translation's zero border.
        let zeros = y0.iter().filter(|v| **v == 0.0).count();
        assert!(zeros >= 3 * 2 && zeros < y0.len(), "{zeros}");
        let g = y.sum_all().unwrap().backward().unwrap();
        let gx: Vec<f32> = g.get(&x).unwrap().to_vec1().unwrap();
        assert!(gx.iter().any(|v| *v != 0.0));
        // Same draws, same result.
        assert_eq!(
            y0,
            augment(&xr, &d)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
        );
    }
}
