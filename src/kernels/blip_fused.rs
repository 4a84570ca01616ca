//! Forward-only f32 CPU kernels of BLIP's image tower (ViT-B/16 or ViT-L/16 at 384 px: 577 tokens,
//! where the attention's softmax and the MLP's GELU are as many element passes as the matrix
//! products have rows x columns): the exact GELU ([`FusedGelu`]) and self-attention with a
//! vectorised softmax ([`FastAttention`]). The element loops are compiled for AVX-512 and AVX2
//! and picked at run time (all paths give identical results: no fused multiply-adds), as SIREN's
//! kernels are ([`super::sine`]); work is split by rows or batch items, never shared, so results
//! do not depend on scheduling. BLIP is run, never trained, here: no backward.

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape};
use rayon::prelude::*;

use super::clip_fused::exp_poly;
use super::{f32_slice, gemm_1t};

/// `0.5 x (1 + erf(x / sqrt 2))`, with `1 + erf(z)` as `2 - erfc(|z|)` for z >= 0 and `erfc(|z|)`
/// for z < 0 (no cancellation in the negative tail), erfc from Abramowitz & Stegun 7.1.26
/// (absolute error <= 1.5e-7) with [`exp_poly`]: within 2e-7 x max(1, |x|) of the f64 formula.
#[inline(always)]
fn gelu_erf(x: f32) -> f32 {
    let z = (x * std::f32::consts::FRAC_1_SQRT_2).abs();
    let t = 1.0 / (1.0 + 0.327_591_1 * z);
    let poly = ((((1.061_405_4 * t - 1.453_152_1) * t + 1.421_413_8) * t - 0.284_496_72) * t
        + 0.254_829_6)
        * t;
    let erfc = poly * exp_poly(-z * z);
    let one_plus_erf = if x >= 0.0 { 2.0 - erfc } else { erfc };
    0.5 * x * one_plus_erf
}

#[inline(always)]
fn gelu_body(x: &[f32], y: &mut [f32]) {
    for (y, &x) in y.iter_mut().zip(x) {
        *y = gelu_erf(x);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn gelu_avx512(x: &[f32], y: &mut [f32]) {
    gelu_body(x, y)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn gelu_avx2(x: &[f32], y: &mut [f32]) {
    gelu_body(x, y)
}

fn gelu_slice(x: &[f32], y: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the feature was detected at run time.
            return unsafe { gelu_avx512(x, y) };
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: as above.
            return unsafe { gelu_avx2(x, y) };
        }
    }
    gelu_body(x, y)
}

/// The exact GELU (transformers' `"gelu"`), forward only. candle's `gelu_erf` calls a scalar f64
/// erf per element on one thread: at BLIP-base's 8 x 577 x 3072 activations a layer, about 6x
/// this kernel's time.
pub struct FusedGelu;

impl CustomOp1 for FusedGelu {
    fn name(&self) -> &'static str {
        "fused-gelu"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(s, l, self.name())?;
        let mut y = vec![0f32; x.len()];
        y.par_chunks_mut(1 << 14)
            .zip(x.par_chunks(1 << 14))
            .for_each(|(y, x)| gelu_slice(x, y));
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }
}

