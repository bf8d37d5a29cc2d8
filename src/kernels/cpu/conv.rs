//! The backbone's 2-D convolution (no groups, no dilation, no bias; any kernel, stride and
//! symmetric padding) as a CPU kernel on the Flex backend, forward and both backward passes.
//!
//! He et al., "Deep Residual Learning for Image Recognition" (CVPR 2016): every ResNet layer but
//! the classifier is such a convolution, so it decides what a training step costs. burn's Flex
//! backend runs the forward as tiled im2col plus a matrix product per tile, the input gradient
//! as a transposed convolution, and the weight gradient as a convolution of the input by the
//! output gradient with batch and channels swapped: a product of `K = B * Ho * Wo` by a few
//! outputs per channel pair, the shape matrix kernels handle worst (docs/performance.md).
//!
//! Here each pass is one matrix product per sample, on the `gemm` crate burn itself builds on,
//! with its AVX-512 kernels enabled (the `x86-v4` feature; it picks them at run time):
//! - forward: `Y_b [Co, N] = W [Co, K] x col(X_b) [K, N]`, with `col` the im2col matrix of
//!   sample `b` (`K = Ci * kh * kw` rows, `N = Ho * Wo` output pixels);
//! - input gradient: `dcol = W^T [K, Co] x dY_b [Co, N]`, then col2im adds it into `dX_b`;
//! - weight gradient: `dW [Co, K] = sum_b dY_b [Co, N] x col(X_b)^T [N, K]`.
//!
//! On processors with AVX-512F, stride-1 convolutions of at most [`DIRECT_MAX_CHANNELS`]
//! channels take `conv_direct` instead for the forward pass and the input gradient (no im2col
//! matrix at all). The weight gradient of a stride-1 convolution on a map whose padding adds
//! little (`shifted_weight_gradient`) is `kh * kw` products over the zero-padded input, one per
//! kernel position, without an im2row matrix; the others take the product above.
//!
//! Samples are spread over threads, each product single-threaded (a batch of 1 or 2 gives the
//! product the threads instead). A pointwise convolution (1x1, stride 1, no padding) uses `X_b`
//! itself as `col`. The weight gradient sums per thread over a fixed split of the batch and
//! adds the partial sums in order, so a given thread count gives the same bits every run.
//!
//! In inference ([`ConvAffineOps`]) the BatchNorm after the convolution, with the ReLU or the
//! residual add and ReLU that follow it, is applied to each output value as the kernel writes
//! it, instead of in one more pass over the feature map each; a [`SampleEpilogue`] takes each
//! output sample after that, while it is in cache (the PPCR unit and the block's end,
//! `conv_ppcr`).

use burn::backend::autodiff::Autodiff;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::{
    Backend, Dispatch, Flex, TensorMetadata, backend_extension, tensor::FloatTensor,
};
use burn::tensor::{Shape, Tensor};
use rayon::prelude::*;

use std::mem::MaybeUninit;

use super::common::{assume_written, contiguous_values, flex_tensor, on_flex_f32, relu, unwritten};
use super::conv_direct::{self, DirectScratch, DirectShape};

/// The convolution as a backend extension operation.
///
/// Implemented for `Flex` (forward only) and `Autodiff<Flex>` (forward plus the backward node);
/// any other backend takes burn's own convolution, which [`fused_available`] decides.
#[backend_extension(Flex, Autodiff)]
pub trait ConvOps: Backend {
    /// `Y = conv2d(X, W)` for `x` of shape `[B, Ci, H, W]` and `weight` of shape
    /// `[Co, Ci, kh, kw]`, with the given stride and symmetric zero padding `[ph, pw]`.
    fn conv2d_gemm(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        stride: [usize; 2],
        padding: [usize; 2],
    ) -> FloatTensor<Self>;
}

/// Whether [`conv2d`] can run on these tensors: both live on the Flex backend (plain or under
/// autodiff) and hold `f32` values.
pub fn fused_available(x: &Tensor<4>, weight: &Tensor<4>) -> bool {
    on_flex_f32(x) && on_flex_f32(weight)
}

/// Run the convolution; the caller checks [`fused_available`] and that the input has the
/// weight's `Ci` channels and is at least as large as the kernel once padded.
pub fn conv2d(
    x: Tensor<4>,
    weight: Tensor<4>,
    stride: [usize; 2],
    padding: [usize; 2],
) -> Tensor<4> {
    Tensor::from_dispatch(<Dispatch as ConvOps>::conv2d_gemm(
        x.into_dispatch(),
        weight.into_dispatch(),
        stride,
        padding,
    ))
}

/// The convolution of [`ConvOps::conv2d_gemm`] followed by an inference BatchNorm, on plain
/// Flex tensors: `y * scale[o] + shift[o]` per output channel `o`, then ReLU, or the residual
/// add and ReLU that end a block. Folded into the kernel's output, the feature map is written
/// once instead of written and then read and rewritten by each following pass.
#[backend_extension(Flex)]
pub trait ConvAffineOps: Backend {
    /// `[relu](conv2d(X, W) * scale + shift)` per output channel.
    fn conv2d_affine_fused(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        scale: FloatTensor<Self>,
        shift: FloatTensor<Self>,
        stride: [usize; 2],
        padding: [usize; 2],
        relu: bool,
    ) -> FloatTensor<Self>;

    /// `relu(conv2d(X, W) * scale + shift + residual)`, with `residual` of the output's shape.
    fn conv2d_affine_add_relu_fused(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        scale: FloatTensor<Self>,
        shift: FloatTensor<Self>,
        residual: FloatTensor<Self>,
        stride: [usize; 2],
        padding: [usize; 2],
    ) -> FloatTensor<Self>;
}

/// Whether [`conv2d_affine`] and [`conv2d_affine_add_relu`] can run on these tensors: plain
/// (not autodiff) Flex `f32` tensors.
pub fn affine_available(x: &Tensor<4>, weight: &Tensor<4>) -> bool {
    fused_available(x, weight) && !x.device().is_autodiff()
}

/// `[relu](conv2d(x, weight) * scale + shift)` per output channel; the caller checks
/// [`affine_available`] and what [`conv2d`] needs, and that `scale` and `shift` are `[Co]`.
pub fn conv2d_affine(
    x: Tensor<4>,
    weight: Tensor<4>,
    [scale, shift]: [Tensor<1>; 2],
    stride: [usize; 2],
    padding: [usize; 2],
    relu: bool,
) -> Tensor<4> {
    Tensor::from_dispatch(<Dispatch as ConvAffineOps>::conv2d_affine_fused(
        x.into_dispatch(),
        weight.into_dispatch(),
        scale.into_dispatch(),
        shift.into_dispatch(),
        stride,
        padding,
        relu,
    ))
}

/// A convolution and the inference BatchNorm after it, `conv2d(x, weight) * scale + shift`,
/// as [`conv2d_affine`] takes them: what a layer after it (an attention unit) may fold into the
/// kernel's output instead of reading the output back.
#[derive(Debug, Clone)]
pub struct AffineConvolution {
    /// The input `[B, Ci, H, W]`.
    pub x: Tensor<4>,
    /// The weight `[Co, Ci, kh, kw]`.
    pub weight: Tensor<4>,
    /// `[scale, shift]`, each `[Co]`.
    pub affine: [Tensor<1>; 2],
    /// The stride.
    pub stride: [usize; 2],
    /// The symmetric zero padding `[ph, pw]`.
    pub padding: [usize; 2],
    /// The output's shape `[B, Co, Ho, Wo]`.
    pub output_dims: [usize; 4],
}

impl AffineConvolution {
    /// `conv2d(x, weight) * scale + shift`, by [`conv2d_affine`].
    pub fn forward(self) -> Tensor<4> {
        conv2d_affine(
            self.x,
            self.weight,
            self.affine,
            self.stride,
            self.padding,
            false,
        )
    }
}

/// `relu(conv2d(x, weight) * scale + shift + residual)`; the caller checks what
/// [`conv2d_affine`] needs and that `residual` has the output's shape and lives on Flex.
pub fn conv2d_affine_add_relu(
    x: Tensor<4>,
    weight: Tensor<4>,
    [scale, shift]: [Tensor<1>; 2],
    residual: Tensor<4>,
    stride: [usize; 2],
    padding: [usize; 2],
) -> Tensor<4> {
    Tensor::from_dispatch(<Dispatch as ConvAffineOps>::conv2d_affine_add_relu_fused(
        x.into_dispatch(),
        weight.into_dispatch(),
        scale.into_dispatch(),
        shift.into_dispatch(),
        residual.into_dispatch(),
        stride,
        padding,
    ))
}

