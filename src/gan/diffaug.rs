//! DiffAugment (Zhao, Liu, Lin, Zhu and Han 2020, "Differentiable Augmentation for Data-Efficient
//! GAN Training"; the operations `color`, `translation` and `cutout` of its
//! `DiffAugment_pytorch.py`, any subset: [`Policy`]), applied to real AND generated images before
//! the discriminator: every operation is differentiable, so the generator learns to draw
//! un-augmented images that look real once augmented. Images are CBHW in [-1, 1]; the random
//! draws come from the host's seeded stream, all of them whatever the policy (a policy changes
//! the images, never the stream).

use std::fmt;

use candle_core::{Result, Tensor};
use rand::Rng;
use serde::{Deserialize, Serialize};

/// Which of DiffAugment's operations run. In the shapes world colour is half of a class and the
/// cutout (half the side) can erase the only shape, so `translation` alone is the choice there;
/// the paper's full policy is the default.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    pub color: bool,
    pub translation: bool,
    pub cutout: bool,
}

impl Policy {
    /// `color,translation,cutout`: the paper's policy for small data.
    pub const ALL: Policy = Policy {
        color: true,
        translation: true,
        cutout: true,
    };
    pub const NONE: Policy = Policy {
        color: false,
        translation: false,
        cutout: false,
    };

    pub fn is_none(self) -> bool {
        self == Self::NONE
    }

    /// The draws of `batch` images of side `size`; `None` (nothing drawn) when no operation runs.
    pub fn draws(self, batch: usize, size: usize, rng: &mut impl Rng) -> Option<Draws> {
        (!self.is_none()).then(|| Draws::draw(batch, size, self, rng))
    }
}

impl Default for Policy {
    fn default() -> Self {
        Self::ALL
    }
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let on: Vec<&str> = [
            (self.color, "color"),
            (self.translation, "translation"),
            (self.cutout, "cutout"),
        ]
        .into_iter()
        .filter_map(|(on, name)| on.then_some(name))
        .collect();
        if on.is_empty() {
            f.write_str("none")
        } else {
            f.write_str(&on.join(","))
        }
    }
}

impl std::str::FromStr for Policy {
    type Err = String;

    /// `none`, or a comma-separated subset of `color`, `translation`, `cutout`.
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let mut p = Policy::NONE;
        if s.trim() == "none" {
            return Ok(p);
        }
        for part in s.split(',').map(str::trim) {
            let flag = match part {
                "color" => &mut p.color,
                "translation" => &mut p.translation,
                "cutout" => &mut p.cutout,
                _ => {
                    return Err(format!(
                        "`{part}` in `{s}` is not a DiffAugment operation: expected `none` or a \
                         comma-separated list of color, translation, cutout"
                    ))
                }
            };
            if *flag {
                return Err(format!("`{part}` is listed twice in `{s}`"));
            }
            *flag = true;
        }
        Ok(p)
    }
}

/// Written as its list (`"translation"`); read from that or from the `true` / `false` of
/// trainings recorded before the policy could be chosen (all operations / none).
impl Serialize for Policy {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Policy {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Form {
            Flag(bool),
            List(String),
        }
        match Form::deserialize(d)? {
            Form::Flag(true) => Ok(Policy::ALL),
            Form::Flag(false) => Ok(Policy::NONE),
            Form::List(s) => s.parse().map_err(serde::de::Error::custom),
        }
    }
}

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
    policy: Policy,
}

impl Draws {
    pub fn draw(batch: usize, size: usize, policy: Policy, rng: &mut impl Rng) -> Self {
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
            policy,
        }
    }
}

