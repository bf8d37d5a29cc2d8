//! Batch normalisation in training mode, optionally followed by ReLU, as one CPU kernel on the
//! Flex backend with a hand-written backward step.
//!
//! Ioffe & Szegedy, "Batch Normalization" (ICML 2015), in the place He et al.'s ResNets (CVPR
//! 2016) put it: after every convolution, usually followed by ReLU. burn's generic
//! `batch_norm_train` swaps the batch and channel axes into a copy for each of its two
//! reductions and then normalises in four element-wise passes, and its backward takes about a
//! dozen more; a separate ReLU adds a pass and an autodiff node each way. Here:
//! - forward: per channel, the mean and then the (biased) variance of its `B * H * W` values,
//!   two reads of a channel that stays in cache between them; then one pass writing
//!   `y = max(gamma * (x - mean) / sqrt(var + eps) + beta, 0)` (no `max` without ReLU);
//! - backward: per channel, `sum dz` and `sum dz * xhat` (with `dz = dy * [y > 0]` under ReLU),
//!   then one pass writing `dx = gamma / sqrt(var + eps) * (dz - mean(dz) - xhat * mean(dz * xhat))`
//!   over the `dy` it is handed; `dgamma = sum dz * xhat`, `dbeta = sum dz`.
//!
//! The batch statistics are returned beside the output, so the module updates its running
//! statistics as burn's `BatchNorm` does.

use burn::backend::autodiff::Autodiff;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::{
    AutodiffBackend, Backend, Dispatch, Flex, TensorMetadata, backend_extension,
    tensor::FloatTensor,
};
use burn::tensor::{Shape, Tensor};
use rayon::prelude::*;

use super::common::{
    self, LANES, assume_written, contiguous_values, dispatch_vector_width, flex_tensor,
    items_per_task, lane_sum, on_flex_f32, unwritten, writable_contiguous,
};

/// Batch normalisation with the batch's own statistics, optionally followed by ReLU, as a
/// backend extension operation.
///
/// Implemented for `Flex` and `Autodiff<Flex>`; any other backend takes burn's own batch
/// normalisation, which [`fused_available`] decides.
#[backend_extension(Flex, Autodiff)]
pub trait BatchNormOps: Backend {
    /// `(y, mean, var)`: `y = [relu](gamma * (x - mean) / sqrt(var + epsilon) + beta)` for `x`
    /// of shape `[B, C, H, W]` and `gamma`, `beta` of shape `[C]`, with the per-channel batch
    /// mean and biased variance, which are returned (untracked) for the running statistics.
    fn batch_norm_train_fused(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        epsilon: f64,
        relu: bool,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>);
}

/// Batch normalisation with fixed statistics (inference), optionally followed by ReLU, as a
/// backend extension operation on plain Flex tensors: one pass `y = [relu](x * scale + shift)`
/// where burn's `batch_norm` takes four and a ReLU one more. Not differentiable: under autodiff
/// the caller takes burn's own layers.
#[backend_extension(Flex)]
pub trait BatchNormInferenceOps: Backend {
    /// `y = [relu](x * scale + shift)` per channel of the `[B, C, H, W]` input, with `scale` and
    /// `shift` of shape `[C]`.
    fn scale_shift_fused(
        x: FloatTensor<Self>,
        scale: FloatTensor<Self>,
        shift: FloatTensor<Self>,
        relu: bool,
    ) -> FloatTensor<Self>;
}

/// Whether [`scale_shift`] can run on `x`: a plain (not autodiff) Flex `f32` tensor.
pub fn inference_available(x: &Tensor<4>) -> bool {
    on_flex_f32(x) && !x.device().is_autodiff()
}

/// `y = [relu](x * scale + shift)` per channel; the caller checks [`inference_available`] for
/// all three tensors' device and the shapes.
pub fn scale_shift(x: Tensor<4>, scale: Tensor<1>, shift: Tensor<1>, relu: bool) -> Tensor<4> {
    Tensor::from_dispatch(<Dispatch as BatchNormInferenceOps>::scale_shift_fused(
        x.into_dispatch(),
        scale.into_dispatch(),
        shift.into_dispatch(),
        relu,
    ))
}