impl ConvAffineOps for Flex {
    fn conv2d_affine_fused(
        x: FlexTensor,
        weight: FlexTensor,
        scale: FlexTensor,
        shift: FlexTensor,
        stride: [usize; 2],
        padding: [usize; 2],
        relu: bool,
    ) -> FlexTensor {
        let (scale, shift) = (contiguous_values(&scale), contiguous_values(&shift));
        let map = OutputMap::new(&weight, &scale, &shift, None, relu);
        forward(&x, &weight, stride, padding, Some(&map), None)
    }

    fn conv2d_affine_add_relu_fused(
        x: FlexTensor,
        weight: FlexTensor,
        scale: FlexTensor,
        shift: FlexTensor,
        residual: FlexTensor,
        stride: [usize; 2],
        padding: [usize; 2],
    ) -> FlexTensor {
        let (scale, shift) = (contiguous_values(&scale), contiguous_values(&shift));
        let residual_shape = residual.shape();
        let residual = contiguous_values(&residual);
        let map = OutputMap::new(&weight, &scale, &shift, Some(&residual), true);
        let output = forward(&x, &weight, stride, padding, Some(&map), None);
        assert_eq!(
            output.shape(),
            residual_shape,
            "conv2d_affine_add_relu_fused: the residual is not the output's shape"
        );
        output
    }
}

/// What [`ConvAffineOps`] applies to each output value as the kernel writes it:
/// `y * scale[o] + shift[o]`, plus the residual at the same place, then ReLU; written as
/// BatchNorm's inference kernel and the residual kernel write it, so that the fused and the
/// separate layers give the same bits.
pub(super) struct OutputMap<'a> {
    scale: &'a [f32],
    shift: &'a [f32],
    /// The whole `[B, Co, Ho, Wo]` residual, indexed as the output.
    residual: Option<&'a [f32]>,
    relu: bool,
}

impl<'a> OutputMap<'a> {
    fn new(
        weight: &FlexTensor,
        scale: &'a [f32],
        shift: &'a [f32],
        residual: Option<&'a [f32]>,
        relu: bool,
    ) -> Self {
        let out_channels = weight.shape()[0];
        assert!(
            scale.len() == out_channels && shift.len() == out_channels,
            "conv2d_affine_fused: scale and shift must be [Co]"
        );
        OutputMap {
            scale,
            shift,
            residual,
            relu,
        }
    }

    /// Write `computed`, values of output channel `channel` that land at `at..` of the whole
    /// output, mapped into `out`.
    #[inline]
    pub(super) fn write(
        &self,
        at: usize,
        channel: usize,
        computed: &[f32],
        out: &mut [MaybeUninit<f32>],
    ) {
        let (scale, shift) = (self.scale[channel], self.shift[channel]);
        match (self.residual, self.relu) {
            (Some(residual), _) => {
                let residual = &residual[at..at + out.len()];
                for ((value, &y), &r) in out.iter_mut().zip(computed).zip(residual) {
                    value.write(relu(y * scale + shift + r));
                }
            }
            (None, true) => {
                for (value, &y) in out.iter_mut().zip(computed) {
                    value.write(relu(y * scale + shift));
                }
            }
            (None, false) => {
                for (value, &y) in out.iter_mut().zip(computed) {
                    value.write(y * scale + shift);
                }
            }
        }
    }

    /// Map consecutive `[Co, N]` samples that start at `at` of the whole output, in place.
    fn apply_in_place(&self, at: usize, samples: &mut [MaybeUninit<f32>], pixels: usize) {
        let channels = self.scale.len();
        let mut computed = Vec::with_capacity(pixels);
        for (index, plane) in samples.chunks_exact_mut(pixels).enumerate() {
            computed.clear();
            // SAFETY: the caller wrote every value of `samples`.
            computed.extend(plane.iter().map(|value| unsafe { value.assume_init() }));
            self.write(at + index * pixels, index % channels, &computed, plane);
        }
    }
}

impl ConvOps for Flex {
    fn conv2d_gemm(
        x: FlexTensor,
        weight: FlexTensor,
        stride: [usize; 2],
        padding: [usize; 2],
    ) -> FlexTensor {
        forward(&x, &weight, stride, padding, None, None)
    }
}

/// Work on each output sample right after the kernel has computed all of it, while it is still
/// in cache: what a following layer would otherwise do in a pass of its own over the whole
/// batch (the PPCR unit and the residual end of a block, `conv_ppcr`).
pub(super) trait SampleEpilogue: Sync {
    /// Write output sample `sample` (`[Co, Ho, Wo]`) into `out` from `computed`, the
    /// kernel's values for it (after the [`OutputMap`]).
    fn finish(&self, sample: usize, computed: &[f32], out: &mut [MaybeUninit<f32>]);
}

/// `[relu](conv2d(X, W) * scale + shift)` as [`ConvAffineOps::conv2d_affine_fused`] computes
/// it, then `epilogue` on each output sample.
#[allow(clippy::too_many_arguments)]
pub(super) fn conv2d_affine_then(
    x: &FlexTensor,
    weight: &FlexTensor,
    scale: &FlexTensor,
    shift: &FlexTensor,
    stride: [usize; 2],
    padding: [usize; 2],
    relu: bool,
    epilogue: &dyn SampleEpilogue,
) -> FlexTensor {
    let (scale, shift) = (contiguous_values(scale), contiguous_values(shift));
    let map = OutputMap::new(weight, &scale, &shift, None, relu);
    forward(x, weight, stride, padding, Some(&map), Some(epilogue))
}

/// `values`, every one written, as initialised values.
fn written(values: &mut [MaybeUninit<f32>]) -> &mut [f32] {
    // SAFETY: the callers pass only values they wrote; `MaybeUninit<f32>` has `f32`'s layout.
    unsafe { &mut *(values as *mut [MaybeUninit<f32>] as *mut [f32]) }
}

impl<C: CheckpointStrategy> ConvOps for Autodiff<Flex, C> {
    fn conv2d_gemm(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        stride: [usize; 2],
        padding: [usize; 2],
    ) -> FloatTensor<Self> {
        let guards = [x.node(), weight.node()];
        let x = x.into_primitive();
        let weight = weight.into_primitive();
        let output = forward(&x, &weight, stride, padding, None, None);
        match ConvBackward.prepare::<C>(guards).compute_bound().stateful() {
            // The backward step rebuilds each sample's im2col matrix from `x` instead of keeping
            // it: `kh * kw` times the input's memory would sit in every layer until the backward.
            OpsKind::Tracked(prep) => prep.finish(
                SavedInputs {
                    x,
                    weight,
                    stride,
                    padding,
                    direct_allowed: direct_path_enabled(),
                },
                output,
            ),
            OpsKind::UnTracked(prep) => prep.finish(output),
        }
    }
}

/// The autodiff node of [`ConvOps::conv2d_gemm`].
#[derive(Debug)]
struct ConvBackward;

/// The forward inputs (shared, not copied) and the settings.
#[derive(Debug, Clone)]
struct SavedInputs {
    x: FlexTensor,
    weight: FlexTensor,
    stride: [usize; 2],
    padding: [usize; 2],
    /// The forward's [`Geometry::direct_allowed`], so both passes take the same paths.
    direct_allowed: bool,
}

impl Backward<Flex, 2> for ConvBackward {
    type State = SavedInputs;

    fn backward(
        self,
        ops: Ops<Self::State, 2>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        let [x_node, weight_node] = ops.parents;
        let grad_output = grads.consume::<Flex>(&ops.node);
        let state = ops.state;
        let geometry = Geometry {
            direct_allowed: state.direct_allowed,
            ..Geometry::of(
                &state.x.shape(),
                &state.weight.shape(),
                state.stride,
                state.padding,
            )
        };
        let x = contiguous_values(&state.x);
        let weight = contiguous_values(&state.weight);
        let grad_output = contiguous_values(&grad_output);
        let mut grad_x = x_node
            .is_some()
            .then(|| unwritten(geometry.batch * geometry.in_sample_len()));
        // The direct path's input gradient is a convolution of its own; the tiles then only
        // sum the weight gradient.
        let direct = geometry
            .direct_shape()
            .and_then(|shape| shape.input_gradient());
        if let (Some(shape), Some(grad_x)) = (direct, grad_x.as_deref_mut()) {
            let blocked = conv_direct::input_gradient_weights(&shape, &weight);
            convolve_samples(&shape, &blocked, &grad_output, grad_x, None, None);
        }
        let tiled_grad_x = match direct {
            Some(_) => None,
            None => grad_x.as_deref_mut(),
        };
        let grad_weight = backward(
            &geometry,
            &x,
            &weight,
            &grad_output,
            tiled_grad_x,
            weight_node.is_some(),
        );
        if let (Some(node), Some(grad_x)) = (x_node, grad_x) {
            // SAFETY: `backward` writes every sample's block of `dX`.
            let grad_x = unsafe { assume_written(grad_x) };
            grads.register::<Flex>(node.id, flex_tensor(grad_x, state.x.shape()));
        }
        if let (Some(node), Some(grad_weight)) = (weight_node, grad_weight) {
            grads.register::<Flex>(node.id, flex_tensor(grad_weight, state.weight.shape()));
        }
    }
}

