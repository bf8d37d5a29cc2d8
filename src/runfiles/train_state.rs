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
    /// The loss scale of `f16` training (absent otherwise, and in runs of earlier versions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss_scale: Option<LossScaleState>,
}

/// Where the dynamic loss scale of `f16` training stands.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LossScaleState {
    /// The factor the loss is multiplied by before the backward pass.
    pub scale: f32,
    /// Steps since the last overflow (or the last growth of the scale).
    pub steps_without_overflow: u32,
}
