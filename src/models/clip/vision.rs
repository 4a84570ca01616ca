//! The image tower (transformers' `CLIPVisionTransformer`): patch embedding as one matrix product,
//! class and position embeddings, `pre_layrnorm`, the encoder, `post_layernorm` on the class
//! token.

use candle_core::Tensor;
use candle_nn::VarBuilder;

use super::layers::{matmul_wt, Encoder, EncoderDims, LayerNorm};
use super::{ClipVisionConfig, TowerOutput};

#[derive(Debug, Clone)]
pub(super) struct VisionTower {
    /// Conv weight [D, C, p, p] flattened to [D, C*p*p].
    pub(super) patch_weight: Tensor,
    class_embedding: Tensor,
    position_embedding: Tensor,
    pub(super) pre_layrnorm: LayerNorm,
    pub(super) encoder: Encoder,
    pub(super) post_layernorm: LayerNorm,
    pub(super) cfg: ClipVisionConfig,
}

impl VisionTower {
    pub(super) fn new(vb: VarBuilder, c: &ClipVisionConfig) -> candle_core::Result<Self> {
        let (d, p) = (c.hidden_size, c.patch_size);
        let emb = vb.pp("embeddings");
        let patch_weight = emb
            .get((d, c.num_channels, p, p), "patch_embedding.weight")?
            .reshape((d, c.num_channels * p * p))?;
        let dims = EncoderDims {
            hidden: d,
            intermediate: c.intermediate_size,
            heads: c.num_attention_heads,
            layers: c.num_hidden_layers,
            eps: c.layer_norm_eps,
            act: c.hidden_act,
        };
        Ok(Self {
            patch_weight,
            class_embedding: emb.get(d, "class_embedding")?,
            position_embedding: emb.get((c.num_positions(), d), "position_embedding.weight")?,
            pre_layrnorm: LayerNorm::new(vb.pp("pre_layrnorm"), d, c.layer_norm_eps)?,
            encoder: Encoder::new(vb.pp("encoder"), &dims)?,
            post_layernorm: LayerNorm::new(vb.pp("post_layernorm"), d, c.layer_norm_eps)?,
            cfg: c.clone(),
        })
    }

    pub(super) fn forward(&self, pixel_values: &Tensor) -> candle_core::Result<TowerOutput> {
        let last = self.encoder.forward(&self.embed(pixel_values)?, None)?;
        let pooled = self
            .post_layernorm
            .forward(&last.narrow(1, 0, 1)?.squeeze(1)?)?;
        Ok(TowerOutput {
            last_hidden_state: last,
            pooler_output: pooled,
        })
    }

    /// `forward(..).pooler_output` without the rest of the last layer's output.
    pub(super) fn pooled(&self, pixel_values: &Tensor) -> candle_core::Result<Tensor> {
        let first = self
            .encoder
            .forward_first(&self.embed(pixel_values)?, None)?;
        self.post_layernorm.forward(&first.squeeze(1)?)
    }

    /// Patch and position embeddings, then `pre_layrnorm`: the encoder's input [B, 1 + g*g, D].
    fn embed(&self, pixel_values: &Tensor) -> candle_core::Result<Tensor> {
        self.pre_layrnorm.forward(&self.embed_raw(pixel_values)?)
    }

    /// Patch and position embeddings before `pre_layrnorm`: [B, 1 + g*g, D].
    pub(super) fn embed_raw(&self, pixel_values: &Tensor) -> candle_core::Result<Tensor> {
        let c = &self.cfg;
        let (b, ch, h, w) = pixel_values.dims4()?;
        if ch != c.num_channels || h != c.image_size || w != c.image_size {
            return Err(candle_core::Error::Msg(format!(
                "CLIP image tower: pixel_values must be [B, {}, {s}, {s}], got {:?}",
                c.num_channels,
                pixel_values.dims(),
                s = c.image_size
            )));
        }
        let (g, p, d) = (c.grid(), c.patch_size, c.hidden_size);
        // The stride-p, p x p convolution as one matrix product over patches: [B, g*g, C*p*p].
        let patches = pixel_values
            .to_dtype(self.patch_weight.dtype())?
            .reshape((b, ch, g, p, g, p))?
            .permute([0, 2, 4, 1, 3, 5])?
            .reshape((b * g * g, ch * p * p))?;
        let patch_embeds = matmul_wt(&patches, &self.patch_weight)?.reshape((b, g * g, d))?;
        let class = self
            .class_embedding
            .reshape((1, 1, d))?
            .broadcast_as((b, 1, d))?;
        Tensor::cat(&[&class, &patch_embeds], 1)?.broadcast_add(&self.position_embedding)
    }
}
