//! Confusion matrix of a multi-class classifier.
//!
//! Layout follows scikit-learn's `confusion_matrix`
//! (<https://scikit-learn.org/stable/modules/generated/sklearn.metrics.confusion_matrix.html>):
//! entry `(i, j)` counts samples whose true class is `i` and predicted class is `j`,
//! so rows are true classes and columns are predictions.

use super::MetricsError;

/// Counts of (true class, predicted class) pairs over a set of samples.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfusionMatrix {
    num_classes: usize,
    /// Row-major `num_classes x num_classes` counts; flat storage keeps it one allocation.
    counts: Vec<u64>,
}

impl ConfusionMatrix {
    /// Builds the matrix from one predicted and one true class per sample.
    ///
    /// Fails on empty input, on differing lengths, and on classes outside
    /// `0..num_classes`.
    pub fn from_predictions(
        predictions: &[usize],
        labels: &[usize],
        num_classes: usize,
    ) -> Result<Self, MetricsError> {
        if labels.is_empty() {
            return Err(MetricsError::Empty);
        }
        if num_classes == 0 {
            return Err(MetricsError::NoClasses);
        }
        if predictions.len() != labels.len() {
            return Err(MetricsError::LengthMismatch {
                what: "predictions",
                expected: labels.len(),
                actual: predictions.len(),
            });
        }
        let mut counts = vec![0u64; num_classes * num_classes];
        for (index, (&prediction, &label)) in predictions.iter().zip(labels).enumerate() {
            if label >= num_classes {
                return Err(MetricsError::LabelOutOfRange {
                    index,
                    label,
                    num_classes,
                });
            }
            if prediction >= num_classes {
                return Err(MetricsError::PredictionOutOfRange {
                    index,
                    prediction,
                    num_classes,
                });
            }
            counts[label * num_classes + prediction] += 1;
        }
        Ok(Self {
            num_classes,
            counts,
        })
    }

    /// Number of classes (the matrix is square of this size).
    pub fn num_classes(&self) -> usize {
        self.num_classes
    }

    /// Number of samples of true class `true_class` predicted as `predicted`.
    ///
    /// # Panics
    /// If either index is not below [`Self::num_classes`].
    pub fn get(&self, true_class: usize, predicted: usize) -> u64 {
        assert!(true_class < self.num_classes && predicted < self.num_classes);
        self.counts[true_class * self.num_classes + predicted]
    }

    /// Total number of samples.
    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// Number of correctly classified samples (the trace).
    pub fn correct(&self) -> u64 {
        (0..self.num_classes).map(|c| self.get(c, c)).sum()
    }

    /// Samples whose true class is `class` (the row sum), i.e. the class support.
    pub fn support(&self, class: usize) -> u64 {
        (0..self.num_classes).map(|j| self.get(class, j)).sum()
    }

    /// Samples predicted as `class` (the column sum).
    pub fn predicted_count(&self, class: usize) -> u64 {
        (0..self.num_classes).map(|i| self.get(i, class)).sum()
    }

    /// Samples of `class` predicted as `class`.
    pub fn true_positives(&self, class: usize) -> u64 {
        self.get(class, class)
    }

    /// Samples of other classes predicted as `class`.
    pub fn false_positives(&self, class: usize) -> u64 {
        self.predicted_count(class) - self.true_positives(class)
    }

    /// Samples of `class` predicted as another class.
    pub fn false_negatives(&self, class: usize) -> u64 {
        self.support(class) - self.true_positives(class)
    }

    /// Samples neither of `class` nor predicted as `class` (one-vs-rest view).
    pub fn true_negatives(&self, class: usize) -> u64 {
        self.total() - self.support(class) - self.false_positives(class)
    }

    /// The counts as nested rows, the shape used in the JSON report.
    pub fn to_rows(&self) -> Vec<Vec<u64>> {
        self.counts
            .chunks_exact(self.num_classes)
            .map(<[u64]>::to_vec)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_rows_true_columns_predicted() {
        // Two class-0 samples (one predicted 1), one class-1 sample predicted 0,
        // three class-2 samples predicted 2.
        let labels = [0, 0, 1, 2, 2, 2];
        let preds = [0, 1, 0, 2, 2, 2];
        let cm = ConfusionMatrix::from_predictions(&preds, &labels, 3).unwrap();
        assert_eq!(
            cm.to_rows(),
            vec![vec![1, 1, 0], vec![1, 0, 0], vec![0, 0, 3]]
        );
        assert_eq!(cm.total(), 6);
        assert_eq!(cm.correct(), 4);
        assert_eq!(cm.support(0), 2);
        assert_eq!(cm.predicted_count(0), 2);
        assert_eq!(cm.true_positives(0), 1);
        assert_eq!(cm.false_positives(0), 1);
        assert_eq!(cm.false_negatives(0), 1);
        assert_eq!(cm.true_negatives(0), 3);
    }

    #[test]
    fn rejects_malformed_input() {
        assert_eq!(
            ConfusionMatrix::from_predictions(&[], &[], 2),
            Err(MetricsError::Empty)
        );
        assert!(matches!(
            ConfusionMatrix::from_predictions(&[0], &[0, 1], 2),
            Err(MetricsError::LengthMismatch {
                expected: 2,
                actual: 1,
                ..
            })
        ));
        assert!(matches!(
            ConfusionMatrix::from_predictions(&[0, 0], &[0, 3], 2),
            Err(MetricsError::LabelOutOfRange {
                index: 1,
                label: 3,
                ..
            })
        ));
        assert!(matches!(
            ConfusionMatrix::from_predictions(&[0, 5], &[0, 1], 2),
            Err(MetricsError::PredictionOutOfRange {
                index: 1,
                prediction: 5,
                ..
            })
        ));
    }
}
