//! The `ppcr` binary end to end: training on a real image folder, evaluation and prediction
//! from the run, the JSON model listing, and bad input that must end in a clear error naming
//! the file or value, a non-zero exit and no panic.

mod common;

use std::path::Path;

use common::{assert_clean_failure, assert_success, fixtures, ppcr, stdout};

#[test]
fn train_eval_predict_on_an_image_folder() {
    let folder = tempfile::tempdir().unwrap();
    let run = folder.path().join("run");
    let run_arg = run.to_str().unwrap();
    let data = fixtures().join("pbc_mini");
    let data_arg = data.to_str().unwrap();
    let output = ppcr([
        "train",
        "--data",
        data_arg,
        "--size",
        "32",
        "--epochs",
        "2",
        "--batch",
        "4",
        "--backbone",
        "resnet20",
        "--attn",
        "ppcr",
        "--tta",
        "flips",
        "--out",
        run_arg,
    ]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = stdout(&output);
    assert!(
        text.contains("test metrics (3 images, test-time augmentation: flips)"),
        "{text}"
    );
    let info: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("run.json")).unwrap()).unwrap();
    assert_eq!(info["tta"], "flips");
    assert!(text.contains("epoch   2/2"), "{text}");

    let output = ppcr(["eval", "--checkpoint", run_arg, "--split", "val", "--json"]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: serde_json::Value = serde_json::from_str(&stdout(&output)).unwrap();
    assert_eq!(report["num_samples"], 3);
    assert_eq!(report["confusion_matrix"].as_array().unwrap().len(), 3);

    let image = data.join("test/platelet");
    let image = std::fs::read_dir(image)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let output = ppcr([
        "predict",
        "--checkpoint",
        run_arg,
        "--csv",
        image.to_str().unwrap(),
    ]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = stdout(&output);
    let mut lines = text.lines();
    assert_eq!(
        lines.next().unwrap(),
        "path,predicted,p_basophil,p_erythroblast,p_platelet"
    );
    let row: Vec<&str> = lines.next().unwrap().split(',').collect();
    let total: f64 = row[2..].iter().map(|p| p.parse::<f64>().unwrap()).sum();
    assert!((total - 1.0).abs() < 1e-4, "{row:?}");

    // The run averages four views of each image; `--tta none` asks for the image alone.
    let output = ppcr(["eval", "--checkpoint", run_arg, "--split", "val"]);
    assert_success(&output);
    assert!(
        stdout(&output).contains("test-time augmentation: flips"),
        "{}",
        stdout(&output)
    );
    let alone = ppcr([
        "predict",
        "--checkpoint",
        run_arg,
        "--csv",
        "--tta",
        "none",
        image.to_str().unwrap(),
    ]);
    assert_success(&alone);
    let alone_row = stdout(&alone).lines().nth(1).unwrap().to_string();
    assert_ne!(alone_row, row.join(","), "the views changed nothing");
    let output = ppcr([
        "predict",
        "--checkpoint",
        run_arg,
        "--tta",
        "sideways",
        image.to_str().unwrap(),
    ]);
    assert_clean_failure(&output, &["sideways", "none, hflip, flips"]);

    // The checkpoint's classes are not BreastMNIST's: evaluating on it is refused.
    let output = ppcr([
        "eval",
        "--checkpoint",
        run_arg,
        "--data",
        fixtures().join("pbc_mini.csv").to_str().unwrap(),
    ]);
    assert!(
        output.status.success(),
        "same classes through the CSV list must work"
    );
    let breast = Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/breastmnist.npz");
    let output = ppcr([
        "eval",
        "--checkpoint",
        run_arg,
        "--data",
        breast.to_str().unwrap(),
    ]);
    assert_clean_failure(&output, &["breastmnist.npz", "do not match"]);

    // Weights that do not fit the architecture run.json names (another unit) are refused.
    let tampered = folder.path().join("tampered");
    std::fs::create_dir_all(tampered.join("checkpoints")).unwrap();
    for entry in std::fs::read_dir(run.join("checkpoints")).unwrap() {
        let entry = entry.unwrap();
        let target = tampered.join("checkpoints").join(entry.file_name());
        if entry.path().is_dir() {
            std::fs::create_dir_all(&target).unwrap();
            for file in std::fs::read_dir(entry.path()).unwrap() {
                let file = file.unwrap();
                std::fs::copy(file.path(), target.join(file.file_name())).unwrap();
            }
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
    std::fs::copy(run.join("config.toml"), tampered.join("config.toml")).unwrap();
    let info = std::fs::read_to_string(run.join("run.json")).unwrap();
    assert!(info.contains("\"ppcr\""));
    std::fs::write(
        tampered.join("run.json"),
        info.replace("\"ppcr\"", "\"se\""),
    )
    .unwrap();
    let output = ppcr(["eval", "--checkpoint", tampered.to_str().unwrap()]);
    assert_clean_failure(&output, &["model.bpk", "do not fit"]);

    // Training into the finished run again is refused rather than overwriting it.
    let output = ppcr([
        "train", "--data", data_arg, "--size", "32", "--epochs", "1", "--out", run_arg,
    ]);
    assert_clean_failure(&output, &["already holds a training run", "--resume"]);

    // A run folder that is not one.
    let output = ppcr(["eval", "--checkpoint", folder.path().to_str().unwrap()]);
    assert_clean_failure(&output, &["not a ppcr run folder"]);
}

#[test]
fn training_splits_batches_across_the_devices_it_is_given() {
    let folder = tempfile::tempdir().unwrap();
    // Two "devices" that are both the CPU run the data-parallel path: two shards per batch,
    // each on its own thread, gradients summed on the first device.
    let run = folder.path().join("run");
    let mut args = common::tiny_train_args(&run, 1);
    args.extend(["--devices", "cpu,cpu"].map(String::from));
    let output = ppcr(args);
    assert_success(&output);
    assert!(stdout(&output).contains("test metrics (3 images, test-time augmentation: hflip)"));

    // Resumed on one device: said at the start, and each epoch's device count is in the log.
    let mut args = common::tiny_train_args(&run, 2);
    args.push("--resume".into());
    let output = ppcr(args);
    assert_success(&output);
    assert!(
        stdout(&output).contains("note: epoch 1 ran on 2 device(s) and this session runs on 1"),
        "{}",
        stdout(&output)
    );
    let log = std::fs::read_to_string(run.join("log.csv")).unwrap();
    let mut lines = log.lines().map(|line| line.split(',').collect::<Vec<_>>());
    let header = lines.next().unwrap();
    let column = header
        .iter()
        .position(|name| *name == "devices")
        .expect("{log}");
    let devices: Vec<&str> = lines.map(|fields| fields[column]).collect();
    assert_eq!(devices, ["2", "1"]);

    // A device the build cannot use is refused before any data is read.
    let output = ppcr(["train", "--devices", "cpu,cuda:1", "--epochs", "1"]);
    assert_clean_failure(&output, &["cuda", "--features cuda"]);
}

#[test]
fn bench_times_the_shapes_it_is_given_and_refuses_bad_options_before_timing() {
    let output = ppcr([
        "bench",
        "--suite",
        "unit",
        "--shape",
        "2x16x4x4,3x8x2x5",
        "--runs",
        "1",
        "--warmup",
        "0",
        "--json",
    ]);
    assert_success(&output);
    let report: serde_json::Value = serde_json::from_str(&stdout(&output)).unwrap();
    let rows = report["unit"].as_array().unwrap();
    let shapes: Vec<_> = rows.iter().map(|row| &row["bench"]["shape"]).collect();
    assert_eq!(
        shapes,
        [
            &serde_json::json!({"label": "custom", "shape": [2, 16, 4, 4]}),
            &serde_json::json!({"label": "custom", "shape": [3, 8, 2, 5]}),
        ]
    );
    for row in rows {
        assert!(row["forward_ratio"].as_f64().unwrap() > 0.0, "{row}");
    }

    let output = ppcr([
        "bench", "--suite", "units", "--attn", "se,simam", "--shape", "2x16x4x4", "--runs", "1",
        "--warmup", "0",
    ]);
    assert_success(&output);
    let text = stdout(&output);
    assert!(
        text.contains("[2, 16, 4, 4]") && !text.contains("resnet20@32"),
        "{text}"
    );

    // Each refused before the first measurement: nothing is printed on standard output.
    for (args, needles) in [
        (
            &["--suite", "unit", "--runs", "0"][..],
            &["--runs", "at least 1"][..],
        ),
        (
            &["--suite", "unit", "--shape", "2x16x4"],
            &["2x16x4", "BxCxHxW"],
        ),
        (
            &["--suite", "unit", "--shape", "2x16x4x4,2x4x4x4"],
            &["ppcr", "[2, 4, 4, 4]", "4 channels"],
        ),
        (
            &["--suite", "network", "--shape", "2x16x4x4"],
            &["--shape", "network"],
        ),
        (
            &["--suite", "network", "--resnet18-input", "4"],
            &["--resnet18-input 4", "at least 8 px"],
        ),
        // Options a suite does not use are refused, not ignored.
        (&["--suite", "soak", "--json"], &["--json", "soak"]),
        (&["--suite", "unit", "--attn", "se"], &["--attn", "unit"]),
        (
            &["--suite", "network", "--minutes", "1"],
            &["--minutes", "soak"],
        ),
        (&["--suite", "units", "--batch", "4"], &["--batch", "step"]),
        (&["--suite", "step", "--attn", "se,ppcr"], &["at most one"]),
        // One unit list for bench, profile and compare: `all` works, a repeat does not.
        (
            &["--suite", "network", "--attn", "none,none"],
            &["'none' is listed twice"],
        ),
    ] {
        let output = ppcr(["bench"].iter().chain(args));
        assert_clean_failure(&output, needles);
        assert_eq!(stdout(&output), "", "{args:?}");
    }
    let output = ppcr(["profile", "--batch", "0"]);
    assert_clean_failure(&output, &["--batch", "at least 1"]);

    let output = ppcr([
        "bench", "--suite", "units", "--attn", "all", "--shape", "2x16x4x4", "--runs", "1",
        "--warmup", "0",
    ]);
    assert_success(&output);
    assert!(stdout(&output).contains("ppcr"), "{}", stdout(&output));
    let output = ppcr([
        "bench", "--suite", "step", "--input", "16", "--batch", "2", "--runs", "1", "--warmup", "0",
    ]);
    assert_success(&output);
    assert!(
        stdout(&output).contains("resnet20 + none at 16 px, batch 2: training step"),
        "{}",
        stdout(&output)
    );
}

#[test]
fn compare_refuses_a_seed_it_would_not_use() {
    let folder = tempfile::tempdir().unwrap();
    let out = folder.path().join("cmp");
    let output = ppcr([
        "compare",
        "--seed",
        "3",
        "--attn",
        "none",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_clean_failure(&output, &["--seed 3", "--first-seed 3"]);
    assert!(!out.exists(), "nothing is written before the refusal");
}

#[test]
fn models_json_lists_every_backbone_and_unit() {
    let output = ppcr(["models", "--json", "--classes", "2", "--input", "28"]);
    assert!(output.status.success());
    let rows: Vec<serde_json::Value> = serde_json::from_str(&stdout(&output)).unwrap();
    assert_eq!(rows.len(), 9 * 8);
    for row in &rows {
        for key in [
            "backbone",
            "attention",
            "input",
            "classes",
            "params",
            "attention_params",
        ] {
            assert!(row.get(key).is_some(), "{row}");
        }
    }
    let ppcr18 = rows
        .iter()
        .find(|r| r["backbone"] == "resnet18" && r["attention"] == "ppcr")
        .unwrap();
    // Small stem at 28 px: stages 28, 14, 7, 4, two blocks each.
    assert_eq!(ppcr18["attention_params"], 15 * (784 + 196 + 49 + 16) * 2);
}

#[test]
fn bad_input_gives_a_clear_error_and_no_panic() {
    let folder = tempfile::tempdir().unwrap();
    let out = folder.path().join("run");
    let out = out.to_str().unwrap();

    let output = ppcr(["train", "--data", "/no/such/data", "--out", out]);
    assert_clean_failure(&output, &["/no/such/data"]);

    // A JPEG that makes the decoder itself panic (a zune-jpeg bug the image fuzz target found)
    // is reported as a bad file, without a panic message.
    let data = folder.path().join("jpeg_data");
    for class in ["a", "b"] {
        std::fs::create_dir_all(data.join(class)).unwrap();
        std::fs::copy(
            fixtures().join("../fuzz/jpeg_zune_idct_panic.jpg"),
            data.join(class).join("scan.jpg"),
        )
        .unwrap();
    }
    let output = ppcr(["train", "--data", data.to_str().unwrap(), "--out", out]);
    assert_clean_failure(&output, &["scan.jpg"]);

    let output = ppcr(["train", "--backbone", "vgg16", "--out", out]);
    assert_clean_failure(&output, &["vgg16", "resnet20", "resnet50"]);

    let output = ppcr(["train", "--attn", "sk", "--out", out]);
    assert_clean_failure(
        &output,
        &["'sk'", "none, se, eca, cbam, srm, gct, simam, ppcr"],
    );

    let corrupt = folder.path().join("corrupt.npz");
    std::fs::write(&corrupt, b"PK\x03\x04 definitely not a zip archive").unwrap();
    let output = ppcr(["train", "--data", corrupt.to_str().unwrap(), "--out", out]);
    assert_clean_failure(&output, &["corrupt.npz"]);

    let output = ppcr([
        "train",
        "--data",
        fixtures().join("bad_label.csv").to_str().unwrap(),
        "--out",
        out,
    ]);
    assert_clean_failure(&output, &["bad_label.csv", "line 4"]);

    let bad_folder = folder.path().join("cells");
    for class in ["a", "b"] {
        std::fs::create_dir_all(bad_folder.join(class)).unwrap();
        for i in 0..4 {
            std::fs::copy(
                fixtures()
                    .join("pbc_mini/train/basophil")
                    .read_dir()
                    .unwrap()
                    .next()
                    .unwrap()
                    .unwrap()
                    .path(),
                bad_folder.join(class).join(format!("{i}.jpg")),
            )
            .unwrap();
        }
    }
    std::fs::copy(
        fixtures().join("bad/truncated.jpg"),
        bad_folder.join("a/broken.jpg"),
    )
    .unwrap();
    let output = ppcr([
        "train",
        "--data",
        bad_folder.to_str().unwrap(),
        "--size",
        "16",
        "--out",
        out,
    ]);
    assert_clean_failure(&output, &["broken.jpg"]);

    let config = folder.path().join("typo.toml");
    std::fs::write(&config, "epoch = 3\n").unwrap();
    let output = ppcr(["train", "--config", config.to_str().unwrap(), "--out", out]);
    assert_clean_failure(&output, &["typo.toml", "epoch"]);

    let output = ppcr(["train", "--lr=-1", "--epochs", "0", "--out", out]);
    assert_clean_failure(&output, &["lr", "epochs"]);

    // An output folder that cannot be created fails before any training.
    let output = ppcr([
        "train",
        "--epochs",
        "1",
        "--out",
        "/proc/ppcr-cannot-write-here",
    ]);
    assert_clean_failure(&output, &["/proc/ppcr-cannot-write-here"]);

    // A run that diverges in epoch 2 (the step schedule multiplies the rate by 1e30 there)
    // stops naming the epoch and step, suggests a lower rate, and keeps epoch 1's checkpoint.
    let diverge = folder.path().join("diverge");
    let diverge_config = folder.path().join("diverge.toml");
    std::fs::write(
        &diverge_config,
        "lr = 0.01\n[schedule]\nkind = \"step\"\nmilestones = [1]\ngamma = 1e30\n",
    )
    .unwrap();
    let output = ppcr([
        "train",
        "--config",
        diverge_config.to_str().unwrap(),
        "--data",
        fixtures().join("pbc_mini").to_str().unwrap(),
        "--size",
        "16",
        "--epochs",
        "3",
        "--batch",
        "4",
        "--out",
        diverge.to_str().unwrap(),
    ]);
    assert_clean_failure(&output, &["diverged", "epoch 2, step", "--lr"]);
    assert!(!diverge.join("metrics.json").exists());
    let latest = std::fs::read_to_string(diverge.join("checkpoints/latest")).unwrap();
    assert_eq!(latest.trim(), "epoch-0001");
    let kept = ppcr([
        "eval",
        "--checkpoint",
        diverge.to_str().unwrap(),
        "--latest",
    ]);
    assert_success(&kept);
    assert!(stdout(&kept).contains("accuracy"), "{}", stdout(&kept));

    let output = ppcr(["train", "--resume"]);
    assert_clean_failure(&output, &["--out"]);

    let output = ppcr(["predict", "--checkpoint", out, "/no/image.png"]);
    assert_clean_failure(&output, &["no such folder"]);

    // Nothing was left behind by the refused runs but the (empty) output folder.
    if Path::new(out).exists() {
        assert!(!Path::new(out).join("metrics.json").exists());
    }
}

#[test]
fn report_writes_a_page_and_refuses_bad_input_clearly() {
    let folder = tempfile::tempdir().unwrap();
    let compare = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/report/compare");
    let compare_arg = compare.to_str().unwrap();
    let page = folder.path().join("report.html");
    let output = ppcr([
        "report",
        compare_arg,
        "-o",
        page.to_str().unwrap(),
        "--title",
        "PBC units",
    ]);
    assert!(output.status.success(), "{output:?}");
    assert!(stdout(&output).contains("report.html (1 section,"));
    let html = std::fs::read_to_string(&page).unwrap();
    assert!(html.contains("<title>PBC units</title>"));
    assert!(html.contains("<tr data-unit=\"ppcr\">"));

    // A folder that is none of the three kinds.
    let empty = folder.path().join("notes");
    std::fs::create_dir_all(&empty).unwrap();
    std::fs::write(empty.join("readme.txt"), "hello").unwrap();
    let output = ppcr([
        "report",
        empty.to_str().unwrap(),
        "-o",
        page.to_str().unwrap(),
    ]);
    assert_clean_failure(
        &output,
        &["notes", "not a run folder", "compare.json", "PNG"],
    );

    let output = ppcr(["report", "/no/such/folder"]);
    assert_clean_failure(&output, &["/no/such/folder", "no such folder"]);

    // A run folder whose metrics.json is corrupt.
    let run = folder.path().join("run");
    std::fs::create_dir_all(&run).unwrap();
    for file in ["run.json", "log.csv"] {
        std::fs::copy(compare.join("runs/ppcr-seed0").join(file), run.join(file)).unwrap();
    }
    std::fs::write(run.join("metrics.json"), "{\"best_epoch\": 3,").unwrap();
    let output = ppcr([
        "report",
        run.to_str().unwrap(),
        "-o",
        page.to_str().unwrap(),
    ]);
    assert_clean_failure(&output, &["metrics.json", "unreadable or corrupt"]);

    // An output path that cannot be written: a missing folder, and a folder itself.
    let unwritable = folder.path().join("no-such-folder/report.html");
    let output = ppcr(["report", compare_arg, "-o", unwritable.to_str().unwrap()]);
    assert_clean_failure(
        &output,
        &["no-such-folder/report.html", "cannot write the report"],
    );
    let output = ppcr(["report", compare_arg, "-o", folder.path().to_str().unwrap()]);
    assert_clean_failure(&output, &["cannot write the report", "is a folder"]);

    let output = ppcr(["report"]);
    assert_clean_failure(&output, &["FOLDER"]);
}

/// Runs `ppcr args` with its standard output a pipe that is closed before the command writes
/// anything, as `ppcr ... | head -0` would leave it; returns its exit status and stderr.
fn with_closed_stdout(args: &[std::ffi::OsString]) -> (std::process::ExitStatus, String) {
    use std::process::{Command, Stdio};
    let mut child = Command::new(env!("CARGO_BIN_EXE_ppcr"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let output = child.wait_with_output().unwrap();
    (
        output.status,
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn a_closed_pipe_neither_panics_nor_stops_training() {
    let (status, stderr) = with_closed_stdout(&["models".into()]);
    assert!(status.success(), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");

    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let args: Vec<std::ffi::OsString> = common::tiny_train_args(&run, 2)
        .into_iter()
        .map(Into::into)
        .collect();
    let (status, stderr) = with_closed_stdout(&args);
    assert!(status.success(), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(run.join("metrics.json").exists(), "the run finished");
}

#[test]
fn resuming_with_fewer_epochs_than_trained_is_refused_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let run = common::train_tiny(dir.path(), 2);
    let config_before = std::fs::read_to_string(run.join("config.toml")).unwrap();
    let mut args = common::tiny_train_args(&run, 1);
    args.push("--resume".into());
    let output = ppcr(&args);
    assert_clean_failure(
        &output,
        &["already trained 2 epochs", "--epochs must be at least"],
    );
    assert_eq!(
        std::fs::read_to_string(run.join("config.toml")).unwrap(),
        config_before
    );
}

#[test]
fn a_data_set_of_one_class_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    // The PBC fixture's splits with one of their classes each, under one name.
    let source = fixtures().join("pbc_mini");
    for split in ["train", "val", "test"] {
        let class = dir.path().join("data").join(split).join("only");
        std::fs::create_dir_all(&class).unwrap();
        let mut classes: Vec<_> = std::fs::read_dir(source.join(split))
            .unwrap()
            .flatten()
            .map(|entry| entry.path())
            .collect();
        classes.sort();
        for entry in std::fs::read_dir(&classes[0]).unwrap().flatten() {
            std::fs::copy(entry.path(), class.join(entry.file_name())).unwrap();
        }
    }
    let output = ppcr([
        "train",
        "--data",
        dir.path().join("data").to_str().unwrap(),
        "--size",
        "32",
        "--epochs",
        "1",
        "--out",
        dir.path().join("run").to_str().unwrap(),
    ]);
    assert_clean_failure(&output, &["one class (only)", "at least two"]);
}

#[test]
fn damaged_or_missing_checkpoint_files_and_bad_names_get_messages_that_say_so() {
    let dir = tempfile::tempdir().unwrap();
    let run = common::train_tiny(dir.path(), 1);
    let eval = |run: &Path| {
        ppcr([
            "eval",
            "--checkpoint",
            run.to_str().unwrap(),
            "--data",
            fixtures().join("pbc_mini").to_str().unwrap(),
        ])
    };
    assert_success(&eval(&run));

    let nosuch = dir.path().join("nosuch");
    assert_clean_failure(&eval(&nosuch), &["nosuch", "no such folder"]);

    // Float data overwritten with NaN bit patterns (the end of the file is the last tensor).
    let best = std::fs::read_to_string(run.join("checkpoints/best")).unwrap();
    let model = run.join("checkpoints").join(best.trim()).join("model.bpk");
    let mut bytes = std::fs::read(&model).unwrap();
    let len = bytes.len();
    bytes[len - 64..].fill(0xFF);
    std::fs::write(&model, &bytes).unwrap();
    assert_clean_failure(&eval(&run), &["model.bpk", "damaged"]);

    std::fs::remove_file(run.join("checkpoints/best")).unwrap();
    assert_clean_failure(
        &eval(&run),
        &["'best' pointer file is missing", "epoch-0001"],
    );

    let output = ppcr(["train", "--select-on", "foo", "--epochs", "1"]);
    assert_clean_failure(
        &output,
        &["unknown selection metric 'foo'", "valid:", "loss"],
    );
}

#[test]
fn the_paper_recipe_sets_the_authors_settings_and_flags_and_config_keys_win() {
    let folder = tempfile::tempdir().unwrap();
    let data = fixtures().join("isic2018_mini");
    let settings = folder.path().join("settings.toml");
    std::fs::write(&settings, "weight_decay = 0.0002\n").unwrap();
    let run = folder.path().join("run");
    let output = ppcr([
        "train",
        "--recipe",
        "paper",
        "--config",
        settings.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--size",
        "72",
        "--epochs",
        "1",
        "--batch",
        "7",
        "--out",
        run.to_str().unwrap(),
    ]);
    assert_success(&output);
    let config = ppcr::train::TrainConfig::from_toml(
        &std::fs::read_to_string(run.join("config.toml")).unwrap(),
    )
    .unwrap();
    // From the recipe.
    assert_eq!(config.backbone, ppcr::models::Backbone::ResNet18);
    assert_eq!((config.lr, config.momentum), (0.0025, 0.9));
    let augment = config.augment.unwrap();
    assert_eq!(augment.rotation_degrees, 45.0);
    assert_eq!(augment.gaussian_blur.unwrap().probability, 0.5);
    assert_eq!(augment.color_jitter.unwrap().hue, 0.4);
    // From the config file and the flags.
    assert_eq!(config.weight_decay, 0.0002);
    assert_eq!(
        (config.size, config.epochs, config.batch_size),
        (Some(72), 1, 7)
    );

    let output = ppcr(["train", "--recipe", "papers", "--epochs", "1"]);
    assert_clean_failure(&output, &["papers", "default", "paper"]);
}