impl BatchNormInferenceOps for Flex {
    fn scale_shift_fused(
        x: FlexTensor,
        scale: FlexTensor,
        shift: FlexTensor,
        relu: bool,
    ) -> FlexTensor {
        let shape = x.shape();
        let planes = Planes::of(&shape);
        let (scale, shift) = (contiguous_values(&scale), contiguous_values(&shift));
        assert_eq!(
            scale.len(),
            planes.channels,
            "scale_shift_fused: scale is not [C]"
        );
        assert_eq!(
            shift.len(),
            planes.channels,
            "scale_shift_fused: shift is not [C]"
        );
        let values = contiguous_values(&x);
        flex_tensor(normalise(&values, planes, &scale, &shift, relu), shape)
    }
}

/// `y = [relu](x * scale_c + shift_c)` over every plane.
fn normalise(values: &[f32], planes: Planes, scale: &[f32], shift: &[f32], relu: bool) -> Vec<f32> {
    let mut output = unwritten(values.len());
    let plane_len = planes.plane_len.max(1);
    output
        .par_chunks_mut(plane_len)
        .zip(values.par_chunks(plane_len))
        .with_min_len(items_per_task(plane_len))
        .enumerate()
        .for_each(|(index, (y, x))| {
            let c = index % planes.channels;
            normalise_plane(x, y, scale[c], shift[c], relu);
        });
    // SAFETY: every plane of the output was written.
    unsafe { assume_written(output) }
}

/// Whether [`batch_norm_train`] can run on these tensors: all live on the Flex backend (plain or
/// under autodiff) and hold `f32` values.
pub fn fused_available(x: &Tensor<4>, gamma: &Tensor<1>, beta: &Tensor<1>) -> bool {
    on_flex_f32(x) && on_flex_f32(gamma) && on_flex_f32(beta)
}

/// Run the kernel; returns the output and the batch mean and biased variance (`[C]`, not
/// tracked). The caller checks [`fused_available`] and the shapes.
pub fn batch_norm_train(
    x: Tensor<4>,
    gamma: Tensor<1>,
    beta: Tensor<1>,
    epsilon: f64,
    relu: bool,
) -> (Tensor<4>, Tensor<1>, Tensor<1>) {
    let (output, mean, variance) = <Dispatch as BatchNormOps>::batch_norm_train_fused(
        x.into_dispatch(),
        gamma.into_dispatch(),
        beta.into_dispatch(),
        epsilon,
        relu,
    );
    (
        Tensor::from_dispatch(output),
        Tensor::from_dispatch(mean),
        Tensor::from_dispatch(variance),
    )
}

impl BatchNormOps for Flex {
    fn batch_norm_train_fused(
        x: FlexTensor,
        gamma: FlexTensor,
        beta: FlexTensor,
        epsilon: f64,
        relu: bool,
    ) -> (FlexTensor, FlexTensor, FlexTensor) {
        let (output, statistics) = forward(&x, &gamma, &beta, epsilon, relu);
        let channels = statistics.mean.len();
        (
            output,
            flex_tensor(statistics.mean, Shape::new([channels])),
            flex_tensor(statistics.variance, Shape::new([channels])),
        )
    }
}

