//! BLIP parity with transformers 5 on the tiny random-weight fixtures of tests/fixtures/blip_tiny/
//! (made by tests/fixtures/make_blip_fixtures.py): the image processor, the image tower, the
//! decoder's logits, greedy and beam-search ids and the decoded captions; and the full-size base and
//! large configurations built with the published tensor names and shapes.
//!
//! Tolerances: 1e-4 relative (max |ours - reference| / max |reference|) for the vision outputs
//! and logits, 1e-5 absolute for pixels; ids and texts identical.

use crate::common::rel;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::VarBuilder;
use roundtrip::captioner::blip::{BlipCaptioner, BlipDecoding};
use roundtrip::hub::{Locator, ModelRef};
use roundtrip::models::blip::{Blip, Config, ImageProcessor};

const TOL: f64 = 1e-4;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/blip_tiny")
}

fn reference() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(fixtures().join("reference.safetensors"), &Device::Cpu)
        .expect("reference.safetensors loads")
}

fn meta() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(fixtures().join("meta.json")).unwrap()).unwrap()
}

fn captioner(dir: &Path, decoding: BlipDecoding) -> BlipCaptioner {
    let locator = Locator::offline(dir);
    let model = locator
        .open(&ModelRef::parse(dir.to_str().unwrap()).unwrap())
        .unwrap();
    BlipCaptioner::load(&model, decoding, &Device::Cpu).unwrap()
}

fn check(name: &str, ours: &Tensor, reference: &Tensor) {
    let r = rel(name, ours, reference);
    assert!(r <= TOL, "{name}: max relative error {r:e} > {TOL:e}");
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.dims(), b.dims());
    (a.to_dtype(DType::F64).unwrap() - b.to_dtype(DType::F64).unwrap())
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f64>()
        .unwrap()
}

fn images() -> Vec<image::RgbImage> {
    ["image_a.png", "image_b.png", "image_c.png"]
        .iter()
        .map(|n| roundtrip::imageops::open_rgb(&fixtures().join(n)).unwrap())
        .collect()
}

#[test]
fn blip_config_json_of_the_fixture_parses_with_defaults() {
    let c = Config::from_json(&std::fs::read_to_string(fixtures().join("config.json")).unwrap())
        .unwrap();
    let t = &c.text_config;
    assert_eq!(
        (t.vocab_size, t.hidden_size, t.num_attention_heads),
        (66, 32, 4)
    );
    assert_eq!(t.encoder_hidden_size, 48, "taken from the vision config");
    assert_eq!((t.bos_token_id, t.sep_token_id, t.pad_token_id), (64, 3, 0));
    assert!(t.tie_word_embeddings);
    let v = &c.vision_config;
    assert_eq!(
        (v.image_size, v.patch_size, v.num_positions()),
        (64, 16, 17)
    );
    assert_eq!(v.layer_norm_eps, 1e-5);
}

#[test]
fn blip_image_processor_matches_transformers() {
    let r = reference();
    let p = ImageProcessor::from_json(
        &std::fs::read_to_string(fixtures().join("preprocessor_config.json")).unwrap(),
    )
    .unwrap();
    let ours = p.batch(&images(), &Device::Cpu).unwrap();
    let d = max_abs_diff(&ours, &r["images_pixel_values"]);
    eprintln!("blip processor 64 px: max abs diff {d:.3e}");
    assert!(d <= 1e-5, "{d}");
    // The published defaults: 384 x 384.
    let big = ImageProcessor::default()
        .preprocess(&images()[0], &Device::Cpu)
        .unwrap();
    assert_eq!(big.dims(), [3, 384, 384]);
    let idx = Tensor::new(
        (0..48u32).map(|i| 3 + 8 * i).collect::<Vec<_>>(),
        &Device::Cpu,
    )
    .unwrap();
    let sub = big
        .index_select(&idx, 1)
        .unwrap()
        .index_select(&idx, 2)
        .unwrap();
    let d = max_abs_diff(&sub, &r["pixels_384_sub"]);
    eprintln!("blip processor 384 px (subsample): max abs diff {d:.3e}");
    assert!(d <= 1e-5, "{d}");
    let big64 = big.to_dtype(DType::F64).unwrap();
    let sums: Vec<f64> = big64.sum((1, 2)).unwrap().to_vec1().unwrap();
    let sq: Vec<f64> = big64.sqr().unwrap().sum((1, 2)).unwrap().to_vec1().unwrap();
    let want_sums: Vec<f64> = r["pixels_384_channel_sums"].to_vec1().unwrap();
    let want_sq: Vec<f64> = r["pixels_384_channel_sq_sums"].to_vec1().unwrap();
    for c in 0..3 {
        assert!(
            (sums[c] - want_sums[c]).abs() <= 1e-5 * 384.0 * 384.0,
            "{c}"
        );
        assert!((sq[c] - want_sq[c]).abs() <= 1e-6 * want_sq[c], "{c}");
    }
}

