//! Backbones the attention units plug into: CIFAR and ImageNet ResNets with one unit in every
//! residual block (He et al., CVPR 2016), built from one [`ResNetConfig`].

pub mod autocast;
mod backbone;
mod blocks;
pub mod layers;
mod onnx;
mod parameter_role;
pub mod pretrained;
mod projection;
mod resnet;

pub use backbone::{Backbone, BackboneSpec, BlockKind, Family};
pub use blocks::{
    BasicBlock, BlockSpec, Bottleneck, ProjectionShortcut, ResidualBlock, Shortcut, ShortcutKind,
    ZeroPadShortcut, conv, conv_output_size,
};
pub use parameter_role::ParameterRole;
pub use projection::{ProjectionHead, ProjectionHeadConfig};
pub use resnet::{ResNet, ResNetConfig, Stage, Stem, StemKind};

use crate::attention::AttentionError;

/// Why a model could not be built or run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ModelError {
    /// The backbone name is not one we know.
    #[error("unknown backbone '{name}'; valid backbones: {valid}")]
    UnknownBackbone {
        /// The name asked for.
        name: String,
        /// The valid names, comma-separated.
        valid: String,
    },
    /// The configuration cannot make a working model.
    #[error("invalid model configuration: {0}")]
    InvalidConfig(String),
    /// An attention unit refused its place in the model.
    #[error(transparent)]
    Attention(#[from] AttentionError),
    /// The input does not fit the model.
    #[error("{0}")]
    InputMismatch(String),
}
