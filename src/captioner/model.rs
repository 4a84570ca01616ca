//! A trained captioner folder: `config.json`, `vocab.json`, `model.safetensors` (the decoder with
//! the best dev loss), `checkpoint.safetensors` (the last epoch, for `--resume`) and
//! `train_log.jsonl`; with `--train-encoder` also `encoder/` (the encoder of the best epoch:
//! `config.json` + `model.safetensors`, loadable as any encoder folder), which config.json refers
//! to as `./encoder`.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};

use super::encoder::{load_encoder, EncoderKind, LoadedEncoder};
use super::vocab::Vocab;
use crate::hub::Locator;
use crate::input_err;
use crate::models::lstm_decoder::{Config as DecoderConfig, LstmDecoder};

pub const FORMAT: &str = "roundtrip-captioner";

/// The encoder a captioner was trained on.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EncoderSpec {
    pub kind: EncoderKind,
    /// Model reference as resolved at training time: absolute for folders of frozen encoders,
    /// `./encoder` (relative to the captioner folder, see [`resolve_encoder_reference`]) for an
    /// encoder trained with the captioner.
    pub reference: String,
    /// What the locator recorded (repository, revision, commit or folder).
    pub record: serde_json::Value,
    /// The geometry of an encoder trained with the captioner (the `roundtrip` object of its
    /// config.json); absent for a frozen published encoder.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<serde_json::Value>,
}

/// Where `train --train-encoder` saves the encoder, inside the captioner folder, and how
/// config.json refers to it.
pub const TRAINED_ENCODER_DIR: &str = "encoder";
pub const TRAINED_ENCODER_REFERENCE: &str = "./encoder";

/// A captioner's encoder reference as a model reference to open: a relative folder reference
/// (starting with `./` or `../`) is resolved against the captioner folder `dir`, so that a
/// captioner folder holding its own encoder can be moved or committed; absolute folders,
/// presets and hub ids are returned unchanged.
pub fn resolve_encoder_reference(dir: &Path, reference: &str) -> String {
    let relative = reference == "."
        || reference == ".."
        || reference.starts_with("./")
        || reference.starts_with("../");
    if relative {
        dir.join(reference).display().to_string()
    } else {
        reference.to_owned()
    }
}

/// Training settings, all recorded in `config.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TrainSettings {
    /// Most epochs (early stopping may end sooner).
    pub epochs: usize,
    pub batch_size: usize,
    pub lr: f64,
    /// Epochs without a better dev loss before stopping.
    pub patience: usize,
    pub embed: usize,
    pub hidden: usize,
    pub dropout: f64,
    pub seed: u64,
    /// Whether the encoder was trained end to end with the decoder (`--train-encoder`); then
    /// `batch_size` counts images, each with all its captions.
    #[serde(default)]
    pub train_encoder: bool,
    /// With `train_encoder`: how many captions of each image a batch uses, drawn at random per
    /// image and epoch (absent: all of them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub captions_per_image: Option<usize>,
    /// The image augmentation of end-to-end training (absent: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub augmentation: Option<super::augment::Augmentation>,
    /// Train (and early-stop) on each image's first caption only: for datasets whose first
    /// caption is a complete canonical description (the shapes world), so that the captioner
    /// learns one consistent style instead of the mode of several paraphrases.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub first_caption_only: bool,
}

