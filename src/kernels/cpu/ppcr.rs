//! The PPCR unit's forward and backward pass as one fused CPU kernel on the Flex backend.
//!
//! Zhang et al., "PPCR: Learning Pyramid Pixel Context Recalibration Module for Medical Image
//! Classification" (arXiv 2303.01917); the unit is defined in `ppcr.rs`. Composed of burn
//! tensor operations, one PPCR forward is a dozen small eager kernels and autodiff records a
//! node for each, so a training step pays for many passes over feature-map-sized tensors. This
//! module computes `Y = X * sigmoid(Z)` in two passes over `X` (group sums, then the product)
//! and its gradient in two passes over `X` and `dY`, registered as a single autodiff node with a
//! hand-written backward step. The forward keeps three values per pixel for it (the inverse
//! standard deviation, the logit, the attention), and the backward writes `dX` over the `dY` it
//! is handed.
//!
//! Between the passes, the per-pixel context (the `K` pyramid maps, their normalization, the
//! weighted sum and the sigmoid) is computed for 8 pixels at a time with every map in registers:
//! the coarser maps are built from their two halves, and the pyramid depth is a const parameter
//! so the arrays have a fixed size. On x86-64 processors with AVX2 the whole kernel runs a
//! second compilation with 8-wide vectors, chosen at run time; both give the same bits.
//!
//! The unit's input can also be given as a training BatchNorm's input and per-channel affine
//! map ([`InputAffine`]), read as the BatchNorm would have written it; `batch_norm_ppcr.rs`
//! builds the block's `bn2 -> PPCR -> add -> ReLU` on that.
//!
//! It plugs into burn through the backend-extension API (burn feature `extension`):
//! [`PpcrOps`] is implemented for `Flex` and for `Autodiff<Flex>`. Other backends (CubeCL, tch)
//! have no implementation; [`fused_available`] tells the unit when to fall back to its tensor
//! formulation.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::autodiff::{Autodiff, NodeId};
use burn::backend::flex::FlexTensor;
use burn::backend::{
    Backend, Dispatch, Flex, TensorMetadata, backend_extension, tensor::FloatTensor,
};
use burn::tensor::{Shape, Tensor};
use rayon::prelude::*;

use super::common::{
    assume_written, contiguous_values, dispatch_vector_width, flex_tensor, items_per_task,
    on_flex_f32, relu, sigmoid, unwritten, writable_contiguous,
};
use super::conv::SampleEpilogue;
use crate::kernels::pyramid::{group_start, pyramid_maps};

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
    on_flex_f32(x) && on_flex_f32(weights)
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

/// The recalibration followed by the end of a residual block, `relu(X * A + residual)`, as one
/// pass: the recalibrated map is never written on its own. Under autodiff it is one node, whose
/// backward step masks the incoming gradient in the pass that reads it for the unit's, and
/// writes the residual's gradient there too; the values are those of the unit's node and the
/// residual kernel's node, bit for bit.
#[backend_extension(Flex, Autodiff)]
pub trait PpcrResidualOps: Backend {
    /// `relu(ppcr_recalibrate(x, weights) + residual)`, `residual` of `x`'s shape.
    fn ppcr_recalibrate_add_relu(
        x: FloatTensor<Self>,
        weights: FloatTensor<Self>,
        residual: FloatTensor<Self>,
        levels: usize,
        epsilon: f64,
    ) -> FloatTensor<Self>;
}

/// Whether [`recalibrate_add_relu`] can run on these tensors: Flex `f32` tensors (plain or under
/// autodiff), the residual of `x`'s shape.
pub fn residual_available(x: &Tensor<4>, weights: &Tensor<3>, residual: &Tensor<4>) -> bool {
    fused_available(x, weights) && on_flex_f32(residual) && x.dims() == residual.dims()
}

/// `relu(recalibrate(x, weights) + residual)` in one pass; the caller checks
/// [`residual_available`] and what [`recalibrate`] needs.
pub fn recalibrate_add_relu(
    x: Tensor<4>,
    weights: Tensor<3>,
    residual: Tensor<4>,
    levels: usize,
    epsilon: f64,
) -> Tensor<4> {
    Tensor::from_dispatch(<Dispatch as PpcrResidualOps>::ppcr_recalibrate_add_relu(
        x.into_dispatch(),
        weights.into_dispatch(),
        residual.into_dispatch(),
        levels,
        epsilon,
    ))
}

impl PpcrResidualOps for Flex {
    fn ppcr_recalibrate_add_relu(
        x: FlexTensor,
        weights: FlexTensor,
        residual: FlexTensor,
        levels: usize,
        epsilon: f64,
    ) -> FlexTensor {
        let residual = contiguous_values(&residual);
        forward(
            &x,
            &weights,
            levels,
            epsilon,
            ForwardExtra::AddRelu(&residual),
            None,
        )
        .0
    }
}

impl<C: CheckpointStrategy> PpcrResidualOps for Autodiff<Flex, C> {
    fn ppcr_recalibrate_add_relu(
        x: FloatTensor<Self>,
        weights: FloatTensor<Self>,
        residual: FloatTensor<Self>,
        levels: usize,
        epsilon: f64,
    ) -> FloatTensor<Self> {
        let guards = [x.node(), weights.node(), residual.node()];
        let x = x.into_primitive();
        let weights = weights.into_primitive();
        let residual = residual.into_primitive();
        let residual = contiguous_values(&residual);
        match RecalibrateAddReluBackward
            .prepare::<C>(guards)
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let extra = ForwardExtra::KeepContextAddRelu(&residual);
                let (output, context) = forward(&x, &weights, levels, epsilon, extra, None);
                let unit = SavedInputs {
                    x,
                    weights,
                    context: context.expect("forward keeps the context when asked"),
                    levels,
                    epsilon,
                };
                // The output (shared, not copied) is the mask, as the residual kernel keeps it.
                prep.finish((unit, output.clone()), output)
            }
            OpsKind::UnTracked(prep) => {
                let extra = ForwardExtra::AddRelu(&residual);
                prep.finish(forward(&x, &weights, levels, epsilon, extra, None).0)
            }
        }
    }
}

/// Register each gradient for the parent that needs it (a parent that needs none has no id).
pub(super) fn register_gradients<const N: usize>(
    grads: &mut Gradients,
    ids: [Option<NodeId>; N],
    gradients: [Option<FlexTensor>; N],
) {
    for (id, gradient) in ids.into_iter().zip(gradients) {
        if let (Some(id), Some(gradient)) = (id, gradient) {
            grads.register::<Flex>(id, gradient);
        }
    }
}

/// The autodiff node of [`PpcrResidualOps::ppcr_recalibrate_add_relu`].
#[derive(Debug)]
struct RecalibrateAddReluBackward;

impl Backward<Flex, 3> for RecalibrateAddReluBackward {
    /// The unit's saved inputs, and the node's output.
    type State = (SavedInputs, FlexTensor);

    fn backward(
        self,
        ops: Ops<Self::State, 3>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        let [x_node, weights_node, residual_node] = ops.parents;
        let grad_output = grads.consume::<Flex>(&ops.node);
        let (state, output) = ops.state;
        let gradients = backward(
            &state.x,
            &state.weights,
            &state.context,
            grad_output,
            Some(&output),
            state.levels,
            state.epsilon,
            None,
        );
        let ids = [&x_node, &weights_node, &residual_node].map(|node| node.as_ref().map(|n| n.id));
        let gradients = [
            Some(gradients.input),
            Some(gradients.weights),
            gradients.residual,
        ];
        register_gradients(grads, ids, gradients);
    }
}

