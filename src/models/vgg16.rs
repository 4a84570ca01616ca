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
//! [`super::xception`] (module [`nhwc`]). They are f32 CPU kernels without a backward: the encoders
//! are frozen feature extractors, and calling `backward` through them is an error, not a silent
//! zero gradient. On CUDA or Metal the same graph runs as candle ops (conv2d, max_pool2d, shifted
//! multiply-adds; no Winograd), see [`super::native_kernels`].

use std::path::Path;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::input_err;

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
        let native = super::native_kernels(vb.device());
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
        let cfg = match read_config(model, &["vgg16"])? {
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
        load_weights(&path, device, |vb| Self::new(vb, &cfg))
    }
}

/// Reads config.json of a model if it has one: checks its `architecture` (when present) against
/// `accepted` and returns its `roundtrip` object, if any. A folder without config.json is fine
/// (None); any other failure to get the file is an error.
pub(crate) fn read_config(
    model: &crate::hub::Model,
    accepted: &[&str],
) -> anyhow::Result<Option<(std::path::PathBuf, Value)>> {
    let path = match model.file("config.json") {
        Ok(p) => p,
        Err(crate::hub::LocateError::MissingInFolder { .. }) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let text = std::fs::read_to_string(&path)
        .map_err(|e| input_err!("cannot read {}: {e}", path.display()))?;
    let root: Value = serde_json::from_str(&text)
        .map_err(|e| input_err!("{} is not valid JSON: {e}", path.display()))?;
    let Value::Object(mut root) = root else {
        return Err(input_err!(
            "{}: expected a JSON object at the top level",
            path.display()
        ));
    };
    if let Some(arch) = root.get("architecture").filter(|v| !v.is_null()) {
        let ok = arch.as_str().is_some_and(|a| accepted.contains(&a));
        if !ok {
            return Err(input_err!(
                "{}: `architecture` is {arch}, expected one of {accepted:?}: this is not the \
                 checkpoint of this encoder",
                path.display()
            ));
        }
    }
    Ok(root.remove("roundtrip").map(|v| (path, v)))
}

/// Builds a model from a safetensors file (f32, on `device`); a missing or mis-shaped tensor is an
/// input error naming the file and the tensor.
pub(crate) fn load_weights<T>(
    path: &Path,
    device: &Device,
    build: impl FnOnce(VarBuilder) -> candle_core::Result<T>,
) -> anyhow::Result<T> {
    let bytes =
        std::fs::read(path).map_err(|e| input_err!("cannot read {}: {e}", path.display()))?;
    let vb = VarBuilder::from_slice_safetensors(&bytes, DType::F32, device)
        .map_err(|e| input_err!("{} is not a valid safetensors file: {e}", path.display()))?;
    build(vb).map_err(|e| input_err!("{}: {}", path.display(), without_backtrace(e)))
}

/// The error without the backtrace candle attaches when RUST_BACKTRACE is set.
fn without_backtrace(e: candle_core::Error) -> candle_core::Error {
    match e {
        candle_core::Error::WithBacktrace { inner, .. } => without_backtrace(*inner),
        e => e,
    }
}

/// ImageNet mean and std (timm's `IMAGENET_DEFAULT_MEAN` / `_STD`, the pretrained_cfg of
/// `vgg16.tv_in1k`).
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// VGG16's preprocessing at side `size`: [`pil_resize_nearest`] straight to size x size (skipped
/// when the image already has that size), then x / 255 and (x - mean) / std with the ImageNet
/// statistics, in f32 (torchvision's ToTensor + Normalize). Returns [3, size, size].
pub fn preprocess_image(
    img: &image::RgbImage,
    size: usize,
    device: &Device,
) -> candle_core::Result<Tensor> {
    nhwc::normalised_chw(img, size, device, |v, c| {
        (v as f32 / 255.0 - IMAGENET_MEAN[c]) / IMAGENET_STD[c]
    })
}

/// `Image.resize((new_w, new_h), Image.NEAREST)` bit for bit, as Pillow's `ImagingScaleAffine`:
/// source column of output x is `(int)xo` where `xo` starts at `scale / 2` (scale = in / out, in
/// f64) and grows by `scale` per column (accumulated, as Pillow does); likewise for rows. An image
/// already new_w x new_h is returned unchanged (Pillow copies it).
pub fn pil_resize_nearest(img: &image::RgbImage, new_w: usize, new_h: usize) -> image::RgbImage {
    let (w, h) = (img.width() as usize, img.height() as usize);
    if (w, h) == (new_w, new_h) {
        return img.clone();
    }
    let table = |input: usize, output: usize| -> Vec<usize> {
        let scale = input as f64 / output as f64;
        let mut pos = scale * 0.5;
        (0..output)
            .map(|_| {
                let i = (pos as usize).min(input.saturating_sub(1));
                pos += scale;
                i
            })
            .collect()
    };
    let (xs, ys) = (table(w, new_w), table(h, new_h));
    let src = img.as_raw();
    let mut out = Vec::with_capacity(new_w * new_h * 3);
    for &y in &ys {
        let row = &src[y * w * 3..(y + 1) * w * 3];
        for &x in &xs {
            out.extend_from_slice(&row[x * 3..x * 3 + 3]);
        }
    }
    image::RgbImage::from_raw(new_w as u32, new_h as u32, out)
        .expect("the buffer has new_w * new_h * 3 bytes by construction")
}

/// Channels-last (NHWC) f32 CPU kernels shared by the VGG16 and Xception encoders.
///
/// Each kernel reads its operand through a [`Pre`] transform (add a pending per-channel bias,
/// then ReLU), so that a layer's bias and activation cost no pass of their own: they are applied
/// by whichever kernel reads the layer's output next. Work is split over candle's thread count
/// with scoped threads. The ops have no backward: they are applied with `apply_op1` / `apply_op2`,
/// so that a gradient reaching them is an error (`BackwardNotSupported`) rather than silently
/// dropped (`apply_op*_no_bwd` would cut the graph).
pub(crate) mod nhwc {
    use crate::models::{f32_slice, native_kernels};
    use std::sync::Arc;

    use candle_core::{CpuStorage, CustomOp1, CustomOp2, Device, Layout, Shape, Tensor};

    /// Upper bound on the elements of one im2col band (16 MiB of f32): larger inputs are
    /// convolved band by band, each band one GEMM.
    const BAND_ELEMS: usize = 1 << 22;

    /// Below this many output elements a kernel runs on one thread.
    const PAR_MIN: usize = 1 << 15;

    /// A tensor's elements on the host (for small per-channel vectors).
    pub fn host(t: &Tensor) -> candle_core::Result<Arc<[f32]>> {
        Ok(t.flatten_all()?.to_vec1::<f32>()?.into())
    }

    /// Transform applied to an operand as a kernel reads it: `x + bias[c]`, then ReLU if `relu`.
    #[derive(Debug, Clone, Default)]
    pub struct Pre {
        pub bias: Option<Arc<[f32]>>,
        pub relu: bool,
    }

    impl Pre {
        pub fn none() -> Self {
            Self::default()
        }

        fn check(&self, c: usize, op: &str) -> candle_core::Result<()> {
            match &self.bias {
                Some(b) if b.len() != c => {
                    candle_core::bail!("{op}: pending bias has {} channels, the input {c}", b.len())
                }
                _ => Ok(()),
            }
        }

        /// `pre(x)` from candle ops, for an NHWC tensor on any device (the portable path).
        pub fn portable(&self, x: &Tensor) -> candle_core::Result<Tensor> {
            let c = x.dim(candle_core::D::Minus1)?;
            self.check(c, "pre")?;
            let mut y = x.clone();
            if let Some(b) = &self.bias {
                y = y.broadcast_add(&Tensor::from_slice(b, c, x.device())?)?;
            }
            if self.relu {
                y = y.relu()?;
            }
            Ok(y)
        }

        /// dst = pre(src) for one pixel (or any whole number of pixels) of C channels.
        #[inline]
        fn pixels(&self, src: &[f32], dst: &mut [f32]) {
            match (&self.bias, self.relu) {
                (None, false) => dst.copy_from_slice(src),
                (None, true) => {
                    for (d, &s) in dst.iter_mut().zip(src) {
                        *d = s.max(0.0);
                    }
                }
                (Some(b), false) => {
                    for (dpx, spx) in dst.chunks_exact_mut(b.len()).zip(src.chunks_exact(b.len())) {
                        for ((d, &s), &b) in dpx.iter_mut().zip(spx).zip(b.iter()) {
                            *d = s + b;
                        }
                    }
                }
                (Some(b), true) => {
                    for (dpx, spx) in dst.chunks_exact_mut(b.len()).zip(src.chunks_exact(b.len())) {
                        for ((d, &s), &b) in dpx.iter_mut().zip(spx).zip(b.iter()) {
                            *d = (s + b).max(0.0);
                        }
                    }
                }
            }
        }
    }

    /// Runs `f(first_row, rows)` over `out` split into bands of whole rows, one per thread.
    pub(crate) fn par_rows(out: &mut [f32], row_len: usize, f: impl Fn(usize, &mut [f32]) + Sync) {
        let rows = out.len() / row_len.max(1);
        let threads = candle_core::utils::get_num_threads().clamp(1, rows.max(1));
        if threads == 1 || out.len() < PAR_MIN {
            f(0, out);
            return;
        }
        let per = rows.div_ceil(threads);
        std::thread::scope(|s| {
            for (i, band) in out.chunks_mut(per * row_len).enumerate() {
                let f = &f;
                s.spawn(move || f(i * per, band));
            }
        });
    }

    fn out_size(input: usize, k: usize, stride: usize, pad: usize) -> candle_core::Result<usize> {
        if input + 2 * pad < k {
            candle_core::bail!("kernel {k} larger than the padded input {input} + 2 * {pad}")
        }
        Ok((input + 2 * pad - k) / stride + 1)
    }

    /// im2col of an NHWC input [B, H, W, C] for a k x k kernel: output rows `rows` of the
    /// flattened (b, oy) grid, each of Wo pixels, as [rows.len() * Wo, k * k * C] in (ky, kx, c)
    /// order; padding reads as zero (after `pre`, as the convolution pads its actual input).
    pub struct Im2col {
        pub k: usize,
        pub stride: usize,
        pub pad: usize,
        pub rows: std::ops::Range<usize>,
        pub pre: Pre,
    }

    impl CustomOp1 for Im2col {
        fn name(&self) -> &'static str {
            "im2col-nhwc"
        }

        fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
            let x = f32_slice(s, l, self.name())?;
            let (_, h, w, c) = l.shape().dims4()?;
            self.pre.check(c, self.name())?;
            let (k, st, pad) = (self.k, self.stride, self.pad);
            let (ho, wo) = (out_size(h, k, st, pad)?, out_size(w, k, st, pad)?);
            let kk = k * k * c;
            let n = self.rows.len();
            let mut out = vec![0f32; n * wo * kk];
            let r0 = self.rows.start;
            par_rows(&mut out, wo * kk, |first, band| {
                for (i, orow) in band.chunks_exact_mut(wo * kk).enumerate() {
                    let r = r0 + first + i;
                    let (b, oy) = (r / ho, r % ho);
                    for ky in 0..k {
                        let iy = (oy * st + ky) as isize - pad as isize;
                        if iy < 0 || iy >= h as isize {
                            continue;
                        }
                        let irow = &x[(b * h + iy as usize) * w * c..][..w * c];
                        for (ox, px) in orow.chunks_exact_mut(kk).enumerate() {
                            for kx in 0..k {
                                let ix = (ox * st + kx) as isize - pad as isize;
                                if ix < 0 || ix >= w as isize {
                                    continue;
                                }
                                let ix = ix as usize;
                                self.pre.pixels(
                                    &irow[ix * c..(ix + 1) * c],
                                    &mut px[(ky * k + kx) * c..][..c],
                                );
                            }
                        }
                    }
                }
            });
            Ok((CpuStorage::F32(out), Shape::from((n * wo, kk))))
        }
    }

    /// Convolution of an NHWC input by im2col + GEMM: `weight` is [k*k*C, O] in (ky, kx, c)
    /// order. The input is read through `pre`. Large inputs go band by band (each band's im2col at
    /// most [`BAND_ELEMS`]). Returns [B, Ho, Wo, O] without bias.
    pub fn conv_im2col(
        x: &Tensor,
        weight: &Tensor,
        k: usize,
        stride: usize,
        pad: usize,
        pre: &Pre,
    ) -> candle_core::Result<Tensor> {
        let (b, h, w, c) = x.dims4()?;
        let (ho, wo) = (out_size(h, k, stride, pad)?, out_size(w, k, stride, pad)?);
        let o = weight.dim(1)?;
        if !native_kernels(x.device()) {
            // candle's conv2d in NCHW, the weight back in [O, C, ky, kx].
            let w = weight
                .reshape((k, k, c, o))?
                .permute((3, 2, 0, 1))?
                .contiguous()?;
            let xin = pre.portable(x)?.permute((0, 3, 1, 2))?.contiguous()?;
            return xin
                .conv2d(&w, pad, stride, 1, 1)?
                .permute((0, 2, 3, 1))?
                .contiguous();
        }
        let row_elems = wo * k * k * c;
        let total = b * ho;
        let band = (BAND_ELEMS / row_elems.max(1)).clamp(1, total);
        let mut parts = Vec::with_capacity(total.div_ceil(band));
        let mut r = 0;
        while r < total {
            let end = (r + band).min(total);
            let cols = x.apply_op1(Im2col {
                k,
                stride,
                pad,
                rows: r..end,
                pre: pre.clone(),
            })?;
            parts.push(cols.matmul(weight)?);
            r = end;
        }
        let y = if parts.len() == 1 {
            parts.pop().expect("one part")
        } else {
            Tensor::cat(&parts, 0)?
        };
        y.reshape((b, ho, wo, o))
    }

    /// Winograd transforms F(m x m, 3 x 3) (Lavin & Gray 2016, "Fast Algorithms for Convolutional
    /// Neural Networks"): tiles of n = m + 2 input pixels give m x m outputs with n^2 instead of
    /// 9 m^2 multiplications per (input, output) channel pair, i.e. 2.25x (m = 2) or 4x (m = 4)
    /// less GEMM work than im2col. `bt` is B^T [n, n], `g` is G [n, 3], `at` is A^T [m, n].
    struct Winograd {
        bt: &'static [&'static [f64]],
        g: &'static [[f64; 3]],
        at: &'static [&'static [f64]],
    }

    /// Interpolation points 0, 1, -1, infinity.
    const F2: Winograd = Winograd {
        bt: &[
            &[1.0, 0.0, -1.0, 0.0],
            &[0.0, 1.0, 1.0, 0.0],
            &[0.0, -1.0, 1.0, 0.0],
            &[0.0, 1.0, 0.0, -1.0],
        ],
        g: &[
            [1.0, 0.0, 0.0],
            [0.5, 0.5, 0.5],
            [0.5, -0.5, 0.5],
            [0.0, 0.0, 1.0],
        ],
        at: &[&[1.0, 1.0, 1.0, 0.0], &[0.0, 1.0, -1.0, -1.0]],
    };

    /// Interpolation points 0, 1, -1, 2, -2, infinity.
    const F4: Winograd = Winograd {
        bt: &[
            &[4.0, 0.0, -5.0, 0.0, 1.0, 0.0],
            &[0.0, -4.0, -4.0, 1.0, 1.0, 0.0],
            &[0.0, 4.0, -4.0, -1.0, 1.0, 0.0],
            &[0.0, -2.0, -1.0, 2.0, 1.0, 0.0],
            &[0.0, 2.0, -1.0, -2.0, 1.0, 0.0],
            &[0.0, 4.0, 0.0, -5.0, 0.0, 1.0],
        ],
        g: &[
            [1.0 / 4.0, 0.0, 0.0],
            [-1.0 / 6.0, -1.0 / 6.0, -1.0 / 6.0],
            [-1.0 / 6.0, 1.0 / 6.0, -1.0 / 6.0],
            [1.0 / 24.0, 1.0 / 12.0, 1.0 / 6.0],
            [1.0 / 24.0, -1.0 / 12.0, 1.0 / 6.0],
            [0.0, 0.0, 1.0],
        ],
        at: &[
            &[1.0, 1.0, 1.0, 1.0, 1.0, 0.0],
            &[0.0, 1.0, -1.0, 2.0, -2.0, 0.0],
            &[0.0, 1.0, 1.0, 4.0, 4.0, 0.0],
            &[0.0, 1.0, -1.0, 8.0, -8.0, 1.0],
        ],
    };

    fn winograd(m: usize) -> candle_core::Result<&'static Winograd> {
        match m {
            2 => Ok(&F2),
            4 => Ok(&F4),
            _ => candle_core::bail!("winograd: output tile {m} not supported (2 or 4)"),
        }
    }

    /// The output tile for a 3 x 3, stride-1, padding-1 convolution of an h x w map: 4 when both
    /// sides are multiples of 4, else 2 when both are even, else None (use im2col).
    pub fn winograd_tile(h: usize, w: usize) -> Option<usize> {
        if h.is_multiple_of(4) && w.is_multiple_of(4) {
            Some(4)
        } else if h.is_multiple_of(2) && w.is_multiple_of(2) {
            Some(2)
        } else {
            None
        }
    }

    /// The transformed filter U = G g G^T of a [O, C, 3, 3] weight, as [n^2, C, O] f32 (computed
    /// in f64).
    pub fn winograd_weight(w: &Tensor, m: usize) -> candle_core::Result<Tensor> {
        let t = winograd(m)?;
        let n = m + 2;
        let (o, c, kh, kw) = w.dims4()?;
        if (kh, kw) != (3, 3) {
            candle_core::bail!("winograd: 3 x 3 kernels only, got {kh} x {kw}");
        }
        let g: Vec<f64> = w
            .to_dtype(candle_core::DType::F64)?
            .flatten_all()?
            .to_vec1()?;
        let mut u = vec![0f32; n * n * c * o];
        let mut tmp = vec![[0f64; 3]; n];
        for oi in 0..o {
            for ci in 0..c {
                let k = &g[(oi * c + ci) * 9..][..9];
                // tmp = G k [n, 3]; U = tmp G^T [n, n]
                for (i, row) in tmp.iter_mut().enumerate() {
                    for (j, v) in row.iter_mut().enumerate() {
                        *v = (0..3).map(|r| t.g[i][r] * k[r * 3 + j]).sum();
                    }
                }
                for (i, row) in tmp.iter().enumerate() {
                    for (j, gj) in t.g.iter().enumerate() {
                        let v: f64 = (0..3).map(|r| row[r] * gj[r]).sum();
                        u[((i * n + j) * c + ci) * o + oi] = v as f32;
                    }
                }
            }
        }
        Tensor::from_vec(u, (n * n, c, o), w.device())
    }

    /// Input transform V = B^T d B of every n x n tile (stride m, origin at (-1, -1): padding 1)
    /// of the tile rows `rows` of the flattened (b, ty) grid, read through `pre`, as
    /// [tiles, n^2, C] (tile-major, so that each tile is one contiguous block).
    struct WinogradIn {
        m: usize,
        rows: std::ops::Range<usize>,
        pre: Pre,
    }

    impl CustomOp1 for WinogradIn {
        fn name(&self) -> &'static str {
            "winograd-in-nhwc"
        }

        fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
            let x = f32_slice(s, l, self.name())?;
            let (_, h, w, c) = l.shape().dims4()?;
            self.pre.check(c, self.name())?;
            let (m, t) = (self.m, winograd(self.m)?);
            let n = m + 2;
            let (ty_n, tx_n) = (h.div_ceil(m), w.div_ceil(m));
            let tiles = self.rows.len() * tx_n;
            let mut out = vec![0f32; tiles * n * n * c];
            let r0 = self.rows.start;
            par_rows(&mut out, n * n * c, |first, band| {
                let mut d = vec![0f32; n * n * c];
                let mut tmp = vec![0f32; n * n * c];
                for (i, v) in band.chunks_exact_mut(n * n * c).enumerate() {
                    let tile = first + i;
                    let r = r0 + tile / tx_n;
                    let (b, ty, tx) = (r / ty_n, r % ty_n, tile % tx_n);
                    // Gather the tile (zeros outside the map).
                    d.fill(0.0);
                    let x0 = (tx * m) as isize - 1;
                    let lo = (-x0).max(0) as usize;
                    let hi = n.min((w as isize - x0) as usize);
                    for ky in 0..n {
                        let iy = (ty * m + ky) as isize - 1;
                        if iy < 0 || iy >= h as isize {
                            continue;
                        }
                        let irow = &x[(b * h + iy as usize) * w * c..][..w * c];
                        for kx in lo..hi {
                            let ix = (x0 + kx as isize) as usize;
                            self.pre.pixels(
                                &irow[ix * c..(ix + 1) * c],
                                &mut d[(ky * n + kx) * c..][..c],
                            );
                        }
                    }
                    // tmp = B^T d (over tile rows), v = tmp B (over tile columns).
                    tmp.fill(0.0);
                    for (i, bt) in t.bt.iter().enumerate() {
                        for (k, &coef) in bt.iter().enumerate() {
                            if coef != 0.0 {
                                axpy(
                                    &mut tmp[i * n * c..][..n * c],
                                    &d[k * n * c..][..n * c],
                                    coef,
                                );
                            }
                        }
                    }
                    v.fill(0.0);
                    for i in 0..n {
                        for (j, bt) in t.bt.iter().enumerate() {
                            for (k, &coef) in bt.iter().enumerate() {
                                if coef != 0.0 {
                                    axpy(
                                        &mut v[(i * n + j) * c..][..c],
                                        &tmp[(i * n + k) * c..][..c],
                                        coef,
                                    );
                                }
                            }
                        }
                    }
                }
            });
            Ok((CpuStorage::F32(out), Shape::from((tiles, n * n, c))))
        }
    }

    /// y += a * x.
    #[inline]
    fn axpy(y: &mut [f32], x: &[f32], a: f64) {
        let a = a as f32;
        for (y, &x) in y.iter_mut().zip(x) {
            *y += a * x;
        }
    }

    /// Output transform Y = A^T M A of the products M [n^2, tiles, O] of whole tile rows, written
    /// as the image rows they cover: [tile rows * m, w, O] (w a multiple of m).
    struct WinogradOut {
        m: usize,
        w: usize,
    }

    impl CustomOp1 for WinogradOut {
        fn name(&self) -> &'static str {
            "winograd-out-nhwc"
        }

        fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
            let mm = f32_slice(s, l, self.name())?;
            let (nn, tiles, o) = l.shape().dims3()?;
            let (m, t, w) = (self.m, winograd(self.m)?, self.w);
            let n = m + 2;
            if nn != n * n || w % m != 0 || tiles % (w / m) != 0 {
                candle_core::bail!("winograd-out: bad shape {:?} for m {m}, w {w}", l.dims());
            }
            let tx_n = w / m;
            let rows = tiles / tx_n;
            let mut out = vec![0f32; rows * m * w * o];
            par_rows(&mut out, m * w * o, |first, band| {
                let mut tmp = vec![0f32; m * n * o];
                let mut y = vec![0f32; m * m * o];
                for (i, orows) in band.chunks_exact_mut(m * w * o).enumerate() {
                    let r = first + i;
                    for tx in 0..tx_n {
                        let tile = r * tx_n + tx;
                        let prod = |xi: usize| &mm[(xi * tiles + tile) * o..][..o];
                        // tmp = A^T M (over tile rows), y = tmp A (over tile columns).
                        tmp.fill(0.0);
                        for (a, row) in t.at.iter().enumerate() {
                            for (k, &coef) in row.iter().enumerate() {
                                if coef != 0.0 {
                                    for j in 0..n {
                                        axpy(
                                            &mut tmp[(a * n + j) * o..][..o],
                                            prod(k * n + j),
                                            coef,
                                        );
                                    }
                                }
                            }
                        }
                        y.fill(0.0);
                        for a in 0..m {
                            for (col, row) in t.at.iter().enumerate() {
                                for (k, &coef) in row.iter().enumerate() {
                                    if coef != 0.0 {
                                        axpy(
                                            &mut y[(a * m + col) * o..][..o],
                                            &tmp[(a * n + k) * o..][..o],
                                            coef,
                                        );
                                    }
                                }
                            }
                        }
                        for a in 0..m {
                            orows[(a * w + tx * m) * o..][..m * o]
                                .copy_from_slice(&y[a * m * o..(a + 1) * m * o]);
                        }
                    }
                }
            });
            Ok((CpuStorage::F32(out), Shape::from((rows * m, w, o))))
        }
    }

    /// 3 x 3 convolution, stride 1, padding 1, of an NHWC input read through `pre`, by Winograd
    /// F(m x m, 3 x 3): `u` is [`winograd_weight`] ([n^2, C, O]); h and w must be multiples of m
    /// ([`winograd_tile`]). Band by band: input transform, n^2 GEMMs [tiles, C] x [C, O] (one
    /// batched matmul), output transform. Returns [B, H, W, O] without bias.
    pub fn conv_winograd(
        x: &Tensor,
        u: &Tensor,
        m: usize,
        pre: &Pre,
    ) -> candle_core::Result<Tensor> {
        let (b, h, w, c) = x.dims4()?;
        let n = m + 2;
        if h % m != 0 || w % m != 0 {
            candle_core::bail!("winograd: the map {h} x {w} is not a multiple of the tile {m}");
        }
        let o = u.dim(2)?;
        let (ty_n, tx_n) = (h / m, w / m);
        let row_elems = tx_n * n * n * c;
        let total = b * ty_n;
        let band = (BAND_ELEMS / row_elems.max(1)).clamp(1, total);
        let mut parts = Vec::with_capacity(total.div_ceil(band));
        let mut r = 0;
        while r < total {
            let end = (r + band).min(total);
            let v = x.apply_op1(WinogradIn {
                m,
                rows: r..end,
                pre: pre.clone(),
            })?;
            // [tiles, n^2, C] viewed as [n^2, tiles, C] (strided; the GEMM reads it in place).
            let prod = v.transpose(0, 1)?.matmul(u)?;
            parts.push(prod.apply_op1(WinogradOut { m, w })?);
            r = end;
        }
        let y = if parts.len() == 1 {
            parts.pop().expect("one part")
        } else {
            Tensor::cat(&parts, 0)?
        };
        y.reshape((b, h, w, o))
    }

    /// Max pooling of an NHWC input read through `pre`; padding positions are ignored (as
    /// PyTorch's -inf padding), floor mode.
    pub struct MaxPool {
        pub k: usize,
        pub stride: usize,
        pub pad: usize,
        pub pre: Pre,
    }

    impl MaxPool {
        /// Applies the pool: the CPU kernel, or candle ops elsewhere ([`native_kernels`]).
        pub fn run(self, x: &Tensor) -> candle_core::Result<Tensor> {
            if native_kernels(x.device()) {
                return x.apply_op1(self);
            }
            let (k, st, pad) = (self.k, self.stride, self.pad);
            if pad * 2 > k {
                candle_core::bail!("max pool: padding {pad} more than half the kernel {k}");
            }
            let mut y = self.pre.portable(x)?;
            if pad > 0 {
                // -inf padding on H and W (dims 1 and 2): never the maximum.
                for dim in [1, 2] {
                    let mut dims = y.dims().to_vec();
                    dims[dim] = pad;
                    let fill = Tensor::full(f32::NEG_INFINITY, dims, y.device())?;
                    y = Tensor::cat(&[&fill, &y, &fill], dim)?;
                }
            }
            y.permute((0, 3, 1, 2))?
                .max_pool2d_with_stride(k, st)?
                .permute((0, 2, 3, 1))?
                .contiguous()
        }
    }

    impl CustomOp1 for MaxPool {
        fn name(&self) -> &'static str {
            "max-pool-nhwc"
        }

        fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
            let x = f32_slice(s, l, self.name())?;
            let (b, h, w, c) = l.shape().dims4()?;
            self.pre.check(c, self.name())?;
            let (k, st, pad) = (self.k, self.stride, self.pad);
            if pad * 2 > k {
                candle_core::bail!("max pool: padding {pad} more than half the kernel {k}");
            }
            let (ho, wo) = (out_size(h, k, st, pad)?, out_size(w, k, st, pad)?);
            let mut out = vec![f32::NEG_INFINITY; b * ho * wo * c];
            par_rows(&mut out, wo * c, |first, band| {
                let mut tmp = vec![0f32; c];
                for (i, orow) in band.chunks_exact_mut(wo * c).enumerate() {
                    let r = first + i;
                    let (bi, oy) = (r / ho, r % ho);
                    for ky in 0..k {
                        let iy = (oy * st + ky) as isize - pad as isize;
                        if iy < 0 || iy >= h as isize {
                            continue;
                        }
                        let irow = &x[(bi * h + iy as usize) * w * c..][..w * c];
                        for (ox, px) in orow.chunks_exact_mut(c).enumerate() {
                            for kx in 0..k {
                                let ix = (ox * st + kx) as isize - pad as isize;
                                if ix < 0 || ix >= w as isize {
                                    continue;
                                }
                                let ix = ix as usize;
                                self.pre.pixels(&irow[ix * c..(ix + 1) * c], &mut tmp);
                                for (o, &v) in px.iter_mut().zip(&tmp) {
                                    *o = o.max(v);
                                }
                            }
                        }
                    }
                }
            });
            Ok((CpuStorage::F32(out), Shape::from((b, ho, wo, c))))
        }
    }

    /// Depthwise 3 x 3 convolution, stride 1, padding 1, of an NHWC input read through `pre`:
    /// out[b, y, x, c] = sum over (ky, kx) of taps[ky, kx, c] * pre(in)[b, y + ky - 1, x + kx - 1, c].
    /// Nine shifted multiply-adds per output row, vectorised over the channels.
    pub struct Depthwise3x3 {
        /// [3, 3, C] (ky, kx, c).
        pub taps: Arc<[f32]>,
        pub pre: Pre,
    }

    impl Depthwise3x3 {
        /// Applies the convolution: the CPU kernel, or nine shifted multiply-adds in candle ops
        /// elsewhere ([`native_kernels`]; candle's grouped conv2d runs one convolution per group).
        pub fn run(self, x: &Tensor) -> candle_core::Result<Tensor> {
            if native_kernels(x.device()) {
                return x.apply_op1(self);
            }
            let (_, h, w, c) = x.dims4()?;
            if self.taps.len() != 9 * c {
                candle_core::bail!(
                    "depthwise: {} taps for {c} channels (expected {})",
                    self.taps.len(),
                    9 * c
                );
            }
            let taps = Tensor::from_slice(&self.taps, (9, c), x.device())?;
            let xp = self
                .pre
                .portable(x)?
                .pad_with_zeros(1, 1, 1)?
                .pad_with_zeros(2, 1, 1)?;
            let mut out: Option<Tensor> = None;
            for ky in 0..3 {
                for kx in 0..3 {
                    let term = xp
                        .narrow(1, ky, h)?
                        .narrow(2, kx, w)?
                        .broadcast_mul(&taps.get(ky * 3 + kx)?)?;
                    out = Some(match out {
                        None => term,
                        Some(o) => (o + term)?,
                    });
                }
            }
            out.ok_or_else(|| candle_core::Error::Msg("depthwise: no taps".into()))
        }
    }

    impl CustomOp1 for Depthwise3x3 {
        fn name(&self) -> &'static str {
            "depthwise3x3-nhwc"
        }

        fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
            let x = f32_slice(s, l, self.name())?;
            let (b, h, w, c) = l.shape().dims4()?;
            self.pre.check(c, self.name())?;
            if self.taps.len() != 9 * c {
                candle_core::bail!(
                    "depthwise: {} taps for {c} channels (expected {})",
                    self.taps.len(),
                    9 * c
                );
            }
            let row = w * c;
            let mut out = vec![0f32; b * h * row];
            let plain = self.pre.bias.is_none() && !self.pre.relu;
            par_rows(&mut out, row, |first, band| {
                let mut scratch = if plain { Vec::new() } else { vec![0f32; row] };
                for (i, orow) in band.chunks_exact_mut(row).enumerate() {
                    let r = first + i;
                    let (bi, y) = (r / h, r % h);
                    for ky in 0..3 {
                        let iy = y as isize + ky as isize - 1;
                        if iy < 0 || iy >= h as isize {
                            continue;
                        }
                        let src = &x[(bi * h + iy as usize) * row..][..row];
                        let irow: &[f32] = if plain {
                            src
                        } else {
                            self.pre.pixels(src, &mut scratch);
                            &scratch
                        };
                        let t = &self.taps[ky * 3 * c..(ky + 1) * 3 * c];
                        let (t0, t1, t2) = (&t[..c], &t[c..2 * c], &t[2 * c..]);
                        // kx = 1: every column; kx = 0 / 2: all but the first / last.
                        fma(orow, irow, t1, c);
                        if w > 1 {
                            fma(&mut orow[c..], &irow[..row - c], t0, c);
                            fma(&mut orow[..row - c], &irow[c..], t2, c);
                        }
                    }
                }
            });
            Ok((CpuStorage::F32(out), Shape::from((b, h, w, c))))
        }
    }

    /// o[p, c] += t[c] * i[p, c] over whole pixels of `c` channels.
    #[inline]
    fn fma(o: &mut [f32], i: &[f32], t: &[f32], c: usize) {
        for (op, ip) in o.chunks_exact_mut(c).zip(i.chunks_exact(c)) {
            for ((o, &i), &t) in op.iter_mut().zip(ip).zip(t) {
                *o += t * i;
            }
        }
    }

    /// `pre(x)`, materialised.
    pub struct Apply(pub Pre);

    impl Apply {
        /// `pre(x)`: the CPU kernel, or candle ops elsewhere ([`native_kernels`]).
        pub fn run(self, x: &Tensor) -> candle_core::Result<Tensor> {
            if native_kernels(x.device()) {
                x.apply_op1(self)
            } else {
                self.0.portable(x)
            }
        }
    }

    impl CustomOp1 for Apply {
        fn name(&self) -> &'static str {
            "bias-relu-nhwc"
        }

        fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
            let x = f32_slice(s, l, self.name())?;
            let c = *l.dims().last().unwrap_or(&1);
            self.0.check(c, self.name())?;
            let mut out = vec![0f32; x.len()];
            let row = c.max(1); // bands of whole pixels
            par_rows(&mut out, row, |first, band| {
                self.0.pixels(&x[first * row..][..band.len()], band);
            });
            Ok((CpuStorage::F32(out), l.shape().clone()))
        }
    }

    /// `(a + bias_a) + (b + bias_b)` for two NHWC tensors of one shape (a residual connection
    /// whose two branches both have a pending bias, or none).
    pub struct AddBiased {
        pub bias_a: Option<Arc<[f32]>>,
        pub bias_b: Option<Arc<[f32]>>,
    }

    impl AddBiased {
        /// `(a + bias_a) + (b + bias_b)`: the CPU kernel, or candle ops elsewhere.
        pub fn run(self, a: &Tensor, b: &Tensor) -> candle_core::Result<Tensor> {
            if native_kernels(a.device()) {
                return a.apply_op2(b, self);
            }
            let pa = Pre {
                bias: self.bias_a,
                relu: false,
            };
            let pb = Pre {
                bias: self.bias_b,
                relu: false,
            };
            pa.portable(a)? + pb.portable(b)?
        }
    }

    impl CustomOp2 for AddBiased {
        fn name(&self) -> &'static str {
            "add-biased-nhwc"
        }

        fn cpu_fwd(
            &self,
            s1: &CpuStorage,
            l1: &Layout,
            s2: &CpuStorage,
            l2: &Layout,
        ) -> candle_core::Result<(CpuStorage, Shape)> {
            let a = f32_slice(s1, l1, self.name())?;
            let b = f32_slice(s2, l2, self.name())?;
            if l1.dims() != l2.dims() {
                candle_core::bail!("add: shapes {:?} and {:?} differ", l1.dims(), l2.dims());
            }
            let c = *l1.dims().last().unwrap_or(&1);
            // The two pending biases sum into one, applied while adding.
            let bias: Option<Vec<f32>> = match (&self.bias_a, &self.bias_b) {
                (None, None) => None,
                (Some(x), None) | (None, Some(x)) => Some(x.to_vec()),
                (Some(x), Some(y)) => Some(x.iter().zip(y.iter()).map(|(x, y)| x + y).collect()),
            };
            if bias.as_ref().is_some_and(|v| v.len() != c) {
                candle_core::bail!("add: pending bias does not have {c} channels");
            }
            let mut out = vec![0f32; a.len()];
            let row = c.max(1); // bands of whole pixels
            par_rows(&mut out, row, |first, band| {
                let (a, b) = (
                    &a[first * row..][..band.len()],
                    &b[first * row..][..band.len()],
                );
                match &bias {
                    None => {
                        for ((o, &x), &y) in band.iter_mut().zip(a).zip(b) {
                            *o = x + y;
                        }
                    }
                    Some(bias) => {
                        for ((op, ap), bp) in band
                            .chunks_exact_mut(c)
                            .zip(a.chunks_exact(c))
                            .zip(b.chunks_exact(c))
                        {
                            for (((o, &x), &y), &z) in op.iter_mut().zip(ap).zip(bp).zip(bias) {
                                *o = x + y + z;
                            }
                        }
                    }
                }
            });
            Ok((CpuStorage::F32(out), l1.shape().clone()))
        }
    }

    /// An RGB image resized with [`super::pil_resize_nearest`] to size x size and mapped byte by
    /// byte with `f(value, channel)`, as [3, size, size] f32.
    pub fn normalised_chw(
        img: &image::RgbImage,
        size: usize,
        device: &Device,
        f: impl Fn(u8, usize) -> f32,
    ) -> candle_core::Result<Tensor> {
        if size == 0 || img.width() == 0 || img.height() == 0 {
            candle_core::bail!(
                "preprocess: cannot resize a {}x{} image to {size}x{size}",
                img.width(),
                img.height()
            );
        }
        let resized = super::pil_resize_nearest(img, size, size);
        let lut: Vec<[f32; 256]> = (0..3)
            .map(|c| std::array::from_fn(|v| f(v as u8, c)))
            .collect();
        let px = resized.as_raw();
        let mut out = vec![0f32; 3 * size * size];
        for (c, plane) in out.chunks_exact_mut(size * size).enumerate() {
            for (o, p) in plane.iter_mut().zip(px.chunks_exact(3)) {
                *o = lut[c][p[c] as usize];
            }
        }
        Tensor::from_vec(out, (3, size, size), device)
    }
}

