//! `roundtrip run`: the whole round trip for every phrase of a prompts file.
//!
//! Data flows one way: prompts -> generated image ([`stages::Generator`]) -> captions
//! ([`stages::ImageCaptioner`]) -> scores ([`stages::Judge`]) -> one [`record::PhraseRecord`]
//! per phrase -> [`report`] (JSON, HTML, Markdown).
//!
//! A phrase's result depends only on the run settings, the phrase and its photo: its seed is
//! derived from the run seed and the phrase text, its files are named after the phrase, and its
//! shard is a hash of the phrase. So a run can be killed and restarted (finished phrases are
//! kept), split over machines with `--shard K/N` and put back together with `merge`, and each
//! way gives the report an uninterrupted single run gives (up to the `seconds` timings).

pub mod html;
pub mod merge;
pub mod preset;
pub mod record;
pub mod report;
pub mod stages;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use candle_core::Device;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::captioner::model::{read_config, Captioner};
use crate::error::InputError;
use crate::fsutil::{slug, write_json};
use crate::generate::biggan::Settings as BigGanSettings;
use crate::generate::job::text_embedding;
use crate::generate::siren::Settings;
use crate::hub::{Locator, ModelRef};
use crate::input_err;
use crate::lock::DirLock;
use crate::models::biggan::BigGan;
use crate::models::clip::Clip;
use crate::prompts::{Prompt, PromptFile};
use stages::{BeamCaptioner, BigGanGenerator, Generator, ImageCaptioner, Judge, SirenGenerator};

/// Version of `run.json` and of the phrase records; bumped on any incompatible change (2: stage
/// keys, file digests and model fingerprints).
pub const RUN_SCHEMA_VERSION: u32 = 2;

/// `--shard K/N`: the K-th (1-based) of N stable shares of the phrases.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl std::str::FromStr for Shard {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("`{s}` is not a shard: expected K/N with 1 <= K <= N, e.g. 2/8");
        let (k, n) = s.split_once('/').ok_or_else(bad)?;
        let index: usize = k.trim().parse().map_err(|_| bad())?;
        let count: usize = n.trim().parse().map_err(|_| bad())?;
        if index == 0 || count == 0 || index > count {
            return Err(bad());
        }
        Ok(Self { index, count })
    }
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

impl Shard {
    /// Whether `phrase` belongs to this shard. The share is a hash of the phrase text alone, so
    /// it does not move when lines are added, removed or reordered.
    pub fn contains(&self, phrase: &str) -> bool {
        (digest_u64(&["roundtrip-shard", phrase]) % self.count as u64) as usize + 1 == self.index
    }
}

fn digest_u64(parts: &[&str]) -> u64 {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p.as_bytes());
    }
    let d = h.finalize();
    let mut b = [0u8; 8];
    b.copy_from_slice(&d[..8]);
    u64::from_le_bytes(b)
}

/// The seed of one phrase: a hash of the run seed and the phrase text, below 2^53 so that it
/// survives JSON readers that parse numbers as doubles. `roundtrip generate PHRASE --seed` with
/// this value draws the same image.
pub fn phrase_seed(run_seed: u64, phrase: &str) -> u64 {
    digest_u64(&["roundtrip-phrase-seed", &run_seed.to_string(), phrase]) >> 11
}

/// The file-name stem of a phrase's outputs: its slug plus 8 hex digits of its hash, so that
/// phrases with the same slug ("A cat", "a cat!") never share files.
pub fn phrase_id(phrase: &str) -> String {
    format!(
        "{}-{:08x}",
        slug(phrase),
        digest_u64(&["roundtrip-phrase-id", phrase]) >> 32
    )
}

/// Which captioner folder each label uses (`--captioners vgg16=DIR,xception=DIR`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaptionerSpec {
    pub label: String,
    pub dir: PathBuf,
}