impl PpcrOps for Flex {
    fn ppcr_recalibrate(
        x: FlexTensor,
        weights: FlexTensor,
        levels: usize,
        epsilon: f64,
    ) -> FlexTensor {
        forward(&x, &weights, levels, epsilon, ForwardExtra::None, None).0
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
        match RecalibrateBackward
            .prepare::<C>(guards)
            .compute_bound()
            .stateful()
        {
            // The backward step needs the pyramid maps again, which it rebuilds from `x` while
            // it reads `x` for the attention gradient anyway; it is handed the rest of the
            // per-pixel context (a few values per pixel, against `C` of `x`).
            OpsKind::Tracked(prep) => {
                let (output, context) = forward(
                    &x,
                    &weights,
                    levels,
                    epsilon,
                    ForwardExtra::KeepContext,
                    None,
                );
                let state = SavedInputs {
                    x,
                    weights,
                    context: context.expect("forward keeps the context when asked"),
                    levels,
                    epsilon,
                };
                prep.finish(state, output)
            }
            OpsKind::UnTracked(prep) => {
                prep.finish(forward(&x, &weights, levels, epsilon, ForwardExtra::None, None).0)
            }
        }
    }
}

/// The autodiff node of [`PpcrOps::ppcr_recalibrate`].
#[derive(Debug)]
struct RecalibrateBackward;

/// What the backward step needs: the forward inputs (shared, not copied), the forward's
/// per-pixel context (see [`ContextRow`]) and the settings.
#[derive(Debug, Clone)]
struct SavedInputs {
    x: FlexTensor,
    weights: FlexTensor,
    context: FlexTensor,
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
        let gradients = backward(
            &state.x,
            &state.weights,
            &state.context,
            grad_output,
            None,
            state.levels,
            state.epsilon,
            None,
        );
        let ids = [&x_node, &weights_node].map(|node| node.as_ref().map(|n| n.id));
        let gradients = [Some(gradients.input), Some(gradients.weights)];
        register_gradients(grads, ids, gradients);
    }
}

/// Pixels handled together: the tile's `C` channel segments are read twice (group sums, then
/// the product), so a tile of all channels (at most 512 KiB) should stay in cache between the
/// two reads, while each channel's segment stays long enough (at least 1 KiB) for the hardware
/// prefetcher to stream it.
///
/// Rounded up to whole [`LANES`] chunks: it is also the row length of the tile's scratch, so a
/// chunk never straddles two rows.
fn tile_pixels(channels: usize, pixels: usize) -> usize {
    (131_072 / channels)
        .clamp(256, 4096)
        .min(pixels)
        .next_multiple_of(LANES)
}

/// Pixels whose context is computed together, held in registers: one AVX2 vector of `f32`.
const LANES: usize = 8;

/// The most pyramid levels the fused kernel handles (`2^(L-1)` finest groups, each a register
/// array); deeper pyramids use the tensor formulation.
pub const MAX_LEVELS: usize = 7;

/// The weights `[K, P]` with each row followed by [`LANES`] zeros, so the last chunk of a row
/// reads whole [`LANES`] arrays.
fn padded_weights(weights: &[f32], maps: usize, pixels: usize) -> Vec<f32> {
    let stride = pixels + LANES;
    let mut padded = vec![0.0; maps * stride];
    for (row, values) in padded.chunks_mut(stride).zip(weights.chunks(pixels)) {
        row[..pixels].copy_from_slice(values);
    }
    padded
}

/// Samples whose weight gradients are summed into one buffer: a fixed split, independent of the
/// thread count, so the order of the floating-point sums (and the result) never changes.
const WEIGHT_GRADIENT_SPLITS: usize = 8;

/// The pyramid's structure for one `(C, L)`: which finest group each channel belongs to, the
/// reciprocal group sizes, and for each of the `K` maps the finest groups it averages with
/// their weights (the non-zero entries of the `[K, n]` pyramid matrix).
struct Pyramid {
    maps: usize,
    finest_groups: usize,
    group_of_channel: Vec<usize>,
    inverse_group_size: Vec<f32>,
    /// For each map above the finest level (heap order: map `k`'s halves are maps `2k + 1`
    /// and `2k + 2`), the halves' shares of its channels.
    child_shares: Vec<[f32; 2]>,
    epsilon: f32,
}

impl Pyramid {
    fn new(channels: usize, levels: usize, epsilon: f64) -> Self {
        let finest_groups = 1usize << (levels - 1);
        let maps = pyramid_maps(levels);
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
        // A group of level l splits into exactly groups 2g and 2g + 1 of level l + 1: the
        // floor(C g / n) boundaries of the coarser level are boundaries of the finer one.
        let size = |level: usize, group: usize| {
            let groups = 1 << level;
            (group_start(channels, groups, group + 1) - group_start(channels, groups, group)) as f32
        };
        let child_shares = (0..levels - 1)
            .flat_map(|level| (0..1usize << level).map(move |group| (level, group)))
            .map(|(level, group)| {
                let parent = size(level, group);
                [
                    size(level + 1, 2 * group) / parent,
                    size(level + 1, 2 * group + 1) / parent,
                ]
            })
            .collect();
        Pyramid {
            maps,
            finest_groups,
            group_of_channel,
            inverse_group_size,
            child_shares,
            epsilon: epsilon as f32,
        }
    }
}

type Lanes = [f32; LANES];

/// Reads `LANES` values of `row` from `at`.
#[inline(always)]
fn lanes(row: &[f32], at: usize) -> Lanes {
    row[at..at + LANES].try_into().unwrap()
}

/// The pyramid of `N` finest groups as register-sized constants for the chunk kernels
/// (`M = 2N`, one more than the `K = 2N - 1` maps, since `2N - 1` cannot be a const parameter).
struct PyramidConstants<const N: usize, const M: usize> {
    inverse_group_size: [f32; N],
    child_shares: [[f32; 2]; N],
    inverse_maps: f32,
    epsilon: f32,
}

impl<const N: usize, const M: usize> PyramidConstants<N, M> {
    #[inline(always)]
    fn new(pyramid: &Pyramid) -> Self {
        debug_assert_eq!((pyramid.finest_groups, M), (N, 2 * N));
        let mut inverse_group_size = [0.0; N];
        inverse_group_size.copy_from_slice(&pyramid.inverse_group_size);
        let mut child_shares = [[0.0; 2]; N];
        child_shares[..N - 1].copy_from_slice(&pyramid.child_shares);
        PyramidConstants {
            inverse_group_size,
            child_shares,
            inverse_maps: 1.0 / (M - 1) as f32,
            epsilon: pyramid.epsilon,
        }
    }
}

/// The per-pixel context of one chunk of `LANES` pixels.
struct ChunkContext {
    /// `s = 1 / sqrt(var_k P_k + eps)`.
    inverse_std: Lanes,
    /// `Z = s sum_k W_k d_k`.
    logit: Lanes,
    /// `A = sigmoid(Z)`.
    attention: Lanes,
}

