//! The shapes world's models, embedded in the binary, so that an installed `roundtrip` runs
//! `--preset shapes` from any directory.
//!
//! `build.rs` embeds every finished model folder `models/shapes/<name>/` of the checkout the
//! binary is built from (all its files but training leftovers such as `checkpoint.safetensors`).
//! A model reference `models/shapes/<name> (embedded)`, which is what `--preset shapes` fills in,
//! means that folder as it was at build time, whatever the working directory holds; the plain
//! path `models/shapes/<name>` keeps meaning the folder of that name in the working directory.
//!
//! Every model loader takes a folder, so an embedded model is copied once into the cache folder
//! ([`crate::captioner::feature_cache::default_cache_dir`]: `$ROUNDTRIP_CACHE`, else
//! `$XDG_CACHE_HOME/roundtrip`, else `~/.cache/roundtrip`), at `embedded/<digest>/<name>/`
//! where the digest is that of the model's files: binaries embedding the same files share one
//! copy, a retrained model gets its own. Each process checks the copy byte for byte against the
//! embedded files before it uses it; a missing, incomplete or damaged copy is (re)written under
//! the digest folder's lock ([`crate::lock::DirLock`]), into a temporary folder renamed into
//! place ([`crate::fsutil::write_dir_atomic`]), so that concurrent processes never see part of
//! a copy. Results are keyed by the content of the files loaded (`run.json`'s fingerprints), so
//! an embedded model and a folder with the same files give the same keys.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use crate::hub::LocateError;

/// The repository folder whose model subfolders are embedded.
pub const SOURCE_ROOT: &str = "models/shapes";

/// What marks a model reference as the embedded copy of `models/shapes/<name>`.
pub const SUFFIX: &str = " (embedded)";

/// The cache's subfolder holding the copies.
pub const CACHE_SUBDIR: &str = "embedded";

/// How long a process waits for another one copying the same model.
const LOCK_PATIENCE: Duration = Duration::from_secs(120);

/// One file of an embedded model folder.
pub struct EmbeddedFile {
    /// `/`-separated, relative to the model folder (`encoder/model.safetensors`).
    pub path: &'static str,
    pub bytes: &'static [u8],
}

/// One embedded model folder, `models/shapes/<name>`.
pub struct EmbeddedModel {
    name: &'static str,
    files: &'static [EmbeddedFile],
    digest: OnceLock<String>,
}

impl EmbeddedModel {
    pub const fn new(name: &'static str, files: &'static [EmbeddedFile]) -> Self {
        Self {
            name,
            files,
            digest: OnceLock::new(),
        }
    }

    /// The folder's name under `models/shapes/` (`clip`).
    pub fn name(&self) -> &'static str {
        self.name
    }

    pub fn files(&self) -> &'static [EmbeddedFile] {
        self.files
    }

    /// The repository folder it was embedded from (`models/shapes/clip`).
    pub fn source(&self) -> String {
        format!("{SOURCE_ROOT}/{}", self.name)
    }

    /// The model reference naming it (`models/shapes/clip (embedded)`).
    pub fn reference(&self) -> String {
        format!("{}{SUFFIX}", self.source())
    }

    /// Bytes of all its files.
    pub fn size(&self) -> usize {
        self.files.iter().map(|f| f.bytes.len()).sum()
    }

    /// SHA-256 of its files' paths and digests ([`crate::fingerprint::combine`]): the name of
    /// its copy's folder in the cache.
    pub fn digest(&self) -> &str {
        self.digest.get_or_init(|| {
            let digests: Vec<(&str, String)> = self
                .files
                .iter()
                .map(|f| (f.path, crate::fingerprint::sha256_hex(f.bytes)))
                .collect();
            crate::fingerprint::combine(digests.iter().map(|(p, d)| (*p, d.as_str())))
        })
    }
}

impl std::fmt::Debug for EmbeddedModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedModel")
            .field("name", &self.name)
            .field("files", &self.files.len())
            .field("bytes", &self.size())
            .finish()
    }
}

/// One binary embeds each model once, so a model is its name.
impl PartialEq for EmbeddedModel {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name && self.files.len() == other.files.len()
    }
}

impl Eq for EmbeddedModel {}

include!(concat!(env!("OUT_DIR"), "/embedded_models.rs"));

/// The models this binary embeds, by name.
pub fn models() -> &'static [EmbeddedModel] {
    &MODELS
}

/// The folders of `models`, for messages (`none` when there are none).
fn sources(models: &[EmbeddedModel]) -> String {
    if models.is_empty() {
        return "none".to_owned();
    }
    models
        .iter()
        .map(EmbeddedModel::source)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The embedded model a reference `models/shapes/<name> (embedded)` names: `None` for a
/// reference without the ` (embedded)` mark, an error naming what is embedded for one this
/// binary does not hold.
pub fn lookup(reference: &str) -> Option<Result<&'static EmbeddedModel, LocateError>> {
    lookup_in(&MODELS, reference)
}

