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
    let cgroup = ["/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"]
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
        Some(m) if !(estimate <= m as f64) => Err(InputError::new(format!(
            "{setting} needs about {} of memory, more than this machine's {}: choose a smaller value",
            human_bytes(estimate),
            human_bytes(m as f64)
        ))),
        _ => Ok(()),
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
        assert!(check_memory_against("x", 1e30, None).is_ok());
        assert!(machine_memory().is_some_and(|m| m > 0));
    }
}
