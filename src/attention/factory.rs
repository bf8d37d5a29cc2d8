//! The attention factory: one name picks one unit, as timm's `attn_layer` does.
//!
//! Adding a unit is one new file implementing [`AttentionUnit`] and one line in the
//! `attention_units!` list below; the name, the module enum and the dispatch follow from it.

use std::fmt;
use std::str::FromStr;

use burn::config::Config;
use burn::module::Module;
use burn::nn::{BatchNorm, Identity};
use burn::tensor::{Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::kernels::cpu::batch_norm_ppcr::{TrainingBatchNorm, WithBatchStatistics};
use crate::kernels::cpu::conv::AffineConvolution;
use crate::onnx::{OnnxError, OnnxGraph};

use super::{
    AttentionError, Cbam, CbamConfig, EfficientChannelAttention, EfficientChannelAttentionConfig,
    GatedChannelTransformation, GatedChannelTransformationConfig, Ppcr, PpcrConfig, SimAm,
    SimAmConfig, SqueezeExcitation, SqueezeExcitationConfig, StyleRecalibration,
    StyleRecalibrationConfig,
};

/// What a unit is built for: the feature map it will see.
#[derive(Debug, Clone, Copy)]
pub struct UnitSpec<'a> {
    /// Channels of the feature map.
    pub channels: usize,
    /// Spatial size `[H, W]` of the feature map at the training resolution.
    pub spatial_size: [usize; 2],
    /// Options shared by all units (reduction ratios, pyramid levels, ...).
    pub options: &'a AttentionConfig,
}

/// The interface every attention unit offers the factory.
pub trait AttentionUnit: Sized {
    /// Build the unit for a feature map.
    fn build(spec: &UnitSpec, device: &Device) -> Result<Self, AttentionError>;

    /// Recalibrate `x` (`[B, C, H, W]` in, same shape out), or explain why it does not fit.
    fn try_forward(&self, x: Tensor<4>) -> Result<Tensor<4>, AttentionError>;

    /// The spatial map `[B, 1, H, W]` the unit weights pixels by, where it has one.
    fn attention_map(&self, _x: Tensor<4>) -> Option<Tensor<4>> {
        None
    }

    /// Multiply-accumulates of one forward pass on one `[C, H, W]` feature map, counted from
    /// the shapes: pooling and per-element products count one each, as profilers count them.
    fn macs(&self, input: [usize; 3]) -> u64;

    /// The feature-map size `[H, W]` the unit's parameters are tied to, when it refuses maps of
    /// other sizes (a network holding such a unit takes only its training input size).
    fn fixed_input_size(&self) -> Option<[usize; 2]> {
        None
    }

    /// `relu(forward(x) + residual)`, the end of a residual block, where the unit computes it
    /// in one pass on these tensors (a kernel that adds as it writes); `None` leaves the add
    /// to the caller.
    fn try_forward_add_relu(
        &self,
        _x: &Tensor<4>,
        _residual: &Tensor<4>,
    ) -> Option<Result<Tensor<4>, AttentionError>> {
        None
    }

    /// `relu(forward(norm(x)) + residual)` for `norm` a BatchNorm in training mode, where the
    /// unit folds the BatchNorm into its kernel: the output and the batch statistics for the
    /// BatchNorm's running statistics; `None` leaves the BatchNorm to the caller.
    fn try_batch_norm_forward_add_relu(
        &self,
        _x: &Tensor<4>,
        _norm: &TrainingBatchNorm,
        _residual: &Tensor<4>,
    ) -> Option<Result<WithBatchStatistics, AttentionError>> {
        None
    }

    /// `relu(forward(y) + residual)` for `y` the output of `convolution`, where the unit folds
    /// itself and the block's end into the convolution kernel (it reads each output sample
    /// while in cache, and `y` is never written as a whole); `None` leaves it to the caller.
    fn try_convolution_forward_add_relu(
        &self,
        _convolution: &AffineConvolution,
        _residual: &Tensor<4>,
    ) -> Option<Result<Tensor<4>, AttentionError>> {
        None
    }

