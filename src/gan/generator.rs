//! BigGAN-deep's generator in training mode, with the parameters and buffers of
//! [`crate::models::biggan`] under the same names (see that module's header for the
//! architecture): `embeddings.weight`, `generator.gen_z.*`, `generator.layers.{i}.bn_{k}.*` /
//! `.conv_{k}.*`, `generator.bn.*`, `generator.conv_to_rgb.*`. No self-attention block (the
//! config puts it past the last layer). Activations are CBHW.
//!
//! [`Generator::inference_tensors`] writes what `BigGan::load` reads: the parameters, the
//! spectral norms' u and v, and per BatchNorm the standing-statistics rows (one per truncation).

use std::collections::HashMap;

use candle_core::{Result, Tensor, Var};
use rand_chacha::ChaCha8Rng;

use super::{upsample2x, Mode, SnWeight, Store};
use crate::models::biggan::Config;
use crate::models::trainable::ops;

/// Per-channel (mean, unbiased variance) of one BatchNorm on one batch.
pub type BnStats = (Vec<f64>, Vec<f64>);

/// BatchNorm momentum of the running statistics (PyTorch's default).
const MOMENTUM: f64 = 0.1;

pub(super) struct SnLinear {
    pub(super) sn: SnWeight,
    bias: Option<Var>,
}

impl SnLinear {
    pub(super) fn new(
        st: &mut Store,
        name: &str,
        din: usize,
        dout: usize,
        bias: bool,
    ) -> Result<Self> {
        let sn = st.sn(name, &[dout, din])?;
        let bias = if bias {
            Some(st.constant(format!("{name}.bias"), 0.0, &[dout])?)
        } else {
            None
        };
        Ok(Self { sn, bias })
    }

    /// [B, in] -> [B, out].
    pub(super) fn forward(&mut self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        let y = x.matmul(&self.sn.weight(mode)?.t()?)?;
        match &self.bias {
            Some(b) => y.broadcast_add(b.as_tensor()),
            None => Ok(y),
        }
    }
}

/// Spectral-norm convolution on CBHW activations (padding k / 2), optionally keeping only the
/// first `keep` output channels (conv_to_rgb: the norm is the whole weight's, as the reference).
pub(super) struct SnConv {
    pub(super) sn: SnWeight,
    bias: Option<Var>,
    k: usize,
    keep: Option<usize>,
}

impl SnConv {
    pub(super) fn new(
        st: &mut Store,
        name: &str,
        cin: usize,
        cout: usize,
        k: usize,
        bias: bool,
    ) -> Result<Self> {
        let sn = st.sn(name, &[cout, cin, k, k])?;
        let bias = if bias {
            Some(st.constant(format!("{name}.bias"), 0.0, &[cout])?)
        } else {
            None
        };
        Ok(Self {
            sn,
            bias,
            k,
            keep: None,
        })
    }

    pub(super) fn forward(&mut self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        let mut w = self.sn.weight(mode)?;
        let mut bias = self.bias.as_ref().map(|b| b.as_tensor().clone());
        if let Some(n) = self.keep {
            w = w.narrow(0, 0, n)?;
            bias = bias.map(|b| b.narrow(0, 0, n)).transpose()?;
        }
        let y = ops::conv2d(x, &w, 1, self.k / 2)?;
        match bias {
            Some(b) => {
                let c = b.dim(0)?;
                y.broadcast_add(&b.reshape((c, 1, 1, 1))?)
            }
            None => Ok(y),
        }
    }
}

/// Conditional (scale / offset from cond) or plain (weight / bias) BatchNorm in training mode.
struct Bn {
    name: String,
    c: usize,
    eps: f64,
    affine: Affine,
    running_mean: Tensor,
    running_var: Tensor,
}

enum Affine {
    Conditional { scale: SnLinear, offset: SnLinear },
    Plain { weight: Var, bias: Var },
}

