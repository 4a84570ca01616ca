//! CLIP's tokenizer: tokenizer.json through the `tokenizers` crate, with CLIPTokenizer's start and
//! end tokens, truncation and padding done here.

use std::path::Path;

use candle_core::{Device, Tensor};

use super::ClipTextConfig;
use crate::input_err;

/// CLIP's tokenizer from tokenizer.json (byte-level BPE with `</w>` word ends and
/// `<|startoftext|>` ... `<|endoftext|>` around each text). Any tokenizer.json model works if its
/// vocabulary has those two tokens, e.g. the word-level one `train-clip` writes
/// ([`crate::clip_train::tokenizer`]).
pub struct ClipTokenizer {
    tokenizer: tokenizers::Tokenizer,
    sot: u32,
    eot: u32,
    context_length: usize,
}

impl ClipTokenizer {
    /// Checks that `<|endoftext|>` is the model's end token (unless the config is a legacy one
    /// with `eos_token_id` 2, pooled by argmax), since pooling depends on it.
    pub fn from_file(path: &Path, cfg: &ClipTextConfig) -> anyhow::Result<Self> {
        let mut tokenizer = tokenizers::Tokenizer::from_file(path)
            .map_err(|e| input_err!("cannot load tokenizer {}: {e}", path.display()))?;
        // Truncation and padding are done here (keeping the end token), not by tokenizer.json.
        tokenizer
            .with_truncation(None)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        tokenizer.with_padding(None);
        let id = |tok: &str| {
            tokenizer
                .token_to_id(tok)
                .ok_or_else(|| input_err!("tokenizer {} has no `{tok}` token", path.display()))
        };
        let (sot, eot) = (id("<|startoftext|>")?, id("<|endoftext|>")?);
        if cfg.eos_token_id != 2 && cfg.eos_token_id != eot {
            return Err(input_err!(
                "tokenizer {} has <|endoftext|> = {eot} but config.json's \
                 text_config.eos_token_id is {}: the text embedding would pool the wrong position",
                path.display(),
                cfg.eos_token_id
            ));
        }
        Ok(Self {
            tokenizer,
            sot,
            eot,
            context_length: cfg.max_position_embeddings,
        })
    }

    /// Token ids of one text: `<|startoftext|>` ... `<|endoftext|>`, truncated to the context
    /// length keeping the end token (as CLIPTokenizer(truncation=True, max_length=77)).
    pub fn encode(&self, text: &str) -> anyhow::Result<Vec<u32>> {
        let enc = self
            .tokenizer
            .encode(text, true)
            .map_err(|e| anyhow::anyhow!("cannot tokenize {text:?}: {e}"))?;
        let mut ids = enc.get_ids().to_vec();
        // tokenizer.json normally adds both (RobertaProcessing); add them if it does not.
        if ids.first() != Some(&self.sot) {
            ids.insert(0, self.sot);
        }
        if ids.len() == 1 || ids.last() != Some(&self.eot) {
            ids.push(self.eot);
        }
        if ids.len() > self.context_length {
            ids.truncate(self.context_length.saturating_sub(1).max(1));
            ids.push(self.eot);
        }
        Ok(ids)
    }

    /// Tokenises with tokenizer.json, truncates to the context length keeping the end token, and
    /// pads with `<|endoftext|>` (as CLIPTokenizer(padding=True)) to the LONGEST text of the batch
    /// (at most the context length), which is cheaper than always 77. Returns [B, L] u32. Padding
    /// never changes the embedding: the causal mask hides it from real positions and pooling picks
    /// the first end token (or argmax, which the first `<|endoftext|>` also is).
    pub fn encode_batch(&self, texts: &[&str], device: &Device) -> anyhow::Result<Tensor> {
        anyhow::ensure!(!texts.is_empty(), "encode_batch: no texts");
        let rows = texts
            .iter()
            .map(|t| self.encode(t))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let len = rows.iter().map(Vec::len).max().unwrap_or(0);
        let mut flat = Vec::with_capacity(rows.len() * len);
        for r in &rows {
            flat.extend_from_slice(r);
            flat.extend(std::iter::repeat_n(self.eot, len - r.len()));
        }
        Ok(Tensor::from_vec(flat, (rows.len(), len), device)?)
    }

    pub fn end_token(&self) -> u32 {
        self.eot
    }

    pub fn start_token(&self) -> u32 {
        self.sot
    }
}
