//! CLIP (Radford et al. 2021, "Learning Transferable Visual Models From Natural Language
//! Supervision"); checkpoint layout of transformers' `CLIPModel` (openai/clip-vit-base-patch32).
//!
//! Unlike candle-transformers' CLIP, the image tower is differentiable with respect to its input
//! pixels, which CLIP guidance needs. Two code paths compute the same function, chosen per call
//! by [`crate::kernels::native_kernels`]:
//! - the fused CPU-kernel path: in f32 on the CPU, QuickGELU, the image tower's (unmasked)
//!   attention and, with frozen weights, LayerNorm are each one hand-written kernel per direction
//!   ([`crate::kernels::clip_fused`], input gradient only), and with frozen weights the image
//!   tower's backward can run by hand, without candle's autograd ([`ImageTape`]);
//! - the portable path, plain candle ops (CUDA, Metal, trainable weights, and the CPU under
//!   [`crate::kernels::with_portable_ops`]): LayerNorm, softmax and the activations are written
//!   with basic ops that have a backward (candle's fused `LayerNorm` and `softmax_last_dim` have
//!   none and silently cut the gradient graph).
//!
//! On both, the patch embedding is a reshape plus one matrix product, q/k/v are one stacked
//! matrix product, and frozen weights skip their weight gradient. Outputs match transformers 5
//! (eager attention) to about 1e-6 relative in f32; the two paths agree to f32 rounding
//! (tests/it/clip_parity.rs).
//!
//! Files, as candle-transformers' clip/: `config` (the config.json reader), `layers` (the encoder
//! both towers share), `text` and `vision` (the towers), `tape` (the taped image backward),
//! `preprocess` (CLIPImageProcessor), `tokenizer`; here the model ([`ClipModel`]) and loading
//! from the hub ([`Clip`], [`load_weights`]).

mod config;
pub(crate) mod layers;
mod preprocess;
mod tape;
mod text;
mod tokenizer;
mod vision;

use std::path::Path;

use anyhow::Context as _;
use candle_core::{DType, Device, Tensor, D};
use candle_nn::VarBuilder;

pub use config::{ClipConfig, ClipTextConfig, ClipVisionConfig, HiddenAct};
use layers::Linear;
pub use preprocess::{preprocess_image, CLIP_MEAN, CLIP_STD};
pub use tape::ImageTape;
use text::TextTower;
pub use tokenizer::ClipTokenizer;
use vision::VisionTower;

use crate::input_err;

/// Output of a tower before its projection, as transformers' `BaseModelOutputWithPooling`.
#[derive(Debug, Clone)]
pub struct TowerOutput {
    /// Vision: the encoder output [B, 1 + patches, D] BEFORE `post_layernorm`. Text: the output
    /// [B, L, D] AFTER `final_layer_norm` (transformers' conventions for each tower).
    pub last_hidden_state: Tensor,
    /// [B, D]: vision `post_layernorm(last_hidden_state[:, 0])`; text the pooled position.
    pub pooler_output: Tensor,
}

/// Divides each row by its L2 norm (differentiable).
pub fn l2_normalize(xs: &Tensor) -> candle_core::Result<Tensor> {
    xs.broadcast_div(&xs.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?)
}

/// transformers' `CLIPModel`: both towers, their projections and the logit scale.
#[derive(Debug, Clone)]
pub struct ClipModel {
    text: TextTower,
    vision: VisionTower,
    visual_projection: Linear,
    text_projection: Linear,
    logit_scale: Tensor,
    cfg: ClipConfig,
}

impl ClipModel {
    /// Tensor names exactly as the hub checkpoint: `text_model.*`, `vision_model.*` (with the
    /// `pre_layrnorm` spelling), `visual_projection`, `text_projection`, `logit_scale`. The dtype is
    /// the VarBuilder's (F64 for gradient checks).
    pub fn new(vb: VarBuilder, cfg: &ClipConfig) -> candle_core::Result<Self> {
        // A 0-d parameter in transformers (`nn.Parameter(torch.tensor(2.6592))`).
        let logit_scale = vb.get((), "logit_scale")?;
        Ok(Self {
            text: TextTower::new(vb.pp("text_model"), &cfg.text)?,
            vision: VisionTower::new(vb.pp("vision_model"), &cfg.vision)?,
            visual_projection: Linear::new(
                vb.pp("visual_projection"),
                cfg.vision.hidden_size,
                cfg.projection_dim,
                false,
            )?,
            text_projection: Linear::new(
                vb.pp("text_projection"),
                cfg.text.hidden_size,
                cfg.projection_dim,
                false,
            )?,
            logit_scale,
            cfg: cfg.clone(),
        })
    }

