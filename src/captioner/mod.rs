//! Image captioners: a frozen image encoder (VGG16 or Xception) feeding the merge-model LSTM
//! decoder, trained by `roundtrip train` and used by `eval`, `caption` and `run`.

pub mod adam;
pub mod encoder;
pub mod eval;
pub mod features;
pub mod model;
pub mod train;
pub mod vocab;
