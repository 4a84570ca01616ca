//! `roundtrip train --encoder vgg16|xception --dataset DIR --out MODEL_DIR`

use std::io::Write;
use std::path::PathBuf;

use crate::captioner::encoder::EncoderKind;
use crate::captioner::features::default_cache_dir;
use crate::captioner::model::TrainSettings;
use crate::captioner::train::{train, TrainRequest};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Image encoder: vgg16 (fc2, 4096-d, 224 px) or xception (average pool, 2048-d, 299 px).
    #[arg(long)]
    encoder: EncoderKind,
    /// Encoder weights: preset, hub id `org/name[@rev]` or folder (default: the encoder's preset).
    #[arg(long)]
    weights: Option<String>,
    /// Dataset folder in a Flickr8k layout (original, Kaggle or Karpathy).
    #[arg(long)]
    dataset: PathBuf,
    /// Output captioner folder.
    #[arg(long)]
    out: PathBuf,
    #[arg(long, default_value_t = TrainSettings::default().epochs)]
    epochs: usize,
    #[arg(long, default_value_t = TrainSettings::default().batch_size)]
    batch_size: usize,
    #[arg(long, default_value_t = TrainSettings::default().lr)]
    lr: f64,
    /// Epochs without a better dev loss before stopping early.
    #[arg(long, default_value_t = TrainSettings::default().patience)]
    patience: usize,
    #[arg(long, default_value_t = TrainSettings::default().embed)]
    embed: usize,
    #[arg(long, default_value_t = TrainSettings::default().hidden)]
    hidden: usize,
    #[arg(long, default_value_t = TrainSettings::default().dropout)]
    dropout: f64,
    #[arg(long, default_value_t = TrainSettings::default().seed)]
    seed: u64,
    /// Continue an interrupted training from its last finished epoch.
    #[arg(long)]
    resume: bool,
    /// Feature cache folder (default: $ROUNDTRIP_CACHE, else $XDG_CACHE_HOME/roundtrip, else ~/.cache/roundtrip).
    #[arg(long)]
    cache: Option<PathBuf>,
    #[arg(long)]
    quiet: bool,
}

pub fn run(a: Args, out: &mut dyn Write) -> anyhow::Result<()> {
    let req = TrainRequest {
        encoder: a.encoder,
        weights: a
            .weights
            .unwrap_or_else(|| a.encoder.default_weights().to_owned()),
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
        },
        resume: a.resume,
        cache_dir: a.cache.unwrap_or_else(default_cache_dir),
        quiet: a.quiet,
        device: candle_core::Device::Cpu,
    };
    let s = train(&req)?;
    writeln!(
        out,
        "{}\tepochs {}\tbest dev loss {:.4}\tfeatures computed {} cached {}\tdataset problems {}",
        req.out.display(),
        s.epochs_run,
        s.best_dev_loss,
        s.features.computed,
        s.features.cached,
        s.problems
    )?;
    Ok(())
}
