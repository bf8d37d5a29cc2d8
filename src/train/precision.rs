//! Mixed-precision training on a GPU: the precision setting and the dynamic loss scale.
//!
//! Micikevicius et al., "Mixed Precision Training" (ICLR 2018), as PyTorch's AMP does it: the
//! backbone's convolutions compute in a 16-bit type ([`crate::models::autocast`]) while the
//! weights, the optimizer and everything else stay in `f32`. `f16` has 5 exponent bits, so a
//! small gradient flowing back through a convolution can round to zero: the loss is multiplied
//! by a scale before the backward pass and the gradients divided by it after. The scale starts
//! at 2^16, halves (and the step is skipped) whenever a gradient overflows to infinity or NaN,
//! and doubles after 2000 steps in a row without one, as `torch.amp.GradScaler` does. `bf16`
//! has `f32`'s exponent range and needs no scale.

use std::fmt;

use burn::module::{Module, ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::tensor::{Device, FloatDType, Tensor};
use serde::{Deserialize, Serialize};

use crate::runfiles::LossScaleState;

/// The type the backbone's convolutions compute in during training.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// Everything in `f32`.
    #[default]
    F32,
    /// Convolutions in IEEE half precision, with a dynamic loss scale.
    F16,
    /// Convolutions in bfloat16 (`f32`'s exponent, 8 bits of mantissa).
    Bf16,
}

impl Precision {
    /// The 16-bit type the convolutions compute in, or `None` for `f32`.
    pub fn convolution_dtype(self) -> Option<FloatDType> {
        match self {
            Precision::F32 => None,
            Precision::F16 => Some(FloatDType::F16),
            Precision::Bf16 => Some(FloatDType::BF16),
        }
    }

    /// Whether the loss needs a scale (only `f16` lacks the range).
    pub fn needs_loss_scale(self) -> bool {
        self == Precision::F16
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Precision::F32 => "f32",
            Precision::F16 => "f16",
            Precision::Bf16 => "bf16",
        })
    }
}

/// Why a precision cannot train on a device: `None` where it can. The CPU backend computes in
/// `f32` (its kernels are `f32`; half precision would only be slower there), and a GPU must
/// support the 16-bit type.
pub fn unsupported_on(precision: Precision, device: &Device) -> Option<String> {
    let dtype = precision.convolution_dtype()?;
    if device.clone().without_autodiff() == Device::flex() {
        return Some(format!(
            "--precision {precision} is for GPUs (--device cuda or wgpu): the CPU backend \
             trains in f32"
        ));
    }
    (!device.supports_dtype(dtype)).then(|| {
        format!(
            "--precision {precision}: this device does not support {precision} (f32 and the \
             other 16-bit type may work)"
        )
    })
}

/// The dynamic loss scale of `f16` training.
#[derive(Debug, Clone, PartialEq)]
pub struct LossScaler {
    state: LossScaleState,
}

impl LossScaler {
    /// The scale a run starts with, as PyTorch's `GradScaler`.
    pub const INITIAL_SCALE: f32 = 65536.0;
    /// Steps in a row without an overflow after which the scale doubles.
    pub const GROWTH_INTERVAL: u32 = 2000;

    /// A new scaler at [`Self::INITIAL_SCALE`].
    pub fn new() -> Self {
        Self::from_state(LossScaleState {
            scale: Self::INITIAL_SCALE,
            steps_without_overflow: 0,
        })
    }

    /// A scaler continuing from a saved state (a resumed run).
    pub fn from_state(state: LossScaleState) -> Self {
        Self { state }
    }

    /// What a checkpoint keeps, so a resumed run scales as the uninterrupted one.
    pub fn state(&self) -> LossScaleState {
        self.state.clone()
    }

    /// The factor the loss is multiplied by before the backward pass.
    pub fn scale(&self) -> f32 {
        self.state.scale
    }

    /// The gradients of `module`'s parameters divided by the scale, or `None` where any of them
    /// is infinite or NaN: then the step must be skipped, and the scale halves. After
    /// [`Self::GROWTH_INTERVAL`] steps in a row without an overflow it doubles. A power of two,
    /// the scale divides exactly. Reads one value back from the device.
    pub fn unscale<M: Module>(
        &mut self,
        grads: GradientsParams,
        module: &M,
    ) -> Option<GradientsParams> {
        let mut visitor = Unscale {
            grads,
            factor: 1.0 / self.state.scale,
            magnitude: None,
        };
        module.visit(&mut visitor);
        let finite = visitor
            .magnitude
            .map(|sum| sum.into_scalar::<f32>().is_finite())
            .unwrap_or(true);
        if finite {
            self.state.steps_without_overflow += 1;
            if self.state.steps_without_overflow >= Self::GROWTH_INTERVAL {
                self.state.scale *= 2.0;
                self.state.steps_without_overflow = 0;
            }
            Some(visitor.grads)
        } else {
            self.state.scale = (self.state.scale / 2.0).max(1.0);
            self.state.steps_without_overflow = 0;
            None
        }
    }
}

