//! One image's results (`DIR/phrases/<id>.json`: a phrase drawn by one generator; the id is the
//! phrase's for its first generator, `<phrase id>-<generator>` for the others), written
//! atomically when the image is finished and read back when a run resumes or shards are merged.
//!
//! A record is kept stage by stage: it holds, for each stage it ran, the key of what that stage
//! was made from (the generated image: generator, its settings, the guiding CLIP's and BigGAN's
//! content fingerprints, seed; each captioner's captions: the captioner's fingerprint, beam and
//! the images' SHA-256; the CLIPScores: CLIP's fingerprint and the images), and the SHA-256 of
//! every file it describes. On resume ([`super::compute::bring_up_to_date`]) a stage is reused
//! only when its key is unchanged and its files are intact; anything else is recomputed, with a
//! line on stderr saying why.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context;
use serde::{Deserialize, Serialize};

use super::manifest::{Layout, Manifest};
use super::RUN_SCHEMA_VERSION;
use crate::fingerprint::sha256_hex;
use crate::generate::GeneratorKind;
use crate::metrics::captions::{caption_rouge_l, BleuPair};

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
    /// ROUGE-L of the caption against the phrase ([`caption_rouge_l`]). Records written before
    /// it was recorded lack it: [`read_record`] computes it from the caption and the record's
    /// `reference_tokens`, so a record read back always has it.
    #[serde(default)]
    pub rouge_l: Option<f64>,
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

/// What the generated image (with its frames and latents) was made from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageKey {
    pub generator: GeneratorKind,
    /// The generator's settings (SIREN's, or BigGAN's without its model reference).
    pub settings: serde_json::Value,
    /// Content fingerprint of the guiding CLIP.
    pub clip: String,
    /// Content fingerprint of the BigGAN model (BigGAN images only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub biggan: Option<String>,
    pub seed: u64,
    pub save_every: usize,
}

/// What one captioner's captions (and their scores) were made from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CaptionKey {
    /// Content fingerprint of the captioner (its files and its encoder's).
    pub captioner: String,
    pub beam: usize,
    /// Content fingerprint of the CLIP computing the text similarities.
    pub clip: String,
    /// SHA-256 of the generated image and of the real photo.
    pub image: String,
    pub photo: Option<String>,
}

/// What the CLIPScores were made from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClipScoreKey {
    pub clip: String,
    pub image: String,
    pub photo: Option<String>,
}

/// The key of each stage of a record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StageKeys {
    pub image: ImageKey,
    pub clip_score: ClipScoreKey,
    /// Per captioner label.
    pub captions: BTreeMap<String, CaptionKey>,
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
    pub generator: GeneratorKind,
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
    /// What each stage was made from.
    pub stages: StageKeys,
    /// SHA-256 of each file of the generated image (image, frames, latents), by path relative
    /// to the run folder (the photo copy's is in `photo`).
    pub sha256: BTreeMap<String, String>,
}

fn cpu_label() -> String {
    "cpu".into()
}

impl PhraseRecord {
    /// Computes the scores an older record lacks from what it holds (each caption's ROUGE-L
    /// from the caption and `reference_tokens`); a figure it has is kept as recorded.
    pub fn fill_missing_scores(&mut self) {
        let reference = &self.reference_tokens;
        for result in self.captions.values_mut() {
            for c in std::iter::once(&mut result.generated).chain(result.photo.as_mut()) {
                if c.rouge_l.is_none() {
                    c.rouge_l = Some(caption_rouge_l(reference, &c.caption));
                }
            }
        }
    }
}

/// The content fingerprint of model `name` (`clip`, `biggan`, `captioner:LABEL`) in a manifest.
fn fingerprint(m: &Manifest, name: &str) -> anyhow::Result<String> {
    m.models
        .get(name)
        .and_then(|v| v.get("fingerprint"))
        .and_then(|v| v.as_str())
        .map(str::to_owned)
        .ok_or_else(|| anyhow::anyhow!("run.json records no fingerprint of model `{name}`"))
}

/// The key a phrase's image must have under a manifest's settings and models.
pub fn image_key(m: &Manifest, generator: GeneratorKind, seed: u64) -> anyhow::Result<ImageKey> {
    let (settings, biggan) = match generator {
        GeneratorKind::BigGan => {
            let b = m
                .settings
                .biggan
                .as_ref()
                .context("a BigGAN phrase in a run without BigGAN settings")?;
            (
                serde_json::to_value(&b.settings)?,
                Some(fingerprint(m, "biggan")?),
            )
        }
        GeneratorKind::Siren => (serde_json::to_value(&m.settings.siren)?, None),
    };
    Ok(ImageKey {
        generator,
        settings,
        clip: fingerprint(m, "clip")?,
        biggan,
        seed,
        save_every: m.settings.save_every,
    })
}

