//! `roundtrip train-clip --dataset DIR --out MODEL_DIR [...]`

use std::io::Write;
use std::path::PathBuf;

use serde_json::json;

use crate::clip_train::{train_clip, ClipTrainSettings, TrainClipRequest};

fn d() -> ClipTrainSettings {
    ClipTrainSettings::default()
}

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    device: super::DeviceArg,
    /// Dataset folder in a Flickr8k layout (original, Kaggle or Karpathy).
    #[arg(long)]
    dataset: PathBuf,
    /// Output model folder (config.json, tokenizer.json, model.safetensors, ...).
    #[arg(long)]
    out: PathBuf,
    /// Passes over the training images.
    #[arg(long, default_value_t = d().epochs)]
    epochs: usize,
    /// Image-caption pairs per step (the contrastive batch).
    #[arg(long, default_value_t = d().batch_size)]
    batch_size: usize,
    /// Peak learning rate (AdamW; linear warmup, cosine decay).
    #[arg(long, default_value_t = d().lr)]
    lr: f64,
    /// AdamW's decoupled weight decay, on matrices and embeddings (not on biases, LayerNorm
    /// weights, the class embedding or the logit scale).
    #[arg(long, default_value_t = d().weight_decay)]
    weight_decay: f64,
    /// Share of the steps spent warming the learning rate up.
    #[arg(long, default_value_t = d().warmup)]
    warmup: f64,
    /// Seed of the initial weights and of each epoch's order, crops, noise and blur.
    #[arg(long, default_value_t = d().seed)]
    seed: u64,
    /// Input side of the image tower in pixels.
    #[arg(long, default_value_t = d().image_size)]
    image_size: usize,
    /// Patch side in pixels (must divide --image-size).
    #[arg(long, default_value_t = d().patch)]
    patch: usize,
    /// Hidden size of both towers.
    #[arg(long, default_value_t = d().width)]
    width: usize,
    /// Transformer layers per tower.
    #[arg(long, default_value_t = d().layers)]
    layers: usize,
    /// Attention heads (must divide --width).
    #[arg(long, default_value_t = d().heads)]
    heads: usize,
    /// Size of the joint embedding (projection_dim).
    #[arg(long, default_value_t = d().embed)]
    embed: usize,
    /// Text context in tokens, start and end tokens included.
    #[arg(long, default_value_t = d().context)]
    context: usize,
    /// Smallest random crop as a share of the image's largest square (1: no crops).
    #[arg(long, default_value_t = d().crop_min)]
    crop_min: f64,
    /// Largest std of Gaussian pixel noise on a training crop, in [0, 1] pixel units (each crop
    /// draws its std uniformly up to this; 0: none). Noise and blur make the model harder to fool
    /// with high-frequency patterns, so its guidance draws more recognisable images.
    #[arg(long, default_value_t = d().noise)]
    noise: f64,
    /// Probability of blurring a training crop (3x3 binomial kernel).
    #[arg(long, default_value_t = d().blur)]
    blur: f64,
    /// Folder of images (*.png) that match no caption, for example what guidance towards an
    /// earlier CLIP drew (`run`'s images/): each step draws --negatives-per-batch of them, cropped
    /// and degraded as the training images, and every caption of the batch must rank them below
    /// its own image. Its content is recorded in training.json [default: none].
    #[arg(long)]
    negatives: Option<PathBuf>,
    /// Negatives drawn per step (with --negatives).
    #[arg(long, default_value_t = 16, requires = "negatives")]
    negatives_per_batch: usize,
    /// Continue an interrupted training from its last finished epoch (a folder whose training
    /// stopped before its first checkpoint starts over, with or without this flag).
    #[arg(long)]
    resume: bool,
    /// No progress bars or log lines on stderr.
    #[arg(long)]
    quiet: bool,
    #[command(flatten)]
    json: super::JsonArg,
}

pub fn execute(a: Args, out: &mut dyn Write) -> anyhow::Result<()> {
    let req = TrainClipRequest {
        dataset: a.dataset,
        out: a.out,
        settings: ClipTrainSettings {
            epochs: a.epochs,
            batch_size: a.batch_size,
            lr: a.lr,
            weight_decay: a.weight_decay,
            warmup: a.warmup,
            seed: a.seed,
            image_size: a.image_size,
            patch: a.patch,
            width: a.width,
            layers: a.layers,
            heads: a.heads,
            embed: a.embed,
            context: a.context,
            crop_min: a.crop_min,
            noise: a.noise,
            blur: a.blur,
            negatives: if a.negatives.is_some() {
                a.negatives_per_batch
            } else {
                0
            },
        },
        negatives: a.negatives,
        resume: a.resume,
        quiet: a.quiet,
        command_line: std::env::args().collect(),
        device: a.device.open()?,
    };
    let s = train_clip(&req)?;
    let dev = s.best_dev.as_ref();
    a.json.print(
        out,
        &[
            ("model", json!(req.out.display().to_string())),
            ("epochs", json!(s.epochs_run)),
            ("best_epoch", json!(s.best_epoch)),
            ("best_dev_loss", json!(s.best_dev_loss)),
            (
                "dev_image_to_text_top1",
                json!(dev.map(|r| r.image_to_text_top1)),
            ),
            (
                "dev_text_to_image_top1",
                json!(dev.map(|r| r.text_to_image_top1)),
            ),
            ("dev_chance", json!(dev.map(|r| r.chance))),
            ("parameters", json!(s.parameters)),
            ("vocabulary", json!(s.vocab_size)),
            ("seconds_per_step", json!(s.seconds_per_step)),
            ("dataset_problems", json!(s.problems)),
        ],
    )
}
