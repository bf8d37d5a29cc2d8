//! What a parameter of a ppcr ResNet is, from its path (burn's, enum variants included): the
//! one place that says which tensors pretrained weights set, which a fine-tuning factor scales,
//! and which exist only for training.

/// The part of the network a parameter belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParameterRole {
    /// Stem, convolutions, BatchNorms and shortcuts: what torchvision's ResNets have too.
    Backbone,
    /// The final linear layer.
    Classifier,
    /// An attention unit's own parameters.
    Attention,
    /// The contrastive projection head (training only).
    Projection,
}

impl ParameterRole {
    /// The role of the parameter at `path`.
    pub fn of(path: &str) -> Self {
        if path.starts_with("projection.") {
            ParameterRole::Projection
        } else if path.starts_with("classifier.") {
            ParameterRole::Classifier
        } else if path.split('.').any(|part| part == "attention") {
            ParameterRole::Attention
        } else {
            ParameterRole::Backbone
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_map_to_their_roles() {
        for (path, role) in [
            ("stem.conv.weight", ParameterRole::Backbone),
            (
                "stages.1.blocks.0.Basic.shortcut.Projection.conv.weight",
                ParameterRole::Backbone,
            ),
            (
                "stages.0.blocks.0.Basic.attention.Ppcr.pixel_context_weights",
                ParameterRole::Attention,
            ),
            ("classifier.bias", ParameterRole::Classifier),
            ("projection.hidden.weight", ParameterRole::Projection),
        ] {
            assert_eq!(ParameterRole::of(path), role, "{path}");
        }
    }
}
