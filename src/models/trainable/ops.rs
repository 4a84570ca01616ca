//! Differentiable building blocks of the trainable encoders, on activations laid out **CBHW**
//! ([C, B, H, W]: each channel's maps of the whole batch side by side). In that layout a
//! convolution is one matrix product for the whole batch, [O, C k k] x [C k k, B Ho Wo], whose
//! result is already CBHW, and every per-channel quantity (BatchNorm statistics, bias gradients)
//! is a sum over one contiguous block; no transpose and no reduction over the batch is needed
//! (with NCHW, candle spends most of a step transposing and reducing). Each op has a
//! hand-written backward and is checked against a composition of candle ops (values and
//! gradients) by the unit tests below:
//!
//! - [`conv2d`]: convolution by im2col (custom op, backward col2im) and one candle matmul.
//! - [`bias_relu`], [`relu`]: one pass each way (candle's `relu` backward takes four).
//! - [`batch_norm`]: BatchNorm with given or batch statistics, optionally fused with a ReLU.
//! - [`depthwise3x3`]: depthwise 3 x 3 convolution, stride 1, padding 1 (Xception's separable
//!   convolutions). Three ways are provided, [`Depthwise`]; the custom kernel is the default
//!   (`examples/train_encoder_step.rs` times them: candle's grouped `conv2d` and nine shifted
//!   multiply-adds in candle ops are several times slower).
//! - [`max_pool`]: k x k max pooling with stride and padding (padding never wins), PyTorch's
//!   semantics; candle's `max_pool2d` has a backward only when the kernel equals the stride, and
//!   Xception pools 3 x 3 with stride 2 and padding 1. The gradient goes to the first maximum of
//!   each window in scan order, as PyTorch does.
//!
//! All are f32, CPU only; work is split over candle's thread count.

use std::sync::Arc;

use candle_core::{
    CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Tensor,
};

use crate::kernels::{f32_slice, par_rows};

/// Runs `f(index, block)` over `out` split into consecutive blocks of `len` elements, in
/// parallel (blocks are whole: a channel, a plane, ...).
fn blocks(out: &mut [f32], len: usize, f: impl Fn(usize, &mut [f32]) + Sync) {
    if len == 0 {
        return;
    }
    par_rows(out, len, |first, band| {
        for (i, o) in band.chunks_exact_mut(len).enumerate() {
            f(first + i, o);
        }
    });
}

/// NCHW [B, C, H, W] -> CBHW [C, B, H, W] (or back: the permutation is its own inverse).
pub fn swap_batch_channels(x: &Tensor) -> Result<Tensor> {
    x.permute((1, 0, 2, 3))?.contiguous()
}

// ---------------------------------------------------------------------------------------------
// Convolution

/// Convolution of x [C, B, H, W] with w [O, C, k, k] (timm's layout, no bias), `stride`, zero
/// `pad` -> [O, B, Ho, Wo]: Caffe's im2col ([`Im2col`], whose backward is col2im) and one
/// candle matmul [O, C k k] x [C k k, B Ho Wo]. (candle's own `conv2d` computes its input
/// gradient with a direct transposed convolution that is several times slower on the CPU.)
pub fn conv2d(x: &Tensor, w: &Tensor, stride: usize, pad: usize) -> Result<Tensor> {
    let (c, b, h, wd) = x.dims4()?;
    let (o, c2, k, k2) = w.dims4()?;
    if c2 != c || k != k2 {
        candle_core::bail!("conv2d: input {:?}, weight {:?}", x.dims(), w.dims());
    }
    let op = Im2col { k, stride, pad };
    let (ho, wo) = (op.out(h)?, op.out(wd)?);
    let cols = if k == 1 && stride == 1 && pad == 0 {
        x.reshape((c, b * h * wd))?
    } else {
        x.contiguous()?.apply_op1(op)?
    };
    w.reshape((o, c * k * k))?
        .matmul(&cols)?
        .reshape((o, b, ho, wo))
}

/// x [C, B, H, W] -> columns [C k k, B Ho Wo]: row (c, ky, kx), column (b, oy, ox) holds the
/// input pixel (oy stride + ky - pad, ox stride + kx - pad) of image b, zero outside.
#[derive(Debug, Clone, Copy)]
struct Im2col {
    k: usize,
    stride: usize,
    pad: usize,
}

impl Im2col {
    fn out(&self, n: usize) -> Result<usize> {
        if n + 2 * self.pad < self.k || self.stride == 0 {
            candle_core::bail!("conv2d: kernel {} larger than the input {n}", self.k);
        }
        Ok((n + 2 * self.pad - self.k) / self.stride + 1)
    }

    /// The input index read by output position `o` at kernel offset `kk`, if inside.
    fn source(&self, o: usize, kk: usize, n: usize) -> Option<usize> {
        let i = (o * self.stride + kk) as isize - self.pad as isize;
        (i >= 0 && (i as usize) < n).then_some(i as usize)
    }

    /// For stride 1: the output range lo..hi of a row whose inputs lie inside, and the input
    /// index of lo.
    fn span(&self, kx: usize, w: usize, wo: usize) -> Option<(usize, usize, usize)> {
        let lo = self.pad.saturating_sub(kx);
        let hi = (w + self.pad).saturating_sub(kx).min(wo);
        (lo < hi).then(|| (lo, hi, lo + kx - self.pad))
    }
}

