//! `roundtrip train-gan`: the discriminator against its PyTorch twin (values, gradients, updated
//! spectral-norm vectors; tests/fixtures/make_gan_fixtures.py), a tiny GAN trained whose
//! discriminator separates held-out real images from fakes, a killed and resumed training that
//! writes the bytes of an uninterrupted one, the model loaded by `BigGan::load` and driven by
//! `roundtrip generate`, bad input refused naming the value.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};
use rand::SeedableRng;
use roundtrip::gan::{DConfig, Discriminator, Mode};
use roundtrip::models::biggan::BigGan;

use crate::common::{fails_with, kill_at_first_checkpoint, ok, roundtrip};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn load(fixture: &str, name: &str) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(
        format!("{ROOT}/tests/fixtures/{fixture}/{name}"),
        &Device::Cpu,
    )
    .unwrap()
}

/// max |a - b| / max |b|.
fn rel(name: &str, a: &Tensor, b: &Tensor) -> f64 {
    let a: Vec<f32> = a.flatten_all().unwrap().to_vec1().unwrap();
    let b: Vec<f32> = b.flatten_all().unwrap().to_vec1().unwrap();
    assert_eq!(a.len(), b.len(), "{name}");
    let d = a
        .iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max);
    let m = b.iter().map(|y| y.abs()).fold(0f32, f32::max).max(1e-12);
    (d / m) as f64
}

#[test]
fn discriminator_matches_pytorch_in_value_gradient_and_power_iteration() {
    discriminator_matches("gan_d_tiny", false);
}

#[test]
fn discriminator_with_coordinate_channels_matches_pytorch() {
    discriminator_matches("gan_d_tiny_coords", true);
}

