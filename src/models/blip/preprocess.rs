//! transformers' `BlipImageProcessor` (its PIL backend, `BlipImageProcessorPil`), configured by
//! preprocessor_config.json: RGB, resize to `size` (height x width, aspect ratio not kept) with
//! PIL's bicubic on uint8 ([`crate::imageops::resize::pil_resize_bicubic`], bit for bit), rescale by
//! `rescale_factor` (1/255) and normalise with `image_mean` / `image_std` (OpenAI CLIP's), each
//! step as its `do_*` flag says. The published files hold 384 x 384, bicubic, CLIP's mean and std.

use candle_core::{Device, Tensor};
use serde::Deserialize;

use crate::input_err;
use crate::models::clip::{CLIP_MEAN, CLIP_STD};

/// `size` as written: `{"height": H, "width": W}` or one number (a square, as older files and
/// `default_to_square` read it).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum Size {
    Square(usize),
    HeightWidth { height: usize, width: usize },
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
struct RawConfig {
    do_resize: bool,
    size: Size,
    resample: u32,
    do_rescale: bool,
    rescale_factor: f64,
    do_normalize: bool,
    image_mean: Vec<f64>,
    image_std: Vec<f64>,
}

impl Default for RawConfig {
    /// `BlipImageProcessor()`'s defaults.
    fn default() -> Self {
        Self {
            do_resize: true,
            size: Size::HeightWidth {
                height: 384,
                width: 384,
            },
            resample: 3,
            do_rescale: true,
            rescale_factor: 1.0 / 255.0,
            do_normalize: true,
            image_mean: CLIP_MEAN.iter().map(|&v| v as f64).collect(),
            image_std: CLIP_STD.iter().map(|&v| v as f64).collect(),
        }
    }
}

/// PIL's resampling filter numbers (`PILImageResampling`).
const BICUBIC: u32 = 3;

/// BlipImageProcessor's settings.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageProcessor {
    /// (height, width) of the output, when resizing.
    pub size: Option<(usize, usize)>,
    /// Multiplies the 0..255 values (in f64, then cast to f32, as transformers).
    pub rescale_factor: Option<f64>,
    /// Per channel (mean, std), when normalising.
    pub normalize: Option<([f32; 3], [f32; 3])>,
}

impl Default for ImageProcessor {
    /// The published checkpoints' settings (`BlipImageProcessor()`).
    fn default() -> Self {
        Self::from_raw(RawConfig::default()).expect("the defaults are valid")
    }
}

impl ImageProcessor {
    /// Reads preprocessor_config.json (absent keys at BlipImageProcessor's defaults); only the
    /// bicubic resize is supported. Errors name the key.
    pub fn from_json(text: &str) -> anyhow::Result<Self> {
        let raw: RawConfig = serde_json::from_str(text)
            .map_err(|e| input_err!("not a BLIP preprocessor config: {e}"))?;
        Self::from_raw(raw)
    }

    fn from_raw(raw: RawConfig) -> anyhow::Result<Self> {
        let size = match raw.size {
            Size::Square(s) => (s, s),
            Size::HeightWidth { height, width } => (height, width),
        };
        if size.0 == 0 || size.1 == 0 {
            return Err(input_err!("`size` must be at least 1 x 1, got {size:?}"));
        }
        if raw.do_resize && raw.resample != BICUBIC {
            return Err(input_err!(
                "`resample` {} is not supported: only 3 (bicubic, BlipImageProcessor's) is",
                raw.resample
            ));
        }
        let three = |key: &str, v: &[f64]| -> anyhow::Result<[f32; 3]> {
            match v {
                [a, b, c] => Ok([*a as f32, *b as f32, *c as f32]),
                _ => Err(input_err!("`{key}` must hold 3 numbers, got {}", v.len())),
            }
        };
        let normalize = if raw.do_normalize {
            let std = three("image_std", &raw.image_std)?;
            if std.iter().any(|s| *s <= 0.0 || !s.is_finite()) {
                return Err(input_err!("`image_std` must be positive, got {std:?}"));
            }
            Some((three("image_mean", &raw.image_mean)?, std))
        } else {
            None
        };
        Ok(Self {
            size: raw.do_resize.then_some(size),
            rescale_factor: raw.do_rescale.then_some(raw.rescale_factor),
            normalize,
        })
    }

    /// One image as the model's input [3, H, W] (f32, on `device`); without a resize, the image's
    /// own size.
    pub fn preprocess(&self, img: &image::RgbImage, device: &Device) -> anyhow::Result<Tensor> {
        let (w, h) = (img.width() as usize, img.height() as usize);
        anyhow::ensure!(
            w > 0 && h > 0,
            "BLIP preprocess: the image is empty ({w}x{h})"
        );
        let resized;
        let (img, h, w) = match self.size {
            Some((nh, nw)) if (nh, nw) != (h, w) => {
                resized = crate::imageops::resize::pil_resize_bicubic(img, nw, nh);
                (&resized, nh, nw)
            }
            _ => (img, h, w),
        };
        let raw = img.as_raw();
        let mut out = vec![0f32; 3 * h * w];
        for c in 0..3 {
            for i in 0..h * w {
                let v = raw[i * 3 + c];
                let v = match self.rescale_factor {
                    Some(f) => (v as f64 * f) as f32,
                    None => v as f32,
                };
                out[c * h * w + i] = match self.normalize {
                    Some((mean, std)) => (v - mean[c]) / std[c],
                    None => v,
                };
            }
        }
        Ok(Tensor::from_vec(out, (3, h, w), device)?)
    }

    /// Images as one batch [B, 3, H, W] (every image resized to the same size).
    pub fn batch(&self, images: &[image::RgbImage], device: &Device) -> anyhow::Result<Tensor> {
        let pixels = images
            .iter()
            .map(|i| self.preprocess(i, device))
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(Tensor::stack(&pixels, 0)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_both_size_forms_and_refuses_other_filters() {
        let p = ImageProcessor::from_json(r#"{"size": 384}"#).unwrap();
        assert_eq!(p, ImageProcessor::default());
        assert_eq!(p.size, Some((384, 384)));
        let p = ImageProcessor::from_json(r#"{"size": {"height": 64, "width": 32}}"#).unwrap();
        assert_eq!(p.size, Some((64, 32)));
        let e = ImageProcessor::from_json(r#"{"resample": 2}"#).unwrap_err();
        assert!(e.to_string().contains("resample"), "{e}");
        let e = ImageProcessor::from_json(r#"{"image_mean": [0.5]}"#).unwrap_err();
        assert!(e.to_string().contains("image_mean"), "{e}");
    }
}
