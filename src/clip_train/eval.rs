//! Retrieval over a gallery of (image, caption) pairs: image -> text and text -> image top-1, and
//! the mean cosine of matching pairs (`roundtrip eval-clip`, and the dev figures of training).

use std::path::{Path, PathBuf};

use anyhow::Context;
use candle_core::{Device, Tensor};
use serde::Serialize;

use super::data::Images;
use crate::dataset::{Dataset, Split};
use crate::hub::{Locator, ModelRecord, ModelRef};
use crate::input_err;
use crate::metrics::retrieval::{retrieval, Retrieval};
use crate::models::clip::{Clip, ClipModel, ClipTokenizer};

/// Embeddings of a gallery: the given images whole (as CLIP's image processor prepares them)
/// and the given captions, in batches of `batch`. Returns ([N, D], [N, D]).
pub fn embed_gallery(
    model: &ClipModel,
    tokenizer: &ClipTokenizer,
    images: &Images,
    idx: &[usize],
    captions: &[String],
    batch: usize,
    device: &Device,
) -> anyhow::Result<(Tensor, Tensor)> {
    let size = model.config().vision.image_size;
    let (mut img, mut txt) = (Vec::new(), Vec::new());
    for (ids, caps) in idx.chunks(batch.max(1)).zip(captions.chunks(batch.max(1))) {
        let pixels = images.whole(ids, size, device)?;
        img.push(model.image_features(&pixels)?.detach());
        let refs: Vec<&str> = caps.iter().map(String::as_str).collect();
        txt.push(
            model
                .text_features(&tokenizer.encode_batch(&refs, device)?)?
                .detach(),
        );
    }
    Ok((Tensor::cat(&img, 0)?, Tensor::cat(&txt, 0)?))
}

/// `train`, `dev` or `test`.
pub fn split_name(split: Split) -> &'static str {
    match split {
        Split::Train => "train",
        Split::Dev => "dev",
        Split::Test => "test",
    }
}

/// The `eval-clip --json` object.
#[derive(Debug, Serialize)]
pub struct EvalClipReport {
    pub model: ModelRecord,
    pub dataset: String,
    pub split: Split,
    /// The `--limit` asked for, if any.
    pub limit: Option<usize>,
    #[serde(flatten)]
    pub retrieval: Retrieval,
}

/// Loads a CLIP (preset, hub id or folder) and measures retrieval over a dataset split: each image
/// of the split (or its first `limit`) with its FIRST caption.
pub fn evaluate_clip(
    clip_ref: &str,
    dataset: &Path,
    split: Split,
    limit: Option<usize>,
    device: &Device,
) -> anyhow::Result<EvalClipReport> {
    if limit == Some(0) {
        return Err(input_err!("--limit must be at least 1"));
    }
    let locator = Locator::from_env();
    let model = locator.open(&ModelRef::parse_option(clip_ref, "--clip")?)?;
    let clip = Clip::load(&model, device).with_context(|| format!("loading CLIP `{clip_ref}`"))?;
    let ds = Dataset::load(dataset)?;
    let names = ds.split(split);
    let names = &names[..limit.unwrap_or(names.len()).min(names.len())];
    if names.is_empty() {
        return Err(input_err!(
            "{}: the {} split has no images",
            dataset.display(),
            split_name(split)
        ));
    }
    let images = Images::load(&ds.images_dir, names)?;
    let captions: Vec<String> = names.iter().map(|n| ds.captions[n][0].clone()).collect();
    let idx: Vec<usize> = (0..names.len()).collect();
    let (img, txt) = embed_gallery(
        &clip.model,
        &clip.tokenizer,
        &images,
        &idx,
        &captions,
        64,
        device,
    )?;
    Ok(EvalClipReport {
        model: clip.record.clone(),
        dataset: std::fs::canonicalize(dataset)
            .unwrap_or_else(|_| PathBuf::from(dataset))
            .display()
            .to_string(),
        split,
        limit,
        retrieval: retrieval(&img, &txt, &captions)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_top1_both_ways() {
        let d = Device::Cpu;
        // Image 0 matches text 0; image 1 is closest to text 0; image 2 matches text 2.
        let img = Tensor::new(&[[1f32, 0.0, 0.0], [0.9, 0.1, 0.0], [0.0, 0.0, 1.0]], &d).unwrap();
        let txt = Tensor::new(&[[1f32, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 2.0]], &d).unwrap();
        let caps: Vec<String> = ["a", "b", "a"].map(String::from).to_vec();
        let r = retrieval(&img, &txt, &caps).unwrap();
        assert_eq!(r.image_to_text_top1, 2.0 / 3.0);
        // text 0 -> image 0, text 1 -> image 1 (0.1 / |.|), text 2 -> image 2
        assert_eq!(r.text_to_image_top1, 1.0);
        assert_eq!(r.repeated_captions, 2);
        assert!((r.chance - 1.0 / 3.0).abs() < 1e-12);
        let c1 = 0.1 / (0.82f64).sqrt();
        assert!((r.mean_matching_cosine - (1.0 + c1 + 1.0) / 3.0).abs() < 1e-6);
    }
}
