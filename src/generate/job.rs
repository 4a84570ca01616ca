//! `roundtrip generate`: one phrase to an image, its progress frames and a JSON record.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use candle_core::{Device, Tensor};
use indicatif::ProgressBar;
use serde::Serialize;

use super::siren::{Settings, SirenRun};
use super::{ImageEncoder, StepRecord};
use crate::fsutil::{slug, write_json};
use crate::hub::{Locator, ModelRecord, ModelRef};
use crate::imageops::save_png;
use crate::input_err;
use crate::models::clip::{Clip, ClipModel, CLIP_MEAN, CLIP_STD};

/// Version of the `<slug>.json` layout; bumped on any incompatible change.
pub const GENERATION_SCHEMA_VERSION: u32 = 1;

impl ImageEncoder for ClipModel {
    fn input_size(&self) -> usize {
        self.config().vision.image_size
    }

    fn encode_images(&self, images: &Tensor) -> candle_core::Result<Tensor> {
        let dev = images.device();
        let mean = Tensor::new(&CLIP_MEAN, dev)?.reshape((1, 3, 1, 1))?;
        let std = Tensor::new(&CLIP_STD, dev)?.reshape((1, 3, 1, 1))?;
        self.image_features(&images.broadcast_sub(&mean)?.broadcast_div(&std)?)
    }
}

/// The phrase's raw CLIP text embedding [1, D].
pub fn text_embedding(clip: &Clip, phrase: &str, device: &Device) -> anyhow::Result<Tensor> {
    let ids = clip.tokenizer.encode_batch(&[phrase], device)?;
    Ok(clip.model.text_features(&ids)?)
}

/// What generation produced for one phrase.
pub struct Generated {
    pub image: Tensor,
    pub steps: Vec<StepRecord>,
    /// Progress frames written, in order.
    pub frames: Vec<PathBuf>,
    pub seconds: f64,
}

/// Runs SIREN guidance, writing a frame to `frames_dir` every `save_every` steps (0: none).
#[allow(clippy::too_many_arguments)]
pub fn generate_siren(
    encoder: &dyn ImageEncoder,
    text: &Tensor,
    settings: &Settings,
    seed: u64,
    device: &Device,
    frames_dir: &Path,
    save_every: usize,
    progress: &ProgressBar,
) -> anyhow::Result<Generated> {
    let t0 = Instant::now();
    let mut run = SirenRun::new(settings, encoder, text, seed, device)?;
    let mut steps = Vec::with_capacity(settings.steps);
    let mut frames = Vec::new();
    for _ in 0..settings.steps {
        let rec = run.step()?;
        progress.set_message(format!("sim {:.4}", rec.similarity));
        progress.inc(1);
        if save_every > 0 && rec.step % save_every == 0 && rec.step < settings.steps {
            std::fs::create_dir_all(frames_dir)
                .with_context(|| format!("cannot create {}", frames_dir.display()))?;
            let p = frames_dir.join(format!("step-{:06}.png", rec.step));
            save_png(&run.image()?, &p)?;
            frames.push(p);
        }
        steps.push(rec);
    }
    progress.finish_and_clear();
    Ok(Generated {
        image: run.image()?,
        steps,
        frames,
        seconds: t0.elapsed().as_secs_f64(),
    })
}

/// A request for `roundtrip generate`.
pub struct GenerateRequest {
    pub phrase: String,
    pub out_dir: PathBuf,
    pub clip: String,
    pub settings: Settings,
    pub seed: Option<u64>,
    pub save_every: usize,
    pub force: bool,
    pub quiet: bool,
    pub device: Device,
}

/// `<slug>.json`: everything needed to reproduce and inspect a generation.
#[derive(Serialize)]
pub struct GenerationRecord<'a> {
    pub schema_version: u32,
    pub phrase: &'a str,
    pub generator: &'static str,
    pub settings: &'a Settings,
    pub save_every: usize,
    pub seed: u64,
    /// `given` (--seed) or `random` (drawn because none was given).
    pub seed_source: &'static str,
    pub models: BTreeMap<&'static str, ModelRecord>,
    pub device: String,
    pub threads: usize,
    /// Paths relative to the output folder.
    pub image: String,
    pub frames: Vec<String>,
    /// Cosine similarity between the phrase and the whole final image (resized to CLIP's input).
    pub final_similarity: f32,
    pub seconds: f64,
    pub steps: &'a [StepRecord],
}

