//! CLIP as the guide: its image tower as an [`ImageEncoder`], the phrase's text embedding, and
//! the similarity of a whole image to the phrase.

use candle_core::{Device, Tensor};

use super::{l2_normalize, EncoderBackward, ImageEncoder};
use crate::models::clip::{Clip, ClipModel, CLIP_MEAN, CLIP_STD};

impl ImageEncoder for ClipModel {
    fn input_size(&self) -> usize {
        self.config().vision.image_size
    }

    fn encode_images(&self, images: &Tensor) -> candle_core::Result<Tensor> {
        self.image_features(&clip_normalize(images)?.0)
    }

    fn encode_images_taped(
        &self,
        images: &Tensor,
    ) -> candle_core::Result<Option<(Tensor, EncoderBackward<'_>)>> {
        if !self.image_tape_available() {
            return Ok(None);
        }
        let (px, std) = clip_normalize(&images.detach())?;
        let Some((emb, tape)) = self.image_features_taped(&px)? else {
            return Ok(None);
        };
        let back = move |g: &Tensor| tape.backward(self, g)?.broadcast_div(&std);
        Ok(Some((emb, Box::new(back))))
    }
}

/// Images in [0, 1] [N, 3, S, S] normalised with CLIP's mean and std, and the std [1, 3, 1, 1]
/// (the normalisation's gradient is a division by it).
fn clip_normalize(images: &Tensor) -> candle_core::Result<(Tensor, Tensor)> {
    let dev = images.device();
    let mean = Tensor::new(&CLIP_MEAN, dev)?.reshape((1, 3, 1, 1))?;
    let std = Tensor::new(&CLIP_STD, dev)?.reshape((1, 3, 1, 1))?;
    Ok((images.broadcast_sub(&mean)?.broadcast_div(&std)?, std))
}

/// The phrase's raw CLIP text embedding [1, D].
pub fn text_embedding(clip: &Clip, phrase: &str, device: &Device) -> anyhow::Result<Tensor> {
    let ids = clip.tokenizer.encode_batch(&[phrase], device)?;
    Ok(clip.model.text_features(&ids)?)
}

/// Cosine similarity between a phrase embedding and a whole image resized to the encoder's input.
pub fn whole_image_similarity(
    encoder: &dyn ImageEncoder,
    image: &Tensor,
    text: &Tensor,
) -> anyhow::Result<f32> {
    let s = encoder.input_size();
    let x = crate::imageops::resize::resize_bilinear(image, s, s)?.unsqueeze(0)?;
    let e = l2_normalize(&encoder.encode_images(&x)?)?;
    let t = l2_normalize(text)?;
    Ok(e.matmul(&t.t()?)?.flatten_all()?.to_vec1::<f32>()?[0])
}
