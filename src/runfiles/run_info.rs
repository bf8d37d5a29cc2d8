//! `run.json`: what a trained model needs besides its weights.

use serde::{Deserialize, Serialize};

use crate::data::{Normalization, TestTimeAugmentation};
use crate::models::ResNetConfig;

/// `run.json`: what a trained model needs besides its weights: its architecture, its classes,
/// how its inputs were normalised and which views of an image a prediction averages.
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
    /// The views of an image whose probabilities a prediction averages (the run's `tta`).
    /// Absent from the `run.json` of earlier versions, which predicted from the image alone.
    #[serde(default)]
    pub tta: TestTimeAugmentation,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attention::{AttentionConfig, AttentionKind};
    use crate::models::Backbone;

    #[test]
    fn a_run_json_of_an_earlier_version_predicts_from_the_image_alone() {
        let info = RunInfo {
            model: ResNetConfig::new(
                Backbone::ResNet20,
                AttentionConfig::new(AttentionKind::Ppcr),
                2,
            ),
            class_names: vec!["a".into(), "b".into()],
            normalization: Normalization::identity(1),
            dataset: "test".into(),
            tta: TestTimeAugmentation::Flips,
        };
        let mut json = serde_json::to_value(&info).unwrap();
        assert_eq!(json["tta"], "flips");
        let read: RunInfo = serde_json::from_value(json.clone()).unwrap();
        assert_eq!(read.tta, TestTimeAugmentation::Flips);
        json.as_object_mut().unwrap().remove("tta");
        let earlier: RunInfo = serde_json::from_value(json).unwrap();
        assert_eq!(earlier.tta, TestTimeAugmentation::None);
    }
}
