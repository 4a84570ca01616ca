//! The one way anything reaches stderr: progress bars, heartbeats, notes, warnings and status
//! lines.
//!
//! Results go to stdout or files; everything a person watches goes through here, so that a line
//! printed while a bar is drawn never tears the bar (lines are printed with every visible bar
//! suspended) and a command run without a terminal (a Slurm log, CI) gets plain lines instead of
//! bars: a bar's state as one heartbeat line at most every [`HEARTBEAT_ENV`] seconds (30 by
//! default), so that a batch log shows the command alive and how far it is. Bars are as wide as
//! the terminal. The message texts are the callers'; this module adds only the `note: ` /
//! `warning: ` prefixes.

use std::borrow::Cow;
use std::fmt::Display;
use std::io::{IsTerminal, Write};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle};

use crate::error::InputError;

/// The environment variable setting the seconds between two heartbeat lines (a number >= 0;
/// 0: a line at every step).
pub const HEARTBEAT_ENV: &str = "ROUNDTRIP_HEARTBEAT_SECS";

/// Seconds between two heartbeat lines where [`HEARTBEAT_ENV`] does not say.
pub const DEFAULT_HEARTBEAT_SECS: u64 = 30;

/// Every visible bar of the process is drawn through this, so lines can be printed above them.
fn bars() -> &'static MultiProgress {
    static BARS: OnceLock<MultiProgress> = OnceLock::new();
    BARS.get_or_init(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr()))
}

/// When the last line went to stderr (heartbeats wait [`heartbeat_interval`] after it).
fn last_line() -> &'static Mutex<Option<Instant>> {
    static LAST: Mutex<Option<Instant>> = Mutex::new(None);
    &LAST
}

/// Parses a [`HEARTBEAT_ENV`] value (`None`: unset or blank, the default).
pub fn parse_heartbeat(value: Option<&str>) -> Result<Duration, InputError> {
    let Some(v) = value.map(str::trim).filter(|v| !v.is_empty()) else {
        return Ok(Duration::from_secs(DEFAULT_HEARTBEAT_SECS));
    };
    v.parse::<f64>()
        .ok()
        .filter(|s| *s >= 0.0)
        .and_then(|s| Duration::try_from_secs_f64(s).ok())
        .ok_or_else(|| {
            InputError::new(format!(
                "{HEARTBEAT_ENV}=`{v}`: expected the seconds between two progress lines of a \
                 log, a number >= 0 (e.g. {DEFAULT_HEARTBEAT_SECS}; 0: a line at every step)"
            ))
        })
}

/// The seconds between two heartbeat lines, from [`HEARTBEAT_ENV`].
pub fn heartbeat_interval() -> Result<Duration, InputError> {
    parse_heartbeat(std::env::var(HEARTBEAT_ENV).ok().as_deref())
}

/// [`heartbeat_interval`], read once (a bad value, which the command line reports before
/// anything runs, falls back to the default).
fn interval() -> Duration {
    static INTERVAL: OnceLock<Duration> = OnceLock::new();
    *INTERVAL
        .get_or_init(|| heartbeat_interval().unwrap_or(Duration::from_secs(DEFAULT_HEARTBEAT_SECS)))
}

/// Whether stderr is a terminal (bars are drawn) or a file or pipe (plain lines only).
pub fn is_terminal() -> bool {
    std::io::stderr().is_terminal()
}

/// Prints one line on stderr, with any bar suspended while it is written.
pub fn line(msg: impl Display) {
    bars().suspend(|| {
        // stderr gone (a closed pipe) is no reason to stop a computation.
        let _ = writeln!(std::io::stderr(), "{msg}");
    });
    *last_line().lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
}

/// A status line (`[2/5] a phrase`, a run's last line), left out when the command is quiet.
pub fn status(quiet: bool, msg: impl Display) {
    if !quiet {
        line(msg);
    }
}

