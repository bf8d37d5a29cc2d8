//! Test-time augmentation: a prediction is the mean of the model's class probabilities over
//! flipped views of the image.
//!
//! A network trained with random flips sees each image and its mirror image as the same case,
//! but its two answers differ by the noise of one training run; averaging them is the cheapest
//! ensemble there is (Krizhevsky et al. 2012 averaged crops and their reflections; MONAI's
//! `TestTimeAugmentation` does the same with any invertible transform). Validation, testing,
//! `ppcr eval` and `ppcr predict` all take the views the run was trained with; an exported
//! network (`ppcr export`) is the network alone.

use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};

/// Which views of an image a prediction averages.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TestTimeAugmentation {
    /// The image alone. What a run made before this setting existed used.
    #[default]
    None,
    /// The image and its left-right mirror image.
    Hflip,
    /// The image, its left-right and upside-down mirror images, and both (for images with no
    /// up or down, such as cells under a microscope).
    Flips,
}

impl TestTimeAugmentation {
    /// The views of a batch `[B, C, H, W]` to average over, the batch itself first.
    pub fn views(self, images: Tensor<4>) -> Vec<Tensor<4>> {
        // Axes of a `[B, C, H, W]` batch: 2 runs top to bottom, 3 left to right.
        const ROWS: usize = 2;
        const COLUMNS: usize = 3;
        match self {
            TestTimeAugmentation::None => vec![images],
            TestTimeAugmentation::Hflip => vec![images.clone(), images.flip([COLUMNS])],
            TestTimeAugmentation::Flips => vec![
                images.clone(),
                images.clone().flip([COLUMNS]),
                images.clone().flip([ROWS]),
                images.flip([ROWS, COLUMNS]),
            ],
        }
    }

    /// The setting's name, as `--tta` and `config.toml` spell it.
    pub fn name(self) -> &'static str {
        match self {
            TestTimeAugmentation::None => "none",
            TestTimeAugmentation::Hflip => "hflip",
            TestTimeAugmentation::Flips => "flips",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Device, TensorData};

    fn values(tensor: Tensor<4>) -> Vec<f32> {
        tensor.into_data().try_to_vec::<f32>().unwrap()
    }

    #[test]
    fn the_views_are_the_image_and_its_mirror_images() {
        // One 2 x 3 image:  1 2 3
        //                   4 5 6
        let device = Device::flex();
        let image = Tensor::<4>::from_data(
            TensorData::new(vec![1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0], [1, 1, 2, 3]),
            &device,
        );
        let views_of = |tta: TestTimeAugmentation| -> Vec<Vec<f32>> {
            tta.views(image.clone()).into_iter().map(values).collect()
        };
        let original = vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        let mirrored = vec![3.0, 2.0, 1.0, 6.0, 5.0, 4.0];
        let upside_down = vec![4.0, 5.0, 6.0, 1.0, 2.0, 3.0];
        let both = vec![6.0, 5.0, 4.0, 3.0, 2.0, 1.0];
        assert_eq!(views_of(TestTimeAugmentation::None), vec![original.clone()]);
        assert_eq!(
            views_of(TestTimeAugmentation::Hflip),
            vec![original.clone(), mirrored.clone()]
        );
        assert_eq!(
            views_of(TestTimeAugmentation::Flips),
            vec![original, mirrored, upside_down, both]
        );
    }

    #[test]
    fn names_round_trip_through_the_config_spelling() {
        for tta in [
            TestTimeAugmentation::None,
            TestTimeAugmentation::Hflip,
            TestTimeAugmentation::Flips,
        ] {
            let spelled: TestTimeAugmentation =
                serde_json::from_value(serde_json::Value::String(tta.name().into())).unwrap();
            assert_eq!(spelled, tta);
        }
    }
}
