//! Convolution of an NHWC input by im2col + one GEMM per band: any kernel size, stride and
//! padding (VGG16's first layer, Xception's stem and 1 x 1 convolutions).

use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor};

use super::{out_size, Pre, BAND_ELEMS};
use crate::kernels::{f32_slice, native_kernels, par_rows};

/// im2col of an NHWC input [B, H, W, C] for a k x k kernel: output rows `rows` of the
/// flattened (b, oy) grid, each of Wo pixels, as [rows.len() * Wo, k * k * C] in (ky, kx, c)
/// order; padding reads as zero (after `pre`, as the convolution pads its actual input).
pub struct Im2col {
    pub k: usize,
    pub stride: usize,
    pub pad: usize,
    pub rows: std::ops::Range<usize>,
    pub pre: Pre,
}

impl CustomOp1 for Im2col {
    fn name(&self) -> &'static str {
        "im2col-nhwc"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = f32_slice(s, l, self.name())?;
        let (_, h, w, c) = l.shape().dims4()?;
        self.pre.check(c, self.name())?;
        let (k, st, pad) = (self.k, self.stride, self.pad);
        let (ho, wo) = (out_size(h, k, st, pad)?, out_size(w, k, st, pad)?);
        let kk = k * k * c;
        let n = self.rows.len();
        let mut out = vec![0f32; n * wo * kk];
        let r0 = self.rows.start;
        par_rows(&mut out, wo * kk, |first, band| {
            for (i, orow) in band.chunks_exact_mut(wo * kk).enumerate() {
                let r = r0 + first + i;
                let (b, oy) = (r / ho, r % ho);
                for ky in 0..k {
                    let iy = (oy * st + ky) as isize - pad as isize;
                    if iy < 0 || iy >= h as isize {
                        continue;
                    }
                    let irow = &x[(b * h + iy as usize) * w * c..][..w * c];
                    for (ox, px) in orow.chunks_exact_mut(kk).enumerate() {
                        for kx in 0..k {
                            let ix = (ox * st + kx) as isize - pad as isize;
                            if ix < 0 || ix >= w as isize {
                                continue;
                            }
                            let ix = ix as usize;
                            self.pre.pixels(
                                &irow[ix * c..(ix + 1) * c],
                                &mut px[(ky * k + kx) * c..][..c],
                            );
                        }
                    }
                }
            }
        });
        Ok((CpuStorage::F32(out), Shape::from((n * wo, kk))))
    }
}

/// Convolution of an NHWC input by im2col + GEMM: `weight` is [k*k*C, O] in (ky, kx, c)
/// order. The input is read through `pre`. Large inputs go band by band (each band's im2col at
/// most [`BAND_ELEMS`]). Returns [B, Ho, Wo, O] without bias.
pub fn conv_im2col(
    x: &Tensor,
    weight: &Tensor,
    k: usize,
    stride: usize,
    pad: usize,
    pre: &Pre,
) -> candle_core::Result<Tensor> {
    let (b, h, w, c) = x.dims4()?;
    let (ho, wo) = (out_size(h, k, stride, pad)?, out_size(w, k, stride, pad)?);
    let o = weight.dim(1)?;
    if !native_kernels(x.device()) {
        // candle's conv2d in NCHW, the weight back in [O, C, ky, kx].
        let w = weight
            .reshape((k, k, c, o))?
            .permute((3, 2, 0, 1))?
            .contiguous()?;
        let xin = pre.portable(x)?.permute((0, 3, 1, 2))?.contiguous()?;
        return xin
            .conv2d(&w, pad, stride, 1, 1)?
            .permute((0, 2, 3, 1))?
            .contiguous();
    }
    let row_elems = wo * k * k * c;
    let total = b * ho;
    let band = (BAND_ELEMS / row_elems.max(1)).clamp(1, total);
    let mut parts = Vec::with_capacity(total.div_ceil(band));
    let mut r = 0;
    while r < total {
        let end = (r + band).min(total);
        let cols = x.apply_op1(Im2col {
            k,
            stride,
            pad,
            rows: r..end,
            pre: pre.clone(),
        })?;
        parts.push(cols.matmul(weight)?);
        r = end;
    }
    let y = if parts.len() == 1 {
        parts.pop().expect("one part")
    } else {
        Tensor::cat(&parts, 0)?
    };
    y.reshape((b, ho, wo, o))
}
