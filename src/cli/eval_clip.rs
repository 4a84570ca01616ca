//! `roundtrip eval-clip --clip REF --dataset DIR [--split test] [--limit N] [--json]`

use std::io::Write;
use std::path::PathBuf;

use crate::clip_train::evaluate_clip;
use crate::dataset::Split;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    device: super::DeviceArg,
    /// CLIP: preset, hub id `org/name[@rev]`, or a model folder (e.g. from train-clip).
    #[arg(long)]
    clip: String,
    /// Dataset folder in a Flickr8k layout.
    #[arg(long)]
    dataset: PathBuf,
    /// train, dev or test.
    #[arg(long, default_value = "test")]
    split: Split,
    /// Use only the first N images of the split [default: all].
    #[arg(long)]
    limit: Option<usize>,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

pub fn execute(a: Args, out: &mut dyn Write) -> anyhow::Result<()> {
    let r = evaluate_clip(&a.clip, &a.dataset, a.split, a.limit, &a.device.open()?)?;
    if a.json {
        serde_json::to_writer(&mut *out, &r)?;
        writeln!(out)?;
        return Ok(());
    }
    let q = &r.retrieval;
    writeln!(
        out,
        "{} on {} ({}, {} images): image->text top-1 {:.3}  text->image top-1 {:.3}  \
         matching cosine {:.3} (others {:.3})  chance {:.3}  repeated captions {}",
        a.clip,
        r.dataset,
        crate::clip_train::eval::split_name(r.split),
        q.images,
        q.image_to_text_top1,
        q.text_to_image_top1,
        q.mean_matching_cosine,
        q.mean_other_cosine,
        q.chance,
        q.repeated_captions
    )?;
    Ok(())
}
