//! BigGAN-deep generator (Brock, Donahue and Simonyan 2019, "Large Scale GAN Training for High
//! Fidelity Natural Image Synthesis") as pytorch-pretrained-BigGAN 0.1.1 implements it (a port of
//! the TF Hub modules) and big-sleep (lucidrains, v0.9.1) drives it. Checkpoints: that package's
//! `biggan-deep-128` / `-256` / `-512` (`config.json` + `pytorch_model.bin`, PyTorch's legacy
//! pickle format, read by [`crate::weights::pth`]); tensor names as its `BigGAN.state_dict()`:
//! `embeddings.weight`, `generator.gen_z.{weight_orig,weight_u,weight_v,bias}`,
//! `generator.layers.{i}.bn_{0..3}.{running_means,running_vars,scale.*,offset.*}`,
//! `generator.layers.{i}.conv_{0..3}.*`, `generator.layers.{a}.snconv1x1_{theta,phi,g,o_conv}.*`
//! and `.gamma` for the attention block (it takes an index in `layers`), `generator.bn.*`,
//! `generator.conv_to_rgb.*`.
//!
//! What the reference computes, and so this module:
//! - cond = cat(z, class_vector @ embeddings^T) (the class embedding is `z_dim` wide: the
//!   reference ignores `class_embed_dim`);
//! - gen_z (spectral-norm linear) -> [B, 4, 4, 16 ch] -> NCHW; then the GenBlocks and, before block
//!   `attention_layer_position`, the self-attention block;
//! - GenBlock: bn_0-ReLU-conv_0 1x1 (in -> in/4), bn_1-ReLU-[nearest x2]-conv_1 3x3,
//!   bn_2-ReLU-conv_2 3x3, bn_3-ReLU-conv_3 1x1 (-> out); the skip keeps the first in/2 channels when
//!   in != out, is upsampled with the block, and is added;
//! - conditional BatchNorm: (x - mean_t) / sqrt(var_t + eps) * (1 + scale(cond)) + offset(cond),
//!   with mean_t / var_t from the stored per-truncation rows ([`stats_rows`]);
//! - spectral-norm weights in eval mode: W = weight_orig / (u . (W_mat v)) with the stored u and v
//!   (no power iteration), computed once when the model is built;
//! - final BatchNorm (weight, bias, the same truncation rows), ReLU, conv_to_rgb 3x3, the first 3
//!   channels, tanh: images in [-1, 1].
//!
//! Everything is differentiable with respect to z and the class vectors: nearest upsampling and
//! max-pooling are reshapes, broadcasts and max reductions (candle's `upsample_nearest2d`
//! backward is wrong when its input is used elsewhere, as the skip path does; its `max_pool2d`
//! backward scales the gradient by 1/4), softmax is `candle_nn::ops::softmax` (basic ops).

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, IndexOp, Result, Tensor, D};
use candle_nn::VarBuilder;
use rand::SeedableRng;
use rand_distr::Distribution;
use serde::{Deserialize, Serialize};

use crate::input_err;

/// One entry of config.json's `layers`: `[upsample, in_multiplier, out_multiplier]` (channels
/// are multiples of `channel_width`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "(bool, usize, usize)", into = "(bool, usize, usize)")]
pub struct Layer {
    pub upsample: bool,
    pub in_mult: usize,
    pub out_mult: usize,
}

impl From<(bool, usize, usize)> for Layer {
    fn from((upsample, in_mult, out_mult): (bool, usize, usize)) -> Self {
        Self {
            upsample,
            in_mult,
            out_mult,
        }
    }
}

impl From<Layer> for (bool, usize, usize) {
    fn from(l: Layer) -> Self {
        (l.upsample, l.in_mult, l.out_mult)
    }
}

/// pytorch-pretrained-BigGAN's `BigGANConfig` (its `config.json`); a missing key takes the
/// 128 px default, as `BigGANConfig.from_dict` does.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    pub output_dim: usize,
    pub z_dim: usize,
    /// Recorded by the published configs, unused by the reference (the embedding is `z_dim` wide).
    pub class_embed_dim: usize,
    pub channel_width: usize,
    pub num_classes: usize,
    pub layers: Vec<Layer>,
    /// The self-attention block comes before this layer (none when past the end).
    pub attention_layer_position: usize,
    /// BatchNorm epsilon (also the spectral norm's, which eval mode does not use).
    pub eps: f64,
    /// Rows of the per-truncation BatchNorm statistics (truncations 0, 1/(n-1), ..., 1).
    pub n_stats: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self::deep_128()
    }
}

