//! Fused, differentiable f32 CPU kernels for CLIP's LayerNorm, QuickGELU and attention (BLIP's
//! image tower uses the LayerNorm too, and its own forward-only kernels, [`super::blip_fused`]).
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

use super::{f32_slice, gemm_1t};

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

/// e^x to ~2 ulp (Cephes' expf: reduction by ln 2 in two parts, degree-6 polynomial), branch-free
/// so that it vectorises (libm's `expf` is a scalar call). Arguments are clamped to
/// [-87.3, 88.3], where 2^n stays a normal float; sigmoid only needs the clamped range.
#[inline(always)]
pub(crate) fn exp_poly(x: f32) -> f32 {
    const SHIFTER: f32 = 12_582_912.0; // 1.5 * 2^23: adding it rounds to an integer
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const C1: f32 = 0.693_359_4;
    const C2: f32 = -2.121_944_4e-4;
    let x = x.clamp(-87.3, 88.3);
    let k = x * LOG2E + SHIFTER;
    let n = k - SHIFTER;
    let r = (x - n * C1) - n * C2;
    let p = ((((1.987_569_1e-4 * r + 1.398_2e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r
        + 1.666_666_5e-1)
        * r
        + 0.5;
    let y = p * r * r + r + 1.0;
    let e = (k.to_bits() as i32 - SHIFTER.to_bits() as i32 + 127) as u32;
    y * f32::from_bits(e << 23)
}

#[inline(always)]
fn sigmoid(v: f32) -> f32 {
    1.0 / (1.0 + exp_poly(-v))
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

/// Multi-head self-attention core, softmax(q k^T * scale) v, on the stacked projection output
/// `qkv` [B, N, 3, H, hd] (f32, contiguous) -> [B, nq, H * hd], for the first `queries`
/// positions. Written with basic ops this is a permute copy, two batched matmuls of tiny
/// matrices and ~6 softmax passes forward, twice that backward; here each head of each batch
/// element is two small matrix products on strided views of `qkv` and an in-cache softmax
/// forward, five products backward (the probabilities are recomputed rather than stored).
/// Batch elements are split between threads, never shared, and each product runs on one
/// thread, so results do not depend on scheduling. No mask: the image tower has none.
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

    /// Softmax probabilities [nq, N] of head `hh` in batch element `x` ([N, 3, H, hd]): the
    /// scores `q k^T` as one small matrix product on the strided head views, then each row's
    /// softmax of `scale * scores`.
    #[inline(always)]
    fn head_probs(&self, x: &[f32], hh: usize, hd: usize, n: usize, p: &mut [f32]) {
        let h = self.heads;
        let row = 3 * h * hd;
        let nq = self.queries;
        // SAFETY: p is [nq, n]; q rows (nq of them) and k rows (n) lie in x ([n, row]).
        unsafe {
            gemm_1t(
                (nq, n, hd),
                (p.as_mut_ptr(), n),
                false,
                x[hh * hd..].as_ptr(),
                (row, 1),
                x[(h + hh) * hd..].as_ptr(),
                (1, row),
            )
        };
        for r in p.chunks_exact_mut(n) {
            let mut max = f32::NEG_INFINITY;
            for v in r.iter_mut() {
                *v *= self.scale;
                max = max.max(*v);
            }
            let mut sum = 0f32;
            for v in r.iter_mut() {
                *v = exp_poly(*v - max);
                sum += *v;
            }
            for v in r.iter_mut() {
                *v /= sum;
            }
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
                {
                    let mut p = vec![0f32; nq * n];
                    for hh in 0..h {
                        self.head_probs(x, hh, hd, n, &mut p);
                        // SAFETY: y is [nq, d] (this head's hd columns written), p [nq, n], the
                        // v rows (n of them) lie in x.
                        unsafe {
                            gemm_1t(
                                (nq, hd, n),
                                (y[hh * hd..].as_mut_ptr(), d),
                                false,
                                p.as_ptr(),
                                (n, 1),
                                x[(2 * h + hh) * hd..].as_ptr(),
                                (3 * d, 1),
                            )
                        };
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
                {
                    let row = 3 * d;
                    let (mut p, mut ds) = (vec![0f32; nq * n], vec![0f32; nq * n]);
                    for hh in 0..h {
                        let (qo, ko, vo, go) = (hh * hd, (h + hh) * hd, (2 * h + hh) * hd, hh * hd);
                        op.head_probs(x, hh, hd, n, &mut p);
                        // SAFETY (all four products): p and ds are [nq, n]; g is [nq, d] and x,
                        // dx are [n, row], of which each product reads or writes one head's hd
                        // columns of the q, k or v section; dx does not overlap the others.
                        unsafe {
                            // d probs = g_h v^T
                            gemm_1t(
                                (nq, n, hd),
                                (ds.as_mut_ptr(), n),
                                false,
                                g[go..].as_ptr(),
                                (d, 1),
                                x[vo..].as_ptr(),
                                (1, row),
                            );
                        }
                        // d scores = p * (d probs - sum_j p d probs) * scale
                        for (dr, pr) in ds.chunks_exact_mut(n).zip(p.chunks_exact(n)) {
                            let pdp: f32 = dr.iter().zip(pr).map(|(a, b)| a * b).sum();
                            for (v, &pj) in dr.iter_mut().zip(pr) {
                                *v = pj * (*v - pdp) * op.scale;
                            }
                        }
                        let dxp = dx.as_mut_ptr();
                        unsafe {
                            // dq = ds k, dk = ds^T q, dv = p^T g_h
                            gemm_1t(
                                (nq, hd, n),
                                (dxp.add(qo), row),
                                false,
                                ds.as_ptr(),
                                (n, 1),
                                x[ko..].as_ptr(),
                                (row, 1),
                            );
                            gemm_1t(
                                (n, hd, nq),
                                (dxp.add(ko), row),
                                false,
                                ds.as_ptr(),
                                (1, n),
                                x[qo..].as_ptr(),
                                (row, 1),
                            );
                            gemm_1t(
                                (n, hd, nq),
                                (dxp.add(vo), row),
                                false,
                                p.as_ptr(),
                                (1, n),
                                g[go..].as_ptr(),
                                (d, 1),
                            );
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

    #[test]
    fn exp_poly_is_within_a_few_ulp_of_f64_exp() {
        let mut worst = 0f64;
        for i in 0..=200_000 {
            let x = -87.0 + 175.0 * i as f64 / 200_000.0;
            let got = exp_poly(x as f32) as f64;
            let want = (x as f32 as f64).exp();
            worst = worst.max((got - want).abs() / want);
        }
        assert!(worst < 3e-7, "max relative error {worst:e}");
        assert_eq!(exp_poly(0.0), 1.0);
        // Clamped, not overflowing: sigmoid saturates cleanly.
        assert!(exp_poly(1e4).is_finite() && sigmoid(-1e4) < 1e-30 && sigmoid(1e4) == 1.0);
    }
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
