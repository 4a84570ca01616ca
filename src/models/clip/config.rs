//! CLIP's config.json, read by hand: transformers' defaults fill absent keys (a config.json is a
//! diff against the defaults), `text_config_dict` / `vision_config_dict` override, and every error
//! names the offending key.

use serde_json::{Map, Value};

use crate::input_err;

/// Activation of the MLP blocks (`hidden_act` in config.json).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HiddenAct {
    /// `quick_gelu`: x * sigmoid(1.702 x), OpenAI's CLIP models.
    QuickGelu,
    /// `gelu`: the exact (erf) GELU, e.g. LAION's ViT-H/14.
    Gelu,
    /// `gelu_new` / `gelu_pytorch_tanh`: the tanh approximation.
    GeluTanh,
}

impl HiddenAct {
    fn parse(name: &str) -> Option<Self> {
        match name {
            "quick_gelu" => Some(Self::QuickGelu),
            "gelu" => Some(Self::Gelu),
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Some(Self::GeluTanh),
            _ => None,
        }
    }
}

/// The text tower's `text_config`; field names and defaults as transformers' `CLIPTextConfig`.
#[derive(Debug, Clone, PartialEq)]
pub struct ClipTextConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    /// The context length (77 for every published CLIP).
    pub max_position_embeddings: usize,
    pub layer_norm_eps: f64,
    pub hidden_act: HiddenAct,
    pub bos_token_id: u32,
    /// Selects the pooled position: the first `eos_token_id`, or argmax(ids) when it is 2 (legacy).
    pub eos_token_id: u32,
    pub pad_token_id: u32,
}

/// The image tower's `vision_config`; field names and defaults as transformers' `CLIPVisionConfig`.
#[derive(Debug, Clone, PartialEq)]
pub struct ClipVisionConfig {
    pub image_size: usize,
    pub patch_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub layer_norm_eps: f64,
    pub hidden_act: HiddenAct,
    pub num_channels: usize,
}

impl ClipVisionConfig {
    /// Patches per side of the (square) input.
    pub fn grid(&self) -> usize {
        self.image_size / self.patch_size
    }

    /// Tokens of the image tower: the class token plus one per patch.
    pub fn num_positions(&self) -> usize {
        self.grid() * self.grid() + 1
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ClipConfig {
    pub text: ClipTextConfig,
    pub vision: ClipVisionConfig,
    pub projection_dim: usize,
}

/// One object of config.json, read key by key with transformers' defaults; errors name the key.
struct Section<'a> {
    path: &'a str,
    keys: Vec<&'a Map<String, Value>>,
}

impl<'a> Section<'a> {
    /// Later maps override earlier ones (as `text_config_dict` overrides `text_config`).
    fn new(path: &'a str, keys: Vec<&'a Map<String, Value>>) -> Self {
        Self { path, keys }
    }

    /// The value of a key; JSON null counts as absent (the hub's configs write null for unset keys).
    fn get(&self, key: &str) -> Option<&'a Value> {
        self.keys
            .iter()
            .rev()
            .find_map(|m| m.get(key).filter(|v| !v.is_null()))
    }

    fn name(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_owned()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    fn usize(&self, key: &str, default: usize) -> anyhow::Result<usize> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v
                .as_u64()
                .and_then(|n| usize::try_from(n).ok())
                .ok_or_else(|| {
                    input_err!(
                        "config key `{}`: expected a non-negative integer, got {v}",
                        self.name(key)
                    )
                }),
        }
    }

    /// A size that must be at least 1.
    fn size(&self, key: &str, default: usize) -> anyhow::Result<usize> {
        let n = self.usize(key, default)?;
        if n == 0 {
            return Err(input_err!(
                "config key `{}`: must be at least 1, got 0",
                self.name(key)
            ));
        }
        Ok(n)
    }

    fn u32(&self, key: &str, default: u32) -> anyhow::Result<u32> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v
                .as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .ok_or_else(|| {
                    input_err!(
                        "config key `{}`: expected a token id (integer in 0..2^32), got {v}",
                        self.name(key)
                    )
                }),
        }
    }

    fn eps(&self, key: &str, default: f64) -> anyhow::Result<f64> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v
                .as_f64()
                .filter(|x| *x > 0.0 && x.is_finite())
                .ok_or_else(|| {
                    input_err!(
                        "config key `{}`: expected a positive number, got {v}",
                        self.name(key)
                    )
                }),
        }
    }

    fn act(&self, key: &str) -> anyhow::Result<HiddenAct> {
        match self.get(key) {
            None => Ok(HiddenAct::QuickGelu),
            Some(v) => v.as_str().and_then(HiddenAct::parse).ok_or_else(|| {
                input_err!(
                    "config key `{}`: unsupported activation {v}; supported: \"quick_gelu\", \
                     \"gelu\", \"gelu_new\", \"gelu_pytorch_tanh\"",
                    self.name(key)
                )
            }),
        }
    }

    /// A nested object (`text_config`), absent or null meaning "all defaults".
    fn object(&self, key: &str) -> anyhow::Result<Option<&'a Map<String, Value>>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Object(m)) => Ok(Some(m)),
            Some(v) => Err(input_err!(
                "config key `{}`: expected an object, got {v}",
                self.name(key)
            )),
        }
    }
}

