//! The captioners' decoder: the "merge" model of Tanti et al. 2017 ("Where to put the image in an
//! image caption generator") as popularised by Brownlee's Flickr8k tutorial and used by the
//! original round-trip experiment. No published checkpoint: `roundtrip train` writes its own,
//! with PyTorch's names (`embedding.weight`, `lstm.weight_ih_l0`, ...), so a `torch.nn` twin
//! (tests/fixtures/make_decoder_fixtures.py) loads the same file.
//!
//! image feature -> dropout -> dense(hidden) ReLU ─┐
//! words -> embedding(embed) -> dropout -> LSTM(hidden) ─┴ add -> dense(hidden) ReLU -> dense(vocab)
//!
//! The LSTM runs over the whole caption with teacher forcing: its output at step t is the state
//! after the prefix words[..=t], exactly what the Keras original computes for each padded prefix.

use candle_core::{DType, Device, Result, Tensor, D};
use candle_nn::{Embedding, Linear, Module, VarBuilder};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Config {
    /// Words, index 0 being padding.
    pub vocab_size: usize,
    /// Size of the image feature (4096 for VGG16 fc2, 2048 for Xception).
    pub feature_dim: usize,
    pub embed: usize,
    /// LSTM width, also the width of the image branch and the decoder dense layer (they are added).
    pub hidden: usize,
    pub dropout: f64,
    /// Longest caption in tokens, `startseq` and `endseq` included.
    pub max_length: usize,
}

/// A single-layer LSTM with PyTorch's parameter layout (gates i, f, g, o).
#[derive(Debug, Clone)]
struct Lstm {
    w_ih: Tensor,
    w_hh: Tensor,
    b_ih: Tensor,
    b_hh: Tensor,
    hidden: usize,
}

/// LSTM state: hidden and cell, each [B, hidden].
#[derive(Debug, Clone)]
pub struct State {
    h: Tensor,
    c: Tensor,
}

impl Lstm {
    fn new(vb: VarBuilder, input: usize, hidden: usize) -> Result<Self> {
        let w_ih = vb.get((4 * hidden, input), "weight_ih_l0")?;
        let w_hh = vb.get((4 * hidden, hidden), "weight_hh_l0")?;
        let b_ih = vb.get(4 * hidden, "bias_ih_l0")?;
        let b_hh = vb.get(4 * hidden, "bias_hh_l0")?;
        Ok(Self {
            w_ih,
            w_hh,
            b_ih,
            b_hh,
            hidden,
        })
    }

    fn zero_state(&self, batch: usize, device: &Device, dtype: DType) -> Result<State> {
        let z = Tensor::zeros((batch, self.hidden), dtype, device)?;
        Ok(State { h: z.clone(), c: z })
    }

    /// One step from precomputed input gates `gx` [B, 4H].
    fn step(&self, gx: &Tensor, s: &State) -> Result<State> {
        let gates = (gx + s.h.matmul(&self.w_hh.t()?)?)?;
        let chunks = gates.chunk(4, 1)?;
        let i = candle_nn::ops::sigmoid(&chunks[0])?;
        let f = candle_nn::ops::sigmoid(&chunks[1])?;
        let g = chunks[2].tanh()?;
        let o = candle_nn::ops::sigmoid(&chunks[3])?;
        let c = ((f * &s.c)? + (i * g)?)?;
        let h = (o * c.tanh()?)?;
        Ok(State { h, c })
    }

    /// Input projections of every step at once: [B, T, E] -> [B, T, 4H]. Both biases are added
    /// on every call, so that updates of the trainable parameters are seen.
    fn input_gates(&self, x: &Tensor) -> Result<Tensor> {
        x.broadcast_matmul(&self.w_ih.t()?)?
            .broadcast_add(&(&self.b_ih + &self.b_hh)?)
    }

