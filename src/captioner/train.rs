//! `roundtrip train`: fits the merge-model decoder on cached encoder features of a dataset's
//! training split, with teacher forcing, Adam, host-seeded dropout and early stopping on the dev
//! loss; or, with `--train-encoder`, trains a reduced VGG16- or Xception-shaped encoder from
//! scratch jointly with the decoder (Adam over both, the same loss, seeded light augmentation,
//! batches of images with all their captions). After every epoch the whole state (parameters,
//! Adam moments, BatchNorm running statistics, epoch, best dev loss) goes into
//! `checkpoint.safetensors` by an atomic rename, so a killed run resumes with `--resume` from its
//! last finished epoch to exactly the model an uninterrupted run gives, and no file is ever
//! half-written. The epoch loop is the shared one ([`crate::train::driver`]); the two kinds of
//! training plug into it from [`super::jobs`]; this file checks everything and sets them up.

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::encoder::{encoder_geometry, load_encoder_option, trainable_encoder, EncoderKind};
use super::feature_cache::{CacheStats, FeatureCache};
pub use super::jobs::EpochLog;
use super::jobs::{samples, Captioning, Core, EndToEndJob, FrozenJob, Job, ENCODER_PREFIX};
use super::memory::{check_training_memory, encoder_footprint};
use super::model::{
    read_config, CaptionerConfig, EncoderSpec, TrainSettings, FORMAT, TRAINED_ENCODER_DIR,
    TRAINED_ENCODER_REFERENCE,
};
use super::vocab::Vocab;
use crate::dataset::Dataset;
use crate::fsutil::write_json;
use crate::hub::{Locator, ModelSource};
use crate::input_err;
use crate::models::lstm_decoder::{Config as DecoderConfig, LstmDecoder};
use crate::train::adam::named_vars;
use crate::train::{checkpoint, driver, Adam, BestCounter, ModelDir, Plan, CHECKPOINT};

pub struct TrainRequest {
    pub encoder: EncoderKind,
    /// Frozen encoder weights reference (None: the encoder's preset). Not with
    /// `settings.train_encoder`.
    pub weights: Option<String>,
    /// With `settings.train_encoder`: the encoder geometry, a name, file or folder (see
    /// [`encoder_geometry`]; None: `shapes`).
    pub encoder_config: Option<String>,
    pub dataset: PathBuf,
    pub out: PathBuf,
    pub settings: TrainSettings,
    pub resume: bool,
    pub cache_dir: PathBuf,
    pub quiet: bool,
    pub device: Device,
}

pub struct TrainSummary {
    pub epochs_run: usize,
    pub best_dev_loss: f32,
    /// Feature extraction of a frozen encoder (None when the encoder was trained).
    pub features: Option<CacheStats>,
    pub problems: usize,
}

fn validate(s: &TrainSettings) -> anyhow::Result<()> {
    if s.epochs == 0 || s.batch_size == 0 || s.embed == 0 || s.hidden == 0 {
        return Err(input_err!(
            "--epochs, --batch-size, --embed and --hidden must be at least 1"
        ));
    }
    if !(s.lr.is_finite() && s.lr > 0.0) {
        return Err(input_err!("--lr {} must be a positive number", s.lr));
    }
    if !(0.0..1.0).contains(&s.dropout) {
        return Err(input_err!("--dropout {} must lie in [0, 1)", s.dropout));
    }
    Ok(())
}

