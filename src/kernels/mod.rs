//! Backend kernels: the hand-written operations that the attention units (`attention/`) and the
//! backbones (`models/`) call where burn's generic tensor operations would cost several passes
//! over a feature map.
//!
//! [`cpu`] holds the Flex (CPU) kernels, each with its autodiff node; [`cube`] the CubeCL kernels
//! for burn's GPU backends (built with the `cuda` or `wgpu` feature). Every kernel has a
//! counterpart written with burn's tensor operations, which other backends run and which the
//! kernel is tested against. Nothing here knows an attention unit or a network.

pub(crate) mod cpu;
#[cfg(any(feature = "cuda", feature = "wgpu"))]
pub(crate) mod cube;
pub(crate) mod pyramid;
