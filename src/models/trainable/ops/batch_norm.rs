//! BatchNorm on CBHW activations with given (eval) or batch (training) statistics, optionally
//! fused with a ReLU; per-channel sums over one contiguous block each.

use std::sync::Arc;

use candle_core::{
    CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Tensor,
};

use super::activation::ReluGrad;
use super::blocks;
use crate::kernels::f32_slice;

/// Per-channel (mean, biased variance).
pub type ChannelStats = (Vec<f64>, Vec<f64>);

/// Per-channel (mean, biased variance) of x [C, B, H, W] over (B, H, W), summed in f64.
fn channel_stats(x: &Tensor) -> Result<ChannelStats> {
    let c = x.dim(0)?;
    let n = (x.elem_count() / c.max(1)).max(1) as f64;
    let v: Vec<f64> = x
        .contiguous()?
        .apply_op1_no_bwd(&ChannelMoments)?
        .to_dtype(DType::F64)?
        .flatten_all()?
        .to_vec1()?;
    let mean: Vec<f64> = (0..c).map(|k| v[2 * k] / n).collect();
    let var = (0..c)
        .map(|k| (v[2 * k + 1] / n - mean[k] * mean[k]).max(0.0))
        .collect();
    Ok((mean, var))
}

/// [C, ...] -> [C, 2]: each channel's sum and sum of squares (accumulated in f64).
struct ChannelMoments;

impl CustomOp1 for ChannelMoments {
    fn name(&self) -> &'static str {
        "channel-moments"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(s, l, self.name())?;
        let c = l.dims()[0];
        let len = x.len() / c.max(1);
        let mut out = vec![0f32; c * 2];
        blocks(&mut out, 2, |ch, o| {
            let (mut s, mut q) = (0f64, 0f64);
            for &v in &x[ch * len..(ch + 1) * len] {
                s += v as f64;
                q += (v as f64) * (v as f64);
            }
            o[0] = s as f32;
            o[1] = q as f32;
        });
        Ok((CpuStorage::F32(out), Shape::from((c, 2))))
    }
}

/// BatchNorm of x [C, B, H, W]: `(x - mean) * inv * gamma + beta`, then ReLU when `relu`.
/// With `stats` = None the statistics are the batch's own (training mode; returned as (mean,
/// biased variance)) and the backward accounts for their dependence on x:
/// dx = gamma inv (dy - mean(dy) - x_hat mean(dy x_hat)); with given (mean, variance) they are
/// constants (eval mode). dgamma = sum(dy x_hat), dbeta = sum(dy).
pub fn batch_norm(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    stats: Option<(&[f64], &[f64])>,
    eps: f64,
    relu: bool,
) -> Result<(Tensor, Option<ChannelStats>)> {
    let x = x.contiguous()?;
    let (batch, (mean, var)) = match stats {
        Some((m, v)) => (false, (m.to_vec(), v.to_vec())),
        None => (true, channel_stats(&x)?),
    };
    let op = BnOp {
        mean: mean.iter().map(|&m| m as f32).collect(),
        inv: var
            .iter()
            .map(|&v| (1.0 / (v + eps).sqrt()) as f32)
            .collect(),
        batch,
        relu,
    };
    let y = x.apply_op3(gamma, beta, op)?;
    Ok((y, batch.then_some((mean, var))))
}

struct BnOp {
    mean: Arc<[f32]>,
    inv: Arc<[f32]>,
    /// Whether the statistics are the batch's (training mode).
    batch: bool,
    /// Fused ReLU on the output (its mask is taken from the output in the backward).
    relu: bool,
}

impl CustomOp3 for BnOp {
    fn name(&self) -> &'static str {
        "batch-norm-cbhw"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(s1, l1, self.name())?;
        let gamma = f32_slice(s2, l2, self.name())?;
        let beta = f32_slice(s3, l3, self.name())?;
        let c = l1.dims()[0];
        if self.mean.len() != c || gamma.len() != c || beta.len() != c {
            candle_core::bail!("batch norm: parameters of the wrong size for {c} channels");
        }
        let len = x.len() / c.max(1);
        let mut out = vec![0f32; x.len()];
        blocks(&mut out, len, |ch, o| {
            let scale = self.inv[ch] * gamma[ch];
            let shift = beta[ch] - self.mean[ch] * scale;
            let src = &x[ch * len..(ch + 1) * len];
            if self.relu {
                for (o, &v) in o.iter_mut().zip(src) {
                    *o = (v * scale + shift).max(0.0);
                }
            } else {
                for (o, &v) in o.iter_mut().zip(src) {
                    *o = v * scale + shift;
                }
            }
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        _beta: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let grad = if self.relu {
            res.apply_op2_no_bwd(&grad.contiguous()?, &ReluGrad)?
        } else {
            grad.contiguous()?
        };
        let c = x.dim(0)?;
        let n = (x.elem_count() / c.max(1)).max(1) as f64;
        let sums: Vec<f64> = x
            .apply_op2_no_bwd(
                &grad,
                &BnGradSums {
                    mean: self.mean.clone(),
                    inv: self.inv.clone(),
                },
            )?
            .to_dtype(DType::F64)?
            .flatten_all()?
            .to_vec1()?;
        let (sdy, sdyx): (Vec<f64>, Vec<f64>) =
            (0..c).map(|k| (sums[2 * k], sums[2 * k + 1])).unzip();
        let dev = x.device();
        let to_t = |v: &[f64]| Tensor::from_vec(v.iter().map(|&s| s as f32).collect(), c, dev);
        let g: Vec<f32> = gamma.flatten_all()?.to_vec1()?;
        let per_channel = |f: &dyn Fn(usize) -> f64| (0..c).map(|k| f(k) as f32).collect();
        let dx = x.apply_op2_no_bwd(
            &grad,
            &BnGradInput {
                mean: self.mean.clone(),
                inv: self.inv.clone(),
                scale: per_channel(&|k| (g[k] * self.inv[k]) as f64),
                mean_dy: per_channel(&|k| if self.batch { sdy[k] / n } else { 0.0 }),
                mean_dyx: per_channel(&|k| if self.batch { sdyx[k] / n } else { 0.0 }),
            },
        )?;
        Ok((Some(dx), Some(to_t(&sdyx)?), Some(to_t(&sdy)?)))
    }
}

/// (x, dy) -> [C, 2]: per channel, sum(dy) and sum(dy x_hat).
struct BnGradSums {
    mean: Arc<[f32]>,
    inv: Arc<[f32]>,
}

impl CustomOp2 for BnGradSums {
    fn name(&self) -> &'static str {
        "batch-norm-grad-sums"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(s1, l1, self.name())?;
        let dy = f32_slice(s2, l2, self.name())?;
        let c = l1.dims()[0];
        let len = x.len() / c.max(1);
        let mut out = vec![0f32; c * 2];
        blocks(&mut out, 2, |ch, o| {
            let (m, inv) = (self.mean[ch], self.inv[ch]);
            let (mut s, mut q) = (0f64, 0f64);
            let r = ch * len..(ch + 1) * len;
            for (&x, &g) in x[r.clone()].iter().zip(&dy[r]) {
                s += g as f64;
                q += (g * (x - m) * inv) as f64;
            }
            o[0] = s as f32;
            o[1] = q as f32;
        });
        Ok((CpuStorage::F32(out), Shape::from((c, 2))))
    }
}

