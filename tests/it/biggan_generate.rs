//! big-sleep guidance on the tiny BigGAN and CLIP fixtures: gradients reach the latents, the
//! similarity rises, runs reproduce byte for byte, saved latents reproduce the image exactly, and
//! bad input is refused (`run` with `[biggan]` lines: tests/run.rs).

use std::path::Path;
use std::process::Output;

use candle_core::{Device, Tensor, Var};
use roundtrip::generate::biggan::Latents;
use roundtrip::generate::cutouts::{big_sleep_cutouts, cutout_batch, Resize};
use roundtrip::generate::l2_normalize;
use roundtrip::generate::ImageEncoder;
use roundtrip::hub::{Locator, ModelRef};
use roundtrip::models::biggan::BigGan;
use roundtrip::models::clip::Clip;
use serde::Deserialize;

use crate::common::{fails_with, ok};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn fixture(name: &str) -> String {
    format!("{ROOT}/tests/fixtures/{name}")
}

fn generate(out: &Path, extra: &[&str]) -> Output {
    let mut args: Vec<String> = vec!["generate".into(), "a red circle".into(), "--out".into()];
    args.push(out.display().to_string());
    let fixed = [
        "--generator",
        "biggan",
        "--biggan",
        &fixture("biggan_tiny"),
        "--clip",
        &fixture("clip_tiny"),
        "--save-every",
        "10",
        "--quiet",
    ]
    .map(String::from);
    args.extend(fixed);
    args.extend(extra.iter().map(|s| s.to_string()));
    crate::common::bin().args(&args).output().unwrap()
}

#[derive(Deserialize)]
struct Record {
    generator: String,
    seed: u64,
    latents: String,
    frames: Vec<String>,
    settings: serde_json::Value,
    models: std::collections::HashMap<String, serde_json::Value>,
    steps: Vec<Step>,
}

#[derive(Deserialize)]
struct Step {
    similarity: f32,
}

fn record(dir: &Path) -> Record {
    serde_json::from_slice(&std::fs::read(dir.join("a-red-circle.json")).unwrap()).unwrap()
}

fn locator() -> Locator {
    Locator::offline(Path::new("/nonexistent-roundtrip-cache"))
}

fn biggan() -> BigGan {
    let loc = locator();
    let m = loc
        .open(&ModelRef::parse(&fixture("biggan_tiny")).unwrap())
        .unwrap();
    BigGan::load(&m, &Device::Cpu).unwrap()
}

fn clip() -> Clip {
    let loc = locator();
    let m = loc
        .open(&ModelRef::parse(&fixture("clip_tiny")).unwrap())
        .unwrap();
    Clip::load(&m, &Device::Cpu).unwrap()
}

#[test]
fn the_similarity_gradient_reaches_both_latents() {
    let dev = Device::Cpu;
    let g = biggan();
    let clip = clip();
    let cfg = g.config();
    let start = Latents::init(g.num_latents(), cfg.z_dim, cfg.num_classes, 5, &dev).unwrap();
    let z = Var::from_tensor(&start.z).unwrap();
    let logits = Var::from_tensor(&start.class_logits).unwrap();
    let classes = candle_nn::ops::sigmoid(logits.as_tensor()).unwrap();
    let img = ((g
        .forward_per_block(z.as_tensor(), &classes, 1.0)
        .unwrap()
        .squeeze(0)
        .unwrap()
        + 1.0)
        .unwrap()
        / 2.0)
        .unwrap();
    let mut rng = <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(1);
    let cuts = big_sleep_cutouts(&mut rng, 4, img.dim(2).unwrap());
    for mode in [Resize::Nearest, Resize::Bilinear] {
        let batch = cutout_batch(&img, &cuts, clip.model.input_size(), mode).unwrap();
        let emb = l2_normalize(&clip.model.encode_images(&batch).unwrap()).unwrap();
        let ids = clip
            .tokenizer
            .encode_batch(&["a red circle"], &dev)
            .unwrap();
        let text = l2_normalize(&clip.model.text_features(&ids).unwrap()).unwrap();
        // The similarity term alone: no regulariser can supply the gradient.
        let sim = emb.matmul(&text.t().unwrap()).unwrap().mean_all().unwrap();
        let grads = sim.backward().unwrap();
        for (name, v) in [("z", &z), ("class_logits", &logits)] {
            let g: Vec<f32> = grads
                .get(v.as_tensor())
                .unwrap_or_else(|| panic!("{mode:?}: no gradient reached {name}"))
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            let norm = g.iter().map(|x| x * x).sum::<f32>().sqrt();
            assert!(
                norm > 1e-7 && norm.is_finite(),
                "{mode:?} {name}: |grad| {norm}"
            );
        }
    }
}

