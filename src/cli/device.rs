//! Picking the compute device by name (`--device`, `--devices`).
//!
//! Names are parsed into a [`DeviceSpec`] in every build, so a typo and a backend this build
//! lacks give different, precise messages, and both are testable without a GPU. Only turning a
//! spec into a burn [`Device`] needs the backend's Cargo feature.

use std::fmt;

use burn::tensor::Device;
use clap::Args;

/// The `--device` option of every command that computes.
#[derive(Args, Debug, Clone)]
pub struct DeviceArgs {
    /// Compute device: cpu (burn's flex CPU backend), cuda[:N] (build with --features cuda),
    /// wgpu[:N] (Nth discrete GPU; also wgpu:integrated[:N], wgpu:cpu; build with --features
    /// wgpu), tch[:cuda:N] (build with --features tch).
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

impl DeviceArgs {
    /// The device the option names.
    pub fn device(&self) -> anyhow::Result<Device> {
        parse_device(Some(&self.device))
    }
}

/// Which wgpu adapter `wgpu[:...]` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WgpuAdapter {
    /// The best adapter wgpu finds (a high-power GPU first).
    Default,
    /// The Nth discrete GPU.
    Discrete(usize),
    /// The Nth integrated GPU.
    Integrated(usize),
    /// The Nth virtual GPU.
    Virtual(usize),
    /// wgpu's CPU adapter.
    Cpu,
}

/// A device name, parsed but not yet opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceSpec {
    /// burn's flex CPU backend (`cpu`, `flex`).
    Cpu,
    /// CUDA GPU by index (`cuda`, `cuda:N`).
    Cuda(usize),
    /// A wgpu adapter (`wgpu`, `wgpu:N`, `wgpu:integrated[:N]`, `wgpu:virtual[:N]`,
    /// `wgpu:cpu`).
    Wgpu(WgpuAdapter),
    /// LibTorch on the CPU (`tch`) or a CUDA GPU (`tch:cuda[:N]`).
    Tch(Option<usize>),
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceSpec::Cpu => write!(f, "cpu"),
            DeviceSpec::Cuda(index) => write!(f, "cuda:{index}"),
            DeviceSpec::Wgpu(WgpuAdapter::Default) => write!(f, "wgpu"),
            DeviceSpec::Wgpu(WgpuAdapter::Discrete(index)) => write!(f, "wgpu:{index}"),
            DeviceSpec::Wgpu(WgpuAdapter::Integrated(index)) => {
                write!(f, "wgpu:integrated:{index}")
            }
            DeviceSpec::Wgpu(WgpuAdapter::Virtual(index)) => write!(f, "wgpu:virtual:{index}"),
            DeviceSpec::Wgpu(WgpuAdapter::Cpu) => write!(f, "wgpu:cpu"),
            DeviceSpec::Tch(None) => write!(f, "tch"),
            DeviceSpec::Tch(Some(index)) => write!(f, "tch:cuda:{index}"),
        }
    }
}

/// The device names this build can open, for error messages.
pub fn supported_devices() -> String {
    [
        (true, "cpu"),
        (cfg!(feature = "cuda"), "cuda[:N]"),
        (cfg!(feature = "wgpu"), "wgpu[:N]"),
        (cfg!(feature = "tch"), "tch[:cuda:N]"),
    ]
    .iter()
    .filter(|(built, _)| *built)
    .map(|(_, name)| *name)
    .collect::<Vec<_>>()
    .join(", ")
}

/// The index in `text` (the part after `backend:`) of the device `name`.
fn parse_index(name: &str, text: &str) -> anyhow::Result<usize> {
    text.parse().map_err(|_| {
        anyhow::anyhow!("bad device index '{text}' in '{name}': expected a number, e.g. cuda:0")
    })
}

impl DeviceSpec {
    /// Parse a device name (case-insensitive): see [`DeviceArgs`] for the forms.
    pub fn parse(name: &str) -> anyhow::Result<Self> {
        let lower = name.trim().to_ascii_lowercase();
        let parts: Vec<&str> = lower.split(':').collect();
        let spec = match parts.as_slice() {
            ["cpu" | "flex"] => DeviceSpec::Cpu,
            ["cuda"] => DeviceSpec::Cuda(0),
            ["cuda", index] => DeviceSpec::Cuda(parse_index(name, index)?),
            ["wgpu"] => DeviceSpec::Wgpu(WgpuAdapter::Default),
            ["wgpu", "cpu"] => DeviceSpec::Wgpu(WgpuAdapter::Cpu),
            ["wgpu", "integrated"] => DeviceSpec::Wgpu(WgpuAdapter::Integrated(0)),
            ["wgpu", "integrated", index] => {
                DeviceSpec::Wgpu(WgpuAdapter::Integrated(parse_index(name, index)?))
            }
            ["wgpu", "virtual"] => DeviceSpec::Wgpu(WgpuAdapter::Virtual(0)),
            ["wgpu", "virtual", index] => {
                DeviceSpec::Wgpu(WgpuAdapter::Virtual(parse_index(name, index)?))
            }
            ["wgpu", index] => DeviceSpec::Wgpu(WgpuAdapter::Discrete(parse_index(name, index)?)),
            ["tch"] => DeviceSpec::Tch(None),
            ["tch", "cuda"] => DeviceSpec::Tch(Some(0)),
            ["tch", "cuda", index] => DeviceSpec::Tch(Some(parse_index(name, index)?)),
            ["cpu" | "flex", ..] => anyhow::bail!("'{name}': the cpu device takes no index"),
            _ => anyhow::bail!(
                "unknown device '{name}'; this build supports: {}",
                supported_devices()
            ),
        };
        Ok(spec)
    }

