//! What a run needs before it starts, checked all at once ([`check_models`], with the photos
//! [`super::plan`] lists): CLIP, BigGAN when a line or `--generators` draws with it, each
//! captioner folder and its encoder, and the prompts file's photos. Every missing piece is
//! reported in one error, each with the command or README section that provides it and the
//! option that replaces it ([`ensure`]); a run that lacks only hub models fetches them first
//! (unless `HF_HUB_OFFLINE`). Nothing of the run folder exists yet when this fails.
//!
//! [`preset_models`] is the same list for `roundtrip models download PRESET`: every hub model a
//! run preset needs, or only those a prompts file's lines need.

use std::path::Path;

use super::preset::Preset;
use super::settings::{CaptionerSpec, RunSettings};
use crate::captioner::blip::is_blip_reference;
use crate::captioner::model::{read_config, resolve_encoder_reference};
use crate::generate::GeneratorKind;
use crate::hub::{needed_files, shell_word, FileNeed, Files, LocateError, Locator, ModelRef};
use crate::prompts::PromptFile;

/// The README section that says how to get Flickr8k and train the real preset's captioners.
pub const QUICK_START: &str = "Quick start: the original experiment";

/// A hub model something needs: the option (or preset role) asking for it, the reference and
/// the files to have in the cache.
#[derive(Debug, Clone)]
pub struct HubNeed {
    /// `--clip`, `--biggan`, `--captioners vgg16 (its encoder)`.
    pub role: String,
    pub model: ModelRef,
    pub files: Vec<FileNeed>,
}

/// Something a run lacks: what (the option or file line), the problem, and how to get it.
#[derive(Debug, Clone)]
pub struct Missing {
    /// `--clip clip-vit-b32`, `--captioners vgg16`, `prompts/seed.txt:3`.
    pub what: String,
    pub problem: String,
    /// The command, README section or option that provides it (empty: the problem says).
    pub remedy: String,
    /// A hub model that a download provides.
    pub hub: Option<HubNeed>,
}

impl std::fmt::Display for Missing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if !self.what.is_empty() {
            write!(f, "{}: ", self.what)?;
        }
        write!(f, "{}", self.problem)?;
        if !self.remedy.is_empty() {
            write!(f, "; {}", self.remedy)?;
        }
        Ok(())
    }
}

/// The files of a model folder of `kind`: the hub's, but an encoder folder may lack config.json
/// (the loaders read it when present).
fn folder_files(kind: &str) -> Vec<FileNeed> {
    let files = crate::hub::kind_files(kind).unwrap_or_default();
    match kind {
        "vgg16" | "xception" => files
            .into_iter()
            .filter(|f| f.0 != ["config.json"])
            .collect(),
        _ => files,
    }
}

/// Checks one model reference (a model of `kind`, given by `option` as `spec`): a folder holds
/// its files, an embedded model is in this binary, a hub model has all its files in the cache.
pub fn check_model(
    option: &str,
    spec: &str,
    kind: &str,
    locator: &Locator,
    missing: &mut Vec<Missing>,
) {
    let what = format!("{option} {spec}");
    let model = match ModelRef::parse(spec) {
        Ok(m) => m.with_option(option),
        Err(e) => {
            let remedy = match &e {
                LocateError::NoHubSource { .. } => {
                    format!("save them into one folder and pass it with {option}")
                }
                LocateError::NoFolder(_) => format!(
                    "expected a folder holding the model's files (the hub's layout), or a preset or hub id; fix {option}"
                ),
                _ => String::new(),
            };
            missing.push(Missing {
                what,
                problem: e.to_string(),
                remedy,
                hub: None,
            });
            return;
        }
    };
    match &model.source {
        crate::hub::ModelSource::Embedded(_) => {}
        crate::hub::ModelSource::Folder(dir) => {
            let absent: Vec<FileNeed> = folder_files(kind)
                .into_iter()
                .filter(|f| !f.0.iter().any(|n| dir.join(n).is_file()))
                .collect();
            if !absent.is_empty() {
                missing.push(Missing {
                    what,
                    problem: format!(
                        "model folder {} has no {}",
                        dir.display(),
                        Files(absent)
                    ),
                    remedy: format!(
                        "expected the files of a {kind} model side by side (the hub's layout); copy them there or pass another folder with {option}"
                    ),
                    hub: None,
                });
            }
        }
        crate::hub::ModelSource::Hub { repo, revision } => {
            let files = needed_files(&model, Some(kind)).unwrap_or_default();
            let status = locator.cache_status(repo, revision, &files);
            if status.complete() {
                return;
            }
            let offline = if locator.settings().offline {
                " (HF_HUB_OFFLINE is set: run it where the hub can be reached, into this cache)"
            } else {
                ""
            };
            missing.push(Missing {
                what,
                problem: format!(
                    "hub model {repo}@{revision} is not in the hub cache {}: {} missing",
                    locator.settings().cache_dir.display(),
                    Files(status.missing)
                ),
                remedy: format!(
                    "`{}` downloads it{offline}, or pass a folder holding its files with {option}",
                    model.download_command()
                ),
                hub: Some(HubNeed {
                    role: option.to_owned(),
                    model: model.clone(),
                    files,
                }),
            });
        }
    }
}

