//! CBAM's passes over the feature map as fused CPU operations on the Flex backend.
//!
//! Woo et al., "CBAM: Convolutional Block Attention Module" (ECCV 2018); the unit is defined in
//! `cbam.rs`. Composed of burn tensor operations, CBAM makes about eight passes over the
//! feature map in the forward (spatial mean and max, the channel-gated map, channel mean and
//! max of it, their concatenation, the product) and more in the backward, which made it one of
//! the slowest units of the zoo in a ResNet-20 training step (+27% when composed so). Here
//! the three steps that touch the whole map are one pass each, and the spatial gate's
//! convolution is a direct one for its two input channels, all with hand-written backward
//! steps; the MLP on `[B, C]`, the BatchNorm and the sigmoids stay burn operations:
//! - [`channel_pools`]: `[B, C, H, W] -> [B, 2, C]`, each plane's mean and max;
//! - [`spatial_pools`]: `x` and the channel gate `w` `[B, C]` -> `[B, 2, H, W]`, the max and the
//!   mean over channels of `x * w`, without materialising `x * w`;
//! - [`spatial_conv`]: the `K x K` convolution of those two maps to one;
//! - [`gated_product`]: `x * w * s` for the channel gate `w` and the spatial gate `s`
//!   `[B, 1, H, W]`.
//!
//! The loops are written to vectorise (selects instead of branches, sums over separate lanes,
//! a span of outputs held in registers across the convolution's taps), and each runs a second
//! compilation with AVX2 where the processor has it (`kernels::dispatch_vector_width`).
//! The lane loops of the backward steps are written out in each kernel: one helper taking the
//! loop body as a closure over an index gave the same bits but ran the unit's forward and
//! backward 1.2-1.5x slower (its indexing was not vectorised).

use burn::backend::autodiff::Autodiff;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::{
    Backend, Dispatch, Flex, TensorMetadata, backend_extension, tensor::FloatTensor,
};
use burn::tensor::{Shape, Tensor};
use rayon::prelude::*;

use super::common::{
    LANES, assume_written, contiguous_values, dispatch_vector_width, flex_tensor, items_per_task,
    lane_max, lane_sum, on_flex_f32, unwritten, writable_contiguous,
};

/// CBAM's whole-map steps and spatial convolution as backend extension operations, for `Flex`
/// (forward only) and `Autodiff<Flex>` (with hand-written backward nodes).
#[backend_extension(Flex, Autodiff)]
pub trait CbamOps: Backend {
    /// `[B, C, H, W] -> [B, 2, C]`: each plane's mean (row 0) and max (row 1).
    fn cbam_channel_pools(x: FloatTensor<Self>) -> FloatTensor<Self>;
    /// `x` `[B, C, H, W]`, `gate` `[B, C]` -> `[B, 2, H, W]`: the max (channel 0) and mean
    /// (channel 1) over channels of `x * gate`.
    fn cbam_spatial_pools(x: FloatTensor<Self>, gate: FloatTensor<Self>) -> FloatTensor<Self>;
    /// `x * channel_gate * spatial_gate` for `x` `[B, C, H, W]`, `channel_gate` `[B, C]` and
    /// `spatial_gate` `[B, 1, H, W]`.
    fn cbam_gated_product(
        x: FloatTensor<Self>,
        channel_gate: FloatTensor<Self>,
        spatial_gate: FloatTensor<Self>,
    ) -> FloatTensor<Self>;
    /// The spatial gate's convolution: `pooled` `[B, I, H, W]` with `weight` `[1, I, K, K]`
    /// (odd `K`), stride 1, zero padding `(K - 1) / 2`, no bias -> `[B, 1, H, W]`.
    fn cbam_spatial_conv(pooled: FloatTensor<Self>, weight: FloatTensor<Self>)
    -> FloatTensor<Self>;
}

/// Whether the fused operations can run on `x`: Flex (plain or autodiff), `f32`.
pub fn fused_available(x: &Tensor<4>) -> bool {
    on_flex_f32(x)
}

/// Each plane's mean and max, `[B, 2, C]`; see [`CbamOps::cbam_channel_pools`].
pub fn channel_pools(x: Tensor<4>) -> Tensor<3> {
    Tensor::from_dispatch(<Dispatch as CbamOps>::cbam_channel_pools(x.into_dispatch()))
}

/// The max and mean over channels of `x * gate`, `[B, 2, H, W]`; see
/// [`CbamOps::cbam_spatial_pools`].
pub fn spatial_pools(x: Tensor<4>, gate: Tensor<2>) -> Tensor<4> {
    Tensor::from_dispatch(<Dispatch as CbamOps>::cbam_spatial_pools(
        x.into_dispatch(),
        gate.into_dispatch(),
    ))
}

/// The spatial gate's convolution; see [`CbamOps::cbam_spatial_conv`].
pub fn spatial_conv(pooled: Tensor<4>, weight: Tensor<4>) -> Tensor<4> {
    Tensor::from_dispatch(<Dispatch as CbamOps>::cbam_spatial_conv(
        pooled.into_dispatch(),
        weight.into_dispatch(),
    ))
}

/// `x * channel_gate * spatial_gate`; see [`CbamOps::cbam_gated_product`].
pub fn gated_product(x: Tensor<4>, channel_gate: Tensor<2>, spatial_gate: Tensor<4>) -> Tensor<4> {
    Tensor::from_dispatch(<Dispatch as CbamOps>::cbam_gated_product(
        x.into_dispatch(),
        channel_gate.into_dispatch(),
        spatial_gate.into_dispatch(),
    ))
}

