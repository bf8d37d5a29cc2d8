//! Classification metrics for evaluating medical image classifiers from their
//! softmax outputs: accuracy-type scores, agreement, ROC AUC and calibration.
//!
//! Definitions follow scikit-learn's `sklearn.metrics`
//! (<https://scikit-learn.org/stable/modules/model_evaluation.html>) unless a
//! submodule cites another source; each submodule states its definitions. The module
//! is independent of any model or tensor library: it reads plain slices.
//!
//! Conventions shared by all submodules:
//! * probabilities are a row-major `N x num_classes` `f32` matrix, labels are in
//!   `0..num_classes`, and all arithmetic is in `f64`;
//! * the predicted class is the argmax of a row, ties going to the lowest index;
//! * a ratio with a zero denominator is 0.0 (scikit-learn's `zero_division=0`), and
//!   an undefined AUC is `None`, so no metric is ever NaN.

mod agreement;
mod auc;
mod calibration;
mod classification;
mod confusion;
mod error;
mod input;
mod report;

pub use agreement::{cohen_kappa, quadratic_weighted_kappa};
pub use auc::{OneVsRestAuc, RocCurve, binary_auc, one_vs_rest_auc, roc_curve, roc_curves};
pub use calibration::{BrierForm, ECE_BINS, brier_score, expected_calibration_error};
pub use classification::{
    AveragedScores, ClassScores, accuracy, balanced_accuracy, f1, macro_average, per_class_scores,
    precision, recall, specificity, weighted_average,
};
pub use confusion::ConfusionMatrix;
pub use error::MetricsError;
pub use input::{argmax, predicted_classes, validate_inputs};
pub use report::{ClassMetrics, ClassificationReport};