#[test]
fn guidance_raises_the_similarity_and_reproduces_byte_for_byte() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    ok(&generate(&a, &["--steps", "20", "--seed", "7"]));
    ok(&generate(&b, &["--steps", "20", "--seed", "7"]));
    let r = record(&a);
    assert_eq!((r.generator.as_str(), r.seed), ("biggan", 7));
    assert_eq!(r.steps.len(), 20);
    assert_eq!(
        r.frames.len(),
        1,
        "a frame at step 10 (the last step is the image)"
    );
    assert_eq!(r.settings["cutouts"], 8);
    assert_eq!(r.settings["lr"], 0.07);
    assert_eq!(r.settings["resize"], "nearest");
    assert!(r.models.contains_key("biggan") && r.models.contains_key("clip"));
    let first: f32 = r.steps[..5].iter().map(|s| s.similarity).sum::<f32>() / 5.0;
    let last: f32 = r.steps[15..].iter().map(|s| s.similarity).sum::<f32>() / 5.0;
    assert!(
        last > first + 0.02,
        "similarity should rise: first five {first:.4}, last five {last:.4}"
    );
    for f in [
        "a-red-circle.png",
        "a-red-circle.latents.safetensors",
        "a-red-circle.json",
    ] {
        let (x, y) = (
            std::fs::read(a.join(f)).unwrap(),
            std::fs::read(b.join(f)).unwrap(),
        );
        if f.ends_with(".json") {
            // Timings differ; everything else is the same.
            let strip = |v: &[u8]| {
                let mut j: serde_json::Value = serde_json::from_slice(v).unwrap();
                j["seconds"] = 0.into();
                for s in j["steps"].as_array_mut().unwrap() {
                    s["seconds"] = 0.into();
                }
                j
            };
            assert_eq!(strip(&x), strip(&y));
        } else {
            assert!(x == y, "{f} differs between two runs with seed 7");
        }
    }
    // Another seed draws other latents.
    let c = tmp.path().join("c");
    ok(&generate(&c, &["--steps", "2", "--seed", "8"]));
    ok(&generate(&b, &["--steps", "2", "--seed", "7", "--force"]));
    assert_ne!(
        std::fs::read(c.join("a-red-circle.png")).unwrap(),
        std::fs::read(b.join("a-red-circle.png")).unwrap()
    );
}

#[test]
fn saved_latents_with_zero_steps_give_exactly_the_saved_image() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    ok(&generate(
        &a,
        &["--steps", "5", "--seed", "3", "--max-classes", "2"],
    ));
    let latents = a.join(record(&a).latents);
    let l = latents.display().to_string();
    ok(&generate(
        &b,
        &["--steps", "0", "--init-latents", &l, "--max-classes", "2"],
    ));
    assert!(
        std::fs::read(a.join("a-red-circle.png")).unwrap()
            == std::fs::read(b.join("a-red-circle.png")).unwrap(),
        "the image of the saved latents must be the saved image"
    );
    // The file holds the moving average and the optimiser's latents, [L, Z] and [L, C].
    let t = candle_core::safetensors::load(&latents, &Device::Cpu).unwrap();
    let g = biggan();
    let (n, zd, nc) = (g.num_latents(), g.config().z_dim, g.config().num_classes);
    for (name, shape) in [
        ("z", [n, zd]),
        ("class_logits", [n, nc]),
        ("last_z", [n, zd]),
        ("last_class_logits", [n, nc]),
    ] {
        assert_eq!(t[name].dims(), shape, "{name}");
    }
    // Resuming from the saved latents continues the optimisation (not a fresh start).
    let c = tmp.path().join("c");
    ok(&generate(
        &c,
        &["--steps", "3", "--seed", "3", "--init-latents", &l],
    ));
    assert_ne!(
        std::fs::read(c.join("a-red-circle.png")).unwrap(),
        std::fs::read(a.join("a-red-circle.png")).unwrap()
    );
}

