//! One training step's gradients with the batch split across several devices, run by burn's own
//! multi-device training step: burn-train's `MultiDevicesTrainStep`, the worker pool its
//! `Learner` uses for `ExecutionStrategy::MultiDevice`, with the `OptimMainDevice` reduction its
//! epoch loop applies. Each worker is a long-lived thread bound to one device; per step it forks
//! the model to its device and computes the gradients of its shard. The gradients are moved to
//! the first device and summed there with burn's `GradientsAccumulator`; the optimizer then
//! steps once, on the first device.
//!
//! Two choices differ from burn's `Learner`, which hands each device a whole batch of its own:
//! here one batch of the configured size is split into contiguous shards, and each shard's mean
//! loss is weighted by its share of the batch, so the summed gradient is the gradient of the
//! whole batch's mean loss and `batch_size` means the same on any number of devices. The shards
//! are summed in shard order (burn's loop sums them as the workers finish), so a run does not
//! depend on which device finished first. BatchNorm normalises each shard with its own
//! statistics, as in burn's strategy (and PyTorch's DistributedDataParallel without SyncBN), so
//! a step on several devices is close to, not equal to, the same step on one.
//!
//! BatchNorm's running statistics live in burn's `RunningState`, which every fork shares: each
//! thread files its update under its thread id, and the updates are averaged when the state is
//! next synchronised. A worker's update of one step would replace its previous one, so the
//! model is synchronised after every step (`Module::train`), which makes the running statistics
//! move as on one device, with the mean of the shards' batch statistics.

use burn::data::dataloader::{DataLoaderIterator, Progress};
use burn::data::dataset::DatasetError;
use burn::nn::loss::CrossEntropyLoss;
use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::prelude::Module;
use burn::tensor::{Device, FloatDType, Int, Tensor, TensorData};
use burn_train::train::{MultiDeviceStepError, MultiDevicesTrainStep};
use burn_train::{InferenceStep, ItemLazy, TrainOutput, TrainStep};

use super::TrainError;
use crate::metrics::argmax;
use crate::models::ResNet;
use crate::models::autocast::with_convolutions_in;

/// What one step computed: the model (its running statistics updated), the batch's
/// [`StepStats`] and the parameter gradients on the first device.
pub(crate) struct BatchGradients {
    /// The model the step ran, with BatchNorm's running statistics of every shard merged.
    pub model: ResNet,
    /// The batch's summed loss and correct predictions, on the first device.
    pub stats: StepStats,
    /// Gradients of the mean loss, on the first device.
    pub grads: GradientsParams,
}

/// A batch's loss summed over its samples (mean loss x batch size), its count of correct
/// predictions and its contrastive loss (0 without), as one three-value tensor on the first
/// device, detached from the graph. It stays
/// on the device: the training loop adds the steps' values there and reads the running sums
/// back only when the progress display needs them, so a GPU is not stopped after every step.
#[derive(Clone)]
pub(crate) struct StepStats(pub Tensor<1>);

impl StepStats {
    /// Both values zero, on `device`.
    pub fn zeros(device: &Device) -> Self {
        Self(Tensor::zeros([3], device))
    }

    /// From values read on the host.
    fn from_host(loss_sum: f32, correct: usize, device: &Device) -> Self {
        Self(Tensor::from_floats([loss_sum, correct as f32, 0.0], device))
    }

    /// From the step's mean-loss tensor (of the whole batch), logits and targets, computed on
    /// their device.
    fn on_device(loss: Tensor<1>, logits: Tensor<2>, targets: Tensor<1, Int>) -> Self {
        let zero = Tensor::zeros([1], &loss.device());
        Self::with_contrastive(loss, zero, logits, targets)
    }

    /// As [`StepStats::on_device`], with the step's contrastive loss.
    fn with_contrastive(
        loss: Tensor<1>,
        contrastive: Tensor<1>,
        logits: Tensor<2>,
        targets: Tensor<1, Int>,
    ) -> Self {
        let batch = targets.dims()[0];
        let loss_sum = loss.detach().mul_scalar(batch as f32).reshape([1]);
        let correct = logits
            .detach()
            .argmax(1)
            .reshape([batch])
            .equal(targets)
            .float()
            .sum()
            .reshape([1]);
        Self(Tensor::cat(
            vec![loss_sum, correct, contrastive.detach().reshape([1])],
            0,
        ))
    }

