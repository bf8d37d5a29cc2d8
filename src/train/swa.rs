//! Stochastic weight averaging (Izmailov et al., "Averaging Weights Leads to Wider Optima and
//! Better Generalization", UAI 2018; as PyTorch's `torch.optim.swa_utils` runs it): the last
//! `swa_epochs` epochs train at a constant rate `swa_lr`, the weights at the end of each of them
//! are averaged with equal weights (see [`super::weight_average`]), and the average's BatchNorm
//! statistics are recomputed on the training data, because the statistics of averaged weights
//! are not the average of the statistics.
//!
//! Before the averaging phase the run's schedule runs over the remaining epochs; a cosine
//! schedule ends at `swa_lr` instead of 0 (`min_lr` raised to it), so the rate meets the
//! constant phase without a jump.

use burn::tensor::{Device, Tensor, TensorData};

use super::{LrSchedule, TrainConfig};
use crate::models::ResNet;

/// The learning rate of the averaging phase when none is given.
pub const DEFAULT_SWA_LR: f64 = 0.01;

/// Where a run's averaging phase starts and the rate it trains at.
#[derive(Debug, Clone)]
pub(crate) struct Swa {
    /// The first epoch (0-based) of the averaging phase.
    pub start_epoch: usize,
    /// The constant rate of the averaging phase.
    pub lr: f64,
    /// The run's schedule as it runs before the phase.
    schedule: LrSchedule,
}

impl Swa {
    /// The averaging of `config`, if it asks for one.
    pub fn of(config: &TrainConfig) -> Option<Swa> {
        if config.swa_epochs == 0 {
            return None;
        }
        let schedule = match &config.schedule {
            LrSchedule::Cosine {
                warmup_epochs,
                min_lr,
            } => LrSchedule::Cosine {
                warmup_epochs: *warmup_epochs,
                min_lr: min_lr.max(config.swa_lr),
            },
            other => other.clone(),
        };
        Some(Swa {
            start_epoch: config.epochs.saturating_sub(config.swa_epochs),
            lr: config.swa_lr,
            schedule,
        })
    }

    /// Whether the 0-based `epoch` ends by adding its weights to the average.
    pub fn averages(&self, epoch: usize) -> bool {
        epoch >= self.start_epoch
    }

    /// The rate of global step `step` (0-based) at peak rate `base_lr`.
    pub fn lr_at(&self, base_lr: f64, step: usize, steps_per_epoch: usize) -> f64 {
        let start_step = self.start_epoch * steps_per_epoch;
        if step >= start_step {
            self.lr
        } else {
            self.schedule
                .lr_at(base_lr, step, steps_per_epoch, start_step)
        }
    }
}

