//! Averages of the weights over training, kept beside the trained weights:
//! - an exponential moving average (Polyak and Juditsky 1992; as timm's `ModelEmaV3` keeps
//!   it): after every optimizer step `average = d * average + (1 - d) * weights`, with the
//!   decay warmed up as `d_t = min(d, (1 + t) / (10 + t))` after `t` updates so that a short
//!   run is not dominated by its initialisation;
//! - an equal-weight average (stochastic weight averaging, Izmailov et al. 2018): the mean of
//!   the weights at the end of each epoch of the averaging phase; a mean of `n` models keeps
//!   `n / (n + 1)` of itself when the next one comes in.
//!
//! Both cover every float tensor of the model, the BatchNorm running statistics included. The
//! average, not the last step's weights, is what validation scores and what the run keeps.
//!
//! burn's `RunningState` (BatchNorm's statistics) is shared by every clone of a module and
//! written through by `Module::map`, and its last update waits in a per-thread slot until the
//! next read: the average is read from, and applied to, a `valid()` copy, which has taken in
//! that update and owns its statistics, so the trained model's are never touched.

use std::collections::HashMap;

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::tensor::Tensor;

use crate::models::ResNet;

/// How an average weighs a new model against what it holds.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Weighting {
    /// Exponential, with this decay (warmed up).
    Exponential(f64),
    /// Every model the same: the mean.
    Equal,
}

/// An average of a model's float tensors, by parameter id.
pub(crate) struct WeightAverage {
    weighting: Weighting,
    /// Updates made so far (for the equal weighting: models in the mean, less one).
    updates: usize,
    /// Flattened averages, on the backend the training device wraps in autodiff.
    values: HashMap<ParamId, Tensor<1>>,
}

impl WeightAverage {
    /// Start the average at `model`'s weights, as if `updates` updates had been made (a resumed
    /// run's step count, which the decay's warmup needs).
    pub(crate) fn exponential(decay: f64, model: &ResNet, updates: usize) -> Self {
        Self::start(Weighting::Exponential(decay), model, updates)
    }

    /// Start the mean of models at `model`, as if it were already the mean of `models` of
    /// them (a resumed run's count).
    pub(crate) fn equal(model: &ResNet, models: usize) -> Self {
        Self::start(Weighting::Equal, model, models.saturating_sub(1))
    }

    fn start(weighting: Weighting, model: &ResNet, updates: usize) -> Self {
        let mut average = WeightAverage {
            weighting,
            updates,
            values: HashMap::new(),
        };
        model.valid().visit(&mut Collect {
            values: &mut average.values,
        });
        average
    }

    /// The weight the average keeps of itself at the next update.
    fn next_decay(&self) -> f64 {
        let t = self.updates as f64;
        match self.weighting {
            Weighting::Exponential(decay) => decay.min((1.0 + t) / (10.0 + t)),
            Weighting::Equal => (1.0 + t) / (2.0 + t),
        }
    }

    /// Move the average towards `model`'s weights.
    pub(crate) fn update(&mut self, model: &ResNet) {
        let decay = self.next_decay();
        model.valid().visit(&mut Blend {
            values: &mut self.values,
            decay,
        });
        self.updates += 1;
    }

    /// An inference copy of `model` (see [`Module::valid`]) holding the average, with
    /// BatchNorm statistics of its own.
    pub(crate) fn apply_to(&self, model: &ResNet) -> ResNet {
        model.valid().map(&mut Replace {
            values: &self.values,
        })
    }
}

/// A tensor of a `valid()` model flattened. It is on the backend under autodiff: averaging it
/// there records nothing and pays no autodiff dispatch, which on a model of this size costs a
/// tenth of a step.
fn flat<const D: usize>(param: &Param<Tensor<D>>) -> Tensor<1> {
    let tensor = param.val();
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
        param.map(|_| average)
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
        let mut average = WeightAverage::exponential(0.99, &a, 0);
        average.update(&b);
        average.update(&b);
        let averaged = values(&average.apply_to(&a));
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
        let average = WeightAverage::exponential(0.9, &model, 1000);
        assert_eq!(average.next_decay(), 0.9);
        assert_eq!(WeightAverage::exponential(0.9, &model, 0).next_decay(), 0.1);
    }

    /// The mean of three models with their own values, and a mean resumed from two models
    /// weighs the third by a third.
    #[test]
    fn the_equal_average_is_the_mean_of_the_models() {
        // Clones, so that the parameters keep their ids (burn shares their BatchNorm
        // statistics, which therefore end up equal).
        let model = small_model();
        let [a, b, c] = [1, 2, 3].map(|seed| with_seeded_parameters(model.clone(), seed));
        let mut average = WeightAverage::equal(&a, 1);
        average.update(&b);
        average.update(&c);
        let two = {
            let mut two = WeightAverage::equal(&a, 1);
            two.update(&b);
            two.apply_to(&a)
        };
        let mut resumed = WeightAverage::equal(&two, 2);
        resumed.update(&c);
        let [mean, resumed, a, b, c] =
            [&average.apply_to(&a), &resumed.apply_to(&a), &a, &b, &c].map(values);
        let mut differing = 0;
        for (tensor, mean) in mean.iter().enumerate() {
            for (i, &m) in mean.iter().enumerate() {
                let (x, y, z) = (a[tensor][i], b[tensor][i], c[tensor][i]);
                let expected = (x as f64 + y as f64 + z as f64) / 3.0;
                assert!((m as f64 - expected).abs() < 1e-5, "{m} vs {expected}");
                assert!((resumed[tensor][i] - m).abs() < 1e-6);
                differing += usize::from(x != y && y != z);
            }
        }
        assert!(differing > 1000, "{differing}");
    }

    /// burn's BatchNorm statistics are shared by a module's clones and take a step's update
    /// only at their next read: the average must see that update, and applying the average must
    /// leave the trained model's statistics alone.
    #[test]
    fn the_average_reads_the_last_update_and_leaves_the_trained_statistics_alone() {
        use burn::tensor::Distribution;
        let live = small_model().train();
        let statistics = |model: &ResNet| {
            model
                .stem
                .norm
                .running_mean
                .value_sync()
                .into_data()
                .try_to_vec::<f32>()
                .unwrap()
        };
        let initial = statistics(&live);
        let mut other = WeightAverage::exponential(0.5, &live, 100);
        let images = Tensor::<4>::random(
            [4, 1, 8, 8],
            Distribution::Normal(1.0, 2.0),
            &live.stem.norm.gamma.val().device(),
        );
        let _ = live.forward(images);
        let average = WeightAverage::equal(&live, 1);
        let averaged = average.apply_to(&live);
        // The average started after the step, so it holds the step's statistics.
        let trained = statistics(&live);
        assert_ne!(trained, initial);
        assert_eq!(statistics(&averaged), trained);
        // An average whose statistics differ (half way from the initial ones), applied to the trained
        // model, does not move the trained model's.
        other.update(&live);
        let halved = other.apply_to(&live);
        assert_ne!(statistics(&halved), trained);
        assert_eq!(statistics(&live), trained);
    }
}
