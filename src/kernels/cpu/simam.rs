//! SimAM's forward and backward pass as one fused CPU kernel on the Flex backend.
//!
//! Yang, Zhang, Li, Xie, "SimAM: A Simple, Parameter-Free Attention Module for Convolutional
//! Neural Networks" (ICML 2021); the unit is defined in `simam.rs`. Composed of burn tensor
//! operations, SimAM is about ten passes over the feature map (mean, deviation, square,
//! variance, energy, sigmoid, product) plus their autodiff nodes, which made it the slowest
//! unit of the zoo in a ResNet-20 training step (+27% when composed so). Here each
//! channel plane is handled whole while it sits in cache: two sums, then the product; the
//! backward recomputes them and writes `dX` over the `dY` it is handed.
//!
//! Per plane of `n` values, with `m = max(n - 1, 1)`: `mu = mean(x)`, `d = x - mu`,
//! `k = 1 / (4 (sum(d^2) / m + lambda))`, `e = d^2 k + 1/2`, `a = sigmoid(e)`, `y = x a`.

use burn::backend::autodiff::Autodiff;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::{
    Backend, Dispatch, Flex, TensorMetadata, backend_extension, tensor::FloatTensor,
};
use burn::tensor::Tensor;
use rayon::prelude::*;

use super::common::{
    assume_written, contiguous_values, dispatch_vector_width, flex_tensor, items_per_task,
    lane_sum, lane_sum_pairs, on_flex_f32, sigmoid, unwritten, writable_contiguous,
};

/// The fused SimAM reweighting as a backend extension operation.
///
/// Implemented for `Flex` (forward only) and `Autodiff<Flex>` (forward plus a hand-written
/// backward node); any other backend takes the unit's tensor formulation, which
/// [`fused_available`] decides.
#[backend_extension(Flex, Autodiff)]
pub trait SimAmOps: Backend {
    /// `Y = X * sigmoid((X - mu)^2 / (4 (var + lambda)) + 1/2)` per channel plane of the
    /// `[B, C, H, W]` input `x`.
    fn simam_reweight(x: FloatTensor<Self>, lambda: f64) -> FloatTensor<Self>;
}

/// Whether [`reweight`] can run on `x`: it lives on the Flex backend (plain or under autodiff)
/// and holds `f32` values.
pub fn fused_available(x: &Tensor<4>) -> bool {
    on_flex_f32(x)
}

/// Run the fused SimAM on `x` (`[B, C, H, W]`); the caller checks [`fused_available`].
pub fn reweight(x: Tensor<4>, lambda: f64) -> Tensor<4> {
    Tensor::from_dispatch(<Dispatch as SimAmOps>::simam_reweight(
        x.into_dispatch(),
        lambda,
    ))
}

impl SimAmOps for Flex {
    fn simam_reweight(x: FlexTensor, lambda: f64) -> FlexTensor {
        forward(&x, lambda)
    }
}

impl<C: CheckpointStrategy> SimAmOps for Autodiff<Flex, C> {
    fn simam_reweight(x: FloatTensor<Self>, lambda: f64) -> FloatTensor<Self> {
        let guards = [x.node()];
        let x = x.into_primitive();
        let output = forward(&x, lambda);
        match ReweightBackward
            .prepare::<C>(guards)
            .compute_bound()
            .stateful()
        {
            // The backward step recomputes each plane's two sums from `x`, which it reads anyway.
            OpsKind::Tracked(prep) => prep.finish(SavedInput { x, lambda }, output),
            OpsKind::UnTracked(prep) => prep.finish(output),
        }
    }
}

/// The autodiff node of [`SimAmOps::simam_reweight`].
#[derive(Debug)]
struct ReweightBackward;

/// What the backward step needs: the forward input (shared, not copied) and `lambda`.
#[derive(Debug, Clone)]
struct SavedInput {
    x: FlexTensor,
    lambda: f64,
}

impl Backward<Flex, 1> for ReweightBackward {
    type State = SavedInput;

    fn backward(
        self,
        ops: Ops<Self::State, 1>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        let [x_node] = ops.parents;
        let grad_output = grads.consume::<Flex>(&ops.node);
        if let Some(node) = x_node {
            let grad_x = backward(&ops.state.x, grad_output, ops.state.lambda);
            grads.register::<Flex>(node.id, grad_x);
        }
    }
}

