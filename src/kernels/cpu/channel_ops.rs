//! The channel attention units' plane statistics and plane scaling as fused CPU kernels on the
//! Flex backend, each one pass over the feature map with a hand-written backward step.
//!
//! Used by SE (Hu et al., CVPR 2018), ECA (Wang et al., CVPR 2020), SRM (Lee et al., ICCV 2019)
//! and GCT (Yang et al., CVPR 2020) through `channel_ops`. As burn tensor operations these steps
//! are several passes each, plus an autodiff node per operation: the product's backward is a
//! broadcast product for `dX`, then an element-wise product and a reduction for the gate's
//! gradient; SRM's variance and GCT's sum of squares materialise the deviations or squares.
//! Here:
//! - a statistic reads each plane once while it sits in cache (the variance twice: mean, then
//!   squared deviations), and its backward writes its term of `dX` (for the mean, a broadcast
//!   view: nothing is written);
//! - the product writes `Y` in one pass, and its backward sums `dY X` per plane for the gate's
//!   gradient and writes `dX = dY g` over the `dY` it is handed, in the same pass.

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

use super::common::{
    assume_written, contiguous_values, dispatch_vector_width, flex_tensor, items_per_task,
    lane_sum, lane_sum_pairs, on_flex_f32, unwritten, writable_contiguous,
};

/// A statistic of each channel plane (the `H x W` values of one sample and channel).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlaneStatistic {
    /// The mean.
    Mean,
    /// The variance about the plane's mean, divided by `max(H W - correction, 1)`
    /// (`correction = 1` is torch's unbiased `var`; a 1x1 plane divides by 1 instead of 0).
    Variance {
        /// Subtracted from the number of values in the denominator.
        correction: usize,
    },
    /// The sum of the squared values.
    SumOfSquares,
}

impl PlaneStatistic {
    /// The divisor of [`PlaneStatistic::Variance`] for planes of `values` values.
    pub fn variance_divisor(correction: usize, values: usize) -> usize {
        values.saturating_sub(correction).max(1)
    }
}

/// The fused plane statistics and plane scaling as backend extension operations.
///
/// Implemented for `Flex` (forward only) and `Autodiff<Flex>` (forward plus hand-written
/// backward nodes); any other backend takes the tensor formulation of `channel_ops`, which
/// [`fused_available`] decides.
#[backend_extension(Flex, Autodiff)]
pub trait ChannelOpsFused: Backend {
    /// `statistic` of every channel plane of `x` (`[B, C, H, W]`), as `[B, C]`.
    fn channel_plane_statistic(
        x: FloatTensor<Self>,
        statistic: PlaneStatistic,
    ) -> FloatTensor<Self>;

    /// `x` (`[B, C, H, W]`) with plane `(b, c)` multiplied by `gate[b, c]` (`gate`: `[B, C]`).
    fn channel_scale_planes(x: FloatTensor<Self>, gate: FloatTensor<Self>) -> FloatTensor<Self>;
}

/// Whether the fused operations can run on `x`: it lives on the Flex backend (plain or under
/// autodiff) and holds `f32` values.
pub fn fused_available(x: &Tensor<4>) -> bool {
    on_flex_f32(x)
}

/// [`ChannelOpsFused::channel_plane_statistic`]; the caller checks [`fused_available`].
pub fn plane_statistic(x: Tensor<4>, statistic: PlaneStatistic) -> Tensor<2> {
    Tensor::from_dispatch(<Dispatch as ChannelOpsFused>::channel_plane_statistic(
        x.into_dispatch(),
        statistic,
    ))
}

/// [`ChannelOpsFused::channel_scale_planes`]; the caller checks [`fused_available`] for `x`,
/// and `gate` (computed from `x`) lives on the same backend.
pub fn scale_planes(x: Tensor<4>, gate: Tensor<2>) -> Tensor<4> {
    Tensor::from_dispatch(<Dispatch as ChannelOpsFused>::channel_scale_planes(
        x.into_dispatch(),
        gate.into_dispatch(),
    ))
}

