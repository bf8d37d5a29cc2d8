//! In-memory data set types shared by every loader: a [`Split`] of same-sized u8 images with
//! class indices, a [`Dataset`] of train/val/test splits, and the [`LoadOptions`] that steer
//! loading.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::error::DataError;

/// Height, width and channel count of one image stored height x width x channels, interleaved.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ImageShape {
    /// Rows.
    pub height: usize,
    /// Columns.
    pub width: usize,
    /// Values per pixel (1 = grey, 3 = RGB).
    pub channels: usize,
}

impl ImageShape {
    /// Creates a shape.
    pub fn new(height: usize, width: usize, channels: usize) -> Self {
        Self {
            height,
            width,
            channels,
        }
    }

    /// Number of u8 values in one image.
    pub fn num_values(&self) -> usize {
        self.height * self.width * self.channels
    }
}

/// One split (train, val or test) of a data set.
///
/// All images share one size; they are stored back to back as N x H x W x C interleaved u8,
/// the layout decoders produce, so loading needs no transposition and a split of 17k 32x32 RGB
/// images is one 52 MB allocation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Split {
    /// Pixel values, N x H x W x C.
    pub images: Vec<u8>,
    /// Class index of each image, `labels.len() == N`.
    pub labels: Vec<usize>,
    /// Image height in pixels.
    pub height: usize,
    /// Image width in pixels.
    pub width: usize,
    /// Channels per pixel (1 or 3 after loading).
    pub channels: usize,
}

impl Split {
    /// An empty split of images of the given shape.
    pub fn empty(shape: ImageShape) -> Self {
        Self {
            images: Vec::new(),
            labels: Vec::new(),
            height: shape.height,
            width: shape.width,
            channels: shape.channels,
        }
    }

    /// Number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether the split holds no images.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// The shape of every image in the split.
    pub fn shape(&self) -> ImageShape {
        ImageShape::new(self.height, self.width, self.channels)
    }

    /// The pixels of image `index`, H x W x C interleaved.
    ///
    /// # Panics
    /// If `index >= self.len()`.
    pub fn image(&self, index: usize) -> &[u8] {
        let image_len = self.shape().num_values();
        &self.images[index * image_len..(index + 1) * image_len]
    }

    /// Number of images of each class, for `num_classes` classes.
    ///
    /// Labels at or above `num_classes` are not counted.
    pub fn class_counts(&self, num_classes: usize) -> Vec<usize> {
        let mut counts = vec![0; num_classes];
        for &label in &self.labels {
            if let Some(count) = counts.get_mut(label) {
                *count += 1;
            }
        }
        counts
    }

    /// A new split holding the images at `indices`, in that order.
    ///
    /// # Panics
    /// If an index is out of range.
    pub fn subset(&self, indices: &[usize]) -> Split {
        let mut images = Vec::with_capacity(indices.len() * self.shape().num_values());
        let mut labels = Vec::with_capacity(indices.len());
        for &index in indices {
            images.extend_from_slice(self.image(index));
            labels.push(self.labels[index]);
        }
        Split {
            images,
            labels,
            height: self.height,
            width: self.width,
            channels: self.channels,
        }
    }

    /// Appends one image; the caller guarantees it has this split's shape.
    pub(crate) fn push(&mut self, image: &[u8], label: usize) {
        debug_assert_eq!(image.len(), self.shape().num_values());
        self.images.extend_from_slice(image);
        self.labels.push(label);
    }
}

/// A labelled image data set with its three splits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dataset {
    /// Short name, e.g. "breastmnist" or the image folder's name.
    pub name: String,
    /// Where it was loaded from (for the built-in set, `builtin:breastmnist.npz`).
    pub source: PathBuf,
    /// Class names; label `i` means `class_names[i]`.
    pub class_names: Vec<String>,
    /// Training images.
    pub train: Split,
    /// Validation images (model selection, early stopping).
    pub val: Split,
    /// Held-out test images.
    pub test: Split,
    /// Files passed over under [`BadFilePolicy::Skip`]; empty otherwise.
    pub skipped_files: Vec<PathBuf>,
}

impl Dataset {
    /// Number of classes.
    pub fn num_classes(&self) -> usize {
        self.class_names.len()
    }

    /// The shape shared by all images of all splits.
    pub fn image_shape(&self) -> ImageShape {
        self.train.shape()
    }

    /// One-line description for logs, e.g.
    /// `breastmnist: 2 classes, 28x28x1, train 546 / val 78 / test 156`.
    pub fn summary(&self) -> String {
        let shape = self.image_shape();
        let mut text = format!(
            "{}: {} classes, {}x{}x{}, train {} / val {} / test {}",
            self.name,
            self.num_classes(),
            shape.height,
            shape.width,
            shape.channels,
            self.train.len(),
            self.val.len(),
            self.test.len()
        );
        if !self.skipped_files.is_empty() {
            text.push_str(&format!(
                ", {} unreadable files skipped",
                self.skipped_files.len()
            ));
        }
        text
    }
}

