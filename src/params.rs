//! Trainable-parameter counting, as papers and PyTorch's `sum(p.numel() for p in
//! model.parameters())` report it.
//!
//! burn's `Module::num_params` also counts BatchNorm's running mean and variance, which are
//! buffers, not parameters; published counts (ResNet-18: 11,689,512) exclude them.

use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::Tensor;

/// Field names of burn-nn's running statistics (`RunningState` buffers).
const RUNNING_STATISTICS: [&str; 2] = ["running_mean", "running_var"];

struct TrainableCounter {
    path: Vec<String>,
    count: usize,
}

impl ModuleVisitor for TrainableCounter {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let is_buffer = self
            .path
            .last()
            .is_some_and(|name| RUNNING_STATISTICS.contains(&name.as_str()));
        if !is_buffer {
            self.count += param.lazy_shape().num_elements();
        }
    }
}

/// Number of trainable parameters of `module` (running statistics excluded).
pub fn count_trainable<M: Module>(module: &M) -> usize {
    let mut counter = TrainableCounter {
        path: Vec::new(),
        count: 0,
    };
    module.visit(&mut counter);
    counter.count
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::nn::BatchNormConfig;
    use burn::tensor::Device;

    #[test]
    fn batch_norm_counts_gamma_and_beta_only() {
        let norm = BatchNormConfig::new(10).init(&Device::flex());
        assert_eq!(count_trainable(&norm), 20);
        // burn's own count includes the two running statistics.
        assert_eq!(norm.num_params(), 40);
    }
}
