//! Hand-written f32 CPU kernels, as candle custom ops, and the switch between them and the
//! portable path.
//!
//! Every model has two code paths. On the CPU, the hot spots run as kernels written here, each
//! one parallel pass (or a few) over contiguous f32 data instead of a chain of allocating candle
//! ops: CLIP's fused LayerNorm, QuickGELU and attention ([`clip_fused`]), BLIP's GELU and
//! attention ([`blip_fused`]), SIREN's sine layers
//! ([`sine`]), and the frozen encoders' channels-last convolutions, pools and bias/ReLU
//! transforms ([`nhwc`]). On CUDA or Metal, or on the CPU inside [`with_portable_ops`], the same
//! functions run as plain candle ops that every backend implements; [`native_kernels`] decides.
//! Tests and benchmarks compare the two paths.
//!
//! Also here: the helpers the kernels share ([`gemm_1t`], a single-threaded strided GEMM;
//! `f32_slice`, a custom op's CPU operand; `par_rows`, banded work over candle's threads).

pub mod blip_fused;
pub mod clip_fused;
pub mod nhwc;
pub mod sine;

use std::cell::Cell;

use candle_core::{Device, Result};

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

/// Below this many output elements a kernel runs on one thread.
const PAR_MIN: usize = 1 << 15;

/// Runs `f(first_row, rows)` over `out` split into bands of whole rows, one per thread of the
/// current rayon pool (a `run` job's share of the cores).
pub(crate) fn par_rows(out: &mut [f32], row_len: usize, f: impl Fn(usize, &mut [f32]) + Sync) {
    let rows = out.len() / row_len.max(1);
    let threads = rayon::current_num_threads().clamp(1, rows.max(1));
    if threads == 1 || out.len() < PAR_MIN {
        f(0, out);
        return;
    }
    let per = rows.div_ceil(threads);
    std::thread::scope(|s| {
        for (i, band) in out.chunks_mut(per * row_len).enumerate() {
            let f = &f;
            s.spawn(move || f(i * per, band));
        }
    });
}