/// What to do with an image file that is missing, corrupt or not an image.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BadFilePolicy {
    /// Print a warning naming the file on stderr, record it in [`Dataset::skipped_files`], go on.
    Skip,
    /// Stop with an error naming the file. The default, because a silently smaller data set
    /// makes results hard to reproduce.
    #[default]
    Fail,
}

/// How to load a data set.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LoadOptions {
    /// Resize every image to `size x size` (bilinear, antialiased when shrinking; the aspect
    /// ratio is not kept). `None` keeps the native size, and then all images must share it.
    pub size: Option<usize>,
    /// Convert every image to 1 (grey, Rec. 709 luma) or 3 (RGB, grey replicated) channels.
    /// `None` keeps what is stored; alpha channels are always dropped.
    pub channels: Option<usize>,
    /// Seed of every split this loader draws (flat image folders, CSV lists without a split
    /// column, validation carved out of a training set).
    pub split_seed: u64,
    /// Fraction of each class put into validation when the loader has to draw the split.
    pub val_fraction: f64,
    /// Fraction of each class put into test when the loader has to draw the split.
    pub test_fraction: f64,
    /// What to do with unreadable image files.
    pub on_bad_file: BadFilePolicy,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            size: None,
            channels: None,
            split_seed: 0,
            val_fraction: 0.1,
            test_fraction: 0.2,
            on_bad_file: BadFilePolicy::default(),
        }
    }
}

/// Largest accepted `size`; beyond this a single RGB image alone is hundreds of megabytes.
pub const MAX_IMAGE_SIZE: usize = 8192;

impl LoadOptions {
    /// Checks every field is in range; `load` calls this first.
    pub fn validate(&self) -> Result<(), DataError> {
        let invalid = |reason: String| Err(DataError::InvalidOptions { reason });
        if let Some(size) = self.size
            && !(1..=MAX_IMAGE_SIZE).contains(&size)
        {
            return invalid(format!(
                "size {size} must be between 1 and {MAX_IMAGE_SIZE}"
            ));
        }
        if let Some(channels) = self.channels
            && channels != 1
            && channels != 3
        {
            return invalid(format!("channels {channels} must be 1 (grey) or 3 (RGB)"));
        }
        for (name, value) in [
            ("val_fraction", self.val_fraction),
            ("test_fraction", self.test_fraction),
        ] {
            if !(0.0..1.0).contains(&value) {
                return invalid(format!("{name} {value} must be in [0, 1)"));
            }
        }
        if self.val_fraction + self.test_fraction >= 1.0 {
            return invalid(format!(
                "val_fraction {} + test_fraction {} must be below 1 to leave images for training",
                self.val_fraction, self.test_fraction
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn two_image_split() -> Split {
        Split {
            images: vec![1, 2, 3, 4, 5, 6, 7, 8],
            labels: vec![1, 0],
            height: 2,
            width: 2,
            channels: 1,
        }
    }

    #[test]
    fn split_accessors_index_images_by_shape() {
        let split = two_image_split();
        assert_eq!(split.len(), 2);
        assert_eq!(split.image(1), &[5, 6, 7, 8]);
        assert_eq!(split.class_counts(2), vec![1, 1]);
        let reversed = split.subset(&[1, 0]);
        assert_eq!(reversed.images, vec![5, 6, 7, 8, 1, 2, 3, 4]);
        assert_eq!(reversed.labels, vec![0, 1]);
    }

    #[test]
    fn load_options_validation_rejects_out_of_range_values() {
        assert!(LoadOptions::default().validate().is_ok());
        let bad = [
            LoadOptions {
                size: Some(0),
                ..Default::default()
            },
            LoadOptions {
                channels: Some(2),
                ..Default::default()
            },
            LoadOptions {
                val_fraction: -0.1,
                ..Default::default()
            },
            LoadOptions {
                val_fraction: 0.5,
                test_fraction: 0.5,
                ..Default::default()
            },
            LoadOptions {
                test_fraction: f64::NAN,
                ..Default::default()
            },
        ];
        for options in bad {
            let error = options.validate().unwrap_err();
            assert!(matches!(error, DataError::InvalidOptions { .. }), "{error}");
        }
    }

    #[test]
    fn load_options_round_trip_through_json() {
        let options = LoadOptions {
            size: Some(64),
            on_bad_file: BadFilePolicy::Skip,
            ..Default::default()
        };
        let json = serde_json::to_string(&options).unwrap();
        assert!(json.contains("\"skip\""), "{json}");
        let back: LoadOptions = serde_json::from_str(&json).unwrap();
        assert_eq!(back, options);
        let partial: LoadOptions = serde_json::from_str("{\"size\": 32}").unwrap();
        assert_eq!(partial.val_fraction, 0.1);
    }
}
