//! Images for CLIP training: decoded once, then batched as CLIP-normalised pixel tensors, either
//! whole (preprocessed as CLIP's image processor does) or as random square crops resized
//! bilinearly to the input size (the augmentation that keeps the model meaningful on the square
//! cutouts of CLIP-guided generation).

use std::path::Path;

use candle_core::{Device, Tensor};
use rand::Rng;

use crate::imageops::resize::bilinear_taps;
use crate::models::clip::{preprocess_image, CLIP_MEAN, CLIP_STD};

/// One square crop: top-left corner and side, in source pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Crop {
    pub x: usize,
    pub y: usize,
    pub side: usize,
}

/// A random square crop covering a fraction of the image's shorter side squared drawn uniformly
/// from [min_area, 1] (side = round(sqrt(area) * short side), at least 1 pixel), at a uniform
/// offset. `min_area` >= 1 always gives the largest centred-left/top square.
pub fn random_crop(w: usize, h: usize, min_area: f64, rng: &mut impl Rng) -> Crop {
    let short = w.min(h);
    let area = if min_area >= 1.0 {
        1.0
    } else {
        rng.random_range(min_area..=1.0)
    };
    let side = ((area.sqrt() * short as f64).round() as usize).clamp(1, short);
    let x = rng.random_range(0..=w - side);
    let y = rng.random_range(0..=h - side);
    Crop { x, y, side }
}

/// Writes the crop of `img`, resized bilinearly (align_corners = false, as the generator's
/// cutouts) to size x size and CLIP-normalised, into `out` ([3, size, size], channel-major).
pub fn crop_resize_into(img: &image::RgbImage, crop: Crop, size: usize, out: &mut [f32]) {
    let w = img.width() as usize;
    let raw = img.as_raw();
    let taps = bilinear_taps(crop.side, size);
    let px = |yy: usize, xx: usize, c: usize| {
        raw[((crop.y + yy) * w + crop.x + xx) * 3 + c] as f32 * (1.0 / 255.0)
    };
    for c in 0..3 {
        for (i, &(y0, y1, ly)) in taps.iter().enumerate() {
            for (j, &(x0, x1, lx)) in taps.iter().enumerate() {
                let top = px(y0, x0, c) * (1.0 - lx) + px(y0, x1, c) * lx;
                let bottom = px(y1, x0, c) * (1.0 - lx) + px(y1, x1, c) * lx;
                let v = top * (1.0 - ly) + bottom * ly;
                out[(c * size + i) * size + j] = (v - CLIP_MEAN[c]) / CLIP_STD[c];
            }
        }
    }
}

/// Pixel degradations applied to one training crop after resizing (section 9 of the reference:
/// a CLIP trained on noisy and blurred renders is harder to fool with high-frequency patterns,
/// which makes its guidance gradients more meaningful). Colours are never changed: they carry
/// meaning.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Degrade {
    /// Standard deviation of Gaussian pixel noise, in [0, 1] pixel units (0: none).
    pub noise: f32,
    /// Whether to blur with the 3x3 binomial kernel [1 2 1]^T [1 2 1] / 16 (edges clamped).
    pub blur: bool,
}

impl Degrade {
    /// A random degradation: noise std uniform in [0, max_noise], blur with probability `p_blur`.
    pub fn draw(max_noise: f64, p_blur: f64, rng: &mut impl Rng) -> Self {
        let noise = if max_noise > 0.0 {
            rng.random_range(0.0..=max_noise) as f32
        } else {
            0.0
        };
        let blur = p_blur > 0.0 && rng.random_bool(p_blur.min(1.0));
        Self { noise, blur }
    }

    /// Applies the degradation to one CLIP-normalised crop `buf` ([3, size, size]). Blur commutes
    /// with the per-channel normalisation (its kernel sums to one); noise is scaled by the channel's
    /// std so that it is `noise` in pixel units.
    pub fn apply(&self, buf: &mut [f32], size: usize, rng: &mut impl Rng) {
        if self.blur {
            let tap = |get: &dyn Fn(usize) -> f32, c: usize| {
                0.25 * get(c.saturating_sub(1)) + 0.5 * get(c) + 0.25 * get((c + 1).min(size - 1))
            };
            let mut tmp = vec![0f32; size * size];
            for plane in buf.chunks_mut(size * size) {
                for i in 0..size {
                    for j in 0..size {
                        tmp[i * size + j] = tap(&|k| plane[i * size + k], j);
                    }
                }
                for i in 0..size {
                    for j in 0..size {
                        plane[i * size + j] = tap(&|k| tmp[k * size + j], i);
                    }
                }
            }
        }
        if self.noise > 0.0 {
            let normal = rand_distr::Normal::new(0f32, self.noise).unwrap_or_else(|_| {
                rand_distr::Normal::new(0.0, 0.0).expect("zero std is a valid normal")
            });
            for (c, plane) in buf.chunks_mut(size * size).enumerate() {
                for v in plane.iter_mut() {
                    *v += rand_distr::Distribution::sample(&normal, rng) / CLIP_STD[c];
                }
            }
        }
    }
}

/// Decoded images of one split, in split order.
pub struct Images {
    pub names: Vec<String>,
    pub rgb: Vec<image::RgbImage>,
}

impl Images {
    /// Reads every image (errors name the file).
    pub fn load(dir: &Path, names: &[String]) -> anyhow::Result<Self> {
        let rgb = names
            .iter()
            .map(|n| crate::imageops::open_rgb(&dir.join(n)))
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(Self {
            names: names.to_vec(),
            rgb,
        })
    }