impl<C: CheckpointStrategy> BatchNormOps for Autodiff<Flex, C> {
    fn batch_norm_train_fused(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        epsilon: f64,
        relu: bool,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        let guards = [x.node(), gamma.node(), beta.node()];
        let x = x.into_primitive();
        let gamma = gamma.into_primitive();
        let beta = beta.into_primitive();
        let (output, statistics) = forward(&x, &gamma, &beta, epsilon, relu);
        let channels = statistics.mean.len();
        let mean = <Self as AutodiffBackend>::from_inner(flex_tensor(
            statistics.mean.clone(),
            Shape::new([channels]),
        ));
        let variance = <Self as AutodiffBackend>::from_inner(flex_tensor(
            statistics.variance.clone(),
            Shape::new([channels]),
        ));
        let output = match BatchNormBackward
            .prepare::<C>(guards)
            .compute_bound()
            .stateful()
        {
            // The output is kept for ReLU's mask (it shares the buffer the next layer reads);
            // `x` for the normalised values, recomputed from the saved statistics.
            OpsKind::Tracked(prep) => {
                let inv_std = statistics.inverse_std(epsilon);
                let state = SavedState {
                    x,
                    output: relu.then(|| output.clone()),
                    gamma: contiguous_values(&gamma).into_owned(),
                    mean: statistics.mean,
                    inv_std,
                };
                prep.finish(state, output)
            }
            OpsKind::UnTracked(prep) => prep.finish(output),
        };
        (output, mean, variance)
    }
}

/// The autodiff node of [`BatchNormOps::batch_norm_train_fused`].
#[derive(Debug)]
struct BatchNormBackward;

/// What the backward step needs: the input, the output under ReLU (both shared, not copied),
/// `gamma`, and the batch mean and `1 / sqrt(var + eps)` per channel.
#[derive(Debug, Clone)]
struct SavedState {
    x: FlexTensor,
    output: Option<FlexTensor>,
    gamma: Vec<f32>,
    mean: Vec<f32>,
    inv_std: Vec<f32>,
}

impl Backward<Flex, 3> for BatchNormBackward {
    type State = SavedState;

    fn backward(
        self,
        ops: Ops<Self::State, 3>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        let [x_node, gamma_node, beta_node] = ops.parents;
        let grad_output = grads.consume::<Flex>(&ops.node);
        let state = ops.state;
        let shape = state.x.shape();
        let (grad_x, grad_gamma, grad_beta) = backward(&state, grad_output, x_node.is_some());
        let channels = Shape::new([state.gamma.len()]);
        if let (Some(node), Some(grad_x)) = (x_node, grad_x) {
            debug_assert_eq!(grad_x.shape(), shape);
            grads.register::<Flex>(node.id, grad_x);
        }
        if let Some(node) = gamma_node {
            grads.register::<Flex>(node.id, flex_tensor(grad_gamma, channels.clone()));
        }
        if let Some(node) = beta_node {
            grads.register::<Flex>(node.id, flex_tensor(grad_beta, channels));
        }
    }
}

/// The per-channel batch mean and biased variance.
#[derive(Debug, Clone)]
pub(super) struct Statistics {
    /// Per channel, the mean over the batch and the pixels.
    pub(super) mean: Vec<f32>,
    /// Per channel, the biased variance.
    pub(super) variance: Vec<f32>,
}

impl Statistics {
    /// `(scale, shift)` per channel with `y = x * scale + shift` the normalised, scaled and
    /// shifted value, as the forward pass writes it.
    pub(super) fn affine(&self, gamma: &[f32], beta: &[f32], epsilon: f64) -> (Vec<f32>, Vec<f32>) {
        self.mean
            .iter()
            .zip(&self.variance)
            .zip(gamma.iter().zip(beta))
            .map(|((&mean, &variance), (&g, &b))| {
                let scale = g / (variance + epsilon as f32).sqrt();
                (scale, b - mean * scale)
            })
            .unzip()
    }

    /// `1 / sqrt(var + eps)` per channel.
    pub(super) fn inverse_std(&self, epsilon: f64) -> Vec<f32> {
        self.variance
            .iter()
            .map(|&v| 1.0 / (v + epsilon as f32).sqrt())
            .collect()
    }
}

/// `[B, C, H*W]` sizes of a feature map.
#[derive(Debug, Clone, Copy)]
struct Planes {
    batch: usize,
    channels: usize,
    plane_len: usize,
}

