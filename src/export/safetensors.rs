//! `ppcr export --format safetensors`: the run's weights under stable names, for users of
//! other frameworks. Backbone tensors take torchvision's names (`conv1.weight`,
//! `layer2.0.downsample.1.running_var`, `fc.weight` as `[classes, features]`), so a
//! torchvision ResNet of the same depth loads them directly; attention units' tensors are
//! named `layer<S>.<B>.attention.<field>` after the unit's own fields. The header's metadata
//! carries the classes, the architecture and the normalisation.

use std::collections::HashMap;
use std::path::Path;

use burn::store::{ModuleSnapshot, bridge};
use burn::tensor::{Device, Tensor};
use safetensors::tensor::{Dtype, TensorView};

use super::{ExportError, ExportOutcome, load_best, metadata};
use crate::models::ParameterRole;
use crate::models::pretrained::torchvision_key;
use crate::onnx::tensor_values;
use crate::runfiles::{RunFileError, write_file};

/// The stable name of the parameter at `path` in a ppcr ResNet (burn's path, with enum
/// variants): torchvision's name for backbone tensors, `layer<S>.<B>.attention.<field>` for
/// a unit's.
pub fn stable_name(path: &str) -> String {
    if let Some(key) = torchvision_key(path) {
        return key;
    }
    let parts: Vec<&str> = path.split('.').collect();
    match parts.as_slice() {
        [
            "stages",
            stage,
            "blocks",
            block,
            _variant,
            "attention",
            _unit,
            rest @ ..,
        ] => {
            let stage: usize = stage.parse().unwrap_or(0);
            format!("layer{}.{block}.attention.{}", stage + 1, rest.join("."))
        }
        _ => path.to_string(),
    }
}

/// Write the `best` weights of the run folder `run` to `out` as safetensors (atomically).
pub fn export_safetensors(run: &Path, out: &Path) -> Result<ExportOutcome, ExportError> {
    let (model, info) = load_best(run)?;
    let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    for tensor in model.collect(None, None, false) {
        // The contrastive projection head exists for training only.
        if ParameterRole::of(&tensor.name) == ParameterRole::Projection {
            continue;
        }
        let name = stable_name(&tensor.name);
        let mut shape = tensor.shape.to_vec();
        let mut data = bridge::to_data(&tensor).map_err(|e| RunFileError::Corrupt {
            path: run.to_path_buf(),
            message: format!("'{}': {e}", tensor.name),
        })?;
        if tensor.name == "classifier.weight" {
            // torchvision's (and PyTorch's) linear layout is [out, in]; burn's is [in, out].
            data = Tensor::<2>::from_data(data, &Device::flex())
                .transpose()
                .into_data();
            shape.reverse();
        }
        let bytes = tensor_values(data)
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        tensors.push((name, shape, bytes));
    }
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    let views: Vec<(String, TensorView)> = tensors
        .iter()
        .map(|(name, shape, bytes)| {
            let view = TensorView::new(Dtype::F32, shape.clone(), bytes)
                .expect("shape and byte count agree");
            (name.clone(), view)
        })
        .collect();
    let header: HashMap<String, String> = metadata(&info).into_iter().collect();
    let bytes = safetensors::tensor::serialize(views, Some(header))
        .expect("in-memory safetensors serialise");
    write_file(out, &bytes)?;
    Ok(ExportOutcome {
        path: out.to_path_buf(),
        bytes: bytes.len(),
        items: tensors.len(),
    })
}
