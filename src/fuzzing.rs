//! Entry points for the cargo-fuzz targets under `fuzz/`: each feeds raw bytes to one parser
//! the crate owns or wraps, exactly as that parser sees a file's contents, so the targets need
//! no temporary files.
//!
//! Not part of the supported API (hidden from the docs): the signatures follow the fuzz
//! targets, not users. Every function returns the parser's own `Result` (or a summary of it);
//! a fuzz target only checks that it returns at all, without panicking, hanging or allocating
//! without bound, plus the few invariants stated on each function.

use std::path::Path;
use std::sync::LazyLock;

use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::{Device, Tensor};

use crate::attention::{AttentionConfig, AttentionKind};
use crate::data::{DataError, Dataset, LoadOptions};
use crate::models::{Backbone, ResNet, ResNetConfig};
use crate::runfiles::{RunInfo, TrainState};
use crate::train::{TrainConfig, TrainError};

/// Parses `bytes` as a MedMNIST `.npz` file named `fuzz.npz`, at the data's own size and
/// channels, so the parser's own checks (not a resize) decide what is allocated.
pub fn npz(bytes: &[u8]) -> Result<Dataset, DataError> {
    crate::data::npz_from_bytes(
        bytes,
        Path::new("fuzz.npz"),
        "fuzz",
        &LoadOptions::default(),
    )
}

/// Parses `bytes` as one CIFAR batch file (CIFAR-100 records when `cifar100`) and, read as
/// text, as a class-name list; returns the number of records decoded and of names read.
pub fn cifar(bytes: &[u8], cifar100: bool) -> (Result<usize, DataError>, Result<usize, DataError>) {
    let names = String::from_utf8_lossy(bytes);
    crate::data::cifar_from_bytes(bytes, &names, cifar100, &LoadOptions::default())
}

/// Parses `bytes` as a CSV image list (`path,label[,split]`) read from `fuzz/labels.csv`,
/// without reading the listed images; returns the number of classes and of listed files.
pub fn csv_labels(bytes: &[u8]) -> Result<(usize, usize), DataError> {
    crate::data::csv_from_reader(bytes, Path::new("fuzz/labels.csv"))
}

/// Decodes `bytes` as an image file the way the loader does, once at its own size as RGB and
/// once resized to 8 x 8 grey (the paths `load_image_file_rgb` and `load_image_file` take);
/// returns the first's shape (height, width, channels).
pub fn image(bytes: &[u8]) -> Result<(usize, usize, usize), DataError> {
    let native = crate::data::image_from_bytes(bytes, None, Some(3))?;
    crate::data::image_from_bytes(bytes, Some(8), Some(1))?;
    Ok(native)
}

/// Parses `text` as a training configuration and validates it. A configuration that parses
/// must also write out as TOML that parses again (a run folder's `config.toml` is re-read on
/// resume); that is asserted, so a failure is a crash the fuzzer reports.
pub fn train_config(text: &str) -> Result<(), String> {
    let config = TrainConfig::from_toml(text).map_err(|e| e.to_string())?;
    let written = config.to_toml();
    if let Err(error) = TrainConfig::from_toml(&written) {
        panic!("a parsed configuration wrote TOML that does not parse: {error}\n{written}");
    }
    config.validate()
}

/// The model every checkpoint input is loaded into: ResNet-20 with PPCR, 1 input channel,
/// 2 classes, 8 x 8 inputs, on the autodiff device as in training (built once; cloned per
/// input).
static MODEL: LazyLock<ResNet> = LazyLock::new(|| {
    ResNetConfig::new(
        Backbone::ResNet20,
        AttentionConfig::new(AttentionKind::Ppcr),
        2,
    )
    .with_in_channels(1)
    .with_input_size(8)
    .init(&Device::flex().autodiff())
    .expect("the fuzzing model builds")
});

/// Which checkpoint file [`checkpoint`] parses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CheckpointFile {
    /// `model.bpk`: loaded into the model, which then runs one forward pass.
    Model,
    /// `optimizer.bpk`: loaded into the training optimizer, which then takes one step.
    Optimizer,
    /// `state.json`.
    State,
    /// `run.json`.
    RunInfo,
}

