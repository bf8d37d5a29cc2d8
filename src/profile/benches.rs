//! The benchmark suites: the PPCR unit against a copy of its input (the memory-bandwidth
//! floor), every unit inside a ResNet against the plain ResNet, and end-to-end training
//! throughput of the default model.

use burn::module::{Module, Param};
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::{GradientsParams, ModuleOptimizer, SgdConfig};
use burn::tensor::{Device, Distribution, Int, Tensor, TensorData};
use serde::Serialize;

use super::timing::{Timing, median, time_median};
use crate::attention::{AttentionConfig, AttentionError, AttentionKind, Ppcr, PpcrConfig};
use crate::models::{Backbone, ModelError, ResNet, ResNetConfig};
use crate::params::count_trainable;

/// A feature-map shape `[B, C, H, W]` a unit is benchmarked at, and where it comes from.
#[derive(Debug, Clone, Serialize)]
pub struct UnitShape {
    /// Where the shape occurs, e.g. "resnet20 stage 1".
    pub label: String,
    /// `[B, C, H, W]`.
    pub shape: [usize; 4],
}

impl UnitShape {
    /// A shape the user asked for, labelled "custom".
    pub fn custom(shape: [usize; 4]) -> Self {
        UnitShape {
            label: "custom".into(),
            shape,
        }
    }

    /// Whether every unit of `kinds` (the identity aside) can be built for this shape with its
    /// default configuration, so a benchmark fails before it times anything, not halfway.
    pub fn check(&self, kinds: &[AttentionKind], device: &Device) -> Result<(), AttentionError> {
        let [batch, channels, height, width] = self.shape;
        if [batch, channels, height, width].contains(&0) {
            return Err(AttentionError::ShapeMismatch(format!(
                "benchmark shape {:?} ({}) has an empty dimension; every one of [B, C, H, W] \
                 must be at least 1",
                self.shape, self.label
            )));
        }
        for &kind in kinds.iter().filter(|&&kind| kind != AttentionKind::None) {
            AttentionConfig::new(kind)
                .init(channels, [height, width], device)
                .map_err(|error| {
                    AttentionError::ShapeMismatch(format!(
                        "{} cannot be benchmarked at {:?} ({}): {error}",
                        kind.name(),
                        self.shape,
                        self.label
                    ))
                })?;
        }
        Ok(())
    }
}

/// PPCR against a copy of its input at one shape.
#[derive(Debug, Clone, Serialize)]
pub struct UnitBench {
    /// The shape.
    pub shape: UnitShape,
    /// `x * 1` (read once, write once).
    pub copy: Timing,
    /// PPCR forward.
    pub forward: Timing,
    /// PPCR forward in the literal formulation (all `K` maps materialised), the reference the
    /// factorised forward is tested against; timed in turns with the forward after the other
    /// operations (see [`unit_bench`]).
    pub reference_forward: Timing,
    /// PPCR forward and backward (`y.backward()`: the gradient of `sum(y)`, seeded as ones of
    /// `y`'s shape without timing a reduction and its broadcast).
    pub forward_backward: Timing,
    /// Copy forward and backward (`(x * 1).backward()`), the same harness around a copy.
    pub copy_forward_backward: Timing,
    /// PPCR forward time / copy time (median of per-round ratios, as all ratios here).
    pub forward_ratio: f64,
    /// PPCR forward+backward time / copy time.
    pub forward_backward_ratio: f64,
    /// PPCR forward+backward time / copy forward+backward time: both under the same autodiff
    /// harness (gradient seed, gradient buffers), which the plain copy does not pay.
    pub forward_backward_harness_ratio: f64,
    /// Literal formulation's forward time / PPCR forward time, both from the literal's own
    /// rotation.
    pub literal_ratio: f64,
}

/// Each timed sample of the unit benchmark repeats its operation for at least this long and
/// keeps the mean: one call at the smallest shapes takes tens of microseconds, where a single
/// timing is mostly noise.
const UNIT_SAMPLE_MS: f64 = 10.0;

