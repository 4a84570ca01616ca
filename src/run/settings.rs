//! What decides a run's results ([`RunSettings`]: generators' settings, seed, captioners, CLIP),
//! how they are checked before any work, and how two runs' settings differ.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::captioner::blip::BlipDecoding;
use crate::error::InputError;
use crate::generate::{BigGanSettings, GeneratorKind, SirenSettings};
use crate::prompts::PromptFile;

/// Which captioner each label uses (`--captioners vgg16=DIR,xception=DIR,blip=blip-large`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaptionerSpec {
    pub label: String,
    /// A trained captioner's folder (or `models/shapes/NAME (embedded)`), or a BLIP model
    /// reference: a preset (`blip-large`), its hub id, or a folder in transformers' layout
    /// ([`crate::captioner::blip::is_blip_reference`]).
    pub dir: PathBuf,
}

/// Parses `label=DIR[,label=DIR...]`.
pub fn parse_captioners(spec: &str) -> Result<Vec<CaptionerSpec>, InputError> {
    let mut out: Vec<CaptionerSpec> = Vec::new();
    for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (label, dir) = part.split_once('=').ok_or_else(|| {
            InputError::new(format!(
                "--captioners: `{part}` is not LABEL=CAPTIONER (e.g. vgg16=models/captioners/vgg16 or blip=blip-large)"
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
            "--captioners is empty: expected LABEL=CAPTIONER[,LABEL=CAPTIONER...]",
        ));
    }
    Ok(out)
}

/// Parses `--generators siren,biggan`: one or more generator names, each once. The first listed
/// draws with the one-generator seed and file names ([`RunSettings::line_generators`]).
pub fn parse_generators(spec: &str) -> Result<Vec<GeneratorKind>, InputError> {
    let mut out: Vec<GeneratorKind> = Vec::new();
    for part in spec.split(',').map(str::trim) {
        if part.is_empty() {
            return Err(InputError::new(format!(
                "--generators `{spec}`: an empty name; expected a comma-separated list of {}",
                GeneratorKind::names()
            )));
        }
        let kind: GeneratorKind = part
            .parse()
            .map_err(|e: String| InputError::new(format!("--generators `{spec}`: {e}")))?;
        if out.contains(&kind) {
            return Err(InputError::new(format!(
                "--generators `{spec}`: `{kind}` is listed twice"
            )));
        }
        out.push(kind);
    }
    Ok(out)
}

/// `generators` as `run.json` writes it (a list), or as runs before `--generators` wrote it
/// (`generator`: one name), so that their folders resume.
fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<GeneratorKind>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(GeneratorKind),
        Many(Vec<GeneratorKind>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(g) => vec![g],
        OneOrMany::Many(v) => v,
    })
}

/// Everything that decides a phrase's result. A run folder records the settings of its last
/// run; running again with other settings recomputes the stages that depend on them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunSettings {
    /// The generators drawing each line without a `[generator]` prefix, in column order; the
    /// first keeps the one-generator seed and file names.
    #[serde(alias = "generator", deserialize_with = "one_or_many")]
    pub generators: Vec<GeneratorKind>,
    pub siren: SirenSettings,
    /// BigGAN's model and settings; recorded only when a phrase of the prompts file uses it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub biggan: Option<BigGanRunSettings>,
    /// The run seed; each phrase's seed is [`super::phrase_seed`] of it.
    pub seed: u64,
    /// A progress frame every N steps (0: none).
    pub save_every: usize,
    /// Beam width of the captioners (1: greedy).
    pub beam: usize,
    /// CLIP reference as given (guides generation and computes CLIPScore and text similarity).
    pub clip: String,
    pub captioners: Vec<CaptionerSpec>,
    /// How the BLIP captioners decode (`--prompt`, `--max-length`); `None`: the model card's
    /// call (unconditional, max_length 20). Absent from run.json when `None`, so that runs
    /// written before the option resume unchanged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blip: Option<BlipDecoding>,
}

impl RunSettings {
    /// The generators drawing a line: its `[generator]` prefix alone when it has one, else every
    /// run generator. The first is the line's primary generator: its image has the phrase's
    /// one-generator seed and id ([`super::shard::image_seed`], [`super::shard::image_id`]).
    pub fn line_generators(&self, pinned: Option<GeneratorKind>) -> Vec<GeneratorKind> {
        match pinned {
            Some(g) => vec![g],
            None => self.generators.clone(),
        }
    }

    /// The first run generator (its settings take the shared flags `--steps`, `--size`, ...).
    pub fn primary(&self) -> GeneratorKind {
        self.generators
            .first()
            .copied()
            .unwrap_or(GeneratorKind::Siren)
    }
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
    let uses_biggan = s.generators.contains(&GeneratorKind::BigGan)
        || prompts
            .prompts
            .iter()
            .any(|p| p.generator == Some(GeneratorKind::BigGan));
    let mut out = s.clone();
    if !uses_biggan {
        out.biggan = None;
    }
    out
}

/// Settings that cannot run, named by their option.
pub fn validate_settings(s: &RunSettings) -> Result<(), InputError> {
    if s.generators.is_empty() {
        return Err(InputError::new(format!(
            "--generators is empty: expected one or more of {}",
            GeneratorKind::names()
        )));
    }
    if let Some(g) = s
        .generators
        .iter()
        .enumerate()
        .find_map(|(i, g)| s.generators[..i].contains(g).then_some(g))
    {
        return Err(InputError::new(format!(
            "--generators: `{g}` is listed twice"
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

/// The first setting that differs between two runs, as `name: old -> new`.
pub fn settings_difference(old: &RunSettings, new: &RunSettings) -> Option<String> {
    crate::diff::first_difference(old, new)
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn generator_lists() {
        use GeneratorKind::*;
        assert_eq!(parse_generators("siren").unwrap(), [Siren]);
        assert_eq!(parse_generators("biggan, siren").unwrap(), [BigGan, Siren]);
        for (bad, named) in [
            ("siren,foo", "`foo`"),
            ("", "empty name"),
            ("siren,", "empty name"),
            ("siren,siren", "`siren` is listed twice"),
        ] {
            let e = parse_generators(bad).unwrap_err().to_string();
            assert!(
                e.contains(named) && e.contains("--generators"),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn differences_name_the_setting() {
        let a = RunSettings {
            generators: vec![GeneratorKind::Siren],
            siren: SirenSettings::default(),
            biggan: None,
            seed: 0,
            save_every: 50,
            beam: 1,
            clip: "clip-vit-b32".into(),
            captioners: parse_captioners("vgg16=x").unwrap(),
            blip: None,
        };
        assert_eq!(settings_difference(&a, &a.clone()), None);
        let mut b = a.clone();
        b.siren.steps = 7;
        assert_eq!(
            settings_difference(&a, &b).as_deref(),
            Some("siren.steps: 200 -> 7")
        );
        let json = serde_json::to_string(&a).unwrap();
        // A run.json written before `--generators` (one `generator`) reads as a one-item list.
        let old = json.replace("\"generators\":[\"siren\"]", "\"generator\":\"siren\"");
        assert_ne!(old, json);
        let back: RunSettings = serde_json::from_str(&old).unwrap();
        assert_eq!(settings_difference(&a, &back), None);
        let back: RunSettings = serde_json::from_str(&json).unwrap();
        assert_eq!(settings_difference(&a, &back), None);
    }
}
