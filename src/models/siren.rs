//! SIREN (Sitzmann et al. 2020, "Implicit Neural Representations with Periodic Activation
//! Functions") as deep-daze (lucidrains, v0.11.1) uses it through siren-pytorch: an MLP from
//! (row, column) coordinates in [-1, 1] to RGB. No published checkpoint: weights are drawn with
//! deep-daze's initialisation; tensor names follow siren-pytorch's `SirenNet`
//! (`layers.{i}.weight` [out, in], `layers.{i}.bias`, `last_layer.weight`, `last_layer.bias`).

use candle_core::{DType, Device, Result, Tensor, Var};
use candle_nn::{Linear, Module, VarBuilder, VarMap};
use rand::{Rng, SeedableRng};
use serde::Serialize;

use crate::kernels::sine::{sine_layer_backward, sine_layer_forward};

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Config {
    /// Sine layers, the first one included (deep-daze's `num_layers`).
    pub layers: usize,
    pub hidden: usize,
    /// Frequency of the hidden sine layers.
    pub w0: f64,
    /// Frequency of the first sine layer.
    pub w0_initial: f64,
}

impl Default for Config {
    /// deep-daze's geometry: 16 layers of 256, w0 = 30.
    fn default() -> Self {
        Self {
            layers: 16,
            hidden: 256,
            w0: 30.0,
            w0_initial: 30.0,
        }
    }
}

pub struct Siren {
    layers: Vec<Linear>,
    last: Linear,
    cfg: Config,
}

impl Siren {
    pub fn new(vb: VarBuilder, cfg: &Config) -> Result<Self> {
        if cfg.layers == 0 || cfg.hidden == 0 {
            candle_core::bail!("SIREN needs at least one layer and a non-zero width")
        }
        let layers = (0..cfg.layers)
            .map(|i| {
                let din = if i == 0 { 2 } else { cfg.hidden };
                candle_nn::linear(din, cfg.hidden, vb.pp(format!("layers.{i}")))
            })
            .collect::<Result<Vec<_>>>()?;
        let last = candle_nn::linear(cfg.hidden, 3, vb.pp("last_layer"))?;
        Ok(Self {
            layers,
            last,
            cfg: cfg.clone(),
        })
    }

    /// Draws deep-daze's initialisation from `seed` on the host (candle's CPU RNG cannot be
    /// seeded): first layer U(-1/in, 1/in), later layers U(-sqrt(6/in)/w0, +sqrt(6/in)/w0).
    pub fn init(cfg: &Config, seed: u64, device: &Device) -> Result<(VarMap, Self)> {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let varmap = VarMap::new();
        {
            let mut data = varmap
                .data()
                .lock()
                .map_err(|_| candle_core::Error::Msg("poisoned var map".into()))?;
            let mut add = |name: String, shape: (usize, usize), bound: f64| -> Result<()> {
                let n = shape.0 * shape.1;
                let v: Vec<f32> = (0..n)
                    .map(|_| rng.random_range(-bound..bound) as f32)
                    .collect();
                let t = if shape.1 == 1 {
                    Tensor::from_vec(v, shape.0, device)?
                } else {
                    Tensor::from_vec(v, shape, device)?
                };
                data.insert(name, Var::from_tensor(&t)?);
                Ok(())
            };
            for i in 0..cfg.layers {
                let (din, bound) = if i == 0 {
                    (2, 1.0 / 2.0)
                } else {
                    (cfg.hidden, (6.0 / cfg.hidden as f64).sqrt() / cfg.w0)
                };
                add(format!("layers.{i}.weight"), (cfg.hidden, din), bound)?;
                add(format!("layers.{i}.bias"), (cfg.hidden, 1), bound)?;
            }
            let bound = (6.0 / cfg.hidden as f64).sqrt() / cfg.w0;
            add("last_layer.weight".into(), (3, cfg.hidden), bound)?;
            add("last_layer.bias".into(), (3, 1), bound)?;
        }
        let net = Self::new(VarBuilder::from_varmap(&varmap, DType::F32, device), cfg)?;
        Ok((varmap, net))
    }

