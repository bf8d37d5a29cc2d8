//! `ppcr bench`: what the attention units cost, as medians and ratios measured in one run.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, ValueEnum};
use serde_json::json;

use super::device::DeviceArgs;
use super::units::parse_units;
use ppcr::attention::AttentionKind;
use ppcr::models::Backbone;
use ppcr::models::autocast::with_convolutions_in;
use ppcr::profile::{
    NetworkCase, UnitShape, ZooBench, conv_bench, conv_bench_shapes, end_to_end_bench,
    network_bench, step_bench, unit_bench, unit_bench_shapes, zoo_bench,
};
use ppcr::train::{Precision, unsupported_on};

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
    /// Only training steps of one network (--backbone, --input, --batch; at most one --attn
    /// unit, default none), for a profiler to attach to (not part of `all`).
    Step,
    /// Every convolution shape of ResNet-20@32 (batch 64) and ResNet-18 (batch 32, at
    /// --resnet18-input px), forward and forward+backward, as the networks run them; set
    /// against `bench/pytorch_reference.py --suites conv` (not part of `all`).
    Conv,
}

/// Options of `ppcr bench`.
#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Which benchmarks.
    #[arg(long, value_enum, default_value_t = Suite::All)]
    suite: Suite,
    /// Timed runs per measurement (the median is reported) [default: 7].
    #[arg(long = "runs", value_parser = at_least_one)]
    runs_given: Option<usize>,
    /// Untimed warm-up runs per measurement [default: 2].
    #[arg(long = "warmup")]
    warmup_given: Option<usize>,
    /// Units for the units and network suites, comma-separated, or "all" [default: all].
    #[arg(long = "attn")]
    attention: Option<String>,
    /// Feature-map shapes for the unit and units suites, as BxCxHxW, comma-separated (e.g.
    /// 64x64x8x8,32x64x8x8) [default: the stage shapes of ResNet-20 at 32 px and ResNet-18 at
    /// 224 px].
    #[arg(long = "shape", value_delimiter = ',', value_parser = parse_shape)]
    shapes: Option<Vec<[usize; 4]>>,
    /// ResNet-18 input size: of the network suite [default: 112] and the conv suite [default:
    /// 224].
    #[arg(long = "resnet18-input")]
    resnet18_input_given: Option<usize>,
    /// Print JSON instead of tables.
    #[arg(long)]
    json: bool,
    /// Length of the soak run, minutes [default: 30].
    #[arg(long = "minutes")]
    minutes_given: Option<f64>,
    /// Where the soak run writes its memory curve (epoch, seconds, resident MiB) [default:
    /// soak.csv].
    #[arg(long = "soak-csv")]
    soak_csv_given: Option<PathBuf>,
    /// Backbone of the step suite [default: resnet20].
    #[arg(long)]
    backbone: Option<Backbone>,
    /// Input size in pixels of the step suite [default: 32].
    #[arg(long)]
    input: Option<usize>,
    /// Batch size of the step suite [default: 64].
    #[arg(long, value_parser = at_least_one)]
    batch: Option<usize>,
    /// Precision of the networks' convolutions in the step, network and end-to-end suites, on
    /// a GPU: f32, f16 or bf16, as `ppcr train --precision` computes them (the timed step
    /// scales no loss) [default: f32].
    #[arg(long)]
    precision: Option<String>,
    #[command(flatten)]
    device: DeviceArgs,
}

impl BenchArgs {
    fn runs(&self) -> usize {
        self.runs_given.unwrap_or(7)
    }

    fn warmup(&self) -> usize {
        self.warmup_given.unwrap_or(2)
    }

    fn resnet18_input(&self) -> usize {
        self.resnet18_input_given.unwrap_or(112)
    }
}

