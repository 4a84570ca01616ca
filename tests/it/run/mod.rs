//! `roundtrip run` end to end: the fixed-seed golden report on the shipped shapes models
//! (models/shapes/), and, with tiny models (the tiny CLIP fixture, and two captioners trained here
//! on a toy dataset with the tiny VGG16 and Xception fixtures), resume after a kill, shards merged
//! to the single-run report, the HTML gallery, BigGAN lines, stage-by-stage reuse (changed
//! settings, captioners replaced in place, corrupt files), one writer per folder and bad input.
//!
//! Regenerate the golden report after an intended change with
//! `ROUNDTRIP_BLESS=1 cargo test --release --test it run::golden` (it rewrites the file and fails;
//! see results/README.md).
//!
//! `golden.rs`: the golden report and the gallery; `reuse.rs`: resume, shards, stage-by-stage
//! reuse, locking and bad input; `generators.rs`: several generators in one run
//! (`--generators`); `embedded.rs`: `--preset shapes` from any directory with the models embedded
//! in the binary; `redraw.rs`: `generate --like`, `report`, `compare` and run.json's provenance.
//! The helpers and the shared tiny-model fixture are here.

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::common::{fails, ok};
use serde_json::Value;

const CLIP: &str = "tests/fixtures/clip_tiny";
const PROMPTS: &str = "tests/data/run/prompts.txt";
const GOLDEN_PROMPTS: &str = "tests/data/run/shapes.txt";
const GOLDEN: &str = "results/golden/run-shapes.json";
/// Numbers in the golden report must match to this relative tolerance (absolute below 1): the
/// computation is deterministic, so this only absorbs floating-point differences between CPUs
/// (SIMD widths) over the 30 guidance steps. Captions, ids, seeds and counts must match exactly.
const TOLERANCE: f64 = 1e-4;

/// The binary, offline (a run must never reach the hub).
fn roundtrip(args: &[&str]) -> Output {
    crate::common::bin()
        .args(args)
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .unwrap()
}

struct Fixture {
    root: PathBuf,
    /// `--captioners` value of the two trained captioners.
    captioners: String,
}

/// Trains the two tiny captioners once per test binary.
fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let root = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("run-fixture");
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).unwrap();
        let ds = crate::common::toy_dataset(&root.join("toy"));
        let mut caps = Vec::new();
        for (kind, weights) in [("vgg16", "vgg16_tiny"), ("xception", "xception_tiny")] {
            let out = root.join(kind);
            let w = format!("tests/fixtures/{weights}");
            let (ds, out_s) = (ds.to_str().unwrap(), out.to_str().unwrap());
            let cache = root.join("cache");
            let mut args = vec![
                "train",
                "--encoder",
                kind,
                "--weights",
                &w,
                "--dataset",
                ds,
                "--out",
                out_s,
                "--cache",
                cache.to_str().unwrap(),
                "--epochs",
                "6",
                "--quiet",
            ];
            args.extend(crate::common::TINY_DECODER);
            ok(&roundtrip(&args));
            caps.push(format!("{kind}={}", out.display()));
        }
        Fixture {
            captioners: caps.join(","),
            root,
        }
    })
}

