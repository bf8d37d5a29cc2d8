//! Everything a training run is made of, as one serialisable record: read from a TOML file,
//! overridden by command-line flags, and written back into the run folder as resolved.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{LrSchedule, Precision};
use crate::attention::AttentionKind;
use crate::data::{AugmentConfig, BadFilePolicy, TestTimeAugmentation};
use crate::models::{Backbone, ShortcutKind, StemKind};
use crate::runfiles::{LogFormat, SelectionMetric};

/// A training run's full configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    /// Data set path; `None` trains on the built-in BreastMNIST.
    pub data: Option<PathBuf>,
    /// Backbone.
    pub backbone: Backbone,
    /// Attention unit in every block.
    pub attention: AttentionKind,
    /// PPCR pyramid levels.
    pub ppcr_levels: usize,
    /// Let PPCR resample its per-pixel weights when the model is later fed another input size
    /// (evaluation or prediction at another resolution) instead of refusing it.
    pub ppcr_resize_to_input: bool,
    /// SE/CBAM reduction ratio.
    pub reduction: usize,
    /// Stem override (`imagenet` or `small`); `None` picks by backbone and size.
    pub stem: Option<StemKind>,
    /// Shortcut override (`a` or `b`); `None` picks by backbone.
    pub shortcut: Option<ShortcutKind>,
    /// Image size the data is resized to; `None` keeps the data's own size.
    pub size: Option<usize>,
    /// Force 1 (grey) or 3 (RGB) channels; `None` keeps the data's.
    pub channels: Option<usize>,
    /// Epochs.
    pub epochs: usize,
    /// Training batch size.
    pub batch_size: usize,
    /// Evaluation batch size.
    pub eval_batch_size: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// SGD momentum.
    pub momentum: f64,
    /// Nesterov momentum.
    pub nesterov: bool,
    /// L2 weight decay.
    pub weight_decay: f64,
    /// Learning-rate schedule.
    pub schedule: LrSchedule,
    /// Label smoothing of the cross-entropy loss (0 = off).
    pub label_smoothing: f64,
    /// Weight the loss by inverse class frequency (for imbalanced sets).
    pub class_weighted: bool,
    /// Seed of weight init, data order and augmentation.
    #[serde(with = "seed_in_toml")]
    pub seed: u64,
    /// Seed of any train/val/test split drawn from the data; `None` uses `seed`. Comparisons
    /// over seeds fix it, so every run sees the same split.
    #[serde(with = "seed_in_toml::optional", default)]
    pub split_seed: Option<u64>,
    /// Augmentations; `None` picks the default for the input size.
    pub augment: Option<AugmentConfig>,
    /// Per-channel normalisation mean; `None` computes it on the training split.
    pub mean: Option<Vec<f32>>,
    /// Per-channel normalisation std; `None` computes it on the training split.
    pub std: Option<Vec<f32>>,
    /// Validation metric that picks the best checkpoint.
    pub select_on: SelectionMetric,
    /// Decay of an exponential moving average of the weights, updated after every step; the
    /// average is what validation scores and the run keeps (0 = off: the trained weights).
    /// Absent from a saved run's config, it is 0: runs of earlier versions kept no average.
    #[serde(default)]
    pub ema_decay: f64,
    /// Stochastic weight averaging over the last this many epochs: they train at the constant
    /// rate `swa_lr`, the average of their end-of-epoch weights (with BatchNorm statistics
    /// recomputed on the training data) is what validation scores and the run keeps from
    /// then on (0 = off).
    #[serde(default)]
    pub swa_epochs: usize,
    /// The learning rate of the averaging phase, with `swa_epochs`.
    #[serde(default = "default_swa_lr")]
    pub swa_lr: f64,
    /// Views of each image whose class probabilities validation, testing, `ppcr eval` and
    /// `ppcr predict` average. Absent from a saved run's config, it is `none`: runs of earlier
    /// versions predicted from the image alone.
    #[serde(default)]
    pub tta: TestTimeAugmentation,
    /// Per-epoch log format.
    pub log_format: LogFormat,
    /// What to do with an unreadable image file: `fail` (default) or `skip` with a warning.
    pub on_bad_file: BadFilePolicy,
    /// Fraction of the data held out for validation when the data has no validation split.
    pub val_fraction: f64,
    /// Fraction held out for testing when the data has no test split.
    pub test_fraction: f64,
    /// Start from these weights: a torchvision checkpoint (`.pth`/`.pt` as `torch.save` writes
    /// a state dict, or `.safetensors`) or a run folder (of `ppcr import` or `ppcr train`).
    /// The classifier keeps its initialisation when the class count differs, attention units
    /// always do; a one-channel input sums the first convolution's RGB filters.
    pub pretrained: Option<PathBuf>,
    /// Learning-rate factor of the pretrained parameters (everything but the classifier and the
    /// attention units), with `pretrained`.
    pub backbone_lr_factor: f64,
    /// Weight of the supervised contrastive loss added to the cross-entropy (Khosla et al.
    /// 2020, as the PPCR journal version trains): two augmented views of every image, a
    /// projection head on the pooled features (training only). 0 turns it off.
    pub supcon_weight: f64,
    /// Temperature of the contrastive loss (also its base temperature).
    pub supcon_temperature: f64,
    /// Epochs at the start during which the pretrained parameters do not move (only the
    /// classifier and the attention units train; BatchNorm statistics still update), with
    /// `pretrained`.
    pub freeze_backbone_epochs: usize,
    /// The type the backbone's convolutions train in: `f32`, or `f16`/`bf16` on a GPU (mixed
    /// precision: the weights, the optimizer and everything else stay `f32`).
    pub precision: Precision,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            data: None,
            backbone: Backbone::ResNet20,
            attention: AttentionKind::Ppcr,
            ppcr_levels: 4,
            ppcr_resize_to_input: false,
            reduction: 16,
            stem: None,
            shortcut: None,
            size: None,
            channels: None,
            epochs: 80,
            batch_size: 32,
            eval_batch_size: 128,
            lr: 0.05,
            momentum: 0.9,
            nesterov: false,
            weight_decay: 5e-4,
            schedule: LrSchedule::default(),
            label_smoothing: 0.0,
            class_weighted: false,
            seed: 0,
            split_seed: None,
            augment: None,
            mean: None,
            std: None,
            select_on: SelectionMetric::Last,
            ema_decay: 0.0,
            swa_epochs: 0,
            swa_lr: super::DEFAULT_SWA_LR,
            tta: TestTimeAugmentation::Hflip,
            log_format: LogFormat::Csv,
            on_bad_file: BadFilePolicy::default(),
            val_fraction: 0.1,
            test_fraction: 0.2,
            pretrained: None,
            supcon_weight: 0.0,
            supcon_temperature: super::DEFAULT_TEMPERATURE,
            backbone_lr_factor: 1.0,
            freeze_backbone_epochs: 0,
            precision: Precision::F32,
        }
    }
}

