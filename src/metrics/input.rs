//! Validation of model outputs and labels, and the argmax decision rule.
//!
//! Inputs follow scikit-learn's `y_score` layout for multi-class metrics
//! (<https://scikit-learn.org/stable/modules/generated/sklearn.metrics.roc_auc_score.html>):
//! a row-major `N x num_classes` matrix of class probabilities and one label per row.
//! The argmax rule breaks ties towards the lowest class index, as `numpy.argmax` does.

use super::MetricsError;

/// Checks that `probabilities` is a finite `labels.len() x num_classes` matrix and
/// that every label lies in `0..num_classes`; returns the number of samples.
///
/// Checks run in a fixed order (empty, no classes, shape, labels, finiteness) so the
/// reported error does not depend on where in the data the first problem sits.
pub fn validate_inputs(
    probabilities: &[f32],
    num_classes: usize,
    labels: &[usize],
) -> Result<usize, MetricsError> {
    if labels.is_empty() {
        return Err(MetricsError::Empty);
    }
    if num_classes == 0 {
        return Err(MetricsError::NoClasses);
    }
    // Saturation cannot produce a false match: no slice is `usize::MAX` long.
    let expected = labels.len().saturating_mul(num_classes);
    if probabilities.len() != expected {
        return Err(MetricsError::LengthMismatch {
            what: "probabilities",
            expected,
            actual: probabilities.len(),
        });
    }
    if let Some((index, &label)) = labels.iter().enumerate().find(|&(_, &l)| l >= num_classes) {
        return Err(MetricsError::LabelOutOfRange {
            index,
            label,
            num_classes,
        });
    }
    check_finite("probabilities", probabilities.iter().map(|&p| f64::from(p)))?;
    Ok(labels.len())
}

/// Predicted class of every row: the argmax, ties going to the lowest index.
///
/// Validates the matrix shape and finiteness itself because a NaN would make the
/// argmax depend on comparison order rather than on the model.
pub fn predicted_classes(
    probabilities: &[f32],
    num_classes: usize,
) -> Result<Vec<usize>, MetricsError> {
    if num_classes == 0 {
        return Err(MetricsError::NoClasses);
    }
    if probabilities.is_empty() {
        return Err(MetricsError::Empty);
    }
    if !probabilities.len().is_multiple_of(num_classes) {
        return Err(MetricsError::LengthMismatch {
            what: "probabilities",
            expected: probabilities.len().next_multiple_of(num_classes),
            actual: probabilities.len(),
        });
    }
    check_finite("probabilities", probabilities.iter().map(|&p| f64::from(p)))?;
    Ok(argmax_rows(probabilities, num_classes))
}

/// Argmax of each row of an already validated matrix.
pub(super) fn argmax_rows(probabilities: &[f32], num_classes: usize) -> Vec<usize> {
    probabilities
        .chunks_exact(num_classes)
        .map(argmax)
        .collect()
}

/// Fails on the first NaN or infinity in `values`.
pub(super) fn check_finite(
    what: &'static str,
    values: impl IntoIterator<Item = f64>,
) -> Result<(), MetricsError> {
    match values.into_iter().enumerate().find(|(_, v)| !v.is_finite()) {
        Some((index, value)) => Err(MetricsError::NonFinite { what, index, value }),
        None => Ok(()),
    }
}

/// Index of the largest value of one row of scores; ties go to the lowest index and NaN never
/// wins (strict `>`), the rule every prediction in the crate follows.
pub fn argmax(row: &[f32]) -> usize {
    let mut best = 0;
    for (k, &value) in row.iter().enumerate().skip(1) {
        if value > row[best] || row[best].is_nan() && !value.is_nan() {
            best = k;
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argmax_breaks_ties_towards_lowest_index() {
        let probs = [
            0.2,
            0.5,
            0.3,
            0.4,
            0.4,
            0.2,
            1.0 / 3.0,
            1.0 / 3.0,
            1.0 / 3.0,
        ];
        assert_eq!(predicted_classes(&probs, 3).unwrap(), vec![1, 0, 0]);
    }

    #[test]
    fn predicted_classes_rejects_ragged_and_non_finite_input() {
        assert!(matches!(
            predicted_classes(&[0.1, 0.9, 0.5], 2),
            Err(MetricsError::LengthMismatch {
                expected: 4,
                actual: 3,
                ..
            })
        ));
        assert!(matches!(
            predicted_classes(&[0.1, f32::NAN], 2),
            Err(MetricsError::NonFinite { index: 1, .. })
        ));
        assert_eq!(predicted_classes(&[0.5], 0), Err(MetricsError::NoClasses));
        assert_eq!(predicted_classes(&[], 2), Err(MetricsError::Empty));
    }

    #[test]
    fn validate_reports_each_problem() {
        assert_eq!(validate_inputs(&[], 2, &[]), Err(MetricsError::Empty));
        assert_eq!(
            validate_inputs(&[0.5, 0.5], 0, &[0]),
            Err(MetricsError::NoClasses)
        );
        assert_eq!(
            validate_inputs(&[0.5, 0.5, 0.5], 2, &[0, 1]),
            Err(MetricsError::LengthMismatch {
                what: "probabilities",
                expected: 4,
                actual: 3
            })
        );
        assert_eq!(
            validate_inputs(&[0.5, 0.5, 0.5, 0.5], 2, &[0, 2]),
            Err(MetricsError::LabelOutOfRange {
                index: 1,
                label: 2,
                num_classes: 2
            })
        );
        assert!(matches!(
            validate_inputs(&[0.5, f32::INFINITY], 2, &[0]),
            Err(MetricsError::NonFinite { index: 1, .. })
        ));
        assert_eq!(validate_inputs(&[0.5, 0.5, 0.1, 0.9], 2, &[0, 1]), Ok(2));
    }
}
