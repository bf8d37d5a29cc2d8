//! Training batches made ahead on a worker thread: augmentation and normalisation of the next
//! batches run while the current step computes, so a GPU does not wait for the CPU between
//! steps (and the CPU backend's step overlaps the next batch's augmentation).
//!
//! The worker draws from the epoch's generator in the same order as making the batches one by
//! one on the training thread would, so the batches, and therefore a resumed run, are the same
//! bit for bit.

use std::sync::mpsc::sync_channel;

use rand_chacha::ChaCha8Rng;

use crate::data::{AugmentConfig, Normalization, Split, make_batch};

/// Batches made ahead of the one being trained on. Two keep the worker busy through a step
/// without holding much memory (a batch of 32 images at 224 px is 19 MB).
const BATCHES_AHEAD: usize = 2;

/// Where one epoch's batches come from.
pub(crate) struct EpochBatches<'a> {
    /// The training split.
    pub split: &'a Split,
    /// The epoch's sample order; batches are consecutive chunks of it.
    pub order: Vec<usize>,
    /// Samples per batch (the last incomplete chunk is dropped).
    pub batch_size: usize,
    /// Batches in the epoch.
    pub steps: usize,
    /// Training augmentation.
    pub augment: &'a AugmentConfig,
    /// Normalisation after augmentation.
    pub normalization: &'a Normalization,
    /// Augmented views of each image per batch: 1, or 2 for contrastive training (the batch
    /// is then every image's first view, then every image's second, labels likewise).
    pub views: usize,
}

impl EpochBatches<'_> {
    /// Run `train` over the epoch's batches (`(pixels, labels)`, in order), made ahead on a
    /// worker thread from `rng`. When `train` returns early, the worker stops at its next batch.
    pub fn run<R>(
        self,
        mut rng: ChaCha8Rng,
        train: impl FnOnce(&mut dyn Iterator<Item = (Vec<f32>, Vec<usize>)>) -> R,
    ) -> R {
        let (sender, receiver) = sync_channel(BATCHES_AHEAD);
        std::thread::scope(|scope| {
            let Self {
                split,
                order,
                batch_size,
                steps,
                augment,
                normalization,
                views,
            } = self;
            scope.spawn(move || {
                for indices in order.chunks_exact(batch_size).take(steps) {
                    let mut batch =
                        make_batch(split, indices, Some(augment), &mut rng, normalization);
                    for _ in 1..views {
                        let (pixels, labels) =
                            make_batch(split, indices, Some(augment), &mut rng, normalization);
                        batch.0.extend(pixels);
                        batch.1.extend(labels);
                    }
                    if sender.send(batch).is_err() {
                        break;
                    }
                }
            });
            let mut batches = receiver.into_iter();
            train(&mut batches)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn batches_made_ahead_are_the_batches_made_in_turn() {
        let split = Split {
            images: (0..10 * 64).map(|v| (v * 7 % 251) as u8).collect(),
            labels: (0..10).map(|i| i % 3).collect(),
            height: 8,
            width: 8,
            channels: 1,
        };
        let augment = AugmentConfig::default_for(8, 1);
        let normalization = Normalization {
            mean: vec![0.5],
            std: vec![0.25],
        };
        let order: Vec<usize> = vec![3, 1, 4, 0, 5, 9, 2, 6, 8, 7];
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        let in_turn: Vec<_> = order
            .chunks_exact(3)
            .take(3)
            .map(|indices| make_batch(&split, indices, Some(&augment), &mut rng, &normalization))
            .collect();
        let ahead: Vec<_> = EpochBatches {
            split: &split,
            order: order.clone(),
            batch_size: 3,
            steps: 3,
            augment: &augment,
            normalization: &normalization,
            views: 1,
        }
        .run(ChaCha8Rng::seed_from_u64(11), |batches| batches.collect());
        assert_eq!(ahead, in_turn);
        assert!(!augment.is_identity(), "the generator is drawn from");
        // Stopping after one batch ends the worker too.
        let first = EpochBatches {
            split: &split,
            order,
            batch_size: 3,
            steps: 3,
            augment: &augment,
            normalization: &normalization,
            views: 1,
        }
        .run(ChaCha8Rng::seed_from_u64(11), |batches| batches.next());
        assert_eq!(first.as_ref(), in_turn.first());
    }
}