fn lookup_in(
    models: &'static [EmbeddedModel],
    reference: &str,
) -> Option<Result<&'static EmbeddedModel, LocateError>> {
    let source = reference.trim().strip_suffix(SUFFIX)?;
    let error = |why: String| LocateError::NotEmbedded {
        spec: reference.to_owned(),
        embedded: sources(models),
        why,
    };
    let name = source
        .trim()
        .strip_prefix(SOURCE_ROOT)
        .and_then(|r| r.strip_prefix('/'))
        .map(|n| n.trim_end_matches('/'));
    let Some(name) = name.filter(|n| !n.is_empty() && !n.contains('/')) else {
        return Some(Err(error(format!(
            "only the folders of {SOURCE_ROOT}/ are embedded, named `{SOURCE_ROOT}/NAME{SUFFIX}`"
        ))));
    };
    Some(models.iter().find(|m| m.name == name).ok_or_else(|| {
        error(format!(
            "this binary was built from a checkout without a finished {SOURCE_ROOT}/{name}; \
             rebuild it from one that has it (`cargo install --path .`), or pass a folder holding the model instead"
        ))
    }))
}

/// The folder a captioner path stands for: the cache copy ([`materialise`]) of an embedded
/// reference (`models/shapes/vgg16 (embedded)`), else the path itself.
pub fn folder(path: &Path) -> anyhow::Result<Cow<'_, Path>> {
    let Some(found) = path.to_str().and_then(lookup) else {
        return Ok(Cow::Borrowed(path));
    };
    let model = found?;
    Ok(Cow::Owned(materialise(model)?))
}

/// The folder holding a checked copy of `model` in the cache, written there first when needed;
/// checked once per process. A damaged copy that had to be rewritten is noted on stderr.
pub fn materialise(model: &'static EmbeddedModel) -> anyhow::Result<PathBuf> {
    static DONE: OnceLock<Mutex<BTreeMap<(PathBuf, &'static str), PathBuf>>> = OnceLock::new();
    let root = crate::captioner::feature_cache::default_cache_dir();
    let done = DONE.get_or_init(Default::default);
    let key = (root.clone(), model.name);
    if let Some(dir) = done.lock().ok().and_then(|d| d.get(&key).cloned()) {
        return Ok(dir);
    }
    let m = materialise_in(model, &root)?;
    if let Some(problem) = &m.repaired {
        crate::stderr::note(format_args!(
            "the cached copy of the embedded model {} in {} was damaged ({problem}): rewritten from the binary",
            model.source(),
            m.dir.display()
        ));
    }
    if let Ok(mut d) = done.lock() {
        d.insert(key, m.dir.clone());
    }
    Ok(m.dir)
}

/// What [`materialise_in`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Materialised {
    /// The copy: `CACHE/embedded/<digest>/<name>`.
    pub dir: PathBuf,
    /// Whether this call wrote it.
    pub written: bool,
    /// What was wrong with the copy this call replaced, if it replaced one.
    pub repaired: Option<String>,
}

/// [`materialise`] into the cache folder `cache`, without the per-process memo.
pub fn materialise_in(model: &EmbeddedModel, cache: &Path) -> anyhow::Result<Materialised> {
    let parent = cache.join(CACHE_SUBDIR).join(model.digest());
    let dir = parent.join(model.name);
    let done = |written, repaired| Materialised {
        dir: dir.clone(),
        written,
        repaired,
    };
    if check(&dir, model).is_ok() {
        return Ok(done(false, None));
    }
    let cannot = |what: String| {
        crate::input_err!(
            "cannot copy the embedded model {} into the cache: {what}; set ROUNDTRIP_CACHE to a writable folder",
            model.source()
        )
    };
    std::fs::create_dir_all(&parent)
        .map_err(|e| cannot(format!("cannot create {}: {e}", parent.display())))?;
    let _lock = crate::lock::DirLock::acquire_within(
        &parent,
        &format!("(copying the embedded {})", model.source()),
        LOCK_PATIENCE,
    )?;
    // Another process may have written it while this one waited for the lock.
    let problem = match check(&dir, model) {
        Ok(()) => return Ok(done(false, None)),
        Err(p) => p,
    };
    // Left by a killed writer: only a lock holder may remove them.
    crate::fsutil::sweep_temp_dirs(&parent);
    crate::fsutil::sweep_temp_files(&parent);
    let repaired = match std::fs::symlink_metadata(&dir) {
        Err(_) => None,
        Ok(meta) => {
            // Moved aside first, so that the copy's name never names a half-removed folder.
            let aside = parent.join(format!(".{}.damaged.tmp{}", model.name, std::process::id()));
            std::fs::rename(&dir, &aside).map_err(|e| {
                cannot(format!(
                    "cannot move the damaged copy {} aside: {e}",
                    dir.display()
                ))
            })?;
            let removed = if meta.is_dir() {
                std::fs::remove_dir_all(&aside)
            } else {
                std::fs::remove_file(&aside)
            };
            removed.map_err(|e| cannot(format!("cannot remove {}: {e}", aside.display())))?;
            Some(problem)
        }
    };
    crate::fsutil::write_dir_atomic(&dir, model.files.iter().map(|f| (f.path, f.bytes)))
        .map_err(|e| cannot(format!("{e:#}")))?;
    check(&dir, model).map_err(|p| {
        anyhow::anyhow!(
            "the copy of the embedded model {} just written to {} does not read back: {p}",
            model.source(),
            dir.display()
        )
    })?;
    Ok(done(true, repaired))
}

