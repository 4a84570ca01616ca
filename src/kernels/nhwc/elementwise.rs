//! Elementwise NHWC kernels: a [`Pre`] transform materialised ([`Apply`]) and the residual add
//! of two branches with pending biases ([`AddBiased`]) (Xception).

use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Shape, Tensor};

use super::Pre;
use crate::kernels::{f32_slice, native_kernels, par_rows};

/// `pre(x)`, materialised.
pub struct Apply(pub Pre);

impl Apply {
    /// `pre(x)`: the CPU kernel, or candle ops elsewhere ([`native_kernels`]).
    pub fn run(self, x: &Tensor) -> candle_core::Result<Tensor> {
        if native_kernels(x.device()) {
            x.apply_op1(self)
        } else {
            self.0.portable(x)
        }
    }
}

impl CustomOp1 for Apply {
    fn name(&self) -> &'static str {
        "bias-relu-nhwc"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = f32_slice(s, l, self.name())?;
        let c = *l.dims().last().unwrap_or(&1);
        self.0.check(c, self.name())?;
        let mut out = vec![0f32; x.len()];
        let row = c.max(1); // bands of whole pixels
        par_rows(&mut out, row, |first, band| {
            self.0.pixels(&x[first * row..][..band.len()], band);
        });
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }
}

/// `(a + bias_a) + (b + bias_b)` for two NHWC tensors of one shape (a residual connection
/// whose two branches both have a pending bias, or none).
pub struct AddBiased {
    pub bias_a: Option<Arc<[f32]>>,
    pub bias_b: Option<Arc<[f32]>>,
}

impl AddBiased {
    /// `(a + bias_a) + (b + bias_b)`: the CPU kernel, or candle ops elsewhere.
    pub fn run(self, a: &Tensor, b: &Tensor) -> candle_core::Result<Tensor> {
        if native_kernels(a.device()) {
            return a.apply_op2(b, self);
        }
        let pa = Pre {
            bias: self.bias_a,
            relu: false,
        };
        let pb = Pre {
            bias: self.bias_b,
            relu: false,
        };
        pa.portable(a)? + pb.portable(b)?
    }
}

impl CustomOp2 for AddBiased {
    fn name(&self) -> &'static str {
        "add-biased-nhwc"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let a = f32_slice(s1, l1, self.name())?;
        let b = f32_slice(s2, l2, self.name())?;
        if l1.dims() != l2.dims() {
            candle_core::bail!("add: shapes {:?} and {:?} differ", l1.dims(), l2.dims());
        }
        let c = *l1.dims().last().unwrap_or(&1);
        // The two pending biases sum into one, applied while adding.
        let bias: Option<Vec<f32>> = match (&self.bias_a, &self.bias_b) {
            (None, None) => None,
            (Some(x), None) | (None, Some(x)) => Some(x.to_vec()),
            (Some(x), Some(y)) => Some(x.iter().zip(y.iter()).map(|(x, y)| x + y).collect()),
        };
        if bias.as_ref().is_some_and(|v| v.len() != c) {
            candle_core::bail!("add: pending bias does not have {c} channels");
        }
        let mut out = vec![0f32; a.len()];
        let row = c.max(1); // bands of whole pixels
        par_rows(&mut out, row, |first, band| {
            let (a, b) = (
                &a[first * row..][..band.len()],
                &b[first * row..][..band.len()],
            );
            match &bias {
                None => {
                    for ((o, &x), &y) in band.iter_mut().zip(a).zip(b) {
                        *o = x + y;
                    }
                }
                Some(bias) => {
                    for ((op, ap), bp) in band
                        .chunks_exact_mut(c)
                        .zip(a.chunks_exact(c))
                        .zip(b.chunks_exact(c))
                    {
                        for (((o, &x), &y), &z) in op.iter_mut().zip(ap).zip(bp).zip(bias) {
                            *o = x + y + z;
                        }
                    }
                }
            }
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}
