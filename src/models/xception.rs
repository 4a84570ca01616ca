//! Xception (Chollet 2017, "Xception: Deep Learning with Depthwise Separable Convolutions") as a
//! frozen image encoder; checkpoint layout of timm's `legacy_xception.tf_in1k` (the PyTorch port of
//! the Keras ImageNet weights, hub repository `timm/legacy_xception.tf_in1k`).
//!
//! The feature is the global average pool of the last ReLU (act4), 2048-d at 299 x 299: Keras'
//! `Xception(include_top=False, pooling="avg")`, what the original captioner used. timm's
//! BatchNorm layers are plain `nn.BatchNorm2d` (eps 1e-5, eval mode: running statistics); each is
//! folded into the convolution before it (the pointwise convolution of a separable convolution, the
//! stem convolutions, the 1 x 1 skip convolutions), leaving a per-channel bias. The classifier
//! (`fc.*`) and the `num_batches_tracked` counters are not read.
//!
//! Preprocessing ([`preprocess_image`], [`Xception::preprocess`]): resized straight to S x S (no
//! crop, aspect ratio not kept) with PIL's NEAREST filter, bit for bit, as Keras'
//! `load_img(path, target_size=(S, S))` did for the original captioners (nearest is its default);
//! an image already S x S is used as is. Then x / 127.5 - 1 in f32 (Keras' "tf" mode; timm's
//! mean = std = 0.5 agrees to one f32 ulp).
//!
//! Speed: activations are channels-last (NHWC). A depthwise 3 x 3 convolution is a CPU kernel of
//! nine shifted multiply-adds per output row, vectorised over the channels (candle's conv2d with
//! groups = C is slow), which also applies the preceding ReLU and pending bias as it reads its
//! input; a pointwise convolution is one GEMM over all pixels of the batch. Pending BatchNorm biases
//! are applied by the next kernel that reads the tensor (depthwise, max pool, the residual add), so
//! they cost no pass of their own. The kernels live in [`crate::kernels::nhwc`]; they are f32, CPU
//! only (on other devices the same graph runs as candle ops), without a backward (frozen encoder): `backward` through them is an error, not a silently
//! cut gradient.

use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};

use crate::input_err;
use crate::kernels::nhwc::{self, Pre};

/// Geometry of an Xception. Every size here is a channel count except `image_size`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Channels of the stem: conv1 (3 x 3, stride 2, no padding) and conv2 (3 x 3, no padding).
    pub stem: [usize; 2],
    /// Outputs of the three entry-flow blocks (block1..block3), each halving the resolution.
    pub entry: [usize; 3],
    /// Number of middle-flow blocks (three separable convolutions at width `entry[2]` each).
    pub middle_blocks: usize,
    /// Output of the exit block (block12 in the full model), which halves the resolution again.
    pub exit: usize,
    /// The two separable convolutions after the exit block (conv3, conv4); the feature
    /// dimension is `exit_convs[1]`.
    pub exit_convs: [usize; 2],
    /// Side S of the square input.
    pub image_size: usize,
    /// BatchNorm epsilon: 1e-5, timm's `nn.BatchNorm2d` default, which is what timm runs the
    /// ported weights with (the Keras original used 1e-3).
    pub bn_eps: f64,
}

impl Config {
    /// Xception at 299 x 299: the geometry of `timm/legacy_xception.tf_in1k`.
    pub fn xception() -> Self {
        Self {
            stem: [32, 64],
            entry: [128, 256, 728],
            middle_blocks: 8,
            exit: 1024,
            exit_convs: [1536, 2048],
            image_size: 299,
            bn_eps: 1e-5,
        }
    }

    /// Xception's shape at reduced widths with four middle-flow blocks for 64 px images (the
    /// shapes world): the default of `roundtrip train --train-encoder`. The maps are 31, 29,
    /// 15, 8, 4 (middle flow) and 2 pixels on a side; the feature is 256-d.
    pub fn xception_shapes() -> Self {
        Self {
            stem: [8, 16],
            entry: [32, 64, 128],
            middle_blocks: 4,
            exit: 192,
            exit_convs: [256, 256],
            image_size: 64,
            bn_eps: 1e-5,
        }
    }

