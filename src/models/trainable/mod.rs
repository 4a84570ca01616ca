//! Trainable twins of the captioners' encoders, for `roundtrip train --train-encoder`.
//!
//! The inference encoders ([`super::vgg16::Vgg16`], [`super::xception::Xception`]) are fast CPU
//! kernels without a backward (Winograd, NHWC, BatchNorm folded). The models here compute the
//! same functions in NCHW from differentiable pieces: candle ops (matmuls, `relu`, additions,
//! means) and custom ops with hand-written backwards, each checked against a candle-op
//! composition in value and gradient ([`ops`]: im2col convolution, BatchNorm, the depthwise
//! 3 x 3 convolution, max pooling), and hold their weights under **timm's tensor names**. [`save`] writes a folder (`config.json` with the
//! `roundtrip` geometry, `model.safetensors`) that `Vgg16::load` / `Xception::load` read: in eval
//! mode the trainable forward and the inference kernels agree to f32 rounding
//! (`tests/it/train_encoder.rs`).
//!
//! BatchNorm (Xception) follows `torch.nn.BatchNorm2d`: in training mode it normalises with the
//! batch's mean and biased variance over (B, H, W) and updates the running statistics with
//! momentum 0.1 (running_var from the unbiased variance); in eval mode it uses the running
//! statistics. Those live in the [`Store`] as buffers beside the trained parameters.
//!
//! Initialisation ([`init_tensors`]), as timm initialises both models: every convolution weight
//! (fc1 and fc2 of VGG16 are convolutions in timm) Kaiming-normal with fan_out and the ReLU gain,
//! std = sqrt(2 / (out_channels * kh * kw)) (PyTorch's fan for a depthwise [C, 1, 3, 3] weight
//! is 9 C); biases 0; BatchNorm weight 1, bias 0, running mean 0, running variance 1. Drawn on
//! the host from a seeded ChaCha8 stream, in the order of [`TrainableEncoder::specs`].

pub mod ops;
pub mod vgg16;
pub mod xception;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Mutex;

use candle_core::{DType, Device, Result, Tensor, Var};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::Distribution;

pub use ops::Depthwise;

/// How a tensor starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Init {
    /// Kaiming normal, fan_out, ReLU gain (a convolution weight).
    KaimingFanOut,
    Zeros,
    Ones,
    /// A buffer (not trained): BatchNorm's running mean.
    BufferZeros,
    /// A buffer (not trained): BatchNorm's running variance.
    BufferOnes,
}

impl Init {
    pub fn is_buffer(self) -> bool {
        matches!(self, Init::BufferZeros | Init::BufferOnes)
    }
}

/// One named tensor of a trainable model.
#[derive(Debug, Clone)]
pub struct Spec {
    pub name: String,
    pub shape: Vec<usize>,
    pub init: Init,
}

impl Spec {
    fn new(name: impl Into<String>, shape: &[usize], init: Init) -> Self {
        Self {
            name: name.into(),
            shape: shape.to_vec(),
            init,
        }
    }
}

/// The specs of a BatchNorm over `c` channels under `prefix`.
fn bn_specs(out: &mut Vec<Spec>, prefix: &str, c: usize) {
    out.push(Spec::new(format!("{prefix}.weight"), &[c], Init::Ones));
    out.push(Spec::new(format!("{prefix}.bias"), &[c], Init::Zeros));
    out.push(Spec::new(
        format!("{prefix}.running_mean"),
        &[c],
        Init::BufferZeros,
    ));
    out.push(Spec::new(
        format!("{prefix}.running_var"),
        &[c],
        Init::BufferOnes,
    ));
}

/// The ChaCha8 stream of a training seed that encoder initialisation draws from (the decoder's
/// initialisation uses stream 0 and epoch k uses stream k).
pub const INIT_STREAM: u64 = 1 << 40;

/// Initial values of `specs` (see the module documentation), drawn from `seed`.
pub fn init_tensors(specs: &[Spec], seed: u64, device: &Device) -> Result<HashMap<String, Tensor>> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(INIT_STREAM);
    let mut out = HashMap::new();
    for s in specs {
        let n: usize = s.shape.iter().product();
        let v: Vec<f32> = match s.init {
            Init::KaimingFanOut => {
                let fan_out = s.shape[0] * s.shape[2..].iter().product::<usize>();
                let std = (2.0 / fan_out.max(1) as f64).sqrt() as f32;
                let normal = rand_distr::Normal::new(0f32, std)
                    .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
                (0..n).map(|_| normal.sample(&mut rng)).collect()
            }
            Init::Zeros | Init::BufferZeros => vec![0.0; n],
            Init::Ones | Init::BufferOnes => vec![1.0; n],
        };
        out.insert(
            s.name.clone(),
            Tensor::from_vec(v, s.shape.as_slice(), device)?,
        );
    }
    Ok(out)
}

