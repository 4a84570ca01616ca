//! The two kinds of captioner training as the training driver sees them ([`Captioning`]): the
//! decoder on cached features of a frozen encoder ([`FrozenJob`]), or encoder and decoder end to
//! end ([`EndToEndJob`]). Both train the same decoder with the same loss and Adam; they differ in
//! what a batch holds and what the checkpoint and the best model keep.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::stderr::Bar;
use candle_core::{Device, Tensor, Var};
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use super::augment::{input_chw, Augmentation};
use super::model::TRAINED_ENCODER_DIR;
use super::vocab::Vocab;
use crate::dataset::Dataset;
use crate::fsutil::write_safetensors;
use crate::models::lstm_decoder::LstmDecoder;
use crate::models::trainable::TrainableEncoder;
use crate::train::{Adam, Finished, Trainer};

/// One line of `train_log.jsonl`.
#[derive(Debug, Serialize)]
pub struct EpochLog {
    pub epoch: usize,
    pub train_loss: f32,
    pub dev_loss: f32,
    pub best: bool,
    pub seconds: f64,
    /// Optimiser steps of the epoch (its seconds include the dev loss).
    pub steps: usize,
}

/// Caption token ids of every (image, caption) pair of a split; images index into `features`.
pub(super) fn samples(ds: &Dataset, names: &[String], vocab: &Vocab) -> Vec<(usize, Vec<u32>)> {
    names
        .iter()
        .enumerate()
        .flat_map(|(i, n)| ds.captions[n].iter().map(move |c| (i, vocab.encode(c))))
        .collect()
}

/// A padded batch: image rows, inputs ids[..-1] and targets ids[1..], post-padded with 0.
fn batch(
    items: &[&(usize, Vec<u32>)],
    device: &Device,
) -> candle_core::Result<(Tensor, Tensor, Tensor)> {
    let t = items
        .iter()
        .map(|(_, ids)| ids.len() - 1)
        .max()
        .unwrap_or(1);
    let mut inp = Vec::with_capacity(items.len() * t);
    let mut tgt = Vec::with_capacity(items.len() * t);
    for (_, ids) in items {
        for k in 0..t {
            inp.push(if k + 1 < ids.len() { ids[k] } else { 0 });
            tgt.push(ids.get(k + 1).copied().unwrap_or(0));
        }
    }
    let rows: Vec<u32> = items.iter().map(|(i, _)| *i as u32).collect();
    Ok((
        Tensor::new(rows, device)?,
        Tensor::from_vec(inp, (items.len(), t), device)?,
        Tensor::from_vec(tgt, (items.len(), t), device)?,
    ))
}

fn mean_loss(
    dec: &LstmDecoder,
    feats: &Tensor,
    data: &[(usize, Vec<u32>)],
    bs: usize,
    device: &Device,
) -> candle_core::Result<f32> {
    let (mut total, mut n) = (0f32, 0usize);
    for chunk in data.chunks(bs) {
        let refs: Vec<&(usize, Vec<u32>)> = chunk.iter().collect();
        let (rows, inp, tgt) = batch(&refs, device)?;
        let logits = dec.forward(&feats.index_select(&rows, 0)?, &inp, None)?;
        total += dec.loss(&logits, &tgt)?.to_scalar::<f32>()? * chunk.len() as f32;
        n += chunk.len();
    }
    Ok(total / n.max(1) as f32)
}

/// The decoder and its optimiser, shared by both kinds of training.
pub(super) struct Core {
    pub(super) decoder: LstmDecoder,
    /// The decoder's parameters (names as in model.safetensors).
    pub(super) params: Vec<(String, Var)>,
    pub(super) adam: Adam,
}

impl Core {
    /// Writes the decoder's parameters to `out/model.safetensors`.
    fn save_decoder(&self, out: &Path) -> anyhow::Result<()> {
        let weights: HashMap<String, Tensor> = self
            .params
            .iter()
            .map(|(k, v)| (k.clone(), v.as_tensor().detach()))
            .collect();
        write_safetensors(&out.join("model.safetensors"), &weights)
    }
}

