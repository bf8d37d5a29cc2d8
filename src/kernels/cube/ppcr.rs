//! The PPCR unit's forward and backward pass as CubeCL kernels, for burn's GPU backends.
//!
//! Zhang et al., "PPCR: Learning Pyramid Pixel Context Recalibration Module for Medical Image
//! Classification" (arXiv 2303.01917); the unit is defined in `ppcr.rs`. On a GPU the tensor
//! formulation is a dozen small kernel launches per call, each a pass over a feature-map-sized
//! tensor: PyTorch's version of it made a ResNet-20 training step 2.78x as long on an H100
//! (docs/gpu.md). Here a forward is one launch and a backward two (the kernel, then
//! one reduction over the batch of each sample's share of the weights' gradient). Every
//! thread sums channels into the finest pyramid groups' sums; the pixel's coarser groups,
//! normalization, integration and sigmoid are computed in registers, with the depth a
//! compile-time parameter and every loop over maps unrolled; then `X * sigmoid(Z)` is written.
//! The backward reads `X` and `dY` once for the sums and `sum_c dY_c X_c`, then writes `dX`.
//! Neighbouring threads own neighbouring pixels, so every read of a channel plane is coalesced.
//!
//! Two layouts spread this over threads ([`Layout`]): one thread per pixel, reading all of the
//! pixel's channels; or one thread per pixel and finest group, `2^(L-1)` times as many,
//! sharing the group sums through shared memory. The first does the least work; the second
//! gives a GPU more threads to hide memory latency where maps are small and wide (ResNet-18's
//! last stage at batch 32 has 1,568 pixels of 512 channels). Which wins depends on the device
//! and the shape, so CubeCL's autotune times both on the first call of each shape class and
//! keeps the faster, as burn does for its own matrix multiplications and reductions.
//!
//! It plugs into burn through the backend-extension API, like `ppcr_fused` for the CPU:
//! [`PpcrCubeOps`] is implemented for burn's `CubeBackend` (every CubeCL runtime: CUDA, ROCm,
//! Vulkan, Metal, WebGPU), the extension macro derives the lazy `Fusion` implementation, and
//! `Autodiff` gets a node whose backward step calls the backward kernel. Built only with the
//! `cuda` or `wgpu` feature.

use burn::backend::autodiff::Autodiff;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::ops::FloatTensorOps;
use burn::backend::{
    AutodiffBackend, Backend, Dispatch, DispatchTensorKind, TensorMetadata, backend_extension,
    tensor::FloatTensor,
};
use burn::tensor::{DType, Shape, Tensor};
use burn_cubecl::CubeBackend;
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::ops::numeric::empty_device_contiguous_dtype;
use burn_cubecl::tensor::CubeTensor;
use cubecl::prelude::{CubeCount, CubeDim};
use cubecl::tune::{LocalTuner, Tunable, TunableSet, local_tuner};
use cubecl::{AutotuneKey, CubeTuneId, calculate_cube_count_elemwise};
use serde::{Deserialize, Serialize};

/// The deepest pyramid the kernels unroll: `2^(L-1)` finest group sums and `2^L - 1` maps are
/// held per thread. Deeper pyramids take the unit's tensor formulation.
pub const MAX_LEVELS: usize = 5;

/// The fused PPCR recalibration and its gradient as backend extension operations on burn's
/// CubeCL backends (and `Fusion` and `Autodiff` over them); calling them on any other backend
/// panics, which [`cube_available`] prevents.
#[backend_extension(
    Autodiff,
    Cube: cfg(any(feature = "cuda", feature = "wgpu")),
    Fusion: cfg(any(feature = "cuda", feature = "wgpu"))
)]
pub trait PpcrCubeOps: Backend {
    /// `Y = X * sigmoid(sum_k W_k * PN(CCPP(X))_k)` for `x` of shape `[B, C, H, W]` and
    /// `weights` of shape `[K, H, W]` with `K = 2^levels - 1`.
    #[fusion(dtype = x, shape = x)]
    fn ppcr_cube_recalibrate(
        x: FloatTensor<Self>,
        weights: FloatTensor<Self>,
        levels: usize,
        epsilon: f64,
    ) -> FloatTensor<Self>;

    /// The gradients `(dX, dW)` of [`PpcrCubeOps::ppcr_cube_recalibrate`] given `dY`.
    #[fusion(meta = |x, weights, _grad_output, _levels, _epsilon| (x.clone(), weights.clone()))]
    fn ppcr_cube_recalibrate_backward(
        x: FloatTensor<Self>,
        weights: FloatTensor<Self>,
        grad_output: FloatTensor<Self>,
        levels: usize,
        epsilon: f64,
    ) -> (FloatTensor<Self>, FloatTensor<Self>);
}

/// Whether [`recalibrate`] can run on these tensors: both live on a CubeCL backend (plain or
/// under autodiff) and hold `f32` values.
pub fn cube_available(x: &Tensor<4>, weights: &Tensor<3>) -> bool {
    on_cube_f32(x) && on_cube_f32(weights)
}

fn on_cube_f32<const D: usize>(tensor: &Tensor<D>) -> bool {
    fn on_cube(kind: &DispatchTensorKind) -> bool {
        #[allow(unreachable_patterns)]
        match kind {
            DispatchTensorKind::Cube(_) => true,
            DispatchTensorKind::Autodiff(inner) => on_cube(inner),
            _ => false,
        }
    }
    let dispatch = tensor.clone().into_dispatch();
    dispatch.kind.dtype() == DType::F32 && on_cube(&dispatch.kind)
}

