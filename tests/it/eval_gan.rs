//! `roundtrip eval-gan` on a random-weight 64 px BigGAN-deep of the shapes world's 40 classes
//! (built here), the tiny CLIP fixture and the shipped shapes captioners: random samples are
//! rarely captioned as their class while rendered photos are, samples lie further from the
//! shapes world than its own images do, and bad models are refused naming the file. Also the
//! held-out prompts file.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use roundtrip::models::biggan::{BigGan, Config};
use roundtrip::shapes::classes::class_names;

use crate::common::{fails_with, ok, roundtrip};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// A 64 px BigGAN-deep config with 40 classes: four upsampling blocks, attention at 16 px.
fn config() -> Config {
    Config {
        output_dim: 64,
        z_dim: 16,
        class_embed_dim: 16,
        channel_width: 4,
        num_classes: 40,
        layers: [(true, 16, 8), (true, 8, 4), (true, 4, 2), (true, 2, 1)]
            .map(Into::into)
            .to_vec(),
        attention_layer_position: 2,
        eps: 1e-4,
        n_stats: 51,
        class_names: Vec::new(),
    }
}

/// Writes config.json (`extra` merged in) and seeded random weights: N(0, 0.2), every spectral
/// norm's u set to W v / |W v| (so that sigma = |W v| > 0, as a power iteration leaves it) and the
/// BatchNorm variances to |N(0, 0.2)| + 0.5.
fn random_biggan(dir: &Path, extra: serde_json::Value) {
    let cfg = config();
    let dev = Device::Cpu;
    let mut w = roundtrip::weights::seeded_random_weights(|vb| BigGan::new(vb, &cfg), 3, 0.2, &dev)
        .unwrap();
    let names: Vec<String> = w.keys().cloned().collect();
    for name in &names {
        if let Some(prefix) = name.strip_suffix(".weight_orig") {
            let wt = &w[name];
            let out = wt.dim(0).unwrap();
            let mat = wt.reshape((out, wt.elem_count() / out)).unwrap();
            let v = &w[&format!("{prefix}.weight_v")];
            let v = (v / v
                .sqr()
                .unwrap()
                .sum_all()
                .unwrap()
                .sqrt()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap() as f64)
                .unwrap();
            let wv = mat
                .matmul(&v.unsqueeze(1).unwrap())
                .unwrap()
                .squeeze(1)
                .unwrap();
            let norm = wv.sqr().unwrap().sum_all().unwrap().sqrt().unwrap();
            let u = wv.broadcast_div(&norm).unwrap();
            w.insert(format!("{prefix}.weight_v"), v);
            w.insert(format!("{prefix}.weight_u"), u);
        }
        if name.ends_with("running_vars") {
            let t = (w[name].abs().unwrap() + 0.5).unwrap();
            w.insert(name.clone(), t);
        }
    }
    std::fs::create_dir_all(dir).unwrap();
    let mut json = serde_json::to_value(&cfg).unwrap();
    if let (Some(obj), Some(extra)) = (json.as_object_mut(), extra.as_object()) {
        for (k, v) in extra {
            obj.insert(k.clone(), v.clone());
        }
    }
    std::fs::write(dir.join("config.json"), json.to_string()).unwrap();
    let w: HashMap<String, Tensor> = w;
    candle_core::safetensors::save(&w, dir.join("model.safetensors")).unwrap();
}

fn shapes_biggan(dir: &Path) -> PathBuf {
    let g = dir.join("biggan");
    random_biggan(&g, serde_json::json!({"class_names": class_names()}));
    g
}

