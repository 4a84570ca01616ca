//! Model locator: a model reference is a preset name, a local folder in the hub's layout, a model
//! embedded in the binary (`models/shapes/<name> (embedded)`, [`crate::embedded`]), or a Hugging
//! Face hub id with an optional revision (`org/name@rev`).
//!
//! Hub files come from the local cache in Python's layout (`models--org--name/refs/REV`,
//! `snapshots/COMMIT/FILE`) and, unless `HF_HUB_OFFLINE` is set, are downloaded with hf-hub.
//! Honours `HF_HOME`, `HF_HUB_CACHE`, `HF_ENDPOINT`, `HF_TOKEN` and `HF_HUB_OFFLINE`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use serde::{Deserialize, Serialize};

/// A reference that cannot be resolved, or a file that cannot be had. The user can fix these.
#[derive(Debug, thiserror::Error)]
pub enum LocateError {
    #[error("model `{spec}` is neither a folder, a preset ({presets}) nor a hub id `org/name[@revision]`")]
    BadReference { spec: String, presets: String },
    #[error("model folder {0} does not exist")]
    NoFolder(PathBuf),
    #[error(
        "model path {0} is a file; expected a folder holding the model's files (the hub's layout)"
    )]
    NotAFolder(PathBuf),
    #[error("model folder {folder} has no `{file}`: expected the repository's files in the hub's layout (config.json, weights, ...)")]
    MissingInFolder { folder: PathBuf, file: String },
    #[error(
        "{files} of hub repository `{repo}` (revision {revision}) {} not in the local cache {cache} \
         and HF_HUB_OFFLINE forbids downloading. Get {} either (1) with network access \
         (HF_HUB_OFFLINE unset): `{}` downloads {} into that cache; or (2) copy the \
         repository's files into a folder (the hub's layout: {files} beside the other files) and \
         {}",
        .files.are(), .files.them(), .fix.command, .files.them(), .fix.pass
    )]
    NotCached {
        repo: String,
        revision: String,
        /// The file asked for, then the model's other missing files.
        files: Files,
        cache: PathBuf,
        fix: Box<HubFix>,
    },
    #[error(
        "cannot download `{file}` of hub repository `{repo}` (revision {revision}): {reason}. Get it either \
         (1) with network access to the hub (check HF_ENDPOINT and HF_TOKEN): `{}`, or (2) copy the \
         repository's files into a folder (the hub's layout) and {}",
        .fix.command, .fix.pass
    )]
    Download {
        repo: String,
        revision: String,
        file: String,
        reason: String,
        fix: Box<HubFix>,
    },
    #[error(
        "`{spec}` is a folder or an embedded model, not a hub model: there is nothing to download \
         (expected a preset of models/presets.json or a hub id `org/name[@revision]`)"
    )]
    NotHub { spec: String },
    #[error("model `{spec}` is not embedded in this binary (it embeds {embedded}): {why}")]
    NotEmbedded {
        spec: String,
        embedded: String,
        why: String,
    },
    #[error("model `{spec}`: {reason}")]
    EmbeddedCopy { spec: String, reason: String },
    #[error("preset `{name}` has no hub repository: {why}{urls}")]
    NoHubSource {
        name: String,
        why: String,
        urls: String,
    },
}

/// How a hub error says to get the model: the command that downloads it, and how to pass a
/// folder instead, naming the option.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubFix {
    /// `roundtrip models download REF`.
    pub command: String,
    /// `pass that folder with --clip`.
    pub pass: String,
}

impl HubFix {
    fn of(model: &ModelRef) -> Box<Self> {
        Box::new(Self {
            command: model.download_command(),
            pass: model.pass_folder(),
        })
    }
}

/// One entry of `models/presets.json`.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Preset {
    pub name: String,
    pub kind: String,
    pub repo: Option<String>,
    pub revision: Option<String>,
    pub files: Vec<String>,
    #[serde(default)]
    pub source_urls: Vec<String>,
    pub why: String,
}

#[derive(Deserialize)]
struct PresetFile {
    presets: Vec<Preset>,
}

/// The preset registry shipped in `models/presets.json`.
pub fn presets() -> &'static [Preset] {
    static PRESETS: OnceLock<Vec<Preset>> = OnceLock::new();
    PRESETS.get_or_init(|| {
        let file: PresetFile = serde_json::from_str(include_str!("../models/presets.json"))
            .expect("models/presets.json is valid (checked by a unit test)");
        file.presets
    })
}

pub fn preset(name: &str) -> Option<&'static Preset> {
    presets().iter().find(|p| p.name == name)
}

/// Where a model's files live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSource {
    Folder(PathBuf),
    /// A model folder embedded in the binary, used through its copy in the cache.
    Embedded(&'static crate::embedded::EmbeddedModel),
    Hub {
        repo: String,
        revision: String,
    },
}

