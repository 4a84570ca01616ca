//! `roundtrip generate PHRASE --out DIR [--preset NAME | --like RUN_DIR]`

use std::io::Write;
use std::path::PathBuf;

use clap::builder::PossibleValue;
use serde_json::json;

use crate::generate::biggan::Resize;
use crate::generate::command::{generate, GenerateRequest, GeneratorSettings};
use crate::generate::{biggan_config, clip_config};
use crate::generate::{BigGanSettings, GeneratorKind, SirenSettings};
use crate::hub::Locator;
use crate::input_err;
use crate::run::preset::BigGanDefaults;
use crate::run::redraw::{redraw_of, Likeness, Redraw};

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

/// `generate --help`'s examples.
const EXAMPLES: &str = "\
Examples:
  # A phrase of the shapes world, with the preset's models and settings:
  roundtrip generate 'a red circle' --preset shapes --out drawn

  # A run's image of one of its phrases again, byte for byte (from the folder it was run in):
  roundtrip generate --like runs/shapes 'a big red circle in the middle' --out redrawn

A preset's values: `roundtrip presets`.";

#[derive(Debug, clap::Args)]
#[command(args_override_self = true, after_help = EXAMPLES)]
pub struct Args {
    #[command(flatten)]
    device: super::DeviceArg,
    /// The phrase to draw (with --like: one of the run's phrases, as its prompts file has it).
    phrase: String,
    /// Output folder: DIR/<slug>.png, DIR/<slug>.json and progress frames in DIR/<slug>/.
    #[arg(long)]
    out: PathBuf,
    /// Models and generator settings used where no option says otherwise, as `run --preset`
    /// (each preset's values: `roundtrip presets`).
    #[arg(long, value_enum, default_value = "real")]
    preset: super::run::PresetArg,
    /// Draw PHRASE as the run in RUN_DIR drew it: the run's CLIP, generator settings and model,
    /// frame interval and the phrase's seed, so that the image is the run's byte for byte (on
    /// the device the run used; model paths in run.json are read from the current folder, as
    /// `run` reads them). Options given override the run's values. The last column of the
    /// output says whether the image is the run's: `run image same|differs|absent` [default:
    /// none: --preset's values].
    #[arg(long, value_name = "RUN_DIR", conflicts_with = "preset")]
    like: Option<PathBuf>,
    /// CLIP model: preset name, hub id `org/name[@rev]`, or a folder in the hub's layout
    /// [default: the --preset's (real: clip-vit-b32, shapes: models/shapes/clip (embedded)); with
    /// --like, the run's].
    #[arg(long)]
    clip: Option<String>,
    /// The generator [default: siren; with --like, the first generator that drew the phrase in
    /// the run (pick another of a several-generator run with this option)].
    #[arg(long, value_enum)]
    generator: Option<GeneratorKind>,
    #[command(flatten)]
    siren: SirenArgs,
    #[command(flatten)]
    biggan: BigGanArgs,
    /// BigGAN: start from saved latents (a `.latents.safetensors` file of an earlier run, or any
    /// safetensors file with `z` [L, 128] and `class_logits` [L, 1000]); with --steps 0 the image
    /// is exactly the generator's for them [default: random latents].
    #[arg(long)]
    init_latents: Option<PathBuf>,
    /// Seed of every random draw [default: one drawn at random, and recorded; with --like, the
    /// run's seed of the phrase].
    #[arg(long)]
    seed: Option<u64>,
    /// Write a progress frame every N steps (0: none; deep-daze: 100) [default: 50; with
    /// --like, the run's].
    #[arg(long)]
    save_every: Option<usize>,
    /// Overwrite existing outputs.
    #[arg(long)]
    force: bool,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
    #[command(flatten)]
    json: super::JsonArg,
}