fn tiny_model() -> Blip {
    let cfg = Config::from_json(&std::fs::read_to_string(fixtures().join("config.json")).unwrap())
        .unwrap();
    let bytes = std::fs::read(fixtures().join("model.safetensors")).unwrap();
    let vb = VarBuilder::from_slice_safetensors(&bytes, DType::F32, &Device::Cpu).unwrap();
    Blip::new(vb, &cfg).unwrap()
}

#[test]
fn blip_vision_and_logits_match_transformers() {
    let r = reference();
    for portable in [false, true] {
        let run = || {
            let m = tiny_model();
            let v = m.vision(&r["pixel_values"]).unwrap();
            let ids = r["logits_input_ids"].to_dtype(DType::U32).unwrap();
            let logits = m.forward(&r["pixel_values"], &ids).unwrap();
            (v, logits)
        };
        let (v, logits) = if portable {
            roundtrip::kernels::with_portable_ops(run)
        } else {
            run()
        };
        let tag = if portable { " (portable)" } else { "" };
        check(
            &format!("blip vision last_hidden_state{tag}"),
            &v.last_hidden_state,
            &r["vision_last_hidden_state"],
        );
        check(
            &format!("blip vision pooler_output{tag}"),
            &v.pooler_output,
            &r["vision_pooler_output"],
        );
        check(&format!("blip logits{tag}"), &logits, &r["logits"]);
    }
}

/// transformers' output rows are our ids followed by a fill (pad for greedy, `pad or sep` for
/// beams) up to the batch's longest.
fn check_ids(name: &str, ours: &[Vec<u32>], reference: &Tensor, fill: u32) {
    let rows: Vec<Vec<i64>> = reference.to_vec2().unwrap();
    assert_eq!(ours.len(), rows.len(), "{name}");
    let longest = ours.iter().map(Vec::len).max().unwrap();
    for (i, (o, row)) in ours.iter().zip(&rows).enumerate() {
        assert_eq!(
            row.len(),
            longest,
            "{name} row {i}: lengths {o:?} vs {row:?}"
        );
        let mut padded: Vec<i64> = o.iter().map(|&x| x as i64).collect();
        padded.resize(row.len(), fill as i64);
        assert_eq!(&padded, row, "{name} row {i}");
    }
    eprintln!(
        "{name}: ids identical ({} rows, lengths {:?})",
        ours.len(),
        ours.iter().map(Vec::len).collect::<Vec<_>>()
    );
}

#[test]
fn blip_greedy_and_beam_ids_and_captions_match_transformers() {
    let r = reference();
    let m = meta();
    let g = &m["generation"];
    let prompt = g["prompt"].as_str().unwrap();
    let greedy_fill = g["greedy_fill"].as_u64().unwrap() as u32;
    let beam_fill = g["beam_fill"].as_u64().unwrap() as u32;
    let imgs = images();
    for (with_prompt, suffix) in [(false, ""), (true, "_prompt")] {
        let decoding = BlipDecoding {
            prompt: with_prompt.then(|| prompt.to_owned()),
            max_length: g["max_length"].as_u64().unwrap() as usize,
        };
        let c = captioner(&fixtures(), decoding);
        if with_prompt {
            // [CLS] a picture of [SEP] -> [DEC] a picture of
            let ids: Vec<u32> = g["prompt_ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() as u32)
                .collect();
            let mut want = ids[..ids.len() - 1].to_vec();
            want[0] = g["bos_token_id"].as_u64().unwrap() as u32;
            assert_eq!(c.prompt_ids(), want);
        } else {
            assert_eq!(c.prompt_ids(), [g["bos_token_id"].as_u64().unwrap() as u32]);
        }
        for (beam, key, fill) in [(1, "greedy", greedy_fill), (3, "beam3", beam_fill)] {
            let key = format!("{key}{suffix}");
            let ids = c.generate_ids(&imgs, beam, &Device::Cpu).unwrap();
            check_ids(&key, &ids, &r[&key], fill);
            let want: Vec<&str> = m["texts"][&key]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t.as_str().unwrap())
                .collect();
            let got: Vec<String> = ids.iter().map(|i| c.decode(i).unwrap()).collect();
            assert_eq!(got, want, "{key}");
            // The same through the file path of `caption` / `eval`.
            let paths: Vec<PathBuf> = ["image_a.png", "image_b.png", "image_c.png"]
                .iter()
                .map(|n| fixtures().join(n))
                .collect();
            assert_eq!(c.caption_images(&paths, beam, &Device::Cpu).unwrap(), want);
        }
    }
}

