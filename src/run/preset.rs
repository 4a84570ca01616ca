//! Run presets: which models and generator settings `roundtrip run` uses when none are given.
//!
//! `real` is the original experiment (CLIP ViT-B/32 from the hub, captioners trained on Flickr8k
//! with `roundtrip train`); `real-blip` the same with the pretrained BLIP-large captioner from the
//! hub instead (nothing to train: `roundtrip models download real-blip` is all it needs); `shapes` is the offline shapes world whose tiny models ship under
//! `models/shapes/` and are embedded in the binary ([`crate::embedded`]): its model references,
//! `models/shapes/<name> (embedded)`, mean those folders as they were when the binary was built,
//! from any working directory and whatever `models/shapes/` folder it holds (pass the folder, e.g.
//! `--clip models/shapes/clip`, to use that instead). Explicit options always win over the preset.

use crate::generate::{BigGanSettings, GeneratorKind, Resize, SirenSettings};
use crate::run::{parse_captioners, BigGanRunSettings, RunSettings};

/// `run`'s defaults that no preset changes: the run seed, a progress frame every 50 steps,
/// greedy decoding; SIREN drawing every line unless the preset lists more generators.
pub const DEFAULT_SEED: u64 = 0;
pub const DEFAULT_SAVE_EVERY: usize = 50;
pub const DEFAULT_BEAM: usize = 1;
pub const DEFAULT_GENERATOR: GeneratorKind = GeneratorKind::Siren;
/// The BigGAN-deep a preset without a BigGAN model of its own draws with (`--size` 128).
pub const DEFAULT_BIGGAN: &str = "biggan-deep-128";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Preset {
    Real,
    Shapes,
    RealBlip,
}

/// What a preset fills in.
#[derive(Debug, Clone)]
pub struct PresetDefaults {
    /// What lines without a `[generator]` prefix are drawn with (`run --generators`).
    pub generators: &'static [GeneratorKind],
    pub clip: &'static str,
    pub captioners: &'static str,
    pub siren: SirenSettings,
    pub biggan: BigGanDefaults,
}

/// A preset's BigGAN: its model (`None`: the published biggan-deep-<size>) and settings.
#[derive(Debug, Clone)]
pub struct BigGanDefaults {
    pub model: Option<&'static str>,
    pub settings: BigGanSettings,
}

impl Preset {
    /// Every preset, in the order `roundtrip presets` lists them.
    pub const ALL: [Preset; 3] = [Preset::Real, Preset::Shapes, Preset::RealBlip];

