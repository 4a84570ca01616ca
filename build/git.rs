//! The git commit the binary is built from, for `run.json`'s provenance (`src/provenance.rs`).
//!
//! Kept apart from the rest of `build.rs` (included with `#[path]`) so that other build steps
//! can sit beside it. When the package folder is a git checkout (`.git` exists: a folder, or a
//! file in a worktree) and `git` runs, it sets `ROUNDTRIP_GIT_COMMIT` (`git rev-parse HEAD`) and
//! `ROUNDTRIP_GIT_DIRTY` (`1` when the sources the binary is built from, [`SOURCES`], differ from
//! that commit, else `0`) for the crate; otherwise (a packaged crate, no git) neither is set and
//! the binary records no commit.
//!
//! Cargo reruns the script when HEAD, the branch it points to, the index or the sources change,
//! so that the commit and the dirty flag follow commits and edits.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The files the binary is built from: an uncommitted change to one of them (an edit, a new file)
/// makes the build dirty; changes elsewhere (tests, README) do not.
const SOURCES: [&str; 5] = ["src", "build.rs", "build", "Cargo.toml", "Cargo.lock"];

/// Emits the git variables and the files whose change reruns the script.
pub fn emit(manifest_dir: &Path) {
    println!("cargo:rerun-if-changed=build/git.rs");
    if !manifest_dir.join(".git").exists() {
        return;
    }
    let git = |args: &[&str]| -> Option<String> {
        let out = Command::new("git")
            .arg("-C")
            .arg(manifest_dir)
            // Never rewrite the index (`git status` refreshes it otherwise), which would make
            // the index look changed and this script rerun at every build.
            .arg("--no-optional-locks")
            .args(args)
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
    };
    let Some(commit) = git(&["rev-parse", "HEAD"]).filter(|c| is_hex_id(c)) else {
        return;
    };
    let mut status = vec!["status", "--porcelain", "--"];
    status.extend(SOURCES);
    let dirty = git(&status).map(|s| !s.is_empty());
    println!("cargo:rustc-env=ROUNDTRIP_GIT_COMMIT={commit}");
    if let Some(d) = dirty {
        println!("cargo:rustc-env=ROUNDTRIP_GIT_DIRTY={}", u8::from(d));
    }
    // What moves HEAD or the index: the worktree's HEAD and index, the branch's ref (loose or
    // packed). Only files that exist: cargo reruns a script at every build for a missing one.
    let resolve = |p: Option<String>| {
        p.map(PathBuf::from).map(|p| {
            if p.is_absolute() {
                p
            } else {
                manifest_dir.join(p)
            }
        })
    };
    let git_dir = resolve(git(&["rev-parse", "--git-dir"]));
    let common = resolve(git(&["rev-parse", "--git-common-dir"]));
    let branch = git(&["symbolic-ref", "-q", "HEAD"]);
    let mut watched: Vec<PathBuf> = Vec::new();
    if let Some(d) = &git_dir {
        watched.extend([d.join("HEAD"), d.join("index")]);
    }
    if let Some(c) = &common {
        watched.push(c.join("packed-refs"));
        if let Some(b) = &branch {
            watched.push(c.join(b));
        }
    }
    // Edits of the sources make the tree dirty (or clean again).
    watched.extend(SOURCES.map(|p| manifest_dir.join(p)));
    for p in watched.iter().filter(|p| p.exists()) {
        println!("cargo:rerun-if-changed={}", p.display());
    }
}

fn is_hex_id(s: &str) -> bool {
    s.len() >= 40 && s.chars().all(|c| c.is_ascii_hexdigit())
}
