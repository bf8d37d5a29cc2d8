//! Residual blocks with an attention unit in the residual branch.
//!
//! He et al., "Deep Residual Learning for Image Recognition" (CVPR 2016): the basic block
//! (two 3x3 convolutions) and the bottleneck (1x1, 3x3, 1x1 with expansion 4; the stride sits
//! on the 3x3 as in torchvision's "ResNet v1.5"). The attention unit goes after the branch's
//! last BatchNorm and before the residual addition, where SE and PPCR put it.

use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{BatchNorm, BatchNormConfig, Identity, Initializer, PaddingConfig2d};
use burn::tensor::{Device, Tensor, s};
use serde::{Deserialize, Serialize};

use super::layers;
use crate::attention::{Attention, AttentionConfig, AttentionError, AttentionKind};

/// How a block's shortcut matches the branch when the shape changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ShortcutKind {
    /// Option A of He et al.: subsample by the stride and zero-pad the new channels
    /// (parameter-free; the CIFAR ResNets' default).
    #[serde(rename = "a")]
    ZeroPad,
    /// Option B: a strided 1x1 convolution and BatchNorm (the ImageNet ResNets' default).
    #[serde(rename = "b")]
    Projection,
}

/// Option A shortcut: strided subsampling plus zero channels.
#[derive(Module, Debug)]
pub struct ZeroPadShortcut {
    /// Spatial subsampling step.
    pub stride: usize,
    /// Zero channels added before the input's channels.
    pub pad_before: usize,
    /// Zero channels added after the input's channels.
    pub pad_after: usize,
}

impl ZeroPadShortcut {
    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let step = self.stride as isize;
        let x = if self.stride > 1 {
            x.slice(s![.., .., ..;step, ..;step])
        } else {
            x
        };
        let [batch, _, height, width] = x.dims();
        let device = x.device();
        let mut parts = Vec::with_capacity(3);
        if self.pad_before > 0 {
            parts.push(Tensor::zeros(
                [batch, self.pad_before, height, width],
                &device,
            ));
        }
        parts.push(x);
        if self.pad_after > 0 {
            parts.push(Tensor::zeros(
                [batch, self.pad_after, height, width],
                &device,
            ));
        }
        Tensor::cat(parts, 1)
    }
}

/// Option B shortcut: strided 1x1 convolution and BatchNorm.
#[derive(Module, Debug)]
pub struct ProjectionShortcut {
    /// The 1x1 convolution.
    pub conv: Conv2d,
    /// Its BatchNorm.
    pub norm: BatchNorm,
}

/// A block's shortcut path.
#[derive(Module, Debug)]
// Module trees are built once and moved rarely; boxing would only add indirection.
#[allow(clippy::large_enum_variant)]
pub enum Shortcut {
    /// Shapes match: the input itself.
    Identity(Identity),
    /// Option A.
    ZeroPad(ZeroPadShortcut),
    /// Option B.
    Projection(ProjectionShortcut),
}

impl Shortcut {
    /// Build the shortcut from `in_channels` to `out_channels` at `stride`.
    pub fn new(
        kind: ShortcutKind,
        in_channels: usize,
        out_channels: usize,
        stride: usize,
        device: &Device,
    ) -> Self {
        if in_channels == out_channels && stride == 1 {
            return Shortcut::Identity(Identity::new());
        }
        match kind {
            ShortcutKind::ZeroPad => {
                let extra = out_channels.saturating_sub(in_channels);
                Shortcut::ZeroPad(ZeroPadShortcut {
                    stride,
                    pad_before: extra / 2,
                    pad_after: extra - extra / 2,
                })
            }
            ShortcutKind::Projection => Shortcut::Projection(ProjectionShortcut {
                conv: conv(in_channels, out_channels, 1, stride, device),
                norm: BatchNormConfig::new(out_channels).init(device),
            }),
        }
    }

    /// The shortcut's BatchNorm, where it has one.
    pub fn batch_norms_mut(&mut self) -> Vec<&mut BatchNorm> {
        match self {
            Shortcut::Projection(shortcut) => vec![&mut shortcut.norm],
            Shortcut::Identity(_) | Shortcut::ZeroPad(_) => Vec::new(),
        }
    }

