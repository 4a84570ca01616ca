//! A run's third phase: each planned phrase brought up to date ([`record::bring_up_to_date`]),
//! with the generator its line asks for, the captioners and CLIP as the judge.

use candle_core::Device;

use super::load::Models;
use super::manifest::{Layout, Manifest};
use super::plan::Plan;
use super::record::{self, Outcome, PhotoInput, PhraseJob, PhraseRecord, StageModels};
use super::shard::phrase_seed;
use super::stages::{ImageCaptioner, Judge};
use crate::fingerprint::sha256_hex;
use crate::generate::clip::text_embedding;
use crate::generate::{BigGanGenerator, Generator, GeneratorKind, SirenGenerator};

/// The records of a run's phrases, in plan order, and what was done to them.
pub struct Computed {
    pub records: Vec<PhraseRecord>,
    /// Phrases whose image was generated.
    pub computed: usize,
    /// Phrases whose image was kept and whose captions or scores were recomputed.
    pub updated: usize,
    /// Phrases whose record was up to date.
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

/// Brings every planned phrase up to date, one after the other, with a status line and a
/// progress bar each (unless `quiet`).
pub fn compute_all(
    plan: &Plan,
    layout: &Layout,
    manifest: &Manifest,
    models: &Models,
    device: &Device,
    quiet: bool,
) -> anyhow::Result<Computed> {
    let generators = Generators::new(plan, models, device)?;
    let judge = Judge {
        clip: &models.clip,
        device: device.clone(),
    };
    let captioners: Vec<(&str, &dyn ImageCaptioner)> = models
        .captioners
        .iter()
        .map(|(l, c)| (l.as_str(), c as &dyn ImageCaptioner))
        .collect();
    let stage_models = StageModels {
        layout,
        manifest,
        captioners: &captioners,
        judge: &judge,
    };
    let mut out = Computed {
        records: Vec::with_capacity(plan.phrases.len()),
        computed: 0,
        updated: 0,
        reused: 0,
    };
    let total = plan.phrases.len();
    for (i, p) in plan.phrases.iter().enumerate() {
        let kind = p.prompt.generator.unwrap_or(plan.settings.generator);
        let generator = generators.get(kind)?;
        let job = PhraseJob {
            id: &p.id,
            phrase: &p.prompt.phrase,
            seed: phrase_seed(plan.settings.seed, &p.prompt.phrase),
            photo: p.photo.as_ref().map(|(source, bytes, img)| PhotoInput {
                source,
                written: p.prompt.photo.as_deref().unwrap_or_default(),
                bytes,
                image: img,
                sha256: sha256_hex(bytes),
            }),
            generator,
        };
        crate::stderr::status(
            quiet,
            format_args!("[{}/{total}] {}", i + 1, p.prompt.phrase),
        );
        let bar = crate::stderr::bar(
            generator.steps() as u64,
            &format!("[{}/{total}]", i + 1),
            quiet,
        );
        let (rec, outcome) = record::bring_up_to_date(&stage_models, &job, &bar)?;
        bar.finish_and_clear();
        match outcome {
            Outcome::Reused => out.reused += 1,
            Outcome::Updated => out.updated += 1,
            Outcome::Computed => out.computed += 1,
        }
        out.records.push(rec);
    }
    Ok(out)
}