    /// The unit's BatchNorm layers, for code that sets their statistics (stochastic weight
    /// averaging recomputes them for the averaged weights).
    fn batch_norms_mut(&mut self) -> Vec<&mut BatchNorm> {
        Vec::new()
    }

    /// Append the unit's inference-time computation to `graph` as standard ONNX operators,
    /// from the value `x` (`[N, C, H, W]`, `shape = [C, H, W]`); returns the output's name, or
    /// refuses by the unit's name where it has no ONNX form.
    fn to_onnx(
        &self,
        graph: &mut OnnxGraph,
        x: &str,
        shape: [usize; 3],
    ) -> Result<String, OnnxError>;
}

impl AttentionUnit for Identity {
    fn build(_spec: &UnitSpec, _device: &Device) -> Result<Self, AttentionError> {
        Ok(Identity::new())
    }
    fn try_forward(&self, x: Tensor<4>) -> Result<Tensor<4>, AttentionError> {
        Ok(x)
    }
    fn to_onnx(
        &self,
        _graph: &mut OnnxGraph,
        x: &str,
        _shape: [usize; 3],
    ) -> Result<String, OnnxError> {
        Ok(x.to_string())
    }
    fn macs(&self, _input: [usize; 3]) -> u64 {
        0
    }
}

impl AttentionUnit for SqueezeExcitation {
    fn build(spec: &UnitSpec, device: &Device) -> Result<Self, AttentionError> {
        Ok(SqueezeExcitationConfig::new(spec.channels)
            .with_reduction(spec.options.reduction)
            .init(device))
    }
    fn try_forward(&self, x: Tensor<4>) -> Result<Tensor<4>, AttentionError> {
        Ok(self.forward(x))
    }
    fn to_onnx(
        &self,
        graph: &mut OnnxGraph,
        x: &str,
        shape: [usize; 3],
    ) -> Result<String, OnnxError> {
        Ok(SqueezeExcitation::to_onnx(self, graph, x, shape))
    }
    fn macs(&self, [channels, height, width]: [usize; 3]) -> u64 {
        let [_, hidden] = self.reduce.weight.lazy_shape().dims();
        // Average pool, two fully connected layers, per-channel rescale.
        (2 * channels * height * width + 2 * channels * hidden) as u64
    }
}

impl AttentionUnit for EfficientChannelAttention {
    fn build(spec: &UnitSpec, device: &Device) -> Result<Self, AttentionError> {
        Ok(EfficientChannelAttentionConfig::new(spec.channels).init(device))
    }
    fn try_forward(&self, x: Tensor<4>) -> Result<Tensor<4>, AttentionError> {
        Ok(self.forward(x))
    }
    fn to_onnx(
        &self,
        graph: &mut OnnxGraph,
        x: &str,
        shape: [usize; 3],
    ) -> Result<String, OnnxError> {
        Ok(EfficientChannelAttention::to_onnx(self, graph, x, shape))
    }
    fn macs(&self, [channels, height, width]: [usize; 3]) -> u64 {
        let [_, _, kernel] = self.channel_conv.weight.lazy_shape().dims();
        // Average pool, 1-D convolution across channels, per-channel rescale.
        (2 * channels * height * width + kernel * channels) as u64
    }
}

impl AttentionUnit for Cbam {
    fn build(spec: &UnitSpec, device: &Device) -> Result<Self, AttentionError> {
        Ok(CbamConfig::new(spec.channels)
            .with_reduction(spec.options.reduction)
            .init(device))
    }
    fn try_forward(&self, x: Tensor<4>) -> Result<Tensor<4>, AttentionError> {
        Ok(self.forward(x))
    }
    fn attention_map(&self, x: Tensor<4>) -> Option<Tensor<4>> {
        Some(Cbam::attention_map(self, x))
    }
    fn batch_norms_mut(&mut self) -> Vec<&mut BatchNorm> {
        vec![&mut self.spatial_norm]
    }
    fn to_onnx(
        &self,
        graph: &mut OnnxGraph,
        x: &str,
        shape: [usize; 3],
    ) -> Result<String, OnnxError> {
        Cbam::to_onnx(self, graph, x, shape)
    }
    fn macs(&self, [channels, height, width]: [usize; 3]) -> u64 {
        let pixels = height * width;
        let [_, hidden] = self.channel_reduce.weight.lazy_shape().dims();
        let [_, _, kernel, _] = self.spatial_conv.weight.lazy_shape().dims();
        // Channel gate: two pools, the shared MLP twice, rescale. Spatial gate: max and mean
        // over channels, the 2->1 convolution, rescale.
        (3 * channels * pixels
            + 4 * channels * hidden
            + 3 * channels * pixels
            + 2 * kernel * kernel * pixels) as u64
    }
}