/// The stage shapes of ResNet-20 at 32 px (batch 64) and ResNet-18 at 224 px (batch 32).
pub fn unit_bench_shapes() -> Vec<UnitShape> {
    let mut shapes = Vec::new();
    for (stage, (channels, size)) in [(16, 32), (32, 16), (64, 8)].into_iter().enumerate() {
        shapes.push(UnitShape {
            label: format!("resnet20@32 stage {}", stage + 1),
            shape: [64, channels, size, size],
        });
    }
    for (stage, (channels, size)) in [(64, 56), (128, 28), (256, 14), (512, 7)]
        .into_iter()
        .enumerate()
    {
        shapes.push(UnitShape {
            label: format!("resnet18@224 stage {}", stage + 1),
            shape: [32, channels, size, size],
        });
    }
    shapes
}

fn sync(device: &Device) {
    device.sync().expect("device sync");
}

/// `operation` as a timed step: its result is waited for on `device`, then dropped, so the
/// step's time includes the work and the freeing of its buffers.
fn synced<'a, T>(device: &'a Device, operation: impl Fn() -> T + 'a) -> impl Fn() + 'a {
    move || {
        let result = operation();
        sync(device);
        drop(result);
    }
}

/// The tensors one shape of the unit benchmark runs on: the input and a PPCR unit with random
/// weights, plain and under autodiff.
struct UnitCase {
    x: Tensor<4>,
    ppcr: Ppcr,
    x_train: Tensor<4>,
    ppcr_train: Ppcr,
}

impl UnitCase {
    fn new(shape: [usize; 4], device: &Device, autodiff: &Device) -> Self {
        let [_, channels, height, width] = shape;
        let x = Tensor::<4>::random(shape, Distribution::Normal(0.0, 1.0), device);
        // Non-zero weights, so nothing is special-cased by zeros; the same values on both
        // devices.
        let weights =
            Tensor::<3>::random([15, height, width], Distribution::Normal(0.0, 0.1), device)
                .into_data();
        let make_ppcr = |on: &Device| {
            let mut ppcr = PpcrConfig::new(channels, [height, width])
                .init(on)
                .expect("unit_bench checks its shapes first");
            let tensor = Tensor::from_data(weights.clone(), on);
            ppcr.pixel_context_weights = Param::from_tensor(if on.is_autodiff() {
                tensor.require_grad()
            } else {
                tensor
            });
            ppcr
        };
        UnitCase {
            x_train: Tensor::<4>::from_data(x.to_data(), autodiff).require_grad(),
            x,
            ppcr: make_ppcr(device),
            ppcr_train: make_ppcr(autodiff),
        }
    }
}

