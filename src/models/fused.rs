//! Fused, differentiable f32 CPU kernels for CLIP's LayerNorm, QuickGELU and attention.
//!
//! Written with basic candle ops, a LayerNorm is ~9 tensor passes forward and ~20 backward
//! (each allocating, plus a zero-filled accumulator per gradient); QuickGELU is 3 and ~8. In
//! CLIP guidance these dominate the image tower's non-matmul time. Each kernel here is one
//! parallel pass per direction, split by rows (a row is never shared between threads), so the
//! results do not depend on scheduling. Only the input gets a gradient: callers use these for
//! frozen weights and fall back to basic ops otherwise.

use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::f32_slice;

/// Rows per parallel work unit.
const ROWS: usize = 16;

/// Mean and 1/sqrt(var + eps) of one row (two passes, as the basic-op version).
#[inline]
fn moments(x: &[f32], eps: f32) -> (f32, f32) {
    let n = x.len() as f32;
    let mean = x.iter().sum::<f32>() / n;
    let var = x.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / n;
    (mean, 1.0 / (var + eps).sqrt())
}

/// LayerNorm over the last dimension with frozen f32 `weight` and `bias`.
#[derive(Clone)]
pub struct FusedLayerNorm {
    pub weight: Arc<Vec<f32>>,
    pub bias: Arc<Vec<f32>>,
    pub eps: f32,
}

impl CustomOp1 for FusedLayerNorm {
    fn name(&self) -> &'static str {
        "fused-layer-norm"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(s, l, self.name())?;
        let d = self.weight.len();
        if l.dims().last() != Some(&d) {
            candle_core::bail!(
                "{}: last dimension of {:?} is not {d}",
                self.name(),
                l.dims()
            )
        }
        let mut y = vec![0f32; x.len()];
        y.par_chunks_mut(ROWS * d)
            .zip(x.par_chunks(ROWS * d))
            .for_each(|(y, x)| {
                for (y, x) in y.chunks_exact_mut(d).zip(x.chunks_exact(d)) {
                    let (mean, rstd) = moments(x, self.eps);
                    for j in 0..d {
                        y[j] = (x[j] - mean) * rstd * self.weight[j] + self.bias[j];
                    }
                }
            });
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let g = grad.contiguous()?;
        Ok(Some(x.apply_op2_no_bwd(&g, &LayerNormGrad(self.clone()))?))
    }
}

impl FusedLayerNorm {
    /// The input gradient for the output gradient `g`, recomputing the row moments from `x`
    /// (for hand-written backwards; the op's own `bwd` does the same).
    pub fn grad(&self, x: &Tensor, g: &Tensor) -> Result<Tensor> {
        x.contiguous()?
            .apply_op2_no_bwd(&g.contiguous()?, &LayerNormGrad(self.clone()))
    }
}

/// `[x, g] -> dx` for [`FusedLayerNorm`]: with x^ the normalised row and gw = g * weight,
/// dx = rstd * (gw - mean(gw) - x^ * mean(gw * x^)).
struct LayerNormGrad(FusedLayerNorm);

impl CustomOp2 for LayerNormGrad {
    fn name(&self) -> &'static str {
        "fused-layer-norm-grad"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        lx: &Layout,
        gs: &CpuStorage,
        lg: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(xs, lx, self.name())?;
        let g = f32_slice(gs, lg, self.name())?;
        let w = &self.0.weight;
        let d = w.len();
        if x.len() != g.len() {
            candle_core::bail!("{}: input and gradient sizes differ", self.name())
        }
        let mut dx = vec![0f32; x.len()];
        dx.par_chunks_mut(ROWS * d)
            .zip(x.par_chunks(ROWS * d).zip(g.par_chunks(ROWS * d)))
            .for_each(|(dx, (x, g))| {
                let mut gw = vec![0f32; d];
                for ((dx, x), g) in dx
                    .chunks_exact_mut(d)
                    .zip(x.chunks_exact(d))
                    .zip(g.chunks_exact(d))
                {
                    let (mean, rstd) = moments(x, self.0.eps);
                    let (mut m1, mut m2) = (0f32, 0f32);
                    for j in 0..d {
                        gw[j] = g[j] * w[j];
                        m1 += gw[j];
                        m2 += gw[j] * (x[j] - mean) * rstd;
                    }
                    let (m1, m2) = (m1 / d as f32, m2 / d as f32);
                    for j in 0..d {
                        let xh = (x[j] - mean) * rstd;
                        dx[j] = rstd * (gw[j] - m1 - xh * m2);
                    }
                }
            });
        Ok((CpuStorage::F32(dx), lx.shape().clone()))
    }
}

/// `x * sigmoid(1.702 x)` (OpenAI CLIP's activation), f32.
pub struct FusedQuickGelu;