/// A status line for logs only: printed when stderr is not a terminal (where it stands in for a
/// bar, e.g. one line per training epoch) and the command is not quiet.
pub fn heartbeat(quiet: bool, msg: impl Display) {
    if !quiet && !is_terminal() {
        line(msg);
    }
}

/// `note: ...`: something the command decided for the user (a recomputation, a fresh start).
pub fn note(msg: impl Display) {
    line(format_args!("note: {msg}"));
}

/// `warning: ...`: something wrong that the command worked around.
pub fn warning(msg: impl Display) {
    line(format_args!("warning: {msg}"));
}

/// A duration as progress shows it: `42s`, `12m05s`, `3h07m`.
pub fn duration(d: Duration) -> String {
    let s = d.as_secs_f64().round() as u64;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        _ => {
            let m = (s + 30) / 60;
            format!("{}h{:02}m", m / 60, m % 60)
        }
    }
}

/// The time left at the mean rate so far: `elapsed` for `pos` of `len` steps (none before the
/// first step).
pub fn mean_eta(elapsed: Duration, pos: u64, len: u64) -> Option<Duration> {
    (pos > 0).then(|| elapsed.mul_f64(len.saturating_sub(pos) as f64 / pos as f64))
}

/// How a bar estimates the time left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Eta {
    /// The recent rate (indicatif's estimate): a bar of uniform steps.
    Recent,
    /// The mean rate since the bar started: a whole run, whose steps come in bursts between
    /// captioning and scoring.
    Mean,
}

impl Eta {
    /// The time left; none before the first step.
    fn left(self, elapsed: Duration, recent: Duration, pos: u64, len: u64) -> Option<Duration> {
        match self {
            Eta::Recent => (pos > 0).then_some(recent),
            Eta::Mean => mean_eta(elapsed, pos, len),
        }
    }
}

/// A progress bar: drawn on a terminal, as wide as it; without a terminal, a heartbeat line of
/// its state at most every [`HEARTBEAT_ENV`] seconds as it advances; nothing when quiet.
///
/// A bar may have a parent (a run's overall bar): advancing the bar advances the parent too,
/// and the bar's heartbeat line ends with the parent's state.
#[derive(Clone)]
pub struct Bar {
    pb: ProgressBar,
    /// Drawn on the terminal.
    drawn: bool,
    /// Heartbeat lines stand in for the drawn bar.
    log: bool,
    eta: Eta,
    /// The text between `{pos}/{len}` and the message (` steps,` for a run).
    unit: &'static str,
    /// Steps are bytes, shown as `1.2 MiB/605.0 MiB` (a download).
    bytes: bool,
    parent: Option<Box<Bar>>,
}

impl Bar {
    fn create(len: u64, prefix: &str, quiet: bool, eta: Eta, unit: &'static str) -> Self {
        Self::create_counting(len, prefix, quiet, eta, unit, false)
    }