fn discriminator_matches(fixture: &str, coords: bool) {
    let w = load(fixture, "weights.safetensors");
    let r = load(fixture, "reference.safetensors");
    assert_eq!(
        w["input_conv.weight_orig"].dims()[1],
        if coords { 5 } else { 3 }
    );
    let cfg = DConfig {
        ch: 4,
        image_size: 16,
        depth: 2,
        num_classes: 5,
        coords,
    };
    let mut d = Discriminator::new(
        &cfg,
        rand_chacha::ChaCha8Rng::seed_from_u64(0),
        &Device::Cpu,
    )
    .unwrap();
    d.load(&w).unwrap();
    let x =
        candle_core::Var::from_tensor(&r["x"].permute((1, 0, 2, 3)).unwrap().contiguous().unwrap())
            .unwrap();
    let out = d.forward(x.as_tensor(), &r["y"], Mode::Train).unwrap();
    assert!(
        rel("out", &out, &r["out"]) < 1e-4,
        "out {}",
        rel("out", &out, &r["out"])
    );
    let g = (out * &r["w"])
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    let gx = g.get(&x).unwrap().permute((1, 0, 2, 3)).unwrap();
    assert!(
        rel("grad.x", &gx, &r["grad.x"]) < 1e-4,
        "grad.x {}",
        rel("grad.x", &gx, &r["grad.x"])
    );
    let mut checked = 0;
    for (name, var) in &d.store.params {
        let e = rel(name, g.get(var).unwrap(), &r[&format!("grad.{name}")]);
        assert!(e < 1e-4, "grad.{name}: {e}");
        checked += 1;
    }
    assert_eq!(
        checked,
        w.keys()
            .filter(|k| !k.ends_with("_u") && !k.ends_with("_v"))
            .count()
    );
    let buffers = d.buffers("");
    for (k, v) in &buffers {
        let e = rel(k, v, &r[&format!("after.{k}")]);
        assert!(e < 1e-4, "{k} after one power iteration: {e}");
    }
    assert_eq!(
        buffers.len(),
        w.keys()
            .filter(|k| k.ends_with("_u") || k.ends_with("_v"))
            .count()
    );
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

fn dataset(root: &Path) -> std::path::PathBuf {
    let ds = root.join("ds");
    ok(&roundtrip(&[
        "shapes",
        "dataset",
        "--out",
        &s(&ds),
        "--images",
        "40",
        "--size",
        "32",
        "--seed",
        "2",
    ]));
    ds
}

fn tiny(ds: &Path, out: &Path, epochs: &str) -> Vec<String> {
    [
        "train-gan",
        "--dataset",
        &s(ds),
        "--out",
        &s(out),
        "--epochs",
        epochs,
        "--image-size",
        "32",
        "--batch-size",
        "8",
        "--g-ch",
        "4",
        "--d-ch",
        "8",
        "--z-dim",
        "16",
        "--n-stats",
        "3",
        "--standing-samples",
        "8",
        "--seed",
        "3",
        "--quiet",
    ]
    .map(String::from)
    .to_vec()
}

#[test]
fn a_tiny_gan_trains_resumes_exactly_and_loads_as_a_biggan() {
    let d = tempfile::tempdir().unwrap();
    let ds = dataset(d.path());
    let whole = d.path().join("whole");
    ok(&roundtrip(&tiny(&ds, &whole, "3")));
    // The discriminator separates held-out real images from the generator's (measured on the
    // dev split: the share of (real, fake) pairs scored real above fake; 0.5 is chance).
    let log = std::fs::read_to_string(whole.join("train_log.jsonl")).unwrap();
    let last: serde_json::Value = serde_json::from_str(log.lines().last().unwrap()).unwrap();
    let auc = last["dev_auc"].as_f64().unwrap();
    assert!(auc > 0.7, "dev AUC {auc}");

    // Killed after its first checkpoint and resumed: the files of the uninterrupted run.
    let parts = d.path().join("parts");
    kill_at_first_checkpoint(
        &tiny(&ds, &parts, "3"),
        &parts.join("checkpoint.safetensors"),
    );
    // `--epochs` may change on resume: 1 (the epochs done) writes the model from the checkpoint
    // without training, then 3 extends it to the uninterrupted run's
    // (with other standing statistics: they shape only the written model)
    let mut early = tiny(&ds, &parts, "1");
    let at = early.iter().position(|a| a == "--n-stats").unwrap();
    early[at + 1] = "2".into();
    ok(&roundtrip(&[early, vec!["--resume".into()]].concat()));
    assert!(parts.join("model.safetensors").is_file());
    ok(&roundtrip(
        &[tiny(&ds, &parts, "3"), vec!["--resume".into()]].concat(),
    ));
    for f in ["model.safetensors", "checkpoint.safetensors", "config.json"] {
        assert!(
            std::fs::read(whole.join(f)).unwrap() == std::fs::read(parts.join(f)).unwrap(),
            "{f} differs from the uninterrupted run's"
        );
    }

    // BigGan::load reads the folder unchanged and generates.
    let loc = roundtrip::hub::Locator::offline(Path::new("/nonexistent-roundtrip-cache"));
    let m = loc
        .open(&roundtrip::hub::ModelRef::parse(&s(&whole)).unwrap())
        .unwrap();
    let g = BigGan::load(&m, &Device::Cpu).unwrap();
    assert_eq!(g.image_size(), 32);
    let z = Tensor::new(
        roundtrip::models::biggan::truncated_noise(1, 2, 16, 0.5),
        &Device::Cpu,
    )
    .unwrap()
    .reshape((2, 16))
    .unwrap();
    let mut y = vec![0f32; 80];
    y[3] = 1.0;
    y[40 + 17] = 1.0;
    let y = Tensor::from_vec(y, (2, 40), &Device::Cpu).unwrap();
    let img: Vec<f32> = g
        .forward(&z, &y, 0.5)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    assert_eq!(img.len(), 2 * 3 * 32 * 32);
    assert!(img.iter().all(|v| v.is_finite() && v.abs() <= 1.0));
    let spread =
        img.iter().fold(f32::MIN, |a, &b| a.max(b)) - img.iter().fold(f32::MAX, |a, &b| a.min(b));
    assert!(spread > 0.01, "a constant image");
    // And `roundtrip generate` drives it with no special case.
    let gen = d.path().join("gen");
    ok(&roundtrip(&[
        "generate",
        "a red circle",
        "--out",
        &s(&gen),
        "--generator",
        "biggan",
        "--biggan",
        &s(&whole),
        "--clip",
        &format!("{ROOT}/tests/fixtures/clip_tiny"),
        "--steps",
        "2",
        "--quiet",
    ]));
    assert!(gen.join("a-red-circle.png").is_file());
}

#[test]
fn bad_input_is_refused_naming_the_value() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("m");
    let missing = d.path().join("nope");
    fails_with(
        &roundtrip(&tiny(&missing, &out, "1")),
        &["--dataset", &s(&missing)],
    );
    let ds = dataset(d.path());
    for (flag, value) in [
        ("--batch-size", "1"),
        ("--image-size", "48"),
        ("--lr-d", "0"),
        ("--ema-decay", "1.5"),
    ] {
        let mut a = tiny(&ds, &out, "1");
        let i = a.iter().position(|x| x == flag).map(|i| i + 1);
        match i {
            Some(i) => a[i] = value.into(),
            None => a.extend([flag.to_string(), value.to_string()]),
        }
        fails_with(&roundtrip(&a), &[&format!("{flag} {value}")]);
        assert!(!out.exists(), "{flag}: the model folder was created");
    }
}