/// A plane's mean, `k = 1 / (4 (var + lambda))` and the sum of its deviations.
#[inline(always)]
fn plane_statistics(plane: &[f32], lambda: f32) -> (f32, f32, f32) {
    let n = plane.len();
    let mean = lane_sum(plane, |x| x) / n as f32;
    let squares = lane_sum(plane, |x| (x - mean) * (x - mean));
    let deviations = lane_sum(plane, |x| x - mean);
    let neighbours = n.saturating_sub(1).max(1) as f32;
    (
        mean,
        1.0 / (4.0 * (squares / neighbours + lambda)),
        deviations,
    )
}

dispatch_vector_width! {
    /// `out = x * a` for consecutive planes of `plane_len` values.
    fn forward_planes => forward_planes_generic(
        planes: &[f32],
        out: &mut [std::mem::MaybeUninit<f32>],
        plane_len: usize,
        lambda: f32,
    )
}

#[inline(always)]
fn forward_planes_generic(
    planes: &[f32],
    out: &mut [std::mem::MaybeUninit<f32>],
    plane_len: usize,
    lambda: f32,
) {
    for (plane, out) in planes
        .chunks(plane_len.max(1))
        .zip(out.chunks_mut(plane_len.max(1)))
    {
        let (mean, k, _) = plane_statistics(plane, lambda);
        for (y, &x) in out.iter_mut().zip(plane) {
            let d = x - mean;
            y.write(x * sigmoid(d * d * k + 0.5));
        }
    }
}

/// `Y = X * A`, planes split over rayon tasks.
fn forward(x: &FlexTensor, lambda: f64) -> FlexTensor {
    let shape = x.shape();
    let [_, _, height, width] = shape.dims();
    let plane_len = height * width;
    let values = contiguous_values(x);
    let per_task = items_per_task(plane_len) * plane_len.max(1);
    let mut output = unwritten(values.len());
    output
        .par_chunks_mut(per_task.max(1))
        .zip(values.par_chunks(per_task.max(1)))
        .for_each(|(out, planes)| forward_planes(planes, out, plane_len, lambda as f32));
    // SAFETY: `forward_planes` writes every value of every plane.
    flex_tensor(unsafe { assume_written(output) }, shape)
}

dispatch_vector_width! {
    /// The backward step for consecutive planes: `grad` holds their `dy` on entry and their
    /// `dx` on return; `scratch` holds `2 * plane_len` values.
    fn backward_planes => backward_planes_generic(
        planes: &[f32],
        grad: &mut [f32],
        scratch: &mut [f32],
        plane_len: usize,
        lambda: f32,
    )
}

/// Per plane, with `t = dY x a (1 - a)` (the gradient of `e`), `T = sum t d^2`, `U = sum t d`
/// and `D = sum d`: `dd_j = 2 d_j (t_j k - 4 k^2 T / m)` (through `e_j` directly and through the
/// variance) and `dX_j = dY_j a_j + dd_j - mean(dd)`, with `mean(dd) = (2 k U - 8 k^2 T D / m) / n`.
#[inline(always)]
fn backward_planes_generic(
    planes: &[f32],
    grad: &mut [f32],
    scratch: &mut [f32],
    plane_len: usize,
    lambda: f32,
) {
    let (attention, grad_energy) = scratch.split_at_mut(plane_len);
    for (plane, grad) in planes
        .chunks(plane_len.max(1))
        .zip(grad.chunks_mut(plane_len.max(1)))
    {
        let n = plane.len();
        let (mean, k, deviations) = plane_statistics(plane, lambda);
        for (((a, t), &x), &dy) in attention
            .iter_mut()
            .zip(grad_energy.iter_mut())
            .zip(plane)
            .zip(grad.iter())
        {
            let d = x - mean;
            *a = sigmoid(d * d * k + 0.5);
            *t = dy * x * *a * (1.0 - *a);
        }
        let sum_t_d2 = lane_sum_pairs(&grad_energy[..n], plane, |t, x| t * (x - mean) * (x - mean));
        let sum_t_d = lane_sum_pairs(&grad_energy[..n], plane, |t, x| t * (x - mean));
        let neighbours = n.saturating_sub(1).max(1) as f32;
        let through_variance = 8.0 * k * k * sum_t_d2 / neighbours;
        let mean_grad = (2.0 * k * sum_t_d - through_variance * deviations) / n as f32;
        for (((dy, &x), &a), &t) in grad
            .iter_mut()
            .zip(plane)
            .zip(&*attention)
            .zip(&*grad_energy)
        {
            let d = x - mean;
            *dy = *dy * a + 2.0 * k * d * t - through_variance * d - mean_grad;
        }
    }
}

