//! Image resizes, each matching one reference implementation (named in its doc comment):
//!
//! - on tensors, differentiable: [`resize_bilinear`] and [`resize_nearest`], PyTorch's
//!   `F.interpolate` (bilinear with `align_corners=False`, nearest), used by the generators'
//!   cutouts and CLIP-sized views. candle's `upsample_bilinear2d` has no backward (and
//!   `upsample_nearest2d`'s is unreliable), so each is two matrix products with interpolation
//!   matrices (rows: output pixels, columns: input pixels), which candle can differentiate and
//!   which run as plain GEMMs;
//! - on 8-bit RGB images, bit for bit as PIL's `Image.resize`: [`pil_resize_nearest`] (Keras'
//!   `load_img`, the captioners' encoders) and [`pil_resize_bicubic`] (CLIPImageProcessor).

use candle_core::{Result, Tensor};

/// The [out, in] matrix of PyTorch's `interpolate(mode="bilinear", align_corners=False)` along one
/// axis (no antialiasing): output i samples the input at (i + 0.5) * in / out - 0.5, clamped at 0.
pub fn bilinear_matrix(input: usize, output: usize) -> Vec<f32> {
    let mut m = vec![0f32; output * input];
    for (i, (i0, i1, l1)) in bilinear_taps(input, output).into_iter().enumerate() {
        m[i * input + i0] += 1.0 - l1;
        m[i * input + i1] += l1;
    }
    m
}

/// The two taps of each output pixel of [`bilinear_matrix`]: `(i0, i1, l1)`, the output being
/// `(1 - l1) * in[i0] + l1 * in[i1]`.
pub fn bilinear_taps(input: usize, output: usize) -> Vec<(usize, usize, f32)> {
    let scale = input as f32 / output as f32;
    (0..output)
        .map(|i| {
            let src = ((i as f32 + 0.5) * scale - 0.5).max(0.0);
            let i0 = (src as usize).min(input - 1);
            let i1 = if i0 + 1 < input { i0 + 1 } else { i0 };
            (i0, i1, src - i0 as f32)
        })
        .collect()
}

/// Bilinear resize of [.., H, W] to [.., out_h, out_w] (align_corners = false), differentiable:
/// PyTorch's `F.interpolate(mode="bilinear", align_corners=False)` without antialiasing.
pub fn resize_bilinear(x: &Tensor, out_h: usize, out_w: usize) -> Result<Tensor> {
    let d = x.dims();
    if d.len() < 2 {
        candle_core::bail!("resize_bilinear needs at least 2 dimensions, got {d:?}")
    }
    let (h, w) = (d[d.len() - 2], d[d.len() - 1]);
    if (h, w) == (out_h, out_w) {
        return Ok(x.clone());
    }
    resize_with(x, out_h, out_w, bilinear_matrix)
}

/// PyTorch's `F.interpolate(mode="nearest")` as an [output, input] selection matrix: output
/// pixel i takes input pixel floor(i * input / output) (the scale computed in f32, as PyTorch's
/// CPU kernel does).
pub fn nearest_matrix(input: usize, output: usize) -> Vec<f32> {
    let scale = input as f32 / output as f32;
    let mut m = vec![0f32; output * input];
    for i in 0..output {
        let src = ((i as f32 * scale).floor() as usize).min(input.saturating_sub(1));
        m[i * input + src] = 1.0;
    }
    m
}

/// Nearest-neighbour resize of [.., H, W] to [.., out_h, out_w] as PyTorch's default
/// interpolation does; two matrix products, so differentiable (candle's `upsample_nearest2d`
/// backward is unreliable, reference section 7).
pub fn resize_nearest(x: &Tensor, out_h: usize, out_w: usize) -> Result<Tensor> {
    let d = x.dims();
    if d.len() < 2 {
        candle_core::bail!("resize_nearest needs at least 2 dimensions, got {d:?}")
    }
    let (h, w) = (d[d.len() - 2], d[d.len() - 1]);
    if (h, w) == (out_h, out_w) {
        return Ok(x.clone());
    }
    resize_with(x, out_h, out_w, nearest_matrix)
}

