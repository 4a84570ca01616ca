//! `roundtrip features --encoder clip --weights REF [--text PHRASE]... [IMAGE]...`

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;

use crate::features::clip_features;
use crate::hub::{Locator, ModelRef};
use crate::models::clip::Clip;

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum Encoder {
    Clip,
}

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Which encoder.
    #[arg(long, value_enum, default_value = "clip")]
    encoder: Encoder,
    /// Weights: preset name, hub id `org/name[@rev]`, or a folder in the hub's layout.
    #[arg(long, default_value = "clip-vit-b32")]
    weights: String,
    /// A text to embed (repeatable).
    #[arg(long = "text")]
    texts: Vec<String>,
    /// Images to embed.
    images: Vec<PathBuf>,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

pub fn run(a: Args, out: &mut dyn Write) -> anyhow::Result<()> {
    if a.texts.is_empty() && a.images.is_empty() {
        return Err(crate::input_err!(
            "nothing to embed: give --text PHRASE and/or IMAGE paths"
        ));
    }
    let device = candle_core::Device::Cpu;
    let Encoder::Clip = a.encoder;
    let locator = Locator::from_env();
    let model = locator.open(&ModelRef::parse(&a.weights)?)?;
    let clip =
        Clip::load(&model, &device).with_context(|| format!("loading CLIP `{}`", a.weights))?;
    let f = clip_features(&clip, &a.texts, &a.images, &device)?;
    if a.json {
        serde_json::to_writer(&mut *out, &f)?;
        writeln!(out)?;
        return Ok(());
    }
    for item in &f.items {
        let head: Vec<String> = item
            .features
            .iter()
            .take(6)
            .map(|v| format!("{v:.4}"))
            .collect();
        writeln!(
            out,
            "{}\t{}\t[{}, ...] ({} dims)",
            item.kind,
            item.input,
            head.join(", "),
            item.features.len()
        )?;
    }
    if let Some(m) = &f.clip_score {
        writeln!(out, "CLIPScore (rows: images, columns: texts)")?;
        for (img, row) in f.items.iter().filter(|i| i.kind == "image").zip(m) {
            let cells: Vec<String> = row.iter().map(|v| format!("{v:.4}")).collect();
            writeln!(out, "{}\t{}", img.input, cells.join("\t"))?;
        }
    }
    Ok(())
}
