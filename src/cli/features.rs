//! `roundtrip features --encoder clip|vgg16|xception|blip --weights REF [--text PHRASE]... [IMAGE]...`

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;

use crate::captioner::encoder::{load_encoder_option, EncoderKind};
use crate::features::{blip_features, clip_features, encoder_features};
use crate::hub::{Locator, ModelRef};
use crate::models::clip::Clip;

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum Encoder {
    Clip,
    Vgg16,
    Xception,
    /// BLIP's image tower: its pooled output (the class token after `post_layernorm`, as
    /// transformers' `BlipVisionModel.pooler_output`).
    Blip,
}

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    device: super::DeviceArg,
    /// Which encoder.
    #[arg(long, value_enum, default_value = "clip")]
    encoder: Encoder,
    /// Weights: preset name, hub id `org/name[@rev]`, or a folder in the hub's layout [default:
    /// the encoder's preset: clip-vit-b32, vgg16, xception or blip-large].
    #[arg(long)]
    weights: Option<String>,
    /// A text to embed (repeatable).
    #[arg(long = "text")]
    texts: Vec<String>,
    /// Images to embed.
    images: Vec<PathBuf>,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

pub fn execute(a: Args, out: &mut dyn Write) -> anyhow::Result<()> {
    if a.texts.is_empty() && a.images.is_empty() {
        return Err(crate::input_err!(
            "nothing to embed: give --text PHRASE and/or IMAGE paths"
        ));
    }
    let device = a.device.open()?;
    let locator = Locator::from_env();
    let f = match a.encoder {
        Encoder::Clip => {
            let weights = a.weights.unwrap_or_else(|| "clip-vit-b32".into());
            let model = locator.open(&ModelRef::parse_option(&weights, "--weights")?)?;
            let clip =
                Clip::load(&model, &device).with_context(|| format!("loading CLIP `{weights}`"))?;
            clip_features(&clip, &a.texts, &a.images, &device)?
        }
        Encoder::Blip => {
            if !a.texts.is_empty() {
                return Err(crate::input_err!(
                    "--text needs --encoder clip: BLIP's vision embeddings are of images only"
                ));
            }
            let weights = a.weights.unwrap_or_else(|| "blip-large".into());
            let c = crate::captioner::blip::BlipCaptioner::load_reference(
                &weights,
                "--weights",
                Default::default(),
                &locator,
                &device,
            )
            .with_context(|| format!("loading BLIP `{weights}`"))?;
            blip_features(&c, &a.images, &device)?
        }
        Encoder::Vgg16 | Encoder::Xception => {
            let kind = if matches!(a.encoder, Encoder::Vgg16) {
                EncoderKind::Vgg16
            } else {
                EncoderKind::Xception
            };
            if !a.texts.is_empty() {
                return Err(crate::input_err!(
                    "--text needs --encoder clip: {} encodes images only",
                    kind.name()
                ));
            }
            let weights = a
                .weights
                .unwrap_or_else(|| kind.default_weights().to_owned());
            let enc = load_encoder_option(kind, &weights, "--weights", &locator, &device)?;
            encoder_features(&enc, &a.images, &device)?
        }
    };
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