/// PyTorch's default initialisation, drawn on the host from `seed`: Linear and LSTM weights and
/// biases U(-1/sqrt(fan), 1/sqrt(fan)), embeddings N(0, 1).
fn init_decoder(cfg: &DecoderConfig, seed: u64, device: &Device) -> candle_core::Result<VarMap> {
    let varmap = VarMap::new();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let normal =
        rand_distr::Normal::new(0f32, 1.0).map_err(|e| candle_core::Error::Msg(e.to_string()))?;
    let shapes = [
        (
            "image_dense.weight",
            vec![cfg.hidden, cfg.feature_dim],
            cfg.feature_dim,
        ),
        ("image_dense.bias", vec![cfg.hidden], cfg.feature_dim),
        ("embedding.weight", vec![cfg.vocab_size, cfg.embed], 0),
        (
            "lstm.weight_ih_l0",
            vec![4 * cfg.hidden, cfg.embed],
            cfg.hidden,
        ),
        (
            "lstm.weight_hh_l0",
            vec![4 * cfg.hidden, cfg.hidden],
            cfg.hidden,
        ),
        ("lstm.bias_ih_l0", vec![4 * cfg.hidden], cfg.hidden),
        ("lstm.bias_hh_l0", vec![4 * cfg.hidden], cfg.hidden),
        (
            "decoder_dense.weight",
            vec![cfg.hidden, cfg.hidden],
            cfg.hidden,
        ),
        ("decoder_dense.bias", vec![cfg.hidden], cfg.hidden),
        (
            "output.weight",
            vec![cfg.vocab_size, cfg.hidden],
            cfg.hidden,
        ),
        ("output.bias", vec![cfg.vocab_size], cfg.hidden),
    ];
    {
        let mut data = varmap
            .data()
            .lock()
            .map_err(|_| candle_core::Error::Msg("poisoned var map".into()))?;
        for (name, shape, fan) in shapes {
            let n: usize = shape.iter().product();
            let v: Vec<f32> = if fan == 0 {
                (0..n)
                    .map(|_| rand_distr::Distribution::sample(&normal, &mut rng))
                    .collect()
            } else {
                let b = 1.0 / (fan as f32).sqrt();
                (0..n).map(|_| rng.random_range(-b..b)).collect()
            };
            data.insert(
                name.to_owned(),
                Var::from_tensor(&Tensor::from_vec(v, shape, device)?)?,
            );
        }
    }
    Ok(varmap)
}

/// The images `names` as RGB bytes resized to `size` x `size` as the inference preprocessing
/// resizes them (PIL's nearest filter; unchanged when already that size).
fn load_images(ds: &Dataset, names: &[String], size: usize) -> anyhow::Result<Vec<Vec<u8>>> {
    names
        .iter()
        .map(|n| {
            let img = crate::imageops::open_rgb(&ds.image_path(n))?;
            Ok(crate::imageops::resize::pil_resize_nearest(&img, size, size).into_raw())
        })
        .collect()
}

/// Decodes every image of `paths` (in parallel), so that a corrupt file is refused (exit 2,
/// naming it) before any output is written; the first bad one in `paths` order is reported.
pub(crate) fn check_images(paths: &[PathBuf], quiet: bool) -> anyhow::Result<()> {
    use rayon::prelude::*;
    let bar = crate::stderr::bar(paths.len() as u64, "checking images", quiet);
    let results: Vec<anyhow::Result<()>> = paths
        .par_iter()
        .map(|p| {
            let r = crate::imageops::open_rgb(p).map(drop);
            bar.inc(1);
            r
        })
        .collect();
    bar.finish_and_clear();
    results.into_iter().collect()
}

/// What `--resume` must find unchanged: the model's shape and vocabulary, the encoder, the seed
/// and what each epoch draws (`--epochs`, `--patience`, `--lr` and `--batch-size` may change).
fn resume_view(c: &CaptionerConfig) -> serde_json::Value {
    serde_json::json!({
        "encoder": {"kind": c.encoder.kind, "config": c.encoder.config},
        "decoder": c.decoder,
        "training": {
            "seed": c.training.seed,
            "train_encoder": c.training.train_encoder,
            "augmentation": c.training.augmentation,
            "captions_per_image": c.training.captions_per_image,
            "first_caption_only": c.training.first_caption_only,
        },
    })
}

/// Files of a captioner folder that an earlier attempt may have left, removed when a training
/// starts over (config.json and vocab.json are rewritten).
const CAPTIONER_OUTPUTS: [&str; 6] = [
    "config.json",
    "vocab.json",
    "model.safetensors",
    "train_log.jsonl",
    "encoder/model.safetensors",
    "encoder/config.json",
];

