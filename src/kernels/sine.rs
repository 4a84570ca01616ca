//! Fused CPU kernels for SIREN sine layers.
//!
//! Built from candle ops, one sine layer is `matmul`, bias add, `* w0`, `sin` forward and
//! `cos`, two multiplies, a row sum and several gradient accumulations backward: each a full pass
//! over an [N, H] tensor (N = 50,176 pixels at 224 px) that allocates a fresh buffer, and
//! libm's scalar `sinf`. These kernels run a whole layer block by block of rows, each block's
//! matrix products (gemm on one thread) and elementwise work done while it is in cache, with a
//! vectorisable sine/cosine. Work is split by fixed row blocks and groups, never by thread count,
//! and partial sums are combined in group order, so results do not depend on scheduling.

use std::mem::MaybeUninit;

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::{f32_slice, gemm_1t};

/// Lanes processed together; a multiple of every SIMD width we target.
const LANES: usize = 16;
/// Beyond this |argument| the three-part pi/2 reduction loses accuracy; such chunks use libm.
const REDUCTION_LIMIT: f32 = 8192.0;

/// `(sin t, cos t)` for each lane, to ~2 ulp for |t| <= 8192 (Cody-Waite reduction by pi/2 and
/// Cephes' minimax polynomials). Written branch-free over fixed-size arrays so that it
/// vectorises; no FMA contraction, so every instruction set gives the same bits.
#[inline(always)]
fn sincos_lanes(t: &[f32; LANES], s: &mut [f32; LANES], c: &mut [f32; LANES]) {
    // 1.5 * 2^23: adding it rounds to an integer held in the low mantissa bits.
    const SHIFTER: f32 = 12_582_912.0;
    const TWO_OVER_PI: f32 = std::f32::consts::FRAC_2_PI;
    // pi/2 split so that n * P1 and n * P2 are exact for |n| < 2^14.
    const P1: f32 = 1.570_312_5;
    const P2: f32 = 4.837_513e-4;
    const P3: f32 = 7.549_79e-8;
    let bad = t
        .iter()
        .fold(false, |b, v| b | (v.abs() > REDUCTION_LIMIT) | v.is_nan());
    if bad {
        for i in 0..LANES {
            (s[i], c[i]) = t[i].sin_cos();
        }
        return;
    }
    for i in 0..LANES {
        let x = t[i];
        let k = x * TWO_OVER_PI + SHIFTER;
        let q = k.to_bits();
        let n = k - SHIFTER;
        let r = ((x - n * P1) - n * P2) - n * P3;
        let r2 = r * r;
        let sp = r + r * r2 * (-1.666_665_5e-1 + r2 * (8.332_161e-3 + r2 * -1.951_529_6e-4));
        let cp = 1.0 - 0.5 * r2
            + r2 * r2 * (4.166_664_6e-2 + r2 * (-1.388_731_6e-3 + r2 * 2.443_315_7e-5));
        // Quadrant q: sin x = [sp, cp, -sp, -cp][q], cos x = [cp, -sp, -cp, sp][q].
        let swap = q & 1 == 1;
        let (a, b) = if swap { (cp, sp) } else { (sp, cp) };
        let s_neg = (q & 2) << 30;
        let c_neg = (q.wrapping_add(1) & 2) << 30;
        s[i] = f32::from_bits(a.to_bits() ^ s_neg);
        c[i] = f32::from_bits(b.to_bits() ^ c_neg);
    }
}

/// Output elements, written once each: outputs are not zero-filled first (a full pass over
/// ~100 MB per layer for nothing).
type Out = MaybeUninit<f32>;

/// A vector of `len` elements, each written by `fill` exactly once.
fn filled(len: usize, fill: impl FnOnce(&mut [Out])) -> Vec<f32> {
    let mut v = Vec::with_capacity(len);
    fill(&mut v.spare_capacity_mut()[..len]);
    // SAFETY: `fill` wrote all `len` elements (every caller covers its whole slice).
    unsafe { v.set_len(len) };
    v
}

