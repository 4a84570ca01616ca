//! A run's models: checked from their config files before anything is written ([`preflight`]),
//! then loaded once and fingerprinted ([`load`]).

use std::collections::BTreeMap;

use anyhow::Context;
use candle_core::Device;

use super::settings::RunSettings;
use super::stages::{BlipRunCaptioner, ImageCaptioner, LstmCaptioner};
use crate::captioner::blip::{is_blip_reference, BlipCaptioner};
use crate::captioner::model::{read_config, Captioner};
use crate::hub::{Locator, ModelRef};
use crate::input_err;
use crate::models::biggan::BigGan;
use crate::models::clip::Clip;

/// What loading will need, from the models' config files (without their weights): each
/// captioner's beam against its vocabulary, and the generators' memory bound against the
/// machine's memory. Settings that do not fit are refused, naming them.
pub fn preflight(settings: &RunSettings, locator: &Locator) -> anyhow::Result<()> {
    // An embedded model this binary lacks is refused before the run folder is created.
    let models = std::iter::once(&settings.clip).chain(settings.biggan.as_ref().map(|b| &b.model));
    for spec in models {
        if let Some(Err(e)) = crate::embedded::lookup(spec) {
            return Err(e.into());
        }
    }
    let mut any_blip = false;
    for c in &settings.captioners {
        let spec = c.dir.display().to_string();
        if is_blip_reference(&spec) {
            any_blip = true;
            let vocab = blip_vocab(locator, &spec)
                .map_err(|e| input_err!("--captioners {}: {e:#}", c.label))?;
            crate::resources::check_beam(settings.beam, vocab)?;
            if 2 * settings.beam > vocab {
                return Err(input_err!(
                    "--beam {} is too wide for BLIP's vocabulary of {vocab} tokens (--captioners {})",
                    settings.beam,
                    c.label
                ));
            }
            continue;
        }
        let cfg = read_config(&c.dir).map_err(|e| input_err!("--captioners {}: {e:#}", c.label))?;
        crate::resources::check_beam(settings.beam, cfg.decoder.vocab_size)?;
    }
    if let (Some(d), false) = (&settings.blip, any_blip) {
        return Err(input_err!(
            "--prompt / --max-length (prompt {:?}, max_length {}) set how BLIP captioners decode, \
             but none of --captioners ({}) is a BLIP model",
            d.prompt.as_deref().unwrap_or(""),
            d.max_length,
            settings
                .captioners
                .iter()
                .map(|c| format!("{}={}", c.label, c.dir.display()))
                .collect::<Vec<_>>()
                .join(",")
        ));
    }
    if let Some(c) = crate::generate::clip_config(locator, &settings.clip) {
        settings.siren.validate_memory(&c)?;
        if let Some(b) = &settings.biggan {
            if let Some(g) = crate::generate::biggan_config(locator, &b.model) {
                b.settings.validate_memory(&c, &g)?;
            }
        }
    }
    Ok(())
}

/// How many images `run` computes at once when `--jobs` is not given: one per thread of the
/// machine on the CPU, fewer when that many images' estimated memory (each generator's
/// [`crate::generate::SirenSettings::memory_estimate`] /
/// [`crate::generate::biggan::BigGanSettings::memory_estimate`], the largest, counted whole for
/// every job: an upper bound, as the models are shared) would exceed the machine's; one on a GPU.
pub fn default_jobs(settings: &RunSettings, locator: &Locator, device: &Device) -> usize {
    if !device.is_cpu() {
        return 1;
    }
    let threads = rayon::current_num_threads().max(1);
    let Some(c) = crate::generate::clip_config(locator, &settings.clip) else {
        return threads;
    };
    let mut per_image = settings.siren.memory_estimate(Some(&c)).0;
    if let Some(b) = &settings.biggan {
        if let Some(g) = crate::generate::biggan_config(locator, &b.model) {
            per_image = per_image.max(b.settings.memory_estimate(Some((&c, &g))).0);
        }
    }
    match crate::resources::machine_memory() {
        Some(m) if per_image > 0.0 => threads.min(((m as f64 / per_image) as usize).max(1)),
        _ => threads,
    }
}