impl AttentionUnit for StyleRecalibration {
    fn build(spec: &UnitSpec, device: &Device) -> Result<Self, AttentionError> {
        Ok(StyleRecalibrationConfig::new(spec.channels).init(device))
    }
    fn try_forward(&self, x: Tensor<4>) -> Result<Tensor<4>, AttentionError> {
        Ok(self.forward(x))
    }
    fn batch_norms_mut(&mut self) -> Vec<&mut BatchNorm> {
        vec![&mut self.norm]
    }
    fn to_onnx(
        &self,
        graph: &mut OnnxGraph,
        x: &str,
        shape: [usize; 3],
    ) -> Result<String, OnnxError> {
        Ok(StyleRecalibration::to_onnx(self, graph, x, shape))
    }
    fn macs(&self, [channels, height, width]: [usize; 3]) -> u64 {
        // Mean, standard deviation (two passes), channel-wise FC, rescale.
        (4 * channels * height * width + 2 * channels) as u64
    }
}

impl AttentionUnit for GatedChannelTransformation {
    fn build(spec: &UnitSpec, device: &Device) -> Result<Self, AttentionError> {
        Ok(GatedChannelTransformationConfig::new(spec.channels).init(device))
    }
    fn try_forward(&self, x: Tensor<4>) -> Result<Tensor<4>, AttentionError> {
        Ok(self.forward(x))
    }
    fn to_onnx(
        &self,
        graph: &mut OnnxGraph,
        x: &str,
        shape: [usize; 3],
    ) -> Result<String, OnnxError> {
        Ok(GatedChannelTransformation::to_onnx(self, graph, x, shape))
    }
    fn macs(&self, [channels, height, width]: [usize; 3]) -> u64 {
        // Sum of squares, channel normalisation, gating, rescale.
        (2 * channels * height * width + 4 * channels) as u64
    }
}

impl AttentionUnit for SimAm {
    fn build(_spec: &UnitSpec, _device: &Device) -> Result<Self, AttentionError> {
        Ok(SimAmConfig::new().init())
    }
    fn try_forward(&self, x: Tensor<4>) -> Result<Tensor<4>, AttentionError> {
        Ok(self.forward(x))
    }
    fn attention_map(&self, x: Tensor<4>) -> Option<Tensor<4>> {
        Some(SimAm::attention_map(self, x))
    }
    fn to_onnx(
        &self,
        graph: &mut OnnxGraph,
        x: &str,
        shape: [usize; 3],
    ) -> Result<String, OnnxError> {
        Ok(SimAm::to_onnx(self, graph, x, shape))
    }
    fn macs(&self, [channels, height, width]: [usize; 3]) -> u64 {
        // Mean, squared deviation, its sum, the energy, rescale.
        (5 * channels * height * width) as u64
    }
}