/// Computes every metric of [`ClassificationReport`] from softmax outputs and labels.
///
/// `probabilities` is row-major `labels.len() x num_classes`. Fails on empty input, a
/// probability matrix of the wrong size, a label outside `0..num_classes`, or a
/// non-finite probability. Rows are not required to sum to one (only ECE and Brier
/// assume they do), so callers may also pass other scores at their own risk.
pub fn evaluate(
    probabilities: &[f32],
    num_classes: usize,
    labels: &[usize],
) -> Result<ClassificationReport, MetricsError> {
    let num_samples = validate_inputs(probabilities, num_classes, labels)?;
    let predictions = input::argmax_rows(probabilities, num_classes);
    let cm = ConfusionMatrix::from_predictions(&predictions, labels, num_classes)?;
    let macro_avg = macro_average(&cm);
    let weighted_avg = weighted_average(&cm);
    let auc = one_vs_rest_auc(probabilities, num_classes, labels)?;
    let per_class = per_class_scores(&cm)
        .into_iter()
        .zip(&auc.per_class)
        .map(|(s, &auc)| ClassMetrics {
            precision: s.precision,
            recall: s.recall,
            specificity: s.specificity,
            f1: s.f1,
            support: s.support,
            auc,
        })
        .collect();
    Ok(ClassificationReport {
        num_samples,
        num_classes,
        accuracy: accuracy(&cm),
        balanced_accuracy: balanced_accuracy(&cm),
        precision_macro: macro_avg.precision,
        recall_macro: macro_avg.recall,
        f1_macro: macro_avg.f1,
        precision_weighted: weighted_avg.precision,
        recall_weighted: weighted_avg.recall,
        f1_weighted: weighted_avg.f1,
        kappa: cohen_kappa(&cm),
        kappa_quadratic: quadratic_weighted_kappa(&cm),
        auc_macro: auc.macro_auc,
        ece: expected_calibration_error(probabilities, num_classes, labels)?,
        brier: BrierForm::for_classes(num_classes).from_multi_class(brier_score(
            probabilities,
            num_classes,
            labels,
        )?),
        brier_form: BrierForm::for_classes(num_classes),
        confusion_matrix: cm.to_rows(),
        per_class,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-6
    }

    #[test]
    fn evaluate_end_to_end_binary() {
        // Rows [p0, p1], labels [0, 0, 1, 1]; class-1 scores 0.1, 0.45, 0.35, 0.85.
        // argmax -> predictions [0, 0, 0, 1]; confusion [[2, 0], [1, 1]].
        // accuracy 3/4; recall [1, 1/2] -> balanced 3/4; precision [2/3, 1].
        // F1 [4/5, 2/3] -> macro 11/15, weighted (2*4/5 + 2*2/3)/4 = 11/15.
        // specificity [1/2, 1]. kappa: p_o = 3/4, p_e = (2*3 + 2*1)/16 = 1/2 -> 1/2;
        // quadratic kappa equals kappa for two classes.
        // AUC: positives {0.35, 0.85} vs negatives {0.1, 0.45} -> 3/4 (both classes).
        // ECE: confidences 0.9, 0.55, 0.65, 0.85 in bins 13, 8, 9, 12 (one each),
        //   correct [y, y, n, y] -> (0.1 + 0.45 + 0.65 + 0.15)/4 = 0.3375.
        // Brier: 2*(0.1^2 + 0.45^2 + 0.65^2 + 0.15^2)/4 = 2*0.6575/4 = 0.32875.
        let probs = [0.9, 0.1, 0.55, 0.45, 0.65, 0.35, 0.15, 0.85];
        let r = evaluate(&probs, 2, &[0, 0, 1, 1]).unwrap();
        assert_eq!(r.num_samples, 4);
        assert_eq!(r.num_classes, 2);
        assert_eq!(r.confusion_matrix, vec![vec![2, 0], vec![1, 1]]);
        assert!(close(r.accuracy, 0.75));
        assert!(close(r.balanced_accuracy, 0.75));
        assert!(close(r.precision_macro, (2.0 / 3.0 + 1.0) / 2.0));
        assert!(close(r.recall_macro, 0.75));
        assert!(close(r.f1_macro, 11.0 / 15.0));
        assert!(close(r.precision_weighted, 5.0 / 6.0));
        assert!(close(r.recall_weighted, 0.75));
        assert!(close(r.f1_weighted, 11.0 / 15.0));
        assert!(close(r.kappa, 0.5));
        assert!(close(r.kappa_quadratic, 0.5));
        assert!(close(r.auc_macro.unwrap(), 0.75));
        assert!(close(r.ece, 0.3375));
        // Two classes: the binary form, half the multi-class sum (0.32875).
        assert_eq!(r.brier_form, BrierForm::Binary);
        assert!(close(r.brier, 0.164375));
        // Three classes keep the multi-class form: (0.5^2 + 0.5^2) and (1 + 1), averaged.
        let three = evaluate(&[0.5, 0.5, 0.0, 0.0, 0.0, 1.0], 3, &[0, 1]).unwrap();
        assert_eq!(three.brier_form, BrierForm::MultiClass);
        assert!(close(three.brier, (0.5 + 2.0) / 2.0));
        let c0 = &r.per_class[0];
        assert!(close(c0.precision, 2.0 / 3.0) && close(c0.recall, 1.0));
        assert!(close(c0.specificity, 0.5) && close(c0.f1, 0.8));
        assert_eq!(c0.support, 2);
        assert!(close(c0.auc.unwrap(), 0.75));
        let c1 = &r.per_class[1];
        assert!(close(c1.precision, 1.0) && close(c1.recall, 0.5));
        assert!(close(c1.specificity, 1.0) && close(c1.f1, 2.0 / 3.0));
    }

    #[test]
    fn evaluate_end_to_end_three_class() {
        // Rows chosen so argmax reproduces the hand-worked confusion matrix of
        // classification.rs: [[2, 1, 0], [1, 1, 0], [0, 1, 4]].
        let rows: [([f32; 3], usize); 10] = [
            ([0.8, 0.1, 0.1], 0),
            ([0.6, 0.3, 0.1], 0),
            ([0.3, 0.6, 0.1], 0),
            ([0.5, 0.4, 0.1], 1),
            ([0.2, 0.7, 0.1], 1),
            ([0.1, 0.5, 0.4], 2),
            ([0.1, 0.2, 0.7], 2),
            ([0.1, 0.1, 0.8], 2),
            ([0.0, 0.1, 0.9], 2),
            ([0.2, 0.2, 0.6], 2),
        ];
        let probs: Vec<f32> = rows.iter().flat_map(|(p, _)| *p).collect();
        let labels: Vec<usize> = rows.iter().map(|(_, l)| *l).collect();
        let r = evaluate(&probs, 3, &labels).unwrap();
        assert_eq!(
            r.confusion_matrix,
            vec![vec![2, 1, 0], vec![1, 1, 0], vec![0, 1, 4]]
        );
        assert!(close(r.accuracy, 0.7));
        assert!(close(r.f1_macro, 88.0 / 135.0));
        assert!(close(r.f1_weighted, 163.0 / 225.0));
        assert!(close(r.balanced_accuracy, 59.0 / 90.0));
        assert_eq!(
            r.per_class.iter().map(|c| c.support).collect::<Vec<_>>(),
            vec![3, 2, 5]
        );
        assert!(r.per_class.iter().all(|c| c.auc.is_some()));
    }

    #[test]
    fn evaluate_rejects_each_error_case() {
        assert_eq!(evaluate(&[], 2, &[]).unwrap_err(), MetricsError::Empty);
        assert_eq!(
            evaluate(&[0.5, 0.5, 0.5], 2, &[0, 1]).unwrap_err(),
            MetricsError::LengthMismatch {
                what: "probabilities",
                expected: 4,
                actual: 3
            }
        );
        assert_eq!(
            evaluate(&[0.5, 0.5], 2, &[2]).unwrap_err(),
            MetricsError::LabelOutOfRange {
                index: 0,
                label: 2,
                num_classes: 2
            }
        );
        assert!(matches!(
            evaluate(&[0.5, 0.5, f32::NAN, 0.5], 2, &[0, 1]),
            Err(MetricsError::NonFinite { index: 2, .. })
        ));
        assert!(matches!(
            evaluate(&[f32::NEG_INFINITY, 1.0], 2, &[0]),
            Err(MetricsError::NonFinite { index: 0, .. })
        ));
        assert_eq!(
            evaluate(&[1.0], 0, &[0]).unwrap_err(),
            MetricsError::NoClasses
        );
        // Errors render as readable messages.
        assert_eq!(
            MetricsError::LabelOutOfRange {
                index: 0,
                label: 2,
                num_classes: 2
            }
            .to_string(),
            "label 2 of sample 0 is out of range for 2 classes"
        );
    }
}
