//! Kernels for the Flex (CPU) backend, each a burn backend extension implemented for `Flex` and
//! `Autodiff<Flex>` with a hand-written backward node, compiled a second time for AVX2/FMA and
//! chosen at run time ([`common`]). Each file's `fused_available` tells its caller when a tensor
//! can take the kernel; everything else takes the caller's tensor formulation.

pub(crate) mod batch_norm;
pub(crate) mod batch_norm_ppcr;
pub(crate) mod cbam;
pub(crate) mod channel_ops;
pub(crate) mod common;
pub(crate) mod conv;
mod conv_direct;
pub(crate) mod conv_ppcr;
pub(crate) mod ppcr;
pub(crate) mod residual;
pub(crate) mod simam;
