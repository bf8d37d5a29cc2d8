//! Wall-clock timing with warm-up and medians, since single timings on a shared machine lie.

use std::time::Instant;

use serde::Serialize;

/// Median and spread of repeated timings of one operation.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Timing {
    /// Median wall time, milliseconds.
    pub median_ms: f64,
    /// Fastest run, milliseconds.
    pub min_ms: f64,
    /// Slowest run, milliseconds.
    pub max_ms: f64,
    /// Timed runs (after warm-up).
    pub runs: usize,
}

/// Median of a non-empty slice.
pub fn median(values: &mut [f64]) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    let middle = values.len() / 2;
    if values.len() % 2 == 1 {
        values[middle]
    } else {
        (values[middle - 1] + values[middle]) / 2.0
    }
}

impl Timing {
    /// Median and spread of non-empty millisecond `samples`.
    pub fn from_samples(samples: &[f64]) -> Timing {
        let mut sorted = samples.to_vec();
        let min_ms = sorted.iter().copied().fold(f64::INFINITY, f64::min);
        let max_ms = sorted.iter().copied().fold(0.0, f64::max);
        Timing {
            median_ms: median(&mut sorted),
            min_ms,
            max_ms,
            runs: samples.len(),
        }
    }
}

/// Time `operation` `runs` times after `warmup` untimed runs. The operation must finish its work
/// before returning (sync the device).
pub fn time_median(warmup: usize, runs: usize, mut operation: impl FnMut()) -> Timing {
    for _ in 0..warmup {
        operation();
    }
    let samples: Vec<f64> = (0..runs.max(1))
        .map(|_| {
            let started = Instant::now();
            operation();
            started.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    Timing::from_samples(&samples)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut [4.0, 1.0, 3.0, 2.0]), 2.5);
    }

    #[test]
    fn runs_the_operation_warmup_plus_runs_times() {
        let mut calls = 0;
        let timing = time_median(2, 5, || calls += 1);
        assert_eq!(calls, 7);
        assert_eq!(timing.runs, 5);
        assert!(timing.min_ms <= timing.median_ms && timing.median_ms <= timing.max_ms);
    }
}