fn layers(spec: &[(bool, usize, usize)]) -> Vec<Layer> {
    spec.iter().map(|&l| l.into()).collect()
}

impl Config {
    /// biggan-deep-128 (pytorch-pretrained-BigGAN's `BigGAN128`).
    pub fn deep_128() -> Self {
        Self {
            output_dim: 128,
            z_dim: 128,
            class_embed_dim: 128,
            channel_width: 128,
            num_classes: 1000,
            layers: layers(&[
                (false, 16, 16),
                (true, 16, 16),
                (false, 16, 16),
                (true, 16, 8),
                (false, 8, 8),
                (true, 8, 4),
                (false, 4, 4),
                (true, 4, 2),
                (false, 2, 2),
                (true, 2, 1),
            ]),
            attention_layer_position: 8,
            eps: 1e-4,
            n_stats: 51,
        }
    }

    /// biggan-deep-256 (`BigGAN256`).
    pub fn deep_256() -> Self {
        Self {
            output_dim: 256,
            layers: layers(&[
                (false, 16, 16),
                (true, 16, 16),
                (false, 16, 16),
                (true, 16, 8),
                (false, 8, 8),
                (true, 8, 8),
                (false, 8, 8),
                (true, 8, 4),
                (false, 4, 4),
                (true, 4, 2),
                (false, 2, 2),
                (true, 2, 1),
            ]),
            ..Self::deep_128()
        }
    }

    /// biggan-deep-512 (`BigGAN512`).
    pub fn deep_512() -> Self {
        let mut cfg = Self::deep_256();
        cfg.output_dim = 512;
        cfg.layers.extend(layers(&[(false, 1, 1), (true, 1, 1)]));
        cfg
    }

    /// Parses and validates config.json; errors name the key.
    pub fn from_json(text: &str) -> anyhow::Result<Self> {
        let cfg: Self =
            serde_json::from_str(text).map_err(|e| input_err!("not a BigGAN config: {e}"))?;
        cfg.validate().map_err(|e| input_err!("{e}"))?;
        Ok(cfg)
    }

    /// Latent rows big-sleep optimises: one for gen_z plus one per GenBlock.
    pub fn num_latents(&self) -> usize {
        self.layers.len() + 1
    }

    /// Side of the generated images: 4 * 2^(upsampling layers).
    pub fn image_size(&self) -> usize {
        4 << self.layers.iter().filter(|l| l.upsample).count()
    }

    /// Width of the conditioning vector: z and the class embedding.
    pub fn cond_dim(&self) -> usize {
        2 * self.z_dim
    }

    /// Checks what the reference's code assumes, so that a bad config fails here with a message
    /// rather than as a shape error inside the forward pass.
    pub fn validate(&self) -> std::result::Result<(), String> {
        let ch = self.channel_width;
        if self.z_dim == 0 || ch == 0 || self.num_classes == 0 || self.layers.is_empty() {
            return Err(
                "z_dim, channel_width, num_classes and layers must be non-zero / non-empty".into(),
            );
        }
        if ch < 3 {
            return Err(format!(
                "channel_width {ch}: conv_to_rgb keeps the first 3 of channel_width channels"
            ));
        }
        if self.n_stats < 2 {
            return Err(format!("n_stats {} must be at least 2", self.n_stats));
        }
        if self.eps.is_nan() || self.eps <= 0.0 {
            return Err(format!("eps {} must be positive", self.eps));
        }
        if self.layers[0].in_mult != 16 {
            return Err(format!(
                "layers[0] takes {} x channel_width channels; gen_z makes 16 x channel_width",
                self.layers[0].in_mult
            ));
        }
        for (i, l) in self.layers.iter().enumerate() {
            let (cin, cout) = (l.in_mult * ch, l.out_mult * ch);
            if cin < 4 || cin % 4 != 0 {
                return Err(format!(
                    "layers[{i}]: {cin} input channels are not divisible by 4 (the block's bottleneck)"
                ));
            }
            if cin != cout && cout * 2 != cin {
                return Err(format!(
                    "layers[{i}]: {cin} -> {cout} channels; the skip path keeps half of the input \
                     channels, so a change of width must halve it"
                ));
            }
            if let Some(next) = self.layers.get(i + 1) {
                if next.in_mult != l.out_mult {
                    return Err(format!(
                        "layers[{i}] outputs {} x channel_width channels, layers[{}] takes {}",
                        l.out_mult,
                        i + 1,
                        next.in_mult
                    ));
                }
            }
        }
        let last = self.layers[self.layers.len() - 1].out_mult;
        if last != 1 {
            return Err(format!(
                "the last layer outputs {last} x channel_width channels; the final BatchNorm takes 1 x"
            ));
        }
        if let Some(l) = self.layers.get(self.attention_layer_position) {
            let c = l.in_mult * ch;
            if !c.is_multiple_of(8) {
                return Err(format!(
                    "attention before layers[{}]: {c} channels are not divisible by 8",
                    self.attention_layer_position
                ));
            }
        }
        if self.output_dim != self.image_size() {
            return Err(format!(
                "output_dim {} but the layers upsample 4 x 4 to {}",
                self.output_dim,
                self.image_size()
            ));
        }
        Ok(())
    }
}