fn args(biggan: &Path, extra: &[&str]) -> Vec<String> {
    let mut a: Vec<String> = [
        "eval-gan",
        "--biggan",
        &biggan.display().to_string(),
        "--clip",
        &format!("{ROOT}/tests/fixtures/clip_tiny"),
        "--captioners",
        &format!("vgg16={ROOT}/models/shapes/vgg16,xception={ROOT}/models/shapes/xception"),
        "--device",
        "cpu",
        "--quiet",
    ]
    .map(String::from)
    .to_vec();
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

#[test]
fn random_samples_score_low_and_photos_high() {
    let dir = tempfile::tempdir().unwrap();
    let g = shapes_biggan(dir.path());
    let grid = dir.path().join("grid.png");
    let out = ok(&roundtrip(&args(
        &g,
        &[
            "--samples",
            "40",
            "--fd-samples",
            "48",
            "--seed",
            "5",
            "--grid",
            grid.to_str().unwrap(),
            "--json",
        ],
    )));
    // The grid: 5 rows of 8 (sample, photo) pairs of 64 px with 2 px gutters.
    let img = image::open(&grid).unwrap();
    assert_eq!((img.width(), img.height()), (16 * 66 + 2, 5 * 66 + 2));
    let r: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(r["schema_version"], 1);
    assert_eq!(r["image_size"], 64);
    assert_eq!(r["seeds"]["seed"], 5);
    for key in ["fidelity_noise", "photos", "fd_noise", "reference"] {
        assert!(
            r["seeds"][key].is_u64(),
            "seed {key} recorded: {}",
            r["seeds"]
        );
    }
    assert!(r["biggan"]["fingerprint"].is_string());
    let caps = r["fidelity"]["captioners"].as_array().unwrap();
    assert_eq!(caps.len(), 2);
    for c in caps {
        let (s, p) = (
            c["samples_share"].as_f64().unwrap(),
            c["photos_share"].as_f64().unwrap(),
        );
        eprintln!("{}: samples {s:.3} photos {p:.3}", c["label"]);
        assert!(
            s < 0.2,
            "{}: random samples named their class {s}",
            c["label"]
        );
        assert!(p > 0.8, "{}: photos named their class only {p}", c["label"]);
        assert!(p - s > 0.6, "{}: margin {s} vs {p}", c["label"]);
        assert_eq!(c["per_class"].as_array().unwrap().len(), 40);
    }
    let (fd, floor) = (
        r["frechet"]["samples_to_reference"].as_f64().unwrap(),
        r["frechet"]["floor"].as_f64().unwrap(),
    );
    eprintln!("FD samples {fd:.4} floor {floor:.4}");
    assert!(floor > 0.0 && fd > 2.0 * floor, "FD {fd} vs floor {floor}");
    // The same seed gives the same report (a small one); the summary names both figures.
    let small = ["--samples", "4", "--fd-samples", "6", "--seed", "5"];
    let json = [&small[..], &["--json"]].concat();
    assert_eq!(
        ok(&roundtrip(&args(&g, &json))),
        ok(&roundtrip(&args(&g, &json)))
    );
    let text = ok(&roundtrip(&args(&g, &small)));
    assert!(
        text.contains("class fidelity") && text.contains("floor"),
        "{text}"
    );
}

#[test]
fn a_reference_dataset_gives_the_reference_images() {
    let dir = tempfile::tempdir().unwrap();
    let g = shapes_biggan(dir.path());
    let ds = dir.path().join("ds");
    ok(&roundtrip(&[
        "shapes",
        "dataset",
        "--out",
        ds.to_str().unwrap(),
        "--images",
        "20",
        "--seed",
        "9",
    ]));
    let r = |reference: &[&str]| -> serde_json::Value {
        let mut extra = vec!["--samples", "1", "--fd-samples", "10", "--json"];
        extra.extend(reference);
        serde_json::from_str(&ok(&roundtrip(&args(&g, &extra)))).unwrap()
    };
    // The dataset's images are the rendered reference of the same seed.
    let from_dataset = r(&["--reference", ds.to_str().unwrap()]);
    let rendered = r(&["--seed", "6"]);
    assert_eq!(rendered["seeds"]["reference"], 9);
    assert!(from_dataset["seeds"]["reference"].is_null());
    assert_eq!(
        from_dataset["frechet"]["floor"],
        rendered["frechet"]["floor"]
    );
    let too_few = roundtrip(&args(
        &g,
        &["--fd-samples", "11", "--reference", ds.to_str().unwrap()],
    ));
    fails_with(&too_few, &["--reference", "20 images"]);
}

#[test]
fn models_not_of_the_shapes_world_are_refused_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let no_names = dir.path().join("no-names");
    random_biggan(&no_names, serde_json::json!({}));
    let o = roundtrip(&args(&no_names, &["--samples", "1", "--fd-samples", "2"]));
    fails_with(&o, &["no-names/config.json", "class_names"]);
    let imagenet = dir.path().join("imagenet");
    std::fs::create_dir_all(&imagenet).unwrap();
    let cfg = serde_json::json!({"num_classes": 1000, "class_names": class_names()});
    std::fs::write(imagenet.join("config.json"), cfg.to_string()).unwrap();
    let o = roundtrip(&args(&imagenet, &["--samples", "1"]));
    fails_with(&o, &["imagenet/config.json", "num_classes is 1000"]);
    let o = roundtrip(&args(&dir.path().join("missing"), &[]));
    fails_with(&o, &["--biggan", "missing", "not a folder"]);
    let o = roundtrip(&args(&no_names, &["--truncation", "0"]));
    fails_with(&o, &["--truncation 0"]);
}

