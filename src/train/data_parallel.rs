//! One training step's gradients with the batch split across several devices: data parallelism
//! as burn's own multi-device training strategy does it (burn-train's `MultiDevice` with
//! `OptimMainDevice`), from the same burn pieces. The model is forked to every device, each
//! device computes the gradients of its shard of the batch on its own thread, and the gradients
//! are moved to the first device and summed there with burn's `GradientsAccumulator`; the
//! optimizer then steps once, on the first device.
//!
//! Each shard's mean loss is weighted by its share of the batch, so the summed gradient is the
//! gradient of the whole batch's mean loss. BatchNorm normalises each shard with its own
//! statistics, as in burn's strategy (and PyTorch's DistributedDataParallel without SyncBN), so
//! a step on several devices is close to, not equal to, the same step on one.
//!
//! BatchNorm's running statistics live in burn's `RunningState`, which every fork shares: each
//! thread files its update under its thread id, and the updates are averaged when the state is
//! next synchronised. burn-train's workers are long-lived threads, so each step's updates
//! replace the last ones there; these shard threads are new every step, so the model is
//! synchronised after every step (`Module::train`), which makes the running statistics move as
//! on one device with the mean of the shards' batch statistics.

use burn::nn::loss::CrossEntropyLoss;
use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::prelude::Module;
use burn::tensor::{Device, Int, Tensor, TensorData};

use super::TrainError;
use crate::models::ResNet;

/// What one step computed: the model (its running statistics updated), the batch's mean loss,
/// its logits (row-major, samples in batch order) and the parameter gradients on the first
/// device.
pub(crate) struct BatchGradients {
    /// The model the step ran, with BatchNorm's running statistics of every shard merged.
    pub model: ResNet,
    /// Mean loss over the batch.
    pub loss: f32,
    /// `[batch, classes]` logits.
    pub logits: Vec<f32>,
    /// Gradients of the mean loss, on `devices[0]`.
    pub grads: GradientsParams,
}

