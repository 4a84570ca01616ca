//! One phrase's results (`DIR/phrases/<id>.json`), written atomically when the phrase is
//! finished and read back when a run resumes or shards are merged.
//!
//! A record is kept stage by stage: it holds, for each stage it ran, the key of what that stage
//! was made from (the generated image: generator, its settings, the guiding CLIP's and BigGAN's
//! content fingerprints, seed; each captioner's captions: the captioner's fingerprint, beam and
//! the images' SHA-256; the CLIPScores: CLIP's fingerprint and the images), and the SHA-256 of
//! every file it describes. On resume ([`bring_up_to_date`]) a stage is reused only when its key
//! is unchanged and its files are intact; anything else is recomputed, with a line on stderr
//! saying why.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use anyhow::Context;
use indicatif::ProgressBar;
use serde::{Deserialize, Serialize};

use super::manifest::{Layout, Manifest};
use super::stages::{caption_bleu, BleuPair, ImageCaptioner, Judge};
use super::RUN_SCHEMA_VERSION;
use crate::fingerprint::sha256_hex;
use crate::fsutil::{write_atomic, write_json};
use crate::generate::{drive, Generator, GeneratorKind};
use crate::imageops::{png_bytes, tensor_to_rgb};

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
/// [`ReadRecord::Unreadable`], to be recomputed.
pub fn read_record(path: &Path) -> ReadRecord {
    match std::fs::read(path) {
        Ok(bytes) => match serde_json::from_slice::<PhraseRecord>(&bytes) {
            Ok(r) if r.schema_version == RUN_SCHEMA_VERSION => ReadRecord::Found(Box::new(r)),
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

/// Why `r` is not a finished record of a phrase under manifest `m` (each stage's key as `m`
/// implies, every file intact), if it is not. `merge` accepts only finished records.
pub fn unfinished(
    layout: &Layout,
    m: &Manifest,
    r: &PhraseRecord,
    phrase: &str,
    generator: GeneratorKind,
    has_photo: bool,
) -> anyhow::Result<Option<String>> {
    let seed = super::shard::phrase_seed(m.settings.seed, phrase);
    if r.phrase != phrase || r.seed != seed {
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

/// A phrase's photo as the run has it: its path in the prompts file, bytes, decoded pixels and
/// SHA-256.
pub struct PhotoInput<'a> {
    pub source: &'a Path,
    /// The path as written in the prompts file.
    pub written: &'a str,
    pub bytes: &'a [u8],
    pub image: &'a image::RgbImage,
    pub sha256: String,
}

/// One phrase to bring up to date.
pub struct PhraseJob<'a> {
    pub id: &'a str,
    pub phrase: &'a str,
    pub seed: u64,
    pub photo: Option<PhotoInput<'a>>,
    pub generator: &'a dyn Generator,
}

/// What the run loads once and every phrase uses.
pub struct StageModels<'a> {
    pub layout: &'a Layout,
    pub manifest: &'a Manifest,
    pub captioners: &'a [(&'a str, &'a dyn ImageCaptioner)],
    pub judge: &'a Judge<'a>,
}

/// What [`bring_up_to_date`] did to a phrase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Its record and files were intact and up to date: nothing computed.
    Reused,
    /// Its image was kept; captions or scores were recomputed.
    Updated,
    /// Its image was generated.
    Computed,
}

/// Brings one phrase's record up to date: each stage is reused when its key is unchanged and
/// its files are intact, else recomputed (with a note on stderr saying why, also with --quiet);
/// the record is written when anything changed.
pub fn bring_up_to_date(
    s: &StageModels,
    job: &PhraseJob,
    progress: &ProgressBar,
) -> anyhow::Result<(PhraseRecord, Outcome)> {
    let layout = s.layout;
    let record_path = layout.record(job.id);
    let rel_record = layout.relative(&record_path);
    let old = match read_record(&record_path) {
        ReadRecord::Absent => None,
        ReadRecord::Unreadable(why) => {
            crate::stderr::note(format_args!(
                "{rel_record} is unreadable ({why}): recomputing it"
            ));
            None
        }
        ReadRecord::Found(r) if r.phrase != job.phrase || r.id != job.id => {
            crate::stderr::note(format_args!(
                "{rel_record} is of another phrase: recomputing it"
            ));
            None
        }
        ReadRecord::Found(r) => Some(*r),
    };
    let key = image_key(s.manifest, job.generator.kind(), job.seed)?;
    let text = s.judge.phrase(job.phrase)?;

    // 1. The image: reused when its key is unchanged and its files intact.
    let kept = old.as_ref().and_then(|r| {
        let problem = crate::diff::first_difference(&r.stages.image, &key)
            .map(|d| {
                // `settings.steps` names the generator's option group as run.json does.
                let d = match d.strip_prefix("settings.") {
                    Some(rest) => format!("{}.{rest}", key.generator),
                    None => d,
                };
                format!("its settings or models changed ({})", short_digests(&d))
            })
            .or_else(|| image_files_problem(layout, r));
        match problem {
            None => Some(r),
            Some(p) => {
                crate::stderr::note(format_args!("{}: image regenerated: {p}", job.phrase));
                None
            }
        }
    });
    let mut rec = match kept {
        Some(r) => r.clone(),
        None => generate_image(s, job, &text, key, progress)?,
    };
    let image_computed = kept.is_none();
    // Caption exactly the pixels that were saved (and, for a kept image, verified).
    let generated = crate::imageops::open_rgb(&layout.root.join(&rec.image))?;

    // 2. The photo copy.
    let mut photo_changed = false;
    match &job.photo {
        None => {
            photo_changed |= rec.photo.take().is_some();
        }
        Some(p) => {
            let dest = layout.photo(job.id, p.source);
            let wanted = PhotoRecord {
                source: p.written.to_owned(),
                file: layout.relative(&dest),
                sha256: p.sha256.clone(),
            };
            let intact =
                rec.photo.as_ref() == Some(&wanted) && photo_file_problem(layout, &rec).is_none();
            if !intact {
                if let Some(problem) = rec
                    .photo
                    .is_some()
                    .then(|| photo_file_problem(layout, &rec))
                    .flatten()
                {
                    crate::stderr::note(format_args!(
                        "{}: photo copied again: {problem}",
                        job.phrase
                    ));
                }
                if let Some(d) = dest.parent() {
                    std::fs::create_dir_all(d)
                        .with_context(|| format!("cannot create {}", d.display()))?;
                }
                write_atomic(&dest, p.bytes)?;
                rec.photo = Some(wanted);
                photo_changed = true;
            }
        }
    }
    let image_sha = rec
        .sha256
        .get(&rec.image)
        .cloned()
        .context("the image's SHA-256 is missing")?;
    let photo_sha = rec.photo.as_ref().map(|p| p.sha256.clone());
    let mut images = vec![generated];
    if let Some(p) = &job.photo {
        images.push(p.image.clone());
    }

    // 3. CLIPScores.
    let t_score = Instant::now();
    let score_key = clip_score_key(s.manifest, &image_sha, photo_sha.as_deref())?;
    let mut scores_changed = false;
    if image_computed || rec.stages.clip_score != score_key {
        let refs: Vec<&image::RgbImage> = images.iter().collect();
        let scores = s.judge.clip_scores(&refs, &text)?;
        rec.clip_score = ClipScores {
            generated: scores[0],
            photo: scores.get(1).copied(),
        };
        rec.stages.clip_score = score_key;
        scores_changed = true;
    }
    let mut score_seconds = t_score.elapsed().as_secs_f64();

    // 4. Each captioner's captions and their scores.
    let mut captions = BTreeMap::new();
    let mut caption_keys = BTreeMap::new();
    let mut captions_changed = false;
    let mut caption_seconds = 0.0;
    for (label, captioner) in s.captioners {
        let key = caption_key(s.manifest, label, &image_sha, photo_sha.as_deref())?;
        let old_result = rec.captions.get(*label);
        let up_to_date = !image_computed
            && old_result.is_some()
            && rec.stages.captions.get(*label) == Some(&key);
        if up_to_date {
            if let Some(r) = old_result {
                captions.insert(label.to_string(), r.clone());
            }
        } else {
            if !image_computed {
                let why = match rec.stages.captions.get(*label) {
                    None => "new captioner".to_owned(),
                    Some(k) => crate::diff::first_difference(k, &key)
                        .map(|d| short_digests(&d))
                        .unwrap_or_else(|| "record incomplete".into()),
                };
                crate::stderr::note(format_args!(
                    "{}: {label} captions recomputed ({why})",
                    job.phrase
                ));
            }
            let t = Instant::now();
            let got = captioner.caption(&images)?;
            anyhow::ensure!(
                got.len() == images.len(),
                "captioner {label} returned {} captions for {} images",
                got.len(),
                images.len()
            );
            caption_seconds += t.elapsed().as_secs_f64();
            let t = Instant::now();
            let texts: Vec<&str> = got.iter().map(String::as_str).collect();
            let sims = s.judge.text_similarities(&text, &texts)?;
            let scored = |i: usize| ScoredCaption {
                caption: got[i].clone(),
                bleu: caption_bleu(job.phrase, &got[i]),
                clip_text_similarity: sims[i],
            };
            captions.insert(
                label.to_string(),
                CaptionerResult {
                    generated: scored(0),
                    photo: (got.len() > 1).then(|| scored(1)),
                },
            );
            score_seconds += t.elapsed().as_secs_f64();
            captions_changed = true;
        }
        caption_keys.insert(label.to_string(), key);
    }
    captions_changed |= captions.len() != rec.captions.len();
    rec.captions = captions;
    rec.stages.captions = caption_keys;

    let changed = image_computed || photo_changed || scores_changed || captions_changed;
    if !changed {
        return Ok((rec, Outcome::Reused));
    }
    if captions_changed || scores_changed {
        rec.seconds.caption = if captions_changed {
            caption_seconds
        } else {
            rec.seconds.caption
        };
        rec.seconds.score = score_seconds;
    }
    rec.device = crate::device::label(&s.judge.device);
    write_json(&record_path, &rec)?;
    Ok((
        rec,
        if image_computed {
            Outcome::Computed
        } else {
            Outcome::Updated
        },
    ))
}

/// A difference as notes show it: quoted SHA-256 digests cut to their first 12 digits.
fn short_digests(diff: &str) -> String {
    let mut out = String::with_capacity(diff.len());
    let mut rest = diff;
    while let Some(i) = rest.find('"') {
        let (before, from) = rest.split_at(i);
        out.push_str(before);
        let digest = from
            .get(1..65)
            .filter(|d| d.len() == 64 && d.bytes().all(|b| b.is_ascii_hexdigit()))
            .filter(|_| from.as_bytes().get(65) == Some(&b'"'));
        match digest {
            Some(d) => {
                out.push_str(&d[..12]);
                rest = &from[66..];
            }
            None => {
                out.push('"');
                rest = &from[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// Generates a phrase's image, frames and latents into the run folder: a record with the image
/// stage filled in and the later stages empty.
fn generate_image(
    s: &StageModels,
    job: &PhraseJob,
    text: &candle_core::Tensor,
    key: ImageKey,
    progress: &ProgressBar,
) -> anyhow::Result<PhraseRecord> {
    let layout = s.layout;
    let frames_dir = layout.frames(job.id);
    if frames_dir.exists() {
        // Frames of an interrupted or outdated attempt: this attempt writes its own.
        std::fs::remove_dir_all(&frames_dir)
            .with_context(|| format!("cannot remove {}", frames_dir.display()))?;
    }
    let out = drive(
        job.generator,
        text,
        job.seed,
        &frames_dir,
        s.manifest.settings.save_every,
        progress,
    )?;
    let image_path = layout.image(job.id);
    if let Some(dir) = image_path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let png = png_bytes(&tensor_to_rgb(&out.image)?)?;
    write_atomic(&image_path, &png)?;
    let mut sha256 = BTreeMap::from([(layout.relative(&image_path), sha256_hex(&png))]);
    let latents = match &out.latents {
        Some(l) => {
            let p = layout.latents(job.id);
            l.save(&p)?;
            Some(layout.relative(&p))
        }
        None => None,
    };
    let frames: Vec<String> = out.frames.iter().map(|f| layout.relative(f)).collect();
    for rel in frames.iter().chain(&latents) {
        let bytes = std::fs::read(layout.root.join(rel))
            .with_context(|| format!("cannot read back {rel}"))?;
        sha256.insert(rel.clone(), sha256_hex(&bytes));
    }
    let empty_key = ClipScoreKey {
        clip: String::new(),
        image: String::new(),
        photo: None,
    };
    Ok(PhraseRecord {
        schema_version: RUN_SCHEMA_VERSION,
        id: job.id.to_owned(),
        phrase: job.phrase.to_owned(),
        reference_tokens: crate::text::normalize(job.phrase),
        seed: job.seed,
        generator: job.generator.kind(),
        device: crate::device::label(&s.judge.device),
        image: layout.relative(&image_path),
        frames,
        latents,
        photo: None,
        final_similarity: out.final_similarity,
        clip_score: ClipScores {
            generated: 0.0,
            photo: None,
        },
        captions: BTreeMap::new(),
        steps: out
            .steps
            .iter()
            .map(|st| StepPoint {
                step: st.step,
                loss: st.loss,
                similarity: st.similarity,
            })
            .collect(),
        seconds: Timings {
            generate: out.seconds,
            caption: 0.0,
            score: 0.0,
        },
        stages: StageKeys {
            image: key,
            clip_score: empty_key,
            captions: BTreeMap::new(),
        },
        sha256,
    })
}

#[cfg(test)]
mod tests {
    use super::short_digests;

    #[test]
    fn notes_cut_digests_and_keep_other_values() {
        let (a, b) = ("a".repeat(64), "0123456789".repeat(7));
        let b = &b[..64];
        assert_eq!(
            short_digests(&format!("captioner: \"{a}\" -> \"{b}\"")),
            "captioner: aaaaaaaaaaaa -> 012345678901"
        );
        assert_eq!(short_digests("beam: 1 -> 2"), "beam: 1 -> 2");
        assert_eq!(short_digests("x: \"abc\" -> \""), "x: \"abc\" -> \"");
    }
}
