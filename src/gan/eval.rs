//! `roundtrip eval-gan`: how good a class-conditional BigGAN of the shapes world is, measured
//! two ways that need no human.
//!
//! - **Class fidelity**: N samples, the class cycling over the 40 (shape, colour) classes of
//!   [`crate::shapes::classes`] (one-hot), are captioned by each captioner; a sample counts when
//!   its caption names the conditioned colour and shape. The same figure on N rendered photos of
//!   the same classes stands beside it: the captioners' own error, the ceiling a generator can
//!   reach with them.
//! - **Frechet distance** in the shapes CLIP's image-embedding space (its `image_features`,
//!   L2-normalised, so that the distance does not depend on the embedding's scale) between M
//!   samples and a reference set A of M shapes scenes, beside the distance between a second,
//!   disjoint set B of M scenes and A: the floor that sampling alone gives. The samples are
//!   conditioned on B's class vectors (the multi-hot of each scene's coloured shapes, as the
//!   dataset's scenes are), so the two distances differ only in who drew the images.
//!
//! Every random draw comes from a seed recorded in the report ([`Seeds`]).

use std::path::{Path, PathBuf};

use candle_core::{Device, IndexOp, Tensor};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use crate::captioner::model::Captioner;
use crate::hub::{Locator, ModelRecord, ModelRef};
use crate::input_err;
use crate::metrics::frechet::frechet_distance_of;
use crate::models::biggan::{truncated_noise, BigGan};
use crate::models::clip::{l2_normalize, preprocess_image, Clip};
use crate::run::settings::CaptionerSpec;
use crate::run::stages::{ImageCaptioner, LstmCaptioner};
use crate::shapes::classes::{class_names, class_pair, multi_hot, NUM_CLASSES};
use crate::shapes::{render, Colour, Object, Scene, Shape};

/// Bumped whenever a field of [`Report`] changes meaning.
pub const SCHEMA_VERSION: u32 = 1;
/// Images per BigGAN forward pass, per captioner call and per CLIP call.
const BATCH: usize = 16;
/// Captions of the first few classes kept in the report, to see what the captioners say.
const EXAMPLES: usize = 8;

/// What `eval-gan` measures with.
#[derive(Debug, Clone)]
pub struct Options {
    /// The BigGAN folder (config.json with `num_classes` and `class_names`, and weights).
    pub biggan: PathBuf,
    /// The CLIP whose image embeddings the Frechet distance is taken in.
    pub clip: String,
    pub captioners: Vec<CaptionerSpec>,
    /// N: samples (and photos) for class fidelity.
    pub samples: usize,
    /// M: samples, reference images and floor images for the Frechet distances.
    pub fd_samples: usize,
    /// A shapes dataset (Flickr8k layout) to take the 2 M reference images from, instead of
    /// rendering them.
    pub reference: Option<PathBuf>,
    pub seed: u64,
    pub truncation: f64,
    /// A PNG to write the first fidelity samples to, each beside the photo of its class.
    pub grid: Option<PathBuf>,
    pub quiet: bool,
}

/// Every seed the evaluation drew from.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Seeds {
    /// The one given (`--seed`); the others derive from it.
    pub seed: u64,
    /// z of the fidelity samples (`truncated_noise(seed, N, z_dim, truncation)`).
    pub fidelity_noise: u64,
    /// The fidelity photos: photo i from ChaCha8 (this seed, stream i).
    pub photos: u64,
    /// z of the Frechet samples.
    pub fd_noise: u64,
    /// The rendered reference scenes: scene i as image i of `roundtrip shapes dataset --seed
    /// <this>` (`None` with `--reference`).
    pub reference: Option<u64>,
}

impl Seeds {
    fn new(seed: u64, rendered_reference: bool) -> Self {
        Self {
            seed,
            fidelity_noise: seed,
            photos: seed.wrapping_add(1),
            fd_noise: seed.wrapping_add(2),
            reference: rendered_reference.then(|| seed.wrapping_add(3)),
        }
    }
}