#[cfg(test)]
mod tests {
    use super::nhwc::{self, Pre};
    use candle_core::{Device, Tensor};
    use rand::SeedableRng;
    use rand_distr::Distribution;

    fn randn(shape: &[usize], mean: f32, std: f32, seed: u64) -> Tensor {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let d = rand_distr::Normal::new(mean, std).unwrap();
        let n = shape.iter().product();
        let v: Vec<f32> = (0..n).map(|_| d.sample(&mut rng)).collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    fn rel(a: &Tensor, b: &Tensor) -> f64 {
        let a: Vec<f32> = a.flatten_all().unwrap().to_vec1().unwrap();
        let b: Vec<f32> = b.flatten_all().unwrap().to_vec1().unwrap();
        let d = a
            .iter()
            .zip(&b)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        let s = b.iter().map(|y| y.abs()).fold(0f32, f32::max);
        (d / s) as f64
    }

    /// Winograd F(2x2) and F(4x4) agree with im2col (f32 rounding only), through `pre`.
    #[test]
    fn winograd_matches_im2col() {
        for (i, &(b, h, c, o, mean)) in [
            (2, 12, 16, 8, 0.0),
            (1, 28, 256, 64, 0.0),
            (1, 28, 256, 64, 5.0),
        ]
        .iter()
        .enumerate()
        {
            let x = randn(&[b, h, h, c], mean, 1.0, 1 + i as u64);
            let w = randn(
                &[o, c, 3, 3],
                0.0,
                (2.0 / (9 * c) as f32).sqrt(),
                100 + i as u64,
            );
            let bias: Vec<f32> = (0..c).map(|k| (k as f32 * 0.37).sin()).collect();
            let pre = Pre {
                bias: Some(bias.into()),
                relu: true,
            };
            let w2 = w
                .permute((2, 3, 1, 0))
                .unwrap()
                .contiguous()
                .unwrap()
                .reshape((9 * c, o))
                .unwrap();
            let direct = nhwc::conv_im2col(&x, &w2, 3, 1, 1, &pre).unwrap();
            for m in [2, 4] {
                let u = nhwc::winograd_weight(&w, m).unwrap();
                let y = nhwc::conv_winograd(&x, &u, m, &pre).unwrap();
                let r = rel(&y, &direct);
                eprintln!("case {i} m {m}: max rel err {r:.2e}");
                assert!(r < 1e-5, "case {i}, m {m}: {r:e}");
            }
        }
    }
}