/// The vocabulary size in a BLIP model's config.json (in its folder or the hub cache).
fn blip_vocab(locator: &Locator, spec: &str) -> anyhow::Result<usize> {
    let model = locator.open(&ModelRef::parse(spec)?)?;
    let path = model.file("config.json")?;
    let text = std::fs::read_to_string(&path)
        .map_err(|e| input_err!("cannot read {}: {e}", path.display()))?;
    let cfg = crate::models::blip::Config::from_json(&text)
        .map_err(|e| input_err!("{}: {e:#}", path.display()))?;
    Ok(cfg.text_config.vocab_size)
}

/// Every model of a run, loaded once.
pub struct Models {
    /// Guides generation and computes CLIPScore and text similarity.
    pub clip: Clip,
    /// Loaded when the settings hold BigGAN's (a phrase of the prompts file draws with it).
    pub biggan: Option<BigGan>,
    /// By label, in `--captioners` order: LSTM or BLIP captioners.
    pub captioners: Vec<(String, Box<dyn ImageCaptioner>)>,
    /// What `run.json` records of each (`clip`, `biggan`, `captioner:LABEL`), with its content
    /// fingerprint.
    pub records: BTreeMap<String, serde_json::Value>,
}

/// Loads CLIP, BigGAN (when used) and the captioners, and fingerprints each.
pub fn load(settings: &RunSettings, locator: &Locator, device: &Device) -> anyhow::Result<Models> {
    let clip_model = locator.open(&ModelRef::parse_option(&settings.clip, "--clip")?)?;
    let clip = Clip::load(&clip_model, device)
        .with_context(|| format!("loading CLIP `{}`", settings.clip))?;
    let mut records = BTreeMap::from([("clip".to_owned(), serde_json::to_value(&clip.record)?)]);
    let biggan = match &settings.biggan {
        None => None,
        Some(b) => {
            let m = locator.open(&ModelRef::parse_option(&b.model, "--biggan")?)?;
            let g = BigGan::load(&m, device)
                .with_context(|| format!("loading BigGAN `{}`", b.model))?;
            b.settings.validate(Some(g.config().num_classes))?;
            records.insert("biggan".to_owned(), serde_json::to_value(m.record())?);
            Some(g)
        }
    };
    for name in records.keys() {
        anyhow::ensure!(
            records[name]
                .get("fingerprint")
                .is_some_and(|f| f.is_string()),
            "model `{name}` could not be fingerprinted"
        );
    }
    let mut captioners = Vec::new();
    for c in &settings.captioners {
        let spec = c.dir.display().to_string();
        if is_blip_reference(&spec) {
            let option = format!("--captioners {}", c.label);
            let loaded = BlipCaptioner::load_reference(
                &spec,
                &option,
                settings.blip.clone().unwrap_or_default(),
                locator,
                device,
            )
            .map_err(|e| input_err!("{option}: cannot load the BLIP model `{spec}`: {e:#}"))?;
            records.insert(format!("captioner:{}", c.label), loaded.describe());
            captioners.push((
                c.label.clone(),
                Box::new(BlipRunCaptioner {
                    captioner: loaded,
                    beam: settings.beam,
                    device: device.clone(),
                }) as Box<dyn ImageCaptioner>,
            ));
            continue;
        }
        let loaded = Captioner::load(&c.dir, locator, device).map_err(|e| {
            input_err!(
                "--captioners {}: cannot load the captioner in {}: {e:#}",
                c.label,
                c.dir.display()
            )
        })?;
        records.insert(
            format!("captioner:{}", c.label),
            serde_json::json!({
                "folder": c.dir.display().to_string(),
                "fingerprint": loaded.fingerprint,
                "architecture": loaded.config.architecture,
                "encoder": loaded.config.encoder.kind.name(),
                "encoder_model": loaded.encoder.record,
                "vocab_size": loaded.vocab.len(),
                "training": loaded.config.training,
            }),
        );
        captioners.push((
            c.label.clone(),
            Box::new(LstmCaptioner {
                captioner: loaded,
                beam: settings.beam,
                device: device.clone(),
            }),
        ));
    }
    Ok(Models {
        clip,
        biggan,
        captioners,
        records,
    })
}
