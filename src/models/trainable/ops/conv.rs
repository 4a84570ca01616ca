//! Convolution of CBHW activations: im2col (a custom op whose backward is col2im) and one candle
//! matmul for the whole batch.

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};

use super::blocks;
use crate::kernels::f32_slice;

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::trainable::ops::test_util::{compare, randn, via_cbhw};
    use candle_core::Var;

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
}
