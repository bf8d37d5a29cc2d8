//! Style-based Recalibration Module (SRM).
//!
//! Lee, Kim, Nam, "SRM: A Style-based Recalibration Module for Convolutional Neural Networks"
//! (ICCV 2019). Style pooling summarises each channel by the mean and standard deviation of its
//! responses; style integration combines the two with a channel-wise fully connected layer
//! (two weights per channel, zero-initialised as in the authors' code), BatchNorm and a sigmoid.

use burn::config::Config;
use burn::module::{Module, Param};
use burn::nn::{BatchNorm, BatchNormConfig, Initializer};
use burn::tensor::{Device, Tensor, activation};

use super::channel_ops::{ChannelOps, PlaneStatistic};
use crate::onnx::OnnxGraph;

/// Configuration of a [`StyleRecalibration`] unit.
#[derive(Config, Debug)]
pub struct StyleRecalibrationConfig {
    /// Number of input channels.
    pub channels: usize,
    /// Added to the variance before the square root of style pooling (authors' code: 1e-5).
    #[config(default = 1e-5)]
    pub epsilon: f64,
}

/// SRM unit.
#[derive(Module, Debug)]
pub struct StyleRecalibration {
    /// Channel-wise fully connected weights `[C, 2]`: one weight for the mean, one for the std.
    pub style_integration: Param<Tensor<2>>,
    /// BatchNorm over the integrated style of each channel.
    pub norm: BatchNorm,
    /// Style-pooling epsilon.
    pub epsilon: f64,
}

impl StyleRecalibrationConfig {
    /// Build the unit.
    pub fn init(&self, device: &Device) -> StyleRecalibration {
        StyleRecalibration {
            style_integration: Initializer::Zeros.init([self.channels, 2], device),
            norm: BatchNormConfig::new(self.channels).init(device),
            epsilon: self.epsilon,
        }
    }
}

impl StyleRecalibration {
    /// Recalibrate each channel of `x` (`[B, C, H, W]`) by its style.
    ///
    /// The style pooling and the recalibration run as the fused kernels of `channel_ops_fused`
    /// on the Flex backend (plain or autodiff, `f32`), as [`StyleRecalibration::tensor_forward`]
    /// does them elsewhere.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        self.forward_with(ChannelOps::for_input(&x), x)
    }

    /// [`StyleRecalibration::forward`] composed of burn tensor operations on any backend: the
    /// reference the fused kernels are tested against.
    pub fn tensor_forward(&self, x: Tensor<4>) -> Tensor<4> {
        self.forward_with(ChannelOps::Tensor, x)
    }

    fn forward_with(&self, ops: ChannelOps, x: Tensor<4>) -> Tensor<4> {
        let [batch, channels, _, _] = x.dims();
        let mean = ops.statistic(x.clone(), PlaneStatistic::Mean);
        // Unbiased variance as torch.var in the authors' code; a 1x1 map (no spread to
        // estimate) uses n instead of n - 1 rather than dividing by zero.
        let variance = ops.statistic(x.clone(), PlaneStatistic::Variance { correction: 1 });
        let std = variance.add_scalar(self.epsilon).sqrt();
        let weights = self.style_integration.val();
        let mean_weight = weights
            .clone()
            .slice([0..channels, 0..1])
            .reshape([1, channels]);
        let std_weight = weights.slice([0..channels, 1..2]).reshape([1, channels]);
        let style = mean * mean_weight + std * std_weight;
        let gate = activation::sigmoid(self.norm.forward(style.reshape([batch, channels, 1, 1])));
        ops.scale(x, gate.reshape([batch, channels]))
    }
}

impl StyleRecalibration {
    /// The unit as ONNX operators from `x` (`[N, C, H, W]`): plane mean and standard deviation
    /// (unbiased, as in [`StyleRecalibration::forward`]), the channel-wise integration, the
    /// BatchNorm in inference form, the gate.
    pub fn to_onnx(
        &self,
        graph: &mut OnnxGraph,
        x: &str,
        [channels, height, width]: [usize; 3],
    ) -> String {
        let mean = graph.reduce("ReduceMean", x, &[2, 3]);
        let centred = graph.binary("Sub", x, &mean);
        let squared = graph.binary("Mul", &centred, &centred);
        let sum = graph.reduce_sum(&squared, &[2, 3]);
        let divisor = PlaneStatistic::variance_divisor(1, height * width) as f32;
        let divisor = graph.scalar("divisor", divisor);
        let variance = graph.binary("Div", &sum, &divisor);
        let epsilon = graph.scalar("epsilon", self.epsilon as f32);
        let variance = graph.binary("Add", &variance, &epsilon);
        let std = graph.unary("Sqrt", &variance);
        let weights = crate::onnx::tensor_values(self.style_integration.val().into_data());
        let (norm_scale, norm_shift) = crate::onnx::batch_norm_affine(&self.norm);
        // BatchNorm(mean * w_mean + std * w_std) = mean * (w_mean s) + std * (w_std s) + shift.
        let mean_weight: Vec<f32> = (0..channels)
            .map(|c| weights[2 * c] * norm_scale[c])
            .collect();
        let std_weight: Vec<f32> = (0..channels)
            .map(|c| weights[2 * c + 1] * norm_scale[c])
            .collect();
        let shape = [1, channels, 1, 1];
        let mean_weight = graph.constant("srm_mean_weight", &mean_weight, &shape);
        let std_weight = graph.constant("srm_std_weight", &std_weight, &shape);
        let shift = graph.constant("srm_shift", &norm_shift, &shape);
        let from_mean = graph.binary("Mul", &mean, &mean_weight);
        let from_std = graph.binary("Mul", &std, &std_weight);
        let style = graph.binary("Add", &from_mean, &from_std);
        let style = graph.binary("Add", &style, &shift);
        let gate = graph.unary("Sigmoid", &style);
        graph.binary("Mul", x, &gate)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attention::testing::{assert_gradients_match, device, seeded_values};
    use burn::tensor::TensorData;

    #[test]
    fn parameter_count_is_four_per_channel() {
        // Two integration weights plus BatchNorm's gamma and beta per channel.
        assert_eq!(
            crate::params::count_trainable(&StyleRecalibrationConfig::new(64).init(&device())),
            4 * 64
        );
    }

    #[test]
    fn gradients_match_finite_differences() {
        let device = device().autodiff();
        let mut srm = StyleRecalibrationConfig::new(8).init(&device);
        srm.style_integration = Param::from_tensor(
            Tensor::from_data(TensorData::new(seeded_values(16, 4), [8, 2]), &device)
                .require_grad(),
        );
        // BatchNorm normalises over the batch only (1x1 style maps): four samples keep the
        // normalised values away from the degenerate two-sample case.
        assert_gradients_match(srm, [4, 8, 3, 3], |unit, x| unit.forward(x));
    }
}
