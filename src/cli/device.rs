//! Picking the compute device by name.

use burn::tensor::Device;

/// The device `name` names; `None` or `cpu` is burn's flex CPU backend.
pub fn parse_device(name: Option<&str>) -> anyhow::Result<Device> {
    match name.unwrap_or("cpu") {
        "cpu" | "flex" => Ok(Device::flex()),
        other => anyhow::bail!("unknown device '{other}'; this build supports: cpu"),
    }
}