/// Run the fused recalibration. `x` is `[B, C, H, W]`, `weights` `[K, H, W]`; the caller checks
/// the shapes, `levels <= MAX_LEVELS` and [`cube_available`].
pub fn recalibrate(x: Tensor<4>, weights: Tensor<3>, levels: usize, epsilon: f64) -> Tensor<4> {
    let output = <Dispatch as PpcrCubeOps>::ppcr_cube_recalibrate(
        x.into_dispatch(),
        weights.into_dispatch(),
        levels,
        epsilon,
    );
    Tensor::from_dispatch(output)
}

/// How a launch spreads the feature map over GPU threads. Which is faster depends on the shape
/// and the device, so CubeCL's autotune times both on the first call of each shape class and
/// keeps the faster (see [`Layout::ALL`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Layout {
    /// One thread per pixel of each sample, reading all of the pixel's channels: the least
    /// arithmetic, but only `B * H * W` threads, each with `2C` reads in a row.
    Pixel,
    /// One thread per pixel and finest group in cubes of 256, which share the group sums
    /// through shared memory: `2^(L-1)` times the threads, each reading its group's channels.
    Group,
}

impl Layout {
    /// Every layout with the name autotune records it under (spelled out, so that renaming a
    /// variant does not silently invalidate a stored result).
    const ALL: [(&str, Layout); 2] = [("pixel", Layout::Pixel), ("group", Layout::Group)];
}

/// The shape class autotune decides a layout for: rounded to powers of two, as burn's own
/// kernels' keys are.
#[derive(Hash, Eq, PartialEq, Debug, Clone, Serialize, Deserialize, AutotuneKey)]
struct LayoutKey {
    backward: bool,
    #[autotune(anchor)]
    batch_pixels: usize,
    #[autotune(anchor)]
    channels: usize,
    levels: usize,
}

/// The sizes a launch needs, read from `x` (`[B, C, H, W]`).
struct Dims {
    batch: usize,
    channels: usize,
    pixels: usize,
    /// Pixels over the whole batch, `B * H * W`.
    batch_pixels: usize,
}

impl Dims {
    fn of(x: &CubeTensor) -> Self {
        let shape = x.meta.shape();
        let (batch, pixels) = (shape[0], shape[2] * shape[3]);
        Self {
            batch,
            channels: shape[1],
            pixels,
            batch_pixels: batch * pixels,
        }
    }

    fn key(&self, backward: bool, levels: usize) -> LayoutKey {
        LayoutKey::new(backward, self.batch_pixels, self.channels, levels)
    }

    /// The launch grid of `layout`: for [`Layout::Pixel`] one thread per pixel; for
    /// [`Layout::Group`] cubes of [`kernels::tile_pixels`] pixels times the `2^(levels-1)`
    /// finest groups.
    fn grid(&self, x: &CubeTensor, layout: Layout, levels: usize) -> (CubeCount, CubeDim) {
        let (threads, cube_dim) = match layout {
            Layout::Pixel => (
                self.batch_pixels,
                CubeDim::new(&x.client, self.batch_pixels),
            ),
            Layout::Group => {
                let finest = 1usize << (levels - 1);
                let tile = kernels::tile_pixels(finest);
                (
                    self.batch_pixels * finest,
                    CubeDim::new_2d(tile as u32, finest as u32),
                )
            }
        };
        let cube_count = calculate_cube_count_elemwise(&x.client, threads, cube_dim);
        (cube_count, cube_dim)
    }
}

/// An unwritten contiguous tensor of `x`'s shape, type and device.
fn empty_like(x: &CubeTensor) -> CubeTensor {
    empty_device_contiguous_dtype(
        x.client.clone(),
        x.device.clone(),
        x.meta.shape().clone(),
        x.dtype,
    )
}

/// `Y` for contiguous `x` and `weights`, with the layout given.
fn forward_with(
    x: CubeTensor,
    weights: CubeTensor,
    levels: usize,
    epsilon: f32,
    layout: Layout,
) -> CubeTensor {
    let dims = Dims::of(&x);
    let output = empty_like(&x);
    let (cube_count, cube_dim) = dims.grid(&x, layout, levels);
    // SAFETY: every index a kernel reads or writes is below `B * C * H * W` (or `K * H * W` for
    // the weights) for contiguous tensors of the checked shapes, and threads past `B * H * W`
    // neither read nor write.
    unsafe {
        kernels::forward_kernel::launch_unchecked(
            &x.client,
            cube_count,
            cube_dim,
            x.clone().into_tensor_arg(),
            weights.into_tensor_arg(),
            output.clone().into_tensor_arg(),
            dims.channels,
            dims.pixels,
            dims.batch_pixels,
            epsilon,
            levels,
            layout == Layout::Group,
        );
    }
    output
}

/// `dX` for contiguous inputs, with the layout given; each sample's row of the weights'
/// gradient goes to `sample_grad_weights` (`[B, K * H * W]`).
fn backward_with(
    (x, weights, grad_output, sample_grad_weights): (
        CubeTensor,
        CubeTensor,
        CubeTensor,
        CubeTensor,
    ),
    levels: usize,
    epsilon: f32,
    layout: Layout,
) -> CubeTensor {
    let dims = Dims::of(&x);
    let grad_x = empty_like(&x);
    let (cube_count, cube_dim) = dims.grid(&x, layout, levels);
    // SAFETY: as in `forward_with`; the per-sample weight gradient is `[B, K * H * W]`.
    unsafe {
        kernels::backward_kernel::launch_unchecked(
            &x.client,
            cube_count,
            cube_dim,
            x.clone().into_tensor_arg(),
            weights.into_tensor_arg(),
            grad_output.into_tensor_arg(),
            grad_x.clone().into_tensor_arg(),
            sample_grad_weights.into_tensor_arg(),
            dims.channels,
            dims.pixels,
            dims.batch_pixels,
            epsilon,
            levels,
            layout == Layout::Group,
        );
    }
    grad_x
}

