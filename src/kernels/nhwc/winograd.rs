//! 3 x 3 convolution (stride 1, padding 1) of an NHWC input by Winograd F(m x m, 3 x 3): input
//! transform kernel, one batched GEMM, output transform kernel (VGG16's layers with at least 8
//! input channels). Changes rounding only; checked against im2col by the unit test below.

use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor};

use super::{Pre, BAND_ELEMS};
use crate::kernels::{f32_slice, par_rows};

/// Winograd transforms F(m x m, 3 x 3) (Lavin & Gray 2016, "Fast Algorithms for Convolutional
/// Neural Networks"): tiles of n = m + 2 input pixels give m x m outputs with n^2 instead of
/// 9 m^2 multiplications per (input, output) channel pair, i.e. 2.25x (m = 2) or 4x (m = 4)
/// less GEMM work than im2col. `bt` is B^T [n, n], `g` is G [n, 3], `at` is A^T [m, n].
struct Winograd {
    bt: &'static [&'static [f64]],
    g: &'static [[f64; 3]],
    at: &'static [&'static [f64]],
}

/// Interpolation points 0, 1, -1, infinity.
const F2: Winograd = Winograd {
    bt: &[
        &[1.0, 0.0, -1.0, 0.0],
        &[0.0, 1.0, 1.0, 0.0],
        &[0.0, -1.0, 1.0, 0.0],
        &[0.0, 1.0, 0.0, -1.0],
    ],
    g: &[
        [1.0, 0.0, 0.0],
        [0.5, 0.5, 0.5],
        [0.5, -0.5, 0.5],
        [0.0, 0.0, 1.0],
    ],
    at: &[&[1.0, 1.0, 1.0, 0.0], &[0.0, 1.0, -1.0, -1.0]],
};

/// Interpolation points 0, 1, -1, 2, -2, infinity.
const F4: Winograd = Winograd {
    bt: &[
        &[4.0, 0.0, -5.0, 0.0, 1.0, 0.0],
        &[0.0, -4.0, -4.0, 1.0, 1.0, 0.0],
        &[0.0, 4.0, -4.0, -1.0, 1.0, 0.0],
        &[0.0, -2.0, -1.0, 2.0, 1.0, 0.0],
        &[0.0, 2.0, -1.0, -2.0, 1.0, 0.0],
        &[0.0, 4.0, 0.0, -5.0, 0.0, 1.0],
    ],
    g: &[
        [1.0 / 4.0, 0.0, 0.0],
        [-1.0 / 6.0, -1.0 / 6.0, -1.0 / 6.0],
        [-1.0 / 6.0, 1.0 / 6.0, -1.0 / 6.0],
        [1.0 / 24.0, 1.0 / 12.0, 1.0 / 6.0],
        [1.0 / 24.0, -1.0 / 12.0, 1.0 / 6.0],
        [0.0, 0.0, 1.0],
    ],
    at: &[
        &[1.0, 1.0, 1.0, 1.0, 1.0, 0.0],
        &[0.0, 1.0, -1.0, 2.0, -2.0, 0.0],
        &[0.0, 1.0, 1.0, 4.0, 4.0, 0.0],
        &[0.0, 1.0, -1.0, 8.0, -8.0, 1.0],
    ],
};

fn winograd(m: usize) -> candle_core::Result<&'static Winograd> {
    match m {
        2 => Ok(&F2),
        4 => Ok(&F4),
        _ => candle_core::bail!("winograd: output tile {m} not supported (2 or 4)"),
    }
}

/// The output tile for a 3 x 3, stride-1, padding-1 convolution of an h x w map: 4 when both
/// sides are multiples of 4, else 2 when both are even, else None (use im2col).
pub fn winograd_tile(h: usize, w: usize) -> Option<usize> {
    if h.is_multiple_of(4) && w.is_multiple_of(4) {
        Some(4)
    } else if h.is_multiple_of(2) && w.is_multiple_of(2) {
        Some(2)
    } else {
        None
    }
}

