//! Captioners whose encoder is trained end to end (`train --train-encoder`), on the toy shapes
//! dataset of tests/common with the `tiny` geometries: both encoder kinds learn and beat a
//! caption-blind baseline, the captioner folder still works after a move, a killed training
//! resumes to byte-identical files, the saved encoder loads into the inference kernels and gives
//! the trainable forward's eval-mode features (1e-4 relative), and the feature cache never
//! serves a retrained encoder stale features.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use rand::SeedableRng;
use rand_distr::Distribution;
use roundtrip::captioner::encoder::{
    encoder_geometry, load_encoder, trainable_encoder, EncoderKind,
};
use roundtrip::hub::Locator;
use roundtrip::metrics::bleu::{corpus_bleu, Smoothing};
use roundtrip::models::trainable::{self, TrainableEncoder};
use roundtrip::text::normalize;
use serde::Deserialize;

use crate::common::{ok, roundtrip};
use crate::common::{rel, toy_dataset as dataset, COLOURS, SHAPES};

fn train_args<'a>(kind: &'a str, ds: &'a str, out: &'a str, epochs: &'a str) -> Vec<&'a str> {
    let mut args = vec![
        "train",
        "--encoder",
        kind,
        "--train-encoder",
        "--encoder-config",
        "tiny",
        "--dataset",
        ds,
        "--out",
        out,
        "--epochs",
        epochs,
        "--quiet",
    ];
    args.extend(crate::common::TINY_DECODER);
    args
}

#[derive(Deserialize)]
struct Eval {
    bleu1: f64,
    bleu4: f64,
    images: usize,
    diversity: f64,
    features: Features,
}

#[derive(Deserialize, PartialEq, Debug)]
struct Features {
    computed: usize,
    cached: usize,
}

fn eval(captioner: &str, ds: &str, cache: &str) -> Eval {
    let out = ok(&roundtrip(&[
        "eval",
        "--captioner",
        captioner,
        "--dataset",
        ds,
        "--json",
        "--cache",
        cache,
        "--quiet",
    ]));
    serde_json::from_str(&out).unwrap()
}

/// Corpus BLEU-1 of the caption-blind baseline (the same caption for every test image).
fn blind_bleu1() -> f64 {
    let refs: Vec<Vec<Vec<String>>> = (0..8)
        .map(|i| {
            let (cname, _) = COLOURS[(i / 2) % 4];
            let shape = SHAPES[i % 2];
            vec![
                normalize(&format!("a {cname} {shape}")),
                normalize(&format!("there is a {cname} {shape}")),
                normalize(&format!("the {shape} is {cname}")),
            ]
        })
        .collect();
    let blind: Vec<Vec<String>> = vec![normalize("a red square on a white background"); 8];
    corpus_bleu(&blind, &refs, Smoothing::None)[0]
}

fn losses(dir: &Path) -> Vec<f64> {
    std::fs::read_to_string(dir.join("train_log.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["train_loss"]
                .as_f64()
                .unwrap()
        })
        .collect()
}

/// Trains a captioner of `kind` end to end and checks what it learnt, its folder and a move.
fn learns_and_moves(kind: &str, epochs: &str) {
    let d = tempfile::tempdir().unwrap();
    let ds = dataset(&d.path().join("shapes")).display().to_string();
    let cache = d.path().join("cache").display().to_string();
    let out = d.path().join("cap");
    let out_s = out.display().to_string();
    let printed = ok(&roundtrip(&train_args(kind, &ds, &out_s, epochs)));
    assert!(printed.contains("encoder trained"), "{printed}");
    for f in [
        "config.json",
        "vocab.json",
        "model.safetensors",
        "checkpoint.safetensors",
        "train_log.jsonl",
        "encoder/config.json",
        "encoder/model.safetensors",
    ] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["encoder"]["reference"], "./encoder");
    assert_eq!(cfg["training"]["train_encoder"], true);
    assert!(cfg["encoder"]["config"]["image_size"].as_u64().is_some());
    assert!(cfg["training"]["augmentation"]["shift"].as_f64().is_some());

    // The loss falls.
    let l = losses(&out);
    eprintln!("{kind}: train loss {:.3} -> {:.3}", l[0], l[l.len() - 1]);
    assert!(l[l.len() - 1] < 0.5 * l[0], "{kind}: loss {l:?}");

    // Eval computes features with the saved encoder, then reads them from the cache.
    let e = eval(&out_s, &ds, &cache);
    assert_eq!(e.images, 8);
    assert_eq!(
        e.features,
        Features {
            computed: 8,
            cached: 0
        }
    );
    let base = blind_bleu1();
    eprintln!(
        "{kind}: BLEU-1 {:.3} (blind {base:.3}) BLEU-4 {:.3} diversity {:.3}",
        e.bleu1, e.bleu4, e.diversity
    );
    assert!(
        e.bleu1 > base + 0.2,
        "{kind}: BLEU-1 {} vs blind {base}",
        e.bleu1
    );
    assert!(e.bleu4 > 0.3, "{kind}: BLEU-4 {}", e.bleu4);
    assert!(e.diversity > 0.25, "{kind}: diversity {}", e.diversity);

    // The folder moves: copied elsewhere and the original removed, it loads, captions and
    // evaluates to the same scores (its encoder's features are still cached: same weights).
    let moved = d.path().join("elsewhere").join("moved");
    crate::common::copy_dir(&out, &moved);
    std::fs::remove_dir_all(&out).unwrap();
    let moved_s = moved.display().to_string();
    let caps = ok(&roundtrip(&[
        "caption",
        "--captioner",
        &moved_s,
        &format!("{ds}/Flicker8k_Dataset/0000.png"),
    ]));
    assert!(caps.contains("0000.png\t"), "{caps}");
    let e2 = eval(&moved_s, &ds, &cache);
    assert_eq!((e2.bleu1, e2.bleu4), (e.bleu1, e.bleu4));
    assert_eq!(
        e2.features,
        Features {
            computed: 0,
            cached: 8
        }
    );

    // The saved encoder is the trainable model's eval-mode function, run by the inference
    // kernels.
    let kind: EncoderKind = kind.parse().unwrap();
    let geometry = encoder_geometry(kind, "tiny").unwrap();
    let enc_dir = moved.join("encoder");
    let tensors =
        candle_core::safetensors::load(enc_dir.join("model.safetensors"), &Device::Cpu).unwrap();
    let t = trainable_encoder(kind, &geometry, Some(&tensors), 0, &Device::Cpu).unwrap();
    check_parity(t.as_ref(), &enc_dir, kind, "trained");
}

