//! The epoch loop every training shares. A [`Trainer`] says how to train one epoch, evaluate on
//! the dev split, keep the best model and hand over its state; [`Driver`] does the rest the same
//! way for all: resume from the checkpoint, one seeded random stream per epoch, best-epoch
//! tracking and early stopping, the `train_log.jsonl` line, the checkpoint, the progress bar
//! and the per-epoch line on stderr without a terminal (between two, the bar's own heartbeat
//! lines as it counts steps, see [`crate::stderr::Bar`]).
//!
//! Each epoch ends by writing the log line first and the checkpoint last: a kill between the two
//! leaves one log line too many, which a resume drops (it keeps the lines of the epochs the
//! checkpoint holds), so a resumed run's files are those of an uninterrupted one.

use std::collections::HashMap;
use std::time::Instant;

use crate::stderr::Bar;
use candle_core::{Device, Tensor};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use super::checkpoint::{scalar, ModelDir, CHECKPOINT};
use crate::fsutil::{write_atomic, write_safetensors};
use crate::input_err;

/// The log of a model folder, one JSON line per finished epoch.
pub const LOG: &str = "train_log.jsonl";

/// What a training plugs into [`run`].
pub trait Trainer {
    /// What one epoch's training reports (its mean loss, steps, timings).
    type Trained;
    /// What the dev evaluation reports besides its loss (`()` when nothing).
    type Dev;
    /// One line of `train_log.jsonl`.
    type Log: Serialize;

    /// One epoch over the training split, drawing everything random (shuffling, augmentation,
    /// dropout) from `rng`, the epoch's own stream. A trainer whose bar counts steps
    /// ([`Plan::ticks_per_epoch`] above 1) advances `bar` once per step.
    fn train_epoch(
        &mut self,
        epoch: usize,
        rng: &mut ChaCha8Rng,
        bar: &Bar,
    ) -> anyhow::Result<Self::Trained>;

    /// The dev loss (lower is better: it picks the best epoch) and what else the log reports.
    fn evaluate(&mut self) -> anyhow::Result<(f64, Self::Dev)>;

    /// Writes the current model as the best one (called before the epoch's checkpoint).
    fn save_best(&mut self, epoch: usize) -> anyhow::Result<()>;

    /// Everything an exact resume needs (parameters, optimiser moments, buffers), without the
    /// driver's counters.
    fn state_tensors(&self) -> anyhow::Result<HashMap<String, Tensor>>;

    /// Restores what [`Trainer::state_tensors`] saved.
    fn load_state(&mut self, state: &HashMap<String, Tensor>) -> anyhow::Result<()>;

    /// The epoch's log line.
    fn log_line(&self, done: Finished<Self::Trained, Self::Dev>) -> anyhow::Result<Self::Log>;

    /// The epoch's heartbeat on stderr (shown when stderr is not a terminal).
    fn heartbeat(&self, line: &Self::Log) -> String;

    /// The bar's message after an epoch (None: leave it as `train_epoch` set it).
    fn bar_message(&self, _line: &Self::Log) -> Option<String> {
        None
    }
}

/// A finished epoch, for its log line.
pub struct Finished<T, D> {
    pub epoch: usize,
    pub trained: T,
    pub dev_loss: f64,
    pub dev: D,
    /// Whether it has the best dev loss so far (and was saved as the model).
    pub best: bool,
    /// Wall-clock seconds of training, evaluation and saving.
    pub seconds: f64,
}

/// Which counter a checkpoint keeps besides `epoch` and `best_dev_loss`: each training keeps the
/// key its checkpoints always had, so that folders of earlier versions still resume.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BestCounter {
    /// `epochs_since_best`.
    EpochsSinceBest,
    /// `best_epoch`.
    BestEpoch,
}

/// How [`run`] loops.
pub struct Plan<'a> {
    /// Seed of the per-epoch streams: epoch `e` draws from stream `e` of it (stream 0 is left to
    /// the initialisation).
    pub seed: u64,
    /// The last epoch.
    pub epochs: usize,
    /// Stop once this many epochs in a row have not improved the dev loss.
    pub patience: Option<usize>,
    pub counter: BestCounter,
    /// Bar ticks per epoch: 1 counts epochs (the driver ticks), more counts the trainer's steps.
    pub ticks_per_epoch: usize,
    pub bar_prefix: &'a str,
    pub quiet: bool,
    /// Where the counters of the checkpoint are put.
    pub device: &'a Device,
}

/// Where a training stands.
pub struct Outcome {
    /// The last finished epoch (earlier runs' included).
    pub epochs_run: usize,
    /// Infinite when no epoch has finished.
    pub best_dev_loss: f64,
    /// 0 when no epoch improved on infinity.
    pub best_epoch: usize,
    /// The lines of `train_log.jsonl`, one per finished epoch.
    pub log: Vec<String>,
}

