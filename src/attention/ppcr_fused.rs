//! The PPCR unit's forward and backward pass as one fused CPU kernel on the Flex backend.
//!
//! Zhang et al., "PPCR: Learning Pyramid Pixel Context Recalibration Module for Medical Image
//! Classification" (arXiv 2303.01917); the unit is defined in `ppcr.rs`. Composed of burn
//! tensor operations, one PPCR forward is a dozen small eager kernels and autodiff records a
//! node for each, so a training step pays for many passes over feature-map-sized tensors. This
//! module computes `Y = X * sigmoid(Z)` in two passes over `X` (group sums, then the product)
//! and its gradient in two passes over `X` and `dY`, registered as a single autodiff node with a
//! hand-written backward step.
//!
//! It plugs into burn through the backend-extension API (burn feature `extension`):
//! [`PpcrOps`] is implemented for `Flex` and for `Autodiff<Flex>`. Other backends (CubeCL, tch)
//! have no implementation; [`fused_available`] tells the unit when to fall back to its tensor
//! formulation.

use burn::backend::autodiff::Autodiff;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::{
    Backend, Dispatch, DispatchTensorKind, Flex, TensorMetadata, backend_extension,
    tensor::FloatTensor,
};
use burn::tensor::{DType, Shape, Tensor, TensorData};
use rayon::prelude::*;

use super::ppcr::{group_start, pyramid_from_finest, pyramid_maps};

/// The fused PPCR recalibration as a backend extension operation.
///
/// Implemented for `Flex` (forward only) and `Autodiff<Flex>` (forward plus a hand-written
/// backward node); calling it on any other backend panics, which [`fused_available`] prevents.
#[backend_extension(Flex, Autodiff)]
pub trait PpcrOps: Backend {
    /// `Y = X * sigmoid(sum_k W_k * PN(CCPP(X))_k)` for `x` of shape `[B, C, H, W]` and
    /// `weights` of shape `[K, H, W]` with `K = 2^levels - 1`.
    fn ppcr_recalibrate(
        x: FloatTensor<Self>,
        weights: FloatTensor<Self>,
        levels: usize,
        epsilon: f64,
    ) -> FloatTensor<Self>;
}

/// Whether [`recalibrate`] can run on these tensors: both live on the Flex backend (plain or
/// under autodiff) and hold `f32` values. Anything else uses the unit's tensor formulation.
pub fn fused_available(x: &Tensor<4>, weights: &Tensor<3>) -> bool {
    fn on_flex(kind: &DispatchTensorKind) -> bool {
        // With the `cuda`, `wgpu` or `tch` feature the enum has more variants, all of which must
        // take the tensor formulation; in the default build the catch-all arm is unreachable.
        #[allow(unreachable_patterns)]
        match kind {
            DispatchTensorKind::Flex(_) => true,
            DispatchTensorKind::Autodiff(inner) => on_flex(inner),
            _ => false,
        }
    }
    let usable = |dispatch: burn::backend::DispatchTensor| {
        dispatch.kind.dtype() == DType::F32 && on_flex(&dispatch.kind)
    };
    // Cloning a tensor only bumps a reference count.
    usable(x.clone().into_dispatch()) && usable(weights.clone().into_dispatch())
}

/// Run the fused recalibration. `x` is `[B, C, H, W]`, `weights` `[K, H, W]`; the caller checks
/// the shapes and [`fused_available`].
pub fn recalibrate(x: Tensor<4>, weights: Tensor<3>, levels: usize, epsilon: f64) -> Tensor<4> {
    let output = <Dispatch as PpcrOps>::ppcr_recalibrate(
        x.into_dispatch(),
        weights.into_dispatch(),
        levels,
        epsilon,
    );
    Tensor::from_dispatch(output)
}

impl PpcrOps for Flex {
    fn ppcr_recalibrate(
        x: FlexTensor,
        weights: FlexTensor,
        levels: usize,
        epsilon: f64,
    ) -> FlexTensor {
        forward(&x, &weights, levels, epsilon)
    }
}

