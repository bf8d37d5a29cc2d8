//! Batch normalisation in training mode folded into the PPCR unit and the residual end after
//! it (a BasicBlock's `bn2 -> PPCR -> add -> ReLU`), as one CPU kernel on the Flex backend.
//!
//! Ioffe & Szegedy, "Batch Normalization" (ICML 2015), and Zhang et al., "PPCR: Learning
//! Pyramid Pixel Context Recalibration Module for Medical Image Classification" (arXiv
//! 2303.01917), which puts the unit right after the block's last BatchNorm. Run apart, the
//! BatchNorm writes its output for the unit to read; and in the backward step the unit writes
//! the BatchNorm's incoming gradient, which the BatchNorm reads back, beside its input, in a
//! pass of its own for two sums per channel. Here the unit reads the BatchNorm's input and
//! applies the per-channel affine map as it reads (the normalised map is never written), and
//! the unit's last backward sweep, which writes that gradient, sums it per channel as it goes.
//! The batch statistics and the final input-gradient pass are `batch_norm`'s. The output, the
//! statistics and the unit's and the residual's gradients are those of the two kernels run
//! apart, bit for bit; the BatchNorm's sums are added in another order, so its gradients agree
//! to rounding.

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

use super::batch_norm::{self, ChannelMoments, Statistics};
use super::common::{contiguous_values, flex_tensor};
use super::ppcr::{self, ForwardExtra, InputAffine, register_gradients};

/// A BatchNorm layer's parameters in training mode (it normalises with the batch's own
/// statistics).
#[derive(Debug, Clone)]
pub struct TrainingBatchNorm {
    /// The scale per channel.
    pub gamma: Tensor<1>,
    /// The offset per channel.
    pub beta: Tensor<1>,
    /// Added to the variance.
    pub epsilon: f64,
}

/// An output computed with a BatchNorm in training mode, and the batch statistics the
/// BatchNorm's running statistics are updated with.
#[derive(Debug, Clone)]
pub struct WithBatchStatistics {
    /// The output.
    pub output: Tensor<4>,
    /// The batch mean per channel (not tracked).
    pub mean: Tensor<1>,
    /// The biased batch variance per channel (not tracked).
    pub variance: Tensor<1>,
}

/// The BatchNorm, PPCR and residual end as one backend extension operation.
///
/// Implemented for `Flex` and `Autodiff<Flex>`; [`available`] tells the caller when the tensors
/// can take it.
#[backend_extension(Flex, Autodiff)]
pub trait BatchNormPpcrOps: Backend {
    /// `(relu(ppcr(bn(x)) + residual), mean, var)` for `x` of shape `[B, C, H, W]`, the
    /// BatchNorm's `gamma` and `beta` (`[C]`), the unit's `weights` (`[K, H, W]`) and a
    /// `residual` of `x`'s shape; the batch mean and biased variance are returned (untracked)
    /// for the running statistics.
    #[allow(clippy::too_many_arguments)]
    fn batch_norm_ppcr_add_relu(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        batch_norm_epsilon: f64,
        weights: FloatTensor<Self>,
        residual: FloatTensor<Self>,
        levels: usize,
        epsilon: f64,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>);
}

/// Whether [`batch_norm_ppcr_add_relu`] can run on these tensors: what the BatchNorm kernel and
/// the unit's residual kernel each need.
pub fn available(
    x: &Tensor<4>,
    norm: &TrainingBatchNorm,
    weights: &Tensor<3>,
    residual: &Tensor<4>,
) -> bool {
    batch_norm::fused_available(x, &norm.gamma, &norm.beta)
        && ppcr::residual_available(x, weights, residual)
}

