//! The integration tests, one crate so that CI links candle once: each module tests one area
//! through the library or the `roundtrip` binary; `common` holds the helpers they share.

mod biggan_generate;
mod biggan_parity;
mod bleu_nltk;
mod bleu_props;
mod blip_commands;
mod blip_parity;
mod captioner;
mod cli;
mod clip_parity;
mod clip_train;
mod coco_metrics;
mod common;
mod decoder_parity;
mod download;
mod encoder_parity;
mod eval_gan;
mod features;
mod gan;
mod generate;
mod progress;
mod pth_reader;
mod run;
mod shapes;
mod siren_parity;
mod train_encoder;
mod train_retry;