/// One class's counts for one captioner.
#[derive(Debug, Clone, Serialize)]
pub struct ClassFidelity {
    pub class: String,
    /// Samples (and photos) of this class.
    pub images: usize,
    pub samples_named: usize,
    pub photos_named: usize,
}

/// What one captioner said of one sample and one photo of a class.
#[derive(Debug, Clone, Serialize)]
pub struct Example {
    pub class: String,
    pub sample_caption: String,
    pub photo_caption: String,
}

/// Class fidelity by one captioner.
#[derive(Debug, Clone, Serialize)]
pub struct CaptionerFidelity {
    pub label: String,
    pub folder: String,
    pub fingerprint: String,
    pub samples_named: usize,
    /// Share of samples whose caption names their class.
    pub samples_share: f64,
    pub photos_named: usize,
    /// Share of photos whose caption names their class (the captioner's own accuracy).
    pub photos_share: f64,
    pub per_class: Vec<ClassFidelity>,
    pub examples: Vec<Example>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Fidelity {
    /// N samples, and N photos.
    pub samples: usize,
    /// How a caption is judged.
    pub rule: &'static str,
    /// Greedy decoding.
    pub beam: usize,
    pub captioners: Vec<CaptionerFidelity>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Frechet {
    pub embedding: &'static str,
    /// M: images in each set.
    pub images: usize,
    /// Which class vectors the samples are conditioned on.
    pub classes: &'static str,
    /// Where the reference sets come from.
    pub reference: String,
    /// FD(samples, reference set A).
    pub samples_to_reference: f64,
    /// FD(reference set B, reference set A): what two samples of the shapes world differ by.
    pub floor: f64,
}

/// The `eval-gan --json` object.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub schema_version: u32,
    pub biggan: ModelRecord,
    pub image_size: usize,
    pub truncation: f64,
    pub clip: ModelRecord,
    pub seeds: Seeds,
    pub fidelity: Fidelity,
    pub frechet: Frechet,
}

/// Checks that a BigGAN's config.json is the shapes world's: `num_classes` 40 and `class_names`
/// the 40 names in [`crate::shapes::classes`] order. Errors name the file.
pub fn check_class_config(config: &Path) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(config)
        .map_err(|e| input_err!("cannot read {}: {e}", config.display()))?;
    let v: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| input_err!("{}: not JSON: {e}", config.display()))?;
    let n = v.get("num_classes").and_then(serde_json::Value::as_u64);
    if n != Some(NUM_CLASSES as u64) {
        return Err(input_err!(
            "{}: num_classes is {}, expected {NUM_CLASSES} (the shapes world's (shape, colour) \
             classes)",
            config.display(),
            n.map_or("missing".to_owned(), |n| n.to_string())
        ));
    }
    let Some(names) = v.get("class_names").and_then(serde_json::Value::as_array) else {
        return Err(input_err!(
            "{}: no `class_names` list: expected the {NUM_CLASSES} class names (\"red circle\", \
             ...) in the shapes world's order",
            config.display()
        ));
    };
    let want = class_names();
    if names.len() != want.len() {
        return Err(input_err!(
            "{}: class_names has {} names, expected {NUM_CLASSES}",
            config.display(),
            names.len()
        ));
    }
    for (i, (got, want)) in names.iter().zip(&want).enumerate() {
        if got.as_str() != Some(want.as_str()) {
            return Err(input_err!(
                "{}: class_names[{i}] is {got}, expected \"{want}\" (the shapes world's class order)",
                config.display()
            ));
        }
    }
    Ok(())
}

/// Whether `caption` names the colour and shape of a class: the colour word directly before the
/// shape word, as the grammar writes every object ("a big red circle above ...").
pub fn names_class(caption: &str, shape: Shape, colour: Colour) -> bool {
    let words: Vec<&str> = caption.split_whitespace().collect();
    words.windows(2).any(|w| {
        w[0].eq_ignore_ascii_case(colour.word()) && w[1].eq_ignore_ascii_case(shape.word())
    })
}

