//! Differentiable building blocks of the trainable encoders, on activations laid out **CBHW**
//! ([C, B, H, W]: each channel's maps of the whole batch side by side). In that layout a
//! convolution is one matrix product for the whole batch, [O, C k k] x [C k k, B Ho Wo], whose
//! result is already CBHW, and every per-channel quantity (BatchNorm statistics, bias gradients)
//! is a sum over one contiguous block; no transpose and no reduction over the batch is needed
//! (with NCHW, candle spends most of a step transposing and reducing). Each op has a
//! hand-written backward and is checked against a composition of candle ops (values and
//! gradients) by the unit tests below:
//!
//! - [`conv2d`]: convolution by im2col and one matrix product, a single graph node whose
//!   backward (the weight's gradient, col2im of the columns') is written here: candle's backward
//!   would add each intermediate's gradient (the columns' is k^2 times the input's) to zeros.
//! - [`bias_relu`], [`relu`]: one pass each way (candle's `relu` backward takes four).
//! - [`batch_norm`]: BatchNorm with given or batch statistics, optionally fused with a ReLU.
//! - [`depthwise3x3`]: depthwise 3 x 3 convolution, stride 1, padding 1 (Xception's separable
//!   convolutions). Three ways are provided, [`Depthwise`]; the custom kernel is the default
//!   (`examples/train_encoder_step.rs` times them: candle's grouped `conv2d` and nine shifted
//!   multiply-adds in candle ops are several times slower).
//! - [`max_pool`]: k x k max pooling with stride and padding (padding never wins), PyTorch's
//!   semantics; candle's `max_pool2d` has a backward only when the kernel equals the stride, and
//!   Xception pools 3 x 3 with stride 2 and padding 1. The gradient goes to the first maximum of
//!   each window in scan order, as PyTorch does. [`avg_pool2x`]: 2 x 2 average pooling, one pass
//!   each way (the GAN's discriminator).
//!
//! All are f32, CPU only; work is split over candle's thread count.
//!
//! Files, one per op family: [`conv`], [`activation`], [`batch_norm`], [`depthwise`], [`pool`];
//! here the layout helpers they share and the unit tests' helpers.

mod activation;
mod batch_norm;
mod conv;
mod depthwise;
mod pool;

use candle_core::{Result, Tensor};

pub use activation::{bias_relu, relu};
pub use batch_norm::{batch_norm, ChannelStats};
pub use conv::conv2d;
pub use depthwise::{depthwise3x3, Depthwise, DepthwiseOp};
pub use pool::{avg_pool2x, max_pool};

use crate::kernels::par_rows;

/// Runs `f(index, block)` over `out` split into consecutive blocks of `len` elements, in
/// parallel (blocks are whole: a channel, a plane, ...).
fn blocks(out: &mut [f32], len: usize, f: impl Fn(usize, &mut [f32]) + Sync) {
    if len == 0 {
        return;
    }
    par_rows(out, len, |first, band| {
        for (i, o) in band.chunks_exact_mut(len).enumerate() {
            f(first + i, o);
        }
    });
}

/// NCHW [B, C, H, W] -> CBHW [C, B, H, W] (or back: the permutation is its own inverse).
pub fn swap_batch_channels(x: &Tensor) -> Result<Tensor> {
    x.permute((1, 0, 2, 3))?.contiguous()
}

/// Helpers of the op files' unit tests: seeded inputs, and values and gradients compared with a
/// candle-op composition.
#[cfg(test)]
mod test_util {
    use super::swap_batch_channels;
    use candle_core::{Device, Tensor, Var};
    use rand::SeedableRng;
    use rand_distr::Distribution;

    pub(super) fn randn(shape: &[usize], seed: u64) -> Tensor {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let d = rand_distr::Normal::new(0f32, 1.0).unwrap();
        let v: Vec<f32> = (0..shape.iter().product())
            .map(|_| d.sample(&mut rng))
            .collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    pub(super) fn max_rel(a: &Tensor, b: &Tensor) -> f32 {
        let a: Vec<f32> = a.flatten_all().unwrap().to_vec1().unwrap();
        let b: Vec<f32> = b.flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(a.len(), b.len());
        let d = a
            .iter()
            .zip(&b)
            .map(|(x, y)| (x - y).abs())
            .fold(0., f32::max);
        d / b.iter().map(|y| y.abs()).fold(0., f32::max)
    }

    /// Gradients of sum(y * r) with respect to `vars`, for two ways of computing y: (ours, theirs).
    pub(super) fn compare(
        ours: &Tensor,
        theirs: &Tensor,
        vars: &[&Var],
        seed: u64,
        tol: f32,
        what: &str,
    ) {
        let v = max_rel(ours, theirs);
        assert!(v <= tol, "{what}: value {v:e}");
        let r = randn(theirs.dims(), seed);
        let g1 = (ours * &r).unwrap().sum_all().unwrap().backward().unwrap();
        let g2 = (theirs * &r)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        for (i, p) in vars.iter().enumerate() {
            let (a, b) = (
                g1.get(p.as_tensor()).unwrap(),
                g2.get(p.as_tensor()).unwrap(),
            );
            let e = max_rel(a, b);
            assert!(e <= tol, "{what}: gradient of argument {i}: {e:e}");
        }
    }

    /// An NCHW tensor through a CBHW op and back.
    pub(super) fn via_cbhw(x: &Tensor, f: impl Fn(&Tensor) -> Tensor) -> Tensor {
        swap_batch_channels(&f(&swap_batch_channels(x).unwrap())).unwrap()
    }
}
