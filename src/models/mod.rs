//! Neural network models, one file per model: a `Config`, `new(vb, &cfg)` with the published
//! checkpoint's tensor names, and `forward`. Errors inside models are `candle_core::Result`.

pub mod biggan;
pub mod clip;
pub mod fused;
pub mod lstm_decoder;
pub mod pth;
pub mod sine;
pub mod siren;
pub mod trainable;
pub mod vgg16;
pub mod xception;

use std::cell::Cell;
use std::collections::HashMap;

use candle_core::{DType, Device, Result, Tensor};
use candle_nn::{VarBuilder, VarMap};
use rand::SeedableRng;
use rand_distr::Distribution;

thread_local! {
    static PORTABLE: Cell<bool> = const { Cell::new(false) };
}

/// Whether the hand-written f32 CPU kernels (fused CLIP ops, SIREN sine layers, the encoders'
/// NHWC kernels) serve tensors on `device`. They exist for the CPU only; on CUDA or Metal every
/// model takes its portable path, plain candle ops that each backend implements.
/// [`with_portable_ops`] forces that path on the CPU too, so tests check it against the kernels.
pub fn native_kernels(device: &Device) -> bool {
    device.is_cpu() && !PORTABLE.with(Cell::get)
}

/// Runs `f` with the portable (GPU) code path on the CPU: models built and run inside `f`, on this
/// thread, use plain candle ops instead of the CPU kernels. For tests and benchmarks.
pub fn with_portable_ops<T>(f: impl FnOnce() -> T) -> T {
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            PORTABLE.with(|p| p.set(self.0));
        }
    }
    let _restore = Restore(PORTABLE.with(|p| p.replace(true)));
    f()
}

/// `dst = a @ b` (or `dst += a @ b` with `accumulate`) for an [m, k] x [k, n] product on the
/// calling thread, every operand given by pointer and strides: `dst` by its row stride (its
/// columns are adjacent), `a` and `b` by (row stride, column stride). For kernels that multiply
/// blocks or strided views in place (SIREN layers, attention heads) without candle tensors.
///
/// # Safety
/// The pointers must cover the shapes and strides given; `dst` is written (and read when
/// `accumulate`) and must not overlap `a` or `b`.
pub(crate) unsafe fn gemm_1t(
    (m, n, k): (usize, usize, usize),
    (dst, dst_rs): (*mut f32, usize),
    accumulate: bool,
    a: *const f32,
    (a_rs, a_cs): (usize, usize),
    b: *const f32,
    (b_rs, b_cs): (usize, usize),
) {
    gemm::gemm(
        m,
        n,
        k,
        dst,
        1,
        dst_rs as isize,
        accumulate,
        a,
        a_cs as isize,
        a_rs as isize,
        b,
        b_cs as isize,
        b_rs as isize,
        1.0,
        1.0,
        false,
        false,
        false,
        gemm::Parallelism::None,
    )
}

/// Seeded random weights for any model: builds it once to learn its tensor names and shapes,
/// then fills each tensor from N(0, std) drawn on the host (candle's CPU RNG cannot be seeded).
/// Used for benchmarks and tests that need full-size geometry without a checkpoint.
pub fn seeded_random_weights<T>(
    build: impl Fn(VarBuilder) -> Result<T>,
    seed: u64,
    std: f32,
    device: &Device,
) -> Result<HashMap<String, Tensor>> {
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

/// The contiguous f32 data of a CPU tensor argument of a custom op, or an error naming the op.
pub(crate) fn f32_slice<'a>(
    s: &'a candle_core::CpuStorage,
    l: &candle_core::Layout,
    op: &str,
) -> Result<&'a [f32]> {
    let candle_core::CpuStorage::F32(v) = s else {
        candle_core::bail!(
            "{op}: expected f32, got {:?}",
            candle_core::backend::BackendStorage::dtype(s)
        )
    };
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&v[a..b]),
        None => candle_core::bail!("{op}: expected a contiguous tensor"),
    }
}