impl Bn {
    fn new(st: &mut Store, name: String, c: usize, cond: Option<usize>, eps: f64) -> Result<Self> {
        let affine = match cond {
            Some(d) => Affine::Conditional {
                scale: SnLinear::new(st, &format!("{name}.scale"), d, c, false)?,
                offset: SnLinear::new(st, &format!("{name}.offset"), d, c, false)?,
            },
            None => Affine::Plain {
                weight: st.constant(format!("{name}.weight"), 1.0, &[c])?,
                bias: st.constant(format!("{name}.bias"), 0.0, &[c])?,
            },
        };
        Ok(Self {
            running_mean: Tensor::zeros(c, candle_core::DType::F32, &st.device)?,
            running_var: Tensor::ones(c, candle_core::DType::F32, &st.device)?,
            name,
            c,
            eps,
            affine,
        })
    }

    /// BatchNorm with the batch's statistics, then ReLU; x [C, B, H, W], cond [B, d].
    fn forward_relu(
        &mut self,
        x: &Tensor,
        cond: Option<&Tensor>,
        mode: Mode,
        stats: &mut Option<Vec<BnStats>>,
    ) -> Result<Tensor> {
        let c = self.c;
        let (y, batch) = match (&mut self.affine, cond) {
            (Affine::Plain { weight, bias }, _) => ops::batch_norm(
                x,
                weight.as_tensor(),
                bias.as_tensor(),
                None,
                self.eps,
                true,
            )?,
            (Affine::Conditional { scale, offset }, Some(cond)) => {
                let one = Tensor::ones(c, candle_core::DType::F32, x.device())?;
                let zero = one.zeros_like()?;
                let (xn, batch) = ops::batch_norm(x, &one, &zero, None, self.eps, false)?;
                let b = cond.dim(0)?;
                let gain = (scale.forward(cond, mode)? + 1.0)?
                    .t()?
                    .reshape((c, b, 1, 1))?;
                let shift = offset.forward(cond, mode)?.t()?.reshape((c, b, 1, 1))?;
                let y = xn.broadcast_mul(&gain)?.broadcast_add(&shift)?;
                (ops::relu(&y)?, batch)
            }
            (Affine::Conditional { .. }, None) => {
                candle_core::bail!("conditional BatchNorm without a condition")
            }
        };
        let (mean, var) = batch.unwrap_or_default();
        let n = (x.elem_count() / c.max(1)) as f64;
        let unbiased: Vec<f64> = var.iter().map(|v| v * n / (n - 1.0).max(1.0)).collect();
        if mode == Mode::Train {
            let dev = x.device();
            let m = Tensor::new(mean.iter().map(|&v| v as f32).collect::<Vec<_>>(), dev)?;
            let v = Tensor::new(unbiased.iter().map(|&v| v as f32).collect::<Vec<_>>(), dev)?;
            self.running_mean = ((&self.running_mean * (1.0 - MOMENTUM))? + (m * MOMENTUM)?)?;
            self.running_var = ((&self.running_var * (1.0 - MOMENTUM))? + (v * MOMENTUM)?)?;
        }
        if let Some(s) = stats {
            s.push((mean, unbiased));
        }
        Ok(y)
    }

    fn sn_mut(&mut self) -> Vec<&mut SnWeight> {
        match &mut self.affine {
            Affine::Conditional { scale, offset } => vec![&mut scale.sn, &mut offset.sn],
            Affine::Plain { .. } => vec![],
        }
    }
}

struct Block {
    bn: Vec<Bn>,
    conv: Vec<SnConv>,
    upsample: bool,
    skip: Option<usize>,
}

/// The generator: parameters in a [`Store`], buffers in its layers.
pub struct Generator {
    pub store: Store,
    pub cfg: Config,
    embeddings: Var,
    gen_z: SnLinear,
    blocks: Vec<Block>,
    bn: Bn,
    to_rgb: SnConv,
}

