//! k x k max pooling with stride and padding on CBHW activations, PyTorch's semantics (padding
//! never wins; the gradient goes to the first maximum of each window in scan order); 2 x 2
//! average pooling with stride 2.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};

use super::blocks;
use crate::kernels::f32_slice;

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

/// 2 x 2 average pooling with stride 2 of the maps of x [.., .., H, W] (any 4-d layout whose
/// last two dimensions are the map; H and W even), as `nn.AvgPool2d(2)`, in one pass each way.
/// The values are those of the candle ops `reshape (.., H/2, 2, W/2, 2)`, `sum(5)`, `sum(3)`,
/// `* 0.25` (the same additions in the same order), and so are the gradients.
pub fn avg_pool2x(x: &Tensor) -> Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    if h % 2 != 0 || w % 2 != 0 {
        candle_core::bail!("avg pool 2x2: odd map {h} x {w}");
    }
    x.contiguous()?.apply_op1(AvgPool2)
}

struct AvgPool2;

impl CustomOp1 for AvgPool2 {
    fn name(&self) -> &'static str {
        "avg-pool-2x2"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(s, l, self.name())?;
        let (d0, d1, h, w) = l.shape().dims4()?;
        let (ho, wo) = (h / 2, w / 2);
        let mut out = vec![0f32; d0 * d1 * ho * wo];
        blocks(&mut out, ho * wo, |p, o| {
            let m = &x[p * h * w..][..h * w];
            for oy in 0..ho {
                let (r0, r1) = (&m[2 * oy * w..][..w], &m[(2 * oy + 1) * w..][..w]);
                for (ox, v) in o[oy * wo..][..wo].iter_mut().enumerate() {
                    let top = r0[2 * ox] + r0[2 * ox + 1];
                    let bottom = r1[2 * ox] + r1[2 * ox + 1];
                    // `x * 0.25` is candle's affine, x * 0.25 + 0 (which makes -0 +0).
                    *v = (top + bottom) * 0.25 + 0.0;
                }
            }
        });
        Ok((CpuStorage::F32(out), Shape::from((d0, d1, ho, wo))))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let g = grad.contiguous()?.apply_op1_no_bwd(&AvgPool2Grad)?;
        if g.dims() != arg.dims() {
            candle_core::bail!("avg pool 2x2 grad: {:?} for {:?}", g.dims(), arg.dims());
        }
        Ok(Some(g))
    }
}

/// Gradient of the pooled maps -> gradient of the input: a quarter of it to each pixel of the
/// window.
struct AvgPool2Grad;

impl CustomOp1 for AvgPool2Grad {
    fn name(&self) -> &'static str {
        "avg-pool-2x2-grad"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = f32_slice(s, l, self.name())?;
        let (d0, d1, ho, wo) = l.shape().dims4()?;
        let (h, w) = (2 * ho, 2 * wo);
        let mut out = vec![0f32; d0 * d1 * h * w];
        blocks(&mut out, h * w, |p, o| {
            let gp = &g[p * ho * wo..][..ho * wo];
            for (y, row) in o.chunks_exact_mut(w).enumerate() {
                let grow = &gp[(y / 2) * wo..][..wo];
                for (x, v) in row.iter_mut().enumerate() {
                    *v = grow[x / 2] * 0.25 + 0.0;
                }
            }
        });
        Ok((CpuStorage::F32(out), Shape::from((d0, d1, h, w))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::trainable::ops::test_util::{compare, max_rel, randn};
    use candle_core::Var;

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

    /// Average pooling gives the values and gradients of the candle ops it replaces, bit for bit.
    #[test]
    fn avg_pool_is_the_candle_composition() {
        let x = Var::from_tensor(&randn(&[3, 2, 8, 6], 4)).unwrap();
        let ours = avg_pool2x(x.as_tensor()).unwrap();
        let theirs = (x
            .as_tensor()
            .reshape((3, 2, 4, 2, 3, 2))
            .unwrap()
            .sum(5)
            .unwrap()
            .sum(3)
            .unwrap()
            * 0.25)
            .unwrap();
        compare(&ours, &theirs, &[&x], 5, 0.0, "avg pool 2x2");
        assert!(avg_pool2x(&randn(&[1, 1, 3, 4], 6)).is_err());
    }
}