/// (x, dy) -> dx = scale (dy - mean_dy - x_hat mean_dyx), per channel.
struct BnGradInput {
    mean: Arc<[f32]>,
    inv: Arc<[f32]>,
    scale: Vec<f32>,
    mean_dy: Vec<f32>,
    mean_dyx: Vec<f32>,
}

impl CustomOp2 for BnGradInput {
    fn name(&self) -> &'static str {
        "batch-norm-grad-input"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(s1, l1, self.name())?;
        let dy = f32_slice(s2, l2, self.name())?;
        let c = l1.dims()[0];
        let len = x.len() / c.max(1);
        let mut out = vec![0f32; x.len()];
        blocks(&mut out, len, |ch, o| {
            let (m, inv, sc, mdy, mdyx) = (
                self.mean[ch],
                self.inv[ch],
                self.scale[ch],
                self.mean_dy[ch],
                self.mean_dyx[ch],
            );
            let r = ch * len..(ch + 1) * len;
            for ((o, &x), &g) in o.iter_mut().zip(&x[r.clone()]).zip(&dy[r]) {
                *o = sc * (g - mdy - (x - m) * inv * mdyx);
            }
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::trainable::ops::test_util::{compare, randn, via_cbhw};
    use candle_core::{Device, Var};

    /// The BatchNorm op agrees with its composition from candle ops: training mode (batch
    /// statistics, whose dependence on x the gradient includes; with the fused ReLU) and eval
    /// mode (given statistics).
    #[test]
    fn batch_norm_matches_candle_ops() {
        let dims = [3, 4, 5, 6];
        let x = Var::from_tensor(&(randn(&dims, 70).affine(2.0, 0.5).unwrap())).unwrap();
        let gamma = Var::from_tensor(&randn(&[4], 71)).unwrap();
        let beta = Var::from_tensor(&randn(&[4], 72)).unwrap();
        let eps = 1e-5;
        let sh = (1, 4, 1, 1);
        let (g4, b4) = (
            gamma.as_tensor().reshape(sh).unwrap(),
            beta.as_tensor().reshape(sh).unwrap(),
        );
        let (m, v) = (vec![0.3, -0.2, 0.1, 0.0], vec![1.5, 0.5, 2.0, 1.0]);
        for train in [true, false] {
            let xt = x.as_tensor();
            let (mean, var) = if train {
                let mean = xt.mean_keepdim((0, 2, 3)).unwrap();
                let var = xt
                    .broadcast_sub(&mean)
                    .unwrap()
                    .sqr()
                    .unwrap()
                    .mean_keepdim((0, 2, 3))
                    .unwrap();
                (mean, var)
            } else {
                let t = |v: &[f64]| {
                    let v: Vec<f32> = v.iter().map(|&a| a as f32).collect();
                    Tensor::from_vec(v, sh, &Device::Cpu).unwrap()
                };
                (t(&m), t(&v))
            };
            let theirs = xt
                .broadcast_sub(&mean)
                .unwrap()
                .broadcast_div(&(var + eps).unwrap().sqrt().unwrap())
                .unwrap()
                .broadcast_mul(&g4)
                .unwrap()
                .broadcast_add(&b4)
                .unwrap();
            let theirs = if train {
                theirs.relu().unwrap()
            } else {
                theirs
            };
            let stats = (!train).then_some((m.as_slice(), v.as_slice()));
            let ours = via_cbhw(xt, |x| {
                let (y, batch) =
                    batch_norm(x, gamma.as_tensor(), beta.as_tensor(), stats, eps, train).unwrap();
                assert_eq!(batch.is_some(), train);
                y
            });
            let what = format!("batch norm, train {train}");
            compare(&ours, &theirs, &[&x, &gamma, &beta], 73, 1e-4, &what);
        }
    }
}
