//! `ppcr train`: train and evaluate a model; with no arguments, a PPCR ResNet on the built-in
//! BreastMNIST.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;

use super::data_options::{DataArgs, load_dataset};
use super::device::{DeviceArgs, open_devices};
use super::progress::ConsoleProgress;
use ppcr::attention::AttentionKind;
use ppcr::data::TestTimeAugmentation;
use ppcr::models::Backbone;
use ppcr::runfiles::{LogFormat, SelectionMetric};
use ppcr::train::{LrSchedule, Precision, TrainConfig, recipe, train_on};

/// Options of `ppcr train`. Every option can also come from the TOML file; flags win.
#[derive(Args, Debug)]
pub struct TrainArgs {
    #[command(flatten)]
    settings: TrainSettings,
    /// Attention unit: none, se, eca, cbam, srm, gct, simam, ppcr [default: ppcr].
    #[arg(long = "attn")]
    attention: Option<AttentionKind>,
    /// Run folder [default: runs/<data>-<backbone>-<attn>-s<seed>, numbered if taken].
    #[arg(long)]
    out: Option<PathBuf>,
    /// Continue the run in --out from its last completed epoch.
    #[arg(long)]
    resume: bool,
    #[command(flatten)]
    device: DeviceArgs,
    /// Several devices for data-parallel training, e.g. cuda:0,cuda:1: every batch is split
    /// across them; the first holds the model, validates and tests. One is the same as --device.
    #[arg(long, value_delimiter = ',', conflicts_with = "device")]
    devices: Option<Vec<String>>,
}

/// The training settings `ppcr train` and `ppcr compare` share.
#[derive(Args, Debug)]
pub struct TrainSettings {
    /// TOML file with any of the settings below (keys as in the run's config.toml); its keys
    /// change the --recipe's (or the default) settings, and flags change both.
    #[arg(long)]
    config: Option<PathBuf>,
    /// A named configuration to start from: default (PPCR ResNet-20, 80 epochs, SGD lr 0.05,
    /// cosine, the last epoch kept, predictions averaged with the mirror image) or paper (the PPCR authors' ISIC 2018 recipe: PPCR ResNet-18 at 224 px, 150
    /// epochs, SGD lr 0.0025 x0.2 every 25 epochs, momentum 0.9, weight decay 1e-4, batch 32,
    /// random resized crop 0.2-1, colour jitter 0.4 p 0.8, rotation 45, Gaussian blur p 0.5,
    /// flip, ImageNet mean/std).
    #[arg(long, value_parser = ["default", "paper"])]
    recipe: Option<String>,
    #[command(flatten)]
    data: DataArgs,
    /// Backbone: resnet20/32/44/56/110/164 (CIFAR-style), resnet18/34/50 [default: resnet20].
    #[arg(long)]
    backbone: Option<Backbone>,
    /// Epochs [default: 80; the paper recipe: 150].
    #[arg(long)]
    epochs: Option<usize>,
    /// Batch size [default: 32].
    #[arg(long = "batch")]
    batch_size: Option<usize>,
    /// Peak learning rate [default: 0.05].
    #[arg(long)]
    lr: Option<f64>,
    /// Weight decay [default: 5e-4].
    #[arg(long)]
    weight_decay: Option<f64>,
    /// Use Nesterov momentum.
    #[arg(long)]
    nesterov: bool,
    /// Schedule: cosine (with --warmup-epochs), step (with --milestones), constant
    /// [default: cosine, 1 warm-up epoch].
    #[arg(long)]
    schedule: Option<String>,
    /// Warm-up epochs of the cosine schedule [default: 1].
    #[arg(long)]
    warmup_epochs: Option<f64>,
    /// Epochs where the step schedule divides the rate by 10, e.g. 30,60 [default with
    /// --schedule step: half and three quarters of --epochs].
    #[arg(long, value_delimiter = ',')]
    milestones: Option<Vec<usize>>,
    /// Label smoothing [default: 0].
    #[arg(long)]
    label_smoothing: Option<f64>,
    /// Weight the loss by inverse class frequency.
    #[arg(long)]
    class_weighted: bool,
    /// Weight of the supervised contrastive loss added to the cross-entropy (two augmented
    /// views per image, a projection head for training only; the PPCR journal version's) [default:
    /// 0 = off].
    #[arg(long, value_name = "W")]
    supcon_weight: Option<f64>,
    /// Temperature of the contrastive loss [default: 0.07; needs --supcon-weight].
    #[arg(long, value_name = "T")]
    supcon_temperature: Option<f64>,
    /// Keep an exponential moving average of the weights with this decay per step (e.g.
    /// 0.99), and validate, select and keep the average instead of the trained weights
    /// [default: 0 = off].
    #[arg(long, value_name = "D")]
    ema_decay: Option<f64>,
    /// Stochastic weight averaging: train the last N epochs at the constant rate --swa-lr,
    /// average their end-of-epoch weights (BatchNorm statistics recomputed on the training
    /// images), and validate, select and keep the average from then on; the schedule runs
    /// over the epochs before, a cosine ending at --swa-lr [default: 0 = off].
    #[arg(long, value_name = "N")]
    swa_epochs: Option<usize>,
    /// Learning rate of the averaging phase [default: 0.01; needs --swa-epochs].
    #[arg(long, value_name = "LR")]
    swa_lr: Option<f64>,
    /// Start from pretrained weights: a torchvision checkpoint (.pth/.pt state dict or
    /// .safetensors of resnet18/34/50) or a run folder (of `ppcr import` or `ppcr train`). A new
    /// classifier where the classes differ; attention units start from their own initialisation.
    #[arg(long, value_name = "FILE|DIR")]
    pretrained: Option<PathBuf>,
    /// Learning-rate factor of the pretrained parameters (all but the classifier and the
    /// attention units) [default: 1; needs --pretrained].
    #[arg(long, value_name = "F")]
    backbone_lr_factor: Option<f64>,
    /// Keep the pretrained parameters fixed for the first N epochs [default: 0; needs
    /// --pretrained].
    #[arg(long, value_name = "N")]
    freeze_backbone_epochs: Option<usize>,
    /// Turn augmentation off.
    #[arg(long)]
    no_augment: bool,
    /// Validation metric that picks the best checkpoint: auc, accuracy, balanced_accuracy, loss,
    /// or last (no choice: the last epoch) [default: last].
    #[arg(long)]
    select_on: Option<String>,
    /// Test-time augmentation: validation, testing, `ppcr eval` and `ppcr predict` average the
    /// class probabilities of these views of each image: none, hflip (the image and its mirror
    /// image) or flips (also upside down, and both) [default: hflip; the paper recipe: none].
    #[arg(long, value_name = "VIEWS")]
    tta: Option<String>,
    /// Per-epoch log format: csv or jsonl [default: csv].
    #[arg(long)]
    log_format: Option<String>,
    /// Precision of the backbone's convolutions on a GPU: f32, f16 (with a dynamic loss scale)
    /// or bf16; weights, optimizer, BatchNorm, attention units and loss stay f32 (mixed
    /// precision, as PyTorch's AMP). The CPU backend trains in f32 only [default: f32].
    #[arg(long)]
    precision: Option<String>,
}

