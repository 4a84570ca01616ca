//! `roundtrip merge SHARD_DIR... --out DIR`

use std::io::Write;
use std::path::PathBuf;

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
}

pub fn execute(a: Args, out: &mut dyn Write) -> anyhow::Result<()> {
    let s = crate::run::merge::merge(&a.shards, &a.out, a.force, a.gallery.images())?;
    writeln!(
        out,
        "{}\tphrases {}\tshards {}\timages {}",
        s.report.display(),
        s.phrases,
        s.shards,
        s.images
    )?;
    Ok(())
}
