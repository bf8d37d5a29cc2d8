//! Mixed precision (`--precision f16|bf16`): the backbone's convolutions in a 16-bit type with
//! the weights in `f32`, against the same network in `f32`. The CPU backend refuses it for
//! training (its kernels are `f32`), but its `f16` and `bf16` operations run the same mechanism
//! (the casts, autodiff through them), so the values are checked here; on a GPU the same code
//! runs on CubeCL's 16-bit kernels.

mod common;

use burn::module::{Module, ModuleVisitor, Param};
use burn::nn::PaddingConfig2d;
use burn::nn::conv::Conv2dConfig;
use burn::optim::GradientsParams;
use burn::tensor::{DType, Device, FloatDType, Tensor, TensorData};
use common::{assert_clean_failure, ppcr, tiny_train_args};
use ppcr::attention::{AttentionConfig, AttentionKind};
use ppcr::models::autocast::with_convolutions_in;
use ppcr::models::{Backbone, ResNet, ResNetConfig, layers};

/// Draws every parameter's initial values (burn draws them on first use).
struct Draw;

impl ModuleVisitor for Draw {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let _ = param.val();
    }
}

/// The same ResNet-20 + PPCR every time: the backend's one generator is seeded and drawn from
/// while no other test of this file can draw from it.
fn model(device: &Device) -> ResNet {
    static GENERATOR: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _turn = GENERATOR
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    device.seed(7);
    let model = ResNetConfig::new(
        Backbone::ResNet20,
        AttentionConfig::new(AttentionKind::Ppcr),
        3,
    )
    .with_in_channels(1)
    .with_input_size(16)
    .init(device)
    .unwrap();
    model.visit(&mut Draw);
    model
}

fn images(device: &Device) -> Tensor<4> {
    let values: Vec<f32> = (0..4 * 16 * 16)
        .map(|i| ((i * 37 % 101) as f32 / 50.0) - 1.0)
        .collect();
    Tensor::from_data(TensorData::new(values, [4, 1, 16, 16]), device)
}

fn host(tensor: Tensor<2>) -> Vec<f32> {
    tensor
        .into_data()
        .convert::<f32>()
        .try_to_vec::<f32>()
        .unwrap()
}

/// Every parameter gradient, in visiting order, with its type.
struct Collect<'a> {
    grads: &'a GradientsParams,
    found: Vec<(Vec<f32>, FloatDType)>,
}

impl ModuleVisitor for Collect<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if let Some(grad) = self.grads.get::<D>(param.id) {
            let dtype = grad.dtype().into();
            let values = grad
                .into_data()
                .convert::<f32>()
                .try_to_vec::<f32>()
                .unwrap();
            self.found.push((values, dtype));
        }
    }
}

/// Logits and parameter gradients of `sum(logits * r)` with the convolutions in `dtype`.
fn logits_and_gradients(
    model: &ResNet,
    dtype: Option<FloatDType>,
) -> (Vec<f32>, Vec<(Vec<f32>, FloatDType)>) {
    let device = Device::flex().autodiff();
    let logits = with_convolutions_in(dtype, || model.forward(images(&device)));
    let weights: Vec<f32> = (0..12).map(|i| (i as f32 - 5.5) / 4.0).collect();
    let weights = Tensor::<2>::from_data(TensorData::new(weights, [4, 3]), &device);
    let grads = GradientsParams::from_grads((logits.clone() * weights).sum().backward(), model);
    let mut collect = Collect {
        grads: &grads,
        found: Vec::new(),
    };
    model.visit(&mut collect);
    (host(logits), collect.found)
}

fn relative_difference(a: &[f32], b: &[f32]) -> f64 {
    let norm = |v: &[f32]| v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let difference: Vec<f32> = a.iter().zip(b).map(|(x, y)| x - y).collect();
    norm(&difference) / norm(b).max(1e-12)
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot = |u: &[f32], v: &[f32]| {
        u.iter()
            .zip(v)
            .map(|(x, y)| *x as f64 * *y as f64)
            .sum::<f64>()
    };
    dot(a, b) / (dot(a, a) * dot(b, b)).sqrt().max(1e-30)
}