/// Whether `dir` holds exactly the model's files with their embedded bytes; else what differs.
pub fn check(dir: &Path, model: &EmbeddedModel) -> Result<(), String> {
    match std::fs::symlink_metadata(dir) {
        Err(_) => return Err("it does not exist".to_owned()),
        Ok(m) if !m.is_dir() => return Err("it is not a folder".to_owned()),
        Ok(_) => {}
    }
    let mut present = Vec::new();
    list_files(dir, "", &mut present).map_err(|e| format!("cannot list it: {e}"))?;
    if let Some(extra) = present
        .iter()
        .find(|p| !model.files.iter().any(|f| f.path == p.as_str()))
    {
        return Err(format!(
            "it holds `{extra}`, which is not one of the model's files"
        ));
    }
    for f in model.files {
        let path = dir.join(f.path);
        let bytes = std::fs::read(&path).map_err(|e| format!("cannot read `{}`: {e}", f.path))?;
        if bytes.len() != f.bytes.len() {
            return Err(format!(
                "`{}` has {} bytes, expected {}",
                f.path,
                bytes.len(),
                f.bytes.len()
            ));
        }
        if bytes != f.bytes {
            return Err(format!("`{}` differs from the embedded file", f.path));
        }
    }
    Ok(())
}

/// Every entry below `dir` that is not a folder, as `/`-separated relative paths.
fn list_files(dir: &Path, prefix: &str, out: &mut Vec<String>) -> std::io::Result<()> {
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let name = e.file_name().to_string_lossy().into_owned();
        let rel = format!("{prefix}{name}");
        if e.file_type()?.is_dir() {
            list_files(&e.path(), &format!("{rel}/"), out)?;
        } else {
            out.push(rel);
        }
    }
    Ok(())
}

