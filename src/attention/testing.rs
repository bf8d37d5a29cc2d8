//! Test helpers shared by the attention units' tests: a device, seeded tensors, and a
//! finite-difference gradient check over a module's input and every one of its parameters.

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::tensor::{Device, Gradients, Tensor, TensorData};

use super::{Ppcr, PpcrConfig, pyramid_maps};

/// Under CI (`.ci/run` sets `PPCR_REQUIRE_ALL=1`) a test that cannot run fails with `notice`;
/// elsewhere it prints the notice and the caller returns (cargo shows it with `--nocapture`).
pub fn skip(notice: &str) {
    assert!(
        std::env::var_os("PPCR_REQUIRE_ALL").is_none(),
        "PPCR_REQUIRE_ALL is set and a test cannot run: {notice}"
    );
    eprintln!("NOTICE: skipped: {notice}");
}

/// The CPU device the tests run on.
pub fn device() -> Device {
    Device::flex()
}

/// Values uniform in `[-1, 1)` from a small xorshift generator, so tests need no RNG crate.
pub fn seeded_values(len: usize, seed: u64) -> Vec<f32> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            ((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// A `[B, C, H, W]` tensor of seeded values in `[-1, 1)`.
pub fn random_tensor(shape: [usize; 4], seed: u64, device: &Device) -> Tensor<4> {
    let len = shape.iter().product();
    Tensor::from_data(TensorData::new(seeded_values(len, seed), shape), device)
}

/// A parameter's value and autodiff gradient, flattened.
struct ParamGradient {
    id: ParamId,
    values: Vec<f32>,
    gradient: Vec<f32>,
}

struct CollectGradients<'a> {
    grads: &'a Gradients,
    found: Vec<ParamGradient>,
}

impl ModuleVisitor for CollectGradients<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let value = param.val();
        let values = value.clone().into_data().try_to_vec::<f32>().unwrap();
        let gradient = value
            .grad(self.grads)
            .map(|grad| grad.into_data().try_to_vec::<f32>().unwrap())
            .unwrap_or_else(|| vec![0.0; values.len()]);
        self.found.push(ParamGradient {
            id: param.id,
            values,
            gradient,
        });
    }
}

/// Sets one element of one parameter, leaving the rest of the module untouched.
struct SetElement {
    id: ParamId,
    index: usize,
    value: f32,
}

impl ModuleMapper for SetElement {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        if param.id != self.id {
            return param;
        }
        let (index, value) = (self.index, self.value);
        param.map(|tensor| {
            let device = tensor.device();
            let dims = tensor.dims();
            let mut data = tensor.into_data().try_to_vec::<f32>().unwrap();
            data[index] = value;
            Tensor::from_data(TensorData::new(data, dims), &device).require_grad()
        })
    }
}

/// Replaces every float parameter with seeded values, so a check never depends on the
/// device's shared random generator (which tests running in parallel advance in any order).
struct SeededParameters {
    next_seed: u64,
}

impl ModuleMapper for SeededParameters {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        self.next_seed += 1;
        let seed = self.next_seed;
        param.map(|tensor| {
            let device = tensor.device();
            let dims = tensor.dims();
            let values = seeded_values(dims.iter().product(), 500 + seed);
            let tensor = Tensor::from_data(TensorData::new(values, dims), &device);
            if device.is_autodiff() {
                tensor.require_grad()
            } else {
                tensor
            }
        })
    }
}

/// `module` with every float tensor (parameters and running statistics) replaced by values
/// seeded from `seed`: two seeds give two modules with the same parameter ids and different
/// values, whatever other tests do with the shared random generator.
pub fn with_seeded_parameters<M: Module>(module: M, seed: u64) -> M {
    module.map(&mut SeededParameters {
        next_seed: seed * 100_000,
    })
}

/// `sum(output * probe)` accumulated in f64, so rounding in the sum does not swamp the
/// finite differences.
fn probed_loss(output: Tensor<4>, probe: &[f32]) -> f64 {
    let values = output.into_data().try_to_vec::<f32>().unwrap();
    values
        .iter()
        .zip(probe)
        .map(|(v, p)| *v as f64 * *p as f64)
        .sum()
}

/// Up to `count` indices spread evenly over `0..len`.
fn sample_indices(len: usize, count: usize) -> Vec<usize> {
    if len <= count {
        return (0..len).collect();
    }
    (0..count)
        .map(|i| i * len / count + (i % 3))
        .map(|i| i.min(len - 1))
        .collect()
}

fn assert_close(what: &str, index: usize, analytic: f64, numeric: f64) {
    let tolerance = 2e-3 + 2e-2 * analytic.abs().max(numeric.abs());
    assert!(
        (analytic - numeric).abs() <= tolerance,
        "{what}[{index}]: autodiff gradient {analytic:.6} vs finite difference {numeric:.6}"
    );
}

