//! Convolution of CBHW activations: im2col and one matrix product for the whole batch, as ONE
//! node of candle's graph whose backward is written here (the weight's gradient, and col2im of
//! the columns' gradient).

use candle_core::{CpuStorage, CustomOp1, CustomOp3, Layout, Result, Shape, Tensor};

use super::blocks;
use crate::kernels::f32_slice;

/// Convolution of x [C, B, H, W] with w [O, C, k, k] (timm's layout, no bias), `stride`, zero
/// `pad` -> [O, B, Ho, Wo]: Caffe's im2col ([`Im2col`]) and one matrix product
/// [O, C k k] x [C k k, B Ho Wo] (a 1 x 1 convolution with stride 1 multiplies x itself).
/// (candle's own `conv2d` computes its input gradient with a direct transposed convolution that
/// is several times slower on the CPU.)
///
/// The columns are computed outside the graph and the product is one custom op ([`Conv`]) whose
/// backward computes the weight's gradient and col2im of the columns' gradient directly: as
/// im2col -> reshape -> matmul -> reshape in candle ops, the same gemm calls give the same
/// values, but candle's backward then adds every node's gradient to a zero tensor of its size
/// (the columns' is k^2 times the input's) and spends a training step's largest share doing so.
/// The input's gradient is skipped when x is not part of a graph (an input image).
pub fn conv2d(x: &Tensor, w: &Tensor, stride: usize, pad: usize) -> Result<Tensor> {
    let (c, b, h, wd) = x.dims4()?;
    let (o, c2, k, k2) = w.dims4()?;
    if c2 != c || k != k2 {
        candle_core::bail!("conv2d: input {:?}, weight {:?}", x.dims(), w.dims());
    }
    let op = Im2col { k, stride, pad };
    let (ho, wo) = (op.out(h)?, op.out(wd)?);
    let direct = k == 1 && stride == 1 && pad == 0;
    let cols = if direct {
        x.detach().contiguous()?.reshape((c, b * h * wd))?
    } else {
        x.detach().contiguous()?.apply_op1_no_bwd(&op)?
    };
    x.apply_op3(
        &w.contiguous()?,
        &cols,
        Conv {
            im2col: (!direct).then_some(op),
            out: (o, b, ho, wo),
        },
    )
}

/// (x, w, columns of x) -> w [O, C k k] x columns, shaped [O, B, Ho, Wo]; x is there for its
/// gradient only.
struct Conv {
    /// How the columns were made (`None`: they are x itself).
    im2col: Option<Im2col>,
    out: (usize, usize, usize, usize),
}

