//! The captioners' image encoders: the inference encoders behind one small trait, and the
//! trainable twins (`train --train-encoder`) with their geometries.

use std::path::Path;

use candle_core::{Device, Tensor};
use serde::Serialize;

use crate::hub::{Locator, ModelRecord, ModelRef};
use crate::input_err;
use crate::models::trainable::TrainableEncoder;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EncoderKind {
    Vgg16,
    Xception,
}

impl EncoderKind {
    pub fn name(self) -> &'static str {
        match self {
            EncoderKind::Vgg16 => "vgg16",
            EncoderKind::Xception => "xception",
        }
    }

    /// The preset of the published checkpoint.
    pub fn default_weights(self) -> &'static str {
        self.name()
    }
}

impl std::str::FromStr for EncoderKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "vgg16" => Ok(EncoderKind::Vgg16),
            "xception" => Ok(EncoderKind::Xception),
            _ => Err(format!("unknown encoder `{s}`: expected vgg16 or xception")),
        }
    }
}

/// An image encoder that turns images into one feature vector each.
/// `Sync`: `run` captions several images at once with one encoder.
pub trait FeatureEncoder: Sync {
    fn feature_dim(&self) -> usize;
    fn input_size(&self) -> usize;
    /// An RGB image as the encoder's normalised input [3, S, S].
    fn preprocess(&self, img: &image::RgbImage, device: &Device) -> candle_core::Result<Tensor>;
    /// [B, 3, S, S] -> [B, feature_dim].
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor>;

    /// Features [N, feature_dim] of RGB images, preprocessed and encoded as one batch.
    fn encode_rgb(
        &self,
        images: &[image::RgbImage],
        device: &Device,
    ) -> candle_core::Result<Tensor> {
        let pixels = images
            .iter()
            .map(|i| self.preprocess(i, device))
            .collect::<candle_core::Result<Vec<_>>>()?;
        self.forward(&Tensor::stack(&pixels, 0)?)
    }
}

impl FeatureEncoder for crate::models::vgg16::Vgg16 {
    fn feature_dim(&self) -> usize {
        self.feature_dim()
    }
    fn input_size(&self) -> usize {
        self.input_size()
    }
    fn preprocess(&self, img: &image::RgbImage, device: &Device) -> candle_core::Result<Tensor> {
        crate::models::vgg16::preprocess_image(img, self.input_size(), device)
    }
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.forward(x)
    }
}

impl FeatureEncoder for crate::models::xception::Xception {
    fn feature_dim(&self) -> usize {
        self.feature_dim()
    }
    fn input_size(&self) -> usize {
        self.input_size()
    }
    fn preprocess(&self, img: &image::RgbImage, device: &Device) -> candle_core::Result<Tensor> {
        crate::models::xception::preprocess_image(img, self.input_size(), device)
    }
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.forward(x)
    }
}

/// A loaded encoder with what outputs record about it.
pub struct LoadedEncoder {
    pub kind: EncoderKind,
    pub encoder: Box<dyn FeatureEncoder>,
    pub record: ModelRecord,
    /// Identifies the weights for the feature cache: the encoder kind and the content
    /// fingerprint of the files it was loaded from ([`crate::hub::Model::fingerprint`]).
    pub cache_key: String,
    /// The full content fingerprint.
    pub fingerprint: String,
}

/// Loads an encoder of `kind` from a model reference.
pub fn load_encoder(
    kind: EncoderKind,
    reference: &str,
    locator: &Locator,
    device: &Device,
) -> anyhow::Result<LoadedEncoder> {
    load_encoder_ref(kind, &ModelRef::parse(reference)?, locator, device)
}

/// [`load_encoder`] from the value of a command-line option (`--weights`), which errors name.
pub fn load_encoder_option(
    kind: EncoderKind,
    reference: &str,
    option: &str,
    locator: &Locator,
    device: &Device,
) -> anyhow::Result<LoadedEncoder> {
    load_encoder_ref(
        kind,
        &ModelRef::parse_option(reference, option)?,
        locator,
        device,
    )
}

fn load_encoder_ref(
    kind: EncoderKind,
    r: &ModelRef,
    locator: &Locator,
    device: &Device,
) -> anyhow::Result<LoadedEncoder> {
    let model = locator.open(r)?;
    let encoder: Box<dyn FeatureEncoder> = match kind {
        EncoderKind::Vgg16 => Box::new(crate::models::vgg16::Vgg16::load(&model, device)?),
        EncoderKind::Xception => Box::new(crate::models::xception::Xception::load(&model, device)?),
    };
    let record = model.record();
    let fingerprint = match &record.fingerprint {
        Some(f) => f.clone(),
        // Only on failure: hashing again names what could not be read.
        None => model.fingerprint()?,
    };
    Ok(LoadedEncoder {
        kind,
        encoder,
        record,
        cache_key: format!("{}-{}", kind.name(), &fingerprint[..32]),
        fingerprint,
    })
}

