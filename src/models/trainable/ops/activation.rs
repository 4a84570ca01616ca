//! ReLU, and bias + ReLU, on CBHW activations: one pass each way (candle's `relu` backward takes
//! four).

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};

use super::blocks;
use crate::kernels::{f32_slice, par_rows};

/// ReLU in one pass each way (candle's backward of `relu` takes four).
pub fn relu(x: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op1(Relu)
}

struct Relu;

impl CustomOp1 for Relu {
    fn name(&self) -> &'static str {
        "relu"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(s, l, self.name())?;
        let mut out = vec![0f32; x.len()];
        let row = (*l.dims().last().unwrap_or(&1)).max(1);
        par_rows(&mut out, row, |first, band| {
            for (o, &v) in band.iter_mut().zip(&x[first * row..]) {
                *o = v.max(0.0);
            }
        });
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }

    fn bwd(&self, _arg: &Tensor, res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(res.apply_op2_no_bwd(&grad.contiguous()?, &ReluGrad)?))
    }
}

/// (y = relu(..), dy) -> dy where y > 0, else 0.
pub(super) struct ReluGrad;

impl CustomOp2 for ReluGrad {
    fn name(&self) -> &'static str {
        "relu-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let y = f32_slice(s1, l1, self.name())?;
        let g = f32_slice(s2, l2, self.name())?;
        if l1.dims() != l2.dims() {
            candle_core::bail!("relu grad: shapes {:?} {:?}", l1.dims(), l2.dims());
        }
        let mut out = vec![0f32; y.len()];
        let row = (*l1.dims().last().unwrap_or(&1)).max(1);
        par_rows(&mut out, row, |first, band| {
            let r = first * row..first * row + band.len();
            for ((o, &y), &g) in band.iter_mut().zip(&y[r.clone()]).zip(&g[r]) {
                *o = if y > 0.0 { g } else { 0.0 };
            }
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

/// relu(x + b) for x [C, B, H, W] and a per-channel bias b [C], one pass each way (the
/// backward takes its mask from the output).
pub fn bias_relu(x: &Tensor, b: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op2(&b.contiguous()?, BiasRelu)
}

struct BiasRelu;

impl CustomOp2 for BiasRelu {
    fn name(&self) -> &'static str {
        "bias-relu-cbhw"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(s1, l1, self.name())?;
        let bias = f32_slice(s2, l2, self.name())?;
        let c = l1.dims()[0];
        if bias.len() != c {
            candle_core::bail!("bias relu: {} biases for {c} channels", bias.len());
        }
        let len = x.len() / c.max(1);
        let mut out = vec![0f32; x.len()];
        blocks(&mut out, len, |ch, o| {
            let b = bias[ch];
            for (o, &v) in o.iter_mut().zip(&x[ch * len..(ch + 1) * len]) {
                *o = (v + b).max(0.0);
            }
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        _x: &Tensor,
        _b: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let c = res.dim(0)?;
        let gx = res.apply_op2_no_bwd(&grad.contiguous()?, &ReluGrad)?;
        let gb = gx.reshape((c, ()))?.sum(1)?;
        Ok((Some(gx), Some(gb)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::trainable::ops::test_util::{compare, randn, via_cbhw};
    use candle_core::Var;

    /// The ReLU ops agree with candle's `relu` and `broadcast_add` + `relu`.
    #[test]
    fn relu_ops_match_candle() {
        let x = Var::from_tensor(&randn(&[3, 4, 5, 6], 90)).unwrap();
        let b = Var::from_tensor(&randn(&[4], 81)).unwrap();
        let ours = relu(x.as_tensor()).unwrap();
        let theirs = x.as_tensor().relu().unwrap();
        compare(&ours, &theirs, &[&x], 91, 0.0, "relu");
        let ours = via_cbhw(x.as_tensor(), |x| bias_relu(x, b.as_tensor()).unwrap());
        let theirs = x
            .as_tensor()
            .broadcast_add(&b.as_tensor().reshape((1, 4, 1, 1)).unwrap())
            .unwrap()
            .relu()
            .unwrap();
        compare(&ours, &theirs, &[&x, &b], 82, 1e-5, "bias relu");
    }
}
