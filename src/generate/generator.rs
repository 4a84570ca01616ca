//! The generator registry: which generators exist ([`GeneratorKind`]), what each must provide
//! ([`Generator`], [`Guidance`]), and the one loop that drives any of them ([`drive`]), shared by
//! `roundtrip generate` and `roundtrip run`.
//!
//! Adding a generator means a variant here, its settings type, and one file implementing
//! [`Generator`] (see `siren.rs`, `biggan.rs`).

use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::stderr::Bar;
use anyhow::Context;
use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use super::biggan::LatentsOut;
use super::clip::whole_image_similarity;
use super::{ImageEncoder, StepRecord};
use crate::imageops::save_png;

/// Which generator draws a phrase: `--generator`, a prompts line's `[name]` prefix, and the name
/// recorded with each image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GeneratorKind {
    /// deep-daze: a SIREN network.
    Siren,
    /// big-sleep: BigGAN-deep latents.
    BigGan,
}

impl GeneratorKind {
    /// Every generator, in the order help texts and errors list them.
    pub const ALL: [Self; 2] = [Self::Siren, Self::BigGan];

    /// The name written in options, prompts files and records.
    pub fn name(self) -> &'static str {
        match self {
            Self::Siren => "siren",
            Self::BigGan => "biggan",
        }
    }

    /// The names of [`Self::ALL`], joined by `, ` (for error texts).
    pub fn names() -> String {
        Self::ALL.map(Self::name).join(", ")
    }
}

impl std::fmt::Display for GeneratorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for GeneratorKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| format!("unknown generator `{s}`: expected one of {}", Self::names()))
    }
}

/// A generator with its settings and models, ready to draw phrase after phrase.
/// `Sync`: `run` draws several images at once with one generator.
pub trait Generator: Sync {
    fn kind(&self) -> GeneratorKind;
    /// Optimiser steps per image.
    fn steps(&self) -> usize;
    /// The image encoder guiding it, which also judges the final image ([`Generated`]).
    fn encoder(&self) -> &dyn ImageEncoder;
    /// Fresh guidance towards the phrase embedding `text` [1, D], every random draw from `seed`.
    fn start(&self, text: &Tensor, seed: u64) -> anyhow::Result<Box<dyn Guidance + '_>>;
}

/// One phrase's optimisation in progress: its parameters, optimiser and random stream.
pub trait Guidance {
    /// One optimiser step; returns its record.
    fn step(&mut self) -> candle_core::Result<StepRecord>;
    /// The image to save, [3, S, S] in [0, 1], detached.
    fn image(&self) -> candle_core::Result<Tensor>;
    /// The latents to save beside the image, for generators that have them (BigGAN).
    fn latents(&self) -> candle_core::Result<Option<LatentsOut>> {
        Ok(None)
    }
}

/// What generation produced for one phrase.
pub struct Generated {
    pub image: Tensor,
    pub steps: Vec<StepRecord>,
    /// Progress frames written, in order.
    pub frames: Vec<PathBuf>,
    /// Seconds of the guidance (start, steps, frames, final image).
    pub seconds: f64,
    /// BigGAN's final and moving-average latents (none for SIREN).
    pub latents: Option<LatentsOut>,
    /// Cosine similarity between the phrase and the whole final image, as the guide sees it.
    pub final_similarity: f32,
}

/// Draws the phrase embedding `text` [1, D] with `generator` from `seed`: runs its steps, writing
/// a frame to `frames_dir` every `save_every` steps (0: none; never at the last step, which is
/// the image). With 0 steps the image is the generator's starting point.
pub fn drive(
    generator: &dyn Generator,
    text: &Tensor,
    seed: u64,
    frames_dir: &Path,
    save_every: usize,
    progress: &Bar,
) -> anyhow::Result<Generated> {
    let t0 = Instant::now();
    let n = generator.steps();
    let mut guidance = generator.start(text, seed)?;
    let mut steps = Vec::with_capacity(n);
    let mut frames = Vec::new();
    for _ in 0..n {
        let rec = guidance.step()?;
        progress.set_message(format!("sim {:.4}", rec.similarity));
        progress.inc(1);
        if save_every > 0 && rec.step % save_every == 0 && rec.step < n {
            std::fs::create_dir_all(frames_dir)
                .with_context(|| format!("cannot create {}", frames_dir.display()))?;
            let p = frames_dir.join(format!("step-{:06}.png", rec.step));
            save_png(&guidance.image()?, &p)?;
            frames.push(p);
        }
        steps.push(rec);
    }
    progress.finish_and_clear();
    let image = guidance.image()?;
    let latents = guidance.latents()?;
    let seconds = t0.elapsed().as_secs_f64();
    let final_similarity = whole_image_similarity(generator.encoder(), &image, text)?;
    Ok(Generated {
        image,
        steps,
        frames,
        seconds,
        latents,
        final_similarity,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_round_trip_through_their_names() {
        for k in GeneratorKind::ALL {
            assert_eq!(k.name().parse::<GeneratorKind>(), Ok(k));
            assert_eq!(k.to_string(), k.name());
            assert_eq!(
                serde_json::to_value(k).unwrap(),
                serde_json::json!(k.name())
            );
        }
        assert_eq!(
            "vqgan".parse::<GeneratorKind>().unwrap_err(),
            "unknown generator `vqgan`: expected one of siren, biggan"
        );
    }
}