/// Refuse every option the chosen suite does not use, so no flag is silently ignored.
fn check_suite_options(args: &BenchArgs) -> anyhow::Result<()> {
    use Suite::*;
    // (flag, given, the suites that use it; `all` uses what its four suites use)
    let options: [(&str, bool, &[Suite]); 12] = [
        (
            "--runs",
            args.runs_given.is_some(),
            &[Unit, Units, Network, EndToEnd, All, Step, Conv],
        ),
        (
            "--warmup",
            args.warmup_given.is_some(),
            &[Unit, Units, Network, EndToEnd, All, Step, Conv],
        ),
        (
            "--attn",
            args.attention.is_some(),
            &[Units, Network, All, Step],
        ),
        ("--shape", args.shapes.is_some(), &[Unit, Units, All]),
        (
            "--resnet18-input",
            args.resnet18_input_given.is_some(),
            &[Network, All, Conv],
        ),
        (
            "--json",
            args.json,
            &[Unit, Units, Network, EndToEnd, All, Conv],
        ),
        ("--minutes", args.minutes_given.is_some(), &[Soak]),
        ("--soak-csv", args.soak_csv_given.is_some(), &[Soak]),
        ("--backbone", args.backbone.is_some(), &[Step]),
        ("--input", args.input.is_some(), &[Step]),
        ("--batch", args.batch.is_some(), &[Step]),
        (
            "--precision",
            args.precision.is_some(),
            &[Network, EndToEnd, Step],
        ),
    ];
    let name = |suite: Suite| {
        suite
            .to_possible_value()
            .expect("no suite is skipped")
            .get_name()
            .to_string()
    };
    for (flag, given, users) in options {
        if given && !users.contains(&args.suite) {
            let users: Vec<String> = users.iter().map(|&suite| name(suite)).collect();
            anyhow::bail!(
                "{flag}: --suite {} does not use it (the suites that do: {})",
                name(args.suite),
                users.join(", ")
            );
        }
    }
    if args.suite == Step
        && let Some(list) = &args.attention
        && parse_units(list)?.len() > 1
    {
        anyhow::bail!("--suite step times one network: give at most one --attn unit");
    }
    Ok(())
}

/// `ppcr bench --suite step`.
fn run_step(args: &BenchArgs, device: &burn::tensor::Device) -> anyhow::Result<()> {
    let case = NetworkCase {
        backbone: args.backbone.unwrap_or(Backbone::ResNet20),
        input: args.input.unwrap_or(32),
        batch: args.batch.unwrap_or(64),
        channels: 3,
    };
    let kind = match &args.attention {
        Some(list) => parse_units(list)?[0],
        None => AttentionKind::None,
    };
    let timing = step_bench(&case, kind, device, args.warmup(), args.runs())
        .with_context(|| format!("--suite step with {} at {} px", case.backbone, case.input))?;
    out!(
        "{} + {} at {} px, batch {}: training step {:.1} ms (median of {} runs, {} warm-up)",
        case.backbone,
        kind.name(),
        case.input,
        case.batch,
        timing.median_ms,
        args.runs(),
        args.warmup()
    );
    Ok(())
}

/// `ppcr bench --suite conv`.
fn run_conv(args: &BenchArgs, device: &burn::tensor::Device) -> anyhow::Result<()> {
    let input = args.resnet18_input_given.unwrap_or(224);
    if input < 32 {
        anyhow::bail!("--resnet18-input {input}: the conv suite needs at least 32 px");
    }
    let results = conv_bench(
        &conv_bench_shapes(input),
        device,
        args.warmup(),
        args.runs(),
    );
    if args.json {
        out!(
            "{}",
            serde_json::to_string_pretty(&json!({ "conv": results }))?
        );
        return Ok(());
    }
    out!(
        "convolutions as the networks run them (median of {} runs, {} warm-up)",
        args.runs(),
        args.warmup()
    );
    out!(
        "{:<26} {:>16} {:>7} {:>9} {:>8} {:>11}",
        "where",
        "in",
        "filter",
        "fwd ms",
        "GFLOP/s",
        "fwd+bwd ms"
    );
    for r in &results {
        let shape = &r.shape;
        out!(
            "{:<26} {:>16} {:>7} {:>9.3} {:>8.0} {:>11.3}",
            shape.label,
            format!(
                "{}x{}x{}x{}",
                shape.batch, shape.in_channels, shape.size, shape.size
            ),
            format!("{}x{}/{}", shape.out_channels, shape.kernel, shape.stride),
            r.forward.median_ms,
            r.forward_gflops,
            r.forward_backward.median_ms
        );
    }
    Ok(())
}

