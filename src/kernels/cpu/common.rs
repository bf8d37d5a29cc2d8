//! Helpers the fused CPU kernels of the attention units share: whether a tensor can take them,
//! Flex tensor buffers (contiguous views, outputs not zeroed before the kernel writes them in
//! full, gradients overwritten in place), a vectorisable `exp` and sigmoid, and compiling a
//! kernel a second time for AVX2, chosen at run time.
//!
//! Used by `ppcr_fused` (Zhang et al., arXiv 2303.01917) and `simam_fused` (Yang et al., ICML
//! 2021).

use burn::backend::flex::FlexTensor;
use burn::backend::{DispatchTensorKind, TensorMetadata};
use burn::tensor::{DType, Shape, Tensor, TensorData};

/// Whether `tensor` lives on the Flex backend (plain or under autodiff) and holds `f32` values:
/// what the fused kernels run on. Anything else takes a unit's tensor formulation.
pub(crate) fn on_flex_f32<const D: usize>(tensor: &Tensor<D>) -> bool {
    fn on_flex(kind: &DispatchTensorKind) -> bool {
        // With the `cuda`, `wgpu` or `tch` feature the enum has more variants, all of which must
        // take the tensor formulation; in the default build the catch-all arm is unreachable.
        #[allow(unreachable_patterns)]
        match kind {
            DispatchTensorKind::Flex(_) => true,
            DispatchTensorKind::Autodiff(inner) => on_flex(inner),
            _ => false,
        }
    }
    // Cloning a tensor only bumps a reference count.
    let dispatch = tensor.clone().into_dispatch();
    dispatch.kind.dtype() == DType::F32 && on_flex(&dispatch.kind)
}

/// Values one rayon task should cover at least: below this, waking a second thread and
/// splitting the work costs more than it saves (a ResNet-20 stage-3 map, 256 Ki values, ran
/// PPCR's kernel fastest on one thread on the 2-core build machine).
pub(crate) const PARALLEL_GRAIN: usize = 1 << 19;

/// How many items of `item_len` values one rayon task takes, so a task covers at least
/// [`PARALLEL_GRAIN`] values (for `with_min_len`, or times `item_len` as a chunk length; an input
/// under the grain is then one task).
pub(crate) fn items_per_task(item_len: usize) -> usize {
    PARALLEL_GRAIN.div_ceil(item_len.max(1))
}

/// A contiguous `f32` view of a Flex tensor, copying only when its layout is strided.
pub(crate) fn contiguous_values(tensor: &FlexTensor) -> std::borrow::Cow<'_, [f32]> {
    match tensor.as_slice::<f32>() {
        Some(values) => std::borrow::Cow::Borrowed(values),
        None => std::borrow::Cow::Owned(tensor.to_contiguous().as_slice::<f32>().unwrap().to_vec()),
    }
}

/// `tensor` as a contiguous tensor whose values this step may overwrite: itself when nothing
/// else shares its buffer and the buffer holds exactly its values in order, a copy otherwise.
///
/// The backward step writes `dX` over the `dY` autodiff hands it, which it owns: a fresh
/// feature-map-sized buffer would cost page faults in every step (glibc returns such blocks to
/// the kernel) and its memory at the backward's peak.
pub(crate) fn writable_contiguous(mut tensor: FlexTensor) -> FlexTensor {
    let whole_buffer = tensor.is_contiguous()
        && tensor.layout().start_offset() == 0
        && tensor.bytes().len() == tensor.shape().num_elements() * size_of::<f32>();
    if whole_buffer && tensor.try_storage_mut::<f32>().is_some() {
        return tensor;
    }
    flex_tensor(contiguous_values(&tensor).into_owned(), tensor.shape())
}

/// A Flex tensor of `shape` holding `values`.
pub(crate) fn flex_tensor(values: Vec<f32>, shape: Shape) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(values, shape))
}

/// Values summed in separate accumulators, so the sums vectorise with the same association in
/// every compilation (a single running sum would be a chain of dependent additions).
pub(crate) const LANES: usize = 8;

