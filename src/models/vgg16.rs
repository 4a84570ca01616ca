//! VGG16 (Simonyan & Zisserman 2015, "Very Deep Convolutional Networks for Large-Scale Image
//! Recognition") as a frozen image encoder; checkpoint layout of timm's `vgg16.tv_in1k` (timm's port
//! of torchvision's ImageNet VGG16, hub repository `timm/vgg16.tv_in1k`).
//!
//! The feature is the output of fc2 after its ReLU (4096-d at 224 x 224), what the original
//! captioner took from Keras' VGG16 with its last layer removed. timm stores fc1 and fc2 as
//! convolutions (`pre_logits.fc1.weight` [4096, 512, 7, 7], `pre_logits.fc2.weight` [4096, 4096, 1,
//! 1]); at the native input size the final map is exactly 7 x 7, so they are run here as two matrix
//! products on the flattened map. The classifier (`head.fc.*`) is not read.
//!
//! Preprocessing ([`preprocess_image`], [`Vgg16::preprocess`]): the image is resized straight to S x S
//! (no crop, aspect ratio not kept) with PIL's NEAREST filter, bit for bit, as Keras'
//! `load_img(path, target_size=(S, S))` did for the original captioners (nearest is its default);
//! an image already S x S is used as is. Then the checkpoint's normalisation (timm's pretrained_cfg
//! for `vgg16.tv_in1k`): x / 255, then (x - mean) / std with the ImageNet mean (0.485, 0.456,
//! 0.406) and std (0.229, 0.224, 0.225), in f32. timm's own eval transform (resize the short side
//! to 256, centre crop 224, bilinear) is deliberately not used: the captioners were trained on
//! Keras' straight nearest resize.
//!
//! Speed: activations are kept channels-last (NHWC) inside the network. A 3 x 3 convolution with
//! at least 8 input channels is computed by Winograd F(4 x 4, 3 x 3) (F(2 x 2, 3 x 3) on the 14 x 14
//! maps, whose side is not a multiple of 4): an input-transform kernel, 36 (16) GEMMs as one
//! batched matmul, an output-transform kernel, with 4x (2.25x) fewer multiplications than im2col;
//! the first layer (3 input channels) is an im2col kernel and one GEMM. Winograd changes rounding
//! only: on full-size VGG16 with random weights its features are ~1e-6 (relative) from the im2col
//! path, and one layer is checked against im2col at 1e-5 by a unit test. The kernel that reads a
//! convolution's output (the next transform, im2col or max pool) applies its bias and ReLU while
//! reading, so no elementwise pass is spent on them. The kernels are shared with
//! [`super::xception`] (module [`crate::kernels::nhwc`]). They are f32 CPU kernels without a
//! backward: the encoders are frozen feature extractors, and calling `backward` through them is an
//! error, not a silent zero gradient. On CUDA or Metal the same graph runs as candle ops (conv2d, max_pool2d, shifted
//! multiply-adds; no Winograd), see [`crate::kernels::native_kernels`].

use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};

use crate::input_err;
use crate::kernels::nhwc;

/// Geometry of a VGG: stages of 3 x 3 convolutions (padding 1, each followed by ReLU), a 2 x 2
/// max pool after each stage, then fc1 (a convolution covering the whole final map) and fc2, each
/// followed by ReLU.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Output channels of the 3 x 3 convolutions, stage by stage.
    pub stages: Vec<Vec<usize>>,
    /// Width of fc1 and fc2: the feature dimension.
    pub fc_dim: usize,
    /// Side S of the square input. The final map is S / 2^stages on a side, which is fc1's kernel.
    pub image_size: usize,
}

impl Config {
    /// VGG16 (configuration "D") at 224 x 224: the geometry of `timm/vgg16.tv_in1k`.
    pub fn vgg16() -> Self {
        Self {
            stages: vec![
                vec![64, 64],
                vec![128, 128],
                vec![256, 256, 256],
                vec![512, 512, 512],
                vec![512, 512, 512],
            ],
            fc_dim: 4096,
            image_size: 224,
        }
    }

