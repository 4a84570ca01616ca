//! A pretrained BLIP captioner ([`crate::models::blip`]) beside the trained LSTM captioners:
//! loaded from a model reference (the `blip-base` / `blip-large` presets, their hub repositories,
//! or a folder in transformers' layout: config.json, model.safetensors or pytorch_model.bin,
//! tokenizer.json, preprocessor_config.json, and tokenizer_config.json when there is one), it
//! captions images as
//!
//! ```python
//! inputs = processor(images=image, text=prompt, return_tensors="pt")  # text only with a prompt
//! ids = model.generate(**inputs, max_length=20, num_beams=beam)
//! processor.decode(ids[0], skip_special_tokens=True)
//! ```
//!
//! does in transformers (the model card's call; [`BlipDecoding`] holds the prompt and max_length,
//! the beam comes from `--beam`). Decoding is tokenizer.json's decoder (special tokens skipped,
//! WordPiece's `##` joined), then transformers' `clean_up_tokenization` when tokenizer_config.json
//! sets `clean_up_tokenization_spaces` (transformers 5's default is not to).

use std::path::PathBuf;

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::error::InputError;
use crate::hub::{Locator, Model, ModelRecord, ModelRef};
use crate::input_err;
use crate::models::blip::{generate, Blip, Generation, ImageProcessor};

/// transformers' default `max_length` (the published checkpoints set no other).
pub const DEFAULT_MAX_LENGTH: usize = 20;

/// The files of a BLIP model folder besides config.json and the weights.
pub const TOKENIZER: &str = "tokenizer.json";
pub const PREPROCESSOR: &str = "preprocessor_config.json";
pub const TOKENIZER_CONFIG: &str = "tokenizer_config.json";

/// How a BLIP captioner decodes, besides the beam width: what keys its captions with the model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlipDecoding {
    /// A text the caption continues (conditional captioning, e.g. "a picture of"; the caption
    /// then starts with it, as transformers decodes it); `None`: unconditional.
    pub prompt: Option<String>,
    /// Most tokens in all, [DEC] and the prompt's included (transformers' `max_length`).
    pub max_length: usize,
}

impl Default for BlipDecoding {
    fn default() -> Self {
        Self {
            prompt: None,
            max_length: DEFAULT_MAX_LENGTH,
        }
    }
}

/// A loaded BLIP captioner.
pub struct BlipCaptioner {
    pub model: Blip,
    pub processor: ImageProcessor,
    tokenizer: tokenizers::Tokenizer,
    /// tokenizer_config.json's `clean_up_tokenization_spaces`.
    cleanup: bool,
    pub decoding: BlipDecoding,
    /// The decoder's first ids: bos, then the prompt's tokens.
    prompt_ids: Vec<u32>,
    /// The reference as given, and what the locator resolved.
    pub reference: String,
    pub record: ModelRecord,
    /// The files' content fingerprint combined with the decoding settings: captions are keyed
    /// by it.
    pub fingerprint: String,
}

/// Whether a captioner reference names a BLIP model rather than a trained LSTM captioner folder:
/// a preset of kind `blip` (or its repository id, with or without `@revision`), a folder whose
/// config.json is a BLIP config (`model_type` "blip"), or another hub id whose config.json in the
/// hub cache is one (after `roundtrip models download ORG/NAME --kind blip`; the network is never
/// asked). Anything else is taken for an LSTM captioner folder (whose checks then name what is
/// wrong).
pub fn is_blip_reference(reference: &str) -> bool {
    if crate::embedded::lookup(reference).is_some() {
        return false;
    }
    let is_blip_config = |path: &std::path::Path| {
        std::fs::read_to_string(path)
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .is_some_and(|v| v.get("model_type").and_then(|t| t.as_str()) == Some("blip"))
    };
    let path = std::path::Path::new(reference);
    if path.is_dir() {
        return is_blip_config(&path.join("config.json"));
    }
    let Ok(r) = ModelRef::parse(reference) else {
        return false;
    };
    if let Some(p) = r.preset.as_deref().and_then(crate::hub::preset) {
        return p.kind == "blip";
    }
    match &r.source {
        crate::hub::ModelSource::Hub { repo, revision } => {
            let cache = crate::hub::HubSettings::from_env().cache_dir;
            let config = crate::hub::FileNeed::one("config.json");
            crate::hub::cache_status(&cache, repo, revision, &[config])
                .present
                .first()
                .is_some_and(|(_, p)| is_blip_config(p))
        }
        _ => false,
    }
}

