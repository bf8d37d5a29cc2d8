//! `ppcr export`: a trained run as an ONNX model or as safetensors weights.

use std::path::PathBuf;

use clap::{Args, ValueEnum};

use ppcr::export::{export_onnx, export_safetensors};

/// The file formats `ppcr export` writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Format {
    /// The network in inference form (opset 13): input `image` [N, C, H, W] float32 pixels in
    /// 0-1 (normalisation inside the graph), output `probabilities` [N, classes].
    Onnx,
    /// The weights under stable (torchvision) names, with the classes and normalisation in the
    /// header's metadata.
    Safetensors,
}

/// Options of `ppcr export`.
#[derive(Args, Debug)]
pub struct ExportArgs {
    /// Run folder written by `ppcr train` or `ppcr import` (its best checkpoint is exported).
    #[arg(long)]
    checkpoint: PathBuf,
    /// File format.
    #[arg(long, value_enum)]
    format: Format,
    /// The file to write.
    #[arg(long)]
    out: PathBuf,
}

/// Run `ppcr export`.
pub fn run(args: &ExportArgs) -> anyhow::Result<()> {
    let outcome = match args.format {
        Format::Onnx => export_onnx(&args.checkpoint, &args.out)?,
        Format::Safetensors => export_safetensors(&args.checkpoint, &args.out)?,
    };
    let what = match args.format {
        Format::Onnx => "graph nodes",
        Format::Safetensors => "tensors",
    };
    out!(
        "wrote {} ({} bytes, {} {what})",
        outcome.path.display(),
        outcome.bytes,
        outcome.items
    );
    Ok(())
}
