//! SimAM: a parameter-free attention unit.
//!
//! Yang, Zhang, Li, Xie, "SimAM: A Simple, Parameter-Free Attention Module for Convolutional
//! Neural Networks" (ICML 2021). Each neuron's weight is the inverse of its minimal energy,
//! `e_inv = (x - mu)^2 / (4 (sigma^2 + lambda)) + 1/2` with the channel's spatial mean `mu` and
//! variance `sigma^2 = sum (x - mu)^2 / (H W - 1)`, applied as `x * sigmoid(e_inv)`.

use burn::config::Config;
use burn::module::Module;
use burn::tensor::{Tensor, activation};

use crate::kernels::cpu::simam as simam_fused;
use crate::onnx::OnnxGraph;

/// Configuration of a [`SimAm`] unit.
#[derive(Config, Debug)]
pub struct SimAmConfig {
    /// Regulariser `lambda` of the energy function (paper: 1e-4).
    #[config(default = 1e-4)]
    pub lambda: f64,
}

/// SimAM unit (no learnable parameters).
#[derive(Module, Debug)]
pub struct SimAm {
    /// Energy regulariser.
    pub lambda: f64,
}

impl SimAmConfig {
    /// Build the unit.
    pub fn init(&self) -> SimAm {
        SimAm {
            lambda: self.lambda,
        }
    }
}

impl SimAm {
    fn neuron_weights(&self, x: Tensor<4>) -> Tensor<4> {
        let [_, _, height, width] = x.dims();
        let neighbours = (height * width).saturating_sub(1).max(1) as f64;
        let mean = x.clone().mean_dims(&[2, 3]);
        let squared_deviation = (x - mean).square();
        let variance = squared_deviation
            .clone()
            .sum_dims(&[2, 3])
            .div_scalar(neighbours);
        let inverse_energy =
            squared_deviation / variance.add_scalar(self.lambda).mul_scalar(4.0) + 0.5;
        activation::sigmoid(inverse_energy)
    }

    /// Reweight every neuron of `x` (`[B, C, H, W]`).
    ///
    /// On the Flex backend (plain or autodiff, `f32`) this runs the fused kernel of
    /// `simam_fused`, one autodiff node with a hand-written backward; elsewhere
    /// [`SimAm::tensor_forward`].
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        if simam_fused::fused_available(&x) {
            return simam_fused::reweight(x, self.lambda);
        }
        self.tensor_forward(x)
    }

    /// The forward pass composed of burn tensor operations: what backends without the fused
    /// kernel run, and what the fused kernel's values and gradients are tested against.
    pub fn tensor_forward(&self, x: Tensor<4>) -> Tensor<4> {
        x.clone() * self.neuron_weights(x)
    }

    /// The neuron weights averaged over channels, `[B, 1, H, W]`, for analysis.
    pub fn attention_map(&self, x: Tensor<4>) -> Tensor<4> {
        self.neuron_weights(x).mean_dim(1)
    }
}

impl SimAm {
    /// The unit as ONNX operators from `x` (`[N, C, H, W]`): the inverse energy of every
    /// neuron against its plane, and its sigmoid as the weight.
    pub fn to_onnx(
        &self,
        graph: &mut OnnxGraph,
        x: &str,
        [_, height, width]: [usize; 3],
    ) -> String {
        let neighbours = (height * width).saturating_sub(1).max(1) as f32;
        let mean = graph.reduce("ReduceMean", x, &[2, 3]);
        let centred = graph.binary("Sub", x, &mean);
        let squared = graph.binary("Mul", &centred, &centred);
        let sum = graph.reduce_sum(&squared, &[2, 3]);
        let neighbours = graph.scalar("neighbours", neighbours);
        let variance = graph.binary("Div", &sum, &neighbours);
        let lambda = graph.scalar("lambda", self.lambda as f32);
        let variance = graph.binary("Add", &variance, &lambda);
        let four = graph.scalar("four", 4.0);
        let denominator = graph.binary("Mul", &variance, &four);
        let energy = graph.binary("Div", &squared, &denominator);
        let half = graph.scalar("half", 0.5);
        let energy = graph.binary("Add", &energy, &half);
        let weight = graph.unary("Sigmoid", &energy);
        graph.binary("Mul", x, &weight)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attention::testing::{assert_gradients_match, device};
    use burn::tensor::TensorData;

    #[test]
    fn forward_matches_hand_computation_on_one_channel() {
        // One 2x2 channel [0, 0, 0, 4]: mean 1, deviations^2 [1, 1, 1, 9], sum 12,
        // variance 12/3 = 4, e_inv = d / (4 * (4 + 1e-4)) + 0.5.
        let x = Tensor::<4>::from_data(
            TensorData::new(vec![0.0f32, 0.0, 0.0, 4.0], [1, 1, 2, 2]),
            &device(),
        );
        let y = SimAmConfig::new()
            .init()
            .forward(x)
            .into_data()
            .try_to_vec::<f32>()
            .unwrap();
        let sigmoid = |z: f64| 1.0 / (1.0 + (-z).exp());
        let expected = 4.0 * sigmoid(9.0 / (4.0 * 4.0001) + 0.5);
        assert!((y[3] as f64 - expected).abs() < 1e-5);
        assert_eq!(&y[..3], &[0.0, 0.0, 0.0]);
    }

    #[test]
    fn gradients_match_finite_differences() {
        // Parameter-free: the check covers the input gradient.
        assert_gradients_match(SimAmConfig::new().init(), [2, 4, 3, 3], |unit, x| {
            unit.forward(x)
        });
    }
}