/// A trainable model's tensors: parameters ([`Var`]s, what the optimiser updates) and buffers
/// (running statistics, updated by training-mode forwards), under timm's names.
pub struct Store {
    vars: Vec<(String, Var)>,
    buffers: Mutex<BTreeMap<String, Tensor>>,
}

impl Store {
    /// Takes every tensor of `specs` from `tensors` (f32, the spec's shape); extra tensors (a
    /// classifier head, `num_batches_tracked`) are ignored.
    pub fn new(specs: &[Spec], tensors: &HashMap<String, Tensor>, device: &Device) -> Result<Self> {
        if !device.is_cpu() {
            candle_core::bail!(
                "the trainable encoders (train --train-encoder) have CPU kernels only: use --device cpu"
            )
        }
        let mut vars = Vec::new();
        let mut buffers = BTreeMap::new();
        for s in specs {
            let t = tensors
                .get(&s.name)
                .ok_or_else(|| candle_core::Error::Msg(format!("no tensor `{}`", s.name)))?;
            if t.dims() != s.shape.as_slice() {
                candle_core::bail!(
                    "tensor `{}` has shape {:?}, expected {:?}",
                    s.name,
                    t.dims(),
                    s.shape
                );
            }
            let t = t.to_dtype(candle_core::DType::F32)?.to_device(device)?;
            if s.init.is_buffer() {
                buffers.insert(s.name.clone(), t);
            } else {
                vars.push((s.name.clone(), Var::from_tensor(&t)?));
            }
        }
        Ok(Self {
            vars,
            buffers: Mutex::new(buffers),
        })
    }

    /// The trained parameters, in spec order.
    pub fn vars(&self) -> &[(String, Var)] {
        &self.vars
    }

    /// The tensor of parameter `name` (shares the variable's storage: updates are seen).
    pub fn var(&self, name: &str) -> Result<Tensor> {
        self.vars
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_tensor().clone())
            .ok_or_else(|| candle_core::Error::Msg(format!("no parameter `{name}`")))
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, BTreeMap<String, Tensor>>> {
        self.buffers
            .lock()
            .map_err(|_| candle_core::Error::Msg("poisoned buffer store".into()))
    }

    pub fn buffer(&self, name: &str) -> Result<Tensor> {
        self.lock()?
            .get(name)
            .cloned()
            .ok_or_else(|| candle_core::Error::Msg(format!("no buffer `{name}`")))
    }

    fn set_buffer(&self, name: &str, value: Tensor) -> Result<()> {
        match self.lock()?.get_mut(name) {
            Some(b) => {
                *b = value;
                Ok(())
            }
            None => candle_core::bail!("no buffer `{name}`"),
        }
    }

    /// Every buffer by name.
    pub fn buffers(&self) -> Result<BTreeMap<String, Tensor>> {
        Ok(self.lock()?.clone())
    }

    /// Replaces every buffer by the tensor of the same name in `values` (all must be there,
    /// with their shapes).
    pub fn restore_buffers(&self, values: &HashMap<String, Tensor>) -> Result<()> {
        let mut b = self.lock()?;
        for (name, t) in b.iter_mut() {
            let v = values
                .get(name)
                .ok_or_else(|| candle_core::Error::Msg(format!("no buffer `{name}` to restore")))?;
            if v.dims() != t.dims() {
                candle_core::bail!(
                    "buffer `{name}`: shape {:?}, expected {:?}",
                    v.dims(),
                    t.dims()
                );
            }
            *t = v.clone();
        }
        Ok(())
    }

    /// Parameters (detached) and buffers by name: what `model.safetensors` holds.
    pub fn tensors(&self) -> Result<HashMap<String, Tensor>> {
        let mut out: HashMap<String, Tensor> = self
            .vars
            .iter()
            .map(|(n, v)| (n.clone(), v.as_tensor().detach()))
            .collect();
        out.extend(self.buffers()?);
        Ok(out)
    }
}

/// `torch.nn.BatchNorm2d` (affine, running statistics, momentum 0.1) over NCHW tensors.
#[derive(Debug, Clone)]
pub struct BatchNorm {
    weight: Tensor,
    bias: Tensor,
    prefix: String,
    eps: f64,
}

