//! Running a trained model over a split: class probabilities, loss and the metrics reviewers
//! ask for.

use burn::module::Module;
use burn::tensor::{Device, Tensor, TensorData, activation::softmax};

use super::TrainError;
use crate::data::{Normalization, Split, make_batch};
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
/// row-major `N x classes`.
pub fn predict_probabilities(
    model: &ResNet,
    split: &Split,
    normalization: &Normalization,
    batch_size: usize,
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
        let logits = model.try_forward(images)?;
        let batch_probabilities = softmax(logits, 1).into_data();
        probabilities.extend(
            batch_probabilities
                .try_to_vec::<f32>()
                .expect("softmax of float logits is f32"),
        );
    }
    Ok(probabilities)
}

/// Metrics and loss of `model` on `split`.
pub fn evaluate_split(
    model: &ResNet,
    split: &Split,
    normalization: &Normalization,
    num_classes: usize,
    batch_size: usize,
    device: &Device,
) -> Result<SplitEvaluation, TrainError> {
    let probabilities = predict_probabilities(model, split, normalization, batch_size, device)?;
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