/// Where the README's quick start puts Flickr8k.
pub const FLICKR8K_DIR: &str = "data/Flickr8k";

/// The README's steps to a captioner of `label` in `dir`: its encoder's download and the
/// `roundtrip train` command (for the labels that name an encoder).
fn train_steps(label: &str, dir: &Path) -> Option<String> {
    let kind = ["vgg16", "xception"].into_iter().find(|k| *k == label)?;
    Some(format!(
        "Flickr8k in {FLICKR8K_DIR}, `roundtrip models download {kind}`, then `roundtrip train \
         --encoder {kind} --dataset {FLICKR8K_DIR} --out {}`",
        shell_word(&dir.display().to_string())
    ))
}

/// Checks a captioner folder (config.json, vocab.json, model.safetensors) and its encoder, or a
/// BLIP model (its folder's files, or a hub model's files in the cache).
pub fn check_captioner(c: &CaptionerSpec, locator: &Locator, missing: &mut Vec<Missing>) {
    let what = format!("--captioners {}", c.label);
    let dir_text = c.dir.display().to_string();
    if is_blip_reference(&dir_text) {
        check_model(&what, &dir_text, "blip", locator, missing);
        return;
    }
    if let Some(found) = crate::embedded::lookup(&dir_text) {
        if let Err(e) = found {
            missing.push(Missing {
                what,
                problem: e.to_string(),
                remedy: format!("pass the folder itself with --captioners {}=DIR", c.label),
                hub: None,
            });
        }
        return;
    }
    let real_preset = super::parse_captioners(Preset::Real.defaults().captioners)
        .map(|all| all.contains(c))
        .unwrap_or(false);
    let train = |why: &str| {
        let how = train_steps(&c.label, &c.dir)
            .map(|t| format!(" ({t})"))
            .unwrap_or_default();
        format!(
            "{why} as README section \"{QUICK_START}\" shows{how}, or pass a trained captioner with --captioners {}=DIR (or a pretrained BLIP: --captioners {}=blip-large)",
            c.label, c.label
        )
    };
    if !c.dir.exists() {
        let problem = if real_preset {
            format!(
                "captioner folder {} does not exist (the real preset's captioners are not shipped: they are trained on Flickr8k)",
                c.dir.display()
            )
        } else {
            format!("captioner folder {} does not exist", c.dir.display())
        };
        missing.push(Missing {
            what,
            problem,
            remedy: train("train it"),
            hub: None,
        });
        return;
    }
    let config = match read_config(&c.dir) {
        Ok(cfg) => cfg,
        Err(e) => {
            missing.push(Missing {
                what,
                problem: format!("{e:#}"),
                remedy: format!(
                    "expected a folder written by `roundtrip train` (config.json, vocab.json, model.safetensors); {}",
                    train("train one")
                ),
                hub: None,
            });
            return;
        }
    };
    let absent: Vec<FileNeed> = ["vocab.json", "model.safetensors"]
        .into_iter()
        .filter(|f| !c.dir.join(f).is_file())
        .map(FileNeed::one)
        .collect();
    if !absent.is_empty() {
        missing.push(Missing {
            what: what.clone(),
            problem: format!(
                "captioner folder {} has no {}: its training has not finished",
                c.dir.display(),
                Files(absent)
            ),
            remedy: "finish it: its `roundtrip train` command again with --resume".to_owned(),
            hub: None,
        });
    }
    let reference = resolve_encoder_reference(&c.dir, &config.encoder.reference);
    if reference != config.encoder.reference {
        if !Path::new(&reference).is_dir() {
            missing.push(Missing {
                what,
                problem: format!(
                    "its encoder folder {reference} (config.json: `{}`) does not exist",
                    config.encoder.reference
                ),
                remedy: "the folder was copied without it: copy the whole captioner folder"
                    .to_owned(),
                hub: None,
            });
        }
        return;
    }
    check_model(
        &format!("{what} (its encoder, config.json `encoder.reference`)"),
        &reference,
        config.encoder.kind.name(),
        locator,
        missing,
    );
}

