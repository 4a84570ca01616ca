//! Training and evaluating a small CLIP on a captioned dataset (`roundtrip train-clip`,
//! `roundtrip eval-clip`), with the same model code as the published CLIP
//! ([`crate::models::clip`]): a word-level tokenizer built from the training captions, transformers'
//! initialisation, CLIP's symmetric contrastive loss with a learnable temperature, AdamW with
//! warmup and cosine decay, random square crops, and retrieval figures.

pub mod data;
pub mod eval;
pub mod init;
pub mod loss;
pub mod settings;
pub mod tokenizer;
pub mod train;

pub use eval::{evaluate_clip, EvalClipReport};
pub use loss::contrastive_loss;
pub use train::{train_clip, ClipTrainSettings, ClipTrainSummary, TrainClipRequest};