#[test]
fn vgg16_trained_end_to_end_beats_a_blind_baseline_and_moves() {
    learns_and_moves("vgg16", "25");
}

#[test]
fn xception_trained_end_to_end_beats_a_blind_baseline_and_moves() {
    learns_and_moves("xception", "25");
}

/// Seeded images in the preprocessed range.
fn images(b: usize, s: usize, seed: u64) -> Tensor {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let d = rand_distr::Uniform::new(-2f32, 2.0).unwrap();
    let v: Vec<f32> = (0..b * 3 * s * s).map(|_| d.sample(&mut rng)).collect();
    Tensor::from_vec(v, (b, 3, s, s), &Device::Cpu).unwrap()
}

/// Eval-mode features of the trainable model vs the inference encoder loaded from `dir`.
fn check_parity(t: &dyn TrainableEncoder, dir: &Path, kind: EncoderKind, what: &str) {
    let cache = tempfile::tempdir().unwrap();
    let loaded = load_encoder(
        kind,
        dir.to_str().unwrap(),
        &Locator::offline(cache.path()),
        &Device::Cpu,
    )
    .unwrap();
    assert_eq!(loaded.encoder.feature_dim(), t.feature_dim());
    assert_eq!(loaded.encoder.input_size(), t.input_size());
    let x = images(3, t.input_size(), 11);
    let ours = t.forward_t(&x, false).unwrap();
    let kernels = loaded.encoder.forward(&x).unwrap();
    let r = rel(
        &format!("{} {what} eval vs kernels", kind.name()),
        &ours,
        &kernels,
    );
    assert!(r <= 1e-4, "{}: {r:e}", kind.name());
}

/// Random values for every tensor (BatchNorm statistics too, positive variances), so that eval
/// mode, biases and BatchNorm folding are all exercised.
fn perturbed(specs: &[trainable::Spec], seed: u64) -> HashMap<String, Tensor> {
    let mut t = trainable::init_tensors(specs, seed, &Device::Cpu).unwrap();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed + 1);
    for s in specs {
        let n: usize = s.shape.iter().product();
        let (lo, hi) = match s.init {
            trainable::Init::KaimingFanOut => continue,
            trainable::Init::BufferOnes | trainable::Init::Ones => (0.5, 1.5),
            trainable::Init::Zeros | trainable::Init::BufferZeros => (-0.3, 0.3),
        };
        let d = rand_distr::Uniform::new(lo as f32, hi as f32).unwrap();
        let v: Vec<f32> = (0..n).map(|_| d.sample(&mut rng)).collect();
        t.insert(
            s.name.clone(),
            Tensor::from_vec(v, s.shape.as_slice(), &Device::Cpu).unwrap(),
        );
    }
    t
}

/// The trainable models in eval mode and the inference kernels loading their saved folder agree
/// (1e-4 relative) at the tiny and the shipped `shapes` geometries.
#[test]
fn eval_mode_trainable_forward_matches_the_inference_kernels() {
    for kind in [EncoderKind::Vgg16, EncoderKind::Xception] {
        for name in ["tiny", "shapes"] {
            let geometry = encoder_geometry(kind, name).unwrap();
            let specs = match kind {
                EncoderKind::Vgg16 => {
                    trainable::vgg16::specs(&serde_json::from_value(geometry.clone()).unwrap())
                }
                EncoderKind::Xception => {
                    trainable::xception::specs(&serde_json::from_value(geometry.clone()).unwrap())
                }
            };
            let tensors = perturbed(&specs, 3);
            let t = trainable_encoder(kind, &geometry, Some(&tensors), 0, &Device::Cpu).unwrap();
            let d = tempfile::tempdir().unwrap();
            let dir: PathBuf = d.path().join("enc");
            trainable::save(t.as_ref(), &dir, "test").unwrap();
            check_parity(t.as_ref(), &dir, kind, name);
        }
    }
}

