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
use crate::models::biggan::BigGan;
use crate::models::clip::Clip;
use crate::prompts::{Prompt, PromptFile};
use record::PhotoRecord;
use stages::{BeamCaptioner, BigGanGenerator, Generator, ImageCaptioner, Judge, SirenGenerator};

/// Version of `run.json` and of the phrase records; bumped on any incompatible change.
pub const RUN_SCHEMA_VERSION: u32 = 1;

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

/// Everything that decides a phrase's result. A run folder keeps the settings it was started
/// with; running again with other settings is refused unless `--force`.
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
    pub computed: usize,
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

/// Runs the round trip: validates everything, then computes each missing phrase and writes the
/// report.
pub fn run(req: &RunRequest) -> anyhow::Result<RunSummary> {
    let t_start = Instant::now();
    // 1. Validate everything before any long work.
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
        read_config(&c.dir).with_context(|| format!("--captioners {}", c.label))?;
    }
    prepare_out_dir(&req.out)?;
    let layout = Layout {
        root: req.out.clone(),
    };
    if let Some(old) = read_manifest(&req.out)? {
        let differs = settings_difference(&old.settings, &settings).or_else(|| {
            (old.shard != req.shard).then(|| {
                format!(
                    "shard: {} -> {}",
                    old.shard.map_or("none".into(), |s| s.to_string()),
                    req.shard.map_or("none".into(), |s| s.to_string())
                )
            })
        });
        if let Some(d) = differs {
            if !req.force {
                return Err(input_err!(
                    "{} holds a run with other settings ({d}); use another --out, or --force to discard its results",
                    req.out.display()
                ));
            }
            discard_results(&layout)?;
        }
    }

    // 2. Load every model once.
    let locator = Locator::from_env();
    let clip_model = locator.open(&ModelRef::parse(&settings.clip)?)?;
    let clip = Clip::load(&clip_model, &req.device)
        .with_context(|| format!("loading CLIP `{}`", settings.clip))?;
    let mut captioners = Vec::new();
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
    for c in &settings.captioners {
        let loaded = Captioner::load(&c.dir, &locator, &req.device)
            .with_context(|| format!("loading captioner `{}` from {}", c.label, c.dir.display()))?;
        models.insert(
            format!("captioner:{}", c.label),
            serde_json::json!({
                "folder": c.dir.display().to_string(),
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
    write_json(&layout.manifest(), &manifest)?;
    for d in layout.result_dirs() {
        std::fs::create_dir_all(&d).with_context(|| format!("cannot create {}", d.display()))?;
    }

    // 3. Each phrase: reuse a finished record, else compute and write it.
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
    let mut records = Vec::with_capacity(planned.len());
    let (mut computed, mut reused) = (0, 0);
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
        let photo_sha = p.photo.as_ref().map(|(_, b, _)| sha256_hex(b));
        if let Some(r) = record::load_finished(
            &layout,
            &p.id,
            &p.prompt.phrase,
            seed,
            photo_sha.as_deref(),
            generator.name(),
            &settings,
        )? {
            log(
                req.quiet,
                format_args!("[{}/{total}] {} (done before)", i + 1, p.prompt.phrase),
            );
            records.push(r);
            reused += 1;
            continue;
        }
        log(
            req.quiet,
            format_args!("[{}/{total}] {}", i + 1, p.prompt.phrase),
        );
        let photo = match &p.photo {
            None => None,
            Some((source, bytes, img)) => {
                let dest = layout.photo(&p.id, source);
                std::fs::create_dir_all(dest.parent().unwrap_or(&layout.root))
                    .with_context(|| format!("cannot create {}", dest.display()))?;
                crate::fsutil::write_atomic(&dest, bytes)?;
                Some((
                    PhotoRecord {
                        source: p.prompt.photo.clone().unwrap_or_default(),
                        file: layout.relative(&dest),
                        sha256: photo_sha.clone().unwrap_or_default(),
                    },
                    img,
                ))
            }
        };
        let rec = record::compute(
            &layout,
            &p.id,
            &p.prompt.phrase,
            seed,
            photo,
            generator,
            &caps,
            &judge,
            settings.save_every,
            &crate::progress::bar(
                generator.steps() as u64,
                &format!("[{}/{total}]", i + 1),
                req.quiet,
            ),
        )?;
        write_json(&layout.record(&p.id), &rec)?;
        records.push(rec);
        computed += 1;
    }

    // 4. The report.
    let lines: Vec<usize> = planned.iter().map(|p| p.prompt.line).collect();
    let report_path = report::write_all(&layout, &manifest, &lines, &records)?;
    log(
        req.quiet,
        format_args!(
            "{} phrases ({computed} computed, {reused} reused) in {:.1} s",
            total,
            t_start.elapsed().as_secs_f64()
        ),
    );
    Ok(RunSummary {
        report: report_path,
        phrases: total,
        computed,
        reused,
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

/// Full SHA-256 of bytes, hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A log line on stderr unless quiet.
fn log(quiet: bool, msg: std::fmt::Arguments) {
    if !quiet {
        eprintln!("{msg}");
    }
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
