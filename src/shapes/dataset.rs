//! Writes a shapes-world captioning dataset in the original Flickr8k layout, so that `train`,
//! `eval` and `crate::dataset::Dataset::load` read it as they read Flickr8k:
//!
//! ```text
//! DIR/Flicker8k_Dataset/shape_000000.png ...
//! DIR/Flickr8k_text/Flickr8k.token.txt            shape_000000.png#0<TAB>caption (5 per image)
//! DIR/Flickr8k_text/Flickr_8k.{train,dev,test}Images.txt   80% / 10% / 10%, by index
//! DIR/shapes.json                                  generator version, seed, size, counts
//! ```
//!
//! Image *i* is drawn from its own ChaCha8 stream (seed, stream *i*), so it is the same whatever
//! the number of images, and the same seed gives byte-identical files. Everything is written
//! into a fresh hidden sibling folder that is renamed to `DIR` at the end: a failed or killed run
//! never leaves a half-written dataset under `DIR`.

use std::path::{Path, PathBuf};

use anyhow::Context;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::Serialize;

use super::render::{check_size, encode, render};
use super::{captions, describe, Scene};
use crate::input_err;

/// Bumped whenever the same seed would give different files.
pub const GENERATOR_VERSION: u32 = 1;
pub const CAPTIONS_PER_IMAGE: usize = 5;
/// The smallest dataset: one with fewer images would leave the dev or test split empty.
pub const MIN_IMAGES: usize = 10;

#[derive(Debug, Clone)]
pub struct DatasetOptions {
    pub images: usize,
    /// Image side in pixels.
    pub size: u32,
    pub seed: u64,
    /// Replace an existing shapes dataset (a folder holding `shapes.json`).
    pub force: bool,
}

impl Default for DatasetOptions {
    fn default() -> Self {
        Self {
            images: 2000,
            size: 64,
            seed: 0,
            force: false,
        }
    }
}

/// What was written, also saved as `shapes.json`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct DatasetSummary {
    pub generator: String,
    pub generator_version: u32,
    pub seed: u64,
    pub size: u32,
    pub images: usize,
    pub one_shape: usize,
    pub two_shapes: usize,
    pub captions_per_image: usize,
    pub train: usize,
    pub dev: usize,
    pub test: usize,
}

/// One image of the dataset, ready to write.
#[derive(Debug, Clone)]
pub struct Item {
    pub name: String,
    pub scene: Scene,
    pub captions: Vec<String>,
    pub png: Vec<u8>,
}

/// The file name of image `index`.
pub fn image_name(index: usize) -> String {
    format!("shape_{index:06}.png")
}

/// Image `index` of the dataset with `seed`: its scene, five captions and PNG bytes.
pub fn item(seed: u64, index: usize, size: u32) -> anyhow::Result<Item> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(index as u64);
    let scene = Scene::random(&mut rng);
    let image = render(&scene, size, &mut rng);
    // Caption 0 is the complete description (size, colour, shape, position or relation): the
    // one retrieval galleries use, so that it singles its image out; then four paraphrases.
    let full = describe(&scene);
    let mut caps = vec![full.clone()];
    caps.extend(
        captions(&scene, CAPTIONS_PER_IMAGE, &mut rng)
            .into_iter()
            .filter(|c| *c != full)
            .take(CAPTIONS_PER_IMAGE - 1),
    );
    anyhow::ensure!(
        caps.len() == CAPTIONS_PER_IMAGE,
        "the grammar gave {} captions for {scene}",
        caps.len()
    );
    let name = image_name(index);
    let png = encode(&image, Path::new(&name))?;
    Ok(Item {
        name,
        scene,
        captions: caps,
        png,
    })
}

/// Split sizes (train, dev, test) of `n` images: 80% / 10% / the rest.
pub fn split_sizes(n: usize) -> (usize, usize, usize) {
    let train = n * 8 / 10;
    let dev = n / 10;
    (train, dev, n - train - dev)
}

