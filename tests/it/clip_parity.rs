//! CLIP parity with transformers 5 on the tiny random-weight fixtures of
//! tests/fixtures/clip_tiny/ (made by tests/fixtures/make_clip_fixtures.py), the pixel gradient
//! against PyTorch's and against finite differences, config parsing, and loading errors.
//!
//! Tolerance: max |ours - reference| / max |reference| per tensor <= 1e-4 (float32 transformers is
//! itself ~3e-7 from float64, meta.json).

use crate::common::{flat, rel};

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, IndexOp, Tensor, Var};
use roundtrip::hub::{Locator, ModelRef};
use roundtrip::imageops::resize::pil_resize_bicubic;
use roundtrip::models::clip::{
    l2_normalize, load_weights, preprocess_image, Clip, ClipConfig, ClipModel, ClipTokenizer,
    HiddenAct, CLIP_MEAN, CLIP_STD,
};

const TOL: f64 = 1e-4;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/clip_tiny")
}

fn reference() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(fixtures().join("reference.safetensors"), &Device::Cpu)
        .expect("reference.safetensors loads")
}

fn config() -> ClipConfig {
    let text = std::fs::read_to_string(fixtures().join("config.json")).unwrap();
    ClipConfig::from_json(&text).unwrap()
}

fn model(dtype: DType) -> ClipModel {
    load_weights(
        &fixtures().join("model.safetensors"),
        &config(),
        dtype,
        &Device::Cpu,
    )
    .unwrap()
}

fn check(name: &str, ours: &Tensor, reference: &Tensor) {
    let r = rel(name, ours, reference);
    assert!(r <= TOL, "{name}: max relative error {r:e} > {TOL:e}");
}

fn ids(r: &HashMap<String, Tensor>) -> Tensor {
    r["input_ids"].to_dtype(DType::U32).unwrap()
}

#[test]
fn config_json_of_the_fixture_parses_with_defaults() {
    let c = config();
    assert_eq!(c.projection_dim, 16);
    assert_eq!(c.text.vocab_size, 572);
    assert_eq!(c.text.max_position_embeddings, 77); // default, as the key is absent
    assert_eq!(
        (
            c.text.bos_token_id,
            c.text.eos_token_id,
            c.text.pad_token_id
        ),
        (570, 571, 571)
    );
    assert_eq!(c.text.hidden_act, HiddenAct::QuickGelu);
    assert_eq!((c.vision.image_size, c.vision.patch_size), (32, 8));
    assert_eq!(c.vision.num_positions(), 17);
    assert_eq!(c.vision.layer_norm_eps, 1e-5);
}

/// The keys of the hub's openai/clip-vit-base-patch32 config.json that matter (it writes null for
/// unset keys and has `text_config_dict: null`).
const HUB_B32: &str = r#"{
  "architectures": ["CLIPModel"], "initializer_factor": 1.0, "logit_scale_init_value": 2.6592,
  "model_type": "clip", "projection_dim": 512,
  "text_config": {"attention_dropout": 0.0, "bos_token_id": 0, "eos_token_id": 2,
    "hidden_act": "quick_gelu", "hidden_size": 512, "intermediate_size": 2048,
    "layer_norm_eps": 1e-05, "max_position_embeddings": 77, "num_attention_heads": 8,
    "num_hidden_layers": 12, "pad_token_id": 1, "projection_dim": 512, "torch_dtype": null,
    "vocab_size": 49408},
  "text_config_dict": null, "transformers_version": null,
  "vision_config": {"bos_token_id": null, "eos_token_id": null, "hidden_act": "quick_gelu",
    "hidden_size": 768, "image_size": 224, "intermediate_size": 3072, "layer_norm_eps": 1e-05,
    "num_attention_heads": 12, "num_hidden_layers": 12, "pad_token_id": null, "patch_size": 32,
    "projection_dim": 512},
  "vision_config_dict": null
}"#;

