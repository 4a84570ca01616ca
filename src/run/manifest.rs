//! The run folder: its layout ([`Layout`]), its manifest `run.json` ([`Manifest`]: settings,
//! model fingerprints, prompts, shard), and opening it for one writer.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};

use super::settings::RunSettings;
use super::shard::Shard;
use super::RUN_SCHEMA_VERSION;
use crate::fsutil::write_json;
use crate::generate::GeneratorKind;
use crate::input_err;
use crate::lock::DirLock;
use crate::prompts::PromptFile;
use crate::provenance::Provenance;

/// A prompts line as `run.json` keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PromptEntry {
    pub line: usize,
    pub phrase: String,
    /// The line's `[generator]` prefix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generator: Option<GeneratorKind>,
    /// The photo path as written in the prompts file.
    pub photo: Option<String>,
}

/// `DIR/run.json`: the settings, models, prompts and shard of a run folder, and where it comes
/// from (command line, start, tool; never part of a result's key, so a rerun reuses everything).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub schema_version: u32,
    pub settings: RunSettings,
    /// What the locator resolved for each model (clip, and one per captioner label).
    pub models: BTreeMap<String, serde_json::Value>,
    /// The prompts file as given and all its phrases (not only this shard's).
    pub prompts_file: String,
    pub prompts: Vec<PromptEntry>,
    pub shard: Option<Shard>,
    /// The last command that wrote the folder (`run`, or `merge`); absent in folders written
    /// before it was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provenance: Option<Provenance>,
    /// A merged run: each shard folder as given to `merge`, with its own run's provenance.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub merged_from: Vec<MergedShard>,
}

/// A shard folder a merged run was made from.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MergedShard {
    pub folder: String,
    pub shard: Option<Shard>,
    pub provenance: Option<Provenance>,
}

impl Manifest {
    /// The manifest of a run of `prompts` (all its phrases, not only this shard's) read from
    /// `prompts_file`, with the models' records as loaded, made by this process.
    pub fn new(
        settings: &RunSettings,
        models: BTreeMap<String, serde_json::Value>,
        prompts_file: &Path,
        prompts: &PromptFile,
        shard: Option<Shard>,
    ) -> Self {
        Self {
            schema_version: RUN_SCHEMA_VERSION,
            settings: settings.clone(),
            models,
            prompts_file: prompts_file.display().to_string(),
            prompts: prompts
                .prompts
                .iter()
                .map(|p| PromptEntry {
                    line: p.line,
                    phrase: p.phrase.clone(),
                    generator: p.generator,
                    photo: p.photo.clone(),
                })
                .collect(),
            shard,
            provenance: Some(Provenance::now()),
            merged_from: Vec::new(),
        }
    }
}

/// The run folder's files.
pub struct Layout {
    pub root: PathBuf,
}

impl Layout {
    pub fn manifest(&self) -> PathBuf {
        self.root.join("run.json")
    }
    pub fn record(&self, id: &str) -> PathBuf {
        self.root.join("phrases").join(format!("{id}.json"))
    }
    pub fn image(&self, id: &str) -> PathBuf {
        self.root.join("images").join(format!("{id}.png"))
    }
    pub fn latents(&self, id: &str) -> PathBuf {
        self.root
            .join("images")
            .join(format!("{id}.latents.safetensors"))
    }
    pub fn frames(&self, id: &str) -> PathBuf {
        self.root.join("images").join(id)
    }
    pub fn photo(&self, id: &str, source: &Path) -> PathBuf {
        let ext = source
            .extension()
            .and_then(|e| e.to_str())
            .filter(|e| e.chars().all(|c| c.is_ascii_alphanumeric()))
            .map(str::to_ascii_lowercase)
            .unwrap_or_else(|| "img".into());
        self.root.join("photos").join(format!("{id}.{ext}"))
    }
    /// Folders holding per-phrase results (removed by `--force`).
    pub(super) fn result_dirs(&self) -> [PathBuf; 3] {
        ["phrases", "images", "photos"].map(|d| self.root.join(d))
    }
    pub fn relative(&self, path: &Path) -> String {
        path.strip_prefix(&self.root)
            .unwrap_or(path)
            .to_string_lossy()
            .replace('\\', "/")
    }
}

/// Creates the output folder and proves it writable.
pub fn prepare_out_dir(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)
        .map_err(|e| input_err!("cannot create output folder {}: {e}", dir.display()))?;
    let probe = dir.join(format!(".roundtrip-probe-{}", std::process::id()));
    std::fs::write(&probe, b"")
        .map_err(|e| input_err!("output folder {} is not writable: {e}", dir.display()))?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

/// Reads `run.json` of a run folder, if there is one.
pub fn read_manifest(dir: &Path) -> anyhow::Result<Option<Manifest>> {
    let path = dir.join("run.json");
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(input_err!("cannot read {}: {e}", path.display())),
    };
    let m: Manifest = serde_json::from_slice(&bytes).map_err(|e| {
        input_err!(
            "{} is not a roundtrip run manifest: {e}; remove the folder or use another --out",
            path.display()
        )
    })?;
    if m.schema_version != RUN_SCHEMA_VERSION {
        return Err(input_err!(
            "{} has schema version {}, this roundtrip writes {RUN_SCHEMA_VERSION}: use --force to start over",
            path.display(),
            m.schema_version
        ));
    }
    Ok(Some(m))
}