#[cfg(not(test))]
fn direct_path_enabled() -> bool {
    true
}

// Tests run every case through both paths (see `tests::with_each_path`).
#[cfg(test)]
thread_local! {
    static DIRECT_PATH: std::cell::Cell<bool> = const { std::cell::Cell::new(true) };
}

#[cfg(test)]
fn direct_path_enabled() -> bool {
    DIRECT_PATH.with(|enabled| enabled.get())
}

/// The most input or output channels the direct path takes. Above it the direct loop (8 output
/// channels per pass over the input) streams its input from L2 once per 8 outputs, and im2col
/// with `gemm` was faster: `ppcr bench --suite conv`, ResNet-18@112's 256-channel 7x7 and
/// 512-channel 4x4 layers, forward 6.0 and 6.8 ms through im2col, 6.1 and 18.5 ms direct; its
/// 128-channel 14x14 layer 6.1 ms through im2col, 4.8-5.0 ms direct. ResNet-18@112 training
/// steps (`--suite step`, with the shifted weight gradient, three alternating turns): up to 64
/// channels 417-424 ms, up to 128 channels 404-414 ms.
const DIRECT_MAX_CHANNELS: usize = 128;

/// Output pixels a product should cover at least (see [`Geometry::samples_per_tile`]).
const MIN_TILE_COLUMNS: usize = 256;

/// The sizes of one convolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Geometry {
    batch: usize,
    in_channels: usize,
    height: usize,
    width: usize,
    out_channels: usize,
    kernel: [usize; 2],
    stride: [usize; 2],
    padding: [usize; 2],
    out_height: usize,
    out_width: usize,
    /// Whether the direct path may be taken (tests turn it off to run the im2col path).
    direct_allowed: bool,
}

impl Geometry {
    fn of(x: &Shape, weight: &Shape, stride: [usize; 2], padding: [usize; 2]) -> Self {
        let [batch, in_channels, height, width] = [x[0], x[1], x[2], x[3]];
        let [out_channels, weight_in, kh, kw] = [weight[0], weight[1], weight[2], weight[3]];
        assert_eq!(
            in_channels, weight_in,
            "conv2d_gemm: input has {in_channels} channels, the weight expects {weight_in}"
        );
        assert!(
            stride[0] > 0 && stride[1] > 0,
            "conv2d_gemm: stride must be positive"
        );
        assert!(
            height + 2 * padding[0] >= kh && width + 2 * padding[1] >= kw,
            "conv2d_gemm: a {kh}x{kw} kernel does not fit a padded {height}x{width} input"
        );
        Geometry {
            batch,
            in_channels,
            height,
            width,
            out_channels,
            kernel: [kh, kw],
            stride,
            padding,
            out_height: (height + 2 * padding[0] - kh) / stride[0] + 1,
            out_width: (width + 2 * padding[1] - kw) / stride[1] + 1,
            direct_allowed: direct_path_enabled(),
        }
    }

    /// Rows of the im2col matrix: `Ci * kh * kw`.
    fn patch_len(&self) -> usize {
        self.in_channels * self.kernel[0] * self.kernel[1]
    }

    /// Output pixels per channel: `Ho * Wo`.
    fn out_pixels(&self) -> usize {
        self.out_height * self.out_width
    }

    fn in_sample_len(&self) -> usize {
        self.in_channels * self.height * self.width
    }

    fn out_sample_len(&self) -> usize {
        self.out_channels * self.out_pixels()
    }

    /// Stride 1 and as many output columns as input columns: output place `q = oy * W + ox`
    /// reads input place `q + d` for one offset `d` per kernel position, so an im2col row is the
    /// plane shifted by `d` (with zeros where the padding is), copied in one piece instead of
    /// one piece per output row.
    fn rows_are_shifted_planes(&self) -> bool {
        self.stride[1] == 1 && self.stride[0] == 1 && self.out_width == self.width
    }

    /// The direct path's shape (see `conv_direct`): stride 1, a kernel larger than 1x1, a batch
    /// that gives every thread a sample, and a processor with AVX-512F.
    fn direct_shape(&self) -> Option<DirectShape> {
        let applies = self.stride == [1, 1]
            && self.kernel != [1, 1]
            && self.batch >= rayon::current_num_threads()
            && self.in_channels.max(self.out_channels) <= DIRECT_MAX_CHANNELS
            && self.direct_allowed
            && conv_direct::available();
        applies.then_some(DirectShape {
            in_channels: self.in_channels,
            size: [self.height, self.width],
            out_channels: self.out_channels,
            kernel: self.kernel,
            padding: self.padding,
        })
    }

    /// 1x1, stride 1, no padding: the input is its own im2col matrix.
    fn is_pointwise(&self) -> bool {
        self.kernel == [1, 1] && self.stride == [1, 1] && self.padding == [0, 0]
    }

    /// Output columns `lo..hi` whose input column `ox * sw + kx - pw` lies inside the input.
    fn valid_columns(&self, kx: usize) -> (usize, usize) {
        let [_, sw] = self.stride;
        let [_, pw] = self.padding;
        let lo = if pw > kx { (pw - kx).div_ceil(sw) } else { 0 }.min(self.out_width);
        let hi = (self.width + pw)
            .saturating_sub(kx)
            .div_ceil(sw)
            .clamp(lo, self.out_width);
        (lo, hi)
    }

    /// The input row that output row `oy` reads at kernel row `ky`, if inside the input.
    fn input_row(&self, oy: usize, ky: usize) -> Option<usize> {
        let row = (oy * self.stride[0] + ky).checked_sub(self.padding[0])?;
        (row < self.height).then_some(row)
    }

    /// Whether the weight gradient takes [`shifted_weight_gradient`]: stride 1, a kernel larger
    /// than 1x1, and a padded grid at most 1.3 times the output map (its extra places are
    /// multiplied too: on ResNet-18's 7x7 and 4x4 maps it was slower than im2row). Tests take
    /// it on every such shape where the direct path is allowed, and im2row where it is not.
    fn shifted_weight_gradient(&self) -> bool {
        let padded = (self.height + 2 * self.padding[0]) * (self.width + 2 * self.padding[1]);
        let worth_it = cfg!(test) || padded * 10 <= self.out_pixels() * 13;
        self.stride == [1, 1] && self.kernel != [1, 1] && self.direct_allowed && worth_it
    }

    /// Samples whose products are taken together, side by side in one matrix: enough that a
    /// product has at least [`MIN_TILE_COLUMNS`] output pixels (a late stage's 8x8 or 4x4 maps
    /// alone would make thin products that the matrix kernels run far below their speed).
    ///
    /// Whole tiles are shared out among the threads, so the count is lowered (to half at most)
    /// where that evens the threads' loads: a batch of 32 in tiles of 6 gives one thread 18
    /// samples and the other 14, in tiles of 4 both 16.
    fn samples_per_tile(&self) -> usize {
        let batch = self.batch.max(1);
        let wanted = MIN_TILE_COLUMNS.div_ceil(self.out_pixels()).clamp(1, batch);
        let threads = rayon::current_num_threads().max(1);
        let busiest_thread = |samples: usize| batch.div_ceil(samples).div_ceil(threads) * samples;
        (wanted.div_ceil(2)..=wanted)
            .min_by_key(|&samples| (busiest_thread(samples), std::cmp::Reverse(samples)))
            .unwrap_or(wanted)
    }

    /// Whether tiles go to threads (each product on one thread) or the product gets the
    /// threads (too few tiles to share out).
    fn tiles_in_parallel(&self) -> bool {
        self.batch.div_ceil(self.samples_per_tile()) >= rayon::current_num_threads()
    }

    fn product_parallelism(&self) -> gemm::Parallelism {
        if self.tiles_in_parallel() {
            gemm::Parallelism::None
        } else {
            gemm::Parallelism::Rayon(0)
        }
    }
}

