//! Stride-1 convolutions computed directly with AVX-512, without an im2col matrix: the forward
//! pass and the input gradient of `conv.rs`'s kernel take this path on processors with
//! AVX-512F (the others, and strided or pointwise convolutions, keep im2col and `gemm`).
//!
//! He et al.'s ResNets (CVPR 2016) are mostly 3x3 stride-1 convolutions. Through im2col each one
//! first writes `kh * kw` shifted copies of its input and the matrix kernel then packs them
//! again, which took more time than the multiply-adds themselves (bench/profile_step.py). Here
//! each sample's input is copied once into a zero-padded buffer (`Hp x Wp` per channel), and
//! every output is a sum over channels and kernel positions of that buffer read at a shift: with
//! outputs numbered along the padded rows (`q = oy * Wp + ox`), kernel position `(ky, kx)` reads
//! place `q + ky * Wp + kx`. A step of the inner loop loads 32 consecutive places (two vectors)
//! and multiply-adds them into 8 output channels at once (16 accumulators in registers), with
//! the 8 weights broadcast from a buffer laid out for it. Places past the end of an output row
//! (`Wp - Wo` per row) are computed and dropped.
//!
//! The input gradient of a stride-1 convolution is the convolution of the output gradient with
//! the kernel flipped in both spatial axes and its channel axes swapped, padded by `k - 1 - p`:
//! the same loop.

use std::mem::MaybeUninit;

use super::conv::OutputMap;

/// Output channels per block: the accumulators of one inner step.
const CHANNEL_BLOCK: usize = 8;
/// Output places per inner step: two 16-lane vectors.
const PLACE_BLOCK: usize = 32;

/// The sizes of one stride-1 convolution.
#[derive(Debug, Clone, Copy)]
pub(super) struct DirectShape {
    /// Input channels.
    pub in_channels: usize,
    /// Input `[H, W]`.
    pub size: [usize; 2],
    /// Output channels.
    pub out_channels: usize,
    /// Kernel `[kh, kw]`.
    pub kernel: [usize; 2],
    /// Zero padding `[ph, pw]`.
    pub padding: [usize; 2],
}

impl DirectShape {
    fn padded(&self) -> [usize; 2] {
        [
            self.size[0] + 2 * self.padding[0],
            self.size[1] + 2 * self.padding[1],
        ]
    }

    /// Output `[Ho, Wo]`.
    pub fn out_size(&self) -> [usize; 2] {
        let [hp, wp] = self.padded();
        [hp + 1 - self.kernel[0], wp + 1 - self.kernel[1]]
    }

    /// Places computed per output channel: whole padded rows, rounded up to whole steps.
    fn grid_len(&self) -> usize {
        (self.out_size()[0] * self.padded()[1]).next_multiple_of(PLACE_BLOCK)
    }

    /// Values per channel of the padded input: the padded plane plus the reach of the last
    /// step (`PLACE_BLOCK` places at the largest shift past the grid).
    fn padded_channel_len(&self) -> usize {
        let [hp, wp] = self.padded();
        (hp * wp).max(self.grid_len() + (self.kernel[0] - 1) * wp + self.kernel[1] - 1)
            + PLACE_BLOCK
    }

    fn in_sample_len(&self) -> usize {
        self.in_channels * self.size[0] * self.size[1]
    }

    fn out_sample_len(&self) -> usize {
        let [ho, wo] = self.out_size();
        self.out_channels * ho * wo
    }

    /// The shape of this convolution's input gradient as a convolution: output gradient in,
    /// channels swapped, padding `k - 1 - p` (`None` where the padding exceeds `k - 1`).
    pub fn input_gradient(&self) -> Option<DirectShape> {
        let [kh, kw] = self.kernel;
        let [ph, pw] = self.padding;
        (ph < kh && pw < kw).then(|| DirectShape {
            in_channels: self.out_channels,
            size: self.out_size(),
            out_channels: self.in_channels,
            kernel: self.kernel,
            padding: [kh - 1 - ph, kw - 1 - pw],
        })
    }
}

