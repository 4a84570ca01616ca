//! The text decoder (transformers' `BlipTextLMHeadModel`): BERT with a cross-attention to the image
//! embeddings in every layer (post-LN: `LayerNorm(sublayer(x) + x)`), a causal self-attention, and
//! the LM head (`cls.predictions`: dense, activation, LayerNorm, then the word embeddings as output
//! weights, tied as transformers ties them, plus `cls.predictions.bias`).
//!
//! Decoding keeps a [`Cache`]: each layer's self-attention keys and values so far, and its
//! cross-attention keys and values, computed once per image. Rows of a batch are grouped by image
//! (`group` consecutive rows per image: 1 for greedy decoding, the beams for beam search): the
//! cross-attention runs each image's rows as the queries of one product against that image's keys,
//! so the image keys are neither recomputed per step nor copied per beam (transformers repeats the
//! image embeddings once per beam and projects each copy).

use candle_core::{DType, Device, Tensor, D};
use candle_nn::VarBuilder;

use super::config::TextConfig;
use super::Act;
use crate::models::clip::layers::{LayerNorm, Linear};

/// Decoding state: per layer the self-attention keys and values [rows, H, T, hd] and the
/// cross-attention keys and values [images, H, S, hd]; `group` rows per image.
#[derive(Debug, Clone)]
pub struct Cache {
    self_kv: Vec<Option<(Tensor, Tensor)>>,
    cross_kv: Vec<(Tensor, Tensor)>,
    /// Positions decoded so far.
    len: usize,
    /// Consecutive rows per image.
    group: usize,
}

impl Cache {
    /// Positions decoded so far.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Images in the cache.
    pub fn images(&self) -> candle_core::Result<usize> {
        match self.cross_kv.first() {
            Some((k, _)) => k.dim(0),
            None => Ok(0),
        }
    }

    /// Keeps the rows `rows` (indices into the current rows, repeats allowed: the rows of the
    /// next step), now `group` per image, and the images `images` (indices into the current
    /// images, in order). `rows` must list `group` rows for each kept image, in image order.
    pub fn select(
        &mut self,
        rows: &[u32],
        group: usize,
        images: &[u32],
    ) -> candle_core::Result<()> {
        if rows.len() != images.len() * group {
            candle_core::bail!(
                "BLIP cache: {} rows for {} images of {group} rows each",
                rows.len(),
                images.len()
            )
        }
        let device = match self.cross_kv.first() {
            Some((k, _)) => k.device().clone(),
            None => return Ok(()),
        };
        let rows_t = Tensor::new(rows, &device)?;
        for kv in self.self_kv.iter_mut().flatten() {
            *kv = (
                kv.0.index_select(&rows_t, 0)?,
                kv.1.index_select(&rows_t, 0)?,
            );
        }
        let current = self.images()?;
        let identity =
            images.len() == current && images.iter().enumerate().all(|(i, &j)| i == j as usize);
        if !identity {
            let images_t = Tensor::new(images, &device)?;
            for kv in self.cross_kv.iter_mut() {
                *kv = (
                    kv.0.index_select(&images_t, 0)?,
                    kv.1.index_select(&images_t, 0)?,
                );
            }
        }
        self.group = group;
        Ok(())
    }
}

/// `l(xs)`, for the few rows of a decoding step (an image's beams, at most 64 rows) on the CPU
/// as `W x^T`: gemm then streams the weight as it is stored instead of packing all of it for
/// every product (`x W^T` packs the whole weight per call: most of a step's time at batch 8).
fn linear(l: &Linear, xs: &Tensor) -> candle_core::Result<Tensor> {
    let dims = xs.dims();
    let (&k, lead) = dims
        .split_last()
        .ok_or_else(|| candle_core::Error::Msg("linear: scalar input".into()))?;
    let rows: usize = lead.iter().product();
    if rows > 64 || xs.dtype() != DType::F32 || !crate::kernels::native_kernels(xs.device()) {
        return l.forward(xs);
    }
    let y = l.weight.matmul(&xs.reshape((rows, k))?.t()?)?.t()?;
    let y = match &l.bias {
        Some(b) => y.broadcast_add(b)?,
        None => y.contiguous()?,
    };
    let mut out = lead.to_vec();
    out.push(l.weight.dim(0)?);
    y.reshape(out)
}

