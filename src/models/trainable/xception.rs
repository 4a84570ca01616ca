//! Trainable Xception-shaped encoder: [`crate::models::xception::Xception`]'s function (timm's
//! legacy Xception up to the global average pool) in differentiable ops ([`super::ops`],
//! activations CBHW), with BatchNorm in
//! training or eval mode, under timm's names.

use std::collections::HashMap;

use candle_core::{Device, Result, Tensor};

use super::ops::{conv2d, depthwise3x3, max_pool, relu, swap_batch_channels, Depthwise};
use super::{bn_specs, BatchNorm, Init, Spec, Store, TrainableEncoder};
use crate::models::xception::{block_specs, Config};

/// The tensors of an Xception of geometry `cfg`, in initialisation order.
pub fn specs(cfg: &Config) -> Vec<Spec> {
    let mut out = Vec::new();
    let [s1, s2] = cfg.stem;
    let conv = |out: &mut Vec<Spec>, name: String, shape: &[usize]| {
        out.push(Spec::new(name, shape, Init::KaimingFanOut));
    };
    conv(&mut out, "conv1.weight".into(), &[s1, 3, 3, 3]);
    bn_specs(&mut out, "bn1", s1);
    conv(&mut out, "conv2.weight".into(), &[s2, s1, 3, 3]);
    bn_specs(&mut out, "bn2", s2);
    let sep = |out: &mut Vec<Spec>, prefix: &str, c: usize, o: usize| {
        out.push(Spec::new(
            format!("{prefix}.conv1.weight"),
            &[c, 1, 3, 3],
            Init::KaimingFanOut,
        ));
        out.push(Spec::new(
            format!("{prefix}.pointwise.weight"),
            &[o, c, 1, 1],
            Init::KaimingFanOut,
        ));
    };
    for (n, b) in block_specs(cfg).iter().enumerate() {
        let p = format!("block{}", n + 1);
        for i in 0..b.reps {
            let (c, o, k) = b.rep(i);
            sep(&mut out, &format!("{p}.rep.{k}"), c, o);
            bn_specs(&mut out, &format!("{p}.rep.{}", k + 1), o);
        }
        if b.has_skip() {
            conv(
                &mut out,
                format!("{p}.skip.weight"),
                &[b.c_out, b.c_in, 1, 1],
            );
            bn_specs(&mut out, &format!("{p}.skipbn"), b.c_out);
        }
    }
    let [c3, c4] = cfg.exit_convs;
    sep(&mut out, "conv3", cfg.exit, c3);
    bn_specs(&mut out, "bn3", c3);
    sep(&mut out, "conv4", c3, c4);
    bn_specs(&mut out, "bn4", c4);
    out
}

/// timm's `SeparableConv2d` (depthwise 3 x 3, pointwise 1 x 1, no biases) and the BN after it.
struct SepConv {
    depthwise: Tensor,
    pointwise: Tensor,
    bn: BatchNorm,
}

impl SepConv {
    fn new(store: &Store, prefix: &str, bn: &str, eps: f64) -> Result<Self> {
        Ok(Self {
            depthwise: store.var(&format!("{prefix}.conv1.weight"))?,
            pointwise: store.var(&format!("{prefix}.pointwise.weight"))?,
            bn: BatchNorm::new(store, bn, eps)?,
        })
    }

    /// The BN output, ReLU'd when `relu` (fused).
    fn forward_t(
        &self,
        x: &Tensor,
        train: bool,
        store: &Store,
        dw: Depthwise,
        relu: bool,
    ) -> Result<Tensor> {
        let y = depthwise3x3(x, &self.depthwise, dw)?;
        self.bn
            .forward_t(&conv2d(&y, &self.pointwise, 1, 0)?, train, store, relu)
    }
}

struct Block {
    seps: Vec<SepConv>,
    start_with_relu: bool,
    stride: usize,
    skip: Option<(Tensor, BatchNorm)>,
}

impl Block {
    fn forward_t(&self, inp: &Tensor, train: bool, store: &Store, dw: Depthwise) -> Result<Tensor> {
        // The ReLU before each separable convolution but the first is fused into the previous
        // BN; the first one reads the block input, which the skip needs unrectified.
        let mut y = if self.start_with_relu {
            relu(inp)?
        } else {
            inp.clone()
        };
        let n = self.seps.len();
        for (i, sep) in self.seps.iter().enumerate() {
            y = sep.forward_t(&y, train, store, dw, i + 1 < n)?;
        }
        if self.stride != 1 {
            y = max_pool(&y, 3, self.stride, 1)?;
        }
        let s = match &self.skip {
            None => inp.clone(),
            Some((w, bn)) => bn.forward_t(&conv2d(inp, w, self.stride, 0)?, train, store, false)?,
        };
        y + s
    }
}

