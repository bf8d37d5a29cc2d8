//! The convolution benchmark: forward and forward+backward of every convolution shape in
//! ResNet-20 at 32 px (batch 64) and ResNet-18 at 224 px (batch 32; He et al., CVPR 2016), as
//! the networks run them (`models::layers::conv2d`: the CPU kernels on Flex, burn's convolution,
//! with CubeCL's autotune, on a GPU). `bench/pytorch_reference.py --suites conv` times the
//! same shapes in PyTorch, so each backend's convolutions can be set against cuDNN's or
//! oneDNN's shape by shape.

use burn::tensor::{Device, Distribution, Tensor};
use serde::Serialize;

use super::timing::{Timing, time_median};
use crate::models::{conv, conv_output_size, layers};

/// One convolution shape: `batch x in_channels x size x size` in, a `kernel x kernel` filter
/// bank of `out_channels` at `stride`, padding `kernel / 2`, no bias.
#[derive(Debug, Clone, Serialize)]
pub struct ConvShape {
    /// Where the shape occurs.
    pub label: String,
    /// Batch size.
    pub batch: usize,
    /// Input channels.
    pub in_channels: usize,
    /// Output channels.
    pub out_channels: usize,
    /// Input height and width.
    pub size: usize,
    /// Filter height and width.
    pub kernel: usize,
    /// Stride.
    pub stride: usize,
}

impl ConvShape {
    fn new(
        label: &str,
        batch: usize,
        channels: [usize; 2],
        size: usize,
        kernel: usize,
        stride: usize,
    ) -> Self {
        Self {
            label: label.to_string(),
            batch,
            in_channels: channels[0],
            out_channels: channels[1],
            size,
            kernel,
            stride,
        }
    }

    /// Output height and width.
    pub fn output_size(&self) -> usize {
        conv_output_size(self.size, self.kernel, self.stride, self.kernel / 2)
    }

    /// Floating-point operations of the forward pass (a multiply-add counts two).
    pub fn forward_flops(&self) -> f64 {
        let outputs = self.batch * self.out_channels * self.output_size().pow(2);
        2.0 * outputs as f64 * (self.in_channels * self.kernel * self.kernel) as f64
    }
}

/// The distinct convolution shapes of ResNet-20 at 32 px (batch 64) and ResNet-18 at
/// `resnet18_input` px (batch 32), in network order.
pub fn conv_bench_shapes(resnet18_input: usize) -> Vec<ConvShape> {
    let mut shapes = vec![
        ConvShape::new("resnet20 stem", 64, [3, 16], 32, 3, 1),
        ConvShape::new("resnet20 stage 1", 64, [16, 16], 32, 3, 1),
        ConvShape::new("resnet20 stage 2 down", 64, [16, 32], 32, 3, 2),
        ConvShape::new("resnet20 stage 2", 64, [32, 32], 16, 3, 1),
        ConvShape::new("resnet20 stage 3 down", 64, [32, 64], 16, 3, 2),
        ConvShape::new("resnet20 stage 3", 64, [64, 64], 8, 3, 1),
    ];
    let stem = ConvShape::new("resnet18 stem 7x7", 32, [3, 64], resnet18_input, 7, 2);
    // After the stem and the stride-2 max pool.
    let mut size = stem.output_size().div_ceil(2);
    shapes.push(stem);
    shapes.push(ConvShape::new("resnet18 stage 1", 32, [64, 64], size, 3, 1));
    for (stage, channels) in [(2, 128), (3, 256), (4, 512)] {
        let wide = channels / 2;
        let label = |what: &str| format!("resnet18 stage {stage}{what}");
        shapes.push(ConvShape::new(
            &label(" down"),
            32,
            [wide, channels],
            size,
            3,
            2,
        ));
        shapes.push(ConvShape::new(
            &label(" 1x1 down"),
            32,
            [wide, channels],
            size,
            1,
            2,
        ));
        size = conv_output_size(size, 3, 2, 1);
        shapes.push(ConvShape::new(
            &label(""),
            32,
            [channels, channels],
            size,
            3,
            1,
        ));
    }
    shapes
}

/// One shape's timings.
#[derive(Debug, Clone, Serialize)]
pub struct ConvBench {
    /// The shape.
    pub shape: ConvShape,
    /// Forward pass (inference).
    pub forward: Timing,
    /// Forward pass and both gradients (input and weights), under autodiff.
    pub forward_backward: Timing,
    /// Forward throughput at the median time, GFLOP/s.
    pub forward_gflops: f64,
}

/// Time every shape on `device`: `warmup` untimed and `runs` timed repetitions of each.
pub fn conv_bench(
    shapes: &[ConvShape],
    device: &Device,
    warmup: usize,
    runs: usize,
) -> Vec<ConvBench> {
    let autodiff = device.clone().autodiff();
    shapes
        .iter()
        .map(|shape| {
            let input = [shape.batch, shape.in_channels, shape.size, shape.size];
            let x = Tensor::<4>::random(input, Distribution::Normal(0.0, 1.0), device);
            let layer = conv(
                shape.in_channels,
                shape.out_channels,
                shape.kernel,
                shape.stride,
                device,
            );
            let x_train = Tensor::<4>::from_data(x.to_data(), &autodiff).require_grad();
            let layer_train = conv(
                shape.in_channels,
                shape.out_channels,
                shape.kernel,
                shape.stride,
                &autodiff,
            );
            let forward = time_median(warmup, runs, || {
                let y = layers::conv2d(&layer, x.clone());
                device.sync().expect("device sync");
                drop(y);
            });
            let forward_backward = time_median(warmup, runs, || {
                let grads = layers::conv2d(&layer_train, x_train.clone()).backward();
                autodiff.sync().expect("device sync");
                drop(grads);
            });
            ConvBench {
                forward_gflops: shape.forward_flops() / (forward.median_ms * 1e6),
                shape: shape.clone(),
                forward,
                forward_backward,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shapes_follow_the_networks() {
        let shapes = conv_bench_shapes(224);
        assert_eq!(shapes.len(), 6 + 2 + 3 * 3);
        let find = |label: &str| shapes.iter().find(|s| s.label == label).unwrap();
        assert_eq!(find("resnet18 stem 7x7").output_size(), 112);
        assert_eq!(find("resnet18 stage 1").size, 56);
        assert_eq!(find("resnet18 stage 4").size, 7);
        assert_eq!(find("resnet18 stage 4 1x1 down").size, 14);
        assert_eq!(find("resnet20 stage 3").size, 8);
        // 64 x 16 x 32 x 32 outputs, 16 x 3 x 3 multiply-adds each.
        assert_eq!(
            find("resnet20 stage 1").forward_flops(),
            2.0 * 64.0 * 16.0 * 1024.0 * 144.0
        );
    }

    #[test]
    fn every_shape_runs_forward_and_backward() {
        let shapes = [ConvShape::new("small", 2, [3, 4], 6, 3, 2)];
        let results = conv_bench(&shapes, &Device::flex(), 0, 1);
        assert_eq!(results.len(), 1);
        assert!(results[0].forward.median_ms > 0.0 && results[0].forward_gflops > 0.0);
        assert_eq!(results[0].forward_backward.runs, 1);
    }
}