/// `x` [.., H, W] resized by [out, in] interpolation matrices along both axes.
fn resize_with(
    x: &Tensor,
    out_h: usize,
    out_w: usize,
    matrix: fn(usize, usize) -> Vec<f32>,
) -> Result<Tensor> {
    let d = x.dims();
    let (h, w) = (d[d.len() - 2], d[d.len() - 1]);
    let dev = x.device();
    let rw_t = Tensor::from_vec(matrix(w, out_w), (out_w, w), dev)?
        .t()?
        .to_dtype(x.dtype())?;
    let rh = Tensor::from_vec(matrix(h, out_h), (out_h, h), dev)?.to_dtype(x.dtype())?;
    let cols = x.broadcast_matmul(&rw_t)?; // [.., H, out_w]
    rh.broadcast_matmul(&cols) // [.., out_h, out_w]
}

/// `Image.resize((new_w, new_h), Image.NEAREST)` bit for bit, as Pillow's `ImagingScaleAffine`:
/// source column of output x is `(int)xo` where `xo` starts at `scale / 2` (scale = in / out, in
/// f64) and grows by `scale` per column (accumulated, as Pillow does); likewise for rows. An image
/// already new_w x new_h is returned unchanged (Pillow copies it).
pub fn pil_resize_nearest(img: &image::RgbImage, new_w: usize, new_h: usize) -> image::RgbImage {
    let (w, h) = (img.width() as usize, img.height() as usize);
    if (w, h) == (new_w, new_h) {
        return img.clone();
    }
    let table = |input: usize, output: usize| -> Vec<usize> {
        let scale = input as f64 / output as f64;
        let mut pos = scale * 0.5;
        (0..output)
            .map(|_| {
                let i = (pos as usize).min(input.saturating_sub(1));
                pos += scale;
                i
            })
            .collect()
    };
    let (xs, ys) = (table(w, new_w), table(h, new_h));
    let src = img.as_raw();
    let mut out = Vec::with_capacity(new_w * new_h * 3);
    for &y in &ys {
        let row = &src[y * w * 3..(y + 1) * w * 3];
        for &x in &xs {
            out.extend_from_slice(&row[x * 3..x * 3 + 3]);
        }
    }
    image::RgbImage::from_raw(new_w as u32, new_h as u32, out)
        .expect("the buffer has new_w * new_h * 3 bytes by construction")
}

/// PIL's fixed-point precision for 8-bit resampling (`PRECISION_BITS` in Resample.c).
const PRECISION_BITS: u32 = 32 - 8 - 2;

/// PIL's bicubic kernel (a = -0.5).
fn bicubic(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}

/// PIL's `precompute_coeffs` + `normalize_coeffs_8bpc`: per output pixel, the first input index
/// and the fixed-point weights. The support widens by the downscale factor (antialiasing).
fn pil_coeffs(in_size: usize, out_size: usize) -> Vec<(usize, Vec<i32>)> {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = 2.0 * filterscale;
    (0..out_size)
        .map(|xx| {
            let center = (xx as f64 + 0.5) * scale;
            let ss = 1.0 / filterscale;
            // C's (int) cast truncates toward zero, as `as` does.
            let xmin = ((center - support + 0.5) as i64).max(0) as usize;
            let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
            let w: Vec<f64> = (xmin..xmax)
                .map(|x| bicubic((x as f64 - center + 0.5) * ss))
                .collect();
            let total: f64 = w.iter().sum();
            let one = (1u32 << PRECISION_BITS) as f64;
            let k = w
                .iter()
                .map(|&v| {
                    let v = if total != 0.0 { v / total } else { v };
                    if v < 0.0 {
                        (-0.5 + v * one) as i32
                    } else {
                        (0.5 + v * one) as i32
                    }
                })
                .collect();
            (xmin, k)
        })
        .collect()
}