    /// A toy geometry for 32 px images (tests and smoke runs): one middle-flow block, 1 x 1 maps
    /// after the exit block.
    pub fn tiny() -> Self {
        Self {
            stem: [4, 8],
            entry: [8, 16, 16],
            middle_blocks: 1,
            exit: 24,
            exit_convs: [32, 32],
            image_size: 32,
            bn_eps: 1e-5,
        }
    }

    /// Checks the geometry; the message names the offending field.
    pub fn validate(&self) -> Result<(), String> {
        let sizes = self
            .stem
            .iter()
            .chain(&self.entry)
            .chain(&self.exit_convs)
            .chain(std::iter::once(&self.exit));
        if sizes.into_iter().any(|&c| c == 0) {
            return Err("channel counts must be at least 1".into());
        }
        if self.image_size < 7 {
            return Err(format!(
                "`image_size` ({}) must be at least 7 (two unpadded 3 x 3 convolutions, the first \
                 with stride 2)",
                self.image_size
            ));
        }
        if !(self.bn_eps > 0.0 && self.bn_eps.is_finite()) {
            return Err(format!("`bn_eps` ({}) must be positive", self.bn_eps));
        }
        Ok(())
    }
}

/// Eval-mode BatchNorm as `y = x * scale + shift` (computed in f64).
fn batch_norm(vb: VarBuilder, c: usize, eps: f64) -> candle_core::Result<(Tensor, Arc<[f32]>)> {
    let get = |name: &str| -> candle_core::Result<Vec<f64>> {
        vb.get(c, name)?.to_dtype(DType::F64)?.to_vec1::<f64>()
    };
    let (w, b, mean, var) = (
        get("weight")?,
        get("bias")?,
        get("running_mean")?,
        get("running_var")?,
    );
    let scale: Vec<f64> = w
        .iter()
        .zip(&var)
        .map(|(w, v)| w / (v + eps).sqrt())
        .collect();
    let shift: Vec<f32> = b
        .iter()
        .zip(&mean)
        .zip(&scale)
        .map(|((b, m), s)| (b - m * s) as f32)
        .collect();
    let scale = Tensor::from_vec(scale, c, vb.device())?;
    Ok((scale, shift.into()))
}

/// A 1 x 1 (or k x k) convolution weight [O, C, k, k] with a BatchNorm folded in, as the GEMM
/// operand [k * k * C, O] in (ky, kx, c) order.
fn folded_conv(
    vb: VarBuilder,
    bn: VarBuilder,
    (o, c, k): (usize, usize, usize),
    eps: f64,
) -> candle_core::Result<(Tensor, Arc<[f32]>)> {
    let w = vb.get((o, c, k, k), "weight")?.to_dtype(DType::F64)?;
    let (scale, shift) = batch_norm(bn, o, eps)?;
    let w = w.broadcast_mul(&scale.reshape((o, 1, 1, 1))?)?;
    let w = w
        .permute((2, 3, 1, 0))?
        .contiguous()?
        .reshape((k * k * c, o))?
        .to_dtype(DType::F32)?;
    Ok((w, shift))
}

/// timm's `SeparableConv2d` (depthwise 3 x 3 `conv1`, then `pointwise` 1 x 1, no biases) with
/// the BatchNorm that follows it folded into the pointwise weight.
#[derive(Debug, Clone)]
struct SepConv {
    /// Depthwise taps [3, 3, C] (ky, kx, c).
    taps: Arc<[f32]>,
    /// [C, O], BatchNorm scale folded in.
    pointwise: Tensor,
    /// The BatchNorm shift, applied by the next kernel.
    bias: Arc<[f32]>,
}

impl SepConv {
    fn new(
        vb: VarBuilder,
        bn: VarBuilder,
        c: usize,
        o: usize,
        eps: f64,
    ) -> candle_core::Result<Self> {
        let dw = vb.get((c, 1, 3, 3), "conv1.weight")?.to_dtype(DType::F32)?;
        let taps = nhwc::host(&dw.reshape((c, 9))?.t()?.contiguous()?)?;
        let (pointwise, bias) = folded_conv(vb.pp("pointwise"), bn, (o, c, 1), eps)?;
        Ok(Self {
            taps,
            pointwise,
            bias,
        })
    }

