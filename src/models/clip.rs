//! CLIP (Radford et al. 2021, "Learning Transferable Visual Models From Natural Language
//! Supervision"); checkpoint layout of transformers' `CLIPModel` (openai/clip-vit-base-patch32).
//!
//! Unlike candle-transformers' CLIP, the image tower is differentiable with respect to its input
//! pixels, which CLIP guidance needs: LayerNorm, softmax and the activations are written with
//! basic ops that have a backward (candle's fused `LayerNorm` and `softmax_last_dim` have none and
//! silently cut the gradient graph), and the patch embedding is a reshape plus one matrix product.
//! Outputs match transformers 5 (eager attention) to about 1e-6 relative in f32.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context as _;
use candle_core::{DType, Device, Tensor, D};
use candle_nn::VarBuilder;
use serde_json::{Map, Value};

use crate::input_err;
use crate::kernels::clip_fused::{FusedAttention, FusedLayerNorm, FusedQuickGelu};

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

    /// All three have a backward in candle 0.11 (sigmoid is a custom op with `bwd`; `gelu_erf` and
    /// `gelu` are unary ops with gradients).
    fn forward(self, xs: &Tensor) -> candle_core::Result<Tensor> {
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

/// `y = x W^T + b` over the last dimension. Leading dimensions are flattened so that the forward
/// and backward are single matrix products (a broadcast weight would make the backward compute
/// one weight gradient per batch item). A weight that is not trained (loaded from a file, not a
/// `Var`) goes through [`FrozenMatmul`], whose backward skips the weight gradient that candle's
/// matmul always computes: that is about half of the image tower's backward work.
#[derive(Debug, Clone)]
struct Linear {
    weight: Tensor,
    bias: Option<Tensor>,
    /// A frozen CPU weight with more inputs than outputs (CLIP's fc2) also as a contiguous
    /// [in, out] copy, used when no gradient is tracked: gemm then packs it and runs ~1.3x
    /// faster than on the strided `weight^T` view (one row of the view spans `in` floats).
    weight_t: Option<Tensor>,
}

impl Linear {
    fn new(vb: VarBuilder, in_dim: usize, out_dim: usize, bias: bool) -> candle_core::Result<Self> {
        let weight = vb.get((out_dim, in_dim), "weight")?;
        let bias = if bias {
            Some(vb.get(out_dim, "bias")?)
        } else {
            None
        };
        Ok(Self::from_parts(weight, bias))
    }

    fn from_parts(weight: Tensor, bias: Option<Tensor>) -> Self {
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

    fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
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
fn matmul_wt(xs: &Tensor, w: &Tensor) -> candle_core::Result<Tensor> {
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
struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
    fused: Option<FusedLayerNorm>,
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
    fn new(vb: VarBuilder, dim: usize, eps: f64) -> candle_core::Result<Self> {
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

    fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
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
struct Attention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    /// The three stacked, when none of them is trainable.
    frozen_qkv: Option<Linear>,
    out_proj: Linear,
    heads: usize,
    head_dim: usize,
    scale: f64,
}

impl Attention {
    fn new(vb: VarBuilder, hidden: usize, heads: usize) -> candle_core::Result<Self> {
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
    fn forward(&self, xs: &Tensor, mask: Option<&Tensor>) -> candle_core::Result<Tensor> {
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
struct EncoderLayer {
    layer_norm1: LayerNorm,
    self_attn: Attention,
    layer_norm2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
    act: HiddenAct,
}

/// The geometry shared by both towers' encoders.
struct EncoderDims {
    hidden: usize,
    intermediate: usize,
    heads: usize,
    layers: usize,
    eps: f64,
    act: HiddenAct,
}

impl EncoderLayer {
    fn new(vb: VarBuilder, d: &EncoderDims) -> candle_core::Result<Self> {
        Ok(Self {
            layer_norm1: LayerNorm::new(vb.pp("layer_norm1"), d.hidden, d.eps)?,
            self_attn: Attention::new(vb.pp("self_attn"), d.hidden, d.heads)?,
            layer_norm2: LayerNorm::new(vb.pp("layer_norm2"), d.hidden, d.eps)?,
            fc1: Linear::new(vb.pp("mlp").pp("fc1"), d.hidden, d.intermediate, true)?,
            fc2: Linear::new(vb.pp("mlp").pp("fc2"), d.intermediate, d.hidden, true)?,
            act: d.act,
        })
    }

    fn forward(&self, xs: &Tensor, mask: Option<&Tensor>) -> candle_core::Result<Tensor> {
        let h = self
            .self_attn
            .forward(&self.layer_norm1.forward(xs)?, mask)?;
        let xs = (xs + h)?;
        let h = self.fc1.forward(&self.layer_norm2.forward(&xs)?)?;
        let h = self.fc2.forward(&self.act.forward(&h)?)?;
        xs + h
    }

    /// The output at the first position only, [B, 1, D] (it attends to every position).
    fn forward_first(&self, xs: &Tensor, mask: Option<&Tensor>) -> candle_core::Result<Tensor> {
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
struct Encoder {
    layers: Vec<EncoderLayer>,
}

impl Encoder {
    fn new(vb: VarBuilder, d: &EncoderDims) -> candle_core::Result<Self> {
        let vb = vb.pp("layers");
        let layers = (0..d.layers)
            .map(|i| EncoderLayer::new(vb.pp(i), d))
            .collect::<candle_core::Result<_>>()?;
        Ok(Self { layers })
    }

    fn forward(&self, xs: &Tensor, mask: Option<&Tensor>) -> candle_core::Result<Tensor> {
        self.layers
            .iter()
            .try_fold(xs.clone(), |xs, l| l.forward(&xs, mask))
    }

    /// The output at the first position only, [B, 1, D]: the last layer computes its MLP and
    /// output projection for that position alone (~1/12 of the image tower's work saved).
    fn forward_first(&self, xs: &Tensor, mask: Option<&Tensor>) -> candle_core::Result<Tensor> {
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

/// Output of a tower before its projection, as transformers' `BaseModelOutputWithPooling`.
#[derive(Debug, Clone)]
pub struct TowerOutput {
    /// Vision: the encoder output [B, 1 + patches, D] BEFORE `post_layernorm`. Text: the output
    /// [B, L, D] AFTER `final_layer_norm` (transformers' conventions for each tower).
    pub last_hidden_state: Tensor,
    /// [B, D]: vision `post_layernorm(last_hidden_state[:, 0])`; text the pooled position.
    pub pooler_output: Tensor,
}

#[derive(Debug, Clone)]
struct VisionTower {
    /// Conv weight [D, C, p, p] flattened to [D, C*p*p].
    patch_weight: Tensor,
    class_embedding: Tensor,
    position_embedding: Tensor,
    pre_layrnorm: LayerNorm,
    encoder: Encoder,
    post_layernorm: LayerNorm,
    cfg: ClipVisionConfig,
}

impl VisionTower {
    fn new(vb: VarBuilder, c: &ClipVisionConfig) -> candle_core::Result<Self> {
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

    fn forward(&self, pixel_values: &Tensor) -> candle_core::Result<TowerOutput> {
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
    fn pooled(&self, pixel_values: &Tensor) -> candle_core::Result<Tensor> {
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
    fn embed_raw(&self, pixel_values: &Tensor) -> candle_core::Result<Tensor> {
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

#[derive(Debug, Clone)]
struct TextTower {
    token_embedding: Tensor,
    position_embedding: Tensor,
    encoder: Encoder,
    final_layer_norm: LayerNorm,
    cfg: ClipTextConfig,
}

impl TextTower {
    fn new(vb: VarBuilder, c: &ClipTextConfig) -> candle_core::Result<Self> {
        let d = c.hidden_size;
        let emb = vb.pp("embeddings");
        let dims = EncoderDims {
            hidden: d,
            intermediate: c.intermediate_size,
            heads: c.num_attention_heads,
            layers: c.num_hidden_layers,
            eps: c.layer_norm_eps,
            act: c.hidden_act,
        };
        Ok(Self {
            token_embedding: emb.get((c.vocab_size, d), "token_embedding.weight")?,
            position_embedding: emb
                .get((c.max_position_embeddings, d), "position_embedding.weight")?,
            encoder: Encoder::new(vb.pp("encoder"), &dims)?,
            final_layer_norm: LayerNorm::new(vb.pp("final_layer_norm"), d, c.layer_norm_eps)?,
            cfg: c.clone(),
        })
    }

    /// Pooled position per row, as transformers: the first `eos_token_id`, or argmax(ids) (first
    /// maximum) for legacy configs with `eos_token_id == 2`. A row without the end token is an
    /// error (transformers would silently pool position 0).
    fn pool_positions(&self, ids: &[Vec<u32>]) -> candle_core::Result<Vec<usize>> {
        let eos = self.cfg.eos_token_id;
        ids.iter()
            .enumerate()
            .map(|(row, ids)| {
                let pos = if eos == 2 {
                    ids.iter()
                        .enumerate()
                        .fold(None, |best: Option<(usize, u32)>, (i, &t)| match best {
                            Some((_, m)) if m >= t => best,
                            _ => Some((i, t)),
                        })
                        .map(|(i, _)| i)
                } else {
                    ids.iter().position(|&t| t == eos)
                };
                pos.ok_or_else(|| {
                    candle_core::Error::Msg(format!(
                        "CLIP text tower: row {row} of input_ids has no end token \
                         (eos_token_id {eos})"
                    ))
                })
            })
            .collect()
    }

    fn forward(&self, input_ids: &Tensor) -> candle_core::Result<TowerOutput> {
        let (b, l) = input_ids.dims2()?;
        let c = &self.cfg;
        if l == 0 || l > c.max_position_embeddings {
            return Err(candle_core::Error::Msg(format!(
                "CLIP text tower: sequence length {l} outside 1..={}",
                c.max_position_embeddings
            )));
        }
        let ids = input_ids.to_dtype(DType::U32)?;
        let host = ids.to_vec2::<u32>()?;
        if let Some(&bad) = host.iter().flatten().find(|&&t| t as usize >= c.vocab_size) {
            return Err(candle_core::Error::Msg(format!(
                "CLIP text tower: token id {bad} >= vocab_size {}",
                c.vocab_size
            )));
        }
        let d = c.hidden_size;
        let xs = self
            .token_embedding
            .index_select(&ids.flatten_all()?, 0)?
            .reshape((b, l, d))?
            .broadcast_add(&self.position_embedding.narrow(0, 0, l)?)?;
        let mask = causal_mask(l, xs.dtype(), xs.device())?;
        let last = self.encoder.forward(&xs, Some(&mask))?;
        let last = self.final_layer_norm.forward(&last)?;
        let rows: Vec<u32> = self
            .pool_positions(&host)?
            .into_iter()
            .enumerate()
            .map(|(row, pos)| (row * l + pos) as u32)
            .collect();
        let rows = Tensor::new(rows.as_slice(), xs.device())?;
        let pooled = last.reshape((b * l, d))?.index_select(&rows, 0)?;
        Ok(TowerOutput {
            last_hidden_state: last,
            pooler_output: pooled,
        })
    }
}

/// [L, L] additive causal mask: 0 on and below the diagonal, the dtype's lowest value above (as
/// transformers). Padding is not masked: causality alone keeps real positions unaffected by it.
fn causal_mask(l: usize, dtype: DType, device: &Device) -> candle_core::Result<Tensor> {
    let lowest = match dtype {
        DType::F64 => f64::MIN,
        _ => f32::MIN as f64,
    };
    let m: Vec<f64> = (0..l)
        .flat_map(|i| (0..l).map(move |j| if j > i { lowest } else { 0.0 }))
        .collect();
    Tensor::from_vec(m, (l, l), device)?.to_dtype(dtype)
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

/// CLIP's image normalisation (CLIPImageProcessor's `image_mean` / `image_std`).
pub const CLIP_MEAN: [f32; 3] = [0.48145466, 0.4578275, 0.40821073];
// The digits as published (CLIPImageProcessor's `image_std`), though f32 cannot hold them all.
#[allow(clippy::excessive_precision)]
pub const CLIP_STD: [f32; 3] = [0.26862954, 0.26130258, 0.27577711];

/// CLIPImageProcessor's preprocessing. An image already at size x size is used as is (/255,
/// normalise); otherwise the shortest edge is resized to `size` (the long edge to
/// `int(size * long / short)`) with bicubic exactly as PIL does it on uint8 (CLIPImageProcessor's
/// default), then centre cropped to size x size (offsets `(extent - size) / 2` rounded down), /255,
/// normalised. Alpha is dropped without compositing, as PIL's `convert("RGB")`. Returns [3, size,
/// size] f32 on the device; equal to transformers' output up to f32 rounding.
pub fn preprocess_image(
    img: &image::DynamicImage,
    size: usize,
    device: &Device,
) -> anyhow::Result<Tensor> {
    anyhow::ensure!(size > 0, "preprocess_image: size must be at least 1");
    let rgb = img.to_rgb8();
    let (w, h) = (rgb.width() as usize, rgb.height() as usize);
    anyhow::ensure!(
        w > 0 && h > 0,
        "preprocess_image: the image is empty ({w}x{h})"
    );
    let (short, long) = (w.min(h), w.max(h));
    // transformers' get_resize_output_image_size: int(size * long / short), in f64.
    let new_long = (size as f64 * long as f64 / short as f64) as usize;
    let (new_w, new_h) = if w <= h {
        (size, new_long)
    } else {
        (new_long, size)
    };
    let resized = crate::imageops::resize::pil_resize_bicubic(&rgb, new_w, new_h);
    let resized = resized.as_raw();
    let (top, left) = ((new_h - size) / 2, (new_w - size) / 2);
    let mut out = vec![0f32; 3 * size * size];
    for c in 0..3 {
        for y in 0..size {
            for x in 0..size {
                let v = resized[((top + y) * new_w + left + x) * 3 + c];
                // transformers: rescale in f64, cast to f32, then (x - mean) / std in f32.
                let v01 = (v as f64 * (1.0 / 255.0)) as f32;
                out[(c * size + y) * size + x] = (v01 - CLIP_MEAN[c]) / CLIP_STD[c];
            }
        }
    }
    Ok(Tensor::from_vec(out, (3, size, size), device)?)
}

/// CLIP's tokenizer from tokenizer.json (byte-level BPE with `</w>` word ends and
/// `<|startoftext|>` ... `<|endoftext|>` around each text). Any tokenizer.json model works if its
/// vocabulary has those two tokens, e.g. the word-level one `train-clip` writes
/// ([`crate::clip_train::tokenizer`]).
pub struct ClipTokenizer {
    tokenizer: tokenizers::Tokenizer,
    sot: u32,
    eot: u32,
    context_length: usize,
}

impl ClipTokenizer {
    /// Checks that `<|endoftext|>` is the model's end token (unless the config is a legacy one
    /// with `eos_token_id` 2, pooled by argmax), since pooling depends on it.
    pub fn from_file(path: &Path, cfg: &ClipTextConfig) -> anyhow::Result<Self> {
        let mut tokenizer = tokenizers::Tokenizer::from_file(path)
            .map_err(|e| input_err!("cannot load tokenizer {}: {e}", path.display()))?;
        // Truncation and padding are done here (keeping the end token), not by tokenizer.json.
        tokenizer
            .with_truncation(None)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        tokenizer.with_padding(None);
        let id = |tok: &str| {
            tokenizer
                .token_to_id(tok)
                .ok_or_else(|| input_err!("tokenizer {} has no `{tok}` token", path.display()))
        };
        let (sot, eot) = (id("<|startoftext|>")?, id("<|endoftext|>")?);
        if cfg.eos_token_id != 2 && cfg.eos_token_id != eot {
            return Err(input_err!(
                "tokenizer {} has <|endoftext|> = {eot} but config.json's \
                 text_config.eos_token_id is {}: the text embedding would pool the wrong position",
                path.display(),
                cfg.eos_token_id
            ));
        }
        Ok(Self {
            tokenizer,
            sot,
            eot,
            context_length: cfg.max_position_embeddings,
        })
    }

    /// Token ids of one text: `<|startoftext|>` ... `<|endoftext|>`, truncated to the context
    /// length keeping the end token (as CLIPTokenizer(truncation=True, max_length=77)).
    pub fn encode(&self, text: &str) -> anyhow::Result<Vec<u32>> {
        let enc = self
            .tokenizer
            .encode(text, true)
            .map_err(|e| anyhow::anyhow!("cannot tokenize {text:?}: {e}"))?;
        let mut ids = enc.get_ids().to_vec();
        // tokenizer.json normally adds both (RobertaProcessing); add them if it does not.
        if ids.first() != Some(&self.sot) {
            ids.insert(0, self.sot);
        }
        if ids.len() == 1 || ids.last() != Some(&self.eot) {
            ids.push(self.eot);
        }
        if ids.len() > self.context_length {
            ids.truncate(self.context_length.saturating_sub(1).max(1));
            ids.push(self.eot);
        }
        Ok(ids)
    }

    /// Tokenises with tokenizer.json, truncates to the context length keeping the end token, and
    /// pads with `<|endoftext|>` (as CLIPTokenizer(padding=True)) to the LONGEST text of the batch
    /// (at most the context length), which is cheaper than always 77. Returns [B, L] u32. Padding
    /// never changes the embedding: the causal mask hides it from real positions and pooling picks
    /// the first end token (or argmax, which the first `<|endoftext|>` also is).
    pub fn encode_batch(&self, texts: &[&str], device: &Device) -> anyhow::Result<Tensor> {
        anyhow::ensure!(!texts.is_empty(), "encode_batch: no texts");
        let rows = texts
            .iter()
            .map(|t| self.encode(t))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let len = rows.iter().map(Vec::len).max().unwrap_or(0);
        let mut flat = Vec::with_capacity(rows.len() * len);
        for r in &rows {
            flat.extend_from_slice(r);
            flat.extend(std::iter::repeat_n(self.eot, len - r.len()));
        }
        Ok(Tensor::from_vec(flat, (rows.len(), len), device)?)
    }

    pub fn end_token(&self) -> u32 {
        self.eot
    }

    pub fn start_token(&self) -> u32 {
        self.sot
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

// ---------------------------------------------------------------------------------------------
// The image tower with a hand-written backward (CLIP guidance).

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
