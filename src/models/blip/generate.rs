//! Caption decoding as transformers' `BlipForConditionalGeneration.generate` does it: the decoder
//! starts from the prompt ids ([`Generation::prompt`]: `[bos]`, or the tokenised text prompt with
//! its `[CLS]` replaced by bos and its `[SEP]` dropped), stops a row at `sep_token_id`, and stops
//! everything at `max_length` ids in all (the prompt counted, transformers' `max_length`).
//!
//! - `num_beams == 1`: greedy (transformers' `_sample` without sampling): the argmax of each row's
//!   logits (the first on ties, as `torch.argmax`).
//! - `num_beams > 1`: transformers 5's beam search with its defaults (length_penalty 1.0,
//!   early_stopping False, one returned sequence): per image, the top 2 K continuations of the K
//!   running beams by accumulated log-probability; the best K that do not end take the next step;
//!   those that end at [SEP] (or at max_length) among the first K are candidates for the K
//!   finished hypotheses, scored by log-probability / generated length; an image stops when no
//!   running beam can beat its worst finished hypothesis any more (transformers' heuristic for
//!   early_stopping False: the best running score over the current length) or at max_length. The
//!   result is the best finished hypothesis. Arithmetic in f32 as transformers', including its
//!   -1e9 offsets.
//!
//! Images are decoded as one batch and independently of each other, as in transformers; a
//! finished image leaves the batch (transformers keeps computing it, padded). The image keys and
//! values are shared by an image's beams ([`super::Cache`]); the first step runs one row per image
//! (the K initial beams are identical and all but one start at -1e9 in transformers).

use candle_core::Tensor;

use super::Blip;

/// How to decode (transformers' `generate` arguments; the others at their defaults).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Generation {
    /// The decoder's first ids: bos, then the text prompt's tokens, if any.
    pub prompt: Vec<u32>,
    /// Most ids in all, the prompt included (transformers' `max_length`; its default is 20).
    pub max_length: usize,
    /// 1: greedy; more: beam search with that many beams.
    pub num_beams: usize,
}

/// Decodes each image of `image_embeds` [B, S, E] (`Blip::vision(..).last_hidden_state`): per
/// image, the prompt followed by the generated ids, through [SEP] when the caption ended there
/// (transformers returns the same ids, padded to the batch's longest).
pub fn generate(
    model: &Blip,
    image_embeds: &Tensor,
    g: &Generation,
) -> candle_core::Result<Vec<Vec<u32>>> {
    let text = &model.config().text_config;
    if g.prompt.is_empty() || g.max_length <= g.prompt.len() {
        candle_core::bail!(
            "BLIP generate: max_length {} must exceed the prompt's {} ids",
            g.max_length,
            g.prompt.len()
        )
    }
    if g.max_length > text.max_position_embeddings {
        candle_core::bail!(
            "BLIP generate: max_length {} exceeds the decoder's {} positions",
            g.max_length,
            text.max_position_embeddings
        )
    }
    if g.num_beams == 0 || 2 * g.num_beams > text.vocab_size {
        candle_core::bail!(
            "BLIP generate: {} beams need 1 to {} (half the vocabulary)",
            g.num_beams,
            text.vocab_size / 2
        )
    }
    if g.num_beams == 1 {
        greedy(model, image_embeds, g)
    } else {
        beam_search(model, image_embeds, g)
    }
}

/// The ids [rows, T] as a tensor on the embeddings' device.
fn ids_tensor(rows: &[&[u32]], like: &Tensor) -> candle_core::Result<Tensor> {
    let t = rows.first().map_or(0, |r| r.len());
    let flat: Vec<u32> = rows.iter().flat_map(|r| r.iter().copied()).collect();
    Tensor::from_vec(flat, (rows.len(), t), like.device())
}

/// Index of the first maximum.
fn argmax(row: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in row.iter().enumerate() {
        if v > row[best] {
            best = i;
        }
    }
    best as u32
}

