//! `roundtrip generate` end to end on the tiny CLIP fixture: guidance works, runs reproduce
//! byte for byte, and bad inputs fail early with clear messages.

use std::path::{Path, PathBuf};
use std::process::Output;

use crate::common::stderr;
use serde::Deserialize;

const CLIP: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/clip_tiny");
const PHRASE: &str = "a red circle left of a blue square";
const SLUG: &str = "a-red-circle-left-of-a-blue-square";

fn generate(out: &Path, extra: &[&str]) -> Output {
    let mut args: Vec<String> = ["generate", PHRASE, "--out"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    args.push(out.display().to_string());
    for a in [
        "--clip", CLIP, "--steps", "20", "--size", "32", "--layers", "3", "--hidden", "32",
    ] {
        args.push(a.into());
    }
    for a in [
        "--cutouts",
        "4",
        "--lr",
        "1e-3",
        "--save-every",
        "10",
        "--quiet",
    ] {
        args.push(a.into());
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    crate::common::bin().args(&args).output().unwrap()
}

#[derive(Deserialize)]
struct Record {
    schema_version: u32,
    phrase: String,
    generator: String,
    seed: u64,
    seed_source: String,
    image: String,
    frames: Vec<String>,
    settings: Settings,
    models: std::collections::HashMap<String, ModelRec>,
    steps: Vec<Step>,
}

#[derive(Deserialize)]
struct Settings {
    steps: usize,
    size: usize,
    cutouts: usize,
}

#[derive(Deserialize)]
struct ModelRec {
    source: String,
}

#[derive(Deserialize)]
struct Step {
    step: usize,
    loss: f32,
    similarity: f32,
    seconds: f64,
}

fn record(dir: &Path) -> Record {
    serde_json::from_str(&std::fs::read_to_string(dir.join(format!("{SLUG}.json"))).unwrap())
        .unwrap()
}

fn bytes(dir: &Path, rel: &str) -> Vec<u8> {
    std::fs::read(dir.join(rel)).unwrap()
}

#[test]
fn similarity_rises_and_outputs_are_recorded() {
    let d = tempfile::tempdir().unwrap();
    let o = generate(d.path(), &["--seed", "3"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let r = record(d.path());
    assert_eq!(
        (r.schema_version, r.phrase.as_str(), r.generator.as_str()),
        (2, PHRASE, "siren")
    );
    assert_eq!((r.seed, r.seed_source.as_str()), (3, "given"));
    assert_eq!(
        (r.settings.steps, r.settings.size, r.settings.cutouts),
        (20, 32, 4)
    );
    assert_eq!(r.models["clip"].source, "folder");
    assert_eq!(r.steps.len(), 20);
    assert!(r
        .steps
        .iter()
        .enumerate()
        .all(|(i, s)| s.step == i + 1 && s.loss.is_finite() && s.seconds >= 0.0));
    let first: f32 = r.steps[..3].iter().map(|s| s.similarity).sum::<f32>() / 3.0;
    let last: f32 = r.steps[17..].iter().map(|s| s.similarity).sum::<f32>() / 3.0;
    assert!(
        last > first + 0.1,
        "similarity did not rise: {first} -> {last}"
    );
    assert_eq!(r.image, format!("{SLUG}.png"));
    assert_eq!(r.frames, [format!("{SLUG}/step-000010.png")]);
    let img = image::open(d.path().join(&r.image)).unwrap();
    assert_eq!((img.width(), img.height()), (32, 32));
    // stdout names the image and the record.
    let out = String::from_utf8(o.stdout).unwrap();
    assert!(
        out.contains(&format!("{SLUG}.png")) && out.contains("seed 3"),
        "{out}"
    );
}

#[test]
fn same_seed_same_bytes_and_a_drawn_seed_is_recorded() {
    let (a, b, c) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    assert!(generate(a.path(), &["--seed", "11"]).status.success());
    assert!(generate(b.path(), &["--seed", "11"]).status.success());
    let png = format!("{SLUG}.png");
    let frame = format!("{SLUG}/step-000010.png");
    assert_eq!(bytes(a.path(), &png), bytes(b.path(), &png));
    assert_eq!(bytes(a.path(), &frame), bytes(b.path(), &frame));

    let o = generate(c.path(), &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let r = record(c.path());
    assert_eq!(r.seed_source, "random");
    let again = tempfile::tempdir().unwrap();
    assert!(generate(again.path(), &["--seed", &r.seed.to_string()])
        .status
        .success());
    assert_eq!(bytes(c.path(), &png), bytes(again.path(), &png));
    // A different seed draws a different image.
    assert_ne!(bytes(a.path(), &png), bytes(c.path(), &png));
}

fn expect_input_error(o: &Output, want: &str) {
    assert_eq!(o.status.code(), Some(2), "{}", stderr(o));
    assert!(stderr(o).contains(want), "{want:?} not in: {}", stderr(o));
}

#[test]
fn existing_outputs_need_force() {
    let d = tempfile::tempdir().unwrap();
    assert!(generate(d.path(), &["--seed", "1"]).status.success());
    let before = bytes(d.path(), &format!("{SLUG}.png"));
    expect_input_error(
        &generate(d.path(), &["--seed", "2"]),
        "already exists: pass --force",
    );
    assert_eq!(
        bytes(d.path(), &format!("{SLUG}.png")),
        before,
        "nothing was overwritten"
    );
    assert!(generate(d.path(), &["--seed", "2", "--force"])
        .status
        .success());
}

#[test]
fn bad_settings_and_phrases_are_rejected_before_work() {
    let d = tempfile::tempdir().unwrap();
    expect_input_error(
        &generate(d.path(), &["--steps", "0"]),
        "--steps must be at least 1",
    );
    expect_input_error(
        &generate(d.path(), &["--cutouts", "0"]),
        "--cutouts must be at least 1",
    );
    expect_input_error(
        &generate(d.path(), &["--lower", "0.9", "--upper", "0.5"]),
        "cutout bounds",
    );
    expect_input_error(
        &generate(d.path(), &["--tv-weight=-1"]),
        "--tv-weight -1 must be a number of at least 0",
    );
    expect_input_error(
        &generate(d.path(), &["--cutout-noise", "2"]),
        "--cutout-noise 2 must lie in [0, 1]",
    );
    let o = crate::common::bin()
        .args([
            "generate",
            "  ",
            "--out",
            &d.path().display().to_string(),
            "--clip",
            CLIP,
        ])
        .output()
        .unwrap();
    expect_input_error(&o, "the phrase is empty");
    assert_eq!(
        std::fs::read_dir(d.path()).unwrap().count(),
        0,
        "nothing written"
    );
}

#[test]
fn missing_or_broken_weights_and_unwritable_output_fail_clearly() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("out");
    expect_input_error(
        &generate(&out, &["--clip", "/no/such/clip"]),
        "/no/such/clip does not exist",
    );

    // A weights file with one tensor of the wrong shape.
    let broken = d.path().join("broken-clip");
    std::fs::create_dir(&broken).unwrap();
    for f in ["config.json", "tokenizer.json"] {
        std::fs::copy(Path::new(CLIP).join(f), broken.join(f)).unwrap();
    }
    let mut tensors = candle_core::safetensors::load(
        Path::new(CLIP).join("model.safetensors"),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let wrong =
        candle_core::Tensor::zeros((16, 31), candle_core::DType::F32, &candle_core::Device::Cpu)
            .unwrap();
    tensors.insert("visual_projection.weight".into(), wrong);
    candle_core::safetensors::save(&tensors, broken.join("model.safetensors")).unwrap();
    expect_input_error(
        &generate(&out, &["--clip", broken.to_str().unwrap()]),
        "visual_projection.weight",
    );

    // The output folder cannot be created under a regular file.
    let file = d.path().join("file");
    std::fs::write(&file, b"x").unwrap();
    let blocked: PathBuf = file.join("out");
    expect_input_error(&generate(&blocked, &[]), "cannot create output folder");
}

/// Squared total variation of a PNG, as `generate::siren::total_variation` defines it.
fn png_tv(path: &Path) -> f64 {
    let img = image::open(path).unwrap().to_rgb8();
    let (w, h) = img.dimensions();
    let px = |x: u32, y: u32, c: usize| img.get_pixel(x, y)[c] as f64 / 255.0;
    let (mut dx, mut dy) = (0.0, 0.0);
    for c in 0..3 {
        for y in 0..h {
            for x in 0..w {
                if x + 1 < w {
                    dx += (px(x + 1, y, c) - px(x, y, c)).powi(2);
                }
                if y + 1 < h {
                    dy += (px(x, y + 1, c) - px(x, y, c)).powi(2);
                }
            }
        }
    }
    dx / (3 * h * (w - 1)) as f64 + dy / (3 * (h - 1) * w) as f64
}

/// The total-variation penalty smooths the image (less than half the TV of the same run without
/// it), cutout noise changes the image, and both are recorded with the settings only when on
/// (so records of earlier runs keep their bytes).
#[test]
fn tv_penalty_smooths_and_noise_is_recorded() {
    let (plain, tv, noisy) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    crate::common::ok(&generate(
        plain.path(),
        &["--seed", "4", "--w0", "30", "--lr", "1e-2"],
    ));
    crate::common::ok(&generate(
        tv.path(),
        &[
            "--seed",
            "4",
            "--w0",
            "30",
            "--lr",
            "1e-2",
            "--tv-weight",
            "1000",
        ],
    ));
    crate::common::ok(&generate(
        noisy.path(),
        &[
            "--seed",
            "4",
            "--w0",
            "30",
            "--lr",
            "1e-2",
            "--cutout-noise",
            "0.2",
        ],
    ));
    let image = |d: &Path| d.join(&record(d).image);
    let (t_plain, t_tv) = (png_tv(&image(plain.path())), png_tv(&image(tv.path())));
    assert!(
        t_tv < 0.5 * t_plain,
        "TV with the penalty {t_tv:.5} vs without {t_plain:.5}"
    );
    let json = |d: &Path| std::fs::read_to_string(d.join(format!("{SLUG}.json"))).unwrap();
    assert!(
        !json(plain.path()).contains("tv_weight") && !json(plain.path()).contains("cutout_noise")
    );
    assert!(json(tv.path()).contains("\"tv_weight\": 1000"));
    assert!(json(noisy.path()).contains("\"cutout_noise\": 0.2"));
    assert_ne!(
        bytes(plain.path(), &record(plain.path()).image),
        bytes(noisy.path(), &record(noisy.path()).image)
    );
}
