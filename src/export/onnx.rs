//! `ppcr export --format onnx`: the run's network in inference form as an ONNX model.
//!
//! Input `image`: `[N, C, H, W]` float32 pixel values scaled to 0-1, at the run's input size
//! (N free). The run's normalisation is inside the graph (`Sub` mean, `Div` std; the values
//! are also in the metadata). Output `probabilities`: `[N, classes]`, the softmax of the
//! logits. BatchNorm is folded into the convolutions; every attention unit is written with
//! standard operators of opset [`crate::onnx::OPSET`] (see each unit's `to_onnx`).

use std::path::Path;

use prost::Message;

use super::{ExportError, ExportOutcome, load_best, metadata};
use crate::onnx::{OnnxGraph, int};
use crate::runfiles::write_file;

/// The graph input's name.
pub const INPUT_NAME: &str = "image";
/// The graph output's name.
pub const OUTPUT_NAME: &str = "probabilities";

/// Write the `best` weights of the run folder `run` to `out` as an ONNX model (atomically).
pub fn export_onnx(run: &Path, out: &Path) -> Result<ExportOutcome, ExportError> {
    let (model, info) = load_best(run)?;
    let channels = info.model.in_channels;
    let size = info.model.input_size;
    let mut graph = OnnxGraph::new();
    let shape = [1, channels, 1, 1];
    let mean = graph.constant("mean", &info.normalization.mean, &shape);
    let std = graph.constant("std", &info.normalization.std, &shape);
    let centred = graph.binary("Sub", INPUT_NAME, &mean);
    let normalised = graph.binary("Div", &centred, &std);
    let logits = model
        .to_onnx(&mut graph, &normalised)
        .map_err(|source| ExportError::Onnx {
            run: run.to_path_buf(),
            source,
        })?;
    graph.named_node("Softmax", &[&logits], vec![int("axis", 1)], OUTPUT_NAME);
    let mut metadata = metadata(&info);
    metadata.push((
        "input".into(),
        format!(
            "{INPUT_NAME}: [N, {channels}, {size}, {size}] float32 pixel values scaled to 0-1; \
             the normalisation (mean, std above) is inside the graph"
        ),
    ));
    metadata.push((
        "output".into(),
        format!(
            "{OUTPUT_NAME}: [N, {}] class probabilities (softmax)",
            info.class_names.len()
        ),
    ));
    let model_proto = graph.into_model(
        INPUT_NAME,
        &[channels, size, size],
        OUTPUT_NAME,
        info.class_names.len(),
        metadata,
    );
    let nodes = model_proto.graph.as_ref().map_or(0, |g| g.node.len());
    let bytes = model_proto.encode_to_vec();
    write_file(out, &bytes)?;
    Ok(ExportOutcome {
        path: out.to_path_buf(),
        bytes: bytes.len(),
        items: nodes,
    })
}
