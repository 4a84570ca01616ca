//! `roundtrip generate PHRASE --out DIR`

use std::io::Write;
use std::path::PathBuf;

use crate::generate::job::{generate, GenerateRequest};
use crate::generate::siren::Settings;

#[derive(Debug, clap::Args)]
#[command(args_override_self = true)]
pub struct Args {
    /// The phrase to draw.
    phrase: String,
    /// Output folder: DIR/<slug>.png, DIR/<slug>.json and progress frames in DIR/<slug>/.
    #[arg(long)]
    out: PathBuf,
    /// CLIP model: preset name, hub id `org/name[@rev]`, or a folder in the hub's layout.
    #[arg(long, default_value = "clip-vit-b32")]
    clip: String,
    #[command(flatten)]
    siren: SirenArgs,
    /// Seed of every random draw; without it one is drawn and recorded.
    #[arg(long)]
    seed: Option<u64>,
    /// Write a progress frame every N steps (0: none; deep-daze: 100).
    #[arg(long, default_value_t = 50)]
    save_every: usize,
    /// Overwrite existing outputs.
    #[arg(long)]
    force: bool,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

/// SIREN generator settings, shared by `generate` and `run`.
#[derive(Debug, clap::Args)]
pub struct SirenArgs {
    /// Optimiser steps (deep-daze: 21,000).
    #[arg(long, default_value_t = Settings::default().steps)]
    steps: usize,
    /// Image side in pixels (deep-daze: 512).
    #[arg(long, default_value_t = Settings::default().size)]
    size: usize,
    /// SIREN sine layers (deep-daze: 16).
    #[arg(long, default_value_t = Settings::default().layers)]
    layers: usize,
    /// SIREN width (deep-daze: 256).
    #[arg(long, default_value_t = Settings::default().hidden)]
    hidden: usize,
    /// SIREN frequency w0 (deep-daze: 30).
    #[arg(long, default_value_t = Settings::default().w0)]
    w0: f64,
    /// Cutouts per pass (deep-daze: 4).
    #[arg(long, default_value_t = Settings::default().cutouts)]
    cutouts: usize,
    /// Smallest cutout side, as a fraction of the image side (deep-daze: 0.1).
    #[arg(long, default_value_t = Settings::default().lower)]
    lower: f64,
    /// Largest cutout side, as a fraction of the image side (deep-daze: 1.0).
    #[arg(long, default_value_t = Settings::default().upper)]
    upper: f64,
    /// Adam learning rate (deep-daze: 1e-5).
    #[arg(long, default_value_t = Settings::default().lr)]
    lr: f64,
    /// Passes accumulated per step (deep-daze: 4).
    #[arg(long, default_value_t = Settings::default().grad_accum)]
    grad_accum: usize,
    /// Weight of the averaged-embedding loss term (deep-daze: 0.3).
    #[arg(long, default_value_t = Settings::default().averaging_weight)]
    averaging_weight: f64,
}

impl SirenArgs {
    pub fn settings(&self) -> Settings {
        Settings {
            size: self.size,
            layers: self.layers,
            hidden: self.hidden,
            w0: self.w0,
            cutouts: self.cutouts,
            lower: self.lower,
            upper: self.upper,
            lr: self.lr,
            steps: self.steps,
            grad_accum: self.grad_accum,
            averaging_weight: self.averaging_weight,
        }
    }
}

pub fn run(a: Args, out: &mut dyn Write) -> anyhow::Result<()> {
    let settings = a.siren.settings();
    let req = GenerateRequest {
        phrase: a.phrase,
        out_dir: a.out,
        clip: a.clip,
        settings,
        seed: a.seed,
        save_every: a.save_every,
        force: a.force,
        quiet: a.quiet,
        device: candle_core::Device::Cpu,
    };
    let done = generate(&req)?;
    writeln!(
        out,
        "{}\t{}\tsimilarity {:.4}\tseed {}",
        done.image.display(),
        done.record.display(),
        done.final_similarity,
        done.seed
    )?;
    Ok(())
}
