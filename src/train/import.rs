//! `ppcr import`'s work: a torchvision ImageNet checkpoint turned into an ordinary run folder
//! (weights, `run.json`, `config.toml`), so that `predict`, `eval`, `explain` and
//! `train --pretrained` use it as any run.

use std::path::Path;

use burn::tensor::Device;

use super::{TrainConfig, TrainError};
use crate::attention::{AttentionConfig, AttentionKind};
use crate::data::{Normalization, TestTimeAugmentation};
use crate::models::pretrained::PretrainedWeights;
use crate::models::{Backbone, ResNetConfig};
use crate::runfiles::{RunDir, RunInfo};

/// The input size torchvision's ImageNet networks were trained at.
pub const IMAGENET_INPUT_SIZE: usize = 224;

/// What [`import_torchvision`] wrote.
#[derive(Debug, Clone)]
pub struct ImportOutcome {
    /// The classes of the imported classifier.
    pub num_classes: usize,
    /// Parameters of the imported network.
    pub params: usize,
}

/// Read the torchvision checkpoint `file` as `backbone` and write it into the new run folder
/// `out`: its weights as the `best` checkpoint, `run.json` (the classes named by
/// `class_names`, else by index; input 224 px RGB; ImageNet's mean and std) and `config.toml`.
/// Nothing is written unless the whole file reads and fits, and an existing run is refused.
pub fn import_torchvision(
    file: &Path,
    backbone: Backbone,
    class_names: Option<Vec<String>>,
    out: &Path,
) -> Result<ImportOutcome, TrainError> {
    let weights = PretrainedWeights::read_torchvision(file, backbone)?;
    let num_classes = weights.num_classes();
    let class_names = match class_names {
        Some(names) if names.len() != num_classes => {
            return Err(TrainError::Config(format!(
                "{} class names given, but the file's classifier has {num_classes} classes",
                names.len()
            )));
        }
        Some(names) => names,
        None => (0..num_classes).map(|i| i.to_string()).collect(),
    };
    let model_config = ResNetConfig::new(
        backbone,
        AttentionConfig::new(AttentionKind::None),
        num_classes,
    )
    .with_in_channels(3)
    .with_input_size(IMAGENET_INPUT_SIZE);
    let loaded = weights.load_into(model_config.init(&Device::flex())?)?;
    let params = crate::params::count_trainable(&loaded.model);
    if out.join("run.json").exists() {
        return Err(TrainError::RunExists {
            path: out.to_path_buf(),
        });
    }
    let run = RunDir::create(out)?;
    let normalization = Normalization::imagenet();
    let config = TrainConfig {
        backbone,
        attention: AttentionKind::None,
        size: Some(IMAGENET_INPUT_SIZE),
        channels: Some(3),
        mean: Some(normalization.mean.clone()),
        std: Some(normalization.std.clone()),
        // `predict` gives torchvision's probabilities for the image itself.
        tta: TestTimeAugmentation::None,
        ..TrainConfig::default()
    };
    let info = RunInfo {
        model: model_config,
        class_names,
        normalization,
        dataset: format!("imported from {} (torchvision {backbone})", file.display()),
        tta: TestTimeAugmentation::None,
    };
    run.save_weights(&loaded.model)?;
    run.write_file(&run.config_path(), config.to_toml().as_bytes())?;
    // run.json last: a folder without it is not a run, so an interrupted import leaves none.
    run.write_file(
        &run.run_info_path(),
        &serde_json::to_vec_pretty(&info).expect("run info serialises"),
    )?;
    Ok(ImportOutcome {
        num_classes,
        params,
    })
}
