//! `roundtrip train-clip`'s settings: their validation (input errors naming the flag), the model
//! geometry they give, the config.json it is written as, and the memory check that refuses
//! settings that cannot fit before anything is written.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::init::LOGIT_SCALE_INIT;
use super::tokenizer::WordTokenizer;
use crate::input_err;
use crate::models::clip::{ClipConfig, ClipTextConfig, ClipVisionConfig, HiddenAct};

/// Every training setting; all recorded in `training.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ClipTrainSettings {
    pub epochs: usize,
    pub batch_size: usize,
    /// Peak learning rate (AdamW, linear warmup then cosine decay).
    pub lr: f64,
    /// AdamW's decoupled weight decay, on matrices and embeddings (not on biases, LayerNorm
    /// weights, the class embedding or the logit scale).
    pub weight_decay: f64,
    /// Share of all steps spent warming the learning rate up linearly.
    pub warmup: f64,
    pub seed: u64,
    /// Input side in pixels (both towers' geometry below).
    pub image_size: usize,
    pub patch: usize,
    /// Hidden size of both towers (MLP 4x).
    pub width: usize,
    /// Transformer layers of each tower.
    pub layers: usize,
    pub heads: usize,
    /// Projection (joint embedding) size.
    pub embed: usize,
    /// Text context length in tokens, start and end tokens included.
    pub context: usize,
    /// Smallest crop, as a share of the image's largest square (1 = no crop augmentation).
    pub crop_min: f64,
    /// Largest std of the Gaussian pixel noise added to a training crop (each crop draws its std
    /// uniformly from [0, noise]; 0 = none).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub noise: f64,
    /// Probability of blurring a training crop (3x3 binomial kernel).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub blur: f64,
    /// Images per batch drawn from the negatives folder (`--negatives DIR`): images that match
    /// no caption, each caption of the batch ranked against them as well as against the batch's
    /// images (0: none).
    #[serde(default, skip_serializing_if = "is_zero_count")]
    pub negatives: usize,
}

fn is_zero_count(v: &usize) -> bool {
    *v == 0
}

/// Augmentations left at 0 are not written, so that older training folders still resume.
fn is_zero(v: &f64) -> bool {
    *v == 0.0
}

impl Default for ClipTrainSettings {
    /// Sized for the shapes world (64 px scenes) on a 2-core CPU.
    fn default() -> Self {
        Self {
            epochs: 30,
            batch_size: 64,
            lr: 5e-4,
            weight_decay: 0.1,
            warmup: 0.05,
            seed: 0,
            image_size: 64,
            patch: 8,
            width: 128,
            layers: 3,
            heads: 4,
            embed: 128,
            context: 24,
            crop_min: 0.5,
            noise: 0.0,
            blur: 0.0,
            negatives: 0,
        }
    }
}

impl ClipTrainSettings {
    /// Input errors (exit 2) naming the flag and value.
    pub fn validate(&self) -> anyhow::Result<()> {
        let positive = [
            ("--epochs", self.epochs),
            ("--image-size", self.image_size),
            ("--patch", self.patch),
            ("--width", self.width),
            ("--layers", self.layers),
            ("--heads", self.heads),
            ("--embed", self.embed),
        ];
        for (flag, v) in positive {
            if v == 0 {
                return Err(input_err!("{flag} must be at least 1, got 0"));
            }
        }
        if self.batch_size < 2 {
            return Err(input_err!(
                "--batch-size {} is too small: the contrastive loss needs at least 2 pairs per batch",
                self.batch_size
            ));
        }
        if !self.image_size.is_multiple_of(self.patch) {
            return Err(input_err!(
                "--image-size {} is not a multiple of --patch {}: the image must split into whole patches",
                self.image_size,
                self.patch
            ));
        }
        if !self.width.is_multiple_of(self.heads) {
            return Err(input_err!(
                "--width {} is not divisible by --heads {}",
                self.width,
                self.heads
            ));
        }
        if self.context < 3 {
            return Err(input_err!(
                "--context {} is too short: it holds the start and end tokens and at least one word",
                self.context
            ));
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return Err(input_err!("--lr {} must be a positive number", self.lr));
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return Err(input_err!(
                "--weight-decay {} must be a non-negative number",
                self.weight_decay
            ));
        }
        if !(0.0..1.0).contains(&self.warmup) {
            return Err(input_err!("--warmup {} must lie in [0, 1)", self.warmup));
        }
        if !(self.noise.is_finite() && (0.0..=1.0).contains(&self.noise)) {
            return Err(input_err!("--noise {} must lie in [0, 1]", self.noise));
        }
        if !(self.blur.is_finite() && (0.0..=1.0).contains(&self.blur)) {
            return Err(input_err!("--blur {} must lie in [0, 1]", self.blur));
        }
        if !(self.crop_min > 0.0 && self.crop_min <= 1.0) {
            return Err(input_err!(
                "--crop-min {} must lie in (0, 1]",
                self.crop_min
            ));
        }
        Ok(())
    }

    /// The model geometry for a tokenizer.
    pub fn clip_config(&self, tok: &WordTokenizer) -> ClipConfig {
        ClipConfig {
            text: ClipTextConfig {
                vocab_size: tok.vocab_size,
                hidden_size: self.width,
                intermediate_size: 4 * self.width,
                num_hidden_layers: self.layers,
                num_attention_heads: self.heads,
                max_position_embeddings: self.context,
                layer_norm_eps: 1e-5,
                hidden_act: HiddenAct::QuickGelu,
                bos_token_id: tok.bos_id,
                eos_token_id: tok.eos_id,
                pad_token_id: tok.eos_id,
            },
            vision: ClipVisionConfig {
                image_size: self.image_size,
                patch_size: self.patch,
                hidden_size: self.width,
                intermediate_size: 4 * self.width,
                num_hidden_layers: self.layers,
                num_attention_heads: self.heads,
                layer_norm_eps: 1e-5,
                hidden_act: HiddenAct::QuickGelu,
                num_channels: 3,
            },
            projection_dim: self.embed,
        }
    }
}

