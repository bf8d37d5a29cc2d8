//! Convolutional Block Attention Module (CBAM).
//!
//! Woo et al., "CBAM: Convolutional Block Attention Module" (ECCV 2018): a channel gate (a
//! shared bottleneck MLP, reduction 16, over the average- and max-pooled descriptors, summed,
//! sigmoid) followed by a spatial gate (channel-wise max and mean maps, a 7x7 convolution with
//! BatchNorm as in the authors' code, sigmoid).

use burn::config::Config;
use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{BatchNorm, BatchNormConfig, Linear, LinearConfig, PaddingConfig2d};
use burn::tensor::{Device, Tensor, activation};

use crate::kernels::cpu::cbam as cbam_fused;
use crate::onnx::{OnnxError, OnnxGraph};

/// Configuration of a [`Cbam`] unit.
#[derive(Config, Debug)]
pub struct CbamConfig {
    /// Number of input channels.
    pub channels: usize,
    /// Reduction ratio of the channel gate's MLP (paper: 16).
    #[config(default = 16)]
    pub reduction: usize,
    /// Kernel size of the spatial gate's convolution (paper: 7); odd, so the padding keeps the
    /// map's size.
    #[config(default = 7)]
    pub spatial_kernel: usize,
}

/// CBAM unit: channel gate, then spatial gate.
#[derive(Module, Debug)]
pub struct Cbam {
    /// First layer of the channel gate's shared MLP.
    pub channel_reduce: Linear,
    /// Second layer of the channel gate's shared MLP.
    pub channel_expand: Linear,
    /// Spatial gate convolution over the `[max, mean]` channel maps.
    pub spatial_conv: Conv2d,
    /// BatchNorm after the spatial convolution (the authors' `BasicConv`, momentum 0.01).
    pub spatial_norm: BatchNorm,
}

impl CbamConfig {
    /// Build the unit. Panics on an even `spatial_kernel`.
    pub fn init(&self, device: &Device) -> Cbam {
        assert!(
            self.spatial_kernel % 2 == 1,
            "CBAM's spatial kernel must be odd to keep the map's size, got {}",
            self.spatial_kernel
        );
        let hidden = (self.channels / self.reduction.max(1)).max(1);
        let padding = (self.spatial_kernel - 1) / 2;
        Cbam {
            channel_reduce: LinearConfig::new(self.channels, hidden).init(device),
            channel_expand: LinearConfig::new(hidden, self.channels).init(device),
            spatial_conv: Conv2dConfig::new([2, 1], [self.spatial_kernel, self.spatial_kernel])
                .with_padding(PaddingConfig2d::Explicit(
                    padding, padding, padding, padding,
                ))
                .with_bias(false)
                .init(device),
            spatial_norm: BatchNormConfig::new(1).with_momentum(0.01).init(device),
        }
    }
}

impl Cbam {
    fn channel_mlp(&self, descriptor: Tensor<2>) -> Tensor<2> {
        self.channel_expand
            .forward(activation::relu(self.channel_reduce.forward(descriptor)))
    }

