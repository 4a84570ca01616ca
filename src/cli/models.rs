//! `roundtrip models list|download|resolve`

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;

use crate::fetch::{download, listing, snapshot_of, targets, Request};
use crate::hub::{Locator, ModelRef};

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// The model presets (models/presets.json), each hub preset marked cached, partial or
    /// missing in the hub cache with its snapshot folder, and the embedded models' copies.
    List {
        /// Print one JSON object instead of the table: hub_cache, presets (each preset's record
        /// with status, snapshot, missing files and download command), embedded_cache, embedded.
        #[arg(long)]
        json: bool,
    },
    /// Download into the shared Hugging Face cache every hub model a run preset needs (`real`:
    /// CLIP, BigGAN-deep 128 and the captioners' encoders; `real-blip`: CLIP, BigGAN-deep 128 and
    /// BLIP-large; `shapes`: nothing, it is embedded),
    /// or a model preset or hub id `org/name[@rev]`, at the revisions pinned in
    /// models/presets.json; files already cached are kept. Progress on stderr; one line per
    /// model on stdout.
    #[command(visible_alias = "fetch")]
    Download {
        /// Run presets (real, shapes, real-blip), model presets (clip-vit-b32, vgg16, xception,
        /// biggan-deep-128, blip-base, blip-large) or hub ids `org/name[@rev]` [default with
        /// --prompts: real].
        names: Vec<String>,
        /// Only what this prompts file's lines need with the presets named: BigGAN only when a
        /// line starts with `[biggan]` [default: everything the presets can use].
        #[arg(long, value_name = "FILE")]
        prompts: Option<PathBuf>,
        /// For a hub id that is no preset: the kind of model it is (clip, biggan, vgg16,
        /// xception, blip), which says which files to download [default: none; a preset's files are
        /// known, another hub id needs --kind or --file].
        #[arg(long)]
        kind: Option<String>,
        /// A file to download of each hub id given (repeatable) [default: the preset's files,
        /// else those of --kind].
        #[arg(long = "file", value_name = "NAME")]
        files: Vec<String>,
        /// Print one JSON object (hub_cache, notes, models: reference, role, files, repo,
        /// revision, commit, each file's path, bytes and whether it was downloaded, or error).
        #[arg(long)]
        json: bool,
        /// No progress bars or lines on stderr.
        #[arg(long)]
        quiet: bool,
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
        Command::List { json } => list(json, out),
        Command::Download {
            names,
            prompts,
            kind,
            files,
            json,
            quiet,
        } => fetch(
            Request {
                names,
                prompts,
                files,
                kind,
            },
            json,
            quiet,
            out,
        ),
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
            Ok(())
        }
    }
}

fn list(json: bool, out: &mut dyn Write) -> anyhow::Result<()> {
    let l = listing(
        &Locator::from_env(),
        &crate::captioner::feature_cache::default_cache_dir(),
    );
    if json {
        serde_json::to_writer_pretty(&mut *out, &l)?;
        writeln!(out)?;
        return Ok(());
    }
    writeln!(out, "hub cache: {}", l.hub_cache.display())?;
    let at = |p: &crate::fetch::HubEntry| match (&p.repo, &p.revision) {
        (Some(r), Some(v)) => format!("{r}@{v}"),
        (Some(r), None) => r.clone(),
        (None, _) => "(no hub repository)".into(),
    };
    let w = l.presets.iter().map(|p| at(p).len()).max().unwrap_or(0);
    writeln!(
        out,
        "{:<16} {:<9} {:<w$}  in the cache",
        "preset", "kind", "repository@revision"
    )?;
    for p in &l.presets {
        let state = match p.status {
            "cached" => format!(
                "cached   {}",
                p.snapshot
                    .as_ref()
                    .map(|s| s.display().to_string())
                    .unwrap_or_default()
            ),
            "no-hub" => "see `roundtrip models list --json` for its download URLs".to_owned(),
            status => format!(
                "{status:<8} no {}: `{}`",
                crate::hub::Files(p.missing.clone()),
                p.download.as_deref().unwrap_or_default()
            ),
        };
        writeln!(out, "{:<16} {:<9} {:<w$}  {state}", p.name, p.kind, at(p))?;
    }
    if !l.embedded.is_empty() {
        writeln!(
            out,
            "embedded in this binary, copied into {} on first use:",
            l.embedded_cache.display()
        )?;
        let w = l
            .embedded
            .iter()
            .map(|e| e.reference.len())
            .max()
            .unwrap_or(0);
        for e in &l.embedded {
            let state = if e.copied {
                format!("copied   {}", e.copy.display())
            } else {
                "not copied yet".to_owned()
            };
            writeln!(out, "  {:<w$}  {state}", e.reference)?;
        }
    }
    Ok(())
}

fn fetch(req: Request, json: bool, quiet: bool, out: &mut dyn Write) -> anyhow::Result<()> {
    let (wanted, notes) = targets(&req)?;
    let locator = Locator::from_env_quiet(quiet);
    for n in &notes {
        crate::stderr::status(quiet || json, format_args!("note: {n}"));
    }
    let outcomes = download(&locator, wanted);
    if json {
        let v = serde_json::json!({
            "hub_cache": locator.settings().cache_dir,
            "notes": notes,
            "models": outcomes,
        });
        serde_json::to_writer_pretty(&mut *out, &v)?;
        writeln!(out)?;
    } else {
        for o in outcomes.iter() {
            let Some(f) = &o.fetched else { continue };
            let fetched: Vec<_> = f.files.iter().filter(|x| x.downloaded).collect();
            let bytes: u64 = fetched.iter().map(|x| x.bytes).sum();
            writeln!(
                out,
                "{}\t{}@{}\tdownloaded {} ({}), cached {}\t{}",
                o.target.model.spec,
                f.repo,
                f.revision,
                fetched.len(),
                indicatif::BinaryBytes(bytes),
                f.files.len() - fetched.len(),
                snapshot_of(f)
                    .map(|s| s.display().to_string())
                    .unwrap_or_default()
            )?;
        }
    }
    let failed: Vec<String> = outcomes
        .iter()
        .filter_map(|o| Some(format!("{}: {}", o.target.model.spec, o.error.as_ref()?)))
        .collect();
    match failed.as_slice() {
        [] => Ok(()),
        [one] => Err(crate::input_err!("{one}")),
        many => Err(crate::input_err!(
            "{} of {} models could not be downloaded:\n  - {}",
            many.len(),
            outcomes.len(),
            many.join("\n  - ")
        )),
    }
}
