//! Area under the ROC curve and ROC curve points.
//!
//! The AUC is computed by the rank-sum (Mann-Whitney U) identity
//! `AUC = (R_pos - P(P+1)/2) / (P * N)`, where `R_pos` is the sum of the ranks of the
//! positive scores among all scores with tied scores given their average rank
//! (Hanley & McNeil, "The meaning and use of the area under a receiver operating
//! characteristic (ROC) curve", Radiology 143(1), 1982). It equals the probability
//! that a random positive outscores a random negative, ties counting 1/2, and equals
//! the trapezoidal area under the ROC curve, as scikit-learn's `roc_auc_score`
//! (<https://scikit-learn.org/stable/modules/generated/sklearn.metrics.roc_auc_score.html>).
//!
//! Multi-class AUC is one-vs-rest: class `c`'s probability column scores "is `c`"
//! against everything else, and the macro AUC is the unweighted mean over classes
//! (scikit-learn's `multi_class="ovr", average="macro"`).

use serde::{Deserialize, Serialize};

use super::MetricsError;
use super::input::{check_finite, validate_inputs};

/// Points of a ROC curve, one per distinct score threshold, from (0, 0) to (1, 1).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RocCurve {
    /// False-positive rate at each threshold, non-decreasing.
    pub fpr: Vec<f64>,
    /// True-positive rate at each threshold, non-decreasing.
    pub tpr: Vec<f64>,
    /// Decreasing thresholds; point `i` predicts positive when `score >= thresholds[i]`.
    ///
    /// The first threshold is `max score + 1`, which nothing reaches and so gives the
    /// (0, 0) point. scikit-learn >= 1.3 uses `+inf` there, but JSON cannot carry an
    /// infinity, and these curves are meant to be written out for plotting.
    pub thresholds: Vec<f64>,
}

/// One-vs-rest AUC of every class and their macro mean.
#[derive(Debug, Clone, PartialEq)]
pub struct OneVsRestAuc {
    /// AUC of each class's probability for "is this class"; `None` when the labels
    /// contain no sample of the class or only samples of it (the AUC is undefined).
    pub per_class: Vec<Option<f64>>,
    /// Mean of the defined per-class AUCs, `None` if none is defined.
    ///
    /// With exactly two classes this is class 1's AUC alone, as scikit-learn's
    /// `roc_auc_score` does for binary labels. When each row sums to one, class 0's
    /// probability is `1 - p1` and its AUC is the same number, so this also equals
    /// the two-class OvR mean; taking class 1 avoids float noise from the rows not
    /// summing to one exactly.
    pub macro_auc: Option<f64>,
}

/// ROC AUC of `scores` for the binary labels `positives`, ties counting 1/2.
///
/// Returns `Ok(None)` when there are no positives or no negatives, since the AUC is
/// then undefined. Errors on empty input, differing lengths, or non-finite scores.
pub fn binary_auc(scores: &[f64], positives: &[bool]) -> Result<Option<f64>, MetricsError> {
    check_binary_inputs(scores, positives)?;
    Ok(rank_auc(scores, positives))
}

/// ROC curve of `scores` for the binary labels `positives`, one point per distinct score.
///
/// Unlike scikit-learn's default (`drop_intermediate=True`) no collinear points are
/// dropped, so the curve is exact for every threshold. Returns `Ok(None)` when there
/// are no positives or no negatives (a rate would be 0/0).
pub fn roc_curve(scores: &[f64], positives: &[bool]) -> Result<Option<RocCurve>, MetricsError> {
    check_binary_inputs(scores, positives)?;
    Ok(roc_points(scores, positives))
}

/// One-vs-rest AUC of each class from a row-major `N x num_classes` probability matrix.
pub fn one_vs_rest_auc(
    probabilities: &[f32],
    num_classes: usize,
    labels: &[usize],
) -> Result<OneVsRestAuc, MetricsError> {
    validate_inputs(probabilities, num_classes, labels)?;
    let per_class: Vec<Option<f64>> = (0..num_classes)
        .map(|c| {
            let (scores, positives) = one_vs_rest_column(probabilities, num_classes, labels, c);
            rank_auc(&scores, &positives)
        })
        .collect();
    let macro_auc = if num_classes == 2 {
        per_class[1]
    } else {
        let defined: Vec<f64> = per_class.iter().flatten().copied().collect();
        (!defined.is_empty()).then(|| defined.iter().sum::<f64>() / defined.len() as f64)
    };
    Ok(OneVsRestAuc {
        per_class,
        macro_auc,
    })
}