fn check_options(o: &Options) -> anyhow::Result<()> {
    if o.samples == 0 {
        return Err(input_err!("--samples 0: expected at least 1"));
    }
    if o.fd_samples < 2 {
        return Err(input_err!(
            "--fd-samples {}: a Frechet distance needs at least 2 images per set",
            o.fd_samples
        ));
    }
    if !(o.truncation > 0.0 && o.truncation <= 1.0) {
        return Err(input_err!(
            "--truncation {}: expected a value in (0, 1]",
            o.truncation
        ));
    }
    if !o.biggan.is_dir() {
        return Err(input_err!(
            "--biggan {}: not a folder (expected config.json and model.safetensors)",
            o.biggan.display()
        ));
    }
    Ok(())
}

/// BigGAN images of z rows [n, z_dim] and class vectors [n, num_classes] as 8-bit RGB, BATCH at
/// a time.
fn generate(
    g: &BigGan,
    z: &[f32],
    classes: &[Vec<f32>],
    truncation: f64,
    device: &Device,
    bar: &crate::stderr::Bar,
) -> anyhow::Result<Vec<image::RgbImage>> {
    let zd = g.config().z_dim;
    let mut out = Vec::with_capacity(classes.len());
    for (k, chunk) in classes.chunks(BATCH).enumerate() {
        let b = chunk.len();
        let start = k * BATCH * zd;
        let zt = Tensor::from_slice(&z[start..start + b * zd], (b, zd), device)?;
        let ct = Tensor::from_vec(chunk.concat(), (b, NUM_CLASSES), device)?;
        let x = g.forward(&zt, &ct, truncation)?.affine(0.5, 0.5)?;
        for i in 0..b {
            out.push(crate::imageops::tensor_to_rgb(&x.i(i)?)?);
        }
        bar.inc(b as u64);
    }
    Ok(out)
}

/// Columns of [`write_grid`]: eight classes per row, each a (sample, photo) pair.
const GRID_CLASSES_PER_ROW: usize = 8;

/// Writes the first (at most 40) samples, each followed by the photo of its class, in rows of
/// eight pairs with a 2-pixel grey gutter: what the fidelity figures count, to look at.
fn write_grid(
    path: &Path,
    samples: &[image::RgbImage],
    photos: &[image::RgbImage],
) -> anyhow::Result<()> {
    let n = samples.len().min(NUM_CLASSES);
    let Some(first) = samples.first() else {
        return Ok(());
    };
    let (w, h) = (first.width(), first.height());
    let gap = 2u32;
    let cols = (2 * GRID_CLASSES_PER_ROW.min(n)) as u32;
    let rows = n.div_ceil(GRID_CLASSES_PER_ROW) as u32;
    let mut grid = image::RgbImage::from_pixel(
        cols * (w + gap) + gap,
        rows * (h + gap) + gap,
        image::Rgb([128, 128, 128]),
    );
    for i in 0..n {
        let (r, c) = (
            (i / GRID_CLASSES_PER_ROW) as u32,
            (i % GRID_CLASSES_PER_ROW) as u32,
        );
        for (k, img) in [&samples[i], &photos[i]].into_iter().enumerate() {
            let x = (2 * c + k as u32) * (w + gap) + gap;
            image::imageops::replace(&mut grid, img, x as i64, (r * (h + gap) + gap) as i64);
        }
    }
    let mut bytes = Vec::new();
    grid.write_to(
        &mut std::io::Cursor::new(&mut bytes),
        image::ImageFormat::Png,
    )?;
    crate::fsutil::write_atomic(path, &bytes)
        .map_err(|e| input_err!("--grid {}: cannot write it: {e:#}", path.display()))
}

