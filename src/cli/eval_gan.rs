//! `roundtrip eval-gan --biggan DIR [--clip CLIP] [--captioners L=DIR,...] [--samples N]
//! [--fd-samples M] [--reference DATASET] [--seed S] [--truncation T] [--json]`

use std::io::Write;
use std::path::PathBuf;

use crate::gan::eval::{evaluate, Options, Report};
use crate::run::parse_captioners;
use crate::run::preset::Preset;

#[derive(Debug, clap::Args)]
#[command(args_override_self = true)]
pub struct Args {
    #[command(flatten)]
    device: super::DeviceArg,
    /// The shapes world's class-conditional BigGAN: a folder with config.json (with
    /// `num_classes` 40 and `class_names`) and model.safetensors.
    #[arg(long)]
    biggan: PathBuf,
    /// CLIP whose image embeddings the Frechet distance is taken in [default: the shapes
    /// preset's, models/shapes/clip (embedded)].
    #[arg(long)]
    clip: Option<String>,
    /// Captioners as LABEL=FOLDER[,LABEL=FOLDER...] [default: the shapes preset's,
    /// vgg16=models/shapes/vgg16 (embedded),xception=models/shapes/xception (embedded)].
    #[arg(long)]
    captioners: Option<String>,
    /// Samples (and rendered photos) for class fidelity; the class cycles over the 40.
    #[arg(long, default_value_t = 1000)]
    samples: usize,
    /// Images per set for the Frechet distances (samples, reference, floor).
    #[arg(long, default_value_t = 2000)]
    fd_samples: usize,
    /// A shapes dataset (Flickr8k layout, e.g. from `roundtrip shapes dataset`) to take the
    /// 2 x --fd-samples reference images from [default: render them].
    #[arg(long)]
    reference: Option<PathBuf>,
    /// Seed of every random draw (noise, photos, reference scenes; all recorded).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Truncation of the noise and of BigGAN's BatchNorm statistics, in (0, 1].
    #[arg(long, default_value_t = 1.0)]
    truncation: f64,
    /// Write a PNG of the first (at most 40) fidelity samples, each beside the photo of its
    /// class, to look at what the figures count [default: none].
    #[arg(long, value_name = "FILE")]
    grid: Option<PathBuf>,
    /// Print one JSON object instead of the summary.
    #[arg(long)]
    json: bool,
    /// No progress on stderr.
    #[arg(long)]
    quiet: bool,
}

pub fn execute(a: Args, out: &mut dyn Write) -> anyhow::Result<()> {
    let d = Preset::Shapes.defaults();
    let options = Options {
        biggan: a.biggan,
        clip: a.clip.unwrap_or_else(|| d.clip.to_owned()),
        captioners: parse_captioners(a.captioners.as_deref().unwrap_or(d.captioners))?,
        samples: a.samples,
        fd_samples: a.fd_samples,
        reference: a.reference,
        seed: a.seed,
        truncation: a.truncation,
        grid: a.grid,
        quiet: a.quiet,
    };
    let r = evaluate(&options, &a.device.open()?)?;
    if a.json {
        serde_json::to_writer(&mut *out, &r)?;
        writeln!(out)?;
        return Ok(());
    }
    summary(&r, out)
}

fn summary(r: &Report, out: &mut dyn Write) -> anyhow::Result<()> {
    writeln!(
        out,
        "BigGAN {} ({} px, truncation {}, seed {})",
        r.biggan.reference, r.image_size, r.truncation, r.seeds.seed
    )?;
    writeln!(
        out,
        "class fidelity, {} samples (caption names the class; photos: the captioner's own accuracy):",
        r.fidelity.samples
    )?;
    for c in &r.fidelity.captioners {
        writeln!(
            out,
            "  {:<12} samples {:.3} ({}/{})  photos {:.3} ({}/{})",
            c.label,
            c.samples_share,
            c.samples_named,
            r.fidelity.samples,
            c.photos_share,
            c.photos_named,
            r.fidelity.samples
        )?;
    }
    let f = &r.frechet;
    writeln!(
        out,
        "Frechet distance in {} ({} images per set; reference {}):",
        f.embedding, f.images, f.reference
    )?;
    writeln!(
        out,
        "  samples to reference {:.4}  floor (reference to reference) {:.4}",
        f.samples_to_reference, f.floor
    )?;
    Ok(())
}
