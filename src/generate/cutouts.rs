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

/// Rotates each cutout of `batch` [N, C, S, S] about its centre by `degrees[n]` (bilinear,
/// edges replicated), differentiably: the output is four weighted gathers of the input, so the
/// gradient flows back to the pixels sampled. Small random angles are the affine jitter of the
/// CLIP-guidance literature: a pattern that fools CLIP only pixel-exactly does not survive them.
pub fn rotate_batch(batch: &Tensor, degrees: &[f64]) -> Result<Tensor> {
    let (n, c, h, w) = batch.dims4()?;
    if degrees.len() != n {
        candle_core::bail!("rotate_batch: {} angles for {n} cutouts", degrees.len());
    }
    let len = n * c * h * w;
    let mut idx: [Vec<u32>; 4] = std::array::from_fn(|_| Vec::with_capacity(len));
    let mut wts: [Vec<f32>; 4] = std::array::from_fn(|_| Vec::with_capacity(len));
    let (cy, cx) = ((h as f64 - 1.0) / 2.0, (w as f64 - 1.0) / 2.0);
    for (b, deg) in degrees.iter().enumerate() {
        let (sin, cos) = deg.to_radians().sin_cos();
        for ch in 0..c {
            let base = (b * c + ch) * h * w;
            for i in 0..h {
                for j in 0..w {
                    // The source of output pixel (i, j): the inverse rotation, clamped to the edge.
                    let (dy, dx) = (i as f64 - cy, j as f64 - cx);
                    let ys = (cy + cos * dy - sin * dx).clamp(0.0, h as f64 - 1.0);
                    let xs = (cx + sin * dy + cos * dx).clamp(0.0, w as f64 - 1.0);
                    let (y0, x0) = (ys.floor() as usize, xs.floor() as usize);
                    let (y1, x1) = ((y0 + 1).min(h - 1), (x0 + 1).min(w - 1));
                    let (fy, fx) = (ys - y0 as f64, xs - x0 as f64);
                    for (k, (y, x, wt)) in [
                        (y0, x0, (1.0 - fy) * (1.0 - fx)),
                        (y0, x1, (1.0 - fy) * fx),
                        (y1, x0, fy * (1.0 - fx)),
                        (y1, x1, fy * fx),
                    ]
                    .into_iter()
                    .enumerate()
                    {
                        idx[k].push((base + y * w + x) as u32);
                        wts[k].push(wt as f32);
                    }
                }
            }
        }
    }
    let flat = batch.flatten_all()?;
    let dev = batch.device();
    let mut out: Option<Tensor> = None;
    for (i, wt) in idx.into_iter().zip(wts) {
        let i = Tensor::from_vec(i, len, dev)?;
        let wt = Tensor::from_vec(wt, len, dev)?.to_dtype(batch.dtype())?;
        let term = (flat.index_select(&i, 0)? * wt)?;
        out = Some(match out {
            None => term,
            Some(o) => (o + term)?,
        });
    }
    out.unwrap_or(flat).reshape((n, c, h, w))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    fn ramp(n: usize, c: usize, s: usize) -> Tensor {
        let v: Vec<f32> = (0..n * c * s * s)
            .map(|i| ((i * 7) % 23) as f32 / 23.0)
            .collect();
        Tensor::from_vec(v, (n, c, s, s), &candle_core::Device::Cpu).unwrap()
    }

    fn values(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1().unwrap()
    }

    /// 0 degrees is the identity; at 90 degrees output pixel (i, j) is the input's (S-1-j, i);
    /// each cutout turns by its own angle.
    #[test]
    fn rotation_by_zero_and_ninety_degrees() {
        let x = ramp(2, 3, 5);
        assert_eq!(values(&rotate_batch(&x, &[0.0, 0.0]).unwrap()), values(&x));
        let r = values(&rotate_batch(&x, &[0.0, 90.0]).unwrap());
        let v = values(&x);
        let at = |n: usize, c: usize, i: usize, j: usize| ((n * 3 + c) * 5 + i) * 5 + j;
        for c in 0..3 {
            for i in 0..5 {
                for j in 0..5 {
                    assert_eq!(r[at(0, c, i, j)], v[at(0, c, i, j)]);
                    let want = v[at(1, c, 4 - j, i)];
                    assert!((r[at(1, c, i, j)] - want).abs() < 1e-5, "({c}, {i}, {j})");
                }
            }
        }
        assert!(rotate_batch(&x, &[1.0]).is_err(), "one angle per cutout");
    }

    /// The gradient of sum(rotate(x) * r) with respect to x agrees with central differences.
    #[test]
    fn rotation_gradient_matches_finite_differences() {
        let x = ramp(1, 2, 6);
        let r = ramp(1, 2, 6).affine(-1.3, 0.4).unwrap();
        let f = |x: &Tensor| {
            (rotate_batch(x, &[17.0]).unwrap() * &r)
                .unwrap()
                .sum_all()
                .unwrap()
        };
        let v = candle_core::Var::from_tensor(&x).unwrap();
        let g = values(
            f(v.as_tensor())
                .backward()
                .unwrap()
                .get(v.as_tensor())
                .unwrap(),
        );
        let base = values(&x);
        for k in [0, 7, 14, 35, 50, 71] {
            let mut p = base.clone();
            let mut m = base.clone();
            p[k] += 1e-2;
            m[k] -= 1e-2;
            let t = |v: Vec<f32>| Tensor::from_vec(v, x.shape(), x.device()).unwrap();
            let fd = (f(&t(p)).to_scalar::<f32>().unwrap() - f(&t(m)).to_scalar::<f32>().unwrap())
                / 2e-2;
            assert!((fd - g[k]).abs() < 1e-3, "pixel {k}: {fd} vs {}", g[k]);
        }
    }

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