    /// The sum of two steps' values.
    pub fn add(self, other: StepStats) -> Self {
        Self(self.0.add(other.0))
    }

    /// `(loss sum, correct predictions, contrastive loss summed over steps)`, read back to the
    /// host (a device synchronisation).
    pub fn read(&self) -> (f64, usize, f64) {
        let values = self
            .0
            .clone()
            .into_data()
            .try_to_vec::<f32>()
            .expect("float statistics");
        (
            values[0] as f64,
            values[1].round().max(0.0) as usize,
            values[2] as f64,
        )
    }
}

/// The devices a training run computes its gradients on (autodiff devices; the model lives on
/// the first), with the loss built on each and, for more than one, burn's worker pool.
pub(crate) struct DataParallel {
    devices: Vec<Device>,
    loss_fns: Vec<CrossEntropyLoss>,
    workers: Option<MultiDevicesTrainStep<ShardStep>>,
}

impl DataParallel {
    /// Compute on `devices` (at least one), `loss_fns[i]` built on `devices[i]`. One device
    /// starts no worker: its steps run on the calling thread, as plain single-device training.
    pub fn new(devices: Vec<Device>, loss_fns: Vec<CrossEntropyLoss>) -> Self {
        assert!(!devices.is_empty() && devices.len() == loss_fns.len());
        let workers = (devices.len() > 1).then(|| MultiDevicesTrainStep::new(&devices));
        Self {
            devices,
            loss_fns,
            workers,
        }
    }

    /// The gradients of `model`'s mean loss over a batch of images (`pixels`,
    /// `[batch, C, H, W]` with `image_dims = [C, H, W]`) and `labels`, split into contiguous
    /// shards over the devices. A batch smaller than the device list uses the first `batch`
    /// devices. On one device the convolutions may compute in half precision (`mixed`): the
    /// gradients are then those of the loss times `mixed.loss_scale`.
    pub fn batch_gradients(
        &self,
        model: ResNet,
        pixels: &[f32],
        labels: &[usize],
        image_dims: [usize; 3],
        mixed: MixedPrecision,
    ) -> Result<BatchGradients, TrainError> {
        let batch = labels.len();
        let shards = shard_ranges(batch, self.devices.len());
        assert!(
            mixed.dtype.is_none() || self.workers.is_none(),
            "mixed precision trains on one device"
        );
        let Some(workers) = self.workers.as_ref().filter(|_| shards.len() > 1) else {
            let step = ShardStep::new(model, self.loss_fns[0].clone());
            let shard = Shard::new(0, &self.devices[0], pixels, labels, image_dims, None);
            let (loss, logits, targets) =
                with_convolutions_in(mixed.dtype, || step.forward(&shard))?;
            let stats = StepStats::on_device(loss.clone(), logits, targets);
            let grads = GradientsParams::from_grads(mixed.scaled(loss).backward(), &step);
            return Ok(BatchGradients {
                model: step.model,
                stats,
                grads,
            });
        };
        let sample_len: usize = image_dims.iter().product();
        // One single-item loader per device: burn's step takes the next item of each, and a
        // device with no shard this step (a short batch) is left out.
        let mut loaders: Vec<Box<dyn DataLoaderIterator<Shard>>> = (0..self.devices.len())
            .map(|index| {
                let shard = shards.get(index).map(|range| {
                    Shard::new(
                        index,
                        &self.devices[index],
                        &pixels[range.start * sample_len..range.end * sample_len],
                        &labels[range.clone()],
                        image_dims,
                        Some(range.len() as f32 / batch as f32),
                    )
                });
                Box::new(OneShard(shard)) as Box<dyn DataLoaderIterator<Shard>>
            })
            .collect();
        let step = ShardStep::new(model, self.loss_fns[0].clone());
        let (mut outputs, _) = workers
            .step(&mut loaders, &step)
            .map_err(|error| worker_error(error, self.devices.len()))?;
        outputs.sort_by_key(|output| output.output.item.shard);
        let main = &self.devices[0];
        let mut accumulator = GradientsAccumulator::new();
        let (mut loss, mut logits) = (0.0, Vec::with_capacity(batch));
        for output in outputs {
            let TrainOutput { grads, item } = output.output;
            let item = item.result?;
            loss += item.loss;
            logits.extend(item.logits);
            accumulator.accumulate(&step, grads.to_device(main, &step));
        }
        let classes = logits.len() / batch.max(1);
        let correct = labels
            .iter()
            .enumerate()
            .filter(|(i, label)| argmax(&logits[i * classes..(i + 1) * classes]) == **label)
            .count();
        Ok(BatchGradients {
            model: step.model.train(),
            stats: StepStats::from_host(loss * batch as f32, correct, main),
            grads: accumulator.grads(),
        })
    }
}