/// Writes the dataset into `out` (which must not exist, be empty, or with `force` hold a previous
/// shapes dataset, which is replaced as a whole).
pub fn write_dataset(out: &Path, opts: &DatasetOptions) -> anyhow::Result<DatasetSummary> {
    check_size(opts.size)?;
    if opts.images < MIN_IMAGES {
        return Err(input_err!(
            "--images {} is too few: expected at least {MIN_IMAGES}, so that every split has an image",
            opts.images
        ));
    }
    let replace = check_target(out, opts.force)?;
    let name = out.file_name().and_then(|n| n.to_str()).ok_or_else(|| {
        input_err!(
            "{}: expected a folder name to write the dataset to",
            out.display()
        )
    })?;
    let parent = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent)
        .map_err(|e| input_err!("cannot create folder {}: {e}", parent.display()))?;
    let tmp = parent.join(format!(".{name}.partial-{}", std::process::id()));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp)
            .with_context(|| format!("cannot remove the leftover {}", tmp.display()))?;
    }
    let summary = match fill(&tmp, opts) {
        Ok(s) => s,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e);
        }
    };
    if replace {
        let old = parent.join(format!(".{name}.old-{}", std::process::id()));
        std::fs::rename(out, &old)
            .with_context(|| format!("cannot move {} aside", out.display()))?;
        std::fs::rename(&tmp, out)
            .with_context(|| format!("cannot move {} to {}", tmp.display(), out.display()))?;
        std::fs::remove_dir_all(&old)
            .with_context(|| format!("cannot remove the old dataset {}", old.display()))?;
    } else {
        if out.is_dir() {
            std::fs::remove_dir(out)
                .with_context(|| format!("cannot replace the empty folder {}", out.display()))?;
        }
        std::fs::rename(&tmp, out)
            .with_context(|| format!("cannot move {} to {}", tmp.display(), out.display()))?;
    }
    Ok(summary)
}

/// Checks that `out` may be written; returns whether an existing dataset is to be replaced.
fn check_target(out: &Path, force: bool) -> anyhow::Result<bool> {
    if !out.exists() {
        return Ok(false);
    }
    if !out.is_dir() {
        return Err(input_err!("{} exists and is not a folder", out.display()));
    }
    let empty = std::fs::read_dir(out)
        .map_err(|e| input_err!("cannot read folder {}: {e}", out.display()))?
        .next()
        .is_none();
    if empty {
        return Ok(false);
    }
    if !force {
        return Err(input_err!(
            "{} is not empty: pass --force to replace a previous shapes dataset, or choose a new folder",
            out.display()
        ));
    }
    if !out.join("shapes.json").is_file() {
        return Err(input_err!(
            "{} is not empty and holds no shapes.json: --force only replaces a shapes dataset; \
             choose a new folder",
            out.display()
        ));
    }
    Ok(true)
}