/// PyTorch's default BatchNorm momentum.
pub const BN_MOMENTUM: f64 = 0.1;

impl BatchNorm {
    fn new(store: &Store, prefix: &str, eps: f64) -> Result<Self> {
        Ok(Self {
            weight: store.var(&format!("{prefix}.weight"))?,
            bias: store.var(&format!("{prefix}.bias"))?,
            prefix: prefix.to_owned(),
            eps,
        })
    }

    /// Training mode: batch statistics, running statistics updated in `store`. Eval mode: the
    /// running statistics. ReLU on the output when `relu`.
    fn forward_t(&self, x: &Tensor, train: bool, store: &Store, relu: bool) -> Result<Tensor> {
        let (b, _, h, w) = x.dims4()?;
        let (mean_name, var_name) = (
            format!("{}.running_mean", self.prefix),
            format!("{}.running_var", self.prefix),
        );
        let host = |name: &str| -> Result<Vec<f64>> {
            store.buffer(name)?.to_dtype(DType::F64)?.to_vec1::<f64>()
        };
        if !train {
            let (m, v) = (host(&mean_name)?, host(&var_name)?);
            let stats = Some((m.as_slice(), v.as_slice()));
            return Ok(ops::batch_norm(x, &self.weight, &self.bias, stats, self.eps, relu)?.0);
        }
        let (y, stats) = ops::batch_norm(x, &self.weight, &self.bias, None, self.eps, relu)?;
        let (mean, var) = stats.expect("batch statistics in training mode");
        // Running statistics as torch.nn.BatchNorm2d updates them (in f32, as torch does).
        let n = (b * h * w) as f64;
        let unbiased = if n > 1.0 { n / (n - 1.0) } else { 1.0 };
        let m = BN_MOMENTUM as f32;
        let update = |name: &str, batch: &[f64], factor: f64| -> Result<()> {
            let old: Vec<f32> = store.buffer(name)?.to_vec1()?;
            let new: Vec<f32> = old
                .iter()
                .zip(batch)
                .map(|(&r, &v)| (1.0 - m) * r + m * (v * factor) as f32)
                .collect();
            store.set_buffer(name, Tensor::from_vec(new, old.len(), x.device())?)
        };
        update(&mean_name, &mean, 1.0)?;
        update(&var_name, &var, unbiased)?;
        Ok(y)
    }
}

/// A trainable encoder: NCHW images [B, 3, S, S] (normalised as the inference encoder's
/// preprocessing does) -> features [B, D].
pub trait TrainableEncoder: Send + Sync {
    /// `architecture` of the saved config.json (`vgg16`, `legacy_xception`).
    fn architecture(&self) -> &'static str;
    fn feature_dim(&self) -> usize;
    fn input_size(&self) -> usize;
    /// The geometry, as the `roundtrip` object of config.json.
    fn geometry(&self) -> serde_json::Value;
    fn store(&self) -> &Store;
    /// Features; `train` selects BatchNorm's mode (and updates running statistics).
    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor>;
    /// The normalised value of a pixel value `v` in [0, 255] of channel `c`, exactly as the
    /// inference encoder's preprocessing maps bytes.
    fn normalise(&self, v: f32, c: usize) -> f32;
}

