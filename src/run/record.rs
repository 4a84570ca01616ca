//! One phrase's results (`DIR/phrases/<id>.json`), written atomically when the phrase is
//! finished and read back when a run resumes or shards are merged.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use indicatif::ProgressBar;
use serde::{Deserialize, Serialize};

use super::stages::{caption_bleu, BleuPair, Generator, ImageCaptioner, Judge};
use super::{Layout, RunSettings, RUN_SCHEMA_VERSION};
use crate::imageops::{save_png, tensor_to_rgb};

/// The real photo of a phrase, as copied into the run folder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PhotoRecord {
    /// The path as written in the prompts file.
    pub source: String,
    /// The copy, relative to the run folder.
    pub file: String,
    pub sha256: String,
}

/// A caption with its scores against the phrase.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScoredCaption {
    pub caption: String,
    pub bleu: BleuPair,
    /// Cosine similarity of CLIP's text embeddings of phrase and caption.
    pub clip_text_similarity: f32,
}

/// One captioner's captions of the generated image and of the real photo.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CaptionerResult {
    pub generated: ScoredCaption,
    pub photo: Option<ScoredCaption>,
}

/// CLIPScore of each image against the phrase.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClipScores {
    pub generated: f32,
    pub photo: Option<f32>,
}

/// One guidance step, as the report charts it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepPoint {
    pub step: usize,
    pub loss: f32,
    pub similarity: f32,
}

/// Wall-clock seconds of each stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Timings {
    pub generate: f64,
    pub caption: f64,
    pub score: f64,
}

/// Everything computed for one phrase.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PhraseRecord {
    pub schema_version: u32,
    pub id: String,
    pub phrase: String,
    /// The phrase normalised as the captioners' vocabulary is (BLEU's reference).
    pub reference_tokens: Vec<String>,
    pub seed: u64,
    pub generator: String,
    /// Where it was computed (`cpu`, `cuda:0`, `metal:0`): floating-point results differ in the
    /// last bits between devices.
    #[serde(default = "cpu_label")]
    pub device: String,
    /// Paths relative to the run folder.
    pub image: String,
    pub frames: Vec<String>,
    /// BigGAN: the latents file (`z`, `class_logits` of the saved image; `last_z`,
    /// `last_class_logits` of the optimiser), for `generate --init-latents`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latents: Option<String>,
    pub photo: Option<PhotoRecord>,
    /// Cosine similarity between the phrase and the whole final image, as the guide sees it.
    pub final_similarity: f32,
    pub clip_score: ClipScores,
    /// Per captioner label.
    pub captions: BTreeMap<String, CaptionerResult>,
    pub steps: Vec<StepPoint>,
    pub seconds: Timings,
}

fn cpu_label() -> String {
    "cpu".into()
}

/// The finished record of a phrase, if the folder has one made with the same phrase, seed,
/// photo and captioners whose files are all present; `None` means "compute it".
pub fn load_finished(
    layout: &Layout,
    id: &str,
    phrase: &str,
    seed: u64,
    photo_sha: Option<&str>,
    generator: &str,
    settings: &RunSettings,
) -> anyhow::Result<Option<PhraseRecord>> {
    let Some(r) = read_record(&layout.record(id))? else {
        return Ok(None);
    };
    let labels_match = r.captions.len() == settings.captioners.len()
        && settings
            .captioners
            .iter()
            .all(|c| r.captions.contains_key(&c.label));
    let files_present = std::iter::once(&r.image)
        .chain(&r.frames)
        .chain(&r.latents)
        .chain(r.photo.as_ref().map(|p| &p.file))
        .all(|f| layout.root.join(f).is_file());
    let same = r.schema_version == RUN_SCHEMA_VERSION
        && r.phrase == phrase
        && r.seed == seed
        && r.generator == generator
        && r.photo.as_ref().map(|p| p.sha256.as_str()) == photo_sha
        && labels_match
        && files_present;
    Ok(same.then_some(r))
}

