//! Turning images of a [`Split`] into normalised, channel-first f32 batches.
//!
//! Pixel values are scaled to [0, 1] and then standardised per channel, `(x - mean) / std`,
//! with mean and std measured on the training split (as torchvision's `ToTensor` + `Normalize`
//! and MONAI's `NormalizeIntensity(channel_wise=True)` do with dataset statistics).

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::augment::AugmentConfig;
use super::dataset::{ImageShape, Split};

/// Below this a channel is treated as constant and divided by 1 instead, so a blank channel
/// does not blow up to infinity.
const MIN_STD: f32 = 1e-6;

/// Per-channel mean and standard deviation of pixel values scaled to [0, 1].
///
/// Saved next to a trained model so prediction normalises exactly as training did.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Normalization {
    /// Mean of each channel.
    pub mean: Vec<f32>,
    /// Standard deviation of each channel (population, i.e. divided by N).
    pub std: Vec<f32>,
}

impl Normalization {
    /// ImageNet's RGB mean and standard deviation (on the 0-1 scale), with which torchvision's
    /// pretrained networks were trained.
    pub fn imagenet() -> Self {
        Normalization {
            mean: vec![0.485, 0.456, 0.406],
            std: vec![0.229, 0.224, 0.225],
        }
    }

    /// Measures mean and standard deviation per channel over every pixel of `split`.
    ///
    /// Sums are accumulated exactly in integers, so the result does not depend on image order.
    /// An empty split gives mean 0 and std 1; a constant channel gets std 1.
    pub fn from_split(split: &Split) -> Self {
        let channels = split.channels.max(1);
        let (sums, square_sums) = split
            .images
            .par_chunks(channels * 4096)
            .map(|chunk| {
                let mut sums = vec![0u64; channels];
                let mut square_sums = vec![0u64; channels];
                for pixel in chunk.chunks_exact(channels) {
                    for (channel, &value) in pixel.iter().enumerate() {
                        sums[channel] += u64::from(value);
                        square_sums[channel] += u64::from(value) * u64::from(value);
                    }
                }
                (sums, square_sums)
            })
            .reduce(
                || (vec![0u64; channels], vec![0u64; channels]),
                |(mut sums, mut squares), (more_sums, more_squares)| {
                    for channel in 0..channels {
                        sums[channel] += more_sums[channel];
                        squares[channel] += more_squares[channel];
                    }
                    (sums, squares)
                },
            );
        let count = (split.images.len() / channels) as f64;
        if count == 0.0 {
            return Self::identity(channels);
        }
        let mut mean = Vec::with_capacity(channels);
        let mut std = Vec::with_capacity(channels);
        for channel in 0..channels {
            let channel_mean = sums[channel] as f64 / count / 255.0;
            let mean_square = square_sums[channel] as f64 / count / (255.0 * 255.0);
            let variance = (mean_square - channel_mean * channel_mean).max(0.0);
            let channel_std = variance.sqrt() as f32;
            mean.push(channel_mean as f32);
            std.push(if channel_std < MIN_STD {
                1.0
            } else {
                channel_std
            });
        }
        Self { mean, std }
    }

    /// Mean 0 and std 1 for every channel: only the scaling to [0, 1].
    pub fn identity(channels: usize) -> Self {
        Self {
            mean: vec![0.0; channels],
            std: vec![1.0; channels],
        }
    }

    /// Number of channels this normalisation covers.
    pub fn channels(&self) -> usize {
        self.mean.len()
    }

    /// Normalises one H x W x C u8 image into a C x H x W f32 tensor.
    ///
    /// # Panics
    /// If the image, its shape and the channel count disagree.
    pub fn normalize_image(&self, image: &[u8], shape: ImageShape) -> Vec<f32> {
        let mut out = vec![0.0; shape.num_values()];
        self.normalize_into(image, shape, &mut out);
        out
    }

    fn normalize_into(&self, image: &[u8], shape: ImageShape, out: &mut [f32]) {
        assert_eq!(
            image.len(),
            shape.num_values(),
            "image does not match its shape"
        );
        assert_eq!(
            self.channels(),
            shape.channels,
            "normalisation has the wrong channel count"
        );
        let plane = shape.height * shape.width;
        for channel in 0..shape.channels {
            // Fold scaling and standardisation into one multiply-add per value.
            let scale = 1.0 / (255.0 * self.std[channel]);
            let offset = -self.mean[channel] / self.std[channel];
            let out_plane = &mut out[channel * plane..(channel + 1) * plane];
            for (index, value) in out_plane.iter_mut().enumerate() {
                *value = f32::from(image[index * shape.channels + channel]) * scale + offset;
            }
        }
    }
}

