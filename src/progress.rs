//! Progress bars on stderr, hidden when stderr is not a terminal or when asked to be quiet.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A bar of `len` steps with a message slot (e.g. the current similarity) and an ETA.
pub fn bar(len: u64, prefix: &str, quiet: bool) -> ProgressBar {
    let visible = !quiet && std::io::IsTerminal::is_terminal(&std::io::stderr());
    let target = if visible {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    };
    let pb = ProgressBar::with_draw_target(Some(len), target);
    if let Ok(style) =
        ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {msg} ETA {eta}")
    {
        pb.set_style(style.progress_chars("=> "));
    }
    pb.set_prefix(prefix.to_owned());
    pb
}