    /// Apply the channel gate, then the spatial gate, to `x` (`[B, C, H, W]`).
    ///
    /// On the Flex backend (plain or autodiff, `f32`) the three steps that pass over the whole
    /// map run as the fused operations of `cbam_fused`; elsewhere [`Cbam::tensor_forward`].
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        if !cbam_fused::fused_available(&x) {
            return self.tensor_forward(x);
        }
        let [batch, channels, _, _] = x.dims();
        let pools = cbam_fused::channel_pools(x.clone());
        let average = pools.clone().narrow(1, 0, 1).reshape([batch, channels]);
        let maximum = pools.narrow(1, 1, 1).reshape([batch, channels]);
        let channel_gate =
            activation::sigmoid(self.channel_mlp(average) + self.channel_mlp(maximum));
        let pooled = cbam_fused::spatial_pools(x.clone(), channel_gate.clone());
        let convolved = cbam_fused::spatial_conv(pooled, self.spatial_conv.weight.val());
        let spatial_gate = activation::sigmoid(self.spatial_norm.forward(convolved));
        cbam_fused::gated_product(x, channel_gate, spatial_gate)
    }

    /// The forward pass composed of burn tensor operations: what backends without the fused
    /// operations run, and what they are tested against.
    pub fn tensor_forward(&self, x: Tensor<4>) -> Tensor<4> {
        let refined = self.channel_gate(x);
        let spatial = self.spatial_weights(refined.clone());
        refined * spatial
    }

    /// `x` rescaled by the channel gate.
    pub fn channel_gate(&self, x: Tensor<4>) -> Tensor<4> {
        let [batch, channels, _, _] = x.dims();
        let average = x.clone().mean_dims(&[2, 3]).reshape([batch, channels]);
        let maximum = x.clone().max_dims(&[2, 3]).reshape([batch, channels]);
        let weights = activation::sigmoid(self.channel_mlp(average) + self.channel_mlp(maximum));
        x * weights.reshape([batch, channels, 1, 1])
    }

    /// The spatial gate's weights `[B, 1, H, W]` for a channel-refined feature map.
    pub fn spatial_weights(&self, refined: Tensor<4>) -> Tensor<4> {
        let pooled = Tensor::cat(vec![refined.clone().max_dim(1), refined.mean_dim(1)], 1);
        activation::sigmoid(self.spatial_norm.forward(self.spatial_conv.forward(pooled)))
    }

    /// The spatial attention map `[B, 1, H, W]` the unit applies to `x`, for analysis.
    pub fn attention_map(&self, x: Tensor<4>) -> Tensor<4> {
        self.spatial_weights(self.channel_gate(x))
    }
}

impl Cbam {
    /// The unit as ONNX operators from `x` (`[N, C, H, W]`): the channel gate (average and max
    /// pools through the shared MLP), then the spatial gate (channel max and mean, the 7x7
    /// convolution with its BatchNorm folded in) on the refined map, as [`Cbam::tensor_forward`].
    pub fn to_onnx(
        &self,
        graph: &mut OnnxGraph,
        x: &str,
        [channels, _, _]: [usize; 3],
    ) -> Result<String, OnnxError> {
        let mlp = |graph: &mut OnnxGraph, pooled: &str| {
            let hidden = graph.linear(
                pooled,
                self.channel_reduce.weight.val(),
                self.channel_reduce.bias.as_ref().map(|b| b.val()),
            );
            let hidden = graph.unary("Relu", &hidden);
            graph.linear(
                &hidden,
                self.channel_expand.weight.val(),
                self.channel_expand.bias.as_ref().map(|b| b.val()),
            )
        };
        let average = graph.global_pool("GlobalAveragePool", x);
        let average = mlp(graph, &average);
        let maximum = graph.global_pool("GlobalMaxPool", x);
        let maximum = mlp(graph, &maximum);
        let sum = graph.binary("Add", &average, &maximum);
        let gate = graph.unary("Sigmoid", &sum);
        let refined = graph.scale_channels(x, &gate, channels);
        let channel_max = graph.reduce("ReduceMax", &refined, &[1]);
        let channel_mean = graph.reduce("ReduceMean", &refined, &[1]);
        let pooled = graph.node(
            "Concat",
            &[&channel_max, &channel_mean],
            vec![crate::onnx::int("axis", 1)],
        );
        let convolved =
            graph.conv_batch_norm(&pooled, &self.spatial_conv, Some(&self.spatial_norm))?;
        let spatial = graph.unary("Sigmoid", &convolved);
        Ok(graph.binary("Mul", &refined, &spatial))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attention::testing::{assert_gradients_match, device};

    #[test]
    fn parameter_count_matches_the_paper_layout() {
        let cbam = CbamConfig::new(64).init(&device());
        // MLP 64->4->64 with biases, 7x7 conv 2->1 without bias, BatchNorm(1) gamma and beta.
        assert_eq!(
            crate::params::count_trainable(&cbam),
            (64 * 4 + 4) + (4 * 64 + 64) + 2 * 49 + 2
        );
    }

    #[test]
    #[should_panic(expected = "spatial kernel must be odd")]
    fn an_even_spatial_kernel_is_refused() {
        CbamConfig::new(16).with_spatial_kernel(6).init(&device());
    }

    #[test]
    fn gradients_match_finite_differences() {
        let cbam = CbamConfig::new(16)
            .with_reduction(4)
            .with_spatial_kernel(3)
            .init(&device().autodiff());
        assert_gradients_match(cbam, [2, 16, 4, 4], |unit, x| unit.forward(x));
    }
}