/// `relu(ppcr(bn(x)) + residual)` with the batch's statistics, and those statistics. The
/// caller checks [`available`], the unit's shapes and its depth.
pub fn batch_norm_ppcr_add_relu(
    x: Tensor<4>,
    norm: TrainingBatchNorm,
    weights: Tensor<3>,
    residual: Tensor<4>,
    levels: usize,
    epsilon: f64,
) -> WithBatchStatistics {
    let (output, mean, variance) = <Dispatch as BatchNormPpcrOps>::batch_norm_ppcr_add_relu(
        x.into_dispatch(),
        norm.gamma.into_dispatch(),
        norm.beta.into_dispatch(),
        norm.epsilon,
        weights.into_dispatch(),
        residual.into_dispatch(),
        levels,
        epsilon,
    );
    WithBatchStatistics {
        output: Tensor::from_dispatch(output),
        mean: Tensor::from_dispatch(mean),
        variance: Tensor::from_dispatch(variance),
    }
}

/// The BatchNorm of one call: the batch statistics of `x` and the affine map they give.
#[derive(Debug, Clone)]
struct Fold {
    statistics: Statistics,
    scale: Vec<f32>,
    shift: Vec<f32>,
}

impl Fold {
    fn new(x: &FlexTensor, gamma: &FlexTensor, beta: &FlexTensor, epsilon: f64) -> Self {
        let shape = x.shape();
        assert_eq!(
            shape.num_dims(),
            4,
            "batch_norm_ppcr: x must be [B, C, H, W]"
        );
        let (gamma, beta) = (contiguous_values(gamma), contiguous_values(beta));
        assert!(
            gamma.len() == shape[1] && beta.len() == shape[1],
            "batch_norm_ppcr: gamma and beta are not [C]"
        );
        let statistics = batch_norm::batch_statistics(&contiguous_values(x), &shape);
        let (scale, shift) = statistics.affine(&gamma, &beta, epsilon);
        Fold {
            statistics,
            scale,
            shift,
        }
    }

    fn affine(&self) -> InputAffine<'_> {
        InputAffine {
            scale: &self.scale,
            shift: &self.shift,
            mean: &self.statistics.mean,
        }
    }

    /// The batch mean and variance as `[C]` tensors.
    fn statistics(&self) -> [FlexTensor; 2] {
        let channels = Shape::new([self.scale.len()]);
        [&self.statistics.mean, &self.statistics.variance]
            .map(|values| flex_tensor(values.clone(), channels.clone()))
    }
}

impl BatchNormPpcrOps for Flex {
    fn batch_norm_ppcr_add_relu(
        x: FlexTensor,
        gamma: FlexTensor,
        beta: FlexTensor,
        batch_norm_epsilon: f64,
        weights: FlexTensor,
        residual: FlexTensor,
        levels: usize,
        epsilon: f64,
    ) -> (FlexTensor, FlexTensor, FlexTensor) {
        let fold = Fold::new(&x, &gamma, &beta, batch_norm_epsilon);
        let residual = contiguous_values(&residual);
        let extra = ForwardExtra::AddRelu(&residual);
        let (output, _) = ppcr::forward(&x, &weights, levels, epsilon, extra, Some(fold.affine()));
        let [mean, variance] = fold.statistics();
        (output, mean, variance)
    }
}

impl<C: CheckpointStrategy> BatchNormPpcrOps for Autodiff<Flex, C> {
    fn batch_norm_ppcr_add_relu(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        batch_norm_epsilon: f64,
        weights: FloatTensor<Self>,
        residual: FloatTensor<Self>,
        levels: usize,
        epsilon: f64,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        let guards = [
            x.node(),
            gamma.node(),
            beta.node(),
            weights.node(),
            residual.node(),
        ];
        let x = x.into_primitive();
        let gamma = gamma.into_primitive();
        let fold = Fold::new(&x, &gamma, &beta.into_primitive(), batch_norm_epsilon);
        let weights = weights.into_primitive();
        let residual = residual.into_primitive();
        let residual = contiguous_values(&residual);
        let [mean, variance] = fold.statistics().map(<Self as AutodiffBackend>::from_inner);
        let output = match FoldBackward.prepare::<C>(guards).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let extra = ForwardExtra::KeepContextAddRelu(&residual);
                let (output, context) =
                    ppcr::forward(&x, &weights, levels, epsilon, extra, Some(fold.affine()));
                let state = FoldState {
                    x,
                    weights,
                    context: context.expect("forward keeps the context when asked"),
                    // The output (shared, not copied) is the residual end's mask.
                    output: output.clone(),
                    gamma: contiguous_values(&gamma).into_owned(),
                    fold,
                    batch_norm_epsilon,
                    levels,
                    epsilon,
                };
                prep.finish(state, output)
            }
            OpsKind::UnTracked(prep) => {
                let extra = ForwardExtra::AddRelu(&residual);
                let affine = Some(fold.affine());
                prep.finish(ppcr::forward(&x, &weights, levels, epsilon, extra, affine).0)
            }
        };
        (output, mean, variance)
    }
}

