//! A class-conditional BigGAN-deep trained by the tool (`roundtrip train-gan`, measured by
//! `roundtrip eval-gan`): Brock, Donahue and
//! Simonyan 2019, "Large Scale GAN Training for High Fidelity Natural Image Synthesis", with the
//! generator of [`crate::models::biggan`] (the same architecture and the published tensor names of
//! pytorch-pretrained-BigGAN's checkpoints, so `BigGan::load` runs a trained model unchanged) in
//! training mode, BigGAN-deep's discriminator (BigGAN-PyTorch's `BigGANdeep.py`) with a projection
//! head, hinge loss, an EMA of the generator and DiffAugment (Zhao et al. 2020).
//!
//! Training mode, as PyTorch's modules compute it:
//! - spectral norm (`torch.nn.utils.spectral_norm`, eps 1e-12): at each training forward ONE power
//!   iteration, v = normalize(W^T u), u = normalize(W v) (no gradient), then
//!   W / (u . W v) with the gradient flowing through W; u and v are kept as `weight_u` /
//!   `weight_v`, the raw weight as `weight_orig`, exactly as the published checkpoints store them;
//! - BatchNorm with the batch's statistics (biased variance), running statistics kept with
//!   momentum 0.1 (unbiased variance), conditional scale / offset from the conditioning vector;
//! - the shared class embedding: cond = cat(z, classes @ embeddings^T), multi-hot class vectors.
//!
//! Activations are CBHW ([C, B, H, W]) so that the convolutions and BatchNorms are the trainable
//! encoders' im2col and per-channel kernels ([`crate::models::trainable::ops`], CPU only, with
//! hand-written backwards checked against candle ops there); everything else is candle autograd.
//!
//! Files: here the pieces both networks share (orthogonal initialisation, the parameter store,
//! the spectral-norm weight); `generator`, `discriminator`, `diffaug`, `train` (the training
//! driver's [`crate::train::Trainer`], settings, standing statistics, the model folder); `eval`
//! (`roundtrip eval-gan`: class fidelity and the Frechet distance of a trained model).

pub mod diffaug;
pub mod discriminator;
pub mod eval;
pub mod generator;
pub mod settings;
pub mod train;

use std::collections::HashMap;

use candle_core::{Device, Result, Tensor, Var};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};

pub use discriminator::{DConfig, Discriminator};
pub use generator::Generator;
pub use settings::GanSettings;
pub use train::{train_gan, GanNets, GanTrainSummary, TrainGanRequest};

/// An orthogonal [rows, cols] matrix (`torch.nn.init.orthogonal_`: the Q of a Gaussian matrix's
/// QR, rows orthonormal when rows <= cols, else columns), by modified Gram-Schmidt in f64 on the
/// host from the seeded stream; row-major.
pub fn orthogonal(rows: usize, cols: usize, rng: &mut ChaCha8Rng) -> Vec<f32> {
    let (n, len) = if rows <= cols {
        (rows, cols)
    } else {
        (cols, rows)
    };
    let mut q: Vec<Vec<f64>> = Vec::with_capacity(n);
    for _ in 0..n {
        let mut v: Vec<f64> = (0..len).map(|_| StandardNormal.sample(rng)).collect();
        for b in &q {
            let d: f64 = v.iter().zip(b).map(|(x, y)| x * y).sum();
            v.iter_mut().zip(b).for_each(|(x, y)| *x -= d * y);
        }
        let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt().max(1e-12);
        v.iter_mut().for_each(|x| *x /= norm);
        q.push(v);
    }
    let mut out = vec![0f32; rows * cols];
    for r in 0..rows {
        for c in 0..cols {
            out[r * cols + c] = if rows <= cols { q[r][c] } else { q[c][r] } as f32;
        }
    }
    out
}

/// A unit vector of `n` Gaussian draws (the initial u and v of a spectral norm).
fn unit_normal(n: usize, rng: &mut ChaCha8Rng) -> Vec<f32> {
    let v: Vec<f64> = (0..n).map(|_| StandardNormal.sample(rng)).collect();
    let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt().max(1e-12);
    v.iter().map(|x| (x / norm) as f32).collect()
}

/// The trained parameters (candle `Var`s, by checkpoint name, in creation order) and the
/// buffers (spectral-norm vectors, running statistics) of one network.
pub struct Store {
    pub device: Device,
    pub params: Vec<(String, Var)>,
    pub rng: ChaCha8Rng,
}

impl Store {
    pub fn new(rng: ChaCha8Rng, device: &Device) -> Self {
        Self {
            device: device.clone(),
            params: Vec::new(),
            rng,
        }
    }

    fn var(&mut self, name: String, data: Vec<f32>, shape: &[usize]) -> Result<Var> {
        let v = Var::from_tensor(&Tensor::from_vec(data, shape, &self.device)?)?;
        self.params.push((name, v.clone()));
        Ok(v)
    }

    /// An orthogonally initialised weight ([out, rest] matrix view).
    pub fn ortho(&mut self, name: String, shape: &[usize]) -> Result<Var> {
        let rows = shape[0];
        let cols = shape.iter().skip(1).product();
        let data = orthogonal(rows, cols, &mut self.rng);
        self.var(name, data, shape)
    }

