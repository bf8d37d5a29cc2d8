//! The end of a residual block with a PPCR unit, in inference, as one CPU kernel on the Flex
//! backend: `relu(PPCR(BN(conv2d(X, W))) + residual)`.
//!
//! Zhang et al., "PPCR: Learning Pyramid Pixel Context Recalibration Module for Medical Image
//! Classification" (arXiv 2303.01917) puts the unit after a block's last BatchNorm and before
//! the residual add. Run as layers, the convolution writes the whole batch's BatchNorm output,
//! and the unit reads it back twice (group sums, then the product with the residual) once it has
//! left the cache. Here the convolution kernel (`conv`) hands each output sample, once written,
//! to the unit's per-sample kernel (`ppcr`), so the unit reads it from cache; a plain block gets
//! the same from `conv`'s own residual end. The values are those of the separate kernels, bit
//! for bit.

use burn::backend::flex::FlexTensor;
use burn::backend::{
    Backend, Dispatch, Flex, TensorMetadata, backend_extension, tensor::FloatTensor,
};
use burn::tensor::Tensor;

use super::common::{contiguous_values, on_flex_f32};
use super::conv::{self, affine_available};
use super::ppcr::{MAX_LEVELS, ResidualEnd};

/// The convolution, its inference BatchNorm, the PPCR unit and the block's residual end as a
/// backend extension operation, on plain Flex tensors.
#[backend_extension(Flex)]
pub trait ConvPpcrOps: Backend {
    /// `relu(ppcr(conv2d(X, W) * scale + shift) + residual)`: `x` `[B, Ci, H, W]`, `weight`
    /// `[Co, Ci, kh, kw]`, `scale` and `shift` `[Co]`, `ppcr_weights` `[K, Ho, Wo]` with
    /// `K = 2^levels - 1`, `residual` of the output's shape.
    #[allow(clippy::too_many_arguments)]
    fn conv2d_affine_ppcr_add_relu_fused(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        scale: FloatTensor<Self>,
        shift: FloatTensor<Self>,
        ppcr_weights: FloatTensor<Self>,
        residual: FloatTensor<Self>,
        stride: [usize; 2],
        padding: [usize; 2],
        levels: usize,
        epsilon: f64,
    ) -> FloatTensor<Self>;
}

/// Whether [`conv2d_affine_ppcr_add_relu`] can run on these tensors: plain (not autodiff) Flex
/// `f32` tensors and a pyramid the PPCR kernel handles. The caller checks the shapes.
pub fn available(
    x: &Tensor<4>,
    weight: &Tensor<4>,
    ppcr_weights: &Tensor<3>,
    residual: &Tensor<4>,
    levels: usize,
) -> bool {
    affine_available(x, weight)
        && on_flex_f32(ppcr_weights)
        && on_flex_f32(residual)
        && (1..=MAX_LEVELS).contains(&levels)
}

/// `relu(ppcr(conv2d(x, weight) * scale + shift) + residual)`; the caller checks [`available`],
/// what `conv::conv2d_affine` needs, that `ppcr_weights` is `[K, Ho, Wo]` for the output's
/// `Ho x Wo` with at least `2^(levels - 1)` output channels, and that `residual` has the
/// output's shape.
#[allow(clippy::too_many_arguments)]
pub fn conv2d_affine_ppcr_add_relu(
    x: Tensor<4>,
    weight: Tensor<4>,
    [scale, shift]: [Tensor<1>; 2],
    ppcr_weights: Tensor<3>,
    residual: Tensor<4>,
    stride: [usize; 2],
    padding: [usize; 2],
    levels: usize,
    epsilon: f64,
) -> Tensor<4> {
    Tensor::from_dispatch(
        <Dispatch as ConvPpcrOps>::conv2d_affine_ppcr_add_relu_fused(
            x.into_dispatch(),
            weight.into_dispatch(),
            scale.into_dispatch(),
            shift.into_dispatch(),
            ppcr_weights.into_dispatch(),
            residual.into_dispatch(),
            stride,
            padding,
            levels,
            epsilon,
        ),
    )
}

