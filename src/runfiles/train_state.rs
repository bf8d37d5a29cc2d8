//! `state.json` of an epoch folder: where training stands after that epoch.

use serde::{Deserialize, Serialize};

use super::EpochRecord;

/// `state.json`: where training stands after a completed epoch.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TrainState {
    /// Epochs completed.
    pub epochs_completed: usize,
    /// Best epoch on the selection metric so far.
    pub best_epoch: Option<usize>,
    /// Its score (higher is better; loss is negated).
    pub best_score: Option<f64>,
    /// Every completed epoch.
    pub history: Vec<EpochRecord>,
}