    /// Depthwise (input read through `pre`) then pointwise: [B, H, W, O] without the bias.
    fn forward(&self, x: &Tensor, pre: Pre) -> candle_core::Result<Tensor> {
        let d = nhwc::Depthwise3x3 {
            taps: self.taps.clone(),
            pre,
        }
        .run(x)?;
        pointwise(&d, &self.pointwise)
    }
}

/// [B, H, W, C] x [C, O] -> [B, H, W, O]: one GEMM over every pixel of the batch.
fn pointwise(x: &Tensor, w: &Tensor) -> candle_core::Result<Tensor> {
    let (b, h, wd, c) = x.dims4()?;
    x.reshape((b * h * wd, c))?
        .matmul(w)?
        .reshape((b, h, wd, w.dim(1)?))
}

/// timm's legacy Xception `Block`: [ReLU, SepConv, BN] x reps (the first ReLU dropped when
/// `start_with_relu` is false), a 3 x 3 stride-2 max pool (padding 1) when strided, plus the skip:
/// identity, or a strided 1 x 1 convolution + BN when the shape changes.
#[derive(Debug, Clone)]
struct Block {
    seps: Vec<SepConv>,
    start_with_relu: bool,
    stride: usize,
    skip: Option<(Tensor, Arc<[f32]>)>,
}

pub(crate) struct BlockSpec {
    pub c_in: usize,
    pub c_out: usize,
    pub reps: usize,
    pub stride: usize,
    pub start_with_relu: bool,
    pub grow_first: bool,
}

impl BlockSpec {
    /// Whether the block has a skip convolution (+ BN): the shape changes.
    pub fn has_skip(&self) -> bool {
        self.c_out != self.c_in || self.stride != 1
    }

    /// Repetition `i`: its input and output channels and the index of its separable
    /// convolution in `rep` ([ReLU, SepConv, BN] per repetition, minus the first ReLU when the
    /// block does not start with one); its BN is the next index.
    pub fn rep(&self, i: usize) -> (usize, usize, usize) {
        let (c, o) = if self.grow_first {
            (if i == 0 { self.c_in } else { self.c_out }, self.c_out)
        } else {
            (
                self.c_in,
                if i + 1 < self.reps {
                    self.c_in
                } else {
                    self.c_out
                },
            )
        };
        (c, o, 3 * i + usize::from(self.start_with_relu))
    }
}

/// The blocks of timm's legacy Xception at `cfg`, in order (`block1`, `block2`, ...): three
/// entry-flow blocks, the middle flow, the exit block.
pub(crate) fn block_specs(cfg: &Config) -> Vec<BlockSpec> {
    let spec = |c_in, c_out, reps, stride, start_with_relu, grow_first| BlockSpec {
        c_in,
        c_out,
        reps,
        stride,
        start_with_relu,
        grow_first,
    };
    let [_, s2] = cfg.stem;
    let [e1, e2, e3] = cfg.entry;
    let mut specs = vec![
        spec(s2, e1, 2, 2, false, true),
        spec(e1, e2, 2, 2, true, true),
        spec(e2, e3, 2, 2, true, true),
    ];
    specs.extend((0..cfg.middle_blocks).map(|_| spec(e3, e3, 3, 1, true, true)));
    specs.push(spec(e3, cfg.exit, 2, 2, true, false));
    specs
}

impl Block {
    fn new(vb: VarBuilder, s: &BlockSpec, eps: f64) -> candle_core::Result<Self> {
        let skip = if s.has_skip() {
            Some(folded_conv(
                vb.pp("skip"),
                vb.pp("skipbn"),
                (s.c_out, s.c_in, 1),
                eps,
            )?)
        } else {
            None
        };
        let rep = vb.pp("rep");
        let seps = (0..s.reps)
            .map(|i| {
                let (c, o, sep) = s.rep(i);
                SepConv::new(rep.pp(sep), rep.pp(sep + 1), c, o, eps)
            })
            .collect::<candle_core::Result<_>>()?;
        Ok(Self {
            seps,
            start_with_relu: s.start_with_relu,
            stride: s.stride,
            skip,
        })
    }

