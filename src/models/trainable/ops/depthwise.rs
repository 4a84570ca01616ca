//! Depthwise 3 x 3 convolution, stride 1, padding 1, on CBHW activations (Xception's separable
//! convolutions), three ways ([`Depthwise`]); the custom kernel with a hand-written backward is
//! the default.

use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};

use super::{blocks, swap_batch_channels};
use crate::kernels::f32_slice;

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::trainable::ops::test_util::{compare, randn, via_cbhw};
    use candle_core::Var;

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
}