#[test]
fn a_killed_end_to_end_training_resumes_to_the_same_model() {
    let d = tempfile::tempdir().unwrap();
    let ds = dataset(&d.path().join("shapes")).display().to_string();
    let straight = d.path().join("straight").display().to_string();
    // Xception: BatchNorm running statistics must resume too; two of the five captions per
    // image: their draws too.
    let args = |out| {
        [
            train_args("xception", &ds, out, "12"),
            vec!["--captions-per-image", "2"],
        ]
        .concat()
    };
    ok(&roundtrip(&args(&straight)));

    let killed = d.path().join("killed");
    let killed_s = killed.display().to_string();
    crate::common::kill_at_first_checkpoint(
        &args(&killed_s),
        &killed.join("checkpoint.safetensors"),
    );
    let log = |dir: &Path| std::fs::read_to_string(dir.join("train_log.jsonl")).unwrap_or_default();
    let done = log(&killed).lines().count();
    assert!(
        done < 12,
        "the run was not interrupted ({done} epochs done)"
    );
    ok(&roundtrip(&[args(&killed_s), vec!["--resume"]].concat()));
    let bytes = |dir: &str, f: &str| std::fs::read(Path::new(dir).join(f)).unwrap();
    for f in [
        "model.safetensors",
        "checkpoint.safetensors",
        "encoder/model.safetensors",
        "encoder/config.json",
        "config.json",
    ] {
        assert!(
            bytes(&straight, f) == bytes(&killed_s, f),
            "{f} differs from the uninterrupted run's"
        );
    }
    assert_eq!(log(&killed).lines().count(), 12);
}

/// A retrained encoder (another seed) gets its own features, never the cached ones of the first.
#[test]
fn a_retrained_encoder_never_reuses_cached_features() {
    let d = tempfile::tempdir().unwrap();
    let ds = dataset(&d.path().join("shapes")).display().to_string();
    let cache = d.path().join("cache").display().to_string();
    let a = d.path().join("a").display().to_string();
    ok(&roundtrip(&train_args("vgg16", &ds, &a, "2")));
    let b = d.path().join("b").display().to_string();
    let mut args = train_args("vgg16", &ds, &b, "2");
    let seed = args.iter().position(|&x| x == "--seed").unwrap();
    args[seed + 1] = "6";
    ok(&roundtrip(&args));
    assert_eq!(
        eval(&a, &ds, &cache).features,
        Features {
            computed: 8,
            cached: 0
        }
    );
    assert_eq!(
        eval(&b, &ds, &cache).features,
        Features {
            computed: 8,
            cached: 0
        }
    );
    assert_eq!(
        eval(&a, &ds, &cache).features,
        Features {
            computed: 0,
            cached: 8
        }
    );

    // A captioner folder that lost its encoder says so.
    let c = d.path().join("c");
    crate::common::copy_dir(Path::new(&a), &c);
    std::fs::remove_dir_all(c.join("encoder")).unwrap();
    let o = roundtrip(&[
        "caption",
        "--captioner",
        c.to_str().unwrap(),
        &format!("{ds}/Flicker8k_Dataset/0000.png"),
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("encoder folder"));
}

#[test]
fn train_encoder_flags_are_checked() {
    let d = tempfile::tempdir().unwrap();
    let ds = dataset(&d.path().join("shapes")).display().to_string();
    let out = d.path().join("o").display().to_string();
    // --weights names a frozen encoder.
    let o = roundtrip(
        &[
            train_args("vgg16", &ds, &out, "1"),
            vec!["--weights", "vgg16"],
        ]
        .concat(),
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--weights"));
    // --encoder-config needs --train-encoder.
    let o = roundtrip(&[
        "train",
        "--encoder",
        "vgg16",
        "--encoder-config",
        "tiny",
        "--dataset",
        &ds,
        "--out",
        &out,
    ]);
    assert_eq!(o.status.code(), Some(2));
    // A geometry that is neither a name nor a file, and a bad geometry file.
    let mut args = train_args("vgg16", &ds, &out, "1");
    let i = args.iter().position(|&x| x == "tiny").unwrap();
    args[i] = "no-such-geometry";
    let o = roundtrip(&args);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--encoder-config"));
    let bad = d.path().join("bad.json");
    std::fs::write(&bad, r#"{"stages": [[8]], "fc_dim": 16, "image_size": 33}"#).unwrap();
    let bad_s = bad.display().to_string();
    args[i] = &bad_s;
    let o = roundtrip(&args);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("image_size"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}
