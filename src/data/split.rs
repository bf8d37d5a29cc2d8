//! Seeded, stratified train/val/test splitting.
//!
//! # The rule
//! Each class is split on its own, so every split keeps the class proportions of the whole:
//!
//! 1. A class with `n` images gets `round(n * val_fraction)` validation and
//!    `round(n * test_fraction)` test images (rounding half away from zero).
//! 2. If `n >= 3`, each split whose fraction is non-zero gets at least one image, and training
//!    keeps at least one: when the rounded counts leave training empty, the larger of the
//!    val/test counts gives one back until training has an image.
//! 3. A class with fewer than 3 images goes wholly to training: it cannot appear in all three
//!    splits, and one held-out image says little about a class while it costs half its data.
//! 4. The class's image indices are shuffled by a ChaCha8 generator seeded with `seed` on stream
//!    number `class` (so adding a class never changes how the others are split); the first
//!    test-count shuffled images go to test, the next val-count to validation, the rest to
//!    training. Each returned list is sorted ascending.
//!
//! The same labels, fractions and seed always give the same split, on every platform.

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

/// Indices into the labelled pool for each split, each list sorted ascending.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SplitIndices {
    /// Training indices.
    pub train: Vec<usize>,
    /// Validation indices.
    pub val: Vec<usize>,
    /// Test indices.
    pub test: Vec<usize>,
}

/// How many of `class_size` images of one class go to (train, val, test) under the module's rule.
///
/// Fractions are expected in `[0, 1)` with `val_fraction + test_fraction < 1`
/// (as `LoadOptions::validate` enforces); values outside are clamped.
pub fn class_split_counts(
    class_size: usize,
    val_fraction: f64,
    test_fraction: f64,
) -> (usize, usize, usize) {
    if class_size < 3 {
        return (class_size, 0, 0);
    }
    let clamp = |fraction: f64| {
        if fraction.is_finite() {
            fraction.clamp(0.0, 1.0)
        } else {
            0.0
        }
    };
    let (val_fraction, test_fraction) = (clamp(val_fraction), clamp(test_fraction));
    let min_val = usize::from(val_fraction > 0.0);
    let min_test = usize::from(test_fraction > 0.0);
    let mut val = ((class_size as f64 * val_fraction).round() as usize).max(min_val);
    let mut test = ((class_size as f64 * test_fraction).round() as usize).max(min_test);
    // class_size >= 3 leaves room for min_val + min_test + 1, so this always terminates with
    // training non-empty and no held-out split taken below its minimum.
    while val + test > class_size - 1 {
        if (test >= val && test > min_test) || val <= min_val {
            test -= 1;
        } else {
            val -= 1;
        }
    }
    (class_size - val - test, val, test)
}

