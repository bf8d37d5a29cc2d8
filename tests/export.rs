//! `ppcr export`: the ONNX file run by an independent runtime (tract) gives `ppcr predict`'s
//! probabilities on real images (BreastMNIST test images, PBC blood-cell fixtures), for every
//! attention unit in both ResNet families; the safetensors file holds the weights under
//! torchvision's names.
//!
//! The networks are built here with their initial convolution weights and every BatchNorm
//! parameter and statistic and every attention parameter set to seeded random values, so that
//! a wrongly folded BatchNorm or a unit written with the wrong formula shows.

mod common;

use std::path::{Path, PathBuf};

use burn::store::{ModuleSnapshot, bridge};
use burn::tensor::{Device, TensorData};
use common::{assert_clean_failure, assert_success, export, fixtures, ppcr, stdout};
use ppcr::attention::{AttentionConfig, AttentionKind};
use ppcr::data::{
    LoadOptions, Normalization, TestTimeAugmentation, builtin_breastmnist, load_image_file,
};
use ppcr::models::{Backbone, ResNetConfig};
use ppcr::runfiles::{RunDir, RunInfo};
use rand::{Rng, SeedableRng};
use tract_onnx::prelude::*;

/// A run folder holding a network with seeded random BatchNorm and attention parameters.
fn random_run(
    folder: &Path,
    backbone: Backbone,
    unit: AttentionKind,
    size: usize,
    channels: usize,
    classes: usize,
) -> PathBuf {
    let config = ResNetConfig::new(backbone, AttentionConfig::new(unit), classes)
        .with_in_channels(channels)
        .with_input_size(size);
    let mut model = config.init(&Device::flex()).unwrap();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(unit as u64 * 31 + size as u64);
    let perturbed: Vec<_> = model
        .collect(None, None, false)
        .into_iter()
        .map(|tensor| {
            let data = bridge::to_data(&tensor).unwrap();
            let shape = data.shape().to_vec();
            let mut values = data.try_to_vec::<f32>().unwrap();
            let name = tensor.name.as_str();
            let mut draw = |low: f32, high: f32| rng.random_range(low..high);
            for value in values.iter_mut() {
                *value = if name.ends_with("gamma") || name.ends_with("running_var") {
                    draw(0.7, 1.3)
                } else if name.ends_with("beta") || name.ends_with("running_mean") {
                    draw(-0.2, 0.2)
                } else if name.contains(".attention.") {
                    draw(-0.5, 0.5)
                } else {
                    *value
                };
            }
            bridge::from_data(TensorData::new(values, shape), tensor.name.clone(), None)
        })
        .collect();
    let result = model.apply(perturbed, None, None, false);
    assert!(result.errors.is_empty(), "{:?}", result.errors);
    let root = folder.join(format!("{backbone}-{unit}"));
    let run = RunDir::create(&root).unwrap();
    run.save_weights(&model).unwrap();
    let info = RunInfo {
        model: config,
        class_names: (0..classes).map(|c| format!("class{c}")).collect(),
        normalization: Normalization {
            mean: vec![0.45; channels],
            std: vec![0.25; channels],
        },
        dataset: "random".into(),
        // The exported network is the network alone, so `predict` must be too.
        tta: TestTimeAugmentation::None,
    };
    run.write_file(&run.run_info_path(), &serde_json::to_vec(&info).unwrap())
        .unwrap();
    root
}

/// `[N, C, H, W]` pixel values in 0-1 of image files, read as `ppcr predict` reads them.
fn pixels(images: &[PathBuf], size: usize, channels: usize) -> Tensor {
    let mut values = Vec::new();
    for path in images {
        let hwc = load_image_file(path, size, channels).unwrap();
        for channel in 0..channels {
            values.extend(
                hwc.iter()
                    .skip(channel)
                    .step_by(channels)
                    .map(|&v| v as f32 / 255.0),
            );
        }
    }
    tract_ndarray::Array4::from_shape_vec((images.len(), channels, size, size), values)
        .unwrap()
        .into()
}

/// `ppcr predict --csv`'s probabilities, row by row.
fn predict(run: &Path, images: &[PathBuf]) -> Vec<Vec<f32>> {
    let mut args = vec![
        "predict".to_string(),
        "--checkpoint".into(),
        run.display().to_string(),
        "--csv".into(),
    ];
    args.extend(images.iter().map(|p| p.display().to_string()));
    let output = ppcr(args);
    assert_success(&output);
    stdout(&output)
        .lines()
        .skip(1)
        .map(|line| {
            line.split(',')
                .skip(2)
                .map(|v| v.parse().unwrap())
                .collect()
        })
        .collect()
}