/// Check autodiff gradients of `sum(forward(module, x) * probe)` with respect to the input and
/// to every float parameter against central finite differences (step 1e-3, f32 forward,
/// f64 loss). `module` must live on an autodiff device; its parameters are first replaced by
/// seeded values in [-1, 1), so the check is the same on every run.
pub fn assert_gradients_match<M, F>(module: M, input_shape: [usize; 4], forward: F)
where
    M: Module + Clone,
    F: Fn(&M, Tensor<4>) -> Tensor<4>,
{
    let module = module.map(&mut SeededParameters { next_seed: 0 });
    let device = module
        .devices()
        .first()
        .cloned()
        .unwrap_or_else(|| self::device().autodiff());
    let step = 1e-3f32;
    let input_values = seeded_values(input_shape.iter().product(), 99);
    let input = Tensor::<4>::from_data(TensorData::new(input_values.clone(), input_shape), &device)
        .require_grad();
    let output = forward(&module, input.clone());
    let probe = seeded_values(output.shape().num_elements(), 1234);
    let probe_tensor =
        Tensor::<4>::from_data(TensorData::new(probe.clone(), output.dims()), &device);
    let grads = (output * probe_tensor).sum().backward();

    let input_gradient = input.grad(&grads).expect("input has no gradient");
    let input_gradient = input_gradient.into_data().try_to_vec::<f32>().unwrap();
    let loss_at_input = |values: Vec<f32>| {
        let x = Tensor::<4>::from_data(TensorData::new(values, input_shape), &device);
        probed_loss(forward(&module, x), &probe)
    };
    for index in sample_indices(input_values.len(), 24) {
        let mut plus = input_values.clone();
        plus[index] += step;
        let mut minus = input_values.clone();
        minus[index] -= step;
        let numeric = (loss_at_input(plus) - loss_at_input(minus)) / (2.0 * step as f64);
        assert_close("input", index, input_gradient[index] as f64, numeric);
    }

    let mut collector = CollectGradients {
        grads: &grads,
        found: Vec::new(),
    };
    module.visit(&mut collector);
    let input_tensor = Tensor::<4>::from_data(TensorData::new(input_values, input_shape), &device);
    for (param_number, param) in collector.found.iter().enumerate() {
        for index in sample_indices(param.values.len(), 12) {
            let loss_with = |value: f32| {
                let perturbed = module.clone().map(&mut SetElement {
                    id: param.id,
                    index,
                    value,
                });
                probed_loss(forward(&perturbed, input_tensor.clone()), &probe)
            };
            let base = param.values[index];
            let numeric = (loss_with(base + step) - loss_with(base - step)) / (2.0 * step as f64);
            let what = format!("parameter {param_number}");
            assert_close(&what, index, param.gradient[index] as f64, numeric);
        }
    }
}

/// A tensor's values, flattened.
pub fn values<const D: usize>(tensor: Tensor<D>) -> Vec<f32> {
    tensor.into_data().try_to_vec::<f32>().unwrap()
}

/// A PPCR unit whose pixel-context weights are seeded values in `[-2, 2)` (zero weights would
/// hide most of the kernels' arithmetic), tracked for gradients on an autodiff device.
pub fn ppcr_with_random_weights(
    channels: usize,
    size: [usize; 2],
    levels: usize,
    seed: u64,
    device: &Device,
) -> Ppcr {
    let mut ppcr = PpcrConfig::new(channels, size)
        .with_levels(levels)
        .init(device)
        .unwrap();
    let maps = pyramid_maps(levels);
    let weights = random_tensor([1, maps, size[0], size[1]], seed, device)
        .reshape([maps, size[0], size[1]])
        .mul_scalar(2.0);
    ppcr.pixel_context_weights = Param::from_tensor(if device.is_autodiff() {
        weights.require_grad()
    } else {
        weights
    });
    ppcr
}

/// Autodiff gradients of `sum(forward(x) * probe)` with respect to `x` and PPCR's weights,
/// through the unit's kernel path (`kernel`) or its tensor formulation.
pub fn ppcr_gradients(
    ppcr: &Ppcr,
    x: &Tensor<4>,
    probe: &Tensor<4>,
    kernel: bool,
) -> (Vec<f32>, Vec<f32>) {
    let x = x.clone().require_grad();
    let y = if kernel {
        ppcr.forward(x.clone())
    } else {
        ppcr.try_tensor_forward(x.clone()).unwrap()
    };
    let grads = (y * probe.clone()).sum().backward();
    let grad_x = x.grad(&grads).expect("input gradient");
    let grad_w = ppcr
        .pixel_context_weights
        .val()
        .grad(&grads)
        .expect("weight gradient");
    (values(grad_x), values(grad_w))
}

/// Assert that a fused kernel's `fused` values equal the tensor formulation's `reference`
/// within `tolerance`, relative to `1 + |reference|`.
pub fn assert_matches_reference(fused: &[f32], reference: &[f32], tolerance: f32, what: &str) {
    assert_eq!(fused.len(), reference.len(), "{what}: lengths differ");
    for (index, (f, r)) in fused.iter().zip(reference).enumerate() {
        assert!(
            (f - r).abs() <= tolerance * (1.0 + r.abs()),
            "{what} {index}: fused {f} vs tensor formulation {r}"
        );
    }
}

/// Asserts that a unit's `fused_available` takes the fused path on Flex, with and without
/// autodiff.
pub fn assert_fused_on_flex(fused_available: fn(&Tensor<4>) -> bool) {
    for device in [device(), device().autodiff()] {
        assert!(fused_available(&random_tensor([1, 2, 2, 2], 1, &device)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attention::{SqueezeExcitation, SqueezeExcitationConfig};

    #[test]
    #[should_panic(expected = "autodiff gradient")]
    fn the_check_catches_a_wrong_gradient() {
        // Detaching the unit's input hides its dependence on x from autodiff (the input
        // gradient comes out zero), so the check must report the mismatch.
        let se = SqueezeExcitationConfig::new(8)
            .with_reduction(2)
            .init(&device().autodiff());
        assert_gradients_match(se, [2, 8, 2, 2], |unit: &SqueezeExcitation, x| {
            unit.forward(x.clone().detach()) + x.mul_scalar(0.0)
        });
    }
}