    /// `inp` is materialised (no pending bias); so is the result.
    fn forward(&self, inp: &Tensor) -> candle_core::Result<Tensor> {
        let mut y = inp.clone();
        let mut pre = Pre {
            bias: None,
            relu: self.start_with_relu,
        };
        for sep in &self.seps {
            y = sep.forward(&y, pre)?;
            pre = Pre {
                bias: Some(sep.bias.clone()),
                relu: true,
            };
        }
        let last = pre.bias;
        let (y, y_bias) = if self.stride != 1 {
            let pool = nhwc::MaxPool {
                k: 3,
                stride: self.stride,
                pad: 1,
                pre: Pre {
                    bias: last,
                    relu: false,
                },
            };
            (pool.run(&y)?, None)
        } else {
            (y, last)
        };
        let (s, s_bias) = match &self.skip {
            None => (inp.clone(), None),
            Some((w, b)) if self.stride == 1 => (pointwise(inp, w)?, Some(b.clone())),
            Some((w, b)) => (
                nhwc::conv_im2col(inp, w, 1, self.stride, 0, &Pre::none())?,
                Some(b.clone()),
            ),
        };
        nhwc::AddBiased {
            bias_a: y_bias,
            bias_b: s_bias,
        }
        .run(&y, &s)
    }
}

/// Xception up to the global average pool.
#[derive(Debug, Clone)]
pub struct Xception {
    /// conv1 + bn1 as [27, stem0] and its shift; conv2 + bn2 likewise.
    conv1: (Tensor, Arc<[f32]>),
    conv2: (Tensor, Arc<[f32]>),
    blocks: Vec<Block>,
    conv3: SepConv,
    conv4: SepConv,
    cfg: Config,
}

impl Xception {
    /// Tensor names as timm's `legacy_xception.tf_in1k`: `conv1.weight`, `bn1.*`, `conv2.weight`,
    /// `bn2.*`, `block{1..12}.rep.{i}.conv1.weight` (depthwise) / `.pointwise.weight` /
    /// `rep.{i}.{weight,bias,running_mean,running_var}` (BN), `block{n}.skip.weight` and
    /// `block{n}.skipbn.*` where the shape changes, `conv3.*`, `bn3.*`, `conv4.*`, `bn4.*`. `fc.*`
    /// and `*.num_batches_tracked` are not requested. Weights are converted to f32.
    pub fn new(vb: VarBuilder, cfg: &Config) -> candle_core::Result<Self> {
        cfg.validate()
            .map_err(|e| candle_core::Error::Msg(format!("Xception config: {e}")))?;
        let eps = cfg.bn_eps;
        let [s1, s2] = cfg.stem;
        let conv1 = folded_conv(vb.pp("conv1"), vb.pp("bn1"), (s1, 3, 3), eps)?;
        let conv2 = folded_conv(vb.pp("conv2"), vb.pp("bn2"), (s2, s1, 3), eps)?;
        let blocks = block_specs(cfg)
            .iter()
            .enumerate()
            .map(|(i, s)| Block::new(vb.pp(format!("block{}", i + 1)), s, eps))
            .collect::<candle_core::Result<_>>()?;
        let [c3, c4] = cfg.exit_convs;
        Ok(Self {
            conv1,
            conv2,
            blocks,
            conv3: SepConv::new(vb.pp("conv3"), vb.pp("bn3"), cfg.exit, c3, eps)?,
            conv4: SepConv::new(vb.pp("conv4"), vb.pp("bn4"), c3, c4, eps)?,
            cfg: cfg.clone(),
        })
    }