/// [N, T, H * hd] -> [N, H, T, hd].
fn heads(xs: &Tensor, h: usize) -> candle_core::Result<Tensor> {
    let (n, t, d) = xs.dims3()?;
    xs.reshape((n, t, h, d / h))?.transpose(1, 2)?.contiguous()
}

#[derive(Debug, Clone)]
struct TextLayer {
    /// `attention.self.{query,key,value}` stacked: [3 D, D].
    self_qkv: Linear,
    self_out: Linear,
    self_ln: LayerNorm,
    cross_query: Linear,
    /// `crossattention.self.{key,value}` stacked: [2 D, E].
    cross_kv: Linear,
    cross_out: Linear,
    cross_ln: LayerNorm,
    intermediate: Linear,
    output: Linear,
    output_ln: LayerNorm,
}

/// The query, key and value Linears of `vb` (`query`, `key`, `value`, or the last two only)
/// stacked into one.
fn stacked(
    vb: &VarBuilder,
    names: &[&str],
    in_dim: usize,
    out_dim: usize,
) -> candle_core::Result<Linear> {
    let mut ws = Vec::new();
    let mut bs = Vec::new();
    for n in names {
        let l = Linear::new(vb.pp(n), in_dim, out_dim, true)?;
        ws.push(l.weight);
        bs.extend(l.bias);
    }
    Ok(Linear::from_parts(
        Tensor::cat(&ws, 0)?,
        Some(Tensor::cat(&bs, 0)?),
    ))
}

impl TextLayer {
    fn new(vb: VarBuilder, c: &TextConfig) -> candle_core::Result<Self> {
        let (d, e, eps) = (c.hidden_size, c.encoder_hidden_size, c.layer_norm_eps);
        let att = vb.pp("attention");
        let cross = vb.pp("crossattention");
        Ok(Self {
            self_qkv: stacked(&att.pp("self"), &["query", "key", "value"], d, d)?,
            self_out: Linear::new(att.pp("output").pp("dense"), d, d, true)?,
            self_ln: LayerNorm::new(att.pp("output").pp("LayerNorm"), d, eps)?,
            cross_query: Linear::new(cross.pp("self").pp("query"), d, d, true)?,
            cross_kv: stacked(&cross.pp("self"), &["key", "value"], e, d)?,
            cross_out: Linear::new(cross.pp("output").pp("dense"), d, d, true)?,
            cross_ln: LayerNorm::new(cross.pp("output").pp("LayerNorm"), d, eps)?,
            intermediate: Linear::new(
                vb.pp("intermediate").pp("dense"),
                d,
                c.intermediate_size,
                true,
            )?,
            output: Linear::new(vb.pp("output").pp("dense"), c.intermediate_size, d, true)?,
            output_ln: LayerNorm::new(vb.pp("output").pp("LayerNorm"), d, eps)?,
        })
    }
}

/// transformers' `BlipTextLMHeadModel` (with `BlipTextModel` as `bert`, no pooler).
#[derive(Debug, Clone)]
pub(super) struct TextDecoder {
    word_embeddings: Tensor,
    position_embeddings: Tensor,
    embeddings_ln: LayerNorm,
    layers: Vec<TextLayer>,
    transform: Linear,
    transform_ln: LayerNorm,
    lm_head: Linear,
    act: Act,
    heads: usize,
    cfg: TextConfig,
}