/// Whether this processor runs the direct path.
pub(super) fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// The weights in the order the inner loop reads them: per block of 8 output channels, per input
/// channel and kernel position, the block's 8 weights side by side (zeros past the last
/// channel). `weight_at(o, c, ky, kx)` gives a weight of the `[Co, Ci, kh, kw]` kernel to apply.
fn block_weights(
    shape: &DirectShape,
    weight_at: impl Fn(usize, usize, usize, usize) -> f32,
) -> Vec<f32> {
    let [kh, kw] = shape.kernel;
    let blocks = shape.out_channels.div_ceil(CHANNEL_BLOCK);
    let mut blocked = vec![0.0f32; blocks * shape.in_channels * kh * kw * CHANNEL_BLOCK];
    for block in 0..blocks {
        for c in 0..shape.in_channels {
            for ky in 0..kh {
                for kx in 0..kw {
                    let at =
                        (((block * shape.in_channels + c) * kh + ky) * kw + kx) * CHANNEL_BLOCK;
                    for j in 0..CHANNEL_BLOCK {
                        let o = block * CHANNEL_BLOCK + j;
                        if o < shape.out_channels {
                            blocked[at + j] = weight_at(o, c, ky, kx);
                        }
                    }
                }
            }
        }
    }
    blocked
}

/// The forward kernel's weights from a `[Co, Ci, kh, kw]` weight.
pub(super) fn forward_weights(shape: &DirectShape, weight: &[f32]) -> Vec<f32> {
    let [kh, kw] = shape.kernel;
    let ci = shape.in_channels;
    block_weights(shape, |o, c, ky, kx| {
        weight[((o * ci + c) * kh + ky) * kw + kx]
    })
}

/// The input gradient's weights (for `shape.input_gradient()`) from the forward convolution's
/// `[Co, Ci, kh, kw]` weight: channels swapped, kernel flipped.
pub(super) fn input_gradient_weights(gradient_shape: &DirectShape, weight: &[f32]) -> Vec<f32> {
    let [kh, kw] = gradient_shape.kernel;
    // The gradient convolution maps the forward's Co channels (its inputs) to Ci (its outputs).
    let forward_in = gradient_shape.out_channels;
    block_weights(gradient_shape, |c, o, ky, kx| {
        weight[((o * forward_in + c) * kh + (kh - 1 - ky)) * kw + (kw - 1 - kx)]
    })
}

/// Buffers a thread reuses from sample to sample.
#[derive(Default)]
pub(super) struct DirectScratch {
    padded: Vec<f32>,
    grid: Vec<f32>,
}