/// The centred pyramid maps of the chunk at column `chunk` of a tile (finest group sums in
/// `sums`, rows of `tile`): the finest means, each coarser map from its two halves (heap order:
/// map `k`'s halves are maps `2k + 1` and `2k + 2`), then centred on their mean, all in
/// registers.
#[inline(always)]
fn centred_maps<const N: usize, const M: usize>(
    constants: &PyramidConstants<N, M>,
    sums: &[f32],
    tile: usize,
    chunk: usize,
) -> [Lanes; M] {
    let maps = M - 1;
    let mut map = [[0.0f32; LANES]; M];
    for group in 0..N {
        let group_sums = lanes(sums, group * tile + chunk);
        for lane in 0..LANES {
            map[N - 1 + group][lane] = group_sums[lane] * constants.inverse_group_size[group];
        }
    }
    for k in (0..N - 1).rev() {
        let [first, second] = constants.child_shares[k];
        let (halves_first, halves_second) = (map[2 * k + 1], map[2 * k + 2]);
        for ((value, a), b) in map[k].iter_mut().zip(halves_first).zip(halves_second) {
            *value = first * a + second * b;
        }
    }
    let mut mean = [0.0f32; LANES];
    for values in &map[..maps] {
        for lane in 0..LANES {
            mean[lane] += values[lane];
        }
    }
    for values in &mut map[..maps] {
        for lane in 0..LANES {
            values[lane] -= mean[lane] * constants.inverse_maps;
        }
    }
    map
}

/// The context of the chunk at column `chunk` of the tile starting at pixel `start`: the
/// [`centred_maps`], their variance (two-pass, centred first, as the literal formulation
/// computes it) and the weighted sum.
#[inline(always)]
fn chunk_context<const N: usize, const M: usize>(
    constants: &PyramidConstants<N, M>,
    inputs: &KernelInputs,
    sums: &[f32],
    start: usize,
    chunk: usize,
) -> ChunkContext {
    let (weights, weight_stride) = (inputs.weights, inputs.weight_stride());
    let at = start + chunk;
    let centred = centred_maps(constants, sums, inputs.tile, chunk);
    let (mut variance, mut numerator) = ([0.0f32; LANES], [0.0f32; LANES]);
    for (k, values) in centred[..M - 1].iter().enumerate() {
        let w = lanes(weights, k * weight_stride + at);
        for lane in 0..LANES {
            variance[lane] += values[lane] * values[lane];
            numerator[lane] += w[lane] * values[lane];
        }
    }
    let mut context = ChunkContext {
        inverse_std: [0.0; LANES],
        logit: [0.0; LANES],
        attention: [0.0; LANES],
    };
    for lane in 0..LANES {
        let inverse_std =
            1.0 / (variance[lane] * constants.inverse_maps + constants.epsilon).sqrt();
        context.inverse_std[lane] = inverse_std;
        context.logit[lane] = numerator[lane] * inverse_std;
        context.attention[lane] = sigmoid(context.logit[lane]);
    }
    context
}

/// Per-tile scratch, laid out pixel-minor with rows of `tile` pixels so every inner loop runs
/// over pixels: finest group sums `[n, T]` and the attention `[T]`.
struct Scratch {
    sums: Vec<f32>,
    attention: Vec<f32>,
}

impl Scratch {
    fn new(pyramid: &Pyramid, tile: usize) -> Self {
        Scratch {
            sums: vec![0.0; pyramid.finest_groups * tile],
            attention: vec![0.0; tile],
        }
    }

    /// Whether this scratch has [`Scratch::new`]'s sizes for `pyramid` and `tile`.
    fn fits(&self, pyramid: &Pyramid, tile: usize) -> bool {
        self.sums.len() == pyramid.finest_groups * tile && self.attention.len() == tile
    }
}

/// Calls `$kernel::<N, 2N>($args)` for the pyramid's number of finest groups `N`, so the maps
/// of a chunk are a fixed-size array the compiler keeps in registers.
macro_rules! for_pyramid_depth {
    ($groups:expr, $kernel:ident($($arg:expr),* $(,)?)) => {
        match $groups {
            1 => $kernel::<1, 2>($($arg),*),
            2 => $kernel::<2, 4>($($arg),*),
            4 => $kernel::<4, 8>($($arg),*),
            8 => $kernel::<8, 16>($($arg),*),
            16 => $kernel::<16, 32>($($arg),*),
            32 => $kernel::<32, 64>($($arg),*),
            64 => $kernel::<64, 128>($($arg),*),
            groups => unreachable!("ppcr fused: {groups} finest groups exceed MAX_LEVELS"),
        }
    };
}

/// What the forward kernel reads for one call, built once: the pyramid, the weights with their
/// rows padded (see [`padded_weights`]), and the sizes.
struct ForwardUnit {
    pyramid: Pyramid,
    weights: Vec<f32>,
    pixels: usize,
    tile: usize,
}

impl ForwardUnit {
    /// The unit for input `x_shape` (`[B, C, H, W]`) and `weights` (`[K, H, W]`); panics where
    /// they do not fit (see [`dims_of`]).
    fn new(x_shape: &Shape, weights: &FlexTensor, levels: usize, epsilon: f64) -> (Self, Dims) {
        let dims = dims_of(x_shape, weights, levels);
        let pyramid = Pyramid::new(dims.channels, levels, epsilon);
        let weights = padded_weights(&contiguous_values(weights), pyramid.maps, dims.pixels);
        let unit = ForwardUnit {
            pyramid,
            weights,
            pixels: dims.pixels,
            tile: tile_pixels(dims.channels, dims.pixels),
        };
        (unit, dims)
    }

    fn inputs<'a>(&'a self, affine: Option<InputAffine<'a>>) -> KernelInputs<'a> {
        KernelInputs {
            pyramid: &self.pyramid,
            weights: &self.weights,
            group_weights: &[],
            pixels: self.pixels,
            tile: self.tile,
            affine,
        }
    }
}

struct Dims {
    batch: usize,
    channels: usize,
    pixels: usize,
}

fn dims_of(shape: &Shape, weights: &FlexTensor, levels: usize) -> Dims {
    let (batch, channels) = (shape[0], shape[1]);
    let pixels = shape[2] * shape[3];
    let weight_shape = weights.shape();
    assert_eq!(
        weight_shape.num_elements(),
        pyramid_maps(levels) * pixels,
        "ppcr fused: weights {weight_shape:?} do not fit input {shape:?} with {levels} levels"
    );
    assert!(
        (1..=MAX_LEVELS).contains(&levels),
        "ppcr fused: {levels} levels are outside 1..={MAX_LEVELS}"
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

dispatch_vector_width! {
    /// `out = sample * A` for one sample (`[C, P]`), tile by tile, or `relu(sample * A +
    /// residual)` unless `residual` is empty; unless `context` is empty, also the sample's
    /// per-pixel context (see [`ContextRow`]).
    fn forward_sample => forward_sample_any_depth(
        inputs: &KernelInputs,
        sample: &[f32],
        residual: &[f32],
        out: &mut [std::mem::MaybeUninit<f32>],
        context: &mut [f32],
        scratch: &mut Scratch,
    )
}

/// What every task of one call reads: the pyramid, the weights (rows padded, see
/// [`padded_weights`]), the finest groups' shares of the centred weights (padded likewise;
/// backward only, see [`group_weight_shares`]), and the sizes.
struct KernelInputs<'a> {
    pyramid: &'a Pyramid,
    weights: &'a [f32],
    group_weights: &'a [f32],
    pixels: usize,
    tile: usize,
    /// Where the unit's input is a training BatchNorm's, folded in (see [`InputAffine`]).
    affine: Option<InputAffine<'a>>,
}

/// The unit's input given as a BatchNorm's input `x` and its per-channel affine map: the unit
/// reads `x * scale_c + shift_c`, the values the BatchNorm would write, without them being
/// written. The backward step also sums the BatchNorm's gradient terms per channel, against
/// the batch `mean`.
#[derive(Clone, Copy)]
pub(super) struct InputAffine<'a> {
    /// Per channel, the factor of `x`.
    pub(super) scale: &'a [f32],
    /// Per channel, the offset.
    pub(super) shift: &'a [f32],
    /// Per channel, the batch mean of `x` (backward only).
    pub(super) mean: &'a [f32],
}

