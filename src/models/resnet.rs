//! ResNet with an attention unit in every residual block, for 28-64 px medical images, 32 px
//! CIFAR and 224 px ImageNet-style inputs (He et al., "Deep Residual Learning for Image
//! Recognition", CVPR 2016).
//!
//! A unit that needs the feature map's size (PPCR's per-pixel weights) gets each stage's size
//! from [`ResNetConfig::stage_sizes`], derived from the configured input size.

use burn::config::Config;
use burn::module::Module;
use burn::nn::conv::Conv2d;
use burn::nn::pool::{MaxPool2d, MaxPool2dConfig};
use burn::nn::{BatchNorm, BatchNormConfig, Linear, LinearConfig, PaddingConfig2d};
use burn::tensor::{Device, Tensor};
use serde::{Deserialize, Serialize};

use super::blocks::{
    BasicBlock, BlockSpec, Bottleneck, ResidualBlock, ShortcutKind, conv, conv_output_size,
};
use super::layers;
use super::{Backbone, BlockKind, Family, ModelError};
use crate::attention::{Attention, AttentionConfig};

/// The first layers before the residual stages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum StemKind {
    /// 7x7 stride-2 convolution and 3x3 stride-2 max-pool (ImageNet ResNets; 4x downsampling).
    #[serde(rename = "imagenet")]
    Strided,
    /// 3x3 stride-1 convolution, no pooling: CIFAR ResNets, and ImageNet ResNets on 28-64 px
    /// images, where a 4x downsampling stem would leave too few pixels.
    #[serde(rename = "small")]
    Small,
}

/// Configuration of a [`ResNet`].
#[derive(Config, Debug)]
pub struct ResNetConfig {
    /// Which backbone.
    pub backbone: Backbone,
    /// The attention unit in every block.
    pub attention: AttentionConfig,
    /// Number of output classes.
    pub num_classes: usize,
    /// Input channels: 1 for grey medical images, 3 for colour.
    #[config(default = 3)]
    pub in_channels: usize,
    /// Training input size (square), from which every stage's feature-map size follows.
    #[config(default = 32)]
    pub input_size: usize,
    /// Stem; `None` picks the family's: small for CIFAR ResNets, and for ImageNet ResNets
    /// small up to 64 px and strided above.
    #[config(default = "None")]
    pub stem: Option<StemKind>,
    /// Shortcut where shapes change; `None` picks option A for CIFAR ResNets and option B for
    /// ImageNet ResNets, as their papers do.
    #[config(default = "None")]
    pub shortcut: Option<ShortcutKind>,
    /// Width of a supervised-contrastive projection head on the pooled features (training
    /// only; see [`super::ProjectionHead`]); `None` builds none.
    #[config(default = "None")]
    pub projection_dim: Option<usize>,
}

/// Stem: a convolution, BatchNorm, ReLU and, for the strided stem, a max-pool.
#[derive(Module, Debug)]
pub struct Stem {
    /// First convolution.
    pub conv: Conv2d,
    /// Its BatchNorm.
    pub norm: BatchNorm,
    /// 3x3 stride-2 max-pool of the strided stem.
    pub pool: Option<MaxPool2d>,
}

impl Stem {
    /// Apply the stem.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let x = layers::conv_batch_norm(&self.conv, &self.norm, x, true);
        match &self.pool {
            Some(pool) => pool.forward(x),
            None => x,
        }
    }
}

/// One stage: blocks at one feature-map size (the first may downsample).
#[derive(Module, Debug)]
pub struct Stage {
    /// The stage's blocks, in order.
    pub blocks: Vec<ResidualBlock>,
}

/// A ResNet classifier with an attention unit in every residual block.
#[derive(Module, Debug)]
pub struct ResNet {
    /// Stem.
    pub stem: Stem,
    /// Residual stages.
    pub stages: Vec<Stage>,
    /// Final fully connected layer after global average pooling.
    pub classifier: Linear,
    /// The supervised-contrastive projection head, when the run trains with one; only
    /// [`ResNet::forward_with_projection`] uses it.
    pub projection: Option<super::ProjectionHead>,
    /// Training input size the size-bound units were built for.
    pub input_size: usize,
    /// Input channels.
    pub in_channels: usize,
}

