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
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let [batch, channels, height, width] = x.dims();
        let pixels = height * width;
        let flat = x.clone().reshape([batch, channels, pixels]);
        let mean = flat.clone().mean_dim(2);
        // Unbiased variance as torch.var in the authors' code; a 1x1 map (no spread to
        // estimate) uses n instead of n - 1 rather than dividing by zero.
        let denominator = pixels.saturating_sub(1).max(1) as f64;
        let variance = (flat - mean.clone())
            .square()
            .sum_dim(2)
            .div_scalar(denominator);
        let std = variance.add_scalar(self.epsilon).sqrt();
        let weights = self.style_integration.val();
        let mean_weight = weights
            .clone()
            .slice([0..channels, 0..1])
            .reshape([1, channels, 1]);
        let std_weight = weights.slice([0..channels, 1..2]).reshape([1, channels, 1]);
        let style = mean * mean_weight + std * std_weight;
        let gate = activation::sigmoid(self.norm.forward(style.reshape([batch, channels, 1, 1])));
        x * gate
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
