//! A run's first phase: read the prompts file, settle the settings, select this shard's phrases
//! and read their photos, so that a bad line or photo stops the run before any model loads.

use std::path::PathBuf;

use super::settings::{effective_settings, validate_settings, RunSettings};
use super::shard::{image_id, image_seed, phrase_id};
use super::RunRequest;
use crate::generate::GeneratorKind;
use crate::input_err;
use crate::prompts::{Prompt, PromptFile};

/// A phrase of this run with its file-name stem, its images and its photo (path, bytes, pixels).
pub struct Planned {
    pub prompt: Prompt,
    /// The phrase's file-name stem ([`phrase_id`]; its photo copy's name).
    pub id: String,
    /// One per generator drawing it, in column order.
    pub images: Vec<ImageSlot>,
    pub photo: Option<(PathBuf, Vec<u8>, image::RgbImage)>,
}

/// One image of a phrase: the generator drawing it, its record's file-name stem and its seed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageSlot {
    pub generator: GeneratorKind,
    pub id: String,
    pub seed: u64,
}

/// The images of a phrase whose line has the prefix `pinned`: one per
/// [`RunSettings::line_generators`], the first with the one-generator seed and id.
pub fn image_slots(
    settings: &RunSettings,
    phrase: &str,
    pinned: Option<GeneratorKind>,
) -> Vec<ImageSlot> {
    settings
        .line_generators(pinned)
        .into_iter()
        .enumerate()
        .map(|(i, generator)| ImageSlot {
            generator,
            id: image_id(phrase, generator, i == 0),
            seed: image_seed(settings.seed, phrase, generator, i == 0),
        })
        .collect()
}

/// What a run will do, validated.
pub struct Plan {
    /// The whole prompts file (run.json records every phrase, not only this shard's).
    pub prompts: PromptFile,
    /// The settings as recorded ([`effective_settings`]).
    pub settings: RunSettings,
    /// This shard's phrases, in file order.
    pub phrases: Vec<Planned>,
}

impl Plan {
    /// The prompts-file line of each image (of each phrase, in column order), in order.
    pub fn lines(&self) -> Vec<usize> {
        self.phrases
            .iter()
            .flat_map(|p| p.images.iter().map(|_| p.prompt.line))
            .collect()
    }
}

/// Reads and validates the prompts file, the settings and this shard's photos.
pub fn plan(req: &RunRequest) -> anyhow::Result<Plan> {
    let prompts = PromptFile::load(&req.prompts)?;
    let settings = effective_settings(&req.settings, &prompts);
    validate_settings(&settings)?;
    let mut phrases = Vec::new();
    for p in prompts
        .prompts
        .iter()
        .filter(|p| req.shard.is_none_or(|s| s.contains(&p.phrase)))
    {
        let photo = match &p.photo_path {
            None => None,
            Some(path) => {
                let bytes = crate::error::read_input_file(path)?;
                let img = crate::imageops::decode_rgb(path, &bytes).map_err(|e| {
                    input_err!("{}:{}: real photo: {e:#}", req.prompts.display(), p.line)
                })?;
                Some((path.clone(), bytes, img))
            }
        };
        phrases.push(Planned {
            prompt: p.clone(),
            id: phrase_id(&p.phrase),
            images: image_slots(&settings, &p.phrase, p.generator),
            photo,
        });
    }
    Ok(Plan {
        prompts,
        settings,
        phrases,
    })
}
