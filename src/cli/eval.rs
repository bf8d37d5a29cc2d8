//! `ppcr eval`: metrics of a trained run on a split of its data (or of other data with the
//! same classes).

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, ValueEnum};

use super::device::DeviceArgs;
use ppcr::data::{BadFilePolicy, LoadOptions, TestTimeAugmentation, builtin_breastmnist, load};
use ppcr::runfiles::{RunDir, RunInfo};
use ppcr::train::{TrainConfig, evaluate_split, load_trained_model};

/// Which split to evaluate.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum SplitName {
    /// Training split.
    Train,
    /// Validation split.
    Val,
    /// Test split.
    Test,
}

/// Options of `ppcr eval`.
#[derive(Args, Debug)]
pub struct EvalArgs {
    /// Run folder written by `ppcr train`.
    #[arg(long)]
    checkpoint: PathBuf,
    /// Data to evaluate on [default: the data the run was trained on].
    #[arg(long)]
    data: Option<PathBuf>,
    /// Split to evaluate.
    #[arg(long, value_enum, default_value_t = SplitName::Test)]
    split: SplitName,
    /// Use the last epoch's weights instead of the ones chosen on validation.
    #[arg(long)]
    latest: bool,
    /// Test-time augmentation: none, hflip or flips [default: the run's `tta`].
    #[arg(long, value_name = "VIEWS")]
    tta: Option<String>,
    /// Print the full report as JSON.
    #[arg(long)]
    json: bool,
    /// Skip unreadable image files with a warning instead of stopping.
    #[arg(long)]
    skip_bad_files: bool,
    #[command(flatten)]
    device: DeviceArgs,
}

/// Run `ppcr eval`.
pub fn run(args: &EvalArgs) -> anyhow::Result<()> {
    let device = args.device.device()?;
    let run = RunDir::open(&args.checkpoint)?;
    let (model, info) =
        load_trained_model(&run, if args.latest { "latest" } else { "best" }, &device)?;
    let config = run_config(&run)?;
    let tta = chosen_tta(args.tta.as_deref(), &info)?;
    let options = LoadOptions {
        size: Some(info.model.input_size),
        channels: Some(info.model.in_channels),
        split_seed: config.data_split_seed(),
        val_fraction: config.val_fraction,
        test_fraction: config.test_fraction,
        on_bad_file: if args.skip_bad_files {
            BadFilePolicy::Skip
        } else {
            config.on_bad_file
        },
    };
    let data = args.data.clone().or(config.data.clone());
    let dataset = match &data {
        Some(path) => {
            load(path, &options).with_context(|| format!("cannot load {}", path.display()))?
        }
        None => builtin_breastmnist(&options).context("cannot load the built-in BreastMNIST")?,
    };
    if dataset.class_names != info.class_names {
        anyhow::bail!(
            "{}: classes {:?} do not match the checkpoint's {:?} ({})",
            dataset.source.display(),
            dataset.class_names,
            info.class_names,
            args.checkpoint.display()
        );
    }
    let split = match args.split {
        SplitName::Train => &dataset.train,
        SplitName::Val => &dataset.val,
        SplitName::Test => &dataset.test,
    };
    let evaluation = evaluate_split(
        &model,
        split,
        &info.normalization,
        info.class_names.len(),
        config.eval_batch_size,
        tta,
        &device,
    )?;
    if args.json {
        out!("{}", serde_json::to_string_pretty(&evaluation.report)?);
    } else {
        out!(
            "{} split of {} ({} images, test-time augmentation: {}), loss {:.4}",
            format!("{:?}", args.split).to_lowercase(),
            dataset.source.display(),
            split.len(),
            tta.name(),
            evaluation.loss
        );
        out!("{}", evaluation.report.summary_named(&dataset.class_names));
    }
    Ok(())
}

/// The configuration a run folder's `config.toml` holds.
fn run_config(run: &RunDir) -> anyhow::Result<TrainConfig> {
    let config_path = run.config_path();
    TrainConfig::from_toml(
        &std::fs::read_to_string(&config_path)
            .with_context(|| format!("{}: cannot read", config_path.display()))?,
    )
    .map_err(|e| anyhow::anyhow!("{}: {e}", config_path.display()))
}

/// The views to average: `--tta` where given, else the run's own setting.
pub(super) fn chosen_tta(
    given: Option<&str>,
    info: &RunInfo,
) -> anyhow::Result<TestTimeAugmentation> {
    match given {
        Some(name) => super::train::parse_enum("test-time augmentation", name),
        None => Ok(info.tta),
    }
}
