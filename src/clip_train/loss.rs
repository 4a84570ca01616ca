//! CLIP's symmetric contrastive loss with a learnable temperature.

use candle_core::{Device, Result, Tensor, D};

use crate::models::clip::l2_normalize;

/// ln(100): CLIP clamps its logit scale so that exp(scale) never exceeds 100.
pub const MAX_LOGIT_SCALE: f64 = 4.605170185988092;

/// Row-wise log-softmax from basic ops (differentiable; the max is only a shift).
fn log_softmax(xs: &Tensor) -> Result<Tensor> {
    let shifted = xs.broadcast_sub(&xs.max_keepdim(D::Minus1)?.detach())?;
    shifted.broadcast_sub(&shifted.exp()?.sum_keepdim(D::Minus1)?.log()?)
}

/// Target distribution of each row: uniform over the items whose group equals the row's
/// (identical captions are equally right answers); the identity when all groups differ.
fn targets(groups: &[usize], device: &Device) -> Result<Tensor> {
    let n = groups.len();
    let mut t = vec![0f32; n * n];
    for (i, gi) in groups.iter().enumerate() {
        let same = groups.iter().filter(|g| *g == gi).count() as f32;
        for (j, gj) in groups.iter().enumerate() {
            if gi == gj {
                t[i * n + j] = 1.0 / same;
            }
        }
    }
    Tensor::from_vec(t, (n, n), device)
}

/// The logits `exp(logit_scale) * normalize(image) @ normalize(text)^T`, [B_images, B_texts].
pub fn logits(image_emb: &Tensor, text_emb: &Tensor, logit_scale: &Tensor) -> Result<Tensor> {
    let img = l2_normalize(image_emb)?;
    let txt = l2_normalize(text_emb)?;
    img.matmul(&txt.t()?)?
        .broadcast_mul(&logit_scale.exp()?.reshape((1, 1))?)
}

/// CLIP's loss on a batch of B matching (image, text) pairs: the mean of the cross-entropy over
/// the rows of the logits (each image against every text) and over its columns (each text against
/// every image), the right answer of row / column i being item i.
///
/// `groups` (one per pair, optional) marks pairs whose captions are identical: such captions
/// cannot be told apart, so a row's target is spread uniformly over the items of its group
/// (cross-entropy against that soft target). Without groups, or with all groups distinct, this is
/// exactly CLIP's loss. `logit_scale` is the 0-d log of the inverse temperature (learnable).
pub fn contrastive_loss(
    image_emb: &Tensor,
    text_emb: &Tensor,
    logit_scale: &Tensor,
    groups: Option<&[usize]>,
) -> Result<Tensor> {
    contrastive_loss_with_negatives(image_emb, text_emb, None, logit_scale, groups)
}

