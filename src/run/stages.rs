//! The round trip's stages after generation behind small types, so that a captioner can be
//! swapped without touching the orchestration: captioning ([`ImageCaptioner`]) and the scores
//! (BLEU, and CLIP as the [`Judge`]). Generators are [`crate::generate::Generator`]s.

use candle_core::{Device, Tensor};

use crate::captioner::blip::BlipCaptioner;
use crate::captioner::model::Captioner;
use crate::generate::clip::text_embedding;
use crate::metrics::clip_score::{clip_score_matrix, cosine_with};
use crate::models::clip::{preprocess_image, Clip};

/// Captions RGB images.
/// `Sync`: `run` captions several images at once with one captioner.
pub trait ImageCaptioner: Sync {
    fn caption(&self, images: &[image::RgbImage]) -> anyhow::Result<Vec<String>>;
}

/// A trained captioner (CNN encoder, LSTM decoder) decoding greedily (beam 1) or with a beam.
pub struct LstmCaptioner {
    pub captioner: Captioner,
    pub beam: usize,
    pub device: Device,
}

impl ImageCaptioner for LstmCaptioner {
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

/// A pretrained BLIP captioner decoding greedily (beam 1) or with a beam, as transformers'
/// `generate` with the captioner's prompt and max_length.
pub struct BlipRunCaptioner {
    pub captioner: BlipCaptioner,
    pub beam: usize,
    pub device: Device,
}

impl ImageCaptioner for BlipRunCaptioner {
    fn caption(&self, images: &[image::RgbImage]) -> anyhow::Result<Vec<String>> {
        self.captioner.caption_rgb(images, self.beam, &self.device)
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
