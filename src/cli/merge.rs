//! `roundtrip merge SHARD_DIR... --out DIR`

use std::io::Write;
use std::path::PathBuf;

use serde_json::json;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The folders of `roundtrip run --shard K/N`, all N of them.
    #[arg(required = true)]
    shards: Vec<PathBuf>,
    /// Folder for the merged run (as a single-machine run would have written it).
    #[arg(long)]
    out: PathBuf,
    #[command(flatten)]
    gallery: super::run::GalleryArg,
    /// Replace a merged run already in --out even if its settings differ.
    #[arg(long)]
    force: bool,
    #[command(flatten)]
    json: super::JsonArg,
}

pub fn execute(a: Args, out: &mut dyn Write) -> anyhow::Result<()> {
    let s = crate::run::merge::merge(&a.shards, &a.out, a.force, a.gallery.images())?;
    a.json.print(
        out,
        &[
            ("report", json!(s.report.display().to_string())),
            ("phrases", json!(s.phrases)),
            ("shards", json!(s.shards)),
            ("images", json!(s.images)),
        ],
    )
}
