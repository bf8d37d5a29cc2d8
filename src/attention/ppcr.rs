//! The PPCR unit: Pyramid Pixel Context Recalibration.
//!
//! Zhang et al., "PPCR: Learning Pyramid Pixel Context Recalibration Module for Medical Image
//! Classification" (arXiv 2303.01917), as fixed by the authors' released code. Every pixel gets
//! a weight computed from its own channel vector only: channel means over a pyramid of
//! contiguous channel groups (CCPP), standardised against each other (PN), integrated by a
//! learned per-pixel-position weight vector (PCI) and squashed by a sigmoid.
//!
//! Two differences from the released code, both deliberate: pixel normalization adds
//! `eps = 1e-5` under the square root (the released code divides by zero on a pixel whose
//! pyramid values are all equal), and a configuration whose finest level would hold empty
//! channel groups is refused instead of yielding NaN.

use burn::config::Config;
use burn::module::{Module, Param};
use burn::nn::Initializer;
use burn::tensor::module::interpolate;
use burn::tensor::ops::{InterpolateMode, InterpolateOptions};
use burn::tensor::{Device, Tensor, TensorData, activation::sigmoid};

use super::AttentionError;
use crate::kernels::cpu::batch_norm_ppcr::{self, TrainingBatchNorm, WithBatchStatistics};
use crate::kernels::cpu::conv::AffineConvolution;
use crate::kernels::cpu::conv_ppcr;
use crate::kernels::cpu::ppcr as ppcr_fused;
#[cfg(any(feature = "cuda", feature = "wgpu"))]
use crate::kernels::cube::ppcr as ppcr_cube;

/// Configuration of a [`Ppcr`] unit.
#[derive(Config, Debug)]
pub struct PpcrConfig {
    /// Number of input channels `C`.
    pub channels: usize,
    /// Feature-map size `[H, W]` the per-pixel weights are built for.
    pub spatial_size: [usize; 2],
    /// Number of pyramid levels `L`; level `l` splits the channels into `2^l` groups.
    #[config(default = 4)]
    pub levels: usize,
    /// Added to the variance in pixel normalization (absent in the released code).
    #[config(default = 1e-5)]
    pub epsilon: f64,
    /// Fed a feature map of another size, bilinearly resize the weight maps to it instead of
    /// refusing the input, so a model trained at one resolution can be evaluated at another.
    #[config(default = false)]
    pub resize_to_input: bool,
}

/// Pyramid Pixel Context Recalibration: `Y = X * sigmoid(sum_k W[k] * PN(CCPP(X))[k])`.
#[derive(Module, Debug)]
pub struct Ppcr {
    /// Per-pixel-position integration weights, shape `[K, H, W]` with `K = 2^L - 1`,
    /// zero-initialised so that a fresh unit scales its input by exactly 0.5.
    pub pixel_context_weights: Param<Tensor<3>>,
    /// Number of input channels.
    pub channels: usize,
    /// Number of pyramid levels.
    pub levels: usize,
    /// Pixel-normalization epsilon.
    pub epsilon: f64,
    /// Whether an input of another spatial size resizes the weights instead of failing.
    pub resize_to_input: bool,
}

use crate::kernels::pyramid::group_start;
pub use crate::kernels::pyramid::pyramid_maps;
use crate::onnx::{OnnxError, OnnxGraph};

impl PpcrConfig {
    /// Build the unit. Fails when a pyramid level would have an empty channel group
    /// (`C < 2^(L-1)`), when `L` is zero, or when the spatial size is empty.
    pub fn init(&self, device: &Device) -> Result<Ppcr, AttentionError> {
        let [height, width] = self.spatial_size;
        if self.levels == 0 || self.levels > 16 {
            return Err(AttentionError::InvalidConfig(format!(
                "ppcr: levels must be between 1 and 16, got {}",
                self.levels
            )));
        }
        let finest_groups = 1usize << (self.levels - 1);
        if self.channels < finest_groups {
            return Err(AttentionError::InvalidConfig(format!(
                "ppcr: {} channels cannot be split into {} non-empty groups for {} pyramid levels \
                 (the finest level needs C >= 2^(L-1)); use fewer levels or put the unit after a \
                 wider layer",
                self.channels, finest_groups, self.levels
            )));
        }
        if height == 0 || width == 0 {
            return Err(AttentionError::InvalidConfig(format!(
                "ppcr: spatial size must be positive, got {height}x{width}"
            )));
        }
        let maps = pyramid_maps(self.levels);
        Ok(Ppcr {
            pixel_context_weights: Initializer::Zeros.init([maps, height, width], device),
            channels: self.channels,
            levels: self.levels,
            epsilon: self.epsilon,
            resize_to_input: self.resize_to_input,
        })
    }
}

impl Ppcr {
    /// The spatial size `[H, W]` the unit's weights were built for.
    pub fn spatial_size(&self) -> [usize; 2] {
        let [_, height, width] = self.pixel_context_weights.dims();
        [height, width]
    }