impl<C: CheckpointStrategy> PpcrOps for Autodiff<Flex, C> {
    fn ppcr_recalibrate(
        x: FloatTensor<Self>,
        weights: FloatTensor<Self>,
        levels: usize,
        epsilon: f64,
    ) -> FloatTensor<Self> {
        let guards = [x.node(), weights.node()];
        let x = x.into_primitive();
        let weights = weights.into_primitive();
        let output = forward(&x, &weights, levels, epsilon);
        match RecalibrateBackward
            .prepare::<C>(guards)
            .compute_bound()
            .stateful()
        {
            // The backward step recomputes the per-pixel context from `x` while it reads `x`
            // for the attention gradient anyway, so the state is only references to the inputs.
            OpsKind::Tracked(prep) => prep.finish(
                SavedInputs {
                    x,
                    weights,
                    levels,
                    epsilon,
                },
                output,
            ),
            OpsKind::UnTracked(prep) => prep.finish(output),
        }
    }
}

/// The autodiff node of [`PpcrOps::ppcr_recalibrate`].
#[derive(Debug)]
struct RecalibrateBackward;

/// What the backward step needs: the forward inputs (shared, not copied) and the settings.
#[derive(Debug, Clone)]
struct SavedInputs {
    x: FlexTensor,
    weights: FlexTensor,
    levels: usize,
    epsilon: f64,
}

impl Backward<Flex, 2> for RecalibrateBackward {
    type State = SavedInputs;

    fn backward(
        self,
        ops: Ops<Self::State, 2>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        let [x_node, weights_node] = ops.parents;
        let grad_output = grads.consume::<Flex>(&ops.node);
        let state = ops.state;
        let (grad_x, grad_weights) = backward(
            &state.x,
            &state.weights,
            &grad_output,
            state.levels,
            state.epsilon,
        );
        if let Some(node) = x_node {
            grads.register::<Flex>(node.id, grad_x);
        }
        if let Some(node) = weights_node {
            grads.register::<Flex>(node.id, grad_weights);
        }
    }
}

/// Pixels handled together: the tile's `C` channel segments are read twice (group sums, then
/// the product), so a tile of all channels (at most 512 KiB) should stay in cache between the
/// two reads, while each channel's segment stays long enough (at least 1 KiB) for the hardware
/// prefetcher to stream it.
fn tile_pixels(channels: usize, pixels: usize) -> usize {
    (131_072 / channels).clamp(256, 4096).min(pixels)
}

/// Samples whose weight gradients are summed into one buffer: a fixed split, independent of the
/// thread count, so the order of the floating-point sums (and the result) never changes.
const WEIGHT_GRADIENT_SPLITS: usize = 8;

/// A contiguous `f32` view of a Flex tensor, copying only when its layout is strided.
fn contiguous_values(tensor: &FlexTensor) -> std::borrow::Cow<'_, [f32]> {
    match tensor.as_slice::<f32>() {
        Some(values) => std::borrow::Cow::Borrowed(values),
        None => std::borrow::Cow::Owned(tensor.to_contiguous().as_slice::<f32>().unwrap().to_vec()),
    }
}

fn flex_tensor(values: Vec<f32>, shape: Shape) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(values, shape))
}

/// The pyramid's structure for one `(C, L)`: which finest group each channel belongs to, the
/// reciprocal group sizes, and for each of the `K` maps the finest groups it averages with
/// their weights (the non-zero entries of the `[K, n]` pyramid matrix).
struct Pyramid {
    maps: usize,
    finest_groups: usize,
    group_of_channel: Vec<usize>,
    inverse_group_size: Vec<f32>,
    map_terms: Vec<Vec<(usize, f32)>>,
    epsilon: f32,
}

impl Pyramid {
    fn new(channels: usize, levels: usize, epsilon: f64) -> Self {
        let finest_groups = 1usize << (levels - 1);
        let maps = pyramid_maps(levels);
        let matrix = pyramid_from_finest(channels, levels);
        let mut group_of_channel = vec![0; channels];
        let inverse_group_size = (0..finest_groups)
            .map(|group| {
                let (start, end) = (
                    group_start(channels, finest_groups, group),
                    group_start(channels, finest_groups, group + 1),
                );
                group_of_channel[start..end].fill(group);
                1.0 / (end - start) as f32
            })
            .collect();
        let map_terms = (0..maps)
            .map(|k| {
                (0..finest_groups)
                    .map(|j| (j, matrix[k * finest_groups + j]))
                    .filter(|(_, weight)| *weight != 0.0)
                    .collect()
            })
            .collect();
        Pyramid {
            maps,
            finest_groups,
            group_of_channel,
            inverse_group_size,
            map_terms,
            epsilon: epsilon as f32,
        }
    }
}

