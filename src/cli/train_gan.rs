//! `roundtrip train-gan --dataset DIR --out MODEL_DIR [...]`

use std::io::Write;
use std::path::PathBuf;

use serde_json::json;

use crate::gan::{train_gan, GanSettings, TrainGanRequest};

fn d() -> GanSettings {
    GanSettings::default()
}

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Dataset folder in a Flickr8k layout whose captions are in the shapes grammar (as
    /// `roundtrip shapes dataset` writes).
    #[arg(long)]
    dataset: PathBuf,
    /// Output model folder (config.json, model.safetensors, training.json, train_log.jsonl,
    /// checkpoint.safetensors); `roundtrip generate --biggan MODEL_DIR` reads it.
    #[arg(long)]
    out: PathBuf,
    /// Passes over the training images (one D step per batch).
    #[arg(long, default_value_t = d().epochs)]
    epochs: usize,
    /// Images per step: real and as many generated for a D step, generated for a G step.
    #[arg(long, default_value_t = d().batch_size)]
    batch_size: usize,
    /// Generator learning rate (Adam, beta1 0, beta2 0.999).
    #[arg(long, default_value_t = d().lr_g)]
    lr_g: f64,
    /// Discriminator learning rate.
    #[arg(long, default_value_t = d().lr_d)]
    lr_d: f64,
    /// Discriminator steps per generator step.
    #[arg(long, default_value_t = d().d_steps)]
    d_steps: usize,
    /// Seed of the initial weights, the batches, the noise, DiffAugment and the standing
    /// statistics.
    #[arg(long, default_value_t = d().seed)]
    seed: u64,
    /// Decay of the generator's exponential moving average (the saved generator).
    #[arg(long, default_value_t = d().ema_decay)]
    ema_decay: f64,
    /// Side of the generated images (power of two, 16 to 256).
    #[arg(long, default_value_t = d().image_size)]
    image_size: usize,
    /// Size of the noise vector z.
    #[arg(long, default_value_t = d().z_dim)]
    z_dim: usize,
    /// Generator channel_width (4 x 4 maps have 16 x this many channels).
    #[arg(long, default_value_t = d().g_ch)]
    g_ch: usize,
    /// Discriminator width after its input convolution (doubled per stage).
    #[arg(long, default_value_t = d().d_ch)]
    d_ch: usize,
    /// DBlocks per discriminator stage (BigGAN-deep: 2).
    #[arg(long, default_value_t = d().d_depth)]
    d_depth: usize,
    /// Give the discriminator two coordinate channels beside the pixels (CoordConv), so that it
    /// sees where shapes are (its head sums over positions).
    #[arg(long)]
    d_coords: bool,
    /// Truncations of the standing statistics (0, 1/(n-1), ..., 1; the published models: 51).
    #[arg(long, default_value_t = d().n_stats)]
    n_stats: usize,
    /// Samples per truncation for the standing statistics.
    #[arg(long, default_value_t = d().standing_samples)]
    standing_samples: usize,
    /// DiffAugment's operations on real and fake images before D: `none`, or a comma-separated
    /// subset of color, translation, cutout (the shapes world: translation; colour is half of
    /// its classes and the cutout can erase the only shape).
    #[arg(
        long,
        default_value = "color,translation,cutout",
        value_name = "POLICY"
    )]
    diffaug: crate::gan::diffaug::Policy,
    /// Turn DiffAugment off (the same as `--diffaug none`).
    #[arg(long, conflicts_with = "diffaug")]
    no_diffaug: bool,
    /// Continue an interrupted training from its last finished epoch.
    #[arg(long)]
    resume: bool,
    /// No progress bars or log lines on stderr.
    #[arg(long)]
    quiet: bool,
    #[command(flatten)]
    json: super::JsonArg,
}

pub fn execute(a: Args, out: &mut dyn Write) -> anyhow::Result<()> {
    let req = TrainGanRequest {
        dataset: a.dataset,
        out: a.out,
        settings: GanSettings {
            epochs: a.epochs,
            batch_size: a.batch_size,
            lr_g: a.lr_g,
            lr_d: a.lr_d,
            d_steps: a.d_steps,
            seed: a.seed,
            ema_decay: a.ema_decay,
            image_size: a.image_size,
            z_dim: a.z_dim,
            g_ch: a.g_ch,
            d_ch: a.d_ch,
            d_depth: a.d_depth,
            d_coords: a.d_coords,
            n_stats: a.n_stats,
            standing_samples: a.standing_samples,
            diffaug: if a.no_diffaug {
                crate::gan::diffaug::Policy::NONE
            } else {
                a.diffaug
            },
        },
        resume: a.resume,
        quiet: a.quiet,
        command_line: std::env::args().collect(),
    };
    let s = train_gan(&req)?;
    a.json.print(
        out,
        &[
            ("model", json!(req.out.display().to_string())),
            ("epochs", json!(s.epochs_run)),
            ("g_parameters", json!(s.g_parameters)),
            ("d_parameters", json!(s.d_parameters)),
            ("training_images", json!(s.train_images)),
            ("captions_not_parsed", json!(s.unparsed)),
            ("dev_auc", json!(s.last_dev_auc)),
            ("seconds_per_step", json!(s.seconds_per_step)),
        ],
    )
}