/// Benchmark the PPCR unit at `shapes` on `device` (plain; autodiff is added for backward).
///
/// Copy, forward, forward+backward and copy forward+backward take turns as the networks of
/// [`network_bench`] do; each sample is the mean call time over a repeated batch of at least
/// [`UNIT_SAMPLE_MS`]. The literal formulation is timed against the forward afterwards, once
/// every shape's four operations are measured: in the same rotation, its dozens of
/// feature-map-sized temporaries slowed the operations that followed it (PPCR forward+backward
/// at the ResNet-20 stage-1 shape 2.2-2.5 ms with it, 1.5 ms without, on the 2-core build
/// machine), which a training step never runs.
///
/// Fails, before timing anything, when PPCR cannot be built at one of `shapes`.
pub fn unit_bench(
    shapes: &[UnitShape],
    device: &Device,
    warmup: usize,
    runs: usize,
) -> Result<Vec<UnitBench>, AttentionError> {
    for shape in shapes {
        shape.check(&[AttentionKind::Ppcr], device)?;
    }
    let autodiff = device.clone().autodiff();
    let main_samples: Vec<_> = shapes
        .iter()
        .map(|unit_shape| {
            let UnitCase {
                x,
                ppcr,
                x_train,
                ppcr_train,
            } = UnitCase::new(unit_shape.shape, device, &autodiff);
            let operations: [&dyn Fn(); 4] = [
                &synced(device, || x.clone().mul_scalar(1.0)),
                &synced(device, || ppcr.forward(x.clone())),
                &synced(&autodiff, || ppcr_train.forward(x_train.clone()).backward()),
                &synced(&autodiff, || x_train.clone().mul_scalar(1.0).backward()),
            ];
            time_in_turns(&operations, warmup, runs)
        })
        .collect();
    let literal_samples: Vec<_> = shapes
        .iter()
        .map(|unit_shape| {
            let UnitCase { x, ppcr, .. } = UnitCase::new(unit_shape.shape, device, &autodiff);
            let operations: [&dyn Fn(); 2] = [
                &synced(device, || ppcr.forward(x.clone())),
                &synced(device, || {
                    let attention = ppcr
                        .reference_attention_map(x.clone())
                        .expect("the unit was built for this shape");
                    x.clone() * attention
                }),
            ];
            time_in_turns(&operations, warmup, runs)
        })
        .collect();
    Ok(shapes
        .iter()
        .zip(main_samples)
        .zip(literal_samples)
        .map(|((unit_shape, main), literal)| {
            let [copy, forward, forward_backward, copy_forward_backward] =
                [0, 1, 2, 3].map(|index| &main[index]);
            let [paired_forward, literal] = [0, 1].map(|index| &literal[index]);
            UnitBench {
                shape: unit_shape.clone(),
                copy: Timing::from_samples(copy),
                forward: Timing::from_samples(forward),
                reference_forward: Timing::from_samples(literal),
                forward_backward: Timing::from_samples(forward_backward),
                copy_forward_backward: Timing::from_samples(copy_forward_backward),
                forward_ratio: median_ratio(forward, copy),
                forward_backward_ratio: median_ratio(forward_backward, copy),
                forward_backward_harness_ratio: median_ratio(
                    forward_backward,
                    copy_forward_backward,
                ),
                literal_ratio: median_ratio(literal, paired_forward),
            }
        })
        .collect())
}

/// One attention unit at one shape against a copy of its input.
#[derive(Debug, Clone, Serialize)]
pub struct ZooBench {
    /// The shape.
    pub shape: UnitShape,
    /// The unit.
    pub attention: AttentionKind,
    /// `x * 1` in the unit's rotation.
    pub copy: Timing,
    /// The unit's forward (inference).
    pub forward: Timing,
    /// The unit's forward and backward (`y.backward()`, as in [`unit_bench`]).
    pub forward_backward: Timing,
    /// Forward time / copy time (median of per-round ratios).
    pub forward_ratio: f64,
    /// Forward+backward time / copy time.
    pub forward_backward_ratio: f64,
}