/// One 3x3 convolution's output, weight gradient and input gradient on `device` (autodiff),
/// with the convolution in `dtype`.
fn one_convolution(device: &Device, dtype: Option<FloatDType>) -> [Vec<f32>; 3] {
    let pattern = |count: usize, a: usize, b: usize| -> Vec<f32> {
        (0..count)
            .map(|i| ((i * a % b) as f32 / (b / 2) as f32) - 1.0)
            .collect()
    };
    let mut conv = Conv2dConfig::new([16, 16], [3, 3])
        .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
        .with_bias(false)
        .init(device);
    let weight = TensorData::new(pattern(16 * 16 * 9, 29, 89), [16, 16, 3, 3]);
    conv.weight = Param::from_tensor(Tensor::from_data(weight, device).mul_scalar(0.1));
    let shape = [4, 16, 16, 16];
    let count = shape.iter().product::<usize>();
    let x = Tensor::<4>::from_data(TensorData::new(pattern(count, 37, 101), shape), device)
        .require_grad();
    let r = Tensor::<4>::from_data(TensorData::new(pattern(count, 53, 97), shape), device);
    let y = with_convolutions_in(dtype, || layers::conv2d(&conv, x.clone()));
    assert_eq!(y.dtype(), DType::F32, "the output is cast back");
    let grads = (y.clone() * r).sum().backward();
    let weight_grad = conv.weight.grad(&grads).unwrap();
    let input_grad = x.grad(&grads).unwrap();
    assert_eq!(weight_grad.dtype(), DType::F32);
    assert_eq!(input_grad.dtype(), DType::F32);
    [y.inner(), weight_grad, input_grad].map(|t| t.into_data().try_to_vec::<f32>().unwrap())
}

/// Each value is rounded to 16 bits once or twice (unit roundoff 2^-11 for f16, 2^-8 for
/// bf16); the CPU backend's f16 product also sums in f16, its bf16 product in f32.
fn assert_one_convolution_matches_f32(device: &Device, dtype: FloatDType) {
    let reference = one_convolution(device, None);
    for (what, (ours, theirs)) in ["output", "weight gradient", "input gradient"]
        .iter()
        .zip(one_convolution(device, Some(dtype)).iter().zip(&reference))
    {
        let difference = relative_difference(ours, theirs);
        assert!(
            difference > 0.0 && difference <= 1e-2,
            "{dtype:?} {what}: relative difference {difference}"
        );
    }
}

#[test]
fn one_convolution_in_half_precision_matches_f32_within_its_rounding() {
    let device = Device::flex().autodiff();
    for dtype in [FloatDType::F16, FloatDType::BF16] {
        assert_one_convolution_matches_f32(&device, dtype);
    }
}

#[test]
fn a_network_with_half_precision_convolutions_matches_f32() {
    let device = Device::flex().autodiff();
    let model = model(&device);
    let (reference_logits, reference_grads) = logits_and_gradients(&model, None);
    assert!(!reference_grads.is_empty());
    for (dtype, tolerance) in [(FloatDType::F16, 2e-3), (FloatDType::BF16, 2e-2)] {
        let (logits, grads) = logits_and_gradients(&model, Some(dtype));
        let largest = reference_logits.iter().fold(0f32, |m, v| m.max(v.abs()));
        let worst = logits
            .iter()
            .zip(&reference_logits)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(
            (worst / largest) as f64 <= tolerance && worst > 0.0,
            "{dtype:?} logits: {logits:?} against {reference_logits:?}"
        );
        assert_eq!(grads.len(), reference_grads.len(), "{dtype:?}");
        for (index, ((grad, grad_dtype), (reference, _))) in
            grads.iter().zip(&reference_grads).enumerate()
        {
            assert_eq!(*grad_dtype, FloatDType::F32, "{dtype:?} gradient {index}");
            assert!(
                grad.iter().all(|v| v.is_finite()),
                "{dtype:?} gradient {index}"
            );
            // Rounding at 19 convolutions compounds towards the input, through BatchNorms
            // over 4 images: the stem's gradient differs from f32's by 11% (f16) and 24%
            // (bf16) here, the classifier's by 0.15% and 0.8%. Its direction holds.
            let agreement = cosine(grad, reference);
            assert!(
                agreement >= 0.9,
                "{dtype:?} gradient {index}: cosine {agreement} with f32's"
            );
        }
    }
}

#[test]
fn outside_the_scope_the_network_computes_in_f32_bit_for_bit() {
    let device = Device::flex().autodiff();
    let model = model(&device);
    let before = logits_and_gradients(&model, None);
    let _ = logits_and_gradients(&model, Some(FloatDType::F16));
    let after = logits_and_gradients(&model, None);
    // BatchNorm's running statistics moved, but a training-mode forward does not read them.
    assert_eq!(before.0, after.0);
}

