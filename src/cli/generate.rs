//! `roundtrip generate PHRASE --out DIR`

use std::io::Write;
use std::path::PathBuf;

use clap::builder::PossibleValue;

use crate::generate::biggan::Resize;
use crate::generate::command::{generate, GenerateRequest, GeneratorSettings};
use crate::generate::{biggan_config, clip_config};
use crate::generate::{BigGanSettings, GeneratorKind, SirenSettings};
use crate::hub::Locator;
use crate::input_err;
use crate::run::preset::{BigGanDefaults, Preset};

/// `--generator`: the library's generators as clap values, each with its help line.
impl clap::ValueEnum for GeneratorKind {
    fn value_variants<'a>() -> &'a [Self] {
        &Self::ALL
    }

    fn to_possible_value(&self) -> Option<PossibleValue> {
        let help = match self {
            Self::Siren => "deep-daze: a SIREN network",
            Self::BigGan => "big-sleep: BigGAN-deep latents",
        };
        Some(PossibleValue::new(self.name()).help(help))
    }
}

#[derive(Debug, clap::Args)]
#[command(args_override_self = true)]
pub struct Args {
    #[command(flatten)]
    device: super::DeviceArg,
    /// The phrase to draw.
    phrase: String,
    /// Output folder: DIR/<slug>.png, DIR/<slug>.json and progress frames in DIR/<slug>/.
    #[arg(long)]
    out: PathBuf,
    /// CLIP model: preset name, hub id `org/name[@rev]`, or a folder in the hub's layout.
    #[arg(long, default_value = "clip-vit-b32")]
    clip: String,
    /// The generator.
    #[arg(long, value_enum, default_value = "siren")]
    generator: GeneratorKind,
    #[command(flatten)]
    siren: SirenArgs,
    #[command(flatten)]
    biggan: BigGanArgs,
    /// BigGAN: start from saved latents (a `.latents.safetensors` file of an earlier run, or any
    /// safetensors file with `z` [L, 128] and `class_logits` [L, 1000]); with --steps 0 the image
    /// is exactly the generator's for them [default: random latents].
    #[arg(long)]
    init_latents: Option<PathBuf>,
    /// Seed of every random draw [default: one drawn at random, and recorded].
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

/// SIREN generator settings, shared by `generate` and `run` (some also set BigGAN's); each left
/// out takes the default of the command (for `run`, of its preset: `roundtrip presets`).
#[derive(Debug, clap::Args)]
pub struct SirenArgs {
    /// Optimiser steps (deep-daze: 21,000; big-sleep: 21,000) [default: 200, biggan: 100; `run`
    /// takes its preset's].
    #[arg(long, help_heading = GENERATION)]
    steps: Option<usize>,
    /// Image side in pixels (deep-daze: 512); with biggan it picks the model
    /// biggan-deep-128|256|512 [default: 128; `run` takes its preset's].
    #[arg(long, help_heading = GENERATION)]
    size: Option<usize>,
    /// Cutouts per pass (deep-daze: 4; big-sleep: 128, for a GPU) [default: 8; `run` takes its
    /// preset's].
    #[arg(long, help_heading = GENERATION)]
    cutouts: Option<usize>,
    /// Smallest cutout side, as a fraction of the image side (deep-daze: 0.1); with biggan, sides
    /// are then drawn uniformly between --lower and --upper (0.5 and 0.95 for the one left out)
    /// instead of big-sleep's N(0.8, 0.3) [default: 0.1, biggan: none; `run` takes its preset's].
    #[arg(long, help_heading = GENERATION)]
    lower: Option<f64>,
    /// Largest cutout side, as a fraction of the image side (deep-daze: 1.0); with biggan, as
    /// --lower [default: 1.0, biggan: none; `run` takes its preset's].
    #[arg(long, help_heading = GENERATION)]
    upper: Option<f64>,
    /// Adam learning rate (deep-daze: 1e-5; big-sleep: 0.07) [default: 1e-4, biggan: 0.07; `run`
    /// takes its preset's].
    #[arg(long, help_heading = GENERATION)]
    lr: Option<f64>,
    /// SIREN sine layers (deep-daze: 16) [default: 8; `run` takes its preset's].
    #[arg(long, help_heading = SIREN_ONLY)]
    layers: Option<usize>,
    /// SIREN width (deep-daze: 256) [default: 256; `run` takes its preset's].
    #[arg(long, help_heading = SIREN_ONLY)]
    hidden: Option<usize>,
    /// SIREN frequency w0 (deep-daze: 30) [default: 30; `run` takes its preset's].
    #[arg(long, help_heading = SIREN_ONLY)]
    w0: Option<f64>,
    /// Passes accumulated per step (deep-daze: 4) [default: 1; `run` takes its preset's].
    #[arg(long, help_heading = SIREN_ONLY)]
    grad_accum: Option<usize>,
    /// Weight of the averaged-embedding loss term (deep-daze: 0.3) [default: 0.3; `run` takes its
    /// preset's].
    #[arg(long, help_heading = SIREN_ONLY)]
    averaging_weight: Option<f64>,
    /// Weight of a total-variation penalty on the image, against high-frequency patterns that
    /// fool CLIP (deep-daze: none) [default: 0; `run` takes its preset's].
    #[arg(long, help_heading = SIREN_ONLY)]
    tv_weight: Option<f64>,
    /// Standard deviation of Gaussian noise added to each cutout before CLIP sees it (deep-daze:
    /// none) [default: 0; `run` takes its preset's].
    #[arg(long, help_heading = SIREN_ONLY)]
    cutout_noise: Option<f64>,
    /// Largest angle in degrees of a random rotation of each cutout about its centre (affine
    /// jitter against patterns that fool CLIP only pixel-exactly; deep-daze: none) [default: 0;
    /// `run` takes its preset's].
    #[arg(long, help_heading = SIREN_ONLY)]
    cutout_rotation: Option<f64>,
}

/// Help headings of the generator settings.
const GENERATION: &str = "Generation";
const SIREN_ONLY: &str = "Generation: SIREN only";
const BIGGAN_ONLY: &str = "Generation: BigGAN only";

/// BigGAN generator settings (`--generator biggan`), shared by `generate` and `run`.
#[derive(Debug, clap::Args)]
pub struct BigGanArgs {
    /// BigGAN model: preset, hub id or folder [default: biggan-deep-<size>, by --size; `run`
    /// takes its preset's].
    #[arg(long, help_heading = BIGGAN_ONLY)]
    biggan: Option<String>,
    /// Keep only the K strongest classes per latent (a differentiable top-k) instead of a
    /// sigmoid over all classes; 0: the sigmoid (big-sleep's default) [default: 0; `run` takes
    /// its preset's].
    #[arg(long, help_heading = BIGGAN_ONLY)]
    max_classes: Option<usize>,
    /// Temperature of the --max-classes top-k (big-sleep: 2) [default: 2; `run` takes its
    /// preset's].
    #[arg(long, help_heading = BIGGAN_ONLY)]
    class_temperature: Option<f64>,
    /// Decay of the latents' moving average that draws the saved image (big-sleep's CLI: 0.5)
    /// [default: 0.5; `run` takes its preset's].
    #[arg(long, help_heading = BIGGAN_ONLY)]
    ema_decay: Option<f64>,
    /// Resize cutouts bilinearly (big-sleep: nearest) [default: nearest; `run` takes its
    /// preset's].
    #[arg(long, help_heading = BIGGAN_ONLY)]
    bilinear: bool,
    /// A phrase whose similarity is pushed down (repeatable; big-sleep's `text_min`) [default:
    /// none; `run` takes its preset's].
    #[arg(long, help_heading = BIGGAN_ONLY)]
    avoid: Vec<String>,
    /// Weight of big-sleep's class regulariser (pushes all but each latent's strongest class to
    /// zero) [default: 1; `run` takes its preset's].
    #[arg(long, help_heading = BIGGAN_ONLY)]
    class_weight: Option<f64>,
}

impl BigGanArgs {
    /// big-sleep's settings (`defaults`: the preset's model and settings), taking steps,
    /// cutouts, lr and the cutout sides (--lower, --upper) from the shared flags when given.
    pub fn settings(
        &self,
        shared: &SirenArgs,
        defaults: &BigGanDefaults,
    ) -> anyhow::Result<(BigGanSettings, String)> {
        let siren_only = [
            ("--layers", shared.layers.is_some()),
            ("--hidden", shared.hidden.is_some()),
            ("--w0", shared.w0.is_some()),
            ("--grad-accum", shared.grad_accum.is_some()),
            ("--averaging-weight", shared.averaging_weight.is_some()),
            ("--tv-weight", shared.tv_weight.is_some()),
            ("--cutout-noise", shared.cutout_noise.is_some()),
            ("--cutout-rotation", shared.cutout_rotation.is_some()),
        ];
        if let Some((flag, _)) = siren_only.iter().find(|(_, given)| *given) {
            return Err(input_err!(
                "{flag} is a SIREN setting: it does not apply to --generator biggan"
            ));
        }
        let preset_model = self.biggan.as_deref().or(defaults.model);
        if let (Some(m), Some(size)) = (preset_model, shared.size) {
            return Err(input_err!(
                "--size {size} with --biggan {m}: --size picks a BigGAN-deep preset; the model given decides its own size"
            ));
        }
        let model = match preset_model {
            Some(m) => m.to_owned(),
            None => self.model_or_default(shared.size.unwrap_or(128))?,
        };
        let d = &defaults.settings;
        let cutout_sides = match (shared.lower, shared.upper) {
            (None, None) => d.cutout_sides,
            (lo, hi) => {
                let (dlo, dhi) = d.cutout_sides.unwrap_or((0.5, 0.95));
                Some((lo.unwrap_or(dlo), hi.unwrap_or(dhi)))
            }
        };
        let settings = BigGanSettings {
            steps: shared.steps.unwrap_or(d.steps),
            cutouts: shared.cutouts.unwrap_or(d.cutouts),
            lr: shared.lr.unwrap_or(d.lr),
            max_classes: match self.max_classes {
                Some(0) => None,
                Some(k) => Some(k),
                None => d.max_classes,
            },
            class_temperature: self.class_temperature.unwrap_or(d.class_temperature),
            ema_decay: self.ema_decay.unwrap_or(d.ema_decay),
            resize: if self.bilinear {
                Resize::Bilinear
            } else {
                d.resize
            },
            avoid: if self.avoid.is_empty() {
                d.avoid.clone()
            } else {
                self.avoid.clone()
            },
            cutout_sides,
            class_weight: self.class_weight.unwrap_or(d.class_weight),
        };
        Ok((settings, model))
    }