/// Every unit of `kinds` (the identity skipped) at `shapes` with its default configuration:
/// forward and forward+backward against a copy of the input, so a unit's cost reads in copies
/// of the feature map whatever the shape.
///
/// Each unit takes turns with its own copy, in a rotation of its own: in one shared rotation,
/// the temporaries of the units composed of many tensor operations slowed the fused ones that
/// followed them (as the literal formulation did in [`unit_bench`]).
///
/// Fails, before timing anything, when a unit cannot be built at one of `shapes`.
pub fn zoo_bench(
    shapes: &[UnitShape],
    kinds: &[AttentionKind],
    device: &Device,
    warmup: usize,
    runs: usize,
) -> Result<Vec<ZooBench>, AttentionError> {
    for shape in shapes {
        shape.check(kinds, device)?;
    }
    let autodiff = device.clone().autodiff();
    let mut results = Vec::new();
    for unit_shape in shapes {
        let [_, channels, height, width] = unit_shape.shape;
        let x = Tensor::<4>::random(unit_shape.shape, Distribution::Normal(0.0, 1.0), device);
        let x_train = Tensor::<4>::from_data(x.to_data(), &autodiff).require_grad();
        for &kind in kinds.iter().filter(|&&kind| kind != AttentionKind::None) {
            let build = |on: &Device| {
                AttentionConfig::new(kind)
                    .init(channels, [height, width], on)
                    .expect("zoo_bench checks its shapes first")
            };
            let (unit, unit_train) = (build(device), build(&autodiff));
            let operations: [&dyn Fn(); 3] = [
                &synced(device, || x.clone().mul_scalar(1.0)),
                &synced(device, || unit.forward(x.clone())),
                &synced(&autodiff, || unit_train.forward(x_train.clone()).backward()),
            ];
            let samples = time_in_turns(&operations, warmup, runs);
            results.push(ZooBench {
                shape: unit_shape.clone(),
                attention: kind,
                copy: Timing::from_samples(&samples[0]),
                forward: Timing::from_samples(&samples[1]),
                forward_backward: Timing::from_samples(&samples[2]),
                forward_ratio: median_ratio(&samples[1], &samples[0]),
                forward_backward_ratio: median_ratio(&samples[2], &samples[0]),
            });
        }
    }
    Ok(results)
}

/// Per-call milliseconds of `operations` taking turns ([`round_robin`]), each sample the mean
/// over a batch of calls lasting at least [`UNIT_SAMPLE_MS`].
fn time_in_turns(operations: &[&dyn Fn()], warmup: usize, runs: usize) -> Vec<Vec<f64>> {
    let repeats: Vec<usize> = operations
        .iter()
        .map(|operation| {
            let once = time_median(warmup, 1, operation).median_ms;
            (UNIT_SAMPLE_MS / once.max(1e-6)).ceil().max(1.0) as usize
        })
        .collect();
    let mut samples = round_robin(operations.len(), warmup, runs, |index| {
        for _ in 0..repeats[index] {
            operations[index]();
        }
    });
    for (operation_samples, &repeat) in samples.iter_mut().zip(&repeats) {
        operation_samples
            .iter_mut()
            .for_each(|ms| *ms /= repeat as f64);
    }
    samples
}

/// Which network a network benchmark times.
#[derive(Debug, Clone, Serialize)]
pub struct NetworkCase {
    /// Backbone.
    pub backbone: Backbone,
    /// Input size.
    pub input: usize,
    /// Batch size.
    pub batch: usize,
    /// Input channels.
    pub channels: usize,
}

impl NetworkCase {
    /// The network with `kind` in every block and 10 classes, as the benchmarks build it.
    pub fn config(&self, kind: AttentionKind) -> ResNetConfig {
        ResNetConfig::new(self.backbone, AttentionConfig::new(kind), 10)
            .with_in_channels(self.channels)
            .with_input_size(self.input)
    }

    /// Whether the case can be built and timed at all (input size, channels, a batch), checked
    /// without building it.
    pub fn validate(&self) -> Result<(), ModelError> {
        if self.batch == 0 {
            return Err(ModelError::InvalidConfig(
                "the benchmark batch must be at least 1".into(),
            ));
        }
        self.config(AttentionKind::None).validate()
    }
}

/// One unit in one network against the same network without attention.
#[derive(Debug, Clone, Serialize)]
pub struct NetworkBench {
    /// The network.
    pub case: NetworkCase,
    /// The unit.
    pub attention: AttentionKind,
    /// Trainable parameters.
    pub params: usize,
    /// One SGD training step (forward, loss, backward, update).
    pub train_step: Timing,
    /// One inference forward pass.
    pub inference: Timing,
    /// `train_step / train_step(none)`, measured in the same run.
    pub train_ratio: f64,
    /// `inference / inference(none)`, measured in the same run.
    pub inference_ratio: f64,
}

