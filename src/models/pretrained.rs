//! Pretrained weights for ppcr's ResNets: torchvision's ImageNet checkpoints (a state dict as
//! `torch.save` writes it, or `.safetensors`; He et al., CVPR 2016, as torchvision builds them:
//! the stride of a bottleneck on its 3x3 convolution, "ResNet v1.5"), read with burn's own store
//! crates and mapped onto ppcr's parameter names, and the weights of any ppcr model, so that a
//! network can start from them.
//!
//! Attention units have no counterpart in torchvision's ResNets: loading weights never touches
//! them, so each unit starts as its own initialisation says (PPCR's zero weights give exactly
//! 0.5 everywhere, so a pretrained backbone with PPCR starts as the backbone with every
//! residual branch halved).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::store::{ModuleSnapshot, ModuleStore, PytorchStore, SafetensorsStore, bridge};
use burn::tensor::{DType, Device, Tensor, TensorData};

use super::{Backbone, ParameterRole, ResNet, ResNetConfig};
use crate::attention::AttentionConfig;

/// The backbones torchvision publishes ImageNet weights for that ppcr builds identically.
pub const TORCHVISION_BACKBONES: [Backbone; 3] =
    [Backbone::ResNet18, Backbone::ResNet34, Backbone::ResNet50];

/// The parameter path of the classifier's weight (`[features, classes]` in burn's layout).
const CLASSIFIER_WEIGHT: &str = "classifier.weight";
/// The parameter path of the classifier's bias.
const CLASSIFIER_BIAS: &str = "classifier.bias";
/// The parameter path of the first convolution's weight (`[64, channels, 7, 7]`).
const STEM_WEIGHT: &str = "stem.conv.weight";

/// Why pretrained weights could not be read or loaded.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PretrainedError {
    /// The file could not be read as a state dict.
    #[error("{path}: cannot read the weights: {message}")]
    Read {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// torchvision has no such network, or ppcr does not build it as torchvision does.
    #[error(
        "{backbone}: no torchvision ImageNet weights fit it; importable backbones: resnet18, \
         resnet34, resnet50"
    )]
    Unsupported {
        /// The backbone asked for.
        backbone: Backbone,
    },
    /// A tensor the network needs is not in the file.
    #[error(
        "{path}: '{key}' is missing; a torchvision {backbone} has it (is this file another network?)"
    )]
    MissingKey {
        /// The file.
        path: PathBuf,
        /// The tensor's name in the file's naming.
        key: String,
        /// The network the file was read as.
        backbone: Backbone,
    },
    /// The file has tensors the network does not.
    #[error(
        "{path}: '{key}' is not part of a torchvision {backbone} ({count} such keys; is this \
         file another network?)"
    )]
    UnexpectedKey {
        /// The file.
        path: PathBuf,
        /// The first such tensor name.
        key: String,
        /// How many there are.
        count: usize,
        /// The network the file was read as.
        backbone: Backbone,
    },
    /// A tensor has another shape than the network's.
    #[error("{path}: '{key}' has shape {found:?} in the file, but the model needs {expected:?}")]
    ShapeMismatch {
        /// The file or run the weights came from.
        path: PathBuf,
        /// The tensor's name.
        key: String,
        /// Its shape in the file.
        found: Vec<usize>,
        /// The shape the model needs.
        expected: Vec<usize>,
    },
    /// The first convolutions differ in size: an ImageNet stem into a small-stem model.
    #[error(
        "{path}: the weights' first convolution is {found:?}, the model's {expected:?}: ImageNet \
         ResNets take the 7x7 stem only above 64 px inputs and the 3x3 small stem up to 64 px; \
         train at --size 65 or more to start from ImageNet weights"
    )]
    StemMismatch {
        /// The file or run the weights came from.
        path: PathBuf,
        /// The weights' shape.
        found: Vec<usize>,
        /// The model's shape.
        expected: Vec<usize>,
    },
    /// A tensor is not floating point.
    #[error("{path}: '{key}' holds {dtype:?} values, not floating-point weights")]
    NotFloat {
        /// The file.
        path: PathBuf,
        /// The tensor's name.
        key: String,
        /// Its type.
        dtype: DType,
    },
    /// The model has a parameter the weights lack (another backbone).
    #[error("{path}: has no weights for '{key}' (the weights are of another backbone)")]
    MissingParameter {
        /// The file or run the weights came from.
        path: PathBuf,
        /// The parameter's path in the model.
        key: String,
    },
}

