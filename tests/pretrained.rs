//! torchvision checkpoints into ppcr (`ppcr import`, `train --pretrained`), without PyTorch:
//! state dicts with torchvision's names and shapes are generated here from torchvision's
//! ResNet definition (written out below, independently of ppcr's name mapping) and written as
//! `.safetensors`; `tests/fixtures/pretrained/partial_resnet18.pth` is a real `torch.save` file.
//! The check against torchvision itself is `bench/torchvision_check.py`.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use burn::tensor::Device;
use common::{assert_clean_failure, assert_success, fixtures, ppcr, stdout};
use ppcr::models::pretrained::{PretrainedError, PretrainedWeights};
use ppcr::models::{Backbone, ResidualBlock, Shortcut};
use ppcr::runfiles::RunDir;
use ppcr::train::load_trained_model;
use rand::{Rng, SeedableRng};
use safetensors::tensor::{Dtype, TensorView};

/// One tensor of a generated state dict.
struct Entry {
    shape: Vec<usize>,
    dtype: Dtype,
    bytes: Vec<u8>,
}

/// A state dict being generated: seeded random values under torchvision's names.
struct Generator {
    dict: BTreeMap<String, Entry>,
    rng: rand_chacha::ChaCha8Rng,
}

impl Generator {
    /// A float tensor of values in -0.1..0.1 (1 +- 0.1 where `positive`, for scales and
    /// variances).
    fn float(&mut self, name: String, shape: Vec<usize>, positive: bool) {
        let count: usize = shape.iter().product();
        let bytes = (0..count)
            .flat_map(|_| {
                let value: f32 = self.rng.random_range(-0.1..0.1);
                (if positive { 1.0 + value } else { value }).to_le_bytes()
            })
            .collect();
        let dtype = Dtype::F32;
        self.dict.insert(
            name,
            Entry {
                shape,
                dtype,
                bytes,
            },
        );
    }

    /// A BatchNorm2d's tensors, its int64 `num_batches_tracked` included.
    fn batch_norm(&mut self, name: &str, channels: usize) {
        self.float(format!("{name}.weight"), vec![channels], true);
        self.float(format!("{name}.bias"), vec![channels], false);
        self.float(format!("{name}.running_mean"), vec![channels], false);
        self.float(format!("{name}.running_var"), vec![channels], true);
        let bytes = 100i64.to_le_bytes().to_vec();
        let (shape, dtype) = (vec![], Dtype::I64);
        self.dict.insert(
            format!("{name}.num_batches_tracked"),
            Entry {
                shape,
                dtype,
                bytes,
            },
        );
    }
}

/// torchvision's `resnet18`/`resnet34`/`resnet50` state dict (names and shapes as
/// torchvision/models/resnet.py builds them) with seeded random values.
fn torchvision_state_dict(
    backbone: Backbone,
    classes: usize,
    seed: u64,
) -> BTreeMap<String, Entry> {
    let (blocks, bottleneck) = match backbone {
        Backbone::ResNet18 => ([2, 2, 2, 2], false),
        Backbone::ResNet34 => ([3, 4, 6, 3], false),
        Backbone::ResNet50 => ([3, 4, 6, 3], true),
        other => panic!("torchvision has no {other}"),
    };
    let mut g = Generator {
        dict: BTreeMap::new(),
        rng: rand_chacha::ChaCha8Rng::seed_from_u64(seed),
    };
    g.float("conv1.weight".into(), vec![64, 3, 7, 7], false);
    g.batch_norm("bn1", 64);
    let mut inplanes = 64;
    for (stage, &count) in blocks.iter().enumerate() {
        let planes = 64 << stage;
        let out = if bottleneck { planes * 4 } else { planes };
        for block in 0..count {
            let prefix = format!("layer{}.{block}", stage + 1);
            let convs = if bottleneck {
                vec![
                    [planes, inplanes, 1, 1],
                    [planes, planes, 3, 3],
                    [out, planes, 1, 1],
                ]
            } else {
                vec![[planes, inplanes, 3, 3], [planes, planes, 3, 3]]
            };
            for (index, shape) in convs.into_iter().enumerate() {
                let channels = shape[0];
                g.float(
                    format!("{prefix}.conv{}.weight", index + 1),
                    shape.to_vec(),
                    false,
                );
                g.batch_norm(&format!("{prefix}.bn{}", index + 1), channels);
            }
            let stride = if block == 0 && stage > 0 { 2 } else { 1 };
            if block == 0 && (stride != 1 || inplanes != out) {
                g.float(
                    format!("{prefix}.downsample.0.weight"),
                    vec![out, inplanes, 1, 1],
                    false,
                );
                g.batch_norm(&format!("{prefix}.downsample.1"), out);
            }
            inplanes = out;
        }
    }
    g.float("fc.weight".into(), vec![classes, inplanes], false);
    g.float("fc.bias".into(), vec![classes], false);
    g.dict
}

