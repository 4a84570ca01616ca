//! A trainable CLIP with transformers' initialisation, drawn on the host from a seed.

use candle_core::{DType, Device, Result, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::Distribution;

use crate::models::clip::{ClipConfig, ClipModel};

/// transformers' `CLIPConfig.logit_scale_init_value`: ln(1 / 0.07).
pub const LOGIT_SCALE_INIT: f64 = 2.6592;

/// How one tensor starts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Init {
    Normal(f64),
    Const(f64),
}

/// transformers' `CLIPPreTrainedModel._init_weights` (initializer_factor 1, initializer_range
/// 0.02) by tensor name: token and position embeddings N(0, 0.02); class embedding N(0, d^-1/2);
/// patch embedding N(0, 0.02); q/k/v N(0, d^-1/2 (2 L)^-1/2), out_proj N(0, d^-1/2); fc1
/// N(0, (2 d)^-1/2), fc2 N(0, d^-1/2 (2 L)^-1/2); projections N(0, d^-1/2) of their tower's
/// width; LayerNorm weights 1; biases 0; logit_scale 2.6592.
pub fn init_for(name: &str, cfg: &ClipConfig) -> Init {
    let (d, layers) = if name.starts_with("vision_model.") || name == "visual_projection.weight" {
        (cfg.vision.hidden_size, cfg.vision.num_hidden_layers)
    } else {
        (cfg.text.hidden_size, cfg.text.num_hidden_layers)
    };
    let (d, l) = (d as f64, layers.max(1) as f64);
    let in_proj = d.powf(-0.5) * (2.0 * l).powf(-0.5);
    if name == "logit_scale" {
        return Init::Const(LOGIT_SCALE_INIT);
    }
    if name.ends_with(".bias") {
        return Init::Const(0.0);
    }
    let norm = ["layer_norm", "layrnorm", "layernorm"];
    if norm.iter().any(|n| name.contains(n)) {
        return Init::Const(1.0);
    }
    let std = if name.ends_with("class_embedding")
        || name.ends_with("projection.weight")
        || name.contains("self_attn.out_proj")
    {
        d.powf(-0.5)
    } else if name.contains("self_attn.") || name.contains("mlp.fc2") {
        in_proj
    } else if name.contains("mlp.fc1") {
        (2.0 * d).powf(-0.5)
    } else {
        // token, position and patch embeddings
        0.02
    };
    Init::Normal(std)
}

/// A trainable CLIP: the model (reading its weights from `varmap`), the map, and the parameters
/// sorted by name.
pub struct Trainable {
    pub model: ClipModel,
    pub varmap: VarMap,
    pub params: Vec<(String, Var)>,
}

impl Trainable {
    /// The `logit_scale` variable.
    pub fn logit_scale(&self) -> Result<&Var> {
        self.params
            .iter()
            .find(|(n, _)| n == "logit_scale")
            .map(|(_, v)| v)
            .ok_or_else(|| candle_core::Error::Msg("the model has no logit_scale".into()))
    }

    /// Current weights under transformers' names.
    pub fn weights(&self) -> std::collections::HashMap<String, Tensor> {
        self.params
            .iter()
            .map(|(k, v)| (k.clone(), v.as_tensor().detach()))
            .collect()
    }

    pub fn parameter_count(&self) -> usize {
        self.params.iter().map(|(_, v)| v.elem_count()).sum()
    }
}