    /// Runs over a whole sequence: [B, T, E] -> hidden states [B, T, H].
    fn forward_seq(&self, x: &Tensor) -> Result<Tensor> {
        let (b, t, _) = x.dims3()?;
        let gx = self.input_gates(x)?;
        let mut s = self.zero_state(b, x.device(), x.dtype())?;
        let mut outs = Vec::with_capacity(t);
        for step in 0..t {
            s = self.step(&gx.narrow(1, step, 1)?.squeeze(1)?, &s)?;
            outs.push(s.h.clone());
        }
        Tensor::stack(&outs, 1)
    }
}

/// Inverted dropout with a mask drawn on the host from a seeded RNG (candle's CPU RNG cannot be
/// seeded). Identity when `rng` is `None` (evaluation).
pub fn dropout(x: &Tensor, p: f64, rng: Option<&mut ChaCha8Rng>) -> Result<Tensor> {
    let Some(rng) = rng else { return Ok(x.clone()) };
    if p <= 0.0 {
        return Ok(x.clone());
    }
    let keep = 1.0 - p;
    let scale = (1.0 / keep) as f32;
    let mask: Vec<f32> = (0..x.elem_count())
        .map(|_| if rng.random_bool(keep) { scale } else { 0.0 })
        .collect();
    x * Tensor::from_vec(mask, x.shape(), x.device())?.to_dtype(x.dtype())?
}

#[derive(Debug, Clone)]
pub struct LstmDecoder {
    image_dense: Linear,
    embedding: Embedding,
    lstm: Lstm,
    decoder_dense: Linear,
    output: Linear,
    cfg: Config,
}

