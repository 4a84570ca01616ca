//! Channels-last (NHWC) f32 CPU kernels shared by the VGG16 and Xception encoders.
//!
//! Each kernel reads its operand through a [`Pre`] transform (add a pending per-channel bias,
//! then ReLU), so that a layer's bias and activation cost no pass of their own: they are applied
//! by whichever kernel reads the layer's output next. Work is split over candle's thread count
//! with scoped threads. The ops have no backward: they are applied with `apply_op1` / `apply_op2`,
//! so that a gradient reaching them is an error (`BackwardNotSupported`) rather than silently
//! dropped (`apply_op*_no_bwd` would cut the graph).
//!
//! Files: [`im2col`] (im2col + GEMM convolution), [`winograd`] (Winograd F(2 x 2) / F(4 x 4, 3 x 3)
//! convolution), [`depthwise`] (depthwise 3 x 3), [`pool`] (max pooling), [`elementwise`]
//! (materialised `pre`, biased residual add); here the [`Pre`] transform they share.

mod depthwise;
mod elementwise;
mod im2col;
mod pool;
mod winograd;

use std::sync::Arc;

use candle_core::Tensor;

pub use depthwise::Depthwise3x3;
pub use elementwise::{AddBiased, Apply};
pub use im2col::{conv_im2col, Im2col};
pub use pool::MaxPool;
pub use winograd::{conv_winograd, winograd_tile, winograd_weight};

/// Upper bound on the elements of one im2col band (16 MiB of f32): larger inputs are
/// convolved band by band, each band one GEMM.
const BAND_ELEMS: usize = 1 << 22;

/// A tensor's elements on the host (for small per-channel vectors).
pub fn host(t: &Tensor) -> candle_core::Result<Arc<[f32]>> {
    Ok(t.flatten_all()?.to_vec1::<f32>()?.into())
}

/// Transform applied to an operand as a kernel reads it: `x + bias[c]`, then ReLU if `relu`.
#[derive(Debug, Clone, Default)]
pub struct Pre {
    pub bias: Option<Arc<[f32]>>,
    pub relu: bool,
}

impl Pre {
    pub fn none() -> Self {
        Self::default()
    }

    fn check(&self, c: usize, op: &str) -> candle_core::Result<()> {
        match &self.bias {
            Some(b) if b.len() != c => {
                candle_core::bail!("{op}: pending bias has {} channels, the input {c}", b.len())
            }
            _ => Ok(()),
        }
    }

    /// `pre(x)` from candle ops, for an NHWC tensor on any device (the portable path).
    pub fn portable(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let c = x.dim(candle_core::D::Minus1)?;
        self.check(c, "pre")?;
        let mut y = x.clone();
        if let Some(b) = &self.bias {
            y = y.broadcast_add(&Tensor::from_slice(b, c, x.device())?)?;
        }
        if self.relu {
            y = y.relu()?;
        }
        Ok(y)
    }

    /// dst = pre(src) for one pixel (or any whole number of pixels) of C channels.
    #[inline]
    fn pixels(&self, src: &[f32], dst: &mut [f32]) {
        match (&self.bias, self.relu) {
            (None, false) => dst.copy_from_slice(src),
            (None, true) => {
                for (d, &s) in dst.iter_mut().zip(src) {
                    *d = s.max(0.0);
                }
            }
            (Some(b), false) => {
                for (dpx, spx) in dst.chunks_exact_mut(b.len()).zip(src.chunks_exact(b.len())) {
                    for ((d, &s), &b) in dpx.iter_mut().zip(spx).zip(b.iter()) {
                        *d = s + b;
                    }
                }
            }
            (Some(b), true) => {
                for (dpx, spx) in dst.chunks_exact_mut(b.len()).zip(src.chunks_exact(b.len())) {
                    for ((d, &s), &b) in dpx.iter_mut().zip(spx).zip(b.iter()) {
                        *d = (s + b).max(0.0);
                    }
                }
            }
        }
    }
}

fn out_size(input: usize, k: usize, stride: usize, pad: usize) -> candle_core::Result<usize> {
    if input + 2 * pad < k {
        candle_core::bail!("kernel {k} larger than the padded input {input} + 2 * {pad}")
    }
    Ok((input + 2 * pad - k) / stride + 1)
}
