//! A run's third phase: each planned phrase brought up to date ([`bring_up_to_date`]), with the
//! generator its line asks for, the captioners and CLIP as the judge, stage by stage: a stage is
//! recomputed only when its key ([`super::record::StageKeys`]) changed or its files are not
//! intact.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use crate::stderr::Bar;
use anyhow::Context;
use candle_core::Device;

use super::load::Models;
use super::manifest::{Layout, Manifest};
use super::plan::Plan;
use super::record::{
    caption_key, clip_score_key, image_files_problem, image_key, photo_file_problem, read_record,
    CaptionerResult, ClipScoreKey, ClipScores, ImageKey, PhotoRecord, PhraseRecord, ReadRecord,
    ScoredCaption, StageKeys, StepPoint, Timings,
};
use super::stages::{ImageCaptioner, Judge};
use super::RUN_SCHEMA_VERSION;
use crate::fingerprint::sha256_hex;
use crate::fsutil::{write_atomic, write_json};
use crate::generate::biggan::class_name_embeddings;
use crate::generate::clip::text_embedding;
use crate::generate::{drive, BigGanGenerator, Generator, GeneratorKind, SirenGenerator};
use crate::imageops::{png_bytes, tensor_to_rgb};
use crate::metrics::captions::{caption_bleu, caption_rouge_l};

/// The records of a run's images (one per phrase and generator drawing it), in plan order, and
/// what was done to them.
pub struct Computed {
    pub records: Vec<PhraseRecord>,
    /// Images generated.
    pub computed: usize,
    /// Images kept whose captions or scores were recomputed.
    pub updated: usize,
    /// Images whose record was up to date.
    pub reused: usize,
}

/// The run's generators, guided by its CLIP; BigGAN's only where the run loaded it.
struct Generators<'a> {
    siren: SirenGenerator<'a>,
    biggan: Option<BigGanGenerator<'a>>,
}

impl<'a> Generators<'a> {
    fn new(plan: &Plan, models: &'a Models, device: &Device) -> anyhow::Result<Self> {
        let clip = &models.clip;
        let siren = SirenGenerator {
            encoder: &clip.model,
            settings: plan.settings.siren.clone(),
            device: device.clone(),
        };
        let biggan = match &models.biggan {
            None => None,
            Some(model) => {
                let b = plan
                    .settings
                    .biggan
                    .as_ref()
                    .ok_or_else(|| anyhow::anyhow!("BigGAN loaded without settings"))?;
                let avoid = b
                    .settings
                    .avoid
                    .iter()
                    .map(|p| text_embedding(clip, p, device))
                    .collect::<anyhow::Result<Vec<_>>>()?;
                Some(BigGanGenerator {
                    model,
                    encoder: &clip.model,
                    settings: b.settings.clone(),
                    avoid,
                    init: None,
                    class_texts: class_name_embeddings(clip, model, &b.settings, device)?,
                    device: device.clone(),
                })
            }
        };
        Ok(Self { siren, biggan })
    }

    fn get(&self, kind: GeneratorKind) -> anyhow::Result<&dyn Generator> {
        Ok(match kind {
            GeneratorKind::Siren => &self.siren,
            GeneratorKind::BigGan => self
                .biggan
                .as_ref()
                .ok_or_else(|| anyhow::anyhow!("BigGAN not loaded"))?,
        })
    }
}