impl Planes {
    fn of(shape: &Shape) -> Self {
        let dims = shape.clone();
        Planes {
            batch: dims[0],
            channels: dims[1],
            plane_len: dims.num_elements() / (dims[0] * dims[1]).max(1),
        }
    }

    /// Channel `c`'s plane of sample `b`.
    fn plane<'a>(&self, values: &'a [f32], b: usize, c: usize) -> &'a [f32] {
        let start = (b * self.channels + c) * self.plane_len;
        &values[start..start + self.plane_len]
    }

    /// Values per channel over the batch.
    fn count(&self) -> f32 {
        (self.batch * self.plane_len) as f32
    }
}

dispatch_vector_width! {
    /// The mean and biased variance of channel `c`: two passes over its planes.
    // Not inlined into its rayon closure, so profiles name it even when the job was stolen.
    #[inline(never)]
    fn channel_statistics => channel_statistics_generic(planes: Planes, x: &[f32], c: usize, out: &mut (f32, f32))
}

#[inline(always)]
fn channel_statistics_generic(planes: Planes, x: &[f32], c: usize, out: &mut (f32, f32)) {
    let sum: f32 = (0..planes.batch)
        .map(|b| lane_sum(planes.plane(x, b, c), |v| v))
        .sum();
    let mean = sum / planes.count();
    let squares: f32 = (0..planes.batch)
        .map(|b| lane_sum(planes.plane(x, b, c), |v| (v - mean) * (v - mean)))
        .sum();
    *out = (mean, squares / planes.count());
}

dispatch_vector_width! {
    /// `y = [max](x * scale + shift, 0)` over one plane.
    // Not inlined into its rayon closure, so profiles name it even when the job was stolen.
    #[inline(never)]
    fn normalise_plane => normalise_plane_generic(x: &[f32], y: &mut [std::mem::MaybeUninit<f32>], scale: f32, shift: f32, relu: bool)
}

#[inline(always)]
fn normalise_plane_generic(
    x: &[f32],
    y: &mut [std::mem::MaybeUninit<f32>],
    scale: f32,
    shift: f32,
    relu: bool,
) {
    if relu {
        for (y, &x) in y.iter_mut().zip(x) {
            y.write(common::relu(x * scale + shift));
        }
    } else {
        for (y, &x) in y.iter_mut().zip(x) {
            y.write(x * scale + shift);
        }
    }
}

/// The forward pass: the output and the batch statistics.
fn forward(
    x: &FlexTensor,
    gamma: &FlexTensor,
    beta: &FlexTensor,
    epsilon: f64,
    relu: bool,
) -> (FlexTensor, Statistics) {
    let shape = x.shape();
    assert_eq!(
        shape.num_dims(),
        4,
        "batch_norm_train_fused: x must be [B, C, H, W]"
    );
    let planes = Planes::of(&shape);
    let values = contiguous_values(x);
    let gamma = contiguous_values(gamma);
    let beta = contiguous_values(beta);
    assert_eq!(
        gamma.len(),
        planes.channels,
        "batch_norm_train_fused: gamma is not [C]"
    );
    assert_eq!(
        beta.len(),
        planes.channels,
        "batch_norm_train_fused: beta is not [C]"
    );
    let statistics = batch_statistics(&values, &shape);
    let (scale, shift) = statistics.affine(&gamma, &beta, epsilon);
    let output = normalise(&values, planes, &scale, &shift, relu);
    (flex_tensor(output, shape), statistics)
}

/// The per-channel batch mean and biased variance of `values`, a `[B, C, H, W]` map of `shape`.
pub(super) fn batch_statistics(values: &[f32], shape: &Shape) -> Statistics {
    let planes = Planes::of(shape);
    let mut statistics = vec![(0.0f32, 0.0f32); planes.channels];
    statistics
        .par_iter_mut()
        .enumerate()
        .for_each(|(c, out)| channel_statistics(planes, values, c, out));
    let (mean, variance) = statistics.into_iter().unzip();
    Statistics { mean, variance }
}