impl InputAffine<'_> {
    /// `(scale, shift)` of `channel`.
    #[inline(always)]
    fn of(&self, channel: usize) -> (f32, f32) {
        (self.scale[channel], self.shift[channel])
    }
}

impl KernelInputs<'_> {
    /// Row length of the padded weights, group weight shares and weight gradients.
    fn weight_stride(&self) -> usize {
        self.pixels + LANES
    }

    /// Row length of the per-pixel context: whole [`LANES`] chunks, since chunks start at
    /// multiples of [`LANES`] and may run past the last pixel.
    fn context_stride(&self) -> usize {
        self.pixels.next_multiple_of(LANES)
    }
}

#[inline(always)]
fn forward_sample_any_depth(
    inputs: &KernelInputs,
    sample: &[f32],
    residual: &[f32],
    out: &mut [std::mem::MaybeUninit<f32>],
    context: &mut [f32],
    scratch: &mut Scratch,
) {
    for_pyramid_depth!(
        inputs.pyramid.finest_groups,
        forward_sample_generic(inputs, sample, residual, out, context, scratch)
    )
}

#[inline(always)]
fn forward_sample_generic<const N: usize, const M: usize>(
    inputs: &KernelInputs,
    sample: &[f32],
    residual: &[f32],
    out: &mut [std::mem::MaybeUninit<f32>],
    context: &mut [f32],
    scratch: &mut Scratch,
) {
    let KernelInputs {
        pyramid,
        pixels,
        tile,
        ..
    } = *inputs;
    let constants = PyramidConstants::<N, M>::new(pyramid);
    for start in (0..pixels).step_by(tile) {
        let len = tile.min(pixels - start);
        scratch.sums.fill(0.0);
        for (channel, &group) in pyramid.group_of_channel.iter().enumerate() {
            let plane = &sample[channel * pixels + start..channel * pixels + start + len];
            let sums = scratch.sums[group * tile..group * tile + len].iter_mut();
            match inputs.affine.map(|affine| affine.of(channel)) {
                None => sums.zip(plane).for_each(|(sum, value)| *sum += value),
                Some((scale, shift)) => sums
                    .zip(plane)
                    .for_each(|(sum, &value)| *sum += value * scale + shift),
            }
        }
        for chunk in (0..len).step_by(LANES) {
            let chunk_context = chunk_context(&constants, inputs, &scratch.sums, start, chunk);
            scratch.attention[chunk..chunk + LANES].copy_from_slice(&chunk_context.attention);
            if !context.is_empty() {
                let at = ContextRow::start(inputs.context_stride(), start + chunk);
                context[at(ContextRow::InverseStd)].copy_from_slice(&chunk_context.inverse_std);
                context[at(ContextRow::Logit)].copy_from_slice(&chunk_context.logit);
                context[at(ContextRow::Attention)].copy_from_slice(&chunk_context.attention);
            }
        }
        let attention = &scratch.attention[..len];
        for channel in 0..pyramid.group_of_channel.len() {
            let range = channel * pixels + start..channel * pixels + start + len;
            let products = out[range.clone()]
                .iter_mut()
                .zip(&sample[range.clone()])
                .zip(attention);
            let affine = inputs.affine.map(|affine| affine.of(channel));
            match (residual.is_empty(), affine) {
                (true, None) => products.for_each(|((y, x), a)| _ = y.write(x * a)),
                (true, Some((scale, shift))) => {
                    products.for_each(|((y, &x), a)| _ = y.write((x * scale + shift) * a))
                }
                // As the residual kernel computes `relu(y + r)` from the unit's `y = x * a`.
                (false, None) => products
                    .zip(&residual[range])
                    .for_each(|(((y, x), a), r)| _ = y.write(relu(x * a + r))),
                (false, Some((scale, shift))) => products
                    .zip(&residual[range])
                    .for_each(|(((y, &x), a), r)| _ = y.write(relu((x * scale + shift) * a + r))),
            }
        }
    }
}

/// What the forward step keeps per pixel of each sample for the backward step, one row of
/// [`KernelInputs::context_stride`] values each: `[B, CONTEXT_ROWS, stride]`. With them the
/// backward step skips the variance, the square root and the sigmoid of every pixel.
#[derive(Debug, Clone, Copy)]
enum ContextRow {
    /// `s = 1 / sqrt(var_k P_k + eps)`.
    InverseStd,
    /// `Z = s sum_k W_k d_k`.
    Logit,
    /// `A = sigmoid(Z)`.
    Attention,
}

/// Rows of [`ContextRow`].
const CONTEXT_ROWS: usize = 3;

impl ContextRow {
    /// Where in a sample's context the [`LANES`] values of each row at pixel `at` lie.
    #[inline(always)]
    fn start(stride: usize, at: usize) -> impl Fn(ContextRow) -> std::ops::Range<usize> {
        move |row| row as usize * stride + at..row as usize * stride + at + LANES
    }
}

/// What the forward pass does besides `Y = X * A`.
pub(super) enum ForwardExtra<'a> {
    /// Nothing.
    None,
    /// Keep the per-pixel context ([`ContextRow`]) the backward step reads.
    KeepContext,
    /// End a residual block: `relu(X * A + residual)`, `residual` shaped as `X`.
    AddRelu(&'a [f32]),
    /// Both: the residual end, and the context for the backward step.
    KeepContextAddRelu(&'a [f32]),
}

/// `Y = X * A`, one rayon task per sample, with the `extra` it is asked for; returns the
/// output and the context where kept. With an `affine`, `x` is a BatchNorm's input and the
/// unit reads `X = x * scale + shift`.
pub(super) fn forward(
    x: &FlexTensor,
    weights: &FlexTensor,
    levels: usize,
    epsilon: f64,
    extra: ForwardExtra,
    affine: Option<InputAffine>,
) -> (FlexTensor, Option<FlexTensor>) {
    let shape = x.shape();
    let (
        unit,
        Dims {
            batch,
            channels,
            pixels,
        },
    ) = ForwardUnit::new(&shape, weights, levels, epsilon);
    let values = contiguous_values(x);
    let inputs = unit.inputs(affine);
    let sample_len = channels * pixels;
    let mut output = unwritten(batch * sample_len);
    let (keep_context, residual) = match extra {
        ForwardExtra::None => (false, &[][..]),
        ForwardExtra::KeepContext => (true, &[][..]),
        ForwardExtra::AddRelu(residual) => (false, residual),
        ForwardExtra::KeepContextAddRelu(residual) => (true, residual),
    };
    assert!(
        residual.is_empty() || residual.len() == values.len(),
        "ppcr_recalibrate_add_relu: the residual is not the input's shape"
    );
    let context_len = CONTEXT_ROWS * inputs.context_stride();
    let mut context = vec![0.0f32; if keep_context { batch * context_len } else { 0 }];
    // One (possibly empty) context row block per sample.
    let mut sample_contexts: Vec<&mut [f32]> = if keep_context {
        context.chunks_mut(context_len.max(1)).collect()
    } else {
        (0..batch).map(|_| &mut [][..]).collect()
    };
    output
        .par_chunks_mut(sample_len.max(1))
        .zip(values.par_chunks(sample_len.max(1)))
        .zip(sample_contexts.par_iter_mut())
        .enumerate()
        .with_min_len(items_per_task(sample_len))
        .for_each_init(
            || Scratch::new(&unit.pyramid, unit.tile),
            |scratch, (index, ((out, sample), context))| {
                let residual = match residual.is_empty() {
                    true => residual,
                    false => &residual[index * sample_len..(index + 1) * sample_len],
                };
                forward_sample(&inputs, sample, residual, out, context, scratch)
            },
        );
    let context = keep_context.then(|| {
        let context_shape = Shape::new([batch, CONTEXT_ROWS, inputs.context_stride()]);
        flex_tensor(context, context_shape)
    });
    // SAFETY: `forward_sample` writes every channel of every pixel of its sample.
    let output = flex_tensor(unsafe { assume_written(output) }, shape);
    (output, context)
}

/// The unit and the residual end of a block, `relu(X * A + residual)`, one sample at a time as
/// the epilogue of the convolution before it (`conv_ppcr`): the sample is recalibrated while the
/// convolution's output is still in cache, and the unit's input is never written as a whole.
/// It gives the bits of [`PpcrResidualOps`] on the convolution's output.
pub(super) struct ResidualEnd<'a> {
    unit: ForwardUnit,
    residual: &'a [f32],
}