#[test]
fn blip_decoding_matches_the_processor_with_and_without_cleanup() {
    let m = meta();
    let c = captioner(&fixtures(), BlipDecoding::default());
    let tmp = tempfile::tempdir().unwrap();
    crate::common::copy_dir(&fixtures(), tmp.path());
    std::fs::write(
        tmp.path().join("tokenizer_config.json"),
        r#"{"clean_up_tokenization_spaces": true}"#,
    )
    .unwrap();
    let cleaned = captioner(tmp.path(), BlipDecoding::default());
    assert_ne!(
        c.fingerprint, cleaned.fingerprint,
        "tokenizer_config.json is part of the model"
    );
    for case in m["decode_cases"].as_array().unwrap() {
        let ids: Vec<u32> = case["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        assert_eq!(c.decode(&ids).unwrap(), case["text"].as_str().unwrap());
        assert_eq!(
            cleaned.decode(&ids).unwrap(),
            case["text_cleaned"].as_str().unwrap()
        );
    }
}

#[test]
fn blip_decoding_settings_are_part_of_the_fingerprint_and_checked() {
    let a = captioner(&fixtures(), BlipDecoding::default());
    let b = captioner(
        &fixtures(),
        BlipDecoding {
            prompt: Some("a picture of".into()),
            max_length: 20,
        },
    );
    let c = captioner(
        &fixtures(),
        BlipDecoding {
            prompt: None,
            max_length: 12,
        },
    );
    assert_ne!(a.fingerprint, b.fingerprint);
    assert_ne!(a.fingerprint, c.fingerprint);
    assert!(a.check_beam(33).is_ok() && a.check_beam(34).is_err() && a.check_beam(0).is_err());
    let locator = Locator::offline(&fixtures());
    let model = locator
        .open(&ModelRef::parse(fixtures().to_str().unwrap()).unwrap())
        .unwrap();
    let e = BlipCaptioner::load(
        &model,
        BlipDecoding {
            prompt: Some("a picture of".into()),
            max_length: 4,
        },
        &Device::Cpu,
    )
    .err()
    .unwrap()
    .to_string();
    assert!(e.contains("--max-length 4") && e.contains("prompt"), "{e}");
}

/// A VarBuilder backend that records every tensor asked for and hands out a broadcast zero of
/// the shape (no memory), so that a full-size model can be built in a test.
#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<Requested>>);

/// Each tensor asked for: its name and shape.
type Requested = Vec<(String, Vec<usize>)>;

impl candle_nn::var_builder::SimpleBackend for Recorder {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        self.0
            .lock()
            .unwrap()
            .push((name.to_owned(), s.dims().to_vec()));
        Tensor::zeros((), dtype, dev)?.broadcast_as(s)
    }

    fn get_unchecked(&self, name: &str, _: DType, _: &Device) -> candle_core::Result<Tensor> {
        candle_core::bail!("unchecked get of {name}")
    }

    fn contains_tensor(&self, _: &str) -> bool {
        true
    }
}

/// The keys of the published config.json of Salesforce/blip-image-captioning-base that matter
/// (it lists every key, transformers 4.26's full dump; its text_config has no
/// encoder_hidden_size, which BlipConfig sets from the vision width).
const BASE_CONFIG: &str = r#"{
  "architectures": ["BlipForConditionalGeneration"], "image_text_hidden_size": 256,
  "model_type": "blip", "projection_dim": 512,
  "text_config": {"bos_token_id": 30522, "eos_token_id": 2, "hidden_act": "gelu",
    "hidden_size": 768, "intermediate_size": 3072, "is_decoder": true, "layer_norm_eps": 1e-12,
    "max_length": 20, "max_position_embeddings": 512, "model_type": "blip_text_model",
    "num_attention_heads": 12, "num_hidden_layers": 12, "pad_token_id": 0, "projection_dim": 768,
    "sep_token_id": 102, "tie_word_embeddings": true, "vocab_size": 30524, "decoder_start_token_id": null},
  "vision_config": {"hidden_act": "gelu", "hidden_size": 768, "image_size": 384,
    "intermediate_size": 3072, "layer_norm_eps": 1e-05, "model_type": "blip_vision_model",
    "num_attention_heads": 12, "num_channels": 3, "num_hidden_layers": 12, "patch_size": 16,
    "projection_dim": 512, "bos_token_id": null}
}"#;

