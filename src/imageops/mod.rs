//! Images: conversion between image files, RGB buffers and tensors; and, in [`resize`], every
//! resize that must match a reference implementation (PIL, PyTorch) bit for bit or to f32
//! rounding.

use std::path::Path;

use anyhow::Context;
use candle_core::{DType, Device, Result, Tensor};

pub mod resize;

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

/// Image files read in batches of `IMAGE_BATCH` (so that a long list never sits in memory
/// decoded), each batch given to `f` with its paths; the batches' results, in order.
pub fn map_image_batches<T>(
    paths: &[std::path::PathBuf],
    mut f: impl FnMut(&[std::path::PathBuf], &[image::RgbImage]) -> anyhow::Result<Vec<T>>,
) -> anyhow::Result<Vec<T>> {
    let mut out = Vec::with_capacity(paths.len());
    for chunk in paths.chunks(IMAGE_BATCH) {
        let imgs = chunk
            .iter()
            .map(|p| open_rgb(p))
            .collect::<anyhow::Result<Vec<_>>>()?;
        out.extend(f(chunk, &imgs)?);
    }
    Ok(out)
}

/// Images decoded and encoded together by the captioning and feature commands.
pub const IMAGE_BATCH: usize = 8;

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

/// An RGB image resized with [`resize::pil_resize_nearest`] to size x size and mapped byte by
/// byte with `f(value, channel)`, as [3, size, size] f32.
pub(crate) fn normalised_chw(
    img: &image::RgbImage,
    size: usize,
    device: &Device,
    f: impl Fn(u8, usize) -> f32,
) -> Result<Tensor> {
    if size == 0 || img.width() == 0 || img.height() == 0 {
        candle_core::bail!(
            "preprocess: cannot resize a {}x{} image to {size}x{size}",
            img.width(),
            img.height()
        );
    }
    let resized = resize::pil_resize_nearest(img, size, size);
    let lut: Vec<[f32; 256]> = (0..3)
        .map(|c| std::array::from_fn(|v| f(v as u8, c)))
        .collect();
    let px = resized.as_raw();
    let mut out = vec![0f32; 3 * size * size];
    for (c, plane) in out.chunks_exact_mut(size * size).enumerate() {
        for (o, p) in plane.iter_mut().zip(px.chunks_exact(3)) {
            *o = lut[c][p[c] as usize];
        }
    }
    Tensor::from_vec(out, (3, size, size), device)
}

#[cfg(test)]
mod tests {
    use super::*;

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