/// Every model requirement of a run's settings: CLIP, BigGAN when the settings hold it (a line
/// or `--generators` draws with it, [`super::effective_settings`]), each captioner.
pub fn check_models(settings: &RunSettings, locator: &Locator) -> Vec<Missing> {
    let mut missing = Vec::new();
    check_model("--clip", &settings.clip, "clip", locator, &mut missing);
    if let Some(b) = &settings.biggan {
        check_model("--biggan", &b.model, "biggan", locator, &mut missing);
    }
    for c in &settings.captioners {
        check_captioner(c, locator, &mut missing);
    }
    missing
}

/// Passes when nothing is missing. A run that lacks only hub models fetches them into the cache
/// (unless `HF_HUB_OFFLINE`), every one, and fails listing those it could not get; anything
/// else missing fails at once, listing every piece ([`report`]).
pub fn ensure(missing: Vec<Missing>, locator: &Locator) -> anyhow::Result<()> {
    if missing.is_empty() {
        return Ok(());
    }
    let only_hub = missing.iter().all(|m| m.hub.is_some());
    if !only_hub || locator.settings().offline {
        return Err(report(&missing));
    }
    let mut failed = Vec::new();
    for m in missing {
        let Some(need) = &m.hub else { continue };
        if let Err(e) = locator.fetch(&need.model, &need.files) {
            let problem = match &e {
                LocateError::Download {
                    repo,
                    revision,
                    file,
                    reason,
                    ..
                } => format!(
                    "cannot download `{file}` of hub model {repo}@{revision}: {reason} (check the network, HF_ENDPOINT and HF_TOKEN)"
                ),
                other => other.to_string(),
            };
            failed.push(Missing { problem, ..m });
        }
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(report(&failed))
    }
}

/// One input error listing every missing piece: one line when there is one, else a heading and
/// a line each, then the one command that downloads every hub model among them.
pub fn report(missing: &[Missing]) -> anyhow::Error {
    let mut downloads: Vec<String> = Vec::new();
    for m in missing {
        if let Some(h) = &m.hub {
            let w = shell_word(&h.model.spec);
            if !downloads.contains(&w) {
                downloads.push(w);
            }
        }
    }
    if let [only] = missing {
        return crate::input_err!("{only}");
    }
    let mut text = format!(
        "the run cannot start: {} of its requirements are missing (nothing was written):",
        missing.len()
    );
    for m in missing {
        text.push_str(&format!("\n  - {m}"));
    }
    if downloads.len() > 1 {
        text.push_str(&format!(
            "\nEvery hub model above at once: `roundtrip models download {}`",
            downloads.join(" ")
        ));
    }
    crate::input_err!("{text}")
}