/// A parsed model reference, before any file is looked up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelRef {
    /// The reference as the user wrote it.
    pub spec: String,
    /// The preset it named or matched, if any.
    pub preset: Option<String>,
    pub source: ModelSource,
    /// The command-line option that gave it (`--clip`), named by errors that say how to pass a
    /// folder instead.
    pub option: Option<String>,
}

fn is_hub_name(s: &str) -> bool {
    !s.is_empty()
        && !s.starts_with(['.', '-'])
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

fn is_hub_id(s: &str) -> bool {
    match s.split_once('/') {
        Some((org, name)) => is_hub_name(org) && is_hub_name(name),
        None => is_hub_name(s),
    }
}

impl ModelRef {
    pub fn parse(spec: &str) -> Result<Self, LocateError> {
        let bad = || LocateError::BadReference {
            spec: spec.to_owned(),
            presets: presets()
                .iter()
                .map(|p| p.name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        };
        if let Some(found) = crate::embedded::lookup(spec) {
            return Ok(Self {
                spec: spec.to_owned(),
                preset: None,
                source: ModelSource::Embedded(found?),
                option: None,
            });
        }
        let path = Path::new(spec);
        if path.is_dir() {
            return Ok(Self {
                spec: spec.to_owned(),
                preset: None,
                source: ModelSource::Folder(path.into()),
                option: None,
            });
        }
        if path.is_file() {
            return Err(LocateError::NotAFolder(path.into()));
        }
        let looks_like_path =
            spec.starts_with(['.', '/', '~']) || spec.contains('\\') || spec.ends_with('/');
        if looks_like_path {
            return Err(LocateError::NoFolder(path.into()));
        }
        let (id, rev) = match spec.split_once('@') {
            Some((id, rev)) if !rev.is_empty() && !rev.contains(char::is_whitespace) => {
                (id, Some(rev))
            }
            Some(_) => return Err(bad()),
            None => (spec, None),
        };
        if let Some(p) = preset(id) {
            let Some(repo) = &p.repo else {
                let urls = if p.source_urls.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", p.source_urls.join(", "))
                };
                return Err(LocateError::NoHubSource {
                    name: p.name.clone(),
                    why: p.why.clone(),
                    urls,
                });
            };
            let revision = rev.or(p.revision.as_deref()).unwrap_or("main").to_owned();
            return Ok(Self {
                spec: spec.to_owned(),
                preset: Some(p.name.clone()),
                source: ModelSource::Hub {
                    repo: repo.clone(),
                    revision,
                },
                option: None,
            });
        }
        if !is_hub_id(id) {
            return Err(bad());
        }
        // A bare hub id of a preset's repository gets the preset's pinned revision.
        let matched = presets().iter().find(|p| p.repo.as_deref() == Some(id));
        let revision = rev
            .or(matched.and_then(|p| p.revision.as_deref()))
            .unwrap_or("main")
            .to_owned();
        Ok(Self {
            spec: spec.to_owned(),
            preset: matched.map(|p| p.name.clone()),
            source: ModelSource::Hub {
                repo: id.to_owned(),
                revision,
            },
            option: None,
        })
    }

    /// [`ModelRef::parse`] of the value of a command-line option (`--clip`), which errors then
    /// name.
    pub fn parse_option(spec: &str, option: &str) -> Result<Self, LocateError> {
        Ok(Self::parse(spec)?.with_option(option))
    }

    /// The same reference, given by `option`.
    pub fn with_option(mut self, option: &str) -> Self {
        self.option = Some(option.to_owned());
        self
    }

    /// The command that downloads this reference's hub files into the cache.
    pub fn download_command(&self) -> String {
        format!("roundtrip models download {}", shell_word(&self.spec))
    }

    /// How to pass a folder in its place: with its option, else in place of the reference.
    pub fn pass_folder(&self) -> String {
        match &self.option {
            Some(o) => format!("pass that folder with {o}"),
            None => format!("pass that folder in place of `{}`", self.spec),
        }
    }
}

/// `word` as a shell reads it back: quoted when it holds anything but plain characters.
pub fn shell_word(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./@=:,+".contains(c));
    if plain {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', "'\\''"))
    }
}

/// Files named in a message: `` `a` ``, `` `a` and `b` ``, `` `a`, `b` and `c` `` (an
/// alternative as `` `a` or `b` ``).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Files(pub Vec<FileNeed>);

impl Files {
    fn are(&self) -> &'static str {
        if self.0.len() > 1 {
            "are"
        } else {
            "is"
        }
    }

    fn them(&self) -> &'static str {
        if self.0.len() > 1 {
            "them"
        } else {
            "it"
        }
    }
}