/// prompts/shapes-fooling.txt (the phrases of the fooling-image pool in docs/shapes-world.md):
/// 400 distinct phrases, none a phrase of the tuning or held-out set, articles aside.
#[test]
fn fooling_prompts_avoid_the_reported_phrases() {
    let load = |f: &str| roundtrip::prompts::PromptFile::load(&Path::new(ROOT).join(f)).unwrap();
    let bare = |p: &str| {
        p.split_whitespace()
            .filter(|w| !["a", "an", "the"].contains(w))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let reported: std::collections::HashSet<String> =
        ["prompts/shapes.txt", "prompts/shapes-holdout.txt"]
            .iter()
            .flat_map(|f| load(f).prompts)
            .map(|p| bare(&p.phrase))
            .collect();
    assert!(reported.len() >= 48);
    let pool = load("prompts/shapes-fooling.txt");
    let distinct: std::collections::HashSet<String> =
        pool.prompts.iter().map(|p| bare(&p.phrase)).collect();
    assert_eq!((pool.prompts.len(), distinct.len()), (400, 400));
    assert!(distinct.is_disjoint(&reported));
}

/// prompts/shapes-holdout.txt: new phrases of the grammar, with the photos its header's command
/// renders.
#[test]
fn holdout_prompts_are_new_phrases_with_their_photos() {
    let load = |f: &str| roundtrip::prompts::PromptFile::load(&Path::new(ROOT).join(f)).unwrap();
    let holdout = load("prompts/shapes-holdout.txt");
    let tuned = load("prompts/shapes.txt");
    assert!(holdout.prompts.len() >= 24);
    let (mut one, mut two) = (0, 0);
    for p in &holdout.prompts {
        assert!(
            tuned.prompts.iter().all(|t| t.phrase != p.phrase),
            "{} is in prompts/shapes.txt",
            p.phrase
        );
        match roundtrip::shapes::parse(&p.phrase).unwrap() {
            roundtrip::shapes::Scene::One { .. } => one += 1,
            roundtrip::shapes::Scene::Two { .. } => two += 1,
        }
        let photo = p.photo_path.as_ref().unwrap();
        let out = tempfile::tempdir().unwrap();
        let file = out.path().join("p.png");
        ok(&roundtrip(&[
            "shapes",
            "render",
            &p.phrase,
            "--out",
            file.to_str().unwrap(),
            "--size",
            "64",
            "--seed",
            &p.line.to_string(),
        ]));
        assert_eq!(
            std::fs::read(&file).unwrap(),
            std::fs::read(photo).unwrap(),
            "{}: photo is not the one rendered at seed {}",
            p.phrase,
            p.line
        );
    }
    assert!(one >= 8 && two >= 8, "{one} one-shape, {two} two-shape");
}
