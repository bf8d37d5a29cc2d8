//! `ppcr bench`: what the attention units cost, as medians and ratios measured in one run.

use std::path::PathBuf;

use clap::{Args, ValueEnum};
use serde_json::json;

use super::device::DeviceArgs;
use ppcr::attention::AttentionKind;
use ppcr::models::Backbone;
use ppcr::profile::{
    NetworkCase, ZooBench, end_to_end_bench, network_bench, unit_bench, zoo_bench,
};

/// Which benchmarks to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Suite {
    /// PPCR forward and forward+backward against a copy of its input.
    Unit,
    /// Every unit's forward and forward+backward against a copy of its input.
    Units,
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
    /// Units for the units and network suites [default: all].
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
    let units = args
        .attention
        .clone()
        .unwrap_or_else(|| AttentionKind::ALL.to_vec());
    if wants(Suite::Units) {
        let shapes = ppcr::profile::unit_bench_shapes();
        let results = zoo_bench(&shapes, &units, &device, args.warmup, args.runs);
        if !args.json {
            print_zoo_table(&results, "forward / copy", args.runs, |r| r.forward_ratio);
            print_zoo_table(&results, "forward+backward / copy", args.runs, |r| {
                r.forward_backward_ratio
            });
        }
        report.insert("units".into(), json!(results));
    }
    if wants(Suite::Network) {
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

/// One row per shape, one column per unit: `ratio` of each unit at that shape.
fn print_zoo_table(results: &[ZooBench], what: &str, runs: usize, ratio: fn(&ZooBench) -> f64) {
    let mut kinds: Vec<AttentionKind> = Vec::new();
    for r in results {
        if !kinds.contains(&r.attention) {
            kinds.push(r.attention);
        }
    }
    println!(
        "attention units vs a copy of their input: {what} (median of {runs} runs; each unit in turns with its own copy)"
    );
    print!("{:<22} {:>18} {:>9}", "where", "shape", "copy ms");
    for kind in &kinds {
        print!(" {:>7}", kind.name());
    }
    println!();
    let mut rows = results.chunk_by(|a, b| a.shape.label == b.shape.label);
    for row in &mut rows {
        let first = &row[0];
        let mut copies: Vec<f64> = row.iter().map(|r| r.copy.median_ms).collect();
        print!(
            "{:<22} {:>18} {:>9.3}",
            first.shape.label,
            format!("{:?}", first.shape.shape),
            ppcr::profile::median(&mut copies)
        );
        for r in row {
            print!(" {:>7.2}", ratio(r));
        }
        println!();
    }
    println!();
}