/// The names `--encoder-config` accepts besides a file or folder.
pub const GEOMETRY_NAMES: [&str; 3] = ["shapes", "tiny", "full"];

/// The geometry of a trainable encoder of `kind` from `spec`: a name ([`GEOMETRY_NAMES`]:
/// `shapes`, the reduced default for 64 px images; `tiny`, a toy for tests; `full`, the
/// published geometry), a JSON file (the geometry object itself, or a config.json holding it
/// under `roundtrip`), or a folder whose config.json holds it under `roundtrip`. Validated; as
/// the `roundtrip` object of the encoder's config.json.
pub fn encoder_geometry(kind: EncoderKind, spec: &str) -> anyhow::Result<serde_json::Value> {
    use crate::models::{vgg16, xception};
    let named = match (kind, spec) {
        (EncoderKind::Vgg16, "shapes") => {
            Some(serde_json::to_value(vgg16::Config::vgg16_shapes())?)
        }
        (EncoderKind::Vgg16, "tiny") => Some(serde_json::to_value(vgg16::Config::tiny())?),
        (EncoderKind::Vgg16, "full") => Some(serde_json::to_value(vgg16::Config::vgg16())?),
        (EncoderKind::Xception, "shapes") => {
            Some(serde_json::to_value(xception::Config::xception_shapes())?)
        }
        (EncoderKind::Xception, "tiny") => Some(serde_json::to_value(xception::Config::tiny())?),
        (EncoderKind::Xception, "full") => {
            Some(serde_json::to_value(xception::Config::xception())?)
        }
        _ => None,
    };
    if let Some(v) = named {
        return Ok(v);
    }
    let path = Path::new(spec);
    let file = if path.is_dir() {
        path.join("config.json")
    } else if path.is_file() {
        path.to_path_buf()
    } else {
        return Err(input_err!(
            "--encoder-config `{spec}` is neither a file, a folder, nor one of {}",
            GEOMETRY_NAMES.join(", ")
        ));
    };
    let text = std::fs::read_to_string(&file)
        .map_err(|e| input_err!("cannot read {}: {e}", file.display()))?;
    let v: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| input_err!("{} is not valid JSON: {e}", file.display()))?;
    let geometry = match v.get("roundtrip") {
        Some(g) => g.clone(),
        None if path.is_dir() => {
            return Err(input_err!(
                "{}: no `roundtrip` object with the encoder's geometry",
                file.display()
            ))
        }
        None => v,
    };
    let check = match kind {
        EncoderKind::Vgg16 => serde_json::from_value::<vgg16::Config>(geometry.clone())
            .map_err(|e| e.to_string())
            .and_then(|c| c.validate()),
        EncoderKind::Xception => serde_json::from_value::<xception::Config>(geometry.clone())
            .map_err(|e| e.to_string())
            .and_then(|c| c.validate()),
    };
    check.map_err(|e| input_err!("{}: {} geometry: {e}", file.display(), kind.name()))?;
    Ok(geometry)
}

/// A trainable encoder of `kind` and `geometry` ([`encoder_geometry`]) holding `tensors`
/// (timm's names), or freshly initialised from `seed` when `tensors` is None.
pub fn trainable_encoder(
    kind: EncoderKind,
    geometry: &serde_json::Value,
    tensors: Option<&std::collections::HashMap<String, Tensor>>,
    seed: u64,
    device: &Device,
) -> anyhow::Result<Box<dyn TrainableEncoder>> {
    use crate::models::trainable::{init_tensors, vgg16 as tv, xception as tx};
    use crate::models::{vgg16, xception};
    Ok(match kind {
        EncoderKind::Vgg16 => {
            let cfg: vgg16::Config = serde_json::from_value(geometry.clone())?;
            let init;
            let t = match tensors {
                Some(t) => t,
                None => {
                    init = init_tensors(&tv::specs(&cfg), seed, device)?;
                    &init
                }
            };
            Box::new(tv::TrainVgg16::new(&cfg, t, device)?)
        }
        EncoderKind::Xception => {
            let cfg: xception::Config = serde_json::from_value(geometry.clone())?;
            let init;
            let t = match tensors {
                Some(t) => t,
                None => {
                    init = init_tensors(&tx::specs(&cfg), seed, device)?;
                    &init
                }
            };
            Box::new(tx::TrainXception::new(&cfg, t, device)?)
        }
    })
}
