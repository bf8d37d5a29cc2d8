//! End-to-end training on real data (a slice of the built-in BreastMNIST): a run interrupted
//! after an epoch and resumed ends with exactly the weights of an uninterrupted run, the run
//! folder holds what it promises, and an existing run is never overwritten.

mod common;

use burn::tensor::Device;
use ppcr::data::{Dataset, LoadOptions, builtin_breastmnist};
use ppcr::train::{NoObserver, TrainConfig, TrainError, TrainObserver, train};

/// BreastMNIST cut to 96 training images so a few epochs take seconds.
fn small_breastmnist() -> Dataset {
    let mut dataset = builtin_breastmnist(&LoadOptions::default()).unwrap();
    let first = |n: usize| (0..n).collect::<Vec<_>>();
    dataset.train = dataset.train.subset(&first(96));
    dataset.val = dataset.val.subset(&first(40));
    dataset.test = dataset.test.subset(&first(40));
    dataset
}

fn config() -> TrainConfig {
    TrainConfig {
        epochs: 3,
        batch_size: 16,
        seed: 7,
        ..TrainConfig::default()
    }
}

/// Stops the run after a given number of epochs, as a crash or Ctrl-C would.
struct StopAfter(usize, usize);

impl TrainObserver for StopAfter {
    fn on_epoch(&mut self, _record: &ppcr::runfiles::EpochRecord, _is_best: bool) {
        self.1 += 1;
    }
    fn should_stop(&mut self) -> bool {
        self.1 >= self.0
    }
}

#[test]
fn interrupted_and_resumed_run_matches_an_uninterrupted_one() {
    let dataset = small_breastmnist();
    let device = Device::flex();
    let folder = tempfile::tempdir().unwrap();
    let whole = folder.path().join("whole");
    let resumed = folder.path().join("resumed");

    let outcome = train(&config(), &dataset, &whole, false, &device, &mut NoObserver).unwrap();
    assert!((1..=3).contains(&outcome.best_epoch));

    let stopped = train(
        &config(),
        &dataset,
        &resumed,
        false,
        &device,
        &mut StopAfter(1, 0),
    );
    assert!(
        matches!(stopped, Err(TrainError::Interrupted { epoch: 1, .. })),
        "{stopped:?}"
    );
    train(
        &config(),
        &dataset,
        &resumed,
        true,
        &device,
        &mut NoObserver,
    )
    .unwrap();

    let (a, b) = (
        common::latest_weights(&whole),
        common::latest_weights(&resumed),
    );
    assert_eq!(a.len(), b.len());
    assert!(
        a.iter().zip(&b).all(|(x, y)| x == y),
        "resumed weights differ"
    );

    // The run folder holds the resolved config, the log, the run info and the metrics.
    let predictions = std::fs::read_to_string(whole.join("test_predictions.csv")).unwrap();
    assert_eq!(predictions.lines().count(), 41);
    assert_eq!(
        predictions.lines().next().unwrap(),
        "index,label,predicted,p_malignant,\"p_normal, benign\""
    );
    for file in ["config.toml", "run.json", "log.csv", "metrics.json"] {
        assert!(whole.join(file).is_file(), "missing {file}");
    }
    let log = std::fs::read_to_string(whole.join("log.csv")).unwrap();
    assert_eq!(log.lines().count(), 4, "header + 3 epochs:\n{log}");
    let resumed_log = std::fs::read_to_string(resumed.join("log.csv")).unwrap();
    // Timings (the seconds and images_per_second columns) differ between runs; nothing else
    // may.
    let header: Vec<&str> = log.lines().next().unwrap().split(',').collect();
    let timing = |column: usize| matches!(header[column], "seconds" | "images_per_second");
    let without_timings = |line: &str| {
        line.split(',')
            .enumerate()
            .filter(|(column, _)| !timing(*column))
            .map(|(_, field)| field)
            .collect::<Vec<_>>()
            .join(",")
    };
    for (whole_line, resumed_line) in log.lines().zip(resumed_log.lines()) {
        assert_eq!(without_timings(whole_line), without_timings(resumed_line));
    }
    let metrics: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(whole.join("metrics.json")).unwrap())
            .unwrap();
    for key in [
        "accuracy",
        "balanced_accuracy",
        "auc_macro",
        "f1_macro",
        "precision_macro",
        "recall_macro",
        "kappa",
        "ece",
        "confusion_matrix",
    ] {
        assert!(
            metrics["test"].get(key).is_some(),
            "metrics.json test lacks {key}"
        );
    }
    assert_eq!(
        metrics["best_epoch"].as_u64().unwrap() as usize,
        outcome.best_epoch
    );
    let confusion = metrics["test"]["confusion_matrix"].as_array().unwrap();
    let total: u64 = confusion
        .iter()
        .flat_map(|row| row.as_array().unwrap())
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert_eq!(total, 40);

    // Only the latest and best epoch folders are kept.
    let kept = std::fs::read_dir(whole.join("checkpoints"))
        .unwrap()
        .filter(|e| e.as_ref().unwrap().path().is_dir())
        .count();
    assert!((1..=2).contains(&kept), "{kept} checkpoint folders");

    // A finished run is never overwritten.
    let again = train(&config(), &dataset, &whole, false, &device, &mut NoObserver);
    assert!(
        matches!(again, Err(TrainError::RunExists { .. })),
        "{again:?}"
    );
    // Resuming with other settings is refused, naming the setting.
    let other = TrainConfig {
        lr: 0.2,
        ..config()
    };
    let error = train(&other, &dataset, &whole, true, &device, &mut NoObserver)
        .unwrap_err()
        .to_string();
    assert!(error.contains("lr"), "{error}");
}

/// `select_on = last` keeps the last epoch whatever validation says, and with a moving average
/// of the weights the average is what validation scored and what the run keeps.
#[test]
fn the_last_epoch_of_the_average_is_what_a_run_without_selection_keeps() {
    let dataset = small_breastmnist();
    let folder = tempfile::tempdir().unwrap();
    let run = folder.path().join("run");
    let config = TrainConfig {
        select_on: ppcr::runfiles::SelectionMetric::Last,
        ema_decay: 0.9,
        ..config()
    };
    let outcome = train(
        &config,
        &dataset,
        &run,
        false,
        &Device::flex(),
        &mut NoObserver,
    )
    .unwrap();
    assert_eq!(outcome.best_epoch, 3);
    let pointer = |name: &str| std::fs::read_to_string(run.join("checkpoints").join(name)).unwrap();
    assert_eq!(pointer("best"), pointer("latest"));
    let log = std::fs::read_to_string(run.join("log.csv")).unwrap();
    let header: Vec<&str> = log.lines().next().unwrap().split(',').collect();
    let last: Vec<&str> = log.lines().last().unwrap().split(',').collect();
    let column = |name: &str| header.iter().position(|h| *h == name).unwrap();
    let logged_val_loss: f64 = last[column("val_loss")].parse().unwrap();
    // The final evaluation of the kept weights scores validation as the last epoch did.
    assert!(
        (outcome.val.loss - logged_val_loss).abs() < 1e-9,
        "{} vs {logged_val_loss}",
        outcome.val.loss
    );
    assert!(common::latest_live_weights(&run) != common::latest_weights(&run));
}
