//! Threshold (argmax) classification metrics derived from a confusion matrix.
//!
//! Definitions follow scikit-learn's `precision_recall_fscore_support`,
//! `accuracy_score` and `balanced_accuracy_score`
//! (<https://scikit-learn.org/stable/modules/model_evaluation.html#precision-recall-f-measure-metrics>);
//! specificity is the one-vs-rest true-negative rate, `TN / (TN + FP)`.
//!
//! **Zero division.** Any ratio whose denominator is zero (e.g. precision of a class
//! that is never predicted) is 0.0, as scikit-learn's `zero_division=0`. This keeps
//! every number finite, so reports serialise to valid JSON.

use super::ConfusionMatrix;

/// One-vs-rest scores of a single class.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ClassScores {
    /// `TP / (TP + FP)`.
    pub precision: f64,
    /// `TP / (TP + FN)`, a.k.a. sensitivity or true-positive rate.
    pub recall: f64,
    /// `TN / (TN + FP)`, the true-negative rate.
    pub specificity: f64,
    /// `2 TP / (2 TP + FP + FN)`, the harmonic mean of precision and recall.
    pub f1: f64,
    /// Number of samples whose true class is this class.
    pub support: u64,
}

/// Precision, recall and F1 combined over classes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AveragedScores {
    /// Averaged precision.
    pub precision: f64,
    /// Averaged recall.
    pub recall: f64,
    /// Averaged F1 (the average of per-class F1, not the F1 of averaged P and R, as sklearn).
    pub f1: f64,
}

/// `numerator / denominator`, or 0.0 when the denominator is zero (see module docs).
fn ratio(numerator: f64, denominator: f64) -> f64 {
    if denominator == 0.0 {
        0.0
    } else {
        numerator / denominator
    }
}

/// Fraction of samples whose predicted class equals the true class.
pub fn accuracy(cm: &ConfusionMatrix) -> f64 {
    ratio(cm.correct() as f64, cm.total() as f64)
}

/// Mean recall over the classes that occur in the true labels.
///
/// Classes absent from the labels are skipped, as scikit-learn's
/// `balanced_accuracy_score` does: their recall is undefined, and counting it as 0
/// would punish the model for the composition of the test set.
pub fn balanced_accuracy(cm: &ConfusionMatrix) -> f64 {
    let present: Vec<f64> = (0..cm.num_classes())
        .filter(|&c| cm.support(c) > 0)
        .map(|c| recall(cm, c))
        .collect();
    ratio(present.iter().sum(), present.len() as f64)
}

/// Precision of `class`: of the samples predicted as `class`, the fraction that are.
pub fn precision(cm: &ConfusionMatrix, class: usize) -> f64 {
    ratio(
        cm.true_positives(class) as f64,
        cm.predicted_count(class) as f64,
    )
}

/// Recall (sensitivity) of `class`: of the samples of `class`, the fraction found.
pub fn recall(cm: &ConfusionMatrix, class: usize) -> f64 {
    ratio(cm.true_positives(class) as f64, cm.support(class) as f64)
}

/// Specificity of `class`: of the samples of other classes, the fraction not predicted as `class`.
pub fn specificity(cm: &ConfusionMatrix, class: usize) -> f64 {
    let tn = cm.true_negatives(class) as f64;
    ratio(tn, tn + cm.false_positives(class) as f64)
}

/// F1 score of `class`.
///
/// Computed from counts rather than from precision and recall so that a class with
/// no true positives gets exactly 0 without a 0/0 in between.
pub fn f1(cm: &ConfusionMatrix, class: usize) -> f64 {
    let tp = cm.true_positives(class) as f64;
    let denominator =
        2.0 * tp + cm.false_positives(class) as f64 + cm.false_negatives(class) as f64;
    ratio(2.0 * tp, denominator)
}

/// All one-vs-rest scores of every class, indexed by class.
pub fn per_class_scores(cm: &ConfusionMatrix) -> Vec<ClassScores> {
    (0..cm.num_classes())
        .map(|c| ClassScores {
            precision: precision(cm, c),
            recall: recall(cm, c),
            specificity: specificity(cm, c),
            f1: f1(cm, c),
            support: cm.support(c),
        })
        .collect()
}

/// Unweighted mean over the classes that occur in the labels or in the predictions.
///
/// This is scikit-learn's `average="macro"` with `labels=None`, which averages over
/// `unique_labels(y_true, y_pred)`: a class that never appears on either side has no
/// meaningful score, while one that is only predicted is a real error and counts
/// (with recall and F1 of 0).
pub fn macro_average(cm: &ConfusionMatrix) -> AveragedScores {
    let scores = per_class_scores(cm);
    let seen: Vec<&ClassScores> = scores
        .iter()
        .enumerate()
        .filter(|&(c, _)| cm.support(c) > 0 || cm.predicted_count(c) > 0)
        .map(|(_, s)| s)
        .collect();
    let n = seen.len() as f64;
    AveragedScores {
        precision: ratio(seen.iter().map(|s| s.precision).sum(), n),
        recall: ratio(seen.iter().map(|s| s.recall).sum(), n),
        f1: ratio(seen.iter().map(|s| s.f1).sum(), n),
    }
}

