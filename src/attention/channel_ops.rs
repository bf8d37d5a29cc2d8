//! The whole-map steps of the channel attention units: a statistic of every channel plane and
//! the scaling of every plane by its channel's gate.
//!
//! SE (Hu et al., CVPR 2018) and ECA (Wang et al., CVPR 2020) pool each plane's mean, SRM (Lee
//! et al., ICCV 2019) its mean and standard deviation, GCT (Yang et al., CVPR 2020) its l2 norm;
//! each then computes one gate per channel from these `[B, C]` values and scales the plane by it.
//! The statistic and the product are the only steps that touch every value of the feature map,
//! so they decide what the unit costs. [`ChannelOps::Fused`] runs them as the fused kernels of
//! `channel_ops_fused` (one pass each, with hand-written backward steps), [`ChannelOps::Tensor`]
//! as burn tensor operations: what other backends run, and the reference the kernels are tested
//! against.

use burn::tensor::Tensor;

use crate::kernels::cpu::channel_ops as channel_ops_fused;

pub use crate::kernels::cpu::channel_ops::PlaneStatistic;

/// How a channel attention unit runs its whole-map steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ChannelOps {
    /// The fused kernels of `channel_ops_fused` (Flex backend, plain or autodiff, `f32`).
    Fused,
    /// Burn tensor operations, on any backend.
    Tensor,
}

impl ChannelOps {
    /// The fused kernels where `x` can take them, tensor operations elsewhere.
    pub(crate) fn for_input(x: &Tensor<4>) -> Self {
        if channel_ops_fused::fused_available(x) {
            ChannelOps::Fused
        } else {
            ChannelOps::Tensor
        }
    }

    /// `statistic` of every channel plane of `x` (`[B, C, H, W]`), as `[B, C]`.
    pub(crate) fn statistic(self, x: Tensor<4>, statistic: PlaneStatistic) -> Tensor<2> {
        if self == ChannelOps::Fused {
            return channel_ops_fused::plane_statistic(x, statistic);
        }
        let [batch, channels, height, width] = x.dims();
        let per_plane = match statistic {
            PlaneStatistic::Mean => x.mean_dims(&[2, 3]),
            PlaneStatistic::Variance { correction } => {
                let divisor = PlaneStatistic::variance_divisor(correction, height * width);
                let mean = x.clone().mean_dims(&[2, 3]);
                (x - mean)
                    .square()
                    .sum_dims(&[2, 3])
                    .div_scalar(divisor as f64)
            }
            PlaneStatistic::SumOfSquares => x.square().sum_dims(&[2, 3]),
        };
        per_plane.reshape([batch, channels])
    }

    /// `x` (`[B, C, H, W]`) with plane `(b, c)` multiplied by `gate[b, c]` (`gate`: `[B, C]`).
    pub(crate) fn scale(self, x: Tensor<4>, gate: Tensor<2>) -> Tensor<4> {
        if self == ChannelOps::Fused {
            return channel_ops_fused::scale_planes(x, gate);
        }
        let [batch, channels, _, _] = x.dims();
        x * gate.reshape([batch, channels, 1, 1])
    }
}