/// Where one sample's block of an im2col matrix lies: the matrix's row length (all the tile's
/// samples side by side) and the sample's first column.
#[derive(Debug, Clone, Copy)]
struct ColumnBlock {
    row_len: usize,
    offset: usize,
}

/// Fill one sample's block of `col` (`[Ci * kh * kw, row_len]`, row `(ci * kh + ky) * kw + kx`).
fn im2col(geometry: &Geometry, sample: &[f32], col: &mut [f32], block: ColumnBlock) {
    let [kh, kw] = geometry.kernel;
    let (plane_len, pixels) = (geometry.height * geometry.width, geometry.out_pixels());
    let (sw, pw, width) = (geometry.stride[1], geometry.padding[1], geometry.width);
    let mut rows = col.chunks_exact_mut(block.row_len);
    for plane in sample.chunks_exact(plane_len) {
        for ky in 0..kh {
            for kx in 0..kw {
                let row = rows.next().expect("col has Ci * kh * kw rows");
                let row = &mut row[block.offset..block.offset + pixels];
                if geometry.rows_are_shifted_planes() {
                    shifted_plane(geometry, plane, [ky, kx], row);
                    continue;
                }
                let (lo, hi) = geometry.valid_columns(kx);
                for (oy, out) in row.chunks_exact_mut(geometry.out_width).enumerate() {
                    let Some(iy) = geometry.input_row(oy, ky) else {
                        out.fill(0.0);
                        continue;
                    };
                    let source = &plane[iy * width..(iy + 1) * width];
                    out[..lo].fill(0.0);
                    out[hi..].fill(0.0);
                    if sw == 1 {
                        let start = lo + kx - pw;
                        out[lo..hi].copy_from_slice(&source[start..start + hi - lo]);
                    } else {
                        for (ox, value) in out[lo..hi].iter_mut().enumerate() {
                            *value = source[(lo + ox) * sw + kx - pw];
                        }
                    }
                }
            }
        }
    }
}

/// Add one sample's block of `col` (laid out as [`im2col`] writes it) into the sample's input
/// gradient `grad`, which this sets to zero first.
/// Where the rows are shifted planes (see [`Geometry::rows_are_shifted_planes`]), `col`'s values
/// at padding places are set to zero on the way.
fn col2im(geometry: &Geometry, col: &mut [f32], block: ColumnBlock, grad: &mut [MaybeUninit<f32>]) {
    let [kh, kw] = geometry.kernel;
    let (plane_len, pixels) = (geometry.height * geometry.width, geometry.out_pixels());
    let (sw, pw, width) = (geometry.stride[1], geometry.padding[1], geometry.width);
    let grad = zeroed(grad);
    let mut rows = col.chunks_exact_mut(block.row_len);
    for plane in grad.chunks_exact_mut(plane_len) {
        for ky in 0..kh {
            for kx in 0..kw {
                let row = rows.next().expect("col has Ci * kh * kw rows");
                let row = &mut row[block.offset..block.offset + pixels];
                if geometry.rows_are_shifted_planes() {
                    add_shifted_plane(geometry, row, [ky, kx], plane);
                    continue;
                }
                let (lo, hi) = geometry.valid_columns(kx);
                for (oy, values) in row.chunks_exact(geometry.out_width).enumerate() {
                    let Some(iy) = geometry.input_row(oy, ky) else {
                        continue;
                    };
                    let target = &mut plane[iy * width..(iy + 1) * width];
                    if sw == 1 {
                        let start = lo + kx - pw;
                        let target = &mut target[start..start + hi - lo];
                        for (t, &v) in target.iter_mut().zip(&values[lo..hi]) {
                            *t += v;
                        }
                    } else {
                        for (ox, &value) in values[lo..hi].iter().enumerate() {
                            target[(lo + ox) * sw + kx - pw] += value;
                        }
                    }
                }
            }
        }
    }
}

/// For kernel position `(ky, kx)`, the offset `d` such that output place `q` reads input place
/// `q + d`, and the output places `q0..q1` whose rows lie inside the input, clipped to the
/// places whose `q + d` lies in the plane (the clipped ones sit in padding columns).
fn plane_shift(geometry: &Geometry, [ky, kx]: [usize; 2]) -> (isize, usize, usize) {
    let (width, height) = (geometry.width, geometry.height);
    let [ph, pw] = geometry.padding;
    let shift = (ky as isize - ph as isize) * width as isize + kx as isize - pw as isize;
    let first_row = ph.saturating_sub(ky).min(geometry.out_height);
    let end_row = (height + ph)
        .saturating_sub(ky)
        .clamp(first_row, geometry.out_height);
    let plane = (height * width) as isize;
    let q0 = ((first_row * width) as isize).max(-shift) as usize;
    let q1 = ((end_row * width) as isize)
        .min(plane - shift)
        .max(q0 as isize) as usize;
    (shift, q0, q1)
}

/// One im2col row where the rows are shifted planes: the plane copied at offset `d` in one
/// piece, then zeros over the padding rows and columns.
fn shifted_plane(geometry: &Geometry, plane: &[f32], position: [usize; 2], out: &mut [f32]) {
    let (shift, q0, q1) = plane_shift(geometry, position);
    out[..q0].fill(0.0);
    out[q1..].fill(0.0);
    let start = (q0 as isize + shift) as usize;
    out[q0..q1].copy_from_slice(&plane[start..start + (q1 - q0)]);
    zero_padding_columns(geometry, position[1], out);
}

/// Zero the places of `row` (one im2col row, `Ho x Wo`) that kernel column `kx` puts over the
/// left or right padding.
fn zero_padding_columns(geometry: &Geometry, kx: usize, row: &mut [f32]) {
    let (lo, hi) = geometry.valid_columns(kx);
    if lo == 0 && hi == geometry.out_width {
        return;
    }
    for out_row in row.chunks_exact_mut(geometry.out_width) {
        out_row[..lo].fill(0.0);
        out_row[hi..].fill(0.0);
    }
}

/// The adjoint of [`shifted_plane`]: `row`'s padding places set to zero, then `row` added to
/// `plane` at offset `d` in one piece.
fn add_shifted_plane(
    geometry: &Geometry,
    row: &mut [f32],
    position: [usize; 2],
    plane: &mut [f32],
) {
    zero_padding_columns(geometry, position[1], row);
    let (shift, q0, q1) = plane_shift(geometry, position);
    let start = (q0 as isize + shift) as usize;
    for (target, &value) in plane[start..start + (q1 - q0)].iter_mut().zip(&row[q0..q1]) {
        *target += value;
    }
}

/// Copy the tile's per-sample `[C, N]` blocks (`samples`, consecutive in NCHW order) side by
/// side into `matrix` (`[C, S * N]`).
fn gather_tile(samples: &[f32], channels: usize, pixels: usize, matrix: &mut Vec<f32>) {
    let count = samples.len() / (channels * pixels);
    matrix.resize(channels * count * pixels, 0.0);
    for (j, sample) in samples.chunks_exact(channels * pixels).enumerate() {
        for (c, plane) in sample.chunks_exact(pixels).enumerate() {
            let at = (c * count + j) * pixels;
            matrix[at..at + pixels].copy_from_slice(plane);
        }
    }
}

/// The inverse of [`gather_tile`]: write `matrix`'s blocks to consecutive NCHW samples.
fn scatter_tile(matrix: &[f32], channels: usize, pixels: usize, samples: &mut [MaybeUninit<f32>]) {
    let count = samples.len() / (channels * pixels);
    for (j, sample) in samples.chunks_exact_mut(channels * pixels).enumerate() {
        for (c, plane) in sample.chunks_exact_mut(pixels).enumerate() {
            let at = (c * count + j) * pixels;
            copy_into(&matrix[at..at + pixels], plane);
        }
    }
}

/// Write `source` into `target`, value by value.
fn copy_into(source: &[f32], target: &mut [MaybeUninit<f32>]) {
    for (value, &source) in target.iter_mut().zip(source) {
        value.write(source);
    }
}

/// The first `len` values of `buffer` (grown where it is shorter), to be written in full.
fn uninit(buffer: &mut Vec<f32>, len: usize) -> &mut [MaybeUninit<f32>] {
    if buffer.len() < len {
        buffer.resize(len, 0.0);
    }
    // SAFETY: `MaybeUninit<f32>` has `f32`'s layout, and every caller writes only initialised
    // values.
    unsafe { &mut *(&mut buffer[..len] as *mut [f32] as *mut [MaybeUninit<f32>]) }
}

