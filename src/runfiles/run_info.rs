//! `run.json`: what a trained model needs besides its weights.

use serde::{Deserialize, Serialize};

use crate::data::Normalization;
use crate::models::ResNetConfig;

/// `run.json`: what a trained model needs besides its weights: its architecture, its classes
/// and how its inputs were normalised.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunInfo {
    /// Architecture.
    pub model: ResNetConfig,
    /// Class names, by class index.
    pub class_names: Vec<String>,
    /// Input normalisation.
    pub normalization: Normalization,
    /// Where the training data came from.
    pub dataset: String,
}
