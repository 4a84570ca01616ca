//! `roundtrip models download` and `models list`: which hub models a run preset, a prompts file
//! or a model reference needs ([`targets`]), fetching them into the shared Hugging Face cache
//! ([`download`], through [`crate::hub::Locator::fetch`]: progress on stderr, the revisions
//! pinned in models/presets.json), and what the caches hold ([`listing`]: each hub preset cached
//! or not, with its snapshot folder; each embedded model's copy).

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::generate::GeneratorKind;
use crate::hub::{
    needed_files, presets, Fetched, FileNeed, LocateError, Locator, ModelRef, ModelSource, KINDS,
};
use crate::input_err;
use crate::prompts::PromptFile;
use crate::run::preset::Preset;
use crate::run::requirements::preset_models;

/// One hub model to fetch: what asked for it, the reference and its files.
#[derive(Debug, Clone, Serialize)]
pub struct Target {
    /// `real: --clip`, or `argument` for a reference given as is.
    pub role: String,
    #[serde(rename = "reference", serialize_with = "spec")]
    pub model: ModelRef,
    pub files: Vec<FileNeed>,
}

fn spec<S: serde::Serializer>(m: &ModelRef, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&m.spec)
}

/// What `models download` was asked for.
#[derive(Debug, Clone, Default)]
pub struct Request {
    /// Run presets (`real`, `shapes`) and model references (presets of models/presets.json,
    /// hub ids `org/name[@rev]`).
    pub names: Vec<String>,
    /// Only what this prompts file's lines need (with the run presets).
    pub prompts: Option<PathBuf>,
    /// The files of each hub id given [default: its preset's, else its kind's].
    pub files: Vec<String>,
    /// The kind of each hub id that is no preset (`clip`, `biggan`, `vgg16`, `xception`).
    pub kind: Option<String>,
}

/// The hub models of a request, each once, in order; and notes on names with nothing to fetch
/// (a preset whose models are all embedded).
pub fn targets(req: &Request) -> anyhow::Result<(Vec<Target>, Vec<String>)> {
    let prompts = match &req.prompts {
        Some(p) => Some(PromptFile::load(p)?),
        None => None,
    };
    if let Some(k) = &req.kind {
        if !KINDS.contains(&k.as_str()) {
            return Err(input_err!(
                "--kind `{k}`: expected one of {}",
                KINDS.join(", ")
            ));
        }
    }
    let defaulted = ["real".to_owned()];
    let names: &[String] = match (&req.names[..], &prompts) {
        ([], Some(_)) => &defaulted,
        ([], None) => {
            return Err(input_err!(
                "nothing to download: name a run preset ({}), a model preset ({}) or a hub id \
                 `org/name[@revision]`, or give --prompts FILE",
                Preset::ALL.map(Preset::name).join(", "),
                hub_preset_names()
            ))
        }
        (names, _) => names,
    };
    if prompts.is_some() && !names.iter().any(|n| Preset::from_name(n).is_some()) {
        return Err(input_err!(
            "--prompts picks what a run preset needs for that file's lines: name the preset too \
             (e.g. `roundtrip models download real --prompts FILE`)"
        ));
    }
    let mut out: Vec<Target> = Vec::new();
    let mut notes = Vec::new();
    let mut push = |t: Target| {
        let same = |o: &Target| o.model.source == t.model.source && o.files == t.files;
        if !out.iter().any(same) {
            out.push(t);
        }
    };
    for name in names {
        if let Some(preset) = Preset::from_name(name) {
            let models = preset_models(preset, &[GeneratorKind::Siren], prompts.as_ref());
            if models.is_empty() {
                notes.push(format!(
                    "preset {name}: its models are embedded in the binary, nothing to download"
                ));
            }
            for (role, spec, kind) in models {
                let model = ModelRef::parse(&spec)?;
                let files = needed_files(&model, Some(kind)).unwrap_or_default();
                push(Target {
                    role: format!("{name}: {role}"),
                    model,
                    files,
                });
            }
            continue;
        }
        let model = ModelRef::parse(name)?;
        if !matches!(model.source, ModelSource::Hub { .. }) {
            return Err(LocateError::NotHub { spec: name.clone() }.into());
        }
        let files = if req.files.is_empty() {
            needed_files(&model, req.kind.as_deref()).ok_or_else(|| {
                input_err!(
                    "`{name}` is not a preset of models/presets.json: say which files to \
                     download with --kind ({}) or --file NAME",
                    KINDS.join(", ")
                )
            })?
        } else {
            req.files.iter().map(|f| FileNeed::one(f)).collect()
        };
        push(Target {
            role: "argument".to_owned(),
            model,
            files,
        });
    }
    Ok((out, notes))
}

