//! Light, seeded image augmentation for end-to-end captioner training (`train --train-encoder`),
//! so that a captioner trained on clean rendered scenes still reads imperfect (e.g. generated)
//! images. Only changes that keep every caption true are drawn:
//!
//! - geometry: a zoom by a factor in [1 - scale, 1 + scale] about the centre and a shift of up to
//!   `shift` x the side in each direction, resampled bilinearly with the border pixels extended
//!   (the scenes have plain backgrounds). No flips and no rotations: they would swap "left of" and
//!   "right of", "above" and "below"; the shift is small enough to keep which side of the picture
//!   a shape is on for all but shapes at the very centre.
//! - colour: brightness times a factor in [1 - brightness, 1 + brightness], then contrast about
//!   the image's mean by a factor in [1 - contrast, 1 + contrast], clamped to [0, 255]. No hue or
//!   saturation change: colour words must stay true.
//!
//! Each image draws its five factors, in that order (zoom, shift x, shift y, brightness,
//! contrast), from the epoch's random stream, so a seed reproduces them and a resumed training
//! draws what an uninterrupted one would.

use rand::Rng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Augmentation {
    /// Largest shift, as a fraction of the image side, each way.
    pub shift: f64,
    /// Largest relative zoom in or out.
    pub scale: f64,
    /// Largest relative brightness change.
    pub brightness: f64,
    /// Largest relative contrast change.
    pub contrast: f64,
}

impl Augmentation {
    /// The default of `train --train-encoder`: shifts up to 1/16 of the side (4 px at 64), zoom,
    /// brightness and contrast within +-10%.
    pub fn light() -> Self {
        Self {
            shift: 1.0 / 16.0,
            scale: 0.1,
            brightness: 0.1,
            contrast: 0.1,
        }
    }
}

/// Uniform in [-a, a].
fn symmetric(rng: &mut ChaCha8Rng, a: f64) -> f64 {
    (rng.random::<f64>() * 2.0 - 1.0) * a
}

/// The encoder input [3, s, s] (CHW, f32) of an RGB image given as `s * s * 3` bytes (already at
/// the encoder's input size), written into `out`: augmented with `aug` drawing from `rng` when
/// given, then mapped value by value with `normalise(value in [0, 255], channel)`. Without
/// augmentation this is exactly the inference preprocessing of an image of that size.
pub fn input_chw(
    img: &[u8],
    s: usize,
    aug: Option<(&Augmentation, &mut ChaCha8Rng)>,
    normalise: &dyn Fn(f32, usize) -> f32,
    out: &mut [f32],
) {
    let n = s * s;
    debug_assert_eq!(img.len(), 3 * n);
    debug_assert_eq!(out.len(), 3 * n);
    let Some((a, rng)) = aug else {
        for (i, px) in img.chunks_exact(3).enumerate() {
            for c in 0..3 {
                out[c * n + i] = normalise(px[c] as f32, c);
            }
        }
        return;
    };
    let zoom = 1.0 + symmetric(rng, a.scale);
    let dx = symmetric(rng, a.shift) * s as f64;
    let dy = symmetric(rng, a.shift) * s as f64;
    let bright = 1.0 + symmetric(rng, a.brightness);
    let contrast = 1.0 + symmetric(rng, a.contrast);

    // Output pixel (x, y) samples the input at ((x + 0.5 - s/2 - dx) / zoom + s/2 - 0.5, ...).
    let half = s as f64 / 2.0;
    let coords = |o: usize, d: f64| -> (usize, usize, f32) {
        let u = ((o as f64 + 0.5 - half - d) / zoom + half - 0.5).clamp(0.0, (s - 1) as f64);
        let i0 = u.floor() as usize;
        let i1 = (i0 + 1).min(s - 1);
        (i0, i1, (u - i0 as f64) as f32)
    };
    let xs: Vec<_> = (0..s).map(|x| coords(x, dx)).collect();
    let ys: Vec<_> = (0..s).map(|y| coords(y, dy)).collect();
    let at = |y: usize, x: usize, c: usize| img[(y * s + x) * 3 + c] as f32;
    let mut sum = 0f64;
    for (y, &(y0, y1, fy)) in ys.iter().enumerate() {
        for (x, &(x0, x1, fx)) in xs.iter().enumerate() {
            for c in 0..3 {
                let top = at(y0, x0, c) * (1.0 - fx) + at(y0, x1, c) * fx;
                let bottom = at(y1, x0, c) * (1.0 - fx) + at(y1, x1, c) * fx;
                let v = (top * (1.0 - fy) + bottom * fy) * bright as f32;
                out[c * n + y * s + x] = v;
                sum += v as f64;
            }
        }
    }
    let mean = (sum / (3 * n) as f64) as f32;
    for (k, v) in out.iter_mut().enumerate() {
        let t = ((*v - mean) * contrast as f32 + mean).clamp(0.0, 255.0);
        *v = normalise(t, k / n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn image(s: usize) -> Vec<u8> {
        (0..s * s * 3).map(|i| ((i * 37) % 251) as u8).collect()
    }

    #[test]
    fn identity_without_augmentation_and_with_zero_ranges() {
        let s = 8;
        let img = image(s);
        let norm = |v: f32, c: usize| v / 255.0 - c as f32;
        let mut plain = vec![0f32; 3 * s * s];
        input_chw(&img, s, None, &norm, &mut plain);
        assert_eq!(plain[s * s + 5], norm(img[5 * 3 + 1] as f32, 1));
        let zero = Augmentation {
            shift: 0.0,
            scale: 0.0,
            brightness: 0.0,
            contrast: 0.0,
        };
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let mut same = vec![0f32; 3 * s * s];
        input_chw(&img, s, Some((&zero, &mut rng)), &norm, &mut same);
        let d = plain
            .iter()
            .zip(&same)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(d < 1e-5, "{d}");
    }

    #[test]
    fn seeded_and_keeps_a_plain_colour() {
        let s = 16;
        let img = image(s);
        let norm = |v: f32, _c: usize| v;
        let run = |seed: u64| {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let mut out = vec![0f32; 3 * s * s];
            input_chw(
                &img,
                s,
                Some((&Augmentation::light(), &mut rng)),
                &norm,
                &mut out,
            );
            out
        };
        assert_eq!(run(3), run(3));
        assert_ne!(run(3), run(4));
        // A plain image stays plain and keeps its hue: the channels keep their order and
        // roughly their ratios (brightness only scales them).
        let red: Vec<u8> = (0..s * s).flat_map(|_| [200u8, 40, 40]).collect();
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let mut out = vec![0f32; 3 * s * s];
        input_chw(
            &red,
            s,
            Some((&Augmentation::light(), &mut rng)),
            &norm,
            &mut out,
        );
        let n = s * s;
        for i in 0..n {
            assert!(out[i] > 150.0 && out[n + i] < 70.0 && out[2 * n + i] < 70.0);
        }
    }
}
