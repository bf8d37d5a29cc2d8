//! Command-line parsing and dispatch to the subcommands, one file each.

#[macro_use]
mod output;

mod allocator;
mod bench;
mod compare;
#[cfg(any(feature = "cuda", feature = "wgpu"))]
mod compile_notice;
mod data_options;
mod device;
mod eval;
mod explain;
mod export;
mod import;
mod models;
mod panic_hook;
mod predict;
mod profile;
mod progress;
mod report;
mod soak;
mod train;
mod units;

use clap::{Parser, Subcommand};

pub use allocator::keep_freed_buffers;
pub use output::is_broken_pipe;
pub use panic_hook::install as install_panic_hook;

/// Attention-recalibrated CNNs (PPCR and the units it is compared to) for medical image
/// classification.
#[derive(Parser, Debug)]
#[command(name = "ppcr", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Train and evaluate a model (with no options: PPCR ResNet-20 on the built-in BreastMNIST).
    Train(Box<train::TrainArgs>),
    /// Metrics of a trained run on a data split.
    Eval(eval::EvalArgs),
    /// Class and probabilities for image files.
    Predict(predict::PredictArgs),
    /// Grad-CAM and attention-map figures for image files, with explain.json.
    Explain(explain::ExplainArgs),
    /// A trained run as an ONNX model or as safetensors weights.
    Export(export::ExportArgs),
    /// A torchvision ImageNet checkpoint (resnet18/34/50) as a run folder to predict with or
    /// fine-tune from.
    Import(import::ImportArgs),
    /// List every backbone x attention unit with its parameter counts.
    Models(models::ModelsArgs),
    /// Train every unit with every seed and tabulate their test metrics.
    Compare(Box<compare::CompareArgs>),
    /// Parameters, MACs and latency of every unit on one backbone.
    Profile(profile::ProfileArgs),
    /// Time the attention units: unit vs copy, network vs plain network, end to end.
    Bench(bench::BenchArgs),
    /// One self-contained HTML report of run, comparison and image folders.
    Report(report::ReportArgs),
}

/// Parse the command line and run the chosen subcommand.
pub fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Train(args) => train::run(&args),
        Command::Eval(args) => eval::run(&args),
        Command::Predict(args) => predict::run(&args),
        Command::Explain(args) => explain::run(&args),
        Command::Export(args) => export::run(&args),
        Command::Import(args) => import::run(&args),
        Command::Models(args) => models::run(&args),
        Command::Bench(args) => bench::run(&args),
        Command::Profile(args) => profile::run(&args),
        Command::Compare(args) => compare::run(&args),
        Command::Report(args) => report::run(&args),
    }
}