impl TextDecoder {
    /// Tensor names under `text_decoder.` of the published checkpoint:
    /// `bert.embeddings.{word_embeddings, position_embeddings, LayerNorm}`,
    /// `bert.encoder.layer.{i}.{attention, crossattention}.{self.{query,key,value},
    /// output.{dense,LayerNorm}}`, `...intermediate.dense`, `...output.{dense,LayerNorm}`,
    /// `cls.predictions.{transform.dense, transform.LayerNorm, bias}` and, without tied
    /// embeddings, `cls.predictions.decoder.weight`.
    pub(super) fn new(vb: VarBuilder, c: &TextConfig) -> candle_core::Result<Self> {
        let d = c.hidden_size;
        let bert = vb.pp("bert");
        let emb = bert.pp("embeddings");
        let word_embeddings = emb.get((c.vocab_size, d), "word_embeddings.weight")?;
        let layers_vb = bert.pp("encoder").pp("layer");
        let pred = vb.pp("cls").pp("predictions");
        let lm_weight = if c.tie_word_embeddings {
            word_embeddings.clone()
        } else {
            pred.get((c.vocab_size, d), "decoder.weight")?
        };
        Ok(Self {
            position_embeddings: emb
                .get((c.max_position_embeddings, d), "position_embeddings.weight")?,
            embeddings_ln: LayerNorm::new(emb.pp("LayerNorm"), d, c.layer_norm_eps)?,
            layers: (0..c.num_hidden_layers)
                .map(|i| TextLayer::new(layers_vb.pp(i), c))
                .collect::<candle_core::Result<_>>()?,
            transform: Linear::new(pred.pp("transform").pp("dense"), d, d, true)?,
            transform_ln: LayerNorm::new(
                pred.pp("transform").pp("LayerNorm"),
                d,
                c.layer_norm_eps,
            )?,
            lm_head: Linear::from_parts(lm_weight, Some(pred.get(c.vocab_size, "bias")?)),
            word_embeddings,
            act: Act(c.hidden_act),
            heads: c.num_attention_heads,
            cfg: c.clone(),
        })
    }

    pub(super) fn config(&self) -> &TextConfig {
        &self.cfg
    }

    /// A cache for decoding against `image_embeds` [I, S, E]: each layer's cross-attention keys
    /// and values, once per image; `group` rows per image.
    pub(super) fn cache(&self, image_embeds: &Tensor, group: usize) -> candle_core::Result<Cache> {
        let (i, s, _) = image_embeds.dims3()?;
        let (h, d) = (self.heads, self.cfg.hidden_size);
        let cross_kv = self
            .layers
            .iter()
            .map(|l| {
                // [I, S, 2 D] -> [2, I, H, S, hd]
                let kv = l
                    .cross_kv
                    .forward(image_embeds)?
                    .reshape((i, s, 2, h, d / h))?
                    .permute((2, 0, 3, 1, 4))?
                    .contiguous()?;
                Ok((kv.get(0)?, kv.get(1)?))
            })
            .collect::<candle_core::Result<_>>()?;
        Ok(Cache {
            self_kv: vec![None; self.layers.len()],
            cross_kv,
            len: 0,
            group,
        })
    }

    /// The additive causal mask of `t` new positions after `past` cached ones: [t, past + t].
    fn causal_mask(t: usize, past: usize, device: &Device) -> candle_core::Result<Tensor> {
        let l = past + t;
        let m: Vec<f32> = (0..t)
            .flat_map(|i| (0..l).map(move |j| if j > past + i { f32::NEG_INFINITY } else { 0.0 }))
            .collect();
        Tensor::from_vec(m, (t, l), device)
    }

    /// softmax(q k^T / sqrt(hd) + mask) v for q [N, H, T, hd] and k, v [N, H, L, hd]: [N, T, D].
    fn attend(
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        mask: Option<&Tensor>,
    ) -> candle_core::Result<Tensor> {
        let (n, h, t, hd) = q.dims4()?;
        let scores = (q.matmul(&k.t()?)? / (hd as f64).sqrt())?;
        let scores = match mask {
            Some(m) => scores.broadcast_add(m)?,
            None => scores,
        };
        let probs = candle_nn::ops::softmax_last_dim(&scores)?;
        probs.matmul(v)?.transpose(1, 2)?.reshape((n, t, h * hd))
    }