/// `sum_i f(values_i)` over [`LANES`] accumulators, combined in a fixed order.
#[inline(always)]
pub(crate) fn lane_sum(values: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    let mut lanes = [0.0f32; LANES];
    let chunks = values.chunks_exact(LANES);
    let rest = chunks.remainder();
    for chunk in chunks {
        for (lane, value) in lanes.iter_mut().zip(chunk) {
            *lane += f(*value);
        }
    }
    for (lane, value) in lanes.iter_mut().zip(rest) {
        *lane += f(*value);
    }
    lanes.iter().sum()
}

/// `sum_i f(xs_i, ys_i)` over [`LANES`] accumulators, combined in a fixed order.
#[inline(always)]
pub(crate) fn lane_sum_pairs(xs: &[f32], ys: &[f32], f: impl Fn(f32, f32) -> f32) -> f32 {
    let mut lanes = [0.0f32; LANES];
    let (x_chunks, y_chunks) = (xs.chunks_exact(LANES), ys.chunks_exact(LANES));
    let (x_rest, y_rest) = (x_chunks.remainder(), y_chunks.remainder());
    for (x_chunk, y_chunk) in x_chunks.zip(y_chunks) {
        for ((lane, &x), &y) in lanes.iter_mut().zip(x_chunk).zip(y_chunk) {
            *lane += f(x, y);
        }
    }
    for ((lane, &x), &y) in lanes.iter_mut().zip(x_rest).zip(y_rest) {
        *lane += f(x, y);
    }
    lanes.iter().sum()
}

/// The largest of `values` (`-inf` for none), over [`LANES`] accumulators so it vectorises.
#[inline(always)]
pub(crate) fn lane_max(values: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; LANES];
    let chunks = values.chunks_exact(LANES);
    let rest = chunks.remainder();
    for chunk in chunks {
        for (lane, &value) in lanes.iter_mut().zip(chunk) {
            *lane = lane.max(value);
        }
    }
    for (lane, &value) in lanes.iter_mut().zip(rest) {
        *lane = lane.max(value);
    }
    lanes.iter().copied().fold(f32::NEG_INFINITY, f32::max)
}

/// `max(x, 0)` that keeps NaN (`f32::max` would turn it into 0), so a diverging run still shows
/// NaN in its loss instead of training on silently zeroed activations.
#[inline(always)]
pub(crate) fn relu(x: f32) -> f32 {
    if x < 0.0 { 0.0 } else { x }
}

/// `1 / (1 + exp(-z))` with `exp` written out (Cephes' `expf`: round to a power of two, a
/// degree-6 polynomial on the remainder, about 1 ulp), so loops over pixels
/// vectorise; the library `exp` is a call per pixel. Exact at `z = 0` (a zero-weight PPCR unit
/// scales by exactly 0.5), and NaN stays NaN, so a diverging run is still caught.
#[inline(always)]
pub(crate) fn sigmoid(z: f32) -> f32 {
    1.0 / (1.0 + exp(-z))
}

/// See [`sigmoid`]. Inputs are clamped to where `exp` is a normal `f32` (beyond it the sigmoid
/// is 0 or 1 to `f32` precision anyway).
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    // 1.5 * 2^23: adding it rounds to an integer, which lands in the low mantissa bits.
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.0, 88.0);
    let shifted = x * std::f32::consts::LOG2_E + ROUND;
    let n = shifted - ROUND;
    // ln 2 in two parts, so `n * ln 2` is subtracted without rounding error.
    let r = x - n * 0.693_359_4 + n * 2.121_944_4e-4;
    let polynomial =
        ((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r
            + 1.666_666_5e-1)
            * r
            + 0.5;
    let mantissa = polynomial * (r * r) + r + 1.0;
    let power_of_two = f32::from_bits(
        (shifted
            .to_bits()
            .wrapping_sub(ROUND.to_bits())
            .wrapping_add(127))
            << 23,
    );
    mantissa * power_of_two
}