impl TrainSettings {
    /// The `--seed` given, if any (`ppcr compare` takes its seeds from `--first-seed`).
    pub fn seed(&self) -> Option<u64> {
        self.data.seed()
    }
}

/// `base` with the keys of the TOML document `text` replacing its own (unknown keys are
/// errors).
fn over(base: &TrainConfig, text: &str) -> Result<TrainConfig, toml::de::Error> {
    let mut table: toml::Table = toml::from_str(&base.to_toml())?;
    let given: toml::Table = toml::from_str(text)?;
    table.extend(given);
    TrainConfig::from_toml(&toml::to_string(&table).expect("a table serialises"))
}

pub(super) fn parse_enum<T: serde::de::DeserializeOwned>(
    what: &str,
    value: &str,
) -> anyhow::Result<T> {
    serde_json::from_value(serde_json::Value::String(value.to_string())).map_err(|error| {
        // serde names the accepted spellings: "unknown variant `x`, expected one of `a`, `b`".
        let text = error.to_string();
        let valid = text
            .split_once("expected ")
            .map(|(_, rest)| format!("; valid: {}", rest.replace('`', "")))
            .unwrap_or_default();
        anyhow::anyhow!("unknown {what} '{value}'{valid}")
    })
}

/// The configuration the settings describe: the TOML file's (or, when resuming a run without
/// one, the run's own), with the flags applied on top.
pub fn resolve_config(
    args: &TrainSettings,
    resume: bool,
    out: &Option<PathBuf>,
) -> anyhow::Result<TrainConfig> {
    let base = match &args.recipe {
        Some(name) => recipe(name).ok_or_else(|| anyhow::anyhow!("unknown recipe '{name}'"))?,
        None => TrainConfig::default(),
    };
    let mut config = match (&args.config, resume, out) {
        (Some(path), _, _) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("{}: cannot read the config file", path.display()))?;
            over(&base, &text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?
        }
        // Resuming without a config file continues with the run's own settings.
        (None, true, Some(out)) if args.recipe.is_none() && out.join("config.toml").is_file() => {
            let path = out.join("config.toml");
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("{}: cannot read", path.display()))?;
            TrainConfig::from_toml(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?
        }
        _ => base,
    };
    args.data.apply(&mut config);
    if let Some(backbone) = args.backbone {
        config.backbone = backbone;
    }
    if let Some(epochs) = args.epochs {
        config.epochs = epochs;
    }
    if let Some(batch) = args.batch_size {
        config.batch_size = batch;
    }
    if let Some(lr) = args.lr {
        config.lr = lr;
    }
    if let Some(weight_decay) = args.weight_decay {
        config.weight_decay = weight_decay;
    }
    if args.nesterov {
        config.nesterov = true;
    }
    if let Some(schedule) = &args.schedule {
        config.schedule = match schedule.as_str() {
            "cosine" => LrSchedule::default(),
            "step" => {
                // Halfway and three quarters through, where the run is long enough to have them.
                let mut milestones: Vec<usize> = [config.epochs / 2, config.epochs * 3 / 4]
                    .into_iter()
                    .filter(|&m| m >= 1 && m < config.epochs)
                    .collect();
                milestones.dedup();
                LrSchedule::Step {
                    milestones,
                    gamma: 0.1,
                }
            }
            "constant" => LrSchedule::Constant,
            other => anyhow::bail!("unknown schedule '{other}'; valid: cosine, step, constant"),
        };
    }
    if let Some(warmup) = args.warmup_epochs {
        match &mut config.schedule {
            LrSchedule::Cosine { warmup_epochs, .. } => *warmup_epochs = warmup,
            _ => anyhow::bail!("--warmup-epochs applies to the cosine schedule"),
        }
    }
    if let Some(new_milestones) = &args.milestones {
        match &mut config.schedule {
            LrSchedule::Step { milestones, .. } => *milestones = new_milestones.clone(),
            _ => anyhow::bail!("--milestones applies to the step schedule (--schedule step)"),
        }
    }
    if let Some(smoothing) = args.label_smoothing {
        config.label_smoothing = smoothing;
    }
    if let Some(weight) = args.supcon_weight {
        config.supcon_weight = weight;
    }
    if let Some(temperature) = args.supcon_temperature {
        config.supcon_temperature = temperature;
    }
    if let Some(decay) = args.ema_decay {
        config.ema_decay = decay;
    }
    if let Some(epochs) = args.swa_epochs {
        config.swa_epochs = epochs;
    }
    if let Some(lr) = args.swa_lr {
        config.swa_lr = lr;
    }
    if let Some(pretrained) = &args.pretrained {
        config.pretrained = Some(pretrained.clone());
    }
    if let Some(factor) = args.backbone_lr_factor {
        config.backbone_lr_factor = factor;
    }
    if let Some(epochs) = args.freeze_backbone_epochs {
        config.freeze_backbone_epochs = epochs;
    }
    if args.class_weighted {
        config.class_weighted = true;
    }
    if args.no_augment {
        config.augment = Some(ppcr::data::AugmentConfig::none());
    }
    if let Some(metric) = &args.select_on {
        config.select_on = parse_enum::<SelectionMetric>("selection metric", metric)?;
    }
    if let Some(tta) = &args.tta {
        config.tta = parse_enum::<TestTimeAugmentation>("test-time augmentation", tta)?;
    }
    if let Some(format) = &args.log_format {
        config.log_format = parse_enum::<LogFormat>("log format", format)?;
    }
    if let Some(precision) = &args.precision {
        config.precision = parse_enum::<Precision>("precision", precision)?;
    }
    Ok(config)
}