#[test]
fn vit_b32_is_the_hub_config() {
    assert_eq!(
        ClipConfig::from_json(HUB_B32).unwrap(),
        ClipConfig::vit_b32()
    );
}

#[test]
fn an_empty_config_gets_transformers_defaults() {
    let c = ClipConfig::from_json("{}").unwrap();
    let mut b32 = ClipConfig::vit_b32();
    // transformers' current defaults differ from the hub's legacy ids only in the token ids.
    (
        b32.text.bos_token_id,
        b32.text.eos_token_id,
        b32.text.pad_token_id,
    ) = (49406, 49407, 1);
    assert_eq!(c, b32);
}

#[test]
fn config_dict_overrides_config() {
    let c = ClipConfig::from_json(
        r#"{"vision_config": {"patch_size": 32}, "vision_config_dict": {"patch_size": 16}}"#,
    )
    .unwrap();
    assert_eq!(c.vision.patch_size, 16);
}

#[test]
fn config_errors_name_the_key() {
    let err = |json: &str| format!("{:#}", ClipConfig::from_json(json).unwrap_err());
    let e = err(r#"{"text_config": {"hidden_size": "big"}}"#);
    assert!(
        e.contains("text_config.hidden_size") && e.contains("\"big\""),
        "{e}"
    );
    let e = err(r#"{"vision_config": {"hidden_act": "swish"}}"#);
    assert!(
        e.contains("vision_config.hidden_act") && e.contains("swish"),
        "{e}"
    );
    let e = err(r#"{"vision_config": {"hidden_size": 100, "num_attention_heads": 12}}"#);
    assert!(
        e.contains("vision_config.hidden_size") && e.contains("num_attention_heads"),
        "{e}"
    );
    let e = err(r#"{"vision_config": {"image_size": 100}}"#);
    assert!(
        e.contains("vision_config.image_size") && e.contains("patch_size"),
        "{e}"
    );
    let e = err(r#"{"projection_dim": -1}"#);
    assert!(e.contains("projection_dim"), "{e}");
    let e = err(r#"{"text_config": [1]}"#);
    assert!(e.contains("text_config"), "{e}");
    let e = err(r#"{"text_config": {"layer_norm_eps": 0}}"#);
    assert!(e.contains("text_config.layer_norm_eps"), "{e}");
    assert!(err("not json").contains("not valid JSON"));
}

#[test]
fn loads_through_the_model_locator_and_matches_transformers_embeddings() {
    let tmp = tempfile::tempdir().unwrap();
    let loc = Locator::offline(tmp.path());
    let dir = fixtures();
    let m = loc
        .open(&ModelRef::parse(dir.to_str().unwrap()).unwrap())
        .unwrap();
    let clip = Clip::load(&m, &Device::Cpu).unwrap();
    assert_eq!(clip.record.source, "folder");
    let r = reference();
    let model = &clip.model;
    check(
        "image_embeds",
        &model.image_features(&r["pixel_values"]).unwrap(),
        &r["image_embeds"],
    );
    check(
        "text_embeds",
        &model.text_features(&ids(&r)).unwrap(),
        &r["text_embeds"],
    );
    // The fixture's input_ids are i64; they are accepted as they are.
    check(
        "text_embeds (i64 ids)",
        &model.text_features(&r["input_ids"]).unwrap(),
        &r["text_embeds"],
    );
    check(
        "logits_per_image",
        &model
            .logits_per_image(&r["pixel_values"], &ids(&r))
            .unwrap(),
        &r["logits_per_image"],
    );
    assert!((model.logit_scale().unwrap() - 100.0).abs() < 1e-4);
}

#[test]
fn hidden_states_match_transformers() {
    let r = reference();
    let model = model(DType::F32);
    let vis = model.vision_forward(&r["pixel_values"]).unwrap();
    check(
        "vision_last_hidden_state",
        &vis.last_hidden_state,
        &r["vision_last_hidden_state"],
    );
    check(
        "vision_pooler_output",
        &vis.pooler_output,
        &r["vision_pooler_output"],
    );
    let txt = model.text_forward(&ids(&r)).unwrap();
    check(
        "text_last_hidden_state_no_mask",
        &txt.last_hidden_state,
        &r["text_last_hidden_state_no_mask"],
    );
    check(
        "text_pooler_output",
        &txt.pooler_output,
        &r["text_pooler_output"],
    );
    // With transformers' padding mask, only the real positions are comparable.
    let mask: Vec<Vec<i64>> = r["attention_mask"].to_vec2().unwrap();
    for (row, m) in mask.iter().enumerate() {
        let n = m.iter().filter(|&&v| v == 1).count();
        check(
            &format!("text_last_hidden_state[{row}, :{n}]"),
            &txt.last_hidden_state.i((row, ..n)).unwrap(),
            &r["text_last_hidden_state"].i((row, ..n)).unwrap(),
        );
    }
}

#[test]
fn text_pooling_rules() {
    let r = reference();
    let model = model(DType::F32);
    let expected: Vec<i64> = r["text_pool_index"].to_vec1().unwrap();
    assert_eq!(expected, vec![11, 11, 19]);
    // A row without the end token is an error rather than a silent pooling of position 0.
    let no_eos = Tensor::new(&[[570u32, 320, 534]], &Device::Cpu).unwrap();
    let e = model.text_features(&no_eos).unwrap_err().to_string();
    assert!(e.contains("no end token"), "{e}");
    // Legacy configs (eos_token_id 2) pool at argmax(ids); with <|endoftext|> the highest id this
    // is the same position, so the embeddings are unchanged.
    let mut cfg = config();
    cfg.text.eos_token_id = 2;
    let legacy = load_weights(
        &fixtures().join("model.safetensors"),
        &cfg,
        DType::F32,
        &Device::Cpu,
    )
    .unwrap();
    check(
        "text_embeds (argmax pooling)",
        &legacy.text_features(&ids(&r)).unwrap(),
        &r["text_embeds"],
    );
    // argmax picks the FIRST maximum: the first of several trailing <|endoftext|>.
    let a = legacy
        .text_forward(&Tensor::new(&[[570u32, 320, 571, 571, 571]], &Device::Cpu).unwrap())
        .unwrap();
    let b = legacy
        .text_forward(&Tensor::new(&[[570u32, 320, 571]], &Device::Cpu).unwrap())
        .unwrap();
    assert!(rel("argmax first maximum", &a.pooler_output, &b.pooler_output) < 1e-6);
}

#[test]
fn tokenizer_matches_transformers_ids() {
    let r = reference();
    let cfg = config();
    let tok = ClipTokenizer::from_file(&fixtures().join("tokenizer.json"), &cfg.text).unwrap();
    let texts = [
        "a cat eating a mouse",
        "two guys playing chess",
        "A red circle  left of a blue square, 3 zebras!",
    ];
    let got = tok.encode_batch(&texts, &Device::Cpu).unwrap();
    let want: Vec<Vec<i64>> = r["input_ids"].to_vec2().unwrap();
    let got: Vec<Vec<u32>> = got.to_vec2().unwrap();
    let got: Vec<Vec<i64>> = got
        .iter()
        .map(|row| row.iter().map(|&t| t as i64).collect())
        .collect();
    assert_eq!(got, want);
    assert_eq!((tok.start_token(), tok.end_token()), (570, 571));
}

#[test]
fn tokenizer_truncates_to_the_context_keeping_the_end_token() {
    let cfg = config();
    let tok = ClipTokenizer::from_file(&fixtures().join("tokenizer.json"), &cfg.text).unwrap();
    let long = "a cat eating a mouse ".repeat(40);
    let ids = tok.encode(&long).unwrap();
    assert_eq!(ids.len(), 77);
    assert_eq!((ids[0], ids[76]), (570, 571));
    assert_eq!(ids.iter().filter(|&&t| t == 571).count(), 1);
    let batch = tok.encode_batch(&[&long, "a cat"], &Device::Cpu).unwrap();
    assert_eq!(batch.dims(), &[2, 77]);
    // Padding does not change the embedding of the short text.
    let model = model(DType::F32);
    let alone = tok.encode_batch(&["a cat"], &Device::Cpu).unwrap();
    let padded = model.text_features(&batch).unwrap().i(1..2).unwrap();
    let r = rel(
        "padded vs unpadded text",
        &padded,
        &model.text_features(&alone).unwrap(),
    );
    assert!(r < 1e-6);
}

#[test]
fn tokenizer_rejects_an_end_token_that_is_not_the_models_eos() {
    let mut cfg = config();
    cfg.text.eos_token_id = 7;
    let e = ClipTokenizer::from_file(&fixtures().join("tokenizer.json"), &cfg.text)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("eos_token_id") && e.contains("571"), "{e}");
}

#[test]
fn preprocessing_matches_clip_image_processor() {
    let r = reference();
    let img = image::open(fixtures().join("raw_48x40.png")).unwrap();
    // PIL's bicubic resize, bit for bit.
    let resized = pil_resize_bicubic(&img.to_rgb8(), 38, 32);
    let want: Vec<u8> = r["processed_resized_u8"]
        .permute((1, 2, 0))
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let mismatches = resized
        .as_raw()
        .iter()
        .zip(&want)
        .filter(|(a, b)| a != b)
        .count();
    assert_eq!(mismatches, 0, "resized pixels differing from PIL's");
    let px = preprocess_image(&img, 32, &Device::Cpu).unwrap();
    let want = r["processed_pixel_values"].i(0).unwrap();
    let diff = (&px - &want).unwrap().abs().unwrap().max_all().unwrap();
    let diff: f32 = diff.to_scalar().unwrap();
    eprintln!("processed_pixel_values max abs err {diff:e}");
    assert!(diff <= 1e-6, "{diff}");
    check("processed_pixel_values", &px, &want);
}

#[test]
fn an_image_at_the_model_size_is_only_normalised() {
    let r = reference();
    // images01[1] (the smooth gradient) quantised to u8 and back.
    let img01 = r["images01"].i(1).unwrap();
    let u8s: Vec<u8> = flat(&img01.permute((1, 2, 0)).unwrap())
        .iter()
        .map(|v| (v * 255.0).round() as u8)
        .collect();
    let img =
        image::DynamicImage::ImageRgb8(image::RgbImage::from_raw(32, 32, u8s.clone()).unwrap());
    let px = preprocess_image(&img, 32, &Device::Cpu).unwrap();
    // The constants are meta.json's (as f32).
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("meta.json")).unwrap())
            .unwrap();
    for (key, ours) in [("clip_mean", CLIP_MEAN), ("clip_std", CLIP_STD)] {
        let want: Vec<f32> = meta[key]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect();
        assert_eq!(want, ours, "{key}");
    }
    let (mean, std) = (CLIP_MEAN, CLIP_STD);
    let got: Vec<f32> = px.flatten_all().unwrap().to_vec1().unwrap();
    for (i, g) in got.iter().enumerate() {
        let (c, yx) = (i / 1024, i % 1024);
        let want = (u8s[yx * 3 + c] as f32 / 255.0 - mean[c]) / std[c];
        assert!((g - want).abs() < 1e-6);
    }
}

/// cos(image_features(px), t) with t constant; returns the loss and d loss / d px.
fn cos_loss_and_grad(model: &ClipModel, px: &Tensor, t: &Tensor) -> (f64, Tensor) {
    let var = Var::from_tensor(px).unwrap();
    let e = l2_normalize(&model.image_features(var.as_tensor()).unwrap()).unwrap();
    let loss = (e * l2_normalize(t).unwrap()).unwrap().sum_all().unwrap();
    let grads = loss.backward().unwrap();
    let g = grads
        .get(var.as_tensor())
        .expect("the pixels get a gradient")
        .clone();
    (loss.to_dtype(DType::F64).unwrap().to_scalar().unwrap(), g)
}

#[test]
fn pixel_gradient_matches_pytorch() {
    let r = reference();
    let model = model(DType::F32);
    let px = r["pixel_values"].i(0..1).unwrap();
    let t = model.text_features(&ids(&r).i(0..1).unwrap()).unwrap();
    let (loss, grad) = cos_loss_and_grad(&model, &px, &t);
    let want: Vec<f32> = r["pixel_grad_loss"].to_vec1().unwrap();
    assert!(
        (loss - want[0] as f64).abs() < 1e-5,
        "{loss} vs {}",
        want[0]
    );
    check("pixel_grad", &grad, &r["pixel_grad"]);
}

/// Central differences in f64 on a handful of pixels, for each activation.
#[test]
fn pixel_gradient_matches_finite_differences_in_f64() {
    let r = reference();
    for act in [HiddenAct::QuickGelu, HiddenAct::Gelu, HiddenAct::GeluTanh] {
        let mut cfg = config();
        cfg.vision.hidden_act = act;
        let model = load_weights(
            &fixtures().join("model.safetensors"),
            &cfg,
            DType::F64,
            &Device::Cpu,
        )
        .unwrap();
        let px = r["pixel_values"]
            .i(2..3)
            .unwrap()
            .to_dtype(DType::F64)
            .unwrap();
        let t = model.text_features(&ids(&r).i(2..3).unwrap()).unwrap();
        let (_, grad) = cos_loss_and_grad(&model, &px, &t);
        let grad = grad.to_dtype(DType::F64).unwrap();
        let gmax = flat(&grad).iter().map(|g| g.abs()).fold(0.0, f64::max);
        assert!(gmax > 0.0);
        let mut base = flat(&px);
        let loss_at = |v: &[f64]| -> f64 {
            let p = Tensor::from_slice(v, (1, 3, 32, 32), &Device::Cpu).unwrap();
            let e = l2_normalize(&model.image_features(&p).unwrap()).unwrap();
            (e * l2_normalize(&t).unwrap())
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar()
                .unwrap()
        };
        let h = 1e-5;
        for (c, y, x) in [
            (0, 0, 0),
            (1, 5, 7),
            (2, 31, 31),
            (0, 16, 9),
            (1, 8, 8),
            (2, 20, 3),
        ] {
            let i = (c * 32 + y) * 32 + x;
            let orig = base[i];
            base[i] = orig + h;
            let up = loss_at(&base);
            base[i] = orig - h;
            let down = loss_at(&base);
            base[i] = orig;
            let fd = (up - down) / (2.0 * h);
            let an: f64 = grad.i((0, c, y, x)).unwrap().to_scalar().unwrap();
            let err = (fd - an).abs() / gmax;
            eprintln!("{act:?} ({c},{y},{x}) analytic {an:+.9e} fd {fd:+.9e} err/max {err:.1e}");
            // gelu_erf's backward in candle uses 1/sqrt(2 pi) rounded to 6 digits.
            let tol = if act == HiddenAct::QuickGelu {
                1e-7
            } else {
                1e-5
            };
            assert!(err < tol, "{act:?} pixel ({c},{y},{x}): {an} vs {fd}");
        }
    }
}

/// Geometries of published checkpoints construct and run (one layer per tower to keep it small;
/// the layer count does not change any shape).
#[test]
fn vit_b16_and_l14_geometries_construct_and_run() {
    let b16 = r#"{"projection_dim": 512, "vision_config": {"patch_size": 16}}"#;
    let l14 = r#"{"projection_dim": 768,
      "text_config": {"hidden_size": 768, "intermediate_size": 3072, "num_attention_heads": 12},
      "vision_config": {"hidden_size": 1024, "intermediate_size": 4096, "num_attention_heads": 16,
        "num_hidden_layers": 24, "patch_size": 14}}"#;
    let h14 = r#"{"projection_dim": 1024,
      "text_config": {"hidden_act": "gelu", "hidden_size": 1024, "intermediate_size": 4096,
        "num_attention_heads": 16},
      "vision_config": {"hidden_act": "gelu", "hidden_size": 1280, "intermediate_size": 5120,
        "num_attention_heads": 16, "num_hidden_layers": 32, "patch_size": 14}}"#;
    for (name, json, tokens, dim) in [
        ("B/16", b16, 197, 768),
        ("L/14", l14, 257, 1024),
        ("H/14", h14, 257, 1280),
    ] {
        let mut cfg = ClipConfig::from_json(json).unwrap();
        assert!(cfg.vision.num_hidden_layers >= 12, "{name}");
        cfg.vision.num_hidden_layers = 1;
        cfg.text.num_hidden_layers = 1;
        cfg.text.vocab_size = 600;
        cfg.text.eos_token_id = 599;
        let vb = candle_nn::VarBuilder::zeros(DType::F32, &Device::Cpu);
        let model = ClipModel::new(vb, &cfg).unwrap();
        let px = Tensor::zeros((1, 3, 224, 224), DType::F32, &Device::Cpu).unwrap();
        let out = model.vision_forward(&px).unwrap();
        assert_eq!(out.last_hidden_state.dims(), &[1, tokens, dim], "{name}");
        let (_, g) = cos_loss_and_grad(
            &model,
            &px,
            &Tensor::ones((1, cfg.projection_dim), DType::F32, &Device::Cpu).unwrap(),
        );
        assert_eq!(g.dims(), &[1, 3, 224, 224], "{name}");
        let ids = Tensor::new(&[[598u32, 5, 599, 599]], &Device::Cpu).unwrap();
        let t = model.text_features(&ids).unwrap();
        assert_eq!(t.dims(), &[1, cfg.projection_dim], "{name}");
    }
}

#[test]
fn wrong_image_size_is_an_error() {
    let model = model(DType::F32);
    let px = Tensor::zeros((1, 3, 64, 64), DType::F32, &Device::Cpu).unwrap();
    let e = model.image_features(&px).unwrap_err().to_string();
    assert!(e.contains("[B, 3, 32, 32]"), "{e}");
}

/// Writes the fixture's tensors, changed by `edit`, to a temp file and loads it.
fn load_edited(edit: impl FnOnce(&mut HashMap<String, Tensor>)) -> String {
    let mut tensors =
        candle_core::safetensors::load(fixtures().join("model.safetensors"), &Device::Cpu).unwrap();
    edit(&mut tensors);
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("model.safetensors");
    candle_core::safetensors::save(&tensors, &path).unwrap();
    let e = load_weights(&path, &config(), DType::F32, &Device::Cpu).expect_err("loading fails");
    let msg = format!("{e:#}");
    eprintln!("{msg}");
    assert!(msg.contains(path.to_str().unwrap()), "no file in: {msg}");
    assert!(
        roundtrip::error::exit_code(&e) == 2,
        "a bad weights file is an input error"
    );
    msg
}

#[test]
fn missing_tensor_is_named_with_the_file() {
    let name = "vision_model.encoder.layers.1.mlp.fc2.bias";
    let msg = load_edited(|t| {
        t.remove(name).unwrap();
    });
    assert!(msg.contains(name) && msg.contains("not found"), "{msg}");
    let msg = load_edited(|t| {
        t.remove("logit_scale").unwrap();
    });
    assert!(msg.contains("logit_scale"), "{msg}");
}

#[test]
fn misshaped_tensor_is_named_with_both_shapes() {
    let name = "vision_model.embeddings.position_embedding.weight";
    let msg = load_edited(|t| {
        t.insert(
            name.into(),
            Tensor::zeros((16, 32), DType::F32, &Device::Cpu).unwrap(),
        );
    });
    assert!(
        msg.contains(name) && msg.contains("[17, 32]") && msg.contains("[16, 32]"),
        "{msg}"
    );
}

#[test]
fn truncated_weights_file_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(fixtures().join("model.safetensors")).unwrap();
    let path = tmp.path().join("model.safetensors");
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let e = load_weights(&path, &config(), DType::F32, &Device::Cpu).expect_err("loading fails");
    let msg = format!("{e:#}");
    eprintln!("{msg}");
    assert!(msg.contains(path.to_str().unwrap()), "{msg}");
}

#[test]
fn clip_load_names_a_missing_file() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::copy(
        fixtures().join("config.json"),
        tmp.path().join("config.json"),
    )
    .unwrap();
    let loc = Locator::offline(tmp.path());
    let m = loc
        .open(&ModelRef::parse(tmp.path().to_str().unwrap()).unwrap())
        .unwrap();
    let e = Clip::load(&m, &Device::Cpu).err().unwrap().to_string();
    assert!(e.contains("model.safetensors"), "{e}");
}

