//! Fine-tuning's two parameter groups: the pretrained parameters (everything but the classifier,
//! the attention units and a contrastive projection head) step at the learning rate times a factor, or not at all while the
//! backbone is frozen; the rest step at the learning rate. As PyTorch's per-group `lr` and
//! `requires_grad = False`: a frozen parameter gets no update, no weight decay and no momentum.

use std::collections::HashSet;

use burn::module::{Module, ModuleVisitor, Param, ParamId};
use burn::optim::{GradientsParams, ModuleOptimizer};
use burn::store::ModuleSnapshot;
use burn::tensor::Tensor;

use crate::models::{ParameterRole, ResNet};

/// The pretrained parameters of a model and how they step.
#[derive(Debug, Clone)]
pub struct BackboneGroup {
    ids: HashSet<ParamId>,
    /// Learning-rate factor of the group.
    pub lr_factor: f64,
    /// Epochs (from the first) during which the group does not step.
    pub frozen_epochs: usize,
}

impl BackboneGroup {
    /// The group of `model`: every parameter but the classifier's and the attention units'.
    pub fn of(model: &ResNet, lr_factor: f64, frozen_epochs: usize) -> Self {
        let ids = model
            .collect(None, None, false)
            .into_iter()
            .filter(|tensor| ParameterRole::of(&tensor.name) == ParameterRole::Backbone)
            .filter_map(|tensor| tensor.param_id.map(ParamId::from))
            .collect();
        BackboneGroup {
            ids,
            lr_factor,
            frozen_epochs,
        }
    }

    /// One SGD step of `model` at `lr` in `epoch` (0-based): the group at `lr * lr_factor`, or
    /// not at all while frozen; the other parameters at `lr`.
    pub fn step(
        &self,
        optimizer: &mut ModuleOptimizer,
        lr: f64,
        epoch: usize,
        model: ResNet,
        mut grads: GradientsParams,
    ) -> ResNet {
        let mut backbone = GradientsParams::new();
        model.visit(&mut MoveGradients {
            ids: &self.ids,
            from: &mut grads,
            to: &mut backbone,
        });
        let model = optimizer.step(lr, model, grads);
        if epoch < self.frozen_epochs {
            model
        } else {
            optimizer.step(lr * self.lr_factor, model, backbone)
        }
    }
}

/// Moves the gradients of the parameters in `ids` from one set to another.
struct MoveGradients<'a> {
    ids: &'a HashSet<ParamId>,
    from: &'a mut GradientsParams,
    to: &'a mut GradientsParams,
}

impl ModuleVisitor for MoveGradients<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if self.ids.contains(&param.id)
            && let Some(gradient) = self.from.remove::<D>(param.id)
        {
            self.to.register(param.id, gradient);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attention::{AttentionConfig, AttentionKind};
    use crate::models::{Backbone, ResNetConfig};
    use burn::nn::loss::CrossEntropyLossConfig;
    use burn::store::bridge;
    use burn::tensor::{Device, Int, TensorData};

    /// One step at lr 0.1 from `start` on a fixed batch: each tensor's path and change.
    fn changes(start: &ResNet, lr_factor: f64, frozen_epochs: usize) -> Vec<(String, Vec<f32>)> {
        let device = Device::flex().autodiff();
        let start = start.clone();
        let input = Tensor::<4>::from_data(
            TensorData::new(
                crate::attention::testing::seeded_values(2 * 64, 1),
                [2, 1, 8, 8],
            ),
            &device,
        );
        let targets = Tensor::<1, Int>::from_data(TensorData::new(vec![0i64, 2], [2]), &device);
        let loss = CrossEntropyLossConfig::new()
            .init(&device)
            .forward(start.forward(input), targets);
        let grads = GradientsParams::from_grads(loss.backward(), &start);
        let group = BackboneGroup::of(&start, lr_factor, frozen_epochs);
        let mut optimizer = crate::train::default_optimizer();
        let stepped = group.step(&mut optimizer, 0.1, 0, start.clone(), grads);
        let before = start.valid().collect(None, None, false);
        let after = stepped.valid().collect(None, None, false);
        before
            .into_iter()
            .zip(after)
            .map(|(b, a)| {
                let old = bridge::to_data(&b).unwrap().try_to_vec::<f32>().unwrap();
                let new = bridge::to_data(&a).unwrap().try_to_vec::<f32>().unwrap();
                (b.name, new.iter().zip(&old).map(|(x, y)| x - y).collect())
            })
            .collect()
    }

    #[test]
    fn a_frozen_backbone_does_not_move_and_the_factor_scales_its_step() {
        let start = ResNetConfig::new(
            Backbone::ResNet20,
            AttentionConfig::new(AttentionKind::Ppcr),
            3,
        )
        .with_in_channels(1)
        .with_input_size(8)
        .init(&Device::flex().autodiff())
        .unwrap();
        let full = changes(&start, 1.0, 0);
        let tenth = changes(&start, 0.1, 0);
        let frozen = changes(&start, 1.0, 1);
        let mut backbone_moved = false;
        for (((name, full), (_, tenth)), (_, frozen)) in full.iter().zip(&tenth).zip(&frozen) {
            // BatchNorm statistics move in the forward pass, not the step.
            if name.contains("running_") {
                continue;
            }
            let backbone = ParameterRole::of(name) == ParameterRole::Backbone;
            if backbone {
                assert!(
                    frozen.iter().all(|d| *d == 0.0),
                    "{name} moved while frozen"
                );
                for (t, f) in tenth.iter().zip(full) {
                    assert!((t - 0.1 * f).abs() <= 1e-6, "{name}: {t} vs 0.1 x {f}");
                }
                backbone_moved |= full.iter().any(|d| *d != 0.0);
            } else {
                assert_eq!(tenth, full, "{name} steps at the full rate");
                assert_eq!(frozen, full, "{name} trains while the backbone is frozen");
            }
        }
        assert!(backbone_moved);
    }
}