impl ResNetConfig {
    /// The stem this configuration uses.
    pub fn resolved_stem(&self) -> StemKind {
        self.stem.unwrap_or(match self.backbone.spec().family {
            Family::Cifar => StemKind::Small,
            Family::ImageNet if self.input_size <= 64 => StemKind::Small,
            Family::ImageNet => StemKind::Strided,
        })
    }

    /// The shortcut this configuration uses.
    pub fn resolved_shortcut(&self) -> ShortcutKind {
        self.shortcut.unwrap_or(match self.backbone.spec().family {
            Family::Cifar => ShortcutKind::ZeroPad,
            Family::ImageNet => ShortcutKind::Projection,
        })
    }

    /// Feature-map size after the stem.
    fn stem_output_size(&self) -> usize {
        match self.resolved_stem() {
            StemKind::Small => self.input_size,
            StemKind::Strided => {
                conv_output_size(conv_output_size(self.input_size, 7, 2, 3), 3, 2, 1)
            }
        }
    }

    /// Feature-map size of every stage at the configured input size
    /// (e.g. 56, 28, 14, 7 for an ImageNet ResNet at 224; 32, 16, 8 for a CIFAR ResNet at 32).
    pub fn stage_sizes(&self) -> Vec<usize> {
        let mut size = self.stem_output_size();
        (0..self.backbone.spec().blocks_per_stage.len())
            .map(|stage| {
                if stage > 0 {
                    size = conv_output_size(size, 3, 2, 1);
                }
                size
            })
            .collect()
    }

    /// Whether the configuration can make a model (classes, input channels, input size),
    /// checked without building one. The attention units' own checks run in [`Self::init`].
    pub fn validate(&self) -> Result<(), ModelError> {
        if self.num_classes == 0 {
            return Err(ModelError::InvalidConfig(
                "num_classes must be at least 1".into(),
            ));
        }
        if self.in_channels == 0 {
            return Err(ModelError::InvalidConfig(
                "in_channels must be at least 1".into(),
            ));
        }
        if self.input_size < 8 {
            return Err(ModelError::InvalidConfig(format!(
                "input size {} px is too small for a ResNet (at least 8 px)",
                self.input_size
            )));
        }
        Ok(())
    }

    /// Build the model.
    pub fn init(&self, device: &Device) -> Result<ResNet, ModelError> {
        self.validate()?;
        let spec = self.backbone.spec();
        let stem_width = match spec.family {
            Family::Cifar => spec.stage_widths[0],
            Family::ImageNet => 64,
        };
        let stem = match self.resolved_stem() {
            StemKind::Small => Stem {
                conv: conv(self.in_channels, stem_width, 3, 1, device),
                norm: BatchNormConfig::new(stem_width).init(device),
                pool: None,
            },
            StemKind::Strided => Stem {
                conv: conv(self.in_channels, stem_width, 7, 2, device),
                norm: BatchNormConfig::new(stem_width).init(device),
                pool: Some(
                    MaxPool2dConfig::new([3, 3])
                        .with_strides([2, 2])
                        .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                        .init(),
                ),
            },
        };
        let expansion = match spec.block {
            BlockKind::Basic => BasicBlock::EXPANSION,
            BlockKind::Bottleneck => Bottleneck::EXPANSION,
        };
        let shortcut = self.resolved_shortcut();
        let mut channels = stem_width;
        let mut stages = Vec::with_capacity(spec.blocks_per_stage.len());
        for (stage, (&blocks, (&planes, &size))) in spec
            .blocks_per_stage
            .iter()
            .zip(spec.stage_widths.iter().zip(self.stage_sizes().iter()))
            .enumerate()
        {
            let mut stage_blocks = Vec::with_capacity(blocks);
            for block in 0..blocks {
                let block_spec = BlockSpec {
                    in_channels: channels,
                    planes,
                    stride: if stage > 0 && block == 0 { 2 } else { 1 },
                    output_size: [size, size],
                    shortcut,
                    attention: &self.attention,
                };
                stage_blocks.push(match spec.block {
                    BlockKind::Basic => ResidualBlock::Basic(BasicBlock::new(&block_spec, device)?),
                    BlockKind::Bottleneck => {
                        ResidualBlock::Bottleneck(Bottleneck::new(&block_spec, device)?)
                    }
                });
                channels = planes * expansion;
            }
            stages.push(Stage {
                blocks: stage_blocks,
            });
        }
        Ok(ResNet {
            stem,
            stages,
            classifier: LinearConfig::new(channels, self.num_classes).init(device),
            projection: self.projection_dim.map(|dim| {
                super::ProjectionHeadConfig::new(channels)
                    .with_dim(dim)
                    .init(device)
            }),
            input_size: self.input_size,
            in_channels: self.in_channels,
        })
    }
}