/// A free default run folder: `runs/<data>-<backbone>-<attn>-s<seed>`, numbered if taken.
fn default_out(config: &TrainConfig, dataset_name: &str) -> PathBuf {
    let base = format!(
        "{}-{}-{}-s{}",
        dataset_name, config.backbone, config.attention, config.seed
    );
    let runs = Path::new("runs");
    let mut candidate = runs.join(&base);
    let mut n = 2;
    while candidate.exists() {
        candidate = runs.join(format!("{base}-{n}"));
        n += 1;
    }
    candidate
}

/// Run `ppcr train`.
pub fn run(args: &TrainArgs) -> anyhow::Result<()> {
    if args.resume && args.out.is_none() {
        anyhow::bail!("--resume needs --out naming the run folder to continue");
    }
    // The device is settled first, so a wrong name fails before any data is read.
    let devices = match &args.devices {
        Some(names) => open_devices(names)?,
        None => vec![args.device.device()?],
    };
    let mut config = resolve_config(&args.settings, args.resume, &args.out)?;
    if let Some(attention) = args.attention {
        config.attention = attention;
    }
    config
        .validate()
        .map_err(|problems| anyhow::anyhow!("invalid settings: {problems}"))?;
    let dataset = load_dataset(&config)?;
    let out = match &args.out {
        Some(out) => out.clone(),
        None => default_out(&config, &dataset.name),
    };
    let mut progress = ConsoleProgress::new();
    let outcome = train_on(
        &config,
        &dataset,
        &out,
        args.resume,
        &devices,
        &mut progress,
    )?;
    out!(
        "\nkept epoch {} ({}); run folder {}",
        outcome.best_epoch,
        config.select_on.choice(),
        out.display()
    );
    out!(
        "\ntest metrics ({} images, test-time augmentation: {}):",
        dataset.test.len(),
        config.tta.name()
    );
    out!(
        "{}",
        outcome.test.report.summary_named(&dataset.class_names)
    );
    Ok(())
}