    pub fn name(self) -> &'static str {
        match self {
            Preset::Real => "real",
            Preset::Shapes => "shapes",
            Preset::RealBlip => "real-blip",
        }
    }

    /// One line on what the preset is for.
    pub fn about(self) -> &'static str {
        match self {
            Preset::Real => {
                "the original experiment: CLIP ViT-B/32 from the hub, captioners trained on Flickr8k with `roundtrip train`"
            }
            Preset::Shapes => {
                "the offline shapes world: the tiny models of models/shapes/, embedded in the binary (works from any directory)"
            }
            Preset::RealBlip => {
                "the original experiment with the pretrained BLIP-large captioner from the hub instead of the Flickr8k captioners: `roundtrip models download real-blip`, nothing to train"
            }
        }
    }

    /// The settings `roundtrip run --preset P` records when no other option is given, BigGAN's
    /// included when `with_biggan` (a run records them only when a phrase uses BigGAN).
    pub fn run_settings(self, with_biggan: bool) -> RunSettings {
        let d = self.defaults();
        RunSettings {
            generators: d.generators.to_vec(),
            siren: d.siren,
            biggan: with_biggan.then(|| BigGanRunSettings {
                model: d.biggan.model.unwrap_or(DEFAULT_BIGGAN).to_owned(),
                settings: d.biggan.settings,
            }),
            seed: DEFAULT_SEED,
            save_every: DEFAULT_SAVE_EVERY,
            beam: DEFAULT_BEAM,
            clip: d.clip.to_owned(),
            // The presets' own lists, which parse.
            captioners: parse_captioners(d.captioners).unwrap_or_default(),
            blip: None,
        }
    }

    /// The encoder of each of its captioners that is not shipped, as (label, encoder preset):
    /// what `roundtrip train --encoder NAME` trains them on (and `run` loads with them).
    pub fn captioner_encoders(self) -> &'static [(&'static str, &'static str)] {
        match self {
            Preset::Real => &[("vgg16", "vgg16"), ("xception", "xception")],
            // Trained end to end; the encoders are inside the embedded folders.
            Preset::Shapes => &[],
            // Pretrained captioners, no encoder of their own ([`Self::captioner_models`]).
            Preset::RealBlip => &[],
        }
    }

    /// Its pretrained captioners that come from the hub, as (label, model preset).
    pub fn captioner_models(self) -> &'static [(&'static str, &'static str)] {
        match self {
            Preset::Real | Preset::Shapes => &[],
            Preset::RealBlip => &[("blip", "blip-large")],
        }
    }

    /// The preset named `name` (`real`, `shapes`).
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.name() == name)
    }

    pub fn defaults(self) -> PresetDefaults {
        match self {
            Preset::Real => PresetDefaults {
                generators: &[DEFAULT_GENERATOR],
                clip: "clip-vit-b32",
                captioners: "vgg16=models/captioners/vgg16,xception=models/captioners/xception",
                siren: SirenSettings::default(),
                biggan: BigGanDefaults {
                    model: None,
                    settings: BigGanSettings::default(),
                },
            },
            Preset::RealBlip => PresetDefaults {
                generators: &[DEFAULT_GENERATOR],
                clip: "clip-vit-b32",
                captioners: "blip=blip-large",
                siren: SirenSettings::default(),
                biggan: BigGanDefaults {
                    model: None,
                    settings: BigGanSettings::default(),
                },
            },
            // Both of the original's generators, side by side (the shapes BigGAN is trained by
            // `train-gan`, models/shapes/train.sh).
            Preset::Shapes => PresetDefaults {
                generators: &[GeneratorKind::Siren, GeneratorKind::BigGan],
                clip: "models/shapes/clip (embedded)",
                captioners: "vgg16=models/shapes/vgg16 (embedded),xception=models/shapes/xception (embedded)",
                siren: shapes_siren(),
                biggan: BigGanDefaults {
                    model: Some("models/shapes/biggan (embedded)"),
                    settings: shapes_biggan(),
                },
            },
        }
    }
}

/// SIREN settings for the shapes world's 64 px CLIP: an image of its input size, a small network
/// at a low frequency (w0 3: smooth images; 5, 10 and 30 let the CLIP be satisfied by more
/// fragmented patterns that the captioners read worse), near-whole cutouts (positions carry
/// meaning, and the CLIP was trained on crops of at least 85% of the area), 150 steps at lr 3e-3:
/// a phrase in a few seconds on two cores. Chosen on prompts/shapes.txt (README, shapes world).
pub fn shapes_siren() -> SirenSettings {
    SirenSettings {
        size: 64,
        layers: 4,
        hidden: 64,
        w0: 3.0,
        cutouts: 8,
        lower: 0.9,
        upper: 1.0,
        lr: 3e-3,
        steps: 150,
        grad_accum: 1,
        averaging_weight: 0.3,
        tv_weight: 0.0,
        cutout_noise: 0.0,
        cutout_rotation: 0.0,
    }
}

/// big-sleep settings for the shapes BigGAN (`models/shapes/biggan`, trained by `train-gan`,
/// embedded in the binary):
/// near-whole cutouts resized bilinearly, as the shapes CLIP was trained on them, the two
/// strongest classes per latent (a scene has one or two shapes), a light class regulariser.
/// Chosen on prompts/shapes.txt (README, shapes world).
pub fn shapes_biggan() -> BigGanSettings {
    BigGanSettings {
        steps: 100,
        cutouts: 8,
        lr: 0.07,
        max_classes: Some(2),
        class_temperature: 2.0,
        ema_decay: 0.5,
        resize: Resize::Bilinear,
        avoid: Vec::new(),
        cutout_sides: Some((0.9, 1.0)),
        class_weight: 0.1,
        class_prior: 0.0,
    }
}