impl ResNet {
    /// Trainable parameters of the classifier network: all but a contrastive projection
    /// head's, which exists for training only.
    pub fn num_params_without_projection(&self) -> usize {
        crate::params::count_trainable(self)
            - self
                .projection
                .as_ref()
                .map_or(0, crate::params::count_trainable)
    }

    /// Every BatchNorm of the network, in forward order (the stem's, then each block's): for
    /// code that sets how their statistics update, as stochastic weight averaging does when it
    /// recomputes them.
    pub fn batch_norms_mut(&mut self) -> Vec<&mut BatchNorm> {
        let mut norms = vec![&mut self.stem.norm];
        for stage in &mut self.stages {
            for block in &mut stage.blocks {
                norms.extend(block.batch_norms_mut());
            }
        }
        norms
    }

    /// Every block's attention unit, stage by stage.
    pub fn attention_units(&self) -> impl Iterator<Item = &Attention> {
        self.stages
            .iter()
            .flat_map(|stage| stage.blocks.iter().map(ResidualBlock::attention))
    }

    /// Check that `dims` (`[B, C, H, W]`) fits the model, naming both shapes when it does not.
    pub fn check_input(&self, dims: [usize; 4]) -> Result<(), ModelError> {
        let [_, channels, height, width] = dims;
        if channels != self.in_channels {
            return Err(ModelError::InputMismatch(format!(
                "model expects {}-channel images, got {channels} channels",
                self.in_channels
            )));
        }
        let size_bound = self
            .attention_units()
            .find(|unit| unit.fixed_input_size().is_some());
        if let Some(unit) = size_bound
            && (height != self.input_size || width != self.input_size)
        {
            return Err(ModelError::InputMismatch(format!(
                "model was built for {0}x{0} inputs (its {1} units hold weights for each \
                 position of their feature maps) but was fed {height}x{width}; resize the images \
                 to {0} px (--size {0}), or train with `ppcr_resize_to_input = true` in a \
                 --config file so its units resample their weights",
                self.input_size,
                unit.kind().label()
            )));
        }
        Ok(())
    }

    /// Class logits `[B, classes]` for images `[B, C, H, W]`, or why the input does not fit.
    pub fn try_forward(&self, x: Tensor<4>) -> Result<Tensor<2>, ModelError> {
        self.check_input(x.dims())?;
        Ok(self.forward_head(self.forward_features(x)))
    }