pub fn train(req: &TrainRequest) -> anyhow::Result<TrainSummary> {
    let s = &req.settings;
    validate(s)?;
    if s.train_encoder && req.weights.is_some() {
        return Err(input_err!(
            "--weights names a frozen encoder's weights; with --train-encoder the encoder starts \
             from random weights (choose its geometry with --encoder-config)"
        ));
    }
    if !s.train_encoder
        && (req.encoder_config.is_some()
            || s.augmentation.is_some()
            || s.captions_per_image.is_some())
    {
        return Err(input_err!(
            "--encoder-config, --captions-per-image and augmentation apply to --train-encoder only"
        ));
    }
    if s.captions_per_image == Some(0) {
        return Err(input_err!("--captions-per-image must be at least 1"));
    }
    let out = &req.out;

    // Everything is checked before MODEL_DIR is created or touched: settings, dataset (every
    // image it trains on decoded), encoder and memory.
    let mut ds = Dataset::load(&req.dataset)?;
    if !req.quiet {
        ds.warn_problems("config.json");
    }
    if s.first_caption_only {
        for caps in ds.captions.values_mut() {
            caps.truncate(1);
        }
    }
    if ds.train.is_empty() || ds.dev.is_empty() {
        return Err(input_err!(
            "{}: the train and dev splits must not be empty",
            req.dataset.display()
        ));
    }
    let vocab = Vocab::build(
        ds.train
            .iter()
            .flat_map(|n| ds.captions[n].iter().map(String::as_str)),
    );
    let most_captions = ds
        .train
        .iter()
        .map(|n| ds.captions[n].len())
        .max()
        .unwrap_or(1);
    let images = (ds.train.len() + ds.dev.len()) as f64;
    let decoder_for = |feature_dim: usize| DecoderConfig {
        vocab_size: vocab.len(),
        feature_dim,
        embed: s.embed,
        hidden: s.hidden,
        dropout: s.dropout,
        max_length: vocab.max_length,
    };

    // The encoder: frozen (loaded) or trainable (initialised once its memory is known to fit).
    let locator = Locator::from_env_quiet(req.quiet);
    let encoder_config = req.encoder_config.as_deref().unwrap_or("shapes");
    let (frozen, trainable, encoder_spec) = if s.train_encoder {
        let geometry = encoder_geometry(req.encoder, encoder_config)?;
        let (activations, params) = encoder_footprint(req.encoder, &geometry)?;
        let side = geometry
            .get("image_size")
            .and_then(serde_json::Value::as_u64)
            .unwrap_or(0) as usize;
        let feature_dim = geometry
            .get("fc_dim")
            .or_else(|| geometry.pointer("/exit_convs/1"))
            .and_then(serde_json::Value::as_u64)
            .unwrap_or(0) as usize;
        let per_image = s
            .captions_per_image
            .unwrap_or(most_captions)
            .min(most_captions);
        check_training_memory(
            s,
            &decoder_for(feature_dim),
            s.batch_size as f64 * per_image as f64,
            Some((activations, params, side)),
            images * 3.0 * side as f64 * side as f64,
            encoder_config,
        )?;
        let enc = trainable_encoder(req.encoder, &geometry, None, s.seed, &req.device)?;
        let spec = EncoderSpec {
            kind: req.encoder,
            reference: TRAINED_ENCODER_REFERENCE.into(),
            record: serde_json::json!({
                "reference": TRAINED_ENCODER_REFERENCE,
                "source": "trained",
                "path": TRAINED_ENCODER_REFERENCE,
            }),
            config: Some(geometry),
        };
        (None, Some(enc), spec)
    } else {
        let weights = req
            .weights
            .clone()
            .unwrap_or_else(|| req.encoder.default_weights().to_owned());
        let encoder =
            load_encoder_option(req.encoder, &weights, "--weights", &locator, &req.device)?;
        let feature_dim = encoder.encoder.feature_dim();
        check_training_memory(
            s,
            &decoder_for(feature_dim),
            s.batch_size as f64,
            None,
            images * feature_dim as f64 * 4.0,
            encoder_config,
        )?;
        let reference = match crate::hub::ModelRef::parse(&weights)?.source {
            ModelSource::Folder(p) => std::fs::canonicalize(&p).unwrap_or(p).display().to_string(),
            ModelSource::Hub { .. } | ModelSource::Embedded(_) => weights,
        };
        let spec = EncoderSpec {
            kind: req.encoder,
            reference,
            record: serde_json::to_value(&encoder.record)?,
            config: None,
        };
        (Some(encoder), None, spec)
    };
    let feature_dim = match (&frozen, &trainable) {
        (Some(e), _) => e.encoder.feature_dim(),
        (_, Some(t)) => t.feature_dim(),
        _ => unreachable!("one encoder"),
    };
    let decoder_cfg = decoder_for(feature_dim);
    // Every image the training reads, decoded: the trained encoder's are kept (resized), a
    // frozen encoder's are checked here and read again for their features.
    let loaded = match &trainable {
        Some(enc) => {
            let size = enc.input_size();
            Some((
                load_images(&ds, &ds.train, size)?,
                load_images(&ds, &ds.dev, size)?,
            ))
        }
        None => {
            let paths: Vec<PathBuf> = ds
                .train
                .iter()
                .chain(&ds.dev)
                .map(|n| ds.image_path(n))
                .collect();
            check_images(&paths, req.quiet)?;
            None
        }
    };
    let counts: HashMap<String, usize> = ds.problem_counts();
    let config = CaptionerConfig {
        format: FORMAT.into(),
        version: 1,
        architecture: "merge-lstm".into(),
        encoder: encoder_spec,
        decoder: decoder_cfg.clone(),
        training: s.clone(),
        dataset: serde_json::json!({
            "path": std::fs::canonicalize(&req.dataset).unwrap_or(req.dataset.clone()).display().to_string(),
            "layout": ds.layout,
            "train_images": ds.train.len(), "dev_images": ds.dev.len(), "test_images": ds.test.len(),
            "problems": ds.problems.len(), "problem_kinds": counts,
        }),
    };

    // MODEL_DIR: created, locked for the whole training, swept; resumed or started (over).
    let mut model_dir = ModelDir::open(
        out,
        "train",
        "captioner",
        req.resume,
        &CAPTIONER_OUTPUTS,
        &[TRAINED_ENCODER_DIR],
    )?;
    let resume = model_dir.resume;
    let resumed_state = if resume {
        let old = read_config(out)?;
        if let Some(diff) = crate::diff::first_difference(&resume_view(&old), &resume_view(&config))
        {
            return Err(input_err!(
                "{}: --resume needs the same encoder, dataset vocabulary and settings as the \
                 interrupted run; changed: {diff}",
                out.display()
            ));
        }
        Some(checkpoint::read(&out.join(CHECKPOINT), &req.device)?)
    } else {
        None
    };
    write_json(&out.join("config.json"), &config)?;
    vocab.save(&out.join("vocab.json"))?;

    let varmap = init_decoder(&decoder_cfg, s.seed, &req.device)?;
    let decoder = LstmDecoder::new(
        VarBuilder::from_varmap(&varmap, DType::F32, &req.device),
        &decoder_cfg,
    )?;
    let params = named_vars(&varmap)?;
    let dev_data = samples(&ds, &ds.dev, &vocab);
    let mut features = None;
    let job: Box<dyn Job> = match (frozen, trainable, loaded) {
        (Some(encoder), _, _) => {
            // Features of the train and dev images, computed once and cached.
            let cache = FeatureCache::new(&req.cache_dir, &encoder);
            let names: Vec<String> = ds.train.iter().chain(&ds.dev).cloned().collect();
            let paths: Vec<PathBuf> = names.iter().map(|n| ds.image_path(n)).collect();
            let bar = crate::stderr::bar(paths.len() as u64, "features", req.quiet);
            let (all_feats, stats) = cache.features(&encoder, &paths, 16, &req.device, &bar)?;
            bar.finish_and_clear();
            features = Some(stats);
            Box::new(FrozenJob {
                core: Core {
                    adam: Adam::new(params.clone(), s.lr)?,
                    decoder,
                    params,
                },
                train_feats: all_feats.narrow(0, 0, ds.train.len())?,
                dev_feats: all_feats.narrow(0, ds.train.len(), ds.dev.len())?,
                train_data: samples(&ds, &ds.train, &vocab),
                dev_data,
                batch_size: s.batch_size,
                device: req.device.clone(),
            })
        }
        (_, Some(encoder), Some((train_images, dev_images))) => {
            let mut all = params.clone();
            all.extend(
                encoder
                    .store()
                    .vars()
                    .iter()
                    .map(|(k, v)| (format!("{ENCODER_PREFIX}{k}"), v.clone())),
            );
            Box::new(EndToEndJob {
                core: Core {
                    adam: Adam::new(all, s.lr)?,
                    decoder,
                    params,
                },
                train_images,
                dev_images,
                train_captions: ds
                    .train
                    .iter()
                    .map(|n| ds.captions[n].iter().map(|c| vocab.encode(c)).collect())
                    .collect(),
                dev_data,
                augmentation: s.augmentation,
                captions_per_image: s.captions_per_image,
                batch_size: s.batch_size,
                device: req.device.clone(),
                encoder,
            })
        }
        _ => unreachable!("one encoder"),
    };

    let plan = Plan {
        seed: s.seed,
        epochs: s.epochs,
        patience: Some(s.patience),
        counter: BestCounter::EpochsSinceBest,
        ticks_per_epoch: job.batches(),
        bar_prefix: "steps",
        quiet: req.quiet,
        device: &req.device,
    };
    let mut trainer = Captioning {
        job,
        out: out.clone(),
    };
    let outcome = driver::run(&plan, &mut model_dir, resumed_state, &mut trainer)?;
    Ok(TrainSummary {
        epochs_run: outcome.epochs_run,
        // The dev losses are f32s (widened for the driver).
        best_dev_loss: outcome.best_dev_loss as f32,
        features,
        problems: ds.problems.len(),
    })
}