    /// Runs `ids` [N, T] (the next T positions of each row) through the decoder, extending the
    /// cache: the last hidden state [N, T, D].
    pub(super) fn hidden(&self, ids: &Tensor, cache: &mut Cache) -> candle_core::Result<Tensor> {
        let (n, t) = ids.dims2()?;
        let (past, h) = (cache.len, self.heads);
        if past + t > self.cfg.max_position_embeddings {
            candle_core::bail!(
                "BLIP decoder: {} positions exceed max_position_embeddings {}",
                past + t,
                self.cfg.max_position_embeddings
            )
        }
        let images = cache.images()?;
        if n != images * cache.group {
            candle_core::bail!(
                "BLIP decoder: {n} rows for {images} images of {} rows each",
                cache.group
            )
        }
        let d = self.cfg.hidden_size;
        let words = self
            .word_embeddings
            .index_select(&ids.flatten_all()?, 0)?
            .reshape((n, t, d))?;
        let positions = self.position_embeddings.narrow(0, past, t)?;
        let mut xs = self
            .embeddings_ln
            .forward(&words.broadcast_add(&positions)?)?;
        let mask = if t > 1 {
            Some(Self::causal_mask(t, past, ids.device())?)
        } else {
            None
        };
        let g = cache.group;
        for (l, layer) in self.layers.iter().enumerate() {
            // Causal self-attention over the cached and the new positions.
            let qkv = linear(&layer.self_qkv, &xs)?;
            let q = heads(&qkv.narrow(D::Minus1, 0, d)?, h)?;
            let k = heads(&qkv.narrow(D::Minus1, d, d)?, h)?;
            let v = heads(&qkv.narrow(D::Minus1, 2 * d, d)?, h)?;
            let (k, v) = match &cache.self_kv[l] {
                None => (k, v),
                Some((pk, pv)) => (Tensor::cat(&[pk, &k], 2)?, Tensor::cat(&[pv, &v], 2)?),
            };
            let ctx = Self::attend(&q, &k, &v, mask.as_ref())?;
            cache.self_kv[l] = Some((k, v));
            xs = layer
                .self_ln
                .forward(&(linear(&layer.self_out, &ctx)? + &xs)?)?;
            // Cross-attention: an image's g rows x t positions are the queries of one product.
            let (ck, cv) = &cache.cross_kv[l];
            let q = linear(&layer.cross_query, &xs)?
                .reshape((images, g * t, h, d / h))?
                .transpose(1, 2)?
                .contiguous()?;
            let ctx = Self::attend(&q, ck, cv, None)?.reshape((n, t, d))?;
            xs = layer
                .cross_ln
                .forward(&(linear(&layer.cross_out, &ctx)? + &xs)?)?;
            let ff = linear(
                &layer.output,
                &self.act.forward(&linear(&layer.intermediate, &xs)?)?,
            )?;
            xs = layer.output_ln.forward(&(ff + &xs)?)?;
        }
        cache.len += t;
        Ok(xs)
    }

    /// The LM head: hidden states [.., D] -> logits [.., V].
    pub(super) fn logits(&self, hidden: &Tensor) -> candle_core::Result<Tensor> {
        let h = self.act.forward(&linear(&self.transform, hidden)?)?;
        linear(&self.lm_head, &self.transform_ln.forward(&h)?)
    }

    /// Logits [N, V] of the last of the new positions `ids` [N, T].
    pub(super) fn next_logits(
        &self,
        ids: &Tensor,
        cache: &mut Cache,
    ) -> candle_core::Result<Tensor> {
        let hidden = self.hidden(ids, cache)?;
        let t = hidden.dim(1)?;
        let last = hidden.narrow(1, t - 1, 1)?.squeeze(1)?;
        self.logits(&last)?.to_dtype(DType::F32)
    }
}