/// Reads `run.json` of a folder that must hold a run (for the commands that read one: `report`,
/// `generate --like`): an error names the folder and what it lacks, or the file and what is
/// wrong with it.
pub fn read_run(dir: &Path) -> anyhow::Result<Manifest> {
    if !dir.is_dir() {
        return Err(input_err!(
            "{} is not a run folder: {}",
            dir.display(),
            if dir.exists() {
                "it is a file"
            } else {
                "it does not exist"
            }
        ));
    }
    let path = dir.join("run.json");
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(input_err!(
            "{} is not a run folder: it has no run.json (the folder `roundtrip run --out` writes)",
            dir.display()
        ))
        }
        Err(e) => return Err(input_err!("cannot read {}: {e}", path.display())),
    };
    let m: Manifest = serde_json::from_slice(&bytes)
        .map_err(|e| input_err!("{} is not a roundtrip run manifest: {e}", path.display()))?;
    if m.schema_version != RUN_SCHEMA_VERSION {
        return Err(input_err!(
            "{} has run schema version {}, this roundtrip reads {RUN_SCHEMA_VERSION}: run it again with this version",
            path.display(),
            m.schema_version
        ));
    }
    Ok(m)
}

/// Opens `dir` for writing by one process: creates it, takes its lock, refuses a non-empty
/// folder that is not a run folder (unless `force`), and removes the temporary files a killed
/// writer left in it.
pub fn open_out_dir(dir: &Path, command: &str, force: bool) -> anyhow::Result<DirLock> {
    prepare_out_dir(dir)?;
    let lock = DirLock::acquire(dir, command)?;
    if !force && !dir.join("run.json").exists() {
        let foreign: Vec<String> = std::fs::read_dir(dir)
            .map_err(|e| input_err!("cannot read {}: {e}", dir.display()))?
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n != crate::lock::LOCK_FILE && !crate::fsutil::is_temp_name(n))
            .collect();
        if !foreign.is_empty() {
            return Err(input_err!(
                "{} is not empty and holds no run (it has {}{}): use an empty or new folder, or --force to write into it anyway",
                dir.display(),
                foreign.iter().take(3).map(|n| format!("`{n}`")).collect::<Vec<_>>().join(", "),
                if foreign.len() > 3 { ", ..." } else { "" }
            ));
        }
    }
    let layout = Layout {
        root: dir.to_path_buf(),
    };
    let mut swept = crate::fsutil::sweep_temp_files(dir);
    for d in layout.result_dirs() {
        swept += crate::fsutil::sweep_temp_files(&d);
        if let Ok(entries) = std::fs::read_dir(&d) {
            for e in entries
                .flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            {
                swept += crate::fsutil::sweep_temp_files(&e.path());
            }
        }
    }
    if swept > 0 {
        crate::stderr::note(format_args!(
            "removed {swept} temporary file(s) an interrupted run left in {}",
            dir.display()
        ));
    }
    Ok(lock)
}

/// Opens the run folder (see [`open_out_dir`]) and returns its lock with the manifest of the
/// run it holds; with `force` the results already there are thrown away instead.
pub fn open_run(dir: &Path, force: bool) -> anyhow::Result<(DirLock, Option<Manifest>)> {
    let lock = open_out_dir(dir, "run", force)?;
    let layout = Layout {
        root: dir.to_path_buf(),
    };
    let old = if force {
        // Thrown away below: an unreadable or outdated run.json does not matter.
        if layout.manifest().exists() {
            discard_results(&layout)?;
        }
        None
    } else {
        read_manifest(dir)?
    };
    Ok((lock, old))
}

/// Writes `run.json` and the result folders, saying on stderr (unless `quiet`) when the folder's
/// last run had other settings or models than `manifest`.
pub fn write_manifest(
    layout: &Layout,
    manifest: &Manifest,
    old: Option<&Manifest>,
    quiet: bool,
) -> anyhow::Result<()> {
    if let Some(old) = old {
        if let Some(d) = crate::diff::first_difference(&old.settings, &manifest.settings)
            .or_else(|| model_change(&old.models, &manifest.models))
        {
            crate::stderr::status(
                quiet,
                format_args!(
                    "{} was run with other settings or models ({d}): what depends on them is recomputed",
                    layout.root.display()
                ),
            );
        }
    }
    write_json(&layout.manifest(), manifest)?;
    for d in layout.result_dirs() {
        std::fs::create_dir_all(&d).with_context(|| format!("cannot create {}", d.display()))?;
    }
    Ok(())
}

/// The first model whose fingerprint differs between two manifests, as `name: old -> new`.
pub fn model_change(
    old: &BTreeMap<String, serde_json::Value>,
    new: &BTreeMap<String, serde_json::Value>,
) -> Option<String> {
    let fp = |m: &BTreeMap<String, serde_json::Value>, k: &str| {
        m.get(k)
            .and_then(|v| v.get("fingerprint"))
            .and_then(|v| v.as_str())
            .map(|f| f[..12.min(f.len())].to_owned())
    };
    new.keys().chain(old.keys()).find_map(|k| {
        let (a, b) = (fp(old, k), fp(new, k));
        (a != b).then(|| {
            format!(
                "{k}: {} -> {}",
                a.as_deref().unwrap_or("(absent)"),
                b.as_deref().unwrap_or("(absent)")
            )
        })
    })
}

fn discard_results(layout: &Layout) -> anyhow::Result<()> {
    for d in layout.result_dirs() {
        if d.exists() {
            std::fs::remove_dir_all(&d)
                .with_context(|| format!("cannot remove {}", d.display()))?;
        }
    }
    for f in ["report.json", "report.html", "report.md"] {
        let p = layout.root.join(f);
        if p.exists() {
            std::fs::remove_file(&p).with_context(|| format!("cannot remove {}", p.display()))?;
        }
    }
    Ok(())
}
