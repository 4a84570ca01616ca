//! BigGAN's configuration: pytorch-pretrained-BigGAN's `config.json` (serde, with its defaults),
//! the checks the reference's code assumes, and the per-truncation BatchNorm statistics rows.

use candle_core::Result;
use serde::{Deserialize, Serialize};

use crate::input_err;

/// One entry of config.json's `layers`: `[upsample, in_multiplier, out_multiplier]` (channels
/// are multiples of `channel_width`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "(bool, usize, usize)", into = "(bool, usize, usize)")]
pub struct Layer {
    pub upsample: bool,
    pub in_mult: usize,
    pub out_mult: usize,
}

impl From<(bool, usize, usize)> for Layer {
    fn from((upsample, in_mult, out_mult): (bool, usize, usize)) -> Self {
        Self {
            upsample,
            in_mult,
            out_mult,
        }
    }
}

impl From<Layer> for (bool, usize, usize) {
    fn from(l: Layer) -> Self {
        (l.upsample, l.in_mult, l.out_mult)
    }
}

/// pytorch-pretrained-BigGAN's `BigGANConfig` (its `config.json`); a missing key takes the
/// 128 px default, as `BigGANConfig.from_dict` does.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    pub output_dim: usize,
    pub z_dim: usize,
    /// Recorded by the published configs, unused by the reference (the embedding is `z_dim` wide).
    pub class_embed_dim: usize,
    pub channel_width: usize,
    pub num_classes: usize,
    pub layers: Vec<Layer>,
    /// The self-attention block comes before this layer (none when past the end).
    pub attention_layer_position: usize,
    /// BatchNorm epsilon (also the spectral norm's, which eval mode does not use).
    pub eps: f64,
    /// Rows of the per-truncation BatchNorm statistics (truncations 0, 1/(n-1), ..., 1).
    pub n_stats: usize,
    /// The classes' names, in class order (written by `train-gan`; the published configs have
    /// none): what big-sleep's `--class-prior` compares the phrase with.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub class_names: Vec<String>,
}

impl Default for Config {
    fn default() -> Self {
        Self::deep_128()
    }
}

fn layers(spec: &[(bool, usize, usize)]) -> Vec<Layer> {
    spec.iter().map(|&l| l.into()).collect()
}

impl Config {
    /// biggan-deep-128 (pytorch-pretrained-BigGAN's `BigGAN128`).
    pub fn deep_128() -> Self {
        Self {
            output_dim: 128,
            z_dim: 128,
            class_embed_dim: 128,
            channel_width: 128,
            num_classes: 1000,
            layers: layers(&[
                (false, 16, 16),
                (true, 16, 16),
                (false, 16, 16),
                (true, 16, 8),
                (false, 8, 8),
                (true, 8, 4),
                (false, 4, 4),
                (true, 4, 2),
                (false, 2, 2),
                (true, 2, 1),
            ]),
            attention_layer_position: 8,
            eps: 1e-4,
            n_stats: 51,
            class_names: Vec::new(),
        }
    }

    /// biggan-deep-256 (`BigGAN256`).
    pub fn deep_256() -> Self {
        Self {
            output_dim: 256,
            layers: layers(&[
                (false, 16, 16),
                (true, 16, 16),
                (false, 16, 16),
                (true, 16, 8),
                (false, 8, 8),
                (true, 8, 8),
                (false, 8, 8),
                (true, 8, 4),
                (false, 4, 4),
                (true, 4, 2),
                (false, 2, 2),
                (true, 2, 1),
            ]),
            ..Self::deep_128()
        }
    }

    /// biggan-deep-512 (`BigGAN512`).
    pub fn deep_512() -> Self {
        let mut cfg = Self::deep_256();
        cfg.output_dim = 512;
        cfg.layers.extend(layers(&[(false, 1, 1), (true, 1, 1)]));
        cfg
    }

    /// Parses and validates config.json; errors name the key.
    pub fn from_json(text: &str) -> anyhow::Result<Self> {
        let cfg: Self =
            serde_json::from_str(text).map_err(|e| input_err!("not a BigGAN config: {e}"))?;
        cfg.validate().map_err(|e| input_err!("{e}"))?;
        Ok(cfg)
    }

    /// Latent rows big-sleep optimises: one for gen_z plus one per GenBlock.
    pub fn num_latents(&self) -> usize {
        self.layers.len() + 1
    }

    /// Side of the generated images: 4 * 2^(upsampling layers).
    pub fn image_size(&self) -> usize {
        4 << self.layers.iter().filter(|l| l.upsample).count()
    }

    /// Width of the conditioning vector: z and the class embedding.
    pub fn cond_dim(&self) -> usize {
        2 * self.z_dim
    }

