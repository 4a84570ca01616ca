//! Trainable VGG16-shaped encoder: [`crate::models::vgg16::Vgg16`]'s function (3 x 3
//! convolutions + bias + ReLU, a 2 x 2 max pool per stage, fc1 over the whole final map, fc2,
//! both + ReLU) in differentiable ops ([`super::ops`], activations CBHW), under timm's names.

use std::collections::HashMap;

use candle_core::{Device, Result, Tensor};

use super::ops::{bias_relu, conv2d, max_pool, swap_batch_channels};
use super::{Init, Spec, Store, TrainableEncoder};
use crate::models::vgg16::{conv_indices, Config, IMAGENET_MEAN, IMAGENET_STD};

/// The tensors of a VGG16 of geometry `cfg`, in initialisation order.
pub fn specs(cfg: &Config) -> Vec<Spec> {
    let mut out = Vec::new();
    let mut idx = conv_indices(cfg).into_iter();
    let mut c_in = 3;
    for stage in &cfg.stages {
        for &o in stage {
            let i = idx.next().expect("one index per convolution");
            out.push(Spec::new(
                format!("features.{i}.weight"),
                &[o, c_in, 3, 3],
                Init::KaimingFanOut,
            ));
            out.push(Spec::new(format!("features.{i}.bias"), &[o], Init::Zeros));
            c_in = o;
        }
    }
    let (k, fc) = (cfg.final_map_size(), cfg.fc_dim);
    out.push(Spec::new(
        "pre_logits.fc1.weight",
        &[fc, c_in, k, k],
        Init::KaimingFanOut,
    ));
    out.push(Spec::new("pre_logits.fc1.bias", &[fc], Init::Zeros));
    out.push(Spec::new(
        "pre_logits.fc2.weight",
        &[fc, fc, 1, 1],
        Init::KaimingFanOut,
    ));
    out.push(Spec::new("pre_logits.fc2.bias", &[fc], Init::Zeros));
    out
}

pub struct TrainVgg16 {
    /// (weight [O, C, 3, 3], bias [O]) per convolution, stage by stage.
    stages: Vec<Vec<(Tensor, Tensor)>>,
    fc1: (Tensor, Tensor),
    fc2: (Tensor, Tensor),
    cfg: Config,
    store: Store,
}

impl TrainVgg16 {
    /// A model of geometry `cfg` holding `tensors` (timm's names, e.g. from
    /// [`super::init_tensors`] or a saved `model.safetensors`).
    pub fn new(cfg: &Config, tensors: &HashMap<String, Tensor>, device: &Device) -> Result<Self> {
        cfg.validate()
            .map_err(|e| candle_core::Error::Msg(format!("VGG16 config: {e}")))?;
        let store = Store::new(&specs(cfg), tensors, device)?;
        let mut idx = conv_indices(cfg).into_iter();
        let mut stages = Vec::new();
        for stage in &cfg.stages {
            let mut convs = Vec::new();
            for _ in stage {
                let i = idx.next().expect("one index per convolution");
                convs.push((
                    store.var(&format!("features.{i}.weight"))?,
                    store.var(&format!("features.{i}.bias"))?,
                ));
            }
            stages.push(convs);
        }
        let fc = |n: &str| -> Result<(Tensor, Tensor)> {
            Ok((
                store.var(&format!("pre_logits.{n}.weight"))?,
                store.var(&format!("pre_logits.{n}.bias"))?,
            ))
        };
        Ok(Self {
            stages,
            fc1: fc("fc1")?,
            fc2: fc("fc2")?,
            cfg: cfg.clone(),
            store,
        })
    }

    /// A freshly initialised model (see [`super`]).
    pub fn init(cfg: &Config, seed: u64, device: &Device) -> Result<Self> {
        Self::new(
            cfg,
            &super::init_tensors(&specs(cfg), seed, device)?,
            device,
        )
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }
}

/// x [B, F] -> relu(x W^T + b) for a weight stored as a convolution [O, ...].
fn dense_relu(x: &Tensor, (w, b): &(Tensor, Tensor)) -> Result<Tensor> {
    let o = w.dim(0)?;
    x.matmul(&w.reshape((o, ()))?.t()?)?
        .broadcast_add(b)?
        .relu()
}

impl TrainableEncoder for TrainVgg16 {
    fn architecture(&self) -> &'static str {
        "vgg16"
    }

    fn feature_dim(&self) -> usize {
        self.cfg.fc_dim
    }

    fn input_size(&self) -> usize {
        self.cfg.image_size
    }

    fn geometry(&self) -> serde_json::Value {
        serde_json::to_value(&self.cfg).expect("a config serialises")
    }

    fn store(&self) -> &Store {
        &self.store
    }

    /// No BatchNorm: training and eval mode are the same function.
    fn forward_t(&self, x: &Tensor, _train: bool) -> Result<Tensor> {
        let s = self.cfg.image_size;
        let (_, c, h, w) = x.dims4()?;
        if (c, h, w) != (3, s, s) {
            candle_core::bail!("VGG16: input must be [B, 3, {s}, {s}], got {:?}", x.dims());
        }
        // CBHW inside (see `ops`).
        let mut x = swap_batch_channels(x)?;
        for stage in &self.stages {
            for (w, b) in stage {
                x = bias_relu(&conv2d(&x, w, 1, 1)?, b)?;
            }
            x = max_pool(&x, 2, 2, 0)?;
        }
        // fc1 covers the whole final map: a product with the (c, y, x)-flattened map.
        let h = dense_relu(&swap_batch_channels(&x)?.flatten_from(1)?, &self.fc1)?;
        dense_relu(&h, &self.fc2)
    }

    fn normalise(&self, v: f32, c: usize) -> f32 {
        (v / 255.0 - IMAGENET_MEAN[c]) / IMAGENET_STD[c]
    }
}
