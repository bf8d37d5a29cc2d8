//! The training loop: seeded data order and augmentation per epoch, SGD steps, validation after
//! every epoch, a crash-safe checkpoint of every epoch, and final metrics of the checkpoint
//! chosen on validation.
//!
//! Every random choice of an epoch comes from a generator seeded by (seed, epoch), and the
//! learning rate is a function of the global step, so a run resumed from the checkpoint of
//! epoch k continues exactly as the uninterrupted run would have.

use std::path::Path;
use std::time::Instant;

use burn::module::{Module, ModuleVisitor, Param};
use burn::nn::loss::{CrossEntropyLoss, CrossEntropyLossConfig};
use burn::optim::decay::WeightDecayConfig;
use burn::optim::momentum::MomentumConfig;
use burn::optim::{ModuleOptimizer, SgdConfig};
use burn::tensor::{Device, Tensor};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

use super::data_parallel::{
    BatchGradients, ContrastiveTerm, DataParallel, MixedPrecision, StepStats,
};
use super::evaluate::{SplitEvaluation, evaluate_split};
use super::param_groups::BackboneGroup;
use super::prefetch::EpochBatches;
use super::swa::{Swa, recompute_batch_norm};
use super::weight_average::WeightAverage;
use super::{LossScaler, StepProgress, TrainConfig, TrainError, TrainObserver, unsupported_on};
use crate::attention::AttentionConfig;
use crate::data::{AugmentConfig, Dataset, Normalization};
use crate::models::ResNetConfig;
use crate::models::pretrained::PretrainedWeights;
use crate::runfiles::{
    EpochRecord, RunDir, RunFileError, RunInfo, RunMetrics, SelectionMetric, TestPredictions,
    TrainState, pause_point, write_log,
};

/// What a finished run produced.
#[derive(Debug, Clone)]
pub struct TrainOutcome {
    /// Epoch (1-based) whose weights were chosen on validation.
    pub best_epoch: usize,
    /// Validation evaluation of the chosen weights.
    pub val: SplitEvaluation,
    /// Test evaluation of the chosen weights.
    pub test: SplitEvaluation,
    /// Trainable parameters of the model.
    pub params: usize,
    /// Wall time of the epochs trained in this call, seconds.
    pub train_seconds: f64,
}

/// The embedding width of the contrastive projection head (the SupCon paper's 128).
const SUPCON_PROJECTION_DIM: usize = 128;

/// The generator for everything random in `epoch` (0-based) of a run seeded with `seed`.
fn epoch_rng(seed: u64, epoch: usize) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (epoch as u64 + 1))
}

/// Build the model configuration a training configuration implies for a data set.
pub(crate) fn model_config(
    config: &TrainConfig,
    dataset: &Dataset,
) -> Result<ResNetConfig, TrainError> {
    let shape = dataset.image_shape();
    if shape.height != shape.width {
        return Err(TrainError::Config(format!(
            "images are {}x{}; pass --size N to train on square N x N images",
            shape.height, shape.width
        )));
    }
    let attention = AttentionConfig::new(config.attention)
        .with_ppcr_levels(config.ppcr_levels)
        .with_ppcr_resize_to_input(config.ppcr_resize_to_input)
        .with_reduction(config.reduction);
    let mut model = ResNetConfig::new(config.backbone, attention, dataset.num_classes())
        .with_in_channels(shape.channels)
        .with_input_size(shape.height);
    model.stem = config.stem;
    model.shortcut = config.shortcut;
    model.projection_dim = (config.supcon_weight > 0.0).then_some(SUPCON_PROJECTION_DIM);
    Ok(model)
}

/// Weights a run starts from (`pretrained`), and the input normalisation they were trained
/// with: ImageNet's for a torchvision file, the run's own for a run folder.
fn read_pretrained(
    source: &Path,
    backbone: crate::models::Backbone,
) -> Result<(PretrainedWeights, Normalization), TrainError> {
    if source.is_dir() {
        let (model, info) =
            super::load_trained_model(&RunDir::open(source)?, "best", &Device::flex())?;
        Ok((
            PretrainedWeights::from_model(&model, source),
            info.normalization,
        ))
    } else {
        Ok((
            PretrainedWeights::read_torchvision(source, backbone)?,
            Normalization::imagenet(),
        ))
    }
}