    /// Checks what the reference's code assumes, so that a bad config fails here with a message
    /// rather than as a shape error inside the forward pass.
    pub fn validate(&self) -> std::result::Result<(), String> {
        let ch = self.channel_width;
        if self.z_dim == 0 || ch == 0 || self.num_classes == 0 || self.layers.is_empty() {
            return Err(
                "z_dim, channel_width, num_classes and layers must be non-zero / non-empty".into(),
            );
        }
        if ch < 3 {
            return Err(format!(
                "channel_width {ch}: conv_to_rgb keeps the first 3 of channel_width channels"
            ));
        }
        if self.n_stats < 2 {
            return Err(format!("n_stats {} must be at least 2", self.n_stats));
        }
        if self.eps.is_nan() || self.eps <= 0.0 {
            return Err(format!("eps {} must be positive", self.eps));
        }
        if self.layers[0].in_mult != 16 {
            return Err(format!(
                "layers[0] takes {} x channel_width channels; gen_z makes 16 x channel_width",
                self.layers[0].in_mult
            ));
        }
        for (i, l) in self.layers.iter().enumerate() {
            let (cin, cout) = (l.in_mult * ch, l.out_mult * ch);
            if cin < 4 || cin % 4 != 0 {
                return Err(format!(
                    "layers[{i}]: {cin} input channels are not divisible by 4 (the block's bottleneck)"
                ));
            }
            if cin != cout && cout * 2 != cin {
                return Err(format!(
                    "layers[{i}]: {cin} -> {cout} channels; the skip path keeps half of the input \
                     channels, so a change of width must halve it"
                ));
            }
            if let Some(next) = self.layers.get(i + 1) {
                if next.in_mult != l.out_mult {
                    return Err(format!(
                        "layers[{i}] outputs {} x channel_width channels, layers[{}] takes {}",
                        l.out_mult,
                        i + 1,
                        next.in_mult
                    ));
                }
            }
        }
        let last = self.layers[self.layers.len() - 1].out_mult;
        if last != 1 {
            return Err(format!(
                "the last layer outputs {last} x channel_width channels; the final BatchNorm takes 1 x"
            ));
        }
        if let Some(l) = self.layers.get(self.attention_layer_position) {
            let c = l.in_mult * ch;
            if !c.is_multiple_of(8) {
                return Err(format!(
                    "attention before layers[{}]: {c} channels are not divisible by 8",
                    self.attention_layer_position
                ));
            }
        }
        if self.output_dim != self.image_size() {
            return Err(format!(
                "output_dim {} but the layers upsample 4 x 4 to {}",
                self.output_dim,
                self.image_size()
            ));
        }
        Ok(())
    }
}

/// The stored statistics rows the reference uses for a truncation: `(start, coef)` from
/// `math.modf(truncation / (1 / (n_stats - 1)))`. When `coef` is 0 row `start` is used as it is;
/// otherwise the reference blends `rows[start] * coef + rows[start + 1] * (1 - coef)` (sic: the
/// weights are the other way round from a linear interpolation, and this module does the same).
/// Truncation must be in (0, 1], as the reference asserts.
pub fn stats_rows(truncation: f64, n_stats: usize) -> Result<(usize, f64)> {
    if !(truncation > 0.0 && truncation <= 1.0) {
        candle_core::bail!("BigGAN truncation must be in (0, 1], got {truncation}")
    }
    let step = 1.0 / (n_stats as f64 - 1.0);
    let q = truncation / step;
    let start = q.trunc();
    let coef = q - start;
    let start = start as usize;
    let last = if coef != 0.0 { start + 1 } else { start };
    if last >= n_stats {
        candle_core::bail!(
            "BigGAN truncation {truncation} needs statistics row {last} of {n_stats}"
        )
    }
    Ok((start, coef))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn published_configs_are_valid() {
        for (cfg, size, latents) in [
            (Config::deep_128(), 128, 11),
            (Config::deep_256(), 256, 13),
            (Config::deep_512(), 512, 15),
        ] {
            cfg.validate().unwrap();
            assert_eq!((cfg.image_size(), cfg.num_latents()), (size, latents));
        }
    }

    #[test]
    fn config_json_as_pytorch_pretrained_biggan_writes_it() {
        let text = r#"{"attention_layer_position": 8, "channel_width": 128, "class_embed_dim": 128,
          "eps": 0.0001, "layers": [[false, 16, 16], [true, 16, 16], [false, 16, 16], [true, 16, 8],
          [false, 8, 8], [true, 8, 4], [false, 4, 4], [true, 4, 2], [false, 2, 2], [true, 2, 1]],
          "n_stats": 51, "num_classes": 1000, "output_dim": 128, "z_dim": 128}"#;
        assert_eq!(Config::from_json(text).unwrap(), Config::deep_128());
        // Missing keys take the 128 defaults, as BigGANConfig.from_dict.
        assert_eq!(Config::from_json("{}").unwrap(), Config::deep_128());
        let e = Config::from_json(r#"{"output_dim": 256}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("output_dim 256") && e.contains("128"), "{e}");
        let e = Config::from_json(r#"{"layers": [[false, 16, 16], [true, 16, 5]]}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("layers[1]"), "{e}");
    }

    #[test]
    fn stats_rows_follow_math_modf() {
        assert_eq!(stats_rows(1.0, 51).unwrap(), (50, 0.0));
        assert_eq!(stats_rows(0.4, 51).unwrap(), (20, 0.0));
        let (s, c) = stats_rows(0.713, 51).unwrap();
        assert_eq!(s, 35);
        assert!((c - 0.65).abs() < 1e-9);
        // 0.29 / 0.02 = 14.499999999999998 in f64, as in Python.
        let (s, c) = stats_rows(0.29, 51).unwrap();
        assert_eq!(s, 14);
        assert!(c > 0.49 && c < 0.5);
        assert!(stats_rows(0.0, 51).is_err());
        assert!(stats_rows(1.5, 51).is_err());
    }
}
