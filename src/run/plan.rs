//! A run's first phase: read the prompts file, settle the settings, select this shard's phrases
//! and read their photos, so that a bad line or photo stops the run before any model loads.

use std::path::PathBuf;

use super::settings::{effective_settings, validate_settings, RunSettings};
use super::shard::phrase_id;
use super::RunRequest;
use crate::input_err;
use crate::prompts::{Prompt, PromptFile};

/// A phrase of this run with its file-name stem and its photo (path, bytes, pixels).
pub struct Planned {
    pub prompt: Prompt,
    pub id: String,
    pub photo: Option<(PathBuf, Vec<u8>, image::RgbImage)>,
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
    /// The prompts-file line of each phrase, in order.
    pub fn lines(&self) -> Vec<usize> {
        self.phrases.iter().map(|p| p.prompt.line).collect()
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
            photo,
        });
    }
    Ok(Plan {
        prompts,
        settings,
        phrases,
    })
}