/// x [3, B, H, W] -> augmented x (the policy's operations of colour, translation, cutout).
pub fn augment(x: &Tensor, d: &Draws) -> Result<Tensor> {
    let (_, b, h, w) = x.dims4()?;
    let dev = x.device();
    let per = |v: &[f32]| Tensor::from_vec(v.to_vec(), (1, b, 1, 1), dev);
    let mut x = x.clone();
    if d.policy.color {
        // Brightness, saturation, contrast.
        x = x.broadcast_add(&per(&d.brightness)?)?;
        let mean = x.mean_keepdim(0)?;
        x = x
            .broadcast_sub(&mean)?
            .broadcast_mul(&per(&d.saturation)?)?
            .broadcast_add(&mean)?;
        let mean = x.mean_keepdim(0)?.mean_keepdim(2)?.mean_keepdim(3)?;
        x = x
            .broadcast_sub(&mean)?
            .broadcast_mul(&per(&d.contrast)?)?
            .broadcast_add(&mean)?;
    }
    if d.policy.translation {
        // Zero padding: a window of the padded image per sample.
        let s = (h.max(w) as f64 * TRANSLATION + 0.5) as usize;
        let padded = x.pad_with_zeros(2, s, s)?.pad_with_zeros(3, s, s)?;
        let mut parts = Vec::with_capacity(b);
        for (i, &(dy, dx)) in d.shift.iter().enumerate() {
            let y0 = (s as i64 - dy) as usize;
            let x0 = (s as i64 - dx) as usize;
            parts.push(padded.narrow(1, i, 1)?.narrow(2, y0, h)?.narrow(3, x0, w)?);
        }
        x = Tensor::cat(&parts, 1)?;
    }
    if d.policy.cutout {
        // A zeroed square per sample.
        let cut = (h.min(w) as f64 * CUTOUT + 0.5) as i64;
        let mut mask = vec![1f32; b * h * w];
        for (i, &(cy, cx)) in d.cut.iter().enumerate() {
            for y in cy.max(0)..(cy + cut).min(h as i64) {
                for xx in cx.max(0)..(cx + cut).min(w as i64) {
                    mask[(i * h + y as usize) * w + xx as usize] = 0.0;
                }
            }
        }
        x = x.broadcast_mul(&Tensor::from_vec(mask, (1, b, h, w), dev)?)?;
    }
    Ok(x)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};
    use rand::SeedableRng;

    #[test]
    fn augmentation_is_differentiable_and_cuts_a_square() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let d = Draws::draw(2, 8, Policy::ALL, &mut rng);
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

    #[test]
    fn a_policy_runs_only_its_operations_and_reads_old_records() {
        let x = Tensor::full(0.5f32, (3, 2, 8, 8), &Device::Cpu).unwrap();
        let draw = |p: Policy| {
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
            let d = Draws::draw(2, 8, p, &mut rng);
            // Every policy consumes the same draws.
            (augment(&x, &d).unwrap(), rng.random::<u64>())
        };
        let (all, after_all) = draw(Policy::ALL);
        let (t, after_t) = draw("translation".parse().unwrap());
        assert_eq!(after_all, after_t);
        let t: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
        // Translation alone: only 0.5 inside and the zero border, never a colour change.
        assert!(t.iter().all(|v| *v == 0.5 || *v == 0.0));
        assert!(t.contains(&0.0));
        let all: Vec<f32> = all.flatten_all().unwrap().to_vec1().unwrap();
        assert!(all.iter().any(|v| *v != 0.5 && *v != 0.0));
        let (none, _) = draw(Policy::NONE);
        assert_eq!(
            none.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            vec![0.5; 3 * 2 * 64]
        );

        for (text, p) in [
            ("none", Policy::NONE),
            ("color,translation,cutout", Policy::ALL),
            (
                "translation",
                Policy {
                    translation: true,
                    ..Policy::NONE
                },
            ),
            (
                "color,cutout",
                Policy {
                    color: true,
                    cutout: true,
                    ..Policy::NONE
                },
            ),
        ] {
            assert_eq!(text.parse::<Policy>().unwrap(), p);
            assert_eq!(p.to_string(), text);
            assert_eq!(serde_json::to_value(p).unwrap(), text);
        }
        assert_eq!(
            "cutout, translation".parse::<Policy>().unwrap().to_string(),
            "translation,cutout"
        );
        for bad in ["", "colour", "translation,translation", "none,color"] {
            assert!(bad.parse::<Policy>().is_err(), "{bad}");
        }
        let old: Policy = serde_json::from_str("true").unwrap();
        assert_eq!(old, Policy::ALL);
        let off: Policy = serde_json::from_str("false").unwrap();
        assert_eq!(off, Policy::NONE);
    }
}
