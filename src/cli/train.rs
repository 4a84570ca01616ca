//! `roundtrip train --encoder vgg16|xception --dataset DIR --out MODEL_DIR [--train-encoder]`

use std::io::Write;
use std::path::PathBuf;

use serde_json::json;

use crate::captioner::augment::Augmentation;
use crate::captioner::encoder::EncoderKind;
use crate::captioner::feature_cache::default_cache_dir;
use crate::captioner::model::{TrainSettings, TRAINED_ENCODER_DIR};
use crate::captioner::train::{train, TrainRequest};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    device: super::DeviceArg,
    /// Image encoder: vgg16 (fc2, 4096-d, 224 px) or xception (average pool, 2048-d, 299 px).
    #[arg(long)]
    encoder: EncoderKind,
    /// Frozen encoder weights: preset, hub id `org/name[@rev]` or folder; not with
    /// --train-encoder [default: the encoder's preset, vgg16 or xception].
    #[arg(long)]
    weights: Option<String>,
    /// Train the encoder from scratch end to end with the decoder (saved in MODEL_DIR/encoder);
    /// --batch-size then counts images, each with all its captions.
    #[arg(long)]
    train_encoder: bool,
    /// With --train-encoder: the encoder geometry, `shapes` (reduced widths, 64 px), `tiny`,
    /// `full`, a JSON file (the geometry, or a config.json holding it under `roundtrip`) or an
    /// encoder folder [default: shapes].
    #[arg(long, requires = "train_encoder")]
    encoder_config: Option<String>,
    /// With --train-encoder: use this many captions of each image per epoch, drawn at random
    /// (fewer make each step's decoder cheaper) [default: all of them].
    #[arg(long, requires = "train_encoder")]
    captions_per_image: Option<usize>,
    /// Train on each image's first caption only (a dataset whose first caption is a complete,
    /// canonical description, such as the shapes world's), so that the captioner learns one style.
    #[arg(long)]
    first_caption_only: bool,
    /// With --train-encoder: no image augmentation [default: light shifts, zoom, brightness and
    /// contrast].
    #[arg(long, requires = "train_encoder")]
    no_augment: bool,
    /// Dataset folder in a Flickr8k layout (original, Kaggle or Karpathy).
    #[arg(long)]
    dataset: PathBuf,
    /// Output captioner folder.
    #[arg(long)]
    out: PathBuf,
    /// Most passes over the training images (early stopping may end sooner).
    #[arg(long, default_value_t = TrainSettings::default().epochs)]
    epochs: usize,
    /// (image, caption) pairs per step (with --train-encoder: images, each with its captions).
    #[arg(long, default_value_t = TrainSettings::default().batch_size)]
    batch_size: usize,
    /// Adam learning rate.
    #[arg(long, default_value_t = TrainSettings::default().lr)]
    lr: f64,
    /// Epochs without a better dev loss before stopping early.
    #[arg(long, default_value_t = TrainSettings::default().patience)]
    patience: usize,
    /// Size of the decoder's word embeddings.
    #[arg(long, default_value_t = TrainSettings::default().embed)]
    embed: usize,
    /// Hidden size of the decoder's LSTM.
    #[arg(long, default_value_t = TrainSettings::default().hidden)]
    hidden: usize,
    /// Dropout probability in the decoder, in [0, 1).
    #[arg(long, default_value_t = TrainSettings::default().dropout)]
    dropout: f64,
    /// Seed of the initial weights, the batch order and the dropout (and augmentation) draws.
    #[arg(long, default_value_t = TrainSettings::default().seed)]
    seed: u64,
    /// Continue an interrupted training from its last finished epoch (a folder whose training
    /// stopped before its first checkpoint starts over, with or without this flag).
    #[arg(long)]
    resume: bool,
    /// Encoder feature cache folder [default: $ROUNDTRIP_CACHE, else $XDG_CACHE_HOME/roundtrip,
    /// else ~/.cache/roundtrip].
    #[arg(long)]
    cache: Option<PathBuf>,
    /// No progress bars or log lines on stderr.
    #[arg(long)]
    quiet: bool,
    #[command(flatten)]
    json: super::JsonArg,
}

pub fn execute(a: Args, out: &mut dyn Write) -> anyhow::Result<()> {
    let augmentation = (a.train_encoder && !a.no_augment).then(Augmentation::light);
    let req = TrainRequest {
        encoder: a.encoder,
        weights: a.weights,
        encoder_config: a.encoder_config,
        dataset: a.dataset,
        out: a.out,
        settings: TrainSettings {
            epochs: a.epochs,
            batch_size: a.batch_size,
            lr: a.lr,
            patience: a.patience,
            embed: a.embed,
            hidden: a.hidden,
            dropout: a.dropout,
            seed: a.seed,
            train_encoder: a.train_encoder,
            captions_per_image: a.captions_per_image,
            augmentation,
            first_caption_only: a.first_caption_only,
        },
        resume: a.resume,
        cache_dir: a.cache.unwrap_or_else(default_cache_dir),
        quiet: a.quiet,
        device: a.device.open()?,
    };
    let s = train(&req)?;
    let trained = s
        .features
        .is_none()
        .then(|| req.out.join(TRAINED_ENCODER_DIR).display().to_string());
    a.json.print(
        out,
        &[
            ("model", json!(req.out.display().to_string())),
            ("epochs", json!(s.epochs_run)),
            ("best_dev_loss", json!(f64::from(s.best_dev_loss))),
            ("features_computed", json!(s.features.map(|f| f.computed))),
            ("features_cached", json!(s.features.map(|f| f.cached))),
            ("encoder_trained", json!(trained)),
            ("dataset_problems", json!(s.problems)),
        ],
    )
}