/// Export `run` to ONNX, run it with tract on `images` and compare with `ppcr predict`.
fn check_onnx(run: &Path, images: &[PathBuf], size: usize, channels: usize) -> f32 {
    let file = run.join("model.onnx");
    export(run, "onnx", &file);
    let model = tract_onnx::onnx()
        .model_for_path(&file)
        .unwrap()
        .with_input_fact(0, f32::fact([images.len(), channels, size, size]).into())
        .unwrap()
        .into_optimized()
        .unwrap()
        .into_runnable()
        .unwrap();
    let outputs = model
        .run(tvec!(pixels(images, size, channels).into()))
        .unwrap();
    let tract: Vec<f32> = outputs[0]
        .to_plain_array_view::<f32>()
        .unwrap()
        .iter()
        .copied()
        .collect();
    let expected = predict(run, images);
    let classes = expected[0].len();
    assert_eq!(tract.len(), images.len() * classes);
    let mut worst = 0.0f32;
    for (row, expected) in tract.chunks(classes).zip(&expected) {
        for (got, want) in row.iter().zip(expected) {
            worst = worst.max((got - want).abs());
        }
    }
    assert!(
        worst <= 1e-4,
        "{}: tract differs from ppcr predict by {worst}",
        run.display()
    );
    worst
}

/// Six BreastMNIST test images (grey ultrasound, 28 px) written as PNG files.
fn breastmnist_images(folder: &Path) -> Vec<PathBuf> {
    let data = builtin_breastmnist(&LoadOptions::default()).unwrap();
    let test = &data.test;
    let pixels = test.height * test.width;
    (0..6)
        .map(|i| {
            let path = folder.join(format!("breast{i}.png"));
            image::GrayImage::from_raw(
                test.width as u32,
                test.height as u32,
                test.images[i * pixels..(i + 1) * pixels].to_vec(),
            )
            .unwrap()
            .save(&path)
            .unwrap();
            path
        })
        .collect()
}

/// The PBC blood-cell fixture images (RGB JPEG).
fn pbc_images() -> Vec<PathBuf> {
    let mut images: Vec<PathBuf> = std::fs::read_dir(fixtures().join("pbc_mini/test"))
        .unwrap()
        .flat_map(|class| std::fs::read_dir(class.unwrap().path()).unwrap())
        .map(|entry| entry.unwrap().path())
        .collect();
    images.sort();
    images
}

#[test]
fn every_unit_in_both_families_runs_in_tract_as_in_ppcr() {
    let folder = tempfile::tempdir().unwrap();
    let breast = breastmnist_images(folder.path());
    let pbc = pbc_images();
    assert!(pbc.len() >= 3);
    let mut report = Vec::new();
    for &unit in AttentionKind::ALL {
        let cifar = random_run(folder.path(), Backbone::ResNet20, unit, 28, 1, 2);
        report.push((unit, "resnet20@28", check_onnx(&cifar, &breast, 28, 1)));
        let imagenet = random_run(folder.path(), Backbone::ResNet18, unit, 72, 3, 3);
        report.push((unit, "resnet18@72", check_onnx(&imagenet, &pbc, 72, 3)));
    }
    // Bottleneck blocks, with the unit whose ONNX form is the longest.
    let bottleneck = random_run(
        folder.path(),
        Backbone::ResNet50,
        AttentionKind::Ppcr,
        72,
        3,
        3,
    );
    report.push((
        AttentionKind::Ppcr,
        "resnet50@72",
        check_onnx(&bottleneck, &pbc, 72, 3),
    ));
    for (unit, network, worst) in report {
        eprintln!("{network} + {unit}: largest difference {worst:.1e}");
    }
}

#[test]
fn safetensors_holds_the_weights_under_torchvision_names() {
    let folder = tempfile::tempdir().unwrap();
    let run = random_run(
        folder.path(),
        Backbone::ResNet18,
        AttentionKind::Ppcr,
        72,
        3,
        3,
    );
    let file = folder.path().join("weights.safetensors");
    let bytes = export(&run, "safetensors", &file);
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let metadata = header.metadata().as_ref().unwrap();
    assert_eq!(metadata["class_names"], r#"["class0","class1","class2"]"#);
    assert_eq!(metadata["attention"], "ppcr");
    assert_eq!(metadata["test_time_augmentation"], "none");
    let tensors = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    assert_eq!(tensors.tensor("fc.weight").unwrap().shape(), [3, 512]);
    assert_eq!(
        tensors
            .tensor("layer2.0.downsample.1.running_var")
            .unwrap()
            .shape(),
        [128]
    );
    assert_eq!(
        tensors
            .tensor("layer1.0.attention.pixel_context_weights")
            .unwrap()
            .shape(),
        [15, 18, 18]
    );
    // A file of the same weights read back as torchvision's resnet18 (ppcr's own reader of
    // torchvision files) needs the unit's tensors dropped; everything else maps one to one.
    let names: Vec<String> = tensors.names().into_iter().map(String::from).collect();
    assert!(
        names
            .iter()
            .all(|n| !n.contains("Basic") && !n.contains("stages")),
        "{names:?}"
    );

    let output = ppcr([
        "export",
        "--checkpoint",
        folder.path().join("nosuch").to_str().unwrap(),
        "--format",
        "onnx",
        "--out",
        file.to_str().unwrap(),
    ]);
    assert_clean_failure(&output, &["nosuch", "no such folder"]);
}