/// One row of the presets listing: the `run` option a value stands for, under a section.
#[derive(Debug, Clone, PartialEq)]
pub struct PresetOption {
    /// `Models`, `SIREN (--generator siren)` or `BigGAN (--generator biggan)`.
    pub section: &'static str,
    /// The option, e.g. `--steps`.
    pub option: &'static str,
    pub value: String,
}

const MODELS: &str = "Models";
const SIREN: &str = "SIREN (--generator siren)";
const BIGGAN: &str = "BigGAN (--generator biggan)";

impl PresetDefaults {
    /// The names of [`Self::generators`], in order.
    pub fn generator_names(&self) -> Vec<&'static str> {
        self.generators.iter().map(|g| g.name()).collect()
    }

    /// The values as the `run` options they fill, in `run --help`'s order, section by section.
    pub fn options(&self) -> Vec<PresetOption> {
        let s = &self.siren;
        let b = &self.biggan.settings;
        let row = |section, option, value: String| PresetOption {
            section,
            option,
            value,
        };
        vec![
            row(MODELS, "--generators", self.generator_names().join(",")),
            row(MODELS, "--clip", self.clip.to_owned()),
            row(MODELS, "--captioners", self.captioners.to_owned()),
            row(SIREN, "--steps", s.steps.to_string()),
            row(SIREN, "--size", s.size.to_string()),
            row(SIREN, "--layers", s.layers.to_string()),
            row(SIREN, "--hidden", s.hidden.to_string()),
            row(SIREN, "--w0", s.w0.to_string()),
            row(SIREN, "--cutouts", s.cutouts.to_string()),
            row(SIREN, "--lower", s.lower.to_string()),
            row(SIREN, "--upper", s.upper.to_string()),
            row(SIREN, "--lr", s.lr.to_string()),
            row(SIREN, "--grad-accum", s.grad_accum.to_string()),
            row(SIREN, "--averaging-weight", s.averaging_weight.to_string()),
            row(SIREN, "--tv-weight", s.tv_weight.to_string()),
            row(SIREN, "--cutout-noise", s.cutout_noise.to_string()),
            row(SIREN, "--cutout-rotation", s.cutout_rotation.to_string()),
            row(
                BIGGAN,
                "--biggan",
                self.biggan
                    .model
                    .map_or("biggan-deep-<size> (--size 128)".to_owned(), str::to_owned),
            ),
            row(BIGGAN, "--steps", b.steps.to_string()),
            row(BIGGAN, "--cutouts", b.cutouts.to_string()),
            row(BIGGAN, "--lr", b.lr.to_string()),
            row(
                BIGGAN,
                "--lower, --upper",
                b.cutout_sides.map_or(
                    "none: big-sleep's N(0.8, 0.3) sides".to_owned(),
                    |(lo, hi)| format!("{lo}, {hi}"),
                ),
            ),
            row(
                BIGGAN,
                "--max-classes",
                b.max_classes
                    .map_or("0: a sigmoid over all".to_owned(), |k| k.to_string()),
            ),
            row(
                BIGGAN,
                "--class-temperature",
                b.class_temperature.to_string(),
            ),
            row(BIGGAN, "--ema-decay", b.ema_decay.to_string()),
            row(
                BIGGAN,
                "--bilinear",
                match b.resize {
                    Resize::Bilinear => "on".to_owned(),
                    Resize::Nearest => "off: nearest".to_owned(),
                },
            ),
            row(
                BIGGAN,
                "--avoid",
                if b.avoid.is_empty() {
                    "none".to_owned()
                } else {
                    b.avoid.join(", ")
                },
            ),
            row(BIGGAN, "--class-weight", b.class_weight.to_string()),
            row(BIGGAN, "--class-prior", b.class_prior.to_string()),
        ]
    }
}

