//! Cross-modal retrieval over a gallery of (image, caption) pairs: image -> text and
//! text -> image top-1 and the mean cosine of matching and other pairs, as CLIP papers report a
//! contrastive model's quality (`roundtrip eval-clip` and the dev figures of `train-clip`).

use serde::{Deserialize, Serialize};

use candle_core::Tensor;

use crate::models::clip::l2_normalize;

/// Retrieval figures of a gallery of N pairs (pair i: image i and caption i).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Retrieval {
    pub images: usize,
    /// Share of images whose most similar caption (of the N) is their own.
    pub image_to_text_top1: f64,
    /// Share of captions whose most similar image (of the N) is their own.
    pub text_to_image_top1: f64,
    /// Mean cosine similarity of matching pairs.
    pub mean_matching_cosine: f64,
    /// Mean cosine similarity of non-matching pairs (0 for N = 1).
    pub mean_other_cosine: f64,
    /// 1 / N: what a model that knows nothing scores on either top-1.
    pub chance: f64,
    /// Captions that occur more than once in the gallery (identical captions cannot be told
    /// apart, which caps text -> image top-1).
    pub repeated_captions: usize,
}

/// Retrieval figures from image and text embeddings [N, D] (raw or normalised). Ties go to the
/// lowest index (argmax's first maximum).
pub fn retrieval(
    image_emb: &Tensor,
    text_emb: &Tensor,
    captions: &[String],
) -> anyhow::Result<Retrieval> {
    let sim: Vec<Vec<f32>> = l2_normalize(image_emb)?
        .matmul(&l2_normalize(text_emb)?.t()?)?
        .to_vec2()?;
    let n = sim.len();
    anyhow::ensure!(
        n > 0 && captions.len() == n,
        "retrieval: empty or ragged gallery"
    );
    let argmax = |it: &mut dyn Iterator<Item = f32>| {
        it.enumerate()
            .fold((0usize, f32::NEG_INFINITY), |best, (j, v)| {
                if v > best.1 {
                    (j, v)
                } else {
                    best
                }
            })
            .0
    };
    let i2t = (0..n)
        .filter(|&i| argmax(&mut sim[i].iter().copied()) == i)
        .count();
    let t2i = (0..n)
        .filter(|&j| argmax(&mut sim.iter().map(|r| r[j])) == j)
        .count();
    let diag: f64 = (0..n).map(|i| sim[i][i] as f64).sum();
    let all: f64 = sim.iter().flatten().map(|&v| v as f64).sum();
    let mut sorted: Vec<&String> = captions.iter().collect();
    sorted.sort();
    let repeated = sorted
        .chunk_by(|a, b| a == b)
        .filter(|g| g.len() > 1)
        .map(<[&String]>::len)
        .sum();
    Ok(Retrieval {
        images: n,
        image_to_text_top1: i2t as f64 / n as f64,
        text_to_image_top1: t2i as f64 / n as f64,
        mean_matching_cosine: diag / n as f64,
        mean_other_cosine: if n > 1 {
            (all - diag) / (n * n - n) as f64
        } else {
            0.0
        },
        chance: 1.0 / n as f64,
        repeated_captions: repeated,
    })
}