impl CbamOps for Flex {
    fn cbam_channel_pools(x: FlexTensor) -> FlexTensor {
        channel_pools_forward(&x)
    }

    fn cbam_spatial_pools(x: FlexTensor, gate: FlexTensor) -> FlexTensor {
        spatial_pools_forward(&x, &gate, false).0
    }

    fn cbam_gated_product(
        x: FlexTensor,
        channel_gate: FlexTensor,
        spatial_gate: FlexTensor,
    ) -> FlexTensor {
        gated_product_forward(&x, &channel_gate, &spatial_gate)
    }

    fn cbam_spatial_conv(pooled: FlexTensor, weight: FlexTensor) -> FlexTensor {
        spatial_conv_forward(&pooled, &weight)
    }
}

impl<C: CheckpointStrategy> CbamOps for Autodiff<Flex, C> {
    fn cbam_channel_pools(x: FloatTensor<Self>) -> FloatTensor<Self> {
        let guards = [x.node()];
        let x = x.into_primitive();
        let output = channel_pools_forward(&x);
        match ChannelPoolsBackward
            .prepare::<C>(guards)
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let pools = output.clone();
                prep.finish((x, pools), output)
            }
            OpsKind::UnTracked(prep) => prep.finish(output),
        }
    }

    fn cbam_spatial_pools(x: FloatTensor<Self>, gate: FloatTensor<Self>) -> FloatTensor<Self> {
        let guards = [x.node(), gate.node()];
        let (x, gate) = (x.into_primitive(), gate.into_primitive());
        match SpatialPoolsBackward
            .prepare::<C>(guards)
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let (output, argmax) = spatial_pools_forward(&x, &gate, true);
                prep.finish((x, gate, std::sync::Arc::new(argmax)), output)
            }
            OpsKind::UnTracked(prep) => prep.finish(spatial_pools_forward(&x, &gate, false).0),
        }
    }

    fn cbam_gated_product(
        x: FloatTensor<Self>,
        channel_gate: FloatTensor<Self>,
        spatial_gate: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        let guards = [x.node(), channel_gate.node(), spatial_gate.node()];
        let x = x.into_primitive();
        let (channel_gate, spatial_gate) =
            (channel_gate.into_primitive(), spatial_gate.into_primitive());
        let output = gated_product_forward(&x, &channel_gate, &spatial_gate);
        match GatedProductBackward
            .prepare::<C>(guards)
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish((x, channel_gate, spatial_gate), output),
            OpsKind::UnTracked(prep) => prep.finish(output),
        }
    }

    fn cbam_spatial_conv(
        pooled: FloatTensor<Self>,
        weight: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        let guards = [pooled.node(), weight.node()];
        let (pooled, weight) = (pooled.into_primitive(), weight.into_primitive());
        let output = spatial_conv_forward(&pooled, &weight);
        match SpatialConvBackward
            .prepare::<C>(guards)
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish((pooled, weight), output),
            OpsKind::UnTracked(prep) => prep.finish(output),
        }
    }
}

/// `[B, C, H, W]` as `(B, C, H * W)`.
fn dims(x: &FlexTensor) -> (usize, usize, usize) {
    let [batch, channels, height, width] = x.shape().dims();
    (batch, channels, height * width)
}

fn channel_pools_forward(x: &FlexTensor) -> FlexTensor {
    let (batch, channels, pixels) = dims(x);
    let values = contiguous_values(x);
    let mut pools = vec![0.0f32; batch * 2 * channels];
    pools
        .par_chunks_mut(2 * channels)
        .zip(values.par_chunks((channels * pixels).max(1)))
        .with_min_len(items_per_task(channels * pixels))
        .for_each(|(pools, sample)| {
            let (means, maxima) = pools.split_at_mut(channels);
            for ((mean, maximum), plane) in means
                .iter_mut()
                .zip(maxima)
                .zip(sample.chunks(pixels.max(1)))
            {
                *mean = lane_sum(plane, |x| x) / pixels as f32;
                *maximum = lane_max(plane);
            }
        });
    flex_tensor(pools, Shape::new([batch, 2, channels]))
}

#[derive(Debug)]
struct ChannelPoolsBackward;

impl Backward<Flex, 1> for ChannelPoolsBackward {
    /// The input and the pools it gave.
    type State = (FlexTensor, FlexTensor);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [x_node] = ops.parents;
        let grad_pools = grads.consume::<Flex>(&ops.node);
        let Some(node) = x_node else { return };
        let (x, pools) = &ops.state;
        let (_, channels, pixels) = dims(x);
        let (values, pools) = (contiguous_values(x), contiguous_values(pools));
        let grad_pools = contiguous_values(&grad_pools);
        let mut grad_x = vec![0.0f32; values.len()];
        grad_x
            .par_chunks_mut((channels * pixels).max(1))
            .zip(values.par_chunks((channels * pixels).max(1)))
            .zip(pools.par_chunks(2 * channels))
            .zip(grad_pools.par_chunks(2 * channels))
            .with_min_len(items_per_task(channels * pixels))
            .for_each(|(((grad, sample), pools), grad_pools)| {
                for (channel, (grad, plane)) in grad
                    .chunks_mut(pixels.max(1))
                    .zip(sample.chunks(pixels.max(1)))
                    .enumerate()
                {
                    grad.fill(grad_pools[channel] / pixels as f32);
                    // The max's gradient goes to its first occurrence, as burn's `max_dims`.
                    let maximum = pools[channels + channel];
                    if let Some(at) = plane.iter().position(|&v| v == maximum) {
                        grad[at] += grad_pools[channels + channel];
                    }
                }
            });
        grads.register::<Flex>(node.id, flex_tensor(grad_x, x.shape()));
    }
}