/// Forward of one row block: `y = sin(w0 (z + b))`, `d = w0 cos(w0 (z + b))`.
#[inline(always)]
fn sine_rows_body(z: &[f32], bias: &[f32], w0: f32, y: &mut [Out], d: &mut [Out]) {
    let h = bias.len();
    let (mut t, mut s, mut c) = ([0f32; LANES], [0f32; LANES], [0f32; LANES]);
    for ((zr, yr), dr) in z
        .chunks_exact(h)
        .zip(y.chunks_exact_mut(h))
        .zip(d.chunks_exact_mut(h))
    {
        let mut j = 0;
        while j < h {
            let n = LANES.min(h - j);
            for i in 0..LANES {
                // Tail lanes are padded with zeros and discarded.
                t[i] = if i < n {
                    (zr[j + i] + bias[j + i]) * w0
                } else {
                    0.0
                };
            }
            sincos_lanes(&t, &mut s, &mut c);
            for i in 0..n {
                yr[j + i].write(s[i]);
                dr[j + i].write(c[i] * w0);
            }
            j += LANES;
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn sine_rows_avx512(z: &[f32], bias: &[f32], w0: f32, y: &mut [Out], d: &mut [Out]) {
    sine_rows_body(z, bias, w0, y, d)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn sine_rows_avx2(z: &[f32], bias: &[f32], w0: f32, y: &mut [Out], d: &mut [Out]) {
    sine_rows_body(z, bias, w0, y, d)
}

/// Dispatches to the widest vector unit present; all paths give identical results.
fn sine_rows(z: &[f32], bias: &[f32], w0: f32, y: &mut [Out], d: &mut [Out]) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the feature was detected at run time.
            return unsafe { sine_rows_avx512(z, bias, w0, y, d) };
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: as above.
            return unsafe { sine_rows_avx2(z, bias, w0, y, d) };
        }
    }
    sine_rows_body(z, bias, w0, y, d)
}

/// `(sin, cos)` of every element, through the same kernel (for tests).
pub fn sin_cos(xs: &[f32]) -> (Vec<f32>, Vec<f32>) {
    let n = xs.len();
    let yd = filled(2 * n, |out| {
        let (y, d) = out.split_at_mut(n);
        sine_rows(xs, &[0.0], 1.0, y, d)
    });
    (yd[..n].to_vec(), yd[n..].to_vec())
}

/// `sin(w0 (z + b))` and `w0 cos(w0 (z + b))` for z [N, H] and b [H] from candle ops: the
/// portable path of [`sine_layer_forward`].
fn sine_portable(z: &Tensor, b: &Tensor, w0: f64) -> Result<(Tensor, Tensor)> {
    let t = (z.broadcast_add(b)? * w0)?;
    Ok((t.sin()?, (t.cos()? * w0)?))
}

/// Rows per block of the fused layer kernels: a block's pre-activations [256, H] stay in cache
/// between the matrix product that makes them and the sine that reads them.
const LAYER_BLOCK: usize = 512;
/// Rows per partial weight-gradient sum in [`sine_layer_backward`]: fixed, so that the sums and
/// their order (hence the bits) do not depend on the thread count.
const GRAD_GROUP: usize = 1024;
const BWD_BLOCK: usize = 1024;

/// `[x [N, K], w [H, K], b [H]] -> [2, N, H]`: a whole SIREN sine layer forward, `y = sin(w0 (x
/// w^T + b))` and its derivative `w0 cos(..)`, block by block of rows: each block's matrix
/// product goes to a per-thread scratch that the sine kernel reads while it is in cache, so the
/// [N, H] pre-activation never goes to memory (written and read back, it cost a fifth of the
/// SIREN's forward).
struct SineLayer {
    w0: f32,
}

impl CustomOp3 for SineLayer {
    fn name(&self) -> &'static str {
        "siren-sine-layer"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        lx: &Layout,
        w: &CpuStorage,
        lw: &Layout,
        b: &CpuStorage,
        lb: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (n, k) = lx.shape().dims2()?;
        let (h, k2) = lw.shape().dims2()?;
        let bias = f32_slice(b, lb, self.name())?;
        if k != k2 || bias.len() != h {
            candle_core::bail!(
                "{}: x {:?}, w {:?}, b {:?}",
                self.name(),
                lx.dims(),
                lw.dims(),
                lb.dims()
            )
        }
        let (x, w) = (
            f32_slice(x, lx, self.name())?,
            f32_slice(w, lw, self.name())?,
        );
        let blk = LAYER_BLOCK * h;
        let out = filled(2 * n * h, |out| {
            let (y, d) = out.split_at_mut(n * h);
            y.par_chunks_mut(blk)
                .zip(d.par_chunks_mut(blk))
                .zip(x.par_chunks(LAYER_BLOCK * k))
                .for_each_init(
                    || vec![0f32; blk],
                    |z, ((y, d), x)| {
                        let rows = x.len() / k.max(1);
                        let z = &mut z[..rows * h];
                        // SAFETY: z is [rows, h], x [rows, k] row-major, w [h, k] read as w^T
                        // (k rows 1 apart, h columns k apart).
                        unsafe {
                            gemm_1t(
                                (rows, h, k),
                                (z.as_mut_ptr(), h),
                                false,
                                x.as_ptr(),
                                (k, 1),
                                w.as_ptr(),
                                (1, k),
                            )
                        };
                        sine_rows(z, bias, self.w0, y, d);
                    },
                )
        });
        Ok((CpuStorage::F32(out), (2, n, h).into()))
    }
}