impl PpcrCubeOps for CubeBackend {
    fn ppcr_cube_recalibrate(
        x: CubeTensor,
        weights: CubeTensor,
        levels: usize,
        epsilon: f64,
    ) -> CubeTensor {
        let x = into_contiguous(x);
        let weights = into_contiguous(weights);
        let client = x.client.clone();
        let tune_id = CubeTuneId::new(&client, &x.device);
        static TUNER: LocalTuner<LayoutKey, CubeTuneId> = local_tuner!("forward");
        type Inputs = (CubeTensor, CubeTensor, usize, f32);
        let tunables = TUNER.init(&tune_id, || {
            let key = |(x, _, levels, _): &Inputs| Dims::of(x).key(false, *levels);
            let mut set = TunableSet::<LayoutKey, Inputs, CubeTensor>::new_cloning_inputs(key);
            for (name, layout) in Layout::ALL {
                set = set.with(Tunable::new(
                    name,
                    move |(x, weights, levels, epsilon): Inputs| {
                        Ok::<_, String>(forward_with(x, weights, levels, epsilon, layout))
                    },
                ));
            }
            set
        });
        TUNER.execute(
            &tune_id,
            &client,
            tunables,
            (x, weights, levels, epsilon as f32),
        )
    }

    fn ppcr_cube_recalibrate_backward(
        x: CubeTensor,
        weights: CubeTensor,
        grad_output: CubeTensor,
        levels: usize,
        epsilon: f64,
    ) -> (CubeTensor, CubeTensor) {
        let x = into_contiguous(x);
        let weights = into_contiguous(weights);
        let grad_output = into_contiguous(grad_output);
        let dims = Dims::of(&x);
        let weights_shape = weights.meta.shape().clone();
        let sample_grad_weights = empty_device_contiguous_dtype(
            x.client.clone(),
            x.device.clone(),
            Shape::new([dims.batch, weights_shape[0] * dims.pixels]),
            x.dtype,
        );
        let client = x.client.clone();
        let tune_id = CubeTuneId::new(&client, &x.device);
        // Every layout writes all of `sample_grad_weights`, so the timed runs may share it.
        type Inputs = ((CubeTensor, CubeTensor, CubeTensor, CubeTensor), usize, f32);
        static TUNER: LocalTuner<LayoutKey, CubeTuneId> = local_tuner!("backward");
        let tunables = TUNER.init(&tune_id, || {
            let key = |((x, ..), levels, _): &Inputs| Dims::of(x).key(true, *levels);
            let mut set = TunableSet::<LayoutKey, Inputs, CubeTensor>::new_cloning_inputs(key);
            for (name, layout) in Layout::ALL {
                set = set.with(Tunable::new(
                    name,
                    move |(tensors, levels, epsilon): Inputs| {
                        Ok::<_, String>(backward_with(tensors, levels, epsilon, layout))
                    },
                ));
            }
            set
        });
        let grad_x = TUNER.execute(
            &tune_id,
            &client,
            tunables,
            (
                (x, weights, grad_output, sample_grad_weights.clone()),
                levels,
                epsilon as f32,
            ),
        );
        let grad_weights = CubeBackend::float_reshape(
            CubeBackend::float_sum_dim(sample_grad_weights, 0),
            weights_shape,
        );
        (grad_x, grad_weights)
    }
}

impl<B: PpcrCubeOps, C: CheckpointStrategy> PpcrCubeOps for Autodiff<B, C> {
    fn ppcr_cube_recalibrate(
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
            // The backward kernel rebuilds the pixel context from `x`, which it reads for the
            // attention gradient anyway, so the state is the inputs alone.
            OpsKind::Tracked(prep) => {
                let output = B::ppcr_cube_recalibrate(x.clone(), weights.clone(), levels, epsilon);
                let state = SavedInputs {
                    x,
                    weights,
                    levels,
                    epsilon,
                };
                prep.finish(state, output)
            }
            OpsKind::UnTracked(prep) => {
                prep.finish(B::ppcr_cube_recalibrate(x, weights, levels, epsilon))
            }
        }
    }

    /// The gradient itself is not differentiated again: computed on the inner backend and
    /// returned untracked.
    fn ppcr_cube_recalibrate_backward(
        x: FloatTensor<Self>,
        weights: FloatTensor<Self>,
        grad_output: FloatTensor<Self>,
        levels: usize,
        epsilon: f64,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let (grad_x, grad_weights) = B::ppcr_cube_recalibrate_backward(
            x.into_primitive(),
            weights.into_primitive(),
            grad_output.into_primitive(),
            levels,
            epsilon,
        );
        (Self::from_inner(grad_x), Self::from_inner(grad_weights))
    }
}

/// The autodiff node of [`PpcrCubeOps::ppcr_cube_recalibrate`].
#[derive(Debug)]
struct RecalibrateBackward;

/// What the backward step needs: the forward inputs (shared, not copied) and the settings.
#[derive(Debug, Clone)]
struct SavedInputs<B: Backend> {
    x: FloatTensor<B>,
    weights: FloatTensor<B>,
    levels: usize,
    epsilon: f64,
}

impl<B: PpcrCubeOps> Backward<B, 2> for RecalibrateBackward {
    type State = SavedInputs<B>;

    fn backward(
        self,
        ops: Ops<Self::State, 2>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        let [x_node, weights_node] = ops.parents;
        let grad_output = grads.consume::<B>(&ops.node);
        let state = ops.state;
        let (grad_x, grad_weights) = B::ppcr_cube_recalibrate_backward(
            state.x,
            state.weights,
            grad_output,
            state.levels,
            state.epsilon,
        );
        if let Some(node) = x_node {
            grads.register::<B>(node.id, grad_x);
        }
        if let Some(node) = weights_node {
            grads.register::<B>(node.id, grad_weights);
        }
    }
}

