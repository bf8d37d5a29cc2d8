//! Kernels for burn's CubeCL backends (CUDA, wgpu), built with the `cuda` or `wgpu` feature.

pub(crate) mod ppcr;