/// Splits a labelled pool into train/val/test, stratified by label and seeded.
///
/// `labels[i]` is the class of pool item `i`; the returned indices refer to that pool.
/// See the module documentation for the exact rule.
pub fn stratified_split(
    labels: &[usize],
    val_fraction: f64,
    test_fraction: f64,
    seed: u64,
) -> SplitIndices {
    let num_classes = labels.iter().max().map_or(0, |&max| max + 1);
    let mut members: Vec<Vec<usize>> = vec![Vec::new(); num_classes];
    for (index, &label) in labels.iter().enumerate() {
        members[label].push(index);
    }
    let mut split = SplitIndices::default();
    for (class, mut indices) in members.into_iter().enumerate() {
        let (_, val_count, test_count) =
            class_split_counts(indices.len(), val_fraction, test_fraction);
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        rng.set_stream(class as u64);
        indices.shuffle(&mut rng);
        split.test.extend_from_slice(&indices[..test_count]);
        split
            .val
            .extend_from_slice(&indices[test_count..test_count + val_count]);
        split
            .train
            .extend_from_slice(&indices[test_count + val_count..]);
    }
    split.train.sort_unstable();
    split.val.sort_unstable();
    split.test.sort_unstable();
    split
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 100 of class 0, 50 of class 1, 10 of class 2, 3 of class 3, 2 of class 4, interleaved.
    fn pool_labels() -> Vec<usize> {
        let mut labels = Vec::new();
        for (class, count) in [(0, 100), (1, 50), (2, 10), (3, 3), (4, 2)] {
            labels.extend(std::iter::repeat_n(class, count));
        }
        // Interleave deterministically so classes are not contiguous.
        let len = labels.len();
        (0..len).map(|i| labels[(i * 37) % len]).collect()
    }

    fn count(labels: &[usize], indices: &[usize], class: usize) -> usize {
        indices.iter().filter(|&&i| labels[i] == class).count()
    }

    #[test]
    fn counts_follow_the_documented_rule() {
        assert_eq!(class_split_counts(100, 0.1, 0.2), (70, 10, 20));
        assert_eq!(class_split_counts(10, 0.1, 0.2), (7, 1, 2));
        assert_eq!(class_split_counts(3, 0.1, 0.2), (1, 1, 1));
        assert_eq!(class_split_counts(4, 0.1, 0.2), (2, 1, 1));
        assert_eq!(class_split_counts(2, 0.1, 0.2), (2, 0, 0));
        assert_eq!(class_split_counts(0, 0.1, 0.2), (0, 0, 0));
        assert_eq!(class_split_counts(3, 0.45, 0.45), (1, 1, 1));
        assert_eq!(class_split_counts(10, 0.1, 0.0), (9, 1, 0));
        assert_eq!(class_split_counts(5, 0.0, 0.0), (5, 0, 0));
        for n in 0..200 {
            for (val, test) in [(0.1, 0.2), (0.3, 0.6), (0.0, 0.9), (0.9, 0.0), (0.49, 0.5)] {
                let (tr, va, te) = class_split_counts(n, val, test);
                assert_eq!(tr + va + te, n);
                if n >= 3 {
                    assert!(tr >= 1, "n={n} {val} {test}");
                    assert_eq!(va >= 1, val > 0.0, "n={n} {val} {test}");
                    assert_eq!(te >= 1, test > 0.0, "n={n} {val} {test}");
                }
            }
        }
    }

    #[test]
    fn split_is_a_stratified_partition() {
        let labels = pool_labels();
        let split = stratified_split(&labels, 0.1, 0.2, 7);
        let mut all: Vec<usize> = [&split.train[..], &split.val[..], &split.test[..]].concat();
        all.sort_unstable();
        assert_eq!(
            all,
            (0..labels.len()).collect::<Vec<_>>(),
            "union = all, no overlap"
        );
        for (class, expected) in [
            (0, (70, 10, 20)),
            (1, (35, 5, 10)),
            (2, (7, 1, 2)),
            (3, (1, 1, 1)),
            (4, (2, 0, 0)),
        ] {
            let got = (
                count(&labels, &split.train, class),
                count(&labels, &split.val, class),
                count(&labels, &split.test, class),
            );
            assert_eq!(got, expected, "class {class}");
        }
        assert!(split.train.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn split_is_deterministic_per_seed_and_differs_across_seeds() {
        let labels = pool_labels();
        let first = stratified_split(&labels, 0.1, 0.2, 7);
        assert_eq!(first, stratified_split(&labels, 0.1, 0.2, 7));
        let other = stratified_split(&labels, 0.1, 0.2, 8);
        assert_ne!(first.test, other.test);
        assert_eq!(first.test.len(), other.test.len());
    }

    #[test]
    fn adding_a_class_leaves_the_other_classes_split_unchanged() {
        let labels = vec![0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1];
        let mut extended = labels.clone();
        extended.extend([2, 2, 2, 2]);
        let before = stratified_split(&labels, 0.2, 0.2, 3);
        let after = stratified_split(&extended, 0.2, 0.2, 3);
        let old = |indices: &[usize]| {
            indices
                .iter()
                .copied()
                .filter(|&i| i < 12)
                .collect::<Vec<_>>()
        };
        assert_eq!(old(&after.train), before.train);
        assert_eq!(old(&after.val), before.val);
        assert_eq!(old(&after.test), before.test);
    }
}