/// The input normalisation: the configuration's, else that of the pretrained weights (their
/// three channels averaged for one-channel data), else measured on the training split.
fn normalization(
    config: &TrainConfig,
    dataset: &Dataset,
    pretrained: Option<&Normalization>,
) -> Result<Normalization, TrainError> {
    let channels = dataset.image_shape().channels;
    match (&config.mean, &config.std) {
        (Some(mean), Some(std)) => {
            if mean.len() != channels || std.len() != channels || std.iter().any(|s| *s <= 0.0) {
                return Err(TrainError::Config(format!(
                    "mean and std need {channels} values each (one per channel), std > 0"
                )));
            }
            Ok(Normalization {
                mean: mean.clone(),
                std: std.clone(),
            })
        }
        (None, None) => match pretrained {
            Some(own) if own.mean.len() == channels => Ok(own.clone()),
            Some(own) if channels == 1 => {
                let average =
                    |values: &[f32]| vec![values.iter().sum::<f32>() / values.len() as f32];
                Ok(Normalization {
                    mean: average(&own.mean),
                    std: average(&own.std),
                })
            }
            Some(own) => Err(TrainError::DataMismatch(format!(
                "the pretrained weights take {} channels, the data has {channels}",
                own.mean.len()
            ))),
            None => Ok(Normalization::from_split(&dataset.train)),
        },
        _ => Err(TrainError::Config(
            "give both mean and std, or neither".into(),
        )),
    }
}

/// How often the running loss and accuracy are read back from a GPU for the progress display.
const PROGRESS_INTERVAL: std::time::Duration = std::time::Duration::from_millis(500);

/// Settings that may differ between the run being resumed and the resuming call.
const RESUMABLE_CHANGES: [&str; 1] = ["epochs"];

/// The settings in which the run saved in `out` (its `config.toml`) differs from `config`,
/// every key counted (`epochs` too), one `key: run has A, now B` line each: for callers that
/// reuse finished runs (`ppcr compare`) and must not take a run made otherwise for this one.
pub fn saved_settings_differences(
    out: &Path,
    config: &TrainConfig,
) -> Result<Vec<String>, TrainError> {
    let saved = saved_config(&RunDir::open(out)?)?;
    Ok(differences_except(&saved, config, &[]))
}

/// The configuration a run folder's `config.toml` holds.
fn saved_config(run: &RunDir) -> Result<TrainConfig, TrainError> {
    let text = run.read_config_text()?;
    TrainConfig::from_toml(&text).map_err(|e| RunFileError::corrupt(&run.config_path(), e).into())
}

fn config_differences(saved: &TrainConfig, given: &TrainConfig) -> Vec<String> {
    differences_except(saved, given, &RESUMABLE_CHANGES)
}

fn differences_except(saved: &TrainConfig, given: &TrainConfig, allowed: &[&str]) -> Vec<String> {
    let table = |config: &TrainConfig| -> toml::Table {
        toml::from_str(&config.to_toml()).expect("a TrainConfig serialises to a table")
    };
    let (saved, given) = (table(saved), table(given));
    let mut keys: Vec<&String> = saved.keys().chain(given.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter(|key| !allowed.contains(&key.as_str()))
        .filter(|key| saved.get(*key) != given.get(*key))
        .map(|key| {
            let show = |value: Option<&toml::Value>| {
                value
                    .map(|v| v.to_string())
                    .unwrap_or_else(|| "unset".into())
            };
            format!(
                "{key}: run has {}, now {}",
                show(saved.get(key)),
                show(given.get(key))
            )
        })
        .collect()
}

/// Visits every parameter, which makes burn draw the values of lazily initialised ones.
struct DrawInitialValues;

impl ModuleVisitor for DrawInitialValues {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let _ = param.val();
    }
}