/// The kernels, in CubeCL's kernel language (its `Tensor` is a kernel argument, not burn's).
mod kernels {
    use cubecl::prelude::*;

    /// The pixel's standardized pyramid maps `PN(CCPP(X))` (written to `normalized`, in the unit's
    /// map order: level by level, groups in order) from its finest groups' channel sums, and the
    /// inverse standard deviation used.
    #[cube]
    fn normalized_context(
        finest_sums: &Array<f32>,
        normalized: &mut Array<f32>,
        channels: usize,
        epsilon: f32,
        #[comptime] levels: usize,
    ) -> f32 {
        let finest = comptime!(1usize << (levels - 1));
        let maps = comptime!((1usize << levels) - 1);
        let mut total = 0.0f32;
        #[unroll]
        for level in 0..levels {
            let groups = comptime!(1usize << level);
            let span = comptime!(finest / groups);
            #[unroll]
            for group in 0..groups {
                let mut sum = 0.0f32;
                #[unroll]
                for part in 0..span {
                    sum += finest_sums[comptime!(group * span + part)];
                }
                let count = channels * (group + 1) / groups - channels * group / groups;
                let mean = sum / f32::cast_from(count);
                normalized[comptime!(groups - 1 + group)] = mean;
                total += mean;
            }
        }
        let centre = total / f32::cast_from(maps);
        let mut spread = 0.0f32;
        #[unroll]
        for map in 0..maps {
            let deviation = normalized[map] - centre;
            spread += deviation * deviation;
        }
        let inverse_std = 1.0f32 / f32::sqrt(spread / f32::cast_from(maps) + epsilon);
        #[unroll]
        for map in 0..maps {
            normalized[map] = (normalized[map] - centre) * inverse_std;
        }
        inverse_std
    }

    /// The pixel's attention `A = sigmoid(sum_k W_k Phat_k)` from its standardized maps.
    #[cube]
    fn pixel_attention(
        weights: &Tensor<f32>,
        normalized: &Array<f32>,
        pixel: usize,
        pixels: usize,
        #[comptime] levels: usize,
    ) -> f32 {
        let maps = comptime!((1usize << levels) - 1);
        let mut logit = 0.0f32;
        #[unroll]
        for map in 0..maps {
            logit += weights[map * pixels + pixel] * normalized[map];
        }
        1.0f32 / (1.0f32 + f32::exp(-logit))
    }

    /// The pixel's attention and gradients from its finest group sums and `sum_c dY_c X_c`:
    /// writes the pixel's row of the sample's weight gradient (at `weights_base`, stride
    /// `pixels`) and each finest group's share of `dP` (to `group_shares`), and returns the
    /// attention.
    ///
    /// With `A = sigmoid(Z)`: `dZ = A (1 - A) sum_c dY_c X_c`; `dW_k = dZ * Phat_k`; through the
    /// standardization `dP = s (dPhat - mean(dPhat) - Phat mean(dPhat Phat))` with `dPhat = dZ W`
    /// and `s` the inverse standard deviation; a finest group's share is the sum, over the
    /// levels, of the enclosing group's `dP` divided by that group's size, and every channel's
    /// `dX` is `dY_c A` plus its group's share.
    #[cube]
    #[allow(clippy::too_many_arguments)]
    fn pixel_gradients(
        finest_sums: &Array<f32>,
        gate_product: f32,
        weights: &Tensor<f32>,
        sample_grad_weights: &mut Tensor<f32>,
        group_shares: &mut Array<f32>,
        weights_base: usize,
        pixel: usize,
        pixels: usize,
        channels: usize,
        epsilon: f32,
        #[comptime] levels: usize,
    ) -> f32 {
        let finest = comptime!(1usize << (levels - 1));
        let maps = comptime!((1usize << levels) - 1);
        let mut normalized = Array::<f32>::new(maps);
        let inverse_std =
            normalized_context(finest_sums, &mut normalized, channels, epsilon, levels);
        let attention = pixel_attention(weights, &normalized, pixel, pixels, levels);
        let grad_logit = gate_product * attention * (1.0f32 - attention);

        let mut grad_normalized = Array::<f32>::new(maps);
        let mut mean_grad = 0.0f32;
        let mut mean_grad_normalized = 0.0f32;
        #[unroll]
        for map in 0..maps {
            sample_grad_weights[weights_base + map * pixels] = grad_logit * normalized[map];
            let grad = grad_logit * weights[map * pixels + pixel];
            grad_normalized[map] = grad;
            mean_grad += grad;
            mean_grad_normalized += grad * normalized[map];
        }
        mean_grad /= f32::cast_from(maps);
        mean_grad_normalized /= f32::cast_from(maps);

        #[unroll]
        for group in 0..finest {
            group_shares[group] = 0.0f32;
        }
        #[unroll]
        for level in 0..levels {
            let groups = comptime!(1usize << level);
            let span = comptime!(finest / groups);
            #[unroll]
            for group in 0..groups {
                let map = comptime!(groups - 1 + group);
                let grad_map = inverse_std
                    * (grad_normalized[map] - mean_grad - normalized[map] * mean_grad_normalized);
                let count = channels * (group + 1) / groups - channels * group / groups;
                let share = grad_map / f32::cast_from(count);
                #[unroll]
                for part in 0..span {
                    group_shares[comptime!(group * span + part)] += share;
                }
            }
        }
        attention
    }