/// The pools and, per pixel, the channel that gave the max (for the backward step).
/// The spatial pools of `x * gate`, and each pixel's max channel when `keep_argmax` (what the
/// backward step needs; inference skips it).
fn spatial_pools_forward(
    x: &FlexTensor,
    gate: &FlexTensor,
    keep_argmax: bool,
) -> (FlexTensor, Vec<u32>) {
    let (batch, channels, pixels) = dims(x);
    let (values, gate) = (contiguous_values(x), contiguous_values(gate));
    let mut pools = vec![0.0f32; batch * 2 * pixels];
    let mut argmax = vec![0u32; if keep_argmax { batch * pixels } else { 0 }];
    let argmax_len = if keep_argmax { pixels } else { 0 };
    let mut argmax_chunks: Vec<&mut [u32]> = if keep_argmax {
        argmax.chunks_mut(pixels.max(1)).collect()
    } else {
        (0..batch).map(|_| <&mut [u32]>::default()).collect()
    };
    debug_assert!(argmax_chunks.iter().all(|chunk| chunk.len() == argmax_len));
    pools
        .par_chunks_mut((2 * pixels).max(1))
        .zip(argmax_chunks.par_iter_mut())
        .zip(values.par_chunks((channels * pixels).max(1)))
        .zip(gate.par_chunks(channels.max(1)))
        .with_min_len(items_per_task(channels * pixels))
        .for_each(|(((pools, argmax), sample), gate)| {
            pool_sample(sample, gate, pools, argmax, pixels)
        });
    drop(argmax_chunks);
    let [_, _, height, width] = x.shape().dims();
    let shape = Shape::new([batch, 2, height, width]);
    (flex_tensor(pools, shape), argmax)
}

dispatch_vector_width! {
    /// One sample's max (first `pixels` of `pools`) and mean over channels of `sample * gate`,
    /// with each pixel's max channel in `argmax` unless it is empty.
    fn pool_sample => pool_sample_generic(
        sample: &[f32],
        gate: &[f32],
        pools: &mut [f32],
        argmax: &mut [u32],
        pixels: usize,
    )
}

#[inline(always)]
fn pool_sample_generic(
    sample: &[f32],
    gate: &[f32],
    pools: &mut [f32],
    argmax: &mut [u32],
    pixels: usize,
) {
    let channels = gate.len();
    let (maxima, means) = pools.split_at_mut(pixels);
    maxima.fill(f32::NEG_INFINITY);
    for (channel, (plane, &g)) in sample.chunks(pixels.max(1)).zip(gate).enumerate() {
        if argmax.is_empty() {
            for ((maximum, mean), &x) in maxima.iter_mut().zip(means.iter_mut()).zip(plane) {
                let value = x * g;
                // Strictly greater, as below (a NaN never replaces the maximum).
                *maximum = if value > *maximum { value } else { *maximum };
                *mean += value;
            }
        } else {
            let channel = channel as u32;
            for (((maximum, mean), at), &x) in maxima
                .iter_mut()
                .zip(means.iter_mut())
                .zip(argmax.iter_mut())
                .zip(plane)
            {
                let value = x * g;
                // Strictly greater: the first channel with the max keeps it, as burn's
                // `max_dim` gives it the gradient. Selects, not a branch, so it vectorises.
                let greater = value > *maximum;
                *maximum = if greater { value } else { *maximum };
                *at = if greater { channel } else { *at };
                *mean += value;
            }
        }
    }
    means.iter_mut().for_each(|mean| *mean /= channels as f32);
}

dispatch_vector_width! {
    /// One sample's backward step of the spatial pools: `grad` (`x`'s gradient) and `grad_gate`
    /// (one value per channel) from `grad_pools` (the max map's gradient, then the mean map's)
    /// and each pixel's max channel.
    fn pools_backward_sample => pools_backward_sample_generic(
        grad: &mut [f32],
        grad_gate: &mut [f32],
        sample: &[f32],
        gate: &[f32],
        grad_pools: &[f32],
        argmax: &[u32],
    )
}

#[inline(always)]
fn pools_backward_sample_generic(
    grad: &mut [f32],
    grad_gate: &mut [f32],
    sample: &[f32],
    gate: &[f32],
    grad_pools: &[f32],
    argmax: &[u32],
) {
    let (channels, pixels) = (gate.len(), argmax.len());
    let (grad_max, grad_mean) = grad_pools.split_at(pixels);
    // Each channel's share of the mean map's gradient, divided once per pixel, not per value.
    let grad_mean: Vec<f32> = grad_mean.iter().map(|d| d / channels as f32).collect();
    // Every value receives its pixel's mean share; this dense pass has no per-value choice, so
    // it vectorises (a branch or select on the max channel kept it scalar).
    let whole = pixels / LANES * LANES;
    for (((grad, plane), &g), grad_g) in grad
        .chunks_mut(pixels.max(1))
        .zip(sample.chunks(pixels.max(1)))
        .zip(gate)
        .zip(grad_gate.iter_mut())
    {
        // The gate's gradient over separate lanes, so the loop vectorises.
        let mut lanes = [0.0f32; LANES];
        for ((out, x), dmean) in grad[..whole]
            .chunks_exact_mut(LANES)
            .zip(plane[..whole].chunks_exact(LANES))
            .zip(grad_mean[..whole].chunks_exact(LANES))
        {
            for lane in 0..LANES {
                out[lane] = dmean[lane] * g;
                lanes[lane] += dmean[lane] * x[lane];
            }
        }
        let mut remainder = 0.0f32;
        for ((out, &x), &dmean) in grad[whole..]
            .iter_mut()
            .zip(&plane[whole..])
            .zip(&grad_mean[whole..])
        {
            *out = dmean * g;
            remainder += dmean * x;
        }
        *grad_g = lanes.iter().sum::<f32>() + remainder;
    }
    // Then each pixel's max channel alone receives the max map's gradient: one value per pixel.
    for (pixel, (&dmax, &channel)) in grad_max.iter().zip(argmax).enumerate() {
        let (channel, at) = (channel as usize, channel as usize * pixels + pixel);
        grad[at] += dmax * gate[channel];
        grad_gate[channel] += dmax * sample[at];
    }
}

