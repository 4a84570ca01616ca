//! The image tower (transformers' `BlipVisionModel`): a pre-LN ViT. Patch embedding as one matrix
//! product (the stride-p convolution, with its bias), class and position embeddings, the encoder
//! layers (one stacked `qkv` projection, attention, `projection`; LayerNorm, MLP), and
//! `post_layernorm` on every position: `last_hidden_state` is what the text decoder attends to;
//! `pooler_output` is `post_layernorm` applied once more to the class token, as transformers does.

use candle_core::{DType, Tensor};
use candle_nn::VarBuilder;

use super::config::VisionConfig;
use super::Act;
use crate::kernels::blip_fused::FastAttention;
use crate::models::clip::layers::{matmul_wt, LayerNorm, Linear};

/// `BlipVisionModel`'s outputs.
#[derive(Debug, Clone)]
pub struct VisionOutput {
    /// [B, 1 + patches, D], after `post_layernorm`.
    pub last_hidden_state: Tensor,
    /// [B, D]: `post_layernorm(last_hidden_state[:, 0])`.
    pub pooler_output: Tensor,
}

#[derive(Debug, Clone)]
struct VisionLayer {
    layer_norm1: LayerNorm,
    qkv: Linear,
    projection: Linear,
    layer_norm2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
    act: Act,
    heads: usize,
    scale: f64,
}

impl VisionLayer {
    fn new(vb: VarBuilder, c: &VisionConfig) -> candle_core::Result<Self> {
        let d = c.hidden_size;
        let attn = vb.pp("self_attn");
        Ok(Self {
            layer_norm1: LayerNorm::new(vb.pp("layer_norm1"), d, c.layer_norm_eps)?,
            qkv: Linear::new(attn.pp("qkv"), d, 3 * d, true)?,
            projection: Linear::new(attn.pp("projection"), d, d, true)?,
            layer_norm2: LayerNorm::new(vb.pp("layer_norm2"), d, c.layer_norm_eps)?,
            fc1: Linear::new(vb.pp("mlp").pp("fc1"), d, c.intermediate_size, true)?,
            fc2: Linear::new(vb.pp("mlp").pp("fc2"), c.intermediate_size, d, true)?,
            act: Act(c.hidden_act),
            heads: c.num_attention_heads,
            scale: ((d / c.num_attention_heads) as f64).powf(-0.5),
        })
    }

    /// softmax(q k^T * scale) v of the stacked projection `qkv` [B, N, 3 D], laid out
    /// (3, heads, head_dim) as transformers reshapes it: [B, N, D].
    fn attention(&self, qkv: &Tensor) -> candle_core::Result<Tensor> {
        let (b, n, three_d) = qkv.dims3()?;
        if qkv.dtype() == DType::F32 && crate::kernels::native_kernels(qkv.device()) {
            let op = FastAttention {
                heads: self.heads,
                scale: self.scale as f32,
            };
            return qkv.contiguous()?.apply_op1_no_bwd(&op);
        }
        let d = three_d / 3;
        let qkv = qkv
            .reshape((b, n, 3, self.heads, d / self.heads))?
            .permute((2, 0, 3, 1, 4))?
            .contiguous()?;
        let (q, k, v) = (qkv.get(0)?, qkv.get(1)?, qkv.get(2)?);
        let scores = (q.matmul(&k.t()?)? * self.scale)?;
        let probs = candle_nn::ops::softmax_last_dim(&scores)?;
        probs.matmul(&v)?.transpose(1, 2)?.reshape((b, n, d))
    }

    fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        let qkv = self.qkv.forward(&self.layer_norm1.forward(xs)?)?;
        let xs = (self.projection.forward(&self.attention(&qkv)?)? + xs)?;
        let h = self.fc1.forward(&self.layer_norm2.forward(&xs)?)?;
        let h = self.fc2.forward(&self.act.forward(&h)?)?;
        h + xs
    }
}