/// One-vs-rest ROC curve of each class, for plotting; `None` where a class has no
/// positives or no negatives. Kept out of the report so its JSON stays small.
pub fn roc_curves(
    probabilities: &[f32],
    num_classes: usize,
    labels: &[usize],
) -> Result<Vec<Option<RocCurve>>, MetricsError> {
    validate_inputs(probabilities, num_classes, labels)?;
    Ok((0..num_classes)
        .map(|c| {
            let (scores, positives) = one_vs_rest_column(probabilities, num_classes, labels, c);
            roc_points(&scores, &positives)
        })
        .collect())
}

fn check_binary_inputs(scores: &[f64], positives: &[bool]) -> Result<(), MetricsError> {
    if positives.is_empty() {
        return Err(MetricsError::Empty);
    }
    if scores.len() != positives.len() {
        return Err(MetricsError::LengthMismatch {
            what: "scores",
            expected: positives.len(),
            actual: scores.len(),
        });
    }
    check_finite("scores", scores.iter().copied())
}

/// Column `class` of the probability matrix as f64 scores, and "label is `class`" flags.
fn one_vs_rest_column(
    probabilities: &[f32],
    num_classes: usize,
    labels: &[usize],
    class: usize,
) -> (Vec<f64>, Vec<bool>) {
    let scores = probabilities
        .chunks_exact(num_classes)
        .map(|row| f64::from(row[class]))
        .collect();
    let positives = labels.iter().map(|&l| l == class).collect();
    (scores, positives)
}

/// Counts of (positives, negatives).
fn class_counts(positives: &[bool]) -> (usize, usize) {
    let p = positives.iter().filter(|&&b| b).count();
    (p, positives.len() - p)
}

/// Indices of `scores` sorted by score; `descending` for the ROC sweep.
fn sorted_indices(scores: &[f64], descending: bool) -> Vec<usize> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| {
        let ord = scores[a].total_cmp(&scores[b]);
        if descending { ord.reverse() } else { ord }
    });
    order
}

/// Lengths of the runs of equal scores along `order`.
///
/// Uses `==` rather than the sort's total order so that -0.0 and 0.0 count as a tie.
fn tie_groups<'a>(scores: &'a [f64], order: &'a [usize]) -> impl Iterator<Item = &'a [usize]> {
    order.chunk_by(move |&a, &b| scores[a] == scores[b])
}

/// Mann-Whitney AUC on validated input.
fn rank_auc(scores: &[f64], positives: &[bool]) -> Option<f64> {
    let (p, n) = class_counts(positives);
    if p == 0 || n == 0 {
        return None;
    }
    let order = sorted_indices(scores, false);
    let mut rank_sum_pos = 0.0;
    let mut start = 0usize;
    for group in tie_groups(scores, &order) {
        // Ranks start+1 ..= start+len share their mean, which is how ties score 1/2.
        let mean_rank = start as f64 + (group.len() as f64 + 1.0) / 2.0;
        let group_pos = group.iter().filter(|&&i| positives[i]).count();
        rank_sum_pos += mean_rank * group_pos as f64;
        start += group.len();
    }
    let (p, n) = (p as f64, n as f64);
    Some((rank_sum_pos - p * (p + 1.0) / 2.0) / (p * n))
}

