//! `roundtrip merge SHARD_DIR... --out DIR`: shard folders of one run put back together into the
//! folder (and report) a single-machine run would have written.

use std::path::{Path, PathBuf};

use super::html::GalleryImages;
use super::plan::image_slots;
use super::record::{read_record, unfinished, PhraseRecord, ReadRecord};
use super::{read_manifest, settings_difference, Layout, Manifest};
use crate::fsutil::{write_atomic, write_json};
use crate::input_err;

/// What a merge did.
#[derive(Debug)]
pub struct MergeSummary {
    pub report: PathBuf,
    pub phrases: usize,
    /// One per phrase and generator drawing it.
    pub images: usize,
    pub shards: usize,
}

fn copy_into(from: &Layout, to: &Layout, rel: &str) -> anyhow::Result<()> {
    let src = from.root.join(rel);
    let dst = to.root.join(rel);
    let bytes =
        std::fs::read(&src).map_err(|e| input_err!("cannot read {}: {e}", src.display()))?;
    if let Some(d) = dst.parent() {
        std::fs::create_dir_all(d)?;
    }
    write_atomic(&dst, &bytes)
}

/// Checks that the shard folders are the complete shares of one run, then copies every phrase's
/// files into `out` and writes its manifest and report.
pub fn merge(
    dirs: &[PathBuf],
    out: &Path,
    force: bool,
    gallery: GalleryImages,
) -> anyhow::Result<MergeSummary> {
    if dirs.is_empty() {
        return Err(input_err!("merge needs at least one shard folder"));
    }
    let mut shards: Vec<(PathBuf, Manifest)> = Vec::new();
    for d in dirs {
        let m = read_manifest(d)?.ok_or_else(|| {
            input_err!(
                "{} is not a run folder: it has no run.json (was `roundtrip run --shard K/N --out {}` run?)",
                d.display(),
                d.display()
            )
        })?;
        shards.push((d.clone(), m));
    }
    let (first_dir, first) = &shards[0];
    let Some(count) = first.shard.map(|s| s.count) else {
        return Err(input_err!(
            "{} holds a whole run, not a shard: merge takes the folders of `run --shard K/N`",
            first_dir.display()
        ));
    };
    let mut seen: Vec<Option<&Path>> = vec![None; count];
    for (d, m) in &shards {
        if let Some(diff) = settings_difference(&first.settings, &m.settings) {
            return Err(input_err!(
                "{} and {} were run with different settings ({diff})",
                first_dir.display(),
                d.display()
            ));
        }
        if m.prompts != first.prompts {
            return Err(input_err!(
                "{} and {} were run on different prompts files",
                first_dir.display(),
                d.display()
            ));
        }
        if m.models != first.models {
            return Err(input_err!(
                "{} and {} used different models (compare the `models` of their run.json)",
                first_dir.display(),
                d.display()
            ));
        }
        let s = match m.shard {
            Some(s) if s.count == count => s,
            other => {
                return Err(input_err!(
                    "{} is shard {} but {} is a shard of {count}",
                    d.display(),
                    other.map_or("none (a whole run)".into(), |s| s.to_string()),
                    first_dir.display()
                ))
            }
        };
        if let Some(prev) = seen[s.index - 1] {
            return Err(input_err!(
                "shard {s} is given twice: {} and {}",
                prev.display(),
                d.display()
            ));
        }
        seen[s.index - 1] = Some(d);
    }
    let missing: Vec<String> = seen
        .iter()
        .enumerate()
        .filter(|(_, s)| s.is_none())
        .map(|(i, _)| format!("{}/{count}", i + 1))
        .collect();
    if !missing.is_empty() {
        return Err(input_err!(
            "shards {} are missing: merge needs all {count} shard folders",
            missing.join(", ")
        ));
    }
    let out_abs = std::fs::canonicalize(out).ok();
    for d in dirs {
        if out_abs.is_some() && std::fs::canonicalize(d).ok() == out_abs {
            return Err(input_err!(
                "--out {} is one of the shard folders",
                out.display()
            ));
        }
    }

    // Every image's finished record, from the shard that owns its phrase.
    let mut records: Vec<(usize, PhraseRecord, &Path)> = Vec::new();
    for p in &first.prompts {
        let (dir, m) = shards
            .iter()
            .find(|(_, m)| m.shard.is_some_and(|s| s.contains(&p.phrase)))
            .ok_or_else(|| input_err!("no shard owns `{}`", p.phrase))?;
        let layout = Layout { root: dir.clone() };
        for slot in image_slots(&m.settings, &p.phrase, p.generator) {
            let why = match read_record(&layout.record(&slot.id)) {
                ReadRecord::Absent => Some("it has no record".to_owned()),
                ReadRecord::Unreadable(e) => Some(format!("its record is unreadable ({e})")),
                ReadRecord::Found(r) => {
                    let image = (slot.generator, slot.seed);
                    match unfinished(&layout, m, &r, &p.phrase, image, p.photo.is_some())? {
                        None => {
                            records.push((p.line, *r, dir.as_path()));
                            None
                        }
                        Some(why) => Some(why),
                    }
                }
            };
            if let Some(why) = why {
                return Err(input_err!(
                    "shard {} ({}) has not finished `{}` with {} (line {}: {why}): run that shard again to complete it",
                    m.shard.map_or(String::new(), |s| s.to_string()),
                    dir.display(),
                    p.phrase,
                    slot.generator,
                    p.line
                ));
            }
        }
    }

    let _lock = super::open_out_dir(out, "merge", force)?;
    let to = Layout {
        root: out.to_path_buf(),
    };
    let mut manifest = first.clone();
    manifest.shard = None;
    manifest.provenance = Some(crate::provenance::Provenance::now());
    manifest.merged_from = shards
        .iter()
        .map(|(d, m)| super::manifest::MergedShard {
            folder: d.display().to_string(),
            shard: m.shard,
            provenance: m.provenance.clone(),
        })
        .collect();
    let old = if to.manifest().exists() {
        read_manifest(out).or_else(|e| if force { Ok(None) } else { Err(e) })?
    } else {
        None
    };
    if to.manifest().exists() {
        let differs = old.as_ref().and_then(|old| {
            settings_difference(&old.settings, &manifest.settings)
                .or_else(|| old.shard.map(|s| format!("it holds shard {s} of a run")))
        });
        if let Some(d) = differs {
            if !force {
                return Err(input_err!(
                    "{} already holds a run ({d}); use another --out, or --force to replace it",
                    out.display()
                ));
            }
        }
        for d in ["phrases", "images", "photos"] {
            let p = out.join(d);
            if p.exists() {
                std::fs::remove_dir_all(&p)?;
            }
        }
    }
    for (_, r, dir) in &records {
        let from = Layout {
            root: dir.to_path_buf(),
        };
        for rel in std::iter::once(&r.image)
            .chain(&r.frames)
            .chain(&r.latents)
            .chain(r.photo.as_ref().map(|p| &p.file))
        {
            copy_into(&from, &to, rel)?;
        }
        let rec = to.record(&r.id);
        if let Some(d) = rec.parent() {
            std::fs::create_dir_all(d)?;
        }
        write_json(&rec, r)?;
    }
    write_json(&to.manifest(), &manifest)?;
    let lines: Vec<usize> = records.iter().map(|(l, _, _)| *l).collect();
    let recs: Vec<PhraseRecord> = records.into_iter().map(|(_, r, _)| r).collect();
    let written = super::report::write_all(&to, &manifest, &lines, &recs, gallery)?;
    Ok(MergeSummary {
        report: written.json,
        phrases: first.prompts.len(),
        images: recs.len(),
        shards: count,
    })
}
