//! Run presets: which models and generator settings `roundtrip run` uses when none are given.
//!
//! `real` is the original experiment (CLIP ViT-B/32 from the hub, captioners trained on Flickr8k
//! with `roundtrip train`); `shapes` is the offline shapes world whose tiny models ship under
//! `models/shapes/`. Explicit options always win over the preset.

use crate::generate::{BigGanSettings, Resize, SirenSettings};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Preset {
    Real,
    Shapes,
}

/// What a preset fills in.
#[derive(Debug, Clone)]
pub struct PresetDefaults {
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
    pub fn name(self) -> &'static str {
        match self {
            Preset::Real => "real",
            Preset::Shapes => "shapes",
        }
    }

    pub fn defaults(self) -> PresetDefaults {
        match self {
            Preset::Real => PresetDefaults {
                clip: "clip-vit-b32",
                captioners: "vgg16=models/captioners/vgg16,xception=models/captioners/xception",
                siren: SirenSettings::default(),
                biggan: BigGanDefaults {
                    model: None,
                    settings: BigGanSettings::default(),
                },
            },
            Preset::Shapes => PresetDefaults {
                clip: "models/shapes/clip",
                captioners: "vgg16=models/shapes/vgg16,xception=models/shapes/xception",
                siren: shapes_siren(),
                biggan: BigGanDefaults {
                    model: Some("models/shapes/biggan"),
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

/// big-sleep settings for the shapes BigGAN (`models/shapes/biggan`, trained by `train-gan`):
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
    }
}