impl DataParallel {
    /// The gradients of `model`'s cross-entropy over every view of a batch (`pixels`: each
    /// image's first views, then their second views; `labels` likewise) plus the supervised
    /// contrastive loss of the views' embeddings as `term` weighs it. On the first device only:
    /// the contrastive loss relates every view of the batch to every other.
    pub fn contrastive_gradients(
        &self,
        model: ResNet,
        pixels: &[f32],
        labels: &[usize],
        image_dims: [usize; 3],
        term: ContrastiveTerm,
        mixed: MixedPrecision,
    ) -> Result<BatchGradients, TrainError> {
        let device = &self.devices[0];
        let shard = Shard::new(0, device, pixels, labels, image_dims, None);
        let (images, targets) = shard.tensors();
        let (logits, embeddings) =
            with_convolutions_in(mixed.dtype, || model.forward_with_projection(images))?;
        let embeddings = embeddings.ok_or_else(|| {
            TrainError::Config("contrastive training needs the model's projection head".into())
        })?;
        let cross_entropy = self.loss_fns[0].forward(logits.clone(), targets.clone());
        let contrastive =
            super::supcon_loss(embeddings, labels, term.temperature, term.temperature);
        let total = cross_entropy.clone() + contrastive.clone().mul_scalar(term.weight);
        let stats = StepStats::with_contrastive(cross_entropy, contrastive, logits, targets);
        let grads = GradientsParams::from_grads(mixed.scaled(total).backward(), &model);
        Ok(BatchGradients {
            model,
            stats,
            grads,
        })
    }
}

/// The supervised contrastive term of a step: `weight` times the loss at `temperature` (both
/// its temperature and its base temperature).
#[derive(Debug, Clone, Copy)]
pub(crate) struct ContrastiveTerm {
    /// The term's weight beside the cross-entropy.
    pub weight: f64,
    /// The loss's temperature.
    pub temperature: f64,
}

/// How a step's convolutions compute: in `dtype` where given (see [`crate::models::autocast`]),
/// with the loss multiplied by `loss_scale` before the backward pass.
#[derive(Debug, Clone, Copy)]
pub(crate) struct MixedPrecision {
    /// The convolutions' type; `None` is `f32`.
    pub dtype: Option<FloatDType>,
    /// The loss's factor (1 without a loss scale).
    pub loss_scale: f32,
}

impl MixedPrecision {
    /// Everything in `f32`, no scale.
    #[cfg(test)]
    pub const OFF: MixedPrecision = MixedPrecision {
        dtype: None,
        loss_scale: 1.0,
    };

    fn scaled(self, loss: Tensor<1>) -> Tensor<1> {
        if self.loss_scale == 1.0 {
            loss
        } else {
            loss.mul_scalar(self.loss_scale)
        }
    }
}

/// Contiguous sample ranges of nearly equal size, one per device, for at most `batch` devices.
fn shard_ranges(batch: usize, devices: usize) -> Vec<std::ops::Range<usize>> {
    let shards = devices.clamp(1, batch.max(1));
    (0..shards)
        .map(|shard| shard * batch / shards..(shard + 1) * batch / shards)
        .collect()
}

/// A worker's failure (a panic on its device, caught by burn) as a training error naming the
/// device by its place in the device list.
fn worker_error(error: MultiDeviceStepError, devices: usize) -> TrainError {
    match error {
        MultiDeviceStepError::Workers(failures) => TrainError::Device(
            failures
                .iter()
                .map(|failure| {
                    format!(
                        "the training step on device {} of {devices} failed: {}",
                        failure.device_id + 1,
                        failure.message
                    )
                })
                .collect::<Vec<_>>()
                .join("; "),
        ),
        // The loaders are in-memory shards, which cannot fail to load.
        MultiDeviceStepError::Dataset(error) => TrainError::Device(error.to_string()),
    }
}

