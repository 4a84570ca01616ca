//! The image tower with a hand-written backward, for CLIP guidance on the CPU:
//! [`ClipModel::image_features_taped`] runs the forward without autograd and keeps what
//! [`ImageTape::backward`] needs to return the pixel gradient. Applies with frozen f32 weights,
//! QuickGELU and the fused kernels ([`ClipModel::image_tape_available`]); otherwise callers use
//! candle's autograd on [`ClipModel::image_features`].

use candle_core::{DType, Tensor};

use super::layers::{EncoderLayer, LayerNorm, Linear};
use super::{ClipModel, HiddenAct};
use crate::kernels::clip_fused::{FusedAttention, FusedLayerNorm, FusedQuickGelu};

/// What [`ClipModel::image_features_taped`] keeps for [`ImageTape::backward`].
///
/// With frozen weights the backward needs no weight gradients, so it is a fixed sequence of
/// matrix products with the weights and the fused kernels' input gradients. Under candle's
/// autograd every gradient also gets a zero-filled accumulator and an add, and every broadcast
/// bias add a reduction: about a third of the tower's backward time in CLIP guidance.
pub struct ImageTape {
    /// The embeddings before `pre_layrnorm` [B, N, D].
    embed: Tensor,
    layers: Vec<LayerTape>,
    /// The last layer's class-token output [B, D] (`post_layernorm`'s input).
    first: Tensor,
    /// (B, grid, channels, patch).
    geometry: (usize, usize, usize, usize),
}

/// One encoder layer's saved tensors: its input, the stacked q/k/v projection, the residual
/// after attention and fc1's output (all detached).
struct LayerTape {
    x: Tensor,
    qkv: Tensor,
    x1: Tensor,
    fc1: Tensor,
    /// Only the class token goes on past attention (the last layer).
    first_only: bool,
}

/// `g [.., out] @ w`: the input gradient of a frozen [`Linear`] `x w^T + b`.
fn linear_input_grad(l: &Linear, g: &Tensor) -> candle_core::Result<Tensor> {
    let dims = g.dims();
    let (&out, lead) = dims
        .split_last()
        .ok_or_else(|| candle_core::Error::Msg("linear grad: scalar gradient".into()))?;
    let rows = lead.iter().product::<usize>();
    let gx = g.reshape((rows, out))?.matmul(&l.weight)?;
    let mut in_dims = lead.to_vec();
    in_dims.push(l.weight.dim(1)?);
    gx.reshape(in_dims)
}

fn fused_ln(ln: &LayerNorm) -> candle_core::Result<&FusedLayerNorm> {
    ln.fused
        .as_ref()
        .ok_or_else(|| candle_core::Error::Msg("taped CLIP: LayerNorm is not fused".into()))
}

impl EncoderLayer {
    /// Whether [`Self::forward_taped`] applies: frozen weights (fused LayerNorms, stacked
    /// q/k/v) and QuickGELU.
    fn tapeable(&self) -> bool {
        let frozen =
            |l: &Linear| !l.weight.track_op() && !l.bias.as_ref().is_some_and(Tensor::track_op);
        self.layer_norm1.fused.is_some()
            && self.layer_norm2.fused.is_some()
            && self.self_attn.frozen_qkv.is_some()
            && frozen(&self.self_attn.out_proj)
            && frozen(&self.fc1)
            && frozen(&self.fc2)
            && self.act == HiddenAct::QuickGelu
    }

    /// The stacked q/k/v projection that the taped path uses.
    fn frozen_qkv(&self) -> candle_core::Result<&Linear> {
        self.self_attn
            .frozen_qkv
            .as_ref()
            .ok_or_else(|| candle_core::Error::Msg("taped CLIP: q/k/v not stacked".into()))
    }

    fn attention_op(&self, queries: usize) -> FusedAttention {
        FusedAttention {
            heads: self.self_attn.heads,
            queries,
            scale: self.self_attn.scale as f32,
        }
    }

    /// [`Self::forward`] (or [`Self::forward_first`]) on detached tensors, keeping the tape.
    fn forward_taped(
        &self,
        xs: &Tensor,
        first_only: bool,
    ) -> candle_core::Result<(Tensor, LayerTape)> {
        let qkv_proj = self.frozen_qkv()?;
        let n = xs.dim(1)?;
        let qkv = qkv_proj
            .forward(&self.layer_norm1.forward(xs)?)?
            .contiguous()?;
        let att = qkv.apply_op1_no_bwd(&self.attention_op(if first_only { 1 } else { n }))?;
        let h = self.self_attn.out_proj.forward(&att)?;
        let x1 = if first_only {
            (xs.narrow(1, 0, 1)? + h)?
        } else {
            (xs + h)?
        };
        let fc1 = self.fc1.forward(&self.layer_norm2.forward(&x1)?)?;
        let y = self
            .fc2
            .forward(&fc1.contiguous()?.apply_op1_no_bwd(&FusedQuickGelu)?)?;
        let out = (&x1 + y)?;
        let tape = LayerTape {
            x: xs.clone(),
            qkv,
            x1,
            fc1,
            first_only,
        };
        Ok((out, tape))
    }