fn hub_preset_names() -> String {
    presets()
        .iter()
        .filter(|p| p.repo.is_some())
        .map(|p| p.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// What [`download`] did for one target.
#[derive(Debug, Serialize)]
pub struct Outcome {
    #[serde(flatten)]
    pub target: Target,
    /// The files as fetched (absent on failure).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fetched: Option<Fetched>,
    /// Why it could not be fetched.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Fetches every target (each one even when another fails).
pub fn download(locator: &Locator, targets: Vec<Target>) -> Vec<Outcome> {
    targets
        .into_iter()
        .map(|target| match locator.fetch(&target.model, &target.files) {
            Ok(f) => Outcome {
                target,
                fetched: Some(f),
                error: None,
            },
            Err(e) => Outcome {
                target,
                fetched: None,
                error: Some(e.to_string()),
            },
        })
        .collect()
}

/// The snapshot folder of fetched files (the folder above the first file, or above its
/// subfolders for a nested name).
pub fn snapshot_of(f: &Fetched) -> Option<PathBuf> {
    let file = f.files.first()?;
    let mut p = file.path.clone();
    for _ in file.name.split('/') {
        p.pop();
    }
    Some(p)
}

/// One hub preset in [`listing`].
#[derive(Debug, Clone, Serialize)]
pub struct HubEntry {
    pub name: String,
    pub kind: String,
    pub repo: Option<String>,
    pub revision: Option<String>,
    /// `cached` (every file), `partial`, `missing`, or `no-hub` (no repository: see `source_urls`).
    pub status: &'static str,
    /// The cache's snapshot folder holding the files, when the revision's commit is known.
    pub snapshot: Option<PathBuf>,
    /// The files not in the cache.
    pub missing: Vec<FileNeed>,
    /// The command that downloads what is missing.
    pub download: Option<String>,
    pub source_urls: Vec<String>,
    pub why: String,
}

/// One embedded model in [`listing`].
#[derive(Debug, Clone, Serialize)]
pub struct EmbeddedEntry {
    pub reference: String,
    pub bytes: usize,
    /// Its copy in the roundtrip cache (written on first use).
    pub copy: PathBuf,
    /// Whether that copy is there and intact.
    pub copied: bool,
}

/// What `models list` shows.
#[derive(Debug, Clone, Serialize)]
pub struct Listing {
    /// The hub cache folder (HF_HUB_CACHE, else $HF_HOME/hub, else ~/.cache/huggingface/hub).
    pub hub_cache: PathBuf,
    pub presets: Vec<HubEntry>,
    /// The roundtrip cache folder the embedded models are copied into.
    pub embedded_cache: PathBuf,
    pub embedded: Vec<EmbeddedEntry>,
}

/// Each hub preset's state in the cache and each embedded model's copy; reads only.
pub fn listing(locator: &Locator, roundtrip_cache: &Path) -> Listing {
    let presets = presets()
        .iter()
        .map(|p| {
            let base = HubEntry {
                name: p.name.clone(),
                kind: p.kind.clone(),
                repo: p.repo.clone(),
                revision: p.revision.clone(),
                status: "no-hub",
                snapshot: None,
                missing: Vec::new(),
                download: None,
                source_urls: p.source_urls.clone(),
                why: p.why.clone(),
            };
            let Ok(model) = ModelRef::parse(&p.name) else {
                return base;
            };
            let ModelSource::Hub { repo, revision } = &model.source else {
                return base;
            };
            let files = needed_files(&model, Some(&p.kind)).unwrap_or_default();
            let s = locator.cache_status(repo, revision, &files);
            let status = match (s.missing.is_empty(), s.present.is_empty()) {
                (true, _) => "cached",
                (false, false) => "partial",
                (false, true) => "missing",
            };
            HubEntry {
                status,
                snapshot: s.snapshot.filter(|d| d.is_dir()),
                download: (!s.missing.is_empty()).then(|| model.download_command()),
                missing: s.missing,
                ..base
            }
        })
        .collect();
    let embedded = crate::embedded::models()
        .iter()
        .map(|m| {
            let copy = roundtrip_cache
                .join(crate::embedded::CACHE_SUBDIR)
                .join(m.digest())
                .join(m.name());
            EmbeddedEntry {
                reference: m.reference(),
                bytes: m.size(),
                copied: crate::embedded::check(&copy, m).is_ok(),
                copy,
            }
        })
        .collect();
    Listing {
        hub_cache: locator.settings().cache_dir.clone(),
        presets,
        embedded_cache: roundtrip_cache.join(crate::embedded::CACHE_SUBDIR),
        embedded,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(req: &Request) -> Vec<String> {
        targets(req)
            .unwrap()
            .0
            .iter()
            .map(|t| t.model.spec.clone())
            .collect()
    }

    #[test]
    fn presets_and_references_become_hub_targets_once_each() {
        let req = |names: &[&str]| Request {
            names: names.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        };
        assert_eq!(
            names(&req(&[
                "real",
                "clip-vit-b32",
                "openai/clip-vit-base-patch32"
            ])),
            ["clip-vit-b32", "biggan-deep-128", "vgg16", "xception"],
            "the same repository and files once"
        );
        let (t, notes) = targets(&req(&["shapes"])).unwrap();
        assert!(t.is_empty() && notes[0].contains("embedded"), "{notes:?}");
        let clip = &targets(&req(&["clip-vit-b32"])).unwrap().0[0];
        assert_eq!(
            clip.files,
            ["config.json", "model.safetensors", "tokenizer.json"].map(FileNeed::one)
        );
        assert_eq!(clip.model.spec, "clip-vit-b32");

        let e = targets(&req(&["someone/model"])).unwrap_err().to_string();
        assert!(e.contains("--kind") && e.contains("--file"), "{e}");
        let with_kind = Request {
            kind: Some("biggan".into()),
            ..req(&["someone/model@v2"])
        };
        let t = &targets(&with_kind).unwrap().0[0];
        assert_eq!(t.files[1].0, ["pytorch_model.bin", "model.safetensors"]);
        let with_files = Request {
            files: vec!["a.json".into()],
            ..req(&["someone/model"])
        };
        assert_eq!(
            targets(&with_files).unwrap().0[0].files,
            [FileNeed::one("a.json")]
        );

        let e = targets(&req(&[])).unwrap_err().to_string();
        assert!(
            e.contains("real, shapes") && e.contains("clip-vit-b32"),
            "{e}"
        );
        let e = targets(&req(&["biggan-deep-256"])).unwrap_err().to_string();
        assert!(e.contains("no hub repository"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let e = targets(&req(&[dir.path().to_str().unwrap()]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("nothing to download"), "{e}");
    }

    #[test]
    fn a_prompts_file_takes_biggan_only_for_its_biggan_lines() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("p.txt");
        std::fs::write(&p, "a cat\n").unwrap();
        let req = Request {
            prompts: Some(p.clone()),
            ..Default::default()
        };
        assert_eq!(names(&req), ["clip-vit-b32", "vgg16", "xception"]);
        std::fs::write(&p, "a cat\n[biggan] a macaw\n").unwrap();
        assert!(names(&req).contains(&"biggan-deep-128".to_owned()));
        let only_ref = Request {
            names: vec!["vgg16".into()],
            ..req
        };
        assert!(targets(&only_ref)
            .unwrap_err()
            .to_string()
            .contains("name the preset"));
    }

    #[test]
    fn the_listing_marks_each_preset_cached_partial_or_missing() {
        let cache = tempfile::tempdir().unwrap();
        let snap = cache
            .path()
            .join("models--timm--vgg16.tv_in1k/snapshots/abc");
        std::fs::create_dir_all(&snap).unwrap();
        std::fs::create_dir_all(cache.path().join("models--timm--vgg16.tv_in1k/refs")).unwrap();
        std::fs::write(
            cache.path().join("models--timm--vgg16.tv_in1k/refs/main"),
            "abc",
        )
        .unwrap();
        std::fs::write(snap.join("config.json"), "{}").unwrap();
        let locator = Locator::offline(cache.path());
        let l = listing(&locator, cache.path());
        let get = |n: &str| l.presets.iter().find(|p| p.name == n).unwrap();
        assert_eq!(get("vgg16").status, "partial");
        assert_eq!(get("vgg16").snapshot.as_deref(), Some(snap.as_path()));
        assert_eq!(get("vgg16").missing, [FileNeed::one("model.safetensors")]);
        assert_eq!(
            get("vgg16").download.as_deref(),
            Some("roundtrip models download vgg16")
        );
        std::fs::write(snap.join("model.safetensors"), "w").unwrap();
        let l = listing(&locator, cache.path());
        let get = |n: &str| l.presets.iter().find(|p| p.name == n).unwrap();
        assert_eq!(get("vgg16").status, "cached");
        assert_eq!(get("vgg16").download, None);
        assert_eq!(get("clip-vit-b32").status, "missing");
        assert_eq!(get("biggan-deep-256").status, "no-hub");
        assert_eq!(l.embedded.len(), crate::embedded::models().len());
        assert!(l.embedded.iter().all(|e| !e.copied));
    }
}