    /// Recalibrate `x` (`[B, C, H, W]`). Panics with the message of [`Ppcr::try_forward`] on a
    /// spatial-size mismatch, as burn's own modules panic on shape errors.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        self.try_forward(x)
            .unwrap_or_else(|error| panic!("{error}"))
    }

    /// Recalibrate `x`, or explain why its shape does not fit this unit.
    ///
    /// On the Flex backend (plain or autodiff, `f32`, at most `ppcr_fused::MAX_LEVELS` levels)
    /// this runs the fused kernel of `ppcr_fused`: one pass over `x` for the group means, one
    /// for the product, and a single autodiff node whose backward step is hand-written. On a
    /// CubeCL backend (a build with `cuda` or `wgpu`) it runs the GPU kernels of `ppcr_cube`,
    /// built the same way. Elsewhere it falls back to [`Ppcr::try_tensor_forward`].
    pub fn try_forward(&self, x: Tensor<4>) -> Result<Tensor<4>, AttentionError> {
        let weights = self.weights_for_input(&x)?;
        if self.levels <= ppcr_fused::MAX_LEVELS && ppcr_fused::fused_available(&x, &weights) {
            return Ok(ppcr_fused::recalibrate(
                x,
                weights,
                self.levels,
                self.epsilon,
            ));
        }
        #[cfg(any(feature = "cuda", feature = "wgpu"))]
        if self.levels <= ppcr_cube::MAX_LEVELS && ppcr_cube::cube_available(&x, &weights) {
            return Ok(ppcr_cube::recalibrate(
                x,
                weights,
                self.levels,
                self.epsilon,
            ));
        }
        Ok(self.tensor_forward_with(x, weights))
    }

    /// The weights for input `x`, or why `x` does not fit the unit.
    fn weights_for_input(&self, x: &Tensor<4>) -> Result<Tensor<3>, AttentionError> {
        let [_, height, width] = self.check_shape(x)?;
        self.weights_for([height, width])
    }

    /// `relu(self.forward(x) + residual)`, the end of a residual block, in one pass over the
    /// map where the CPU kernel takes these tensors (plain Flex, inference): `None` where it
    /// does not, for the caller to add. An error where `x` does not fit the unit.
    pub fn try_forward_add_relu(
        &self,
        x: &Tensor<4>,
        residual: &Tensor<4>,
    ) -> Option<Result<Tensor<4>, AttentionError>> {
        let weights = match self.weights_for_input(x) {
            Ok(weights) => weights,
            Err(error) => return Some(Err(error)),
        };
        let takes_kernel = self.levels <= ppcr_fused::MAX_LEVELS
            && ppcr_fused::residual_available(x, &weights, residual);
        takes_kernel.then(|| {
            Ok(ppcr_fused::recalibrate_add_relu(
                x.clone(),
                weights,
                residual.clone(),
                self.levels,
                self.epsilon,
            ))
        })
    }

    /// `relu(self.forward(norm(x)) + residual)` for `norm` a BatchNorm in training mode, with
    /// the BatchNorm folded into the unit's CPU kernel (the normalised map is never written),
    /// where it takes these tensors (Flex, under autodiff or not): the output and the batch mean
    /// and variance for the running statistics; `None` where it does not. An error where `x`
    /// does not fit the unit.
    pub fn try_batch_norm_forward_add_relu(
        &self,
        x: &Tensor<4>,
        norm: &TrainingBatchNorm,
        residual: &Tensor<4>,
    ) -> Option<Result<WithBatchStatistics, AttentionError>> {
        let weights = match self.weights_for_input(x) {
            Ok(weights) => weights,
            Err(error) => return Some(Err(error)),
        };
        let takes_kernel = self.levels <= ppcr_fused::MAX_LEVELS
            && batch_norm_ppcr::available(x, norm, &weights, residual);
        takes_kernel.then(|| {
            Ok(batch_norm_ppcr::batch_norm_ppcr_add_relu(
                x.clone(),
                norm.clone(),
                weights,
                residual.clone(),
                self.levels,
                self.epsilon,
            ))
        })
    }

    /// `relu(self.forward(y) + residual)` for `y` the output of `convolution`, with the unit
    /// and the residual end applied to each sample as the convolution kernel writes it, where
    /// the CPU kernels take these tensors (plain Flex, inference): `None` where they do not.
    /// An error where `y` does not fit the unit.
    pub fn try_convolution_forward_add_relu(
        &self,
        convolution: &AffineConvolution,
        residual: &Tensor<4>,
    ) -> Option<Result<Tensor<4>, AttentionError>> {
        let [_, channels, height, width] = convolution.output_dims;
        let weights = match self
            .check_channels(channels)
            .and_then(|()| self.weights_for([height, width]))
        {
            Ok(weights) => weights,
            Err(error) => return Some(Err(error)),
        };
        let AffineConvolution {
            x,
            weight,
            affine,
            stride,
            padding,
            output_dims,
        } = convolution.clone();
        let takes_kernel = residual.dims() == output_dims
            && conv_ppcr::available(&x, &weight, &weights, residual, self.levels);
        takes_kernel.then(|| {
            Ok(conv_ppcr::conv2d_affine_ppcr_add_relu(
                x,
                weight,
                affine,
                weights,
                residual.clone(),
                stride,
                padding,
                self.levels,
                self.epsilon,
            ))
        })
    }

    /// The forward pass composed of burn tensor operations (the factorised formulation of
    /// [`Ppcr::try_attention_map`] times `x`): what backends without the fused kernel run, and
    /// what the fused kernel's values and gradients are tested against.
    pub fn try_tensor_forward(&self, x: Tensor<4>) -> Result<Tensor<4>, AttentionError> {
        let [_, height, width] = self.check_shape(&x)?;
        let weights = self.weights_for([height, width])?;
        Ok(self.tensor_forward_with(x, weights))
    }

    fn tensor_forward_with(&self, x: Tensor<4>, weights: Tensor<3>) -> Tensor<4> {
        let attention = self.attention_from_weights(x.clone(), weights);
        x * attention
    }

    /// The recalibration weights `A = sigmoid(Z)`, shape `[B, 1, H, W]`, for analysis.
    pub fn attention_map(&self, x: Tensor<4>) -> Tensor<4> {
        self.try_attention_map(x)
            .unwrap_or_else(|error| panic!("{error}"))
    }

    /// Fallible form of [`Ppcr::attention_map`].
    ///
    /// Computed without materialising the `K` pyramid maps. With `F` the finest level's `n`
    /// group means and `G` the `[K, n]` matrix that builds the pyramid from them (`P = G F`):
    /// the pixel mean is `g . F` (`g` the column means of `G`), the second moment is
    /// `F^T Q F` with `Q = G^T G / K`, and the integration `sum_k W_k (P_k - mu)` is `U . F`
    /// with `U = G^T W - g (sum_k W_k)`, a per-pixel `[n]` vector computed from the weights
    /// alone. Every batch-sized tensor is then `n`-channel instead of `K`-channel and there
    /// are fewer of them; [`Ppcr::reference_attention_map`] keeps the literal formulation the
    /// tests hold this one to.
    pub fn try_attention_map(&self, x: Tensor<4>) -> Result<Tensor<4>, AttentionError> {
        let [_, height, width] = self.check_shape(&x)?;
        let weights = self.weights_for([height, width])?;
        Ok(self.attention_from_weights(x, weights))
    }

    /// The factorised attention map of `x` with `weights` already at `x`'s spatial size.
    fn attention_from_weights(&self, x: Tensor<4>, weights: Tensor<3>) -> Tensor<4> {
        let [batch, _, height, width] = x.dims();
        let pixels = height * width;
        let device = x.device();
        let channels = self.channels;
        let finest_groups = 1usize << (self.levels - 1);
        let maps = pyramid_maps(self.levels);
        let pyramid = pyramid_from_finest(channels, self.levels);
        let column_means: Vec<f32> = (0..finest_groups)
            .map(|j| {
                (0..maps)
                    .map(|k| pyramid[k * finest_groups + j])
                    .sum::<f32>()
                    / maps as f32
            })
            .collect();
        let gram: Vec<f32> = (0..finest_groups * finest_groups)
            .map(|index| {
                let (j, l) = (index / finest_groups, index % finest_groups);
                (0..maps)
                    .map(|k| pyramid[k * finest_groups + j] * pyramid[k * finest_groups + l])
                    .sum::<f32>()
                    / maps as f32
            })
            .collect();
        let constant = |values: Vec<f32>, shape: [usize; 2]| {
            Tensor::<2>::from_data(TensorData::new(values, shape), &device)
        };
        let pyramid = constant(pyramid, [maps, finest_groups]);
        let column_means = constant(column_means, [finest_groups, 1]);
        let gram = constant(gram, [finest_groups, finest_groups]);

        let weights = weights.reshape([maps, pixels]);
        let integration =
            pyramid.transpose().matmul(weights.clone()) - column_means.clone() * weights.sum_dim(0);
        let finest = self.finest_group_means(x);
        let mean = (finest.clone() * column_means.unsqueeze::<3>()).sum_dim(1);
        let second_moment =
            (gram.unsqueeze::<3>().matmul(finest.clone()) * finest.clone()).sum_dim(1);
        let variance = (second_moment - mean.square()).clamp_min(0.0);
        let numerator = (finest * integration.unsqueeze::<3>()).sum_dim(1);
        let logits = numerator / variance.add_scalar(self.epsilon).sqrt();
        sigmoid(logits).reshape([batch, 1, height, width])
    }

    /// The attention map computed literally as the paper and the released code state it:
    /// all `K` pyramid maps, pixel normalization across them, per-pixel integration. The
    /// reference [`Ppcr::try_attention_map`] is tested against.
    pub fn reference_attention_map(&self, x: Tensor<4>) -> Result<Tensor<4>, AttentionError> {
        let [batch, height, width] = self.check_shape(&x)?;
        let weights = self.weights_for([height, width])?;
        let maps = pyramid_maps(self.levels);
        let pyramid = self.channel_pyramid(x);
        let normalized = pixel_normalize(pyramid, self.epsilon);
        let pixel_context_weights = weights.reshape([1, maps, height * width]);
        let logits = (normalized * pixel_context_weights).sum_dim(1);
        Ok(sigmoid(logits).reshape([batch, 1, height, width]))
    }

    /// `[B, H, W]` of an input with the unit's channel count.
    fn check_shape(&self, x: &Tensor<4>) -> Result<[usize; 3], AttentionError> {
        let [batch, channels, height, width] = x.dims();
        self.check_channels(channels)?;
        Ok([batch, height, width])
    }

    fn check_channels(&self, channels: usize) -> Result<(), AttentionError> {
        if channels != self.channels {
            return Err(AttentionError::ShapeMismatch(format!(
                "ppcr: unit built for {} channels was fed {channels}",
                self.channels
            )));
        }
        Ok(())
    }

    /// The unit's weights at `[height, width]`: as built, or resized when configured to.
    fn weights_for(&self, size: [usize; 2]) -> Result<Tensor<3>, AttentionError> {
        let built = self.spatial_size();
        if size == built {
            return Ok(self.pixel_context_weights.val());
        }
        if !self.resize_to_input {
            return Err(AttentionError::ShapeMismatch(format!(
                "ppcr: unit built for {}x{} feature maps was fed {}x{}; evaluate at the training \
                 resolution, or enable resize_to_input to resample the per-pixel weights",
                built[0], built[1], size[0], size[1]
            )));
        }
        let maps = pyramid_maps(self.levels);
        let options = InterpolateOptions::new(InterpolateMode::Bilinear)
            .with_align_corners(false)
            .with_output_size(size);
        let resized = interpolate(
            self.pixel_context_weights
                .val()
                .reshape([1, maps, built[0], built[1]]),
            options,
        );
        Ok(resized.reshape([maps, size[0], size[1]]))
    }

    /// Cross-channel pyramid pooling: `[B, C, H, W]` -> `[B, K, H*W]`, levels coarse to fine,
    /// groups in channel order.
    ///
    /// One pass over the input computes the finest level's group means; every coarser group is
    /// a union of finest groups, so its mean is their size-weighted average (a tiny `[K, n]`
    /// matrix product instead of one slice-and-mean per group).
    pub fn channel_pyramid(&self, x: Tensor<4>) -> Tensor<3> {
        let device = x.device();
        let finest_groups = 1usize << (self.levels - 1);
        let finest = self.finest_group_means(x);
        let maps = pyramid_maps(self.levels);
        let pyramid = Tensor::<2>::from_data(
            TensorData::new(
                pyramid_from_finest(self.channels, self.levels),
                [maps, finest_groups],
            ),
            &device,
        );
        pyramid.unsqueeze::<3>().matmul(finest)
    }

    /// The finest pyramid level's group means, `[B, C, H, W]` -> `[B, n, H*W]`, in one pass.
    fn finest_group_means(&self, x: Tensor<4>) -> Tensor<3> {
        let [batch, channels, height, width] = x.dims();
        let finest_groups = 1usize << (self.levels - 1);
        let pixels = height * width;
        if channels % finest_groups == 0 {
            x.reshape([batch, finest_groups, channels / finest_groups, pixels])
                .mean_dim(2)
                .reshape([batch, finest_groups, pixels])
        } else {
            let averaging = Tensor::<2>::from_data(
                TensorData::new(
                    finest_group_averaging(channels, finest_groups),
                    [finest_groups, channels],
                ),
                &x.device(),
            );
            averaging
                .unsqueeze::<3>()
                .matmul(x.reshape([batch, channels, pixels]))
        }
    }
}