    /// VGG16's shape at an eighth of its widths for 64 px images (the shapes world), with fc1
    /// and fc2 256 wide: the default of `roundtrip train --train-encoder` (about 0.36 M
    /// parameters, 1.4 MB; the final map is 2 x 2 x 64).
    pub fn vgg16_shapes() -> Self {
        Self {
            stages: vec![
                vec![8, 8],
                vec![16, 16],
                vec![32, 32, 32],
                vec![64, 64, 64],
                vec![64, 64, 64],
            ],
            fc_dim: 256,
            image_size: 64,
        }
    }

    /// A three-stage toy geometry for 32 px images (tests and smoke runs).
    pub fn tiny() -> Self {
        Self {
            stages: vec![vec![8], vec![16], vec![16]],
            fc_dim: 32,
            image_size: 32,
        }
    }

    /// Side of the final feature map (fc1's kernel size): 7 for VGG16 at 224.
    pub fn final_map_size(&self) -> usize {
        self.image_size >> self.stages.len()
    }

    /// Channels of the final feature map (512 for VGG16).
    pub fn final_channels(&self) -> usize {
        self.stages
            .iter()
            .rev()
            .find_map(|s| s.last().copied())
            .unwrap_or(3)
    }

    /// Checks the geometry; the message names the offending field.
    pub fn validate(&self) -> Result<(), String> {
        if self.stages.is_empty() || self.stages.iter().any(Vec::is_empty) {
            return Err(
                "`stages` must hold at least one stage, each of at least one convolution".into(),
            );
        }
        if self.stages.iter().flatten().any(|&c| c == 0) || self.fc_dim == 0 {
            return Err("channel counts and `fc_dim` must be at least 1".into());
        }
        let div = 1usize << self.stages.len().min(30);
        if self.image_size == 0 || !self.image_size.is_multiple_of(div) {
            return Err(format!(
                "`image_size` ({}) must be a positive multiple of 2^stages = {div}",
                self.image_size
            ));
        }
        Ok(())
    }
}

/// timm's VGG16 tensor names: `features.{i}` where i counts conv, ReLU and pool modules.
pub(crate) fn conv_indices(cfg: &Config) -> Vec<usize> {
    let mut idx = 0;
    let mut out = Vec::new();
    for stage in &cfg.stages {
        for _ in stage {
            out.push(idx);
            idx += 2; // conv, ReLU
        }
        idx += 1; // max pool
    }
    out
}

/// How a 3 x 3 convolution is computed.
#[derive(Debug, Clone)]
enum ConvKind {
    /// im2col + GEMM; the weight as [9 * C_in, C_out] in (ky, kx, c_in) order.
    Im2col(Tensor),
    /// Winograd F(m x m, 3 x 3); the transformed weight [(m + 2)^2, C_in, C_out].
    Winograd { m: usize, u: Tensor },
}

/// One 3 x 3 convolution and its bias (applied by the next kernel).
#[derive(Debug, Clone)]
struct Conv3x3 {
    kind: ConvKind,
    bias: Arc<[f32]>,
}

/// Convolutions with fewer input channels than this use im2col (the first layer, C = 3):
/// Winograd's transforms would cost more than its GEMM saves.
const WINOGRAD_MIN_CHANNELS: usize = 8;

/// VGG16 up to fc2 + ReLU.
#[derive(Debug, Clone)]
pub struct Vgg16 {
    /// Convolutions stage by stage.
    stages: Vec<Vec<Conv3x3>>,
    /// fc1 as [(y, x, c), fc_dim]: rows permuted from timm's (c, y, x) to the NHWC flatten order.
    fc1_weight: Tensor,
    fc1_bias: Tensor,
    /// fc2 as [fc_dim (in), fc_dim (out)].
    fc2_weight: Tensor,
    fc2_bias: Tensor,
    cfg: Config,
}