/// `values` set to zero and handed back as initialised.
fn zeroed(values: &mut [MaybeUninit<f32>]) -> &mut [f32] {
    for value in values.iter_mut() {
        value.write(0.0);
    }
    // SAFETY: every value was just written; `MaybeUninit<f32>` has `f32`'s layout.
    unsafe { &mut *(values as *mut [MaybeUninit<f32>] as *mut [f32]) }
}

/// A row-major matrix operand for [`matmul`]: its first value and its row and column strides.
#[derive(Clone, Copy)]
struct Operand {
    values: *const f32,
    row_stride: usize,
    column_stride: usize,
}

impl Operand {
    /// A row-major `[rows, columns]` matrix.
    fn rows(values: &[f32], columns: usize) -> Self {
        Operand {
            values: values.as_ptr(),
            row_stride: columns,
            column_stride: 1,
        }
    }

    /// The transpose of a row-major `[rows, columns]` matrix.
    fn transposed(values: &[f32], columns: usize) -> Self {
        Operand {
            values: values.as_ptr(),
            row_stride: 1,
            column_stride: columns,
        }
    }
}

/// `dst [m, n] (+)= lhs [m, k] x rhs [k, n]` with `dst` row-major; adds to `dst` when
/// `accumulate`, else overwrites it.
///
/// # Safety
/// `dst` must hold `m * n` values, and `lhs` and `rhs` must address `m x k` and `k x n`
/// values through their strides.
#[allow(clippy::too_many_arguments)]
unsafe fn matmul(
    dst: *mut f32,
    [m, n, k]: [usize; 3],
    lhs: Operand,
    rhs: Operand,
    accumulate: bool,
    parallelism: gemm::Parallelism,
) {
    // SAFETY: as the caller guarantees; gemm reads `dst` only when `accumulate`.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            1,
            n as isize,
            accumulate,
            lhs.values,
            lhs.column_stride as isize,
            lhs.row_stride as isize,
            rhs.values,
            rhs.column_stride as isize,
            rhs.row_stride as isize,
            if accumulate { 1.0 } else { 0.0 },
            1.0,
            false,
            false,
            false,
            parallelism,
        )
    }
}

/// `Y = conv2d(X, W)`, each output value passed through `map` where given, then each output
/// sample through `epilogue` where given.
fn forward(
    x: &FlexTensor,
    weight: &FlexTensor,
    stride: [usize; 2],
    padding: [usize; 2],
    map: Option<&OutputMap>,
    epilogue: Option<&dyn SampleEpilogue>,
) -> FlexTensor {
    let geometry = Geometry::of(&x.shape(), &weight.shape(), stride, padding);
    let x = contiguous_values(x);
    let weight = contiguous_values(weight);
    let mut output = unwritten(geometry.batch * geometry.out_sample_len());
    let out_shape = Shape::new([
        geometry.batch,
        geometry.out_channels,
        geometry.out_height,
        geometry.out_width,
    ]);
    if let Some(shape) = geometry.direct_shape() {
        let blocked = conv_direct::forward_weights(&shape, &weight);
        convolve_samples(&shape, &blocked, &x, &mut output, map, epilogue);
        // SAFETY: `convolve_samples` wrote every sample's output.
        return flex_tensor(unsafe { assume_written(output) }, out_shape);
    }
    let (k, pixels) = (geometry.patch_len(), geometry.out_pixels());
    let parallelism = geometry.product_parallelism();
    let tile = |scratch: &mut Scratch,
                (index, (input, out)): (usize, (&[f32], &mut [MaybeUninit<f32>]))| {
        let count = input.len() / geometry.in_sample_len();
        let columns = count * pixels;
        let rhs = if geometry.is_pointwise() && count == 1 {
            input
        } else {
            scratch.col.resize(k * columns, 0.0);
            for (j, sample) in input.chunks_exact(geometry.in_sample_len()).enumerate() {
                let block = ColumnBlock {
                    row_len: columns,
                    offset: j * pixels,
                };
                im2col(&geometry, sample, &mut scratch.col, block);
            }
            scratch.col.as_slice()
        };
        let dst = if count == 1 && epilogue.is_none() {
            out.as_mut_ptr().cast::<f32>()
        } else {
            scratch.matrix.resize(geometry.out_channels * columns, 0.0);
            scratch.matrix.as_mut_ptr()
        };
        // SAFETY: `dst` holds `Co * S N` values, `weight` is `[Co, K]` and `rhs` `[K, S N]`; the
        // product writes every value of `dst` without reading it.
        unsafe {
            matmul(
                dst,
                [geometry.out_channels, columns, k],
                Operand::rows(&weight, k),
                Operand::rows(rhs, columns),
                false,
                parallelism,
            )
        }
        let first = index * geometry.samples_per_tile();
        let Some(epilogue) = epilogue else {
            if count > 1 {
                scatter_tile(&scratch.matrix, geometry.out_channels, pixels, out);
            }
            if let Some(map) = map {
                // The product or `scatter_tile` wrote every value of `out`.
                map.apply_in_place(first * geometry.out_sample_len(), out, pixels);
            }
            return;
        };
        let sample_len = geometry.out_sample_len();
        for (j, out) in out.chunks_exact_mut(sample_len).enumerate() {
            // Sample `j`'s planes, mapped on their way out of the tile's matrix.
            let computed = uninit(&mut scratch.computed, sample_len);
            for (c, plane) in computed.chunks_exact_mut(pixels).enumerate() {
                let from = &scratch.matrix[(c * count + j) * pixels..][..pixels];
                match map {
                    Some(map) => map.write((first + j) * sample_len + c * pixels, c, from, plane),
                    None => copy_into(from, plane),
                }
            }
            epilogue.finish(first + j, written(computed), out);
        }
    };
    let samples = geometry.samples_per_tile();
    let (in_len, out_len) = (
        samples * geometry.in_sample_len(),
        samples * geometry.out_sample_len(),
    );
    if geometry.tiles_in_parallel() {
        x.par_chunks(in_len)
            .zip(output.par_chunks_mut(out_len))
            .enumerate()
            .for_each_init(Scratch::default, tile);
    } else {
        let mut scratch = Scratch::default();
        x.chunks(in_len)
            .zip(output.chunks_mut(out_len))
            .enumerate()
            .for_each(|pair| tile(&mut scratch, pair));
    }
    // SAFETY: every tile's output block was written by its product or by `scatter_tile`.
    let output = unsafe { assume_written(output) };
    flex_tensor(output, out_shape)
}

/// The direct path over a batch: each sample's input convolved into its output (each value
/// passed through `map`, then the sample through `epilogue`, where given), samples spread over
/// the threads.
fn convolve_samples(
    shape: &DirectShape,
    blocked: &[f32],
    inputs: &[f32],
    outputs: &mut [MaybeUninit<f32>],
    map: Option<&OutputMap>,
    epilogue: Option<&dyn SampleEpilogue>,
) {
    let [ho, wo] = shape.out_size();
    let in_len = shape.in_channels * shape.size[0] * shape.size[1];
    let out_len = shape.out_channels * ho * wo;
    inputs
        .par_chunks_exact(in_len)
        .zip(outputs.par_chunks_exact_mut(out_len))
        .enumerate()
        .for_each_init(
            || (DirectScratch::default(), Vec::new()),
            |(scratch, computed), (b, (input, out))| {
                let map = map.map(|map| (map, b * out_len));
                let Some(epilogue) = epilogue else {
                    conv_direct::convolve_sample(shape, blocked, input, out, scratch, map);
                    return;
                };
                let computed = uninit(computed, out_len);
                conv_direct::convolve_sample(shape, blocked, input, computed, scratch, map);
                // `convolve_sample` wrote every value of `computed`.
                epilogue.finish(b, written(computed), out);
            },
        );
}

/// Buffers a thread reuses from tile to tile: the im2col matrix (or its gradient) and a
/// `[C, S * N]` matrix of the tile's outputs (or output gradients) side by side.
#[derive(Default)]
struct Scratch {
    col: Vec<f32>,
    matrix: Vec<f32>,
    /// `dY^T` of a tile, `[S N, Co]` (weight gradient only).
    dy_rows: Vec<f32>,
    /// One sample's input in NHWC order (weight gradient only).
    nhwc: Vec<f32>,
    /// One output sample for the [`SampleEpilogue`] (forward only).
    computed: Vec<f32>,
}