/// torchvision's name of a BatchNorm tensor named `name` in burn.
fn batch_norm_name(name: &str) -> &str {
    match name {
        "gamma" => "weight",
        "beta" => "bias",
        other => other,
    }
}

/// The name torchvision's ResNets give the parameter at `path` in a ppcr ResNet (enum
/// variants included, as burn names them: `stages.1.blocks.0.Basic.conv1.weight`); `None` for
/// an attention unit's parameters, which torchvision's networks do not have, and for anything
/// else no torchvision ResNet has.
pub fn torchvision_key(path: &str) -> Option<String> {
    let parts: Vec<&str> = path.split('.').collect();
    match parts.as_slice() {
        ["stem", "conv", "weight"] => Some("conv1.weight".into()),
        ["stem", "norm", name] => Some(format!("bn1.{}", batch_norm_name(name))),
        ["classifier", name] => Some(format!("fc.{name}")),
        ["stages", stage, "blocks", block, _variant, rest @ ..] => {
            let stage: usize = stage.parse().ok()?;
            let prefix = format!("layer{}.{block}", stage + 1);
            match rest {
                ["shortcut", _, "conv", "weight"] => Some(format!("{prefix}.downsample.0.weight")),
                ["shortcut", _, "norm", name] => {
                    Some(format!("{prefix}.downsample.1.{}", batch_norm_name(name)))
                }
                [conv, "weight"] if conv.starts_with("conv") => {
                    Some(format!("{prefix}.{conv}.weight"))
                }
                [norm, name] if norm.starts_with("bn") => {
                    Some(format!("{prefix}.{norm}.{}", batch_norm_name(name)))
                }
                _ => None,
            }
        }
        _ => None,
    }
}

/// Whether pretrained weights set the parameter at `path`: not an attention unit's or the
/// training-only projection head's.
fn is_pretrained(path: &str) -> bool {
    matches!(
        ParameterRole::of(path),
        ParameterRole::Backbone | ParameterRole::Classifier
    )
}

/// The parameters of `model` by path, with their shapes, attention units left out.
fn parameter_shapes(model: &ResNet) -> Vec<(String, Vec<usize>)> {
    model
        .collect(None, None, false)
        .into_iter()
        .filter(|tensor| is_pretrained(&tensor.name))
        .map(|tensor| (tensor.name.clone(), tensor.shape.to_vec()))
        .collect()
}

/// The tensors of a state dict file by name, read lazily: `.safetensors` by its extension,
/// anything else as `torch.save` writes a state dict.
fn read_state_dict(
    path: &Path,
) -> Result<BTreeMap<String, burn::store::burn_pack::Tensor>, PretrainedError> {
    let problem = |message: String| PretrainedError::Read {
        path: path.to_path_buf(),
        message,
    };
    if !path.is_file() {
        return Err(problem(if path.exists() {
            "not a file".into()
        } else {
            "no such file".into()
        }));
    }
    let safetensors = path
        .extension()
        .is_some_and(|extension| extension.eq_ignore_ascii_case("safetensors"));
    if safetensors {
        let mut store = SafetensorsStore::from_file(path);
        store
            .get_all_tensors()
            .cloned()
            .map_err(|e| problem(e.to_string()))
    } else {
        let mut store = PytorchStore::from_file(path);
        store.get_all_tensors().cloned().map_err(|e| {
            problem(format!(
                "{e} (expected a state dict as torch.save writes it)"
            ))
        })
    }
}

/// Every tensor of a state dict file (`.safetensors` by its extension, anything else as
/// `torch.save` writes one) by name, with its values in the file's own type.
pub fn read_tensors(path: &Path) -> Result<BTreeMap<String, TensorData>, PretrainedError> {
    read_state_dict(path)?
        .into_iter()
        .map(|(name, tensor)| {
            let data = bridge::into_data(tensor).map_err(|e| PretrainedError::Read {
                path: path.to_path_buf(),
                message: format!("'{name}': {e}"),
            })?;
            Ok((name, data))
        })
        .collect()
}

/// Weights for a ppcr ResNet, by parameter path (attention units left out), and where they
/// came from (named in errors).
#[derive(Debug, Clone)]
pub struct PretrainedWeights {
    source: PathBuf,
    tensors: BTreeMap<String, TensorData>,
}