/// One SIREN sine layer forward from its input `x` [N, K] and (frozen for this pass) weight `w`
/// [H, K] and bias `b` [H]: `(y, d)` = `sin(w0 (x w^T + b))` and `w0 cos(w0 (x w^T + b))`. On
/// the CPU one fused kernel ([`SineLayer`]); elsewhere ([`super::native_kernels`]) candle ops.
pub fn sine_layer_forward(x: &Tensor, w: &Tensor, b: &Tensor, w0: f64) -> Result<(Tensor, Tensor)> {
    if !super::native_kernels(x.device()) {
        return sine_portable(&x.matmul(&w.t()?)?, b, w0);
    }
    let out = x.contiguous()?.apply_op3_no_bwd(
        &w.contiguous()?,
        &b.contiguous()?,
        &SineLayer { w0: w0 as f32 },
    )?;
    Ok((out.get(0)?, out.get(1)?))
}

/// `[g [N, H], d [N, H], x [N, K]] -> flat [N K (when `input_grad`) + H K + H]`: the backward of
/// a sine layer for the gradient `g` at its output: the gradient at its input `gz @ w`, the
/// weight gradient `gz^T @ x` and the bias gradient `sum gz`, with gz = g * d. Block by block of
/// rows, gz staying in cache; weight and bias gradients are summed per fixed group of rows,
/// then over the groups in order.
struct SineLayerGrad {
    /// The layer's weight [H, K], row-major.
    w: Vec<f32>,
    h: usize,
    input_grad: bool,
}

impl CustomOp3 for SineLayerGrad {
    fn name(&self) -> &'static str {
        "siren-sine-layer-grad"
    }

    fn cpu_fwd(
        &self,
        g: &CpuStorage,
        lg: &Layout,
        d: &CpuStorage,
        ld: &Layout,
        x: &CpuStorage,
        lx: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (n, h) = lg.shape().dims2()?;
        let (n2, k) = lx.shape().dims2()?;
        if ld.shape().dims2()? != (n, h) || n2 != n || h != self.h || self.w.len() != h * k {
            candle_core::bail!(
                "{}: g {:?}, d {:?}, x {:?}, w {} values",
                self.name(),
                lg.dims(),
                ld.dims(),
                lx.dims(),
                self.w.len()
            )
        }
        let g = f32_slice(g, lg, self.name())?;
        let d = f32_slice(d, ld, self.name())?;
        let x = f32_slice(x, lx, self.name())?;
        let w = &self.w;
        let gin_len = if self.input_grad { n * k } else { 0 };
        let groups = n.div_ceil(GRAD_GROUP);
        // Per group: [H K weight gradient, H bias gradient].
        let part = h * k + h;
        let mut partial = vec![0f32; groups * part];
        let mut gin = filled(gin_len, |gin| {
            // One work item per group; its slice of the input gradient (empty when not wanted).
            let gin_chunks: Vec<&mut [Out]> = if self.input_grad {
                gin.chunks_mut(GRAD_GROUP * k).collect()
            } else {
                (0..groups).map(|_| &mut [][..]).collect()
            };
            partial
                .par_chunks_mut(part)
                .zip(gin_chunks)
                .enumerate()
                .for_each_init(
                    || vec![0f32; BWD_BLOCK * h],
                    |gz, (gi, (acc, gin))| {
                        let (gw, gb) = acc.split_at_mut(h * k);
                        let r0 = gi * GRAD_GROUP;
                        let r1 = (r0 + GRAD_GROUP).min(n);
                        let mut r = r0;
                        while r < r1 {
                            let rows = BWD_BLOCK.min(r1 - r);
                            let gz = &mut gz[..rows * h];
                            let (gb_rows, db_rows) =
                                (&g[r * h..][..rows * h], &d[r * h..][..rows * h]);
                            for ((gzr, gr), dr) in gz
                                .chunks_exact_mut(h)
                                .zip(gb_rows.chunks_exact(h))
                                .zip(db_rows.chunks_exact(h))
                            {
                                for j in 0..h {
                                    let v = gr[j] * dr[j];
                                    gzr[j] = v;
                                    gb[j] += v;
                                }
                            }
                            let xb = &x[r * k..][..rows * k];
                            // SAFETY (both): shapes as named; gz [rows, h], xb [rows, k] and
                            // w [h, k] row-major, gw [h, k], the input-gradient rows [rows, k].
                            unsafe {
                                // gw += gz^T @ xb: gz^T has its h rows 1 apart, rows columns h
                                // apart.
                                gemm_1t(
                                    (h, k, rows),
                                    (gw.as_mut_ptr(), k),
                                    true,
                                    gz.as_ptr(),
                                    (1, h),
                                    xb.as_ptr(),
                                    (k, 1),
                                );
                                if !gin.is_empty() {
                                    let off = (r - r0) * k;
                                    let dst = gin[off..off + rows * k].as_mut_ptr() as *mut f32;
                                    gemm_1t(
                                        (rows, k, h),
                                        (dst, k),
                                        false,
                                        gz.as_ptr(),
                                        (h, 1),
                                        w.as_ptr(),
                                        (k, 1),
                                    );
                                }
                            }
                            r += rows;
                        }
                    },
                );
        });
        let mut sums = vec![0f32; part];
        for p in partial.chunks_exact(part) {
            for (s, v) in sums.iter_mut().zip(p) {
                *s += v;
            }
        }
        gin.extend_from_slice(&sums);
        let len = gin.len();
        Ok((CpuStorage::F32(gin), len.into()))
    }
}