fn greedy(model: &Blip, embeds: &Tensor, g: &Generation) -> candle_core::Result<Vec<Vec<u32>>> {
    let sep = model.config().text_config.sep_token_id;
    let b = embeds.dim(0)?;
    let mut seqs = vec![g.prompt.clone(); b];
    let mut cache = model.cache(embeds, 1)?;
    let prompt_rows = vec![g.prompt.as_slice(); b];
    let mut logits: Vec<Vec<f32>> = model
        .next_logits(&ids_tensor(&prompt_rows, embeds)?, &mut cache)?
        .to_vec2()?;
    // The images still decoding, in cache order.
    let mut active: Vec<usize> = (0..b).collect();
    loop {
        let mut keep = Vec::new();
        for (row, &img) in active.iter().enumerate() {
            let next = argmax(&logits[row]);
            seqs[img].push(next);
            if next != sep && seqs[img].len() < g.max_length {
                keep.push(row);
            }
        }
        if keep.is_empty() {
            return Ok(seqs);
        }
        if keep.len() < active.len() {
            let idx: Vec<u32> = keep.iter().map(|&r| r as u32).collect();
            cache.select(&idx, 1, &idx)?;
        }
        active = keep.iter().map(|&r| active[r]).collect();
        let last: Vec<u32> = active.iter().map(|&i| seqs[i][seqs[i].len() - 1]).collect();
        let ids = Tensor::from_vec(last, (active.len(), 1), embeds.device())?;
        logits = model.next_logits(&ids, &mut cache)?.to_vec2()?;
    }
}

/// `log_softmax` of one row in f32 (max-shifted, as torch).
fn log_softmax(row: &[f32]) -> Vec<f32> {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f32 = row.iter().map(|&v| (v - max).exp()).sum();
    let log_sum = sum.ln();
    row.iter().map(|&v| v - max - log_sum).collect()
}

/// The indices of the `k` largest values, largest first (the lower index first on ties).
fn top_k(values: &[f32], k: usize) -> Vec<usize> {
    let mut best: Vec<usize> = Vec::with_capacity(k + 1);
    for (i, &v) in values.iter().enumerate() {
        if best.len() == k && v <= values[best[k - 1]] {
            continue;
        }
        let at = best.partition_point(|&j| values[j] >= v);
        best.insert(at, i);
        best.truncate(k);
    }
    best
}

/// One image's beam search state.
struct Beams {
    /// Running hypotheses (ids so far, accumulated log-probability), best first.
    running: Vec<(Vec<u32>, f32)>,
    /// The K finished slots: ids, score, whether it holds a finished hypothesis.
    finished: Vec<(Vec<u32>, f32, bool)>,
    /// transformers' `is_early_stop_heuristic_unsatisfied`: improvement still possible.
    open: bool,
}