    fn create_counting(
        len: u64,
        prefix: &str,
        quiet: bool,
        eta: Eta,
        unit: &'static str,
        bytes: bool,
    ) -> Self {
        let drawn = !quiet && is_terminal();
        let pb = if drawn {
            bars().add(ProgressBar::new(len))
        } else {
            ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::hidden())
        };
        let counts = if bytes {
            "{binary_bytes}/{binary_total_bytes}"
        } else {
            "{pos}/{len}"
        };
        let template = format!("{{prefix}} [{{wide_bar}}] {counts}{unit} {{msg}} ETA {{eta}}");
        if let Ok(style) = ProgressStyle::with_template(&template) {
            let style = style
                .with_key(
                    "eta",
                    move |s: &ProgressState, w: &mut dyn std::fmt::Write| {
                        let left = eta.left(s.elapsed(), s.eta(), s.pos(), s.len().unwrap_or(0));
                        let _ = w.write_str(&left.map_or_else(|| "?".to_owned(), duration));
                    },
                )
                .progress_chars("=> ");
            pb.set_style(style);
        }
        pb.set_prefix(prefix.to_owned());
        Self {
            pb,
            drawn,
            log: !quiet && !drawn,
            eta,
            unit,
            bytes,
            parent: None,
        }
    }

    /// A bar of `len` steps with a message slot (e.g. the current similarity) and the time left
    /// at the recent rate.
    pub fn new(len: u64, prefix: &str, quiet: bool) -> Self {
        Self::create(len, prefix, quiet, Eta::Recent, "")
    }

    /// A download's bar: `len` bytes (`PREFIX [===>  ] 1.5 MiB/605.3 MiB ETA 1m05s`).
    pub fn bytes(len: u64, prefix: &str, quiet: bool) -> Self {
        Self::create_counting(len, prefix, quiet, Eta::Recent, "", true)
    }

    /// A run's overall bar: `len` steps (`PREFIX [===>  ] 45/90 steps, MSG ETA 1m05s`), the time
    /// left at the mean rate since it started.
    pub fn overall(len: u64, prefix: &str, quiet: bool) -> Self {
        Self::create(len, prefix, quiet, Eta::Mean, " steps,")
    }

    /// A bar of `len` steps under this one (drawn below it, `PREFIX [===>  ] 15/30 steps, MSG
    /// ETA 3s`): its steps are this bar's too.
    pub fn child(&self, len: u64, prefix: &str) -> Self {
        let quiet = !self.log && !self.drawn;
        let mut b = Self::create(len, prefix, quiet, Eta::Recent, " steps,");
        b.parent = Some(Box::new(self.clone()));
        b
    }

    /// Advances by `n` steps (and the parent with it); a heartbeat line when one is due.
    pub fn inc(&self, n: u64) {
        self.pb.inc(n);
        if let Some(p) = &self.parent {
            p.pb.inc(n);
        }
        self.beat();
    }

    /// Moves to step `pos` (not the parent); a heartbeat line when one is due and the bar moved.
    pub fn set_position(&self, pos: u64) {
        let moved = pos != self.pb.position();
        self.pb.set_position(pos);
        if moved {
            self.beat();
        }
    }

    /// Moves to step `pos` without a heartbeat line: where a resumed task starts.
    pub fn start_at(&self, pos: u64) {
        self.pb.set_position(pos);
        self.pb.reset_eta();
    }

    /// Takes `n` steps off the length: steps found done without work (an image reused).
    pub fn dec_length(&self, n: u64) {
        self.pb.dec_length(n);
    }

    pub fn set_message(&self, msg: impl Into<Cow<'static, str>>) {
        self.pb.set_message(msg);
    }

    pub fn position(&self) -> u64 {
        self.pb.position()
    }

    pub fn length(&self) -> u64 {
        self.pb.length().unwrap_or(0)
    }

    /// Removes the drawn bar (its steps stay in the parent's).
    pub fn finish_and_clear(&self) {
        self.pb.finish_and_clear();
    }

    /// The bar's state in words: `PREFIX POS/LEN MSG, ETA 1m05s` (no ETA before the first step
    /// or after the last), then ` | ` and the parent's.
    pub fn describe(&self) -> String {
        let (pos, len) = (self.position(), self.length());
        let msg = self.pb.message();
        let counts = if self.bytes {
            format!(
                "{}/{}",
                indicatif::BinaryBytes(pos),
                indicatif::BinaryBytes(len)
            )
        } else {
            format!("{pos}/{len}")
        };
        let mut s = format!("{} {counts}{}", self.pb.prefix().trim_end(), self.unit);
        if !msg.is_empty() {
            s.push(' ');
            s.push_str(&msg);
            s.push(',');
        }
        let left = self.eta.left(self.pb.elapsed(), self.pb.eta(), pos, len);
        if let Some(left) = left.filter(|_| pos < len) {
            s.push_str(" ETA ");
            s.push_str(&duration(left));
        }
        let mut s = s.trim_end_matches(',').to_owned();
        if let Some(p) = &self.parent {
            s.push_str(" | ");
            s.push_str(&p.describe());
        }
        s
    }

    /// Prints `msg`, then ` | ` and [`Bar::describe`] (a phrase's end in a log), unless quiet.
    /// On a terminal the bar shows the state, so only `msg` is printed.
    pub fn line_with_state(&self, msg: impl Display) {
        if self.log {
            line(format_args!("{msg} | {}", self.describe()));
        } else if self.drawn {
            line(msg);
        }
    }

    /// A heartbeat line of [`Bar::describe`] when stderr is a log and [`HEARTBEAT_ENV`] seconds
    /// have passed since the last line.
    fn beat(&self) {
        if !self.log {
            return;
        }
        let due = {
            let last = last_line().lock().unwrap_or_else(|e| e.into_inner());
            last.is_none_or(|t| t.elapsed() >= interval())
        };
        if due {
            line(self.describe());
        }
    }
}

