//! Neural network models, one file per model: a `Config`, `new(vb, &cfg)` with the published
//! checkpoint's tensor names, and `forward`. Errors inside models are `candle_core::Result`.

pub mod clip;
pub mod siren;
