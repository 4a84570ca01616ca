//! Parity of the BigGAN-deep generator with pytorch-pretrained-BigGAN (and big-sleep's per-block
//! latents) on the tiny random-weight fixture of tests/fixtures/biggan_tiny/ (made by
//! tests/fixtures/make_biggan_fixtures.py; its weights are a LEGACY-format pytorch_model.bin read
//! by roundtrip's own reader): images at three truncations, gradients of a scalar of the image
//! with respect to z and the class vectors, the full-size biggan-deep-128 tensor names and shapes,
//! and loading from the weights formats a model folder may hold.
//!
//! Tolerance: max |ours - reference| / max |reference| <= 1e-4 (float32 PyTorch is 1.8e-6 from
//! float64 on this fixture).

use crate::common::rel;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, IndexOp, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use roundtrip::hub::{Locator, ModelRef};
use roundtrip::models::biggan::{BigGan, Config};

const TOL: f64 = 1e-4;

fn fixtures(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn reference() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(
        fixtures("biggan_tiny").join("reference.safetensors"),
        &Device::Cpu,
    )
    .unwrap()
}

/// Loads a BigGAN from a folder through the model locator, as the CLI will.
fn load_from(dir: &Path) -> anyhow::Result<BigGan> {
    let cache = tempfile::tempdir().unwrap();
    let loc = Locator::offline(cache.path());
    let m = loc.open(&ModelRef::parse(dir.to_str().unwrap()).unwrap())?;
    BigGan::load(&m, &Device::Cpu)
}

fn tiny() -> BigGan {
    load_from(&fixtures("biggan_tiny")).unwrap()
}

fn check(name: &str, ours: &Tensor, reference: &Tensor, tol: f64) {
    let r = rel(name, ours, reference);
    assert!(r <= tol, "{name}: max relative error {r:e} > {tol:e}");
}

fn truncations(r: &HashMap<String, Tensor>) -> Vec<f64> {
    r["truncations"].to_vec1().unwrap()
}

#[test]
fn tiny_config_is_read_from_config_json() {
    let model = tiny();
    let cfg = model.config();
    assert_eq!(
        (
            cfg.output_dim,
            cfg.z_dim,
            cfg.channel_width,
            cfg.num_classes
        ),
        (32, 12, 4, 10)
    );
    assert_eq!((cfg.attention_layer_position, cfg.n_stats), (4, 51));
    assert_eq!((model.image_size(), model.num_latents()), (32, 7));
}

#[test]
fn images_match_pytorch_pretrained_biggan() {
    let model = tiny();
    let r = reference();
    for (i, t) in truncations(&r).into_iter().enumerate() {
        let img = model.forward(&r["z"], &r["classes"], t).unwrap();
        assert_eq!(img.dims(), [2, 3, 32, 32]);
        check(
            &format!("image at truncation {t}"),
            &img,
            &r[&format!("image_{i}")],
            TOL,
        );
        if i == 1 {
            check(
                &format!("image at truncation {t} vs f64"),
                &img,
                &r["image_1_f64"],
                TOL,
            );
        }
    }
}

/// f = sum(image * w); returns (f's gradient w.r.t. z, w.r.t. classes).
fn grads(
    forward: impl Fn(&Tensor, &Tensor) -> Tensor,
    z: &Tensor,
    classes: &Tensor,
    w: &Tensor,
) -> (Tensor, Tensor) {
    let z = Var::from_tensor(z).unwrap();
    let c = Var::from_tensor(classes).unwrap();
    let img = forward(z.as_tensor(), c.as_tensor());
    let f = (img * w).unwrap().sum_all().unwrap();
    let g = f.backward().unwrap();
    (
        g.get(z.as_tensor()).unwrap().clone(),
        g.get(c.as_tensor()).unwrap().clone(),
    )
}