/// Weights that are `Var`s (training a CLIP) still get gradients; only frozen weights skip them.
#[test]
fn trainable_weights_get_gradients() {
    let mut varmap = candle_nn::VarMap::new();
    let vb = candle_nn::VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    let model = ClipModel::new(vb, &config()).unwrap();
    // Values set after construction (as an optimiser step does) are used by the model.
    varmap.load(fixtures().join("model.safetensors")).unwrap();
    let r = reference();
    check(
        "image_embeds (Var weights)",
        &model.image_features(&r["pixel_values"]).unwrap(),
        &r["image_embeds"],
    );
    let loss = model
        .logits_per_image(&r["pixel_values"], &ids(&r))
        .unwrap()
        .sum_all()
        .unwrap();
    let grads = loss.backward().unwrap();
    let data = varmap.data().lock().unwrap();
    for name in [
        "vision_model.embeddings.patch_embedding.weight",
        "vision_model.encoder.layers.0.self_attn.q_proj.weight",
        "vision_model.encoder.layers.1.mlp.fc2.weight",
        "visual_projection.weight",
        "text_model.encoder.layers.0.self_attn.v_proj.bias",
        "text_projection.weight",
    ] {
        let g = grads
            .get(data[name].as_tensor())
            .unwrap_or_else(|| panic!("no gradient for {name}"));
        let n: f32 = g.abs().unwrap().sum_all().unwrap().to_scalar().unwrap();
        assert!(n > 0.0, "zero gradient for {name}");
    }
}