/// SIREN generator settings, shared by `generate` and `run` (some also set BigGAN's); each left
/// out takes the value of the command's --preset (`roundtrip presets`), or with `generate
/// --like`, the run's.
#[derive(Debug, clap::Args)]
pub struct SirenArgs {
    /// Optimiser steps (deep-daze: 21,000; big-sleep: 21,000) [default: the --preset's; real: 200,
    /// biggan: 100].
    #[arg(long, help_heading = GENERATION)]
    steps: Option<usize>,
    /// Image side in pixels (deep-daze: 512); with biggan it picks the model
    /// biggan-deep-128|256|512 [default: the --preset's; real: 128].
    #[arg(long, help_heading = GENERATION)]
    size: Option<usize>,
    /// Cutouts per pass (deep-daze: 4; big-sleep: 128, for a GPU) [default: the --preset's; real:
    /// 8].
    #[arg(long, help_heading = GENERATION)]
    cutouts: Option<usize>,
    /// Smallest cutout side, as a fraction of the image side (deep-daze: 0.1); with biggan, sides
    /// are then drawn uniformly between --lower and --upper (0.5 and 0.95 for the one left out)
    /// instead of big-sleep's N(0.8, 0.3) [default: the --preset's; real: 0.1, biggan: none].
    #[arg(long, help_heading = GENERATION)]
    lower: Option<f64>,
    /// Largest cutout side, as a fraction of the image side (deep-daze: 1.0); with biggan, as
    /// --lower [default: the --preset's; real: 1.0, biggan: none].
    #[arg(long, help_heading = GENERATION)]
    upper: Option<f64>,
    /// Adam learning rate (deep-daze: 1e-5; big-sleep: 0.07) [default: the --preset's; real: 1e-4,
    /// biggan: 0.07].
    #[arg(long, help_heading = GENERATION)]
    lr: Option<f64>,
    /// SIREN sine layers (deep-daze: 16) [default: the --preset's; real: 8].
    #[arg(long, help_heading = SIREN_ONLY)]
    layers: Option<usize>,
    /// SIREN width (deep-daze: 256) [default: the --preset's; real: 256].
    #[arg(long, help_heading = SIREN_ONLY)]
    hidden: Option<usize>,
    /// SIREN frequency w0 (deep-daze: 30) [default: the --preset's; real: 30].
    #[arg(long, help_heading = SIREN_ONLY)]
    w0: Option<f64>,
    /// Passes accumulated per step (deep-daze: 4) [default: the --preset's; real: 1].
    #[arg(long, help_heading = SIREN_ONLY)]
    grad_accum: Option<usize>,
    /// Weight of the averaged-embedding loss term (deep-daze: 0.3) [default: the --preset's; real:
    /// 0.3].
    #[arg(long, help_heading = SIREN_ONLY)]
    averaging_weight: Option<f64>,
    /// Weight of a total-variation penalty on the image, against high-frequency patterns that fool
    /// CLIP (deep-daze: none) [default: the --preset's; real: 0].
    #[arg(long, help_heading = SIREN_ONLY)]
    tv_weight: Option<f64>,
    /// Standard deviation of Gaussian noise added to each cutout before CLIP sees it (deep-daze:
    /// none) [default: the --preset's; real: 0].
    #[arg(long, help_heading = SIREN_ONLY)]
    cutout_noise: Option<f64>,
    /// Largest angle in degrees of a random rotation of each cutout about its centre (affine jitter
    /// against patterns that fool CLIP only pixel-exactly; deep-daze: none) [default: the
    /// --preset's; real: 0].
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
    /// BigGAN model: preset, hub id or folder [default: the --preset's; real: biggan-deep-<size>,
    /// by --size].
    #[arg(long, help_heading = BIGGAN_ONLY)]
    biggan: Option<String>,
    /// Keep only the K strongest classes per latent (a differentiable top-k) instead of a sigmoid
    /// over all classes; 0: the sigmoid (big-sleep's default) [default: the --preset's; real: 0].
    #[arg(long, help_heading = BIGGAN_ONLY)]
    max_classes: Option<usize>,
    /// Temperature of the --max-classes top-k (big-sleep: 2) [default: the --preset's; real: 2].
    #[arg(long, help_heading = BIGGAN_ONLY)]
    class_temperature: Option<f64>,
    /// Decay of the latents' moving average that draws the saved image (big-sleep's CLI: 0.5)
    /// [default: the --preset's; real: 0.5].
    #[arg(long, help_heading = BIGGAN_ONLY)]
    ema_decay: Option<f64>,
    /// Resize cutouts bilinearly (big-sleep: nearest) [default: the --preset's; real: nearest].
    #[arg(long, help_heading = BIGGAN_ONLY)]
    bilinear: bool,
    /// A phrase whose similarity is pushed down (repeatable; big-sleep's `text_min`) [default: the
    /// --preset's; real: none].
    #[arg(long, help_heading = BIGGAN_ONLY)]
    avoid: Vec<String>,
    /// Weight of big-sleep's class regulariser (pushes all but each latent's strongest class to
    /// zero) [default: the --preset's; real: 1].
    #[arg(long, help_heading = BIGGAN_ONLY)]
    class_weight: Option<f64>,
    /// Start the class logits nearer the classes whose names the CLIP finds closest to the
    /// phrase: this weight times the z-score of each class name's similarity (0: big-sleep's
    /// random start; needs `class_names` in the model's config.json) [default: the --preset's;
    /// real: 0].
    #[arg(long, help_heading = BIGGAN_ONLY)]
    class_prior: Option<f64>,
}

