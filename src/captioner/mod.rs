//! Image captioners: a frozen image encoder (VGG16 or Xception) feeding the merge-model LSTM
//! decoder, trained by `roundtrip train` and used by `eval`, `caption` and `run`.

pub mod vocab;
