//! BigGAN-deep's layers, as pytorch-pretrained-BigGAN's modules (their `vb.pp(..)` names are the
//! checkpoint's): spectral-norm linear and convolution (eval mode: the stored u and v), the
//! conditional BatchNorm with per-truncation statistics, nearest x2 upsampling and 2 x 2 max
//! pooling as differentiable reshapes, the GenBlock and the self-attention block.

use candle_core::{DType, IndexOp, Result, Tensor, D};
use candle_nn::VarBuilder;

use super::{Config, Layer};
use crate::models::trainable::ops;

/// Spectral-norm weight in eval mode: weight_orig / (u . (W_mat v)), W_mat = [out, rest].
fn sn_weight(vb: &VarBuilder, shape: &[usize]) -> Result<Tensor> {
    let w = vb.get(shape, "weight_orig")?;
    let out = shape[0];
    let cols = w.elem_count() / out;
    let u = vb.get(out, "weight_u")?;
    let v = vb.get(cols, "weight_v")?;
    let wv = w.reshape((out, cols))?.matmul(&v.reshape((cols, 1))?)?;
    let sigma = u.reshape((1, out))?.matmul(&wv)?.reshape(())?;
    w.broadcast_div(&sigma)
}

/// Spectral-norm linear layer.
pub(super) struct SnLinear {
    /// [in, out] (transposed once here).
    wt: Tensor,
    bias: Option<Tensor>,
}

impl SnLinear {
    pub(super) fn new(vb: VarBuilder, din: usize, dout: usize, bias: bool) -> Result<Self> {
        let wt = sn_weight(&vb, &[dout, din])?.t()?.contiguous()?;
        let bias = if bias {
            Some(vb.get(dout, "bias")?)
        } else {
            None
        };
        Ok(Self { wt, bias })
    }

    /// [B, in] -> [B, out].
    pub(super) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = x.matmul(&self.wt)?;
        match &self.bias {
            Some(b) => y.broadcast_add(b),
            None => Ok(y),
        }
    }
}

/// Spectral-norm convolution, 1x1 (as a matrix product) or 3x3 with padding 1, with or without
/// bias.
pub(super) struct SnConv {
    /// [out, in, k, k]
    weight: Tensor,
    /// [1, out, 1, 1]
    bias: Option<Tensor>,
    kernel: usize,
}

impl SnConv {
    pub(super) fn new(
        vb: VarBuilder,
        cin: usize,
        cout: usize,
        kernel: usize,
        bias: bool,
    ) -> Result<Self> {
        let weight = sn_weight(&vb, &[cout, cin, kernel, kernel])?;
        let bias = if bias {
            Some(vb.get(cout, "bias")?.reshape((1, cout, 1, 1))?)
        } else {
            None
        };
        Ok(Self {
            weight,
            bias,
            kernel,
        })
    }

    /// Keeps the first `n` output channels (conv_to_rgb: only 3 of them are used).
    pub(super) fn first_outputs(self, n: usize) -> Result<Self> {
        Ok(Self {
            weight: self.weight.narrow(0, 0, n)?,
            bias: match self.bias {
                Some(b) => Some(b.narrow(1, 0, n)?),
                None => None,
            },
            kernel: self.kernel,
        })
    }

    pub(super) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, cin, h, w) = x.dims4()?;
        let cout = self.weight.dim(0)?;
        let y = if self.kernel == 1 {
            let wm = self.weight.reshape((cout, cin))?;
            wm.broadcast_matmul(&x.reshape((b, cin, h * w))?)?
                .reshape((b, cout, h, w))?
        } else if b == 1 && x.track_op() && x.device().is_cpu() && x.dtype() == DType::F32 {
            // One image on its way to a gradient (big-sleep's latents): [1, C, H, W] is CBHW, and
            // the CBHW convolution's input gradient (col2im) is faster than candle's transposed
            // convolution (100 big-sleep steps on the shapes BigGAN: 10.0 s -> 6.2 s).
            let x = x.reshape((cin, 1, h, w))?;
            ops::conv2d(&x, &self.weight, 1, self.kernel / 2)?.reshape((1, cout, h, w))?
        } else {
            x.conv2d(&self.weight, self.kernel / 2, 1, 1, 1)?
        };
        match &self.bias {
            Some(bias) => y.broadcast_add(bias),
            None => Ok(y),
        }
    }
}

/// Per-truncation BatchNorm statistics, conditional (scale / offset from the conditioning
/// vector) or not (weight / bias).
pub(super) struct BigGanBatchNorm {
    /// [n_stats, C]
    running_means: Tensor,
    running_vars: Tensor,
    eps: f64,
    affine: Affine,
}

enum Affine {
    Conditional { scale: SnLinear, offset: SnLinear },
    Plain { weight: Tensor, bias: Tensor },
}