/// The portable path, what CUDA and Metal run (LayerNorm, QuickGELU and attention from candle
/// ops, candle's autograd), matches transformers in values and pixel gradients, as the fused CPU
/// kernels do: the optimised gradient path and the straightforward one agree.
#[test]
fn portable_path_matches_transformers() {
    roundtrip::kernels::with_portable_ops(|| {
        hidden_states_match_transformers();
        pixel_gradient_matches_pytorch();
    });
}

/// The hand-written image-tower backward (`image_features_taped` + `ImageTape::backward`, what
/// guidance runs on the CPU) gives PyTorch's features and pixel gradient, and agrees with candle's
/// autograd through the fused kernels on a batch of two images.
#[test]
fn taped_image_backward_matches_pytorch_and_autograd() {
    let r = reference();
    let model = model(DType::F32);
    assert!(model.image_tape_available());
    let px = r["pixel_values"].i(0..1).unwrap();
    let t = l2_normalize(&model.text_features(&ids(&r).i(0..1).unwrap()).unwrap()).unwrap();
    let taped_grad = |px: &Tensor| -> (Tensor, f64, Tensor) {
        let (feat, tape) = model
            .image_features_taped(px)
            .unwrap()
            .expect("tape applies");
        let fv = Var::from_tensor(&feat).unwrap();
        let loss = l2_normalize(fv.as_tensor())
            .unwrap()
            .broadcast_mul(&t)
            .unwrap()
            .sum_all()
            .unwrap();
        let g = loss.backward().unwrap();
        let gpx = tape
            .backward(&model, g.get(fv.as_tensor()).unwrap())
            .unwrap();
        let l = loss.to_dtype(DType::F64).unwrap().to_scalar().unwrap();
        (feat, l, gpx)
    };
    let (feat, loss, grad) = taped_grad(&px);
    check(
        "taped image_embeds",
        &feat,
        &r["image_embeds"].i(0..1).unwrap(),
    );
    let want: Vec<f32> = r["pixel_grad_loss"].to_vec1().unwrap();
    assert!(
        (loss - want[0] as f64).abs() < 1e-5,
        "{loss} vs {}",
        want[0]
    );
    check("taped pixel_grad", &grad, &r["pixel_grad"]);
    // Two images at once against autograd (the tape's batch handling).
    let px2 = r["pixel_values"].i(0..2).unwrap();
    let (_, _, g_taped) = taped_grad(&px2);
    let var = Var::from_tensor(&px2).unwrap();
    let e = l2_normalize(&model.image_features(var.as_tensor()).unwrap()).unwrap();
    let loss = e.broadcast_mul(&t).unwrap().sum_all().unwrap();
    let g_auto = loss
        .backward()
        .unwrap()
        .get(var.as_tensor())
        .unwrap()
        .clone();
    check("taped vs autograd, batch of 2", &g_taped, &g_auto);
    // Not available on the portable path (it falls back to autograd there).
    roundtrip::kernels::with_portable_ops(|| {
        assert!(!model.image_tape_available());
        assert!(model.image_features_taped(&px).unwrap().is_none());
    });
}