/// Mean over classes weighted by support, scikit-learn's `average="weighted"`.
///
/// Weighted recall always equals accuracy; it is kept for symmetry with the report.
pub fn weighted_average(cm: &ConfusionMatrix) -> AveragedScores {
    let scores = per_class_scores(cm);
    let total = cm.total() as f64;
    let weighted = |f: fn(&ClassScores) -> f64| {
        ratio(scores.iter().map(|s| s.support as f64 * f(s)).sum(), total)
    };
    AveragedScores {
        precision: weighted(|s| s.precision),
        recall: weighted(|s| s.recall),
        f1: weighted(|s| s.f1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    /// Worked 3-class example (rows true, columns predicted):
    ///
    /// ```text
    ///            pred0 pred1 pred2 | support
    /// true0        2     1     0   |   3
    /// true1        1     1     0   |   2
    /// true2        0     1     4   |   5
    /// predicted    3     3     4   |  N = 10
    /// ```
    ///
    /// precision = [2/3, 1/3, 4/4 = 1]
    /// recall    = [2/3, 1/2, 4/5]
    /// F1 = 2TP/(2TP+FP+FN) = [4/6 = 2/3, 2/5, 8/9]
    /// TN = N - support - predicted + TP = [6, 6, 5]; FP = [1, 2, 0]
    /// specificity = [6/7, 6/8 = 3/4, 5/5 = 1]
    /// accuracy = (2+1+4)/10 = 0.7
    /// macro P  = (2/3 + 1/3 + 1)/3 = 2/3
    /// macro R  = (2/3 + 1/2 + 4/5)/3 = (20+15+24)/90 = 59/90 = balanced accuracy
    /// macro F1 = (2/3 + 2/5 + 8/9)/3 = (30+18+40)/135 = 88/135
    /// weighted P  = (3·2/3 + 2·1/3 + 5·1)/10 = 23/30
    /// weighted R  = (2 + 1 + 4)/10 = 0.7
    /// weighted F1 = (3·2/3 + 2·2/5 + 5·8/9)/10 = (326/45)/10 = 163/225
    fn worked_example() -> ConfusionMatrix {
        let labels = [0, 0, 0, 1, 1, 2, 2, 2, 2, 2];
        let preds = [0, 0, 1, 0, 1, 1, 2, 2, 2, 2];
        ConfusionMatrix::from_predictions(&preds, &labels, 3).unwrap()
    }

    #[test]
    fn per_class_scores_match_hand_computation() {
        let cm = worked_example();
        assert_eq!(
            cm.to_rows(),
            vec![vec![2, 1, 0], vec![1, 1, 0], vec![0, 1, 4]]
        );
        let s = per_class_scores(&cm);
        let expected = [
            (2.0 / 3.0, 2.0 / 3.0, 6.0 / 7.0, 2.0 / 3.0, 3),
            (1.0 / 3.0, 1.0 / 2.0, 3.0 / 4.0, 2.0 / 5.0, 2),
            (1.0, 4.0 / 5.0, 1.0, 8.0 / 9.0, 5),
        ];
        for (got, (p, r, spec, f, sup)) in s.iter().zip(expected) {
            assert!(close(got.precision, p), "{got:?}");
            assert!(close(got.recall, r), "{got:?}");
            assert!(close(got.specificity, spec), "{got:?}");
            assert!(close(got.f1, f), "{got:?}");
            assert_eq!(got.support, sup);
        }
    }

    #[test]
    fn accuracy_and_balanced_accuracy_match_hand_computation() {
        let cm = worked_example();
        assert!(close(accuracy(&cm), 0.7));
        assert!(close(balanced_accuracy(&cm), 59.0 / 90.0));
    }

    #[test]
    fn macro_and_weighted_averages_match_hand_computation() {
        let cm = worked_example();
        let m = macro_average(&cm);
        assert!(close(m.precision, 2.0 / 3.0));
        assert!(close(m.recall, 59.0 / 90.0));
        assert!(close(m.f1, 88.0 / 135.0));
        let w = weighted_average(&cm);
        assert!(close(w.precision, 23.0 / 30.0));
        assert!(close(w.recall, 0.7));
        assert!(close(w.f1, 163.0 / 225.0));
    }

    #[test]
    fn balanced_accuracy_skips_classes_absent_from_labels() {
        // Labels only use classes 0 and 1; class 2 is predicted once but never true.
        // recall0 = 1/2, recall1 = 1/2 -> balanced accuracy 1/2 (not (1/2+1/2+0)/3).
        let cm = ConfusionMatrix::from_predictions(&[0, 1, 1, 2], &[0, 0, 1, 1], 3).unwrap();
        assert!(close(balanced_accuracy(&cm), 0.5));
        // Macro averages do count the predicted-only class (sklearn's unique_labels):
        // recall = (1/2 + 1/2 + 0)/3.
        assert!(close(macro_average(&cm).recall, 1.0 / 3.0));
        // precision: class 0 = 1/1, class 1 = 1/2, class 2 = 0/1 -> (1 + 1/2 + 0)/3.
        assert!(close(macro_average(&cm).precision, 0.5));
    }

    #[test]
    fn macro_average_ignores_classes_never_seen() {
        // Class 3 never occurs in labels or predictions: averaging over 3 classes, not 4.
        let cm = ConfusionMatrix::from_predictions(&[0, 1, 2], &[0, 1, 2], 4).unwrap();
        assert!(close(macro_average(&cm).f1, 1.0));
    }

    #[test]
    fn zero_division_gives_zero() {
        // Class 1 is never predicted and never true: precision, recall, F1 are 0/0.
        // Its specificity is 2/2 = 1 because both samples are correctly "not class 1".
        let cm = ConfusionMatrix::from_predictions(&[0, 0], &[0, 0], 2).unwrap();
        assert_eq!(precision(&cm, 1), 0.0);
        assert_eq!(recall(&cm, 1), 0.0);
        assert_eq!(f1(&cm, 1), 0.0);
        assert_eq!(specificity(&cm, 1), 1.0);
        // Class 0 has no negatives at all, so its specificity is 0/0 -> 0.
        assert_eq!(specificity(&cm, 0), 0.0);
    }
}