/// Each row of `p` ([rows, n]) replaced by `softmax(scale * row)`, the maximum and the sum kept
/// in 16 lanes so that the loops vectorise.
#[inline(always)]
fn softmax_rows_body(p: &mut [f32], n: usize, scale: f32) {
    const L: usize = 16;
    for r in p.chunks_exact_mut(n) {
        let mut lanes = [f32::NEG_INFINITY; L];
        let chunks = r.chunks_exact(L);
        let tail = chunks.remainder();
        for c in chunks {
            for i in 0..L {
                lanes[i] = if c[i] > lanes[i] { c[i] } else { lanes[i] };
            }
        }
        let mut max = f32::NEG_INFINITY;
        for &v in lanes.iter().chain(tail) {
            max = if v > max { v } else { max };
        }
        let shift = max * scale;
        for v in r.iter_mut() {
            *v = exp_poly(*v * scale - shift);
        }
        let mut sums = [0f32; L];
        let chunks = r.chunks_exact(L);
        let tail = chunks.remainder();
        for c in chunks {
            for i in 0..L {
                sums[i] += c[i];
            }
        }
        let sum: f32 = sums.iter().chain(tail).sum();
        let inv = 1.0 / sum;
        for v in r.iter_mut() {
            *v *= inv;
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn softmax_rows_avx512(p: &mut [f32], n: usize, scale: f32) {
    softmax_rows_body(p, n, scale)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn softmax_rows_avx2(p: &mut [f32], n: usize, scale: f32) {
    softmax_rows_body(p, n, scale)
}

fn softmax_rows(p: &mut [f32], n: usize, scale: f32) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the feature was detected at run time.
            return unsafe { softmax_rows_avx512(p, n, scale) };
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: as above.
            return unsafe { softmax_rows_avx2(p, n, scale) };
        }
    }
    softmax_rows_body(p, n, scale)
}

/// Multi-head self-attention, softmax(q k^T * scale) v, on the stacked projection `qkv`
/// [B, N, 3, H, hd] (f32, contiguous; transformers' BLIP layout) -> [B, N, H * hd], forward only.
/// Per head of each batch item: the scores as one matrix product on strided views of `qkv`, the
/// vectorised softmax, the product with v into the head's columns. Batch items are split between
/// threads. No mask (the image tower has none).
#[derive(Clone)]
pub struct FastAttention {
    pub heads: usize,
    pub scale: f32,
}

impl CustomOp1 for FastAttention {
    fn name(&self) -> &'static str {
        "fast-attention"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(s, l, self.name())?;
        let (b, n, three_d) = l.shape().dims3()?;
        let h = self.heads;
        if h == 0 || !three_d.is_multiple_of(3 * h) {
            candle_core::bail!("{}: bad shape {:?} for {h} heads", self.name(), l.dims())
        }
        let (hd, d) = (three_d / (3 * h), three_d / 3);
        let mut y = vec![0f32; b * n * d];
        y.par_chunks_mut(n * d)
            .zip(x.par_chunks(n * three_d))
            .for_each(|(y, x)| {
                let mut p = vec![0f32; n * n];
                for hh in 0..h {
                    // SAFETY: p is [n, n]; the q and k rows (n each) lie in x ([n, 3 d]).
                    unsafe {
                        gemm_1t(
                            (n, n, hd),
                            (p.as_mut_ptr(), n),
                            false,
                            x[hh * hd..].as_ptr(),
                            (three_d, 1),
                            x[(h + hh) * hd..].as_ptr(),
                            (1, three_d),
                        )
                    };
                    softmax_rows(&mut p, n, self.scale);
                    // SAFETY: y is [n, d] (this head's hd columns written), p [n, n], the v rows
                    // lie in x.
                    unsafe {
                        gemm_1t(
                            (n, hd, n),
                            (y[hh * hd..].as_mut_ptr(), d),
                            false,
                            p.as_ptr(),
                            (n, 1),
                            x[(2 * h + hh) * hd..].as_ptr(),
                            (three_d, 1),
                        )
                    };
                }
            });
        Ok((CpuStorage::F32(y), Shape::from((b, n, d))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Tensor, D};

    #[test]
    fn gelu_is_within_2e7_of_the_f64_formula() {
        let xs: Vec<f32> = (0..=400_000)
            .map(|i| -20.0 + 40.0 * i as f32 / 400_000.0)
            .collect();
        let t = Tensor::new(xs.as_slice(), &Device::Cpu).unwrap();
        let got: Vec<f32> = t.apply_op1_no_bwd(&FusedGelu).unwrap().to_vec1().unwrap();
        let want: Vec<f64> = t
            .to_dtype(DType::F64)
            .unwrap()
            .gelu_erf()
            .unwrap()
            .to_vec1()
            .unwrap();
        let mut worst = 0f64;
        for ((x, g), w) in xs.iter().zip(&got).zip(&want) {
            worst = worst.max((*g as f64 - w).abs() / (x.abs() as f64).max(1.0));
        }
        assert!(worst < 2e-7, "max error {worst:e}");
        // The dispatched paths and the portable body agree bit for bit.
        let mut plain = vec![0f32; xs.len()];
        gelu_body(&xs, &mut plain);
        assert_eq!(plain, got);
        assert_eq!(gelu_erf(0.0), 0.0);
        assert!(gelu_erf(-30.0).abs() < 1e-30 && gelu_erf(30.0) == 30.0);
    }

    #[test]
    fn attention_matches_basic_ops() {
        let dev = Device::Cpu;
        // n = 37: two 16-lane chunks and a tail in the softmax.
        let (b, n, heads, hd) = (2, 37, 3, 8);
        let len = b * n * 3 * heads * hd;
        let x: Vec<f32> = (0..len)
            .map(|i| ((i * 7919 % 1013) as f32 / 1013.0 - 0.5) * 3.0)
            .collect();
        let x = Tensor::from_vec(x, (b, n, 3 * heads * hd), &dev).unwrap();
        let scale = (hd as f64).powf(-0.5);
        let got = x
            .apply_op1_no_bwd(&FastAttention {
                heads,
                scale: scale as f32,
            })
            .unwrap();
        let qkv = x
            .reshape((b, n, 3, heads, hd))
            .unwrap()
            .permute((2, 0, 3, 1, 4))
            .unwrap()
            .contiguous()
            .unwrap();
        let (q, k, v) = (
            qkv.get(0).unwrap(),
            qkv.get(1).unwrap(),
            qkv.get(2).unwrap(),
        );
        let s = (q.matmul(&k.t().unwrap()).unwrap() * scale).unwrap();
        let p = candle_nn::ops::softmax(&s, D::Minus1).unwrap();
        let want = p
            .matmul(&v)
            .unwrap()
            .transpose(1, 2)
            .unwrap()
            .reshape((b, n, heads * hd))
            .unwrap();
        let max_abs = |t: &Tensor| {
            t.abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
        };
        let diff = max_abs(&(got - &want).unwrap());
        let scale_max = max_abs(&want);
        assert!(diff / scale_max < 1e-5, "{diff} / {scale_max}");
    }
}