/// A training between its resume and its loop: the counters and log lines the checkpoint
/// holds (none when it starts from scratch).
pub struct Driver<'a> {
    plan: &'a Plan<'a>,
    dir: &'a mut ModelDir,
    /// The first epoch to train.
    start: usize,
    best: f64,
    best_epoch: usize,
    since_best: usize,
    log: Vec<String>,
}

impl<'a> Driver<'a> {
    /// Restores `trainer` from `resumed` when given (the checkpoint, read before anything of the
    /// folder was rewritten; a state the trainer cannot take is an input error naming it), with
    /// the driver's counters and the log lines of the epochs it holds.
    pub fn resume<T: Trainer + ?Sized>(
        plan: &'a Plan<'a>,
        dir: &'a mut ModelDir,
        resumed: Option<HashMap<String, Tensor>>,
        trainer: &mut T,
    ) -> anyhow::Result<Self> {
        let mut d = Self {
            plan,
            dir,
            start: 1,
            best: f64::INFINITY,
            best_epoch: 0,
            since_best: 0,
            log: Vec::new(),
        };
        let Some(state) = resumed else {
            return Ok(d);
        };
        let checkpoint = d.dir.path().join(CHECKPOINT);
        trainer
            .load_state(&state)
            .map_err(|e| input_err!("{}: {e}", checkpoint.display()))?;
        let done = scalar(&state, "epoch", &checkpoint)? as usize;
        d.start = done.saturating_add(1);
        d.best = scalar(&state, "best_dev_loss", &checkpoint)?;
        match plan.counter {
            BestCounter::EpochsSinceBest => {
                d.since_best = scalar(&state, "epochs_since_best", &checkpoint)? as usize;
                d.best_epoch = done.saturating_sub(d.since_best);
            }
            BestCounter::BestEpoch => {
                d.best_epoch = scalar(&state, "best_epoch", &checkpoint)? as usize;
                d.since_best = done.saturating_sub(d.best_epoch);
            }
        }
        // Keep the log lines of the epochs the checkpoint holds.
        if let Ok(text) = std::fs::read_to_string(d.dir.path().join(LOG)) {
            d.log = text.lines().take(done).map(str::to_owned).collect();
        }
        Ok(d)
    }

    /// The first epoch [`Driver::run`] trains.
    pub fn first_epoch(&self) -> usize {
        self.start
    }

    /// Trains epochs until `plan.epochs` (or until patience runs out).
    pub fn run<T: Trainer + ?Sized>(mut self, trainer: &mut T) -> anyhow::Result<Outcome> {
        let plan = self.plan;
        let checkpoint = self.dir.path().join(CHECKPOINT);
        let log_path = self.dir.path().join(LOG);
        let ticks = plan.ticks_per_epoch.max(1);
        let bar = crate::stderr::bar(
            plan.epochs.saturating_mul(ticks) as u64,
            plan.bar_prefix,
            plan.quiet,
        );
        bar.start_at((self.start - 1).saturating_mul(ticks) as u64);
        let mut epochs_run = self.start - 1;
        for epoch in self.start..=plan.epochs {
            if plan.patience.is_some_and(|p| self.since_best >= p) {
                break;
            }
            let t0 = Instant::now();
            // Each epoch draws from its own stream of the seed, so a resumed run draws exactly
            // what the uninterrupted one would have.
            let mut rng = ChaCha8Rng::seed_from_u64(plan.seed);
            rng.set_stream(epoch as u64);
            let trained = trainer.train_epoch(epoch, &mut rng, &bar)?;
            let (dev_loss, dev) = trainer.evaluate()?;
            let improved = dev_loss < self.best;
            if improved {
                self.best = dev_loss;
                self.best_epoch = epoch;
                self.since_best = 0;
                trainer.save_best(epoch)?;
            } else {
                self.since_best += 1;
            }
            let mut state = trainer.state_tensors()?;
            let counter = match plan.counter {
                BestCounter::EpochsSinceBest => ("epochs_since_best", self.since_best as f64),
                BestCounter::BestEpoch => ("best_epoch", self.best_epoch as f64),
            };
            for (k, v) in [
                ("epoch", epoch as f64),
                ("best_dev_loss", self.best),
                counter,
            ] {
                state.insert(k.into(), Tensor::new(&[v], plan.device)?);
            }
            let line = trainer.log_line(Finished {
                epoch,
                trained,
                dev_loss,
                dev,
                best: improved,
                seconds: t0.elapsed().as_secs_f64(),
            })?;
            self.log.push(serde_json::to_string(&line)?);
            // The log line first, the checkpoint last (see the module's comment).
            write_atomic(&log_path, (self.log.join("\n") + "\n").as_bytes())?;
            write_safetensors(&checkpoint, &state)?;
            self.dir.checkpoint_written()?;
            bar.set_position(epoch.saturating_mul(ticks) as u64);
            if let Some(m) = trainer.bar_message(&line) {
                bar.set_message(m);
            }
            crate::stderr::heartbeat(plan.quiet, trainer.heartbeat(&line));
            epochs_run = epoch;
        }
        bar.finish_and_clear();
        Ok(Outcome {
            epochs_run,
            best_dev_loss: self.best,
            best_epoch: self.best_epoch,
            log: self.log,
        })
    }
}

