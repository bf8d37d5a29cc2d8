//! `metrics.json`: the final validation and test metrics of a finished run, written once after
//! the last epoch (its presence marks the run finished).

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::RunFileError;
use super::error::{read_json, write_file};
use crate::metrics::ClassificationReport;

/// The validation metric that picks the "best" checkpoint (never the test split).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SelectionMetric {
    /// Macro one-vs-rest AUC (MedMNIST's choice); falls back to accuracy where undefined.
    Auc,
    /// Accuracy.
    Accuracy,
    /// Balanced accuracy.
    BalancedAccuracy,
    /// Validation loss (lower is better).
    Loss,
    /// No choice: the last epoch's weights (validation is still scored and logged every epoch).
    Last,
}

impl SelectionMetric {
    /// How the kept epoch was chosen, for messages and reports: "chosen on validation AUC".
    pub fn choice(self) -> &'static str {
        match self {
            SelectionMetric::Auc => "chosen on validation AUC",
            SelectionMetric::Accuracy => "chosen on validation accuracy",
            SelectionMetric::BalancedAccuracy => "chosen on validation balanced accuracy",
            SelectionMetric::Loss => "chosen on validation loss",
            SelectionMetric::Last => "the last epoch, not chosen on validation",
        }
    }
}

/// `metrics.json` of a finished run. Fields that runs of earlier ppcr versions did not write
/// are optional; this version writes them all.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunMetrics {
    /// Epoch (1-based) whose weights were evaluated.
    pub best_epoch: usize,
    /// The validation metric that chose it.
    #[serde(default)]
    pub selected_on: Option<SelectionMetric>,
    /// Backbone name.
    pub backbone: String,
    /// Attention unit name.
    pub attention: String,
    /// Trainable parameters.
    pub params: usize,
    /// Epochs trained.
    pub epochs: usize,
    /// Wall time of all epochs, seconds.
    #[serde(default)]
    pub train_seconds: Option<f64>,
    /// Validation loss of the chosen weights.
    #[serde(default)]
    pub val_loss: Option<f64>,
    /// Test loss of the chosen weights.
    #[serde(default)]
    pub test_loss: Option<f64>,
    /// Validation metrics of the chosen weights.
    pub val: ClassificationReport,
    /// Test metrics of the chosen weights.
    pub test: ClassificationReport,
}

impl RunMetrics {
    /// The file's name in a run folder.
    pub const FILE_NAME: &str = "metrics.json";

    /// Read `metrics.json` of the run folder `root`, whose test confusion matrix must be
    /// `num_classes x num_classes` (the classes of its `run.json`); a missing file means the
    /// run has not finished ([`RunFileError::Unfinished`]).
    pub fn read(root: &Path, num_classes: usize) -> Result<Self, RunFileError> {
        let path = root.join(Self::FILE_NAME);
        if !path.is_file() {
            return Err(RunFileError::Unfinished { path });
        }
        let metrics: RunMetrics = read_json(&path)?;
        let matrix = &metrics.test.confusion_matrix;
        if matrix.len() != num_classes || matrix.iter().any(|row| row.len() != num_classes) {
            return Err(RunFileError::corrupt(
                &path,
                format!(
                    "the test confusion matrix is not {num_classes} x {num_classes} as \
                     run.json's classes"
                ),
            ));
        }
        Ok(metrics)
    }

    /// Write it into the run folder `root`, atomically.
    pub fn write(&self, root: &Path) -> Result<(), RunFileError> {
        write_file(
            &root.join(Self::FILE_NAME),
            &serde_json::to_vec_pretty(self).expect("metrics serialise"),
        )
    }

    /// A test metric by its name in the file (`accuracy`, `auc_macro`, ...); NaN where the
    /// report has no such number or it is undefined.
    pub fn test_metric(&self, name: &str) -> f64 {
        serde_json::to_value(&self.test).expect("reports serialise")[name]
            .as_f64()
            .unwrap_or(f64::NAN)
    }
}