impl Preset {
    /// The preset as one JSON object: name, about, generators, clip, captioners, siren (settings), biggan
    /// (model, `null` for the published biggan-deep-<size>, and settings), every setting present
    /// (also those that run.json leaves out at their first values).
    pub fn to_json(self) -> serde_json::Value {
        use serde_json::json;
        let d = self.defaults();
        let (s, b) = (&d.siren, &d.biggan.settings);
        let with = |settings: serde_json::Value, fields: Vec<(&str, serde_json::Value)>| {
            let mut settings = settings;
            if let Some(object) = settings.as_object_mut() {
                for (k, v) in fields {
                    object.insert(k.to_owned(), v);
                }
            }
            settings
        };
        let siren = with(
            json!(s),
            vec![
                ("tv_weight", json!(s.tv_weight)),
                ("cutout_noise", json!(s.cutout_noise)),
                ("cutout_rotation", json!(s.cutout_rotation)),
            ],
        );
        let biggan = with(
            json!(b),
            vec![
                ("cutout_sides", json!(b.cutout_sides)),
                ("class_weight", json!(b.class_weight)),
                ("class_prior", json!(b.class_prior)),
            ],
        );
        json!({
            "name": self.name(),
            "about": self.about(),
            "generators": d.generator_names(),
            "clip": d.clip,
            "captioners": d.captioners,
            "siren": siren,
            "biggan": { "model": d.biggan.model, "settings": biggan },
        })
    }
}

/// The presets side by side: one column per preset, one row per option (a `--captioners` list
/// one folder a line), under the sections of [`PresetDefaults::options`].
pub fn listing(presets: &[Preset]) -> String {
    let columns: Vec<Vec<PresetOption>> = presets.iter().map(|p| p.defaults().options()).collect();
    let Some(first) = columns.first() else {
        return String::new();
    };
    let lines = |o: &PresetOption| -> Vec<String> {
        if o.option != "--captioners" {
            return vec![o.value.clone()];
        }
        let parts: Vec<&str> = o.value.split(',').collect();
        let last = parts.len() - 1;
        let comma = |i| if i < last { "," } else { "" };
        parts
            .iter()
            .enumerate()
            .map(|(i, p)| format!("{p}{}", comma(i)))
            .collect()
    };
    let cells: Vec<Vec<Vec<String>>> = columns
        .iter()
        .map(|col| col.iter().map(lines).collect())
        .collect();
    let label_width = first.iter().map(|o| o.option.len() + 2).max().unwrap_or(0);
    let widths: Vec<usize> = presets
        .iter()
        .zip(&cells)
        .map(|(p, col)| {
            col.iter()
                .flatten()
                .map(String::len)
                .chain([p.name().len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let row = |label: &str, values: &[&str]| {
        let mut l = format!("{label:<label_width$}");
        for (v, w) in values.iter().zip(&widths) {
            l.push_str(&format!("  {v:<w$}"));
        }
        format!("{}\n", l.trim_end())
    };
    let names: Vec<&str> = presets.iter().map(|p| p.name()).collect();
    let mut out = row("option", &names);
    let mut section = "";
    for (i, o) in first.iter().enumerate() {
        if o.section != section {
            section = o.section;
            out.push_str(section);
            out.push('\n');
        }
        let height = cells.iter().map(|c| c[i].len()).max().unwrap_or(1);
        for k in 0..height {
            let values: Vec<&str> = cells
                .iter()
                .map(|c| c[i].get(k).map_or("", String::as_str))
                .collect();
            let label = if k == 0 {
                format!("  {}", o.option)
            } else {
                String::new()
            };
            out.push_str(&row(&label, &values));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `--preset shapes` means the models embedded in the binary, never a working-directory folder.
    #[test]
    fn the_shapes_preset_names_the_embedded_models() {
        let d = Preset::Shapes.defaults();
        let captioners = crate::run::parse_captioners(d.captioners).unwrap();
        let references = std::iter::once(d.clip.to_owned())
            .chain(captioners.iter().map(|c| c.dir.display().to_string()));
        for r in references {
            let m = crate::embedded::lookup(&r)
                .unwrap_or_else(|| panic!("{r} is not an embedded reference"))
                .unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(m.reference(), r);
        }
        // BigGAN's too: the shapes preset draws with it.
        let biggan = d.biggan.model.expect("the shapes BigGAN");
        let m = crate::embedded::lookup(biggan)
            .expect("an embedded reference")
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(m.reference(), biggan);
        assert_eq!(d.generators, [GeneratorKind::Siren, GeneratorKind::BigGan]);
    }
}
