//! Multiply-accumulate counts of one forward pass, from the layers' shapes.
//!
//! Convolutions and the classifier count `outputs x fan-in`; each attention unit counts its
//! own work ([`crate::attention::AttentionUnit::macs`]). BatchNorm, ReLU, pooling and
//! residual additions are not counted, as in the published ResNet figures (He et al. 2016:
//! ResNet-18 1.8 G, ResNet-50 3.8-4.1 G multiply-adds at 224 px).

use burn::nn::PaddingConfig2d;
use burn::nn::conv::Conv2d;
use serde::Serialize;

use crate::models::{ResNet, ResidualBlock, Shortcut, conv_output_size};

/// Where a model's multiply-accumulates go.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct MacCount {
    /// Everything below.
    pub total: u64,
    /// Convolutions (stem, blocks, projection shortcuts).
    pub convolutions: u64,
    /// The final fully connected layer.
    pub classifier: u64,
    /// The attention units.
    pub attention: u64,
}

/// MACs of `conv` on a `[C, H, W]` input, and its output shape.
fn conv_macs(conv: &Conv2d, [_, height, width]: [usize; 3]) -> (u64, [usize; 3]) {
    let [out_channels, in_per_group, kernel_h, kernel_w] = conv.weight.lazy_shape().dims();
    let (pad_h, pad_w) = match &conv.padding {
        PaddingConfig2d::Explicit(top, left, _, _) => (*top, *left),
        PaddingConfig2d::Valid => (0, 0),
        PaddingConfig2d::Same => (kernel_h / 2, kernel_w / 2),
    };
    let out_h = conv_output_size(height, kernel_h, conv.stride[0], pad_h);
    let out_w = conv_output_size(width, kernel_w, conv.stride[1], pad_w);
    let macs = (out_channels * out_h * out_w * in_per_group * kernel_h * kernel_w) as u64;
    (macs, [out_channels, out_h, out_w])
}

/// Multiply-accumulates of one forward pass of `model` on one `input_size` image.
pub fn count_macs(model: &ResNet, input_size: usize) -> MacCount {
    let mut count = MacCount::default();
    let (stem, mut shape) = conv_macs(
        &model.stem.conv,
        [model.in_channels, input_size, input_size],
    );
    count.convolutions += stem;
    if model.stem.pool.is_some() {
        shape[1] = conv_output_size(shape[1], 3, 2, 1);
        shape[2] = conv_output_size(shape[2], 3, 2, 1);
    }
    for stage in &model.stages {
        for block in &stage.blocks {
            let (convolutions, shortcut) = match block {
                ResidualBlock::Basic(b) => (vec![&b.conv1, &b.conv2], &b.shortcut),
                ResidualBlock::Bottleneck(b) => (vec![&b.conv1, &b.conv2, &b.conv3], &b.shortcut),
            };
            let block_input = shape;
            for conv in convolutions {
                let (macs, out) = conv_macs(conv, shape);
                count.convolutions += macs;
                shape = out;
            }
            count.attention += block.attention().macs(shape);
            if let Shortcut::Projection(projection) = shortcut {
                count.convolutions += conv_macs(&projection.conv, block_input).0;
            }
        }
    }
    // burn stores a linear layer's weight as [inputs, outputs].
    let [features, classes] = model.classifier.weight.lazy_shape().dims();
    count.classifier = (features * classes) as u64;
    count.total = count.convolutions + count.classifier + count.attention;
    count
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attention::{AttentionConfig, AttentionKind};
    use crate::models::{Backbone, ResNetConfig};
    use burn::tensor::Device;

    fn macs(backbone: Backbone, kind: AttentionKind, input: usize, classes: usize) -> MacCount {
        let model = ResNetConfig::new(backbone, AttentionConfig::new(kind), classes)
            .with_input_size(input)
            .init(&Device::flex())
            .unwrap();
        count_macs(&model, input)
    }

    #[test]
    fn resnet_macs_match_published_figures_within_one_percent() {
        // Published: ResNet-18 1.82 GMACs, ResNet-50 4.11 GMACs at 224 px (torchvision /
        // ptflops figures).
        for (backbone, published) in [(Backbone::ResNet18, 1.82e9), (Backbone::ResNet50, 4.11e9)] {
            let total = macs(backbone, AttentionKind::None, 224, 1000).total as f64;
            let error = (total - published).abs() / published;
            assert!(error < 0.01, "{backbone}: {total} vs {published}");
        }
    }

    #[test]
    fn resnet20_macs_match_the_hand_count() {
        // Stem 16*32*32*3*9; stage 1: 6 convs 16*32*32*16*9; stage 2: 32*16*16*16*9 +
        // 5 * 32*16*16*32*9; stage 3: 64*8*8*32*9 + 5 * 64*8*8*64*9; classifier 64*10.
        let convolutions: u64 = 16 * 1024 * 27
            + 6 * 16 * 1024 * 144
            + 32 * 256 * 144
            + 5 * 32 * 256 * 288
            + 64 * 64 * 288
            + 5 * 64 * 64 * 576;
        let count = macs(Backbone::ResNet20, AttentionKind::None, 32, 10);
        assert_eq!(count.convolutions, convolutions);
        assert_eq!(count.classifier, 640);
        assert_eq!(count.attention, 0);
        // About 41 M, the figure usually quoted for ResNet-20.
        assert!((40_000_000..42_000_000).contains(&count.total));
    }

    #[test]
    fn units_add_their_own_macs_only() {
        let plain = macs(Backbone::ResNet20, AttentionKind::None, 32, 10);
        let se = macs(Backbone::ResNet20, AttentionKind::Se, 32, 10);
        assert_eq!(se.convolutions, plain.convolutions);
        // SE on [16, 32, 32] with hidden 1: 2*16*1024 + 2*16*1; three blocks per stage.
        let stage1 = 2 * 16 * 1024 + 2 * 16;
        let stage2 = 2 * 32 * 256 + 2 * 32 * 2;
        let stage3 = 2 * 64 * 64 + 2 * 64 * 4;
        assert_eq!(se.attention, 3 * (stage1 + stage2 + stage3) as u64);
    }
}
