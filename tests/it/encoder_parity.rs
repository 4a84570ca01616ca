//! Parity of the two frozen captioner encoders (VGG16, Xception) with timm on the tiny
//! random-weight fixtures of tests/fixtures/{vgg16,xception}_tiny/ (made by
//! tests/fixtures/make_encoder_fixtures.py), PIL-exact preprocessing, batch consistency, the tensor
//! names and shapes the full-size models request against timm's full checkpoints
//! (tests/fixtures/*_full_names.json), and loading errors.
//!
//! Tolerance: max |ours - timm| / max |timm| per tensor <= 1e-4 (float32 timm is ~1e-6 from
//! float64 on these fixtures, see their config.json).

use crate::common::{flat, rel};

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, IndexOp, Tensor};
use candle_nn::{VarBuilder, VarMap};
use roundtrip::hub::{Locator, ModelRef};
use roundtrip::imageops::resize::pil_resize_nearest;
use roundtrip::models::vgg16::{self, Vgg16};
use roundtrip::models::xception::{self, Xception};

const TOL: f64 = 1e-4;

fn fixtures(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn reference(dir: &str) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(fixtures(dir).join("reference.safetensors"), &Device::Cpu)
        .expect("reference.safetensors loads")
}

/// Loads an encoder from a folder through the model locator, as the CLI does.
fn load_from<T>(
    dir: &Path,
    load: impl Fn(&roundtrip::hub::Model, &Device) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let cache = tempfile::tempdir().unwrap();
    let loc = Locator::offline(cache.path());
    let m = loc.open(&ModelRef::parse(dir.to_str().unwrap()).unwrap())?;
    load(&m, &Device::Cpu)
}

fn vgg_tiny() -> Vgg16 {
    load_from(&fixtures("vgg16_tiny"), Vgg16::load).unwrap()
}

fn xception_tiny() -> Xception {
    load_from(&fixtures("xception_tiny"), Xception::load).unwrap()
}

fn check(name: &str, ours: &Tensor, reference: &Tensor, tol: f64) {
    let r = rel(name, ours, reference);
    assert!(r <= tol, "{name}: max relative error {r:e} > {tol:e}");
}

#[test]
fn vgg16_tiny_matches_timm() {
    let model = vgg_tiny();
    assert_eq!((model.feature_dim(), model.input_size()), (32, 96));
    let r = reference("vgg16_tiny");
    let x = &r["pixel_values"];
    check(
        "vgg16 feature_map",
        &model.forward_features(x).unwrap(),
        &r["feature_map"],
        TOL,
    );
    check(
        "vgg16 features",
        &model.forward(x).unwrap(),
        &r["features"],
        TOL,
    );
    // Against the float64 model too (our error is of the order of float32 timm's).
    check(
        "vgg16 features vs f64",
        &model.forward(x).unwrap(),
        &r["features_f64"],
        TOL,
    );
}

#[test]
fn xception_tiny_matches_timm() {
    let model = xception_tiny();
    assert_eq!((model.feature_dim(), model.input_size()), (64, 71));
    let r = reference("xception_tiny");
    let x = &r["pixel_values"];
    check(
        "xception feature_map",
        &model.forward_features(x).unwrap(),
        &r["feature_map"],
        TOL,
    );
    check(
        "xception features",
        &model.forward(x).unwrap(),
        &r["features"],
        TOL,
    );
    check(
        "xception features vs f64",
        &model.forward(x).unwrap(),
        &r["features_f64"],
        TOL,
    );
}

/// A batch of N gives the features of N single images.
fn batch_equals_singles(name: &str, forward: impl Fn(&Tensor) -> Tensor, x: &Tensor) {
    let batch = forward(x);
    let n = x.dim(0).unwrap();
    let singles: Vec<Tensor> = (0..n).map(|i| forward(&x.i(i..i + 1).unwrap())).collect();
    let singles = Tensor::cat(&singles, 0).unwrap();
    check(name, &singles, &batch, 1e-6);
}

#[test]
fn vgg16_batch_equals_single_images() {
    let model = vgg_tiny();
    let r = reference("vgg16_tiny");
    batch_equals_singles(
        "vgg16 batch vs singles",
        |x| model.forward(x).unwrap(),
        &r["pixel_values"],
    );
}