#[inline]
fn sigmoid(v: f32) -> f32 {
    1.0 / (1.0 + (-v).exp())
}

impl CustomOp1 for FusedQuickGelu {
    fn name(&self) -> &'static str {
        "fused-quick-gelu"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(s, l, self.name())?;
        let mut y = vec![0f32; x.len()];
        y.par_chunks_mut(4096)
            .zip(x.par_chunks(4096))
            .for_each(|(y, x)| {
                for (y, &x) in y.iter_mut().zip(x) {
                    *y = x * sigmoid(1.702 * x);
                }
            });
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let g = grad.contiguous()?;
        Ok(Some(x.apply_op2_no_bwd(&g, &QuickGeluGrad)?))
    }
}

impl FusedQuickGelu {
    /// The input gradient for the output gradient `g` at input `x`.
    pub fn grad(x: &Tensor, g: &Tensor) -> Result<Tensor> {
        x.contiguous()?
            .apply_op2_no_bwd(&g.contiguous()?, &QuickGeluGrad)
    }
}

/// `[x, g] -> g * (s + 1.702 x s (1 - s))`, s = sigmoid(1.702 x).
struct QuickGeluGrad;

impl CustomOp2 for QuickGeluGrad {
    fn name(&self) -> &'static str {
        "fused-quick-gelu-grad"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        lx: &Layout,
        gs: &CpuStorage,
        lg: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(xs, lx, self.name())?;
        let g = f32_slice(gs, lg, self.name())?;
        if x.len() != g.len() {
            candle_core::bail!("{}: input and gradient sizes differ", self.name())
        }
        let mut dx = vec![0f32; x.len()];
        dx.par_chunks_mut(4096)
            .zip(x.par_chunks(4096).zip(g.par_chunks(4096)))
            .for_each(|(dx, (x, g))| {
                for ((dx, &x), &g) in dx.iter_mut().zip(x).zip(g) {
                    let s = sigmoid(1.702 * x);
                    *dx = g * (s + 1.702 * x * s * (1.0 - s));
                }
            });
        Ok((CpuStorage::F32(dx), lx.shape().clone()))
    }
}

/// Dot product with eight independent accumulators, so that it vectorises (a fixed order, hence
/// deterministic).
#[inline]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ac, bc) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ac
        .remainder()
        .iter()
        .zip(bc.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ac.zip(bc) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// `y += a * x`.
#[inline]
fn axpy(y: &mut [f32], a: f32, x: &[f32]) {
    for (y, x) in y.iter_mut().zip(x) {
        *y += a * x;
    }
}

/// Multi-head self-attention core, softmax(q k^T * scale) v, on the stacked projection output
/// `qkv` [B, N, 3, H, hd] (f32, contiguous) -> [B, nq, H * hd], for the first `queries`
/// positions. Written with basic ops this is a permute copy, two batched matmuls of tiny
/// matrices and ~6 softmax passes forward, twice that backward; here it is one pass per batch
/// element each way (the probabilities are recomputed in the backward rather than stored).
/// Batch elements are split between threads, never shared, so results do not depend on
/// scheduling. No mask: the image tower has none.
#[derive(Clone)]
pub struct FusedAttention {
    pub heads: usize,
    pub queries: usize,
    pub scale: f32,
}

impl FusedAttention {
    /// (B, N, H, hd) of a [B, N, 3 * H * hd] input, checked.
    fn dims(&self, l: &Layout, op: &str) -> Result<(usize, usize, usize, usize)> {
        let (b, n, three_d) = l.shape().dims3()?;
        let h = self.heads;
        if h == 0 || three_d % (3 * h) != 0 || self.queries > n {
            candle_core::bail!(
                "{op}: bad shape {:?} for {h} heads, {} queries",
                l.dims(),
                self.queries
            )
        }
        Ok((b, n, h, three_d / (3 * h)))
    }

    /// Softmax probabilities of query row `i` of head `h` in batch element `x` ([N, 3, H, hd]).
    fn probs(&self, x: &[f32], i: usize, h: usize, hd: usize, p: &mut [f32]) {
        let row = 3 * self.heads * hd;
        let q = &x[i * row + h * hd..][..hd];
        let mut max = f32::NEG_INFINITY;
        for (j, p) in p.iter_mut().enumerate() {
            let k = &x[j * row + (self.heads + h) * hd..][..hd];
            *p = dot(q, k) * self.scale;
            max = max.max(*p);
        }
        let mut sum = 0f32;
        for p in p.iter_mut() {
            *p = (*p - max).exp();
            sum += *p;
        }
        for p in p.iter_mut() {
            *p /= sum;
        }
    }
}

impl CustomOp1 for FusedAttention {
    fn name(&self) -> &'static str {
        "fused-attention"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(s, l, self.name())?;
        let (b, n, h, hd) = self.dims(l, self.name())?;
        let (nq, d) = (self.queries, h * hd);
        let mut y = vec![0f32; b * nq * d];
        y.par_chunks_mut(nq * d)
            .zip(x.par_chunks(n * 3 * d))
            .for_each(|(y, x)| {
                let mut p = vec![0f32; n];
                for hh in 0..h {
                    for i in 0..nq {
                        self.probs(x, i, hh, hd, &mut p);
                        let o = &mut y[i * d + hh * hd..][..hd];
                        for (j, &pj) in p.iter().enumerate() {
                            axpy(o, pj, &x[j * 3 * d + (2 * h + hh) * hd..][..hd]);
                        }
                    }
                }
            });
        Ok((CpuStorage::F32(y), Shape::from((b, nq, d))))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let g = grad.contiguous()?;
        Ok(Some(x.apply_op2_no_bwd(&g, &AttentionGrad(self.clone()))?))
    }
}