/// Writes every file of the dataset into the fresh folder `root`.
fn fill(root: &Path, opts: &DatasetOptions) -> anyhow::Result<DatasetSummary> {
    let images_dir = root.join("Flicker8k_Dataset");
    let text_dir = root.join("Flickr8k_text");
    for d in [&images_dir, &text_dir] {
        std::fs::create_dir_all(d).with_context(|| format!("cannot create {}", d.display()))?;
    }
    let mut tokens = String::new();
    let mut names = Vec::with_capacity(opts.images);
    let mut one_shape = 0;
    // Chunks bound the memory held by encoded images; each image has its own stream, so the
    // parallel order does not matter.
    let indices: Vec<usize> = (0..opts.images).collect();
    for chunk in indices.chunks(256) {
        let items: Vec<Item> = chunk
            .par_iter()
            .map(|&i| item(opts.seed, i, opts.size))
            .collect::<anyhow::Result<_>>()?;
        for it in items {
            let path = images_dir.join(&it.name);
            std::fs::write(&path, &it.png)
                .with_context(|| format!("cannot write {}", path.display()))?;
            for (k, c) in it.captions.iter().enumerate() {
                tokens += &format!("{}#{k}\t{c}\n", it.name);
            }
            one_shape += usize::from(matches!(it.scene, Scene::One { .. }));
            names.push(it.name);
        }
    }
    let write = |path: PathBuf, text: &str| {
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))
    };
    write(text_dir.join("Flickr8k.token.txt"), &tokens)?;
    let (train, dev, test) = split_sizes(opts.images);
    let list = |names: &[String]| names.iter().map(|n| format!("{n}\n")).collect::<String>();
    write(
        text_dir.join("Flickr_8k.trainImages.txt"),
        &list(&names[..train]),
    )?;
    write(
        text_dir.join("Flickr_8k.devImages.txt"),
        &list(&names[train..train + dev]),
    )?;
    write(
        text_dir.join("Flickr_8k.testImages.txt"),
        &list(&names[train + dev..]),
    )?;
    let summary = DatasetSummary {
        generator: "roundtrip shapes".to_owned(),
        generator_version: GENERATOR_VERSION,
        seed: opts.seed,
        size: opts.size,
        images: opts.images,
        one_shape,
        two_shapes: opts.images - one_shape,
        captions_per_image: CAPTIONS_PER_IMAGE,
        train,
        dev,
        test,
    };
    let mut json = serde_json::to_vec_pretty(&summary)?;
    json.push(b'\n');
    std::fs::write(root.join("shapes.json"), json).context("cannot write shapes.json")?;
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataset::{Dataset, Layout};
    use crate::shapes::parse;

    fn opts(images: usize, seed: u64) -> DatasetOptions {
        DatasetOptions {
            images,
            size: 32,
            seed,
            force: false,
        }
    }

    /// Every file under `root`, relative path -> bytes, sorted.
    fn files(root: &Path) -> Vec<(String, Vec<u8>)> {
        let mut out = Vec::new();
        let mut stack = vec![root.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    stack.push(p);
                } else {
                    let rel = p.strip_prefix(root).unwrap().display().to_string();
                    out.push((rel, std::fs::read(&p).unwrap()));
                }
            }
        }
        out.sort();
        out
    }

    #[test]
    fn loads_with_the_dataset_loader_and_captions_describe_the_scenes() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("shapes");
        let s = write_dataset(&root, &opts(30, 1)).unwrap();
        assert_eq!((s.train, s.dev, s.test), (24, 3, 3));
        let ds = Dataset::load(&root).unwrap();
        assert_eq!(ds.layout, Layout::Original);
        assert!(ds.problems.is_empty(), "{:?}", ds.problems);
        assert_eq!((ds.train.len(), ds.dev.len(), ds.test.len()), (24, 3, 3));
        assert_eq!(ds.captions.len(), 30);
        for i in 0..30 {
            let it = item(1, i, 32).unwrap();
            let caps = &ds.captions[&it.name];
            assert_eq!(caps, &it.captions);
            for c in caps {
                assert!(parse(c).unwrap().describes(&it.scene), "{c}");
            }
            let img = image::open(ds.image_path(&it.name)).unwrap();
            assert_eq!((img.width(), img.height()), (32, 32));
        }
        let json: serde_json::Value =
            serde_json::from_slice(&std::fs::read(root.join("shapes.json")).unwrap()).unwrap();
        assert_eq!(json["images"], 30);
        assert_eq!(json["generator_version"], GENERATOR_VERSION);
        assert_eq!(s.one_shape + s.two_shapes, 30);
        assert!(s.one_shape > 5 && s.two_shapes > 5, "{s:?}");
    }

    #[test]
    fn same_seed_same_bytes_other_seed_other_bytes() {
        let d = tempfile::tempdir().unwrap();
        let a = files(&{
            let p = d.path().join("a");
            write_dataset(&p, &opts(12, 3)).unwrap();
            p
        });
        let b = files(&{
            let p = d.path().join("b");
            write_dataset(&p, &opts(12, 3)).unwrap();
            p
        });
        let c = files(&{
            let p = d.path().join("c");
            write_dataset(&p, &opts(12, 4)).unwrap();
            p
        });
        assert_eq!(a.len(), 12 + 5);
        assert_eq!(a, b);
        for ((name, x), (_, y)) in a.iter().zip(&c) {
            if name.ends_with(".png") {
                assert_ne!(x, y, "{name} is the same under another seed");
            }
        }
        // Image i does not depend on how many images there are.
        assert_eq!(
            item(3, 7, 32).unwrap().png,
            a.iter()
                .find(|f| f.0.ends_with("shape_000007.png"))
                .unwrap()
                .1
        );
    }

    #[test]
    fn refuses_occupied_folders_and_bad_options() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("ds");
        std::fs::create_dir(&root).unwrap();
        write_dataset(&root, &opts(10, 0)).unwrap(); // an empty folder is fine
        let e = write_dataset(&root, &opts(10, 1)).unwrap_err();
        assert_eq!(crate::error::exit_code(&e), 2);
        assert!(e.to_string().contains("pass --force"), "{e}");
        let forced = DatasetOptions {
            force: true,
            ..opts(11, 1)
        };
        assert_eq!(write_dataset(&root, &forced).unwrap().images, 11);
        assert_eq!(Dataset::load(&root).unwrap().captions.len(), 11);
        let other = d.path().join("other");
        std::fs::create_dir(&other).unwrap();
        std::fs::write(other.join("keep.txt"), "mine").unwrap();
        let e = write_dataset(&other, &forced).unwrap_err().to_string();
        assert!(e.contains("holds no shapes.json"), "{e}");
        assert!(other.join("keep.txt").is_file());
        let e = write_dataset(&d.path().join("x"), &opts(9, 0)).unwrap_err();
        assert!(e.to_string().contains("at least 10"), "{e}");
        let e = write_dataset(
            &d.path().join("x"),
            &DatasetOptions {
                size: 4,
                ..opts(10, 0)
            },
        )
        .unwrap_err();
        assert!(e.to_string().contains("out of range"), "{e}");
        // Nothing but the datasets was left behind (no partial or old folders).
        let mut left: Vec<String> = std::fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["ds", "other"]);
    }
}
