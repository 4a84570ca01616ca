//! File-system helpers: nothing half-written is ever left under a final name.

use std::path::Path;

use anyhow::Context;

/// Writes `bytes` to `path` through a temporary file in the same folder and a rename, so that a
/// reader sees the old file or the whole new one. File and folder are fsynced before this
/// returns, so a result counts as written only once it would survive a power cut; on any error
/// the temporary file is removed (and [`sweep_temp_files`] removes those a killed process left).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("out");
    let tmp = dir.join(temp_name(name));
    let written = (|| -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        std::io::Write::write_all(&mut f, bytes)?;
        f.sync_all()
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(anyhow::Error::new(e).context(format!("cannot write {}", tmp.display())));
    }
    if let Err(e) = std::fs::rename(&tmp, path) {
        let _ = std::fs::remove_file(&tmp);
        return Err(anyhow::Error::new(e).context(format!(
            "cannot move {} to {}",
            tmp.display(),
            path.display()
        )));
    }
    sync_dir(dir);
    Ok(())
}

/// The part of a temporary file's name between the final name and the writer's PID.
const TEMP_MARK: &str = ".tmp";

/// `.NAME.tmpPID_N`: N counts this process's writes, so that two threads writing one file at
/// once (two images of a phrase copying its photo) never share a temporary file.
fn temp_name(name: &str) -> String {
    static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!(".{name}{TEMP_MARK}{}_{n}", std::process::id())
}

/// Makes a rename in `dir` durable. Best effort: some file systems cannot sync a folder.
pub fn sync_dir(dir: &Path) {
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

/// Removes the temporary files [`write_atomic`] leaves when its process is killed, in `dir`
/// (not below). Call it only while holding the folder's lock ([`crate::lock::DirLock`]): then
/// no other writer can be using them. Returns how many were removed.
pub fn sweep_temp_files(dir: &Path) -> usize {
    sweep_temp(dir, false)
}

/// Removes `dir`'s entries with a temporary name that are folders (`dirs`) or files.
fn sweep_temp(dir: &Path, dirs: bool) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut removed = 0;
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(name) = name.to_str() else { continue };
        if !is_temp_name(name) {
            continue;
        }
        let gone = match e.file_type() {
            Ok(t) if dirs && t.is_dir() => std::fs::remove_dir_all(e.path()).is_ok(),
            Ok(t) if !dirs && t.is_file() => std::fs::remove_file(e.path()).is_ok(),
            _ => false,
        };
        removed += usize::from(gone);
    }
    removed
}

/// Whether a file name is one of [`write_atomic`]'s or [`write_dir_atomic`]'s temporary files
/// (`.NAME.tmpPID_N` or `.NAME.tmpPID`).
pub fn is_temp_name(name: &str) -> bool {
    name.starts_with('.')
        && name.rfind(TEMP_MARK).is_some_and(|i| {
            let tail = &name[i + TEMP_MARK.len()..];
            let (pid, n) = tail.split_once('_').unwrap_or((tail, "0"));
            let digits = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_digit());
            digits(pid) && digits(n)
        })
}

/// Writes a whole folder at `path`, `files` being `/`-separated relative paths and their bytes,
/// through a temporary folder beside it (`.NAME.tmpPID`) renamed into place, so that a reader
/// sees no folder or the complete one, never part of it. Every file and folder is fsynced before
/// the rename. `path` must not exist (a rename onto a folder with files fails); on any error the
/// temporary folder is removed ([`sweep_temp_dirs`] removes those a killed process left).
pub fn write_dir_atomic<'a>(
    path: &Path,
    files: impl IntoIterator<Item = (&'a str, &'a [u8])>,
) -> anyhow::Result<()> {
    let parent = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("out");
    let tmp = parent.join(format!(".{name}{TEMP_MARK}{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    let written = (|| -> anyhow::Result<()> {
        std::fs::create_dir_all(&tmp)
            .with_context(|| format!("cannot create {}", tmp.display()))?;
        let mut dirs = std::collections::BTreeSet::from([tmp.clone()]);
        for (rel, bytes) in files {
            let file = tmp.join(rel);
            let dir = file.parent().unwrap_or(&tmp).to_path_buf();
            if dirs.insert(dir.clone()) {
                std::fs::create_dir_all(&dir)
                    .with_context(|| format!("cannot create {}", dir.display()))?;
            }
            (|| -> std::io::Result<()> {
                let mut f = std::fs::File::create(&file)?;
                std::io::Write::write_all(&mut f, bytes)?;
                f.sync_all()
            })()
            .with_context(|| format!("cannot write {}", file.display()))?;
        }
        // Deepest first, so that each folder's entry in its parent is synced after its contents.
        for d in dirs.iter().rev() {
            sync_dir(d);
        }
        std::fs::rename(&tmp, path)
            .with_context(|| format!("cannot move {} to {}", tmp.display(), path.display()))
    })();
    if written.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    written?;
    sync_dir(parent);
    Ok(())
}