/// The autodiff node of [`BatchNormPpcrOps::batch_norm_ppcr_add_relu`].
#[derive(Debug)]
struct FoldBackward;

/// What the backward step needs: the BatchNorm's input, the unit's weights, its per-pixel
/// context and the output (all shared, not copied), `gamma` and the batch statistics.
#[derive(Debug, Clone)]
struct FoldState {
    x: FlexTensor,
    weights: FlexTensor,
    context: FlexTensor,
    output: FlexTensor,
    gamma: Vec<f32>,
    fold: Fold,
    batch_norm_epsilon: f64,
    levels: usize,
    epsilon: f64,
}

impl Backward<Flex, 5> for FoldBackward {
    type State = FoldState;

    fn backward(
        self,
        ops: Ops<Self::State, 5>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        let grad_output = grads.consume::<Flex>(&ops.node);
        let state = ops.state;
        let unit = ppcr::backward(
            &state.x,
            &state.weights,
            &state.context,
            grad_output,
            Some(&state.output),
            state.levels,
            state.epsilon,
            Some(state.fold.affine()),
        );
        let inv_std = state.fold.statistics.inverse_std(state.batch_norm_epsilon);
        // `(sum dz, sum dz xhat)`, as the BatchNorm kernel's own backward step sums them.
        let sums: Vec<(f32, f32)> = unit
            .batch_norm_sums
            .expect("the backward step sums for the BatchNorm when given its affine map")
            .into_iter()
            .zip(&inv_std)
            .map(|((dz, dz_x), &inv_std)| (dz, dz_x * inv_std))
            .collect();
        let mut grad_x = unit.input;
        let moments = ChannelMoments {
            mean: &state.fold.statistics.mean,
            inv_std: &inv_std,
            gamma: &state.gamma,
        };
        batch_norm::input_gradient(
            &state.x.shape(),
            &contiguous_values(&state.x),
            grad_x
                .try_storage_mut::<f32>()
                .expect("the unit's backward step returns an unshared gradient"),
            None,
            moments,
            &sums,
        );
        let channels = Shape::new([sums.len()]);
        let (grad_beta, grad_gamma): (Vec<f32>, Vec<f32>) = sums.into_iter().unzip();
        let ids = ops.parents.map(|node| node.as_ref().map(|n| n.id));
        let gradients = [
            Some(grad_x),
            Some(flex_tensor(grad_gamma, channels.clone())),
            Some(flex_tensor(grad_beta, channels)),
            Some(unit.weights),
            unit.residual,
        ];
        register_gradients(grads, ids, gradients);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attention::testing::{
        assert_matches_reference, device, ppcr_with_random_weights, random_tensor, seeded_values,
        values,
    };
    use crate::kernels::cpu::batch_norm::batch_norm_train;
    use burn::tensor::TensorData;
    use burn::tensor::activation::relu;
    use burn::tensor::module::batch_norm_train as burn_batch_norm_train;

    /// `(batch, channels, [height, width], levels)`: channels not a multiple of 8 and uneven
    /// group splits, odd and non-square maps, batches of 1 and 3, three and four levels.
    const SHAPES: [(usize, usize, [usize; 2], usize); 4] = [
        (1, 12, [3, 5], 4),
        (3, 20, [4, 3], 4),
        (3, 13, [2, 7], 3),
        (2, 64, [6, 4], 4),
    ];

    /// A BatchNorm's parameters, `gamma` around 1 with one channel negative.
    fn norm(channels: usize, seed: u64, device: &burn::tensor::Device) -> TrainingBatchNorm {
        let values = seeded_values(2 * channels, seed);
        let mut gamma: Vec<f32> = values[..channels].iter().map(|v| 1.0 + v).collect();
        gamma[0] = -0.8;
        let tensor = |v: Vec<f32>| Tensor::from_data(TensorData::new(v, [channels]), device);
        TrainingBatchNorm {
            gamma: tensor(gamma).require_grad(),
            beta: tensor(values[channels..].to_vec()).require_grad(),
            epsilon: 1e-5,
        }
    }

    /// How the block computes without the fold.
    enum Path {
        /// This kernel.
        Fold,
        /// The BatchNorm kernel, then the unit's residual kernel.
        KernelsApart,
        /// burn's own BatchNorm, the unit's tensor formulation, burn's add and ReLU.
        Burn,
    }

    /// The output, batch mean and variance, and the gradients of `sum(output * probe)` with
    /// respect to `x`, `gamma`, `beta`, the unit's weights and the residual.
    fn run(case: usize, path: Path) -> [Vec<f32>; 8] {
        let (batch, channels, [height, width], levels) = SHAPES[case];
        let device = device().autodiff();
        let seed = case as u64 * 11;
        let shape = [batch, channels, height, width];
        let ppcr = ppcr_with_random_weights(channels, [height, width], levels, seed, &device);
        let x = (random_tensor(shape, seed + 1, &device) * 2.0 + 0.3).require_grad();
        let residual = random_tensor(shape, seed + 2, &device).require_grad();
        let probe = random_tensor(shape, seed + 3, &device);
        let norm = norm(channels, seed + 4, &device);
        let weights = ppcr.pixel_context_weights.val();
        let (output, mean, variance) = match path {
            Path::Fold => {
                assert!(available(&x, &norm, &weights, &residual));
                let fused = batch_norm_ppcr_add_relu(
                    x.clone(),
                    norm.clone(),
                    weights.clone(),
                    residual.clone(),
                    levels,
                    ppcr.epsilon,
                );
                (fused.output, fused.mean, fused.variance)
            }
            Path::KernelsApart => {
                let (gamma, beta) = (norm.gamma.clone(), norm.beta.clone());
                let (y, mean, variance) = batch_norm_train(x.clone(), gamma, beta, 1e-5, false);
                let end = ppcr.try_forward_add_relu(&y, &residual).unwrap().unwrap();
                (end, mean, variance)
            }
            Path::Burn => {
                let (gamma, beta) = (norm.gamma.clone(), norm.beta.clone());
                let result = burn_batch_norm_train(x.clone(), gamma, beta, 1e-5);
                let unit = ppcr.try_tensor_forward(result.output).unwrap();
                (relu(unit + residual.clone()), result.mean, result.variance)
            }
        };
        let grads = (output.clone() * probe).sum().backward();
        [
            values(output),
            values(mean),
            values(variance),
            values(x.grad(&grads).unwrap()),
            values(norm.gamma.grad(&grads).unwrap()),
            values(norm.beta.grad(&grads).unwrap()),
            values(weights.grad(&grads).unwrap()),
            values(residual.grad(&grads).unwrap()),
        ]
    }

    const NAMES: [&str; 8] = [
        "output",
        "mean",
        "variance",
        "dx",
        "dgamma",
        "dbeta",
        "dweights",
        "dresidual",
    ];

    #[test]
    fn the_fold_gives_the_kernels_apart_bits_but_for_the_batch_norms_sums() {
        for case in 0..SHAPES.len() {
            let (fold, apart) = (run(case, Path::Fold), run(case, Path::KernelsApart));
            for (index, name) in NAMES.iter().enumerate() {
                let what = format!("case {case} {name}");
                if matches!(*name, "dx" | "dgamma" | "dbeta") {
                    assert_matches_reference(&fold[index], &apart[index], 1e-5, &what);
                } else {
                    assert_eq!(fold[index], apart[index], "{what}");
                }
            }
        }
    }

    #[test]
    fn the_fold_matches_burns_own_ops() {
        for case in 0..SHAPES.len() {
            let (fold, burn) = (run(case, Path::Fold), run(case, Path::Burn));
            for (index, name) in NAMES.iter().enumerate() {
                let what = format!("case {case} {name}");
                assert_matches_reference(&fold[index], &burn[index], 1e-4, &what);
            }
        }
    }

    #[test]
    fn the_batch_norm_gradients_match_finite_differences() {
        // Three samples of 9 channels on 2x3 maps, three levels; the residual keeps every output
        // away from ReLU's kink, so a step of the inputs never crosses it.
        let (shape, levels) = ([3usize, 9, 2, 3], 3);
        let device = device().autodiff();
        let ppcr = ppcr_with_random_weights(9, [2, 3], levels, 5, &device);
        let weights = ppcr.pixel_context_weights.val();
        let x_values: Vec<f64> = seeded_values(3 * 9 * 6, 6)
            .iter()
            .map(|&v| v as f64 * 2.0)
            .collect();
        let gamma_values: Vec<f64> = seeded_values(9, 7)
            .iter()
            .map(|&v| 1.0 + v as f64)
            .collect();
        let beta = Tensor::<1>::from_data(TensorData::new(seeded_values(9, 8), [9]), &device);
        let residual = random_tensor(shape, 9, &device) + 6.0;
        let probe = random_tensor(shape, 10, &device);
        let loss = |x: &[f64], gamma: &[f64]| {
            let to_f32 = |v: &[f64]| v.iter().map(|&v| v as f32).collect::<Vec<_>>();
            let x = Tensor::<4>::from_data(TensorData::new(to_f32(x), shape), &device);
            let gamma = Tensor::<1>::from_data(TensorData::new(to_f32(gamma), [9]), &device);
            let (x, gamma) = (x.require_grad(), gamma.require_grad());
            let norm = TrainingBatchNorm {
                gamma: gamma.clone(),
                beta: beta.clone(),
                epsilon: 1e-5,
            };
            let fused = batch_norm_ppcr_add_relu(
                x.clone(),
                norm,
                weights.clone(),
                residual.clone(),
                levels,
                ppcr.epsilon,
            );
            ((fused.output * probe.clone()).sum(), x, gamma)
        };
        let (value, x, gamma) = loss(&x_values, &gamma_values);
        let grads = value.backward();
        let analytic = [
            values(x.grad(&grads).unwrap()),
            values(gamma.grad(&grads).unwrap()),
        ];
        let value = |x: &[f64], gamma: &[f64]| loss(x, gamma).0.into_scalar::<f32>() as f64;
        let step = 1e-3;
        let inputs = [x_values.clone(), gamma_values.clone()];
        for (which, analytic) in analytic.iter().enumerate() {
            for i in 0..inputs[which].len() {
                let (mut plus, mut minus) = (inputs.clone(), inputs.clone());
                plus[which][i] += step;
                minus[which][i] -= step;
                let numeric =
                    (value(&plus[0], &plus[1]) - value(&minus[0], &minus[1])) / (2.0 * step);
                let error = (analytic[i] as f64 - numeric).abs();
                assert!(
                    error <= 2e-2 * (1.0 + numeric.abs()),
                    "input {which} index {i}: analytic {} numeric {numeric}",
                    analytic[i]
                );
            }
        }
    }
}
