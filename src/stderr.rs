//! The one way anything reaches stderr: progress bars, notes, warnings and status lines.
//!
//! Results go to stdout or files; everything a person watches goes through here, so that a line
//! printed while a bar is drawn never tears the bar (lines are printed with every visible bar
//! suspended) and a command run without a terminal (a Slurm log, CI) gets plain lines instead of
//! bars. The message texts are the callers'; this module adds only the `note: ` / `warning: `
//! prefixes.

use std::fmt::Display;
use std::io::{IsTerminal, Write};
use std::sync::OnceLock;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Every visible bar of the process is drawn through this, so lines can be printed above them.
fn bars() -> &'static MultiProgress {
    static BARS: OnceLock<MultiProgress> = OnceLock::new();
    BARS.get_or_init(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr()))
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

/// A bar of `len` steps with a message slot (e.g. the current similarity) and an ETA, drawn only
/// on a terminal and when not quiet.
pub fn bar(len: u64, prefix: &str, quiet: bool) -> ProgressBar {
    let pb = if !quiet && is_terminal() {
        bars().add(ProgressBar::new(len))
    } else {
        ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::hidden())
    };
    if let Ok(style) =
        ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {msg} ETA {eta}")
    {
        pb.set_style(style.progress_chars("=> "));
    }
    pb.set_prefix(prefix.to_owned());
    pb
}