/// L2-normalised CLIP image embeddings, each image prepared by CLIP's own image processor.
fn embeddings(
    clip: &Clip,
    images: &[image::RgbImage],
    device: &Device,
    bar: &crate::stderr::Bar,
) -> anyhow::Result<Vec<Vec<f32>>> {
    let size = clip.model.config().vision.image_size;
    let mut out = Vec::with_capacity(images.len());
    for chunk in images.chunks(BATCH) {
        let pixels = chunk
            .iter()
            .map(|img| preprocess_image(&image::DynamicImage::ImageRgb8(img.clone()), size, device))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let f = l2_normalize(&clip.model.image_features(&Tensor::stack(&pixels, 0)?)?)?;
        out.extend(f.to_vec2::<f32>()?);
        bar.inc(chunk.len() as u64);
    }
    Ok(out)
}

fn caption_all(
    c: &LstmCaptioner,
    images: &[image::RgbImage],
    bar: &crate::stderr::Bar,
) -> anyhow::Result<Vec<String>> {
    let mut out = Vec::with_capacity(images.len());
    for chunk in images.chunks(BATCH) {
        out.extend(c.caption(chunk)?);
        bar.inc(chunk.len() as u64);
    }
    Ok(out)
}

/// Reference scenes as image i of `roundtrip shapes dataset --seed seed --size size`, with
/// their class vectors.
fn rendered_reference(seed: u64, count: usize, size: u32) -> Vec<(image::RgbImage, Vec<f32>)> {
    (0..count)
        .map(|i| {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            rng.set_stream(i as u64);
            let scene = Scene::random(&mut rng);
            let image = render(&scene, size, &mut rng);
            (image, multi_hot(&scene))
        })
        .collect()
}

/// The first `count` images of a shapes dataset (train, dev, then test split order), with the
/// class vectors of the first of their captions that parses.
fn dataset_reference(dir: &Path, count: usize) -> anyhow::Result<Vec<(image::RgbImage, Vec<f32>)>> {
    let ds = crate::dataset::Dataset::load(dir)?;
    let names: Vec<&String> = ds.train.iter().chain(&ds.dev).chain(&ds.test).collect();
    if names.len() < count {
        return Err(input_err!(
            "--reference {}: {} images, but two disjoint sets of --fd-samples need {count}; pass \
             a smaller --fd-samples or a larger dataset",
            dir.display(),
            names.len()
        ));
    }
    names[..count]
        .iter()
        .map(|name| {
            let scene = ds
                .captions
                .get(*name)
                .into_iter()
                .flatten()
                .filter_map(|c| crate::shapes::parse(c).ok())
                .find(|s| !crate::shapes::classes::scene_classes(s).is_empty())
                .ok_or_else(|| {
                    input_err!(
                        "--reference {}: no caption of image {name} names a coloured shape of the \
                         shapes grammar (expected a dataset of `roundtrip shapes dataset`)",
                        dir.display()
                    )
                })?;
            Ok((
                crate::imageops::open_rgb(&ds.image_path(name))?,
                multi_hot(&scene),
            ))
        })
        .collect()
}

