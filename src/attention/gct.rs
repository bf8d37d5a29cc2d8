//! Gated Channel Transformation (GCT).
//!
//! Yang et al., "Gated Channel Transformation for Visual Recognition" (CVPR 2020), l2 mode of
//! the authors' code: a global context embedding `s_c = alpha_c * sqrt(sum_hw x^2 + eps)`, a
//! channel normalization `s_c * gamma_c / sqrt(mean_c s_c^2 + eps)`, and a gate
//! `1 + tanh(. + beta_c)`. alpha starts at 1, gamma and beta at 0, so a new unit is the
//! identity.

use burn::config::Config;
use burn::module::{Module, Param};
use burn::nn::Initializer;
use burn::tensor::{Device, Tensor};

use super::channel_ops::{ChannelOps, PlaneStatistic};
use crate::onnx::OnnxGraph;

/// Configuration of a [`GatedChannelTransformation`] unit.
#[derive(Config, Debug)]
pub struct GatedChannelTransformationConfig {
    /// Number of input channels.
    pub channels: usize,
    /// Epsilon of the embedding and the normalization (authors' code: 1e-5).
    #[config(default = 1e-5)]
    pub epsilon: f64,
}

/// GCT unit.
#[derive(Module, Debug)]
pub struct GatedChannelTransformation {
    /// Embedding weight per channel (initialised to 1).
    pub alpha: Param<Tensor<1>>,
    /// Gating weight per channel (initialised to 0).
    pub gamma: Param<Tensor<1>>,
    /// Gating bias per channel (initialised to 0).
    pub beta: Param<Tensor<1>>,
    /// Numerical-stability epsilon.
    pub epsilon: f64,
}

impl GatedChannelTransformationConfig {
    /// Build the unit with the paper's initialisation.
    pub fn init(&self, device: &Device) -> GatedChannelTransformation {
        GatedChannelTransformation {
            alpha: Initializer::Ones.init([self.channels], device),
            gamma: Initializer::Zeros.init([self.channels], device),
            beta: Initializer::Zeros.init([self.channels], device),
            epsilon: self.epsilon,
        }
    }
}

impl GatedChannelTransformation {
    /// Gate each channel of `x` (`[B, C, H, W]`).
    ///
    /// The embedding's sum of squares and the gating run as the fused kernels of
    /// `channel_ops_fused` on the Flex backend (plain or autodiff, `f32`), as
    /// [`GatedChannelTransformation::tensor_forward`] does them elsewhere.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        self.forward_with(ChannelOps::for_input(&x), x)
    }

    /// [`GatedChannelTransformation::forward`] composed of burn tensor operations on any
    /// backend: the reference the fused kernels are tested against.
    pub fn tensor_forward(&self, x: Tensor<4>) -> Tensor<4> {
        self.forward_with(ChannelOps::Tensor, x)
    }

    fn forward_with(&self, ops: ChannelOps, x: Tensor<4>) -> Tensor<4> {
        let [_, channels, _, _] = x.dims();
        let per_channel = |p: &Param<Tensor<1>>| p.val().reshape([1, channels]);
        let embedding = ops
            .statistic(x.clone(), PlaneStatistic::SumOfSquares)
            .add_scalar(self.epsilon)
            .sqrt()
            * per_channel(&self.alpha);
        let norm = per_channel(&self.gamma)
            / embedding
                .clone()
                .square()
                .mean_dim(1)
                .add_scalar(self.epsilon)
                .sqrt();
        let gate = (embedding * norm + per_channel(&self.beta))
            .tanh()
            .add_scalar(1.0);
        ops.scale(x, gate)
    }
}

impl GatedChannelTransformation {
    /// The unit as ONNX operators from `x` (`[N, C, H, W]`): the l2 embedding, the channel
    /// normalisation and the `1 + tanh` gate.
    pub fn to_onnx(&self, graph: &mut OnnxGraph, x: &str, [channels, _, _]: [usize; 3]) -> String {
        let shape = [1, channels, 1, 1];
        let squared = graph.binary("Mul", x, x);
        let sum = graph.reduce_sum(&squared, &[2, 3]);
        let epsilon = graph.scalar("epsilon", self.epsilon as f32);
        let sum = graph.binary("Add", &sum, &epsilon);
        let norm = graph.unary("Sqrt", &sum);
        let alpha = graph.tensor("gct_alpha", self.alpha.val(), &shape);
        let embedding = graph.binary("Mul", &norm, &alpha);
        let squared = graph.binary("Mul", &embedding, &embedding);
        let mean = graph.reduce("ReduceMean", &squared, &[1]);
        let mean = graph.binary("Add", &mean, &epsilon);
        let root = graph.unary("Sqrt", &mean);
        let gamma = graph.tensor("gct_gamma", self.gamma.val(), &shape);
        let normaliser = graph.binary("Div", &gamma, &root);
        let scaled = graph.binary("Mul", &embedding, &normaliser);
        let beta = graph.tensor("gct_beta", self.beta.val(), &shape);
        let shifted = graph.binary("Add", &scaled, &beta);
        let gate = graph.unary("Tanh", &shifted);
        let one = graph.scalar("one", 1.0);
        let gate = graph.binary("Add", &gate, &one);
        graph.binary("Mul", x, &gate)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attention::testing::{assert_gradients_match, device, random_tensor, seeded_values};
    use burn::tensor::TensorData;

    #[test]
    fn a_new_unit_is_the_identity() {
        let device = device();
        let x = random_tensor([2, 8, 3, 3], 1, &device);
        let y = GatedChannelTransformationConfig::new(8)
            .init(&device)
            .forward(x.clone());
        assert_eq!(
            y.into_data().try_to_vec::<f32>().unwrap(),
            x.into_data().try_to_vec::<f32>().unwrap()
        );
    }

    #[test]
    fn gradients_match_finite_differences() {
        let device = device().autodiff();
        let random = |seed| {
            Param::from_tensor(
                Tensor::<1>::from_data(TensorData::new(seeded_values(8, seed), [8]), &device)
                    .require_grad(),
            )
        };
        let mut gct = GatedChannelTransformationConfig::new(8).init(&device);
        // Away from the initial point, where gamma = 0 makes alpha's gradient vanish.
        gct.alpha = random(1);
        gct.gamma = random(2);
        gct.beta = random(3);
        assert_gradients_match(gct, [2, 8, 3, 3], |unit, x| unit.forward(x));
    }
}
