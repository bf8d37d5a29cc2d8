//! The GPU backends' runtime (CubeCL, under burn's `cuda` and `wgpu` backends): where compiled
//! kernels and autotune results are kept between processes, and how many kernels a process has
//! compiled, so a front end can say what a first run on a new machine is waiting for.
//!
//! CubeCL compiles every kernel the first time a process meets it (NVRTC on CUDA, about one
//! kernel a second) and autotunes each matrix product and convolution shape. Both results are
//! kept in one store per machine ([`kernel_cache_dir`]); [`configure_runtime`] points CubeCL at
//! it before the first GPU device opens, whatever the working directory.

mod cache;
mod compile_count;

#[cfg(any(feature = "cuda", feature = "wgpu"))]
pub use cache::configure_runtime;
pub use cache::{CACHE_DIR_VARIABLE, kernel_cache_dir, resolve_cache_dir};
pub use compile_count::{count_compilations, kernels_compiled};