    pub fn constant(&mut self, name: String, value: f32, shape: &[usize]) -> Result<Var> {
        let n = shape.iter().product();
        self.var(name, vec![value; n], shape)
    }

    /// A spectral-norm weight `{prefix}.weight_orig` (orthogonal) with its u and v.
    pub fn sn(&mut self, prefix: &str, shape: &[usize]) -> Result<SnWeight> {
        let w = self.ortho(format!("{prefix}.weight_orig"), shape)?;
        let out = shape[0];
        let cols: usize = shape.iter().skip(1).product();
        let u = Tensor::from_vec(unit_normal(out, &mut self.rng), out, &self.device)?;
        let v = Tensor::from_vec(unit_normal(cols, &mut self.rng), cols, &self.device)?;
        Ok(SnWeight {
            name: prefix.to_string(),
            w,
            u,
            v,
        })
    }

    /// Parameter count.
    pub fn count(&self) -> usize {
        self.params.iter().map(|(_, v)| v.elem_count()).sum()
    }
}

/// How a forward treats the networks' state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// A training step: one power iteration per spectral norm, running statistics updated.
    Train,
    /// Batch statistics in BatchNorm but no state changed (dev evaluation, standing statistics).
    Frozen,
}

/// A spectral-norm weight: `weight_orig` (trained), `weight_u`, `weight_v` (buffers).
pub struct SnWeight {
    pub name: String,
    pub w: Var,
    pub u: Tensor,
    pub v: Tensor,
}

/// `torch.nn.functional.normalize`'s eps, which `torch.nn.utils.spectral_norm` uses.
const SN_EPS: f64 = 1e-12;

fn normalize(x: &Tensor) -> Result<Tensor> {
    let n = x.sqr()?.sum_all()?.sqrt()?.maximum(SN_EPS)?;
    x.broadcast_div(&n)
}

impl SnWeight {
    /// One power iteration on the current weight (no gradient).
    pub fn power_iteration(&mut self) -> Result<()> {
        let out = self.u.dim(0)?;
        let wm = self.w.as_tensor().detach().reshape((out, ()))?;
        let cols = wm.dim(1)?;
        self.v = normalize(&wm.t()?.matmul(&self.u.reshape((out, 1))?)?.flatten_all()?)?;
        self.u = normalize(&wm.matmul(&self.v.reshape((cols, 1))?)?.flatten_all()?)?;
        Ok(())
    }

    /// W / sigma with sigma = u . (W v); in [`Mode::Train`] after one power iteration.
    pub fn weight(&mut self, mode: Mode) -> Result<Tensor> {
        if mode == Mode::Train {
            self.power_iteration()?;
        }
        let w = self.w.as_tensor();
        let out = self.u.dim(0)?;
        let wm = w.reshape((out, ()))?;
        let cols = wm.dim(1)?;
        let sigma = self
            .u
            .reshape((1, out))?
            .matmul(&wm.matmul(&self.v.reshape((cols, 1))?)?)?
            .reshape(())?;
        w.broadcast_div(&sigma)
    }

    /// `{name}.weight_u` and `{name}.weight_v`.
    pub fn buffers(&self, out: &mut HashMap<String, Tensor>) {
        out.insert(format!("{}.weight_u", self.name), self.u.clone());
        out.insert(format!("{}.weight_v", self.name), self.v.clone());
    }

    /// Restores u and v from `state` (keys as [`Self::buffers`] writes them under `prefix`).
    pub fn restore(&mut self, state: &HashMap<String, Tensor>, prefix: &str) -> Result<()> {
        for (k, slot) in [("weight_u", &mut self.u), ("weight_v", &mut self.v)] {
            let key = format!("{prefix}{}.{k}", self.name);
            let t = state
                .get(&key)
                .ok_or_else(|| candle_core::Error::Msg(format!("checkpoint has no `{key}`")))?;
            if t.dims() != slot.dims() {
                candle_core::bail!(
                    "checkpoint `{key}` has shape {:?}, expected {:?}",
                    t.dims(),
                    slot.dims()
                )
            }
            *slot = t
                .to_device(slot.device())?
                .to_dtype(candle_core::DType::F32)?;
        }
        Ok(())
    }
}

/// Nearest x2 upsampling of the last two dimensions (any layout; reshape + broadcast).
pub fn upsample2x(x: &Tensor) -> Result<Tensor> {
    crate::models::biggan::upsample_nearest2x(x)
}

/// 2 x 2 average pooling with stride 2 of the last two dimensions (`nn.AvgPool2d(2)`; one custom
/// op each way, [`crate::models::trainable::ops::avg_pool2x`]).
pub fn avg_pool2x(x: &Tensor) -> Result<Tensor> {
    crate::models::trainable::ops::avg_pool2x(x)
}

/// Draws `n` standard normals (f32) from `rng`.
pub fn normals(n: usize, rng: &mut impl Rng) -> Vec<f32> {
    (0..n)
        .map(|_| {
            let x: f64 = StandardNormal.sample(rng);
            x as f32
        })
        .collect()
}