/// Reads a record; a file that does not parse (e.g. from an older version) counts as absent.
pub fn read_record(path: &Path) -> anyhow::Result<Option<PhraseRecord>> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(serde_json::from_slice(&bytes).ok()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(anyhow::anyhow!("cannot read {}: {e}", path.display())),
    }
}

/// Generates, captions and scores one phrase, writing its image and frames (not its record).
#[allow(clippy::too_many_arguments)]
pub fn compute(
    layout: &Layout,
    id: &str,
    phrase: &str,
    seed: u64,
    photo: Option<(PhotoRecord, &image::RgbImage)>,
    generator: &dyn Generator,
    captioners: &[(&str, &dyn ImageCaptioner)],
    judge: &Judge,
    save_every: usize,
    progress: &ProgressBar,
) -> anyhow::Result<PhraseRecord> {
    let text = judge.phrase(phrase)?;
    let frames_dir = layout.frames(id);
    if frames_dir.exists() {
        // Frames of an interrupted attempt: this attempt writes its own.
        std::fs::remove_dir_all(&frames_dir)?;
    }
    let out = generator.generate(&text, seed, &frames_dir, save_every, progress)?;
    let image_path = layout.image(id);
    if let Some(dir) = image_path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    save_png(&out.image, &image_path)?;
    let latents = match &out.latents {
        Some(l) => {
            let p = layout.latents(id);
            l.save(&p)?;
            Some(layout.relative(&p))
        }
        None => None,
    };
    let final_similarity = generator.similarity(&out.image, &text)?;
    // Caption exactly the pixels that were saved.
    let generated = tensor_to_rgb(&out.image)?;

    let t_caption = Instant::now();
    let mut images = vec![&generated];
    if let Some((_, img)) = &photo {
        images.push(img);
    }
    let owned: Vec<image::RgbImage> = images.iter().map(|i| (*i).clone()).collect();
    let mut captions = Vec::with_capacity(captioners.len());
    for (label, c) in captioners {
        let got = c.caption(&owned)?;
        anyhow::ensure!(
            got.len() == owned.len(),
            "captioner {label} returned {} captions for {} images",
            got.len(),
            owned.len()
        );
        captions.push((*label, got));
    }
    let caption_seconds = t_caption.elapsed().as_secs_f64();

    let t_score = Instant::now();
    let scores = judge.clip_scores(&images, &text)?;
    let texts: Vec<&str> = captions
        .iter()
        .flat_map(|(_, cs)| cs.iter().map(String::as_str))
        .collect();
    let sims = judge.text_similarities(&text, &texts)?;
    let mut sims = sims.into_iter();
    let mut scored = |caption: &str| -> anyhow::Result<ScoredCaption> {
        Ok(ScoredCaption {
            caption: caption.to_owned(),
            bleu: caption_bleu(phrase, caption),
            clip_text_similarity: sims
                .next()
                .ok_or_else(|| anyhow::anyhow!("missing text similarity"))?,
        })
    };
    let mut results = BTreeMap::new();
    for (label, cs) in &captions {
        let generated = scored(&cs[0])?;
        let photo = cs.get(1).map(|c| scored(c)).transpose()?;
        results.insert(label.to_string(), CaptionerResult { generated, photo });
    }
    let score_seconds = t_score.elapsed().as_secs_f64();

    Ok(PhraseRecord {
        schema_version: RUN_SCHEMA_VERSION,
        id: id.to_owned(),
        phrase: phrase.to_owned(),
        reference_tokens: crate::text::normalize(phrase),
        seed,
        generator: generator.name().to_owned(),
        device: crate::device::label(&judge.device),
        image: layout.relative(&image_path),
        frames: out.frames.iter().map(|f| layout.relative(f)).collect(),
        latents,
        photo: photo.map(|(p, _)| p),
        final_similarity,
        clip_score: ClipScores {
            generated: scores[0],
            photo: scores.get(1).copied(),
        },
        captions: results,
        steps: out
            .steps
            .iter()
            .map(|s| StepPoint {
                step: s.step,
                loss: s.loss,
                similarity: s.similarity,
            })
            .collect(),
        seconds: Timings {
            generate: out.seconds,
            caption: caption_seconds,
            score: score_seconds,
        },
    })
}