/// transformers' `clean_up_tokenization`.
fn clean_up_tokenization(text: &str) -> String {
    text.replace(" .", ".")
        .replace(" ?", "?")
        .replace(" !", "!")
        .replace(" ,", ",")
        .replace(" ' ", "'")
        .replace(" n't", "n't")
        .replace(" 'm", "'m")
        .replace(" 's", "'s")
        .replace(" 've", "'ve")
        .replace(" 're", "'re")
}

impl BlipCaptioner {
    /// Opens and loads a BLIP captioner given by `option` (`--captioner`) as `reference`.
    pub fn load_reference(
        reference: &str,
        option: &str,
        decoding: BlipDecoding,
        locator: &Locator,
        device: &Device,
    ) -> anyhow::Result<Self> {
        let model = locator.open(&ModelRef::parse_option(reference, option)?)?;
        Self::load(&model, decoding, device)
    }

    /// Loads the model, its tokenizer and image processor.
    pub fn load(model: &Model, decoding: BlipDecoding, device: &Device) -> anyhow::Result<Self> {
        let blip = Blip::load(model, device)?;
        let processor_path = model.file(PREPROCESSOR)?;
        let processor = std::fs::read_to_string(&processor_path)
            .map_err(|e| input_err!("cannot read {}: {e}", processor_path.display()))
            .and_then(|t| {
                ImageProcessor::from_json(&t)
                    .map_err(|e| input_err!("{}: {e:#}", processor_path.display()))
            })?;
        if let Some((h, w)) = processor.size {
            let s = blip.image_size();
            if (h, w) != (s, s) {
                return Err(input_err!(
                    "{}: `size` {h}x{w} differs from the model's {s}x{s} input",
                    processor_path.display()
                ));
            }
        }
        let tokenizer_path = model.file(TOKENIZER)?;
        let tokenizer = tokenizers::Tokenizer::from_file(&tokenizer_path)
            .map_err(|e| input_err!("{} is not a tokenizer.json: {e}", tokenizer_path.display()))?;
        let cleanup = if model.has_local_file(TOKENIZER_CONFIG) {
            let p = model.file(TOKENIZER_CONFIG)?;
            let v: serde_json::Value = std::fs::read_to_string(&p)
                .ok()
                .and_then(|t| serde_json::from_str(&t).ok())
                .ok_or_else(|| input_err!("{} is not valid JSON", p.display()))?;
            v.get("clean_up_tokenization_spaces")
                .and_then(|c| c.as_bool())
                .unwrap_or(false)
        } else {
            false
        };
        let text = &blip.config().text_config;
        // transformers: the processor's ids ([CLS] prompt [SEP]), the first set to bos, the
        // last dropped; without a prompt [bos, eos] -> [bos], which an empty prompt also gives.
        let prompt = decoding.prompt.as_deref().unwrap_or("");
        let mut prompt_ids = tokenizer
            .encode(prompt, true)
            .map_err(|e| input_err!("cannot tokenise the prompt {prompt:?}: {e}"))?
            .get_ids()
            .to_vec();
        if prompt_ids.len() < 2 {
            prompt_ids = vec![text.bos_token_id, text.sep_token_id];
        }
        prompt_ids[0] = text.bos_token_id;
        prompt_ids.pop();
        if decoding.max_length <= prompt_ids.len() {
            return Err(input_err!(
                "--max-length {} leaves no room for a caption after the prompt's {} tokens \
                 ([DEC] and the prompt)",
                decoding.max_length,
                prompt_ids.len()
            ));
        }
        if decoding.max_length > text.max_position_embeddings {
            return Err(input_err!(
                "--max-length {} exceeds the decoder's {} positions",
                decoding.max_length,
                text.max_position_embeddings
            ));
        }
        let record = model.record();
        let files = model.fingerprint()?;
        let max_length = decoding.max_length.to_string();
        let fingerprint = crate::fingerprint::combine([
            ("files", files.as_str()),
            ("prompt", prompt),
            ("max_length", max_length.as_str()),
        ]);
        Ok(Self {
            model: blip,
            processor,
            tokenizer,
            cleanup,
            decoding,
            prompt_ids,
            reference: model.reference().spec.clone(),
            record,
            fingerprint,
        })
    }