dispatch_vector_width! {
    /// `(sum dz, sum dz * xhat)` of channel `c`, `dz = dy * [y > 0]` when `y` is given;
    /// `moments` is the channel's `[mean, 1 / sqrt(var + eps)]`.
    // Not inlined into its rayon closure, so profiles name it even when the job was stolen.
    #[inline(never)]
    fn channel_gradient_sums => channel_gradient_sums_generic(planes: Planes, x: &[f32], dy: &[f32], y: Option<&[f32]>, c: usize, moments: [f32; 2], out: &mut (f32, f32))
}

#[inline(always)]
fn channel_gradient_sums_generic(
    planes: Planes,
    x: &[f32],
    dy: &[f32],
    y: Option<&[f32]>,
    c: usize,
    [mean, inv_std]: [f32; 2],
    out: &mut (f32, f32),
) {
    let mut lanes_dz = [0.0f32; LANES];
    let mut lanes_dz_x = [0.0f32; LANES];
    // `dz` and `x - mean` of `LANES` values at a time into the lanes; the ReLU mask is a select,
    // so both loops vectorise.
    let mut accumulate = |dz: &[f32], x: &[f32]| {
        for ((sum, sum_x), (&dz, &x)) in lanes_dz
            .iter_mut()
            .zip(lanes_dz_x.iter_mut())
            .zip(dz.iter().zip(x))
        {
            *sum += dz;
            *sum_x += dz * (x - mean);
        }
    };
    let mut masked = [0.0f32; LANES];
    for b in 0..planes.batch {
        let (x, dy) = (planes.plane(x, b, c), planes.plane(dy, b, c));
        match y.map(|y| planes.plane(y, b, c)) {
            Some(y) => {
                let mut x_chunks = x.chunks(LANES);
                for (dy, y) in dy.chunks(LANES).zip(y.chunks(LANES)) {
                    let n = dy.len();
                    for ((m, &d), &y) in masked.iter_mut().zip(dy).zip(y) {
                        *m = if y > 0.0 { d } else { 0.0 };
                    }
                    accumulate(&masked[..n], x_chunks.next().expect("same length"));
                }
            }
            None => {
                for (dy, x) in dy.chunks(LANES).zip(x.chunks(LANES)) {
                    accumulate(dy, x);
                }
            }
        }
    }
    let sum_dz: f32 = lanes_dz.iter().sum();
    let sum_dz_xhat: f32 = lanes_dz_x.iter().sum();
    *out = (sum_dz, sum_dz_xhat * inv_std);
}

dispatch_vector_width! {
    /// `dx = k * (dz - a - xhat * m)` over one plane, written over `dy`.
    // Not inlined into its rayon closure, so profiles name it even when the job was stolen.
    #[inline(never)]
    fn input_gradient_plane => input_gradient_plane_generic(x: &[f32], dy: &mut [f32], y: Option<&[f32]>, coefficients: [f32; 5])
}

/// `coefficients = [mean, inv_std, gamma * inv_std, mean(dz), mean(dz * xhat)]`.
#[inline(always)]
fn input_gradient_plane_generic(
    x: &[f32],
    dy: &mut [f32],
    y: Option<&[f32]>,
    [mean, inv_std, scale, mean_dz, mean_dz_xhat]: [f32; 5],
) {
    match y {
        Some(y) => {
            for ((d, &x), &y) in dy.iter_mut().zip(x).zip(y) {
                let dz = if y > 0.0 { *d } else { 0.0 };
                *d = scale * (dz - mean_dz - (x - mean) * inv_std * mean_dz_xhat);
            }
        }
        None => {
            for (d, &x) in dy.iter_mut().zip(x) {
                *d = scale * (*d - mean_dz - (x - mean) * inv_std * mean_dz_xhat);
            }
        }
    }
}