/// A bar of `len` steps (see [`Bar::new`]).
pub fn bar(len: u64, prefix: &str, quiet: bool) -> Bar {
    Bar::new(len, prefix, quiet)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heartbeat_seconds_parse_and_bad_values_name_the_variable() {
        assert_eq!(parse_heartbeat(None).unwrap(), Duration::from_secs(30));
        assert_eq!(parse_heartbeat(Some(" ")).unwrap(), Duration::from_secs(30));
        assert_eq!(parse_heartbeat(Some("0")).unwrap(), Duration::ZERO);
        assert_eq!(
            parse_heartbeat(Some("2.5")).unwrap(),
            Duration::from_millis(2500)
        );
        for bad in ["-1", "soon", "1e400", "NaN"] {
            let e = parse_heartbeat(Some(bad)).unwrap_err().to_string();
            assert!(
                e.starts_with(&format!("{HEARTBEAT_ENV}=`{bad}`: expected")),
                "{e}"
            );
        }
    }

    #[test]
    fn durations_read_at_a_glance() {
        let d = |s| duration(Duration::from_secs_f64(s));
        assert_eq!(
            [
                d(0.2),
                d(42.0),
                d(59.6),
                d(65.0),
                d(3599.0),
                d(3600.0),
                d(11_250.0)
            ],
            ["0s", "42s", "1m00s", "1m05s", "59m59s", "1h00m", "3h08m"]
        );
    }

    #[test]
    fn mean_eta_is_the_time_so_far_scaled_to_the_steps_left() {
        let ten = Duration::from_secs(10);
        assert_eq!(mean_eta(ten, 0, 100), None);
        assert_eq!(mean_eta(ten, 25, 100), Some(Duration::from_secs(30)));
        assert_eq!(mean_eta(ten, 100, 100), Some(Duration::ZERO));
        assert_eq!(mean_eta(ten, 120, 100), Some(Duration::ZERO));
    }

    #[test]
    fn a_child_describes_itself_then_its_parent() {
        let run = Bar::overall(90, "run", true);
        run.set_message("1/3 images");
        let phrase = run.child(30, "[2/3]");
        phrase.set_message("sim 0.3123");
        for _ in 0..15 {
            phrase.inc(1);
        }
        assert_eq!((phrase.position(), run.position()), (15, 15));
        let s = phrase.describe();
        assert!(
            s.starts_with("[2/3] 15/30 steps, sim 0.3123, ETA ")
                && s.contains(" | run 15/90 steps, 1/3 images, ETA "),
            "{s}"
        );
        run.dec_length(30);
        assert_eq!(run.length(), 60);
        let download = Bar::bytes(3 << 20, "config.json", true);
        download.inc(1 << 20);
        let s = download.describe();
        assert!(s.starts_with("config.json 1.00 MiB/3.00 MiB ETA "), "{s}");
        let done = Bar::new(4, "epochs", true);
        done.set_position(4);
        assert_eq!(done.describe(), "epochs 4/4");
    }
}