#[derive(Debug)]
struct SpatialPoolsBackward;

impl Backward<Flex, 2> for SpatialPoolsBackward {
    /// The input, the gate and each pixel's max channel.
    type State = (FlexTensor, FlexTensor, std::sync::Arc<Vec<u32>>);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [x_node, gate_node] = ops.parents;
        let grad_pools = grads.consume::<Flex>(&ops.node);
        let (x, gate, argmax) = &ops.state;
        let (batch, channels, pixels) = dims(x);
        let (values, gate_values) = (contiguous_values(x), contiguous_values(gate));
        let grad_pools = contiguous_values(&grad_pools);
        let mut grad_x = vec![0.0f32; values.len()];
        let mut grad_gate = vec![0.0f32; batch * channels];
        grad_x
            .par_chunks_mut((channels * pixels).max(1))
            .zip(grad_gate.par_chunks_mut(channels.max(1)))
            .zip(values.par_chunks((channels * pixels).max(1)))
            .zip(gate_values.par_chunks(channels.max(1)))
            .zip(grad_pools.par_chunks((2 * pixels).max(1)))
            .zip(argmax.par_chunks(pixels.max(1)))
            .with_min_len(items_per_task(channels * pixels))
            .for_each(
                |(((((grad, grad_gate), sample), gate), grad_pools), argmax)| {
                    pools_backward_sample(grad, grad_gate, sample, gate, grad_pools, argmax)
                },
            );
        if let Some(node) = x_node {
            grads.register::<Flex>(node.id, flex_tensor(grad_x, x.shape()));
        }
        if let Some(node) = gate_node {
            grads.register::<Flex>(node.id, flex_tensor(grad_gate, gate.shape()));
        }
    }
}

fn gated_product_forward(
    x: &FlexTensor,
    channel_gate: &FlexTensor,
    spatial_gate: &FlexTensor,
) -> FlexTensor {
    let (_, channels, pixels) = dims(x);
    let values = contiguous_values(x);
    let (channel_gate, spatial_gate) = (
        contiguous_values(channel_gate),
        contiguous_values(spatial_gate),
    );
    let mut output = unwritten(values.len());
    output
        .par_chunks_mut((channels * pixels).max(1))
        .zip(values.par_chunks((channels * pixels).max(1)))
        .zip(channel_gate.par_chunks(channels.max(1)))
        .zip(spatial_gate.par_chunks(pixels.max(1)))
        .with_min_len(items_per_task(channels * pixels))
        .for_each(|(((out, sample), channel_gate), spatial_gate)| {
            gated_sample(sample, channel_gate, spatial_gate, out)
        });
    // SAFETY: every sample's planes are written in full above.
    flex_tensor(unsafe { assume_written(output) }, x.shape())
}

dispatch_vector_width! {
    /// One sample's `out = x * w_c * s` for its channel gate `w` and spatial gate `s`.
    fn gated_sample => gated_sample_generic(
        sample: &[f32],
        channel_gate: &[f32],
        spatial_gate: &[f32],
        out: &mut [std::mem::MaybeUninit<f32>],
    )
}

#[inline(always)]
fn gated_sample_generic(
    sample: &[f32],
    channel_gate: &[f32],
    spatial_gate: &[f32],
    out: &mut [std::mem::MaybeUninit<f32>],
) {
    let pixels = spatial_gate.len().max(1);
    for ((out, plane), &g) in out
        .chunks_mut(pixels)
        .zip(sample.chunks(pixels))
        .zip(channel_gate)
    {
        for ((y, &x), &s) in out.iter_mut().zip(plane).zip(spatial_gate) {
            y.write(x * g * s);
        }
    }
}

dispatch_vector_width! {
    /// One sample's backward step of `x * w * s`: `grad` holds `dy` on entry and `dx` on return;
    /// `grad_channel` (one value per channel) and `grad_spatial` (one per pixel, zero on entry)
    /// receive the gates' gradients.
    fn gated_backward_sample => gated_backward_sample_generic(
        grad: &mut [f32],
        grad_channel: &mut [f32],
        grad_spatial: &mut [f32],
        sample: &[f32],
        channel_gate: &[f32],
        spatial_gate: &[f32],
    )
}

