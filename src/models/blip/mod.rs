//! BLIP (Li et al. 2022, "BLIP: Bootstrapping Language-Image Pre-training for Unified
//! Vision-Language Understanding and Generation"), the image captioner: the checkpoint layout of
//! transformers' `BlipForConditionalGeneration` (Salesforce/blip-image-captioning-base, a
//! ViT-B/16, and -large, a ViT-L/16, both at 384 px with a BERT-base decoder), config.json read
//! as transformers reads it ([`Config`]).
//!
//! Adapted from candle-transformers' `blip` / `blip_text` (the same tensor names), changed where
//! captioning needs it: an immutable model with an explicit decoding [`Cache`] that can be
//! reordered and shrunk (beam search, finished images dropped), the cross-attention keys and
//! values computed once per image instead of at every step, greedy and beam decoding exactly as
//! transformers' `generate` ([`generate`]), the image processor ([`ImageProcessor`]), and on the
//! CPU fused f32 kernels for the image tower's attention and GELU
//! ([`crate::kernels::blip_fused`]) and LayerNorm (CLIP's, [`crate::kernels::clip_fused`]). Outputs match transformers 5 to ~1e-6 relative in f32, with identical
//! generated ids (tests/it/blip_parity.rs).
//!
//! Files: `config` (config.json), `vision` (the image tower), `text` (the decoder and its cache),
//! `generate` (decoding), `preprocess` (BlipImageProcessor); here the model ([`Blip`]) and loading
//! it from a model reference ([`Blip::load`]).

mod config;
mod generate;
mod preprocess;
mod text;
mod vision;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;

pub use config::{Activation, Config, TextConfig, VisionConfig};
pub use generate::{generate, Generation};
pub use preprocess::ImageProcessor;
pub use text::Cache;
use text::TextDecoder;
use vision::VisionModel;
pub use vision::VisionOutput;

use crate::input_err;

/// An activation, with the fused GELU kernel on the CPU.
#[derive(Debug, Clone, Copy)]
struct Act(Activation);

impl Act {
    fn forward(self, xs: &Tensor) -> candle_core::Result<Tensor> {
        match self.0 {
            Activation::Gelu
                if xs.dtype() == DType::F32 && crate::kernels::native_kernels(xs.device()) =>
            {
                xs.contiguous()?
                    .apply_op1_no_bwd(&crate::kernels::blip_fused::FusedGelu)
            }
            Activation::Gelu => xs.gelu_erf(),
            Activation::GeluTanh => xs.gelu(),
            Activation::Relu => xs.relu(),
        }
    }
}

/// transformers' `BlipForConditionalGeneration`: the image tower and the text decoder.
#[derive(Debug, Clone)]
pub struct Blip {
    vision: VisionModel,
    text: TextDecoder,
    cfg: Config,
}

impl Blip {
    /// Tensor names as the published checkpoints: `vision_model.*`, `text_decoder.*` (see the
    /// towers); the dtype is the VarBuilder's.
    pub fn new(vb: VarBuilder, cfg: &Config) -> candle_core::Result<Self> {
        Ok(Self {
            vision: VisionModel::new(vb.pp("vision_model"), &cfg.vision_config)?,
            text: TextDecoder::new(vb.pp("text_decoder"), &cfg.text_config)?,
            cfg: cfg.clone(),
        })
    }

    /// Loads config.json and the weights of a model folder or hub repository: `model.safetensors`
    /// when it has one, else `pytorch_model.bin` (read with [`crate::weights::pth`]'s
    /// allow-list). Errors name the file and the tensor.
    pub fn load(model: &crate::hub::Model, device: &Device) -> anyhow::Result<Self> {
        let config = model.file("config.json")?;
        let text = std::fs::read_to_string(&config)
            .map_err(|e| input_err!("cannot read {}: {e}", config.display()))?;
        let cfg =
            Config::from_json(&text).map_err(|e| input_err!("{}: {e:#}", config.display()))?;
        let weights = crate::weights::weights_file(model, "BLIP weights")?;
        let build = |vb: VarBuilder| Self::new(vb, &cfg);
        if weights.extension().is_some_and(|e| e == "safetensors") {
            crate::weights::load_safetensors(&weights, DType::F32, device, build)
        } else {
            let tensors = crate::weights::load_weights_file(&weights)?;
            build(VarBuilder::from_tensors(tensors, DType::F32, device)).map_err(|e| {
                input_err!(
                    "{}: {}",
                    weights.display(),
                    crate::weights::without_backtrace(e)
                )
            })
        }
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// `vision_model(pixel_values)`: [B, 3, S, S] -> the image embeddings and the pooled output.
    pub fn vision(&self, pixel_values: &Tensor) -> candle_core::Result<VisionOutput> {
        self.vision.forward(pixel_values)
    }

    /// `BlipForConditionalGeneration(pixel_values, input_ids).logits`: [B, T, V] for decoder ids
    /// [B, T] (no padding), every position attending causally.
    pub fn forward(
        &self,
        pixel_values: &Tensor,
        input_ids: &Tensor,
    ) -> candle_core::Result<Tensor> {
        let embeds = self.vision.forward(pixel_values)?.last_hidden_state;
        let mut cache = self.text.cache(&embeds, 1)?;
        let hidden = self.text.hidden(input_ids, &mut cache)?;
        self.text.logits(&hidden)
    }

    /// A decoding cache for image embeddings [I, S, E] (`vision(..).last_hidden_state`), `group`
    /// rows per image.
    pub fn cache(&self, image_embeds: &Tensor, group: usize) -> candle_core::Result<Cache> {
        self.text.cache(image_embeds, group)
    }

    /// Logits [N, V] of the last of the next positions `ids` [N, T], extending the cache.
    pub fn next_logits(&self, ids: &Tensor, cache: &mut Cache) -> candle_core::Result<Tensor> {
        self.text.next_logits(ids, cache)
    }

    /// The input size of the image tower.
    pub fn image_size(&self) -> usize {
        self.vision.config().image_size
    }

    /// The decoder's vocabulary size.
    pub fn vocab_size(&self) -> usize {
        self.text.config().vocab_size
    }
}
