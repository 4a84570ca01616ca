//! `roundtrip run PROMPTS --out DIR`: the whole round trip for every phrase.

use std::io::Write;
use std::path::PathBuf;

use serde_json::json;

use super::generate::{BigGanArgs, SirenArgs};
use crate::generate::GeneratorKind;
use crate::run::html::GalleryImages;
use crate::run::preset::{
    Preset, DEFAULT_BEAM, DEFAULT_GENERATOR, DEFAULT_SAVE_EVERY, DEFAULT_SEED,
};
use crate::run::{
    execute as run_prompts, parse_captioners, parse_generators, BigGanRunSettings, RunRequest,
    RunSettings, Shard,
};

/// `--preset` of `run` and `generate`.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub(super) enum PresetArg {
    /// The original experiment: CLIP ViT-B/32 and captioners trained on Flickr8k.
    Real,
    /// The offline shapes world: the tiny models of models/shapes/, embedded in the binary.
    Shapes,
    /// The original experiment with the pretrained BLIP-large captioner instead of the Flickr8k
    /// ones: only `roundtrip models download real-blip` needed.
    RealBlip,
}

impl PresetArg {
    pub(super) fn preset(self) -> Preset {
        match self {
            Self::Real => Preset::Real,
            Self::Shapes => Preset::Shapes,
            Self::RealBlip => Preset::RealBlip,
        }
    }
}

/// `run --help`'s examples.
const EXAMPLES: &str = "\
Examples:
  # The offline shapes world, each phrase drawn by both generators side by side (the preset's
  # --generators siren,biggan):
  roundtrip run prompts/shapes.txt --preset shapes --out runs/shapes
  # ... by SIREN alone:
  roundtrip run prompts/shapes.txt --preset shapes --generator siren --out runs/shapes-siren

  # The original experiment split over three machines; on the second:
  roundtrip run prompts/seed.txt --shard 2/3 --out runs/seed-2
  # then, with the three folders in one place:
  roundtrip merge runs/seed-1 runs/seed-2 runs/seed-3 --out runs/seed

A preset's values: `roundtrip presets`.";

#[derive(Debug, clap::Args)]
#[command(args_override_self = true, after_help = EXAMPLES)]
pub struct Args {
    /// Prompts file: one phrase per line, optionally TAB and the path of a real photo of it.
    #[arg(help_heading = "Inputs", display_order = 0)]
    prompts: PathBuf,
    /// Models and generator settings used where no option says otherwise (each preset's values:
    /// `roundtrip presets`).
    #[arg(
        long,
        value_enum,
        default_value = "real",
        help_heading = "Inputs",
        display_order = 1
    )]
    preset: PresetArg,
    /// CLIP model guiding generation and scoring: preset, hub id `org/name[@rev]`, folder, or
    /// `models/shapes/NAME (embedded)` (the binary's copy of that folder) [default: the preset's;
    /// real: clip-vit-b32, shapes: models/shapes/clip (embedded)].
    #[arg(long, help_heading = "Inputs", display_order = 2)]
    clip: Option<String>,
    /// The generator of lines without a `[siren]` / `[biggan]` prefix (the one-generator form of
    /// --generators); --steps, --size, --cutouts and --lr set its settings (lines of the other
    /// generator keep that one's defaults) [default: the preset's --generators].
    #[arg(long, value_enum, help_heading = "Generation")]
    generator: Option<GeneratorKind>,
    /// Draw every line without a `[siren]` / `[biggan]` prefix with each of these generators
    /// (comma-separated, e.g. siren,biggan) and compare them side by side; a prefixed line is
    /// still drawn only with its own. The first listed takes --steps, --size, --cutouts and --lr
    /// and keeps the one-generator seeds and file names (so adding a generator at the end keeps
    /// the images already drawn); each other image gets a seed of its own. [default: the
    /// preset's; shapes: siren,biggan; real, real-blip: siren]
    #[arg(
        long,
        conflicts_with = "generator",
        value_name = "LIST",
        help_heading = "Generation"
    )]
    generators: Option<String>,
    /// Run seed; each phrase's seed is derived from it and the phrase's text.
    #[arg(long, default_value_t = DEFAULT_SEED, help_heading = "Generation")]
    seed: u64,
    #[command(flatten)]
    siren: SirenArgs,
    #[command(flatten)]
    biggan: BigGanArgs,
    /// Captioners as LABEL=CAPTIONER[,LABEL=CAPTIONER...]: folders written by `roundtrip train`,
    /// `models/shapes/NAME (embedded)`, or BLIP models (blip-base, blip-large, their hub ids, or a
    /// folder in transformers' layout; --prompt and --max-length set their decoding) [default: the preset's;
    /// real: vgg16=models/captioners/vgg16,xception=models/captioners/xception,
    /// shapes: vgg16=models/shapes/vgg16 (embedded),xception=models/shapes/xception (embedded),
    /// real-blip: blip=blip-large].
    #[arg(long, help_heading = "Captioning")]
    captioners: Option<String>,
    /// Beam width of the captioners (1: greedy).
    #[arg(long, default_value_t = DEFAULT_BEAM, help_heading = "Captioning")]
    beam: usize,
    #[command(flatten, next_help_heading = "Captioning")]
    blip: super::BlipArgs,
    /// Run folder: report.json, report.csv, report.html, report.md, run.json, images/, photos/,
    /// phrases/.
    #[arg(long, help_heading = "Output")]
    out: PathBuf,
    /// Write a progress frame every N steps (0: none).
    #[arg(long, default_value_t = DEFAULT_SAVE_EVERY, help_heading = "Output")]
    save_every: usize,
    #[command(flatten, next_help_heading = "Output")]
    gallery: GalleryArg,
    /// Throw away the results already in --out and compute everything again (also: write into a
    /// non-empty folder that holds no run).
    #[arg(long, help_heading = "Output")]
    force: bool,
    /// No progress bars or log lines on stderr.
    #[arg(long, help_heading = "Output")]
    quiet: bool,
    #[command(flatten, next_help_heading = "Output")]
    json: super::JsonArg,
    /// Run only the K-th of N stable shares of the phrases (merge the folders with `roundtrip
    /// merge`) [default: all phrases].
    #[arg(long, help_heading = "Scale-out")]
    shard: Option<Shard>,
    /// Images computed at once, each on its share of the cores; the results are the same for
    /// any value [default: one per core (fewer when that many images would not fit the memory);
    /// 1 on a GPU].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..), help_heading = "Scale-out")]
    jobs: Option<u64>,
    #[command(flatten, next_help_heading = "Scale-out")]
    device: super::DeviceArg,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum GalleryImagesArg {
    /// Inline while the images come to at most 8 MiB, else link.
    Auto,
    /// Every image inlined: one self-contained file, whatever its size.
    Inline,
    /// Every image a relative link to its file in the run folder (lazily loaded).
    Link,
}