    /// act4, channels-last [B, h, w, C].
    fn features_nhwc(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let s = self.cfg.image_size;
        let (_, c, h, w) = x.dims4()?;
        if c != 3 || h != s || w != s {
            candle_core::bail!(
                "Xception: input must be [B, 3, {s}, {s}] (preprocessed), got {:?}",
                x.dims()
            );
        }
        let x = x
            .to_dtype(DType::F32)?
            .permute((0, 2, 3, 1))?
            .contiguous()?;
        let y = nhwc::conv_im2col(&x, &self.conv1.0, 3, 2, 0, &Pre::none())?;
        let pre = Pre {
            bias: Some(self.conv1.1.clone()),
            relu: true,
        };
        let y = nhwc::conv_im2col(&y, &self.conv2.0, 3, 1, 0, &pre)?;
        let mut x = nhwc::Apply(Pre {
            bias: Some(self.conv2.1.clone()),
            relu: true,
        })
        .run(&y)?;
        for block in &self.blocks {
            x = block.forward(&x)?;
        }
        let y = self.conv3.forward(&x, Pre::none())?;
        let pre = Pre {
            bias: Some(self.conv3.bias.clone()),
            relu: true,
        };
        let y = self.conv4.forward(&y, pre)?;
        nhwc::Apply(Pre {
            bias: Some(self.conv4.bias.clone()),
            relu: true,
        })
        .run(&y)
    }

    /// act4 as timm's `forward_features`: [B, C, h, w] (NCHW). `x` as for [`Self::forward`].
    pub fn forward_features(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.features_nhwc(x)?.permute((0, 3, 1, 2))?.contiguous()
    }

    /// x: [B, 3, S, S], already preprocessed -> [B, exit_convs[1]]: the global average pool of
    /// act4.
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let a = self.features_nhwc(x)?;
        let (b, h, w, c) = a.dims4()?;
        a.reshape((b, h * w, c))?.mean(1)
    }

    pub fn feature_dim(&self) -> usize {
        self.cfg.exit_convs[1]
    }

    pub fn input_size(&self) -> usize {
        self.cfg.image_size
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// [`preprocess_image`] at the full geometry's input size (299), the size of every hub
    /// checkpoint. For a model with another `image_size` (the tiny test fixtures) use
    /// `preprocess_image(img, model.input_size(), device)`.
    pub fn preprocess(img: &image::RgbImage, device: &Device) -> candle_core::Result<Tensor> {
        preprocess_image(img, Config::xception().image_size, device)
    }

    /// Loads `model.safetensors` (f32) from a resolved model. The geometry comes from the
    /// `roundtrip` object of `config.json` when there is one (roundtrip's own fixtures); otherwise
    /// (a timm hub checkpoint, whose config.json is timm's `pretrained_cfg`, or a folder without
    /// config.json) it is the full [`Config::xception`]. A config.json naming another
    /// `architecture` than `legacy_xception` (or its old timm name `xception`) is refused. Errors
    /// name the file and, for weights, the tensor.
    pub fn load(model: &crate::hub::Model, device: &Device) -> anyhow::Result<Self> {
        let cfg = match crate::weights::read_config(model, &["legacy_xception", "xception"])? {
            Some((path, v)) => {
                let cfg: Config = serde_json::from_value(v)
                    .map_err(|e| input_err!("{}: key `roundtrip`: {e}", path.display()))?;
                cfg.validate()
                    .map_err(|e| input_err!("{}: key `roundtrip`: {e}", path.display()))?;
                cfg
            }
            None => Config::xception(),
        };
        let path = model.file("model.safetensors")?;
        crate::weights::load_safetensors(&path, DType::F32, device, |vb| Self::new(vb, &cfg))
    }
}

/// Xception's preprocessing at side `size`: [`crate::imageops::resize::pil_resize_nearest`]
/// straight to size x size (skipped when the image already has that size), then x / 127.5 - 1 in
/// f32.
/// Returns [3, size, size].
pub fn preprocess_image(
    img: &image::RgbImage,
    size: usize,
    device: &Device,
) -> candle_core::Result<Tensor> {
    crate::imageops::normalised_chw(img, size, device, |v, _| v as f32 / 127.5 - 1.0)
}