/// `dX` (when `grad_x` is given) and `dW` (when `want_weight`): per tile of samples,
/// `dcol = W^T x dY_tile` folded back onto the input by col2im, and
/// `dW += dY_tile x col(X_tile)^T`. The weight gradient is summed per thread over a fixed split
/// of the tiles, the partial sums added in order.
fn backward(
    geometry: &Geometry,
    x: &[f32],
    weight: &[f32],
    grad_output: &[f32],
    mut grad_x: Option<&mut [MaybeUninit<f32>]>,
    want_weight: bool,
) -> Option<Vec<f32>> {
    let (k, pixels) = (geometry.patch_len(), geometry.out_pixels());
    let parallelism = geometry.product_parallelism();
    let samples = geometry.samples_per_tile();
    let tiles = geometry.batch.div_ceil(samples);
    let parts = if geometry.tiles_in_parallel() {
        rayon::current_num_threads().min(tiles)
    } else {
        1
    };
    let tiles_per_part = tiles.div_ceil(parts);
    let (in_len, out_len) = (geometry.in_sample_len(), geometry.out_sample_len());
    // Each part owns its tiles' slice of `dX`, handed out before the threads start.
    let mut grad_x_parts: Vec<Option<&mut [MaybeUninit<f32>]>> = (0..parts)
        .map(|part| {
            let first = (part * tiles_per_part * samples).min(geometry.batch);
            let last = ((part + 1) * tiles_per_part * samples).min(geometry.batch);
            grad_x.as_mut().map(|grad| {
                let rest = std::mem::take(grad);
                let (mine, rest) = rest.split_at_mut((last - first) * in_len);
                *grad = rest;
                mine
            })
        })
        .collect();
    let part_work =
        |(part, mut grad_x): (usize, Option<&mut [MaybeUninit<f32>]>)| -> Option<Vec<f32>> {
            let mut sum = want_weight.then(|| vec![0.0f32; geometry.out_channels * k]);
            let mut scratch = Scratch::default();
            let mut gathered = Vec::new();
            let first = (part * tiles_per_part * samples).min(geometry.batch);
            let last = ((part + 1) * tiles_per_part * samples).min(geometry.batch);
            let mut started = false;
            for tile_first in (first..last).step_by(samples) {
                let count = samples.min(last - tile_first);
                let dy_tile = &grad_output[tile_first * out_len..(tile_first + count) * out_len];
                if let Some(grad_x) = grad_x.as_deref_mut() {
                    let dx_tile = &mut grad_x
                        [(tile_first - first) * in_len..(tile_first - first + count) * in_len];
                    let dy = if count == 1 {
                        dy_tile
                    } else {
                        gather_tile(dy_tile, geometry.out_channels, pixels, &mut gathered);
                        gathered.as_slice()
                    };
                    input_gradient_tile(
                        geometry,
                        weight,
                        dy,
                        dx_tile,
                        &mut scratch.col,
                        parallelism,
                    );
                }
                if let Some(sum) = sum.as_mut() {
                    let x_tile = &x[tile_first * in_len..(tile_first + count) * in_len];
                    let tile = WeightGradientTile {
                        x_tile,
                        dy_tile,
                        accumulate: started,
                    };
                    weight_gradient_tile(geometry, tile, sum, &mut scratch, parallelism);
                    started = true;
                }
            }
            sum
        };
    let partials: Vec<Option<Vec<f32>>> = if parts > 1 {
        grad_x_parts
            .drain(..)
            .enumerate()
            .collect::<Vec<_>>()
            .into_par_iter()
            .map(part_work)
            .collect()
    } else {
        grad_x_parts.drain(..).enumerate().map(part_work).collect()
    };
    let mut partials = partials.into_iter().flatten();
    let mut total = partials.next()?;
    for part in partials {
        for (t, p) in total.iter_mut().zip(&part) {
            *t += p;
        }
    }
    Some(patch_major_to_channel_major(geometry, &total))
}

/// `dX` of one tile: `dcol = W^T x dY_tile` (`dy` is `[Co, S N]`), folded
/// onto each sample's block of `dx_tile` by col2im. A function of its own so profiles tell the two backward
/// products apart.
#[inline(never)]
fn input_gradient_tile(
    geometry: &Geometry,
    weight: &[f32],
    dy: &[f32],
    dx_tile: &mut [MaybeUninit<f32>],
    col: &mut Vec<f32>,
    parallelism: gemm::Parallelism,
) {
    let (k, pixels, in_len) = (
        geometry.patch_len(),
        geometry.out_pixels(),
        geometry.in_sample_len(),
    );
    let count = dx_tile.len() / in_len;
    let columns = count * pixels;
    let lhs = Operand::transposed(weight, k);
    if geometry.is_pointwise() && count == 1 {
        // SAFETY: `dx_tile` holds `Ci * N` values (`K = Ci`); `W^T` is `[K, Co]`; the product
        // writes every value without reading it.
        unsafe {
            matmul(
                dx_tile.as_mut_ptr().cast::<f32>(),
                [k, columns, geometry.out_channels],
                lhs,
                Operand::rows(dy, columns),
                false,
                parallelism,
            )
        }
        return;
    }
    col.resize(k * columns, 0.0);
    // SAFETY: `col` holds `K * S N` values; `dy` is `[Co, S N]`.
    unsafe {
        matmul(
            col.as_mut_ptr(),
            [k, columns, geometry.out_channels],
            lhs,
            Operand::rows(dy, columns),
            false,
            parallelism,
        )
    }
    for (j, dx) in dx_tile.chunks_exact_mut(in_len).enumerate() {
        let block = ColumnBlock {
            row_len: columns,
            offset: j * pixels,
        };
        col2im(geometry, col, block, dx);
    }
}

/// One tile's share of the weight gradient: its samples' inputs and output gradients (NCHW),
/// and whether to add to the sum (else overwrite it).
struct WeightGradientTile<'a> {
    x_tile: &'a [f32],
    dy_tile: &'a [f32],
    accumulate: bool,
}

/// `sum (+)= dY_tile x rows(X_tile)`, with `sum` in the kernel-position-major order
/// `[Co, kh, kw, Ci]` (see [`patch_major_to_channel_major`]).
///
/// Both factors are transposed first, into pixel-major matrices (`dY^T` is `[S N, Co]`, the
/// im2row matrix `[S N, kh kw Ci]` built from the tile's NHWC copy), so the product reads each
/// factor along its rows. Taken as they come (`[Co, S N]` and the im2col matrix `[K, S N]`),
/// both would be read across their rows while the matrix kernel packs them, which took about
/// half of this product's time.
#[inline(never)]
fn weight_gradient_tile(
    geometry: &Geometry,
    tile: WeightGradientTile,
    sum: &mut [f32],
    scratch: &mut Scratch,
    parallelism: gemm::Parallelism,
) {
    let (k, pixels, in_len) = (
        geometry.patch_len(),
        geometry.out_pixels(),
        geometry.in_sample_len(),
    );
    if geometry.shifted_weight_gradient() {
        shifted_weight_gradient(geometry, tile, sum, scratch, parallelism);
        return;
    }
    let count = tile.x_tile.len() / in_len;
    let columns = count * pixels;
    let out_channels = geometry.out_channels;
    scratch.dy_rows.resize(columns * out_channels, 0.0);
    let out_len = geometry.out_sample_len();
    for (dy, rows) in tile
        .dy_tile
        .chunks_exact(out_len)
        .zip(scratch.dy_rows.chunks_exact_mut(out_len))
    {
        transpose(dy, out_channels, pixels, rows);
    }
    let plane_len = geometry.height * geometry.width;
    scratch.nhwc.resize(plane_len * geometry.in_channels, 0.0);
    scratch.col.resize(columns * k, 0.0);
    for (j, sample) in tile.x_tile.chunks_exact(in_len).enumerate() {
        transpose(sample, geometry.in_channels, plane_len, &mut scratch.nhwc);
        let rows = &mut scratch.col[j * pixels * k..(j + 1) * pixels * k];
        im2row(geometry, &scratch.nhwc, rows);
    }
    // SAFETY: `sum` holds `Co * K` values, `dy_rows^T` is `[Co, S N]`, `col` `[S N, K]`.
    unsafe {
        matmul(
            sum.as_mut_ptr(),
            [out_channels, k, columns],
            Operand::transposed(&scratch.dy_rows, out_channels),
            Operand::rows(&scratch.col, k),
            tile.accumulate,
            parallelism,
        )
    }
}

