//! The merge-model LSTM decoder against its torch.nn twin (tests/fixtures/make_decoder_fixtures.py):
//! logits, masked cross-entropy, every parameter's gradient, and greedy decoding.

use crate::common::rel_err;

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use roundtrip::models::lstm_decoder::{Config, LstmDecoder};

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/decoder_tiny");

fn load(name: &str) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(format!("{DIR}/{name}"), &Device::Cpu).unwrap()
}

fn cfg() -> Config {
    Config {
        vocab_size: 13,
        feature_dim: 10,
        embed: 8,
        hidden: 6,
        dropout: 0.5,
        max_length: 7,
    }
}

/// The decoder with the fixture weights as trainable Vars (so gradients and updates reach them).
fn trainable(weights: &HashMap<String, Tensor>) -> (VarMap, LstmDecoder) {
    let varmap = VarMap::new();
    {
        let mut data = varmap.data().lock().unwrap();
        for (k, v) in weights {
            data.insert(k.clone(), Var::from_tensor(v).unwrap());
        }
    }
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    let dec = LstmDecoder::new(vb, &cfg()).unwrap();
    (varmap, dec)
}

#[test]
fn logits_loss_and_gradients_match_pytorch() {
    let weights = load("model.safetensors");
    let r = load("reference.safetensors");
    let (varmap, dec) = trainable(&weights);
    let words = r["words"].to_dtype(DType::U32).unwrap();
    let targets = r["targets"].to_dtype(DType::U32).unwrap();
    let logits = dec.forward(&r["features"], &words, None).unwrap();
    let e = rel_err(&logits, &r["logits"]);
    assert!(e < 1e-5, "logits rel err {e}");
    let loss = dec.loss(&logits, &targets).unwrap();
    let e = rel_err(&loss.reshape(1).unwrap(), &r["loss"]);
    assert!(e < 1e-5, "loss rel err {e}");
    let grads = loss.backward().unwrap();
    let data = varmap.data().lock().unwrap();
    for (name, var) in data.iter() {
        let want = &r[&format!("grad_{name}")];
        let got = grads
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("no gradient for {name}"));
        let e = rel_err(got, want);
        assert!(e < 1e-4, "gradient of {name}: rel err {e}");
    }
}

#[test]
fn greedy_and_width_one_beam_decode_as_pytorch() {
    let r = load("reference.safetensors");
    let vb = VarBuilder::from_tensors(load("model.safetensors"), DType::F32, &Device::Cpu);
    let dec = LstmDecoder::new(vb, &cfg()).unwrap();
    let want: Vec<Vec<i64>> = r["greedy"].to_vec2().unwrap();
    let want: Vec<Vec<u32>> = want
        .iter()
        .map(|row| row.iter().filter(|&&w| w >= 0).map(|&w| w as u32).collect())
        .collect();
    assert_eq!(dec.greedy(&r["features"], 1, 2).unwrap(), want);
    for (i, w) in want.iter().enumerate() {
        let f = r["features"].narrow(0, i, 1).unwrap();
        assert_eq!(&dec.beam(&f, 1, 2, 1).unwrap(), w, "beam width 1 is greedy");
        let wide = dec.beam(&f, 1, 2, 3).unwrap();
        assert!(
            wide.len() <= cfg().max_length && wide.iter().all(|&w| w != 2 && w < 13),
            "{wide:?}"
        );
    }
}

#[test]
fn updating_trainable_parameters_changes_the_output() {
    // Every parameter, the LSTM biases included, must act through its Var at each forward.
    let weights = load("model.safetensors");
    let r = load("reference.safetensors");
    let words = r["words"].to_dtype(DType::U32).unwrap();
    for name in [
        "lstm.bias_ih_l0",
        "lstm.bias_hh_l0",
        "lstm.weight_hh_l0",
        "output.bias",
    ] {
        let (varmap, dec) = trainable(&weights);
        let before = dec.forward(&r["features"], &words, None).unwrap();
        let var = varmap.data().lock().unwrap()[name].clone();
        var.set(&(var.as_tensor() + 0.5).unwrap()).unwrap();
        let after = dec.forward(&r["features"], &words, None).unwrap();
        assert!(
            rel_err(&after, &before) > 1e-3,
            "changing {name} did not change the logits"
        );
    }
}
