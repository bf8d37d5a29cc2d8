//! `ppcr compare`: every attention unit with every seed under identical settings, and the
//! table of their test metrics.

use std::path::PathBuf;

use clap::Args;

use super::data_options::load_dataset;
use super::device::DeviceArgs;
use super::progress::ConsoleProgress;
use super::train::{TrainSettings, resolve_config};
use super::units::parse_units;
use ppcr::compare::{CompareRun, RunStatus, Shard, plan_runs, summarise, write_summary};
use ppcr::train::{saved_settings_differences, train};

/// Options of `ppcr compare`; the training settings are those of `ppcr train`.
#[derive(Args, Debug)]
pub struct CompareArgs {
    #[command(flatten)]
    settings: TrainSettings,
    /// Units to compare, comma-separated, or "all".
    #[arg(long = "attn", default_value = "all")]
    attention: String,
    /// Number of seeds per unit.
    #[arg(long, default_value_t = 3)]
    seeds: u64,
    /// First seed (seeds are FIRST, FIRST+1, ...).
    #[arg(long, default_value_t = 0)]
    first_seed: u64,
    /// Comparison folder: run folders under runs/, tables compare.{md,csv,json}.
    #[arg(long)]
    out: PathBuf,
    /// Train only runs K, K+N, K+2N, ... of the grid (0 <= K < N), e.g. a Slurm array task:
    /// --shard $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT.
    #[arg(long)]
    shard: Option<Shard>,
    #[command(flatten)]
    device: DeviceArgs,
}

/// Run `ppcr compare`.
pub fn run(args: &CompareArgs) -> anyhow::Result<()> {
    let units = parse_units(&args.attention)?;
    // The device is settled first, so a wrong name fails before any data is read.
    let device = args.device.device()?;
    if args.seeds == 0 {
        anyhow::bail!("--seeds must be at least 1");
    }
    if let Some(seed) = args.settings.seed() {
        anyhow::bail!(
            "--seed {seed}: compare trains seeds --first-seed, --first-seed + 1, ...; \
             give --first-seed {seed} instead"
        );
    }
    let seeds: Vec<u64> = (args.first_seed..args.first_seed + args.seeds).collect();
    let mut base = resolve_config(&args.settings, false, &None)?;
    // Every run sees the same split, whatever its training seed.
    base.split_seed = Some(base.split_seed.unwrap_or(args.first_seed));
    base.validate()
        .map_err(|problems| anyhow::anyhow!("invalid settings: {problems}"))?;
    let runs = plan_runs(&args.out, &units, &seeds);
    let run_config = |run: &CompareRun| {
        let mut config = base.clone();
        config.attention = run.attention;
        config.seed = run.seed;
        config
    };
    // A run made with other settings (an earlier call with another --epochs or --lr) is not
    // this comparison's run: refuse before training anything, as `train --resume` does.
    let mut mismatched = Vec::new();
    let saved = |run: &&CompareRun| {
        run.dir.join("config.toml").is_file() && run.dir.join("run.json").is_file()
    };
    for run in runs.iter().filter(saved) {
        let differences = saved_settings_differences(&run.dir, &run_config(run))?;
        if !differences.is_empty() {
            mismatched.push(format!("{}: {}", run.dir.display(), differences.join("; ")));
        }
    }
    if !mismatched.is_empty() {
        anyhow::bail!(
            "{} holds runs made with other settings, which this comparison would mix in:\n  {}\n\
             give another --out, or the settings those runs were made with",
            args.out.display(),
            mismatched.join("\n  ")
        );
    }
    let todo: Vec<_> = runs
        .iter()
        .filter(|run| args.shard.is_none_or(|shard| shard.contains(run)))
        .filter(|run| run.status() != RunStatus::Finished)
        .collect();
    if !todo.is_empty() {
        let dataset = load_dataset(&base)?;
        for (position, run) in todo.iter().enumerate() {
            let resuming = run.status() == RunStatus::Interrupted;
            out!(
                "\n[{}/{} of this invocation; run {} of {}] {} seed {}{}",
                position + 1,
                todo.len(),
                run.index + 1,
                runs.len(),
                run.attention,
                run.seed,
                if resuming { " (resuming)" } else { "" }
            );
            let config = run_config(run);
            let mut progress = ConsoleProgress::new();
            let outcome = train(
                &config,
                &dataset,
                &run.dir,
                resuming,
                &device,
                &mut progress,
            )?;
            out!(
                "{} seed {}: test accuracy {:.4}, AUC {}",
                run.attention,
                run.seed,
                outcome.test.report.accuracy,
                outcome
                    .test
                    .report
                    .auc_macro
                    .map(|a| format!("{a:.4}"))
                    .unwrap_or_else(|| "n/a".into())
            );
        }
    }
    let data = base
        .data
        .as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "breastmnist (built-in)".into());
    let mut summary = summarise(&data, &units, &seeds, &runs)?;
    summary.settings = toml::from_str(&base.to_toml())?;
    summary.settings.remove("attention");
    summary.settings.remove("seed");
    let table = write_summary(&args.out, &summary)?;
    out!("\n{}", std::fs::read_to_string(&table)?);
    if summary.missing_runs > 0 {
        out!(
            "{} of {} runs are not finished (other shards?); run the same command again to \
             finish them or to refresh the table",
            summary.missing_runs,
            runs.len()
        );
    }
    Ok(())
}