    /// Class logits; panics where [`ResNet::try_forward`] would return an error.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        self.try_forward(x)
            .unwrap_or_else(|error| panic!("{error}"))
    }

    /// The last stage's feature map (what Grad-CAM looks at).
    pub fn forward_features(&self, x: Tensor<4>) -> Tensor<4> {
        let mut x = self.stem.forward(x);
        for stage in &self.stages {
            for block in &stage.blocks {
                x = block.forward(x);
            }
        }
        x
    }

    /// Class logits and, when the model has a projection head, the unit-length embeddings of
    /// the same images for the contrastive loss.
    pub fn forward_with_projection(
        &self,
        x: Tensor<4>,
    ) -> Result<(Tensor<2>, Option<Tensor<2>>), ModelError> {
        self.check_input(x.dims())?;
        let features = self.forward_features(x);
        let [batch, channels, _, _] = features.dims();
        let pooled = features.mean_dims(&[2, 3]).reshape([batch, channels]);
        let embedding = self
            .projection
            .as_ref()
            .map(|head| head.forward(pooled.clone()));
        Ok((self.classifier.forward(pooled), embedding))
    }

    /// Global average pooling and the classifier, from the last stage's feature map.
    pub fn forward_head(&self, features: Tensor<4>) -> Tensor<2> {
        let [batch, channels, _, _] = features.dims();
        self.classifier
            .forward(features.mean_dims(&[2, 3]).reshape([batch, channels]))
    }

    /// Class logits and every block's spatial attention map (`None` for units without one),
    /// indexed `[stage][block]`.
    #[allow(clippy::type_complexity)]
    pub fn forward_with_attention_maps(
        &self,
        x: Tensor<4>,
    ) -> Result<(Tensor<2>, Vec<Vec<Option<Tensor<4>>>>), ModelError> {
        let (features, maps) = self.forward_features_with_attention_maps(x)?;
        Ok((self.forward_head(features), maps))
    }

    /// The last stage's feature map and every block's spatial attention map, as
    /// [`ResNet::forward_with_attention_maps`] but stopping before the head, so that Grad-CAM
    /// and the attention maps come from one pass.
    #[allow(clippy::type_complexity)]
    pub fn forward_features_with_attention_maps(
        &self,
        x: Tensor<4>,
    ) -> Result<(Tensor<4>, Vec<Vec<Option<Tensor<4>>>>), ModelError> {
        self.check_input(x.dims())?;
        let mut x = self.stem.forward(x);
        let mut maps = Vec::with_capacity(self.stages.len());
        for stage in &self.stages {
            let mut stage_maps = Vec::with_capacity(stage.blocks.len());
            for block in &stage.blocks {
                let (out, map) = block.forward_with_attention_map(x, true);
                x = out;
                stage_maps.push(map);
            }
            maps.push(stage_maps);
        }
        Ok((x, maps))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attention::AttentionKind;
    use crate::params::count_trainable;

    fn params(backbone: Backbone, kind: AttentionKind, classes: usize, input: usize) -> usize {
        let config =
            ResNetConfig::new(backbone, AttentionConfig::new(kind), classes).with_input_size(input);
        count_trainable(&config.init(&Device::flex()).unwrap())
    }

    #[test]
    fn parameter_counts_match_published_figures() {
        // He et al. / torchvision / the common CIFAR ResNet-20 (option A) implementation.
        assert_eq!(
            params(Backbone::ResNet20, AttentionKind::None, 10, 32),
            269_722
        );
        assert_eq!(
            params(Backbone::ResNet18, AttentionKind::None, 1000, 224),
            11_689_512
        );
        assert_eq!(
            params(Backbone::ResNet50, AttentionKind::None, 1000, 224),
            25_557_032
        );
    }

    #[test]
    fn ppcr_adds_fifteen_weights_per_pixel_of_every_block() {
        let added = |backbone, input| {
            params(backbone, AttentionKind::Ppcr, 10, input)
                - params(backbone, AttentionKind::None, 10, input)
        };
        // 15 * (32^2 + 16^2 + 8^2) * 3 blocks per stage.
        assert_eq!(added(Backbone::ResNet20, 32), 60_480);
        // 15 * (56^2 + 28^2 + 14^2 + 7^2) * 2 blocks per stage.
        assert_eq!(added(Backbone::ResNet18, 224), 124_950);
    }

    #[test]
    fn stage_sizes_follow_from_the_input_size() {
        let config = |backbone, input| {
            ResNetConfig::new(backbone, AttentionConfig::new(AttentionKind::None), 2)
                .with_input_size(input)
        };
        assert_eq!(
            config(Backbone::ResNet18, 224).stage_sizes(),
            vec![56, 28, 14, 7]
        );
        assert_eq!(
            config(Backbone::ResNet18, 28).stage_sizes(),
            vec![28, 14, 7, 4]
        );
        assert_eq!(
            config(Backbone::ResNet20, 32).stage_sizes(),
            vec![32, 16, 8]
        );
        assert_eq!(
            config(Backbone::ResNet50, 112).stage_sizes(),
            vec![28, 14, 7, 4]
        );
    }

    #[test]
    fn ppcr_model_refuses_another_input_size_with_both_sizes_named() {
        let device = Device::flex();
        let model = ResNetConfig::new(
            Backbone::ResNet20,
            AttentionConfig::new(AttentionKind::Ppcr),
            2,
        )
        .with_input_size(16)
        .init(&device)
        .unwrap();
        let error = model
            .try_forward(Tensor::zeros([1, 3, 24, 24], &device))
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("16x16") && error.contains("24x24"),
            "{error}"
        );
        let error = model
            .try_forward(Tensor::zeros([1, 1, 16, 16], &device))
            .unwrap_err()
            .to_string();
        assert!(error.contains("3-channel"), "{error}");
    }

    #[test]
    fn resizing_ppcr_model_accepts_another_input_size() {
        let device = Device::flex();
        let attention = AttentionConfig::new(AttentionKind::Ppcr).with_ppcr_resize_to_input(true);
        let model = ResNetConfig::new(Backbone::ResNet20, attention, 2)
            .with_input_size(16)
            .init(&device)
            .unwrap();
        let logits = model
            .try_forward(Tensor::zeros([1, 3, 24, 24], &device))
            .unwrap();
        assert_eq!(logits.dims(), [1, 2]);
    }

    /// Every PPCR unit's weights, flattened, in block order.
    fn ppcr_weights(model: &ResNet) -> Vec<Vec<f32>> {
        model
            .attention_units()
            .filter_map(|unit| match unit {
                crate::attention::Attention::Ppcr(ppcr) => Some(
                    ppcr.pixel_context_weights
                        .val()
                        .into_data()
                        .try_to_vec::<f32>()
                        .unwrap(),
                ),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_ppcr_resnet_training_step_updates_every_unit() {
        use burn::nn::loss::CrossEntropyLossConfig;
        use burn::optim::{GradientsParams, SgdConfig};
        use burn::tensor::{Distribution, Int};

        // On Flex the units run the fused kernel, so this is a training step through its
        // hand-written backward node inside a real network.
        let device = Device::flex().autodiff();
        let model = ResNetConfig::new(
            Backbone::ResNet20,
            AttentionConfig::new(AttentionKind::Ppcr),
            3,
        )
        .with_input_size(16)
        .init(&device)
        .unwrap();
        let before = ppcr_weights(&model);
        assert_eq!(before.len(), 9);
        let images = Tensor::<4>::random([4, 3, 16, 16], Distribution::Normal(0.0, 1.0), &device);
        let targets = Tensor::<1, Int>::from_data([0, 1, 2, 1], &device);
        let loss = CrossEntropyLossConfig::new()
            .init(&device)
            .forward(model.forward(images), targets);
        let loss_value: f32 = loss.clone().into_scalar();
        assert!(loss_value.is_finite(), "loss {loss_value}");
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        let mut optim = SgdConfig::new().init();
        let model = optim.step(0.1, model, grads);
        let after = ppcr_weights(&model);
        for (unit, (b, a)) in before.iter().zip(&after).enumerate() {
            assert!(
                a.iter().all(|v| v.is_finite()),
                "unit {unit}: non-finite weights"
            );
            assert!(b != a, "unit {unit}: weights did not change");
        }
        let logits = model.forward(Tensor::zeros([1, 3, 16, 16], &device));
        let logits = logits.into_data().try_to_vec::<f32>().unwrap();
        assert!(logits.iter().all(|v| v.is_finite()), "{logits:?}");
    }

    #[test]
    fn invalid_configurations_are_errors() {
        let device = Device::flex();
        let base = ResNetConfig::new(
            Backbone::ResNet20,
            AttentionConfig::new(AttentionKind::None),
            0,
        );
        assert!(matches!(
            base.init(&device),
            Err(ModelError::InvalidConfig(_))
        ));
        // The first CIFAR stage has 16 channels: PPCR with 6 levels needs 32.
        let deep = ResNetConfig::new(
            Backbone::ResNet20,
            AttentionConfig::new(AttentionKind::Ppcr).with_ppcr_levels(6),
            2,
        );
        assert!(matches!(deep.init(&device), Err(ModelError::Attention(_))));
    }
}
