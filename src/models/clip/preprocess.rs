//! CLIPImageProcessor's preprocessing: shortest-edge resize with PIL's bicubic
//! ([`crate::imageops::resize::pil_resize_bicubic`]), centre crop, rescale and normalisation with
//! CLIP's mean and std.

use candle_core::{Device, Tensor};

/// CLIP's image normalisation (CLIPImageProcessor's `image_mean` / `image_std`).
pub const CLIP_MEAN: [f32; 3] = [0.48145466, 0.4578275, 0.40821073];
// The digits as published (CLIPImageProcessor's `image_std`), though f32 cannot hold them all.
#[allow(clippy::excessive_precision)]
pub const CLIP_STD: [f32; 3] = [0.26862954, 0.26130258, 0.27577711];

/// CLIPImageProcessor's preprocessing. An image already at size x size is used as is (/255,
/// normalise); otherwise the shortest edge is resized to `size` (the long edge to
/// `int(size * long / short)`) with bicubic exactly as PIL does it on uint8 (CLIPImageProcessor's
/// default), then centre cropped to size x size (offsets `(extent - size) / 2` rounded down), /255,
/// normalised. Alpha is dropped without compositing, as PIL's `convert("RGB")`. Returns [3, size,
/// size] f32 on the device; equal to transformers' output up to f32 rounding.
pub fn preprocess_image(
    img: &image::DynamicImage,
    size: usize,
    device: &Device,
) -> anyhow::Result<Tensor> {
    anyhow::ensure!(size > 0, "preprocess_image: size must be at least 1");
    let rgb = img.to_rgb8();
    let (w, h) = (rgb.width() as usize, rgb.height() as usize);
    anyhow::ensure!(
        w > 0 && h > 0,
        "preprocess_image: the image is empty ({w}x{h})"
    );
    let (short, long) = (w.min(h), w.max(h));
    // transformers' get_resize_output_image_size: int(size * long / short), in f64.
    let new_long = (size as f64 * long as f64 / short as f64) as usize;
    let (new_w, new_h) = if w <= h {
        (size, new_long)
    } else {
        (new_long, size)
    };
    let resized = crate::imageops::resize::pil_resize_bicubic(&rgb, new_w, new_h);
    let resized = resized.as_raw();
    let (top, left) = ((new_h - size) / 2, (new_w - size) / 2);
    let mut out = vec![0f32; 3 * size * size];
    for c in 0..3 {
        for y in 0..size {
            for x in 0..size {
                let v = resized[((top + y) * new_w + left + x) * 3 + c];
                // transformers: rescale in f64, cast to f32, then (x - mean) / std in f32.
                let v01 = (v as f64 * (1.0 / 255.0)) as f32;
                out[(c * size + y) * size + x] = (v01 - CLIP_MEAN[c]) / CLIP_STD[c];
            }
        }
    }
    Ok(Tensor::from_vec(out, (3, size, size), device)?)
}
