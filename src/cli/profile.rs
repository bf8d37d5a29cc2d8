//! `ppcr profile`: what each attention unit costs on one backbone.

use clap::Args;

use super::device::DeviceArgs;
use super::units::parse_units;
use ppcr::models::Backbone;
use ppcr::profile::{NetworkCase, profile_units};

/// Options of `ppcr profile`.
#[derive(Args, Debug)]
pub struct ProfileArgs {
    /// Backbone.
    #[arg(long, default_value = "resnet18")]
    backbone: Backbone,
    /// Input size in pixels.
    #[arg(long, default_value_t = 224)]
    input: usize,
    /// Number of classes.
    #[arg(long, default_value_t = 1000)]
    classes: usize,
    /// Input channels.
    #[arg(long, default_value_t = 3)]
    in_channels: usize,
    /// Units to profile, comma-separated, or "all".
    #[arg(long = "attn", default_value = "all")]
    attention: String,
    /// Batch size of the timed runs.
    #[arg(long, default_value_t = 8,
          value_parser = super::bench::at_least_one)]
    batch: usize,
    /// Timed runs per measurement (the median is reported); 0 skips timing.
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Untimed warm-up runs per measurement.
    #[arg(long, default_value_t = 1)]
    warmup: usize,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    device: DeviceArgs,
}

fn millions(value: u64) -> String {
    format!("{:.2}M", value as f64 / 1e6)
}

/// Run `ppcr profile`.
pub fn run(args: &ProfileArgs) -> anyhow::Result<()> {
    let units = parse_units(&args.attention)?;
    let device = args.device.device()?;
    let case = NetworkCase {
        backbone: args.backbone,
        input: args.input,
        batch: args.batch,
        channels: args.in_channels,
    };
    let timing = (args.runs > 0).then_some((args.warmup, args.runs));
    let rows = profile_units(&case, args.classes, &units, timing, &device)?;
    if args.json {
        out!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    out!(
        "{} at {} px, {} classes{}",
        args.backbone,
        args.input,
        args.classes,
        if args.runs > 0 {
            format!(
                ", batch {} (median of {} runs, ratios to none in the same run)",
                args.batch, args.runs
            )
        } else {
            String::new()
        }
    );
    out!(
        "{:<7} {:>12} {:>8} {:>10} {:>8} {:>11} {:>7} {:>11} {:>7} {:>10}",
        "attn",
        "params",
        "+%",
        "MACs",
        "+%",
        "fwd ms",
        "ratio",
        "train ms",
        "ratio",
        "memory"
    );
    let show = |value: Option<f64>, precision: usize| {
        value
            .map(|v| format!("{v:.precision$}"))
            .unwrap_or_else(|| "-".into())
    };
    for row in &rows {
        out!(
            "{:<7} {:>12} {:>7.2}% {:>10} {:>7.2}% {:>11} {:>7} {:>11} {:>7} {:>10}",
            row.attention.name(),
            row.params,
            row.params_increase_percent,
            millions(row.macs.total),
            row.macs_increase_percent,
            show(row.forward_ms, 1),
            show(row.forward_ratio, 3),
            show(row.train_step_ms, 1),
            show(row.train_step_ratio, 3),
            row.reserved_memory_bytes
                .map(|b| format!("{:.0} MiB", b as f64 / 1048576.0))
                .unwrap_or_else(|| "n/a".into())
        );
    }
    Ok(())
}