fn check_heads(path: &str, hidden: usize, heads: usize) -> anyhow::Result<()> {
    if !hidden.is_multiple_of(heads) {
        return Err(input_err!(
            "config key `{path}.hidden_size` ({hidden}) is not divisible by \
             `{path}.num_attention_heads` ({heads})"
        ));
    }
    Ok(())
}

impl ClipConfig {
    /// Parses transformers' config.json, filling transformers' defaults for absent keys (config.json
    /// is a diff against defaults). `text_config_dict` / `vision_config_dict` (old configs) override
    /// `text_config` / `vision_config` as in transformers; JSON null means absent.
    pub fn from_json(text: &str) -> anyhow::Result<Self> {
        let root: Value = serde_json::from_str(text)
            .map_err(|e| input_err!("config.json is not valid JSON: {e}"))?;
        let Value::Object(root) = &root else {
            return Err(input_err!(
                "config.json: expected a JSON object at the top level"
            ));
        };
        let top = Section::new("", vec![root]);
        let nested = |a: &str, b: &str| -> anyhow::Result<Vec<&Map<String, Value>>> {
            Ok([top.object(a)?, top.object(b)?]
                .into_iter()
                .flatten()
                .collect())
        };
        let t = Section::new("text_config", nested("text_config", "text_config_dict")?);
        let v = Section::new(
            "vision_config",
            nested("vision_config", "vision_config_dict")?,
        );
        let text = ClipTextConfig {
            vocab_size: t.size("vocab_size", 49408)?,
            hidden_size: t.size("hidden_size", 512)?,
            intermediate_size: t.size("intermediate_size", 2048)?,
            num_hidden_layers: t.usize("num_hidden_layers", 12)?,
            num_attention_heads: t.size("num_attention_heads", 8)?,
            max_position_embeddings: t.size("max_position_embeddings", 77)?,
            layer_norm_eps: t.eps("layer_norm_eps", 1e-5)?,
            hidden_act: t.act("hidden_act")?,
            bos_token_id: t.u32("bos_token_id", 49406)?,
            eos_token_id: t.u32("eos_token_id", 49407)?,
            pad_token_id: t.u32("pad_token_id", 1)?,
        };
        let vision = ClipVisionConfig {
            image_size: v.size("image_size", 224)?,
            patch_size: v.size("patch_size", 32)?,
            hidden_size: v.size("hidden_size", 768)?,
            intermediate_size: v.size("intermediate_size", 3072)?,
            num_hidden_layers: v.usize("num_hidden_layers", 12)?,
            num_attention_heads: v.size("num_attention_heads", 12)?,
            layer_norm_eps: v.eps("layer_norm_eps", 1e-5)?,
            hidden_act: v.act("hidden_act")?,
            num_channels: v.size("num_channels", 3)?,
        };
        check_heads("text_config", text.hidden_size, text.num_attention_heads)?;
        check_heads(
            "vision_config",
            vision.hidden_size,
            vision.num_attention_heads,
        )?;
        if !vision.image_size.is_multiple_of(vision.patch_size) {
            return Err(input_err!(
                "config key `vision_config.image_size` ({}) is not a multiple of \
                 `vision_config.patch_size` ({})",
                vision.image_size,
                vision.patch_size
            ));
        }
        Ok(Self {
            text,
            vision,
            projection_dim: top.size("projection_dim", 512)?,
        })
    }

    /// openai/clip-vit-base-patch32 as its hub config.json describes it (for benchmarks with random
    /// weights), including the legacy `eos_token_id` 2 that selects argmax pooling.
    pub fn vit_b32() -> Self {
        Self {
            text: ClipTextConfig {
                vocab_size: 49408,
                hidden_size: 512,
                intermediate_size: 2048,
                num_hidden_layers: 12,
                num_attention_heads: 8,
                max_position_embeddings: 77,
                layer_norm_eps: 1e-5,
                hidden_act: HiddenAct::QuickGelu,
                bos_token_id: 0,
                eos_token_id: 2,
                pad_token_id: 1,
            },
            vision: ClipVisionConfig {
                image_size: 224,
                patch_size: 32,
                hidden_size: 768,
                intermediate_size: 3072,
                num_hidden_layers: 12,
                num_attention_heads: 12,
                layer_norm_eps: 1e-5,
                hidden_act: HiddenAct::QuickGelu,
                num_channels: 3,
            },
            projection_dim: 512,
        }
    }
}
