//! `roundtrip report RUN_DIR`: a run folder's report (report.json, report.csv, report.html,
//! report.md) written again from its records, without computing anything: after a new version changed the
//! report, or to look at an interrupted run's finished images (`partial`).

use std::path::{Path, PathBuf};

use super::html::GalleryImages;
use super::manifest::{read_run, Layout};
use super::plan::image_slots;
use super::record::{read_record, unfinished, ReadRecord};
use crate::input_err;
use crate::lock::DirLock;

/// What a re-render wrote.
#[derive(Debug)]
pub struct Rerendered {
    pub json: PathBuf,
    pub csv: PathBuf,
    pub html: PathBuf,
    pub markdown: PathBuf,
    /// The report's summary (as a run prints it at its end).
    pub summary: String,
    /// The phrases of the folder (its shard's, for a shard folder).
    pub phrases: usize,
    /// The images reported.
    pub images: usize,
    /// Images of the run not reported: not finished, or not matching the run's settings.
    pub unfinished: usize,
}

/// Re-renders the report of the run in `dir` from its records. Every image of the run must be
/// finished (its record up to date with run.json, its files intact) unless `partial`, which
/// reports those that are and leaves the others out; `gallery` says how report.html shows the
/// images.
pub fn rerender(dir: &Path, partial: bool, gallery: GalleryImages) -> anyhow::Result<Rerendered> {
    let manifest = read_run(dir)?;
    // No run may write the folder meanwhile (nor this report over its own).
    let _lock = DirLock::acquire(dir, "report")?;
    let layout = Layout {
        root: dir.to_path_buf(),
    };
    let (mut lines, mut records, mut missing) = (Vec::new(), Vec::new(), Vec::new());
    let mut phrases = 0;
    for p in manifest
        .prompts
        .iter()
        .filter(|p| manifest.shard.is_none_or(|s| s.contains(&p.phrase)))
    {
        phrases += 1;
        for slot in image_slots(&manifest.settings, &p.phrase, p.generator) {
            let why = match read_record(&layout.record(&slot.id)) {
                ReadRecord::Absent => Some("it has no record".to_owned()),
                ReadRecord::Unreadable(e) => Some(format!("its record is unreadable ({e})")),
                ReadRecord::Found(r) => {
                    let image = (slot.generator, slot.seed);
                    let has_photo = p.photo.is_some();
                    match unfinished(&layout, &manifest, &r, &p.phrase, image, has_photo)? {
                        None => {
                            lines.push(p.line);
                            records.push(*r);
                            None
                        }
                        Some(why) => Some(why),
                    }
                }
            };
            if let Some(why) = why {
                missing.push(format!(
                    "`{}` with {} (line {}: {why})",
                    p.phrase, slot.generator, p.line
                ));
            }
        }
    }
    let total = records.len() + missing.len();
    if let Some(first) = missing.first() {
        if !partial || records.is_empty() {
            let hint = if records.is_empty() {
                "finish it with `roundtrip run` (run.json records the command)"
            } else {
                "finish them with `roundtrip run` (run.json records the command), or pass --partial to report the finished ones"
            };
            return Err(input_err!(
                "{}: {} of {total} images are not finished, e.g. {first}: {hint}",
                dir.display(),
                missing.len(),
            ));
        }
    }
    let written = super::report::write_all(&layout, &manifest, &lines, &records, gallery)?;
    Ok(Rerendered {
        json: written.json,
        csv: written.csv,
        html: written.html,
        markdown: written.markdown,
        summary: written.summary,
        phrases,
        images: records.len(),
        unfinished: missing.len(),
    })
}
