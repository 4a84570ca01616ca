//! Command-line interface: the only module that knows about clap. Each subcommand's wiring
//! lives in its own file and calls plain library functions.

use std::io::Write;

use clap::{Parser, Subcommand};

mod bleu;
mod caption;
mod compare;
mod eval;
mod eval_clip;
mod eval_gan;
mod features;
mod generate;
mod merge;
mod models;
mod presets;
mod prompts;
mod report;
mod run;
mod score;
mod shapes;
mod train;
mod train_clip;
mod train_gan;

#[derive(Debug, Parser)]
#[command(
    name = "roundtrip",
    version,
    about = "Text -> image -> text round-trip experiments",
    after_help = FOOTER
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// `roundtrip --help`'s footer: what the README says about exit codes and the environment.
const FOOTER: &str = "\
Exit codes:
  0  success (also when stdout is closed early, e.g. `roundtrip ... | head`)
  1  any other failure
  2  a usage or input error, named in the message: a bad option, file, line or value, a model
     that cannot be found or fetched, settings beyond the machine's memory, or a run folder that
     another process is writing
Results go to stdout; logs, progress bars and the error (its whole chain, on one line) to stderr.

Environment:
  HF_HUB_CACHE              hub cache folder [default: $HF_HOME/hub, else ~/.cache/huggingface/hub]
  HF_HOME                   the hub's home folder (the cache is its hub/)
  HF_ENDPOINT               hub address [default: https://huggingface.co]
  HF_TOKEN                  hub access token
  HF_HUB_OFFLINE=1          read models from the hub cache only, never the network
  ROUNDTRIP_CACHE           cache folder of encoder features (train, eval), file digests and the
                            copies of the embedded shapes models (embedded/)
                            [default: $XDG_CACHE_HOME/roundtrip, else ~/.cache/roundtrip]
  ROUNDTRIP_HEARTBEAT_SECS  seconds between two progress lines when stderr is not a terminal
                            (a log: Slurm, CI, a pipe) [default: 30; 0: a line at every step]
  ROUNDTRIP_MEMORY_LIMIT    bytes of memory that settings are checked against [default: the
                            machine's RAM or its cgroup limit, whichever is smaller]
  RAYON_NUM_THREADS         CPU threads of the models' kernels [default: one per core]";

#[derive(Debug, Subcommand)]
enum Command {
    /// Corpus BLEU-1..4 of line-aligned hypotheses against reference streams (nltk semantics).
    Bleu(bleu::Args),
    /// Caption metrics of line-aligned hypotheses against reference streams: nltk's BLEU-1..4,
    /// and pycocoevalcap's BLEU-1..4, CIDEr-D and ROUGE-L.
    Score(score::Args),
    /// The round trip for every phrase of a prompts file: generate, caption, score, report.
    Run(run::Args),
    /// Put the shard folders of one run back together into one run folder and report.
    Merge(merge::Args),
    /// Write a run folder's report (report.json, .csv, .html, .md) again from its records.
    Report(report::Args),
    /// Runs side by side: the settings that differ, corpus figures per generator and captioner.
    Compare(compare::Args),
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
    /// Download the hub models a preset needs, list what the caches hold, resolve model references.
    #[command(subcommand)]
    Models(models::Command),
    /// The values each `run --preset` and `generate --preset` fill in: models, SIREN and BigGAN
    /// settings.
    Presets(presets::Args),
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

/// BLIP's decoding settings, shared by `caption` and `eval`.
#[derive(Debug, clap::Args)]
struct BlipArgs {
    /// BLIP only: a text the caption continues (conditional captioning, as the model card's "a
    /// picture of"; the caption then starts with it) [default: none: unconditional captioning].
    #[arg(long, value_name = "TEXT")]
    prompt: Option<String>,
    /// BLIP only: most tokens per caption, [DEC] and the prompt's included (transformers'
    /// `max_length`) [default: 20, transformers' default].
    #[arg(long, value_name = "N")]
    max_length: Option<usize>,
}

impl BlipArgs {
    /// The settings, when any was given.
    fn decoding(&self) -> Option<crate::captioner::blip::BlipDecoding> {
        if self.prompt.is_none() && self.max_length.is_none() {
            return None;
        }
        Some(crate::captioner::blip::BlipDecoding {
            prompt: self.prompt.clone(),
            max_length: self
                .max_length
                .unwrap_or(crate::captioner::blip::DEFAULT_MAX_LENGTH),
        })
    }
}

/// `--json`, shared by the commands that print a result line.
#[derive(Debug, clap::Args)]
struct JsonArg {
    /// Print the result as one JSON object instead of the tab-separated line (same key names:
    /// the line's words in snake_case).
    #[arg(long)]
    json: bool,
}

impl JsonArg {
    /// Prints a result: one JSON object of `fields`, or the line `value<TAB>key value<TAB>...`,
    /// the first field's value alone (the main file), then each other field as its key with
    /// spaces for `_`; nulls are left out of the line.
    fn print(
        &self,
        out: &mut dyn Write,
        fields: &[(&str, serde_json::Value)],
    ) -> anyhow::Result<()> {
        if self.json {
            let map: serde_json::Map<String, serde_json::Value> = fields
                .iter()
                .map(|(k, v)| ((*k).to_owned(), v.clone()))
                .collect();
            serde_json::to_writer(&mut *out, &map)?;
            writeln!(out)?;
            return Ok(());
        }
        let mut cells = Vec::with_capacity(fields.len());
        for (i, (k, v)) in fields.iter().enumerate() {
            let text = match v {
                serde_json::Value::Null => continue,
                serde_json::Value::String(s) => s.clone(),
                serde_json::Value::Number(n) if n.is_f64() => {
                    format!("{:.4}", n.as_f64().unwrap_or(f64::NAN))
                }
                other => other.to_string(),
            };
            cells.push(if i == 0 {
                text
            } else {
                format!("{} {text}", k.replace('_', " "))
            });
        }
        writeln!(out, "{}", cells.join("\t"))?;
        Ok(())
    }
}

/// Executes a parsed command line, writing results to `out`.
pub fn execute(cli: Cli, out: &mut dyn Write) -> anyhow::Result<()> {
    // A bad heartbeat setting is reported before anything runs (not minutes into a training).
    crate::stderr::heartbeat_interval()?;
    match cli.command {
        Command::Bleu(a) => bleu::execute(a, out),
        Command::Score(a) => score::execute(a, out),
        Command::Run(a) => run::execute(a, out),
        Command::Merge(a) => merge::execute(a, out),
        Command::Report(a) => report::execute(a, out),
        Command::Compare(a) => compare::execute(a, out),
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
        Command::Presets(a) => presets::execute(a, out),
    }?;
    out.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::{Arg, ArgAction, CommandFactory};

    use super::*;

    /// Calls `f` with every command of the CLI (built, so with clap's own arguments) and its
    /// path, `roundtrip` first; clap's `help` subcommands are left out.
    fn each_command(f: &mut dyn FnMut(&str, &clap::Command)) {
        fn walk(path: &str, cmd: &clap::Command, f: &mut dyn FnMut(&str, &clap::Command)) {
            f(path, cmd);
            for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
                walk(&format!("{path} {}", sub.get_name()), sub, f);
            }
        }
        let mut cli = Cli::command();
        cli.build();
        walk("roundtrip", &cli, f);
    }

    /// `--help` and `--version`, which clap adds and describes.
    fn is_clap_own(a: &Arg) -> bool {
        matches!(
            a.get_action(),
            ArgAction::Help | ArgAction::HelpShort | ArgAction::HelpLong | ArgAction::Version
        )
    }

    /// The whole help text of an argument (its doc comment's every paragraph).
    fn help_of(a: &Arg) -> String {
        a.get_long_help()
            .or(a.get_help())
            .map(ToString::to_string)
            .unwrap_or_default()
    }

    fn name_of(a: &Arg) -> String {
        match a.get_long() {
            Some(l) => format!("--{l}"),
            None => format!("<{}>", a.get_id()),
        }
    }

    #[test]
    fn every_command_and_option_is_described() {
        let mut undescribed = Vec::new();
        each_command(&mut |path, cmd| {
            if cmd
                .get_about()
                .is_none_or(|a| a.to_string().trim().is_empty())
            {
                undescribed.push(path.to_owned());
            }
            for a in cmd.get_arguments().filter(|a| !is_clap_own(a)) {
                if help_of(a).trim().is_empty() {
                    undescribed.push(format!("{path} {}", name_of(a)));
                }
            }
        });
        assert!(
            undescribed.is_empty(),
            "commands and options without a description: {undescribed:?}"
        );
    }

    /// An option that takes a value and may be left out shows what it is then: clap's
    /// `[default: X]` or, where the default is not one value, a `[default: ...]` in its text.
    #[test]
    fn every_optional_value_states_its_default() {
        let mut silent = Vec::new();
        each_command(&mut |path, cmd| {
            for a in cmd.get_arguments().filter(|a| {
                !is_clap_own(a)
                    && !a.is_positional()
                    && !a.is_required_set()
                    && matches!(a.get_action(), ArgAction::Set)
                    && a.get_default_values().is_empty()
            }) {
                if !help_of(a).contains("[default: ") {
                    silent.push(format!("{path} {}", name_of(a)));
                }
            }
        });
        assert!(
            silent.is_empty(),
            "options whose help does not say what they default to: {silent:?}"
        );
    }

    #[test]
    fn top_level_help_lists_exit_codes_and_environment() {
        let help = Cli::command().render_long_help().to_string();
        for code in [
            "  0  success",
            "  1  any other failure",
            "  2  a usage or input error",
        ] {
            assert!(help.contains(code), "{code}");
        }
        for var in [
            "HF_HUB_CACHE",
            "HF_HOME",
            "HF_ENDPOINT",
            "HF_TOKEN",
            "HF_HUB_OFFLINE",
            "ROUNDTRIP_CACHE",
            "ROUNDTRIP_HEARTBEAT_SECS",
            "ROUNDTRIP_MEMORY_LIMIT",
            "RAYON_NUM_THREADS",
        ] {
            assert!(help.contains(&format!("\n  {var}")), "{var}");
        }
        // The variables the code itself reads are all listed.
        for (file, source) in [
            ("hub.rs", include_str!("../hub.rs")),
            ("resources.rs", include_str!("../resources.rs")),
            (
                "captioner/feature_cache.rs",
                include_str!("../captioner/feature_cache.rs"),
            ),
        ] {
            for read in source
                .split("env_nonempty(\"")
                .chain(source.split("env::var"))
                .skip(1)
            {
                let var: String = read
                    .trim_start_matches(['(', '_', 'o', 's', '"'])
                    .chars()
                    .take_while(|c| c.is_ascii_uppercase() || *c == '_')
                    .collect();
                if var.len() > 1 && var != "HOME" {
                    assert!(help.contains(&var), "{file} reads {var}, not in the help");
                }
            }
        }
    }

    #[test]
    fn run_help_groups_every_option_under_a_heading_with_examples() {
        let mut cli = Cli::command();
        cli.build();
        let run = cli.find_subcommand_mut("run").expect("run subcommand");
        let headings = [
            "Inputs",
            "Generation",
            "Generation: SIREN only",
            "Generation: BigGAN only",
            "Captioning",
            "Output",
            "Scale-out",
        ];
        for a in run.get_arguments().filter(|a| !is_clap_own(a)) {
            let h = a.get_help_heading();
            assert!(
                h.is_some_and(|h| headings.contains(&h)),
                "run {}: heading {h:?}",
                name_of(a)
            );
        }
        let help = run.render_long_help().to_string();
        let mut at = 0;
        for h in headings {
            let found = help[at..]
                .find(&format!("\n{h}:\n"))
                .unwrap_or_else(|| panic!("heading {h} missing or out of order"));
            at += found + 1;
        }
        assert_eq!(help.matches("\n  roundtrip run ").count(), 3, "{help}");
        assert!(help.contains("`roundtrip presets`"));
    }
}
