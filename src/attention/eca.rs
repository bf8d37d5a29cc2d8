//! Efficient Channel Attention (ECA).
//!
//! Wang et al., "ECA-Net: Efficient Channel Attention for Deep Convolutional Neural Networks"
//! (CVPR 2020): global average pooling followed by a 1-D convolution across channels, without
//! dimensionality reduction, whose kernel size adapts to the channel count:
//! `k = |(log2(C) + b) / gamma|` rounded up to the next odd number (gamma 2, b 1).

use burn::config::Config;
use burn::module::Module;
use burn::nn::PaddingConfig1d;
use burn::nn::conv::{Conv1d, Conv1dConfig};
use burn::tensor::{Device, Tensor, activation};

use super::channel_ops::{ChannelOps, PlaneStatistic};
use crate::onnx::OnnxGraph;

/// Configuration of an [`EfficientChannelAttention`] unit.
#[derive(Config, Debug)]
pub struct EfficientChannelAttentionConfig {
    /// Number of input channels.
    pub channels: usize,
    /// `gamma` of the adaptive kernel size (paper: 2).
    #[config(default = 2.0)]
    pub gamma: f64,
    /// `b` of the adaptive kernel size (paper: 1).
    #[config(default = 1.0)]
    pub b: f64,
}

/// ECA unit.
#[derive(Module, Debug)]
pub struct EfficientChannelAttention {
    /// Bias-free 1-D convolution across the channel axis.
    pub channel_conv: Conv1d,
}

/// The paper's adaptive kernel size: `t = int(|(log2 C + b) / gamma|)`, odd `t` kept, even `t`
/// bumped to `t + 1` (as the authors' code does).
pub fn eca_kernel_size(channels: usize, gamma: f64, b: f64) -> usize {
    let t = (((channels as f64).log2() + b) / gamma).abs() as usize;
    if t % 2 == 1 { t } else { t + 1 }
}

impl EfficientChannelAttentionConfig {
    /// Build the unit.
    pub fn init(&self, device: &Device) -> EfficientChannelAttention {
        let kernel = eca_kernel_size(self.channels, self.gamma, self.b);
        let padding = (kernel - 1) / 2;
        EfficientChannelAttention {
            channel_conv: Conv1dConfig::new(1, 1, kernel)
                .with_padding(PaddingConfig1d::Explicit(padding, padding))
                .with_bias(false)
                .init(device),
        }
    }
}

impl EfficientChannelAttention {
    /// Rescale each channel of `x` (`[B, C, H, W]`).
    ///
    /// The pooling and the rescaling run as the fused kernels of `channel_ops_fused` on the
    /// Flex backend (plain or autodiff, `f32`), as [`EfficientChannelAttention::tensor_forward`]
    /// does them elsewhere.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        self.forward_with(ChannelOps::for_input(&x), x)
    }

    /// [`EfficientChannelAttention::forward`] composed of burn tensor operations on any backend:
    /// the reference the fused kernels are tested against.
    pub fn tensor_forward(&self, x: Tensor<4>) -> Tensor<4> {
        self.forward_with(ChannelOps::Tensor, x)
    }

    fn forward_with(&self, ops: ChannelOps, x: Tensor<4>) -> Tensor<4> {
        let [batch, channels, _, _] = x.dims();
        let pooled = ops
            .statistic(x.clone(), PlaneStatistic::Mean)
            .reshape([batch, 1, channels]);
        let weights = activation::sigmoid(self.channel_conv.forward(pooled));
        ops.scale(x, weights.reshape([batch, channels]))
    }
}

impl EfficientChannelAttention {
    /// The unit as ONNX operators from `x` (`[N, C, H, W]`): pool, the 1-D convolution across
    /// channels (a `Conv` over `[N, 1, C]`), scale.
    pub fn to_onnx(&self, graph: &mut OnnxGraph, x: &str, [channels, _, _]: [usize; 3]) -> String {
        let pooled = graph.global_pool("GlobalAveragePool", x);
        let pooled = graph.reshape(&pooled, &[-1, 1, channels as i64]);
        let kernel = self.channel_conv.kernel_size;
        let (left, right) = match self.channel_conv.padding {
            burn::nn::PaddingConfig1d::Explicit(left, right) => (left, right),
            _ => ((kernel - 1) / 2, (kernel - 1) / 2),
        };
        let weight = graph.tensor(
            "eca_weight",
            self.channel_conv.weight.val(),
            &[1, 1, kernel],
        );
        let convolved = graph.node(
            "Conv",
            &[&pooled, &weight],
            vec![
                crate::onnx::ints("kernel_shape", &[kernel as i64]),
                crate::onnx::ints("pads", &[left as i64, right as i64]),
            ],
        );
        let gate = graph.unary("Sigmoid", &convolved);
        graph.scale_channels(x, &gate, channels)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attention::testing::{assert_gradients_match, device};

    #[test]
    fn kernel_size_adapts_to_channels_as_in_the_paper() {
        // (log2 C + 1) / 2: C=16 -> 2.5 -> 2 -> 3; C=64 -> 3.5 -> 3; C=256 -> 4.5 -> 4 -> 5;
        // C=512 -> 5 -> 5.
        assert_eq!(eca_kernel_size(16, 2.0, 1.0), 3);
        assert_eq!(eca_kernel_size(64, 2.0, 1.0), 3);
        assert_eq!(eca_kernel_size(256, 2.0, 1.0), 5);
        assert_eq!(eca_kernel_size(512, 2.0, 1.0), 5);
        assert_eq!(eca_kernel_size(2048, 2.0, 1.0), 7);
        let eca = EfficientChannelAttentionConfig::new(256).init(&device());
        assert_eq!(eca.num_params(), 5);
    }

    #[test]
    fn gradients_match_finite_differences() {
        let eca = EfficientChannelAttentionConfig::new(16).init(&device().autodiff());
        assert_gradients_match(eca, [2, 16, 3, 3], |unit, x| unit.forward(x));
    }
}