/// Defines `$name`, which runs `$generic` compiled for AVX2 and FMA when the processor has them
/// and as built (SSE2 on x86-64) otherwise. `$generic` and everything it calls in its inner loops
/// are `#[inline(always)]`, so the whole kernel is compiled again with 8-wide vectors. No `mul_add`
/// is written and Rust never contracts `a * b + c` on its own, so both versions give the same
/// bits: results do not depend on the processor.
macro_rules! dispatch_vector_width {
    ($(#[$meta:meta])* fn $name:ident => $generic:ident ($($arg:ident : $ty:ty),* $(,)?)) => {
        $(#[$meta])*
        fn $name($($arg: $ty),*) {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2,fma")]
                fn wide($($arg: $ty),*) {
                    $generic($($arg),*)
                }
                if std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
                {
                    // SAFETY: the processor has the features `wide` is compiled for.
                    return unsafe { wide($($arg),*) };
                }
            }
            $generic($($arg),*)
        }
    };
}

pub(crate) use dispatch_vector_width;

/// Hands a fully written `MaybeUninit` buffer over as initialised values.
///
/// # Safety
/// Every element of `values` must have been written.
pub(crate) unsafe fn assume_written(mut values: Vec<std::mem::MaybeUninit<f32>>) -> Vec<f32> {
    let (pointer, len, capacity) = (values.as_mut_ptr(), values.len(), values.capacity());
    std::mem::forget(values);
    // SAFETY: same allocation, layout and length; `MaybeUninit<f32>` has `f32`'s layout and the
    // caller guarantees every element is initialised.
    unsafe { Vec::from_raw_parts(pointer.cast::<f32>(), len, capacity) }
}

/// An output buffer of `len` values that the kernel writes in full: not zeroed first, which
/// would be one more pass over a feature-map-sized buffer.
pub(crate) fn unwritten(len: usize) -> Vec<std::mem::MaybeUninit<f32>> {
    let mut values = Vec::with_capacity(len);
    // SAFETY: `MaybeUninit` needs no initialisation; capacity is `len`.
    unsafe { values.set_len(len) };
    values
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_backward_step_overwrites_its_gradient_input_only_when_it_owns_it() {
        let gradient = flex_tensor(vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0], Shape::new([2, 3]));
        let shared = gradient.clone();
        let mut copy = writable_contiguous(gradient);
        copy.try_storage_mut::<f32>().unwrap()[0] = 9.0;
        assert_eq!(
            shared.as_slice::<f32>().unwrap(),
            [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
        );

        let buffer = shared.bytes().as_ptr();
        let owned = writable_contiguous(shared);
        assert_eq!(owned.bytes().as_ptr(), buffer);

        // A strided view is copied into its logical order.
        let transposed = writable_contiguous(owned.transpose(0, 1));
        assert_eq!(transposed.shape(), Shape::new([3, 2]));
        assert_eq!(
            transposed.as_slice::<f32>().unwrap(),
            [1.0, 4.0, 2.0, 5.0, 3.0, 6.0]
        );
    }

    #[test]
    fn the_written_out_exp_is_within_two_ulp_of_the_library_exp() {
        let mut worst = 0.0f32;
        for step in -86_990..=87_990 {
            let x = step as f32 * 1e-3;
            let (ours, library) = (exp(x), x.exp());
            worst = worst.max(((ours - library) / library).abs());
        }
        assert!(worst <= 2.0 * f32::EPSILON, "worst relative error {worst}");
    }

    #[test]
    fn the_sigmoid_is_exact_at_zero_saturates_and_keeps_nan() {
        assert_eq!(sigmoid(0.0), 0.5);
        assert_eq!(sigmoid(200.0), 1.0);
        assert!(sigmoid(-200.0) >= 0.0 && sigmoid(-200.0) < 1e-37);
        assert!(sigmoid(f32::NAN).is_nan());
        for z in [-20.0f32, -3.5, -0.25, 0.1, 2.0, 15.0] {
            let library = 1.0 / (1.0 + (-z).exp());
            assert!(
                (sigmoid(z) - library).abs() <= 2.0 * f32::EPSILON * library,
                "{z}"
            );
        }
    }
}
