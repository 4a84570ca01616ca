//! `roundtrip caption --captioner REF [--beam K] [--prompt TEXT] [--max-length N] IMAGE... [--json]`

use std::io::Write;
use std::path::PathBuf;

use crate::captioner::any::AnyCaptioner;
use crate::hub::Locator;
use crate::resources::check_beam_width;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    device: super::DeviceArg,
    /// Captioner: a folder written by `roundtrip train`, `models/shapes/NAME (embedded)`, or a BLIP
    /// model: the preset blip-base or blip-large, its hub id, or a folder in transformers' layout
    /// (config.json, model.safetensors or pytorch_model.bin, tokenizer.json,
    /// preprocessor_config.json).
    #[arg(long, value_name = "REF")]
    captioner: String,
    /// Beam width (1: greedy).
    #[arg(long, default_value_t = 1)]
    beam: usize,
    #[command(flatten)]
    blip: super::BlipArgs,
    /// Images to caption (PNG or JPEG).
    #[arg(required = true)]
    images: Vec<PathBuf>,
    /// Print one JSON object (captioner, kind, beam, BLIP's prompt and max_length, and each image
    /// with its caption) instead of one `IMAGE<TAB>CAPTION` line per image.
    #[arg(long)]
    json: bool,
}

pub fn execute(a: Args, out: &mut dyn Write) -> anyhow::Result<()> {
    check_beam_width(a.beam)?;
    let device = a.device.open()?;
    let c = AnyCaptioner::load(
        &a.captioner,
        "--captioner",
        a.blip.decoding(),
        &Locator::from_env(),
        &device,
    )?;
    c.check_beam(a.beam)?;
    let captions = c.caption_images(&a.images, a.beam, &device)?;
    if a.json {
        let items: Vec<_> = a
            .images
            .iter()
            .zip(&captions)
            .map(|(i, c)| serde_json::json!({"image": i.display().to_string(), "caption": c}))
            .collect();
        let (prompt, max_length) = match &c {
            AnyCaptioner::Blip(b) => (
                serde_json::json!(b.decoding.prompt),
                serde_json::json!(b.decoding.max_length),
            ),
            AnyCaptioner::Lstm(_) => (serde_json::Value::Null, serde_json::Value::Null),
        };
        serde_json::to_writer(
            &mut *out,
            &serde_json::json!({
                "captioner": a.captioner,
                "kind": c.kind(),
                "beam": a.beam,
                "prompt": prompt,
                "max_length": max_length,
                "items": items,
            }),
        )?;
        writeln!(out)?;
    } else {
        for (i, c) in a.images.iter().zip(&captions) {
            writeln!(out, "{}\t{}", i.display(), c)?;
        }
    }
    Ok(())
}