impl<'a> ResidualEnd<'a> {
    /// The end for input `x_shape` (`[B, C, H, W]`), with `weights` `[K, H, W]` and a
    /// `residual` of `x_shape`'s size.
    pub(super) fn new(
        x_shape: &Shape,
        weights: &FlexTensor,
        residual: &'a [f32],
        levels: usize,
        epsilon: f64,
    ) -> Self {
        assert_eq!(
            residual.len(),
            x_shape.num_elements(),
            "ppcr_recalibrate_add_relu: the residual is not the input's shape"
        );
        let (unit, _) = ForwardUnit::new(x_shape, weights, levels, epsilon);
        ResidualEnd { unit, residual }
    }
}

impl SampleEpilogue for ResidualEnd<'_> {
    fn finish(&self, sample: usize, computed: &[f32], out: &mut [std::mem::MaybeUninit<f32>]) {
        thread_local! {
            static TILE_SCRATCH: std::cell::RefCell<Option<Scratch>> =
                const { std::cell::RefCell::new(None) };
        }
        let (unit, inputs) = (&self.unit, self.unit.inputs(None));
        let len = computed.len();
        let residual = &self.residual[sample * len..(sample + 1) * len];
        // The tile's scratch outlives the call: one per sample would be allocated and zeroed
        // for each of a batch's samples in each block.
        TILE_SCRATCH.with_borrow_mut(|scratch| {
            let scratch = match scratch {
                Some(kept) if kept.fits(&unit.pyramid, unit.tile) => kept,
                _ => scratch.insert(Scratch::new(&unit.pyramid, unit.tile)),
            };
            forward_sample(&inputs, computed, residual, out, &mut [], scratch);
        });
    }
}

dispatch_vector_width! {
    /// The backward step for the samples of one split (their forward `context`, see
    /// [`ContextRow`]): `grad_split` holds their `dy` on entry and their `dx` on return; their
    /// weight gradients are summed in sample order into `dw` (rows padded like the weights).
    fn backward_split => backward_split_any_depth(
        inputs: &KernelInputs,
        x_split: &[f32],
        context_split: &[f32],
        grad_split: &mut [f32],
        dw: &mut [f32],
        end: Option<BlockEndSplit>,
        batch_norm_sums: &mut [f32],
    )
}

#[inline(always)]
fn backward_split_any_depth(
    inputs: &KernelInputs,
    x_split: &[f32],
    context_split: &[f32],
    grad_split: &mut [f32],
    dw: &mut [f32],
    end: Option<BlockEndSplit>,
    batch_norm_sums: &mut [f32],
) {
    for_pyramid_depth!(
        inputs.pyramid.finest_groups,
        backward_split_generic(
            inputs,
            x_split,
            context_split,
            grad_split,
            dw,
            end,
            batch_norm_sums
        )
    )
}

/// The residual end's share of one split's backward step (see [`PpcrResidualOps`]): the
/// forward outputs `relu(X * A + residual)`, whose sign masks the incoming gradient, and where
/// the masked gradient, the residual's, is written.
struct BlockEndSplit<'a> {
    output: &'a [f32],
    grad_residual: &'a mut [std::mem::MaybeUninit<f32>],
}

