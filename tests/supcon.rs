//! Training with the supervised contrastive loss (`--supcon-weight`): off (0) it changes
//! nothing at all; on, it logs the loss, keeps the projection head in the checkpoint for an
//! exact resume, and leaves it out of the parameter count and the exports.

mod common;

use common::{assert_clean_failure, assert_success, export, latest_weights, ppcr, tiny_train_args};

#[test]
fn weight_zero_is_exactly_the_training_without_it() {
    let folder = tempfile::tempdir().unwrap();
    let plain = folder.path().join("plain");
    assert_success(&ppcr(tiny_train_args(&plain, 1)));
    let zero = folder.path().join("zero");
    let mut args = tiny_train_args(&zero, 1);
    args.extend(["--supcon-weight".into(), "0".into()]);
    assert_success(&ppcr(args));
    assert_eq!(latest_weights(&plain), latest_weights(&zero));
    let log = std::fs::read_to_string(zero.join("log.csv")).unwrap();
    assert!(
        log.lines().nth(1).unwrap().ends_with(','),
        "no contrastive loss logged: {log}"
    );
}

#[test]
fn contrastive_training_logs_its_loss_and_keeps_the_head_out_of_counts_and_exports() {
    let folder = tempfile::tempdir().unwrap();
    let plain = folder.path().join("plain");
    assert_success(&ppcr(tiny_train_args(&plain, 1)));
    let run = folder.path().join("supcon");
    let mut args = tiny_train_args(&run, 2);
    args.extend([
        "--supcon-weight".into(),
        "0.5".into(),
        "--supcon-temperature".into(),
        "0.1".into(),
    ]);
    assert_success(&ppcr(args));
    let log = std::fs::read_to_string(run.join("log.csv")).unwrap();
    let header: Vec<&str> = log.lines().next().unwrap().split(',').collect();
    let column = header
        .iter()
        .position(|c| *c == "train_supcon_loss")
        .unwrap();
    for line in log.lines().skip(1) {
        let value: f64 = line.split(',').nth(column).unwrap().parse().unwrap();
        assert!(value.is_finite() && value > 0.0, "{line}");
    }
    let info = std::fs::read_to_string(run.join("run.json")).unwrap();
    assert!(info.contains("\"projection_dim\": 128"), "{info}");
    let params = |run: &std::path::Path| {
        let metrics: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(run.join("metrics.json")).unwrap())
                .unwrap();
        metrics["params"].as_u64().unwrap()
    };
    assert_eq!(params(&run), params(&plain));
    // The head is in the checkpoint (an exact resume needs it) but not in the exports.
    assert!(latest_weights(&run).len() > latest_weights(&plain).len());
    let tensors = |run: &std::path::Path, name: &str| {
        let bytes = export(run, "safetensors", &folder.path().join(name));
        safetensors::SafeTensors::deserialize(&bytes)
            .unwrap()
            .names()
            .len()
    };
    assert_eq!(
        tensors(&run, "supcon.safetensors"),
        tensors(&plain, "plain.safetensors")
    );

    // A temperature without the loss is refused, as is the loss across devices.
    let mut args = tiny_train_args(&folder.path().join("t"), 1);
    args.extend(["--supcon-temperature".into(), "0.2".into()]);
    assert_clean_failure(
        &ppcr(args),
        &["supcon_temperature applies to the contrastive loss"],
    );
    let mut args = tiny_train_args(&folder.path().join("d"), 1);
    args.extend([
        "--supcon-weight".into(),
        "1".into(),
        "--devices".into(),
        "cpu,cpu".into(),
    ]);
    assert_clean_failure(&ppcr(args), &["trains on one device"]);
}

#[test]
fn a_resumed_contrastive_run_ends_as_the_uninterrupted_one() {
    let folder = tempfile::tempdir().unwrap();
    let with_loss = |run: &std::path::Path, epochs: usize| {
        // A constant rate: cosine's depends on the run's length, which the resume changes.
        let mut args = tiny_train_args(run, epochs);
        args.extend(["--supcon-weight", "1", "--schedule", "constant"].map(String::from));
        args
    };
    let straight = folder.path().join("straight");
    assert_success(&ppcr(with_loss(&straight, 2)));
    let resumed = folder.path().join("resumed");
    assert_success(&ppcr(with_loss(&resumed, 1)));
    let mut args = with_loss(&resumed, 2);
    args.push("--resume".into());
    assert_success(&ppcr(args));
    let (a, b) = (latest_weights(&straight), latest_weights(&resumed));
    let differing: Vec<usize> = (0..a.len()).filter(|&i| a[i] != b[i]).collect();
    assert!(
        differing.is_empty(),
        "tensors {differing:?} of {} differ",
        a.len()
    );
}