impl CustomOp1 for Im2col {
    fn name(&self) -> &'static str {
        "im2col-cbhw"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(s, l, self.name())?;
        let (c, b, h, w) = l.shape().dims4()?;
        let (ho, wo, k) = (self.out(h)?, self.out(w)?, self.k);
        let n = b * ho * wo;
        let mut out = vec![0f32; c * k * k * n];
        // One channel fills k * k whole rows.
        blocks(&mut out, k * k * n, |ch, rows| {
            for bi in 0..b {
                let src = &x[(ch * b + bi) * h * w..][..h * w];
                for ky in 0..k {
                    for kx in 0..k {
                        let dst = &mut rows[(ky * k + kx) * n + bi * ho * wo..][..ho * wo];
                        for oy in 0..ho {
                            let Some(iy) = self.source(oy, ky, h) else {
                                continue;
                            };
                            let orow = &mut dst[oy * wo..(oy + 1) * wo];
                            let irow = &src[iy * w..(iy + 1) * w];
                            if self.stride == 1 {
                                if let Some((lo, hi, i0)) = self.span(kx, w, wo) {
                                    orow[lo..hi].copy_from_slice(&irow[i0..i0 + hi - lo]);
                                }
                            } else {
                                for (ox, v) in orow.iter_mut().enumerate() {
                                    if let Some(ix) = self.source(ox, kx, w) {
                                        *v = irow[ix];
                                    }
                                }
                            }
                        }
                    }
                }
            }
        });
        Ok((CpuStorage::F32(out), Shape::from((c * k * k, n))))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let (_, b, h, w) = arg.dims4()?;
        let g = grad
            .contiguous()?
            .apply_op1_no_bwd(&Col2im { op: *self, b, h, w })?;
        Ok(Some(g))
    }
}

/// The adjoint of [`Im2col`]: columns [C k k, B Ho Wo] -> [C, B, H, W], each column entry
/// summed into the input pixel it was read from.
struct Col2im {
    op: Im2col,
    b: usize,
    h: usize,
    w: usize,
}

impl CustomOp1 for Col2im {
    fn name(&self) -> &'static str {
        "col2im-cbhw"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = f32_slice(s, l, self.name())?;
        let (ck, n) = l.shape().dims2()?;
        let (op, b, h, w) = (self.op, self.b, self.h, self.w);
        let (ho, wo, k) = (op.out(h)?, op.out(w)?, op.k);
        if ck % (k * k) != 0 || n != b * ho * wo {
            candle_core::bail!("col2im: columns {:?} for {b} maps of {h} x {w}", l.dims());
        }
        let c = ck / (k * k);
        let mut out = vec![0f32; c * b * h * w];
        blocks(&mut out, b * h * w, |ch, dst| {
            let rows = &g[ch * k * k * n..][..k * k * n];
            for bi in 0..b {
                let plane = &mut dst[bi * h * w..][..h * w];
                for ky in 0..k {
                    for kx in 0..k {
                        let src = &rows[(ky * k + kx) * n + bi * ho * wo..][..ho * wo];
                        for oy in 0..ho {
                            let Some(iy) = op.source(oy, ky, h) else {
                                continue;
                            };
                            let grow = &src[oy * wo..(oy + 1) * wo];
                            let drow = &mut plane[iy * w..(iy + 1) * w];
                            if op.stride == 1 {
                                if let Some((lo, hi, i0)) = op.span(kx, w, wo) {
                                    for (d, &v) in
                                        drow[i0..i0 + hi - lo].iter_mut().zip(&grow[lo..hi])
                                    {
                                        *d += v;
                                    }
                                }
                            } else {
                                for (ox, &v) in grow.iter().enumerate() {
                                    if let Some(ix) = op.source(ox, kx, w) {
                                        drow[ix] += v;
                                    }
                                }
                            }
                        }
                    }
                }
            }
        });
        Ok((CpuStorage::F32(out), Shape::from((c, b, h, w))))
    }
}

// ---------------------------------------------------------------------------------------------
// Activations

/// ReLU in one pass each way (candle's backward of `relu` takes four).
pub fn relu(x: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op1(Relu)
}

struct Relu;

impl CustomOp1 for Relu {
    fn name(&self) -> &'static str {
        "relu"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(s, l, self.name())?;
        let mut out = vec![0f32; x.len()];
        let row = (*l.dims().last().unwrap_or(&1)).max(1);
        par_rows(&mut out, row, |first, band| {
            for (o, &v) in band.iter_mut().zip(&x[first * row..]) {
                *o = v.max(0.0);
            }
        });
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }

    fn bwd(&self, _arg: &Tensor, res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(res.apply_op2_no_bwd(&grad.contiguous()?, &ReluGrad)?))
    }
}

/// (y = relu(..), dy) -> dy where y > 0, else 0.
struct ReluGrad;

