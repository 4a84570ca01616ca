//! Weights loading, in one place: safetensors files ([`load_safetensors`], and
//! [`load_weights_file`] for a file that may also be a PyTorch checkpoint), PyTorch's `torch.save`
//! checkpoints through an allow-list unpickler ([`pth`]), the `config.json` check shared by the
//! encoders ([`read_config`]), seeded random weights for benchmarks and tests
//! ([`seeded_random_weights`]), and the mapping of candle's errors ([`without_backtrace`]).
//!
//! Every loader reports a missing or mis-shaped tensor as an input error `<file>: <candle's
//! message>` (which names the tensor), without the backtrace candle attaches.

pub mod pth;

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use rand::SeedableRng;
use rand_distr::Distribution;
use serde_json::Value;

use crate::input_err;

/// Reads config.json of a model if it has one: checks its `architecture` (when present) against
/// `accepted` and returns its `roundtrip` object, if any. A folder without config.json is fine
/// (None); any other failure to get the file is an error.
pub(crate) fn read_config(
    model: &crate::hub::Model,
    accepted: &[&str],
) -> anyhow::Result<Option<(std::path::PathBuf, Value)>> {
    let path = match model.file("config.json") {
        Ok(p) => p,
        Err(crate::hub::LocateError::MissingInFolder { .. }) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let text = std::fs::read_to_string(&path)
        .map_err(|e| input_err!("cannot read {}: {e}", path.display()))?;
    let root: Value = serde_json::from_str(&text)
        .map_err(|e| input_err!("{} is not valid JSON: {e}", path.display()))?;
    let Value::Object(mut root) = root else {
        return Err(input_err!(
            "{}: expected a JSON object at the top level",
            path.display()
        ));
    };
    if let Some(arch) = root.get("architecture").filter(|v| !v.is_null()) {
        let ok = arch.as_str().is_some_and(|a| accepted.contains(&a));
        if !ok {
            return Err(input_err!(
                "{}: `architecture` is {arch}, expected one of {accepted:?}: this is not the \
                 checkpoint of this encoder",
                path.display()
            ));
        }
    }
    Ok(root.remove("roundtrip").map(|v| (path, v)))
}

/// Builds a model from a safetensors file (in `dtype`, on `device`); a missing or mis-shaped tensor
/// is an input error naming the file and the tensor.
pub(crate) fn load_safetensors<T>(
    path: &Path,
    dtype: DType,
    device: &Device,
    build: impl FnOnce(VarBuilder) -> candle_core::Result<T>,
) -> anyhow::Result<T> {
    let bytes =
        std::fs::read(path).map_err(|e| input_err!("cannot read {}: {e}", path.display()))?;
    let vb = VarBuilder::from_slice_safetensors(&bytes, dtype, device)
        .map_err(|e| input_err!("{} is not a valid safetensors file: {e}", path.display()))?;
    build(vb).map_err(|e| input_err!("{}: {}", path.display(), without_backtrace(e)))
}

/// The error without the backtrace candle attaches when RUST_BACKTRACE is set.
pub(crate) fn without_backtrace(e: candle_core::Error) -> candle_core::Error {
    match e {
        candle_core::Error::WithBacktrace { inner, .. } => without_backtrace(*inner),
        e => e,
    }
}

/// The tensors of a weights file, on the CPU: safetensors when the name ends in `.safetensors`,
/// otherwise a PyTorch checkpoint (legacy or zip, [`pth::read_bytes`]). Every failure, a refused
/// pickle global included, is an input error naming the file and the [`pth::PthError`]'s message.
pub fn load_weights_file(path: &Path) -> anyhow::Result<HashMap<String, Tensor>> {
    let bytes = crate::error::read_input_file(path)?;
    if path.extension().is_some_and(|e| e == "safetensors") {
        return candle_core::safetensors::load_buffer(&bytes, &Device::Cpu)
            .map_err(|e| input_err!("{} is not a valid safetensors file: {e}", path.display()));
    }
    match pth::read_bytes(&bytes) {
        Ok(tensors) => Ok(tensors.into_iter().collect()),
        Err(e) => Err(input_err!(
            "cannot read PyTorch weights {}: {e}",
            path.display()
        )),
    }
}

/// The weights file of a model folder or hub repository: `model.safetensors` if the model has it
/// locally, else `pytorch_model.bin` (fetched when needed), else `model.safetensors` fetched; a
/// folder with neither is an input error naming both and `what` (`BigGAN weights`).
pub(crate) fn weights_file(
    model: &crate::hub::Model,
    what: &str,
) -> anyhow::Result<std::path::PathBuf> {
    const ST: &str = "model.safetensors";
    const BIN: &str = "pytorch_model.bin";
    if model.has_local_file(ST) {
        return Ok(model.file(ST)?);
    }
    match model.file(BIN) {
        Ok(p) => Ok(p),
        Err(bin_err) => match model.file(ST) {
            Ok(p) => Ok(p),
            Err(crate::hub::LocateError::MissingInFolder { folder, .. }) => Err(input_err!(
                "model folder {} has neither {ST} nor {BIN}: expected {what} in one of them",
                folder.display()
            )),
            Err(_) => Err(bin_err.into()),
        },
    }
}

/// Seeded random weights for any model: builds it once to learn its tensor names and shapes,
/// then fills each tensor from N(0, std) drawn on the host (candle's CPU RNG cannot be seeded).
/// Used for benchmarks and tests that need full-size geometry without a checkpoint.
pub fn seeded_random_weights<T>(
    build: impl Fn(VarBuilder) -> candle_core::Result<T>,
    seed: u64,
    std: f32,
    device: &Device,
) -> candle_core::Result<HashMap<String, Tensor>> {
    let varmap = VarMap::new();
    build(VarBuilder::from_varmap(&varmap, DType::F32, device))?;
    let data = varmap
        .data()
        .lock()
        .map_err(|_| candle_core::Error::Msg("poisoned var map".into()))?;
    let mut names: Vec<&String> = data.keys().collect();
    names.sort();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let normal =
        rand_distr::Normal::new(0f32, std).map_err(|e| candle_core::Error::Msg(e.to_string()))?;
    names
        .into_iter()
        .map(|name| {
            let shape = data[name].shape().clone();
            let v: Vec<f32> = (0..shape.elem_count())
                .map(|_| normal.sample(&mut rng))
                .collect();
            Ok((name.clone(), Tensor::from_vec(v, shape, device)?))
        })
        .collect()
}