/// The backward of [`sine_layer_forward`] for the gradient `g` [N, H] at its output, given its
/// `d` and input `x` [N, K] and weight `w` [H, K]: (gradient at the input [N, K] when
/// `input_grad`, weight gradient [H, K], bias gradient [H]). Deterministic on the CPU (fixed
/// blocks and groups); elsewhere candle ops.
pub fn sine_layer_backward(
    g: &Tensor,
    d: &Tensor,
    x: &Tensor,
    w: &Tensor,
    input_grad: bool,
) -> Result<(Option<Tensor>, Tensor, Tensor)> {
    if !super::native_kernels(g.device()) {
        let gz = g.mul(d)?;
        let gb = gz.sum(0)?;
        let gw = gz.t()?.matmul(x)?;
        let gin = input_grad.then(|| gz.matmul(w)).transpose()?;
        return Ok((gin, gw, gb));
    }
    let (n, k) = x.dims2()?;
    let h = w.dim(0)?;
    let op = SineLayerGrad {
        w: w.flatten_all()?.to_vec1::<f32>()?,
        h,
        input_grad,
    };
    let out = g
        .contiguous()?
        .apply_op3_no_bwd(&d.contiguous()?, &x.contiguous()?, &op)?;
    let mut at = 0;
    let gin = if input_grad {
        at = n * k;
        Some(out.narrow(0, 0, n * k)?.reshape((n, k))?)
    } else {
        None
    };
    let gw = out.narrow(0, at, h * k)?.reshape((h, k))?;
    let gb = out.narrow(0, at + h * k, h)?;
    Ok((gin, gw, gb))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sin_cos_matches_f64_including_large_arguments() {
        let xs: Vec<f32> = (0..20_000)
            .map(|i| (i as f32 - 10_000.0) * 0.0137)
            .chain([0.0, -0.0, 1e-30, 8191.9, 8192.5, -9000.0, 1e6, 3.0e7])
            .collect();
        let (s, c) = sin_cos(&xs);
        for ((&x, &s), &c) in xs.iter().zip(&s).zip(&c) {
            let (es, ec) = (x as f64).sin_cos();
            assert!((s as f64 - es).abs() < 3e-7, "sin {x}: {s} vs {es}");
            assert!((c as f64 - ec).abs() < 3e-7, "cos {x}: {c} vs {ec}");
        }
    }
}