impl CustomOp2 for ReluGrad {
    fn name(&self) -> &'static str {
        "relu-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let y = f32_slice(s1, l1, self.name())?;
        let g = f32_slice(s2, l2, self.name())?;
        if l1.dims() != l2.dims() {
            candle_core::bail!("relu grad: shapes {:?} {:?}", l1.dims(), l2.dims());
        }
        let mut out = vec![0f32; y.len()];
        let row = (*l1.dims().last().unwrap_or(&1)).max(1);
        par_rows(&mut out, row, |first, band| {
            let r = first * row..first * row + band.len();
            for ((o, &y), &g) in band.iter_mut().zip(&y[r.clone()]).zip(&g[r]) {
                *o = if y > 0.0 { g } else { 0.0 };
            }
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

/// relu(x + b) for x [C, B, H, W] and a per-channel bias b [C], one pass each way (the
/// backward takes its mask from the output).
pub fn bias_relu(x: &Tensor, b: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op2(&b.contiguous()?, BiasRelu)
}

struct BiasRelu;

impl CustomOp2 for BiasRelu {
    fn name(&self) -> &'static str {
        "bias-relu-cbhw"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(s1, l1, self.name())?;
        let bias = f32_slice(s2, l2, self.name())?;
        let c = l1.dims()[0];
        if bias.len() != c {
            candle_core::bail!("bias relu: {} biases for {c} channels", bias.len());
        }
        let len = x.len() / c.max(1);
        let mut out = vec![0f32; x.len()];
        blocks(&mut out, len, |ch, o| {
            let b = bias[ch];
            for (o, &v) in o.iter_mut().zip(&x[ch * len..(ch + 1) * len]) {
                *o = (v + b).max(0.0);
            }
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        _x: &Tensor,
        _b: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let c = res.dim(0)?;
        let gx = res.apply_op2_no_bwd(&grad.contiguous()?, &ReluGrad)?;
        let gb = gx.reshape((c, ()))?.sum(1)?;
        Ok((Some(gx), Some(gb)))
    }
}

// ---------------------------------------------------------------------------------------------
// BatchNorm

/// Per-channel (mean, biased variance).
pub type ChannelStats = (Vec<f64>, Vec<f64>);

/// Per-channel (mean, biased variance) of x [C, B, H, W] over (B, H, W), summed in f64.
fn channel_stats(x: &Tensor) -> Result<ChannelStats> {
    let c = x.dim(0)?;
    let n = (x.elem_count() / c.max(1)).max(1) as f64;
    let v: Vec<f64> = x
        .contiguous()?
        .apply_op1_no_bwd(&ChannelMoments)?
        .to_dtype(DType::F64)?
        .flatten_all()?
        .to_vec1()?;
    let mean: Vec<f64> = (0..c).map(|k| v[2 * k] / n).collect();
    let var = (0..c)
        .map(|k| (v[2 * k + 1] / n - mean[k] * mean[k]).max(0.0))
        .collect();
    Ok((mean, var))
}

/// [C, ...] -> [C, 2]: each channel's sum and sum of squares (accumulated in f64).
struct ChannelMoments;

impl CustomOp1 for ChannelMoments {
    fn name(&self) -> &'static str {
        "channel-moments"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(s, l, self.name())?;
        let c = l.dims()[0];
        let len = x.len() / c.max(1);
        let mut out = vec![0f32; c * 2];
        blocks(&mut out, 2, |ch, o| {
            let (mut s, mut q) = (0f64, 0f64);
            for &v in &x[ch * len..(ch + 1) * len] {
                s += v as f64;
                q += (v as f64) * (v as f64);
            }
            o[0] = s as f32;
            o[1] = q as f32;
        });
        Ok((CpuStorage::F32(out), Shape::from((c, 2))))
    }
}

/// BatchNorm of x [C, B, H, W]: `(x - mean) * inv * gamma + beta`, then ReLU when `relu`.
/// With `stats` = None the statistics are the batch's own (training mode; returned as (mean,
/// biased variance)) and the backward accounts for their dependence on x:
/// dx = gamma inv (dy - mean(dy) - x_hat mean(dy x_hat)); with given (mean, variance) they are
/// constants (eval mode). dgamma = sum(dy x_hat), dbeta = sum(dy).
pub fn batch_norm(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    stats: Option<(&[f64], &[f64])>,
    eps: f64,
    relu: bool,
) -> Result<(Tensor, Option<ChannelStats>)> {
    let x = x.contiguous()?;
    let (batch, (mean, var)) = match stats {
        Some((m, v)) => (false, (m.to_vec(), v.to_vec())),
        None => (true, channel_stats(&x)?),
    };
    let op = BnOp {
        mean: mean.iter().map(|&m| m as f32).collect(),
        inv: var
            .iter()
            .map(|&v| (1.0 / (v + eps).sqrt()) as f32)
            .collect(),
        batch,
        relu,
    };
    let y = x.apply_op3(gamma, beta, op)?;
    Ok((y, batch.then_some((mean, var))))
}

struct BnOp {
    mean: Arc<[f32]>,
    inv: Arc<[f32]>,
    /// Whether the statistics are the batch's (training mode).
    batch: bool,
    /// Fused ReLU on the output (its mask is taken from the output in the backward).
    relu: bool,
}

impl CustomOp3 for BnOp {
    fn name(&self) -> &'static str {
        "batch-norm-cbhw"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(s1, l1, self.name())?;
        let gamma = f32_slice(s2, l2, self.name())?;
        let beta = f32_slice(s3, l3, self.name())?;
        let c = l1.dims()[0];
        if self.mean.len() != c || gamma.len() != c || beta.len() != c {
            candle_core::bail!("batch norm: parameters of the wrong size for {c} channels");
        }
        let len = x.len() / c.max(1);
        let mut out = vec![0f32; x.len()];
        blocks(&mut out, len, |ch, o| {
            let scale = self.inv[ch] * gamma[ch];
            let shift = beta[ch] - self.mean[ch] * scale;
            let src = &x[ch * len..(ch + 1) * len];
            if self.relu {
                for (o, &v) in o.iter_mut().zip(src) {
                    *o = (v * scale + shift).max(0.0);
                }
            } else {
                for (o, &v) in o.iter_mut().zip(src) {
                    *o = v * scale + shift;
                }
            }
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        _beta: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let grad = if self.relu {
            res.apply_op2_no_bwd(&grad.contiguous()?, &ReluGrad)?
        } else {
            grad.contiguous()?
        };
        let c = x.dim(0)?;
        let n = (x.elem_count() / c.max(1)).max(1) as f64;
        let sums: Vec<f64> = x
            .apply_op2_no_bwd(
                &grad,
                &BnGradSums {
                    mean: self.mean.clone(),
                    inv: self.inv.clone(),
                },
            )?
            .to_dtype(DType::F64)?
            .flatten_all()?
            .to_vec1()?;
        let (sdy, sdyx): (Vec<f64>, Vec<f64>) =
            (0..c).map(|k| (sums[2 * k], sums[2 * k + 1])).unzip();
        let dev = x.device();
        let to_t = |v: &[f64]| Tensor::from_vec(v.iter().map(|&s| s as f32).collect(), c, dev);
        let g: Vec<f32> = gamma.flatten_all()?.to_vec1()?;
        let per_channel = |f: &dyn Fn(usize) -> f64| (0..c).map(|k| f(k) as f32).collect();
        let dx = x.apply_op2_no_bwd(
            &grad,
            &BnGradInput {
                mean: self.mean.clone(),
                inv: self.inv.clone(),
                scale: per_channel(&|k| (g[k] * self.inv[k]) as f64),
                mean_dy: per_channel(&|k| if self.batch { sdy[k] / n } else { 0.0 }),
                mean_dyx: per_channel(&|k| if self.batch { sdyx[k] / n } else { 0.0 }),
            },
        )?;
        Ok((Some(dx), Some(to_t(&sdyx)?), Some(to_t(&sdy)?)))
    }
}

/// (x, dy) -> [C, 2]: per channel, sum(dy) and sum(dy x_hat).
struct BnGradSums {
    mean: Arc<[f32]>,
    inv: Arc<[f32]>,
}

impl CustomOp2 for BnGradSums {
    fn name(&self) -> &'static str {
        "batch-norm-grad-sums"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(s1, l1, self.name())?;
        let dy = f32_slice(s2, l2, self.name())?;
        let c = l1.dims()[0];
        let len = x.len() / c.max(1);
        let mut out = vec![0f32; c * 2];
        blocks(&mut out, 2, |ch, o| {
            let (m, inv) = (self.mean[ch], self.inv[ch]);
            let (mut s, mut q) = (0f64, 0f64);
            let r = ch * len..(ch + 1) * len;
            for (&x, &g) in x[r.clone()].iter().zip(&dy[r]) {
                s += g as f64;
                q += (g * (x - m) * inv) as f64;
            }
            o[0] = s as f32;
            o[1] = q as f32;
        });
        Ok((CpuStorage::F32(out), Shape::from((c, 2))))
    }
}

/// (x, dy) -> dx = scale (dy - mean_dy - x_hat mean_dyx), per channel.
struct BnGradInput {
    mean: Arc<[f32]>,
    inv: Arc<[f32]>,
    scale: Vec<f32>,
    mean_dy: Vec<f32>,
    mean_dyx: Vec<f32>,
}

impl CustomOp2 for BnGradInput {
    fn name(&self) -> &'static str {
        "batch-norm-grad-input"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(s1, l1, self.name())?;
        let dy = f32_slice(s2, l2, self.name())?;
        let c = l1.dims()[0];
        let len = x.len() / c.max(1);
        let mut out = vec![0f32; x.len()];
        blocks(&mut out, len, |ch, o| {
            let (m, inv, sc, mdy, mdyx) = (
                self.mean[ch],
                self.inv[ch],
                self.scale[ch],
                self.mean_dy[ch],
                self.mean_dyx[ch],
            );
            let r = ch * len..(ch + 1) * len;
            for ((o, &x), &g) in o.iter_mut().zip(&x[r.clone()]).zip(&dy[r]) {
                *o = sc * (g - mdy - (x - m) * inv * mdyx);
            }
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

// ---------------------------------------------------------------------------------------------
// Depthwise convolution

/// How [`depthwise3x3`] is computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Depthwise {
    /// candle's `conv2d` with `groups = C` (one convolution per channel, then a concatenation),
    /// on the input transposed to NCHW and back.
    Grouped,
    /// Nine shifted multiply-adds of the zero-padded input, in candle ops.
    Shifted,
    /// A CPU kernel with a hand-written backward ([`DepthwiseOp`]).
    Kernel,
}

/// Depthwise 3 x 3 convolution, stride 1, padding 1, no bias: x [C, B, H, W], w [C, 1, 3, 3]
/// (timm's layout) -> [C, B, H, W].
pub fn depthwise3x3(x: &Tensor, w: &Tensor, how: Depthwise) -> Result<Tensor> {
    let (c, _, h, wd) = x.dims4()?;
    match how {
        Depthwise::Grouped => swap_batch_channels(&swap_batch_channels(x)?.conv2d(w, 1, 1, 1, c)?),
        Depthwise::Shifted => {
            let xp = x.pad_with_zeros(2, 1, 1)?.pad_with_zeros(3, 1, 1)?;
            let taps = w.reshape((c, 9))?;
            let mut acc: Option<Tensor> = None;
            for k in 0..9 {
                let t = taps.narrow(1, k, 1)?.reshape((c, 1, 1, 1))?;
                let term = xp
                    .narrow(2, k / 3, h)?
                    .narrow(3, k % 3, wd)?
                    .broadcast_mul(&t)?;
                acc = Some(match acc {
                    None => term,
                    Some(a) => (a + term)?,
                });
            }
            Ok(acc.expect("nine taps"))
        }
        Depthwise::Kernel => x
            .contiguous()?
            .apply_op2(&w.reshape((c, 9))?.contiguous()?, DepthwiseOp),
    }
}

/// out[c, b] = sum over (ky, kx) of w[c, ky * 3 + kx] * in[c, b, y + ky - 1, x + kx - 1] (zero
/// padding), one map at a time, vectorised along the rows. Backward: the input gradient is the
/// same kernel with the taps turned by 180 degrees; the tap gradient is [`DepthwiseTapGrad`].
pub struct DepthwiseOp;

/// One map: `out += conv(src, taps)`.
fn depthwise_plane(out: &mut [f32], src: &[f32], t: &[f32], h: usize, w: usize) {
    for y in 0..h {
        let orow = &mut out[y * w..(y + 1) * w];
        for ky in 0..3 {
            let iy = y as isize + ky as isize - 1;
            if iy < 0 || iy >= h as isize {
                continue;
            }
            let irow = &src[iy as usize * w..(iy as usize + 1) * w];
            let (t0, t1, t2) = (t[ky * 3], t[ky * 3 + 1], t[ky * 3 + 2]);
            for (o, &i) in orow.iter_mut().zip(irow) {
                *o += t1 * i;
            }
            if w > 1 {
                for (o, &i) in orow[1..].iter_mut().zip(&irow[..w - 1]) {
                    *o += t0 * i;
                }
                for (o, &i) in orow[..w - 1].iter_mut().zip(&irow[1..]) {
                    *o += t2 * i;
                }
            }
        }
    }
}

impl CustomOp2 for DepthwiseOp {
    fn name(&self) -> &'static str {
        "depthwise3x3-cbhw"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(s1, l1, self.name())?;
        let taps = f32_slice(s2, l2, self.name())?;
        let (c, b, h, w) = l1.shape().dims4()?;
        if l2.dims() != [c, 9] {
            candle_core::bail!("depthwise: taps {:?} for {c} channels", l2.dims());
        }
        let plane = h * w;
        let mut out = vec![0f32; c * b * plane];
        blocks(&mut out, plane, |p, o| {
            let ch = p / b;
            let src = &x[p * plane..(p + 1) * plane];
            depthwise_plane(o, src, &taps[ch * 9..ch * 9 + 9], h, w);
        });
        Ok((CpuStorage::F32(out), Shape::from((c, b, h, w))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        taps: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        // The transposed convolution of a stride-1, padding-1 3 x 3 kernel is the same
        // convolution with the kernel turned round.
        let flipped = taps.flip(&[1])?.contiguous()?;
        let gx = grad.apply_op2_no_bwd(&flipped, self)?;
        let gw = grad.apply_op2_no_bwd(&x.contiguous()?, &DepthwiseTapGrad)?;
        Ok((Some(gx), Some(gw)))
    }
}

/// Tap gradients of [`DepthwiseOp`]: (grad [C, B, H, W], x [C, B, H, W]) -> [C, 9], entry
/// (c, ky * 3 + kx) = sum over (b, y, x) of grad[c, b, y, x] * in[c, b, y + ky - 1, x + kx - 1].
struct DepthwiseTapGrad;

impl CustomOp2 for DepthwiseTapGrad {
    fn name(&self) -> &'static str {
        "depthwise3x3-tap-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = f32_slice(s1, l1, self.name())?;
        let x = f32_slice(s2, l2, self.name())?;
        let (c, b, h, w) = l1.shape().dims4()?;
        if l2.dims() != l1.dims() {
            candle_core::bail!("depthwise grad: shapes {:?} {:?}", l1.dims(), l2.dims());
        }
        let plane = h * w;
        let mut out = vec![0f32; c * 9];
        blocks(&mut out, 9, |ch, o| {
            let mut acc = [0f64; 9];
            for p in ch * b..(ch + 1) * b {
                let (gp, xp) = (
                    &g[p * plane..(p + 1) * plane],
                    &x[p * plane..(p + 1) * plane],
                );
                for y in 0..h {
                    let grow = &gp[y * w..(y + 1) * w];
                    for ky in 0..3 {
                        let iy = y as isize + ky as isize - 1;
                        if iy < 0 || iy >= h as isize {
                            continue;
                        }
                        let irow = &xp[iy as usize * w..(iy as usize + 1) * w];
                        let mut s1 = 0f32;
                        for (&g, &i) in grow.iter().zip(irow) {
                            s1 += g * i;
                        }
                        let (mut s0, mut s2) = (0f32, 0f32);
                        if w > 1 {
                            for (&g, &i) in grow[1..].iter().zip(&irow[..w - 1]) {
                                s0 += g * i;
                            }
                            for (&g, &i) in grow[..w - 1].iter().zip(&irow[1..]) {
                                s2 += g * i;
                            }
                        }
                        acc[ky * 3] += s0 as f64;
                        acc[ky * 3 + 1] += s1 as f64;
                        acc[ky * 3 + 2] += s2 as f64;
                    }
                }
            }
            for (o, a) in o.iter_mut().zip(acc) {
                *o = a as f32;
            }
        });
        Ok((CpuStorage::F32(out), Shape::from((c, 9))))
    }
}

// ---------------------------------------------------------------------------------------------
// Max pooling

/// k x k max pooling of the maps of x [.., .., H, W] (any 4-d layout whose last two dimensions
/// are the map) with `stride` and `pad` (floor mode; padded positions never win), as
/// PyTorch's `max_pool2d`, with a backward.
pub fn max_pool(x: &Tensor, k: usize, stride: usize, pad: usize) -> Result<Tensor> {
    if k == 0 || stride == 0 || pad * 2 > k {
        candle_core::bail!("max pool: kernel {k}, stride {stride}, padding {pad}");
    }
    x.contiguous()?.apply_op1(MaxPoolOp { k, stride, pad })
}

#[derive(Debug, Clone, Copy)]
struct MaxPoolOp {
    k: usize,
    stride: usize,
    pad: usize,
}

impl MaxPoolOp {
    fn out(&self, n: usize) -> Result<usize> {
        if n + 2 * self.pad < self.k {
            candle_core::bail!("max pool: kernel {} larger than the input {n}", self.k);
        }
        Ok((n + 2 * self.pad - self.k) / self.stride + 1)
    }

    /// Input index range of output position `o` along an axis of length `n`.
    fn window(&self, o: usize, n: usize) -> std::ops::Range<usize> {
        let start = (o * self.stride) as isize - self.pad as isize;
        let end = (start + self.k as isize).min(n as isize);
        (start.max(0) as usize)..(end.max(0) as usize)
    }

    /// The flat index (within the map) of the first maximum of window (oy, ox).
    fn argmax(&self, p: &[f32], (h, w): (usize, usize), oy: usize, ox: usize) -> usize {
        let mut best = (f32::NEG_INFINITY, usize::MAX);
        for y in self.window(oy, h) {
            for x in self.window(ox, w) {
                let v = p[y * w + x];
                if v.is_nan() {
                    return y * w + x;
                }
                if v > best.0 || best.1 == usize::MAX {
                    best = (v, y * w + x);
                }
            }
        }
        best.1
    }
}

impl CustomOp1 for MaxPoolOp {
    fn name(&self) -> &'static str {
        "max-pool"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(s, l, self.name())?;
        let (d0, d1, h, w) = l.shape().dims4()?;
        let (ho, wo) = (self.out(h)?, self.out(w)?);
        let (plane, oplane) = (h * w, ho * wo);
        let mut out = vec![0f32; d0 * d1 * oplane];
        blocks(&mut out, oplane, |p, o| {
            let m = &x[p * plane..][..plane];
            for oy in 0..ho {
                for ox in 0..wo {
                    o[oy * wo + ox] = m[self.argmax(m, (h, w), oy, ox)];
                }
            }
        });
        Ok((CpuStorage::F32(out), Shape::from((d0, d1, ho, wo))))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let g = arg.apply_op2_no_bwd(&grad.contiguous()?, &MaxPoolGrad(*self))?;
        Ok(Some(g))
    }
}

/// (x, grad of the pooled output) -> grad of x: each output's gradient goes to its window's
/// first maximum.
struct MaxPoolGrad(MaxPoolOp);

impl CustomOp2 for MaxPoolGrad {
    fn name(&self) -> &'static str {
        "max-pool-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(s1, l1, self.name())?;
        let g = f32_slice(s2, l2, self.name())?;
        let (d0, d1, h, w) = l1.shape().dims4()?;
        let (ho, wo) = (self.0.out(h)?, self.0.out(w)?);
        if l2.dims() != [d0, d1, ho, wo] {
            candle_core::bail!("max pool grad: gradient {:?}", l2.dims());
        }
        let (plane, oplane) = (h * w, ho * wo);
        let mut out = vec![0f32; d0 * d1 * plane];
        blocks(&mut out, plane, |p, o| {
            let (m, gp) = (&x[p * plane..][..plane], &g[p * oplane..][..oplane]);
            for oy in 0..ho {
                for ox in 0..wo {
                    o[self.0.argmax(m, (h, w), oy, ox)] += gp[oy * wo + ox];
                }
            }
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};
    use rand::SeedableRng;
    use rand_distr::Distribution;

    fn randn(shape: &[usize], seed: u64) -> Tensor {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let d = rand_distr::Normal::new(0f32, 1.0).unwrap();
        let v: Vec<f32> = (0..shape.iter().product())
            .map(|_| d.sample(&mut rng))
            .collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    fn max_rel(a: &Tensor, b: &Tensor) -> f32 {
        let a: Vec<f32> = a.flatten_all().unwrap().to_vec1().unwrap();
        let b: Vec<f32> = b.flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(a.len(), b.len());
        let d = a
            .iter()
            .zip(&b)
            .map(|(x, y)| (x - y).abs())
            .fold(0., f32::max);
        d / b.iter().map(|y| y.abs()).fold(0., f32::max)
    }

    /// Gradients of sum(y * r) with respect to `vars`, for two ways of computing y: (ours, theirs).
    fn compare(ours: &Tensor, theirs: &Tensor, vars: &[&Var], seed: u64, tol: f32, what: &str) {
        let v = max_rel(ours, theirs);
        assert!(v <= tol, "{what}: value {v:e}");
        let r = randn(theirs.dims(), seed);
        let g1 = (ours * &r).unwrap().sum_all().unwrap().backward().unwrap();
        let g2 = (theirs * &r)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        for (i, p) in vars.iter().enumerate() {
            let (a, b) = (
                g1.get(p.as_tensor()).unwrap(),
                g2.get(p.as_tensor()).unwrap(),
            );
            let e = max_rel(a, b);
            assert!(e <= tol, "{what}: gradient of argument {i}: {e:e}");
        }
    }

    /// An NCHW tensor through a CBHW op and back.
    fn via_cbhw(x: &Tensor, f: impl Fn(&Tensor) -> Tensor) -> Tensor {
        swap_batch_channels(&f(&swap_batch_channels(x).unwrap())).unwrap()
    }

    /// The im2col convolution agrees with candle's conv2d in value and both gradients, for the
    /// strides, paddings and kernels the encoders use. (Strided cases are square: candle 0.11's
    /// conv2d backward takes the output padding of both axes from the height.)
    #[test]
    fn im2col_conv_matches_candle_conv2d() {
        for (i, &(dims, o, k, stride, pad)) in [
            ([2, 3, 9, 9], 4, 3, 1, 1),
            ([2, 3, 9, 9], 5, 3, 2, 0),
            ([1, 4, 7, 6], 3, 3, 1, 0),
            ([2, 4, 7, 7], 6, 1, 2, 0),
            ([2, 4, 5, 5], 6, 1, 1, 0),
            ([3, 2, 1, 1], 3, 3, 1, 1),
        ]
        .iter()
        .enumerate()
        {
            let x = Var::from_tensor(&randn(&dims, 40 + i as u64)).unwrap();
            let w = Var::from_tensor(&randn(&[o, dims[1], k, k], 50 + i as u64)).unwrap();
            let ours = via_cbhw(x.as_tensor(), |x| {
                conv2d(x, w.as_tensor(), stride, pad).unwrap()
            });
            let theirs = x
                .as_tensor()
                .conv2d(w.as_tensor(), pad, stride, 1, 1)
                .unwrap();
            compare(&ours, &theirs, &[&x, &w], 60 + i as u64, 1e-5, "conv");
        }
    }

    /// The three depthwise implementations agree in value and in both gradients.
    #[test]
    fn depthwise_kernel_matches_candle_ops() {
        for (i, dims) in [[2, 3, 5, 7], [3, 16, 9, 9], [1, 4, 1, 1], [2, 2, 1, 6]]
            .iter()
            .enumerate()
        {
            let x = Var::from_tensor(&randn(dims, 10 + i as u64)).unwrap();
            let w = Var::from_tensor(&randn(&[dims[1], 1, 3, 3], 20 + i as u64)).unwrap();
            let reference = x
                .as_tensor()
                .conv2d(w.as_tensor(), 1, 1, 1, dims[1])
                .unwrap();
            for how in [Depthwise::Grouped, Depthwise::Shifted, Depthwise::Kernel] {
                let ours = via_cbhw(x.as_tensor(), |x| {
                    depthwise3x3(x, w.as_tensor(), how).unwrap()
                });
                let what = format!("depthwise {how:?} {dims:?}");
                compare(&ours, &reference, &[&x, &w], 30 + i as u64, 1e-5, &what);
            }
        }
    }

    /// The ReLU ops agree with candle's `relu` and `broadcast_add` + `relu`.
    #[test]
    fn relu_ops_match_candle() {
        let x = Var::from_tensor(&randn(&[3, 4, 5, 6], 90)).unwrap();
        let b = Var::from_tensor(&randn(&[4], 81)).unwrap();
        let ours = relu(x.as_tensor()).unwrap();
        let theirs = x.as_tensor().relu().unwrap();
        compare(&ours, &theirs, &[&x], 91, 0.0, "relu");
        let ours = via_cbhw(x.as_tensor(), |x| bias_relu(x, b.as_tensor()).unwrap());
        let theirs = x
            .as_tensor()
            .broadcast_add(&b.as_tensor().reshape((1, 4, 1, 1)).unwrap())
            .unwrap()
            .relu()
            .unwrap();
        compare(&ours, &theirs, &[&x, &b], 82, 1e-5, "bias relu");
    }

    /// The BatchNorm op agrees with its composition from candle ops: training mode (batch
    /// statistics, whose dependence on x the gradient includes; with the fused ReLU) and eval
    /// mode (given statistics).
    #[test]
    fn batch_norm_matches_candle_ops() {
        let dims = [3, 4, 5, 6];
        let x = Var::from_tensor(&(randn(&dims, 70).affine(2.0, 0.5).unwrap())).unwrap();
        let gamma = Var::from_tensor(&randn(&[4], 71)).unwrap();
        let beta = Var::from_tensor(&randn(&[4], 72)).unwrap();
        let eps = 1e-5;
        let sh = (1, 4, 1, 1);
        let (g4, b4) = (
            gamma.as_tensor().reshape(sh).unwrap(),
            beta.as_tensor().reshape(sh).unwrap(),
        );
        let (m, v) = (vec![0.3, -0.2, 0.1, 0.0], vec![1.5, 0.5, 2.0, 1.0]);
        for train in [true, false] {
            let xt = x.as_tensor();
            let (mean, var) = if train {
                let mean = xt.mean_keepdim((0, 2, 3)).unwrap();
                let var = xt
                    .broadcast_sub(&mean)
                    .unwrap()
                    .sqr()
                    .unwrap()
                    .mean_keepdim((0, 2, 3))
                    .unwrap();
                (mean, var)
            } else {
                let t = |v: &[f64]| {
                    let v: Vec<f32> = v.iter().map(|&a| a as f32).collect();
                    Tensor::from_vec(v, sh, &Device::Cpu).unwrap()
                };
                (t(&m), t(&v))
            };
            let theirs = xt
                .broadcast_sub(&mean)
                .unwrap()
                .broadcast_div(&(var + eps).unwrap().sqrt().unwrap())
                .unwrap()
                .broadcast_mul(&g4)
                .unwrap()
                .broadcast_add(&b4)
                .unwrap();
            let theirs = if train {
                theirs.relu().unwrap()
            } else {
                theirs
            };
            let stats = (!train).then_some((m.as_slice(), v.as_slice()));
            let ours = via_cbhw(xt, |x| {
                let (y, batch) =
                    batch_norm(x, gamma.as_tensor(), beta.as_tensor(), stats, eps, train).unwrap();
                assert_eq!(batch.is_some(), train);
                y
            });
            let what = format!("batch norm, train {train}");
            compare(&ours, &theirs, &[&x, &gamma, &beta], 73, 1e-4, &what);
        }
    }

    /// 2 x 2 max pooling agrees with candle's `max_pool2d` in value and with a max over
    /// reshaped windows in value and gradient (candle 0.11's `max_pool2d` backward scales the
    /// gradient by 1 / k^2, so it is not the reference); with padding it is the maximum over the
    /// window's inside, and the gradient sums to the output's.
    #[test]
    fn max_pool_matches_candle() {
        let x = Var::from_tensor(&randn(&[2, 3, 8, 6], 1)).unwrap();
        let ours = max_pool(x.as_tensor(), 2, 2, 0).unwrap();
        let pooled = x.as_tensor().max_pool2d(2).unwrap();
        assert_eq!(max_rel(&ours, &pooled), 0.0);
        let theirs = x
            .as_tensor()
            .reshape((2, 3, 4, 2, 3, 2))
            .unwrap()
            .max(5)
            .unwrap()
            .max(3)
            .unwrap();
        compare(&ours, &theirs, &[&x], 2, 0.0, "max pool 2x2");

        for (h, w) in [(7, 7), (8, 5), (1, 1), (2, 3)] {
            let x = randn(&[2, 3, h, w], 3);
            let y = max_pool(&x, 3, 2, 1).unwrap();
            let (ho, wo) = ((h - 1) / 2 + 1, (w - 1) / 2 + 1);
            assert_eq!(y.dims(), &[2, 3, ho, wo]);
            let xv: Vec<f32> = x.flatten_all().unwrap().to_vec1().unwrap();
            let yv: Vec<f32> = y.flatten_all().unwrap().to_vec1().unwrap();
            for p in 0..6 {
                for oy in 0..ho {
                    for ox in 0..wo {
                        let mut m = f32::NEG_INFINITY;
                        for iy in (2 * oy).saturating_sub(1)..(2 * oy + 2).min(h) {
                            for ix in (2 * ox).saturating_sub(1)..(2 * ox + 2).min(w) {
                                m = m.max(xv[p * h * w + iy * w + ix]);
                            }
                        }
                        assert_eq!(yv[p * ho * wo + oy * wo + ox], m);
                    }
                }
            }
            let xv = Var::from_tensor(&x).unwrap();
            let y = max_pool(xv.as_tensor(), 3, 2, 1).unwrap();
            let g = y.sum_all().unwrap().backward().unwrap();
            let total: f32 = g
                .get(xv.as_tensor())
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar()
                .unwrap();
            assert_eq!(total, (2 * 3 * ho * wo) as f32);
        }
    }
}
