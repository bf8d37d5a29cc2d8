//! The backbone's layers as the networks call them: on the Flex backend through the CPU kernels
//! of `kernels/cpu` (He et al., CVPR 2016 ResNets spend almost all of a step in them), on any
//! other backend, or for a configuration the kernels do not take, through burn's own modules.

use std::sync::OnceLock;

use burn::nn::conv::Conv2d;
use burn::nn::{BatchNorm, PaddingConfig2d};
use burn::tensor::activation::relu;
use burn::tensor::ops::ConvOptions;
use burn::tensor::{FloatDType, Tensor, TensorData};

use super::autocast;

use crate::kernels::cpu::batch_norm as batch_norm_kernel;
use crate::kernels::cpu::batch_norm_ppcr::TrainingBatchNorm;
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
    if let Some(dtype) = autocast::convolution_dtype() {
        return conv2d_in(conv, x, dtype);
    }
    match kernel_padding(conv, &x) {
        Some(padding) => conv_kernel::conv2d(x, conv.weight.val(), conv.stride, padding),
        None => conv.forward(x),
    }
}

/// `conv.forward(x)` with its input, weight and bias cast to `dtype` and its output cast back
/// to the input's type (see [`autocast`]); autodiff carries each gradient back through the
/// casts, so the parameters' gradients keep the parameters' type.
fn conv2d_in(conv: &Conv2d, x: Tensor<4>, dtype: FloatDType) -> Tensor<4> {
    let input_dtype = x.dtype();
    let [_, _, height, width] = x.dims();
    // As burn's `Conv2d::forward` pads (its helper is private to burn-nn).
    let same = |kernel: usize, stride: usize, size: usize| {
        let needed = (size.div_ceil(stride).max(1) - 1) * stride + kernel;
        let total = needed.saturating_sub(size);
        (total / 2, total - total / 2)
    };
    let ((top, bottom), (left, right)) = match conv.padding {
        PaddingConfig2d::Valid => ((0, 0), (0, 0)),
        PaddingConfig2d::Same => (
            same(conv.kernel_size[0], conv.stride[0], height),
            same(conv.kernel_size[1], conv.stride[1], width),
        ),
        PaddingConfig2d::Explicit(top, left, bottom, right) => ((top, bottom), (left, right)),
    };
    let options = ConvOptions::new_with_padding(
        conv.stride,
        [(top, bottom), (left, right)],
        conv.dilation,
        conv.groups,
    );
    let y = burn::tensor::module::conv2d(
        x.cast(dtype),
        conv.weight.val().cast(dtype),
        conv.bias.as_ref().map(|bias| bias.val().cast(dtype)),
        options,
    );
    y.cast(input_dtype)
}

/// `bn.forward(conv.forward(x))`, followed by ReLU when `then_relu`. In inference on plain Flex
/// `f32` tensors the BatchNorm (with its running statistics) and the ReLU are folded into the
/// convolution kernel's output, so the feature map is written once.
pub fn conv_batch_norm(conv: &Conv2d, bn: &BatchNorm, x: Tensor<4>, then_relu: bool) -> Tensor<4> {
    let weight = conv.weight.val();
    if conv_kernel::affine_available(&x, &weight)
        && let Some(padding) = kernel_padding(conv, &x)
    {
        let affine = inference_affine(bn, &x.device());
        return conv_kernel::conv2d_affine(x, weight, affine, conv.stride, padding, then_relu);
    }
    batch_norm(bn, conv2d(conv, x), then_relu)
}

/// `relu(bn.forward(conv.forward(x)) + residual)`, the end of a residual block without an
/// attention unit. In inference on plain Flex `f32` tensors the BatchNorm, the add and the ReLU
/// are folded into the convolution kernel's output.
pub fn conv_batch_norm_add_relu(
    conv: &Conv2d,
    bn: &BatchNorm,
    x: Tensor<4>,
    residual: Tensor<4>,
) -> Tensor<4> {
    let weight = conv.weight.val();
    if conv_kernel::affine_available(&x, &weight)
        && batch_norm_kernel::inference_available(&residual)
        && let Some(padding) = kernel_padding(conv, &x)
        && Some(residual.dims()) == output_dims(conv, &x, padding)
    {
        let affine = inference_affine(bn, &x.device());
        return conv_kernel::conv2d_affine_add_relu(
            x,
            weight,
            affine,
            residual,
            conv.stride,
            padding,
        );
    }
    add_relu(conv_batch_norm(conv, bn, x, false), residual)
}