impl AttentionUnit for Ppcr {
    fn build(spec: &UnitSpec, device: &Device) -> Result<Self, AttentionError> {
        PpcrConfig::new(spec.channels, spec.spatial_size)
            .with_levels(spec.options.ppcr_levels)
            .with_resize_to_input(spec.options.ppcr_resize_to_input)
            .init(device)
    }
    fn try_forward(&self, x: Tensor<4>) -> Result<Tensor<4>, AttentionError> {
        Ppcr::try_forward(self, x)
    }
    fn attention_map(&self, x: Tensor<4>) -> Option<Tensor<4>> {
        Some(Ppcr::attention_map(self, x))
    }
    fn fixed_input_size(&self) -> Option<[usize; 2]> {
        (!self.resize_to_input).then(|| self.spatial_size())
    }
    fn try_forward_add_relu(
        &self,
        x: &Tensor<4>,
        residual: &Tensor<4>,
    ) -> Option<Result<Tensor<4>, AttentionError>> {
        Ppcr::try_forward_add_relu(self, x, residual)
    }
    fn try_batch_norm_forward_add_relu(
        &self,
        x: &Tensor<4>,
        norm: &TrainingBatchNorm,
        residual: &Tensor<4>,
    ) -> Option<Result<WithBatchStatistics, AttentionError>> {
        Ppcr::try_batch_norm_forward_add_relu(self, x, norm, residual)
    }
    fn try_convolution_forward_add_relu(
        &self,
        convolution: &AffineConvolution,
        residual: &Tensor<4>,
    ) -> Option<Result<Tensor<4>, AttentionError>> {
        Ppcr::try_convolution_forward_add_relu(self, convolution, residual)
    }
    fn to_onnx(
        &self,
        graph: &mut OnnxGraph,
        x: &str,
        shape: [usize; 3],
    ) -> Result<String, OnnxError> {
        Ppcr::to_onnx(self, graph, x, shape)
    }
    fn macs(&self, [channels, height, width]: [usize; 3]) -> u64 {
        let pixels = height * width;
        let maps = super::pyramid_maps(self.levels);
        let finest = 1usize << (self.levels - 1);
        // Finest group means, the pyramid from them, pixel normalisation (mean, centring,
        // variance, scaling), the per-pixel integration, rescale.
        (2 * channels * pixels + maps * finest * pixels + 4 * maps * pixels + maps * pixels) as u64
    }
}