/// Per-tile scratch: finest-group sums `[n, T]`, centred pyramid values `[K, T]` and
/// per-pixel values `[T]`, laid out pixel-minor so every inner loop runs over pixels.
struct Scratch {
    sums: Vec<f32>,
    centred: Vec<f32>,
    inverse_std: Vec<f32>,
    logits: Vec<f32>,
    attention: Vec<f32>,
}

impl Scratch {
    fn new(pyramid: &Pyramid, tile: usize) -> Self {
        Scratch {
            sums: vec![0.0; pyramid.finest_groups * tile],
            centred: vec![0.0; pyramid.maps * tile],
            inverse_std: vec![0.0; tile],
            logits: vec![0.0; tile],
            attention: vec![0.0; tile],
        }
    }
}

/// Pixels of a tile whose per-pixel statistics are computed together: the block's `K` centred
/// pyramid rows stay in L1 across the several sweeps over them.
const STATISTICS_BLOCK: usize = 64;

/// Pixels `start..start + len` of the sample, at `offset..offset + len` of the tile's scratch.
#[derive(Clone, Copy)]
struct Block {
    start: usize,
    offset: usize,
    len: usize,
}

/// From the finest group sums of pixels `start..start + len` of `weights` (`[K, P]`), compute
/// the centred pyramid values, `1/sqrt(var + eps)`, the logits and the attention.
fn pixel_context(
    pyramid: &Pyramid,
    weights: &[f32],
    pixels: usize,
    start: usize,
    len: usize,
    tile: usize,
    scratch: &mut Scratch,
) {
    for offset in (0..len).step_by(STATISTICS_BLOCK) {
        let block = Block {
            start: start + offset,
            offset,
            len: STATISTICS_BLOCK.min(len - offset),
        };
        pixel_context_block(pyramid, weights, pixels, block, tile, scratch);
    }
}

/// [`pixel_context`] on one block of the tile.
fn pixel_context_block(
    pyramid: &Pyramid,
    weights: &[f32],
    pixels: usize,
    block: Block,
    tile: usize,
    scratch: &mut Scratch,
) {
    let Block { start, offset, len } = block;
    let maps = pyramid.maps;
    for group in 0..pyramid.finest_groups {
        let scale = pyramid.inverse_group_size[group];
        for sum in &mut scratch.sums[group * tile + offset..group * tile + offset + len] {
            *sum *= scale;
        }
    }
    let mean = &mut scratch.inverse_std[offset..offset + len];
    mean.fill(0.0);
    for (k, terms) in pyramid.map_terms.iter().enumerate() {
        let map = &mut scratch.centred[k * tile + offset..k * tile + offset + len];
        map.fill(0.0);
        for &(group, weight) in terms {
            let means = &scratch.sums[group * tile + offset..group * tile + offset + len];
            for (value, group_mean) in map.iter_mut().zip(means) {
                *value += weight * group_mean;
            }
        }
        for (total, value) in mean.iter_mut().zip(map.iter()) {
            *total += value;
        }
    }
    let inverse_maps = 1.0 / maps as f32;
    for total in mean.iter_mut() {
        *total *= inverse_maps;
    }
    // Two-pass variance (centre first), as the literal formulation computes it.
    let variance = &mut scratch.logits[offset..offset + len];
    variance.fill(0.0);
    for k in 0..maps {
        let map = &mut scratch.centred[k * tile + offset..k * tile + offset + len];
        for ((value, m), v) in map.iter_mut().zip(mean.iter()).zip(variance.iter_mut()) {
            *value -= m;
            *v += *value * *value;
        }
    }
    for (inverse_std, v) in mean.iter_mut().zip(variance.iter()) {
        *inverse_std = 1.0 / (v * inverse_maps + pyramid.epsilon).sqrt();
    }
    let numerator = &mut scratch.attention[offset..offset + len];
    numerator.fill(0.0);
    for k in 0..maps {
        let map = &scratch.centred[k * tile + offset..k * tile + offset + len];
        let w = &weights[k * pixels + start..k * pixels + start + len];
        for ((n, value), weight) in numerator.iter_mut().zip(map).zip(w) {
            *n += weight * value;
        }
    }
    for ((logit, attention), inverse_std) in scratch.logits[offset..offset + len]
        .iter_mut()
        .zip(scratch.attention[offset..offset + len].iter_mut())
        .zip(scratch.inverse_std[offset..offset + len].iter())
    {
        *logit = *attention * inverse_std;
        *attention = 1.0 / (1.0 + (-*logit).exp());
    }
}

