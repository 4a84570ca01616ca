//! `train-clip` and `eval-clip` end to end on the toy coloured-shapes dataset of tests/common
//! (48 train, 8 dev, 8 test images of 32 px; 4 colours x 2 shapes), with a very small CLIP:
//! it learns retrieval far above chance, the folder loads as any CLIP does, the same seed gives
//! the same bytes, `--resume` continues to the same model, and bad input exits 2.

use std::path::Path;
use std::process::Output;

use roundtrip::hub::{Locator, ModelRef};
use roundtrip::models::clip::Clip;
use serde::Deserialize;

use crate::common::toy_dataset;
use crate::common::{ok, roundtrip};

/// Arguments for a CLIP of 2 x 2 layers, width 32, 32 px input in 16 patches of 8 px; `set`
/// replaces or adds flags.
fn train_args(ds: &str, out: &str, epochs: &str, set: &[(&str, &str)]) -> Vec<String> {
    let mut flags: Vec<(String, String)> = [
        ("--dataset", ds),
        ("--out", out),
        ("--epochs", epochs),
        ("--batch-size", "16"),
        ("--lr", "0.001"),
        ("--image-size", "32"),
        ("--patch", "8"),
        ("--width", "32"),
        ("--layers", "2"),
        ("--heads", "2"),
        ("--embed", "32"),
        ("--context", "12"),
        ("--crop-min", "0.6"),
        ("--seed", "3"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    for (k, v) in set {
        match flags.iter_mut().find(|(f, _)| f == k) {
            Some(slot) => slot.1 = v.to_string(),
            None => flags.push((k.to_string(), v.to_string())),
        }
    }
    let mut args = vec!["train-clip".to_string(), "--quiet".to_string()];
    for (k, v) in flags {
        args.push(k);
        if !v.is_empty() {
            args.push(v);
        }
    }
    args
}

fn train(ds: &str, out: &str, epochs: &str, set: &[(&str, &str)]) -> Output {
    let args = train_args(ds, out, epochs, set);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    roundtrip(&refs)
}

#[derive(Deserialize)]
struct EvalJson {
    images: usize,
    image_to_text_top1: f64,
    text_to_image_top1: f64,
    mean_matching_cosine: f64,
    mean_other_cosine: f64,
    chance: f64,
    split: String,
}

#[test]
fn learns_retrieval_and_loads_as_a_clip() {
    let d = tempfile::tempdir().unwrap();
    let ds = toy_dataset(&d.path().join("shapes")).display().to_string();
    let out = d.path().join("clip").display().to_string();
    let summary = ok(&train(&ds, &out, "100", &[]));
    assert!(summary.contains("epochs 100"), "{summary}");
    for f in [
        "config.json",
        "tokenizer.json",
        "model.safetensors",
        "checkpoint.safetensors",
        "train_log.jsonl",
        "training.json",
    ] {
        assert!(Path::new(&out).join(f).is_file(), "{f} missing");
    }
    let log = std::fs::read_to_string(Path::new(&out).join("train_log.jsonl")).unwrap();
    assert_eq!(log.lines().count(), 100);
    let training: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(Path::new(&out).join("training.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(training["finished"], true);
    assert_eq!(training["seed"], 3);
    assert_eq!(training["settings"]["width"], 32);
    assert_eq!(training["dataset"]["train_images"], 48);
    assert!(training["command_line"].as_array().unwrap().len() > 10);

    // The folder is a CLIP like any other: the generic loader reads it, the tokenizer pools the
    // end token, and the weights carry transformers' names.
    let locator = Locator::from_env();
    let model = locator.open(&ModelRef::parse(&out).unwrap()).unwrap();
    let clip = Clip::load(&model, &candle_core::Device::Cpu).unwrap();
    let cfg = clip.model.config();
    assert_eq!(
        (
            cfg.vision.image_size,
            cfg.vision.patch_size,
            cfg.projection_dim
        ),
        (32, 8, 32)
    );
    assert_eq!(cfg.text.eos_token_id, clip.tokenizer.end_token());
    let ids = clip.tokenizer.encode("A red circle.").unwrap();
    assert_eq!(ids.len(), 5, "{ids:?}");
    assert_eq!(*ids.iter().max().unwrap(), clip.tokenizer.end_token());
    let names: Vec<String> = safetensors::SafeTensors::deserialize(
        &std::fs::read(Path::new(&out).join("model.safetensors")).unwrap(),
    )
    .unwrap()
    .names()
    .into_iter()
    .map(String::from)
    .collect();
    for n in [
        "logit_scale",
        "text_projection.weight",
        "visual_projection.weight",
        "vision_model.pre_layrnorm.weight",
        "vision_model.embeddings.patch_embedding.weight",
        "text_model.encoder.layers.1.mlp.fc2.bias",
    ] {
        assert!(names.iter().any(|x| x == n), "{n} missing from {names:?}");
    }

    // Retrieval over the 8 test images (one per colour and shape, first captions all distinct).
    // Chance is 1/8 per query. A model that knows nothing finds the right image for >= 7 of the
    // 8 captions with probability 8 (1/8)^7 (7/8) + (1/8)^8 ~ 3e-6, and the right caption for
    // >= 5 of 8 images with probability ~1e-3: together they cannot pass by luck. (Colour is
    // learnt first and shape later, and telling a square from a circle in a 32 px image is the
    // harder direction for image -> text, hence the lower bar there; seeds 1-5 give 0.75-0.875
    // image -> text and 1.0 text -> image.)
    let e: EvalJson = serde_json::from_str(&ok(&roundtrip(&[
        "eval-clip",
        "--clip",
        &out,
        "--dataset",
        &ds,
        "--json",
    ])))
    .unwrap();
    assert_eq!((e.images, e.split.as_str()), (8, "test"));
    assert_eq!(e.chance, 0.125);
    eprintln!(
        "toy test split: i2t {} t2i {} cos {:.3} / {:.3}",
        e.image_to_text_top1, e.text_to_image_top1, e.mean_matching_cosine, e.mean_other_cosine
    );
    assert!(
        e.image_to_text_top1 >= 0.625,
        "i2t {}",
        e.image_to_text_top1
    );
    assert!(
        e.text_to_image_top1 >= 0.875,
        "t2i {}",
        e.text_to_image_top1
    );
    assert!(e.mean_matching_cosine > e.mean_other_cosine + 0.2);

    // --limit and the text summary.
    let line = ok(&roundtrip(&[
        "eval-clip",
        "--clip",
        &out,
        "--dataset",
        &ds,
        "--split",
        "dev",
        "--limit",
        "3",
    ]));
    assert!(line.contains("(dev, 3 images)"), "{line}");
    assert!(line.contains("text->image top-1"), "{line}");

    // Any command that takes a CLIP takes the folder.
    let img = Path::new(&ds).join("Flicker8k_Dataset/0000.png");
    let f = ok(&roundtrip(&[
        "features",
        "--encoder",
        "clip",
        "--weights",
        &out,
        "--text",
        "a red square",
        img.to_str().unwrap(),
    ]));
    assert!(f.contains("CLIPScore"), "{f}");
}

#[test]
fn same_seed_same_bytes_and_a_killed_run_resumes_exactly() {
    let d = tempfile::tempdir().unwrap();
    let ds = toy_dataset(&d.path().join("shapes")).display().to_string();
    let dir = |n: &str| d.path().join(n).display().to_string();
    let bytes = |o: &str, f: &str| std::fs::read(Path::new(o).join(f)).unwrap();
    let (a, b, c) = (dir("a"), dir("b"), dir("c"));
    ok(&train(&ds, &a, "12", &[]));
    ok(&train(&ds, &b, "12", &[]));
    for f in [
        "model.safetensors",
        "checkpoint.safetensors",
        "tokenizer.json",
        "config.json",
    ] {
        assert!(bytes(&a, f) == bytes(&b, f), "{f} differs between two runs");
    }

    // Killed as soon as its first checkpoint exists, then resumed: the same model and state as
    // the uninterrupted run (each epoch draws from its own stream of the seed).
    crate::common::kill_at_first_checkpoint(
        &train_args(&ds, &c, "12", &[]),
        &Path::new(&c).join("checkpoint.safetensors"),
    );
    let log =
        |o: &str| std::fs::read_to_string(Path::new(o).join("train_log.jsonl")).unwrap_or_default();
    let done = log(&c).lines().count();
    assert!(
        done < 12,
        "the run was not interrupted ({done} epochs done)"
    );
    let again = train(&ds, &c, "12", &[]);
    assert_eq!(
        again.status.code(),
        Some(2),
        "an existing model is not overwritten"
    );
    assert!(String::from_utf8_lossy(&again.stderr).contains("--resume"));
    let changed = train(&ds, &c, "12", &[("--resume", ""), ("--lr", "0.01")]);
    assert_eq!(changed.status.code(), Some(2), "other settings are refused");
    assert!(String::from_utf8_lossy(&changed.stderr).contains("same dataset and settings"));
    ok(&train(&ds, &c, "12", &[("--resume", "")]));
    for f in ["model.safetensors", "checkpoint.safetensors"] {
        assert!(
            bytes(&a, f) == bytes(&c, f),
            "{f} differs from the uninterrupted run's"
        );
    }
    assert_eq!(log(&c).lines().count(), 12);
}

#[test]
fn bad_input_exits_2_with_a_clear_message() {
    let d = tempfile::tempdir().unwrap();
    let missing = d.path().join("nope").display().to_string();
    let out = d.path().join("m").display().to_string();
    let o = train(&missing, &out, "1", &[]);
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains(&missing) && err.contains("does not exist"),
        "{err}"
    );

    let ds = toy_dataset(&d.path().join("shapes")).display().to_string();
    let o = train(&ds, &out, "1", &[("--image-size", "30")]);
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("--image-size 30 is not a multiple of --patch 8"),
        "{err}"
    );
    assert!(!Path::new(&out).exists(), "nothing written on bad settings");

    let o = train(&ds, &out, "1", &[("--width", "30"), ("--heads", "4")]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--width 30"));

    let o = roundtrip(&["eval-clip", "--clip", &missing, "--dataset", &ds]);
    assert_eq!(o.status.code(), Some(2));
    let o = roundtrip(&[
        "eval-clip",
        "--clip",
        concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/clip_tiny"),
        "--dataset",
        &missing,
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("does not exist"));
}

#[test]
fn negatives_change_the_training_and_are_checked_on_resume() {
    let d = tempfile::tempdir().unwrap();
    let ds = toy_dataset(&d.path().join("shapes")).display().to_string();
    let neg = d.path().join("neg");
    std::fs::create_dir_all(neg.join("frames")).unwrap();
    for (i, rgb) in [[200u8, 30, 30], [30, 30, 200], [240, 240, 240]]
        .iter()
        .enumerate()
    {
        image::RgbImage::from_pixel(32, 32, image::Rgb(*rgb))
            .save(neg.join(format!("n{i}.png")))
            .unwrap();
    }
    // Only the folder's own .png files count.
    std::fs::write(neg.join("notes.txt"), "not an image").unwrap();
    image::RgbImage::new(32, 32)
        .save(neg.join("frames").join("f.png"))
        .unwrap();
    let negs = neg.display().to_string();
    let (plain, with) = (
        d.path().join("plain").display().to_string(),
        d.path().join("with").display().to_string(),
    );
    ok(&train(&ds, &plain, "2", &[]));
    let flags = [
        ("--negatives", negs.as_str()),
        ("--negatives-per-batch", "4"),
    ];
    ok(&train(&ds, &with, "2", &flags));
    let read = |o: &str, f: &str| std::fs::read(Path::new(o).join(f)).unwrap();
    assert!(
        read(&plain, "model.safetensors") != read(&with, "model.safetensors"),
        "the negatives did not change the training"
    );
    let t: serde_json::Value = serde_json::from_slice(&read(&with, "training.json")).unwrap();
    assert_eq!(t["settings"]["negatives"], 4);
    assert_eq!(t["negatives"]["images"], 3);
    assert_eq!(t["negatives"]["content"].as_str().map(str::len), Some(64));
    let p: serde_json::Value = serde_json::from_slice(&read(&plain, "training.json")).unwrap();
    assert!(p["settings"].get("negatives").is_none() && p["negatives"].is_null());

    // Other negatives are other inputs: --resume refuses them.
    image::RgbImage::from_pixel(32, 32, image::Rgb([30, 200, 30]))
        .save(neg.join("n0.png"))
        .unwrap();
    let mut again = flags.to_vec();
    again.push(("--resume", ""));
    let o = train(&ds, &with, "2", &again);
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("same dataset and settings") && err.contains("negatives"),
        "{err}"
    );

    // A folder without images, and a count of 0, are input errors.
    let empty = d.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let e = empty.display().to_string();
    let out = d.path().join("x").display().to_string();
    let o = train(&ds, &out, "1", &[("--negatives", e.as_str())]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("no .png images"));
    let o = train(
        &ds,
        &out,
        "1",
        &[
            ("--negatives", negs.as_str()),
            ("--negatives-per-batch", "0"),
        ],
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--negatives-per-batch must be at least 1"));
}
