//! Calibration of predicted probabilities: expected calibration error and Brier score.
//!
//! ECE follows Guo, Pleiss, Sun & Weinberger, "On Calibration of Modern Neural
//! Networks", ICML 2017, eq. (3): the confidence of a sample is its maximum class
//! probability, samples are grouped into `M = 15` equal-width bins, and
//! `ECE = sum_m |B_m| / N * |acc(B_m) - conf(B_m)|`. Bin `m` (0-based) holds
//! confidences in `(m/M, (m+1)/M]`; a confidence of exactly 0 goes to the first bin.
//!
//! The Brier score is the multi-class form of Brier, "Verification of forecasts
//! expressed in terms of probability", Monthly Weather Review 78(1), 1950:
//! the mean over samples of `sum_k (p_k - [k == y])^2`, ranging from 0 (perfect) to 2.
//! With two classes that sum counts the one error twice; the binary form users compare with
//! (scikit-learn's `brier_score_loss` of class 1) is `mean (p_1 - y)^2`, exactly half of it,
//! ranging from 0 to 1 ([`BrierForm`]).

use super::MetricsError;
use super::input::{argmax_rows, validate_inputs};

/// Number of equal-width confidence bins used by [`expected_calibration_error`] (Guo et al.).
pub const ECE_BINS: usize = 15;

/// Expected calibration error of the argmax predictions, with [`ECE_BINS`] bins.
///
/// 0 means confidence matches accuracy in every bin; the maximum is 1.
pub fn expected_calibration_error(
    probabilities: &[f32],
    num_classes: usize,
    labels: &[usize],
) -> Result<f64, MetricsError> {
    validate_inputs(probabilities, num_classes, labels)?;
    let predictions = argmax_rows(probabilities, num_classes);
    let (confidences, correct): (Vec<f64>, Vec<bool>) = probabilities
        .chunks_exact(num_classes)
        .zip(predictions.iter().zip(labels))
        .map(|(row, (&pred, &label))| (f64::from(row[pred]), pred == label))
        .unzip();
    Ok(ece_from_confidences(&confidences, &correct, ECE_BINS))
}

/// Which Brier score a report holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BrierForm {
    /// `mean (p_1 - y)^2` of the second class, for two-class tasks (0 to 1).
    Binary,
    /// `mean sum_k (p_k - [k == y])^2`, for three or more classes (0 to 2); also what reports
    /// written before the binary form existed hold.
    #[default]
    MultiClass,
}

impl BrierForm {
    /// The form ppcr reports for `num_classes` classes.
    pub fn for_classes(num_classes: usize) -> Self {
        if num_classes == 2 {
            BrierForm::Binary
        } else {
            BrierForm::MultiClass
        }
    }

    /// `binary` or `multi-class`.
    pub fn name(self) -> &'static str {
        match self {
            BrierForm::Binary => "binary",
            BrierForm::MultiClass => "multi-class",
        }
    }

    /// The score in this form, from the multi-class one.
    pub fn from_multi_class(self, multi_class: f64) -> f64 {
        match self {
            BrierForm::Binary => multi_class / 2.0,
            BrierForm::MultiClass => multi_class,
        }
    }
}

/// Multi-class Brier score: mean squared distance between the probability row and
/// the one-hot true label.
pub fn brier_score(
    probabilities: &[f32],
    num_classes: usize,
    labels: &[usize],
) -> Result<f64, MetricsError> {
    let n = validate_inputs(probabilities, num_classes, labels)?;
    let total: f64 = probabilities
        .chunks_exact(num_classes)
        .zip(labels)
        .map(|(row, &label)| {
            row.iter()
                .enumerate()
                .map(|(k, &p)| {
                    let target = if k == label { 1.0 } else { 0.0 };
                    (f64::from(p) - target).powi(2)
                })
                .sum::<f64>()
        })
        .sum();
    Ok(total / n as f64)
}

/// Bin of `confidence` among `num_bins` bins of the form `(m/M, (m+1)/M]`.
///
/// The multiplication gives a first guess; the edges are then compared exactly as
/// `m / M` so that a confidence equal to an edge lands in the lower bin as the
/// definition says, whatever the rounding of `confidence * M`. Values outside [0, 1]
/// are clamped to the end bins.
fn bin_index(confidence: f64, num_bins: usize) -> usize {
    let edge = |m: usize| m as f64 / num_bins as f64;
    let guess = (confidence * num_bins as f64).ceil();
    let mut m = if guess >= 1.0 {
        (guess as usize - 1).min(num_bins - 1)
    } else {
        0
    };
    while m > 0 && confidence <= edge(m) {
        m -= 1;
    }
    while m + 1 < num_bins && confidence > edge(m + 1) {
        m += 1;
    }
    m
}