#[inline(always)]
fn gated_backward_sample_generic(
    grad: &mut [f32],
    grad_channel: &mut [f32],
    grad_spatial: &mut [f32],
    sample: &[f32],
    channel_gate: &[f32],
    spatial_gate: &[f32],
) {
    let pixels = spatial_gate.len().max(1);
    let whole = spatial_gate.len() / LANES * LANES;
    for (((grad, plane), &g), grad_g) in grad
        .chunks_mut(pixels)
        .zip(sample.chunks(pixels))
        .zip(channel_gate)
        .zip(grad_channel.iter_mut())
    {
        // The channel gate's gradient over separate lanes, so the loop vectorises.
        let mut lanes = [0.0f32; LANES];
        for (((dy, x), s), grad_s) in grad[..whole]
            .chunks_exact_mut(LANES)
            .zip(plane[..whole].chunks_exact(LANES))
            .zip(spatial_gate[..whole].chunks_exact(LANES))
            .zip(grad_spatial[..whole].chunks_exact_mut(LANES))
        {
            for lane in 0..LANES {
                let dy_x = dy[lane] * x[lane];
                lanes[lane] += dy_x * s[lane];
                grad_s[lane] += dy_x * g;
                dy[lane] *= g * s[lane];
            }
        }
        for (lane, (((dy, &x), &s), grad_s)) in grad[whole..]
            .iter_mut()
            .zip(&plane[whole..])
            .zip(&spatial_gate[whole..])
            .zip(grad_spatial[whole..].iter_mut())
            .enumerate()
        {
            let dy_x = *dy * x;
            lanes[lane] += dy_x * s;
            *grad_s += dy_x * g;
            *dy *= g * s;
        }
        *grad_g = lanes.iter().sum();
    }
}

#[derive(Debug)]
struct GatedProductBackward;

impl Backward<Flex, 3> for GatedProductBackward {
    /// The three inputs.
    type State = (FlexTensor, FlexTensor, FlexTensor);

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [x_node, channel_node, spatial_node] = ops.parents;
        let grad_output = grads.consume::<Flex>(&ops.node);
        let (x, channel_gate, spatial_gate) = &ops.state;
        let (batch, channels, pixels) = dims(x);
        let values = contiguous_values(x);
        let (channel_values, spatial_values) = (
            contiguous_values(channel_gate),
            contiguous_values(spatial_gate),
        );
        let mut grad = writable_contiguous(grad_output);
        let mut grad_channel = vec![0.0f32; batch * channels];
        let mut grad_spatial = vec![0.0f32; batch * pixels];
        grad.try_storage_mut::<f32>()
            .expect("writable_contiguous returns an unshared tensor")
            .par_chunks_mut((channels * pixels).max(1))
            .zip(grad_channel.par_chunks_mut(channels.max(1)))
            .zip(grad_spatial.par_chunks_mut(pixels.max(1)))
            .zip(values.par_chunks((channels * pixels).max(1)))
            .zip(channel_values.par_chunks(channels.max(1)))
            .zip(spatial_values.par_chunks(pixels.max(1)))
            .with_min_len(items_per_task(channels * pixels))
            .for_each(
                |(((((grad, grad_channel), grad_spatial), sample), channel_gate), spatial_gate)| {
                    gated_backward_sample(
                        grad,
                        grad_channel,
                        grad_spatial,
                        sample,
                        channel_gate,
                        spatial_gate,
                    )
                },
            );
        if let Some(node) = channel_node {
            grads.register::<Flex>(node.id, flex_tensor(grad_channel, channel_gate.shape()));
        }
        if let Some(node) = spatial_node {
            grads.register::<Flex>(node.id, flex_tensor(grad_spatial, spatial_gate.shape()));
        }
        if let Some(node) = x_node {
            grads.register::<Flex>(node.id, grad);
        }
    }
}

/// The convolution's sizes: batch, input channels, height, width, kernel size.
fn conv_dims(pooled: &FlexTensor, weight: &FlexTensor) -> (usize, usize, usize, usize, usize) {
    let [batch, inputs, height, width] = pooled.shape().dims();
    let [_, _, kernel, _] = weight.shape().dims();
    (batch, inputs, height, width, kernel)
}

/// The output positions `y` whose input `y + offset - pad` lies inside `0..length` (empty
/// when the tap misses the map entirely).
#[inline(always)]
fn covered(length: usize, offset: usize, pad: usize) -> std::ops::Range<usize> {
    let start = pad.saturating_sub(offset).min(length);
    let end = (length + pad).saturating_sub(offset).min(length).max(start);
    start..end
}

/// `out[b, y, x] = sum_{i, ky, kx} w[i, ky, kx] in[b, i, y + ky - p, x + kx - p]`, as shifted
/// row additions: for each tap, the overlapping part of every row at once.
fn spatial_conv_forward(pooled: &FlexTensor, weight: &FlexTensor) -> FlexTensor {
    let (batch, inputs, height, width, kernel) = conv_dims(pooled, weight);
    let (values, weights) = (contiguous_values(pooled), contiguous_values(weight));
    let plane = height * width;
    let mut output = vec![0.0f32; batch * plane];
    output
        .par_chunks_mut(plane.max(1))
        .zip(values.par_chunks((inputs * plane).max(1)))
        .with_min_len(items_per_task(inputs * plane))
        .for_each(|(out, sample)| conv_sample(sample, &weights, out, width, kernel));
    flex_tensor(output, Shape::new([batch, 1, height, width]))
}

dispatch_vector_width! {
    /// One sample's convolution: `out` (one `height x width` plane, zero on entry) plus the
    /// `kernel x kernel` taps of each input plane of `sample`.
    fn conv_sample => conv_sample_generic(
        sample: &[f32],
        weights: &[f32],
        out: &mut [f32],
        width: usize,
        kernel: usize,
    )
}

/// The widest span of an output row the convolution sums at once: two 8-wide registers, two
/// independent chains of additions (32 values spilled out of registers and ran 3x slower).
const CONV_SPAN: usize = 16;

