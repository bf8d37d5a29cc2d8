//! Training and evaluation of a [`ResNet`](crate::models::ResNet) with an attention unit on an
//! in-memory [`Dataset`](crate::data::Dataset): SGD with momentum (dampening 0, as PyTorch),
//! cosine or step schedules, label smoothing and class weighting, per-epoch validation,
//! crash-safe checkpoints that resume exactly, and the metrics of [`crate::metrics`].

mod atomic;
mod checkpoint;
mod config;
mod data_parallel;
mod evaluate;
mod observer;
mod pause;
mod prefetch;
mod schedule;
mod trainer;

pub use atomic::write_atomic;
pub use checkpoint::{EpochRecord, RunDir, RunInfo, TrainState};
pub(crate) use checkpoint::{
    load_model_bytes as model_from_bytes, load_optimizer_bytes as optimizer_from_bytes,
    parse_json as json_from_str,
};
pub use config::{LogFormat, SelectionMetric, TrainConfig};
pub use evaluate::{SplitEvaluation, evaluate_split, load_trained_model, predict_probabilities};
pub use observer::{NoObserver, StepProgress, TrainObserver};
pub use pause::{PAUSE_AT_VAR, PAUSE_MARKER_VAR};
pub use schedule::LrSchedule;
pub use trainer::{TrainOutcome, saved_settings_differences, train, train_on};

/// The optimizer `train` builds for the default configuration (for the fuzz targets).
pub(crate) fn default_optimizer() -> burn::optim::ModuleOptimizer {
    trainer::optimizer(&TrainConfig::default())
}

use std::path::PathBuf;

/// Why training, evaluation or checkpoint handling failed.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// The configuration is unusable.
    #[error("invalid training configuration: {0}")]
    Config(String),
    /// The model could not be built for this data.
    #[error(transparent)]
    Model(#[from] crate::models::ModelError),
    /// Reading or writing a file failed.
    #[error("{path}: {message}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// A file exists but cannot be understood.
    #[error("{path}: unreadable or corrupt ({message})")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// A folder given as a run is not one.
    #[error("{path}: not a ppcr run folder (no run.json); pass the --out folder of `ppcr train`")]
    NotARun {
        /// The folder.
        path: PathBuf,
    },
    /// A run folder has no completed epoch.
    #[error("{path}: the run has no completed checkpoint yet")]
    NoCheckpoint {
        /// The folder.
        path: PathBuf,
    },
    /// Refused to overwrite an earlier run.
    #[error(
        "{path}: already holds a training run; pass --resume to continue it, or choose another --out"
    )]
    RunExists {
        /// The folder.
        path: PathBuf,
    },
    /// The run being resumed was trained with another configuration.
    #[error("{path}: cannot resume with a different configuration ({differences})")]
    ResumeMismatch {
        /// The run folder.
        path: PathBuf,
        /// The settings that differ.
        differences: String,
    },
    /// The data does not fit the checkpoint's model.
    #[error("{0}")]
    DataMismatch(String),
    /// The loss stopped being a number.
    #[error(
        "training diverged: the loss became {value} at epoch {epoch}, step {step}; {}; try a \
         lower learning rate (--lr)",
        if *epoch > 1 { "the last good checkpoint is kept" } else { "no epoch had finished, so there is no checkpoint" }
    )]
    Diverged {
        /// Epoch, 1-based.
        epoch: usize,
        /// Step within the epoch, 1-based.
        step: usize,
        /// The loss value.
        value: f32,
    },
    /// Another process is training in the run folder.
    #[error(
        "{path}: another ppcr process is training in this folder; wait for it to finish, or \
         give another --out"
    )]
    Locked {
        /// The run folder.
        path: PathBuf,
    },
    /// The observer asked to stop; the run resumes from its last checkpoint.
    #[error("{path}: stopped after epoch {epoch}; continue with --resume --out {path}")]
    Interrupted {
        /// The run folder.
        path: PathBuf,
        /// Last completed epoch.
        epoch: usize,
    },
    /// A training step failed on one of the devices (a backend error on a worker).
    #[error("{0}")]
    Device(String),
    /// Metrics could not be computed.
    #[error(transparent)]
    Metrics(#[from] crate::metrics::MetricsError),
}