impl ChannelOpsFused for Flex {
    fn channel_plane_statistic(x: FlexTensor, statistic: PlaneStatistic) -> FlexTensor {
        statistic_forward(&x, statistic)
    }

    fn channel_scale_planes(x: FlexTensor, gate: FlexTensor) -> FlexTensor {
        scale_forward(&x, &gate)
    }
}

impl<C: CheckpointStrategy> ChannelOpsFused for Autodiff<Flex, C> {
    fn channel_plane_statistic(
        x: FloatTensor<Self>,
        statistic: PlaneStatistic,
    ) -> FloatTensor<Self> {
        let guards = [x.node()];
        let x = x.into_primitive();
        let output = statistic_forward(&x, statistic);
        match StatisticBackward
            .prepare::<C>(guards)
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish(StatisticState { x, statistic }, output),
            OpsKind::UnTracked(prep) => prep.finish(output),
        }
    }

    fn channel_scale_planes(x: FloatTensor<Self>, gate: FloatTensor<Self>) -> FloatTensor<Self> {
        let guards = [x.node(), gate.node()];
        let x = x.into_primitive();
        let gate = gate.into_primitive();
        let output = scale_forward(&x, &gate);
        match ScaleBackward
            .prepare::<C>(guards)
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish(ScaleState { x, gate }, output),
            OpsKind::UnTracked(prep) => prep.finish(output),
        }
    }
}

/// The autodiff node of [`ChannelOpsFused::channel_plane_statistic`].
#[derive(Debug)]
struct StatisticBackward;

/// The statistic's input (shared, not copied) and which statistic it was.
#[derive(Debug, Clone)]
struct StatisticState {
    x: FlexTensor,
    statistic: PlaneStatistic,
}

impl Backward<Flex, 1> for StatisticBackward {
    type State = StatisticState;

    fn backward(
        self,
        ops: Ops<Self::State, 1>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        let [x_node] = ops.parents;
        let grad_output = grads.consume::<Flex>(&ops.node);
        if let Some(node) = x_node {
            let grad_x = statistic_backward(&ops.state.x, &grad_output, ops.state.statistic);
            grads.register::<Flex>(node.id, grad_x);
        }
    }
}

/// The autodiff node of [`ChannelOpsFused::channel_scale_planes`].
#[derive(Debug)]
struct ScaleBackward;

/// The product's inputs (shared, not copied).
#[derive(Debug, Clone)]
struct ScaleState {
    x: FlexTensor,
    gate: FlexTensor,
}

impl Backward<Flex, 2> for ScaleBackward {
    type State = ScaleState;

    fn backward(
        self,
        ops: Ops<Self::State, 2>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        let [x_node, gate_node] = ops.parents;
        let grad_output = grads.consume::<Flex>(&ops.node);
        let state = ops.state;
        let (grad_x, grad_gate) = scale_backward(
            &state.x,
            &state.gate,
            grad_output,
            x_node.is_some(),
            gate_node.is_some(),
        );
        if let (Some(node), Some(grad)) = (x_node, grad_x) {
            grads.register::<Flex>(node.id, grad);
        }
        if let (Some(node), Some(grad)) = (gate_node, grad_gate) {
            grads.register::<Flex>(node.id, grad);
        }
    }
}

/// `(planes, plane_len)` of a `[B, C, H, W]` tensor.
fn planes_of(x: &FlexTensor) -> (usize, usize) {
    let [batch, channels, height, width] = x.shape().dims();
    (batch * channels, height * width)
}

/// `statistic` of one plane (the variance centred on the plane's own mean, two passes in cache).
#[inline(always)]
fn plane_value(plane: &[f32], statistic: PlaneStatistic) -> f32 {
    let n = plane.len();
    match statistic {
        PlaneStatistic::Mean => lane_sum(plane, |x| x) / n as f32,
        PlaneStatistic::Variance { correction } => {
            let mean = lane_sum(plane, |x| x) / n as f32;
            let squares = lane_sum(plane, |x| (x - mean) * (x - mean));
            squares / PlaneStatistic::variance_divisor(correction, n) as f32
        }
        PlaneStatistic::SumOfSquares => lane_sum(plane, |x| x * x),
    }
}

