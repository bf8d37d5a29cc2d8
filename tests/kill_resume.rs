//! Kill and resume: a training run is killed with SIGKILL mid-epoch, mid-checkpoint and between
//! a checkpoint and its pointer; after every kill each checkpoint on disk must load, and the
//! run resumed to the end must hold exactly the weights of a run that was never interrupted.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use burn::optim::record::OptimizerRecord;
use burn::store::ModuleRecord;
use burn::tensor::{Bytes, Device};
use ppcr::runfiles::{PAUSE_AT_VAR, PAUSE_MARKER_VAR, RunDir, TrainState};
use ppcr::train::load_trained_model;

const EPOCHS: usize = 4;

fn train_args(run: &Path, resume: bool, extra: &[&str]) -> Vec<String> {
    let mut args = common::tiny_train_args(run, EPOCHS);
    args.extend(["--seed".into(), "11".into()]);
    args.extend(extra.iter().map(|arg| arg.to_string()));
    if resume {
        args.push("--resume".into());
    }
    args
}

/// Start a run that pauses at `point`, wait until it is there, and SIGKILL it.
fn kill_at(run: &Path, point: &str, resume: bool, extra: &[&str]) {
    let marker = run.with_file_name(format!("paused-{}", point.replace(':', "-")));
    let mut child = Command::new(env!("CARGO_BIN_EXE_ppcr"))
        .args(train_args(run, resume, extra))
        .env(PAUSE_AT_VAR, point)
        .env(PAUSE_MARKER_VAR, &marker)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while !marker.exists() {
        if let Some(status) = child.try_wait().unwrap() {
            let output = child.wait_with_output().unwrap();
            panic!(
                "the run ended ({status}) before reaching {point}: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "{point} not reached"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // `Child::kill` is SIGKILL on Unix: no destructor, no flush, no signal handler runs.
    child.kill().unwrap();
    child.wait().unwrap();
}

fn pointer(run: &Path, name: &str) -> String {
    std::fs::read_to_string(run.join("checkpoints").join(name))
        .unwrap()
        .trim()
        .to_string()
}

/// Every epoch folder on disk loads (model, optimizer, state), and both pointers name one.
fn assert_checkpoints_readable(run: &Path) -> Vec<PathBuf> {
    let checkpoints = run.join("checkpoints");
    let mut epoch_dirs: Vec<PathBuf> = std::fs::read_dir(&checkpoints)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| {
            path.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("epoch-")
        })
        .collect();
    epoch_dirs.sort();
    assert!(!epoch_dirs.is_empty());
    for dir in &epoch_dirs {
        let read = |file: &str| std::fs::read(dir.join(file)).unwrap();
        ModuleRecord::from_bytes(Bytes::from_bytes_vec(read("model.bpk")))
            .unwrap_or_else(|e| panic!("{}: model unreadable: {e}", dir.display()));
        OptimizerRecord::from_bytes(Bytes::from_bytes_vec(read("optimizer.bpk")))
            .unwrap_or_else(|e| panic!("{}: optimizer unreadable: {e}", dir.display()));
        let state: TrainState = serde_json::from_slice(&read("state.json")).unwrap();
        let number: usize = dir.file_name().unwrap().to_string_lossy()["epoch-".len()..]
            .parse()
            .unwrap();
        assert_eq!(state.epochs_completed, number);
    }
    let run_dir = RunDir::open(run).unwrap();
    for name in ["latest", "best"] {
        assert!(checkpoints.join(pointer(run, name)).is_dir());
        load_trained_model(&run_dir, name, &Device::flex()).unwrap();
    }
    epoch_dirs
}

fn leftovers(run: &Path) -> Vec<String> {
    [run.to_path_buf(), run.join("checkpoints")]
        .iter()
        .flat_map(|folder| std::fs::read_dir(folder).unwrap())
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.contains(".tmp-") || name.ends_with(".partial"))
        .collect()
}

#[test]
fn a_run_killed_at_any_point_resumes_to_the_uninterrupted_weights() {
    killed_and_resumed(&[]);
}

/// A run that keeps a moving average of its weights resumes both the trained weights (for the
/// steps to come) and the average (what it evaluates).
#[test]
fn a_run_averaging_its_weights_resumes_to_the_uninterrupted_average() {
    killed_and_resumed(&["--ema-decay", "0.9"]);
}

/// A run with stochastic weight averaging (epochs 2-4) resumes its equal average with the
/// count of models it holds (the last resume continues a mean of two), and the average's
/// BatchNorm statistics are recomputed alike.
#[test]
fn a_run_with_stochastic_weight_averaging_resumes_to_the_uninterrupted_average() {
    killed_and_resumed(&["--swa-epochs", "3"]);
}

fn killed_and_resumed(extra: &[&str]) {
    let folder = tempfile::tempdir().unwrap();
    let whole = folder.path().join("whole");
    common::assert_success(&common::ppcr(train_args(&whole, false, extra)));

    let run = folder.path().join("killed");
    // Mid-epoch: epoch 2 has taken a step; only epoch 1 is on disk.
    kill_at(&run, "step:2:1", false, extra);
    assert_checkpoints_readable(&run);
    assert_eq!(pointer(&run, "latest"), "epoch-0001");

    // Mid-checkpoint: epoch 3's folder holds the model but not yet the optimizer.
    kill_at(&run, "checkpoint:3", true, extra);
    assert_checkpoints_readable(&run);
    assert_eq!(pointer(&run, "latest"), "epoch-0002");
    let partial = run.join("checkpoints/.epoch-0003.partial");
    assert!(partial.join("model.bpk").is_file() && !partial.join("optimizer.bpk").exists());

    // Between the checkpoint and its pointer: epoch 3 is complete, `latest` still says 2.
    kill_at(&run, "pointer:3", true, extra);
    let dirs = assert_checkpoints_readable(&run);
    assert_eq!(pointer(&run, "latest"), "epoch-0002");
    assert!(dirs.iter().any(|d| d.ends_with("epoch-0003")));

    // Mid-epoch again, in the last epoch.
    kill_at(&run, "step:4:2", true, extra);
    assert_checkpoints_readable(&run);
    assert_eq!(pointer(&run, "latest"), "epoch-0003");

    common::assert_success(&common::ppcr(train_args(&run, true, extra)));
    assert_checkpoints_readable(&run);
    assert_eq!(pointer(&run, "latest"), "epoch-0004");
    assert_eq!(leftovers(&run), Vec::<String>::new());

    let (a, b) = (common::latest_weights(&whole), common::latest_weights(&run));
    assert_eq!(a.len(), b.len());
    assert!(
        a == b,
        "the resumed run's weights differ from the uninterrupted run's"
    );
    let has_live = |run: &Path| run.join("checkpoints/epoch-0004/live.bpk").is_file();
    assert_eq!(has_live(&whole), !extra.is_empty());
    assert_eq!(has_live(&run), !extra.is_empty());
    assert!(
        common::latest_live_weights(&whole) == common::latest_live_weights(&run),
        "the resumed run's trained weights differ from the uninterrupted run's"
    );
    if has_live(&whole) {
        assert!(
            common::latest_live_weights(&whole) != a,
            "the average is the trained weights"
        );
    }
    let test_metrics = |run: &Path| {
        let text = std::fs::read_to_string(run.join("metrics.json")).unwrap();
        serde_json::from_str::<serde_json::Value>(&text).unwrap()["test"].clone()
    };
    assert_eq!(test_metrics(&whole), test_metrics(&run));
    let log_lines = std::fs::read_to_string(run.join("log.csv")).unwrap();
    assert_eq!(log_lines.lines().count(), EPOCHS + 1, "{log_lines}");
}
