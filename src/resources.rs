//! Memory bounds: a setting whose estimated working memory exceeds the machine's is refused
//! before anything is allocated or written, naming the setting, the estimate and the memory,
//! instead of ending in an allocator abort half-way through.

use crate::error::InputError;

/// Bytes of memory this process may use: the smaller of the machine's RAM (`MemTotal`) and a
/// cgroup limit, if any. `None` where it cannot be read (then nothing is refused).
pub fn machine_memory() -> Option<u64> {
    if let Some(v) = std::env::var("ROUNDTRIP_MEMORY_LIMIT")
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
    {
        return Some(v);
    }
    let total = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map(|kb| kb.saturating_mul(1024));
    let cgroup = [
        "/sys/fs/cgroup/memory.max",
        "/sys/fs/cgroup/memory/memory.limit_in_bytes",
    ]
    .iter()
    .find_map(|p| std::fs::read_to_string(p).ok())
    .and_then(|s| s.trim().parse::<u64>().ok());
    match (total, cgroup) {
        (Some(t), Some(c)) => Some(t.min(c)),
        (t, c) => t.or(c),
    }
}

/// Human-readable bytes (`1.5 GiB`).
pub fn human_bytes(bytes: f64) -> String {
    const UNITS: [&str; 7] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    let mut v = bytes;
    let mut i = 0;
    while v >= 1024.0 && i + 1 < UNITS.len() {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{v:.0} {}", UNITS[0])
    } else {
        format!("{v:.1} {}", UNITS[i])
    }
}

/// Refuses `setting` (e.g. `--size 100000`) when `estimate` bytes (an f64, so that absurd values
/// cannot overflow) exceed the machine's memory.
pub fn check_memory(setting: &str, estimate: f64) -> Result<(), InputError> {
    check_memory_against(setting, estimate, machine_memory())
}

/// [`check_memory`] against a given memory size (`None`: unknown, nothing refused).
pub fn check_memory_against(
    setting: &str,
    estimate: f64,
    memory: Option<u64>,
) -> Result<(), InputError> {
    match memory {
        Some(m) if !within(estimate, m as f64) => Err(InputError::new(format!(
            "{setting} needs about {} of memory, more than this machine's {}: choose a smaller value",
            human_bytes(estimate),
            human_bytes(m as f64)
        ))),
        // Memory unknown: still nothing larger than one allocation can ever be (isize::MAX bytes),
        // so that an absurd value is refused rather than ending in an overflow or an abort.
        None if !within(estimate, isize::MAX as f64) => Err(InputError::new(format!(
            "{setting} needs about {} of memory, more than any machine can address: choose a smaller value",
            human_bytes(estimate)
        ))),
        _ => Ok(()),
    }
}

/// Whether `estimate` is at most `bound` (false for NaN).
fn within(estimate: f64, bound: f64) -> bool {
    estimate <= bound
}

/// Bytes of one beam-search candidate ([`crate::models::lstm_decoder::LstmDecoder::beam`]): its
/// word sequence (a `Vec<u32>` of up to a caption's length, with the allocator's overhead), its
/// score and the handle of its LSTM state.
pub const BEAM_CANDIDATE_BYTES: f64 = 128.0;

/// Bytes of one beam hypothesis besides its candidates: its LSTM state (hidden and cell rows of
/// a decoder up to 512 wide, with candle's tensor headers).
pub const BEAM_HYPOTHESIS_BYTES: f64 = 4096.0;

/// Estimated peak memory of a beam search of width `beam` over `vocab_size` words: each step,
/// every one of up to `beam` hypotheses proposes its best `min(beam, vocab)` continuations, all
/// kept as candidates until the step's best `beam` are chosen; each hypothesis holds its LSTM
/// state; the log-probabilities and their sort order over the vocabulary (4 + 8 bytes a word)
/// are computed one hypothesis at a time.
pub fn beam_bytes(beam: usize, vocab_size: usize) -> f64 {
    let (k, v) = (beam as f64, vocab_size.max(1) as f64);
    k * k.min(v) * BEAM_CANDIDATE_BYTES + k * BEAM_HYPOTHESIS_BYTES + v * 12.0
}