impl Vgg16 {
    /// Tensor names as timm's `vgg16.tv_in1k`: `features.{0,2,5,...,28}.{weight,bias}`,
    /// `pre_logits.fc1.{weight,bias}` ([fc, C, k, k]), `pre_logits.fc2.{weight,bias}` ([fc, fc, 1,
    /// 1]). `head.fc.*` is not requested. Weights are converted to f32.
    pub fn new(vb: VarBuilder, cfg: &Config) -> candle_core::Result<Self> {
        cfg.validate()
            .map_err(|e| candle_core::Error::Msg(format!("VGG16 config: {e}")))?;
        // Winograd is a CPU kernel; the portable path (GPUs) convolves with candle's conv2d.
        let native = crate::kernels::native_kernels(vb.device());
        let features = vb.pp("features");
        let mut indices = conv_indices(cfg).into_iter();
        let mut c_in = 3;
        let mut side = cfg.image_size; // of the maps of the current stage
        let mut stages = Vec::with_capacity(cfg.stages.len());
        for stage in &cfg.stages {
            let mut convs = Vec::with_capacity(stage.len());
            for &c_out in stage {
                let i = indices.next().expect("one index per convolution");
                let vb = features.pp(i);
                let w = vb
                    .get((c_out, c_in, 3, 3), "weight")?
                    .to_dtype(DType::F32)?;
                let b = vb.get(c_out, "bias")?.to_dtype(DType::F32)?;
                let tile = nhwc::winograd_tile(side, side)
                    .filter(|_| native && c_in >= WINOGRAD_MIN_CHANNELS);
                let kind = match tile {
                    Some(m) => ConvKind::Winograd {
                        m,
                        u: nhwc::winograd_weight(&w, m)?,
                    },
                    // [O, C, ky, kx] -> [ky, kx, C, O] -> [9C, O]
                    None => ConvKind::Im2col(
                        w.permute((2, 3, 1, 0))?
                            .contiguous()?
                            .reshape((9 * c_in, c_out))?,
                    ),
                };
                convs.push(Conv3x3 {
                    kind,
                    bias: nhwc::host(&b)?,
                });
                c_in = c_out;
            }
            stages.push(convs);
            side /= 2;
        }
        let (k, fc) = (cfg.final_map_size(), cfg.fc_dim);
        let pre = vb.pp("pre_logits");
        let fc1 = pre
            .get((fc, c_in, k, k), "fc1.weight")?
            .to_dtype(DType::F32)?;
        // [fc, C, y, x] -> [y, x, C, fc] -> [k*k*C, fc]
        let fc1_weight = fc1
            .permute((2, 3, 1, 0))?
            .contiguous()?
            .reshape((k * k * c_in, fc))?;
        let fc2 = pre
            .get((fc, fc, 1, 1), "fc2.weight")?
            .to_dtype(DType::F32)?;
        let fc2_weight = fc2.reshape((fc, fc))?.t()?.contiguous()?;
        Ok(Self {
            stages,
            fc1_weight,
            fc1_bias: pre.get(fc, "fc1.bias")?.to_dtype(DType::F32)?,
            fc2_weight,
            fc2_bias: pre.get(fc, "fc2.bias")?.to_dtype(DType::F32)?,
            cfg: cfg.clone(),
        })
    }

    /// The convolution stack: [B, C_final, k, k] (NCHW), after the last max pool (ReLU applied), as
    /// timm's `forward_features`. `x` as for [`Self::forward`].
    pub fn forward_features(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.features_nhwc(x)?.permute((0, 3, 1, 2))?.contiguous()
    }