impl std::fmt::Display for Files {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let quoted: Vec<String> = self.0.iter().map(ToString::to_string).collect();
        match quoted.split_last() {
            None => Ok(()),
            Some((last, [])) => write!(f, "{last}"),
            Some((last, rest)) => write!(f, "{} and {last}", rest.join(", ")),
        }
    }
}

/// A file a model needs: one name, or alternatives (`pytorch_model.bin` or `model.safetensors`),
/// the first tried first when downloading.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct FileNeed(pub Vec<String>);

impl FileNeed {
    pub fn one(name: &str) -> Self {
        Self(vec![name.to_owned()])
    }
}

impl std::fmt::Display for FileNeed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let quoted: Vec<String> = self.0.iter().map(|n| format!("`{n}`")).collect();
        write!(f, "{}", quoted.join(" or "))
    }
}

/// The kinds of model the tool loads (`kind` in models/presets.json).
pub const KINDS: [&str; 5] = ["clip", "biggan", "vgg16", "xception", "blip"];

/// The files a model of `kind` is loaded from (what its loader asks the locator for); `None`
/// for an unknown kind.
pub fn kind_files(kind: &str) -> Option<Vec<FileNeed>> {
    let v = |names: &[&str]| names.iter().map(|n| FileNeed::one(n)).collect::<Vec<_>>();
    match kind {
        "clip" => Some(v(&["config.json", "model.safetensors", "tokenizer.json"])),
        "vgg16" | "xception" => Some(v(&["config.json", "model.safetensors"])),
        "biggan" => Some(vec![
            FileNeed::one("config.json"),
            FileNeed(vec!["pytorch_model.bin".into(), "model.safetensors".into()]),
        ]),
        // tokenizer_config.json is read when there is one (its clean_up_tokenization_spaces).
        "blip" => Some(vec![
            FileNeed::one("config.json"),
            FileNeed(vec!["model.safetensors".into(), "pytorch_model.bin".into()]),
            FileNeed::one("tokenizer.json"),
            FileNeed::one("preprocessor_config.json"),
        ]),
        _ => None,
    }
}

/// The files to fetch or check of a hub reference: its preset's (pinned in models/presets.json),
/// else those of a model of `kind`.
pub fn needed_files(model: &ModelRef, kind: Option<&str>) -> Option<Vec<FileNeed>> {
    if let Some(p) = model.preset.as_deref().and_then(preset) {
        return Some(p.files.iter().map(|f| FileNeed::one(f)).collect());
    }
    kind.and_then(kind_files)
}

/// How to reach the hub: read from the environment as huggingface_hub does.
#[derive(Debug, Clone)]
pub struct HubSettings {
    /// The hub cache folder (holding `models--org--name`).
    pub cache_dir: PathBuf,
    pub endpoint: Option<String>,
    pub token: Option<String>,
    /// Cache only, never the network.
    pub offline: bool,
    /// Show download progress on stderr (a bar on a terminal, heartbeat lines in a log) and a
    /// line per file downloaded.
    pub progress: bool,
}

fn env_nonempty(key: &str) -> Option<String> {
    std::env::var(key).ok().filter(|v| !v.trim().is_empty())
}

fn truthy(v: &str) -> bool {
    matches!(
        v.trim().to_ascii_lowercase().as_str(),
        "1" | "true" | "yes" | "on"
    )
}

impl HubSettings {
    pub fn from_env() -> Self {
        let cache_dir = env_nonempty("HF_HUB_CACHE")
            .map(PathBuf::from)
            .unwrap_or_else(|| match env_nonempty("HF_HOME") {
                Some(home) => PathBuf::from(home).join("hub"),
                None => hf_hub::Cache::default().path().clone(),
            });
        Self {
            cache_dir,
            endpoint: env_nonempty("HF_ENDPOINT"),
            token: env_nonempty("HF_TOKEN"),
            offline: env_nonempty("HF_HUB_OFFLINE").is_some_and(|v| truthy(&v)),
            progress: true,
        }
    }
}

/// What a command records about a model it used.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ModelRecord {
    /// The reference as given.
    pub reference: String,
    pub preset: Option<String>,
    /// `folder`, `embedded` (then `path` is its copy in the cache) or `hub`.
    pub source: &'static str,
    /// The folder, for folder models.
    pub path: Option<String>,
    pub repo: Option<String>,
    /// The revision asked for (branch, tag, ref or commit).
    pub revision: Option<String>,
    /// The commit the files came from, once a file was resolved.
    pub commit: Option<String>,
    /// The content fingerprint of the files resolved so far ([`Model::fingerprint`]): what
    /// results made with this model are keyed by.
    pub fingerprint: Option<String>,
}

