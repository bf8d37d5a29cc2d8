//! What the training loop reports as it goes, so a front end (a progress bar, a log, a test)
//! can show it without the loop knowing who listens.

use crate::runfiles::EpochRecord;

/// Progress within an epoch, after each step.
#[derive(Debug, Clone)]
pub struct StepProgress {
    /// Epoch, 1-based.
    pub epoch: usize,
    /// Total epochs.
    pub epochs: usize,
    /// Step within the epoch, 1-based.
    pub step: usize,
    /// Steps per epoch.
    pub steps: usize,
    /// Mean loss so far this epoch.
    pub loss: f64,
    /// Accuracy so far this epoch.
    pub accuracy: f64,
    /// Images per second so far this epoch.
    pub images_per_second: f64,
    /// Current learning rate.
    pub lr: f64,
}

/// Receives the training loop's progress.
pub trait TrainObserver {
    /// A run starts (or resumes) at `first_epoch` (1-based) of `epochs`.
    fn on_start(&mut self, _first_epoch: usize, _epochs: usize, _summary: &str) {}
    /// A step finished.
    fn on_step(&mut self, _progress: &StepProgress) {}
    /// An epoch finished and was checkpointed.
    fn on_epoch(&mut self, _record: &EpochRecord, _is_best: bool) {}
    /// Asked after each checkpointed epoch: `true` stops the run there (resumable later).
    fn should_stop(&mut self) -> bool {
        false
    }
}

/// An observer that ignores everything.
pub struct NoObserver;

impl TrainObserver for NoObserver {}
