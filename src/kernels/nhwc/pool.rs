//! Max pooling of an NHWC input read through [`Pre`] (VGG16's 2 x 2 pools, Xception's 3 x 3
//! stride-2 pools).

use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor};

use super::{out_size, Pre};
use crate::kernels::{f32_slice, native_kernels, par_rows};

/// Max pooling of an NHWC input read through `pre`; padding positions are ignored (as
/// PyTorch's -inf padding), floor mode.
pub struct MaxPool {
    pub k: usize,
    pub stride: usize,
    pub pad: usize,
    pub pre: Pre,
}

impl MaxPool {
    /// Applies the pool: the CPU kernel, or candle ops elsewhere ([`native_kernels`]).
    pub fn run(self, x: &Tensor) -> candle_core::Result<Tensor> {
        if native_kernels(x.device()) {
            return x.apply_op1(self);
        }
        let (k, st, pad) = (self.k, self.stride, self.pad);
        if pad * 2 > k {
            candle_core::bail!("max pool: padding {pad} more than half the kernel {k}");
        }
        let mut y = self.pre.portable(x)?;
        if pad > 0 {
            // -inf padding on H and W (dims 1 and 2): never the maximum.
            for dim in [1, 2] {
                let mut dims = y.dims().to_vec();
                dims[dim] = pad;
                let fill = Tensor::full(f32::NEG_INFINITY, dims, y.device())?;
                y = Tensor::cat(&[&fill, &y, &fill], dim)?;
            }
        }
        y.permute((0, 3, 1, 2))?
            .max_pool2d_with_stride(k, st)?
            .permute((0, 2, 3, 1))?
            .contiguous()
    }
}

impl CustomOp1 for MaxPool {
    fn name(&self) -> &'static str {
        "max-pool-nhwc"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = f32_slice(s, l, self.name())?;
        let (b, h, w, c) = l.shape().dims4()?;
        self.pre.check(c, self.name())?;
        let (k, st, pad) = (self.k, self.stride, self.pad);
        if pad * 2 > k {
            candle_core::bail!("max pool: padding {pad} more than half the kernel {k}");
        }
        let (ho, wo) = (out_size(h, k, st, pad)?, out_size(w, k, st, pad)?);
        let mut out = vec![f32::NEG_INFINITY; b * ho * wo * c];
        par_rows(&mut out, wo * c, |first, band| {
            let mut tmp = vec![0f32; c];
            for (i, orow) in band.chunks_exact_mut(wo * c).enumerate() {
                let r = first + i;
                let (bi, oy) = (r / ho, r % ho);
                for ky in 0..k {
                    let iy = (oy * st + ky) as isize - pad as isize;
                    if iy < 0 || iy >= h as isize {
                        continue;
                    }
                    let irow = &x[(bi * h + iy as usize) * w * c..][..w * c];
                    for (ox, px) in orow.chunks_exact_mut(c).enumerate() {
                        for kx in 0..k {
                            let ix = (ox * st + kx) as isize - pad as isize;
                            if ix < 0 || ix >= w as isize {
                                continue;
                            }
                            let ix = ix as usize;
                            self.pre.pixels(&irow[ix * c..(ix + 1) * c], &mut tmp);
                            for (o, &v) in px.iter_mut().zip(&tmp) {
                                *o = o.max(v);
                            }
                        }
                    }
                }
            }
        });
        Ok((CpuStorage::F32(out), Shape::from((b, ho, wo, c))))
    }
}