    /// The --biggan reference, or the published BigGAN-deep of the given size.
    pub fn model_or_default(&self, size: usize) -> anyhow::Result<String> {
        match &self.biggan {
            Some(m) => Ok(m.clone()),
            None if [128, 256, 512].contains(&size) => Ok(format!("biggan-deep-{size}")),
            None => Err(input_err!(
                "--size {size}: BigGAN-deep draws 128, 256 or 512 pixels"
            )),
        }
    }

    /// Whether any BigGAN-only flag was given (refused with --generator siren).
    pub fn any_given(&self) -> Option<&'static str> {
        [
            ("--biggan", self.biggan.is_some()),
            ("--max-classes", self.max_classes.is_some()),
            ("--bilinear", self.bilinear),
            ("--avoid", !self.avoid.is_empty()),
            ("--class-temperature", self.class_temperature.is_some()),
            ("--ema-decay", self.ema_decay.is_some()),
            ("--class-weight", self.class_weight.is_some()),
        ]
        .into_iter()
        .find(|(_, g)| *g)
        .map(|(f, _)| f)
    }
}

impl SirenArgs {
    /// No flag given.
    pub fn none() -> Self {
        Self {
            steps: None,
            size: None,
            layers: None,
            hidden: None,
            w0: None,
            cutouts: None,
            lower: None,
            upper: None,
            lr: None,
            grad_accum: None,
            averaging_weight: None,
            tv_weight: None,
            cutout_noise: None,
            cutout_rotation: None,
        }
    }