/// The weight gradient of a stride-1 convolution as `kh * kw` products over a zero-padded
/// pixel-major grid, without an im2row matrix.
///
/// With each sample's input zero-padded into a `[Hp Wp, Ci]` grid (samples one after the other)
/// and its output gradient laid on the same grid (`[Hp Wp, Co]`: output `(oy, ox)` at place
/// `oy * Wp + ox`, zeros elsewhere), kernel position `(ky, kx)` pairs every output place `q` with
/// input place `q + ky * Wp + kx`, so its slice of the gradient is one product,
/// `dW[:, ky, kx, :] = dY_grid^T x X_grid[shift..]`, whose second factor is the input grid read
/// from an offset. Both factors are pixel-major, so the matrix kernel packs them along their
/// rows. A place past an output row's end reads the next row's start (or, at a sample's end, the
/// next sample's or the margin's zeros) but multiplies a zero gradient.
fn shifted_weight_gradient(
    geometry: &Geometry,
    tile: WeightGradientTile,
    sum: &mut [f32],
    scratch: &mut Scratch,
    parallelism: gemm::Parallelism,
) {
    let [kh, kw] = geometry.kernel;
    let [ph, pw] = geometry.padding;
    let (h, w) = (geometry.height, geometry.width);
    let (hp, wp) = (h + 2 * ph, w + 2 * pw);
    let (ci, co) = (geometry.in_channels, geometry.out_channels);
    let (ho, wo) = (geometry.out_height, geometry.out_width);
    let grid = hp * wp;
    let in_len = geometry.in_sample_len();
    let count = tile.x_tile.len() / in_len;
    let places = count * grid;
    let margin = (kh - 1) * wp + kw;
    scratch.col.clear();
    scratch.col.resize((places + margin) * ci, 0.0);
    scratch.dy_rows.clear();
    scratch.dy_rows.resize(places * co, 0.0);
    scratch.nhwc.resize((h * w).max(ho * wo) * ci.max(co), 0.0);
    let inputs = tile.x_tile.chunks_exact(in_len);
    for (j, sample) in inputs.enumerate() {
        let at = j * grid + ph * wp + pw;
        onto_grid(
            sample,
            [ci, h, w],
            wp,
            &mut scratch.nhwc,
            &mut scratch.col[at * ci..],
        );
    }
    let gradients = tile.dy_tile.chunks_exact(geometry.out_sample_len());
    for (j, dy) in gradients.enumerate() {
        let at = j * grid;
        onto_grid(
            dy,
            [co, ho, wo],
            wp,
            &mut scratch.nhwc,
            &mut scratch.dy_rows[at * co..],
        );
    }
    let positions = kh * kw;
    for ky in 0..kh {
        for kx in 0..kw {
            let shift = ky * wp + kx;
            // SAFETY: `sum` holds `Co * kh kw * Ci` values and slice `(ky, kx)` starts at
            // `(ky kw + kx) Ci` with rows `kh kw Ci` apart; `dy_rows` holds `places * Co` values
            // and `col` `(places + margin) * Ci`, and `shift + places <= places + margin`.
            unsafe {
                gemm::gemm(
                    co,
                    ci,
                    places,
                    sum.as_mut_ptr().add((ky * kw + kx) * ci),
                    1,
                    (positions * ci) as isize,
                    tile.accumulate,
                    scratch.dy_rows.as_ptr(),
                    co as isize,
                    1,
                    scratch.col.as_ptr().add(shift * ci),
                    1,
                    ci as isize,
                    if tile.accumulate { 1.0 } else { 0.0 },
                    1.0,
                    false,
                    false,
                    false,
                    parallelism,
                )
            }
        }
    }
}

/// One `[C, H, W]` map written pixel-major onto a grid whose rows are `grid_width` places long:
/// pixel `(y, x)`'s `C` values at place `y * grid_width + x` of `grid` (the other places are left
/// as they are). `nhwc` is scratch for the transpose, at least `C H W` values.
fn onto_grid(
    map: &[f32],
    [channels, height, width]: [usize; 3],
    grid_width: usize,
    nhwc: &mut [f32],
    grid: &mut [f32],
) {
    transpose(map, channels, height * width, nhwc);
    let row_len = width * channels;
    for (y, row) in nhwc[..height * row_len].chunks_exact(row_len).enumerate() {
        let at = y * grid_width * channels;
        grid[at..at + row_len].copy_from_slice(row);
    }
}

/// `dst [cols, rows] = src [rows, cols]^T`, in square blocks so both sides stay in cache.
fn transpose(src: &[f32], rows: usize, cols: usize, dst: &mut [f32]) {
    const BLOCK: usize = 16;
    for row_block in (0..rows).step_by(BLOCK) {
        let row_end = (row_block + BLOCK).min(rows);
        for col_block in (0..cols).step_by(BLOCK) {
            let col_end = (col_block + BLOCK).min(cols);
            for r in row_block..row_end {
                let source = &src[r * cols + col_block..r * cols + col_end];
                for (offset, &value) in source.iter().enumerate() {
                    dst[(col_block + offset) * rows + r] = value;
                }
            }
        }
    }
}

/// One sample's im2row matrix from its NHWC copy: row `oy * Wo + ox` holds, for each kernel
/// position `(ky, kx)` in turn, the `Ci` channels of input pixel `(iy, ix)` (zeros outside).
fn im2row(geometry: &Geometry, nhwc: &[f32], rows: &mut [f32]) {
    let [kh, kw] = geometry.kernel;
    let channels = geometry.in_channels;
    let (sw, pw) = (geometry.stride[1], geometry.padding[1]);
    let width = geometry.width;
    let mut row_chunks = rows.chunks_exact_mut(kh * kw * channels);
    for oy in 0..geometry.out_height {
        for ox in 0..geometry.out_width {
            let row = row_chunks.next().expect("one row per output pixel");
            // The kernel columns inside the input, `kx` in `first..last`: their pixels are
            // neighbours in the NHWC copy, so each kernel row is one copy (a 7x7 kernel over 3
            // channels: 21 values at once instead of 7 copies of 3).
            let left = ox * sw;
            let first = pw.saturating_sub(left).min(kw);
            let last = (width + pw).saturating_sub(left).clamp(first, kw);
            for ky in 0..kh {
                let target = &mut row[ky * kw * channels..(ky + 1) * kw * channels];
                match geometry.input_row(oy, ky) {
                    Some(iy) if first < last => {
                        target[..first * channels].fill(0.0);
                        let from = (iy * width + left + first - pw) * channels;
                        target[first * channels..last * channels]
                            .copy_from_slice(&nhwc[from..from + (last - first) * channels]);
                        target[last * channels..].fill(0.0);
                    }
                    _ => target.fill(0.0),
                }
            }
        }
    }
}

