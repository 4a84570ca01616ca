//! config.json of a BLIP captioner, read as transformers' `BlipConfig` reads it: every key of
//! `text_config` and `vision_config` optional with transformers' defaults (transformers 5 writes
//! only the keys that differ from them), `text_config.encoder_hidden_size` taken from
//! `vision_config.hidden_size` (`BlipConfig.__post_init__`), unknown keys ignored.

use serde::Deserialize;

use crate::input_err;

/// The activation of both towers' MLPs and of the text head's transform.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// `gelu`: the exact (erf) GELU, the published checkpoints'.
    Gelu,
    /// `gelu_new` / `gelu_pytorch_tanh` / `gelu_fast`: the tanh approximation.
    GeluTanh,
    /// `relu`.
    Relu,
}

impl Activation {
    fn parse(name: &str) -> Option<Self> {
        match name {
            "gelu" => Some(Self::Gelu),
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Some(Self::GeluTanh),
            "relu" => Some(Self::Relu),
            _ => None,
        }
    }
}

impl<'de> Deserialize<'de> for Activation {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = String::deserialize(d)?;
        Self::parse(&name).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "unsupported hidden_act `{name}`; supported: gelu, gelu_new, gelu_pytorch_tanh, \
                 gelu_fast, relu"
            ))
        })
    }
}

fn gelu() -> Activation {
    Activation::Gelu
}

/// `text_config`: transformers' `BlipTextConfig` (the BERT-style decoder).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct TextConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    /// The width of the image embeddings the cross-attention reads (set from the vision config).
    pub encoder_hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub max_position_embeddings: usize,
    #[serde(default = "gelu")]
    pub hidden_act: Activation,
    pub layer_norm_eps: f64,
    /// `[DEC]`: generation starts from it.
    pub bos_token_id: u32,
    /// `[SEP]`: generation stops at it.
    pub sep_token_id: u32,
    /// `[PAD]`.
    pub pad_token_id: u32,
    /// The LM head's weight is the word embeddings (transformers' default); otherwise the
    /// checkpoint's `cls.predictions.decoder.weight`.
    pub tie_word_embeddings: bool,
}

impl Default for TextConfig {
    /// `BlipTextConfig()`'s defaults.
    fn default() -> Self {
        Self {
            vocab_size: 30524,
            hidden_size: 768,
            encoder_hidden_size: 768,
            intermediate_size: 3072,
            num_hidden_layers: 12,
            num_attention_heads: 8,
            max_position_embeddings: 512,
            hidden_act: Activation::Gelu,
            layer_norm_eps: 1e-12,
            bos_token_id: 30522,
            sep_token_id: 102,
            pad_token_id: 0,
            tie_word_embeddings: true,
        }
    }
}

/// `vision_config`: transformers' `BlipVisionConfig` (a ViT).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct VisionConfig {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub image_size: usize,
    pub patch_size: usize,
    #[serde(default = "gelu")]
    pub hidden_act: Activation,
    pub layer_norm_eps: f64,
}

impl Default for VisionConfig {
    /// `BlipVisionConfig()`'s defaults (the base model's ViT-B/16 at 384 px).
    fn default() -> Self {
        Self {
            hidden_size: 768,
            intermediate_size: 3072,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            image_size: 384,
            patch_size: 16,
            hidden_act: Activation::Gelu,
            layer_norm_eps: 1e-5,
        }
    }
}

impl VisionConfig {
    /// Patches per side.
    pub fn grid(&self) -> usize {
        self.image_size / self.patch_size
    }

    /// Tokens of the image tower: the class token and one per patch.
    pub fn num_positions(&self) -> usize {
        self.grid() * self.grid() + 1
    }
}

/// transformers' `BlipConfig` as far as captioning uses it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Config {
    #[serde(default)]
    pub text_config: TextConfig,
    #[serde(default)]
    pub vision_config: VisionConfig,
}