#[inline(always)]
fn conv_sample_generic(
    sample: &[f32],
    weights: &[f32],
    out: &mut [f32],
    width: usize,
    kernel: usize,
) {
    // Spans as wide as the rows need, rounded up to 8, so narrow maps do not sum dead lanes.
    match width {
        0..=8 => conv_spans::<8>(sample, weights, out, width, kernel),
        _ => conv_spans::<CONV_SPAN>(sample, weights, out, width, kernel),
    }
}

/// [`conv_sample_generic`] with every output row summed in spans of `SPAN` values, each held in
/// registers while all taps are added to it.
#[inline(always)]
fn conv_spans<const SPAN: usize>(
    sample: &[f32],
    weights: &[f32],
    out: &mut [f32],
    width: usize,
    kernel: usize,
) {
    let pad = (kernel - 1) / 2;
    let plane = out.len();
    let height = plane / width.max(1);
    // The input planes with a zero border (and `SPAN` more zeros right of each row), so every
    // tap reads a whole span. Border taps add exact zeros, so each output is the same sum, in
    // the same order, as over the covered taps only.
    let (padded_width, padded_height) = (width + 2 * pad + SPAN, height + 2 * pad);
    let padded_plane = padded_width * padded_height;
    let inputs = sample.len() / plane.max(1);
    let mut padded = vec![0.0f32; inputs * padded_plane];
    for (padded, input) in padded
        .chunks_mut(padded_plane.max(1))
        .zip(sample.chunks(plane.max(1)))
    {
        for (y, row) in input.chunks(width.max(1)).enumerate() {
            padded[(y + pad) * padded_width + pad..][..width].copy_from_slice(row);
        }
    }
    for (y, out_row) in out.chunks_mut(width.max(1)).enumerate() {
        for (span_start, out_span) in (0..width).step_by(SPAN).zip(out_row.chunks_mut(SPAN)) {
            let mut sums = [0.0f32; SPAN];
            for (padded, taps) in padded
                .chunks(padded_plane.max(1))
                .zip(weights.chunks(kernel * kernel))
            {
                for (ky, row_taps) in taps.chunks(kernel).enumerate() {
                    let row = &padded[(y + ky) * padded_width + span_start..];
                    for (kx, &w) in row_taps.iter().enumerate() {
                        let source: &[f32; SPAN] =
                            row[kx..kx + SPAN].try_into().expect("a whole span");
                        for (sum, &v) in sums.iter_mut().zip(source) {
                            *sum += w * v;
                        }
                    }
                }
            }
            out_span.copy_from_slice(&sums[..out_span.len()]);
        }
    }
}

#[derive(Debug)]
struct SpatialConvBackward;

impl Backward<Flex, 2> for SpatialConvBackward {
    /// The input and the weight.
    type State = (FlexTensor, FlexTensor);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [pooled_node, weight_node] = ops.parents;
        let grad_output = grads.consume::<Flex>(&ops.node);
        let (pooled, weight) = &ops.state;
        let (batch, inputs, height, width, kernel) = conv_dims(pooled, weight);
        let (values, weights) = (contiguous_values(pooled), contiguous_values(weight));
        let grad_output = contiguous_values(&grad_output);
        let plane = height * width;
        let taps = inputs * kernel * kernel;
        let mut grad_pooled = vec![0.0f32; values.len()];
        // Weight gradients per sample, summed in sample order afterwards, so the result does not
        // depend on the thread count.
        let mut grad_weight_per_sample = vec![0.0f32; batch * taps];
        grad_pooled
            .par_chunks_mut((inputs * plane).max(1))
            .zip(grad_weight_per_sample.par_chunks_mut(taps.max(1)))
            .zip(values.par_chunks((inputs * plane).max(1)))
            .zip(grad_output.par_chunks(plane.max(1)))
            .with_min_len(items_per_task(inputs * plane))
            .for_each(|(((grad_in, grad_w), sample), grad_out)| {
                conv_backward_sample(grad_in, grad_w, sample, &weights, grad_out, width, kernel)
            });
        if let Some(node) = pooled_node {
            grads.register::<Flex>(node.id, flex_tensor(grad_pooled, pooled.shape()));
        }
        if let Some(node) = weight_node {
            let mut grad_weight = vec![0.0f32; taps];
            for sample in grad_weight_per_sample.chunks(taps.max(1)) {
                for (total, value) in grad_weight.iter_mut().zip(sample) {
                    *total += value;
                }
            }
            grads.register::<Flex>(node.id, flex_tensor(grad_weight, weight.shape()));
        }
    }
}

dispatch_vector_width! {
    /// One sample's convolution backward: adds to `grad_in` (its input planes' gradient, zero on
    /// entry) and to `grad_w` (its share of the weight gradient, zero on entry) from `grad_out`,
    /// the gradient of its one output plane of rows of `width`.
    fn conv_backward_sample => conv_backward_sample_generic(
        grad_in: &mut [f32],
        grad_w: &mut [f32],
        sample: &[f32],
        weights: &[f32],
        grad_out: &[f32],
        width: usize,
        kernel: usize,
    )
}