/// The transformed filter U = G g G^T of a [O, C, 3, 3] weight, as [n^2, C, O] f32 (computed
/// in f64).
pub fn winograd_weight(w: &Tensor, m: usize) -> candle_core::Result<Tensor> {
    let t = winograd(m)?;
    let n = m + 2;
    let (o, c, kh, kw) = w.dims4()?;
    if (kh, kw) != (3, 3) {
        candle_core::bail!("winograd: 3 x 3 kernels only, got {kh} x {kw}");
    }
    let g: Vec<f64> = w
        .to_dtype(candle_core::DType::F64)?
        .flatten_all()?
        .to_vec1()?;
    let mut u = vec![0f32; n * n * c * o];
    let mut tmp = vec![[0f64; 3]; n];
    for oi in 0..o {
        for ci in 0..c {
            let k = &g[(oi * c + ci) * 9..][..9];
            // tmp = G k [n, 3]; U = tmp G^T [n, n]
            for (i, row) in tmp.iter_mut().enumerate() {
                for (j, v) in row.iter_mut().enumerate() {
                    *v = (0..3).map(|r| t.g[i][r] * k[r * 3 + j]).sum();
                }
            }
            for (i, row) in tmp.iter().enumerate() {
                for (j, gj) in t.g.iter().enumerate() {
                    let v: f64 = (0..3).map(|r| row[r] * gj[r]).sum();
                    u[((i * n + j) * c + ci) * o + oi] = v as f32;
                }
            }
        }
    }
    Tensor::from_vec(u, (n * n, c, o), w.device())
}

/// Input transform V = B^T d B of every n x n tile (stride m, origin at (-1, -1): padding 1)
/// of the tile rows `rows` of the flattened (b, ty) grid, read through `pre`, as
/// [tiles, n^2, C] (tile-major, so that each tile is one contiguous block).
struct WinogradIn {
    m: usize,
    rows: std::ops::Range<usize>,
    pre: Pre,
}

impl CustomOp1 for WinogradIn {
    fn name(&self) -> &'static str {
        "winograd-in-nhwc"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = f32_slice(s, l, self.name())?;
        let (_, h, w, c) = l.shape().dims4()?;
        self.pre.check(c, self.name())?;
        let (m, t) = (self.m, winograd(self.m)?);
        let n = m + 2;
        let (ty_n, tx_n) = (h.div_ceil(m), w.div_ceil(m));
        let tiles = self.rows.len() * tx_n;
        let mut out = vec![0f32; tiles * n * n * c];
        let r0 = self.rows.start;
        par_rows(&mut out, n * n * c, |first, band| {
            let mut d = vec![0f32; n * n * c];
            let mut tmp = vec![0f32; n * n * c];
            for (i, v) in band.chunks_exact_mut(n * n * c).enumerate() {
                let tile = first + i;
                let r = r0 + tile / tx_n;
                let (b, ty, tx) = (r / ty_n, r % ty_n, tile % tx_n);
                // Gather the tile (zeros outside the map).
                d.fill(0.0);
                let x0 = (tx * m) as isize - 1;
                let lo = (-x0).max(0) as usize;
                let hi = n.min((w as isize - x0) as usize);
                for ky in 0..n {
                    let iy = (ty * m + ky) as isize - 1;
                    if iy < 0 || iy >= h as isize {
                        continue;
                    }
                    let irow = &x[(b * h + iy as usize) * w * c..][..w * c];
                    for kx in lo..hi {
                        let ix = (x0 + kx as isize) as usize;
                        self.pre.pixels(
                            &irow[ix * c..(ix + 1) * c],
                            &mut d[(ky * n + kx) * c..][..c],
                        );
                    }
                }
                // tmp = B^T d (over tile rows), v = tmp B (over tile columns).
                tmp.fill(0.0);
                for (i, bt) in t.bt.iter().enumerate() {
                    for (k, &coef) in bt.iter().enumerate() {
                        if coef != 0.0 {
                            axpy(
                                &mut tmp[i * n * c..][..n * c],
                                &d[k * n * c..][..n * c],
                                coef,
                            );
                        }
                    }
                }
                v.fill(0.0);
                for i in 0..n {
                    for (j, bt) in t.bt.iter().enumerate() {
                        for (k, &coef) in bt.iter().enumerate() {
                            if coef != 0.0 {
                                axpy(
                                    &mut v[(i * n + j) * c..][..c],
                                    &tmp[(i * n + k) * c..][..c],
                                    coef,
                                );
                            }
                        }
                    }
                }
            }
        });
        Ok((CpuStorage::F32(out), Shape::from((tiles, n * n, c))))
    }
}