    /// Map the block input to the shape of the branch output.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        match self {
            Shortcut::Identity(_) => x,
            Shortcut::ZeroPad(shortcut) => shortcut.forward(x),
            Shortcut::Projection(shortcut) => {
                layers::conv_batch_norm(&shortcut.conv, &shortcut.norm, x, false)
            }
        }
    }
}

/// A bias-free convolution with "same"-style padding and He (fan-out) initialisation, as
/// torchvision's ResNets use.
pub fn conv(
    in_channels: usize,
    out_channels: usize,
    kernel: usize,
    stride: usize,
    device: &Device,
) -> Conv2d {
    let padding = kernel / 2;
    Conv2dConfig::new([in_channels, out_channels], [kernel, kernel])
        .with_stride([stride, stride])
        .with_padding(PaddingConfig2d::Explicit(
            padding, padding, padding, padding,
        ))
        .with_bias(false)
        .with_initializer(Initializer::KaimingNormal {
            gain: 2.0f64.sqrt(),
            fan_out_only: true,
        })
        .init(device)
}

/// Output size of a convolution or pooling along one axis.
pub fn conv_output_size(size: usize, kernel: usize, stride: usize, padding: usize) -> usize {
    (size + 2 * padding).saturating_sub(kernel) / stride + 1
}

/// What every block needs to know to build itself.
#[derive(Debug, Clone, Copy)]
pub struct BlockSpec<'a> {
    /// Channels entering the block.
    pub in_channels: usize,
    /// Width of the block's inner convolutions.
    pub planes: usize,
    /// Stride of the block's strided convolution.
    pub stride: usize,
    /// Spatial size `[H, W]` of the block's output at the training resolution.
    pub output_size: [usize; 2],
    /// Shortcut kind used where the shape changes.
    pub shortcut: ShortcutKind,
    /// Attention unit to place in the residual branch.
    pub attention: &'a AttentionConfig,
}

/// Basic block: `relu(attn(bn2(conv2(relu(bn1(conv1 x))))) + shortcut(x))`.
#[derive(Module, Debug)]
pub struct BasicBlock {
    /// First 3x3 convolution (strided).
    pub conv1: Conv2d,
    /// Its BatchNorm.
    pub bn1: BatchNorm,
    /// Second 3x3 convolution.
    pub conv2: Conv2d,
    /// Its BatchNorm.
    pub bn2: BatchNorm,
    /// The attention unit, after `bn2`.
    pub attention: Attention,
    /// The shortcut path.
    pub shortcut: Shortcut,
}

impl BasicBlock {
    /// Output channels per unit of `planes`.
    pub const EXPANSION: usize = 1;

    /// Build the block.
    pub fn new(spec: &BlockSpec, device: &Device) -> Result<Self, AttentionError> {
        let out = spec.planes * Self::EXPANSION;
        Ok(BasicBlock {
            conv1: conv(spec.in_channels, spec.planes, 3, spec.stride, device),
            bn1: BatchNormConfig::new(spec.planes).init(device),
            conv2: conv(spec.planes, out, 3, 1, device),
            bn2: BatchNormConfig::new(out).init(device),
            attention: spec.attention.init(out, spec.output_size, device)?,
            shortcut: Shortcut::new(spec.shortcut, spec.in_channels, out, spec.stride, device),
        })
    }

    /// The residual branch up to its last convolution, and that convolution's BatchNorm.
    fn branch_parts(&self, x: Tensor<4>) -> (Tensor<4>, &Conv2d, &BatchNorm) {
        let out = layers::conv_batch_norm(&self.conv1, &self.bn1, x, true);
        (out, &self.conv2, &self.bn2)
    }
}

/// Bottleneck block: 1x1 reduce, 3x3 (strided), 1x1 expand by 4, attention after `bn3`.
#[derive(Module, Debug)]
pub struct Bottleneck {
    /// 1x1 reduction.
    pub conv1: Conv2d,
    /// Its BatchNorm.
    pub bn1: BatchNorm,
    /// 3x3 convolution (strided).
    pub conv2: Conv2d,
    /// Its BatchNorm.
    pub bn2: BatchNorm,
    /// 1x1 expansion.
    pub conv3: Conv2d,
    /// Its BatchNorm.
    pub bn3: BatchNorm,
    /// The attention unit, after `bn3`.
    pub attention: Attention,
    /// The shortcut path.
    pub shortcut: Shortcut,
}