    /// pixel_values [B,3,S,S], already CLIP-normalised, S = vision.image_size. Returns the
    /// projected, unnormalised embedding [B, projection_dim] (= transformers
    /// `get_image_features`). Differentiable w.r.t. pixel_values.
    pub fn image_features(&self, pixel_values: &Tensor) -> candle_core::Result<Tensor> {
        self.visual_projection
            .forward(&self.vision.pooled(pixel_values)?)
    }

    /// input_ids [B, L] (u32; i64 accepted), returns the projected unnormalised [B,
    /// projection_dim] (= `get_text_features`). Pooling as transformers: first position of
    /// eos_token_id, or argmax(ids) when eos_token_id == 2 (legacy configs).
    pub fn text_features(&self, input_ids: &Tensor) -> candle_core::Result<Tensor> {
        let out = self.text.forward(input_ids)?;
        self.text_projection.forward(&out.pooler_output)
    }

    /// The image tower before projection (transformers' `vision_model(pixel_values)`).
    pub fn vision_forward(&self, pixel_values: &Tensor) -> candle_core::Result<TowerOutput> {
        self.vision.forward(pixel_values)
    }

    /// The text tower before projection (transformers' `text_model(input_ids)` without an
    /// attention mask: causal mask only, so padding positions differ from a masked run).
    pub fn text_forward(&self, input_ids: &Tensor) -> candle_core::Result<TowerOutput> {
        self.text.forward(input_ids)
    }

    /// `logit_scale.exp() * normed(image) @ normed(text)^T`, [B_images, B_texts] (transformers'
    /// `logits_per_image`).
    pub fn logits_per_image(
        &self,
        pixel_values: &Tensor,
        input_ids: &Tensor,
    ) -> candle_core::Result<Tensor> {
        let img = l2_normalize(&self.image_features(pixel_values)?)?;
        let txt = l2_normalize(&self.text_features(input_ids)?)?;
        img.matmul(&txt.t()?)?
            .broadcast_mul(&self.logit_scale.exp()?.to_dtype(img.dtype())?)
    }

    /// exp of the stored logit_scale (100 for the published CLIP models).
    pub fn logit_scale(&self) -> candle_core::Result<f32> {
        self.logit_scale
            .exp()?
            .to_dtype(DType::F32)?
            .to_scalar::<f32>()
    }

    pub fn config(&self) -> &ClipConfig {
        &self.cfg
    }

    pub fn dtype(&self) -> DType {
        self.logit_scale.dtype()
    }

    pub fn device(&self) -> &Device {
        self.logit_scale.device()
    }
}

/// A loaded CLIP: model, tokenizer, and where they came from.
pub struct Clip {
    pub model: ClipModel,
    pub tokenizer: ClipTokenizer,
    pub record: crate::hub::ModelRecord,
}

impl Clip {
    /// Loads config.json, model.safetensors and tokenizer.json (F32) from a resolved model; errors
    /// name the file and, for weights, the missing or mis-shaped tensor.
    pub fn load(model: &crate::hub::Model, device: &Device) -> anyhow::Result<Self> {
        let config_path = model.file("config.json")?;
        let text = std::fs::read_to_string(&config_path)
            .map_err(|e| input_err!("cannot read {}: {e}", config_path.display()))?;
        let cfg = ClipConfig::from_json(&text)
            .with_context(|| format!("in {}", config_path.display()))?;
        let weights_path = model.file("model.safetensors")?;
        let clip = load_weights(&weights_path, &cfg, DType::F32, device)?;
        let tokenizer = ClipTokenizer::from_file(&model.file("tokenizer.json")?, &cfg.text)?;
        Ok(Self {
            model: clip,
            tokenizer,
            record: model.record(),
        })
    }
}

/// Builds a [`ClipModel`] from a safetensors file in the given dtype; errors name the file and
/// the tensor (a missing or mis-shaped tensor is the user's to fix: an input error).
pub fn load_weights(
    path: &Path,
    cfg: &ClipConfig,
    dtype: DType,
    device: &Device,
) -> anyhow::Result<ClipModel> {
    crate::weights::load_safetensors(path, dtype, device, |vb| ClipModel::new(vb, cfg))
}
