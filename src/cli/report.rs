//! `roundtrip report RUN_DIR`

use std::io::Write;
use std::path::PathBuf;

use serde_json::json;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Run folder (written by `roundtrip run` or `roundtrip merge`).
    #[arg(value_name = "RUN_DIR")]
    run: PathBuf,
    /// Report the finished images of an unfinished run (interrupted, or its settings changed)
    /// instead of refusing; the others are left out and counted.
    #[arg(long)]
    partial: bool,
    #[command(flatten)]
    gallery: super::run::GalleryArg,
    /// No summary of the corpus figures on stderr.
    #[arg(long)]
    quiet: bool,
    #[command(flatten)]
    json: super::JsonArg,
}

pub fn execute(a: Args, out: &mut dyn Write) -> anyhow::Result<()> {
    let r = crate::run::rerender::rerender(&a.run, a.partial, a.gallery.images())?;
    if r.unfinished > 0 {
        crate::stderr::note(format_args!(
            "the report covers {} of {} images: {} are not finished",
            r.images,
            r.images + r.unfinished,
            r.unfinished
        ));
    }
    crate::stderr::status(
        a.quiet,
        format_args!(
            "{}gallery: {}\ntable:   {}\ncsv:     {}",
            r.summary,
            r.html.display(),
            r.markdown.display(),
            r.csv.display()
        ),
    );
    a.json.print(
        out,
        &[
            ("report", json!(r.json.display().to_string())),
            ("phrases", json!(r.phrases)),
            ("images", json!(r.images)),
            ("unfinished", json!(r.unfinished)),
        ],
    )
}
