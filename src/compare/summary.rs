//! The comparison table: mean +- standard deviation over seeds of each unit's test metrics,
//! parameters, MACs and training time, and a paired comparison of PPCR against every other
//! unit (mean difference over seeds and a two-sided paired t-test, Student 1908).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use burn::tensor::Device;
use statrs::distribution::{ContinuousCDF, StudentsT};

use super::{CompareError, CompareRun, RunStatus};
use crate::attention::AttentionKind;
use crate::profile::count_macs;
use crate::runfiles::{
    CompareSummary, MetricStats, PairedComparison, RunDir, RunFileError, RunMetrics, UnitSummary,
    write_atomic,
};

/// The test metrics the table reports, as named in `metrics.json`.
pub const SUMMARY_METRICS: [&str; 6] = [
    "accuracy",
    "balanced_accuracy",
    "auc_macro",
    "f1_macro",
    "kappa",
    "ece",
];

/// Two-sided p-value of a paired t-test on `differences` (`None` with fewer than two values or
/// all differences equal).
pub fn paired_t_test(differences: &[f64]) -> Option<f64> {
    let stats = MetricStats::of(differences.to_vec());
    let n = differences.len();
    if n < 2 || stats.std == 0.0 {
        return None;
    }
    let t = stats.mean / (stats.std / (n as f64).sqrt());
    let distribution = StudentsT::new(0.0, 1.0, (n - 1) as f64).ok()?;
    Some(2.0 * (1.0 - distribution.cdf(t.abs())))
}

/// What one finished run contributes.
struct FinishedRun {
    attention: AttentionKind,
    seed: u64,
    params: usize,
    macs: u64,
    train_seconds: f64,
    metrics: RunMetrics,
}

fn read_run(run: &CompareRun) -> Result<FinishedRun, CompareError> {
    let info = RunDir::open(&run.dir)?.read_run_info()?;
    let metrics = RunMetrics::read(&run.dir, info.class_names.len())?;
    // The model is built only to count its multiply-accumulates: the CPU always exists and this
    // needs no accelerator, whichever device the runs trained on.
    let model = info
        .model
        .init(&Device::flex())
        .map_err(|e| CompareError::Train(e.into()))?;
    Ok(FinishedRun {
        attention: run.attention,
        seed: run.seed,
        params: metrics.params,
        macs: count_macs(&model, info.model.input_size).total,
        train_seconds: metrics.train_seconds.unwrap_or(f64::NAN),
        metrics,
    })
}

fn metric(run: &FinishedRun, name: &str) -> f64 {
    run.metrics.test_metric(name)
}

/// Summarise the finished runs of `runs` (the whole grid).
pub fn summarise(
    data: &str,
    units: &[AttentionKind],
    seeds: &[u64],
    runs: &[CompareRun],
) -> Result<CompareSummary, CompareError> {
    let finished: Vec<FinishedRun> = runs
        .iter()
        .filter(|run| run.status() == RunStatus::Finished)
        .map(read_run)
        .collect::<Result<_, _>>()?;
    let rows: Vec<UnitSummary> = units
        .iter()
        .filter_map(|&unit| {
            let mine: Vec<&FinishedRun> = finished.iter().filter(|r| r.attention == unit).collect();
            let first = mine.first()?;
            Some(UnitSummary {
                attention: unit,
                runs: mine.len(),
                params: first.params,
                macs: first.macs,
                train_seconds: MetricStats::of(mine.iter().map(|r| r.train_seconds).collect()),
                metrics: SUMMARY_METRICS
                    .iter()
                    .map(|&name| {
                        let values = mine.iter().map(|r| metric(r, name)).collect();
                        (name.to_string(), MetricStats::of(values))
                    })
                    .collect(),
                seeds: mine.iter().map(|r| r.seed).collect(),
            })
        })
        .collect();
    let mut paired = Vec::new();
    let reference: Vec<&FinishedRun> = finished
        .iter()
        .filter(|r| r.attention == AttentionKind::Ppcr)
        .collect();
    if !reference.is_empty() {
        for &baseline in units.iter().filter(|&&u| u != AttentionKind::Ppcr) {
            for name in SUMMARY_METRICS {
                let differences: Vec<f64> = reference
                    .iter()
                    .filter_map(|ppcr| {
                        finished
                            .iter()
                            .find(|r| r.attention == baseline && r.seed == ppcr.seed)
                            .map(|other| metric(ppcr, name) - metric(other, name))
                    })
                    .filter(|d| d.is_finite())
                    .collect();
                if differences.is_empty() {
                    continue;
                }
                paired.push(PairedComparison {
                    candidate: AttentionKind::Ppcr,
                    baseline,
                    metric: name.to_string(),
                    mean_difference: differences.iter().sum::<f64>() / differences.len() as f64,
                    p_value: paired_t_test(&differences),
                    seeds: differences.len(),
                });
            }
        }
    }
    Ok(CompareSummary {
        data: data.to_string(),
        seeds: seeds.to_vec(),
        units: units.to_vec(),
        missing_runs: runs.len() - finished.len(),
        rows,
        paired,
        settings: toml::Table::new(),
    })
}

