//! Content fingerprints: what a result was made from, by content rather than by path, so that a
//! model replaced or retrained in place is never mistaken for the one a result was made with.
//!
//! A file's fingerprint is the SHA-256 of its bytes. Hashing the full-size checkpoints (0.1-0.6
//! GB each; about 1.5 GB/s with the SHA extensions of current x86 CPUs) costs about a second per
//! run, so the digest of a file is remembered in the cache folder under the file's identity:
//! device, inode, size, modification time and change time. The change time (ctime) is set by the
//! kernel on every write, rename onto the path, or metadata change, and no user tool can set it
//! back, so a file replaced or rewritten in place always gets a new identity and is hashed again:
//! a stale digest cannot be reused. A model's fingerprint is the SHA-256 of the list of its files'
//! names and digests.

use std::path::Path;

use anyhow::Context;
use sha2::{Digest, Sha256};

/// Lowercase hex of bytes.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// SHA-256 of bytes, hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// The digest of named parts (file name -> digest), independent of their order.
pub fn combine<'a>(parts: impl IntoIterator<Item = (&'a str, &'a str)>) -> String {
    let mut parts: Vec<(&str, &str)> = parts.into_iter().collect();
    parts.sort();
    let mut h = Sha256::new();
    for (name, digest) in parts {
        h.update((name.len() as u64).to_le_bytes());
        h.update(name.as_bytes());
        h.update((digest.len() as u64).to_le_bytes());
        h.update(digest.as_bytes());
    }
    hex(&h.finalize())
}

/// Files at least this large have their digests remembered (smaller ones are hashed each time).
const MEMO_FROM: u64 = 16 << 20;

/// SHA-256 of a file's content, hex; remembered for large files (see the module header).
pub fn file_sha256(path: &Path) -> anyhow::Result<String> {
    let memo = crate::captioner::feature_cache::default_cache_dir().join("digests");
    file_sha256_in(path, Some(&memo))
}

/// A file changed this recently may change again within the change time's resolution (a few
/// milliseconds) without a new identity, so its digest is not remembered yet.
const SETTLED_AFTER: std::time::Duration = std::time::Duration::from_secs(2);

/// [`file_sha256`] with the memo in `memo_dir` (`None`: always hash).
pub fn file_sha256_in(path: &Path, memo_dir: Option<&Path>) -> anyhow::Result<String> {
    let meta =
        std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
    let memo = match memo_dir {
        Some(dir) if meta.len() >= MEMO_FROM => {
            identity(path, &meta).map(|(name, id, settled)| (dir.join(name), id, settled))
        }
        _ => None,
    };
    if let Some((file, identity, _)) = &memo {
        if let Ok(text) = std::fs::read_to_string(file) {
            if let Some(d) = text
                .strip_prefix(identity.as_str())
                .and_then(|rest| rest.strip_prefix('\n'))
                .map(str::trim)
                .filter(|d| d.len() == 64 && d.chars().all(|c| c.is_ascii_hexdigit()))
            {
                return Ok(d.to_owned());
            }
        }
    }
    let digest = hash_file(path)?;
    if let Some((file, identity, true)) = &memo {
        // Best effort: a read-only cache only costs the hashing next time.
        if let Some(dir) = file.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let _ = crate::fsutil::write_atomic(file, format!("{identity}\n{digest}\n").as_bytes());
    }
    Ok(digest)
}

fn hash_file(path: &Path) -> anyhow::Result<String> {
    let mut f =
        std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = std::io::Read::read(&mut f, &mut buf)
            .with_context(|| format!("cannot read {}", path.display()))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex(&h.finalize()))
}

/// The memo file name of a file, the identity line it must hold, and whether the file has
/// settled (see [`SETTLED_AFTER`]).
#[cfg(unix)]
fn identity(path: &Path, meta: &std::fs::Metadata) -> Option<(String, String, bool)> {
    use std::os::unix::fs::MetadataExt;
    let abs = std::fs::canonicalize(path).ok()?;
    let identity = format!(
        "{}|{}|{}|{}|{}.{}|{}.{}",
        abs.display(),
        meta.dev(),
        meta.ino(),
        meta.len(),
        meta.mtime(),
        meta.mtime_nsec(),
        meta.ctime(),
        meta.ctime_nsec()
    );
    let changed = std::time::UNIX_EPOCH
        + std::time::Duration::new(meta.ctime().max(0) as u64, meta.ctime_nsec() as u32);
    let settled = std::time::SystemTime::now()
        .duration_since(changed)
        .is_ok_and(|age| age >= SETTLED_AFTER);
    let name = sha256_hex(abs.to_string_lossy().as_bytes());
    Some((name[..32].to_owned(), identity, settled))
}

/// Without a change time to trust, nothing is remembered.
#[cfg(not(unix))]
fn identity(_path: &Path, _meta: &std::fs::Metadata) -> Option<(String, String, bool)> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_follow_content_and_combine_ignores_order() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("w");
        std::fs::write(&p, b"abc").unwrap();
        assert_eq!(
            file_sha256(&p).unwrap(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        std::fs::write(&p, b"abd").unwrap();
        assert_ne!(file_sha256(&p).unwrap(), sha256_hex(b"abc"));
        assert_eq!(
            combine([("a", "1"), ("b", "2")]),
            combine([("b", "2"), ("a", "1")])
        );
        assert_ne!(combine([("a", "1")]), combine([("a", "2")]));
        assert_ne!(combine([("ab", "c")]), combine([("a", "bc")]));
    }

    #[test]
    fn remembered_digests_are_used_only_while_the_file_is_unchanged() {
        let d = tempfile::tempdir().unwrap();
        let memo = d.path().join("memo");
        let p = d.path().join("big");
        let mut bytes = vec![7u8; MEMO_FROM as usize];
        std::fs::write(&p, &bytes).unwrap();
        // Just written: hashed, but not remembered (it may still change within the change
        // time's resolution).
        assert_eq!(file_sha256_in(&p, Some(&memo)).unwrap(), sha256_hex(&bytes));
        assert!(!memo.exists());
        // A remembered digest is used while the identity holds (a forged one shows it is).
        let meta = std::fs::metadata(&p).unwrap();
        let (name, id, _) = identity(&p, &meta).unwrap();
        std::fs::create_dir_all(&memo).unwrap();
        let forged = "ab".repeat(32);
        std::fs::write(memo.join(&name), format!("{id}\n{forged}\n")).unwrap();
        assert_eq!(file_sha256_in(&p, Some(&memo)).unwrap(), forged);
        // Rewritten in place with the same size and modification time: a new change time, so
        // the memo no longer applies.
        std::thread::sleep(std::time::Duration::from_millis(30));
        let mtime = meta.modified().unwrap();
        bytes[0] = 8;
        std::fs::write(&p, &bytes).unwrap();
        std::fs::File::options()
            .write(true)
            .open(&p)
            .unwrap()
            .set_modified(mtime)
            .unwrap();
        assert_eq!(std::fs::metadata(&p).unwrap().modified().unwrap(), mtime);
        assert_eq!(file_sha256_in(&p, Some(&memo)).unwrap(), sha256_hex(&bytes));
    }
}
