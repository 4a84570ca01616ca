//! CLIP as a judge of images and texts: CLIPScore of an image against a text (Hessel et al.
//! 2021, "CLIPScore: A Reference-free Evaluation Metric for Image Captioning", w = 2.5) and the
//! cosine similarity of texts in CLIP's embedding space. The embeddings come from
//! `models::clip`; the arithmetic lives here so `run`, `features` and `eval-clip` agree.

use candle_core::Tensor;

use crate::models::clip::l2_normalize;

/// CLIPScore (Hessel et al. 2021): 2.5 * max(cos, 0) for every (image, text) pair.
pub fn clip_score_matrix(images: &Tensor, texts: &Tensor) -> candle_core::Result<Vec<Vec<f32>>> {
    let cos = l2_normalize(images)?.matmul(&l2_normalize(texts)?.t()?)?;
    (cos.relu()? * 2.5)?.to_vec2()
}

/// Cosine similarity of each row of `rows` [N, D] with the single embedding `one` [1, D]
/// (raw or normalised), e.g. a phrase against the captions of its images.
pub fn cosine_with(one: &Tensor, rows: &Tensor) -> candle_core::Result<Vec<f32>> {
    l2_normalize(rows)?
        .matmul(&l2_normalize(one)?.t()?)?
        .flatten_all()?
        .to_vec1()
}
