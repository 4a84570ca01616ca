//! `roundtrip run`: the whole round trip for every phrase of a prompts file.
//!
//! Data flows one way: prompts -> generated image ([`crate::generate::Generator`]) -> captions
//! ([`stages::ImageCaptioner`]) -> scores ([`stages::Judge`]) -> one [`record::PhraseRecord`]
//! per (phrase, generator) image -> [`report`] (JSON, CSV, HTML, Markdown). [`execute`] runs it in
//! four phases: [`plan`] (prompts, shard, photos; with [`requirements`], everything the run
//! needs, all missing pieces reported at once before anything is written), [`load`] (models),
//! [`compute`] (each image's record, stage by stage) and [`report`].
//!
//! Each phrase is drawn by every generator of `--generators` (a line's `[generator]` prefix pins
//! it to that one), one record per image. An image's result depends only on the run settings,
//! the phrase, the generator and the photo: its seed is derived from the run seed, the phrase
//! text and (except for the phrase's first generator, which keeps the one-generator seed) the
//! generator's name, its files are named after the phrase (and that generator), and its shard is
//! a hash of the phrase. So a run can be killed and restarted (finished phrases are
//! kept), split over machines with `--shard K/N` and put back together with `merge`, and each
//! way gives the report an uninterrupted single run gives (up to the `seconds` timings).

pub mod compare;
pub mod compute;
pub mod html;
pub mod load;
pub mod manifest;
pub mod merge;
pub mod plan;
pub mod preset;
pub mod record;
pub mod redraw;
pub mod report;
pub mod requirements;
pub mod rerender;
pub mod settings;
pub mod shard;
pub mod stages;
pub mod table;

use std::path::PathBuf;
use std::time::Instant;

use candle_core::Device;

pub use crate::fingerprint::sha256_hex;
use crate::hub::Locator;
pub use manifest::{open_out_dir, prepare_out_dir, read_manifest, Layout, Manifest, PromptEntry};
pub use settings::parse_generators;
pub use settings::{
    effective_settings, parse_captioners, settings_difference, validate_settings,
    BigGanRunSettings, CaptionerSpec, RunSettings,
};
pub use shard::{image_id, image_seed, phrase_id, phrase_seed, Shard};

/// Version of `run.json` and of the phrase records; bumped on any incompatible change (2: stage
/// keys, file digests and model fingerprints).
pub const RUN_SCHEMA_VERSION: u32 = 2;

/// A request for `roundtrip run`.
pub struct RunRequest {
    pub prompts: PathBuf,
    pub out: PathBuf,
    pub settings: RunSettings,
    pub shard: Option<Shard>,
    pub force: bool,
    pub quiet: bool,
    /// Images computed at once (`None`: [`load::default_jobs`]); no part of any result's key.
    pub jobs: Option<usize>,
    pub device: Device,
    /// How `report.html` shows the images.
    pub gallery: html::GalleryImages,
}

/// What a run did.
#[derive(Debug)]
pub struct RunSummary {
    pub report: PathBuf,
    pub phrases: usize,
    /// One per phrase and generator drawing it.
    pub images: usize,
    /// Images generated.
    pub computed: usize,
    /// Images kept whose captions or scores were recomputed.
    pub updated: usize,
    /// Images whose record was up to date.
    pub reused: usize,
}

/// Runs the round trip: validates everything, then brings each phrase up to date (computing only
/// the stages whose inputs changed) and writes the report.
pub fn execute(req: &RunRequest) -> anyhow::Result<RunSummary> {
    let t_start = Instant::now();
    // 1. Plan, and check everything before any long work or any write: every missing model,
    // captioner or photo at once (hub models fetched when they are all that is missing).
    let plan = plan::plan(req)?;
    let locator = Locator::from_env_quiet(req.quiet);
    let mut missing = plan.missing.clone();
    missing.extend(requirements::check_models(&plan.settings, &locator));
    requirements::ensure(missing, &locator)?;
    load::preflight(&plan.settings, &locator)?;
    let (_lock, old) = manifest::open_run(&req.out, req.force)?;
    let layout = Layout {
        root: req.out.clone(),
    };

    // 2. Load every model once, fingerprint it, and record the run. With several jobs, candle's
    // own thread counts are each job's share from here on (before any model's first operation).
    let images: usize = plan.phrases.iter().map(|p| p.images.len()).sum();
    let jobs = req
        .jobs
        .unwrap_or_else(|| load::default_jobs(&plan.settings, &locator, &req.device))
        .clamp(1, images.max(1));
    let _threads =
        (jobs > 1).then(|| crate::resources::ThreadsEnv::set(compute::threads_per_job(jobs)));
    let models = load::load(&plan.settings, &locator, &req.device)?;
    let manifest = Manifest::new(
        &plan.settings,
        models.records.clone(),
        &req.prompts,
        &plan.prompts,
        req.shard,
    );
    manifest::write_manifest(&layout, &manifest, old.as_ref(), req.quiet)?;

    // 3. Each phrase: reuse what is up to date, compute the rest.
    let done = compute::compute_all(
        &plan,
        &layout,
        &manifest,
        &models,
        &req.device,
        req.quiet,
        jobs,
    )?;

    // 4. The report, and its summary on stderr.
    let written = report::write_all(
        &layout,
        &manifest,
        &plan.lines(),
        &done.records,
        req.gallery,
    )?;
    let images = if done.records.len() == plan.phrases.len() {
        String::new()
    } else {
        format!(", {} images", done.records.len())
    };
    crate::stderr::status(
        req.quiet,
        format_args!(
            "{} phrases{images} ({} computed, {} updated, {} reused) in {:.1} s\n{}gallery: {}\ntable:   {}\ncsv:     {}",
            plan.phrases.len(),
            done.computed,
            done.updated,
            done.reused,
            t_start.elapsed().as_secs_f64(),
            written.summary,
            written.html.display(),
            written.markdown.display(),
            written.csv.display(),
        ),
    );
    Ok(RunSummary {
        report: written.json,
        phrases: plan.phrases.len(),
        images: done.records.len(),
        computed: done.computed,
        updated: done.updated,
        reused: done.reused,
    })
}
