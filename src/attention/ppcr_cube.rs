//! The PPCR unit's forward and backward pass as two CubeCL kernels, for burn's GPU backends.
//!
//! Zhang et al., "PPCR: Learning Pyramid Pixel Context Recalibration Module for Medical Image
//! Classification" (arXiv 2303.01917); the unit is defined in `ppcr.rs`. On a GPU the tensor
//! formulation is a dozen small kernel launches per call, each a pass over a feature-map-sized
//! tensor: PyTorch's version of it made a ResNet-20 training step 2.78x as long on an H100
//! (docs/performance.md). Here one GPU thread owns one pixel of one sample. It reads the pixel's
//! `C` channel values once for the finest pyramid groups' sums, builds the coarser groups from
//! them, normalizes the `K` maps and integrates them in registers, and reads the channels again
//! to write `X * sigmoid(Z)`. Neighbouring threads own neighbouring pixels, so every read of a
//! channel plane is coalesced. The backward kernel does the same with `X` and `dY`, and writes
//! `dX` and each sample's share of the weights' gradient, which one reduction over the batch
//! sums.
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
use cubecl::calculate_cube_count_elemwise;
use cubecl::prelude::{CubeCount, CubeDim};

use kernels::{backward_kernel, forward_kernel};

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

/// The sizes a launch needs, read from `x` (`[B, C, H, W]`).
struct Dims {
    batch: usize,
    channels: usize,
    pixels: usize,
    /// One kernel thread per pixel of each sample: `B * H * W`.
    threads: usize,
}

impl Dims {
    fn of(x: &CubeTensor) -> Self {
        let shape = x.meta.shape();
        let (batch, pixels) = (shape[0], shape[2] * shape[3]);
        Self {
            batch,
            channels: shape[1],
            pixels,
            threads: batch * pixels,
        }
    }

    /// The launch grid covering [`Dims::threads`] on `x`'s device.
    fn grid(&self, x: &CubeTensor) -> (CubeCount, CubeDim) {
        let cube_dim = CubeDim::new(&x.client, self.threads);
        let cube_count = calculate_cube_count_elemwise(&x.client, self.threads, cube_dim);
        (cube_count, cube_dim)
    }
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
        let dims = Dims::of(&x);
        let output = empty_device_contiguous_dtype(
            x.client.clone(),
            x.device.clone(),
            x.meta.shape().clone(),
            x.dtype,
        );
        let (cube_count, cube_dim) = dims.grid(&x);
        // SAFETY: every index the kernel reads or writes is below `B * C * H * W` (or
        // `K * H * W` for the weights) for contiguous tensors of the checked shapes, and
        // threads past `B * H * W` return first.
        unsafe {
            forward_kernel::launch_unchecked(
                &x.client,
                cube_count,
                cube_dim,
                x.clone().into_tensor_arg(),
                weights.into_tensor_arg(),
                output.clone().into_tensor_arg(),
                dims.channels,
                dims.pixels,
                dims.threads,
                epsilon as f32,
                levels,
            );
        }
        output
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
        let maps = weights_shape[0];
        let grad_x = empty_device_contiguous_dtype(
            x.client.clone(),
            x.device.clone(),
            x.meta.shape().clone(),
            x.dtype,
        );
        let sample_grad_weights = empty_device_contiguous_dtype(
            x.client.clone(),
            x.device.clone(),
            Shape::new([dims.batch, maps * dims.pixels]),
            x.dtype,
        );
        let (cube_count, cube_dim) = dims.grid(&x);
        // SAFETY: as in the forward launch; the per-sample weight gradient is `[B, K * H * W]`.
        unsafe {
            backward_kernel::launch_unchecked(
                &x.client,
                cube_count,
                cube_dim,
                x.clone().into_tensor_arg(),
                weights.into_tensor_arg(),
                grad_output.into_tensor_arg(),
                grad_x.clone().into_tensor_arg(),
                sample_grad_weights.clone().into_tensor_arg(),
                dims.channels,
                dims.pixels,
                dims.threads,
                epsilon as f32,
                levels,
            );
        }
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

    /// `Y = X * sigmoid(Z)`, one thread per pixel of one sample.
    #[cube(launch_unchecked)]
    pub(super) fn forward_kernel(
        x: &Tensor<f32>,
        weights: &Tensor<f32>,
        output: &mut Tensor<f32>,
        channels: usize,
        pixels: usize,
        threads: usize,
        epsilon: f32,
        #[comptime] levels: usize,
    ) {
        if ABSOLUTE_POS >= threads {
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
            let mut sum = 0.0f32;
            for channel in channels * group / finest..channels * (group + 1) / finest {
                sum += x[base + channel * pixels];
            }
            finest_sums[group] = sum;
        }
        let mut normalized = Array::<f32>::new(maps);
        normalized_context(&finest_sums, &mut normalized, channels, epsilon, levels);
        let attention = pixel_attention(weights, &normalized, pixel, pixels, levels);
        for channel in 0..channels {
            let at = base + channel * pixels;
            output[at] = x[at] * attention;
        }
    }

