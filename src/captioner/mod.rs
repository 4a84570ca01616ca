//! Image captioners: an image encoder (VGG16 or Xception; frozen, or trained end to end with
//! `--train-encoder`) feeding the merge-model LSTM decoder, trained by `roundtrip train` and
//! used by `eval`, `caption` and `run`.

pub mod augment;
pub mod encoder;
pub mod eval;
pub mod feature_cache;
mod jobs;
mod memory;
pub mod model;
pub mod train;
pub mod vocab;