dispatch_vector_width! {
    /// [`plane_value`] of consecutive planes of `plane_len` values into `out`, one each.
    fn statistic_planes => statistic_planes_generic(
        planes: &[f32],
        out: &mut [f32],
        plane_len: usize,
        statistic: PlaneStatistic,
    )
}

#[inline(always)]
fn statistic_planes_generic(
    planes: &[f32],
    out: &mut [f32],
    plane_len: usize,
    statistic: PlaneStatistic,
) {
    for (value, plane) in out.iter_mut().zip(planes.chunks(plane_len.max(1))) {
        *value = plane_value(plane, statistic);
    }
}

/// The statistic of every plane, `[B, C]`, planes split over rayon tasks.
fn statistic_forward(x: &FlexTensor, statistic: PlaneStatistic) -> FlexTensor {
    let [batch, channels, _, _] = x.shape().dims();
    let (planes, plane_len) = planes_of(x);
    let values = contiguous_values(x);
    let per_task = items_per_task(plane_len);
    let mut output = vec![0.0f32; planes];
    output
        .par_chunks_mut(per_task.max(1))
        .zip(values.par_chunks((per_task * plane_len).max(1)))
        .for_each(|(out, planes)| statistic_planes(planes, out, plane_len, statistic));
    flex_tensor(output, Shape::new([batch, channels]))
}

dispatch_vector_width! {
    /// The statistic's gradient for consecutive planes: `out = d statistic / d x * grad`.
    fn statistic_backward_planes => statistic_backward_planes_generic(
        planes: &[f32],
        grad: &[f32],
        out: &mut [std::mem::MaybeUninit<f32>],
        plane_len: usize,
        statistic: PlaneStatistic,
    )
}

/// Variance: `dX = g 2 (x - mean) / divisor` (the mean's own gradient term sums to zero over
/// the plane); sum of squares: `dX = g 2 x`.
#[inline(always)]
fn statistic_backward_planes_generic(
    planes: &[f32],
    grad: &[f32],
    out: &mut [std::mem::MaybeUninit<f32>],
    plane_len: usize,
    statistic: PlaneStatistic,
) {
    let planes = planes.chunks(plane_len.max(1));
    for ((plane, out), &g) in planes.zip(out.chunks_mut(plane_len.max(1))).zip(grad) {
        let n = plane.len();
        match statistic {
            PlaneStatistic::Variance { correction } => {
                let mean = lane_sum(plane, |x| x) / n as f32;
                let scale = 2.0 * g / PlaneStatistic::variance_divisor(correction, n) as f32;
                for (dx, &x) in out.iter_mut().zip(plane) {
                    dx.write(scale * (x - mean));
                }
            }
            PlaneStatistic::SumOfSquares => {
                let scale = 2.0 * g;
                for (dx, &x) in out.iter_mut().zip(plane) {
                    dx.write(scale * x);
                }
            }
            PlaneStatistic::Mean => unreachable!("the mean's gradient is a broadcast view"),
        }
    }
}

/// The gradient of `sum(grad * statistic(x))` with respect to `x`.
fn statistic_backward(
    x: &FlexTensor,
    grad_output: &FlexTensor,
    statistic: PlaneStatistic,
) -> FlexTensor {
    let shape = x.shape();
    let [batch, channels, _, _] = shape.dims();
    let (planes, plane_len) = planes_of(x);
    let grad = contiguous_values(grad_output);
    if statistic == PlaneStatistic::Mean {
        // Every value of a plane gets `g / n`: a `[B, C, 1, 1]` tensor seen at `x`'s shape, which
        // the gradient sum adds into the product's `dX` without a pass of its own.
        let per_value = grad.iter().map(|g| g / plane_len as f32).collect();
        let per_plane = flex_tensor(per_value, Shape::new([batch, channels, 1, 1]));
        return <Flex as burn::backend::ops::FloatTensorOps<Flex>>::float_expand(per_plane, shape);
    }
    let values = contiguous_values(x);
    let per_task = items_per_task(plane_len);
    let mut output = unwritten(planes * plane_len);
    output
        .par_chunks_mut((per_task * plane_len).max(1))
        .zip(values.par_chunks((per_task * plane_len).max(1)))
        .zip(grad.par_chunks(per_task.max(1)))
        .for_each(|((out, planes), grad)| {
            statistic_backward_planes(planes, grad, out, plane_len, statistic)
        });
    // SAFETY: `statistic_backward_planes` writes every value of every plane.
    flex_tensor(unsafe { assume_written(output) }, shape)
}