impl Default for LossScaler {
    fn default() -> Self {
        Self::new()
    }
}

/// Divides every gradient of a module's parameters by the scale and sums their magnitudes: one
/// infinity or NaN anywhere makes the sum non-finite.
struct Unscale {
    grads: GradientsParams,
    factor: f32,
    magnitude: Option<Tensor<1>>,
}

impl Unscale {
    fn unscale<const D: usize>(&mut self, id: ParamId) {
        let Some(grad) = self.grads.remove::<D>(id) else {
            return;
        };
        let grad = grad.mul_scalar(self.factor);
        let sum = grad.clone().abs().sum();
        self.magnitude = Some(match self.magnitude.take() {
            Some(total) => total + sum,
            None => sum,
        });
        self.grads.register(id, grad);
    }
}

impl ModuleVisitor for Unscale {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        self.unscale::<D>(param.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::nn::{Linear, LinearConfig};
    use burn::tensor::TensorData;

    fn linear_and_grads(scale: f32, poison: Option<f32>) -> (Linear, GradientsParams) {
        let device = Device::flex().autodiff();
        let linear = LinearConfig::new(2, 1).init(&device);
        let x = Tensor::<2>::from_data(TensorData::new(vec![1.0f32, 2.0], [1, 2]), &device);
        let loss = linear.forward(x).sum().mul_scalar(scale);
        let loss = match poison {
            Some(value) => loss.mul_scalar(value),
            None => loss,
        };
        let grads = GradientsParams::from_grads(loss.backward(), &linear);
        (linear, grads)
    }

    fn grad_values(grads: &GradientsParams, linear: &Linear) -> Vec<f32> {
        let mut values = grads
            .get::<2>(linear.weight.id)
            .unwrap()
            .into_data()
            .try_to_vec::<f32>()
            .unwrap();
        values.extend(
            grads
                .get::<1>(linear.bias.as_ref().unwrap().id)
                .unwrap()
                .into_data()
                .try_to_vec::<f32>()
                .unwrap(),
        );
        values
    }

    #[test]
    fn unscaling_divides_the_gradients_by_the_scale_exactly() {
        let mut scaler = LossScaler::new();
        let (linear, grads) = linear_and_grads(scaler.scale(), None);
        // d(sum(w x + b))/dw = x, /db = 1.
        let unscaled = scaler.unscale(grads, &linear).expect("finite gradients");
        assert_eq!(grad_values(&unscaled, &linear), vec![1.0, 2.0, 1.0]);
        assert_eq!(scaler.scale(), LossScaler::INITIAL_SCALE);
        assert_eq!(scaler.state().steps_without_overflow, 1);
    }

    #[test]
    fn an_overflow_skips_the_step_and_halves_the_scale() {
        for poison in [f32::INFINITY, f32::NAN] {
            let mut scaler = LossScaler::new();
            let (linear, grads) = linear_and_grads(scaler.scale(), Some(poison));
            assert!(scaler.unscale(grads, &linear).is_none(), "{poison}");
            assert_eq!(scaler.scale(), LossScaler::INITIAL_SCALE / 2.0);
            assert_eq!(scaler.state().steps_without_overflow, 0);
        }
    }

    #[test]
    fn the_scale_doubles_after_the_growth_interval() {
        let mut scaler = LossScaler::from_state(LossScaleState {
            scale: 8.0,
            steps_without_overflow: LossScaler::GROWTH_INTERVAL - 2,
        });
        for expected in [8.0, 16.0, 16.0] {
            let (linear, grads) = linear_and_grads(scaler.scale(), None);
            let unscaled = scaler.unscale(grads, &linear).unwrap();
            assert_eq!(grad_values(&unscaled, &linear), vec![1.0, 2.0, 1.0]);
            assert_eq!(scaler.scale(), expected);
        }
        assert_eq!(scaler.state().steps_without_overflow, 1);
    }

    #[test]
    fn precision_names_are_those_of_the_config_file() {
        for (precision, name) in [
            (Precision::F32, "f32"),
            (Precision::F16, "f16"),
            (Precision::Bf16, "bf16"),
        ] {
            assert_eq!(precision.to_string(), name);
            let json = serde_json::to_string(&precision).unwrap();
            assert_eq!(json, format!("\"{name}\""));
        }
        assert!(Precision::F16.needs_loss_scale() && !Precision::Bf16.needs_loss_scale());
    }

    #[test]
    fn half_precision_is_refused_on_the_cpu_backend() {
        let device = Device::flex().autodiff();
        assert_eq!(unsupported_on(Precision::F32, &device), None);
        for precision in [Precision::F16, Precision::Bf16] {
            let why = unsupported_on(precision, &device).expect("refused");
            assert!(why.contains("CPU backend"), "{why}");
        }
    }
}