/// Writes `dir/config.json` (`architecture`, the `roundtrip` geometry, `about`) and
/// `dir/model.safetensors` (timm's names), each by an atomic rename, in the layout
/// `Vgg16::load` / `Xception::load` read.
pub fn save(enc: &dyn TrainableEncoder, dir: &Path, about: &str) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    crate::fsutil::write_safetensors(&dir.join("model.safetensors"), &enc.store().tensors()?)?;
    crate::fsutil::write_json(
        &dir.join("config.json"),
        &serde_json::json!({
            "architecture": enc.architecture(),
            "roundtrip": enc.geometry(),
            "about": about,
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::vgg16::TrainVgg16;
    use super::xception::TrainXception;
    use super::TrainableEncoder;
    use candle_core::{Device, Tensor};

    fn images(b: usize, s: usize) -> Tensor {
        let v: Vec<f32> = (0..b * 3 * s * s)
            .map(|i| ((i as u64).wrapping_mul(2654435761) % 2001) as f32 / 1000.0 - 1.0)
            .collect();
        Tensor::from_vec(v, (b, 3, s, s), &Device::Cpu).unwrap()
    }

    /// A loss on the features sends a non-zero gradient to every parameter, the first
    /// convolution's weight included, in training mode.
    fn gradients_reach_every_parameter(enc: &dyn TrainableEncoder, first: &str) {
        let f = enc.forward_t(&images(4, enc.input_size()), true).unwrap();
        assert_eq!(f.dims(), &[4, enc.feature_dim()]);
        let grads = f.sqr().unwrap().sum_all().unwrap().backward().unwrap();
        let norm = |name: &str| -> f32 {
            let var = &enc
                .store()
                .vars()
                .iter()
                .find(|(n, _)| n == name)
                .unwrap()
                .1;
            let g = grads
                .get(var.as_tensor())
                .unwrap_or_else(|| panic!("no gradient for {name}"));
            g.sqr().unwrap().sum_all().unwrap().to_scalar().unwrap()
        };
        assert!(norm(first) > 0.0, "zero gradient at {first}");
        for (name, _) in enc.store().vars() {
            let n = norm(name);
            assert!(n.is_finite(), "{name}: {n}");
        }
    }

    #[test]
    fn the_gradient_reaches_the_first_convolution() {
        let dev = Device::Cpu;
        let vgg = TrainVgg16::init(&crate::models::vgg16::Config::tiny(), 1, &dev).unwrap();
        gradients_reach_every_parameter(&vgg, "features.0.weight");
        let x = TrainXception::init(&crate::models::xception::Config::tiny(), 1, &dev).unwrap();
        gradients_reach_every_parameter(&x, "conv1.weight");
    }

    /// BatchNorm's running statistics move in training mode only, and eval mode is then a
    /// different function of the input than training mode.
    #[test]
    fn running_statistics_update_in_training_mode_only() {
        let dev = Device::Cpu;
        let x = TrainXception::init(&crate::models::xception::Config::tiny(), 2, &dev).unwrap();
        let before = x.store().buffer("bn1.running_mean").unwrap();
        let input = images(3, 32);
        x.forward_t(&input, false).unwrap();
        let same = x.store().buffer("bn1.running_mean").unwrap();
        let d0: f32 = (&same - &before)
            .unwrap()
            .abs()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar()
            .unwrap();
        assert_eq!(d0, 0.0);
        x.forward_t(&input, true).unwrap();
        let after = x.store().buffer("bn1.running_mean").unwrap();
        let d1: f32 = (&after - &before)
            .unwrap()
            .abs()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar()
            .unwrap();
        assert!(d1 > 0.0);
    }

    /// Initialisation follows timm: Kaiming-normal (fan_out) convolutions, BN 1 / 0, running
    /// variance 1; the same seed gives the same tensors.
    #[test]
    fn initialisation_is_seeded_and_scaled() {
        let dev = Device::Cpu;
        let cfg = crate::models::vgg16::Config::vgg16_shapes();
        let specs = super::vgg16::specs(&cfg);
        let a = super::init_tensors(&specs, 7, &dev).unwrap();
        let b = super::init_tensors(&specs, 7, &dev).unwrap();
        for s in &specs {
            let d: f32 = (&a[&s.name] - &b[&s.name])
                .unwrap()
                .abs()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar()
                .unwrap();
            assert_eq!(d, 0.0, "{}", s.name);
        }
        // features.24: a 3 x 3 convolution 64 -> 64: std sqrt(2 / (64 * 9)).
        let w: Vec<f32> = a["features.24.weight"]
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let std = (w.iter().map(|v| v * v).sum::<f32>() / w.len() as f32).sqrt();
        let expected = (2.0f32 / (64.0 * 9.0)).sqrt();
        assert!((std / expected - 1.0).abs() < 0.05, "{std} vs {expected}");
        let params: usize = specs
            .iter()
            .map(|s| s.shape.iter().product::<usize>())
            .sum();
        eprintln!("vgg16_shapes parameters: {params}");
        let xs = super::xception::specs(&crate::models::xception::Config::xception_shapes());
        let xp: usize = xs
            .iter()
            .filter(|s| !s.init.is_buffer())
            .map(|s| s.shape.iter().product::<usize>())
            .sum();
        eprintln!("xception_shapes parameters: {xp}");
        let t = super::init_tensors(&xs, 1, &dev).unwrap();
        let ones: Vec<f32> = t["bn1.running_var"].to_vec1().unwrap();
        assert!(ones.iter().all(|&v| v == 1.0));
    }
}