/// What `roundtrip presets` says of the embedded models: each one's folder and size.
pub fn summary() -> String {
    MODELS
        .iter()
        .map(|m| format!("{} ({:.1} MB)", m.source(), m.size() as f64 / 1e6))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    static TOY_FILES: [EmbeddedFile; 3] = [
        EmbeddedFile {
            path: "config.json",
            bytes: b"{\"kind\": \"toy\"}",
        },
        EmbeddedFile {
            path: "model.safetensors",
            bytes: &[7; 4096],
        },
        EmbeddedFile {
            path: "encoder/model.safetensors",
            bytes: &[3; 1024],
        },
    ];
    static TOY: [EmbeddedModel; 1] = [EmbeddedModel::new("toy", &TOY_FILES)];

    #[test]
    fn the_shipped_models_are_embedded_with_their_files_but_no_leftovers() {
        for name in ["clip", "vgg16", "xception"] {
            let m = models()
                .iter()
                .find(|m| m.name() == name)
                .unwrap_or_else(|| panic!("models/shapes/{name} is not embedded"));
            let paths: Vec<&str> = m.files().iter().map(|f| f.path).collect();
            for required in ["config.json", "model.safetensors"] {
                assert!(paths.contains(&required), "{name}: {paths:?}");
            }
            assert!(
                paths
                    .iter()
                    .all(|p| !p.ends_with("checkpoint.safetensors") && !p.starts_with('.')),
                "{name}: {paths:?}"
            );
            // The embedded bytes are the repository folder's.
            let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join(m.source());
            check(&repo, m).unwrap_or_else(|p| panic!("{}: {p}", repo.display()));
            let found = lookup(&m.reference())
                .expect("an embedded reference")
                .unwrap();
            assert_eq!(found.name(), name);
        }
    }

    #[test]
    fn references_name_embedded_models_or_say_what_is_embedded() {
        let toy: &'static [EmbeddedModel] = &TOY;
        assert!(
            lookup_in(toy, "models/shapes/toy").is_none(),
            "a plain path"
        );
        assert!(lookup_in(toy, "clip-vit-b32").is_none());
        assert_eq!(
            lookup_in(toy, "models/shapes/toy (embedded)")
                .unwrap()
                .unwrap()
                .name(),
            "toy"
        );
        for (bad, says) in [
            (
                "models/shapes/biggan (embedded)",
                "without a finished models/shapes/biggan",
            ),
            (
                "models/other/toy (embedded)",
                "only the folders of models/shapes/",
            ),
            (
                "models/shapes/a/b (embedded)",
                "only the folders of models/shapes/",
            ),
        ] {
            let e = lookup_in(toy, bad).unwrap().unwrap_err().to_string();
            assert!(
                e.contains(bad) && e.contains(says) && e.contains("models/shapes/toy"),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn a_copy_is_written_once_then_reused() {
        let cache = tempfile::tempdir().unwrap();
        let m = &TOY[0];
        let first = materialise_in(m, cache.path()).unwrap();
        assert!(first.written && first.repaired.is_none());
        assert_eq!(
            first.dir,
            cache.path().join("embedded").join(m.digest()).join("toy")
        );
        assert_eq!(
            std::fs::read(first.dir.join("encoder/model.safetensors")).unwrap(),
            [3; 1024]
        );
        let again = materialise_in(m, cache.path()).unwrap();
        assert_eq!((again.written, again.repaired), (false, None));
        // Only the copy (the lock file is removed with the lock, no temporary folder is left).
        let parent = first.dir.parent().unwrap();
        let names: Vec<String> = std::fs::read_dir(parent)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["toy"]);
    }

    #[test]
    fn a_damaged_copy_is_detected_and_rewritten() {
        let cache = tempfile::tempdir().unwrap();
        let m = &TOY[0];
        let dir = materialise_in(m, cache.path()).unwrap().dir;
        let weights = dir.join("model.safetensors");
        type Damage = fn(&Path);
        let damages: [(&str, Damage, &str); 5] = [
            (
                "a flipped byte",
                |d| {
                    let p = d.join("model.safetensors");
                    let mut b = std::fs::read(&p).unwrap();
                    b[100] ^= 1;
                    std::fs::write(p, b).unwrap();
                },
                "`model.safetensors` differs",
            ),
            (
                "a truncated file",
                |d| std::fs::write(d.join("model.safetensors"), [7; 10]).unwrap(),
                "has 10 bytes, expected 4096",
            ),
            (
                "a missing file",
                |d| std::fs::remove_file(d.join("encoder/model.safetensors")).unwrap(),
                "cannot read `encoder/model.safetensors`",
            ),
            (
                "a stray file",
                |d| std::fs::write(d.join("extra.json"), b"{}").unwrap(),
                "`extra.json`",
            ),
            (
                "a file in the folder's place",
                |d| {
                    std::fs::remove_dir_all(d).unwrap();
                    std::fs::write(d, b"x").unwrap();
                },
                "not a folder",
            ),
        ];
        for (what, damage, says) in damages {
            damage(&dir);
            let problem = check(&dir, m).expect_err(what);
            assert!(problem.contains(says), "{what}: {problem}");
            let fixed = materialise_in(m, cache.path()).unwrap();
            assert!(fixed.written, "{what}");
            assert!(
                fixed.repaired.as_deref().is_some_and(|p| p.contains(says)),
                "{what}: {:?}",
                fixed.repaired
            );
            assert_eq!(check(&dir, m), Ok(()), "{what}");
            assert_eq!(std::fs::read(&weights).unwrap(), [7; 4096]);
        }
    }

    #[test]
    fn concurrent_copies_never_expose_a_partial_folder() {
        let cache = tempfile::tempdir().unwrap();
        let m = &TOY[0];
        let dir = cache.path().join("embedded").join(m.digest()).join("toy");
        // A stale temporary folder from a killed writer does not get in the way.
        std::fs::create_dir_all(dir.parent().unwrap().join(".toy.tmp999999/encoder")).unwrap();
        let writes = std::sync::atomic::AtomicUsize::new(0);
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| {
                    for _ in 0..5 {
                        let got = materialise_in(m, cache.path()).unwrap();
                        // Whatever another thread is doing, the copy seen is complete.
                        assert_eq!(check(&got.dir, m), Ok(()));
                        if got.written {
                            writes.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        }
                    }
                });
            }
        });
        assert_eq!(writes.into_inner(), 1, "written once, by one thread");
        let names: Vec<String> = std::fs::read_dir(dir.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["toy"], "the stale temporary folder is swept");
    }

    #[test]
    fn captioner_paths_without_the_mark_are_left_alone() {
        let p = Path::new("models/shapes/vgg16");
        assert!(matches!(folder(p).unwrap(), Cow::Borrowed(b) if b == p));
    }
}