impl BigGanArgs {
    /// big-sleep's settings (`defaults`: the preset's model and settings), taking steps,
    /// cutouts, lr and the cutout sides (--lower, --upper) from the shared flags when given.
    pub fn settings(
        &self,
        shared: &SirenArgs,
        defaults: &BigGanDefaults,
    ) -> anyhow::Result<(BigGanSettings, String)> {
        self.settings_over(shared, defaults.model, &defaults.settings)
    }

    /// [`Self::settings`] over a model (`None`: the published biggan-deep-<size>) and settings
    /// (a preset's, or a run's).
    pub fn settings_over(
        &self,
        shared: &SirenArgs,
        default_model: Option<&str>,
        d: &BigGanSettings,
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
        let preset_model = self.biggan.as_deref().or(default_model);
        if let (Some(m), Some(size)) = (preset_model, shared.size) {
            return Err(input_err!(
                "--size {size} with --biggan {m}: --size picks a BigGAN-deep preset; the model given decides its own size"
            ));
        }
        let model = match preset_model {
            Some(m) => m.to_owned(),
            None => self.model_or_default(shared.size.unwrap_or(128))?,
        };
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
            class_prior: self.class_prior.unwrap_or(d.class_prior),
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
            ("--class-prior", self.class_prior.is_some()),
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
    let like: Option<Redraw> = match &a.like {
        Some(dir) => Some(redraw_of(dir, &a.phrase, a.generator)?),
        None => None,
    };
    let preset = a.preset.preset().defaults();
    let generator = like
        .as_ref()
        .map(|l| l.generator)
        .or(a.generator)
        .or_else(|| preset.generators.first().copied())
        .unwrap_or(GeneratorKind::Siren);
    let settings = match generator {
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
            let base = like.as_ref().map_or(preset.siren, |l| l.siren.clone());
            GeneratorSettings::Siren(a.siren.settings(base))
        }
        GeneratorKind::BigGan => {
            let (settings, model) = match like.as_ref().and_then(|l| l.biggan.as_ref()) {
                Some(run) => a
                    .biggan
                    .settings_over(&a.siren, Some(&run.model), &run.settings)?,
                None => a.biggan.settings(&a.siren, &preset.biggan)?,
            };
            GeneratorSettings::BigGan {
                settings,
                model,
                init_latents: a.init_latents,
            }
        }
    };
    let clip = a
        .clip
        .or_else(|| like.as_ref().map(|l| l.clip.clone()))
        .unwrap_or_else(|| preset.clip.to_owned());
    let phrase = like.as_ref().map_or(a.phrase, |l| l.phrase.clone());
    check_memory(&settings, &phrase, &clip)?;
    let req = GenerateRequest {
        phrase,
        out_dir: a.out,
        clip,
        settings,
        seed: a.seed.or(like.as_ref().map(|l| l.seed)),
        save_every: a
            .save_every
            .or(like.as_ref().map(|l| l.save_every))
            .unwrap_or(50),
        force: a.force,
        quiet: a.quiet,
        device: a.device.open()?,
    };
    let done = generate(&req)?;
    let mut run_image = None;
    if let Some(l) = &like {
        let png = std::fs::read(&done.image)
            .map_err(|e| anyhow::anyhow!("cannot read back {}: {e}", done.image.display()))?;
        let likeness = l.likeness(&png);
        match &likeness {
            Likeness::Same => {}
            Likeness::Absent => crate::stderr::note(format_args!(
                "{} has no image of `{}` yet (an unfinished run?): nothing to compare with",
                l.run.display(),
                l.phrase
            )),
            Likeness::Differs { run_device } => {
                let device = crate::device::label(&req.device);
                let why = match run_device {
                    Some(d) if *d != device => format!("the run drew it on {d}, this on {device}"),
                    _ => "options given, or models changed since the run?".to_owned(),
                };
                crate::stderr::warning(format_args!(
                    "the image differs from the run's {} ({why})",
                    l.image.display()
                ));
            }
        }
        run_image = Some(likeness.word());
    }
    a.json.print(
        out,
        &[
            ("image", json!(done.image.display().to_string())),
            ("record", json!(done.record.display().to_string())),
            ("similarity", json!(f64::from(done.final_similarity))),
            ("seed", json!(done.seed)),
            ("run_image", json!(run_image)),
        ],
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    /// The defaults written in the help text are the ones `SirenSettings::default()` (the real
    /// preset's) uses.
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
            let start = tail
                .find("[default: the --preset's; real: ")
                .expect("a default")
                + "[default: the --preset's; real: ".len();
            let shown: f64 = tail[start..]
                .split([',', ';', ']'])
                .next()
                .and_then(|s| s.trim().parse().ok())
                .unwrap_or_else(|| panic!("--{flag}: unreadable default"));
            assert_eq!(shown, value, "--{flag}");
        }
    }
}