/// The key of captioner `label`'s captions of the given images under a manifest.
pub fn caption_key(
    m: &Manifest,
    label: &str,
    image: &str,
    photo: Option<&str>,
) -> anyhow::Result<CaptionKey> {
    Ok(CaptionKey {
        captioner: fingerprint(m, &format!("captioner:{label}"))?,
        beam: m.settings.beam,
        clip: fingerprint(m, "clip")?,
        image: image.to_owned(),
        photo: photo.map(str::to_owned),
    })
}

/// The key of the CLIPScores of the given images under a manifest.
pub fn clip_score_key(
    m: &Manifest,
    image: &str,
    photo: Option<&str>,
) -> anyhow::Result<ClipScoreKey> {
    Ok(ClipScoreKey {
        clip: fingerprint(m, "clip")?,
        image: image.to_owned(),
        photo: photo.map(str::to_owned),
    })
}

/// A record file read back: absent, unreadable (with why), or a record.
pub enum ReadRecord {
    Absent,
    Unreadable(String),
    Found(Box<PhraseRecord>),
}

/// Reads a record; a file that does not parse (truncated, edited, or from an older version) is
/// [`ReadRecord::Unreadable`], to be recomputed. The scores a record of an earlier version of
/// this schema lacks are filled in ([`PhraseRecord::fill_missing_scores`]).
pub fn read_record(path: &Path) -> ReadRecord {
    match std::fs::read(path) {
        Ok(bytes) => match serde_json::from_slice::<PhraseRecord>(&bytes) {
            Ok(mut r) if r.schema_version == RUN_SCHEMA_VERSION => {
                r.fill_missing_scores();
                ReadRecord::Found(Box::new(r))
            }
            Ok(r) => ReadRecord::Unreadable(format!(
                "schema version {}, this roundtrip writes {RUN_SCHEMA_VERSION}",
                r.schema_version
            )),
            Err(e) => ReadRecord::Unreadable(e.to_string()),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => ReadRecord::Absent,
        Err(e) => ReadRecord::Unreadable(e.to_string()),
    }
}

/// Why a file of the run folder is not the one a record describes, if it is not.
fn file_problem(layout: &Layout, rel: &str, sha: Option<&String>) -> Option<String> {
    let Some(sha) = sha else {
        return Some(format!("{rel}: no SHA-256 recorded"));
    };
    match std::fs::read(layout.root.join(rel)) {
        Ok(bytes) if sha256_hex(&bytes) == *sha => None,
        Ok(_) => Some(format!("{rel} does not match its recorded SHA-256")),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Some(format!("{rel} is missing")),
        Err(e) => Some(format!("{rel} cannot be read ({e})")),
    }
}

/// Why the generated image's files (image, frames, latents) are not intact, if they are not.
pub fn image_files_problem(layout: &Layout, r: &PhraseRecord) -> Option<String> {
    std::iter::once(&r.image)
        .chain(&r.frames)
        .chain(&r.latents)
        .find_map(|f| file_problem(layout, f, r.sha256.get(f)))
}

/// Why the photo copy is not intact, if it is not.
pub fn photo_file_problem(layout: &Layout, r: &PhraseRecord) -> Option<String> {
    r.photo
        .as_ref()
        .and_then(|p| file_problem(layout, &p.file, Some(&p.sha256)))
}

/// Why `r` is not a finished record of a phrase's image drawn by `generator` with `seed` under
/// manifest `m` (each stage's key as `m` implies, every file intact), if it is not. `merge`
/// accepts only finished records.
pub fn unfinished(
    layout: &Layout,
    m: &Manifest,
    r: &PhraseRecord,
    phrase: &str,
    (generator, seed): (GeneratorKind, u64),
    has_photo: bool,
) -> anyhow::Result<Option<String>> {
    if r.phrase != phrase || r.seed != seed || r.generator != generator {
        return Ok(Some("its record is of another phrase or seed".into()));
    }
    if r.photo.is_some() != has_photo {
        return Ok(Some("its photo differs from the prompts file's".into()));
    }
    if let Some(d) = crate::diff::first_difference(&r.stages.image, &image_key(m, generator, seed)?)
    {
        return Ok(Some(format!(
            "its image was made with other settings ({d})"
        )));
    }
    let image_sha = r.sha256.get(&r.image).map(String::as_str).unwrap_or("");
    let photo_sha = r.photo.as_ref().map(|p| p.sha256.as_str());
    if r.stages.clip_score != clip_score_key(m, image_sha, photo_sha)? {
        return Ok(Some("its CLIPScores are out of date".into()));
    }
    let labels: Vec<&String> = r.captions.keys().collect();
    let wanted: Vec<&String> = m.settings.captioners.iter().map(|c| &c.label).collect();
    if labels.len() != wanted.len() || wanted.iter().any(|l| !r.captions.contains_key(*l)) {
        return Ok(Some("its captioners differ from the run's".into()));
    }
    for label in wanted {
        if r.stages.captions.get(label) != Some(&caption_key(m, label, image_sha, photo_sha)?) {
            return Ok(Some(format!("its {label} captions are out of date")));
        }
    }
    Ok(image_files_problem(layout, r).or_else(|| photo_file_problem(layout, r)))
}
