//! `roundtrip`: text -> image -> text round-trip experiments.
//!
//! Data flows one way: prompts -> generated image -> captions -> scores -> report. This crate
//! holds everything but argument parsing and process exit, which live in `src/main.rs` and `cli`.

pub mod bleu;
pub mod captioner;
pub mod cli;
pub mod dataset;
pub mod error;
pub mod features;
pub mod fsutil;
pub mod generate;
pub mod hub;
pub mod imageops;
pub mod models;
pub mod progress;
pub mod prompts;
pub mod text;