dispatch_vector_width! {
    /// `out = plane * gate` for consecutive planes, one gate each.
    fn scale_planes_kernel => scale_planes_generic(
        planes: &[f32],
        gate: &[f32],
        out: &mut [std::mem::MaybeUninit<f32>],
        plane_len: usize,
    )
}

#[inline(always)]
fn scale_planes_generic(
    planes: &[f32],
    gate: &[f32],
    out: &mut [std::mem::MaybeUninit<f32>],
    plane_len: usize,
) {
    let planes = planes.chunks(plane_len.max(1));
    for ((plane, out), &g) in planes.zip(out.chunks_mut(plane_len.max(1))).zip(gate) {
        for (y, &x) in out.iter_mut().zip(plane) {
            y.write(x * g);
        }
    }
}

/// Checks that `gate` holds one value per plane of `x`.
fn assert_gate_fits(x: &FlexTensor, gate: &FlexTensor) {
    let [batch, channels, _, _] = x.shape().dims();
    assert_eq!(
        gate.shape().dims::<2>(),
        [batch, channels],
        "channel scale: gate {:?} does not fit input {:?}",
        gate.shape(),
        x.shape()
    );
}

/// `Y = X g`, planes split over rayon tasks.
fn scale_forward(x: &FlexTensor, gate: &FlexTensor) -> FlexTensor {
    assert_gate_fits(x, gate);
    let (planes, plane_len) = planes_of(x);
    let values = contiguous_values(x);
    let gate = contiguous_values(gate);
    let per_task = items_per_task(plane_len);
    let mut output = unwritten(planes * plane_len);
    output
        .par_chunks_mut((per_task * plane_len).max(1))
        .zip(values.par_chunks((per_task * plane_len).max(1)))
        .zip(gate.par_chunks(per_task.max(1)))
        .for_each(|((out, planes), gate)| scale_planes_kernel(planes, gate, out, plane_len));
    // SAFETY: `scale_planes_kernel` writes every value of every plane.
    flex_tensor(unsafe { assume_written(output) }, x.shape())
}

dispatch_vector_width! {
    /// The product's backward step for consecutive planes: `grad_gate[p] = sum dY X` (unless
    /// `grad_gate` is empty), then `grad` (which holds `dY`) becomes `dX = dY g` (unless
    /// `write_grad_x` is false).
    fn scale_backward_planes => scale_backward_planes_generic(
        planes: &[f32],
        gate: &[f32],
        grad: &mut [f32],
        grad_gate: &mut [f32],
        plane_len: usize,
        write_grad_x: bool,
    )
}

#[inline(always)]
fn scale_backward_planes_generic(
    planes: &[f32],
    gate: &[f32],
    grad: &mut [f32],
    grad_gate: &mut [f32],
    plane_len: usize,
    write_grad_x: bool,
) {
    let planes = planes.chunks(plane_len.max(1));
    for (index, (plane, grad)) in planes.zip(grad.chunks_mut(plane_len.max(1))).enumerate() {
        if let Some(grad_gate) = grad_gate.get_mut(index) {
            *grad_gate = lane_sum_pairs(grad, plane, |dy, x| dy * x);
        }
        if write_grad_x {
            let g = gate[index];
            for dy in grad.iter_mut() {
                *dy *= g;
            }
        }
    }
}