/// `[n, C]` matrix whose row `g` averages the channels of finest group `g`.
fn finest_group_averaging(channels: usize, groups: usize) -> Vec<f32> {
    let mut matrix = vec![0.0f32; groups * channels];
    for group in 0..groups {
        let (start, end) = (
            group_start(channels, groups, group),
            group_start(channels, groups, group + 1),
        );
        let weight = 1.0 / (end - start) as f32;
        for channel in start..end {
            matrix[group * channels + channel] = weight;
        }
    }
    matrix
}

/// `[K, n]` matrix mapping the finest level's group means to all `K` pyramid means.
///
/// Group `g` of level `l` spans finest groups `g*2^(L-1-l) .. (g+1)*2^(L-1-l)` because
/// `floor(C*g/2^l) = floor(C*g*m/(2^l*m))`; each finest mean is weighted by its share of the
/// coarse group's channels.
pub(super) fn pyramid_from_finest(channels: usize, levels: usize) -> Vec<f32> {
    let finest_groups = 1usize << (levels - 1);
    let mut matrix = Vec::with_capacity(pyramid_maps(levels) * finest_groups);
    for level in 0..levels {
        let groups = 1usize << level;
        let span = finest_groups / groups;
        for group in 0..groups {
            let coarse_size = (group_start(channels, groups, group + 1)
                - group_start(channels, groups, group)) as f32;
            for finest in 0..finest_groups {
                let inside = finest / span == group;
                let finest_size = (group_start(channels, finest_groups, finest + 1)
                    - group_start(channels, finest_groups, finest))
                    as f32;
                matrix.push(if inside {
                    finest_size / coarse_size
                } else {
                    0.0
                });
            }
        }
    }
    matrix
}