#[test]
fn gradients_match_pytorch() {
    let model = tiny();
    let r = reference();
    let ts = truncations(&r);
    for i in [1, 2] {
        let t = ts[i];
        let (gz, gc) = grads(
            |z, c| model.forward(z, c, t).unwrap(),
            &r["z"],
            &r["classes"],
            &r["grad_weights"],
        );
        check(
            &format!("d/dz at truncation {t}"),
            &gz,
            &r[&format!("grad_z_{i}")],
            TOL,
        );
        check(
            &format!("d/dclasses at truncation {t}"),
            &gc,
            &r[&format!("grad_classes_{i}")],
            TOL,
        );
    }
}

#[test]
fn per_block_latents_match_big_sleep() {
    let model = tiny();
    let r = reference();
    let ts = truncations(&r);
    for i in [1, 2] {
        let t = ts[i];
        let img = model
            .forward_per_block(&r["pb_z"], &r["pb_classes"], t)
            .unwrap();
        check(
            &format!("per-block image at truncation {t}"),
            &img,
            &r[&format!("pb_image_{i}")],
            TOL,
        );
        let (gz, gc) = grads(
            |z, c| model.forward_per_block(z, c, t).unwrap(),
            &r["pb_z"],
            &r["pb_classes"],
            &r["pb_grad_weights"],
        );
        check(
            &format!("per-block d/dz at truncation {t}"),
            &gz,
            &r[&format!("pb_grad_z_{i}")],
            TOL,
        );
        check(
            &format!("per-block d/dclasses at {t}"),
            &gc,
            &r[&format!("pb_grad_classes_{i}")],
            TOL,
        );
    }
}

#[test]
fn batched_per_block_latents_equal_single_images() {
    let model = tiny();
    let r = reference();
    let (z, c) = (&r["pb_z"], &r["pb_classes"]);
    let z2 = (z * -0.5).unwrap();
    let c2 = c.flip(&[0]).unwrap();
    let batch = model
        .forward_per_block(
            &Tensor::stack(&[z, &z2], 0).unwrap(),
            &Tensor::stack(&[c, &c2], 0).unwrap(),
            1.0,
        )
        .unwrap();
    let singles = Tensor::cat(
        &[
            model.forward_per_block(z, c, 1.0).unwrap(),
            model.forward_per_block(&z2, &c2, 1.0).unwrap(),
        ],
        0,
    )
    .unwrap();
    check("per-block batch vs singles", &batch, &singles, 1e-6);
}

#[test]
fn plain_api_equals_per_block_with_repeated_rows() {
    let model = tiny();
    let r = reference();
    let l = model.num_latents();
    let plain = model.forward(&r["z"], &r["classes"], 0.713).unwrap();
    for b in 0..2 {
        let z = r["z"].i(b..b + 1).unwrap().repeat((l, 1)).unwrap();
        let c = r["classes"].i(b..b + 1).unwrap().repeat((l, 1)).unwrap();
        let pb = model.forward_per_block(&z, &c, 0.713).unwrap();
        check(
            &format!("plain vs per-block, image {b}"),
            &pb,
            &plain.i(b..b + 1).unwrap(),
            1e-6,
        );
    }
}

#[test]
fn bad_inputs_are_errors() {
    let model = tiny();
    let r = reference();
    for t in [0.0, -0.5, 1.01] {
        let e = model
            .forward(&r["z"], &r["classes"], t)
            .unwrap_err()
            .to_string();
        assert!(e.contains("truncation"), "{e}");
    }
    let e = model
        .forward(&r["classes"], &r["z"], 1.0)
        .unwrap_err()
        .to_string();
    assert!(e.contains("[B, 12]") && e.contains("[B, 10]"), "{e}");
    // Per-block rows must be L = blocks + 1.
    let e = model
        .forward_per_block(&r["z"], &r["classes"], 1.0)
        .unwrap_err()
        .to_string();
    assert!(e.contains("L = GenBlocks + 1 = 7"), "{e}");
}

// ------------------------------------------------------------------------------------------
// Full-size names and shapes

