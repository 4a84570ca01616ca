//! A captioner of either kind behind one type, as `caption`, `eval` and `run` take them: a trained
//! LSTM captioner folder (or an embedded one), or a pretrained BLIP model
//! ([`super::blip::is_blip_reference`] tells which a reference names).

use std::path::{Path, PathBuf};

use candle_core::Device;

use super::blip::{is_blip_reference, BlipCaptioner, BlipDecoding};
use super::model::Captioner;
use crate::error::InputError;
use crate::hub::Locator;
use crate::input_err;

/// A loaded captioner.
pub enum AnyCaptioner {
    /// CNN encoder + LSTM decoder (`roundtrip train`).
    Lstm(Box<Captioner>),
    /// BLIP.
    Blip(Box<BlipCaptioner>),
}

/// The two kinds, as outputs name them.
pub const LSTM: &str = "lstm";
pub const BLIP: &str = "blip";

impl AnyCaptioner {
    /// Loads `reference`, given by `option` (`--captioner`): a BLIP model with `decoding`
    /// (`None`: the defaults), or an LSTM captioner folder, which takes no BLIP decoding settings.
    pub fn load(
        reference: &str,
        option: &str,
        decoding: Option<BlipDecoding>,
        locator: &Locator,
        device: &Device,
    ) -> anyhow::Result<Self> {
        if is_blip_reference(reference) {
            let c = BlipCaptioner::load_reference(
                reference,
                option,
                decoding.unwrap_or_default(),
                locator,
                device,
            )?;
            return Ok(Self::Blip(Box::new(c)));
        }
        if decoding.is_some_and(|d| d != BlipDecoding::default()) {
            return Err(input_err!(
                "--prompt and --max-length are for BLIP captioners; `{reference}` is a trained \
                 LSTM captioner folder"
            ));
        }
        Ok(Self::Lstm(Box::new(Captioner::load(
            Path::new(reference),
            locator,
            device,
        )?)))
    }

    /// `lstm` or `blip`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Lstm(_) => LSTM,
            Self::Blip(_) => BLIP,
        }
    }

    /// Refuses beam widths the captioner cannot run (0, wider than its vocabulary allows, or
    /// beyond memory).
    pub fn check_beam(&self, beam: usize) -> Result<(), InputError> {
        match self {
            Self::Lstm(c) => crate::resources::check_beam(beam, c.decoder.config().vocab_size),
            Self::Blip(c) => c.check_beam(beam),
        }
    }

    /// One caption per image file.
    pub fn caption_images(
        &self,
        images: &[PathBuf],
        beam: usize,
        device: &Device,
    ) -> anyhow::Result<Vec<String>> {
        match self {
            Self::Lstm(c) => c.caption_images(images, beam, device),
            Self::Blip(c) => c.caption_images(images, beam, device),
        }
    }

    /// One caption per RGB image.
    pub fn caption_rgb(
        &self,
        images: &[image::RgbImage],
        beam: usize,
        device: &Device,
    ) -> anyhow::Result<Vec<String>> {
        if images.is_empty() {
            return Ok(Vec::new());
        }
        match self {
            Self::Lstm(c) => {
                let feats = c.encoder.encoder.encode_rgb(images, device)?;
                c.caption_features(&feats, beam)
            }
            Self::Blip(c) => c.caption_rgb(images, beam, device),
        }
    }

    /// The content fingerprint that keys its captions.
    pub fn fingerprint(&self) -> &str {
        match self {
            Self::Lstm(c) => &c.fingerprint,
            Self::Blip(c) => &c.fingerprint,
        }
    }
}