#[test]
fn bad_biggan_input_is_refused_clearly() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("o");
    // Latents of the wrong shape, and a file that is not safetensors.
    let wrong = tmp.path().join("wrong.safetensors");
    let t = Tensor::zeros((2, 3), candle_core::DType::F32, &Device::Cpu).unwrap();
    candle_core::safetensors::save(
        &std::collections::HashMap::from([
            ("z".to_string(), t.clone()),
            ("class_logits".to_string(), t),
        ]),
        &wrong,
    )
    .unwrap();
    let w = wrong.display().to_string();
    fails_with(
        &generate(&out, &["--steps", "1", "--init-latents", &w]),
        &["wrong.safetensors", "tensor `z` has shape [2, 3]"],
    );
    let junk = tmp.path().join("junk.safetensors");
    std::fs::write(&junk, b"not a tensor file").unwrap();
    fails_with(
        &generate(
            &out,
            &[
                "--steps",
                "1",
                "--init-latents",
                &junk.display().to_string(),
            ],
        ),
        &["junk.safetensors", "not a readable safetensors file"],
    );
    fails_with(
        &generate(&out, &["--max-classes", "11"]),
        &["--max-classes 11", "1..=10"],
    );
    fails_with(&generate(&out, &["--layers", "3"]), &["--layers", "SIREN"]);
    fails_with(
        &generate(&out, &["--size", "128"]),
        &["--size 128 with --biggan"],
    );
    fails_with(&generate(&out, &["--ema-decay", "1"]), &["--ema-decay 1"]);
    assert!(!out.join("a-red-circle.png").exists(), "nothing written");
}

/// Cutouts beyond the machine's memory are refused before anything is written: an absurd number
/// by the model-free check, and 3000 (about 80 KB each with the tiny models, beyond 256 MiB)
/// by the estimate with the models' configs; 8 still run under the same bound.
#[test]
fn cutouts_beyond_the_memory_are_refused_before_writing() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("o");
    let bounded = |extra: &[&str]| {
        let mut args: Vec<String> = vec!["generate".into(), "a red circle".into(), "--out".into()];
        args.push(out.display().to_string());
        for a in [
            "--generator",
            "biggan",
            "--biggan",
            &fixture("biggan_tiny"),
            "--clip",
            &fixture("clip_tiny"),
            "--steps",
            "1",
            "--quiet",
        ] {
            args.push(a.into());
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        crate::common::bin()
            .env("ROUNDTRIP_MEMORY_LIMIT", (256u64 << 20).to_string())
            .args(&args)
            .output()
            .unwrap()
    };
    for n in ["1000000000000", "3000"] {
        fails_with(
            &bounded(&["--cutouts", n]),
            &[
                &format!("--cutouts {n} needs about"),
                "more than this machine's 256.0 MiB",
            ],
        );
        assert!(
            !out.exists(),
            "--cutouts {n}: {} was created",
            out.display()
        );
    }
    ok(&bounded(&["--cutouts", "8"]));
}

/// The estimate against the peak measured for W2 (README's Performance table: BigGAN-deep 128,
/// 8 cutouts, ViT-B/32: 2684 MiB).
#[test]
fn memory_estimate_matches_the_measured_peak() {
    use roundtrip::generate::BigGanSettings as Settings;
    use roundtrip::models::biggan::Config;
    use roundtrip::models::clip::ClipConfig;
    let (clip, g) = (ClipConfig::vit_b32(), Config::deep_128());
    let s = Settings {
        cutouts: 8,
        ..Settings::default()
    };
    let (bytes, _) = s.memory_estimate(Some((&clip, &g)));
    let mib = bytes / (1024.0 * 1024.0);
    assert!((2684.0 * 0.95..2684.0 * 1.05).contains(&mib), "{mib} MiB");
    let huge = Settings {
        cutouts: usize::MAX,
        ..Settings::default()
    };
    let (bytes, named) = huge.memory_estimate(Some((&clip, &g)));
    assert!(bytes.is_finite() && bytes > 1e20, "{bytes}");
    assert_eq!(named, format!("--cutouts {}", usize::MAX));
    // The model-free lower bound still refuses an absurd number.
    let (floor, _) = huge.memory_estimate(None);
    assert!(floor > 1e20);
}