impl Bottleneck {
    /// Output channels per unit of `planes`.
    pub const EXPANSION: usize = 4;

    /// Build the block.
    pub fn new(spec: &BlockSpec, device: &Device) -> Result<Self, AttentionError> {
        let out = spec.planes * Self::EXPANSION;
        Ok(Bottleneck {
            conv1: conv(spec.in_channels, spec.planes, 1, 1, device),
            bn1: BatchNormConfig::new(spec.planes).init(device),
            conv2: conv(spec.planes, spec.planes, 3, spec.stride, device),
            bn2: BatchNormConfig::new(spec.planes).init(device),
            conv3: conv(spec.planes, out, 1, 1, device),
            bn3: BatchNormConfig::new(out).init(device),
            attention: spec.attention.init(out, spec.output_size, device)?,
            shortcut: Shortcut::new(spec.shortcut, spec.in_channels, out, spec.stride, device),
        })
    }

    /// The residual branch up to its last convolution, and that convolution's BatchNorm.
    fn branch_parts(&self, x: Tensor<4>) -> (Tensor<4>, &Conv2d, &BatchNorm) {
        let out = layers::conv_batch_norm(&self.conv1, &self.bn1, x, true);
        let out = layers::conv_batch_norm(&self.conv2, &self.bn2, out, true);
        (out, &self.conv3, &self.bn3)
    }
}

/// A residual block of either kind.
#[derive(Module, Debug)]
#[allow(clippy::large_enum_variant)]
pub enum ResidualBlock {
    /// Two 3x3 convolutions.
    Basic(BasicBlock),
    /// 1x1, 3x3, 1x1 with expansion 4.
    Bottleneck(Bottleneck),
}