/// Resolves model files, sharing one hub client.
pub struct Locator {
    settings: HubSettings,
    api: OnceLock<Result<hf_hub::api::sync::Api, String>>,
}

impl Locator {
    pub fn new(settings: HubSettings) -> Self {
        Self {
            settings,
            api: OnceLock::new(),
        }
    }

    pub fn from_env() -> Self {
        Self::new(HubSettings::from_env())
    }

    /// [`Locator::from_env`] for a command with a `--quiet` flag: no download progress when quiet.
    pub fn from_env_quiet(quiet: bool) -> Self {
        Self::new(HubSettings {
            progress: !quiet,
            ..HubSettings::from_env()
        })
    }

    /// Cache-only resolution from `cache_dir` (as `HF_HUB_OFFLINE=1`), without progress bars.
    pub fn offline(cache_dir: &Path) -> Self {
        Self::new(HubSettings {
            cache_dir: cache_dir.to_path_buf(),
            endpoint: None,
            token: None,
            offline: true,
            progress: false,
        })
    }

    pub fn settings(&self) -> &HubSettings {
        &self.settings
    }

    /// Opens a model reference; files are looked up (and downloaded) one by one with [`Model::file`].
    /// An embedded model is copied into the cache first ([`crate::embedded::materialise`]).
    pub fn open<'a>(&'a self, model: &ModelRef) -> Result<Model<'a>, LocateError> {
        let folder =
            match &model.source {
                ModelSource::Folder(dir) => {
                    if !dir.is_dir() {
                        return Err(LocateError::NoFolder(dir.clone()));
                    }
                    Some(dir.clone())
                }
                ModelSource::Embedded(m) => Some(crate::embedded::materialise(m).map_err(|e| {
                    LocateError::EmbeddedCopy {
                        spec: model.spec.clone(),
                        reason: format!("{e:#}"),
                    }
                })?),
                ModelSource::Hub { .. } => None,
            };
        Ok(Model {
            locator: self,
            reference: model.clone(),
            folder,
            commit: Mutex::new(None),
            files: Mutex::new(BTreeMap::new()),
        })
    }

    fn api(&self) -> Result<&hf_hub::api::sync::Api, String> {
        self.api
            .get_or_init(|| {
                let s = &self.settings;
                // Progress goes through crate::stderr (DownloadProgress), not hf-hub's own bars.
                let mut b = hf_hub::api::sync::ApiBuilder::from_cache(hf_hub::Cache::new(
                    s.cache_dir.clone(),
                ))
                .with_progress(false);
                if let Some(e) = &s.endpoint {
                    b = b.with_endpoint(e.clone());
                }
                if s.token.is_some() {
                    b = b.with_token(s.token.clone());
                }
                b.build().map_err(|e| e.to_string())
            })
            .as_ref()
            .map_err(Clone::clone)
    }
}

impl Locator {
    /// Downloads one file of a hub repository into the cache, with a progress bar (a heartbeat
    /// line without a terminal) unless the settings say no progress, and a line when done;
    /// returns the commit it came from and its path.
    fn download(
        &self,
        model: &ModelRef,
        repo: &str,
        revision: &str,
        name: &str,
    ) -> Result<(String, PathBuf), LocateError> {
        let download_err = |reason: String| LocateError::Download {
            repo: repo.to_owned(),
            revision: revision.to_owned(),
            file: name.to_owned(),
            reason,
            fix: HubFix::of(model),
        };
        let api = self.api().map_err(download_err)?;
        let hub_repo = hf_hub::Repo::with_revision(
            repo.to_owned(),
            hf_hub::RepoType::Model,
            revision.to_owned(),
        );
        let quiet = !self.settings.progress;
        let started = std::time::Instant::now();
        let progress = DownloadProgress {
            prefix: format!("{repo} {name}"),
            quiet,
            bar: None,
        };
        let path = api
            .repo(hub_repo)
            .download_with_progress(name, progress)
            .map_err(|e| download_err(e.to_string()))?;
        let bytes = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        crate::stderr::status(
            quiet,
            format_args!(
                "downloaded {repo} {name} ({}) in {}",
                indicatif::BinaryBytes(bytes),
                crate::stderr::duration(started.elapsed())
            ),
        );
        // The file lands in snapshots/COMMIT/NAME: the commit is the folder above the file name.
        let mut commit_dir = path.clone();
        for _ in name.split('/') {
            commit_dir.pop();
        }
        let commit = commit_dir
            .file_name()
            .and_then(|c| c.to_str())
            .unwrap_or_default()
            .to_owned();
        // hf-hub records the revision's commit only for the revision asked; a pinned ref that
        // is not a commit resolves from the cache next time through that ref file.
        Ok((commit, path))
    }