/// The gradients of `model`'s mean loss over a batch of images (`pixels`, `[batch, C, H, W]`
/// with `image_dims = [C, H, W]`) and `labels`, split into contiguous shards over `devices`
/// (autodiff devices, `model` on the first; `loss_fns[i]` built on `devices[i]`). A batch
/// smaller than the device list uses the first `batch` devices.
pub(crate) fn batch_gradients(
    model: ResNet,
    devices: &[Device],
    loss_fns: &[CrossEntropyLoss],
    pixels: &[f32],
    labels: &[usize],
    image_dims: [usize; 3],
) -> Result<BatchGradients, TrainError> {
    let batch = labels.len();
    let sample_len: usize = image_dims.iter().product();
    let shards = shard_ranges(batch, devices.len());
    if shards.len() == 1 {
        let (loss, logits, grads) = shard_gradients(
            &model,
            &devices[0],
            &loss_fns[0],
            pixels,
            labels,
            image_dims,
            None,
        )?;
        let grads = GradientsParams::from_grads(grads, &model);
        return Ok(BatchGradients {
            model,
            loss,
            logits,
            grads,
        });
    }
    let main = &devices[0];
    let model_ref = &model;
    let results = std::thread::scope(|scope| {
        let workers: Vec<_> = shards
            .iter()
            .enumerate()
            .map(|(index, range)| {
                let (device, loss_fn) = (&devices[index], &loss_fns[index]);
                let shard_pixels = &pixels[range.start * sample_len..range.end * sample_len];
                let shard_labels = &labels[range.clone()];
                let share = range.len() as f32 / batch as f32;
                scope.spawn(move || {
                    let shard_model = model_ref.clone().fork(device);
                    let (loss, logits, grads) = shard_gradients(
                        &shard_model,
                        device,
                        loss_fn,
                        shard_pixels,
                        shard_labels,
                        image_dims,
                        Some(share),
                    )?;
                    let grads = GradientsParams::from_grads(grads, &shard_model)
                        .to_device(main, &shard_model);
                    Ok::<_, TrainError>((loss, logits, grads))
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|worker| {
                worker
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            })
            .collect::<Result<Vec<_>, _>>()
    })?;
    // Summed in shard order, so the result does not depend on which device finished first.
    let mut accumulator = GradientsAccumulator::new();
    let (mut loss, mut logits) = (0.0, Vec::with_capacity(batch));
    for (shard_loss, shard_logits, grads) in results {
        loss += shard_loss;
        logits.extend(shard_logits);
        accumulator.accumulate(&model, grads);
    }
    Ok(BatchGradients {
        model: model.train(),
        loss,
        logits,
        grads: accumulator.grads(),
    })
}

/// Contiguous sample ranges of nearly equal size, one per device, for at most `batch` devices.
fn shard_ranges(batch: usize, devices: usize) -> Vec<std::ops::Range<usize>> {
    let shards = devices.clamp(1, batch.max(1));
    (0..shards)
        .map(|shard| shard * batch / shards..(shard + 1) * batch / shards)
        .collect()
}

/// Forward and backward of one shard on `device`: its loss (weighted by `share` when given),
/// logits and autodiff gradients.
fn shard_gradients(
    model: &ResNet,
    device: &Device,
    loss_fn: &CrossEntropyLoss,
    pixels: &[f32],
    labels: &[usize],
    [channels, height, width]: [usize; 3],
    share: Option<f32>,
) -> Result<(f32, Vec<f32>, burn::tensor::Gradients), TrainError> {
    let batch = labels.len();
    let images = Tensor::<4>::from_data(
        TensorData::new(pixels.to_vec(), [batch, channels, height, width]),
        device,
    );
    let targets = Tensor::<1, Int>::from_data(
        TensorData::new(
            labels.iter().map(|&l| l as i64).collect::<Vec<_>>(),
            [batch],
        ),
        device,
    );
    let logits = model.try_forward(images)?;
    let logit_values = logits
        .clone()
        .into_data()
        .try_to_vec::<f32>()
        .expect("float logits");
    let mut loss = loss_fn.forward(logits, targets);
    if let Some(share) = share {
        loss = loss.mul_scalar(share);
    }
    let loss_value: f32 = loss.clone().into_scalar();
    Ok((loss_value, logit_values, loss.backward()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attention::{AttentionConfig, AttentionKind};
    use crate::models::{Backbone, ResNetConfig};
    use burn::nn::loss::CrossEntropyLossConfig;

    #[test]
    fn shards_cover_the_batch_in_order_with_sizes_differing_by_at_most_one() {
        assert_eq!(shard_ranges(10, 3), vec![0..3, 3..6, 6..10]);
        assert_eq!(shard_ranges(2, 4), vec![0..1, 1..2]);
        assert_eq!(shard_ranges(5, 1), vec![0..5]);
    }

    /// A ResNet-20 + PPCR for 16x16 grey images and 3 classes, the same weights every call.
    fn small_model(device: &Device) -> ResNet {
        device.seed(3);
        ResNetConfig::new(
            Backbone::ResNet20,
            AttentionConfig::new(AttentionKind::Ppcr),
            3,
        )
        .with_in_channels(1)
        .with_input_size(16)
        .init(device)
        .unwrap()
    }

    #[test]
    fn running_statistics_move_with_the_mean_of_the_shards_updates() {
        let device = Device::flex().autodiff();
        let loss_fn = CrossEntropyLossConfig::new().init(&device);
        let pixels = crate::attention::testing::seeded_values(4 * 256, 5);
        let labels = vec![0, 1, 2, 1];
        let running_mean = |model: &ResNet| {
            let mean = model.stem.norm.running_mean.value();
            mean.into_data().try_to_vec::<f32>().unwrap()
        };
        let split = batch_gradients(
            small_model(&device),
            &[device.clone(), device.clone()],
            &[loss_fn.clone(), loss_fn.clone()],
            &pixels,
            &labels,
            [1, 16, 16],
        )
        .unwrap();
        // Each shard's update alone, from the same starting model (a fresh one each: clones
        // share their running state).
        let shard_means: Vec<Vec<f32>> = [0..2, 2..4]
            .into_iter()
            .map(|range| {
                let model = small_model(&device);
                let pixels = &pixels[range.start * 256..range.end * 256];
                shard_gradients(
                    &model,
                    &device,
                    &loss_fn,
                    pixels,
                    &labels[range],
                    [1, 16, 16],
                    None,
                )
                .unwrap();
                running_mean(&model.train())
            })
            .collect();
        let merged = running_mean(&split.model);
        let start = running_mean(&small_model(&device));
        assert!(
            merged.iter().zip(&start).any(|(m, s)| m != s),
            "the statistics moved"
        );
        for ((m, a), b) in merged.iter().zip(&shard_means[0]).zip(&shard_means[1]) {
            assert!(
                (m - (a + b) / 2.0).abs() < 1e-6,
                "{m} vs mean of {a} and {b}"
            );
        }
    }

    #[test]
    fn shards_on_two_devices_give_the_sum_of_their_share_weighted_gradients() {
        let device = Device::flex().autodiff();
        let model = small_model(&device);
        let loss_fn = CrossEntropyLossConfig::new().init(&device);
        let dims = [1, 16, 16];
        let batch = 6;
        let pixels = crate::attention::testing::seeded_values(batch * 256, 11);
        let labels = vec![0, 1, 2, 2, 1, 0];
        // Two "devices" that are both the CPU: the threads, forks, moves and accumulation run as
        // they would on two GPUs.
        let devices = [device.clone(), device.clone()];
        let split = batch_gradients(
            model.clone(),
            &devices,
            &[loss_fn.clone(), loss_fn.clone()],
            &pixels,
            &labels,
            dims,
        )
        .unwrap();
        // The same shards one after the other on one device, each loss weighted by 1/2.
        let halves: Vec<_> = [0..3, 3..6]
            .into_iter()
            .map(|range| {
                shard_gradients(
                    &model,
                    &device,
                    &loss_fn,
                    &pixels[range.start * 256..range.end * 256],
                    &labels[range],
                    dims,
                    Some(0.5),
                )
                .unwrap()
            })
            .collect();
        let expected_loss: f32 = halves.iter().map(|(loss, _, _)| loss).sum();
        assert!((split.loss - expected_loss).abs() < 1e-6);
        let expected_logits: Vec<f32> = halves
            .iter()
            .flat_map(|(_, logits, _)| logits.clone())
            .collect();
        assert_eq!(split.logits, expected_logits);
        let mut checked = 0;
        let mut halves = halves
            .into_iter()
            .map(|(_, _, grads)| GradientsParams::from_grads(grads, &model));
        let (first, second) = (halves.next().unwrap(), halves.next().unwrap());
        let id = model.classifier.weight.id;
        let values = |grads: &GradientsParams| {
            let grad = grads.get::<2>(id).expect("the classifier has a gradient");
            grad.into_data().try_to_vec::<f32>().unwrap()
        };
        let (total, one, two) = (values(&split.grads), values(&first), values(&second));
        for ((t, a), b) in total.iter().zip(&one).zip(&two) {
            assert!(
                (t - (a + b)).abs() <= 1e-6 * (1.0 + t.abs()),
                "{t} vs {a} + {b}"
            );
            checked += 1;
        }
        assert!(checked > 0 && total.iter().any(|g| *g != 0.0));
    }
}
