//! The projection head of supervised contrastive learning (Khosla et al., "Supervised
//! Contrastive Learning", NeurIPS 2020): a two-layer MLP from the pooled features to a small
//! embedding, L2-normalised, on which the contrastive loss is computed. It exists only while
//! training: classification, evaluation, export and parameter counts leave it out.
//!
//! The PPCR authors' journal version trains with SupCon but their released code omits the
//! head; this is the SupCon paper's (hidden width = feature width, ReLU, 128 outputs).

use burn::config::Config;
use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::tensor::{Device, Tensor, activation::relu};

/// Configuration of a [`ProjectionHead`].
#[derive(Config, Debug)]
pub struct ProjectionHeadConfig {
    /// Width of the pooled features it reads (also its hidden width).
    pub features: usize,
    /// Width of the embedding.
    #[config(default = 128)]
    pub dim: usize,
}

/// Linear, ReLU, linear, L2 normalisation.
#[derive(Module, Debug)]
pub struct ProjectionHead {
    /// First layer (features to features).
    pub hidden: Linear,
    /// Second layer (features to the embedding).
    pub output: Linear,
}

impl ProjectionHeadConfig {
    /// Build the head.
    pub fn init(&self, device: &Device) -> ProjectionHead {
        ProjectionHead {
            hidden: LinearConfig::new(self.features, self.features).init(device),
            output: LinearConfig::new(self.features, self.dim).init(device),
        }
    }
}

impl ProjectionHead {
    /// The unit-length embedding `[B, dim]` of pooled features `[B, features]`.
    pub fn forward(&self, features: Tensor<2>) -> Tensor<2> {
        let embedding = self.output.forward(relu(self.hidden.forward(features)));
        let norm = embedding
            .clone()
            .square()
            .sum_dim(1)
            .add_scalar(1e-12)
            .sqrt();
        embedding / norm
    }
}