#[inline(always)]
fn conv_backward_sample_generic(
    grad_in: &mut [f32],
    grad_w: &mut [f32],
    sample: &[f32],
    weights: &[f32],
    grad_out: &[f32],
    width: usize,
    kernel: usize,
) {
    let pad = (kernel - 1) / 2;
    let plane = grad_out.len();
    let height = plane / width.max(1);
    for (((grad_input, input), tap_weights), tap_grads) in grad_in
        .chunks_mut(plane.max(1))
        .zip(sample.chunks(plane.max(1)))
        .zip(weights.chunks(kernel * kernel))
        .zip(grad_w.chunks_mut(kernel * kernel))
    {
        // Tap by tap, so each tap's weight gradient stays in `LANES` accumulators over all the
        // rows it covers and is summed across lanes once per plane, not once per row.
        for ky in 0..kernel {
            let ys = covered(height, ky, pad);
            for kx in 0..kernel {
                let xs = covered(width, kx, pad);
                if xs.is_empty() {
                    continue;
                }
                let tap = ky * kernel + kx;
                let mut lanes = [0.0f32; LANES];
                let mut remainders = 0.0f32;
                for y in ys.clone() {
                    let row = (y + ky - pad) * width;
                    let shift = row + xs.start + kx - pad..row + xs.end + kx - pad;
                    remainders += scatter_and_dot(
                        &mut grad_input[shift.clone()],
                        &input[shift],
                        &grad_out[y * width..][xs.clone()],
                        tap_weights[tap],
                        &mut lanes,
                    );
                }
                tap_grads[tap] += lanes.iter().sum::<f32>() + remainders;
            }
        }
    }
}