impl Config {
    /// Parses and checks config.json; the error names the key.
    pub fn from_json(text: &str) -> anyhow::Result<Self> {
        let root: serde_json::Value =
            serde_json::from_str(text).map_err(|e| input_err!("not valid JSON: {e}"))?;
        let model_type = root.get("model_type").and_then(|v| v.as_str());
        if model_type.is_some_and(|t| t != "blip") {
            return Err(input_err!(
                "`model_type` is {:?}, expected \"blip\" (a BlipForConditionalGeneration \
                 checkpoint such as Salesforce/blip-image-captioning-large)",
                model_type.unwrap_or_default()
            ));
        }
        let mut cfg: Config =
            serde_json::from_value(root).map_err(|e| input_err!("not a BLIP config: {e}"))?;
        cfg.text_config.encoder_hidden_size = cfg.vision_config.hidden_size;
        cfg.check()?;
        Ok(cfg)
    }

    fn check(&self) -> anyhow::Result<()> {
        let (t, v) = (&self.text_config, &self.vision_config);
        for (key, n) in [
            ("text_config.vocab_size", t.vocab_size),
            ("text_config.hidden_size", t.hidden_size),
            ("text_config.intermediate_size", t.intermediate_size),
            ("text_config.num_attention_heads", t.num_attention_heads),
            (
                "text_config.max_position_embeddings",
                t.max_position_embeddings,
            ),
            ("vision_config.hidden_size", v.hidden_size),
            ("vision_config.intermediate_size", v.intermediate_size),
            ("vision_config.num_attention_heads", v.num_attention_heads),
            ("vision_config.image_size", v.image_size),
            ("vision_config.patch_size", v.patch_size),
        ] {
            if n == 0 {
                return Err(input_err!("config key `{key}` must be at least 1, got 0"));
            }
        }
        for (path, hidden, heads) in [
            ("text_config", t.hidden_size, t.num_attention_heads),
            ("vision_config", v.hidden_size, v.num_attention_heads),
        ] {
            if !hidden.is_multiple_of(heads) {
                return Err(input_err!(
                    "config key `{path}.hidden_size` ({hidden}) is not divisible by \
                     `{path}.num_attention_heads` ({heads})"
                ));
            }
        }
        if !v.image_size.is_multiple_of(v.patch_size) {
            return Err(input_err!(
                "config key `vision_config.image_size` ({}) is not a multiple of `patch_size` ({})",
                v.image_size,
                v.patch_size
            ));
        }
        for (key, id) in [
            ("bos_token_id", t.bos_token_id),
            ("sep_token_id", t.sep_token_id),
            ("pad_token_id", t.pad_token_id),
        ] {
            if id as usize >= t.vocab_size {
                return Err(input_err!(
                    "config key `text_config.{key}` ({id}) is outside the vocabulary ({} ids)",
                    t.vocab_size
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_transformers_and_encoder_width_follows_the_vision_tower() {
        let c = Config::from_json(
            r#"{"model_type": "blip", "vision_config": {"hidden_size": 1024, "num_attention_heads": 16}}"#,
        )
        .unwrap();
        assert_eq!(c.text_config.encoder_hidden_size, 1024);
        assert_eq!(c.text_config.bos_token_id, 30522);
        assert_eq!(c.vision_config.num_positions(), 577);
        assert_eq!(c.text_config.hidden_act, Activation::Gelu);
        for (bad, named) in [
            (r#"{"model_type": "clip"}"#, "model_type"),
            (
                r#"{"text_config": {"hidden_size": 30, "num_attention_heads": 8}}"#,
                "text_config.hidden_size",
            ),
            (r#"{"vision_config": {"hidden_act": "swish"}}"#, "swish"),
            (
                r#"{"text_config": {"sep_token_id": 40000}}"#,
                "sep_token_id",
            ),
        ] {
            let e = Config::from_json(bad).unwrap_err().to_string();
            assert!(e.contains(named), "{bad}: {e}");
        }
    }
}
