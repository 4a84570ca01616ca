//! One writer per folder: an exclusive OS lock (`flock`) on `DIR/.roundtrip.lock`, held for as
//! long as a command writes into DIR. The kernel releases it when the process ends, however it
//! ends, so a killed run never leaves a stale lock; the file holds the holder's PID so that a
//! second process can name it.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::error::InputError;

/// The lock file's name inside the locked folder.
pub const LOCK_FILE: &str = ".roundtrip.lock";

/// An exclusive lock on a folder, released (and its file removed) when dropped.
#[derive(Debug)]
pub struct DirLock {
    file: File,
    path: PathBuf,
}

impl DirLock {
    /// Locks `dir` (which must exist) for `command`, or fails with an [`InputError`] naming the
    /// folder and, where it can be read, the PID of the process holding it.
    pub fn acquire(dir: &Path, command: &str) -> anyhow::Result<Self> {
        Self::acquire_within(dir, command, Duration::ZERO)
    }

    /// [`DirLock::acquire`], waiting up to `patience` for another holder to release the lock
    /// (for short writes, such as copying an embedded model into the cache, that concurrent
    /// processes take turns at rather than refuse).
    pub fn acquire_within(dir: &Path, command: &str, patience: Duration) -> anyhow::Result<Self> {
        let path = dir.join(LOCK_FILE);
        let deadline = Instant::now() + patience;
        // The holder removes the file when it finishes; a file opened just before that removal
        // can be locked although it is no longer the folder's lock file, so the lock only
        // counts when the path still names the locked file.
        let mut replaced = 0;
        while replaced < 100 {
            let mut file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)
                .map_err(|e| {
                    crate::input_err!("cannot create the lock file {}: {e}", path.display())
                })?;
            match file.try_lock() {
                Ok(()) => {}
                Err(TryLockError::WouldBlock) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                }
                Err(TryLockError::WouldBlock) => {
                    let mut holder = String::new();
                    let _ = file.read_to_string(&mut holder);
                    let holder = holder.trim();
                    let who = if holder.is_empty() {
                        "another process".to_owned()
                    } else {
                        format!("another process ({holder})")
                    };
                    let waited = if patience.is_zero() {
                        String::new()
                    } else {
                        format!(" (still after {:.0} s)", patience.as_secs_f64())
                    };
                    return Err(InputError::new(format!(
                        "{} is in use by {who}{waited}: one command at a time may write a folder; wait for it to finish or use another folder",
                        dir.display()
                    ))
                    .into());
                }
                Err(TryLockError::Error(e)) => {
                    return Err(crate::input_err!("cannot lock {}: {e}", path.display()))
                }
            }
            if !same_file(&file, &path) {
                replaced += 1;
                continue;
            }
            let me = format!("pid {}, roundtrip {command}\n", std::process::id());
            let _ = file.set_len(0);
            let _ = file.rewind();
            let _ = file.write_all(me.as_bytes());
            return Ok(Self { file, path });
        }
        Err(crate::input_err!(
            "cannot lock {}: its lock file keeps being replaced",
            dir.display()
        ))
    }
}

#[cfg(unix)]
fn same_file(file: &File, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (file.metadata(), std::fs::metadata(path)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

#[cfg(not(unix))]
fn same_file(_file: &File, path: &Path) -> bool {
    path.exists()
}

impl Drop for DirLock {
    fn drop(&mut self) {
        // Removed while still locked, so no one can lock this file and believe it is current.
        let _ = std::fs::remove_file(&self.path);
        let _ = self.file.unlock();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_is_refused_naming_the_holder_and_freed_on_drop() {
        let d = tempfile::tempdir().unwrap();
        let held = DirLock::acquire(d.path(), "run").unwrap();
        let e = DirLock::acquire(d.path(), "run").unwrap_err();
        let msg = e.to_string();
        assert!(e.downcast_ref::<InputError>().is_some());
        assert!(
            msg.contains(&d.path().display().to_string())
                && msg.contains(&format!("pid {}", std::process::id())),
            "{msg}"
        );
        drop(held);
        assert!(!d.path().join(LOCK_FILE).exists());
        let again = DirLock::acquire(d.path(), "run").unwrap();
        drop(again);
    }

    #[test]
    fn a_waiting_lock_gets_the_folder_once_the_holder_lets_go() {
        let d = tempfile::tempdir().unwrap();
        let held = DirLock::acquire(d.path(), "run").unwrap();
        let e = DirLock::acquire_within(d.path(), "run", Duration::from_millis(50)).unwrap_err();
        assert!(e.to_string().contains("still after"), "{e}");
        let dir = d.path().to_path_buf();
        let waiter = std::thread::spawn(move || {
            DirLock::acquire_within(&dir, "run", Duration::from_secs(30)).map(drop)
        });
        std::thread::sleep(Duration::from_millis(100));
        drop(held);
        waiter.join().unwrap().unwrap();
    }
}