    /// The decoder's first ids: bos, then the prompt's tokens.
    pub fn prompt_ids(&self) -> &[u32] {
        &self.prompt_ids
    }

    /// Beam widths BLIP can run: 1 (greedy) up to half the vocabulary, within memory.
    pub fn check_beam(&self, beam: usize) -> Result<(), InputError> {
        let v = self.model.vocab_size();
        crate::resources::check_beam(beam, v)?;
        if 2 * beam > v {
            return Err(InputError::new(format!(
                "--beam {beam} is too wide for BLIP's vocabulary of {v} tokens (at most {})",
                v / 2
            )));
        }
        Ok(())
    }

    /// transformers' `generate` arguments for `beam`.
    pub fn generation(&self, beam: usize) -> Generation {
        Generation {
            prompt: self.prompt_ids.clone(),
            max_length: self.decoding.max_length,
            num_beams: beam.max(1),
        }
    }

    /// The processor's pixels [B, 3, S, S] of RGB images.
    pub fn pixels(&self, images: &[image::RgbImage], device: &Device) -> anyhow::Result<Tensor> {
        self.processor.batch(images, device)
    }

    /// Generated ids per image (the prompt's first; through [SEP] when the caption ended).
    pub fn generate_ids(
        &self,
        images: &[image::RgbImage],
        beam: usize,
        device: &Device,
    ) -> anyhow::Result<Vec<Vec<u32>>> {
        if images.is_empty() {
            return Ok(Vec::new());
        }
        let embeds = self
            .model
            .vision(&self.pixels(images, device)?)?
            .last_hidden_state;
        Ok(generate(&self.model, &embeds, &self.generation(beam))?)
    }

    /// `processor.decode(ids, skip_special_tokens=True)`.
    pub fn decode(&self, ids: &[u32]) -> anyhow::Result<String> {
        let text = self
            .tokenizer
            .decode(ids, true)
            .map_err(|e| anyhow::anyhow!("BLIP: cannot decode {ids:?}: {e}"))?;
        Ok(if self.cleanup {
            clean_up_tokenization(&text)
        } else {
            text
        })
    }

    /// One caption per RGB image, greedy (beam 1) or by beam search, in batches of 8.
    pub fn caption_rgb(
        &self,
        images: &[image::RgbImage],
        beam: usize,
        device: &Device,
    ) -> anyhow::Result<Vec<String>> {
        let mut out = Vec::with_capacity(images.len());
        for chunk in images.chunks(8) {
            for ids in self.generate_ids(chunk, beam, device)? {
                out.push(self.decode(&ids)?);
            }
        }
        Ok(out)
    }

    /// One caption per image file.
    pub fn caption_images(
        &self,
        images: &[PathBuf],
        beam: usize,
        device: &Device,
    ) -> anyhow::Result<Vec<String>> {
        crate::imageops::map_image_batches(images, |_, imgs| self.caption_rgb(imgs, beam, device))
    }

    /// The vision embedding of each image: the image tower's pooled output [B, D] (the class
    /// token, `post_layernorm` applied twice, as transformers' `BlipVisionModel.pooler_output`).
    pub fn image_features(
        &self,
        images: &[image::RgbImage],
        device: &Device,
    ) -> anyhow::Result<Tensor> {
        Ok(self
            .model
            .vision(&self.pixels(images, device)?)?
            .pooler_output)
    }

    /// What outputs record about it: the model, the decoding settings, the fingerprint.
    pub fn describe(&self) -> serde_json::Value {
        serde_json::json!({
            "kind": "blip",
            "reference": self.reference,
            "model": self.record,
            "prompt": self.decoding.prompt,
            "max_length": self.decoding.max_length,
            "fingerprint": self.fingerprint,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cleanup_is_transformers() {
        assert_eq!(
            clean_up_tokenization("a dog ' s ball . is n't it ?"),
            "a dog's ball. isn't it?"
        );
    }
}