impl TrainConfig {
    /// The seed of any split drawn from the data.
    pub fn data_split_seed(&self) -> u64 {
        self.split_seed.unwrap_or(self.seed)
    }

    /// Parse a TOML document (unknown keys are errors, so a typo never silently does nothing).
    pub fn from_toml(text: &str) -> Result<Self, toml::de::Error> {
        toml::from_str(text)
    }

    /// The configuration as TOML, as written into the run folder.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("a TrainConfig always serialises")
    }

    /// Check values that would otherwise fail deep inside training.
    pub fn validate(&self) -> Result<(), String> {
        let mut problems = Vec::new();
        // config.toml records the path as text, which TOML requires to be UTF-8.
        if let Some(data) = &self.data
            && data.to_str().is_none()
        {
            problems.push(format!(
                "the data path {} is not valid UTF-8; a run records it in config.toml as text, \
                 so rename it (or link to it from a UTF-8 path)",
                data.display()
            ));
        }
        if let Some(pretrained) = &self.pretrained
            && pretrained.to_str().is_none()
        {
            problems.push(format!(
                "the pretrained path {} is not valid UTF-8; a run records it in config.toml as \
                 text",
                pretrained.display()
            ));
        }
        if !(self.supcon_weight.is_finite() && self.supcon_weight >= 0.0) {
            problems.push(format!(
                "supcon_weight must be 0 (off) or a positive number, not {}",
                self.supcon_weight
            ));
        }
        if !(self.supcon_temperature.is_finite() && self.supcon_temperature > 0.0) {
            problems.push(format!(
                "supcon_temperature must be above 0, not {}",
                self.supcon_temperature
            ));
        }
        if self.supcon_weight == 0.0 && self.supcon_temperature != super::DEFAULT_TEMPERATURE {
            problems.push(
                "supcon_temperature applies to the contrastive loss: give supcon_weight > 0 too"
                    .into(),
            );
        }
        if !(self.ema_decay.is_finite() && (0.0..1.0).contains(&self.ema_decay)) {
            problems.push(format!(
                "ema_decay must be 0 (off) or between 0 and 1 (e.g. 0.99), not {}",
                self.ema_decay
            ));
        }
        if self.swa_epochs > 0 && self.swa_epochs >= self.epochs {
            problems.push(format!(
                "swa_epochs ({}) must be below epochs ({}): the schedule needs at least one \
                 epoch before the averaging phase",
                self.swa_epochs, self.epochs
            ));
        }
        if self.swa_epochs > 0 && self.ema_decay > 0.0 {
            problems
                .push("swa_epochs and ema_decay both average the weights: give one of them".into());
        }
        if !(self.swa_lr.is_finite() && self.swa_lr > 0.0) {
            problems.push(format!(
                "swa_lr must be a positive number, not {}",
                self.swa_lr
            ));
        }
        if self.swa_epochs == 0 && self.swa_lr != super::DEFAULT_SWA_LR {
            problems.push("swa_lr applies to weight averaging: give swa_epochs > 0 too".into());
        }
        if !(self.backbone_lr_factor.is_finite() && self.backbone_lr_factor > 0.0) {
            problems.push(format!(
                "backbone_lr_factor must be a number above 0, not {}",
                self.backbone_lr_factor
            ));
        }
        if self.pretrained.is_none() && self.backbone_lr_factor != 1.0 {
            problems.push(
                "backbone_lr_factor applies to pretrained weights: give pretrained too".into(),
            );
        }
        if self.pretrained.is_none() && self.freeze_backbone_epochs > 0 {
            problems.push(
                "freeze_backbone_epochs applies to pretrained weights: give pretrained too".into(),
            );
        }
        if self.freeze_backbone_epochs >= self.epochs && self.freeze_backbone_epochs > 0 {
            problems.push(format!(
                "freeze_backbone_epochs ({}) must be below epochs ({}), or the backbone never \
                 trains",
                self.freeze_backbone_epochs, self.epochs
            ));
        }
        if self.epochs == 0 {
            problems.push("epochs must be at least 1".to_string());
        }
        if self.batch_size < 2 {
            problems.push("batch_size must be at least 2 (BatchNorm needs a batch)".to_string());
        }
        if self.eval_batch_size == 0 {
            problems.push("eval_batch_size must be at least 1".to_string());
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            problems.push(format!("lr must be a positive number, got {}", self.lr));
        }
        if !(0.0..1.0).contains(&self.momentum) {
            problems.push(format!("momentum must be in [0, 1), got {}", self.momentum));
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            problems.push(format!(
                "weight_decay must be >= 0, got {}",
                self.weight_decay
            ));
        }
        if !(0.0..1.0).contains(&self.label_smoothing) {
            problems.push(format!(
                "label_smoothing must be in [0, 1), got {}",
                self.label_smoothing
            ));
        }
        let spec = self.backbone.spec();
        let expansion = match spec.block {
            crate::models::BlockKind::Basic => 1,
            crate::models::BlockKind::Bottleneck => 4,
        };
        let narrowest = spec.stage_widths.iter().min().copied().unwrap_or(1) * expansion;
        if !(1..=narrowest).contains(&self.reduction) {
            problems.push(format!(
                "reduction must be between 1 and {narrowest} (the narrowest attended feature map \
                 of {}), got {}",
                self.backbone, self.reduction
            ));
        }
        problems.extend(schedule_problems(&self.schedule, self.epochs, self.lr));
        if let Some(channels) = self.channels
            && channels != 1
            && channels != 3
        {
            problems.push(format!("channels must be 1 or 3, got {channels}"));
        }
        if let Some(size) = self.size
            && !(8..=1024).contains(&size)
        {
            problems.push(format!("size must be between 8 and 1024 px, got {size}"));
        }
        for (name, values) in [("mean", &self.mean), ("std", &self.std)] {
            if let Some(values) = values
                && values.iter().any(|value| !value.is_finite())
            {
                problems.push(format!("{name} must be finite numbers, got {values:?}"));
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("; "))
        }
    }
}