/// ROC sweep on validated input.
fn roc_points(scores: &[f64], positives: &[bool]) -> Option<RocCurve> {
    let (p, n) = class_counts(positives);
    if p == 0 || n == 0 {
        return None;
    }
    let order = sorted_indices(scores, true);
    let max = scores[order[0]];
    let mut curve = RocCurve {
        fpr: vec![0.0],
        tpr: vec![0.0],
        thresholds: vec![max + 1.0],
    };
    let (mut tp, mut fp) = (0usize, 0usize);
    for group in tie_groups(scores, &order) {
        // A whole tie group crosses the threshold at once, giving the diagonal
        // segment whose area is the 1/2 credit of the rank formula.
        let group_pos = group.iter().filter(|&&i| positives[i]).count();
        tp += group_pos;
        fp += group.len() - group_pos;
        curve.fpr.push(fp as f64 / n as f64);
        curve.tpr.push(tp as f64 / p as f64);
        curve.thresholds.push(scores[group[0]]);
    }
    Some(curve)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    fn trapezoid_area(curve: &RocCurve) -> f64 {
        curve
            .fpr
            .windows(2)
            .zip(curve.tpr.windows(2))
            .map(|(x, y)| (x[1] - x[0]) * (y[0] + y[1]) / 2.0)
            .sum()
    }

    #[test]
    fn auc_sklearn_docs_example() {
        // scikit-learn roc_auc_score / roc_curve docs: y = [0,0,1,1],
        // scores [0.1,0.4,0.35,0.8] -> 0.75. By pairs: 0.35 beats 0.1 but not 0.4,
        // 0.8 beats both -> 3 of 4.
        let y = [false, false, true, true];
        let s = [0.1, 0.4, 0.35, 0.8];
        assert_eq!(binary_auc(&s, &y).unwrap(), Some(0.75));
    }

    #[test]
    fn auc_counts_ties_as_half() {
        // Positives {0.5, 0.8}, negatives {0.5, 0.2}: pairs (0.5,0.5) = 1/2,
        // (0.5,0.2) = 1, (0.8,0.5) = 1, (0.8,0.2) = 1 -> 3.5/4 = 0.875.
        let y = [false, true, false, true];
        let s = [0.5, 0.5, 0.2, 0.8];
        assert!(close(binary_auc(&s, &y).unwrap().unwrap(), 0.875));
        // All scores tied: every pair is 1/2.
        assert!(close(
            binary_auc(&[0.3; 5], &[true, false, true, false, false])
                .unwrap()
                .unwrap(),
            0.5
        ));
        // -0.0 and 0.0 are the same score.
        assert!(close(
            binary_auc(&[-0.0, 0.0], &[true, false]).unwrap().unwrap(),
            0.5
        ));
    }

    #[test]
    fn auc_perfect_and_inverted_rankings() {
        let y = [false, false, true, true, true];
        assert_eq!(
            binary_auc(&[0.1, 0.2, 0.3, 0.4, 0.9], &y).unwrap(),
            Some(1.0)
        );
        assert_eq!(
            binary_auc(&[0.9, 0.8, 0.3, 0.2, 0.1], &y).unwrap(),
            Some(0.0)
        );
    }

    #[test]
    fn auc_undefined_or_invalid_input() {
        assert_eq!(binary_auc(&[0.1, 0.2], &[true, true]).unwrap(), None);
        assert_eq!(binary_auc(&[0.1, 0.2], &[false, false]).unwrap(), None);
        assert_eq!(binary_auc(&[], &[]), Err(MetricsError::Empty));
        assert!(matches!(
            binary_auc(&[0.1], &[true, false]),
            Err(MetricsError::LengthMismatch {
                expected: 2,
                actual: 1,
                ..
            })
        ));
        assert!(matches!(
            binary_auc(&[0.1, f64::NAN], &[true, false]),
            Err(MetricsError::NonFinite { index: 1, .. })
        ));
    }

    #[test]
    fn roc_curve_sklearn_docs_example() {
        // sklearn (drop_intermediate=False) gives fpr [0,0,.5,.5,1], tpr [0,.5,.5,1,1],
        // thresholds [inf,.8,.4,.35,.1]; our first threshold is max + 1 = 1.8.
        let y = [false, false, true, true];
        let s = [0.1, 0.4, 0.35, 0.8];
        let curve = roc_curve(&s, &y).unwrap().unwrap();
        assert_eq!(curve.fpr, vec![0.0, 0.0, 0.5, 0.5, 1.0]);
        assert_eq!(curve.tpr, vec![0.0, 0.5, 0.5, 1.0, 1.0]);
        assert_eq!(curve.thresholds, vec![1.8, 0.8, 0.4, 0.35, 0.1]);
        assert!(close(trapezoid_area(&curve), 0.75));
    }

    #[test]
    fn roc_curve_area_matches_rank_auc_with_ties() {
        let y = [false, true, false, true];
        let s = [0.5, 0.5, 0.2, 0.8];
        let curve = roc_curve(&s, &y).unwrap().unwrap();
        // Thresholds 1.8, 0.8, 0.5 (tie: one positive and one negative at once), 0.2.
        assert_eq!(curve.fpr, vec![0.0, 0.0, 0.5, 1.0]);
        assert_eq!(curve.tpr, vec![0.0, 0.5, 1.0, 1.0]);
        assert!(close(trapezoid_area(&curve), 0.875));
        assert_eq!(roc_curve(&[0.1, 0.2], &[true, true]).unwrap(), None);
    }

    #[test]
    fn one_vs_rest_macro_auc_hand_example() {
        // rows (p0, p1, p2) and labels:
        //   [0.6, 0.3, 0.1] -> 0
        //   [0.2, 0.5, 0.3] -> 1
        //   [0.1, 0.6, 0.3] -> 2
        //   [0.1, 0.2, 0.7] -> 2
        // class 0: positive 0.6 vs {0.2, 0.1, 0.1} -> 1
        // class 1: positive 0.5 vs {0.3, 0.6, 0.2} -> 2/3
        // class 2: positives {0.3, 0.7} vs {0.1, 0.3}: 1 + 1/2 + 1 + 1 -> 3.5/4 = 7/8
        // macro = (1 + 2/3 + 7/8)/3 = 61/72
        let probs = [0.6, 0.3, 0.1, 0.2, 0.5, 0.3, 0.1, 0.6, 0.3, 0.1, 0.2, 0.7];
        let auc = one_vs_rest_auc(&probs, 3, &[0, 1, 2, 2]).unwrap();
        let per: Vec<f64> = auc.per_class.iter().map(|a| a.unwrap()).collect();
        assert!(close(per[0], 1.0));
        assert!(close(per[1], 2.0 / 3.0));
        assert!(close(per[2], 0.875));
        assert!(close(auc.macro_auc.unwrap(), 61.0 / 72.0));
    }

    #[test]
    fn one_vs_rest_skips_undefined_classes() {
        // Class 2 never occurs in the labels: its AUC is None and the macro mean uses
        // classes 0 and 1 only (both ranked perfectly here).
        let probs = [0.8, 0.1, 0.1, 0.7, 0.2, 0.1, 0.1, 0.8, 0.1, 0.2, 0.6, 0.2];
        let auc = one_vs_rest_auc(&probs, 3, &[0, 0, 1, 1]).unwrap();
        assert_eq!(auc.per_class, vec![Some(1.0), Some(1.0), None]);
        assert_eq!(auc.macro_auc, Some(1.0));
        // A single class in the labels: nothing is defined.
        let auc = one_vs_rest_auc(&[0.9, 0.1, 0.8, 0.2], 2, &[0, 0]).unwrap();
        assert_eq!(auc.per_class, vec![None, None]);
        assert_eq!(auc.macro_auc, None);
    }

    #[test]
    fn two_class_macro_auc_is_class_one_auc() {
        // The sklearn example as softmax rows [1 - s, s].
        let s = [0.1f32, 0.4, 0.35, 0.8];
        let probs: Vec<f32> = s.iter().flat_map(|&p| [1.0 - p, p]).collect();
        let auc = one_vs_rest_auc(&probs, 2, &[0, 0, 1, 1]).unwrap();
        assert!(close(auc.macro_auc.unwrap(), 0.75));
        assert!(close(auc.per_class[0].unwrap(), 0.75));
        assert!(close(auc.per_class[1].unwrap(), 0.75));
    }

    #[test]
    fn roc_curves_per_class() {
        let probs = [0.6, 0.3, 0.1, 0.2, 0.5, 0.3, 0.1, 0.6, 0.3, 0.1, 0.2, 0.7];
        let curves = roc_curves(&probs, 3, &[0, 1, 2, 2]).unwrap();
        assert_eq!(curves.len(), 3);
        let areas: Vec<f64> = curves
            .iter()
            .map(|c| trapezoid_area(c.as_ref().unwrap()))
            .collect();
        assert!(close(areas[0], 1.0));
        assert!(close(areas[1], 2.0 / 3.0));
        assert!(close(areas[2], 0.875));
        let last = curves[2].as_ref().unwrap();
        assert_eq!((last.fpr.last(), last.tpr.last()), (Some(&1.0), Some(&1.0)));
        assert!(matches!(
            roc_curves(&probs, 3, &[0, 1, 2]),
            Err(MetricsError::LengthMismatch { .. })
        ));
    }
}