impl Generator {
    /// Orthogonal weights, zero biases, unit BatchNorm weights, from `rng`. The config must have
    /// no attention block.
    pub fn new(cfg: &Config, rng: ChaCha8Rng, device: &candle_core::Device) -> Result<Self> {
        cfg.validate().map_err(candle_core::Error::Msg)?;
        if cfg.attention_layer_position < cfg.layers.len() {
            candle_core::bail!("the trainable generator has no self-attention block")
        }
        let mut st = Store::new(rng, device);
        let ch = cfg.channel_width;
        let d = cfg.cond_dim();
        let embeddings = st.ortho("embeddings.weight".into(), &[cfg.z_dim, cfg.num_classes])?;
        let gen_z = SnLinear::new(&mut st, "generator.gen_z", d, 16 * 16 * ch, true)?;
        let mut blocks = Vec::new();
        for (i, l) in cfg.layers.iter().enumerate() {
            let p = format!("generator.layers.{i}");
            let (cin, cout) = (l.in_mult * ch, l.out_mult * ch);
            let mid = cin / 4;
            let widths = [(cin, mid, 1), (mid, mid, 3), (mid, mid, 3), (mid, cout, 1)];
            let mut bn = Vec::new();
            let mut conv = Vec::new();
            for (k, &(a, b, ks)) in widths.iter().enumerate() {
                bn.push(Bn::new(
                    &mut st,
                    format!("{p}.bn_{k}"),
                    a,
                    Some(d),
                    cfg.eps,
                )?);
                conv.push(SnConv::new(
                    &mut st,
                    &format!("{p}.conv_{k}"),
                    a,
                    b,
                    ks,
                    true,
                )?);
            }
            blocks.push(Block {
                bn,
                conv,
                upsample: l.upsample,
                skip: (cin != cout).then_some(cin / 2),
            });
        }
        let bn = Bn::new(&mut st, "generator.bn".into(), ch, None, cfg.eps)?;
        let mut to_rgb = SnConv::new(&mut st, "generator.conv_to_rgb", ch, ch, 3, true)?;
        to_rgb.keep = Some(3);
        Ok(Self {
            store: st,
            cfg: cfg.clone(),
            embeddings,
            gen_z,
            blocks,
            bn,
            to_rgb,
        })
    }

    /// z [B, z_dim], classes [B, num_classes] -> images [3, B, S, S] (CBHW) in [-1, 1], with
    /// batch statistics; `stats` collects each BatchNorm's (in forward order).
    pub fn forward(
        &mut self,
        z: &Tensor,
        classes: &Tensor,
        mode: Mode,
        stats: &mut Option<Vec<BnStats>>,
    ) -> Result<Tensor> {
        let b = z.dim(0)?;
        let embed = classes.matmul(&self.embeddings.as_tensor().t()?)?;
        let cond = Tensor::cat(&[z, &embed], 1)?;
        let c0 = 16 * self.cfg.channel_width;
        let mut x = self
            .gen_z
            .forward(&cond, mode)?
            .reshape((b, 4, 4, c0))?
            .permute((3, 0, 1, 2))?
            .contiguous()?;
        for blk in &mut self.blocks {
            let x0 = x.clone();
            for i in 0..4 {
                x = blk.bn[i].forward_relu(&x, Some(&cond), mode, stats)?;
                if i == 1 && blk.upsample {
                    x = upsample2x(&x)?;
                }
                x = blk.conv[i].forward(&x, mode)?;
            }
            let mut skip = match blk.skip {
                Some(n) => x0.narrow(0, 0, n)?,
                None => x0,
            };
            if blk.upsample {
                skip = upsample2x(&skip)?;
            }
            x = (x + skip)?;
        }
        let x = self.bn.forward_relu(&x, None, mode, stats)?;
        self.to_rgb.forward(&x, mode)?.tanh()
    }

    fn bns(&mut self) -> Vec<&mut Bn> {
        let mut out: Vec<&mut Bn> = Vec::new();
        for b in &mut self.blocks {
            out.extend(b.bn.iter_mut());
        }
        out.push(&mut self.bn);
        out
    }

    /// Every spectral-norm weight.
    pub fn sn_weights(&mut self) -> Vec<&mut SnWeight> {
        let mut out: Vec<&mut SnWeight> = vec![&mut self.gen_z.sn];
        for b in &mut self.blocks {
            for bn in &mut b.bn {
                out.extend(bn.sn_mut());
            }
            out.extend(b.conv.iter_mut().map(|c| &mut c.sn));
        }
        out.push(&mut self.to_rgb.sn);
        out
    }