    /// Makes every file of `files` of a hub reference present in the cache (downloading the
    /// missing ones; of alternatives, the first the hub has) and says for each whether it was
    /// there. Not for folder or embedded references (an input error naming the reference).
    /// Stops at the first file that cannot be had.
    pub fn fetch(&self, model: &ModelRef, files: &[FileNeed]) -> Result<Fetched, LocateError> {
        let ModelSource::Hub { repo, revision } = &model.source else {
            return Err(LocateError::NotHub {
                spec: model.spec.clone(),
            });
        };
        let cache = &self.settings.cache_dir;
        let mut out = Fetched {
            repo: repo.clone(),
            revision: revision.clone(),
            commit: None,
            files: Vec::new(),
        };
        for need in files {
            let cached = need
                .0
                .iter()
                .find_map(|n| cached_file(cache, repo, revision, n).map(|(c, p)| (n, c, p)));
            if let Some((name, commit, path)) = cached {
                out.commit = Some(commit);
                out.files.push(FetchedFile::new(name, path, false));
                continue;
            }
            if self.settings.offline {
                return Err(LocateError::NotCached {
                    repo: repo.clone(),
                    revision: revision.clone(),
                    files: Files(cache_status(cache, repo, revision, files).missing),
                    cache: cache.clone(),
                    fix: HubFix::of(model),
                });
            }
            let mut first_err = None;
            let mut got = None;
            for name in &need.0 {
                match self.download(model, repo, revision, name) {
                    Ok((commit, path)) => {
                        got = Some((name, commit, path));
                        break;
                    }
                    Err(e) => {
                        first_err.get_or_insert(e);
                    }
                }
            }
            match (got, first_err) {
                (Some((name, commit, path)), _) => {
                    out.commit = Some(commit);
                    out.files.push(FetchedFile::new(name, path, true));
                }
                (None, Some(e)) => return Err(e),
                (None, None) => {}
            }
        }
        if let Some(c) = &out.commit {
            // A revision that names a branch or ref: record it, so that the cache resolves it
            // without the network (hf-hub writes it too; this covers files that were cached).
            if !is_commit_hash(revision) && cached_commit(cache, repo, revision).is_none() {
                let refs = repo_cache_dir(cache, repo).join("refs").join(revision);
                if let Some(parent) = refs.parent() {
                    let _ = std::fs::create_dir_all(parent);
                }
                let _ = std::fs::write(&refs, c);
            }
        }
        Ok(out)
    }

    /// What the cache holds of `files` of a hub repository, without the network.
    pub fn cache_status(&self, repo: &str, revision: &str, files: &[FileNeed]) -> CacheStatus {
        cache_status(&self.settings.cache_dir, repo, revision, files)
    }
}

/// What [`Locator::fetch`] did for one reference.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Fetched {
    pub repo: String,
    pub revision: String,
    /// The commit the files came from.
    pub commit: Option<String>,
    pub files: Vec<FetchedFile>,
}

/// One file of a [`Fetched`] reference.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FetchedFile {
    pub name: String,
    pub path: PathBuf,
    pub bytes: u64,
    /// Whether this call downloaded it (else it was in the cache).
    pub downloaded: bool,
}

impl FetchedFile {
    fn new(name: &str, path: PathBuf, downloaded: bool) -> Self {
        let bytes = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        Self {
            name: name.to_owned(),
            path,
            bytes,
            downloaded,
        }
    }
}

/// hf-hub's download progress as a [`crate::stderr::Bar`] of bytes (created when the download
/// knows its size; a resumed download restarts it at what is already there).
struct DownloadProgress {
    prefix: String,
    quiet: bool,
    bar: Option<crate::stderr::Bar>,
}

impl hf_hub::api::Progress for DownloadProgress {
    fn init(&mut self, size: usize, _filename: &str) {
        match &self.bar {
            Some(b) => b.start_at(0),
            None => {
                self.bar = Some(crate::stderr::Bar::bytes(
                    size as u64,
                    &self.prefix,
                    self.quiet,
                ))
            }
        }
    }

    fn update(&mut self, size: usize) {
        if let Some(b) = &self.bar {
            b.inc(size as u64);
        }
    }

