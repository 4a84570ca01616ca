//! An on-disk cache of encoder features, keyed by encoder, weights and image content, so that a
//! second training run (or eval) never runs the encoder again for the same images.

use std::path::{Path, PathBuf};

use anyhow::Context;
use candle_core::{Device, Tensor};
use indicatif::ProgressBar;
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

pub struct FeatureCache {
    dir: PathBuf,
}

impl FeatureCache {
    pub fn new(root: &Path, encoder: &LoadedEncoder) -> Self {
        Self {
            dir: root.join("features").join(&encoder.cache_key),
        }
    }

    /// Features [N, F] of the images, from the cache where present, else computed in batches
    /// and stored.
    pub fn features(
        &self,
        encoder: &LoadedEncoder,
        images: &[PathBuf],
        batch: usize,
        device: &Device,
        progress: &ProgressBar,
    ) -> anyhow::Result<(Tensor, CacheStats)> {
        let dim = encoder.encoder.feature_dim();
        let mut rows: Vec<Option<Vec<f32>>> = vec![None; images.len()];
        let mut keys = Vec::with_capacity(images.len());
        let mut todo = Vec::new();
        for (i, p) in images.iter().enumerate() {
            let bytes = std::fs::read(p)
                .map_err(|e| crate::input_err!("cannot read image {}: {e}", p.display()))?;
            let key = hex_digest(&bytes);
            match std::fs::read(self.dir.join(format!("{key}.f32"))) {
                Ok(b) if b.len() == dim * 4 => {
                    rows[i] = Some(
                        b.chunks_exact(4)
                            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                            .collect(),
                    );
                    progress.inc(1);
                }
                _ => todo.push((i, bytes)),
            }
            keys.push(key);
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
                let bytes: Vec<u8> = f.iter().flat_map(|v| v.to_le_bytes()).collect();
                write_atomic(&self.dir.join(format!("{}.f32", keys[*i])), &bytes)?;
                rows[*i] = Some(f);
                progress.inc(1);
            }
        }
        let flat: Vec<f32> = rows.into_iter().flatten().flatten().collect();
        Ok((Tensor::from_vec(flat, (images.len(), dim), device)?, stats))
    }
}