impl ResidualBlock {
    /// The block's output for `x`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let (features, _) = self.forward_with_attention_map(x, false);
        features
    }

    /// The block's output and, when asked, the attention unit's spatial map for this input.
    pub fn forward_with_attention_map(
        &self,
        x: Tensor<4>,
        want_map: bool,
    ) -> (Tensor<4>, Option<Tensor<4>>) {
        let ((inner, conv, bn), attention, shortcut) = match self {
            ResidualBlock::Basic(block) => (
                block.branch_parts(x.clone()),
                &block.attention,
                &block.shortcut,
            ),
            ResidualBlock::Bottleneck(block) => (
                block.branch_parts(x.clone()),
                &block.attention,
                &block.shortcut,
            ),
        };
        if attention.kind() == AttentionKind::None {
            // Nothing between the last BatchNorm and the residual add: in inference the
            // convolution kernel writes the block's output directly.
            let features = layers::conv_batch_norm_add_relu(conv, bn, inner, shortcut.forward(x));
            return (features, None);
        }
        if !want_map && let Some(convolution) = layers::affine_convolution(conv, bn, &inner) {
            let shortcut = shortcut.forward(x);
            let features = match attention.convolution_forward_add_relu(&convolution, &shortcut) {
                Some(features) => features,
                None => Self::attention_add_relu(attention, convolution.forward(), shortcut),
            };
            return (features, None);
        }
        if !want_map {
            let convolved = layers::conv2d(conv, inner);
            let shortcut = shortcut.forward(x);
            // In training, the unit may take the BatchNorm into its kernel.
            if let Some(norm) = layers::training_batch_norm(bn, &convolved)
                && let Some(fused) =
                    attention.batch_norm_forward_add_relu(&convolved, &norm, &shortcut)
            {
                layers::update_running_statistics(bn, fused.mean, fused.variance);
                return (fused.output, None);
            }
            let branch = layers::batch_norm(bn, convolved, false);
            return (Self::attention_add_relu(attention, branch, shortcut), None);
        }
        let branch = layers::conv_batch_norm(conv, bn, inner, false);
        let map = attention.attention_map(branch.clone());
        let shortcut = shortcut.forward(x);
        (Self::attention_add_relu(attention, branch, shortcut), map)
    }

    /// `relu(attention(branch) + shortcut)`, in one pass where the unit has a kernel for it.
    fn attention_add_relu(
        attention: &Attention,
        branch: Tensor<4>,
        shortcut: Tensor<4>,
    ) -> Tensor<4> {
        match attention.forward_add_relu(&branch, &shortcut) {
            Some(features) => features,
            None => layers::add_relu(attention.forward(branch), shortcut),
        }
    }

    /// Every BatchNorm of the block: the branch's, the attention unit's and the shortcut's.
    pub fn batch_norms_mut(&mut self) -> Vec<&mut BatchNorm> {
        let (mut norms, attention, shortcut) = match self {
            ResidualBlock::Basic(block) => (
                vec![&mut block.bn1, &mut block.bn2],
                &mut block.attention,
                &mut block.shortcut,
            ),
            ResidualBlock::Bottleneck(block) => (
                vec![&mut block.bn1, &mut block.bn2, &mut block.bn3],
                &mut block.attention,
                &mut block.shortcut,
            ),
        };
        norms.extend(attention.batch_norms_mut());
        norms.extend(shortcut.batch_norms_mut());
        norms
    }

    /// The block's attention unit.
    pub fn attention(&self) -> &Attention {
        match self {
            ResidualBlock::Basic(block) => &block.attention,
            ResidualBlock::Bottleneck(block) => &block.attention,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attention::AttentionKind;
    use burn::tensor::TensorData;

    #[test]
    fn zero_pad_shortcut_subsamples_and_pads_channels() {
        let device = Device::flex();
        let shortcut = Shortcut::new(ShortcutKind::ZeroPad, 1, 3, 2, &device);
        let x = Tensor::<4>::from_data(
            TensorData::new((0..16).map(|v| v as f32).collect::<Vec<_>>(), [1, 1, 4, 4]),
            &device,
        );
        let y = shortcut.forward(x);
        assert_eq!(y.dims(), [1, 3, 2, 2]);
        // Pixels (0,0), (0,2), (2,0), (2,2) of the input land in the middle channel.
        assert_eq!(
            y.into_data().try_to_vec::<f32>().unwrap(),
            vec![0.0, 0.0, 0.0, 0.0, 0.0, 2.0, 8.0, 10.0, 0.0, 0.0, 0.0, 0.0]
        );
    }

    #[test]
    fn conv_output_size_matches_resnet_stages() {
        // 224 -> 7x7/2 stem 112 -> 3x3/2 max-pool 56 -> 28 -> 14 -> 7.
        assert_eq!(conv_output_size(224, 7, 2, 3), 112);
        assert_eq!(conv_output_size(112, 3, 2, 1), 56);
        assert_eq!(conv_output_size(7, 3, 2, 1), 4);
        assert_eq!(conv_output_size(32, 3, 1, 1), 32);
    }

    #[test]
    fn ppcr_folded_into_the_convolution_gives_the_layers_bits() {
        use crate::attention::testing::{ppcr_with_random_weights, random_tensor, values};
        let device = Device::flex();
        let attention = AttentionConfig::new(AttentionKind::Ppcr);
        for (seed, (in_channels, stride, shortcut)) in [
            (12, 1, ShortcutKind::ZeroPad),
            (10, 2, ShortcutKind::Projection),
        ]
        .into_iter()
        .enumerate()
        {
            let spec = BlockSpec {
                in_channels,
                planes: 12,
                stride,
                output_size: [(9 - 1) / stride + 1, (7 - 1) / stride + 1],
                shortcut,
                attention: &attention,
            };
            let mut block = BasicBlock::new(&spec, &device).unwrap();
            // Seeded unit weights: the unit starts at zero, which hides most of its arithmetic.
            block.attention = Attention::Ppcr(ppcr_with_random_weights(
                12,
                spec.output_size,
                4,
                5,
                &device,
            ));
            let block = ResidualBlock::Basic(block);
            let x = random_tensor([3, in_channels, 9, 7], seed as u64 + 7, &device);
            // Asking for the map takes the layers one by one; not asking folds PPCR and the
            // block's end into the last convolution's kernel.
            let (folded, _) = block.forward_with_attention_map(x.clone(), false);
            let (layered, map) = block.forward_with_attention_map(x, true);
            assert!(map.is_some());
            let (folded, layered) = (values(folded), values(layered));
            assert!(folded.contains(&0.0) && folded.iter().any(|&v| v > 0.0));
            assert_eq!(folded, layered, "stride {stride}");
        }
    }

    #[test]
    fn in_training_the_batch_norm_folded_into_ppcr_gives_the_layers_values() {
        use crate::attention::testing::{
            assert_matches_reference, ppcr_with_random_weights, random_tensor, values,
        };
        use crate::kernels::cpu::batch_norm_ppcr;
        let device = Device::flex().autodiff();
        let attention = AttentionConfig::new(AttentionKind::Ppcr);
        let spec = BlockSpec {
            in_channels: 10,
            planes: 12,
            stride: 2,
            output_size: [5, 4],
            shortcut: ShortcutKind::Projection,
            attention: &attention,
        };
        let build = || {
            let mut block = BasicBlock::new(&spec, &device).unwrap();
            block.attention = Attention::Ppcr(ppcr_with_random_weights(12, [5, 4], 4, 5, &device));
            block
        };
        // Two copies of one block, each with running statistics of its own.
        let folded = build();
        let layered = build().load_record(folded.clone().into_record());
        let x = random_tensor([3, 10, 9, 7], 7, &device).require_grad();
        let probe = random_tensor([3, 12, 5, 4], 8, &device);
        // Not asking for the map takes the fold; asking takes the layers one by one.
        let run = |block: BasicBlock, want_map: bool| {
            let Attention::Ppcr(unit) = &block.attention else {
                unreachable!()
            };
            let inner = block.branch_parts(x.clone()).0;
            let convolved = layers::conv2d(&block.conv2, inner);
            let norm = layers::training_batch_norm(&block.bn2, &convolved).unwrap();
            let residual = block.shortcut.forward(x.clone());
            let weights = unit.pixel_context_weights.val();
            assert!(batch_norm_ppcr::available(
                &convolved, &norm, &weights, &residual
            ));
            let block = ResidualBlock::Basic(block);
            let (y, _) = block.forward_with_attention_map(x.clone(), want_map);
            let grads = (y.clone() * probe.clone()).sum().backward();
            let ResidualBlock::Basic(block) = block else {
                unreachable!()
            };
            [
                values(y),
                values(block.bn2.running_mean.value_sync()),
                values(block.bn2.running_var.value_sync()),
                values(x.grad(&grads).unwrap()),
                values(block.bn2.gamma.val().grad(&grads).unwrap()),
                values(block.conv2.weight.val().grad(&grads).unwrap()),
                values(block.conv1.weight.val().grad(&grads).unwrap()),
            ]
        };
        let (folded, layered) = (run(folded, false), run(layered, true));
        assert!(folded[0].contains(&0.0) && folded[0].iter().any(|&v| v > 0.0));
        for (index, what) in ["output", "running mean", "running var"].iter().enumerate() {
            assert_eq!(folded[index], layered[index], "{what}");
        }
        for (index, what) in ["dx", "dgamma", "dconv2", "dconv1"].iter().enumerate() {
            assert_matches_reference(&folded[index + 3], &layered[index + 3], 1e-4, what);
        }
    }

    #[test]
    fn block_with_attention_keeps_the_output_shape() {
        let device = Device::flex();
        let attention = AttentionConfig::new(AttentionKind::Ppcr);
        let spec = BlockSpec {
            in_channels: 16,
            planes: 8,
            stride: 2,
            output_size: [4, 4],
            shortcut: ShortcutKind::Projection,
            attention: &attention,
        };
        let block = ResidualBlock::Bottleneck(Bottleneck::new(&spec, &device).unwrap());
        let (y, map) =
            block.forward_with_attention_map(Tensor::zeros([2, 16, 8, 8], &device), true);
        assert_eq!(y.dims(), [2, 32, 4, 4]);
        assert_eq!(map.unwrap().dims(), [2, 1, 4, 4]);
    }
}