impl LstmDecoder {
    pub fn new(vb: VarBuilder, cfg: &Config) -> Result<Self> {
        Ok(Self {
            image_dense: candle_nn::linear(cfg.feature_dim, cfg.hidden, vb.pp("image_dense"))?,
            embedding: candle_nn::embedding(cfg.vocab_size, cfg.embed, vb.pp("embedding"))?,
            lstm: Lstm::new(vb.pp("lstm"), cfg.embed, cfg.hidden)?,
            decoder_dense: candle_nn::linear(cfg.hidden, cfg.hidden, vb.pp("decoder_dense"))?,
            output: candle_nn::linear(cfg.hidden, cfg.vocab_size, vb.pp("output"))?,
            cfg: cfg.clone(),
        })
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// The image branch: [B, F] -> [B, H].
    fn image_branch(&self, features: &Tensor, rng: Option<&mut ChaCha8Rng>) -> Result<Tensor> {
        self.image_dense
            .forward(&dropout(features, self.cfg.dropout, rng)?)?
            .relu()
    }

    /// The head on (image branch + LSTM output): [.., H] -> [.., V] logits.
    fn head(&self, image: &Tensor, seq: &Tensor) -> Result<Tensor> {
        let merged = seq.broadcast_add(image)?;
        self.output
            .forward(&self.decoder_dense.forward(&merged)?.relu()?)
    }

    /// Teacher-forced logits [B, T, V] for `words` [B, T] (u32) given `features` [B, F].
    /// With `rng`, dropout is applied (training).
    pub fn forward(
        &self,
        features: &Tensor,
        words: &Tensor,
        mut rng: Option<&mut ChaCha8Rng>,
    ) -> Result<Tensor> {
        let image = self
            .image_branch(features, rng.as_deref_mut())?
            .unsqueeze(1)?;
        let emb = dropout(&self.embedding.forward(words)?, self.cfg.dropout, rng)?;
        let seq = self.lstm.forward_seq(&emb)?;
        self.head(&image, &seq)
    }

    /// Mean cross-entropy of next-word predictions over the non-padding targets.
    pub fn loss(&self, logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
        let (b, t, v) = logits.dims3()?;
        let logp = candle_nn::ops::log_softmax(&logits.reshape((b * t, v))?, D::Minus1)?;
        let flat = targets.reshape(b * t)?;
        let picked = logp.gather(&flat.unsqueeze(1)?, 1)?.squeeze(1)?;
        let mask = flat.ne(0u32)?.to_dtype(logits.dtype())?;
        let count = mask.sum_all()?.to_scalar::<f32>()?.max(1.0);
        (picked * mask)?.sum_all()? * (-1.0 / count as f64)
    }

    /// Greedy decoding: from `start` until `end` or `max_length` words; one caption of ids
    /// (without start and end) per row of `features` [B, F].
    pub fn greedy(&self, features: &Tensor, start: u32, end: u32) -> Result<Vec<Vec<u32>>> {
        let b = features.dim(0)?;
        let image = self.image_branch(features, None)?;
        let mut state = self
            .lstm
            .zero_state(b, features.device(), features.dtype())?;
        let mut word = Tensor::new(vec![start; b], features.device())?;
        let mut out = vec![Vec::new(); b];
        let mut done = vec![false; b];
        for _ in 0..self.cfg.max_length {
            let gx = self
                .lstm
                .input_gates(&self.embedding.forward(&word)?.unsqueeze(1)?)?
                .squeeze(1)?;
            state = self.lstm.step(&gx, &state)?;
            let logits = self.head(&image, &state.h)?;
            let next: Vec<u32> = logits.argmax(D::Minus1)?.to_vec1()?;
            for (i, &w) in next.iter().enumerate() {
                if !done[i] {
                    if w == end {
                        done[i] = true;
                    } else {
                        out[i].push(w);
                    }
                }
            }
            if done.iter().all(|&d| d) {
                break;
            }
            word = Tensor::new(next, features.device())?;
        }
        Ok(out)
    }

    /// Beam search of width `k` for one image `features` [1, F]: the hypothesis with the highest
    /// total log-probability among those that ended (or reached `max_length`).
    pub fn beam(&self, features: &Tensor, start: u32, end: u32, k: usize) -> Result<Vec<u32>> {
        let k = k.max(1);
        let image = self.image_branch(features, None)?;
        let dev = features.device();
        let mut beams: Vec<(Vec<u32>, f32, State)> = vec![(
            vec![start],
            0.0,
            self.lstm.zero_state(1, dev, features.dtype())?,
        )];
        let mut finished: Vec<(Vec<u32>, f32)> = Vec::new();
        for _ in 0..self.cfg.max_length {
            let mut candidates: Vec<(Vec<u32>, f32, State)> = Vec::new();
            for (seq, score, state) in &beams {
                let last = Tensor::new(&[*seq.last().unwrap_or(&start)], dev)?;
                let gx = self
                    .lstm
                    .input_gates(&self.embedding.forward(&last)?.unsqueeze(1)?)?
                    .squeeze(1)?;
                let s = self.lstm.step(&gx, state)?;
                let logp: Vec<f32> =
                    candle_nn::ops::log_softmax(&self.head(&image, &s.h)?, D::Minus1)?
                        .squeeze(0)?
                        .to_vec1()?;
                let mut idx: Vec<usize> = (0..logp.len()).collect();
                idx.sort_by(|&a, &b| logp[b].total_cmp(&logp[a]));
                for &w in idx.iter().take(k) {
                    let mut next = seq.clone();
                    next.push(w as u32);
                    candidates.push((next, score + logp[w], s.clone()));
                }
            }
            candidates.sort_by(|a, b| b.1.total_cmp(&a.1));
            beams.clear();
            for (seq, score, s) in candidates {
                if beams.len() + finished.len() >= k * 2 || beams.len() >= k {
                    break;
                }
                if seq.last() == Some(&end) {
                    finished.push((seq, score));
                } else {
                    beams.push((seq, score, s));
                }
            }
            if beams.is_empty() || finished.len() >= k {
                break;
            }
        }
        finished.extend(beams.into_iter().map(|(seq, score, _)| (seq, score)));
        let best = finished
            .into_iter()
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .map(|(s, _)| s)
            .unwrap_or_default();
        // Drop the start token and a final end token.
        let words = best.get(1..).unwrap_or_default();
        Ok(words.strip_suffix(&[end]).unwrap_or(words).to_vec())
    }
}
