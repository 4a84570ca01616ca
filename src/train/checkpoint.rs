//! A training's model folder and its checkpoint: the folder is created, locked for the whole
//! training and swept of a killed run's temporary files ([`ModelDir`]); `checkpoint.safetensors`
//! holds the last finished epoch's whole state, and its existence is what makes a folder
//! resumable (a `.training-started` marker covers the time before the first one).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use candle_core::{Device, Tensor};

use crate::fsutil::{sweep_temp_files, sync_dir, write_atomic};
use crate::input_err;
use crate::lock::DirLock;

/// The checkpoint of a model folder: its existence marks a training with a finished epoch.
pub const CHECKPOINT: &str = "checkpoint.safetensors";

/// Written into a model folder before anything else when a training starts from scratch, and
/// removed once its first checkpoint exists: a folder holding it has no finished epoch, so a
/// rerun starts over instead of refusing the half-started folder.
pub const STARTED_MARKER: &str = ".training-started";

/// A model folder created, locked for the whole training (released on drop) and swept of the
/// temporary files a killed run left, with what the training does in it.
pub struct ModelDir {
    path: PathBuf,
    /// Whether the training continues from the folder's checkpoint (else it starts from scratch).
    pub resume: bool,
    /// Whether the started marker is there (until the first checkpoint).
    marked: bool,
    _lock: DirLock,
}

impl ModelDir {
    /// Creates and locks `out` for `command`, sweeps its (and `subdirs`') temporary files, and
    /// decides: a folder with a checkpoint is resumed with `--resume` and refused without; one
    /// without a checkpoint is started over (one note on stderr when it held a half-started
    /// training or `--resume` was asked for; the `outputs` of the earlier attempt are removed),
    /// unless it holds a model (`model.safetensors`) that no interrupted start of ours wrote
    /// (a finished training whose checkpoint was left out), which is never overwritten. `what`
    /// names the kind of model in messages.
    pub fn open(
        out: &Path,
        command: &str,
        what: &str,
        resume: bool,
        outputs: &[&str],
        subdirs: &[&str],
    ) -> anyhow::Result<Self> {
        std::fs::create_dir_all(out)
            .map_err(|e| input_err!("cannot create output folder {}: {e}", out.display()))?;
        let lock = DirLock::acquire(out, command)?;
        sweep_temp_files(out);
        for d in subdirs {
            sweep_temp_files(&out.join(d));
        }
        let mut dir = Self {
            path: out.to_path_buf(),
            resume: false,
            marked: false,
            _lock: lock,
        };
        if out.join(CHECKPOINT).is_file() {
            if !resume {
                return Err(input_err!(
                    "{} already holds a {what}: pass --resume to continue its training, or choose another --out",
                    out.display()
                ));
            }
            // A marker left by a kill between the first checkpoint and the marker's removal.
            let _ = std::fs::remove_file(out.join(STARTED_MARKER));
            dir.resume = true;
            return Ok(dir);
        }
        let marker = out.join(STARTED_MARKER);
        let half_started = marker.exists();
        if !half_started && out.join("model.safetensors").exists() {
            return Err(input_err!(
                "{} holds a {what} (model.safetensors) but no {CHECKPOINT}: its training cannot be \
                 resumed, and it is not overwritten; choose another --out",
                out.display()
            ));
        }
        let leftovers = half_started || outputs.iter().any(|f| out.join(f).exists());
        if leftovers {
            crate::stderr::note(format_args!(
                "{} has no checkpoint yet (its training stopped before the first epoch \
                 finished): starting the training over",
                out.display()
            ));
        } else if resume {
            crate::stderr::note(format_args!(
                "{} has no checkpoint to resume from: starting the training from the beginning",
                out.display()
            ));
        }
        for f in outputs {
            let p = out.join(f);
            if p.is_file() {
                std::fs::remove_file(&p)
                    .with_context(|| format!("cannot remove {}", p.display()))?;
            }
        }
        write_atomic(
            &marker,
            format!(
                "roundtrip {command}: no epoch finished yet; a rerun starts over (removed with \
                 the first {CHECKPOINT})\n"
            )
            .as_bytes(),
        )?;
        dir.marked = true;
        Ok(dir)
    }

    /// Called after each checkpoint is written: the first one ends the half-started state.
    pub fn checkpoint_written(&mut self) -> anyhow::Result<()> {
        if self.marked {
            let marker = self.path.join(STARTED_MARKER);
            std::fs::remove_file(&marker)
                .with_context(|| format!("cannot remove {}", marker.display()))?;
            sync_dir(&self.path);
            self.marked = false;
        }
        Ok(())
    }

    /// The folder.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Reads a safetensors checkpoint for `--resume`; a file that does not parse is the user's to
/// fix (an input error naming it).
pub fn read(path: &Path, device: &Device) -> anyhow::Result<HashMap<String, Tensor>> {
    candle_core::safetensors::load(path, device)
        .map_err(|e| input_err!("{} is not a valid checkpoint: {e}", path.display()))
}

/// A counter kept in a checkpoint as a one-element f64 tensor.
pub fn scalar(state: &HashMap<String, Tensor>, k: &str, file: &Path) -> anyhow::Result<f64> {
    Ok(state
        .get(k)
        .ok_or_else(|| input_err!("{} has no `{k}`", file.display()))?
        .to_vec1::<f64>()?
        .first()
        .copied()
        .unwrap_or(0.0))
}