/// The backward pass: `dx` (when wanted), `dgamma` and `dbeta`.
fn backward(
    state: &SavedState,
    grad_output: FlexTensor,
    want_x: bool,
) -> (Option<FlexTensor>, Vec<f32>, Vec<f32>) {
    let shape = state.x.shape();
    let planes = Planes::of(&shape);
    let x = contiguous_values(&state.x);
    let y = state.output.as_ref().map(contiguous_values);
    let mut grad = writable_contiguous(grad_output);
    let mut sums = vec![(0.0f32, 0.0f32); planes.channels];
    {
        let dy = grad.as_slice::<f32>().expect("contiguous f32");
        sums.par_iter_mut().enumerate().for_each(|(c, out)| {
            channel_gradient_sums(
                planes,
                &x,
                dy,
                y.as_deref(),
                c,
                [state.mean[c], state.inv_std[c]],
                out,
            )
        });
    }
    let (grad_beta, grad_gamma): (Vec<f32>, Vec<f32>) = sums.iter().copied().unzip();
    if !want_x {
        return (None, grad_gamma, grad_beta);
    }
    let dy = grad
        .try_storage_mut::<f32>()
        .expect("writable_contiguous gives an unshared buffer");
    let moments = ChannelMoments {
        mean: &state.mean,
        inv_std: &state.inv_std,
        gamma: &state.gamma,
    };
    input_gradient(&shape, &x, dy, y.as_deref(), moments, &sums);
    (Some(grad), grad_gamma, grad_beta)
}

/// What the input gradient needs of each channel: the batch mean, `1 / sqrt(var + eps)`, and
/// `gamma`.
#[derive(Clone, Copy)]
pub(super) struct ChannelMoments<'a> {
    /// The batch mean per channel.
    pub(super) mean: &'a [f32],
    /// `1 / sqrt(var + eps)` per channel.
    pub(super) inv_std: &'a [f32],
    /// The scale per channel.
    pub(super) gamma: &'a [f32],
}

