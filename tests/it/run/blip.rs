//! `run --preset real-blip` and BLIP captioners in a run: with an empty hub cache the run lists
//! what it needs (CLIP and BLIP-large, one download command); with the tiny BLIP fixture placed in
//! a hub cache as `blip-large` (its pinned revision) the round trip runs offline, captions every
//! image and photo with BLIP as the captioner itself does, records the model and its decoding, and
//! a second run reuses everything while another beam recaptions without redrawing.

use std::path::{Path, PathBuf};

use candle_core::Device;
use roundtrip::captioner::blip::{BlipCaptioner, BlipDecoding};
use roundtrip::hub::{Locator, ModelRef};
use serde_json::Value;

use super::{count, read_json, Report, CLIP, PROMPTS};
use crate::common::{fails_with, ok};

const LARGE_REPO: &str = "Salesforce/blip-image-captioning-large";

/// A hub cache holding the tiny BLIP fixture as blip-large at its pinned revision.
fn cache_with_tiny_blip(root: &Path) -> PathBuf {
    let preset = roundtrip::hub::preset("blip-large").unwrap();
    let rev = preset.revision.clone().unwrap();
    let snap = root
        .join(format!("models--{}", LARGE_REPO.replace('/', "--")))
        .join("snapshots")
        .join(&rev);
    std::fs::create_dir_all(&snap).unwrap();
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/blip_tiny");
    for f in &preset.files {
        let from = fixtures.join(f);
        if from.is_file() {
            std::fs::copy(from, snap.join(f)).unwrap();
        } else {
            // tokenizer_config.json: the published one does not ask for a cleanup.
            std::fs::write(snap.join(f), r#"{"clean_up_tokenization_spaces": false}"#).unwrap();
        }
    }
    root.to_path_buf()
}

fn run_blip(cache: &Path, out: &Path, extra: &[&str]) -> std::process::Output {
    let mut args = vec![
        "run",
        PROMPTS,
        "--preset",
        "real-blip",
        "--out",
        out.to_str().unwrap(),
        "--clip",
        CLIP,
        "--seed",
        "3",
        "--steps",
        "4",
        "--size",
        "32",
        "--layers",
        "2",
        "--hidden",
        "16",
        "--cutouts",
        "2",
        "--save-every",
        "0",
        "--quiet",
    ];
    args.extend(extra);
    crate::common::bin()
        .args(&args)
        .env("HF_HUB_OFFLINE", "1")
        .env("HF_HUB_CACHE", cache)
        .output()
        .unwrap()
}

#[test]
fn real_blip_preset_lists_its_hub_models_then_runs_offline_with_blip_captions() {
    let tmp = tempfile::tempdir().unwrap();
    let empty = tmp.path().join("empty-cache");
    std::fs::create_dir_all(&empty).unwrap();
    // Nothing cached: CLIP (the preset's) and BLIP-large are listed with one download command.
    let o = crate::common::bin()
        .args([
            "run",
            PROMPTS,
            "--preset",
            "real-blip",
            "--out",
            tmp.path().join("nothing").to_str().unwrap(),
        ])
        .env("HF_HUB_OFFLINE", "1")
        .env("HF_HUB_CACHE", &empty)
        .output()
        .unwrap();
    fails_with(
        &o,
        &[
            "--captioners blip blip-large",
            LARGE_REPO,
            "`roundtrip models download clip-vit-b32 blip-large`",
        ],
    );
    assert!(!tmp.path().join("nothing").exists());

    let cache = cache_with_tiny_blip(&tmp.path().join("hub"));
    let out = tmp.path().join("run");
    let stdout = ok(&run_blip(&cache, &out, &[]));
    assert_eq!(count(&stdout, "computed"), 4, "{stdout}");
    let report: Report =
        serde_json::from_slice(&std::fs::read(out.join("report.json")).unwrap()).unwrap();
    let locator = Locator::offline(&cache);
    let model = locator
        .open(&ModelRef::parse("blip-large").unwrap())
        .unwrap();
    let blip = BlipCaptioner::load(&model, BlipDecoding::default(), &Device::Cpu).unwrap();
    let mut photos = 0;
    for p in &report.phrases {
        let c = &p.captions["blip"];
        let img = roundtrip::imageops::open_rgb(&out.join(&p.image)).unwrap();
        let want = blip.caption_rgb(&[img], 1, &Device::Cpu).unwrap();
        assert_eq!(c.generated.caption, want[0], "{}", p.phrase);
        if let (Some(photo), Some(cap)) = (&p.photo, &c.photo) {
            let img = roundtrip::imageops::open_rgb(&out.join(&photo.file)).unwrap();
            let want = blip.caption_rgb(&[img], 1, &Device::Cpu).unwrap();
            assert_eq!(cap.caption, want[0]);
            photos += 1;
        }
    }
    assert_eq!(photos, 2);
    let run_json: Value = read_json(&out.join("run.json"));
    let rec = &run_json["models"]["captioner:blip"];
    assert_eq!(rec["kind"], "blip", "{run_json}");
    assert_eq!(rec["reference"], "blip-large");
    assert_eq!(rec["model"]["repo"], LARGE_REPO);
    assert_eq!(rec["max_length"], 20);
    assert!(rec["prompt"].is_null());
    assert_eq!(
        rec["model"]["commit"].as_str(),
        roundtrip::hub::preset("blip-large")
            .unwrap()
            .revision
            .as_deref()
    );

    // Everything is reused; another beam recaptions every image without drawing any again.
    let again = ok(&run_blip(&cache, &out, &[]));
    assert_eq!(count(&again, "reused"), 4, "{again}");
    let beam = ok(&run_blip(&cache, &out, &["--beam", "3"]));
    assert_eq!(
        (count(&beam, "computed"), count(&beam, "updated")),
        (0, 4),
        "{beam}"
    );

    // --prompt / --max-length: recorded, recaptioned as the captioner itself does with them.
    let prompted = [
        "--beam",
        "3",
        "--prompt",
        "a picture of",
        "--max-length",
        "12",
    ];
    let p = ok(&run_blip(&cache, &out, &prompted));
    assert_eq!((count(&p, "computed"), count(&p, "updated")), (0, 4), "{p}");
    let run_json: Value = read_json(&out.join("run.json"));
    let rec = &run_json["models"]["captioner:blip"];
    assert_eq!(
        (&rec["prompt"], &rec["max_length"]),
        (&Value::from("a picture of"), &Value::from(12))
    );
    assert_eq!(
        run_json["settings"]["blip"]["prompt"], "a picture of",
        "{run_json}"
    );
    let decoding = BlipDecoding {
        prompt: Some("a picture of".into()),
        max_length: 12,
    };
    let blip = BlipCaptioner::load(&model, decoding, &Device::Cpu).unwrap();
    let report: Report =
        serde_json::from_slice(&std::fs::read(out.join("report.json")).unwrap()).unwrap();
    for p in &report.phrases {
        let img = roundtrip::imageops::open_rgb(&out.join(&p.image)).unwrap();
        let want = blip.caption_rgb(&[img], 3, &Device::Cpu).unwrap();
        assert_eq!(
            p.captions["blip"].generated.caption, want[0],
            "{}",
            p.phrase
        );
        assert!(want[0].starts_with("a picture of"), "{}", want[0]);
    }
    let again = ok(&run_blip(&cache, &out, &prompted));
    assert_eq!(count(&again, "reused"), 4, "{again}");

    // A prompt without any BLIP captioner is refused before anything is written.
    let none = tmp.path().join("no-blip");
    let lstm = format!("vgg16={}/models/shapes/vgg16", env!("CARGO_MANIFEST_DIR"));
    let o = run_blip(
        &cache,
        &none,
        &["--captioners", &lstm, "--prompt", "a picture of"],
    );
    fails_with(&o, &["--prompt", "none of --captioners"]);
    assert!(!none.exists());
}