    /// Open the device, or say which Cargo feature the build lacks; a GPU device is tried out
    /// first (see [`usable`]).
    pub fn open(self) -> anyhow::Result<Device> {
        match self {
            DeviceSpec::Cpu => Ok(Device::flex()),
            DeviceSpec::Cuda(index) => {
                prepare_gpu_runtime()?;
                usable(self, cuda(index)?)
            }
            DeviceSpec::Wgpu(adapter) => {
                prepare_gpu_runtime()?;
                usable(self, wgpu(adapter)?)
            }
            DeviceSpec::Tch(index) => usable(self, tch(index)?),
        }
    }
}

/// `device` once a small computation on it has come back, or a clean error naming the device
/// and the backend's own reason. Without this, a missing driver library (no `libcuda.so`, no
/// Vulkan driver) or an index past the last GPU surfaces as panics on the backend's device
/// threads in the middle of the first training step.
fn usable(spec: DeviceSpec, device: Device) -> anyhow::Result<Device> {
    use burn::tensor::Tensor;
    let (outcome, panics) = super::panic_hook::quietly(|| {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            Tensor::<1>::from_floats([1.0, 2.0], &device)
                .sum()
                .try_into_data()
                .map_err(|error| error.to_string())
        }))
    });
    let reason = match outcome {
        Ok(Ok(_)) => return Ok(device),
        Ok(Err(error)) => panics.into_iter().next().unwrap_or(error),
        Err(_) => panics
            .into_iter()
            .next()
            .unwrap_or_else(|| "the backend failed".into()),
    };
    let reason = reason.lines().next().unwrap_or_default().to_string();
    anyhow::bail!("cannot use device {spec}: {reason}")
}

/// Before the first CubeCL device opens: keep compiled kernels and autotune results in the
/// kernel cache directory (see `ppcr::gpu`), and say on stderr while kernels compile.
#[cfg(any(feature = "cuda", feature = "wgpu"))]
fn prepare_gpu_runtime() -> anyhow::Result<()> {
    let dir = ppcr::gpu::kernel_cache_dir();
    ppcr::gpu::configure_runtime(&dir).map_err(anyhow::Error::msg)?;
    super::compile_notice::start(dir);
    Ok(())
}

/// Nothing to prepare in a build without CubeCL backends: opening the device fails with the
/// feature's name.
#[cfg(not(any(feature = "cuda", feature = "wgpu")))]
fn prepare_gpu_runtime() -> anyhow::Result<()> {
    Ok(())
}

/// The error for a backend this build was compiled without.
#[allow(dead_code)] // Unused in a build with every GPU feature.
fn missing(backend: &str, feature: &str) -> anyhow::Error {
    anyhow::anyhow!(
        "this build has no {backend} support; rebuild with `cargo build --release --features \
         {feature}` (this build supports: {})",
        supported_devices()
    )
}

#[cfg(feature = "cuda")]
fn cuda(index: usize) -> anyhow::Result<Device> {
    Ok(Device::cuda(index))
}

#[cfg(not(feature = "cuda"))]
fn cuda(_index: usize) -> anyhow::Result<Device> {
    Err(missing("CUDA", "cuda"))
}

#[cfg(feature = "wgpu")]
fn wgpu(adapter: WgpuAdapter) -> anyhow::Result<Device> {
    use burn::tensor::DeviceKind;
    let kind = match adapter {
        WgpuAdapter::Default => DeviceKind::DefaultDevice,
        WgpuAdapter::Discrete(index) => DeviceKind::DiscreteGpu(index),
        WgpuAdapter::Integrated(index) => DeviceKind::IntegratedGpu(index),
        WgpuAdapter::Virtual(index) => DeviceKind::VirtualGpu(index),
        WgpuAdapter::Cpu => DeviceKind::Cpu,
    };
    Ok(Device::wgpu(kind))
}

#[cfg(not(feature = "wgpu"))]
fn wgpu(_adapter: WgpuAdapter) -> anyhow::Result<Device> {
    Err(missing("wgpu", "wgpu"))
}

#[cfg(feature = "tch")]
#[allow(deprecated)] // burn 0.22 deprecates LibTorch but still ships it; the feature is opt-in.
fn tch(index: Option<usize>) -> anyhow::Result<Device> {
    Ok(match index {
        None => Device::libtorch(),
        Some(index) => Device::libtorch_cuda(index),
    })
}

