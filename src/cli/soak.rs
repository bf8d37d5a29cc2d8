//! `ppcr bench --suite soak`: train the default model (PPCR ResNet-20 on the built-in
//! BreastMNIST) for a fixed wall time and record resident memory after every epoch, so a slow
//! leak shows up before it kills an overnight run. The run (with its per-epoch checkpoints)
//! goes to a temporary folder that is removed afterwards; the curve goes to a CSV file.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use burn::tensor::Device;

use ppcr::data::{LoadOptions, builtin_breastmnist};
use ppcr::profile::{MemoryCurve, MemorySample, resident_set_bytes};
use ppcr::runfiles::EpochRecord;
use ppcr::train::{TrainConfig, TrainError, TrainObserver, train};

/// Growth of resident memory after the first epoch above which the soak run fails.
const ALLOWED_GROWTH: f64 = 0.05;

/// Records resident memory after each epoch and stops the run once its time is up.
struct MemoryRecorder {
    started: Instant,
    duration: Duration,
    curve: MemoryCurve,
}

impl TrainObserver for MemoryRecorder {
    fn on_epoch(&mut self, record: &EpochRecord, _is_best: bool) {
        let resident_bytes = resident_set_bytes().unwrap_or(0);
        let sample = MemorySample {
            epoch: record.epoch,
            seconds: self.started.elapsed().as_secs_f64(),
            resident_bytes,
        };
        out!(
            "epoch {:>4}  {:>7.0} s  resident {:>8.1} MiB  ({:.0} images/s)",
            sample.epoch,
            sample.seconds,
            resident_bytes as f64 / (1024.0 * 1024.0),
            record.images_per_second
        );
        self.curve.samples.push(sample);
    }

    fn should_stop(&mut self) -> bool {
        self.started.elapsed() >= self.duration
    }
}

/// Removes the soak run's folder however the run ends.
struct TemporaryRun(PathBuf);

impl Drop for TemporaryRun {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Train on `device` for `minutes` and write the memory curve to `csv`; fails when memory grew by more
/// than 5% after the first epoch.
pub fn run(minutes: f64, csv: &Path, device: &Device) -> anyhow::Result<()> {
    anyhow::ensure!(
        minutes.is_finite() && minutes > 0.0,
        "--minutes must be a positive number, got {minutes}"
    );
    anyhow::ensure!(
        resident_set_bytes().is_some(),
        "this operating system does not report resident memory; the soak run needs it"
    );
    let dataset = builtin_breastmnist(&LoadOptions::default())?;
    // Far more epochs than fit in the time, so the run ends by the clock, not the schedule.
    let config = TrainConfig {
        epochs: 100_000,
        ..TrainConfig::default()
    };
    let run = TemporaryRun(std::env::temp_dir().join(format!("ppcr-soak-{}", std::process::id())));
    out!(
        "soak: {} + {} on the built-in BreastMNIST for {minutes} min, resident memory after \
         each epoch",
        config.backbone,
        config.attention
    );
    let mut recorder = MemoryRecorder {
        started: Instant::now(),
        duration: Duration::from_secs_f64(minutes * 60.0),
        curve: MemoryCurve::default(),
    };
    match train(&config, &dataset, &run.0, false, device, &mut recorder) {
        Err(TrainError::Interrupted { .. }) | Ok(_) => {}
        Err(error) => return Err(error.into()),
    }
    ppcr::runfiles::write_atomic(csv, recorder.curve.to_csv().as_bytes())
        .map_err(|e| anyhow::anyhow!("{}: cannot write the memory curve: {e}", csv.display()))?;
    let samples = &recorder.curve.samples;
    let mib = |bytes: u64| bytes as f64 / (1024.0 * 1024.0);
    let growth = recorder.curve.growth_after_first_epoch().ok_or_else(|| {
        anyhow::anyhow!("the soak run finished fewer than 2 epochs; give it more --minutes")
    })?;
    let first = samples[0].resident_bytes;
    let peak = samples
        .iter()
        .map(|s| s.resident_bytes)
        .max()
        .unwrap_or(first);
    let last = samples[samples.len() - 1];
    out!(
        "\n{} epochs in {:.1} min; resident memory after epoch 1 {:.1} MiB, peak later {:.1} \
         MiB, last {:.1} MiB: growth {:+.2}% (allowed {:.0}%); curve in {}",
        samples.len(),
        last.seconds / 60.0,
        mib(first),
        mib(peak),
        mib(last.resident_bytes),
        growth * 100.0,
        ALLOWED_GROWTH * 100.0,
        csv.display()
    );
    anyhow::ensure!(
        growth <= ALLOWED_GROWTH,
        "resident memory grew by {:.2}% after the first epoch (allowed {:.0}%)",
        growth * 100.0,
        ALLOWED_GROWTH * 100.0
    );
    Ok(())
}
