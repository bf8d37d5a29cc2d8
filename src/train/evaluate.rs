//! Running a trained model over a split: class probabilities, loss and the metrics reviewers
//! ask for.

use burn::module::Module;
use burn::tensor::{Device, Tensor, TensorData, activation::softmax};

use super::TrainError;
use crate::data::{Normalization, Split, TestTimeAugmentation, make_batch};
use crate::metrics::{ClassificationReport, evaluate};
use crate::models::ResNet;
use crate::runfiles::{RunDir, RunInfo};

/// A split's metrics and mean cross-entropy.
#[derive(Debug, Clone)]
pub struct SplitEvaluation {
    /// The metrics.
    pub report: ClassificationReport,
    /// Mean cross-entropy loss.
    pub loss: f64,
    /// Softmax probabilities, row-major `N x classes`.
    pub probabilities: Vec<f32>,
}

/// Softmax probabilities of `model` (in inference mode) for every image of `split`,
/// row-major `N x classes`: with test-time augmentation, the mean over the image's views.
pub fn predict_probabilities(
    model: &ResNet,
    split: &Split,
    normalization: &Normalization,
    batch_size: usize,
    tta: TestTimeAugmentation,
    device: &Device,
) -> Result<Vec<f32>, TrainError> {
    let model = model.valid();
    let indices: Vec<usize> = (0..split.len()).collect();
    let mut probabilities = Vec::new();
    // Inference draws no randomness; the generator only satisfies make_batch's signature.
    let mut unused_rng = <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(0);
    for chunk in indices.chunks(batch_size.max(1)) {
        let (pixels, _) = make_batch(split, chunk, None, &mut unused_rng, normalization);
        let images = Tensor::<4>::from_data(
            TensorData::new(
                pixels,
                [chunk.len(), split.channels, split.height, split.width],
            ),
            device,
        );
        let views = tta.views(images);
        let count = views.len();
        let mut sum: Option<Tensor<2>> = None;
        for view in views {
            let view_probabilities = softmax(model.try_forward(view)?, 1);
            sum = Some(match sum {
                Some(sum) => sum + view_probabilities,
                None => view_probabilities,
            });
        }
        let sum = sum.expect("every setting has at least one view");
        let batch_probabilities = (sum / count as f32).into_data();
        probabilities.extend(
            batch_probabilities
                .try_to_vec::<f32>()
                .expect("softmax of float logits is f32"),
        );
    }
    Ok(probabilities)
}

/// Metrics and loss of `model` on `split`, its probabilities averaged over the views `tta`
/// names.
pub fn evaluate_split(
    model: &ResNet,
    split: &Split,
    normalization: &Normalization,
    num_classes: usize,
    batch_size: usize,
    tta: TestTimeAugmentation,
    device: &Device,
) -> Result<SplitEvaluation, TrainError> {
    let probabilities =
        predict_probabilities(model, split, normalization, batch_size, tta, device)?;
    let report = evaluate(&probabilities, num_classes, &split.labels)?;
    let loss = split
        .labels
        .iter()
        .enumerate()
        .map(|(i, &label)| -(probabilities[i * num_classes + label].max(1e-12) as f64).ln())
        .sum::<f64>()
        / split.len().max(1) as f64;
    Ok(SplitEvaluation {
        report,
        loss,
        probabilities,
    })
}

/// Rebuild a run's model on `device` and load its `best` (or `latest`) weights.
pub fn load_trained_model(
    run: &RunDir,
    pointer: &str,
    device: &Device,
) -> Result<(ResNet, RunInfo), TrainError> {
    let info = run.read_run_info()?;
    let model = info.model.init(device)?;
    let model = run.load_model(model, pointer)?;
    Ok((model, info))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attention::{AttentionConfig, AttentionKind};
    use crate::data::augment::flip_horizontal;
    use crate::models::{Backbone, ResNetConfig};

    const SIZE: usize = 8;

    fn model(device: &Device) -> ResNet {
        device.seed(3);
        ResNetConfig::new(
            Backbone::ResNet20,
            AttentionConfig::new(AttentionKind::Ppcr),
            3,
        )
        .with_input_size(SIZE)
        .with_in_channels(1)
        .init(device)
        .unwrap()
    }

    fn split(images: Vec<Vec<u8>>) -> Split {
        Split {
            labels: vec![0; images.len()],
            images: images.concat(),
            height: SIZE,
            width: SIZE,
            channels: 1,
        }
    }

    fn probabilities(model: &ResNet, split: &Split, tta: TestTimeAugmentation) -> Vec<f32> {
        let device = Device::flex();
        let normalization = Normalization::identity(1);
        predict_probabilities(model, split, &normalization, 2, tta, &device).unwrap()
    }

    #[test]
    fn a_flip_prediction_is_the_mean_over_the_image_and_its_mirror_image() {
        let device = Device::flex();
        let model = model(&device);
        let images: Vec<Vec<u8>> = (0..3u8)
            .map(|i| {
                (0..SIZE * SIZE)
                    .map(|p| (p as u8 * 7 + i * 50) % 251)
                    .collect()
            })
            .collect();
        let shape = split(images.clone()).shape();
        let mirrored: Vec<Vec<u8>> = images
            .iter()
            .map(|image| flip_horizontal(image, shape))
            .collect();
        let plain = probabilities(&model, &split(images.clone()), TestTimeAugmentation::None);
        let of_mirror = probabilities(&model, &split(mirrored), TestTimeAugmentation::None);
        let averaged = probabilities(&model, &split(images), TestTimeAugmentation::Hflip);
        let mut largest_change = 0.0f32;
        for ((p, m), a) in plain.iter().zip(&of_mirror).zip(&averaged) {
            assert!(
                (a - (p + m) / 2.0).abs() < 1e-6,
                "{a} is not the mean of {p} and {m}"
            );
            largest_change = largest_change.max((p - m).abs());
        }
        // The mirror image must change the model's answer, or the mean shows nothing.
        assert!(largest_change > 1e-3, "{largest_change}");
    }

    #[test]
    fn a_mirror_symmetric_image_gets_the_plain_prediction() {
        let device = Device::flex();
        let model = model(&device);
        // Columns c and 7 - c are equal in every row.
        let image: Vec<u8> = (0..SIZE * SIZE)
            .map(|p| {
                let (row, column) = (p / SIZE, p % SIZE);
                (row * 30 + column.min(SIZE - 1 - column) * 11) as u8
            })
            .collect();
        let plain = probabilities(
            &model,
            &split(vec![image.clone()]),
            TestTimeAugmentation::None,
        );
        let averaged = probabilities(
            &model,
            &split(vec![image.clone()]),
            TestTimeAugmentation::Hflip,
        );
        for (p, a) in plain.iter().zip(&averaged) {
            assert!((p - a).abs() < 1e-6, "{p} against {a}");
        }
        let sum: f32 = probabilities(&model, &split(vec![image]), TestTimeAugmentation::Flips)
            .iter()
            .sum();
        assert!(
            (sum - 1.0).abs() < 1e-5,
            "the four views' mean sums to {sum}"
        );
    }
}