/// transformers' `BlipVisionModel`.
#[derive(Debug, Clone)]
pub(super) struct VisionModel {
    /// The patch convolution's weight [D, 3, p, p] as [D, 3 p p], and its bias [D].
    patch_weight: Tensor,
    patch_bias: Tensor,
    class_embedding: Tensor,
    position_embedding: Tensor,
    layers: Vec<VisionLayer>,
    post_layernorm: LayerNorm,
    cfg: VisionConfig,
}

impl VisionModel {
    /// Tensor names under `vision_model.` of the published checkpoint: `embeddings.class_embedding`
    /// [1, 1, D], `embeddings.patch_embedding.{weight,bias}`, `embeddings.position_embedding`
    /// [1, N, D], `encoder.layers.{i}.{layer_norm1, self_attn.qkv, self_attn.projection,
    /// layer_norm2, mlp.fc1, mlp.fc2}`, `post_layernorm`.
    pub(super) fn new(vb: VarBuilder, c: &VisionConfig) -> candle_core::Result<Self> {
        let (d, p) = (c.hidden_size, c.patch_size);
        let emb = vb.pp("embeddings");
        let patch_weight = emb
            .get((d, 3, p, p), "patch_embedding.weight")?
            .reshape((d, 3 * p * p))?;
        let layers_vb = vb.pp("encoder").pp("layers");
        Ok(Self {
            patch_weight,
            patch_bias: emb.get(d, "patch_embedding.bias")?,
            class_embedding: emb.get((1, 1, d), "class_embedding")?.reshape(d)?,
            position_embedding: emb
                .get((1, c.num_positions(), d), "position_embedding")?
                .reshape((c.num_positions(), d))?,
            layers: (0..c.num_hidden_layers)
                .map(|i| VisionLayer::new(layers_vb.pp(i), c))
                .collect::<candle_core::Result<_>>()?,
            post_layernorm: LayerNorm::new(vb.pp("post_layernorm"), d, c.layer_norm_eps)?,
            cfg: c.clone(),
        })
    }

    /// Patch, class and position embeddings: [B, 1 + g g, D].
    fn embed(&self, pixel_values: &Tensor) -> candle_core::Result<Tensor> {
        let c = &self.cfg;
        let (b, ch, h, w) = pixel_values.dims4()?;
        if ch != 3 || h != c.image_size || w != c.image_size {
            candle_core::bail!(
                "BLIP image tower: pixel_values must be [B, 3, {s}, {s}], got {:?}",
                pixel_values.dims(),
                s = c.image_size
            )
        }
        let (g, p, d) = (c.grid(), c.patch_size, c.hidden_size);
        let patches = pixel_values
            .to_dtype(self.patch_weight.dtype())?
            .reshape((b, 3, g, p, g, p))?
            .permute([0, 2, 4, 1, 3, 5])?
            .reshape((b * g * g, 3 * p * p))?;
        let patch_embeds = matmul_wt(&patches, &self.patch_weight)?
            .broadcast_add(&self.patch_bias)?
            .reshape((b, g * g, d))?;
        let class = self
            .class_embedding
            .reshape((1, 1, d))?
            .broadcast_as((b, 1, d))?;
        Tensor::cat(&[&class, &patch_embeds], 1)?.broadcast_add(&self.position_embedding)
    }

    /// [B, 3, S, S] pixels (the image processor's output) -> both outputs.
    pub(super) fn forward(&self, pixel_values: &Tensor) -> candle_core::Result<VisionOutput> {
        let xs = self
            .layers
            .iter()
            .try_fold(self.embed(pixel_values)?, |xs, l| l.forward(&xs))?;
        let last_hidden_state = self.post_layernorm.forward(&xs)?;
        let pooler_output = self
            .post_layernorm
            .forward(&last_hidden_state.narrow(1, 0, 1)?.squeeze(1)?)?;
        Ok(VisionOutput {
            last_hidden_state,
            pooler_output,
        })
    }

    pub(super) fn config(&self) -> &VisionConfig {
        &self.cfg
    }
}
