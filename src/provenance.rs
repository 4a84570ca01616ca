//! Where a result comes from: the command line, when it started, and the tool that made it (its
//! version and, when built from a git checkout, the commit). `run.json` records it; nothing that
//! decides whether a result is reused reads it.

use serde::{Deserialize, Serialize};

/// The tool: its name and version, and the git commit it was built from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolInfo {
    pub name: String,
    pub version: String,
    /// `git rev-parse HEAD` of the checkout it was built from; absent when built from a
    /// packaged crate (no `.git`) or without git.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub git_commit: Option<String>,
    /// Whether the sources it was built from (`src/`, `build.rs`, `build/`, `Cargo.toml`,
    /// `Cargo.lock`) had uncommitted changes; absent with `git_commit`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub git_dirty: Option<bool>,
}

impl ToolInfo {
    /// This binary.
    pub fn current() -> Self {
        Self {
            name: env!("CARGO_PKG_NAME").to_owned(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            git_commit: option_env!("ROUNDTRIP_GIT_COMMIT").map(str::to_owned),
            git_dirty: option_env!("ROUNDTRIP_GIT_DIRTY").map(|d| d == "1"),
        }
    }

    /// `roundtrip 0.1.0 (3f2a9c1e0b7d, dirty)`, or without the parenthesis when no commit is
    /// known.
    pub fn describe(&self) -> String {
        match &self.git_commit {
            None => format!("{} {}", self.name, self.version),
            Some(c) => format!(
                "{} {} ({}{})",
                self.name,
                self.version,
                &c[..12.min(c.len())],
                if self.git_dirty == Some(true) {
                    ", dirty"
                } else {
                    ""
                }
            ),
        }
    }
}

/// A command's provenance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Provenance {
    /// The command line, program first, each argument as given (not UTF-8: lossily).
    pub command_line: Vec<String>,
    /// When the command started: RFC 3339, UTC, whole seconds (`2025-03-01T12:34:56Z`).
    pub started: String,
    pub tool: ToolInfo,
}

impl Provenance {
    /// This process: its command line, the current time, this binary.
    pub fn now() -> Self {
        Self {
            command_line: std::env::args_os()
                .map(|a| a.to_string_lossy().into_owned())
                .collect(),
            started: rfc3339_utc(std::time::SystemTime::now()),
            tool: ToolInfo::current(),
        }
    }

    /// The command line as one shell line: arguments that need it single-quoted.
    pub fn shell_line(&self) -> String {
        self.command_line
            .iter()
            .map(|a| shell_quote(a))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// An argument as a POSIX shell reads it back: bare when it is only safe characters, else in
/// single quotes (a quote inside as `'\''`).
pub fn shell_quote(arg: &str) -> String {
    let safe = |c: char| c.is_ascii_alphanumeric() || "-_./=:,@+%".contains(c);
    if !arg.is_empty() && arg.chars().all(safe) {
        arg.to_owned()
    } else {
        format!("'{}'", arg.replace('\'', r"'\''"))
    }
}

/// A time as RFC 3339 in UTC to the second; times before 1970 as 1970-01-01T00:00:00Z.
pub fn rfc3339_utc(t: std::time::SystemTime) -> String {
    let secs = t
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// The proleptic Gregorian date of a day count since 1970-01-01 (Howard Hinnant's
/// `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn rfc3339_dates() {
        let at = |s: u64| rfc3339_utc(UNIX_EPOCH + Duration::from_secs(s));
        assert_eq!(at(0), "1970-01-01T00:00:00Z");
        assert_eq!(at(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(at(1_709_251_199), "2024-02-29T23:59:59Z");
        assert_eq!(at(1_740_832_496), "2025-03-01T12:34:56Z");
        assert_eq!(at(4_102_444_800), "2100-01-01T00:00:00Z");
        assert_eq!(
            rfc3339_utc(UNIX_EPOCH - Duration::from_secs(5)),
            "1970-01-01T00:00:00Z"
        );
    }

    #[test]
    fn shell_lines_quote_what_needs_it() {
        let p = Provenance {
            command_line: ["roundtrip", "run", "a b.txt", "--out", "it's", ""]
                .map(str::to_owned)
                .to_vec(),
            started: String::new(),
            tool: ToolInfo::current(),
        };
        assert_eq!(
            p.shell_line(),
            r"roundtrip run 'a b.txt' --out 'it'\''s' ''"
        );
    }

    #[test]
    fn this_build_names_its_version_and_commit() {
        let t = ToolInfo::current();
        assert_eq!(t.version, env!("CARGO_PKG_VERSION"));
        // Built from this checkout (tests run from one): a full commit id, and the dirty flag.
        if std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.git")).exists() {
            let c = t.git_commit.as_deref().expect("a commit from the checkout");
            assert!(
                c.len() >= 40 && c.chars().all(|c| c.is_ascii_hexdigit()),
                "{c}"
            );
            assert!(t.git_dirty.is_some());
            assert!(t.describe().contains(&c[..12]));
        }
    }
}
