//! An on-disk cache of encoder features, keyed by encoder, weights and image content, so that a
//! second training run (or eval) never runs the encoder again for the same images.
//!
//! Each entry (`ROOT/features-v2/<encoder key>/<image hash>.f32s`) is the feature vector as
//! little-endian f32 followed by the SHA-256 of those bytes. An entry that is truncated, garbled,
//! or holds a non-finite value is recomputed (one warning naming the file) rather than trusted;
//! the unchecked entries of the first format (`ROOT/features/`) are never read.

use std::path::{Path, PathBuf};

use crate::stderr::Bar;
use anyhow::Context;
use candle_core::{Device, Tensor};
use sha2::{Digest, Sha256};

use super::encoder::LoadedEncoder;
use crate::fsutil::write_atomic;

pub fn hex_digest(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .take(16)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The cache's folder under the cache root: the format's version is part of the name, so that
/// entries of an older format are never read.
pub const FEATURES_DIR: &str = "features-v2";

/// The extension of an entry: f32 features, then their SHA-256.
pub const ENTRY_EXTENSION: &str = "f32s";

/// Bytes of the checksum at the end of an entry.
const CHECKSUM_LEN: usize = 32;

/// Damaged entries named one by one on stderr before the rest are only counted.
const WARN_LIMIT: usize = 10;

/// Where features are cached: `--cache`, else `$ROUNDTRIP_CACHE`, else `$XDG_CACHE_HOME/roundtrip`,
/// else `~/.cache/roundtrip`.
pub fn default_cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("ROUNDTRIP_CACHE").filter(|v| !v.is_empty()) {
        return PathBuf::from(d);
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(d).join("roundtrip");
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    home.join(".cache").join("roundtrip")
}

/// Counts of a feature extraction, recorded in training logs.
#[derive(Debug, Clone, Copy, Default, serde::Serialize, PartialEq, Eq)]
pub struct CacheStats {
    pub computed: usize,
    pub cached: usize,
}

/// The bytes of an entry holding `features`.
pub fn encode_entry(features: &[f32]) -> Vec<u8> {
    let mut bytes: Vec<u8> = features.iter().flat_map(|v| v.to_le_bytes()).collect();
    let sum = Sha256::digest(&bytes);
    bytes.extend_from_slice(&sum);
    bytes
}

/// The features of an entry of `dim` values, or why it cannot be trusted.
pub fn decode_entry(bytes: &[u8], dim: usize) -> Result<Vec<f32>, String> {
    let want = dim * 4 + CHECKSUM_LEN;
    if bytes.len() != want {
        return Err(format!("{} bytes, expected {want}", bytes.len()));
    }
    let (payload, sum) = bytes.split_at(dim * 4);
    if Sha256::digest(payload).as_slice() != sum {
        return Err("its checksum does not match its contents".into());
    }
    let values: Vec<f32> = payload
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    if let Some(i) = values.iter().position(|v| !v.is_finite()) {
        return Err(format!("value {i} is {}", values[i]));
    }
    Ok(values)
}

pub struct FeatureCache {
    dir: PathBuf,
}

impl FeatureCache {
    pub fn new(root: &Path, encoder: &LoadedEncoder) -> Self {
        Self {
            dir: root.join(FEATURES_DIR).join(&encoder.cache_key),
        }
    }

    /// The folder holding this encoder's entries.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Features [N, F] of the images, from the cache where present and intact, else computed
    /// in batches and stored. Damaged entries are named on stderr (the first ten; then a count)
    /// and recomputed.
    pub fn features(
        &self,
        encoder: &LoadedEncoder,
        images: &[PathBuf],
        batch: usize,
        device: &Device,
        progress: &Bar,
    ) -> anyhow::Result<(Tensor, CacheStats)> {
        let dim = encoder.encoder.feature_dim();
        let mut rows: Vec<Option<Vec<f32>>> = vec![None; images.len()];
        let mut keys = Vec::with_capacity(images.len());
        let mut todo = Vec::new();
        let mut damaged = 0usize;
        for (i, p) in images.iter().enumerate() {
            let bytes = std::fs::read(p)
                .map_err(|e| crate::input_err!("cannot read image {}: {e}", p.display()))?;
            let key = hex_digest(&bytes);
            let entry = self.entry(&key);
            match std::fs::read(&entry) {
                Ok(b) => match decode_entry(&b, dim) {
                    Ok(f) => {
                        rows[i] = Some(f);
                        progress.inc(1);
                    }
                    Err(why) => {
                        damaged += 1;
                        if damaged <= WARN_LIMIT {
                            crate::stderr::warning(format_args!(
                                "feature cache entry {} is damaged ({why}); recomputing it",
                                entry.display()
                            ));
                        }
                        todo.push((i, bytes));
                    }
                },
                Err(_) => todo.push((i, bytes)),
            }
            keys.push(key);
        }
        if damaged > WARN_LIMIT {
            crate::stderr::warning(format_args!(
                "... {} more damaged feature cache entries in {} recomputed",
                damaged - WARN_LIMIT,
                self.dir.display()
            ));
        }
        let stats = CacheStats {
            computed: todo.len(),
            cached: images.len() - todo.len(),
        };
        if !todo.is_empty() {
            std::fs::create_dir_all(&self.dir)
                .with_context(|| format!("cannot create {}", self.dir.display()))?;
        }
        for chunk in todo.chunks(batch.max(1)) {
            let imgs = chunk
                .iter()
                .map(|(i, bytes)| crate::imageops::decode_rgb(&images[*i], bytes))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let feats: Vec<Vec<f32>> = encoder.encoder.encode_rgb(&imgs, device)?.to_vec2()?;
            for ((i, _), f) in chunk.iter().zip(feats) {
                write_atomic(&self.entry(&keys[*i]), &encode_entry(&f))?;
                rows[*i] = Some(f);
                progress.inc(1);
            }
        }
        let flat: Vec<f32> = rows.into_iter().flatten().flatten().collect();
        Ok((Tensor::from_vec(flat, (images.len(), dim), device)?, stats))
    }

    /// The entry of the image whose content hash is `key`.
    fn entry(&self, key: &str) -> PathBuf {
        self.dir.join(format!("{key}.{ENTRY_EXTENSION}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_and_damage_is_detected() {
        let f = vec![0.5f32, -1.25, 3.0];
        let b = encode_entry(&f);
        assert_eq!(b.len(), 3 * 4 + 32);
        assert_eq!(decode_entry(&b, 3).unwrap(), f);
        // Truncated, too long, wrong dimension.
        assert!(decode_entry(&b[..b.len() - 1], 3).is_err());
        assert!(decode_entry(&[b.clone(), vec![0]].concat(), 3).is_err());
        assert!(decode_entry(&b, 4).is_err());
        // One flipped bit in the payload or in the checksum.
        for at in [0, 5, 13, b.len() - 1] {
            let mut bad = b.clone();
            bad[at] ^= 1;
            assert!(decode_entry(&bad, 3).is_err(), "byte {at}");
        }
        // A consistent entry holding a non-finite value.
        let nan = encode_entry(&[1.0, f32::NAN, 0.0]);
        assert!(decode_entry(&nan, 3).unwrap_err().contains("value 1"));
        let inf = encode_entry(&[f32::INFINITY]);
        assert!(decode_entry(&inf, 1).is_err());
        // The first format (bare f32s) is never accepted.
        let old: Vec<u8> = f.iter().flat_map(|v| v.to_le_bytes()).collect();
        assert!(decode_entry(&old, 3).is_err());
    }
}