/// What differs between the two kinds of training (the driver reaches them through
/// [`Captioning`]).
pub(super) trait Job {
    /// One epoch over the training split, drawing shuffling, augmentation and dropout from `rng`:
    /// the mean loss per caption and the number of optimiser steps; `bar` advances once per
    /// batch.
    fn epoch(&mut self, rng: &mut ChaCha8Rng, bar: &Bar) -> anyhow::Result<(f32, usize)>;
    /// Batches per epoch (the bar's steps; an epoch may skip a batch without captions).
    fn batches(&self) -> usize;
    fn dev_loss(&self) -> anyhow::Result<f32>;
    /// Writes the current model as the best one into `out`.
    fn save_best(&self, out: &Path, epoch: usize) -> anyhow::Result<()>;
    /// Everything an exact resume needs (parameters, Adam moments, buffers).
    fn state(&self) -> anyhow::Result<HashMap<String, Tensor>>;
    fn restore(&mut self, state: &HashMap<String, Tensor>) -> anyhow::Result<()>;
}

/// The decoder on cached features of a frozen encoder; batches of (image, caption) pairs.
pub(super) struct FrozenJob {
    pub(super) core: Core,
    pub(super) train_feats: Tensor,
    pub(super) dev_feats: Tensor,
    pub(super) train_data: Vec<(usize, Vec<u32>)>,
    pub(super) dev_data: Vec<(usize, Vec<u32>)>,
    pub(super) batch_size: usize,
    pub(super) device: Device,
}

impl Job for FrozenJob {
    fn batches(&self) -> usize {
        self.train_data.len().div_ceil(self.batch_size.max(1))
    }

    fn epoch(&mut self, rng: &mut ChaCha8Rng, bar: &Bar) -> anyhow::Result<(f32, usize)> {
        let mut order: Vec<usize> = (0..self.train_data.len()).collect();
        order.shuffle(rng);
        let (mut total, mut n, mut steps) = (0f32, 0usize, 0usize);
        for chunk in order.chunks(self.batch_size) {
            let items: Vec<&(usize, Vec<u32>)> =
                chunk.iter().map(|&i| &self.train_data[i]).collect();
            let (rows, inp, tgt) = batch(&items, &self.device)?;
            let feats = self.train_feats.index_select(&rows, 0)?;
            let logits = self.core.decoder.forward(&feats, &inp, Some(rng))?;
            let loss = self.core.decoder.loss(&logits, &tgt)?;
            self.core.adam.step(&loss.backward()?)?;
            total += loss.to_scalar::<f32>()? * chunk.len() as f32;
            n += chunk.len();
            steps += 1;
            bar.inc(1);
        }
        Ok((total / n.max(1) as f32, steps))
    }

    fn dev_loss(&self) -> anyhow::Result<f32> {
        Ok(mean_loss(
            &self.core.decoder,
            &self.dev_feats,
            &self.dev_data,
            self.batch_size,
            &self.device,
        )?)
    }

    fn save_best(&self, out: &Path, _epoch: usize) -> anyhow::Result<()> {
        self.core.save_decoder(out)
    }

    fn state(&self) -> anyhow::Result<HashMap<String, Tensor>> {
        Ok(self.core.adam.state()?)
    }

    fn restore(&mut self, state: &HashMap<String, Tensor>) -> anyhow::Result<()> {
        Ok(self.core.adam.restore(state)?)
    }
}

/// Prefix of the encoder's parameters among the optimiser's, and of its buffers, in
/// `checkpoint.safetensors`.
pub(super) const ENCODER_PREFIX: &str = "encoder.";
const BUFFER_PREFIX: &str = "buffer.encoder.";

/// Encoder and decoder end to end; batches of images, each with all its captions.
pub(super) struct EndToEndJob {
    pub(super) core: Core,
    pub(super) encoder: Box<dyn TrainableEncoder>,
    /// Training and dev images as RGB bytes at the encoder's input size.
    pub(super) train_images: Vec<Vec<u8>>,
    pub(super) dev_images: Vec<Vec<u8>>,
    /// Token ids of each training image's captions.
    pub(super) train_captions: Vec<Vec<Vec<u32>>>,
    pub(super) dev_data: Vec<(usize, Vec<u32>)>,
    pub(super) augmentation: Option<Augmentation>,
    pub(super) captions_per_image: Option<usize>,
    pub(super) batch_size: usize,
    pub(super) device: Device,
}