impl Default for TrainSettings {
    /// The original merge model: 256-wide embedding and LSTM, dropout 0.5, Adam 1e-3 (Keras' default).
    fn default() -> Self {
        Self {
            epochs: 20,
            batch_size: 64,
            lr: 1e-3,
            patience: 3,
            embed: 256,
            hidden: 256,
            dropout: 0.5,
            seed: 0,
            train_encoder: false,
            captions_per_image: None,
            augmentation: None,
            first_caption_only: false,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CaptionerConfig {
    pub format: String,
    pub version: u32,
    pub architecture: String,
    pub encoder: EncoderSpec,
    pub decoder: DecoderConfig,
    pub training: TrainSettings,
    /// The dataset it was trained on: folder, layout and split sizes.
    pub dataset: serde_json::Value,
}

/// A loaded captioner, ready to caption images.
pub struct Captioner {
    /// The folder it was loaded from (an embedded captioner's copy in the cache).
    pub dir: PathBuf,
    /// Content fingerprint of config.json, vocab.json, model.safetensors and the encoder's
    /// files: captions are keyed by it, so a captioner retrained or replaced in place is never
    /// taken for the old one.
    pub fingerprint: String,
    pub config: CaptionerConfig,
    pub vocab: Vocab,
    pub decoder: LstmDecoder,
    pub encoder: LoadedEncoder,
}

/// Reads and checks `config.json` of a captioner folder.
/// `dir` may name an embedded captioner (`models/shapes/vgg16 (embedded)`, [`crate::embedded`]).
pub fn read_config(dir: &Path) -> anyhow::Result<CaptionerConfig> {
    let dir = &*crate::embedded::folder(dir)?;
    let path = dir.join("config.json");
    if !dir.is_dir() {
        return Err(input_err!(
            "captioner folder {} does not exist",
            dir.display()
        ));
    }
    let bytes = std::fs::read(&path).map_err(|e| {
        input_err!(
            "{} is not a captioner folder: cannot read config.json: {e}",
            dir.display()
        )
    })?;
    let cfg: CaptionerConfig = serde_json::from_slice(&bytes)
        .map_err(|e| input_err!("{}: not a roundtrip captioner config: {e}", path.display()))?;
    if cfg.format != FORMAT {
        return Err(input_err!(
            "{}: format is `{}`, expected `{FORMAT}`",
            path.display(),
            cfg.format
        ));
    }
    Ok(cfg)
}

impl Captioner {
    /// Loads the captioner in `dir` (a folder, or an embedded captioner's reference
    /// `models/shapes/vgg16 (embedded)`, then from its copy in the cache).
    pub fn load(dir: &Path, locator: &Locator, device: &Device) -> anyhow::Result<Self> {
        let dir = &*crate::embedded::folder(dir)?;
        let config = read_config(dir)?;
        let vocab = Vocab::load(&dir.join("vocab.json"))?;
        if vocab.len() != config.decoder.vocab_size {
            return Err(input_err!(
                "{}: vocab.json has {} words but config.json says {}",
                dir.display(),
                vocab.len(),
                config.decoder.vocab_size
            ));
        }
        let weights = dir.join("model.safetensors");
        if !weights.is_file() {
            return Err(input_err!(
                "{} has no model.safetensors: is its training finished?",
                dir.display()
            ));
        }
        let tensors = candle_core::safetensors::load(&weights, device).map_err(|e| {
            input_err!("{} is not a valid safetensors file: {e}", weights.display())
        })?;
        let decoder = LstmDecoder::new(
            VarBuilder::from_tensors(tensors, DType::F32, device),
            &config.decoder,
        )
        .map_err(|e| input_err!("{}: {e}", weights.display()))?;
        let reference = resolve_encoder_reference(dir, &config.encoder.reference);
        if reference != config.encoder.reference && !Path::new(&reference).is_dir() {
            return Err(input_err!(
                "{}: its encoder folder {reference} (config.json: `{}`) does not exist",
                dir.display(),
                config.encoder.reference
            ));
        }
        let encoder = load_encoder(config.encoder.kind, &reference, locator, device)?;
        if encoder.encoder.feature_dim() != config.decoder.feature_dim {
            return Err(input_err!(
                "{}: the encoder gives {}-d features but the decoder expects {}",
                dir.display(),
                encoder.encoder.feature_dim(),
                config.decoder.feature_dim
            ));
        }
        let own = ["config.json", "vocab.json", "model.safetensors"]
            .iter()
            .map(|f| Ok((*f, crate::fingerprint::file_sha256(&dir.join(f))?)))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let fingerprint = crate::fingerprint::combine(
            own.iter()
                .map(|(f, d)| (*f, d.as_str()))
                .chain([("encoder", encoder.fingerprint.as_str())]),
        );
        Ok(Self {
            dir: dir.to_path_buf(),
            fingerprint,
            config,
            vocab,
            decoder,
            encoder,
        })
    }

    /// Captions of features [N, F]: greedy with `beam` <= 1, else beam search.
    pub fn caption_features(&self, features: &Tensor, beam: usize) -> anyhow::Result<Vec<String>> {
        let (s, e) = (self.vocab.start(), self.vocab.end());
        let ids = if beam <= 1 {
            self.decoder.greedy(features, s, e)?
        } else {
            (0..features.dim(0)?)
                .map(|i| self.decoder.beam(&features.narrow(0, i, 1)?, s, e, beam))
                .collect::<candle_core::Result<Vec<_>>>()?
        };
        Ok(ids.iter().map(|c| self.vocab.decode(c)).collect())
    }

    /// Captions of image files (features through the cache when one is given).
    pub fn caption_images(
        &self,
        images: &[PathBuf],
        beam: usize,
        device: &Device,
    ) -> anyhow::Result<Vec<String>> {
        crate::imageops::map_image_batches(images, |_, imgs| {
            let feats = self.encoder.encoder.encode_rgb(imgs, device)?;
            self.caption_features(&feats, beam)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::resolve_encoder_reference;
    use std::path::Path;

    #[test]
    fn relative_encoder_references_resolve_against_the_captioner_folder() {
        let dir = Path::new("/models/cap");
        assert_eq!(
            resolve_encoder_reference(dir, "./encoder"),
            "/models/cap/./encoder"
        );
        assert_eq!(
            resolve_encoder_reference(dir, "../shared-enc"),
            "/models/cap/../shared-enc"
        );
        for unchanged in ["/abs/enc", "vgg16", "timm/vgg16.tv_in1k@main"] {
            assert_eq!(resolve_encoder_reference(dir, unchanged), unchanged);
        }
    }
}
