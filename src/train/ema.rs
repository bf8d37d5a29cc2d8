//! An exponential moving average of the weights during training (Polyak and Juditsky 1992;
//! as timm's `ModelEmaV3` keeps it): after every optimizer step
//! `average = d * average + (1 - d) * weights` over every float tensor of the model, the
//! BatchNorm running statistics included, with the decay warmed up as
//! `d_t = min(d, (1 + t) / (10 + t))` after `t` updates so that a short run is not dominated by
//! its initialisation. The average, not the last step's weights, is what validation scores and
//! what the run keeps: on a small validation set it moves less from epoch to epoch than the
//! trained weights, so the best epoch it picks depends less on chance.

use std::collections::HashMap;

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::tensor::Tensor;

use crate::models::ResNet;

/// The moving average of a model's float tensors, by parameter id.
pub(crate) struct WeightAverage {
    decay: f64,
    updates: usize,
    /// Flattened averages, on the backend the training device wraps in autodiff.
    values: HashMap<ParamId, Tensor<1>>,
}

impl WeightAverage {
    /// Start the average at `model`'s weights, as if `updates` updates had been made (a resumed
    /// run's step count, which the decay's warmup needs).
    pub(crate) fn new(decay: f64, model: &ResNet, updates: usize) -> Self {
        let mut average = WeightAverage {
            decay,
            updates,
            values: HashMap::new(),
        };
        model.visit(&mut Collect {
            values: &mut average.values,
        });
        average
    }

    /// The decay of the next update.
    fn next_decay(&self) -> f64 {
        let t = self.updates as f64;
        self.decay.min((1.0 + t) / (10.0 + t))
    }

    /// Move the average towards `model`'s weights after an optimizer step.
    pub(crate) fn update(&mut self, model: &ResNet) {
        let decay = self.next_decay();
        model.visit(&mut Blend {
            values: &mut self.values,
            decay,
        });
        self.updates += 1;
    }

    /// `model` with its float tensors replaced by the average.
    pub(crate) fn apply_to(&self, model: ResNet) -> ResNet {
        model.map(&mut Replace {
            values: &self.values,
        })
    }
}

/// A tensor flattened, on the backend under autodiff: averaging it there records nothing
/// and pays no autodiff dispatch, which on a model of this size costs a tenth of a step.
fn flat<const D: usize>(param: &Param<Tensor<D>>) -> Tensor<1> {
    let tensor = param.val().without_autodiff();
    let len = tensor.shape().num_elements();
    tensor.reshape([len])
}

struct Collect<'a> {
    values: &'a mut HashMap<ParamId, Tensor<1>>,
}

impl ModuleVisitor for Collect<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        self.values.insert(param.id, flat(param));
    }
}

struct Blend<'a> {
    values: &'a mut HashMap<ParamId, Tensor<1>>,
    decay: f64,
}

impl ModuleVisitor for Blend<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let current = flat(param);
        let blended = match self.values.remove(&param.id) {
            Some(average) => average
                .mul_scalar(self.decay)
                .add(current.mul_scalar(1.0 - self.decay)),
            // A tensor the average has not seen starts at its value.
            None => current,
        };
        self.values.insert(param.id, blended);
    }
}

struct Replace<'a> {
    values: &'a HashMap<ParamId, Tensor<1>>,
}

impl ModuleMapper for Replace<'_> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let Some(average) = self.values.get(&param.id) else {
            return param;
        };
        let dims = param.val().dims();
        let average = average.clone().reshape(dims);
        param.map(
            |tensor| match (tensor.is_autodiff(), tensor.is_require_grad()) {
                (true, true) => average.autodiff().require_grad(),
                (true, false) => average.autodiff(),
                (false, _) => average,
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attention::testing::with_seeded_parameters;
    use crate::attention::{AttentionConfig, AttentionKind};
    use crate::models::{Backbone, ResNetConfig};
    use burn::tensor::Device;

    fn small_model() -> ResNet {
        let device = Device::flex().autodiff();
        ResNetConfig::new(
            Backbone::ResNet20,
            AttentionConfig::new(AttentionKind::Ppcr),
            2,
        )
        .with_input_size(8)
        .with_in_channels(1)
        .init(&device)
        .unwrap()
    }

    struct Values(Vec<Vec<f32>>);

    impl ModuleVisitor for Values {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            self.0
                .push(param.val().into_data().try_to_vec::<f32>().unwrap());
        }
    }

    fn values(model: &ResNet) -> Vec<Vec<f32>> {
        let mut collected = Values(Vec::new());
        model.visit(&mut collected);
        collected.0
    }

    /// Two updates towards `b` from `a`, by hand: the warmed-up decays are 1/10 and 2/11.
    #[test]
    fn the_average_follows_the_warmed_up_decay_over_every_tensor() {
        let model = small_model();
        let (a, b) = (
            with_seeded_parameters(model.clone(), 1),
            with_seeded_parameters(model, 2),
        );
        let mut average = WeightAverage::new(0.99, &a, 0);
        average.update(&b);
        average.update(&b);
        let averaged = values(&average.apply_to(a.clone()));
        let (a, b) = (values(&a), values(&b));
        assert_eq!(averaged.len(), a.len());
        let mut differing = 0;
        for ((averaged, a), b) in averaged.iter().zip(&a).zip(&b) {
            for ((&m, &x), &y) in averaged.iter().zip(a).zip(b) {
                let after_one = 0.1 * x as f64 + 0.9 * y as f64;
                let expected = 2.0 / 11.0 * after_one + 9.0 / 11.0 * y as f64;
                assert!((m as f64 - expected).abs() < 1e-5, "{m} vs {expected}");
                differing += usize::from(x != y);
            }
        }
        assert!(differing > 1000, "{differing}");
    }

    #[test]
    fn after_many_updates_the_decay_is_the_configured_one() {
        let model = small_model();
        let average = WeightAverage::new(0.9, &model, 1000);
        assert_eq!(average.next_decay(), 0.9);
        assert_eq!(WeightAverage::new(0.9, &model, 0).next_decay(), 0.1);
    }
}
