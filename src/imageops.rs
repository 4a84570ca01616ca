//! Image tensors: differentiable bilinear resizing, and conversion to and from image files.
//!
//! candle's `upsample_bilinear2d` has no backward, so resizing is two matrix products with
//! interpolation matrices (rows: output pixels, columns: input pixels), which candle can
//! differentiate and which run as plain GEMMs.

use std::path::Path;

use anyhow::Context;
use candle_core::{DType, Device, Result, Tensor};

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

/// Bilinear resize of [.., H, W] to [.., out_h, out_w] (align_corners = false), differentiable.
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

/// Decodes image bytes (any format the `image` crate reads) to RGB; `path` names it in errors.
pub fn decode_rgb(path: &Path, bytes: &[u8]) -> anyhow::Result<image::RgbImage> {
    let img = image::load_from_memory(bytes)
        .map_err(|e| crate::input_err!("{} is not a readable image: {e}", path.display()))?;
    Ok(img.to_rgb8())
}

/// Reads and decodes an image file to RGB, naming the file in errors.
pub fn open_rgb(path: &Path) -> anyhow::Result<image::RgbImage> {
    let bytes = std::fs::read(path)
        .map_err(|e| crate::input_err!("cannot read image {}: {e}", path.display()))?;
    decode_rgb(path, &bytes)
}

/// Loads an image file as [3, H, W] f32 in [0, 1].
pub fn load_image(path: &Path, device: &Device) -> anyhow::Result<Tensor> {
    rgb_to_tensor(&open_rgb(path)?, device)
}

/// An RGB image as [3, H, W] f32 in [0, 1].
pub fn rgb_to_tensor(img: &image::RgbImage, device: &Device) -> anyhow::Result<Tensor> {
    let (w, h) = img.dimensions();
    let t = Tensor::from_vec(img.as_raw().clone(), (h as usize, w as usize, 3), device)?;
    Ok((t.permute((2, 0, 1))?.to_dtype(DType::F32)? / 255.0)?)
}

/// A [3, H, W] tensor in [0, 1] as 8-bit RGB, rounding as torchvision's `save_image` does.
pub fn tensor_to_rgb(t: &Tensor) -> anyhow::Result<image::RgbImage> {
    let (c, h, w) = t.dims3()?;
    anyhow::ensure!(c == 3, "expected 3 channels, got {c}");
    let bytes: Vec<u8> = ((t.to_dtype(DType::F32)?.clamp(0f32, 1f32)? * 255.0)? + 0.5)?
        .floor()?
        .permute((1, 2, 0))?
        .flatten_all()?
        .to_dtype(DType::U8)?
        .to_vec1()?;
    image::RgbImage::from_raw(w as u32, h as u32, bytes).context("image buffer has the wrong size")
}

/// Writes a [3, H, W] tensor in [0, 1] as a PNG, atomically (temporary file, then rename).
pub fn save_png(t: &Tensor, path: &Path) -> anyhow::Result<()> {
    crate::fsutil::write_atomic(path, &png_bytes(&tensor_to_rgb(t)?)?)
}

/// An RGB image encoded as PNG.
pub fn png_bytes(img: &image::RgbImage) -> anyhow::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    img.write_to(
        &mut std::io::Cursor::new(&mut bytes),
        image::ImageFormat::Png,
    )?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn png_round_trip() {
        let d = Device::Cpu;
        let dir = tempfile::tempdir().unwrap();
        let t = Tensor::from_vec(
            (0..3 * 4 * 5).map(|i| i as f32 / 59.0).collect::<Vec<_>>(),
            (3, 4, 5),
            &d,
        )
        .unwrap();
        let p = dir.path().join("x.png");
        save_png(&t, &p).unwrap();
        let back = load_image(&p, &d).unwrap();
        let diff = (back - &t)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(diff <= 0.5 / 255.0 + 1e-6, "{diff}");
    }
}