/// `bn.forward(conv.forward(x))` in inference as the convolution kernel would run it, for a
/// unit to fold itself into (see [`conv_kernel::AffineConvolution`]); `None` where
/// [`conv_batch_norm`] would not take the kernel.
pub fn affine_convolution(
    conv: &Conv2d,
    bn: &BatchNorm,
    x: &Tensor<4>,
) -> Option<conv_kernel::AffineConvolution> {
    let weight = conv.weight.val();
    if !conv_kernel::affine_available(x, &weight) {
        return None;
    }
    let padding = kernel_padding(conv, x)?;
    let output_dims = output_dims(conv, x, padding)?;
    Some(conv_kernel::AffineConvolution {
        x: x.clone(),
        weight,
        affine: inference_affine(bn, &x.device()),
        stride: conv.stride,
        padding,
        output_dims,
    })
}

/// The symmetric padding `[ph, pw]` with which the convolution kernel runs `conv` on `x`, or
/// `None` where burn's layer must: kernels off, groups, dilation, a bias, uneven padding
/// (`Explicit(top, left, bottom, right)`; `Same` with an even kernel pads unevenly), or
/// tensors the kernel does not take, or convolutions in another precision ([`autocast`]).
fn kernel_padding(conv: &Conv2d, x: &Tensor<4>) -> Option<[usize; 2]> {
    let padding = match conv.padding {
        PaddingConfig2d::Valid => [0, 0],
        PaddingConfig2d::Explicit(top, left, bottom, right) if top == bottom && left == right => {
            [top, left]
        }
        _ => return None,
    };
    let takes_kernel = kernels_enabled()
        && autocast::convolution_dtype().is_none()
        && conv.groups == 1
        && conv.dilation == [1, 1]
        && conv.bias.is_none()
        && conv_kernel::fused_available(x, &conv.weight.val());
    takes_kernel.then_some(padding)
}

/// The output shape of `conv` on `x` with `padding`, or `None` where the padded input is
/// smaller than the kernel.
fn output_dims(conv: &Conv2d, x: &Tensor<4>, padding: [usize; 2]) -> Option<[usize; 4]> {
    let [batch, _, height, width] = x.dims();
    let [out_channels, _, kh, kw] = conv.weight.dims();
    let out = |size: usize, pad: usize, kernel: usize, stride: usize| {
        (size + 2 * pad)
            .checked_sub(kernel)
            .map(|reach| reach / stride + 1)
    };
    Some([
        batch,
        out_channels,
        out(height, padding[0], kh, conv.stride[0])?,
        out(width, padding[1], kw, conv.stride[1])?,
    ])
}

/// An inference BatchNorm as `[scale, shift]` per channel, computed on the host as burn's
/// `batch_norm` computes it: `scale = gamma / sqrt(var + eps)`, `shift = beta - mean * scale`.
fn inference_affine(bn: &BatchNorm, device: &burn::tensor::Device) -> [Tensor<1>; 2] {
    let host = |tensor: Tensor<1>| {
        tensor
            .into_data()
            .convert::<f32>()
            .try_into_vec::<f32>()
            .expect("a BatchNorm parameter converts to f32")
    };
    let gamma = host(bn.gamma.val());
    let beta = host(bn.beta.val());
    let mean = host(bn.running_mean.value());
    let variance = host(bn.running_var.value());
    let epsilon = bn.epsilon as f32;
    let scale: Vec<f32> = gamma
        .iter()
        .zip(&variance)
        .map(|(g, v)| g / (v + epsilon).sqrt())
        .collect();
    let shift: Vec<f32> = beta
        .iter()
        .zip(&mean)
        .zip(&scale)
        .map(|((b, m), s)| b - m * s)
        .collect();
    let channels = scale.len();
    [scale, shift].map(|values| Tensor::from_data(TensorData::new(values, [channels]), device))
}

