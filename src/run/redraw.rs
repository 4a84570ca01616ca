//! `roundtrip generate --like RUN_DIR PHRASE`: what a run drew a phrase with (its CLIP, the
//! generator's settings and model, the phrase's seed, the frame interval), so that `generate`
//! draws the run's image again byte for byte, and how the redrawn image compares with the run's.

use std::path::{Path, PathBuf};

use super::manifest::{read_run, Layout, Manifest};
use super::plan::image_slots;
use super::record::{read_record, ReadRecord};
use super::settings::BigGanRunSettings;
use crate::fingerprint::sha256_hex;
use crate::generate::{GeneratorKind, SirenSettings};
use crate::input_err;

/// One image of a run, as the run drew it.
#[derive(Debug, Clone)]
pub struct Redraw {
    pub run: PathBuf,
    /// The phrase as run.json holds it.
    pub phrase: String,
    pub generator: GeneratorKind,
    /// The image's seed ([`super::image_seed`] of the run seed and the phrase).
    pub seed: u64,
    /// The CLIP reference as the run was given it.
    pub clip: String,
    pub save_every: usize,
    pub siren: SirenSettings,
    /// BigGAN's model and settings, where the run has them.
    pub biggan: Option<BigGanRunSettings>,
    /// The run's image of the phrase (which may not be drawn yet: an unfinished run).
    pub image: PathBuf,
}

/// How a redrawn image compares with the run's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Likeness {
    /// The same bytes.
    Same,
    /// Other bytes; the device the run drew it on, where its record names one.
    Differs { run_device: Option<String> },
    /// The run has no image of the phrase (yet).
    Absent,
}

impl Likeness {
    pub fn word(&self) -> &'static str {
        match self {
            Self::Same => "same",
            Self::Differs { .. } => "differs",
            Self::Absent => "absent",
        }
    }
}

/// The phrases of a manifest, quoted, the first few: for errors.
fn some_phrases(m: &Manifest) -> String {
    let mut s: Vec<String> = m
        .prompts
        .iter()
        .take(3)
        .map(|p| format!("`{}`", p.phrase))
        .collect();
    if m.prompts.len() > 3 {
        s.push("...".into());
    }
    s.join(", ")
}

/// What the run in `dir` drew `phrase` with; `generator` picks one of the phrase's images
/// (default: the first generator drawing it, whose image has the phrase's own seed and file).
pub fn redraw_of(
    dir: &Path,
    phrase: &str,
    generator: Option<GeneratorKind>,
) -> anyhow::Result<Redraw> {
    let m = read_run(dir)?;
    let phrase = phrase.trim();
    let Some(entry) = m.prompts.iter().find(|p| p.phrase == phrase) else {
        return Err(input_err!(
            "`{phrase}` is not a phrase of the run in {} (its run.json lists {} phrase(s): {})",
            dir.display(),
            m.prompts.len(),
            some_phrases(&m)
        ));
    };
    let slots = image_slots(&m.settings, &entry.phrase, entry.generator);
    let slot = match generator {
        None => slots.first(),
        Some(g) => slots.iter().find(|s| s.generator == g),
    };
    let Some(slot) = slot else {
        return Err(input_err!(
            "--generator {}: the run in {} drew `{phrase}` with {} only",
            generator.map_or("", GeneratorKind::name),
            dir.display(),
            slots
                .iter()
                .map(|s| s.generator.name())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    };
    let layout = Layout {
        root: dir.to_path_buf(),
    };
    Ok(Redraw {
        run: dir.to_path_buf(),
        phrase: entry.phrase.clone(),
        generator: slot.generator,
        seed: slot.seed,
        clip: m.settings.clip.clone(),
        save_every: m.settings.save_every,
        siren: m.settings.siren.clone(),
        biggan: m.settings.biggan.clone(),
        image: layout.image(&slot.id),
    })
}

impl Redraw {
    /// Whether `png` (the bytes of a redrawn image) is the run's image of the phrase: its file's
    /// bytes, else the SHA-256 its record holds.
    pub fn likeness(&self, png: &[u8]) -> Likeness {
        let id = self
            .image
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let layout = Layout {
            root: self.run.clone(),
        };
        let record = match read_record(&layout.record(&id)) {
            ReadRecord::Found(r) => Some(r),
            _ => None,
        };
        let sha = match std::fs::read(&self.image) {
            Ok(bytes) => Some(sha256_hex(&bytes)),
            Err(_) => record
                .as_ref()
                .and_then(|r| r.sha256.get(&r.image).cloned()),
        };
        match sha {
            None => Likeness::Absent,
            Some(s) if s == sha256_hex(png) => Likeness::Same,
            Some(_) => Likeness::Differs {
                run_device: record.map(|r| r.device.clone()),
            },
        }
    }
}
