//! Command-line parsing and dispatch to the subcommands, one file each.

mod models;

use clap::{Parser, Subcommand};

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
    /// List every backbone x attention unit with its parameter counts.
    Models(models::ModelsArgs),
}

/// Parse the command line and run the chosen subcommand.
pub fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Models(args) => models::run(&args),
    }
}