    /// x: [B, 3, S, S], already preprocessed -> [B, fc_dim]: fc2's output after ReLU.
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let map = self.features_nhwc(x)?;
        let b = map.dim(0)?;
        let flat = map.reshape((b, ()))?;
        let h = flat
            .matmul(&self.fc1_weight)?
            .broadcast_add(&self.fc1_bias)?
            .relu()?;
        h.matmul(&self.fc2_weight)?
            .broadcast_add(&self.fc2_bias)?
            .relu()
    }

    /// The final map channels-last [B, k, k, C], ReLU applied.
    fn features_nhwc(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let s = self.cfg.image_size;
        let (_, c, h, w) = x.dims4()?;
        if c != 3 || h != s || w != s {
            candle_core::bail!(
                "VGG16: input must be [B, 3, {s}, {s}] (preprocessed), got {:?}",
                x.dims()
            );
        }
        let mut x = x
            .to_dtype(DType::F32)?
            .permute((0, 2, 3, 1))?
            .contiguous()?;
        // The bias (and ReLU) of the last convolution, not yet applied to x; none for the image.
        let mut pending: Option<Arc<[f32]>> = None;
        for stage in &self.stages {
            for conv in stage {
                let pre = nhwc::Pre {
                    relu: pending.is_some(),
                    bias: pending.take(),
                };
                x = match &conv.kind {
                    ConvKind::Im2col(w) => nhwc::conv_im2col(&x, w, 3, 1, 1, &pre)?,
                    ConvKind::Winograd { m, u } => nhwc::conv_winograd(&x, u, *m, &pre)?,
                };
                pending = Some(conv.bias.clone());
            }
            let pre = nhwc::Pre {
                bias: pending.take(),
                relu: true,
            };
            x = nhwc::MaxPool {
                k: 2,
                stride: 2,
                pad: 0,
                pre,
            }
            .run(&x)?;
        }
        Ok(x)
    }

    pub fn feature_dim(&self) -> usize {
        self.cfg.fc_dim
    }

    pub fn input_size(&self) -> usize {
        self.cfg.image_size
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// [`preprocess_image`] at the full geometry's input size (224), the size of every hub
    /// checkpoint. For a model with another `image_size` (the tiny test fixtures) use
    /// `preprocess_image(img, model.input_size(), device)`.
    pub fn preprocess(img: &image::RgbImage, device: &Device) -> candle_core::Result<Tensor> {
        preprocess_image(img, Config::vgg16().image_size, device)
    }

    /// Loads `model.safetensors` (f32) from a resolved model. The geometry comes from the
    /// `roundtrip` object of `config.json` when there is one (roundtrip's own fixtures); otherwise
    /// (a timm hub checkpoint, whose config.json is timm's `pretrained_cfg`, or a folder without
    /// config.json) it is the full [`Config::vgg16`]. A config.json naming another `architecture`
    /// than `vgg16` is refused. Errors name the file and, for weights, the tensor.
    pub fn load(model: &crate::hub::Model, device: &Device) -> anyhow::Result<Self> {
        let cfg = match crate::weights::read_config(model, &["vgg16"])? {
            Some((path, v)) => {
                let cfg: Config = serde_json::from_value(v)
                    .map_err(|e| input_err!("{}: key `roundtrip`: {e}", path.display()))?;
                cfg.validate()
                    .map_err(|e| input_err!("{}: key `roundtrip`: {e}", path.display()))?;
                cfg
            }
            None => Config::vgg16(),
        };
        let path = model.file("model.safetensors")?;
        crate::weights::load_safetensors(&path, DType::F32, device, |vb| Self::new(vb, &cfg))
    }
}

/// ImageNet mean and std (timm's `IMAGENET_DEFAULT_MEAN` / `_STD`, the pretrained_cfg of
/// `vgg16.tv_in1k`).
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// VGG16's preprocessing at side `size`: [`crate::imageops::resize::pil_resize_nearest`] straight
/// to size x size (skipped when the image already has that size), then x / 255 and (x - mean) /
/// std with the ImageNet statistics, in f32 (torchvision's ToTensor + Normalize). Returns [3, size, size].
pub fn preprocess_image(
    img: &image::RgbImage,
    size: usize,
    device: &Device,
) -> candle_core::Result<Tensor> {
    crate::imageops::normalised_chw(img, size, device, |v, c| {
        (v as f32 / 255.0 - IMAGENET_MEAN[c]) / IMAGENET_STD[c]
    })
}