/// One sample: `input` (`[Ci, H, W]`) convolved with the blocked weights into `out`
/// (`[Co, Ho, Wo]`), each value passed through `map` as it is written (with the index of
/// `out[0]` in the whole output, which the map's residual is indexed by). The caller checks
/// [`available`].
pub(super) fn convolve_sample(
    shape: &DirectShape,
    blocked: &[f32],
    input: &[f32],
    out: &mut [MaybeUninit<f32>],
    scratch: &mut DirectScratch,
    map: Option<(&OutputMap, usize)>,
) {
    debug_assert_eq!(input.len(), shape.in_sample_len());
    debug_assert_eq!(out.len(), shape.out_sample_len());
    let [h, w] = shape.size;
    let [_, wp] = shape.padded();
    let [ph, pw] = shape.padding;
    let channel_len = shape.padded_channel_len();
    scratch.padded.clear();
    scratch.padded.resize(shape.in_channels * channel_len, 0.0);
    for (c, plane) in input.chunks_exact(h * w).enumerate() {
        for (iy, row) in plane.chunks_exact(w).enumerate() {
            let at = c * channel_len + (iy + ph) * wp + pw;
            scratch.padded[at..at + w].copy_from_slice(row);
        }
    }
    let grid_len = shape.grid_len();
    scratch.grid.resize(CHANNEL_BLOCK * grid_len, 0.0);
    let [ho, wo] = shape.out_size();
    let per_block = shape.in_channels * shape.kernel[0] * shape.kernel[1] * CHANNEL_BLOCK;
    for (block, weights) in blocked.chunks_exact(per_block).enumerate() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the caller checked `available()`; `padded` holds `Ci` channels of
        // `channel_len` values, enough for every read of the grid's steps (see
        // `padded_channel_len`), and `grid` holds `CHANNEL_BLOCK * grid_len` values.
        unsafe {
            avx512::block(
                shape,
                weights,
                &scratch.padded,
                channel_len,
                &mut scratch.grid,
            );
        }
        let first = block * CHANNEL_BLOCK;
        let channels = CHANNEL_BLOCK.min(shape.out_channels - first);
        for j in 0..channels {
            let grid = &scratch.grid[j * grid_len..];
            let plane = &mut out[(first + j) * ho * wo..(first + j + 1) * ho * wo];
            let rows = plane.chunks_exact_mut(wo).enumerate();
            match map {
                None => {
                    for (oy, row) in rows {
                        for (value, &computed) in row.iter_mut().zip(&grid[oy * wp..]) {
                            value.write(computed);
                        }
                    }
                }
                Some((map, at)) => {
                    for (oy, row) in rows {
                        let at = at + ((first + j) * ho + oy) * wo;
                        map.write(at, first + j, &grid[oy * wp..oy * wp + wo], row);
                    }
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::{
        __m512, _mm512_fmadd_ps, _mm512_loadu_ps, _mm512_set1_ps, _mm512_setzero_ps,
        _mm512_storeu_ps,
    };

    use super::{CHANNEL_BLOCK, DirectShape, PLACE_BLOCK};

    /// The grid of one block of 8 output channels: `grid[j * grid_len + q]`.
    ///
    /// # Safety
    /// The processor has AVX-512F; `padded` holds `shape.in_channels` channels of
    /// `channel_len >= padded_channel_len()` values; `grid` holds `8 * grid_len()` values;
    /// `weights` holds one block (`Ci * kh * kw * 8` values).
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn block(
        shape: &DirectShape,
        weights: &[f32],
        padded: &[f32],
        channel_len: usize,
        grid: &mut [f32],
    ) {
        let [kh, kw] = shape.kernel;
        let wp = shape.size[1] + 2 * shape.padding[1];
        let grid_len = shape.grid_len();
        let positions = kh * kw;
        debug_assert!(padded.len() >= shape.in_channels * channel_len);
        debug_assert!(grid.len() >= CHANNEL_BLOCK * grid_len);
        debug_assert!(weights.len() >= shape.in_channels * positions * CHANNEL_BLOCK);
        // SAFETY: every read lies in `padded` (a step reads places `start .. start + 32` at
        // shifts up to `(kh - 1) * Wp + kw - 1`, inside `channel_len`), every weight in
        // `weights`, every write in `grid`, as the caller guarantees.
        unsafe {
            for start in (0..grid_len).step_by(PLACE_BLOCK) {
                let mut low = [_mm512_setzero_ps(); CHANNEL_BLOCK];
                let mut high = [_mm512_setzero_ps(); CHANNEL_BLOCK];
                for c in 0..shape.in_channels {
                    let channel = padded.as_ptr().add(c * channel_len + start);
                    let channel_weights = weights.as_ptr().add(c * positions * CHANNEL_BLOCK);
                    for ky in 0..kh {
                        for kx in 0..kw {
                            let source = channel.add(ky * wp + kx);
                            let v0: __m512 = _mm512_loadu_ps(source);
                            let v1: __m512 = _mm512_loadu_ps(source.add(16));
                            let w = channel_weights.add((ky * kw + kx) * CHANNEL_BLOCK);
                            for j in 0..CHANNEL_BLOCK {
                                let weight = _mm512_set1_ps(*w.add(j));
                                low[j] = _mm512_fmadd_ps(v0, weight, low[j]);
                                high[j] = _mm512_fmadd_ps(v1, weight, high[j]);
                            }
                        }
                    }
                }
                for j in 0..CHANNEL_BLOCK {
                    let target = grid.as_mut_ptr().add(j * grid_len + start);
                    _mm512_storeu_ps(target, low[j]);
                    _mm512_storeu_ps(target.add(16), high[j]);
                }
            }
        }
    }
}
