//! Training and evaluation of a [`ResNet`](crate::models::ResNet) with an attention unit on an
//! in-memory [`Dataset`](crate::data::Dataset): SGD with momentum (dampening 0, as PyTorch),
//! cosine or step schedules, label smoothing and class weighting, per-epoch validation,
//! crash-safe checkpoints that resume exactly, and the metrics of [`crate::metrics`].

mod config;
mod data_parallel;
mod evaluate;
mod import;
mod observer;
mod param_groups;
mod precision;
mod prefetch;
mod recipe;
mod schedule;
mod supcon;
mod swa;
mod trainer;
mod weight_average;

pub use config::TrainConfig;
pub use evaluate::{SplitEvaluation, evaluate_split, load_trained_model, predict_probabilities};
pub use import::{IMAGENET_INPUT_SIZE, ImportOutcome, import_torchvision};
pub use observer::{NoObserver, StepProgress, TrainObserver};
pub use precision::{LossScaler, Precision, unsupported_on};
pub use recipe::{RECIPES, recipe};
pub use schedule::LrSchedule;
pub use supcon::{DEFAULT_TEMPERATURE, supcon_loss};
pub use swa::DEFAULT_SWA_LR;
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
    /// Pretrained weights could not be read or do not fit the model.
    #[error(transparent)]
    Pretrained(#[from] crate::models::pretrained::PretrainedError),
    /// A file of the run folder could not be read or written.
    #[error(transparent)]
    Files(#[from] crate::runfiles::RunFileError),
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
