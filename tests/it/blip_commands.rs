//! BLIP through the commands: `caption`, `eval` (zero-shot on a Flickr8k-layout dataset) and
//! `features --encoder blip`, with the tiny fixture of tests/fixtures/blip_tiny/ as a model folder
//! in transformers' layout; the captions are transformers' (tests/it/blip_parity.rs checks the
//! same ids in-process). `run` with BLIP captioners is in tests/it/run/blip.rs.

use std::path::{Path, PathBuf};

use candle_core::Device;
use roundtrip::captioner::blip::{BlipCaptioner, BlipDecoding};
use roundtrip::hub::{Locator, ModelRef};
use serde_json::Value;

use crate::common::{fails_with, ok, roundtrip};

const BLIP: &str = "tests/fixtures/blip_tiny";

fn fixture(name: &str) -> String {
    format!("{BLIP}/{name}")
}

fn meta() -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixture("meta.json")).unwrap()).unwrap()
}

fn texts(key: &str) -> Vec<String> {
    meta()["texts"][key]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap().to_owned())
        .collect()
}

const IMAGES: [&str; 3] = ["image_a.png", "image_b.png", "image_c.png"];

#[test]
fn blip_caption_prints_transformers_captions_greedy_beam_and_prompted() {
    let images: Vec<String> = IMAGES.iter().map(|i| fixture(i)).collect();
    for (beam, key) in [("1", "greedy"), ("3", "beam3")] {
        let mut args = vec!["caption", "--captioner", BLIP, "--beam", beam];
        args.extend(images.iter().map(String::as_str));
        let out = ok(&roundtrip(&args));
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 3, "{out}");
        for ((line, img), want) in lines.iter().zip(&images).zip(texts(key)) {
            assert_eq!(*line, format!("{img}\t{want}"));
        }
    }
    let mut args = vec![
        "caption",
        "--captioner",
        BLIP,
        "--prompt",
        "a picture of",
        "--json",
    ];
    args.extend(images.iter().map(String::as_str));
    let v: Value = serde_json::from_str(&ok(&roundtrip(&args))).unwrap();
    assert_eq!(v["kind"], "blip");
    assert_eq!(v["prompt"], "a picture of");
    assert_eq!(v["max_length"], 20);
    let got: Vec<&str> = v["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["caption"].as_str().unwrap())
        .collect();
    assert_eq!(got, texts("greedy_prompt"));
    // BLIP's settings are refused for an LSTM captioner, and a beam too wide for the vocabulary.
    fails_with(
        &roundtrip(&[
            "caption",
            "--captioner",
            "models/shapes/vgg16 (embedded)",
            "--prompt",
            "a",
            &images[0],
        ]),
        &["--prompt", "BLIP", "LSTM"],
    );
    fails_with(
        &roundtrip(&["caption", "--captioner", BLIP, "--beam", "40", &images[0]]),
        &["--beam 40", "vocabulary of 66"],
    );
    fails_with(
        &roundtrip(&[
            "caption",
            "--captioner",
            BLIP,
            "--max-length",
            "1",
            &images[0],
        ]),
        &["--max-length 1"],
    );
}

#[test]
fn blip_eval_scores_zero_shot_on_a_flickr8k_layout_dataset() {
    let tmp = tempfile::tempdir().unwrap();
    let ds = crate::common::toy_dataset(&tmp.path().join("toy"));
    let out = ok(&roundtrip(&[
        "eval",
        "--captioner",
        BLIP,
        "--dataset",
        ds.to_str().unwrap(),
        "--beam",
        "2",
        "--json",
        "--quiet",
    ]));
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["kind"], "blip");
    assert_eq!(v["beam"], 2);
    let n = v["images"].as_u64().unwrap();
    assert!(n > 0);
    assert_eq!(v["features"]["computed"], n);
    assert_eq!(v["encoder"]["max_length"], 20);
    for k in ["bleu1", "bleu2", "bleu3", "bleu4"] {
        let b = v[k].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&b), "{k} {b}");
    }
    // The text form lists each image's caption, as the captioner gives it for that file.
    let text = ok(&roundtrip(&[
        "eval",
        "--captioner",
        BLIP,
        "--dataset",
        ds.to_str().unwrap(),
        "--captions",
        "--quiet",
    ]));
    let c = captioner(Path::new(BLIP));
    let first = text
        .lines()
        .find(|l| l.ends_with(".jpg") || l.contains(".jpg\t") || l.contains(".png\t"))
        .unwrap_or_else(|| panic!("no caption line in {text}"));
    let (img, caption) = first.split_once('\t').unwrap();
    let path = find_image(&ds, img);
    let want = c.caption_images(&[path], 1, &Device::Cpu).unwrap();
    assert_eq!(caption, want[0]);
}

fn find_image(ds: &Path, name: &str) -> PathBuf {
    for dir in crate::common::dirs_under(ds) {
        let p = dir.join(name);
        if p.is_file() {
            return p;
        }
    }
    panic!("{name} not under {}", ds.display())
}

fn captioner(dir: &Path) -> BlipCaptioner {
    let locator = Locator::offline(dir);
    let model = locator
        .open(&ModelRef::parse(dir.to_str().unwrap()).unwrap())
        .unwrap();
    BlipCaptioner::load(&model, BlipDecoding::default(), &Device::Cpu).unwrap()
}

#[test]
fn blip_features_are_the_pooled_vision_embeddings() {
    let (a, c) = (fixture("image_a.png"), fixture("image_c.png"));
    let out = ok(&roundtrip(&[
        "features",
        "--encoder",
        "blip",
        "--weights",
        BLIP,
        "--json",
        &a,
        &c,
    ]));
    let v: Value = serde_json::from_str(&out).unwrap();
    let items = v["items"].as_array().unwrap();
    assert_eq!(items.len(), 2);
    let imgs: Vec<image::RgbImage> = [&a, &c]
        .iter()
        .map(|p| roundtrip::imageops::open_rgb(Path::new(p)).unwrap())
        .collect();
    let want: Vec<Vec<f32>> = captioner(Path::new(BLIP))
        .image_features(&imgs, &Device::Cpu)
        .unwrap()
        .to_vec2()
        .unwrap();
    for (item, w) in items.iter().zip(want) {
        let got: Vec<f64> = item["features"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect();
        assert_eq!(got.len(), 48);
        for (g, w) in got.iter().zip(&w) {
            assert!((g - *w as f64).abs() <= 1e-6, "{g} vs {w}");
        }
    }
    assert_eq!(v["model"]["source"], "folder");
    fails_with(
        &roundtrip(&[
            "features",
            "--encoder",
            "blip",
            "--weights",
            BLIP,
            "--text",
            "a dog",
            &a,
        ]),
        &["--text needs --encoder clip"],
    );
}