#[test]
fn xception_batch_equals_single_images() {
    let model = xception_tiny();
    let r = reference("xception_tiny");
    batch_equals_singles(
        "xception batch vs singles",
        |x| model.forward(x).unwrap(),
        &r["pixel_values"],
    );
}

#[test]
fn wrong_input_size_is_an_error() {
    let model = vgg_tiny();
    let x = Tensor::zeros((1, 3, 64, 64), DType::F32, &Device::Cpu).unwrap();
    let e = model.forward(&x).unwrap_err().to_string();
    assert!(e.contains("[B, 3, 96, 96]"), "{e}");
    let model = xception_tiny();
    let e = model.forward(&x).unwrap_err().to_string();
    assert!(e.contains("[B, 3, 71, 71]"), "{e}");
}

// ------------------------------------------------------------------------------------------
// Preprocessing

fn raw_png(dir: &str) -> image::RgbImage {
    image::open(fixtures(dir).join("raw_RGB.png"))
        .unwrap()
        .to_rgb8()
}

/// [H, W, 3] u8 tensor -> image.
fn u8_image(t: &Tensor) -> image::RgbImage {
    let (h, w, c) = t.dims3().unwrap();
    assert_eq!(c, 3);
    let v: Vec<u8> = t.flatten_all().unwrap().to_vec1().unwrap();
    image::RgbImage::from_raw(w as u32, h as u32, v).unwrap()
}

#[test]
fn nearest_resize_is_pils() {
    for dir in ["vgg16_tiny", "xception_tiny"] {
        let raw = raw_png(dir);
        let r = reference(dir);
        assert_eq!(raw, u8_image(&r["raw_u8"]), "raw_RGB.png decodes as in PIL");
        let mut sizes = Vec::new();
        for (name, t) in &r {
            let Some(n) = name.strip_prefix("resized_u8_") else {
                continue;
            };
            let n: usize = n.parse().unwrap();
            let ours = pil_resize_nearest(&raw, n, n);
            assert!(
                ours == u8_image(t),
                "{dir}: nearest resize to {n}x{n} differs from PIL"
            );
            sizes.push(n);
        }
        sizes.sort();
        eprintln!("{dir}: PIL nearest resize identical at {sizes:?}");
        assert!(sizes.len() >= 3);
        // An image already S x S is used as is.
        let square = u8_image(&r["square_u8"]);
        let s = square.width() as usize;
        assert!(pil_resize_nearest(&square, s, s) == square);
    }
}

/// `lut[c][v]` applied to an [H, W, 3] u8 image -> [3, H, W].
fn apply_lut(lut: &Tensor, img: &Tensor) -> Tensor {
    let lut: Vec<Vec<f32>> = lut.to_vec2().unwrap();
    let (h, w, _) = img.dims3().unwrap();
    let px: Vec<u8> = img.flatten_all().unwrap().to_vec1().unwrap();
    let out: Vec<f32> = (0..3)
        .flat_map(|c| {
            let lut = &lut[c];
            px.chunks_exact(3)
                .map(move |p| lut[p[c] as usize])
                .collect::<Vec<_>>()
        })
        .collect();
    Tensor::from_vec(out, (3, h, w), &Device::Cpu).unwrap()
}

#[test]
fn preprocessing_matches_python() {
    let dev = Device::Cpu;
    type Pre = fn(&image::RgbImage, usize, &Device) -> candle_core::Result<Tensor>;
    type Full = fn(&image::RgbImage, &Device) -> candle_core::Result<Tensor>;
    let cases: [(&str, Pre, Full, usize, usize); 2] = [
        (
            "vgg16_tiny",
            vgg16::preprocess_image,
            Vgg16::preprocess,
            96,
            224,
        ),
        (
            "xception_tiny",
            xception::preprocess_image,
            Xception::preprocess,
            71,
            299,
        ),
    ];
    for (dir, pre, full, tiny, full_size) in cases {
        let r = reference(dir);
        let raw = raw_png(dir);
        // The whole pipeline at the tiny size, against PIL + torch.
        check(
            &format!("{dir} preprocess"),
            &pre(&raw, tiny, &dev).unwrap(),
            &r["preprocessed"],
            1e-6,
        );
        // The normalisation of every byte value.
        let bytes: Vec<u8> = (0..=255).collect();
        let ramp = image::RgbImage::from_fn(256, 1, |x, _| image::Rgb([bytes[x as usize]; 3]));
        let ours = pre(&ramp, 256, &dev).unwrap(); // resizing to 256 x 256 repeats the row
        let ours = ours.i((.., 0, ..)).unwrap();
        check(&format!("{dir} normalisation lut"), &ours, &r["lut"], 1e-7);
        // The associated fn at the full size = nearest resize to it + the normalisation.
        let expect = apply_lut(&r["lut"], &r[&format!("resized_u8_{full_size}")]);
        check(
            &format!("{dir} preprocess at {full_size}"),
            &full(&raw, &dev).unwrap(),
            &expect,
            1e-7,
        );
    }
}

