//! `roundtrip generate`: one phrase to an image, its progress frames and a JSON record.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use candle_core::{Device, Tensor};
use indicatif::ProgressBar;
use serde::Serialize;

use super::biggan::{BigGanRun, Latents, Settings as BigGanSettings};
use super::siren::{Settings, SirenRun};
use super::{ImageEncoder, StepRecord};
use crate::fsutil::{slug, write_json};
use crate::hub::{Locator, ModelRecord, ModelRef};
use crate::imageops::save_png;
use crate::input_err;
use crate::models::biggan::BigGan;
use crate::models::clip::{Clip, ClipModel, CLIP_MEAN, CLIP_STD};

/// Version of the `<slug>.json` layout; bumped on any incompatible change.
pub const GENERATION_SCHEMA_VERSION: u32 = 1;

impl ImageEncoder for ClipModel {
    fn input_size(&self) -> usize {
        self.config().vision.image_size
    }

    fn encode_images(&self, images: &Tensor) -> candle_core::Result<Tensor> {
        self.image_features(&clip_normalize(images)?.0)
    }

    fn encode_images_taped(
        &self,
        images: &Tensor,
    ) -> candle_core::Result<Option<(Tensor, super::EncoderBackward<'_>)>> {
        if !self.image_tape_available() {
            return Ok(None);
        }
        let (px, std) = clip_normalize(&images.detach())?;
        let Some((emb, tape)) = self.image_features_taped(&px)? else {
            return Ok(None);
        };
        let back = move |g: &Tensor| tape.backward(self, g)?.broadcast_div(&std);
        Ok(Some((emb, Box::new(back))))
    }
}

/// Images in [0, 1] [N, 3, S, S] normalised with CLIP's mean and std, and the std [1, 3, 1, 1]
/// (the normalisation's gradient is a division by it).
fn clip_normalize(images: &Tensor) -> candle_core::Result<(Tensor, Tensor)> {
    let dev = images.device();
    let mean = Tensor::new(&CLIP_MEAN, dev)?.reshape((1, 3, 1, 1))?;
    let std = Tensor::new(&CLIP_STD, dev)?.reshape((1, 3, 1, 1))?;
    Ok((images.broadcast_sub(&mean)?.broadcast_div(&std)?, std))
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
    /// BigGAN's final and moving-average latents (none for SIREN).
    pub latents: Option<super::biggan::LatentsOut>,
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
    let (steps, frames) = drive(&mut run, settings.steps, frames_dir, save_every, progress)?;
    Ok(Generated {
        image: run.image()?,
        steps,
        frames,
        seconds: t0.elapsed().as_secs_f64(),
        latents: None,
    })
}

/// A guidance run stepped by [`drive`].
trait Guided {
    fn step(&mut self) -> candle_core::Result<StepRecord>;
    /// The image to save, [3, S, S] in [0, 1].
    fn image(&self) -> candle_core::Result<Tensor>;
}

impl Guided for SirenRun<'_> {
    fn step(&mut self) -> candle_core::Result<StepRecord> {
        SirenRun::step(self)
    }
    fn image(&self) -> candle_core::Result<Tensor> {
        SirenRun::image(self)
    }
}

impl Guided for BigGanRun<'_> {
    fn step(&mut self) -> candle_core::Result<StepRecord> {
        BigGanRun::step(self)
    }
    fn image(&self) -> candle_core::Result<Tensor> {
        BigGanRun::image(self)
    }
}

/// Runs `n` steps, writing a frame to `frames_dir` every `save_every` steps (0: none; never at
/// the last step, which is the image); returns the step records and frame paths.
fn drive(
    run: &mut dyn Guided,
    n: usize,
    frames_dir: &Path,
    save_every: usize,
    progress: &ProgressBar,
) -> anyhow::Result<(Vec<StepRecord>, Vec<PathBuf>)> {
    let mut steps = Vec::with_capacity(n);
    let mut frames = Vec::new();
    for _ in 0..n {
        let rec = run.step()?;
        progress.set_message(format!("sim {:.4}", rec.similarity));
        progress.inc(1);
        if save_every > 0 && rec.step % save_every == 0 && rec.step < n {
            std::fs::create_dir_all(frames_dir)
                .with_context(|| format!("cannot create {}", frames_dir.display()))?;
            let p = frames_dir.join(format!("step-{:06}.png", rec.step));
            save_png(&run.image()?, &p)?;
            frames.push(p);
        }
        steps.push(rec);
    }
    progress.finish_and_clear();
    Ok((steps, frames))
}

/// A BigGAN run's inputs besides the phrase.
pub struct BigGanJob<'a> {
    pub model: &'a BigGan,
    pub encoder: &'a dyn ImageEncoder,
    pub settings: &'a BigGanSettings,
    /// Raw embeddings of the penalty phrases.
    pub avoid: &'a [Tensor],
    /// Latents to start from instead of drawing them.
    pub init: Option<Latents>,
    pub device: &'a Device,
}

/// Runs big-sleep guidance, writing a frame (of the moving-average latents) every `save_every`
/// steps (0: none). With 0 steps the image is exactly the generator's for the start latents.
pub fn generate_biggan(
    job: BigGanJob<'_>,
    text: &Tensor,
    seed: u64,
    frames_dir: &Path,
    save_every: usize,
    progress: &ProgressBar,
) -> anyhow::Result<Generated> {
    let t0 = Instant::now();
    let s = job.settings;
    let mut run = BigGanRun::new(
        s,
        job.model,
        job.encoder,
        text,
        job.avoid,
        seed,
        job.init,
        job.device,
    )?;
    let (steps, frames) = drive(&mut run, s.steps, frames_dir, save_every, progress)?;
    Ok(Generated {
        image: run.image()?,
        steps,
        frames,
        seconds: t0.elapsed().as_secs_f64(),
        latents: Some(run.latents()?),
    })
}