/// A weight gradient summed in `[Co, kh, kw, Ci]` order, as [`weight_gradient_tile`] writes
/// it, in burn's `[Co, Ci, kh, kw]` order.
fn patch_major_to_channel_major(geometry: &Geometry, sum: &[f32]) -> Vec<f32> {
    let [kh, kw] = geometry.kernel;
    let (channels, positions) = (geometry.in_channels, kh * kw);
    let mut weight = vec![0.0f32; sum.len()];
    for (out, block) in weight
        .chunks_exact_mut(channels * positions)
        .zip(sum.chunks_exact(channels * positions))
    {
        for position in 0..positions {
            for c in 0..channels {
                out[c * positions + position] = block[position * channels + c];
            }
        }
    }
    weight
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::attention::testing::{assert_matches_reference, device, random_tensor, values};
    use burn::tensor::TensorData;
    use burn::tensor::module::conv2d as burn_conv2d;
    use burn::tensor::ops::ConvOptions;

    /// burn's own convolution, the reference.
    fn reference(
        x: Tensor<4>,
        weight: Tensor<4>,
        stride: [usize; 2],
        padding: [usize; 2],
    ) -> Tensor<4> {
        burn_conv2d(
            x,
            weight,
            None,
            ConvOptions::new(stride, padding, [1, 1], 1),
        )
    }

    /// `(x shape, weight shape, stride, padding)`.
    type Case = ([usize; 4], [usize; 4], [usize; 2], [usize; 2]);

    /// Test cases: channels not a multiple of 8, odd and
    /// non-square maps, strides 1 and 2 (and mixed), 1x1, 3x3 and 7x7 kernels, batches of 1, 2,
    /// 3, 4, 5 and 9. Small maps put a whole batch into one product, which then gets the
    /// threads; the last three put one sample (maps of at least 256 pixels) or four (8x8) into
    /// each product and spread the products over the threads.
    const CASES: [Case; 11] = [
        ([3, 5, 9, 7], [6, 5, 3, 3], [1, 1], [1, 1]),
        ([1, 5, 9, 7], [6, 5, 3, 3], [2, 2], [1, 1]),
        ([3, 7, 10, 11], [4, 7, 3, 3], [2, 2], [1, 1]),
        ([3, 6, 5, 5], [9, 6, 1, 1], [1, 1], [0, 0]),
        ([3, 6, 9, 9], [9, 6, 1, 1], [2, 2], [0, 0]),
        ([2, 3, 15, 13], [5, 3, 7, 7], [2, 2], [3, 3]),
        ([3, 4, 6, 6], [3, 4, 3, 3], [1, 1], [0, 0]),
        ([5, 11, 8, 8], [13, 11, 3, 3], [1, 2], [1, 0]),
        ([3, 5, 17, 16], [4, 5, 3, 3], [1, 1], [1, 1]),
        ([4, 6, 16, 17], [5, 6, 1, 1], [1, 1], [0, 0]),
        ([9, 3, 8, 8], [4, 3, 3, 3], [1, 1], [1, 1]),
    ];

    #[test]
    fn the_kernel_is_taken_on_flex_with_and_without_autodiff() {
        for device in [device(), device().autodiff()] {
            let x = random_tensor([1, 2, 3, 3], 1, &device);
            let w = random_tensor([1, 2, 1, 1], 2, &device);
            assert!(fused_available(&x, &w));
        }
    }

    /// Run `check` with the direct path allowed and then forbidden (on a processor without
    /// AVX-512F both runs take im2col).
    pub(in crate::kernels::cpu) fn with_each_path(check: impl Fn(&str)) {
        for direct in [true, false] {
            DIRECT_PATH.with(|enabled| enabled.set(direct));
            check(if direct { "direct" } else { "im2col" });
        }
        DIRECT_PATH.with(|enabled| enabled.set(true));
    }

    #[test]
    fn forward_matches_burns_convolution_on_odd_shapes() {
        with_each_path(forward_matches_burns_convolution);
    }

    fn forward_matches_burns_convolution(path: &str) {
        let device = device();
        for (case, (x_shape, w_shape, stride, padding)) in CASES.into_iter().enumerate() {
            let x = random_tensor(x_shape, 2 * case as u64, &device);
            let w = random_tensor(w_shape, 2 * case as u64 + 1, &device);
            let expected = reference(x.clone(), w.clone(), stride, padding);
            let actual = conv2d(x, w, stride, padding);
            assert_eq!(actual.dims(), expected.dims(), "case {case}");
            assert_matches_reference(
                &values(actual),
                &values(expected),
                1e-5,
                &format!("{path} case {case} output"),
            );
        }
    }

    #[test]
    fn gradients_match_burns_autodiff_on_odd_shapes() {
        with_each_path(gradients_match_burns_autodiff);
    }

    fn gradients_match_burns_autodiff(path: &str) {
        let device = device().autodiff();
        for (case, (x_shape, w_shape, stride, padding)) in CASES.into_iter().enumerate() {
            let x = random_tensor(x_shape, 2 * case as u64, &device);
            let w = random_tensor(w_shape, 2 * case as u64 + 1, &device);
            let out_dims = reference(x.clone(), w.clone(), stride, padding).dims();
            let probe = random_tensor(out_dims, 100 + case as u64, &device);
            let gradients = |kernel: bool| {
                let (x, w) = (x.clone().require_grad(), w.clone().require_grad());
                let y = if kernel {
                    conv2d(x.clone(), w.clone(), stride, padding)
                } else {
                    reference(x.clone(), w.clone(), stride, padding)
                };
                let grads = (y * probe.clone()).sum().backward();
                (
                    values(x.grad(&grads).unwrap()),
                    values(w.grad(&grads).unwrap()),
                )
            };
            let (dx, dw) = gradients(true);
            let (dx_ref, dw_ref) = gradients(false);
            assert_matches_reference(&dx, &dx_ref, 1e-5, &format!("{path} case {case} dX"));
            assert_matches_reference(&dw, &dw_ref, 1e-5, &format!("{path} case {case} dW"));
        }
    }

    #[test]
    fn gradients_match_finite_differences() {
        with_each_path(|_| gradients_match_finite_differences_at([2, 1]));
        with_each_path(|_| gradients_match_finite_differences_at([1, 1]));
    }

    fn gradients_match_finite_differences_at(stride: [usize; 2]) {
        let device = device().autodiff();
        let padding = [1, 1];
        let (x_shape, w_shape) = ([2, 3, 5, 4], [4, 3, 3, 3]);
        let y_shape = [
            2,
            4,
            (5 + 2 - 3) / stride[0] + 1,
            (4 + 2 - 3) / stride[1] + 1,
        ];
        let x_values: Vec<f64> = (0..2 * 3 * 5 * 4)
            .map(|i| ((i * 37 % 23) as f64 - 11.0) / 7.0)
            .collect();
        let w_values: Vec<f64> = (0..4 * 3 * 3 * 3)
            .map(|i| ((i * 19 % 17) as f64 - 8.0) / 9.0)
            .collect();
        let probe: Vec<f32> = (0..y_shape.iter().product::<usize>())
            .map(|i| ((i * 7 % 13) as f32 - 6.0) / 5.0)
            .collect();
        let tensor = |values: &[f64], shape: [usize; 4]| {
            let values: Vec<f32> = values.iter().map(|&v| v as f32).collect();
            Tensor::<4>::from_data(TensorData::new(values, shape), &device)
        };
        let loss = |x: &[f64], w: &[f64]| -> f64 {
            let y = conv2d(tensor(x, x_shape), tensor(w, w_shape), stride, padding);
            let probe = Tensor::<4>::from_data(TensorData::new(probe.clone(), y_shape), &device);
            (y * probe).sum().into_scalar::<f32>() as f64
        };
        let x = tensor(&x_values, x_shape).require_grad();
        let w = tensor(&w_values, w_shape).require_grad();
        let probe_tensor = Tensor::<4>::from_data(TensorData::new(probe.clone(), y_shape), &device);
        let grads = (conv2d(x.clone(), w.clone(), stride, padding) * probe_tensor)
            .sum()
            .backward();
        let dx = values(x.grad(&grads).unwrap());
        let dw = values(w.grad(&grads).unwrap());
        // The loss is linear in each input, so a central difference is exact up to rounding.
        let step = 0.25;
        for i in 0..x_values.len() {
            let (mut plus, mut minus) = (x_values.clone(), x_values.clone());
            plus[i] += step;
            minus[i] -= step;
            let numeric = (loss(&plus, &w_values) - loss(&minus, &w_values)) / (2.0 * step);
            assert!(
                (numeric - dx[i] as f64).abs() < 1e-3,
                "dX {i}: {numeric} vs {}",
                dx[i]
            );
        }
        for i in 0..w_values.len() {
            let (mut plus, mut minus) = (w_values.clone(), w_values.clone());
            plus[i] += step;
            minus[i] -= step;
            let numeric = (loss(&x_values, &plus) - loss(&x_values, &minus)) / (2.0 * step);
            assert!(
                (numeric - dw[i] as f64).abs() < 1e-3,
                "dW {i}: {numeric} vs {}",
                dw[i]
            );
        }
    }

    #[test]
    fn a_hand_computed_case() {
        // A 3x3 input 1..9 and a 2x2 kernel [[1, 2], [3, 4]], stride 1, no padding:
        // y(0,0) = 1*1 + 2*2 + 4*3 + 5*4 = 37, then 47, 67, 77.
        let device = device();
        let x = Tensor::<4>::from_data(
            TensorData::new((1..=9).map(|v| v as f32).collect::<Vec<_>>(), [1, 1, 3, 3]),
            &device,
        );
        let w = Tensor::<4>::from_data(
            TensorData::new(vec![1.0f32, 2.0, 3.0, 4.0], [1, 1, 2, 2]),
            &device,
        );
        assert_eq!(
            values(conv2d(x.clone(), w.clone(), [1, 1], [0, 0])),
            vec![37.0, 47.0, 67.0, 77.0]
        );
        // Padding 1, stride 2: outputs at input rows/columns -1 and 1; the top-left sees only
        // x(0,0) under w(1,1): 1 * 4 = 4.
        let y = values(conv2d(x, w, [2, 2], [1, 1]));
        assert_eq!(
            y,
            vec![
                4.0,
                6.0 + 12.0,
                8.0 + 28.0,
                1.0 * 5.0 + 2.0 * 6.0 + 3.0 * 8.0 + 4.0 * 9.0
            ]
        );
    }
}
