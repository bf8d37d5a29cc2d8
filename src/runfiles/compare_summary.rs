//! `compare.json`: the summary `ppcr compare` writes of a grid of runs (units x seeds), which
//! `ppcr report` reads back. A number that is undefined (an AUC with one class in the test
//! split, the spread of one value) is written as `null` and read back as NaN.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Deserializer, Serialize};

use super::RunFileError;
use super::error::{read_json, write_file};
use crate::attention::AttentionKind;

/// `null` in the file (how serde_json writes NaN) reads as NaN.
fn nan_if_null<'de, D: Deserializer<'de>>(deserializer: D) -> Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(deserializer)?.unwrap_or(f64::NAN))
}

/// Each `null` of the list reads as NaN.
fn nans_if_null<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<f64>, D::Error> {
    let values = Vec::<Option<f64>>::deserialize(deserializer)?;
    Ok(values.into_iter().map(|v| v.unwrap_or(f64::NAN)).collect())
}

/// Mean, sample standard deviation and the values over seeds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricStats {
    /// Mean.
    #[serde(deserialize_with = "nan_if_null")]
    pub mean: f64,
    /// Sample standard deviation (n - 1; 0 for one value).
    #[serde(deserialize_with = "nan_if_null")]
    pub std: f64,
    /// The values, by seed.
    #[serde(deserialize_with = "nans_if_null")]
    pub values: Vec<f64>,
}

impl MetricStats {
    /// Mean and sample standard deviation of `values`.
    pub fn of(values: Vec<f64>) -> Self {
        let n = values.len() as f64;
        let mean = values.iter().sum::<f64>() / n.max(1.0);
        let std = if values.len() > 1 {
            (values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt()
        } else {
            0.0
        };
        MetricStats { mean, std, values }
    }
}

/// One unit's row of the table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UnitSummary {
    /// The unit.
    pub attention: AttentionKind,
    /// Finished runs (seeds).
    pub runs: usize,
    /// Trainable parameters.
    pub params: usize,
    /// Multiply-accumulates of one forward pass on one image.
    pub macs: u64,
    /// Training wall time per run, seconds.
    pub train_seconds: MetricStats,
    /// Test metrics, by their name in `metrics.json` (`accuracy`, `auc_macro`, ...).
    pub metrics: BTreeMap<String, MetricStats>,
    /// Seeds of the finished runs, in the order of the values.
    pub seeds: Vec<u64>,
}

/// One unit against another on one metric, over the seeds both finished.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PairedComparison {
    /// The unit compared (PPCR).
    pub candidate: AttentionKind,
    /// The unit it is compared against.
    pub baseline: AttentionKind,
    /// The metric.
    pub metric: String,
    /// Mean over seeds of candidate minus baseline.
    #[serde(deserialize_with = "nan_if_null")]
    pub mean_difference: f64,
    /// Two-sided paired t-test p-value; `None` with fewer than two seeds or no spread.
    pub p_value: Option<f64>,
    /// Seeds paired.
    pub seeds: usize,
}

/// `compare.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CompareSummary {
    /// The data compared on.
    pub data: String,
    /// Seeds of the grid.
    pub seeds: Vec<u64>,
    /// Units of the grid.
    pub units: Vec<AttentionKind>,
    /// Runs of the grid not finished yet.
    pub missing_runs: usize,
    /// One row per unit with at least one finished run.
    pub rows: Vec<UnitSummary>,
    /// PPCR against every other unit (empty when PPCR is not in the grid).
    pub paired: Vec<PairedComparison>,
    /// The training settings every run of the grid shares, as each run's `config.toml` holds
    /// them, without the two that vary by run (`attention`, `seed`); empty in a `compare.json`
    /// written before they were recorded.
    #[serde(default)]
    pub settings: toml::Table,
}

impl CompareSummary {
    /// The file's name in a comparison folder.
    pub const FILE_NAME: &str = "compare.json";

    /// Read `compare.json` of the comparison folder `root`.
    pub fn read(root: &Path) -> Result<Self, RunFileError> {
        read_json(&root.join(Self::FILE_NAME))
    }

    /// Write it into the comparison folder `root`, atomically.
    pub fn write(&self, root: &Path) -> Result<(), RunFileError> {
        write_file(
            &root.join(Self::FILE_NAME),
            &serde_json::to_vec_pretty(self).expect("summary serialises"),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_use_the_sample_standard_deviation() {
        let stats = MetricStats::of(vec![1.0, 2.0, 3.0, 4.0]);
        assert_eq!(stats.mean, 2.5);
        assert!((stats.std - (5.0f64 / 3.0).sqrt()).abs() < 1e-12);
        assert_eq!(MetricStats::of(vec![7.0]).std, 0.0);
    }

    #[test]
    fn undefined_numbers_are_written_as_null_and_read_back_as_nan() {
        let dir = tempfile::tempdir().unwrap();
        let auc = MetricStats::of(vec![f64::NAN, 0.75]);
        let summary = CompareSummary {
            data: "breastmnist".into(),
            seeds: vec![0, 1],
            units: vec![AttentionKind::None, AttentionKind::Ppcr],
            missing_runs: 2,
            rows: vec![UnitSummary {
                attention: AttentionKind::Ppcr,
                runs: 2,
                params: 10,
                macs: 20,
                train_seconds: MetricStats::of(vec![1.0, 3.0]),
                metrics: BTreeMap::from([("auc_macro".to_string(), auc)]),
                seeds: vec![0, 1],
            }],
            paired: vec![],
            settings: toml::Table::new(),
        };
        summary.write(dir.path()).unwrap();
        let text = std::fs::read_to_string(dir.path().join("compare.json")).unwrap();
        assert!(
            text.contains("\"mean\": null") && text.contains("\"ppcr\""),
            "{text}"
        );
        let read = CompareSummary::read(dir.path()).unwrap();
        let stats = &read.rows[0].metrics["auc_macro"];
        assert!(stats.mean.is_nan() && stats.std.is_nan() && stats.values[0].is_nan());
        assert_eq!(stats.values[1], 0.75);
        assert_eq!(read.rows[0].train_seconds, summary.rows[0].train_seconds);
        assert_eq!((read.units, read.missing_runs), (summary.units, 2));
    }
}