/// blip-image-captioning-large: a ViT-L/16 (1024 wide, 24 layers, 16 heads) under the same
/// BERT-base decoder, whose cross-attention reads 1024-wide image embeddings.
const LARGE_CONFIG: &str = r#"{
  "architectures": ["BlipForConditionalGeneration"], "model_type": "blip", "projection_dim": 512,
  "text_config": {"bos_token_id": 30522, "encoder_hidden_size": 1024, "hidden_size": 768,
    "intermediate_size": 3072, "layer_norm_eps": 1e-12, "max_position_embeddings": 512,
    "num_attention_heads": 12, "num_hidden_layers": 12, "pad_token_id": 0, "sep_token_id": 102,
    "vocab_size": 30524},
  "vision_config": {"hidden_size": 1024, "image_size": 384, "intermediate_size": 4096,
    "layer_norm_eps": 1e-05, "num_attention_heads": 16, "num_hidden_layers": 24,
    "patch_size": 16}
}"#;

fn names_and_shapes(config: &str) -> HashMap<String, Vec<usize>> {
    let cfg = Config::from_json(config).unwrap();
    let rec = Recorder::default();
    let vb = VarBuilder::from_backend(Box::new(rec.clone()), DType::F16, Device::Cpu);
    Blip::new(vb, &cfg).unwrap();
    let list = rec.0.lock().unwrap().clone();
    let map: HashMap<String, Vec<usize>> = list.iter().cloned().collect();
    assert_eq!(map.len(), list.len(), "a tensor was asked for twice");
    map
}

#[test]
fn blip_full_size_base_and_large_ask_for_the_published_names_and_shapes() {
    for (config, vision_width, vision_layers, mlp) in
        [(BASE_CONFIG, 768, 12, 3072), (LARGE_CONFIG, 1024, 24, 4096)]
    {
        let m = names_and_shapes(config);
        // Vision: 4 embeddings, 12 per layer, post_layernorm's 2; text: 4 embeddings, 26 per
        // layer (query, key, value, output dense and LayerNorm of both attentions, intermediate,
        // output dense and LayerNorm), the head's dense, LayerNorm and bias (the output weights
        // are the tied word embeddings).
        assert_eq!(
            m.len(),
            4 + 12 * vision_layers + 2 + 4 + 26 * 12 + 5,
            "{m:?}"
        );
        let shape = |n: &str| {
            m.get(n)
                .unwrap_or_else(|| panic!("{n} not asked for"))
                .clone()
        };
        let v = vision_width;
        assert_eq!(shape("vision_model.embeddings.class_embedding"), [1, 1, v]);
        assert_eq!(
            shape("vision_model.embeddings.patch_embedding.weight"),
            [v, 3, 16, 16]
        );
        assert_eq!(
            shape("vision_model.embeddings.position_embedding"),
            [1, 577, v]
        );
        let last = vision_layers - 1;
        assert_eq!(
            shape(&format!(
                "vision_model.encoder.layers.{last}.self_attn.qkv.weight"
            )),
            [3 * v, v]
        );
        assert_eq!(
            shape(&format!(
                "vision_model.encoder.layers.{last}.mlp.fc2.weight"
            )),
            [v, mlp]
        );
        assert_eq!(shape("vision_model.post_layernorm.bias"), [v]);
        assert_eq!(
            shape("text_decoder.bert.embeddings.word_embeddings.weight"),
            [30524, 768]
        );
        assert_eq!(
            shape("text_decoder.bert.embeddings.position_embeddings.weight"),
            [512, 768]
        );
        assert_eq!(
            shape("text_decoder.bert.encoder.layer.11.crossattention.self.key.weight"),
            [768, v]
        );
        assert_eq!(
            shape("text_decoder.bert.encoder.layer.0.attention.output.LayerNorm.weight"),
            [768]
        );
        assert_eq!(
            shape("text_decoder.bert.encoder.layer.5.intermediate.dense.weight"),
            [3072, 768]
        );
        assert_eq!(shape("text_decoder.cls.predictions.bias"), [30524]);
        assert_eq!(
            shape("text_decoder.cls.predictions.transform.LayerNorm.bias"),
            [768]
        );
        assert!(!m.contains_key("text_decoder.cls.predictions.decoder.weight"));
        eprintln!(
            "blip full size (vision {v} x {vision_layers}): {} tensors, the published names",
            m.len()
        );
    }
    // Without tied embeddings the head's own weight is read.
    let untied = BASE_CONFIG.replace(
        "\"tie_word_embeddings\": true",
        "\"tie_word_embeddings\": false",
    );
    let m = names_and_shapes(&untied);
    assert_eq!(
        m["text_decoder.cls.predictions.decoder.weight"],
        [30524, 768]
    );
}
