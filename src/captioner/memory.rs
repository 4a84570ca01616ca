//! The memory a captioner training needs, estimated before anything is allocated or written, so
//! that settings that cannot fit are refused (exit 2) naming the setting that dominates.

use super::encoder::EncoderKind;
use super::model::TrainSettings;
use crate::models::lstm_decoder::Config as DecoderConfig;

/// Bytes of one parameter during training: the value, its gradient and Adam's two moments.
const PARAMETER_BYTES: f64 = 16.0;

/// Bytes of bookkeeping per parameter tensor (its spec, variable, gradient and moments).
const TENSOR_OVERHEAD_BYTES: f64 = 1024.0;

/// The setting named by a memory refusal: the part of the estimate that dominates, with its
/// bytes.
fn dominant(parts: &[(String, f64)]) -> (String, f64) {
    let total: f64 = parts.iter().map(|(_, b)| b).sum();
    let name = parts
        .iter()
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .map(|(n, _)| n.clone())
        .unwrap_or_default();
    (name, total)
}

/// Floats of activations one image keeps for the backward in a trainable encoder of `geometry`
/// (each convolution's output before and after its activation, at its resolution; a lower
/// bound, so that only settings that cannot fit are refused), and its parameter and tensor
/// counts.
pub(super) fn encoder_footprint(
    kind: EncoderKind,
    geometry: &serde_json::Value,
) -> anyhow::Result<(f64, (f64, f64))> {
    use crate::models::trainable::{vgg16 as tv, xception as tx};
    use crate::models::{vgg16, xception};
    // Parameters and tensors.
    let count = |specs: Vec<crate::models::trainable::Spec>| -> (f64, f64) {
        let params = specs
            .iter()
            .map(|s| s.shape.iter().map(|&d| d as f64).product::<f64>())
            .sum();
        (params, specs.len() as f64)
    };
    Ok(match kind {
        EncoderKind::Vgg16 => {
            let cfg: vgg16::Config = serde_json::from_value(geometry.clone())?;
            let mut side = cfg.image_size as f64;
            let mut floats = 3.0 * side * side;
            for stage in &cfg.stages {
                for &c in stage {
                    floats += 2.0 * c as f64 * side * side;
                }
                side /= 2.0;
            }
            floats += 4.0 * cfg.fc_dim as f64;
            (floats, count(tv::specs(&cfg)))
        }
        EncoderKind::Xception => {
            let cfg: xception::Config = serde_json::from_value(geometry.clone())?;
            let s = cfg.image_size as f64;
            let area = |d: f64| (s / d) * (s / d);
            let mut floats = 3.0 * s * s + 2.0 * (cfg.stem[0] + cfg.stem[1]) as f64 * area(2.0);
            let mut d = 2.0;
            for &c in &cfg.entry {
                // Two separable convolutions (depthwise and pointwise outputs, BatchNorm, ReLU).
                floats += 2.0 * 4.0 * c as f64 * area(d);
                d *= 2.0;
            }
            floats += cfg.middle_blocks as f64 * 3.0 * 4.0 * cfg.entry[2] as f64 * area(d);
            floats += 2.0 * 4.0 * cfg.exit as f64 * area(d);
            floats += 4.0 * (cfg.exit_convs[0] + cfg.exit_convs[1]) as f64 * area(2.0 * d);
            // The middle blocks are identical: counted from geometries of none and one, so
            // that an absurd `middle_blocks` is refused without listing its tensors.
            let with = |n: usize| {
                let mut c = cfg.clone();
                c.middle_blocks = n;
                count(tx::specs(&c))
            };
            let ((p0, t0), (p1, t1)) = (with(0), with(1));
            let n = cfg.middle_blocks as f64;
            (floats, (p0 + n * (p1 - p0), t0 + n * (t1 - t0)))
        }
    })
}

/// Refuses settings whose training step needs more memory than the machine has (exit 2,
/// naming the setting that dominates the estimate), before anything is allocated or written.
/// `captions_per_step` counts the captions of one batch; `encoder`: the per-image activation
/// floats and parameters of a trained encoder, with its input side.
pub(super) fn check_training_memory(
    s: &TrainSettings,
    decoder: &DecoderConfig,
    captions_per_step: f64,
    encoder: Option<(f64, (f64, f64), usize)>,
    resident_bytes: f64,
    encoder_config: &str,
) -> anyhow::Result<()> {
    let (v, e, h, f, t) = (
        decoder.vocab_size as f64,
        decoder.embed as f64,
        decoder.hidden as f64,
        decoder.feature_dim as f64,
        decoder.max_length as f64,
    );
    let decoder_params = v * e + 4.0 * h * (e + h) + 8.0 * h + h * f + h * h + 2.0 * h + v * h + v;
    // Per caption and time step: embedding, LSTM gates and states, dense layers, logits with
    // their softmax and gradient.
    let per_caption = 4.0 * t * (e + 11.0 * h + 3.0 * v);
    let mut parts = vec![
        (
            format!("--embed {} and --hidden {}", s.embed, s.hidden),
            PARAMETER_BYTES * decoder_params,
        ),
        (
            format!("--batch-size {}", s.batch_size),
            captions_per_step * per_caption,
        ),
        ("the dataset".to_owned(), resident_bytes),
    ];
    if let Some((activations, (params, tensors), side)) = encoder {
        parts.push((
            format!("--encoder-config {encoder_config}"),
            PARAMETER_BYTES * params + TENSOR_OVERHEAD_BYTES * tensors,
        ));
        parts.push((
            format!(
                "--batch-size {} (images of {side} x {side} px)",
                s.batch_size
            ),
            4.0 * s.batch_size as f64 * activations,
        ));
    }
    let (setting, total) = dominant(&parts);
    crate::resources::check_memory(&setting, total)?;
    Ok(())
}
