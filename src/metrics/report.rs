//! The serialisable result of [`evaluate`](super::evaluate): every scalar metric,
//! per-class scores and the confusion matrix.
//!
//! Field names are the JSON keys written to experiment logs, so renaming one is a
//! format change. Each metric's definition and source is documented in the module
//! that computes it. Every `f64` is finite by construction (undefined ratios are 0.0,
//! undefined AUCs are `None`), because `serde_json` would turn NaN into `null` and
//! then fail to read the report back.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

/// One-vs-rest metrics of one class.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassMetrics {
    /// `TP / (TP + FP)`, 0 if the class is never predicted.
    pub precision: f64,
    /// `TP / (TP + FN)` (sensitivity), 0 if the class has no samples.
    pub recall: f64,
    /// `TN / (TN + FP)`, 0 if every sample is of this class.
    pub specificity: f64,
    /// Harmonic mean of precision and recall, 0 if both are 0.
    pub f1: f64,
    /// Number of samples whose true class is this class.
    pub support: u64,
    /// One-vs-rest ROC AUC; `None` when the class has no positives or no negatives.
    pub auc: Option<f64>,
}

/// All metrics of one evaluation, as written to JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassificationReport {
    /// Number of evaluated samples.
    pub num_samples: usize,
    /// Number of classes of the model output.
    pub num_classes: usize,
    /// Fraction of correct argmax predictions.
    pub accuracy: f64,
    /// Mean recall over classes present in the labels.
    pub balanced_accuracy: f64,
    /// Unweighted mean precision over classes seen in labels or predictions.
    pub precision_macro: f64,
    /// Unweighted mean recall over classes seen in labels or predictions.
    pub recall_macro: f64,
    /// Unweighted mean F1 over classes seen in labels or predictions.
    pub f1_macro: f64,
    /// Support-weighted mean precision.
    pub precision_weighted: f64,
    /// Support-weighted mean recall (equals accuracy).
    pub recall_weighted: f64,
    /// Support-weighted mean F1.
    pub f1_weighted: f64,
    /// Cohen's kappa.
    pub kappa: f64,
    /// Quadratic-weighted kappa, meaningful when class indices are ordered grades.
    pub kappa_quadratic: f64,
    /// Macro one-vs-rest ROC AUC (class 1's AUC for two classes); `None` if no class has
    /// both positives and negatives.
    pub auc_macro: Option<f64>,
    /// Expected calibration error with 15 bins.
    pub ece: f64,
    /// Brier score, in the form [`ClassificationReport::brier_form`] names: binary for two
    /// classes (scikit-learn's `brier_score_loss`), multi-class otherwise.
    pub brier: f64,
    /// Which Brier score `brier` is (reports written before this field held the multi-class
    /// form, which is what they read back as).
    #[serde(default)]
    pub brier_form: super::BrierForm,
    /// Counts, rows = true class, columns = predicted class.
    pub confusion_matrix: Vec<Vec<u64>>,
    /// Per-class metrics, indexed by class.
    pub per_class: Vec<ClassMetrics>,
}

impl ClassificationReport {
    /// A short multi-line, human-readable summary for logs and terminals, classes by index.
    pub fn summary(&self) -> String {
        let indices: Vec<String> = (0..self.per_class.len()).map(|c| c.to_string()).collect();
        self.summary_named(&indices)
    }