    /// The settings, taking what was not given from `base`.
    pub fn settings(&self, base: SirenSettings) -> SirenSettings {
        SirenSettings {
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
            tv_weight: self.tv_weight.unwrap_or(base.tv_weight),
            cutout_noise: self.cutout_noise.unwrap_or(base.cutout_noise),
            cutout_rotation: self.cutout_rotation.unwrap_or(base.cutout_rotation),
        }
    }
}

/// The memory bound with the models' configs (read without their weights), before anything is
/// loaded or written: settings whose estimate exceeds the machine's memory are refused (exit 2)
/// naming them, the estimate and the memory. Where the settings or the phrase are invalid, or a
/// config cannot be read, `generate` reports that in its usual order instead.
fn check_memory(settings: &GeneratorSettings, phrase: &str, clip: &str) -> anyhow::Result<()> {
    if phrase.trim().is_empty() {
        return Ok(());
    }
    let locator = Locator::from_env();
    match settings {
        GeneratorSettings::Siren(s) => {
            if s.validate().is_ok() {
                if let Some(c) = clip_config(&locator, clip) {
                    s.validate_memory(&c)?;
                }
            }
        }
        GeneratorSettings::BigGan {
            settings, model, ..
        } => {
            if settings.validate(None).is_ok() {
                if let (Some(g), Some(c)) =
                    (biggan_config(&locator, model), clip_config(&locator, clip))
                {
                    settings.validate_memory(&c, &g)?;
                }
            }
        }
    }
    Ok(())
}

