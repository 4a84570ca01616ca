//! `roundtrip caption --captioner MODEL_DIR [--beam K] IMAGE... [--json]`

use std::io::Write;
use std::path::PathBuf;

use crate::captioner::model::Captioner;
use crate::hub::Locator;
use crate::resources::{check_beam, check_beam_width};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    device: super::DeviceArg,
    /// Captioner folder (written by `roundtrip train`).
    #[arg(long)]
    captioner: PathBuf,
    /// Beam width (1: greedy).
    #[arg(long, default_value_t = 1)]
    beam: usize,
    /// Images to caption (PNG or JPEG).
    #[arg(required = true)]
    images: Vec<PathBuf>,
    /// Print one JSON object (captioner, beam, and each image with its caption) instead of one
    /// `IMAGE<TAB>CAPTION` line per image.
    #[arg(long)]
    json: bool,
}

pub fn execute(a: Args, out: &mut dyn Write) -> anyhow::Result<()> {
    check_beam_width(a.beam)?;
    let device = a.device.open()?;
    let c = Captioner::load(&a.captioner, &Locator::from_env(), &device)?;
    check_beam(a.beam, c.decoder.config().vocab_size)?;
    let captions = c.caption_images(&a.images, a.beam, &device)?;
    if a.json {
        let items: Vec<_> = a
            .images
            .iter()
            .zip(&captions)
            .map(|(i, c)| serde_json::json!({"image": i.display().to_string(), "caption": c}))
            .collect();
        serde_json::to_writer(
            &mut *out,
            &serde_json::json!({"captioner": a.captioner.display().to_string(), "beam": a.beam, "items": items}),
        )?;
        writeln!(out)?;
    } else {
        for (i, c) in a.images.iter().zip(&captions) {
            writeln!(out, "{}\t{}", i.display(), c)?;
        }
    }
    Ok(())
}