/// How `report.html` shows the images (shared by `run` and `merge`).
#[derive(Debug, clap::Args)]
pub struct GalleryArg {
    /// How report.html shows the images: inlined as data URIs (one self-contained file), or
    /// linked to their files beside it (a page that opens quickly with hundreds of phrases; move
    /// the run folder as a whole). auto: inline up to 8 MiB of images, link beyond.
    #[arg(long, value_enum, default_value = "auto", value_name = "MODE")]
    gallery_images: GalleryImagesArg,
}

impl GalleryArg {
    pub fn images(&self) -> GalleryImages {
        match self.gallery_images {
            GalleryImagesArg::Auto => GalleryImages::Auto,
            GalleryImagesArg::Inline => GalleryImages::Inline,
            GalleryImagesArg::Link => GalleryImages::Link,
        }
    }
}

pub fn execute(a: Args, out: &mut dyn Write) -> anyhow::Result<()> {
    let preset = a.preset.preset();
    let d = preset.defaults();
    let generators = match &a.generators {
        Some(list) => parse_generators(list)?,
        None => a
            .generator
            .map_or_else(|| d.generators.to_vec(), |g| vec![g]),
    };
    // The shared flags set the first generator's settings; the other keeps its defaults.
    // An empty list is refused by the run's validation.
    let (siren, biggan) = match generators.first().copied().unwrap_or(DEFAULT_GENERATOR) {
        GeneratorKind::Siren => {
            let (settings, model) = a.biggan.settings(&SirenArgs::none(), &d.biggan)?;
            (
                a.siren.settings(d.siren),
                BigGanRunSettings { model, settings },
            )
        }
        GeneratorKind::BigGan => {
            let (settings, model) = a.biggan.settings(&a.siren, &d.biggan)?;
            (d.siren, BigGanRunSettings { model, settings })
        }
    };
    let settings = RunSettings {
        generators,
        siren,
        biggan: Some(biggan),
        seed: a.seed,
        save_every: a.save_every,
        beam: a.beam,
        clip: a.clip.unwrap_or_else(|| d.clip.to_owned()),
        captioners: parse_captioners(a.captioners.as_deref().unwrap_or(d.captioners))?,
        blip: a.blip.decoding(),
    };
    let req = RunRequest {
        prompts: a.prompts,
        out: a.out,
        settings,
        shard: a.shard,
        force: a.force,
        quiet: a.quiet,
        jobs: a.jobs.map(|j| j as usize),
        gallery: a.gallery.images(),
        device: a.device.open()?,
    };
    let s = run_prompts(&req)?;
    a.json.print(
        out,
        &[
            ("report", json!(s.report.display().to_string())),
            ("phrases", json!(s.phrases)),
            ("computed", json!(s.computed)),
            ("reused", json!(s.reused)),
            ("updated", json!(s.updated)),
            ("images", json!(s.images)),
        ],
    )
}