impl ConvPpcrOps for Flex {
    fn conv2d_affine_ppcr_add_relu_fused(
        x: FlexTensor,
        weight: FlexTensor,
        scale: FlexTensor,
        shift: FlexTensor,
        ppcr_weights: FlexTensor,
        residual: FlexTensor,
        stride: [usize; 2],
        padding: [usize; 2],
        levels: usize,
        epsilon: f64,
    ) -> FlexTensor {
        let residual_shape = residual.shape();
        let residual = contiguous_values(&residual);
        let end = ResidualEnd::new(&residual_shape, &ppcr_weights, &residual, levels, epsilon);
        let output =
            conv::conv2d_affine_then(&x, &weight, &scale, &shift, stride, padding, false, &end);
        assert_eq!(
            output.shape(),
            residual_shape,
            "conv2d_affine_ppcr_add_relu_fused: the residual is not the output's shape"
        );
        output
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attention::testing::{
        device, ppcr_with_random_weights, random_tensor, seeded_values, values,
    };
    use crate::kernels::cpu::conv::tests::with_each_path;
    use crate::kernels::cpu::{conv::conv2d_affine, ppcr};
    use burn::tensor::TensorData;

    /// `(x shape, weight shape, stride, padding, levels)`.
    type Case = ([usize; 4], [usize; 4], [usize; 2], [usize; 2], usize);

    /// Output channels not a multiple of 8,
    /// odd and non-square maps, stride 2, 1x1 kernels, batches of 1, 2, 3 and 5; 8x8 maps put
    /// several samples into one product, the 17x16 map one sample each.
    const CASES: [Case; 6] = [
        ([3, 5, 9, 7], [11, 5, 3, 3], [1, 1], [1, 1], 4),
        ([1, 5, 9, 7], [9, 5, 3, 3], [2, 2], [1, 1], 3),
        ([3, 7, 10, 11], [8, 7, 3, 3], [2, 2], [1, 1], 4),
        ([2, 6, 8, 8], [10, 6, 1, 1], [1, 1], [0, 0], 2),
        ([5, 11, 8, 8], [13, 11, 3, 3], [1, 1], [1, 1], 4),
        ([3, 5, 17, 16], [12, 5, 3, 3], [1, 1], [1, 1], 4),
    ];

    /// A BatchNorm's `[scale, shift]`: scales in `[0.5, 1.5)`, shifts in `[-1, 1)`.
    fn affine(channels: usize, seed: u64) -> [Tensor<1>; 2] {
        let scale = seeded_values(channels, seed)
            .iter()
            .map(|v| 0.5 + v.abs())
            .collect();
        [scale, seeded_values(channels, seed + 1)]
            .map(|values| Tensor::from_data(TensorData::new(values, [channels]), &device()))
    }

    #[test]
    fn the_fused_block_end_gives_the_separate_kernels_bits() {
        with_each_path(|path| {
            let device = device();
            for (case, (x_shape, w_shape, stride, padding, levels)) in CASES.into_iter().enumerate()
            {
                let seed = 10 * case as u64;
                let x = random_tensor(x_shape, seed, &device);
                let weight = random_tensor(w_shape, seed + 1, &device);
                let affine = affine(w_shape[0], seed + 2);
                let separate_conv = conv2d_affine(
                    x.clone(),
                    weight.clone(),
                    affine.clone(),
                    stride,
                    padding,
                    false,
                );
                let [batch, channels, height, width] = separate_conv.dims();
                let unit =
                    ppcr_with_random_weights(channels, [height, width], levels, seed + 4, &device);
                let ppcr_weights = unit.pixel_context_weights.val();
                let residual = random_tensor([batch, channels, height, width], seed + 5, &device);
                assert!(available(&x, &weight, &ppcr_weights, &residual, levels));
                let separate = ppcr::recalibrate_add_relu(
                    separate_conv,
                    ppcr_weights.clone(),
                    residual.clone(),
                    levels,
                    1e-5,
                );
                let fused = conv2d_affine_ppcr_add_relu(
                    x,
                    weight,
                    affine,
                    ppcr_weights,
                    residual,
                    stride,
                    padding,
                    levels,
                    1e-5,
                );
                let (fused, separate) = (values(fused), values(separate));
                assert!(fused.contains(&0.0) && fused.iter().any(|&v| v > 0.0));
                assert_eq!(fused, separate, "{path} path, case {case}");
            }
        });
    }

    #[test]
    fn zero_unit_weights_halve_the_convolution_before_the_add() {
        let device = device();
        let (x_shape, w_shape, stride, padding, levels) = CASES[0];
        let x = random_tensor(x_shape, 1, &device);
        let weight = random_tensor(w_shape, 2, &device);
        let affine = affine(w_shape[0], 3);
        let y = conv2d_affine(
            x.clone(),
            weight.clone(),
            affine.clone(),
            stride,
            padding,
            false,
        );
        let [batch, channels, height, width] = y.dims();
        let residual = random_tensor([batch, channels, height, width], 4, &device);
        let zeros = Tensor::<3>::zeros([(1 << levels) - 1, height, width], &device);
        let fused = conv2d_affine_ppcr_add_relu(
            x,
            weight,
            affine,
            zeros,
            residual.clone(),
            stride,
            padding,
            levels,
            1e-5,
        );
        let expected = values(y.mul_scalar(0.5).add(residual).clamp_min(0.0));
        for (index, (actual, expected)) in values(fused).iter().zip(&expected).enumerate() {
            assert!(
                (actual - expected).abs() <= 1e-6,
                "value {index}: {actual} vs {expected}"
            );
        }
    }

    #[test]
    fn autodiff_tensors_do_not_take_the_kernel() {
        let autodiff = device().autodiff();
        let x = random_tensor([1, 4, 4, 4], 1, &autodiff);
        let weight = random_tensor([8, 4, 3, 3], 2, &autodiff);
        let ppcr_weights = Tensor::<3>::zeros([15, 4, 4], &autodiff);
        let residual = random_tensor([1, 8, 4, 4], 3, &autodiff);
        assert!(!available(&x, &weight, &ppcr_weights, &residual, 4));
    }
}