    /// [N, 2] coordinates -> [N, 3] raw output (linear last layer).
    pub fn forward(&self, coords: &Tensor) -> Result<Tensor> {
        let mut x = coords.clone();
        for (i, layer) in self.layers.iter().enumerate() {
            let w0 = if i == 0 {
                self.cfg.w0_initial
            } else {
                self.cfg.w0
            };
            x = (layer.forward(&x)? * w0)?.sin()?;
        }
        self.last.forward(&x)
    }

    /// The image for an `h` x `w` grid from [`coord_grid`]: [3, h, w], clamp((out + 1) / 2, 0, 1).
    pub fn render(&self, coords: &Tensor, h: usize, w: usize) -> Result<Tensor> {
        let out = self.forward(coords)?;
        ((out.reshape((h, w, 3))?.permute((2, 0, 1))? + 1.0)? / 2.0)?.clamp(0f32, 1f32)
    }

    /// The trainable tensors in backward order of [`SirenTape::backward`]'s gradients:
    /// `layers.{i}.weight`, `layers.{i}.bias` for each layer, then `last_layer`'s.
    pub fn parameters(&self) -> Vec<Tensor> {
        let mut ps = Vec::with_capacity(2 * self.layers.len() + 2);
        for l in self.layers.iter().chain([&self.last]) {
            ps.push(l.weight().clone());
            if let Some(b) = l.bias() {
                ps.push(b.clone());
            }
        }
        ps
    }

    /// [`Self::render`] without candle's autograd (the result is detached), keeping what
    /// [`SirenTape::backward`] needs. The sine layers run as fused kernels ([`sine_layer_forward`]):
    /// autograd over the plain ops spends most of a guidance step on elementwise passes,
    /// allocations and zero-filled gradient accumulators over [pixels, hidden] tensors.
    pub fn render_taped(&self, coords: &Tensor, h: usize, w: usize) -> Result<(Tensor, SirenTape)> {
        let mut inputs = Vec::with_capacity(self.layers.len() + 1);
        let mut derivs = Vec::with_capacity(self.layers.len());
        let mut x = coords.detach();
        for (i, layer) in self.layers.iter().enumerate() {
            let w0 = if i == 0 {
                self.cfg.w0_initial
            } else {
                self.cfg.w0
            };
            let b = layer
                .bias()
                .ok_or_else(|| candle_core::Error::Msg("SIREN layer without bias".into()))?;
            let (y, d) = sine_layer_forward(&x, &layer.weight().detach(), &b.detach(), w0)?;
            inputs.push(x);
            derivs.push(d);
            x = y;
        }
        let out = self.last.forward(&x)?.detach();
        inputs.push(x);
        let image = ((out.reshape((h, w, 3))?.permute((2, 0, 1))? + 1.0)? / 2.0)?;
        // Clamp's gradient passes where min <= v <= max, as PyTorch's and candle's.
        let pass = image
            .ge(0f32)?
            .mul(&image.le(1f32)?)?
            .to_dtype(image.dtype())?;
        let image = image.clamp(0f32, 1f32)?.contiguous()?;
        Ok((
            image,
            SirenTape {
                inputs,
                derivs,
                pass,
                hw: (h, w),
            },
        ))
    }
}

/// What [`Siren::render_taped`] keeps for the backward: each layer's input and each sine
/// layer's derivative w.r.t. its pre-activation.
pub struct SirenTape {
    inputs: Vec<Tensor>,
    derivs: Vec<Tensor>,
    /// 1 where the clamp passed the gradient, 0 where it clipped: [3, h, w].
    pass: Tensor,
    hw: (usize, usize),
}

