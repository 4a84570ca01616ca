//! `roundtrip models list|resolve`

use std::io::Write;

use anyhow::Context;

use crate::hub::{presets, Locator, ModelRef};

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// List the named model presets (models/presets.json).
    List {
        /// Print the presets' whole records (files, revisions, sources) as JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Resolve a model reference (preset, hub id `org/name[@rev]`, folder, or
    /// `models/shapes/NAME (embedded)`) and its files,
    /// downloading them unless HF_HUB_OFFLINE=1; prints the files' paths and the resolved revision.
    Resolve {
        /// The model: preset name, hub id `org/name[@rev]`, a folder in the hub's layout, or
        /// `models/shapes/NAME (embedded)` (the binary's copy of that folder).
        reference: String,
        /// A file to resolve (repeatable) [default: the preset's files, else config.json].
        #[arg(long = "file")]
        files: Vec<String>,
    },
}

pub fn execute(c: Command, out: &mut dyn Write) -> anyhow::Result<()> {
    match c {
        Command::List { json: true } => {
            serde_json::to_writer_pretty(&mut *out, presets())?;
            writeln!(out)?;
        }
        Command::List { json: false } => {
            for p in presets() {
                let at = match (&p.repo, &p.revision) {
                    (Some(r), Some(v)) => format!("{r}@{v}"),
                    (Some(r), None) => r.clone(),
                    (None, _) => "(no hub repository; see `models list --json`)".into(),
                };
                writeln!(out, "{:<16} {:<9} {}", p.name, p.kind, at)?;
            }
        }
        Command::Resolve { reference, files } => {
            let r = ModelRef::parse(&reference)?;
            let files = if files.is_empty() {
                r.preset
                    .as_deref()
                    .and_then(crate::hub::preset)
                    .map(|p| p.files.clone())
                    .unwrap_or_else(|| vec!["config.json".into()])
            } else {
                files
            };
            let locator = Locator::from_env();
            let model = locator.open(&r)?;
            let mut paths = serde_json::Map::new();
            for f in &files {
                let p = model
                    .file(f)
                    .with_context(|| format!("resolving model `{reference}`"))?;
                paths.insert(f.clone(), p.display().to_string().into());
            }
            let v = serde_json::json!({ "model": model.record(), "files": paths });
            serde_json::to_writer_pretty(&mut *out, &v)?;
            writeln!(out)?;
        }
    }
    Ok(())
}