    /// [B, 3, size, size]: the given crops of the given images, each degraded as given (noise
    /// drawn from `rng`).
    pub fn crops(
        &self,
        items: &[(usize, Crop, Degrade)],
        size: usize,
        rng: &mut impl Rng,
        device: &Device,
    ) -> candle_core::Result<Tensor> {
        let per = 3 * size * size;
        let mut buf = vec![0f32; items.len() * per];
        for (k, (i, crop, degrade)) in items.iter().enumerate() {
            let out = &mut buf[k * per..(k + 1) * per];
            crop_resize_into(&self.rgb[*i], *crop, size, out);
            degrade.apply(out, size, rng);
        }
        Tensor::from_vec(buf, (items.len(), 3, size, size), device)
    }

    /// [B, 3, size, size]: whole images as CLIP's image processor prepares them (identity
    /// resize for images already at the input size).
    pub fn whole(&self, idx: &[usize], size: usize, device: &Device) -> anyhow::Result<Tensor> {
        let t = idx
            .iter()
            .map(|&i| {
                preprocess_image(
                    &image::DynamicImage::ImageRgb8(self.rgb[i].clone()),
                    size,
                    device,
                )
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(Tensor::stack(&t, 0)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn whole_image_crop_at_input_size_is_normalisation_only() {
        let img = image::RgbImage::from_fn(8, 8, |x, y| image::Rgb([x as u8 * 30, y as u8, 7]));
        let mut a = vec![0f32; 3 * 64];
        crop_resize_into(
            &img,
            Crop {
                x: 0,
                y: 0,
                side: 8,
            },
            8,
            &mut a,
        );
        let b = preprocess_image(&image::DynamicImage::ImageRgb8(img), 8, &Device::Cpu)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        for (x, y) in a.iter().zip(&b) {
            assert!((x - y).abs() < 1e-6);
        }
    }

    #[test]
    fn crops_match_the_differentiable_resize() {
        let img = image::RgbImage::from_fn(20, 12, |x, y| {
            image::Rgb([(x * 11) as u8, (y * 19) as u8, ((x * y) % 256) as u8])
        });
        let crop = Crop {
            x: 5,
            y: 2,
            side: 9,
        };
        let mut a = vec![0f32; 3 * 16 * 16];
        crop_resize_into(&img, crop, 16, &mut a);
        let d = Device::Cpu;
        let t = crate::imageops::rgb_to_tensor(&img, &d)
            .unwrap()
            .narrow(1, 2, 9)
            .unwrap()
            .narrow(2, 5, 9)
            .unwrap();
        let r = crate::imageops::resize::resize_bilinear(&t, 16, 16).unwrap();
        let mean = Tensor::new(&CLIP_MEAN, &d)
            .unwrap()
            .reshape((3, 1, 1))
            .unwrap();
        let std = Tensor::new(&CLIP_STD, &d)
            .unwrap()
            .reshape((3, 1, 1))
            .unwrap();
        let b: Vec<f32> = r
            .broadcast_sub(&mean)
            .unwrap()
            .broadcast_div(&std)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        for (x, y) in a.iter().zip(&b) {
            assert!((x - y).abs() < 1e-4, "{x} vs {y}");
        }
    }

    #[test]
    fn blur_keeps_flat_images_and_spreads_a_dot() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let blur = Degrade {
            noise: 0.0,
            blur: true,
        };
        let mut flat = vec![0.7f32; 3 * 25];
        blur.apply(&mut flat, 5, &mut rng);
        assert!(flat.iter().all(|v| (v - 0.7).abs() < 1e-6));
        let mut dot = vec![0f32; 3 * 25];
        dot[2 * 5 + 2] = 16.0;
        blur.apply(&mut dot, 5, &mut rng);
        // The separable binomial kernel: 4 at the centre, 2 beside, 1 diagonally; sum kept.
        assert_eq!(&dot[5 + 1..5 + 4], &[1.0, 2.0, 1.0]);
        assert_eq!(&dot[2 * 5 + 1..2 * 5 + 4], &[2.0, 4.0, 2.0]);
        assert!((dot[..25].iter().sum::<f32>() - 16.0).abs() < 1e-5);
        assert!(
            dot[25..].iter().all(|v| *v == 0.0),
            "planes are independent"
        );
    }

    #[test]
    fn noise_has_the_asked_std_in_pixel_units() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(2);
        let noise = Degrade {
            noise: 0.1,
            blur: false,
        };
        let n = 64;
        let mut buf = vec![0f32; 3 * n * n];
        noise.apply(&mut buf, n, &mut rng);
        for (c, plane) in buf.chunks(n * n).enumerate() {
            let px: Vec<f32> = plane.iter().map(|v| v * CLIP_STD[c]).collect();
            let mean = px.iter().sum::<f32>() / px.len() as f32;
            let std = (px.iter().map(|v| (v - mean).powi(2)).sum::<f32>() / px.len() as f32).sqrt();
            assert!(
                mean.abs() < 0.01 && (std - 0.1).abs() < 0.005,
                "{mean} {std}"
            );
        }
        assert_eq!(Degrade::draw(0.0, 0.0, &mut rng), Degrade::default());
    }

    #[test]
    fn random_crops_stay_inside() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        for _ in 0..500 {
            let c = random_crop(30, 20, 0.4, &mut rng);
            assert!(c.side >= 12 && c.side <= 20, "{c:?}");
            assert!(c.x + c.side <= 30 && c.y + c.side <= 20);
        }
        assert_eq!(
            random_crop(30, 20, 1.0, &mut rng).side,
            20,
            "min area 1 keeps the whole short side"
        );
    }
}