// ------------------------------------------------------------------------------------------
// Full-size tensor names and shapes

/// Every tensor the model requests, with its shape.
fn requested(
    build: impl Fn(VarBuilder) -> candle_core::Result<()>,
) -> BTreeMap<String, Vec<usize>> {
    let varmap = VarMap::new();
    build(VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu)).unwrap();
    let data = varmap.data().lock().unwrap();
    data.iter()
        .map(|(k, v)| (k.clone(), v.dims().to_vec()))
        .collect()
}

fn timm_names(file: &str) -> BTreeMap<String, Vec<usize>> {
    let text = std::fs::read_to_string(fixtures(file)).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    serde_json::from_value(v["tensors"].clone()).unwrap()
}

/// The model requests exactly timm's tensors with timm's shapes, except the ones `unused` accepts
/// (the classifier head, BatchNorm counters), which it must not request.
fn check_names(
    label: &str,
    ours: &BTreeMap<String, Vec<usize>>,
    timm: &BTreeMap<String, Vec<usize>>,
    unused: impl Fn(&str) -> bool,
) {
    for (name, shape) in ours {
        let t = timm
            .get(name)
            .unwrap_or_else(|| panic!("{label}: requests `{name}`, which timm's checkpoint lacks"));
        assert_eq!(shape, t, "{label}: shape of `{name}`");
        assert!(!unused(name), "{label}: `{name}` should not be needed");
    }
    let missing: Vec<&String> = timm
        .keys()
        .filter(|n| !ours.contains_key(*n) && !unused(n))
        .collect();
    assert!(
        missing.is_empty(),
        "{label}: timm tensors never requested: {missing:?}"
    );
    let skipped = timm.keys().filter(|n| unused(n)).count();
    eprintln!(
        "{label}: {} tensors requested, all in timm's checkpoint with its shapes; {skipped} of \
         timm's {} not needed",
        ours.len(),
        timm.len()
    );
}

#[test]
fn full_vgg16_requests_timms_tensors() {
    let cfg = vgg16::Config::vgg16();
    let ours = requested(|vb| Vgg16::new(vb, &cfg).map(|_| ()));
    check_names(
        "vgg16.tv_in1k",
        &ours,
        &timm_names("vgg16_full_names.json"),
        |n| n.starts_with("head."),
    );
}

#[test]
fn full_xception_requests_timms_tensors() {
    let cfg = xception::Config::xception();
    let ours = requested(|vb| Xception::new(vb, &cfg).map(|_| ()));
    check_names(
        "legacy_xception.tf_in1k",
        &ours,
        &timm_names("xception_full_names.json"),
        |n| n.starts_with("fc.") || n.ends_with(".num_batches_tracked"),
    );
}

// ------------------------------------------------------------------------------------------
// Loading