/// Removes the temporary folders [`write_dir_atomic`] leaves when its process is killed (and any
/// folder named as one), in `dir` (not below). Like [`sweep_temp_files`], call it only while
/// holding the folder's lock. Returns how many were removed.
pub fn sweep_temp_dirs(dir: &Path) -> usize {
    sweep_temp(dir, true)
}

/// Writes named tensors as a safetensors file, atomically (see [`write_atomic`]).
pub fn write_safetensors(
    path: &Path,
    tensors: &std::collections::HashMap<String, candle_core::Tensor>,
) -> anyhow::Result<()> {
    let bytes = safetensors::tensor::serialize(tensors.iter(), None)
        .with_context(|| format!("cannot serialise the tensors of {}", path.display()))?;
    write_atomic(path, &bytes)
}

/// Writes a value as pretty JSON, atomically.
pub fn write_json<T: serde::Serialize>(path: &Path, value: &T) -> anyhow::Result<()> {
    let mut bytes = serde_json::to_vec_pretty(value)?;
    bytes.push(b'\n');
    write_atomic(path, &bytes)
}

/// A file-name-safe slug of a phrase: lowercase ASCII letters and digits joined by `-`, at most 60 characters.
pub fn slug(phrase: &str) -> String {
    let mut s = String::new();
    for c in phrase.chars().flat_map(char::to_lowercase) {
        if c.is_ascii_alphanumeric() {
            s.push(c);
        } else if !s.is_empty() && !s.ends_with('-') {
            s.push('-');
        }
    }
    let mut s = s.trim_end_matches('-').to_owned();
    if s.len() > 60 {
        s.truncate(60);
        s = s.trim_end_matches('-').to_owned();
    }
    if s.is_empty() {
        s.push_str("phrase");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs() {
        assert_eq!(
            slug("A cat, sleeping on a couch!"),
            "a-cat-sleeping-on-a-couch"
        );
        assert_eq!(slug("<script>"), "script");
        assert_eq!(slug("!!!"), "phrase");
        assert_eq!(slug(&"ab ".repeat(40)).len(), 59);
    }

    #[test]
    fn atomic_write_replaces_whole_file() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("a.json");
        write_json(&p, &serde_json::json!({"x": 1})).unwrap();
        write_json(&p, &serde_json::json!({"x": 2})).unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "{\n  \"x\": 2\n}\n");
        assert_eq!(
            std::fs::read_dir(d.path()).unwrap().count(),
            1,
            "no temporary file left"
        );
    }

    #[test]
    fn failed_writes_leave_no_temporary_file_and_sweeps_remove_stale_ones() {
        let d = tempfile::tempdir().unwrap();
        // Renaming onto a non-empty folder fails after the temporary file was written.
        let target = d.path().join("taken");
        std::fs::create_dir(&target).unwrap();
        std::fs::write(target.join("x"), b"x").unwrap();
        assert!(write_atomic(&target, b"data").is_err());
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 1);

        for name in [
            ".a.json.tmp123",
            ".b.png.tmp9",
            ".e.png.tmp9_12",
            "keep.tmp1",
            ".c.tmpx",
            ".f.tmp9_",
            ".g.tmp_3",
            "d.json",
        ] {
            std::fs::write(d.path().join(name), b"").unwrap();
        }
        assert_eq!(sweep_temp_files(d.path()), 3);
        let mut left: Vec<String> = std::fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(
            left,
            [
                ".c.tmpx",
                ".f.tmp9_",
                ".g.tmp_3",
                "d.json",
                "keep.tmp1",
                "taken"
            ]
        );
    }

    #[test]
    fn folders_are_written_whole_or_not_at_all() {
        let d = tempfile::tempdir().unwrap();
        let target = d.path().join("model");
        let files: [(&str, &[u8]); 2] = [("config.json", b"{}"), ("encoder/w.bin", b"123")];
        write_dir_atomic(&target, files).unwrap();
        assert_eq!(std::fs::read(target.join("encoder/w.bin")).unwrap(), b"123");
        assert_eq!(
            std::fs::read_dir(d.path()).unwrap().count(),
            1,
            "no temporary folder left"
        );
        // A second write onto the complete folder fails and leaves it as it was.
        let other: [(&str, &[u8]); 1] = [("config.json", b"[]")];
        assert!(write_dir_atomic(&target, other).is_err());
        assert_eq!(std::fs::read(target.join("config.json")).unwrap(), b"{}");
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 1);

        std::fs::create_dir_all(d.path().join(".model.tmp42/encoder")).unwrap();
        std::fs::create_dir(d.path().join(".keep.tmpx")).unwrap();
        assert_eq!(sweep_temp_dirs(d.path()), 1);
        assert!(d.path().join(".keep.tmpx").is_dir() && target.is_dir());
    }
}
