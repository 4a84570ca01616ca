//! `roundtrip eval`: corpus BLEU-1..4 of a captioner on a dataset split, as the original
//! experiment reported it (every reference caption of an image, normalised; startseq/endseq left
//! out), plus the captioning community's figures against the same references (pycocoevalcap's
//! BLEU-1..4, CIDEr-D with the split's document frequencies, ROUGE-L) and caption diversity. An
//! LSTM captioner's encoder features go through the feature cache; a BLIP captioner
//! ([`super::blip`], zero-shot on any dataset) computes its image embeddings every time (577 x 768
//! floats an image: not worth caching).

use std::path::{Path, PathBuf};

use candle_core::Device;
use serde::Serialize;

use super::any::AnyCaptioner;
use super::blip::BlipDecoding;
use super::feature_cache::{CacheStats, FeatureCache};
use crate::dataset::{Dataset, Split};
use crate::hub::Locator;
use crate::metrics::captions::diversity;
use crate::metrics::scores::{score, Metric};
use crate::text::normalize;

#[derive(Debug, Serialize)]
pub struct EvalReport {
    pub captioner: String,
    /// `lstm` or `blip`.
    pub kind: &'static str,
    /// The LSTM captioner's encoder record, or BLIP's model record with its decoding settings.
    pub encoder: serde_json::Value,
    pub dataset: String,
    pub split: Split,
    pub beam: usize,
    pub images: usize,
    pub bleu1: f64,
    pub bleu2: f64,
    pub bleu3: f64,
    pub bleu4: f64,
    /// pycocoevalcap's BLEU-1..4 of the same captions and references.
    pub coco_bleu1: f64,
    pub coco_bleu2: f64,
    pub coco_bleu3: f64,
    pub coco_bleu4: f64,
    /// CIDEr-D (pycocoevalcap's `Cider`), document frequencies over the split's references.
    pub cider_d: f64,
    /// ROUGE-L (pycocoevalcap's `Rouge`), the mean over images.
    pub rouge_l: f64,
    /// Distinct captions / images.
    pub diversity: f64,
    pub distinct_captions: usize,
    pub most_common_caption: String,
    pub most_common_count: usize,
    pub dataset_problems: usize,
    /// Images the dataset's splits list but that have no file (left out, named on stderr).
    pub missing_images: usize,
    /// Encoder features computed and read from the cache (BLIP: all computed).
    pub features: CacheStats,
}

/// The images a split lists whose file is missing (the dataset leaves them out and records each
/// as a problem).
pub fn missing_images(ds: &Dataset) -> Vec<String> {
    ds.problems
        .iter()
        .filter(|p| p.message.contains("is listed in a split but missing"))
        .filter_map(|p| {
            let m = &p.message;
            let start = m.find('`')? + 1;
            let end = start + m[start..].find('`')?;
            Some(m[start..end].to_owned())
        })
        .collect()
}

/// The first `n` names, comma-separated, and how many more.
fn first_few(names: &[String], n: usize) -> String {
    let mut s = names
        .iter()
        .take(n)
        .map(String::as_str)
        .collect::<Vec<_>>()
        .join(", ");
    if names.len() > n {
        s += &format!(" and {} more", names.len() - n);
    }
    s
}

/// Evaluates the captioner `reference` (an LSTM captioner folder, or a BLIP model with
/// `decoding`) on a split of `dataset`.
#[allow(clippy::too_many_arguments)]
pub fn evaluate(
    reference: &str,
    decoding: Option<BlipDecoding>,
    dataset: &Path,
    split: Split,
    beam: usize,
    cache_dir: &Path,
    quiet: bool,
    device: &Device,
) -> anyhow::Result<(EvalReport, Vec<(String, String)>)> {
    crate::resources::check_beam_width(beam)?;
    let locator = Locator::from_env();
    let captioner = AnyCaptioner::load(reference, "--captioner", decoding, &locator, device)?;
    captioner.check_beam(beam)?;
    let ds = Dataset::load(dataset)?;
    let names = ds.split(split).to_vec();
    let missing = missing_images(&ds);
    if !missing.is_empty() {
        crate::stderr::warning(format_args!(
            "{} images listed in {}'s splits are missing and left out (the {} split \
             keeps {}): {}",
            missing.len(),
            dataset.display(),
            format!("{split:?}").to_lowercase(),
            names.len(),
            first_few(&missing, 5)
        ));
    }
    if names.is_empty() {
        return Err(crate::input_err!(
            "{}: the {split:?} split is empty",
            dataset.display()
        ));
    }
    let paths: Vec<PathBuf> = names.iter().map(|n| ds.image_path(n)).collect();
    let (captions, stats, encoder) = match &captioner {
        AnyCaptioner::Lstm(c) => {
            let bar = crate::stderr::bar(paths.len() as u64, "features", quiet);
            let cache = FeatureCache::new(cache_dir, &c.encoder);
            let (feats, stats) = cache.features(&c.encoder, &paths, 16, device, &bar)?;
            bar.finish_and_clear();
            let captions = c.caption_features(&feats, beam)?;
            (captions, stats, c.config.encoder.record.clone())
        }
        AnyCaptioner::Blip(c) => {
            let bar = crate::stderr::bar(paths.len() as u64, "captions", quiet);
            let mut captions = Vec::with_capacity(paths.len());
            for chunk in paths.chunks(crate::imageops::IMAGE_BATCH) {
                captions.extend(c.caption_images(chunk, beam, device)?);
                bar.inc(chunk.len() as u64);
            }
            bar.finish_and_clear();
            let stats = CacheStats {
                computed: paths.len(),
                cached: 0,
            };
            (captions, stats, c.describe())
        }
    };
    let hyps: Vec<Vec<String>> = captions.iter().map(|c| normalize(c)).collect();
    let refs: Vec<Vec<Vec<String>>> = names
        .iter()
        .map(|n| ds.captions[n].iter().map(|c| normalize(c)).collect())
        .collect();
    let figures = score(&hyps, &refs, &Metric::ALL).corpus;
    let [bleu1, bleu2, bleu3, bleu4] = figures.bleu.unwrap_or_default();
    let [coco_bleu1, coco_bleu2, coco_bleu3, coco_bleu4] = figures.coco_bleu.unwrap_or_default();
    let (distinct, top, top_n) = diversity(&captions);
    let report = EvalReport {
        captioner: reference.to_owned(),
        kind: captioner.kind(),
        encoder,
        dataset: dataset.display().to_string(),
        split,
        beam,
        images: names.len(),
        bleu1,
        bleu2,
        bleu3,
        bleu4,
        coco_bleu1,
        coco_bleu2,
        coco_bleu3,
        coco_bleu4,
        cider_d: figures.cider_d.unwrap_or_default(),
        rouge_l: figures.rouge_l.unwrap_or_default(),
        diversity: distinct as f64 / names.len() as f64,
        distinct_captions: distinct,
        most_common_caption: top,
        most_common_count: top_n,
        dataset_problems: ds.problems.len(),
        missing_images: missing.len(),
        features: stats,
    };
    Ok((report, names.into_iter().zip(captions).collect()))
}