/// [`Driver::resume`], then [`Driver::run`].
pub fn run<T: Trainer + ?Sized>(
    plan: &Plan,
    dir: &mut ModelDir,
    resumed: Option<HashMap<String, Tensor>>,
    trainer: &mut T,
) -> anyhow::Result<Outcome> {
    Driver::resume(plan, dir, resumed, trainer)?.run(trainer)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use rand::Rng;

    /// A one-number "model" that walks by a random step per epoch; its dev loss is its distance
    /// from 1, so it improves, then gets worse.
    struct Walk {
        w: f64,
        out: std::path::PathBuf,
    }

    impl Trainer for Walk {
        type Trained = f64;
        type Dev = ();
        type Log = serde_json::Value;

        fn train_epoch(&mut self, _: usize, rng: &mut ChaCha8Rng, _: &Bar) -> anyhow::Result<f64> {
            let step: f64 = rng.random_range(0.2..0.4);
            self.w += step;
            Ok(step)
        }
        fn evaluate(&mut self) -> anyhow::Result<(f64, ())> {
            Ok(((self.w - 1.0).abs(), ()))
        }
        fn save_best(&mut self, epoch: usize) -> anyhow::Result<()> {
            Ok(std::fs::write(
                self.out.join("best"),
                format!("{epoch} {}", self.w),
            )?)
        }
        fn state_tensors(&self) -> anyhow::Result<HashMap<String, Tensor>> {
            Ok(HashMap::from([(
                "w".into(),
                Tensor::new(&[self.w], &Device::Cpu)?,
            )]))
        }
        fn load_state(&mut self, state: &HashMap<String, Tensor>) -> anyhow::Result<()> {
            self.w = scalar(state, "w", Path::new("checkpoint"))?;
            Ok(())
        }
        fn log_line(&self, d: Finished<f64, ()>) -> anyhow::Result<serde_json::Value> {
            Ok(
                serde_json::json!({"epoch": d.epoch, "step": d.trained, "dev": d.dev_loss, "best": d.best}),
            )
        }
        fn heartbeat(&self, l: &serde_json::Value) -> String {
            l.to_string()
        }
    }

    fn train(out: &Path, epochs: usize, patience: Option<usize>, counter: BestCounter) -> Outcome {
        let plan = Plan {
            seed: 9,
            epochs,
            patience,
            counter,
            ticks_per_epoch: 1,
            bar_prefix: "epochs",
            quiet: true,
            device: &Device::Cpu,
        };
        let resume = out.join(CHECKPOINT).is_file();
        let mut dir = ModelDir::open(out, "test", "walk", resume, &[LOG], &[]).unwrap();
        let resumed = dir
            .resume
            .then(|| super::super::checkpoint::read(&out.join(CHECKPOINT), &Device::Cpu).unwrap());
        let mut walk = Walk {
            w: 0.0,
            out: out.to_path_buf(),
        };
        run(&plan, &mut dir, resumed, &mut walk).unwrap()
    }

    #[test]
    fn a_resumed_training_writes_what_an_uninterrupted_one_does() {
        for counter in [BestCounter::EpochsSinceBest, BestCounter::BestEpoch] {
            let d = tempfile::tempdir().unwrap();
            let (whole, parts) = (d.path().join("whole"), d.path().join("parts"));
            let all = train(&whole, 6, None, counter);
            assert_eq!((all.epochs_run, all.log.len()), (6, 6));
            assert!(
                all.best_epoch > 1 && all.best_epoch < 6,
                "{}",
                all.best_epoch
            );
            train(&parts, 2, None, counter);
            // A kill between the log line and the checkpoint: one line too many.
            let log = parts.join(LOG);
            let extra = std::fs::read_to_string(&log).unwrap() + "{\"epoch\":3}\n";
            std::fs::write(&log, extra).unwrap();
            let rest = train(&parts, 6, None, counter);
            assert_eq!(rest.best_epoch, all.best_epoch);
            for f in [LOG, CHECKPOINT, "best"] {
                let (a, b) = (whole.join(f), parts.join(f));
                assert_eq!(std::fs::read(a).unwrap(), std::fs::read(b).unwrap(), "{f}");
            }
        }
    }

    #[test]
    fn patience_stops_after_that_many_epochs_without_improvement() {
        let d = tempfile::tempdir().unwrap();
        let all = train(&d.path().join("all"), 20, None, BestCounter::BestEpoch);
        let stopped = train(
            &d.path().join("p"),
            20,
            Some(2),
            BestCounter::EpochsSinceBest,
        );
        assert_eq!(stopped.best_epoch, all.best_epoch);
        assert_eq!(stopped.epochs_run, all.best_epoch + 2);
    }
}
