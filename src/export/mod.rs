//! A trained run leaves the lab: as an ONNX file ([`export_onnx`]; inference form, every unit
//! in standard operators, checked against tract in the tests) or as its weights under stable
//! names in a safetensors file ([`export_safetensors`]), for users of other frameworks.

mod onnx;
mod safetensors;

pub use onnx::{INPUT_NAME, OUTPUT_NAME, export_onnx};
pub use safetensors::{export_safetensors, stable_name};

use std::path::PathBuf;

/// Why a run could not be exported.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// The run could not be read.
    #[error(transparent)]
    Run(#[from] crate::train::TrainError),
    /// The run's network has a part with no ONNX form.
    #[error("{run}: {source}")]
    Onnx {
        /// The run folder.
        run: PathBuf,
        /// What cannot be written.
        source: crate::onnx::OnnxError,
    },
    /// Writing the file failed.
    #[error(transparent)]
    Write(#[from] crate::runfiles::RunFileError),
}

/// What an export wrote.
#[derive(Debug, Clone)]
pub struct ExportOutcome {
    /// The file.
    pub path: PathBuf,
    /// Its size in bytes.
    pub bytes: usize,
    /// Tensors (safetensors) or graph nodes (ONNX) written.
    pub items: usize,
}

/// The `best` weights of the run folder `run`, on the CPU, with its `run.json`.
fn load_best(
    run: &std::path::Path,
) -> Result<(crate::models::ResNet, crate::runfiles::RunInfo), ExportError> {
    let run_dir = crate::runfiles::RunDir::open(run).map_err(crate::train::TrainError::from)?;
    Ok(crate::train::load_trained_model(
        &run_dir,
        "best",
        &burn::tensor::Device::flex(),
    )?)
}

/// The metadata both formats carry: the classes, the architecture, the input normalisation
/// and the run's test-time views, as `key -> value` (class names as a JSON list).
fn metadata(info: &crate::runfiles::RunInfo) -> Vec<(String, String)> {
    let model = &info.model;
    vec![
        (
            "class_names".into(),
            serde_json::to_string(&info.class_names).expect("names serialise"),
        ),
        ("backbone".into(), model.backbone.to_string()),
        ("attention".into(), model.attention.kind.to_string()),
        (
            "input_shape".into(),
            format!(
                "[N, {}, {}, {}]",
                model.in_channels, model.input_size, model.input_size
            ),
        ),
        (
            "normalization_mean".into(),
            serde_json::to_string(&info.normalization.mean).expect("numbers serialise"),
        ),
        (
            "normalization_std".into(),
            serde_json::to_string(&info.normalization.std).expect("numbers serialise"),
        ),
        ("dataset".into(), info.dataset.clone()),
        // The graph is the network alone: a deployment that wants the run's predictions
        // averages these views itself.
        ("test_time_augmentation".into(), info.tta.name().into()),
        (
            "producer".into(),
            format!("ppcr {}", env!("CARGO_PKG_VERSION")),
        ),
    ]
}