#[inline(always)]
fn backward_split_generic<const N: usize, const M: usize>(
    inputs: &KernelInputs,
    x_split: &[f32],
    context_split: &[f32],
    grad_split: &mut [f32],
    dw: &mut [f32],
    mut end: Option<BlockEndSplit>,
    batch_norm_sums: &mut [f32],
) {
    let KernelInputs {
        pyramid,
        weights: _,
        group_weights,
        pixels,
        tile,
        affine,
    } = *inputs;
    let constants = PyramidConstants::<N, M>::new(pyramid);
    let (maps, weight_stride) = (M - 1, inputs.weight_stride());
    let sample_len = pyramid.group_of_channel.len() * pixels;
    let mut scratch = Scratch::new(pyramid, tile);
    // The gradients of the finest group sums `[n, T]` and of the attention `[T]`.
    let mut grad_groups = vec![0.0f32; pyramid.finest_groups * tile];
    let mut grad_attention_row = vec![0.0f32; tile];
    let context_len = CONTEXT_ROWS * inputs.context_stride();
    let samples = grad_split
        .chunks_mut(sample_len.max(1))
        .zip(x_split.chunks(sample_len.max(1)))
        .zip(context_split.chunks(context_len.max(1)));
    // `grad` holds the sample's dY until the tile's last sweep overwrites it with dX: each
    // value of dX depends on dY at the same position only, read just before.
    for (index, ((grad, sample), context)) in samples.enumerate() {
        for start in (0..pixels).step_by(tile) {
            let len = tile.min(pixels - start);
            // One sweep over the tile's channels for both the group sums and dA = sum_c dY X.
            scratch.sums.fill(0.0);
            grad_attention_row.fill(0.0);
            for (channel, &group) in pyramid.group_of_channel.iter().enumerate() {
                let range = channel * pixels + start..channel * pixels + start + len;
                let sums = &mut scratch.sums[group * tile..group * tile + len];
                // The unit's input: as stored, or recomputed from the BatchNorm's, bit for bit
                // the values the BatchNorm would have written.
                let (scale, shift) = affine.map_or((1.0, 0.0), |affine| affine.of(channel));
                let Some(end) = end.as_mut() else {
                    for (((sum, grad_a), &x), d) in sums
                        .iter_mut()
                        .zip(&mut grad_attention_row[..len])
                        .zip(&sample[range.clone()])
                        .zip(&grad[range])
                    {
                        let x = if affine.is_some() {
                            x * scale + shift
                        } else {
                            x
                        };
                        *sum += x;
                        *grad_a += x * d;
                    }
                    continue;
                };
                // The residual end first: dY = d(out) [out > 0], as its own kernel masks it,
                // which is also the residual's gradient.
                let in_split = index * sample_len + range.start..index * sample_len + range.end;
                for (((((sum, grad_a), &x), d), y), grad_r) in sums
                    .iter_mut()
                    .zip(&mut grad_attention_row[..len])
                    .zip(&sample[range.clone()])
                    .zip(&mut grad[range])
                    .zip(&end.output[in_split.clone()])
                    .zip(&mut end.grad_residual[in_split])
                {
                    let x = if affine.is_some() {
                        x * scale + shift
                    } else {
                        x
                    };
                    *d = if *y > 0.0 { *d } else { 0.0 };
                    grad_r.write(*d);
                    *sum += x;
                    *grad_a += x * *d;
                }
            }
            for chunk in (0..len).step_by(LANES) {
                let at = start + chunk;
                let centred = centred_maps(&constants, &scratch.sums, tile, chunk);
                let at_row = ContextRow::start(inputs.context_stride(), at);
                let saved = |row| -> Lanes { context[at_row(row)].try_into().unwrap() };
                let inverse_std = saved(ContextRow::InverseStd);
                let logit = saved(ContextRow::Logit);
                let attention = saved(ContextRow::Attention);
                let grad_attention = lanes(&grad_attention_row, chunk);
                // dZ, scaled by s: every later term carries the factor s dZ.
                let mut grad_logit = [0.0f32; LANES];
                for lane in 0..LANES {
                    let a = attention[lane];
                    grad_logit[lane] = grad_attention[lane] * a * (1.0 - a) * inverse_std[lane];
                }
                for (k, d) in centred[..maps].iter().enumerate() {
                    let dw_k = &mut dw[k * weight_stride + at..k * weight_stride + at + LANES];
                    for lane in 0..LANES {
                        // dZ Phat_k = (s dZ) d_k.
                        dw_k[lane] += grad_logit[lane] * d[lane];
                    }
                }
                // dP_k = s dZ (W_k - mean(W)) - (s dZ s Z / K) d_k, carried down the pyramid
                // to the finest groups (G^T dP): the first term's share is the call's
                // `group_weights`; the second needs G^T d, each map's value added into its
                // two halves, scaled by their shares.
                let mut carried = centred;
                for k in 0..N - 1 {
                    let [first, second] = constants.child_shares[k];
                    let parent = carried[k];
                    for (lane, parent) in parent.iter().enumerate() {
                        carried[2 * k + 1][lane] += first * parent;
                        carried[2 * k + 2][lane] += second * parent;
                    }
                }
                let mut carried_scale = [0.0f32; LANES];
                for lane in 0..LANES {
                    carried_scale[lane] =
                        grad_logit[lane] * inverse_std[lane] * logit[lane] * constants.inverse_maps;
                }
                for group in 0..N {
                    let row = group * tile + chunk;
                    let shares = lanes(group_weights, group * weight_stride + at);
                    let carried = carried[N - 1 + group];
                    for (lane, g) in grad_groups[row..row + LANES].iter_mut().enumerate() {
                        *g = (grad_logit[lane] * shares[lane]
                            - carried_scale[lane] * carried[lane])
                            * constants.inverse_group_size[group];
                    }
                }
                scratch.attention[chunk..chunk + LANES].copy_from_slice(&attention);
            }
            let attention = &scratch.attention[..len];
            for (channel, &group) in pyramid.group_of_channel.iter().enumerate() {
                let range = channel * pixels + start..channel * pixels + start + len;
                let group_grad = &grad_groups[group * tile..group * tile + len];
                let Some(affine) = affine else {
                    for ((d, a), g) in grad[range].iter_mut().zip(attention).zip(group_grad) {
                        *d = *d * a + g;
                    }
                    continue;
                };
                // The BatchNorm's `sum dz` and `sum dz (x - mean)` in LANES accumulators per
                // channel, pixel `p` in lane `p % LANES` (tiles start at multiples of LANES).
                let sums = &mut batch_norm_sums[channel * 2 * LANES..][..2 * LANES];
                let (mut sum_dz, mut sum_dz_x) = (lanes(sums, 0), lanes(sums, LANES));
                let mean = affine.mean[channel];
                let mut rows = grad[range.clone()]
                    .chunks_mut(LANES)
                    .zip(attention.chunks(LANES))
                    .zip(group_grad.chunks(LANES))
                    .zip(sample[range].chunks(LANES));
                let mut sums_of = (&mut sum_dz, &mut sum_dz_x);
                for (((d, a), g), x) in &mut rows {
                    // Whole chunks as arrays, so the lanes are one vector.
                    match (
                        <&mut [f32; LANES]>::try_from(&mut *d),
                        <&[f32; LANES]>::try_from(a),
                        <&[f32; LANES]>::try_from(g),
                        <&[f32; LANES]>::try_from(x),
                    ) {
                        (Ok(d), Ok(a), Ok(g), Ok(x)) => {
                            gradient_and_sums(d, a, g, x, mean, &mut sums_of)
                        }
                        _ => gradient_and_sums(d, a, g, x, mean, &mut sums_of),
                    }
                }
                sums[..LANES].copy_from_slice(&sum_dz);
                sums[LANES..].copy_from_slice(&sum_dz_x);
            }
        }
    }
}

/// `dx = dy * a + g` over one chunk of at most [`LANES`] pixels, written over `dy`, with the
/// BatchNorm's `sum dx` and `sum dx (x - mean)` accumulated lane by lane.
#[inline(always)]
fn gradient_and_sums(
    dy: &mut [f32],
    attention: &[f32],
    group_grad: &[f32],
    x: &[f32],
    mean: f32,
    (sum_dz, sum_dz_x): &mut (&mut Lanes, &mut Lanes),
) {
    for lane in 0..dy.len() {
        let value = dy[lane] * attention[lane] + group_grad[lane];
        dy[lane] = value;
        sum_dz[lane] += value;
        sum_dz_x[lane] += value * (x[lane] - mean);
    }
}

/// `U = G^T (W - mean_k W)` per pixel, `[n, P]`: what each finest group receives of the centred
/// weights through the pyramid (`G` the `[K, n]` matrix with `P = G F`). It depends on the
/// weights only, so the backward step computes it once per call instead of once per sample.
fn group_weight_shares(pyramid: &Pyramid, weights: &[f32], pixels: usize) -> Vec<f32> {
    let (maps, groups) = (pyramid.maps, pyramid.finest_groups);
    let mut shares = vec![0.0f32; groups * pixels];
    let mut values = vec![0.0f32; maps];
    for pixel in 0..pixels {
        for (k, value) in values.iter_mut().enumerate() {
            *value = weights[k * pixels + pixel];
        }
        let mean = values.iter().sum::<f32>() / maps as f32;
        values.iter_mut().for_each(|value| *value -= mean);
        for (k, [first, second]) in pyramid.child_shares.iter().enumerate() {
            let parent = values[k];
            values[2 * k + 1] += first * parent;
            values[2 * k + 2] += second * parent;
        }
        for (group, value) in values[groups - 1..].iter().enumerate() {
            shares[group * pixels + pixel] = *value;
        }
    }
    shares
}

