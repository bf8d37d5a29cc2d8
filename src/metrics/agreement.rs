//! Chance-corrected agreement between true and predicted classes: Cohen's kappa.
//!
//! Cohen, "A coefficient of agreement for nominal scales", Educational and
//! Psychological Measurement 20(1), 1960; the quadratic-weighted variant is from
//! Cohen, "Weighted kappa", Psychological Bulletin 70(4), 1968. The computation
//! mirrors scikit-learn's `cohen_kappa_score`
//! (<https://scikit-learn.org/stable/modules/generated/sklearn.metrics.cohen_kappa_score.html>):
//! `kappa = 1 - sum(w * observed) / sum(w * expected)`, where `expected` is the outer
//! product of the row and column marginals divided by `N`, and `w` is a disagreement
//! weight (`1 - [i == j]` for plain kappa, `(i - j)^2 / (K - 1)^2` for quadratic).
//!
//! When the expected disagreement is zero (every label and prediction is the same
//! single class), kappa is 0/0; it is reported as 0.0, the crate's zero-division rule,
//! so that reports stay valid JSON.

use super::ConfusionMatrix;

/// Cohen's kappa: agreement beyond chance, `(p_o - p_e) / (1 - p_e)`.
///
/// 1 is perfect agreement, 0 is chance level, negative is worse than chance.
pub fn cohen_kappa(cm: &ConfusionMatrix) -> f64 {
    weighted_kappa(cm, |i, j| if i == j { 0.0 } else { 1.0 })
}

/// Quadratic-weighted kappa, for ordinal classes (e.g. disease grades).
///
/// Disagreements cost `(i - j)^2 / (K - 1)^2`, so confusing neighbouring grades is
/// penalised far less than confusing the extremes. With two classes it equals
/// [`cohen_kappa`]; with one class it is 0.0 (no disagreement is possible).
pub fn quadratic_weighted_kappa(cm: &ConfusionMatrix) -> f64 {
    let k = cm.num_classes();
    if k < 2 {
        return 0.0;
    }
    let scale = ((k - 1) * (k - 1)) as f64;
    weighted_kappa(cm, |i, j| {
        let d = i.abs_diff(j) as f64;
        d * d / scale
    })
}

/// `1 - sum(w * O) / sum(w * E)` with `E[i][j] = row_i * col_j / N`.
fn weighted_kappa(cm: &ConfusionMatrix, weight: impl Fn(usize, usize) -> f64) -> f64 {
    let k = cm.num_classes();
    let total = cm.total() as f64;
    if total == 0.0 {
        return 0.0;
    }
    let rows: Vec<f64> = (0..k).map(|i| cm.support(i) as f64).collect();
    let cols: Vec<f64> = (0..k).map(|j| cm.predicted_count(j) as f64).collect();
    let mut observed = 0.0;
    let mut expected = 0.0;
    for (i, &row) in rows.iter().enumerate() {
        for (j, &col) in cols.iter().enumerate() {
            let w = weight(i, j);
            observed += w * cm.get(i, j) as f64;
            expected += w * row * col / total;
        }
    }
    if expected == 0.0 {
        0.0
    } else {
        1.0 - observed / expected
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    /// Builds a confusion matrix holding `counts[i][j]` samples of true `i`, predicted `j`.
    fn matrix(counts: &[&[usize]]) -> ConfusionMatrix {
        let (mut labels, mut preds) = (Vec::new(), Vec::new());
        for (i, row) in counts.iter().enumerate() {
            for (j, &n) in row.iter().enumerate() {
                labels.extend(std::iter::repeat_n(i, n));
                preds.extend(std::iter::repeat_n(j, n));
            }
        }
        ConfusionMatrix::from_predictions(&preds, &labels, counts.len()).unwrap()
    }

    #[test]
    fn cohen_kappa_wikipedia_example() {
        // https://en.wikipedia.org/wiki/Cohen%27s_kappa#Simple_example
        // Class 0 = "yes", 1 = "no"; rows rater A, columns rater B.
        // 20 yes/yes, 5 yes/no, 10 no/yes, 15 no/no.
        // p_o = 35/50 = 0.7; p_e = 0.5*0.6 + 0.5*0.4 = 0.5; kappa = 0.2/0.5 = 0.4.
        let cm = matrix(&[&[20, 5], &[10, 15]]);
        assert!(close(cohen_kappa(&cm), 0.4));
        // With two classes the quadratic weights are the 0/1 weights.
        assert!(close(quadratic_weighted_kappa(&cm), 0.4));
    }

    #[test]
    fn quadratic_kappa_hand_example() {
        // labels [0,0,1,1,2,2], predictions [0,1,1,2,2,1]:
        //         p0 p1 p2 | row
        //   t0     1  1  0 |  2
        //   t1     0  1  1 |  2
        //   t2     0  1  1 |  2
        //   col    1  3  2 | N = 6
        // Weights w_ij = (i-j)^2/4: w01 = w12 = 1/4, w02 = 1.
        // sum w*O = O01/4 + O12/4 + O21/4 = 3/4.
        // E_ij = row_i*col_j/6 = col_j/3, so sum w*E = sum_j (col_j/3) * sum_i w_ij
        //   = (1/3)(5/4) + (3/3)(1/2) + (2/3)(5/4) = 5/12 + 6/12 + 10/12 = 7/4.
        // kappa_q = 1 - (3/4)/(7/4) = 4/7.
        // Unweighted for comparison: p_o = 1/2, p_e = (2+6+4)/36 = 1/3 -> kappa 1/4.
        let cm =
            ConfusionMatrix::from_predictions(&[0, 1, 1, 2, 2, 1], &[0, 0, 1, 1, 2, 2], 3).unwrap();
        assert!(close(quadratic_weighted_kappa(&cm), 4.0 / 7.0));
        assert!(close(cohen_kappa(&cm), 0.25));
    }

    #[test]
    fn kappa_extremes() {
        // Perfect agreement.
        assert!(close(cohen_kappa(&matrix(&[&[3, 0], &[0, 2]])), 1.0));
        // Complete swap on balanced marginals: p_o = 0, p_e = 0.5 -> -1.
        assert!(close(cohen_kappa(&matrix(&[&[0, 2], &[2, 0]])), -1.0));
        // Everything in one class: 0/0, reported as 0.
        assert_eq!(cohen_kappa(&matrix(&[&[4, 0], &[0, 0]])), 0.0);
        assert_eq!(quadratic_weighted_kappa(&matrix(&[&[4]])), 0.0);
    }
}