/// Builds a trainable CLIP (f32) with [`init_for`], drawing every normal tensor in name order
/// from one ChaCha8 stream of `seed` (stream 0; training epochs use the others).
pub fn init_clip(cfg: &ClipConfig, seed: u64, device: &Device) -> Result<Trainable> {
    let varmap = VarMap::new();
    // Building the model creates every variable with its name and shape (with candle's own
    // unseeded init); each is then overwritten from the seeded host stream. The model keeps
    // reading the same variables, so it sees the new values.
    let model = ClipModel::new(VarBuilder::from_varmap(&varmap, DType::F32, device), cfg)?;
    let mut params: Vec<(String, Var)> = {
        let data = varmap
            .data()
            .lock()
            .map_err(|_| candle_core::Error::Msg("poisoned var map".into()))?;
        data.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    };
    params.sort_by(|a, b| a.0.cmp(&b.0));
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    for (name, var) in &params {
        let shape = var.shape().clone();
        let n = shape.elem_count();
        let values: Vec<f32> = match init_for(name, cfg) {
            Init::Const(c) => vec![c as f32; n],
            Init::Normal(std) => {
                let normal = rand_distr::Normal::new(0f32, std as f32)
                    .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
                (0..n).map(|_| normal.sample(&mut rng)).collect()
            }
        };
        var.set(&Tensor::from_vec(values, shape, device)?)?;
    }
    Ok(Trainable {
        model,
        varmap,
        params,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_rules_follow_transformers() {
        let mut cfg = ClipConfig::vit_b32();
        cfg.vision.hidden_size = 64;
        cfg.vision.num_hidden_layers = 2;
        cfg.text.hidden_size = 32;
        cfg.text.num_hidden_layers = 8;
        let n = |s: f64| Init::Normal(s);
        let cases = [
            ("logit_scale", Init::Const(LOGIT_SCALE_INIT)),
            ("text_model.embeddings.token_embedding.weight", n(0.02)),
            ("vision_model.embeddings.patch_embedding.weight", n(0.02)),
            ("vision_model.embeddings.class_embedding", n(0.125)),
            ("vision_model.pre_layrnorm.weight", Init::Const(1.0)),
            ("text_model.final_layer_norm.bias", Init::Const(0.0)),
            (
                "vision_model.encoder.layers.1.self_attn.q_proj.weight",
                n(0.125 * 0.5),
            ),
            (
                "text_model.encoder.layers.0.self_attn.out_proj.weight",
                n(32f64.powf(-0.5)),
            ),
            ("text_model.encoder.layers.0.mlp.fc1.weight", n(0.125)),
            (
                "text_model.encoder.layers.0.mlp.fc2.weight",
                n(32f64.powf(-0.5) * 0.25),
            ),
            ("text_model.encoder.layers.0.mlp.fc2.bias", Init::Const(0.0)),
            ("visual_projection.weight", n(0.125)),
            ("text_projection.weight", n(32f64.powf(-0.5))),
        ];
        for (name, want) in cases {
            match (init_for(name, &cfg), want) {
                (Init::Normal(a), Init::Normal(b)) => assert!((a - b).abs() < 1e-12, "{name}"),
                (a, b) => assert_eq!(a, b, "{name}"),
            }
        }
    }

    /// Training runs on f32 on the CPU, where the image tower takes the fused attention and
    /// QuickGELU kernels (input-only backward) while LayerNorm and the linear layers use basic
    /// ops on the variables; the same model in f64 takes basic ops everywhere. Their losses and
    /// every parameter's gradient agree.
    #[test]
    fn trainable_gradients_match_the_basic_op_path() {
        let dev = Device::Cpu;
        let mut cfg = ClipConfig::vit_b32();
        cfg.text.vocab_size = 10;
        cfg.text.hidden_size = 16;
        cfg.text.intermediate_size = 32;
        cfg.text.num_hidden_layers = 2;
        cfg.text.num_attention_heads = 2;
        cfg.text.max_position_embeddings = 6;
        cfg.text.bos_token_id = 8;
        cfg.text.eos_token_id = 9;
        cfg.vision.image_size = 16;
        cfg.vision.patch_size = 8;
        cfg.vision.hidden_size = 16;
        cfg.vision.intermediate_size = 32;
        cfg.vision.num_hidden_layers = 2;
        cfg.vision.num_attention_heads = 2;
        cfg.projection_dim = 8;
        let t = init_clip(&cfg, 7, &dev).unwrap();
        let vm = VarMap::new();
        {
            let mut data = vm.data().lock().unwrap();
            for (n, v) in &t.params {
                let x = v.as_tensor().to_dtype(DType::F64).unwrap();
                data.insert(n.clone(), Var::from_tensor(&x).unwrap());
            }
        }
        let m64 = ClipModel::new(VarBuilder::from_varmap(&vm, DType::F64, &dev), &cfg).unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let px: Vec<f32> = (0..3 * 3 * 16 * 16)
            .map(|_| rand::Rng::random_range(&mut rng, -2.0..2.0))
            .collect();
        let px = Tensor::from_vec(px, (3, 3, 16, 16), &dev).unwrap();
        let ids = Tensor::new(&[[8u32, 1, 2, 9], [8, 3, 9, 9], [8, 4, 5, 9]], &dev).unwrap();
        let loss = |m: &ClipModel, px: &Tensor, scale: &Tensor| {
            crate::clip_train::loss::contrastive_loss(
                &m.image_features(px).unwrap(),
                &m.text_features(&ids).unwrap(),
                scale,
                None,
            )
            .unwrap()
        };
        let l32 = loss(&t.model, &px, t.logit_scale().unwrap().as_tensor());
        let s64 = vm.data().lock().unwrap()["logit_scale"].clone();
        let l64 = loss(&m64, &px.to_dtype(DType::F64).unwrap(), s64.as_tensor());
        let (a, b) = (
            l32.to_scalar::<f32>().unwrap() as f64,
            l64.to_scalar::<f64>().unwrap(),
        );
        assert!((a - b).abs() < 1e-5 * b.abs(), "{a} vs {b}");
        let (g32, g64) = (l32.backward().unwrap(), l64.backward().unwrap());
        let data = vm.data().lock().unwrap();
        for (name, v) in &t.params {
            let flat = |x: &Tensor| -> Vec<f64> {
                x.to_dtype(DType::F64)
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1()
                    .unwrap()
            };
            let ga = flat(
                g32.get(v.as_tensor())
                    .unwrap_or_else(|| panic!("{name}: no grad")),
            );
            let gb = flat(g64.get(data[name].as_tensor()).unwrap());
            let scale = gb.iter().fold(0f64, |m, x| m.max(x.abs()));
            if name.ends_with("k_proj.bias") {
                // Adding the same vector to every key shifts a query's scores by a constant,
                // which softmax ignores: this gradient is exactly zero (up to rounding).
                assert!(scale < 1e-9, "{name}: {scale}");
                assert!(ga.iter().all(|x| x.abs() < 1e-5), "{name}");
                continue;
            }
            let err = ga
                .iter()
                .zip(&gb)
                .fold(0f64, |m, (x, y)| m.max((x - y).abs()));
            assert!(scale > 0.0, "{name}: zero gradient");
            assert!(err <= 1e-3 * scale, "{name}: rel err {}", err / scale);
        }
    }
}