    fn sn_refs(&self) -> Vec<&SnWeight> {
        let mut out: Vec<&SnWeight> = vec![&self.gen_z.sn];
        for b in &self.blocks {
            for bn in &b.bn {
                if let Affine::Conditional { scale, offset } = &bn.affine {
                    out.push(&scale.sn);
                    out.push(&offset.sn);
                }
            }
            out.extend(b.conv.iter().map(|c| &c.sn));
        }
        out.push(&self.to_rgb.sn);
        out
    }

    /// The buffers (u, v, running statistics) under `prefix`.
    pub fn buffers(&self, prefix: &str) -> HashMap<String, Tensor> {
        let mut m = HashMap::new();
        for sn in self.sn_refs() {
            sn.buffers(&mut m);
        }
        let bns = self
            .blocks
            .iter()
            .flat_map(|b| b.bn.iter())
            .chain([&self.bn]);
        for bn in bns {
            m.insert(format!("{}.running_mean", bn.name), bn.running_mean.clone());
            m.insert(format!("{}.running_var", bn.name), bn.running_var.clone());
        }
        m.into_iter()
            .map(|(k, v)| (format!("{prefix}{k}"), v))
            .collect()
    }

    /// Restores what [`Self::buffers`] saved.
    pub fn restore_buffers(&mut self, state: &HashMap<String, Tensor>, prefix: &str) -> Result<()> {
        for sn in self.sn_weights() {
            sn.restore(state, prefix)?;
        }
        for bn in self.bns() {
            for (k, slot) in [
                ("running_mean", &mut bn.running_mean),
                ("running_var", &mut bn.running_var),
            ] {
                let key = format!("{prefix}{}.{k}", bn.name);
                let t = state
                    .get(&key)
                    .ok_or_else(|| candle_core::Error::Msg(format!("checkpoint has no `{key}`")))?;
                *slot = t.to_dtype(candle_core::DType::F32)?;
            }
        }
        Ok(())
    }

    /// Parameter values by name (detached copies).
    pub fn param_values(&self) -> Result<HashMap<String, Tensor>> {
        self.store
            .params
            .iter()
            .map(|(n, v)| Ok((n.clone(), v.as_tensor().copy()?)))
            .collect()
    }

    /// Sets the parameters to `values` (by name; every one must be present).
    pub fn set_params(&self, values: &HashMap<String, Tensor>, prefix: &str) -> Result<()> {
        for (n, v) in &self.store.params {
            let key = format!("{prefix}{n}");
            let t = values
                .get(&key)
                .ok_or_else(|| candle_core::Error::Msg(format!("checkpoint has no `{key}`")))?;
            if t.dims() != v.dims() {
                candle_core::bail!("`{key}` has shape {:?}, expected {:?}", t.dims(), v.dims())
            }
            v.set(&t.to_dtype(candle_core::DType::F32)?)?;
        }
        Ok(())
    }

    /// What `BigGan::load` reads: parameters, u and v, and per BatchNorm the statistics rows
    /// `rows[k]` (one per truncation; each a list of the BatchNorms' stats in forward order).
    pub fn inference_tensors(&mut self, rows: &[Vec<BnStats>]) -> Result<HashMap<String, Tensor>> {
        let mut out = self.param_values()?;
        for sn in self.sn_weights() {
            sn.buffers(&mut out);
        }
        let dev = self.store.device.clone();
        let names: Vec<(String, usize)> =
            self.bns().iter().map(|b| (b.name.clone(), b.c)).collect();
        for (j, (name, c)) in names.iter().enumerate() {
            let mut means = Vec::with_capacity(rows.len() * c);
            let mut vars = Vec::with_capacity(rows.len() * c);
            for row in rows {
                let (m, v) = row.get(j).ok_or_else(|| {
                    candle_core::Error::Msg("missing BatchNorm statistics".into())
                })?;
                means.extend(m.iter().map(|&x| x as f32));
                vars.extend(v.iter().map(|&x| x as f32));
            }
            out.insert(
                format!("{name}.running_means"),
                Tensor::from_vec(means, (rows.len(), *c), &dev)?,
            );
            out.insert(
                format!("{name}.running_vars"),
                Tensor::from_vec(vars, (rows.len(), *c), &dev)?,
            );
        }
        Ok(out)
    }
}