/// Runs the evaluation.
pub fn evaluate(o: &Options, device: &Device) -> anyhow::Result<Report> {
    check_options(o)?;
    check_class_config(&o.biggan.join("config.json"))?;
    let locator = Locator::from_env();
    let gm = locator.open(&ModelRef::parse_option(
        &o.biggan.display().to_string(),
        "--biggan",
    )?)?;
    let g = BigGan::load(&gm, device)
        .map_err(|e| input_err!("--biggan {}: {e:#}", o.biggan.display()))?;
    let biggan_record = gm.record();
    let size = g.image_size();
    crate::shapes::render::check_size(size as u32)?;
    let cm = locator.open(&ModelRef::parse_option(&o.clip, "--clip")?)?;
    let clip = Clip::load(&cm, device).map_err(|e| input_err!("--clip {}: {e:#}", o.clip))?;
    let mut captioners = Vec::new();
    for c in &o.captioners {
        let loaded = Captioner::load(&c.dir, &locator, device).map_err(|e| {
            input_err!(
                "--captioners {}: cannot load the captioner in {}: {e:#}",
                c.label,
                c.dir.display()
            )
        })?;
        captioners.push((
            c,
            LstmCaptioner {
                captioner: loaded,
                beam: 1,
                device: device.clone(),
            },
        ));
    }
    let seeds = Seeds::new(o.seed, o.reference.is_none());
    // The reference sets first, so that a dataset too small is refused before any work.
    let m = o.fd_samples;
    crate::stderr::status(o.quiet, format_args!("reference: {} images", 2 * m));
    let (reference, reference_name) = match &o.reference {
        Some(dir) => (
            dataset_reference(dir, 2 * m)?,
            format!("dataset {}", dir.display()),
        ),
        None => {
            let s = seeds.reference.unwrap_or(o.seed);
            (
                rendered_reference(s, 2 * m, size as u32),
                format!(
                    "rendered: images 0..{} of `roundtrip shapes dataset --seed {s} --size {size}`",
                    2 * m
                ),
            )
        }
    };
    let zd = g.config().z_dim;

    // Class fidelity: N samples and N photos, class i % 40.
    let n = o.samples;
    let pairs: Vec<(Shape, Colour)> = (0..n)
        .map(|i| class_pair(i % NUM_CLASSES).ok_or_else(|| anyhow::anyhow!("class {i}")))
        .collect::<anyhow::Result<_>>()?;
    let one_hot: Vec<Vec<f32>> = (0..n)
        .map(|i| {
            let mut v = vec![0f32; NUM_CLASSES];
            v[i % NUM_CLASSES] = 1.0;
            v
        })
        .collect();
    let bar = crate::stderr::bar(n as u64, "fidelity samples", o.quiet);
    let z = truncated_noise(seeds.fidelity_noise, n, zd, o.truncation);
    let samples = generate(&g, &z, &one_hot, o.truncation, device, &bar)?;
    bar.finish_and_clear();
    let photos: Vec<image::RgbImage> = pairs
        .iter()
        .enumerate()
        .map(|(i, &(shape, colour))| {
            let mut rng = ChaCha8Rng::seed_from_u64(seeds.photos);
            rng.set_stream(i as u64);
            let object = Object {
                shape,
                colour: Some(colour),
                size: None,
            };
            render(
                &Scene::One {
                    object,
                    position: None,
                },
                size as u32,
                &mut rng,
            )
        })
        .collect();
    if let Some(path) = &o.grid {
        write_grid(path, &samples, &photos)?;
    }
    let names = class_names();
    let mut fidelity = Vec::new();
    for (spec, c) in &captioners {
        let bar = crate::stderr::bar(2 * n as u64, &format!("captions {}", spec.label), o.quiet);
        let sample_caps = caption_all(c, &samples, &bar)?;
        let photo_caps = caption_all(c, &photos, &bar)?;
        bar.finish_and_clear();
        let mut per_class: Vec<ClassFidelity> = names
            .iter()
            .map(|name| ClassFidelity {
                class: name.clone(),
                images: 0,
                samples_named: 0,
                photos_named: 0,
            })
            .collect();
        for (i, &(shape, colour)) in pairs.iter().enumerate() {
            let k = &mut per_class[i % NUM_CLASSES];
            k.images += 1;
            k.samples_named += usize::from(names_class(&sample_caps[i], shape, colour));
            k.photos_named += usize::from(names_class(&photo_caps[i], shape, colour));
        }
        let samples_named: usize = per_class.iter().map(|k| k.samples_named).sum();
        let photos_named: usize = per_class.iter().map(|k| k.photos_named).sum();
        fidelity.push(CaptionerFidelity {
            label: spec.label.clone(),
            folder: spec.dir.display().to_string(),
            fingerprint: c.captioner.fingerprint.clone(),
            samples_named,
            samples_share: samples_named as f64 / n as f64,
            photos_named,
            photos_share: photos_named as f64 / n as f64,
            per_class,
            examples: (0..n.min(EXAMPLES))
                .map(|i| Example {
                    class: names[i % NUM_CLASSES].clone(),
                    sample_caption: sample_caps[i].clone(),
                    photo_caption: photo_caps[i].clone(),
                })
                .collect(),
        });
    }

    // Frechet distances: reference set A, floor set B, samples on B's class vectors.
    let (set_a, set_b) = reference.split_at(m);
    let b_classes: Vec<Vec<f32>> = set_b.iter().map(|(_, c)| c.clone()).collect();
    let bar = crate::stderr::bar(m as u64, "fd samples", o.quiet);
    let z = truncated_noise(seeds.fd_noise, m, zd, o.truncation);
    let fd_samples = generate(&g, &z, &b_classes, o.truncation, device, &bar)?;
    bar.finish_and_clear();
    let bar = crate::stderr::bar(3 * m as u64, "clip embeddings", o.quiet);
    let images =
        |s: &[(image::RgbImage, Vec<f32>)]| s.iter().map(|(i, _)| i.clone()).collect::<Vec<_>>();
    let ea = embeddings(&clip, &images(set_a), device, &bar)?;
    let eb = embeddings(&clip, &images(set_b), device, &bar)?;
    let es = embeddings(&clip, &fd_samples, device, &bar)?;
    bar.finish_and_clear();
    let frechet = Frechet {
        embedding: "CLIP image_features, L2-normalised",
        images: m,
        classes: "the multi-hot class vectors of the floor set's scenes (as the dataset's scenes \
                  are distributed)",
        reference: reference_name,
        samples_to_reference: frechet_distance_of(&es, &ea)?,
        floor: frechet_distance_of(&eb, &ea)?,
    };
    Ok(Report {
        schema_version: SCHEMA_VERSION,
        biggan: biggan_record,
        image_size: size,
        truncation: o.truncation,
        clip: clip.record.clone(),
        seeds,
        fidelity: Fidelity {
            samples: n,
            rule: "the caption names the conditioned colour directly before the conditioned shape",
            beam: 1,
            captioners: fidelity,
        },
        frechet,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_caption_names_a_class_by_colour_then_shape() {
        let (s, c) = (Shape::Circle, Colour::Red);
        assert!(names_class("a big red circle in the middle", s, c));
        assert!(names_class("a blue star above a small red circle", s, c));
        assert!(!names_class("a red square next to a blue circle", s, c));
        assert!(!names_class("a big circle", s, c));
        assert!(!names_class("", s, c));
    }

    #[test]
    fn class_configs_are_checked_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        let write = |v: serde_json::Value| std::fs::write(&path, v.to_string()).unwrap();
        write(serde_json::json!({"num_classes": 40, "class_names": class_names()}));
        check_class_config(&path).unwrap();
        let cases = [
            (
                serde_json::json!({"num_classes": 1000}),
                "num_classes is 1000",
            ),
            (serde_json::json!({"num_classes": 40}), "no `class_names`"),
            (
                serde_json::json!({"num_classes": 40, "class_names": ["red circle"]}),
                "has 1 names",
            ),
        ];
        for (v, want) in cases {
            write(v);
            let e = check_class_config(&path).unwrap_err().to_string();
            assert!(e.contains(want) && e.contains("config.json"), "{e}");
        }
        let mut swapped = class_names();
        swapped.swap(0, 1);
        write(serde_json::json!({"num_classes": 40, "class_names": swapped}));
        let e = check_class_config(&path).unwrap_err().to_string();
        assert!(e.contains("class_names[0]"), "{e}");
    }

    #[test]
    fn rendered_reference_is_the_shapes_dataset() {
        let got = rendered_reference(7, 3, 32);
        for (i, (img, classes)) in got.iter().enumerate() {
            let item = crate::shapes::dataset::item(7, i, 32).unwrap();
            let png = crate::imageops::decode_rgb(Path::new("x.png"), &item.png).unwrap();
            assert_eq!(img, &png, "image {i}");
            assert_eq!(classes, &multi_hot(&item.scene));
        }
    }
}
