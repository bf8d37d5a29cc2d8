//! The backbone's layers as the networks call them: on the Flex backend through the CPU kernels
//! of `kernels/cpu` (He et al., CVPR 2016 ResNets spend almost all of a step in them), on any
//! other backend, or for a configuration the kernels do not take, through burn's own modules.

use std::sync::OnceLock;

use burn::nn::conv::Conv2d;
use burn::nn::{BatchNorm, PaddingConfig2d};
use burn::tensor::Tensor;
use burn::tensor::activation::relu;

use crate::kernels::cpu::batch_norm as batch_norm_kernel;
use crate::kernels::cpu::conv as conv_kernel;
use crate::kernels::cpu::residual as residual_kernel;

/// The environment variable that, set to `1`, makes the backbone run burn's own layers on every
/// backend: the reference the kernels are compared against (tests, `ppcr bench`, and the
/// training comparison in docs/performance.md). Read once per process.
pub const BURN_LAYERS_VARIABLE: &str = "PPCR_BURN_LAYERS";

/// Whether the backbone's layers may take the CPU kernels (see [`BURN_LAYERS_VARIABLE`]).
pub fn kernels_enabled() -> bool {
    static ENABLED: OnceLock<bool> = OnceLock::new();
    *ENABLED.get_or_init(|| std::env::var(BURN_LAYERS_VARIABLE).map_or(true, |v| v != "1"))
}

/// `conv.forward(x)`, through the convolution kernel where it applies: no groups, no dilation,
/// no bias and symmetric padding, on Flex `f32` tensors.
pub fn conv2d(conv: &Conv2d, x: Tensor<4>) -> Tensor<4> {
    // `Explicit(top, left, bottom, right)`; `Same` with an even kernel pads unevenly.
    let padding = match conv.padding {
        PaddingConfig2d::Valid => Some([0, 0]),
        PaddingConfig2d::Explicit(top, left, bottom, right) if top == bottom && left == right => {
            Some([top, left])
        }
        _ => None,
    };
    let weight = conv.weight.val();
    let takes_kernel = kernels_enabled()
        && conv.groups == 1
        && conv.dilation == [1, 1]
        && conv.bias.is_none()
        && conv_kernel::fused_available(&x, &weight);
    match padding {
        Some(padding) if takes_kernel => conv_kernel::conv2d(x, weight, conv.stride, padding),
        _ => conv.forward(x),
    }
}

/// `bn.forward(x)`, followed by ReLU when `then_relu`. In training mode (an autodiff device and
/// the layer's training flag set, as burn's `BatchNorm` decides) on Flex `f32` tensors this is
/// one kernel, and the running statistics are updated as burn's `BatchNorm` updates them.
pub fn batch_norm(bn: &BatchNorm, x: Tensor<4>, then_relu: bool) -> Tensor<4> {
    let training = x.device().is_autodiff() && bn.training.is_enabled();
    let (gamma, beta) = (bn.gamma.val(), bn.beta.val());
    if !training && kernels_enabled() && batch_norm_kernel::inference_available(&x) {
        // Folded as burn's `batch_norm` computes it: (x - mean) / sqrt(var + eps) * gamma + beta.
        let device = x.device();
        let scale = gamma.div(
            bn.running_var
                .value()
                .to_device(&device)
                .add_scalar(bn.epsilon)
                .sqrt(),
        );
        let shift = beta - bn.running_mean.value().to_device(&device) * scale.clone();
        return batch_norm_kernel::scale_shift(x, scale, shift, then_relu);
    }
    if !(training && kernels_enabled() && batch_norm_kernel::fused_available(&x, &gamma, &beta)) {
        let y = bn.forward(x);
        return if then_relu { relu(y) } else { y };
    }
    let (y, mean, variance) =
        batch_norm_kernel::batch_norm_train(x, gamma, beta, bn.epsilon, then_relu);
    let device = y.device();
    let update = |state: &burn::module::RunningState<Tensor<1>>, batch: Tensor<1>| {
        let running = state
            .value_sync()
            .to_device(&device)
            .mul_scalar(1.0 - bn.momentum)
            .add(batch.mul_scalar(bn.momentum));
        state.update(running.detach());
    };
    update(&bn.running_mean, mean);
    update(&bn.running_var, variance);
    y
}