pub fn execute(a: Args, out: &mut dyn Write) -> anyhow::Result<()> {
    let settings = match a.generator {
        GeneratorKind::Siren => {
            if let Some(flag) = a
                .biggan
                .any_given()
                .or(a.init_latents.as_ref().map(|_| "--init-latents"))
            {
                return Err(input_err!(
                    "{flag} is a BigGAN setting: it needs --generator biggan"
                ));
            }
            GeneratorSettings::Siren(a.siren.settings(SirenSettings::default()))
        }
        GeneratorKind::BigGan => {
            let (settings, model) = a
                .biggan
                .settings(&a.siren, &Preset::Real.defaults().biggan)?;
            GeneratorSettings::BigGan {
                settings,
                model,
                init_latents: a.init_latents,
            }
        }
    };
    check_memory(&settings, &a.phrase, &a.clip)?;
    let req = GenerateRequest {
        phrase: a.phrase,
        out_dir: a.out,
        clip: a.clip,
        settings,
        seed: a.seed,
        save_every: a.save_every,
        force: a.force,
        quiet: a.quiet,
        device: a.device.open()?,
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

    /// The defaults written in the help text are the ones `SirenSettings::default()` uses.
    #[test]
    fn help_states_the_real_defaults() {
        let mut cli = crate::cli::Cli::command();
        let help = cli
            .find_subcommand_mut("generate")
            .expect("generate subcommand")
            .render_long_help()
            .to_string();
        let d = SirenSettings::default();
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
            ("tv-weight", d.tv_weight),
            ("cutout-noise", d.cutout_noise),
            ("cutout-rotation", d.cutout_rotation),
        ] {
            let at = help
                .find(&format!("--{flag} <"))
                .unwrap_or_else(|| panic!("--{flag} missing"));
            let tail = &help[at..];
            let start = tail.find("[default: ").expect("a default") + "[default: ".len();
            let shown: f64 = tail[start..]
                .split([',', ';', ']'])
                .next()
                .and_then(|s| s.trim().parse().ok())
                .unwrap_or_else(|| panic!("--{flag}: unreadable default"));
            assert_eq!(shown, value, "--{flag}");
        }
    }
}