/// Builds one batch: the images at `indices`, augmented when `augment` is given, normalised and
/// laid out N x C x H x W, plus their labels.
///
/// Images are processed in parallel; each draws from its own generator seeded from `rng`
/// before any work starts (one `u64` per image, only when augmenting), so the batch depends on
/// `rng`'s state alone, never on thread timing.
///
/// # Panics
/// If an index is out of range or `norm` has the wrong number of channels.
pub fn make_batch(
    split: &Split,
    indices: &[usize],
    augment: Option<&AugmentConfig>,
    rng: &mut ChaCha8Rng,
    norm: &Normalization,
) -> (Vec<f32>, Vec<usize>) {
    let shape = split.shape();
    let image_len = shape.num_values();
    assert_eq!(
        norm.channels(),
        shape.channels,
        "normalisation has the wrong channel count"
    );
    let augment = augment.filter(|config| !config.is_identity());
    let seeds: Vec<u64> = match augment {
        Some(_) => indices.iter().map(|_| rng.random()).collect(),
        None => Vec::new(),
    };
    let mut batch = vec![0.0f32; indices.len() * image_len];
    batch
        .par_chunks_mut(image_len.max(1))
        .zip(indices.par_iter())
        .enumerate()
        .for_each(|(position, (out, &index))| {
            let image = split.image(index);
            match augment {
                Some(config) => {
                    let mut image_rng = ChaCha8Rng::seed_from_u64(seeds[position]);
                    let augmented = config.apply(image, shape, &mut image_rng);
                    norm.normalize_into(&augmented, shape, out);
                }
                None => norm.normalize_into(image, shape, out),
            }
        });
    let labels = indices.iter().map(|&index| split.labels[index]).collect();
    (batch, labels)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::augment::RandomCrop;

    /// Two 1x2 RGB images: pixel values chosen so statistics are easy by hand.
    fn tiny_split() -> Split {
        Split {
            // image 0: (0, 51, 255), (255, 51, 255); image 1: (0, 102, 255), (255, 102, 255)
            images: vec![0, 51, 255, 255, 51, 255, 0, 102, 255, 255, 102, 255],
            labels: vec![3, 1],
            height: 1,
            width: 2,
            channels: 3,
        }
    }

    #[test]
    fn normalization_statistics_match_hand_computation() {
        let norm = Normalization::from_split(&tiny_split());
        // Red: 0,1,0,1 -> mean 0.5, std 0.5.
        assert!((norm.mean[0] - 0.5).abs() < 1e-6 && (norm.std[0] - 0.5).abs() < 1e-6);
        // Green: 0.2,0.2,0.4,0.4 -> mean 0.3, std 0.1.
        assert!((norm.mean[1] - 0.3).abs() < 1e-6, "{:?}", norm.mean);
        assert!((norm.std[1] - 0.1).abs() < 1e-6, "{:?}", norm.std);
        // Blue is constant 1.0: std falls back to 1.
        assert!((norm.mean[2] - 1.0).abs() < 1e-6 && norm.std[2] == 1.0);
        let empty = Split::empty(ImageShape::new(2, 2, 1));
        assert_eq!(
            Normalization::from_split(&empty),
            Normalization::identity(1)
        );
    }

    #[test]
    fn make_batch_lays_out_nchw_and_normalises() {
        let split = tiny_split();
        let norm = Normalization {
            mean: vec![0.0, 0.2, 1.0],
            std: vec![1.0, 0.1, 0.5],
        };
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        let (batch, labels) = make_batch(&split, &[1, 0], None, &mut rng, &norm);
        assert_eq!(labels, vec![1, 3]);
        // Per image: the R plane, then G, then B, each 1x2.
        let image_1 = [0.0, 1.0, 2.0, 2.0, 0.0, 0.0];
        let image_0 = [0.0, 1.0, 0.0, 0.0, 0.0, 0.0];
        let expected = [image_1, image_0].concat();
        assert_eq!(batch.len(), expected.len());
        for (got, want) in batch.iter().zip(expected) {
            assert!((got - want).abs() < 1e-5, "{batch:?}");
        }
        // No augmentation draws nothing from the generator.
        let mut fresh = ChaCha8Rng::seed_from_u64(0);
        assert_eq!(rng.random::<u64>(), fresh.random::<u64>());
    }

    #[test]
    fn augmented_batches_are_deterministic_for_a_seed() {
        let shape = ImageShape::new(8, 8, 3);
        let mut split = Split::empty(shape);
        for index in 0..6u8 {
            let image: Vec<u8> = (0..shape.num_values())
                .map(|i| (i as u8).wrapping_mul(index + 1))
                .collect();
            split.push(&image, usize::from(index % 2));
        }
        let norm = Normalization::from_split(&split);
        let config = AugmentConfig {
            random_crop: Some(RandomCrop { padding: 2 }),
            horizontal_flip: 0.5,
            rotation_degrees: 20.0,
            ..Default::default()
        };
        let indices = [5, 0, 3, 3, 1];
        let run = |seed| {
            make_batch(
                &split,
                &indices,
                Some(&config),
                &mut ChaCha8Rng::seed_from_u64(seed),
                &norm,
            )
        };
        let (first, labels) = run(42);
        assert_eq!(first.len(), 5 * 3 * 8 * 8);
        assert_eq!(labels, vec![1, 0, 1, 1, 1]);
        assert_eq!(run(42).0, first);
        assert_ne!(run(43).0, first);
        let (plain, _) = make_batch(
            &split,
            &indices,
            None,
            &mut ChaCha8Rng::seed_from_u64(42),
            &norm,
        );
        assert_ne!(plain, first);
    }

    #[test]
    fn normalize_image_matches_the_batch_path() {
        let split = tiny_split();
        let norm = Normalization::from_split(&split);
        let single = norm.normalize_image(split.image(1), split.shape());
        let (batch, _) = make_batch(&split, &[1], None, &mut ChaCha8Rng::seed_from_u64(0), &norm);
        assert_eq!(single, batch);
    }
}