/// `Image.resize((new_w, new_h), Image.BICUBIC)` bit for bit, as PIL's Resample.c: horizontal
/// pass first, fixed-point sums with a rounding offset, shifted and clipped to uint8 after each
/// pass; a pass is skipped when its size is unchanged. The kernel support widens by the downscale
/// factor, so downscaling antialiases (unlike `image`'s `CatmullRom`).
pub fn pil_resize_bicubic(img: &image::RgbImage, new_w: usize, new_h: usize) -> image::RgbImage {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let out = pil_resize_u8(img.as_raw(), w, h, 3, new_w, new_h);
    image::RgbImage::from_raw(new_w as u32, new_h as u32, out)
        .expect("the buffer has new_w * new_h * 3 bytes by construction")
}

fn pil_resize_u8(
    src: &[u8],
    w: usize,
    h: usize,
    chans: usize,
    new_w: usize,
    new_h: usize,
) -> Vec<u8> {
    let round = |acc: i64| (acc >> PRECISION_BITS).clamp(0, 255) as u8;
    let horiz = if new_w == w {
        src.to_vec()
    } else {
        let coeffs = pil_coeffs(w, new_w);
        let mut out = vec![0u8; h * new_w * chans];
        for y in 0..h {
            for (x, (start, k)) in coeffs.iter().enumerate() {
                for c in 0..chans {
                    let mut acc: i64 = 1 << (PRECISION_BITS - 1);
                    for (i, &wt) in k.iter().enumerate() {
                        acc += i64::from(src[(y * w + start + i) * chans + c]) * i64::from(wt);
                    }
                    out[(y * new_w + x) * chans + c] = round(acc);
                }
            }
        }
        out
    };
    if new_h == h {
        return horiz;
    }
    let coeffs = pil_coeffs(h, new_h);
    let row = new_w * chans;
    let mut out = vec![0u8; new_h * row];
    for (y, (start, k)) in coeffs.iter().enumerate() {
        for j in 0..row {
            let mut acc: i64 = 1 << (PRECISION_BITS - 1);
            for (i, &wt) in k.iter().enumerate() {
                acc += i64::from(horiz[(start + i) * row + j]) * i64::from(wt);
            }
            out[y * row + j] = round(acc);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// PyTorch's `F.interpolate(mode="nearest")` source indices: floor(i * in / out).
    #[test]
    fn nearest_picks_pytorchs_source_pixels() {
        let src = |input: usize, output: usize| -> Vec<usize> {
            nearest_matrix(input, output)
                .chunks(input)
                .map(|row| row.iter().position(|v| *v == 1.0).unwrap())
                .collect()
        };
        assert_eq!(src(5, 3), [0, 1, 3]);
        assert_eq!(src(3, 7), [0, 0, 0, 1, 1, 2, 2]);
        assert_eq!(src(4, 4), [0, 1, 2, 3]);
        let x = Tensor::arange(0f32, 12.0, &Device::Cpu)
            .unwrap()
            .reshape((1, 3, 4))
            .unwrap();
        let y = resize_nearest(&x, 2, 2).unwrap();
        assert_eq!(y.to_vec3::<f32>().unwrap(), [[[0.0, 2.0], [4.0, 6.0]]]);
    }

    #[test]
    fn bilinear_rows_sum_to_one() {
        for (i, o) in [(20, 7), (7, 20), (224, 224), (1, 5), (5, 1)] {
            let m = bilinear_matrix(i, o);
            for row in m.chunks(i) {
                assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-6);
            }
        }
    }

    #[test]
    fn same_size_is_identity_and_constant_stays_constant() {
        let d = Device::Cpu;
        let x = Tensor::full(0.25f32, (2, 3, 9, 13), &d).unwrap();
        let y = resize_bilinear(&x, 5, 17).unwrap();
        assert_eq!(y.dims(), &[2, 3, 5, 17]);
        let v: Vec<f32> = y.flatten_all().unwrap().to_vec1().unwrap();
        assert!(v.iter().all(|&a| (a - 0.25).abs() < 1e-6));
        let z = resize_bilinear(&x, 9, 13).unwrap();
        assert_eq!(
            z.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            vec![0.25; 2 * 3 * 9 * 13]
        );
    }
}