/// Gradients of `sum(dY * Y)` with respect to `x` and `weights`.
///
/// Per pixel, with `d_k` the centred pyramid values, `s = 1/sqrt(var + eps)`, `Phat = s d`:
/// `dA = sum_c dY_c X_c`, `dZ = dA a (1 - a)`, `dW_k = sum_b dZ Phat_k`; through the pixel
/// normalization `dP_k = s dZ (W_k - mean(W) - Phat_k Z / K)` (the layer-norm gradient with
/// `dPhat = dZ W`, using `mean(dPhat Phat) = dZ Z / K`); through the pyramid
/// `dF_j = sum_k G[k, j] dP_k`; and `dX_c = dY_c a + dF_group(c) / |group(c)|`. `s`, `Z` and
/// `a` come from the forward's `context`.
///
/// With the residual end's forward `output` (`relu(Y + residual)`), `grad_output` is that of the
/// output instead: it is masked by `output > 0` on the way in, and the masked gradient is also
/// returned as the residual's.
///
/// With an [`InputAffine`], `x` is a training BatchNorm's input and the unit's input is
/// `x * scale + shift`; the gradient returned is still the unit input's, and beside it, per
/// channel, the BatchNorm's `(sum dz, sum dz (x - mean))` with `dz` that gradient.
// The inputs are the forward's, its kept context and the gradient: bundling them would only
// rename them.
#[allow(clippy::too_many_arguments)]
pub(super) fn backward(
    x: &FlexTensor,
    weights: &FlexTensor,
    context: &FlexTensor,
    grad_output: FlexTensor,
    end_output: Option<&FlexTensor>,
    levels: usize,
    epsilon: f64,
    affine: Option<InputAffine>,
) -> UnitGradients {
    let Dims {
        batch,
        channels,
        pixels,
    } = dims_of(&x.shape(), weights, levels);
    let weight_shape = weights.shape();
    let values = contiguous_values(x);
    let context = contiguous_values(context);
    let mut grad_x = writable_contiguous(grad_output);
    let weights = contiguous_values(weights);
    let pyramid = Pyramid::new(channels, levels, epsilon);
    let maps = pyramid.maps;
    let inputs = KernelInputs {
        pyramid: &pyramid,
        // The weights enter only through `group_weights` and the saved context.
        weights: &[],
        group_weights: &padded_weights(
            &group_weight_shares(&pyramid, &weights, pixels),
            pyramid.finest_groups,
            pixels,
        ),
        pixels,
        tile: tile_pixels(channels, pixels),
        affine,
    };
    let sample_len = channels * pixels;
    // Each split of the batch sums its samples' weight gradients in sample order into its own
    // buffer; the buffers are then summed in split order, so the result does not depend on how
    // rayon schedules the work, and only a few `[K, P]` buffers exist at once.
    let samples_per_split = batch.div_ceil(WEIGHT_GRADIENT_SPLITS).max(1);
    let splits = batch.div_ceil(samples_per_split);
    let padded_len = maps * inputs.weight_stride();
    let mut grad_weights_per_split = vec![0.0f32; splits * padded_len];
    let split_len = (samples_per_split * sample_len).max(1);
    let context_split_len = (samples_per_split * CONTEXT_ROWS * inputs.context_stride()).max(1);
    let end_output = end_output.map(contiguous_values);
    let mut grad_residual = end_output.as_ref().map(|_| unwritten(values.len()));
    // Each split's share of the residual end (see `BlockEndSplit`), or none.
    let mut ends: Vec<Option<BlockEndSplit>> = match (&end_output, grad_residual.as_deref_mut()) {
        (Some(output), Some(grad_residual)) => output
            .chunks(split_len)
            .zip(grad_residual.chunks_mut(split_len))
            .map(|(output, grad_residual)| {
                Some(BlockEndSplit {
                    output,
                    grad_residual,
                })
            })
            .collect(),
        _ => (0..splits).map(|_| None).collect(),
    };
    // Per split, the BatchNorm's sums (see `backward_split_generic`), `[C, 2, LANES]`.
    let sums_len = if affine.is_some() {
        channels * 2 * LANES
    } else {
        0
    };
    let mut batch_norm_sums_per_split = vec![0.0f32; splits * sums_len];
    let mut split_sums: Vec<&mut [f32]> = match sums_len {
        0 => (0..splits).map(|_| &mut [][..]).collect(),
        len => batch_norm_sums_per_split.chunks_mut(len).collect(),
    };
    grad_x
        .try_storage_mut::<f32>()
        .expect("writable_contiguous returns an unshared tensor")
        .par_chunks_mut(split_len)
        .zip(grad_weights_per_split.par_chunks_mut(padded_len.max(1)))
        .zip(values.par_chunks(split_len))
        .zip(context.par_chunks(context_split_len))
        .zip(ends.par_iter_mut())
        .zip(split_sums.par_iter_mut())
        .with_min_len(items_per_task(split_len))
        .for_each(
            |(((((grad_split, dw), x_split), context_split), end), sums)| {
                let end = end.take();
                backward_split(&inputs, x_split, context_split, grad_split, dw, end, sums);
            },
        );
    drop(ends);
    drop(split_sums);
    // Lane by lane in split order, then the lanes in order: a fixed order of sums.
    let batch_norm_sums = affine.map(|_| {
        let mut lanes = vec![0.0f32; sums_len];
        for split in batch_norm_sums_per_split.chunks(sums_len) {
            lanes
                .iter_mut()
                .zip(split)
                .for_each(|(sum, value)| *sum += value);
        }
        lanes
            .chunks(2 * LANES)
            .map(|channel| {
                let (dz, dz_x) = channel.split_at(LANES);
                (dz.iter().sum(), dz_x.iter().sum())
            })
            .collect()
    });
    let mut grad_weights = vec![0.0f32; maps * pixels];
    for split in grad_weights_per_split.chunks(padded_len.max(1)) {
        for (total, padded_row) in grad_weights
            .chunks_mut(pixels.max(1))
            .zip(split.chunks(inputs.weight_stride()))
        {
            for (sum, value) in total.iter_mut().zip(padded_row) {
                *sum += value;
            }
        }
    }
    let grad_residual = grad_residual.map(|grad_residual| {
        // SAFETY: each split's `backward_split` wrote its share of the residual's gradient.
        flex_tensor(unsafe { assume_written(grad_residual) }, x.shape())
    });
    UnitGradients {
        input: grad_x,
        weights: flex_tensor(grad_weights, weight_shape),
        residual: grad_residual,
        batch_norm_sums,
    }
}

/// What [`backward`] returns.
pub(super) struct UnitGradients {
    /// The unit input's gradient.
    pub(super) input: FlexTensor,
    /// The weights' gradient.
    pub(super) weights: FlexTensor,
    /// The residual's, with the residual end.
    pub(super) residual: Option<FlexTensor>,
    /// Per channel `(sum dz, sum dz (x - mean))`, with an [`InputAffine`].
    pub(super) batch_norm_sums: Option<Vec<(f32, f32)>>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attention::PpcrConfig;
    use crate::attention::testing::{
        assert_gradients_match, assert_matches_reference, device, ppcr_gradients as gradients,
        ppcr_with_random_weights as unit, random_tensor, values,
    };

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

    /// The recalibration with the residual add and ReLU in its pass gives the bits of the unit
    /// followed by the residual kernel.
    #[test]
    fn the_residual_end_in_the_same_pass_gives_the_separate_kernels_bits() {
        let device = device();
        for (index, (batch, channels, size, levels)) in SHAPES.into_iter().enumerate() {
            let seed = index as u64 * 5 + 2;
            let ppcr = unit(channels, size, levels, seed, &device);
            let x = random_tensor([batch, channels, size[0], size[1]], seed + 1, &device);
            let residual = random_tensor([batch, channels, size[0], size[1]], seed + 2, &device);
            let weights = ppcr.pixel_context_weights.val();
            assert!(residual_available(&x, &weights, &residual));
            let fused = recalibrate_add_relu(x.clone(), weights, residual.clone(), levels, 1e-5);
            let separate = crate::kernels::cpu::residual::add_relu(ppcr.forward(x), residual);
            let (fused, separate) = (values(fused), values(separate));
            assert!(fused.contains(&0.0) && fused.iter().any(|&v| v > 0.0));
            assert_eq!(
                fused, separate,
                "B={batch} C={channels} {size:?} L={levels}"
            );
        }
    }

