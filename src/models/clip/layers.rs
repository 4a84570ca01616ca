//! The transformer pieces both towers share: the pre-LN encoder (layers of self-attention and an
//! MLP), its Linear, LayerNorm and attention, and the MLP activation. Each takes the fused CPU
//! kernel ([`crate::kernels::clip_fused`]) where it applies (f32 on the CPU; LayerNorm with frozen
//! weights; attention without a mask) and plain candle ops with a backward otherwise.

use std::sync::Arc;

use candle_core::{DType, Tensor, D};
use candle_nn::VarBuilder;

use super::HiddenAct;
use crate::kernels::clip_fused::{FusedAttention, FusedLayerNorm, FusedQuickGelu};

impl HiddenAct {
    /// All three have a backward in candle 0.11 (sigmoid is a custom op with `bwd`; `gelu_erf` and
    /// `gelu` are unary ops with gradients).
    pub(super) fn forward(self, xs: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Self::QuickGelu
                if xs.dtype() == DType::F32 && crate::kernels::native_kernels(xs.device()) =>
            {
                xs.contiguous()?.apply_op1(FusedQuickGelu)
            }
            Self::QuickGelu => xs * candle_nn::ops::sigmoid(&(xs * 1.702)?)?,
            Self::Gelu => xs.gelu_erf(),
            Self::GeluTanh => xs.gelu(),
        }
    }
}

/// `y = x W^T + b` over the last dimension. Leading dimensions are flattened so that the forward
/// and backward are single matrix products (a broadcast weight would make the backward compute
/// one weight gradient per batch item). A weight that is not trained (loaded from a file, not a
/// `Var`) goes through [`FrozenMatmul`], whose backward skips the weight gradient that candle's
/// matmul always computes: that is about half of the image tower's backward work.
#[derive(Debug, Clone)]
pub(crate) struct Linear {
    pub(crate) weight: Tensor,
    pub(crate) bias: Option<Tensor>,
    /// A frozen CPU weight with more inputs than outputs (CLIP's fc2) also as a contiguous
    /// [in, out] copy, used when no gradient is tracked: gemm then packs it and runs ~1.3x
    /// faster than on the strided `weight^T` view (one row of the view spans `in` floats).
    weight_t: Option<Tensor>,
}

impl Linear {
    pub(crate) fn new(
        vb: VarBuilder,
        in_dim: usize,
        out_dim: usize,
        bias: bool,
    ) -> candle_core::Result<Self> {
        let weight = vb.get((out_dim, in_dim), "weight")?;
        let bias = if bias {
            Some(vb.get(out_dim, "bias")?)
        } else {
            None
        };
        Ok(Self::from_parts(weight, bias))
    }

    pub(crate) fn from_parts(weight: Tensor, bias: Option<Tensor>) -> Self {
        let (out_dim, in_dim) = weight.dims2().unwrap_or((0, 0));
        let weight_t = (in_dim > out_dim
            && !weight.track_op()
            && weight.device().is_cpu()
            && weight.dtype() == DType::F32)
            .then(|| weight.t().and_then(|t| t.contiguous()).ok())
            .flatten();
        Self {
            weight,
            bias,
            weight_t,
        }
    }

    pub(crate) fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        let dims = xs.dims();
        let (&in_dim, lead) = dims
            .split_last()
            .ok_or_else(|| candle_core::Error::Msg("linear: scalar input".into()))?;
        let rows = lead.iter().product::<usize>();
        let flat = xs.reshape((rows, in_dim))?;
        let ys = match &self.weight_t {
            // A few rows (the last layer's class tokens) read the weight once either way; gemm
            // would spend more packing the copy than it saves.
            Some(wt)
                if rows >= 64 && !xs.track_op() && crate::kernels::native_kernels(xs.device()) =>
            {
                flat.matmul(wt)?
            }
            _ => matmul_wt(&flat, &self.weight)?,
        };
        let ys = match &self.bias {
            Some(b) => ys.broadcast_add(b)?,
            None => ys,
        };
        let mut out_dims = lead.to_vec();
        out_dims.push(self.weight.dim(0)?);
        ys.reshape(out_dims)
    }
}

/// `x [rows, in] @ w^T` for `w [out, in]`, skipping the weight gradient when `w` is frozen.
pub(crate) fn matmul_wt(xs: &Tensor, w: &Tensor) -> candle_core::Result<Tensor> {
    if w.track_op() {
        xs.matmul(&w.t()?)
    } else {
        xs.apply_op2(w, FrozenMatmul)
    }
}

