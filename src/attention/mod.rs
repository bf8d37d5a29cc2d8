//! Attention units that plug into a CNN block, and the factory that picks one by name.
//!
//! The PPCR unit (Zhang et al., arXiv 2303.01917) and the units the paper compares against:
//! SE, ECA, CBAM, SRM, GCT and SimAM. A unit maps a `[B, C, H, W]` feature map to one of the
//! same shape and knows nothing of the backbone it sits in; [`AttentionConfig`] builds any of
//! them from one name, as timm's `attn_layer` does.

mod cbam;
pub(crate) mod channel_ops;
mod eca;
mod factory;
mod gct;
mod ppcr;
mod se;
mod simam;
mod srm;
#[cfg(test)]
pub(crate) mod testing;

pub use cbam::{Cbam, CbamConfig};
pub use eca::{EfficientChannelAttention, EfficientChannelAttentionConfig, eca_kernel_size};
pub use factory::{Attention, AttentionConfig, AttentionKind, AttentionUnit, UnitSpec};
pub use gct::{GatedChannelTransformation, GatedChannelTransformationConfig};
pub use ppcr::{Ppcr, PpcrConfig, pixel_normalize, pyramid_maps};
pub use se::{SqueezeExcitation, SqueezeExcitationConfig};
pub use simam::{SimAm, SimAmConfig};
pub use srm::{StyleRecalibration, StyleRecalibrationConfig};

/// Why an attention unit could not be built or applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AttentionError {
    /// The configuration cannot make a working unit.
    #[error("invalid attention configuration: {0}")]
    InvalidConfig(String),
    /// The input's shape does not fit the unit.
    #[error("{0}")]
    ShapeMismatch(String),
    /// The unit name is not one the factory knows.
    #[error("unknown attention unit '{name}'; valid units: {valid}")]
    UnknownUnit {
        /// The name asked for.
        name: String,
        /// The names the factory knows, comma-separated.
        valid: String,
    },
}