/// Time a training step and an inference pass of `case` with every unit in `units` and without
/// attention.
///
/// The networks take turns: each timed round runs one step of every network, starting at a
/// different one each round, so a machine that slows down or speeds up during the benchmark
/// moves all of them alike. A ratio is the median over rounds of the unit's time over the plain
/// network's time in the same round.
pub fn network_bench(
    case: &NetworkCase,
    units: &[AttentionKind],
    device: &Device,
    warmup: usize,
    runs: usize,
) -> Result<Vec<NetworkBench>, ModelError> {
    case.validate()?;
    let autodiff = device.clone().autodiff();
    let mut kinds = vec![AttentionKind::None];
    kinds.extend(units.iter().copied().filter(|k| *k != AttentionKind::None));
    let images = Tensor::<4>::random(
        [case.batch, case.channels, case.input, case.input],
        Distribution::Normal(0.0, 1.0),
        device,
    );
    let labels: Vec<i64> = (0..case.batch as i64).map(|i| i % 10).collect();
    let train_images = Tensor::<4>::from_data(images.to_data(), &autodiff);
    let targets =
        Tensor::<1, Int>::from_data(TensorData::new(labels.clone(), [case.batch]), &autodiff);
    let mut networks = kinds
        .iter()
        .map(|&kind| {
            autodiff.seed(0);
            let model = case.config(kind).init(&autodiff)?;
            Ok((model, SgdConfig::new().init()))
        })
        .collect::<Result<Vec<_>, ModelError>>()?;
    let params: Vec<usize> = networks
        .iter()
        .map(|(model, _)| count_trainable(model))
        .collect();
    let train_step = round_robin(networks.len(), warmup, runs, |index| {
        let (model, optimizer) = &mut networks[index];
        training_step(model, optimizer, &train_images, &targets);
    });
    let inference_models: Vec<_> = networks.iter().map(|(model, _)| model.valid()).collect();
    let inference = round_robin(inference_models.len(), warmup, runs, |index| {
        let logits = inference_models[index].forward(images.clone());
        sync(device);
        drop(logits);
    });
    Ok(kinds
        .into_iter()
        .enumerate()
        .map(|(index, attention)| NetworkBench {
            case: case.clone(),
            attention,
            params: params[index],
            train_step: Timing::from_samples(&train_step[index]),
            inference: Timing::from_samples(&inference[index]),
            train_ratio: median_ratio(&train_step[index], &train_step[0]),
            inference_ratio: median_ratio(&inference[index], &inference[0]),
        })
        .collect())
}

/// One SGD step (learning rate 0.01, no momentum) of `model` on one batch: forward,
/// cross-entropy, backward, update, then a device sync.
fn training_step(
    model: &mut ResNet,
    optimizer: &mut ModuleOptimizer,
    images: &Tensor<4>,
    targets: &Tensor<1, Int>,
) {
    let device = images.device();
    let loss = CrossEntropyLossConfig::new()
        .init(&device)
        .forward(model.forward(images.clone()), targets.clone());
    let grads = GradientsParams::from_grads(loss.backward(), &*model);
    *model = optimizer.step(0.01, model.clone(), grads);
    sync(&device);
}

/// Only training steps of one network with one unit (or none), nothing else: what a profiler
/// attaches to, so every sample it takes falls inside a step. Returns the step time.
pub fn step_bench(
    case: &NetworkCase,
    kind: AttentionKind,
    device: &Device,
    warmup: usize,
    runs: usize,
) -> Result<Timing, ModelError> {
    case.validate()?;
    let autodiff = device.clone().autodiff();
    autodiff.seed(0);
    let images = Tensor::<4>::random(
        [case.batch, case.channels, case.input, case.input],
        Distribution::Normal(0.0, 1.0),
        &autodiff,
    );
    let labels: Vec<i64> = (0..case.batch as i64).map(|i| i % 10).collect();
    let targets = Tensor::<1, Int>::from_data(TensorData::new(labels, [case.batch]), &autodiff);
    let mut model = case.config(kind).init(&autodiff)?;
    let mut optimizer = SgdConfig::new().init();
    Ok(time_median(warmup, runs, || {
        training_step(&mut model, &mut optimizer, &images, &targets)
    }))
}

