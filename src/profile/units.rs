//! `ppcr profile`'s table: for each unit on one backbone, parameters and multiply-accumulates
//! (and their share over the plain backbone), and optionally forward and training-step
//! latency with ratios to the plain backbone measured in the same run.

use burn::tensor::Device;
use serde::Serialize;

use super::benches::{NetworkCase, network_bench};
use super::macs::{MacCount, count_macs};
use crate::attention::{AttentionConfig, AttentionKind};
use crate::models::{ModelError, ResNetConfig};
use crate::params::count_trainable;

/// One unit's cost on one backbone.
#[derive(Debug, Clone, Serialize)]
pub struct UnitProfile {
    /// The unit.
    pub attention: AttentionKind,
    /// Trainable parameters of backbone + unit.
    pub params: usize,
    /// Percent over the plain backbone's parameters.
    pub params_increase_percent: f64,
    /// Multiply-accumulates of one forward pass on one image.
    pub macs: MacCount,
    /// Percent over the plain backbone's MACs.
    pub macs_increase_percent: f64,
    /// Median inference forward time for the batch, ms (when timed).
    pub forward_ms: Option<f64>,
    /// `forward_ms / forward_ms(none)`.
    pub forward_ratio: Option<f64>,
    /// Median training-step time for the batch, ms (when timed).
    pub train_step_ms: Option<f64>,
    /// `train_step_ms / train_step_ms(none)`.
    pub train_step_ratio: Option<f64>,
    /// Bytes the backend's allocator holds after the timed runs, where it reports them (GPU
    /// backends' memory pools; the CPU backend does not).
    pub reserved_memory_bytes: Option<u64>,
}

/// Parameters and MACs of `case`'s backbone with each unit (the plain backbone first), and,
/// when `timing` is `Some((warmup, runs))`, latencies measured in the same run.
pub fn profile_units(
    case: &NetworkCase,
    classes: usize,
    units: &[AttentionKind],
    timing: Option<(usize, usize)>,
    device: &Device,
) -> Result<Vec<UnitProfile>, ModelError> {
    if timing.is_some() {
        case.validate()?;
    }
    let mut kinds = vec![AttentionKind::None];
    kinds.extend(units.iter().copied().filter(|k| *k != AttentionKind::None));
    let mut rows: Vec<UnitProfile> = Vec::with_capacity(kinds.len());
    for &kind in &kinds {
        let model = ResNetConfig::new(case.backbone, AttentionConfig::new(kind), classes)
            .with_in_channels(case.channels)
            .with_input_size(case.input)
            .init(device)?;
        let params = count_trainable(&model);
        let macs = count_macs(&model, case.input);
        let (base_params, base_macs) = rows
            .first()
            .map(|plain| (plain.params, plain.macs.total))
            .unwrap_or((params, macs.total));
        rows.push(UnitProfile {
            attention: kind,
            params,
            params_increase_percent: 100.0 * (params as f64 / base_params as f64 - 1.0),
            macs,
            macs_increase_percent: 100.0 * (macs.total as f64 / base_macs as f64 - 1.0),
            forward_ms: None,
            forward_ratio: None,
            train_step_ms: None,
            train_step_ratio: None,
            reserved_memory_bytes: None,
        });
    }
    if let Some((warmup, runs)) = timing {
        let timings = network_bench(case, &kinds, device, warmup, runs)?;
        for (row, timed) in rows.iter_mut().zip(timings) {
            debug_assert_eq!(row.attention, timed.attention);
            row.forward_ms = Some(timed.inference.median_ms);
            row.forward_ratio = Some(timed.inference_ratio);
            row.train_step_ms = Some(timed.train_step.median_ms);
            row.train_step_ratio = Some(timed.train_ratio);
            row.reserved_memory_bytes =
                device.memory_pool_usage().map(|usage| usage.bytes_reserved);
        }
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::Backbone;

    #[test]
    fn shares_are_relative_to_the_plain_backbone() {
        let case = NetworkCase {
            backbone: Backbone::ResNet20,
            input: 32,
            batch: 2,
            channels: 3,
        };
        let rows = profile_units(
            &case,
            10,
            &[AttentionKind::Ppcr, AttentionKind::SimAm],
            None,
            &Device::flex(),
        )
        .unwrap();
        assert_eq!(rows.len(), 3);
        assert_eq!(rows[0].attention, AttentionKind::None);
        assert_eq!(rows[0].params_increase_percent, 0.0);
        // PPCR: 60,480 weights over 269,722.
        let expected = 100.0 * 60_480.0 / 269_722.0;
        assert!((rows[1].params_increase_percent - expected).abs() < 1e-9);
        // SimAM has no parameters but does cost MACs.
        assert_eq!(rows[2].params, rows[0].params);
        assert!(rows[2].macs_increase_percent > 0.0);
        assert!(rows[1].forward_ms.is_none());
    }
}