/// `bn.forward(x)`, followed by ReLU when `then_relu`. In training mode (an autodiff device and
/// the layer's training flag set, as burn's `BatchNorm` decides) on Flex `f32` tensors this is
/// one kernel, and the running statistics are updated as burn's `BatchNorm` updates them.
pub fn batch_norm(bn: &BatchNorm, x: Tensor<4>, then_relu: bool) -> Tensor<4> {
    let training = x.device().is_autodiff() && bn.training.is_enabled();
    let (gamma, beta) = (bn.gamma.val(), bn.beta.val());
    if !training && kernels_enabled() && batch_norm_kernel::inference_available(&x) {
        let [scale, shift] = inference_affine(bn, &x.device());
        return batch_norm_kernel::scale_shift(x, scale, shift, then_relu);
    }
    if !(training && kernels_enabled() && batch_norm_kernel::fused_available(&x, &gamma, &beta)) {
        let y = bn.forward(x);
        return if then_relu { relu(y) } else { y };
    }
    let (y, mean, variance) =
        batch_norm_kernel::batch_norm_train(x, gamma, beta, bn.epsilon, then_relu);
    update_running_statistics(bn, mean, variance);
    y
}

/// `bn`'s parameters where it normalises `x` in training mode on a kernel that folds it into
/// what follows (see [`TrainingBatchNorm`]); `None` where [`batch_norm`] would take burn's own
/// layer, or `bn` is in inference mode.
pub fn training_batch_norm(bn: &BatchNorm, x: &Tensor<4>) -> Option<TrainingBatchNorm> {
    let training = x.device().is_autodiff() && bn.training.is_enabled();
    let norm = TrainingBatchNorm {
        gamma: bn.gamma.val(),
        beta: bn.beta.val(),
        epsilon: bn.epsilon,
    };
    let takes_kernel = training
        && kernels_enabled()
        && batch_norm_kernel::fused_available(x, &norm.gamma, &norm.beta);
    takes_kernel.then_some(norm)
}

/// Move `bn`'s running statistics towards a training batch's `mean` and biased `variance`, as
/// burn's `BatchNorm` does.
pub fn update_running_statistics(bn: &BatchNorm, mean: Tensor<1>, variance: Tensor<1>) {
    let device = mean.device();
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
                assert_matches_reference(
                    &values(a.value_sync()),
                    &values(b.value_sync()),
                    1e-6,
                    what,
                );
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

    /// Inference convolutions with the BatchNorm and ReLU, or the BatchNorm, residual add and
    /// ReLU, folded into the kernel give the bits of the separate kernels and the values of
    /// burn's layers, on odd shapes of each path: direct (3x3 stride 1), strided, pointwise,
    /// and stride 1 with more input channels than the direct path takes.
    #[test]
    fn folded_batch_norm_gives_the_separate_layers_bits() {
        let device = device();
        for (seed, (in_channels, out_channels, [h, w], kernel, stride, padding)) in [
            (5, 11, [9, 7], 3, 1, 1),
            (5, 11, [9, 7], 3, 2, 1),
            (6, 10, [5, 5], 1, 1, 0),
            (70, 9, [5, 3], 3, 1, 1),
        ]
        .into_iter()
        .enumerate()
        {
            let seed = seed as u64;
            let conv = Conv2dConfig::new([in_channels, out_channels], [kernel, kernel])
                .with_stride([stride, stride])
                .with_padding(PaddingConfig2d::Explicit(
                    padding, padding, padding, padding,
                ))
                .with_bias(false)
                .init(&device);
            let bn = trained_batch_norm(out_channels).valid();
            for batch in [1, 3] {
                let x = random_tensor([batch, in_channels, h, w], seed, &device);
                assert!(conv_kernel::affine_available(&x, &conv.weight.val()));
                let what = format!("{in_channels}->{out_channels} {kernel}x{kernel} s{stride}");
                for then_relu in [false, true] {
                    let fused = values(conv_batch_norm(&conv, &bn, x.clone(), then_relu));
                    let separate = batch_norm(&bn, conv2d(&conv, x.clone()), then_relu);
                    assert_eq!(fused, values(separate), "{what}, relu {then_relu}");
                    let burns = bn.forward(conv.forward(x.clone()));
                    let burns = if then_relu { relu(burns) } else { burns };
                    assert_matches_reference(&fused, &values(burns), 1e-4, &what);
                }
                let out_dims = conv2d(&conv, x.clone()).dims();
                let residual = random_tensor(out_dims, seed + 10, &device);
                let fused = conv_batch_norm_add_relu(&conv, &bn, x.clone(), residual.clone());
                let separate = add_relu(
                    batch_norm(&bn, conv2d(&conv, x.clone()), false),
                    residual.clone(),
                );
                assert_eq!(values(fused.clone()), values(separate), "{what}, residual");
                let burns = relu(bn.forward(conv.forward(x)) + residual);
                assert_matches_reference(&values(fused), &values(burns), 1e-4, &what);
            }
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