impl BigGanBatchNorm {
    pub(super) fn new(
        vb: VarBuilder,
        c: usize,
        cond_dim: Option<usize>,
        cfg: &Config,
    ) -> Result<Self> {
        let running_means = vb.get((cfg.n_stats, c), "running_means")?;
        let running_vars = vb.get((cfg.n_stats, c), "running_vars")?;
        let affine = match cond_dim {
            Some(d) => Affine::Conditional {
                scale: SnLinear::new(vb.pp("scale"), d, c, false)?,
                offset: SnLinear::new(vb.pp("offset"), d, c, false)?,
            },
            None => Affine::Plain {
                weight: vb.get(c, "weight")?.reshape((1, c, 1, 1))?,
                bias: vb.get(c, "bias")?.reshape((1, c, 1, 1))?,
            },
        };
        Ok(Self {
            running_means,
            running_vars,
            eps: cfg.eps,
            affine,
        })
    }

    /// The statistics row for a truncation, blended as the reference does; [C].
    fn row(rows: &Tensor, (start, coef): (usize, f64)) -> Result<Tensor> {
        if coef != 0.0 {
            (rows.i(start)? * coef)? + (rows.i(start + 1)? * (1.0 - coef))?
        } else {
            rows.i(start)
        }
    }

    /// x [B, C, H, W]; cond [B, cond_dim] for the conditional kind.
    pub(super) fn forward(
        &self,
        x: &Tensor,
        rows: (usize, f64),
        cond: Option<&Tensor>,
    ) -> Result<Tensor> {
        let c = x.dim(1)?;
        let mean = Self::row(&self.running_means, rows)?.reshape((1, c, 1, 1))?;
        let std = (Self::row(&self.running_vars, rows)? + self.eps)?
            .sqrt()?
            .reshape((1, c, 1, 1))?;
        let xn = x.broadcast_sub(&mean)?.broadcast_div(&std)?;
        match (&self.affine, cond) {
            (Affine::Conditional { scale, offset }, Some(cond)) => {
                let b = cond.dim(0)?;
                let weight = (scale.forward(cond)? + 1.0)?.reshape((b, c, 1, 1))?;
                let bias = offset.forward(cond)?.reshape((b, c, 1, 1))?;
                xn.broadcast_mul(&weight)?.broadcast_add(&bias)
            }
            (Affine::Plain { weight, bias }, _) => xn.broadcast_mul(weight)?.broadcast_add(bias),
            (Affine::Conditional { .. }, None) => {
                candle_core::bail!("conditional BatchNorm without a condition")
            }
        }
    }
}

/// Nearest-neighbour x2 upsampling as reshape + broadcast (differentiable, and correct where
/// candle's `upsample_nearest2d` backward is not).
pub fn upsample_nearest2x(x: &Tensor) -> Result<Tensor> {
    let (b, c, h, w) = x.dims4()?;
    x.reshape((b, c, h, 1, w, 1))?
        .broadcast_as((b, c, h, 2, w, 2))?
        .reshape((b, c, 2 * h, 2 * w))
}

/// 2x2 max-pooling with stride 2 as a reshape and two max reductions: the gradient goes to the
/// maximum, as PyTorch's (candle 0.11's `max_pool2d` backward gives it a quarter of it).
pub fn max_pool2x(x: &Tensor) -> Result<Tensor> {
    let (b, c, h, w) = x.dims4()?;
    x.reshape((b, c, h / 2, 2, w / 2, 2))?.max(5)?.max(3)
}

pub(super) struct GenBlock {
    bn: [BigGanBatchNorm; 4],
    conv: [SnConv; 4],
    upsample: bool,
    /// Input channels the skip path keeps (in / 2 when the width changes).
    skip_channels: Option<usize>,
}

impl GenBlock {
    pub(super) fn new(vb: VarBuilder, layer: &Layer, cfg: &Config) -> Result<Self> {
        let ch = cfg.channel_width;
        let (cin, cout) = (layer.in_mult * ch, layer.out_mult * ch);
        let mid = cin / 4;
        let d = Some(cfg.cond_dim());
        let bn = [
            BigGanBatchNorm::new(vb.pp("bn_0"), cin, d, cfg)?,
            BigGanBatchNorm::new(vb.pp("bn_1"), mid, d, cfg)?,
            BigGanBatchNorm::new(vb.pp("bn_2"), mid, d, cfg)?,
            BigGanBatchNorm::new(vb.pp("bn_3"), mid, d, cfg)?,
        ];
        let conv = [
            SnConv::new(vb.pp("conv_0"), cin, mid, 1, true)?,
            SnConv::new(vb.pp("conv_1"), mid, mid, 3, true)?,
            SnConv::new(vb.pp("conv_2"), mid, mid, 3, true)?,
            SnConv::new(vb.pp("conv_3"), mid, cout, 1, true)?,
        ];
        Ok(Self {
            bn,
            conv,
            upsample: layer.upsample,
            skip_channels: (cin != cout).then_some(cin / 2),
        })
    }