/// One device's part of a batch: what a worker receives.
pub(crate) struct Shard {
    /// Position in the batch (shards are summed in this order).
    shard: usize,
    /// The device the worker computes on; the images are created there.
    device: Device,
    /// `[samples, C, H, W]` normalised pixels.
    pixels: Vec<f32>,
    labels: Vec<usize>,
    image_dims: [usize; 3],
    /// The shard's share of the batch, which weights its mean loss (`None`: the whole batch).
    share: Option<f32>,
}

impl Shard {
    /// The images `[samples, C, H, W]` and targets as tensors on the shard's device.
    fn tensors(&self) -> (Tensor<4>, Tensor<1, Int>) {
        let [channels, height, width] = self.image_dims;
        let batch = self.labels.len();
        let images = Tensor::<4>::from_data(
            TensorData::new(self.pixels.clone(), [batch, channels, height, width]),
            &self.device,
        );
        let targets = Tensor::<1, Int>::from_data(
            TensorData::new(
                self.labels.iter().map(|&l| l as i64).collect::<Vec<_>>(),
                [batch],
            ),
            &self.device,
        );
        (images, targets)
    }

    fn new(
        shard: usize,
        device: &Device,
        pixels: &[f32],
        labels: &[usize],
        image_dims: [usize; 3],
        share: Option<f32>,
    ) -> Self {
        Self {
            shard,
            device: device.clone(),
            pixels: pixels.to_vec(),
            labels: labels.to_vec(),
            image_dims,
            share,
        }
    }
}

/// A data loader of exactly one shard, the form burn's step takes its input in.
struct OneShard(Option<Shard>);

impl Iterator for OneShard {
    type Item = Result<Shard, DatasetError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.0.take().map(Ok)
    }
}

impl DataLoaderIterator<Shard> for OneShard {
    fn progress(&self) -> Progress {
        Progress::new(usize::from(self.0.is_none()), 1, None)
    }
}

/// What a worker hands back besides the gradients: the shard's (share-weighted) mean loss and
/// its logits, or why the model refused the shard.
pub(crate) struct ShardOutput {
    /// Position in the batch.
    shard: usize,
    result: Result<ShardLoss, crate::models::ModelError>,
}

/// A shard's loss (weighted by its share of the batch) and `[samples, classes]` logits.
struct ShardLoss {
    loss: f32,
    logits: Vec<f32>,
}

impl ItemLazy for ShardOutput {
    // Everything is read back to the host inside the step already.
    fn sync(self) -> Result<Self, burn::backend::ExecutionError> {
        Ok(self)
    }
}

/// The model and loss as burn's `TrainStep`: the module a worker forks to its device.
#[derive(Module, Debug)]
pub(crate) struct ShardStep {
    model: ResNet,
    loss_fn: CrossEntropyLoss,
}

impl ShardStep {
    fn new(model: ResNet, loss_fn: CrossEntropyLoss) -> Self {
        Self { model, loss_fn }
    }

    /// Forward and backward of one shard: its loss and logits, and the autodiff gradients (the
    /// tests' reference for a shard computed alone).
    #[cfg(test)]
    fn gradients(&self, shard: Shard) -> Result<(ShardLoss, burn::tensor::Gradients), TrainError> {
        let (loss, logits) = self.loss(&shard)?;
        let loss_value: f32 = loss.clone().into_scalar();
        let grads = loss.backward();
        Ok((
            ShardLoss {
                loss: loss_value,
                logits,
            },
            grads,
        ))
    }

    /// The shard's mean loss (times its share of the batch) as a tensor, and its logits read
    /// back to the host.
    fn loss(&self, shard: &Shard) -> Result<(Tensor<1>, Vec<f32>), crate::models::ModelError> {
        let (loss, logits, _) = self.forward(shard)?;
        let logit_values = logits
            .into_data()
            .try_to_vec::<f32>()
            .expect("float logits");
        Ok((loss, logit_values))
    }

    /// The shard's mean loss (times its share of the batch), its logits and its targets, as
    /// tensors on the shard's device.
    fn forward(
        &self,
        shard: &Shard,
    ) -> Result<(Tensor<1>, Tensor<2>, Tensor<1, Int>), crate::models::ModelError> {
        let (images, targets) = shard.tensors();
        let logits = self.model.try_forward(images)?;
        let mut loss = self.loss_fn.forward(logits.clone(), targets.clone());
        if let Some(share) = shard.share {
            loss = loss.mul_scalar(share);
        }
        Ok((loss, logits, targets))
    }
}

