//! Captioner training end to end on a tiny synthetic dataset in the original Flickr8k layout
//! (coloured shapes with captions), with the tiny random-weight VGG16 fixture as the frozen
//! encoder: it learns to beat a caption-blind baseline, resumes after a kill to the same model,
//! reuses cached features, and rejects malformed datasets.

use std::path::Path;

use roundtrip::metrics::bleu::{corpus_bleu, Smoothing};
use roundtrip::text::normalize;
use serde::Deserialize;

use crate::common::{ok, roundtrip};
use crate::common::{toy_dataset as dataset, COLOURS, SHAPES};

const ENCODER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/vgg16_tiny");
fn train_args<'a>(ds: &'a str, out: &'a str, cache: &'a str, epochs: &'a str) -> Vec<&'a str> {
    let mut args = vec![
        "train",
        "--encoder",
        "vgg16",
        "--weights",
        ENCODER,
        "--dataset",
        ds,
        "--out",
        out,
        "--cache",
        cache,
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
    coco_bleu4: f64,
    cider_d: f64,
    rouge_l: f64,
    images: usize,
    diversity: f64,
}

#[test]
fn learns_beats_a_blind_baseline_and_reuses_features() {
    let d = tempfile::tempdir().unwrap();
    let ds = dataset(&d.path().join("shapes")).display().to_string();
    let cache = d.path().join("cache").display().to_string();
    let out = d.path().join("cap").display().to_string();
    let first = ok(&roundtrip(&train_args(&ds, &out, &cache, "12")));
    assert!(
        first.contains("features computed 56\tfeatures cached 0"),
        "{first}"
    );
    for f in [
        "config.json",
        "vocab.json",
        "model.safetensors",
        "checkpoint.safetensors",
        "train_log.jsonl",
    ] {
        assert!(Path::new(&out).join(f).is_file(), "{f} missing");
    }

    let e: Eval = serde_json::from_str(&ok(&roundtrip(&[
        "eval",
        "--captioner",
        &out,
        "--dataset",
        &ds,
        "--json",
        "--cache",
        &cache,
        "--quiet",
    ])))
    .unwrap();
    assert_eq!(e.images, 8);
    // Caption-blind baseline: the same (most frequent training) caption for every test image.
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
    let base = corpus_bleu(&blind, &refs, Smoothing::None);
    assert!(
        e.bleu1 > base[0] + 0.2,
        "BLEU-1 {} vs blind {}",
        e.bleu1,
        base[0]
    );
    assert!(e.bleu4 > 0.3, "BLEU-4 {}", e.bleu4);
    assert!(e.diversity > 0.25, "diversity {}", e.diversity);
    // The COCO figures against the same references beat the blind captions' too.
    let blind_coco =
        roundtrip::metrics::scores::score(&blind, &refs, &roundtrip::metrics::scores::Metric::ALL)
            .corpus;
    assert!(e.coco_bleu4 > blind_coco.coco_bleu.unwrap()[3] + 0.2);
    assert!(
        e.cider_d > blind_coco.cider_d.unwrap() + 0.5,
        "CIDEr-D {}",
        e.cider_d
    );
    assert!(
        e.rouge_l > blind_coco.rouge_l.unwrap() + 0.1,
        "ROUGE-L {}",
        e.rouge_l
    );

    // A second training of the same encoder on the same images reads every feature from the cache.
    let out2 = d.path().join("cap2").display().to_string();
    let second = ok(&roundtrip(&train_args(&ds, &out2, &cache, "1")));
    assert!(
        second.contains("features computed 0\tfeatures cached 56"),
        "{second}"
    );

    let caps = ok(&roundtrip(&[
        "caption",
        "--captioner",
        &out,
        &format!("{ds}/Flicker8k_Dataset/0000.png"),
    ]));
    assert!(caps.contains("0000.png\t"), "{caps}");
}

#[test]
fn a_killed_training_resumes_to_the_same_model() {
    let d = tempfile::tempdir().unwrap();
    let ds = dataset(&d.path().join("shapes")).display().to_string();
    let cache = d.path().join("cache").display().to_string();
    let straight = d.path().join("straight").display().to_string();
    ok(&roundtrip(&train_args(&ds, &straight, &cache, "20")));

    let killed = d.path().join("killed");
    let killed_s = killed.display().to_string();
    crate::common::kill_at_first_checkpoint(
        &train_args(&ds, &killed_s, &cache, "20"),
        &killed.join("checkpoint.safetensors"),
    );
    let log = |dir: &Path| std::fs::read_to_string(dir.join("train_log.jsonl")).unwrap_or_default();
    let done = log(&killed).lines().count();
    assert!(
        done < 20,
        "the run was not interrupted ({done} epochs done)"
    );
    ok(&roundtrip(
        &[train_args(&ds, &killed_s, &cache, "20"), vec!["--resume"]].concat(),
    ));
    let bytes = |dir: &str, f: &str| std::fs::read(Path::new(dir).join(f)).unwrap();
    for f in ["model.safetensors", "checkpoint.safetensors"] {
        assert!(
            bytes(&straight, f) == bytes(&killed_s, f),
            "{f} differs from the uninterrupted run's"
        );
    }
    assert_eq!(log(&killed).lines().count(), 20);

    // Training into a finished folder without --resume is refused.
    let o = roundtrip(&train_args(&ds, &straight, &cache, "20"));
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--resume"));
}

#[test]
fn malformed_datasets_and_captioner_folders_fail_clearly() {
    let d = tempfile::tempdir().unwrap();
    let o = roundtrip(&[
        "train",
        "--encoder",
        "vgg16",
        "--weights",
        ENCODER,
        "--dataset",
        d.path().to_str().unwrap(),
        "--out",
        d.path().join("o").to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("not a Flickr8k-style dataset"));
    let o = roundtrip(&[
        "caption",
        "--captioner",
        d.path().to_str().unwrap(),
        "x.png",
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("not a captioner folder"));
}