    /// The sum over channels `first..end` of `x` at one pixel (channel 0 at `base`; planes of
    /// `pixels` values).
    #[cube]
    fn channel_sum(x: &Tensor<f32>, base: usize, first: usize, end: usize, pixels: usize) -> f32 {
        let mut sum = 0.0f32;
        for channel in first..end {
            sum += x[base + channel * pixels];
        }
        sum
    }

    /// [`channel_sum`] of `x`, and of `dY * X`, read together.
    #[derive(CubeType)]
    struct ChannelSums {
        sum: f32,
        gate_product: f32,
    }

    #[cube]
    fn channel_sums(
        x: &Tensor<f32>,
        grad_output: &Tensor<f32>,
        base: usize,
        first: usize,
        end: usize,
        pixels: usize,
    ) -> ChannelSums {
        let mut sum = 0.0f32;
        let mut gate_product = 0.0f32;
        for channel in first..end {
            let at = base + channel * pixels;
            let value = x[at];
            sum += value;
            gate_product += grad_output[at] * value;
        }
        ChannelSums { sum, gate_product }
    }

    /// `Y = X * A` over channels `first..end` at one pixel.
    #[cube]
    #[allow(clippy::too_many_arguments)]
    fn write_product(
        x: &Tensor<f32>,
        output: &mut Tensor<f32>,
        base: usize,
        first: usize,
        end: usize,
        pixels: usize,
        attention: f32,
    ) {
        for channel in first..end {
            let at = base + channel * pixels;
            output[at] = x[at] * attention;
        }
    }

    /// `dX = dY * A + share` over channels `first..end` at one pixel.
    #[cube]
    #[allow(clippy::too_many_arguments)]
    fn write_input_gradient(
        grad_output: &Tensor<f32>,
        grad_x: &mut Tensor<f32>,
        base: usize,
        first: usize,
        end: usize,
        pixels: usize,
        attention: f32,
        share: f32,
    ) {
        for channel in first..end {
            let at = base + channel * pixels;
            grad_x[at] = grad_output[at] * attention + share;
        }
    }

    /// `Y = X * sigmoid(Z)` in [`super::Layout::Pixel`]: one thread per pixel of one sample.
    #[cube]
    fn forward_per_pixel(
        x: &Tensor<f32>,
        weights: &Tensor<f32>,
        output: &mut Tensor<f32>,
        channels: usize,
        pixels: usize,
        batch_pixels: usize,
        epsilon: f32,
        #[comptime] levels: usize,
    ) {
        if ABSOLUTE_POS >= batch_pixels {
            terminate!();
        }
        let finest = comptime!(1usize << (levels - 1));
        let maps = comptime!((1usize << levels) - 1);
        let sample = ABSOLUTE_POS / pixels;
        let pixel = ABSOLUTE_POS % pixels;
        let base = sample * channels * pixels + pixel;

        let mut finest_sums = Array::<f32>::new(finest);
        #[unroll]
        for group in 0..finest {
            let (first, end) = (channels * group / finest, channels * (group + 1) / finest);
            finest_sums[group] = channel_sum(x, base, first, end, pixels);
        }
        let mut normalized = Array::<f32>::new(maps);
        normalized_context(&finest_sums, &mut normalized, channels, epsilon, levels);
        let attention = pixel_attention(weights, &normalized, pixel, pixels, levels);
        write_product(x, output, base, 0, channels, pixels, attention);
    }

    /// `dX` and each sample's `dW` in [`super::Layout::Pixel`] (see [`pixel_gradients`]).
    #[cube]
    #[allow(clippy::too_many_arguments)]
    fn backward_per_pixel(
        x: &Tensor<f32>,
        weights: &Tensor<f32>,
        grad_output: &Tensor<f32>,
        grad_x: &mut Tensor<f32>,
        sample_grad_weights: &mut Tensor<f32>,
        channels: usize,
        pixels: usize,
        batch_pixels: usize,
        epsilon: f32,
        #[comptime] levels: usize,
    ) {
        if ABSOLUTE_POS >= batch_pixels {
            terminate!();
        }
        let finest = comptime!(1usize << (levels - 1));
        let maps = comptime!((1usize << levels) - 1);
        let sample = ABSOLUTE_POS / pixels;
        let pixel = ABSOLUTE_POS % pixels;
        let base = sample * channels * pixels + pixel;

        let mut finest_sums = Array::<f32>::new(finest);
        let mut gate_product = 0.0f32;
        #[unroll]
        for group in 0..finest {
            let (first, end) = (channels * group / finest, channels * (group + 1) / finest);
            let sums = channel_sums(x, grad_output, base, first, end, pixels);
            finest_sums[group] = sums.sum;
            gate_product += sums.gate_product;
        }
        let mut group_shares = Array::<f32>::new(finest);
        let attention = pixel_gradients(
            &finest_sums,
            gate_product,
            weights,
            sample_grad_weights,
            &mut group_shares,
            sample * maps * pixels + pixel,
            pixel,
            pixels,
            channels,
            epsilon,
            levels,
        );
        #[unroll]
        for group in 0..finest {
            let (first, end) = (channels * group / finest, channels * (group + 1) / finest);
            let share = group_shares[group];
            write_input_gradient(
                grad_output,
                grad_x,
                base,
                first,
                end,
                pixels,
                attention,
                share,
            );
        }
    }

    /// Pixels per cube of [`super::Layout::Group`] for a pyramid of `finest` finest groups: the
    /// cube is `pixels x groups`, 256 threads, the most every CubeCL runtime allows by default
    /// (wgpu's limit).
    pub(super) const fn tile_pixels(finest: usize) -> usize {
        256 / finest
    }

    /// Where a thread of [`super::Layout::Group`] works: its sample and pixel, whether they
    /// exist (the last cube may run past `B * H * W`), the offset of its channel 0 in `x`, its
    /// finest group's channels, and its slot in the cube's shared `[groups, tile]` rows.
    #[derive(CubeType)]
    struct Place {
        sample: usize,
        pixel: usize,
        active: bool,
        base: usize,
        first_channel: usize,
        end_channel: usize,
        slot: usize,
    }