/// The stored statistics rows the reference uses for a truncation: `(start, coef)` from
/// `math.modf(truncation / (1 / (n_stats - 1)))`. When `coef` is 0 row `start` is used as it is;
/// otherwise the reference blends `rows[start] * coef + rows[start + 1] * (1 - coef)` (sic: the
/// weights are the other way round from a linear interpolation, and this module does the same).
/// Truncation must be in (0, 1], as the reference asserts.
pub fn stats_rows(truncation: f64, n_stats: usize) -> Result<(usize, f64)> {
    if !(truncation > 0.0 && truncation <= 1.0) {
        candle_core::bail!("BigGAN truncation must be in (0, 1], got {truncation}")
    }
    let step = 1.0 / (n_stats as f64 - 1.0);
    let q = truncation / step;
    let start = q.trunc();
    let coef = q - start;
    let start = start as usize;
    let last = if coef != 0.0 { start + 1 } else { start };
    if last >= n_stats {
        candle_core::bail!(
            "BigGAN truncation {truncation} needs statistics row {last} of {n_stats}"
        )
    }
    Ok((start, coef))
}

/// Truncated normal noise as pytorch-pretrained-BigGAN's `truncated_noise_sample`: truncation x
/// N(0, 1) restricted to [-2, 2], drawn on the host from ChaCha8 (candle's CPU RNG cannot be
/// seeded); [batch, dim] row-major. The values differ from scipy's, the distribution does not.
pub fn truncated_noise(seed: u64, batch: usize, dim: usize, truncation: f64) -> Vec<f32> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let normal = rand_distr::StandardNormal;
    (0..batch * dim)
        .map(|_| loop {
            let x: f64 = normal.sample(&mut rng);
            if x.abs() <= 2.0 {
                break (x * truncation) as f32;
            }
        })
        .collect()
}

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
struct SnLinear {
    /// [in, out] (transposed once here).
    wt: Tensor,
    bias: Option<Tensor>,
}

impl SnLinear {
    fn new(vb: VarBuilder, din: usize, dout: usize, bias: bool) -> Result<Self> {
        let wt = sn_weight(&vb, &[dout, din])?.t()?.contiguous()?;
        let bias = if bias {
            Some(vb.get(dout, "bias")?)
        } else {
            None
        };
        Ok(Self { wt, bias })
    }

    /// [B, in] -> [B, out].
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = x.matmul(&self.wt)?;
        match &self.bias {
            Some(b) => y.broadcast_add(b),
            None => Ok(y),
        }
    }
}

/// Spectral-norm convolution, 1x1 (as a matrix product) or 3x3 with padding 1, with or without
/// bias.
struct SnConv {
    /// [out, in, k, k]
    weight: Tensor,
    /// [1, out, 1, 1]
    bias: Option<Tensor>,
    kernel: usize,
}