/// A folder with the fixture's config.json (or `config`, if given) and its weights changed by
/// `edit`; returns the load error of `load`, checked to name the weights file and to be an input
/// error.
fn load_edited<T>(
    dir: &str,
    config: Option<&str>,
    edit: impl FnOnce(&mut HashMap<String, Tensor>),
    load: impl Fn(&roundtrip::hub::Model, &Device) -> anyhow::Result<T>,
) -> String {
    let tmp = tempfile::tempdir().unwrap();
    let mut tensors =
        candle_core::safetensors::load(fixtures(dir).join("model.safetensors"), &Device::Cpu)
            .unwrap();
    edit(&mut tensors);
    let weights = tmp.path().join("model.safetensors");
    candle_core::safetensors::save(&tensors, &weights).unwrap();
    match config {
        Some(text) => std::fs::write(tmp.path().join("config.json"), text).unwrap(),
        None => {
            std::fs::copy(
                fixtures(dir).join("config.json"),
                tmp.path().join("config.json"),
            )
            .unwrap();
        }
    }
    let e = match load_from(tmp.path(), load) {
        Ok(_) => panic!("loading should fail"),
        Err(e) => e,
    };
    let msg = format!("{e:#}");
    eprintln!("{msg}");
    assert_eq!(roundtrip::error::exit_code(&e), 2, "an input error: {msg}");
    msg
}

#[test]
fn missing_tensor_is_named_with_the_file() {
    let name = "block7.rep.5.running_var";
    let msg = load_edited(
        "xception_tiny",
        None,
        |t| {
            t.remove(name).unwrap();
        },
        Xception::load,
    );
    assert!(
        msg.contains(name) && msg.contains("model.safetensors"),
        "{msg}"
    );
    let name = "pre_logits.fc2.bias";
    let msg = load_edited(
        "vgg16_tiny",
        None,
        |t| {
            t.remove(name).unwrap();
        },
        Vgg16::load,
    );
    assert!(
        msg.contains(name) && msg.contains("model.safetensors"),
        "{msg}"
    );
}

#[test]
fn misshaped_tensor_is_named_with_both_shapes() {
    let name = "pre_logits.fc1.weight";
    let msg = load_edited(
        "vgg16_tiny",
        None,
        |t| {
            t.insert(
                name.into(),
                Tensor::zeros((32, 24, 7, 7), DType::F32, &Device::Cpu).unwrap(),
            );
        },
        Vgg16::load,
    );
    assert!(
        msg.contains(name) && msg.contains("[32, 24, 3, 3]") && msg.contains("[32, 24, 7, 7]"),
        "{msg}"
    );
    let name = "block2.skip.weight";
    let msg = load_edited(
        "xception_tiny",
        None,
        |t| {
            t.insert(
                name.into(),
                Tensor::zeros((32, 24, 3, 3), DType::F32, &Device::Cpu).unwrap(),
            );
        },
        Xception::load,
    );
    assert!(msg.contains(name), "{msg}");
}

#[test]
fn the_classifier_head_is_optional() {
    let dir = tempfile::tempdir().unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(fixtures("vgg16_tiny").join(f), dir.path().join(f)).unwrap();
    }
    let mut t =
        candle_core::safetensors::load(dir.path().join("model.safetensors"), &Device::Cpu).unwrap();
    t.remove("head.fc.weight").unwrap();
    t.remove("head.fc.bias").unwrap();
    candle_core::safetensors::save(&t, dir.path().join("model.safetensors")).unwrap();
    let model = load_from(dir.path(), Vgg16::load).unwrap();
    let r = reference("vgg16_tiny");
    check(
        "vgg16 features without head",
        &model.forward(&r["pixel_values"]).unwrap(),
        &r["features"],
        TOL,
    );
}

/// timm's hub config.json (its pretrained_cfg, no `roundtrip` key) means the full geometry: the
/// tiny weights then fail on the first tensor, named with both shapes.
#[test]
fn a_timm_config_means_the_full_geometry() {
    let timm_cfg = r#"{"architecture": "vgg16", "num_classes": 1000, "num_features": 512,
      "pretrained_cfg": {"tag": "tv_in1k", "input_size": [3, 224, 224], "interpolation": "bilinear",
      "crop_pct": 0.875, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
      "num_classes": 1000, "pool_size": [7, 7], "first_conv": "features.0", "classifier": "head.fc"}}"#;
    let msg = load_edited("vgg16_tiny", Some(timm_cfg), |_| {}, Vgg16::load);
    assert!(
        msg.contains("features.0.weight") && msg.contains("[64, 3, 3, 3]"),
        "{msg}"
    );
    let timm_cfg = r#"{"architecture": "legacy_xception", "num_classes": 1000,
      "pretrained_cfg": {"input_size": [3, 299, 299], "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}}"#;
    let msg = load_edited("xception_tiny", Some(timm_cfg), |_| {}, Xception::load);
    assert!(
        msg.contains("conv1.weight") && msg.contains("[32, 3, 3, 3]"),
        "{msg}"
    );
}

