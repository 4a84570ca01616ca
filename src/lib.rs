//! `roundtrip`: text -> image -> text round-trip experiments.
//!
//! Data flows one way: prompts -> generated image -> captions -> scores -> report. Argument
//! parsing lives in `cli` (the only module that knows clap) and process exit in `src/main.rs`;
//! everything below `cli` is plain library code.

pub mod captioner;
pub mod cli;
pub mod clip_train;
pub mod dataset;
pub mod device;
pub mod diff;
pub mod embedded;
pub mod error;
pub mod features;
pub mod fetch;
pub mod fingerprint;
pub mod fsutil;
pub mod gan;
pub mod generate;
pub mod hub;
pub mod imageops;
pub mod kernels;
pub mod lock;
pub mod metrics;
pub mod models;
pub mod prompts;
pub mod provenance;
pub mod resources;
pub mod run;
pub mod shapes;
pub mod stderr;
pub mod text;
pub mod train;
pub mod weights;

/// Makes glibc's malloc keep and reuse freed memory instead of returning it to the system.
///
/// CLIP guidance allocates and frees hundreds of tensors of 1-100 MB per step. By default glibc
/// serves every block above its mmap threshold (at most 32 MB, whatever is asked for) with a
/// fresh `mmap` and trims freed heap memory, so each step pays for up to 10^6 page faults of
/// freshly zeroed pages (a fifth to a third of a guidance step). Here mmap is not used at all
/// (`M_MMAP_MAX` 0: every block comes from the heap) and the heap is never trimmed
/// (`M_TRIM_THRESHOLD` -1), so freed blocks are reused. Call it first thing in `main` (and in
/// benchmarks); elsewhere it does nothing.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets malloc parameters (it takes malloc's own lock).
    unsafe {
        libc::mallopt(libc::M_MMAP_MAX, 0);
        libc::mallopt(libc::M_TRIM_THRESHOLD, -1);
    }
}