    #[test]
    fn the_residual_end_in_training_gives_the_separate_nodes_bits() {
        let device = device().autodiff();
        for (index, (batch, channels, size, levels)) in SHAPES.into_iter().enumerate() {
            let seed = index as u64 * 5 + 3;
            let ppcr = unit(channels, size, levels, seed, &device);
            let shape = [batch, channels, size[0], size[1]];
            let x = random_tensor(shape, seed + 1, &device).require_grad();
            let residual = random_tensor(shape, seed + 2, &device).require_grad();
            let probe = random_tensor(shape, seed + 3, &device);
            let weights = ppcr.pixel_context_weights.val();
            assert!(residual_available(&x, &weights, &residual));
            let run = |fused: bool| {
                let y = if fused {
                    recalibrate_add_relu(x.clone(), weights.clone(), residual.clone(), levels, 1e-5)
                } else {
                    crate::kernels::cpu::residual::add_relu(
                        recalibrate(x.clone(), weights.clone(), levels, 1e-5),
                        residual.clone(),
                    )
                };
                let grads = (y.clone() * probe.clone()).sum().backward();
                [
                    values(y),
                    values(x.grad(&grads).unwrap()),
                    values(weights.grad(&grads).unwrap()),
                    values(residual.grad(&grads).unwrap()),
                ]
            };
            let (fused, separate) = (run(true), run(false));
            assert!(fused[0].contains(&0.0) && fused[3].iter().any(|&v| v != 0.0));
            for (what, (fused, separate)) in ["y", "dx", "dw", "dresidual"]
                .iter()
                .zip(fused.iter().zip(&separate))
            {
                assert_eq!(
                    fused, separate,
                    "{what}: B={batch} C={channels} {size:?} L={levels}"
                );
            }
        }
    }

    #[test]
    fn the_residual_end_in_training_matches_finite_differences() {
        // `x` and the residual enter as one input `[x; r]` stacked on the channels, so one
        // check covers both gradients and the unit's weights.
        let device = device().autodiff();
        let channels = 11;
        let ppcr = unit(channels, [3, 5], 4, 7, &device);
        assert_gradients_match(ppcr, [2, 2 * channels, 3, 5], |ppcr, input| {
            let x = input.clone().narrow(1, 0, channels);
            let residual = input.narrow(1, channels, channels);
            let weights = ppcr.pixel_context_weights.val();
            recalibrate_add_relu(x, weights, residual, 4, 1e-5)
        });
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
    fn the_wide_compilation_gives_the_same_bits_as_the_baseline_one() {
        // On a processor with AVX2, `forward_sample` and `backward_split` run the 8-wide
        // compilation; the `_any_depth` functions called directly are the baseline one. Both
        // with the unit's input as stored and as a BatchNorm's input and affine map.
        for ((batch, channels, size, levels), folded) in SHAPES
            .into_iter()
            .flat_map(|shape| [(shape, false), (shape, true)])
        {
            let pixels = size[0] * size[1];
            let sample_len = channels * pixels;
            let pyramid = Pyramid::new(channels, levels, 1e-5);
            let maps = pyramid.maps;
            let x = crate::attention::testing::seeded_values(batch * sample_len, 1);
            let dy = crate::attention::testing::seeded_values(batch * sample_len, 2);
            let w = crate::attention::testing::seeded_values(maps * pixels, 3);
            let inputs = KernelInputs {
                pyramid: &pyramid,
                weights: &padded_weights(&w, maps, pixels),
                group_weights: &padded_weights(
                    &group_weight_shares(&pyramid, &w, pixels),
                    pyramid.finest_groups,
                    pixels,
                ),
                pixels,
                tile: tile_pixels(channels, pixels),
                affine: None,
            };
            let per_channel = |seed| crate::attention::testing::seeded_values(channels, seed);
            let (scale, shift, mean) = (per_channel(4), per_channel(5), per_channel(6));
            let inputs = KernelInputs {
                affine: folded.then_some(InputAffine {
                    scale: &scale,
                    shift: &shift,
                    mean: &mean,
                }),
                ..inputs
            };
            // Every sample's output and context, as the autodiff forward keeps them.
            let context_len = CONTEXT_ROWS * inputs.context_stride();
            type ForwardKernel = fn(
                &KernelInputs,
                &[f32],
                &[f32],
                &mut [std::mem::MaybeUninit<f32>],
                &mut [f32],
                &mut Scratch,
            );
            let forward_with = |kernel: ForwardKernel| {
                let mut out = unwritten(batch * sample_len);
                let mut context = vec![0.0; batch * context_len];
                let mut scratch = Scratch::new(&pyramid, inputs.tile);
                for ((out, sample), context) in out
                    .chunks_mut(sample_len)
                    .zip(x.chunks(sample_len))
                    .zip(context.chunks_mut(context_len))
                {
                    kernel(&inputs, sample, &[], out, context, &mut scratch);
                }
                // SAFETY: the kernel writes every sample.
                (unsafe { assume_written(out) }, context)
            };
            let (wide, wide_context) = forward_with(forward_sample);
            let (baseline, baseline_context) = forward_with(forward_sample_any_depth);
            let bits = |values: &[f32]| values.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&wide), bits(&baseline));
            assert_eq!(bits(&wide_context), bits(&baseline_context));
            type BackwardKernel = fn(
                &KernelInputs,
                &[f32],
                &[f32],
                &mut [f32],
                &mut [f32],
                Option<BlockEndSplit>,
                &mut [f32],
            );
            // With the residual end, `x` stands in for the block's output: its sign is the mask.
            let backward_with = |kernel: BackwardKernel, with_end: bool| {
                let mut grad = dy.clone();
                let mut dw = vec![0.0; maps * inputs.weight_stride()];
                let mut grad_residual = unwritten(if with_end { x.len() } else { 0 });
                let end = with_end.then(|| BlockEndSplit {
                    output: &x,
                    grad_residual: &mut grad_residual,
                });
                let mut sums = vec![0.0; if folded { channels * 2 * LANES } else { 0 }];
                kernel(
                    &inputs,
                    &x,
                    &baseline_context,
                    &mut grad,
                    &mut dw,
                    end,
                    &mut sums,
                );
                // SAFETY: the kernel writes the residual's gradient in full where asked.
                let grad_residual = unsafe { assume_written(grad_residual) };
                bits(
                    &grad
                        .into_iter()
                        .chain(dw)
                        .chain(grad_residual)
                        .chain(sums)
                        .collect::<Vec<_>>(),
                )
            };
            for with_end in [false, true] {
                assert_eq!(
                    backward_with(backward_split, with_end),
                    backward_with(backward_split_any_depth, with_end)
                );
            }
        }
    }

    #[test]
    fn a_pyramid_deeper_than_the_kernel_handles_uses_the_tensor_formulation() {
        let device = device();
        let levels = MAX_LEVELS + 1;
        let channels = 1 << (levels - 1);
        let ppcr = unit(channels, [2, 2], levels, 4, &device);
        let x = random_tensor([1, channels, 2, 2], 7, &device);
        let output = values(ppcr.forward(x.clone()));
        // The same bits as the tensor formulation (the kernel sums in another order, so it
        // would differ in the last bits), and the literal formulation's values: the fallback
        // is taken and is right.
        assert_eq!(output, values(ppcr.try_tensor_forward(x.clone()).unwrap()));
        let literal = values(x.clone() * ppcr.reference_attention_map(x).unwrap());
        assert_matches_reference(&output, &literal, 1e-5, "8-level forward");
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