/// `x @ w^T` whose backward returns only the input gradient `grad @ w`. Only for weights that
/// need no gradient (see [`matmul_wt`]); the forward is candle's own matmul on any backend.
struct FrozenMatmul;

impl FrozenMatmul {
    fn fwd<S: candle_core::backend::BackendStorage>(
        x: &S,
        lx: &candle_core::Layout,
        w: &S,
        lw: &candle_core::Layout,
    ) -> candle_core::Result<(S, candle_core::Shape)> {
        let (rows, k) = lx.shape().dims2()?;
        let (out, k2) = lw.shape().dims2()?;
        if k != k2 {
            return Err(candle_core::Error::ShapeMismatchBinaryOp {
                lhs: lx.shape().clone(),
                rhs: lw.shape().clone(),
                op: "frozen-matmul",
            });
        }
        let y = x.matmul(w, (1, rows, out, k), lx, &lw.transpose(0, 1)?)?;
        Ok((y, (rows, out).into()))
    }
}

impl candle_core::CustomOp2 for FrozenMatmul {
    fn name(&self) -> &'static str {
        "frozen-matmul"
    }

    fn cpu_fwd(
        &self,
        x: &candle_core::CpuStorage,
        lx: &candle_core::Layout,
        w: &candle_core::CpuStorage,
        lw: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        Self::fwd(x, lx, w, lw)
    }

    fn cuda_fwd(
        &self,
        x: &candle_core::CudaStorage,
        lx: &candle_core::Layout,
        w: &candle_core::CudaStorage,
        lw: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, candle_core::Shape)> {
        Self::fwd(x, lx, w, lw)
    }

    fn metal_fwd(
        &self,
        x: &candle_core::MetalStorage,
        lx: &candle_core::Layout,
        w: &candle_core::MetalStorage,
        lw: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::MetalStorage, candle_core::Shape)> {
        Self::fwd(x, lx, w, lw)
    }

    fn bwd(
        &self,
        _x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        Ok((Some(grad_res.matmul(w)?), None))
    }
}

/// LayerNorm from basic ops (mean, sub, sqr, sqrt, div, affine), which all have a backward; with
/// frozen f32 weights on the CPU, one fused kernel each way instead ([`FusedLayerNorm`]).
#[derive(Clone)]
pub(crate) struct LayerNorm {
    pub(crate) weight: Tensor,
    pub(crate) bias: Tensor,
    pub(crate) eps: f64,
    pub(crate) fused: Option<FusedLayerNorm>,
}

impl std::fmt::Debug for LayerNorm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LayerNorm")
            .field("weight", &self.weight)
            .field("bias", &self.bias)
            .field("eps", &self.eps)
            .field("fused", &self.fused.is_some())
            .finish()
    }
}

impl LayerNorm {
    pub(crate) fn new(vb: VarBuilder, dim: usize, eps: f64) -> candle_core::Result<Self> {
        let weight = vb.get(dim, "weight")?;
        let bias = vb.get(dim, "bias")?;
        let frozen_f32 =
            |t: &Tensor| !t.track_op() && t.dtype() == DType::F32 && t.device().is_cpu();
        let fused = if frozen_f32(&weight) && frozen_f32(&bias) {
            Some(FusedLayerNorm {
                weight: Arc::new(weight.to_vec1()?),
                bias: Arc::new(bias.to_vec1()?),
                eps: eps as f32,
            })
        } else {
            None
        };
        Ok(Self {
            weight,
            bias,
            eps,
            fused,
        })
    }

    pub(crate) fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        if let Some(op) = &self.fused {
            if xs.dtype() == DType::F32 && crate::kernels::native_kernels(xs.device()) {
                return xs.contiguous()?.apply_op1(op.clone());
            }
        }
        let mean = xs.mean_keepdim(D::Minus1)?;
        let centred = xs.broadcast_sub(&mean)?;
        let var = centred.sqr()?.mean_keepdim(D::Minus1)?;
        let normed = centred.broadcast_div(&(var + self.eps)?.sqrt()?)?;
        normed
            .broadcast_mul(&self.weight)?
            .broadcast_add(&self.bias)
    }
}

