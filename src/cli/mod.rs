//! Command-line interface: the only module that knows about clap. Each subcommand's wiring
//! lives in its own file and calls plain library functions.

use std::io::Write;

use clap::{Parser, Subcommand};

mod bleu;
mod caption;
mod eval;
mod eval_clip;
mod eval_gan;
mod features;
mod generate;
mod merge;
mod models;
mod prompts;
mod run;
mod shapes;
mod train;
mod train_clip;
mod train_gan;

#[derive(Debug, Parser)]
#[command(
    name = "roundtrip",
    version,
    about = "Text -> image -> text round-trip experiments"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Corpus BLEU-1..4 of line-aligned hypotheses against reference streams (nltk semantics).
    Bleu(bleu::Args),
    /// The round trip for every phrase of a prompts file: generate, caption, score, report.
    Run(run::Args),
    /// Put the shard folders of one run back together into one run folder and report.
    Merge(merge::Args),
    /// Draw a phrase: optimise a SIREN (or BigGAN latents) so that CLIP finds the image similar to the phrase.
    Generate(generate::Args),
    /// Raw encoder features of texts and images, and their CLIPScore matrix.
    Features(features::Args),
    /// Train a captioner (VGG16 or Xception features + LSTM decoder) on a Flickr8k-style dataset.
    Train(train::Args),
    /// Corpus BLEU-1..4 and caption diversity of a captioner on a dataset split.
    Eval(eval::Args),
    /// Caption images with a trained captioner.
    Caption(caption::Args),
    /// Train a small CLIP from scratch on a captioned dataset (Flickr8k layout).
    TrainClip(train_clip::Args),
    /// Train a class-conditional BigGAN-deep on a shapes-world dataset (hinge loss, EMA, DiffAugment).
    TrainGan(train_gan::Args),
    /// Image-to-text and text-to-image retrieval of a CLIP over a dataset split.
    EvalClip(eval_clip::Args),
    /// Class fidelity and Frechet distance of the shapes world's class-conditional BigGAN.
    EvalGan(eval_gan::Args),
    /// Work with prompts files.
    #[command(subcommand)]
    Prompts(prompts::Command),
    /// The shapes world: write a captioning dataset, or draw a phrase of its grammar.
    #[command(subcommand)]
    Shapes(shapes::Command),
    /// List model presets and resolve model references (hub or folder).
    #[command(subcommand)]
    Models(models::Command),
}

/// `--device`, shared by every command that runs a model.
#[derive(Debug, clap::Args)]
struct DeviceArg {
    /// Where the models run: cpu, cuda, metal (GPU builds: `--features cuda` or `metal`), or
    /// auto: the GPU when this build has one and finds it, else the CPU.
    #[arg(long = "device", value_name = "DEVICE", default_value = "auto")]
    choice: crate::device::DeviceChoice,
}

impl DeviceArg {
    fn open(&self) -> anyhow::Result<candle_core::Device> {
        crate::device::open(self.choice)
    }
}

/// Executes a parsed command line, writing results to `out`.
pub fn execute(cli: Cli, out: &mut dyn Write) -> anyhow::Result<()> {
    match cli.command {
        Command::Bleu(a) => bleu::execute(a, out),
        Command::Run(a) => run::execute(a, out),
        Command::Merge(a) => merge::execute(a, out),
        Command::Generate(a) => generate::execute(a, out),
        Command::Features(a) => features::execute(a, out),
        Command::Train(a) => train::execute(a, out),
        Command::Eval(a) => eval::execute(a, out),
        Command::Caption(a) => caption::execute(a, out),
        Command::TrainClip(a) => train_clip::execute(a, out),
        Command::TrainGan(a) => train_gan::execute(a, out),
        Command::EvalClip(a) => eval_clip::execute(a, out),
        Command::EvalGan(a) => eval_gan::execute(a, out),
        Command::Prompts(c) => prompts::execute(c, out),
        Command::Shapes(c) => shapes::execute(c, out),
        Command::Models(c) => models::execute(c, out),
    }?;
    out.flush()?;
    Ok(())
}