/// Parses `label=DIR[,label=DIR...]`.
pub fn parse_captioners(spec: &str) -> Result<Vec<CaptionerSpec>, InputError> {
    let mut out: Vec<CaptionerSpec> = Vec::new();
    for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (label, dir) = part.split_once('=').ok_or_else(|| {
            InputError::new(format!(
                "--captioners: `{part}` is not LABEL=FOLDER (e.g. vgg16=models/captioners/vgg16)"
            ))
        })?;
        let label = label.trim();
        if label.is_empty()
            || !label
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(InputError::new(format!(
                "--captioners: label `{label}` must be letters, digits, `-` or `_`"
            )));
        }
        if out.iter().any(|c| c.label == label) {
            return Err(InputError::new(format!(
                "--captioners: label `{label}` is given twice"
            )));
        }
        out.push(CaptionerSpec {
            label: label.to_owned(),
            dir: PathBuf::from(dir.trim()),
        });
    }
    if out.is_empty() {
        return Err(InputError::new(
            "--captioners is empty: expected LABEL=FOLDER[,LABEL=FOLDER...]",
        ));
    }
    Ok(out)
}

/// Everything that decides a phrase's result. A run folder records the settings of its last
/// run; running again with other settings recomputes the stages that depend on them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunSettings {
    /// The generator of lines without a `[generator]` prefix.
    pub generator: String,
    pub siren: Settings,
    /// BigGAN's model and settings; recorded only when a phrase of the prompts file uses it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub biggan: Option<BigGanRunSettings>,
    /// The run seed; each phrase's seed is [`phrase_seed`] of it.
    pub seed: u64,
    /// A progress frame every N steps (0: none).
    pub save_every: usize,
    /// Beam width of the captioners (1: greedy).
    pub beam: usize,
    /// CLIP reference as given (guides generation and computes CLIPScore and text similarity).
    pub clip: String,
    pub captioners: Vec<CaptionerSpec>,
}

/// BigGAN's part of the run settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BigGanRunSettings {
    /// Model reference (preset, hub id or folder).
    pub model: String,
    #[serde(flatten)]
    pub settings: BigGanSettings,
}

/// The settings a run records: BigGAN's are dropped when no phrase of the prompts file (all
/// shards) draws with it, so that they cannot make a SIREN-only run differ.
pub fn effective_settings(s: &RunSettings, prompts: &PromptFile) -> RunSettings {
    let uses_biggan = s.generator == "biggan"
        || prompts
            .prompts
            .iter()
            .any(|p| p.generator.as_deref() == Some("biggan"));
    let mut out = s.clone();
    if !uses_biggan {
        out.biggan = None;
    }
    out
}

/// A prompts line as `run.json` keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PromptEntry {
    pub line: usize,
    pub phrase: String,
    /// The line's `[generator]` prefix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generator: Option<String>,
    /// The photo path as written in the prompts file.
    pub photo: Option<String>,
}

/// `DIR/run.json`: the settings, models, prompts and shard of a run folder.
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
}

/// A request for `roundtrip run`.
pub struct RunRequest {
    pub prompts: PathBuf,
    pub out: PathBuf,
    pub settings: RunSettings,
    pub shard: Option<Shard>,
    pub force: bool,
    pub quiet: bool,
    pub device: Device,
}

/// What a run did.
#[derive(Debug)]
pub struct RunSummary {
    pub report: PathBuf,
    pub phrases: usize,
    /// Phrases whose image was generated.
    pub computed: usize,
    /// Phrases whose image was kept and whose captions or scores were recomputed.
    pub updated: usize,
    /// Phrases whose record was up to date.
    pub reused: usize,
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
    fn result_dirs(&self) -> [PathBuf; 3] {
        ["phrases", "images", "photos"].map(|d| self.root.join(d))
    }
    pub fn relative(&self, path: &Path) -> String {
        path.strip_prefix(&self.root)
            .unwrap_or(path)
            .to_string_lossy()
            .replace('\\', "/")
    }
}