macro_rules! attention_units {
    ($($variant:ident($unit:ty) = $name:literal, $label:literal, $doc:literal;)*) => {
        /// The attention units the factory can build, by name.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        pub enum AttentionKind {
            $(
                #[doc = $doc]
                #[serde(rename = $name)]
                $variant,
            )*
        }

        impl AttentionKind {
            /// Every unit, in the order tables list them.
            pub const ALL: &'static [AttentionKind] = &[$(AttentionKind::$variant),*];

            /// The unit's name on the command line and in configs.
            pub fn name(self) -> &'static str {
                match self {
                    $(AttentionKind::$variant => $name,)*
                }
            }

            /// The unit's name as its paper writes it, for figures and messages.
            pub fn label(self) -> &'static str {
                match self {
                    $(AttentionKind::$variant => $label,)*
                }
            }
        }

        /// An attention unit chosen at run time; see [`AttentionKind`].
        #[derive(Module, Debug)]
        #[allow(clippy::large_enum_variant)]
        pub enum Attention {
            $(
                #[doc = $doc]
                $variant($unit),
            )*
        }

        impl Attention {
            /// Build the unit `config` names for the feature map `spec` describes.
            fn build(
                kind: AttentionKind,
                spec: &UnitSpec,
                device: &Device,
            ) -> Result<Self, AttentionError> {
                Ok(match kind {
                    $(AttentionKind::$variant => Attention::$variant(<$unit>::build(spec, device)?),)*
                })
            }

            /// Which unit this is.
            pub fn kind(&self) -> AttentionKind {
                match self {
                    $(Attention::$variant(_) => AttentionKind::$variant,)*
                }
            }

            /// Recalibrate `x`, or explain why it does not fit the unit.
            pub fn try_forward(&self, x: Tensor<4>) -> Result<Tensor<4>, AttentionError> {
                match self {
                    $(Attention::$variant(unit) => unit.try_forward(x),)*
                }
            }

            /// The unit as ONNX operators from `x` (see [`AttentionUnit::to_onnx`]).
            pub fn to_onnx(
                &self,
                graph: &mut OnnxGraph,
                x: &str,
                shape: [usize; 3],
            ) -> Result<String, OnnxError> {
                match self {
                    $(Attention::$variant(unit) => AttentionUnit::to_onnx(unit, graph, x, shape),)*
                }
            }

            /// Multiply-accumulates of one forward pass on a `[C, H, W]` feature map.
            pub fn macs(&self, input: [usize; 3]) -> u64 {
                match self {
                    $(Attention::$variant(unit) => AttentionUnit::macs(unit, input),)*
                }
            }

            /// The feature-map size the unit's parameters are tied to, when it refuses others.
            pub fn fixed_input_size(&self) -> Option<[usize; 2]> {
                match self {
                    $(Attention::$variant(unit) => AttentionUnit::fixed_input_size(unit),)*
                }
            }

            /// `relu(forward(x) + residual)` in one pass where the unit has a kernel for it
            /// (see [`AttentionUnit::try_forward_add_relu`]); panics where `forward` would.
            pub fn forward_add_relu(
                &self,
                x: &Tensor<4>,
                residual: &Tensor<4>,
            ) -> Option<Tensor<4>> {
                let fused = match self {
                    $(Attention::$variant(unit) => {
                        AttentionUnit::try_forward_add_relu(unit, x, residual)
                    })*
                };
                fused.map(|result| result.unwrap_or_else(|error| panic!("{error}")))
            }

            /// `relu(forward(norm(x)) + residual)` with the BatchNorm `norm` in training mode
            /// folded into the unit's kernel where it has one (see
            /// [`AttentionUnit::try_batch_norm_forward_add_relu`]); panics where `forward`
            /// would.
            pub fn batch_norm_forward_add_relu(
                &self,
                x: &Tensor<4>,
                norm: &TrainingBatchNorm,
                residual: &Tensor<4>,
            ) -> Option<WithBatchStatistics> {
                let fused = match self {
                    $(Attention::$variant(unit) => {
                        AttentionUnit::try_batch_norm_forward_add_relu(unit, x, norm, residual)
                    })*
                };
                fused.map(|result| result.unwrap_or_else(|error| panic!("{error}")))
            }

            /// `relu(forward(y) + residual)` for `y` the output of `convolution`, in the
            /// convolution kernel where the unit has a kernel for it (see
            /// [`AttentionUnit::try_convolution_forward_add_relu`]); panics where `forward`
            /// would.
            pub fn convolution_forward_add_relu(
                &self,
                convolution: &AffineConvolution,
                residual: &Tensor<4>,
            ) -> Option<Tensor<4>> {
                let fused = match self {
                    $(Attention::$variant(unit) => {
                        AttentionUnit::try_convolution_forward_add_relu(unit, convolution, residual)
                    })*
                };
                fused.map(|result| result.unwrap_or_else(|error| panic!("{error}")))
            }

            /// The unit's BatchNorm layers (see [`AttentionUnit::batch_norms_mut`]).
            pub fn batch_norms_mut(&mut self) -> Vec<&mut BatchNorm> {
                match self {
                    $(Attention::$variant(unit) => AttentionUnit::batch_norms_mut(unit),)*
                }
            }

            /// The unit's spatial attention map `[B, 1, H, W]`, where it has one.
            pub fn attention_map(&self, x: Tensor<4>) -> Option<Tensor<4>> {
                match self {
                    $(Attention::$variant(unit) => AttentionUnit::attention_map(unit, x),)*
                }
            }
        }
    };
}

attention_units! {
    None(Identity) = "none", "NONE", "No attention: the plain backbone.";
    Se(SqueezeExcitation) = "se", "SE", "Squeeze-and-Excitation (Hu et al. 2018).";
    Eca(EfficientChannelAttention) = "eca", "ECA", "Efficient Channel Attention (Wang et al. 2020).";
    Cbam(Cbam) = "cbam", "CBAM", "Convolutional Block Attention Module (Woo et al. 2018).";
    Srm(StyleRecalibration) = "srm", "SRM", "Style-based Recalibration Module (Lee et al. 2019).";
    Gct(GatedChannelTransformation) = "gct", "GCT", "Gated Channel Transformation (Yang et al. 2020).";
    SimAm(SimAm) = "simam", "SimAM", "SimAM, parameter-free (Yang et al. 2021).";
    Ppcr(Ppcr) = "ppcr", "PPCR", "Pyramid Pixel Context Recalibration (Zhang et al. 2023).";
}

impl Attention {
    /// Recalibrate `x`; panics with the unit's message where [`Attention::try_forward`] fails.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        self.try_forward(x)
            .unwrap_or_else(|error| panic!("{error}"))
    }
}

