//! The backbones by name: CIFAR ResNets (depth 6n+2 basic, 9n+2 bottleneck; He et al. 2016,
//! section 4.2) and ImageNet ResNets 18/34/50 (He et al. 2016, table 1).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::ModelError;

/// Which residual block a backbone stacks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockKind {
    /// Two 3x3 convolutions, expansion 1.
    Basic,
    /// 1x1-3x3-1x1 with expansion 4.
    Bottleneck,
}

/// The two ResNet families.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// 32 px CIFAR ResNets: a 16-channel 3x3 stem, three stages of widths 16/32/64.
    Cifar,
    /// ImageNet ResNets: a 7x7/2 stem with 3x3/2 max-pool, four stages of widths 64..512.
    ImageNet,
}

/// The shape of a backbone: its family, block and blocks per stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackboneSpec {
    /// CIFAR or ImageNet layout.
    pub family: Family,
    /// Block type.
    pub block: BlockKind,
    /// Blocks per stage.
    pub blocks_per_stage: &'static [usize],
    /// Inner width (`planes`) of each stage.
    pub stage_widths: &'static [usize],
}

macro_rules! backbones {
    ($($variant:ident = $name:literal, $family:ident, $block:ident, $blocks:expr, $widths:expr;)*) => {
        /// A backbone by name.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        pub enum Backbone {
            $(
                #[doc = concat!("`", $name, "`")]
                #[serde(rename = $name)]
                $variant,
            )*
        }

        impl Backbone {
            /// Every backbone, in the order tables list them.
            pub const ALL: &'static [Backbone] = &[$(Backbone::$variant),*];

            /// The backbone's name on the command line and in configs.
            pub fn name(self) -> &'static str {
                match self {
                    $(Backbone::$variant => $name,)*
                }
            }

            /// Family, block and stage layout.
            pub fn spec(self) -> BackboneSpec {
                match self {
                    $(Backbone::$variant => BackboneSpec {
                        family: Family::$family,
                        block: BlockKind::$block,
                        blocks_per_stage: &$blocks,
                        stage_widths: &$widths,
                    },)*
                }
            }
        }
    };
}

backbones! {
    ResNet20 = "resnet20", Cifar, Basic, [3, 3, 3], [16, 32, 64];
    ResNet32 = "resnet32", Cifar, Basic, [5, 5, 5], [16, 32, 64];
    ResNet44 = "resnet44", Cifar, Basic, [7, 7, 7], [16, 32, 64];
    ResNet56 = "resnet56", Cifar, Basic, [9, 9, 9], [16, 32, 64];
    ResNet110 = "resnet110", Cifar, Basic, [18, 18, 18], [16, 32, 64];
    ResNet164 = "resnet164", Cifar, Bottleneck, [18, 18, 18], [16, 32, 64];
    ResNet18 = "resnet18", ImageNet, Basic, [2, 2, 2, 2], [64, 128, 256, 512];
    ResNet34 = "resnet34", ImageNet, Basic, [3, 4, 6, 3], [64, 128, 256, 512];
    ResNet50 = "resnet50", ImageNet, Bottleneck, [3, 4, 6, 3], [64, 128, 256, 512];
}

impl fmt::Display for Backbone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Backbone {
    type Err = ModelError;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        let wanted = name.trim().to_ascii_lowercase().replace(['-', '_'], "");
        Backbone::ALL
            .iter()
            .copied()
            .find(|backbone| backbone.name() == wanted)
            .ok_or_else(|| ModelError::UnknownBackbone {
                name: name.to_string(),
                valid: Backbone::ALL
                    .iter()
                    .map(|backbone| backbone.name())
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depths_follow_the_paper_formulas() {
        for backbone in Backbone::ALL {
            let spec = backbone.spec();
            let blocks: usize = spec.blocks_per_stage.iter().sum();
            let layers_per_block = match spec.block {
                BlockKind::Basic => 2,
                BlockKind::Bottleneck => 3,
            };
            let depth = blocks * layers_per_block + 2;
            let digits: usize = backbone
                .name()
                .trim_start_matches("resnet")
                .parse()
                .unwrap();
            assert_eq!(depth, digits, "{backbone}");
        }
    }

    #[test]
    fn names_parse_loosely_and_unknown_names_list_the_valid_ones() {
        assert_eq!("ResNet-18".parse::<Backbone>().unwrap(), Backbone::ResNet18);
        assert_eq!("resnet_20".parse::<Backbone>().unwrap(), Backbone::ResNet20);
        let error = "vgg16".parse::<Backbone>().unwrap_err().to_string();
        assert!(
            error.contains("vgg16") && error.contains("resnet20") && error.contains("resnet50")
        );
    }
}