impl CustomOp3 for Conv {
    fn name(&self) -> &'static str {
        "conv-cbhw"
    }

    fn cpu_fwd(
        &self,
        _s1: &CpuStorage,
        _l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let w = f32_slice(s2, l2, self.name())?;
        let cols = f32_slice(s3, l3, self.name())?;
        let (ckk, n) = l3.shape().dims2()?;
        let o = l2.dims()[0];
        if w.len() != o * ckk || n != self.out.1 * self.out.2 * self.out.3 || o != self.out.0 {
            candle_core::bail!("conv: weight {:?}, columns {:?}", l2.dims(), l3.dims());
        }
        let mut out = vec![0f32; o * n];
        // SAFETY: the slices hold [o, ckk], [ckk, n] and [o, n] row-major matrices.
        unsafe { candle_matmul((o, n, ckk), &mut out, w, cols) };
        Ok((CpuStorage::F32(out), Shape::from(self.out)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        cols: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        // The products candle's matmul backward computes, on the same layouts.
        let (ckk, n) = cols.dims2()?;
        let o = self.out.0;
        let g = grad.contiguous()?.reshape((o, n))?;
        let w2 = w.detach().reshape((o, ckk))?;
        // Frozen weights (big-sleep's generator) need no gradient.
        let dw = if w.track_op() {
            Some(g.matmul(&cols.t()?)?.reshape(w.dims())?)
        } else {
            None
        };
        let dx = if x.track_op() {
            let dcols = w2.t()?.matmul(&g)?;
            Some(match self.im2col {
                Some(op) => {
                    let (_, b, h, wd) = x.dims4()?;
                    dcols.apply_op1_no_bwd(&Col2im { op, b, h, w: wd })?
                }
                None => dcols.reshape(x.dims())?,
            })
        } else {
            None
        };
        Ok((dx, dw, None))
    }
}

/// `dst = a @ b` for row-major [m, k] and [k, n] matrices with exactly the gemm call candle's
/// CPU matmul makes for contiguous operands (so that the values are candle's, bit for bit).
///
/// # Safety
/// `dst`, `a` and `b` must hold m n, m k and k n elements.
unsafe fn candle_matmul((m, n, k): (usize, usize, usize), dst: &mut [f32], a: &[f32], b: &[f32]) {
    let threads = candle_core::utils::get_num_threads();
    let parallelism = if threads > 1 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    gemm::gemm(
        m,
        n,
        k,
        dst.as_mut_ptr(),
        1,
        n as isize,
        false,
        a.as_ptr(),
        1,
        k as isize,
        b.as_ptr(),
        1,
        n as isize,
        0.0,
        1.0,
        false,
        false,
        false,
        parallelism,
    )
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

    /// Im2col as a graph node with col2im as its backward: the composition [`conv2d`] replaces.
    struct Im2colNode(Im2col);

    impl CustomOp1 for Im2colNode {
        fn name(&self) -> &'static str {
            "im2col-node"
        }

        fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
            self.0.cpu_fwd(s, l)
        }

        fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
            let (_, b, h, w) = arg.dims4()?;
            let g = grad.contiguous()?.apply_op1_no_bwd(&Col2im {
                op: self.0,
                b,
                h,
                w,
            })?;
            Ok(Some(g))
        }
    }

    /// The one-node convolution gives the values and gradients of im2col -> reshape -> matmul
    /// -> reshape in candle ops bit for bit (the same gemm calls), and leaves out the input's
    /// gradient when the input is no graph's.
    #[test]
    fn conv_node_is_the_candle_composition() {
        for (i, &(dims, o, k, stride, pad)) in [
            ([3, 2, 9, 9], 4, 3, 1, 1),
            ([3, 2, 9, 9], 5, 3, 2, 0),
            ([4, 2, 5, 5], 6, 1, 1, 0),
            ([4, 2, 7, 7], 6, 1, 2, 0),
        ]
        .iter()
        .enumerate()
        {
            let x = Var::from_tensor(&randn(&dims, 70 + i as u64)).unwrap();
            let w = Var::from_tensor(&randn(&[o, dims[0], k, k], 80 + i as u64)).unwrap();
            let ours = conv2d(x.as_tensor(), w.as_tensor(), stride, pad).unwrap();
            let op = Im2col { k, stride, pad };
            let (c, b, h, wd) = x.as_tensor().dims4().unwrap();
            let (ho, wo) = (op.out(h).unwrap(), op.out(wd).unwrap());
            let cols = if k == 1 && stride == 1 {
                x.as_tensor().reshape((c, b * h * wd)).unwrap()
            } else {
                x.as_tensor().apply_op1(Im2colNode(op)).unwrap()
            };
            let theirs = w
                .as_tensor()
                .reshape((o, c * k * k))
                .unwrap()
                .matmul(&cols)
                .unwrap()
                .reshape((o, b, ho, wo))
                .unwrap();
            compare(&ours, &theirs, &[&x, &w], 90 + i as u64, 0.0, "conv node");
            // An input outside the graph: the weight's gradient only.
            let y = conv2d(&x.as_tensor().detach(), w.as_tensor(), stride, pad).unwrap();
            let g = y.sum_all().unwrap().backward().unwrap();
            assert!(g.get(w.as_tensor()).is_some() && g.get(x.as_tensor()).is_none());
        }
    }
}