/// Milliseconds of `runs` timed rounds (after `warmup` untimed ones) of `operation` on each of
/// `count` contenders, one call each per round, the round's first contender rotating.
fn round_robin(
    count: usize,
    warmup: usize,
    runs: usize,
    mut operation: impl FnMut(usize),
) -> Vec<Vec<f64>> {
    let mut samples = vec![Vec::with_capacity(runs); count];
    for round in 0..warmup + runs.max(1) {
        for turn in 0..count {
            let index = (round + turn) % count;
            let started = std::time::Instant::now();
            operation(index);
            if round >= warmup {
                samples[index].push(started.elapsed().as_secs_f64() * 1e3);
            }
        }
    }
    samples
}

/// Median over rounds of `times[r] / baseline[r]`.
fn median_ratio(times: &[f64], baseline: &[f64]) -> f64 {
    let mut ratios: Vec<f64> = times.iter().zip(baseline).map(|(t, b)| t / b).collect();
    median(&mut ratios)
}

/// Training throughput of the default `ppcr train` model.
#[derive(Debug, Clone, Serialize)]
pub struct EndToEndBench {
    /// What was timed.
    pub description: String,
    /// Step time.
    pub step: Timing,
    /// Images per second at the median step time.
    pub images_per_second: f64,
}

/// Training images/s of ResNet-20 + PPCR on 28 px grey images, batch 32 (the default command's
/// model), batch assembly excluded.
pub fn end_to_end_bench(
    device: &Device,
    warmup: usize,
    runs: usize,
) -> Result<EndToEndBench, ModelError> {
    let case = NetworkCase {
        backbone: Backbone::ResNet20,
        input: 28,
        batch: 32,
        channels: 1,
    };
    let bench = network_bench(&case, &[AttentionKind::Ppcr], device, warmup, runs)?;
    let step = bench[1].train_step;
    Ok(EndToEndBench {
        description: "resnet20 + ppcr, 28x28x1, batch 32, SGD step".into(),
        step,
        images_per_second: case.batch as f64 / (step.median_ms / 1e3),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny_shape() -> Vec<UnitShape> {
        vec![UnitShape {
            label: "tiny".into(),
            shape: [2, 16, 4, 4],
        }]
    }

    #[test]
    fn the_zoo_bench_times_each_unit_but_the_identity_against_its_own_copy() {
        let kinds = [AttentionKind::None, AttentionKind::Se, AttentionKind::Ppcr];
        let results = zoo_bench(&tiny_shape(), &kinds, &Device::default(), 0, 1).unwrap();
        let timed: Vec<_> = results.iter().map(|r| r.attention).collect();
        assert_eq!(timed, [AttentionKind::Se, AttentionKind::Ppcr]);
        for r in &results {
            for timing in [&r.copy, &r.forward, &r.forward_backward] {
                assert!(timing.median_ms > 0.0, "{:?}", r.attention);
            }
            let expected = r.forward_backward.median_ms / r.copy.median_ms;
            assert!((r.forward_backward_ratio - expected).abs() <= 1e-9 * expected);
        }
    }

    #[test]
    fn the_unit_bench_pairs_the_literal_formulation_with_its_own_forward() {
        let results = unit_bench(&tiny_shape(), &Device::default(), 0, 1).unwrap();
        assert_eq!(results.len(), 1);
        let r = &results[0];
        assert!(r.reference_forward.median_ms > 0.0 && r.copy_forward_backward.median_ms > 0.0);
        // One round: each ratio is the quotient of that round's two samples.
        let expected = r.forward.median_ms / r.copy.median_ms;
        assert!((r.forward_ratio - expected).abs() <= 1e-9 * expected);
        assert!(r.literal_ratio.is_finite() && r.literal_ratio > 0.0);
    }
}
