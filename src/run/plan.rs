//! A run's first phase: read the prompts file, settle the settings, select this shard's phrases
//! and read their photos, so that a bad line or photo stops the run before any model loads.

use std::path::PathBuf;

use super::requirements::Missing;
use super::settings::{effective_settings, validate_settings, RunSettings};
use super::shard::{image_id, image_seed, phrase_id};
use super::RunRequest;
use crate::generate::GeneratorKind;
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
    /// Photos of this shard's lines that are missing or cannot be decoded (their phrases have no
    /// photo here): the run lists them with everything else it lacks
    /// ([`super::requirements::ensure`]).
    pub missing: Vec<Missing>,
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

/// Reads and validates the prompts file, the settings and this shard's photos; a bad line or
/// setting fails, photos that are missing or cannot be decoded are listed in [`Plan::missing`].
pub fn plan(req: &RunRequest) -> anyhow::Result<Plan> {
    // Photos not found are listed below, line by line, with this shard's other problems.
    let (prompts, _not_found) = PromptFile::load_listing_photos(&req.prompts)?;
    let settings = effective_settings(&req.settings, &prompts);
    validate_settings(&settings)?;
    let photo_remedy = "put the photo there, fix its path (relative to the prompts file) or drop the TAB and path from the line";
    let mut missing: Vec<Missing> = Vec::new();
    let mut phrases = Vec::new();
    for p in prompts
        .prompts
        .iter()
        .filter(|p| req.shard.is_none_or(|s| s.contains(&p.phrase)))
    {
        let photo = match &p.photo_path {
            Some(path) if path.is_file() => {
                let read = crate::error::read_input_file(path).and_then(|bytes| {
                    let img = crate::imageops::decode_rgb(path, &bytes)?;
                    Ok((bytes, img))
                });
                match read {
                    Ok((bytes, img)) => Some((path.clone(), bytes, img)),
                    Err(e) => {
                        missing.push(Missing {
                            what: format!("{}:{}", req.prompts.display(), p.line),
                            problem: format!("real photo: {e:#}"),
                            remedy: photo_remedy.to_owned(),
                            hub: None,
                        });
                        None
                    }
                }
            }
            Some(path) => {
                missing.push(Missing {
                    what: format!("{}:{}", req.prompts.display(), p.line),
                    problem: format!(
                        "photo `{}` not found (looked for {})",
                        p.photo.as_deref().unwrap_or_default(),
                        path.display()
                    ),
                    remedy: photo_remedy.to_owned(),
                    hub: None,
                });
                None
            }
            None => None,
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
        missing,
    })
}