fn default_swa_lr() -> f64 {
    super::DEFAULT_SWA_LR
}

/// What is wrong with `schedule` for a run of `epochs` epochs at peak rate `lr`: values that
/// would be silently clamped, or that could never take effect.
fn schedule_problems(schedule: &LrSchedule, epochs: usize, lr: f64) -> Vec<String> {
    let mut problems = Vec::new();
    match schedule {
        LrSchedule::Cosine {
            warmup_epochs,
            min_lr,
        } => {
            if !(warmup_epochs.is_finite() && *warmup_epochs >= 0.0) {
                problems.push(format!("warmup_epochs must be >= 0, got {warmup_epochs}"));
            } else if *warmup_epochs > epochs as f64 {
                problems.push(format!(
                    "warmup_epochs {warmup_epochs} is longer than the run ({epochs} epochs)"
                ));
            }
            if !(min_lr.is_finite() && *min_lr >= 0.0 && *min_lr <= lr) {
                problems.push(format!(
                    "min_lr must be between 0 and lr ({lr}), got {min_lr}"
                ));
            }
        }
        LrSchedule::Periodic { period, gamma } => {
            if *period == 0 {
                problems.push("the schedule's period must be at least 1 epoch".into());
            }
            if !(gamma.is_finite() && *gamma > 0.0) {
                problems.push(format!("gamma must be a positive number, got {gamma}"));
            }
        }
        LrSchedule::Step { milestones, gamma } => {
            for &milestone in milestones {
                if milestone == 0 || milestone >= epochs {
                    problems.push(format!(
                        "milestone {milestone} is outside the run: milestones are the first \
                         epoch (0-based) with the lower rate, between 1 and {}",
                        epochs.saturating_sub(1)
                    ));
                }
            }
            if !(gamma.is_finite() && *gamma > 0.0) {
                problems.push(format!("gamma must be a positive number, got {gamma}"));
            }
        }
        LrSchedule::Constant => {}
    }
    problems
}

