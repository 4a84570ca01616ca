//! Error kinds a caller branches on: input errors (exit code 2) versus everything else (1).

use std::path::Path;

/// Something the user gave us is wrong: a file, a line in it, or a value.
/// The message names what is wrong and what was expected.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct InputError(pub String);

impl InputError {
    pub fn new(msg: impl Into<String>) -> Self {
        Self(msg.into())
    }

    /// An error at a line of a file: `FILE:LINE: message`.
    pub fn at_line(file: &Path, line: usize, msg: impl std::fmt::Display) -> Self {
        Self(format!("{}:{line}: {msg}", file.display()))
    }
}

/// Creates an `anyhow` error carrying an [`InputError`].
#[macro_export]
macro_rules! input_err {
    ($($arg:tt)*) => { anyhow::Error::new($crate::error::InputError(format!($($arg)*))) };
}

/// Exit code for an error chain: 2 for input and usage errors, 1 for any other failure.
pub fn exit_code(err: &anyhow::Error) -> i32 {
    let is_input = err.chain().any(|e| {
        e.downcast_ref::<InputError>().is_some()
            || e.downcast_ref::<crate::hub::LocateError>().is_some()
    });
    if is_input {
        2
    } else {
        1
    }
}

/// Whether the error is a broken pipe on output (e.g. `roundtrip ... | head`), which is not a failure.
pub fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|e| {
        e.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// Reads a whole file, mapping "not found" and friends to an [`InputError`] that names it.
pub fn read_input_file(path: &Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| input_err!("cannot read {}: {e}", path.display()))
}

/// Splits file bytes into UTF-8 lines (without `\n` / `\r\n`, and without a leading byte-order
/// mark, which editors on Windows add), naming file and line on bad UTF-8.
pub fn utf8_lines(path: &Path, bytes: &[u8]) -> Result<Vec<String>, InputError> {
    let mut body = bytes.strip_prefix(b"\xef\xbb\xbf").unwrap_or(bytes);
    if body.last() == Some(&b'\n') {
        body = &body[..body.len() - 1];
    }
    if body.is_empty() {
        return Ok(Vec::new());
    }
    body.split(|&b| b == b'\n')
        .enumerate()
        .map(|(i, raw)| {
            let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
            String::from_utf8(raw.to_vec()).map_err(|e| {
                InputError::at_line(
                    path,
                    i + 1,
                    format_args!(
                        "invalid UTF-8 at byte {} of the line",
                        e.utf8_error().valid_up_to()
                    ),
                )
            })
        })
        .collect()
}