fn write_safetensors(dict: &BTreeMap<String, Entry>, path: &Path) {
    let views: Vec<(String, TensorView)> = dict
        .iter()
        .map(|(name, entry)| {
            (
                name.clone(),
                TensorView::new(entry.dtype, entry.shape.clone(), &entry.bytes).unwrap(),
            )
        })
        .collect();
    std::fs::write(path, safetensors::tensor::serialize(views, None).unwrap()).unwrap();
}

fn floats(entry: &Entry) -> Vec<f32> {
    entry
        .bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect()
}

fn values(tensor: burn::tensor::Tensor<4>) -> Vec<f32> {
    tensor.into_data().try_to_vec::<f32>().unwrap()
}

#[test]
fn the_three_torchvision_backbones_import_with_every_value_in_place() {
    let folder = tempfile::tempdir().unwrap();
    for (backbone, name) in [
        (Backbone::ResNet18, "resnet18"),
        (Backbone::ResNet34, "resnet34"),
        (Backbone::ResNet50, "resnet50"),
    ] {
        let dict = torchvision_state_dict(backbone, 10, 7);
        let file = folder.path().join(format!("{name}.safetensors"));
        write_safetensors(&dict, &file);
        let run = folder.path().join(name);
        let output = ppcr([
            "import",
            file.to_str().unwrap(),
            "--backbone",
            name,
            "--out",
            run.to_str().unwrap(),
        ]);
        assert_success(&output);
        assert!(
            stdout(&output).contains("10 classes"),
            "{}",
            stdout(&output)
        );

        let (model, info) =
            load_trained_model(&RunDir::open(&run).unwrap(), "best", &Device::flex()).unwrap();
        assert_eq!((info.model.input_size, info.model.in_channels), (224, 3));
        assert_eq!(
            info.class_names,
            (0..10).map(|i| i.to_string()).collect::<Vec<_>>()
        );
        assert_eq!(info.normalization, ppcr::data::Normalization::imagenet());
        assert_eq!(
            values(model.stem.conv.weight.val()),
            floats(&dict["conv1.weight"])
        );
        let stem_var = model
            .stem
            .norm
            .running_var
            .value()
            .into_data()
            .try_to_vec::<f32>()
            .unwrap();
        assert_eq!(stem_var, floats(&dict["bn1.running_var"]));
        let projection = match &model.stages[1].blocks[0] {
            ResidualBlock::Basic(block) => {
                assert_eq!(
                    values(block.conv2.weight.val()),
                    floats(&dict["layer2.0.conv2.weight"])
                );
                &block.shortcut
            }
            ResidualBlock::Bottleneck(block) => {
                assert_eq!(
                    values(block.conv3.weight.val()),
                    floats(&dict["layer2.0.conv3.weight"])
                );
                &block.shortcut
            }
        };
        let Shortcut::Projection(projection) = projection else {
            panic!("{name}: the first block of stage 2 projects")
        };
        assert_eq!(
            values(projection.conv.weight.val()),
            floats(&dict["layer2.0.downsample.0.weight"])
        );
        assert_classifier(&model, &dict);
    }
}