    pub(super) fn forward(&self, x0: &Tensor, cond: &Tensor, rows: (usize, f64)) -> Result<Tensor> {
        let mut x = x0.clone();
        for i in 0..4 {
            x = self.bn[i].forward(&x, rows, Some(cond))?.relu()?;
            if i == 1 && self.upsample {
                x = upsample_nearest2x(&x)?;
            }
            x = self.conv[i].forward(&x)?;
        }
        let mut skip = match self.skip_channels {
            Some(n) => x0.narrow(1, 0, n)?,
            None => x0.clone(),
        };
        if self.upsample {
            skip = upsample_nearest2x(&skip)?;
        }
        x + skip
    }
}

/// SAGAN self-attention: theta, phi (C/8) and g (C/2) 1x1 convolutions, phi and g max-pooled by 2,
/// softmax(theta^T phi), o_conv back to C, x + gamma * attention.
pub(super) struct SelfAttn {
    theta: SnConv,
    phi: SnConv,
    g: SnConv,
    o: SnConv,
    gamma: Tensor,
}

impl SelfAttn {
    pub(super) fn new(vb: VarBuilder, c: usize) -> Result<Self> {
        Ok(Self {
            theta: SnConv::new(vb.pp("snconv1x1_theta"), c, c / 8, 1, false)?,
            phi: SnConv::new(vb.pp("snconv1x1_phi"), c, c / 8, 1, false)?,
            g: SnConv::new(vb.pp("snconv1x1_g"), c, c / 2, 1, false)?,
            o: SnConv::new(vb.pp("snconv1x1_o_conv"), c / 2, c, 1, false)?,
            gamma: vb.get(1, "gamma")?,
        })
    }

    pub(super) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, c, h, w) = x.dims4()?;
        let n = h * w;
        let theta = self.theta.forward(x)?.reshape((b, c / 8, n))?;
        let phi = max_pool2x(&self.phi.forward(x)?)?.reshape((b, c / 8, n / 4))?;
        let attn = theta.transpose(1, 2)?.matmul(&phi)?; // [B, n, n/4]
        let attn = candle_nn::ops::softmax(&attn, D::Minus1)?;
        let g = max_pool2x(&self.g.forward(x)?)?.reshape((b, c / 2, n / 4))?;
        let attn_g = g
            .matmul(&attn.transpose(1, 2)?)? // [B, c/2, n]
            .reshape((b, c / 2, h, w))?;
        let attn_g = self.o.forward(&attn_g)?;
        x + attn_g.broadcast_mul(&self.gamma)?
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, IndexOp};

    #[test]
    fn upsample_and_pool_are_nearest_and_max() {
        let x = Tensor::arange(0f32, 4., &Device::Cpu)
            .unwrap()
            .reshape((1, 1, 2, 2))
            .unwrap();
        let up = upsample_nearest2x(&x).unwrap();
        let v: Vec<Vec<f32>> = up.i((0, 0)).unwrap().to_vec2().unwrap();
        assert_eq!(
            v,
            vec![
                vec![0., 0., 1., 1.],
                vec![0., 0., 1., 1.],
                vec![2., 2., 3., 3.],
                vec![2., 2., 3., 3.]
            ]
        );
        let p = max_pool2x(&(up * -1.0).unwrap()).unwrap();
        let v: Vec<Vec<f32>> = p.i((0, 0)).unwrap().to_vec2().unwrap();
        assert_eq!(v, vec![vec![0., -1.], vec![-2., -3.]]);
    }

    #[test]
    fn max_pool_gradient_goes_to_the_maximum() {
        // As PyTorch's; candle 0.11's max_pool2d backward gives 0.25 here.
        let x = candle_core::Var::new(&[[[[1f32, 5.], [3., 4.]]]], &Device::Cpu).unwrap();
        let y = max_pool2x(x.as_tensor()).unwrap().sum_all().unwrap();
        let g = y.backward().unwrap();
        let g: Vec<f32> = g.get(&x).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(g, vec![0., 1., 0., 0.]);
    }

    #[test]
    fn upsample_gradient_sums_when_the_input_is_also_used_elsewhere() {
        // The skip-path pattern: y = up(x) summed with weights + x used again.
        let x = candle_core::Var::new(&[[[[1f32, 2.], [3., 4.]]]], &Device::Cpu).unwrap();
        let up = upsample_nearest2x(x.as_tensor()).unwrap();
        let w = Tensor::arange(0f32, 16., &Device::Cpu)
            .unwrap()
            .reshape((1, 1, 4, 4))
            .unwrap();
        let loss =
            ((up * w).unwrap().sum_all().unwrap() + x.as_tensor().sum_all().unwrap()).unwrap();
        let g = loss.backward().unwrap();
        let gx: Vec<Vec<f32>> = g.get(&x).unwrap().i((0, 0)).unwrap().to_vec2().unwrap();
        // Each input pixel receives the sum of its 2x2 block of w, plus 1.
        assert_eq!(gx, vec![vec![11., 19.], vec![43., 51.]]);
    }
}