/// `grad_input += w * grad_out`, and `sum(input * grad_out)`: the whole [`LANES`] chunks added
/// into `lanes`, so both vectorise (one running sum would be a chain of dependent additions),
/// and the remainder returned.
#[inline(always)]
fn scatter_and_dot(
    grad_input: &mut [f32],
    input: &[f32],
    grad_out: &[f32],
    w: f32,
    lanes: &mut [f32; LANES],
) -> f32 {
    let whole = grad_out.len() / LANES * LANES;
    let mut chunk_sums = *lanes;
    for ((grad_input, input), grad_out) in grad_input[..whole]
        .chunks_exact_mut(LANES)
        .zip(input[..whole].chunks_exact(LANES))
        .zip(grad_out[..whole].chunks_exact(LANES))
    {
        for lane in 0..LANES {
            grad_input[lane] += w * grad_out[lane];
            chunk_sums[lane] += input[lane] * grad_out[lane];
        }
    }
    *lanes = chunk_sums;
    let mut remainder = 0.0f32;
    for ((g_in, &v), &g) in grad_input[whole..]
        .iter_mut()
        .zip(&input[whole..])
        .zip(&grad_out[whole..])
    {
        *g_in += w * g;
        remainder += v * g;
    }
    remainder
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attention::testing::{assert_matches_reference, device, random_tensor};
    use crate::attention::{Cbam, CbamConfig};
    use burn::tensor::Device;

    /// `[B, C, H, W]`: uneven maps, a single pixel, batch 1 and 3.
    const SHAPES: [[usize; 4]; 4] = [[2, 8, 4, 4], [1, 16, 3, 7], [3, 8, 1, 1], [2, 12, 9, 2]];

    fn unit(channels: usize, device: &Device) -> Cbam {
        unit_with_kernel(channels, 3, device)
    }

    fn unit_with_kernel(channels: usize, kernel: usize, device: &Device) -> Cbam {
        device.seed(7);
        CbamConfig::new(channels)
            .with_reduction(4)
            .with_spatial_kernel(kernel)
            .init(device)
    }

    #[test]
    fn the_fused_convolution_matches_burns_with_taps_beyond_small_maps() {
        let device = device().autodiff();
        // 7x7 taps on maps of 1x1, 2x5 and 9x9: some taps miss the map entirely. Rows of 8 and 9
        // and 37 values take the one-register, the two-register and several two-register spans
        // (the last one partly used).
        let maps = [[1, 1], [2, 5], [9, 9], [3, 8], [6, 37]];
        for (seed, [height, width]) in maps.into_iter().enumerate() {
            let cbam = unit_with_kernel(8, 7, &device);
            let pooled = random_tensor([2, 2, height, width], seed as u64, &device);
            let upstream = random_tensor([2, 1, height, width], seed as u64 + 5, &device);
            let run = |convolve: &dyn Fn(Tensor<4>) -> Tensor<4>| {
                let pooled = pooled.clone().detach().require_grad();
                let out = convolve(pooled.clone());
                let mut all = values(out.clone());
                let grads = (out * upstream.clone()).sum().backward();
                all.extend(values(pooled.grad(&grads).unwrap()));
                all.extend(values(cbam.spatial_conv.weight.val().grad(&grads).unwrap()));
                all
            };
            let fused = run(&|p| spatial_conv(p, cbam.spatial_conv.weight.val()));
            let reference = run(&|p| cbam.spatial_conv.forward(p));
            assert_matches_reference(&fused, &reference, 1e-4, &format!("{height}x{width}"));
        }
    }

    fn values<const D: usize>(tensor: Tensor<D>) -> Vec<f32> {
        tensor.into_data().try_to_vec::<f32>().unwrap()
    }

    #[test]
    fn the_fused_path_is_taken_on_flex_with_and_without_autodiff() {
        crate::attention::testing::assert_fused_on_flex(fused_available);
    }

    #[test]
    fn fused_forward_matches_the_tensor_formulation() {
        let device = device();
        for (seed, shape) in SHAPES.into_iter().enumerate() {
            let cbam = unit(shape[1], &device);
            let x = random_tensor(shape, seed as u64, &device).mul_scalar(2.0);
            let fused = values(cbam.forward(x.clone()));
            let reference = values(cbam.tensor_forward(x));
            assert_matches_reference(&fused, &reference, 1e-4, &format!("{shape:?} value"));
        }
    }

    #[test]
    fn fused_gradients_match_the_tensor_formulation() {
        let device = device().autodiff();
        for (seed, shape) in SHAPES.into_iter().enumerate() {
            let cbam = unit(shape[1], &device);
            let x = random_tensor(shape, seed as u64 + 10, &device).mul_scalar(2.0);
            // A non-uniform upstream gradient, so every term of every backward step counts.
            let upstream = random_tensor(shape, seed as u64 + 20, &device);
            let gradients = |forward: &dyn Fn(Tensor<4>) -> Tensor<4>| {
                let x = x.clone().detach().require_grad();
                let grads = (forward(x.clone()) * upstream.clone()).sum().backward();
                let mut all = values(x.grad(&grads).unwrap());
                all.extend(values(
                    cbam.channel_reduce.weight.val().grad(&grads).unwrap(),
                ));
                all.extend(values(
                    cbam.channel_expand.weight.val().grad(&grads).unwrap(),
                ));
                all.extend(values(cbam.spatial_conv.weight.val().grad(&grads).unwrap()));
                all
            };
            let fused = gradients(&|x| cbam.forward(x));
            let reference = gradients(&|x| cbam.tensor_forward(x));
            assert_matches_reference(&fused, &reference, 1e-4, &format!("{shape:?} gradient"));
        }
    }

    #[test]
    fn the_wide_compilation_gives_the_same_bits_as_the_baseline_one() {
        use crate::attention::testing::seeded_values;
        let bits = |values: &[f32]| values.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        // 3 channels of 5x11 pixels: rows wider than a span and a remainder in every loop.
        let (channels, height, width, kernel) = (3, 5, 11, 7);
        let pixels = height * width;
        let (x, gate) = (
            seeded_values(channels * pixels, 1),
            seeded_values(channels, 2),
        );
        let spatial_gate = seeded_values(pixels, 3);

        type Pool = fn(&[f32], &[f32], &mut [f32], &mut [u32], usize);
        let pool_with = |kernel: Pool, keep_argmax: bool| {
            let mut pools = vec![0.0; 2 * pixels];
            let mut argmax = vec![0u32; if keep_argmax { pixels } else { 0 }];
            kernel(&x, &gate, &mut pools, &mut argmax, pixels);
            (bits(&pools), argmax)
        };
        for keep_argmax in [false, true] {
            assert_eq!(
                pool_with(pool_sample, keep_argmax),
                pool_with(pool_sample_generic, keep_argmax)
            );
        }

        type Gated = fn(&[f32], &[f32], &[f32], &mut [std::mem::MaybeUninit<f32>]);
        let gated_with = |kernel: Gated| {
            let mut out = unwritten(x.len());
            kernel(&x, &gate, &spatial_gate, &mut out);
            // SAFETY: the kernel writes every value.
            bits(&unsafe { assume_written(out) })
        };
        assert_eq!(gated_with(gated_sample), gated_with(gated_sample_generic));

        type PoolsBackward = fn(&mut [f32], &mut [f32], &[f32], &[f32], &[f32], &[u32]);
        let grad_pools = seeded_values(2 * pixels, 8);
        let (_, argmax) = pool_with(pool_sample_generic, true);
        let pools_backward_with = |kernel: PoolsBackward| {
            let (mut grad, mut grad_gate) = (vec![0.0; x.len()], vec![0.0; channels]);
            kernel(&mut grad, &mut grad_gate, &x, &gate, &grad_pools, &argmax);
            (bits(&grad), bits(&grad_gate))
        };
        assert_eq!(
            pools_backward_with(pools_backward_sample),
            pools_backward_with(pools_backward_sample_generic)
        );

        type GatedBackward = fn(&mut [f32], &mut [f32], &mut [f32], &[f32], &[f32], &[f32]);
        let dy = seeded_values(x.len(), 7);
        let gated_backward_with = |kernel: GatedBackward| {
            let (mut grad, mut grad_channel) = (dy.clone(), vec![0.0; channels]);
            let mut grad_spatial = vec![0.0; pixels];
            kernel(
                &mut grad,
                &mut grad_channel,
                &mut grad_spatial,
                &x,
                &gate,
                &spatial_gate,
            );
            (bits(&grad), bits(&grad_channel), bits(&grad_spatial))
        };
        assert_eq!(
            gated_backward_with(gated_backward_sample),
            gated_backward_with(gated_backward_sample_generic)
        );

        let pooled = seeded_values(2 * pixels, 4);
        let weights = seeded_values(2 * kernel * kernel, 5);
        type Conv = fn(&[f32], &[f32], &mut [f32], usize, usize);
        let conv_with = |conv: Conv| {
            let mut out = vec![0.0; pixels];
            conv(&pooled, &weights, &mut out, width, kernel);
            bits(&out)
        };
        assert_eq!(conv_with(conv_sample), conv_with(conv_sample_generic));

        type ConvBackward = fn(&mut [f32], &mut [f32], &[f32], &[f32], &[f32], usize, usize);
        let grad_out = seeded_values(pixels, 6);
        let conv_backward_with = |conv: ConvBackward| {
            let (mut grad_in, mut grad_w) = (vec![0.0; 2 * pixels], vec![0.0; weights.len()]);
            conv(
                &mut grad_in,
                &mut grad_w,
                &pooled,
                &weights,
                &grad_out,
                width,
                kernel,
            );
            (bits(&grad_in), bits(&grad_w))
        };
        assert_eq!(
            conv_backward_with(conv_backward_sample),
            conv_backward_with(conv_backward_sample_generic)
        );
    }
}