/// Softmax over the last dimension. The max is detached: softmax does not depend on it, so its
/// gradient is exactly zero and need not be computed.
fn softmax_last(xs: &Tensor) -> candle_core::Result<Tensor> {
    let max = xs.max_keepdim(D::Minus1)?.detach();
    let e = xs.broadcast_sub(&max)?.exp()?;
    let sum = e.sum_keepdim(D::Minus1)?;
    e.broadcast_div(&sum)
}

/// Multi-head self-attention. q, k and v are computed by one matrix product with the three
/// weights stacked (one GEMM instead of three, forward and backward). Frozen weights are stacked
/// once; trainable ones (`Var`s) at every call, so that optimiser updates are seen and gradients
/// reach each of them.
#[derive(Debug, Clone)]
pub(super) struct Attention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    /// The three stacked, when none of them is trainable.
    pub(super) frozen_qkv: Option<Linear>,
    pub(super) out_proj: Linear,
    pub(super) heads: usize,
    head_dim: usize,
    pub(super) scale: f64,
}

impl Attention {
    pub(super) fn new(vb: VarBuilder, hidden: usize, heads: usize) -> candle_core::Result<Self> {
        let q_proj = Linear::new(vb.pp("q_proj"), hidden, hidden, true)?;
        let k_proj = Linear::new(vb.pp("k_proj"), hidden, hidden, true)?;
        let v_proj = Linear::new(vb.pp("v_proj"), hidden, hidden, true)?;
        let trainable = [&q_proj, &k_proj, &v_proj]
            .iter()
            .any(|l| l.weight.track_op() || l.bias.as_ref().is_some_and(Tensor::track_op));
        let head_dim = hidden / heads;
        let mut attn = Self {
            q_proj,
            k_proj,
            v_proj,
            frozen_qkv: None,
            out_proj: Linear::new(vb.pp("out_proj"), hidden, hidden, true)?,
            heads,
            head_dim,
            scale: (head_dim as f64).powf(-0.5),
        };
        if !trainable {
            attn.frozen_qkv = Some(attn.stacked_qkv()?);
        }
        Ok(attn)
    }

    fn stacked_qkv(&self) -> candle_core::Result<Linear> {
        let (q, k, v) = (&self.q_proj, &self.k_proj, &self.v_proj);
        let bias = match (&q.bias, &k.bias, &v.bias) {
            (Some(qb), Some(kb), Some(vb)) => Some(Tensor::cat(&[qb, kb, vb], 0)?),
            _ => None,
        };
        Ok(Linear::from_parts(
            Tensor::cat(&[&q.weight, &k.weight, &v.weight], 0)?,
            bias,
        ))
    }

    /// `mask`, if any, is added to the scores: [L, L] with 0 or a large negative value.
    pub(super) fn forward(
        &self,
        xs: &Tensor,
        mask: Option<&Tensor>,
    ) -> candle_core::Result<Tensor> {
        self.forward_queries(xs, mask, None)
    }

    /// With `queries = Some(q)`, only the first q positions attend (keys and values are still
    /// every position): [B, q, D]. The pooled image embedding needs only the class token of the
    /// last layer.
    fn forward_queries(
        &self,
        xs: &Tensor,
        mask: Option<&Tensor>,
        queries: Option<usize>,
    ) -> candle_core::Result<Tensor> {
        let (b, n, hidden) = xs.dims3()?;
        // [B, N, 3D] -> [3, B, H, N, hd]
        let qkv = match &self.frozen_qkv {
            Some(l) => l.forward(xs)?,
            None => self.stacked_qkv()?.forward(xs)?,
        };
        if mask.is_none()
            && qkv.dtype() == DType::F32
            && crate::kernels::native_kernels(qkv.device())
        {
            let op = FusedAttention {
                heads: self.heads,
                queries: queries.unwrap_or(n),
                scale: self.scale as f32,
            };
            return self.out_proj.forward(&qkv.contiguous()?.apply_op1(op)?);
        }
        let qkv = qkv
            .reshape((b, n, 3, self.heads, self.head_dim))?
            .permute((2, 0, 3, 1, 4))?
            .contiguous()?;
        let q = qkv.get(0)?;
        let (q, mask, nq) = match queries {
            Some(nq) => (
                q.narrow(2, 0, nq)?.contiguous()?,
                mask.map(|m| m.narrow(0, 0, nq)).transpose()?,
                nq,
            ),
            None => (q, mask.cloned(), n),
        };
        let q = (q * self.scale)?;
        let k = qkv.get(1)?;
        let v = qkv.get(2)?;
        let scores = q.matmul(&k.t()?)?;
        let scores = match mask {
            Some(m) => scores.broadcast_add(&m)?,
            None => scores,
        };
        let attn = softmax_last(&scores)?;
        let out = attn.matmul(&v)?.transpose(1, 2)?.reshape((b, nq, hidden))?;
        self.out_proj.forward(&out)
    }
}

