//! Fused CPU kernels for SIREN sine layers.
//!
//! Built from candle ops, one sine layer is `matmul`, bias add, `* w0`, `sin` forward and
//! `cos`, two multiplies, a row sum and several gradient accumulations backward: each a full pass
//! over an [N, H] tensor (N = 50,176 pixels at 224 px) that allocates a fresh buffer, and
//! libm's scalar `sinf`. These kernels do the elementwise part in one parallel pass each way,
//! with a vectorisable sine/cosine. Work is split by fixed row blocks, never by thread count, and
//! partial sums are combined in block order, so results do not depend on scheduling.

use std::mem::MaybeUninit;

use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::f32_slice;

/// Rows per parallel work unit (and per partial bias-gradient sum).
const ROW_BLOCK: usize = 128;
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

/// `[z [N, H], b [H]] -> [2, N, H]`: `sin(w0 (z + b))` then its derivative w.r.t. z,
/// `w0 cos(w0 (z + b))`. No `bwd`: the SIREN's backward is written by hand (see `SirenTape`).
struct SineForward {
    w0: f32,
}

impl CustomOp2 for SineForward {
    fn name(&self) -> &'static str {
        "siren-sine-forward"
    }

    fn cpu_fwd(
        &self,
        z: &CpuStorage,
        lz: &Layout,
        b: &CpuStorage,
        lb: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (n, h) = lz.shape().dims2()?;
        let bias = f32_slice(b, lb, self.name())?;
        if bias.len() != h {
            candle_core::bail!(
                "{}: bias has {} values, expected {h}",
                self.name(),
                bias.len()
            )
        }
        let z = f32_slice(z, lz, self.name())?;
        let blk = ROW_BLOCK * h;
        let out = filled(2 * n * h, |out| {
            let (y, d) = out.split_at_mut(n * h);
            z.par_chunks(blk)
                .zip(y.par_chunks_mut(blk))
                .zip(d.par_chunks_mut(blk))
                .for_each(|((z, y), d)| sine_rows(z, bias, self.w0, y, d))
        });
        Ok((CpuStorage::F32(out), (2, n, h).into()))
    }
}

/// `sin(w0 (z + b))` and `w0 cos(w0 (z + b))` for z [N, H] and b [H], in one pass.
/// Off the CPU ([`super::native_kernels`]) the same from candle ops.
pub fn sine_forward(z: &Tensor, b: &Tensor, w0: f64) -> Result<(Tensor, Tensor)> {
    if !super::native_kernels(z.device()) {
        let t = (z.broadcast_add(b)? * w0)?;
        return Ok((t.sin()?, (t.cos()? * w0)?));
    }
    let out = z.apply_op2_no_bwd(b, &SineForward { w0: w0 as f32 })?;
    Ok((out.get(0)?, out.get(1)?))
}

/// `[g [N, H], d [N, H]] -> [N + blocks, H]`: rows 0..N are `g * d` (the gradient at the sine
/// layer's pre-activation), the following rows the column sums of each row block of it.
struct SineBackward;

impl CustomOp2 for SineBackward {
    fn name(&self) -> &'static str {
        "siren-sine-backward"
    }

    fn cpu_fwd(
        &self,
        g: &CpuStorage,
        lg: &Layout,
        d: &CpuStorage,
        ld: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (n, h) = lg.shape().dims2()?;
        if ld.shape().dims2()? != (n, h) {
            candle_core::bail!(
                "{}: shapes {:?} and {:?} differ",
                self.name(),
                lg.shape(),
                ld.shape()
            )
        }
        let g = f32_slice(g, lg, self.name())?;
        let d = f32_slice(d, ld, self.name())?;
        let blocks = n.div_ceil(ROW_BLOCK);
        let blk = ROW_BLOCK * h;
        let out = filled((n + blocks) * h, |out| {
            let (gz, partial) = out.split_at_mut(n * h);
            gz.par_chunks_mut(blk)
                .zip(partial.par_chunks_mut(h))
                .zip(g.par_chunks(blk).zip(d.par_chunks(blk)))
                .for_each(|((gz, sum), (g, d))| {
                    let mut acc = vec![0f32; h];
                    for ((gz, g), d) in gz
                        .chunks_exact_mut(h)
                        .zip(g.chunks_exact(h))
                        .zip(d.chunks_exact(h))
                    {
                        for j in 0..h {
                            let v = g[j] * d[j];
                            gz[j].write(v);
                            acc[j] += v;
                        }
                    }
                    for (s, a) in sum.iter_mut().zip(acc) {
                        s.write(a);
                    }
                })
        });
        Ok((CpuStorage::F32(out), (n + blocks, h).into()))
    }
}

/// For the gradient `g` at a sine layer's output and its derivative `d` from [`sine_forward`]:
/// the gradient at the pre-activation z, `g * d` [N, H], and the bias gradient [H]. The bias
/// gradient sums fixed row blocks, then the blocks in order (deterministic).
/// Off the CPU the same from candle ops (the bias sum in the backend's order).
pub fn sine_backward(g: &Tensor, d: &Tensor) -> Result<(Tensor, Tensor)> {
    if !super::native_kernels(g.device()) {
        let gz = g.mul(d)?;
        let gb = gz.sum(0)?;
        return Ok((gz, gb));
    }
    let n = g.dim(0)?;
    let out = g.apply_op2_no_bwd(d, &SineBackward)?;
    let rows = out.dim(0)?;
    let gz = out.narrow(0, 0, n)?;
    let gb = out.narrow(0, n, rows - n)?.sum(0)?;
    Ok((gz, gb))
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