    #[cube]
    fn place(
        channels: usize,
        pixels: usize,
        batch_pixels: usize,
        #[comptime] levels: usize,
    ) -> Place {
        let finest = comptime!(1usize << (levels - 1));
        let tile = comptime!(tile_pixels(finest));
        let local = UNIT_POS_X as usize;
        let group = UNIT_POS_Y as usize;
        let global = CUBE_POS * tile + local;
        let sample = global / pixels;
        let pixel = global % pixels;
        Place {
            sample,
            pixel,
            active: global < batch_pixels,
            base: sample * channels * pixels + pixel,
            first_channel: channels * group / finest,
            end_channel: channels * (group + 1) / finest,
            slot: group * tile + local,
        }
    }

    /// The thread's pixel's value of every finest group, gathered from the cube's shared rows.
    #[cube]
    fn gather(shared: &Shared<[f32]>, #[comptime] levels: usize) -> Array<f32> {
        let finest = comptime!(1usize << (levels - 1));
        let tile = comptime!(tile_pixels(finest));
        let local = UNIT_POS_X as usize;
        let mut gathered = Array::<f32>::new(finest);
        #[unroll]
        for group in 0..finest {
            gathered[group] = shared[comptime!(group * tile) + local];
        }
        gathered
    }

    /// `Y = X * sigmoid(Z)` in [`super::Layout::Group`]: each thread sums its group's channels
    /// at its pixel, the group-0 thread of each pixel computes the pixel's attention from the
    /// shared sums, and every thread writes its group's channels.
    #[cube]
    fn forward_per_group(
        x: &Tensor<f32>,
        weights: &Tensor<f32>,
        output: &mut Tensor<f32>,
        channels: usize,
        pixels: usize,
        batch_pixels: usize,
        epsilon: f32,
        #[comptime] levels: usize,
    ) {
        let finest = comptime!(1usize << (levels - 1));
        let maps = comptime!((1usize << levels) - 1);
        let tile = comptime!(tile_pixels(finest));
        let place = place(channels, pixels, batch_pixels, levels);
        let mut group_sums = Shared::<[f32]>::new_slice(comptime!(finest * tile));
        let mut attentions = Shared::<[f32]>::new_slice(tile);
        if place.active {
            let (first, end) = (place.first_channel, place.end_channel);
            group_sums[place.slot] = channel_sum(x, place.base, first, end, pixels);
        }
        // The barriers stand outside any branch: every thread of the cube reaches them.
        sync_cube();
        if place.active && UNIT_POS_Y == 0 {
            let finest_sums = gather(&group_sums, levels);
            let mut normalized = Array::<f32>::new(maps);
            normalized_context(&finest_sums, &mut normalized, channels, epsilon, levels);
            attentions[UNIT_POS_X as usize] =
                pixel_attention(weights, &normalized, place.pixel, pixels, levels);
        }
        sync_cube();
        if place.active {
            let (first, end) = (place.first_channel, place.end_channel);
            let attention = attentions[UNIT_POS_X as usize];
            write_product(x, output, place.base, first, end, pixels, attention);
        }
    }

    /// `dX` and each sample's `dW` in [`super::Layout::Group`]: each thread sums its group's
    /// part of the group sums and of `sum_c dY_c X_c`; the group-0 thread of each pixel adds the
    /// parts in group order, computes the pixel's gradients ([`pixel_gradients`]) and hands
    /// every group its share of `dP` and the attention; then each thread writes its group's
    /// channels of `dX`.
    #[cube]
    #[allow(clippy::too_many_arguments)]
    fn backward_per_group(
        x: &Tensor<f32>,
        weights: &Tensor<f32>,
        grad_output: &Tensor<f32>,
        grad_x: &mut Tensor<f32>,
        sample_grad_weights: &mut Tensor<f32>,
        channels: usize,
        pixels: usize,
        batch_pixels: usize,
        epsilon: f32,
        #[comptime] levels: usize,
    ) {
        let finest = comptime!(1usize << (levels - 1));
        let maps = comptime!((1usize << levels) - 1);
        let tile = comptime!(tile_pixels(finest));
        let place = place(channels, pixels, batch_pixels, levels);
        // The group sums, replaced by the groups' shares of dP once the group-0 thread has read
        // them (each pixel's column is read and written by that pixel's group-0 thread alone).
        let mut group_values = Shared::<[f32]>::new_slice(comptime!(finest * tile));
        let mut group_gate_products = Shared::<[f32]>::new_slice(comptime!(finest * tile));
        let mut attentions = Shared::<[f32]>::new_slice(tile);
        if place.active {
            let (first, end) = (place.first_channel, place.end_channel);
            let sums = channel_sums(x, grad_output, place.base, first, end, pixels);
            group_values[place.slot] = sums.sum;
            group_gate_products[place.slot] = sums.gate_product;
        }
        sync_cube();
        if place.active && UNIT_POS_Y == 0 {
            let local = UNIT_POS_X as usize;
            let finest_sums = gather(&group_values, levels);
            let gate_products = gather(&group_gate_products, levels);
            let mut gate_product = 0.0f32;
            #[unroll]
            for group in 0..finest {
                gate_product += gate_products[group];
            }
            let mut group_shares = Array::<f32>::new(finest);
            attentions[local] = pixel_gradients(
                &finest_sums,
                gate_product,
                weights,
                sample_grad_weights,
                &mut group_shares,
                place.sample * maps * pixels + place.pixel,
                place.pixel,
                pixels,
                channels,
                epsilon,
                levels,
            );
            #[unroll]
            for group in 0..finest {
                group_values[comptime!(group * tile) + local] = group_shares[group];
            }
        }
        sync_cube();
        if place.active {
            let (first, end) = (place.first_channel, place.end_channel);
            let attention = attentions[UNIT_POS_X as usize];
            let share = group_values[place.slot];
            write_input_gradient(
                grad_output,
                grad_x,
                place.base,
                first,
                end,
                pixels,
                attention,
                share,
            );
        }
    }