/// Run `ppcr bench`.
pub fn run(args: &BenchArgs) -> anyhow::Result<()> {
    check_suite_options(args)?;
    if args.suite == Suite::Soak {
        let csv = args
            .soak_csv_given
            .clone()
            .unwrap_or_else(|| PathBuf::from("soak.csv"));
        return super::soak::run(
            args.minutes_given.unwrap_or(30.0),
            &csv,
            &args.device.device()?,
        );
    }
    let device = args.device.device()?;
    let convolutions = convolution_dtype(args, &device)?;
    if let Some(dtype) = convolutions {
        out!("convolutions in {dtype:?}, the rest in f32 (mixed precision; no loss scale)");
    }
    if args.suite == Suite::Step {
        return with_convolutions_in(convolutions, || run_step(args, &device));
    }
    if args.suite == Suite::Conv {
        return run_conv(args, &device);
    }
    let mut report = serde_json::Map::new();
    let wants = |suite| args.suite == suite || args.suite == Suite::All;
    let units = match &args.attention {
        Some(list) => parse_units(list)?,
        None => AttentionKind::ALL.to_vec(),
    };
    let shapes = match &args.shapes {
        Some(shapes) if !(wants(Suite::Unit) || wants(Suite::Units)) => anyhow::bail!(
            "--shape {}: only the unit and units suites take shapes, not --suite {}",
            shapes
                .iter()
                .map(|&shape| shape_name(shape))
                .collect::<Vec<_>>()
                .join(","),
            args.suite
                .to_possible_value()
                .expect("no suite is skipped")
                .get_name()
        ),
        Some(shapes) => shapes
            .iter()
            .map(|&shape| UnitShape::custom(shape))
            .collect(),
        None => unit_bench_shapes(),
    };
    let network_cases = [
        NetworkCase {
            backbone: Backbone::ResNet20,
            input: 32,
            batch: 64,
            channels: 3,
        },
        NetworkCase {
            backbone: Backbone::ResNet18,
            input: args.resnet18_input(),
            batch: 32,
            channels: 3,
        },
    ];
    // Everything asked for is checked before anything is timed, so a bad option fails at once
    // instead of after minutes of the suites before it.
    for shape in &shapes {
        if wants(Suite::Unit) {
            shape.check(&[AttentionKind::Ppcr], &device)?;
        }
        if wants(Suite::Units) {
            shape.check(&units, &device)?;
        }
    }
    if wants(Suite::Network) {
        network_cases[1]
            .validate()
            .with_context(|| format!("--resnet18-input {}", args.resnet18_input()))?;
    }
    if wants(Suite::Unit) {
        let results = unit_bench(&shapes, &device, args.warmup(), args.runs())?;
        if !args.json {
            out!(
                "PPCR unit vs a copy of its input (median of {} runs; ratios: median of per-run ratios)",
                args.runs()
            );
            out!(
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
                out!(
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
            out!();
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
    if wants(Suite::Units) {
        let results = zoo_bench(&shapes, &units, &device, args.warmup(), args.runs())?;
        if !args.json {
            print_zoo_table(&results, "forward / copy", args.runs(), |r| r.forward_ratio);
            print_zoo_table(&results, "forward+backward / copy", args.runs(), |r| {
                r.forward_backward_ratio
            });
        }
        report.insert("units".into(), json!(results));
    }
    if wants(Suite::Network) {
        let mut all = Vec::new();
        for case in &network_cases {
            let results = with_convolutions_in(convolutions, || {
                network_bench(case, &units, &device, args.warmup(), args.runs())
            })?;
            if !args.json {
                out!(
                    "{} at {} px, batch {} (median of {} runs; ratios to none, same run)",
                    case.backbone,
                    case.input,
                    case.batch,
                    args.runs()
                );
                out!(
                    "{:<7} {:>10} {:>12} {:>8} {:>12} {:>8}",
                    "attn",
                    "params",
                    "train ms",
                    "ratio",
                    "infer ms",
                    "ratio"
                );
                for r in &results {
                    out!(
                        "{:<7} {:>10} {:>12.1} {:>8.3} {:>12.1} {:>8.3}",
                        r.attention.name(),
                        r.params,
                        r.train_step.median_ms,
                        r.train_ratio,
                        r.inference.median_ms,
                        r.inference_ratio
                    );
                }
                out!();
            }
            all.extend(results);
        }
        report.insert("network".into(), json!(all));
    }
    if wants(Suite::EndToEnd) {
        let result = with_convolutions_in(convolutions, || {
            end_to_end_bench(&device, args.warmup(), args.runs())
        })?;
        if !args.json {
            out!(
                "end to end: {}: {:.1} ms/step, {:.0} images/s",
                result.description,
                result.step.median_ms,
                result.images_per_second
            );
        }
        report.insert("end_to_end".into(), json!(result));
    }
    if args.json {
        out!("{}", serde_json::to_string_pretty(&report)?);
    }
    Ok(())
}

/// The type `--precision` asks the convolutions to compute in (`None`: f32), refused where
/// `ppcr train` would refuse it (the CPU backend, a GPU without the type).
fn convolution_dtype(
    args: &BenchArgs,
    device: &burn::tensor::Device,
) -> anyhow::Result<Option<burn::tensor::FloatDType>> {
    let Some(name) = &args.precision else {
        return Ok(None);
    };
    let precision = super::train::parse_enum::<Precision>("precision", name)?;
    if let Some(why) = unsupported_on(precision, device) {
        anyhow::bail!(why);
    }
    Ok(precision.convolution_dtype())
}

/// One row per shape, one column per unit: `ratio` of each unit at that shape.
fn print_zoo_table(results: &[ZooBench], what: &str, runs: usize, ratio: fn(&ZooBench) -> f64) {
    let mut kinds: Vec<AttentionKind> = Vec::new();
    for r in results {
        if !kinds.contains(&r.attention) {
            kinds.push(r.attention);
        }
    }
    out!(
        "attention units vs a copy of their input: {what} (median of {runs} runs; each unit in turns with its own copy)"
    );
    out_inline!("{:<22} {:>18} {:>9}", "where", "shape", "copy ms");
    for kind in &kinds {
        out_inline!(" {:>7}", kind.name());
    }
    out!();
    let mut rows = results.chunk_by(|a, b| a.shape.label == b.shape.label);
    for row in &mut rows {
        let first = &row[0];
        let mut copies: Vec<f64> = row.iter().map(|r| r.copy.median_ms).collect();
        out_inline!(
            "{:<22} {:>18} {:>9.3}",
            first.shape.label,
            format!("{:?}", first.shape.shape),
            ppcr::profile::median(&mut copies)
        );
        for r in row {
            out_inline!(" {:>7.2}", ratio(r));
        }
        out!();
    }
    out!();
}

/// A count that must be positive: timed runs (a median needs one), a batch size.
pub(super) fn at_least_one(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(count) => Ok(count),
        Err(error) => Err(format!("not a count: {error}")),
    }
}

/// `BxCxHxW`, e.g. `64x64x8x8`.
fn parse_shape(text: &str) -> Result<[usize; 4], String> {
    let dims: Vec<&str> = text.trim().split(['x', 'X']).collect();
    let parsed: Result<Vec<usize>, _> =
        dims.iter().map(|dim| dim.trim().parse::<usize>()).collect();
    match parsed
        .ok()
        .and_then(|dims| <[usize; 4]>::try_from(dims).ok())
    {
        Some(shape) if !shape.contains(&0) => Ok(shape),
        Some(_) => Err("every dimension must be at least 1".into()),
        None => Err("expected BxCxHxW, four positive integers, e.g. 64x64x8x8".into()),
    }
}

/// `[B, C, H, W]` as `--shape` writes it.
fn shape_name(shape: [usize; 4]) -> String {
    shape.map(|dim| dim.to_string()).join("x")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_parse_from_four_positive_integers_only() {
        assert_eq!(parse_shape("64x64x8x8"), Ok([64, 64, 8, 8]));
        assert_eq!(parse_shape(" 2X16x4x5 "), Ok([2, 16, 4, 5]));
        assert_eq!(shape_name([2, 16, 4, 5]), "2x16x4x5");
        for bad in [
            "64x64x8",
            "64x64x8x8x1",
            "64x64x8xa",
            "",
            "64,64,8,8",
            "-1x2x3x4",
        ] {
            let error = parse_shape(bad).unwrap_err();
            assert!(error.contains("BxCxHxW"), "{bad}: {error}");
        }
        assert!(parse_shape("0x16x4x4").unwrap_err().contains("at least 1"));
    }

    #[test]
    fn a_median_needs_at_least_one_run() {
        assert_eq!(at_least_one("3"), Ok(3));
        assert!(at_least_one("0").unwrap_err().contains("at least 1"));
        assert!(at_least_one("-2").is_err());
    }
}
