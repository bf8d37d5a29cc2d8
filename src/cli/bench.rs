//! `ppcr bench`: what the attention units cost, as medians and ratios measured in one run.

use std::path::PathBuf;

use clap::{Args, ValueEnum};
use serde_json::json;

use super::device::DeviceArgs;
use ppcr::attention::AttentionKind;
use ppcr::models::Backbone;
use ppcr::profile::{NetworkCase, end_to_end_bench, network_bench, unit_bench};

/// Which benchmarks to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Suite {
    /// PPCR forward and forward+backward against a copy of its input.
    Unit,
    /// Training step and inference of ResNet + unit against the plain ResNet.
    Network,
    /// Training images/s of the default model.
    EndToEnd,
    /// All of the above.
    All,
    /// Train the default model for --minutes and record resident memory per epoch (not part
    /// of `all`).
    Soak,
}

/// Options of `ppcr bench`.
#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Which benchmarks.
    #[arg(long, value_enum, default_value_t = Suite::All)]
    suite: Suite,
    /// Timed runs per measurement (the median is reported).
    #[arg(long, default_value_t = 7)]
    runs: usize,
    /// Untimed warm-up runs per measurement.
    #[arg(long, default_value_t = 2)]
    warmup: usize,
    /// Units for the network suite [default: all].
    #[arg(long = "attn", value_delimiter = ',')]
    attention: Option<Vec<AttentionKind>>,
    /// ResNet-18 input size for the network suite.
    #[arg(long, default_value_t = 112)]
    resnet18_input: usize,
    /// Print JSON instead of tables.
    #[arg(long)]
    json: bool,
    /// Length of the soak run, minutes.
    #[arg(long, default_value_t = 30.0)]
    minutes: f64,
    /// Where the soak run writes its memory curve (epoch, seconds, resident MiB).
    #[arg(long, default_value = "soak.csv")]
    soak_csv: PathBuf,
    #[command(flatten)]
    device: DeviceArgs,
}

/// Run `ppcr bench`.
pub fn run(args: &BenchArgs) -> anyhow::Result<()> {
    if args.suite == Suite::Soak {
        return super::soak::run(args.minutes, &args.soak_csv, &args.device.device()?);
    }
    let device = args.device.device()?;
    let mut report = serde_json::Map::new();
    let wants = |suite| args.suite == suite || args.suite == Suite::All;
    if wants(Suite::Unit) {
        let shapes = ppcr::profile::unit_bench_shapes();
        let results = unit_bench(&shapes, &device, args.warmup, args.runs);
        if !args.json {
            println!(
                "PPCR unit vs a copy of its input (median of {} runs; ratios: median of per-run ratios)",
                args.runs
            );
            println!(
                "{:<22} {:>18} {:>9} {:>9} {:>7} {:>11} {:>7} {:>12} {:>8} {:>10}",
                "where",
                "shape",
                "copy ms",
                "fwd ms",
                "fwd/cp",
                "fwd+bwd ms",
                "f+b/cp",
                "cp f+b ms",
                "f+b/cpfb",
                "literal/fwd"
            );
            for r in &results {
                println!(
                    "{:<22} {:>18} {:>9.3} {:>9.3} {:>7.2} {:>11.3} {:>7.2} {:>12.3} {:>8.2} {:>10.2}",
                    r.shape.label,
                    format!("{:?}", r.shape.shape),
                    r.copy.median_ms,
                    r.forward.median_ms,
                    r.forward_ratio,
                    r.forward_backward.median_ms,
                    r.forward_backward_ratio,
                    r.copy_forward_backward.median_ms,
                    r.forward_backward_harness_ratio,
                    r.literal_ratio
                );
            }
            println!();
        }
        let rows: Vec<_> = results
            .iter()
            .map(|r| {
                json!({"bench": r, "forward_ratio": r.forward_ratio,
                       "forward_backward_ratio": r.forward_backward_ratio,
                       "forward_backward_harness_ratio": r.forward_backward_harness_ratio})
            })
            .collect();
        report.insert("unit".into(), json!(rows));
    }
    if wants(Suite::Network) {
        let units = args
            .attention
            .clone()
            .unwrap_or_else(|| AttentionKind::ALL.to_vec());
        let cases = [
            NetworkCase {
                backbone: Backbone::ResNet20,
                input: 32,
                batch: 64,
                channels: 3,
            },
            NetworkCase {
                backbone: Backbone::ResNet18,
                input: args.resnet18_input,
                batch: 32,
                channels: 3,
            },
        ];
        let mut all = Vec::new();
        for case in &cases {
            let results = network_bench(case, &units, &device, args.warmup, args.runs);
            if !args.json {
                println!(
                    "{} at {} px, batch {} (median of {} runs; ratios to none, same run)",
                    case.backbone, case.input, case.batch, args.runs
                );
                println!(
                    "{:<7} {:>10} {:>12} {:>8} {:>12} {:>8}",
                    "attn", "params", "train ms", "ratio", "infer ms", "ratio"
                );
                for r in &results {
                    println!(
                        "{:<7} {:>10} {:>12.1} {:>8.3} {:>12.1} {:>8.3}",
                        r.attention.name(),
                        r.params,
                        r.train_step.median_ms,
                        r.train_ratio,
                        r.inference.median_ms,
                        r.inference_ratio
                    );
                }
                println!();
            }
            all.extend(results);
        }
        report.insert("network".into(), json!(all));
    }
    if wants(Suite::EndToEnd) {
        let result = end_to_end_bench(&device, args.warmup, args.runs);
        if !args.json {
            println!(
                "end to end: {}: {:.1} ms/step, {:.0} images/s",
                result.description, result.step.median_ms, result.images_per_second
            );
        }
        report.insert("end_to_end".into(), json!(result));
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    }
    Ok(())
}