/// `relu(branch + shortcut)`, the end of a residual block, as one kernel on Flex `f32` tensors.
pub fn add_relu(branch: Tensor<4>, shortcut: Tensor<4>) -> Tensor<4> {
    if kernels_enabled() && residual_kernel::fused_available(&branch, &shortcut) {
        residual_kernel::add_relu(branch, shortcut)
    } else {
        relu(branch + shortcut)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attention::testing::{
        assert_matches_reference, device, random_tensor, seeded_values, values,
    };
    use burn::module::{Module, Param};
    use burn::nn::BatchNormConfig;
    use burn::nn::conv::Conv2dConfig;
    use burn::tensor::TensorData;

    /// A BatchNorm on the autodiff device whose affine parameters and running statistics are
    /// not their initial values (the statistics after two training steps of burn's own layer).
    fn trained_batch_norm(channels: usize) -> BatchNorm {
        let autodiff = device().autodiff();
        let mut bn = BatchNormConfig::new(channels).init(&autodiff);
        let seeded = |seed, offset: f32| {
            let v: Vec<f32> = seeded_values(channels, seed)
                .iter()
                .map(|v| v + offset)
                .collect();
            Param::from_tensor(Tensor::from_data(TensorData::new(v, [channels]), &autodiff))
        };
        bn.gamma = seeded(1, 1.0);
        bn.beta = seeded(2, 0.0);
        for seed in 0..2 {
            let x = random_tensor([3, channels, 5, 4], seed, &autodiff) * 2.0 + 1.0;
            let _ = bn.forward(x);
        }
        bn
    }

    #[test]
    fn training_batch_norm_matches_burns_layer_output_and_running_statistics() {
        let autodiff = device().autodiff();
        for then_relu in [false, true] {
            let ours = trained_batch_norm(6);
            let burns = ours.clone();
            let x = random_tensor([4, 6, 3, 5], 11, &autodiff) * 1.5 - 0.25;
            let y = batch_norm(&ours, x.clone(), then_relu);
            let reference = burns.forward(x);
            let reference = if then_relu {
                relu(reference)
            } else {
                reference
            };
            assert_matches_reference(&values(y), &values(reference), 1e-5, "output");
            for (a, b, what) in [
                (&ours.running_mean, &burns.running_mean, "running mean"),
                (&ours.running_var, &burns.running_var, "running var"),
            ] {
                assert_matches_reference(&values(a.value()), &values(b.value()), 1e-6, what);
            }
        }
    }

    #[test]
    fn inference_batch_norm_matches_burns_layer() {
        let device = device();
        let bn = trained_batch_norm(5).valid();
        assert!(values(bn.running_var.value()).iter().all(|&v| v != 1.0));
        for then_relu in [false, true] {
            let x = random_tensor([2, 5, 3, 3], 3, &device) * 2.0;
            assert!(batch_norm_kernel::inference_available(&x));
            let reference = bn.forward(x.clone());
            let reference = if then_relu {
                relu(reference)
            } else {
                reference
            };
            let y = batch_norm(&bn, x, then_relu);
            assert_matches_reference(&values(y), &values(reference), 1e-5, "inference output");
        }
    }

    #[test]
    fn convolutions_the_kernel_does_not_take_run_burns_layer() {
        // Grouped, dilated and biased convolutions go to burn's Conv2d; same output either way.
        let device = device();
        let x = random_tensor([2, 4, 7, 7], 1, &device);
        for config in [
            Conv2dConfig::new([4, 6], [3, 3]).with_groups(2),
            Conv2dConfig::new([4, 6], [3, 3]).with_dilation([2, 2]),
            Conv2dConfig::new([4, 6], [3, 3]).with_bias(true),
            Conv2dConfig::new([4, 6], [3, 3])
                .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                .with_bias(false),
        ] {
            let conv = config.init(&device);
            let y = conv2d(&conv, x.clone());
            assert_matches_reference(&values(y), &values(conv.forward(x.clone())), 1e-5, "conv");
        }
    }
}
