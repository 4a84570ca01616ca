//! Image captioners: an image encoder (VGG16 or Xception; frozen, or trained end to end with
//! `--train-encoder`) feeding the merge-model LSTM decoder, trained by `roundtrip train`; and the
//! pretrained BLIP captioner ([`blip`]). Both are used by `eval`, `caption` and `run` through
//! [`any::AnyCaptioner`].

pub mod any;
pub mod augment;
pub mod blip;
pub mod encoder;
pub mod eval;
pub mod feature_cache;
mod jobs;
mod memory;
pub mod model;
pub mod train;
pub mod vocab;