/// Pre-LN transformer block, as CLIP's.
#[derive(Debug, Clone)]
pub(super) struct EncoderLayer {
    pub(super) layer_norm1: LayerNorm,
    pub(super) self_attn: Attention,
    pub(super) layer_norm2: LayerNorm,
    pub(super) fc1: Linear,
    pub(super) fc2: Linear,
    pub(super) act: HiddenAct,
}

/// The geometry shared by both towers' encoders.
pub(super) struct EncoderDims {
    pub(super) hidden: usize,
    pub(super) intermediate: usize,
    pub(super) heads: usize,
    pub(super) layers: usize,
    pub(super) eps: f64,
    pub(super) act: HiddenAct,
}

impl EncoderLayer {
    pub(super) fn new(vb: VarBuilder, d: &EncoderDims) -> candle_core::Result<Self> {
        Ok(Self {
            layer_norm1: LayerNorm::new(vb.pp("layer_norm1"), d.hidden, d.eps)?,
            self_attn: Attention::new(vb.pp("self_attn"), d.hidden, d.heads)?,
            layer_norm2: LayerNorm::new(vb.pp("layer_norm2"), d.hidden, d.eps)?,
            fc1: Linear::new(vb.pp("mlp").pp("fc1"), d.hidden, d.intermediate, true)?,
            fc2: Linear::new(vb.pp("mlp").pp("fc2"), d.intermediate, d.hidden, true)?,
            act: d.act,
        })
    }

    pub(super) fn forward(
        &self,
        xs: &Tensor,
        mask: Option<&Tensor>,
    ) -> candle_core::Result<Tensor> {
        let h = self
            .self_attn
            .forward(&self.layer_norm1.forward(xs)?, mask)?;
        let xs = (xs + h)?;
        let h = self.fc1.forward(&self.layer_norm2.forward(&xs)?)?;
        let h = self.fc2.forward(&self.act.forward(&h)?)?;
        xs + h
    }

    /// The output at the first position only, [B, 1, D] (it attends to every position).
    pub(super) fn forward_first(
        &self,
        xs: &Tensor,
        mask: Option<&Tensor>,
    ) -> candle_core::Result<Tensor> {
        let h = self
            .self_attn
            .forward_queries(&self.layer_norm1.forward(xs)?, mask, Some(1))?;
        let xs = (xs.narrow(1, 0, 1)? + h)?;
        let h = self.fc1.forward(&self.layer_norm2.forward(&xs)?)?;
        let h = self.fc2.forward(&self.act.forward(&h)?)?;
        xs + h
    }
}

#[derive(Debug, Clone)]
pub(super) struct Encoder {
    pub(super) layers: Vec<EncoderLayer>,
}

impl Encoder {
    pub(super) fn new(vb: VarBuilder, d: &EncoderDims) -> candle_core::Result<Self> {
        let vb = vb.pp("layers");
        let layers = (0..d.layers)
            .map(|i| EncoderLayer::new(vb.pp(i), d))
            .collect::<candle_core::Result<_>>()?;
        Ok(Self { layers })
    }

    pub(super) fn forward(
        &self,
        xs: &Tensor,
        mask: Option<&Tensor>,
    ) -> candle_core::Result<Tensor> {
        self.layers
            .iter()
            .try_fold(xs.clone(), |xs, l| l.forward(&xs, mask))
    }

    /// The output at the first position only, [B, 1, D]: the last layer computes its MLP and
    /// output projection for that position alone (~1/12 of the image tower's work saved).
    pub(super) fn forward_first(
        &self,
        xs: &Tensor,
        mask: Option<&Tensor>,
    ) -> candle_core::Result<Tensor> {
        match self.layers.split_last() {
            None => xs.narrow(1, 0, 1),
            Some((last, rest)) => {
                let xs = rest
                    .iter()
                    .try_fold(xs.clone(), |xs, l| l.forward(&xs, mask))?;
                last.forward_first(&xs, mask)
            }
        }
    }
}
