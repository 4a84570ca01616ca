//! Helpers shared by the parity tests.

use candle_core::Tensor;

/// max |ours - reference| / max |reference|: the parity tests' relative error.
pub fn rel_err(ours: &Tensor, reference: &Tensor) -> f32 {
    assert_eq!(ours.dims(), reference.dims(), "shapes differ");
    let max_abs = |t: &Tensor| {
        t.abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    };
    max_abs(&(ours - reference).unwrap()) / max_abs(reference).max(1e-12)
}
