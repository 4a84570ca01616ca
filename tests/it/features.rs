//! `roundtrip features --encoder clip`: text features equal transformers' `get_text_features`
//! (tiny CLIP fixture), and the CLIPScore matrix is 2.5 * max(cos, 0) of the printed features.

use candle_core::Device;
use serde::Deserialize;

const CLIP: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/clip_tiny");

#[derive(Deserialize)]
struct Out {
    model: Model,
    items: Vec<Item>,
    clip_score: Option<Vec<Vec<f32>>>,
}

#[derive(Deserialize)]
struct Model {
    source: String,
}

#[derive(Deserialize)]
struct Item {
    input: String,
    kind: String,
    features: Vec<f32>,
}

#[derive(Deserialize)]
struct Meta {
    texts: Vec<String>,
}

fn cos(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let n = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (n(a) * n(b))
}

#[test]
fn text_features_match_transformers_and_clip_score_is_consistent() {
    let meta: Meta =
        serde_json::from_str(&std::fs::read_to_string(format!("{CLIP}/meta.json")).unwrap())
            .unwrap();
    let image = format!("{CLIP}/raw_48x40.png");
    let mut args = vec![
        "features".to_string(),
        "--weights".into(),
        CLIP.into(),
        "--json".into(),
    ];
    for t in &meta.texts {
        args.extend(["--text".to_string(), t.clone()]);
    }
    args.push(image.clone());
    let o = crate::common::bin().args(&args).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out: Out = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(out.model.source, "folder");
    let kinds: Vec<_> = out
        .items
        .iter()
        .map(|i| (i.kind.as_str(), i.input.as_str()))
        .collect();
    assert_eq!(kinds[3], ("image", image.as_str()));

    let refs =
        candle_core::safetensors::load(format!("{CLIP}/reference.safetensors"), &Device::Cpu)
            .unwrap();
    let want: Vec<Vec<f32>> = refs["text_embeds"].to_vec2().unwrap();
    for (item, w) in out.items.iter().zip(&want) {
        assert_eq!(item.kind, "text");
        let scale = w.iter().fold(0f32, |m, v| m.max(v.abs()));
        let err = item
            .features
            .iter()
            .zip(w)
            .fold(0f32, |m, (a, b)| m.max((a - b).abs()))
            / scale;
        assert!(err < 1e-4, "{}: rel err {err}", item.input);
    }
    let scores = out.clip_score.expect("both texts and images were given");
    assert_eq!((scores.len(), scores[0].len()), (1, 3));
    for (j, t) in out.items[..3].iter().enumerate() {
        let want = 2.5 * cos(&out.items[3].features, &t.features).max(0.0);
        assert!(
            (scores[0][j] - want).abs() < 1e-5,
            "{} vs {want}",
            scores[0][j]
        );
    }
}

#[test]
fn nothing_to_embed_or_a_bad_image_is_an_input_error() {
    let o = crate::common::bin()
        .args(["features", "--weights", CLIP])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    let d = tempfile::tempdir().unwrap();
    let bad = d.path().join("bad.png");
    std::fs::write(&bad, b"not a png").unwrap();
    let o = crate::common::bin()
        .args(["features", "--weights", CLIP, bad.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("bad.png"));
}

#[test]
fn vgg16_and_xception_features_equal_the_library_forward() {
    use roundtrip::captioner::encoder::{load_encoder, EncoderKind};
    let root = env!("CARGO_MANIFEST_DIR");
    let image = format!("{CLIP}/raw_48x40.png");
    for (kind, dir) in [
        (EncoderKind::Vgg16, "vgg16_tiny"),
        (EncoderKind::Xception, "xception_tiny"),
    ] {
        let weights = format!("{root}/tests/fixtures/{dir}");
        let o = crate::common::bin()
            .args([
                "features",
                "--encoder",
                kind.name(),
                "--weights",
                &weights,
                "--json",
                &image,
            ])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let out: Out = serde_json::from_slice(&o.stdout).unwrap();
        assert!(out.clip_score.is_none());
        let enc = load_encoder(
            kind,
            &weights,
            &roundtrip::hub::Locator::from_env(),
            &Device::Cpu,
        )
        .unwrap();
        let img = image::open(&image).unwrap().to_rgb8();
        let x = enc
            .encoder
            .preprocess(&img, &Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let want: Vec<f32> = enc
            .encoder
            .forward(&x)
            .unwrap()
            .squeeze(0)
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(out.items[0].features, want, "{}", kind.name());
        assert_eq!(want.len(), enc.encoder.feature_dim());
    }
}
