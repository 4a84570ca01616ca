//! The text tower (transformers' `CLIPTextTransformer`): token and position embeddings, the
//! encoder under a causal mask, `final_layer_norm`, pooling at the end token.

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;

use super::layers::{Encoder, EncoderDims, LayerNorm};
use super::{ClipTextConfig, TowerOutput};

#[derive(Debug, Clone)]
pub(super) struct TextTower {
    token_embedding: Tensor,
    position_embedding: Tensor,
    encoder: Encoder,
    final_layer_norm: LayerNorm,
    cfg: ClipTextConfig,
}

impl TextTower {
    pub(super) fn new(vb: VarBuilder, c: &ClipTextConfig) -> candle_core::Result<Self> {
        let d = c.hidden_size;
        let emb = vb.pp("embeddings");
        let dims = EncoderDims {
            hidden: d,
            intermediate: c.intermediate_size,
            heads: c.num_attention_heads,
            layers: c.num_hidden_layers,
            eps: c.layer_norm_eps,
            act: c.hidden_act,
        };
        Ok(Self {
            token_embedding: emb.get((c.vocab_size, d), "token_embedding.weight")?,
            position_embedding: emb
                .get((c.max_position_embeddings, d), "position_embedding.weight")?,
            encoder: Encoder::new(vb.pp("encoder"), &dims)?,
            final_layer_norm: LayerNorm::new(vb.pp("final_layer_norm"), d, c.layer_norm_eps)?,
            cfg: c.clone(),
        })
    }

    /// Pooled position per row, as transformers: the first `eos_token_id`, or argmax(ids) (first
    /// maximum) for legacy configs with `eos_token_id == 2`. A row without the end token is an
    /// error (transformers would silently pool position 0).
    fn pool_positions(&self, ids: &[Vec<u32>]) -> candle_core::Result<Vec<usize>> {
        let eos = self.cfg.eos_token_id;
        ids.iter()
            .enumerate()
            .map(|(row, ids)| {
                let pos = if eos == 2 {
                    ids.iter()
                        .enumerate()
                        .fold(None, |best: Option<(usize, u32)>, (i, &t)| match best {
                            Some((_, m)) if m >= t => best,
                            _ => Some((i, t)),
                        })
                        .map(|(i, _)| i)
                } else {
                    ids.iter().position(|&t| t == eos)
                };
                pos.ok_or_else(|| {
                    candle_core::Error::Msg(format!(
                        "CLIP text tower: row {row} of input_ids has no end token \
                         (eos_token_id {eos})"
                    ))
                })
            })
            .collect()
    }

    pub(super) fn forward(&self, input_ids: &Tensor) -> candle_core::Result<TowerOutput> {
        let (b, l) = input_ids.dims2()?;
        let c = &self.cfg;
        if l == 0 || l > c.max_position_embeddings {
            return Err(candle_core::Error::Msg(format!(
                "CLIP text tower: sequence length {l} outside 1..={}",
                c.max_position_embeddings
            )));
        }
        let ids = input_ids.to_dtype(DType::U32)?;
        let host = ids.to_vec2::<u32>()?;
        if let Some(&bad) = host.iter().flatten().find(|&&t| t as usize >= c.vocab_size) {
            return Err(candle_core::Error::Msg(format!(
                "CLIP text tower: token id {bad} >= vocab_size {}",
                c.vocab_size
            )));
        }
        let d = c.hidden_size;
        let xs = self
            .token_embedding
            .index_select(&ids.flatten_all()?, 0)?
            .reshape((b, l, d))?
            .broadcast_add(&self.position_embedding.narrow(0, 0, l)?)?;
        let mask = causal_mask(l, xs.dtype(), xs.device())?;
        let last = self.encoder.forward(&xs, Some(&mask))?;
        let last = self.final_layer_norm.forward(&last)?;
        let rows: Vec<u32> = self
            .pool_positions(&host)?
            .into_iter()
            .enumerate()
            .map(|(row, pos)| (row * l + pos) as u32)
            .collect();
        let rows = Tensor::new(rows.as_slice(), xs.device())?;
        let pooled = last.reshape((b * l, d))?.index_select(&rows, 0)?;
        Ok(TowerOutput {
            last_hidden_state: last,
            pooler_output: pooled,
        })
    }
}

/// [L, L] additive causal mask: 0 on and below the diagonal, the dtype's lowest value above (as
/// transformers). Padding is not masked: causality alone keeps real positions unaffected by it.
fn causal_mask(l: usize, dtype: DType, device: &Device) -> candle_core::Result<Tensor> {
    let lowest = match dtype {
        DType::F64 => f64::MIN,
        _ => f32::MIN as f64,
    };
    let m: Vec<f64> = (0..l)
        .flat_map(|i| (0..l).map(move |j| if j > i { lowest } else { 0.0 }))
        .collect();
    Tensor::from_vec(m, (l, l), device)?.to_dtype(dtype)
}