/// Whether a run of these generators draws any line of `prompts` (all of them when `None`: any
/// prompts file) with BigGAN.
fn uses_biggan(generators: &[GeneratorKind], prompts: Option<&PromptFile>) -> bool {
    match prompts {
        None => true,
        Some(p) => {
            generators.contains(&GeneratorKind::BigGan)
                || p.prompts
                    .iter()
                    .any(|l| l.generator == Some(GeneratorKind::BigGan))
        }
    }
}

/// The hub models a run of `preset` needs, with its defaults: its CLIP, BigGAN (when `prompts`
/// is `None`, or a line of it or `generators` draws with BigGAN), the encoders its
/// captioners are trained on (`roundtrip train` needs them too) and its pretrained captioners. Embedded and folder models are
/// left out: nothing to download. Each as (role, reference, kind).
pub fn preset_models(
    preset: Preset,
    generators: &[GeneratorKind],
    prompts: Option<&PromptFile>,
) -> Vec<(String, String, &'static str)> {
    let d = preset.defaults();
    let mut out = vec![("--clip".to_owned(), d.clip.to_owned(), "clip")];
    if uses_biggan(generators, prompts) {
        let model = d.biggan.model.unwrap_or("biggan-deep-128");
        out.push(("--biggan".to_owned(), model.to_owned(), "biggan"));
    }
    for &(label, encoder) in preset.captioner_encoders() {
        out.push((
            format!("the encoder of --captioners {label} (`roundtrip train --encoder {encoder}`)"),
            encoder.to_owned(),
            encoder,
        ));
    }
    for &(label, model) in preset.captioner_models() {
        out.push((format!("--captioners {label}"), model.to_owned(), "blip"));
    }
    out.retain(|(_, spec, _)| {
        matches!(
            ModelRef::parse(spec).map(|m| m.source),
            Ok(crate::hub::ModelSource::Hub { .. })
        )
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(clip: &str, captioners: &str, biggan: Option<&str>) -> RunSettings {
        RunSettings {
            generators: vec![GeneratorKind::Siren],
            siren: Default::default(),
            biggan: biggan.map(|m| super::super::BigGanRunSettings {
                model: m.to_owned(),
                settings: Default::default(),
            }),
            seed: 0,
            save_every: 0,
            beam: 1,
            clip: clip.to_owned(),
            captioners: super::super::parse_captioners(captioners).unwrap(),
            blip: None,
        }
    }

    /// The real preset with nothing in the cache and no captioner folders: every piece is
    /// listed, each with its command, and the hub models once more in one command.
    #[test]
    fn every_missing_piece_is_listed_with_its_remedy() {
        let cache = tempfile::tempdir().unwrap();
        let locator = Locator::offline(cache.path());
        let d = Preset::Real.defaults();
        let s = settings(d.clip, d.captioners, Some("biggan-deep-128"));
        let missing = check_models(&s, &locator);
        let whats: Vec<&str> = missing.iter().map(|m| m.what.as_str()).collect();
        assert_eq!(
            whats,
            [
                "--clip clip-vit-b32",
                "--biggan biggan-deep-128",
                "--captioners vgg16",
                "--captioners xception"
            ]
        );
        let e = format!("{:#}", ensure(missing, &locator).unwrap_err());
        for part in [
            "4 of its requirements are missing (nothing was written)",
            "`roundtrip models download clip-vit-b32` downloads it",
            "`config.json`, `model.safetensors` and `tokenizer.json` missing",
            "with --clip",
            "`roundtrip models download biggan-deep-128`",
            "with --biggan",
            "captioner folder models/captioners/vgg16 does not exist (the real preset's captioners",
            "train it as README section \"Quick start: the original experiment\" shows",
            "`roundtrip models download xception`, then `roundtrip train --encoder xception --dataset data/Flickr8k --out models/captioners/xception`",
            "--captioners vgg16=DIR",
            "HF_HUB_OFFLINE",
            "Every hub model above at once: `roundtrip models download clip-vit-b32 biggan-deep-128`",
        ] {
            assert!(e.contains(part), "{part:?} not in:\n{e}");
        }
        assert_eq!(e.lines().count(), 6, "{e}");
    }

    #[test]
    fn present_models_are_not_listed_and_one_missing_piece_is_one_line() {
        let cache = tempfile::tempdir().unwrap();
        let locator = Locator::offline(cache.path());
        let root = env!("CARGO_MANIFEST_DIR");
        let s = settings(
            &format!("{root}/tests/fixtures/clip_tiny"),
            "vgg16=models/shapes/vgg16 (embedded)",
            None,
        );
        assert!(check_models(&s, &locator).is_empty());
        let s = settings(
            &format!("{root}/tests/fixtures/vgg16_tiny"),
            "vgg16=models/shapes/vgg16 (embedded)",
            None,
        );
        let missing = check_models(&s, &locator);
        let e = format!("{:#}", report(&missing));
        assert_eq!(e.lines().count(), 1, "{e}");
        assert!(
            e.starts_with("--clip ") && e.contains("has no `tokenizer.json`"),
            "{e}"
        );
    }

    #[test]
    fn a_captioner_folder_is_checked_file_by_file_and_its_hub_encoder_in_the_cache() {
        let cache = tempfile::tempdir().unwrap();
        let locator = Locator::offline(cache.path());
        let dir = tempfile::tempdir().unwrap();
        let cap = dir.path().join("cap");
        std::fs::create_dir_all(&cap).unwrap();
        let spec = CaptionerSpec {
            label: "mine".into(),
            dir: cap.clone(),
        };
        let mut missing = Vec::new();
        check_captioner(&spec, &locator, &mut missing);
        assert!(
            missing[0].problem.contains("config.json") && missing[0].remedy.contains(QUICK_START),
            "{}",
            missing[0]
        );
        // A finished-looking config whose encoder is a hub preset absent from the cache.
        let cfg = std::fs::read_to_string(format!(
            "{}/models/shapes/vgg16/config.json",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap()
        .replace("\"./encoder\"", "\"vgg16\"");
        std::fs::write(cap.join("config.json"), cfg).unwrap();
        let mut missing = Vec::new();
        check_captioner(&spec, &locator, &mut missing);
        let lines: Vec<String> = missing.iter().map(ToString::to_string).collect();
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert!(
            lines[0].contains("`vocab.json` and `model.safetensors`")
                && lines[0].contains("--resume"),
            "{}",
            lines[0]
        );
        assert!(
            lines[1].starts_with("--captioners mine (its encoder")
                && lines[1].contains("`roundtrip models download vgg16`"),
            "{}",
            lines[1]
        );
    }

    #[test]
    fn a_preset_needs_its_hub_models_and_a_prompts_file_only_what_its_lines_draw() {
        let specs = |g: &[GeneratorKind], p: Option<&PromptFile>| -> Vec<String> {
            preset_models(Preset::Real, g, p)
                .into_iter()
                .map(|(_, s, _)| s)
                .collect()
        };
        let siren = [GeneratorKind::Siren];
        assert_eq!(
            specs(&siren, None),
            ["clip-vit-b32", "biggan-deep-128", "vgg16", "xception"]
        );
        let plain = PromptFile::parse(Path::new("p.txt"), b"a cat\n").unwrap();
        assert_eq!(
            specs(&siren, Some(&plain)),
            ["clip-vit-b32", "vgg16", "xception"]
        );
        assert_eq!(
            specs(&[GeneratorKind::Siren, GeneratorKind::BigGan], Some(&plain)),
            ["clip-vit-b32", "biggan-deep-128", "vgg16", "xception"]
        );
        let pinned = PromptFile::parse(Path::new("p.txt"), b"a cat\n[biggan] a macaw\n").unwrap();
        assert_eq!(specs(&siren, Some(&pinned)).len(), 4);
        assert!(preset_models(Preset::Shapes, &siren, None).is_empty());
        let blip: Vec<String> = preset_models(Preset::RealBlip, &siren, Some(&plain))
            .into_iter()
            .map(|(_, s, _)| s)
            .collect();
        assert_eq!(blip, ["clip-vit-b32", "blip-large"]);
    }
}