fn mean_std(stats: &MetricStats) -> String {
    format!("{:.4} ± {:.4}", stats.mean, stats.std)
}

/// The Markdown table.
pub fn markdown(summary: &CompareSummary) -> String {
    let mut text = format!(
        "# Attention units compared on {}\n\nTest metrics, mean ± standard deviation over seeds {:?}{}.\n\n",
        summary.data,
        summary.seeds,
        if summary.missing_runs > 0 {
            format!(" ({} runs not finished yet)", summary.missing_runs)
        } else {
            String::new()
        }
    );
    text.push_str("| unit | runs | params | MACs | ");
    text.push_str(&SUMMARY_METRICS.join(" | "));
    text.push_str(" | train s |\n|---|---|---|---|");
    text.push_str(&"---|".repeat(SUMMARY_METRICS.len() + 1));
    text.push('\n');
    for row in &summary.rows {
        let _ = write!(
            text,
            "| {} | {} | {} | {:.2}M |",
            row.attention,
            row.runs,
            row.params,
            row.macs as f64 / 1e6
        );
        for name in SUMMARY_METRICS {
            let _ = write!(text, " {} |", mean_std(&row.metrics[name]));
        }
        let _ = writeln!(
            text,
            " {:.1} ± {:.1} |",
            row.train_seconds.mean, row.train_seconds.std
        );
    }
    if !summary.paired.is_empty() {
        text.push_str(
            "\nPPCR minus each unit, paired over seeds (two-sided paired t-test):\n\n\
             | baseline | metric | mean difference | p-value | seeds |\n|---|---|---|---|---|\n",
        );
        for pair in &summary.paired {
            let p = pair
                .p_value
                .map(|p| format!("{p:.3}"))
                .unwrap_or_else(|| "n/a".into());
            let _ = writeln!(
                text,
                "| {} | {} | {:+.4} | {} | {} |",
                pair.baseline, pair.metric, pair.mean_difference, p, pair.seeds
            );
        }
    }
    text
}

/// The CSV table: one row per unit, mean and std columns per metric.
pub fn csv_table(summary: &CompareSummary) -> Vec<u8> {
    let mut writer = csv::Writer::from_writer(Vec::new());
    let mut header = vec!["unit", "runs", "params", "macs"]
        .into_iter()
        .map(String::from)
        .collect::<Vec<_>>();
    for name in SUMMARY_METRICS.iter().chain(["train_seconds"].iter()) {
        header.push(format!("{name}_mean"));
        header.push(format!("{name}_std"));
    }
    writer.write_record(&header).expect("in-memory writer");
    for row in &summary.rows {
        let mut record = vec![
            row.attention.to_string(),
            row.runs.to_string(),
            row.params.to_string(),
            row.macs.to_string(),
        ];
        for stats in SUMMARY_METRICS
            .iter()
            .map(|name| &row.metrics[*name])
            .chain([&row.train_seconds])
        {
            record.push(stats.mean.to_string());
            record.push(stats.std.to_string());
        }
        writer.write_record(&record).expect("in-memory writer");
    }
    writer.into_inner().expect("in-memory writer")
}

/// Write `compare.json`, `compare.md` and `compare.csv` into `out` (atomically), returning
/// the Markdown path.
pub fn write_summary(out: &Path, summary: &CompareSummary) -> Result<PathBuf, CompareError> {
    let write = |name: &str, bytes: &[u8]| {
        let path = out.join(name);
        write_atomic(&path, bytes).map_err(|e| RunFileError::write(&path, e))
    };
    summary.write(out)?;
    write("compare.csv", &csv_table(summary))?;
    write("compare.md", markdown(summary).as_bytes())?;
    Ok(out.join("compare.md"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paired_t_test_matches_a_hand_computed_case() {
        // Differences 1, 2, 3: mean 2, sd 1, t = 2 / (1 / sqrt 3) = 3.4641, df 2.
        // Two-sided p for t = 3.4641 with 2 df: 2 * (1 - F) = 1 - t / sqrt(t^2 + 2) = 0.07418.
        let p = paired_t_test(&[1.0, 2.0, 3.0]).unwrap();
        let t: f64 = 2.0 * 3f64.sqrt();
        let exact = 1.0 - t / (t * t + 2.0).sqrt();
        assert!((p - exact).abs() < 1e-9, "{p} vs {exact}");
        assert!((p - 0.07418).abs() < 1e-4);
        assert_eq!(paired_t_test(&[0.5]), None);
        assert_eq!(paired_t_test(&[0.5, 0.5]), None);
    }
}