/// ECE from per-sample confidences and correctness flags (non-empty, equal lengths).
fn ece_from_confidences(confidences: &[f64], correct: &[bool], num_bins: usize) -> f64 {
    // Per bin: (count, number correct, sum of confidences).
    let mut bins = vec![(0usize, 0usize, 0.0f64); num_bins];
    for (&c, &ok) in confidences.iter().zip(correct) {
        let bin = &mut bins[bin_index(c, num_bins)];
        bin.0 += 1;
        bin.1 += usize::from(ok);
        bin.2 += c;
    }
    let n = confidences.len() as f64;
    bins.iter()
        .filter(|b| b.0 > 0)
        // |B|/N * |hits/|B| - conf_sum/|B|| simplifies to |hits - conf_sum| / N.
        .map(|&(_, hits, conf_sum)| (hits as f64 - conf_sum).abs() / n)
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64, tol: f64) -> bool {
        (a - b).abs() < tol
    }

    #[test]
    fn bin_edges_follow_the_half_open_definition() {
        assert_eq!(bin_index(0.0, 15), 0);
        assert_eq!(bin_index(1.0, 15), 14);
        assert_eq!(bin_index(0.5, 15), 7); // 7/15 = 0.467 < 0.5 <= 8/15 = 0.533
        // An edge belongs to the bin below it: 2/15 is the top of bin 1.
        assert_eq!(bin_index(2.0 / 15.0, 15), 1);
        assert_eq!(bin_index(14.0 / 15.0, 15), 13);
        assert_eq!(bin_index(1e-9, 15), 0);
        // Out-of-range values are clamped.
        assert_eq!(bin_index(-0.5, 15), 0);
        assert_eq!(bin_index(1.5, 15), 14);
    }

    #[test]
    fn ece_hand_example() {
        // 15 bins of width 1/15 = 0.0667:
        //   bin 14 (0.933, 1]:   0.95 correct, 0.95 wrong -> acc 0.5, conf 0.95, gap 0.45
        //   bin 7 (0.467, 0.533]: 0.50 correct, 0.52 correct -> acc 1, conf 0.51, gap 0.49
        //   bin 2 (0.133, 0.2]:  0.15 wrong -> acc 0, conf 0.15, gap 0.15
        // ECE = 2/5 * 0.45 + 2/5 * 0.49 + 1/5 * 0.15 = 0.18 + 0.196 + 0.03 = 0.406
        let conf = [0.95, 0.95, 0.50, 0.52, 0.15];
        let ok = [true, false, true, true, false];
        assert!(close(ece_from_confidences(&conf, &ok, 15), 0.406, 1e-12));
    }

    #[test]
    fn ece_from_probabilities() {
        // Two classes, argmax confidence and correctness:
        //   [0.9, 0.1]  label 0 -> 0.9 correct   (bin 13)
        //   [0.3, 0.7]  label 0 -> 0.7 wrong     (bin 10)
        //   [0.25, 0.75] label 1 -> 0.75 correct (bin 11)
        // Each sample is alone in its bin, so ECE = mean |correct - conf|
        //   = (0.1 + 0.7 + 0.25) / 3 = 0.35
        let probs = [0.9, 0.1, 0.3, 0.7, 0.25, 0.75];
        let ece = expected_calibration_error(&probs, 2, &[0, 0, 1]).unwrap();
        assert!(close(ece, 0.35, 1e-6));
        // A perfectly confident, always right model is perfectly calibrated.
        let ece = expected_calibration_error(&[1.0, 0.0, 0.0, 1.0], 2, &[0, 1]).unwrap();
        assert_eq!(ece, 0.0);
    }

    #[test]
    fn brier_hand_example() {
        // [0.7, 0.2, 0.1], label 0: 0.3^2 + 0.2^2 + 0.1^2 = 0.09 + 0.04 + 0.01 = 0.14
        // [0.1, 0.3, 0.6], label 1: 0.1^2 + 0.7^2 + 0.6^2 = 0.01 + 0.49 + 0.36 = 0.86
        // mean = 0.5
        let probs = [0.7, 0.2, 0.1, 0.1, 0.3, 0.6];
        assert!(close(brier_score(&probs, 3, &[0, 1]).unwrap(), 0.5, 1e-6));
        // Perfect one-hot predictions score 0; confidently wrong ones score 2.
        assert_eq!(brier_score(&[1.0, 0.0], 2, &[0]).unwrap(), 0.0);
        assert_eq!(brier_score(&[1.0, 0.0], 2, &[1]).unwrap(), 2.0);
    }

    #[test]
    fn calibration_rejects_bad_input() {
        assert_eq!(brier_score(&[], 2, &[]), Err(MetricsError::Empty));
        assert!(matches!(
            expected_calibration_error(&[0.5, f32::NAN], 2, &[0]),
            Err(MetricsError::NonFinite { .. })
        ));
    }
}