#[cfg(not(feature = "tch"))]
fn tch(_index: Option<usize>) -> anyhow::Result<Device> {
    Err(missing("LibTorch", "tch"))
}

/// The device `name` names; `None` is the default, burn's flex CPU backend.
pub fn parse_device(name: Option<&str>) -> anyhow::Result<Device> {
    DeviceSpec::parse(name.unwrap_or("cpu"))?.open()
}

/// The devices `--devices` names, each checked and opened, in order: the first holds the model
/// and the optimizer, and every training batch is split across all of them (see
/// `ppcr::train::train_on`). A name may repeat: `cpu,cpu` runs the data-parallel path with two
/// threads on the CPU.
pub fn open_devices(names: &[String]) -> anyhow::Result<Vec<Device>> {
    if names.is_empty() {
        anyhow::bail!("--devices needs at least one device name");
    }
    let specs = names
        .iter()
        .map(|name| DeviceSpec::parse(name))
        .collect::<anyhow::Result<Vec<_>>>()?;
    specs.into_iter().map(DeviceSpec::open).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_to_their_devices() {
        let cases = [
            ("cpu", DeviceSpec::Cpu),
            ("flex", DeviceSpec::Cpu),
            (" CPU ", DeviceSpec::Cpu),
            ("cuda", DeviceSpec::Cuda(0)),
            ("cuda:1", DeviceSpec::Cuda(1)),
            ("CUDA:3", DeviceSpec::Cuda(3)),
            ("wgpu", DeviceSpec::Wgpu(WgpuAdapter::Default)),
            ("wgpu:2", DeviceSpec::Wgpu(WgpuAdapter::Discrete(2))),
            (
                "wgpu:integrated",
                DeviceSpec::Wgpu(WgpuAdapter::Integrated(0)),
            ),
            (
                "wgpu:integrated:1",
                DeviceSpec::Wgpu(WgpuAdapter::Integrated(1)),
            ),
            ("wgpu:virtual:4", DeviceSpec::Wgpu(WgpuAdapter::Virtual(4))),
            ("wgpu:cpu", DeviceSpec::Wgpu(WgpuAdapter::Cpu)),
            ("tch", DeviceSpec::Tch(None)),
            ("tch:cuda", DeviceSpec::Tch(Some(0))),
            ("tch:cuda:2", DeviceSpec::Tch(Some(2))),
        ];
        for (name, spec) in cases {
            assert_eq!(DeviceSpec::parse(name).unwrap(), spec, "{name}");
            // The canonical name parses back to the same device.
            assert_eq!(
                DeviceSpec::parse(&spec.to_string()).unwrap(),
                spec,
                "{name}"
            );
        }
    }

    #[test]
    fn bad_names_and_indices_are_refused_with_the_reason() {
        let message = |name: &str| DeviceSpec::parse(name).unwrap_err().to_string();
        for name in ["cuda:x", "cuda:-1", "cuda:", "wgpu:integrated:two"] {
            let text = message(name);
            assert!(text.contains("bad device index"), "{name}: {text}");
        }
        for name in ["gpu", "cuda:0:1", "metal", ""] {
            let text = message(name);
            assert!(text.contains("unknown device"), "{name}: {text}");
            assert!(text.contains("this build supports: cpu"), "{name}: {text}");
        }
        assert!(message("cpu:0").contains("takes no index"));
    }

    #[test]
    fn the_default_is_the_cpu() {
        assert_eq!(parse_device(None).unwrap(), Device::flex());
        assert_eq!(parse_device(Some("cpu")).unwrap(), Device::flex());
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn cuda_without_the_feature_says_how_to_rebuild() {
        let text = parse_device(Some("cuda:0")).unwrap_err().to_string();
        assert!(text.contains("this build has no CUDA support"), "{text}");
        assert!(
            text.contains("cargo build --release --features cuda"),
            "{text}"
        );
        assert!(text.contains("this build supports: cpu"), "{text}");
    }

    #[cfg(not(feature = "wgpu"))]
    #[test]
    fn wgpu_without_the_feature_says_how_to_rebuild() {
        let text = parse_device(Some("wgpu")).unwrap_err().to_string();
        assert!(text.contains("this build has no wgpu support"), "{text}");
        assert!(
            text.contains("cargo build --release --features wgpu"),
            "{text}"
        );
    }

    #[cfg(not(feature = "tch"))]
    #[test]
    fn tch_without_the_feature_says_how_to_rebuild() {
        let text = parse_device(Some("tch:cuda:0")).unwrap_err().to_string();
        assert!(
            text.contains("cargo build --release --features tch"),
            "{text}"
        );
    }

    #[test]
    fn devices_open_in_order_and_a_bad_name_is_reported_as_such() {
        let names = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(open_devices(&names(&["cpu", "cpu"])).unwrap().len(), 2);
        let text = open_devices(&names(&["cpu", "cuda:x"]))
            .unwrap_err()
            .to_string();
        assert!(text.contains("bad device index"), "{text}");
        assert!(open_devices(&[]).is_err());
    }
}
