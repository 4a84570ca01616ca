//! `roundtrip generate`: one phrase to an image, its progress frames and a JSON record.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use candle_core::Device;
use serde::Serialize;

use super::biggan::{BigGanGenerator, BigGanSettings, Latents};
use super::clip::text_embedding;
use super::siren::{SirenGenerator, SirenSettings};
use super::{drive, Generator, GeneratorKind, StepRecord};
use crate::fsutil::{slug, write_json};
use crate::hub::{Locator, ModelRecord, ModelRef};
use crate::imageops::save_png;
use crate::input_err;
use crate::models::biggan::BigGan;
use crate::models::clip::Clip;

/// Version of the `<slug>.json` layout; bumped on any incompatible change (2: `device` is the
/// lower-case label of run records, `cpu` / `cuda:0`, where it was `Cpu` / `Cuda(..)`).
pub const GENERATION_SCHEMA_VERSION: u32 = 2;

/// Which generator draws, with its settings.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum GeneratorSettings {
    Siren(SirenSettings),
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
    pub fn kind(&self) -> GeneratorKind {
        match self {
            Self::Siren(_) => GeneratorKind::Siren,
            Self::BigGan { .. } => GeneratorKind::BigGan,
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
    pub generator: GeneratorKind,
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

    let locator = Locator::from_env_quiet(req.quiet);
    // The generator's model first (and --init-latents against it): cheap checks before CLIP.
    let biggan = match &req.settings {
        GeneratorSettings::Siren(_) => None,
        GeneratorSettings::BigGan {
            settings,
            model,
            init_latents,
        } => {
            let m = locator.open(&ModelRef::parse_option(model, "--biggan")?)?;
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
    let model = locator.open(&ModelRef::parse_option(&req.clip, "--clip")?)?;
    let clip =
        Clip::load(&model, &req.device).with_context(|| format!("loading CLIP `{}`", req.clip))?;
    let (seed, seed_source) = match req.seed {
        Some(s) => (s, "given"),
        None => (rand::random::<u64>() >> 11, "random"),
    };
    let text = text_embedding(&clip, phrase, &req.device)?;
    let progress = crate::stderr::bar(req.settings.steps() as u64, &name, req.quiet);
    let mut models = BTreeMap::from([("clip", clip.record.clone())]);
    let generator: Box<dyn Generator + '_> = match (&req.settings, &biggan) {
        (GeneratorSettings::Siren(s), _) => Box::new(SirenGenerator {
            encoder: &clip.model,
            settings: s.clone(),
            device: req.device.clone(),
        }),
        (GeneratorSettings::BigGan { settings, .. }, Some((g, record, init))) => {
            models.insert("biggan", record.clone());
            let avoid = settings
                .avoid
                .iter()
                .map(|p| text_embedding(&clip, p, &req.device))
                .collect::<anyhow::Result<Vec<_>>>()?;
            Box::new(BigGanGenerator {
                model: g,
                encoder: &clip.model,
                settings: settings.clone(),
                avoid,
                init: init.clone(),
                class_texts: crate::generate::biggan::class_name_embeddings(
                    &clip,
                    g,
                    settings,
                    &req.device,
                )?,
                device: req.device.clone(),
            })
        }
        (GeneratorSettings::BigGan { .. }, None) => unreachable!("BigGAN loaded above"),
    };
    let out = drive(
        generator.as_ref(),
        &text,
        seed,
        &frames_dir,
        req.save_every,
        &progress,
    )?;
    let final_similarity = out.final_similarity;
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
        generator: req.settings.kind(),
        settings: &req.settings,
        save_every: req.save_every,
        seed,
        seed_source,
        models,
        device: crate::device::label(&req.device),
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