impl PretrainedWeights {
    /// Read a torchvision checkpoint of `backbone` (`.safetensors` by its extension, anything
    /// else as a `torch.save` state dict). Every tensor of torchvision's network must be there
    /// with its shape, and nothing else (BatchNorm's `num_batches_tracked` counters aside, which
    /// burn does not keep); the classifier may have any number of classes.
    pub fn read_torchvision(path: &Path, backbone: Backbone) -> Result<Self, PretrainedError> {
        if !TORCHVISION_BACKBONES.contains(&backbone) {
            return Err(PretrainedError::Unsupported { backbone });
        }
        let mut file = read_state_dict(path)?;
        let classes = file
            .get("fc.bias")
            .map(|bias| bias.shape.to_vec())
            .filter(|shape| shape.len() == 1 && shape[0] > 0)
            .map_or(1000, |shape| shape[0]);
        let reference = ResNetConfig::new(
            backbone,
            AttentionConfig::new(crate::attention::AttentionKind::None),
            classes,
        )
        .with_input_size(224)
        .init(&Device::flex())
        .map_err(|e| PretrainedError::Read {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        let mut tensors = BTreeMap::new();
        for (name, expected) in parameter_shapes(&reference) {
            let key =
                torchvision_key(&name).expect("every backbone parameter has a torchvision name");
            let Some(tensor) = file.remove(&key) else {
                return Err(PretrainedError::MissingKey {
                    path: path.to_path_buf(),
                    key,
                    backbone,
                });
            };
            // torchvision keeps a linear layer's weight as [out, in], burn as [in, out].
            let torchvision_shape = if name == CLASSIFIER_WEIGHT {
                vec![expected[1], expected[0]]
            } else {
                expected.clone()
            };
            let found = tensor.shape.to_vec();
            if found != torchvision_shape {
                return Err(PretrainedError::ShapeMismatch {
                    path: path.to_path_buf(),
                    key,
                    found,
                    expected: torchvision_shape,
                });
            }
            if !tensor.dtype.is_float() {
                return Err(PretrainedError::NotFloat {
                    path: path.to_path_buf(),
                    key,
                    dtype: tensor.dtype,
                });
            }
            let data = bridge::into_data(tensor)
                .map_err(|e| PretrainedError::Read {
                    path: path.to_path_buf(),
                    message: format!("'{key}': {e}"),
                })?
                .convert::<f32>();
            let data = if name == CLASSIFIER_WEIGHT {
                Tensor::<2>::from_data(data, &Device::flex())
                    .transpose()
                    .into_data()
            } else {
                data
            };
            tensors.insert(name, data);
        }
        let unexpected: Vec<String> = file
            .into_keys()
            .filter(|key| !key.ends_with(".num_batches_tracked"))
            .collect();
        if let Some(key) = unexpected.first() {
            return Err(PretrainedError::UnexpectedKey {
                path: path.to_path_buf(),
                key: key.clone(),
                count: unexpected.len(),
                backbone,
            });
        }
        Ok(PretrainedWeights {
            source: path.to_path_buf(),
            tensors,
        })
    }

    /// The weights of a ppcr model (its attention units left out); `source` names it in
    /// errors.
    pub fn from_model(model: &ResNet, source: &Path) -> Self {
        let tensors = model
            .collect(None, None, false)
            .into_iter()
            .filter(|tensor| is_pretrained(&tensor.name))
            .map(|tensor| {
                let data = bridge::to_data(&tensor)
                    .expect("a live model's tensors materialise")
                    .convert::<f32>();
                (tensor.name, data)
            })
            .collect();
        PretrainedWeights {
            source: source.to_path_buf(),
            tensors,
        }
    }

    /// Where the weights came from.
    pub fn source(&self) -> &Path {
        &self.source
    }

    /// The classifier's number of classes.
    pub fn num_classes(&self) -> usize {
        self.tensors
            .get(CLASSIFIER_BIAS)
            .map_or(0, |bias| bias.shape().iter().product())
    }

    /// The input channels of the first convolution.
    pub fn in_channels(&self) -> usize {
        self.tensors
            .get(STEM_WEIGHT)
            .map_or(0, |weight| weight.shape().get(1).copied().unwrap_or(0))
    }

    /// Load the weights into `model`, whose backbone must be the weights' own. Its attention
    /// units keep their initialisation. Where the model has another number of classes, its
    /// classifier keeps its initialisation too (`classifier_kept` is then true); where it
    /// takes one channel and the weights three (RGB), the first convolution's filters are
    /// summed over their colours, which gives a grey image the response of its RGB copy.
    pub fn load_into(&self, mut model: ResNet) -> Result<LoadedWeights, PretrainedError> {
        let mut tensors = Vec::new();
        let mut classifier_kept = false;
        let mut summed_rgb = false;
        for (name, expected) in parameter_shapes(&model) {
            let Some(data) = self.tensors.get(&name) else {
                return Err(PretrainedError::MissingParameter {
                    path: self.source.clone(),
                    key: name,
                });
            };
            let found = data.shape().to_vec();
            let data = if found == expected {
                data.clone()
            } else if name == CLASSIFIER_WEIGHT || name == CLASSIFIER_BIAS {
                classifier_kept = true;
                continue;
            } else if name == STEM_WEIGHT
                && found.len() == 4
                && found[1] == 3
                && expected[1] == 1
                && (found[0], found[2], found[3]) == (expected[0], expected[2], expected[3])
            {
                summed_rgb = true;
                Tensor::<4>::from_data(data.clone(), &Device::flex())
                    .sum_dim(1)
                    .into_data()
            } else if name == STEM_WEIGHT && found.len() == 4 && found[2] != expected[2] {
                return Err(PretrainedError::StemMismatch {
                    path: self.source.clone(),
                    found,
                    expected,
                });
            } else {
                return Err(PretrainedError::ShapeMismatch {
                    path: self.source.clone(),
                    key: name,
                    found,
                    expected,
                });
            };
            tensors.push(bridge::from_data(data, name, None));
        }
        let result = model.apply(tensors, None, None, false);
        if let Some(error) = result.errors.first() {
            return Err(PretrainedError::Read {
                path: self.source.clone(),
                message: format!("{error:?}"),
            });
        }
        Ok(LoadedWeights {
            model,
            classifier_kept,
            summed_rgb,
        })
    }
}

/// A model with pretrained weights loaded, and what could not be taken over as it was.
#[derive(Debug)]
pub struct LoadedWeights {
    /// The model.
    pub model: ResNet,
    /// The classifier kept its initialisation (the weights had another number of classes).
    pub classifier_kept: bool,
    /// The first convolution's RGB filters were summed for a one-channel input.
    pub summed_rgb: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attention::AttentionKind;

    #[test]
    fn names_follow_torchvision() {
        let cases = [
            ("stem.conv.weight", Some("conv1.weight")),
            ("stem.norm.gamma", Some("bn1.weight")),
            ("stem.norm.running_var", Some("bn1.running_var")),
            (
                "stages.0.blocks.1.Basic.conv2.weight",
                Some("layer1.1.conv2.weight"),
            ),
            (
                "stages.3.blocks.0.Bottleneck.bn3.beta",
                Some("layer4.0.bn3.bias"),
            ),
            (
                "stages.1.blocks.0.Basic.shortcut.Projection.conv.weight",
                Some("layer2.0.downsample.0.weight"),
            ),
            (
                "stages.1.blocks.0.Basic.shortcut.Projection.norm.running_mean",
                Some("layer2.0.downsample.1.running_mean"),
            ),
            ("classifier.weight", Some("fc.weight")),
            (
                "stages.0.blocks.0.Basic.attention.Ppcr.pixel_context_weights",
                None,
            ),
        ];
        for (path, key) in cases {
            assert_eq!(torchvision_key(path).as_deref(), key, "{path}");
        }
    }

    fn resnet18(attention: AttentionKind, classes: usize, channels: usize) -> ResNet {
        ResNetConfig::new(Backbone::ResNet18, AttentionConfig::new(attention), classes)
            .with_in_channels(channels)
            .with_input_size(72)
            .init(&Device::flex())
            .unwrap()
    }

    fn logits(model: &ResNet, input: Tensor<4>) -> Vec<f32> {
        use burn::module::Module;
        model
            .clone()
            .valid()
            .forward(input)
            .into_data()
            .try_to_vec::<f32>()
            .unwrap()
    }

    /// Summing the RGB filters gives a grey image exactly the response of its RGB copy.
    #[test]
    fn a_grey_model_answers_as_the_rgb_model_on_the_grey_image_in_colour() {
        let rgb = resnet18(AttentionKind::None, 5, 3);
        let weights = PretrainedWeights::from_model(&rgb, Path::new("rgb"));
        assert_eq!((weights.num_classes(), weights.in_channels()), (5, 3));
        let loaded = weights
            .load_into(resnet18(AttentionKind::None, 5, 1))
            .unwrap();
        assert!(loaded.summed_rgb && !loaded.classifier_kept);
        let grey = Tensor::<4>::from_data(
            TensorData::new(
                crate::attention::testing::seeded_values(72 * 72, 3),
                [1, 1, 72, 72],
            ),
            &Device::flex(),
        );
        let colour = Tensor::cat(vec![grey.clone(), grey.clone(), grey.clone()], 1);
        let (a, b) = (logits(&loaded.model, grey), logits(&rgb, colour));
        for (x, y) in a.iter().zip(&b) {
            assert!((x - y).abs() <= 1e-4 * (1.0 + y.abs()), "{a:?} vs {b:?}");
        }
    }

    /// Units keep their initialisation: PPCR's weights stay zero, so every unit scales by 0.5;
    /// another class count keeps the new classifier.
    #[test]
    fn attention_units_and_a_new_classifier_keep_their_initialisation() {
        let plain = resnet18(AttentionKind::None, 5, 3);
        let target = resnet18(AttentionKind::Ppcr, 7, 3);
        let classifier_before = target.classifier.weight.val().into_data();
        let loaded = PretrainedWeights::from_model(&plain, Path::new("plain"))
            .load_into(target)
            .unwrap();
        assert!(loaded.classifier_kept);
        assert_eq!(
            loaded.model.classifier.weight.val().into_data(),
            classifier_before
        );
        let unit_weights: Vec<f32> = loaded
            .model
            .collect(None, None, false)
            .into_iter()
            .filter(|tensor| ParameterRole::of(&tensor.name) == ParameterRole::Attention)
            .flat_map(|tensor| {
                bridge::to_data(&tensor)
                    .unwrap()
                    .try_to_vec::<f32>()
                    .unwrap()
            })
            .collect();
        assert!(!unit_weights.is_empty() && unit_weights.iter().all(|w| *w == 0.0));
        assert_eq!(
            loaded.model.stem.conv.weight.val().into_data(),
            plain.stem.conv.weight.val().into_data()
        );
        // Another backbone is refused by name.
        let error = PretrainedWeights::from_model(&plain, Path::new("plain"))
            .load_into(
                ResNetConfig::new(
                    Backbone::ResNet34,
                    AttentionConfig::new(AttentionKind::None),
                    5,
                )
                .with_input_size(72)
                .init(&Device::flex())
                .unwrap(),
            )
            .unwrap_err();
        assert!(
            error
                .to_string()
                .contains("plain: has no weights for 'stages.0.blocks.2"),
            "{error}"
        );
        // An ImageNet stem into a small-stem model says how to get the right stem.
        let small = ResNetConfig::new(
            Backbone::ResNet18,
            AttentionConfig::new(AttentionKind::None),
            5,
        )
        .with_input_size(32)
        .init(&Device::flex())
        .unwrap();
        let error = PretrainedWeights::from_model(&plain, Path::new("plain"))
            .load_into(small)
            .unwrap_err();
        assert!(error.to_string().contains("--size 65 or more"), "{error}");
    }

    /// torchvision's parameter counts (`sum(p.numel() for p in resnetNN().parameters())`) and
    /// state-dict sizes (`len(resnetNN().state_dict())`, num_batches_tracked included).
    #[test]
    fn every_parameter_of_the_three_backbones_has_a_torchvision_name() {
        for (backbone, parameters, keys) in [
            (Backbone::ResNet18, 11_689_512, 122),
            (Backbone::ResNet34, 21_797_672, 218),
            (Backbone::ResNet50, 25_557_032, 320),
        ] {
            let model =
                ResNetConfig::new(backbone, AttentionConfig::new(AttentionKind::None), 1000)
                    .with_input_size(224)
                    .init(&Device::flex())
                    .unwrap();
            let shapes = parameter_shapes(&model);
            let names: std::collections::BTreeSet<String> = shapes
                .iter()
                .map(|(name, _)| torchvision_key(name).unwrap())
                .collect();
            assert_eq!(names.len(), shapes.len(), "{backbone}: names are unique");
            let batch_norms = names
                .iter()
                .filter(|n| n.ends_with(".running_mean"))
                .count();
            assert_eq!(names.len() + batch_norms, keys, "{backbone}");
            let trainable: usize = shapes
                .iter()
                .filter(|(name, _)| !name.contains("running_"))
                .map(|(_, shape)| shape.iter().product::<usize>())
                .sum();
            assert_eq!(trainable, parameters, "{backbone}");
        }
    }
}