/// Add channel plane segment `values` (`[C, P]` of one sample, pixels `start..start + len`)
/// into the finest group sums.
fn accumulate_group_sums(
    pyramid: &Pyramid,
    sample: &[f32],
    pixels: usize,
    start: usize,
    len: usize,
    tile: usize,
    sums: &mut [f32],
) {
    sums.fill(0.0);
    for (channel, &group) in pyramid.group_of_channel.iter().enumerate() {
        let plane = &sample[channel * pixels + start..channel * pixels + start + len];
        for (sum, value) in sums[group * tile..group * tile + len].iter_mut().zip(plane) {
            *sum += value;
        }
    }
}

struct Dims {
    batch: usize,
    channels: usize,
    pixels: usize,
}

fn dims_of(x: &FlexTensor, weights: &FlexTensor, levels: usize) -> Dims {
    let shape = x.shape();
    let (batch, channels) = (shape[0], shape[1]);
    let pixels = shape[2] * shape[3];
    let weight_shape = weights.shape();
    assert_eq!(
        weight_shape.num_elements(),
        pyramid_maps(levels) * pixels,
        "ppcr fused: weights {weight_shape:?} do not fit input {shape:?} with {levels} levels"
    );
    assert!(
        channels >= 1 << (levels - 1),
        "ppcr fused: {channels} channels are too few for {levels} levels"
    );
    Dims {
        batch,
        channels,
        pixels,
    }
}

/// `Y = X * A`, one rayon task per sample.
fn forward(x: &FlexTensor, weights: &FlexTensor, levels: usize, epsilon: f64) -> FlexTensor {
    let Dims {
        batch,
        channels,
        pixels,
    } = dims_of(x, weights, levels);
    let shape = x.shape();
    let values = contiguous_values(x);
    let weights = contiguous_values(weights);
    let pyramid = Pyramid::new(channels, levels, epsilon);
    let tile = tile_pixels(channels, pixels);
    let sample_len = channels * pixels;
    let mut output = vec![0.0f32; batch * sample_len];
    output
        .par_chunks_mut(sample_len.max(1))
        .zip(values.par_chunks(sample_len.max(1)))
        .for_each(|(out, sample)| {
            let mut scratch = Scratch::new(&pyramid, tile);
            for start in (0..pixels).step_by(tile) {
                let len = tile.min(pixels - start);
                accumulate_group_sums(
                    &pyramid,
                    sample,
                    pixels,
                    start,
                    len,
                    tile,
                    &mut scratch.sums,
                );
                pixel_context(&pyramid, &weights, pixels, start, len, tile, &mut scratch);
                let attention = &scratch.attention[..len];
                for channel in 0..channels {
                    let range = channel * pixels + start..channel * pixels + start + len;
                    for ((y, x), a) in out[range.clone()]
                        .iter_mut()
                        .zip(&sample[range])
                        .zip(attention)
                    {
                        *y = x * a;
                    }
                }
            }
        });
    flex_tensor(output, shape)
}

