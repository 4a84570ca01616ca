//! `roundtrip train-gan`'s settings (recorded in training.json; `--resume` needs them unchanged)
//! and the geometry they give: the generator's pytorch-pretrained-BigGAN config and the
//! discriminator's.

use serde::{Deserialize, Serialize};

use super::diffaug::Policy;
use super::DConfig;
use crate::input_err;
use crate::models::biggan::{Config, Layer};
use crate::shapes::classes::NUM_CLASSES;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GanSettings {
    pub epochs: usize,
    pub batch_size: usize,
    pub lr_g: f64,
    pub lr_d: f64,
    /// Discriminator steps per generator step.
    pub d_steps: usize,
    pub seed: u64,
    /// Decay of the generator's EMA (warmed up as min(decay, (1 + t) / (10 + t)) over G steps).
    pub ema_decay: f64,
    /// Side of the generated images (a power of two from 16 to 256).
    pub image_size: usize,
    pub z_dim: usize,
    /// The generator's `channel_width` (4 x 4 maps have 16 x this many channels).
    pub g_ch: usize,
    /// The discriminator's first width (doubled per stage).
    pub d_ch: usize,
    /// DBlocks per discriminator stage.
    pub d_depth: usize,
    /// Coordinate channels beside the discriminator's input (CoordConv); absent in trainings
    /// recorded before the option: off.
    #[serde(default)]
    pub d_coords: bool,
    /// Rows of standing statistics (truncations 0, 1/(n-1), ..., 1; the published models: 51).
    pub n_stats: usize,
    /// Samples per truncation for the standing statistics.
    pub standing_samples: usize,
    /// DiffAugment's operations on real and fake images before D (training.json: the list, or
    /// `true` for all in trainings recorded before the policy could be chosen).
    pub diffaug: Policy,
}

impl Default for GanSettings {
    fn default() -> Self {
        Self {
            epochs: 40,
            batch_size: 32,
            lr_g: 1e-4,
            lr_d: 4e-4,
            d_steps: 2,
            seed: 0,
            ema_decay: 0.999,
            image_size: 64,
            z_dim: 64,
            g_ch: 16,
            d_ch: 32,
            d_depth: 1,
            d_coords: false,
            n_stats: 51,
            standing_samples: 256,
            diffaug: Policy::ALL,
        }
    }
}

impl GanSettings {
    /// Bad values are input errors naming the flag.
    pub fn validate(&self) -> anyhow::Result<()> {
        let bad = |flag: &str, v: String, want: &str| Err(input_err!("{flag} {v}: {want}"));
        if !(16..=256).contains(&self.image_size) || !self.image_size.is_power_of_two() {
            return bad(
                "--image-size",
                self.image_size.to_string(),
                "expected a power of two from 16 to 256",
            );
        }
        if !(2..=4096).contains(&self.batch_size) {
            return bad(
                "--batch-size",
                self.batch_size.to_string(),
                "expected 2 to 4096 (batch statistics need 2)",
            );
        }
        if self.epochs == 0 {
            return bad("--epochs", "0".into(), "expected at least 1");
        }
        for (flag, lr) in [("--lr-g", self.lr_g), ("--lr-d", self.lr_d)] {
            if !(lr.is_finite() && lr > 0.0) {
                return bad(flag, lr.to_string(), "expected a positive learning rate");
            }
        }
        if self.d_steps == 0 {
            return bad("--d-steps", "0".into(), "expected at least 1");
        }
        if !(0.0..1.0).contains(&self.ema_decay) {
            return bad(
                "--ema-decay",
                self.ema_decay.to_string(),
                "expected a decay in [0, 1)",
            );
        }
        if !(1..=1024).contains(&self.z_dim) {
            return bad("--z-dim", self.z_dim.to_string(), "expected 1 to 1024");
        }
        if !(4..=256).contains(&self.g_ch) || !self.g_ch.is_multiple_of(4) {
            return bad(
                "--g-ch",
                self.g_ch.to_string(),
                "expected a multiple of 4 from 4 to 256",
            );
        }
        if !(4..=512).contains(&self.d_ch) || !self.d_ch.is_multiple_of(4) {
            return bad(
                "--d-ch",
                self.d_ch.to_string(),
                "expected a multiple of 4 from 4 to 512",
            );
        }
        if !(1..=4).contains(&self.d_depth) {
            return bad("--d-depth", self.d_depth.to_string(), "expected 1 to 4");
        }
        if !(2..=101).contains(&self.n_stats) {
            return bad("--n-stats", self.n_stats.to_string(), "expected 2 to 101");
        }
        if self.standing_samples < 2 {
            return bad(
                "--standing-samples",
                self.standing_samples.to_string(),
                "expected at least 2",
            );
        }
        Ok(())
    }

    /// BigGAN-deep pairs per doubling: (false, m, m), (true, m, m'), the width halving from 16 to 1
    /// at the last four upsampling layers (and at the last plain layers when there are fewer than
    /// four doublings). No attention block (its position is past the last layer).
    pub fn g_config(&self) -> Config {
        let ups = (self.image_size / 4).ilog2() as usize;
        let n = 2 * ups;
        let mut halve = vec![false; n];
        let mut left = 4usize;
        for i in (0..n).rev().filter(|i| i % 2 == 1) {
            if left > 0 {
                halve[i] = true;
                left -= 1;
            }
        }
        for i in (0..n).rev().filter(|i| i % 2 == 0) {
            if left > 0 {
                halve[i] = true;
                left -= 1;
            }
        }
        let mut m = 16;
        let layers = (0..n)
            .map(|i| {
                let out = if halve[i] { m / 2 } else { m };
                let l = Layer {
                    upsample: i % 2 == 1,
                    in_mult: m,
                    out_mult: out,
                };
                m = out;
                l
            })
            .collect::<Vec<_>>();
        Config {
            output_dim: self.image_size,
            z_dim: self.z_dim,
            class_embed_dim: self.z_dim,
            channel_width: self.g_ch,
            num_classes: NUM_CLASSES,
            attention_layer_position: layers.len(),
            layers,
            eps: 1e-4,
            n_stats: self.n_stats,
            class_names: crate::shapes::classes::class_names(),
        }
    }

    pub fn d_config(&self) -> DConfig {
        DConfig {
            ch: self.d_ch,
            image_size: self.image_size,
            depth: self.d_depth,
            num_classes: NUM_CLASSES,
            coords: self.d_coords,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn geometries_are_valid_biggan_configs() {
        for size in [16, 32, 64, 128, 256] {
            let s = GanSettings {
                image_size: size,
                ..Default::default()
            };
            let cfg = s.g_config();
            cfg.validate().unwrap();
            assert_eq!(cfg.image_size(), size);
            s.d_config().validate().unwrap();
        }
    }
}