/// The classifier: torchvision's `[classes, features]` weight is burn's `[features, classes]`.
fn assert_classifier(model: &ppcr::models::ResNet, dict: &BTreeMap<String, Entry>) {
    let weight = model.classifier.weight.val();
    let [features, classes] = weight.dims();
    let burn = weight.into_data().try_to_vec::<f32>().unwrap();
    let torch = floats(&dict["fc.weight"]);
    for class in 0..classes {
        for feature in 0..features {
            assert_eq!(
                burn[feature * classes + class],
                torch[class * features + feature]
            );
        }
    }
    let bias = model
        .classifier
        .bias
        .as_ref()
        .unwrap()
        .val()
        .into_data()
        .try_to_vec::<f32>()
        .unwrap();
    assert_eq!(bias, floats(&dict["fc.bias"]));
}

fn read_error(dict: &BTreeMap<String, Entry>, backbone: Backbone) -> PretrainedError {
    let folder = tempfile::tempdir().unwrap();
    let file = folder.path().join("weights.safetensors");
    write_safetensors(dict, &file);
    PretrainedWeights::read_torchvision(&file, backbone).unwrap_err()
}

#[test]
fn wrong_files_are_refused_by_key_and_shape_and_nothing_is_written() {
    let mut dict = torchvision_state_dict(Backbone::ResNet18, 1000, 1);
    dict.remove("layer3.1.bn2.running_var");
    let message = read_error(&dict, Backbone::ResNet18).to_string();
    assert!(
        message.contains("'layer3.1.bn2.running_var' is missing"),
        "{message}"
    );

    // Another architecture: resnet34's file read as resnet18 has keys resnet18 lacks.
    let message = read_error(
        &torchvision_state_dict(Backbone::ResNet34, 1000, 1),
        Backbone::ResNet18,
    )
    .to_string();
    assert!(
        message.contains("'layer1.2.") && message.contains("not part of a torchvision resnet18"),
        "{message}"
    );
    // resnet18's read as resnet50: the first convolution of a bottleneck is 1x1.
    let message = read_error(
        &torchvision_state_dict(Backbone::ResNet18, 1000, 1),
        Backbone::ResNet50,
    )
    .to_string();
    assert!(
        message.contains(
            "'layer1.0.conv1.weight' has shape [64, 64, 3, 3] in the file, but the model needs \
             [64, 64, 1, 1]"
        ),
        "{message}"
    );

    let mut dict = torchvision_state_dict(Backbone::ResNet18, 1000, 1);
    let conv = dict.get_mut("layer2.0.conv1.weight").unwrap();
    conv.shape = vec![128, 64, 1, 9];
    let message = read_error(&dict, Backbone::ResNet18).to_string();
    assert!(
        message.contains("'layer2.0.conv1.weight' has shape [128, 64, 1, 9] in the file, but the model needs [128, 64, 3, 3]"),
        "{message}"
    );

    // A truncated file, through the command: a named error, and no run folder.
    let folder = tempfile::tempdir().unwrap();
    let file = folder.path().join("resnet18.safetensors");
    write_safetensors(&torchvision_state_dict(Backbone::ResNet18, 1000, 1), &file);
    let bytes = std::fs::read(&file).unwrap();
    std::fs::write(&file, &bytes[..bytes.len() / 2]).unwrap();
    let run = folder.path().join("run");
    let output = ppcr([
        "import",
        file.to_str().unwrap(),
        "--backbone",
        "resnet18",
        "--out",
        run.to_str().unwrap(),
    ]);
    assert_clean_failure(
        &output,
        &["resnet18.safetensors", "cannot read the weights"],
    );
    assert!(!run.exists(), "nothing is written for a bad file");

    // A CIFAR ResNet has no torchvision weights.
    let output = ppcr([
        "import",
        file.to_str().unwrap(),
        "--backbone",
        "resnet20",
        "--out",
        run.to_str().unwrap(),
    ]);
    assert_clean_failure(
        &output,
        &[
            "resnet20",
            "importable backbones: resnet18, resnet34, resnet50",
        ],
    );
    assert!(!run.exists());
}