    /// `Y = X * sigmoid(Z)` for every pixel of the batch, in the layout `per_group` names
    /// ([`super::Layout::Group`] if set, else [`super::Layout::Pixel`]); one compiled kernel per
    /// layout and depth.
    #[cube(launch_unchecked)]
    #[allow(clippy::too_many_arguments)]
    pub(super) fn forward_kernel(
        x: &Tensor<f32>,
        weights: &Tensor<f32>,
        output: &mut Tensor<f32>,
        channels: usize,
        pixels: usize,
        batch_pixels: usize,
        epsilon: f32,
        #[comptime] levels: usize,
        #[comptime] per_group: bool,
    ) {
        if per_group {
            forward_per_group(
                x,
                weights,
                output,
                channels,
                pixels,
                batch_pixels,
                epsilon,
                levels,
            );
        } else {
            forward_per_pixel(
                x,
                weights,
                output,
                channels,
                pixels,
                batch_pixels,
                epsilon,
                levels,
            );
        }
    }

    /// `dX` and each sample's `dW` for every pixel of the batch, in the layout `per_group`
    /// names, as [`forward_kernel`].
    #[cube(launch_unchecked)]
    #[allow(clippy::too_many_arguments)]
    pub(super) fn backward_kernel(
        x: &Tensor<f32>,
        weights: &Tensor<f32>,
        grad_output: &Tensor<f32>,
        grad_x: &mut Tensor<f32>,
        sample_grad_weights: &mut Tensor<f32>,
        channels: usize,
        pixels: usize,
        batch_pixels: usize,
        epsilon: f32,
        #[comptime] levels: usize,
        #[comptime] per_group: bool,
    ) {
        if per_group {
            backward_per_group(
                x,
                weights,
                grad_output,
                grad_x,
                sample_grad_weights,
                channels,
                pixels,
                batch_pixels,
                epsilon,
                levels,
            );
        } else {
            backward_per_pixel(
                x,
                weights,
                grad_output,
                grad_x,
                sample_grad_weights,
                channels,
                pixels,
                batch_pixels,
                epsilon,
                levels,
            );
        }
    }
}

// The kernels are tested where a CubeCL device can run without a GPU: wgpu's CPU adapter
// (Mesa's software Vulkan driver, lavapipe). A build with `cuda` alone has no such device.
#[cfg(all(test, feature = "wgpu"))]
mod tests {
    use super::*;
    use crate::attention::testing::{
        assert_matches_reference, ppcr_gradients as gradients, ppcr_with_random_weights as unit,
        random_tensor, values,
    };
    use crate::attention::{Ppcr, PpcrConfig};
    use burn::backend::DispatchDevice;
    use burn::tensor::{Device, DeviceKind};

    /// `(batch, channels, [height, width], levels)`: uneven channel splits (12, 20, 13),
    /// non-square maps, batch 1 and 3, three to five levels, a map larger than one cube.
    const SHAPES: [(usize, usize, [usize; 2], usize); 7] = [
        (1, 12, [3, 5], 4),
        (3, 20, [4, 3], 4),
        (3, 12, [2, 7], 3),
        (2, 13, [5, 2], 3),
        (2, 64, [6, 4], 4),
        (2, 32, [3, 3], 5),
        (2, 16, [24, 24], 4),
    ];

    /// wgpu's CPU adapter, or `None` (with a notice) where this machine has no Vulkan driver.
    fn wgpu_cpu() -> Option<Device> {
        let device = Device::wgpu(DeviceKind::Cpu);
        let probe = std::panic::catch_unwind(|| {
            Tensor::<1>::from_floats([1.0, 2.0], &device)
                .sum()
                .into_scalar::<f32>()
        });
        match probe {
            Ok(3.0) => Some(device),
            _ => {
                crate::attention::testing::skip(
                    "no wgpu CPU adapter to run the PPCR CubeCL kernels on (install Mesa's \
                     Vulkan driver, e.g. apt-get install mesa-vulkan-drivers)",
                );
                None
            }
        }
    }

    #[test]
    fn the_kernel_path_is_taken_on_wgpu_with_and_without_autodiff() {
        let Some(device) = wgpu_cpu() else { return };
        for device in [device.clone(), device.autodiff()] {
            let ppcr = unit(12, [2, 2], 4, 1, &device);
            let x = random_tensor([1, 12, 2, 2], 2, &device);
            assert!(cube_available(&x, &ppcr.pixel_context_weights.val()));
        }
        let flex = crate::attention::testing::device();
        let ppcr = unit(12, [2, 2], 4, 1, &flex);
        let x = random_tensor([1, 12, 2, 2], 2, &flex);
        assert!(!cube_available(&x, &ppcr.pixel_context_weights.val()));
    }

    /// `tensor` copied to its device as a tensor of burn's unfused `CubeBackend`, where the
    /// layouts' launches are called directly.
    fn to_cube<const D: usize>(tensor: &Tensor<D>) -> CubeTensor {
        let device = match tensor.device().without_autodiff().as_dispatch() {
            DispatchDevice::Cube(device) => device.clone(),
            other => panic!("not a CubeCL device: {other:?}"),
        };
        CubeBackend::float_from_data(tensor.to_data(), &device)
    }