#[test]
fn full_128_requests_the_published_tensors() {
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    BigGan::new(vb, &Config::deep_128()).unwrap();
    let ours: BTreeMap<String, Vec<usize>> = varmap
        .data()
        .lock()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.dims().to_vec()))
        .collect();
    let text = std::fs::read_to_string(fixtures("biggan_deep_128_names.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let published: BTreeMap<String, Vec<usize>> =
        serde_json::from_value(v["tensors"].clone()).unwrap();
    for (name, shape) in &ours {
        let p = published
            .get(name)
            .unwrap_or_else(|| panic!("requests `{name}`, which the checkpoint lacks"));
        assert_eq!(shape, p, "shape of `{name}`");
    }
    let missing: Vec<&String> = published
        .keys()
        .filter(|n| !ours.contains_key(*n))
        .collect();
    assert!(missing.is_empty(), "never requested: {missing:?}");
    let values: usize = ours.values().map(|s| s.iter().product::<usize>()).sum();
    eprintln!(
        "biggan-deep-128: all {} tensors ({values} values) requested with the published shapes",
        ours.len()
    );
    assert_eq!(ours.len(), 506);
}

#[test]
fn full_256_and_512_construct() {
    for (cfg, tensors) in [(Config::deep_256(), 602), (Config::deep_512(), 698)] {
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        let m = BigGan::new(vb, &cfg).unwrap();
        let data = varmap.data().lock().unwrap();
        assert!(data.contains_key("generator.layers.8.gamma"));
        assert_eq!(data.len(), tensors, "{}", cfg.output_dim);
        assert_eq!(m.image_size(), cfg.output_dim);
    }
}

// ------------------------------------------------------------------------------------------
// Loading

/// A folder with the fixture's config.json and `weights` under `file_name`.
fn folder_with(weights: Option<(&str, &[u8])>) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::copy(
        fixtures("biggan_tiny/config.json"),
        tmp.path().join("config.json"),
    )
    .unwrap();
    if let Some((name, bytes)) = weights {
        std::fs::write(tmp.path().join(name), bytes).unwrap();
    }
    tmp
}

fn fixture_tensors() -> HashMap<String, Tensor> {
    roundtrip::weights::load_weights_file(&fixtures("biggan_tiny/pytorch_model.bin")).unwrap()
}

#[test]
fn safetensors_weights_load_alike() {
    let r = reference();
    let want = tiny().forward(&r["z"], &r["classes"], 1.0).unwrap();
    let tmp = folder_with(None);
    candle_core::safetensors::save(&fixture_tensors(), tmp.path().join("model.safetensors"))
        .unwrap();
    let got = load_from(tmp.path())
        .unwrap()
        .forward(&r["z"], &r["classes"], 1.0)
        .unwrap();
    check("safetensors vs legacy .bin", &got, &want, 0.0);
}

#[test]
fn missing_weights_and_tensors_are_input_errors() {
    let tmp = folder_with(None);
    let e = load_from(tmp.path()).err().expect("no weights");
    let msg = format!("{e:#}");
    assert!(
        msg.contains("model.safetensors") && msg.contains("pytorch_model.bin"),
        "{msg}"
    );
    assert_eq!(roundtrip::error::exit_code(&e), 2);

    let mut t = fixture_tensors();
    let name = "generator.layers.5.bn_2.running_vars";
    t.remove(name).unwrap();
    let tmp = folder_with(None);
    candle_core::safetensors::save(&t, tmp.path().join("model.safetensors")).unwrap();
    let e = load_from(tmp.path()).err().expect("missing tensor");
    let msg = format!("{e:#}");
    assert!(
        msg.contains(name) && msg.contains("model.safetensors"),
        "{msg}"
    );
    assert_eq!(roundtrip::error::exit_code(&e), 2);
}

#[test]
fn a_malicious_pytorch_model_bin_is_refused() {
    let bytes = std::fs::read(fixtures("pth/malicious_legacy.pt")).unwrap();
    let tmp = folder_with(Some(("pytorch_model.bin", &bytes)));
    let e = load_from(tmp.path()).err().expect("refused");
    let msg = format!("{e:#}");
    assert!(
        msg.contains("pytorch_model.bin") && msg.contains("`posix.system`"),
        "{msg}"
    );
    assert_eq!(roundtrip::error::exit_code(&e), 2);
}