/// `partial_resnet18.pth` was written by `torch.save` (PyTorch 2.15) from
/// `{"conv1.weight": arange(9408).reshape(64, 3, 7, 7) / 1000, "fc.bias": linspace(-1, 1, 1000),
/// "bn1.num_batches_tracked": tensor(7)}`: burn's reader gets past the pickle to the first
/// tensor a resnet18 needs and does not have.
#[test]
fn a_real_torch_save_file_is_read() {
    let file = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/pretrained/partial_resnet18.pth");
    let message = PretrainedWeights::read_torchvision(&file, Backbone::ResNet18)
        .unwrap_err()
        .to_string();
    assert!(
        message.contains("partial_resnet18.pth: 'bn1.weight' is missing"),
        "{message}"
    );

    let tensors = ppcr::models::pretrained::read_tensors(&file).unwrap();
    let names: Vec<&str> = tensors.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        ["bn1.num_batches_tracked", "conv1.weight", "fc.bias"]
    );
    let conv = tensors["conv1.weight"].clone();
    assert_eq!(conv.shape().to_vec(), [64, 3, 7, 7]);
    let conv = conv.try_to_vec::<f32>().unwrap();
    assert_eq!((conv[0], conv[100], conv[9407]), (0.0, 0.1, 9.407));
    let bias = tensors["fc.bias"].clone().try_to_vec::<f32>().unwrap();
    assert_eq!((bias.len(), bias[0], bias[999]), (1000, -1.0, 1.0));
    let batches = tensors["bn1.num_batches_tracked"].clone();
    assert_eq!(batches.try_to_vec::<i64>().unwrap(), [7]);

    let bytes = std::fs::read(&file).unwrap();
    let folder = tempfile::tempdir().unwrap();
    let truncated = folder.path().join("truncated.pth");
    std::fs::write(&truncated, &bytes[..bytes.len() - 100]).unwrap();
    let message = PretrainedWeights::read_torchvision(&truncated, Backbone::ResNet18)
        .unwrap_err()
        .to_string();
    assert!(
        message.contains("truncated.pth: cannot read the weights"),
        "{message}"
    );
}

#[test]
fn training_starts_from_an_imported_run_with_a_new_classifier() {
    let folder = tempfile::tempdir().unwrap();
    let file = folder.path().join("resnet18.safetensors");
    let dict = torchvision_state_dict(Backbone::ResNet18, 1000, 3);
    write_safetensors(&dict, &file);
    let imported = folder.path().join("imagenet");
    assert_success(&ppcr([
        "import",
        file.to_str().unwrap(),
        "--backbone",
        "resnet18",
        "--out",
        imported.to_str().unwrap(),
    ]));

    // Importing again into the same folder is refused; so is training into it.
    let again = ppcr([
        "import",
        file.to_str().unwrap(),
        "--backbone",
        "resnet18",
        "--out",
        imported.to_str().unwrap(),
    ]);
    assert_clean_failure(&again, &["already holds a training run"]);

    let data = fixtures().join("pbc_mini");
    let run = folder.path().join("finetuned");
    let output = ppcr([
        "train",
        "--data",
        data.to_str().unwrap(),
        "--backbone",
        "resnet18",
        "--attn",
        "ppcr",
        "--size",
        "96",
        "--epochs",
        "2",
        "--batch",
        "4",
        "--pretrained",
        imported.to_str().unwrap(),
        "--freeze-backbone-epochs",
        "1",
        "--backbone-lr-factor",
        "0.1",
        "--out",
        run.to_str().unwrap(),
    ]);
    assert_success(&output);
    let text = stdout(&output) + &String::from_utf8_lossy(&output.stderr);
    assert!(text.contains("new classifier"), "{text}");
    let config = std::fs::read_to_string(run.join("config.toml")).unwrap();
    assert!(
        config.contains("freeze_backbone_epochs = 1")
            && config.contains("backbone_lr_factor = 0.1"),
        "{config}"
    );
    // ImageNet's normalisation came with the weights.
    let (model, info) =
        load_trained_model(&RunDir::open(&run).unwrap(), "latest", &Device::flex()).unwrap();
    assert_eq!(info.normalization, ppcr::data::Normalization::imagenet());
    assert_eq!(model.classifier.weight.val().dims(), [512, 3]);

    // The flags need --pretrained.
    let output = ppcr([
        "train",
        "--data",
        data.to_str().unwrap(),
        "--epochs",
        "1",
        "--freeze-backbone-epochs",
        "1",
        "--out",
        folder.path().join("other").to_str().unwrap(),
    ]);
    assert_clean_failure(
        &output,
        &["freeze_backbone_epochs applies to pretrained weights"],
    );
}
