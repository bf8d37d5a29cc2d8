//! `ppcr compare` end to end on real images: a grid spread over two shards, collected by a
//! final call that trains nothing, with an interrupted run resumed rather than retrained.

mod common;

use std::path::Path;

use common::ppcr;

#[test]
fn sharded_grid_is_collected_and_finished_runs_are_not_retrained() {
    let folder = tempfile::tempdir().unwrap();
    let out = folder.path().join("grid");
    let out_arg = out.to_str().unwrap();
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/data/pbc_mini");
    let base = [
        "compare",
        "--data",
        data.to_str().unwrap(),
        "--size",
        "24",
        "--epochs",
        "2",
        "--batch",
        "4",
        "--attn",
        "none,ppcr",
        "--seeds",
        "2",
        "--out",
        out_arg,
    ];
    let with = |extra: &[&str]| {
        let mut args = base.to_vec();
        args.extend_from_slice(extra);
        let output = ppcr(&args);
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    };

    let first = with(&["--shard", "0/2"]);
    assert!(first.contains("2 of 4 runs are not finished"), "{first}");
    // Shard 0 of 2 trains runs 0 and 2: none with seeds 0 and 1.
    assert!(out.join("runs/none-s0/metrics.json").is_file());
    assert!(out.join("runs/none-s1/metrics.json").is_file());
    assert!(!out.join("runs/ppcr-s0").exists());

    with(&["--shard", "1/2"]);
    // Make one run look interrupted after its last epoch: it must be resumed, not retrained.
    std::fs::remove_file(out.join("runs/ppcr-s1/metrics.json")).unwrap();
    let modified = || {
        std::fs::metadata(out.join("runs/none-s0/metrics.json"))
            .unwrap()
            .modified()
            .unwrap()
    };
    let untouched = modified();
    let last = with(&[]);
    assert!(last.contains("ppcr seed 1 (resuming)"), "{last}");
    assert!(
        !last.contains("none seed 0"),
        "a finished run was trained again:\n{last}"
    );
    assert_eq!(modified(), untouched);

    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("compare.json")).unwrap()).unwrap();
    assert_eq!(summary["missing_runs"], 0);
    let rows = summary["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 2);
    for row in rows {
        assert_eq!(row["runs"], 2);
        assert_eq!(
            row["metrics"]["accuracy"]["values"]
                .as_array()
                .unwrap()
                .len(),
            2
        );
        assert!(row["macs"].as_u64().unwrap() > 0);
    }
    // PPCR against none on six metrics.
    assert_eq!(summary["paired"].as_array().unwrap().len(), 6);
    let markdown = std::fs::read_to_string(out.join("compare.md")).unwrap();
    assert!(markdown.contains("| ppcr | 2 |"), "{markdown}");
    let csv = std::fs::read_to_string(out.join("compare.csv")).unwrap();
    assert_eq!(csv.lines().count(), 3);

    assert_eq!(summary["settings"]["epochs"], 2);
    assert_eq!(summary["settings"]["batch_size"], 4);
    assert!(summary["settings"].get("seed").is_none());

    let bad = ppcr(["compare", "--shard", "2/2", "--out", out_arg]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("2/2"));

    // The same folder with another setting: refused before anything trains, naming the runs
    // and the setting; the finished runs stay as they were.
    let mut args = base.to_vec();
    args[6] = "3";
    let other = ppcr(&args);
    common::assert_clean_failure(
        &other,
        &["other settings", "none-s0", "epochs: run has 2, now 3"],
    );
    assert!(!String::from_utf8_lossy(&other.stdout).contains("of this invocation"));
    assert_eq!(modified(), untouched);
}