/// Settings that cannot run, named by their option.
pub fn validate_settings(s: &RunSettings) -> Result<(), InputError> {
    if !crate::prompts::GENERATORS.contains(&s.generator.as_str()) {
        return Err(InputError::new(format!(
            "--generator {}: expected one of {}",
            s.generator,
            crate::prompts::GENERATORS.join(", ")
        )));
    }
    s.siren.validate()?;
    if let Some(b) = &s.biggan {
        b.settings.validate(None)?;
    }
    if s.beam == 0 {
        return Err(InputError::new(
            "--beam must be at least 1 (1 is greedy decoding)",
        ));
    }
    Ok(())
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

/// The first setting that differs between two runs, as `name: old -> new`.
pub fn settings_difference(old: &RunSettings, new: &RunSettings) -> Option<String> {
    crate::diff::first_difference(old, new)
}

/// A phrase of this run with its photo bytes, validated before any model work.
struct Planned<'a> {
    prompt: &'a Prompt,
    id: String,
    photo: Option<(PathBuf, Vec<u8>, image::RgbImage)>,
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

/// Runs the round trip: validates everything, then brings each phrase up to date (computing only
/// the stages whose inputs changed) and writes the report.
pub fn run(req: &RunRequest) -> anyhow::Result<RunSummary> {
    let t_start = Instant::now();
    // 1. Validate everything before any long work or any write.
    let prompts = PromptFile::load(&req.prompts)?;
    let settings = effective_settings(&req.settings, &prompts);
    validate_settings(&settings)?;
    let mine: Vec<&Prompt> = prompts
        .prompts
        .iter()
        .filter(|p| req.shard.is_none_or(|s| s.contains(&p.phrase)))
        .collect();
    let mut planned = Vec::with_capacity(mine.len());
    for p in &mine {
        let photo = match &p.photo_path {
            None => None,
            Some(path) => {
                let bytes = crate::error::read_input_file(path)?;
                let img = crate::imageops::decode_rgb(path, &bytes).map_err(|e| {
                    input_err!("{}:{}: real photo: {e:#}", req.prompts.display(), p.line)
                })?;
                Some((path.clone(), bytes, img))
            }
        };
        planned.push(Planned {
            prompt: p,
            id: phrase_id(&p.phrase),
            photo,
        });
    }
    for c in &settings.captioners {
        let cfg = read_config(&c.dir).map_err(|e| input_err!("--captioners {}: {e:#}", c.label))?;
        crate::resources::check_beam(settings.beam, cfg.decoder.vocab_size)?;
    }
    // The memory bound with the models' configs (read without their weights).
    let locator = Locator::from_env();
    if let Some(c) = crate::generate::clip_config(&locator, &settings.clip) {
        settings.siren.validate_memory(&c)?;
        if let Some(b) = &settings.biggan {
            if let Some(g) = crate::generate::biggan_config(&locator, &b.model) {
                b.settings.validate_memory(&c, &g)?;
            }
        }
    }
    let _lock = open_out_dir(&req.out, "run", req.force)?;
    let layout = Layout {
        root: req.out.clone(),
    };
    let old = if req.force {
        // Thrown away below: an unreadable or outdated run.json does not matter.
        if layout.manifest().exists() {
            discard_results(&layout)?;
        }
        None
    } else {
        read_manifest(&req.out)?
    };

    // 2. Load every model once, and fingerprint it.
    let clip_model = locator.open(&ModelRef::parse(&settings.clip)?)?;
    let clip = Clip::load(&clip_model, &req.device)
        .with_context(|| format!("loading CLIP `{}`", settings.clip))?;
    let mut models = BTreeMap::from([("clip".to_owned(), serde_json::to_value(&clip.record)?)]);
    let biggan_model = match &settings.biggan {
        None => None,
        Some(b) => {
            let m = locator.open(&ModelRef::parse(&b.model)?)?;
            let g = BigGan::load(&m, &req.device)
                .with_context(|| format!("loading BigGAN `{}`", b.model))?;
            b.settings.validate(Some(g.config().num_classes))?;
            models.insert("biggan".to_owned(), serde_json::to_value(m.record())?);
            Some(g)
        }
    };
    for name in models.keys() {
        anyhow::ensure!(
            models[name]
                .get("fingerprint")
                .is_some_and(|f| f.is_string()),
            "model `{name}` could not be fingerprinted"
        );
    }
    let mut captioners = Vec::new();
    for c in &settings.captioners {
        let loaded = Captioner::load(&c.dir, &locator, &req.device).map_err(|e| {
            input_err!(
                "--captioners {}: cannot load the captioner in {}: {e:#}",
                c.label,
                c.dir.display()
            )
        })?;
        models.insert(
            format!("captioner:{}", c.label),
            serde_json::json!({
                "folder": c.dir.display().to_string(),
                "fingerprint": loaded.fingerprint,
                "architecture": loaded.config.architecture,
                "encoder": loaded.config.encoder.kind.name(),
                "encoder_model": loaded.encoder.record,
                "vocab_size": loaded.vocab.len(),
                "training": loaded.config.training,
            }),
        );
        captioners.push((
            c.label.clone(),
            BeamCaptioner {
                captioner: loaded,
                beam: settings.beam,
                device: req.device.clone(),
            },
        ));
    }
    let manifest = Manifest {
        schema_version: RUN_SCHEMA_VERSION,
        settings: settings.clone(),
        models,
        prompts_file: req.prompts.display().to_string(),
        prompts: prompts
            .prompts
            .iter()
            .map(|p| PromptEntry {
                line: p.line,
                phrase: p.phrase.clone(),
                generator: p.generator.clone(),
                photo: p.photo.clone(),
            })
            .collect(),
        shard: req.shard,
    };
    if let Some(old) = &old {
        if let Some(d) = crate::diff::first_difference(&old.settings, &manifest.settings)
            .or_else(|| model_change(&old.models, &manifest.models))
        {
            log(
                req.quiet,
                format_args!(
                    "{} was run with other settings or models ({d}): what depends on them is recomputed",
                    req.out.display()
                ),
            );
        }
    }
    write_json(&layout.manifest(), &manifest)?;
    for d in layout.result_dirs() {
        std::fs::create_dir_all(&d).with_context(|| format!("cannot create {}", d.display()))?;
    }

    // 3. Each phrase: reuse what is up to date, compute the rest.
    let siren = SirenGenerator {
        encoder: &clip.model,
        settings: settings.siren.clone(),
        device: req.device.clone(),
    };
    let biggan = match &biggan_model {
        None => None,
        Some(model) => {
            let b = settings
                .biggan
                .as_ref()
                .ok_or_else(|| anyhow::anyhow!("BigGAN loaded without settings"))?;
            let avoid = b
                .settings
                .avoid
                .iter()
                .map(|p| text_embedding(&clip, p, &req.device))
                .collect::<anyhow::Result<Vec<_>>>()?;
            Some(BigGanGenerator {
                model,
                encoder: &clip.model,
                settings: b.settings.clone(),
                avoid,
                device: req.device.clone(),
            })
        }
    };
    let judge = Judge {
        clip: &clip,
        device: req.device.clone(),
    };
    let caps: Vec<(&str, &dyn ImageCaptioner)> = captioners
        .iter()
        .map(|(l, c)| (l.as_str(), c as &dyn ImageCaptioner))
        .collect();
    let note = |msg: &str| crate::stderr::note(msg);
    let stage_models = record::StageModels {
        layout: &layout,
        manifest: &manifest,
        captioners: &caps,
        judge: &judge,
        note: &note,
    };
    let mut records = Vec::with_capacity(planned.len());
    let (mut computed, mut updated, mut reused) = (0, 0, 0);
    let total = planned.len();
    for (i, p) in planned.iter().enumerate() {
        let seed = phrase_seed(settings.seed, &p.prompt.phrase);
        let generator: &dyn Generator =
            match p.prompt.generator.as_deref().unwrap_or(&settings.generator) {
                "biggan" => biggan
                    .as_ref()
                    .map(|g| g as &dyn Generator)
                    .ok_or_else(|| anyhow::anyhow!("BigGAN not loaded"))?,
                _ => &siren,
            };
        let job = record::PhraseJob {
            id: &p.id,
            phrase: &p.prompt.phrase,
            seed,
            photo: p
                .photo
                .as_ref()
                .map(|(source, bytes, img)| record::PhotoInput {
                    source,
                    written: p.prompt.photo.as_deref().unwrap_or_default(),
                    bytes,
                    image: img,
                    sha256: sha256_hex(bytes),
                }),
            generator,
        };
        log(
            req.quiet,
            format_args!("[{}/{total}] {}", i + 1, p.prompt.phrase),
        );
        let bar = crate::stderr::bar(
            generator.steps() as u64,
            &format!("[{}/{total}]", i + 1),
            req.quiet,
        );
        let (rec, outcome) = record::bring_up_to_date(&stage_models, &job, &bar)?;
        bar.finish_and_clear();
        match outcome {
            record::Outcome::Reused => reused += 1,
            record::Outcome::Updated => updated += 1,
            record::Outcome::Computed => computed += 1,
        }
        records.push(rec);
    }

    // 4. The report.
    let lines: Vec<usize> = planned.iter().map(|p| p.prompt.line).collect();
    let report_path = report::write_all(&layout, &manifest, &lines, &records)?;
    log(
        req.quiet,
        format_args!(
            "{} phrases ({computed} computed, {updated} updated, {reused} reused) in {:.1} s",
            total,
            t_start.elapsed().as_secs_f64()
        ),
    );
    Ok(RunSummary {
        report: report_path,
        phrases: total,
        computed,
        updated,
        reused,
    })
}

/// The first model whose fingerprint differs between two manifests, as `name: old -> new`.
fn model_change(
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

pub use crate::fingerprint::sha256_hex;

/// A log line on stderr unless quiet.
fn log(quiet: bool, msg: std::fmt::Arguments) {
    crate::stderr::status(quiet, msg);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_partition_the_phrases() {
        let phrases: Vec<String> = (0..200).map(|i| format!("phrase number {i}")).collect();
        for n in [1, 2, 3, 7] {
            let shards: Vec<Shard> = (1..=n).map(|k| Shard { index: k, count: n }).collect();
            let mut sizes = vec![0; n];
            for p in &phrases {
                let owners: Vec<usize> = shards
                    .iter()
                    .filter(|s| s.contains(p))
                    .map(|s| s.index)
                    .collect();
                assert_eq!(owners.len(), 1, "{p} in shards {owners:?} of {n}");
                sizes[owners[0] - 1] += 1;
            }
            // A hash spreads 200 phrases roughly evenly.
            assert!(sizes.iter().all(|&s| s >= 200 / n / 2), "{sizes:?}");
        }
    }

    #[test]
    fn shard_specs_parse_and_reject() {
        assert_eq!("2/8".parse::<Shard>(), Ok(Shard { index: 2, count: 8 }));
        for bad in ["0/3", "4/3", "1/0", "x/2", "3", "1/2/3", ""] {
            let e = bad.parse::<Shard>().unwrap_err();
            assert!(e.contains("K/N"), "{bad}: {e}");
        }
    }

    #[test]
    fn seeds_and_ids_depend_only_on_the_phrase() {
        assert_eq!(phrase_seed(0, "a cat"), phrase_seed(0, "a cat"));
        assert_ne!(phrase_seed(0, "a cat"), phrase_seed(1, "a cat"));
        assert_ne!(phrase_seed(0, "a cat"), phrase_seed(0, "a cat!"));
        assert!(phrase_seed(u64::MAX, "x") < 1 << 53);
        assert_ne!(phrase_id("A cat"), phrase_id("a cat!"));
        assert!(phrase_id("A cat").starts_with("a-cat-"));
        assert_eq!(phrase_id("<script>").len(), "script-".len() + 8);
    }

    #[test]
    fn captioner_specs() {
        let c = parse_captioners("vgg16=a/b, xception=c").unwrap();
        assert_eq!(c[0].label, "vgg16");
        assert_eq!(c[1].dir, PathBuf::from("c"));
        for bad in ["vgg16", "=x", "a b=x", "v=a,v=b", ","] {
            assert!(parse_captioners(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn differences_name_the_setting() {
        let a = RunSettings {
            generator: "siren".into(),
            siren: Settings::default(),
            biggan: None,
            seed: 0,
            save_every: 50,
            beam: 1,
            clip: "clip-vit-b32".into(),
            captioners: parse_captioners("vgg16=x").unwrap(),
        };
        assert_eq!(settings_difference(&a, &a.clone()), None);
        let mut b = a.clone();
        b.siren.steps = 7;
        assert_eq!(
            settings_difference(&a, &b).as_deref(),
            Some("siren.steps: 200 -> 7")
        );
        let json = serde_json::to_string(&a).unwrap();
        let back: RunSettings = serde_json::from_str(&json).unwrap();
        assert_eq!(settings_difference(&a, &back), None);
    }
}
