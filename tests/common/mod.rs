//! Helpers shared by the parity tests (each test crate uses a subset).
#![allow(dead_code)]

use candle_core::{DType, Tensor};

pub fn flat(t: &Tensor) -> Vec<f64> {
    t.to_dtype(DType::F64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

/// max |ours - reference| / max |reference|, shapes checked; printed under `name` (shown with
/// `--nocapture`) so that parity numbers can be quoted.
pub fn rel(name: &str, ours: &Tensor, reference: &Tensor) -> f64 {
    assert_eq!(ours.dims(), reference.dims(), "{name}: shapes differ");
    let (a, b) = (flat(ours), flat(reference));
    let diff = a
        .iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max);
    let scale = b.iter().map(|y| y.abs()).fold(0.0, f64::max);
    assert!(scale > 0.0, "{name}: all-zero reference");
    let r = diff / scale;
    eprintln!("{name:<34} max rel err {r:.3e}");
    r
}

/// [`rel`] without a name.
pub fn rel_err(ours: &Tensor, reference: &Tensor) -> f64 {
    rel("", ours, reference)
}
