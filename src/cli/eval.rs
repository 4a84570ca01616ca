//! `roundtrip eval --captioner REF --dataset DIR [--split test] [--beam K] [--prompt TEXT] [--max-length N] [--json]`

use std::io::Write;
use std::path::PathBuf;

use crate::captioner::eval::evaluate;
use crate::captioner::feature_cache::default_cache_dir;
use crate::dataset::Split;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    device: super::DeviceArg,
    /// Captioner: a folder written by `roundtrip train`, `models/shapes/NAME (embedded)`, or a BLIP
    /// model (zero-shot): the preset blip-base or blip-large, its hub id, or a folder in
    /// transformers' layout.
    #[arg(long, value_name = "REF")]
    captioner: String,
    /// Dataset folder in a Flickr8k layout (original, Kaggle or Karpathy).
    #[arg(long)]
    dataset: PathBuf,
    /// train, dev or test.
    #[arg(long, default_value = "test")]
    split: Split,
    /// Beam width (1: greedy, as the original).
    #[arg(long, default_value_t = 1)]
    beam: usize,
    #[command(flatten)]
    blip: super::BlipArgs,
    /// Print one JSON object (scores, diversity, settings) instead of the text summary.
    #[arg(long)]
    json: bool,
    /// Also print each image's caption (text output).
    #[arg(long)]
    captions: bool,
    /// Encoder feature cache folder of LSTM captioners [default: $ROUNDTRIP_CACHE, else
    /// $XDG_CACHE_HOME/roundtrip, else ~/.cache/roundtrip].
    #[arg(long)]
    cache: Option<PathBuf>,
    /// No progress bars or log lines on stderr.
    #[arg(long)]
    quiet: bool,
}

pub fn execute(a: Args, out: &mut dyn Write) -> anyhow::Result<()> {
    let cache = a.cache.unwrap_or_else(default_cache_dir);
    let (r, captions) = evaluate(
        &a.captioner,
        a.blip.decoding(),
        &a.dataset,
        a.split,
        a.beam,
        &cache,
        a.quiet,
        &a.device.open()?,
    )?;
    if a.json {
        serde_json::to_writer(&mut *out, &r)?;
        writeln!(out)?;
        return Ok(());
    }
    writeln!(
        out,
        "{} on {} ({:?}, {} images, beam {})",
        r.captioner, r.dataset, r.split, r.images, r.beam
    )?;
    for (n, b) in [r.bleu1, r.bleu2, r.bleu3, r.bleu4].iter().enumerate() {
        writeln!(out, "BLEU-{}  {:.6}", n + 1, b)?;
    }
    let coco = [r.coco_bleu1, r.coco_bleu2, r.coco_bleu3, r.coco_bleu4];
    writeln!(
        out,
        "COCO BLEU-1..4  {}",
        coco.map(|b| format!("{b:.6}")).join(" ")
    )?;
    writeln!(out, "CIDEr-D  {:.6}", r.cider_d)?;
    writeln!(out, "ROUGE-L  {:.6}", r.rouge_l)?;
    writeln!(
        out,
        "diversity {:.3} ({} distinct captions); most common ({}x): {}",
        r.diversity, r.distinct_captions, r.most_common_count, r.most_common_caption
    )?;
    if a.captions {
        for (img, c) in captions {
            writeln!(out, "{img}\t{c}")?;
        }
    }
    Ok(())
}
