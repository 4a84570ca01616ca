//! `roundtrip shapes dataset --out DIR` and `roundtrip shapes render PHRASE --out FILE`

use std::io::Write;
use std::path::PathBuf;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde_json::json;

use crate::error::InputError;
use crate::shapes::render::{check_size, encode};
use crate::shapes::{self, DatasetOptions};

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Write a captioning dataset of random shapes scenes in the original Flickr8k layout.
    Dataset {
        /// Output folder (must not exist or be empty; see --force).
        #[arg(long)]
        out: PathBuf,
        /// Number of images (80% train, 10% dev, 10% test).
        #[arg(long, default_value_t = DatasetOptions::default().images)]
        images: usize,
        /// Image side in pixels.
        #[arg(long, default_value_t = DatasetOptions::default().size)]
        size: u32,
        /// Seed of every random draw: the same seed gives the same files, byte for byte.
        #[arg(long, default_value_t = DatasetOptions::default().seed)]
        seed: u64,
        /// Replace a previous shapes dataset in --out.
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        json: super::JsonArg,
    },
    /// Draw a "real photo" of a shapes phrase (PNG or JPEG, by the file name's extension).
    Render {
        /// A phrase of the shapes grammar, e.g. "a big red circle left of a blue star".
        phrase: String,
        /// Output image file: .png, .jpg or .jpeg.
        #[arg(long)]
        out: PathBuf,
        /// Image side in pixels.
        #[arg(long, default_value_t = 64)]
        size: u32,
        /// Seed of the unspecified attributes, placement, jitter and background.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Overwrite an existing file.
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        json: super::JsonArg,
    },
}

pub fn execute(c: Command, out: &mut dyn Write) -> anyhow::Result<()> {
    match c {
        Command::Dataset {
            out: dir,
            images,
            size,
            seed,
            force,
            json,
        } => {
            let opts = DatasetOptions {
                images,
                size,
                seed,
                force,
            };
            let s = shapes::write_dataset(&dir, &opts)?;
            json.print(
                out,
                &[
                    ("dataset", json!(dir.display().to_string())),
                    ("images", json!(s.images)),
                    ("one_shape", json!(s.one_shape)),
                    ("two_shapes", json!(s.two_shapes)),
                    ("train", json!(s.train)),
                    ("dev", json!(s.dev)),
                    ("test", json!(s.test)),
                    ("captions", json!(s.images * s.captions_per_image)),
                    ("size", json!(s.size)),
                    ("seed", json!(s.seed)),
                ],
            )?;
        }
        Command::Render {
            phrase,
            out: file,
            size,
            seed,
            force,
            json,
        } => {
            let scene = shapes::parse(&phrase).map_err(|e| InputError::new(e.to_string()))?;
            check_size(size)?;
            if file.exists() && !force {
                return Err(crate::input_err!(
                    "{} already exists: pass --force to overwrite it",
                    file.display()
                ));
            }
            if let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).map_err(|e| {
                    crate::input_err!("cannot create folder {}: {e}", dir.display())
                })?;
            }
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let (drawn, image) = shapes::render_scene(&scene, size, &mut rng);
            let bytes = encode(&image, &file)?;
            crate::fsutil::write_atomic(&file, &bytes)?;
            json.print(
                out,
                &[
                    ("image", json!(file.display().to_string())),
                    ("drawn", json!(drawn.to_string())),
                ],
            )?;
        }
    }
    Ok(())
}