fn selection_score(metric: SelectionMetric, evaluation: &SplitEvaluation) -> f64 {
    let report = &evaluation.report;
    match metric {
        SelectionMetric::Auc => report.auc_macro.unwrap_or(report.accuracy),
        SelectionMetric::Accuracy => report.accuracy,
        SelectionMetric::BalancedAccuracy => report.balanced_accuracy,
        SelectionMetric::Loss => -evaluation.loss,
        // Not compared: every epoch replaces the one before it (see `is_best`).
        SelectionMetric::Last => 0.0,
    }
}

fn loss_function(config: &TrainConfig, dataset: &Dataset, device: &Device) -> CrossEntropyLoss {
    let classes = dataset.num_classes();
    let mut loss = CrossEntropyLossConfig::new();
    if config.class_weighted {
        let counts = dataset.train.class_counts(classes);
        let total: usize = counts.iter().sum();
        // sklearn's "balanced" weights: n / (classes * count).
        let weights = counts
            .iter()
            .map(|&count| {
                if count == 0 {
                    0.0
                } else {
                    total as f32 / (classes * count) as f32
                }
            })
            .collect();
        loss = loss.with_weights(Some(weights));
    }
    if config.label_smoothing > 0.0 {
        loss = loss.with_smoothing(Some(config.label_smoothing as f32));
    }
    loss.init(device)
}

pub(crate) fn optimizer(config: &TrainConfig) -> ModuleOptimizer {
    SgdConfig::new()
        .with_momentum(Some(
            MomentumConfig::new()
                .with_momentum(config.momentum)
                // burn defaults to 0.1; PyTorch's SGD, which the papers used, to 0.
                .with_dampening(0.0)
                .with_nesterov(config.nesterov),
        ))
        .with_weight_decay(
            (config.weight_decay > 0.0).then(|| WeightDecayConfig::new(config.weight_decay as f32)),
        )
        .init()
}

/// Train on `dataset` into the run folder `out` (resuming it when `resume` is set), on
/// `device` (a plain device; autodiff is added for training), and evaluate the checkpoint
/// chosen on validation on the validation and test splits.
pub fn train(
    config: &TrainConfig,
    dataset: &Dataset,
    out: &Path,
    resume: bool,
    device: &Device,
    observer: &mut dyn TrainObserver,
) -> Result<TrainOutcome, TrainError> {
    train_on(
        config,
        dataset,
        out,
        resume,
        std::slice::from_ref(device),
        observer,
    )
}