/// [`contrastive_loss`] with extra images that match no text (`negatives`, [M, D]): each text is
/// also contrasted with them (they join every column's softmax, never as its answer); the rows,
/// each image against every text, are unchanged. `None` or M = 0 is the plain loss.
pub fn contrastive_loss_with_negatives(
    image_emb: &Tensor,
    text_emb: &Tensor,
    negatives: Option<&Tensor>,
    logit_scale: &Tensor,
    groups: Option<&[usize]>,
) -> Result<Tensor> {
    let n = image_emb.dim(0)?;
    if text_emb.dim(0)? != n || n == 0 {
        candle_core::bail!(
            "contrastive loss: {n} image and {} text embeddings (need as many, at least one)",
            text_emb.dim(0)?
        )
    }
    let logits = logits(image_emb, text_emb, logit_scale)?;
    let ident: Vec<usize> = (0..n).collect();
    let groups = groups.unwrap_or(&ident);
    if groups.len() != n {
        candle_core::bail!("contrastive loss: {} groups for {n} pairs", groups.len())
    }
    // The relation "same group" is symmetric, so one target matrix serves rows and columns.
    let t = targets(groups, logits.device())?.to_dtype(logits.dtype())?;
    let rows = (log_softmax(&logits)? * &t)?.sum_all()?;
    let columns = match negatives {
        Some(neg) if neg.dim(0)? > 0 => Tensor::cat(
            &[&logits.t()?, &self::logits(text_emb, neg, logit_scale)?],
            1,
        )?,
        _ => logits.t()?,
    };
    let cols = (log_softmax(&columns)?.narrow(1, 0, n)? * &t)?.sum_all()?;
    ((rows + cols)? * (-0.5 / n as f64))?.reshape(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Var;

    fn ce(row: &[f64], target: usize) -> f64 {
        let lse = row.iter().map(|x| x.exp()).sum::<f64>().ln();
        lse - row[target]
    }

    #[test]
    fn matches_a_hand_computation_on_3x3() {
        let d = Device::Cpu;
        let img = [[1.0, 0.0], [0.6, 0.8], [0.0, 2.0]];
        let txt = [[3.0, 4.0], [1.0, 1.0], [-1.0, 0.5]];
        let scale = 2.0f64.ln(); // exp(scale) = 2
        let norm = |v: &[f64; 2]| {
            let n = (v[0] * v[0] + v[1] * v[1]).sqrt();
            [v[0] / n, v[1] / n]
        };
        let mut l = [[0.0; 3]; 3];
        for i in 0..3 {
            for j in 0..3 {
                let (a, b) = (norm(&img[i]), norm(&txt[j]));
                l[i][j] = 2.0 * (a[0] * b[0] + a[1] * b[1]);
            }
        }
        let rows: f64 = (0..3).map(|i| ce(&l[i], i)).sum::<f64>() / 3.0;
        let cols: f64 = (0..3)
            .map(|j| ce(&[l[0][j], l[1][j], l[2][j]], j))
            .sum::<f64>()
            / 3.0;
        let expected = (rows + cols) / 2.0;

        let t = |v: [[f64; 2]; 3]| Tensor::new(&v, &d).unwrap();
        let s = Tensor::new(scale, &d).unwrap();
        let got = contrastive_loss(&t(img), &t(txt), &s, None)
            .unwrap()
            .to_scalar::<f64>()
            .unwrap();
        assert!((got - expected).abs() < 1e-12, "{got} vs {expected}");
        // Distinct groups are the plain loss.
        let g = contrastive_loss(&t(img), &t(txt), &s, Some(&[7, 3, 5]))
            .unwrap()
            .to_scalar::<f64>()
            .unwrap();
        assert!((g - expected).abs() < 1e-12);
        // Items 0 and 2 in one group: rows 0 and 2 (and columns 0 and 2) aim at both equally.
        let soft = |r: &[f64], k: &[usize]| {
            let lse = r.iter().map(|x| x.exp()).sum::<f64>().ln();
            k.iter().map(|&j| lse - r[j]).sum::<f64>() / k.len() as f64
        };
        let col = |j: usize| [l[0][j], l[1][j], l[2][j]];
        let grouped = (soft(&l[0], &[0, 2])
            + soft(&l[1], &[1])
            + soft(&l[2], &[0, 2])
            + soft(&col(0), &[0, 2])
            + soft(&col(1), &[1])
            + soft(&col(2), &[0, 2]))
            / 6.0;
        let g = contrastive_loss(&t(img), &t(txt), &s, Some(&[1, 0, 1]))
            .unwrap()
            .to_scalar::<f64>()
            .unwrap();
        assert!((g - grouped).abs() < 1e-12, "{g} vs {grouped}");
    }

    #[test]
    fn negatives_join_only_the_columns() {
        let d = Device::Cpu;
        let img = [[1.0, 0.0], [0.0, 1.0]];
        let txt = [[2.0, 1.0], [1.0, 3.0]];
        let neg = [[1.0, 1.0], [-1.0, 0.0], [0.5, 2.0]];
        let unit = |v: &[f64; 2]| {
            let n = (v[0] * v[0] + v[1] * v[1]).sqrt();
            [v[0] / n, v[1] / n]
        };
        let cos = |a: &[f64; 2], b: &[f64; 2]| {
            let (a, b) = (unit(a), unit(b));
            a[0] * b[0] + a[1] * b[1]
        };
        let scale = 3.0f64.ln();
        let l = |a: &[f64; 2], b: &[f64; 2]| 3.0 * cos(a, b);
        // Rows: each image against the two texts; columns: each text against both images and
        // the three negatives, the answer being its own image.
        let rows: f64 = (0..2)
            .map(|i| ce(&[l(&img[i], &txt[0]), l(&img[i], &txt[1])], i))
            .sum::<f64>()
            / 2.0;
        let cols: f64 = (0..2)
            .map(|j| {
                let mut r = vec![l(&img[0], &txt[j]), l(&img[1], &txt[j])];
                r.extend(neg.iter().map(|n| l(n, &txt[j])));
                ce(&r, j)
            })
            .sum::<f64>()
            / 2.0;
        let expected = (rows + cols) / 2.0;
        let s = Tensor::new(scale, &d).unwrap();
        let got = contrastive_loss_with_negatives(
            &Tensor::new(&img, &d).unwrap(),
            &Tensor::new(&txt, &d).unwrap(),
            Some(&Tensor::new(&neg, &d).unwrap()),
            &s,
            None,
        )
        .unwrap()
        .to_scalar::<f64>()
        .unwrap();
        assert!((got - expected).abs() < 1e-12, "{got} vs {expected}");
        // The negatives make the loss larger than without them.
        let plain = contrastive_loss(
            &Tensor::new(&img, &d).unwrap(),
            &Tensor::new(&txt, &d).unwrap(),
            &s,
            None,
        )
        .unwrap()
        .to_scalar::<f64>()
        .unwrap();
        assert!(got > plain + 0.1, "{got} vs {plain}");
        // No negatives is the plain loss.
        let empty = Tensor::zeros((0, 2), candle_core::DType::F64, &d).unwrap();
        let none = contrastive_loss_with_negatives(
            &Tensor::new(&img, &d).unwrap(),
            &Tensor::new(&txt, &d).unwrap(),
            Some(&empty),
            &s,
            None,
        )
        .unwrap()
        .to_scalar::<f64>()
        .unwrap();
        assert_eq!(none, plain);
    }

    #[test]
    fn temperature_gets_the_right_gradient() {
        let d = Device::Cpu;
        let img = Tensor::new(&[[1.0f64, 0.2, 0.0], [0.1, 1.0, 0.3], [0.0, 0.4, 1.0]], &d).unwrap();
        let txt = Tensor::new(&[[0.9f64, 0.0, 0.1], [0.0, 1.0, 0.0], [0.2, 0.1, 0.8]], &d).unwrap();
        let s = Var::new(1.5f64, &d).unwrap();
        let loss = contrastive_loss(&img, &txt, s.as_tensor(), None).unwrap();
        let grads = loss.backward().unwrap();
        let g = grads
            .get(s.as_tensor())
            .expect("logit_scale has a gradient");
        let g = g.to_scalar::<f64>().unwrap();
        let at = |v: f64| {
            contrastive_loss(&img, &txt, &Tensor::new(v, &d).unwrap(), None)
                .unwrap()
                .to_scalar::<f64>()
                .unwrap()
        };
        let fd = (at(1.5 + 1e-6) - at(1.5 - 1e-6)) / 2e-6;
        assert!(g.abs() > 1e-3, "gradient {g} is not significant");
        assert!((g - fd).abs() < 1e-6, "{g} vs finite difference {fd}");
        // Matching pairs are the most similar here: a sharper softmax lowers the loss.
        assert!(g < 0.0);
    }
}