/// Seeds in a TOML file: TOML integers stop at `i64::MAX`, so a larger `u64` seed is written as
/// a string of its digits; both forms read back, so every `u64` seed can be saved and resumed.
mod seed_in_toml {
    use serde::de::Error;
    use serde::{Deserialize, Deserializer, Serializer};

    /// An integer or a string of digits, as a seed may be written.
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Written {
        Integer(u64),
        Digits(String),
    }

    impl Written {
        fn value<E: Error>(self) -> Result<u64, E> {
            match self {
                Written::Integer(value) => Ok(value),
                Written::Digits(text) => text.trim().parse().map_err(|_| {
                    E::custom(format!(
                        "seed '{text}' is not an integer from 0 to {}",
                        u64::MAX
                    ))
                }),
            }
        }
    }

    pub fn serialize<S: Serializer>(seed: &u64, serializer: S) -> Result<S::Ok, S::Error> {
        match i64::try_from(*seed) {
            Ok(value) => serializer.serialize_i64(value),
            Err(_) => serializer.serialize_str(&seed.to_string()),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
        Written::deserialize(deserializer)?.value()
    }

    /// The same for an optional seed (absent: `None`).
    pub mod optional {
        use serde::{Deserialize, Deserializer, Serializer};

        use super::Written;

        pub fn serialize<S: Serializer>(
            seed: &Option<u64>,
            serializer: S,
        ) -> Result<S::Ok, S::Error> {
            match seed {
                Some(seed) => super::serialize(seed, serializer),
                None => serializer.serialize_none(),
            }
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(
            deserializer: D,
        ) -> Result<Option<u64>, D::Error> {
            Option::<Written>::deserialize(deserializer)?
                .map(Written::value)
                .transpose()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The problems `validate` finds after `change` to the default configuration.
    fn problems(change: impl FnOnce(&mut TrainConfig)) -> String {
        let mut config = TrainConfig::default();
        change(&mut config);
        config.validate().err().unwrap_or_default()
    }

    #[test]
    fn schedules_and_reductions_that_would_be_clamped_or_never_act_are_refused() {
        let cosine = |warmup: f64, min_lr: f64| LrSchedule::Cosine {
            warmup_epochs: warmup,
            min_lr,
        };
        let step = |milestones: Vec<usize>| LrSchedule::Step {
            milestones,
            gamma: 0.1,
        };
        type Change<'a> = Box<dyn FnOnce(&mut TrainConfig) + 'a>;
        let cases: Vec<(Change, &str)> = vec![
            (
                Box::new(|c| c.schedule = cosine(-1.0, 0.0)),
                "warmup_epochs must be >= 0",
            ),
            (
                Box::new(|c| {
                    c.epochs = 3;
                    c.schedule = cosine(4.0, 0.0)
                }),
                "longer than the run (3 epochs)",
            ),
            (
                Box::new(|c| c.schedule = cosine(1.0, 1.0)),
                "min_lr must be between 0 and lr",
            ),
            (
                Box::new(|c| c.schedule = step(vec![0])),
                "milestone 0 is outside the run",
            ),
            (
                Box::new(|c| {
                    c.epochs = 10;
                    c.schedule = step(vec![5, 10])
                }),
                "milestone 10 is outside the run",
            ),
            (
                Box::new(|c| c.reduction = 0),
                "reduction must be between 1 and 16",
            ),
            (
                Box::new(|c| {
                    c.backbone = Backbone::ResNet50;
                    c.reduction = 100_000
                }),
                "between 1 and 256",
            ),
        ];
        for (change, expected) in cases {
            let found = problems(change);
            assert!(found.contains(expected), "'{expected}' not in '{found}'");
        }
        // What is allowed: warm-up as long as the run, milestones inside it, reduction 16 on
        // ResNet-20's 16-channel stage.
        assert_eq!(problems(|c| c.schedule = cosine(c.epochs as f64, 0.0)), "");
        assert_eq!(
            problems(|c| {
                c.epochs = 10;
                c.schedule = step(vec![1, 9])
            }),
            ""
        );
        assert_eq!(problems(|c| c.reduction = 16), "");
    }

    #[test]
    fn a_data_path_that_is_not_utf8_is_refused_not_a_panic() {
        use std::os::unix::ffi::OsStrExt;
        let path = std::path::Path::new(std::ffi::OsStr::from_bytes(b"/data/pbc\xff"));
        let found = problems(|c| c.data = Some(path.to_path_buf()));
        assert!(found.contains("is not valid UTF-8"), "{found}");
    }

    #[test]
    fn every_u64_seed_survives_a_round_trip_through_toml() {
        for seed in [0, 1, i64::MAX as u64, i64::MAX as u64 + 1, u64::MAX] {
            let config = TrainConfig {
                seed,
                split_seed: Some(seed),
                ..TrainConfig::default()
            };
            let text = config.to_toml();
            let back = TrainConfig::from_toml(&text).unwrap();
            assert_eq!((back.seed, back.split_seed), (seed, Some(seed)), "{text}");
        }
        // Old files with an integer seed and no split seed still read.
        let mut table: toml::Table = toml::from_str(&TrainConfig::default().to_toml()).unwrap();
        table.insert("seed".into(), toml::Value::Integer(7));
        table.remove("split_seed");
        let back = TrainConfig::from_toml(&toml::to_string(&table).unwrap()).unwrap();
        assert_eq!((back.seed, back.split_seed), (7, None));
        table.insert("seed".into(), toml::Value::String("12x".into()));
        let error = TrainConfig::from_toml(&toml::to_string(&table).unwrap()).unwrap_err();
        assert!(error.to_string().contains("seed '12x'"), "{error}");
    }

    #[test]
    fn toml_round_trips_and_rejects_unknown_keys() {
        let config = TrainConfig {
            epochs: 3,
            attention: AttentionKind::Cbam,
            ..TrainConfig::default()
        };
        assert_eq!(TrainConfig::from_toml(&config.to_toml()).unwrap(), config);
        let partial = TrainConfig::from_toml("epochs = 7\nattention = \"se\"\n").unwrap();
        assert_eq!(partial.epochs, 7);
        assert_eq!(partial.attention, AttentionKind::Se);
        assert_eq!(partial.lr, TrainConfig::default().lr);
        let error = TrainConfig::from_toml("epoch = 7\n")
            .unwrap_err()
            .to_string();
        assert!(error.contains("epoch"), "{error}");
    }

    #[test]
    fn validation_lists_every_problem() {
        let config = TrainConfig {
            epochs: 0,
            lr: -1.0,
            channels: Some(2),
            ..TrainConfig::default()
        };
        let problems = config.validate().unwrap_err();
        assert!(
            problems.contains("epochs") && problems.contains("lr") && problems.contains("channels")
        );
        assert!(TrainConfig::default().validate().is_ok());
    }

    #[test]
    fn weight_averaging_settings_that_cannot_act_are_refused() {
        assert!(problems(|c| c.swa_epochs = 20).is_empty());
        assert!(problems(|c| c.swa_epochs = 80).contains("swa_epochs (80) must be below epochs"));
        assert!(
            problems(|c| {
                c.swa_epochs = 10;
                c.ema_decay = 0.99
            })
            .contains("give one of them")
        );
        assert!(
            problems(|c| {
                c.swa_epochs = 10;
                c.swa_lr = 0.0
            })
            .contains("swa_lr must be a positive number")
        );
        assert!(problems(|c| c.swa_lr = 0.02).contains("give swa_epochs > 0 too"));
        // A saved run of an earlier version has neither key.
        let earlier = TrainConfig::default()
            .to_toml()
            .lines()
            .filter(|line| !line.starts_with("swa_"))
            .collect::<Vec<_>>()
            .join("\n");
        assert_eq!(
            TrainConfig::from_toml(&earlier).unwrap(),
            TrainConfig::default()
        );
    }

    #[test]
    fn a_saved_run_without_the_tta_key_predicts_from_the_image_alone() {
        let with_flips = TrainConfig {
            tta: TestTimeAugmentation::Flips,
            ..TrainConfig::default()
        };
        let text = with_flips.to_toml();
        assert!(text.contains("tta = \"flips\""), "{text}");
        assert_eq!(TrainConfig::from_toml(&text).unwrap(), with_flips);
        let earlier = text
            .lines()
            .filter(|line| !line.starts_with("tta"))
            .collect::<Vec<_>>()
            .join("\n");
        let loaded = TrainConfig::from_toml(&earlier).unwrap();
        assert_eq!(loaded.tta, TestTimeAugmentation::None);
    }

    #[test]
    fn nan_in_the_normalisation_is_refused() {
        let config = TrainConfig {
            mean: Some(vec![0.5, f32::NAN, 0.5]),
            std: Some(vec![0.2, 0.2, f32::INFINITY]),
            momentum: f64::NAN,
            ..TrainConfig::default()
        };
        let problems = config.validate().unwrap_err();
        for needle in ["mean must be finite", "std must be finite", "momentum"] {
            assert!(problems.contains(needle), "{needle}: {problems}");
        }
    }
}
