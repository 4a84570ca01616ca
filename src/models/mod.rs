//! Neural network models, one file (or folder) per model: a `Config`, `new(vb, &cfg)` with the
//! published checkpoint's tensor names, and `forward`. Errors inside models are
//! `candle_core::Result`.
//!
//! - [`biggan`]: BigGAN-deep generator (big-sleep's image generator).
//! - [`siren`]: SIREN, deep-daze's coordinate network (the other generator).
//! - [`clip`]: CLIP, text and image towers (guidance and CLIPScore), with a taped image backward.
//! - [`vgg16`], [`xception`]: the captioners' frozen image encoders.
//! - [`lstm_decoder`]: the captioners' decoder.
//! - [`blip`]: BLIP, the pretrained image captioner (image tower, text decoder, decoding, image
//!   processor).
//! - [`trainable`]: trainable twins of the two encoders (`train --train-encoder`).
//!
//! The hand-written CPU kernels that models run on the CPU are in [`crate::kernels`]; weights
//! files are read by [`crate::weights`]; images are resized for the models by
//! [`crate::imageops::resize`].

pub mod biggan;
pub mod blip;
pub mod clip;
pub mod lstm_decoder;
pub mod siren;
pub mod trainable;
pub mod vgg16;
pub mod xception;
