//! The end of a residual block, `relu(branch + shortcut)`, as one CPU kernel on the Flex backend
//! with a hand-written backward step.
//!
//! He et al., "Deep Residual Learning for Image Recognition" (CVPR 2016): every block ends by
//! adding its shortcut to its (recalibrated) branch and applying ReLU. As two burn operations
//! that is two passes forward (the sum written, then read again for ReLU) and two autodiff
//! nodes; here it is one pass each way: `y = max(a + b, 0)`, and backward
//! `da = db = dy * [y > 0]`, written over the `dy` it is handed and given to both inputs.

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
    PARALLEL_GRAIN, assume_written, contiguous_values, flex_tensor, on_flex_f32, relu, unwritten,
    writable_contiguous,
};

/// `relu(a + b)` as a backend extension operation.
///
/// Implemented for `Flex` and `Autodiff<Flex>`; any other backend takes burn's own add and
/// ReLU, which [`fused_available`] decides.
#[backend_extension(Flex, Autodiff)]
pub trait ResidualOps: Backend {
    /// `max(a + b, 0)` for `a` and `b` of one shape.
    fn add_relu(a: FloatTensor<Self>, b: FloatTensor<Self>) -> FloatTensor<Self>;
}

/// Whether [`add_relu`] can run on these tensors: both on the Flex backend (plain or under
/// autodiff), `f32`, of one shape.
pub fn fused_available(a: &Tensor<4>, b: &Tensor<4>) -> bool {
    a.dims() == b.dims() && on_flex_f32(a) && on_flex_f32(b)
}

/// `relu(a + b)`; the caller checks [`fused_available`].
pub fn add_relu(a: Tensor<4>, b: Tensor<4>) -> Tensor<4> {
    Tensor::from_dispatch(<Dispatch as ResidualOps>::add_relu(
        a.into_dispatch(),
        b.into_dispatch(),
    ))
}

impl ResidualOps for Flex {
    fn add_relu(a: FlexTensor, b: FlexTensor) -> FlexTensor {
        forward(&a, &b)
    }
}

impl<C: CheckpointStrategy> ResidualOps for Autodiff<Flex, C> {
    fn add_relu(a: FloatTensor<Self>, b: FloatTensor<Self>) -> FloatTensor<Self> {
        let guards = [a.node(), b.node()];
        let output = forward(&a.into_primitive(), &b.into_primitive());
        match AddReluBackward
            .prepare::<C>(guards)
            .compute_bound()
            .stateful()
        {
            // The output (shared, not copied) is the mask: `y > 0` exactly where `a + b > 0`.
            OpsKind::Tracked(prep) => prep.finish(output.clone(), output),
            OpsKind::UnTracked(prep) => prep.finish(output),
        }
    }
}

/// The autodiff node of [`ResidualOps::add_relu`].
#[derive(Debug)]
struct AddReluBackward;

impl Backward<Flex, 2> for AddReluBackward {
    type State = FlexTensor;

    fn backward(
        self,
        ops: Ops<Self::State, 2>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        let [a_node, b_node] = ops.parents;
        let grad_output = grads.consume::<Flex>(&ops.node);
        let output = contiguous_values(&ops.state);
        let mut grad = writable_contiguous(grad_output);
        grad.try_storage_mut::<f32>()
            .expect("writable_contiguous gives an unshared buffer")
            .par_chunks_mut(PARALLEL_GRAIN)
            .zip(output.par_chunks(PARALLEL_GRAIN))
            .for_each(|(dy, y)| mask(dy, y));
        match (a_node, b_node) {
            (Some(a), Some(b)) => {
                // Both inputs get the same gradient; sharing the buffer is safe, as a kernel
                // writes over a gradient only when nothing else holds it.
                grads.register::<Flex>(a.id, grad.clone());
                grads.register::<Flex>(b.id, grad);
            }
            (Some(node), None) | (None, Some(node)) => grads.register::<Flex>(node.id, grad),
            (None, None) => {}
        }
    }
}

/// `dy = dy * [y > 0]` in place.
#[inline(never)]
fn mask(dy: &mut [f32], y: &[f32]) {
    for (d, &y) in dy.iter_mut().zip(y) {
        *d = if y > 0.0 { *d } else { 0.0 };
    }
}

/// `y = max(a + b, 0)`.
fn forward(a: &FlexTensor, b: &FlexTensor) -> FlexTensor {
    let shape = a.shape();
    assert_eq!(shape, b.shape(), "add_relu: the two inputs differ in shape");
    let (a, b) = (contiguous_values(a), contiguous_values(b));
    let mut output = unwritten(a.len());
    output
        .par_chunks_mut(PARALLEL_GRAIN)
        .zip(
            a.par_chunks(PARALLEL_GRAIN)
                .zip(b.par_chunks(PARALLEL_GRAIN)),
        )
        .for_each(|(y, (a, b))| add_relu_chunk(y, a, b));
    // SAFETY: every chunk of the output was written.
    flex_tensor(unsafe { assume_written(output) }, shape)
}

#[inline(never)]
fn add_relu_chunk(y: &mut [std::mem::MaybeUninit<f32>], a: &[f32], b: &[f32]) {
    for ((y, &a), &b) in y.iter_mut().zip(a).zip(b) {
        y.write(relu(a + b));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attention::testing::{assert_matches_reference, device, random_tensor, values};
    use burn::tensor::TensorData;
    use burn::tensor::activation::relu;

    #[test]
    fn forward_and_gradients_match_burns_add_and_relu() {
        let device = device().autodiff();
        for shape in [[3, 5, 7, 9], [1, 3, 1, 1], [2, 64, 32, 32]] {
            let a = random_tensor(shape, 1, &device);
            let b = random_tensor(shape, 2, &device);
            let probe = random_tensor(shape, 3, &device);
            assert!(fused_available(&a, &b));
            let run = |kernel: bool| {
                let (a, b) = (a.clone().require_grad(), b.clone().require_grad());
                let y = if kernel {
                    add_relu(a.clone(), b.clone())
                } else {
                    relu(a.clone() + b.clone())
                };
                let grads = (y.clone() * probe.clone()).sum().backward();
                [
                    values(y),
                    values(a.grad(&grads).unwrap()),
                    values(b.grad(&grads).unwrap()),
                ]
            };
            let (fused, burn) = (run(true), run(false));
            for (name, (f, r)) in ["y", "da", "db"].iter().zip(fused.iter().zip(&burn)) {
                assert_matches_reference(f, r, 0.0, &format!("{shape:?} {name}"));
            }
        }
    }

    #[test]
    fn a_hand_computed_case() {
        let device = device();
        let a = Tensor::<4>::from_data(
            TensorData::new(vec![1.0f32, -2.0, 0.5, 3.0], [1, 1, 2, 2]),
            &device,
        );
        let b = Tensor::<4>::from_data(
            TensorData::new(vec![-3.0f32, 1.0, 0.5, -1.0], [1, 1, 2, 2]),
            &device,
        );
        assert_eq!(values(add_relu(a, b)), vec![0.0, 0.0, 1.0, 2.0]);
        // NaN stays NaN (a diverged run must not come out as zeros).
        let a =
            Tensor::<4>::from_data(TensorData::new(vec![f32::NAN, -1.0], [1, 1, 1, 2]), &device);
        let b = Tensor::<4>::from_data(
            TensorData::new(vec![1.0f32, f32::NAN], [1, 1, 1, 2]),
            &device,
        );
        assert!(values(add_relu(a, b)).iter().all(|v| v.is_nan()));
    }
}