/// `n` items in consecutive batches of at most `bs`, as equal as possible (no batch of one image
/// for BatchNorm's statistics unless `n` is 1).
fn balanced_chunks(n: usize, bs: usize) -> Vec<std::ops::Range<usize>> {
    let batches = n.div_ceil(bs.max(1)).max(1);
    let (base, extra) = (n / batches, n % batches);
    let mut out = Vec::with_capacity(batches);
    let mut start = 0;
    for i in 0..batches {
        let len = base + usize::from(i < extra);
        out.push(start..start + len);
        start += len;
    }
    out
}

impl EndToEndJob {
    /// The encoder input [B, 3, S, S] of images `idx`, augmented from `rng` when given.
    fn inputs(
        &self,
        images: &[Vec<u8>],
        idx: &[usize],
        mut rng: Option<&mut ChaCha8Rng>,
    ) -> candle_core::Result<Tensor> {
        let s = self.encoder.input_size();
        let n = 3 * s * s;
        let mut data = vec![0f32; idx.len() * n];
        let norm = |v: f32, c: usize| self.encoder.normalise(v, c);
        for (out, &i) in data.chunks_exact_mut(n).zip(idx) {
            let aug = match (&self.augmentation, rng.as_deref_mut()) {
                (Some(a), Some(r)) => Some((a, r)),
                _ => None,
            };
            input_chw(&images[i], s, aug, &norm, out);
        }
        Tensor::from_vec(data, (idx.len(), 3, s, s), &self.device)
    }