impl TrainStep for ShardStep {
    type Input = Shard;
    type Output = ShardOutput;

    fn step(&self, shard: Shard) -> TrainOutput<ShardOutput> {
        let index = shard.shard;
        match self.loss(&shard) {
            Ok((loss, logits)) => {
                let loss_value: f32 = loss.clone().into_scalar();
                let item = ShardOutput {
                    shard: index,
                    result: Ok(ShardLoss {
                        loss: loss_value,
                        logits,
                    }),
                };
                TrainOutput::new(self, loss.backward(), item)
            }
            Err(error) => TrainOutput {
                grads: GradientsParams::new(),
                item: ShardOutput {
                    shard: index,
                    result: Err(error),
                },
            },
        }
    }
}

/// burn's `LearnerModel` asks for an inference step too: the shard's loss and logits, no
/// gradients.
impl InferenceStep for ShardStep {
    type Input = Shard;
    type Output = ShardOutput;

    fn step(&self, shard: Shard) -> ShardOutput {
        ShardOutput {
            shard: shard.shard,
            result: self.loss(&shard).map(|(loss, logits)| ShardLoss {
                loss: loss.into_scalar(),
                logits,
            }),
        }
    }
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

    /// Two "devices" that are both the CPU: burn's workers, the forks, the moves and the
    /// accumulation run as they would on two GPUs.
    fn on_two_cpus(device: &Device, loss_fn: &CrossEntropyLoss) -> DataParallel {
        DataParallel::new(vec![device.clone(); 2], vec![loss_fn.clone(); 2])
    }

    #[test]
    fn a_shard_the_model_refuses_is_an_error_not_a_panic() {
        let device = Device::flex().autodiff();
        let loss_fn = CrossEntropyLossConfig::new().init(&device);
        // 8x8 images for a model built for 16x16.
        let pixels = crate::attention::testing::seeded_values(4 * 64, 2);
        let error = on_two_cpus(&device, &loss_fn)
            .batch_gradients(
                small_model(&device),
                &pixels,
                &[0, 1, 2, 0],
                [1, 8, 8],
                MixedPrecision::OFF,
            )
            .err()
            .expect("the model refuses 8x8 images");
        assert!(matches!(error, TrainError::Model(_)), "{error}");
    }

    #[test]
    fn a_panic_on_a_worker_is_an_error_naming_the_device() {
        let device = Device::flex().autodiff();
        let loss_fn = CrossEntropyLossConfig::new().init(&device);
        let pixels = crate::attention::testing::seeded_values(4 * 256, 2);
        // Class 9 of 3: the loss's gather panics on the second worker.
        let result = on_two_cpus(&device, &loss_fn).batch_gradients(
            small_model(&device),
            &pixels,
            &[0, 1, 2, 9],
            [1, 16, 16],
            MixedPrecision::OFF,
        );
        let error = result.err().expect("the second shard fails");
        assert_eq!(
            error.to_string(),
            "the training step on device 2 of 2 failed: index 9 out of bounds for dimension of size 3"
        );
    }

    #[test]
    fn a_batch_smaller_than_the_device_list_uses_the_first_devices() {
        let device = Device::flex().autodiff();
        let loss_fn = CrossEntropyLossConfig::new().init(&device);
        let three = DataParallel::new(vec![device.clone(); 3], vec![loss_fn; 3]);
        let pixels = crate::attention::testing::seeded_values(2 * 256, 4);
        let split = three
            .batch_gradients(
                small_model(&device),
                &pixels,
                &[1, 2],
                [1, 16, 16],
                MixedPrecision::OFF,
            )
            .unwrap();
        let (loss_sum, correct, _) = split.stats.read();
        assert!(loss_sum.is_finite() && loss_sum > 0.0);
        assert!(correct <= 2);
    }

    /// A ResNet-20 + PPCR for 16x16 grey images and 3 classes, the same weights every call.
    /// A fresh small model (its own running statistics) with the same weights on every call:
    /// copied from one model built once, since a seeded build draws from the global generator,
    /// which tests running in parallel draw from too.
    impl DataParallel {
        /// The gradients of [`small_model`] on 16x16 grey images, in `f32`.
        fn small_model_gradients(
            &self,
            device: &Device,
            pixels: &[f32],
            labels: &[usize],
        ) -> Result<BatchGradients, TrainError> {
            let model = small_model(device);
            self.batch_gradients(model, pixels, labels, [1, 16, 16], MixedPrecision::OFF)
        }
    }