/// Gradients of `sum(dY * X g)` with respect to `x` (written over `grad_output`) and `gate`,
/// each only where asked for.
fn scale_backward(
    x: &FlexTensor,
    gate: &FlexTensor,
    grad_output: FlexTensor,
    need_x: bool,
    need_gate: bool,
) -> (Option<FlexTensor>, Option<FlexTensor>) {
    let (planes, plane_len) = planes_of(x);
    let values = contiguous_values(x);
    let gate_values = contiguous_values(gate);
    let per_task = items_per_task(plane_len);
    let mut grad = writable_contiguous(grad_output);
    let mut grad_gate = vec![0.0f32; if need_gate { planes } else { 0 }];
    let grad_values = grad
        .try_storage_mut::<f32>()
        .expect("writable_contiguous returns an unshared tensor");
    let tasks = grad_values
        .par_chunks_mut((per_task * plane_len).max(1))
        .zip(values.par_chunks((per_task * plane_len).max(1)))
        .zip(gate_values.par_chunks(per_task.max(1)));
    if need_gate {
        tasks
            .zip(grad_gate.par_chunks_mut(per_task.max(1)))
            .for_each(|(((grad, planes), gate), grad_gate)| {
                scale_backward_planes(planes, gate, grad, grad_gate, plane_len, need_x)
            });
    } else {
        tasks.for_each(|((grad, planes), gate)| {
            scale_backward_planes(planes, gate, grad, &mut [], plane_len, need_x)
        });
    }
    (
        need_x.then_some(grad),
        need_gate.then(|| flex_tensor(grad_gate, gate.shape())),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attention::channel_ops::ChannelOps;
    use crate::attention::testing::{
        assert_fused_on_flex, assert_gradients_match, assert_matches_reference, device,
        random_tensor, seeded_values,
    };
    use crate::attention::{
        EfficientChannelAttentionConfig, GatedChannelTransformationConfig, SqueezeExcitationConfig,
        StyleRecalibrationConfig,
    };
    use burn::tensor::TensorData;

    /// Uneven planes (odd lengths, shorter and longer than a vector), single-value planes,
    /// batch 1 and 3.
    const SHAPES: [[usize; 4]; 5] = [
        [2, 3, 4, 4],
        [1, 5, 3, 7],
        [3, 2, 1, 1],
        [2, 4, 9, 2],
        [1, 16, 8, 8],
    ];

    const STATISTICS: [PlaneStatistic; 4] = [
        PlaneStatistic::Mean,
        PlaneStatistic::Variance { correction: 1 },
        PlaneStatistic::Variance { correction: 0 },
        PlaneStatistic::SumOfSquares,
    ];

    fn values<const D: usize>(tensor: Tensor<D>) -> Vec<f32> {
        tensor.into_data().try_to_vec::<f32>().unwrap()
    }

    #[test]
    fn the_fused_path_is_taken_on_flex_with_and_without_autodiff() {
        assert_fused_on_flex(fused_available);
    }

    #[test]
    fn statistics_equal_hand_computed_values() {
        // One plane [1, 2, 3, 6]: mean 3, squared deviations 4 + 1 + 0 + 9 = 14.
        let x = Tensor::<4>::from_data(
            TensorData::new(vec![1.0f32, 2., 3., 6.], [1, 1, 2, 2]),
            &device(),
        );
        let statistic = |statistic| values(plane_statistic(x.clone(), statistic));
        assert_eq!(statistic(PlaneStatistic::Mean), [3.0]);
        assert_eq!(
            statistic(PlaneStatistic::Variance { correction: 1 }),
            [14.0 / 3.0]
        );
        assert_eq!(statistic(PlaneStatistic::Variance { correction: 0 }), [3.5]);
        assert_eq!(statistic(PlaneStatistic::SumOfSquares), [50.0]);
        let gate = Tensor::<2>::from_data(TensorData::new(vec![0.5f32], [1, 1]), &device());
        assert_eq!(values(scale_planes(x, gate)), [0.5, 1.0, 1.5, 3.0]);
    }

    #[test]
    fn a_single_value_plane_has_zero_variance_without_dividing_by_zero() {
        let x = random_tensor([2, 3, 1, 1], 4, &device());
        let variance = values(plane_statistic(
            x,
            PlaneStatistic::Variance { correction: 1 },
        ));
        assert_eq!(variance, [0.0; 6]);
    }

    #[test]
    fn fused_statistics_and_scaling_match_the_tensor_formulation() {
        for (seed, shape) in SHAPES.into_iter().enumerate() {
            // Offset from zero, so the variance's centring matters.
            let x = random_tensor(shape, seed as u64, &device())
                .mul_scalar(3.0)
                .add_scalar(2.0);
            for statistic in STATISTICS {
                let fused = values(ChannelOps::Fused.statistic(x.clone(), statistic));
                let reference = values(ChannelOps::Tensor.statistic(x.clone(), statistic));
                let what = format!("{shape:?} {statistic:?}");
                assert_matches_reference(&fused, &reference, 1e-5, &what);
            }
            let gate = random_tensor([1, 1, shape[0], shape[1]], seed as u64 + 5, &device())
                .reshape([shape[0], shape[1]]);
            let fused = values(ChannelOps::Fused.scale(x.clone(), gate.clone()));
            let reference = values(ChannelOps::Tensor.scale(x, gate));
            assert_eq!(fused, reference, "{shape:?} scale");
        }
    }

    /// Gradients of `sum(upstream * scale(x, f(statistic(x))))` with respect to `x` and the gate
    /// weights, for one way of running the steps.
    fn gradients(
        ops: ChannelOps,
        statistic: PlaneStatistic,
        shape: [usize; 4],
        seed: u64,
    ) -> (Vec<f32>, Vec<f32>) {
        let device = device().autodiff();
        let [batch, channels, _, _] = shape;
        let x = random_tensor(shape, seed, &device)
            .mul_scalar(2.0)
            .add_scalar(1.0)
            .detach()
            .require_grad();
        let weights = random_tensor([1, 1, 1, channels], seed + 1, &device)
            .reshape([1, channels])
            .detach()
            .require_grad();
        let upstream = random_tensor(shape, seed + 2, &device);
        // The gate depends on the statistic, so `x` gets gradient through both steps.
        let gate = (ops.statistic(x.clone(), statistic) * weights.clone()).tanh();
        let y = ops.scale(x.clone(), gate);
        let grads = (y * upstream).sum().backward();
        let _ = batch;
        (
            values(x.grad(&grads).unwrap()),
            values(weights.grad(&grads).unwrap()),
        )
    }

    #[test]
    fn fused_gradients_match_the_tensor_formulation() {
        for (seed, shape) in SHAPES.into_iter().enumerate() {
            for statistic in STATISTICS {
                let seed = 10 * seed as u64;
                let (fused_x, fused_w) = gradients(ChannelOps::Fused, statistic, shape, seed);
                let (tensor_x, tensor_w) = gradients(ChannelOps::Tensor, statistic, shape, seed);
                let what = format!("{shape:?} {statistic:?}");
                assert_matches_reference(&fused_x, &tensor_x, 2e-5, &format!("{what} dx"));
                assert_matches_reference(&fused_w, &tensor_w, 2e-5, &format!("{what} dw"));
            }
        }
    }

    #[test]
    fn each_unit_gives_its_tensor_formulation_values_and_gradients() {
        let shape = [3, 16, 5, 3];
        let device = device().autodiff();
        let se = SqueezeExcitationConfig::new(16)
            .with_reduction(4)
            .init(&device);
        let eca = EfficientChannelAttentionConfig::new(16).init(&device);
        let srm = StyleRecalibrationConfig::new(16).init(&device);
        let gct = GatedChannelTransformationConfig::new(16).init(&device);
        type Forward<'a> = &'a dyn Fn(Tensor<4>) -> Tensor<4>;
        let units: [(&str, Forward, Forward); 4] = [
            ("se", &|x| se.forward(x), &|x| se.tensor_forward(x)),
            ("eca", &|x| eca.forward(x), &|x| eca.tensor_forward(x)),
            ("srm", &|x| srm.forward(x), &|x| srm.tensor_forward(x)),
            ("gct", &|x| gct.forward(x), &|x| gct.tensor_forward(x)),
        ];
        let upstream = random_tensor(shape, 7, &device);
        for (name, fused, tensor) in units {
            let run = |forward: Forward| {
                let x = random_tensor(shape, 8, &device).detach().require_grad();
                let y = forward(x.clone());
                let grads = (y.clone() * upstream.clone()).sum().backward();
                (values(y), values(x.grad(&grads).unwrap()))
            };
            let ((fused_y, fused_dx), (tensor_y, tensor_dx)) = (run(fused), run(tensor));
            assert_matches_reference(&fused_y, &tensor_y, 1e-5, &format!("{name} value"));
            assert_matches_reference(&fused_dx, &tensor_dx, 2e-5, &format!("{name} gradient"));
        }
    }

    #[test]
    fn fused_statistic_gradients_match_finite_differences() {
        // Through a unit, so the check also covers parameters: SRM uses the mean and the
        // variance, GCT the sum of squares, both the scaling.
        let device = device().autodiff();
        let srm = StyleRecalibrationConfig::new(6).init(&device);
        assert_gradients_match(srm, [3, 6, 3, 5], |unit, x| unit.forward(x));
        let gct = GatedChannelTransformationConfig::new(6).init(&device);
        assert_gradients_match(gct, [2, 6, 1, 7], |unit, x| unit.forward(x));
    }

    #[test]
    fn the_wide_compilation_gives_the_same_bits_as_the_baseline_one() {
        let plane_len = 21;
        let planes = 4;
        let x = seeded_values(planes * plane_len, 1);
        let dy = seeded_values(planes * plane_len, 2);
        let gate = seeded_values(planes, 3);
        let bits = |values: &[f32]| values.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        type Statistic = fn(&[f32], &mut [f32], usize, PlaneStatistic);
        type StatisticBackward =
            fn(&[f32], &[f32], &mut [std::mem::MaybeUninit<f32>], usize, PlaneStatistic);
        for statistic in STATISTICS {
            let forward_with = |kernel: Statistic| {
                let mut out = vec![0.0; planes];
                kernel(&x, &mut out, plane_len, statistic);
                bits(&out)
            };
            assert_eq!(
                forward_with(statistic_planes),
                forward_with(statistic_planes_generic)
            );
            if statistic == PlaneStatistic::Mean {
                continue;
            }
            let backward_with = |kernel: StatisticBackward| {
                let mut out = unwritten(x.len());
                kernel(&x, &gate, &mut out, plane_len, statistic);
                // SAFETY: the kernel writes every value.
                bits(&unsafe { assume_written(out) })
            };
            assert_eq!(
                backward_with(statistic_backward_planes),
                backward_with(statistic_backward_planes_generic)
            );
        }
        type Scale = fn(&[f32], &[f32], &mut [std::mem::MaybeUninit<f32>], usize);
        let scale_with = |kernel: Scale| {
            let mut out = unwritten(x.len());
            kernel(&x, &gate, &mut out, plane_len);
            // SAFETY: the kernel writes every value.
            bits(&unsafe { assume_written(out) })
        };
        assert_eq!(
            scale_with(scale_planes_kernel),
            scale_with(scale_planes_generic)
        );
        type ScaleBackward = fn(&[f32], &[f32], &mut [f32], &mut [f32], usize, bool);
        let scale_backward_with = |kernel: ScaleBackward| {
            let (mut grad, mut grad_gate) = (dy.clone(), vec![0.0; planes]);
            kernel(&x, &gate, &mut grad, &mut grad_gate, plane_len, true);
            (bits(&grad), bits(&grad_gate))
        };
        assert_eq!(
            scale_backward_with(scale_backward_planes),
            scale_backward_with(scale_backward_planes_generic)
        );
    }
}