impl fmt::Display for AttentionKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for AttentionKind {
    type Err = AttentionError;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        let wanted = name.trim().to_ascii_lowercase();
        AttentionKind::ALL
            .iter()
            .copied()
            .find(|kind| kind.name() == wanted)
            .ok_or_else(|| AttentionError::UnknownUnit {
                name: name.to_string(),
                valid: AttentionKind::ALL
                    .iter()
                    .map(|kind| kind.name())
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }
}

/// Which attention unit to plug into every block, with the options the units share.
#[derive(Config, Debug)]
pub struct AttentionConfig {
    /// The unit.
    pub kind: AttentionKind,
    /// Reduction ratio of SE's and CBAM's bottleneck MLPs.
    #[config(default = 16)]
    pub reduction: usize,
    /// Pyramid levels of PPCR.
    #[config(default = 4)]
    pub ppcr_levels: usize,
    /// Let PPCR resample its per-pixel weights to another input size instead of refusing it.
    #[config(default = false)]
    pub ppcr_resize_to_input: bool,
}

impl AttentionConfig {
    /// Build the configured unit for a feature map of `channels` x `spatial_size`.
    pub fn init(
        &self,
        channels: usize,
        spatial_size: [usize; 2],
        device: &Device,
    ) -> Result<Attention, AttentionError> {
        let spec = UnitSpec {
            channels,
            spatial_size,
            options: self,
        };
        Attention::build(self.kind, &spec, device)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attention::testing::{device, random_tensor};

    #[test]
    fn every_name_round_trips_and_unknown_names_list_the_valid_ones() {
        for kind in AttentionKind::ALL {
            assert_eq!(kind.name().parse::<AttentionKind>().unwrap(), *kind);
        }
        assert_eq!(
            "PPCR".parse::<AttentionKind>().unwrap(),
            AttentionKind::Ppcr
        );
        let error = "sk".parse::<AttentionKind>().unwrap_err().to_string();
        assert!(error.contains("'sk'"), "{error}");
        assert!(
            error.contains("none, se, eca, cbam, srm, gct, simam, ppcr"),
            "{error}"
        );
    }

    #[test]
    fn factory_builds_each_unit_and_keeps_the_shape() {
        let device = device();
        let x = random_tensor([2, 16, 4, 4], 5, &device);
        for kind in AttentionKind::ALL {
            let unit = AttentionConfig::new(*kind)
                .init(16, [4, 4], &device)
                .unwrap();
            assert_eq!(unit.kind(), *kind);
            assert_eq!(unit.forward(x.clone()).dims(), [2, 16, 4, 4], "{kind}");
        }
    }

    #[test]
    fn units_say_which_input_size_they_are_tied_to_and_how_they_are_named() {
        let device = device();
        for kind in AttentionKind::ALL {
            let unit = AttentionConfig::new(*kind)
                .init(16, [4, 6], &device)
                .unwrap();
            let expected = (*kind == AttentionKind::Ppcr).then_some([4, 6]);
            assert_eq!(unit.fixed_input_size(), expected, "{kind}");
            assert_eq!(kind.label().to_ascii_lowercase(), kind.name(), "{kind}");
        }
        let resizing = AttentionConfig::new(AttentionKind::Ppcr)
            .with_ppcr_resize_to_input(true)
            .init(16, [4, 6], &device)
            .unwrap();
        assert_eq!(resizing.fixed_input_size(), None);
        assert_eq!(AttentionKind::SimAm.label(), "SimAM");
    }

    #[test]
    fn factory_reports_ppcr_construction_errors() {
        let error = AttentionConfig::new(AttentionKind::Ppcr)
            .init(4, [4, 4], &device())
            .unwrap_err();
        assert!(matches!(error, AttentionError::InvalidConfig(_)));
    }

    #[test]
    fn kind_serialises_as_its_name() {
        let json = serde_json::to_string(&AttentionKind::SimAm).unwrap();
        assert_eq!(json, "\"simam\"");
        let config = AttentionConfig::new(AttentionKind::Ppcr);
        let back: AttentionConfig =
            serde_json::from_str(&serde_json::to_string(&config).unwrap()).unwrap();
        assert_eq!(back.kind, AttentionKind::Ppcr);
    }
}
