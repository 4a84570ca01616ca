//! The captioners' frozen image encoders behind one small trait.

use std::path::Path;

use candle_core::{Device, Tensor};
use serde::Serialize;

use crate::hub::{Locator, ModelRecord, ModelRef};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EncoderKind {
    Vgg16,
    Xception,
}

impl EncoderKind {
    pub fn name(self) -> &'static str {
        match self {
            EncoderKind::Vgg16 => "vgg16",
            EncoderKind::Xception => "xception",
        }
    }

    /// The preset of the published checkpoint.
    pub fn default_weights(self) -> &'static str {
        self.name()
    }
}

impl std::str::FromStr for EncoderKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "vgg16" => Ok(EncoderKind::Vgg16),
            "xception" => Ok(EncoderKind::Xception),
            _ => Err(format!("unknown encoder `{s}`: expected vgg16 or xception")),
        }
    }
}

/// An image encoder that turns images into one feature vector each.
pub trait FeatureEncoder {
    fn feature_dim(&self) -> usize;
    fn input_size(&self) -> usize;
    /// An RGB image as the encoder's normalised input [3, S, S].
    fn preprocess(&self, img: &image::RgbImage, device: &Device) -> candle_core::Result<Tensor>;
    /// [B, 3, S, S] -> [B, feature_dim].
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor>;

    /// Features [N, feature_dim] of RGB images, preprocessed and encoded as one batch.
    fn encode_rgb(
        &self,
        images: &[image::RgbImage],
        device: &Device,
    ) -> candle_core::Result<Tensor> {
        let pixels = images
            .iter()
            .map(|i| self.preprocess(i, device))
            .collect::<candle_core::Result<Vec<_>>>()?;
        self.forward(&Tensor::stack(&pixels, 0)?)
    }
}

impl FeatureEncoder for crate::models::vgg16::Vgg16 {
    fn feature_dim(&self) -> usize {
        self.feature_dim()
    }
    fn input_size(&self) -> usize {
        self.input_size()
    }
    fn preprocess(&self, img: &image::RgbImage, device: &Device) -> candle_core::Result<Tensor> {
        crate::models::vgg16::preprocess_image(img, self.input_size(), device)
    }
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.forward(x)
    }
}

impl FeatureEncoder for crate::models::xception::Xception {
    fn feature_dim(&self) -> usize {
        self.feature_dim()
    }
    fn input_size(&self) -> usize {
        self.input_size()
    }
    fn preprocess(&self, img: &image::RgbImage, device: &Device) -> candle_core::Result<Tensor> {
        crate::models::xception::preprocess_image(img, self.input_size(), device)
    }
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.forward(x)
    }
}

/// A loaded encoder with what outputs record about it.
pub struct LoadedEncoder {
    pub kind: EncoderKind,
    pub encoder: Box<dyn FeatureEncoder>,
    pub record: ModelRecord,
    /// Identifies the weights for the feature cache: the hub commit, or the weights file's
    /// path, size and modification time for folders.
    pub cache_key: String,
}

fn folder_key(weights: &Path) -> String {
    let meta = std::fs::metadata(weights).ok();
    let size = meta.as_ref().map(|m| m.len()).unwrap_or(0);
    let mtime = meta
        .and_then(|m| m.modified().ok())
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let abs = std::fs::canonicalize(weights).unwrap_or_else(|_| weights.to_path_buf());
    crate::captioner::features::hex_digest(format!("{}|{size}|{mtime}", abs.display()).as_bytes())
}

/// Loads an encoder of `kind` from a model reference.
pub fn load_encoder(
    kind: EncoderKind,
    reference: &str,
    locator: &Locator,
    device: &Device,
) -> anyhow::Result<LoadedEncoder> {
    let model = locator.open(&ModelRef::parse(reference)?)?;
    let encoder: Box<dyn FeatureEncoder> = match kind {
        EncoderKind::Vgg16 => Box::new(crate::models::vgg16::Vgg16::load(&model, device)?),
        EncoderKind::Xception => Box::new(crate::models::xception::Xception::load(&model, device)?),
    };
    let record = model.record();
    let cache_key = match &record.commit {
        Some(c) => format!("{}-{}", kind.name(), c),
        None => format!(
            "{}-{}",
            kind.name(),
            folder_key(&model.file("model.safetensors")?)
        ),
    };
    Ok(LoadedEncoder {
        kind,
        encoder,
        record,
        cache_key,
    })
}
