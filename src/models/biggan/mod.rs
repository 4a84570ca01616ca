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
//!
//! Files: `config` (config.json, validation, the truncation's statistics rows), `layers`
//! (spectral-norm linear and convolution, conditional BatchNorm, GenBlock, self-attention); here
//! the generator ([`BigGan`]), its loading, and the truncated noise it is sampled with.

mod config;
mod layers;

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, IndexOp, Result, Tensor};
use candle_nn::VarBuilder;
use rand::SeedableRng;
use rand_distr::Distribution;

pub use config::{stats_rows, Config, Layer};
pub use layers::{max_pool2x, upsample_nearest2x};
use layers::{BigGanBatchNorm, GenBlock, SelfAttn, SnConv, SnLinear};

use crate::input_err;

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
        let weights = crate::weights::weights_file(model, "BigGAN weights")?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncated_noise_is_bounded_and_seeded() {
        let a = truncated_noise(7, 4, 128, 0.5);
        assert_eq!(a.len(), 512);
        assert!(a.iter().all(|v| v.abs() <= 1.0));
        assert_eq!(a, truncated_noise(7, 4, 128, 0.5));
        assert_ne!(a, truncated_noise(8, 4, 128, 0.5));
    }
}
