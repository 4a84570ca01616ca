//! BigGAN-deep's discriminator (BigGAN-PyTorch's `BigGANdeep.py`, `Discriminator`), with spectral
//! norm on every layer and a projection head (Miyato and Koyama 2018):
//! - `input_conv` 3x3, 3 -> ch (3 + 2 -> ch with `coords`: CoordConv's x and y maps, Liu et al.
//!   2018, beside the pixels, so that D sees where a shape is: the head sums over positions, and
//!   in the shapes world a position is part of the phrase);
//! - per stage k (one per halving of the image down to 4 x 4): `depth` DBlocks, the first taking
//!   ch 2^k -> ch 2^(k+1) channels and downsampling; a DBlock is ReLU-conv1 1x1 (-> out / 4),
//!   ReLU-conv2 3x3, ReLU-conv3 3x3, ReLU, [2 x 2 average pool], conv4 1x1 (-> out), plus the
//!   shortcut: [average pool], then, when the width grows, cat(x, conv_sc(x)) (1x1, in -> out - in);
//! - ReLU, sum over the pixels (h [B, C]), output = linear(h) + sum(embed(y) * h), with y the
//!   multi-hot class vector (embed(y) = y @ embed.weight, [num_classes, C]).
//!
//! Tensor names: `input_conv.*`, `blocks.{i}.conv{1..4}.*`, `blocks.{i}.conv_sc.*`, `linear.*`,
//! `embed.*`, each spectral-norm weight as `weight_orig` / `weight_u` / `weight_v` (the layout of
//! `tests/fixtures/make_gan_fixtures.py`'s PyTorch twin). Activations are CBHW.

use std::collections::HashMap;

use candle_core::{Result, Tensor};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::generator::{SnConv, SnLinear};
use super::{avg_pool2x, Mode, SnWeight, Store};
use crate::models::trainable::ops;

/// The discriminator's geometry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DConfig {
    /// Channels after `input_conv` (the widths double per stage).
    pub ch: usize,
    /// Side of the input images (a power of two, at least 8).
    pub image_size: usize,
    /// DBlocks per stage (BigGAN-deep: 2).
    pub depth: usize,
    pub num_classes: usize,
    /// Two coordinate channels (x, then y, each from -1 to 1) beside the image's three.
    #[serde(default)]
    pub coords: bool,
}

impl DConfig {
    /// (in, out, downsample) per DBlock.
    pub fn blocks(&self) -> Vec<(usize, usize, bool)> {
        let stages = (self.image_size / 4).max(1).ilog2() as usize;
        let mut out = Vec::new();
        for k in 0..stages {
            let (cin, cout) = (self.ch << k, self.ch << (k + 1));
            for d in 0..self.depth {
                out.push((if d == 0 { cin } else { cout }, cout, d == 0));
            }
        }
        out
    }

    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.image_size < 8 || !self.image_size.is_power_of_two() {
            return Err(format!(
                "image size {} must be a power of two, at least 8",
                self.image_size
            ));
        }
        if self.ch < 2 || self.depth == 0 || self.num_classes == 0 {
            return Err(format!(
                "discriminator width {} must be at least 2 and depth {} at least 1",
                self.ch, self.depth
            ));
        }
        Ok(())
    }

    /// Channels of the features the head sees.
    pub fn out_channels(&self) -> usize {
        self.blocks().last().map_or(self.ch, |b| b.1)
    }
}

struct DBlock {
    conv: Vec<SnConv>,
    sc: Option<SnConv>,
    down: bool,
}

pub struct Discriminator {
    pub store: Store,
    pub cfg: DConfig,
    input_conv: SnConv,
    blocks: Vec<DBlock>,
    linear: SnLinear,
    embed: SnWeight,
    /// [`coordinate_maps`] when `cfg.coords`.
    coords: Option<Tensor>,
}

/// [2, 1, S, S]: the column's and the row's coordinate, each from -1 to 1 (built once; each
/// forward broadcasts it over the batch).
fn coordinate_maps(size: usize, device: &candle_core::Device) -> Result<Tensor> {
    let line: Vec<f32> = (0..size)
        .map(|i| -1.0 + 2.0 * i as f32 / (size - 1) as f32)
        .collect();
    let xs = Tensor::from_vec(line.clone(), (1, 1, 1, size), device)?;
    let ys = Tensor::from_vec(line, (1, 1, size, 1), device)?;
    let shape = (1, 1, size, size);
    Tensor::cat(&[&xs.broadcast_as(shape)?, &ys.broadcast_as(shape)?], 0)
}