/// Gradients of `sum(dY * Y)` with respect to `x` and `weights`.
///
/// Per pixel, with `d_k` the centred pyramid values, `s = 1/sqrt(var + eps)`, `Phat = s d`:
/// `dA = sum_c dY_c X_c`, `dZ = dA a (1 - a)`, `dW_k = sum_b dZ Phat_k`; through the pixel
/// normalization `dP_k = s dZ (W_k - mean(W) - Phat_k Z / K)` (the layer-norm gradient with
/// `dPhat = dZ W`, using `mean(dPhat Phat) = dZ Z / K`); through the pyramid
/// `dF_j = sum_k G[k, j] dP_k`; and `dX_c = dY_c a + dF_group(c) / |group(c)|`.
fn backward(
    x: &FlexTensor,
    weights: &FlexTensor,
    grad_output: &FlexTensor,
    levels: usize,
    epsilon: f64,
) -> (FlexTensor, FlexTensor) {
    let Dims {
        batch,
        channels,
        pixels,
    } = dims_of(x, weights, levels);
    let x_shape = x.shape();
    let weight_shape = weights.shape();
    let values = contiguous_values(x);
    let grad_values = contiguous_values(grad_output);
    let weights = contiguous_values(weights);
    let pyramid = Pyramid::new(channels, levels, epsilon);
    let maps = pyramid.maps;
    let weight_means: Vec<f32> = (0..pixels)
        .map(|p| (0..maps).map(|k| weights[k * pixels + p]).sum::<f32>() / maps as f32)
        .collect();
    let tile = tile_pixels(channels, pixels);
    let sample_len = channels * pixels;
    let mut grad_x = vec![0.0f32; batch * sample_len];
    // Each split of the batch sums its samples' weight gradients in sample order into its own
    // buffer; the buffers are then summed in split order, so the result does not depend on how
    // rayon schedules the work, and only a few `[K, P]` buffers exist at once.
    let samples_per_split = batch.div_ceil(WEIGHT_GRADIENT_SPLITS).max(1);
    let splits = batch.div_ceil(samples_per_split);
    let weight_len = maps * pixels;
    let mut grad_weights_per_split = vec![0.0f32; splits * weight_len];
    grad_x
        .par_chunks_mut((samples_per_split * sample_len).max(1))
        .zip(grad_weights_per_split.par_chunks_mut(weight_len.max(1)))
        .zip(values.par_chunks((samples_per_split * sample_len).max(1)))
        .zip(grad_values.par_chunks((samples_per_split * sample_len).max(1)))
        .for_each(|(((dx_split, dw), x_split), dy_split)| {
            let mut scratch = Scratch::new(&pyramid, tile);
            let mut grad_attention = vec![0.0f32; tile];
            let mut grad_groups = vec![0.0f32; pyramid.finest_groups * tile];
            let mut grad_map = vec![0.0f32; tile];
            let mut grad_logit = vec![0.0f32; tile];
            let samples = dx_split
                .chunks_mut(sample_len.max(1))
                .zip(x_split.chunks(sample_len.max(1)))
                .zip(dy_split.chunks(sample_len.max(1)));
            for ((dx, sample), dy) in samples {
                for start in (0..pixels).step_by(tile) {
                    let len = tile.min(pixels - start);
                    accumulate_group_sums(
                        &pyramid,
                        sample,
                        pixels,
                        start,
                        len,
                        tile,
                        &mut scratch.sums,
                    );
                    let grad_a = &mut grad_attention[..len];
                    grad_a.fill(0.0);
                    for channel in 0..channels {
                        let range = channel * pixels + start..channel * pixels + start + len;
                        for ((g, x), d) in grad_a
                            .iter_mut()
                            .zip(&sample[range.clone()])
                            .zip(&dy[range])
                        {
                            *g += x * d;
                        }
                    }
                    pixel_context(&pyramid, &weights, pixels, start, len, tile, &mut scratch);
                    // dZ, scaled by s: every later term carries the factor s dZ.
                    for (((gz, ga), a), s) in grad_logit[..len]
                        .iter_mut()
                        .zip(grad_a.iter())
                        .zip(&scratch.attention[..len])
                        .zip(&scratch.inverse_std[..len])
                    {
                        *gz = ga * a * (1.0 - a) * s;
                    }
                    grad_groups.fill(0.0);
                    let inverse_maps = 1.0 / maps as f32;
                    for (k, terms) in pyramid.map_terms.iter().enumerate() {
                        let centred = &scratch.centred[k * tile..k * tile + len];
                        let w = &weights[k * pixels + start..k * pixels + start + len];
                        let dw_k = &mut dw[k * pixels + start..k * pixels + start + len];
                        let per_pixel = dw_k
                            .iter_mut()
                            .zip(&mut grad_map[..len])
                            .zip(&grad_logit[..len])
                            .zip(centred)
                            .zip(w)
                            .zip(&weight_means[start..start + len])
                            .zip(&scratch.inverse_std[..len])
                            .zip(&scratch.logits[..len]);
                        for (((((((dw, gm), gz), d), w), w_mean), s), z) in per_pixel {
                            // dZ Phat_k = (s dZ) d_k.
                            *dw += gz * d;
                            *gm = gz * (w - w_mean - d * s * z * inverse_maps);
                        }
                        for &(group, weight) in terms {
                            for (g, d) in grad_groups[group * tile..group * tile + len]
                                .iter_mut()
                                .zip(&grad_map[..len])
                            {
                                *g += weight * d;
                            }
                        }
                    }
                    for group in 0..pyramid.finest_groups {
                        let scale = pyramid.inverse_group_size[group];
                        for g in &mut grad_groups[group * tile..group * tile + len] {
                            *g *= scale;
                        }
                    }
                    let attention = &scratch.attention[..len];
                    for (channel, &group) in pyramid.group_of_channel.iter().enumerate() {
                        let range = channel * pixels + start..channel * pixels + start + len;
                        let group_grad = &grad_groups[group * tile..group * tile + len];
                        for (((out, d), a), g) in dx[range.clone()]
                            .iter_mut()
                            .zip(&dy[range])
                            .zip(attention)
                            .zip(group_grad)
                        {
                            *out = d * a + g;
                        }
                    }
                }
            }
        });
    let mut grad_weights = vec![0.0f32; weight_len];
    for sample in grad_weights_per_split.chunks(weight_len.max(1)) {
        for (total, value) in grad_weights.iter_mut().zip(sample) {
            *total += value;
        }
    }
    (
        flex_tensor(grad_x, x_shape),
        flex_tensor(grad_weights, weight_shape),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attention::testing::{assert_gradients_match, device, random_tensor};
    use crate::attention::{Ppcr, PpcrConfig};
    use burn::module::Param;
    use burn::tensor::Device;

    /// `(batch, channels, [height, width], levels)`: uneven channel splits (12, 20, 13),
    /// non-square maps, batch 1 and 3, three and four levels.
    const SHAPES: [(usize, usize, [usize; 2], usize); 6] = [
        (1, 12, [3, 5], 4),
        (3, 20, [4, 3], 4),
        (3, 12, [2, 7], 3),
        (1, 20, [5, 2], 3),
        (2, 64, [6, 4], 4),
        (3, 8, [1, 9], 4),
    ];

    fn unit(channels: usize, size: [usize; 2], levels: usize, seed: u64, device: &Device) -> Ppcr {
        let mut ppcr = PpcrConfig::new(channels, size)
            .with_levels(levels)
            .init(device)
            .unwrap();
        let maps = pyramid_maps(levels);
        let weights = random_tensor([1, maps, size[0], size[1]], seed, device)
            .reshape([maps, size[0], size[1]])
            .mul_scalar(2.0);
        ppcr.pixel_context_weights = Param::from_tensor(if device.is_autodiff() {
            weights.require_grad()
        } else {
            weights
        });
        ppcr
    }

    fn values<const D: usize>(tensor: Tensor<D>) -> Vec<f32> {
        tensor.into_data().try_to_vec::<f32>().unwrap()
    }

    #[test]
    fn the_fused_path_is_taken_on_flex_with_and_without_autodiff() {
        for device in [device(), device().autodiff()] {
            let ppcr = unit(12, [2, 2], 4, 1, &device);
            let x = random_tensor([1, 12, 2, 2], 2, &device);
            assert!(fused_available(&x, &ppcr.pixel_context_weights.val()));
        }
    }

    #[test]
    fn fused_forward_matches_the_literal_formulation() {
        let device = device();
        for (index, (batch, channels, size, levels)) in SHAPES.into_iter().enumerate() {
            let seed = index as u64 * 7 + 1;
            let ppcr = unit(channels, size, levels, seed, &device);
            let x = random_tensor([batch, channels, size[0], size[1]], seed + 3, &device);
            let fused = values(ppcr.forward(x.clone()));
            let literal = values(x.clone() * ppcr.reference_attention_map(x).unwrap());
            assert_eq!(fused.len(), literal.len());
            for (i, (f, l)) in fused.iter().zip(&literal).enumerate() {
                assert!(
                    (f - l).abs() <= 1e-5,
                    "B={batch} C={channels} {size:?} L={levels} [{i}]: fused {f} vs literal {l}"
                );
            }
        }
    }

    #[test]
    fn fused_forward_with_zero_weights_is_exactly_half_the_input() {
        let device = device();
        for (batch, channels, size, levels) in SHAPES {
            let ppcr = PpcrConfig::new(channels, size)
                .with_levels(levels)
                .init(&device)
                .unwrap();
            let x = random_tensor([batch, channels, size[0], size[1]], 5, &device);
            assert_eq!(values(ppcr.forward(x.clone())), values(x.mul_scalar(0.5)));
        }
    }

    /// Autodiff gradients of `sum(forward(x) * probe)` with respect to `x` and the weights.
    fn gradients(
        ppcr: &Ppcr,
        x: &Tensor<4>,
        probe: &Tensor<4>,
        fused: bool,
    ) -> (Vec<f32>, Vec<f32>) {
        let x = x.clone().require_grad();
        let y = if fused {
            ppcr.forward(x.clone())
        } else {
            ppcr.try_tensor_forward(x.clone()).unwrap()
        };
        let grads = (y * probe.clone()).sum().backward();
        let grad_x = x.grad(&grads).expect("input gradient");
        let grad_w = ppcr
            .pixel_context_weights
            .val()
            .grad(&grads)
            .expect("weight gradient");
        (values(grad_x), values(grad_w))
    }

    #[test]
    fn fused_gradients_equal_those_of_the_tensor_formulation() {
        let device = device().autodiff();
        for (index, (batch, channels, size, levels)) in SHAPES.into_iter().enumerate() {
            let seed = index as u64 * 11 + 2;
            let ppcr = unit(channels, size, levels, seed, &device);
            let shape = [batch, channels, size[0], size[1]];
            let x = random_tensor(shape, seed + 1, &device);
            let probe = random_tensor(shape, seed + 2, &device);
            let (fused_x, fused_w) = gradients(&ppcr, &x, &probe, true);
            let (tensor_x, tensor_w) = gradients(&ppcr, &x, &probe, false);
            for (what, fused, tensor) in [("x", fused_x, tensor_x), ("W", fused_w, tensor_w)] {
                assert_eq!(fused.len(), tensor.len());
                for (i, (f, t)) in fused.iter().zip(&tensor).enumerate() {
                    assert!(
                        (f - t).abs() <= 1e-4 * t.abs().max(1.0),
                        "B={batch} C={channels} {size:?} L={levels} d{what}[{i}]: \
                         fused {f} vs tensor formulation {t}"
                    );
                }
            }
        }
    }

    #[test]
    fn fused_gradients_match_finite_differences_at_uneven_shapes() {
        let device = device().autodiff();
        for (channels, size, levels, batch) in [(20, [3, 2], 4, 3), (12, [2, 3], 3, 1)] {
            let ppcr = unit(channels, size, levels, 3, &device);
            assert_gradients_match(ppcr, [batch, channels, size[0], size[1]], |unit, x| {
                unit.forward(x)
            });
        }
    }

    #[test]
    fn an_input_that_needs_no_gradient_still_trains_the_weights() {
        // Only the weights are tracked: the node must still register their gradient.
        let device = device().autodiff();
        let ppcr = unit(16, [2, 2], 4, 9, &device);
        let x = random_tensor([2, 16, 2, 2], 4, &device);
        let grads = ppcr.forward(x).sum().backward();
        let grad = ppcr.pixel_context_weights.val().grad(&grads).unwrap();
        assert!(values(grad).iter().any(|g| *g != 0.0));
    }

    #[test]
    fn a_strided_input_gives_the_same_output_as_its_contiguous_copy() {
        let device = device();
        let ppcr = unit(12, [3, 4], 4, 6, &device);
        // [B, C, W, H] swapped to [B, C, H, W]: a strided view over the same buffer.
        let strided = random_tensor([2, 12, 4, 3], 8, &device).swap_dims(2, 3);
        let contiguous = Tensor::<4>::from_data(strided.to_data(), &device);
        assert_eq!(
            values(ppcr.forward(strided)),
            values(ppcr.forward(contiguous))
        );
    }
}