    fn finish(&mut self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

/// What the cache holds of a hub repository's files at one revision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CacheStatus {
    /// `models--org--name` in the cache (whether or not it exists).
    pub folder: PathBuf,
    /// The commit the revision points to in the cache, if known there.
    pub commit: Option<String>,
    /// `snapshots/COMMIT`, when the commit is known.
    pub snapshot: Option<PathBuf>,
    /// The files there (of alternatives, the one found), with their paths.
    pub present: Vec<(String, PathBuf)>,
    /// The files not there.
    pub missing: Vec<FileNeed>,
}

impl CacheStatus {
    pub fn complete(&self) -> bool {
        self.missing.is_empty()
    }
}

/// [`Locator::cache_status`] of the cache folder `cache`.
pub fn cache_status(cache: &Path, repo: &str, revision: &str, files: &[FileNeed]) -> CacheStatus {
    let commit = cached_commit(cache, repo, revision);
    let folder = repo_cache_dir(cache, repo);
    let snapshot = commit.as_ref().map(|c| folder.join("snapshots").join(c));
    let mut present = Vec::new();
    let mut missing = Vec::new();
    for need in files {
        let found = snapshot.as_ref().and_then(|snap| {
            need.0
                .iter()
                .map(|n| (n, snap.join(n)))
                .find(|(_, p)| p.is_file())
        });
        match found {
            Some((n, p)) => present.push((n.clone(), p)),
            None => missing.push(need.clone()),
        }
    }
    CacheStatus {
        folder,
        commit,
        snapshot,
        present,
        missing,
    }
}

/// A file of a revision in the cache: its commit and path.
fn cached_file(cache: &Path, repo: &str, revision: &str, name: &str) -> Option<(String, PathBuf)> {
    let commit = cached_commit(cache, repo, revision)?;
    let p = repo_cache_dir(cache, repo)
        .join("snapshots")
        .join(&commit)
        .join(name);
    p.is_file().then_some((commit, p))
}

/// The cache folder of one repository, in Python's layout.
fn repo_cache_dir(cache: &Path, repo: &str) -> PathBuf {
    cache.join(format!("models--{}", repo.replace('/', "--")))
}

fn is_commit_hash(rev: &str) -> bool {
    rev.len() == 40 && rev.chars().all(|c| c.is_ascii_hexdigit())
}

/// The commit a revision points to in the cache, if known there.
fn cached_commit(cache: &Path, repo: &str, revision: &str) -> Option<String> {
    if is_commit_hash(revision) {
        return Some(revision.to_owned());
    }
    let r =
        std::fs::read_to_string(repo_cache_dir(cache, repo).join("refs").join(revision)).ok()?;
    Some(r.trim().to_owned()).filter(|c| !c.is_empty())
}

/// An opened model reference.
pub struct Model<'a> {
    locator: &'a Locator,
    reference: ModelRef,
    /// The folder holding the files (a folder model's, or an embedded model's cache copy).
    folder: Option<PathBuf>,
    commit: Mutex<Option<String>>,
    /// Every file resolved through [`Model::file`], by name: what the model was loaded from.
    files: Mutex<BTreeMap<String, PathBuf>>,
}