impl Discriminator {
    pub fn new(cfg: &DConfig, rng: ChaCha8Rng, device: &candle_core::Device) -> Result<Self> {
        cfg.validate().map_err(candle_core::Error::Msg)?;
        let mut st = Store::new(rng, device);
        let cin = if cfg.coords { 5 } else { 3 };
        let input_conv = SnConv::new(&mut st, "input_conv", cin, cfg.ch, 3, true)?;
        let mut blocks = Vec::new();
        for (i, (cin, cout, down)) in cfg.blocks().into_iter().enumerate() {
            let p = format!("blocks.{i}");
            let hid = (cout / 4).max(1);
            let conv = vec![
                SnConv::new(&mut st, &format!("{p}.conv1"), cin, hid, 1, true)?,
                SnConv::new(&mut st, &format!("{p}.conv2"), hid, hid, 3, true)?,
                SnConv::new(&mut st, &format!("{p}.conv3"), hid, hid, 3, true)?,
                SnConv::new(&mut st, &format!("{p}.conv4"), hid, cout, 1, true)?,
            ];
            let sc = if cout > cin {
                Some(SnConv::new(
                    &mut st,
                    &format!("{p}.conv_sc"),
                    cin,
                    cout - cin,
                    1,
                    true,
                )?)
            } else {
                None
            };
            blocks.push(DBlock { conv, sc, down });
        }
        let c = cfg.out_channels();
        let linear = SnLinear::new(&mut st, "linear", c, 1, true)?;
        let embed = st.sn("embed", &[cfg.num_classes, c])?;
        let coords = if cfg.coords {
            Some(coordinate_maps(cfg.image_size, device)?)
        } else {
            None
        };
        Ok(Self {
            coords,
            store: st,
            cfg: cfg.clone(),
            input_conv,
            blocks,
            linear,
            embed,
        })
    }

    /// x [3, B, S, S] (CBHW, in [-1, 1]), y [B, num_classes] -> scores [B].
    pub fn forward(&mut self, x: &Tensor, y: &Tensor, mode: Mode) -> Result<Tensor> {
        let mut h = match &self.coords {
            Some(c) => {
                let (_, b, h, w) = x.dims4()?;
                let c = c.broadcast_as((2, b, h, w))?.to_dtype(x.dtype())?;
                self.input_conv.forward(&Tensor::cat(&[x, &c], 0)?, mode)?
            }
            None => self.input_conv.forward(x, mode)?,
        };
        for blk in &mut self.blocks {
            let x0 = h.clone();
            let mut t = h;
            for (i, conv) in blk.conv.iter_mut().enumerate() {
                t = ops::relu(&t)?;
                if i == 3 && blk.down {
                    t = avg_pool2x(&t)?;
                }
                t = conv.forward(&t, mode)?;
            }
            let mut s = if blk.down { avg_pool2x(&x0)? } else { x0 };
            if let Some(sc) = &mut blk.sc {
                let extra = sc.forward(&s, mode)?;
                s = Tensor::cat(&[&s, &extra], 0)?;
            }
            h = (t + s)?;
        }
        let h = ops::relu(&h)?.sum(3)?.sum(2)?.t()?; // [B, C]
        let out = self.linear.forward(&h, mode)?.squeeze(1)?;
        let e = y.matmul(&self.embed.weight(mode)?)?; // [B, C]
        out + (e * h)?.sum(1)?
    }

    /// Every spectral-norm weight.
    pub fn sn_weights(&mut self) -> Vec<&mut SnWeight> {
        let mut out: Vec<&mut SnWeight> = vec![&mut self.input_conv.sn];
        for b in &mut self.blocks {
            out.extend(b.conv.iter_mut().map(|c| &mut c.sn));
            if let Some(sc) = &mut b.sc {
                out.push(&mut sc.sn);
            }
        }
        out.push(&mut self.linear.sn);
        out.push(&mut self.embed);
        out
    }

    fn sn_refs(&self) -> Vec<&SnWeight> {
        let mut out: Vec<&SnWeight> = vec![&self.input_conv.sn];
        for b in &self.blocks {
            out.extend(b.conv.iter().map(|c| &c.sn));
            if let Some(sc) = &b.sc {
                out.push(&sc.sn);
            }
        }
        out.push(&self.linear.sn);
        out.push(&self.embed);
        out
    }

    /// u and v under `prefix`.
    pub fn buffers(&self, prefix: &str) -> HashMap<String, Tensor> {
        let mut m = HashMap::new();
        for sn in self.sn_refs() {
            sn.buffers(&mut m);
        }
        m.into_iter()
            .map(|(k, v)| (format!("{prefix}{k}"), v))
            .collect()
    }

    pub fn restore_buffers(&mut self, state: &HashMap<String, Tensor>, prefix: &str) -> Result<()> {
        for sn in self.sn_weights() {
            sn.restore(state, prefix)?;
        }
        Ok(())
    }

    /// Sets parameters and u / v from named tensors (the names above, no prefix).
    pub fn load(&mut self, tensors: &HashMap<String, Tensor>) -> Result<()> {
        for (n, v) in &self.store.params {
            let t = tensors
                .get(n)
                .ok_or_else(|| candle_core::Error::Msg(format!("no tensor `{n}`")))?;
            v.set(&t.to_dtype(candle_core::DType::F32)?.reshape(v.shape())?)?;
        }
        self.restore_buffers(tensors, "")
    }
}