/// A whole guidance gradient, image -> cutouts -> CLIP -> deep-daze loss -> d loss / d image,
/// through `encode_and_backward`: the hand-written CLIP backward (CPU) against candle's autograd
/// over the straightforward ops (the portable path, which has no tape), with a loss term outside
/// the encoder too.
#[test]
fn guidance_gradient_with_the_tape_matches_autograd() {
    use rand::SeedableRng;
    use roundtrip::generate::cutouts::{cutout_batch, deep_daze_cutouts, Resize};
    use roundtrip::generate::{deep_daze_loss, encode_and_backward};
    let gradient = || {
        let model = model(DType::F32);
        let size = 40;
        let n = 3 * size * size;
        let v: Vec<f32> = (0..n)
            .map(|i| ((i * 7919) % 1000) as f32 / 1000.0)
            .collect();
        let image =
            Var::from_tensor(&Tensor::from_vec(v, (3, size, size), &Device::Cpu).unwrap()).unwrap();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        let cuts = deep_daze_cutouts(&mut rng, 3, size, 0.5, 1.0);
        let input = model.config().vision.image_size;
        let batch = cutout_batch(image.as_tensor(), &cuts, input, Resize::Bilinear).unwrap();
        let r = reference();
        let t = l2_normalize(&model.text_features(&ids(&r).i(0..1).unwrap()).unwrap()).unwrap();
        // Plus a term on the image itself (as BigGAN's regularisers on the latents), whose
        // gradient does not go through the encoder.
        let (loss, _, store) = encode_and_backward(&model, &batch, |e| {
            let (l, s) = deep_daze_loss(&t, e, 0.3)?;
            Ok(((l + (image.as_tensor().sqr()?.mean_all()? * 50.0)?)?, s))
        })
        .unwrap();
        let g = store.get(image.as_tensor()).unwrap().clone();
        (
            loss.to_scalar::<f32>().unwrap(),
            g,
            model.image_tape_available(),
        )
    };
    let (loss_taped, g_taped, taped) = gradient();
    let (loss_auto, g_auto, auto_taped) = roundtrip::kernels::with_portable_ops(gradient);
    assert!(taped && !auto_taped);
    assert!(
        (loss_taped - loss_auto).abs() < 1e-4,
        "{loss_taped} vs {loss_auto}"
    );
    check("image gradient, taped vs autograd", &g_taped, &g_auto);
}