/// `model` (in training mode, on an autodiff device) with every BatchNorm's running statistics
/// replaced by the mean of the batch statistics over `batches` (`[B, C, H, W]` pixels, as
/// PyTorch's `update_bn` with momentum `None`): batch `k` (0-based) updates with momentum
/// `1 / (k + 1)`, so the first replaces the old statistics and each later one enters with the
/// weight of the others. The layers' own momenta are restored afterwards.
pub(crate) fn recompute_batch_norm(
    mut model: ResNet,
    batches: impl IntoIterator<Item = Vec<f32>>,
    image_dims: [usize; 3],
    device: &Device,
) -> ResNet {
    let momenta: Vec<f64> = model
        .batch_norms_mut()
        .iter()
        .map(|norm| norm.momentum)
        .collect();
    let [channels, height, width] = image_dims;
    for (index, pixels) in batches.into_iter().enumerate() {
        for norm in model.batch_norms_mut() {
            norm.momentum = 1.0 / (index + 1) as f64;
        }
        let batch = pixels.len() / (channels * height * width);
        let images = Tensor::<4>::from_data(
            TensorData::new(pixels, [batch, channels, height, width]),
            device,
        );
        // Only the statistics the forward pass records are wanted; the graph is dropped.
        let _ = model.forward(images);
    }
    for (norm, momentum) in model.batch_norms_mut().into_iter().zip(momenta) {
        norm.momentum = momentum;
        // The last batch's update waits for the next read: take it in now, so that whatever
        // reads the model next (a checkpoint writer does not) sees it.
        norm.running_mean.value_sync();
        norm.running_var.value_sync();
    }
    model
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attention::testing::{random_tensor, with_seeded_parameters};
    use crate::attention::{AttentionConfig, AttentionKind};
    use crate::models::{Backbone, ResNetConfig};
    use burn::module::Module;

    fn config(swa_epochs: usize, swa_lr: f64) -> TrainConfig {
        TrainConfig {
            epochs: 10,
            lr: 0.1,
            swa_epochs,
            swa_lr,
            ..TrainConfig::default()
        }
    }

    #[test]
    fn the_rate_runs_the_cosine_down_to_the_averaging_rate_then_holds_it() {
        assert!(Swa::of(&config(0, DEFAULT_SWA_LR)).is_none());
        let swa = Swa::of(&config(4, 0.02)).unwrap();
        assert_eq!(swa.start_epoch, 6);
        assert!(!swa.averages(5) && swa.averages(6) && swa.averages(9));
        // 10 steps per epoch: one warm-up epoch, then cosine over steps 10..60 from 0.1 to
        // 0.02; half-way (step 35) it is their mean.
        assert!((swa.lr_at(0.1, 0, 10) - 0.01).abs() < 1e-12);
        assert!((swa.lr_at(0.1, 10, 10) - 0.1).abs() < 1e-12);
        assert!((swa.lr_at(0.1, 35, 10) - 0.06).abs() < 1e-12);
        assert!(swa.lr_at(0.1, 59, 10) > 0.02 && swa.lr_at(0.1, 59, 10) < 0.0201);
        for step in [60, 61, 99] {
            assert_eq!(swa.lr_at(0.1, step, 10), 0.02);
        }
    }

    #[test]
    fn a_step_schedule_runs_unchanged_before_the_averaging_phase() {
        let mut step = config(2, 0.005);
        step.schedule = LrSchedule::Step {
            milestones: vec![4],
            gamma: 0.1,
        };
        let swa = Swa::of(&step).unwrap();
        assert_eq!(swa.lr_at(0.1, 39, 10), 0.1);
        assert!((swa.lr_at(0.1, 40, 10) - 0.01).abs() < 1e-12);
        assert_eq!(swa.lr_at(0.1, 80, 10), 0.005);
    }

    fn model() -> ResNet {
        let device = Device::flex().autodiff();
        let model = ResNetConfig::new(
            Backbone::ResNet20,
            AttentionConfig::new(AttentionKind::Cbam),
            2,
        )
        .with_input_size(8)
        .with_in_channels(1)
        .init(&device)
        .unwrap();
        with_seeded_parameters(model, 4).train()
    }

    fn pixels(seed: u64) -> Vec<f32> {
        random_tensor([3, 1, 8, 8], seed, &Device::flex())
            .into_data()
            .try_to_vec::<f32>()
            .unwrap()
    }

    /// Every BatchNorm's (running mean, running variance), read after any pending update.
    fn statistics(model: &ResNet) -> Vec<Vec<f32>> {
        let mut model = model.clone();
        let mut values = Vec::new();
        for norm in model.batch_norms_mut() {
            for state in [&norm.running_mean, &norm.running_var] {
                values.push(state.value_sync().into_data().try_to_vec::<f32>().unwrap());
            }
        }
        values
    }

    /// In training mode BatchNorm normalises with the batch's own statistics, so each batch's
    /// statistics do not depend on what the layers held: recomputing over two batches gives
    /// the mean of recomputing over each alone, in every layer (CBAM's spatial BatchNorm, with
    /// its momentum of 0.01, included), and the stem's equal the per-channel mean of its
    /// convolution's output.
    #[test]
    fn recomputed_statistics_are_the_mean_over_the_batches() {
        let device = Device::flex().autodiff();
        let dims = [1, 8, 8];
        let recomputed =
            |batches: Vec<Vec<f32>>| recompute_batch_norm(model(), batches, dims, &device);
        let both = recomputed(vec![pixels(1), pixels(2)]);
        let first = statistics(&recomputed(vec![pixels(1)]));
        let second = statistics(&recomputed(vec![pixels(2)]));
        let both_statistics = statistics(&both);
        assert_eq!(both_statistics.len(), 2 * (1 + 9 * 3));
        for ((mean, a), b) in both_statistics.iter().zip(&first).zip(&second) {
            for ((&m, &x), &y) in mean.iter().zip(a).zip(b) {
                let expected = (x + y) / 2.0;
                assert!(
                    (m - expected).abs() <= 1e-5 * expected.abs().max(1.0),
                    "{m} vs {expected}"
                );
            }
        }
        assert_ne!(first, second);
        // The stem's mean, by hand: the convolution's output averaged per channel.
        let stem = model();
        let images = Tensor::<4>::from_data(TensorData::new(pixels(1), [3, 1, 8, 8]), &device);
        let by_hand = stem
            .stem
            .conv
            .forward(images)
            .mean_dim(0)
            .mean_dim(2)
            .mean_dim(3)
            .into_data()
            .try_to_vec::<f32>()
            .unwrap();
        for (m, expected) in first[0].iter().zip(&by_hand) {
            assert!((m - expected).abs() < 1e-5, "{m} vs {expected}");
        }
        // The layers' momenta are what they were.
        let mut both = both;
        let momenta: Vec<f64> = both.batch_norms_mut().iter().map(|n| n.momentum).collect();
        assert!(
            momenta.contains(&0.01) && momenta.contains(&0.1),
            "{momenta:?}"
        );
        assert!(momenta.iter().all(|&m| m == 0.01 || m == 0.1));
    }
}