impl FusedAttention {
    /// The gradient w.r.t. `qkv` for the output gradient `g` (probabilities recomputed).
    pub fn grad(&self, qkv: &Tensor, g: &Tensor) -> Result<Tensor> {
        qkv.contiguous()?
            .apply_op2_no_bwd(&g.contiguous()?, &AttentionGrad(self.clone()))
    }
}

/// `[qkv, g] -> d qkv` for [`FusedAttention`]. Per query row i, with p its probabilities:
/// dv_j += p_j g_i, ds_j = p_j (g_i.v_j - sum_k p_k g_i.v_k), dq_i = scale sum_j ds_j k_j,
/// dk_j += scale ds_j q_i.
struct AttentionGrad(FusedAttention);

impl CustomOp2 for AttentionGrad {
    fn name(&self) -> &'static str {
        "fused-attention-grad"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        lx: &Layout,
        gs: &CpuStorage,
        lg: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let op = &self.0;
        let x = f32_slice(xs, lx, self.name())?;
        let g = f32_slice(gs, lg, self.name())?;
        let (b, n, h, hd) = op.dims(lx, self.name())?;
        let (nq, d) = (op.queries, h * hd);
        if g.len() != b * nq * d {
            candle_core::bail!("{}: gradient has the wrong size", self.name())
        }
        let mut dx = vec![0f32; x.len()];
        dx.par_chunks_mut(n * 3 * d)
            .zip(x.par_chunks(n * 3 * d).zip(g.par_chunks(nq * d)))
            .for_each(|(dx, (x, g))| {
                let (mut p, mut ds) = (vec![0f32; n], vec![0f32; n]);
                for hh in 0..h {
                    let (qo, ko, vo) = (hh * hd, (h + hh) * hd, (2 * h + hh) * hd);
                    for i in 0..nq {
                        op.probs(x, i, hh, hd, &mut p);
                        let gi = &g[i * d + hh * hd..][..hd];
                        let mut pdp = 0f32;
                        for j in 0..n {
                            ds[j] = dot(gi, &x[j * 3 * d + vo..][..hd]);
                            pdp += p[j] * ds[j];
                            axpy(&mut dx[j * 3 * d + vo..][..hd], p[j], gi);
                        }
                        for (ds, &pj) in ds.iter_mut().zip(&p) {
                            *ds = pj * (*ds - pdp) * op.scale;
                        }
                        let qi = i * 3 * d + qo;
                        for (j, &dsj) in ds.iter().enumerate() {
                            let kj = j * 3 * d + ko;
                            axpy(&mut dx[qi..][..hd], dsj, &x[kj..][..hd]);
                            axpy(&mut dx[kj..][..hd], dsj, &x[qi..][..hd]);
                        }
                    }
                }
            });
        Ok((CpuStorage::F32(dx), lx.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var, D};

    fn rel_err(a: &Tensor, b: &Tensor) -> f32 {
        let diff = (a - b).unwrap().abs().unwrap().max_all().unwrap();
        let scale = b.abs().unwrap().max_all().unwrap();
        diff.to_scalar::<f32>().unwrap() / scale.to_scalar::<f32>().unwrap().max(1e-12)
    }

    /// Forward and input gradient against the composition of basic candle ops.
    fn check(fused: impl Fn(&Tensor) -> Tensor, plain: impl Fn(&Tensor) -> Tensor) {
        let dev = Device::Cpu;
        let (rows, d) = (37, 19);
        let x: Vec<f32> = (0..rows * d)
            .map(|i| ((i * 7919 % 1013) as f32 / 1013.0 - 0.5) * 6.0)
            .collect();
        let x = Var::from_vec(x, (rows, d), &dev).unwrap();
        let wts: Vec<f32> = (0..rows * d).map(|i| (i % 5) as f32 - 2.0).collect();
        let wts = Tensor::from_vec(wts, (rows, d), &dev).unwrap();
        let (a, b) = (fused(x.as_tensor()), plain(x.as_tensor()));
        assert!(rel_err(&a, &b) < 1e-5);
        let ga = (a * &wts).unwrap().sum_all().unwrap().backward().unwrap();
        let gb = (b * &wts).unwrap().sum_all().unwrap().backward().unwrap();
        let e = rel_err(ga.get(&x).unwrap(), gb.get(&x).unwrap());
        assert!(e < 1e-5, "gradient rel err {e}");
    }

    #[test]
    fn layer_norm_matches_basic_ops() {
        let d = 19;
        let w: Vec<f32> = (0..d).map(|i| 0.5 + i as f32 / 10.0).collect();
        let b: Vec<f32> = (0..d).map(|i| i as f32 / 7.0 - 1.0).collect();
        let op = FusedLayerNorm {
            weight: Arc::new(w.clone()),
            bias: Arc::new(b.clone()),
            eps: 1e-5,
        };
        let (wt, bt) = (
            Tensor::new(w, &Device::Cpu).unwrap(),
            Tensor::new(b, &Device::Cpu).unwrap(),
        );
        check(
            |x| x.apply_op1(op.clone()).unwrap(),
            |x| {
                let c = x
                    .broadcast_sub(&x.mean_keepdim(D::Minus1).unwrap())
                    .unwrap();
                let var = c.sqr().unwrap().mean_keepdim(D::Minus1).unwrap();
                c.broadcast_div(&(var + 1e-5).unwrap().sqrt().unwrap())
                    .unwrap()
                    .broadcast_mul(&wt)
                    .unwrap()
                    .broadcast_add(&bt)
                    .unwrap()
            },
        );
    }

    #[test]
    fn quick_gelu_matches_basic_ops() {
        check(
            |x| x.apply_op1(FusedQuickGelu).unwrap(),
            |x| (x * candle_nn::ops::sigmoid(&(x * 1.702).unwrap()).unwrap()).unwrap(),
        );
    }
    /// softmax(q k^T * scale) v with basic ops, as `Attention::forward_queries` computes it.
    fn plain_attention(x: &Tensor, heads: usize, nq: usize, scale: f64) -> Tensor {
        let (b, n, three_d) = x.dims3().unwrap();
        let hd = three_d / 3 / heads;
        let qkv = x
            .reshape((b, n, 3, heads, hd))
            .unwrap()
            .permute((2, 0, 3, 1, 4))
            .unwrap()
            .contiguous()
            .unwrap();
        let q = qkv.get(0).unwrap().narrow(2, 0, nq).unwrap();
        let q = (q.contiguous().unwrap() * scale).unwrap();
        let (k, v) = (qkv.get(1).unwrap(), qkv.get(2).unwrap());
        let s = q.matmul(&k.t().unwrap()).unwrap();
        let p = candle_nn::ops::softmax(&s, D::Minus1).unwrap();
        p.matmul(&v)
            .unwrap()
            .transpose(1, 2)
            .unwrap()
            .reshape((b, nq, heads * hd))
            .unwrap()
    }

    #[test]
    fn attention_matches_basic_ops() {
        let dev = Device::Cpu;
        // hd = 11: one 8-wide chunk plus a tail in `dot`.
        let (b, n, heads, hd) = (2, 7, 3, 11);
        let len = b * n * 3 * heads * hd;
        let x: Vec<f32> = (0..len)
            .map(|i| ((i * 7919 % 1013) as f32 / 1013.0 - 0.5) * 3.0)
            .collect();
        let x = Var::from_vec(x, (b, n, 3 * heads * hd), &dev).unwrap();
        for nq in [n, 1] {
            let scale = (hd as f64).powf(-0.5);
            let op = FusedAttention {
                heads,
                queries: nq,
                scale: scale as f32,
            };
            let a = x.as_tensor().apply_op1(op).unwrap();
            let p = plain_attention(x.as_tensor(), heads, nq, scale);
            assert!(rel_err(&a, &p) < 1e-5);
            let wts: Vec<f32> = (0..b * nq * heads * hd)
                .map(|i| (i % 5) as f32 - 2.0)
                .collect();
            let wts = Tensor::from_vec(wts, (b, nq, heads * hd), &dev).unwrap();
            let ga = (a * &wts).unwrap().sum_all().unwrap().backward().unwrap();
            let gp = (p * &wts).unwrap().sum_all().unwrap().backward().unwrap();
            let e = rel_err(ga.get(&x).unwrap(), gp.get(&x).unwrap());
            assert!(e < 1e-5, "gradient rel err {e} ({nq} queries)");
        }
    }
}
