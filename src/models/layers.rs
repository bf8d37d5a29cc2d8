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
