//! The captioners' vocabulary, built as Keras' `Tokenizer` did for the original: words of the
//! normalised training captions wrapped in `startseq ... endseq`, ordered by count (ties by first
//! appearance), numbered from 1; index 0 is padding. Unknown words are dropped when encoding.

use std::collections::HashMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::text::normalize;

pub const START: &str = "startseq";
pub const END: &str = "endseq";
pub const PAD: &str = "<pad>";

#[derive(Debug, Clone, PartialEq)]
pub struct Vocab {
    words: Vec<String>,
    index: HashMap<String, u32>,
    /// Longest training caption in tokens, `startseq` and `endseq` included.
    pub max_length: usize,
}

#[derive(Serialize, Deserialize)]
struct VocabFile {
    words: Vec<String>,
    max_length: usize,
}

impl Vocab {
    /// Builds the vocabulary of raw training captions.
    pub fn build<'a>(captions: impl IntoIterator<Item = &'a str>) -> Self {
        let mut order: Vec<String> = Vec::new();
        let mut counts: HashMap<String, usize> = HashMap::new();
        let mut max_length = 2;
        for cap in captions {
            let toks = normalize(cap);
            max_length = max_length.max(toks.len() + 2);
            for w in std::iter::once(START.to_owned())
                .chain(toks)
                .chain(std::iter::once(END.to_owned()))
            {
                let c = counts.entry(w.clone()).or_insert(0);
                if *c == 0 {
                    order.push(w);
                }
                *c += 1;
            }
        }
        // A stable sort keeps first-appearance order among equal counts, as Keras does.
        order.sort_by(|a, b| counts[b].cmp(&counts[a]));
        let mut words = vec![PAD.to_owned()];
        words.extend(order);
        Self::from_words(words, max_length)
    }

    fn from_words(words: Vec<String>, max_length: usize) -> Self {
        let index = words
            .iter()
            .enumerate()
            .map(|(i, w)| (w.clone(), i as u32))
            .collect();
        Self {
            words,
            index,
            max_length,
        }
    }

    /// Number of entries, padding included (the decoder's output size).
    pub fn len(&self) -> usize {
        self.words.len()
    }

    pub fn is_empty(&self) -> bool {
        self.words.len() <= 1
    }

    pub fn id(&self, word: &str) -> Option<u32> {
        self.index.get(word).copied()
    }

    pub fn start(&self) -> u32 {
        self.index.get(START).copied().unwrap_or(1)
    }

    pub fn end(&self) -> u32 {
        self.index.get(END).copied().unwrap_or(2)
    }

    /// `startseq`, the caption's known words, `endseq`; truncated to `max_length` (keeping `endseq`).
    pub fn encode(&self, caption: &str) -> Vec<u32> {
        let mut ids = vec![self.start()];
        ids.extend(normalize(caption).iter().filter_map(|w| self.id(w)));
        ids.truncate(self.max_length.saturating_sub(1).max(1));
        ids.push(self.end());
        ids
    }

    /// Words of ids, without padding, `startseq` and `endseq`.
    pub fn decode(&self, ids: &[u32]) -> String {
        let (s, e) = (self.start(), self.end());
        ids.iter()
            .filter(|&&i| i != 0 && i != s && i != e)
            .filter_map(|&i| self.words.get(i as usize).map(String::as_str))
            .collect::<Vec<_>>()
            .join(" ")
    }

    pub fn save(&self, path: &Path) -> anyhow::Result<()> {
        crate::fsutil::write_json(
            path,
            &VocabFile {
                words: self.words.clone(),
                max_length: self.max_length,
            },
        )
    }

    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let bytes = crate::error::read_input_file(path)?;
        let f: VocabFile = serde_json::from_slice(&bytes)
            .map_err(|e| crate::input_err!("{} is not a vocabulary file: {e}", path.display()))?;
        if f.words.first().map(String::as_str) != Some(PAD)
            || !f.words.iter().any(|w| w == START)
            || !f.words.iter().any(|w| w == END)
        {
            return Err(crate::input_err!(
                "{}: expected `{PAD}` first and the words `{START}` and `{END}`",
                path.display()
            ));
        }
        Ok(Self::from_words(f.words, f.max_length))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordered_by_count_then_first_appearance() {
        let v = Vocab::build(["A dog runs.", "A cat runs", "The dog sleeps"]);
        // startseq/endseq 3 each, then dog 2, runs 2 (dog first), then cat, the, sleeps.
        let words: Vec<&str> = (0..v.len()).map(|i| v.words[i].as_str()).collect();
        assert_eq!(
            words,
            ["<pad>", "startseq", "endseq", "dog", "runs", "cat", "the", "sleeps"]
        );
        assert_eq!(v.max_length, 5);
        assert_eq!(v.encode("The DOG runs, a zebra!"), [1, 6, 3, 4, 2]);
        assert_eq!(v.decode(&[1, 6, 3, 4, 2, 0]), "the dog runs");
    }

    #[test]
    fn encode_truncates_keeping_the_end_token() {
        let v = Vocab::build(["dog cat"]);
        assert_eq!(v.max_length, 4);
        let ids = v.encode("dog cat dog cat dog");
        assert_eq!(ids.len(), 4);
        assert_eq!(*ids.last().unwrap(), v.end());
    }

    #[test]
    fn save_and_load_round_trip() {
        let d = tempfile::tempdir().unwrap();
        let v = Vocab::build(["two guys playing chess"]);
        v.save(&d.path().join("vocab.json")).unwrap();
        assert_eq!(Vocab::load(&d.path().join("vocab.json")).unwrap(), v);
        std::fs::write(
            d.path().join("bad.json"),
            r#"{"words": ["x"], "max_length": 3}"#,
        )
        .unwrap();
        assert!(Vocab::load(&d.path().join("bad.json")).is_err());
    }
}