/// y += a * x.
#[inline]
fn axpy(y: &mut [f32], x: &[f32], a: f64) {
    let a = a as f32;
    for (y, &x) in y.iter_mut().zip(x) {
        *y += a * x;
    }
}

/// Output transform Y = A^T M A of the products M [n^2, tiles, O] of whole tile rows, written
/// as the image rows they cover: [tile rows * m, w, O] (w a multiple of m).
struct WinogradOut {
    m: usize,
    w: usize,
}

impl CustomOp1 for WinogradOut {
    fn name(&self) -> &'static str {
        "winograd-out-nhwc"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let mm = f32_slice(s, l, self.name())?;
        let (nn, tiles, o) = l.shape().dims3()?;
        let (m, t, w) = (self.m, winograd(self.m)?, self.w);
        let n = m + 2;
        if nn != n * n || w % m != 0 || tiles % (w / m) != 0 {
            candle_core::bail!("winograd-out: bad shape {:?} for m {m}, w {w}", l.dims());
        }
        let tx_n = w / m;
        let rows = tiles / tx_n;
        let mut out = vec![0f32; rows * m * w * o];
        par_rows(&mut out, m * w * o, |first, band| {
            let mut tmp = vec![0f32; m * n * o];
            let mut y = vec![0f32; m * m * o];
            for (i, orows) in band.chunks_exact_mut(m * w * o).enumerate() {
                let r = first + i;
                for tx in 0..tx_n {
                    let tile = r * tx_n + tx;
                    let prod = |xi: usize| &mm[(xi * tiles + tile) * o..][..o];
                    // tmp = A^T M (over tile rows), y = tmp A (over tile columns).
                    tmp.fill(0.0);
                    for (a, row) in t.at.iter().enumerate() {
                        for (k, &coef) in row.iter().enumerate() {
                            if coef != 0.0 {
                                for j in 0..n {
                                    axpy(&mut tmp[(a * n + j) * o..][..o], prod(k * n + j), coef);
                                }
                            }
                        }
                    }
                    y.fill(0.0);
                    for a in 0..m {
                        for (col, row) in t.at.iter().enumerate() {
                            for (k, &coef) in row.iter().enumerate() {
                                if coef != 0.0 {
                                    axpy(
                                        &mut y[(a * m + col) * o..][..o],
                                        &tmp[(a * n + k) * o..][..o],
                                        coef,
                                    );
                                }
                            }
                        }
                    }
                    for a in 0..m {
                        orows[(a * w + tx * m) * o..][..m * o]
                            .copy_from_slice(&y[a * m * o..(a + 1) * m * o]);
                    }
                }
            }
        });
        Ok((CpuStorage::F32(out), Shape::from((rows * m, w, o))))
    }
}

