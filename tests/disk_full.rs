//! A full disk: a run whose output folder cannot hold its checkpoints is refused before it
//! trains, and a disk that fills up during training stops the run with an error naming the
//! file, leaves no partial file behind and keeps the last completed epoch loadable.
//!
//! The small disk is a tmpfs mounted in a private user and mount namespace (`unshare -rm`), so
//! the test needs no root and leaves nothing mounted; where namespaces are unavailable it is
//! skipped with a notice.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use burn::tensor::Device;
use ppcr::runfiles::{PAUSE_AT_VAR, PAUSE_MARKER_VAR, RunDir};
use ppcr::train::load_trained_model;

/// Runs `script` with a `size` tmpfs mounted on `$DISK`, or `None` where that is impossible.
fn on_small_disk(folder: &Path, size: &str, script: &str) -> Option<Output> {
    let disk = folder.join("disk");
    std::fs::create_dir_all(&disk).unwrap();
    let probe = Command::new("unshare")
        .args([
            "-rm",
            "sh",
            "-c",
            "mount -t tmpfs -o size=64k tmpfs \"$DISK\"",
        ])
        .env("DISK", &disk)
        .output();
    if !probe.is_ok_and(|output| output.status.success()) {
        common::skip("cannot mount a tmpfs in a user namespace (unshare -rm)");
        return None;
    }
    let data = common::fixtures().join("pbc_mini");
    let full_script = format!("set -u\nmount -t tmpfs -o size={size} tmpfs \"$DISK\"\n{script}");
    Some(
        Command::new("unshare")
            .args(["-rm", "sh", "-c", &full_script])
            .env("DISK", &disk)
            .env("PPCR", env!("CARGO_BIN_EXE_ppcr"))
            .env("DATA", data)
            .env("OUTSIDE", folder)
            .env(PAUSE_MARKER_VAR, folder.join("paused"))
            .output()
            .unwrap(),
    )
}

const TRAIN: &str = "\"$PPCR\" train --data \"$DATA\" --size 32 --epochs 3 --batch 4 \
                     --out \"$DISK/run\"";

#[test]
fn a_disk_too_small_for_the_checkpoints_is_refused_before_training() {
    let folder = tempfile::tempdir().unwrap();
    let script =
        format!("{TRAIN}; echo \"exit=$?\"; ls -A \"$DISK/run\" \"$DISK/run/checkpoints\"");
    let Some(output) = on_small_disk(folder.path(), "1m", &script) else {
        return;
    };
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stdout.contains("exit=1"), "{stdout}{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    for needle in [
        "error:",
        "not enough free disk space",
        "MB is free",
        "--out",
    ] {
        assert!(stderr.contains(needle), "'{needle}' missing from {stderr}");
    }
    // Nothing but the empty checkpoint folder and the run's lock file was written; no epoch
    // started.
    assert!(!stderr.contains("epoch 1/"), "{stderr}");
    let listing: Vec<&str> = stdout.lines().filter(|l| !l.starts_with("exit=")).collect();
    assert_eq!(
        listing,
        [
            format!("{}/disk/run:", folder.path().display()).as_str(),
            ".lock",
            "checkpoints",
            "",
            format!("{}/disk/run/checkpoints:", folder.path().display()).as_str(),
        ],
        "{stdout}"
    );
}

#[test]
fn a_disk_that_fills_during_training_stops_cleanly_and_keeps_the_last_epoch() {
    let folder = tempfile::tempdir().unwrap();
    // Pause in epoch 2, fill the disk, let training go on to epoch 2's checkpoint, then copy
    // the run folder out of the namespace for inspection.
    let script = format!(
        "{PAUSE_AT_VAR}=step:2:1 {TRAIN} 2>\"$OUTSIDE/stderr\" &\n\
         pid=$!\n\
         while [ ! -e \"${PAUSE_MARKER_VAR}\" ]; do sleep 0.05; done\n\
         head -c 100000000 /dev/zero > \"$DISK/filler\" 2>/dev/null\n\
         rm \"${PAUSE_MARKER_VAR}\"\n\
         wait $pid; echo \"exit=$?\"\n\
         cp -r \"$DISK/run\" \"$OUTSIDE/run\"\n"
    );
    let Some(output) = on_small_disk(folder.path(), "16m", &script) else {
        return;
    };
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = std::fs::read_to_string(folder.path().join("stderr")).unwrap_or_default();
    assert!(stdout.contains("exit=1"), "{stdout}{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    for needle in [
        "error:",
        "epoch-0002",
        "No space left on device",
        "--resume",
    ] {
        assert!(stderr.contains(needle), "'{needle}' missing from {stderr}");
    }
    let run = folder.path().join("run");
    let mut names: Vec<String> = [run.clone(), run.join("checkpoints")]
        .iter()
        .flat_map(|dir| std::fs::read_dir(dir).unwrap())
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            ".lock",
            "best",
            "checkpoints",
            "config.toml",
            "epoch-0001",
            "latest",
            "log.csv",
            "run.json"
        ],
        "partial files were left behind"
    );
    load_trained_model(&RunDir::open(&run).unwrap(), "latest", &Device::flex()).unwrap();
}