/// Pixel normalization: standardise the `K` context values of every pixel against each other
/// (biased variance, no affine). `[B, K, P]` -> `[B, K, P]`.
pub fn pixel_normalize(pyramid: Tensor<3>, epsilon: f64) -> Tensor<3> {
    let mean = pyramid.clone().mean_dim(1);
    let centered = pyramid - mean;
    let variance = centered.clone().square().mean_dim(1);
    centered / variance.add_scalar(epsilon).sqrt()
}

impl Ppcr {
    /// The unit as ONNX operators from `x` (`[N, C, H, W]` at the unit's own spatial size), in
    /// the literal formulation of the paper: the `K` pyramid maps as one `MatMul` of a `[K, C]`
    /// group-averaging matrix with the flattened map, pixel normalisation across them
    /// (`ReduceMean`, eps under the root), the per-pixel integration and the sigmoid gate.
    pub fn to_onnx(
        &self,
        graph: &mut OnnxGraph,
        x: &str,
        [channels, height, width]: [usize; 3],
    ) -> Result<String, OnnxError> {
        if [height, width] != self.spatial_size() {
            let [h, w] = self.spatial_size();
            return Err(OnnxError::Unsupported(format!(
                "ppcr built for {h}x{w} maps at {height}x{width} (resampled weights)"
            )));
        }
        let maps = pyramid_maps(self.levels);
        let mut averaging = vec![0.0f32; maps * channels];
        let mut map = 0;
        for level in 0..self.levels {
            let groups = 1usize << level;
            for group in 0..groups {
                let (first, end) = (
                    group_start(channels, groups, group),
                    group_start(channels, groups, group + 1),
                );
                for channel in first..end {
                    averaging[map * channels + channel] = 1.0 / (end - first) as f32;
                }
                map += 1;
            }
        }
        let pixels = height * width;
        let flat = graph.reshape(x, &[0, channels as i64, pixels as i64]);
        let averaging = graph.constant("ppcr_pyramid", &averaging, &[maps, channels]);
        let pyramid = graph.node("MatMul", &[&averaging, &flat], vec![]);
        let mean = graph.reduce("ReduceMean", &pyramid, &[1]);
        let centred = graph.binary("Sub", &pyramid, &mean);
        let squared = graph.binary("Mul", &centred, &centred);
        let variance = graph.reduce("ReduceMean", &squared, &[1]);
        let epsilon = graph.scalar("epsilon", self.epsilon as f32);
        let variance = graph.binary("Add", &variance, &epsilon);
        let root = graph.unary("Sqrt", &variance);
        let normalized = graph.binary("Div", &centred, &root);
        let weights = graph.tensor(
            "ppcr_weights",
            self.pixel_context_weights.val(),
            &[maps, pixels],
        );
        let weighted = graph.binary("Mul", &normalized, &weights);
        let logits = graph.reduce_sum(&weighted, &[1]);
        let attention = graph.unary("Sigmoid", &logits);
        let attention = graph.reshape(&attention, &[0, 1, height as i64, width as i64]);
        Ok(graph.binary("Mul", x, &attention))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attention::testing::{assert_gradients_match, device, random_tensor};

    fn unit(channels: usize, size: [usize; 2], device: &Device) -> Ppcr {
        PpcrConfig::new(channels, size).init(device).unwrap()
    }

    fn values(tensor: Tensor<4>) -> Vec<f32> {
        tensor.into_data().try_to_vec::<f32>().unwrap()
    }

    #[test]
    fn twelve_channel_pyramid_matches_hand_computed_means_in_order() {
        let device = device();
        // One pixel whose channel c holds the value c.
        let x = Tensor::<4>::from_data(
            TensorData::new((0..12).map(|c| c as f32).collect::<Vec<_>>(), [1, 12, 1, 1]),
            &device,
        );
        let pyramid = unit(12, [1, 1], &device).channel_pyramid(x);
        assert_eq!(pyramid.dims(), [1, 15, 1]);
        let got = pyramid.into_data().try_to_vec::<f32>().unwrap();
        // Level 0: all 12 channels. Level 1: 0..6, 6..12. Level 2: groups of 3.
        // Level 3: floor(12g/8) = 0,1,3,4,6,7,9,10,12 -> sizes 1,2,1,2,1,2,1,2.
        let expected = [
            5.5, //
            2.5, 8.5, //
            1.0, 4.0, 7.0, 10.0, //
            0.0, 1.5, 3.0, 4.5, 6.0, 7.5, 9.0, 10.5,
        ];
        for (k, (g, e)) in got.iter().zip(expected).enumerate() {
            assert!((g - e).abs() < 1e-5, "map {k}: got {g}, expected {e}");
        }
    }

    #[test]
    fn even_and_uneven_channel_splits_agree_with_direct_group_means() {
        let device = device();
        for channels in [8, 12, 13, 16, 24] {
            let x = random_tensor([2, channels, 3, 2], 7, &device);
            let data = x.clone().into_data().try_to_vec::<f32>().unwrap();
            let pyramid = unit(channels, [3, 2], &device).channel_pyramid(x);
            let got = pyramid.into_data().try_to_vec::<f32>().unwrap();
            let mut k = 0;
            for level in 0..4 {
                let groups = 1 << level;
                for group in 0..groups {
                    let (start, end) = (channels * group / groups, channels * (group + 1) / groups);
                    for b in 0..2 {
                        for p in 0..6 {
                            let mean: f32 = (start..end)
                                .map(|c| data[(b * channels + c) * 6 + p])
                                .sum::<f32>()
                                / (end - start) as f32;
                            let value = got[(b * 15 + k) * 6 + p];
                            assert!(
                                (value - mean).abs() < 1e-5,
                                "C={channels} level {level} group {group}: {value} vs {mean}"
                            );
                        }
                    }
                    k += 1;
                }
            }
        }
    }

    #[test]
    fn forward_on_tiny_input_matches_hand_computation() {
        let device = device();
        // Two pixels, twelve channels: pixel 0 holds c, pixel 1 holds (c mod 3) * 2.
        let mut data = vec![0.0f32; 24];
        for c in 0..12 {
            data[c * 2] = c as f32;
            data[c * 2 + 1] = ((c % 3) * 2) as f32;
        }
        let x = Tensor::<4>::from_data(TensorData::new(data.clone(), [1, 12, 1, 2]), &device);
        let mut ppcr = unit(12, [1, 2], &device);
        // Pixel 0 integrates only map 0 (level 0) with weight 2 and map 8 (level 3, group 1)
        // with weight -1; pixel 1 integrates map 3 (level 2, group 0) with weight 0.5.
        let mut weights = vec![0.0f32; 15 * 2];
        weights[0] = 2.0;
        weights[8 * 2] = -1.0;
        weights[3 * 2 + 1] = 0.5;
        ppcr.pixel_context_weights = Param::from_tensor(Tensor::from_data(
            TensorData::new(weights, [15, 1, 2]),
            &device,
        ));
        let y = values(ppcr.forward(x));

        // Hand-computed pyramids (see the test above for pixel 0).
        let pixel0 = [
            5.5, 2.5, 8.5, 1.0, 4.0, 7.0, 10.0, 0.0, 1.5, 3.0, 4.5, 6.0, 7.5, 9.0, 10.5,
        ];
        // Pixel 1 channels: 0,2,4,0,2,4,0,2,4,0,2,4.
        // Level 0: 2. Level 1: (0+2+4+0+2+4)/6 = 2, 2. Level 2: (0,2,4)->2 each group.
        // Level 3 groups {0},{2,4},{0},{2,4},{0},{2,4},{0},{2,4} -> 0,3,0,3,0,3,0,3.
        let pixel1 = [
            2.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0, 0.0, 3.0, 0.0, 3.0, 0.0, 3.0, 0.0, 3.0,
        ];
        let standardised = |p: &[f64; 15], k: usize| {
            let mean = p.iter().sum::<f64>() / 15.0;
            let var = p.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / 15.0;
            (p[k] - mean) / (var + 1e-5).sqrt()
        };
        let sigmoid = |z: f64| 1.0 / (1.0 + (-z).exp());
        let a0 = sigmoid(2.0 * standardised(&pixel0, 0) - standardised(&pixel0, 8));
        let a1 = sigmoid(0.5 * standardised(&pixel1, 3));
        for c in 0..12 {
            let expected0 = data[c * 2] as f64 * a0;
            let expected1 = data[c * 2 + 1] as f64 * a1;
            assert!((y[c * 2] as f64 - expected0).abs() < 1e-5, "c={c} pixel 0");
            assert!(
                (y[c * 2 + 1] as f64 - expected1).abs() < 1e-5,
                "c={c} pixel 1"
            );
        }
        // Spot-check the hand value itself, so the closure above cannot hide an error:
        // pixel 1 mean = (7*2 + 4*3)/15 = 26/15, map 3 = 2.
        let mean1 = 26.0 / 15.0;
        let var1 =
            (7.0 * (2.0f64 - mean1).powi(2) + 4.0 * mean1.powi(2) + 4.0 * (3.0 - mean1).powi(2))
                / 15.0;
        assert!((standardised(&pixel1, 3) - (2.0 - mean1) / (var1 + 1e-5).sqrt()).abs() < 1e-12);
    }

    /// `Y = X * sigmoid(sum_k w_k * (P_k - mean) / sqrt(var + eps))` at one pixel, in f64, from
    /// the pixel's pyramid maps written out by hand.
    fn hand_attention(maps: &[f64], weights: &[f64], epsilon: f64) -> f64 {
        let k = maps.len() as f64;
        let mean = maps.iter().sum::<f64>() / k;
        let var = maps.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / k;
        let z: f64 = maps
            .iter()
            .zip(weights)
            .map(|(p, w)| w * (p - mean) / (var + epsilon).sqrt())
            .sum();
        1.0 / (1.0 + (-z).exp())
    }

    /// A unit of `levels` levels on 1x1 maps with the given per-map weights.
    fn one_pixel_unit(channels: usize, levels: usize, weights: &[f32], device: &Device) -> Ppcr {
        let mut ppcr = PpcrConfig::new(channels, [1, 1])
            .with_levels(levels)
            .init(device)
            .unwrap();
        ppcr.pixel_context_weights = Param::from_tensor(Tensor::from_data(
            TensorData::new(weights.to_vec(), [weights.len(), 1, 1]),
            device,
        ));
        ppcr
    }

    #[test]
    fn three_levels_batch_of_two_and_a_constant_pixel_match_hand_computation() {
        let device = device();
        // Sample 0 holds 1, 2, 3, 6 in its four channels; sample 1 is constant (4 everywhere).
        let data = vec![1.0f32, 2.0, 3.0, 6.0, 4.0, 4.0, 4.0, 4.0];
        let x = Tensor::<4>::from_data(TensorData::new(data.clone(), [2, 4, 1, 1]), &device);
        // K = 7 maps; weight 1 on the whole-channel mean, 0.5 on the last finest group.
        let weights = [1.0f32, 0.0, 0.0, 0.0, 0.0, 0.0, 0.5];
        let y = values(one_pixel_unit(4, 3, &weights, &device).forward(x));
        // Sample 0: level 0 (1+2+3+6)/4 = 3; level 1 1.5, 4.5; level 2 1, 2, 3, 6.
        let maps = [3.0, 1.5, 4.5, 1.0, 2.0, 3.0, 6.0];
        let weights: Vec<f64> = weights.iter().map(|&w| w as f64).collect();
        let a0 = hand_attention(&maps, &weights, 1e-5);
        // The hand value itself: mean 3, var 18.5 / 7, z = 0.5 * 3 / sqrt(var + eps).
        let z = 1.5 / (18.5f64 / 7.0 + 1e-5).sqrt();
        assert!((a0 - 1.0 / (1.0 + (-z).exp())).abs() < 1e-12);
        for c in 0..4 {
            let expected = data[c] as f64 * a0;
            assert!(
                (y[c] as f64 - expected).abs() < 1e-5,
                "c={c}: {} vs {expected}",
                y[c]
            );
        }
        // Sample 1: every map equals 4, so every standardised map is 0 and the attention is
        // exactly one half, whatever the weights.
        assert_eq!(&y[4..], &[2.0, 2.0, 2.0, 2.0]);
    }

    #[test]
    fn five_levels_match_hand_computation() {
        let device = device();
        // One pixel whose channel c holds c, 16 channels, L = 5 (K = 31 maps).
        let data: Vec<f32> = (0..16).map(|c| c as f32).collect();
        let x = Tensor::<4>::from_data(TensorData::new(data.clone(), [1, 16, 1, 1]), &device);
        let mut weights = vec![0.0f32; 31];
        weights[0] = 1.0; // level 0
        weights[2] = -0.5; // level 1, group 1
        weights[30] = 0.25; // level 4, group 15: channel 15 alone
        let y = values(one_pixel_unit(16, 5, &weights, &device).forward(x));
        // Level l has 2^l groups of 16 / 2^l consecutive channels; a group's mean is the mean
        // of its first and last channel.
        let mut maps = vec![7.5];
        maps.extend([3.5, 11.5]);
        maps.extend([1.5, 5.5, 9.5, 13.5]);
        maps.extend((0..8).map(|g| 2.0 * g as f64 + 0.5));
        maps.extend((0..16).map(|c| c as f64));
        assert_eq!(maps.len(), 31);
        let weights: Vec<f64> = weights.iter().map(|&w| w as f64).collect();
        let a = hand_attention(&maps, &weights, 1e-5);
        for c in 0..16 {
            let expected = data[c] as f64 * a;
            assert!(
                (y[c] as f64 - expected).abs() < 1e-5,
                "c={c}: {} vs {expected}",
                y[c]
            );
        }
    }

    #[test]
    fn epsilon_sits_under_the_square_root_and_changes_a_near_constant_pixel() {
        let device = device();
        // Eight channels, all 0 but the last, 0.01: the 15 maps vary so little (biased
        // variance 0.0729 * 0.01^2 = 7.3e-6) that eps = 1e-5 under the square root changes
        // the attention by about 0.07.
        let delta = 0.01f64;
        let mut data = vec![0.0f32; 8];
        data[7] = delta as f32;
        let x = Tensor::<4>::from_data(TensorData::new(data, [1, 8, 1, 1]), &device);
        let mut weights = vec![0.0f32; 15];
        weights[14] = 1.0; // level 3, group 7: channel 7 alone
        let y = values(one_pixel_unit(8, 4, &weights, &device).forward(x))[7] as f64;
        let mut maps = vec![0.0; 15];
        maps[0] = delta / 8.0;
        maps[2] = delta / 4.0;
        maps[6] = delta / 2.0;
        maps[14] = delta;
        let weights: Vec<f64> = weights.iter().map(|&w| w as f64).collect();
        let with_eps = delta * hand_attention(&maps, &weights, 1e-5);
        let without_eps = delta * hand_attention(&maps, &weights, 0.0);
        // eps added to the standard deviation instead of the variance.
        let k = 15.0;
        let mean = maps.iter().sum::<f64>() / k;
        let std = (maps.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / k).sqrt();
        let outside = delta / (1.0 + (-(delta - mean) / (std + 1e-5)).exp());
        assert!((y - with_eps).abs() < 2e-6, "{y} vs {with_eps}");
        assert!(
            (y - without_eps).abs() > 5e-4,
            "{y} vs no eps {without_eps}"
        );
        assert!(
            (y - outside).abs() > 5e-4,
            "{y} vs eps outside the root {outside}"
        );
    }

    #[test]
    fn factorised_forward_matches_the_literal_formulation() {
        let device = device();
        for (channels, levels, seed) in [(12, 4, 1), (16, 4, 2), (13, 3, 3), (64, 4, 4), (9, 2, 5)]
        {
            let mut ppcr = PpcrConfig::new(channels, [3, 4])
                .with_levels(levels)
                .init(&device)
                .unwrap();
            let maps = pyramid_maps(levels);
            ppcr.pixel_context_weights = Param::from_tensor(
                random_tensor3([maps, 3, 4], seed + 10, &device).mul_scalar(2.0),
            );
            let x = random_tensor([3, channels, 3, 4], seed, &device);
            let fast = values(ppcr.attention_map(x.clone()));
            let literal = values(ppcr.reference_attention_map(x).unwrap());
            for (f, l) in fast.iter().zip(&literal) {
                assert!((f - l).abs() < 2e-5, "C={channels} L={levels}: {f} vs {l}");
            }
        }
    }

    #[test]
    fn zero_weights_scale_by_exactly_one_half() {
        let device = device();
        let x = random_tensor([2, 16, 4, 4], 3, &device);
        let y = unit(16, [4, 4], &device).forward(x.clone());
        assert_eq!(values(y), values(x.mul_scalar(0.5)));
    }

    #[test]
    fn pixel_with_equal_channels_gives_finite_output() {
        let device = device();
        // All-zero input: every pixel's pyramid values are equal, variance 0.
        let x = Tensor::<4>::zeros([1, 8, 2, 2], &device);
        let mut ppcr = unit(8, [2, 2], &device);
        ppcr.pixel_context_weights = Param::from_tensor(random_tensor3([15, 2, 2], 5, &device));
        let map = ppcr.attention_map(x.clone());
        assert!(values(map).iter().all(|v| v.is_finite()));
        let constant = Tensor::<4>::ones([1, 8, 2, 2], &device).mul_scalar(3.0);
        assert!(values(ppcr.forward(constant)).iter().all(|v| v.is_finite()));
    }

    fn random_tensor3(shape: [usize; 3], seed: u64, device: &Device) -> Tensor<3> {
        random_tensor([1, shape[0], shape[1], shape[2]], seed, device).reshape(shape)
    }

    #[test]
    fn changing_one_pixel_changes_only_that_pixels_weight() {
        let device = device();
        let x = random_tensor([1, 12, 3, 3], 11, &device);
        let mut ppcr = unit(12, [3, 3], &device);
        ppcr.pixel_context_weights = Param::from_tensor(random_tensor3([15, 3, 3], 12, &device));
        let before = values(ppcr.attention_map(x.clone()));
        let mut data = x.into_data().try_to_vec::<f32>().unwrap();
        // Change every channel of pixel (1, 2) (flat index 5).
        for c in 0..12 {
            data[c * 9 + 5] = data[c * 9 + 5] * -3.0 + 1.0;
        }
        let changed = Tensor::<4>::from_data(TensorData::new(data, [1, 12, 3, 3]), &device);
        let after = values(ppcr.attention_map(changed));
        for pixel in 0..9 {
            if pixel == 5 {
                assert!((before[pixel] - after[pixel]).abs() > 1e-4);
            } else {
                assert_eq!(before[pixel], after[pixel], "pixel {pixel} changed");
            }
        }
    }

    #[test]
    fn too_few_channels_are_refused_at_construction() {
        let error = PpcrConfig::new(7, [4, 4]).init(&device()).unwrap_err();
        let message = error.to_string();
        assert!(
            message.contains("7 channels") && message.contains("8"),
            "{message}"
        );
        assert!(
            PpcrConfig::new(4, [4, 4])
                .with_levels(3)
                .init(&device())
                .is_ok()
        );
    }

    #[test]
    fn mismatched_spatial_size_is_an_error_naming_both_sizes() {
        let device = device();
        let ppcr = unit(8, [4, 4], &device);
        let error = ppcr
            .try_forward(Tensor::zeros([1, 8, 6, 5], &device))
            .unwrap_err()
            .to_string();
        assert!(error.contains("4x4") && error.contains("6x5"), "{error}");
    }

    #[test]
    fn resizing_weights_to_another_size_keeps_constant_weights_constant() {
        let device = device();
        let mut ppcr = PpcrConfig::new(8, [4, 4])
            .with_resize_to_input(true)
            .init(&device)
            .unwrap();
        // A weight map constant over space resamples to the same constant, so the attention
        // at 8x8 equals the attention computed with an 8x8 unit holding that constant.
        let constant: Vec<f32> = (0..15)
            .flat_map(|k| vec![k as f32 * 0.1 - 0.5; 16])
            .collect();
        ppcr.pixel_context_weights = Param::from_tensor(Tensor::from_data(
            TensorData::new(constant, [15, 4, 4]),
            &device,
        ));
        let mut reference = unit(8, [8, 8], &device);
        let constant8: Vec<f32> = (0..15)
            .flat_map(|k| vec![k as f32 * 0.1 - 0.5; 64])
            .collect();
        reference.pixel_context_weights = Param::from_tensor(Tensor::from_data(
            TensorData::new(constant8, [15, 8, 8]),
            &device,
        ));
        let x = random_tensor([1, 8, 8, 8], 2, &device);
        let got = values(ppcr.forward(x.clone()));
        let expected = values(reference.forward(x));
        for (g, e) in got.iter().zip(expected) {
            assert!((g - e).abs() < 1e-5);
        }
    }

    #[test]
    fn parameter_count_is_k_times_h_times_w() {
        let ppcr = unit(64, [8, 8], &device());
        assert_eq!(ppcr.num_params(), 15 * 64);
        let three_levels = PpcrConfig::new(64, [8, 8])
            .with_levels(3)
            .init(&device())
            .unwrap();
        assert_eq!(three_levels.num_params(), 7 * 64);
    }

    #[test]
    fn gradients_match_finite_differences() {
        let device = device().autodiff();
        let mut ppcr = PpcrConfig::new(12, [3, 3]).init(&device).unwrap();
        // Non-zero weights so that the input gradient exercises the normalization path.
        ppcr.pixel_context_weights =
            Param::from_tensor(random_tensor3([15, 3, 3], 21, &device)).set_require_grad(true);
        assert_gradients_match(ppcr, [2, 12, 3, 3], |unit, x| unit.forward(x));
    }

    #[test]
    fn onnx_export_is_refused_by_name_at_another_map_size() {
        let ppcr = PpcrConfig::new(16, [8, 8]).init(&device()).unwrap();
        let mut graph = OnnxGraph::new();
        let error = ppcr.to_onnx(&mut graph, "x", [16, 4, 4]).unwrap_err();
        assert_eq!(
            error.to_string(),
            "ppcr built for 8x8 maps at 4x4 (resampled weights) cannot be exported to ONNX"
        );
        assert!(ppcr.to_onnx(&mut graph, "x", [16, 8, 8]).is_ok());
    }
}