    /// `dX` and each sample's `dW`, one thread per pixel of one sample.
    ///
    /// With `A = sigmoid(Z)`: `dZ = A (1 - A) sum_c dY_c X_c`; `dW_k = dZ * Phat_k`; through the
    /// standardization `dP = s (dPhat - mean(dPhat) - Phat mean(dPhat Phat))` with `dPhat = dZ W`
    /// and `s` the inverse standard deviation; and every channel gets `dY_c A` plus the sum, over
    /// the levels, of its group's `dP` divided by the group's size.
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
        threads: usize,
        epsilon: f32,
        #[comptime] levels: usize,
    ) {
        if ABSOLUTE_POS >= threads {
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
            let mut sum = 0.0f32;
            for channel in channels * group / finest..channels * (group + 1) / finest {
                let at = base + channel * pixels;
                let value = x[at];
                sum += value;
                gate_product += grad_output[at] * value;
            }
            finest_sums[group] = sum;
        }
        let mut normalized = Array::<f32>::new(maps);
        let inverse_std =
            normalized_context(&finest_sums, &mut normalized, channels, epsilon, levels);
        let attention = pixel_attention(weights, &normalized, pixel, pixels, levels);
        let grad_logit = gate_product * attention * (1.0f32 - attention);

        let weights_base = sample * maps * pixels + pixel;
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

        // Each finest group's share: the sum over the levels of the enclosing group's dP / size.
        let mut group_share = Array::<f32>::new(finest);
        #[unroll]
        for group in 0..finest {
            group_share[group] = 0.0f32;
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
                    group_share[comptime!(group * span + part)] += share;
                }
            }
        }
        #[unroll]
        for group in 0..finest {
            let share = group_share[group];
            for channel in channels * group / finest..channels * (group + 1) / finest {
                let at = base + channel * pixels;
                grad_x[at] = grad_output[at] * attention + share;
            }
        }
    }
}

// The kernels are tested where a CubeCL device can run without a GPU: wgpu's CPU adapter
// (Mesa's software Vulkan driver, lavapipe). A build with `cuda` alone has no such device.
#[cfg(all(test, feature = "wgpu"))]
mod tests {
    use super::*;
    use crate::attention::PpcrConfig;
    use crate::attention::testing::{
        assert_matches_reference, ppcr_gradients as gradients, ppcr_with_random_weights as unit,
        random_tensor, values,
    };
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
                eprintln!(
                    "skipped: no wgpu CPU adapter to run the PPCR CubeCL kernels on (install \
                     Mesa's Vulkan driver, e.g. apt-get install mesa-vulkan-drivers)"
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

    #[test]
    fn kernel_forward_matches_the_literal_formulation() {
        let Some(device) = wgpu_cpu() else { return };
        for (index, (batch, channels, size, levels)) in SHAPES.into_iter().enumerate() {
            let seed = index as u64 * 7 + 1;
            let ppcr = unit(channels, size, levels, seed, &device);
            let x = random_tensor([batch, channels, size[0], size[1]], seed + 3, &device);
            let kernel = values(ppcr.forward(x.clone()));
            let literal = values(x.clone() * ppcr.reference_attention_map(x).unwrap());
            let what = format!("B={batch} C={channels} {size:?} L={levels} y");
            assert_matches_reference(&kernel, &literal, 1e-5, &what);
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
            assert_eq!(values(ppcr.forward(x.clone())), values(x.mul_scalar(0.5)));
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
            let (kernel_x, kernel_w) = gradients(&ppcr, &x, &probe, true);
            let (tensor_x, tensor_w) = gradients(&ppcr, &x, &probe, false);
            let what = format!("B={batch} C={channels} {size:?} L={levels}");
            assert_matches_reference(&kernel_x, &tensor_x, 1e-4, &format!("{what} dx"));
            assert_matches_reference(&kernel_w, &tensor_w, 1e-4, &format!("{what} dW"));
        }
    }

    #[test]
    fn a_pyramid_deeper_than_the_kernels_unroll_uses_the_tensor_formulation() {
        let Some(device) = wgpu_cpu() else { return };
        let levels = MAX_LEVELS + 1;
        let channels = 1 << (levels - 1);
        let ppcr = unit(channels, [2, 2], levels, 4, &device);
        let x = random_tensor([1, channels, 2, 2], 7, &device);
        assert_eq!(
            values(ppcr.forward(x.clone())),
            values(ppcr.try_tensor_forward(x).unwrap())
        );
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
