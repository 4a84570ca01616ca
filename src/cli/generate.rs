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

/// SIREN generator settings, shared by `generate` and `run`; each left out takes the default of
/// the command (for `run`, of its preset).
#[derive(Debug, clap::Args)]
pub struct SirenArgs {
    /// Optimiser steps (deep-daze: 21,000) [default: 200, or the run preset's].
    #[arg(long)]
    steps: Option<usize>,
    /// Image side in pixels (deep-daze: 512) [default: 128, or the run preset's].
    #[arg(long)]
    size: Option<usize>,
    /// SIREN sine layers (deep-daze: 16) [default: 8, or the run preset's].
    #[arg(long)]
    layers: Option<usize>,
    /// SIREN width (deep-daze: 256) [default: 256, or the run preset's].
    #[arg(long)]
    hidden: Option<usize>,
    /// SIREN frequency w0 (deep-daze: 30) [default: 30, or the run preset's].
    #[arg(long)]
    w0: Option<f64>,
    /// Cutouts per pass (deep-daze: 4) [default: 8, or the run preset's].
    #[arg(long)]
    cutouts: Option<usize>,
    /// Smallest cutout side, as a fraction of the image side (deep-daze: 0.1) [default: 0.1, or the run preset's].
    #[arg(long)]
    lower: Option<f64>,
    /// Largest cutout side, as a fraction of the image side (deep-daze: 1.0) [default: 1.0, or the run preset's].
    #[arg(long)]
    upper: Option<f64>,
    /// Adam learning rate (deep-daze: 1e-5) [default: 1e-4, or the run preset's].
    #[arg(long)]
    lr: Option<f64>,
    /// Passes accumulated per step (deep-daze: 4) [default: 1, or the run preset's].
    #[arg(long)]
    grad_accum: Option<usize>,
    /// Weight of the averaged-embedding loss term (deep-daze: 0.3) [default: 0.3, or the run preset's].
    #[arg(long)]
    averaging_weight: Option<f64>,
}

impl SirenArgs {
    /// The settings, taking what was not given from `base`.
    pub fn settings(&self, base: Settings) -> Settings {
        Settings {
            steps: self.steps.unwrap_or(base.steps),
            size: self.size.unwrap_or(base.size),
            layers: self.layers.unwrap_or(base.layers),
            hidden: self.hidden.unwrap_or(base.hidden),
            w0: self.w0.unwrap_or(base.w0),
            cutouts: self.cutouts.unwrap_or(base.cutouts),
            lower: self.lower.unwrap_or(base.lower),
            upper: self.upper.unwrap_or(base.upper),
            lr: self.lr.unwrap_or(base.lr),
            grad_accum: self.grad_accum.unwrap_or(base.grad_accum),
            averaging_weight: self.averaging_weight.unwrap_or(base.averaging_weight),
        }
    }
}

pub fn run(a: Args, out: &mut dyn Write) -> anyhow::Result<()> {
    let settings = a.siren.settings(Settings::default());
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

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    /// The defaults written in the help text are the ones `Settings::default()` uses.
    #[test]
    fn help_states_the_real_defaults() {
        let mut cli = crate::cli::Cli::command();
        let help = cli
            .find_subcommand_mut("generate")
            .expect("generate subcommand")
            .render_long_help()
            .to_string();
        let d = Settings::default();
        for (flag, value) in [
            ("steps", d.steps as f64),
            ("size", d.size as f64),
            ("layers", d.layers as f64),
            ("hidden", d.hidden as f64),
            ("w0", d.w0),
            ("cutouts", d.cutouts as f64),
            ("lower", d.lower),
            ("upper", d.upper),
            ("lr", d.lr),
            ("grad-accum", d.grad_accum as f64),
            ("averaging-weight", d.averaging_weight),
        ] {
            let at = help
                .find(&format!("--{flag} <"))
                .unwrap_or_else(|| panic!("--{flag} missing"));
            let tail = &help[at..];
            let start = tail.find("[default: ").expect("a default") + "[default: ".len();
            let shown: f64 = tail[start..]
                .split(',')
                .next()
                .and_then(|s| s.trim().parse().ok())
                .unwrap_or_else(|| panic!("--{flag}: unreadable default"));
            assert_eq!(shown, value, "--{flag}");
        }
    }
}