    fn cube_values(tensor: CubeTensor) -> Vec<f32> {
        burn_cubecl::ops::into_data_sync(tensor)
            .try_to_vec::<f32>()
            .unwrap()
    }

    /// `Y` of `layout`'s forward kernel.
    fn layout_forward(ppcr: &Ppcr, x: &Tensor<4>, layout: Layout) -> Vec<f32> {
        let weights = to_cube(&ppcr.pixel_context_weights.val());
        let y = forward_with(
            to_cube(x),
            weights,
            ppcr.levels,
            ppcr.epsilon as f32,
            layout,
        );
        cube_values(y)
    }

    /// `(dX, dW)` of `layout`'s backward kernel for `dY = probe`, `dW` summed over the batch
    /// as the unit's backward step does.
    fn layout_gradients(
        ppcr: &Ppcr,
        x: &Tensor<4>,
        probe: &Tensor<4>,
        layout: Layout,
    ) -> (Vec<f32>, Vec<f32>) {
        let weights = ppcr.pixel_context_weights.val();
        let [maps, height, width] = weights.dims();
        let sample_grad_weights = to_cube(&Tensor::<2>::zeros(
            [x.dims()[0], maps * height * width],
            &x.device(),
        ));
        let tensors = (
            to_cube(x),
            to_cube(&weights),
            to_cube(probe),
            sample_grad_weights.clone(),
        );
        let grad_x = backward_with(tensors, ppcr.levels, ppcr.epsilon as f32, layout);
        let grad_w = CubeBackend::float_sum_dim(sample_grad_weights, 0);
        (cube_values(grad_x), cube_values(grad_w))
    }

    #[test]
    fn kernel_forward_matches_the_literal_formulation() {
        let Some(device) = wgpu_cpu() else { return };
        for (index, (batch, channels, size, levels)) in SHAPES.into_iter().enumerate() {
            let seed = index as u64 * 7 + 1;
            let ppcr = unit(channels, size, levels, seed, &device);
            let x = random_tensor([batch, channels, size[0], size[1]], seed + 3, &device);
            let literal = values(x.clone() * ppcr.reference_attention_map(x.clone()).unwrap());
            let what = format!("B={batch} C={channels} {size:?} L={levels} y");
            let tuned = values(ppcr.forward(x.clone()));
            assert_matches_reference(&tuned, &literal, 1e-5, &format!("{what}, tuned"));
            for (name, layout) in Layout::ALL {
                let y = layout_forward(&ppcr, &x, layout);
                assert_matches_reference(&y, &literal, 1e-5, &format!("{what}, {name}"));
            }
        }
    }

    #[test]
    fn kernel_forward_with_zero_weights_is_exactly_half_the_input() {
        let Some(device) = wgpu_cpu() else { return };
        for (batch, channels, size, levels) in SHAPES {
            let ppcr = PpcrConfig::new(channels, size)
                .with_levels(levels)
                .init(&device)
                .unwrap();
            let x = random_tensor([batch, channels, size[0], size[1]], 5, &device);
            let half = values(x.clone().mul_scalar(0.5));
            assert_eq!(values(ppcr.forward(x.clone())), half);
            for (name, layout) in Layout::ALL {
                assert_eq!(layout_forward(&ppcr, &x, layout), half, "{name}");
            }
        }
    }

    #[test]
    fn kernel_gradients_equal_those_of_the_tensor_formulation() {
        let Some(device) = wgpu_cpu() else { return };
        let device = device.autodiff();
        for (index, (batch, channels, size, levels)) in SHAPES.into_iter().enumerate() {
            let seed = index as u64 * 11 + 2;
            let ppcr = unit(channels, size, levels, seed, &device);
            let shape = [batch, channels, size[0], size[1]];
            let x = random_tensor(shape, seed + 1, &device);
            let probe = random_tensor(shape, seed + 2, &device);
            let (tensor_x, tensor_w) = gradients(&ppcr, &x, &probe, false);
            let what = format!("B={batch} C={channels} {size:?} L={levels}");
            let (tuned_x, tuned_w) = gradients(&ppcr, &x, &probe, true);
            assert_matches_reference(&tuned_x, &tensor_x, 1e-4, &format!("{what} dx, tuned"));
            assert_matches_reference(&tuned_w, &tensor_w, 1e-4, &format!("{what} dW, tuned"));
            for (name, layout) in Layout::ALL {
                let (grad_x, grad_w) = layout_gradients(&ppcr, &x, &probe, layout);
                assert_matches_reference(&grad_x, &tensor_x, 1e-4, &format!("{what} dx, {name}"));
                assert_matches_reference(&grad_w, &tensor_w, 1e-4, &format!("{what} dW, {name}"));
            }
        }
    }

    #[test]
    fn a_pyramid_deeper_than_the_kernels_unroll_uses_the_tensor_formulation() {
        let Some(device) = wgpu_cpu() else { return };
        let levels = MAX_LEVELS + 1;
        let channels = 1 << (levels - 1);
        let ppcr = unit(channels, [2, 2], levels, 4, &device);
        let x = random_tensor([1, channels, 2, 2], 7, &device);
        let output = values(ppcr.forward(x.clone()));
        // The same bits as the tensor formulation (the kernels sum in another order, so they
        // would differ in the last bits), and the literal formulation's values: the fallback
        // is taken and is right.
        assert_eq!(output, values(ppcr.try_tensor_forward(x.clone()).unwrap()));
        let literal = values(x.clone() * ppcr.reference_attention_map(x).unwrap());
        assert_matches_reference(&output, &literal, 1e-5, "6-level forward on wgpu");
    }

    #[test]
    fn a_strided_input_gives_the_same_output_as_its_contiguous_copy() {
        let Some(device) = wgpu_cpu() else { return };
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