/// Refuses a beam width that cannot run, before any captioning: 0 (exit 2, "--beam must be at
/// least 1"), or one whose search ([`beam_bytes`]) needs more than the machine's memory. For
/// `caption`, `eval` and `run`, once the captioner's vocabulary size is known.
pub fn check_beam(beam: usize, vocab_size: usize) -> Result<(), InputError> {
    check_beam_width(beam)?;
    check_memory(&format!("--beam {beam}"), beam_bytes(beam, vocab_size))
}

/// The part of [`check_beam`] that needs no captioner: the width is at least 1.
pub fn check_beam_width(beam: usize) -> Result<(), InputError> {
    if beam == 0 {
        return Err(InputError::new(
            "--beam must be at least 1 (1 is greedy decoding)",
        ));
    }
    Ok(())
}

/// candle's thread counts (`RAYON_NUM_THREADS`, which sizes its matrix products' parallelism,
/// and `CANDLE_NUM_THREADS`, which sizes the one process-wide pool of its large element-wise
/// operations) set to `threads` until dropped, then put back. candle reads them from the
/// environment, not from the current rayon pool, so `run`'s one-thread jobs must set them
/// before any model's first operation: otherwise every job splits each product for all the
/// machine's threads and queues for the element-wise pool's one lock (measured: 6 shapes phrases
/// with both generators, two jobs, 66 s left as they were, 32 s set to one thread). The values
/// do not depend on these counts.
pub struct ThreadsEnv {
    old: Vec<(&'static str, Option<std::ffi::OsString>)>,
}

impl ThreadsEnv {
    const VARS: [&'static str; 2] = ["RAYON_NUM_THREADS", "CANDLE_NUM_THREADS"];

    pub fn set(threads: usize) -> Self {
        let old = Self::VARS
            .iter()
            .map(|&v| (v, std::env::var_os(v)))
            .collect();
        for v in Self::VARS {
            std::env::set_var(v, threads.to_string());
        }
        Self { old }
    }
}

impl Drop for ThreadsEnv {
    fn drop(&mut self) {
        for (v, old) in &self.old {
            match old {
                Some(x) => std::env::set_var(v, x),
                None => std::env::remove_var(v),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn estimates_above_the_memory_are_refused_naming_setting_and_sizes() {
        let e = check_memory_against("--size 1000000", 8.0e12, Some(24 << 30)).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("--size 1000000") && msg.contains("7.3 TiB") && msg.contains("24.0 GiB"),
            "{msg}"
        );
        assert!(check_memory_against("--size 64", 1.0e6, Some(24 << 30)).is_ok());
        assert!(check_memory_against("x", f64::NAN, Some(1)).is_err());
        assert!(check_memory_against("x", f64::INFINITY, Some(1)).is_err());
        assert!(check_memory_against("x", 1e12, None).is_ok());
        let e = check_memory_against("--size 9", 1e30, None).unwrap_err();
        assert!(e.to_string().contains("--size 9 needs about"), "{e}");
        assert!(machine_memory().is_some_and(|m| m > 0));
    }

    #[test]
    fn beams_are_refused_at_zero_and_when_their_candidates_exceed_the_memory() {
        assert_eq!(
            check_beam_width(0).unwrap_err().to_string(),
            "--beam must be at least 1 (1 is greedy decoding)"
        );
        assert!(check_beam(0, 40).is_err());
        // Flickr8k-sized vocabulary, usual widths: a few MiB.
        assert!(beam_bytes(20, 8000) < 4.0 * 1024.0 * 1024.0);
        assert!(beam_bytes(1, 1) > 0.0);
        // A billion-wide beam over 40 words: 40 candidates per hypothesis, ~8 TB.
        let huge = beam_bytes(1_000_000_000, 40);
        assert!(huge > 5e12 && huge < 2e13, "{huge}");
        assert!(beam_bytes(usize::MAX, usize::MAX).is_finite());
    }
}