fn run_args(prompts: &str, out: &Path, extra: &[&str]) -> Vec<String> {
    let f = fixture();
    let mut v: Vec<String> = [
        "run",
        prompts,
        "--out",
        out.to_str().unwrap(),
        "--clip",
        CLIP,
        "--captioners",
        &f.captioners,
        "--seed",
        "11",
        "--steps",
        "30",
        "--size",
        "32",
        "--layers",
        "3",
        "--hidden",
        "32",
        "--cutouts",
        "4",
        "--save-every",
        "10",
        "--quiet",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

fn run(prompts: &str, out: &Path, extra: &[&str]) -> Output {
    let args = run_args(prompts, out, extra);
    roundtrip(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

/// An uninterrupted run of the golden prompts, made once.
fn complete_run() -> &'static Path {
    static R: OnceLock<PathBuf> = OnceLock::new();
    R.get_or_init(|| {
        let out = fixture().root.join("complete");
        let stdout = ok(&run(PROMPTS, &out, &[]));
        assert!(
            stdout.contains("phrases 4\tcomputed 4\treused 0\tupdated 0"),
            "{stdout}"
        );
        out
    })
}

/// The number after `word ` in a run's summary line.
fn count(stdout: &str, word: &str) -> usize {
    stdout
        .split(&format!("{word} "))
        .nth(1)
        .and_then(|s| s.split(['\t', '\n']).next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no `{word}` in {stdout}"))
}

fn read_json(path: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// A report without what legitimately differs between two executions of the same run: the
/// `seconds` timings.
fn without_timings(mut v: Value) -> Value {
    fn strip(v: &mut Value) {
        match v {
            Value::Object(m) => {
                m.remove("seconds");
                m.values_mut().for_each(strip);
            }
            Value::Array(a) => a.iter_mut().for_each(strip),
            _ => {}
        }
    }
    strip(&mut v);
    v
}

/// The golden form: no timings, and nothing that names this machine's paths or this build.
fn golden_form(report: Value) -> Value {
    let mut v = without_timings(report);
    let m = v.as_object_mut().unwrap();
    m.remove("tool");
    m.remove("models");
    // Stage keys and file digests identify inputs and outputs byte for byte; the golden figures
    // are compared with a tolerance instead.
    for p in m["phrases"].as_array_mut().unwrap() {
        let p = p.as_object_mut().unwrap();
        p.remove("stages");
        p.remove("sha256");
    }
    if let Some(caps) = m["settings"]["captioners"].as_array_mut() {
        for c in caps {
            c.as_object_mut().unwrap().remove("dir");
        }
    }
    v
}

/// Compares JSON values: numbers within [`TOLERANCE`], everything else exactly.
fn assert_close(path: &str, got: &Value, want: &Value) {
    match (got, want) {
        (Value::Number(a), Value::Number(b)) => {
            let (a, b) = (a.as_f64().unwrap(), b.as_f64().unwrap());
            assert!(
                (a - b).abs() <= TOLERANCE * b.abs().max(1.0),
                "{path}: {a} vs golden {b}"
            );
        }
        (Value::Array(a), Value::Array(b)) => {
            assert_eq!(a.len(), b.len(), "{path}: length");
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                assert_close(&format!("{path}[{i}]"), x, y);
            }
        }
        (Value::Object(a), Value::Object(b)) => {
            let (ka, kb): (Vec<_>, Vec<_>) = (a.keys().collect(), b.keys().collect());
            assert_eq!(ka, kb, "{path}: keys");
            for (k, x) in a {
                assert_close(&format!("{path}.{k}"), x, &b[k]);
            }
        }
        _ => assert_eq!(got, want, "{path}"),
    }
}

/// report.json as a script reads it (the fields the tests check).
#[derive(serde::Deserialize)]
struct Report {
    schema_version: u32,
    phrases: Vec<Phrase>,
    corpus: Corpus,
}

#[derive(serde::Deserialize)]
struct Phrase {
    line: usize,
    phrase: String,
    generator: String,
    id: String,
    seed: u64,
    image: String,
    frames: Vec<String>,
    photo: Option<Photo>,
    clip_score: ClipScore,
    captions: std::collections::BTreeMap<String, Captions>,
    steps: Vec<Value>,
}

#[derive(serde::Deserialize)]
struct Photo {
    file: String,
}

#[derive(serde::Deserialize)]
struct ClipScore {
    generated: f64,
    photo: Option<f64>,
}

#[derive(serde::Deserialize)]
struct Captions {
    generated: Caption,
    photo: Option<Caption>,
}

#[derive(serde::Deserialize)]
struct Caption {
    caption: String,
    bleu: Bleu,
    /// Against the phrase (schema 6).
    rouge_l: f64,
    clip_text_similarity: f64,
}

/// report.json's BLEU object (`bleu1`..`bleu4`, `bleu1_method1`..`bleu4_method1`, nothing
/// else), as arrays.
#[derive(serde::Deserialize)]
#[serde(from = "BleuKeys")]
struct Bleu {
    unsmoothed: [f64; 4],
    method1: [f64; 4],
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct BleuKeys {
    bleu1: f64,
    bleu2: f64,
    bleu3: f64,
    bleu4: f64,
    bleu1_method1: f64,
    bleu2_method1: f64,
    bleu3_method1: f64,
    bleu4_method1: f64,
}

impl From<BleuKeys> for Bleu {
    fn from(k: BleuKeys) -> Self {
        Self {
            unsmoothed: [k.bleu1, k.bleu2, k.bleu3, k.bleu4],
            method1: [
                k.bleu1_method1,
                k.bleu2_method1,
                k.bleu3_method1,
                k.bleu4_method1,
            ],
        }
    }
}

#[derive(serde::Deserialize)]
struct Corpus {
    phrases: usize,
    with_photo: usize,
    /// Per generator name.
    generators: std::collections::BTreeMap<String, GeneratorCorpus>,
    photo: PhotoCorpus,
}

#[derive(serde::Deserialize)]
struct GeneratorCorpus {
    images: usize,
    with_photo: usize,
    captioners: std::collections::BTreeMap<String, GeneratedFigures>,
}

#[derive(serde::Deserialize)]
struct GeneratedFigures {
    generated: Figures,
    generated_with_photo: Option<Figures>,
}

#[derive(serde::Deserialize)]
struct PhotoCorpus {
    captioners: std::collections::BTreeMap<String, Option<Figures>>,
}

#[derive(serde::Deserialize)]
struct Figures {
    images: usize,
    bleu: Bleu,
    /// Schema 6.
    cider_d: f64,
    rouge_l: f64,
    distinct_captions: usize,
    most_common_count: usize,
}

mod blip;
mod embedded;
mod generators;
mod golden;
mod jobs;
mod redraw;
mod reuse;