pub struct TrainXception {
    conv1: (Tensor, BatchNorm),
    conv2: (Tensor, BatchNorm),
    blocks: Vec<Block>,
    conv3: SepConv,
    conv4: SepConv,
    cfg: Config,
    store: Store,
    depthwise: Depthwise,
}

impl TrainXception {
    /// A model of geometry `cfg` holding `tensors` (timm's names, e.g. from
    /// [`super::init_tensors`] or a saved `model.safetensors`).
    pub fn new(cfg: &Config, tensors: &HashMap<String, Tensor>, device: &Device) -> Result<Self> {
        cfg.validate()
            .map_err(|e| candle_core::Error::Msg(format!("Xception config: {e}")))?;
        let store = Store::new(&specs(cfg), tensors, device)?;
        let eps = cfg.bn_eps;
        let stem = |c: &str, bn: &str| -> Result<(Tensor, BatchNorm)> {
            Ok((
                store.var(&format!("{c}.weight"))?,
                BatchNorm::new(&store, bn, eps)?,
            ))
        };
        let (conv1, conv2) = (stem("conv1", "bn1")?, stem("conv2", "bn2")?);
        let mut blocks = Vec::new();
        for (n, b) in block_specs(cfg).iter().enumerate() {
            let p = format!("block{}", n + 1);
            let seps = (0..b.reps)
                .map(|i| {
                    let k = b.rep(i).2;
                    SepConv::new(
                        &store,
                        &format!("{p}.rep.{k}"),
                        &format!("{p}.rep.{}", k + 1),
                        eps,
                    )
                })
                .collect::<Result<_>>()?;
            let skip = if b.has_skip() {
                Some((
                    store.var(&format!("{p}.skip.weight"))?,
                    BatchNorm::new(&store, &format!("{p}.skipbn"), eps)?,
                ))
            } else {
                None
            };
            blocks.push(Block {
                seps,
                start_with_relu: b.start_with_relu,
                stride: b.stride,
                skip,
            });
        }
        Ok(Self {
            conv1,
            conv2,
            blocks,
            conv3: SepConv::new(&store, "conv3", "bn3", eps)?,
            conv4: SepConv::new(&store, "conv4", "bn4", eps)?,
            cfg: cfg.clone(),
            store,
            depthwise: Depthwise::Kernel,
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

    /// Chooses how depthwise convolutions are computed (the same function; for benchmarks).
    pub fn with_depthwise(mut self, how: Depthwise) -> Self {
        self.depthwise = how;
        self
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }
}

impl TrainableEncoder for TrainXception {
    fn architecture(&self) -> &'static str {
        "legacy_xception"
    }

    fn feature_dim(&self) -> usize {
        self.cfg.exit_convs[1]
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

    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let s = self.cfg.image_size;
        let (_, c, h, w) = x.dims4()?;
        if (c, h, w) != (3, s, s) {
            candle_core::bail!(
                "Xception: input must be [B, 3, {s}, {s}], got {:?}",
                x.dims()
            );
        }
        let st = &self.store;
        let dw = self.depthwise;
        let (w1, bn1) = &self.conv1;
        // CBHW inside (see `ops`).
        let x = swap_batch_channels(x)?;
        let x = bn1.forward_t(&conv2d(&x, w1, 2, 0)?, train, st, true)?;
        let (w2, bn2) = &self.conv2;
        let mut x = bn2.forward_t(&conv2d(&x, w2, 1, 0)?, train, st, true)?;
        for b in &self.blocks {
            x = b.forward_t(&x, train, st, dw)?;
        }
        let x = self.conv3.forward_t(&x, train, st, dw, true)?;
        let x = self.conv4.forward_t(&x, train, st, dw, true)?;
        // Global average pool: [C, B] -> [B, C].
        x.mean((2, 3))?.t()?.contiguous()
    }

    fn normalise(&self, v: f32, _c: usize) -> f32 {
        v / 127.5 - 1.0
    }
}
