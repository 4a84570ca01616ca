//! Raw encoder features of texts and images (`roundtrip features`), with the CLIPScore matrix
//! of every (image, text) pair when both are given.

use std::path::PathBuf;

use candle_core::{Device, Tensor};
use serde::Serialize;

use crate::hub::ModelRecord;
use crate::metrics::clip_score::clip_score_matrix;
use crate::models::clip::{preprocess_image, Clip};

#[derive(Debug, Serialize)]
pub struct Item {
    pub input: String,
    pub kind: &'static str,
    pub features: Vec<f32>,
}

/// The `features --json` object.
#[derive(Debug, Serialize)]
pub struct FeaturesOutput {
    pub model: ModelRecord,
    pub items: Vec<Item>,
    /// CLIPScore, rows = images, columns = texts (in input order), when both were given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub clip_score: Option<Vec<Vec<f32>>>,
}

/// CLIP features of each text and image (projected, unnormalised, as transformers'
/// `get_text_features` / `get_image_features` return them).
pub fn clip_features(
    clip: &Clip,
    texts: &[String],
    images: &[PathBuf],
    device: &Device,
) -> anyhow::Result<FeaturesOutput> {
    let mut items = Vec::new();
    let text_feats = if texts.is_empty() {
        None
    } else {
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        let ids = clip.tokenizer.encode_batch(&refs, device)?;
        Some(clip.model.text_features(&ids)?)
    };
    let size = clip.model.config().vision.image_size;
    let image_feats = if images.is_empty() {
        None
    } else {
        let pixels = images
            .iter()
            .map(|p| {
                let img = image::DynamicImage::ImageRgb8(crate::imageops::open_rgb(p)?);
                preprocess_image(&img, size, device)
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        Some(clip.model.image_features(&Tensor::stack(&pixels, 0)?)?)
    };
    if let Some(f) = &text_feats {
        for (t, v) in texts.iter().zip(f.to_vec2::<f32>()?) {
            items.push(Item {
                input: t.clone(),
                kind: "text",
                features: v,
            });
        }
    }
    if let Some(f) = &image_feats {
        for (p, v) in images.iter().zip(f.to_vec2::<f32>()?) {
            items.push(Item {
                input: p.display().to_string(),
                kind: "image",
                features: v,
            });
        }
    }
    let clip_score = match (&image_feats, &text_feats) {
        (Some(i), Some(t)) => Some(clip_score_matrix(i, t)?),
        _ => None,
    };
    Ok(FeaturesOutput {
        model: clip.record.clone(),
        items,
        clip_score,
    })
}

/// One item per image file, its features from `encode` of each batch.
fn image_items(
    images: &[PathBuf],
    encode: impl Fn(&[image::RgbImage]) -> anyhow::Result<Vec<Vec<f32>>>,
) -> anyhow::Result<Vec<Item>> {
    crate::imageops::map_image_batches(images, |paths, imgs| {
        Ok(paths
            .iter()
            .zip(encode(imgs)?)
            .map(|(p, features)| Item {
                input: p.display().to_string(),
                kind: "image",
                features,
            })
            .collect())
    })
}

/// BLIP's vision embedding of each image: the image tower's pooled output.
pub fn blip_features(
    blip: &crate::captioner::blip::BlipCaptioner,
    images: &[PathBuf],
    device: &Device,
) -> anyhow::Result<FeaturesOutput> {
    let items = image_items(images, |imgs| {
        Ok(blip.image_features(imgs, device)?.to_vec2()?)
    })?;
    Ok(FeaturesOutput {
        model: blip.record.clone(),
        items,
        clip_score: None,
    })
}

/// Raw features of images from a captioner's encoder (VGG16 fc2 or Xception pool).
pub fn encoder_features(
    encoder: &crate::captioner::encoder::LoadedEncoder,
    images: &[PathBuf],
    device: &Device,
) -> anyhow::Result<FeaturesOutput> {
    let items = image_items(images, |imgs| {
        Ok(encoder.encoder.encode_rgb(imgs, device)?.to_vec2()?)
    })?;
    Ok(FeaturesOutput {
        model: encoder.record.clone(),
        items,
        clip_score: None,
    })
}