/// The gradient of `sum(dY * Y)` with respect to `x`, written over `grad_output`.
fn backward(x: &FlexTensor, grad_output: FlexTensor, lambda: f64) -> FlexTensor {
    let [_, _, height, width] = x.shape().dims();
    let plane_len = height * width;
    let values = contiguous_values(x);
    let per_task = items_per_task(plane_len) * plane_len.max(1);
    let mut grad = writable_contiguous(grad_output);
    grad.try_storage_mut::<f32>()
        .expect("writable_contiguous returns an unshared tensor")
        .par_chunks_mut(per_task.max(1))
        .zip(values.par_chunks(per_task.max(1)))
        .for_each_init(
            || vec![0.0f32; 2 * plane_len],
            |scratch, (grad, planes)| {
                backward_planes(planes, grad, scratch, plane_len, lambda as f32)
            },
        );
    grad
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attention::testing::{assert_matches_reference, device, random_tensor};
    use crate::attention::{SimAm, SimAmConfig};

    /// Uneven planes, a single-value plane, batch 1 and 3.
    const SHAPES: [[usize; 4]; 5] = [
        [2, 3, 4, 4],
        [1, 5, 3, 7],
        [3, 2, 1, 1],
        [2, 4, 9, 2],
        [1, 16, 8, 8],
    ];

    fn values(tensor: Tensor<4>) -> Vec<f32> {
        tensor.into_data().try_to_vec::<f32>().unwrap()
    }

    fn unit() -> SimAm {
        SimAmConfig::new().init()
    }

    #[test]
    fn the_fused_path_is_taken_on_flex_with_and_without_autodiff() {
        crate::attention::testing::assert_fused_on_flex(fused_available);
    }

    #[test]
    fn fused_forward_matches_the_tensor_formulation() {
        for (seed, shape) in SHAPES.into_iter().enumerate() {
            let x = random_tensor(shape, seed as u64, &device()).mul_scalar(3.0);
            let fused = values(reweight(x.clone(), 1e-4));
            let reference = values(unit().tensor_forward(x));
            assert_matches_reference(&fused, &reference, 2e-5, &format!("{shape:?} value"));
        }
    }

    #[test]
    fn fused_input_gradient_matches_the_tensor_formulation() {
        let device = device().autodiff();
        for (seed, shape) in SHAPES.into_iter().enumerate() {
            let x = random_tensor(shape, seed as u64 + 10, &device).mul_scalar(2.0);
            // A non-uniform upstream gradient, so every term of the backward step counts.
            let upstream = random_tensor(shape, seed as u64 + 20, &device);
            let gradient = |forward: &dyn Fn(Tensor<4>) -> Tensor<4>| {
                let x = x.clone().detach().require_grad();
                let grads = (forward(x.clone()) * upstream.clone()).sum().backward();
                values(x.grad(&grads).unwrap())
            };
            let fused = gradient(&|x| reweight(x, 1e-4));
            let reference = gradient(&|x| unit().tensor_forward(x));
            assert_matches_reference(&fused, &reference, 2e-5, &format!("{shape:?} gradient"));
        }
    }

    #[test]
    fn the_wide_compilation_gives_the_same_bits_as_the_baseline_one() {
        let plane_len = 21;
        let x = crate::attention::testing::seeded_values(4 * plane_len, 1);
        let dy = crate::attention::testing::seeded_values(4 * plane_len, 2);
        let bits = |values: &[f32]| values.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        type Forward = fn(&[f32], &mut [std::mem::MaybeUninit<f32>], usize, f32);
        let forward_with = |kernel: Forward| {
            let mut out = unwritten(x.len());
            kernel(&x, &mut out, plane_len, 1e-4);
            // SAFETY: the kernel writes every value.
            bits(&unsafe { assume_written(out) })
        };
        assert_eq!(
            forward_with(forward_planes),
            forward_with(forward_planes_generic)
        );
        type Backward = fn(&[f32], &mut [f32], &mut [f32], usize, f32);
        let backward_with = |kernel: Backward| {
            let mut grad = dy.clone();
            kernel(
                &x,
                &mut grad,
                &mut vec![0.0; 2 * plane_len],
                plane_len,
                1e-4,
            );
            bits(&grad)
        };
        assert_eq!(
            backward_with(backward_planes),
            backward_with(backward_planes_generic)
        );
    }
}