/// Brings every planned phrase up to date, `jobs` images at a time (unless `quiet`: a status
/// line when an image starts and one when it ends, a bar of its steps under the run's bar of all
/// steps; without a terminal, the bars' heartbeat lines, see [`crate::stderr::Bar`]).
///
/// With several jobs each image runs on its share of the threads (its own rayon pool): the
/// models' small operations use two cores badly (one BigGAN image is faster on one thread than on
/// two), so two images side by side finish in about the time of one. The values do not depend
/// on the number of threads (every kernel splits its work the same way whatever the count; a
/// test compares one job with two byte for byte), so `jobs` is no part of any result's key.
pub fn compute_all(
    plan: &Plan,
    layout: &Layout,
    manifest: &Manifest,
    models: &Models,
    device: &Device,
    quiet: bool,
    jobs: usize,
) -> anyhow::Result<Computed> {
    let generators = Generators::new(plan, models, device)?;
    let judge = Judge {
        clip: &models.clip,
        device: device.clone(),
    };
    let captioners: Vec<(&str, &dyn ImageCaptioner)> = models
        .captioners
        .iter()
        .map(|(l, c)| (l.as_str(), c.as_ref()))
        .collect();
    let stage_models = StageModels {
        layout,
        manifest,
        captioners: &captioners,
        judge: &judge,
    };
    // Every image of the plan, in plan order: (its number from 1, phrase, slot).
    let images: Vec<_> = plan
        .phrases
        .iter()
        .flat_map(|p| p.images.iter().map(move |slot| (p, slot)))
        .enumerate()
        .map(|(i, (p, slot))| (i + 1, p, slot))
        .collect();
    let total = images.len();
    // The run's steps: every image's, less those of the images found kept as they come.
    let mut all_steps = 0u64;
    for (_, _, slot) in &images {
        all_steps += generators.get(slot.generator)?.steps() as u64;
    }
    // `run` and the images' `[i/N]` padded to one width, so that the bars start in one column.
    let width = format!("[{total}/{total}]").len();
    let run_bar = crate::stderr::Bar::overall(all_steps, &format!("{:<width$}", "run"), quiet);
    run_bar.set_message(format!("0/{total} images"));
    let finished = std::sync::atomic::AtomicUsize::new(0);
    let one = |i: usize,
               p: &super::plan::Planned,
               slot: &super::plan::ImageSlot|
     -> anyhow::Result<(PhraseRecord, Outcome)> {
        let generator = generators.get(slot.generator)?;
        let job = PhraseJob {
            id: &slot.id,
            photo_id: &p.id,
            phrase: &p.prompt.phrase,
            seed: slot.seed,
            photo: p.photo.as_ref().map(|(source, bytes, img)| PhotoInput {
                source,
                written: p.prompt.photo.as_deref().unwrap_or_default(),
                bytes,
                image: img,
                sha256: sha256_hex(bytes),
            }),
            generator,
        };
        let what = if p.images.len() > 1 {
            format!(" [{}]", slot.generator)
        } else {
            String::new()
        };
        crate::stderr::status(
            quiet,
            format_args!("[{i}/{total}] {}{what}", p.prompt.phrase),
        );
        let t0 = Instant::now();
        let steps = generator.steps() as u64;
        let prefix = format!("[{i}/{total}]");
        let bar = run_bar.child(steps, &format!("{prefix:<width$}"));
        let (rec, outcome) = bring_up_to_date(&stage_models, &job, &bar)?;
        bar.finish_and_clear();
        if outcome != Outcome::Computed {
            run_bar.dec_length(steps);
        }
        let n = finished.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
        run_bar.set_message(format!("{n}/{total} images"));
        run_bar.line_with_state(format_args!(
            "[{i}/{total}] {}",
            phrase_done(outcome, t0.elapsed().as_secs_f64(), &rec)
        ));
        Ok((rec, outcome))
    };
    let done = in_parallel(&images, jobs, |(i, p, slot)| one(*i, p, slot))?;
    run_bar.finish_and_clear();
    let mut out = Computed {
        records: Vec::with_capacity(total),
        computed: 0,
        updated: 0,
        reused: 0,
    };
    for (rec, outcome) in done {
        match outcome {
            Outcome::Reused => out.reused += 1,
            Outcome::Updated => out.updated += 1,
            Outcome::Computed => out.computed += 1,
        }
        out.records.push(rec);
    }
    Ok(out)
}

/// Each of `jobs` jobs' share of the current pool's threads (at least one).
pub fn threads_per_job(jobs: usize) -> usize {
    (rayon::current_num_threads() / jobs.max(1)).max(1)
}

/// `f` over `items` by `jobs` workers, each on its share of the threads (a rayon pool of its
/// own), results in `items`' order. One job runs in the calling thread as it is. After an error
/// no worker takes a new item; the first error (in `items`' order) is returned once the items
/// under way have finished, so that nothing is left half-written.
pub fn in_parallel<T: Sync, R: Send>(
    items: &[T],
    jobs: usize,
    f: impl Fn(&T) -> anyhow::Result<R> + Sync,
) -> anyhow::Result<Vec<R>> {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    let jobs = jobs.clamp(1, items.len().max(1));
    if jobs == 1 {
        return items.iter().map(f).collect();
    }
    let threads = threads_per_job(jobs);
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let worker = || -> Vec<(usize, anyhow::Result<R>)> {
        let mut done = Vec::new();
        let pool = match rayon::ThreadPoolBuilder::new().num_threads(threads).build() {
            Ok(p) => p,
            Err(e) => {
                failed.store(true, Ordering::SeqCst);
                done.push((
                    0,
                    Err(anyhow::anyhow!("cannot start a worker's threads: {e}")),
                ));
                return done;
            }
        };
        pool.install(|| {
            while !failed.load(Ordering::SeqCst) {
                let k = next.fetch_add(1, Ordering::SeqCst);
                let Some(item) = items.get(k) else { break };
                let r = f(item);
                if r.is_err() {
                    failed.store(true, Ordering::SeqCst);
                }
                done.push((k, r));
            }
        });
        done
    };
    let mut results: Vec<(usize, anyhow::Result<R>)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..jobs).map(|_| s.spawn(worker)).collect();
        handles
            .into_iter()
            .flat_map(|h| match h.join() {
                Ok(done) => done,
                Err(_) => vec![(usize::MAX, Err(anyhow::anyhow!("a worker panicked")))],
            })
            .collect()
    });
    results.sort_by_key(|(k, _)| *k);
    results.into_iter().map(|(_, r)| r).collect()
}

/// What became of an image, for its line at the end: `computed in 4.2 s: sim 0.3312, CLIPScore
/// 0.7120` (the guide's similarity of phrase and image, then the judge's score).
fn phrase_done(outcome: Outcome, seconds: f64, rec: &PhraseRecord) -> String {
    let what = match outcome {
        Outcome::Reused => "reused",
        Outcome::Updated => "image kept, captions or scores updated",
        Outcome::Computed => "computed",
    };
    format!(
        "{what} in {seconds:.1} s: sim {:.4}, CLIPScore {:.4}",
        rec.final_similarity, rec.clip_score.generated
    )
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

/// One image of a phrase to bring up to date.
pub struct PhraseJob<'a> {
    /// The record's file-name stem ([`super::plan::ImageSlot::id`]).
    pub id: &'a str,
    /// The phrase's file-name stem, naming its photo copy (shared by its images' records).
    pub photo_id: &'a str,
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
    progress: &Bar,
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
            let dest = layout.photo(job.photo_id, p.source);
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
                rouge_l: Some(caption_rouge_l(&rec.reference_tokens, &got[i])),
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
    progress: &Bar,
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