/// 3 x 3 convolution, stride 1, padding 1, of an NHWC input read through `pre`, by Winograd
/// F(m x m, 3 x 3): `u` is [`winograd_weight`] ([n^2, C, O]); h and w must be multiples of m
/// ([`winograd_tile`]). Band by band: input transform, n^2 GEMMs [tiles, C] x [C, O] (one
/// batched matmul), output transform. Returns [B, H, W, O] without bias.
pub fn conv_winograd(x: &Tensor, u: &Tensor, m: usize, pre: &Pre) -> candle_core::Result<Tensor> {
    let (b, h, w, c) = x.dims4()?;
    let n = m + 2;
    if h % m != 0 || w % m != 0 {
        candle_core::bail!("winograd: the map {h} x {w} is not a multiple of the tile {m}");
    }
    let o = u.dim(2)?;
    let (ty_n, tx_n) = (h / m, w / m);
    let row_elems = tx_n * n * n * c;
    let total = b * ty_n;
    let band = (BAND_ELEMS / row_elems.max(1)).clamp(1, total);
    let mut parts = Vec::with_capacity(total.div_ceil(band));
    let mut r = 0;
    while r < total {
        let end = (r + band).min(total);
        let v = x.apply_op1(WinogradIn {
            m,
            rows: r..end,
            pre: pre.clone(),
        })?;
        // [tiles, n^2, C] viewed as [n^2, tiles, C] (strided; the GEMM reads it in place).
        let prod = v.transpose(0, 1)?.matmul(u)?;
        parts.push(prod.apply_op1(WinogradOut { m, w })?);
        r = end;
    }
    let y = if parts.len() == 1 {
        parts.pop().expect("one part")
    } else {
        Tensor::cat(&parts, 0)?
    };
    y.reshape((b, h, w, o))
}

#[cfg(test)]
mod tests {
    use crate::kernels::nhwc::{self, Pre};
    use candle_core::{Device, Tensor};
    use rand::SeedableRng;
    use rand_distr::Distribution;

    fn randn(shape: &[usize], mean: f32, std: f32, seed: u64) -> Tensor {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let d = rand_distr::Normal::new(mean, std).unwrap();
        let n = shape.iter().product();
        let v: Vec<f32> = (0..n).map(|_| d.sample(&mut rng)).collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    fn rel(a: &Tensor, b: &Tensor) -> f64 {
        let a: Vec<f32> = a.flatten_all().unwrap().to_vec1().unwrap();
        let b: Vec<f32> = b.flatten_all().unwrap().to_vec1().unwrap();
        let d = a
            .iter()
            .zip(&b)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        let s = b.iter().map(|y| y.abs()).fold(0f32, f32::max);
        (d / s) as f64
    }

    /// Winograd F(2x2) and F(4x4) agree with im2col (f32 rounding only), through `pre`.
    #[test]
    fn winograd_matches_im2col() {
        for (i, &(b, h, c, o, mean)) in [
            (2, 12, 16, 8, 0.0),
            (1, 28, 256, 64, 0.0),
            (1, 28, 256, 64, 5.0),
        ]
        .iter()
        .enumerate()
        {
            let x = randn(&[b, h, h, c], mean, 1.0, 1 + i as u64);
            let w = randn(
                &[o, c, 3, 3],
                0.0,
                (2.0 / (9 * c) as f32).sqrt(),
                100 + i as u64,
            );
            let bias: Vec<f32> = (0..c).map(|k| (k as f32 * 0.37).sin()).collect();
            let pre = Pre {
                bias: Some(bias.into()),
                relu: true,
            };
            let w2 = w
                .permute((2, 3, 1, 0))
                .unwrap()
                .contiguous()
                .unwrap()
                .reshape((9 * c, o))
                .unwrap();
            let direct = nhwc::conv_im2col(&x, &w2, 3, 1, 1, &pre).unwrap();
            for m in [2, 4] {
                let u = nhwc::winograd_weight(&w, m).unwrap();
                let y = nhwc::conv_winograd(&x, &u, m, &pre).unwrap();
                let r = rel(&y, &direct);
                eprintln!("case {i} m {m}: max rel err {r:.2e}");
                assert!(r < 1e-5, "case {i}, m {m}: {r:e}");
            }
        }
    }
}