    /// [`ClassificationReport::summary`] with the per-class rows labelled by `class_names`
    /// (indices where a name is missing).
    pub fn summary_named(&self, class_names: &[String]) -> String {
        let auc = |a: Option<f64>| a.map_or_else(|| "n/a".to_owned(), |v| format!("{v:.4}"));
        let mut s = String::new();
        // Writing into a String cannot fail, hence the ignored results.
        let _ = writeln!(
            s,
            "{} samples, {} classes",
            self.num_samples, self.num_classes
        );
        let _ = writeln!(
            s,
            "accuracy {:.4} | balanced accuracy {:.4}",
            self.accuracy, self.balanced_accuracy
        );
        let _ = writeln!(
            s,
            "macro    precision {:.4} recall {:.4} F1 {:.4}",
            self.precision_macro, self.recall_macro, self.f1_macro
        );
        let _ = writeln!(
            s,
            "weighted precision {:.4} recall {:.4} F1 {:.4}",
            self.precision_weighted, self.recall_weighted, self.f1_weighted
        );
        let _ = writeln!(
            s,
            "kappa {:.4} | quadratic kappa {:.4}",
            self.kappa, self.kappa_quadratic
        );
        let _ = writeln!(
            s,
            "AUC (macro OvR) {} | ECE {:.4} | Brier ({}) {:.4}",
            auc(self.auc_macro),
            self.ece,
            self.brier_form.name(),
            self.brier
        );
        let name = |c: usize| class_names.get(c).cloned().unwrap_or_else(|| c.to_string());
        let width = (0..self.per_class.len())
            .map(|c| name(c).chars().count())
            .max()
            .unwrap_or(0)
            .max(5);
        let _ = writeln!(
            s,
            "{:>width$} {:>9} {:>7} {:>11} {:>7} {:>7} {:>8}",
            "class", "precision", "recall", "specificity", "f1", "auc", "support"
        );
        for (c, m) in self.per_class.iter().enumerate() {
            let _ = writeln!(
                s,
                "{:>width$} {:>9.4} {:>7.4} {:>11.4} {:>7.4} {:>7} {:>8}",
                name(c),
                m.precision,
                m.recall,
                m.specificity,
                m.f1,
                auc(m.auc),
                m.support
            );
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::super::evaluate;

    fn sample_report() -> super::ClassificationReport {
        let probs = [0.9, 0.1, 0.55, 0.45, 0.65, 0.35, 0.15, 0.85];
        evaluate(&probs, 2, &[0, 0, 1, 1]).unwrap()
    }

    #[test]
    fn json_uses_the_documented_keys_and_round_trips() {
        let report = sample_report();
        let json = serde_json::to_value(&report).unwrap();
        let keys = [
            "num_samples",
            "num_classes",
            "accuracy",
            "balanced_accuracy",
            "precision_macro",
            "recall_macro",
            "f1_macro",
            "precision_weighted",
            "recall_weighted",
            "f1_weighted",
            "kappa",
            "kappa_quadratic",
            "auc_macro",
            "ece",
            "brier",
            "brier_form",
            "confusion_matrix",
            "per_class",
        ];
        let object = json.as_object().unwrap();
        for key in keys {
            assert!(object.contains_key(key), "missing key {key}");
        }
        assert_eq!(object.len(), keys.len());
        assert_eq!(json["brier_form"], "binary");
        // A report written before the form was recorded reads back as multi-class.
        let mut old = json.clone();
        old.as_object_mut().unwrap().remove("brier_form");
        let old: super::ClassificationReport = serde_json::from_value(old).unwrap();
        assert_eq!(old.brier_form, super::super::BrierForm::MultiClass);
        assert_eq!(
            json["confusion_matrix"],
            serde_json::json!([[2, 0], [1, 1]])
        );
        let class = json["per_class"][0].as_object().unwrap();
        for key in ["precision", "recall", "specificity", "f1", "support", "auc"] {
            assert!(class.contains_key(key), "missing per-class key {key}");
        }
        let text = serde_json::to_string(&report).unwrap();
        let back: super::ClassificationReport = serde_json::from_str(&text).unwrap();
        assert_eq!(back, report);
    }

    #[test]
    fn undefined_auc_serialises_as_null() {
        let report = evaluate(&[0.9, 0.1, 0.8, 0.2], 2, &[0, 0]).unwrap();
        let json = serde_json::to_value(&report).unwrap();
        assert!(json["auc_macro"].is_null());
        assert!(json["per_class"][1]["auc"].is_null());
    }

    #[test]
    fn summary_mentions_headline_numbers() {
        let summary = sample_report().summary();
        assert!(summary.contains("4 samples, 2 classes"), "{summary}");
        assert!(summary.contains("accuracy 0.7500"), "{summary}");
        assert!(summary.contains("AUC (macro OvR) 0.7500"), "{summary}");
        // Header, then one line per class.
        assert_eq!(summary.lines().count(), 6 + 1 + 2);
        let names = ["benign".to_string(), "malignant".to_string()];
        let named = sample_report().summary_named(&names);
        let rows: Vec<&str> = named.lines().skip(7).collect();
        assert!(rows[0].trim_start().starts_with("benign "), "{named}");
        assert!(rows[1].trim_start().starts_with("malignant "), "{named}");
    }
}