#[test]
fn training_in_half_precision_is_refused_on_the_cpu_backend() {
    for precision in ["f16", "bf16"] {
        let folder = tempfile::tempdir().unwrap();
        let run = folder.path().join("run");
        let mut args = tiny_train_args(&run, 1);
        args.extend(["--precision".into(), precision.into()]);
        assert_clean_failure(
            &ppcr(args),
            &[
                &format!("--precision {precision} is for GPUs"),
                "trains in f32",
            ],
        );
        assert!(!run.exists(), "a refused run left {}", run.display());
    }
    let folder = tempfile::tempdir().unwrap();
    let mut args = tiny_train_args(&folder.path().join("run"), 1);
    args.extend(["--precision".into(), "f8".into()]);
    assert_clean_failure(&ppcr(args), &["unknown precision 'f8'", "f16", "bf16"]);
}

#[test]
fn the_bench_takes_a_precision_for_its_network_suites_on_a_gpu_only() {
    assert_clean_failure(
        &ppcr(["bench", "--suite", "conv", "--precision", "f16"]),
        &[
            "--precision: --suite conv does not use it",
            "network, end-to-end, step",
        ],
    );
    assert_clean_failure(
        &ppcr(["bench", "--suite", "step", "--precision", "bf16"]),
        &["--precision bf16 is for GPUs"],
    );
}

/// On wgpu's CPU adapter (lavapipe, as CI runs the GPU code): each 16-bit type the adapter
/// supports trains against f32 as on the CPU backend; one it lacks is refused by name.
#[cfg(feature = "wgpu")]
mod on_wgpu {
    use super::*;
    use burn::tensor::DeviceKind;
    use ppcr::train::{Precision, unsupported_on};

    fn lavapipe() -> Option<Device> {
        let device = Device::wgpu(DeviceKind::Cpu);
        let probe = std::panic::catch_unwind(|| {
            Tensor::<1>::from_floats([1.0, 2.0], &device)
                .sum()
                .into_scalar::<f32>()
        });
        if probe.ok() == Some(3.0) {
            return Some(device);
        }
        common::skip("no wgpu CPU adapter (install Mesa's Vulkan driver: mesa-vulkan-drivers)");
        None
    }

    #[test]
    fn half_precision_on_wgpu_matches_f32_or_is_refused_by_name() {
        let Some(device) = lavapipe() else { return };
        let training = device.clone().autodiff();
        for precision in [Precision::F16, Precision::Bf16] {
            let dtype = precision.convolution_dtype().unwrap();
            if device.supports_dtype(dtype) {
                assert_eq!(unsupported_on(precision, &training), None);
                assert_one_convolution_matches_f32(&training, dtype);
                eprintln!("{precision} on lavapipe: one convolution matches f32");
            } else {
                let why = unsupported_on(precision, &training).expect("refused");
                assert!(why.contains("does not support"), "{why}");
                eprintln!("{precision} on lavapipe: refused ({why})");
            }
        }
    }

    #[test]
    fn training_and_the_step_bench_run_in_f16_on_wgpu() {
        let Some(device) = lavapipe() else { return };
        let folder = tempfile::tempdir().unwrap();
        let run = folder.path().join("run");
        let mut args = tiny_train_args(&run, 1);
        args.extend(["--device", "wgpu:cpu", "--precision", "f16"].map(String::from));
        let output = ppcr(args);
        if !device.supports_dtype(FloatDType::F16) {
            assert_clean_failure(&output, &["--precision f16", "does not support"]);
            return;
        }
        common::assert_success(&output);
        let bench = ppcr([
            "bench",
            "--suite",
            "step",
            "--device",
            "wgpu:cpu",
            "--precision",
            "f16",
            "--input",
            "16",
            "--batch",
            "4",
            "--runs",
            "1",
            "--warmup",
            "0",
        ]);
        common::assert_success(&bench);
        assert!(
            common::stdout(&bench).contains("convolutions in F16"),
            "{}",
            common::stdout(&bench)
        );
        let state = run
            .join("checkpoints")
            .join("epoch-0001")
            .join("state.json");
        let state = std::fs::read_to_string(state).unwrap();
        let state: serde_json::Value = serde_json::from_str(&state).unwrap();
        let scale = state["loss_scale"]["scale"].as_f64().expect("a loss scale");
        assert!((1.0..=65536.0).contains(&scale), "{state}");
        let loss = state["history"][0]["train_loss"]
            .as_f64()
            .expect("a training loss");
        assert!(loss.is_finite() && loss > 0.0, "{state}");
    }
}