/// Which generator draws, with its settings.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum GeneratorSettings {
    Siren(Settings),
    BigGan {
        #[serde(flatten)]
        settings: BigGanSettings,
        /// The BigGAN model reference (preset, hub id or folder).
        model: String,
        /// Latents the run started from.
        init_latents: Option<PathBuf>,
    },
}

impl GeneratorSettings {
    pub fn name(&self) -> &'static str {
        match self {
            Self::Siren(_) => "siren",
            Self::BigGan { .. } => "biggan",
        }
    }

    pub fn steps(&self) -> usize {
        match self {
            Self::Siren(s) => s.steps,
            Self::BigGan { settings, .. } => settings.steps,
        }
    }
}

/// A request for `roundtrip generate`.
pub struct GenerateRequest {
    pub phrase: String,
    pub out_dir: PathBuf,
    pub clip: String,
    pub settings: GeneratorSettings,
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
    pub settings: &'a GeneratorSettings,
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
    /// BigGAN: the latents file (safetensors: `z`, `class_logits` of the saved image, and the
    /// optimiser's `last_z`, `last_class_logits`), relative to the output folder.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latents: Option<String>,
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
    match &req.settings {
        GeneratorSettings::Siren(s) => s.validate()?,
        GeneratorSettings::BigGan { settings, .. } => settings.validate(None)?,
    }
    let name = slug(phrase);
    let image_path = req.out_dir.join(format!("{name}.png"));
    let record_path = req.out_dir.join(format!("{name}.json"));
    let latents_path = req.out_dir.join(format!("{name}.latents.safetensors"));
    let frames_dir = req.out_dir.join(&name);
    if !req.force {
        for p in [&image_path, &record_path, &frames_dir, &latents_path] {
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
    // The generator's model first (and --init-latents against it): cheap checks before CLIP.
    let biggan = match &req.settings {
        GeneratorSettings::Siren(_) => None,
        GeneratorSettings::BigGan {
            settings,
            model,
            init_latents,
        } => {
            let m = locator.open(&ModelRef::parse(model)?)?;
            let g = BigGan::load(&m, &req.device)
                .with_context(|| format!("loading BigGAN `{model}`"))?;
            let cfg = g.config();
            settings.validate(Some(cfg.num_classes))?;
            let init = match init_latents {
                Some(p) => Some(Latents::load(
                    p,
                    g.num_latents(),
                    cfg.z_dim,
                    cfg.num_classes,
                    &req.device,
                )?),
                None => None,
            };
            Some((g, m.record(), init))
        }
    };
    let model = locator.open(&ModelRef::parse(&req.clip)?)?;
    let clip =
        Clip::load(&model, &req.device).with_context(|| format!("loading CLIP `{}`", req.clip))?;
    let (seed, seed_source) = match req.seed {
        Some(s) => (s, "given"),
        None => (rand::random::<u64>() >> 11, "random"),
    };
    let text = text_embedding(&clip, phrase, &req.device)?;
    let progress = crate::stderr::bar(req.settings.steps() as u64, &name, req.quiet);
    let mut models = BTreeMap::from([("clip", clip.record.clone())]);
    let out = match (&req.settings, biggan) {
        (GeneratorSettings::Siren(s), _) => generate_siren(
            &clip.model,
            &text,
            s,
            seed,
            &req.device,
            &frames_dir,
            req.save_every,
            &progress,
        )?,
        (GeneratorSettings::BigGan { settings, .. }, Some((g, record, init))) => {
            models.insert("biggan", record);
            let avoid = settings
                .avoid
                .iter()
                .map(|p| text_embedding(&clip, p, &req.device))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let job = BigGanJob {
                model: &g,
                encoder: &clip.model,
                settings,
                avoid: &avoid,
                init,
                device: &req.device,
            };
            generate_biggan(job, &text, seed, &frames_dir, req.save_every, &progress)?
        }
        (GeneratorSettings::BigGan { .. }, None) => unreachable!("BigGAN loaded above"),
    };
    let final_similarity = whole_image_similarity(&clip.model, &out.image, &text)?;
    save_png(&out.image, &image_path)?;
    let latents = match &out.latents {
        Some(l) => {
            l.save(&latents_path)?;
            Some(relative(&latents_path, &req.out_dir))
        }
        None => None,
    };
    let record = GenerationRecord {
        schema_version: GENERATION_SCHEMA_VERSION,
        phrase,
        generator: req.settings.name(),
        settings: &req.settings,
        save_every: req.save_every,
        seed,
        seed_source,
        models,
        device: format!("{:?}", req.device),
        threads: candle_core::utils::get_num_threads(),
        image: relative(&image_path, &req.out_dir),
        frames: out
            .frames
            .iter()
            .map(|f| relative(f, &req.out_dir))
            .collect(),
        latents,
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
    let x = crate::imageops::resize::resize_bilinear(image, s, s)?.unsqueeze(0)?;
    let e = super::l2_normalize(&encoder.encode_images(&x)?)?;
    let t = super::l2_normalize(text)?;
    Ok(e.matmul(&t.t()?)?.flatten_all()?.to_vec1::<f32>()?[0])
}