#[test]
fn another_architecture_is_refused() {
    let msg = load_edited(
        "vgg16_tiny",
        Some(r#"{"architecture": "vgg16_bn"}"#),
        |_| {},
        Vgg16::load,
    );
    assert!(
        msg.contains("vgg16_bn") && msg.contains("config.json"),
        "{msg}"
    );
    let msg = load_edited(
        "xception_tiny",
        Some(r#"{"architecture": "xception65"}"#),
        |_| {},
        Xception::load,
    );
    assert!(msg.contains("xception65"), "{msg}");
}

#[test]
fn bad_roundtrip_config_is_named() {
    let msg = load_edited(
        "vgg16_tiny",
        Some(
            r#"{"architecture": "vgg16", "roundtrip": {"stages": [[8]], "fc_dim": 4, "image_size": 33}}"#,
        ),
        |_| {},
        Vgg16::load,
    );
    assert!(
        msg.contains("roundtrip") && msg.contains("image_size"),
        "{msg}"
    );
    let msg = load_edited(
        "xception_tiny",
        Some(r#"{"roundtrip": {"stem": [8, 16], "colour": 3}}"#),
        |_| {},
        Xception::load,
    );
    assert!(msg.contains("roundtrip") && msg.contains("colour"), "{msg}");
}

#[test]
fn a_folder_without_config_json_is_the_full_geometry() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        fixtures("xception_tiny").join("model.safetensors"),
        dir.path().join("model.safetensors"),
    )
    .unwrap();
    let e = load_from(dir.path(), Xception::load).err().unwrap();
    let msg = format!("{e:#}");
    assert!(
        msg.contains("conv1.weight") && msg.contains("[32, 3, 3, 3]"),
        "{msg}"
    );
    let e = load_from(&fixtures("clip_tiny"), Vgg16::load)
        .err()
        .unwrap();
    let msg = format!("{e:#}");
    assert!(msg.contains("features.0.weight"), "{msg}");
}

#[test]
fn seeded_random_weights_build_the_full_models() {
    // Cheap geometry check of the full models' forward through the random-weight path used by
    // the benchmark (one image each; the features are non-negative and finite).
    let dev = Device::Cpu;
    let cfg = xception::Config::xception();
    let w = roundtrip::weights::seeded_random_weights(|vb| Xception::new(vb, &cfg), 1, 0.02, &dev)
        .unwrap();
    let model = Xception::new(VarBuilder::from_tensors(w, DType::F32, &dev), &cfg).unwrap();
    let x = Tensor::zeros((1, 3, 299, 299), DType::F32, &dev).unwrap();
    let f = model.forward(&x).unwrap();
    assert_eq!(f.dims(), &[1, 2048]);
    let v = flat(&f);
    assert!(v.iter().all(|x| x.is_finite() && *x >= 0.0));
}

/// The encoders are frozen feature extractors: their kernels have no backward, and a gradient
/// that reaches them is an error (not a silently missing input gradient).
#[test]
fn backward_through_the_encoders_is_an_error() {
    let r = reference("vgg16_tiny");
    let x = candle_core::Var::from_tensor(&r["pixel_values"]).unwrap();
    let f = vgg_tiny().forward(x.as_tensor()).unwrap();
    match f.sum_all().unwrap().backward() {
        Ok(_) => panic!("backward through VGG16 should fail"),
        Err(e) => assert!(e.to_string().contains("backward"), "{e}"),
    }
    let r = reference("xception_tiny");
    let x = candle_core::Var::from_tensor(&r["pixel_values"]).unwrap();
    let f = xception_tiny().forward(x.as_tensor()).unwrap();
    assert!(f.sum_all().unwrap().backward().is_err());
}

/// The portable path, what CUDA and Metal run (candle's conv2d and max_pool2d, shifted
/// multiply-adds for the depthwise convolutions, no Winograd), matches timm as the CPU kernels do.
#[test]
fn portable_path_matches_timm() {
    roundtrip::kernels::with_portable_ops(|| {
        vgg16_tiny_matches_timm();
        xception_tiny_matches_timm();
    });
}