    /// Eval-mode features of the dev images.
    fn dev_features(&self) -> candle_core::Result<Tensor> {
        let idx: Vec<usize> = (0..self.dev_images.len()).collect();
        let parts = idx
            .chunks(self.batch_size.max(1))
            .map(|c| {
                self.encoder
                    .forward_t(&self.inputs(&self.dev_images, c, None)?, false)
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        Tensor::cat(&parts, 0)
    }
}

impl Job for EndToEndJob {
    fn batches(&self) -> usize {
        balanced_chunks(self.train_images.len(), self.batch_size).len()
    }

    fn epoch(&mut self, rng: &mut ChaCha8Rng, bar: &Bar) -> anyhow::Result<(f32, usize)> {
        let mut order: Vec<usize> = (0..self.train_images.len()).collect();
        order.shuffle(rng);
        let (mut total, mut n, mut steps) = (0f32, 0usize, 0usize);
        for range in balanced_chunks(order.len(), self.batch_size) {
            let chunk = &order[range];
            let x = self.inputs(&self.train_images, chunk, Some(rng))?;
            let feats = self.encoder.forward_t(&x, true)?;
            let mut items: Vec<(usize, Vec<u32>)> = Vec::new();
            for (row, &i) in chunk.iter().enumerate() {
                let caps = &self.train_captions[i];
                match self.captions_per_image {
                    Some(k) if k < caps.len() => {
                        for j in rand::seq::index::sample(rng, caps.len(), k) {
                            items.push((row, caps[j].clone()));
                        }
                    }
                    _ => items.extend(caps.iter().map(|ids| (row, ids.clone()))),
                }
            }
            if items.is_empty() {
                continue;
            }
            let refs: Vec<&(usize, Vec<u32>)> = items.iter().collect();
            let (rows, inp, tgt) = batch(&refs, &self.device)?;
            let logits =
                self.core
                    .decoder
                    .forward(&feats.index_select(&rows, 0)?, &inp, Some(rng))?;
            let loss = self.core.decoder.loss(&logits, &tgt)?;
            self.core.adam.step(&loss.backward()?)?;
            total += loss.to_scalar::<f32>()? * items.len() as f32;
            n += items.len();
            steps += 1;
            bar.inc(1);
        }
        Ok((total / n.max(1) as f32, steps))
    }

    fn dev_loss(&self) -> anyhow::Result<f32> {
        Ok(mean_loss(
            &self.core.decoder,
            &self.dev_features()?,
            &self.dev_data,
            self.batch_size,
            &self.device,
        )?)
    }

    /// The encoder first, then the decoder: a run killed between the two renames has not
    /// written its checkpoint yet, so resuming redoes the epoch and both files again.
    fn save_best(&self, out: &Path, epoch: usize) -> anyhow::Result<()> {
        let about = format!(
            "Encoder trained end to end with the captioner in the parent folder by `roundtrip \
             train --train-encoder` (epoch {epoch}, the best dev loss). Tensor names are timm's; \
             `roundtrip` holds the geometry."
        );
        crate::models::trainable::save(
            self.encoder.as_ref(),
            &out.join(TRAINED_ENCODER_DIR),
            &about,
        )?;
        self.core.save_decoder(out)
    }

    fn state(&self) -> anyhow::Result<HashMap<String, Tensor>> {
        let mut state = self.core.adam.state()?;
        for (k, v) in self.encoder.store().buffers()? {
            state.insert(format!("{BUFFER_PREFIX}{k}"), v);
        }
        Ok(state)
    }

    fn restore(&mut self, state: &HashMap<String, Tensor>) -> anyhow::Result<()> {
        self.core.adam.restore(state)?;
        let buffers: HashMap<String, Tensor> = state
            .iter()
            .filter_map(|(k, v)| Some((k.strip_prefix(BUFFER_PREFIX)?.to_owned(), v.clone())))
            .collect();
        Ok(self.encoder.store().restore_buffers(&buffers)?)
    }
}

/// A captioner training as the driver sees it: one of the two jobs, saving into `out`.
pub(super) struct Captioning {
    pub(super) job: Box<dyn Job>,
    pub(super) out: PathBuf,
}

impl Trainer for Captioning {
    /// The mean loss per caption and the number of optimiser steps.
    type Trained = (f32, usize);
    type Dev = ();
    type Log = EpochLog;

    fn train_epoch(
        &mut self,
        _epoch: usize,
        rng: &mut ChaCha8Rng,
        bar: &Bar,
    ) -> anyhow::Result<(f32, usize)> {
        self.job.epoch(rng, bar)
    }

    fn evaluate(&mut self) -> anyhow::Result<(f64, ())> {
        Ok((f64::from(self.job.dev_loss()?), ()))
    }

    fn save_best(&mut self, epoch: usize) -> anyhow::Result<()> {
        self.job.save_best(&self.out, epoch)
    }

    fn state_tensors(&self) -> anyhow::Result<HashMap<String, Tensor>> {
        self.job.state()
    }

    fn load_state(&mut self, state: &HashMap<String, Tensor>) -> anyhow::Result<()> {
        self.job.restore(state)
    }

    fn log_line(&self, done: Finished<(f32, usize), ()>) -> anyhow::Result<EpochLog> {
        let (train_loss, steps) = done.trained;
        Ok(EpochLog {
            epoch: done.epoch,
            train_loss,
            // An f32 widened by `evaluate`: narrowing it back is exact.
            dev_loss: done.dev_loss as f32,
            best: done.best,
            seconds: done.seconds,
            steps,
        })
    }

    fn heartbeat(&self, l: &EpochLog) -> String {
        format!(
            "epoch {}: loss {:.4} dev {:.4} ({:.1} s, {} steps)",
            l.epoch, l.train_loss, l.dev_loss, l.seconds, l.steps
        )
    }

    fn bar_message(&self, l: &EpochLog) -> Option<String> {
        Some(format!("loss {:.3} dev {:.3}", l.train_loss, l.dev_loss))
    }
}

#[cfg(test)]
mod tests {
    use super::balanced_chunks;

    #[test]
    fn balanced_chunks_cover_everything_evenly() {
        for (n, bs) in [(49, 16), (48, 16), (1, 16), (17, 16), (100, 7), (0, 4)] {
            let c = balanced_chunks(n, bs);
            assert_eq!(c.first().map_or(0, |r| r.start), 0);
            assert_eq!(c.last().map_or(0, |r| r.end), n);
            assert!(c.windows(2).all(|w| w[0].end == w[1].start));
            assert!(c.iter().all(|r| r.len() <= bs));
            let (lo, hi) = (
                c.iter().map(|r| r.len()).min().unwrap(),
                c.iter().map(|r| r.len()).max().unwrap(),
            );
            assert!(hi - lo <= 1, "{n} {bs}: {c:?}");
            assert_eq!(c.len(), n.div_ceil(bs).max(1));
        }
    }
}