impl Model<'_> {
    pub fn reference(&self) -> &ModelRef {
        &self.reference
    }

    /// Path of one of the model's files, from the folder, the cache or a download.
    pub fn file(&self, name: &str) -> Result<PathBuf, LocateError> {
        let path = self.resolve(name)?;
        if let Ok(mut files) = self.files.lock() {
            files.insert(name.to_owned(), path.clone());
        }
        Ok(path)
    }

    /// The content fingerprint of the files loaded so far (names and SHA-256 of their bytes,
    /// [`crate::fingerprint`]): the same for a copy of the folder or the hub snapshot, different
    /// as soon as one byte of a loaded file differs. Call it after loading.
    pub fn fingerprint(&self) -> anyhow::Result<String> {
        let files = self
            .files
            .lock()
            .map_err(|_| anyhow::anyhow!("model file list poisoned"))?
            .clone();
        anyhow::ensure!(
            !files.is_empty(),
            "model `{}`: no file loaded yet to fingerprint",
            self.reference.spec
        );
        let digests = files
            .iter()
            .map(|(name, path)| Ok((name.as_str(), crate::fingerprint::file_sha256(path)?)))
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(crate::fingerprint::combine(
            digests.iter().map(|(n, d)| (*n, d.as_str())),
        ))
    }

    fn resolve(&self, name: &str) -> Result<PathBuf, LocateError> {
        if let Some(dir) = &self.folder {
            let p = dir.join(name);
            return if p.is_file() {
                Ok(p)
            } else {
                Err(LocateError::MissingInFolder {
                    folder: dir.clone(),
                    file: name.to_owned(),
                })
            };
        }
        match &self.reference.source {
            ModelSource::Hub { repo, revision } => self.hub_file(repo, revision, name),
            ModelSource::Folder(dir) => Err(LocateError::NoFolder(dir.clone())),
            ModelSource::Embedded(_) => Err(LocateError::EmbeddedCopy {
                spec: self.reference.spec.clone(),
                reason: "not copied into the cache".to_owned(),
            }),
        }
    }

    /// Whether the model has this file (for optional files); never downloads.
    pub fn has_local_file(&self, name: &str) -> bool {
        if let Some(dir) = &self.folder {
            return dir.join(name).is_file();
        }
        match &self.reference.source {
            ModelSource::Folder(_) | ModelSource::Embedded(_) => false,
            ModelSource::Hub { repo, revision } => {
                cached_file(&self.locator.settings.cache_dir, repo, revision, name).is_some()
            }
        }
    }

    fn hub_file(&self, repo: &str, revision: &str, name: &str) -> Result<PathBuf, LocateError> {
        let settings = &self.locator.settings;
        if let Some((commit, p)) = cached_file(&settings.cache_dir, repo, revision, name) {
            self.set_commit(commit);
            return Ok(p);
        }
        if settings.offline {
            // The file asked for, then the preset's other files that are missing too.
            let mut files = vec![FileNeed::one(name)];
            if let Some(p) = self.reference.preset.as_deref().and_then(preset) {
                let status = cache_status(
                    &settings.cache_dir,
                    repo,
                    revision,
                    &needed_files(&self.reference, Some(&p.kind)).unwrap_or_default(),
                );
                files.extend(
                    status
                        .missing
                        .into_iter()
                        .filter(|f| !f.0.iter().any(|n| n == name)),
                );
            }
            return Err(LocateError::NotCached {
                repo: repo.to_owned(),
                revision: revision.to_owned(),
                files: Files(files),
                cache: settings.cache_dir.clone(),
                fix: HubFix::of(&self.reference),
            });
        }
        let (commit, path) = self
            .locator
            .download(&self.reference, repo, revision, name)?;
        self.set_commit(commit);
        Ok(path)
    }

    fn set_commit(&self, commit: String) {
        if let Ok(mut c) = self.commit.lock() {
            *c = Some(commit);
        }
    }

    /// What to record in outputs: the reference, the commit once a file was resolved, and the
    /// fingerprint of the files loaded so far.
    pub fn record(&self) -> ModelRecord {
        let commit = self.commit.lock().ok().and_then(|c| c.clone());
        let fingerprint = self.fingerprint().ok();
        let r = &self.reference;
        match &r.source {
            ModelSource::Folder(dir) => ModelRecord {
                reference: r.spec.clone(),
                preset: r.preset.clone(),
                source: "folder",
                path: Some(dir.display().to_string()),
                repo: None,
                revision: None,
                commit: None,
                fingerprint,
            },
            ModelSource::Embedded(_) => ModelRecord {
                reference: r.spec.clone(),
                preset: r.preset.clone(),
                source: "embedded",
                path: self.folder.as_ref().map(|d| d.display().to_string()),
                repo: None,
                revision: None,
                commit: None,
                fingerprint,
            },
            ModelSource::Hub { repo, revision } => ModelRecord {
                reference: r.spec.clone(),
                preset: r.preset.clone(),
                source: "hub",
                path: None,
                repo: Some(repo.clone()),
                revision: Some(revision.clone()),
                commit,
                fingerprint,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preset_registry_parses_and_names_are_unique() {
        let names: std::collections::HashSet<_> = presets().iter().map(|p| &p.name).collect();
        assert_eq!(names.len(), presets().len());
        for kind in KINDS {
            assert!(
                presets().iter().any(|p| p.kind == kind),
                "no preset of kind {kind}"
            );
        }
        for p in presets() {
            assert!(
                p.repo.is_some() || !p.source_urls.is_empty(),
                "{} has no source",
                p.name
            );
        }
    }

    #[test]
    fn parses_hub_ids_presets_and_revisions() {
        let hub = |spec: &str| ModelRef::parse(spec).unwrap().source;
        assert_eq!(
            hub("openai/clip-vit-base-patch32@abc"),
            ModelSource::Hub {
                repo: "openai/clip-vit-base-patch32".into(),
                revision: "abc".into()
            }
        );
        // The bare id of a preset's repo uses the pinned revision.
        assert_eq!(
            hub("openai/clip-vit-base-patch32"),
            ModelSource::Hub {
                repo: "openai/clip-vit-base-patch32".into(),
                revision: "refs/pr/15".into()
            }
        );
        let p = ModelRef::parse("clip-vit-b32").unwrap();
        assert_eq!(p.preset.as_deref(), Some("clip-vit-b32"));
        assert_eq!(
            hub("someone/model"),
            ModelSource::Hub {
                repo: "someone/model".into(),
                revision: "main".into()
            }
        );
    }

    #[test]
    fn rejects_bad_references_clearly() {
        let msg = |spec: &str| ModelRef::parse(spec).unwrap_err().to_string();
        assert!(msg("a/b/c").contains("neither a folder"));
        assert!(msg("org/name@").contains("neither a folder"));
        assert!(msg("./no/such/folder").contains("does not exist"));
        let e = msg("biggan-deep-256");
        assert!(
            e.contains("no hub repository") && e.contains("biggan-deep-256-pytorch_model.bin"),
            "{e}"
        );
        let file = tempfile::NamedTempFile::new().unwrap();
        assert!(msg(file.path().to_str().unwrap()).contains("is a file"));
    }

    fn fake_cache(root: &Path, repo: &str, rev: &str, commit: &str, files: &[&str]) {
        let dir = repo_cache_dir(root, repo);
        std::fs::create_dir_all(dir.join("refs")).unwrap();
        std::fs::write(dir.join("refs").join(rev), commit).unwrap();
        let snap = dir.join("snapshots").join(commit);
        std::fs::create_dir_all(&snap).unwrap();
        for f in files {
            std::fs::write(snap.join(f), format!("contents of {f}")).unwrap();
        }
    }

    #[test]
    fn resolves_from_a_fake_cache_offline_and_records_the_commit() {
        let tmp = tempfile::tempdir().unwrap();
        let commit = "0123456789abcdef0123456789abcdef01234567";
        fake_cache(tmp.path(), "org/tiny", "main", commit, &["config.json"]);
        let loc = Locator::offline(tmp.path());
        let model = loc.open(&ModelRef::parse("org/tiny").unwrap()).unwrap();
        assert_eq!(model.record().commit, None);
        let p = model.file("config.json").unwrap();
        assert_eq!(
            std::fs::read_to_string(p).unwrap(),
            "contents of config.json"
        );
        let rec = model.record();
        assert_eq!(rec.commit.as_deref(), Some(commit));
        assert_eq!(rec.revision.as_deref(), Some("main"));
        assert!(model.has_local_file("config.json") && !model.has_local_file("model.safetensors"));

        // A pinned commit resolves without a ref file.
        let pinned = loc
            .open(&ModelRef::parse(&format!("org/tiny@{commit}")).unwrap())
            .unwrap();
        assert!(pinned.file("config.json").is_ok());
    }

    #[test]
    fn offline_missing_file_names_repo_file_and_both_remedies() {
        let tmp = tempfile::tempdir().unwrap();
        fake_cache(tmp.path(), "org/tiny", "main", "abc", &["config.json"]);
        let loc = Locator::offline(tmp.path());
        let model = loc.open(&ModelRef::parse("org/tiny").unwrap()).unwrap();
        let e = model.file("model.safetensors").unwrap_err().to_string();
        for part in [
            "org/tiny",
            "model.safetensors",
            "HF_HUB_OFFLINE",
            "network",
            "folder",
        ] {
            assert!(e.contains(part), "{part:?} missing from: {e}");
        }
        let other = loc
            .open(&ModelRef::parse("org/absent@v1").unwrap())
            .unwrap();
        assert!(matches!(
            other.file("config.json"),
            Err(LocateError::NotCached { .. })
        ));
    }

    #[test]
    fn folder_models_resolve_files_and_name_missing_ones() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("config.json"), "{}").unwrap();
        let loc = Locator::offline(tmp.path());
        let r = ModelRef::parse(tmp.path().to_str().unwrap()).unwrap();
        let model = loc.open(&r).unwrap();
        assert!(model.file("config.json").is_ok());
        let e = model.file("model.safetensors").unwrap_err().to_string();
        assert!(
            e.contains("model.safetensors") && e.contains(tmp.path().to_str().unwrap()),
            "{e}"
        );
        assert_eq!(model.record().source, "folder");
    }

    #[test]
    fn fingerprints_follow_the_loaded_files_content_not_their_place() {
        let tmp = tempfile::tempdir().unwrap();
        let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
        for d in [&a, &b] {
            std::fs::create_dir_all(d).unwrap();
            std::fs::write(d.join("config.json"), "{}").unwrap();
            std::fs::write(d.join("model.safetensors"), "weights").unwrap();
        }
        let loc = Locator::offline(tmp.path());
        let fp = |dir: &Path| {
            let m = loc
                .open(&ModelRef::parse(dir.to_str().unwrap()).unwrap())
                .unwrap();
            assert!(m.fingerprint().is_err(), "nothing loaded yet");
            m.file("config.json").unwrap();
            m.file("model.safetensors").unwrap();
            let f = m.fingerprint().unwrap();
            assert_eq!(m.record().fingerprint.as_deref(), Some(f.as_str()));
            f
        };
        assert_eq!(fp(&a), fp(&b), "a copy has the same fingerprint");
        std::fs::write(b.join("model.safetensors"), "weightz").unwrap();
        assert_ne!(fp(&a), fp(&b), "a replaced file changes it");
    }
}