/// config.json in transformers' `CLIPConfig` layout (what `ClipConfig::from_json` and
/// `CLIPModel.from_pretrained` read).
pub fn hf_config_json(cfg: &ClipConfig) -> Value {
    let act = |a: HiddenAct| match a {
        HiddenAct::QuickGelu => "quick_gelu",
        HiddenAct::Gelu => "gelu",
        HiddenAct::GeluTanh => "gelu_pytorch_tanh",
    };
    let (t, v) = (&cfg.text, &cfg.vision);
    json!({
        "architectures": ["CLIPModel"],
        "model_type": "clip",
        "dtype": "float32",
        "initializer_factor": 1.0,
        "logit_scale_init_value": LOGIT_SCALE_INIT,
        "projection_dim": cfg.projection_dim,
        "text_config": {
            "model_type": "clip_text_model",
            "vocab_size": t.vocab_size,
            "hidden_size": t.hidden_size,
            "intermediate_size": t.intermediate_size,
            "num_hidden_layers": t.num_hidden_layers,
            "num_attention_heads": t.num_attention_heads,
            "max_position_embeddings": t.max_position_embeddings,
            "hidden_act": act(t.hidden_act),
            "layer_norm_eps": t.layer_norm_eps,
            "attention_dropout": 0.0,
            "initializer_range": 0.02,
            "initializer_factor": 1.0,
            "bos_token_id": t.bos_token_id,
            "eos_token_id": t.eos_token_id,
            "pad_token_id": t.pad_token_id,
            "projection_dim": cfg.projection_dim,
        },
        "vision_config": {
            "model_type": "clip_vision_model",
            "image_size": v.image_size,
            "patch_size": v.patch_size,
            "num_channels": v.num_channels,
            "hidden_size": v.hidden_size,
            "intermediate_size": v.intermediate_size,
            "num_hidden_layers": v.num_hidden_layers,
            "num_attention_heads": v.num_attention_heads,
            "hidden_act": act(v.hidden_act),
            "layer_norm_eps": v.layer_norm_eps,
            "attention_dropout": 0.0,
            "initializer_range": 0.02,
            "initializer_factor": 1.0,
            "projection_dim": cfg.projection_dim,
        },
    })
}

/// Bytes of one parameter during training: the value, its gradient and AdamW's two moments.
const PARAMETER_BYTES: f64 = 16.0;

/// Refuses settings whose training step needs more memory than the machine has (exit 2,
/// naming the settings that dominate the estimate), before anything is allocated or written.
/// A lower bound: parameters with gradients and moments, and per pair of a batch the
/// activations both towers keep for the backward (per layer and token: the residual stream,
/// LayerNorm, q/k/v, attention output and the 4x MLP before and after its activation; per layer
/// and head the attention scores and their softmax), the image crop (and the batch's share of
/// negatives), and the B x B logits.
pub fn check_clip_memory(s: &ClipTrainSettings, vocab_size: usize) -> anyhow::Result<()> {
    let f = |v: usize| v as f64;
    let (w, l, h, b) = (f(s.width), f(s.layers), f(s.heads), f(s.batch_size));
    let side = f(s.image_size);
    let grid = side / f(s.patch.max(1));
    let tokens = grid * grid + 1.0;
    let ctx = f(s.context);
    let params = 2.0 * l * (12.0 * w * w + 13.0 * w)
        + (f(vocab_size) + ctx + tokens + 3.0 * f(s.patch) * f(s.patch) + 6.0) * w
        + 2.0 * w * f(s.embed);
    let per_token = 16.0 * w;
    // The batch's negatives go through the image tower beside its images.
    let image = l * (tokens * per_token + 2.0 * h * tokens * tokens) + 3.0 * side * side;
    let text = l * (ctx * per_token + 2.0 * h * ctx * ctx);
    let per_pair = (1.0 + f(s.negatives) / b) * image + text;
    let parts = [
        (
            format!(
                "--width {} with --layers {}, --embed {} and --context {}",
                s.width, s.layers, s.embed, s.context
            ),
            PARAMETER_BYTES * params,
        ),
        (
            format!(
                "--batch-size {} at --image-size {} (--patch {}, --width {}, --layers {})",
                s.batch_size, s.image_size, s.patch, s.width, s.layers
            ),
            4.0 * b * per_pair,
        ),
        (format!("--batch-size {}", s.batch_size), 4.0 * 3.0 * b * b),
    ];
    let total: f64 = parts.iter().map(|(_, v)| v).sum();
    let setting = parts
        .iter()
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .map(|(n, _)| n.as_str())
        .unwrap_or("--batch-size");
    crate::resources::check_memory(setting, total)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_geometry_is_an_input_error() {
        let s = ClipTrainSettings {
            image_size: 60,
            ..Default::default()
        };
        let e = s.validate().unwrap_err();
        assert_eq!(crate::error::exit_code(&e), 2);
        assert!(e.to_string().contains("--image-size 60"), "{e}");
        assert!(e.to_string().contains("--patch 8"), "{e}");
    }
}
