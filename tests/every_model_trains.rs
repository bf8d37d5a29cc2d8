//! Every backbone with every attention unit runs a forward and backward pass on a small batch,
//! produces finite logits, and hands a gradient to every parameter of its attention units.

use burn::module::{Module, ModuleVisitor, Param};
use burn::nn::loss::CrossEntropyLossConfig;
use burn::tensor::{Device, Gradients, Int, Tensor, TensorData};
use ppcr::attention::{AttentionConfig, AttentionKind};
use ppcr::models::{Backbone, ResNetConfig};

/// Counts float parameters with and without a gradient.
struct GradientPresence<'a> {
    grads: &'a Gradients,
    with: usize,
    without: usize,
}

impl ModuleVisitor for GradientPresence<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if !param.val().is_require_grad() {
            return; // running statistics
        }
        match param.val().grad(self.grads) {
            Some(grad) => {
                let sum: f32 = grad.abs().sum().into_scalar();
                assert!(sum.is_finite());
                self.with += 1;
            }
            None => self.without += 1,
        }
    }
}

#[test]
fn every_backbone_with_every_unit_runs_forward_and_backward() {
    let device = Device::flex().autodiff();
    // 16 px keeps the deepest nets cheap; stages are 16/8/4 (CIFAR) and 16/8/4/2 (ImageNet,
    // small stem), so PPCR still gets a real per-pixel weight map at every stage.
    let input_size = 16;
    let batch = 2;
    let images = Tensor::<4>::random(
        [batch, 1, input_size, input_size],
        burn::tensor::Distribution::Normal(0.0, 1.0),
        &device,
    );
    let targets = Tensor::<1, Int>::from_data(TensorData::new(vec![0i64, 2], [batch]), &device);
    let loss_fn = CrossEntropyLossConfig::new().init(&device);
    for backbone in Backbone::ALL {
        for kind in AttentionKind::ALL {
            let model = ResNetConfig::new(*backbone, AttentionConfig::new(*kind), 3)
                .with_in_channels(1)
                .with_input_size(input_size)
                .init(&device)
                .unwrap();
            let logits = model.try_forward(images.clone()).unwrap();
            assert_eq!(logits.dims(), [batch, 3]);
            let loss = loss_fn.forward(logits, targets.clone());
            let loss_value: f32 = loss.clone().into_scalar();
            assert!(
                loss_value.is_finite(),
                "{backbone}+{kind}: loss {loss_value}"
            );
            let grads = loss.backward();
            let mut presence = GradientPresence {
                grads: &grads,
                with: 0,
                without: 0,
            };
            let units: Vec<_> = model.attention_units().collect();
            // One unit in every block, of the kind asked for: a model without them would pass
            // the gradient checks below with nothing to check.
            assert!(!units.is_empty(), "{backbone}+{kind}: no attention units");
            for unit in &units {
                assert_eq!(unit.kind(), *kind, "{backbone}+{kind}");
                unit.visit(&mut presence);
            }
            assert_eq!(
                presence.without, 0,
                "{backbone}+{kind}: attention params without gradient"
            );
            // Only the identity and SimAM (parameter-free) have no parameters to check.
            let parameter_free = matches!(kind, AttentionKind::None | AttentionKind::SimAm);
            assert_eq!(
                presence.with == 0,
                parameter_free,
                "{backbone}+{kind}: {} attention params with gradient",
                presence.with
            );
            let mut all = GradientPresence {
                grads: &grads,
                with: 0,
                without: 0,
            };
            model.visit(&mut all);
            assert_eq!(all.without, 0, "{backbone}+{kind}: params without gradient");
            assert!(all.with > 0);
        }
    }
}
