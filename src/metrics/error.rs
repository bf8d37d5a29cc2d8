//! Errors raised when metric inputs are malformed.
//!
//! The checks mirror the input validation of scikit-learn's metric functions
//! (<https://scikit-learn.org/stable/modules/model_evaluation.html>): a metric
//! computed from inconsistent inputs would be a silent wrong number, so every
//! entry point rejects them instead.

/// Why a metric could not be computed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum MetricsError {
    /// There are no samples; every metric would be a division by zero.
    #[error("no samples to evaluate")]
    Empty,
    /// `num_classes` is zero, so no probability row can be formed.
    #[error("num_classes must be at least 1")]
    NoClasses,
    /// Two inputs that must describe the same samples disagree in length.
    #[error("length mismatch: {what} has {actual} values, expected {expected}")]
    LengthMismatch {
        /// Which input has the wrong length.
        what: &'static str,
        /// Length implied by the other inputs.
        expected: usize,
        /// Length actually given.
        actual: usize,
    },
    /// A true label is not in `0..num_classes`.
    #[error("label {label} of sample {index} is out of range for {num_classes} classes")]
    LabelOutOfRange {
        /// Sample position.
        index: usize,
        /// The offending label.
        label: usize,
        /// Number of classes the label was checked against.
        num_classes: usize,
    },
    /// A predicted class is not in `0..num_classes`.
    #[error("prediction {prediction} of sample {index} is out of range for {num_classes} classes")]
    PredictionOutOfRange {
        /// Sample position.
        index: usize,
        /// The offending prediction.
        prediction: usize,
        /// Number of classes the prediction was checked against.
        num_classes: usize,
    },
    /// A probability or score is NaN or infinite; ranks and bins would be meaningless.
    #[error("non-finite value {value} at position {index} of {what}")]
    NonFinite {
        /// Which input holds the value.
        what: &'static str,
        /// Flat position of the value in that input.
        index: usize,
        /// The offending value.
        value: f64,
    },
}