/// [`train`] with every batch split across `devices` (data parallel, see `data_parallel`): the
/// model and optimizer live on the first device, which also validates and tests. One device
/// is exactly [`train`].
pub fn train_on(
    config: &TrainConfig,
    dataset: &Dataset,
    out: &Path,
    resume: bool,
    devices: &[Device],
    observer: &mut dyn TrainObserver,
) -> Result<TrainOutcome, TrainError> {
    let Some(device) = devices.first() else {
        return Err(TrainError::Config("no device to train on".into()));
    };
    config.validate().map_err(TrainError::Config)?;
    for (name, split) in [
        ("train", &dataset.train),
        ("val", &dataset.val),
        ("test", &dataset.test),
    ] {
        if split.is_empty() {
            return Err(TrainError::DataMismatch(format!(
                "{}: the {name} split is empty",
                dataset.source.display()
            )));
        }
    }
    if dataset.num_classes() < 2 {
        return Err(TrainError::DataMismatch(format!(
            "{}: one class ({}); a classifier needs at least two",
            dataset.source.display(),
            dataset.class_names.join(", ")
        )));
    }
    let model_config = model_config(config, dataset)?;
    let contrastive = config.supcon_weight > 0.0;
    if contrastive && devices.len() > 1 {
        return Err(TrainError::Config(
            "the contrastive loss relates every view of a batch to every other, so it trains on \
             one device: drop --devices or supcon_weight"
                .into(),
        ));
    }
    if let Some(why) = unsupported_on(config.precision, device) {
        return Err(TrainError::Config(why));
    }
    if config.precision.convolution_dtype().is_some() && devices.len() > 1 {
        return Err(TrainError::Config(
            "mixed precision trains on one device: drop --devices or --precision".into(),
        ));
    }
    let pretrained = match &config.pretrained {
        Some(source) => Some(read_pretrained(source, config.backbone)?),
        None => None,
    };
    let normalization = normalization(config, dataset, pretrained.as_ref().map(|(_, n)| n))?;
    let shape = dataset.image_shape();
    let augment = match &config.augment {
        Some(augment) => augment.clone(),
        None => AugmentConfig::default_for(shape.height, shape.channels),
    };
    augment
        .validate()
        .map_err(|e| TrainError::Config(e.to_string()))?;

    let run = RunDir::create(out)?;
    let resuming = resume && run.has_checkpoint()?;
    if !resume && (run.has_checkpoint()? || run.has_weights()? || run.metrics_path().exists()) {
        return Err(TrainError::RunExists {
            path: out.to_path_buf(),
        });
    }
    if resuming {
        let saved = saved_config(&run)?;
        let differences = config_differences(&saved, config);
        if !differences.is_empty() {
            return Err(TrainError::ResumeMismatch {
                path: out.to_path_buf(),
                differences: differences.join("; "),
            });
        }
    }

    let train_devices: Vec<Device> = devices.iter().map(|d| d.clone().autodiff()).collect();
    let train_device = train_devices[0].clone();
    let mut model = {
        // Seeding and initialising draw on the backend's one generator: two runs in one
        // process (threads of a library user, tests) must not interleave between them. burn
        // draws a parameter's values on its first use, so they are all drawn here.
        static SEED_AND_INIT: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let _turn = SEED_AND_INIT
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        train_device.seed(config.seed);
        let model = model_config.init(&train_device)?;
        model.visit(&mut DrawInitialValues);
        model
    };
    let params = model.num_params_without_projection();
    let mut optim = optimizer(config);
    let mut state = TrainState::default();
    let mut starting_point = String::new();
    if let Some((weights, _)) = &pretrained
        && !resuming
    {
        let loaded = weights.load_into(model)?;
        model = loaded.model;
        starting_point = format!(
            "; from {}{}{}",
            weights.source().display(),
            if loaded.classifier_kept {
                ", new classifier"
            } else {
                ""
            },
            if loaded.summed_rgb {
                ", RGB filters summed for grey input"
            } else {
                ""
            }
        );
    }
    let backbone_group = pretrained.is_some().then(|| {
        BackboneGroup::of(
            &model,
            config.backbone_lr_factor,
            config.freeze_backbone_epochs,
        )
    });
    if resuming {
        model = run.load_live_model(model)?;
        (optim, state) = run.load_training_state(optim, &model)?;
        if state.epochs_completed > config.epochs {
            return Err(TrainError::Config(format!(
                "{}: the run has already trained {} epochs; --epochs must be at least that to \
                 resume it",
                out.display(),
                state.epochs_completed
            )));
        }
    }
    // The optimizer's momentum is one more value per weight, so an epoch folder is about
    // twice the model's size.
    let model_bytes = model
        .clone()
        .into_record()
        .into_bytes()
        .map(|bytes| bytes.len() as u64)
        .unwrap_or(0);
    run.ensure_space_for_checkpoints(2 * model_bytes + 4096)?;
    run.write_file(&run.config_path(), config.to_toml().as_bytes())?;
    let info = RunInfo {
        model: model_config.clone(),
        class_names: dataset.class_names.clone(),
        normalization: normalization.clone(),
        dataset: dataset.source.display().to_string(),
        tta: config.tta,
    };
    run.write_file(
        &run.run_info_path(),
        &serde_json::to_vec_pretty(&info).expect("run info serialises"),
    )?;

    let loss_fns: Vec<_> = train_devices
        .iter()
        .map(|device| loss_function(config, dataset, device))
        .collect();
    let data_parallel = DataParallel::new(train_devices, loss_fns);
    let num_classes = dataset.num_classes();
    let train_size = dataset.train.len();
    let batch_size = config.batch_size.min(train_size);
    // Drop the last incomplete batch: a batch of one breaks BatchNorm's statistics.
    let steps_per_epoch = (train_size / batch_size).max(1);
    let total_steps = steps_per_epoch * config.epochs;
    let swa = Swa::of(config);
    // Epochs already in a resumed run's equal average.
    let averaged_epochs = swa.as_ref().map_or(0, |swa| {
        state.epochs_completed.saturating_sub(swa.start_epoch)
    });
    // A resumed run's average is its latest kept model, loaded into a copy with BatchNorm
    // statistics of its own.
    let latest = || run.load_model(model.valid(), "latest");
    let mut average = if config.ema_decay > 0.0 {
        let start = if resuming { &latest()? } else { &model };
        let updates = state.epochs_completed * steps_per_epoch;
        Some(WeightAverage::exponential(config.ema_decay, start, updates))
    } else if averaged_epochs > 0 {
        Some(WeightAverage::equal(&latest()?, averaged_epochs))
    } else {
        None
    };
    let mut loss_scaler = config.precision.needs_loss_scale().then(|| {
        state
            .loss_scale
            .clone()
            .map_or_else(LossScaler::new, LossScaler::from_state)
    });
    let image_dims = [shape.channels, shape.height, shape.width];
    let mut summary = format!(
        "{} + {} ({} parameters) on {} [{} train / {} val / {} test, {} classes, {}x{}x{}]",
        config.backbone,
        config.attention,
        params,
        dataset.name,
        train_size,
        dataset.val.len(),
        dataset.test.len(),
        num_classes,
        shape.height,
        shape.width,
        shape.channels
    );
    summary.push_str(&starting_point);
    if let Some(swa) = &swa {
        summary.push_str(&format!(
            "; weights averaged over epochs {}-{} at lr {}",
            swa.start_epoch + 1,
            config.epochs,
            swa.lr
        ));
    }
    if let Some(last) = state
        .history
        .last()
        .filter(|last| last.devices != devices.len())
    {
        summary.push_str(&format!(
            "\nnote: epoch {} ran on {} device(s) and this session runs on {}: BatchNorm normalises \
             other shards, so the run continues but will not match an uninterrupted one bit for bit",
            last.epoch,
            last.devices,
            devices.len()
        ));
    }
    observer.on_start(state.epochs_completed + 1, config.epochs, &summary);
    let started = Instant::now();

    // The CPU backend computes as it is called, so reading the running sums after every step
    // costs nothing and a divergence is caught at its step; a GPU queues work, and a read
    // would stop it, so there they are read only as often as the progress display updates.
    let read_every_step = device == &Device::flex();
    // An epoch's batches in its seeded order, and the generator that augments them.
    let epoch_batches = |epoch: usize, views: usize| {
        let mut rng = epoch_rng(config.seed, epoch);
        let mut order: Vec<usize> = (0..train_size).collect();
        order.shuffle(&mut rng);
        let batches = EpochBatches {
            split: &dataset.train,
            order,
            batch_size,
            steps: steps_per_epoch,
            augment: &augment,
            normalization: &normalization,
            views,
        };
        (batches, rng)
    };
    for epoch in state.epochs_completed..config.epochs {
        let epoch_started = Instant::now();
        let (batches, rng) = epoch_batches(epoch, if contrastive { 2 } else { 1 });
        let (stepped, lr, loss_sum, correct, seen, contrastive_sum) =
            batches.run(rng, |batches| {
                let mut model = model;
                let mut running = StepStats::zeros(&train_device);
                let (mut loss_sum, mut correct, mut seen) = (0.0f64, 0usize, 0usize);
                let mut contrastive_sum = 0.0f64;
                let mut last_read = Instant::now();
                let mut lr = config.lr;
                for (step, (pixels, labels)) in batches.enumerate() {
                    let global_step = epoch * steps_per_epoch + step;
                    lr = match &swa {
                        Some(swa) => swa.lr_at(config.lr, global_step, steps_per_epoch),
                        None => config.schedule.lr_at(
                            config.lr,
                            global_step,
                            steps_per_epoch,
                            total_steps,
                        ),
                    };
                    let mixed = MixedPrecision {
                        dtype: config.precision.convolution_dtype(),
                        loss_scale: loss_scaler.as_ref().map_or(1.0, LossScaler::scale),
                    };
                    let BatchGradients {
                        model: stepped,
                        stats,
                        grads,
                    } = if contrastive {
                        data_parallel.contrastive_gradients(
                            model,
                            &pixels,
                            &labels,
                            image_dims,
                            ContrastiveTerm {
                                weight: config.supcon_weight,
                                temperature: config.supcon_temperature,
                            },
                            mixed,
                        )?
                    } else {
                        data_parallel.batch_gradients(model, &pixels, &labels, image_dims, mixed)?
                    };
                    // A step whose scaled gradients overflowed is skipped, as AMP skips it.
                    let grads = match loss_scaler.as_mut() {
                        Some(scaler) => scaler.unscale(grads, &stepped),
                        None => Some(grads),
                    };
                    model = match (grads, &backbone_group) {
                        (Some(grads), Some(group)) => {
                            group.step(&mut optim, lr, epoch, stepped, grads)
                        }
                        (Some(grads), None) => optim.step(lr, stepped, grads),
                        (None, _) => stepped,
                    };
                    if config.ema_decay > 0.0
                        && let Some(average) = average.as_mut()
                    {
                        average.update(&model);
                    }
                    running = running.add(stats);
                    seen += labels.len();
                    let last = step + 1 == steps_per_epoch;
                    if read_every_step || last || last_read.elapsed() >= PROGRESS_INTERVAL {
                        (loss_sum, correct, contrastive_sum) = running.read();
                        last_read = Instant::now();
                        if !(loss_sum.is_finite() && contrastive_sum.is_finite()) {
                            return Err(TrainError::Diverged {
                                epoch: epoch + 1,
                                step: step + 1,
                                value: (loss_sum + contrastive_sum) as f32,
                            });
                        }
                        observer.on_step(&StepProgress {
                            epoch: epoch + 1,
                            epochs: config.epochs,
                            step: step + 1,
                            steps: steps_per_epoch,
                            loss: loss_sum / seen as f64,
                            accuracy: correct as f64 / seen as f64,
                            images_per_second: seen as f64 / epoch_started.elapsed().as_secs_f64(),
                            lr,
                        });
                    }
                    pause_point(|| format!("step:{}:{}", epoch + 1, step + 1));
                }
                Ok((model, lr, loss_sum, correct, seen, contrastive_sum))
            })?;
        model = stepped;
        let train_seconds = epoch_started.elapsed().as_secs_f64();
        if let Some(swa) = &swa
            && swa.averages(epoch)
        {
            match average.as_mut() {
                Some(average) => average.update(&model),
                None => average = Some(WeightAverage::equal(&model, 1)),
            }
        }
        let mut averaged = average.as_ref().map(|a| a.apply_to(&model));
        if swa.is_some()
            && let Some(weights) = averaged.take()
        {
            // The statistics of the averaged weights, from this epoch's images (one view each,
            // augmented as in training, in the epoch's order).
            let (batches, rng) = epoch_batches(epoch, 1);
            averaged = Some(batches.run(rng, |batches| {
                recompute_batch_norm(
                    weights.train(),
                    batches.map(|(pixels, _)| pixels),
                    image_dims,
                    &train_device,
                )
            }));
        }
        let val = evaluate_split(
            averaged.as_ref().unwrap_or(&model),
            &dataset.val,
            &normalization,
            num_classes,
            config.eval_batch_size,
            config.tta,
            device,
        )?;
        let score = selection_score(config.select_on, &val);
        let is_best = config.select_on == SelectionMetric::Last
            || state.best_score.is_none_or(|best| score > best);
        if is_best {
            state.best_score = Some(score);
            state.best_epoch = Some(epoch + 1);
        }
        let record = EpochRecord {
            epoch: epoch + 1,
            lr,
            train_loss: loss_sum / seen.max(1) as f64,
            train_accuracy: correct as f64 / seen.max(1) as f64,
            val_loss: val.loss,
            val_accuracy: val.report.accuracy,
            val_auc: val.report.auc_macro,
            val_balanced_accuracy: val.report.balanced_accuracy,
            devices: devices.len(),
            seconds: epoch_started.elapsed().as_secs_f64(),
            images_per_second: seen as f64 / train_seconds,
            train_supcon_loss: contrastive.then(|| contrastive_sum / steps_per_epoch as f64),
        };
        state.epochs_completed = epoch + 1;
        state.history.push(record.clone());
        state.loss_scale = loss_scaler.as_ref().map(LossScaler::state);
        run.save_epoch(&model, averaged.as_ref(), &optim, &state, is_best)?;
        write_log(run.root(), config.log_format, &state.history)?;
        observer.on_epoch(&record, is_best);
        if epoch + 1 < config.epochs && observer.should_stop() {
            return Err(TrainError::Interrupted {
                path: out.to_path_buf(),
                epoch: epoch + 1,
            });
        }
    }
    let train_seconds = started.elapsed().as_secs_f64();

    let best_epoch = state.best_epoch.ok_or_else(|| RunFileError::NoCheckpoint {
        path: out.to_path_buf(),
    })?;
    let best = run.load_model(model_config.init(device)?, "best")?;
    let evaluate = |split| {
        evaluate_split(
            &best,
            split,
            &normalization,
            num_classes,
            config.eval_batch_size,
            config.tta,
            device,
        )
    };
    let val = evaluate(&dataset.val)?;
    let test = evaluate(&dataset.test)?;
    RunMetrics {
        best_epoch,
        selected_on: Some(config.select_on),
        backbone: config.backbone.to_string(),
        attention: config.attention.to_string(),
        params,
        epochs: config.epochs,
        train_seconds: Some(state.history.iter().map(|r| r.seconds).sum()),
        val_loss: Some(val.loss),
        test_loss: Some(test.loss),
        val: val.report.clone(),
        test: test.report.clone(),
    }
    .write(out)?;
    TestPredictions {
        num_classes,
        labels: dataset.test.labels.clone(),
        probabilities: test.probabilities.clone(),
    }
    .write(out, &dataset.class_names)?;
    Ok(TrainOutcome {
        best_epoch,
        val,
        test,
        params,
        train_seconds,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resume_differences_name_the_changed_settings_and_allow_more_epochs() {
        let saved = TrainConfig::default();
        let longer = TrainConfig {
            epochs: saved.epochs + 10,
            ..saved.clone()
        };
        assert!(config_differences(&saved, &longer).is_empty());
        let other = TrainConfig {
            lr: 0.5,
            ..saved.clone()
        };
        let differences = config_differences(&saved, &other);
        assert_eq!(differences.len(), 1);
        assert!(differences[0].starts_with("lr:"), "{differences:?}");
    }

    #[test]
    fn the_resize_key_reaches_the_model_configuration() {
        let dataset =
            crate::data::builtin_breastmnist(&crate::data::LoadOptions::default()).unwrap();
        for resize in [false, true] {
            let config = TrainConfig {
                ppcr_resize_to_input: resize,
                ..TrainConfig::default()
            };
            let model = model_config(&config, &dataset).unwrap();
            assert_eq!(model.attention.ppcr_resize_to_input, resize);
        }
        let text = "ppcr_resize_to_input = true\n";
        assert!(TrainConfig::from_toml(text).unwrap().ppcr_resize_to_input);
    }

    #[test]
    fn epoch_generators_differ_by_epoch_and_repeat_by_seed() {
        use rand::Rng;
        let draw = |seed, epoch| epoch_rng(seed, epoch).random::<u64>();
        assert_eq!(draw(1, 3), draw(1, 3));
        assert_ne!(draw(1, 3), draw(1, 4));
        assert_ne!(draw(1, 3), draw(2, 3));
    }
}