/// The model the checkpoint target loads into, so a seed generator can save real checkpoint
/// files for it.
pub fn checkpoint_model() -> ResNet {
    MODEL.clone()
}

/// The optimizer training uses (default configuration), so a seed generator can save its state
/// after one [`optimizer_step`].
pub fn checkpoint_optimizer() -> burn::optim::ModuleOptimizer {
    crate::train::default_optimizer()
}

/// One optimizer step on `model` with every gradient set to one: what training does right
/// after resuming, and where loaded optimizer state meets the parameters it must fit.
pub fn optimizer_step<M: Module>(optimizer: &mut burn::optim::ModuleOptimizer, model: M) -> M {
    /// Collects a gradient of ones for every float parameter.
    struct Ones(GradientsParams);
    impl ModuleVisitor for Ones {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            // Gradients are plain tensors, as `GradientsParams::from_grads` gives them.
            self.0.register(param.id, param.val().inner().ones_like());
        }
    }
    let mut ones = Ones(GradientsParams::new());
    model.visit(&mut ones);
    optimizer.step(0.01, model, ones.0)
}

/// Parses `bytes` as the given checkpoint file and, for the binary records, uses what was
/// loaded as training or prediction would next.
pub fn checkpoint(file: CheckpointFile, bytes: &[u8]) -> Result<(), TrainError> {
    match file {
        CheckpointFile::Model => {
            let model = crate::runfiles::load_model_bytes(
                MODEL.clone(),
                bytes.to_vec(),
                Path::new("fuzz/model.bpk"),
            )?;
            let input = Tensor::<4>::zeros([1, 1, 8, 8], &Device::flex().autodiff());
            let _ = model.forward(input).into_data();
        }
        CheckpointFile::Optimizer => {
            let mut optimizer = crate::runfiles::load_optimizer_bytes(
                checkpoint_optimizer(),
                bytes.to_vec(),
                Path::new("fuzz/optimizer.bpk"),
                &MODEL,
            )?;
            let model = optimizer_step(&mut optimizer, MODEL.clone());
            drop(model);
        }
        CheckpointFile::State => {
            let text = String::from_utf8_lossy(bytes);
            let _: TrainState = crate::runfiles::parse_json(&text, Path::new("fuzz/state.json"))?;
        }
        CheckpointFile::RunInfo => {
            let text = String::from_utf8_lossy(bytes);
            let _: RunInfo = crate::runfiles::parse_json(&text, Path::new("fuzz/run.json"))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::path::PathBuf;

    use super::*;
    use crate::data::AugmentConfig;
    use crate::runfiles::EpochRecord;

    /// Real checkpoint files of the fuzzing model, each prefixed with the target's selector
    /// byte: model.bpk (0), optimizer.bpk after one step (1), state.json (2), run.json (3).
    /// `full` adds the whole model's files (about 1 MB each); otherwise only records of one
    /// layer, which are valid burnpack files the fuzzer can mutate quickly.
    fn checkpoint_seeds(full: bool) -> Vec<(String, Vec<u8>)> {
        let with_selector = |selector: u8, bytes: &[u8]| [&[selector][..], bytes].concat();
        let model = checkpoint_model();
        let mut seeds = Vec::new();
        let classifier = model.classifier.clone();
        seeds.push((
            "classifier_model".to_string(),
            with_selector(0, &classifier.clone().into_record().into_bytes().unwrap()),
        ));
        let mut optimizer = checkpoint_optimizer();
        optimizer_step(&mut optimizer, classifier);
        seeds.push((
            "classifier_optimizer".to_string(),
            with_selector(1, &optimizer.to_record().into_bytes().unwrap()),
        ));
        if full {
            seeds.push((
                "resnet20_model".to_string(),
                with_selector(0, &model.clone().into_record().into_bytes().unwrap()),
            ));
            let mut optimizer = checkpoint_optimizer();
            optimizer_step(&mut optimizer, model.clone());
            seeds.push((
                "resnet20_optimizer".to_string(),
                with_selector(1, &optimizer.to_record().into_bytes().unwrap()),
            ));
        }
        let epoch = EpochRecord {
            epoch: 1,
            lr: 0.05,
            train_loss: 0.7,
            train_accuracy: 0.5,
            val_loss: 0.69,
            val_accuracy: 0.5,
            val_auc: Some(0.5),
            val_balanced_accuracy: 0.5,
            seconds: 1.5,
            images_per_second: 100.0,
            devices: 1,
            train_supcon_loss: None,
        };
        let state = TrainState {
            epochs_completed: 1,
            best_epoch: Some(1),
            best_score: Some(0.5),
            history: vec![epoch],
            loss_scale: Some(crate::runfiles::LossScaleState {
                scale: 32768.0,
                steps_without_overflow: 7,
            }),
        };
        seeds.push((
            "state".to_string(),
            with_selector(2, &serde_json::to_vec_pretty(&state).unwrap()),
        ));
        let info = RunInfo {
            model: ResNetConfig::new(
                Backbone::ResNet20,
                AttentionConfig::new(AttentionKind::Ppcr),
                2,
            )
            .with_in_channels(1)
            .with_input_size(8),
            class_names: vec!["benign".to_string(), "malignant".to_string()],
            normalization: crate::data::Normalization {
                mean: vec![0.5],
                std: vec![0.25],
            },
            dataset: "builtin:breastmnist.npz".to_string(),
            tta: crate::data::TestTimeAugmentation::Hflip,
        };
        seeds.push((
            "run".to_string(),
            with_selector(3, &serde_json::to_vec_pretty(&info).unwrap()),
        ));
        seeds
    }

    /// Tiny images in every format the loader reads.
    fn image_seeds() -> Vec<(String, Vec<u8>)> {
        let grey = image::GrayImage::from_fn(5, 4, |x, y| image::Luma([(x * 40 + y * 9) as u8]));
        let rgb =
            image::RgbImage::from_fn(4, 3, |x, y| image::Rgb([x as u8 * 60, y as u8 * 80, 7]));
        let rgba =
            image::RgbaImage::from_fn(3, 3, |x, y| image::Rgba([x as u8 * 90, 5, y as u8, 200]));
        let mut seeds = Vec::new();
        for (name, image, format) in [
            (
                "grey.png",
                image::DynamicImage::from(grey.clone()),
                image::ImageFormat::Png,
            ),
            ("rgb.png", rgb.clone().into(), image::ImageFormat::Png),
            ("rgba.png", rgba.into(), image::ImageFormat::Png),
            ("grey.jpg", grey.clone().into(), image::ImageFormat::Jpeg),
            ("rgb.jpg", rgb.clone().into(), image::ImageFormat::Jpeg),
            ("rgb.bmp", rgb.clone().into(), image::ImageFormat::Bmp),
            ("grey.bmp", grey.clone().into(), image::ImageFormat::Bmp),
            ("rgb.tiff", rgb.into(), image::ImageFormat::Tiff),
            ("grey.tiff", grey.into(), image::ImageFormat::Tiff),
        ] {
            let mut bytes = std::io::Cursor::new(Vec::new());
            image.write_to(&mut bytes, format).unwrap();
            seeds.push((name.to_string(), bytes.into_inner()));
        }
        seeds
    }

    /// CIFAR seeds: records of each variant (selector byte 0 = CIFAR-10, 1 = CIFAR-100) and a
    /// class-name list.
    fn cifar_seeds() -> Vec<(String, Vec<u8>)> {
        let record = |labels: &[u8]| {
            let mut bytes = labels.to_vec();
            bytes.extend((0..3072).map(|i| (i % 251) as u8));
            bytes
        };
        let names: String = crate::data::CIFAR10_CLASS_NAMES
            .iter()
            .map(|name| format!("{name}\n"))
            .collect();
        vec![
            (
                "cifar10_two_records".to_string(),
                [vec![0], record(&[3]), record(&[9])].concat(),
            ),
            (
                "cifar100_one_record".to_string(),
                [vec![1], record(&[2, 42])].concat(),
            ),
            (
                "cifar10_names".to_string(),
                [&[0u8][..], names.as_bytes()].concat(),
            ),
        ]
    }

    fn csv_seeds() -> Vec<(String, Vec<u8>)> {
        let fixtures = crate::data::test_support::fixtures();
        let mut seeds: Vec<(String, Vec<u8>)> =
            ["pbc_mini.csv", "pbc_mini_noheader.csv", "bad_label.csv"]
                .iter()
                .map(|name| (name.to_string(), fs::read(fixtures.join(name)).unwrap()))
                .collect();
        seeds.push((
            "splits.csv".to_string(),
            b"path,label,split\na.png,cat,train\nb.png,dog,val\nc.png,cat,test\n\"d,e.png\",dog,Training\n"
                .to_vec(),
        ));
        seeds
    }

    fn config_seeds() -> Vec<(String, Vec<u8>)> {
        let full = TrainConfig {
            data: Some(PathBuf::from("data/bloodmnist_64.npz")),
            size: Some(64),
            channels: Some(3),
            split_seed: Some(3),
            augment: Some(AugmentConfig::default_for(64, 3)),
            mean: Some(vec![0.5, 0.4, 0.3]),
            std: Some(vec![0.2, 0.2, 0.2]),
            ..TrainConfig::default()
        };
        vec![
            (
                "default.toml".to_string(),
                TrainConfig::default().to_toml().into_bytes(),
            ),
            ("full.toml".to_string(), full.to_toml().into_bytes()),
            (
                "partial.toml".to_string(),
                b"epochs = 7\nattention = \"se\"\n".to_vec(),
            ),
        ]
    }

    /// Writes every target's seed corpus (except `npz`, see `fuzz/make_npz_seeds.py`) under
    /// `fuzz/seeds/<target>/`, plus the full-size checkpoint seeds under
    /// `fuzz/seeds/checkpoint_full/` (not committed: about 1 MB each).
    #[test]
    #[ignore = "writes the fuzz seed corpora; run by hand (see docs/reliability.md)"]
    fn write_fuzz_seeds() {
        let root = crate::data::test_support::project_root()
            .join("fuzz")
            .join("seeds");
        let mut full_checkpoint = checkpoint_seeds(true);
        full_checkpoint.retain(|(name, _)| name.starts_with("resnet20"));
        for (target, seeds) in [
            ("checkpoint", checkpoint_seeds(false)),
            ("checkpoint_full", full_checkpoint),
            ("image", image_seeds()),
            ("cifar", cifar_seeds()),
            ("csv_labels", csv_seeds()),
            ("train_config", config_seeds()),
        ] {
            let dir = root.join(target);
            fs::create_dir_all(&dir).unwrap();
            for (name, bytes) in seeds {
                fs::write(dir.join(name), bytes).unwrap();
            }
        }
    }

    /// Every seed is valid input its target accepts, so the corpora start from real files.
    #[test]
    fn seeds_are_accepted() {
        for (name, bytes) in image_seeds() {
            let (height, width, _) = image(&bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(height > 0 && width > 0, "{name}");
        }
        for (name, bytes) in cifar_seeds() {
            let cifar100 = bytes[0] == 1;
            let names_only = name.ends_with("names");
            let (records, names) = cifar(&bytes[1..], cifar100);
            assert_eq!(records.is_ok(), !names_only, "{name}: {records:?}");
            assert_eq!(names.is_ok(), names_only, "{name}: {names:?}");
        }
        for (name, bytes) in config_seeds() {
            train_config(std::str::from_utf8(&bytes).unwrap())
                .unwrap_or_else(|e| panic!("{name}: {e}"));
        }
        assert_eq!(csv_labels(&csv_seeds()[3].1).unwrap(), (2, 4));
        for (name, bytes) in checkpoint_seeds(true) {
            let file = match bytes[0] {
                0 => CheckpointFile::Model,
                1 => CheckpointFile::Optimizer,
                2 => CheckpointFile::State,
                _ => CheckpointFile::RunInfo,
            };
            let result = checkpoint(file, &bytes[1..]);
            // A one-layer model record is a valid file that does not fit the whole model.
            assert_eq!(
                result.is_ok(),
                name != "classifier_model",
                "{name}: {result:?}"
            );
        }
    }
}