fn beam_search(
    model: &Blip,
    embeds: &Tensor,
    g: &Generation,
) -> candle_core::Result<Vec<Vec<u32>>> {
    let sep = model.config().text_config.sep_token_id;
    let (b, k) = (embeds.dim(0)?, g.num_beams);
    let p = g.prompt.len();
    let mut beams: Vec<Beams> = (0..b)
        .map(|_| Beams {
            running: vec![(g.prompt.clone(), 0.0)],
            finished: vec![(g.prompt.clone(), -1.0e9, false); k],
            open: true,
        })
        .collect();
    let mut cache = model.cache(embeds, 1)?;
    let prompt_rows = vec![g.prompt.as_slice(); b];
    let mut logits: Vec<Vec<f32>> = model
        .next_logits(&ids_tensor(&prompt_rows, embeds)?, &mut cache)?
        .to_vec2()?;
    let mut active: Vec<usize> = (0..b).collect();
    let mut cur_len = p;
    loop {
        // Rows of the next step (indices into this step's rows) and the images that continue.
        let mut next_rows: Vec<u32> = Vec::new();
        let mut next_images: Vec<u32> = Vec::new();
        let mut next_active = Vec::new();
        let mut row0 = 0;
        for (slot, &img) in active.iter().enumerate() {
            let st = &mut beams[img];
            let group = st.running.len();
            let v = logits[row0].len();
            let mut acc = Vec::with_capacity(group * v);
            for (beam, (_, score)) in st.running.iter().enumerate() {
                acc.extend(
                    log_softmax(&logits[row0 + beam])
                        .into_iter()
                        .map(|lp| lp + score),
                );
            }
            let top = top_k(&acc, 2 * k);
            let cands: Vec<(usize, u32, f32, bool)> = top
                .iter()
                .map(|&j| {
                    let tok = (j % v) as u32;
                    let hit = tok == sep || cur_len + 1 >= g.max_length;
                    (j / v, tok, acc[j], hit)
                })
                .collect();
            // The running beams of the next step: the best K that did not end.
            let penalised: Vec<f32> = cands
                .iter()
                .map(|&(_, _, s, hit)| if hit { s + -1.0e9 } else { s })
                .collect();
            let chosen = top_k(&penalised, k);
            // The finished hypotheses: candidates among the first K that ended, scored by
            // length-normalised log-probability, merged with the finished so far.
            let gen_len = (cur_len + 1 - p) as f32;
            let mut merged: Vec<(Vec<u32>, f32, bool)> = std::mem::take(&mut st.finished);
            for (j, &(beam, tok, s, hit)) in cands.iter().enumerate() {
                let mut score = s / gen_len;
                if !st.open {
                    score += -1.0e9;
                }
                let done = hit && j < k;
                if !done {
                    score += -1.0e9;
                }
                let mut ids = st.running[beam].0.clone();
                ids.push(tok);
                merged.push((ids, score, done));
            }
            let merged_scores: Vec<f32> = merged.iter().map(|m| m.1).collect();
            st.finished = top_k(&merged_scores, k)
                .into_iter()
                .map(|i| merged[i].clone())
                .collect();
            let running: Vec<(Vec<u32>, f32)> = chosen
                .iter()
                .map(|&j| {
                    let (beam, tok, _, _) = cands[j];
                    let mut ids = st.running[beam].0.clone();
                    ids.push(tok);
                    (ids, penalised[j])
                })
                .collect();
            let sources: Vec<usize> = chosen.iter().map(|&j| cands[j].0).collect();
            st.running = running;
            // transformers' early-stop heuristic, after the step (length cur_len + 1).
            let best_running = st.running[0].1 / (cur_len + 1 - p) as f32;
            let min_finished = st
                .finished
                .iter()
                .map(|f| f.1)
                .fold(f32::INFINITY, f32::min);
            let improvable = st.finished.iter().any(|f| {
                let worst = if f.2 { min_finished } else { -1.0e9 };
                best_running > worst
            });
            st.open = st.open && improvable;
            if st.open && cur_len + 1 < g.max_length {
                next_images.push(slot as u32);
                next_rows.extend(sources.iter().map(|&s| (row0 + s) as u32));
                next_active.push(img);
            }
            row0 += group;
        }
        cur_len += 1;
        if next_active.is_empty() {
            break;
        }
        cache.select(&next_rows, k, &next_images)?;
        active = next_active;
        let last: Vec<u32> = active
            .iter()
            .flat_map(|&i| beams[i].running.iter().map(|(ids, _)| ids[ids.len() - 1]))
            .collect();
        let ids = Tensor::from_vec(last, (active.len() * k, 1), embeds.device())?;
        logits = model.next_logits(&ids, &mut cache)?.to_vec2()?;
    }
    Ok(beams
        .into_iter()
        .map(|st| {
            st.finished
                .into_iter()
                .next()
                .map(|f| f.0)
                .unwrap_or_default()
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_is_sorted_and_prefers_lower_indices_on_ties() {
        let v = [0.5, 2.0, -1.0, 2.0, 1.0, 3.0];
        assert_eq!(top_k(&v, 3), [5, 1, 3]);
        assert_eq!(top_k(&v, 1), [5]);
        assert_eq!(top_k(&v, 10), [5, 1, 3, 4, 0, 2]);
        assert_eq!(argmax(&[1.0, 3.0, 3.0, 2.0]), 1);
        let lp = log_softmax(&[1.0, 2.0, 3.0]);
        let total: f32 = lp.iter().map(|x| x.exp()).sum();
        assert!((total - 1.0).abs() < 1e-6);
    }
}
