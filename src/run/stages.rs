//! The round trip's stages behind small traits, so that a generator (SIREN, BigGAN) or a
//! captioner can be swapped without touching the orchestration.

use std::path::Path;

use candle_core::{Device, Tensor};
use indicatif::ProgressBar;

use crate::captioner::model::Captioner;
use crate::generate::biggan::Settings as BigGanSettings;
use crate::generate::job::{
    generate_biggan, generate_siren, text_embedding, whole_image_similarity, BigGanJob, Generated,
};
use crate::generate::siren::Settings;
use crate::generate::ImageEncoder;
use crate::metrics::clip_score::{clip_score_matrix, cosine_with};
use crate::models::biggan::BigGan;
use crate::models::clip::{preprocess_image, Clip};

/// Draws an image of a phrase.
pub trait Generator {
    /// The name recorded with each image (`siren`, `biggan`).
    fn name(&self) -> &'static str;
    /// Optimiser steps per image (for progress bars).
    fn steps(&self) -> usize;
    /// Optimises an image towards the phrase embedding `text` [1, D] from `seed`, writing a
    /// progress frame to `frames_dir` every `save_every` steps.
    fn generate(
        &self,
        text: &Tensor,
        seed: u64,
        frames_dir: &Path,
        save_every: usize,
        progress: &ProgressBar,
    ) -> anyhow::Result<Generated>;
    /// Cosine similarity between the phrase and the whole image, as the guide sees it.
    fn similarity(&self, image: &Tensor, text: &Tensor) -> anyhow::Result<f32>;
}

/// deep-daze's SIREN guided by CLIP's image tower.
pub struct SirenGenerator<'a> {
    pub encoder: &'a dyn ImageEncoder,
    pub settings: Settings,
    pub device: Device,
}

impl Generator for SirenGenerator<'_> {
    fn name(&self) -> &'static str {
        "siren"
    }

    fn steps(&self) -> usize {
        self.settings.steps
    }

    fn generate(
        &self,
        text: &Tensor,
        seed: u64,
        frames_dir: &Path,
        save_every: usize,
        progress: &ProgressBar,
    ) -> anyhow::Result<Generated> {
        generate_siren(
            self.encoder,
            text,
            &self.settings,
            seed,
            &self.device,
            frames_dir,
            save_every,
            progress,
        )
    }

    fn similarity(&self, image: &Tensor, text: &Tensor) -> anyhow::Result<f32> {
        whole_image_similarity(self.encoder, image, text)
    }
}

/// big-sleep's BigGAN latents guided by CLIP's image tower.
pub struct BigGanGenerator<'a> {
    pub model: &'a BigGan,
    pub encoder: &'a dyn ImageEncoder,
    pub settings: BigGanSettings,
    /// Raw embeddings of the penalty phrases.
    pub avoid: Vec<Tensor>,
    pub device: Device,
}

impl Generator for BigGanGenerator<'_> {
    fn name(&self) -> &'static str {
        "biggan"
    }

    fn steps(&self) -> usize {
        self.settings.steps
    }

    fn generate(
        &self,
        text: &Tensor,
        seed: u64,
        frames_dir: &Path,
        save_every: usize,
        progress: &ProgressBar,
    ) -> anyhow::Result<Generated> {
        let job = BigGanJob {
            model: self.model,
            encoder: self.encoder,
            settings: &self.settings,
            avoid: &self.avoid,
            init: None,
            device: &self.device,
        };
        generate_biggan(job, text, seed, frames_dir, save_every, progress)
    }

    fn similarity(&self, image: &Tensor, text: &Tensor) -> anyhow::Result<f32> {
        whole_image_similarity(self.encoder, image, text)
    }
}

/// Captions RGB images.
pub trait ImageCaptioner {
    fn caption(&self, images: &[image::RgbImage]) -> anyhow::Result<Vec<String>>;
}

/// A trained captioner decoding greedily (beam 1) or with a beam.
pub struct BeamCaptioner {
    pub captioner: Captioner,
    pub beam: usize,
    pub device: Device,
}

impl ImageCaptioner for BeamCaptioner {
    fn caption(&self, images: &[image::RgbImage]) -> anyhow::Result<Vec<String>> {
        if images.is_empty() {
            return Ok(Vec::new());
        }
        let feats = self
            .captioner
            .encoder
            .encoder
            .encode_rgb(images, &self.device)?;
        self.captioner.caption_features(&feats, self.beam)
    }
}

/// CLIP as the judge: CLIPScore of images against the phrase, and text-text cosine between the
/// phrase and captions.
pub struct Judge<'a> {
    pub clip: &'a Clip,
    pub device: Device,
}

impl Judge<'_> {
    /// Raw text embeddings [N, D].
    pub fn texts(&self, texts: &[&str]) -> anyhow::Result<Tensor> {
        let ids = self.clip.tokenizer.encode_batch(texts, &self.device)?;
        Ok(self.clip.model.text_features(&ids)?)
    }

    /// The phrase embedding that guides generation [1, D].
    pub fn phrase(&self, phrase: &str) -> anyhow::Result<Tensor> {
        text_embedding(self.clip, phrase, &self.device)
    }

    /// CLIPScore (2.5 max(cos, 0)) of each image against `text` [1, D], the images prepared by
    /// CLIP's own image processor as for any photo.
    pub fn clip_scores(
        &self,
        images: &[&image::RgbImage],
        text: &Tensor,
    ) -> anyhow::Result<Vec<f32>> {
        let size = self.clip.model.config().vision.image_size;
        let pixels = images
            .iter()
            .map(|i| {
                preprocess_image(
                    &image::DynamicImage::ImageRgb8((*i).clone()),
                    size,
                    &self.device,
                )
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let feats = self
            .clip
            .model
            .image_features(&Tensor::stack(&pixels, 0)?)?;
        Ok(clip_score_matrix(&feats, text)?
            .into_iter()
            .map(|row| row[0])
            .collect())
    }

    /// Cosine similarity between `text` [1, D] and each of `others`.
    pub fn text_similarities(&self, text: &Tensor, others: &[&str]) -> anyhow::Result<Vec<f32>> {
        if others.is_empty() {
            return Ok(Vec::new());
        }
        Ok(cosine_with(text, &self.texts(others)?)?)
    }
}
