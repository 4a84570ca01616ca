//! Depthwise 3 x 3 convolution of an NHWC input (Xception's separable convolutions): nine
//! shifted multiply-adds per output row, vectorised over the channels.

use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor};

use super::Pre;
use crate::kernels::{f32_slice, native_kernels, par_rows};

/// Depthwise 3 x 3 convolution, stride 1, padding 1, of an NHWC input read through `pre`:
/// out[b, y, x, c] = sum over (ky, kx) of taps[ky, kx, c] * pre(in)[b, y + ky - 1, x + kx - 1, c].
/// Nine shifted multiply-adds per output row, vectorised over the channels.
pub struct Depthwise3x3 {
    /// [3, 3, C] (ky, kx, c).
    pub taps: Arc<[f32]>,
    pub pre: Pre,
}

impl Depthwise3x3 {
    /// Applies the convolution: the CPU kernel, or nine shifted multiply-adds in candle ops
    /// elsewhere ([`native_kernels`]; candle's grouped conv2d runs one convolution per group).
    pub fn run(self, x: &Tensor) -> candle_core::Result<Tensor> {
        if native_kernels(x.device()) {
            return x.apply_op1(self);
        }
        let (_, h, w, c) = x.dims4()?;
        if self.taps.len() != 9 * c {
            candle_core::bail!(
                "depthwise: {} taps for {c} channels (expected {})",
                self.taps.len(),
                9 * c
            );
        }
        let taps = Tensor::from_slice(&self.taps, (9, c), x.device())?;
        let xp = self
            .pre
            .portable(x)?
            .pad_with_zeros(1, 1, 1)?
            .pad_with_zeros(2, 1, 1)?;
        let mut out: Option<Tensor> = None;
        for ky in 0..3 {
            for kx in 0..3 {
                let term = xp
                    .narrow(1, ky, h)?
                    .narrow(2, kx, w)?
                    .broadcast_mul(&taps.get(ky * 3 + kx)?)?;
                out = Some(match out {
                    None => term,
                    Some(o) => (o + term)?,
                });
            }
        }
        out.ok_or_else(|| candle_core::Error::Msg("depthwise: no taps".into()))
    }
}

impl CustomOp1 for Depthwise3x3 {
    fn name(&self) -> &'static str {
        "depthwise3x3-nhwc"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = f32_slice(s, l, self.name())?;
        let (b, h, w, c) = l.shape().dims4()?;
        self.pre.check(c, self.name())?;
        if self.taps.len() != 9 * c {
            candle_core::bail!(
                "depthwise: {} taps for {c} channels (expected {})",
                self.taps.len(),
                9 * c
            );
        }
        let row = w * c;
        let mut out = vec![0f32; b * h * row];
        let plain = self.pre.bias.is_none() && !self.pre.relu;
        par_rows(&mut out, row, |first, band| {
            let mut scratch = if plain { Vec::new() } else { vec![0f32; row] };
            for (i, orow) in band.chunks_exact_mut(row).enumerate() {
                let r = first + i;
                let (bi, y) = (r / h, r % h);
                for ky in 0..3 {
                    let iy = y as isize + ky as isize - 1;
                    if iy < 0 || iy >= h as isize {
                        continue;
                    }
                    let src = &x[(bi * h + iy as usize) * row..][..row];
                    let irow: &[f32] = if plain {
                        src
                    } else {
                        self.pre.pixels(src, &mut scratch);
                        &scratch
                    };
                    let t = &self.taps[ky * 3 * c..(ky + 1) * 3 * c];
                    let (t0, t1, t2) = (&t[..c], &t[c..2 * c], &t[2 * c..]);
                    // kx = 1: every column; kx = 0 / 2: all but the first / last.
                    fma(orow, irow, t1, c);
                    if w > 1 {
                        fma(&mut orow[c..], &irow[..row - c], t0, c);
                        fma(&mut orow[..row - c], &irow[c..], t2, c);
                    }
                }
            }
        });
        Ok((CpuStorage::F32(out), Shape::from((b, h, w, c))))
    }
}

/// o[p, c] += t[c] * i[p, c] over whole pixels of `c` channels.
#[inline]
fn fma(o: &mut [f32], i: &[f32], t: &[f32], c: usize) {
    for (op, ip) in o.chunks_exact_mut(c).zip(i.chunks_exact(c)) {
        for ((o, &i), &t) in op.iter_mut().zip(ip).zip(t) {
            *o += t * i;
        }
    }
}
