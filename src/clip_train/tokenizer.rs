//! A word-level CLIP tokenizer built from a training split's captions, saved as a tokenizer.json
//! that the `tokenizers` crate (and [`crate::models::clip::ClipTokenizer`]) loads.
//!
//! Pipeline (all inside tokenizer.json, so every user of the file splits text the same way):
//! NFC, lowercase, every run of characters that are neither letters nor digits replaced by one
//! space, split on whitespace; a `WordLevel` model; a template post-processor that wraps each text
//! in `<|startoftext|>` ... `<|endoftext|>`.
//!
//! Ids: 0 is `<|unk|>` (words never seen in training), the words follow by descending count (ties
//! alphabetical), then `<|startoftext|>` and `<|endoftext|>` as the two highest ids, as in CLIP's
//! own vocabulary. The end token is therefore the largest id of every encoded text, so the text
//! tower pools the same position whether it looks for the first `eos_token_id` (transformers'
//! rule for `eos_token_id != 2`) or takes argmax(ids) (the legacy rule).

use std::collections::{BTreeMap, HashMap};

use serde_json::{json, Value};
use tokenizers::{
    Normalizer, OffsetReferential, OffsetType, PreTokenizedString, PreTokenizer, Tokenizer,
};

pub const UNK: &str = "<|unk|>";
pub const BOS: &str = "<|startoftext|>";
pub const EOS: &str = "<|endoftext|>";

/// A built tokenizer: its tokenizer.json text and the ids the model config needs.
#[derive(Debug, Clone)]
pub struct WordTokenizer {
    /// tokenizer.json, pretty-printed, deterministic (keys sorted).
    pub json: String,
    /// Words plus the three special tokens.
    pub vocab_size: usize,
    pub unk_id: u32,
    pub bos_id: u32,
    pub eos_id: u32,
    /// Words in id order (id = index + 1).
    pub words: Vec<String>,
}

fn tokenizer_json(vocab: &BTreeMap<String, u32>, bos: u32, eos: u32) -> Value {
    let special = |tok: &str, id: u32| json!({"id": tok, "ids": [id], "tokens": [tok]});
    let piece = |tok: &str| json!({"SpecialToken": {"id": tok, "type_id": 0}});
    let seq = |id: &str| json!({"Sequence": {"id": id, "type_id": 0}});
    json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [],
        "normalizer": {"type": "Sequence", "normalizers": [
            {"type": "NFC"},
            {"type": "Lowercase"},
            {"type": "Replace", "pattern": {"Regex": "[^\\p{L}\\p{N}]+"}, "content": " "},
        ]},
        "pre_tokenizer": {"type": "WhitespaceSplit"},
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [piece(BOS), seq("A"), piece(EOS)],
            "pair": [piece(BOS), seq("A"), piece(EOS), seq("B"), piece(EOS)],
            "special_tokens": {BOS: special(BOS, bos), EOS: special(EOS, eos)},
        },
        "decoder": null,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": UNK},
    })
}

fn parse(text: &str) -> anyhow::Result<Tokenizer> {
    text.parse::<Tokenizer>()
        .map_err(|e| anyhow::anyhow!("the word-level tokenizer does not load back: {e}"))
}

/// The words of a text as the tokenizer's normaliser and pre-tokeniser split it.
pub fn words(tokenizer: &Tokenizer, text: &str) -> anyhow::Result<Vec<String>> {
    let mut pre = PreTokenizedString::from(text);
    if let Some(n) = tokenizer.get_normalizer() {
        pre.normalize(|s| n.normalize(s))
            .map_err(|e| anyhow::anyhow!("cannot normalise {text:?}: {e}"))?;
    }
    if let Some(p) = tokenizer.get_pre_tokenizer() {
        p.pre_tokenize(&mut pre)
            .map_err(|e| anyhow::anyhow!("cannot split {text:?}: {e}"))?;
    }
    Ok(pre
        .get_splits(OffsetReferential::Original, OffsetType::None)
        .into_iter()
        .map(|(w, _, _)| w.to_owned())
        .collect())
}

/// Builds the tokenizer from every caption of the training split.
pub fn build<'a>(captions: impl IntoIterator<Item = &'a str>) -> anyhow::Result<WordTokenizer> {
    // The same pipeline with only the unknown token, to split the captions exactly as the final
    // tokenizer will.
    let empty = BTreeMap::from([(UNK.to_owned(), 0u32)]);
    let splitter = parse(&tokenizer_json(&empty, 1, 2).to_string())?;
    let mut counts: HashMap<String, usize> = HashMap::new();
    for c in captions {
        for w in words(&splitter, c)? {
            *counts.entry(w).or_default() += 1;
        }
    }
    let mut ordered: Vec<(String, usize)> = counts.into_iter().collect();
    ordered.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    let words: Vec<String> = ordered.into_iter().map(|(w, _)| w).collect();
    let mut vocab = BTreeMap::from([(UNK.to_owned(), 0u32)]);
    for (i, w) in words.iter().enumerate() {
        vocab.insert(w.clone(), i as u32 + 1);
    }
    let bos = words.len() as u32 + 1;
    let eos = bos + 1;
    vocab.insert(BOS.to_owned(), bos);
    vocab.insert(EOS.to_owned(), eos);
    let mut json = serde_json::to_string_pretty(&tokenizer_json(&vocab, bos, eos))?;
    json.push('\n');
    parse(&json)?;
    Ok(WordTokenizer {
        json,
        vocab_size: vocab.len(),
        unk_id: 0,
        bos_id: bos,
        eos_id: eos,
        words,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_counts_and_wraps() {
        let t = build([
            "A red circle.",
            "a RED square, left of a circle",
            "Two  red-ish stars",
        ])
        .unwrap();
        // a x3, red x3, circle x2, then alphabetical: ish, left, of, square, stars, two.
        assert_eq!(
            t.words,
            ["a", "red", "circle", "ish", "left", "of", "square", "stars", "two"]
        );
        assert_eq!(
            (t.unk_id, t.bos_id, t.eos_id, t.vocab_size),
            (0, 10, 11, 12)
        );
        let tok = parse(&t.json).unwrap();
        let enc = tok.encode("A red TRIANGLE!", true).unwrap();
        assert_eq!(enc.get_ids(), &[10, 1, 2, 0, 11]);
    }

    #[test]
    fn loads_as_a_clip_tokenizer() {
        let t = build(["a blue circle"]).unwrap();
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("tokenizer.json");
        std::fs::write(&p, &t.json).unwrap();
        let mut cfg = crate::models::clip::ClipConfig::vit_b32().text;
        cfg.eos_token_id = t.eos_id;
        cfg.max_position_embeddings = 4;
        let ct = crate::models::clip::ClipTokenizer::from_file(&p, &cfg).unwrap();
        assert_eq!(ct.encode("a blue circle").unwrap(), [4, 1, 2, 5]);
        // Truncated to the context length, keeping the end token.
        assert_eq!(ct.encode("blue blue blue blue").unwrap(), [4, 2, 2, 5]);
        assert_eq!(ct.encode("").unwrap(), [4, 5]);
    }
}