/// `dx` over `dy` (of a `[B, C, H, W]` map of `shape`, input `x`, output `y` under ReLU) from
/// the channels' `(sum dz, sum dz * xhat)`, `dz = dy * [y > 0]`.
pub(super) fn input_gradient(
    shape: &Shape,
    x: &[f32],
    dy: &mut [f32],
    y: Option<&[f32]>,
    moments: ChannelMoments,
    sums: &[(f32, f32)],
) {
    let planes = Planes::of(shape);
    let count = planes.count();
    let plane_len = planes.plane_len.max(1);
    dy.par_chunks_mut(plane_len)
        .zip(x.par_chunks(plane_len))
        .enumerate()
        .for_each(|(index, (dy, x))| {
            let c = index % planes.channels;
            let y = y.map(|y| &y[index * plane_len..(index + 1) * plane_len]);
            let coefficients = [
                moments.mean[c],
                moments.inv_std[c],
                moments.gamma[c] * moments.inv_std[c],
                sums[c].0 / count,
                sums[c].1 / count,
            ];
            input_gradient_plane(x, dy, y, coefficients);
        });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attention::testing::{assert_matches_reference, device, random_tensor, values};
    use burn::tensor::TensorData;
    use burn::tensor::activation::relu as burn_relu;
    use burn::tensor::module::batch_norm_train as burn_batch_norm_train;

    /// burn's own training-mode batch normalisation (and ReLU), the reference.
    fn reference(
        x: Tensor<4>,
        gamma: Tensor<1>,
        beta: Tensor<1>,
        relu: bool,
    ) -> (Tensor<4>, Tensor<1>, Tensor<1>) {
        let result = burn_batch_norm_train(x, gamma, beta, 1e-5);
        let output = if relu {
            burn_relu(result.output)
        } else {
            result.output
        };
        (output, result.mean, result.variance)
    }

    /// Channels not a multiple of 8, odd maps, batches of 1 and 3, a 1x1 map.
    const SHAPES: [[usize; 4]; 4] = [[3, 5, 7, 9], [1, 11, 5, 5], [3, 6, 1, 1], [2, 16, 8, 8]];

    fn affine(channels: usize, seed: u64, device: &burn::tensor::Device) -> (Tensor<1>, Tensor<1>) {
        let values = crate::attention::testing::seeded_values(2 * channels, seed);
        let gamma: Vec<f32> = values[..channels].iter().map(|v| 1.0 + v).collect();
        (
            Tensor::from_data(TensorData::new(gamma, [channels]), device),
            Tensor::from_data(
                TensorData::new(values[channels..].to_vec(), [channels]),
                device,
            ),
        )
    }

    #[test]
    fn forward_and_statistics_match_burns_batch_norm() {
        let device = device();
        for relu in [false, true] {
            for (case, shape) in SHAPES.into_iter().enumerate() {
                let x = random_tensor(shape, case as u64, &device) * 3.0 + 0.5;
                let (gamma, beta) = affine(shape[1], 10 + case as u64, &device);
                assert!(fused_available(&x, &gamma, &beta));
                let (y, mean, var) =
                    batch_norm_train(x.clone(), gamma.clone(), beta.clone(), 1e-5, relu);
                let (y_ref, mean_ref, var_ref) = reference(x, gamma, beta, relu);
                let what = format!("shape {shape:?} relu {relu}");
                assert_matches_reference(&values(y), &values(y_ref), 1e-5, &format!("{what} y"));
                assert_matches_reference(
                    &values(mean),
                    &values(mean_ref),
                    1e-5,
                    &format!("{what} mean"),
                );
                assert_matches_reference(
                    &values(var),
                    &values(var_ref),
                    1e-5,
                    &format!("{what} var"),
                );
            }
        }
    }

    #[test]
    fn gradients_match_burns_autodiff() {
        let device = device().autodiff();
        for relu in [false, true] {
            for (case, shape) in SHAPES.into_iter().enumerate() {
                let x = random_tensor(shape, case as u64, &device) * 3.0 + 0.5;
                let (gamma, beta) = affine(shape[1], 10 + case as u64, &device);
                let probe = random_tensor(shape, 20 + case as u64, &device);
                let gradients = |kernel: bool| {
                    let x = x.clone().require_grad();
                    let (gamma, beta) = (gamma.clone().require_grad(), beta.clone().require_grad());
                    let y = if kernel {
                        batch_norm_train(x.clone(), gamma.clone(), beta.clone(), 1e-5, relu).0
                    } else {
                        reference(x.clone(), gamma.clone(), beta.clone(), relu).0
                    };
                    let grads = (y * probe.clone()).sum().backward();
                    [
                        values(x.grad(&grads).unwrap()),
                        values(gamma.grad(&grads).unwrap()),
                        values(beta.grad(&grads).unwrap()),
                    ]
                };
                let (fused, burn) = (gradients(true), gradients(false));
                for (name, (f, r)) in ["dx", "dgamma", "dbeta"]
                    .iter()
                    .zip(fused.iter().zip(&burn))
                {
                    assert_matches_reference(
                        f,
                        r,
                        1e-4,
                        &format!("shape {shape:?} relu {relu} {name}"),
                    );
                }
            }
        }
    }

    #[test]
    fn gradients_match_finite_differences() {
        let device = device().autodiff();
        let shape = [3, 2, 2, 3];
        let len = 3 * 2 * 2 * 3;
        let x_values: Vec<f64> = (0..len)
            .map(|i| ((i * 37 % 23) as f64 - 11.0) / 4.0)
            .collect();
        let probe: Vec<f32> = (0..len)
            .map(|i| ((i * 7 % 13) as f32 - 6.0) / 5.0)
            .collect();
        let gamma_values = [1.5f64, -0.7];
        let beta_values = [0.3f64, 0.2];
        let loss = |x: &[f64], gamma: &[f64], beta: &[f64], track: bool| {
            let to = |v: &[f64], s: Vec<usize>| {
                Tensor::<1>::from_data(
                    TensorData::new(v.iter().map(|&v| v as f32).collect::<Vec<_>>(), s),
                    &device,
                )
            };
            let x = Tensor::<4>::from_data(
                TensorData::new(x.iter().map(|&v| v as f32).collect::<Vec<_>>(), shape),
                &device,
            );
            let (x, gamma, beta) = if track {
                (
                    x.require_grad(),
                    to(gamma, vec![2]).require_grad(),
                    to(beta, vec![2]).require_grad(),
                )
            } else {
                (x, to(gamma, vec![2]), to(beta, vec![2]))
            };
            let probe = Tensor::<4>::from_data(TensorData::new(probe.clone(), shape), &device);
            let y = batch_norm_train(x.clone(), gamma.clone(), beta.clone(), 1e-5, true).0;
            let loss = (y * probe).sum();
            (loss, x, gamma, beta)
        };
        let (l, x, gamma, beta) = loss(&x_values, &gamma_values, &beta_values, true);
        let grads = l.backward();
        let analytic = [
            values(x.grad(&grads).unwrap()),
            values(gamma.grad(&grads).unwrap()),
            values(beta.grad(&grads).unwrap()),
        ];
        let value =
            |x: &[f64], g: &[f64], b: &[f64]| loss(x, g, b, false).0.into_scalar::<f32>() as f64;
        let step = 1e-3;
        let inputs: [Vec<f64>; 3] = [
            x_values.clone(),
            gamma_values.to_vec(),
            beta_values.to_vec(),
        ];
        for (which, analytic) in analytic.iter().enumerate() {
            for i in 0..inputs[which].len() {
                let mut plus = inputs.clone();
                let mut minus = inputs.clone();
                plus[which][i] += step;
                minus[which][i] -= step;
                let numeric = (value(&plus[0], &plus[1], &plus[2])
                    - value(&minus[0], &minus[1], &minus[2]))
                    / (2.0 * step);
                assert!(
                    (numeric - analytic[i] as f64).abs() < 2e-2,
                    "input {which} value {i}: numeric {numeric}, analytic {}",
                    analytic[i]
                );
            }
        }
    }

    #[test]
    fn a_nan_input_gives_nan_outputs_with_relu() {
        // A diverged layer must not come out as zeros: the trainer stops on a NaN loss.
        let device = device();
        let x = Tensor::<4>::from_data(
            TensorData::new(vec![1.0f32, f32::NAN, 3.0, 6.0], [2, 1, 1, 2]),
            &device,
        );
        let (gamma, beta) = affine(1, 1, &device);
        let (y, _, _) = batch_norm_train(x, gamma, beta, 1e-5, true);
        assert!(values(y).iter().all(|v| v.is_nan()));
    }

    #[test]
    fn a_hand_computed_case() {
        // One channel holding 1, 2, 3, 6 over a batch of 2 (2 values each): mean 3, biased
        // variance (4 + 1 + 0 + 9) / 4 = 3.5; with gamma 2 and beta 1, y = 2 (x - 3) / sqrt(3.5
        // + 1e-5) + 1, and ReLU zeroes the first two.
        let device = device();
        let x = Tensor::<4>::from_data(
            TensorData::new(vec![1.0f32, 2.0, 3.0, 6.0], [2, 1, 1, 2]),
            &device,
        );
        let gamma = Tensor::<1>::from_data(TensorData::new(vec![2.0f32], [1]), &device);
        let beta = Tensor::<1>::from_data(TensorData::new(vec![1.0f32], [1]), &device);
        let (y, mean, var) = batch_norm_train(x, gamma, beta, 1e-5, true);
        assert_eq!(values(mean), vec![3.0]);
        assert_eq!(values(var), vec![3.5]);
        let std = (3.5f32 + 1e-5).sqrt();
        let expected = [0.0, (-2.0 / std + 1.0).max(0.0), 1.0, 2.0 * 3.0 / std + 1.0];
        assert_matches_reference(&values(y), &expected, 1e-6, "y");
    }
}