impl SirenTape {
    /// Gradients of the loss w.r.t. [`Siren::parameters`] (same order), given its gradient
    /// w.r.t. the rendered image [3, h, w]. Consumes the tape: each layer's saved tensors are
    /// freed as soon as its backward is done (they are most of a guidance step's memory).
    pub fn backward(self, net: &Siren, grad_image: &Tensor) -> Result<Vec<Tensor>> {
        let (h, w) = self.hw;
        let n = h * w;
        let (mut inputs, mut derivs) = (self.inputs, self.derivs);
        if inputs.len() != net.layers.len() + 1 || derivs.len() != net.layers.len() {
            candle_core::bail!("SIREN tape does not match the network")
        }
        let g = (grad_image.detach().mul(&self.pass)? * 0.5)?;
        let g_out = g.permute((1, 2, 0))?.reshape((n, 3))?.contiguous()?;
        let last_in = inputs.pop().expect("checked length");
        let mut grads = Vec::with_capacity(2 * net.layers.len() + 2);
        // Collected last to first, reversed at the end: bias then weight of each layer.
        grads.push(g_out.sum(0)?);
        grads.push(g_out.t()?.matmul(&last_in)?);
        drop(last_in);
        let mut g = g_out.matmul(&net.last.weight().detach())?;
        for (i, layer) in net.layers.iter().enumerate().rev() {
            let (x, d) = (
                inputs.pop().expect("checked length"),
                derivs.pop().expect("checked length"),
            );
            let (gin, gw, gb) = sine_layer_backward(&g, &d, &x, &layer.weight().detach(), i > 0)?;
            grads.push(gb);
            grads.push(gw);
            if let Some(gin) = gin {
                g = gin;
            }
        }
        grads.reverse();
        Ok(grads)
    }
}

/// siren-pytorch's input grid: meshgrid(linspace(-1, 1, h), linspace(-1, 1, w), "ij") flattened
/// row-major to [h * w, 2], the row coordinate first.
pub fn coord_grid(h: usize, w: usize, device: &Device) -> Result<Tensor> {
    let lin = |n: usize| -> Vec<f32> {
        if n == 1 {
            return vec![-1.0];
        }
        (0..n)
            .map(|i| -1.0 + 2.0 * i as f32 / (n - 1) as f32)
            .collect()
    };
    let (ys, xs) = (lin(h), lin(w));
    let mut v = Vec::with_capacity(h * w * 2);
    for y in &ys {
        for x in &xs {
            v.extend([*y, *x]);
        }
    }
    Tensor::from_vec(v, (h * w, 2), device)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_respects_deep_daze_bounds_and_is_seeded() {
        let cfg = Config {
            layers: 3,
            hidden: 64,
            w0: 30.0,
            w0_initial: 30.0,
        };
        let (vm, _) = Siren::init(&cfg, 7, &Device::Cpu).unwrap();
        let get = |vm: &VarMap, n: &str| -> Vec<f32> {
            vm.data().lock().unwrap()[n]
                .as_tensor()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap()
        };
        let first = get(&vm, "layers.0.weight");
        assert!(first.iter().all(|v| v.abs() <= 0.5) && first.iter().any(|v| v.abs() > 0.4));
        let hidden_bound = (6.0f32 / 64.0).sqrt() / 30.0;
        let hidden = get(&vm, "layers.1.weight");
        assert!(hidden.iter().all(|v| v.abs() <= hidden_bound));
        assert!(hidden.iter().any(|v| v.abs() > 0.9 * hidden_bound));
        let (vm2, _) = Siren::init(&cfg, 7, &Device::Cpu).unwrap();
        assert_eq!(
            get(&vm2, "last_layer.weight"),
            get(&vm, "last_layer.weight")
        );
        let (vm3, _) = Siren::init(&cfg, 8, &Device::Cpu).unwrap();
        assert_ne!(
            get(&vm3, "last_layer.weight"),
            get(&vm, "last_layer.weight")
        );
    }

    #[test]
    fn grid_is_row_major_row_first() {
        let g: Vec<Vec<f32>> = coord_grid(2, 3, &Device::Cpu).unwrap().to_vec2().unwrap();
        assert_eq!(
            g,
            vec![
                vec![-1.0, -1.0],
                vec![-1.0, 0.0],
                vec![-1.0, 1.0],
                vec![1.0, -1.0],
                vec![1.0, 0.0],
                vec![1.0, 1.0]
            ]
        );
    }
}