/// What `generate` wrote.
pub struct GenerateOutput {
    pub image: PathBuf,
    pub record: PathBuf,
    pub final_similarity: f32,
    pub seed: u64,
}

fn relative(path: &Path, base: &Path) -> String {
    path.strip_prefix(base)
        .unwrap_or(path)
        .display()
        .to_string()
}

/// Validates everything, then generates and writes the image, frames and record.
pub fn generate(req: &GenerateRequest) -> anyhow::Result<GenerateOutput> {
    let phrase = req.phrase.trim();
    if phrase.is_empty() {
        return Err(input_err!(
            "the phrase is empty: expected some words to draw"
        ));
    }
    req.settings.validate()?;
    let name = slug(phrase);
    let image_path = req.out_dir.join(format!("{name}.png"));
    let record_path = req.out_dir.join(format!("{name}.json"));
    let frames_dir = req.out_dir.join(&name);
    if !req.force {
        for p in [&image_path, &record_path, &frames_dir] {
            if p.exists() {
                return Err(input_err!(
                    "{} already exists: pass --force to overwrite it",
                    p.display()
                ));
            }
        }
    }
    std::fs::create_dir_all(&req.out_dir)
        .map_err(|e| input_err!("cannot create output folder {}: {e}", req.out_dir.display()))?;
    let probe = req.out_dir.join(format!(".{name}.probe"));
    std::fs::write(&probe, b"").map_err(|e| {
        input_err!(
            "output folder {} is not writable: {e}",
            req.out_dir.display()
        )
    })?;
    let _ = std::fs::remove_file(&probe);

    let locator = Locator::from_env();
    let model = locator.open(&ModelRef::parse(&req.clip)?)?;
    let clip =
        Clip::load(&model, &req.device).with_context(|| format!("loading CLIP `{}`", req.clip))?;
    let (seed, seed_source) = match req.seed {
        Some(s) => (s, "given"),
        None => (rand::random::<u64>() >> 11, "random"),
    };
    let text = text_embedding(&clip, phrase, &req.device)?;
    let progress = crate::progress::bar(req.settings.steps as u64, &name, req.quiet);
    let out = generate_siren(
        &clip.model,
        &text,
        &req.settings,
        seed,
        &req.device,
        &frames_dir,
        req.save_every,
        &progress,
    )?;
    let final_similarity = whole_image_similarity(&clip.model, &out.image, &text)?;
    save_png(&out.image, &image_path)?;
    let record = GenerationRecord {
        schema_version: GENERATION_SCHEMA_VERSION,
        phrase,
        generator: "siren",
        settings: &req.settings,
        save_every: req.save_every,
        seed,
        seed_source,
        models: BTreeMap::from([("clip", clip.record.clone())]),
        device: format!("{:?}", req.device),
        threads: candle_core::utils::get_num_threads(),
        image: relative(&image_path, &req.out_dir),
        frames: out
            .frames
            .iter()
            .map(|f| relative(f, &req.out_dir))
            .collect(),
        final_similarity,
        seconds: out.seconds,
        steps: &out.steps,
    };
    write_json(&record_path, &record)?;
    Ok(GenerateOutput {
        image: image_path,
        record: record_path,
        final_similarity,
        seed,
    })
}

/// Cosine similarity between a phrase embedding and a whole image resized to the encoder's input.
pub fn whole_image_similarity(
    encoder: &dyn ImageEncoder,
    image: &Tensor,
    text: &Tensor,
) -> anyhow::Result<f32> {
    let s = encoder.input_size();
    let x = crate::imageops::resize_bilinear(image, s, s)?.unsqueeze(0)?;
    let e = super::l2_normalize(&encoder.encode_images(&x)?)?;
    let t = super::l2_normalize(text)?;
    Ok(e.matmul(&t.t()?)?.flatten_all()?.to_vec1::<f32>()?[0])
}