    fn small_model(device: &Device) -> ResNet {
        static WEIGHTS: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
        let build = |device: &Device| {
            ResNetConfig::new(
                Backbone::ResNet20,
                AttentionConfig::new(AttentionKind::Ppcr),
                3,
            )
            .with_in_channels(1)
            .with_input_size(16)
            .init(device)
            .unwrap()
        };
        let weights = WEIGHTS.get_or_init(|| {
            build(&Device::flex())
                .into_record()
                .into_bytes()
                .unwrap()
                .to_vec()
        });
        let record = burn::store::ModuleRecord::from_bytes(burn::tensor::Bytes::from_bytes_vec(
            weights.clone(),
        ))
        .unwrap();
        build(device).try_load_record(record).unwrap()
    }

    #[test]
    fn one_device_counts_the_loss_and_correct_predictions_on_the_device() {
        let device = Device::flex().autodiff();
        let loss_fn = CrossEntropyLossConfig::new().init(&device);
        let pixels = crate::attention::testing::seeded_values(5 * 256, 6);
        let labels = vec![0, 1, 2, 2, 0];
        let one = DataParallel::new(vec![device.clone()], vec![loss_fn.clone()]);
        let split = one
            .small_model_gradients(&device, &pixels, &labels)
            .unwrap();
        let shard = Shard::new(0, &device, &pixels, &labels, [1, 16, 16], None);
        let (host, _) = ShardStep::new(small_model(&device), loss_fn)
            .gradients(shard)
            .unwrap();
        let expected_correct = labels
            .iter()
            .enumerate()
            .filter(|(i, label)| argmax(&host.logits[i * 3..(i + 1) * 3]) == **label)
            .count();
        let (loss_sum, correct, _) = split.stats.read();
        assert!(
            (loss_sum - 5.0 * host.loss as f64).abs() < 1e-5,
            "{loss_sum}"
        );
        assert_eq!(correct, expected_correct);
        // Running sums add up on the device.
        let (twice, twice_correct, _) = split.stats.clone().add(split.stats).read();
        assert!((twice - 2.0 * loss_sum).abs() < 1e-5);
        assert_eq!(twice_correct, 2 * correct);
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
        let split = on_two_cpus(&device, &loss_fn)
            .small_model_gradients(&device, &pixels, &labels)
            .unwrap();
        // Each shard's update alone, from the same starting model (a fresh one each: clones
        // share their running state).
        let shard_means: Vec<Vec<f32>> = [0..2, 2..4]
            .into_iter()
            .map(|range| {
                let step = ShardStep::new(small_model(&device), loss_fn.clone());
                let pixels = &pixels[range.start * 256..range.end * 256];
                let shard = Shard::new(0, &device, pixels, &labels[range], [1, 16, 16], None);
                step.gradients(shard).unwrap();
                running_mean(&step.model.train())
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
        let split = on_two_cpus(&device, &loss_fn)
            .batch_gradients(model.clone(), &pixels, &labels, dims, MixedPrecision::OFF)
            .unwrap();
        // The same shards one after the other on one device, each loss weighted by 1/2.
        let halves: Vec<_> = [0..3, 3..6]
            .into_iter()
            .map(|range| {
                let pixels = &pixels[range.start * 256..range.end * 256];
                let shard = Shard::new(0, &device, pixels, &labels[range], dims, Some(0.5));
                let step = ShardStep::new(model.clone(), loss_fn.clone());
                let (output, grads) = step.gradients(shard).unwrap();
                (output.loss, output.logits, grads)
            })
            .collect();
        let expected_loss: f32 = halves.iter().map(|(loss, _, _)| loss).sum();
        let expected_logits: Vec<f32> = halves
            .iter()
            .flat_map(|(_, logits, _)| logits.clone())
            .collect();
        let expected_correct = labels
            .iter()
            .enumerate()
            .filter(|(i, label)| argmax(&expected_logits[i * 3..(i + 1) * 3]) == **label)
            .count();
        let (loss_sum, correct, _) = split.stats.read();
        assert!((loss_sum - batch as f64 * expected_loss as f64).abs() < 1e-5);
        assert_eq!(correct, expected_correct);
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