impl SnConv {
    fn new(vb: VarBuilder, cin: usize, cout: usize, kernel: usize, bias: bool) -> Result<Self> {
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
    fn first_outputs(self, n: usize) -> Result<Self> {
        Ok(Self {
            weight: self.weight.narrow(0, 0, n)?,
            bias: match self.bias {
                Some(b) => Some(b.narrow(1, 0, n)?),
                None => None,
            },
            kernel: self.kernel,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, cin, h, w) = x.dims4()?;
        let y = if self.kernel == 1 {
            let cout = self.weight.dim(0)?;
            let wm = self.weight.reshape((cout, cin))?;
            wm.broadcast_matmul(&x.reshape((b, cin, h * w))?)?
                .reshape((b, cout, h, w))?
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
struct BigGanBatchNorm {
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
    fn new(vb: VarBuilder, c: usize, cond_dim: Option<usize>, cfg: &Config) -> Result<Self> {
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
    fn forward(&self, x: &Tensor, rows: (usize, f64), cond: Option<&Tensor>) -> Result<Tensor> {
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

struct GenBlock {
    bn: [BigGanBatchNorm; 4],
    conv: [SnConv; 4],
    upsample: bool,
    /// Input channels the skip path keeps (in / 2 when the width changes).
    skip_channels: Option<usize>,
}

impl GenBlock {
    fn new(vb: VarBuilder, layer: &Layer, cfg: &Config) -> Result<Self> {
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

    fn forward(&self, x0: &Tensor, cond: &Tensor, rows: (usize, f64)) -> Result<Tensor> {
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
struct SelfAttn {
    theta: SnConv,
    phi: SnConv,
    g: SnConv,
    o: SnConv,
    gamma: Tensor,
}

impl SelfAttn {
    fn new(vb: VarBuilder, c: usize) -> Result<Self> {
        Ok(Self {
            theta: SnConv::new(vb.pp("snconv1x1_theta"), c, c / 8, 1, false)?,
            phi: SnConv::new(vb.pp("snconv1x1_phi"), c, c / 8, 1, false)?,
            g: SnConv::new(vb.pp("snconv1x1_g"), c, c / 2, 1, false)?,
            o: SnConv::new(vb.pp("snconv1x1_o_conv"), c / 2, c, 1, false)?,
            gamma: vb.get(1, "gamma")?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
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

enum Stage {
    Block(Box<GenBlock>),
    Attention(SelfAttn),
}

/// The BigGAN-deep generator with its class embedding (pytorch-pretrained-BigGAN's `BigGAN`).
pub struct BigGan {
    /// [num_classes, z_dim] (the embedding's weight, transposed once).
    embed_t: Tensor,
    gen_z: SnLinear,
    stages: Vec<Stage>,
    bn: BigGanBatchNorm,
    /// conv_to_rgb restricted to the 3 output channels the reference keeps.
    to_rgb: SnConv,
    cfg: Config,
}

impl BigGan {
    pub fn new(vb: VarBuilder, cfg: &Config) -> Result<Self> {
        cfg.validate().map_err(candle_core::Error::Msg)?;
        let ch = cfg.channel_width;
        let embed_t = vb
            .get((cfg.z_dim, cfg.num_classes), "embeddings.weight")?
            .t()?
            .contiguous()?;
        let g = vb.pp("generator");
        let gen_z = SnLinear::new(g.pp("gen_z"), cfg.cond_dim(), 4 * 4 * 16 * ch, true)?;
        let mut stages = Vec::with_capacity(cfg.layers.len() + 1);
        for (i, layer) in cfg.layers.iter().enumerate() {
            if i == cfg.attention_layer_position {
                let vb = g.pp(format!("layers.{}", stages.len()));
                stages.push(Stage::Attention(SelfAttn::new(vb, layer.in_mult * ch)?));
            }
            let vb = g.pp(format!("layers.{}", stages.len()));
            stages.push(Stage::Block(Box::new(GenBlock::new(vb, layer, cfg)?)));
        }
        let bn = BigGanBatchNorm::new(g.pp("bn"), ch, None, cfg)?;
        let to_rgb = SnConv::new(g.pp("conv_to_rgb"), ch, ch, 3, true)?.first_outputs(3)?;
        Ok(Self {
            embed_t,
            gen_z,
            stages,
            bn,
            to_rgb,
            cfg: cfg.clone(),
        })
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// Latent rows of [`Self::forward_per_block`]: GenBlocks + 1.
    pub fn num_latents(&self) -> usize {
        self.cfg.num_latents()
    }

    /// Side of the generated images.
    pub fn image_size(&self) -> usize {
        self.cfg.image_size()
    }

    /// The plain API (pytorch-pretrained-BigGAN's `BigGAN.forward`): z [B, z_dim] and class
    /// vectors [B, num_classes] (one-hot or any weights) -> images [B, 3, S, S] in [-1, 1]. The same
    /// conditioning vector feeds gen_z and every block. Truncation in (0, 1] selects the
    /// BatchNorm statistics (sample z with [`truncated_noise`] at the same truncation).
    pub fn forward(&self, z: &Tensor, classes: &Tensor, truncation: f64) -> Result<Tensor> {
        let (b, zd) = z.dims2()?;
        let (bc, nc) = classes.dims2()?;
        if zd != self.cfg.z_dim || nc != self.cfg.num_classes || bc != b {
            candle_core::bail!(
                "BigGAN forward: expected z [B, {}] and classes [B, {}], got {:?} and {:?}",
                self.cfg.z_dim,
                self.cfg.num_classes,
                z.dims(),
                classes.dims()
            )
        }
        let cond = Tensor::cat(&[z, &classes.matmul(&self.embed_t)?], 1)?;
        let conds = vec![cond; self.num_latents()];
        self.generate(&conds, truncation)
    }

    /// big-sleep's per-block latents: z [L, z_dim] and class vectors [L, num_classes] with
    /// L = [`Self::num_latents`] give one image [1, 3, S, S]: row 0 feeds gen_z, row k the k-th
    /// GenBlock (the attention block takes none); every row is embedded as in the plain API.
    /// A leading batch dimension ([B, L, z_dim], [B, L, num_classes]) gives B images.
    pub fn forward_per_block(
        &self,
        z: &Tensor,
        classes: &Tensor,
        truncation: f64,
    ) -> Result<Tensor> {
        let l = self.num_latents();
        let (z, classes) = match (z.rank(), classes.rank()) {
            (2, 2) => (z.unsqueeze(0)?, classes.unsqueeze(0)?),
            (3, 3) => (z.clone(), classes.clone()),
            _ => candle_core::bail!(
                "BigGAN per-block latents: expected z [L, z_dim] and classes [L, num_classes] \
                 (or with a leading batch dimension), got {:?} and {:?}",
                z.dims(),
                classes.dims()
            ),
        };
        let (b, lz, zd) = z.dims3()?;
        let (bc, lc, nc) = classes.dims3()?;
        if (bc, lz, lc, zd, nc) != (b, l, l, self.cfg.z_dim, self.cfg.num_classes) {
            candle_core::bail!(
                "BigGAN per-block latents: expected z [{l}, {}] and classes [{l}, {}] (L = \
                 GenBlocks + 1 = {l}), got {:?} and {:?}",
                self.cfg.z_dim,
                self.cfg.num_classes,
                z.dims(),
                classes.dims()
            )
        }
        let embed = classes.broadcast_matmul(&self.embed_t)?; // [B, L, z_dim]
        let cond = Tensor::cat(&[&z, &embed], 2)?; // [B, L, 2 z_dim]
        let conds = (0..l)
            .map(|i| cond.i((.., i, ..)))
            .collect::<Result<Vec<_>>>()?;
        self.generate(&conds, truncation)
    }

    /// conds[0] feeds gen_z, conds[k] the k-th GenBlock; each [B, cond_dim].
    fn generate(&self, conds: &[Tensor], truncation: f64) -> Result<Tensor> {
        let rows = stats_rows(truncation, self.cfg.n_stats)?;
        let b = conds[0].dim(0)?;
        let c0 = 16 * self.cfg.channel_width;
        let mut x = self
            .gen_z
            .forward(&conds[0])?
            .reshape((b, 4, 4, c0))?
            .permute((0, 3, 1, 2))?
            .contiguous()?;
        let mut next = 1;
        for stage in &self.stages {
            x = match stage {
                Stage::Block(block) => {
                    let y = block.forward(&x, &conds[next], rows)?;
                    next += 1;
                    y
                }
                Stage::Attention(attn) => attn.forward(&x)?,
            };
        }
        let x = self.bn.forward(&x, rows, None)?.relu()?;
        self.to_rgb.forward(&x)?.tanh()
    }

    /// Loads config.json and the weights of a model folder or hub repository: `model.safetensors`
    /// when it has one, else `pytorch_model.bin` (legacy or zip torch.save format, read with
    /// [`crate::weights::pth`]'s allow-list). Errors name the file and the tensor.
    pub fn load(model: &crate::hub::Model, device: &Device) -> anyhow::Result<Self> {
        let config_path = model.file("config.json")?;
        let weights = weights_file(model)?;
        Self::load_files(&config_path, &weights, device)
    }

    /// [`Self::load`] from explicit paths.
    pub fn load_files(config: &Path, weights: &Path, device: &Device) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(config)
            .map_err(|e| input_err!("cannot read {}: {e}", config.display()))?;
        let cfg = Config::from_json(&text).map_err(|e| input_err!("{}: {e}", config.display()))?;
        let tensors = crate::weights::load_weights_file(weights)?;
        Self::from_tensors(tensors, &cfg, device).map_err(|e| {
            input_err!(
                "{}: {}",
                weights.display(),
                crate::weights::without_backtrace(e)
            )
        })
    }

    /// Builds the model from named tensors (converted to f32 on `device`).
    pub fn from_tensors(
        tensors: HashMap<String, Tensor>,
        cfg: &Config,
        device: &Device,
    ) -> Result<Self> {
        Self::new(VarBuilder::from_tensors(tensors, DType::F32, device), cfg)
    }
}

/// `model.safetensors` if the model has it locally, else `pytorch_model.bin` (fetched when
/// needed), else `model.safetensors` fetched; a folder with neither is an input error naming both.
fn weights_file(model: &crate::hub::Model) -> anyhow::Result<std::path::PathBuf> {
    const ST: &str = "model.safetensors";
    const BIN: &str = "pytorch_model.bin";
    if model.has_local_file(ST) {
        return Ok(model.file(ST)?);
    }
    match model.file(BIN) {
        Ok(p) => Ok(p),
        Err(bin_err) => match model.file(ST) {
            Ok(p) => Ok(p),
            Err(crate::hub::LocateError::MissingInFolder { folder, .. }) => Err(input_err!(
                "model folder {} has neither {ST} nor {BIN}: expected BigGAN weights in one of them",
                folder.display()
            )),
            Err(_) => Err(bin_err.into()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn published_configs_are_valid() {
        for (cfg, size, latents) in [
            (Config::deep_128(), 128, 11),
            (Config::deep_256(), 256, 13),
            (Config::deep_512(), 512, 15),
        ] {
            cfg.validate().unwrap();
            assert_eq!((cfg.image_size(), cfg.num_latents()), (size, latents));
        }
    }

    #[test]
    fn config_json_as_pytorch_pretrained_biggan_writes_it() {
        let text = r#"{"attention_layer_position": 8, "channel_width": 128, "class_embed_dim": 128,
          "eps": 0.0001, "layers": [[false, 16, 16], [true, 16, 16], [false, 16, 16], [true, 16, 8],
          [false, 8, 8], [true, 8, 4], [false, 4, 4], [true, 4, 2], [false, 2, 2], [true, 2, 1]],
          "n_stats": 51, "num_classes": 1000, "output_dim": 128, "z_dim": 128}"#;
        assert_eq!(Config::from_json(text).unwrap(), Config::deep_128());
        // Missing keys take the 128 defaults, as BigGANConfig.from_dict.
        assert_eq!(Config::from_json("{}").unwrap(), Config::deep_128());
        let e = Config::from_json(r#"{"output_dim": 256}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("output_dim 256") && e.contains("128"), "{e}");
        let e = Config::from_json(r#"{"layers": [[false, 16, 16], [true, 16, 5]]}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("layers[1]"), "{e}");
    }

    #[test]
    fn stats_rows_follow_math_modf() {
        assert_eq!(stats_rows(1.0, 51).unwrap(), (50, 0.0));
        assert_eq!(stats_rows(0.4, 51).unwrap(), (20, 0.0));
        let (s, c) = stats_rows(0.713, 51).unwrap();
        assert_eq!(s, 35);
        assert!((c - 0.65).abs() < 1e-9);
        // 0.29 / 0.02 = 14.499999999999998 in f64, as in Python.
        let (s, c) = stats_rows(0.29, 51).unwrap();
        assert_eq!(s, 14);
        assert!(c > 0.49 && c < 0.5);
        assert!(stats_rows(0.0, 51).is_err());
        assert!(stats_rows(1.5, 51).is_err());
    }

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

    #[test]
    fn truncated_noise_is_bounded_and_seeded() {
        let a = truncated_noise(7, 4, 128, 0.5);
        assert_eq!(a.len(), 512);
        assert!(a.iter().all(|v| v.abs() <= 1.0));
        assert_eq!(a, truncated_noise(7, 4, 128, 0.5));
        assert_ne!(a, truncated_noise(8, 4, 128, 0.5));
    }
}
