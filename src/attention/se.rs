//! Squeeze-and-Excitation (SE) channel attention.
//!
//! Hu, Shen, Sun, "Squeeze-and-Excitation Networks" (CVPR 2018): global average pooling
//! ("squeeze"), a bottleneck of two fully connected layers with reduction ratio 16 and a
//! sigmoid ("excitation"), and a per-channel rescaling of the input.

use burn::config::Config;
use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::tensor::{Device, Tensor, activation};

use super::channel_ops::{ChannelOps, PlaneStatistic};
use crate::onnx::OnnxGraph;

/// Configuration of a [`SqueezeExcitation`] unit.
#[derive(Config, Debug)]
pub struct SqueezeExcitationConfig {
    /// Number of input channels.
    pub channels: usize,
    /// Bottleneck reduction ratio `r` (the paper's default is 16).
    #[config(default = 16)]
    pub reduction: usize,
}

/// Squeeze-and-Excitation unit.
#[derive(Module, Debug)]
pub struct SqueezeExcitation {
    /// `C -> C/r` fully connected layer.
    pub reduce: Linear,
    /// `C/r -> C` fully connected layer.
    pub expand: Linear,
}

impl SqueezeExcitationConfig {
    /// Build the unit; the bottleneck keeps at least one unit for narrow layers.
    pub fn init(&self, device: &Device) -> SqueezeExcitation {
        let hidden = (self.channels / self.reduction.max(1)).max(1);
        SqueezeExcitation {
            reduce: LinearConfig::new(self.channels, hidden).init(device),
            expand: LinearConfig::new(hidden, self.channels).init(device),
        }
    }
}

impl SqueezeExcitation {
    /// Rescale each channel of `x` (`[B, C, H, W]`) by its excitation.
    ///
    /// The pooling and the rescaling run as the fused kernels of `channel_ops_fused` on the
    /// Flex backend (plain or autodiff, `f32`), as [`SqueezeExcitation::tensor_forward`] does
    /// them elsewhere.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        self.forward_with(ChannelOps::for_input(&x), x)
    }

    /// [`SqueezeExcitation::forward`] composed of burn tensor operations on any backend: the
    /// reference the fused kernels are tested against.
    pub fn tensor_forward(&self, x: Tensor<4>) -> Tensor<4> {
        self.forward_with(ChannelOps::Tensor, x)
    }

    fn forward_with(&self, ops: ChannelOps, x: Tensor<4>) -> Tensor<4> {
        let squeezed = ops.statistic(x.clone(), PlaneStatistic::Mean);
        let hidden = activation::relu(self.reduce.forward(squeezed));
        let excitation = activation::sigmoid(self.expand.forward(hidden));
        ops.scale(x, excitation)
    }
}

impl SqueezeExcitation {
    /// The unit as ONNX operators from `x` (`[N, C, H, W]`): pool, the two layers, scale.
    pub fn to_onnx(&self, graph: &mut OnnxGraph, x: &str, [channels, _, _]: [usize; 3]) -> String {
        let squeezed = graph.global_pool("GlobalAveragePool", x);
        let hidden = graph.linear(
            &squeezed,
            self.reduce.weight.val(),
            self.reduce.bias.as_ref().map(|b| b.val()),
        );
        let hidden = graph.unary("Relu", &hidden);
        let excitation = graph.linear(
            &hidden,
            self.expand.weight.val(),
            self.expand.bias.as_ref().map(|b| b.val()),
        );
        let excitation = graph.unary("Sigmoid", &excitation);
        graph.scale_channels(x, &excitation, channels)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attention::testing::{assert_gradients_match, device};

    #[test]
    fn parameter_count_follows_the_reduction_ratio() {
        let se = SqueezeExcitationConfig::new(64).init(&device());
        // 64*4 + 4 + 4*64 + 64
        assert_eq!(se.num_params(), 64 * 4 + 4 + 4 * 64 + 64);
        let narrow = SqueezeExcitationConfig::new(8).init(&device());
        assert_eq!(narrow.num_params(), 8 + 1 + 8 + 8);
    }

    #[test]
    fn gradients_match_finite_differences() {
        let se = SqueezeExcitationConfig::new(16)
            .with_reduction(4)
            .init(&device().autodiff());
        assert_gradients_match(se, [2, 16, 3, 3], |unit, x| unit.forward(x));
    }
}