    /// The gradient at the layer's input for `gy` at its output.
    fn backward_taped(&self, t: &LayerTape, gy: &Tensor) -> candle_core::Result<Tensor> {
        let qkv_proj = self.frozen_qkv()?;
        let g_act = linear_input_grad(&self.fc2, gy)?;
        let g_fc1 = FusedQuickGelu::grad(&t.fc1, &g_act)?;
        let g_ln2 = linear_input_grad(&self.fc1, &g_fc1)?;
        let g_x1 = (gy + fused_ln(&self.layer_norm2)?.grad(&t.x1, &g_ln2)?)?;
        let g_att = linear_input_grad(&self.self_attn.out_proj, &g_x1)?;
        let n = t.x.dim(1)?;
        let op = self.attention_op(if t.first_only { 1 } else { n });
        let g_qkv = op.grad(&t.qkv, &g_att)?;
        let g_ln1 = linear_input_grad(qkv_proj, &g_qkv)?;
        let g_x = fused_ln(&self.layer_norm1)?.grad(&t.x, &g_ln1)?;
        if t.first_only {
            g_x + g_x1.pad_with_zeros(1, 0, n - 1)?
        } else {
            g_x + g_x1
        }
    }
}

impl ClipModel {
    /// Whether [`Self::image_features_taped`] applies to this model on this device: frozen f32
    /// weights, QuickGELU, and the fused CPU kernels ([`crate::kernels::native_kernels`]).
    pub fn image_tape_available(&self) -> bool {
        let v = &self.vision;
        crate::kernels::native_kernels(self.device())
            && self.dtype() == DType::F32
            && !self.visual_projection.weight.track_op()
            && !v.patch_weight.track_op()
            && v.pre_layrnorm.fused.is_some()
            && v.post_layernorm.fused.is_some()
            && v.encoder.layers.iter().all(EncoderLayer::tapeable)
    }

    /// [`Self::image_features`] without autograd (the result is detached), keeping what
    /// [`ImageTape::backward`] needs; `None` when the tape does not apply
    /// ([`Self::image_tape_available`]): use `image_features` and candle's autograd then.
    pub fn image_features_taped(
        &self,
        pixel_values: &Tensor,
    ) -> candle_core::Result<Option<(Tensor, ImageTape)>> {
        if !self.image_tape_available() {
            return Ok(None);
        }
        let v = &self.vision;
        let c = &v.cfg;
        let px = pixel_values.detach();
        let b = px.dim(0)?;
        let embed = v.embed_raw(&px)?;
        let mut xs = v.pre_layrnorm.forward(&embed)?;
        let count = v.encoder.layers.len();
        let mut layers = Vec::with_capacity(count);
        for (i, layer) in v.encoder.layers.iter().enumerate() {
            let (out, tape) = layer.forward_taped(&xs, i + 1 == count)?;
            layers.push(tape);
            xs = out;
        }
        let first = xs.narrow(1, 0, 1)?.squeeze(1)?.contiguous()?;
        let features = self
            .visual_projection
            .forward(&v.post_layernorm.forward(&first)?)?;
        let tape = ImageTape {
            embed,
            layers,
            first,
            geometry: (b, c.grid(), c.num_channels, c.patch_size),
        };
        Ok(Some((features, tape)))
    }
}

impl ImageTape {
    /// d loss / d pixel_values [B, C, S, S] for `grad` = d loss / d features [B, projection].
    pub fn backward(&self, model: &ClipModel, grad: &Tensor) -> candle_core::Result<Tensor> {
        let v = &model.vision;
        let g_pooled = linear_input_grad(&model.visual_projection, grad)?;
        let g_first = fused_ln(&v.post_layernorm)?.grad(&self.first, &g_pooled)?;
        let mut g = g_first.unsqueeze(1)?;
        if self.layers.is_empty() {
            let n = self.embed.dim(1)?;
            g = g.pad_with_zeros(1, 0, n - 1)?;
        }
        for (layer, tape) in v.encoder.layers.iter().zip(&self.layers).rev() {
            g = layer.backward_taped(tape, &g)?;
        }
        let g_embed = fused_ln(&v.pre_layrnorm)?.grad(&self.embed, &g)?;
        let (b, grid, ch, p) = self.geometry;
        let d = g_embed.dim(2)?;
        let g_patches = g_embed
            .narrow(1, 1, grid * grid)?
            .reshape((b * grid * grid, d))?
            .matmul(&v.patch_weight)?;
        g_patches
            .reshape((b, grid, grid, ch, p, p))?
            .permute([0, 3, 1, 4, 2, 5])?
            .reshape((b, ch, grid * p, grid * p))
    }
}
