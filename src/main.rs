//! The `roundtrip` binary: parse, run, print the error chain (on one line), exit code.

use std::process::ExitCode;

use clap::Parser;
use roundtrip::cli::{self, Cli};
use roundtrip::error::{exit_code, is_broken_pipe};

fn main() -> ExitCode {
    roundtrip::tune_allocator();
    let args = Cli::parse();
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    match cli::execute(args, &mut out) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            // The whole chain on one line (`context: cause: cause`), so that the first line
            // of every error names the cause.
            eprintln!("error: {e:#}");
            ExitCode::from(exit_code(&e) as u8)
        }
    }
}
